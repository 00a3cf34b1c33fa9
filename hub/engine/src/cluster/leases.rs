//! Membership and partition leases in a NATS key-value bucket whose entries expire `lease_ttl`
//! after their last write (the 2.9 server has no per-key TTL; the bucket's `max_age` is one).
//!
//! Keys: `member.<instance>` (a [`Member`], rewritten every tick), `part.<n>` and `ingest`
//! (the holder's name). Every third of the TTL an instance rewrites its member key, renews each
//! lease with the revision it last wrote (`update` with an expected revision: a different one
//! means someone else took it), reads who owns what, and balances: with `m` live members each
//! aims at `partitions / m` (the first `partitions % m` by name one more), claims free partitions
//! (`create`, which only succeeds on a missing or expired key) in an order of its own
//! (rendezvous hashing, so claims rarely collide), and hands back what it holds above its aim.
//! It also watches the bucket and balances at once when a member joins or leaves or a lease is
//! handed back, so clean moves take a round trip rather than a tick (an expired entry leaves no
//! marker to watch: a dead instance's leases are seen at the next tick).
//!
//! A hand-back is clean: the reader stops pulling the partition and reports it drained once
//! everything it delivered is acknowledged; only then is the key deleted. A lease that could not
//! be renewed for half its life is dropped on this side at once, before it can expire on the
//! server and be taken by another.

use super::{Board, Cluster, Member, Owner};
use crate::metrics as m;
use async_nats::jetstream::{self, kv};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("cannot open the cluster bucket {bucket}: {detail}")]
    Bucket { bucket: String, detail: String },
}

const MEMBER: &str = "member.";
const PART: &str = "part.";
const INGEST: &str = "ingest";

/// What the partition reader is told: the partitions to read, each with the revision of the
/// lease that lets it (its consumer is named after it).
pub type Pulls = BTreeMap<u16, u64>;

/// The lease task's ends that the rest of the hub holds.
pub struct LeaseHandle {
    task: Option<JoinHandle<()>>,
    leave: Option<oneshot::Sender<()>>,
}

/// The other ends: for the partition reader and the repartitioner.
pub struct LeaseWiring {
    pub pulls: watch::Receiver<Pulls>,
    /// The reader reports here a partition it stopped pulling and has acknowledged everything of.
    pub drained: mpsc::UnboundedSender<u16>,
    /// `Some(revision)` while this instance holds the ingest lease.
    pub ingest: watch::Receiver<Option<u64>>,
}

/// The bucket as read at one tick.
struct Seen {
    /// Live members, sorted by name.
    members: Vec<Member>,
    owners: BTreeMap<u16, String>,
    /// The ingest lease's holder.
    ingest: Option<String>,
}

struct Held {
    revision: u64,
    renewed: Instant,
}

struct Leases {
    kv: kv::Store,
    cluster: Arc<Cluster>,
    ttl: Duration,
    me: Member,
    held: BTreeMap<u16, Held>,
    releasing: BTreeSet<u16>,
    ingest: Option<Held>,
    pulls: watch::Sender<Pulls>,
    drained: mpsc::UnboundedReceiver<u16>,
    ingest_tx: watch::Sender<Option<u64>>,
    board: Board,
    /// Members as last seen: a new one in the bucket's watch means balancing now.
    members: BTreeSet<String>,
}

