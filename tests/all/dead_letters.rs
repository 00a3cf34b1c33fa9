//! Dead letters are kept in a stream: listed by reason, inspected, and replayed once their
//! cause is fixed — an event to the plugin that failed on it only, a timer to its plugin.

use crate::support::{Api, Env, crm, examples_with_notify, fixture, json, next, plugin_folder, shoes_cart, webhook};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The kept letters of `reason`, once there are `n` of them (waits up to 10 s).
pub(crate) async fn letters(api: &Api, reason: &str, n: usize) -> Vec<Value> {
    for _ in 0..100 {
        let (status, body) = api.get(&format!("/api/dead-letters?reason={reason}")).await;
        assert_eq!(status, 200, "{body}");
        let list = body["letters"].as_array().cloned().unwrap_or_default();
        if list.len() >= n {
            return list;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("fewer than {n} letters of {reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_event_reaches_only_the_plugin_that_failed_on_it() {
    let env = Env::new().await;
    let mut config = env.config();
    config.plugins.dir = Some(plugin_folder(&env, "bare", &[fixture("bare.wasm")]));
    let hub = env.start(config).await;
    let api = Api::new(&hub, None);
    // The same module under a second name: both fail on `bare.fail`.
    let wasm = std::fs::read(fixture("bare.wasm")).expect("bare.wasm");
    let (status, body) = api.push("bare-b", wasm, None).await;
    assert_eq!(status, 200, "{body}");

    env.send("bare.fail", "ann", json!({})).await;
    let first = letters(&api, "plugin_error", 2).await;
    let mine = first.iter().find(|l| l["plugin"] == "bare").expect("bare's letter");
    assert_eq!(mine["actor"], "ann");
    let seq = mine["seq"].as_u64().expect("seq");
    let (status, letter) = api.get(&format!("/api/dead-letters/{seq}")).await;
    assert_eq!(status, 200, "{letter}");
    assert!(
        letter["body"].as_str().is_some_and(|b| b.contains("bare.fail")),
        "{letter}"
    );
    assert!(
        letter["detail"].as_str().is_some_and(|d| d.contains("plugin bare")),
        "{letter}"
    );

    // Its cause is not fixed: bare fails again, and only bare ran it (bare-b did not).
    let (status, done) = api.post(&format!("/api/dead-letters/{seq}/replay"), "").await;
    assert_eq!((status, done["replayed"].as_u64()), (200, Some(1)), "{done}");
    let after = letters(&api, "plugin_error", 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_settled = letters(&api, "plugin_error", 2).await;
    assert_eq!(after.len(), after_settled.len());
    let by = |plugin: &str| after_settled.iter().filter(|l| l["plugin"] == plugin).count();
    assert_eq!((by("bare"), by("bare-b")), (1, 1), "{after_settled:#?}");
    assert!(
        after_settled.iter().all(|l| l["seq"] != seq),
        "the replayed letter left"
    );
    let (status, gone) = api.get(&format!("/api/dead-letters/{seq}")).await;
    assert_eq!(status, 404, "{gone}");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_that_came_due_while_its_plugin_was_disabled_is_replayed_once_it_runs_again() {
    let env = Env::new().await;
    let mut config = env.config();
    config
        .plugins
        .config
        .insert("cart-abandonment".into(), json!({"window": "1s"}));
    let hub = env.start(config).await;
    let api = Api::new(&hub, None);
    let mut offers = env.sub("hub.actions.offer.cart_reminder").await;

    env.send("cart.updated", "u1", shoes_cart()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = api.post("/api/plugins/cart-abandonment/disable", "").await;
    assert_eq!(status, 200, "{body}");
    let kept = letters(&api, "disabled", 1).await;
    let letter = &kept[0];
    assert_eq!(
        (letter["plugin"].as_str(), letter["actor"].as_str()),
        (Some("cart-abandonment"), Some("u1"))
    );

    // The cause fixed, all letters of the reason go back: the timer fires for its plugin.
    let (status, body) = api.post("/api/plugins/cart-abandonment/enable", "").await;
    assert_eq!(status, 200, "{body}");
    let (status, done) = api.post("/api/dead-letters/replay?reason=disabled", "").await;
    assert_eq!((status, done["replayed"].as_u64()), (200, Some(1)), "{done}");
    let offer = json(&next(&mut offers, "the replayed timer's offer", 10).await);
    assert_eq!(offer["actor"], "u1");
    assert_eq!(offer["payload"]["items"][0]["sku"], "A1");
    let (_, body) = api.get("/api/dead-letters?reason=disabled").await;
    assert_eq!(body["letters"], json!([]), "{body}");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_delivery_that_failed_is_sent_again_with_its_key_once_the_receiver_is_back() {
    let env = Env::new().await;
    let back = Arc::new(AtomicBool::new(false));
    let (address, received) = {
        let back = back.clone();
        crm(move |_| if back.load(Ordering::SeqCst) { 200 } else { 503 }).await
    };
    let mut config = env.config();
    config.plugins.dir = Some(examples_with_notify(&env, "delivery"));
    config.plugins.config.insert(
        "notify".into(),
        json!({"routes": [{"actions": "support.*", "channel": "crm", "target": "queue-1"}]}),
    );
    config
        .channels
        .insert("crm".into(), webhook(address, 1, Duration::from_millis(20)));
    let hub = env.start(config).await;
    let api = Api::new(&hub, None);
    for _ in 0..3 {
        env.send("payment.failed", "c4", json!({"amount": 20})).await;
    }
    let kept = letters(&api, "webhook_failed", 1).await;
    assert_eq!(
        (kept[0]["actor"].as_str(), kept[0]["plugin"].as_str()),
        (Some("c4"), Some("notify")),
        "{kept:#?}"
    );
    let failed = received.lock().expect("lock").clone();
    assert_eq!(failed.iter().map(|r| r.3).collect::<Vec<_>>(), [503, 503]);

    // The CRM is back: the letter goes to the webhook again, with the same key, target and body.
    back.store(true, Ordering::SeqCst);
    let (status, done) = api.post("/api/dead-letters/replay?reason=webhook_failed", "").await;
    assert_eq!((status, done["replayed"].as_u64()), (200, Some(1)), "{done}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while received.lock().expect("lock").len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replay never reached the CRM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all = received.lock().expect("lock").clone();
    let delivered = &all[2];
    assert_eq!(delivered.3, 200);
    assert_eq!(
        (&delivered.0, &delivered.1, &delivered.2),
        (&failed[0].0, &failed[0].1, &failed[0].2),
        "the same delivery"
    );
    assert_eq!(delivered.2["action"], "support.callback");
    let (_, body) = api.get("/api/dead-letters?reason=webhook_failed").await;
    assert_eq!(body["letters"], json!([]), "{body}");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_shows_rates_plugins_and_dead_letters() {
    let env = Env::new().await;
    let hub = env.start(env.config()).await;
    let api = Api::new(&hub, None);
    env.send_raw("events.x", b"not an envelope").await;
    for i in 0..20 {
        env.send("payment.failed", &format!("c{i}"), json!({"reason": "declined"}))
            .await;
    }
    // The metrics are the process's (other tests in this binary count into them too); the
    // plugin statistics are this hub's own.
    let trouble_calls = |body: &Value| {
        body["plugins"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "payment-trouble"))
            .and_then(|p| p["calls"].as_u64())
    };
    let mut last = Value::Null;
    for _ in 0..50 {
        let (status, body) = api.get("/api/status").await;
        assert_eq!(status, 200, "{body}");
        last = body;
        let undecodable = last["dead_letters"]["by_reason"]["undecodable"].as_u64();
        if trouble_calls(&last) >= Some(20)
            && undecodable >= Some(1)
            && last["totals"]["events_in"].as_u64() >= Some(21)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        trouble_calls(&last) >= Some(20),
        "the status never showed the inputs: {last:#}"
    );
    assert_eq!(last["input"], "durable");
    // What the stream keeps (this hub's own letters), beside the process's count since start.
    let mut kept = last["dead_letters"]["kept"]["undecodable"].as_u64();
    for _ in 0..20 {
        if kept == Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        kept = api.get("/api/status").await.1["dead_letters"]["kept"]["undecodable"].as_u64();
    }
    assert_eq!(kept, Some(1), "{last:#}");
    assert!(
        last["shards"]
            .as_array()
            .is_some_and(|s| s.len() == 2 && s.iter().all(|s| s["capacity"].as_u64() > Some(0))),
        "{last:#}"
    );
    assert!(last["event_to_action_ms_1m"].is_object(), "{last:#}");
    assert!(
        last["plugins"]
            .as_array()
            .is_some_and(|p| p.iter().all(|p| p["quarantined"] == false)),
        "{last:#}"
    );
    let (_, history) = api.get("/api/status/history").await;
    assert!(history["points"].as_array().is_some_and(|p| !p.is_empty()), "{history}");
    hub.shutdown().await;
}
