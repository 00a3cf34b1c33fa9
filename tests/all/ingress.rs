//! Input that cannot become an event is dead-lettered with its reason, never dropped.

use crate::support::{Env, header, next};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_dead_lettered_with_its_reason() {
    let env = Env::new().await;
    let hub = env.start(env.config()).await;
    let mut dlq = env.sub("hub.dlq.>").await;

    env.send_raw("events.payment.failed", b"\x00\x01 not an envelope").await;
    let msg = next(&mut dlq, "undecodable", 5).await;
    assert_eq!(msg.subject.as_str(), "hub.dlq.undecodable");
    assert_eq!(header(&msg, "Hub-Dlq-Subject"), "events.payment.failed");
    assert_eq!(
        &msg.payload[..],
        b"\x00\x01 not an envelope",
        "the original bytes are kept"
    );

    env.send_raw("events.payment.failed", br#"{"kind": "payment.failed", "payload": {}}"#)
        .await;
    let msg = next(&mut dlq, "invalid", 5).await;
    assert_eq!(msg.subject.as_str(), "hub.dlq.invalid");
    assert!(header(&msg, "Hub-Dlq-Reason").contains("missing \"actor\""));

    env.send_raw("events.payment.failed", br#"{"actor": "a", "payload": {"amount": 3"#)
        .await;
    let msg = next(&mut dlq, "truncated JSON", 5).await;
    assert_eq!(msg.subject.as_str(), "hub.dlq.undecodable");
    assert!(header(&msg, "Hub-Dlq-Reason").contains("invalid JSON envelope"));

    env.web("page_view", json!({"user": "no visitor field"})).await;
    let msg = next(&mut dlq, "no_rule", 5).await;
    assert_eq!(msg.subject.as_str(), "hub.dlq.no_rule");
    assert!(header(&msg, "Hub-Dlq-Reason").contains("no actor at /visitor"));

    // Good input still flows afterwards.
    let mut cart = env.sub("hub.events.cart.updated").await;
    env.web("add_to_cart", json!({"visitor": "ok", "product": {"sku": "A1"}}))
        .await;
    next(&mut cart, "cart.updated after bad input", 5).await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_envelopes_are_accepted() {
    let env = Env::new().await;
    let hub = env.start(env.config()).await;
    let mut actions = env.sub("hub.actions.support.callback").await;
    for i in 0..3 {
        let body = rmp_serde::to_vec_named(&json!({
            "id": format!("mp-{i}"), "actor": "mp", "payload": {"amount": i}
        }))
        .expect("encode");
        env.send_raw("events.payment.failed", &body).await;
    }
    let msg = next(&mut actions, "callback from MessagePack input", 5).await;
    assert_eq!(header(&msg, "Hub-Cause"), "mp-2");
    hub.shutdown().await;
}
