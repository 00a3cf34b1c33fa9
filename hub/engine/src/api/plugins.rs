//! `/api/plugins`: list, upload (hot swap), show, configure, roll back, enable, disable, delete.

use super::ApiState;
use super::{ApiError, Failure};
use crate::event::rfc3339;
use crate::registry::{Change, PluginRecord};
use crate::runtime::Description;
use crate::shadow::ShadowStatus;
use crate::stats::Summary;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};

/// One line of `GET /api/plugins`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PluginSummary {
    /// The registered name (the same module may run under several names).
    pub name: String,
    pub active_version: u32,
    pub enabled: bool,
    /// What the active module says it is (`describe()`).
    pub module: String,
    pub module_version: String,
    pub subscribes: Vec<String>,
    /// The version running as a shadow, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_version: Option<u32>,
    #[serde(flatten)]
    pub stats: Summary,
}

/// `GET /api/plugins/{name}`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PluginDetail {
    pub name: String,
    pub active_version: u32,
    pub enabled: bool,
    /// Oldest first.
    pub versions: Vec<VersionInfo>,
    pub stats: Summary,
    /// The version running as a shadow, and how its outputs compare with the active version's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowStatus>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionInfo {
    pub version: u32,
    pub active: bool,
    pub sha256: String,
    pub size: usize,
    /// RFC 3339.
    pub uploaded_at: String,
    /// `api`, `config` (a config update) or `dir:<file>`.
    pub source: String,
    pub description: Description,
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct PushParams {
    /// The plugin's config as a JSON object; default: the active version's config (or `{}`).
    config: Option<String>,
    /// Run it as a shadow beside the active version (own state and timers, delivering
    /// nothing, its outputs compared) instead of making it active.
    shadow: Option<bool>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct RollbackRequest {
    /// Default: the highest version below the active one.
    version: Option<u32>,
}

fn summary(record: &PluginRecord, stats: Summary) -> PluginSummary {
    let active = record.active();
    PluginSummary {
        name: record.name.clone(),
        active_version: record.active,
        enabled: record.enabled,
        module: active.map(|v| v.description.name.clone()).unwrap_or_default(),
        module_version: active.map(|v| v.description.version.clone()).unwrap_or_default(),
        subscribes: active.map(|v| v.description.subscribes.clone()).unwrap_or_default(),
        shadow_version: record.shadow,
        stats,
    }
}

/// All plugins with their active version and call statistics.
#[utoipa::path(get, path = "/api/plugins", tag = "plugins",
    responses((status = 200, body = [PluginSummary]), (status = 401, body = ApiError)))]
pub async fn list(State(s): State<ApiState>) -> Result<Json<Vec<PluginSummary>>, Failure> {
    let records = s.registry.plugins()?;
    Ok(Json(
        records.iter().map(|r| summary(r, s.stats.summary(&r.name))).collect(),
    ))
}

/// Upload a new version (the body is the `.wasm`) and make it live once it is validated:
/// right world, sane `describe()`, instantiates, `init` accepts the config. A refused module
/// leaves the running version as it is.
#[utoipa::path(put, path = "/api/plugins/{name}", tag = "plugins",
    params(("name" = String, Path, description = "Plugin name"), PushParams),
    request_body(content = Vec<u8>, content_type = "application/wasm"),
    responses(
        (status = 200, body = Change, description = "Live on every shard"),
        (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 413, body = ApiError, description = "Module too large"),
        (status = 415, body = ApiError, description = "Body is not application/wasm"),
        (status = 422, body = ApiError, description = "Module refused: not a component, wrong world, init rejected the config or trapped")))]
pub async fn push(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    Query(params): Query<PushParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Change>, Failure> {
    wasm_body(&headers)?;
    let config = params.config.map(|c| parse_config(c.as_bytes())).transpose()?;
    if params.shadow == Some(true) {
        return Ok(Json(s.registry.upload_shadow(&name, body, config).await?));
    }
    Ok(Json(s.registry.upload(&name, body, config).await?))
}

/// Make the shadow the active version, in one switch as a swap is: it carries on with the
/// active version's state and timers, and the shadow's own are dropped.
#[utoipa::path(post, path = "/api/plugins/{name}/promote", tag = "plugins",
    params(("name" = String, Path, description = "Plugin name")),
    responses((status = 200, body = Change), (status = 401, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "No shadow runs")))]
pub async fn promote(State(s): State<ApiState>, Path(name): Path<String>) -> Result<Json<Change>, Failure> {
    Ok(Json(s.registry.promote(&name).await?))
}

/// Stop the shadow and drop its state and timers (its version stays in the history).
#[utoipa::path(delete, path = "/api/plugins/{name}/shadow", tag = "plugins",
    params(("name" = String, Path, description = "Plugin name")),
    responses((status = 200, body = Change), (status = 401, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "No shadow runs")))]
