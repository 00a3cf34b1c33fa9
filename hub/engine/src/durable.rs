//! Durable ingestion: inputs come from a JetStream stream through the hub's durable consumer,
//! and each one's effects happen once, across crashes.
//!
//! - Every stream input carries a [`Ticket`] to its shard. The shard keeps, per partition of the
//!   actors, the stream sequence of the last input it applied ([`Checkpoints`]), and commits it
//!   in the *same* sled transaction as the state those inputs produced. An input delivered again
//!   (after a crash, or a late acknowledgement) whose sequence is not above its partition's
//!   checkpoint was applied already, and is skipped.
//! - Before the committer applies a commit it confirms with the NATS server that everything the
//!   shards published before it (emitted events, actions, deliveries) has reached the server:
//!   there is no moment at which the state of an input is on disk and its outputs are not out.
//!   Outputs published again by a replay carry the same ids (derived from the cause) and the
//!   output stream drops them (`Nats-Msg-Id`).
//! - An input is acknowledged once the commit that reflects it is flushed to disk ([`Acks`]);
//!   one acknowledgement covers every earlier input (`AckPolicy::All`). At start the consumer
//!   resumes right after the last acknowledged input, so nothing between it and the
//!   checkpoints is skipped by waiting for the server's redelivery timer.
//! - An event a plugin emits for an actor of another shard crosses through the `handoffs` tree,
//!   written with its cause's commit and removed with its own effects' ([`Handoffs`]).

mod acks;
mod admission;
mod checkpoints;
pub mod guard;
mod handoffs;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub use acks::Acks;
pub use admission::Admission;
pub(crate) use admission::Bucket;
pub use checkpoints::{CheckpointError, Checkpoints, adopt_stream};
pub use handoffs::{Handoff, HandoffError, HandoffKey, Handoffs};

/// Where a stream input stands in the hub: its stream sequence, and its place in its shard's
/// queue (what the shard reports as handled; see [`Acks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub seq: u64,
    pub ordinal: u64,
    /// The stream it came from (see `Checkpoints::load`): 0 for the input stream.
    pub source: u16,
    /// When the stream stored it (ns since the Unix epoch, by nats-server's clock).
    pub stored_ns: i64,
}

/// What the committer reports once commits are flushed to disk: per shard, the ordinal of the
/// last input its flushed commits cover, and the number of this flush.
#[derive(Debug, Clone, Default)]
pub struct Flushed {
    pub shards: Vec<(usize, u64)>,
    pub flush: u64,
}

/// Numbers the committer's flushes, so an input handled without a shard (a dead letter, a
/// profile update: written at once) knows which flush makes it durable: the first one that
/// starts after it.
#[derive(Debug, Default)]
pub struct FlushClock {
    started: AtomicU64,
    /// An input handled without a shard waits for a flush even when no shard commits.
    wanted: AtomicBool,
}

impl FlushClock {
    /// The flush that will cover what was written before this call; asks for one.
    pub fn next(&self) -> u64 {
        self.wanted.store(true, Ordering::Release);
        self.started.load(Ordering::Acquire) + 1
    }

    /// A flush starts: its number.
    pub fn start(&self) -> u64 {
        self.started.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Whether a flush was asked for since the last call.
    pub fn take_wanted(&self) -> bool {
        self.wanted.swap(false, Ordering::AcqRel)
    }
}
