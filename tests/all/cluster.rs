//! Several hub instances on one NATS: partitions spread over them, each event processed once by
//! its partition's owner, re-keyed events crossing to another instance, and partitions taken
//! over when an instance stops or dies.

use crate::support::{Env, json, next, nothing, plugin_folder, reference};
use hub::config::Config;
use hub_bench::crash::HubProcess;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const PARTITIONS: u16 = 8;
const TTL: Duration = Duration::from_secs(2);

/// The test's config for instance `name`: a cluster of 8 partitions with 2 s leases, and a data
/// folder of its own.
fn member(env: &Env, name: &str) -> Config {
    let mut config = env.config();
    config.cluster.enabled = true;
    config.cluster.partitions = PARTITIONS;
    config.cluster.lease_ttl = TTL;
    config.cluster.instance = name.into();
    config.data_dir = env.dir.path().join(name);
    config
        .plugins
        .config
        .insert("payment-trouble".into(), json!({"threshold": 3}));
    config
}

async fn board(http: SocketAddr) -> Value {
    let response = reqwest::get(format!("http://{http}/api/cluster"))
        .await
        .expect("GET /api/cluster");
    assert_eq!(response.status(), 200);
    response.json().await.expect("JSON")
}

fn owned(board: &Value) -> usize {
    board["owned"].as_array().map_or(0, Vec::len)
}

