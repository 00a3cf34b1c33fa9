//! Handoffs: events a plugin emitted for an actor of *another* shard, kept durably between the
//! two shards (durable mode).
//!
//! An emitted event for the shard's own actors runs in the same turn and its effects are
//! committed with its cause's. One for another shard used to cross in memory, so a crash after
//! the emitting shard committed its input (and the input was acknowledged) but before the
//! receiving shard committed the event's effects lost them. Now:
//!
//! 1. the emitting shard writes the event into the `handoffs` tree in the commit that records
//!    its cause (the same sled transaction as the cause's state and checkpoint);
//! 2. only once that commit is applied does it hand the event to the receiving shard;
//! 3. the receiving shard removes the record in the commit that holds the event's effects.
//!
//! So a record exists exactly while its effects are not durable, and a start hands every record
//! left over to the shard that owns its actor (under the current shard count). The cost is
//! latency: an event re-keyed to another shard waits for one commit interval (as in the
//! exactly-once modes of Kafka Streams or Flink, whose repartitioning waits for a commit).
//!
//! Key: source shard (u16, big-endian) ‖ counter (u64, big-endian): a shard numbers its records
//! on from the highest it finds at start. Value: a MessagePack map ([`Record`]), so fields added
//! later are skipped by older readers.

use crate::event::{Event, Routed};
use crate::state::unreadable;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Instant;

/// The tree's name.
pub const TREE: &str = "handoffs";
const FORMAT: u8 = 1;

/// Where a handoff is kept until its effects are committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HandoffKey([u8; 10]);

impl HandoffKey {
    fn new(shard: u16, counter: u64) -> HandoffKey {
        let mut key = [0; 10];
        key[..2].copy_from_slice(&shard.to_be_bytes());
        key[2..].copy_from_slice(&counter.to_be_bytes());
        HandoffKey(key)
    }

    fn parse(bytes: &[u8]) -> Option<HandoffKey> {
        Some(HandoffKey(bytes.try_into().ok()?))
    }

    fn counter(&self) -> u64 {
        let mut counter = [0; 8];
        counter.copy_from_slice(&self.0[2..]);
        u64::from_be_bytes(counter)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("handoffs in sled: {0}")]
    Sled(#[from] sled::Error),
}

/// A handoff as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    format: u8,
    hops: u8,
    id: String,
    kind: String,
    actor: String,
    time: i64,
    source: String,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

impl Record {
    fn of(routed: &Routed) -> Record {
        let e = &routed.event;
        Record {
            format: FORMAT,
            hops: routed.hops,
            id: e.id.clone(),
            kind: e.kind.clone(),
            actor: e.actor.clone(),
            time: e.time,
            source: e.source.clone(),
            payload: e.payload.clone(),
        }
    }

    fn into_routed(self) -> Routed {
        Routed {
            event: Event {
                id: self.id,
                kind: self.kind,
                actor: self.actor,
                time: self.time,
                source: self.source,
                payload: self.payload,
            },
            hops: self.hops,
            received: Instant::now(),
            input: None,
            only: None,
        }
    }
}

fn encode(routed: &Routed) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(&Record::of(routed))
}

fn decode(bytes: &[u8]) -> Result<Routed, rmp_serde::decode::Error> {
    rmp_serde::from_slice::<Record>(bytes).map(Record::into_routed)
}

/// One event on its way to another shard, with the record that keeps it.
pub struct Handoff {
    pub key: HandoffKey,
    pub shard: usize,
    pub routed: Routed,
}

/// One shard's handoffs: those it sends (written with its next commit, released once that is
/// applied) and those it received (removed with its next commit).
pub struct Handoffs {
    /// Whether events for other shards cross durably (durable mode). In core mode records left
    /// over from durable mode are still handed on, and new events cross in memory.
    durable: bool,
    tree: sled::Tree,
    shard: u16,
    next: u64,
    /// Writes and removals for the next commit.
    batch: sled::Batch,
    dirty: bool,
    /// Sent since the last commit.
    staged: Vec<Handoff>,
    /// Sent, in a commit not yet applied: (commit, handoffs).
    committed: VecDeque<(u64, Vec<Handoff>)>,
    /// Left over from before the start, for this shard's actors.
    restored: Vec<Handoff>,
}

