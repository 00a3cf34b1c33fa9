//! The arbiter between scenarios and delivery: priorities, contact limits, dedup, policies
//! changed at run time, and what a replay of the same input does on the action stream.

use crate::support::{Api, Env, http_get, next, nothing, shoes_cart};
use hub::arbiter::{Limit, Policies};
use serde_json::json;
use std::time::Duration;

/// The actor's ledger as (action name, decision, reason).
async fn decisions(api: &Api, actor: &str) -> Vec<(String, String, Option<String>)> {
    let (status, view) = api.get(&format!("/api/actors/{actor}")).await;
    assert_eq!(status, 200, "{view}");
    view["actions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let text = |k: &str| e[k].as_str().map(str::to_owned);
            (
                text("name").unwrap_or_default(),
                text("decision").unwrap_or_default(),
                text("reason"),
            )
        })
        .collect()
}

fn decision(name: &str, decision: &str, reason: Option<&str>) -> (String, String, Option<String>) {
    (name.to_owned(), decision.to_owned(), reason.map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn support_outranks_offers_and_limits_and_dedup_are_recorded_with_their_reason() {
    let env = Env::new().await;
    let mut config = env.config();
    let mut policies = Policies::example();
    // The conflict window alone decides between support and the offer here; offers wait a
    // second for a better action.
    policies.suppressions.clear();
    policies.conflict_window = Duration::from_secs(10);
    let offer = policies.categories.get_mut("offer").expect("offer");
    offer.hold = Duration::from_secs(1);
    offer.limit = Some(Limit {
        count: 2,
        window: Duration::from_secs(3600),
    });
    config.policies = policies;
    config
        .plugins
        .config
        .insert("cart-abandonment".into(), json!({"window": "300ms"}));
    let hub = env.start(config).await;
    let api = Api::new(&hub, None);
    let mut offers = env.sub("hub.actions.offer.cart_reminder").await;
    let mut callbacks = env.sub("hub.actions.support.callback").await;

    // An offer fires first and waits; a support call comes while it waits: support wins, and
    // the ledger says why the offer never went out.
    env.send("cart.updated", "s1", shoes_cart()).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        decisions(&api, "s1").await,
        [decision("offer.cart_reminder", "held", None)]
    );
    for _ in 0..3 {
        env.send("payment.failed", "s1", json!({"amount": 20})).await;
    }
    next(&mut callbacks, "support.callback", 5).await;
    nothing(&mut offers, "an offer outranked by support", 1_500).await;
    assert_eq!(
        decisions(&api, "s1").await,
        [
            decision("support.callback", "delivered", None),
            decision("offer.cart_reminder", "suppressed", Some("outranked")),
        ]
    );
    let (_, view) = api.get("/api/actors/s1").await;
    let detail = view["actions"][1]["detail"].as_str().unwrap_or_default();
    assert!(detail.starts_with("outranked by support.callback"), "{view}");

    // Two offers a window: the third abandoned cart is suppressed by the category limit.
    for n in 1..=3 {
        env.send("cart.updated", "o1", shoes_cart()).await;
        if n <= 2 {
            next(&mut offers, "an offer within the limit", 5).await;
        } else {
            nothing(&mut offers, "the third offer", 1_500).await;
        }
    }
    let (_, view) = api.get("/api/actors/o1").await;
    assert_eq!(
        view["actions"][2]["detail"], "offer limit of 2 per 1h reached",
        "{view}"
    );

    // payment-trouble gives its callbacks a dedup key per customer: the second is a duplicate.
    for _ in 0..6 {
        env.send("payment.failed", "d1", json!({"amount": 20})).await;
    }
    next(&mut callbacks, "the first callback", 5).await;
    nothing(&mut callbacks, "a duplicate callback", 1_000).await;
    assert_eq!(
        decisions(&api, "d1").await,
        [
            decision("support.callback", "delivered", None),
            decision("support.callback", "suppressed", Some("duplicate")),
        ]
    );

    // Policies change without a restart; bad ones are refused with what is wrong.
    let (status, body) = api
        .put_json(
            "/api/policies",
            r#"{"categories": {"offer": {"limit": {"count": 0, "window": "1h"}}}}"#,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("categories.offer.limit: count must be between 1 and 100, not 0"),
        "{body}"
    );
    let (status, body) = api.put_json("/api/policies", r#"{"conflict_window": "soon"}"#).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("\"soon\" is not a duration"),
        "{body}"
    );
    let relaxed = r#"{"categories": {"offer": {"priority": 100, "limit": {"count": 5, "window": "1h"}}}}"#;
    assert_eq!(api.put_json("/api/policies", relaxed).await.0, 200);
    let (_, live) = api.get("/api/policies").await;
    assert_eq!(
        live["categories"]["offer"]["limit"],
        json!({"count": 5, "window": "1h"}),
        "{live}"
    );
    env.send("cart.updated", "o1", shoes_cart()).await;
    next(&mut offers, "an offer under the new limit", 5).await;

    // Every decision is counted.
    let metrics = http_get(hub.http_addr(), "/metrics").await;
    for reason in ["outranked", "category_limit", "duplicate"] {
        assert!(
            metrics.lines().any(|l| l.starts_with("hub_action_decisions_total")
                && l.contains("decision=\"suppressed\"")
                && l.contains(&format!("reason=\"{reason}\""))),
            "no {reason} in {metrics}"
        );
    }
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_input_delivers_nothing_twice_on_the_action_stream() {
    let env = Env::new().await;
    let mut config = env.config();
    config
        .plugins
        .config
        .insert("payment-trouble".into(), json!({"threshold": 1}));
    let hub = env.start(config).await;
    let api = Api::new(&hub, None);
    let mut callbacks = env.sub("hub.actions.support.callback").await;
    let input = json!({"id": "pay-1", "kind": "payment.failed", "actor": "r1", "payload": {"amount": 20}});
    let input = input.to_string();

    env.send_raw("events.payment.failed", input.as_bytes()).await;
    let first = next(&mut callbacks, "the callback", 5).await;
    let id = crate::support::header(&first, "Nats-Msg-Id");

    // The same input again: the ledger knows the action, nothing is sent.
    env.send_raw("events.payment.failed", input.as_bytes()).await;
    nothing(&mut callbacks, "a replayed callback", 1_000).await;

    // Even when the hub has forgotten it (here: the actor was erased, as after a crash before
    // the ledger was committed), the action gets the same id, and the stream keeps it once.
    assert_eq!(api.delete("/api/actors/r1").await.0, 200);
    env.send_raw("events.payment.failed", input.as_bytes()).await;
    let again = next(&mut callbacks, "the re-decided callback", 5).await;
    assert_eq!(crate::support::header(&again, "Nats-Msg-Id"), id);

    let js = async_nats::jetstream::new(env.client.clone());
    let mut stream = js.get_stream("HUB_ACTIONS").await.expect("the action stream exists");
    let info = stream.info().await.expect("stream info");
    assert_eq!(info.state.messages, 1, "{:?}", info.state);
    hub.shutdown().await;
}
