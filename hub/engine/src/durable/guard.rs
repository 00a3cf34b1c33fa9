//! The latency guard: while some tenants' streams have a backlog the hub drains as fast as the
//! shards take it, every process on the machine competes for the cores (the hub's threads,
//! nats-server's, the producers'), and the other tenants' inputs wait longer for each thread
//! they cross, even though admission keeps them at the head of every queue. The guard keeps
//! those tenants near their unloaded latency by reading the backlogged streams more slowly.
//!
//! - A stream holding a backlog of more than [`BACKLOG`] inputs during a tick is *pressing*:
//!   it has more to give than it is let. A stream read without such a backlog, with inputs in
//!   the last second, is *waiting on the hub*: its inputs' lag (from being stored in the stream
//!   to being processed by a shard) is what the guard keeps low.
//! - Every tick it takes their mean lag, smoothed over a few ticks (one slow input moves a
//!   tick's mean; a tick's longest lag follows the machine's hiccups more than the load), and
//!   compares it with a baseline: above `baseline × tolerance` the pressing streams' read
//!   rates are cut by a third, below it they grow by a tenth (AIMD, as TCP does with a
//!   congestion window), so the guard settles just below the rate at which the others' lag
//!   rises.
//! - The baseline is measured, not configured: when a stream starts waiting on the hub, and
//!   every [`PROBE_EVERY`] after, the pressing streams are held to [`MIN_RATE`] for [`PROBE`]
//!   and the lag meanwhile is the baseline (as BBR measures a path's round trip). Measuring it
//!   again tracks a machine that got busier or quieter, and the lag's clock offset between
//!   nats-server's host and the hub's cancels out.
//! - With nobody waiting on the hub, or nobody pressing, nothing is limited: a backlog alone is
//!   drained at full speed.
//!
//! What it cannot see or help: the way out (an action from the shard through NATS to its
//! subscriber), and load the hub does not cause: a producer publishing a flood costs
//! nats-server's cores and its own however slowly the hub reads it.

use std::time::{Duration, Instant};

/// A stream holding more inputs than this not yet read is pressing (see the module): many
/// more than a tenant reading within its window ever has, unless the hub stalls.
pub const BACKLOG: u64 = 256;
/// How often the guard looks at the lags and steers.
pub const TICK: Duration = Duration::from_millis(50);
/// A pressing stream is read at this many inputs per second at least, so it always progresses.
pub const MIN_RATE: f64 = 50.0;
/// How long a probe holds the pressing streams to [`MIN_RATE`].
pub const PROBE: Duration = Duration::from_millis(300);
/// The first part of a probe is not measured: what the pressing streams had queued drains.
const PROBE_SETTLE: Duration = Duration::from_millis(100);
/// How often the baseline is measured again.
pub const PROBE_EVERY: Duration = Duration::from_secs(10);
/// A stream that had inputs within this time still counts as waiting on the hub.
const WAITING_MEMORY: Duration = Duration::from_secs(1);
/// Lag within this much of the baseline is never a reason to slow anyone: the noise of a
/// sub-millisecond baseline.
const SLACK_NS: f64 = 50_000.0;
/// The weight of a tick's mean lag in the smoothed lag the guard steers by.
const SMOOTHING: f64 = 0.3;
const DECREASE: f64 = 0.67;
const INCREASE: f64 = 1.1;

/// What one source did during a tick.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Inputs the shards processed.
    pub taken: u32,
    /// The sum of their lags (ns; may be negative when the clocks disagree).
    pub lag_ns: i64,
    /// Whether the source had a backlog of more than [`BACKLOG`] inputs.
    pub pressed: bool,
}

#[derive(Debug)]
enum Phase {
    Steering,
    Probing {
        started: Instant,
        /// The sum of the lags measured, and of the inputs.
        lag_ns: i64,
        taken: u64,
        /// The limits to go back to.
        saved: Vec<Option<f64>>,
    },
}

/// The controller (see the module); pure, so the reader's tick drives it and tests can too.
#[derive(Debug)]
pub struct Guard {
    tolerance: f64,
    /// By source: its read rate limit (inputs/s), while it has one.
    limits: Vec<Option<f64>>,
    /// By source: when it last waited on the hub.
    waiting: Vec<Option<Instant>>,
    baseline_ns: Option<f64>,
    /// The waiting sources' mean lag, smoothed over the ticks that had their inputs.
    last_lag_ns: Option<f64>,
    phase: Phase,
    next_probe: Instant,
}

impl Guard {
    pub fn new(sources: usize, tolerance: f64) -> Guard {
        Guard {
            tolerance,
            limits: vec![None; sources],
            waiting: vec![None; sources],
            baseline_ns: None,
            last_lag_ns: None,
            phase: Phase::Steering,
            next_probe: Instant::now(),
        }
    }

