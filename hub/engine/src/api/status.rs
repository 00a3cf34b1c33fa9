//! `/api/status`: the headline figures (see `status`), their last ten minutes, and a live stream
//! of them (server-sent events, one a second) for the dashboard.

use super::{ApiError, ApiState};
use crate::status::{Point, Status};
use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;

/// `GET /api/status/history`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct History {
    /// Oldest first, one a second.
    pub points: Vec<Point>,
}

/// The latest figures: rates, event→action quantiles, plugins, dead letters, decisions, shards.
#[utoipa::path(get, path = "/api/status", tag = "status",
    responses((status = 200, body = Status), (status = 401, body = ApiError)))]
pub async fn current(State(s): State<ApiState>) -> Json<Status> {
    Json((*s.status.current()).clone())
}

/// The figures of the last ten minutes, for charts.
#[utoipa::path(get, path = "/api/status/history", tag = "status",
    responses((status = 200, body = History), (status = 401, body = ApiError)))]
pub async fn history(State(s): State<ApiState>) -> Json<History> {
    Json(History {
        points: s.status.history(),
    })
}

/// The cluster as this instance sees it: members, who owns each partition, who partitions the
/// input stream, and the leases this instance took, handed back and lost. 404 on a single hub.
#[utoipa::path(get, path = "/api/cluster", tag = "status",
    responses((status = 200, body = crate::cluster::Board), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
pub async fn cluster(State(s): State<ApiState>) -> Result<Json<crate::cluster::Board>, super::Failure> {
    match &s.cluster {
        Some(cluster) => Ok(Json(cluster.board())),
        None => Err(super::Failure::new(
            axum::http::StatusCode::NOT_FOUND,
            "this hub is not part of a cluster ([cluster] enabled = false)",
        )),
    }
}

/// Every new snapshot as it is taken: `text/event-stream`, frames `event: status` whose data is
/// the JSON of `GET /api/status`.
#[utoipa::path(get, path = "/api/status/stream", tag = "status",
    responses((status = 200, content_type = "text/event-stream", description = "One `status` frame a second"), (status = 401, body = ApiError)))]
pub async fn stream(State(s): State<ApiState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let updates = s.status.subscribe();
    let frames = futures::stream::unfold(updates, |mut updates| async move {
        updates.changed().await.ok()?;
        let status = updates.borrow_and_update().clone();
        let frame = Event::default()
            .event("status")
            .json_data(&*status)
            .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()));
        Some((Ok(frame), updates))
    });
    Sse::new(frames).keep_alive(KeepAlive::default())
}
