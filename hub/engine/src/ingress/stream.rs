//! Durable mode's input: a JetStream stream that captures every input subject, read through the
//! hub's durable pull consumer in stream order by one task, which decodes and routes each input
//! with its [`Ticket`] and acknowledges inputs once the committer reports them on disk (see
//! `durable`).
//!
//! Producers publish as they always did (the stream captures plain publishes) or with
//! JetStream acknowledgements for a guarantee of their own. At start the consumer is created
//! afresh right after the last acknowledged input, so inputs delivered to a hub that crashed
//! come again at once, in order, instead of after the server's redelivery timer.

use super::pull::{Pull, pull};
use super::{Decoder, IdGen, IngressError};
use crate::cluster::Cluster;
use crate::cluster::leases::Pulls;
use crate::cluster::streams::PartitionStreams;
use crate::config::InputConfig;
use crate::durable::{Acks, Admission, FlushClock, Flushed, Ticket};
use crate::egress::Egress;
use crate::event::Routed;
use crate::metrics as m;
use crate::router::Router;
use async_nats::jetstream::{self, consumer, stream as js_stream};
use async_nats::subject::Subject;
use futures::StreamExt;
use hub_plugin_sdk::pattern::kind_matches;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamMap;

/// How often a stream waiting for its rate or for the committer is looked at again.
const PAUSED_RECHECK: std::time::Duration = std::time::Duration::from_millis(5);

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

/// The input stream, or a tenant's own stream, as found or created at start.
pub struct InputStream {
    stream: js_stream::Stream,
    config: InputConfig,
    /// When the stream was created (in ns): sequences count anew in a stream created again.
    pub created: String,
    /// The tenant whose own subjects the stream captures; `None` for the input stream.
    pub tenant: Option<String>,
}

impl InputStream {
    /// Create the input stream on `subjects`, or bring it up to date.
    pub async fn ensure(
        client: &async_nats::Client,
        config: &InputConfig,
        subjects: Vec<String>,
        duplicate_window: std::time::Duration,
    ) -> Result<InputStream, StreamError> {
        let js = jetstream::new(client.clone());
        let wanted = js_stream::Config {
            name: config.stream.clone(),
            subjects: subjects.clone(),
            max_age: config.max_age,
            max_bytes: config.max_bytes,
            storage: js_stream::StorageType::File,
            retention: js_stream::RetentionPolicy::Limits,
            duplicate_window,
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
            tenant: None,
        })
    }

    /// Create `tenant`'s own stream (`<stream>_<tenant>`) on its own subjects (`subjects` under
    /// `<prefix>.<tenant>.`), or bring it up to date. Same limits as the input stream.
    pub async fn ensure_own(
        client: &async_nats::Client,
        config: &InputConfig,
        tenant: &str,
        prefix: &str,
        subjects: &[String],
    ) -> Result<InputStream, StreamError> {
        let own = InputConfig {
            stream: format!("{}_{tenant}", config.stream),
            ..config.clone()
        };
        let subjects = crate::tenant::own_subjects(prefix, tenant, subjects);
        let mut stream = InputStream::ensure(client, &own, subjects, std::time::Duration::ZERO).await?;
        stream.tenant = Some(tenant.to_owned());
        Ok(stream)
    }

    pub fn name(&self) -> &str {
        &self.config.stream
    }

    /// The durable consumer, created anew right after the last acknowledged input.
    async fn consumer(&self) -> Result<consumer::PullConsumer, StreamError> {
        let name = &self.config.consumer;
        self.resume(
            name,
            name.clone(),
            None,
            "the hub's inputs; acknowledged once their state is on disk",
        )
        .await
    }

    /// A durable consumer `name` (filtered to `filter`), created right after the last input that
    /// any consumer of `family` (named `family` or `family-…`: the same reader under earlier
    /// leases) acknowledged; those are deleted, so their acknowledgements reach nothing.
    pub async fn resume(
        &self,
        family: &str,
        name: String,
        filter: Option<String>,
        description: &str,
    ) -> Result<consumer::PullConsumer, StreamError> {
        let fail = |detail: String| StreamError::Consumer {
            consumer: name.clone(),
            detail,
        };
        let names: Vec<String> = {
            use futures::TryStreamExt;
            let prefix = format!("{family}-");
            self.stream
                .consumer_names()
                .try_filter(|n| futures::future::ready(n == family || n.starts_with(&prefix)))
                .try_collect()
                .await
                .map_err(|e| fail(e.to_string()))?
        };
        let mut next = None;
        for old in &names {
            let info = self.stream.consumer_info(old).await.map_err(|e| fail(e.to_string()))?;
            let floor = match (info.ack_floor.stream_sequence, &info.config.deliver_policy) {
                (0, consumer::DeliverPolicy::ByStartSequence { start_sequence }) => *start_sequence,
                (0, _) => 1,
                (acked, _) => acked + 1,
            };
            next = next.max(Some(floor));
            self.stream
                .delete_consumer(old)
                .await
                .map_err(|e| fail(e.to_string()))?;
        }
        let deliver_policy = match next {
            Some(start_sequence) => {
                tracing::info!(
                    consumer = name,
                    from = start_sequence,
                    "input consumer resumes after the last acknowledgement"
                );
                consumer::DeliverPolicy::ByStartSequence { start_sequence }
            }
            None => consumer::DeliverPolicy::All,
        };
        self.stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(name.clone()),
                description: Some(description.into()),
                deliver_policy,
                filter_subject: filter.unwrap_or_default(),
                ack_policy: consumer::AckPolicy::All,
                ack_wait: self.config.ack_wait,
                max_ack_pending: self.config.max_ack_pending,
                ..Default::default()
            })
            .await
            .map_err(|e| fail(e.to_string()))
    }

    /// The stream's configuration as the hub asked for it.
    pub fn config(&self) -> &InputConfig {
        &self.config
    }
}

