//! Backtests: what a candidate version of a plugin would have done with the inputs the hub
//! recorded, beside what the active version does with them.
//!
//! The input stream keeps every input as it arrived. A backtest reads a range of it through an
//! ordered consumer of its own (the hub's durable consumer is not touched), decodes each input
//! as the hub did when it arrived (same rules, same ids: [`RecordedInputs`]), and runs the
//! active version and the candidate side by side, each on an [`Offline`] runner of its own with
//! state and timers in memory, on a virtual clock driven by the events' times, so timers and
//! windows behave as they did. Nothing is written, nothing is sent: profiles are read from the
//! hub's (as they are now), and the runners hold everything else.
//!
//! State starts empty `warmup` before the range: the inputs of the warm-up run through both
//! versions, but their outputs are not compared, so windows opened before the range are rebuilt.
//! After the last input, the clock moves on to the end of the range (or to now, for a range
//! that ends with the stream), so timers due by then fire as they would have.

pub mod diff;

use crate::event::Event;
use crate::ingress::RecordedInputs;
use crate::offline::{Offline, Record, What};
use crate::registry::{AdminError, Registry};
use crate::runtime::{MemoryStores, PluginModule};
use crate::state::Profiles;
use async_nats::jetstream::{self, consumer};
use diff::{Detail, NameDiff};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Inputs handed to the runners at once.
const BATCH: usize = 512;
/// How long the stream may stay silent before the range is taken as read (the range ends at the
/// stream's last input when the backtest starts, which is normally reached first).
const IDLE: Duration = Duration::from_secs(3);
/// Each runner's cache of the hub's profiles.
const PROFILE_CACHE_BYTES: usize = 16 << 20;

/// Where a range starts or ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// A sequence of the input stream.
    Seq(u64),
    /// When the input was stored, ms since the epoch.
    Time(i64),
}

impl Bound {
    /// `123` (a sequence of the input stream), an RFC 3339 time (`2026-11-30T08:00:00Z`), or a
    /// duration (`2h`, `7d`): that long before `now` (ms).
    pub fn parse(text: &str, now: i64) -> Result<Bound, String> {
        let text = text.trim();
        if let Ok(seq) = text.parse::<u64>() {
            return Ok(Bound::Seq(seq));
        }
        if let Ok(at) = humantime::parse_rfc3339_weak(text) {
            let ms = at
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|_| format!("{text:?} is before 1970"))?
                .as_millis();
            return Ok(Bound::Time(ms as i64));
        }
        match humantime::parse_duration(text) {
            Ok(ago) => Ok(Bound::Time(now.saturating_sub(ago.as_millis() as i64))),
            Err(_) => Err(format!(
                "{text:?} is not a stream sequence (123), a time (2026-11-30T08:00:00Z) or a duration ago (2h, 7d)"
            )),
        }
    }
}

