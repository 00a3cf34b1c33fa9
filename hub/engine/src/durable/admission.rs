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
//! Beyond windows and rates, the [`Guard`] slows streams with a backlog while other tenants'
//! inputs wait longer than they do without it (by their 99th percentile; see `guard`).
//!
//! The committer is shared too: when half its queue waits, each stream may have one input queued
//! at most, until it catches up. Otherwise a flood that the shards take fast enough fills the
//! commit queue, the shards then wait for the committer, and every tenant's inputs with them.

use super::guard::{self, Backlog, Guard, Sample};
use hdrhistogram::Histogram;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// One source's allowance of inputs per second: up to `burst` seconds' worth saved up. Also a
/// tenant's `rate` where a cluster's ingest lease holder forwards its own stream, and in core
/// mode.
#[derive(Debug)]
pub(crate) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    pub(crate) fn new(rate: f64, burst: f64) -> Bucket {
        Bucket {
            rate,
            burst,
            tokens: (rate * burst).max(1.0),
            refilled: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min((self.rate * self.burst).max(1.0));
        self.refilled = now;
    }

    /// Take one input's token; whether another may follow now.
    pub(crate) fn take(&mut self) -> bool {
        self.refill();
        self.tokens -= 1.0;
        self.tokens >= 1.0
    }

    /// How long until another input may follow (zero if it may now).
    pub(crate) fn until_room(&mut self) -> Duration {
        self.refill();
        Duration::from_secs_f64(((1.0 - self.tokens) / self.rate).max(0.0))
    }

    pub(crate) fn has_room(&mut self) -> bool {
        self.refill();
        self.tokens >= 1.0
    }
}

/// How a source's reading is paced: by its tenant's `rate`, and by the guard's limit.
#[derive(Debug, Default)]
struct Pace {
    rate: Option<Bucket>,
    guard: Option<Bucket>,
}

impl Pace {
    fn buckets(&mut self) -> impl Iterator<Item = &mut Bucket> {
        self.rate.iter_mut().chain(self.guard.iter_mut())
    }
}

/// Lags recorded between two of the guard's ticks (see `guard::record_lag`), behind a lock
/// taken for a few nanoseconds at a time.
#[derive(Debug)]
struct Lagged(Mutex<Histogram<u32>>);

impl Default for Lagged {
    fn default() -> Lagged {
        Lagged(Mutex::new(guard::lag_histogram()))
    }
}

impl Lagged {
    fn record(&self, lag_ns: i64) {
        if let Ok(mut lags) = self.0.lock() {
            guard::record_lag(&mut lags, lag_ns);
        }
    }

    /// The lags recorded since the last call.
    fn take(&self) -> Histogram<u32> {
        match self.0.lock() {
            Ok(mut lags) => std::mem::replace(&mut *lags, guard::lag_histogram()),
            Err(_) => guard::lag_histogram(),
        }
    }
}

/// What the shards tell the guard of one source between two of its ticks.
#[derive(Debug, Default)]
struct Tally {
    /// The lags of the inputs processed; one lock per source, taken by one shard at a time.
    lags: Lagged,
    /// The most its routed inputs said of its backlog (a [`Backlog`] as its discriminant).
    backlog: AtomicU8,
}

impl Tally {
    fn routed(&self, pending: u64) {
        self.backlog.fetch_max(Backlog::of(pending) as u8, Ordering::AcqRel);
    }

    fn take(&self) -> Sample {
        let backlog = match self.backlog.swap(Backlog::Unseen as u8, Ordering::AcqRel) {
            b if b == Backlog::Long as u8 => Backlog::Long,
            b if b == Backlog::Short as u8 => Backlog::Short,
            _ => Backlog::Unseen,
        };
        Sample {
            lags: self.lags.take(),
            backlog,
        }
    }
}

/// The guard with what it needs between ticks.
struct Guarded {
    guard: Mutex<(Guard, Instant)>,
    tallies: Box<[Tally]>,
    /// Round trips through nats-server timed since the last tick (see `guard`).
    round_trips: Lagged,
    /// By source: its limit (inputs/s, 0 for none).
    limits: Box<[metrics::Gauge]>,
    lag: metrics::Gauge,
    baseline: metrics::Gauge,
    round_trip: metrics::Gauge,
}

