//! The readable report: each mode's medians side by side in a table with durable ÷ core next to
//! them, then what only one mode measured, the relay, the targets and any warning.

use super::compare::{Comparison, RatioFigures};
use super::{Latency, ModeReport, PhaseReport, Report};
use crate::Mix;
use crate::cpu::CpuPerInput;
use crate::mode::Mode;
use std::collections::BTreeMap;

/// Width of the table's label column.
const LABEL: usize = 30;
/// Width of each of its figure columns.
const CELL: usize = 14;
/// What the table shows where a mode did not measure a figure.
const NONE: &str = "–";

/// Print the report.
pub(crate) fn print_text(r: &Report) {
    header(r);
    // The blend of many subjects says what it was made of; the example mixes' lines stay short.
    let breakdown = r.mix == Mix::Scenarios;
    if breakdown && let Some(m) = r.modes.values().next() {
        println!("inputs    {}", shares(&m.unpaced.inputs_by_subject, m.unpaced.inputs));
    }
    println!();
    Table::new(r).print();
    println!();
    if breakdown {
        for (mode, m) in &r.modes {
            println!("outputs   {mode} unpaced: {}", outputs_text(&m.unpaced));
            println!("          {mode} paced: {}", outputs_text(&m.paced));
        }
    }
    details(r);
    relay(r);
    if let Some(c) = &r.durable_vs_core {
        ratios(c);
    }
    targets(r);
    warnings(r);
}

/// The settings, and which hubs each run measured in which order.
fn header(r: &Report) {
    println!(
        "hub bench: {} shards, {} plugins, {} actors, {:?} mix, {} run(s); figures are medians over the runs",
        r.shards, r.plugins, r.actors, r.mix, r.runs
    );
    let order = |run: usize| {
        r.per_run.get(run).map(|run| {
            let modes: Vec<&str> = run.order.iter().map(|m| m.name()).collect();
            modes.join(" → ")
        })
    };
    if r.modes.len() > 1 {
        let mut runs: Vec<String> = (0..r.per_run.len().min(2))
            .filter_map(|i| order(i).map(|o| format!("run {} {o}", i + 1)))
            .collect();
        if r.per_run.len() > 2 {
            runs.push("… alternating".to_owned());
        }
        println!(
            "modes     both, each run on fresh hubs with the same inputs: {}",
            runs.join(", ")
        );
    } else if let Some(mode) = r.modes.keys().next() {
        println!("modes     {mode} only (--input both compares it with the other)");
    }
    if r.shadow {
        println!(
            "shadow    a shadow version of the swapped plugin runs beside it in every phase (its calls are in the plugins' count)"
        );
    }
    println!(
        "load      unpaced {} inputs per hub; paced {}/s for {} s",
        r.modes.values().next().map_or(0, |m| m.unpaced.inputs),
        r.rate,
        r.seconds
    );
}

/// The side-by-side table: one column per mode, and durable/core when both ran.
struct Table<'a> {
    modes: &'a BTreeMap<Mode, ModeReport>,
    comparison: Option<&'a Comparison>,
}