impl Handoffs {
    /// Every shard's handoffs, with the records left over from before the start handed to the
    /// shard that owns their actor now (`shard_of`). Done before any shard runs, so a record is
    /// restored once. An unreadable record is kept aside and removed.
    pub fn load(
        db: &sled::Db,
        durable: bool,
        shards: usize,
        shard_of: impl Fn(&str) -> usize,
    ) -> Result<Vec<Handoffs>, HandoffError> {
        let tree = db.open_tree(TREE)?;
        let mut all: Vec<Handoffs> = (0..shards)
            .map(|shard| Handoffs {
                durable,
                tree: tree.clone(),
                shard: u16::try_from(shard).unwrap_or(u16::MAX),
                next: 0,
                batch: sled::Batch::default(),
                dirty: false,
                staged: Vec::new(),
                committed: VecDeque::new(),
                restored: Vec::new(),
            })
            .collect();
        let mut counters = std::collections::HashMap::<u16, u64>::new();
        for item in tree.iter() {
            let (raw_key, value) = item?;
            let Some(key) = HandoffKey::parse(&raw_key) else {
                unreadable::keep_aside(db, TREE, &raw_key, &value, &"not a handoff key");
                tree.remove(raw_key)?;
                continue;
            };
            let source = u16::from_be_bytes([key.0[0], key.0[1]]);
            let next = counters.entry(source).or_default();
            *next = (*next).max(key.counter().saturating_add(1));
            match decode(&value) {
                Ok(routed) => {
                    let shard = shard_of(&routed.event.actor).min(shards.saturating_sub(1));
                    all[shard].restored.push(Handoff { key, shard, routed });
                }
                Err(e) => {
                    unreadable::keep_aside(db, TREE, &raw_key, &value, &e);
                    tree.remove(raw_key)?;
                }
            }
        }
        for h in &mut all {
            h.next = counters.get(&h.shard).copied().unwrap_or(0);
        }
        let restored: usize = all.iter().map(|h| h.restored.len()).sum();
        if restored > 0 {
            tracing::info!(
                restored,
                "handing on events emitted for other shards before the restart"
            );
        }
        Ok(all)
    }

    /// The handoffs left over from before the start for this shard, in the order they were sent.
    pub fn take_restored(&mut self) -> Vec<Handoff> {
        std::mem::take(&mut self.restored)
    }

    /// Whether events for other shards cross durably (else in memory).
    pub fn durable(&self) -> bool {
        self.durable
    }

    /// Keep `routed` for `shard` with the next commit.
    pub fn stage(&mut self, shard: usize, routed: Routed) {
        let key = HandoffKey::new(self.shard, self.next);
        self.next += 1;
        match encode(&routed) {
            Ok(value) => {
                self.batch.insert(&key.0, value);
                self.dirty = true;
            }
            // Not reachable for the hub's own types; the event still crosses in memory.
            Err(e) => tracing::error!(error = %e, "emitted event not encodable as a handoff"),
        }
        self.staged.push(Handoff { key, shard, routed });
    }

    /// A received handoff's effects go into the next commit: its record goes with them.
    pub fn done(&mut self, key: HandoffKey) {
        self.batch.remove(&key.0);
        self.dirty = true;
    }

    /// The writes and removals for commit `seq` (the staged handoffs are released once it is
    /// applied).
    pub fn take_commit(&mut self, seq: u64) -> Option<(sled::Tree, sled::Batch)> {
        if !self.staged.is_empty() {
            self.committed.push_back((seq, std::mem::take(&mut self.staged)));
        }
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        Some((self.tree.clone(), std::mem::take(&mut self.batch)))
    }

    /// The handoffs whose commit is applied (`applied`: the highest applied commit), in order.
    pub fn release(&mut self, applied: u64, mut send: impl FnMut(Handoff)) {
        while self.committed.front().is_some_and(|(seq, _)| *seq <= applied) {
            if let Some((_, handoffs)) = self.committed.pop_front() {
                handoffs.into_iter().for_each(&mut send);
            }
        }
    }

