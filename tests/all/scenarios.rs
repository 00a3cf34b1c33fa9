//! The reference scenarios of real deployments, over NATS with the real plugins.

use crate::support::{Env, json, next, nothing, plugin_folder, reference};
use serde_json::json;

const HOUR: i64 = 3_600_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_legacy_rows_in_any_order_become_one_customer_or_an_incomplete_one() {
    let env = Env::new().await;
    let mut config = env.config();
    config.plugins.dir = Some(plugin_folder(&env, "ref", &[reference("customer_creation.wasm")]));
    config
        .plugins
        .config
        .insert("customer-creation".into(), json!({"window": "1s"}));
    let hub = env.start(config).await;
    let mut created = env.sub("hub.events.customer.created").await;
    let mut incomplete = env.sub("hub.events.customer.incomplete").await;

    env.send("db.address", "c1", json!({"street": "Main St 1", "city": "Oslo"}))
        .await;
    env.send("db.account", "c1", json!({"iban": "NO93 8601 1117 947"}))
        .await;
    env.send("db.address", "c2", json!({"city": "Bergen"})).await;
    env.send("db.customer", "c1", json!({"name": "Ann", "email": "ann@example.com"}))
        .await;
    let event = json(&next(&mut created, "customer.created", 5).await);
    assert_eq!(event["actor"], "c1");
    assert_eq!(event["payload"]["customer"]["name"], "Ann");
    assert_eq!(event["payload"]["address"]["city"], "Oslo");
    assert_eq!(event["payload"]["account"]["iban"], "NO93 8601 1117 947");

    // c2's customer and account rows never come.
    let event = json(&next(&mut incomplete, "customer.incomplete", 5).await);
    assert_eq!(event["actor"], "c2");
    assert_eq!(event["payload"]["missing"], json!(["customer", "account"]));
    assert_eq!(event["payload"]["parts"]["address"]["city"], "Bergen");
    nothing(&mut created, "a second customer.created", 300).await;
    nothing(&mut incomplete, "c1 incomplete after creation", 1_200).await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meter_readings_become_hourly_and_daily_consumption_and_alerts() {
    let env = Env::new().await;
    let mut config = env.config();
    config.plugins.dir = Some(plugin_folder(&env, "ref", &[reference("energy_metering.wasm")]));
    let hub = env.start(config).await;
    let mut hourly = env.sub("hub.events.meter.hourly").await;
    let mut daily = env.sub("hub.events.meter.daily").await;
    let mut alerts = env.sub("hub.actions.alert.high_consumption").await;
    env.send_raw("profiles.m1", br#"{"hourly_threshold_kwh": 2.5}"#).await;

    // Late, duplicated and out-of-order readings (times in the meter's clock).
    let readings = [
        (23 * HOUR - 10, 500.0),
        (23 * HOUR + 10, 500.5),
        (23 * HOUR + 40 * 60_000, 503.0),
        (23 * HOUR + 20 * 60_000, 501.0),
        (23 * HOUR + 40 * 60_000, 503.0),
        (24 * HOUR + 5, 504.0),
        (23 * HOUR + 30 * 60_000, 502.0),
        (25 * HOUR + 5, 505.0),
    ];
    for (at, kwh) in readings {
        env.send("meter.reading", "m1", json!({"kwh": kwh, "at": at})).await;
    }
    let first = json(&next(&mut hourly, "the hour 23–24", 5).await);
    assert_eq!(
        first["payload"],
        json!({"start": 23 * HOUR, "end": 24 * HOUR, "kwh": 3.0})
    );
    let second = json(&next(&mut hourly, "the hour 24–25", 5).await);
    assert_eq!(second["payload"]["kwh"], 1.0);
    let day = json(&next(&mut daily, "the first day", 5).await);
    assert_eq!(day["payload"], json!({"start": 0, "end": 24 * HOUR, "kwh": 3.0}));
    let alert = json(&next(&mut alerts, "high consumption", 5).await);
    assert_eq!(alert["actor"], "m1");
    assert_eq!(alert["payload"]["kwh"], 3.0);
    assert_eq!(alert["payload"]["threshold_kwh"], 2.5);
    nothing(&mut alerts, "an alert for a normal hour", 300).await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_switches_are_rekeyed_into_live_audiences_and_favourites() {
    let env = Env::new().await;
    let mut config = env.config();
    config.plugins.dir = Some(plugin_folder(&env, "ref", &[reference("tv_audience.wasm")]));
    let hub = env.start(config).await;
    let api = crate::support::Api::new(&hub, None);
    let mut audience = env.sub("hub.events.tv.audience").await;

    let switches = [
        ("v1", json!("news")),
        ("v2", json!("news")),
        ("v3", json!("sports")),
        ("v1", json!("sports")),
        ("v2", json!(null)),
    ];
    for (viewer, channel) in switches {
        env.send("tv.switch", viewer, json!({ "channel": channel })).await;
    }
    // 4 joins and 2 leaves, each counted on its channel's key, in order per channel.
    let mut last = std::collections::BTreeMap::new();
    for _ in 0..6 {
        let event = json(&next(&mut audience, "tv.audience", 5).await);
        assert_eq!(
            event["actor"],
            format!("channel:{}", event["payload"]["channel"].as_str().unwrap_or(""))
        );
        last.insert(
            event["payload"]["channel"].as_str().unwrap_or_default().to_owned(),
            event["payload"]["viewers"].clone(),
        );
    }
    assert_eq!(last.get("news"), Some(&json!(0)));
    assert_eq!(last.get("sports"), Some(&json!(2)));

    let (status, channel) = api.get("/api/actors/channel:sports").await;
    assert_eq!(status, 200);
    assert_eq!(channel["state"]["tv-audience"]["viewers"], 2, "{channel}");
    let (_, viewer) = api.get("/api/actors/v1").await;
    assert_eq!(
        viewer["state"]["tv-audience"]["watching"]["channel"], "sports",
        "{viewer}"
    );
    assert!(
        viewer["state"]["tv-audience"]["favourites"]
            .to_string()
            .contains("news"),
        "{viewer}"
    );
    hub.shutdown().await;
}

fn cart(sku: &str) -> serde_json::Value {
    json!({"items": [{"sku": sku, "name": "Shoes", "price": 59.9, "qty": 1}], "total": 59.9})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_marketing_module_under_two_names_and_support_comes_first() {
    let env = Env::new().await;
    let mut config = env.config();
    // This is about the plugins' own hold on offers; the arbiter's suppression of offers after a
    // support action (which would outlast the case) is tested in `arbitration`.
    config.policies = hub::arbiter::Policies::default();
    config.plugins.dir = Some(plugin_folder(&env, "ref", &[reference("support_first.wasm")]));
    let hub = env.start(config).await;
    let api = crate::support::Api::new(&hub, None);
    let wasm = std::fs::read(reference("marketing_cart.wasm")).expect("built");
    for (name, config) in [
        ("vip-offers", r#"{"segment": "vip", "window": "1s"}"#),
        ("offers", r#"{"skip_segment": "vip", "window": "2s"}"#),
    ] {
        let (status, body) = api.push(name, wasm.clone(), Some(config)).await;
        assert_eq!(status, 200, "{name}: {body}");
    }
    let mut offers = env.sub("hub.actions.offer.cart_reminder").await;
    let mut held = env.sub("hub.events.offer.held").await;
    let mut opened = env.sub("hub.events.support.opened").await;
    let mut callbacks = env.sub("hub.actions.support.callback").await;
    env.send_raw("profiles.alice", br#"{"name": "Alice", "segment": "vip"}"#)
        .await;
    env.send_raw("profiles.bob", br#"{"name": "Bob"}"#).await;
    env.send_raw("profiles.carol", br#"{"name": "Carol"}"#).await;

    env.send("cart.updated", "alice", cart("A1")).await;
    env.send("cart.updated", "bob", cart("B1")).await;
    env.send("cart.updated", "carol", cart("C1")).await;
    for _ in 0..3 {
        env.send("payment.failed", "carol", json!({"amount": 20})).await;
    }
    let case = json(&next(&mut opened, "support.opened", 5).await);
    assert_eq!(
        (case["actor"].as_str(), case["payload"]["failures"].as_u64()),
        (Some("carol"), Some(3))
    );
    assert_eq!(
        json(&next(&mut callbacks, "support.callback", 5).await)["actor"],
        "carol"
    );

    // The VIP window is shorter, and each customer is offered by the deployment of their segment.
    let first = json(&next(&mut offers, "the VIP offer", 5).await);
    assert_eq!(
        (first["actor"].as_str(), first["plugin"].as_str()),
        (Some("alice"), Some("vip-offers"))
    );
    assert_eq!(first["payload"]["message"], "Hi Alice, your cart is waiting for you");
    let second = json(&next(&mut offers, "the regular offer", 5).await);
    assert_eq!(
        (second["actor"].as_str(), second["plugin"].as_str()),
        (Some("bob"), Some("offers"))
    );
    assert_eq!(second["payload"]["message"], "Hi Bob, your cart is waiting for you");
    // Carol has an open support case: her offer is held back.
    let hold = json(&next(&mut held, "offer.held", 5).await);
    assert_eq!(hold["actor"], "carol");
    nothing(&mut offers, "an offer during a support case", 500).await;

    // Once the case is closed, marketing may address her again.
    env.send("support.closed", "carol", json!({})).await;
    env.send("cart.updated", "carol", cart("C2")).await;
    let offer = json(&next(&mut offers, "Carol's offer after the case", 5).await);
    assert_eq!(
        (offer["actor"].as_str(), offer["payload"]["message"].as_str()),
        (Some("carol"), Some("Hi Carol, your cart is waiting for you"))
    );
    hub.shutdown().await;
}