impl<'a> Table<'a> {
    fn new(r: &'a Report) -> Table<'a> {
        Table {
            modes: &r.modes,
            comparison: r.durable_vs_core.as_ref(),
        }
    }

    fn print(&self) {
        let mut head = format!("{:LABEL$}", "");
        for mode in self.modes.keys() {
            head += &format!("{:>CELL$}", mode.name());
        }
        if self.comparison.is_some() {
            head += &format!("{:>CELL$}", "durable/core");
        }
        println!("{head}");
        let ms = |v: Option<f64>| v.map(|v| format!("{v:.1}"));
        let ratio = |f: fn(&Comparison) -> &RatioFigures| self.comparison.map(f);
        self.row(
            "unpaced events/s",
            |m| Some(format!("{:.0}", m.unpaced.per_sec)),
            ratio(|c| &c.throughput),
        );
        self.row(
            "  cpu µs/input (proc + nats)",
            |m| m.unpaced.cpu_per_input.map(cpu_cell),
            ratio(|c| &c.cpu_per_input),
        );
        self.row(
            "paced achieved inputs/s",
            |m| Some(format!("{:.0}", m.paced.published_per_sec)),
            None,
        );
        self.row(
            "  event→action p50 ms",
            |m| ms(m.paced.latency_ms.and_then(|l| l.p50)),
            None,
        );
        self.row("  p99 ms", |m| ms(m.paced.p99()), ratio(|c| &c.paced_p99));
        self.row("  p99.9 ms", |m| ms(m.paced.latency_ms.and_then(|l| l.p999)), None);
        if self.modes.values().any(|m| m.swapping.is_some()) {
            self.row("swapping p99 ms", |m| ms(m.swapping.as_ref()?.phase.p99()), None);
            self.row(
                "  p99 ÷ paced p99",
                |m| m.swapping.as_ref()?.p99_ratio.map(|v| format!("{v:.2}")),
                None,
            );
        }
        if self.modes.values().any(|m| m.push.is_some()) {
            self.row(
                "push p99 ms (to the device)",
                |m| ms(m.push.as_ref()?.latency_ms.p99),
                None,
            );
        }
        self.row("lost (all phases)", |m| Some(m.lost().to_string()), None);
        self.row("hub/relay", |m| Some(format!("{:.2}", m.hub_relay_ratio)), None);
    }

    /// One figure of every mode, and the median durable/core ratio if there is one for it.
    fn row(&self, label: &str, cell: impl Fn(&ModeReport) -> Option<String>, ratio: Option<&RatioFigures>) {
        let mut line = format!("{label:LABEL$}");
        for m in self.modes.values() {
            line += &format!("{:>CELL$}", cell(m).unwrap_or_else(|| NONE.to_owned()));
        }
        if let Some(median) = ratio.and_then(|r| r.median) {
            line += &format!("{median:>CELL$.2}");
        }
        println!("{}", line.trim_end());
    }
}

/// The swapping and push phases' own figures, and which mode ran them.
fn details(r: &Report) {
    let ms = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1} ms"));
    for (mode, m) in &r.modes {
        if let Some(s) = &m.swapping {
            println!(
                "swaps     {mode}: {} over the runs; live on every shard after median {} (max {}); upload with \
                 validation median {} (max {})",
                s.swaps,
                ms(s.live_ms_median),
                ms(s.live_ms_max),
                ms(s.put_ms_median),
                ms(s.put_ms_max)
            );
        }
        if let Some(p) = &m.push {
            println!(
                "push      {mode}: {} devices (WebSocket, connected in {:.0} ms)   lost {}   {}",
                p.devices,
                p.connect_ms,
                p.lost,
                latency_text(Some(p.latency_ms))
            );
        }
    }
    for (mode, m) in &r.modes {
        if let Some(b) = &m.backtest {
            // Inputs recorded at the paced rate replay this many times faster than they came.
            println!(
                "backtest  {mode}: {} recorded inputs through the active and a candidate version in {:.1} s: \
                 {:.0} inputs/s, {:.0}× faster than real time at {}/s (a week of it in {})",
                b.inputs,
                b.wall_ms / 1000.0,
                b.inputs_per_s,
                b.inputs_per_s / r.rate as f64,
                r.rate,
                humantime::format_duration(std::time::Duration::from_secs(
                    (7.0 * 86_400.0 * r.rate as f64 / b.inputs_per_s.max(1.0)) as u64
                ))
            );
        }
    }
    if r.modes.len() > 1
        && let Some(mode) = r.swapping_and_push_mode
    {
        // Running them in both modes would nearly double a run (`Input::extras_mode`).
        println!("          swapping and push: {mode} mode only (the default of `hub up`; --input core for core mode)");
    }
}

/// The plain relay: the ceiling of any NATS-in/NATS-out service on this machine.
fn relay(r: &Report) {
    let lost = if r.relay.lost > 0 {
        format!("   lost {}", r.relay.lost)
    } else {
        String::new()
    };
    println!(
        "relay     {:.0} msgs/s (plain async-nats subscribe+republish, once per run){lost}",
        r.relay.per_sec
    );
    if let Some(cpu) = r.relay.cpu_per_input {
        println!("  cpu     {}", cpu_text(cpu, "message"));
    }
}

/// How the durable/core column was reduced, and every run's ratios.
fn ratios(c: &Comparison) {
    let list = |f: &RatioFigures| {
        let runs: Vec<String> = f
            .per_run
            .iter()
            .map(|v| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}")))
            .collect();
        runs.join(", ")
    };
    println!("ratios    durable/core column: {}", c.method);
    println!(
        "          per run: events/s {}; cpu per input {}; p99 {}",
        list(&c.throughput),
        list(&c.cpu_per_input),
        list(&c.paced_p99)
    );
}

/// Whether durable mode meets its targets. Informative: the command fails on loss only.
fn targets(r: &Report) {
    for (i, t) in r.targets.iter().enumerate() {
        let label = if i == 0 { "targets" } else { "" };
        let value = t.value.map_or_else(
            || "not measured".to_owned(),
            |v| {
                if v >= 100.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.2}")
                }
            },
        );
        let verdict = if t.met { "met" } else { "MISSED" };
        println!("{label:10}{}: {verdict} ({value})", t.target);
    }
    if !r.targets.is_empty() {
        println!("          (informative, as a noisy machine misses them now and then: only loss fails the bench)");
    }
}

/// Dead letters, unexpected outputs and slow consumers: each means the figures may be wrong.
fn warnings(r: &Report) {
    let dead_letters: u64 = r.modes.values().map(ModeReport::dead_letters).sum();
    if dead_letters > 0 {
        println!("warning   {dead_letters} dead letter(s) on hub.dlq.>");
    }
    let unexpected: u64 = r.modes.values().map(ModeReport::unexpected).sum();
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

/// A table cell of CPU µs per input: the bench process, then a private nats-server.
fn cpu_cell(cpu: CpuPerInput) -> String {
    match cpu.nats_server_us {
        Some(server) => format!("{:.1} + {server:.1}", cpu.process_us),
        None => format!("{:.1}", cpu.process_us),
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
