//! The committer: one thread that applies the shards' write batches to sled.
//!
//! sled takes ~110–170 k inserts/s and applying a batch costs per key (measured on a 2-core machine), so doing it
//! on a shard thread stalled that shard for 5–50 ms every commit interval (the tail of the
//! event→action latency). Shards now only *build* their batches (copying bytes) and hand them
//! over; this thread applies them in the order received, which keeps each shard's writes in
//! order. The queue is bounded: a committer that falls behind slows the shards instead of
//! growing memory.
//!
//! Each shard learns through [`Applied`] which of its commits are in sled, so its cache only
//! drops entries whose values sled already holds (see `StateCache::evict`).

use super::{StateCache, TimerWheel};
use crate::cluster::changelog::Change;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The highest commit sequence number of one shard that is applied to sled.
#[derive(Clone, Default)]
pub struct Applied(Arc<AtomicU64>);

impl Applied {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
    fn set(&self, seq: u64) {
        self.0.store(seq, Ordering::Release);
    }
}

/// One shard's writes of one commit interval.
pub struct Commit {
    pub shard: usize,
    pub seq: u64,
    /// Applied together (one sled transaction): a crash keeps all of them or none.
    pub batches: Vec<(sled::Tree, sled::Batch)>,
    pub applied: Applied,
    /// The ordinal of the last stream input the shard handled before this commit (durable mode).
    pub inputs: u64,
    /// What changed, by partition, for a cluster's changelog (empty outside a cluster).
    pub changes: Vec<Change>,
}

/// The sending side, cloned into every shard.
#[derive(Clone)]
pub struct CommitQueue {
    tx: flume::Sender<Commit>,
}

impl CommitQueue {
    /// [`CommitQueue::send`] from async code; waits until sled holds the commit.
    pub async fn apply_async(&self, batches: Vec<(sled::Tree, sled::Batch)>) {
        let applied = Applied::default();
        let commit = Commit {
            shard: 0,
            seq: 1,
            batches,
            applied: applied.clone(),
            inputs: 0,
            changes: Vec::new(),
        };
        if let Err(flume::SendError(commit)) = self.tx.send_async(commit).await {
            apply(commit);
        }
        while applied.get() < 1 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// How far the committer is behind, as something that does not keep it running.
    pub fn pressure(&self) -> CommitPressure {
        CommitPressure(self.tx.downgrade())
    }

    /// Hand a commit to the committer, waiting while its queue is full.
    pub fn send(&self, commit: Commit) {
        if let Err(flume::SendError(commit)) = self.tx.send(commit) {
            // Only at shutdown after the committer stopped: apply here rather than lose it.
            apply(commit);
        }
    }
}

/// Whether the committer falls behind. Weak: the committer stops once every [`CommitQueue`] is
/// dropped, and whoever looks at its pressure must not keep it waiting.
pub struct CommitPressure(flume::WeakSender<Commit>);

impl CommitPressure {
    /// Half its queue or more is waiting: shards that hand it more would soon wait for it,
    /// every input in their queues with them.
    pub fn is_congested(&self) -> bool {
        self.0
            .upgrade()
            .is_some_and(|tx| tx.capacity().is_some_and(|capacity| tx.len() * 2 >= capacity))
    }
}

/// A shard's side of committing: when its next commit is due, and handing what changed since
/// the last one (state, timers) to the committer.
pub struct ShardCommits {
    shard: usize,
    queue: CommitQueue,
    every: Duration,
    next: Instant,
    seq: u64,
    applied: Applied,
    /// The input ordinal the last commit reported.
    reported: u64,
}

impl ShardCommits {
    pub fn new(shard: usize, queue: CommitQueue, every: Duration) -> ShardCommits {
        ShardCommits {
            shard,
            queue,
            every,
            next: Instant::now() + every,
            seq: 0,
            applied: Applied::default(),
            reported: 0,
        }
    }

    /// When the next commit is due.
    pub fn next(&self) -> Instant {
        self.next
    }

    /// The sequence number the next commit will have.
    pub fn upcoming(&self) -> u64 {
        self.seq + 1
    }

    /// The highest of this shard's commits that is applied to sled.
    pub fn applied(&self) -> u64 {
        self.applied.get()
    }

