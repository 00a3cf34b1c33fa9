//! Starting and stopping a hub: the one place that wires ingress, shards, runtime, state,
//! egress and HTTP together.

use crate::arbiter::PolicyStore;
use crate::cluster::Cluster;
use crate::cluster::leases::{LeaseHandle, LeaseWiring};
use crate::cluster::repartition::{ForwardedStream, Repartitioner};
use crate::cluster::streams::PartitionStreams;
use crate::config::{Config, InputMode};
use crate::dead_letter::KeptLetters;
use crate::delivery::Sinks;
use crate::delivery::push::PushHub;
use crate::durable::{Checkpoints, FlushClock, Handoffs};
use crate::egress::Egress;
use crate::ingress::stream::{InputStream, PartitionSource, Source, Wiring};
use crate::ingress::{CompiledRule, Ingress};
use crate::registry::Registry;
use crate::router::Router;
use crate::runtime::Runtime;
use crate::shard::{Shard, ShardSetup};
use crate::state::Durability;
use crate::state::{Committer, Db, StateError};
use crate::stats::PluginStats;
use crate::status::{Sources, StatusBoard};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("cannot connect to NATS at {url}: {source}")]
    Nats {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error("cannot subscribe: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("plugin runtime: {0}")]
    Runtime(String),
    #[error(transparent)]
    Seed(#[from] crate::registry::SeedError),
    #[error(transparent)]
    Registry(#[from] crate::registry::StoreError),
    #[error(transparent)]
    Policies(#[from] crate::arbiter::PolicyError),
    #[error("shard {id} could not start: {reason}")]
    Shard { id: usize, reason: String },
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Http { addr: SocketAddr, source: std::io::Error },
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Input(#[from] crate::ingress::stream::StreamError),
    #[error(transparent)]
    PartitionStreams(#[from] crate::cluster::streams::StreamsError),
    #[error(transparent)]
    Checkpoints(#[from] crate::durable::CheckpointError),
    #[error(transparent)]
    Handoffs(#[from] crate::durable::HandoffError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::leases::LeaseError),
    #[error(transparent)]
    Changelog(#[from] crate::cluster::changelog::ChangelogError),
    #[error(transparent)]
    SharedPlugins(#[from] crate::cluster::plugins::SharedError),
}

/// A running hub.
pub struct Hub {
    http_addr: SocketAddr,
    registry: Arc<Registry>,
    timers_restored: usize,
    ingress: Ingress,
    router: Router,
    egress: Egress,
    shards: Vec<std::thread::JoinHandle<()>>,
    committer: Committer,
    http: JoinHandle<()>,
    http_stop: watch::Sender<bool>,
    push: PushHub,
    db: Db,
    status_task: JoinHandle<()>,
    cluster: Option<ClusterParts>,
}

/// What an instance of a cluster runs besides a single hub's parts.
struct ClusterParts {
    leases: LeaseHandle,
    repartitioner: Repartitioner,
    /// Adopt the plugin and policy changes other instances make.
    plugins: tokio::task::JoinHandle<()>,
    policies: Option<tokio::task::JoinHandle<()>>,
}

impl Hub {
    /// Open state, connect to NATS, load and validate plugins, start shards, ingress and HTTP.
    pub async fn start(config: Config) -> Result<Hub, StartError> {
        let metrics = crate::metrics::install();
        let cluster = cluster_of(&config)?;
        let rules = config
            .ingest
            .iter()
            .map(CompiledRule::compile)
            .collect::<Result<Vec<_>, _>>()
            .map_err(StartError::Config)?;
        let tenants = crate::tenant::Tenants::new(&config.tenants).map_err(StartError::Config)?;
        warn_of_unused_lanes(&config, &tenants);
        let auth = crate::api::Auth::new(config.admin_token.clone(), config.http.listen)
            .with_tenants(&config.tenants)
            .map_err(StartError::Config)?;
        std::fs::create_dir_all(&config.data_dir)?;
        let db = Db::open(&config.data_dir, config.engine.commit_interval_ms)?;
        let quotas = Arc::new(crate::quota::Quotas::new(&tenants));
        quotas.count_stored(db.sled()).map_err(StateError::from)?;

        let options = async_nats::ConnectOptions::new()
            .subscription_capacity(config.nats.subscription_capacity)
            .client_capacity(config.nats.outbound_capacity)
            .event_callback({
                let watch = crate::connection::ConnectionWatch::new(config.input.mode);
                move |event| {
                    let watch = watch.clone();
                    async move { watch.on_event(event) }
                }
            });
        let client = connect(&config, "hub", options).await?;

        let mut limits = config.limits.clone();
        // Headers (dead-letter reasons, message ids) need room beside the largest output.
        let carried = client
            .server_info()
            .max_payload
            .saturating_sub(crate::limits::HEADER_ROOM_BYTES);
        if carried < limits.max_output_bytes {
            tracing::info!(
                max_output_bytes = carried,
                "outputs limited to what the NATS server carries"
            );
            limits.max_output_bytes = carried;
        }
        let runtime = Runtime::new(limits).map_err(|e| StartError::Runtime(format!("{e:#}")))?;
        let shard_count = config.engine.shard_count();
        let (router, receivers) = Router::new(shard_count, config.engine.queue_capacity);
        let registry = Registry::open(runtime, db.sled(), router.clone())?;
        // In a cluster: the cluster's plugins first, the folder's over them, then what only this
        // instance has goes up (see `cluster::plugins`).
        let shared_plugins = match &cluster {
            Some(_) => {
                let shared = Arc::new(crate::cluster::plugins::SharedPlugins::open(&client, &config.cluster).await?);
                shared.pull(&registry).await?;
                Some(shared)
            }
            None => None,
        };
        if let Some(dir) = &config.plugins.dir {
            registry.seed(dir, &config.plugins.config)?;
        }
        if let Some(shared) = &shared_plugins {
            shared.push(&registry).await?;
            registry.share(shared.clone());
        }
        let plugins = registry.start()?;
        let stats = Arc::new(PluginStats::new(shard_count));
        let egress = Egress::new(client.clone());
        let policies = PolicyStore::open(db.sled(), &config.policies)?;
        let shared_policies = match &shared_plugins {
            Some(plugins) => {
                let shared = Arc::new(crate::cluster::policies::SharedPolicies::new(plugins.bucket()));
                shared.join(&policies).await?;
                policies.share(shared.clone());
                Some(shared)
            }
            None => None,
        };
        if let Err(e) = crate::delivery::ensure_action_stream(&client, &config.actions).await {
            tracing::error!(error = %e, "no action stream: actions are published without being kept");
        }
        let dead_letters = match KeptLetters::ensure(&client, &config.dead_letters, &config.nats.events_subject).await {
            Ok(kept) => Some(kept),
            Err(e) => {
                tracing::error!(error = %e, "dead letters are published without being kept");
                None
            }
        };
        let push = PushHub::start(&config.push, config.http.listen, egress.clone());
        let sinks = Sinks::start(&config.channels, push.clone(), egress.clone());

        let (wheels, timers_restored) = db.load_timers(shard_count, |actor| router.shard_of(actor))?;

        let changelog = match &cluster {
            Some(cluster) => {
                // A connection of its own: a view write's burst of thousands of publishes
                // would otherwise queue every input and output of the hub behind it.
                let own = connect(&config, "hub-changelog", async_nats::ConnectOptions::new()).await?;
                Some(Arc::new(
                    crate::cluster::changelog::Changelog::open(&own, &config.cluster, cluster.clone()).await?,
                ))
            }
            None => None,
        };
        // Durable mode: the input stream first, since the checkpoints count in its sequences.
        let durable = match config.input.mode {
            InputMode::Core => None,
            InputMode::Durable => {
                let subjects = crate::ingress::stream_subjects(&config.nats, &rules);
                // The input stream first: one an earlier version set up for a cluster captured
                // tenants' own subjects too, and gives them up before their own streams take them.
                let input = InputStream::ensure(&client, &config.input, subjects.clone(), Duration::ZERO).await?;
                // Each tenant's own subjects go to its own stream, read beside the input stream
                // (in a cluster, forwarded to the partitions beside it by the ingest lease's
                // holder), so its backlog is never ahead of another tenant's inputs.
                let mut own = Vec::new();
                for tenant in tenants.names() {
                    own.push(
                        InputStream::ensure_own(
                            &client,
                            &config.input,
                            tenant,
                            &config.nats.tenants_subject,
                            &subjects,
                        )
                        .await?,
                    );
                }
                // The checkpoints count in the sequences of the stream the shards' inputs come
                // from: in a cluster, the partition stream.
                let parts = match &cluster {
                    Some(_) => Some(Arc::new(PartitionStreams::ensure(&client, &config).await?)),
                    None => None,
                };
                // A cluster's checkpoints come with each partition's state, checked against
                // its stream at every takeover (`cluster/takeover.rs`); one identity for all.
                match &parts {
                    Some(_) => {
                        let streams = format!("{}_<partition>", config.cluster.stream);
                        crate::durable::adopt_stream(db.sled(), None, &streams, "")?;
                    }
                    None => {
                        crate::durable::adopt_stream(db.sled(), None, input.name(), &input.created)?;
                        for stream in &own {
                            crate::durable::adopt_stream(
                                db.sled(),
                                stream.tenant.as_deref(),
                                stream.name(),
                                &stream.created,
                            )?;
                        }
                    }
                };
                let (flushed_tx, flushed) = flume::unbounded();
                let clock = Arc::new(FlushClock::default());
                let (confirm_client, runtime) = (client.clone(), tokio::runtime::Handle::current());
                let pending = crate::cluster::changelog::Pending::default();
                if let Some(cluster) = &cluster {
                    let (pending, cluster, clock) = (pending.clone(), cluster.clone(), clock.clone());
                    db.profiles
                        .set_journal(Arc::new(move |actor: &str, value: Option<&[u8]>| {
                            pending.push(crate::cluster::changelog::Change {
                                partition: cluster.partition_of(actor),
                                tree: crate::cluster::changelog::PROFILES.into(),
                                key: actor.as_bytes().to_vec(),
                                value: value.map(<[u8]>::to_vec),
                            });
                            // Written with the committer's next flush, even if no shard commits.
                            clock.next();
                        }));
                }
                let write_changes = changelog.clone().map(|log| {
                    let runtime = runtime.clone();
                    Box::new(move |changes: &[crate::cluster::changelog::Change]| {
                        match runtime.block_on(log.write(changes, false)) {
                            Ok(()) => true,
                            Err(e) => {
                                tracing::warn!(error = %e, "state changes not written to the changelog yet; retrying");
                                false
                            }
                        }
                    }) as crate::state::WriteChanges
                });
                let durability = Durability {
                    db: db.sled().clone(),
                    confirm: Box::new(move || {
                        runtime.block_on(crate::egress::round_trip(
                            &confirm_client,
                            crate::limits::ROUND_TRIP_TIMEOUT,
                        ))
                    }),
                    flushed: flushed_tx,
                    clock: clock.clone(),
                    changelog: write_changes,
                    changelog_every: config.cluster.changelog_every,
                    pending,
                };
                Some(((input, own, parts), durability, flushed, clock))
            }
        };
        let (durability, durable) = match durable {
            Some((input, durability, flushed, clock)) => (Some(durability), Some((input, flushed, clock))),
            None => (None, None),
        };
        let (committer, commits) = Committer::start(shard_count * 4, durability)?;
        // Read before any shard runs, so each record left over is handed on once.
        let handoffs = Handoffs::load(db.sled(), durable.is_some(), shard_count, |actor| {
            router.shard_of(actor)
        })?;
        // Sources of the shards' inputs beyond the input stream: the tenants' own streams (a
        // single hub's; a cluster's shards read partitions); and the names of every stream
        // read, in source order, with their tenants, for the guard's metrics.
        let (own_streams, stream_names): (Vec<String>, Vec<(String, Option<String>)>) = match &durable {
            Some(((input, own, None), _, _)) => (
                own.iter().filter_map(|s| s.tenant.clone()).collect(),
                std::iter::once(input)
                    .chain(own)
                    .map(|s| (s.name().to_owned(), s.tenant.clone()))
                    .collect(),
            ),
            _ => Default::default(),
        };
        let admission = Arc::new(match own_streams.is_empty() {
            true => crate::durable::Admission::unlimited(),
            false => {
                let window = u32::try_from(config.input.tenant_window).unwrap_or(u32::MAX).max(1);
                let own = own_streams.iter().map(|t| (tenants.share(t), tenants.rate(t)));
                let sources = std::iter::once((1, None)).chain(own);
                let pressure = commits.pressure();
                let admission = crate::durable::Admission::new(
                    sources
                        .map(|(share, rate)| (window.saturating_mul(share), rate))
                        .collect(),
                    move || pressure.is_congested(),
                );
                match config.input.latency_guard {
                    tolerance if tolerance > 0.0 => admission.guarded(tolerance.max(1.0), &stream_names),
                    _ => admission,
                }
            }
        });
        let checkpoints = Checkpoints::load(db.sled(), shard_count, |p| router.shard_of_partition(p), &own_streams)?;
        let mut shards = Vec::with_capacity(shard_count);
        let stores = wheels.into_iter().zip(handoffs).zip(checkpoints);
        for (id, (rx, ((timers, handoffs), checkpoints))) in receivers.into_iter().zip(stores).enumerate() {
            let setup = ShardSetup {
                id,
                rx,
                router: router.clone(),
                egress: egress.clone(),
                live: registry.live().clone(),
                stats: stats.clone(),
                db: db.clone(),
                timers: timers.counting(quotas.clone()),
                quotas: quotas.clone(),
                commits: commits.clone(),
                engine: config.engine.clone(),
                policies: policies.clone(),
                sinks: sinks.clone(),
                checkpoints,
                handoffs,
                admission: admission.clone(),
                keep_events: config.actions.keep_events,
                cluster: cluster.as_ref().map(|cluster| crate::shard::ClusterLink {
                    cluster: cluster.clone(),
                    subject: config.cluster.subject.clone(),
                    events_subject: config.nats.events_subject.clone(),
                }),
            };
            // The shard instantiates its plugins on its own thread; wait for that, so the hub
            // serves every plugin once `start` returns.
            let (ready, is_ready) = tokio::sync::oneshot::channel();
            let thread = std::thread::Builder::new()
                .name(format!("hub-shard-{id}"))
                .spawn(move || {
                    let shard = Shard::new(setup);
                    let _ = ready.send(());
                    shard.run();
                })?;
            if is_ready.await.is_err() {
                return Err(StartError::Shard {
                    id,
                    reason: "the shard thread exited during start".into(),
                });
            }
            shards.push(thread);
        }

        let restore_commits = commits.clone();
        drop(commits);
        // Bound before the inputs start: a cluster's members announce where they listen.
        let listener = tokio::net::TcpListener::bind(config.http.listen)
            .await
            .map_err(|source| StartError::Http {
                addr: config.http.listen,
                source,
            })?;
        let http_addr = listener.local_addr()?;
        let mut cluster_parts = None;
        let profiles = db.profiles.clone();
        let backtests = durable.as_ref().map(|((input, _, _), _, _)| {
            Arc::new(crate::backtest::Backtester::new(
                client.clone(),
                input.name(),
                crate::ingress::RecordedInputs::new(&config.nats, rules.clone(), &tenants),
                profiles.clone(),
                registry.clone(),
                config.engine.hop_limit,
            ))
        });
        let ingress = match durable {
            None => {
                Ingress::start(
                    &client,
                    &config.nats,
                    rules,
                    &tenants,
                    router.clone(),
                    egress.clone(),
                    profiles.clone(),
                )
                .await?
            }
            Some(((input, own, parts), flushed, clock)) => {
                let wiring = Wiring {
                    router: router.clone(),
                    egress: egress.clone(),
                    clock,
                    flushed,
                    admission: admission.clone(),
                    tenants: crate::ingress::TenantInputs::new(&config.nats.tenants_subject, &tenants),
                };
                let source = match (parts, &cluster) {
                    (Some(parts), Some(cluster)) => {
                        let (leases, wires) = crate::cluster::leases::join(
                            &client,
                            &config.cluster,
                            cluster.clone(),
                            http_addr.to_string(),
                        )
                        .await?;
                        let LeaseWiring { pulls, drained, ingest } = wires;
                        let forwarded = std::iter::once(input)
                            .chain(own)
                            .map(|stream| ForwardedStream {
                                rate: stream.tenant.as_deref().and_then(|t| tenants.rate(t)),
                                stream,
                            })
                            .collect();
                        let repartitioner = Repartitioner::start(
                            &client,
                            forwarded,
                            crate::ingress::decoders(&config.nats, rules.clone(), &tenants, None),
                            cluster.clone(),
                            config.cluster.subject.clone(),
                            ingest,
                            wiring.tenants.clone(),
                        );
                        let plugins = shared_plugins
                            .as_ref()
                            .ok_or_else(|| StartError::Config("a cluster without its shared plugin registry".into()))?
                            .follow(registry.clone());
                        cluster_parts = Some(ClusterParts {
                            leases,
                            repartitioner,
                            plugins,
                            policies: shared_policies.as_ref().map(|p| p.follow(policies.clone())),
                        });
                        Source::Partitions(PartitionSource {
                            streams: parts.clone(),
                            subject: config.cluster.subject.clone(),
                            cluster: cluster.clone(),
                            pulls,
                            drained,
                            takeover: crate::cluster::takeover::Takeover {
                                streams: parts,
                                changelog: changelog
                                    .clone()
                                    .ok_or_else(|| StartError::Config("a cluster without its changelog".into()))?,
                                commits: restore_commits,
                                db: db.sled().clone(),
                                profiles: db.profiles.clone(),
                                router: router.clone(),
                                cluster: cluster.clone(),
                                quotas: quotas.clone(),
                            },
                        })
                    }
                    _ => Source::Streams(std::iter::once(input).chain(own).collect()),
                };
                Ingress::start_durable(&client, &config.nats, rules, &tenants, source, wiring, profiles.clone()).await?
            }
        };

        let (status, status_task) = StatusBoard::start(Sources {
            metrics: metrics.clone(),
            registry: registry.clone(),
            stats: stats.clone(),
            input: config.input.mode,
            queue_capacity: config.engine.queue_capacity,
            kept: dead_letters.clone(),
            tenants: tenants.clone(),
        });
        let app = crate::http::router(crate::http::HttpState {
            metrics,
            nats: client.clone(),
            api: crate::api::ApiState {
                tenants: tenants.clone(),
                db: db.clone(),
                router: router.clone(),
                registry: registry.clone(),
                stats,
                profiles,
                policies,
                auth: auth.clone(),
                max_module_bytes: config.limits.max_module_bytes,
                dead_letters,
                nats: client.clone(),
                status,
                sinks: sinks.clone(),
                backtests,
                cluster: cluster.clone(),
            },
            push: push.clone(),
        });
        let (http_stop, mut stopped) = watch::channel(false);
        let http = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.changed().await;
            };
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });

        tracing::info!(shards = shard_count, plugins, timers_restored, %http_addr, "hub started");
        Ok(Hub {
            http_addr,
            registry,
            timers_restored,
            ingress,
            router,
            egress,
            shards,
            committer,
            http,
            http_stop,
            push,
            db,
            status_task,
            cluster: cluster_parts,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The plugin registry (what runs, and every version it had).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Durable timers found in sled at start.
    pub fn timers_restored(&self) -> usize {
        self.timers_restored
    }

    /// Stop taking input, finish and commit everything in flight, publish what it produced,
    /// and make state durable.
    pub async fn shutdown(self) {
        self.status_task.abort();
        let (leases, repartitioner) = match self.cluster {
            Some(parts) => {
                parts.plugins.abort();
                if let Some(policies) = &parts.policies {
                    policies.abort();
                }
                (Some(parts.leases), Some(parts.repartitioner))
            }
            None => (None, None),
        };
        if let Some(repartitioner) = repartitioner {
            repartitioner.stop().await;
        }
        let consumer = self.ingress.stop().await;
        // Let queued and cross-shard events settle before asking shards to stop.
        let settle = Instant::now();
        while self.router.depths().iter().any(|d| *d > 0) && settle.elapsed() < crate::limits::SHARD_SETTLE_TIMEOUT {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.router.stop_all().await;
        let shards = self.shards;
        let _ = tokio::task::spawn_blocking(move || {
            for s in shards {
                let _ = s.join();
            }
        })
        .await;
        let committer = self.committer;
        let _ = tokio::task::spawn_blocking(move || committer.finish()).await;
        // Acknowledge what the last commits made durable.
        if let Some(consumer) = consumer {
            consumer.finish().await;
        }
        // Everything processed here is acknowledged: others may take the partitions now.
        if let Some(leases) = leases {
            leases.leave().await;
        }
        if let Err(e) = self.db.flush() {
            tracing::error!(error = %e, "final state flush failed");
        }
        self.egress.flush().await;
        // Open device connections would hold the graceful HTTP shutdown forever.
        self.push.close_all().await;
        let _ = self.http_stop.send(true);
        if tokio::time::timeout(crate::limits::HTTP_SHUTDOWN_TIMEOUT, self.http)
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?crate::limits::HTTP_SHUTDOWN_TIMEOUT, "HTTP connections still open; stopping without them");
        }
        tracing::info!("hub stopped");
    }
}

/// The cluster this instance takes part in, if `[cluster]` is enabled (durable input only: the
/// partitions are streams).
fn cluster_of(config: &Config) -> Result<Option<Arc<Cluster>>, StartError> {
    let c = &config.cluster;
    if !c.enabled {
        return Ok(None);
    }
    if config.input.mode != InputMode::Durable {
        return Err(StartError::Config(
            "[cluster] needs durable input (input.mode = \"durable\")".into(),
        ));
    }
    if c.partitions == 0 || c.partitions > crate::limits::PARTITIONS {
        return Err(StartError::Config(format!(
            "cluster.partitions must be 1 to {}, not {}",
            crate::limits::PARTITIONS,
            c.partitions
        )));
    }
    let instance = c.instance_name();
    if !instance
        .chars()
        .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
    {
        return Err(StartError::Config(format!(
            "cluster.instance {instance:?}: only letters, digits, '-' and '_' (it is part of NATS keys)"
        )));
    }
    if c.lease_ttl < Duration::from_secs(1) {
        return Err(StartError::Config("cluster.lease_ttl must be at least 1s".into()));
    }
    Ok(Some(Arc::new(Cluster::new(instance, c.partitions))))
}

/// Connect to `[nats] url` as `name`, with `options`.
async fn connect(
    config: &Config,
    name: &str,
    options: async_nats::ConnectOptions,
) -> Result<async_nats::Client, StartError> {
    options
        .name(name)
        // Back within a few hundred ms of the server (the client's default backs off to
        // seconds, and what core subscriptions miss meanwhile is lost).
        .reconnect_delay_callback(|attempts| crate::limits::RECONNECT_DELAY_STEP * attempts.min(5) as u32)
        .connect(config.nats.url.as_str())
        .await
        .map_err(|source| StartError::Nats {
            url: config.nats.url.clone(),
            source,
        })
}

/// A tenant's `share` weighs its own stream against the others where a single hub reads them
/// into its shards. Core mode has no streams, and a cluster's partitions mix every tenant's
/// inputs: say it is ignored there rather than let an operator believe a flood is held back.
/// (A `rate` applies in every mode.)
fn warn_of_unused_lanes(config: &Config, tenants: &crate::tenant::Tenants) {
    let without = match (config.input.mode, config.cluster.enabled) {
        (InputMode::Core, _) => "in core mode (no streams to weigh)",
        (_, true) => "in a cluster (the partitions mix every tenant's inputs)",
        _ => return,
    };
    for name in tenants.names().filter(|name| tenants.share(name) != 1) {
        tracing::warn!(tenant = %name, "a tenant's share is ignored {without}; its rate applies");
    }
}
