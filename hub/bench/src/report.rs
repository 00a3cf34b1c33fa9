//! The figures: each phase reduced to counts, rates and latency percentiles, each mode's medians
//! over the runs, durable ÷ core (`compare.rs`), and the text report (`text.rs`).

mod compare;
mod text;

use super::backtest::BacktestRun;
use super::cpu::CpuPerInput;
use super::mode::Mode;
use super::phase::{OutputCount, Outputs, PhaseOutcome};
use super::push::PushOutcome;
use super::swap::SwapTiming;
use super::{BenchArgs, Input, Mix};
use compare::{Comparison, Ratios, Target};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

pub(super) use text::print_text;

/// Latency percentiles in ms; absent when nothing was measured.
#[derive(Debug, Clone, Copy, Serialize)]
struct Latency {
    p50: Option<f64>,
    p99: Option<f64>,
    p999: Option<f64>,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Latency {
        let at = |q: f64| (!histogram.is_empty()).then(|| histogram.value_at_quantile(q) as f64 / 1000.0);
        Latency {
            p50: at(0.5),
            p99: at(0.99),
            p999: at(0.999),
        }
    }
}

/// One phase's figures.
#[derive(Debug, Clone, Serialize)]
struct PhaseReport {
    inputs: u64,
    expected_outputs: u64,
    received_outputs: u64,
    /// Expected outputs that did not arrive, counted subject by subject.
    lost: u64,
    /// Outputs beyond the expected ones (the bench's model of the plugins is wrong).
    unexpected: u64,
    /// Actions received (hub phases).
    actions: u64,
    /// Actions timed from the publish of the input that caused them (its id is their cause).
    timed_actions: u64,
    dead_letters: u64,
    inputs_by_subject: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    outputs_by_subject: BTreeMap<String, OutputCount>,
    /// Inputs per second from the first publish to the last output received.
    per_sec: f64,
    /// Inputs per second from the first publish to the last.
    published_per_sec: f64,
    /// Event→action latency (hub phases).
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_ms: Option<Latency>,
    /// CPU time per input over the phase (Linux).
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_per_input: Option<CpuPerInput>,
}

impl PhaseReport {
    fn new(o: &PhaseOutcome, outputs: Outputs) -> PhaseReport {
        let rate = |d: Duration| {
            if d.is_zero() {
                0.0
            } else {
                o.sent as f64 / d.as_secs_f64()
            }
        };
        PhaseReport {
            inputs: o.sent,
            expected_outputs: o.expected,
            received_outputs: o.received,
            lost: o.lost,
            unexpected: o.unexpected,
            actions: o.actions,
            timed_actions: o.latency.len(),
            dead_letters: o.dead_letters,
            inputs_by_subject: o.inputs.clone(),
            outputs_by_subject: o.outputs.clone(),
            per_sec: rate(o.elapsed),
            published_per_sec: rate(o.publishing),
            latency_ms: match outputs {
                Outputs::Hub => Some(Latency::of(&o.latency)),
                Outputs::Relay => None,
            },
            cpu_per_input: o.cpu,
        }
    }

