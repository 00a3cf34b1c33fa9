//! The example pipeline over NATS: mapping, a sequence, a non-event, and its cancellation.

use crate::support::{Env, header, json, next, nothing, shoes};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_web_events_are_mapped_to_business_events() {
    let env = Env::new().await;
    let hub = env.start(env.config()).await;
    let mut viewed = env.sub("hub.events.product.viewed").await;
    let mut cart = env.sub("hub.events.cart.updated").await;
    let mut done = env.sub("hub.events.checkout.completed").await;

    env.web(
        "page_view",
        json!({"visitor": "u1", "url": "/p/a1", "product": {"sku": "A1", "name": "Shoes", "price": 59.9}}),
    )
    .await;
    let msg = next(&mut viewed, "product.viewed", 5).await;
    let event = json(&msg);
    assert_eq!(event["actor"], "u1");
    assert_eq!(event["source"], "plugin:clickstream");
    assert_eq!(event["payload"]["sku"], "A1");
    assert_eq!(event["payload"]["url"], "/p/a1");

    env.web("add_to_cart", shoes("u1")).await;
    env.web(
        "add_to_cart",
        json!({"visitor": "u1", "product": {"sku": "B2", "name": "Hat", "price": 10.0}, "qty": 2}),
    )
    .await;
    next(&mut cart, "first cart.updated", 5).await;
    let event = json(&next(&mut cart, "second cart.updated", 5).await);
    assert_eq!(event["payload"]["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(event["payload"]["total"], 79.9);

    env.web("checkout_submit", json!({"visitor": "u1", "order_id": "o-77"}))
        .await;
    let event = json(&next(&mut done, "checkout.completed", 5).await);
    assert_eq!(event["payload"]["order_id"], "o-77");
    assert_eq!(event["payload"]["total"], 79.9);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_payment_failures_raise_a_support_callback() {
    let env = Env::new().await;
    let mut config = env.config();
    config
        .plugins
        .config
        .insert("payment-trouble".into(), json!({"threshold": 3, "window": "10m"}));
    let hub = env.start(config).await;
    let mut actions = env.sub("hub.actions.>").await;

    env.send("payment.failed", "c1", json!({"amount": 20, "reason": "card_declined"}))
        .await;
    env.send("payment.failed", "c2", json!({"amount": 5})).await;
    env.send("payment.failed", "c1", json!({"amount": 20})).await;
    nothing(&mut actions, "an action after two failures", 300).await;
    env.send(
        "payment.failed",
        "c1",
        json!({"amount": 35, "reason": "insufficient_funds"}),
    )
    .await;

    let msg = next(&mut actions, "support.callback", 5).await;
    assert_eq!(msg.subject.as_str(), "hub.actions.support.callback");
    assert_eq!(header(&msg, "Hub-Actor"), "c1");
    let action = json(&msg);
    assert_eq!(action["category"], "support");
    assert_eq!(action["priority"], 100);
    assert_eq!(action["payload"]["failures"], 3);
    assert_eq!(action["payload"]["last_reason"], "insufficient_funds");
    assert_eq!(header(&msg, "Nats-Msg-Id"), action["id"].as_str().expect("id"));
    nothing(&mut actions, "a second action", 300).await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_cart_becomes_an_offer_after_the_window() {
    let env = Env::new().await;
    let mut config = env.config();
    config.plugins.config.insert(
        "cart-abandonment".into(),
        json!({"window": "1s", "message": "Still thinking?"}),
    );
    let hub = env.start(config).await;
    let mut offers = env.sub("hub.actions.offer.cart_reminder").await;

    env.web("add_to_cart", shoes("u7")).await;
    nothing(&mut offers, "an offer before the window ends", 500).await;
    let msg = next(&mut offers, "offer.cart_reminder", 5).await;
    let action = json(&msg);
    assert_eq!(action["actor"], "u7");
    assert_eq!(action["category"], "offer");
    assert_eq!(action["payload"]["message"], "Still thinking?");
    assert_eq!(action["payload"]["items"][0]["sku"], "A1");
    assert!(
        action["cause"]
            .as_str()
            .is_some_and(|c| c.starts_with("timer:cart-abandonment:u7:"))
    );
    nothing(&mut offers, "a second offer", 1500).await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_cancels_the_offer() {
    let env = Env::new().await;
    let mut config = env.config();
    config
        .plugins
        .config
        .insert("cart-abandonment".into(), json!({"window": "1s"}));
    let hub = env.start(config).await;
    let mut offers = env.sub("hub.actions.offer.cart_reminder").await;
    let mut done = env.sub("hub.events.checkout.completed").await;

    env.web("add_to_cart", shoes("u8")).await;
    env.web("add_to_cart", shoes("u9")).await;
    env.web("checkout_submit", json!({"visitor": "u8"})).await;
    next(&mut done, "checkout.completed", 5).await;

    // u9 did not check out: exactly one offer, and it is for u9.
    let msg = next(&mut offers, "offer for u9", 5).await;
    assert_eq!(json(&msg)["actor"], "u9");
    nothing(&mut offers, "an offer for u8", 1500).await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_are_served() {
    let env = Env::new().await;
    let hub = env.start(env.config()).await;
    let mut cart = env.sub("hub.events.cart.updated").await;
    env.web("add_to_cart", shoes("m1")).await;
    next(&mut cart, "cart.updated", 5).await;

    let health = crate::support::http_get(hub.http_addr(), "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains("\"nats\":\"connected\""), "{health}");
    assert!(health.contains("clickstream"), "{health}");

    let metrics = crate::support::http_get(hub.http_addr(), "/metrics").await;
    assert!(metrics.contains("hub_events_in_total{subject=\"web.*\"}"), "{metrics}");
    assert!(
        metrics.contains("hub_plugin_calls_total{plugin=\"clickstream\",shard=\""),
        "{metrics}"
    );
    assert!(metrics.contains("hub_plugin_call_seconds_bucket"), "{metrics}");
    hub.shutdown().await;
}