/// Inputs of each source queued ahead of the shards, against its window (see the module).
#[derive(Default)]
pub struct Admission {
    queued: Box<[AtomicU32]>,
    windows: Box<[u32]>,
    room: Notify,
    /// Whether the committer falls behind (see the module).
    congested: Option<Box<dyn Fn() -> bool + Send + Sync>>,
    /// By source: how its reading is paced.
    paces: Mutex<Vec<Pace>>,
    guarded: Option<Guarded>,
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
            paces: Mutex::new(
                sources
                    .iter()
                    .map(|(_, rate)| Pace {
                        rate: rate.map(|r| Bucket::new(f64::from(r), 1.0)),
                        guard: None,
                    })
                    .collect(),
            ),
            guarded: None,
        }
    }

    /// With the latency guard (see `guard`): `tolerance` is the factor of their unloaded lag (its
    /// 99th percentile) the other sources' inputs may wait; `streams` names the sources, in
    /// order, for metrics: each stream, and the tenant whose own stream it is.
    pub fn guarded(mut self, tolerance: f64, streams: &[(String, Option<String>)]) -> Admission {
        use crate::metrics as m;
        self.guarded = Some(Guarded {
            guard: Mutex::new((Guard::new(self.windows.len(), tolerance), Instant::now())),
            tallies: self.windows.iter().map(|_| Tally::default()).collect(),
            round_trips: Lagged::default(),
            limits: streams
                .iter()
                .map(|(stream, tenant)| match tenant {
                    Some(tenant) => {
                        metrics::gauge!(m::STREAM_READ_LIMIT, "stream" => stream.clone(), "tenant" => tenant.clone())
                    }
                    None => metrics::gauge!(m::STREAM_READ_LIMIT, "stream" => stream.clone()),
                })
                .collect(),
            lag: metrics::gauge!(m::INPUT_LAG_SECONDS),
            baseline: metrics::gauge!(m::INPUT_LAG_BASELINE_SECONDS),
            round_trip: metrics::gauge!(m::NATS_ROUND_TRIP_SECONDS),
        });
        self
    }

    /// Whether the guard runs: the reader then calls [`Admission::steer`] every [`guard::TICK`].
    pub fn is_guarded(&self) -> bool {
        self.guarded.is_some()
    }

    /// Whether the guard limits some source now: the reader then times round trips through
    /// nats-server every [`guard::ROUND_TRIP_EVERY`] and reports them to [`Admission::round_trip`].
    pub fn guard_engaged(&self) -> bool {
        self.guarded
            .as_ref()
            .is_some_and(|g| g.guard.lock().is_ok_and(|guard| guard.0.engaged()))
    }

    /// A message went from the hub through nats-server and back in `took`, for the guard.
    pub fn round_trip(&self, took: Duration) {
        if let Some(guarded) = &self.guarded {
            guarded
                .round_trips
                .record(i64::try_from(took.as_nanos()).unwrap_or(i64::MAX));
        }
    }

    /// Whether source `i` may be read by its rate and the guard's limit; takes a token when
    /// `take`.
    fn paced(&self, i: usize, take: bool) -> bool {
        let Ok(mut paces) = self.paces.lock() else {
            return true;
        };
        let Some(pace) = paces.get_mut(i) else {
            return true;
        };
        pace.buckets().fold(true, |more, bucket| {
            let has = match take {
                true => bucket.take(),
                false => bucket.has_room(),
            };
            more && has
        })
    }

    /// One tick of the guard: the sources' samples since the last, the limits it sets.
    pub fn steer(&self) {
        let Some(guarded) = &self.guarded else {
            return;
        };
        let samples: Vec<Sample> = guarded.tallies.iter().map(Tally::take).collect();
        let round_trips = guarded.round_trips.take();
        let Ok(mut guard) = guarded.guard.lock() else {
            return;
        };
        let (guard, last) = &mut *guard;
        let now = Instant::now();
        guard.tick(now, now.duration_since(*last), &samples, round_trips);
        *last = now;
        if let Ok(mut paces) = self.paces.lock() {
            for (pace, limit) in paces.iter_mut().zip(guard.limits()) {
                match (limit, &mut pace.guard) {
                    (None, bucket) => *bucket = None,
                    (Some(rate), Some(bucket)) => bucket.rate = *rate,
                    (Some(rate), bucket @ None) => *bucket = Some(Bucket::new(*rate, guard::TICK.as_secs_f64())),
                }
            }
        }
        for (gauge, limit) in guarded.limits.iter().zip(guard.limits()) {
            gauge.set(limit.unwrap_or(0.0));
        }
        let seconds = |ns: f64| ns / 1e9;
        guarded.lag.set(guard.lag_ns().map_or(0.0, seconds));
        guarded.baseline.set(guard.baseline_ns().map_or(0.0, seconds));
        guarded.round_trip.set(guard.round_trip_ns().map_or(0.0, seconds));
        let taken: Vec<(u64, Backlog)> = samples.iter().map(|s| (s.taken(), s.backlog)).collect();
        tracing::trace!(?taken, limits = ?guard.limits(), lag_ns = ?guard.lag_ns(), baseline_ns = ?guard.baseline_ns(), "latency guard");
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

    /// An input of `source` was routed to a shard, with `pending` more in its stream behind
    /// it: whether the source must wait now (at its window, or its rate).
    pub fn routed(&self, source: u16, pending: u64) -> bool {
        let i = usize::from(source);
        let Some(queued) = self.queued.get(i) else {
            return false;
        };
        let now = queued.fetch_add(1, Ordering::AcqRel) + 1;
        let more = self.paced(i, true);
        // A backlog: the stream has more to give than it is let (the guard slows it), not just
        // inputs held up on their way (the guard protects those).
        if let Some(tally) = self.guarded.as_ref().and_then(|g| g.tallies.get(i)) {
            tally.routed(pending);
        }
        !more || self.window(i).is_some_and(|window| now >= window)
    }

    /// A shard processed an input of `source` (its plugins ran and the turn handed its outputs
    /// to NATS) that the stream stored at `stored_ns` (ns since the Unix epoch): its lag, for
    /// the guard. Measured to the end of processing, so what slows the shards (a busy disk, the
    /// cores, the other inputs of the same turn) counts too, not only the wait to get there.
    pub fn processed(&self, source: u16, stored_ns: i64) {
        if let Some(tally) = self.guarded.as_ref().and_then(|g| g.tallies.get(usize::from(source))) {
            let now_ns = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
            tally.lags.record(now_ns.saturating_sub(stored_ns));
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
        below && self.paced(i, false)
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
        assert!(!admission.routed(0, 0));
        assert!(admission.routed(0, 0), "at its window");
        assert!(!admission.has_room(0));
        assert!(admission.routed(1, 0), "a window of one");
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
        assert!(admission.routed(0, 0), "one is its window now");
        assert!(!admission.has_room(0));
        congested.store(false, Ordering::Release);
        assert!(admission.has_room(0), "the full window again");
    }

    #[test]
    fn a_source_with_a_rate_waits_once_its_seconds_worth_is_read() {
        let admission = Admission::new(vec![(100, Some(3))], || false);
        assert!(!admission.routed(0, 0));
        assert!(!admission.routed(0, 0));
        assert!(admission.routed(0, 0), "the third is the last of its second's worth");
        for _ in 0..3 {
            admission.taken(0);
        }
        assert!(!admission.has_room(0), "below its window, but past its rate");
        std::thread::sleep(std::time::Duration::from_millis(400));
        assert!(admission.has_room(0), "a third of a second earns one more");
    }

    #[test]
    fn a_bucket_past_its_seconds_worth_says_how_long_until_the_next_token() {
        let mut bucket = Bucket::new(4.0, 1.0);
        assert_eq!(bucket.until_room(), Duration::ZERO);
        for _ in 0..4 {
            bucket.take();
        }
        let wait = bucket.until_room();
        assert!(
            wait > Duration::from_millis(200) && wait <= Duration::from_millis(250),
            "a quarter of a second earns one of 4/s: {wait:?}"
        );
    }

    #[test]
    fn a_stream_with_a_backlog_is_held_back_while_another_waits_on_the_hub() {
        let streams = [
            ("HUB_INPUT".to_owned(), None),
            ("HUB_INPUT_flood".to_owned(), Some("flood".to_owned())),
        ];
        let admission = Admission::new(vec![(8, None), (8, None)], || false).guarded(1.25, &streams);
        assert!(admission.is_guarded());
        let stored = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos() as i64;
        for _ in 0..4 {
            admission.routed(0, 0);
            admission.taken(0);
            admission.processed(0, stored);
            admission.routed(1, 1_000_000);
            admission.taken(1);
            admission.processed(1, 0);
        }
        admission.steer();
        // The first tick with someone waiting holds the backlog to its least while the other
        // stream's unloaded lag is measured.
        let mut read = 0;
        while admission.has_room(1) && read < 100 {
            admission.routed(1, 1_000_000);
            admission.taken(1);
            read += 1;
        }
        assert!(read < 10, "held back after {read}");
        assert!(admission.has_room(0), "the stream without a backlog is not limited");
    }

    #[test]
    fn without_windows_nothing_is_counted() {
        let admission = Admission::unlimited();
        assert!(!admission.is_limited());
        assert!(!admission.routed(0, 0));
        admission.taken(0);
        assert!(admission.has_room(0));
    }
}
