//! The `checkpoints` tree: per partition of the actors, the stream sequence of the last input
//! applied, committed in the same transaction as the state it produced; and the identity of the
//! stream those sequences count in (a stream deleted and created again starts at 1).
//!
//! Keys: `s` ‖ shard count (u16, big-endian) ‖ shard (u16) → `[1, [[partition, seq], …]]`, one
//! record per shard holding every partition it owns; `stream` → `[1, name, created]`
//! (MessagePack, positional, tagged with their format). One key per shard rather than one per
//! partition because sled applies a commit under a lock that every read of every shard waits
//! for, for a time that grows with the commit's keys: with a key per partition, a commit at
//! 10k inputs/s carried ~250 more keys per shard, and the event→action p99 showed it.
//!
//! Records of another layout (another shard count, or the first format's `p` ‖ partition →
//! `[1, seq]`) are merged into the current one at start, before any shard runs.

use crate::limits::PARTITIONS;
use crate::state::unreadable;

/// The tree's name.
pub const TREE: &str = "checkpoints";
const FORMAT: u8 = 1;
const STREAM_KEY: &[u8] = b"stream";
/// Prefix of a shard's record.
const SHARD_PREFIX: u8 = b's';
/// Prefix of the first format's record of one partition.
const PARTITION_PREFIX: u8 = b'p';

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoints in sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("checkpoint not encodable: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

fn shard_key(shards: usize, shard: usize) -> [u8; 5] {
    let [s1, s0] = (shards as u16).to_be_bytes();
    let [i1, i0] = (shard as u16).to_be_bytes();
    [SHARD_PREFIX, s1, s0, i1, i0]
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

/// Make `name`, created at `created`, the stream the checkpoints count in. A different stream
/// (or one created anew) starts its sequences again, so the old checkpoints are cleared; true
/// when that happened.
pub fn adopt_stream(db: &sled::Db, name: &str, created: &str) -> Result<bool, CheckpointError> {
    let tree = db.open_tree(TREE)?;
    let identity = rmp_serde::to_vec(&(FORMAT, name, created))?;
    let known = tree.get(STREAM_KEY)?;
    if known.as_deref() == Some(identity.as_slice()) {
        return Ok(false);
    }
    let checkpoints: Vec<sled::IVec> = tree
        .iter()
        .keys()
        .filter(|key| key.as_ref().map_or(true, |k| k.as_ref() != STREAM_KEY))
        .collect::<Result<_, _>>()?;
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
    batch.insert(STREAM_KEY, identity);
    tree.apply_batch(batch)?;
    tree.flush()?;
    Ok(!checkpoints.is_empty())
}

/// One shard's checkpoints: the last input applied of each partition it owns.
pub struct Checkpoints {
    tree: sled::Tree,
    key: [u8; 5],
    /// Indexed by partition; 0 for none applied (or another shard's partition).
    applied: Vec<u64>,
    dirty: bool,
    /// Partitions whose checkpoint moved since the last commit, once each (for a cluster's
    /// changelog), with a flag per partition.
    changed: Vec<u16>,
    listed: Vec<bool>,
}

impl Checkpoints {
    /// Every shard's checkpoints, `shard_of` saying which shard owns a partition. Records of
    /// another layout are rewritten into this one (in one batch: a crash keeps either).
    pub fn load(
        db: &sled::Db,
        shards: usize,
        shard_of: impl Fn(u16) -> usize,
    ) -> Result<Vec<Checkpoints>, CheckpointError> {
        let tree = db.open_tree(TREE)?;
        let mut applied = vec![0u64; usize::from(PARTITIONS)];
        let mut merge = |partition: u16, seq: u64| {
            let slot = &mut applied[usize::from(partition)];
            *slot = (*slot).max(seq);
        };
        let ours: Vec<[u8; 5]> = (0..shards).map(|shard| shard_key(shards, shard)).collect();
        let mut outdated = Vec::new();
        for item in tree.iter() {
            let (key, value) = item?;
            let read = match key.first() {
                Some(&SHARD_PREFIX) if key.len() == 5 => decode_record(&value).map(|pairs| {
                    pairs.into_iter().for_each(|(p, seq)| merge(p, seq));
                }),
                Some(&PARTITION_PREFIX) => match key[1..] {
                    [hi, lo] if u16::from_be_bytes([hi, lo]) < PARTITIONS => {
                        decode_seq(&value).map(|seq| merge(u16::from_be_bytes([hi, lo]), seq))
                    }
                    _ => Err("a partition outside the partitions".into()),
                },
                _ if key.as_ref() == STREAM_KEY => continue,
                _ => Err("not a checkpoint key".into()),
            };
            if let Err(e) = read {
                // Inputs of its partitions may then be applied again, never skipped unapplied.
                unreadable::keep_aside(db, TREE, &key, &value, &e);
            }
            if !ours.iter().any(|k| k.as_slice() == key.as_ref()) {
                outdated.push(key);
            }
        }
        let mut checkpoints: Vec<Checkpoints> = ours
            .into_iter()
            .map(|key| Checkpoints {
                tree: tree.clone(),
                key,
                applied: vec![0; usize::from(PARTITIONS)],
                dirty: false,
                changed: Vec::new(),
                listed: vec![false; usize::from(PARTITIONS)],
            })
            .collect();
        for (partition, &seq) in (0..PARTITIONS).zip(&applied) {
            if let Some(shard) = checkpoints.get_mut(shard_of(partition)) {
                shard.applied[usize::from(partition)] = seq;
            }
        }
        if !outdated.is_empty() {
            let mut batch = sled::Batch::default();
            for key in &outdated {
                batch.remove(key);
            }
            for shard in &checkpoints {
                batch.insert(&shard.key, encode_record(&shard.pairs())?);
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

    /// Whether the input `seq` of `partition` is new (and so to be applied); records it.
    pub fn admit(&mut self, partition: u16, seq: u64) -> bool {
        let Some(applied) = self.applied.get_mut(usize::from(partition)) else {
            return true;
        };
        if seq <= *applied {
            return false;
        }
        *applied = seq;
        self.dirty = true;
        if let Some(listed) = self.listed.get_mut(usize::from(partition))
            && !*listed
        {
            *listed = true;
            self.changed.push(partition);
        }
        true
    }

    /// The checkpoints moved since the last call, as changes for a cluster's changelog (key:
    /// the partition, value: the sequence, both big-endian).
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
                value: self.applied.get(p).map(|seq| seq.to_be_bytes().to_vec()),
            });
        }
    }

    /// Set a partition's checkpoint as restored from a cluster's changelog (0: none).
    pub fn restore(&mut self, partition: u16, seq: u64) {
        if let Some(applied) = self.applied.get_mut(usize::from(partition)) {
            *applied = seq;
            self.dirty = true;
        }
    }

    fn pairs(&self) -> Vec<(u16, u64)> {
        (0..PARTITIONS)
            .zip(&self.applied)
            .filter(|&(_, &seq)| seq > 0)
            .map(|(p, &seq)| (p, seq))
            .collect()
    }

    /// The shard's record if it changed since the last commit, as a batch for it.
    pub fn take_commit(&mut self) -> Option<(sled::Tree, sled::Batch)> {
        if !std::mem::take(&mut self.dirty) {
            return None;
        }
        let mut batch = sled::Batch::default();
        match encode_record(&self.pairs()) {
            Ok(value) => batch.insert(&self.key, value),
            Err(e) => {
                // Not reachable for integers; the inputs would then be applied again after a crash.
                tracing::error!(error = %e, "checkpoints not encodable");
                return None;
            }
        }
        Some((self.tree.clone(), batch))
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
        let mut cp = Checkpoints::load(&db, 1, by_modulo(1)).expect("load").remove(0);
        assert!(cp.admit(3, 10));
        assert!(cp.admit(3, 12));
        assert!(!cp.admit(3, 11), "below the checkpoint");
        assert!(cp.admit(4, 11), "another partition counts apart");
        commit(&mut cp);
        assert!(cp.take_commit().is_none(), "nothing new to commit");

        let mut again = Checkpoints::load(&db, 1, by_modulo(1)).expect("reload").remove(0);
        assert!(!again.admit(3, 12));
        assert!(again.admit(3, 13));
        assert!(!again.admit(4, 5));
    }

    #[test]
    fn a_commit_writes_one_key_per_shard() {
        let db = temporary();
        let mut shards = Checkpoints::load(&db, 2, by_modulo(2)).expect("load");
        for p in (0..100).step_by(2) {
            assert!(shards[0].admit(p, u64::from(p) + 1));
        }
        let (_, batch) = shards[0].take_commit().expect("dirty");
        let tree = db.open_tree(TREE).expect("tree");
        tree.apply_batch(batch).expect("apply");
        assert_eq!(tree.len(), 1);
    }

    #[test]
    fn checkpoints_follow_their_partitions_when_the_shard_count_changes() {
        let db = temporary();
        let mut two = Checkpoints::load(&db, 2, by_modulo(2)).expect("two shards");
        for p in 0..10u16 {
            assert!(two[usize::from(p) % 2].admit(p, 100 + u64::from(p)));
        }
        two.iter_mut().for_each(commit);

        let mut three = Checkpoints::load(&db, 3, by_modulo(3)).expect("three shards");
        for p in 0..10u16 {
            let shard = &mut three[usize::from(p) % 3];
            assert!(!shard.admit(p, 100 + u64::from(p)), "partition {p} applied before");
            assert!(shard.admit(p, 200 + u64::from(p)));
        }
        three.iter_mut().for_each(commit);

        let tree = db.open_tree(TREE).expect("tree");
        let keys: Vec<Vec<u8>> = tree.iter().keys().map(|k| k.expect("key").to_vec()).collect();
        assert_eq!(keys, (0..3).map(|i| shard_key(3, i).to_vec()).collect::<Vec<_>>());
        let mut one = Checkpoints::load(&db, 1, by_modulo(1)).expect("one shard").remove(0);
        for p in 0..10u16 {
            assert!(!one.admit(p, 200 + u64::from(p)));
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
        let mut shards = Checkpoints::load(&db, 2, by_modulo(2)).expect("load");
        assert!(!shards[1].admit(7, 70));
        assert!(!shards[0].admit(8, 80));
        assert!(shards[0].admit(8, 81));
        assert_eq!(tree.len(), 2, "one record per shard, the old keys gone");
    }

    #[test]
    fn an_unreadable_record_is_kept_aside_and_the_others_still_count() {
        let db = temporary();
        let mut shards = Checkpoints::load(&db, 2, by_modulo(2)).expect("load");
        assert!(shards[1].admit(5, 50));
        commit(&mut shards[1]);
        let tree = db.open_tree(TREE).expect("tree");
        tree.insert(shard_key(2, 0), &b"\xc1 not msgpack"[..]).expect("insert");

        let mut again = Checkpoints::load(&db, 2, by_modulo(2)).expect("reload");
        assert!(!again[1].admit(5, 50));
        assert!(again[0].admit(4, 1), "its partitions are applied again, never skipped");
        let kept = unreadable::list(&db).expect("kept aside");
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].0, TREE);
    }

    #[test]
    fn a_new_stream_clears_the_checkpoints() {
        let db = temporary();
        assert!(!adopt_stream(&db, "IN", "t1").expect("adopt"));
        let mut cp = Checkpoints::load(&db, 1, by_modulo(1)).expect("load").remove(0);
        cp.admit(1, 100);
        commit(&mut cp);
        let reload = || Checkpoints::load(&db, 1, by_modulo(1)).expect("load").remove(0);
        assert!(!adopt_stream(&db, "IN", "t1").expect("same stream"));
        assert!(!reload().admit(1, 100));
        assert!(adopt_stream(&db, "IN", "t2").expect("recreated"));
        assert!(reload().admit(1, 1));
    }
}
