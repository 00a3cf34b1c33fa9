//! `hub bench`: a load generator and latency report for the example pipeline.
//!
//! Each run starts a fresh in-process hub with the example plugins and drives it from separate
//! NATS clients, as real producers and consumers would, in three phases:
//!
//! 1. **unpaced**: `--events` inputs as fast as the pipeline absorbs them (throughput);
//! 2. **paced**: `--rate` inputs per second for `--seconds` (latency under a steady load);
//! 3. **swapping** (with `--swaps N`, default 5): the paced load again while `N` new versions
//!    of payment-trouble (the plugin that acts) go live through the admin API, evenly spread;
//!    reports the p99 next to the paced phase's, how long each upload took, and how long after
//!    the switch every shard served the new version;
//! 4. **relay**: the same bodies through a plain async-nats subscribe+republish loop, which is
//!    the ceiling for any NATS-in/NATS-out service on this machine.
//!
//! Inputs are raw clickstream messages on `web.page_view` (each yields one
//! `hub.events.product.viewed`; no state) and `web.add_to_cart` (one `hub.events.cart.updated`;
//! the cart and a durable timer are written), and `payment.failed` envelopes (state is written;
//! every third failure of an actor yields one `hub.actions.support.callback`). `--mix` sets the
//! proportions: `clickstream` (default) is shaped like a web shop's stream, 60 % page views,
//! 20 % add-to-cart, 20 % payment failures; `write-heavy` is the worst case for state, half
//! add-to-cart and half payment failures, so every input writes. The bench knows exactly how many
//! outputs to expect, and reports any shortfall as loss.

use crate::config::Config;
use crate::egress::headers;
use crate::hub::Hub;
use crate::nats_server::{LocalNats, free_port};
use anyhow::{Context, bail};
use async_nats::header::HeaderName;
use async_nats::{Client, Subject, Subscriber};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

/// Most inputs that may be published but not yet accounted for by an output. This bounds every
/// queue on the way (client buffers, server, hub subscription, shard queues), so nothing
/// overflows, and async-nats never silently drops anything.
const WINDOW: u64 = 20_000;
/// Failures of one actor that make payment-trouble act (its configured `threshold`).
const THRESHOLD: u64 = 3;
/// Actors whose failures are interleaved in one round. Each of them gets its THRESHOLD
/// failures within THRESHOLD × this many failures, so failures that have not yet led to an
/// action (and so do not count as processed) stay far below WINDOW.
const ROUND_ACTORS: u64 = 1_000;
/// How long outputs may stop arriving before the missing ones count as lost.
const STALL: Duration = Duration::from_secs(10);
/// Pause between the unpaced burst and the paced phase, so that the burst's write-behind
/// commits and sled flushes do not show up in the paced latencies.
const SETTLE: Duration = Duration::from_secs(1);
/// Messages buffered per subscription of the bench's clients. async-nats drops messages
/// silently beyond this, so it is far larger than WINDOW.
const SUBSCRIPTION_CAPACITY: usize = 1 << 20;
/// Highest latency the histograms can hold, in µs (one minute).
const MAX_LATENCY_US: u64 = 60_000_000;

const VIEW_SUBJECT: &str = "web.page_view";
const WEB_SUBJECT: &str = "web.add_to_cart";
const PAYMENT_SUBJECT: &str = "events.payment.failed";
const HUB_OUTPUTS: &str = "hub.>";
const CART_SUBJECT: &str = "hub.events.cart.updated";
const VIEWED_SUBJECT: &str = "hub.events.product.viewed";
const ACTION_SUBJECT: &str = "hub.actions.support.callback";
const DLQ_PREFIX: &str = "hub.dlq.";
const RELAY_IN: &str = "bench.relay.in.>";
const RELAY_VIEW: &str = "bench.relay.in.view";
const RELAY_WEB: &str = "bench.relay.in.web";
const RELAY_PAYMENT: &str = "bench.relay.in.payment";
const RELAY_OUT: &str = "bench.relay.out";

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// NATS server to use [default: start a private nats-server on a free port]
    #[arg(long)]
    pub nats: Option<String>,
    /// Distinct actors the inputs are spread over
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub actors: u64,
    /// Inputs of the unpaced (throughput) phase
    #[arg(long, default_value_t = 400_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub events: u64,
    /// Inputs per second of the paced (latency) phase
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: u64,
    /// Duration of the paced phase in seconds
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub seconds: u64,
    /// Shard threads of the hub (0: one per core)
    #[arg(long, default_value_t = 0)]
    pub shards: usize,
    /// Repeat the unpaced, paced and relay phases this many times and report medians
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub runs: u64,
    /// Extra plugin instances that subscribe to kinds not in the stream (copies of the
    /// customer-creation reference plugin): with the 3 examples, `--idle-plugins 2` vs `47`
    /// compares 5 with 50 loaded plugins
    #[arg(long, default_value_t = 0)]
    pub idle_plugins: u64,
    /// Plugin swaps during a second paced phase (0: skip that phase)
    #[arg(long, default_value_t = 5)]
    pub swaps: u64,
    /// Proportions of the inputs (see the module docs)
    #[arg(long, value_enum, default_value_t = Mix::Clickstream)]
    pub mix: Mix,
    /// Print the whole report as one JSON object
    #[arg(long)]
    pub json: bool,
}

