//! `hub cluster-bench`: what sharing the work costs. The same workload (per actor, counter
//! ticks and payment failures, with actors spread over every partition) runs through a single
//! hub, then through clusters of 1, 2, 3… `hub up` processes on one private nats-server (with
//! `--direct` also with the producer publishing to the partitions itself), and for each the CPU
//! time spent per input by the hubs and by the server is reported. Then, on the
//! largest cluster: how long a joining instance waits for its share, how long the partitions of
//! an instance that stops cleanly and of one killed with SIGKILL take to move, and how long
//! restoring a partition's state took.

use super::cpu::ticks;
use super::crash::{HubProcess, Membership, partition_streams, pending_inputs};
use super::progress::Step;
use anyhow::{Context, bail};
use async_nats::jetstream;
use hub::nats_server::{LocalNats, free_port};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct ClusterBenchArgs {
    /// Cluster sizes to measure, after a single hub
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub instances: Vec<u32>,
    /// Inputs per run
    #[arg(long, default_value_t = 100_000)]
    pub inputs: u64,
    /// Inputs per second
    #[arg(long, default_value_t = 5_000)]
    pub rate: u64,
    /// Distinct actors
    #[arg(long, default_value_t = 10_000)]
    pub actors: u64,
    /// The cluster's partitions
    #[arg(long, default_value_t = 32)]
    pub partitions: u16,
    /// The cluster's lease TTL in seconds
    #[arg(long, default_value_t = 6)]
    pub lease_ttl: u64,
    /// Also measure each cluster size with the producer publishing to the partitions itself
    /// (`hub.part.<n>` with a `Hub-Subject` header) instead of to `events.<kind>`
    #[arg(long)]
    pub direct: bool,
    /// Where the hubs' logs go (emptied first)
    #[arg(long, default_value_os_t = std::env::temp_dir().join("hub-cluster-bench.log"))]
    pub log_file: PathBuf,
}

/// Where the producer publishes.
#[derive(Clone, Copy, PartialEq)]
enum Route {
    /// To `events.<kind>`: the input stream, then its partition through the ingest lease.
    Ingest,
    /// To `hub.part.<n>` of the actor's partition, naming `events.<kind>` in `Hub-Subject`.
    Direct,
}

/// One run's figures.
struct Run {
    label: String,
    hub_us: f64,
    server_us: f64,
    took: Duration,
    /// Messages stored in each stream by the end of the run (and the bytes it keeps).
    stores: String,
}

pub async fn run(args: ClusterBenchArgs) -> anyhow::Result<()> {
    println!(
        "cluster bench: {} inputs at {}/s over {} actors, {} partitions, lease TTL {} s",
        args.inputs, args.rate, args.actors, args.partitions, args.lease_ttl
    );
    let plugins = tempfile::tempdir()?;
    for (folder, file) in [
        (hub::FIXTURE_PLUGINS, "counter.wasm"),
        (hub::EXAMPLE_PLUGINS, "payment_trouble.wasm"),
    ] {
        std::fs::copy(Path::new(folder).join(file), plugins.path().join(file))
            .with_context(|| format!("{file} is built with the workspace (cargo build --release)"))?;
    }
    let mut runs = Vec::new();
    runs.push(measure(&args, plugins.path(), 0, Route::Ingest).await?.0);
    let largest = args.instances.iter().copied().max().unwrap_or(1);
    for &n in &args.instances {
        if args.direct {
            runs.push(measure(&args, plugins.path(), n, Route::Direct).await?.0);
        }
        let (run, moves) = measure(&args, plugins.path(), n, Route::Ingest).await?;
        runs.push(run);
        if n == largest
            && let Some(moves) = moves
        {
            print_runs(&runs);
            println!("{moves}");
            return Ok(());
        }
    }
    print_runs(&runs);
    Ok(())
}

fn print_runs(runs: &[Run]) {
    println!(
        "{:<22} {:>14} {:>18} {:>10}",
        "", "hubs µs/input", "nats-server µs/input", "took"
    );
    for r in runs {
        println!(
            "{:<22} {:>14.1} {:>18.1} {:>9.1}s",
            r.label,
            r.hub_us,
            r.server_us,
            r.took.as_secs_f64()
        );
    }
    for r in runs {
        println!("{}: messages stored {}", r.label, r.stores);
    }
}