/// What to backtest.
pub struct Request {
    pub plugin: String,
    pub wasm: bytes::Bytes,
    /// The candidate's config; `None` takes the active version's.
    pub config: Option<serde_json::Value>,
    pub from: Bound,
    /// `None`: up to the last input stored when the backtest starts.
    pub to: Option<Bound>,
    pub warmup: Duration,
    pub detail: Detail,
    /// Inputs of the range run at most (the report says when it stopped there).
    pub max_inputs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    #[error(transparent)]
    Plugin(#[from] AdminError),
    #[error("a backtest is running already; try again once it is done")]
    Busy,
    #[error("the input stream {stream} cannot be read: {detail}")]
    Stream { stream: String, detail: String },
    #[error("{0}")]
    Range(String),
    #[error("the backtest failed: {0}")]
    Failed(String),
}

/// What a backtest found (`POST /api/plugins/{name}/backtest`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Report {
    pub plugin: String,
    pub active_version: u32,
    pub candidate: CandidateInfo,
    pub range: RangeInfo,
    pub speed: Speed,
    /// What each version did in the range.
    pub active: RunSummary,
    pub candidate_run: RunSummary,
    /// By action name (and emitted event kind), every name either version gave.
    pub diff: Vec<NameDiff>,
    /// No output added, removed or changed.
    pub identical: bool,
    /// What the figures leave out, in words.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CandidateInfo {
    /// The name its `describe()` gives.
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub size: usize,
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RangeInfo {
    /// First and last input of the range (stream sequences), when it had any.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// When they were stored, ms since the epoch.
    pub first_at: Option<i64>,
    pub last_at: Option<i64>,
    /// Inputs of the range read from the stream (events, profile updates, refused inputs).
    pub inputs: u64,
    /// Events of the range run through both versions.
    pub events: u64,
    /// Inputs read before the range to warm the state up.
    pub warmup_inputs: u64,
    /// Inputs of the range that did not decode, by reason (as they were dead-lettered).
    pub refused: BTreeMap<String, u64>,
    /// The range was cut at `max_inputs`.
    pub truncated: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Speed {
    /// From the first input read to the report.
    pub wall_ms: u64,
    /// Inputs (warm-up included) read and run through both versions per second.
    pub inputs_per_s: f64,
    /// The time the range's inputs took to arrive, over the time the backtest took.
    pub faster_than_real_time: Option<f64>,
}

/// What one version did in the range.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunSummary {
    pub actions: u64,
    pub events_emitted: u64,
    /// Calls that failed, by dead-letter reason (trap, deadline, plugin_error…).
    pub dead_letters: BTreeMap<String, u64>,
    /// Calls, warm-up included, and their times.
    pub calls: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// Timers still pending at the end of the range.
    pub timers_pending: u64,
}

/// Runs backtests against the hub's input stream.
pub struct Backtester {
    client: async_nats::Client,
    stream: String,
    inputs: Arc<RecordedInputs>,
    profiles: Profiles,
    registry: Arc<Registry>,
    hop_limit: u8,
    /// One at a time: a backtest keeps two cores busy.
    running: tokio::sync::Semaphore,
}

/// What the reader hands the runners.
enum Feed {
    /// Events, each marked with whether it is in the range (else it warms the state up).
    Inputs(Arc<Vec<(Event, bool)>>),
    /// The end of the range: fire the timers due by then.
    End(i64),
}

impl Backtester {
    pub fn new(
        client: async_nats::Client,
        stream: &str,
        inputs: RecordedInputs,
        profiles: Profiles,
        registry: Arc<Registry>,
        hop_limit: u8,
    ) -> Backtester {
        Backtester {
            client,
            stream: stream.to_owned(),
            inputs: Arc::new(inputs),
            profiles,
            registry,
            hop_limit,
            running: tokio::sync::Semaphore::new(1),
        }
    }

