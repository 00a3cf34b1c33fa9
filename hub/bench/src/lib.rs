//! `hub bench`: a load generator and latency report for the example pipeline, or for every
//! reference scenario at once.
//!
//! Each run starts a fresh in-process hub with the plugins of the mix for each input mode it
//! measures (`--input both`, the default: durable and core mode, alternating which goes first;
//! `mode.rs`) and drives it from separate NATS clients, as real producers and consumers would, in
//! these phases:
//!
//! 1. **unpaced**: `--events` inputs as fast as the pipeline absorbs them (throughput);
//! 2. **paced**: `--rate` inputs per second for `--seconds` (latency under a steady load);
//! 3. **swapping** (with `--swaps N`, default 5; with `both`, in durable mode only): the paced
//!    load again while `N` new versions of the plugin that acts most (payment-trouble, or
//!    support-first with `--mix scenarios`) go live through the admin API, evenly spread; reports
//!    the p99 next to the paced phase's, how long each upload took, and how long after the switch
//!    every shard served the new version;
//! 4. **push** (example mixes; skipped with `--no-push`; with `both`, in durable mode only): the
//!    paced load again, with the `notify` delivery plugin loaded to render every support callback
//!    for the customer's devices, and a WebSocket device connected on `/push/{actor}` for every
//!    customer that will get one; reports event→action latency from the input's publish to the
//!    message on the device;
//! 5. **backtest** (durable mode; skipped with `--no-backtest`): the plugin of the swapping
//!    phase backtested over every input the run recorded in the input stream, its active version
//!    beside a candidate with its next config; reports inputs replayed per second, and that rate
//!    over the paced rate (how much faster than real time such traffic replays);
//! 6. **relay** (once per run, whatever the modes): the same bodies through a plain async-nats
//!    subscribe+republish loop, which is the ceiling for any NATS-in/NATS-out service on this
//!    machine.
//!
//! Every hub of a run gets the same inputs, so with `both` the report sets each mode's medians
//! side by side with durable ÷ core from each run's pair (`report/compare.rs`), and says whether
//! durable mode meets its targets.
//!
//! `--mix clickstream` (default) and `--mix write-heavy` drive the example plugins
//! (`examples.rs`): raw clickstream messages on `web.page_view` (each yields one
//! `hub.events.product.viewed`; no state) and `web.add_to_cart` (one `hub.events.cart.updated`;
//! the cart and a durable timer are written), and `payment.failed` envelopes (state is written;
//! every third failure of an actor yields one `hub.actions.support.callback`). `clickstream` is
//! shaped like a web shop's stream, 60 % page views, 20 % add-to-cart, 20 % payment failures;
//! `write-heavy` is the worst case for state, half add-to-cart and half payment failures, so every
//! input writes. `--mix scenarios` (`scenarios.rs`) loads every reference scenario at once and
//! blends database rows, meter readings, channel switches, the shop's web events and payment
//! trouble over the actors.
//!
//! While it runs, a progress line on stderr says which run, mode and phase it is in
//! (`progress.rs`); the hubs' logs go to `--log-file`, so the report stands alone on stdout.
//!
//! Every input is of a kind that says exactly which outputs (events on `hub.events.*`, actions on
//! `hub.actions.*`) it must produce (`workload.rs`): the generators simulate what the plugins
//! remember, outputs are counted subject by subject, any shortfall is loss and any surplus is
//! unexpected, and either fails the command. Event→action latency is measured from the publish
//! of the input whose id an action carries as its `Hub-Cause`.

mod backtest;
pub mod cluster;
mod cpu;
pub mod crash;
mod examples;
pub mod fairness;
mod mode;
mod phase;
mod progress;
mod push;
mod report;
mod scenarios;
mod swap;
mod workload;

use anyhow::{Context, bail};
use async_nats::Client;
use hub::config::Config;
use hub::hub::Hub;
use hub::nats_server::{LocalNats, free_port};
use mode::Mode;
use phase::{Outputs, Pace, relay_phase, run_phase};
use progress::Step;
use report::{HubRun, Report, RunReport, print_text};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use swap::swap_versions;
use workload::{Batch, Workload};