    /// The read rate limit of each source now.
    pub fn limits(&self) -> &[Option<f64>] {
        &self.limits
    }

    /// The lag the waiting sources' inputs had when nobody pressed (ns), once measured.
    pub fn baseline_ns(&self) -> Option<f64> {
        self.baseline_ns
    }

    /// The waiting sources' mean lag, smoothed over the last ticks that had their inputs (ns).
    pub fn lag_ns(&self) -> Option<f64> {
        self.last_lag_ns
    }

    /// One tick of `elapsed`, ending `now`, with each source's sample (in source order).
    pub fn tick(&mut self, now: Instant, elapsed: Duration, samples: &[Sample]) {
        let mut newly_waiting = false;
        for (waiting, sample) in self.waiting.iter_mut().zip(samples) {
            if sample.pressed {
                *waiting = None;
            } else if sample.taken > 0 {
                let recent = waiting.is_some_and(|at| now.duration_since(at) < WAITING_MEMORY);
                newly_waiting |= !recent;
                *waiting = Some(now);
            }
        }
        let anyone_waiting = self
            .waiting
            .iter()
            .any(|w| w.is_some_and(|at| now.duration_since(at) < WAITING_MEMORY));
        let anyone_pressing = samples.iter().any(|s| s.pressed);
        let (lag_ns, taken) = samples
            .iter()
            .filter(|s| !s.pressed)
            .fold((0i64, 0u64), |(lag, n), s| (lag + s.lag_ns, n + u64::from(s.taken)));
        if taken > 0 {
            let lag = lag_ns as f64 / taken as f64;
            self.last_lag_ns = Some(match self.last_lag_ns {
                Some(smoothed) => smoothed + SMOOTHING * (lag - smoothed),
                None => lag,
            });
        }
        if !anyone_waiting || !anyone_pressing {
            self.phase = Phase::Steering;
            self.limits.iter_mut().for_each(|l| *l = None);
            return;
        }
        // A source that does not press has nothing held back: a limit would only hide a
        // backlog it may get later from the guard's next decision.
        for (limit, sample) in self.limits.iter_mut().zip(samples) {
            if !sample.pressed {
                *limit = None;
            }
        }
        let per_second = 1.0 / elapsed.as_secs_f64().max(1e-3);
        match &mut self.phase {
            Phase::Probing {
                started,
                lag_ns: probe_lag,
                taken: probe_taken,
                saved,
            } => {
                if now.duration_since(*started) > PROBE_SETTLE {
                    *probe_lag += lag_ns;
                    *probe_taken += taken;
                }
                if now.duration_since(*started) >= PROBE {
                    if *probe_taken > 0 {
                        let baseline = *probe_lag as f64 / *probe_taken as f64;
                        self.baseline_ns = Some(baseline);
                        self.last_lag_ns = Some(baseline);
                    }
                    for ((limit, saved), sample) in self.limits.iter_mut().zip(saved.iter()).zip(samples) {
                        *limit = if sample.pressed { *saved } else { None };
                    }
                    self.phase = Phase::Steering;
                    self.next_probe = now + PROBE_EVERY;
                } else {
                    hold_pressing(&mut self.limits, samples);
                }
            }
            Phase::Steering if newly_waiting || now >= self.next_probe || self.baseline_ns.is_none() => {
                // Back to what each pressing source was allowed after the probe; one read at
                // full speed starts at half of it, so the others' lag need not climb all the
                // way from there.
                let saved = self
                    .limits
                    .iter()
                    .zip(samples)
                    .map(|(limit, s)| match s.pressed {
                        true => Some(limit.unwrap_or(f64::from(s.taken) * per_second / 2.0).max(MIN_RATE)),
                        false => None,
                    })
                    .collect();
                hold_pressing(&mut self.limits, samples);
                self.phase = Phase::Probing {
                    started: now,
                    lag_ns: 0,
                    taken: 0,
                    saved,
                };
            }
            Phase::Steering => {
                let (Some(baseline), Some(lag), true) = (self.baseline_ns, self.last_lag_ns, taken > 0) else {
                    return;
                };
                let over = lag > baseline * self.tolerance + SLACK_NS;
                for (limit, sample) in self.limits.iter_mut().zip(samples) {
                    if !sample.pressed {
                        continue;
                    }
                    let read = f64::from(sample.taken) * per_second;
                    let now_allowed = limit.unwrap_or(f64::INFINITY);
                    *limit = Some(match over {
                        true => (now_allowed.min(read) * DECREASE).max(MIN_RATE),
                        // A limit far above what the source is read at does not bind; kept
                        // within reach, a cut takes effect at once.
                        false => (now_allowed * INCREASE).min((read * 2.0).max(MIN_RATE * 2.0)),
                    });
                }
            }
        }
    }
}

