//! The shard's side of delivery. A delivered action goes to the delivery plugins subscribed to
//! `action.<name>`, called with it as an event of that kind; what they render goes to its
//! channel's sink; an action none of them renders goes to `hub.actions.<name>` (on the action
//! stream, deduplicated by its id).

use super::{Delivery, Sinks};
use crate::egress::{Outbound, headers, subjects};
use crate::event::{ACTION_KIND_PREFIX, Action, Event, Routed};
use crate::metrics as m;
use bytes::Bytes;
use rustc_hash::FxHashMap;
use std::time::Instant;

pub(crate) struct Dispatch {
    sinks: Sinks,
    /// Deliveries handed to the sinks so far: tells whether delivery plugins rendered an action.
    made: u64,
    /// Delivery counters by channel, so the hot path neither registers nor allocates.
    counters: FxHashMap<String, metrics::Counter>,
}

impl Dispatch {
    pub fn new(sinks: Sinks) -> Dispatch {
        Dispatch {
            sinks,
            made: 0,
            counters: FxHashMap::default(),
        }
    }

    /// The event kind delivery plugins subscribe to for actions named `name`.
    pub fn action_kind(name: &str) -> String {
        let mut kind = String::with_capacity(ACTION_KIND_PREFIX.len() + name.len());
        kind.push_str(ACTION_KIND_PREFIX);
        kind.push_str(name);
        kind
    }

    /// The action as the event its delivery plugins are called with (`kind` from
    /// [`Dispatch::action_kind`]).
    pub fn action_event(action: &Action, kind: String, received: Instant) -> Routed {
        Routed {
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
            input: None,
            only: None,
        }
    }

    /// How many deliveries were handed to the sinks so far.
    pub fn made(&self) -> u64 {
        self.made
    }

    /// Hand a rendered delivery to its channel's sink; returns what is to be published instead
    /// (see [`Sinks::deliver`]).
    pub fn deliver(&mut self, delivery: Delivery) -> Option<Outbound> {
        self.made += 1;
        match self.counters.get(&delivery.channel) {
            Some(counter) => counter.increment(1),
            None => {
                let counter = metrics::counter!(m::DELIVERIES_OUT, "channel" => delivery.channel.clone());
                counter.increment(1);
                self.counters.insert(delivery.channel.clone(), counter);
            }
        }
        self.sinks.deliver(delivery)
    }

    /// The action as published on `hub.actions.<name>`, with what a consumer routes or
    /// deduplicates on in its headers.
    pub fn action_message(action: &Action) -> Option<Outbound> {
        let body = match action.to_json() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, action = action.name, "action payload not representable as JSON");
                return None;
            }
        };
        let mut h = async_nats::HeaderMap::new();
        h.insert(headers::MSG_ID, action.id.as_str());
        crate::tenant::insert_actor(&mut h, headers::ACTOR, &action.actor, str::to_owned);
        h.insert(headers::CAUSE, action.cause.as_str());
        Some(Outbound {
            subject: subjects::join(subjects::ACTIONS, &action.name),
            headers: Some(h),
            payload: Bytes::from(body),
        })
    }
}
