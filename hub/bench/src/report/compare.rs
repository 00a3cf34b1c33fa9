//! Durable mode next to core mode, and the targets durable mode is held to.
//!
//! Each ratio comes from one run, whose two hubs ran minutes apart on the same machine with the
//! same inputs; the report gives the median of those per-run ratios. A ratio of the medians would
//! pair a durable figure from one run with a core figure from another, and the VM's neighbours
//! move throughput by up to a third between runs.

use super::{HubRun, ModeReport, RunReport, median, ratio};
use serde::Serialize;

/// Durable unpaced events/s at least this (end to end, exactly-once effects).
const DURABLE_EVENTS_PER_SEC: f64 = 70_000.0;
/// Durable unpaced events/s ÷ core's of the same run, at least this.
const DURABLE_SHARE_OF_CORE: f64 = 0.5;
/// Durable event→action p99 at the paced rate, at most this many ms…
const DURABLE_P99_MS: f64 = 5.0;
/// …at this rate (inputs per second).
const TARGET_RATE: u64 = 10_000;

/// How the report reduces the ratios, said in the report itself.
const METHOD: &str =
    "median of the per-run ratios, each from the durable and the core hub of the same run (not a ratio of medians)";

/// Durable ÷ core within one run. None where either figure is missing.
#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct Ratios {
    /// Unpaced events/s: below 1, durable is slower.
    pub(super) throughput: Option<f64>,
    /// Paced event→action p99: above 1, durable takes longer.
    pub(super) paced_p99: Option<f64>,
    /// CPU per input, bench process + nats-server: above 1, durable costs more.
    pub(super) cpu_per_input: Option<f64>,
}

impl Ratios {
    pub(super) fn of(durable: &HubRun, core: &HubRun) -> Ratios {
        let of = |d: Option<f64>, c: Option<f64>| d.zip(c).filter(|(_, c)| *c > 0.0).map(|(d, c)| ratio(d, c));
        Ratios {
            throughput: of(Some(durable.unpaced.per_sec), Some(core.unpaced.per_sec)),
            paced_p99: of(durable.paced.p99(), core.paced.p99()),
            cpu_per_input: of(durable.unpaced.cpu_us(), core.unpaced.cpu_us()),
        }
    }
}

/// One ratio over the runs.
#[derive(Debug, Clone, Serialize)]
pub(super) struct RatioFigures {
    /// The median of `per_run`.
    pub(super) median: Option<f64>,
    /// Each run's ratio, in run order.
    pub(super) per_run: Vec<Option<f64>>,
}

impl RatioFigures {
    fn of(runs: &[Ratios], f: fn(&Ratios) -> Option<f64>) -> RatioFigures {
        let per_run: Vec<Option<f64>> = runs.iter().map(f).collect();
        RatioFigures {
            median: median(per_run.iter().flatten().copied().collect()),
            per_run,
        }
    }
}

/// Durable ÷ core over the runs.
#[derive(Debug, Serialize)]
pub(super) struct Comparison {
    /// How the medians below are taken.
    pub(super) method: &'static str,
    pub(super) throughput: RatioFigures,
    pub(super) paced_p99: RatioFigures,
    pub(super) cpu_per_input: RatioFigures,
}

impl Comparison {
    /// None unless the runs measured both modes.
    pub(super) fn of(runs: &[RunReport]) -> Option<Comparison> {
        let ratios: Vec<Ratios> = runs.iter().filter_map(|r| r.durable_vs_core).collect();
        if ratios.is_empty() {
            return None;
        }
        Some(Comparison {
            method: METHOD,
            throughput: RatioFigures::of(&ratios, |r| r.throughput),
            paced_p99: RatioFigures::of(&ratios, |r| r.paced_p99),
            cpu_per_input: RatioFigures::of(&ratios, |r| r.cpu_per_input),
        })
    }
}

/// One target and whether the medians meet it.
#[derive(Debug, Serialize)]
pub(super) struct Target {
    /// What is held to what, e.g. "durable unpaced events/s ≥ 70000".
    pub(super) target: String,
    /// The median it is judged by; None when not measured (it is then not met).
    pub(super) value: Option<f64>,
    pub(super) met: bool,
}

impl Target {
    /// The targets that the modes measured allow judging: throughput and p99 with durable mode,
    /// the share of core's throughput with both.
    pub(super) fn check(durable: Option<&ModeReport>, comparison: Option<&Comparison>, rate: u64) -> Vec<Target> {
        let mut targets = Vec::new();
        let at_least = |target: String, value: Option<f64>, limit: f64| Target {
            met: value.is_some_and(|v| v >= limit),
            target,
            value,
        };
        if let Some(d) = durable {
            targets.push(at_least(
                format!("durable unpaced events/s ≥ {DURABLE_EVENTS_PER_SEC:.0}"),
                Some(d.unpaced.per_sec),
                DURABLE_EVENTS_PER_SEC,
            ));
        }
        if let Some(c) = comparison {
            targets.push(at_least(
                format!("durable/core unpaced events/s ≥ {DURABLE_SHARE_OF_CORE}"),
                c.throughput.median,
                DURABLE_SHARE_OF_CORE,
            ));
        }
        if let Some(d) = durable {
            let off_rate = if rate == TARGET_RATE {
                String::new()
            } else {
                format!(" (the target is set at {TARGET_RATE}/s)")
            };
            let value = d.paced.p99();
            targets.push(Target {
                target: format!("durable p99 at {rate}/s ≤ {DURABLE_P99_MS} ms{off_rate}"),
                met: value.is_some_and(|v| v <= DURABLE_P99_MS),
                value,
            });
        }
        targets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ratios(throughput: f64) -> Ratios {
        Ratios {
            throughput: Some(throughput),
            paced_p99: None,
            cpu_per_input: Some(1.0),
        }
    }

    #[test]
    fn the_ratio_is_the_median_of_the_runs_ratios() {
        let figures = RatioFigures::of(&[ratios(0.5), ratios(0.7), ratios(0.6)], |r| r.throughput);
        assert_eq!(figures.median, Some(0.6));
        assert_eq!(figures.per_run, [Some(0.5), Some(0.7), Some(0.6)]);
        let none = RatioFigures::of(&[ratios(0.5)], |r| r.paced_p99);
        assert_eq!(none.median, None);
    }
}
