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
    pub seq: u64,
    pub batches: Vec<(sled::Tree, sled::Batch)>,
    pub applied: Applied,
}

/// The sending side, cloned into every shard.
#[derive(Clone)]
pub struct CommitQueue {
    tx: flume::Sender<Commit>,
}

impl CommitQueue {
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
    queue: CommitQueue,
    every: Duration,
    next: Instant,
    seq: u64,
    applied: Applied,
}

impl ShardCommits {
    pub fn new(queue: CommitQueue, every: Duration) -> ShardCommits {
        ShardCommits {
            queue,
            every,
            next: Instant::now() + every,
            seq: 0,
            applied: Applied::default(),
        }
    }

    /// When the next commit is due.
    pub fn next(&self) -> Instant {
        self.next
    }

    /// Hand dirty state and timers to the committer, and trim the cache to what sled holds.
    pub fn commit(&mut self, state: &mut StateCache, timers: &mut TimerWheel) {
        let seq = self.seq + 1;
        let applied = self.applied.get();
        let mut batches = state.take_commit(seq);
        batches.extend(timers.take_commit());
        state.evict(applied);
        if !batches.is_empty() {
            self.seq = seq;
            self.queue.send(Commit {
                seq,
                batches,
                applied: self.applied.clone(),
            });
        }
        self.next = Instant::now() + self.every;
    }
}

pub struct Committer {
    thread: Option<JoinHandle<()>>,
}

impl Committer {
    /// Start the committer thread with a queue of `capacity` commits.
    pub fn start(capacity: usize) -> std::io::Result<(Committer, CommitQueue)> {
        let (tx, rx) = flume::bounded::<Commit>(capacity.max(1));
        let thread = std::thread::Builder::new()
            .name("hub-committer".into())
            .spawn(move || {
                for commit in rx.iter() {
                    apply(commit);
                }
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

fn apply(commit: Commit) {
    let started = std::time::Instant::now();
    for (tree, batch) in commit.batches {
        // A failed batch is retried a few times: sled errors are I/O errors, often passing.
        let mut attempt = 0;
        while let Err(e) = tree.apply_batch(batch.clone()) {
            attempt += 1;
            metrics::counter!(crate::metrics::STATE_COMMIT_ERRORS).increment(1);
            if attempt >= 5 {
                tracing::error!(error = %e, "state batch could not be written to sled; giving up on it");
                break;
            }
            tracing::warn!(error = %e, attempt, "state batch failed; retrying");
            std::thread::sleep(Duration::from_millis(10 << attempt));
        }
    }
    commit.applied.set(commit.seq);
    metrics::histogram!(crate::metrics::STATE_COMMITS).record(started.elapsed().as_secs_f64());
}