/// A single hub (`instances` 0) or a cluster of `instances`: the workload's CPU cost, and on a
/// cluster the hand-off figures.
async fn measure(
    args: &ClusterBenchArgs,
    plugins: &Path,
    instances: u32,
    route: Route,
) -> anyhow::Result<(Run, Option<String>)> {
    let mut label = match instances {
        0 => "single hub".to_owned(),
        n => format!("cluster of {n}"),
    };
    if route == Route::Direct {
        label.push_str(", direct");
    }
    let step = Step::waiting(format!("cluster bench · {label} · starting"));
    let dir = tempfile::tempdir()?;
    let nats = LocalNats::start(free_port()?, &dir.path().join("nats")).await?;
    let exe = std::env::current_exe().context("cannot find the hub binary")?;
    let client = async_nats::connect(&nats.url).await?;
    let js = jetstream::new(client.clone());
    let start = |name: String| {
        let data = dir.path().join(&name);
        let (exe, url, log) = (exe.clone(), nats.url.clone(), args.log_file.clone());
        let plugins = plugins.to_path_buf();
        let member = Membership {
            instance: name,
            partitions: args.partitions,
            lease_ttl: Duration::from_secs(args.lease_ttl),
        };
        async move {
            match instances {
                0 => HubProcess::start_logging(&exe, &url, &data, &plugins, &[], &log).await,
                _ => HubProcess::start_member(&exe, &url, &data, &plugins, &member, &[], &log).await,
            }
        }
    };
    let mut fleet = Vec::new();
    for i in 0..instances.max(1) {
        fleet.push(start(format!("i{i}")).await?);
    }
    if instances > 0 {
        balanced(&addresses(&fleet), args.partitions, Duration::from_secs(60)).await?;
    }
    drop(step);

    let hubs_before: u64 = fleet.iter().filter_map(|h| ticks(&h.pid().to_string())).sum();
    let server_pid = nats.pid().map(|p| p.to_string());
    let server_before = server_pid.as_deref().and_then(ticks).unwrap_or(0);
    let started = Instant::now();
    let step = Step::counting(format!("cluster bench · {label} · publishing"), args.inputs, "inputs");
    let partitions = (route == Route::Direct).then_some(args.partitions);
    publish(&client, args, partitions, &step).await?;
    drop(step);
    let step = Step::waiting(format!("cluster bench · {label} · catching up"));
    let deadline = Instant::now() + Duration::from_secs(300);
    while pending_inputs(&js).await? > 0 {
        if Instant::now() > deadline {
            bail!("{label}: inputs still pending after 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(step);
    let took = started.elapsed();
    let mut stores = Vec::new();
    for (label, names) in [
        ("HUB_INPUT", vec!["HUB_INPUT".to_owned()]),
        ("HUB_PARTS_<n>", partition_streams(&js).await?),
        ("HUB_PARTS_LOG", vec!["HUB_PARTS_LOG".to_owned()]),
        ("HUB_PARTS_STATE", vec!["HUB_PARTS_STATE".to_owned()]),
    ] {
        let (stored, bytes) = stored(&js, &names).await?;
        stores.push(format!("{label} {stored} ({:.1} MB)", bytes as f64 / 1e6));
    }
    let hubs_after: u64 = fleet.iter().filter_map(|h| ticks(&h.pid().to_string())).sum();
    let server_after = server_pid.as_deref().and_then(ticks).unwrap_or(0);
    let per_input = |spent: u64| spent as f64 * 10_000.0 / args.inputs as f64;
    let run = Run {
        label,
        hub_us: per_input(hubs_after.saturating_sub(hubs_before)),
        server_us: per_input(server_after.saturating_sub(server_before)),
        took,
        stores: stores.join(", "),
    };
    let moves = if instances >= 2 && route == Route::Ingest {
        let mut text = moves(args, &mut fleet, || start(format!("i{instances}"))).await?;
        for name in ["HUB_PARTS_STATE", "HUB_PARTS_LOG", "KV_HUB_CLUSTER"] {
            if let Ok(mut stream) = js.get_stream(name).await {
                let state = stream.info().await?.state.clone();
                text.push_str(&format!(
                    "\nstream {name}: {} messages, {:.1} MB",
                    state.messages,
                    state.bytes as f64 / 1e6
                ));
            }
        }
        Some(text)
    } else {
        None
    };
    for hub in fleet {
        hub.kill();
    }
    nats.stop().await;
    Ok((run, moves))
}

/// Messages stored in the streams `names` so far (their last sequences), and the bytes they
/// keep.
async fn stored(js: &jetstream::Context, names: &[String]) -> anyhow::Result<(u64, u64)> {
    let (mut stored, mut bytes) = (0, 0);
    for name in names {
        if let Ok(mut stream) = js.get_stream(name).await {
            let state = &stream.info().await?.state;
            stored += state.last_sequence;
            bytes += state.bytes;
        }
    }
    Ok((stored, bytes))
}

/// Join, clean stop, and kill on a running cluster: how long each took until every partition
/// had an owner again, evenly.
async fn moves<F, Fut>(args: &ClusterBenchArgs, fleet: &mut Vec<HubProcess>, start: F) -> anyhow::Result<String>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<HubProcess>>,
{
    let limit = Duration::from_secs(args.lease_ttl * 5 + 30);
    let step = Step::waiting("cluster bench · hand-offs".to_owned());
    fleet.push(start().await?);
    let joined = balanced(&addresses(fleet), args.partitions, limit).await?;
    let leaving = fleet.remove(0);
    let stopping = Instant::now();
    leaving.stop(Duration::from_secs(60)).await?;
    let stopped = stopping.elapsed() + balanced(&addresses(fleet), args.partitions, limit).await?;
    let killing = Instant::now();
    fleet.remove(0).kill();
    let killed = killing.elapsed() + balanced(&addresses(fleet), args.partitions, limit).await?;
    let mut restores: Vec<u64> = Vec::new();
    let mut keys: Vec<u64> = Vec::new();
    for hub in fleet.iter() {
        let board = board(hub.http()).await?;
        for r in board["restores"].as_array().into_iter().flatten() {
            restores.push(r["ms"].as_u64().unwrap_or(0));
            keys.push(r["keys"].as_u64().unwrap_or(0));
        }
    }
    drop(step);
    restores.sort_unstable();
    keys.sort_unstable();
    let median = |v: &[u64]| v.get(v.len() / 2).copied().unwrap_or(0);
    Ok(format!(
        "a joining instance had its share after {:.2} s\n\
         a cleanly stopped instance's partitions were taken over after {:.2} s (from SIGTERM)\n\
         a killed instance's partitions were taken over after {:.2} s (lease TTL {} s)\n\
         partition restores: {} seen, median {} ms (max {} ms), median {} keys (max {})",
        joined.as_secs_f64(),
        stopped.as_secs_f64(),
        killed.as_secs_f64(),
        args.lease_ttl,
        restores.len(),
        median(&restores),
        restores.last().copied().unwrap_or(0),
        median(&keys),
        keys.last().copied().unwrap_or(0),
    ))
}

async fn board(http: SocketAddr) -> anyhow::Result<Value> {
    Ok(reqwest::get(format!("http://{http}/api/cluster")).await?.json().await?)
}

/// The HTTP addresses of a fleet, for [`balanced`].
pub(crate) fn addresses(fleet: &[HubProcess]) -> Vec<SocketAddr> {
    fleet.iter().map(HubProcess::http).collect()
}

/// Wait until the instances answering at `https` own every partition between them, evenly (as
/// each sees itself); how long it took.
pub async fn balanced(https: &[SocketAddr], partitions: u16, within: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let count = https.len().max(1);
    let (low, high) = (usize::from(partitions) / count, usize::from(partitions).div_ceil(count));
    loop {
        let mut owned = Vec::new();
        for &http in https {
            owned.push(board(http).await?["owned"].as_array().map_or(0, Vec::len));
        }
        if owned.iter().sum::<usize>() == usize::from(partitions) && owned.iter().all(|&o| o >= low && o <= high) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            bail!("partitions owned {owned:?} after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The workload at `--rate`: per input, a tick or (every fourth) a payment failure, for actors
/// in turn; published to `events.<kind>`, or with `partitions` to each actor's partition.
async fn publish(
    client: &async_nats::Client,
    args: &ClusterBenchArgs,
    partitions: Option<u16>,
    step: &Step,
) -> anyhow::Result<()> {
    let pause = Duration::from_secs_f64(100.0 / args.rate as f64);
    let mut next = Instant::now();
    for i in 0..args.inputs {
        let actor = format!("a{}", i % args.actors);
        let kind = if i % 4 == 3 { "payment.failed" } else { "count.tick" };
        let subject = format!("events.{kind}");
        let body = serde_json::json!({"kind": kind, "actor": actor}).to_string().into();
        match partitions {
            Some(partitions) => {
                let headers = hub::cluster::direct_input_headers(&subject);
                let partition = hub::cluster::partition_of(&actor, partitions);
                client
                    .publish_with_headers(format!("hub.part.{partition}"), headers, body)
                    .await?;
            }
            None => client.publish(subject, body).await?,
        }
        if i % 100 == 99 {
            step.set(i + 1);
            next += pause;
            tokio::time::sleep_until(next.into()).await;
        }
    }
    client.flush().await?;
    Ok(())
}
