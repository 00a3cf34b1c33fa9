//! Where rendered deliveries go: each channel has a sink.
//!
//! - `nats` (any channel not configured otherwise): published on `hub.deliveries.<channel>`,
//!   which the action stream keeps, with `Nats-Msg-Id` = the delivery's deterministic id;
//! - `webhook`: an HTTP POST with a timeout, retries with exponential back-off, a limit on
//!   requests in flight, and a dead letter after the last retry ([`webhook`]);
//! - `push` (the `push` channel by default): the devices connected on `/push/{target}` ([`push`]).
//!
//! Shards hand deliveries over with a non-blocking `try_send` into bounded queues: a slow or
//! failing sink never stalls a shard. A full queue is counted and dead-lettered
//! (`hub.dlq.sink_overflow`) with the delivery, so nothing vanishes. What goes out over NATS (the
//! `nats` sink, those dead letters) goes back to the shard's egress batch, in turn order.
//!
//! [`Dispatch`] is the shard's side: how a delivered action reaches the delivery plugins
//! subscribed to it, or `hub.actions.<name>` when none renders it.

mod dispatch;
pub mod push;
pub mod webhook;

pub(crate) use dispatch::Dispatch;

use crate::config::ChannelConfig;
use crate::dead_letter::{DeadLetter, Reason};
use crate::egress::{Egress, Outbound, headers, subjects};
use crate::metrics as m;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;

/// One rendered message for one channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Deterministic (derived from the action's id): receivers can deduplicate on it.
    pub id: String,
    pub actor: String,
    pub channel: String,
    pub target: String,
    /// The delivery plugin that rendered it.
    pub plugin: String,
    pub body: Bytes,
}

impl Delivery {
    /// The delivery as a dead letter; replaying it hands it to its channel's sink again.
    pub fn dead_letter(&self, reason: Reason, detail: &str) -> Outbound {
        DeadLetter::delivery(reason, detail, self).into_outbound()
    }

    /// The delivery as published on `hub.deliveries.<channel>`.
    pub(crate) fn outbound(&self) -> Outbound {
        let mut h = async_nats::HeaderMap::new();
        h.insert(headers::MSG_ID, self.id.as_str());
        crate::tenant::insert_actor(&mut h, headers::ACTOR, &self.actor, str::to_owned);
        h.insert(headers::TARGET, self.target.as_str());
        h.insert(headers::PLUGIN, self.plugin.as_str());
        Outbound {
            subject: subjects::join(subjects::DELIVERIES, &self.channel),
            headers: Some(h),
            payload: self.body.clone(),
        }
    }
}

enum Sink {
    Nats,
    Webhook(webhook::Webhook),
    Push,
}

/// Every channel's sink; cheap to clone, shared by the shards.
#[derive(Clone)]
pub struct Sinks {
    channels: Arc<HashMap<String, Sink>>,
    push: push::PushHub,
}

impl Sinks {
    /// Start the sinks of the configured channels (on the current tokio runtime).
    pub fn start(
        channels: &std::collections::BTreeMap<String, ChannelConfig>,
        push: push::PushHub,
        egress: Egress,
    ) -> Sinks {
        let client = reqwest::Client::new();
        let mut sinks: HashMap<String, Sink> = channels
            .iter()
            .map(|(name, config)| {
                let sink = match config {
                    ChannelConfig::Nats => Sink::Nats,
                    ChannelConfig::Push => Sink::Push,
                    ChannelConfig::Webhook(w) => {
                        Sink::Webhook(webhook::Webhook::start(name, w.clone(), client.clone(), egress.clone()))
                    }
                };
                (name.clone(), sink)
            })
            .collect();
        sinks.entry("push".to_owned()).or_insert(Sink::Push);
        Sinks {
            channels: Arc::new(sinks),
            push,
        }
    }

    /// Hand a delivery to its channel's sink, without waiting. What is to be published instead
    /// (the `nats` sink's message, or the dead letter of a full queue) is returned, for the
    /// caller's egress batch.
    pub fn deliver(&self, delivery: Delivery) -> Option<Outbound> {
        let refused = match self.channels.get(&delivery.channel).unwrap_or(&Sink::Nats) {
            Sink::Nats => return Some(delivery.outbound()),
            Sink::Webhook(w) => w.offer(delivery),
            Sink::Push => self.push.offer(delivery),
        };
        let delivery = refused.err()?;
        metrics::counter!(m::SINK_OVERFLOW, "channel" => delivery.channel.clone()).increment(1);
        let detail = format!("the {} sink's queue is full", delivery.channel);
        Some(delivery.dead_letter(Reason::SinkOverflow, &detail))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot create or update the action stream {stream}: {source}")]
pub struct StreamError {
    stream: String,
    source: async_nats::jetstream::context::CreateStreamError,
}

/// Create (or bring up to date) the JetStream stream that keeps actions and deliveries. Its
/// duplicate window is what makes a replay deliver nothing twice.
pub async fn ensure_action_stream(
    client: &async_nats::Client,
    config: &crate::config::ActionsConfig,
) -> Result<(), StreamError> {
    use async_nats::jetstream::stream;
    let js = async_nats::jetstream::new(client.clone());
    let stream = stream::Config {
        name: config.stream.clone(),
        subjects: [subjects::ACTIONS, subjects::DELIVERIES]
            .into_iter()
            .chain(config.keep_events.then_some(subjects::EVENTS))
            .map(|prefix| format!("{prefix}.>"))
            .collect(),
        duplicate_window: config.dedup_window,
        max_age: config.max_age,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    js.create_or_update_stream(stream).await.map_err(|source| StreamError {
        stream: config.stream.clone(),
        source,
    })?;
    Ok(())
}
