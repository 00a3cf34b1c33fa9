//! `/api/actors/{id}`: what the hub holds about one actor (profile, each plugin's state, pending
//! timers), profile updates, and erasing everything about the actor (a privacy request). An
//! actor of a tenant other than the default is named with `?tenant=<name>`.

use super::{ApiError, Failure};
use super::{ApiState, Caller};
use crate::actor::{ActorRequest, ActorState, Erased};
use crate::state::ProfileError;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

/// The tenant an actor in the path belongs to (the default one when absent).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub struct InTenant {
    /// A declared tenant; the default tenant when absent.
    pub tenant: Option<String>,
}

/// `GET /api/actors/{id}`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActorView {
    pub actor: String,
    /// Left out for the default tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[schema(value_type = Object)]
    pub profile: Option<serde_json::Value>,
    #[serde(flatten)]
    pub held: ActorState,
}

/// `DELETE /api/actors/{id}`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErasedView {
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(flatten)]
    pub erased: Erased,
}

impl From<ProfileError> for Failure {
    fn from(e: ProfileError) -> Failure {
        let status = match e {
            ProfileError::NotAnObject | ProfileError::Invalid(_) => StatusCode::BAD_REQUEST,
            // What is stored cannot be read and is left as it is: an operator must look first.
            ProfileError::Corrupt { .. } => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure::new(status, e.to_string())
    }
}

/// The actor's profile, each plugin's state for it (decoded to JSON), and its pending timers.
#[utoipa::path(get, path = "/api/actors/{id}", tag = "actors",
    params(("id" = String, Path, description = "Actor id"), InTenant),
    responses((status = 200, body = ActorView), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
pub async fn show(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(t): Query<InTenant>,
) -> Result<Json<ActorView>, Failure> {
    let (key, tenant) = key(&s, &caller, &id, &t)?;
    let (reply, answer) = tokio::sync::oneshot::channel();
    s.router
        .ask(&key, ActorRequest::Inspect(reply))
        .await
        .map_err(stopped)?;
    let held = answer.await.map_err(stopped)?;
    Ok(Json(ActorView {
        profile: s.profiles.get(&key)?,
        actor: id,
        tenant,
        held,
    }))
}

/// Replace the actor's profile with the body (a JSON object).
#[utoipa::path(put, path = "/api/actors/{id}/profile", tag = "actors",
    params(("id" = String, Path, description = "Actor id"), InTenant),
    request_body(content = Object, content_type = "application/json"),
    responses((status = 200, body = Object, description = "The profile now"), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
pub async fn put_profile(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(t): Query<InTenant>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, Failure> {
    let (key, _) = key(&s, &caller, &id, &t)?;
    Ok(Json(s.profiles.replace(&key, &parse(&body)?)?))
}

/// Merge the body into the actor's profile (JSON merge patch: `null` removes a key), as
/// messages on NATS `profiles.<actor>` do.
#[utoipa::path(patch, path = "/api/actors/{id}/profile", tag = "actors",
    params(("id" = String, Path, description = "Actor id"), InTenant),
    request_body(content = Object, content_type = "application/merge-patch+json"),
    responses((status = 200, body = Object, description = "The profile now"), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
pub async fn patch_profile(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(t): Query<InTenant>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, Failure> {
    let (key, _) = key(&s, &caller, &id, &t)?;
    Ok(Json(s.profiles.merge(&key, &parse(&body)?)?))
}

/// Erase everything about the actor: profile, state in every plugin, pending timers.
#[utoipa::path(delete, path = "/api/actors/{id}", tag = "actors",
    params(("id" = String, Path, description = "Actor id"), InTenant),
    responses((status = 200, body = ErasedView), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
pub async fn erase(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(t): Query<InTenant>,
) -> Result<Json<ErasedView>, Failure> {
    let (key, tenant) = key(&s, &caller, &id, &t)?;
    let (reply, answer) = tokio::sync::oneshot::channel();
    s.router.ask(&key, ActorRequest::Erase(reply)).await.map_err(stopped)?;
    let mut erased = answer
        .await
        .map_err(stopped)?
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, format!("erase failed: {e}")))?;
    erased.profile = s.profiles.remove(&key)?;
    tracing::info!(actor = id, tenant, ?erased, "actor erased");
    Ok(Json(ErasedView {
        actor: id,
        tenant,
        erased,
    }))
}

/// The key of actor `id` of the tenant asked for (a tenant's token: its own), and the tenant
/// (`None`: the default one). Ids in paths meet the same limits as everywhere else
/// (`event::check_actor`), and the tenant must be declared.
fn key(s: &ApiState, caller: &Caller, id: &str, t: &InTenant) -> Result<(String, Option<String>), Failure> {
    let bad = |e| Failure::new(StatusCode::BAD_REQUEST, e);
    crate::event::check_actor(id).map_err(bad)?;
    let tenant = s.tenant_for(caller, t.tenant.as_deref())?;
    Ok((crate::tenant::qualify(tenant, id), tenant.map(str::to_owned)))
}

fn parse(body: &[u8]) -> Result<serde_json::Value, Failure> {
    serde_json::from_slice(body)
        .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, format!("the body is not JSON: {e}")))
}

fn stopped(_: impl std::fmt::Display) -> Failure {
    Failure::new(StatusCode::SERVICE_UNAVAILABLE, "the hub is shutting down")
}

/// In a cluster, what the hub holds about an actor is on the instance that owns its partition:
/// requests for another instance's actor are redirected there (307 keeps the method and body),
/// and answered 503 while the partition has no owner (its lease is being handed over).
pub async fn at_owner(
    State(s): State<ApiState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(cluster) = &s.cluster else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    let Some(id) = path
        .strip_prefix("/api/actors/")
        .map(|rest| rest.strip_suffix("/profile").unwrap_or(rest))
        .map(|id| {
            percent_encoding::percent_decode_str(id)
                .decode_utf8_lossy()
                .into_owned()
        })
    else {
        return next.run(request).await;
    };
    // A tenant that cannot be read is refused by the handler, here or at the owner; a tenant's
    // token names its own.
    let asked = Query::<InTenant>::try_from_uri(request.uri()).map_or(None, |q| q.0.tenant);
    let tenant = match request.extensions().get::<Caller>() {
        Some(Caller::Tenant(own)) => Some(own.to_string()),
        _ => asked,
    };
    let partition = cluster.partition_of(&crate::tenant::qualify(tenant.as_deref(), &id));
    if cluster.owns(partition) {
        return next.run(request).await;
    }
    match cluster.owner_of(partition) {
        Some(member) if member.instance == cluster.instance => Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("actor {id:?} is in partition {partition}, whose state this instance is restoring; try again in a moment"),
        )
        .into_response(),
        Some(member) => {
            let target = match request.uri().path_and_query() {
                Some(pq) => format!("http://{}{pq}", member.http),
                None => format!("http://{}{path}", member.http),
            };
            (
                StatusCode::TEMPORARY_REDIRECT,
                [(axum::http::header::LOCATION, target)],
                Json(serde_json::json!({
                    "error": format!("actor {id:?} is in partition {partition}, processed by {}", member.instance),
                })),
            )
                .into_response()
        }
        None => Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("actor {id:?} is in partition {partition}, which no instance processes at the moment; try again in a few seconds"),
        )
        .into_response(),
    }
}