/// Pause between the unpaced burst and the paced phase, so that the burst's write-behind
/// commits and sled flushes do not show up in the paced latencies.
const SETTLE: Duration = Duration::from_secs(1);
/// Messages buffered per subscription of the bench's clients. async-nats drops messages
/// silently beyond this, so it is far larger than the flow-control window.
const SUBSCRIPTION_CAPACITY: usize = 1 << 20;
/// Highest latency the histograms can hold, in µs (one minute).
const MAX_LATENCY_US: u64 = 60_000_000;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// NATS server to use [default: start a private nats-server on a free port]
    #[arg(long)]
    pub nats: Option<String>,
    /// Distinct actors the inputs are spread over
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub actors: u64,
    /// Inputs of the unpaced (throughput) phase. Enough for a steady state: on the example
    /// pipeline each shard snapshots its timer log (`state/timer_log.rs`) twice
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
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
    /// Repeat every phase this many times and report medians (with `--input both`, each run
    /// measures both modes)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub runs: u64,
    /// Extra plugin instances that subscribe to kinds not in the stream (copies of the
    /// customer-creation reference plugin; of the counter fixture with `--mix scenarios`): with
    /// the 3 examples, `--idle-plugins 2` vs `47` compares 5 with 50 loaded plugins
    #[arg(long, default_value_t = 0)]
    pub idle_plugins: u64,
    /// Plugin swaps during a second paced phase (0: skip that phase)
    #[arg(long, default_value_t = 5)]
    pub swaps: u64,
    /// Skip the device push phase
    #[arg(long)]
    pub no_push: bool,
    /// Skip the backtest phase
    #[arg(long)]
    pub no_backtest: bool,
    /// Run a shadow of the plugin the swapping phase updates (its next config) through every
    /// phase: what a shadow costs the live path
    #[arg(long)]
    pub shadow: bool,
    /// Pipeline and proportions of the inputs (see the module docs)
    #[arg(long, value_enum, default_value_t = Mix::Clickstream)]
    pub mix: Mix,
    /// How the hub reads its inputs: from the input stream with exactly-once effects
    /// (`durable`, the default of `hub up`), by plain subscriptions (`core`), or `both`, side by
    /// side: each run measures both on fresh hubs with the same inputs, alternating which goes
    /// first
    #[arg(long, value_enum, default_value_t = Input::Both)]
    pub input: Input,
    /// Keep emitted events in the output stream too (`[actions] keep_events`): each once
    /// across crashes for the stream's readers, at a cost this measures
    #[arg(long)]
    pub keep_events: bool,
    /// Print the whole report as one JSON object
    #[arg(long)]
    pub json: bool,
    /// Instead of the phases above: fairness between tenants. A quiet tenant at
    /// `--quiet-rate` for `--seconds`, timed alone, then while another floods (see `fairness`)
    #[arg(long)]
    pub fairness: bool,
    /// Seconds the quiet tenant publishes with `--fairness` before it is timed, while the
    /// latency guard measures its unloaded lag and settles; those inputs' latency is reported
    /// apart (`arriving`)
    #[arg(long, default_value_t = 5)]
    pub warmup: u64,
    /// Which `--fairness` runs to make (all by default)
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<fairness::Flood>,
    /// The quiet tenant's inputs per second with `--fairness`
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(3..))]
    pub quiet_rate: u64,
    /// The flooding tenant's configured rate (inputs/s) with `--fairness`, where it has one
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub flood_rate: u32,
    /// How fast the `guarded-live` flood publishes, inputs/s with `--fairness`; unpaced
    /// (nats-server's full rate) when absent
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub live_rate: Option<u64>,
    /// Actors the flood's payment failures are spread over with `--fairness`: with millions,
    /// each failure writes a new actor's state and almost none acts
    #[arg(long, default_value_t = 10_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub flood_actors: u64,
    /// With `--fairness`, a run during which the host took more than this percentage of the
    /// machine's CPU time for other guests (steal) is made again, twice at most, and only the
    /// last counts: a p99 of a few milliseconds moves with the neighbours. Every run is printed,
    /// those not counted marked
    #[arg(long, default_value_t = 2.0, value_parser = percentage)]
    pub max_steal: f64,
    /// With `--fairness`, run the hub as a cluster of one instance with this many partitions:
    /// the tenants' own streams are forwarded to the partitions, the flood's at its `rate` in
    /// the `rate` run (a cluster has no latency guard, and ignores shares)
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub cluster: Option<u16>,
    /// Where the logs of the bench and its hubs go (emptied first), so that they do not
    /// interleave with the progress and the report
    #[arg(long, default_value_os_t = std::env::temp_dir().join("hub-bench.log"))]
    pub log_file: PathBuf,
}

/// The hubs' input modes under test (`[input] mode`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Input {
    /// Durable and core mode in every run, alternating which goes first.
    Both,
    /// From the input stream with exactly-once effects (the default of `hub up`).
    Durable,
    /// By plain subscriptions.
    Core,
}

/// The proportions of input kinds.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mix {
    /// 60 % page views, 20 % add-to-cart, 20 % payment failures.
    Clickstream,
    /// 50 % add-to-cart, 50 % payment failures: every input writes state.
    WriteHeavy,
    /// Every reference scenario at once (customer creation, energy metering, TV audience,
    /// marketing, support first) in one blend.
    Scenarios,
}

