//! Tenants: the same actor id in two tenants is two actors (state, ledgers, profiles), an input
//! names its tenant in its envelope, a `Hub-Tenant` header or through an ingest rule, actions
//! say whose they are, and an undeclared tenant is dead-lettered.

use crate::support::{Api, Env, header, json, next, nothing};
use serde_json::json;

/// Publish a payment failure of `actor`, in `tenant` by its envelope's field.
async fn fail_payment(env: &Env, actor: &str, tenant: Option<&str>) {
    let mut body = json!({"kind": "payment.failed", "actor": actor, "payload": {"amount": 20}});
    if let Some(tenant) = tenant {
        body["tenant"] = json!(tenant);
    }
    env.send_raw("events.payment.failed", body.to_string().as_bytes()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_actor_id_in_two_tenants_is_two_actors_and_an_undeclared_tenant_is_dead_lettered() {
    let env = Env::new().await;
    let mut config = env.config();
    config.admin_token = Some("t".into());
    for tenant in ["acme", "globex"] {
        config.tenants.insert(tenant.into(), Default::default());
    }
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
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Hub-Tenant", "acme");
    let body = json!({"kind": "payment.failed", "actor": "u1", "payload": {"amount": 20}});
    env.client
        .publish_with_headers("events.payment.failed", headers, body.to_string().into())
        .await
        .expect("publish");
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
    let mut globex = async_nats::HeaderMap::new();
    globex.insert("Hub-Tenant", "globex");
    let body = json!({"kind": "payment.failed", "actor": "u1", "tenant": "acme"});
    env.client
        .publish_with_headers("events.payment.failed", globex.clone(), body.to_string().into())
        .await
        .expect("publish");
    let reason = header(&next(&mut dlq, "two tenants", 5).await, "Hub-Dlq-Reason");
    assert!(reason.contains("two tenants"), "{reason}");

    // Profiles: `profiles.<actor>` with a Hub-Tenant header, and the API with `?tenant=`.
    env.client
        .publish_with_headers("profiles.u1", globex, br#"{"name": "Gloria"}"#.as_slice().into())
        .await
        .expect("publish");
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
