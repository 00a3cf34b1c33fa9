//! The arbiter on a shard: it collects the actions proposed while one input is handled, judges
//! them together once the input is done (highest rank first), records each decision in the
//! actor's ledger, parks held actions on a durable timer of its own and judges them again when
//! it fires.

use super::{Decision, Ledger, Outcome, PolicyStore};
use crate::dead_letter::{DeadLetter, Reason};
use crate::event::{Action, now_ms};
use crate::metrics as m;
use crate::runtime::ShardStores;
use crate::state::{Db, DueTimer, PluginSlot, StateCache, keys, unreadable};
use rustc_hash::FxHashMap;
use std::time::Instant;

/// The owner of the timers that release held actions, in the shard's timer wheel and timer log
/// (plugin names have no dots, so no plugin can own it).
pub(crate) const HELD_ACTIONS: &str = "hub.arbiter";

/// The key of an actor's ledger in the `actions` tree.
const LEDGER_KEY: &str = "ledger";

/// An action waiting for the arbiter.
struct Proposal {
    action: Action,
    /// When the input that caused it arrived.
    received: Instant,
    /// A held action whose wait is over.
    released: bool,
}

/// An action the arbiter let through, on its way to delivery.
pub(crate) struct Delivered {
    pub action: Action,
    /// When the input that caused it arrived.
    pub received: Instant,
}

pub(crate) struct Judge {
    policies: PolicyStore,
    db: sled::Db,
    /// Cache slot of the actors' ledgers (the `actions` tree).
    slot: PluginSlot,
    proposed: Vec<Proposal>,
    /// Decision counters by category and reason, so the hot path neither registers nor allocates.
    decisions: FxHashMap<String, FxHashMap<&'static str, metrics::Counter>>,
    actions_out: metrics::Counter,
    tenant_actions: crate::tenant::Counted,
    event_to_action: metrics::Histogram,
}

impl Judge {
    pub fn new(policies: PolicyStore, db: &Db, state: &mut StateCache, shard: usize) -> Judge {
        let shard = shard.to_string();
        Judge {
            policies,
            db: db.sled().clone(),
            slot: state.add_plugin(db.actions.clone()),
            proposed: Vec::new(),
            decisions: FxHashMap::default(),
            actions_out: metrics::counter!(m::ACTIONS_OUT, "shard" => shard.clone()),
            tenant_actions: crate::tenant::Counted::new(m::TENANT_ACTIONS),
            event_to_action: metrics::histogram!(m::EVENT_TO_ACTION_SECONDS, "shard" => shard),
        }
    }

    /// Queue a proposed action; the input's actions are judged together when it is done.
    pub fn propose(&mut self, action: Action, received: Instant) {
        self.proposed.push(Proposal {
            action,
            received,
            released: false,
        });
    }

    pub fn has_proposals(&self) -> bool {
        !self.proposed.is_empty()
    }

    /// Park a held action until `until`, on a durable timer.
    fn hold(&self, stores: &mut ShardStores, action: &Action, until: i64) {
        match rmp_serde::to_vec_named(action) {
            Ok(payload) => stores
                .timers
                .set(HELD_ACTIONS, &action.actor, &action.id, until, payload),
            Err(e) => tracing::error!(error = %e, action = action.id, "a held action cannot be stored"),
        }
    }

    /// A held action's wait is over (`timer` is one of [`HELD_ACTIONS`]): judge it again, with
    /// what happened meanwhile, at the next [`Judge::judge`].
    pub fn release(&mut self, timer: &DueTimer) -> Result<(), Box<DeadLetter>> {
        match rmp_serde::from_slice::<Action>(&timer.payload) {
            Ok(action) => {
                self.proposed.push(Proposal {
                    action,
                    received: Instant::now(),
                    released: true,
                });
                Ok(())
            }
            Err(e) => {
                let detail = format!("held action {} is unreadable: {e}", timer.id);
                Err(Box::new(DeadLetter::timer(
                    Reason::Invalid,
                    detail,
                    &timer.actor,
                    &timer.id,
                    &timer.payload,
                )))
            }
        }
    }

