//! The `checkpoints` tree: per source of inputs and partition of the actors, the stream
//! sequence of the last input applied, committed in the same transaction as the state it
//! produced; and the identity of each stream those sequences count in (a stream deleted and
//! created again starts at 1).
//!
//! A *source* is a stream the shards' inputs come from, each counting its own sequences: the
//! input stream (or, in a cluster, the partition streams: one per partition, so the partition
//! tells them apart), and each tenant's own stream (see `tenant::on_own_subject`).
//!
//! Keys, each record MessagePack, positional, tagged with its format:
//! - `s` ‖ shard count (u16, big-endian) ‖ shard (u16) → `[1, [[partition, seq], …]]`: one
//!   record per shard holding every partition it owns, for the input stream;
//! - `t` ‖ shard count ‖ shard ‖ tenant → the same, for that tenant's own stream;
//! - `stream` → `[1, name, created]`, the input stream's identity; `i` ‖ tenant, its stream's.
//!
//! One key per shard rather than one per partition because sled applies a commit under a lock
//! that every read of every shard waits for, for a time that grows with the commit's keys: with
//! a key per partition, a commit at 10k inputs/s carried ~250 more keys per shard, and the
//! event→action p99 showed it.
//!
//! Records of another layout (another shard count, or the first format's `p` ‖ partition →
//! `[1, seq]`) are merged into the current one at start, before any shard runs. Records of a
//! tenant no longer declared are left as they are, for when it comes back.

use crate::limits::PARTITIONS;
use crate::state::unreadable;

/// The tree's name.
pub const TREE: &str = "checkpoints";
const FORMAT: u8 = 1;
const STREAM_KEY: &[u8] = b"stream";
/// Prefix of a shard's record.
const SHARD_PREFIX: u8 = b's';
/// Prefix of a shard's record of a tenant's own stream.
const TENANT_PREFIX: u8 = b't';
/// Prefix of a tenant stream's identity.
const IDENTITY_PREFIX: u8 = b'i';
/// Prefix of the first format's record of one partition.
const PARTITION_PREFIX: u8 = b'p';

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoints in sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("checkpoint not encodable: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

/// The key of a shard's record of the input stream (`tenant` `None`) or of a tenant's stream.
fn record_key(shards: usize, shard: usize, tenant: Option<&str>) -> Vec<u8> {
    let prefix = match tenant {
        None => SHARD_PREFIX,
        Some(_) => TENANT_PREFIX,
    };
    let mut key = vec![prefix];
    key.extend_from_slice(&(shards as u16).to_be_bytes());
    key.extend_from_slice(&(shard as u16).to_be_bytes());
    key.extend_from_slice(tenant.unwrap_or_default().as_bytes());
    key
}

/// The key of a stream's identity.
fn identity_key(tenant: Option<&str>) -> Vec<u8> {
    match tenant {
        None => STREAM_KEY.to_vec(),
        Some(t) => [&[IDENTITY_PREFIX], t.as_bytes()].concat(),
    }
}

/// The source a stored key counts for, if it is a record: `Some(None)` for the input stream.
fn source_of(key: &[u8]) -> Option<Option<&str>> {
    match key.first() {
        Some(&SHARD_PREFIX) if key.len() == 5 => Some(None),
        Some(&PARTITION_PREFIX) => Some(None),
        Some(&TENANT_PREFIX) if key.len() > 5 => std::str::from_utf8(&key[5..]).ok().map(Some),
        _ => None,
    }
}

/// A shard's record: its partitions' sequences, those above 0, in partition order.
fn encode_record(applied: &[(u16, u64)]) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec(&(FORMAT, applied))
}

/// The elements of a stored positional record after its format tag, whatever later formats add
/// after the ones read.
fn fields(mut bytes: &[u8]) -> Result<Vec<rmpv::Value>, String> {
    let value = rmpv::decode::read_value(&mut bytes).map_err(|e| e.to_string())?;
    match value {
        rmpv::Value::Array(mut items) if items.first().is_some_and(|f| f.as_u64().is_some()) => {
            items.remove(0);
            Ok(items)
        }
        other => Err(format!("not a checkpoint record: {other}")),
    }
}

