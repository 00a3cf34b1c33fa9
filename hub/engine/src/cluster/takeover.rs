//! Taking a partition over: its state is read back from the changelog and put where this
//! instance keeps state — sled for plugin state and action ledgers (through the committer, so it
//! lands after anything this instance still had queued for those actors), the shards for timers
//! and input checkpoints — before the partition's inputs are read.

use super::changelog::{CHECKPOINTS, Changelog, ChangelogError, PROFILES, Restored, TIMERS};
use super::streams::PartitionStreams;
use super::{Cluster, Restore};
use crate::router::{Adopt, RestoredTimer, Router, ShardMsg};
use crate::state::CommitQueue;
use crate::state::keys;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Everything a takeover touches.
pub struct Takeover {
    pub changelog: Arc<Changelog>,
    /// The partitions' input streams: the checkpoints count in their sequences.
    pub streams: Arc<PartitionStreams>,
    pub commits: CommitQueue,
    pub db: sled::Db,
    pub profiles: crate::state::Profiles,
    pub router: Router,
    pub cluster: Arc<Cluster>,
    /// Where tenants' stored state is counted: the partition's stale copy goes, its restored
    /// state comes.
    pub quotas: Arc<crate::quota::Quotas>,
}

/// Whether a tree's records are restored into sled as they are: plugin state and the arbiter's
/// ledgers. (Nothing else in the changelog is written to sled as it is: it cannot name another
/// tree.)
fn restored_as_is(tree: &str) -> bool {
    crate::state::holds_actor_state(tree)
}

impl Takeover {
    /// Restore `partition` and start processing it here under lease `revision`.
    pub async fn run(&self, partition: u16, revision: u64) -> Result<(), ChangelogError> {
        let mut restored = self.changelog.restore(partition).await?;
        let fail = |detail: String| ChangelogError::Read { partition, detail };
        let created = self.streams.created(partition).unwrap_or_default();
        let started_over = restored.count_in_stream(partition, created);
        if started_over > 0 {
            tracing::warn!(
                partition,
                checkpoints = started_over,
                "the partition's stream is not the one its checkpoints counted in (created anew, or an earlier version's); they start over"
            );
        }
        let batches = {
            let (db, cluster, quotas) = (self.db.clone(), self.cluster.clone(), self.quotas.clone());
            let entries: Vec<(Arc<str>, Vec<u8>, Vec<u8>)> = restored
                .entries
                .iter()
                .filter(|((tree, _), _)| restored_as_is(tree))
                .map(|((tree, key), value)| (tree.clone(), key.clone(), value.clone()))
                .collect();
            tokio::task::spawn_blocking(move || reset_trees(&db, &cluster, &quotas, partition, entries))
                .await
                .map_err(|e| fail(e.to_string()))?
                .map_err(|e| fail(e.to_string()))?
        };
        self.commits.apply_async(batches).await;
        let profiles: Vec<(Vec<u8>, Vec<u8>)> = restored
            .entries
            .iter()
            .filter(|((tree, _), _)| &**tree == PROFILES)
            .map(|((_, actor), stored)| (actor.clone(), stored.clone()))
            .collect();
        let (store, cluster) = (self.profiles.clone(), self.cluster.clone());
        tokio::task::spawn_blocking(move || store.restore(|actor| cluster.partition_of(actor) == partition, profiles))
            .await
            .map_err(|e| fail(e.to_string()))?
            .map_err(|e| fail(e.to_string()))?;
        self.hand_to_shards(partition, &restored).await;
        self.cluster.set_revision(partition, revision);
        // Log entries newer than the view are written to it again, under this lease (with the
        // checkpoints started over, if they were).
        if !restored.replayed.is_empty() {
            self.changelog.write(&restored.replayed, true).await?;
        }
        self.cluster.set_owned(partition, true);
        let restore = Restore {
            partition,
            keys: restored.entries.len() as u64,
            records: restored.records,
            ms: restored.took.as_millis() as u64,
        };
        tracing::info!(
            partition,
            revision,
            keys = restore.keys,
            records = restore.records,
            took = ?restored.took,
            "partition state restored"
        );
        metrics::histogram!(crate::metrics::CLUSTER_RESTORE_SECONDS).record(restored.took.as_secs_f64());
        self.cluster.restored(restore);
        Ok(())
    }

    /// Each shard forgets what it cached of the partition's actors, and takes their timers and
    /// its checkpoints of the partition.
    async fn hand_to_shards(&self, partition: u16, restored: &Restored) {
        let shards = self.router.shard_count();
        let mut timers: Vec<Vec<RestoredTimer>> = (0..shards).map(|_| Vec::new()).collect();
        for ((_, key), value) in restored.entries.iter().filter(|((tree, _), _)| &**tree == TIMERS) {
            match (keys::timer_actor(key), keys::split_timer_value(value)) {
                (Some(actor), Some((due, payload))) => {
                    timers[self.router.shard_of(actor)].push((Arc::from(key.as_slice()), due, payload.to_vec()));
                }
                _ => tracing::error!(partition, "an unreadable timer in the changelog; skipped"),
            }
        }
        let mut checkpoints: Vec<Vec<(u16, u64)>> = (0..shards).map(|_| Vec::new()).collect();
        for fine in (0..crate::limits::PARTITIONS).filter(|f| f % self.cluster.partitions == partition) {
            let key = (Arc::<str>::from(CHECKPOINTS), fine.to_be_bytes().to_vec());
            let seq = restored
                .entries
                .get(&key)
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map_or(0, u64::from_be_bytes);
            checkpoints[self.router.shard_of_partition(fine)].push((fine, seq));
        }
        let mut done = Vec::new();
        for (shard, (timers, checkpoints)) in timers.into_iter().zip(checkpoints).enumerate() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let adopt = Adopt {
                partition,
                timers,
                checkpoints,
                done: tx,
            };
            if self.router.send_to(shard, ShardMsg::Adopt(adopt)).await.is_ok() {
                done.push(rx);
            }
        }
        for rx in done {
            let _ = rx.await;
        }
    }
}

/// Batches that remove from every plugin-state and ledger tree the keys of the partition's
/// actors, and write the restored ones; the tenants' stored state is counted for what they
/// will hold.
fn reset_trees(
    db: &sled::Db,
    cluster: &Cluster,
    quotas: &crate::quota::Quotas,
    partition: u16,
    entries: Vec<(Arc<str>, Vec<u8>, Vec<u8>)>,
) -> Result<Vec<(sled::Tree, sled::Batch)>, sled::Error> {
    let mut batches: BTreeMap<String, sled::Batch> = BTreeMap::new();
    for name in db.tree_names() {
        let name = String::from_utf8_lossy(&name).into_owned();
        if !restored_as_is(&name) {
            continue;
        }
        let tree = db.open_tree(&name)?;
        let batch = batches.entry(name).or_default();
        for entry in tree.iter() {
            let (key, value) = entry?;
            if keys::state_actor(&key).is_some_and(|actor| cluster.partition_of(actor) == partition) {
                quotas.count_state_entry(&key, value.len(), false);
                batch.remove(key);
            }
        }
    }
    for (tree, key, value) in entries {
        quotas.count_state_entry(&key, value.len(), true);
        batches.entry(tree.to_string()).or_default().insert(key, value);
    }
    batches
        .into_iter()
        .map(|(name, batch)| Ok((db.open_tree(name)?, batch)))
        .collect()
}
