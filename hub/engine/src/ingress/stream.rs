//! Durable mode's input: a JetStream stream that captures every input subject, read through the
//! hub's durable pull consumer in stream order by one task, which decodes and routes each input
//! with its [`Ticket`] and acknowledges inputs once the committer reports them on disk (see
//! `durable`).
//!
//! Producers publish as they always did (the stream captures plain publishes) or with
//! JetStream acknowledgements for a guarantee of their own. At start the consumer is created
//! afresh right after the last acknowledged input, so inputs delivered to a hub that crashed
//! come again at once, in order, instead of after the server's redelivery timer.

use super::{Decoder, IdGen, IngressError};
use crate::config::InputConfig;
use crate::dead_letter::DeadLetter;
use crate::durable::{Acks, FlushClock, Flushed, Ticket};
use crate::egress::Egress;
use crate::event::Routed;
use crate::metrics as m;
use crate::router::Router;
use async_nats::jetstream::{self, consumer, stream as js_stream};
use async_nats::subject::Subject;
use futures::StreamExt;
use hub_plugin_sdk::pattern::kind_matches;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot create or update the input stream {stream} on {subjects:?}: {source}")]
    Stream {
        stream: String,
        subjects: Vec<String>,
        source: jetstream::context::CreateStreamError,
    },
    #[error("cannot set up the input consumer {consumer}: {detail}")]
    Consumer { consumer: String, detail: String },
}

/// The input stream, as found or created at start.
pub struct InputStream {
    stream: js_stream::Stream,
    config: InputConfig,
    /// When the stream was created (in ns): sequences count anew in a stream created again.
    pub created: String,
}

impl InputStream {
    /// Create the input stream on `subjects`, or bring it up to date.
    pub async fn ensure(
        client: &async_nats::Client,
        config: &InputConfig,
        subjects: Vec<String>,
    ) -> Result<InputStream, StreamError> {
        let js = jetstream::new(client.clone());
        let wanted = js_stream::Config {
            name: config.stream.clone(),
            subjects: subjects.clone(),
            max_age: config.max_age,
            max_bytes: config.max_bytes,
            storage: js_stream::StorageType::File,
            retention: js_stream::RetentionPolicy::Limits,
            ..Default::default()
        };
        let fail = |source| StreamError::Stream {
            stream: config.stream.clone(),
            subjects: subjects.clone(),
            source,
        };
        js.create_or_update_stream(wanted).await.map_err(fail)?;
        let stream = js.get_stream(&config.stream).await.map_err(|e| StreamError::Consumer {
            consumer: config.consumer.clone(),
            detail: e.to_string(),
        })?;
        let created = stream.cached_info().created.unix_timestamp_nanos().to_string();
        tracing::info!(stream = config.stream, ?subjects, "input stream ready");
        Ok(InputStream {
            stream,
            config: config.clone(),
            created,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.stream
    }

    /// The durable consumer, created anew right after the last acknowledged input.
    async fn consumer(&self) -> Result<consumer::PullConsumer, StreamError> {
        let name = &self.config.consumer;
        let fail = |detail: String| StreamError::Consumer {
            consumer: name.clone(),
            detail,
        };
        let deliver_policy = match self.stream.consumer_info(name).await {
            Ok(info) => {
                let next = info.ack_floor.stream_sequence + 1;
                self.stream
                    .delete_consumer(name)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                tracing::info!(
                    consumer = name,
                    from = next,
                    "input consumer resumes after its last acknowledgement"
                );
                consumer::DeliverPolicy::ByStartSequence { start_sequence: next }
            }
            Err(_) => consumer::DeliverPolicy::All,
        };
        self.stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(name.clone()),
                description: Some("the hub's inputs; acknowledged once their state is on disk".into()),
                deliver_policy,
                ack_policy: consumer::AckPolicy::All,
                ack_wait: self.config.ack_wait,
                max_ack_pending: self.config.max_ack_pending,
                ..Default::default()
            })
            .await
            .map_err(|e| fail(e.to_string()))
    }
}

/// What the consumer needs from the rest of the hub.
pub struct Wiring {
    pub router: Router,
    pub egress: Egress,
    pub clock: Arc<FlushClock>,
    /// The committer's reports: what is on disk.
    pub flushed: flume::Receiver<Flushed>,
}

/// The running consumer.
pub struct Consumer {
    task: Option<JoinHandle<()>>,
    /// Told once the task stopped pulling and routed what it had.
    drained: Option<oneshot::Receiver<()>>,
}

impl Consumer {
    pub(super) async fn start(
        client: &async_nats::Client,
        input: InputStream,
        decoders: Vec<(String, Decoder)>,
        wiring: Wiring,
        stopped: watch::Receiver<bool>,
    ) -> Result<Consumer, StreamError> {
        let consumer = input.consumer().await?;
        let batch = input.config.batch.max(1);
        let messages = pull(&consumer, batch).await.map_err(|e| StreamError::Consumer {
            consumer: input.config.consumer.clone(),
            detail: e.to_string(),
        })?;
        let (drained_tx, drained) = oneshot::channel();
        // Counted by input subject, as in core mode.
        let decoders = decoders
            .into_iter()
            .map(|(pattern, decoder)| {
                let counter = metrics::counter!(m::EVENTS_IN, "subject" => pattern.clone());
                (pattern, decoder, counter)
            })
            .collect();
        let reader = Reader {
            client: client.clone(),
            consumer,
            batch,
            decoders,
            acks: Acks::new(wiring.router.shard_count()),
            wiring,
            acked: metrics::counter!(m::INPUTS_ACKED),
            unacked: metrics::gauge!(m::INPUTS_UNACKED),
            pending: metrics::gauge!(m::CONSUMER_PENDING),
        };
        let task = tokio::spawn(reader.run(messages, stopped, drained_tx));
        Ok(Consumer {
            task: Some(task),
            drained: Some(drained),
        })
    }

