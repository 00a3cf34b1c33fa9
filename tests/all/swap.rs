//! Hot swap under load: five swaps and a rollback of a counting plugin while 20k events/s flow
//! for 10 s. Every event is counted exactly once (each actor's counts run 1, 2, 3… without a gap
//! or a repeat, across versions, so state carried over), and an event sent after a swap returns
//! is handled by the new version.

use crate::support::{Api, Env, fixture, json, next, plugin_folder};
use futures::StreamExt;
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const TOKEN: &str = "swap-token";
const RATE: u64 = 20_000;
const SECONDS: u64 = 10;
const ACTORS: u64 = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_and_a_rollback_under_load_lose_nothing_and_double_nothing() {
    let env = Env::new().await;
    let mut config = env.config();
    config.plugins.dir = Some(plugin_folder(&env, "fixture-plugins", &[fixture("counter.wasm")]));
    config.admin_token = Some(TOKEN.into());
    let hub = env.start(config).await;
    let api = Api::new(&hub, Some(TOKEN));

    // A client of its own with a deep buffer: async-nats drops silently beyond it.
    let receiver = async_nats::ConnectOptions::new()
        .subscription_capacity(1 << 20)
        .connect(env.nats.url.as_str())
        .await
        .expect("connect");
    let mut counted = receiver.subscribe("hub.events.counted").await.expect("subscribe");
    receiver.flush().await.expect("flush");
    let mut probes = env.sub("hub.events.counted").await;
    let total = RATE * SECONDS;
    let collector = tokio::spawn(async move {
        let mut counts: HashMap<String, Vec<u64>> = HashMap::new();
        let mut received = 0;
        while received < total {
            match tokio::time::timeout(Duration::from_secs(30), counted.next()).await {
                Ok(Some(msg)) => {
                    let event = json(&msg);
                    let actor = event["actor"].as_str().unwrap_or_default().to_owned();
                    if actor.starts_with("load-") {
                        received += 1;
                        counts
                            .entry(actor)
                            .or_default()
                            .push(event["payload"]["n"].as_u64().unwrap_or(0));
                    }
                }
                _ => break,
            }
        }
        counts
    });

    let publisher = env.client.clone();
    let load = tokio::spawn(async move {
        let started = Instant::now();
        let mut ticker = tokio::time::interval(Duration::from_millis(5));
        let mut sent = 0u64;
        while sent < total {
            ticker.tick().await;
            let due = (started.elapsed().as_millis() as u64 * RATE / 1000).min(total);
            while sent < due {
                let body =
                    json!({"kind": "count.tick", "actor": format!("load-{}", sent % ACTORS), "id": format!("t{sent}")});
                publisher
                    .publish("events.count.tick", body.to_string().into())
                    .await
                    .expect("publish");
                sent += 1;
            }
        }
        publisher.flush().await.expect("flush");
        started.elapsed()
    });

    // Five uploads alternating between the two generations, then a rollback, spread over
    // the load. After each change returns, a probe event must meet the new version.
    let v1 = std::fs::read(fixture("counter.wasm")).expect("fixture");
    let v2 = std::fs::read(fixture("counter_v2.wasm")).expect("fixture");
    let mut live_after = Vec::new();
    for (i, (wasm, generation)) in [(&v2, 2), (&v1, 1), (&v2, 2), (&v1, 1), (&v2, 2)]
        .into_iter()
        .enumerate()
    {
        tokio::time::sleep(Duration::from_millis(1_400)).await;
        let (status, change) = api.push("counter", wasm.clone(), None).await;
        assert_eq!(status, 200, "swap {i}: {change}");
        assert_eq!(change["live"], true, "swap {i}: {change}");
        live_after.push(change["live_after_ms"].as_f64().unwrap_or(f64::NAN));
        probe(&env, &mut probes, &format!("probe-{i}"), generation).await;
    }
    tokio::time::sleep(Duration::from_millis(1_400)).await;
    let (status, change) = api.post("/api/plugins/counter/rollback", "").await;
    assert_eq!((status, change["version"].as_u64()), (200, Some(5)), "{change}");
    probe(&env, &mut probes, "probe-rollback", 1).await;

    let elapsed = load.await.expect("load task");
    assert!(elapsed < Duration::from_secs(SECONDS + 2), "the load ran at {RATE}/s");
    let counts = collector.await.expect("collector");
    let received: usize = counts.values().map(Vec::len).sum();
    assert_eq!(received as u64, total, "every event counted once");
    for (actor, mut ns) in counts {
        ns.sort_unstable();
        let expected: Vec<u64> = (1..=ns.len() as u64).collect();
        assert_eq!(ns, expected, "{actor}: counts without gaps or repeats");
    }
    let per_actor = total / ACTORS;
    let (_, detail) = api.get("/api/plugins/counter").await;
    assert_eq!(detail["versions"].as_array().map(Vec::len), Some(6), "{detail}");
    eprintln!("swap live after (ms): {live_after:?}; {per_actor} events per actor");
    hub.shutdown().await;
}

/// The first count of a fresh actor comes from the expected generation.
async fn probe(env: &Env, probes: &mut async_nats::Subscriber, actor: &str, generation: u64) {
    env.send("count.tick", actor, json!({})).await;
    loop {
        let event = json(&next(probes, "a probe's count", 10).await);
        if event["actor"] == actor {
            assert_eq!(event["payload"]["generation"], generation, "{actor}: {event}");
            assert_eq!(event["payload"]["n"], 1, "{actor}: {event}");
            return;
        }
    }
}
