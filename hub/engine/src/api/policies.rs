//! `/api/policies`: the arbiter's contact policies, read and replaced at run time. A new set takes
//! effect with the next action judged, on every shard, and outlives a restart.
//!
//! `?tenant=acme` (or a tenant's own token, which need not name it) reads and sets the policies
//! of that tenant's actors: its own once it has set some, the hub's until then; `DELETE` gives
//! it the hub's again.

use super::ApiState;
use super::{ApiError, Caller, Failure};
use crate::arbiter::{Policies, PolicyError};
use crate::cluster::plugins::SharedError;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub struct Whose {
    /// A declared tenant: the policies its actors are judged by (none: the hub's, which the
    /// default tenant's actors are judged by).
    tenant: Option<String>,
}

impl From<PolicyError> for Failure {
    fn from(e: PolicyError) -> Failure {
        let status = match e {
            PolicyError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure::new(status, e.to_string())
    }
}

/// The policies in force: the hub's, or those a tenant's actors are judged by.
#[utoipa::path(get, path = "/api/policies", tag = "policies", params(Whose),
    responses((status = 200, body = Policies), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError)))]
pub async fn show(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Query(whose): Query<Whose>,
) -> Result<Json<Policies>, Failure> {
    let own = s
        .tenant_for(&caller, whose.tenant.as_deref())?
        .and_then(|tenant| s.policies.of_tenant(tenant));
    Ok(Json(match own {
        Some(own) => Policies::clone(&own),
        None => Policies::clone(&s.policies.load()),
    }))
}

/// Replace the policies (the whole set; fields left out take their defaults): the hub's, or a
/// tenant's own.
#[utoipa::path(put, path = "/api/policies", tag = "policies", params(Whose),
    request_body(content = Policies, content_type = "application/json"),
    responses((status = 200, body = Policies),
        (status = 422, description = "Not valid policies; the message says what is wrong", body = ApiError),
        (status = 409, description = "In a cluster: changed on another instance at the same time", body = ApiError),
        (status = 503, description = "In a cluster: the cluster's record cannot be written now", body = ApiError),
        (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
pub async fn replace(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Query(whose): Query<Whose>,
    body: Bytes,
) -> Result<Json<Policies>, Failure> {
    let tenant = s.tenant_for(&caller, whose.tenant.as_deref())?.map(str::to_owned);
    let policies: Policies = super::from_json_object(&body)
        .map_err(|e| Failure::new(StatusCode::UNPROCESSABLE_ENTITY, format!("invalid policies: {e}")))?;
    policies
        .validate()
        .map_err(|e| Failure::from(PolicyError::Invalid(e)))?;
    if let Some(tenant) = tenant {
        set_tenant(&s, tenant, Some(policies.clone())).await?;
        return Ok(Json(policies));
    }
    if let Some(shared) = s.policies.shared() {
        // The cluster's first: refused there (changed elsewhere, NATS down), nothing changes.
        shared.write(&policies).await.map_err(refused_by_cluster)?;
    }
    let store = s.policies.clone();
    let stored = policies.clone();
    tokio::task::spawn_blocking(move || store.replace(stored))
        .await
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(policies))
}

/// Judge a tenant's actors by the hub's policies again (the tenant's own are forgotten).
#[utoipa::path(delete, path = "/api/policies", tag = "policies", params(Whose),
    responses((status = 200, description = "The hub's policies, which the tenant's actors are judged by now", body = Policies),
        (status = 409, description = "In a cluster: changed on another instance at the same time", body = ApiError),
        (status = 503, description = "In a cluster: the cluster's record cannot be written now", body = ApiError),
        (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
pub async fn forget(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Query(whose): Query<Whose>,
) -> Result<Json<Policies>, Failure> {
    let Some(tenant) = s.tenant_for(&caller, whose.tenant.as_deref())?.map(str::to_owned) else {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "the hub's own policies are replaced, not deleted: PUT {} for no limits, or name a tenant (?tenant=)",
        ));
    };
    set_tenant(&s, tenant, None).await?;
    Ok(Json(Policies::clone(&s.policies.load())))
}

/// Give `tenant` its own policies, or the hub's again (`None`): in a cluster, for every
/// instance (the cluster's record first). Whether it had policies of its own here.
pub(super) async fn set_tenant(s: &ApiState, tenant: String, policies: Option<Policies>) -> Result<bool, Failure> {
    if let Some(shared) = s.policies.shared() {
        shared
            .write_tenant(&tenant, policies.as_ref())
            .await
            .map_err(refused_by_cluster)?;
    }
    let store = s.policies.clone();
    let had = tokio::task::spawn_blocking(move || store.set_tenant(&tenant, policies))
        .await
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(had)
}

/// The cluster's record refused a change (changed on another instance meanwhile, or NATS
/// cannot be reached now): nothing changed.
fn refused_by_cluster(e: SharedError) -> Failure {
    let status = match e {
        SharedError::Conflict(_) => StatusCode::CONFLICT,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    Failure::new(status, e.to_string())
}
