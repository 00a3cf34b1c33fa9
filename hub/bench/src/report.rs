//! The figures: each phase reduced to counts, rates and latency percentiles, medians over the
//! runs, and the text report.

use super::BenchArgs;
use super::cpu::CpuPerInput;
use super::phase::{OutputCount, Outputs, PhaseOutcome};
use super::push::PushOutcome;
use super::swap::SwapTiming;
use super::{Input, Mix};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

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
fn median(mut values: Vec<f64>) -> Option<f64> {
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

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub(super) struct RunReport {
    /// Plugins live in the hub (examples and idle ones).
    pub(super) plugins: usize,
    unpaced: PhaseReport,
    paced: PhaseReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    swapping: Option<PhaseReport>,
    swaps: Vec<SwapTiming>,
    relay: PhaseReport,
    /// Hub unpaced events/s ÷ relay msgs/s.
    hub_relay_ratio: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) push: Option<PushReport>,
}

/// The push phase: support callbacks rendered by `notify` and received on the devices.
#[derive(Debug, Clone, Serialize)]
pub(super) struct PushReport {
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
    pub(super) fn new(o: &PushOutcome) -> PushReport {
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

impl RunReport {
    pub(super) fn new(
        unpaced: PhaseOutcome,
        paced: PhaseOutcome,
        swapping: Option<(PhaseOutcome, Vec<SwapTiming>)>,
        relay: PhaseOutcome,
    ) -> RunReport {
        let unpaced = PhaseReport::new(&unpaced, Outputs::Hub);
        let paced = PhaseReport::new(&paced, Outputs::Hub);
        let relay = PhaseReport::new(&relay, Outputs::Relay);
        let (swapping, swaps) = match swapping {
            Some((phase, swaps)) => (Some(PhaseReport::new(&phase, Outputs::Hub)), swaps),
            None => (None, Vec::new()),
        };
        RunReport {
            plugins: 0,
            hub_relay_ratio: ratio(unpaced.per_sec, relay.per_sec),
            unpaced,
            paced,
            swapping,
            swaps,
            relay,
            push: None,
        }
    }
}

/// The swapping phase next to the steady paced phase of the same runs.
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
    fn from_runs(runs: &[RunReport], paced: &PhaseReport) -> Option<SwapReport> {
        let phases: Vec<&PhaseReport> = runs.iter().filter_map(|r| r.swapping.as_ref()).collect();
        if phases.is_empty() {
            return None;
        }
        let phase = PhaseReport::combine(&phases);
        let timings: Vec<SwapTiming> = runs.iter().flat_map(|r| r.swaps.iter().copied()).collect();
        let max = |v: Vec<f64>| v.into_iter().reduce(f64::max);
        let p99 = |p: &PhaseReport| p.latency_ms.and_then(|l| l.p99);
        Some(SwapReport {
            swaps: timings.len(),
            p99_ratio: p99(&phase).zip(p99(paced)).map(|(s, p)| ratio(s, p)),
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

/// The whole report: settings, medians over the runs, and every run.
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
    unpaced: PhaseReport,
    paced: PhaseReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    swapping: Option<SwapReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    push: Option<PushReport>,
    relay: PhaseReport,
    hub_relay_ratio: f64,
    /// Slow-consumer events of the bench's clients (each means messages dropped).
    pub(super) client_slow_consumers: u64,
    /// Slow-consumer reports in a private nats-server's log (null with --nats).
    pub(super) server_slow_consumers: Option<u64>,
    per_run: Vec<RunReport>,
}

impl Report {
    pub(super) fn from_runs(args: &BenchArgs, shards: usize, runs: Vec<RunReport>) -> Report {
        let phase = |f: fn(&RunReport) -> &PhaseReport| PhaseReport::combine(&runs.iter().map(f).collect::<Vec<_>>());
        let unpaced = phase(|r| &r.unpaced);
        let paced = phase(|r| &r.paced);
        let relay = phase(|r| &r.relay);
        let swapping = SwapReport::from_runs(&runs, &paced);
        let push = PushReport::combine(&runs.iter().filter_map(|r| r.push.as_ref()).collect::<Vec<_>>());
        Report {
            shards,
            plugins: runs.first().map_or(0, |r| r.plugins),
            actors: args.actors,
            mix: args.mix,
            input: args.input,
            runs: args.runs,
            rate: args.rate,
            seconds: args.seconds,
            hub_relay_ratio: ratio(unpaced.per_sec, relay.per_sec),
            unpaced,
            paced,
            swapping,
            push,
            relay,
            client_slow_consumers: 0,
            server_slow_consumers: None,
            per_run: runs,
        }
    }
}

impl Report {
    /// What went wrong, if anything: a lost or an unexpected output fails the bench.
    pub(super) fn failure(&self) -> Option<String> {
        let swapping_lost = self.swapping.as_ref().map_or(0, |s| s.phase.lost);
        let push_lost = self.push.as_ref().map_or(0, |p| p.lost);
        let lost = self.unpaced.lost + self.paced.lost + swapping_lost + push_lost + self.relay.lost;
        if lost > 0 {
            return Some(format!(
                "{lost} output(s) lost over {} run(s): unpaced {}, paced {}, swapping {swapping_lost}, push \
                 {push_lost}, relay {}",
                self.runs, self.unpaced.lost, self.paced.lost, self.relay.lost
            ));
        }
        let swapping_unexpected = self.swapping.as_ref().map_or(0, |s| s.phase.unexpected);
        let unexpected = self.unpaced.unexpected + self.paced.unexpected + swapping_unexpected;
        (unexpected > 0).then(|| {
            format!(
                "{unexpected} unexpected output(s) over {} run(s) (unpaced {}, paced {}, swapping \
                 {swapping_unexpected}): the bench's model of the plugins is wrong",
                self.runs, self.unpaced.unexpected, self.paced.unexpected
            )
        })
    }
}

/// The readable report.
pub(super) fn print_text(r: &Report) {
    println!(
        "hub bench: {} shards, {} plugins, {} actors, {:?} mix, {:?} input, {} run(s) (medians)",
        r.shards, r.plugins, r.actors, r.mix, r.input, r.runs
    );
    // The blend of many subjects says what it was made of; the example mixes' lines stay as they were.
    let breakdown = r.mix == Mix::Scenarios;
    if breakdown {
        println!("inputs    {}", shares(&r.unpaced.inputs_by_subject, r.unpaced.inputs));
    }
    println!(
        "unpaced   {} events   {:.0} events/s   lost {}   {}",
        r.unpaced.inputs,
        r.unpaced.per_sec,
        r.unpaced.lost,
        latency_text(r.unpaced.latency_ms)
    );
    if let Some(cpu) = r.unpaced.cpu_per_input {
        println!("  cpu     {}", cpu_text(cpu, "event"));
    }
    if breakdown {
        println!("  outputs {}", outputs_text(&r.unpaced));
    }
    println!(
        "paced     {}/s for {} s (achieved {:.0}/s)   lost {}   {}",
        r.rate,
        r.seconds,
        r.paced.published_per_sec,
        r.paced.lost,
        latency_text(r.paced.latency_ms)
    );
    if breakdown {
        println!("  outputs {}", outputs_text(&r.paced));
    }
    if let Some(s) = &r.swapping {
        let ms = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1} ms"));
        println!(
            "swapping  {}/s for {} s with {} swaps   lost {}   {}   p99 ÷ paced p99 = {}",
            r.rate,
            r.seconds,
            s.swaps,
            s.phase.lost,
            latency_text(s.phase.latency_ms),
            s.p99_ratio.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}"))
        );
        println!(
            "swaps     live on every shard after median {} (max {}); upload with validation median {} (max {})",
            ms(s.live_ms_median),
            ms(s.live_ms_max),
            ms(s.put_ms_median),
            ms(s.put_ms_max)
        );
    }
    if let Some(p) = &r.push {
        println!(
            "push      {}/s for {} s to {} devices (WebSocket, connected in {:.0} ms)   lost {}   {}",
            r.rate,
            r.seconds,
            p.devices,
            p.connect_ms,
            p.lost,
            latency_text(Some(p.latency_ms))
        );
    }
    let relay_lost = if r.relay.lost > 0 {
        format!("   lost {}", r.relay.lost)
    } else {
        String::new()
    };
    println!(
        "relay     {:.0} msgs/s (plain async-nats subscribe+republish)   hub/relay = {:.2}{relay_lost}",
        r.relay.per_sec, r.hub_relay_ratio
    );
    if let Some(cpu) = r.relay.cpu_per_input {
        println!("  cpu     {}", cpu_text(cpu, "message"));
    }
    let dead_letters =
        r.unpaced.dead_letters + r.paced.dead_letters + r.swapping.as_ref().map_or(0, |s| s.phase.dead_letters);
    if dead_letters > 0 {
        println!("warning   {dead_letters} dead letter(s) on hub.dlq.>");
    }
    let unexpected = r.unpaced.unexpected + r.paced.unexpected + r.swapping.as_ref().map_or(0, |s| s.phase.unexpected);
    if unexpected > 0 {
        println!("warning   {unexpected} unexpected output(s) on hub.events.> / hub.actions.>");
    }
    if r.client_slow_consumers > 0 || r.server_slow_consumers.is_some_and(|n| n > 0) {
        println!(
            "warning   slow consumers: {} in the bench's clients, {} in nats-server's log",
            r.client_slow_consumers,
            r.server_slow_consumers.unwrap_or(0)
        );
    }
}

/// CPU time per input: what contention on a shared machine distorts least.
fn cpu_text(cpu: CpuPerInput, per: &str) -> String {
    let server = cpu
        .nats_server_us
        .map_or_else(String::new, |s| format!(" + nats-server {s:.1} µs"));
    format!("{:.1} µs per {per} (bench process){server}", cpu.process_us)
}

/// Each subject's share of the inputs, largest first.
fn shares(by_subject: &BTreeMap<String, u64>, total: u64) -> String {
    let mut subjects: Vec<(&String, &u64)> = by_subject.iter().collect();
    subjects.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let percent = |n: u64| {
        if total == 0 {
            0.0
        } else {
            n as f64 * 100.0 / total as f64
        }
    };
    let parts: Vec<String> = subjects
        .iter()
        .map(|(subject, n)| format!("{subject} {:.1} %", percent(**n)))
        .collect();
    parts.join(", ")
}

/// The outputs received, events then actions (and how many actions were timed).
fn outputs_text(p: &PhaseReport) -> String {
    let list = |prefix: &str| {
        let parts: Vec<String> = p
            .outputs_by_subject
            .iter()
            .filter_map(|(s, c)| s.strip_prefix(prefix).map(|name| format!("{name} {}", c.received)))
            .collect();
        parts.join(", ")
    };
    format!(
        "{} events: {}; {} actions ({} timed): {}",
        p.received_outputs.saturating_sub(p.actions),
        list("hub.events."),
        p.actions,
        p.timed_actions,
        list("hub.actions.")
    )
}

fn latency_text(latency: Option<Latency>) -> String {
    let ms = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1} ms"));
    match latency {
        Some(l) => format!(
            "event→action p50 {}  p99 {}  p99.9 {}",
            ms(l.p50),
            ms(l.p99),
            ms(l.p999)
        ),
        None => String::new(),
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
