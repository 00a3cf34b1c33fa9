//! `/api/tenants/{name}`: one tenant as a whole. `GET` gives its figures and what it uses of
//! its quotas, so a client sees its own without the platform's status; `GET …/export` gives
//! everything the hub holds about its actors, one JSON object per line; `DELETE` erases them,
//! its kept dead letters, its own contact policies and the plugins that run for it alone (the
//! admin's call). Inputs that name the tenant keep being processed while it is declared: remove
//! it from the configuration first to refuse them.
//!
//! The tenant's actors are found in sled (plugin state, action ledgers, profiles) and in each
//! shard's memory (pending timers, state not yet committed); each is then inspected or erased
//! through its shard, in order with its events. In a cluster each instance holds the actors of
//! its partitions: the instance asked passes the call on to every other member and merges.

use super::{ApiError, ApiState, Caller, Failure};
use crate::actor::{ActorRequest, ActorState};
use crate::router::ShardMsg;
use crate::status::TenantStatus;
use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub struct Scope {
    /// This instance's actors only (how a cluster's members pass the call on to one another).
    #[serde(default)]
    local: bool,
}

/// One actor of an export (a line of `GET /api/tenants/{name}/export`).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExportedActor {
    pub actor: String,
    pub tenant: String,
    #[schema(value_type = Object)]
    pub profile: Option<serde_json::Value>,
    #[serde(flatten)]
    pub held: ActorState,
}

/// `DELETE /api/tenants/{name}`.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErasedTenant {
    pub tenant: String,
    pub actors: usize,
    pub state_keys: usize,
    pub timers: usize,
    /// Entries of the actors' action ledgers.
    pub actions: usize,
    pub profiles: usize,
    pub dead_letters: usize,
    /// Plugins that ran for this tenant alone, now deleted.
    pub plugins: Vec<String>,
    /// Whether it had contact policies of its own, now forgotten.
    #[serde(default)]
    pub policies: bool,
    /// Cluster members that could not be reached: their actors are still there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreached: Vec<String>,
}

/// The tenant's line of the status (taken once a second): its rates, backlog, share, rate and
/// the latency guard's limit, and what it uses of each quota. Its own token may call it; the
/// admin may also ask for `default`.
#[utoipa::path(get, path = "/api/tenants/{name}", tag = "tenants",
    params(("name" = String, Path, description = "A declared tenant, or `default`")),
    responses((status = 200, body = TenantStatus), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 503, body = ApiError)))]
pub async fn show(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<TenantStatus>, Failure> {
    let tenant = s.tenant_for(&caller, Some(&name))?.unwrap_or(crate::tenant::DEFAULT);
    let status = s.status.current();
    let line = status.tenants.iter().find(|line| line.name == tenant);
    line.cloned().map(Json).ok_or_else(|| {
        Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the hub has not taken its figures yet (once a second): ask again",
        )
    })
}

/// Everything the hub holds about the tenant's actors, as JSON lines (`application/x-ndjson`):
/// profile, each plugin's state, pending timers and action ledger of each.
#[utoipa::path(get, path = "/api/tenants/{name}/export", tag = "tenants",
    params(("name" = String, Path, description = "A declared tenant"), Scope),
    responses((status = 200, content_type = "application/x-ndjson", body = ExportedActor),
        (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
pub async fn export(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(scope): Query<Scope>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let tenant = declared(&s, &caller, &name)?;
    let actors = actors_of(&s, &tenant).await?;
    let local = futures::stream::iter(actors)
        .then({
            let (s, tenant) = (s.clone(), tenant.clone());
            move |key| {
                let (s, tenant) = (s.clone(), tenant.clone());
                async move { export_line(&s, &tenant, key).await }
            }
        })
        .filter_map(|line| async move { line.transpose() });
    let others = match (&s.cluster, scope.local) {
        (Some(_), false) => others(
            &s,
            &headers,
            &format!("/api/tenants/{name}/export?local=true"),
            reqwest::Method::GET,
        )
        .await
        .into_iter()
        .map(|answer| match answer {
            Ok(body) => Ok(bytes::Bytes::from(body)),
            Err(e) => Err(std::io::Error::other(e)),
        })
        .collect(),
        _ => Vec::new(),
    };
    let body = Body::from_stream(local.chain(futures::stream::iter(others)));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

/// One actor's line of an export; none for an actor the hub holds nothing of any more (erased
/// a moment ago: sled may not have the erasure yet, but the shard's cache has).
async fn export_line(s: &ApiState, tenant: &str, key: String) -> Result<Option<bytes::Bytes>, std::io::Error> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let stopped = || std::io::Error::other("the hub is shutting down");
    s.router
        .ask(&key, ActorRequest::Inspect(reply))
        .await
        .map_err(|_| stopped())?;
    let held = answer.await.map_err(|_| stopped())?;
    let line = ExportedActor {
        actor: crate::tenant::split(&key).1.to_owned(),
        tenant: tenant.to_owned(),
        profile: s.profiles.get(&key).map_err(std::io::Error::other)?,
        held,
    };
    let held = &line.held;
    if line.profile.is_none() && held.state.is_empty() && held.timers.is_empty() && held.actions.is_empty() {
        return Ok(None);
    }
    let mut bytes = serde_json::to_vec(&line).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    Ok(Some(bytes.into()))
}

/// Erase the tenant's actors (profile, state in every plugin, timers, ledger), its kept dead
/// letters, and the plugins that run for it alone.
#[utoipa::path(delete, path = "/api/tenants/{name}", tag = "tenants",
    params(("name" = String, Path, description = "A declared tenant"), Scope),
    responses((status = 200, body = ErasedTenant), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError)))]