/// A shard's record: its `(partition, seq)` pairs.
fn decode_record(bytes: &[u8]) -> Result<Vec<(u16, u64)>, String> {
    let fields = fields(bytes)?;
    let Some(rmpv::Value::Array(pairs)) = fields.first() else {
        return Err("a shard's checkpoints without their list".into());
    };
    pairs
        .iter()
        .map(|pair| match pair.as_array().map(Vec::as_slice) {
            Some([partition, seq, ..]) => {
                let partition = partition.as_u64().and_then(|p| u16::try_from(p).ok());
                match (partition, seq.as_u64()) {
                    (Some(p), Some(seq)) if p < PARTITIONS => Ok((p, seq)),
                    _ => Err(format!("not a partition's checkpoint: {pair}")),
                }
            }
            _ => Err(format!("not a partition's checkpoint: {pair}")),
        })
        .collect()
}

/// The sequence of a first-format record of one partition.
fn decode_seq(bytes: &[u8]) -> Result<u64, String> {
    match fields(bytes)?.first() {
        Some(seq) => seq.as_u64().ok_or_else(|| format!("not a sequence: {seq}")),
        None => Err("a checkpoint without its sequence".into()),
    }
}

/// Make `name`, created at `created`, the stream the checkpoints of `tenant`'s own stream
/// (`None`: of the input stream) count in. A different stream (or one created anew) starts its
/// sequences again, so that source's old checkpoints are cleared; true when that happened.
pub fn adopt_stream(db: &sled::Db, tenant: Option<&str>, name: &str, created: &str) -> Result<bool, CheckpointError> {
    let tree = db.open_tree(TREE)?;
    let identity = rmp_serde::to_vec(&(FORMAT, name, created))?;
    let key = identity_key(tenant);
    let known = tree.get(&key)?;
    if known.as_deref() == Some(identity.as_slice()) {
        return Ok(false);
    }
    let mut checkpoints = Vec::new();
    for stored in tree.iter().keys() {
        let stored = stored?;
        if source_of(&stored) == Some(tenant) {
            checkpoints.push(stored);
        }
    }
    if !checkpoints.is_empty() {
        tracing::warn!(
            stream = name,
            created,
            "the input stream is new: checkpoints of the previous one are cleared"
        );
    }
    let mut batch = sled::Batch::default();
    for key in &checkpoints {
        batch.remove(key);
    }
    batch.insert(key, identity);
    tree.apply_batch(batch)?;
    tree.flush()?;
    Ok(!checkpoints.is_empty())
}

/// One source's checkpoints in one shard.
struct Source {
    key: Vec<u8>,
    /// Indexed by partition; 0 for none applied (or another shard's partition).
    applied: Vec<u64>,
    dirty: bool,
}

impl Source {
    fn pairs(&self) -> Vec<(u16, u64)> {
        (0..PARTITIONS)
            .zip(&self.applied)
            .filter(|&(_, &seq)| seq > 0)
            .map(|(p, &seq)| (p, seq))
            .collect()
    }
}

/// One shard's checkpoints: the last input applied of each partition it owns, per source.
pub struct Checkpoints {
    tree: sled::Tree,
    /// Indexed by source: 0 for the input stream (or a cluster's partition streams), then the
    /// tenants' own streams in the order given at load.
    sources: Vec<Source>,
    /// Partitions of the input stream whose checkpoint moved since the last commit, once each
    /// (for a cluster's changelog), with a flag per partition.
    changed: Vec<u16>,
    listed: Vec<bool>,
}