    pub async fn run(&self, request: Request) -> Result<Report, BacktestError> {
        let _one_at_a_time = self.running.try_acquire().map_err(|_| BacktestError::Busy)?;
        let candidate = self
            .registry
            .candidate(&request.plugin, request.wasm.clone(), request.config.clone())
            .await?;
        let stream_error = |detail: String| BacktestError::Stream {
            stream: self.stream.clone(),
            detail,
        };
        let js = jetstream::new(self.client.clone());
        let stream = js
            .get_stream(&self.stream)
            .await
            .map_err(|e| stream_error(e.to_string()))?;
        let state = stream.get_info().await.map_err(|e| stream_error(e.to_string()))?.state;
        if state.messages == 0 {
            return Err(BacktestError::Range("the input stream holds no inputs".into()));
        }
        let (first, last) = (state.first_sequence, state.last_sequence);
        let from_time = match request.from {
            Bound::Time(t) => t,
            Bound::Seq(s) if s > last => {
                return Err(BacktestError::Range(format!(
                    "the input stream ends at sequence {last}: nothing from {s}"
                )));
            }
            Bound::Seq(s) => {
                let message = stream
                    .get_raw_message(s.max(first))
                    .await
                    .map_err(|e| BacktestError::Range(format!("no input at sequence {}: {e}", s.max(first))))?;
                (message.time.unix_timestamp_nanos() / 1_000_000) as i64
            }
        };
        let end_seq = match request.to {
            Some(Bound::Seq(e)) => e.min(last),
            _ => last,
        };
        let to_time = match request.to {
            Some(Bound::Time(t)) => Some(t),
            _ => None,
        };
        if to_time.is_some_and(|t| t < from_time)
            || matches!((request.from, request.to), (Bound::Seq(a), Some(Bound::Seq(b))) if b < a)
        {
            return Err(BacktestError::Range("the range ends before it starts".into()));
        }
        let warm_from = from_time.saturating_sub(request.warmup.as_millis() as i64);
        let deliver_policy = match request.from {
            Bound::Seq(s) if request.warmup.is_zero() => consumer::DeliverPolicy::ByStartSequence {
                start_sequence: s.max(first),
            },
            _ => consumer::DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(warm_from) * 1_000_000)
                    .map_err(|e| BacktestError::Range(format!("the range starts out of range: {e}")))?,
            },
        };
        let ordered = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy,
                description: Some(format!("backtest of {}", request.plugin)),
                ..Default::default()
            })
            .await
            .map_err(|e| stream_error(e.to_string()))?;
        let mut messages = ordered.messages().await.map_err(|e| stream_error(e.to_string()))?;

        let version = |module: Arc<PluginModule>, name: &'static str| {
            let (tx, rx) = mpsc::channel::<Feed>(16);
            let stores = MemoryStores::reading_profiles(self.profiles.cache(PROFILE_CACHE_BYTES));
            let hop_limit = self.hop_limit;
            let runner = tokio::task::spawn_blocking(move || {
                let _span = tracing::debug_span!("backtest", version = name).entered();
                run_version(Offline::with_stores(vec![module], hop_limit, stores), rx)
            });
            (tx, runner)
        };
        let (to_active, active_runner) = version(candidate.active.module.clone(), "active");
        let (to_candidate, candidate_runner) = version(candidate.module.clone(), "candidate");
        let send = |batch: Vec<(Event, bool)>| {
            let batch = Arc::new(batch);
            let (a, c) = (to_active.clone(), to_candidate.clone());
            async move {
                // A runner that stopped reports why when it is joined.
                let _ = a.send(Feed::Inputs(batch.clone())).await;
                let _ = c.send(Feed::Inputs(batch)).await;
            }
        };

        let started = Instant::now();
        let mut range = RangeInfo::default();
        let mut batch = Vec::with_capacity(BATCH);
        let mut last_stored = from_time;
        loop {
            let message = match tokio::time::timeout(IDLE, messages.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(stream_error(e.to_string())),
                Ok(None) | Err(_) => break,
            };
            let Ok(info) = message.info() else {
                continue;
            };
            let (seq, stored) = (
                info.stream_sequence,
                (info.published.unix_timestamp_nanos() / 1_000_000) as i64,
            );
            if seq > end_seq || to_time.is_some_and(|t| stored > t) {
                break;
            }
            let in_range = match request.from {
                Bound::Seq(s) => seq >= s,
                Bound::Time(t) => stored >= t,
            };
            if in_range {
                if range.inputs == request.max_inputs {
                    range.truncated = true;
                    break;
                }
                range.inputs += 1;
                range.first_seq.get_or_insert(seq);
                range.first_at.get_or_insert(stored);
                range.last_seq = Some(seq);
                range.last_at = Some(stored);
            } else {
                range.warmup_inputs += 1;
            }
            last_stored = stored;
            match self.inputs.decode(
                &message.subject,
                message.headers.as_ref(),
                &message.payload,
                seq,
                stored,
            ) {
                Ok(Some(event)) => {
                    range.events += u64::from(in_range);
                    batch.push((event, in_range));
                }
                Ok(None) => {}
                Err(e) if in_range => *range.refused.entry(e.reason.as_str().to_owned()).or_default() += 1,
                Err(_) => {}
            }
            if batch.len() == BATCH {
                send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH))).await;
            }
            if seq >= end_seq {
                break;
            }
        }
        if !batch.is_empty() {
            send(batch).await;
        }
        // Timers due by the end of the range fire: its end time, or now for a range that ends
        // with the stream.
        let until = match request.to {
            Some(Bound::Time(t)) => t,
            Some(Bound::Seq(_)) => last_stored,
            None => crate::event::now_ms(),
        };
        let _ = to_active.send(Feed::End(until)).await;
        let _ = to_candidate.send(Feed::End(until)).await;
        drop((to_active, to_candidate));
        let joined = |r: Result<Run, tokio::task::JoinError>| r.map_err(|e| BacktestError::Failed(e.to_string()));
        let active = joined(active_runner.await)?;
        let candidate_run = joined(candidate_runner.await)?;
        let wall = started.elapsed();

        let diff = diff::diff(&active.records, &candidate_run.records, request.detail);
        let span_ms = range.last_at.zip(range.first_at).map(|(l, f)| l - f).unwrap_or(0);
        let speed = Speed {
            wall_ms: wall.as_millis() as u64,
            inputs_per_s: (range.inputs + range.warmup_inputs) as f64 / wall.as_secs_f64().max(1e-6),
            faster_than_real_time: (span_ms > 0).then(|| span_ms as f64 / (wall.as_secs_f64() * 1000.0).max(1e-3)),
        };
        let mut notes = vec![
            format!(
                "state and timers started empty {} before the range; {} inputs warmed them up",
                humantime::format_duration(request.warmup),
                range.warmup_inputs
            ),
            "profiles are the hub's as they are now, not as they were then".to_owned(),
            "the arbiter's contact policies are not applied: these are the actions each version proposes".to_owned(),
        ];
        if range.truncated {
            notes.push(format!("the range was cut after {} inputs", request.max_inputs));
        }
        let identical = diff::identical(&diff);
        Ok(Report {
            plugin: request.plugin,
            active_version: candidate.active.version,
            candidate: CandidateInfo {
                name: candidate.module.name().to_owned(),
                version: candidate.module.description.version.clone(),
                sha256: candidate.sha256,
                size: candidate.size,
                config: candidate.config,
            },
            range,
            speed,
            active: active.summary,
            candidate_run: candidate_run.summary,
            diff,
            identical,
            notes,
        })
    }
}

