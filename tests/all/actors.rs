//! Actors over the admin API: profiles from NATS `profiles.<actor>` and the API, what each plugin
//! holds for an actor, its pending timers, and an erase that removes everything for good.

use crate::support::{Api, Env, header, next, nothing, shoes};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_state_timers_and_a_complete_erase() {
    let env = Env::new().await;
    let mut config = env.config();
    config
        .plugins
        .config
        .insert("cart-abandonment".into(), json!({"window": "2s"}));
    config.admin_token = Some("t".into());
    let hub = env.start(config.clone()).await;
    let api = Api::new(&hub, Some("t"));
    let mut offers = env.sub("hub.actions.offer.cart_reminder").await;
    let mut callbacks = env.sub("hub.actions.support.callback").await;
    let mut dlq = env.sub("hub.dlq.>").await;

    env.web("add_to_cart", shoes("u1")).await;
    env.send_raw("profiles.u1", br#"{"name": "Ann", "segment": "vip"}"#)
        .await;
    env.send_raw("profiles.u1", br#"{"address": {"city": "Oslo"}}"#).await;
    let mut view = json!(null);
    for _ in 0..50 {
        let (status, v) = api.get("/api/actors/u1").await;
        assert_eq!(status, 200, "{v}");
        view = v;
        if view["profile"]["address"].is_object() && view["state"]["clickstream"].is_object() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        view["profile"],
        json!({"name": "Ann", "segment": "vip", "address": {"city": "Oslo"}})
    );
    assert_eq!(view["state"]["clickstream"]["cart"]["items"][0]["sku"], "A1", "{view}");
    let timers = view["timers"].as_array().cloned().unwrap_or_default();
    assert_eq!(timers.len(), 1, "{view}");
    assert_eq!(
        (timers[0]["plugin"].as_str(), timers[0]["id"].as_str()),
        (Some("cart-abandonment"), Some("abandoned"))
    );

    // The arbiter's decisions are kept in the actor's action ledger.
    for _ in 0..3 {
        env.send("payment.failed", "u1", json!({"amount": 20})).await;
    }
    next(&mut callbacks, "support.callback", 5).await;
    let (_, view) = api.get("/api/actors/u1").await;
    let ledger = view["actions"].as_array().cloned().unwrap_or_default();
    assert_eq!(ledger.len(), 1, "{view}");
    assert_eq!(
        (
            ledger[0]["name"].as_str(),
            ledger[0]["plugin"].as_str(),
            ledger[0]["decision"].as_str()
        ),
        (Some("support.callback"), Some("payment-trouble"), Some("delivered"))
    );

    // Bad profile updates are dead-lettered with their reason.
    env.send_raw("profiles.u1", b"oops").await;
    assert_eq!(
        header(&next(&mut dlq, "undecodable profile", 5).await, "Hub-Dlq-Subject"),
        "profiles.u1"
    );
    env.send_raw("profiles.u1", b"[1, 2]").await;
    let msg = next(&mut dlq, "invalid profile", 5).await;
    assert_eq!(msg.subject.as_str(), "hub.dlq.invalid");

    // The API merges (PATCH, null removes) and replaces (PUT).
    let (status, profile) = api
        .request_raw_patch("/api/actors/u1/profile", br#"{"segment": null}"#)
        .await;
    assert_eq!(
        (status, profile),
        (200, json!({"name": "Ann", "address": {"city": "Oslo"}}))
    );
    let (status, profile) = api.put_json("/api/actors/u1/profile", r#"{"name": "Ann B."}"#).await;
    assert_eq!((status, profile), (200, json!({"name": "Ann B."})));
    assert_eq!(api.put_json("/api/actors/u1/profile", "[1]").await.0, 400);

    // Erase: profile, state in every plugin, timers — and the offer never comes.
    let (status, erased) = api.delete("/api/actors/u1").await;
    assert_eq!(status, 200, "{erased}");
    assert_eq!(
        (erased["profile"].as_bool(), erased["timers"].as_u64()),
        (Some(true), Some(1)),
        "{erased}"
    );
    assert!(erased["state_keys"].as_u64().unwrap_or(0) >= 1, "{erased}");
    let (_, view) = api.get("/api/actors/u1").await;
    assert_eq!(
        view,
        json!({"actor": "u1", "profile": null, "state": {}, "timers": [], "actions": []})
    );
    nothing(&mut offers, "an offer for an erased actor", 2_500).await;

    // For good: nothing comes back after a restart.
    hub.shutdown().await;
    let hub = env.start(config).await;
    let (_, view) = Api::new(&hub, Some("t")).get("/api/actors/u1").await;
    assert_eq!(
        view,
        json!({"actor": "u1", "profile": null, "state": {}, "timers": [], "actions": []})
    );
    assert_eq!(Api::new(&hub, None).get("/api/actors/u1").await.0, 401);
    hub.shutdown().await;
}
