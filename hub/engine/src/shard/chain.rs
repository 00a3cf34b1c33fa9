//! Where the events plugins emit go next: to this shard's own queue when their actor is one of
//! its own (handled before the next input), or to the owning shard's queue. A full queue of
//! another shard never blocks this one: its events wait in an outbox, in order, and are retried
//! every turn.
//!
//! In durable mode an event for another shard is a handoff (`durable::Handoffs`): it is kept
//! with this shard's next commit and leaves for the other shard only once that is applied.

use crate::durable::{Handoff, HandoffKey, Handoffs};
use crate::event::Routed;
use crate::router::{Router, ShardMsg};
use std::collections::VecDeque;

pub(super) struct Chain {
    shard: usize,
    router: Router,
    /// Emitted events for this shard's own actors, processed before the next input.
    local: VecDeque<Routed>,
    /// Emitted events for other shards whose queues were full, by shard.
    outbox: Vec<VecDeque<ShardMsg>>,
    /// Events for other shards that cross through the `handoffs` tree (durable mode), and
    /// those received that way.
    handoffs: Handoffs,
}

impl Chain {
    pub fn new(shard: usize, router: Router, handoffs: Handoffs) -> Chain {
        let shards = router.shard_count();
        Chain {
            shard,
            router,
            local: VecDeque::new(),
            outbox: (0..shards).map(|_| VecDeque::new()).collect(),
            handoffs,
        }
    }

    /// The shard that owns `actor`.
    pub fn shard_of(&self, actor: &str) -> usize {
        self.router.shard_of(actor)
    }

    /// Queue an event for this shard, after what is already queued.
    pub fn push_local(&mut self, routed: Routed) {
        self.local.push_back(routed);
    }

    /// Queue an event for the shard that owns its actor.
    pub fn route(&mut self, routed: Routed) {
        let shard = self.router.shard_of(&routed.event.actor);
        if shard == self.shard {
            self.local.push_back(routed);
        } else if self.handoffs.durable() {
            self.handoffs.stage(shard, routed);
        } else {
            self.outbox[shard].push_back(ShardMsg::Event(routed));
        }
    }

    /// The next event queued for this shard.
    pub fn next_local(&mut self) -> Option<Routed> {
        self.local.pop_front()
    }

    /// Handoffs received from other shards before the start, to run before any input.
    pub fn take_restored(&mut self) -> Vec<Handoff> {
        self.handoffs.take_restored()
    }

    /// A received handoff has run: its record goes with the next commit.
    pub fn handoff_done(&mut self, key: HandoffKey) {
        self.handoffs.done(key);
    }

    /// The handoffs' writes and removals for commit `seq`.
    pub fn take_commit(&mut self, seq: u64) -> Option<(sled::Tree, sled::Batch)> {
        self.handoffs.take_commit(seq)
    }

    /// Whether events for other shards wait for room in their queues.
    pub fn waiting(&self) -> bool {
        self.outbox.iter().any(|q| !q.is_empty())
    }

    /// Whether handoffs wait for their commit to be applied. (Not a reason to delay a stop:
    /// once committed they are in their tree, and a start hands them on.)
    pub fn handoffs_waiting(&self) -> bool {
        self.handoffs.waiting()
    }

    /// Hand queued events to other shards, oldest first, without ever blocking; handoffs once
    /// the commit that keeps them is applied (`applied`: this shard's highest applied commit).
    pub fn flush_outbox(&mut self, applied: u64) {
        let outbox = &mut self.outbox;
        self.handoffs
            .release(applied, |h| outbox[h.shard].push_back(ShardMsg::Handoff(h)));
        for (shard, queue) in self.outbox.iter_mut().enumerate() {
            while let Some(msg) = queue.pop_front() {
                match self.router.try_send(shard, msg) {
                    Ok(()) => {}
                    Err(flume::TrySendError::Full(msg)) => {
                        queue.push_front(msg);
                        break;
                    }
                    Err(_) => {
                        // A handoff stays in its tree and runs after the next start.
                        tracing::warn!(shard, "target shard stopped; emitted event dropped at shutdown");
                        break;
                    }
                }
            }
        }
    }
}
