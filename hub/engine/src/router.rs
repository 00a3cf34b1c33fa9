//! Routing by actor: every event of one actor goes to the same shard, whose single thread
//! processes them in arrival order, one at a time (the actor model's guarantee without an actor
//! per customer). Queues in front of shards are bounded, so a busy shard pushes back on ingress.

use crate::event::Routed;
use crate::limits::PARTITIONS;
use std::sync::Arc;

pub enum ShardMsg {
    Event(Routed),
    /// An event emitted on another shard, kept in the `handoffs` tree until its effects here
    /// are committed (durable mode).
    Handoff(crate::durable::Handoff),
    /// Wake up and look at the live plugin set (it changed).
    Reload,
    /// Inspect or erase what the shard holds about an actor, in order with its events.
    Actor {
        actor: String,
        request: crate::actor::ActorRequest,
    },
    /// A partition's state was restored from a cluster's changelog: forget what the shard
    /// holds of its actors and take its timers and checkpoints.
    Adopt(Adopt),
    /// The actors whose key starts with `prefix` (a tenant's) that the shard holds in memory:
    /// pending timers, and state not yet committed.
    Actors {
        prefix: String,
        reply: tokio::sync::oneshot::Sender<Vec<String>>,
    },
    /// Finish what is queued, commit, and exit.
    Stop,
}

/// A timer read back from the changelog: its key (see `state::keys::timer_key`), due time and
/// payload.
pub type RestoredTimer = (std::sync::Arc<[u8]>, i64, Vec<u8>);

/// What a shard takes of a partition restored from the changelog.
#[derive(Debug)]
pub struct Adopt {
    pub partition: u16,
    /// The partition's timers whose actors are this shard's: (key, due, payload).
    pub timers: Vec<RestoredTimer>,
    /// The checkpoints of this shard's finer partitions within it (0: none).
    pub checkpoints: Vec<(u16, u64)>,
    pub done: tokio::sync::oneshot::Sender<()>,
}

#[derive(Clone)]
pub struct Router {
    shards: Arc<[flume::Sender<ShardMsg>]>,
}

#[derive(Debug, thiserror::Error)]
#[error("the shards have stopped")]
pub struct Stopped;

impl Router {
    pub fn new(shards: usize, capacity: usize) -> (Router, Vec<flume::Receiver<ShardMsg>>) {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..shards.max(1)).map(|_| flume::bounded(capacity)).unzip();
        (Router { shards: txs.into() }, rxs)
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The partition of `actor`: a stable hash, so it survives restarts and any shard count.
    pub fn partition_of(actor: &str) -> u16 {
        (xxhash_rust::xxh3::xxh3_64(actor.as_bytes()) % u64::from(PARTITIONS)) as u16
    }

    /// The shard that owns `actor`: the one its partition belongs to.
    pub fn shard_of(&self, actor: &str) -> usize {
        self.shard_of_partition(Self::partition_of(actor))
    }

    /// The shard that owns `partition`.
    pub fn shard_of_partition(&self, partition: u16) -> usize {
        usize::from(partition) % self.shards.len()
    }

    /// Send an event to its actor's shard, waiting while that shard's queue is full.
    pub async fn route(&self, routed: Routed) -> Result<(), Stopped> {
        let shard = self.shard_of(&routed.event.actor);
        self.route_to(shard, routed).await
    }

    /// Send an event to `shard` (its actor's, see [`Router::shard_of`]), waiting while the
    /// shard's queue is full.
    pub async fn route_to(&self, shard: usize, routed: Routed) -> Result<(), Stopped> {
        let shard = &self.shards[shard];
        // Most of the time there is room: then the message moves into the queue once, without
        // the send future that would carry it (and be moved and polled) otherwise.
        match shard.try_send(ShardMsg::Event(routed)) {
            Ok(()) => Ok(()),
            Err(flume::TrySendError::Full(msg)) => shard.send_async(msg).await.map_err(|_| Stopped),
            Err(flume::TrySendError::Disconnected(_)) => Err(Stopped),
        }
    }

    /// Try to hand a message to `shard` without waiting (shard-to-shard traffic must never
    /// block, or two full shards could wait on each other forever). A full queue hands the
    /// message back so the caller keeps it, in order, without copying or boxing it.
    #[allow(clippy::result_large_err)]
    pub fn try_send(&self, shard: usize, msg: ShardMsg) -> Result<(), flume::TrySendError<ShardMsg>> {
        self.shards[shard].try_send(msg)
    }

    /// Events waiting in front of each shard.
    pub fn depths(&self) -> Vec<usize> {
        self.shards.iter().map(|s| s.len()).collect()
    }

    /// Ask the shard that owns `actor`, in order with the actor's events.
    pub async fn ask(&self, actor: &str, request: crate::actor::ActorRequest) -> Result<(), Stopped> {
        let shard = self.shard_of(actor);
        let msg = ShardMsg::Actor {
            actor: actor.to_owned(),
            request,
        };
        self.shards[shard].send_async(msg).await.map_err(|_| Stopped)
    }

    /// Wake every idle shard so it adopts a changed plugin set now. A full queue is skipped:
    /// that shard is busy and looks at the set between its batches anyway.
    pub fn nudge_all(&self) {
        for s in self.shards.iter() {
            let _ = s.try_send(ShardMsg::Reload);
        }
    }

    /// Hand a message to `shard`, waiting while its queue is full.
    pub async fn send_to(&self, shard: usize, msg: ShardMsg) -> Result<(), Stopped> {
        self.shards[shard].send_async(msg).await.map_err(|_| Stopped)
    }

    /// Ask every shard to finish and exit.
    pub async fn stop_all(&self) {
        for s in self.shards.iter() {
            let _ = s.send_async(ShardMsg::Stop).await;
        }
    }
}