    /// Judge the proposed actions, highest rank first; record each decision in the actor's
    /// ledger and hold what must wait. The delivered ones are appended to `delivered`, in rank
    /// order.
    pub fn judge(&mut self, stores: &mut ShardStores, delivered: &mut Vec<Delivered>) {
        let mut proposed = std::mem::take(&mut self.proposed);
        // Each actor by its tenant's policies (or the hub's).
        let store = &self.policies;
        proposed.sort_by_key(|p| std::cmp::Reverse(store.for_actor(&p.action.actor).rank(&p.action)));
        for Proposal {
            action,
            received,
            released,
        } in proposed.drain(..)
        {
            let policies = self.policies.for_actor(&action.actor);
            let mut ledger = self.ledger(&mut stores.state, &action.actor);
            let decision = ledger.decide(&policies, &action, now_ms(), released);
            let (verdict, reason) = match &decision {
                Decision::Replayed => ("replayed", "replayed"),
                Decision::Decided(Outcome::Delivered) => ("delivered", "none"),
                Decision::Decided(Outcome::Held { .. }) => ("held", "held"),
                Decision::Decided(Outcome::Suppressed(r)) => ("suppressed", r.label()),
            };
            self.count_decision(&action.category, verdict, reason);
            let Decision::Decided(outcome) = decision else {
                continue;
            };
            self.store_ledger(&mut stores.state, &action.actor, &ledger);
            match outcome {
                Outcome::Delivered => {
                    self.actions_out.increment(1);
                    self.tenant_actions.count(&action.actor);
                    if !released {
                        // A held action waited on purpose; its wait is not latency.
                        self.event_to_action.record(received.elapsed().as_secs_f64());
                    }
                    delivered.push(Delivered { action, received });
                }
                Outcome::Held { until } => self.hold(stores, &action, until),
                Outcome::Suppressed(_) => {}
            }
        }
        // Keep the buffer's capacity for the next input.
        self.proposed = proposed;
    }

    fn count_decision(&mut self, category: &str, decision: &'static str, reason: &'static str) {
        if let Some(counter) = self.decisions.get(category).and_then(|by_reason| by_reason.get(reason)) {
            counter.increment(1);
            return;
        }
        let counter = metrics::counter!(m::ACTION_DECISIONS, "category" => category.to_owned(), "decision" => decision, "reason" => reason);
        counter.increment(1);
        self.decisions
            .entry(category.to_owned())
            .or_default()
            .insert(reason, counter);
    }

    /// The actor's ledger. One that cannot be read is kept aside (see `state::unreadable`) and
    /// decisions go on with an empty ledger, which replaces it.
    pub fn ledger(&self, state: &mut StateCache, actor: &str) -> Ledger {
        let error = match state.get(self.slot, actor, LEDGER_KEY) {
            Ok(None) => return Ledger::default(),
            Ok(Some(bytes)) => match Ledger::from_bytes(bytes) {
                Ok(ledger) => return ledger,
                Err(e) => {
                    let mut key = Vec::new();
                    keys::state_key(&mut key, actor, LEDGER_KEY);
                    let bytes = bytes.to_vec();
                    unreadable::keep_aside(&self.db, "actions", &key, &bytes, &e);
                    return Ledger::default();
                }
            },
            Err(e) => e,
        };
        tracing::error!(error = %error, actor, "action ledger cannot be read from sled; deciding without it");
        Ledger::default()
    }

    fn store_ledger(&self, state: &mut StateCache, actor: &str, ledger: &Ledger) {
        match ledger.to_bytes() {
            Ok(bytes) => state.set(self.slot, actor, LEDGER_KEY, Some(bytes)),
            Err(e) => tracing::error!(error = %e, actor, "action ledger not recorded"),
        }
    }

    /// Erase the actor's ledger; returns how many entries it had.
    pub fn forget(&self, state: &mut StateCache, actor: &str) -> usize {
        let entries = self.ledger(state, actor).entries.len();
        state.set(self.slot, actor, LEDGER_KEY, None);
        entries
    }
}
