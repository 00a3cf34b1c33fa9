//! The latency guard: while some tenants' streams have a backlog the hub drains as fast as the
//! shards take it, every process on the machine competes for the cores (the hub's threads,
//! nats-server's, the producers'), and the other tenants' inputs wait longer for each thread
//! they cross, even though admission keeps them at the head of every queue. The guard keeps
//! those tenants' tail latency near its unloaded value by reading the backlogged streams more
//! slowly.
//!
//! - A stream whose inputs are routed with a backlog of more than [`BACKLOG`] behind them is
//!   *pressing*: it has more to give than it is let. It presses until one is routed with less
//!   behind it, or none is for [`PRESSING_MEMORY`]: a limited stream routes nothing in most
//!   ticks, and is no less pressing for it. A stream read without such a backlog, with inputs in
//!   the last second, is *waiting on the hub*: its inputs' lag (from being stored in the stream
//!   to being processed by a shard) is what the guard keeps low.
//! - It steers by the [`QUANTILE`] of that lag over the last [`WINDOW`] ticks, not the mean:
//!   a flood read at a rate the mean hardly notices still delays one input in fifty by a
//!   whole time slice of a busy core, and the tail is what a tenant's p99 is made of.
//! - To that it adds the [`QUANTILE`] of a message's round trip from the hub through
//!   nats-server and back, timed every [`ROUND_TRIP_EVERY`] on the hub's connection while a
//!   source is limited: the lag starts when nats-server stores an input and ends when the hub
//!   hands its actions to NATS, but a tenant's latency also holds the way in (its producer to
//!   the stream) and out (nats-server to its subscriber). Reading a backlog makes nats-server
//!   work too (deliveries, acknowledgements), and on a machine whose cores they share, those
//!   ways slow with the flood while the hub's own part barely moves.
//! - Each tick it compares that quantile with a baseline: above `baseline × tolerance` the
//!   pressing streams' read rates are cut by a third, below it they grow by a twentieth (AIMD,
//!   as TCP does with a congestion window), so the guard settles just below the rate at which
//!   the others' tail rises. After a cut the window starts afresh and the guard waits for
//!   [`SETTLE_TICKS`] ticks of new lags before it decides again: the lags from before the cut
//!   would cut again for the same excess.
//! - The baseline is measured, not configured: when a stream starts waiting on the hub, and
//!   again after [`FIRST_PROBE_GAP`], twice that, and so on up to every [`PROBE_EVERY`], the
//!   pressing streams are held to [`MIN_RATE`] for [`PROBE`] and the lag's quantile meanwhile
//!   is measured; the least of the last [`PROBES_KEPT`] is the baseline (as BBR takes the least
//!   round trip of a window), so the first inputs of a tenant (its plugin instances made, its
//!   state trees opened) or one probe during a hiccup do not raise it. Measuring it again
//!   tracks a machine that got busier or quieter.
//! - With nobody waiting on the hub, or nobody pressing, nothing is limited: a backlog alone is
//!   drained at full speed.
//!
//! What it cannot see or help: the producers' and subscribers' own processes, and load the hub
//! does not cause: a producer publishing a flood costs nats-server's cores and its own however
//! slowly the hub reads it. The lag spans two clocks
//! (nats-server's host stores, the hub's processes): on two hosts they must agree to well within
//! the lag (NTP on a LAN does); a lag that reads negative counts as the least, so a clock far
//! off makes the guard limit less, never more.