/// The proportions of input kinds.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mix {
    /// 60 % page views, 20 % add-to-cart, 20 % payment failures.
    Clickstream,
    /// 50 % add-to-cart, 50 % payment failures: every input writes state.
    WriteHeavy,
}

/// What kind of input the `seq`th is, in tenths.
enum Slot {
    View,
    Cart,
    Payment,
}

impl Mix {
    fn slot(self, seq: u64) -> Slot {
        match (self, seq % 10) {
            (Mix::Clickstream, 0..6) => Slot::View,
            (Mix::Clickstream, 6..8) => Slot::Cart,
            (Mix::Clickstream, _) => Slot::Payment,
            (Mix::WriteHeavy, n) if n % 2 == 0 => Slot::Cart,
            (Mix::WriteHeavy, _) => Slot::Payment,
        }
    }
}

/// Run the bench, print the report, and fail if any output was lost.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let server = Server::for_args(&args).await?;
    let outcome = bench(&args, server.url()).await;
    let server_slow_consumers = server.slow_consumers();
    server.stop().await;
    let mut report = outcome?;
    report.server_slow_consumers = server_slow_consumers;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).context("cannot render the report as JSON")?
        );
    } else {
        print_text(&report);
    }
    let swapping_lost = report.swapping.as_ref().map_or(0, |s| s.phase.lost);
    let lost = report.unpaced.lost + report.paced.lost + swapping_lost + report.relay.lost;
    if lost > 0 {
        bail!(
            "{lost} output(s) lost over {} run(s): unpaced {}, paced {}, swapping {swapping_lost}, relay {}",
            report.runs,
            report.unpaced.lost,
            report.paced.lost,
            report.relay.lost
        );
    }
    Ok(())
}

/// The NATS server the bench talks to: one given with `--nats`, or a private one in a temp dir.
enum Server {
    External(String),
    Private { nats: LocalNats, dir: tempfile::TempDir },
}

impl Server {
    /// Use `--nats` if given; otherwise start a nats-server nobody else uses, so that other
    /// traffic cannot distort the figures.
    async fn for_args(args: &BenchArgs) -> anyhow::Result<Server> {
        if let Some(url) = &args.nats {
            return Ok(Server::External(url.clone()));
        }
        let dir = tempfile::tempdir().context("cannot create a temp dir for nats-server")?;
        let port = free_port().context("cannot find a free port for nats-server")?;
        let nats = LocalNats::start(port, dir.path()).await?;
        Ok(Server::Private { nats, dir })
    }

    fn url(&self) -> &str {
        match self {
            Server::External(url) => url,
            Server::Private { nats, .. } => &nats.url,
        }
    }

    /// Slow-consumer reports in a private server's log: the server drops what it cannot write to
    /// a client fast enough, and only its log says so. None for an external server.
    fn slow_consumers(&self) -> Option<u64> {
        let Server::Private { dir, .. } = self else {
            return None;
        };
        let log = std::fs::read_to_string(dir.path().join("nats-server.log")).ok()?;
        Some(log.lines().filter(|l| l.contains("Slow Consumer")).count() as u64)
    }

    async fn stop(self) {
        if let Server::Private { nats, dir } = self {
            nats.stop().await;
            drop(dir);
        }
    }
}

/// The bench's own NATS connections: one publishes, one receives and one relays, so that no
/// role waits behind another's socket.
struct Clients {
    publisher: Client,
    receiver: Client,
    relay: Client,
    /// Slow-consumer events reported by these clients (each means dropped messages).
    slow_consumers: Arc<AtomicU64>,
}

impl Clients {
    async fn connect(url: &str) -> anyhow::Result<Clients> {
        let slow_consumers = Arc::new(AtomicU64::new(0));
        Ok(Clients {
            publisher: connect(url, "hub-bench-publisher", &slow_consumers).await?,
            receiver: connect(url, "hub-bench-receiver", &slow_consumers).await?,
            relay: connect(url, "hub-bench-relay", &slow_consumers).await?,
            slow_consumers,
        })
    }
}

/// Connect with a subscription buffer large enough never to drop, counting slow-consumer
/// events in case it does anyway.
async fn connect(url: &str, name: &str, slow_consumers: &Arc<AtomicU64>) -> anyhow::Result<Client> {
    let slow = slow_consumers.clone();
    async_nats::ConnectOptions::new()
        .name(name)
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .event_callback(move |event| {
            let slow = slow.clone();
            async move {
                match event {
                    async_nats::Event::SlowConsumer(sid) => {
                        slow.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(sid, "bench client is a slow consumer: messages were dropped");
                    }
                    other => tracing::debug!(event = %other, "bench NATS connection event"),
                }
            }
        })
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to NATS at {url}"))
}

/// Every run, then the medians.
async fn bench(args: &BenchArgs, url: &str) -> anyhow::Result<Report> {
    let clients = Clients::connect(url).await?;
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        tracing::info!(run, of = args.runs, "bench run starting");
        runs.push(
            run_once(args, url, &clients)
                .await
                .with_context(|| format!("bench run {run}"))?,
        );
    }
    let shards = crate::config::EngineConfig {
        shards: args.shards,
        ..Default::default()
    }
    .shard_count();
    let mut report = Report::from_runs(args, shards, runs);
    report.client_slow_consumers = clients.slow_consumers.load(Ordering::Relaxed);
    Ok(report)
}

