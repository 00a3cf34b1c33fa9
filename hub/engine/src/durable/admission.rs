//! Fair admission of tenants' own streams into the shards. Each stream may have at most its
//! window of inputs routed to the shards and not yet taken up by them: its tenant's share times
//! `[input] tenant_window`. The reader stops reading a stream at its window, so a flooding
//! tenant's backlog stays in its stream (durable, nothing dropped), and another tenant's input
//! waits behind at most one window of it in any shard queue. Shards take queued inputs in
//! arrival order, so while they are saturated each stream's throughput follows its window:
//! tenants share the shards by their shares.
//!
//! A tenant with a `rate` is read at that many inputs per second at most (a bucket holding a
//! second's worth): beyond it, its inputs wait in its stream.
//!
//! The committer is shared too: when half its queue waits, each stream may have one input queued
//! at most, until it catches up. Otherwise a flood that the shards take fast enough fills the
//! commit queue, the shards then wait for the committer, and every tenant's inputs with them.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;
use tokio::sync::Notify;

/// One source's allowance of inputs per second: up to a second's worth saved up.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    fn new(rate: u32) -> Bucket {
        Bucket {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            refilled: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.rate.max(1.0));
        self.refilled = now;
    }

    /// Take one input's token; whether another may follow now.
    fn take(&mut self) -> bool {
        self.refill();
        self.tokens -= 1.0;
        self.tokens >= 1.0
    }

    fn has_room(&mut self) -> bool {
        self.refill();
        self.tokens >= 1.0
    }
}

/// Inputs of each source queued ahead of the shards, against its window (see the module).
#[derive(Default)]
pub struct Admission {
    queued: Box<[AtomicU32]>,
    windows: Box<[u32]>,
    room: Notify,
    /// Whether the committer falls behind (see the module).
    congested: Option<Box<dyn Fn() -> bool + Send + Sync>>,
    /// By source: its rate, if it has one.
    buckets: Mutex<Vec<Option<Bucket>>>,
}

impl Admission {
    /// No windows: one stream feeds the shards, and the shard queues bound it.
    pub fn unlimited() -> Admission {
        Admission::default()
    }

    /// A window and a rate (inputs/s, if any) per source, in source order (see
    /// `Checkpoints::load`); windows at least 1. `congested` says whether the committer falls
    /// behind.
    pub fn new(sources: Vec<(u32, Option<u32>)>, congested: impl Fn() -> bool + Send + Sync + 'static) -> Admission {
        Admission {
            queued: sources.iter().map(|_| AtomicU32::new(0)).collect(),
            windows: sources.iter().map(|(w, _)| (*w).max(1)).collect(),
            room: Notify::new(),
            congested: Some(Box::new(congested)),
            buckets: Mutex::new(sources.iter().map(|(_, rate)| rate.map(Bucket::new)).collect()),
        }
    }

    /// Run `f` on the bucket of source `i`, if it has a rate.
    fn bucket<T>(&self, i: usize, f: impl FnOnce(&mut Bucket) -> T) -> Option<T> {
        let mut buckets = self.buckets.lock().ok()?;
        buckets.get_mut(i)?.as_mut().map(f)
    }

    /// The window of a source now: one input while the committer falls behind.
    fn window(&self, i: usize) -> Option<u32> {
        let window = *self.windows.get(i)?;
        Some(match &self.congested {
            Some(congested) if congested() => 1,
            _ => window,
        })
    }

    pub fn is_limited(&self) -> bool {
        !self.windows.is_empty()
    }

    /// An input of `source` was routed to a shard: whether the source must wait now (at its
    /// window, or its rate).
    pub fn routed(&self, source: u16) -> bool {
        let i = usize::from(source);
        match self.queued.get(i) {
            Some(queued) => {
                let now = queued.fetch_add(1, Ordering::AcqRel) + 1;
                let more = self.bucket(i, Bucket::take).unwrap_or(true);
                !more || self.window(i).is_some_and(|window| now >= window)
            }
            None => false,
        }
    }

    /// A shard took an input of `source` from its queue.
    pub fn taken(&self, source: u16) {
        let i = usize::from(source);
        if let (Some(queued), Some(&window)) = (self.queued.get(i), self.windows.get(i)) {
            let before = queued.fetch_sub(1, Ordering::AcqRel);
            // Below its full window, or empty (its window while congested): it may be read.
            // A permit is kept when the reader is not waiting yet: no wake-up is lost.
            if before == window || before == 1 {
                self.room.notify_one();
            }
        }
    }

    /// Whether `source` is below its window and within its rate.
    pub fn has_room(&self, source: u16) -> bool {
        let i = usize::from(source);
        let below = match (self.queued.get(i), self.window(i)) {
            (Some(queued), Some(window)) => queued.load(Ordering::Acquire) < window,
            _ => true,
        };
        below && self.bucket(i, Bucket::has_room).unwrap_or(true)
    }

    /// Resolves once a source at its window may have room again.
    pub async fn room(&self) {
        self.room.notified().await
    }

    /// Inputs of `source` queued ahead of the shards now.
    pub fn queued(&self, source: u16) -> u32 {
        self.queued
            .get(usize::from(source))
            .map_or(0, |q| q.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_source_at_its_window_waits_until_a_shard_takes_one_of_its_inputs() {
        let admission = Admission::new(vec![(2, None), (1, None)], || false);
        assert!(!admission.routed(0));
        assert!(admission.routed(0), "at its window");
        assert!(!admission.has_room(0));
        assert!(admission.routed(1), "a window of one");
        admission.taken(0);
        tokio::time::timeout(std::time::Duration::from_secs(1), admission.room())
            .await
            .expect("woken");
        assert!(admission.has_room(0));
        assert!(!admission.has_room(1), "the other source still waits");
        assert_eq!(admission.queued(0), 1);
    }

    #[test]
    fn while_the_committer_falls_behind_each_source_has_one_input_queued_at_most() {
        let congested = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = congested.clone();
        let admission = Admission::new(vec![(8, None)], move || flag.load(Ordering::Acquire));
        assert!(admission.routed(0), "one is its window now");
        assert!(!admission.has_room(0));
        congested.store(false, Ordering::Release);
        assert!(admission.has_room(0), "the full window again");
    }

    #[test]
    fn a_source_with_a_rate_waits_once_its_seconds_worth_is_read() {
        let admission = Admission::new(vec![(100, Some(3))], || false);
        assert!(!admission.routed(0));
        assert!(!admission.routed(0));
        assert!(admission.routed(0), "the third is the last of its second's worth");
        for _ in 0..3 {
            admission.taken(0);
        }
        assert!(!admission.has_room(0), "below its window, but past its rate");
        std::thread::sleep(std::time::Duration::from_millis(400));
        assert!(admission.has_room(0), "a third of a second earns one more");
    }

    #[test]
    fn without_windows_nothing_is_counted() {
        let admission = Admission::unlimited();
        assert!(!admission.is_limited());
        assert!(!admission.routed(0));
        admission.taken(0);
        assert!(admission.has_room(0));
    }
}
