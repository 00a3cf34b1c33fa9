//! `POST /api/plugins/{name}/backtest`: what a candidate version would have done with the
//! recorded inputs, beside the active version (see `crate::backtest`).

use super::plugins::{parse_config, wasm_body};
use super::{ApiError, ApiState, Failure};
use crate::backtest::diff::Detail;
use crate::backtest::{BacktestError, Bound, Report, Request};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;

/// Examples per change and name, and affected actors named per name, unless `full`.
const EXAMPLES: usize = 3;
const ACTORS: usize = 20;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct BacktestParams {
    /// Where the range starts: a sequence of the input stream (`1200`), a time
    /// (`2026-11-30T08:00:00Z`) or a duration ago (`24h`).
    from: String,
    /// Where it ends, as `from` [default: the last input stored now].
    to: Option<String>,
    /// How long before `from` inputs are run, unreported, to build state up (e.g. `1h`) [default 1h].
    warmup: Option<String>,
    /// The candidate's config as a JSON object [default: the active version's].
    config: Option<String>,
    /// Every difference and affected actor, not a few of each.
    full: Option<bool>,
    /// Inputs of the range run at most [default 10000000].
    max_inputs: Option<u64>,
}

impl From<BacktestError> for Failure {
    fn from(e: BacktestError) -> Failure {
        let status = match e {
            BacktestError::Plugin(admin) => return admin.into(),
            BacktestError::Busy => StatusCode::CONFLICT,
            BacktestError::Range(_) => StatusCode::UNPROCESSABLE_ENTITY,
            BacktestError::Stream { .. } => StatusCode::SERVICE_UNAVAILABLE,
            BacktestError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure::new(status, e.to_string())
    }
}

/// Replay a range of the recorded inputs through the active version of `name` and through the
/// candidate in the body, each with state of its own on a virtual clock, and compare their
/// outputs. Nothing is sent and no live state is touched.
#[utoipa::path(post, path = "/api/plugins/{name}/backtest", tag = "plugins",
    params(("name" = String, Path, description = "Plugin name"), BacktestParams),
    request_body(content = Vec<u8>, content_type = "application/wasm"),
    responses(
        (status = 200, body = Report),
        (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "Core input keeps no inputs, or a backtest is running"),
        (status = 422, body = ApiError, description = "The candidate was refused, or the range holds nothing")))]
pub async fn run(
    State(s): State<ApiState>,
    Extension(caller): Extension<super::Caller>,
    Path(name): Path<String>,
    Query(params): Query<BacktestParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Report>, Failure> {
    wasm_body(&headers)?;
    // A backtest replays every tenant's inputs: the platform's to run.
    if caller != super::Caller::Admin {
        return Err(Failure::new(
            StatusCode::FORBIDDEN,
            "a backtest replays every tenant's inputs; ask the admin to run it",
        ));
    }
    let backtests = s.backtests.as_ref().ok_or_else(|| {
        Failure::new(
            StatusCode::CONFLICT,
            "backtests replay the input stream, which only durable input keeps ([input] mode = \"durable\")",
        )
    })?;
    let bad = |e: String| Failure::new(StatusCode::BAD_REQUEST, e);
    let now = crate::event::now_ms();
    let from = Bound::parse(&params.from, now).map_err(|e| bad(format!("from: {e}")))?;
    let to = params
        .to
        .map(|t| Bound::parse(&t, now).map_err(|e| bad(format!("to: {e}"))))
        .transpose()?;
    let warmup = match params.warmup {
        Some(w) => humantime::parse_duration(&w).map_err(|e| bad(format!("warmup: {w:?} is not a duration: {e}")))?,
        None => std::time::Duration::from_secs(3600),
    };
    let config = params.config.map(|c| parse_config(c.as_bytes())).transpose()?;
    let detail = match params.full {
        Some(true) => Detail::FULL,
        _ => Detail {
            examples: EXAMPLES,
            actors: ACTORS,
        },
    };
    let request = Request {
        plugin: name,
        wasm: body,
        config,
        from,
        to,
        warmup,
        detail,
        max_inputs: params.max_inputs.unwrap_or(10_000_000),
    };
    Ok(Json(backtests.run(request).await?))
}