    /// Whether handoffs wait for their commit to be applied.
    pub fn waiting(&self) -> bool {
        !self.committed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn routed(actor: &str, n: u8) -> Routed {
        Routed {
            event: Event {
                id: format!("e{n}"),
                kind: "k".into(),
                actor: actor.into(),
                time: 7,
                source: "p".into(),
                payload: vec![0x80],
            },
            hops: n,
            received: Instant::now(),
            input: None,
            only: None,
        }
    }

    fn record() -> impl Strategy<Value = Record> {
        (
            any::<u8>(),
            any::<String>(),
            any::<String>(),
            any::<String>(),
            any::<i64>(),
            any::<String>(),
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(hops, id, kind, actor, time, source, payload)| Record {
                format: FORMAT,
                hops,
                id,
                kind,
                actor,
                time,
                source,
                payload,
            })
    }

    proptest! {
        #[test]
        fn a_handoff_reads_back_as_written(r in record()) {
            let bytes = rmp_serde::to_vec_named(&r).expect("encode");
            let back = decode(&bytes).expect("decode");
            prop_assert_eq!(Record::of(&back), r);
        }

        #[test]
        fn a_handoff_with_a_field_added_later_still_reads(r in record(), extra in any::<u64>()) {
            #[derive(Serialize)]
            struct Newer<'a> {
                #[serde(flatten)]
                r: &'a Record,
                lane: u64,
            }
            let bytes = rmp_serde::to_vec_named(&Newer { r: &r, lane: extra }).expect("encode");
            prop_assert_eq!(Record::of(&decode(&bytes).expect("decode")), r);
        }
    }

    #[test]
    fn the_record_format_is_pinned() {
        let bytes = encode(&routed("a", 1)).expect("encode");
        let value = rmpv::decode::read_value(&mut bytes.as_slice()).expect("msgpack");
        assert_eq!(
            value.to_string(),
            r#"{"format": 1, "hops": 1, "id": "e1", "kind": "k", "actor": "a", "time": 7, "source": "p", "payload": [128]}"#
        );
    }

    #[test]
    fn a_handoff_is_released_once_its_commit_is_applied_and_kept_until_done() {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let mut shards = Handoffs::load(&db, true, 2, |a| usize::from(a == "b")).expect("load");
        let (first, second) = shards.split_at_mut(1);
        let (sender, receiver) = (&mut first[0], &mut second[0]);
        sender.stage(1, routed("b", 1));
        let (tree, batch) = sender.take_commit(1).expect("a write");
        let mut sent = Vec::new();
        sender.release(0, |h| sent.push(h));
        assert!(sent.is_empty(), "not before its commit is applied");
        tree.apply_batch(batch).expect("apply");
        sender.release(1, |h| sent.push(h));
        assert_eq!(sent.len(), 1);
        assert!(!sender.waiting());

        // A restart before the receiver committed: the event comes again, to the receiver.
        let mut again = Handoffs::load(&db, true, 2, |a| usize::from(a == "b")).expect("load");
        let restored = again[1].take_restored();
        assert_eq!(restored.len(), 1);
        assert_eq!(restored[0].routed.event.id, "e1");
        assert_eq!(again[0].next, 1, "the sender numbers on after its records");

        receiver.done(sent[0].key);
        let (tree, batch) = receiver.take_commit(1).expect("a removal");
        tree.apply_batch(batch).expect("apply");
        let after = Handoffs::load(&db, true, 2, |a| usize::from(a == "b")).expect("load");
        assert!(after.iter().all(|h| h.restored.is_empty()), "done: gone for good");
    }

    #[test]
    fn an_unreadable_handoff_is_kept_aside() {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let tree = db.open_tree(TREE).expect("tree");
        tree.insert(HandoffKey::new(0, 3).0, b"\xc1".as_slice())
            .expect("insert");
        let shards = Handoffs::load(&db, true, 1, |_| 0).expect("load");
        assert!(shards[0].restored.is_empty());
        assert!(tree.is_empty(), "moved out of the way");
        assert_eq!(db.open_tree(unreadable::TREE).expect("tree").len(), 1);
    }
}