pub async fn erase(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(scope): Query<Scope>,
    headers: HeaderMap,
) -> Result<Json<ErasedTenant>, Failure> {
    if caller != Caller::Admin {
        return Err(Failure::new(
            StatusCode::FORBIDDEN,
            "erasing a tenant is the admin's call",
        ));
    }
    let tenant = declared(&s, &caller, &name)?;
    let mut erased = ErasedTenant {
        tenant: tenant.clone(),
        ..ErasedTenant::default()
    };
    let failed = |e: String| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e);
    for key in actors_of(&s, &tenant).await? {
        let (reply, answer) = tokio::sync::oneshot::channel();
        s.router
            .ask(&key, ActorRequest::Erase(reply))
            .await
            .map_err(|_| stopping())?;
        let one = answer
            .await
            .map_err(|_| stopping())?
            .map_err(|e| failed(format!("erasing {key:?}: {e}")))?;
        let profile = s.profiles.remove(&key)?;
        // An actor erased a moment ago may still be found in sled; it held nothing now.
        if one.state_keys + one.timers + one.actions > 0 || profile {
            erased.actors += 1;
        }
        erased.state_keys += one.state_keys;
        erased.timers += one.timers;
        erased.actions += one.actions;
        erased.profiles += usize::from(profile);
    }
    if !scope.local {
        if let Some(kept) = &s.dead_letters {
            erased.dead_letters = kept.remove_of_tenant(&tenant).await?;
        }
        for record in s.registry.plugins()? {
            if record.tenants.as_deref() == Some(std::slice::from_ref(&tenant)) {
                s.registry.delete(&record.name).await?;
                erased.plugins.push(record.name);
            }
        }
        erased.policies = super::policies::set_tenant(&s, tenant.clone(), None).await?;
        if let Some(cluster) = &s.cluster {
            let unowned: Vec<u16> = (0..cluster.partitions)
                .filter(|p| cluster.owner_of(*p).is_none())
                .collect();
            if !unowned.is_empty() {
                erased.unreached.push(format!(
                    "partitions {unowned:?} had no owner at the moment (a hand-off): erase again once they do"
                ));
            }
            let path = format!("/api/tenants/{name}?local=true");
            for answer in others(&s, &headers, &path, reqwest::Method::DELETE).await {
                match answer.map(|body| serde_json::from_slice::<ErasedTenant>(&body)) {
                    Ok(Ok(theirs)) => {
                        erased.actors += theirs.actors;
                        erased.state_keys += theirs.state_keys;
                        erased.timers += theirs.timers;
                        erased.actions += theirs.actions;
                        erased.profiles += theirs.profiles;
                    }
                    Ok(Err(e)) => erased.unreached.push(e.to_string()),
                    Err(e) => erased.unreached.push(e),
                }
            }
        }
    }
    tracing::info!(?erased, "tenant erased");
    Ok(Json(erased))
}

/// The tenant `name` (declared, not the default one) if the caller reaches it: the admin, or
/// the tenant's own token.
fn declared(s: &ApiState, caller: &Caller, name: &str) -> Result<String, Failure> {
    match s.tenant_for(caller, Some(name))? {
        Some(tenant) => Ok(tenant.to_owned()),
        None => Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "the default tenant is every actor that names none: erase or inspect them one by one",
        )),
    }
}

/// The keys of the tenant's actors this instance holds (in sled, or in a shard's memory).
async fn actors_of(s: &ApiState, tenant: &str) -> Result<std::collections::BTreeSet<String>, Failure> {
    let prefix = crate::tenant::qualify(Some(tenant), "");
    let db = s.db.clone();
    let scan = prefix.clone();
    let mut actors = tokio::task::spawn_blocking(move || db.actors_with_prefix(&scan))
        .await
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    for shard in 0..s.router.shard_count() {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let ask = ShardMsg::Actors {
            prefix: prefix.clone(),
            reply,
        };
        s.router.send_to(shard, ask).await.map_err(|_| stopping())?;
        actors.extend(answer.await.map_err(|_| stopping())?);
    }
    // In a cluster, only the actors of partitions this instance processes are its own.
    if let Some(cluster) = &s.cluster {
        actors.retain(|key| cluster.owns(cluster.partition_of(key)));
    }
    Ok(actors)
}

/// The same call on every other member of the cluster, with the caller's credentials: each
/// answer's body, or why it could not be had.
async fn others(
    s: &ApiState,
    headers: &HeaderMap,
    path: &str,
    method: reqwest::Method,
) -> Vec<Result<Vec<u8>, String>> {
    let Some(cluster) = &s.cluster else {
        return Vec::new();
    };
    let mut answers = Vec::new();
    for member in cluster
        .board()
        .members
        .iter()
        .filter(|m| m.instance != cluster.instance)
    {
        let answer = match super::on_member(&member.http, method.clone(), path, headers).await {
            Ok(answer) if answer.status().is_success() => {
                answer.bytes().await.map(|b| b.to_vec()).map_err(|e| e.to_string())
            }
            Ok(answer) => Err(format!("{}: {}", member.instance, answer.status())),
            Err(e) => Err(format!("{}: {e}", member.instance)),
        };
        answers.push(answer);
    }
    answers
}

fn stopping() -> Failure {
    Failure::new(StatusCode::SERVICE_UNAVAILABLE, "the hub is shutting down")
}