/// The hub under test: the local defaults (which map `web.*`), the example plugins, and windows
/// of an hour so that no cart-abandonment timer fires and no failure expires during the bench.
fn hub_config(args: &BenchArgs, url: &str, data_dir: &Path) -> Config {
    let mut config = Config::local_default();
    config.nats.url = url.to_owned();
    config.data_dir = data_dir.to_path_buf();
    config.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.plugins.dir = Some(PathBuf::from(crate::EXAMPLE_PLUGINS));
    config.plugins.config.insert(
        "payment-trouble".into(),
        serde_json::json!({"threshold": THRESHOLD, "window": "1h"}),
    );
    config
        .plugins
        .config
        .insert("cart-abandonment".into(), serde_json::json!({"window": "1h"}));
    config.engine.shards = args.shards;
    config
}

/// One run: a fresh hub through the unpaced and paced phases, then the relay on the same bodies.
async fn run_once(args: &BenchArgs, url: &str, clients: &Clients) -> anyhow::Result<RunReport> {
    let dir = tempfile::tempdir().context("cannot create a temp dir for the hub")?;
    let mut workload = Workload::new(args.actors, args.mix)?;
    let unpaced_inputs = workload.batch(args.events)?;
    let paced_count = args
        .rate
        .checked_mul(args.seconds)
        .context("--rate × --seconds is too large")?;
    let paced_inputs = workload.batch(paced_count)?;
    let swapping_inputs = match args.swaps {
        0 => None,
        _ => Some(workload.batch(paced_count)?),
    };

    let hub = Hub::start(hub_config(args, url, &dir.path().join("hub")))
        .await
        .context("cannot start the hub")?;
    if args.idle_plugins > 0 {
        let file = Path::new(crate::REFERENCE_PLUGINS).join("customer_creation.wasm");
        let wasm = bytes::Bytes::from(std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?);
        for i in 0..args.idle_plugins {
            hub.registry()
                .upload(&format!("idle-{i}"), wasm.clone(), None)
                .await
                .context("cannot load an idle plugin")?;
        }
    }
    let plugins = hub.registry().live().load().plugins.len();
    let hub_subjects = [
        Subject::from_static(VIEW_SUBJECT),
        Subject::from_static(WEB_SUBJECT),
        Subject::from_static(PAYMENT_SUBJECT),
    ];
    let phases = async {
        let unpaced = run_phase(clients, &hub_subjects, &unpaced_inputs, Outputs::Hub, Pace::Unpaced)
            .await
            .context("unpaced phase")?;
        tokio::time::sleep(SETTLE).await;
        let paced = run_phase(
            clients,
            &hub_subjects,
            &paced_inputs,
            Outputs::Hub,
            Pace::Paced(args.rate),
        )
        .await
        .context("paced phase")?;
        let swapping = match &swapping_inputs {
            Some(inputs) => {
                tokio::time::sleep(SETTLE).await;
                let swaps = swap_versions(hub.http_addr(), args.swaps, Duration::from_secs(args.seconds));
                let phase = run_phase(clients, &hub_subjects, inputs, Outputs::Hub, Pace::Paced(args.rate));
                let (phase, swaps) = tokio::join!(phase, swaps);
                Some((phase.context("swapping phase")?, swaps.context("swapping")?))
            }
            None => None,
        };
        anyhow::Ok((unpaced, paced, swapping))
    }
    .await;
    hub.shutdown().await;
    let (unpaced, paced, swapping) = phases?;
    let relay = relay_phase(clients, &unpaced_inputs).await.context("relay phase")?;
    let mut report = RunReport::new(unpaced, paced, swapping, relay);
    report.plugins = plugins;
    Ok(report)
}

/// One version going live during the swapping phase.
#[derive(Debug, Clone, Copy, Serialize)]
struct SwapTiming {
    /// The whole upload: validation (describe, instantiate, init) and the switch.
    put_ms: f64,
    /// From the switch until every shard served the new version (the upload returns then).
    live_ms: f64,
}

/// Upload `count` new versions of payment-trouble (alternating its action priority, so each
/// is a real new version with its own init) evenly over `during`, through the admin API.
async fn swap_versions(api: SocketAddr, count: u64, during: Duration) -> anyhow::Result<Vec<SwapTiming>> {
    let file = Path::new(crate::EXAMPLE_PLUGINS).join("payment_trouble.wasm");
    let wasm = bytes::Bytes::from(std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?);
    let http = reqwest::Client::new();
    let gap = during / u32::try_from(count + 1).unwrap_or(u32::MAX);
    let mut timings = Vec::new();
    for i in 0..count {
        tokio::time::sleep(gap).await;
        let config = serde_json::json!({"threshold": THRESHOLD, "window": "1h", "priority": 100 + (i + 1) % 2});
        let started = Instant::now();
        let response = http
            .put(format!("http://{api}/api/plugins/payment-trouble"))
            .header(reqwest::header::CONTENT_TYPE, "application/wasm")
            .query(&[("config", config.to_string())])
            .body(wasm.clone())
            .send()
            .await
            .context("the admin API did not answer")?;
        let put_ms = started.elapsed().as_secs_f64() * 1000.0;
        let status = response.status();
        let body: serde_json::Value = response.json().await.context("unreadable admin API answer")?;
        if !status.is_success() || body["live"] != true {
            bail!("swap {i} failed: {status} {body}");
        }
        timings.push(SwapTiming {
            put_ms,
            live_ms: body["live_after_ms"].as_f64().unwrap_or(f64::NAN),
        });
    }
    Ok(timings)
}