use hdrhistogram::Histogram;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A stream holding more inputs than this not yet read is pressing (see the module): many
/// more than a tenant reading within its window ever has, unless the hub stalls.
pub const BACKLOG: u64 = 256;
/// How often the guard looks at the lags and steers.
pub const TICK: Duration = Duration::from_millis(50);
/// A pressing stream is read at this many inputs per second at least, so it always progresses.
pub const MIN_RATE: f64 = 50.0;
/// How long a probe holds the pressing streams to [`MIN_RATE`].
pub const PROBE: Duration = Duration::from_millis(500);
/// The first part of a probe is not measured: what the pressing streams had queued drains.
const PROBE_SETTLE: Duration = Duration::from_millis(100);
/// How long after the first probe the second comes; each gap after is twice the last.
pub const FIRST_PROBE_GAP: Duration = Duration::from_secs(1);
/// How often the baseline is measured again, at most.
pub const PROBE_EVERY: Duration = Duration::from_secs(10);
/// The baseline is the least of this many probes' quantiles: one probe of a source at 1,000
/// inputs/s holds 400 lags, whose 99th percentile is the fourth longest, too few to trust alone.
pub const PROBES_KEPT: usize = 4;
/// The quantile of the lag the guard keeps within `tolerance` of its baseline.
pub const QUANTILE: f64 = 0.99;
/// The ticks whose lags the guard steers by.
pub const WINDOW: usize = 10;
/// Ticks of lags the guard waits for after a cut (or a probe) before it decides again.
const SETTLE_TICKS: usize = 4;
/// A stream that had inputs within this time still counts as waiting on the hub.
const WAITING_MEMORY: Duration = Duration::from_secs(1);
/// A stream last seen with a backlog this long ago, and routing nothing since, no longer
/// presses: its reader stopped (a limited one routes an input every 20 ms at least).
const PRESSING_MEMORY: Duration = Duration::from_secs(1);
/// Lag within this much of the baseline is never a reason to slow anyone: the noise of a
/// sub-millisecond baseline.
const SLACK_NS: f64 = 50_000.0;
const DECREASE: f64 = 0.67;
const INCREASE: f64 = 1.05;
/// Lags are kept in µs, from 1 µs to a minute, to two significant digits.
const LAG_MAX_US: u64 = 60_000_000;
/// How often a message's round trip through nats-server is timed while a source is limited:
/// a window of [`WINDOW`] ticks then holds 250, against one nats-server message in a few
/// thousand of what the limited sources cost it.
pub const ROUND_TRIP_EVERY: Duration = Duration::from_millis(2);

/// A histogram of lags (µs), for [`Sample`].
pub fn lag_histogram() -> Histogram<u32> {
    // The bounds are constants that hdrhistogram accepts (low ≥ 1, high ≥ 2 × low, 2 digits).
    Histogram::new_with_bounds(1, LAG_MAX_US, 2).unwrap_or_else(|_| unreachable!("valid constant bounds"))
}

/// Record a lag (ns; negative when the clocks disagree) in a [`lag_histogram`].
pub fn record_lag(lags: &mut Histogram<u32>, lag_ns: i64) {
    let us = u64::try_from(lag_ns / 1_000).unwrap_or(0).clamp(1, LAG_MAX_US);
    lags.saturating_record(us);
}

/// What the inputs of a source routed during a tick said of its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum Backlog {
    /// None was routed: the stream is as the guard last saw it. A limited stream routes
    /// nothing in many ticks (at [`MIN_RATE`], one input every 20 ms), and still presses.
    #[default]
    Unseen,
    /// At most [`BACKLOG`] inputs were behind each.
    Short,
    /// More than [`BACKLOG`] were behind one: the source presses.
    Long,
}

impl Backlog {
    /// What an input routed with `pending` more behind it in its stream says.
    pub fn of(pending: u64) -> Backlog {
        match pending > BACKLOG {
            true => Backlog::Long,
            false => Backlog::Short,
        }
    }
}

/// What one source did during a tick.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The lags of the inputs the shards processed (µs; see [`record_lag`]).
    pub lags: Histogram<u32>,
    /// The most its routed inputs said of its backlog.
    pub backlog: Backlog,
}

impl Sample {
    /// Inputs the shards processed.
    pub fn taken(&self) -> u64 {
        self.lags.len()
    }
}

/// What the guard steers by over one tick or several: the waiting sources' lags and the round
/// trips through nats-server (µs each; see the module).
#[derive(Debug)]
struct Lags {
    inputs: Histogram<u32>,
    round_trips: Histogram<u32>,
}

impl Lags {
    fn new() -> Lags {
        Lags {
            inputs: lag_histogram(),
            round_trips: lag_histogram(),
        }
    }

    // Every histogram here has the same bounds: adding and subtracting cannot fail.
    fn add(&mut self, other: &Lags) {
        let _ = self.inputs.add(&other.inputs);
        let _ = self.round_trips.add(&other.round_trips);
    }

    fn subtract(&mut self, other: &Lags) {
        let _ = self.inputs.subtract(&other.inputs);
        let _ = self.round_trips.subtract(&other.round_trips);
    }

