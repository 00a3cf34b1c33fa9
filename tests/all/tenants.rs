//! Tenants: the same actor id in two tenants is two actors (state, ledgers, profiles), an input
//! names its tenant in its envelope, a `Hub-Tenant` header or through an ingest rule, actions
//! say whose they are, and an undeclared tenant is dead-lettered.

use crate::support::{Api, Env, header, json, metric, next, nothing};
use serde_json::json;

/// Declare tenants acme and globex, each with its own token `<name>-t` if `tokens`.
fn declare(config: &mut hub::config::Config, tokens: bool) {
    for tenant in ["acme", "globex"] {
        let token = tokens.then(|| format!("{tenant}-t"));
        config.tenants.insert(
            tenant.into(),
            hub::tenant::TenantConfig {
                token,
                ..Default::default()
            },
        );
    }
}

/// A configuration with the admin token `admin-t` and tenants acme and globex, each with its
/// own token (`acme-t`, `globex-t`).
pub(crate) fn with_tokens(env: &Env) -> hub::config::Config {
    let mut config = env.config();
    config.admin_token = Some("admin-t".into());
    declare(&mut config, true);
    config
}

/// Publish `body` on `subject` with a `Hub-Tenant` header naming `tenant`.
async fn send_in_tenant(env: &Env, subject: &str, tenant: &str, body: &[u8]) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Hub-Tenant", tenant);
    env.client
        .publish_with_headers(subject.to_owned(), headers, body.to_vec().into())
        .await
        .expect("publish");
}

/// A payment failure of `actor`, naming `tenant` in its envelope if given.
fn failure(actor: &str, tenant: Option<&str>) -> String {
    let mut body = json!({"kind": "payment.failed", "actor": actor, "payload": {"amount": 20}});
    if let Some(tenant) = tenant {
        body["tenant"] = json!(tenant);
    }
    body.to_string()
}

/// Publish a payment failure of `actor`, in `tenant` by its envelope's field.
async fn fail_payment(env: &Env, actor: &str, tenant: Option<&str>) {
    env.send_raw("events.payment.failed", failure(actor, tenant).as_bytes())
        .await;
}

/// A configuration with tenant `acme` declared, payment-trouble calling back at the third
/// failure.
fn acme_config(env: &Env) -> hub::config::Config {
    let mut config = env.config();
    config.tenants.insert("acme".into(), Default::default());
    config
        .plugins
        .config
        .insert("payment-trouble".into(), json!({"threshold": 3}));
    config
}

/// `tenant`'s own subject standing for `events.payment.failed`.
fn own_subject(tenant: &str) -> String {
    format!("tenant.{tenant}.events.payment.failed")
}

/// Publish a payment failure of `actor` on `subject`, the envelope naming no tenant.
async fn fail_payment_on(env: &Env, subject: &str, actor: &str) {
    env.send_raw(subject, failure(actor, None).as_bytes()).await;
}

/// Two failures of alice in the default tenant and two on acme's own subject bring no callback
/// (three are needed, so none comes unless the two alices were one actor); acme's third does:
/// the callback, checked to be acme's alice's.
async fn alice_of_acme_is_called_back_on_its_own_subject(
    env: &Env,
    callbacks: &mut async_nats::Subscriber,
) -> async_nats::Message {
    let acme = own_subject("acme");
    for subject in ["events.payment.failed", &acme, "events.payment.failed", &acme] {
        fail_payment_on(env, subject, "alice").await;
    }
    nothing(callbacks, "a callback for two failures in each tenant", 500).await;
    fail_payment_on(env, &acme, "alice").await;
    let msg = next(callbacks, "acme's callback", 5).await;
    let action = json(&msg);
    assert_eq!(
        (action["actor"].as_str(), action["tenant"].as_str()),
        (Some("alice"), Some("acme")),
        "{action}"
    );
    msg
}

