//! The hub's HTTP surface for this stage: `/healthz` and Prometheus `/metrics`.

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
    pub plugins: Arc<Vec<crate::runtime::Description>>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz(State(s): State<HttpState>) -> impl IntoResponse {
    let connected = matches!(s.nats.connection_state(), async_nats::connection::State::Connected);
    let body = serde_json::json!({
        "status": if connected { "ok" } else { "degraded" },
        "nats": if connected { "connected" } else { "disconnected" },
        "shards": s.router.shard_count(),
        "queued": s.router.depths().iter().sum::<usize>(),
        "plugins": s.plugins.iter().map(|d| serde_json::json!({
            "name": d.name, "version": d.version, "subscribes": d.subscribes,
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
