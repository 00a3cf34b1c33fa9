//! What outsiders do that our examples never did: a plugin written without the SDK (no dedup
//! keys, raw bytes as state, empty payloads), calls that fail after writing, oversized outputs,
//! calls that wait without computing, and actor ids longer than the hub takes. Each test is
//! named after the defect it pins.

use crate::support::{Api, Env, fixture, header, json, next, nothing, plugin_folder};
use serde_json::json;
use std::time::Duration;

/// A hub running the `bare` fixture (and nothing else) with the example policies, offers
/// delivered at once (no hold), and an open admin API.
async fn bare_hub(env: &Env) -> hub::hub::Hub {
    let mut config = env.config();
    config.plugins.dir = Some(plugin_folder(env, "bare", &[fixture("bare.wasm")]));
    config.limits.call_timeout_ms = 100;
    if let Some(offer) = config.policies.categories.get_mut("offer") {
        offer.hold = Duration::ZERO;
    }
    env.start(config).await
}

async fn actor_view(api: &Api, actor: &str) -> serde_json::Value {
    let (status, view) = api.get(&format!("/api/actors/{actor}")).await;
    assert_eq!(status, 200, "{view}");
    view
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_without_a_dedup_key_keeps_the_ledger_and_its_limits() {
    let env = Env::new().await;
    let hub = bare_hub(&env).await;
    let api = Api::new(&hub, None);
    let mut offers = env.sub("hub.actions.offer.bare").await;
    let mut counted = env.sub("hub.events.bare.counted").await;

    for _ in 0..5 {
        env.send("bare.offer", "c1", json!({})).await;
    }
    for i in 0..5 {
        let event = json(&next(&mut counted, "bare.counted", 5).await);
        assert_eq!(
            event["payload"],
            json!({}),
            "an empty payload is shown as an empty map ({i})"
        );
    }
    for _ in 0..3 {
        let action = json(&next(&mut offers, "offer.bare", 5).await);
        assert_eq!(action["dedup_key"], json!(null));
        assert_eq!(action["payload"], json!({}));
    }
    nothing(&mut offers, "a fourth offer within the day's limit of 3", 300).await;

    let view = actor_view(&api, "c1").await;
    let ledger = view["actions"].as_array().cloned().unwrap_or_default();
    let decisions: Vec<_> = ledger.iter().map(|e| e["decision"].as_str().unwrap_or("?")).collect();
    assert_eq!(
        decisions,
        ["delivered", "delivered", "delivered", "suppressed", "suppressed"],
        "{view}"
    );
    assert_eq!(ledger[4]["reason"], "category_limit");
    assert_eq!(
        view["state"]["bare"]["n"],
        json!({"bytes_hex": "05000000"}),
        "raw bytes as state"
    );

    let metrics = crate::support::http_get(hub.http_addr(), "/metrics").await;
    assert!(
        !metrics.contains("hub_unreadable_records_total"),
        "no record was unreadable"
    );
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_plugin_call_keeps_nothing_it_wrote() {
    let env = Env::new().await;
    let hub = bare_hub(&env).await;
    let api = Api::new(&hub, None);
    let mut dlq = env.sub("hub.dlq.>").await;
    let mut fired = env.sub("hub.events.bare.timer").await;
    let mut counted = env.sub("hub.events.bare.counted").await;

    env.send("bare.offer", "c2", json!({})).await;
    next(&mut counted, "bare.counted", 5).await;
    let cases = [
        ("bare.fail", "hub.dlq.plugin_error", "refused the event after writing"),
        ("bare.trap", "hub.dlq.trap", "aborted"),
        ("bare.big", "hub.dlq.invalid_output", "larger than"),
    ];
    for (kind, subject, why) in cases {
        env.send(kind, "c2", json!({"n": 1})).await;
        let letter = next(&mut dlq, subject, 5).await;
        assert_eq!(letter.subject.as_str(), subject, "{kind}");
        let reason = header(&letter, "Hub-Dlq-Reason");
        assert!(reason.contains(why), "{kind}: {reason}");
        // The dead letter carries the input, ready to be replayed once.
        assert_eq!(json(&letter)["kind"], kind);
    }
    let view = actor_view(&api, "c2").await;
    assert_eq!(
        view["state"]["bare"]["n"],
        json!({"bytes_hex": "01000000"}),
        "only the successful call's write stays: {view}"
    );
    assert_eq!(
        view["timers"],
        json!([]),
        "no timer of a failed call is pending: {view}"
    );
    nothing(&mut fired, "a timer set by a failed call", 300).await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_waits_without_computing_does_not_die_as_deadline() {
    let env = Env::new().await;
    let hub = bare_hub(&env).await;
    let mut dlq = env.sub("hub.dlq.>").await;
    let mut awake = env.sub("hub.events.bare.awake").await;

    // 150 ms of wall time against a deadline of 100 ms: the call's CPU time is what counts.
    env.send("bare.sleep", "c3", json!({})).await;
    next(&mut awake, "bare.awake after 150 ms asleep", 5).await;
    nothing(&mut dlq, "a dead letter for a call that only waited", 200).await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_actor_ids_from_ingest_rules_do_not_merge_actors() {
    let env = Env::new().await;
    let hub = env.start(env.config()).await;
    let api = Api::new(&hub, None);
    let mut dlq = env.sub("hub.dlq.>").await;
    let mut carts = env.sub("hub.events.cart.updated").await;

    let common = "v".repeat(70_000);
    for tail in ["a", "b", "c"] {
        let body = json!({"visitor": format!("{common}{tail}"), "product": {"sku": "A1", "price": 1.0}, "qty": 1});
        env.web("add_to_cart", body).await;
        let letter = next(&mut dlq, "hub.dlq.invalid", 5).await;
        assert_eq!(letter.subject.as_str(), "hub.dlq.invalid");
        let reason = header(&letter, "Hub-Dlq-Reason");
        assert!(reason.contains("at most 1024"), "{reason}");
    }
    nothing(&mut carts, "a cart for a cut actor id", 200).await;

    let (status, body) = api.get(&format!("/api/actors/{}", "v".repeat(1025))).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap_or("").contains("at most 1024"), "{body}");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_profiles_and_long_actor_ids_are_refused_on_every_profile_path() {
    let env = Env::new().await;
    let hub = env.start(env.config()).await;
    let api = Api::new(&hub, None);
    let mut dlq = env.sub("hub.dlq.>").await;

    let big = json!({"notes": "x".repeat(hub::limits::MAX_PROFILE_BYTES)});
    let (status, body) = api
        .request_raw_put(
            "/api/actors/c5/profile",
            "application/json",
            big.to_string().into_bytes(),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap_or("").contains("at most 65536"), "{body}");
    let (status, body) = api
        .request_raw_patch("/api/actors/c5/profile", big.to_string().as_bytes())
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        actor_view(&api, "c5").await["profile"],
        json!(null),
        "nothing was stored"
    );

    env.send_raw("profiles.c5", big.to_string().as_bytes()).await;
    let letter = next(&mut dlq, "hub.dlq.invalid for a profile over the limit", 5).await;
    assert!(header(&letter, "Hub-Dlq-Reason").contains("at most 65536"));
    let long = "v".repeat(hub::limits::MAX_ACTOR_BYTES + 1);
    env.send_raw(&format!("profiles.{long}"), br#"{"name": "Ann"}"#).await;
    let letter = next(&mut dlq, "hub.dlq.invalid for a long actor id", 5).await;
    assert!(header(&letter, "Hub-Dlq-Reason").contains("at most 1024"));
    hub.shutdown().await;
}
