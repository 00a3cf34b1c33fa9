//! `hub bench --fairness`: one tenant's flood never slows another's. A quiet tenant publishes
//! payment failures at `--quiet-rate` on its own subjects (`tenant.quiet.events.payment.failed`;
//! every third failure of an actor makes payment-trouble act) and its event→action latency is
//! timed, on a fresh nats-server and `hub up` process per run:
//!
//! - `alone`: nothing else runs;
//! - `guarded`: a second tenant has a backlog of payment failures in its own stream (each for
//!   another of millions of actors, so each writes state and almost none acts), more than the
//!   hub gets through during the measurement, and the hub's defaults: the latency guard reads
//!   the backlog as fast as the quiet tenant's latency allows;
//! - `guarded live`: the same, with the flooding tenant also publishing throughout, unpaced or at
//!   `--live-rate` (from a thread and a connection of its own, as another client would);
//! - `rate`: the backlog without the guard, read at the flooding tenant's `rate`
//!   (`--flood-rate`);
//! - `unguarded`: the backlog without the guard or a rate: drained at the shards' full speed,
//!   the tenants sharing the shards by their shares;
//! - `shared`: for contrast, both tenants on the shared subjects, each naming itself in a
//!   `Hub-Tenant` header: one stream, where the quiet tenant's inputs wait behind the flood's.
//!
//! With `--cluster <partitions>` the hub is a cluster of one instance: the tenants' own streams
//! are forwarded to the partitions, the flood's at its `rate` in the `rate` run (the latency
//! guard and shares do nothing there).
//!
//! The quiet tenant publishes for `--warmup` seconds before it is timed: the latency guard
//! measures its unloaded lag and settles meanwhile. What those arriving inputs took is reported
//! apart (the residue of the flood read at full speed before anyone waited slows them for a few
//! seconds, whatever the guard does), and so is the p99 of each timed second.
//!
//! Per run: the quiet tenant's p50 and p99, the p99's ratio to `alone`'s, how many flood
//! inputs per second the hub processed meanwhile (from `hub_tenant_events_in_total`), the p99
//! of a message's round trip through nats-server (how busy nats-server and the machine were,
//! beyond the hub), the cores nats-server, the hub and the bench kept busy, what the latency
//! guard saw, and the share of the machine's CPU time its host took for other guests (steal):
//! a run with more than `--max-steal` is made again.

use super::BenchArgs;
use super::cpu::MachineMark;
use super::crash::{HubProcess, Membership};
use super::progress::Step;
use super::report::median;
use anyhow::{Context, bail};
use async_nats::{Client, HeaderMap};
use futures::StreamExt;
use hdrhistogram::Histogram;
use hub::nats_server::{LocalNats, free_port};
use prometheus_parse::{Labels, Sample, Scrape, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

const QUIET: &str = "quiet";
const FLOOD: &str = "flood";
/// Flood inputs stored before the quiet tenant starts, per second it publishes: more than the
/// hub processes in that time, so the hub is draining the flood from first to last.
const BACKLOG_PER_SECOND: u64 = 100_000;
/// How many times a run the host took too much from (`--max-steal`) is made again.
const REDONE_AT_MOST: usize = 2;
/// How long the quiet tenant's last actions may take to come.
const PATIENCE: Duration = Duration::from_secs(120);

/// What the flooding tenant does during a run.
#[derive(Debug, Clone, Copy, PartialEq, clap::ValueEnum)]
pub enum Flood {
    #[value(name = "alone")]
    None,
    Guarded,
    GuardedLive,
    #[value(name = "rate")]
    Rated,
    Unguarded,
    Shared,
}

impl Flood {
    fn name(self) -> &'static str {
        match self {
            Flood::None => "alone",
            Flood::Guarded => "guarded",
            Flood::GuardedLive => "guarded live",
            Flood::Rated => "rate",
            Flood::Unguarded => "unguarded",
            Flood::Shared => "shared",
        }
    }

    /// The hub's settings for the run, beyond the tenants' shares.
    fn settings(self, rate: &str) -> Vec<(&'static str, String)> {
        let off = ("HUB_INPUT__LATENCY_GUARD", "0".to_owned());
        match self {
            Flood::Rated => vec![off, ("HUB_TENANTS__FLOOD__RATE", rate.to_owned())],
            Flood::Unguarded => vec![off],
            _ => Vec::new(),
        }
    }

    /// Where a tenant publishes, and the headers it adds.
    fn route(self, tenant: &str) -> (String, HeaderMap) {
        let mut headers = HeaderMap::new();
        match self {
            Flood::Shared => {
                headers.insert(hub::tenant::HEADER, tenant);
                ("events.payment.failed".to_owned(), headers)
            }
            _ => (format!("tenant.{tenant}.events.payment.failed"), headers),
        }
    }
}

