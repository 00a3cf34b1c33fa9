//! What survives a restart: plugin state and pending durable timers.

use crate::support::{Env, json, next, nothing};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_pending_timers_survive_a_restart() {
    let env = Env::new().await;
    let mut config = env.config();
    config
        .plugins
        .config
        .insert("cart-abandonment".into(), json!({"window": "2s"}));
    config
        .plugins
        .config
        .insert("payment-trouble".into(), json!({"threshold": 3}));

    let hub = env.start(config.clone()).await;
    let mut cart = env.sub("hub.events.cart.updated").await;
    let mut offers = env.sub("hub.actions.offer.cart_reminder").await;
    let mut callbacks = env.sub("hub.actions.support.callback").await;
    env.web(
        "add_to_cart",
        json!({"visitor": "r1", "product": {"sku": "A1", "name": "Shoes", "price": 50.0}}),
    )
    .await;
    next(&mut cart, "cart.updated before the restart", 5).await;
    env.send("payment.failed", "r2", json!({})).await;
    env.send("payment.failed", "r2", json!({})).await;
    hub.shutdown().await;
    nothing(&mut offers, "an offer while the hub is down", 200).await;

    let hub = env.start(config).await;
    assert_eq!(hub.timers_restored(), 1, "the cart timer is back");
    // The timer set before the restart fires after it.
    let offer = json(&next(&mut offers, "offer after the restart", 5).await);
    assert_eq!(offer["actor"], "r1");
    assert_eq!(offer["payload"]["items"][0]["sku"], "A1");
    // The mapper's cart and the failure count carried over.
    env.web(
        "add_to_cart",
        json!({"visitor": "r1", "product": {"sku": "B2", "name": "Hat", "price": 5.0}}),
    )
    .await;
    let updated = json(&next(&mut cart, "cart.updated after the restart", 5).await);
    assert_eq!(updated["payload"]["items"].as_array().map(Vec::len), Some(2));
    env.send("payment.failed", "r2", json!({})).await;
    let callback = json(&next(&mut callbacks, "callback on the third failure", 5).await);
    assert_eq!(callback["payload"]["failures"], 3);
    hub.shutdown().await;
}
