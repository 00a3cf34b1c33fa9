//! Misbehaving plugins end in dead letters; the hub and the other plugins keep working.

use crate::support::{Env, header, json, next};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_allocations_and_panics_are_contained() {
    let env = Env::new().await;
    let mut config = env.config();
    config.plugins.dir = Some(env.plugins_with_chaos());
    config.limits.call_timeout_ms = 100;
    config.limits.memory_bytes = 32 << 20;
    let hub = env.start(config).await;
    let mut dlq = env.sub("hub.dlq.>").await;
    let mut pong = env.sub("hub.events.chaos.pong").await;
    let mut callbacks = env.sub("hub.actions.support.callback").await;

    let cases = [
        ("chaos.loop", "hub.dlq.deadline", "deadline of 100 ms exceeded"),
        (
            "chaos.alloc",
            "hub.dlq.memory",
            "memory limit of 33554432 bytes exceeded",
        ),
        ("chaos.panic", "hub.dlq.panic", "panicked on purpose"),
        ("chaos.error", "hub.dlq.plugin_error", "chaos plugin refused the event"),
    ];
    for (kind, subject, reason) in cases {
        env.send(kind, "x1", json!({"n": 1})).await;
        let msg = next(&mut dlq, subject, 10).await;
        assert_eq!(msg.subject.as_str(), subject);
        let why = header(&msg, "Hub-Dlq-Reason");
        assert!(why.contains(reason), "{kind}: {why}");
        assert_eq!(header(&msg, "Hub-Plugin"), "chaos");
        // The dead letter carries the event, ready to be replayed on events.<kind>.
        let event = json(&msg);
        assert_eq!(event["kind"], kind);
        assert_eq!(event["payload"]["n"], 1);

        // The same plugin answers again, fresh instance and all.
        env.send("chaos.ping", "x1", json!({})).await;
        next(&mut pong, "chaos.pong after a failure", 5).await;
    }

    // The other plugins were never disturbed.
    for _ in 0..3 {
        env.send("payment.failed", "x2", json!({})).await;
    }
    next(&mut callbacks, "support.callback next to chaos", 5).await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_chain_of_emitted_events_is_cut_by_the_hop_limit() {
    let env = Env::new().await;
    let mut config = env.config();
    config.plugins.dir = Some(env.plugins_with_chaos());
    config.engine.hop_limit = 4;
    let hub = env.start(config).await;
    let mut dlq = env.sub("hub.dlq.>").await;
    let mut echoes = env.sub("hub.events.chaos.echo").await;

    env.send("chaos.echo", "loop", json!({})).await;
    let msg = next(&mut dlq, "hop_limit", 5).await;
    assert_eq!(msg.subject.as_str(), "hub.dlq.hop_limit");
    assert!(header(&msg, "Hub-Dlq-Reason").contains("hop limit of 4"));
    // Hops 1..=4 went through; the fifth was cut.
    for hop in 1..=4 {
        let echo = json(&next(&mut echoes, &format!("echo {hop}"), 5).await);
        assert_eq!(echo["source"], "plugin:chaos");
    }
    crate::support::nothing(&mut echoes, "a fifth echo", 300).await;
    hub.shutdown().await;
}
