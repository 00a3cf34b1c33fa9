//! The arbiter: between the actions scenarios propose and their delivery, it decides per actor
//! whether each one reaches the customer, so that support outranks marketing and nobody is
//! flooded.
//!
//! It runs on the actor's shard, right after the input that caused the actions ([`Judge`]), with
//! the actor's [`Ledger`] from the shard's state cache: a pure function of the policies, the
//! ledger and the proposal, so it needs no lock and no I/O. Every decision, delivered or
//! suppressed with its reason, is appended to the ledger, which `GET /api/actors/{id}` shows.
//! A held action waits on a durable timer of the arbiter's own ([`HELD_ACTIONS`]).

mod judge;
mod ledger;
mod policy;
mod store;

pub use crate::limits::MAX_LIMIT;
pub(crate) use judge::{Delivered, HELD_ACTIONS, Judge};
pub use ledger::{Decision, Entry, Ledger, LedgerError, Outcome, Reason};
pub use policy::{CategoryPolicy, Limit, Policies, Suppression};
pub use store::{PolicyError, PolicyStore};
