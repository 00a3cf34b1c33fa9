//! Where everything leaves the hub: actions, emitted events and dead letters are encoded on the
//! shard (or ingress) that produced them and handed to one publisher task over a bounded queue,
//! so shards never wait on the network and a slow NATS connection pushes back instead of
//! growing memory.

use async_nats::HeaderMap;
use bytes::Bytes;
use std::time::Duration;

/// A message to publish.
#[derive(Debug)]
pub struct Outbound {
    pub subject: String,
    pub headers: Option<HeaderMap>,
    pub payload: Bytes,
}

/// The sending side of the publisher queue; cheap to clone.
#[derive(Clone)]
pub struct Egress {
    tx: flume::Sender<Outbound>,
}

/// Subject prefixes of what the hub publishes.
pub mod subjects {
    pub const ACTIONS: &str = "hub.actions";
    pub const EVENTS: &str = "hub.events";
    pub const DEAD_LETTERS: &str = "hub.dlq";
    pub const DELIVERIES: &str = "hub.deliveries";
}

/// Header names the hub sets.
pub mod headers {
    pub const MSG_ID: &str = "Nats-Msg-Id";
    pub const ACTOR: &str = "Hub-Actor";
    pub const CAUSE: &str = "Hub-Cause";
    pub const PLUGIN: &str = "Hub-Plugin";
    pub const EVENT_ID: &str = "Hub-Event-Id";
    pub const TARGET: &str = "Hub-Target";
    pub const DLQ_REASON: &str = "Hub-Dlq-Reason";
    pub const DLQ_SUBJECT: &str = "Hub-Dlq-Subject";
}

impl Egress {
    pub fn new(capacity: usize) -> (Egress, flume::Receiver<Outbound>) {
        let (tx, rx) = flume::bounded(capacity);
        (Egress { tx }, rx)
    }

    /// Queue a message from a shard thread; blocks while the queue is full (backpressure).
    pub fn send_blocking(&self, msg: Outbound) {
        if self.tx.send(msg).is_err() {
            tracing::warn!("publisher stopped; an outbound message was dropped at shutdown");
        }
    }

    /// Queue a message from async code.
    pub async fn send(&self, msg: Outbound) {
        if self.tx.send_async(msg).await.is_err() {
            tracing::warn!("publisher stopped; an outbound message was dropped at shutdown");
        }
    }

    pub fn queued(&self) -> usize {
        self.tx.len()
    }
}

/// Why something could not be processed, and everything needed to inspect or replay it.
pub struct DeadLetter<'a> {
    /// Short machine-readable reason: the last token of `hub.dlq.<reason>`.
    pub reason: &'static str,
    /// What went wrong, for a person.
    pub detail: &'a str,
    /// The subject the input arrived on (or `plugin:<name>` for emitted events).
    pub subject: &'a str,
    pub plugin: Option<&'a str>,
    pub event_id: Option<&'a str>,
    /// The original bytes, or the event's JSON envelope (replayable on `events.<kind>`).
    pub body: Bytes,
}

impl DeadLetter<'_> {
    pub fn into_outbound(self) -> Outbound {
        metrics::counter!(crate::metrics::DEAD_LETTERS, "reason" => self.reason).increment(1);
        tracing::debug!(
            reason = self.reason,
            detail = self.detail,
            subject = self.subject,
            "dead letter"
        );
        let mut h = HeaderMap::new();
        h.insert(headers::DLQ_REASON, header_safe(self.detail).as_str());
        h.insert(headers::DLQ_SUBJECT, header_safe(self.subject).as_str());
        if let Some(p) = self.plugin {
            h.insert(headers::PLUGIN, header_safe(p).as_str());
        }
        if let Some(id) = self.event_id {
            h.insert(headers::EVENT_ID, header_safe(id).as_str());
        }
        Outbound {
            subject: format!("{}.{}", subjects::DEAD_LETTERS, self.reason),
            headers: Some(h),
            payload: self.body,
        }
    }
}

/// Header values are one line of printable text.
fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1024)
        .collect()
}

/// Publish everything queued until every sender is gone, then flush the connection.
pub async fn run_publisher(client: async_nats::Client, rx: flume::Receiver<Outbound>) {
    while let Ok(msg) = rx.recv_async().await {
        publish(&client, msg).await;
        // Drain what is already queued before yielding again.
        for msg in rx.try_iter().take(1024) {
            publish(&client, msg).await;
        }
    }
    if tokio::time::timeout(Duration::from_secs(5), client.flush())
        .await
        .is_err()
    {
        tracing::warn!("NATS flush at shutdown timed out");
    }
}

async fn publish(client: &async_nats::Client, msg: Outbound) {
    let result = match msg.headers {
        Some(h) => client.publish_with_headers(msg.subject, h, msg.payload).await,
        None => client.publish(msg.subject, msg.payload).await,
    };
    if let Err(e) = result {
        metrics::counter!(crate::metrics::PUBLISH_ERRORS).increment(1);
        tracing::error!(error = %e, "publish failed");
    }
}
