//! The ingest lease's work: read the input stream and each tenant's own stream in order, decode
//! each input only to learn its actor, and forward it as received (payload, headers, subject in
//! a header) to its partition of the partition stream, where the partition's owner decodes it
//! as a single hub would.
//!
//! Each stream has a forwarder of its own, so a tenant's own stream read at its `rate` (inputs/s
//! at most; beyond it they wait there, in order, nothing dropped) holds back no other input.
//!
//! Each forward carries `Nats-Msg-Id: in<seq>` (`<tenant>.in<seq>` from a tenant's own stream,
//! which its place in `Hub-Input-Seq` names too), so an input read twice (the lease changed
//! hands before its acknowledgement) is stored once; an input is acknowledged once the
//! partition stream has stored it, and every earlier one (`AckPolicy::All`, acknowledgements in
//! order). Inputs that do not decode go to the dead letters here, as in a single hub.

use super::{Cluster, headers};
use crate::durable::Bucket;
use crate::egress::headers::MSG_ID;
use crate::ingress::stream::InputStream;
use crate::ingress::{Decoder, IdGen, IngressError, TenantInputs};
use crate::metrics as m;
use async_nats::jetstream::{self, message::PublishMessage};
use async_nats::subject::Subject;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use hub_plugin_sdk::pattern::kind_matches;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Forwards stored or not yet, at most (what bounds memory while the partition stream is slow).
/// Below the client's 5,000 pending acknowledgements per context: past that a publish waits
/// for one of them, which this loop could not poll meanwhile.
const IN_FLIGHT: usize = 4096;
/// Acknowledge the input stream after this many forwards stored, or when none is in flight.
const ACK_EVERY: usize = 256;

/// The running forwarders, one per stream (idle while another instance holds the ingest lease).
pub struct Repartitioner {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// A stream to forward, and its tenant's rate (inputs/s at most), if it has one.
pub(crate) struct ForwardedStream {
    pub stream: InputStream,
    pub rate: Option<u32>,
}

struct Forwarder {
    client: async_nats::Client,
    js: jetstream::Context,
    input: InputStream,
    /// Paces a tenant's own stream to its rate.
    rate: Option<Bucket>,
    /// A tenant's own stream's inputs not yet read.
    backlog: Option<metrics::Gauge>,
    decoders: Arc<[(String, Decoder)]>,
    cluster: Arc<Cluster>,
    subject: String,
    ingest: watch::Receiver<Option<u64>>,
    stopped: watch::Receiver<bool>,
    forwarded: metrics::Counter,
    /// Whose an input is, on a tenant's own subjects or not.
    tenants: TenantInputs,
}

enum Ended {
    Stopped,
    /// The lease is gone or changed, or reading failed: start again from the last acknowledged.
    Again,
}

type Stored = std::pin::Pin<Box<dyn Future<Output = Result<Subject, String>> + Send>>;

impl Repartitioner {
    /// Forward `streams` (the input stream first, then tenants' own) while this instance holds
    /// the ingest lease.
    pub(crate) fn start(
        client: &async_nats::Client,
        streams: Vec<ForwardedStream>,
        decoders: Vec<(String, Decoder)>,
        cluster: Arc<Cluster>,
        subject: String,
        ingest: watch::Receiver<Option<u64>>,
        tenants: TenantInputs,
    ) -> Repartitioner {
        let (stop, stopped) = watch::channel(false);
        let decoders: Arc<[(String, Decoder)]> = decoders.into();
        let tasks = streams
            .into_iter()
            .map(|ForwardedStream { stream, rate }| {
                let backlog = stream
                    .tenant
                    .clone()
                    .map(|tenant| metrics::gauge!(m::TENANT_BACKLOG, "tenant" => tenant));
                let forwarder = Forwarder {
                    client: client.clone(),
                    js: jetstream::new(client.clone()),
                    input: stream,
                    rate: rate.map(|r| Bucket::new(f64::from(r), 1.0)),
                    backlog,
                    decoders: decoders.clone(),
                    cluster: cluster.clone(),
                    subject: subject.clone(),
                    ingest: ingest.clone(),
                    stopped: stopped.clone(),
                    forwarded: metrics::counter!(m::INPUTS_PARTITIONED),
                    tenants: tenants.clone(),
                };
                tokio::spawn(forwarder.run())
            })
            .collect();
        Repartitioner { stop, tasks }
    }

