//! Several hub instances on one NATS: partitions spread over them, each event processed once by
//! its partition's owner, re-keyed events crossing to another instance, and partitions taken
//! over when an instance stops or dies.

use crate::support::{Env, json, next, nothing, plugin_folder, reference};
use hub::config::Config;
use hub_bench::crash::{HubProcess, Membership};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
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

/// Wait until the instances at `https` share the partitions evenly; how long it took.
async fn until_owned(https: &[SocketAddr], within: Duration) -> Duration {
    hub_bench::cluster::balanced(https, PARTITIONS, within)
        .await
        .expect("partitions spread evenly")
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

/// What the cluster holds about `actor`, asked of the instance at `http` (redirected to the
/// owner; asked again while another instance's board has not yet seen a hand-off).
async fn actor_view(http: SocketAddr, actor: &str) -> Value {
    let started = Instant::now();
    loop {
        let answer = reqwest::get(format!("http://{http}/api/actors/{actor}"))
            .await
            .expect("GET");
        let status = answer.status();
        let view: Value = answer.json().await.expect("JSON");
        if status == 200 {
            return view;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{actor}: {status} {view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `hub up` process as member `name` of the test's cluster, with a data folder of its own.
async fn start_member(env: &Env, exe: &Path, url: &str, plugins: &Path, name: &str) -> HubProcess {
    let member = Membership {
        instance: name.into(),
        partitions: PARTITIONS,
        lease_ttl: TTL,
    };
    let data = env.dir.path().join(name);
    // Hand-offs and restores are logged, for a failure's folder kept with `HUB_TEST_KEEP=1`.
    let log = [("RUST_LOG", "warn,hub::cluster=info")];
    HubProcess::start_member(exe, url, &data, plugins, &member, &log, &data.with_extension("log"))
        .await
        .expect("hub up answers /healthz")
}

fn actors(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_partitions_process_each_event_once_and_hand_back_on_stop() {
    let env = Env::new().await;
    let a = env.start(member(&env, "a")).await;
    until_owned(&[a.http_addr()], Duration::from_secs(10)).await;
    let b = env.start(member(&env, "b")).await;
    let split = until_owned(&[a.http_addr(), b.http_addr()], Duration::from_secs(15)).await;
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
    // Only its presence: the gauge's value is the process's, which this test shares with the
    // other in-process hubs of the suite.
    assert!(metrics.contains("hub_cluster_partitions_owned"), "{metrics}");

    // Actors of both instances' partitions: each event is processed once, by its owner.
    let first = actors("c", 24);
    callbacks_once_each(&env, &first).await;

    // An actor's state is on its owner; asking the other instance is redirected there.
    for actor in &first {
        let view = actor_view(a.http_addr(), actor).await;
        assert!(
            view["state"].get("payment-trouble").is_none(),
            "{actor}'s count started again after the callback: {view}"
        );
    }

    // b stops: it acknowledges what it processed and hands its partitions back at once.
    b.shutdown().await;
    let taken = until_owned(&[a.http_addr()], TTL * 3).await;
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
    until_owned(&[a.http_addr(), b.http_addr()], Duration::from_secs(15)).await;
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

/// Wait until every input of the partition streams is acknowledged: well before the server
/// would deliver one again (a minute), as the streams' sequences overlap.
async fn until_acknowledged(env: &Env) {
    let js = async_nats::jetstream::new(env.client.clone());
    let started = Instant::now();
    loop {
        let pending = hub_bench::crash::pending_inputs(&js).await.expect("consumers");
        if pending == 0 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{pending} inputs not acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publish an envelope to partition `partition` of the partition stream, standing for
/// `events.<kind>`, as a producer that partitions its inputs itself does.
async fn send_to_partition(env: &Env, partition: u16, kind: &str, actor: &str) {
    let headers = hub::cluster::direct_input_headers(&format!("events.{kind}"));
    let body = json!({"kind": kind, "actor": actor, "payload": {}}).to_string();
    env.client
        .publish_with_headers(format!("hub.part.{partition}"), headers, body.into())
        .await
        .expect("publish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_published_to_their_partition_directly_are_processed_once_and_one_sent_to_a_wrong_partition_is_moved_to_its_own()
 {
    let env = Env::new().await;
    let a = env.start(member(&env, "a")).await;
    let b = env.start(member(&env, "b")).await;
    until_owned(&[a.http_addr(), b.http_addr()], Duration::from_secs(15)).await;
    let mut callbacks = env.sub("hub.actions.support.callback").await;
    let mut dlq = env.sub("hub.dlq.>").await;

    // Half the actors published to their own partition, half to the next one: each gets its
    // three failures counted in order on its owner, and one callback.
    let actors = actors("direct", 16);
    for _ in 0..3 {
        for (i, actor) in actors.iter().enumerate() {
            let own = hub::cluster::partition_of(actor, PARTITIONS);
            let to = if i % 2 == 0 { own } else { (own + 1) % PARTITIONS };
            send_to_partition(&env, to, "payment.failed", actor).await;
        }
    }
    let mut called = BTreeSet::new();
    for _ in &actors {
        let callback = json(&next(&mut callbacks, "a callback", 10).await);
        let actor = callback["actor"].as_str().unwrap_or_default().to_owned();
        assert!(called.insert(actor.clone()), "{actor} called back twice");
    }
    assert_eq!(called, actors.iter().cloned().collect::<BTreeSet<_>>());
    nothing(&mut callbacks, "a callback more", 500).await;
    until_acknowledged(&env).await;

    // Without the subject it stands for, an input is refused with the reason.
    env.send_raw("hub.part.3", br#"{"kind": "payment.failed", "actor": "x"}"#)
        .await;
    let letter = next(&mut dlq, "the refused input", 10).await;
    assert_eq!(letter.subject.as_str(), "hub.dlq.invalid");
    let reason = letter
        .headers
        .as_ref()
        .and_then(|h| h.get("Hub-Dlq-Reason"))
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default();
    assert!(reason.contains("Hub-Subject"), "{reason}");
    nothing(&mut dlq, "another dead letter", 300).await;

    // The metrics are the process's (both instances here count into them; no other test
    // misroutes): every input sent to the next partition was moved once.
    let metrics = reqwest::get(format!("http://{}/metrics", a.http_addr()))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let moved: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("hub_inputs_misrouted_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(moved, 24.0, "inputs moved to their partition: {metrics}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partitions_of_a_killed_instance_are_taken_over_once_its_leases_expire() {
    let env = Env::new().await;
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_hub"));
    let plugins = std::path::Path::new(hub::EXAMPLE_PLUGINS);
    let url = env.nats.url.clone();
    let start = |name: &'static str| start_member(&env, exe, &url, plugins, name);
    let a = start("a").await;
    let b = start("b").await;
    until_owned(&[a.http(), b.http()], Duration::from_secs(15)).await;

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
    until_owned(&[a.http()], TTL * 4).await;
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

/// An actor of `instance`'s partitions, as the cluster board of `http` sees them (asked again
/// until it has seen `instance`'s claims: another instance's board lags them by a lease tick).
async fn actor_owned_by(http: SocketAddr, instance: &str, prefix: &str) -> String {
    let started = Instant::now();
    loop {
        let seen = board(http).await;
        let theirs: BTreeSet<u64> = seen["owners"]
            .as_array()
            .expect("owners")
            .iter()
            .filter(|o| o["instance"] == instance)
            .filter_map(|o| o["partition"].as_u64())
            .collect();
        let mine = (0..10_000)
            .map(|i| format!("{prefix}{i}"))
            .find(|actor| theirs.contains(&u64::from(hub::router::Router::partition_of(actor) % PARTITIONS)));
        if let Some(actor) = mine {
            return actor;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no partition of {instance} on {seen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_timers_and_profiles_follow_a_partition_to_its_new_owner() {
    let env = Env::new().await;
    let config = |name| {
        let mut c = member(&env, name);
        c.plugins
            .config
            .insert("cart-abandonment".into(), json!({"window": "3s"}));
        c
    };
    let a = env.start(config("a")).await;
    let b = env.start(config("b")).await;
    until_owned(&[a.http_addr(), b.http_addr()], Duration::from_secs(15)).await;
    let payer = actor_owned_by(a.http_addr(), "b", "payer").await;
    let shopper = actor_owned_by(a.http_addr(), "b", "shopper").await;

    // On b: two of three failures, a cart whose reminder is due in 3 s, and a profile (set
    // through a, which redirects to b).
    let mut callbacks = env.sub("hub.actions.support.callback").await;
    let mut offers = env.sub("hub.actions.offer.cart_reminder").await;
    let mut carts = env.sub("hub.events.cart.updated").await;
    env.send("payment.failed", &payer, json!({})).await;
    env.send("payment.failed", &payer, json!({})).await;
    env.web(
        "add_to_cart",
        json!({"visitor": shopper, "product": {"sku": "A1", "name": "Shoes", "price": 50.0}}),
    )
    .await;
    next(&mut carts, "the cart on b", 5).await;
    let api_a = crate::support::Api::new(&a, None);
    let (status, _) = api_a
        .put_json(&format!("/api/actors/{payer}/profile"), r#"{"tier": "gold"}"#)
        .await;
    assert_eq!(status, 200);
    let (_, before) = api_a.get(&format!("/api/actors/{payer}")).await;
    let failures = |view: &Value| view["state"]["payment-trouble"]["failures"].as_array().map(Vec::len);
    assert_eq!(failures(&before), Some(2), "{before}");

    // b stops; a takes its partitions, rebuilding them from JetStream (a's own disk never held
    // them).
    b.shutdown().await;
    until_owned(&[a.http_addr()], TTL * 3).await;
    let seen = board(a.http_addr()).await;
    assert!(
        seen["restores"].as_array().is_some_and(|r| r.len() >= 4),
        "restores are reported: {seen}"
    );

    let (_, after) = api_a.get(&format!("/api/actors/{payer}")).await;
    assert_eq!(after["profile"]["tier"], "gold", "the profile followed: {after}");
    assert_eq!(failures(&after), Some(2), "the state followed: {after}");
    env.send("payment.failed", &payer, json!({})).await;
    let callback = json(&next(&mut callbacks, "the callback on the third failure, on a", 10).await);
    assert_eq!(callback["actor"], payer.as_str());
    assert_eq!(callback["payload"]["failures"], 3);
    let offer = json(&next(&mut offers, "the cart reminder b had set, fired by a", 10).await);
    assert_eq!(offer["actor"], shopper.as_str());
    nothing(&mut offers, "a second reminder", 500).await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_under_load_lose_and_double_nothing_when_one_is_killed_one_joins_and_one_leaves() {
    const ACTORS: usize = 300;
    let env = Env::new().await;
    let js = async_nats::jetstream::new(env.client.clone());
    let plugins = plugin_folder(
        &env,
        "with-counter",
        &[
            std::path::PathBuf::from(hub::EXAMPLE_PLUGINS).join("payment_trouble.wasm"),
            crate::support::fixture("counter.wasm"),
        ],
    );
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_hub"));
    let url = env.nats.url.clone();
    let start = |name: &'static str| start_member(&env, exe, &url, &plugins, name);
    let mut fleet = vec![start("a").await, start("b").await, start("c").await];

    // Per actor and round, a tick and a payment failure, with JetStream acknowledgements,
    // while b is killed, d joins and a leaves cleanly.
    let publisher = tokio::spawn({
        let js = js.clone();
        async move {
            for round in 0..3 {
                for a in 0..ACTORS {
                    for kind in ["count.tick", "payment.failed"] {
                        let id = format!("{kind}-{round}-{a}");
                        let body = json!({"kind": kind, "actor": format!("k{a}"), "id": id});
                        hub_bench::crash::store(&js, kind, &id, body.to_string()).await;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    fleet.remove(1).kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    fleet.push(start("d").await);
    tokio::time::sleep(TTL).await;
    fleet
        .remove(0)
        .stop(Duration::from_secs(30))
        .await
        .expect("a stops cleanly");
    publisher.await.expect("publisher");

    // c and d end with every partition between them.
    let https: Vec<SocketAddr> = fleet.iter().map(HubProcess::http).collect();
    until_owned(&https, TTL * 6).await;
    let mut actions = js.get_stream("HUB_ACTIONS").await.expect("action stream");
    let deadline = Instant::now() + Duration::from_secs(30);
    while actions.info().await.expect("info").state.messages < ACTORS as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored = actions.info().await.expect("info").state.messages;
    assert_eq!(stored, ACTORS as u64, "one callback per actor, none lost, none doubled");
    for a in 0..ACTORS {
        // Asked of c whoever owns it (redirected).
        let view = actor_view(https[0], &format!("k{a}")).await;
        assert_eq!(view["state"]["counter"]["n"], 3, "k{a}: {view}");
        assert!(view["state"].get("payment-trouble").is_none(), "k{a}: {view}");
    }
}

/// `GET path` on `http` until `done` holds of the answer (status, body), for up to 10 s.
async fn until_answer(http: SocketAddr, path: &str, done: impl Fn(u16, &Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let answer = reqwest::get(format!("http://{http}{path}")).await.expect("GET");
        let status = answer.status().as_u16();
        let body: Value = answer.json().await.unwrap_or(Value::Null);
        if done(status, &body) {
            return body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{path} on {http}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_change_made_on_one_instance_runs_on_every_instance_and_on_one_that_joins_later() {
    let env = Env::new().await;
    let a = env.start(member(&env, "a")).await;
    let b = env.start(member(&env, "b")).await;
    until_owned(&[a.http_addr(), b.http_addr()], Duration::from_secs(15)).await;
    let api_a = crate::support::Api::new(&a, None);
    let api_b = crate::support::Api::new(&b, None);
    // Both seeded the same folder: b took a's records, so they agree on every version.
    let (_, on_a) = api_a.get("/api/plugins/payment-trouble").await;
    let (_, on_b) = api_b.get("/api/plugins/payment-trouble").await;
    assert_eq!(on_a["versions"], on_b["versions"]);

    // On a: callbacks after two failures (a new version); b runs it too.
    let (status, change) = api_a
        .put_json("/api/plugins/payment-trouble/config", r#"{"threshold": 2}"#)
        .await;
    assert_eq!(status, 200, "{change}");
    let version = change["version"].clone();
    until_answer(b.http_addr(), "/api/plugins/payment-trouble", |status, body| {
        status == 200 && body["active_version"] == version
    })
    .await;
    let payer = actor_owned_by(b.http_addr(), "b", "payer").await;
    let mut callbacks = env.sub("hub.actions.support.callback").await;
    env.send("payment.failed", &payer, json!({})).await;
    env.send("payment.failed", &payer, json!({})).await;
    let callback = json(&next(&mut callbacks, "a callback at the second failure, on b", 10).await);
    assert_eq!(
        (&callback["actor"], &callback["payload"]["failures"]),
        (&json!(payer), &json!(2))
    );

    // Deleted on b: a stops running it.
    let (status, _) = api_b.delete("/api/plugins/cart-abandonment").await;
    assert_eq!(status, 200);
    until_answer(a.http_addr(), "/api/plugins/cart-abandonment", |status, _| {
        status == 404
    })
    .await;

    // An instance that joins with an empty data folder and no plugin folder runs what the
    // cluster runs (its wasm fetched from NATS).
    let mut config = member(&env, "c");
    config.plugins.dir = None;
    config.plugins.config.clear();
    let c = env.start(config).await;
    let api_c = crate::support::Api::new(&c, None);
    let (status, on_c) = api_c.get("/api/plugins/payment-trouble").await;
    assert_eq!(status, 200, "{on_c}");
    assert_eq!(on_c["active_version"], version, "{on_c}");
    let (status, _) = api_c.get("/api/plugins/cart-abandonment").await;
    assert_eq!(status, 404, "the deleted plugin stays deleted");
    for hub in [c, b, a] {
        hub.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_policies_set_on_one_instance_apply_on_every_instance_and_on_one_that_joins_later() {
    let env = Env::new().await;
    let with_acme = |name: &str| {
        let mut config = member(&env, name);
        config
            .tenants
            .insert("acme".into(), hub::tenant::TenantConfig::default());
        config
    };
    let a = env.start(with_acme("a")).await;
    let b = env.start(with_acme("b")).await;
    let body = r#"{"conflict_window": "45s", "dedup_window": "2h",
        "max_actions": {"count": 2, "window": "1day"}, "categories": {}, "suppressions": []}"#;
    let (status, set) = crate::support::Api::new(&b, None).put_json("/api/policies", body).await;
    assert_eq!(status, 200, "{set}");
    // A tenant's own, set on the other instance.
    let acme_body = r#"{"conflict_window": "5s", "max_actions": {"count": 1, "window": "1h"}}"#;
    let (status, acme) = crate::support::Api::new(&a, None)
        .put_json("/api/policies?tenant=acme", acme_body)
        .await;
    assert_eq!(status, 200, "{acme}");
    until_answer(a.http_addr(), "/api/policies", |status, on_a| {
        status == 200 && *on_a == set
    })
    .await;
    until_answer(b.http_addr(), "/api/policies?tenant=acme", |status, on_b| {
        status == 200 && *on_b == acme
    })
    .await;

    // One that joins with other policies in its config file takes the cluster's, the
    // tenant's own too.
    let mut config = with_acme("c");
    config.policies.conflict_window = Duration::from_secs(1);
    let c = env.start(config).await;
    let (_, on_c) = crate::support::Api::new(&c, None).get("/api/policies").await;
    assert_eq!(on_c, set);
    let (_, acme_on_c) = crate::support::Api::new(&c, None)
        .get("/api/policies?tenant=acme")
        .await;
    assert_eq!(acme_on_c, acme);

    // Forgotten on one while another is down, the tenant is judged by the cluster's everywhere:
    // on the one that comes back with the old set in its data folder too, which brings it back
    // nowhere.
    a.shutdown().await;
    let (status, forgotten) = crate::support::Api::new(&c, None)
        .delete("/api/policies?tenant=acme")
        .await;
    assert_eq!(status, 200, "{forgotten}");
    assert_eq!(forgotten, set);
    until_answer(b.http_addr(), "/api/policies?tenant=acme", |status, there| {
        status == 200 && *there == set
    })
    .await;
    let a = env.start(with_acme("a")).await;
    let (_, on_a) = crate::support::Api::new(&a, None)
        .get("/api/policies?tenant=acme")
        .await;
    assert_eq!(on_a, set, "the restarted instance kept the set forgotten meanwhile");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for hub in [&b, &c] {
        let (_, there) = crate::support::Api::new(hub, None)
            .get("/api/policies?tenant=acme")
            .await;
        assert_eq!(there, set, "the restarted instance brought its old set back");
    }
    for hub in [c, b, a] {
        hub.shutdown().await;
    }
}

/// How many payment failures the cluster holds for `actor` (asked of the instance at `http`),
/// once it holds `expected`.
async fn until_failures(http: SocketAddr, actor: &str, expected: usize) {
    let started = Instant::now();
    loop {
        let view = actor_view(http, actor).await;
        let failures = view["state"]["payment-trouble"]["failures"].as_array().map(Vec::len);
        if failures == Some(expected) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{actor}: {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_stream_created_anew_starts_its_checkpoints_over_instead_of_skipping_its_first_inputs() {
    let env = Env::new().await;
    let js = async_nats::jetstream::new(env.client.clone());
    let a = env.start(member(&env, "a")).await;
    until_owned(&[a.http_addr()], Duration::from_secs(10)).await;
    let mut callbacks = env.sub("hub.actions.support.callback").await;
    env.send("payment.failed", "renewed", json!({})).await;
    env.send("payment.failed", "renewed", json!({})).await;
    until_failures(a.http_addr(), "renewed", 2).await;
    a.shutdown().await;

    // The partition's stream is deleted and comes back empty: its sequences count from 1 again,
    // below the checkpoint its state carries.
    let partition = hub::cluster::partition_of("renewed", PARTITIONS);
    js.delete_stream(format!("HUB_PARTS_{partition}"))
        .await
        .expect("delete the partition's stream");
    let a = env.start(member(&env, "a")).await;
    until_owned(&[a.http_addr()], Duration::from_secs(10)).await;
    until_failures(a.http_addr(), "renewed", 2).await;
    env.send("payment.failed", "renewed", json!({})).await;
    let callback = json(&next(&mut callbacks, "the callback on the third failure", 10).await);
    assert_eq!(callback["actor"], "renewed");
    assert_eq!(callback["payload"]["failures"], 3);
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_versions_shared_partition_stream_stops_the_start_while_it_holds_inputs_and_is_retired_once_empty() {
    let env = Env::new().await;
    let js = async_nats::jetstream::new(env.client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "HUB_PARTS".into(),
        subjects: vec!["hub.part.*".into()],
        ..Default::default()
    })
    .await
    .expect("the earlier version's stream");
    js.publish("hub.part.3", "{}".into())
        .await
        .expect("publish")
        .await
        .expect("stored");

    let refused = match hub::hub::Hub::start(member(&env, "a")).await {
        Ok(_) => panic!("started beside an earlier version's unread inputs"),
        Err(e) => e.to_string(),
    };
    assert!(
        refused.contains("HUB_PARTS") && refused.contains("1 inputs not yet processed"),
        "{refused}"
    );
    assert!(
        js.get_stream("HUB_PARTS").await.is_ok(),
        "nothing deleted while it holds inputs"
    );

    js.get_stream("HUB_PARTS")
        .await
        .expect("stream")
        .purge()
        .await
        .expect("purge");
    let a = env.start(member(&env, "a")).await;
    assert!(
        js.get_stream("HUB_PARTS").await.is_err(),
        "the empty shared stream is retired"
    );
    until_owned(&[a.http_addr()], Duration::from_secs(10)).await;
    callbacks_once_each(&env, &actors("after", 4)).await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_actors_spread_over_the_instances_are_exported_and_erased_through_any_one() {
    let env = Env::new().await;
    let with_acme = |name: &str| {
        let mut config = member(&env, name);
        config.tenants.insert("acme".into(), Default::default());
        config
    };
    let a = env.start(with_acme("a")).await;
    until_owned(&[a.http_addr()], Duration::from_secs(10)).await;
    let b = env.start(with_acme("b")).await;
    until_owned(&[a.http_addr(), b.http_addr()], Duration::from_secs(15)).await;

    // acme's actors and the default tenant's of the same ids: each called back once.
    let ids = actors("t", 8);
    let mut callbacks = env.sub("hub.actions.support.callback").await;
    for id in &ids {
        for _ in 0..3 {
            let body = json!({"kind": "payment.failed", "actor": id, "tenant": "acme"});
            env.send_raw("events.payment.failed", body.to_string().as_bytes()).await;
            env.send("payment.failed", id, json!({})).await;
        }
    }
    let mut called = BTreeSet::new();
    for _ in 0..2 * ids.len() {
        let callback = json(&next(&mut callbacks, "a callback", 10).await);
        let who = (
            callback["tenant"].as_str().unwrap_or("default").to_owned(),
            callback["actor"].to_string(),
        );
        assert!(called.insert(who.clone()), "{who:?} called back twice");
    }
    nothing(&mut callbacks, "a callback more", 500).await;

    // Asked of one instance, the export and the erasure cover the other's partitions too.
    let export = reqwest::get(format!("http://{}/api/tenants/acme/export", a.http_addr()))
        .await
        .expect("export")
        .text()
        .await
        .expect("body");
    let mut exported: Vec<String> = export
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line")["actor"].to_string())
        .collect();
    exported.sort();
    let mut expected: Vec<String> = ids.iter().map(|id| json!(id).to_string()).collect();
    expected.sort();
    assert_eq!(exported, expected, "{export}");
    // As the answer says to: while a partition is between owners (a lease renewed late on a
    // loaded machine), erase again once it has one. Each actor is counted once, where erased.
    let mut actors = 0;
    let mut erased = Value::Null;
    for _ in 0..20 {
        erased = reqwest::Client::new()
            .delete(format!("http://{}/api/tenants/acme", b.http_addr()))
            .send()
            .await
            .expect("erase")
            .json()
            .await
            .expect("JSON");
        actors += erased["actors"].as_u64().unwrap_or_default();
        if erased.get("unreached").is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(actors, 8, "{erased}");
    assert!(erased.get("unreached").is_none(), "{erased}");
    let left = reqwest::get(format!("http://{}/api/tenants/acme/export", b.http_addr()))
        .await
        .expect("export")
        .text()
        .await
        .expect("body");
    assert_eq!(left, "", "nothing left of acme");
    for id in &ids {
        let view = actor_view(a.http_addr(), id).await;
        assert_eq!(
            view["actions"].as_array().map(Vec::len),
            Some(1),
            "the default tenant's {id}: {view}"
        );
    }
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_lettered_timers_replayed_through_one_instance_fire_on_the_owner_of_each_actor() {
    let env = Env::new().await;
    let with_short_window = |name: &str| {
        let mut config = member(&env, name);
        config
            .plugins
            .config
            .insert("cart-abandonment".into(), json!({"window": "1s"}));
        config
    };
    let a = env.start(with_short_window("a")).await;
    until_owned(&[a.http_addr()], Duration::from_secs(10)).await;
    let b = env.start(with_short_window("b")).await;
    until_owned(&[a.http_addr(), b.http_addr()], Duration::from_secs(15)).await;
    let api = crate::support::Api::new(&a, None);
    let mut offers = env.sub("hub.actions.offer.cart_reminder").await;

    // Carts on both instances; their timers come due while the plugin is disabled.
    let ids = actors("c", 8);
    for id in &ids {
        env.send("cart.updated", id, crate::support::shoes_cart()).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = api.post("/api/plugins/cart-abandonment/disable", "").await;
    assert_eq!(status, 200, "{body}");
    crate::dead_letters::letters(&api, "disabled", ids.len()).await;

    // Replayed through a, each fires where its actor is processed: one offer per cart.
    let (status, body) = api.post("/api/plugins/cart-abandonment/enable", "").await;
    assert_eq!(status, 200, "{body}");
    let (status, done) = api.post("/api/dead-letters/replay?reason=disabled", "").await;
    assert_eq!((status, done["replayed"].as_u64()), (200, Some(8)), "{done}");
    let mut offered = BTreeSet::new();
    for _ in &ids {
        let offer = json(&next(&mut offers, "a replayed timer's offer", 10).await);
        offered.insert(offer["actor"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(offered, ids.iter().cloned().collect::<BTreeSet<_>>());
    nothing(&mut offers, "an offer more", 500).await;
    b.shutdown().await;
    a.shutdown().await;
}

/// In a cluster, each tenant's own subjects have a stream of their own, forwarded to the
/// partitions beside the input stream at the tenant's `rate`: `slowed`'s backlog waits in its
/// stream while `quick`'s inputs and the default tenant's go straight through. Nothing is
/// dropped or doubled, and inputs without ids at the same sequences of two streams stay apart
/// (forwarded with the same `Nats-Msg-Id`, the partition stream would keep only one of them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_rate_keeps_its_backlog_in_its_own_stream_while_other_tenants_inputs_go_through() {
    let env = Env::new().await;
    let mut config = member(&env, "a");
    let slowed = hub::tenant::TenantConfig {
        rate: Some(10),
        ..Default::default()
    };
    config.tenants.insert("slowed".into(), slowed);
    config.tenants.insert("quick".into(), Default::default());
    let a = env.start(config).await;
    until_owned(&[a.http_addr()], Duration::from_secs(10)).await;
    let js = async_nats::jetstream::new(env.client.clone());
    for own in ["HUB_INPUT_slowed", "HUB_INPUT_quick"] {
        js.get_stream(own).await.expect("a tenant's own stream");
    }

    let mut callbacks = env.sub("hub.actions.support.callback").await;
    let published = Instant::now();
    // 45 inputs of slowed: four and a half seconds' worth of its rate, one saved up.
    let slow = actors("s", 15);
    for id in &slow {
        for _ in 0..3 {
            let body = json!({"kind": "payment.failed", "actor": id});
            env.send_raw("tenant.slowed.events.payment.failed", body.to_string().as_bytes())
                .await;
        }
    }
    // Then three each of quick and of the default tenant, without ids, at sequences 1 to 3 of
    // quick's stream and of the input stream, for actors of the same partition.
    let q = (0..)
        .map(|n| format!("q{n}"))
        .find(|id| {
            let quick = hub::tenant::qualify(Some("quick"), id);
            hub::cluster::partition_of(&quick, PARTITIONS) == hub::cluster::partition_of(id, PARTITIONS)
        })
        .expect("an id in the same partition in both tenants");
    for _ in 0..3 {
        let body = json!({"kind": "payment.failed", "actor": q});
        env.send_raw("tenant.quick.events.payment.failed", body.to_string().as_bytes())
            .await;
        env.send("payment.failed", &q, json!({})).await;
    }

    let mut called = BTreeSet::new();
    let mut slowed_before_the_others = None;
    while called.len() < slow.len() + 2 {
        let callback = json(&next(&mut callbacks, "a callback", 15).await);
        let who = (
            callback["tenant"].as_str().unwrap_or("default").to_owned(),
            callback["actor"].as_str().unwrap_or_default().to_owned(),
        );
        assert!(called.insert(who.clone()), "{who:?} called back twice");
        let others = called.iter().filter(|(tenant, _)| tenant != "slowed").count();
        if others == 2 && slowed_before_the_others.is_none() {
            slowed_before_the_others = Some(called.len() - 2);
        }
    }
    let took = published.elapsed();
    nothing(&mut callbacks, "a callback more", 500).await;
    assert!(
        slowed_before_the_others.is_some_and(|n| n < slow.len()),
        "quick's and the default tenant's callbacks came while slowed's backlog waited: {slowed_before_the_others:?}"
    );
    assert!(
        took >= Duration::from_secs(3),
        "45 inputs at 10/s, 10 saved up, are read in 3.5 s at least: {took:?}"
    );
    a.shutdown().await;
}