    /// The median of every figure over the runs, except loss, unexpected outputs and dead letters,
    /// which are summed because any of them is a failure.
    fn combine(runs: &[&PhaseReport]) -> PhaseReport {
        let count = |f: &dyn Fn(&PhaseReport) -> u64| median_u64(runs.iter().map(|r| f(r)).collect());
        let rate = |f: fn(&PhaseReport) -> f64| median(runs.iter().map(|r| f(r)).collect()).unwrap_or(0.0);
        let lat = |f: fn(&Latency) -> Option<f64>| {
            median(runs.iter().filter_map(|r| r.latency_ms.and_then(|l| f(&l))).collect())
        };
        PhaseReport {
            inputs: count(&|r| r.inputs),
            expected_outputs: count(&|r| r.expected_outputs),
            received_outputs: count(&|r| r.received_outputs),
            lost: runs.iter().map(|r| r.lost).sum(),
            unexpected: runs.iter().map(|r| r.unexpected).sum(),
            actions: count(&|r| r.actions),
            timed_actions: count(&|r| r.timed_actions),
            dead_letters: runs.iter().map(|r| r.dead_letters).sum(),
            inputs_by_subject: keys(runs, |r| &r.inputs_by_subject)
                .map(|s| (s.clone(), count(&|r| r.inputs_by_subject.get(s).copied().unwrap_or(0))))
                .collect(),
            outputs_by_subject: keys(runs, |r| &r.outputs_by_subject)
                .map(|s| {
                    let of = |r: &PhaseReport| r.outputs_by_subject.get(s).copied();
                    let figures = OutputCount {
                        expected: count(&|r| of(r).map_or(0, |c| c.expected)),
                        received: count(&|r| of(r).map_or(0, |c| c.received)),
                    };
                    (s.clone(), figures)
                })
                .collect(),
            per_sec: rate(|r| r.per_sec),
            published_per_sec: rate(|r| r.published_per_sec),
            latency_ms: runs.first().and_then(|r| r.latency_ms).map(|_| Latency {
                p50: lat(|l| l.p50),
                p99: lat(|l| l.p99),
                p999: lat(|l| l.p999),
            }),
            cpu_per_input: median(
                runs.iter()
                    .filter_map(|r| r.cpu_per_input.map(|c| c.process_us))
                    .collect(),
            )
            .map(|process_us| CpuPerInput {
                process_us,
                nats_server_us: median(
                    runs.iter()
                        .filter_map(|r| r.cpu_per_input.and_then(|c| c.nats_server_us))
                        .collect(),
                ),
            }),
        }
    }

    /// Event→action p99 in ms, if any action was timed.
    fn p99(&self) -> Option<f64> {
        self.latency_ms.and_then(|l| l.p99)
    }

    /// CPU µs per input of the bench process and a private nats-server together: what an input
    /// costs the machine.
    fn cpu_us(&self) -> Option<f64> {
        self.cpu_per_input
            .map(|c| c.process_us + c.nats_server_us.unwrap_or(0.0))
    }
}

/// The subjects of a map of any of the runs.
fn keys<'a, V: 'a>(
    runs: &[&'a PhaseReport],
    map: impl Fn(&'a PhaseReport) -> &'a BTreeMap<String, V>,
) -> impl Iterator<Item = &'a String> {
    let subjects: std::collections::BTreeSet<&String> = runs.iter().flat_map(|r| map(r).keys()).collect();
    subjects.into_iter()
}

/// The middle value, or the mean of the two middle ones; None for no values.
pub(super) fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    match values.len() {
        0 => None,
        n if n % 2 == 1 => Some(values[mid]),
        _ => Some((values[mid - 1] + values[mid]) / 2.0),
    }
}

/// The lower middle value of counts (a count stays a whole number); 0 for no values.
fn median_u64(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values.get(values.len().saturating_sub(1) / 2).copied().unwrap_or(0)
}

/// One hub's figures in one run.
#[derive(Debug, Clone, Serialize)]
pub(super) struct HubRun {
    /// Plugins live in the hub (examples and idle ones).
    plugins: usize,
    unpaced: PhaseReport,
    paced: PhaseReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    swapping: Option<PhaseReport>,
    swaps: Vec<SwapTiming>,
    #[serde(skip_serializing_if = "Option::is_none")]
    push: Option<PushReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backtest: Option<BacktestRun>,
    /// This hub's unpaced events/s ÷ the relay's msgs/s of the same run.
    hub_relay_ratio: f64,
}

impl HubRun {
    /// A hub's phases as measured; its hub/relay ratio comes with the run's relay phase.
    pub(super) fn new(
        plugins: usize,
        unpaced: &PhaseOutcome,
        paced: &PhaseOutcome,
        swapping: Option<(PhaseOutcome, Vec<SwapTiming>)>,
        push: Option<&PushOutcome>,
        backtest: Option<BacktestRun>,
    ) -> HubRun {
        let (swapping, swaps) = match swapping {
            Some((phase, swaps)) => (Some(PhaseReport::new(&phase, Outputs::Hub)), swaps),
            None => (None, Vec::new()),
        };
        HubRun {
            plugins,
            unpaced: PhaseReport::new(unpaced, Outputs::Hub),
            paced: PhaseReport::new(paced, Outputs::Hub),
            swapping,
            swaps,
            push: push.map(PushReport::new),
            backtest,
            hub_relay_ratio: 0.0,
        }
    }
}