/// One run's figures.
struct Run {
    flood: Flood,
    p50_ms: f64,
    p99_ms: f64,
    /// The p99 of each second timed, ms.
    p99_by_second_ms: Vec<f64>,
    /// The p99 of the inputs published during the warm-up, ms.
    arriving_p99_ms: f64,
    actions: u64,
    expected: u64,
    /// Flood inputs the hub processed per second while the quiet tenant was timed.
    flood_per_s: Option<f64>,
    /// Flood inputs published per second: the live flood's where there is one (at
    /// `--live-rate`, or unpaced), else the backlog's (unpaced: the machine's full rate).
    flood_published_per_s: Option<f64>,
    guard: GuardSeen,
    /// Where the hub was slow meanwhile.
    slow: Option<Slow>,
    /// The p99 of a message's round trip through nats-server meanwhile (see [`round_trips`]).
    round_trip_p99_ms: f64,
    /// The share of the machine's CPU time its host took for other guests meanwhile.
    stolen: Option<f64>,
    /// Who kept the machine's cores busy meanwhile.
    busy: Option<Busy>,
}

/// The cores each process kept busy over a run's timed part: with the flood publishing, the
/// share nats-server takes tells how much of the quiet tenant's wait was the hub's to remove.
#[derive(Debug, Clone, Copy)]
struct Busy {
    nats_server: f64,
    hub: f64,
    /// The bench: the quiet tenant's publisher and receiver, and the live flood's publisher.
    bench: f64,
}

/// CPU ticks so far of nats-server, the hub and the bench.
#[derive(Debug, Clone, Copy)]
struct BusyMark {
    ticks: [u64; 3],
    at: Instant,
    pids: [u32; 2],
}

impl BusyMark {
    /// None where `/proc` is not there to read (not Linux) or nats-server has ended.
    fn now(nats_server: Option<u32>, hub: u32) -> Option<BusyMark> {
        let pids = [nats_server?, hub];
        Some(BusyMark {
            ticks: BusyMark::ticks(pids)?,
            at: Instant::now(),
            pids,
        })
    }

    fn ticks(pids: [u32; 2]) -> Option<[u64; 3]> {
        Some([
            super::cpu::ticks(&pids[0].to_string())?,
            super::cpu::ticks(&pids[1].to_string())?,
            super::cpu::ticks("self")?,
        ])
    }

    /// The cores each kept busy since this mark.
    fn busy(&self) -> Option<Busy> {
        let now = BusyMark::ticks(self.pids)?;
        let seconds = self.at.elapsed().as_secs_f64() * procfs::ticks_per_second() as f64;
        let cores = |i: usize| now[i].saturating_sub(self.ticks[i]) as f64 / seconds;
        Some(Busy {
            nats_server: cores(0),
            hub: cores(1),
            bench: cores(2),
        })
    }
}

pub(super) async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let backlog = BACKLOG_PER_SECOND * args.seconds;
    println!(
        "fairness bench: tenant {QUIET} at {}/s for {} s on its own subjects after {} s of warm-up (every third input acts); tenant {FLOOD}: a backlog of {backlog} inputs, its rate {}/s where it has one; {} run(s), medians (p99 / alone: of each round's ratio){}",
        args.quiet_rate,
        args.seconds,
        args.warmup,
        args.flood_rate,
        args.runs,
        args.cluster
            .map(|p| format!("; a cluster of one instance, {p} partitions"))
            .unwrap_or_default()
    );
    let plugins = tempfile::tempdir()?;
    std::fs::copy(
        Path::new(hub::EXAMPLE_PLUGINS).join("payment_trouble.wasm"),
        plugins.path().join("payment_trouble.wasm"),
    )
    .context("payment_trouble.wasm is built with the workspace (cargo build --release)")?;
    let floods: Vec<Flood> = [
        Flood::None,
        Flood::Guarded,
        Flood::GuardedLive,
        Flood::Rated,
        Flood::Unguarded,
        Flood::Shared,
    ]
    .into_iter()
    .filter(|f| args.only.is_empty() || args.only.contains(f))
    .collect();
    let mut runs: Vec<Run> = Vec::new();
    for round in 0..args.runs {
        // Alternate the order, so a slow spell of the machine does not always hit one kind.
        let mut order = floods.to_vec();
        if round % 2 == 1 {
            order.reverse();
        }
        for flood in order {
            let mut run = measure(args, plugins.path(), flood, backlog).await?;
            for _ in 0..REDONE_AT_MOST {
                if !run.stolen.is_some_and(|s| s * 100.0 > args.max_steal) {
                    break;
                }
                // The steal is on the run's own lines.
                print_run(&run);
                println!("    not counted: the host's steal passed --max-steal; made again");
                run = measure(args, plugins.path(), flood, backlog).await?;
            }
            print_run(&run);
            runs.push(run);
        }
    }
    print_runs(&floods, &runs);
    Ok(())
}