/// payment-trouble's failures held for `actor` (in the tenant `query` names, "" for the
/// default tenant) and the length of its ledger, once they are `expected` (waits up to 5 s):
/// what was seen last.
async fn failures_and_ledger(api: &Api, actor: &str, query: &str, expected: (usize, usize)) -> (usize, usize) {
    let mut seen = (usize::MAX, usize::MAX);
    for _ in 0..100 {
        let (status, view) = api.get(&format!("/api/actors/{actor}{query}")).await;
        assert_eq!(status, 200, "{view}");
        let failures = view["state"]["payment-trouble"]["failures"]
            .as_array()
            .map_or(0, Vec::len);
        seen = (failures, view["actions"].as_array().map_or(0, Vec::len));
        if seen == expected {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_actor_id_in_two_tenants_is_two_actors_and_an_undeclared_tenant_is_dead_lettered() {
    let env = Env::new().await;
    let mut config = env.config();
    config.admin_token = Some("t".into());
    declare(&mut config, false);
    // A legacy system's subjects name the client: `clients.<tenant>.payment`.
    config.ingest.push(hub::config::IngestRule {
        subject: "clients.*.payment".into(),
        kind: "payment.failed".into(),
        actor_header: None,
        actor_pointer: Some("/customer".into()),
        id_header: None,
        id_pointer: None,
        time_pointer: None,
        tenant: Some("{2}".into()),
    });
    let hub = env.start(config).await;
    let api = Api::new(&hub, Some("t"));
    let mut callbacks = env.sub("hub.actions.support.callback").await;
    let mut dlq = env.sub("hub.dlq.>").await;

    // Two failures of u1 in the default tenant and two of u1 in acme: three are needed for a
    // callback, so none comes unless the tenants' u1 were one actor.
    for tenant in [None, Some("acme"), None, Some("acme")] {
        fail_payment(&env, "u1", tenant).await;
    }
    nothing(&mut callbacks, "a callback for two failures in each tenant", 500).await;

    // The third of acme's, named by a header this time.
    let body = json!({"kind": "payment.failed", "actor": "u1", "payload": {"amount": 20}});
    send_in_tenant(&env, "events.payment.failed", "acme", body.to_string().as_bytes()).await;
    let msg = next(&mut callbacks, "acme's callback", 5).await;
    let action = json(&msg);
    assert_eq!(
        (action["actor"].as_str(), action["tenant"].as_str()),
        (Some("u1"), Some("acme")),
        "{action}"
    );
    assert_eq!(
        (header(&msg, "Hub-Actor"), header(&msg, "Hub-Tenant")),
        ("u1".into(), "acme".into())
    );

    // The default tenant's u1 is called back at its own third failure, with no tenant named.
    fail_payment(&env, "u1", None).await;
    let action = json(&next(&mut callbacks, "the default tenant's callback", 5).await);
    assert_eq!(action["actor"], "u1", "{action}");
    assert!(action.get("tenant").is_none(), "{action}");

    // An ingest rule takes the tenant from the subject.
    for _ in 0..3 {
        env.send_raw("clients.globex.payment", br#"{"customer": "u1"}"#).await;
    }
    let action = json(&next(&mut callbacks, "globex's callback", 5).await);
    assert_eq!(
        (action["actor"].as_str(), action["tenant"].as_str()),
        (Some("u1"), Some("globex")),
        "{action}"
    );

    // An undeclared tenant, from any source, is dead-lettered saying so; two tenants too.
    fail_payment(&env, "u1", Some("initech")).await;
    env.send_raw("clients.initech.payment", br#"{"customer": "u1"}"#).await;
    for what in ["an envelope's undeclared tenant", "a subject's undeclared tenant"] {
        let letter = next(&mut dlq, what, 5).await;
        assert_eq!(letter.subject.as_str(), "hub.dlq.invalid");
        let reason = header(&letter, "Hub-Dlq-Reason");
        assert!(reason.contains("unknown tenant \"initech\""), "{reason}");
    }
    let body = json!({"kind": "payment.failed", "actor": "u1", "tenant": "acme"});
    send_in_tenant(&env, "events.payment.failed", "globex", body.to_string().as_bytes()).await;
    let reason = header(&next(&mut dlq, "two tenants", 5).await, "Hub-Dlq-Reason");
    assert!(reason.contains("two tenants"), "{reason}");

    // Profiles: `profiles.<actor>` with a Hub-Tenant header, and the API with `?tenant=`.
    send_in_tenant(&env, "profiles.u1", "globex", br#"{"name": "Gloria"}"#).await;
    let (status, _) = api
        .request_raw_patch("/api/actors/u1/profile?tenant=acme", br#"{"name": "Ann"}"#)
        .await;
    assert_eq!(status, 200);
    let mut views = Vec::new();
    for tenant in ["", "?tenant=acme", "?tenant=globex"] {
        let mut view = json!(null);
        for _ in 0..50 {
            let (status, v) = api.get(&format!("/api/actors/u1{tenant}")).await;
            assert_eq!(status, 200, "{v}");
            view = v;
            if tenant != "?tenant=globex" || view["profile"].is_object() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        views.push(view);
    }
    let [default, acme, globex] = [&views[0], &views[1], &views[2]];
    assert_eq!(default["profile"], json!(null), "{default}");
    assert_eq!(acme["profile"], json!({"name": "Ann"}), "{acme}");
    assert_eq!(globex["profile"], json!({"name": "Gloria"}), "{globex}");
    assert_eq!(acme["tenant"], "acme", "{acme}");
    for view in [default, acme, globex] {
        let ledger = view["actions"].as_array().cloned().unwrap_or_default();
        assert_eq!(ledger.len(), 1, "one callback in each tenant's ledger: {view}");
    }
    let (status, refused) = api.get("/api/actors/u1?tenant=initech").await;
    assert_eq!(status, 400, "{refused}");

    // Erasing acme's u1 leaves the others' alone.
    let (status, erased) = api.delete("/api/actors/u1?tenant=acme").await;
    assert_eq!(status, 200, "{erased}");
    let (_, acme) = api.get("/api/actors/u1?tenant=acme").await;
    assert_eq!(
        (acme["profile"].clone(), acme["actions"].clone()),
        (json!(null), json!([])),
        "{acme}"
    );
    let (_, default) = api.get("/api/actors/u1").await;
    assert_eq!(default["actions"].as_array().map(Vec::len), Some(1), "{default}");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_loaded_for_named_tenants_takes_only_their_events_with_its_own_config() {
    let env = Env::new().await;
    let mut config = env.config();
    config.admin_token = Some("t".into());
    declare(&mut config, false);
    let hub = env.start(config).await;
    let api = Api::new(&hub, Some("t"));
    let mut callbacks = env.sub("hub.actions.support.callback").await;
    let wasm = crate::support::payment_trouble_wasm();

    // acme's own copy of the scenario calls back at the first failure.
    let query = [("tenants", "acme"), ("config", r#"{"threshold": 1}"#)];
    let (status, change) = api.push_query("acme-trouble", wasm.clone(), &query).await;
    assert_eq!(status, 200, "{change}");
    let (_, listed) = api.get("/api/plugins/acme-trouble").await;
    assert_eq!(listed["tenants"], json!(["acme"]), "{listed}");
    for (query, refused) in [("initech", "unknown tenant"), ("", "at least one tenant")] {
        let (status, body) = api.push_query("x", wasm.clone(), &[("tenants", query)]).await;
        assert_eq!(status, 400, "{body}");
        assert!(body.to_string().contains(refused), "{body}");
    }

    fail_payment(&env, "u1", Some("acme")).await;
    let action = json(&next(&mut callbacks, "acme's own plugin's callback", 5).await);
    assert_eq!(
        (action["plugin"].as_str(), action["tenant"].as_str()),
        (Some("acme-trouble"), Some("acme")),
        "{action}"
    );
    // The default tenant and globex are not acme's: one failure calls nobody back.
    fail_payment(&env, "u1", None).await;
    fail_payment(&env, "u1", Some("globex")).await;
    nothing(&mut callbacks, "a callback from acme's plugin for another tenant", 500).await;

    // Moved to globex in one switch: now globex's first failure is called back, acme's not.
    let (status, change) = api
        .put_json("/api/plugins/acme-trouble/tenants", r#"{"tenants": ["globex"]}"#)
        .await;
    assert_eq!(status, 200, "{change}");
    fail_payment(&env, "u2", Some("acme")).await;
    fail_payment(&env, "u2", Some("globex")).await;
    let action = json(&next(&mut callbacks, "the plugin's callback for globex", 5).await);
    assert_eq!(
        (action["plugin"].as_str(), action["tenant"].as_str()),
        (Some("acme-trouble"), Some("globex")),
        "{action}"
    );
    nothing(&mut callbacks, "a callback for acme after the move", 500).await;
    let (status, refused) = api.put_json("/api/plugins/acme-trouble/tenants", r#"[["acme"]]"#).await;
    assert_eq!(status, 400, "{refused}");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_keep_the_tenant_and_a_replay_brings_it_back_to_the_same_tenant() {
    let env = Env::new().await;
    let mut config = env.config();
    config.tenants.insert("acme".into(), Default::default());
    config
        .plugins
        .config
        .insert("cart-abandonment".into(), json!({"window": "1s"}));
    let hub = env.start(config).await;
    let api = Api::new(&hub, None);
    let mut offers = env.sub("hub.actions.offer.cart_reminder").await;

    // A timer of acme's u1 comes due while its plugin is disabled.
    let body =
        json!({"kind": "cart.updated", "actor": "u1", "tenant": "acme", "payload": crate::support::shoes_cart()});
    env.send_raw("events.cart.updated", body.to_string().as_bytes()).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (status, body) = api.post("/api/plugins/cart-abandonment/disable", "").await;
    assert_eq!(status, 200, "{body}");
    let kept = crate::dead_letters::letters(&api, "disabled", 1).await;
    assert_eq!(
        (kept[0]["actor"].as_str(), kept[0]["tenant"].as_str()),
        (Some("u1"), Some("acme")),
        "{kept:?}"
    );

    // An input refused with a header naming the tenant keeps the header for its replay.
    send_in_tenant(&env, "events.cart.updated", "acme", br#"{"kind": "cart.updated"}"#).await;
    let invalid = crate::dead_letters::letters(&api, "invalid", 1).await;
    assert_eq!(invalid[0]["tenant"], "acme", "{invalid:?}");

    // Replayed, the timer fires for acme's u1, not for the default tenant's.
    let (status, body) = api.post("/api/plugins/cart-abandonment/enable", "").await;
    assert_eq!(status, 200, "{body}");
    let (status, done) = api.post("/api/dead-letters/replay?reason=disabled", "").await;
    assert_eq!((status, done["replayed"].as_u64()), (200, Some(1)), "{done}");
    let offer = json(&next(&mut offers, "the replayed timer's offer", 10).await);
    assert_eq!(
        (offer["actor"].as_str(), offer["tenant"].as_str()),
        (Some("u1"), Some("acme")),
        "{offer}"
    );
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_token_reaches_its_own_actors_plugins_and_dead_letters_and_nothing_else() {
    let env = Env::new().await;
    let hub = env.start(with_tokens(&env)).await;
    let admin = Api::new(&hub, Some("admin-t"));
    let acme = Api::new(&hub, Some("acme-t"));
    let globex = Api::new(&hub, Some("globex-t"));
    let wasm = crate::support::payment_trouble_wasm();

    // The platform's calls are the admin's, and another tenant's figures are not acme's.
    for path in [
        "/api/status",
        "/api/cluster",
        "/api/tenants/globex",
        "/api/tenants/default",
    ] {
        let (status, body) = acme.get(path).await;
        assert_eq!(status, 403, "{path}: {body}");
    }
    let (status, body) = admin.get("/api/tenants/nobody").await;
    assert_eq!(status, 400, "an undeclared tenant: {body}");
    assert!(body.to_string().contains("declare it under"), "{body}");
    let (status, _) = Api::new(&hub, Some("nobody")).get("/api/plugins").await;
    assert_eq!(status, 401);

    // Actors: its own tenant's, without naming it; another's is refused.
    let (status, profile) = acme
        .request_raw_patch("/api/actors/u1/profile", br#"{"name": "Ann"}"#)
        .await;
    assert_eq!(status, 200, "{profile}");
    let (_, seen) = admin.get("/api/actors/u1?tenant=acme").await;
    assert_eq!(seen["profile"], json!({"name": "Ann"}), "{seen}");
    let (_, theirs) = globex.get("/api/actors/u1").await;
    assert_eq!(theirs["profile"], json!(null), "{theirs}");
    let (status, body) = acme.get("/api/actors/u1?tenant=globex").await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = acme.delete("/api/actors/u1?tenant=globex").await;
    assert_eq!(status, 403, "{body}");

    // Plugins: it loads its own (for itself alone) and sees and changes only those.
    let (status, body) = acme.get("/api/plugins").await;
    assert_eq!(
        (status, body),
        (200, json!([])),
        "the examples run for every tenant: the platform's"
    );
    let (status, change) = acme
        .push("acme-trouble", wasm.clone(), Some(r#"{"threshold": 1}"#))
        .await;
    assert_eq!(status, 200, "{change}");
    let (_, listed) = admin.get("/api/plugins/acme-trouble").await;
    assert_eq!(listed["tenants"], json!(["acme"]), "{listed}");
    let (_, own) = acme.get("/api/plugins").await;
    assert_eq!(own.as_array().map(|l| l.len()), Some(1), "{own}");
    for (status, body) in [
        globex.get("/api/plugins/acme-trouble").await,
        globex
            .put_json("/api/plugins/acme-trouble/config", r#"{"threshold": 2}"#)
            .await,
        globex.delete("/api/plugins/acme-trouble").await,
        acme.put_json("/api/plugins/payment-trouble/config", r#"{"threshold": 1}"#)
            .await,
        acme.post("/api/plugins/payment-trouble/disable", "").await,
    ] {
        assert_eq!(status, 404, "{body}");
    }
    let (status, body) = globex.push("acme-trouble", wasm.clone(), None).await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = acme.push_query("mine", wasm.clone(), &[("tenants", "globex")]).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = acme
        .put_json("/api/plugins/acme-trouble/tenants", r#"{"tenants": null}"#)
        .await;
    assert_eq!(status, 403, "{body}");

    // Dead letters: its own only.
    send_in_tenant(&env, "events.payment.failed", "acme", br#"{"kind": "payment.failed"}"#).await;
    let kept = crate::dead_letters::letters(&admin, "invalid", 1).await;
    let seq = kept[0]["seq"].as_u64().expect("seq");
    let (_, mine) = acme.get("/api/dead-letters").await;
    assert_eq!(mine["letters"].as_array().map(Vec::len), Some(1), "{mine}");
    let (_, none) = globex.get("/api/dead-letters").await;
    assert_eq!(
        (none["letters"].clone(), none["by_reason"].clone()),
        (json!([]), json!({})),
        "{none}"
    );
    let (status, body) = globex.get(&format!("/api/dead-letters/{seq}")).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = globex.post(&format!("/api/dead-letters/{seq}/replay"), "").await;
    assert_eq!(status, 404, "{body}");
    let (status, done) = globex.post("/api/dead-letters/replay?reason=invalid", "").await;
    assert_eq!((status, done["replayed"].as_u64()), (200, Some(0)), "{done}");
    let (status, body) = acme.get(&format!("/api/dead-letters/{seq}")).await;
    assert_eq!(status, 200, "{body}");
    hub.shutdown().await;
}

/// The decision acme's, globex's and the default tenant's `actor` got for their callback.
async fn callback_decisions(admin: &Api, actor: &str) -> Vec<String> {
    let mut decisions = Vec::new();
    for query in ["?tenant=acme", "?tenant=globex", ""] {
        let mut decision = String::new();
        for _ in 0..100 {
            let (_, view) = admin.get(&format!("/api/actors/{actor}{query}")).await;
            if let Some(d) = view["actions"][0]["decision"].as_str() {
                decision = d.to_owned();
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        decisions.push(decision);
    }
    decisions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_own_contact_policies_judge_its_actors_and_no_one_elses() {
    let env = Env::new().await;
    let hub = env.start(with_tokens(&env)).await;
    let admin = Api::new(&hub, Some("admin-t"));
    let acme = Api::new(&hub, Some("acme-t"));
    let hubs = admin.get("/api/policies").await;

    // acme holds its support actions back for ten minutes; its token need not name it.
    let (status, set) = acme
        .put_json(
            "/api/policies",
            r#"{"categories": {"support": {"priority": 1, "hold": "10m"}}}"#,
        )
        .await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(acme.get("/api/policies").await, (200, set.clone()));
    assert_eq!(admin.get("/api/policies?tenant=acme").await, (200, set));
    assert_eq!(admin.get("/api/policies").await, hubs, "the hub's stay");
    assert_eq!(
        admin.get("/api/policies?tenant=globex").await,
        hubs,
        "globex has none of its own"
    );
    for (status, body) in [
        acme.get("/api/policies?tenant=globex").await,
        acme.put_json("/api/policies?tenant=globex", "{}").await,
        acme.delete("/api/policies?tenant=globex").await,
    ] {
        assert_eq!(status, 403, "{body}");
    }
    let (status, body) = acme
        .put_json("/api/policies", r#"{"categories": {"support": {"hold": "2h"}}}"#)
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = admin.delete("/api/policies").await;
    assert_eq!(status, 400, "the hub's are replaced, not deleted: {body}");

    for subject in [
        own_subject("acme"),
        own_subject("globex"),
        "events.payment.failed".to_owned(),
    ] {
        for _ in 0..3 {
            fail_payment_on(&env, &subject, "carol").await;
        }
    }
    assert_eq!(
        callback_decisions(&admin, "carol").await,
        ["held", "delivered", "delivered"]
    );

    // Back to the hub's: acme's next callback goes out.
    let (status, back) = acme.delete("/api/policies").await;
    assert_eq!((status, back), hubs);
    for _ in 0..3 {
        fail_payment_on(&env, &own_subject("acme"), "dave").await;
    }
    assert_eq!(callback_decisions(&admin, "dave").await[0], "delivered");
    hub.shutdown().await;
}

/// `hub` with `args`: whether it succeeded, and its stdout and stderr.
async fn hub_cli(args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_hub"))
        .args(args)
        .output()
        .await
        .expect("hub runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_send_and_hub_status_with_a_tenant_use_its_own_subjects_and_its_own_token() {
    let env = Env::new().await;
    let hub = env.start(with_tokens(&env)).await;
    let admin = Api::new(&hub, Some("admin-t"));
    let nats = env.nats.url.as_str();
    let api = format!("http://{}", hub.http_addr());

    for _ in 0..3 {
        let (sent, text) = hub_cli(&[
            "send",
            "payment.failed",
            "--actor",
            "bob",
            "--tenant",
            "acme",
            "--nats",
            nats,
        ])
        .await;
        assert!(sent, "{text}");
        assert!(text.contains("tenant.acme.events.payment.failed"), "{text}");
    }
    assert_eq!(failures_and_ledger(&admin, "bob", "?tenant=acme", (0, 1)).await, (0, 1));
    assert_eq!(failures_and_ledger(&admin, "bob", "", (0, 0)).await, (0, 0));
    let (sent, text) = hub_cli(&[
        "send",
        "payment.failed",
        "--actor",
        "bob",
        "--tenant",
        "Acme Inc",
        "--nats",
        nats,
    ])
    .await;
    assert!(!sent && text.contains("lowercase"), "{text}");

    // Its own line, by its own token (the first figures are taken a second after the start).
    let mut shown = (false, String::new());
    for _ in 0..50 {
        shown = hub_cli(&["status", "--tenant", "acme", "--api", &api, "--token", "acme-t"]).await;
        if shown.0 && shown.1.contains("acme") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(shown.0 && shown.1.contains("acme"), "{}", shown.1);
    let (seen, text) = hub_cli(&["status", "--tenant", "globex", "--api", &api, "--token", "acme-t"]).await;
    assert!(!seen && text.contains("403"), "{text}");
    hub.shutdown().await;
}

/// The actors of an export (JSON lines; a single line reads as one object, none as "").
fn exported(body: &serde_json::Value) -> Vec<serde_json::Value> {
    match body {
        serde_json::Value::String(text) => text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect(),
        object => vec![object.clone()],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_is_exported_and_erased_as_a_whole_and_the_others_keep_theirs() {
    let env = Env::new().await;
    let mut config = with_tokens(&env);
    config
        .plugins
        .config
        .insert("cart-abandonment".into(), json!({"window": "1h"}));
    let hub = env.start(config).await;
    let admin = Api::new(&hub, Some("admin-t"));
    let acme = Api::new(&hub, Some("acme-t"));
    let wasm = crate::support::payment_trouble_wasm();
    let (status, change) = admin.push_query("acme-trouble", wasm, &[("tenants", "acme")]).await;
    assert_eq!(status, 200, "{change}");
    let (status, set) = acme.put_json("/api/policies", r#"{"conflict_window": "5s"}"#).await;
    assert_eq!(status, 200, "{set}");

    // acme: state for u1 and u2, a profile for u3, a pending timer for u4, a dead letter. The
    // default tenant's and globex's u1 have state too.
    for (actor, tenant) in [
        ("u1", Some("acme")),
        ("u2", Some("acme")),
        ("u1", None),
        ("u1", Some("globex")),
    ] {
        fail_payment(&env, actor, tenant).await;
    }
    let (status, _) = acme
        .request_raw_patch("/api/actors/u3/profile", br#"{"name": "Ann"}"#)
        .await;
    assert_eq!(status, 200);
    let cart =
        json!({"kind": "cart.updated", "actor": "u4", "tenant": "acme", "payload": crate::support::shoes_cart()});
    env.send_raw("events.cart.updated", cart.to_string().as_bytes()).await;
    send_in_tenant(&env, "events.payment.failed", "acme", br#"{"kind": "payment.failed"}"#).await;
    crate::dead_letters::letters(&admin, "invalid", 1).await;

    // Its own token exports it; each actor once, with what the hub holds.
    let mut lines = Vec::new();
    for _ in 0..50 {
        let (status, body) = acme.get("/api/tenants/acme/export").await;
        assert_eq!(status, 200, "{body}");
        lines = exported(&body);
        if lines.len() == 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let actors: Vec<&str> = lines.iter().filter_map(|l| l["actor"].as_str()).collect();
    assert_eq!(actors, ["u1", "u2", "u3", "u4"], "{lines:?}");
    assert!(lines.iter().all(|l| l["tenant"] == "acme"), "{lines:?}");
    assert!(lines[0]["state"]["payment-trouble"].is_object(), "{lines:?}");
    assert_eq!(lines[2]["profile"], json!({"name": "Ann"}), "{lines:?}");
    assert_eq!(lines[3]["timers"].as_array().map(Vec::len), Some(1), "{lines:?}");
    for (status, body) in [
        acme.get("/api/tenants/globex/export").await,
        acme.delete("/api/tenants/acme").await,
    ] {
        assert_eq!(status, 403, "{body}");
    }
    let (status, body) = admin.delete("/api/tenants/default").await;
    assert_eq!(status, 400, "{body}");

    // Erased: its actors, its dead letter, its own plugin and policies; nobody else's.
    let (status, erased) = admin.delete("/api/tenants/acme").await;
    assert_eq!(status, 200, "{erased}");
    assert_eq!(
        (
            erased["actors"].as_u64(),
            erased["profiles"].as_u64(),
            erased["timers"].as_u64(),
            erased["dead_letters"].as_u64()
        ),
        (Some(4), Some(1), Some(1), Some(1)),
        "{erased}"
    );
    assert_eq!(erased["plugins"], json!(["acme-trouble"]), "{erased}");
    assert_eq!(erased["policies"], true, "{erased}");
    assert_eq!(
        admin.get("/api/policies?tenant=acme").await,
        admin.get("/api/policies").await,
        "acme is judged by the hub's policies again"
    );
    let (_, body) = acme.get("/api/tenants/acme/export").await;
    assert_eq!(body, json!(""), "nothing left of acme");
    let (status, _) = admin.get("/api/plugins/acme-trouble").await;
    assert_eq!(status, 404);
    for path in ["/api/actors/u1", "/api/actors/u1?tenant=globex"] {
        let (_, view) = admin.get(path).await;
        assert!(view["state"]["payment-trouble"].is_object(), "{path}: {view}");
    }
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_on_a_tenants_own_subjects_are_its_own_and_applied_once_across_a_restart() {
    let env = Env::new().await;
    let js = async_nats::jetstream::new(env.client.clone());
    let mut config = acme_config(&env);
    // A second callback of acme's alice is delivered, not suppressed as a duplicate: so an input
    // applied twice would show as a callback.
    config.policies.dedup_window = std::time::Duration::ZERO;
    let hub = env.start(config.clone()).await;
    let api = Api::new(&hub, None);
    let mut callbacks = env.sub("hub.actions.support.callback").await;

    let msg = alice_of_acme_is_called_back_on_its_own_subject(&env, &mut callbacks).await;
    let action = json(&msg);
    let acme = own_subject("acme");
    let acme = acme.as_str();
    assert_eq!(action["payload"]["failures"], 3, "{action}");
    assert_eq!(
        (header(&msg, "Hub-Actor"), header(&msg, "Hub-Tenant")),
        ("alice".into(), "acme".into())
    );
    // The default tenant's alice saw none of acme's: two failures of its own, nobody called.
    let default = failures_and_ledger(&api, "alice", "", (2, 0)).await;
    assert_eq!(default, (2, 0), "the default tenant's alice: (failures, actions)");

    // Two more of acme's: held in its state across the restart.
    for _ in 0..2 {
        fail_payment_on(&env, acme, "alice").await;
    }
    let before = failures_and_ledger(&api, "alice", "?tenant=acme", (2, 1)).await;
    assert_eq!(before, (2, 1), "acme's alice before the restart: (failures, actions)");

    // acme's inputs are in its own stream, on its own subjects; the input stream has only the
    // default tenant's.
    let mut own = js.get_stream("HUB_INPUT_acme").await.expect("acme's own stream");
    let info = own.info().await.expect("info").clone();
    assert_eq!(info.state.messages, 5, "acme's five inputs: {:?}", info.state);
    assert!(
        info.config.subjects.contains(&"tenant.acme.events.>".to_owned()),
        "{:?}",
        info.config.subjects
    );
    let mut input = js.get_stream("HUB_INPUT").await.expect("the input stream");
    let messages = input.info().await.expect("info").state.messages;
    assert_eq!(messages, 2, "the default tenant's two inputs only");

    // Stopped and started again on the same data and server: nothing applied again (two more
    // failures would call alice back), the two failures carried over.
    hub.shutdown().await;
    let hub = env.start(config).await;
    let api = Api::new(&hub, None);
    nothing(
        &mut callbacks,
        "a callback after the restart from inputs applied again",
        1000,
    )
    .await;
    let after = failures_and_ledger(&api, "alice", "?tenant=acme", (2, 1)).await;
    assert_eq!(after, (2, 1), "acme's alice after the restart: (failures, actions)");

    // The next failure is the third.
    fail_payment_on(&env, acme, "alice").await;
    let msg = next(&mut callbacks, "acme's callback after the restart", 5).await;
    let action = json(&msg);
    assert_eq!(
        (action["actor"].as_str(), action["tenant"].as_str()),
        (Some("alice"), Some("acme")),
        "{action}"
    );
    assert_eq!(action["payload"]["failures"], 3, "{action}");
    assert_eq!(header(&msg, "Hub-Tenant"), "acme");
    nothing(&mut callbacks, "a second callback after the restart", 500).await;
    let default = failures_and_ledger(&api, "alice", "", (2, 0)).await;
    assert_eq!(default, (2, 0), "the default tenant's alice after the restart");
    let messages = own.info().await.expect("info").state.messages;
    assert_eq!(messages, 6, "acme's six inputs in its own stream");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_on_a_tenants_subject_naming_another_tenant_is_dead_lettered() {
    let env = Env::new().await;
    let mut config = env.config();
    declare(&mut config, false);
    let hub = env.start(config).await;
    let mut callbacks = env.sub("hub.actions.support.callback").await;
    let mut dlq = env.sub("hub.dlq.>").await;

    // On acme's subject, with a header naming globex.
    let body = json!({"kind": "payment.failed", "actor": "u1", "payload": {"amount": 20}});
    send_in_tenant(&env, &own_subject("acme"), "globex", body.to_string().as_bytes()).await;
    let letter = next(&mut dlq, "an input naming two tenants", 5).await;
    assert_eq!(letter.subject.as_str(), "hub.dlq.invalid");
    let reason = header(&letter, "Hub-Dlq-Reason");
    assert!(reason.contains("two tenants"), "{reason}");
    assert_eq!(header(&letter, "Hub-Dlq-Subject"), own_subject("acme"));

    // On the subject of a tenant nobody declared: no stream takes it, so a producer that
    // publishes with JetStream acknowledgements is told at once.
    let js = async_nats::jetstream::new(env.client.clone());
    let body = json!({"kind": "payment.failed", "actor": "u1"}).to_string();
    let refused = match js.publish(own_subject("nobody"), body.into()).await {
        Ok(ack) => ack.await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a publish on an undeclared tenant's subject was stored");
    nothing(&mut callbacks, "a callback for a refused input", 200).await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_mode_takes_inputs_on_tenants_own_subjects() {
    let env = Env::new().await;
    let mut config = acme_config(&env);
    config.input.mode = hub::config::InputMode::Core;
    let hub = env.start(config).await;
    let mut callbacks = env.sub("hub.actions.support.callback").await;
    let msg = alice_of_acme_is_called_back_on_its_own_subject(&env, &mut callbacks).await;
    assert_eq!(header(&msg, "Hub-Tenant"), "acme");

    // An undeclared tenant's subject is dead-lettered saying so.
    let mut dlq = env.sub("hub.dlq.>").await;
    fail_payment_on(&env, &own_subject("nobody"), "alice").await;
    let letter = next(&mut dlq, "an input on an undeclared tenant's subject", 5).await;
    assert_eq!(letter.subject.as_str(), "hub.dlq.invalid");
    let reason = header(&letter, "Hub-Dlq-Reason");
    assert!(reason.contains("unknown tenant \"nobody\""), "{reason}");
    let named = letter.headers.as_ref().and_then(|h| h.get("Hub-Tenant"));
    assert!(named.is_none(), "a letter of an undeclared tenant names it: {named:?}");

    // One that cannot be read on acme's own subjects is acme's dead letter all the same.
    env.send_raw(&own_subject("acme"), b"{not json").await;
    let letter = next(&mut dlq, "an unreadable input on acme's own subject", 5).await;
    assert_eq!(letter.subject.as_str(), "hub.dlq.undecodable");
    assert_eq!(header(&letter, "Hub-Tenant"), "acme");
    hub.shutdown().await;
}

/// Core mode has no stream to keep a tenant's inputs past its `rate` waiting in: they are
/// dead-lettered as `quota`, that tenant's (named by the envelope alone), kept and counted,
/// while another tenant's inputs go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_mode_dead_letters_a_tenants_inputs_past_its_rate_and_lets_the_others_through() {
    let env = Env::new().await;
    let mut config = acme_config(&env);
    config.input.mode = hub::config::InputMode::Core;
    // A name of its own: tests share the process's metrics.
    let corerate = hub::tenant::TenantConfig {
        rate: Some(2),
        ..Default::default()
    };
    config.tenants.insert("corerate".into(), corerate);
    let hub = env.start(config).await;
    let api = Api::new(&hub, None);
    let mut callbacks = env.sub("hub.actions.support.callback").await;

    // Eight at once: two fit in its second's worth. Then acme's three, on the same subscription.
    for n in 0..8 {
        fail_payment(&env, &format!("r{n}"), Some("corerate")).await;
    }
    for _ in 0..3 {
        fail_payment(&env, "alice", Some("acme")).await;
    }
    let callback = json(&next(&mut callbacks, "acme's callback", 5).await);
    assert_eq!(callback["tenant"], "acme", "{callback}");

    let line = tenant_status(&api, "corerate", |line| {
        line["events_in"].as_u64().zip(line["quota_refusals"].as_u64()) == Some((8 - refusals(line), refusals(line)))
    })
    .await;
    let refused = refusals(&line);
    assert!((5..=6).contains(&refused), "two at least fit, at most a third: {line}");
    let letters = crate::dead_letters::letters(&api, "quota", refused as usize).await;
    assert_eq!(letters.len() as u64, refused, "{letters:?}");
    for letter in &letters {
        assert_eq!(letter["tenant"], "corerate", "{letter}");
        assert!(letter.to_string().contains("past its rate of 2 inputs/s"), "{letter}");
    }

    // A second later, replayed: as they came, each through the rate again.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, done) = api.post("/api/dead-letters/replay?reason=quota", "").await;
    assert_eq!((status, done["replayed"].as_u64()), (200, Some(refused)), "{done}");
    let line = tenant_status(&api, "corerate", |line| {
        line["events_in"].as_u64().map(|n| n + refusals(line)) == Some(8 + refused)
    })
    .await;
    assert!(
        line["events_in"].as_u64() >= Some(8 - refused + 2),
        "two more fit in the second since: {line}"
    );
    hub.shutdown().await;
}

fn refusals(line: &serde_json::Value) -> u64 {
    line["quota_refusals"].as_u64().unwrap_or_default()
}

/// `tenant`'s figures (`GET /api/tenants/{tenant}`, its line of the status) once `ready` holds
/// (the status is sampled once a second), or as they are after 15 s (a loaded machine samples late).
async fn tenant_status(api: &Api, tenant: &str, ready: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let mut line = json!(null);
    for _ in 0..150 {
        let (status, body) = api.get(&format!("/api/tenants/{tenant}")).await;
        // 503: the hub has not taken its first figures yet.
        if status != 503 {
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["name"], tenant, "{body}");
            line = body;
            if ready(&line) {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_past_its_plugin_quota_is_refused_and_the_status_shows_each_tenant() {
    let env = Env::new().await;
    let mut config = env.config();
    config.admin_token = Some("t".into());
    declare(&mut config, true);
    if let Some(acme) = config.tenants.get_mut("acme") {
        acme.max_plugins = Some(1);
        acme.share = 2;
        acme.rate = Some(500);
    }
    let hub = env.start(config).await;
    let admin = Api::new(&hub, Some("t"));
    let acme = Api::new(&hub, Some("acme-t"));
    let wasm = crate::support::payment_trouble_wasm();

    let (status, change) = acme.push_query("first", wasm.clone(), &[]).await;
    assert_eq!(status, 200, "{change}");
    // A second of acme's own, by its token or by the admin for it: past its quota.
    let (status, refused) = acme.push_query("second", wasm.clone(), &[]).await;
    assert_eq!(status, 409, "{refused}");
    assert!(refused.to_string().contains("max_plugins = 1"), "{refused}");
    let (status, refused) = admin.push_query("second", wasm.clone(), &[("tenants", "acme")]).await;
    assert_eq!(status, 409, "{refused}");
    // Replacing its one plugin is no new plugin; globex has no quota.
    let (status, change) = acme.push_query("first", wasm.clone(), &[]).await;
    assert_eq!(status, 200, "{change}");
    let (status, change) = admin.push_query("second", wasm.clone(), &[("tenants", "globex")]).await;
    assert_eq!(status, 200, "{change}");
    // Nor may a move give acme a second.
    let (status, refused) = admin
        .put_json("/api/plugins/second/tenants", r#"{"tenants": ["acme", "globex"]}"#)
        .await;
    assert_eq!(status, 409, "{refused}");

    fail_payment_on(&env, &own_subject("acme"), "u1").await;
    // Each tenant's line has its limits and refusals: acme's own token sees acme's, the
    // admin's status every tenant's. (Tests share the process's metrics: other tests' acme
    // inputs count too, and their tenants follow the declared ones.)
    let line = tenant_status(&acme, "acme", |line| {
        line["events_in"].as_u64() >= Some(1) && line["quota_refusals"] == 3
    })
    .await;
    let (_, status) = admin.get("/api/status").await;
    let names: Vec<&str> = status["tenants"]
        .as_array()
        .map(|lines| lines.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names.get(..3), Some(&["default", "acme", "globex"][..]), "{status}");
    assert_eq!(
        (&line["plugins"], &line["max_plugins"], &line["quota_refusals"]),
        (&json!(1), &json!(1), &json!(3)),
        "{line}"
    );
    assert_eq!((&line["share"], &line["rate"]), (&json!(2), &json!(500)), "{line}");
    assert!(line["events_in"].as_u64() >= Some(1), "{line}");
    assert!(
        line["backlog"].is_u64(),
        "acme's own stream has a backlog figure: {line}"
    );
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_without_ids_at_the_same_place_of_two_streams_get_ids_of_their_own() {
    let env = Env::new().await;
    let hub = env.start(acme_config(&env)).await;
    let mut callbacks = env.sub("hub.actions.support.callback").await;
    // Three failures each, without ids, at sequences 1 to 3 of the input stream and of acme's.
    for _ in 0..3 {
        fail_payment_on(&env, "events.payment.failed", "bob").await;
        fail_payment_on(&env, &own_subject("acme"), "bob").await;
    }
    let first = next(&mut callbacks, "a callback", 5).await;
    let second = next(&mut callbacks, "the other tenant's callback", 5).await;
    let (a, b) = (json(&first), json(&second));
    let tenants = [a["tenant"].as_str(), b["tenant"].as_str()];
    assert!(tenants.contains(&None) && tenants.contains(&Some("acme")), "{a} {b}");
    assert_ne!(header(&first, "Hub-Cause"), header(&second, "Hub-Cause"));
    // Equal ids would make the action stream keep only one of them.
    assert_ne!(a["id"], b["id"], "{a} {b}");
    hub.shutdown().await;
}

/// An input of `kind` for `actor` in `tenant`, named by its envelope.
async fn send_to_tenant(env: &Env, tenant: &str, kind: &str, actor: &str, payload: serde_json::Value) {
    let body = json!({"kind": kind, "actor": actor, "tenant": tenant, "payload": payload});
    env.send_raw(&format!("events.{kind}"), body.to_string().as_bytes())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_a_tenants_state_or_timer_quota_are_dead_lettered_and_replayed_once_there_is_room() {
    let env = Env::new().await;
    let mut config = env.config();
    // Names of their own: tests share the process's metrics.
    let quotas = [
        ("timerbound", None, Some(2)),
        ("statebound", Some(1), None),
        ("roomy", Some(100_000), None),
    ];
    for (tenant, max_state_bytes, max_timers) in quotas {
        let quota = hub::tenant::TenantConfig {
            max_state_bytes,
            max_timers,
            ..Default::default()
        };
        config.tenants.insert(tenant.into(), quota);
    }
    let hub = env.start(config.clone()).await;
    let api = Api::new(&hub, None);
    let cart = crate::support::shoes_cart();

    // cart-abandonment sets a timer per cart: a third is one past timerbound's two.
    for actor in ["c1", "c2"] {
        send_to_tenant(&env, "timerbound", "cart.updated", actor, cart.clone()).await;
    }
    let line = tenant_status(&api, "timerbound", |line| line["timers"] == 2).await;
    assert_eq!(line["timers"], 2, "{line}");
    send_to_tenant(&env, "timerbound", "cart.updated", "c3", cart.clone()).await;
    let refused = crate::dead_letters::letters(&api, "quota", 1).await;
    assert_eq!(
        (refused[0]["actor"].as_str(), refused[0]["tenant"].as_str()),
        (Some("c3"), Some("timerbound")),
        "{refused:?}"
    );
    assert!(
        refused[0].to_string().contains("[tenants.timerbound] max_timers = 2"),
        "{refused:?}"
    );
    let (_, c3) = api.get("/api/actors/c3?tenant=timerbound").await;
    assert_eq!(c3["timers"], json!([]), "nothing of the refused call stays: {c3}");
    // Another tenant's carts are not limited by it.
    send_to_tenant(&env, "roomy", "cart.updated", "c3", cart.clone()).await;

    // A checkout cancels c1's timer; the replay of c3's cart then fits, once.
    send_to_tenant(
        &env,
        "timerbound",
        "checkout.completed",
        "c1",
        json!({"order_id": "o1"}),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (status, done) = api.post("/api/dead-letters/replay?reason=quota", "").await;
    assert_eq!((status, done["replayed"].as_u64()), (200, Some(1)), "{done}");
    let line = tenant_status(&api, "timerbound", |line| {
        line["timers"] == 2 && line["quota_refusals"].as_u64() >= Some(1)
    })
    .await;
    assert_eq!((&line["timers"], &line["max_timers"]), (&json!(2), &json!(2)), "{line}");
    assert!(line["quota_refusals"].as_u64() >= Some(1), "{line}");
    let (_, c3) = api.get("/api/actors/c3?tenant=timerbound").await;
    assert_eq!(
        c3["timers"].as_array().map(Vec::len),
        Some(1),
        "the replayed cart's timer: {c3}"
    );

    // A payment failure is stored state: none fits in statebound's one byte, and roomy's is
    // counted.
    send_to_tenant(&env, "statebound", "payment.failed", "p1", json!({"amount": 20})).await;
    send_to_tenant(&env, "roomy", "payment.failed", "p1", json!({"amount": 20})).await;
    // (A replayed letter is no longer kept: c3's is gone.)
    let refused = crate::dead_letters::letters(&api, "quota", 1).await;
    assert!(
        refused
            .iter()
            .any(|l| l["tenant"] == "statebound" && l.to_string().contains("max_state_bytes = 1")),
        "{refused:?}"
    );
    let line = tenant_status(&api, "statebound", |line| line["quota_refusals"].as_u64() >= Some(1)).await;
    assert_eq!(
        (&line["state_bytes"], &line["max_state_bytes"]),
        (&json!(0), &json!(1)),
        "{line}"
    );
    let roomy = tenant_status(&api, "roomy", |line| line["state_bytes"].as_u64() > Some(0)).await;
    let stored = roomy["state_bytes"].as_u64().expect("roomy's stored bytes are counted");
    assert!(stored > 0 && stored < 100_000, "{roomy}");

    // Started again on the same data, the counts start from what was stored.
    hub.shutdown().await;
    let hub = env.start(config).await;
    let api = Api::new(&hub, None);
    let line = tenant_status(&api, "timerbound", |line| line["timers"] == 2).await;
    assert_eq!(line["timers"], 2, "timerbound's timers after the restart: {line}");
    let roomy = tenant_status(&api, "roomy", |line| line["state_bytes"].as_u64() == Some(stored)).await;
    assert_eq!(
        roomy["state_bytes"].as_u64(),
        Some(stored),
        "roomy's bytes after the restart: {roomy}"
    );
    // And they keep being enforced: a third cart is still one too many.
    send_to_tenant(&env, "timerbound", "cart.updated", "c4", cart).await;
    let refused = crate::dead_letters::letters(&api, "quota", 2).await;
    assert!(refused.iter().any(|l| l["actor"] == "c4"), "{refused:?}");
    hub.shutdown().await;
}

/// The latency guard: while tenant `guardflood` has a backlog in its own stream and
/// `guardquiet` publishes on its own, the backlog is read under a limit (first the least, while
/// the quiet tenant's unloaded lag is measured) and round trips through nats-server are timed;
/// once the quiet tenant stops, the limit goes
/// and the whole backlog is processed: slowed, nothing dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_read_under_a_limit_while_another_tenant_publishes_and_all_of_it_is_processed() {
    const FLOOD: usize = 30_000;
    let env = Env::new().await;
    let mut config = env.config();
    for tenant in ["guardflood", "guardquiet"] {
        config.tenants.insert(tenant.into(), Default::default());
    }
    let hub = env.start(config).await;
    let http = hub.http_addr();
    let limit = r#"hub_stream_read_limit{stream="HUB_INPUT_guardflood",tenant="guardflood"}"#;
    let flood_in = r#"hub_tenant_events_in_total{tenant="guardflood"}"#;

    // The quiet tenant publishes every 2 ms until told to stop.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let quiet = {
        let client = env.client.clone();
        let subject = own_subject("guardquiet");
        tokio::spawn(async move {
            let mut sent = 0u64;
            while !*stopped.borrow() {
                let body = failure(&format!("q{}", sent / 3), None);
                client.publish(subject.clone(), body.into()).await.expect("publish");
                sent += 1;
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            sent
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // The flood: faster than the hub takes it in, each failure another actor's.
    let subject = own_subject("guardflood");
    for i in 0..FLOOD {
        let body = failure(&format!("f{i}"), None);
        env.client.publish(subject.clone(), body.into()).await.expect("publish");
    }
    env.client.flush().await.expect("flush");

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut limited = None;
    while limited.is_none() && tokio::time::Instant::now() < deadline {
        let now = metric(http, limit).await;
        if now > 0.0 {
            limited = Some(now);
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // While it limits, the guard times round trips through nats-server too.
    let mut round_trip = 0.0;
    while limited.is_some() && round_trip == 0.0 && tokio::time::Instant::now() < deadline {
        round_trip = metric(http, "hub_nats_round_trip_seconds").await;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // The status shows whom the guard slows, and by how much.
    let api = Api::new(&hub, None);
    let line = match limited {
        Some(_) => tenant_status(&api, "guardflood", |line| line["read_limit"].as_f64().is_some()).await,
        None => json!(null),
    };
    let _ = stop.send(true);
    let sent = quiet.await.expect("the quiet publisher");
    let limited = limited.expect("the flood's stream was read under a limit while the quiet tenant published");
    assert!(
        line["read_limit"].as_f64() >= Some(hub::durable::guard::MIN_RATE),
        "the flood's status line while limited: {line}"
    );
    assert!(
        round_trip > 0.0,
        "no round trip through nats-server timed while limited"
    );
    assert!(
        limited >= hub::durable::guard::MIN_RATE,
        "a limit of {limited} inputs/s"
    );

    // Nobody else waits on the hub now: the limit goes, and every flood input is processed.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let (mut processed, mut left) = (0.0, f64::NAN);
    while tokio::time::Instant::now() < deadline {
        (processed, left) = (metric(http, flood_in).await, metric(http, limit).await);
        if processed >= FLOOD as f64 && left == 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(processed, FLOOD as f64, "every flood input processed once");
    assert_eq!(left, 0.0, "no limit once the quiet tenant stopped");
    let quiet_in = metric(http, r#"hub_tenant_events_in_total{tenant="guardquiet"}"#).await;
    assert_eq!(quiet_in, sent as f64, "every quiet input processed");
    hub.shutdown().await;
}
