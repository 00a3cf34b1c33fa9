//! Delivery plugins and sinks: the `notify` plugin renders actions with the customer's name for
//! devices connected on `/push/{actor}` (WebSocket and server-sent events) and for a CRM
//! webhook that fails twice before it answers.

use crate::support::{Env, Received, crm, examples_with_notify, next, nothing, shoes_cart, webhook};
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;

/// A CRM that answers 500 to the first two requests and 200 after.
async fn flaky_crm() -> (std::net::SocketAddr, Received) {
    crm(|n| if n < 2 { 500 } else { 200 }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_pushes_to_devices_and_a_flaky_webhook_gets_its_delivery_once() {
    let env = Env::new().await;
    let (crm, received) = flaky_crm().await;
    let mut config = env.config();
    config.plugins.dir = Some(examples_with_notify(&env, "delivery"));
    config.plugins.config.insert(
        "notify".into(),
        json!({"routes": [
            {"actions": "offer.*", "channel": "push", "title": "For you, {name}", "text": "{total} EUR in your cart"},
            {"actions": "support.*", "channel": "crm", "target": "queue-1"}
        ]}),
    );
    config
        .plugins
        .config
        .insert("cart-abandonment".into(), json!({"window": "300ms"}));
    config
        .channels
        .insert("crm".into(), webhook(crm, 4, Duration::from_millis(50)));
    let hub = env.start(config).await;
    let mut actions = env.sub("hub.actions.>").await;
    let mut offline = env.sub("hub.deliveries.push").await;
    let mut dlq = env.sub("hub.dlq.>").await;
    env.send_raw("profiles.c1", br#"{"name": "Ada"}"#).await;

    // A device connected by WebSocket receives the offer, rendered with the customer's name.
    let (mut device, _) = tokio_tungstenite::connect_async(format!("ws://{}/push/c1", hub.http_addr()))
        .await
        .expect("WebSocket connects");
    env.send("cart.updated", "c1", shoes_cart()).await;
    let message = tokio::time::timeout(Duration::from_secs(5), device.next())
        .await
        .expect("a push within 5 s")
        .expect("open")
        .expect("frame");
    let pushed: Value = serde_json::from_str(message.to_text().expect("text frame")).expect("JSON");
    assert_eq!(
        (&pushed["action"], &pushed["title"], &pushed["text"], &pushed["actor"]),
        (
            &json!("offer.cart_reminder"),
            &json!("For you, Ada"),
            &json!("59.9 EUR in your cart"),
            &json!("c1")
        ),
        "{pushed}"
    );
    nothing(&mut actions, "an action a delivery plugin took", 300).await;

    // Server-sent events for a client that does not upgrade.
    let mut sse = reqwest::get(format!("http://{}/push/c2", hub.http_addr()))
        .await
        .expect("SSE connects");
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    env.send("cart.updated", "c2", shoes_cart()).await;
    let chunk = tokio::time::timeout(Duration::from_secs(5), sse.chunk())
        .await
        .expect("an event within 5 s")
        .expect("stream")
        .expect("chunk");
    let text = String::from_utf8_lossy(&chunk);
    let data = text.trim().strip_prefix("data: ").expect("an SSE data line");
    let pushed: Value = serde_json::from_str(data).expect("JSON");
    assert_eq!(pushed["title"], "For you, there", "no profile, no name: {pushed}");

    // No device connected: the push goes to hub.deliveries.push for a push gateway.
    env.send("cart.updated", "c3", shoes_cart()).await;
    let msg = next(&mut offline, "an offline push", 5).await;
    assert_eq!(crate::support::header(&msg, "Hub-Target"), "c3");

    // The CRM fails twice, then takes the callback: one delivery, three attempts, one key.
    for _ in 0..3 {
        env.send("payment.failed", "c4", json!({"amount": 20})).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while received.lock().expect("lock").iter().all(|r| r.3 != 200) {
        assert!(tokio::time::Instant::now() < deadline, "the webhook never succeeded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let attempts = received.lock().expect("lock").clone();
    let statuses: Vec<u16> = attempts.iter().map(|r| r.3).collect();
    assert_eq!(statuses, [500, 500, 200], "delivered once, after two failures");
    assert!(
        attempts.iter().all(|r| r.0 == attempts[0].0 && !r.0.is_empty()),
        "one idempotency key"
    );
    assert_eq!(attempts[2].1, "queue-1");
    assert_eq!(attempts[2].2["action"], "support.callback");
    nothing(&mut dlq, "a dead letter", 200).await;

    // An action the delivery plugin has no route for is not lost: it goes to hub.actions.
    let api = crate::support::Api::new(&hub, None);
    let offers_only = r#"{"routes": [{"actions": "offer.*", "channel": "push"}]}"#;
    let (status, body) = api.put_json("/api/plugins/notify/config", offers_only).await;
    assert_eq!(status, 200, "{body}");
    for _ in 0..3 {
        env.send("payment.failed", "c5", json!({"amount": 20})).await;
    }
    let msg = next(&mut actions, "an action no delivery plugin delivered", 5).await;
    assert_eq!(msg.subject.as_str(), "hub.actions.support.callback");
    assert_eq!(crate::support::header(&msg, "Hub-Actor"), "c5");
    hub.shutdown().await;
}