/// One run's figures, as it ends, so a long bench shows its figures so far.
fn print_run(run: &Run) {
    println!(
        "  {}: quiet p50 {:.2} ms, p99 {:.2} ms; flood {} inputs/s (published at {}/s)",
        run.flood.name(),
        run.p50_ms,
        run.p99_ms,
        inputs_per_s(run.flood_per_s),
        inputs_per_s(run.flood_published_per_s)
    );
    let by_second: Vec<String> = run.p99_by_second_ms.iter().map(|ms| format!("{ms:.1}")).collect();
    println!(
        "    p99 by second (ms): {}; while arriving (warm-up) {:.2} ms",
        by_second.join(" "),
        run.arriving_p99_ms
    );
    if run.actions == 0 {
        println!("    no quiet action came within the bench's patience: its latency is at least that");
    }
    println!(
        "    nats-server round trip p99 {:.2} ms; the host's steal {}",
        run.round_trip_p99_ms,
        percent(run.stolen)
    );
    if let Some(busy) = run.busy {
        println!(
            "    cores kept busy: nats-server {:.2}, the hub {:.2}, the bench {:.2}",
            busy.nats_server, busy.hub, busy.bench
        );
    }
    if let Some(guard) = run.guard.describe() {
        println!("    {guard}");
    }
    if let Some(slow) = run.slow {
        println!("    {}", slow.describe());
    }
}

/// Inputs per second as shown, or "-" for none.
fn inputs_per_s(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".to_owned(), |r| format!("{r:.0}"))
}

/// A share as a percentage, or "-" where unknown.
fn percent(share: Option<f64>) -> String {
    share.map_or_else(|| "-".to_owned(), |s| format!("{:.1} %", s * 100.0))
}

/// The quiet p99 of each run of `flood` over that of the unloaded run of the same round. The
/// two ran one after the other; the ratio of medians taken from different rounds may pair a
/// calm spell of a shared machine with a noisy one.
fn ratios_by_round(runs: &[Run], flood: Flood) -> Vec<f64> {
    let of = |flood: Flood| runs.iter().filter(move |r| r.flood == flood);
    of(Flood::None)
        .zip(of(flood))
        .map(|(alone, run)| run.p99_ms / alone.p99_ms)
        .collect()
}

fn print_runs(floods: &[Flood], runs: &[Run]) {
    let of = |flood: Flood| runs.iter().filter(move |r| r.flood == flood);
    println!(
        "{:<13} {:>10} {:>10} {:>12} {:>15} {:>18} {:>14} {:>7}",
        "run", "quiet p50", "quiet p99", "p99 / alone", "quiet actions", "flood inputs/s", "arriving p99", "steal"
    );
    for &flood in floods {
        let p50 = median(of(flood).map(|r| r.p50_ms).collect()).unwrap_or(f64::NAN);
        let p99 = median(of(flood).map(|r| r.p99_ms).collect()).unwrap_or(f64::NAN);
        let arriving = median(of(flood).map(|r| r.arriving_p99_ms).collect()).unwrap_or(f64::NAN);
        let ratio = median(ratios_by_round(runs, flood)).unwrap_or(f64::NAN);
        let actions: u64 = of(flood).map(|r| r.actions).sum();
        let expected: u64 = of(flood).map(|r| r.expected).sum();
        let rate = inputs_per_s(median(of(flood).filter_map(|r| r.flood_per_s).collect()));
        let stolen = percent(median(of(flood).filter_map(|r| r.stolen).collect()));
        println!(
            "{:<13} {:>7.2} ms {:>7.2} ms {:>12.2} {:>15} {:>18} {:>11.2} ms {:>7}",
            flood.name(),
            p50,
            p99,
            ratio,
            format!("{actions}/{expected}"),
            rate,
            arriving,
            stolen
        );
    }
    for &flood in floods.iter().filter(|&&f| f != Flood::None) {
        let ratios: Vec<String> = ratios_by_round(runs, flood).iter().map(|r| format!("{r:.2}")).collect();
        if ratios.len() > 1 {
            println!("ratios        {} / alone by round: {}", flood.name(), ratios.join(" "));
        }
    }
}

