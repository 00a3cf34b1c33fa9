//! `/api/policies`: the arbiter's contact policies, read and replaced at run time. A new set takes
//! effect with the next action judged, on every shard, and outlives a restart.

use super::ApiState;
use super::{ApiError, Failure};
use crate::arbiter::{Policies, PolicyError};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;

impl From<PolicyError> for Failure {
    fn from(e: PolicyError) -> Failure {
        let status = match e {
            PolicyError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure::new(status, e.to_string())
    }
}

/// The policies in force.
#[utoipa::path(get, path = "/api/policies", tag = "policies",
    responses((status = 200, body = Policies), (status = 401, body = ApiError)))]
pub async fn show(State(s): State<ApiState>) -> Json<Policies> {
    Json(Policies::clone(&s.policies.load()))
}

/// Replace the policies (the whole set; fields left out take their defaults).
#[utoipa::path(put, path = "/api/policies", tag = "policies",
    request_body(content = Policies, content_type = "application/json"),
    responses((status = 200, body = Policies),
        (status = 422, description = "Not valid policies; the message says what is wrong", body = ApiError),
        (status = 409, description = "In a cluster: changed on another instance at the same time", body = ApiError),
        (status = 503, description = "In a cluster: the cluster's record cannot be written now", body = ApiError),
        (status = 401, body = ApiError)))]
pub async fn replace(State(s): State<ApiState>, body: Bytes) -> Result<Json<Policies>, Failure> {
    let policies: Policies = super::from_json_object(&body)
        .map_err(|e| Failure::new(StatusCode::UNPROCESSABLE_ENTITY, format!("invalid policies: {e}")))?;
    policies
        .validate()
        .map_err(|e| Failure::from(PolicyError::Invalid(e)))?;
    if let Some(shared) = s.policies.shared() {
        // The cluster's first: refused there (changed elsewhere, NATS down), nothing changes.
        shared.write(&policies).await.map_err(|e| {
            let status = match e {
                crate::cluster::plugins::SharedError::Conflict(_) => StatusCode::CONFLICT,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            Failure::new(status, e.to_string())
        })?;
    }
    let store = s.policies.clone();
    let stored = policies.clone();
    tokio::task::spawn_blocking(move || store.replace(stored))
        .await
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(policies))
}