    /// Hand dirty state and timers (and `durable`: the inputs applied and the handoffs, see
    /// `durable`) to the committer as commit [`Self::upcoming`], and trim the cache to what sled
    /// holds. `inputs` is the ordinal of the last stream input handled: a commit goes out when
    /// it moved even if nothing else changed, so the input can be acknowledged.
    pub fn commit(
        &mut self,
        state: &mut StateCache,
        timers: &mut TimerWheel,
        durable: impl IntoIterator<Item = (sled::Tree, sled::Batch)>,
        inputs: u64,
        changes: Vec<Change>,
    ) {
        let seq = self.seq + 1;
        let applied = self.applied.get();
        let mut batches = state.take_commit(seq);
        batches.extend(timers.take_commit());
        batches.extend(durable);
        state.evict(applied);
        if !batches.is_empty() || inputs > self.reported || !changes.is_empty() {
            self.seq = seq;
            self.reported = inputs;
            self.queue.send(Commit {
                shard: self.shard,
                seq,
                batches,
                applied: self.applied.clone(),
                inputs,
                changes,
            });
        }
        self.next = Instant::now() + self.every;
    }
}

pub struct Committer {
    thread: Option<JoinHandle<()>>,
}

/// Writes changes to a cluster's changelog; false when it cannot now.
pub type WriteChanges = Box<dyn FnMut(&[Change]) -> bool + Send>;

/// What the committer does in durable mode besides applying commits: confirm the shards'
/// outputs before, flush and report after (see `durable`).
pub struct Durability {
    pub db: sled::Db,
    /// Confirms that what the shards published so far has reached the NATS server; false when
    /// it cannot now (the connection is down).
    pub confirm: Box<dyn FnMut() -> bool + Send>,
    pub flushed: flume::Sender<crate::durable::Flushed>,
    pub clock: Arc<crate::durable::FlushClock>,
    /// In a cluster: writes the commits' changes to the state changelog (see
    /// `cluster::changelog`); false when it cannot now.
    pub changelog: Option<WriteChanges>,
    /// How long changes wait to be written to the changelog together (zero: with every group
    /// of commits). The group's inputs are acknowledged only after that write.
    pub changelog_every: Duration,
    /// Changes made outside commits, written with the next group.
    pub pending: crate::cluster::changelog::Pending,
}

impl Committer {
    /// Start the committer thread with a queue of `capacity` commits.
    pub fn start(capacity: usize, durability: Option<Durability>) -> std::io::Result<(Committer, CommitQueue)> {
        let (tx, rx) = flume::bounded::<Commit>(capacity.max(1));
        let thread = std::thread::Builder::new()
            .name("hub-committer".into())
            .spawn(move || match durability {
                None => {
                    for commit in rx.iter() {
                        apply(commit);
                    }
                }
                Some(durability) => run_durable(&rx, durability),
            })?;
        Ok((Committer { thread: Some(thread) }, CommitQueue { tx }))
    }

