//! `hub crash-test`: proves exactly-once effects across crashes, the way Kafka Streams and
//! Flink do: a seeded workload goes into the input stream while a `hub up` process is killed
//! with SIGKILL at random moments (mid-batch, mid-commit, right after a hot swap) and started
//! again; at the end everything that came out is compared with what the workload must produce.
//!
//! The workload: per actor, `--rounds` ticks for the `counter` fixture (its count must end at
//! exactly the number of ticks) and three payment failures for the `payment-trouble` example
//! (exactly one `support.callback` each, after which its failure count starts again from
//! nothing). A `count.relay` per round makes the counter emit a tick for `relayed:<actor>`,
//! most often an actor of another shard: its count must end at the number of rounds too, which
//! proves that events crossing between shards are handled once. Inputs are published with JetStream acknowledgements and their id as
//! `Nats-Msg-Id`, retried until stored, so every one of them is in the stream exactly once.
//!
//! While it runs, a progress line on stderr counts the inputs and the kills; the hubs' logs go to
//! `--log-file`, so the verdict stands alone on stdout.

use super::progress::{Step, count};
use super::workload::mix64;
use anyhow::{Context, bail};
use async_nats::jetstream;
use futures::StreamExt;
use hub::nats_server::{LocalNats, free_port};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct CrashArgs {
    /// Times the hub is killed with SIGKILL and started again
    #[arg(long, default_value_t = 20)]
    pub kills: u32,
    /// Distinct actors
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub actors: u64,
    /// Ticks per actor for the counter
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub rounds: u64,
    /// Inputs per second published while the hub is killed and restarted
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: u64,
    /// Seed of the kill moments and the input order
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where the logs of the test and of every hub it starts go (emptied first), so that they do
    /// not interleave with the progress and the verdict
    #[arg(long, default_value_os_t = std::env::temp_dir().join("hub-crash-test.log"))]
    pub log_file: PathBuf,
    /// Hub instances sharing the work as a cluster (1: a single hub). With several, each kill
    /// takes one instance down with SIGKILL and starts a new one, with a data folder of its own
    /// (what the killed one processed must come back from JetStream, not from its disk); at the
    /// end one more instance joins and one stops cleanly.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub instances: u32,
    /// The cluster's partitions (with --instances above 1)
    #[arg(long, default_value_t = 16)]
    pub partitions: u16,
    /// The cluster's lease TTL in seconds: how long a killed instance's partitions wait
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    pub lease_ttl: u64,
}

/// How a `hub up` process joins a cluster.
#[derive(Debug, Clone)]
pub struct Membership {
    pub instance: String,
    pub partitions: u16,
    pub lease_ttl: Duration,
}

/// A `hub up` child process, killed with SIGKILL when dropped (also used by the test suite).
pub struct HubProcess {
    child: Child,
    http: SocketAddr,
}

impl HubProcess {
    /// Run `exe up` on `nats` (where nothing answers, it starts a nats-server of its own) with
    /// `data` and `plugins`, and wait until it answers `/healthz`. Its log goes to `data.log`.
    pub async fn start(exe: &Path, nats: &str, data: &Path, plugins: &Path) -> anyhow::Result<HubProcess> {
        HubProcess::start_with(exe, nats, data, plugins, &[]).await
    }