/// Run the relay and push the unpaced phase's bodies through it.
async fn relay_phase(clients: &Clients, inputs: &Batch) -> anyhow::Result<PhaseOutcome> {
    let sub = clients
        .relay
        .subscribe(RELAY_IN)
        .await
        .context("relay cannot subscribe")?;
    clients.relay.flush().await.context("relay cannot flush")?;
    let relay = tokio::spawn(relay(clients.relay.clone(), sub));
    let subjects = [
        Subject::from_static(RELAY_VIEW),
        Subject::from_static(RELAY_WEB),
        Subject::from_static(RELAY_PAYMENT),
    ];
    let outcome = run_phase(clients, &subjects, inputs, Outputs::Relay, Pace::Unpaced).await;
    relay.abort();
    outcome
}

/// The plain relay: every message in is republished, payload untouched, on RELAY_OUT.
async fn relay(client: Client, mut sub: Subscriber) -> anyhow::Result<()> {
    let out = Subject::from_static(RELAY_OUT);
    while let Some(msg) = sub.next().await {
        client
            .publish(out.clone(), msg.payload)
            .await
            .context("relay cannot publish")?;
    }
    Ok(())
}

/// What an input leads to, so that expected outputs can be counted exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A raw page view: one `product.viewed`.
    View,
    /// A raw add-to-cart: one `cart.updated`.
    Web,
    /// A payment failure below the threshold: nothing yet.
    Failure,
    /// The payment failure that reaches the threshold: one `support.callback`.
    Trigger,
}

/// One phase's inputs, rendered before the clock starts so that publishing does not allocate.
struct Batch {
    /// Run-wide sequence number of the first input; the ids are `w{seq}` and `p{seq}`.
    base: u64,
    kinds: Vec<Kind>,
    /// Slices of one buffer: cloning one is a reference count, not a copy.
    bodies: Vec<Bytes>,
}

impl Batch {
    fn len(&self) -> usize {
        self.kinds.len()
    }
}

/// Generates a run's inputs. It keeps each actor's failure count across phases, because the same
/// hub sees them all; this is how it knows which failure triggers an action.
struct Workload {
    actors: u64,
    mix: Mix,
    next_seq: u64,
    failures: u64,
    /// Failures per actor since the actor's last action.
    counts: Vec<u8>,
}

impl Workload {
    fn new(actors: u64, mix: Mix) -> anyhow::Result<Workload> {
        let len = usize::try_from(actors).context("--actors is too large")?;
        Ok(Workload {
            actors,
            mix,
            next_seq: 0,
            failures: 0,
            counts: vec![0; len],
        })
    }

    /// The next `n` inputs, kinds in the proportions of the mix: web events spread over all
    /// actors, payment failures dealt in rounds (see [`Workload::failure_actor`]).
    fn batch(&mut self, n: u64) -> anyhow::Result<Batch> {
        let len = usize::try_from(n).context("too many inputs")?;
        let base = self.next_seq;
        let mut buf = BytesMut::with_capacity(len.saturating_mul(112));
        let mut ranges = Vec::with_capacity(len);
        let mut kinds = Vec::with_capacity(len);
        for seq in base..base + n {
            let start = buf.len();
            let kind = match self.mix.slot(seq) {
                Slot::View => {
                    let actor = seq % self.actors;
                    write!(
                        buf,
                        r#"{{"visitor":"c{actor}","event_id":"w{seq}","url":"/p/a1","product":{{"sku":"A1","name":"Shoes","price":59.9}}}}"#
                    )?;
                    Kind::View
                }
                Slot::Cart => {
                    let actor = seq % self.actors;
                    write!(
                        buf,
                        r#"{{"visitor":"c{actor}","event_id":"w{seq}","product":{{"sku":"A1","name":"Shoes","price":59.9}},"qty":1}}"#
                    )?;
                    Kind::Web
                }
                Slot::Payment => {
                    let actor = self.failure_actor();
                    write!(
                        buf,
                        r#"{{"id":"p{seq}","kind":"payment.failed","actor":"c{actor}","payload":{{"amount":20}}}}"#
                    )?;
                    self.count_failure(actor)
                }
            };
            ranges.push(start..buf.len());
            kinds.push(kind);
        }
        self.next_seq = base + n;
        let all = buf.freeze();
        let bodies = ranges.into_iter().map(|r| all.slice(r)).collect();
        Ok(Batch { base, kinds, bodies })
    }

    /// The actor of the next failure. Rounds of ROUND_ACTORS actors get one failure each in
    /// turn, THRESHOLD times over, so every actor of the round reaches the threshold soon after
    /// its first failure and actions keep coming at a steady pace.
    fn failure_actor(&mut self) -> u64 {
        let round = ROUND_ACTORS.min(self.actors);
        let f = self.failures;
        self.failures += 1;
        (f / (round * THRESHOLD) * round + f % round) % self.actors
    }

    /// Count a failure as payment-trouble will; after an action the count starts again.
    fn count_failure(&mut self, actor: u64) -> Kind {
        let count = &mut self.counts[actor as usize];
        *count += 1;
        if u64::from(*count) >= THRESHOLD {
            *count = 0;
            Kind::Trigger
        } else {
            Kind::Failure
        }
    }
}

/// What the messages a phase receives are.
#[derive(Debug, Clone, Copy)]
enum Outputs {
    /// The hub's: `cart.updated` (one web input), `support.callback` (THRESHOLD failures) and
    /// dead letters (which should not be there).
    Hub,
    /// The relay's: one per input.
    Relay,
}

