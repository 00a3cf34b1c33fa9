//! Where the events plugins emit go next: to this shard's own queue when their actor is one of
//! its own (handled before the next input), or to the owning shard's queue. A full queue of
//! another shard never blocks this one: its events wait in an outbox, in order, and are retried
//! every turn.

use crate::event::Routed;
use crate::router::{Router, ShardMsg};
use std::collections::VecDeque;

pub(super) struct Chain {
    shard: usize,
    router: Router,
    /// Emitted events for this shard's own actors, processed before the next input.
    local: VecDeque<Routed>,
    /// Emitted events for other shards whose queues were full, by shard.
    outbox: Vec<VecDeque<Routed>>,
}

impl Chain {
    pub fn new(shard: usize, router: Router) -> Chain {
        let shards = router.shard_count();
        Chain {
            shard,
            router,
            local: VecDeque::new(),
            outbox: (0..shards).map(|_| VecDeque::new()).collect(),
        }
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
        } else {
            self.outbox[shard].push_back(routed);
        }
    }

    /// The next event queued for this shard.
    pub fn next_local(&mut self) -> Option<Routed> {
        self.local.pop_front()
    }

    /// Whether events for other shards are waiting for room in their queues.
    pub fn waiting(&self) -> bool {
        self.outbox.iter().any(|q| !q.is_empty())
    }

    /// Hand queued events to other shards, oldest first, without ever blocking.
    pub fn flush_outbox(&mut self) {
        for (shard, queue) in self.outbox.iter_mut().enumerate() {
            while let Some(routed) = queue.pop_front() {
                match self.router.try_send(shard, ShardMsg::Event(routed)) {
                    Ok(()) => {}
                    Err(flume::TrySendError::Full(ShardMsg::Event(routed))) => {
                        queue.push_front(routed);
                        break;
                    }
                    Err(_) => {
                        tracing::warn!(shard, "target shard stopped; emitted event dropped at shutdown");
                        break;
                    }
                }
            }
        }
    }
}