impl Checkpoints {
    /// Every shard's checkpoints of the input stream and of `tenant_streams` (sources 1, 2…),
    /// `shard_of` saying which shard owns a partition. Records of another layout are rewritten
    /// into this one (in one batch: a crash keeps either).
    pub fn load(
        db: &sled::Db,
        shards: usize,
        shard_of: impl Fn(u16) -> usize,
        tenant_streams: &[String],
    ) -> Result<Vec<Checkpoints>, CheckpointError> {
        let tree = db.open_tree(TREE)?;
        let names: Vec<Option<&str>> = std::iter::once(None)
            .chain(tenant_streams.iter().map(|t| Some(t.as_str())))
            .collect();
        let mut applied: Vec<Vec<u64>> = names.iter().map(|_| vec![0u64; usize::from(PARTITIONS)]).collect();
        let ours: Vec<Vec<u8>> = (0..shards)
            .flat_map(|shard| names.iter().map(move |&n| record_key(shards, shard, n)))
            .collect();
        let mut outdated = Vec::new();
        for item in tree.iter() {
            let (key, value) = item?;
            let Some(source) = source_of(&key) else {
                if key.as_ref() == STREAM_KEY || key.first() == Some(&IDENTITY_PREFIX) {
                    continue;
                }
                unreadable::keep_aside(db, TREE, &key, &value, &"not a checkpoint key");
                outdated.push(key);
                continue;
            };
            let Some(slots) = names.iter().position(|&n| n == source).map(|i| &mut applied[i]) else {
                // A tenant no longer declared: kept for when it comes back.
                continue;
            };
            let mut merge = |partition: u16, seq: u64| {
                let slot = &mut slots[usize::from(partition)];
                *slot = (*slot).max(seq);
            };
            let read = match key.first() {
                Some(&PARTITION_PREFIX) => match key[1..] {
                    [hi, lo] if u16::from_be_bytes([hi, lo]) < PARTITIONS => {
                        decode_seq(&value).map(|seq| merge(u16::from_be_bytes([hi, lo]), seq))
                    }
                    _ => Err("a partition outside the partitions".into()),
                },
                _ => decode_record(&value).map(|pairs| pairs.into_iter().for_each(|(p, seq)| merge(p, seq))),
            };
            if let Err(e) = read {
                // Inputs of its partitions may then be applied again, never skipped unapplied.
                unreadable::keep_aside(db, TREE, &key, &value, &e);
            }
            if !ours.iter().any(|k| k.as_slice() == key.as_ref()) {
                outdated.push(key);
            }
        }
        let mut checkpoints: Vec<Checkpoints> = (0..shards)
            .map(|shard| Checkpoints {
                tree: tree.clone(),
                sources: names
                    .iter()
                    .map(|&n| Source {
                        key: record_key(shards, shard, n),
                        applied: vec![0; usize::from(PARTITIONS)],
                        dirty: false,
                    })
                    .collect(),
                changed: Vec::new(),
                listed: vec![false; usize::from(PARTITIONS)],
            })
            .collect();
        for (source, slots) in applied.iter().enumerate() {
            for (partition, &seq) in (0..PARTITIONS).zip(slots) {
                if let Some(shard) = checkpoints.get_mut(shard_of(partition)) {
                    shard.sources[source].applied[usize::from(partition)] = seq;
                }
            }
        }
        if !outdated.is_empty() {
            let mut batch = sled::Batch::default();
            for key in &outdated {
                batch.remove(key);
            }
            for shard in &checkpoints {
                for source in &shard.sources {
                    batch.insert(source.key.as_slice(), encode_record(&source.pairs())?);
                }
            }
            tree.apply_batch(batch)?;
            tracing::info!(
                records = outdated.len(),
                shards,
                "checkpoints rewritten for this shard count"
            );
        }
        Ok(checkpoints)
    }

    /// Whether the input `seq` of `source` (see [`Checkpoints::load`]) and `partition` is new
    /// (and so to be applied); records it.
    pub fn admit(&mut self, source: u16, partition: u16, seq: u64) -> bool {
        let Some(source) = self.sources.get_mut(usize::from(source)) else {
            return true;
        };
        let Some(applied) = source.applied.get_mut(usize::from(partition)) else {
            return true;
        };
        if seq <= *applied {
            return false;
        }
        *applied = seq;
        source.dirty = true;
        if let Some(listed) = self.listed.get_mut(usize::from(partition))
            && !*listed
        {
            *listed = true;
            self.changed.push(partition);
        }
        true
    }

    /// The input stream's checkpoints moved since the last call, as changes for a cluster's
    /// changelog (key: the partition, value: the sequence, both big-endian).
    pub fn log_changes(&mut self, cluster: &crate::cluster::Cluster, out: &mut Vec<crate::cluster::changelog::Change>) {
        let tree: std::sync::Arc<str> = crate::cluster::changelog::CHECKPOINTS.into();
        for partition in self.changed.drain(..) {
            let p = usize::from(partition);
            if let Some(listed) = self.listed.get_mut(p) {
                *listed = false;
            }
            out.push(crate::cluster::changelog::Change {
                partition: partition % cluster.partitions,
                tree: tree.clone(),
                key: partition.to_be_bytes().to_vec(),
                value: self.sources[0].applied.get(p).map(|seq| seq.to_be_bytes().to_vec()),
            });
        }
    }

    /// Set a partition's checkpoint as restored from a cluster's changelog (0: none).
    pub fn restore(&mut self, partition: u16, seq: u64) {
        let source = &mut self.sources[0];
        if let Some(applied) = source.applied.get_mut(usize::from(partition)) {
            *applied = seq;
            source.dirty = true;
        }
    }

