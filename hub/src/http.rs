//! The hub's HTTP surface: `/healthz`, Prometheus `/metrics`, devices on `/push/{actor}`, and the
//! admin API under `/api/`.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;

/// What the HTTP handlers can see of the running hub.
#[derive(Clone)]
pub struct HttpState {
    pub metrics: PrometheusHandle,
    pub nats: async_nats::Client,
    pub router: crate::router::Router,
    pub registry: Arc<crate::registry::Registry>,
    pub stats: Arc<crate::stats::PluginStats>,
    pub profiles: crate::state::Profiles,
    pub policies: crate::arbiter::PolicyStore,
    pub push: crate::delivery::push::PushHub,
    pub auth: crate::api::Auth,
    /// Upload bodies up to this size (plus room for the refusal to say why) are read.
    pub max_module_bytes: usize,
}

/// Every route, with every error answer as JSON `{"error": ...}` (see [`crate::api::json_errors`]),
/// including unknown paths (404) and axum's own rejections.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/push/{actor}", get(crate::delivery::push::connect))
        .merge(crate::api::router(state.clone()))
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
        "shards": s.router.shard_count(),
        "queued": s.router.depths().iter().sum::<usize>(),
        "plugins": s.registry.live().load().plugins.iter().map(|p| serde_json::json!({
            "name": &*p.name, "version": p.version, "module": p.module.description.name,
            "module_version": p.module.description.version, "subscribes": p.module.description.subscribes,
        })).collect::<Vec<_>>(),
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