impl Outputs {
    /// Outputs that the first `sent` inputs of `batch` must produce.
    fn expected(self, batch: &Batch, sent: usize) -> u64 {
        let sent_kinds = &batch.kinds[..sent.min(batch.len())];
        match self {
            Outputs::Hub => sent_kinds.iter().filter(|k| **k != Kind::Failure).count() as u64,
            Outputs::Relay => sent_kinds.len() as u64,
        }
    }
}

/// How a phase publishes.
#[derive(Debug, Clone, Copy)]
enum Pace {
    /// As fast as the window allows.
    Unpaced,
    /// This many inputs per second.
    Paced(u64),
}

/// What one phase's receiver shares with its publisher and with the phase's driver.
struct Tally {
    /// The clock's zero for the instants kept in atomics below (as ns after it).
    epoch: Instant,
    base: u64,
    /// Per input: when it was published, in ns after `epoch` plus one (0: not yet).
    sent_at: Vec<AtomicU64>,
    /// Outputs received (cart.updated and actions, or relayed messages).
    outputs: AtomicU64,
    actions: AtomicU64,
    dead_letters: AtomicU64,
    /// Inputs accounted for by outputs: 1 per cart.updated or relayed message, THRESHOLD per action.
    processed: AtomicU64,
    /// When the last output arrived, in ns after `epoch`.
    last_output: AtomicU64,
    /// Wakes a publisher that waits for room in the window.
    room: Notify,
}

