//! The hub's HTTP surface: `/healthz`, Prometheus `/metrics`, devices on `/push/{actor}`, the
//! admin API under `/api/`, and the dashboard at `/`.
//!
//! This is the top of the HTTP rooms: it composes the API (`api`), the dashboard's static page
//! (`dashboard`, which reads the API) and the device connections (`delivery::push`), which know
//! nothing of each other or of this module; each handler sees
//! only its own part of [`HttpState`] (axum's `FromRef`).

use crate::api::ApiState;
use crate::delivery::push::PushHub;
use axum::extract::{FromRef, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;

/// What the HTTP handlers can see of the running hub.
#[derive(Clone)]
pub struct HttpState {
    pub metrics: PrometheusHandle,
    pub nats: async_nats::Client,
    pub api: ApiState,
    pub push: PushHub,
}

impl FromRef<HttpState> for ApiState {
    fn from_ref(s: &HttpState) -> ApiState {
        s.api.clone()
    }
}

impl FromRef<HttpState> for PushHub {
    fn from_ref(s: &HttpState) -> PushHub {
        s.push.clone()
    }
}

/// Every route, with every error answer as JSON `{"error": ...}` (see [`crate::http_error::json_errors`]),
/// including unknown paths (404) and axum's own rejections.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/push/{actor}", get(crate::delivery::push::connect))
        .merge(crate::api::router(&state.api))
        .merge(crate::dashboard::router())
        .fallback(not_found)
        .layer(axum::middleware::map_response(crate::api::json_errors))
        .with_state(state)
}

/// Unknown paths, `/api/…` included: 404 with the error body every other answer has.
async fn not_found(uri: axum::http::Uri) -> crate::api::Failure {
    crate::api::Failure::new(StatusCode::NOT_FOUND, format!("no such path: {}", uri.path()))
}

async fn healthz(State(s): State<HttpState>) -> impl IntoResponse {
    let connected = matches!(s.nats.connection_state(), async_nats::connection::State::Connected);
    let body = serde_json::json!({
        "status": if connected { "ok" } else { "degraded" },
        "nats": if connected { "connected" } else { "disconnected" },
        "shards": s.api.router.shard_count(),
        "queued": s.api.router.depths().iter().sum::<usize>(),
        "plugins": s.api.registry.live().load().plugins.iter().map(|p| serde_json::json!({
            "name": &*p.name, "version": p.version, "module": p.module.description.name,
            "module_version": p.module.description.version, "subscribes": p.module.description.subscribes,
        })).collect::<Vec<_>>(),
        "cluster": s.api.cluster.as_ref().map(|c| {
            let board = c.board();
            serde_json::json!({
                "instance": board.instance, "partitions": board.partitions, "owned": board.owned,
                "members": board.members.len(), "ingest": board.ingest,
            })
        }),
    });
    let code = if connected {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}
