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
