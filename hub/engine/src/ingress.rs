//! Where events enter: core NATS subscriptions on `events.>` (envelopes in JSON or MessagePack)
//! and on the subjects of ingest rules (raw legacy messages); and profile updates on
//! `profiles.<actor>` (JSON objects merged into the actor's profile). Each message is decoded into an
//! [`Event`](crate::event::Event) and routed to its actor's shard; anything that cannot be
//! decoded goes to `hub.dlq.<reason>` with the reason, so nothing is dropped silently.

mod envelope;
mod rules;
mod transcode;

pub use envelope::decode_envelope;
pub use rules::{CompiledRule, RuleSet, decode_raw};

use crate::config::NatsConfig;
use crate::dead_letter::{DeadLetter, Reason};
use crate::egress::Egress;
use crate::event::Routed;
use crate::router::Router;
use crate::state::{ProfileError, Profiles};
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why an input could not become an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct IngressError {
    /// `Undecodable`, `Invalid` or `NoRule`.
    pub reason: Reason,
    pub detail: String,
}

impl IngressError {
    pub fn undecodable(detail: impl Into<String>) -> Self {
        IngressError {
            reason: Reason::Undecodable,
            detail: detail.into(),
        }
    }
    pub fn invalid(detail: impl Into<String>) -> Self {
        IngressError {
            reason: Reason::Invalid,
            detail: detail.into(),
        }
    }
}

/// Ids for events that arrive without one: unique per process start and message.
pub struct IdGen {
    prefix: String,
    seq: AtomicU64,
}

impl IdGen {
    pub fn new() -> IdGen {
        IdGen {
            prefix: format!("{:x}", crate::event::now_ms()),
            seq: AtomicU64::new(0),
        }
    }
    pub fn next(&self) -> String {
        format!("{}-{}", self.prefix, self.seq.fetch_add(1, Ordering::Relaxed))
    }
}

impl Default for IdGen {
    fn default() -> Self {
        Self::new()
    }
}

/// What one subscription turns messages into.
enum Decoder {
    Envelope {
        prefix: String,
    },
    Raw {
        rules: RuleSet,
    },
    /// Not events: merge patches for the profile of the actor named by the subject's tail.
    Profile {
        prefix: String,
        profiles: Profiles,
    },
}

