//! Which inputs may be acknowledged: the highest stream sequence below which every input the
//! hub received is on disk (the watermark), across shards that run at their own pace.
//!
//! Inputs routed to a shard become durable when a flushed commit of that shard covers their
//! ordinal (their place in the shard's queue: a shard handles its queue in order). Inputs handled
//! without a shard (dead letters, profile updates, written to sled at once) become durable with
//! the next flush that starts after them. The watermark is one below the lowest sequence still
//! waiting; the acknowledgement goes to the highest durable input at or below it, and with
//! `AckPolicy::All` covers everything before it.

use super::{Flushed, Ticket};
use std::collections::{BTreeMap, VecDeque};

pub struct Acks<R> {
    /// Per shard, inputs routed to it and not yet durable, in queue order: (ordinal, seq).
    routed: Vec<VecDeque<(u64, u64)>>,
    /// Per shard, the ordinal of the next input routed to it.
    next: Vec<u64>,
    /// Inputs handled without a shard: (the flush after which they are durable, seq).
    immediate: VecDeque<(u64, u64)>,
    /// Sequences not yet durable, with how often each is waiting (an input delivered again
    /// while its first delivery is still queued waits twice).
    waiting: BTreeMap<u64, u32>,
    /// Durable inputs not yet acknowledged, with the handle to acknowledge them by.
    durable: BTreeMap<u64, R>,
    /// Handles of inputs still waiting.
    replies: BTreeMap<u64, R>,
    /// The highest sequence received.
    highest: u64,
}

impl<R> Acks<R> {
    pub fn new(shards: usize) -> Acks<R> {
        Acks {
            routed: (0..shards).map(|_| VecDeque::new()).collect(),
            next: vec![1; shards],
            immediate: VecDeque::new(),
            waiting: BTreeMap::new(),
            durable: BTreeMap::new(),
            replies: BTreeMap::new(),
            highest: 0,
        }
    }

    fn received(&mut self, seq: u64, reply: R) {
        *self.waiting.entry(seq).or_default() += 1;
        self.replies.insert(seq, reply);
        self.highest = self.highest.max(seq);
    }

    fn done(&mut self, seq: u64) {
        if let Some(n) = self.waiting.get_mut(&seq) {
            *n -= 1;
            if *n == 0 {
                self.waiting.remove(&seq);
                if let Some(reply) = self.replies.remove(&seq) {
                    self.durable.insert(seq, reply);
                }
            }
        }
    }

    /// An input at stream sequence `seq` goes to `shard`: its ticket. `place` orders it among
    /// everything this reader received (the sequences of this type): the stream sequence when
    /// one stream feeds the reader, an arrival count when several do (a cluster's partition
    /// streams each count from 1).
    pub fn route(&mut self, shard: usize, place: u64, seq: u64, reply: R) -> Ticket {
        let ordinal = self.next[shard];
        self.next[shard] += 1;
        self.routed[shard].push_back((ordinal, place));
        self.received(place, reply);
        Ticket {
            seq,
            ordinal,
            source: 0,
            stored_ns: 0,
        }
    }

    /// An input (at `place`, as in [`Acks::route`]) was handled without a shard, before flush
    /// number `flush` started.
    pub fn handled(&mut self, place: u64, reply: R, flush: u64) {
        self.immediate.push_back((flush, place));
        self.received(place, reply);
    }

    /// Commits were flushed: mark what they cover durable.
    pub fn flushed(&mut self, report: &Flushed) {
        for &(shard, upto) in &report.shards {
            while let Some(&(ordinal, seq)) = self.routed.get(shard).and_then(VecDeque::front) {
                if ordinal > upto {
                    break;
                }
                self.routed[shard].pop_front();
                self.done(seq);
            }
        }
        while let Some(&(flush, seq)) = self.immediate.front() {
            if flush > report.flush {
                break;
            }
            self.immediate.pop_front();
            self.done(seq);
        }
    }

    /// The input to acknowledge now, if the watermark moved: every input up to it is durable.
    pub fn to_ack(&mut self) -> Option<(u64, R)> {
        self.to_ack_by(|_| ()).pop()
    }

    /// Like [`Acks::to_ack`] for inputs of several consumers of one stream (the partitions of a
    /// cluster): the highest input to acknowledge of each `group`.
    pub fn to_ack_by<K: PartialEq>(&mut self, group: impl Fn(&R) -> K) -> Vec<(u64, R)> {
        let watermark = match self.waiting.keys().next() {
            Some(&lowest) => lowest - 1,
            None => self.highest,
        };
        let rest = self.durable.split_off(&watermark.saturating_add(1));
        let covered = std::mem::replace(&mut self.durable, rest);
        let mut last: Vec<(K, u64, R)> = Vec::new();
        for (seq, reply) in covered {
            let key = group(&reply);
            match last.iter_mut().find(|(k, _, _)| *k == key) {
                Some(entry) => *entry = (key, seq, reply),
                None => last.push((key, seq, reply)),
            }
        }
        last.into_iter().map(|(_, seq, reply)| (seq, reply)).collect()
    }