/// One run's figures: each mode's hub, and the relay on the same bodies.
#[derive(Debug, Clone, Serialize)]
pub(super) struct RunReport {
    /// The modes in the order this run measured them.
    order: Vec<Mode>,
    /// Each mode's hub, by mode.
    modes: BTreeMap<Mode, HubRun>,
    relay: PhaseReport,
    /// Durable ÷ core within this run (when it measured both).
    #[serde(skip_serializing_if = "Option::is_none")]
    durable_vs_core: Option<Ratios>,
}

impl RunReport {
    /// `hubs` in the order they ran.
    pub(super) fn new(hubs: Vec<(Mode, HubRun)>, relay: &PhaseOutcome) -> RunReport {
        let relay = PhaseReport::new(relay, Outputs::Relay);
        let order = hubs.iter().map(|(mode, _)| *mode).collect();
        let modes: BTreeMap<Mode, HubRun> = hubs
            .into_iter()
            .map(|(mode, mut hub)| {
                hub.hub_relay_ratio = ratio(hub.unpaced.per_sec, relay.per_sec);
                (mode, hub)
            })
            .collect();
        let durable_vs_core = modes
            .get(&Mode::Durable)
            .zip(modes.get(&Mode::Core))
            .map(|(durable, core)| Ratios::of(durable, core));
        RunReport {
            order,
            modes,
            relay,
            durable_vs_core,
        }
    }
}

/// The backtest phase's medians over the runs.
#[derive(Debug, Clone, Serialize)]
pub(super) struct BacktestReport {
    pub(super) inputs: u64,
    pub(super) inputs_per_s: f64,
    pub(super) wall_ms: f64,
}

impl BacktestReport {
    fn from_runs(runs: &[BacktestRun]) -> Option<BacktestReport> {
        let first = runs.first()?;
        Some(BacktestReport {
            inputs: first.inputs,
            inputs_per_s: median(runs.iter().map(BacktestRun::inputs_per_s).collect()).unwrap_or(0.0),
            wall_ms: median(runs.iter().map(|r| r.wall_ms).collect()).unwrap_or(0.0),
        })
    }
}

/// The push phase: support callbacks rendered by `notify` and received on the devices.
#[derive(Debug, Clone, Serialize)]
struct PushReport {
    devices: u64,
    expected: u64,
    received: u64,
    lost: u64,
    /// Time to connect every device, in ms.
    connect_ms: f64,
    /// From the publish of the triggering input to the message on the device.
    latency_ms: Latency,
}

impl PushReport {
    fn new(o: &PushOutcome) -> PushReport {
        PushReport {
            devices: o.devices,
            expected: o.expected,
            received: o.received,
            lost: o.expected.saturating_sub(o.received),
            connect_ms: o.connecting.as_secs_f64() * 1000.0,
            latency_ms: Latency::of(&o.latency),
        }
    }

    /// Medians over the runs (losses add up).
    fn combine(runs: &[&PushReport]) -> Option<PushReport> {
        let first = runs.first()?;
        let m = |f: fn(&Latency) -> Option<f64>| median(runs.iter().filter_map(|r| f(&r.latency_ms)).collect());
        Some(PushReport {
            devices: first.devices,
            expected: runs.iter().map(|r| r.expected).sum(),
            received: runs.iter().map(|r| r.received).sum(),
            lost: runs.iter().map(|r| r.lost).sum(),
            connect_ms: median(runs.iter().map(|r| r.connect_ms).collect()).unwrap_or(0.0),
            latency_ms: Latency {
                p50: m(|l| l.p50),
                p99: m(|l| l.p99),
                p999: m(|l| l.p999),
            },
        })
    }
}