/// What the consumer needs from the rest of the hub.
pub struct Wiring {
    pub router: Router,
    pub egress: Egress,
    pub clock: Arc<FlushClock>,
    /// The committer's reports: what is on disk.
    pub flushed: flume::Receiver<Flushed>,
    /// The windows of the streams read (shared with the shards, which report inputs taken).
    pub admission: Arc<Admission>,
    /// Whose an input is, on a tenant's own subjects or not.
    pub tenants: super::TenantInputs,
}

/// Where the reader's inputs come from.
pub enum Source {
    /// The input stream, then each tenant's own stream (sources 0, 1…: see
    /// `Checkpoints::load`), each through the hub's durable consumer.
    Streams(Vec<InputStream>),
    /// The partitions this instance holds leases on (cluster mode).
    Partitions(PartitionSource),
}

/// The partitions of a cluster this instance reads, each through a consumer of its partition's
/// stream named after the lease that allows it.
pub struct PartitionSource {
    pub streams: Arc<PartitionStreams>,
    pub subject: String,
    pub cluster: Arc<Cluster>,
    pub pulls: watch::Receiver<Pulls>,
    /// Told of a partition handed back once everything read from it is acknowledged.
    pub drained: mpsc::UnboundedSender<u16>,
    /// Restores a partition's state before its inputs are read.
    pub takeover: crate::cluster::takeover::Takeover,
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
        source: Source,
        decoders: Vec<(String, Decoder)>,
        wiring: Wiring,
        stopped: watch::Receiver<bool>,
    ) -> Result<Consumer, StreamError> {
        let (drained_tx, drained) = oneshot::channel();
        // Counted by input subject, as in core mode.
        let decoders = decoders
            .into_iter()
            .map(|(pattern, decoder)| {
                let counter = metrics::counter!(m::EVENTS_IN, "subject" => pattern.clone());
                (pattern, decoder, counter)
            })
            .collect();
        let batch = match &source {
            Source::Streams(streams) => streams.first().map_or(1, |s| s.config.batch),
            Source::Partitions(p) => p.streams.batch(),
        }
        .max(1);
        let mut reader = Reader {
            client: client.clone(),
            batch,
            decoders,
            acks: Acks::new(wiring.router.shard_count()),
            wiring,
            consumers: BTreeMap::new(),
            pulls: StreamMap::new(),
            paused: BTreeMap::new(),
            several: false,
            recheck: {
                let mut recheck = tokio::time::interval(PAUSED_RECHECK);
                recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                recheck
            },
            guard_tick: {
                let mut tick = tokio::time::interval(crate::durable::guard::TICK);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick
            },
            own: Vec::new(),
            partitions: None,
            arrivals: 0,
            acked: metrics::counter!(m::INPUTS_ACKED),
            tenant_events: crate::tenant::Counted::new(m::TENANT_EVENTS_IN),
            unacked: metrics::gauge!(m::INPUTS_UNACKED),
            pending: metrics::gauge!(m::CONSUMER_PENDING),
        };
        match source {
            Source::Streams(streams) => {
                reader.several = streams.len() > 1;
                for (key, input) in (0u16..).zip(&streams) {
                    let consumer = input.consumer().await?;
                    let messages = pull(client, &consumer, batch)
                        .await
                        .map_err(|e| StreamError::Consumer {
                            consumer: format!("{} of {}", input.config.consumer, input.name()),
                            detail: e.to_string(),
                        })?;
                    reader.consumers.insert(key, consumer);
                    reader.pulls.insert(key, messages);
                    if let Some(tenant) = &input.tenant {
                        reader.own.push(OwnStream {
                            tenant: tenant.clone(),
                            backlog: metrics::gauge!(m::TENANT_BACKLOG, "tenant" => tenant.clone()),
                        });
                    }
                }
            }
            Source::Partitions(source) => {
                reader.partitions = Some(Partitioned {
                    source,
                    releasing: BTreeSet::new(),
                    js: jetstream::new(client.clone()),
                    misrouted: metrics::counter!(m::INPUTS_MISROUTED),
                    moved: 0,
                });
                reader.reconcile().await;
            }
        }
        if reader.wiring.admission.is_guarded() {
            let admission = reader.wiring.admission.clone();
            tokio::spawn(time_round_trips(client.clone(), admission, stopped.clone()));
        }
        let task = tokio::spawn(reader.run(stopped, drained_tx));
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

/// Try `attempt` until it succeeds, waiting 100 ms doubling to 2 s while NATS is away; `None`
/// once `stopped` (the hub is stopping: what was being done is read again at the next start).
async fn retry_while_running<T, F, Fut>(what: &str, stopped: impl Fn() -> bool, mut attempt: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut wait = std::time::Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(done) => return Some(done),
            Err(e) => tracing::warn!(error = %e, retry_in = ?wait, "{what}"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(std::time::Duration::from_secs(2));
        if stopped() {
            return None;
        }
    }
}

/// The reader's state of the partitions it reads (cluster mode).
struct Partitioned {
    source: PartitionSource,
    /// Partitions no longer pulled whose lease waits for their inputs' acknowledgements.
    releasing: BTreeSet<u16>,
    /// Moves an input published to the wrong partition to its own, stored before it is
    /// acknowledged here.
    js: jetstream::Context,
    misrouted: metrics::Counter,
    /// Inputs moved so far: a producer with the wrong hash sends many, the log says so once
    /// in a thousand.
    moved: u64,
}

/// A tenant's own stream, as the reader reads it.
struct OwnStream {
    tenant: String,
    /// Its inputs not yet delivered.
    backlog: metrics::Gauge,
}

/// A reply subject, and the consumer (key) it acknowledges.
type Reply = (u16, Subject);

struct Reader {
    client: async_nats::Client,
    batch: usize,
    decoders: Vec<(String, Decoder, metrics::Counter)>,
    acks: Acks<Reply>,
    wiring: Wiring,
    /// The consumers read, by key: 0 for the input stream's, the partition in cluster mode.
    consumers: BTreeMap<u16, consumer::PullConsumer>,
    pulls: StreamMap<u16, Pull>,
    /// Streams at their window (see [`Admission`]): not read until a shard takes one of their
    /// inputs.
    paused: BTreeMap<u16, Pull>,
    /// Whether several streams feed the reader (the input stream and tenants' own streams).
    several: bool,
    /// How often streams that wait are looked at again.
    recheck: tokio::time::Interval,
    /// When the latency guard steers (see `durable::guard`).
    guard_tick: tokio::time::Interval,
    /// Tenants' own streams, by source from 1.
    own: Vec<OwnStream>,
    partitions: Option<Partitioned>,
    /// Inputs received so far (their places, with a stream per partition).
    arrivals: u64,
    acked: metrics::Counter,
    tenant_events: crate::tenant::Counted,
    unacked: metrics::Gauge,
    pending: metrics::Gauge,
}

/// A round trip not back within this time is not waited for (see `RoundTrip::Lost`).
const ROUND_TRIP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

/// While the latency guard limits a stream, send a message to a subject of the hub's own on the
/// connection that reads the inputs and carries the outputs, every `guard::ROUND_TRIP_EVERY`,
/// and report how long it took to come back: the part of a tenant's latency that is
/// nats-server's (see `durable::guard`). Ends when the hub stops.
async fn time_round_trips(client: async_nats::Client, admission: Arc<Admission>, mut stopped: watch::Receiver<bool>) {
    use crate::connection::{RoundTrip, RoundTrips};
    let mut round_trips = match RoundTrips::new(client).await {
        Ok(round_trips) => round_trips,
        Err(e) => {
            tracing::warn!(error = %e, "the latency guard cannot time round trips through nats-server");
            return;
        }
    };
    use crate::durable::guard::{ROUND_TRIP_EVERY, TICK};
    let mut every = tokio::time::interval(ROUND_TRIP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if !admission.guard_engaged() {
            // The guard engages only on its tick: while it limits nobody, looking once a tick
            // is enough, and an idle hub is not woken 500 times a second.
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = stopped.changed() => return,
            }
            every.reset();
            continue;
        }
        tokio::select! {
            _ = every.tick() => {}
            _ = stopped.changed() => return,
        }
        match round_trips.time(ROUND_TRIP_PATIENCE).await {
            RoundTrip::Back(took) => admission.round_trip(took),
            RoundTrip::Lost => {}
            RoundTrip::Closed => return,
        }
    }
}