/// Wait until the instances at `https` own `shares` partitions each; how long it took.
async fn until_owned(https: &[SocketAddr], shares: &[usize], within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let mut seen = Vec::new();
        for http in https {
            seen.push(owned(&board(*http).await));
        }
        if seen == shares {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "partitions owned {seen:?}, expected {shares:?} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three payment failures for each actor, and the callbacks that follow: one per actor.
async fn callbacks_once_each(env: &Env, actors: &[String]) {
    let mut callbacks = env.sub("hub.actions.support.callback").await;
    for actor in actors {
        for _ in 0..3 {
            env.send("payment.failed", actor, json!({})).await;
        }
    }
    let mut called = BTreeSet::new();
    for _ in actors {
        let callback = json(&next(&mut callbacks, "a callback", 10).await);
        let actor = callback["actor"].as_str().unwrap_or_default().to_owned();
        assert!(called.insert(actor.clone()), "{actor} called back twice");
    }
    assert_eq!(called, actors.iter().cloned().collect::<BTreeSet<_>>());
    nothing(&mut callbacks, "a callback more", 500).await;
}

fn actors(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_partitions_process_each_event_once_and_hand_back_on_stop() {
    let env = Env::new().await;
    let a = env.start(member(&env, "a")).await;
    until_owned(&[a.http_addr()], &[8], Duration::from_secs(10)).await;
    let b = env.start(member(&env, "b")).await;
    let split = until_owned(&[a.http_addr(), b.http_addr()], &[4, 4], Duration::from_secs(15)).await;
    eprintln!("a second instance got its share after {split:?}");

    let seen = board(a.http_addr()).await;
    assert_eq!(seen["partitions"], 8);
    assert_eq!(seen["ingest"], "a", "{seen}");
    let members: Vec<&str> = seen["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["instance"].as_str())
        .collect();
    assert_eq!(members, ["a", "b"]);
    let health: Value = reqwest::get(format!("http://{}/healthz", b.http_addr()))
        .await
        .expect("healthz")
        .json()
        .await
        .expect("JSON");
    assert_eq!(health["cluster"]["owned"].as_array().map(Vec::len), Some(4), "{health}");
    let metrics = reqwest::get(format!("http://{}/metrics", b.http_addr()))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("hub_cluster_partitions_owned 4"), "{metrics}");

    // Actors of both instances' partitions: each event is processed once, by its owner.
    let first = actors("c", 24);
    callbacks_once_each(&env, &first).await;

    // An actor's state is on its owner; asking the other instance is redirected there.
    let api_a = crate::support::Api::new(&a, None);
    for actor in &first {
        let (status, view) = api_a.get(&format!("/api/actors/{actor}")).await;
        assert_eq!(status, 200, "{view}");
        assert!(
            view["state"].get("payment-trouble").is_none(),
            "{actor}'s count started again after the callback: {view}"
        );
    }

    // b stops: it acknowledges what it processed and hands its partitions back at once.
    b.shutdown().await;
    let taken = until_owned(&[a.http_addr()], &[8], TTL * 3).await;
    eprintln!("partitions of a stopped instance were taken over after {taken:?}");
    assert!(board(a.http_addr()).await["taken"].as_u64() >= Some(12));

    callbacks_once_each(&env, &actors("d", 12)).await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_keyed_events_reach_the_instance_that_owns_their_actor() {
    let env = Env::new().await;
    let tv = plugin_folder(&env, "ref", &[reference("tv_audience.wasm")]);
    let config = |name| {
        let mut c = member(&env, name);
        c.plugins.dir = Some(tv.clone());
        c.plugins.config.clear();
        c
    };
    let a = env.start(config("a")).await;
    let b = env.start(config("b")).await;
    until_owned(&[a.http_addr(), b.http_addr()], &[4, 4], Duration::from_secs(15)).await;
    let mut audience = env.sub("hub.events.tv.audience").await;

    // Viewers and channels hash to partitions of either instance: every join and leave is
    // counted on its channel's key, by whichever instance owns the channel.
    let viewers = actors("v", 12);
    for (i, viewer) in viewers.iter().enumerate() {
        let channel = ["news", "sports", "films"][i % 3];
        env.send("tv.switch", viewer, json!({ "channel": channel })).await;
    }
    let mut last = std::collections::BTreeMap::new();
    for _ in &viewers {
        let event = json(&next(&mut audience, "tv.audience", 10).await);
        last.insert(
            event["payload"]["channel"].as_str().unwrap_or_default().to_owned(),
            event["payload"]["viewers"].clone(),
        );
    }
    nothing(&mut audience, "an audience counted twice", 300).await;
    assert_eq!(
        last,
        [("films", 4), ("news", 4), ("sports", 4)]
            .into_iter()
            .map(|(c, n)| (c.to_owned(), json!(n)))
            .collect()
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partitions_of_a_killed_instance_are_taken_over_once_its_leases_expire() {
    let env = Env::new().await;
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_hub"));
    let plugins = std::path::Path::new(hub::EXAMPLE_PLUGINS);
    let url = env.nats.url.clone();
    let start = |name: &'static str| {
        let data = env.dir.path().join(name);
        let url = url.clone();
        async move {
            let ttl = format!("{}s", TTL.as_secs());
            let partitions = PARTITIONS.to_string();
            let vars = [
                ("HUB_CLUSTER__ENABLED", "true"),
                ("HUB_CLUSTER__INSTANCE", name),
                ("HUB_CLUSTER__PARTITIONS", partitions.as_str()),
                ("HUB_CLUSTER__LEASE_TTL", ttl.as_str()),
            ];
            HubProcess::start_with(exe, &url, &data, plugins, &vars)
                .await
                .expect("hub up answers /healthz")
        }
    };
    let a = start("a").await;
    let b = start("b").await;
    until_owned(&[a.http(), b.http()], &[4, 4], Duration::from_secs(15)).await;

    b.kill();
    let killed = Instant::now();
    // Published while b's partitions have no live owner: they wait in the stream.
    let mut callbacks = env.sub("hub.actions.support.callback").await;
    let late = actors("k", 16);
    for actor in &late {
        for _ in 0..3 {
            env.send("payment.failed", actor, json!({})).await;
        }
    }
    until_owned(&[a.http()], &[8], TTL * 4).await;
    let taken = killed.elapsed();
    eprintln!("partitions of a killed instance were taken over after {taken:?} (lease TTL {TTL:?})");
    assert!(taken >= TTL / 2, "taken over before the leases could expire: {taken:?}");

    let mut called = BTreeSet::new();
    for _ in &late {
        let callback = json(&next(&mut callbacks, "a callback after the takeover", 10).await);
        called.insert(callback["actor"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(called, late.iter().cloned().collect::<BTreeSet<_>>());
    nothing(&mut callbacks, "a callback more", 500).await;
    a.kill();
}