    /// Wait until every queued commit is applied. Every [`CommitQueue`] must be dropped first.
    pub fn finish(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Apply commits as they come; before a group of them, confirm the outputs published before
/// they were taken; after it, flush sled and report what the group covers (in a cluster, once
/// the changelog holds the group's changes).
fn run_durable(rx: &flume::Receiver<Commit>, mut d: Durability) {
    let mut held = Held::default();
    loop {
        let wait = held
            .due(d.changelog_every)
            .map_or(crate::limits::IDLE_FLUSH_INTERVAL, |due| {
                due.saturating_duration_since(Instant::now())
            })
            .min(crate::limits::IDLE_FLUSH_INTERVAL);
        let mut group: Vec<Commit> = match rx.recv_timeout(wait) {
            Ok(first) => std::iter::once(first).chain(rx.try_iter()).collect(),
            Err(flume::RecvTimeoutError::Timeout) if held.is_due(d.changelog_every) => {
                release(&mut d, &mut held);
                continue;
            }
            Err(flume::RecvTimeoutError::Timeout) if d.clock.take_wanted() => Vec::new(),
            Err(flume::RecvTimeoutError::Timeout) => continue,
            Err(flume::RecvTimeoutError::Disconnected) => {
                // Changes made outside commits since the last group (a profile set over the API
                // just before stopping) go with the last write too.
                if d.changelog.is_some() {
                    held.add(d.pending.take());
                }
                release(&mut d, &mut held);
                break;
            }
        };
        if !group.is_empty() {
            confirm_outputs(&mut d.confirm);
        }
        // Started before the pending changes are taken: an input whose change comes later waits
        // for the next flush.
        let flush = d.clock.start();
        if d.changelog.is_some() {
            // Held even when sled fails below: later commits build on these changes, so the
            // changelog must have them before it has any later checkpoint.
            held.add(d.pending.take());
            for commit in &mut group {
                held.add(std::mem::take(&mut commit.changes));
            }
        }
        let shards = group.iter().map(|c| (c.shard, c.inputs)).collect();
        for commit in group {
            apply(commit);
        }
        let flushing = Instant::now();
        let flushed = d.db.flush();
        metrics::histogram!(crate::metrics::STATE_FLUSHES).record(flushing.elapsed().as_secs_f64());
        if let Err(e) = flushed {
            // Nothing is reported: the inputs stay unacknowledged and come again after a crash.
            metrics::counter!(crate::metrics::STATE_COMMIT_ERRORS).increment(1);
            tracing::error!(error = %e, "sled flush failed; inputs stay unacknowledged");
            continue;
        }
        held.reports.push(crate::durable::Flushed { shards, flush });
        if d.changelog.is_none() || held.is_due(d.changelog_every) || held.changes.len() >= HELD_CHANGES_MAX {
            release(&mut d, &mut held);
        }
    }
}

/// Changes held a moment so that the changelog gets each key once per interval, not once per
/// commit (a partition's log entry, commit marker and checkpoint record are written once per
/// interval too), and the reports of the flushes whose inputs wait for them.
#[derive(Default)]
struct Held {
    since: Option<Instant>,
    changes: Vec<Change>,
    /// Where each key's change is in `changes`: a later change replaces it in place.
    index: HashMap<(u16, Arc<str>, Vec<u8>), usize>,
    reports: Vec<crate::durable::Flushed>,
}

/// Held changes past this many are written at once (a bound on memory and on a log entry).
const HELD_CHANGES_MAX: usize = 50_000;

impl Held {
    fn add(&mut self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        self.since.get_or_insert_with(Instant::now);
        for change in changes {
            let key = (change.partition, change.tree.clone(), change.key.clone());
            match self.index.get(&key) {
                Some(&at) => self.changes[at] = change,
                None => {
                    self.index.insert(key, self.changes.len());
                    self.changes.push(change);
                }
            }
        }
    }

    /// When the held changes are due to be written; `None`: nothing waits.
    fn due(&self, every: Duration) -> Option<Instant> {
        match (self.since, self.reports.is_empty()) {
            (Some(since), _) => Some(since + every),
            // Reports without changes wait for nothing.
            (None, false) => Some(Instant::now()),
            (None, true) => None,
        }
    }

    fn is_due(&self, every: Duration) -> bool {
        self.due(every).is_some_and(|due| due <= Instant::now())
    }
}

/// Write the held changes to the changelog (retried until it takes them), then report the
/// flushes that waited for it.
fn release(d: &mut Durability, held: &mut Held) {
    let Held { changes, reports, .. } = std::mem::take(held);
    if let Some(write) = d.changelog.as_mut()
        && !changes.is_empty()
    {
        write_changes(write, &changes);
    }
    for report in reports {
        let _ = d.flushed.send(report);
    }
}

/// Wait until the outputs published so far are confirmed by the server, or give up after
/// `limits::OUTPUT_CONFIRM_PATIENCE` (logged and counted: a crash then could lose them).
fn confirm_outputs(confirm: &mut (dyn FnMut() -> bool + Send)) {
    let started = Instant::now();
    let mut wait = Duration::from_millis(50);
    while !confirm() {
        if started.elapsed() >= crate::limits::OUTPUT_CONFIRM_PATIENCE {
            metrics::counter!(crate::metrics::OUTPUTS_UNCONFIRMED).increment(1);
            tracing::error!("NATS did not confirm the shards' outputs; committing without it");
            break;
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_secs(1));
    }
    metrics::histogram!(crate::metrics::OUTPUT_CONFIRMS).record(started.elapsed().as_secs_f64());
}

/// Write changes to a cluster's changelog, retried while NATS cannot take them: the commit (and
/// the acknowledgement of its inputs) waits, so an instance that dies meanwhile leaves its
/// inputs to be read again by the partition's next owner.
fn write_changes(write: &mut (dyn FnMut(&[Change]) -> bool + Send), changes: &[Change]) {
    let mut wait = Duration::from_millis(50);
    while !write(changes) {
        metrics::counter!(crate::metrics::STATE_COMMIT_ERRORS).increment(1);
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}

fn apply(commit: Commit) {
    let started = std::time::Instant::now();
    // A failed commit is retried a few times: sled errors are I/O errors, often passing.
    let mut attempt = 0;
    while let Err(e) = apply_atomically(&commit.batches) {
        attempt += 1;
        metrics::counter!(crate::metrics::STATE_COMMIT_ERRORS).increment(1);
        if attempt >= 5 {
            tracing::error!(error = %e, "state commit could not be written to sled; giving up on it");
            break;
        }
        tracing::warn!(error = %e, attempt, "state commit failed; retrying");
        std::thread::sleep(Duration::from_millis(10 << attempt));
    }
    commit.applied.set(commit.seq);
    metrics::histogram!(crate::metrics::STATE_COMMITS).record(started.elapsed().as_secs_f64());
}

/// Apply batches of several trees as one: sled recovers a transaction whole or not at all.
fn apply_atomically(batches: &[(sled::Tree, sled::Batch)]) -> Result<(), sled::Error> {
    use sled::Transactional;
    match batches {
        [] => Ok(()),
        [(tree, batch)] => tree.apply_batch(batch.clone()),
        _ => {
            let trees: Vec<sled::Tree> = batches.iter().map(|(t, _)| t.clone()).collect();
            trees
                .as_slice()
                .transaction(|tx| {
                    for (tree, (_, batch)) in tx.iter().zip(batches) {
                        tree.apply_batch(batch)?;
                    }
                    Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
                })
                .map_err(|e| match e {
                    sled::transaction::TransactionError::Storage(e) => e,
                    sled::transaction::TransactionError::Abort(()) => {
                        sled::Error::Unsupported("state commit aborted".into())
                    }
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(partition: u16, key: &str, value: Option<&str>) -> Change {
        Change {
            partition,
            tree: "state/p".into(),
            key: key.as_bytes().to_vec(),
            value: value.map(|v| v.as_bytes().to_vec()),
        }
    }

    #[test]
    fn held_changes_keep_each_keys_last_value_in_first_seen_order() {
        let mut held = Held::default();
        held.add(vec![change(1, "a", Some("1")), change(1, "b", Some("1"))]);
        held.add(vec![change(1, "a", None), change(2, "a", Some("2"))]);
        held.add(vec![change(1, "b", Some("3"))]);
        assert_eq!(
            held.changes,
            [
                change(1, "a", None),
                change(1, "b", Some("3")),
                change(2, "a", Some("2"))
            ]
        );
    }

    #[test]
    fn a_change_made_outside_commits_just_before_stopping_reaches_the_changelog() {
        let dir = tempfile::tempdir().expect("temp dir");
        let written: Arc<std::sync::Mutex<Vec<Change>>> = Arc::default();
        let pending = crate::cluster::changelog::Pending::default();
        let (flushed, _reports) = flume::unbounded();
        let sink = written.clone();
        let durability = Durability {
            db: sled::open(dir.path()).expect("sled"),
            confirm: Box::new(|| true),
            flushed,
            clock: Arc::default(),
            changelog: Some(Box::new(move |changes: &[Change]| {
                sink.lock().expect("lock").extend_from_slice(changes);
                true
            })),
            changelog_every: Duration::from_secs(60),
            pending: pending.clone(),
        };
        let (committer, queue) = Committer::start(4, Some(durability)).expect("start");
        pending.push(change(1, "profile", Some("gold")));
        drop(queue);
        committer.finish();
        assert_eq!(*written.lock().expect("lock"), [change(1, "profile", Some("gold"))]);
    }

    #[test]
    fn held_reports_wait_for_changes_but_not_alone() {
        let every = Duration::from_secs(60);
        let mut held = Held::default();
        assert_eq!(held.due(every), None);
        held.reports.push(crate::durable::Flushed::default());
        assert!(held.is_due(every), "a report with no change waits for nothing");
        held.add(vec![change(1, "a", Some("1"))]);
        assert!(!held.is_due(every), "changes wait for the interval");
        assert!(held.is_due(Duration::ZERO));
    }
}
