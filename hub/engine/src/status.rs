//! The hub's headline figures for people: what the dashboard, `GET /api/status` and `hub status`
//! show. Once a second a task renders the Prometheus metrics the hot path already keeps, and
//! turns them into rates, latency quantiles of the last second and minute, and per-plugin
//! figures; the shards do nothing more for it. The last ten minutes are kept for the dashboard's
//! charts.

use crate::config::InputMode;
use crate::dead_letter::KeptLetters;
use crate::metrics as m;
use crate::registry::Registry;
use crate::stats::PluginStats;
use metrics_exporter_prometheus::PrometheusHandle;
use prometheus_parse::{Scrape, Value};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the figures are taken.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How much history the charts get: ten minutes of one-second points.
const HISTORY: usize = 600;
/// The window of the slower latency quantiles.
const MINUTE: Duration = Duration::from_secs(60);
/// How long a sample waits for the dead-letter stream's counts before keeping the last ones.
const KEPT_TIMEOUT: Duration = Duration::from_millis(500);

/// One snapshot (`GET /api/status`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Status {
    /// When it was taken, ms since the epoch.
    pub at: i64,
    pub uptime_s: u64,
    /// `durable` or `core`.
    pub input: String,
    /// Per second, over the last sample interval.
    pub rates: Rates,
    /// Over the last sample interval: empty when no action was taken in it.
    pub event_to_action_ms: Quantiles,
    /// Over the last minute, so a quiet hub still shows its recent latency.
    pub event_to_action_ms_1m: Quantiles,
    /// Since the hub started.
    pub totals: Totals,
    pub plugins: Vec<PluginStatus>,
    pub dead_letters: DeadLetterCounts,
    /// The arbiter's decisions since the start, by category and outcome.
    pub decisions: Vec<Decisions>,
    pub shards: Vec<ShardStatus>,
    /// Inputs in the stream not yet delivered to the hub (durable input).
    pub consumer_lag: Option<u64>,
    pub timers_pending: u64,
    /// Per tenant: the default one, each declared one, and any other seen in the metrics.
    #[serde(default)]
    pub tenants: Vec<TenantStatus>,
}