async fn measure(args: &BenchArgs, plugins: &Path, flood: Flood, backlog: u64) -> anyhow::Result<Run> {
    let step = Step::waiting(format!("fairness bench · {} · starting", flood.name()));
    let dir = tempfile::tempdir()?;
    let nats = LocalNats::start(free_port()?, &dir.path().join("nats")).await?;
    let exe = std::env::current_exe().context("cannot find the hub binary")?;
    let settings = flood.settings(&args.flood_rate.to_string());
    let mut env = vec![("HUB_TENANTS__QUIET__SHARE", "1"), ("HUB_TENANTS__FLOOD__SHARE", "1")];
    env.extend(settings.iter().map(|(k, v)| (*k, v.as_str())));
    let data = dir.path().join("data");
    let hub = match args.cluster {
        Some(partitions) => {
            let member = Membership {
                instance: "a".into(),
                partitions,
                lease_ttl: Duration::from_secs(6),
            };
            let hub = HubProcess::start_member(&exe, &nats.url, &data, plugins, &member, &env, &args.log_file).await?;
            super::cluster::balanced(&[hub.http()], partitions, Duration::from_secs(60)).await?;
            hub
        }
        None => HubProcess::start_logging(&exe, &nats.url, &data, plugins, &env, &args.log_file).await?,
    };
    // A connection each, so the quiet tenant's inputs never queue behind the flood's in a
    // client buffer of the bench's own.
    let publisher = async_nats::connect(&nats.url).await?;
    let flooder = async_nats::connect(&nats.url).await?;
    let receiver = async_nats::connect(&nats.url).await?;
    drop(step);

    let mut flood_published_per_s = None;
    if flood != Flood::None {
        let step = Step::counting(
            format!("fairness bench · {} · the flood's backlog", flood.name()),
            backlog,
            "inputs",
        );
        let started = Instant::now();
        publish_flood(&flooder, flood, args.flood_actors, 0..backlog, None, Some(&step)).await?;
        flood_published_per_s = Some(backlog as f64 / started.elapsed().as_secs_f64());
    }
    let (stop_flood, flood_stopped) = watch::channel(false);
    let live = (flood == Flood::GuardedLive)
        .then(|| live_flood(nats.url.clone(), args, backlog, flood_stopped))
        .transpose()?;

    let step = Step::waiting(format!("fairness bench · {} · timing the quiet tenant", flood.name()));
    let timer = async_nats::connect(&nats.url).await?;
    // What the hub and nats-server do is watched once the warm-up is over.
    let watch = async {
        tokio::time::sleep(Duration::from_secs(args.warmup)).await;
        let before = metrics(hub.http()).await;
        let machine = MachineMark::now();
        let busy = BusyMark::now(nats.pid(), hub.pid());
        let guard_seen = tokio::spawn(GuardSeen::watch(hub.http(), stop_flood.subscribe()));
        let round_trips = tokio::spawn(round_trips(timer, stop_flood.subscribe()));
        (before, Instant::now(), machine, busy, guard_seen, round_trips)
    };
    let (timed, (before, started, machine, busy, guard_seen, round_trips)) =
        tokio::join!(time_quiet(args, &publisher, &receiver, flood), watch);
    let after = metrics(hub.http()).await;
    let stolen = machine.and_then(|m| m.stolen());
    let busy = busy.and_then(|b| b.busy());
    let elapsed = started.elapsed().as_secs_f64();
    let _ = stop_flood.send(true);
    let guard = guard_seen.await.context("the guard's watch")?;
    let round_trip_p99_ms = round_trips.await.context("the round trips")??;
    if let Some(live) = live {
        flood_published_per_s = Some(live.await.context("the live flood's thread ended without a word")??);
    }
    drop(step);
    let Quiet {
        latency,
        arriving,
        by_second,
        actions,
        expected,
    } = timed?;
    hub.kill();
    nats.stop().await;
    let flood_per_s = match (&before, &after) {
        (Some(before), Some(after)) if flood != Flood::None => {
            Some((flood_events(after) - flood_events(before)) / elapsed)
        }
        _ => None,
    };
    let slow = match (&before, &after) {
        (Some(before), Some(after)) => Some(Slow::of(after).since(Slow::of(before))),
        _ => None,
    };
    // Shared, the quiet tenant's inputs wait behind the whole backlog: on a slow machine, for
    // longer than the bench waits. Its latency is then at least that long.
    if actions == 0 && flood != Flood::Shared {
        bail!("no action of the quiet tenant came within {} s", PATIENCE.as_secs());
    }
    let ms = |q: f64| match actions {
        0 => (PATIENCE + Duration::from_secs(args.seconds)).as_secs_f64() * 1000.0,
        _ => latency.value_at_quantile(q) as f64 / 1000.0,
    };
    let p99_ms = |h: &Histogram<u64>| h.value_at_quantile(0.99) as f64 / 1000.0;
    Ok(Run {
        flood,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p99_by_second_ms: by_second.iter().map(p99_ms).collect(),
        arriving_p99_ms: p99_ms(&arriving),
        actions,
        expected,
        flood_per_s,
        flood_published_per_s,
        guard,
        slow,
        round_trip_p99_ms,
        stolen,
        busy,
    })
}