    /// Wait until the consumer stopped pulling and routed what it had.
    pub(super) async fn stopped(&mut self) {
        if let Some(drained) = self.drained.take() {
            let _ = drained.await;
        }
    }

    /// Wait for the last acknowledgements; call once the committer has stopped.
    pub async fn finish(mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// The consumer's messages, pulled `batch` at a time.
async fn pull(
    consumer: &consumer::PullConsumer,
    batch: usize,
) -> Result<consumer::pull::Stream, consumer::StreamError> {
    consumer.stream().max_messages_per_batch(batch).messages().await
}

struct Reader {
    client: async_nats::Client,
    consumer: consumer::PullConsumer,
    batch: usize,
    decoders: Vec<(String, Decoder, metrics::Counter)>,
    acks: Acks<Subject>,
    wiring: Wiring,
    acked: metrics::Counter,
    unacked: metrics::Gauge,
    pending: metrics::Gauge,
}

impl Reader {
    async fn run(
        mut self,
        mut messages: consumer::pull::Stream,
        mut stopped: watch::Receiver<bool>,
        drained: oneshot::Sender<()>,
    ) {
        let mut drained = Some(drained);
        let mut pulling = true;
        loop {
            tokio::select! {
                biased;
                report = self.wiring.flushed.recv_async() => match report {
                    Ok(report) => {
                        self.acks.flushed(&report);
                        self.acknowledge().await;
                    }
                    // The committer stopped: everything that will be on disk is.
                    Err(_) => break,
                },
                _ = stopped.changed(), if pulling => {
                    pulling = false;
                    if let Some(d) = drained.take() {
                        let _ = d.send(());
                    }
                }
                msg = messages.next(), if pulling => match msg {
                    Some(Ok(msg)) => {
                        if !self.handle(msg).await {
                            pulling = false;
                            if let Some(d) = drained.take() {
                                let _ = d.send(());
                            }
                        }
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "input consumer"),
                    // The pull ended (the connection was gone for long): pull again.
                    None => match self.pull_again().await {
                        Some(again) => messages = again,
                        None => pulling = false,
                    },
                },
            }
        }
        if let Some(d) = drained.take() {
            let _ = d.send(());
        }
        let _ = self.client.flush().await;
    }

    /// Decode and route one input; false once the shards are gone.
    async fn handle(&mut self, msg: jetstream::Message) -> bool {
        let received = Instant::now();
        let (seq, pending, stored) = match msg.info() {
            Ok(info) => (
                info.stream_sequence,
                info.pending,
                (info.published.unix_timestamp_nanos() / 1_000_000) as i64,
            ),
            Err(e) => {
                tracing::warn!(error = %e, subject = %msg.subject, "input without stream metadata; skipped");
                return true;
            }
        };
        self.pending.set(pending as f64);
        let Some(reply) = msg.reply.clone() else {
            return true;
        };
        let decoder = self
            .decoders
            .iter()
            .find(|(pattern, _, _)| kind_matches(pattern, &msg.subject));
        let decoded = match decoder {
            Some((_, d, events_in)) => {
                let ids = IdGen::for_stream_input(seq, stored);
                let decoded = d.decode(&msg.subject, msg.headers.as_ref(), &msg.payload, &ids);
                if matches!(decoded, Ok(Some(_))) {
                    events_in.increment(1);
                }
                decoded
            }
            None => Err(IngressError::no_rule_now(&msg.subject)),
        };
        match decoded {
            Ok(Some(event)) => {
                let shard = self.wiring.router.shard_of(&event.actor);
                let ticket: Ticket = self.acks.route(shard, seq, reply);
                let routed = Routed {
                    event,
                    hops: 0,
                    received,
                    input: Some(ticket),
                    only: super::replayed_for(msg.headers.as_ref()),
                };
                self.unacked.set(self.acks.unacknowledged() as f64);
                self.wiring.router.route_to(shard, routed).await.is_ok()
            }
            Ok(None) => {
                self.acks.handled(seq, reply, self.wiring.clock.next());
                true
            }
            Err(e) => {
                let letter = DeadLetter::message(e.reason, e.detail, &msg.subject, msg.payload.clone());
                self.wiring.egress.send(letter.into_outbound()).await;
                self.acks.handled(seq, reply, self.wiring.clock.next());
                true
            }
        }
    }

    /// A new pull after the last one ended, retried with back-off while NATS is away; `None`
    /// once the hub is stopping.
    async fn pull_again(&mut self) -> Option<consumer::pull::Stream> {
        let mut wait = std::time::Duration::from_millis(100);
        loop {
            match pull(&self.consumer, self.batch).await {
                Ok(messages) => return Some(messages),
                Err(e) => tracing::warn!(error = %e, retry_in = ?wait, "input consumer: cannot pull"),
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(std::time::Duration::from_secs(2));
            if self.wiring.flushed.is_disconnected() {
                return None;
            }
        }
    }

    /// Acknowledge up to the watermark, if it moved.
    async fn acknowledge(&mut self) {
        if let Some((_, reply)) = self.acks.to_ack() {
            if let Err(e) = self.client.publish(reply, bytes::Bytes::new()).await {
                tracing::warn!(error = %e, "input acknowledgement not sent; the inputs come again and are skipped");
            }
            self.acked.increment(1);
        }
        self.unacked.set(self.acks.unacknowledged() as f64);
    }
}