/// Run the bench, print the report, and fail if any output was lost.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.fairness {
        return fairness::run(&args).await;
    }
    let server = Server::for_args(&args).await?;
    let outcome = bench(&args, server.url(), server.pid()).await;
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
    if let Some(failure) = report.failure() {
        bail!("{failure}");
    }
    Ok(())
}

/// The NATS server the bench talks to: one given with `--nats`, or a private one in a temp dir.
enum Server {
    External(String),
    Private {
        nats: Box<LocalNats>,
        dir: tempfile::TempDir,
    },
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
        Ok(Server::Private {
            nats: Box::new(nats),
            dir,
        })
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Server::External(_) => None,
            Server::Private { nats, .. } => nats.pid(),
        }
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
    /// The private nats-server, whose CPU time each phase reports.
    server_pid: Option<u32>,
}

impl Clients {
    async fn connect(url: &str, server_pid: Option<u32>) -> anyhow::Result<Clients> {
        let slow_consumers = Arc::new(AtomicU64::new(0));
        Ok(Clients {
            publisher: connect(url, "hub-bench-publisher", &slow_consumers).await?,
            receiver: connect(url, "hub-bench-receiver", &slow_consumers).await?,
            relay: connect(url, "hub-bench-relay", &slow_consumers).await?,
            slow_consumers,
            server_pid,
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
async fn bench(args: &BenchArgs, url: &str, server_pid: Option<u32>) -> anyhow::Result<Report> {
    let clients = Clients::connect(url, server_pid).await?;
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        runs.push(
            run_once(args, run, url, &clients)
                .await
                .with_context(|| format!("bench run {run}"))?,
        );
    }
    let shards = hub::config::EngineConfig {
        shards: args.shards,
        ..Default::default()
    }
    .shard_count();
    let mut report = Report::from_runs(args, shards, runs);
    report.client_slow_consumers = clients.slow_consumers.load(Ordering::Relaxed);
    Ok(report)
}

/// A hub under test: the local defaults (which map `web.*`) with the workload's plugins, in
/// `mode`, on a private data dir and a free HTTP port.
fn hub_config(args: &BenchArgs, mode: Mode, workload: &Workload, url: &str, data_dir: &Path) -> Config {
    let mut config = Config::local_default();
    config.nats.url = url.to_owned();
    config.data_dir = data_dir.to_path_buf();
    config.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.engine.shards = args.shards;
    config.actions.keep_events = args.keep_events;
    mode.configure(&mut config);
    // The example policies judge every action (priorities, conflict window, suppressions); the
    // dedup window and the contact limit are off, because a short bench over few actors repeats
    // callbacks by design and they would be suppressed as they should be in production.
    config.policies.dedup_window = Duration::ZERO;
    config.policies.max_actions = None;
    workload.configure(&mut config);
    config
}

/// One run's inputs, rendered before any hub starts: every hub of the run gets the same ones.
struct RunInputs {
    /// The generator, which also knows the plugins and the swap target of the mix.
    workload: Workload,
    unpaced: Batch,
    paced: Batch,
    swapping: Option<Batch>,
    push: Option<Batch>,
}

impl RunInputs {
    fn new(args: &BenchArgs) -> anyhow::Result<RunInputs> {
        let mut workload = Workload::new(args)?;
        let unpaced = workload.batch(args.events)?;
        let paced_count = args
            .rate
            .checked_mul(args.seconds)
            .context("--rate × --seconds is too large")?;
        let paced = workload.batch(paced_count)?;
        let swapping = match args.swaps {
            0 => None,
            _ => Some(workload.batch(paced_count)?),
        };
        let push = match args.no_push || args.mix == Mix::Scenarios {
            true => None,
            false => Some(workload.batch(paced_count)?),
        };
        Ok(RunInputs {
            workload,
            unpaced,
            paced,
            swapping,
            push,
        })
    }
}

/// One run: a fresh hub per mode, in this run's order, then the relay on the same bodies.
async fn run_once(args: &BenchArgs, run: u64, url: &str, clients: &Clients) -> anyhow::Result<RunReport> {
    let label = format!("run {run}/{}", args.runs);
    let inputs = {
        let _step = Step::waiting(format!("{label} · rendering the inputs"));
        RunInputs::new(args)?
    };
    let mut hubs = Vec::new();
    for mode in args.input.order(run) {
        let extras = mode == args.input.extras_mode();
        let hub = hub_run(args, mode, extras, &inputs, url, clients, &format!("{label} · {mode}"))
            .await
            .with_context(|| format!("{mode} mode"))?;
        hubs.push((mode, hub));
    }
    let step = phase_step(&label, "relay", &inputs.unpaced);
    let relay = relay_phase(clients, &inputs.unpaced, &step)
        .await
        .context("relay phase")?;
    Ok(RunReport::new(hubs, &relay))
}

/// The progress of one phase over `batch`, after the `label` of its run and mode.
fn phase_step(label: &str, phase: &str, batch: &Batch) -> Step {
    Step::counting(format!("{label} · {phase}"), batch.len() as u64, "events")
}

/// One fresh hub in `mode`, on a data dir and server streams of its own, through the unpaced
/// and paced phases, and the swapping and push phases if it runs the `extras`; its progress is
/// shown after `label`.
async fn hub_run(
    args: &BenchArgs,
    mode: Mode,
    extras: bool,
    inputs: &RunInputs,
    url: &str,
    clients: &Clients,
    label: &str,
) -> anyhow::Result<HubRun> {
    let starting = Step::waiting(format!("{label} · starting the hub"));
    let dir = tempfile::tempdir().context("cannot create a temp dir for the hub")?;
    let workload = &inputs.workload;
    mode::clear_streams(&clients.publisher).await;
    let hub = Hub::start(hub_config(args, mode, workload, url, &dir.path().join("hub")))
        .await
        .context("cannot start the hub")?;
    let phases = async {
        workload.prepare(&hub, &clients.publisher).await?;
        load_idle_plugins(&hub, &workload.idle_plugin(), args.idle_plugins).await?;
        if args.shadow {
            swap::push_shadow(hub.http_addr(), &workload.swap_target()).await?;
        }
        drop(starting);
        let plugins = hub.registry().live().load().plugins.len();
        let unpaced = {
            let step = phase_step(label, "unpaced", &inputs.unpaced);
            run_phase(clients, &inputs.unpaced, Outputs::Hub, Pace::Unpaced, &step)
                .await
                .context("unpaced phase")?
        };
        let paced = {
            let step = phase_step(label, "paced", &inputs.paced);
            tokio::time::sleep(SETTLE).await;
            run_phase(clients, &inputs.paced, Outputs::Hub, Pace::Paced(args.rate), &step)
                .await
                .context("paced phase")?
        };
        let swapping = match inputs.swapping.as_ref().filter(|_| extras) {
            Some(batch) => {
                let step = phase_step(label, "swapping", batch);
                tokio::time::sleep(SETTLE).await;
                let target = workload.swap_target();
                let during = Duration::from_secs(args.seconds);
                let swaps = swap_versions(hub.http_addr(), &target, args.swaps, during, &step);
                let phase = run_phase(clients, batch, Outputs::Hub, Pace::Paced(args.rate), &step);
                let (phase, swaps) = tokio::join!(phase, swaps);
                Some((phase.context("swapping phase")?, swaps.context("swapping")?))
            }
            None => None,
        };
        let push = match inputs.push.as_ref().filter(|_| extras) {
            Some(batch) => {
                let step = phase_step(label, "push", batch);
                tokio::time::sleep(SETTLE).await;
                let phase = push::push_phase(&hub, &clients.publisher, batch, args.rate, &step).await;
                Some(phase.context("push phase")?)
            }
            None => None,
        };
        // Core input keeps no stream to replay.
        let backtest = match mode == Mode::Durable && !args.no_backtest {
            true => {
                let step = Step::waiting(format!("{label} · backtest"));
                let run = backtest::backtest_phase(hub.http_addr(), &workload.swap_target(), &step).await;
                Some(run.context("backtest phase")?)
            }
            false => None,
        };
        anyhow::Ok(HubRun::new(
            plugins,
            &unpaced,
            &paced,
            swapping,
            push.as_ref(),
            backtest,
        ))
    }
    .await;
    let _stopping = Step::waiting(format!("{label} · stopping the hub"));
    hub.shutdown().await;
    // Leave nothing of this hub on the server for the relay phase or the next hub.
    mode::clear_streams(&clients.publisher).await;
    phases
}

/// Load `count` copies of a plugin that subscribes to no kind in the stream, as `idle-<i>`.
async fn load_idle_plugins(hub: &Hub, file: &Path, count: u64) -> anyhow::Result<()> {
    if count == 0 {
        return Ok(());
    }
    let wasm = bytes::Bytes::from(std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?);
    for i in 0..count {
        hub.registry()
            .upload(&format!("idle-{i}"), wasm.clone(), None)
            .await
            .context("cannot load an idle plugin")?;
    }
    Ok(())
}

/// A percentage from 0 to 100.
fn percentage(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("{text:?} is not a percentage from 0 to 100")),
    }
}