    fn reset(&mut self) {
        self.inputs.reset();
        self.round_trips.reset();
    }

    /// The [`QUANTILE`] of the inputs' lag plus that of the round trips (none timed count as
    /// none taken), in ns; nothing without inputs.
    fn quantile_ns(&self) -> Option<f64> {
        Some(quantile_ns(&self.inputs)? + quantile_ns(&self.round_trips).unwrap_or(0.0))
    }
}

/// The lags of the last ticks, added up (see [`WINDOW`]).
#[derive(Debug)]
struct Window {
    ticks: VecDeque<Lags>,
    sum: Lags,
}

impl Window {
    fn new() -> Window {
        Window {
            ticks: VecDeque::with_capacity(WINDOW + 1),
            sum: Lags::new(),
        }
    }

    fn push(&mut self, tick: Lags) {
        self.sum.add(&tick);
        self.ticks.push_back(tick);
        if self.ticks.len() > WINDOW
            && let Some(old) = self.ticks.pop_front()
        {
            self.sum.subtract(&old);
        }
    }

    fn clear(&mut self) {
        self.ticks.clear();
        self.sum.reset();
    }

    /// The quantile in ns, once the window holds lags of [`SETTLE_TICKS`] ticks.
    fn settled_quantile_ns(&self) -> Option<f64> {
        (self.ticks.len() >= SETTLE_TICKS).then_some(())?;
        self.sum.quantile_ns()
    }
}

/// The [`QUANTILE`] of a histogram of lags, in ns.
fn quantile_ns(lags: &Histogram<u32>) -> Option<f64> {
    (!lags.is_empty()).then(|| lags.value_at_quantile(QUANTILE) as f64 * 1_000.0)
}

#[derive(Debug)]
enum Phase {
    Steering,
    Probing {
        started: Instant,
        /// The lags measured (boxed: two histograms are large beside `Steering`).
        lags: Box<Lags>,
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
    /// By source: when a tick last saw its backlog, until one sees it routed without.
    pressing: Vec<Option<Instant>>,
    /// The lag's quantile in each of the last probes (ns).
    probes: VecDeque<f64>,
    baseline_ns: Option<f64>,
    /// The waiting sources' lags over the last ticks.
    window: Window,
    phase: Phase,
    next_probe: Instant,
    /// The time from the last probe to the next.
    probe_gap: Duration,
}

impl Guard {
    pub fn new(sources: usize, tolerance: f64) -> Guard {
        Guard {
            tolerance,
            limits: vec![None; sources],
            waiting: vec![None; sources],
            pressing: vec![None; sources],
            probes: VecDeque::with_capacity(PROBES_KEPT + 1),
            baseline_ns: None,
            window: Window::new(),
            phase: Phase::Steering,
            next_probe: Instant::now(),
            probe_gap: FIRST_PROBE_GAP,
        }
    }

    /// The read rate limit of each source now.
    pub fn limits(&self) -> &[Option<f64>] {
        &self.limits
    }

    /// The [`QUANTILE`] of the lag the waiting sources' inputs had when nobody pressed (ns),
    /// once measured.
    pub fn baseline_ns(&self) -> Option<f64> {
        self.baseline_ns
    }

    /// What the guard steers by over the last ticks (ns): the [`QUANTILE`] of the waiting
    /// sources' lag plus that of the round trips through nats-server.
    pub fn lag_ns(&self) -> Option<f64> {
        self.window.sum.quantile_ns()
    }

    /// The [`QUANTILE`] of the round trips through nats-server over the last ticks (ns).
    pub fn round_trip_ns(&self) -> Option<f64> {
        quantile_ns(&self.window.sum.round_trips)
    }

    /// Whether some source is limited: the round trips through nats-server are then timed.
    pub fn engaged(&self) -> bool {
        self.limits.iter().any(Option::is_some)
    }