/// Resolves when the partitions to read change; never without partitions.
async fn pulls_changed(partitions: &mut Option<Partitioned>) {
    match partitions {
        Some(p) => {
            if p.source.pulls.changed().await.is_err() {
                std::future::pending::<()>().await
            }
        }
        None => std::future::pending().await,
    }
}

impl Reader {
    async fn run(mut self, mut stopped: watch::Receiver<bool>, drained: oneshot::Sender<()>) {
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
                    self.pulls.clear();
                    self.paused.clear();
                    // Its commit queue must go for the committer to finish.
                    self.partitions = None;
                    if let Some(d) = drained.take() {
                        let _ = d.send(());
                    }
                }
                _ = pulls_changed(&mut self.partitions), if pulling => self.reconcile().await,
                _ = self.wiring.admission.room(), if pulling && !self.paused.is_empty() => self.resume_paused(),
                // A rate's tokens, and the committer catching up, come without a wake-up.
                _ = self.recheck.tick(), if pulling && !self.paused.is_empty() => self.resume_paused(),
                _ = self.guard_tick.tick(), if pulling && self.wiring.admission.is_guarded() => {
                    self.wiring.admission.steer();
                    self.resume_paused();
                }
                Some((key, item)) = self.pulls.next(), if pulling => match item {
                    Some(Ok(msg)) => {
                        if !self.handle(key, msg).await {
                            pulling = false;
                            self.pulls.clear();
                            self.paused.clear();
                            self.partitions = None;
                            if let Some(d) = drained.take() {
                                let _ = d.send(());
                            }
                        }
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, consumer = key, "input consumer"),
                    // The pull ended (the connection was gone for long): pull again.
                    None => if !self.pull_again(key).await {
                        pulling = false;
                    },
                },
            }
        }
        if let Some(d) = drained.take() {
            let _ = d.send(());
        }
        let _ = self.client.flush().await;
    }

    /// Read the partitions this instance holds now: a consumer for each new one (resuming
    /// after its last acknowledged input, whoever acknowledged it), and none for those given
    /// up. A partition handed back is reported drained once its inputs are acknowledged; one
    /// whose lease was lost is forgotten (its new owner reads it again).
    async fn reconcile(&mut self) {
        let Some(partitioned) = self.partitions.as_mut() else {
            return;
        };
        let wanted = partitioned.source.pulls.borrow_and_update().clone();
        let gone: Vec<u16> = self
            .consumers
            .keys()
            .filter(|p| !wanted.contains_key(p))
            .copied()
            .collect();
        for partition in gone {
            self.pulls.remove(&partition);
            self.consumers.remove(&partition);
            if partitioned.source.cluster.owns(partition) {
                partitioned.releasing.insert(partition);
            } else {
                self.acks.forget(|(p, _)| *p == partition);
            }
        }
        for (&partition, &revision) in &wanted {
            if self.consumers.contains_key(&partition) {
                continue;
            }
            partitioned.releasing.remove(&partition);
            let Some(stream) = partitioned.source.streams.get(partition) else {
                tracing::error!(
                    partition,
                    "a lease on a partition beyond the configured count; not read"
                );
                continue;
            };
            let family = format!("{}-p{partition}", stream.config.consumer);
            let name = format!("{family}-{revision}");
            let started = Instant::now();
            // The consumer first, the state after: creating it deletes the previous owner's,
            // whose acknowledgements then reach nothing, so every input below the point it
            // resumes from was acknowledged after its changes reached the changelog, and the
            // restore reads them. Restoring first let a previous owner still at work (its lease
            // expired while it was starved of CPU) log and acknowledge inputs in between: they
            // were skipped here, and their changes missing from the restored state.
            let consumer = match stream
                .resume(
                    &family,
                    name,
                    None,
                    "a partition of the hub's inputs, read by its lease holder",
                )
                .await
            {
                Ok(consumer) => consumer,
                Err(e) => {
                    tracing::error!(partition, error = %e, "cannot read a partition; its lease is kept and it is tried again when the leases change");
                    continue;
                }
            };
            if !partitioned.source.cluster.owns(partition)
                && let Err(e) = partitioned.source.takeover.run(partition, revision).await
            {
                tracing::error!(partition, error = %e, "cannot restore a partition's state; it is not processed here until its lease changes");
                continue;
            }
            match pull(&self.client, &consumer, self.batch).await {
                Ok(messages) => {
                    tracing::info!(partition, revision, took = ?started.elapsed(), "reading a partition");
                    self.pulls.insert(partition, messages);
                    self.consumers.insert(partition, consumer);
                }
                Err(e) => tracing::error!(partition, error = %e, "cannot pull a partition"),
            }
        }
        self.report_drained();
    }

    /// Tell the leases of partitions handed back whose inputs are all acknowledged.
    fn report_drained(&mut self) {
        let Some(partitioned) = self.partitions.as_mut() else {
            return;
        };
        let acks = &self.acks;
        let done: Vec<u16> = partitioned
            .releasing
            .iter()
            .copied()
            .filter(|&partition| !acks.holds(|(p, _)| *p == partition))
            .collect();
        for partition in done {
            partitioned.releasing.remove(&partition);
            let _ = partitioned.source.drained.send(partition);
        }
    }

    /// Decode and route one input; false once the shards are gone.
    async fn handle(&mut self, key: u16, msg: jetstream::Message) -> bool {
        let received = Instant::now();
        let (seq, pending, stored_ns) = match msg.info() {
            Ok(info) => (
                info.stream_sequence,
                info.pending,
                i64::try_from(info.published.unix_timestamp_nanos()).unwrap_or(0),
            ),
            Err(e) => {
                tracing::warn!(error = %e, subject = %msg.subject, "input without stream metadata; skipped");
                return true;
            }
        };
        let stored = stored_ns / 1_000_000;
        let own = key.checked_sub(1).and_then(|i| self.own.get(usize::from(i)));
        match own {
            Some(own) => own.backlog.set(pending as f64),
            None => self.pending.set(pending as f64),
        }
        let Some(reply) = msg.reply.clone() else {
            return true;
        };
        let reply = (key, reply);
        // The input's place among this reader's, for the acknowledgements: its stream sequence,
        // or with a stream per partition (each counting from 1), its arrival.
        let place = if self.partitions.is_some() || self.several {
            self.arrivals += 1;
            self.arrivals
        } else {
            seq
        };
        // A partition's input is decoded as if from the subject it names: the one the ingest
        // lease's holder read it on, with the ids and time its place in the input stream gives,
        // or the one a producer publishing to partitions itself stands for.
        let forwarded = self
            .partitions
            .is_some()
            .then(|| Forwarded::of(msg.headers.as_ref()))
            .flatten();
        if self.partitions.is_some() && forwarded.is_none() {
            let detail = format!(
                "an input published to partition {key} ({}) without the {} header naming the subject it stands for (e.g. events.click)",
                msg.subject,
                crate::cluster::headers::SUBJECT
            );
            // Its Hub-Tenant header, if any, still says whose it is.
            let letter = self
                .wiring
                .tenants
                .dead_letter(super::IngressError::invalid(detail), &msg.subject, &msg);
            self.wiring.egress.send(letter.into_outbound()).await;
            self.acks.handled(place, reply, self.wiring.clock.next());
            return true;
        }
        let subject = forwarded.as_ref().map_or(msg.subject.as_str(), |f| f.subject.as_str());
        let (decoders, tenant_events) = (&self.decoders, &mut self.tenant_events);
        let own = own.map(|o| o.tenant.as_str());
        let decoded =
            self.wiring
                .tenants
                .decode_as_published(subject, msg.headers.as_ref(), |standing_for, headers| {
                    match decoders.iter().find(|(p, _, _)| kind_matches(p, standing_for)) {
                        Some((_, d, events_in)) => {
                            let ids = match &forwarded {
                                Some(Forwarded {
                                    input: Some((seq, stored)),
                                    own,
                                    ..
                                }) => IdGen::for_stream_input(own.as_deref(), *seq, *stored),
                                // Published to its partition directly: ids from its place there.
                                Some(_) => IdGen::for_partition_input(key, seq, stored),
                                None => IdGen::for_stream_input(own, seq, stored),
                            };
                            let decoded = d.decode(standing_for, headers, &msg.payload, &ids);
                            if let Ok(Some(event)) = &decoded {
                                events_in.increment(1);
                                tenant_events.count(&event.actor);
                            }
                            decoded
                        }
                        None => Err(IngressError::no_rule_now(standing_for)),
                    }
                });
        match decoded {
            Ok(Some(event)) => {
                if let Some(partitioned) = &self.partitions {
                    let own = partitioned.source.cluster.partition_of(&event.actor);
                    if own != key {
                        if !self.move_to_partition(&msg, (key, seq), own).await {
                            return false;
                        }
                        self.acks.handled(place, reply, self.wiring.clock.next());
                        return true;
                    }
                }
                let shard = self.wiring.router.shard_of(&event.actor);
                let source = if self.several { key } else { 0 };
                let ticket = Ticket {
                    source,
                    stored_ns,
                    ..self.acks.route(shard, place, seq, reply)
                };
                if self.wiring.admission.routed(source, pending)
                    && let Some(pull) = self.pulls.remove(&key)
                {
                    self.paused.insert(key, pull);
                }
                let routed = Routed {
                    event,
                    hops: forwarded.as_ref().map_or(0, |f| f.hops),
                    received,
                    input: Some(ticket),
                    only: super::replayed_for(msg.headers.as_ref()),
                };
                self.unacked.set(self.acks.unacknowledged() as f64);
                self.wiring.router.route_to(shard, routed).await.is_ok()
            }
            Ok(None) => {
                self.acks.handled(place, reply, self.wiring.clock.next());
                true
            }
            Err(e) => {
                let letter = self.wiring.tenants.dead_letter(e, subject, &msg);
                self.wiring.egress.send(letter.into_outbound()).await;
                self.acks.handled(place, reply, self.wiring.clock.next());
                true
            }
        }
    }

    /// An input published to a partition its actor does not belong to (a producer that
    /// partitions itself and got the hash or the partition count wrong): processed here, it
    /// would break the actor's order, so it is stored as received in `partition`, with its
    /// place here (`part<from>.<seq>`) as `Nats-Msg-Id` so a second move stores it once, and
    /// only then acknowledged. False once the hub is stopping before the move succeeded (it
    /// is read again).
    async fn move_to_partition(&mut self, msg: &jetstream::Message, (from, seq): (u16, u64), partition: u16) -> bool {
        let Some(partitioned) = &mut self.partitions else {
            return true;
        };
        partitioned.misrouted.increment(1);
        partitioned.moved += 1;
        if partitioned.moved % 1000 == 1 {
            tracing::warn!(
                actor_partition = partition,
                published_to = %msg.subject,
                moved = partitioned.moved,
                "an input was published to another partition than its actor's; moved there (check the producer's partition hash and count; hub_inputs_misrouted_total counts them)"
            );
        }
        let partitioned = &*partitioned;
        let mut headers = msg.headers.clone().unwrap_or_default();
        headers.insert(crate::egress::headers::MSG_ID, format!("part{from}.{seq}").as_str());
        let subject = format!("{}.{partition}", partitioned.source.subject);
        let flushed = &self.wiring.flushed;
        let store = || async {
            let ack = partitioned
                .js
                .publish_with_headers(subject.clone(), headers.clone(), msg.payload.clone())
                .await
                .map_err(|e| e.to_string())?;
            ack.await.map(|_| ()).map_err(|e| e.to_string())
        };
        retry_while_running(
            "cannot move an input to its partition",
            || flushed.is_disconnected(),
            store,
        )
        .await
        .is_some()
    }

    /// Read again the streams at their window that have room now.
    fn resume_paused(&mut self) {
        let admission = &self.wiring.admission;
        let ready: Vec<u16> = self.paused.keys().copied().filter(|&k| admission.has_room(k)).collect();
        for key in ready {
            if let Some(pull) = self.paused.remove(&key) {
                self.pulls.insert(key, pull);
            }
        }
    }

    /// A new pull of consumer `key` after the last one ended, retried with back-off while NATS
    /// is away; false once the hub is stopping.
    async fn pull_again(&mut self, key: u16) -> bool {
        let Some(consumer) = self.consumers.get(&key) else {
            return true;
        };
        let (flushed, batch, client) = (&self.wiring.flushed, self.batch, &self.client);
        let again = || async { pull(client, consumer, batch).await.map_err(|e| e.to_string()) };
        match retry_while_running("input consumer: cannot pull", || flushed.is_disconnected(), again).await {
            Some(messages) => {
                self.pulls.insert(key, messages);
                true
            }
            None => false,
        }
    }

    /// Acknowledge up to the watermark, if it moved: one acknowledgement per consumer.
    async fn acknowledge(&mut self) {
        let cluster = self.partitions.as_ref().map(|p| &*p.source.cluster);
        for (_, (key, reply)) in self.acks.to_ack_by(|(key, _)| *key) {
            // A partition whose lease was lost after its inputs were handled: their changes
            // were kept out of the changelog (its new owner may have restored already), so the
            // inputs are left to the new owner rather than acknowledged past it.
            if cluster.is_some_and(|c| !c.owns(key)) {
                continue;
            }
            if let Err(e) = self.client.publish(reply, bytes::Bytes::new()).await {
                tracing::warn!(error = %e, "input acknowledgement not sent; the inputs come again and are skipped");
            }
            self.acked.increment(1);
        }
        self.unacked.set(self.acks.unacknowledged() as f64);
        self.report_drained();
    }
}

/// What the ingest lease's holder added to an input it forwarded to its partition, or to an
/// event a plugin emitted for another partition.
struct Forwarded {
    subject: String,
    /// The input's place in the input stream, or in its tenant's own stream (`own`): sequence
    /// and time stored (ms).
    input: Option<(u64, i64)>,
    own: Option<String>,
    hops: u8,
}

impl Forwarded {
    fn of(headers: Option<&async_nats::HeaderMap>) -> Option<Forwarded> {
        use crate::cluster::headers as h;
        let headers = headers?;
        let get = |name: &str| headers.get(name).map(|v| v.as_str());
        let subject = get(h::SUBJECT)?.to_owned();
        let place = get(h::INPUT_SEQ).and_then(h::parse_input_place);
        let stored = get(h::INPUT_STORED).and_then(|s| s.parse().ok());
        let (input, own) = match (place, stored) {
            (Some((own, seq)), Some(stored)) => (Some((seq, stored)), own.map(str::to_owned)),
            _ => (None, None),
        };
        let hops = get(h::HOPS).and_then(|n| n.parse().ok()).unwrap_or(0);
        Some(Forwarded {
            subject,
            input,
            own,
            hops,
        })
    }
}