/// One tenant's figures and limits.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantStatus {
    pub name: String,
    /// Inputs that became events, per second over the last sample interval.
    pub events_in_per_s: f64,
    /// Since the hub started.
    pub events_in: u64,
    pub actions: u64,
    pub dead_letters: u64,
    /// Inputs in its own stream not yet delivered to the hub (durable mode, declared tenants).
    pub backlog: Option<u64>,
    /// Plugins that run for it alone.
    pub plugins: u64,
    pub share: u32,
    /// Inputs/s read from its own stream at most.
    pub rate: Option<u32>,
    /// Inputs/s the latency guard reads its own stream at now, to keep the others' latency:
    /// none while it is not slowed.
    #[serde(default)]
    pub read_limit: Option<f64>,
    pub max_plugins: Option<u32>,
    /// Bytes of state it stores (counted for a tenant with a quota on them).
    #[serde(default)]
    pub state_bytes: Option<u64>,
    #[serde(default)]
    pub max_state_bytes: Option<u64>,
    /// Its pending timers (counted for a tenant with a quota on them).
    #[serde(default)]
    pub timers: Option<u64>,
    #[serde(default)]
    pub max_timers: Option<u64>,
    /// Requests and plugin calls refused for its quotas since the hub started.
    pub quota_refusals: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rates {
    pub events_in: f64,
    pub events_out: f64,
    pub actions: f64,
    pub dead_letters: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Quantiles {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

impl Quantiles {
    /// p50 and p99 in ms of a histogram in seconds.
    fn of(buckets: &Buckets) -> Quantiles {
        Quantiles {
            p50: buckets.quantile(0.5).map(|s| s * 1000.0),
            p99: buckets.quantile(0.99).map(|s| s * 1000.0),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Totals {
    pub events_in: u64,
    pub events_emitted: u64,
    pub actions: u64,
    pub dead_letters: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PluginStatus {
    pub name: String,
    /// The active version.
    pub version: u32,
    pub enabled: bool,
    pub quarantined: bool,
    pub calls: u64,
    pub errors: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub subscribes: Vec<String>,
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
    /// The version running as a shadow beside the active one, and how they differ so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowLine>,
}

/// A shadow's comparison in one line (`GET /api/plugins/{name}` has the details).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShadowLine {
    pub version: u32,
    /// Outputs the active version and the shadow gave.
    pub active: u64,
    pub shadow: u64,
    pub added: u64,
    pub removed: u64,
    pub changed: u64,
    /// The shadow's calls that failed.
    pub failures: u64,
    pub quarantined: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetterCounts {
    /// Dead-lettered since the hub started.
    pub by_reason: BTreeMap<String, u64>,
    /// Kept in the dead-letter stream now, to inspect and replay (what `GET /api/dead-letters`
    /// lists); `None` when the stream cannot be read.
    pub kept: Option<BTreeMap<String, u64>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Decisions {
    pub category: String,
    /// `delivered`, `suppressed`, `held`…, with the reason when there is one.
    pub outcome: String,
    pub count: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShardStatus {
    pub shard: usize,
    pub queue_depth: u64,
    /// The queue's bound (`engine.queue_capacity`): a full queue holds ingestion back.
    pub capacity: u64,
}

/// One point of the charts (`GET /api/status/history`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Point {
    pub at: i64,
    pub events_in: f64,
    pub events_out: f64,
    pub actions: f64,
    pub dead_letters: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// p99 over the minute up to this point.
    pub p99_1m_ms: Option<f64>,
}

/// What the figures are taken from.
pub struct Sources {
    pub metrics: PrometheusHandle,
    pub registry: Arc<Registry>,
    pub stats: Arc<PluginStats>,
    pub input: InputMode,
    pub queue_capacity: usize,
    /// The kept dead letters, counted by reason at each sample.
    pub kept: Option<KeptLetters>,
    pub tenants: crate::tenant::Tenants,
}

/// The latest snapshot and the recent history, shared with the API.
pub struct StatusBoard {
    latest: watch::Receiver<Arc<Status>>,
    history: Mutex<VecDeque<Point>>,
}

impl StatusBoard {
    /// Start taking figures; the task ends with the returned handle's abort (or the runtime).
    pub fn start(sources: Sources) -> (Arc<StatusBoard>, JoinHandle<()>) {
        let (publish, latest) = watch::channel(Arc::new(Status::default()));
        let board = Arc::new(StatusBoard {
            latest,
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
        });
        let task = tokio::spawn(sample(sources, publish, board.clone()));
        (board, task)
    }

    pub fn current(&self) -> Arc<Status> {
        self.latest.borrow().clone()
    }

    /// Every new snapshot, as it is taken.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Status>> {
        self.latest.clone()
    }

    /// The last ten minutes, oldest first.
    pub fn history(&self) -> Vec<Point> {
        self.history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}

async fn sample(sources: Sources, publish: watch::Sender<Arc<Status>>, board: Arc<StatusBoard>) {
    let started = Instant::now();
    let mut ticker = tokio::time::interval(SAMPLE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous: Option<(Instant, Figures)> = None;
    // Cumulative latency buckets of the last minute's samples, oldest first.
    let mut minute: VecDeque<(Instant, Buckets)> = VecDeque::new();
    let mut kept = None;
    loop {
        ticker.tick().await;
        let now = Instant::now();
        let figures = Figures::read(&sources.metrics.render());
        if let Some(letters) = &sources.kept {
            // A slow or unreachable stream leaves the last counts in place.
            match tokio::time::timeout(KEPT_TIMEOUT, letters.counts()).await {
                Ok(Ok(counts)) => kept = Some(counts),
                Ok(Err(e)) => tracing::debug!(error = %e, "cannot count the kept dead letters"),
                Err(_) => tracing::debug!("counting the kept dead letters took too long"),
            }
        }
        while minute.front().is_some_and(|(at, _)| now.duration_since(*at) > MINUTE) {
            minute.pop_front();
        }
        let last_minute = match minute.front() {
            Some((_, before)) => figures.latency.since(before),
            None => figures.latency.clone(),
        };
        minute.push_back((now, figures.latency.clone()));
        let mut status = snapshot(&sources, &figures, previous.as_ref(), now, started);
        status.event_to_action_ms_1m = Quantiles::of(&last_minute);
        status.dead_letters.kept = kept.clone();
        let point = Point {
            at: status.at,
            events_in: status.rates.events_in,
            events_out: status.rates.events_out,
            actions: status.rates.actions,
            dead_letters: status.rates.dead_letters,
            p50_ms: status.event_to_action_ms.p50,
            p99_ms: status.event_to_action_ms.p99,
            p99_1m_ms: status.event_to_action_ms_1m.p99,
        };
        {
            let mut history = board.history.lock().unwrap_or_else(PoisonError::into_inner);
            if history.len() == HISTORY {
                history.pop_front();
            }
            history.push_back(point);
        }
        previous = Some((now, figures));
        if publish.send(Arc::new(status)).is_err() {
            return;
        }
    }
}

fn snapshot(
    sources: &Sources,
    figures: &Figures,
    previous: Option<&(Instant, Figures)>,
    now: Instant,
    started: Instant,
) -> Status {
    let rate = |f: fn(&Figures) -> f64| per_second(figures, previous, now, f);
    let recent = match previous {
        Some((_, before)) => figures.latency.since(&before.latency),
        None => figures.latency.clone(),
    };
    let plugins = sources
        .registry
        .plugins()
        .unwrap_or_default()
        .into_iter()
        .map(|record| {
            let stats = sources.stats.summary(&record.name);
            let active = record.active().cloned();
            PluginStatus {
                version: record.active,
                enabled: record.enabled,
                quarantined: stats.quarantined,
                calls: stats.calls,
                errors: stats.errors,
                p50_ms: stats.latency_p50_ms,
                p99_ms: stats.latency_p99_ms,
                subscribes: active
                    .as_ref()
                    .map(|v| v.description.subscribes.clone())
                    .unwrap_or_default(),
                config: active.map(|v| v.config).unwrap_or_default(),
                shadow: crate::shadow::status_of(&sources.registry, &sources.stats, &record.name).map(|s| {
                    let sum = |f: fn(&crate::backtest::diff::NameDiff) -> u64| s.diff.iter().map(f).sum();
                    ShadowLine {
                        version: s.version,
                        active: sum(|d| d.active),
                        shadow: sum(|d| d.candidate),
                        added: sum(|d| d.added),
                        removed: sum(|d| d.removed),
                        changed: sum(|d| d.changed),
                        failures: s.failures.values().sum(),
                        quarantined: s.quarantined,
                    }
                }),
                name: record.name,
            }
        })
        .collect();
    let tenants = tenant_figures(sources, figures, previous, now, &plugins_of_tenants(sources));
    Status {
        tenants,
        at: crate::event::now_ms(),
        uptime_s: now.duration_since(started).as_secs(),
        input: match sources.input {
            InputMode::Durable => "durable",
            InputMode::Core => "core",
        }
        .to_owned(),
        rates: Rates {
            events_in: rate(|f| f.events_in),
            events_out: rate(|f| f.events_out()),
            actions: rate(|f| f.actions),
            dead_letters: rate(|f| f.dead_letters()),
        },
        event_to_action_ms: Quantiles::of(&recent),
        event_to_action_ms_1m: Quantiles::default(),
        totals: Totals {
            events_in: figures.events_in as u64,
            events_emitted: figures.events_emitted as u64,
            actions: figures.actions as u64,
            dead_letters: figures.dead_letters() as u64,
        },
        plugins,
        dead_letters: DeadLetterCounts {
            by_reason: figures
                .dead_letters_by_reason
                .iter()
                .map(|(k, v)| (k.clone(), *v as u64))
                .collect(),
            kept: None,
        },
        decisions: figures
            .decisions
            .iter()
            .map(|((category, outcome), count)| Decisions {
                category: category.clone(),
                outcome: outcome.clone(),
                count: *count as u64,
            })
            .collect(),
        shards: figures
            .queue_depth
            .iter()
            .map(|(shard, depth)| ShardStatus {
                shard: *shard,
                queue_depth: *depth as u64,
                capacity: sources.queue_capacity as u64,
            })
            .collect(),
        consumer_lag: figures.consumer_pending.map(|v| v as u64),
        timers_pending: figures.timers_pending as u64,
    }
}

/// How fast what `of` reads from the figures grew since the previous sample, per second (0
/// without one).
fn per_second(
    figures: &Figures,
    previous: Option<&(Instant, Figures)>,
    now: Instant,
    of: impl Fn(&Figures) -> f64,
) -> f64 {
    match previous {
        Some((then, before)) => {
            let secs = now.duration_since(*then).as_secs_f64().max(1e-3);
            ((of(figures) - of(before)) / secs).max(0.0)
        }
        None => 0.0,
    }
}

/// Plugins that run for each named tenant alone (or among a few).
fn plugins_of_tenants(sources: &Sources) -> BTreeMap<String, u64> {
    let mut count = BTreeMap::new();
    for record in sources.registry.plugins().unwrap_or_default() {
        for tenant in record.tenants.iter().flatten() {
            *count.entry(tenant.clone()).or_default() += 1;
        }
    }
    count
}

/// Every tenant's line: the default, the declared ones, and any other the metrics name.
fn tenant_figures(
    sources: &Sources,
    figures: &Figures,
    previous: Option<&(Instant, Figures)>,
    now: Instant,
    plugins: &BTreeMap<String, u64>,
) -> Vec<TenantStatus> {
    let mut names: Vec<String> = std::iter::once(crate::tenant::DEFAULT.to_owned())
        .chain(sources.tenants.names().map(str::to_owned))
        .collect();
    for name in figures.tenants.keys() {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
        .into_iter()
        .map(|name| {
            let of = figures.tenants.get(&name);
            let get = |f: fn(&TenantFigures) -> f64| of.map_or(0.0, f);
            let events_in_per_s = per_second(figures, previous, now, |f| {
                f.tenants.get(&name).map_or(0.0, |t| t.events_in)
            });
            let config = sources.tenants.config(&name);
            TenantStatus {
                events_in_per_s,
                events_in: get(|t| t.events_in) as u64,
                actions: get(|t| t.actions) as u64,
                dead_letters: get(|t| t.dead_letters) as u64,
                backlog: of.and_then(|t| t.backlog).map(|b| b as u64),
                plugins: plugins.get(&name).copied().unwrap_or(0),
                share: config.map_or(1, |c| c.share),
                rate: config.and_then(|c| c.rate),
                read_limit: of.and_then(|t| t.read_limit).filter(|limit| *limit > 0.0),
                max_plugins: config.and_then(|c| c.max_plugins),
                state_bytes: of.and_then(|t| t.state_bytes).map(|b| b.max(0.0) as u64),
                max_state_bytes: config.and_then(|c| c.max_state_bytes),
                timers: of.and_then(|t| t.timers).map(|n| n.max(0.0) as u64),
                max_timers: config.and_then(|c| c.max_timers),
                quota_refusals: get(|t| t.quota_refusals) as u64,
                name,
            }
        })
        .collect()
}

/// One tenant's metrics.
#[derive(Debug, Default)]
struct TenantFigures {
    events_in: f64,
    actions: f64,
    dead_letters: f64,
    backlog: Option<f64>,
    read_limit: Option<f64>,
    state_bytes: Option<f64>,
    timers: Option<f64>,
    quota_refusals: f64,
}

/// What one rendering of the metrics says, summed over the labels the status does not show.
#[derive(Debug, Default)]
struct Figures {
    events_in: f64,
    events_emitted: f64,
    actions: f64,
    deliveries: f64,
    dead_letters_by_reason: BTreeMap<String, f64>,
    /// (category, decision and reason) → count.
    decisions: BTreeMap<(String, String), f64>,
    queue_depth: BTreeMap<usize, f64>,
    consumer_pending: Option<f64>,
    timers_pending: f64,
    latency: Buckets,
    tenants: BTreeMap<String, TenantFigures>,
}

impl Figures {
    fn read(text: &str) -> Figures {
        let mut f = Figures::default();
        let Ok(scrape) = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))) else {
            return f;
        };
        for sample in scrape.samples {
            let label = |name: &str| sample.labels.get(name).unwrap_or_default().to_owned();
            let value = match &sample.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                Value::Histogram(buckets) => {
                    if sample.metric == m::EVENT_TO_ACTION_SECONDS {
                        f.latency.add(buckets.iter().map(|b| (b.less_than, b.count)));
                    }
                    continue;
                }
                Value::Summary(_) => continue,
            };
            match sample.metric.as_str() {
                m::EVENTS_IN => f.events_in += value,
                m::EVENTS_EMITTED => f.events_emitted += value,
                m::ACTIONS_OUT => f.actions += value,
                m::DELIVERIES_OUT => f.deliveries += value,
                m::DEAD_LETTERS => *f.dead_letters_by_reason.entry(label("reason")).or_default() += value,
                m::ACTION_DECISIONS => {
                    let (decision, reason) = (label("decision"), label("reason"));
                    let outcome = match reason.as_str() {
                        "" | "none" => decision,
                        _ => format!("{decision}: {reason}"),
                    };
                    *f.decisions.entry((label("category"), outcome)).or_default() += value;
                }
                m::SHARD_QUEUE_DEPTH => {
                    if let Ok(shard) = label("shard").parse() {
                        f.queue_depth.insert(shard, value);
                    }
                }
                m::CONSUMER_PENDING => f.consumer_pending = Some(value),
                m::TIMERS_PENDING => f.timers_pending += value,
                m::TENANT_EVENTS_IN => f.tenant(label("tenant")).events_in += value,
                m::TENANT_ACTIONS => f.tenant(label("tenant")).actions += value,
                m::TENANT_DEAD_LETTERS => f.tenant(label("tenant")).dead_letters += value,
                m::TENANT_BACKLOG => f.tenant(label("tenant")).backlog = Some(value),
                // The input stream's limit has no tenant: it carries any tenant's inputs.
                m::STREAM_READ_LIMIT if !label("tenant").is_empty() => {
                    f.tenant(label("tenant")).read_limit = Some(value)
                }
                m::TENANT_QUOTA_REFUSALS => f.tenant(label("tenant")).quota_refusals += value,
                m::TENANT_STATE_BYTES => f.tenant(label("tenant")).state_bytes = Some(value),
                m::TENANT_TIMERS => f.tenant(label("tenant")).timers = Some(value),
                _ => {}
            }
        }
        f
    }

    fn tenant(&mut self, name: String) -> &mut TenantFigures {
        self.tenants.entry(name).or_default()
    }

    /// What left the hub: actions and emitted events.
    fn events_out(&self) -> f64 {
        self.actions + self.events_emitted
    }

    fn dead_letters(&self) -> f64 {
        self.dead_letters_by_reason.values().sum()
    }
}

/// A cumulative histogram (upper bound in seconds → count at or below it), summed over shards.
#[derive(Debug, Clone, Default, PartialEq)]
struct Buckets(Vec<(f64, f64)>);

impl Buckets {
    fn add(&mut self, buckets: impl Iterator<Item = (f64, f64)>) {
        for (bound, count) in buckets {
            match self.0.iter_mut().find(|(b, _)| *b == bound) {
                Some(entry) => entry.1 += count,
                None => self.0.push((bound, count)),
            }
        }
        self.0.sort_by(|a, b| a.0.total_cmp(&b.0));
    }

    /// What was counted since `before`.
    fn since(&self, before: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|(bound, count)| {
                    let old = before.0.iter().find(|(b, _)| b == bound).map_or(0.0, |(_, c)| *c);
                    (*bound, (count - old).max(0.0))
                })
                .collect(),
        )
    }

    /// The `q` quantile, interpolated inside its bucket; `None` without samples. A quantile in
    /// the last (unbounded) bucket is reported as the largest finite bound.
    fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.0.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(bound, count) in &self.0 {
            if count >= rank {
                if !bound.is_finite() {
                    return Some(lower.0);
                }
                let within = count - lower.1;
                let share = if within > 0.0 { (rank - lower.1) / within } else { 1.0 };
                return Some(lower.0 + (bound - lower.0) * share);
            }
            lower = (bound, count);
        }
        Some(lower.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_buckets_of_the_last_interval_only() {
        let mut before = Buckets::default();
        before.add([(0.001, 100.0), (0.01, 100.0), (f64::INFINITY, 100.0)].into_iter());
        let mut now = Buckets::default();
        // Since then: 10 samples under 1 ms, 90 between 1 and 10 ms.
        now.add([(0.001, 110.0), (0.01, 200.0), (f64::INFINITY, 200.0)].into_iter());
        let recent = now.since(&before);
        let p50 = recent.quantile(0.5).expect("samples");
        assert!((0.001..0.01).contains(&p50), "{p50}");
        assert!(recent.quantile(0.05).expect("samples") <= 0.001);
        assert_eq!(Buckets::default().quantile(0.5), None);
        assert_eq!(now.since(&now).quantile(0.5), None, "nothing new, no quantile");
    }

    #[test]
    fn figures_sum_over_shards_and_split_by_what_the_status_shows() {
        let text = "\
# TYPE hub_events_in_total counter
hub_events_in_total{subject=\"events.>\"} 7
hub_events_in_total{subject=\"web.*\"} 3
# TYPE hub_dead_letters_total counter
hub_dead_letters_total{reason=\"trap\"} 2
hub_dead_letters_total{reason=\"undecodable\"} 1
# TYPE hub_shard_queue_depth gauge
hub_shard_queue_depth{shard=\"0\"} 4
hub_shard_queue_depth{shard=\"1\"} 0
# TYPE hub_action_decisions_total counter
hub_action_decisions_total{category=\"offer\",decision=\"suppressed\",reason=\"cap\"} 5
# TYPE hub_event_to_action_seconds histogram
hub_event_to_action_seconds_bucket{shard=\"0\",le=\"0.001\"} 1
hub_event_to_action_seconds_bucket{shard=\"0\",le=\"+Inf\"} 2
hub_event_to_action_seconds_bucket{shard=\"1\",le=\"0.001\"} 3
hub_event_to_action_seconds_bucket{shard=\"1\",le=\"+Inf\"} 3
hub_event_to_action_seconds_sum{shard=\"0\"} 0.5
hub_event_to_action_seconds_count{shard=\"0\"} 2
";
        let f = Figures::read(text);
        assert_eq!(f.events_in, 10.0);
        assert_eq!(f.dead_letters(), 3.0);
        assert_eq!(f.queue_depth.get(&0), Some(&4.0));
        assert_eq!(f.decisions.get(&("offer".into(), "suppressed: cap".into())), Some(&5.0));
        assert_eq!(f.latency.0, vec![(0.001, 4.0), (f64::INFINITY, 5.0)]);
    }
}
