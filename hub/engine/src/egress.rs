//! Where everything leaves the hub: actions, emitted events and dead letters are encoded on the
//! shard (or ingress task) that produced them and handed straight to the NATS client.
//!
//! The client's outbound command queue is bounded (`nats.outbound_capacity`); a shard waits only
//! when it is full, so a slow NATS connection pushes back instead of growing memory. Shards hand
//! messages over without a task of our own in between: async-nats' publish is a send on a tokio
//! channel, which works from any thread, so a plain thread completes it with `block_on`. A shard
//! collects what one turn of its loop publishes ([`Batcher`]) and hands it over at the end of the
//! turn: published one by one between plugin calls, nearly every message woke the connection's
//! task anew (a cross-thread wake-up each) and left the connection as a small write of its own.
//! That batch is a shard's one way out, so outputs leave in the order the turn produced them.
//!
//! An [`Egress`] can also keep what it is handed in memory ([`Egress::captured`]): shards then run
//! without NATS, for the shard's own tests and for runs whose outputs are compared, not sent.

use async_nats::HeaderMap;
use bytes::Bytes;
use std::sync::{Arc, Mutex, PoisonError};

/// A message to publish.
#[derive(Debug)]
pub struct Outbound {
    pub subject: String,
    pub headers: Option<HeaderMap>,
    pub payload: Bytes,
}

/// Publishes for the hub; cheap to clone.
#[derive(Clone)]
pub struct Egress {
    outlet: Outlet,
}

#[derive(Clone)]
enum Outlet {
    Nats(async_nats::Client),
    Captured(Captured),
}

/// What a captured [`Egress`] was handed, in order.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<Outbound>>>);

impl Captured {
    /// Everything handed over since the last call.
    pub fn take(&self) -> Vec<Outbound> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn keep(&self, msgs: impl Iterator<Item = Outbound>) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).extend(msgs);
    }
}

/// Subject prefixes of what the hub publishes.
pub mod subjects {
    pub const ACTIONS: &str = "hub.actions";
    pub const EVENTS: &str = "hub.events";
    pub const DEAD_LETTERS: &str = "hub.dlq";
    pub const DELIVERIES: &str = "hub.deliveries";

    /// `<prefix>.<name>`, without the formatting machinery (this runs for every output).
    pub fn join(prefix: &str, name: &str) -> String {
        let mut s = String::with_capacity(prefix.len() + 1 + name.len());
        s.push_str(prefix);
        s.push('.');
        s.push_str(name);
        s
    }
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
    pub fn new(client: async_nats::Client) -> Egress {
        Egress {
            outlet: Outlet::Nats(client),
        }
    }

    /// An egress that keeps what it is handed instead of publishing it.
    pub fn captured() -> (Egress, Captured) {
        let captured = Captured::default();
        let egress = Egress {
            outlet: Outlet::Captured(captured.clone()),
        };
        (egress, captured)
    }

    /// Publish from async code.
    pub async fn send(&self, msg: Outbound) {
        self.send_all(std::iter::once(msg)).await;
    }

    /// Publish in order; waits while the client's queue is full.
    async fn send_all(&self, msgs: impl Iterator<Item = Outbound>) {
        match &self.outlet {
            Outlet::Nats(client) => {
                for msg in msgs {
                    publish(client, msg).await;
                }
            }
            Outlet::Captured(captured) => captured.keep(msgs),
        }
    }

    /// Wait until everything published so far is written to the connection.
    pub async fn flush(&self) {
        let Outlet::Nats(client) = &self.outlet else {
            return;
        };
        if tokio::time::timeout(crate::limits::NATS_FLUSH_TIMEOUT, client.flush())
            .await
            .is_err()
        {
            tracing::warn!("NATS flush timed out");
        }
    }
}

/// Messages a shard publishes during one turn of its loop, handed to the client together.
pub struct Batcher {
    egress: Egress,
    pending: Vec<Outbound>,
}

use crate::limits::MAX_PENDING_PUBLISHES as MAX_PENDING;

impl Batcher {
    pub fn new(egress: Egress) -> Batcher {
        Batcher {
            egress,
            pending: Vec::with_capacity(256),
        }
    }

    pub fn push(&mut self, msg: Outbound) {
        self.pending.push(msg);
        if self.pending.len() >= MAX_PENDING {
            self.flush();
        }
    }

    /// Hand everything collected to the client, in order; blocks while its queue is full
    /// (so never call it from async code).
    pub fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        futures::executor::block_on(self.egress.send_all(self.pending.drain(..)));
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

/// A round trip to the server and back on `client`'s connection. The server handles a
/// connection's messages in order and writes to it in order, so once the probe is back,
/// everything published on the connection before has reached the server, and every
/// subscription made before is in place. False when no answer comes within `timeout`.
pub async fn round_trip(client: &async_nats::Client, timeout: std::time::Duration) -> bool {
    use futures::StreamExt;
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // The server's id for this connection keeps probes of other clients apart.
    let subject = format!("_hub.probe.{}.{n}", client.server_info().client_id);
    let Ok(mut probe) = client.subscribe(subject.clone()).await else {
        return false;
    };
    let answered = async {
        client.publish(subject, Bytes::new()).await.ok()?;
        probe.next().await
    };
    let ok = tokio::time::timeout(timeout, answered).await.ok().flatten().is_some();
    let _ = probe.unsubscribe().await;
    ok
}
