//! A call's time budget counts the CPU time the call itself uses, not wall time: on a busy
//! machine the OS may deschedule a shard thread in the middle of a cheap call, and that call
//! must not die as `deadline` for it. Only a plugin that really computes for longer than
//! `call_timeout_ms` is stopped.
//!
//! How, without reading a clock per plugin call: the epoch ticker interrupts a call once its
//! wall-clock budget has passed (the cheap check wasmtime does anyway). Only then does
//! [`Deadline::next`] read the thread's CPU clock, and either stops the call or lets it run for
//! the CPU budget it has left. A call's start is the ticker's count (an atomic load), and the
//! thread's CPU clock is read at most once per tick to mark a baseline (`begin`), so a call's
//! CPU time is known to within one tick. A wall-clock cap (`call_wall_timeout_ms`) still bounds
//! a call that blocks without computing, so no plugin can stall its shard for long.

use std::cell::Cell;
use std::time::Duration;
use wasmtime::{Trap, UpdateDeadline};

thread_local! {
    /// (tick, this thread's CPU time then): the baseline calls on this thread measure from.
    static BASELINE: Cell<Option<(u64, Duration)>> = const { Cell::new(None) };
}

/// The CPU time the calling thread has used.
pub fn thread_cpu_time() -> Duration {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID) {
        Ok(t) => Duration::new(t.tv_sec().max(0) as u64, t.tv_nsec().clamp(0, 999_999_999) as u32),
        // Not expected on Linux; without a CPU clock the wall-clock cap still applies.
        Err(_) => Duration::ZERO,
    }
}

/// Which budget a stopped call ran out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    Cpu,
    Wall,
}

/// What every call may use, computed once per runtime from the limits (so a call's start does
/// no division).
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// CPU time, plus one tick: what the thread may have used between its baseline and the call.
    cpu: Duration,
    /// Ticks until the first check: the CPU budget, since a call cannot use more CPU than wall time.
    first_ticks: u64,
    /// The wall-clock cap, in ticks.
    wall_ticks: u64,
    tick: Duration,
}

impl Budget {
    /// `cpu` of CPU time and `wall` of wall time at most, with the epoch ticking every `tick`.
    pub fn new(cpu: Duration, wall: Duration, tick: Duration) -> Budget {
        let tick = tick.max(Duration::from_nanos(1));
        let cpu = cpu + tick;
        Budget {
            cpu,
            first_ticks: ticks(cpu, tick),
            wall_ticks: ticks(wall.max(cpu), tick),
            tick,
        }
    }

    /// Epoch ticks until the first check.
    pub fn first_ticks(&self) -> u64 {
        self.first_ticks
    }

    /// Epoch ticks after which any call is stopped.
    pub fn wall_ticks(&self) -> u64 {
        self.wall_ticks
    }
}

/// The budget of the current call, and where it started.
#[derive(Debug, Clone)]
pub struct Deadline {
    budget: Budget,
    /// Thread CPU time at the baseline.
    cpu_base: Duration,
    /// The tick the call started in.
    started: u64,
    /// Set when the call was stopped.
    pub exceeded: Option<Exceeded>,
}

impl Default for Deadline {
    fn default() -> Self {
        Deadline {
            budget: Budget::new(Duration::ZERO, Duration::ZERO, Duration::from_millis(1)),
            cpu_base: Duration::ZERO,
            started: 0,
            exceeded: None,
        }
    }
}

impl Deadline {
    /// Start a call's budget at tick `now`.
    pub fn begin(&mut self, now: u64, budget: Budget) {
        self.cpu_base = BASELINE.with(|b| match b.get() {
            Some((at, base)) if at == now => base,
            _ => {
                let base = thread_cpu_time();
                b.set(Some((now, base)));
                base
            }
        });
        self.budget = budget;
        self.started = now;
        self.exceeded = None;
    }

    /// The wall-clock budget has passed at least once (the ticker is at tick `now`): stop the
    /// call, or let it go on.
    pub fn next(&mut self, now: u64) -> wasmtime::Result<UpdateDeadline> {
        let elapsed = now.saturating_sub(self.started);
        if elapsed >= self.budget.wall_ticks {
            self.exceeded = Some(Exceeded::Wall);
            return Err(Trap::Interrupt.into());
        }
        let used = thread_cpu_time().saturating_sub(self.cpu_base);
        if used >= self.budget.cpu {
            self.exceeded = Some(Exceeded::Cpu);
            return Err(Trap::Interrupt.into());
        }
        let left = ticks(self.budget.cpu - used, self.budget.tick).min(self.budget.wall_ticks - elapsed);
        Ok(UpdateDeadline::Continue(left.max(1)))
    }
}

fn ticks(d: Duration, tick: Duration) -> u64 {
    (d.as_nanos() / tick.as_nanos()).clamp(1, u128::from(u64::MAX)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(1);

    #[test]
    fn a_descheduled_call_is_not_stopped_but_a_computing_one_is() {
        let mut d = Deadline::default();
        d.begin(0, Budget::new(Duration::from_millis(20), Duration::from_secs(5), TICK));
        // Blocked, not computing: 30 ticks of wall time, hardly any CPU.
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            matches!(d.next(30), Ok(UpdateDeadline::Continue(n)) if n >= 1),
            "a call that waited is given the CPU time it has left"
        );
        assert_eq!(d.exceeded, None);
        // Computing: spin until the CPU budget is gone.
        let start = thread_cpu_time();
        while thread_cpu_time() - start < Duration::from_millis(25) {
            std::hint::black_box(0);
        }
        assert!(d.next(60).is_err());
        assert_eq!(d.exceeded, Some(Exceeded::Cpu));
    }

    #[test]
    fn the_wall_clock_cap_stops_a_call_that_blocks() {
        let mut d = Deadline::default();
        d.begin(
            100,
            Budget::new(Duration::from_millis(5), Duration::from_millis(10), TICK),
        );
        assert!(d.next(109).is_ok());
        assert!(d.next(110).is_err());
        assert_eq!(d.exceeded, Some(Exceeded::Wall));
    }
}
