//! State follows its partition: every commit's changes are written to JetStream, so the instance
//! that takes a partition over rebuilds the partition's state, timers, action ledgers and
//! input checkpoints from there, without its previous owner's disk.
//!
//! Two streams, written by the committer after it applies commits to sled and before their
//! inputs are acknowledged (it gathers the changes of `[cluster] changelog_every`, 200 ms, and
//! writes each key once):
//!
//! - **The log** (`<wal>.<partition>`, the last 64 messages kept): each write's changes of a
//!   partition as one message (or a few, numbered, when large). One message is atomic: an
//!   instance can die among many publishes, never within one.
//! - **The view** (`<state>.<partition>.<tree>.<key>`, tree and key in base64url, one message
//!   kept per subject): the latest value of every key, a compacted changelog. A deleted key
//!   keeps a tombstone (`Hub-Deleted`). `<state>.<partition>.=commit` names the last log entry
//!   whose changes are all in the view. A partition's view is written after its log, at most
//!   every 5 s (each key once, however often it changed in between) or once 32 log messages
//!   are not in it, well before the log drops them: at 5k inputs/s over 10k actors this writes
//!   about a third of the keys the commits change.
//!
//! Restoring reads the view and applies, over it, every complete log entry newer than its
//! marker. Values are absolute (set or delete), so applying one twice changes nothing, and an
//! owner that died while writing the view leaves nothing wrong.
//!
//! Commit ids are (lease revision, counter): a partition's new owner holds a newer lease, so its
//! commits sort after its predecessor's.

use super::Cluster;
use async_nats::jetstream::{self, stream};
use base64::Engine as _;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Header of a tombstone in the view.
pub const DELETED: &str = "Hub-Deleted";
/// The token of the commit marker (not base64url, so no tree can have it).
const MARKER: &str = "=commit";
const FORMAT: u8 = 1;
/// Log messages kept per partition: a commit larger than this many chunks cannot be logged.
const LOG_KEPT: i64 = 64;
/// Bytes of changes per log message (the server's payload limit is 1 MiB by default).
const CHUNK_BYTES: usize = 512 * 1024;
/// The trees whose keys begin with an actor (plugin state, action ledgers), kept per partition.
pub const TIMERS: &str = "timers";
pub const CHECKPOINTS: &str = "checkpoints";
/// Profiles, keyed by actor.
pub const PROFILES: &str = "profiles";
/// When the partition's input stream was created (ns since the epoch), keyed by partition
/// (big-endian): the stream the checkpoints count in.
pub const STREAM_CREATED: &str = "partition_stream";

/// Changes made outside the shards' commits (profile updates), waiting for the committer's
/// next write; an input that made one is acknowledged only after a flush that starts later.
#[derive(Clone, Default)]
pub struct Pending(Arc<std::sync::Mutex<Vec<Change>>>);

impl Pending {
    pub fn push(&self, change: Change) {
        if let Ok(mut changes) = self.0.lock() {
            changes.push(change);
        }
    }

    pub fn take(&self) -> Vec<Change> {
        self.0.lock().map(|mut c| std::mem::take(&mut *c)).unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChangelogError {
    #[error("cannot create the state stream {stream}: {detail}")]
    Stream { stream: String, detail: String },
    #[error("state changelog: {0}")]
    Write(String),
    #[error("restoring partition {partition}: {detail}")]
    Read { partition: u16, detail: String },
}

/// One key's new value (`None`: deleted), in the partition of its actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub partition: u16,
    /// The sled tree it belongs to: `state/<plugin>`, `actions`, or [`TIMERS`] / [`CHECKPOINTS`].
    pub tree: Arc<str>,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// The id of a commit: (lease revision, counter), ordered.
pub type CommitId = (u64, u64);

/// One log message: a commit's changes of one partition, or a numbered part of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub commit: CommitId,
    pub chunk: u32,
    pub chunks: u32,
    pub changes: Vec<(String, serde_bytes::ByteBuf, Option<serde_bytes::ByteBuf>)>,
}

impl LogEntry {
    pub fn encode(&self) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        rmp_serde::to_vec(&(FORMAT, self))
    }

