//! Per-plugin call statistics for the admin API (`GET /api/plugins`): calls, errors, latency
//! percentiles.
//!
//! Each shard counts into its own plain fields during calls and folds them in here once per
//! commit interval, into a table only it and the API lock, so the hot path shares nothing.

use hdrhistogram::Histogram;
use rustc_hash::FxHashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// Highest latency the histograms hold, in µs (a minute; calls are cut at their deadline).
const MAX_US: u64 = 60_000_000;

/// One shard's counts for one plugin since the last fold.
pub struct Pending {
    pub calls: u64,
    pub errors: u64,
    latency: Histogram<u64>,
}

impl Pending {
    pub fn new() -> Pending {
        Pending {
            calls: 0,
            errors: 0,
            latency: histogram(),
        }
    }

    pub fn record(&mut self, micros: u64) {
        self.calls += 1;
        self.latency.saturating_record(micros);
    }
}

impl Default for Pending {
    fn default() -> Self {
        Self::new()
    }
}

struct Tally {
    calls: u64,
    errors: u64,
    latency: Histogram<u64>,
    /// Until when the shard refuses the plugin's calls after repeated traps.
    quarantined_until: Option<Instant>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            calls: 0,
            errors: 0,
            latency: histogram(),
            quarantined_until: None,
        }
    }
}

/// What the API shows for one plugin name (all shards, since the hub started).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Summary {
    pub calls: u64,
    pub errors: u64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    /// Whether a shard refuses its calls now, after repeated traps.
    #[serde(default)]
    pub quarantined: bool,
}

/// One shard's tallies by plugin name.
type ShardTable = Mutex<FxHashMap<Arc<str>, Tally>>;

pub struct PluginStats {
    shards: Box<[ShardTable]>,
}

impl PluginStats {
    pub fn new(shards: usize) -> PluginStats {
        PluginStats {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
        }
    }

    /// Fold a shard's pending counts for `name` in, and reset them.
    pub fn fold(&self, shard: usize, name: &Arc<str>, pending: &mut Pending) {
        if pending.calls == 0 && pending.errors == 0 {
            return;
        }
        let Some(table) = self.shards.get(shard) else {
            return;
        };
        let mut table = table.lock().unwrap_or_else(PoisonError::into_inner);
        let tally = table.entry(name.clone()).or_default();
        tally.calls += pending.calls;
        tally.errors += pending.errors;
        let _ = tally.latency.add(&pending.latency);
        pending.calls = 0;
        pending.errors = 0;
        pending.latency.reset();
    }

    /// Shard `shard` refuses `name`'s calls until `until` (a rare event: it may take the lock).
    pub fn quarantined(&self, shard: usize, name: &Arc<str>, until: Instant) {
        if let Some(table) = self.shards.get(shard) {
            let mut table = table.lock().unwrap_or_else(PoisonError::into_inner);
            table.entry(name.clone()).or_default().quarantined_until = Some(until);
        }
    }

    pub fn summary(&self, name: &str) -> Summary {
        let now = Instant::now();
        let mut latency = histogram();
        let mut summary = Summary::default();
        for table in self.shards.iter() {
            let table = table.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(t) = table.get(name) {
                summary.calls += t.calls;
                summary.errors += t.errors;
                summary.quarantined |= t.quarantined_until.is_some_and(|until| until > now);
                let _ = latency.add(&t.latency);
            }
        }
        if !latency.is_empty() {
            summary.latency_p50_ms = Some(latency.value_at_quantile(0.5) as f64 / 1000.0);
            summary.latency_p99_ms = Some(latency.value_at_quantile(0.99) as f64 / 1000.0);
        }
        summary
    }
}

fn histogram() -> Histogram<u64> {
    // Two significant digits: plenty for p50/p99, and a small table to fold.
    Histogram::new_with_bounds(1, MAX_US, 2).expect("constant bounds are valid")
}
