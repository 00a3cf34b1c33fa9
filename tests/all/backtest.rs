//! Backtests over real NATS: the recorded inputs replayed through the active version and a
//! candidate, on the hub's runtime, compared output by output — and nothing sent or changed live.

use crate::support::{Api, Env, next, nothing, payment_trouble_wasm};
use serde_json::{Value, json};
use std::collections::BTreeSet;

const THRESHOLD: usize = 3;

/// Failures per customer: c0 has none, c1 one, … c7 seven; all inside the 10-minute window.
fn failures(customer: usize) -> usize {
    customer
}

/// The failures (customer, index) at which payment-trouble calls back with `threshold`: every
/// `threshold`-th failure in the window, which starts afresh after each callback.
fn callbacks(threshold: usize) -> BTreeSet<(String, String)> {
    (0..8)
        .flat_map(|c| {
            (0..failures(c))
                .filter(move |i| (i + 1) % threshold == 0)
                .map(move |i| (format!("c{c}"), format!("c{c}-f{i}")))
        })
        .collect()
}

/// Send every customer's failures (ids `c<n>-f<i>`), and wait for the live callbacks: the inputs
/// are in the stream, and the hub has run them.
async fn record(env: &Env) {
    let mut live = env.sub("hub.actions.support.callback").await;
    let t0 = hub::event::now_ms();
    for i in 0..8 {
        for c in 0..8 {
            if i < failures(c) {
                let envelope = json!({
                    "id": format!("c{c}-f{i}"), "kind": "payment.failed", "actor": format!("c{c}"),
                    "time": t0 + (i as i64) * 1000, "payload": {"amount": 20},
                });
                env.send_raw("events.payment.failed", envelope.to_string().as_bytes())
                    .await;
            }
        }
    }
    // The arbiter lets one callback per customer through (a second one is a duplicate).
    let customers: BTreeSet<_> = callbacks(THRESHOLD).into_iter().map(|(c, _)| c).collect();
    for _ in 0..customers.len() {
        next(&mut live, "a live callback", 10).await;
    }
}

fn entries(report: &Value, change: &str) -> BTreeSet<(String, String)> {
    report["diff"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["name"] == "support.callback")
        .flat_map(|d| d["examples"][change].as_array().cloned().unwrap_or_default())
        .map(|c| {
            (
                c["actor"].as_str().unwrap_or_default().to_owned(),
                c["cause"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_threshold_adds_exactly_the_callbacks_the_model_predicts_and_nothing_goes_out() {
    let env = Env::new().await;
    let hub = env.start(env.config()).await;
    let api = Api::new(&hub, None);
    record(&env).await;
    let (_, state_before) = api.get("/api/actors/c5").await;
    let mut out = env.sub("hub.>").await;

    let (status, report) = api
        .post_wasm(
            "/api/plugins/payment-trouble/backtest",
            payment_trouble_wasm(),
            &[("from", "1"), ("config", r#"{"threshold": 2}"#), ("full", "true")],
        )
        .await;
    assert_eq!(status, 200, "{report:#}");

    // The model: what each threshold calls back for, by customer and failure.
    let (active, candidate) = (callbacks(THRESHOLD), callbacks(2));
    let added: BTreeSet<_> = candidate.difference(&active).cloned().collect();
    let removed: BTreeSet<_> = active.difference(&candidate).cloned().collect();
    // Where both call back, the payload's failure count (the threshold) differs.
    let changed: BTreeSet<_> = active.intersection(&candidate).cloned().collect();
    assert!(!added.is_empty() && !removed.is_empty() && !changed.is_empty());
    assert_eq!(entries(&report, "added"), added, "{report:#}");
    assert_eq!(entries(&report, "removed"), removed, "{report:#}");
    assert_eq!(entries(&report, "changed"), changed, "{report:#}");
    let callback = report["diff"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["name"] == "support.callback"))
        .expect("a line for support.callback");
    assert_eq!(
        (callback["active"].as_u64(), callback["candidate"].as_u64()),
        (Some(active.len() as u64), Some(candidate.len() as u64))
    );
    let affected: BTreeSet<&str> = added
        .iter()
        .chain(&removed)
        .chain(&changed)
        .map(|(a, _)| a.as_str())
        .collect();
    assert_eq!(callback["actors_affected"].as_u64(), Some(affected.len() as u64));
    assert_eq!(report["identical"], false);
    assert_eq!(
        report["range"]["events"].as_u64(),
        Some((0..8).map(failures).sum::<usize>() as u64)
    );
    assert!(report["speed"]["inputs_per_s"].as_f64() > Some(0.0), "{report:#}");

    // Nothing went out, and the live state is as it was.
    nothing(&mut out, "anything published by a backtest", 500).await;
    let (_, state_after) = api.get("/api/actors/c5").await;
    assert_eq!(state_before, state_after);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_candidate_shows_no_difference_and_the_cli_says_so() {
    let env = Env::new().await;
    let hub = env.start(env.config()).await;
    let api = Api::new(&hub, None);
    record(&env).await;

    let (status, report) = api
        .post_wasm(
            "/api/plugins/payment-trouble/backtest",
            payment_trouble_wasm(),
            &[("from", "10m")],
        )
        .await;
    assert_eq!(status, 200, "{report:#}");
    assert_eq!(report["identical"], true, "{report:#}");
    let callback = &report["diff"][0];
    assert_eq!(
        (callback["active"].as_u64(), callback["candidate"].as_u64()),
        (
            Some(callbacks(THRESHOLD).len() as u64),
            Some(callbacks(THRESHOLD).len() as u64)
        ),
        "{report:#}"
    );

    // Wrong requests say what is wrong.
    let (status, body) = api
        .post_wasm(
            "/api/plugins/payment-trouble/backtest",
            payment_trouble_wasm(),
            &[("from", "soon")],
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("from")), "{body}");
    let (status, body) = api
        .post_wasm(
            "/api/plugins/payment-trouble/backtest",
            b"not wasm".to_vec(),
            &[("from", "1")],
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = api
        .post_wasm(
            "/api/plugins/payment-trouble/backtest",
            payment_trouble_wasm(),
            &[("from", "999999")],
        )
        .await;
    assert_eq!(status, 422, "{body}");

    let cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_hub"))
        .args(["plugin", "backtest", "payment-trouble"])
        .arg(std::path::Path::new(hub::EXAMPLE_PLUGINS).join("payment_trouble.wasm"))
        .args(["--from", "1", "--config", r#"{"threshold": 2}"#])
        .args(["--api", &format!("http://{}", hub.http_addr())])
        .output()
        .await
        .expect("hub runs");
    let text = String::from_utf8_lossy(&cli.stdout);
    assert!(cli.status.success(), "{text}\n{}", String::from_utf8_lossy(&cli.stderr));
    assert!(text.contains("action support.callback"), "{text}");
    assert!(text.contains("added"), "{text}");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_input_keeps_nothing_to_backtest_and_says_so() {
    let env = Env::new().await;
    let mut config = env.config();
    config.input.mode = hub::config::InputMode::Core;
    let hub = env.start(config).await;
    let api = Api::new(&hub, None);
    let (status, body) = api
        .post_wasm(
            "/api/plugins/payment-trouble/backtest",
            payment_trouble_wasm(),
            &[("from", "1")],
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("durable")), "{body}");
    hub.shutdown().await;
}