pub async fn drop_shadow(State(s): State<ApiState>, Path(name): Path<String>) -> Result<Json<Change>, Failure> {
    Ok(Json(s.registry.drop_shadow(&name).await?))
}

/// A module upload must say it is one.
pub(super) fn wasm_body(headers: &HeaderMap) -> Result<(), Failure> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !matches!(content_type, "application/wasm" | "application/octet-stream") {
        return Err(Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("send the .wasm with Content-Type: application/wasm (got {content_type:?})"),
        ));
    }
    Ok(())
}

/// A plugin's versions (hashes, upload times, configs), which one is active, and its statistics.
#[utoipa::path(get, path = "/api/plugins/{name}", tag = "plugins",
    params(("name" = String, Path, description = "Plugin name")),
    responses((status = 200, body = PluginDetail), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
pub async fn show(State(s): State<ApiState>, Path(name): Path<String>) -> Result<Json<PluginDetail>, Failure> {
    let record = s.registry.plugin(&name)?;
    Ok(Json(PluginDetail {
        versions: record
            .versions
            .iter()
            .map(|v| VersionInfo {
                version: v.version,
                active: v.version == record.active,
                sha256: v.sha256.clone(),
                size: v.size,
                uploaded_at: rfc3339(v.uploaded_at),
                source: v.source.clone(),
                description: v.description.clone(),
                config: v.config.clone(),
            })
            .collect(),
        stats: s.stats.summary(&name),
        shadow: crate::shadow::status_of(&s.registry, &s.stats, &name),
        name: record.name,
        active_version: record.active,
        enabled: record.enabled,
    }))
}

/// New template parameters for the running code (a new version with the same wasm, validated
/// by `init` before it goes live).
#[utoipa::path(put, path = "/api/plugins/{name}/config", tag = "plugins",
    params(("name" = String, Path, description = "Plugin name")),
    request_body(content = Object, content_type = "application/json"),
    responses((status = 200, body = Change), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 404, body = ApiError), (status = 422, body = ApiError, description = "init rejected the config")))]
pub async fn config(State(s): State<ApiState>, Path(name): Path<String>, body: Bytes) -> Result<Json<Change>, Failure> {
    let config = parse_config(&body)?;
    Ok(Json(s.registry.set_config(&name, config).await?))
}

/// Make an earlier version active again: the previous one, or `{"version": N}`.
#[utoipa::path(post, path = "/api/plugins/{name}/rollback", tag = "plugins",
    params(("name" = String, Path, description = "Plugin name")),
    request_body(content = Option<RollbackRequest>, content_type = "application/json"),
    responses((status = 200, body = Change), (status = 401, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "No earlier version")))]
pub async fn rollback(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Change>, Failure> {
    let request: RollbackRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackRequest::default()
    } else {
        super::from_json_object(&body).map_err(|e| {
            Failure::new(
                StatusCode::BAD_REQUEST,
                format!("the body must be empty or {{\"version\": N}}: {e}"),
            )
        })?
    };
    Ok(Json(s.registry.rollback(&name, request.version).await?))
}

/// Run the plugin again (its active version).
#[utoipa::path(post, path = "/api/plugins/{name}/enable", tag = "plugins",
    params(("name" = String, Path, description = "Plugin name")),
    responses((status = 200, body = Change), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
pub async fn enable(State(s): State<ApiState>, Path(name): Path<String>) -> Result<Json<Change>, Failure> {
    Ok(Json(s.registry.set_enabled(&name, true).await?))
}

/// Stop running the plugin without forgetting it: it gets no events, and its timers that come
/// due are dead-lettered as `disabled`.
#[utoipa::path(post, path = "/api/plugins/{name}/disable", tag = "plugins",
    params(("name" = String, Path, description = "Plugin name")),
    responses((status = 200, body = Change), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
pub async fn disable(State(s): State<ApiState>, Path(name): Path<String>) -> Result<Json<Change>, Failure> {
    Ok(Json(s.registry.set_enabled(&name, false).await?))
}

/// Stop the plugin and forget its versions (its state stays, for a plugin of the same name).
#[utoipa::path(delete, path = "/api/plugins/{name}", tag = "plugins",
    params(("name" = String, Path, description = "Plugin name")),
    responses((status = 200, body = Change), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
pub async fn remove(State(s): State<ApiState>, Path(name): Path<String>) -> Result<Json<Change>, Failure> {
    Ok(Json(s.registry.delete(&name).await?))
}

pub(super) fn parse_config(bytes: &[u8]) -> Result<serde_json::Value, Failure> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, format!("the config is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "the config must be a JSON object",
        ));
    }
    Ok(value)
}