impl Tally {
    fn new(batch: &Batch) -> Tally {
        Tally {
            epoch: Instant::now(),
            base: batch.base,
            sent_at: (0..batch.len()).map(|_| AtomicU64::new(0)).collect(),
            outputs: AtomicU64::new(0),
            actions: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            processed: AtomicU64::new(0),
            last_output: AtomicU64::new(0),
            room: Notify::new(),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    fn at(&self, nanos: u64) -> Instant {
        self.epoch + Duration::from_nanos(nanos)
    }
}

/// A phase as measured, before it is reduced to figures.
struct PhaseOutcome {
    sent: u64,
    expected: u64,
    received: u64,
    actions: u64,
    dead_letters: u64,
    /// From the first publish to the last output received.
    elapsed: Duration,
    /// From the first publish to the last.
    publishing: Duration,
    latency: Histogram<u64>,
}

/// Publish a batch with flow control, collect its outputs, and measure.
async fn run_phase(
    clients: &Clients,
    subjects: &[Subject; 3],
    batch: &Batch,
    outputs: Outputs,
    pace: Pace,
) -> anyhow::Result<PhaseOutcome> {
    let subject = match outputs {
        Outputs::Hub => HUB_OUTPUTS,
        Outputs::Relay => RELAY_OUT,
    };
    let sub = clients
        .receiver
        .subscribe(subject)
        .await
        .context("cannot subscribe to the outputs")?;
    // The server must know the subscription before the first input goes out on another connection.
    clients.receiver.flush().await.context("cannot flush the receiver")?;
    let tally = Arc::new(Tally::new(batch));
    let latency =
        Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3).context("cannot create a latency histogram")?;
    let (stop, stopped) = watch::channel(false);
    let receiver = tokio::spawn(receive(sub, tally.clone(), outputs, stopped, latency));

    let published = publish(&clients.publisher, subjects, batch, &tally, pace).await;
    let flushed = clients.publisher.flush().await;
    let expected = outputs.expected(batch, published.as_ref().map_or(0, |p| p.sent));
    if published.is_ok() && flushed.is_ok() {
        wait_for_outputs(&tally, expected).await;
    }
    let _ = stop.send(true);
    let latency = receiver.await.context("the receiver task failed")?;
    let published = published?;
    flushed.context("cannot flush the publisher")?;
    if published.stalled {
        tracing::warn!(
            sent = published.sent,
            of = batch.len(),
            "outputs stopped coming; publishing gave up"
        );
    }

    let received = tally.outputs.load(Ordering::Acquire);
    let last_output = tally.at(tally.last_output.load(Ordering::Acquire));
    Ok(PhaseOutcome {
        sent: published.sent as u64,
        expected,
        received,
        actions: tally.actions.load(Ordering::Acquire),
        dead_letters: tally.dead_letters.load(Ordering::Acquire),
        elapsed: last_output.saturating_duration_since(published.started),
        publishing: published.finished.saturating_duration_since(published.started),
        latency,
    })
}

/// How far publishing got.
struct Published {
    sent: usize,
    started: Instant,
    finished: Instant,
    /// Outputs stopped coming while the window was full, so the rest was not sent.
    stalled: bool,
}

/// Publish a batch, unpaced or at a rate, never with more than WINDOW inputs unaccounted for.
async fn publish(
    client: &Client,
    subjects: &[Subject; 3],
    batch: &Batch,
    tally: &Tally,
    pace: Pace,
) -> anyhow::Result<Published> {
    let total = batch.len();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = Instant::now();
    let mut sent = 0;
    while sent < total {
        let due = match pace {
            Pace::Unpaced => total,
            Pace::Paced(rate) => {
                ticker.tick().await;
                // What should be out by now, so a late tick catches up instead of losing rate.
                let due = started.elapsed().as_nanos() * u128::from(rate) / 1_000_000_000;
                usize::try_from(due).unwrap_or(usize::MAX).min(total)
            }
        };
        while sent < due {
            if !wait_for_room(tally, sent as u64).await {
                return Ok(Published {
                    sent,
                    started,
                    finished: Instant::now(),
                    stalled: true,
                });
            }
            let subject = match batch.kinds[sent] {
                Kind::View => subjects[0].clone(),
                Kind::Web => subjects[1].clone(),
                Kind::Failure | Kind::Trigger => subjects[2].clone(),
            };
            tally.sent_at[sent].store(tally.nanos(Instant::now()) + 1, Ordering::Release);
            client
                .publish(subject, batch.bodies[sent].clone())
                .await
                .context("cannot publish an input")?;
            sent += 1;
        }
    }
    Ok(Published {
        sent,
        started,
        finished: Instant::now(),
        stalled: false,
    })
}

/// Wait until fewer than WINDOW of the `sent` inputs are unaccounted for. False if nothing was
/// accounted for during STALL: outputs were lost and the window will never open again.
async fn wait_for_room(tally: &Tally, sent: u64) -> bool {
    loop {
        let processed = tally.processed.load(Ordering::Acquire);
        if sent.saturating_sub(processed) < WINDOW {
            return true;
        }
        // notify_one keeps a permit, so an output that arrived since the load is not missed.
        let woken = tokio::time::timeout(STALL, tally.room.notified()).await;
        if woken.is_err() && tally.processed.load(Ordering::Acquire) == processed {
            return false;
        }
    }
}

/// Wait until `expected` outputs have arrived, or none has arrived for STALL.
async fn wait_for_outputs(tally: &Tally, expected: u64) {
    let mut seen = tally.outputs.load(Ordering::Acquire);
    let mut since = Instant::now();
    while seen < expected {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = tally.outputs.load(Ordering::Acquire);
        if now != seen {
            seen = now;
            since = Instant::now();
        } else if since.elapsed() >= STALL {
            tracing::warn!(
                received = seen,
                expected,
                "no output for {STALL:?}; counting the rest as lost"
            );
            return;
        }
    }
}

/// Count a phase's outputs until told to stop, and time every action from the publish of the
/// input that caused it (its id is in the `Hub-Cause` header).
async fn receive(
    mut sub: Subscriber,
    tally: Arc<Tally>,
    outputs: Outputs,
    mut stop: watch::Receiver<bool>,
    mut latency: Histogram<u64>,
) -> Histogram<u64> {
    let cause_header = HeaderName::from_static(headers::CAUSE);
    loop {
        let msg = tokio::select! {
            biased;
            msg = sub.next() => match msg {
                Some(msg) => msg,
                None => break,
            },
            _ = stop.changed() => break,
        };
        let received = Instant::now();
        let weight = match outputs {
            Outputs::Relay => 1,
            Outputs::Hub => match msg.subject.as_str() {
                CART_SUBJECT | VIEWED_SUBJECT => 1,
                ACTION_SUBJECT => {
                    tally.actions.fetch_add(1, Ordering::Relaxed);
                    let cause = msg.headers.as_ref().and_then(|h| h.get(cause_header.clone()));
                    if let Some(sent) = cause.and_then(|c| sent_at(&tally, c.as_str())) {
                        latency.saturating_record(received.saturating_duration_since(sent).as_micros() as u64);
                    }
                    THRESHOLD
                }
                other => {
                    if other.starts_with(DLQ_PREFIX) {
                        tally.dead_letters.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(subject = other, "dead letter during the bench");
                    }
                    continue;
                }
            },
        };
        tally.last_output.store(tally.nanos(received), Ordering::Release);
        tally.outputs.fetch_add(1, Ordering::AcqRel);
        tally.processed.fetch_add(weight, Ordering::AcqRel);
        tally.room.notify_one();
    }
    latency
}

/// When the payment failure with id `p{seq}` was published, if it belongs to this phase.
fn sent_at(tally: &Tally, id: &str) -> Option<Instant> {
    let seq: u64 = id.strip_prefix('p')?.parse().ok()?;
    let index = usize::try_from(seq.checked_sub(tally.base)?).ok()?;
    match tally.sent_at.get(index)?.load(Ordering::Acquire) {
        0 => None,
        nanos => Some(tally.at(nanos - 1)),
    }
}

/// Latency percentiles in ms; absent when nothing was measured.
#[derive(Debug, Clone, Copy, Serialize)]
struct Latency {
    p50: Option<f64>,
    p99: Option<f64>,
    p999: Option<f64>,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Latency {
        let at = |q: f64| (!histogram.is_empty()).then(|| histogram.value_at_quantile(q) as f64 / 1000.0);
        Latency {
            p50: at(0.5),
            p99: at(0.99),
            p999: at(0.999),
        }
    }
}

/// One phase's figures.
#[derive(Debug, Clone, Serialize)]
struct PhaseReport {
    inputs: u64,
    expected_outputs: u64,
    received_outputs: u64,
    lost: u64,
    /// support.callback actions received (hub phases).
    actions: u64,
    dead_letters: u64,
    /// Inputs per second from the first publish to the last output received.
    per_sec: f64,
    /// Inputs per second from the first publish to the last.
    published_per_sec: f64,
    /// Event→action latency (hub phases).
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_ms: Option<Latency>,
}

impl PhaseReport {
    fn new(o: &PhaseOutcome, outputs: Outputs) -> PhaseReport {
        let rate = |d: Duration| {
            if d.is_zero() {
                0.0
            } else {
                o.sent as f64 / d.as_secs_f64()
            }
        };
        PhaseReport {
            inputs: o.sent,
            expected_outputs: o.expected,
            received_outputs: o.received,
            lost: o.expected.saturating_sub(o.received),
            actions: o.actions,
            dead_letters: o.dead_letters,
            per_sec: rate(o.elapsed),
            published_per_sec: rate(o.publishing),
            latency_ms: match outputs {
                Outputs::Hub => Some(Latency::of(&o.latency)),
                Outputs::Relay => None,
            },
        }
    }