/// How often [`round_trips`] sends a message to itself.
const ROUND_TRIP_EVERY: Duration = Duration::from_millis(5);

/// Until `stop`, time a message through nats-server and back to the same client every
/// [`ROUND_TRIP_EVERY`]: the p99 (ms) shows how much of the quiet tenant's latency is
/// nats-server's (and the machine's) rather than the hub's.
async fn round_trips(client: Client, mut stop: watch::Receiver<bool>) -> anyhow::Result<f64> {
    use hub::connection::{RoundTrip, RoundTrips};
    let mut round_trips = RoundTrips::new(client).await?;
    let mut times = Histogram::<u64>::new_with_bounds(1, 60_000_000, 2)?;
    let mut ticker = tokio::time::interval(ROUND_TRIP_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*stop.borrow() {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        // Far longer than any round trip the bench sees: none is left out of the p99.
        match round_trips.time(Duration::from_secs(10)).await {
            RoundTrip::Back(took) => times.saturating_record(took.as_micros() as u64),
            RoundTrip::Lost => bail!("a round trip through nats-server did not come back"),
            RoundTrip::Closed => break,
        }
    }
    Ok(times.value_at_quantile(0.99) as f64 / 1000.0)
}

/// Publish the flood's inputs from `first` on, at `--live-rate` or unpaced, until `stop`: from
/// a thread, a runtime and a connection of its own, as another client would (on the bench's
/// runtime it would take a worker from the quiet tenant's publisher and timer, and the bench
/// would time itself). It ends with the inputs published per second.
fn live_flood(
    url: String,
    args: &BenchArgs,
    first: u64,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<anyhow::Result<f64>>> {
    let (actors, rate) = (args.flood_actors, args.live_rate);
    let (done, ended) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("live-flood".to_owned())
        .spawn(move || {
            let published = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot build the live flood's runtime")
                .and_then(|runtime| {
                    runtime.block_on(async {
                        let client = async_nats::connect(&url).await?;
                        let started = Instant::now();
                        let published = match rate {
                            Some(rate) => paced_flood(&client, actors, first, rate, stop).await?,
                            None => {
                                publish_flood(&client, Flood::GuardedLive, actors, first.., Some(stop), None).await?
                            }
                        };
                        Ok(published as f64 / started.elapsed().as_secs_f64())
                    })
                });
            let _ = done.send(published);
        })
        .context("cannot start the live flood's thread")?;
    Ok(ended)
}

/// Publish the flood's inputs from `first` on at `rate` per second until `stop`, a
/// millisecond's worth at a time; how many it published.
async fn paced_flood(
    client: &Client,
    actors: u64,
    first: u64,
    rate: u64,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<u64> {
    let started = Instant::now();
    let mut published = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while !*stop.borrow() {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        let seqs = first + published..first + due.max(published);
        published += publish_flood(client, Flood::GuardedLive, actors, seqs, None, None).await?;
    }
    Ok(published)
}

/// Publish the flood's inputs numbered `seqs` (until `stop` says so, if given); how many it
/// published.
async fn publish_flood(
    client: &Client,
    flood: Flood,
    actors: u64,
    seqs: impl Iterator<Item = u64>,
    stop: Option<watch::Receiver<bool>>,
    step: Option<&Step>,
) -> anyhow::Result<u64> {
    let (subject, headers) = flood.route(FLOOD);
    let mut published = 0;
    for (done, seq) in seqs.enumerate() {
        if stop.as_ref().is_some_and(|s| *s.borrow()) {
            break;
        }
        let actor = super::workload::mix64(seq) % actors;
        let body = format!(r#"{{"id":"f{seq}","kind":"payment.failed","actor":"f{actor}","payload":{{"amount":20}}}}"#);
        client
            .publish_with_headers(subject.clone(), headers.clone(), body.into())
            .await
            .context("cannot publish a flood input")?;
        published += 1;
        if done % 4096 == 0 {
            if let Some(step) = step {
                step.advance(done);
            }
            // Let the other tasks run: the flood must not starve the quiet tenant's publisher.
            tokio::task::yield_now().await;
        }
    }
    client.flush().await.context("cannot flush the flood")?;
    Ok(published)
}

/// The hub's metrics, parsed; `None` where they could not be read.
async fn metrics(http: SocketAddr) -> Option<Vec<Sample>> {
    let text = reqwest::get(format!("http://{http}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(parse(&text))
}

/// The samples of a metrics text (none where it does not parse).
fn parse(text: &str) -> Vec<Sample> {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .map(|scrape| scrape.samples)
        .unwrap_or_default()
}

/// The values of `metric`'s counters and gauges, with their labels.
fn values<'a>(samples: &'a [Sample], metric: &'a str) -> impl Iterator<Item = (&'a Labels, f64)> + 'a {
    samples
        .iter()
        .filter(move |s| s.metric == metric)
        .filter_map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some((&s.labels, v)),
            Value::Histogram(_) | Value::Summary(_) => None,
        })
}

/// The flood's inputs that became events so far, from the hub's metrics.
fn flood_events(samples: &[Sample]) -> f64 {
    values(samples, hub::metrics::TENANT_EVENTS_IN)
        .filter(|(labels, _)| labels.get("tenant") == Some(FLOOD))
        .map(|(_, v)| v)
        .sum()
}

/// A moment of the hub longer than this (a histogram bucket's bound, s) is slow.
const SLOW: f64 = 0.05;

/// Where the hub was slow, from its histograms: the actions that took over [`SLOW`] from the
/// hub's receipt of their input (so not nats-server's part), and the committer's waits for the
/// disk (sled flushes) and for NATS (confirming the outputs before a commit) over it. A second
/// of high quiet p99 with slow actions is the hub's; with none, it was spent before the hub got
/// the input.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Slow {
    /// (slow, all) of each.
    actions: (f64, f64),
    flushes: (f64, f64),
    confirms: (f64, f64),
}

impl Slow {
    /// The counts so far, summed over every shard's histogram.
    fn of(samples: &[Sample]) -> Slow {
        use hub::metrics as m;
        let mut slow = Slow::default();
        for sample in samples {
            let Value::Histogram(buckets) = &sample.value else {
                continue;
            };
            let counts = match sample.metric.as_str() {
                m::EVENT_TO_ACTION_SECONDS => &mut slow.actions,
                m::STATE_FLUSHES => &mut slow.flushes,
                m::OUTPUT_CONFIRMS => &mut slow.confirms,
                _ => continue,
            };
            let below = |bound: f64| buckets.iter().find(|b| b.less_than == bound).map_or(0.0, |b| b.count);
            let all = below(f64::INFINITY);
            *counts = (counts.0 + all - below(SLOW), counts.1 + all);
        }
        slow
    }

    /// The counts since `earlier`.
    fn since(self, earlier: Slow) -> Slow {
        let minus = |a: (f64, f64), b: (f64, f64)| (a.0 - b.0, a.1 - b.1);
        Slow {
            actions: minus(self.actions, earlier.actions),
            flushes: minus(self.flushes, earlier.flushes),
            confirms: minus(self.confirms, earlier.confirms),
        }
    }

    fn describe(&self) -> String {
        let of = |(slow, all): (f64, f64)| format!("{slow:.0} of {all:.0}");
        format!(
            "over {SLOW} s: {} actions from the hub's receipt, {} sled flushes, {} output confirmations",
            of(self.actions),
            of(self.flushes),
            of(self.confirms)
        )
    }
}

/// What the latency guard saw and did while the quiet tenant was timed: medians of samples.
#[derive(Debug, Default)]
struct GuardSeen {
    /// The quiet inputs' lag (its 99th percentile over the guard's last ticks), ms.
    lag_ms: Vec<f64>,
    /// That lag with the flood held back, ms.
    baseline_ms: Vec<f64>,
    /// The flood's read limit, inputs/s.
    limit: Vec<f64>,
}

impl GuardSeen {
    /// Sample the guard's metrics every quarter second until `stop`.
    async fn watch(http: SocketAddr, mut stop: watch::Receiver<bool>) -> GuardSeen {
        use hub::metrics as m;
        let mut seen = GuardSeen::default();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return seen,
            }
            let Some(samples) = metrics(http).await else { continue };
            let first = |metric| values(&samples, metric).next().map(|(_, seconds)| seconds * 1000.0);
            seen.lag_ms.extend(first(m::INPUT_LAG_SECONDS));
            seen.baseline_ms.extend(first(m::INPUT_LAG_BASELINE_SECONDS));
            // The flood's stream is the one with a limit.
            seen.limit.extend(
                values(&samples, m::STREAM_READ_LIMIT)
                    .map(|(_, limit)| limit)
                    .filter(|limit| *limit > 0.0)
                    .max_by(f64::total_cmp),
            );
        }
    }

    fn describe(&self) -> Option<String> {
        let lag = median(self.lag_ms.clone())?;
        // The lag runs from nats-server storing an input: a second of high quiet p99 whose lag
        // stays low was spent before the stream stored the input.
        let highest = self.lag_ms.iter().copied().fold(f64::NAN, f64::max);
        let baseline = median(self.baseline_ms.clone()).unwrap_or(f64::NAN);
        let limit = inputs_per_s(median(self.limit.clone()));
        Some(format!(
            "guard: lag p99 {lag:.2} ms (highest {highest:.2} ms) against its baseline {baseline:.2} ms, flood read limit {limit}/s (medians)"
        ))
    }
}