    /// Read a stored entry, whatever later formats append after the fields read (to the
    /// record or to the entry).
    pub fn decode(mut bytes: &[u8]) -> Result<LogEntry, String> {
        let value = rmpv::decode::read_value(&mut bytes).map_err(|e| e.to_string())?;
        let fields = match value
            .as_array()
            .and_then(|items| items.get(1))
            .and_then(|e| e.as_array())
        {
            Some(fields) => fields.iter().take(4).cloned().collect(),
            None => return Err(format!("not a state log entry: {value}")),
        };
        let mut known = Vec::new();
        rmpv::encode::write_value(&mut known, &rmpv::Value::Array(fields)).map_err(|e| e.to_string())?;
        rmp_serde::from_slice(&known).map_err(|e| e.to_string())
    }
}

/// A partition's state as restored: the latest value of every key, per tree.
#[derive(Debug, Default)]
pub struct Restored {
    pub entries: BTreeMap<TreeKey, Vec<u8>>,
    /// Log entries newer than the view that were applied (they are written to the view again).
    pub replayed: Vec<Change>,
    /// Messages read.
    pub records: u64,
    pub took: Duration,
}

impl Restored {
    /// Checkpoints count in the sequences of the stream they were taken in; a partition stream
    /// created anew (deleted by hand, or an earlier version's stream shared by every partition)
    /// counts from 1 again. Unless the state names the stream created at `created`, its
    /// checkpoints start over and the state is to name it from now on (both among `replayed`,
    /// which the takeover writes back). How many checkpoints started over.
    pub fn count_in_stream(&mut self, partition: u16, created: &str) -> usize {
        let identity: TreeKey = (STREAM_CREATED.into(), partition.to_be_bytes().to_vec());
        if self.entries.get(&identity).map(Vec::as_slice) == Some(created.as_bytes()) {
            return 0;
        }
        let stale: Vec<TreeKey> = self
            .entries
            .keys()
            .filter(|(tree, _)| &**tree == CHECKPOINTS)
            .cloned()
            .collect();
        let dropped = stale.len();
        for (tree, key) in stale {
            self.entries.remove(&(tree.clone(), key.clone()));
            self.replayed.push(Change {
                partition,
                tree,
                key,
                value: None,
            });
        }
        self.entries.insert(identity.clone(), created.as_bytes().to_vec());
        self.replayed.push(Change {
            partition,
            tree: identity.0,
            key: identity.1,
            value: Some(created.as_bytes().to_vec()),
        });
        dropped
    }
}

/// Where the changelog lives, and this instance's commit counter.
pub struct Changelog {
    js: jetstream::Context,
    view: String,
    log: String,
    view_stream: String,
    log_stream: String,
    cluster: Arc<Cluster>,
    counter: AtomicU64,
    /// Per partition, the input checkpoints of its finer partitions: the view keeps them as one
    /// record per partition (one key per finer partition would be up to one more write per
    /// input).
    checkpoints: std::sync::Mutex<BTreeMap<u16, BTreeMap<u16, u64>>>,
    /// Per partition, what the log has and the view not yet.
    unviewed: std::sync::Mutex<BTreeMap<u16, Unviewed>>,
}

/// A key in a sled tree.
type TreeKey = (Arc<str>, Vec<u8>);

/// A partition's changes logged since its view was last written: each key's last value.
struct Unviewed {
    changes: BTreeMap<TreeKey, Option<Vec<u8>>>,
    checkpoints_moved: bool,
    /// Log messages written since the view's marker: the view must be written before the log
    /// drops the oldest of them.
    logged: i64,
    last: CommitId,
    since: Instant,
}

impl Unviewed {
    /// These changes followed by `later`'s.
    fn then(mut self, later: Unviewed) -> Unviewed {
        self.changes.extend(later.changes);
        Unviewed {
            changes: self.changes,
            checkpoints_moved: self.checkpoints_moved || later.checkpoints_moved,
            logged: self.logged + later.logged,
            last: later.last,
            since: self.since,
        }
    }
}