/// The swapping phase next to the steady paced phase of the same hubs.
#[derive(Debug, Clone, Serialize)]
struct SwapReport {
    swaps: usize,
    phase: PhaseReport,
    /// p99 event→action while swapping ÷ p99 in the paced phase (target ≤ 2).
    p99_ratio: Option<f64>,
    put_ms_median: Option<f64>,
    put_ms_max: Option<f64>,
    live_ms_median: Option<f64>,
    live_ms_max: Option<f64>,
}

impl SwapReport {
    fn from_runs(hubs: &[&HubRun], paced: &PhaseReport) -> Option<SwapReport> {
        let phases: Vec<&PhaseReport> = hubs.iter().filter_map(|h| h.swapping.as_ref()).collect();
        if phases.is_empty() {
            return None;
        }
        let phase = PhaseReport::combine(&phases);
        let timings: Vec<SwapTiming> = hubs.iter().flat_map(|h| h.swaps.iter().copied()).collect();
        let max = |v: Vec<f64>| v.into_iter().reduce(f64::max);
        Some(SwapReport {
            swaps: timings.len(),
            p99_ratio: phase.p99().zip(paced.p99()).map(|(s, p)| ratio(s, p)),
            put_ms_median: median(timings.iter().map(|t| t.put_ms).collect()),
            put_ms_max: max(timings.iter().map(|t| t.put_ms).collect()),
            live_ms_median: median(timings.iter().map(|t| t.live_ms).collect()),
            live_ms_max: max(timings.iter().map(|t| t.live_ms).collect()),
            phase,
        })
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// One mode's medians over the runs.
#[derive(Debug, Serialize)]
pub(super) struct ModeReport {
    /// Plugins live in the hub (examples and `--idle-plugins`).
    plugins: usize,
    unpaced: PhaseReport,
    paced: PhaseReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    swapping: Option<SwapReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    push: Option<PushReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) backtest: Option<BacktestReport>,
    /// Median of the runs' hub/relay ratios (each from the same run).
    hub_relay_ratio: f64,
}

impl ModeReport {
    fn from_runs(hubs: &[&HubRun]) -> ModeReport {
        let phase =
            |f: fn(&HubRun) -> &PhaseReport| PhaseReport::combine(&hubs.iter().map(|h| f(h)).collect::<Vec<_>>());
        let paced = phase(|h| &h.paced);
        ModeReport {
            plugins: hubs.first().map_or(0, |h| h.plugins),
            unpaced: phase(|h| &h.unpaced),
            swapping: SwapReport::from_runs(hubs, &paced),
            push: PushReport::combine(&hubs.iter().filter_map(|h| h.push.as_ref()).collect::<Vec<_>>()),
            backtest: BacktestReport::from_runs(&hubs.iter().filter_map(|h| h.backtest).collect::<Vec<_>>()),
            hub_relay_ratio: median(hubs.iter().map(|h| h.hub_relay_ratio).collect()).unwrap_or(0.0),
            paced,
        }
    }

    /// Outputs lost in any of this mode's phases.
    fn lost(&self) -> u64 {
        self.unpaced.lost
            + self.paced.lost
            + self.swapping.as_ref().map_or(0, |s| s.phase.lost)
            + self.push.as_ref().map_or(0, |p| p.lost)
    }

    /// Outputs beyond the expected ones in any of this mode's phases.
    fn unexpected(&self) -> u64 {
        self.unpaced.unexpected + self.paced.unexpected + self.swapping.as_ref().map_or(0, |s| s.phase.unexpected)
    }

