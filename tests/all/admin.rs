//! The admin API: bad uploads are refused with their reason while the old version keeps
//! serving; config updates, rollback, two names for one module, enable/disable, delete; the
//! token; and the registry surviving a restart without recompiling.

use crate::support::{Api, Env, fixture, json, next, nothing, plugin_folder};
use async_nats::Subscriber;
use serde_json::{Value, json};

const TOKEN: &str = "test-token";

fn counter_config(env: &Env) -> hub::config::Config {
    let mut config = env.config();
    config.plugins.dir = Some(plugin_folder(env, "fixture-plugins", &[fixture("counter.wasm")]));
    config.admin_token = Some(TOKEN.into());
    config.limits.max_module_bytes = 1 << 20;
    config
}

/// Send one tick for `actor` and return what each plugin that counted it said.
async fn tick(env: &Env, counted: &mut Subscriber, actor: &str) -> Value {
    env.send("count.tick", actor, json!({})).await;
    json(&next(counted, "hub.events.counted", 10).await)["payload"].clone()
}

/// What is wrong, the module, its config, the expected status and the reason it must give.
type BadUpload = (&'static str, Vec<u8>, Option<&'static str>, u16, &'static str);

fn read(file: &str) -> Vec<u8> {
    std::fs::read(fixture(file)).expect("fixture built")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_are_refused_with_their_reason_and_the_old_version_keeps_serving() {
    let env = Env::new().await;
    let hub = env.start(counter_config(&env)).await;
    let api = Api::new(&hub, Some(TOKEN));
    let mut counted = env.sub("hub.events.counted").await;

    let (status, body) = Api::new(&hub, None).get("/api/plugins").await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap_or_default().contains("Bearer"), "{body}");
    let (status, _) = Api::new(&hub, Some("wrong"))
        .push("counter", read("counter_v2.wasm"), None)
        .await;
    assert_eq!(status, 401);

    let mut too_large = read("counter_v2.wasm");
    too_large.resize((1 << 20) + 1, 0);
    let cases: Vec<BadUpload> = vec![
        (
            "garbage",
            b"not wasm at all".to_vec(),
            None,
            422,
            "not a WebAssembly component",
        ),
        (
            "core module",
            b"\0asm\x01\0\0\0".to_vec(),
            None,
            422,
            "core module, not a component",
        ),
        (
            "wrong world",
            read("wrong_world.wasm"),
            None,
            422,
            "does not fit the hub:plugin/plugin@0.1.0 world",
        ),
        (
            "config rejected",
            read("counter_v2.wasm"),
            Some(r#"{"label": 5}"#),
            422,
            "init rejected the config",
        ),
        (
            "unknown config key",
            read("counter_v2.wasm"),
            Some(r#"{"colour": "red"}"#),
            422,
            "unknown field `colour`",
        ),
        (
            "too large",
            too_large,
            None,
            413,
            "more than the limit of 1048576 bytes",
        ),
        (
            "trap at init",
            read("chaos.wasm"),
            Some(r#"{"panic_in_init": true}"#),
            422,
            "panicked in init on purpose",
        ),
        (
            "config not JSON",
            read("counter_v2.wasm"),
            Some("{label"),
            400,
            "the config is not JSON",
        ),
    ];
    for (what, wasm, config, want_status, want_reason) in cases {
        let (status, body) = api.push("counter", wasm, config).await;
        let error = body["error"].as_str().unwrap_or_default();
        assert_eq!(status, want_status, "{what}: {body}");
        assert!(error.contains(want_reason), "{what}: {error}");
        // The running version is untouched and still serves.
        assert_eq!(tick(&env, &mut counted, "a").await["generation"], 1, "{what}");
    }
    let (status, body) = api
        .request_raw_put("/api/plugins/counter", "text/plain", b"hello".to_vec())
        .await;
    assert_eq!(status, 415, "{body}");

    let (status, detail) = api.get("/api/plugins/counter").await;
    assert_eq!(status, 200);
    assert_eq!(detail["versions"].as_array().map(Vec::len), Some(1), "{detail}");
    assert_eq!(detail["active_version"], 1);
    assert_eq!(api.get("/api/plugins/nope").await.0, 404);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_rollback_two_names_enable_disable_and_delete() {
    let env = Env::new().await;
    let hub = env.start(counter_config(&env)).await;
    let api = Api::new(&hub, Some(TOKEN));
    let mut counted = env.sub("hub.events.counted").await;
    assert_eq!(tick(&env, &mut counted, "a").await["label"], "");

    // New template parameters for the running code: no upload, behaviour changes.
    let (status, change) = api
        .put_json("/api/plugins/counter/config", r#"{"label": "blue"}"#)
        .await;
    assert_eq!(status, 200, "{change}");
    assert_eq!(
        (change["version"].as_u64(), change["live"].as_bool()),
        (Some(2), Some(true))
    );
    let out = tick(&env, &mut counted, "a").await;
    assert_eq!(
        (out["label"].as_str(), out["n"].as_u64()),
        (Some("blue"), Some(2)),
        "state carried over"
    );
    let (status, body) = api.put_json("/api/plugins/counter/config", r#"{"label": 7}"#).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(tick(&env, &mut counted, "a").await["label"], "blue");

    let (status, change) = api.post("/api/plugins/counter/rollback", "").await;
    assert_eq!((status, change["version"].as_u64()), (200, Some(1)), "{change}");
    assert_eq!(tick(&env, &mut counted, "a").await["label"], "");
    let (status, change) = api.post("/api/plugins/counter/rollback", r#"{"version": 2}"#).await;
    assert_eq!((status, change["version"].as_u64()), (200, Some(2)), "{change}");
    assert_eq!(tick(&env, &mut counted, "a").await["label"], "blue");
    assert_eq!(
        api.post("/api/plugins/counter/rollback", r#"{"version": 9}"#).await.0,
        404
    );

    // The same module under a second name with another config: a second scenario template
    // with state of its own.
    let (status, change) = api
        .push("counter-b", read("counter.wasm"), Some(r#"{"label": "b"}"#))
        .await;
    assert_eq!(status, 200, "{change}");
    env.send("count.tick", "a", json!({})).await;
    let mut outputs: Vec<(String, u64)> = Vec::new();
    for _ in 0..2 {
        let p = json(&next(&mut counted, "two counts", 10).await)["payload"].clone();
        outputs.push((
            p["label"].as_str().unwrap_or_default().into(),
            p["n"].as_u64().unwrap_or(0),
        ));
    }
    outputs.sort();
    assert_eq!(outputs, vec![("b".to_string(), 1), ("blue".to_string(), 6)]);

    let (status, _) = api.post("/api/plugins/counter-b/disable", "").await;
    assert_eq!(status, 200);
    assert_eq!(tick(&env, &mut counted, "a").await["label"], "blue");
    nothing(&mut counted, "a disabled plugin", 300).await;
    let (status, _) = api.post("/api/plugins/counter-b/enable", "").await;
    assert_eq!(status, 200);
    env.send("count.tick", "a", json!({})).await;
    next(&mut counted, "first of two", 10).await;
    next(&mut counted, "second of two", 10).await;

    let (status, list) = api.get("/api/plugins").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list
        .as_array()
        .map(|l| l.iter().filter_map(|p| p["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, vec!["counter", "counter-b"]);
    assert_eq!(api.delete("/api/plugins/counter-b").await.0, 200);
    assert_eq!(api.get("/api/plugins/counter-b").await.0, 404);
    assert_eq!(tick(&env, &mut counted, "a").await["label"], "blue");
    nothing(&mut counted, "a deleted plugin", 300).await;

    // Statistics reach the list once the shards fold them in (every commit interval).
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (_, list) = api.get("/api/plugins").await;
    let counter = &list[0];
    assert_eq!(counter["name"], "counter");
    assert!(counter["calls"].as_u64().unwrap_or(0) >= 9, "{counter}");
    assert!(counter["latency_p99_ms"].as_f64().is_some(), "{counter}");

    let (status, doc) = api.get("/api/openapi.json").await;
    assert_eq!(status, 200);
    assert!(
        doc["paths"]["/api/plugins/{name}/rollback"]["post"].is_object(),
        "{doc}"
    );
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_survives_a_restart_without_recompiling() {
    let env = Env::new().await;
    let config = counter_config(&env);
    let hub = env.start(config.clone()).await;
    let api = Api::new(&hub, Some(TOKEN));
    let (status, change) = api.push("counter", read("counter_v2.wasm"), None).await;
    assert_eq!(status, 200, "{change}");
    hub.shutdown().await;

    // Same data and plugin folder: the folder's file is already version 1, so the admin's
    // upload stays active, and every module loads from the artifact cache.
    let hub = env.start(config).await;
    assert_eq!(hub.registry().compiles(), 0, "artifacts were cached");
    let mut counted = env.sub("hub.events.counted").await;
    assert_eq!(tick(&env, &mut counted, "a").await["generation"], 2);
    hub.shutdown().await;
}

/// A hub with no plugins and the admin token, for the API's edges.
async fn bare_hub(env: &Env) -> hub::hub::Hub {
    let mut config = env.config();
    config.plugins.dir = None;
    config.admin_token = Some(TOKEN.into());
    config.limits.max_module_bytes = 1 << 20;
    env.start(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_put_refuses_a_json_array() {
    let env = Env::new().await;
    let hub = bare_hub(&env).await;
    let api = Api::new(&hub, Some(TOKEN));
    let (_, before) = api.get("/api/policies").await;
    assert!(before["max_actions"].is_object(), "{before}");

    for (body, reason) in [
        ("[]", "the body must be a JSON object, not an array"),
        (
            r#"["0s", "1h", null, {}, []]"#,
            "the body must be a JSON object, not an array",
        ),
        ("null", "the body must be a JSON object, not null"),
        (
            r#"{"max_actions": [100, "1s"]}"#,
            "expected struct Limit, found an array",
        ),
        (
            r#"{"suppressions": [["support", ["offer"], "1s"]]}"#,
            "expected struct Suppression, found an array",
        ),
    ] {
        let (status, answer) = api.put_json("/api/policies", body).await;
        assert_eq!(status, 422, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(reason), "{body}: {answer}");
    }
    assert_eq!(api.get("/api/policies").await.1, before, "the limits stay in force");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_put_refuses_windows_too_long_naming_the_field() {
    let env = Env::new().await;
    let hub = bare_hub(&env).await;
    let api = Api::new(&hub, Some(TOKEN));
    let (_, before) = api.get("/api/policies").await;
    for (body, field) in [
        (
            r#"{"dedup_window": "300000000years"}"#,
            "dedup_window: at most 100years",
        ),
        (
            r#"{"conflict_window": "101years"}"#,
            "conflict_window: at most 100years",
        ),
        (
            r#"{"max_actions": {"count": 1, "window": "200years"}}"#,
            "max_actions.window: at most 100years",
        ),
        (
            r#"{"suppressions": [{"by": "support", "suppress": ["offer"], "for": "300000000years"}]}"#,
            "suppressions[0].for: at most 100years",
        ),
    ] {
        let (status, answer) = api.put_json("/api/policies", body).await;
        assert_eq!(status, 422, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(field), "{body}: {answer}");
    }
    assert_eq!(api.get("/api/policies").await.1, before);
    let (status, answer) = api.put_json("/api/policies", r#"{"dedup_window": "100years"}"#).await;
    assert_eq!((status, &answer["dedup_window"]), (200, &json!("100years")), "{answer}");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive() {
    let env = Env::new().await;
    let hub = bare_hub(&env).await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/api/policies", hub.http_addr());
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let response = http
            .get(&url)
            .header("authorization", format!("{scheme} {TOKEN}"))
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status(), 200, "{scheme}");
    }
    let response = http
        .get(&url)
        .header("authorization", "bearer wrong")
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 401);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_answer_is_json() {
    let env = Env::new().await;
    let hub = bare_hub(&env).await;
    // A fresh connection per request: the server closes the one a refused upload came on.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let base = format!("http://{}", hub.http_addr());
    let too_large = vec![b' '; 3 << 20];
    let cases = [
        (
            http.put(format!("{base}/api/policies")).body(too_large),
            413,
            "length limit exceeded",
        ),
        (http.get(format!("{base}/api/nope")), 404, "no such path: /api/nope"),
        (http.get(format!("{base}/nope")), 404, "no such path: /nope"),
        (http.patch(format!("{base}/api/policies")), 405, "Method Not Allowed"),
        (http.post(format!("{base}/healthz")), 405, "Method Not Allowed"),
    ];
    for (request, status, reason) in cases {
        let response = request.bearer_auth(TOKEN).send().await.expect("answer");
        assert_eq!(response.status(), status, "{reason}");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert_eq!(content_type, "application/json", "{reason}");
        let body: Value = response.json().await.expect("a JSON body");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(reason), "{status}: {body}");
    }
    hub.shutdown().await;
}