    /// One tick of `elapsed`, ending `now`, with each source's sample (in source order) and the
    /// round trips through nats-server timed meanwhile (see [`ROUND_TRIP_EVERY`]).
    pub fn tick(&mut self, now: Instant, elapsed: Duration, samples: &[Sample], round_trips: Histogram<u32>) {
        let pressed = self.pressed(now, samples);
        let mut newly_waiting = false;
        for ((waiting, sample), &pressed) in self.waiting.iter_mut().zip(samples).zip(&pressed) {
            if pressed {
                *waiting = None;
            } else if sample.taken() > 0 {
                let recent = waiting.is_some_and(|at| now.duration_since(at) < WAITING_MEMORY);
                newly_waiting |= !recent;
                *waiting = Some(now);
            }
        }
        let anyone_waiting = self
            .waiting
            .iter()
            .any(|w| w.is_some_and(|at| now.duration_since(at) < WAITING_MEMORY));
        let anyone_pressing = pressed.contains(&true);
        let mut lags = Lags {
            inputs: lag_histogram(),
            round_trips,
        };
        // A pressing source's inputs waited in its backlog: their lag is the flood's, not what
        // the guard keeps low.
        for (sample, _) in samples.iter().zip(&pressed).filter(|(_, pressed)| !**pressed) {
            let _ = lags.inputs.add(&sample.lags);
        }
        let taken = lags.inputs.len();
        if !anyone_waiting || !anyone_pressing {
            self.phase = Phase::Steering;
            self.limits.iter_mut().for_each(|l| *l = None);
            self.window.push(lags);
            return;
        }
        // A source that does not press has nothing held back: a limit would only hide a
        // backlog it may get later from the guard's next decision.
        for (limit, &pressed) in self.limits.iter_mut().zip(&pressed) {
            if !pressed {
                *limit = None;
            }
        }
        let per_second = 1.0 / elapsed.as_secs_f64().max(1e-3);
        match &mut self.phase {
            Phase::Probing {
                started,
                lags: probe_lags,
                saved,
            } => {
                if now.duration_since(*started) > PROBE_SETTLE {
                    probe_lags.add(&lags);
                }
                if now.duration_since(*started) >= PROBE {
                    if let Some(quantile) = probe_lags.quantile_ns() {
                        self.probes.push_back(quantile);
                        if self.probes.len() > PROBES_KEPT {
                            self.probes.pop_front();
                        }
                        self.baseline_ns = self.probes.iter().copied().reduce(f64::min);
                    }
                    for ((limit, saved), &pressed) in self.limits.iter_mut().zip(saved.iter()).zip(&pressed) {
                        *limit = if pressed { *saved } else { None };
                    }
                    self.phase = Phase::Steering;
                    self.next_probe = now + self.probe_gap;
                    self.probe_gap = (self.probe_gap * 2).min(PROBE_EVERY);
                    // The lags with the backlogs held say nothing of the limits now.
                    self.window.clear();
                } else {
                    hold_pressing(&mut self.limits, &pressed);
                    self.window.push(lags);
                }
            }
            Phase::Steering if newly_waiting || now >= self.next_probe || self.baseline_ns.is_none() => {
                if newly_waiting {
                    self.probe_gap = FIRST_PROBE_GAP;
                }
                // Back to what each pressing source was allowed after the probe; one read at
                // full speed starts at half of it, so the others' lag need not climb all the
                // way from there.
                let saved = self
                    .limits
                    .iter()
                    .zip(samples)
                    .zip(&pressed)
                    .map(|((limit, s), pressed)| match pressed {
                        true => Some(limit.unwrap_or(s.taken() as f64 * per_second / 2.0).max(MIN_RATE)),
                        false => None,
                    })
                    .collect();
                hold_pressing(&mut self.limits, &pressed);
                self.phase = Phase::Probing {
                    started: now,
                    lags: Box::new(Lags::new()),
                    saved,
                };
                self.window.push(lags);
            }
            Phase::Steering => {
                self.window.push(lags);
                let (Some(baseline), Some(lag), true) =
                    (self.baseline_ns, self.window.settled_quantile_ns(), taken > 0)
                else {
                    return;
                };
                let over = lag > baseline * self.tolerance + SLACK_NS;
                for ((limit, sample), &pressed) in self.limits.iter_mut().zip(samples).zip(&pressed) {
                    if !pressed {
                        continue;
                    }
                    let read = sample.taken() as f64 * per_second;
                    let now_allowed = limit.unwrap_or(f64::INFINITY);
                    *limit = Some(match over {
                        true => (now_allowed.min(read) * DECREASE).max(MIN_RATE),
                        // A limit far above what the source is read at does not bind; kept
                        // within reach, a cut takes effect at once.
                        false => (now_allowed * INCREASE).min((read * 2.0).max(MIN_RATE * 2.0)),
                    });
                }
                if over {
                    self.window.clear();
                }
            }
        }
    }

