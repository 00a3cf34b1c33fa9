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
    pub changes: Vec<crate::cluster::changelog::Change>,
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

    /// Hand a commit to the committer, waiting while its queue is full.
    pub fn send(&self, commit: Commit) {
        if let Err(flume::SendError(commit)) = self.tx.send(commit) {
            // Only at shutdown after the committer stopped: apply here rather than lose it.
            apply(commit);
        }
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
        changes: Vec<crate::cluster::changelog::Change>,
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
pub type WriteChanges = Box<dyn FnMut(&[crate::cluster::changelog::Change]) -> bool + Send>;

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
/// they were taken; after it, flush sled and report what the group covers.
fn run_durable(rx: &flume::Receiver<Commit>, mut d: Durability) {
    loop {
        let mut group: Vec<Commit> = match rx.recv_timeout(crate::limits::IDLE_FLUSH_INTERVAL) {
            Ok(first) => std::iter::once(first).chain(rx.try_iter()).collect(),
            Err(flume::RecvTimeoutError::Timeout) if d.clock.take_wanted() => Vec::new(),
            Err(flume::RecvTimeoutError::Timeout) => continue,
            Err(flume::RecvTimeoutError::Disconnected) => break,
        };
        if !group.is_empty() {
            confirm_outputs(&mut d.confirm);
        }
        // Started before the pending changes are taken: an input whose change comes later waits
        // for the next flush.
        let flush = d.clock.start();
        if let Some(write) = d.changelog.as_mut() {
            let mut changes = d.pending.take();
            changes.extend(group.iter_mut().flat_map(|c| std::mem::take(&mut c.changes)));
            if !changes.is_empty() {
                write_changes(write, &changes);
            }
        }
        let shards = group.iter().map(|c| (c.shard, c.inputs)).collect();
        for commit in group {
            apply(commit);
        }
        if let Err(e) = d.db.flush() {
            // Nothing is reported: the inputs stay unacknowledged and come again after a crash.
            metrics::counter!(crate::metrics::STATE_COMMIT_ERRORS).increment(1);
            tracing::error!(error = %e, "sled flush failed; inputs stay unacknowledged");
            continue;
        }
        let _ = d.flushed.send(crate::durable::Flushed { shards, flush });
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
            return;
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_secs(1));
    }
}

/// Write changes to a cluster's changelog, retried while NATS cannot take them: the commit (and
/// the acknowledgement of its inputs) waits, so an instance that dies meanwhile leaves its
/// inputs to be read again by the partition's next owner.
fn write_changes(
    write: &mut (dyn FnMut(&[crate::cluster::changelog::Change]) -> bool + Send),
    changes: &[crate::cluster::changelog::Change],
) {
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