    fn dead_letters(&self) -> u64 {
        self.unpaced.dead_letters + self.paced.dead_letters + self.swapping.as_ref().map_or(0, |s| s.phase.dead_letters)
    }
}

/// The whole report: settings, each mode's medians side by side, durable ÷ core, the targets,
/// and every run.
#[derive(Debug, Serialize)]
pub(super) struct Report {
    shards: usize,
    /// Plugins live in the hub (examples and `--idle-plugins`).
    plugins: usize,
    actors: u64,
    mix: Mix,
    input: Input,
    runs: u64,
    /// Requested pace of the paced phase.
    rate: u64,
    seconds: u64,
    /// A shadow of the swap target ran beside it in every phase (`--shadow`).
    pub(super) shadow: bool,
    /// The mode the swapping and push phases ran in (absent when neither ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    swapping_and_push_mode: Option<Mode>,
    /// Each mode's medians over the runs, by mode.
    modes: BTreeMap<Mode, ModeReport>,
    /// The plain relay, once per run.
    relay: PhaseReport,
    /// Durable ÷ core: the median of the per-run ratios (when both modes ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    durable_vs_core: Option<Comparison>,
    /// The targets for durable mode (informative: only loss fails the bench).
    targets: Vec<Target>,
    /// Slow-consumer events of the bench's clients (each means messages dropped).
    pub(super) client_slow_consumers: u64,
    /// Slow-consumer reports in a private nats-server's log (null with --nats).
    pub(super) server_slow_consumers: Option<u64>,
    per_run: Vec<RunReport>,
}

impl Report {
    pub(super) fn from_runs(args: &BenchArgs, shards: usize, runs: Vec<RunReport>) -> Report {
        let mut modes = BTreeMap::new();
        for mode in [Mode::Durable, Mode::Core] {
            let hubs: Vec<&HubRun> = runs.iter().filter_map(|r| r.modes.get(&mode)).collect();
            if !hubs.is_empty() {
                modes.insert(mode, ModeReport::from_runs(&hubs));
            }
        }
        let relay = PhaseReport::combine(&runs.iter().map(|r| &r.relay).collect::<Vec<_>>());
        let durable_vs_core = Comparison::of(&runs);
        let targets = Target::check(modes.get(&Mode::Durable), durable_vs_core.as_ref(), args.rate);
        let measured_extras = modes.values().any(|m| m.swapping.is_some() || m.push.is_some());
        Report {
            shards,
            plugins: modes.values().next().map_or(0, |m| m.plugins),
            actors: args.actors,
            mix: args.mix,
            input: args.input,
            runs: args.runs,
            rate: args.rate,
            seconds: args.seconds,
            shadow: args.shadow,
            swapping_and_push_mode: measured_extras.then(|| args.input.extras_mode()),
            modes,
            relay,
            durable_vs_core,
            targets,
            client_slow_consumers: 0,
            server_slow_consumers: None,
            per_run: runs,
        }
    }

    /// What went wrong, if anything: a lost or an unexpected output fails the bench. Missed
    /// targets do not: on a shared VM they say as much about the neighbours as about the hub.
    pub(super) fn failure(&self) -> Option<String> {
        let lost: u64 = self.modes.values().map(ModeReport::lost).sum::<u64>() + self.relay.lost;
        if lost > 0 {
            let mut parts: Vec<String> = self
                .modes
                .iter()
                .map(|(mode, m)| {
                    format!(
                        "{mode}: unpaced {}, paced {}, swapping {}, push {}",
                        m.unpaced.lost,
                        m.paced.lost,
                        m.swapping.as_ref().map_or(0, |s| s.phase.lost),
                        m.push.as_ref().map_or(0, |p| p.lost)
                    )
                })
                .collect();
            parts.push(format!("relay {}", self.relay.lost));
            return Some(format!(
                "{lost} output(s) lost over {} run(s): {}",
                self.runs,
                parts.join("; ")
            ));
        }
        let unexpected: u64 = self.modes.values().map(ModeReport::unexpected).sum();
        (unexpected > 0).then(|| {
            let parts: Vec<String> = self
                .modes
                .iter()
                .map(|(mode, m)| {
                    format!(
                        "{mode}: unpaced {}, paced {}, swapping {}",
                        m.unpaced.unexpected,
                        m.paced.unexpected,
                        m.swapping.as_ref().map_or(0, |s| s.phase.unexpected)
                    )
                })
                .collect();
            format!(
                "{unexpected} unexpected output(s) over {} run(s) ({}): the bench's model of the plugins is wrong",
                self.runs,
                parts.join("; ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
        assert_eq!(median_u64(vec![5, 1, 3, 9]), 3);
    }
}