    /// The median of every figure over the runs, except loss and dead letters, which are summed
    /// because any of them is a failure.
    fn combine(runs: &[&PhaseReport]) -> PhaseReport {
        let count = |f: fn(&PhaseReport) -> u64| median_u64(runs.iter().map(|r| f(r)).collect());
        let rate = |f: fn(&PhaseReport) -> f64| median(runs.iter().map(|r| f(r)).collect()).unwrap_or(0.0);
        let lat = |f: fn(&Latency) -> Option<f64>| {
            median(runs.iter().filter_map(|r| r.latency_ms.and_then(|l| f(&l))).collect())
        };
        PhaseReport {
            inputs: count(|r| r.inputs),
            expected_outputs: count(|r| r.expected_outputs),
            received_outputs: count(|r| r.received_outputs),
            lost: runs.iter().map(|r| r.lost).sum(),
            actions: count(|r| r.actions),
            dead_letters: runs.iter().map(|r| r.dead_letters).sum(),
            per_sec: rate(|r| r.per_sec),
            published_per_sec: rate(|r| r.published_per_sec),
            latency_ms: runs.first().and_then(|r| r.latency_ms).map(|_| Latency {
                p50: lat(|l| l.p50),
                p99: lat(|l| l.p99),
                p999: lat(|l| l.p999),
            }),
        }
    }
}

/// The middle value, or the mean of the two middle ones; None for no values.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    match values.len() {
        0 => None,
        n if n % 2 == 1 => Some(values[mid]),
        _ => Some((values[mid - 1] + values[mid]) / 2.0),
    }
}

/// The lower middle value of counts (a count stays a whole number); 0 for no values.
fn median_u64(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values.get(values.len().saturating_sub(1) / 2).copied().unwrap_or(0)
}

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
struct RunReport {
    /// Plugins live in the hub (examples and idle ones).
    plugins: usize,
    unpaced: PhaseReport,
    paced: PhaseReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    swapping: Option<PhaseReport>,
    swaps: Vec<SwapTiming>,
    relay: PhaseReport,
    /// Hub unpaced events/s ÷ relay msgs/s.
    hub_relay_ratio: f64,
}

impl RunReport {
    fn new(
        unpaced: PhaseOutcome,
        paced: PhaseOutcome,
        swapping: Option<(PhaseOutcome, Vec<SwapTiming>)>,
        relay: PhaseOutcome,
    ) -> RunReport {
        let unpaced = PhaseReport::new(&unpaced, Outputs::Hub);
        let paced = PhaseReport::new(&paced, Outputs::Hub);
        let relay = PhaseReport::new(&relay, Outputs::Relay);
        let (swapping, swaps) = match swapping {
            Some((phase, swaps)) => (Some(PhaseReport::new(&phase, Outputs::Hub)), swaps),
            None => (None, Vec::new()),
        };
        RunReport {
            plugins: 0,
            hub_relay_ratio: ratio(unpaced.per_sec, relay.per_sec),
            unpaced,
            paced,
            swapping,
            swaps,
            relay,
        }
    }
}

/// The swapping phase next to the steady paced phase of the same runs.
#[derive(Debug, Clone, Serialize)]
struct SwapReport {
    swaps: usize,
    phase: PhaseReport,
    /// p99 event→action while swapping ÷ p99 in the paced phase (target ≤ 2).
    p99_ratio: Option<f64>,
    put_ms_median: Option<f64>,
    put_ms_max: Option<f64>,
    live_ms_median: Option<f64>,
    live_ms_max: Option<f64>,
}