/// Open (or create) the bucket and start taking part.
pub async fn join(
    client: &async_nats::Client,
    config: &crate::config::ClusterConfig,
    cluster: Arc<Cluster>,
    http: String,
) -> Result<(LeaseHandle, LeaseWiring), LeaseError> {
    let js = jetstream::new(client.clone());
    let fail = |detail: String| LeaseError::Bucket {
        bucket: config.bucket.clone(),
        detail,
    };
    let kv = super::open_bucket(
        &js,
        &config.bucket,
        "hub cluster: members and partition leases",
        config.lease_ttl,
    )
    .await
    .map_err(fail)?;
    let ttl = match kv.status().await {
        Ok(status) if status.max_age() != config.lease_ttl && !status.max_age().is_zero() => {
            tracing::warn!(
                bucket = config.bucket,
                configured = ?config.lease_ttl,
                bucket_ttl = ?status.max_age(),
                "the cluster bucket keeps entries for another time than lease_ttl; the bucket's applies"
            );
            status.max_age()
        }
        Ok(_) => config.lease_ttl,
        Err(e) => return Err(fail(format!("status: {e}"))),
    };
    let (pulls_tx, pulls) = watch::channel(Pulls::new());
    let (ingest_tx, ingest) = watch::channel(None);
    let (drained_tx, drained) = mpsc::unbounded_channel();
    let (leave_tx, leave) = oneshot::channel();
    let me = Member {
        instance: cluster.instance.clone(),
        http,
        started: crate::event::now_ms(),
    };
    let board = cluster.board();
    let leases = Leases {
        kv,
        cluster,
        ttl,
        me,
        held: BTreeMap::new(),
        releasing: BTreeSet::new(),
        ingest: None,
        pulls: pulls_tx,
        drained,
        ingest_tx,
        board,
        members: BTreeSet::new(),
    };
    let task = tokio::spawn(leases.run(leave));
    Ok((
        LeaseHandle {
            task: Some(task),
            leave: Some(leave_tx),
        },
        LeaseWiring {
            pulls,
            drained: drained_tx,
            ingest,
        },
    ))
}