    /// Stop reading; what was forwarded is acknowledged first.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Resolves at `at`; never without it.
async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Forwarder {
    async fn run(mut self) {
        loop {
            let revision = loop {
                if *self.stopped.borrow() {
                    return;
                }
                if let Some(revision) = *self.ingest.borrow_and_update() {
                    break revision;
                }
                tokio::select! {
                    _ = self.ingest.changed() => {}
                    _ = self.stopped.changed() => {}
                }
            };
            match self.forward(revision).await {
                Ended::Stopped => return,
                Ended::Again => {}
            }
        }
    }

    /// Forward inputs while the lease of `revision` is held.
    async fn forward(&mut self, revision: u64) -> Ended {
        let family = self.input.config().consumer.clone();
        let name = format!("{family}-ingest-{revision}");
        let batch = self.input.config().batch.max(1);
        let consumer = match self
            .input
            .resume(&family, name, None, "the hub's inputs, forwarded to their partitions")
            .await
        {
            Ok(consumer) => consumer,
            Err(e) => {
                tracing::error!(error = %e, stream = self.input.name(), "cannot read the stream to partition it; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                return Ended::Again;
            }
        };
        let mut messages = match crate::ingress::pull::pull(&self.client, &consumer, batch).await {
            Ok(messages) => messages,
            Err(e) => {
                tracing::error!(error = %e, stream = self.input.name(), "cannot pull the stream to partition it; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                return Ended::Again;
            }
        };
        tracing::info!(revision, stream = self.input.name(), "partitioning the stream");
        let mut stored: FuturesOrdered<Stored> = FuturesOrdered::new();
        let mut last = None;
        let mut since_ack = 0;
        // Past the tenant's rate: when the next input may be read.
        let mut paused_until = None;
        let ended = loop {
            tokio::select! {
                biased;
                Some(done) = stored.next() => match done {
                    Ok(reply) => {
                        last = Some(reply);
                        since_ack += 1;
                        if since_ack >= ACK_EVERY || stored.is_empty() {
                            self.ack(last.take()).await;
                            since_ack = 0;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "an input was not stored in its partition; reading again from the last acknowledged");
                        // Later forwards may be stored; they are forwarded again with their
                        // ids, and stored once.
                        break Ended::Again;
                    }
                },
                _ = self.stopped.changed() => break Ended::Stopped,
                _ = self.ingest.changed() => if *self.ingest.borrow() != Some(revision) {
                    break Ended::Again;
                },
                _ = until(paused_until), if paused_until.is_some() => paused_until = None,
                msg = messages.next(), if stored.len() < IN_FLIGHT && paused_until.is_none() => match msg {
                    Some(Some(Ok(msg))) => {
                        if let Some(forward) = self.forward_one(msg).await {
                            stored.push_back(forward);
                        }
                        paused_until = self.paced();
                    }
                    Some(Some(Err(e))) => tracing::warn!(error = %e, "input stream"),
                    Some(None) | None => break Ended::Again,
                },
            }
        };
        drop(messages);
        // Acknowledge what was stored, in order, up to the first that was not.
        while let Some(done) = stored.next().await {
            match done {
                Ok(reply) => last = Some(reply),
                Err(_) => break,
            }
        }
        self.ack(last).await;
        ended
    }

    async fn ack(&self, reply: Option<Subject>) {
        if let Some(reply) = reply
            && let Err(e) = self.client.publish(reply, bytes::Bytes::new()).await
        {
            tracing::warn!(error = %e, "input acknowledgement not sent; the inputs are forwarded again, and stored once");
        }
    }

    /// After one input read: when the next may be, if the tenant's rate makes it wait.
    fn paced(&mut self) -> Option<tokio::time::Instant> {
        let bucket = self.rate.as_mut()?;
        bucket.take();
        let wait = bucket.until_room();
        (!wait.is_zero()).then(|| tokio::time::Instant::now() + wait)
    }

    /// Forward one input to its partition: the future that resolves once it is stored (to
    /// the reply that acknowledges it).
    async fn forward_one(&self, msg: jetstream::Message) -> Option<Stored> {
        let info = match msg.info() {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!(error = %e, subject = %msg.subject, "input without stream metadata; skipped");
                return None;
            }
        };
        let (seq, stored_ms) = (
            info.stream_sequence,
            (info.published.unix_timestamp_nanos() / 1_000_000) as i64,
        );
        if let Some(backlog) = &self.backlog {
            backlog.set(info.pending as f64);
        }
        let reply = msg.reply.clone()?;
        let own = self.input.tenant.as_deref();
        let ids = IdGen::for_stream_input(own, seq, stored_ms);
        // An input on a tenant's own subject keeps it: its partition's owner reads it as such.
        let actor = self
            .tenants
            .decode_as_published(&msg.subject, msg.headers.as_ref(), |subject, headers| {
                match self.decoders.iter().find(|(p, _)| kind_matches(p, subject)) {
                    Some((_, decoder)) => decoder.actor_of(subject, headers, &msg.payload, &ids),
                    None => Err(IngressError::no_rule_now(subject)),
                }
            });
        match actor {
            Ok(actor) => {
                let partition = self.cluster.partition_of(&actor);
                let mut h = msg.headers.clone().unwrap_or_default();
                h.insert(headers::SUBJECT, msg.subject.as_str());
                h.insert(headers::INPUT_SEQ, headers::input_place(own, seq).as_str());
                h.insert(headers::INPUT_STORED, stored_ms.to_string().as_str());
                h.insert(MSG_ID, ids.prefix());
                let publish = PublishMessage::build().headers(h).payload(msg.payload.clone());
                let subject = format!("{}.{partition}", self.subject);
                match self.js.send_publish(subject, publish).await {
                    Ok(ack) => {
                        self.forwarded.increment(1);
                        Some(
                            ack.into_future()
                                .map(move |r| r.map(|_| reply).map_err(|e| e.to_string()))
                                .boxed(),
                        )
                    }
                    Err(e) => Some(futures::future::ready(Err(e.to_string())).boxed()),
                }
            }
            Err(e) => {
                let letter = self.tenants.dead_letter(e, &msg.subject, &msg).into_outbound();
                let sent = match letter.headers {
                    Some(h) => {
                        self.client
                            .publish_with_headers(letter.subject, h, letter.payload)
                            .await
                    }
                    None => self.client.publish(letter.subject, letter.payload).await,
                };
                let done = sent.map(|()| reply).map_err(|e| e.to_string());
                Some(futures::future::ready(done).boxed())
            }
        }
    }
}
