//! What survives a restart: plugin state and pending durable timers.

use crate::support::{Env, json, metric, next, nothing};
use hub_bench::crash::HubProcess;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_pending_timers_survive_a_restart() {
    let env = Env::new().await;
    let mut config = env.config();
    config
        .plugins
        .config
        .insert("cart-abandonment".into(), json!({"window": "2s"}));
    config
        .plugins
        .config
        .insert("payment-trouble".into(), json!({"threshold": 3}));

    let hub = env.start(config.clone()).await;
    let mut cart = env.sub("hub.events.cart.updated").await;
    let mut offers = env.sub("hub.actions.offer.cart_reminder").await;
    let mut callbacks = env.sub("hub.actions.support.callback").await;
    env.web(
        "add_to_cart",
        json!({"visitor": "r1", "product": {"sku": "A1", "name": "Shoes", "price": 50.0}}),
    )
    .await;
    next(&mut cart, "cart.updated before the restart", 5).await;
    env.send("payment.failed", "r2", json!({})).await;
    env.send("payment.failed", "r2", json!({})).await;
    hub.shutdown().await;
    nothing(&mut offers, "an offer while the hub is down", 200).await;

    let hub = env.start(config).await;
    assert_eq!(hub.timers_restored(), 1, "the cart timer is back");
    // The timer set before the restart fires after it.
    let offer = json(&next(&mut offers, "offer after the restart", 5).await);
    assert_eq!(offer["actor"], "r1");
    assert_eq!(offer["payload"]["items"][0]["sku"], "A1");
    // The mapper's cart and the failure count carried over.
    env.web(
        "add_to_cart",
        json!({"visitor": "r1", "product": {"sku": "B2", "name": "Hat", "price": 5.0}}),
    )
    .await;
    let updated = json(&next(&mut cart, "cart.updated after the restart", 5).await);
    assert_eq!(updated["payload"]["items"].as_array().map(Vec::len), Some(2));
    env.send("payment.failed", "r2", json!({})).await;
    let callback = json(&next(&mut callbacks, "callback on the third failure", 5).await);
    assert_eq!(callback["payload"]["failures"], 3);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_published_while_the_hub_is_down_are_processed_when_it_is_back() {
    let env = Env::new().await;
    let config = env.config();
    let hub = env.start(config.clone()).await;
    let mut callbacks = env.sub("hub.actions.support.callback").await;
    hub.shutdown().await;

    // Nobody consumes these now; the input stream keeps them.
    for _ in 0..3 {
        env.send("payment.failed", "down1", json!({"reason": "card declined"}))
            .await;
    }
    nothing(&mut callbacks, "a callback while the hub is down", 300).await;

    let hub = env.start(config).await;
    let callback = json(&next(&mut callbacks, "the callback once the hub is back", 10).await);
    assert_eq!(callback["actor"], "down1");
    assert_eq!(callback["payload"]["failures"], 3);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_read_with_a_small_pull_batch_while_it_grows_never_stops_reading() {
    const INPUTS: usize = 150_000;
    let env = Env::new().await;
    let mut config = env.config();
    config.input.batch = 16;
    let hub = env.start(config).await;
    let client = env.client.clone();
    let publisher = tokio::spawn(async move {
        for i in 0..INPUTS {
            // Payment failures of ever new actors: each one a state write, as in production.
            let body = json!({"kind": "payment.failed", "actor": format!("b{}", i * 7919 % 1_000_000), "payload": {}});
            client
                .publish("events.payment.failed", body.to_string().into())
                .await
                .expect("publish");
            // Paced (some 20k/s), so that the hub reads at the stream's end as it grows.
            if i % 32 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        client.flush().await.expect("flush");
    });

    // Read 16 at a time while the stream grew, async-nats's pull stream's count of requested
    // inputs fell out of step with the server's, and reading stopped until the client started
    // over, 5 s past a request's expiry: 35 s with its default expiry, 6 s with a second's.
    // One request at a time, each ended by its inputs or by the server's timeout, cannot drift.
    let (mut seen, mut moved, mut longest) = (0.0, Instant::now(), Duration::ZERO);
    while seen < INPUTS as f64 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = metric(hub.http_addr(), "hub_events_in_total").await;
        if now > seen {
            longest = longest.max(moved.elapsed());
            (seen, moved) = (now, Instant::now());
        }
        assert!(
            moved.elapsed() < Duration::from_secs(4),
            "reading stopped for 4 s at {seen} of {INPUTS} inputs"
        );
    }
    eprintln!("the longest wait for an input: {longest:?}");
    publisher.await.expect("publisher");
    hub.shutdown().await;
}

/// `hub up` as a process of its own (so a test can kill it with SIGKILL) on `nats`, with this
/// test's data folder and `plugins`.
async fn hub_process(env: &Env, nats: &str, plugins: &std::path::Path) -> HubProcess {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_hub"));
    HubProcess::start(exe, nats, &env.dir.path().join("data"), plugins)
        .await
        .expect("hub up answers /healthz")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_killed_twice_mid_stream_loses_no_input_and_doubles_no_action() {
    const ACTORS: usize = 1500;
    let env = Env::new().await;
    let js = async_nats::jetstream::new(env.client.clone());
    // The examples, and the counter: its count per actor shows every input applied once.
    let plugins = crate::support::plugin_folder(
        &env,
        "with-counter",
        &[
            std::path::PathBuf::from(hub::EXAMPLE_PLUGINS).join("payment_trouble.wasm"),
            crate::support::fixture("counter.wasm"),
        ],
    );
    let mut hub = hub_process(&env, &env.nats.url, &plugins).await;

    // Per actor and round, a tick and a payment failure, interleaved over the actors, at about
    // 10k inputs/s, with JetStream acknowledgements (every one of them is in the input
    // stream), while the hub is killed twice (SIGKILL) and started again.
    let publisher = tokio::spawn({
        let js = js.clone();
        async move {
            let mut stored = Vec::new();
            for round in 0..3 {
                for a in 0..ACTORS {
                    for kind in ["count.tick", "payment.failed"] {
                        let body = json!({"kind": kind, "actor": format!("k{a}"), "id": format!("{kind}-{round}-{a}")});
                        let ack = js.publish(format!("events.{kind}"), body.to_string().into()).await;
                        stored.push(ack.expect("publish"));
                    }
                    if stored.len() >= 100 {
                        for ack in stored.drain(..) {
                            ack.await.expect("stored");
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                }
            }
            for ack in stored {
                ack.await.expect("stored");
            }
        }
    });
    let mut replayed = 0.0;
    for pause in [250, 350] {
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
        hub.kill();
        hub = hub_process(&env, &env.nats.url, &plugins).await;
        replayed += metric(hub.http(), "hub_inputs_replayed_total").await;
    }
    publisher.await.expect("publisher");

    // Exactly one callback per actor on the action stream (it drops repeated ids).
    let mut actions = js.get_stream("HUB_ACTIONS").await.expect("action stream");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let stored = actions.info().await.expect("info").state.messages;
        if stored >= ACTORS as u64 || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Anything doubled would arrive now, after the last ones.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let stored = actions.info().await.expect("info").state.messages;
    assert_eq!(stored, ACTORS as u64, "one callback per actor, none lost, none doubled");

    // And no input applied twice or lost: three ticks counted, and the failure count started
    // again from nothing after the callback.
    for a in 0..ACTORS {
        let api = format!("http://{}/api/actors/k{a}", hub.http());
        let view: serde_json::Value = reqwest::get(&api).await.expect("GET").json().await.expect("JSON");
        assert_eq!(view["state"]["counter"]["n"], 3, "k{a}: {view}");
        assert!(view["state"].get("payment-trouble").is_none(), "k{a}: {view}");
    }
    eprintln!("inputs delivered again and skipped after the kills: {replayed}");
    hub.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_started_by_hub_up_dies_with_a_killed_hub() {
    let env = Env::new().await;
    let port = hub::nats_server::free_port().expect("free port");
    let url = format!("nats://127.0.0.1:{port}");
    let hub = hub_process(&env, &url, std::path::Path::new(hub::EXAMPLE_PLUGINS)).await;
    assert!(hub::nats_server::reachable(&url).await, "hub up started its server");
    hub.kill();
    let killed = std::time::Instant::now();
    while hub::nats_server::reachable(&url).await {
        assert!(
            killed.elapsed().as_secs() < 10,
            "the server hub up started outlived the killed hub"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// How the NATS server goes away in [`ride_out_a_nats_outage`].
enum Outage {
    /// SIGTERM: the server flushes and says goodbye.
    Stop,
    /// SIGKILL: nothing of the kind.
    Crash,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_under_load_is_ridden_out_and_every_stored_input_counts_once() {
    ride_out_a_nats_outage(Outage::Stop, std::time::Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_killed_under_load_is_ridden_out_and_every_stored_input_counts_once() {
    ride_out_a_nats_outage(Outage::Crash, std::time::Duration::from_secs(5)).await;
}

/// Ticks (and relays, whose ticks cross to other shards) with JetStream acknowledgements while
/// the server goes away for `down` and comes back on the same port and store: the hub is
/// degraded meanwhile, healthy again soon after, and every stored input counts exactly once.
async fn ride_out_a_nats_outage(outage: Outage, down: std::time::Duration) {
    const ACTORS: usize = 300;
    const TICKS: usize = 4;
    let mut env = Env::new().await;
    let mut config = env.config();
    config.plugins.dir = Some(crate::support::plugin_folder(
        &env,
        "counter-only",
        &[crate::support::fixture("counter.wasm")],
    ));
    let hub = env.start(config).await;
    let health = format!("http://{}/healthz", hub.http_addr());

    let publisher = tokio::spawn({
        let js = async_nats::jetstream::new(env.client.clone());
        async move {
            for round in 0..TICKS {
                for a in 0..ACTORS {
                    for kind in ["count.tick", "count.relay"] {
                        let id = format!("{kind}-{round}-{a}");
                        let body = json!({"kind": kind, "actor": format!("n{a}"), "id": id});
                        hub_bench::crash::store(&js, kind, &id, body.to_string()).await;
                    }
                    tokio::time::sleep(std::time::Duration::from_micros(500)).await;
                }
            }
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    match outage {
        Outage::Stop => env.nats.halt().await,
        Outage::Crash => env.nats.crash().await,
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let degraded = reqwest::get(&health).await.expect("GET /healthz");
    assert_eq!(degraded.status(), 503, "degraded while NATS is away");
    tokio::time::sleep(down.saturating_sub(std::time::Duration::from_millis(500))).await;
    env.nats.start_again().await.expect("nats-server again");
    let back = std::time::Instant::now();
    while !reqwest::get(&health).await.is_ok_and(|r| r.status().is_success()) {
        assert!(back.elapsed().as_secs() < 5, "the hub did not reconnect");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let reconnected = back.elapsed();
    publisher.await.expect("publisher");

    let api = crate::support::Api::new(&hub, None);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for actor in (0..ACTORS).flat_map(|a| [format!("n{a}"), format!("relayed:n{a}")]) {
        loop {
            let (_, view) = api.get(&format!("/api/actors/{actor}")).await;
            let n = view["state"]["counter"]["n"].as_u64().unwrap_or(0);
            assert!(n <= TICKS as u64, "{actor} counted {n} ticks of {TICKS}: {view}");
            if n == TICKS as u64 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{actor} stuck at {n}: {view}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    // At least one: other tests' hubs in this process count theirs in the same metrics.
    let outages = metric(hub.http_addr(), "hub_nats_disconnects_total").await;
    assert!(outages >= 1.0, "the outage is counted");
    eprintln!("healthy again {reconnected:?} after the server was back");
    hub.shutdown().await;
}

/// A process of its own: the metrics are the process's, not shared with other tests' hubs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_core_mode_an_outage_is_counted_and_timed() {
    let mut env = Env::new().await;
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_hub"));
    let plugins = crate::support::plugin_folder(&env, "counter-only", &[crate::support::fixture("counter.wasm")]);
    let data = env.dir.path().join("data");
    let hub = HubProcess::start_with(exe, &env.nats.url, &data, &plugins, &[("HUB_INPUT__MODE", "core")])
        .await
        .expect("hub up answers /healthz");
    let down = std::time::Duration::from_secs(2);
    env.nats.halt().await;
    tokio::time::sleep(down).await;
    env.nats.start_again().await.expect("nats-server again");
    let health = format!("http://{}/healthz", hub.http());
    let back = std::time::Instant::now();
    while !reqwest::get(&health).await.is_ok_and(|r| r.status().is_success()) {
        assert!(back.elapsed().as_secs() < 5, "the hub did not reconnect");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(metric(hub.http(), "hub_nats_disconnects_total").await, 1.0);
    let outage_ms = metric(hub.http(), "hub_nats_disconnected_milliseconds_total").await;
    let expected = down.as_millis() as f64;
    assert!(
        (expected..expected + 3000.0).contains(&outage_ms),
        "the outage lasted about {down:?}: {outage_ms} ms counted"
    );
    hub.kill();
}

/// The short version of `hub crash-test` (the long runs are in the README).
#[test]
fn the_crash_test_finds_nothing_lost_or_doubled_over_a_few_kills() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hub"))
        .args([
            "crash-test",
            "--kills",
            "4",
            "--actors",
            "400",
            "--rate",
            "2000",
            "--seed",
            "7",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .expect("hub crash-test runs");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "inputs lost",
        "inputs doubled",
        "handoffs lost",
        "handoffs doubled",
        "actions missing",
        "actions doubled",
        "state differences",
    ] {
        let value = report
            .lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or_else(|| panic!("no {line:?} in {report}"));
        assert_eq!(value, "0", "{line}: {report}");
    }
}