impl LeaseHandle {
    /// Hand back every lease and leave (after the hub stopped processing and acknowledged what
    /// it processed), so others take over at once instead of after the TTL.
    pub async fn leave(mut self) {
        if let Some(leave) = self.leave.take() {
            let _ = leave.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for LeaseHandle {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The next change of the bucket (`None`: the watch ended); never, without a watch.
async fn next_change(changes: &mut Option<kv::Watch>) -> Option<kv::Entry> {
    use futures::StreamExt;
    match changes {
        Some(watch) => match watch.next().await {
            Some(Ok(entry)) => Some(entry),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cluster: the watch of the leases failed; watching again");
                None
            }
            None => None,
        },
        None => std::future::pending().await,
    }
}

fn part_key(partition: u16) -> String {
    format!("{PART}{partition}")
}

/// This instance's order of preference for `partition` (rendezvous hashing: every instance
/// ranks the partitions differently, so simultaneous claims rarely collide, and a partition
/// tends to go back to the same instance).
fn preference(instance: &str, partition: u16) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(instance.as_bytes());
    h.update(&partition.to_le_bytes());
    h.digest()
}

/// How many partitions the member `me` aims at among `members` (sorted, unique): an equal
/// share, the first `partitions % members` by name taking one more.
pub fn share(partitions: u16, members: &[String], me: &str) -> usize {
    let count = members.len().max(1);
    let index = members.iter().position(|m| m == me).unwrap_or(count - 1);
    let base = usize::from(partitions) / count;
    base + usize::from(index < usize::from(partitions) % count)
}

impl Leases {
    async fn run(mut self, mut leave: oneshot::Receiver<()>) {
        let every = self.ttl / 3;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Joins, clean leaves and hand-backs are seen as they happen (expiries only at a tick:
        // the server removes expired entries without a marker).
        let mut changes = None;
        loop {
            if changes.is_none() {
                changes = match self.kv.watch(">").await {
                    Ok(watch) => Some(watch),
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster: cannot watch the leases; balancing at each tick only");
                        None
                    }
                };
            }
            tokio::select! {
                _ = &mut leave => break,
                _ = tick.tick() => self.tick().await,
                Some(partition) = self.drained.recv() => self.hand_back(partition).await,
                change = next_change(&mut changes) => match change {
                    Some(entry) => if self.moves(&entry) {
                        // Moves come in bursts (one leaving deletes all its keys): one balance.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        while let Some(Some(_)) = futures::FutureExt::now_or_never(next_change(&mut changes)) {}
                        self.rebalance().await;
                    },
                    None => changes = None,
                },
            }
        }
        self.leave_all().await;
    }

    /// Whether `entry` changes who should hold what: a member that joined or left, or a lease
    /// handed back. Renewals are not.
    fn moves(&self, entry: &kv::Entry) -> bool {
        let gone = matches!(entry.operation, kv::Operation::Delete | kv::Operation::Purge);
        match entry.key.strip_prefix(MEMBER) {
            Some(instance) => instance != self.me.instance && (gone || !self.members.contains(instance)),
            None => gone && (entry.key.starts_with(PART) || entry.key == INGEST),
        }
    }

    async fn tick(&mut self) {
        // Leases first: they expire, a late member key only delays a balance.
        self.renew().await;
        let member = serde_json::to_vec(&self.me).unwrap_or_default();
        if let Err(e) = self
            .kv
            .put(format!("{MEMBER}{}", self.me.instance), member.into())
            .await
        {
            tracing::warn!(error = %e, "cluster: cannot announce this instance");
        }
        self.rebalance().await;
    }

    /// Read the bucket, balance, and show the result.
    async fn rebalance(&mut self) {
        let mut seen = match self.look().await {
            Ok(seen) => seen,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: cannot read the leases");
                self.publish_board(None);
                return;
            }
        };
        self.members = seen.members.iter().map(|m| m.instance.clone()).collect();
        self.balance(&seen).await;
        seen.owners = self.owners_after(std::mem::take(&mut seen.owners));
        self.publish_board(Some(seen));
    }

    /// Renew every lease held; drop the ones lost or not renewed for half their life.
    async fn renew(&mut self) {
        let instance = bytes::Bytes::from(self.me.instance.clone());
        // All at once: one after the other, a slow server made the last renewals late enough
        // for their leases to expire while this instance still worked on the partitions.
        let (kv, ttl) = (&self.kv, self.ttl);
        let renewals = self.held.iter_mut().map(|(&partition, held)| {
            let instance = instance.clone();
            async move {
                (
                    partition,
                    renew_one(kv, &part_key(partition), &instance, held, ttl).await,
                )
            }
        });
        let lost: Vec<u16> = futures::future::join_all(renewals)
            .await
            .into_iter()
            .filter_map(|(partition, renewed)| (!renewed).then_some(partition))
            .collect();
        for partition in lost {
            self.lose(partition);
        }
        if let Some(held) = self.ingest.as_mut()
            && !renew_one(&self.kv, INGEST, &instance, held, self.ttl).await
        {
            self.ingest = None;
            self.ingest_tx.send_replace(None);
            self.board.lost += 1;
            metrics::counter!(m::CLUSTER_LEASES, "event" => "lost").increment(1);
        }
    }

    /// Live members, each partition's owner, and the ingest lease's holder.
    async fn look(&self) -> Result<Seen, String> {
        use futures::StreamExt;
        let keys: Vec<String> = self
            .kv
            .keys()
            .await
            .map_err(|e| e.to_string())?
            .filter_map(|k| async move { k.ok() })
            .collect()
            .await;
        let entries = futures::future::join_all(keys.iter().map(|k| self.kv.get(k.clone()))).await;
        let mut members = Vec::new();
        let mut owners = BTreeMap::new();
        let mut ingest = None;
        for (key, value) in keys.iter().zip(entries) {
            let Ok(Some(value)) = value else { continue };
            if key.starts_with(MEMBER) {
                match serde_json::from_slice::<Member>(&value) {
                    Ok(member) => members.push(member),
                    Err(e) => tracing::warn!(key, error = %e, "cluster: unreadable member record skipped"),
                }
            } else if let Some(n) = key.strip_prefix(PART).and_then(|n| n.parse::<u16>().ok()) {
                owners.insert(n, String::from_utf8_lossy(&value).into_owned());
            } else if key == INGEST {
                ingest = Some(String::from_utf8_lossy(&value).into_owned());
            }
        }
        members.sort_by(|a, b| a.instance.cmp(&b.instance));
        members.dedup_by(|a, b| a.instance == b.instance);
        Ok(Seen {
            members,
            owners,
            ingest,
        })
    }

    /// Claim free partitions up to this instance's share, hand back what is above it, and take
    /// the ingest lease when nobody holds it.
    async fn balance(&mut self, seen: &Seen) {
        let owners = &seen.owners;
        let names: Vec<String> = seen.members.iter().map(|m| m.instance.clone()).collect();
        let mut names = names;
        if !names.contains(&self.me.instance) {
            names.push(self.me.instance.clone());
            names.sort();
        }
        let aim = share(self.cluster.partitions, &names, &self.me.instance);
        let keeping = self.held.len() - self.releasing.len();
        let me = self.me.instance.clone();
        if keeping < aim {
            let mut free: Vec<u16> = (0..self.cluster.partitions)
                .filter(|p| !owners.contains_key(p) && !self.held.contains_key(p))
                .collect();
            free.sort_by_key(|&p| std::cmp::Reverse(preference(&me, p)));
            for partition in free.into_iter().take(aim - keeping) {
                self.claim(partition).await;
            }
        } else if keeping > aim {
            let mut mine: Vec<u16> = self
                .held
                .keys()
                .copied()
                .filter(|p| !self.releasing.contains(p))
                .collect();
            mine.sort_by_key(|&p| preference(&me, p));
            for partition in mine.into_iter().take(keeping - aim) {
                self.release(partition);
            }
        }
        if self.ingest.is_none()
            && seen.ingest.is_none()
            && let Ok(revision) = self.kv.create(INGEST, bytes::Bytes::from(me.clone())).await
        {
            tracing::info!(instance = me, "cluster: this instance partitions the input stream");
            self.ingest = Some(Held {
                revision,
                renewed: Instant::now(),
            });
            self.ingest_tx.send_replace(Some(revision));
            self.board.taken += 1;
            metrics::counter!(m::CLUSTER_LEASES, "event" => "taken").increment(1);
        }
    }

    async fn claim(&mut self, partition: u16) {
        let instance = bytes::Bytes::from(self.me.instance.clone());
        match self.kv.create(part_key(partition), instance).await {
            Ok(revision) => {
                tracing::info!(partition, revision, "cluster: partition taken");
                self.held.insert(
                    partition,
                    Held {
                        revision,
                        renewed: Instant::now(),
                    },
                );
                // Processed here once the reader restored its state (see `Cluster::adopt`).
                self.pulls.send_modify(|pulls| {
                    pulls.insert(partition, revision);
                });
                self.board.taken += 1;
                metrics::counter!(m::CLUSTER_LEASES, "event" => "taken").increment(1);
            }
            // Someone else was quicker.
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => tracing::warn!(partition, error = %e, "cluster: cannot claim a partition"),
        }
    }

    /// Stop pulling `partition`; its lease goes once the reader reports it drained.
    fn release(&mut self, partition: u16) {
        tracing::info!(partition, "cluster: handing a partition back");
        self.releasing.insert(partition);
        self.pulls.send_modify(|pulls| {
            pulls.remove(&partition);
        });
    }

    /// The reader acknowledged everything of a partition it stopped pulling: delete the lease.
    async fn hand_back(&mut self, partition: u16) {
        if !self.releasing.remove(&partition) {
            return;
        }
        self.cluster.set_owned(partition, false);
        if let Some(held) = self.held.remove(&partition) {
            let key = part_key(partition);
            if let Err(e) = self.kv.delete_expect_revision(&key, Some(held.revision)).await {
                tracing::warn!(partition, error = %e, "cluster: lease not deleted; it expires instead");
            }
            self.board.released += 1;
            metrics::counter!(m::CLUSTER_LEASES, "event" => "released").increment(1);
        }
    }

    /// A lease is gone: stop touching the partition at once.
    fn lose(&mut self, partition: u16) {
        tracing::warn!(
            partition,
            "cluster: partition lease lost; it is no longer processed here"
        );
        self.cluster.set_owned(partition, false);
        self.held.remove(&partition);
        self.releasing.remove(&partition);
        self.pulls.send_modify(|pulls| {
            pulls.remove(&partition);
        });
        self.board.lost += 1;
        metrics::counter!(m::CLUSTER_LEASES, "event" => "lost").increment(1);
    }

    /// Leaving: every lease is deleted (the hub has stopped processing and acknowledged), and
    /// the member key with them.
    async fn leave_all(&mut self) {
        for (partition, held) in std::mem::take(&mut self.held) {
            self.cluster.set_owned(partition, false);
            let _ = self
                .kv
                .delete_expect_revision(part_key(partition), Some(held.revision))
                .await;
        }
        if let Some(held) = self.ingest.take() {
            let _ = self.kv.delete_expect_revision(INGEST, Some(held.revision)).await;
        }
        let _ = self.kv.delete(format!("{MEMBER}{}", self.me.instance)).await;
        tracing::info!(instance = self.me.instance, "cluster: left");
    }

    /// The owners as seen, corrected by what this instance did since.
    fn owners_after(&self, mut owners: BTreeMap<u16, String>) -> BTreeMap<u16, String> {
        for partition in self.held.keys() {
            owners.insert(*partition, self.me.instance.clone());
        }
        owners.retain(|p, who| *who != self.me.instance || self.held.contains_key(p));
        owners
    }

    fn publish_board(&mut self, seen: Option<Seen>) {
        if let Some(Seen {
            members,
            owners,
            ingest,
        }) = seen
        {
            self.board.members = members;
            self.board.owners = owners
                .into_iter()
                .map(|(partition, instance)| Owner { partition, instance })
                .collect();
            self.board.ingest = if self.ingest.is_some() {
                Some(self.me.instance.clone())
            } else {
                ingest
            };
        }
        // Held and processed; held but still being restored.
        let cluster = &self.cluster;
        self.board.owned = self.held.keys().copied().filter(|&p| cluster.owns(p)).collect();
        self.board.restoring = self
            .held
            .keys()
            .copied()
            .filter(|&p| !cluster.owns(p) && !self.releasing.contains(&p))
            .collect();
        self.board.releasing = self.releasing.iter().copied().collect();
        metrics::gauge!(m::CLUSTER_OWNED).set(self.board.owned.len() as f64);
        metrics::gauge!(m::CLUSTER_MEMBERS).set(self.board.members.len() as f64);
        self.cluster.publish(self.board.clone());
    }
}

/// Renew one lease; false when it is lost (someone else's revision, or not renewed for half
/// its life).
async fn renew_one(kv: &kv::Store, key: &str, instance: &bytes::Bytes, held: &mut Held, ttl: Duration) -> bool {
    match kv.update(key, instance.clone(), held.revision).await {
        Ok(revision) => {
            held.revision = revision;
            held.renewed = Instant::now();
            true
        }
        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
            tracing::warn!(key, "cluster: lease taken by another instance");
            false
        }
        Err(e) => {
            let alive = held.renewed.elapsed() < ttl / 2;
            tracing::warn!(key, error = %e, alive, "cluster: lease not renewed");
            alive
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("i{i}")).collect()
    }

    #[test]
    fn shares_add_up_to_every_partition_and_differ_by_at_most_one() {
        for partitions in [1u16, 7, 32, 100] {
            for count in 1..=9 {
                let members = names(count);
                let shares: Vec<usize> = members.iter().map(|m| share(partitions, &members, m)).collect();
                assert_eq!(shares.iter().sum::<usize>(), usize::from(partitions));
                let (min, max) = (
                    shares.iter().min().expect("shares"),
                    shares.iter().max().expect("shares"),
                );
                assert!(max - min <= 1, "{partitions} over {count}: {shares:?}");
            }
        }
    }

    #[test]
    fn preferences_differ_between_instances() {
        let a: Vec<u64> = (0..8).map(|p| preference("a", p)).collect();
        let b: Vec<u64> = (0..8).map(|p| preference("b", p)).collect();
        assert_ne!(a, b);
    }
}