    /// By source, whether it presses now, from what this tick's samples say of its backlog and
    /// what the ticks before said (see [`Backlog::Unseen`]).
    fn pressed(&mut self, now: Instant, samples: &[Sample]) -> Vec<bool> {
        self.pressing
            .iter_mut()
            .zip(samples)
            .map(|(pressing, sample)| {
                match sample.backlog {
                    Backlog::Long => *pressing = Some(now),
                    Backlog::Short => *pressing = None,
                    Backlog::Unseen => {}
                }
                pressing.is_some_and(|at| now.duration_since(at) < PRESSING_MEMORY)
            })
            .collect()
    }
}

/// Hold each pressing source to [`MIN_RATE`], for a probe.
fn hold_pressing(limits: &mut [Option<f64>], pressed: &[bool]) {
    for (limit, &pressed) in limits.iter_mut().zip(pressed) {
        if pressed {
            *limit = Some(MIN_RATE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: usize = 0;
    const FLOOD: usize = 1;

    fn histogram(lags_us: &[(u64, u32)]) -> Histogram<u32> {
        let mut lags = lag_histogram();
        for &(lag_us, count) in lags_us {
            lags.saturating_record_n(lag_us, count);
        }
        lags
    }

    fn sample(lags_us: &[(u64, u32)], backlog: Backlog) -> Sample {
        Sample {
            lags: histogram(lags_us),
            backlog,
        }
    }

    /// A tick with the flood's backlog read and nothing of the quiet source.
    fn flood_only() -> [Sample; 2] {
        [sample(&[], Backlog::Unseen), sample(&[(1, 1000)], Backlog::Long)]
    }

    /// Runs ticks from `at` in which the quiet source has 50 inputs with the lags (µs, count)
    /// given by `lags(flood's limit)`; the flood is read at its limit (or 1,000 per tick
    /// without one).
    fn run(guard: &mut Guard, at: &mut Instant, ticks: usize, lags: impl Fn(Option<f64>) -> Vec<(u64, u32)>) {
        run_timing_round_trips(guard, at, ticks, &lags, &|_| Vec::new());
    }

    /// As [`run`], with the round trips through nats-server of each tick given by
    /// `round_trips(flood's limit)`.
    fn run_timing_round_trips(
        guard: &mut Guard,
        at: &mut Instant,
        ticks: usize,
        lags: &impl Fn(Option<f64>) -> Vec<(u64, u32)>,
        round_trips: &impl Fn(Option<f64>) -> Vec<(u64, u32)>,
    ) {
        for _ in 0..ticks {
            *at += TICK;
            let limit = guard.limits()[FLOOD];
            let flood = limit.map_or(1000, |l| (l * TICK.as_secs_f64()) as u32);
            let samples = [
                sample(&lags(limit), Backlog::Short),
                sample(&[(1, flood)], Backlog::Long),
            ];
            guard.tick(*at, TICK, &samples, histogram(&round_trips(limit)));
        }
    }

    /// The quiet source's lags while the flood is read at full speed (2 ms) and once it is
    /// limited (200 µs): the guard limits it at its first probe and keeps it limited.
    fn slowed_until_limited(limit: Option<f64>) -> Vec<(u64, u32)> {
        all(if limit.is_some() { 200 } else { 2_000 })
    }

    /// Every quiet input of a tick has the same lag.
    fn all(lag_us: u64) -> Vec<(u64, u32)> {
        vec![(lag_us, 50)]
    }

    fn probe_ticks() -> usize {
        (PROBE.as_millis() / TICK.as_millis()) as usize + 1
    }

    #[test]
    fn a_backlog_alone_is_not_limited() {
        let mut guard = Guard::new(2, 1.25);
        let at = Instant::now();
        for i in 1..100 {
            guard.tick(at + TICK * i, TICK, &flood_only(), lag_histogram());
        }
        assert_eq!(guard.limits(), &[None, None]);
    }

    #[test]
    fn a_stream_starting_to_wait_on_the_hub_first_measures_its_baseline_with_the_flood_held() {
        let mut guard = Guard::new(2, 1.25);
        let mut at = Instant::now();
        run(&mut guard, &mut at, 1, |_| all(900));
        assert_eq!(guard.limits()[FLOOD], Some(MIN_RATE), "probing");
        assert_eq!(guard.limits()[QUIET], None);
        // Held back, the flood leaves the quiet source at 200 µs.
        run(&mut guard, &mut at, probe_ticks(), |limit| {
            match limit == Some(MIN_RATE) {
                true => all(200),
                false => all(900),
            }
        });
        assert_eq!(guard.baseline_ns(), Some(200_000.0));
        assert_eq!(guard.limits()[FLOOD], Some(10_000.0), "half what it was read at");
    }

    #[test]
    fn the_flood_settles_near_the_rate_at_which_the_quiet_sources_lag_rises() {
        let mut guard = Guard::new(2, 1.25);
        let mut at = Instant::now();
        // Lag grows with the flood's rate: 200 µs alone, doubling by 10,000/s.
        let lag = |limit: Option<f64>| all(200 + (limit.unwrap_or(20_000.0) / 50.0) as u64);
        run(&mut guard, &mut at, 150, lag);
        let limit = guard.limits()[FLOOD].expect("limited");
        // At most 250 µs + 50 µs of slack: 5,000/s; the cuts take it somewhat below.
        assert!((3_000.0..=5_600.0).contains(&limit), "{limit}");
        assert!(guard.lag_ns().is_some());
    }

    #[test]
    fn a_flood_that_delays_one_input_in_fifty_is_limited_though_the_mean_hardly_moves() {
        let mut guard = Guard::new(2, 1.5);
        let mut at = Instant::now();
        // Above 3,000/s one quiet input in fifty waits 1 ms instead of 200 µs: the mean rises
        // by a twelfth, the 99th percentile fivefold.
        let lags = |limit: Option<f64>| match limit.unwrap_or(f64::INFINITY) > 3_000.0 {
            true => vec![(200, 49), (1_000, 1)],
            false => all(200),
        };
        run(&mut guard, &mut at, 150, lags);
        let limit = guard.limits()[FLOOD].expect("limited");
        assert!((1_500.0..=3_300.0).contains(&limit), "{limit}");
    }

    #[test]
    fn a_flood_that_slows_nats_server_is_limited_though_the_hubs_own_lag_holds() {
        let mut guard = Guard::new(2, 1.5);
        let mut at = Instant::now();
        // The hub's part stays at 200 µs; a round trip through nats-server takes 100 µs, and
        // 1 ms for one in fifty once the flood is read faster than 2,000/s.
        let round_trips = |limit: Option<f64>| match limit.unwrap_or(f64::INFINITY) > 2_000.0 {
            true => vec![(100, 24), (1_000, 1)],
            false => vec![(100, 25)],
        };
        run_timing_round_trips(&mut guard, &mut at, 150, &|_| all(200), &round_trips);
        assert_eq!(guard.baseline_ns(), Some(300_000.0), "both parts, with the flood held");
        let limit = guard.limits()[FLOOD].expect("limited");
        assert!((1_000.0..=2_200.0).contains(&limit), "{limit}");
        assert!(guard.engaged());
        assert!(guard.round_trip_ns().is_some());
    }

    #[test]
    fn the_baseline_is_measured_again_and_follows_the_machine() {
        let mut guard = Guard::new(2, 1.25);
        let mut at = Instant::now();
        run(&mut guard, &mut at, 20, |_| all(200));
        assert_eq!(guard.baseline_ns(), Some(200_000.0));
        // Probes after 1, 2, 4 and 8 s, then every 10 s: the least of the last four is kept,
        // so a busier machine raises it once the probes before are gone.
        let seconds = |s: u64| (s * 1000 / TICK.as_millis() as u64) as usize;
        run(&mut guard, &mut at, seconds(20), |_| all(200));
        run(&mut guard, &mut at, seconds(25), |_| all(400));
        assert_eq!(guard.baseline_ns(), Some(200_000.0), "{:?}", guard.probes);
        run(&mut guard, &mut at, seconds(25), |_| all(400));
        // 400 µs is kept to two digits: within a 2 µs step.
        assert_eq!(guard.baseline_ns(), Some(401_000.0));
        // A quieter machine lowers it at the next probe.
        run(&mut guard, &mut at, seconds(11), |_| all(100));
        assert_eq!(guard.baseline_ns(), Some(100_000.0));
    }

    #[test]
    fn a_slow_first_probe_does_not_stay_the_baseline() {
        let mut guard = Guard::new(2, 1.25);
        let mut at = Instant::now();
        // A tenant's first inputs are slow (its plugin instances are made): 2 ms, then 200 µs.
        let mut ticks = 0;
        let mut step = |guard: &mut Guard, at: &mut Instant| {
            ticks += 1;
            run(guard, at, 1, |_| all(if ticks <= 12 { 2_000 } else { 200 }));
        };
        for _ in 0..12 {
            step(&mut guard, &mut at);
        }
        assert_eq!(guard.baseline_ns(), Some(2_007_000.0), "2 ms to two digits");
        for _ in 0..(FIRST_PROBE_GAP + PROBE).as_millis() / TICK.as_millis() + 1 {
            step(&mut guard, &mut at);
        }
        assert_eq!(guard.baseline_ns(), Some(200_000.0), "measured again a second later");
    }

    #[test]
    fn once_nobody_waits_on_the_hub_the_limits_go() {
        let mut guard = Guard::new(2, 1.25);
        let mut at = Instant::now();
        run(&mut guard, &mut at, 20, |_| all(2_000));
        assert!(guard.limits()[FLOOD].is_some());
        for _ in 0..(WAITING_MEMORY.as_millis() / TICK.as_millis() + 1) {
            at += TICK;
            guard.tick(at, TICK, &flood_only(), lag_histogram());
        }
        assert_eq!(guard.limits()[FLOOD], None);
    }

    #[test]
    fn a_limited_flood_that_routes_nothing_in_a_tick_stays_limited_and_its_lag_is_not_the_quiet_ones() {
        let mut guard = Guard::new(2, 1.5);
        let mut at = Instant::now();
        run(&mut guard, &mut at, 40, slowed_until_limited);
        let limit = guard.limits()[FLOOD].expect("limited");
        let lag = guard.lag_ns();
        // At 50 inputs/s a tick routes none of the flood, while the shards still process what
        // was routed before: inputs that waited seconds in its backlog.
        for _ in 0..5 {
            at += TICK;
            let samples = [
                sample(&all(200), Backlog::Short),
                sample(&[(3_000_000, 3)], Backlog::Unseen),
            ];
            guard.tick(at, TICK, &samples, lag_histogram());
            let now = guard.limits()[FLOOD].expect("still limited");
            assert!(
                now >= limit * DECREASE,
                "{now} against {limit}: cut for the flood's own lag"
            );
        }
        assert_eq!(guard.lag_ns(), lag, "the quiet source's lag alone");
    }

    #[test]
    fn a_source_seen_without_a_backlog_or_not_at_all_for_a_while_no_longer_presses() {
        let mut guard = Guard::new(2, 1.5);
        let mut at = Instant::now();
        run(&mut guard, &mut at, 40, slowed_until_limited);
        assert!(guard.limits()[FLOOD].is_some());
        at += TICK;
        let drained = [sample(&all(200), Backlog::Short), sample(&[(100, 3)], Backlog::Short)];
        guard.tick(at, TICK, &drained, lag_histogram());
        assert_eq!(guard.limits()[FLOOD], None, "its backlog is read");
        run(&mut guard, &mut at, 40, slowed_until_limited);
        assert!(guard.limits()[FLOOD].is_some());
        let silent = [sample(&all(200), Backlog::Short), sample(&[], Backlog::Unseen)];
        for _ in 0..PRESSING_MEMORY.as_millis() / TICK.as_millis() + 1 {
            at += TICK;
            guard.tick(at, TICK, &silent, lag_histogram());
        }
        assert_eq!(guard.limits()[FLOOD], None, "its reader stopped");
    }

    #[test]
    fn a_lag_that_reads_negative_counts_as_the_least() {
        let mut lags = lag_histogram();
        record_lag(&mut lags, -5_000_000);
        record_lag(&mut lags, i64::MAX);
        assert_eq!(lags.min(), 1);
        assert!(lags.max() >= LAG_MAX_US);
    }
}
