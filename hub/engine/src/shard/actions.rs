//! What happens to the actions a shard's plugins propose: they are judged together by the arbiter
//! once their input is done and recorded in the actor's ledger; a held one waits for its timer,
//! a delivered one goes to the delivery plugins subscribed to it or to `hub.actions.<name>`, and
//! what delivery plugins render goes to the channels' sinks.

use super::{ACTION_KIND_PREFIX, ARBITER_TIMERS, Cause, LEDGER_KEY, Shard};
use crate::arbiter::{Decision, Ledger, Outcome};
use crate::dead_letter::{DeadLetter, Reason};
use crate::delivery::Delivery;
use crate::egress::{Outbound, headers, subjects};
use crate::event::{Action, Event, Routed, now_ms};
use crate::metrics as m;
use crate::state::DueTimer;
use bytes::Bytes;
use std::time::Instant;

/// An action waiting for the arbiter.
pub(super) struct Proposal {
    pub(super) action: Action,
    /// When the input that caused it arrived.
    pub(super) received: Instant,
    /// A held action whose wait is over.
    pub(super) released: bool,
}

impl Shard {
    /// Queue a proposed action for the arbiter, which judges the input's actions together.
    pub(super) fn propose(&mut self, action: Action, received: Instant) {
        self.proposed.push(Proposal {
            action,
            received,
            released: false,
        });
    }

    /// A held action's wait is over: judge it again with what happened meanwhile.
    pub(super) fn release_held(&mut self, timer: &DueTimer) {
        match rmp_serde::from_slice::<Action>(&timer.payload) {
            Ok(action) => self.proposed.push(Proposal {
                action,
                received: Instant::now(),
                released: true,
            }),
            Err(e) => {
                let detail = format!("held action {} is unreadable: {e}", timer.id);
                let letter = DeadLetter::timer(Reason::Invalid, detail, &timer.id, &timer.payload);
                self.egress.push(letter.into_outbound());
            }
        }
    }

    /// Judge the proposed actions, highest rank first, record each decision in the actor's
    /// ledger, and send the delivered ones on.
    pub(super) fn arbitrate(&mut self) {
        let mut proposed = std::mem::take(&mut self.proposed);
        let policies = self.policies.load();
        proposed.sort_by_key(|p| std::cmp::Reverse(policies.rank(&p.action)));
        for Proposal {
            action,
            received,
            released,
        } in proposed.drain(..)
        {
            let mut ledger = self.ledger(&action.actor);
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
            self.store_ledger(&action.actor, &ledger);
            match outcome {
                Outcome::Delivered => {
                    self.actions_out.increment(1);
                    if !released {
                        // A held action waited on purpose; its wait is not latency.
                        self.event_to_action.record(received.elapsed().as_secs_f64());
                    }
                    self.send_action(action, received);
                }
                Outcome::Held { until } => match rmp_serde::to_vec_named(&action) {
                    Ok(payload) => {
                        let timers = &mut self.stores().timers;
                        timers.set(ARBITER_TIMERS, &action.actor, &action.id, until, payload);
                    }
                    Err(e) => tracing::error!(error = %e, action = action.id, "a held action cannot be stored"),
                },
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

    /// A delivered action goes to the delivery plugins subscribed to it; when none of them
    /// delivers it (none is subscribed, none has a route for it, or their calls failed), it
    /// goes to `hub.actions.<name>` (on the action stream, deduplicated by its id).
    fn send_action(&mut self, action: Action, received: Instant) {
        let mut kind = String::with_capacity(ACTION_KIND_PREFIX.len() + action.name.len());
        kind.push_str(ACTION_KIND_PREFIX);
        kind.push_str(&action.name);
        let takers = self.subscribers_of(&kind);
        if takers.is_empty() {
            self.publish_action(&action);
            return;
        }
        let routed = Routed {
            event: Event {
                id: action.id.clone(),
                kind,
                actor: action.actor.clone(),
                time: action.time,
                source: format!("plugin:{}", action.plugin),
                payload: action.payload.clone(),
            },
            hops: 0,
            received,
        };
        let deliveries_before = self.deliveries_made;
        for &p in takers.iter() {
            self.call(p, Cause::Event(&routed));
        }
        if self.deliveries_made == deliveries_before {
            self.publish_action(&action);
        }
    }

    fn publish_action(&mut self, action: &Action) {
        let body = match action.to_json() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, action = action.name, "action payload not representable as JSON");
                return;
            }
        };
        // What a consumer routes or deduplicates on without parsing the body.
        let mut h = async_nats::HeaderMap::new();
        h.insert(headers::MSG_ID, action.id.as_str());
        h.insert(headers::ACTOR, action.actor.as_str());
        h.insert(headers::CAUSE, action.cause.as_str());
        self.egress.push(Outbound {
            subject: subjects::join(subjects::ACTIONS, &action.name),
            headers: Some(h),
            payload: Bytes::from(body),
        });
    }

    /// Hand a rendered delivery to its channel's sink.
    pub(super) fn deliver(
        &mut self,
        p: usize,
        id: String,
        actor: &str,
        channel: String,
        target: String,
        body: Vec<u8>,
    ) {
        self.deliveries_made += 1;
        match self.deliveries.get(&channel) {
            Some(counter) => counter.increment(1),
            None => {
                let counter = metrics::counter!(m::DELIVERIES_OUT, "channel" => channel.clone());
                counter.increment(1);
                self.deliveries.insert(channel.clone(), counter);
            }
        }
        self.sinks.deliver(Delivery {
            id,
            actor: actor.to_owned(),
            channel,
            target,
            plugin: self.plugins[p].name.to_string(),
            body: Bytes::from(body),
        });
    }

    /// The actor's action ledger. One that cannot be read is kept aside (see
    /// `state::unreadable`) and decisions go on with an empty ledger, which replaces it.
    pub(super) fn ledger(&mut self, actor: &str) -> Ledger {
        let slot = self.actions_slot;
        let error = match self.stores().state.get(slot, actor, LEDGER_KEY) {
            Ok(None) => return Ledger::default(),
            Ok(Some(bytes)) => match Ledger::from_bytes(bytes) {
                Ok(ledger) => return ledger,
                Err(e) => {
                    let mut key = Vec::new();
                    crate::state::keys::state_key(&mut key, actor, LEDGER_KEY);
                    let bytes = bytes.to_vec();
                    crate::state::unreadable::keep_aside(self.db.sled(), "actions", &key, &bytes, &e);
                    return Ledger::default();
                }
            },
            Err(e) => e,
        };
        tracing::error!(error = %error, actor, "action ledger cannot be read from sled; deciding without it");
        Ledger::default()
    }

    fn store_ledger(&mut self, actor: &str, ledger: &Ledger) {
        let slot = self.actions_slot;
        match ledger.to_bytes() {
            Ok(bytes) => self.stores().state.set(slot, actor, LEDGER_KEY, Some(bytes)),
            Err(e) => tracing::error!(error = %e, actor, "action ledger not recorded"),
        }
    }
}