/// One version's records of the range, and its summary.
struct Run {
    records: Vec<Record>,
    summary: RunSummary,
}

/// Feed one version its inputs until the reader is done (on a blocking thread).
fn run_version(mut offline: Offline, mut feed: mpsc::Receiver<Feed>) -> Run {
    let mut records = Vec::new();
    let mut warming = true;
    while let Some(next) = feed.blocking_recv() {
        match next {
            Feed::Inputs(batch) => {
                for (event, in_range) in batch.iter() {
                    if !in_range {
                        offline.input(event.clone(), &mut |_| {});
                        continue;
                    }
                    if warming {
                        // Timers due before the range's first event belong to the warm-up.
                        warming = false;
                        offline.advance(event.time.saturating_sub(1), &mut |_| {});
                    }
                    offline.input(event.clone(), &mut |r| records.push(r));
                }
            }
            Feed::End(until) => offline.advance(until, &mut |r| records.push(r)),
        }
    }
    let mut summary = RunSummary {
        timers_pending: offline.pending().len() as u64,
        ..RunSummary::default()
    };
    for record in &records {
        match &record.what {
            What::Action { .. } => summary.actions += 1,
            What::Emit { .. } => summary.events_emitted += 1,
            What::DeadLetter { reason, .. } => *summary.dead_letters.entry(reason.clone()).or_default() += 1,
            What::Deliver { .. } => {}
        }
    }
    if let Some(run) = offline.runs().next() {
        summary.calls = run.calls;
        summary.p50_us = run.quantile(0.5);
        summary.p99_us = run.quantile(0.99);
    }
    Run { records, summary }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_is_a_sequence_a_time_or_a_duration_ago() {
        let now = 1_800_000_000_000;
        assert_eq!(Bound::parse("42", now), Ok(Bound::Seq(42)));
        assert_eq!(
            Bound::parse("2027-01-15T08:00:00Z", now),
            Ok(Bound::Time(1_800_000_000_000))
        );
        assert_eq!(Bound::parse("2h", now), Ok(Bound::Time(now - 7_200_000)));
        assert!(Bound::parse("yesterday-ish", now).is_err_and(|e| e.contains("2h")));
    }
}
