//! The admin REST API under `/api/` (JSON; DESIGN §5, §9): plugins and their versions, actors
//! (profile, state, timers, action ledger, erasure), contact policies.
//!
//! Every call but `GET /api/openapi.json` needs `Authorization: Bearer $HUB_ADMIN_TOKEN`. Without
//! a configured token the API is open only when the hub listens on loopback (the local default
//! of `hub up`), and the hub says so at start; on any other address it refuses every call.
//! Errors are `{"error": "..."}` with a message meant for the admin.

pub mod actors;
mod auth;
pub mod plugins;
pub mod policies;

pub use auth::Auth;
use auth::BearerScheme;

use crate::http::HttpState;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use utoipa::OpenApi;

/// The API's routes; `state` carries what the handlers need.
pub fn router(state: HttpState) -> axum::Router<HttpState> {
    let body_limit = state.max_module_bytes.saturating_add(1 << 20);
    let guarded = axum::Router::new()
        .route("/api/plugins", get(plugins::list))
        .route(
            "/api/plugins/{name}",
            put(plugins::push).get(plugins::show).delete(plugins::remove),
        )
        .route("/api/plugins/{name}/config", put(plugins::config))
        .route("/api/plugins/{name}/rollback", post(plugins::rollback))
        .route("/api/plugins/{name}/enable", post(plugins::enable))
        .route("/api/plugins/{name}/disable", post(plugins::disable))
        .route("/api/actors/{id}", get(actors::show).delete(actors::erase))
        .route("/api/policies", get(policies::show).put(policies::replace))
        .route(
            "/api/actors/{id}/profile",
            put(actors::put_profile).patch(actors::patch_profile),
        )
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .route_layer(axum::middleware::from_fn_with_state(
            state.auth.clone(),
            auth::require_token,
        ));
    axum::Router::new()
        .route("/api/openapi.json", get(openapi))
        .merge(guarded)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "hub admin API", description = "A running hub: plugins (upload, configure, roll back, enable, disable, delete) and actors (profile, state, timers, erasure)."),
    paths(
        plugins::list,
        plugins::push,
        plugins::show,
        plugins::config,
        plugins::rollback,
        plugins::enable,
        plugins::disable,
        plugins::remove,
        actors::show,
        actors::put_profile,
        actors::patch_profile,
        actors::erase,
        policies::show,
        policies::replace
    ),
    components(schemas(ApiError)),
    modifiers(&BearerScheme),
    security(("bearer" = []))
)]
struct ApiDoc;

/// The OpenAPI description of this API, generated from the handlers.
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The body of every error answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ApiError {
    pub error: String,
}

/// An error answer: a status and a message for the admin.
pub struct Failure(StatusCode, String);

impl Failure {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Failure {
        Failure(status, message.into())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

impl From<crate::registry::AdminError> for Failure {
    fn from(e: crate::registry::AdminError) -> Failure {
        use crate::registry::AdminError as E;
        use crate::runtime::LoadError;
        let status = match &e {
            E::BadName(_) | E::ConfigNotObject => StatusCode::BAD_REQUEST,
            E::NotFound(_) | E::NoSuchVersion { .. } => StatusCode::NOT_FOUND,
            E::NothingToRollBack(_) => StatusCode::CONFLICT,
            E::Refused(LoadError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            E::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            E::Store(_) | E::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure(status, e.to_string())
    }
}

impl From<crate::registry::StoreError> for Failure {
    fn from(e: crate::registry::StoreError) -> Failure {
        Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}