    /// [`HubProcess::start`] with more environment (config overrides such as
    /// `HUB_INPUT__MODE=core`).
    pub async fn start_with(
        exe: &Path,
        nats: &str,
        data: &Path,
        plugins: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<HubProcess> {
        HubProcess::start_logging(exe, nats, data, plugins, env, &data.with_extension("log")).await
    }

    /// [`HubProcess::start_logging`] as a `member` of a cluster (`env` comes after its settings).
    pub async fn start_member(
        exe: &Path,
        nats: &str,
        data: &Path,
        plugins: &Path,
        member: &Membership,
        env: &[(&str, &str)],
        log_file: &Path,
    ) -> anyhow::Result<HubProcess> {
        let partitions = member.partitions.to_string();
        let ttl = format!("{}ms", member.lease_ttl.as_millis());
        let mut all = vec![
            ("HUB_CLUSTER__ENABLED", "true"),
            ("HUB_CLUSTER__INSTANCE", member.instance.as_str()),
            ("HUB_CLUSTER__PARTITIONS", partitions.as_str()),
            ("HUB_CLUSTER__LEASE_TTL", ttl.as_str()),
        ];
        all.extend_from_slice(env);
        HubProcess::start_logging(exe, nats, data, plugins, &all, log_file).await
    }

    /// [`HubProcess::start_with`], appending its log to `log_file`.
    pub async fn start_logging(
        exe: &Path,
        nats: &str,
        data: &Path,
        plugins: &Path,
        env: &[(&str, &str)],
        log_file: &Path,
    ) -> anyhow::Result<HubProcess> {
        let port = free_port().context("no free port for the hub's HTTP")?;
        let http = SocketAddr::from(([127, 0, 0, 1], port));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_file)
            .context("cannot open the hub's log")?;
        let child = Command::new(exe)
            .args(["up", "--nats", nats, "--http", &http.to_string()])
            .arg("--data")
            .arg(data)
            .arg("--plugins")
            .arg(plugins)
            .env("HUB_ENGINE__COMMIT_INTERVAL_MS", "20")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start hub up")?;
        let process = HubProcess { child, http };
        let started = Instant::now();
        while !reqwest::get(format!("http://{http}/healthz"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "the hub did not become healthy within 60 s (see {})",
                    log_file.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(process)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where its HTTP (API, `/healthz`, `/metrics`) listens.
    pub fn http(&self) -> SocketAddr {
        self.http
    }

    /// SIGKILL it (what dropping it does).
    pub fn kill(self) {}

    /// SIGTERM it and wait until it exits (it finishes what it holds and hands it back).
    pub async fn stop(mut self, within: Duration) -> anyhow::Result<()> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).context("cannot signal the hub")?;
        let started = Instant::now();
        while self.child.try_wait()?.is_none() {
            if started.elapsed() > within {
                bail!("the hub did not stop within {within:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What came out, compared with what must.
#[derive(Debug, Default)]
struct Verdict {
    inputs_lost: u64,
    inputs_doubled: u64,
    handoffs_lost: u64,
    handoffs_doubled: u64,
    actions_missing: u64,
    actions_doubled: u64,
    state_differences: u64,
}

impl Verdict {
    fn clean(&self) -> bool {
        self.inputs_lost == 0
            && self.inputs_doubled == 0
            && self.handoffs_lost == 0
            && self.handoffs_doubled == 0
            && self.actions_missing == 0
            && self.actions_doubled == 0
            && self.state_differences == 0
    }
}

pub async fn run(args: CrashArgs) -> anyhow::Result<()> {
    if args.instances > 1 {
        return run_cluster(args).await;
    }
    let inputs = args.actors * (2 * args.rounds + 3);
    println!(
        "crash test: {} actors, {inputs} inputs at {}/s, {} kills, seed {}",
        args.actors, args.rate, args.kills, args.seed
    );
    let starting = Step::waiting("crash test · starting nats-server and the hub".to_owned());
    let dir = tempfile::tempdir().context("cannot create a temp dir")?;
    let nats = LocalNats::start(free_port()?, &dir.path().join("nats")).await?;
    let plugins = workload_plugins(dir.path())?;
    let swaps = [
        PathBuf::from(hub::FIXTURE_PLUGINS).join("counter_v2.wasm"),
        PathBuf::from(hub::FIXTURE_PLUGINS).join("counter.wasm"),
    ];
    let data = dir.path().join("data");
    let exe = std::env::current_exe().context("cannot find the hub binary")?;
    let client = async_nats::connect(&nats.url).await?;
    let js = jetstream::new(client.clone());

    let start = || HubProcess::start_logging(&exe, &nats.url, &data, &plugins, &[], &args.log_file);
    let mut hub = start().await?;
    drop(starting);

    let publishing = Arc::new(Step::counting("crash test · publishing".to_owned(), inputs, "inputs"));
    let publisher = tokio::spawn(publish(js.clone(), args.clone(), publishing.clone()));

    let http = reqwest::Client::new();
    let started = Instant::now();
    for kill in 0..args.kills {
        publishing.note(&format!("kill {}/{}", kill + 1, args.kills));
        let r = mix64(args.seed ^ (u64::from(kill) << 32));
        let moment = if kill % 4 == 3 {
            // Mid-swap: a new version goes live, and the hub dies right after.
            let wasm = std::fs::read(&swaps[(kill as usize / 4) % 2])?;
            let url = format!("http://{}/api/plugins/counter", hub.http);
            let answer = http
                .put(url)
                .header("content-type", "application/wasm")
                .body(wasm)
                .send()
                .await?;
            if !answer.status().is_success() {
                bail!("the swap was refused: {}", answer.text().await?);
            }
            Duration::from_millis(r % 30)
        } else {
            Duration::from_millis(50 + r % 400)
        };
        tokio::time::sleep(moment).await;
        hub.kill();
        hub = start().await?;
    }
    let killing = started.elapsed();
    publishing.note(&format!("{} kills done", args.kills));
    publisher.await.context("publisher")??;
    drop(publishing);

    let verdict = settle_and_compare(&hub, &js, &args).await?;
    hub.kill();
    nats.stop().await;
    println!("{} kills in {:.1} s", args.kills, killing.as_secs_f64());
    report(&verdict)
}

/// The plugins of the workload, copied into `dir/plugins`.
fn workload_plugins(dir: &Path) -> anyhow::Result<PathBuf> {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins)?;
    for (folder, file) in [
        (hub::FIXTURE_PLUGINS, "counter.wasm"),
        (hub::EXAMPLE_PLUGINS, "payment_trouble.wasm"),
    ] {
        std::fs::copy(Path::new(folder).join(file), plugins.join(file))
            .with_context(|| format!("{file} is built with the workspace (cargo build --release)"))?;
    }
    Ok(plugins)
}

/// The crash test on a cluster: `--instances` hubs share the partitions; each kill takes one
/// down (SIGKILL) and starts a new one with an empty data folder; then one more joins and one
/// stops cleanly (SIGTERM); at the end the outputs and every actor's state are compared.
async fn run_cluster(args: CrashArgs) -> anyhow::Result<()> {
    let inputs = args.actors * (2 * args.rounds + 3);
    println!(
        "crash test: {} instances, {} partitions, {} actors, {inputs} inputs at {}/s, {} kills, seed {}",
        args.instances, args.partitions, args.actors, args.rate, args.kills, args.seed
    );
    let starting = Step::waiting("crash test · starting nats-server and the instances".to_owned());
    let dir = tempfile::tempdir().context("cannot create a temp dir")?;
    let nats = LocalNats::start(free_port()?, &dir.path().join("nats")).await?;
    let plugins = workload_plugins(dir.path())?;
    let exe = std::env::current_exe().context("cannot find the hub binary")?;
    let client = async_nats::connect(&nats.url).await?;
    let js = jetstream::new(client.clone());
    let mut named = 0;
    let mut start = || {
        named += 1;
        let member = Membership {
            instance: format!("i{named}"),
            partitions: args.partitions,
            lease_ttl: Duration::from_secs(args.lease_ttl),
        };
        let data = dir.path().join(&member.instance);
        let (exe, url, plugins, log) = (exe.clone(), nats.url.clone(), plugins.clone(), args.log_file.clone());
        async move {
            // Hand-offs and restores, in the log file, to explain a verdict.
            let env = [("RUST_LOG", "warn,hub::cluster=info,hub::ingress=info")];
            HubProcess::start_member(&exe, &url, &data, &plugins, &member, &env, &log).await
        }
    };
    let mut fleet = Vec::new();
    for _ in 0..args.instances {
        fleet.push(start().await?);
    }
    drop(starting);

    let publishing = Arc::new(Step::counting("crash test · publishing".to_owned(), inputs, "inputs"));
    let publisher = tokio::spawn(publish(js.clone(), args.clone(), publishing.clone()));
    let started = Instant::now();
    let ttl_ms = args.lease_ttl * 1000;
    for kill in 0..args.kills {
        publishing.note(&format!("kill {}/{}", kill + 1, args.kills));
        let r = mix64(args.seed ^ (u64::from(kill) << 32));
        tokio::time::sleep(Duration::from_millis(ttl_ms / 2 + r % ttl_ms)).await;
        let victim = (r >> 20) as usize % fleet.len();
        fleet.remove(victim).kill();
        fleet.push(start().await?);
    }
    publishing.note("one more joins, one stops cleanly");
    fleet.push(start().await?);
    tokio::time::sleep(Duration::from_millis(ttl_ms)).await;
    let leaving = fleet.remove(0);
    leaving.stop(Duration::from_secs(30)).await?;
    let killing = started.elapsed();
    publisher.await.context("publisher")??;
    drop(publishing);

    // Every partition with a live owner (a killed one's leases expire first).
    super::cluster::balanced(
        &super::cluster::addresses(&fleet),
        args.partitions,
        Duration::from_secs(60),
    )
    .await?;
    let verdict = settle_and_compare(&fleet[0], &js, &args).await?;
    for hub in fleet {
        hub.kill();
    }
    nats.stop().await;
    println!(
        "{} kills, a join and a clean stop in {:.1} s",
        args.kills,
        killing.as_secs_f64()
    );
    report(&verdict)
}

fn report(verdict: &Verdict) -> anyhow::Result<()> {
    println!("inputs lost        {}", verdict.inputs_lost);
    println!("inputs doubled     {}", verdict.inputs_doubled);
    println!("handoffs lost      {}", verdict.handoffs_lost);
    println!("handoffs doubled   {}", verdict.handoffs_doubled);
    println!("actions missing    {}", verdict.actions_missing);
    println!("actions doubled    {}", verdict.actions_doubled);
    println!("state differences  {}", verdict.state_differences);
    if !verdict.clean() {
        bail!("effects were lost or doubled across the kills");
    }
    Ok(())
}

/// The actors in a seeded order of their own for each round: every actor once.
fn order(args: &CrashArgs, round: u64) -> Vec<u64> {
    let mut actors: Vec<u64> = (0..args.actors).collect();
    actors.sort_by_key(|a| mix64(args.seed ^ (round << 40) ^ a));
    actors
}

/// Every input once, in a seeded order over the actors, paced at `--rate`, counted on `step`.
async fn publish(js: jetstream::Context, args: CrashArgs, step: Arc<Step>) -> anyhow::Result<()> {
    let pause = Duration::from_secs_f64(1.0 / args.rate as f64);
    let mut next = Instant::now();
    let mut stored = 0;
    for round in 0..args.rounds.max(3) {
        for actor in order(&args, round) {
            let mut kinds = vec![];
            if round < args.rounds {
                kinds.extend(["count.tick", "count.relay"]);
            }
            if round < 3 {
                kinds.push("payment.failed");
            }
            for kind in kinds {
                let id = format!("{kind}-{round}-{actor}");
                let body = serde_json::json!({"kind": kind, "actor": format!("c{actor}"), "id": id});
                store(&js, kind, &id, body.to_string()).await;
                stored += 1;
                step.set(stored);
                next += pause;
                tokio::time::sleep_until(next.into()).await;
            }
        }
    }
    Ok(())
}

/// Publish on `events.<kind>` until the stream has it (retried with the same `Nats-Msg-Id`
/// while NATS is away, so a retry after a lost acknowledgement is not stored twice).
pub async fn store(js: &jetstream::Context, kind: &str, id: &str, body: String) {
    loop {
        let publish = jetstream::message::PublishMessage::build()
            .message_id(id)
            .payload(body.clone().into());
        let stored = match js.send_publish(format!("events.{kind}"), publish).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        if stored {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the hub holds about `actor` (in a cluster, from whichever instance owns it: asked again
/// while its partition changes hands).
async fn actor_view(http: &reqwest::Client, at: SocketAddr, actor: &str) -> anyhow::Result<serde_json::Value> {
    let url = format!("http://{at}/api/actors/{actor}");
    let started = Instant::now();
    loop {
        let answer = http.get(&url).send().await?;
        let status = answer.status();
        let body: serde_json::Value = answer.json().await?;
        if status.is_success() {
            return Ok(body);
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("GET {url}: {status} {body}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Inputs not yet acknowledged by any consumer of the input stream or (in a cluster) of the
/// partition streams.
pub async fn pending_inputs(js: &jetstream::Context) -> anyhow::Result<u64> {
    use futures::TryStreamExt;
    let mut pending = 0;
    let mut names = vec!["HUB_INPUT".to_owned()];
    names.extend(partition_streams(js).await?);
    for name in names {
        let Ok(stream) = js.get_stream(&name).await else {
            continue;
        };
        let consumers: Vec<_> = stream.consumers().try_collect().await?;
        if name == "HUB_INPUT" && consumers.is_empty() {
            bail!("no consumer of the input stream");
        }
        for info in consumers {
            pending += info.num_pending + info.num_ack_pending as u64;
        }
    }
    Ok(pending)
}

/// The names of a cluster's partition streams (`HUB_PARTS_<n>`).
pub(crate) async fn partition_streams(js: &jetstream::Context) -> anyhow::Result<Vec<String>> {
    use futures::TryStreamExt;
    let names: Vec<String> = js.stream_names().try_collect().await?;
    Ok(names
        .into_iter()
        .filter(|n| {
            n.strip_prefix("HUB_PARTS_")
                .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect())
}

/// Wait until the hub has caught up (no change for a while), then compare.
async fn settle_and_compare(hub: &HubProcess, js: &jetstream::Context, args: &CrashArgs) -> anyhow::Result<Verdict> {
    let http = reqwest::Client::new();
    let mut verdict = Verdict::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last_pending = u64::MAX;
    let catching_up = Step::waiting("crash test · the hub catching up".to_owned());
    loop {
        let pending = pending_inputs(js).await?;
        if pending == 0 || Instant::now() > deadline {
            break;
        }
        catching_up.note(&format!("{} inputs pending", count(pending)));
        if pending == last_pending {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        last_pending = pending;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // What was acknowledged is applied; give the last commit a moment to be readable.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(catching_up);

    let mut callbacks: HashMap<String, u64> = HashMap::new();
    let actions = js.get_stream("HUB_ACTIONS").await?;
    let consumer = actions
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: "hub.actions.support.callback".into(),
            ..Default::default()
        })
        .await?;
    let stored = actions.cached_info().state.messages;
    let mut messages = consumer.messages().await?;
    let mut read = 0;
    while read < stored {
        let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(2), messages.next()).await else {
            break;
        };
        read += 1;
        let actor = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(hub::egress::headers::ACTOR))
            .map(|v| v.to_string())
            .unwrap_or_default();
        *callbacks.entry(actor).or_default() += 1;
    }

    let checking = Step::counting("crash test · checking".to_owned(), args.actors, "actors");
    for actor in 0..args.actors {
        checking.set(actor);
        let name = format!("c{actor}");
        let view = actor_view(&http, hub.http, &name).await?;
        let sent = args.rounds;
        let counted = view["state"]["counter"]["n"].as_u64().unwrap_or(0);
        verdict.inputs_lost += sent.saturating_sub(counted);
        verdict.inputs_doubled += counted.saturating_sub(sent);
        // Three failures: one callback, and the failure count starts again from nothing.
        let got = callbacks.get(&name).copied().unwrap_or(0);
        verdict.actions_missing += 1u64.saturating_sub(got);
        verdict.actions_doubled += got.saturating_sub(1);
        let failures_left = view["state"].get("payment-trouble").is_some();
        let relayed = actor_view(&http, hub.http, &format!("relayed:{name}")).await?;
        let relayed = relayed["state"]["counter"]["n"].as_u64().unwrap_or(0);
        verdict.handoffs_lost += sent.saturating_sub(relayed);
        verdict.handoffs_doubled += relayed.saturating_sub(sent);
        if counted != sent || relayed != sent || failures_left {
            verdict.state_differences += 1;
            if verdict.state_differences <= 20 {
                tracing::warn!(
                    actor = name,
                    partition = hub::router::Router::partition_of(&name),
                    counted,
                    relayed,
                    failures_left,
                    "crash test: state differs"
                );
            }
        }
    }
    Ok(verdict)
}
