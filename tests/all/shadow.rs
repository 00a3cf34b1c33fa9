//! Shadow versions over real NATS: a candidate runs on live traffic beside the active version,
//! delivers nothing, and its running difference shows in the API; promoting it is a swap, and a
//! shadow that traps is quarantined without touching the live version.

use crate::support::{Api, Env, fixture, next, nothing};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

fn payment_trouble() -> Vec<u8> {
    std::fs::read(std::path::Path::new(hub::EXAMPLE_PLUGINS).join("payment_trouble.wasm")).expect("plugin built")
}

async fn fail(env: &Env, customer: &str, id: &str) {
    let envelope = json!({"id": id, "kind": "payment.failed", "actor": customer, "payload": {"amount": 20}});
    env.send_raw("events.payment.failed", envelope.to_string().as_bytes())
        .await;
}

/// The plugin's shadow as the API shows it, once `ready` holds (waits up to 10 s).
async fn shadow(api: &Api, ready: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..100 {
        let (status, body) = api.get("/api/plugins/payment-trouble").await;
        assert_eq!(status, 200, "{body}");
        last = body["shadow"].clone();
        if ready(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the shadow never got there: {last:#}");
}

fn callbacks(shadow: &Value) -> &Value {
    shadow["diff"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["name"] == "support.callback"))
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_with_a_lower_threshold_delivers_nothing_shows_its_difference_and_is_promoted() {
    let env = Env::new().await;
    let hub = env.start(env.config()).await;
    let api = Api::new(&hub, None);
    let (status, change) = api
        .push_query(
            "payment-trouble",
            payment_trouble(),
            &[("config", r#"{"threshold": 2}"#), ("shadow", "true")],
        )
        .await;
    assert_eq!(
        (status, change["version"].as_u64(), change["shadow"].as_u64()),
        (200, Some(1), Some(2)),
        "{change}"
    );
    let mut live = env.sub("hub.actions.support.callback").await;

    // ann fails twice (only the shadow calls back), bob three times (both do, at different
    // failures: the shadow at the second, the active version at the third).
    for (customer, times) in [("ann", 2), ("bob", 3)] {
        for i in 0..times {
            fail(&env, customer, &format!("{customer}-f{i}")).await;
        }
    }
    let msg = next(&mut live, "bob's live callback", 10).await;
    assert_eq!(crate::support::header(&msg, "Hub-Actor"), "bob");
    nothing(&mut live, "a callback the shadow took", 500).await;

    let seen = shadow(&api, |s| {
        callbacks(s)["candidate"].as_u64() == Some(2) && callbacks(s)["active"].as_u64() == Some(1)
    })
    .await;
    let d = callbacks(&seen);
    assert_eq!(
        (d["added"].as_u64(), d["removed"].as_u64(), d["changed"].as_u64()),
        (Some(2), Some(1), Some(0)),
        "{seen:#}"
    );
    let added: BTreeSet<_> = d["examples"]["added"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["cause"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        added,
        BTreeSet::from(["ann-f1".to_owned(), "bob-f1".to_owned()]),
        "{seen:#}"
    );
    assert_eq!(d["examples"]["removed"][0]["cause"], "bob-f2", "{seen:#}");
    assert_eq!(seen["quarantined"], false);

    // Promoted, it is the active version at once, and carries on with the live state: ann's two
    // failures are in it, so her third calls back under the new threshold.
    let (status, change) = api.post("/api/plugins/payment-trouble/promote", "").await;
    assert_eq!((status, change["version"].as_u64()), (200, Some(2)), "{change}");
    assert!(change.get("shadow").is_none_or(Value::is_null), "{change}");
    fail(&env, "ann", "ann-f2").await;
    let msg = next(&mut live, "ann's callback from the promoted version", 10).await;
    assert_eq!(crate::support::header(&msg, "Hub-Actor"), "ann");
    let (_, detail) = api.get("/api/plugins/payment-trouble").await;
    assert!(detail.get("shadow").is_none_or(Value::is_null), "{detail}");
    let (status, body) = api.post("/api/plugins/payment-trouble/promote", "").await;
    assert_eq!(status, 409, "no shadow left to promote: {body}");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_that_traps_is_quarantined_without_touching_the_live_version_and_is_dropped() {
    let env = Env::new().await;
    let hub = env.start(env.config()).await;
    let api = Api::new(&hub, None);
    let chaos = std::fs::read(fixture("chaos.wasm")).expect("chaos.wasm");
    let (status, change) = api.push_query("payment-trouble", chaos, &[("shadow", "true")]).await;
    assert_eq!((status, change["shadow"].as_u64()), (200, Some(2)), "{change}");
    let mut letters = env.sub("hub.dlq.>").await;
    let mut live = env.sub("hub.actions.support.callback").await;

    for i in 0..8 {
        env.send("chaos.panic", "x", json!({"i": i})).await;
    }
    let seen = shadow(&api, |s| s["quarantined"] == true).await;
    let failed: u64 = seen["failures"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, n)| n.as_u64())
        .sum();
    assert!(failed >= 5, "{seen:#}");
    nothing(&mut letters, "a dead letter of the shadow's failures", 300).await;

    // The live version runs on as before.
    for i in 0..3 {
        fail(&env, "cid", &format!("cid-f{i}")).await;
    }
    next(&mut live, "the live version's callback", 10).await;
    let (_, detail) = api.get("/api/plugins/payment-trouble").await;
    assert_eq!(
        (
            detail["stats"]["quarantined"].as_bool(),
            detail["stats"]["errors"].as_u64()
        ),
        (Some(false), Some(0)),
        "{detail}"
    );

    let (status, change) = api.delete("/api/plugins/payment-trouble/shadow").await;
    assert_eq!((status, change["version"].as_u64()), (200, Some(1)), "{change}");
    let (_, detail) = api.get("/api/plugins/payment-trouble").await;
    assert!(detail.get("shadow").is_none_or(Value::is_null), "{detail}");
    assert_eq!(
        detail["versions"][1]["source"], "shadow",
        "the dropped shadow stays in the history: {detail}"
    );
    hub.shutdown().await;
}