    /// Whether inputs that `of` picks are received and not yet acknowledged.
    pub fn holds(&self, of: impl Fn(&R) -> bool) -> bool {
        self.replies.values().chain(self.durable.values()).any(of)
    }

    /// Drop the inputs that `of` picks (a partition whose lease was lost: its new owner reads
    /// them again), so they no longer hold the watermark of the others.
    pub fn forget(&mut self, of: impl Fn(&R) -> bool) {
        let gone: Vec<u64> = self.replies.iter().filter(|(_, r)| of(r)).map(|(s, _)| *s).collect();
        for seq in gone {
            self.replies.remove(&seq);
            self.waiting.remove(&seq);
        }
        self.durable.retain(|_, r| !of(r));
    }

    /// Inputs received and not yet acknowledged.
    pub fn unacknowledged(&self) -> usize {
        self.replies.len() + self.durable.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flushed(shards: &[(usize, u64)], flush: u64) -> Flushed {
        Flushed {
            shards: shards.to_vec(),
            flush,
        }
    }

    #[test]
    fn the_watermark_waits_for_the_slowest_shard() {
        let mut acks = Acks::new(2);
        let a = acks.route(0, 1, 1, "r1");
        acks.route(1, 2, 2, "r2");
        acks.route(0, 3, 3, "r3");
        assert_eq!(
            a,
            Ticket {
                seq: 1,
                ordinal: 1,
                source: 0,
                stored_ns: 0
            }
        );
        acks.flushed(&flushed(&[(0, 2)], 0));
        assert_eq!(acks.to_ack(), Some((1, "r1")), "2 is not durable yet, so 3 waits");
        acks.flushed(&flushed(&[(1, 1)], 0));
        assert_eq!(acks.to_ack(), Some((3, "r3")), "one ack covers 2 and 3");
        assert_eq!(acks.to_ack(), None);
        assert_eq!(acks.unacknowledged(), 0);
    }

    #[test]
    fn inputs_without_a_shard_wait_for_the_next_flush() {
        let mut acks = Acks::new(1);
        acks.handled(1, "dead letter", 5);
        acks.flushed(&flushed(&[], 4));
        assert_eq!(acks.to_ack(), None, "flush 4 started before the input was handled");
        acks.flushed(&flushed(&[], 5));
        assert_eq!(acks.to_ack(), Some((1, "dead letter")));
    }

    #[test]
    fn an_input_delivered_twice_is_durable_once_both_are_handled() {
        let mut acks = Acks::new(1);
        acks.route(0, 7, 7, "first");
        acks.route(0, 8, 8, "r8");
        acks.route(0, 7, 7, "again");
        acks.flushed(&flushed(&[(0, 2)], 0));
        assert_eq!(acks.to_ack(), None, "the second delivery of 7 is still queued");
        acks.flushed(&flushed(&[(0, 3)], 0));
        assert_eq!(acks.to_ack(), Some((8, "r8")));
    }

    #[test]
    fn each_consumer_gets_its_own_acknowledgement_below_the_common_watermark() {
        let mut acks = Acks::new(1);
        acks.route(0, 1, 1, ("p1", 1));
        acks.route(0, 2, 2, ("p2", 2));
        acks.route(0, 3, 3, ("p1", 3));
        acks.route(0, 4, 4, ("p2", 4));
        acks.flushed(&flushed(&[(0, 3)], 0));
        assert_eq!(
            acks.to_ack_by(|r| r.0),
            vec![(3, ("p1", 3)), (2, ("p2", 2))],
            "4 is not durable: p2 is acknowledged up to 2"
        );
        assert!(acks.holds(|r| r.0 == "p2"));
        assert!(!acks.holds(|r| r.0 == "p1"));
    }

    #[test]
    fn a_forgotten_partition_no_longer_holds_back_the_others() {
        let mut acks = Acks::new(2);
        acks.route(0, 1, 1, ("lost", 1));
        acks.route(1, 2, 2, ("kept", 2));
        acks.flushed(&flushed(&[(1, 1)], 0));
        assert!(acks.to_ack_by(|r| r.0).is_empty(), "1 holds the watermark");
        acks.forget(|r| r.0 == "lost");
        assert_eq!(acks.to_ack_by(|r| r.0), vec![(2, ("kept", 2))]);
        assert_eq!(acks.unacknowledged(), 0);
    }
}