/// Publishes awaited together (below the client's limit of 5,000 pending acknowledgements).
const ACKS_IN_FLIGHT: usize = 2048;

/// The view of a partition is written at most this often (each key once however often it
/// changed; the log covers the meantime)…
const VIEW_EVERY: Duration = Duration::from_secs(5);
/// …or once this many log messages are not in it, well before the log drops them.
const UNVIEWED_MAX: i64 = LOG_KEPT / 2;
/// View records a write takes on for partitions merely due (not forced, not at the log's
/// limit), so that a write stays short.
const VIEW_RECORDS_PER_WRITE: usize = 4096;

fn token(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn untoken(token: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).ok()
}

impl Changelog {
    /// Create the two streams (or bring them up to date).
    pub async fn open(
        client: &async_nats::Client,
        config: &crate::config::ClusterConfig,
        cluster: Arc<Cluster>,
    ) -> Result<Changelog, ChangelogError> {
        let js = jetstream::new(client.clone());
        let view_stream = format!("{}_STATE", config.stream);
        let log_stream = format!("{}_LOG", config.stream);
        let view = format!("{}.state", config.subject);
        let log = format!("{}.log", config.subject);
        for (name, subject, kept) in [(&view_stream, &view, 1), (&log_stream, &log, LOG_KEPT)] {
            js.create_or_update_stream(stream::Config {
                name: name.clone(),
                description: Some("hub cluster: partition state (see cluster::changelog)".into()),
                subjects: vec![format!("{subject}.>")],
                max_messages_per_subject: kept,
                storage: stream::StorageType::File,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .map_err(|e| ChangelogError::Stream {
                stream: name.clone(),
                detail: e.to_string(),
            })?;
        }
        Ok(Changelog {
            js,
            view,
            log,
            view_stream,
            log_stream,
            cluster,
            counter: AtomicU64::new(0),
            checkpoints: Default::default(),
            unviewed: Default::default(),
        })
    }

    fn view_subject(&self, partition: u16, tree: &str, key: &[u8]) -> String {
        format!("{}.{partition}.{}.{}", self.view, token(tree.as_bytes()), token(key))
    }

    /// Write changes of partitions this instance owns (all of them with `force`, which also
    /// writes their view at once): the log now; the view of a partition, then its commit
    /// marker, once it is due (see [`VIEW_EVERY`]).
    pub async fn write(&self, changes: &[Change], force: bool) -> Result<(), ChangelogError> {
        let mut by_partition: BTreeMap<u16, Vec<&Change>> = BTreeMap::new();
        for change in changes {
            // A partition lost since: its new owner restored without these; they must not
            // reach the changelog after its writes.
            if force || self.cluster.owns(change.partition) {
                by_partition.entry(change.partition).or_default().push(change);
            }
        }
        if by_partition.is_empty() {
            return Ok(());
        }
        let fail = |e: String| ChangelogError::Write(e);
        let mut commits = Vec::new();
        let mut log = Vec::new();
        for (&partition, changes) in &by_partition {
            let commit = (
                self.cluster.revision(partition),
                self.counter.fetch_add(1, Ordering::Relaxed) + 1,
            );
            let chunks = chunk(changes);
            let count = chunks.len() as u32;
            commits.push((partition, commit, i64::from(count)));
            for (i, part) in chunks.into_iter().enumerate() {
                let entry = LogEntry {
                    commit,
                    chunk: i as u32,
                    chunks: count,
                    changes: part,
                };
                let bytes = entry.encode().map_err(|e| fail(e.to_string()))?;
                log.push((format!("{}.{partition}", self.log), Some(bytes)));
            }
        }
        self.publish_all(log).await.map_err(fail)?;

        // The view follows, for the partitions due.
        let due: Vec<(u16, Unviewed)> = {
            let Ok(mut unviewed) = self.unviewed.lock() else {
                return Err(fail("the unviewed changes' lock is poisoned".into()));
            };
            for ((&partition, changes), &(_, commit, chunks)) in by_partition.iter().zip(&commits) {
                let waiting = unviewed.entry(partition).or_insert_with(|| Unviewed {
                    changes: BTreeMap::new(),
                    checkpoints_moved: false,
                    logged: 0,
                    last: commit,
                    since: Instant::now(),
                });
                waiting.logged += chunks;
                waiting.last = commit;
                for change in changes {
                    if &*change.tree == CHECKPOINTS {
                        self.note_checkpoint(partition, change);
                        waiting.checkpoints_moved = true;
                    } else {
                        waiting
                            .changes
                            .insert((change.tree.clone(), change.key.clone()), change.value.clone());
                    }
                }
            }
            // `force` concerns only the partitions written now: another one this instance
            // handed back or lost must not reach its new owner's view.
            let forced = |p: &u16| force && by_partition.contains_key(p);
            // The oldest first, and those that cannot wait, with a budget for the others: the
            // partitions' views are written over several writes rather than all at once.
            let mut waiting: Vec<(u16, bool, Instant, usize)> = unviewed
                .iter()
                .map(|(&p, w)| (p, forced(&p) || w.logged >= UNVIEWED_MAX, w.since, w.changes.len()))
                .filter(|&(_, must, since, _)| must || since.elapsed() >= VIEW_EVERY)
                .collect();
            waiting.sort_by_key(|&(_, must, since, _)| (!must, since));
            let mut budget = VIEW_RECORDS_PER_WRITE;
            let due: Vec<u16> = waiting
                .into_iter()
                .take_while(|&(_, must, _, records)| {
                    let take = must || budget > 0;
                    budget = budget.saturating_sub(records);
                    take
                })
                .map(|(p, ..)| p)
                .collect();
            due.into_iter()
                .filter_map(|p| unviewed.remove(&p).map(|w| (p, w)))
                .filter(|(p, _)| forced(p) || self.cluster.owns(*p))
                .collect()
        };
        if due.is_empty() {
            return Ok(());
        }
        let written = self.write_view(&due).await;
        if written.is_err() {
            // Kept for the next try: a later marker must not pass changes the view lacks.
            if let Ok(mut unviewed) = self.unviewed.lock() {
                for (partition, earlier) in due {
                    match unviewed.remove(&partition) {
                        Some(later) => unviewed.insert(partition, earlier.then(later)),
                        None => unviewed.insert(partition, earlier),
                    };
                }
            }
        }
        written
    }

    /// Write partitions' unviewed changes to the view, then their commit markers.
    async fn write_view(&self, due: &[(u16, Unviewed)]) -> Result<(), ChangelogError> {
        let fail = |e: String| ChangelogError::Write(e);
        let mut records = Vec::new();
        for (partition, waiting) in due {
            for ((tree, key), value) in &waiting.changes {
                records.push((self.view_subject(*partition, tree, key), value.clone()));
            }
            if waiting.checkpoints_moved {
                let all = self.checkpoints_record(*partition).map_err(|e| fail(e.to_string()))?;
                records.push((self.view_subject(*partition, CHECKPOINTS, ALL_CHECKPOINTS), Some(all)));
            }
        }
        self.publish_all(records).await.map_err(fail)?;

        let mut markers = Vec::new();
        for (partition, waiting) in due {
            let marker = rmp_serde::to_vec(&(FORMAT, waiting.last)).map_err(|e| fail(e.to_string()))?;
            markers.push((format!("{}.{partition}.{MARKER}", self.view), Some(marker)));
        }
        self.publish_all(markers).await.map_err(fail)
    }

    /// Publish `(subject, value)` messages (`None`: a tombstone), then wait until the server
    /// has stored them all. At most [`ACKS_IN_FLIGHT`] wait at once: the client holds back a
    /// publish while 5,000 acknowledgements of its context are pending, and a future not yet
    /// polled keeps its place, so publishing more before awaiting any would wait for ever.
    async fn publish_all(&self, messages: Vec<(String, Option<Vec<u8>>)>) -> Result<(), String> {
        let mut messages = messages.into_iter().peekable();
        while messages.peek().is_some() {
            let mut acks = Vec::with_capacity(ACKS_IN_FLIGHT);
            for (subject, value) in messages.by_ref().take(ACKS_IN_FLIGHT) {
                let ack = match value {
                    Some(value) => self.js.publish(subject, value.into()).await,
                    None => {
                        let mut h = async_nats::HeaderMap::new();
                        h.insert(DELETED, "1");
                        self.js.publish_with_headers(subject, h, bytes::Bytes::new()).await
                    }
                };
                acks.push(ack.map_err(|e| e.to_string())?.into_future());
            }
            for result in futures::future::join_all(acks).await {
                result.map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// Keep a checkpoint that moved, for the partition's one checkpoints record.
    fn note_checkpoint(&self, partition: u16, change: &Change) {
        let fine = <[u8; 2]>::try_from(change.key.as_slice()).map(u16::from_be_bytes);
        let seq = change
            .value
            .as_deref()
            .and_then(|v| <[u8; 8]>::try_from(v).ok())
            .map_or(0, u64::from_be_bytes);
        if let (Ok(fine), Ok(mut all)) = (fine, self.checkpoints.lock()) {
            all.entry(partition).or_default().insert(fine, seq);
        }
    }

    /// Every checkpoint of `partition` as one record: `[1, [[partition, seq], …]]`.
    fn checkpoints_record(&self, partition: u16) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        let pairs: Vec<(u16, u64)> = match self.checkpoints.lock() {
            Ok(all) => all
                .get(&partition)
                .map(|m| m.iter().map(|(f, s)| (*f, *s)).collect())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        rmp_serde::to_vec(&(FORMAT, pairs))
    }

    /// Read a partition's state back: the view, then the complete log entries newer than it.
    pub async fn restore(&self, partition: u16) -> Result<Restored, ChangelogError> {
        let started = Instant::now();
        let fail = |detail: String| ChangelogError::Read { partition, detail };
        let mut restored = Restored::default();
        let mut marker: CommitId = (0, 0);
        let prefix = format!("{}.{partition}.", self.view);
        let view = self
            .read(&self.view_stream, format!("{prefix}>"), true)
            .await
            .map_err(fail)?;
        for msg in view {
            restored.records += 1;
            let Some(rest) = msg.subject.strip_prefix(prefix.as_str()) else {
                continue;
            };
            if rest == MARKER {
                match rmp_serde::from_slice::<(u8, CommitId)>(&msg.payload) {
                    Ok((_, commit)) => marker = commit,
                    Err(e) => {
                        tracing::error!(partition, error = %e, "unreadable commit marker; the whole log is applied")
                    }
                }
                continue;
            }
            let Some((tree, key)) = rest.split_once('.') else {
                continue;
            };
            let (Some(tree), Some(key)) = (untoken(tree), untoken(key)) else {
                tracing::error!(partition, subject = %msg.subject, "a state record with an unreadable subject; skipped");
                continue;
            };
            let deleted = msg.headers.as_ref().is_some_and(|h| h.get(DELETED).is_some());
            let tree: Arc<str> = String::from_utf8_lossy(&tree).into();
            if &*tree == CHECKPOINTS && key == ALL_CHECKPOINTS {
                match decode_checkpoints(&msg.payload) {
                    Ok(pairs) => {
                        for (fine, seq) in pairs {
                            let key = fine.to_be_bytes().to_vec();
                            restored.entries.insert((tree.clone(), key), seq.to_be_bytes().to_vec());
                        }
                    }
                    Err(e) => {
                        tracing::error!(partition, error = %e, "unreadable checkpoints record; the partition's inputs since its last acknowledgement are applied again")
                    }
                }
                continue;
            }
            if deleted {
                restored.entries.remove(&(tree, key));
            } else {
                restored.entries.insert((tree, key), msg.payload.to_vec());
            }
        }
        let log = self
            .read(&self.log_stream, format!("{}.{partition}", self.log), false)
            .await
            .map_err(fail)?;
        let mut commits: BTreeMap<CommitId, Vec<LogEntry>> = BTreeMap::new();
        for msg in log {
            restored.records += 1;
            match LogEntry::decode(&msg.payload) {
                Ok(entry) if entry.commit > marker => commits.entry(entry.commit).or_default().push(entry),
                Ok(_) => {}
                Err(e) => tracing::error!(partition, error = %e, "unreadable state log entry; skipped"),
            }
        }
        for (commit, mut parts) in commits {
            parts.sort_by_key(|p| p.chunk);
            let whole = parts.first().is_some_and(|p| p.chunks as usize == parts.len());
            if !whole {
                // Its writer died while logging it: nothing of it reached the view, and its
                // inputs were not acknowledged.
                tracing::info!(partition, ?commit, "an incomplete commit in the state log is left out");
                continue;
            }
            for (tree, key, value) in parts.into_iter().flat_map(|p| p.changes) {
                let tree: Arc<str> = tree.into();
                let key = key.into_vec();
                let value = value.map(serde_bytes::ByteBuf::into_vec);
                match &value {
                    Some(v) => restored.entries.insert((tree.clone(), key.clone()), v.clone()),
                    None => restored.entries.remove(&(tree.clone(), key.clone())),
                };
                restored.replayed.push(Change {
                    partition,
                    tree,
                    key,
                    value,
                });
            }
        }
        // What this instance logged of the partition when it last owned it is its previous
        // owner's past now: it must not reach the view.
        if let Ok(mut unviewed) = self.unviewed.lock() {
            unviewed.remove(&partition);
        }
        // This instance's record of the partition's checkpoints starts from what was restored.
        if let Ok(mut all) = self.checkpoints.lock() {
            let mine = all.entry(partition).or_default();
            mine.clear();
            for ((tree, key), value) in &restored.entries {
                if &**tree == CHECKPOINTS
                    && let (Ok(fine), Ok(seq)) = (
                        <[u8; 2]>::try_from(key.as_slice()),
                        <[u8; 8]>::try_from(value.as_slice()),
                    )
                {
                    mine.insert(u16::from_be_bytes(fine), u64::from_be_bytes(seq));
                }
            }
        }
        restored.took = started.elapsed();
        Ok(restored)
    }

    /// Every message of `filter` (the last per subject with `last`), read once through an
    /// ordered consumer of its own.
    async fn read(&self, stream: &str, filter: String, last: bool) -> Result<Vec<jetstream::Message>, String> {
        use jetstream::consumer;
        let stream = self.js.get_stream(stream).await.map_err(|e| e.to_string())?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: filter,
                deliver_policy: if last {
                    consumer::DeliverPolicy::LastPerSubject
                } else {
                    consumer::DeliverPolicy::All
                },
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut consumer = consumer;
        let pending = consumer.info().await.map_err(|e| e.to_string())?.num_pending;
        let mut found = Vec::with_capacity(pending as usize);
        if pending == 0 {
            return Ok(found);
        }
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
        while let Some(msg) = messages.next().await {
            let msg = msg.map_err(|e| e.to_string())?;
            let left = msg.info().map(|i| i.pending).unwrap_or(0);
            found.push(msg);
            if left == 0 {
                break;
            }
        }
        Ok(found)
    }
}

/// The key of a partition's checkpoints record in the view (no finer partition's key, two
/// bytes, can be it).
const ALL_CHECKPOINTS: &[u8] = b"all";

/// A checkpoints record: its pairs, whatever later formats append.
fn decode_checkpoints(mut bytes: &[u8]) -> Result<Vec<(u16, u64)>, String> {
    let value = rmpv::decode::read_value(&mut bytes).map_err(|e| e.to_string())?;
    let pairs = value
        .as_array()
        .and_then(|items| items.get(1))
        .and_then(|p| p.as_array())
        .ok_or_else(|| format!("not a checkpoints record: {value}"))?;
    pairs
        .iter()
        .map(|pair| match pair.as_array().map(Vec::as_slice) {
            Some([fine, seq, ..]) => fine
                .as_u64()
                .and_then(|f| u16::try_from(f).ok())
                .zip(seq.as_u64())
                .ok_or_else(|| format!("not a checkpoint: {pair}")),
            _ => Err(format!("not a checkpoint: {pair}")),
        })
        .collect()
}

/// A commit's changes in parts of at most [`CHUNK_BYTES`] (one part at least).
fn chunk(changes: &[&Change]) -> Vec<Vec<(String, serde_bytes::ByteBuf, Option<serde_bytes::ByteBuf>)>> {
    let mut parts = vec![Vec::new()];
    let mut size = 0;
    for c in changes {
        let bytes = c.tree.len() + c.key.len() + c.value.as_ref().map_or(0, Vec::len) + 8;
        if size + bytes > CHUNK_BYTES && parts.last().is_some_and(|p| !p.is_empty()) {
            parts.push(Vec::new());
            size = 0;
        }
        size += bytes;
        if let Some(part) = parts.last_mut() {
            part.push((
                c.tree.to_string(),
                serde_bytes::ByteBuf::from(c.key.clone()),
                c.value.clone().map(serde_bytes::ByteBuf::from),
            ));
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn log_entries_round_trip(
            revision in any::<u64>(), n in any::<u64>(), chunk in any::<u32>(), chunks in any::<u32>(),
            changes in proptest::collection::vec((".*", proptest::collection::vec(any::<u8>(), 0..40),
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40))), 0..8),
        ) {
            let entry = LogEntry {
                commit: (revision, n),
                chunk,
                chunks,
                changes: changes
                    .into_iter()
                    .map(|(t, k, v)| (t, serde_bytes::ByteBuf::from(k), v.map(serde_bytes::ByteBuf::from)))
                    .collect(),
            };
            let bytes = entry.encode().expect("encode");
            prop_assert_eq!(LogEntry::decode(&bytes).expect("decode"), entry);
        }

        #[test]
        fn subject_tokens_round_trip_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let t = token(&bytes);
            prop_assert!(t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
            prop_assert_eq!(untoken(&t), Some(bytes));
        }
    }

    proptest! {
        #[test]
        fn checkpoints_records_round_trip(pairs in proptest::collection::vec((any::<u16>(), any::<u64>()), 0..64)) {
            let bytes = rmp_serde::to_vec(&(FORMAT, &pairs)).expect("encode");
            prop_assert_eq!(decode_checkpoints(&bytes).expect("decode"), pairs.clone());
            let later = rmp_serde::to_vec(&(FORMAT, &pairs, "a later field")).expect("encode");
            prop_assert_eq!(decode_checkpoints(&later).expect("decode"), pairs);
        }
    }

    #[test]
    fn a_log_entry_with_a_future_field_is_read() {
        let entry = LogEntry {
            commit: (3, 4),
            chunk: 0,
            chunks: 1,
            changes: vec![("state/x".into(), serde_bytes::ByteBuf::from(vec![1]), None)],
        };
        let later = rmp_serde::to_vec(&(FORMAT, &entry, "a later field")).expect("encode");
        assert_eq!(LogEntry::decode(&later).expect("decode"), entry);
        let wider = (
            FORMAT,
            (entry.commit, 0u32, 1u32, &entry.changes, "a later field of the entry"),
        );
        let wider = rmp_serde::to_vec(&wider).expect("encode");
        assert_eq!(LogEntry::decode(&wider).expect("decode"), entry);
    }

    #[test]
    fn large_commits_are_split_and_small_ones_are_not() {
        let change = |n: usize| Change {
            partition: 0,
            tree: "state/p".into(),
            key: vec![0; 10],
            value: Some(vec![7; n]),
        };
        assert_eq!(chunk(&[&change(10), &change(10)]).len(), 1);
        assert_eq!(chunk(&[]).len(), 1, "an empty commit is one empty part");
        let big: Vec<Change> = (0..5).map(|_| change(200 * 1024)).collect();
        let parts = chunk(&big.iter().collect::<Vec<_>>());
        assert_eq!(parts.len(), 3);
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 5);
    }
}

/// Against a real nats-server.
#[cfg(test)]
mod on_nats {
    use super::*;
    use crate::nats_server::{LocalNats, free_port};

    fn set(partition: u16, key: &str, value: Option<&str>) -> Change {
        Change {
            partition,
            tree: "state/p".into(),
            key: key.as_bytes().to_vec(),
            value: value.map(|v| v.as_bytes().to_vec()),
        }
    }

    async fn restored_value(log: &Changelog, partition: u16, key: &str) -> Option<Vec<u8>> {
        let restored = log.restore(partition).await.expect("restore");
        restored
            .entries
            .get(&("state/p".into(), key.as_bytes().to_vec()))
            .cloned()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_takeover_on_one_partition_does_not_write_a_handed_back_partitions_old_changes_to_its_view() {
        let dir = tempfile::tempdir().expect("temp dir");
        let nats = LocalNats::start(free_port().expect("port"), dir.path())
            .await
            .expect("nats-server");
        let client = async_nats::connect(&nats.url).await.expect("connect");
        let config = crate::config::ClusterConfig::default();
        let (a, b) = (
            Arc::new(Cluster::new("a".into(), 4)),
            Arc::new(Cluster::new("b".into(), 4)),
        );
        let log_a = Changelog::open(&client, &config, a.clone()).await.expect("open");
        let log_b = Changelog::open(&client, &config, b.clone()).await.expect("open");

        // a owns partition 1 and changes a key: logged, not yet in the view.
        a.set_owned(1, true);
        log_a.write(&[set(1, "k", Some("old"))], false).await.expect("write");
        // a hands partition 1 back; b takes it and deletes the key.
        a.set_owned(1, false);
        b.set_revision(1, 2);
        b.set_owned(1, true);
        log_b.write(&[set(1, "k", None)], true).await.expect("write");
        // …and goes on until the log no longer has that deletion (the view has it).
        for n in 0..LOG_KEPT + 4 {
            let value = n.to_string();
            log_b
                .write(&[set(1, "other", Some(&value))], true)
                .await
                .expect("write");
        }
        // a takes partition 2 over, which writes partition 2's view at once.
        a.set_revision(2, 3);
        log_a.write(&[set(2, "j", Some("x"))], true).await.expect("write");

        assert_eq!(restored_value(&log_b, 1, "k").await, None, "a's old value came back");
        assert_eq!(restored_value(&log_b, 2, "j").await, Some(b"x".to_vec()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_view_write_of_more_records_than_the_client_lets_wait_for_acknowledgement_completes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let nats = LocalNats::start(free_port().expect("port"), dir.path())
            .await
            .expect("nats-server");
        let client = async_nats::connect(&nats.url).await.expect("connect");
        let cluster = Arc::new(Cluster::new("a".into(), 4));
        let log = Changelog::open(&client, &crate::config::ClusterConfig::default(), cluster.clone())
            .await
            .expect("open");
        cluster.set_owned(3, true);
        let many: Vec<Change> = (0..12_000).map(|i| set(3, &format!("k{i}"), Some("v"))).collect();
        tokio::time::timeout(Duration::from_secs(60), log.write(&many, true))
            .await
            .expect("the write waited for ever")
            .expect("write");
        assert_eq!(log.restore(3).await.expect("restore").entries.len(), 12_000);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_not_yet_in_the_view_are_restored_from_the_log() {
        let dir = tempfile::tempdir().expect("temp dir");
        let nats = LocalNats::start(free_port().expect("port"), dir.path())
            .await
            .expect("nats-server");
        let client = async_nats::connect(&nats.url).await.expect("connect");
        let config = crate::config::ClusterConfig::default();
        let cluster = Arc::new(Cluster::new("a".into(), 4));
        let log = Changelog::open(&client, &config, cluster.clone()).await.expect("open");
        cluster.set_owned(0, true);
        log.write(&[set(0, "k", Some("1")), set(0, "gone", Some("1"))], true)
            .await
            .expect("write");
        for n in 2..10 {
            let value = n.to_string();
            log.write(&[set(0, "k", Some(&value)), set(0, "gone", None)], false)
                .await
                .expect("write");
        }
        assert_eq!(restored_value(&log, 0, "k").await, Some(b"9".to_vec()));
        assert_eq!(restored_value(&log, 0, "gone").await, None);
    }
}