/// What the quiet tenant's actions took (µs), each from the publish of the input that caused it.
struct Quiet {
    /// Those of the inputs published after the warm-up.
    latency: Histogram<u64>,
    /// Those of the inputs published during the warm-up.
    arriving: Histogram<u64>,
    /// Those after the warm-up, by the second their input was published in.
    by_second: Vec<Histogram<u64>>,
    /// Actions timed after the warm-up, and expected.
    actions: u64,
    expected: u64,
}

fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 600_000_000, 3)?)
}

/// Publish the quiet tenant's inputs at its rate for the warm-up and `--seconds`, and time each
/// action from the publish of the input that caused it.
async fn time_quiet(args: &BenchArgs, publisher: &Client, receiver: &Client, flood: Flood) -> anyhow::Result<Quiet> {
    let warm = args.quiet_rate * args.warmup;
    let total = warm + args.quiet_rate * args.seconds;
    // The third input of each actor acts.
    let acting = |seqs: std::ops::Range<u64>| seqs.filter(|s| s % 3 == 2).count() as u64;
    let (all_actions, expected) = (acting(0..total), acting(warm..total));
    let sent: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; total as usize]));
    let mut actions = receiver.subscribe("hub.actions.>").await?;
    receiver.flush().await?;
    let publishing = Duration::from_secs(args.warmup + args.seconds);
    let rate = args.quiet_rate;
    let collect = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut quiet = Quiet {
                latency: latency_histogram()?,
                arriving: latency_histogram()?,
                by_second: Vec::new(),
                actions: 0,
                expected,
            };
            let mut timed = 0u64;
            let deadline = tokio::time::sleep(publishing + PATIENCE);
            tokio::pin!(deadline);
            while timed < all_actions {
                let msg = tokio::select! {
                    msg = actions.next() => match msg {
                        Some(msg) => msg,
                        None => break,
                    },
                    _ = &mut deadline => break,
                };
                let arrived = Instant::now();
                let cause = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(hub::egress::headers::CAUSE))
                    .map(|v| v.as_str().to_owned());
                let Some(seq) = cause.and_then(|c| c.strip_prefix('q')?.parse::<u64>().ok()) else {
                    continue;
                };
                let at = sent.lock().ok().and_then(|s| s.get(seq as usize).copied().flatten());
                let Some(at) = at else { continue };
                let took = arrived.saturating_duration_since(at).as_micros() as u64;
                timed += 1;
                let Some(after) = seq.checked_sub(warm) else {
                    quiet.arriving.saturating_record(took);
                    continue;
                };
                quiet.latency.saturating_record(took);
                quiet.actions += 1;
                let second = (after / rate) as usize;
                while quiet.by_second.len() <= second {
                    quiet.by_second.push(latency_histogram()?);
                }
                quiet.by_second[second].saturating_record(took);
            }
            anyhow::Ok(quiet)
        })
    };
    let (subject, headers) = flood.route(QUIET);
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = Instant::now();
    let mut seq = 0u64;
    while seq < total {
        ticker.tick().await;
        let due = super::phase::due_by_now(started, args.quiet_rate, total as usize) as u64;
        while seq < due {
            // Three failures per actor, the third of which acts.
            let body = format!(
                r#"{{"id":"q{seq}","kind":"payment.failed","actor":"q{}","payload":{{"amount":20}}}}"#,
                seq / 3
            );
            if let Ok(mut s) = sent.lock()
                && let Some(slot) = s.get_mut(seq as usize)
            {
                *slot = Some(Instant::now());
            }
            publisher
                .publish_with_headers(subject.clone(), headers.clone(), body.into())
                .await
                .context("cannot publish a quiet input")?;
            seq += 1;
        }
    }
    publisher.flush().await?;
    collect.await.context("the action receiver")?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(flood: Flood, p99_ms: f64) -> Run {
        Run {
            flood,
            p50_ms: p99_ms / 2.0,
            p99_ms,
            p99_by_second_ms: Vec::new(),
            arriving_p99_ms: p99_ms,
            actions: 1,
            expected: 1,
            flood_per_s: None,
            flood_published_per_s: None,
            guard: GuardSeen::default(),
            slow: None,
            round_trip_p99_ms: 0.5,
            stolen: None,
            busy: None,
        }
    }

    #[test]
    fn each_run_is_compared_with_the_unloaded_run_of_its_round() {
        // Rounds alternate their order: alone then guarded, then guarded then alone.
        let runs = [
            run(Flood::None, 1.0),
            run(Flood::Guarded, 1.5),
            run(Flood::Guarded, 4.0),
            run(Flood::None, 8.0),
        ];
        assert_eq!(ratios_by_round(&runs, Flood::Guarded), vec![1.5, 0.5]);
        // The ratio of the medians (2.75 / 4.5) would pair the calm round's run with the noisy one's.
        assert_eq!(median(ratios_by_round(&runs, Flood::Guarded)), Some(1.0));
    }

    #[test]
    fn slow_moments_are_read_from_the_histograms_buckets_over_every_shard() {
        let metrics = |fast: u32, all: u32| {
            format!(
                "# TYPE hub_event_to_action_seconds histogram\n\
                 hub_event_to_action_seconds_bucket{{shard=\"0\",le=\"0.05\"}} {fast}\n\
                 hub_event_to_action_seconds_bucket{{shard=\"0\",le=\"+Inf\"}} {all}\n\
                 hub_event_to_action_seconds_count{{shard=\"0\"}} {all}\n\
                 hub_event_to_action_seconds_bucket{{shard=\"1\",le=\"0.05\"}} {fast}\n\
                 hub_event_to_action_seconds_bucket{{shard=\"1\",le=\"+Inf\"}} {all}\n\
                 hub_event_to_action_seconds_count{{shard=\"1\"}} {all}\n\
                 # TYPE hub_state_flush_seconds histogram\n\
                 hub_state_flush_seconds_bucket{{le=\"0.025\"}} {fast}\n\
                 hub_state_flush_seconds_bucket{{le=\"0.05\"}} {fast}\n\
                 hub_state_flush_seconds_bucket{{le=\"+Inf\"}} {all}\n\
                 hub_state_flush_seconds_sum 1.5\n\
                 hub_state_flush_seconds_count {all}\n"
            )
        };
        let slow = Slow::of(&parse(&metrics(30, 35))).since(Slow::of(&parse(&metrics(10, 12))));
        assert_eq!(
            slow,
            Slow {
                actions: (6.0, 46.0),
                flushes: (3.0, 23.0),
                confirms: (0.0, 0.0),
            }
        );
    }

    #[test]
    fn the_floods_events_are_its_tenants_series_alone() {
        let text = "# TYPE hub_tenant_events_in_total counter\n\
                    hub_tenant_events_in_total{tenant=\"quiet\"} 700\n\
                    hub_tenant_events_in_total{tenant=\"flood\"} 1234\n\
                    hub_tenant_events_in_total{tenant=\"flooding\"} 5\n";
        assert_eq!(flood_events(&parse(text)), 1234.0);
        assert_eq!(flood_events(&parse("not a metrics text {")), 0.0);
    }
}