    /// The records that changed since the last commit, as a batch for them.
    pub fn take_commit(&mut self) -> Option<(sled::Tree, sled::Batch)> {
        let mut batch = sled::Batch::default();
        let mut any = false;
        for source in self.sources.iter_mut().filter(|s| s.dirty) {
            source.dirty = false;
            match encode_record(&source.pairs()) {
                Ok(value) => {
                    batch.insert(source.key.as_slice(), value);
                    any = true;
                }
                // Not reachable for integers; the inputs would then be applied again after a crash.
                Err(e) => tracing::error!(error = %e, "checkpoints not encodable"),
            }
        }
        any.then(|| (self.tree.clone(), batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn temporary() -> sled::Db {
        sled::Config::new().temporary(true).open().expect("sled")
    }

    fn by_modulo(shards: usize) -> impl Fn(u16) -> usize {
        move |p| usize::from(p) % shards
    }

    fn commit(cp: &mut Checkpoints) {
        let (tree, batch) = cp.take_commit().expect("dirty");
        tree.apply_batch(batch).expect("apply");
    }

    fn pairs() -> impl Strategy<Value = Vec<(u16, u64)>> {
        proptest::collection::vec((0..PARTITIONS, any::<u64>()), 0..64)
    }

    proptest! {
        #[test]
        fn a_shards_record_reads_back_as_written(pairs in pairs()) {
            let bytes = encode_record(&pairs).expect("encode");
            prop_assert_eq!(decode_record(&bytes).expect("decode"), pairs);
        }

        #[test]
        fn a_shards_record_with_fields_added_later_still_reads(pairs in pairs(), extra in any::<u32>()) {
            let newer: Vec<(u16, u64, u32)> = pairs.iter().map(|&(p, s)| (p, s, extra)).collect();
            let bytes = rmp_serde::to_vec(&(FORMAT + 1, &newer, extra)).expect("encode");
            prop_assert_eq!(decode_record(&bytes).expect("decode"), pairs);
        }

        #[test]
        fn a_first_format_checkpoint_reads(seq in any::<u64>(), extra in any::<u32>()) {
            prop_assert_eq!(decode_seq(&rmp_serde::to_vec(&(FORMAT, seq)).expect("encode")).expect("decode"), seq);
            let newer = rmp_serde::to_vec(&(FORMAT + 1, seq, extra)).expect("encode");
            prop_assert_eq!(decode_seq(&newer).expect("decode"), seq);
        }
    }

    #[test]
    fn inputs_at_or_below_the_checkpoint_are_skipped_after_a_restart() {
        let db = temporary();
        let mut cp = Checkpoints::load(&db, 1, by_modulo(1), &[]).expect("load").remove(0);
        assert!(cp.admit(0, 3, 10));
        assert!(cp.admit(0, 3, 12));
        assert!(!cp.admit(0, 3, 11), "below the checkpoint");
        assert!(cp.admit(0, 4, 11), "another partition counts apart");
        commit(&mut cp);
        assert!(cp.take_commit().is_none(), "nothing new to commit");

        let mut again = Checkpoints::load(&db, 1, by_modulo(1), &[]).expect("reload").remove(0);
        assert!(!again.admit(0, 3, 12));
        assert!(again.admit(0, 3, 13));
        assert!(!again.admit(0, 4, 5));
    }

    #[test]
    fn a_commit_writes_one_key_per_shard() {
        let db = temporary();
        let mut shards = Checkpoints::load(&db, 2, by_modulo(2), &[]).expect("load");
        for p in (0..100).step_by(2) {
            assert!(shards[0].admit(0, p, u64::from(p) + 1));
        }
        let (_, batch) = shards[0].take_commit().expect("dirty");
        let tree = db.open_tree(TREE).expect("tree");
        tree.apply_batch(batch).expect("apply");
        assert_eq!(tree.len(), 1);
    }

    #[test]
    fn checkpoints_follow_their_partitions_when_the_shard_count_changes() {
        let db = temporary();
        let mut two = Checkpoints::load(&db, 2, by_modulo(2), &[]).expect("two shards");
        for p in 0..10u16 {
            assert!(two[usize::from(p) % 2].admit(0, p, 100 + u64::from(p)));
        }
        two.iter_mut().for_each(commit);

        let mut three = Checkpoints::load(&db, 3, by_modulo(3), &[]).expect("three shards");
        for p in 0..10u16 {
            let shard = &mut three[usize::from(p) % 3];
            assert!(!shard.admit(0, p, 100 + u64::from(p)), "partition {p} applied before");
            assert!(shard.admit(0, p, 200 + u64::from(p)));
        }
        three.iter_mut().for_each(commit);

        let tree = db.open_tree(TREE).expect("tree");
        let keys: Vec<Vec<u8>> = tree.iter().keys().map(|k| k.expect("key").to_vec()).collect();
        assert_eq!(keys, (0..3).map(|i| record_key(3, i, None)).collect::<Vec<_>>());
        let mut one = Checkpoints::load(&db, 1, by_modulo(1), &[])
            .expect("one shard")
            .remove(0);
        for p in 0..10u16 {
            assert!(!one.admit(0, p, 200 + u64::from(p)));
        }
    }

    #[test]
    fn first_format_checkpoints_are_merged_into_the_shards_records() {
        let db = temporary();
        let tree = db.open_tree(TREE).expect("tree");
        for (p, seq) in [(7u16, 70u64), (8, 80)] {
            let [hi, lo] = p.to_be_bytes();
            let value = rmp_serde::to_vec(&(FORMAT, seq)).expect("encode");
            tree.insert([PARTITION_PREFIX, hi, lo], value).expect("insert");
        }
        let mut shards = Checkpoints::load(&db, 2, by_modulo(2), &[]).expect("load");
        assert!(!shards[1].admit(0, 7, 70));
        assert!(!shards[0].admit(0, 8, 80));
        assert!(shards[0].admit(0, 8, 81));
        assert_eq!(tree.len(), 2, "one record per shard, the old keys gone");
    }

    #[test]
    fn an_unreadable_record_is_kept_aside_and_the_others_still_count() {
        let db = temporary();
        let mut shards = Checkpoints::load(&db, 2, by_modulo(2), &[]).expect("load");
        assert!(shards[1].admit(0, 5, 50));
        commit(&mut shards[1]);
        let tree = db.open_tree(TREE).expect("tree");
        tree.insert(record_key(2, 0, None), &b"\xc1 not msgpack"[..])
            .expect("insert");

        let mut again = Checkpoints::load(&db, 2, by_modulo(2), &[]).expect("reload");
        assert!(!again[1].admit(0, 5, 50));
        assert!(
            again[0].admit(0, 4, 1),
            "its partitions are applied again, never skipped"
        );
        let kept = unreadable::list(&db).expect("kept aside");
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].0, TREE);
    }

    #[test]
    fn a_new_stream_clears_the_checkpoints() {
        let db = temporary();
        assert!(!adopt_stream(&db, None, "IN", "t1").expect("adopt"));
        let mut cp = Checkpoints::load(&db, 1, by_modulo(1), &[]).expect("load").remove(0);
        cp.admit(0, 1, 100);
        commit(&mut cp);
        let reload = || Checkpoints::load(&db, 1, by_modulo(1), &[]).expect("load").remove(0);
        assert!(!adopt_stream(&db, None, "IN", "t1").expect("same stream"));
        assert!(!reload().admit(0, 1, 100));
        assert!(adopt_stream(&db, None, "IN", "t2").expect("recreated"));
        assert!(reload().admit(0, 1, 1));
    }

    #[test]
    fn each_tenant_stream_counts_its_own_sequences() {
        let db = temporary();
        let tenants = ["acme".to_owned(), "globex".to_owned()];
        assert!(!adopt_stream(&db, Some("acme"), "IN_acme", "t1").expect("adopt"));
        let load = |shards| Checkpoints::load(&db, shards, by_modulo(shards), &tenants).expect("load");
        let mut one = load(1).remove(0);
        assert!(one.admit(0, 3, 100));
        assert!(one.admit(1, 3, 5), "acme's stream counts apart from the input stream");
        assert!(one.admit(2, 3, 7));
        assert!(!one.admit(1, 3, 5));
        commit(&mut one);

        let mut two = load(2);
        let shard = &mut two[1];
        assert!(!shard.admit(0, 3, 100));
        assert!(!shard.admit(1, 3, 5));
        assert!(shard.admit(1, 3, 6));
        assert!(!shard.admit(2, 3, 7));

        // acme's stream made anew: only its checkpoints go.
        assert!(!adopt_stream(&db, Some("acme"), "IN_acme", "t1").expect("the same stream"));
        assert!(adopt_stream(&db, Some("acme"), "IN_acme", "t2").expect("recreated"));
        let mut again = load(2);
        assert!(again[1].admit(1, 3, 1));
        assert!(!again[1].admit(2, 3, 7));
        assert!(!again[1].admit(0, 3, 100));
        commit(&mut again[1]);

        // A tenant no longer declared keeps its records for when it comes back.
        let mut without = Checkpoints::load(&db, 1, by_modulo(1), &tenants[1..])
            .expect("load")
            .remove(0);
        assert!(!without.admit(1, 3, 7), "globex is now source 1");
        let tree = db.open_tree(TREE).expect("tree");
        assert!(tree.iter().keys().any(|k| k.expect("key").ends_with(b"acme")));
    }
}