impl SwapReport {
    fn from_runs(runs: &[RunReport], paced: &PhaseReport) -> Option<SwapReport> {
        let phases: Vec<&PhaseReport> = runs.iter().filter_map(|r| r.swapping.as_ref()).collect();
        if phases.is_empty() {
            return None;
        }
        let phase = PhaseReport::combine(&phases);
        let timings: Vec<SwapTiming> = runs.iter().flat_map(|r| r.swaps.iter().copied()).collect();
        let max = |v: Vec<f64>| v.into_iter().reduce(f64::max);
        let p99 = |p: &PhaseReport| p.latency_ms.and_then(|l| l.p99);
        Some(SwapReport {
            swaps: timings.len(),
            p99_ratio: p99(&phase).zip(p99(paced)).map(|(s, p)| ratio(s, p)),
            put_ms_median: median(timings.iter().map(|t| t.put_ms).collect()),
            put_ms_max: max(timings.iter().map(|t| t.put_ms).collect()),
            live_ms_median: median(timings.iter().map(|t| t.live_ms).collect()),
            live_ms_max: max(timings.iter().map(|t| t.live_ms).collect()),
            phase,
        })
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// The whole report: settings, medians over the runs, and every run.
#[derive(Debug, Serialize)]
struct Report {
    shards: usize,
    /// Plugins live in the hub (examples and `--idle-plugins`).
    plugins: usize,
    actors: u64,
    mix: Mix,
    runs: u64,
    /// Requested pace of the paced phase.
    rate: u64,
    seconds: u64,
    unpaced: PhaseReport,
    paced: PhaseReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    swapping: Option<SwapReport>,
    relay: PhaseReport,
    hub_relay_ratio: f64,
    /// Slow-consumer events of the bench's clients (each means messages dropped).
    client_slow_consumers: u64,
    /// Slow-consumer reports in a private nats-server's log (null with --nats).
    server_slow_consumers: Option<u64>,
    per_run: Vec<RunReport>,
}

impl Report {
    fn from_runs(args: &BenchArgs, shards: usize, runs: Vec<RunReport>) -> Report {
        let phase = |f: fn(&RunReport) -> &PhaseReport| PhaseReport::combine(&runs.iter().map(f).collect::<Vec<_>>());
        let unpaced = phase(|r| &r.unpaced);
        let paced = phase(|r| &r.paced);
        let relay = phase(|r| &r.relay);
        let swapping = SwapReport::from_runs(&runs, &paced);
        Report {
            shards,
            plugins: runs.first().map_or(0, |r| r.plugins),
            actors: args.actors,
            mix: args.mix,
            runs: args.runs,
            rate: args.rate,
            seconds: args.seconds,
            hub_relay_ratio: ratio(unpaced.per_sec, relay.per_sec),
            unpaced,
            paced,
            swapping,
            relay,
            client_slow_consumers: 0,
            server_slow_consumers: None,
            per_run: runs,
        }
    }
}

/// The readable report.
fn print_text(r: &Report) {
    println!(
        "hub bench: {} shards, {} plugins, {} actors, {:?} mix, {} run(s) (medians)",
        r.shards, r.plugins, r.actors, r.mix, r.runs
    );
    println!(
        "unpaced   {} events   {:.0} events/s   lost {}   {}",
        r.unpaced.inputs,
        r.unpaced.per_sec,
        r.unpaced.lost,
        latency_text(r.unpaced.latency_ms)
    );
    println!(
        "paced     {}/s for {} s (achieved {:.0}/s)   lost {}   {}",
        r.rate,
        r.seconds,
        r.paced.published_per_sec,
        r.paced.lost,
        latency_text(r.paced.latency_ms)
    );
    if let Some(s) = &r.swapping {
        let ms = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1} ms"));
        println!(
            "swapping  {}/s for {} s with {} swaps   lost {}   {}   p99 ÷ paced p99 = {}",
            r.rate,
            r.seconds,
            s.swaps,
            s.phase.lost,
            latency_text(s.phase.latency_ms),
            s.p99_ratio.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}"))
        );
        println!(
            "swaps     live on every shard after median {} (max {}); upload with validation median {} (max {})",
            ms(s.live_ms_median),
            ms(s.live_ms_max),
            ms(s.put_ms_median),
            ms(s.put_ms_max)
        );
    }
    let relay_lost = if r.relay.lost > 0 {
        format!("   lost {}", r.relay.lost)
    } else {
        String::new()
    };
    println!(
        "relay     {:.0} msgs/s (plain async-nats subscribe+republish)   hub/relay = {:.2}{relay_lost}",
        r.relay.per_sec, r.hub_relay_ratio
    );
    let dead_letters =
        r.unpaced.dead_letters + r.paced.dead_letters + r.swapping.as_ref().map_or(0, |s| s.phase.dead_letters);
    if dead_letters > 0 {
        println!("warning   {dead_letters} dead letter(s) on hub.dlq.>");
    }
    if r.client_slow_consumers > 0 || r.server_slow_consumers.is_some_and(|n| n > 0) {
        println!(
            "warning   slow consumers: {} in the bench's clients, {} in nats-server's log",
            r.client_slow_consumers,
            r.server_slow_consumers.unwrap_or(0)
        );
    }
}

fn latency_text(latency: Option<Latency>) -> String {
    let ms = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1} ms"));
    match latency {
        Some(l) => format!(
            "event→action p50 {}  p99 {}  p99.9 {}",
            ms(l.p50),
            ms(l.p99),
            ms(l.p999)
        ),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_actor_acts_on_its_third_failure() {
        let mut w = Workload::new(10, Mix::WriteHeavy).expect("workload");
        let batch = w.batch(120).expect("batch");
        // 60 failures over 10 actors, 3 each per round of 10: 2 rounds, 10 triggers each.
        let triggers = batch.kinds.iter().filter(|k| **k == Kind::Trigger).count();
        assert_eq!(triggers, 20);
        assert_eq!(Outputs::Hub.expected(&batch, batch.len()), 60 + 20);
        assert!(w.counts.iter().all(|c| *c == 0));
    }

    #[test]
    fn bodies_are_the_documented_inputs() {
        let mut w = Workload::new(100, Mix::WriteHeavy).expect("workload");
        let batch = w.batch(2).expect("batch");
        let web: serde_json::Value = serde_json::from_slice(&batch.bodies[0]).expect("web JSON");
        assert_eq!(web["visitor"], "c0");
        assert_eq!(web["event_id"], "w0");
        let failure: serde_json::Value = serde_json::from_slice(&batch.bodies[1]).expect("envelope JSON");
        assert_eq!(failure["id"], "p1");
        assert_eq!(failure["kind"], "payment.failed");
        let next = w.batch(1).expect("batch");
        assert_eq!(next.base, 2);
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
        assert_eq!(median_u64(vec![5, 1, 3, 9]), 3);
    }
}