/// Hold each pressing source to [`MIN_RATE`], for a probe.
fn hold_pressing(limits: &mut [Option<f64>], samples: &[Sample]) {
    for (limit, sample) in limits.iter_mut().zip(samples) {
        if sample.pressed {
            *limit = Some(MIN_RATE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: usize = 0;
    const FLOOD: usize = 1;

    /// A tick with the flood's backlog read and nothing of the quiet source.
    const FLOOD_ONLY: [Sample; 2] = [
        Sample {
            taken: 0,
            lag_ns: 0,
            pressed: false,
        },
        Sample {
            taken: 1000,
            lag_ns: 0,
            pressed: true,
        },
    ];

    fn samples(quiet_lag_us: i64, flood_taken: u32) -> [Sample; 2] {
        [
            Sample {
                taken: 50,
                lag_ns: 50 * quiet_lag_us * 1000,
                pressed: false,
            },
            Sample {
                taken: flood_taken,
                lag_ns: 0,
                pressed: true,
            },
        ]
    }

    /// Runs ticks from `at` with the quiet source's lag given by `lag(flood's limit)`; the
    /// flood is read at its limit (or 1,000 per tick without one).
    fn run(guard: &mut Guard, at: &mut Instant, ticks: usize, lag_us: impl Fn(Option<f64>) -> i64) {
        for _ in 0..ticks {
            *at += TICK;
            let limit = guard.limits()[FLOOD];
            let flood = limit.map_or(1000, |l| (l * TICK.as_secs_f64()) as u32);
            guard.tick(*at, TICK, &samples(lag_us(limit), flood));
        }
    }

    #[test]
    fn a_backlog_alone_is_not_limited() {
        let mut guard = Guard::new(2, 1.25);
        let at = Instant::now();
        for i in 1..100 {
            guard.tick(at + TICK * i, TICK, &FLOOD_ONLY);
        }
        assert_eq!(guard.limits(), &[None, None]);
    }

    #[test]
    fn a_stream_starting_to_wait_on_the_hub_first_measures_its_baseline_with_the_flood_held() {
        let mut guard = Guard::new(2, 1.25);
        let mut at = Instant::now();
        run(&mut guard, &mut at, 1, |_| 900);
        assert_eq!(guard.limits()[FLOOD], Some(MIN_RATE), "probing");
        assert_eq!(guard.limits()[QUIET], None);
        // Held back, the flood leaves the quiet source at 200 µs.
        run(
            &mut guard,
            &mut at,
            6,
            |limit| if limit == Some(MIN_RATE) { 200 } else { 900 },
        );
        assert_eq!(guard.baseline_ns(), Some(200_000.0));
        assert_eq!(guard.limits()[FLOOD], Some(10_000.0), "half what it was read at");
    }

    #[test]
    fn the_flood_settles_near_the_rate_at_which_the_quiet_sources_lag_rises() {
        let mut guard = Guard::new(2, 1.25);
        let mut at = Instant::now();
        // Lag grows with the flood's rate: 200 µs alone, doubling by 10,000/s.
        let lag = |limit: Option<f64>| 200 + (limit.unwrap_or(20_000.0) / 50.0) as i64;
        run(&mut guard, &mut at, 150, lag);
        let limit = guard.limits()[FLOOD].expect("limited");
        // At most 250 µs + 50 µs of slack: 5,000/s; the cuts take it somewhat below.
        assert!((2_000.0..=5_600.0).contains(&limit), "{limit}");
        assert!(guard.lag_ns().is_some());
    }

    #[test]
    fn the_baseline_is_measured_again_and_follows_the_machine() {
        let mut guard = Guard::new(2, 1.25);
        let mut at = Instant::now();
        run(&mut guard, &mut at, 10, |_| 200);
        assert_eq!(guard.baseline_ns(), Some(200_000.0));
        let ticks = (PROBE_EVERY.as_millis() / TICK.as_millis()) as usize + 10;
        run(&mut guard, &mut at, ticks, |_| 400);
        assert_eq!(guard.baseline_ns(), Some(400_000.0));
    }

    #[test]
    fn once_nobody_waits_on_the_hub_the_limits_go() {
        let mut guard = Guard::new(2, 1.25);
        let mut at = Instant::now();
        run(&mut guard, &mut at, 20, |_| 2_000);
        assert!(guard.limits()[FLOOD].is_some());
        for _ in 0..(WAITING_MEMORY.as_millis() / TICK.as_millis() + 1) {
            at += TICK;
            guard.tick(at, TICK, &FLOOD_ONLY);
        }
        assert_eq!(guard.limits()[FLOOD], None);
    }
}
