//! The `checkpoints` tree: per partition of the actors, the stream sequence of the last input
//! applied, committed in the same transaction as the state it produced; and the identity of the
//! stream those sequences count in (a stream deleted and created again starts at 1).
//!
//! Keys: `p` ‖ partition (u16, big-endian) → `[1, seq]`; `stream` → `[1, name, created]`
//! (MessagePack, positional, tagged with their format).

use crate::state::unreadable;
use rustc_hash::{FxHashMap, FxHashSet};

/// The tree's name.
pub const TREE: &str = "checkpoints";
const FORMAT: u8 = 1;
const STREAM_KEY: &[u8] = b"stream";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoints in sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("checkpoint not encodable: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

fn partition_key(partition: u16) -> [u8; 3] {
    let [hi, lo] = partition.to_be_bytes();
    [b'p', hi, lo]
}

fn encode_seq(seq: u64) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec(&(FORMAT, seq))
}

/// The sequence of a stored checkpoint: the second element, whatever later formats add after it.
fn decode_seq(mut bytes: &[u8]) -> Result<u64, String> {
    let value = rmpv::decode::read_value(&mut bytes).map_err(|e| e.to_string())?;
    let seq = match value.as_array().map(Vec::as_slice) {
        Some([format, seq, ..]) if format.as_u64().is_some() => seq.as_u64(),
        _ => None,
    };
    seq.ok_or_else(|| format!("not a checkpoint: {value}"))
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
    let had_checkpoints = tree.scan_prefix(b"p").next().is_some();
    if had_checkpoints {
        tracing::warn!(
            stream = name,
            created,
            "the input stream is new: checkpoints of the previous one are cleared"
        );
        for key in tree.scan_prefix(b"p").keys() {
            tree.remove(key?)?;
        }
    }
    tree.insert(STREAM_KEY, identity)?;
    tree.flush()?;
    Ok(had_checkpoints)
}

/// One shard's view of the checkpoints (it reads them all; it writes only its partitions').
pub struct Checkpoints {
    tree: sled::Tree,
    applied: FxHashMap<u16, u64>,
    dirty: FxHashSet<u16>,
}

impl Checkpoints {
    pub fn open(db: &sled::Db) -> Result<Checkpoints, CheckpointError> {
        let tree = db.open_tree(TREE)?;
        let mut applied = FxHashMap::default();
        for item in tree.scan_prefix(b"p") {
            let (key, value) = item?;
            let [b'p', hi, lo] = key[..] else { continue };
            match decode_seq(&value) {
                Ok(seq) => {
                    applied.insert(u16::from_be_bytes([hi, lo]), seq);
                }
                // Inputs of the partition may then be applied again, never skipped unapplied.
                Err(e) => unreadable::keep_aside(db, TREE, &key, &value, &e),
            }
        }
        Ok(Checkpoints {
            tree,
            applied,
            dirty: FxHashSet::default(),
        })
    }

    /// Whether the input `seq` of `partition` is new (and so to be applied); records it.
    pub fn admit(&mut self, partition: u16, seq: u64) -> bool {
        let applied = self.applied.entry(partition).or_insert(0);
        if seq <= *applied {
            return false;
        }
        *applied = seq;
        self.dirty.insert(partition);
        true
    }

    /// The checkpoints changed since the last commit, as a batch for it.
    pub fn take_commit(&mut self) -> Option<(sled::Tree, sled::Batch)> {
        if self.dirty.is_empty() {
            return None;
        }
        let mut batch = sled::Batch::default();
        for partition in self.dirty.drain() {
            let seq = self.applied.get(&partition).copied().unwrap_or(0);
            match encode_seq(seq) {
                Ok(value) => batch.insert(&partition_key(partition), value),
                Err(e) => tracing::error!(partition, error = %e, "checkpoint not encodable"),
            }
        }
        Some((self.tree.clone(), batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_checkpoint_reads_back_as_written(seq in any::<u64>()) {
            prop_assert_eq!(decode_seq(&encode_seq(seq).expect("encode")).expect("decode"), seq);
        }

        #[test]
        fn a_checkpoint_with_a_field_added_later_still_reads(seq in any::<u64>(), extra in any::<u32>()) {
            let newer = rmp_serde::to_vec(&(FORMAT + 1, seq, extra)).expect("encode");
            prop_assert_eq!(decode_seq(&newer).expect("decode"), seq);
        }
    }

    #[test]
    fn inputs_at_or_below_the_checkpoint_are_skipped_after_a_restart() {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let mut cp = Checkpoints::open(&db).expect("open");
        assert!(cp.admit(3, 10));
        assert!(cp.admit(3, 12));
        assert!(!cp.admit(3, 11), "below the checkpoint");
        assert!(cp.admit(4, 11), "another partition counts apart");
        let (tree, batch) = cp.take_commit().expect("dirty");
        tree.apply_batch(batch).expect("apply");

        let mut again = Checkpoints::open(&db).expect("reopen");
        assert!(!again.admit(3, 12));
        assert!(again.admit(3, 13));
        assert!(!again.admit(4, 5));
    }

    #[test]
    fn a_new_stream_clears_the_checkpoints() {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        assert!(!adopt_stream(&db, "IN", "t1").expect("adopt"));
        let mut cp = Checkpoints::open(&db).expect("open");
        cp.admit(1, 100);
        let (tree, batch) = cp.take_commit().expect("dirty");
        tree.apply_batch(batch).expect("apply");
        assert!(!adopt_stream(&db, "IN", "t1").expect("same stream"));
        assert!(!Checkpoints::open(&db).expect("open").admit(1, 100));
        assert!(adopt_stream(&db, "IN", "t2").expect("recreated"));
        assert!(Checkpoints::open(&db).expect("open").admit(1, 1));
    }
}