/// The running subscriptions.
pub struct Ingress {
    client: async_nats::Client,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Ingress {
    /// Subscribe to `<events_subject>.>`, `<profiles_subject>.>` and every ingest rule's subject.
    pub async fn start(
        client: &async_nats::Client,
        nats: &NatsConfig,
        rules: Vec<CompiledRule>,
        router: Router,
        egress: Egress,
        profiles: Profiles,
    ) -> Result<Ingress, async_nats::SubscribeError> {
        let (stop, stopped) = watch::channel(false);
        let ids = Arc::new(IdGen::new());
        let (events, people) = (&nats.events_subject, &nats.profiles_subject);
        let mut subscriptions = vec![
            (
                format!("{events}.>"),
                Decoder::Envelope {
                    prefix: format!("{events}."),
                },
            ),
            (
                format!("{people}.>"),
                Decoder::Profile {
                    prefix: format!("{people}."),
                    profiles,
                },
            ),
        ];
        let mut by_subject: Vec<(String, Vec<CompiledRule>)> = Vec::new();
        for rule in rules {
            match by_subject.iter_mut().find(|(s, _)| *s == rule.subject()) {
                Some((_, list)) => list.push(rule),
                None => by_subject.push((rule.subject().to_owned(), vec![rule])),
            }
        }
        subscriptions.extend(by_subject.into_iter().map(|(s, rules)| {
            (
                s,
                Decoder::Raw {
                    rules: RuleSet::new(rules),
                },
            )
        }));

        let mut tasks = Vec::new();
        for (subject, decoder) in subscriptions {
            let sub = client.subscribe(subject.clone()).await?;
            tracing::info!(subject, "ingress subscribed");
            let task = Task {
                decoder,
                router: router.clone(),
                egress: egress.clone(),
                ids: ids.clone(),
                events_in: metrics::counter!(crate::metrics::EVENTS_IN, "subject" => subject),
            };
            tasks.push(tokio::spawn(task.run(sub, stopped.clone())));
        }
        round_trip(client).await?;
        Ok(Ingress {
            client: client.clone(),
            stop,
            tasks,
        })
    }

    /// Stop taking input: everything the server routed to the hub before this call is still
    /// routed to the shards before it returns.
    pub async fn stop(self) {
        if let Err(e) = round_trip(&self.client).await {
            tracing::warn!(error = %e, "no round trip with NATS at shutdown; in-flight input may be lost");
        }
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// A round trip to the server and back on the hub's connection. The server handles a
/// connection's messages in order and writes to it in order, so once the probe is back, every
/// subscription made before is in place at the server (start), and every message routed to us
/// before is in our subscriptions' buffers (stop).
async fn round_trip(client: &async_nats::Client) -> Result<(), async_nats::SubscribeError> {
    let subject = format!("_hub.ready.{}", IdGen::new().next());
    let mut probe = client.subscribe(subject.clone()).await?;
    let confirmed = async {
        client.publish(subject, bytes::Bytes::new()).await.ok()?;
        probe.next().await
    };
    if tokio::time::timeout(crate::limits::SUBSCRIBE_CONFIRM_TIMEOUT, confirmed)
        .await
        .ok()
        .flatten()
        .is_none()
    {
        tracing::warn!("no answer from NATS to a round trip within 5 s");
    }
    let _ = probe.unsubscribe().await;
    Ok(())
}

struct Task {
    decoder: Decoder,
    router: Router,
    egress: Egress,
    ids: Arc<IdGen>,
    events_in: metrics::Counter,
}

impl Task {
    async fn run(self, mut sub: async_nats::Subscriber, mut stopped: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                msg = sub.next() => match msg {
                    Some(msg) => if !self.handle(msg).await { return },
                    None => return,
                },
                _ = stopped.changed() => break,
            }
        }
        // `Ingress::stop` made a round trip first, so everything the server routed to us is in
        // this subscription's buffer: unsubscribe, and route it all until the stream ends. (async-
        // nats' own `drain` does not wait for the server's answer, so it can drop messages still
        // on the way.) The deadline only matters if the connection is down.
        if sub.unsubscribe().await.is_err() {
            return;
        }
        let deadline = tokio::time::Instant::now() + crate::limits::INGRESS_DRAIN_TIMEOUT;
        while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, sub.next()).await {
            if !self.handle(msg).await {
                return;
            }
        }
    }

    /// Decode and route one message; false once the shards are gone.
    async fn handle(&self, msg: async_nats::Message) -> bool {
        let received = Instant::now();
        let decoded = match &self.decoder {
            Decoder::Profile { prefix, profiles } => {
                if let Err(e) = update_profile(profiles, prefix, &msg) {
                    self.dead_letter(&msg, e).await;
                }
                return true;
            }
            Decoder::Envelope { prefix } => {
                decode_envelope(&msg.subject, msg.headers.as_ref(), &msg.payload, prefix, &self.ids)
            }
            Decoder::Raw { rules } => decode_raw(rules, &msg.subject, msg.headers.as_ref(), &msg.payload, &self.ids),
        };
        match decoded {
            Ok(event) => {
                self.events_in.increment(1);
                let routed = Routed {
                    event,
                    hops: 0,
                    received,
                };
                self.router.route(routed).await.is_ok()
            }
            Err(e) => {
                self.dead_letter(&msg, e).await;
                true
            }
        }
    }

    async fn dead_letter(&self, msg: &async_nats::Message, e: IngressError) {
        let letter = DeadLetter::message(e.reason, e.detail, &msg.subject, msg.payload.clone());
        self.egress.send(letter.into_outbound()).await;
    }
}

/// Merge a `profiles.<actor>` message (a JSON object) into the actor's profile.
fn update_profile(profiles: &Profiles, prefix: &str, msg: &async_nats::Message) -> Result<(), IngressError> {
    let actor = msg
        .subject
        .strip_prefix(prefix)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| IngressError::invalid("a profile update needs the actor as the subject's tail"))?;
    let patch: serde_json::Value = serde_json::from_slice(&msg.payload)
        .map_err(|e| IngressError::undecodable(format!("profile update is not JSON: {e}")))?;
    match profiles.merge(actor, &patch) {
        Ok(_) => Ok(()),
        Err(e @ (ProfileError::NotAnObject | ProfileError::Invalid(_))) => Err(IngressError::invalid(e.to_string())),
        Err(e) => {
            tracing::error!(actor, error = %e, "profile update failed");
            Err(IngressError::invalid(e.to_string()))
        }
    }
}
