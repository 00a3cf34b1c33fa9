//! `/api/plugins`: list, upload (hot swap), show, configure, roll back, enable, disable, delete,
//! and the tenants a plugin runs for.

use super::{ApiError, Failure};
use super::{ApiState, Caller};
use crate::event::rfc3339;
use crate::registry::{Change, PluginRecord};
use crate::runtime::Description;
use crate::shadow::ShadowStatus;
use crate::stats::Summary;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
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
    /// The tenants whose events it takes; absent: every tenant's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<Vec<String>>,
    #[serde(flatten)]
    pub stats: Summary,
}

/// `GET /api/plugins/{name}`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PluginDetail {
    pub name: String,
    pub active_version: u32,
    pub enabled: bool,
    /// The tenants whose events it takes; absent: every tenant's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<Vec<String>>,
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
    /// Comma-separated declared tenants whose events it takes (`*`: every tenant's); default:
    /// as before (every tenant's, for a new plugin).
    tenants: Option<String>,
}

/// `PUT /api/plugins/{name}/tenants`.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct TenantsRequest {
    /// Declared tenants whose events it takes; `null`: every tenant's.
    pub tenants: Option<Vec<String>>,
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
        tenants: record.tenants.clone(),
        stats,
    }
}

/// All plugins with their active version and call statistics.
#[utoipa::path(get, path = "/api/plugins", tag = "plugins",
    responses((status = 200, body = [PluginSummary]), (status = 401, body = ApiError)))]
pub async fn list(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<PluginSummary>>, Failure> {
    let records = s.registry.plugins()?;
    Ok(Json(
        records
            .iter()
            .filter(|r| caller.reaches(r.tenants.as_deref()))
            .map(|r| summary(r, s.stats.summary(&r.name)))
            .collect(),
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
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(params): Query<PushParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Change>, Failure> {
    wasm_body(&headers)?;
    let config = params.config.map(|c| parse_config(c.as_bytes())).transpose()?;
    let mut tenants = match params.tenants.as_deref() {
        None => None,
        Some("*") => Some(None),
        Some(list) => Some(Some(declared(&s, list.split(',').map(str::to_owned).collect())?)),
    };
    if let Caller::Tenant(own) = &caller {
        // A tenant's plugin runs for it alone; a name of another's is not its to replace.
        let own = vec![own.to_string()];
        if tenants.as_ref().is_some_and(|t| t.as_ref() != Some(&own)) {
            return Err(forbidden(&caller));
        }
        match s.registry.plugin(&name) {
            Ok(record) if !caller.reaches(record.tenants.as_deref()) => {
                return Err(Failure::new(
                    StatusCode::CONFLICT,
                    format!("the plugin name {name:?} is taken; choose another"),
                ));
            }
            Ok(_) => {}
            Err(_) => tenants = Some(Some(own)),
        }
    }
    if params.shadow == Some(true) {
        if tenants.is_some() {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "a shadow runs for its active version's tenants; set them on the plugin",
            ));
        }
        return Ok(Json(s.registry.upload_shadow(&name, body, config).await?));
    }
    match tenants {
        // Every tenant's again: the upload, then the scope (the plugin took more, not less).
        Some(None) => {
            let change = s.registry.upload(&name, body, config).await?;
            let scoped = s.registry.set_tenants(&name, None).await?;
            Ok(Json(Change {
                changed: change.changed || scoped.changed,
                ..scoped
            }))
        }
        Some(Some(named)) => {
            within_plugin_quota(&s, &name, &named)?;
            Ok(Json(s.registry.upload_for(&name, body, config, Some(named)).await?))
        }
        None => Ok(Json(s.registry.upload(&name, body, config).await?)),
    }
}

/// Run the plugin for the named tenants only, or (`null`) for every tenant, in one switch.
#[utoipa::path(put, path = "/api/plugins/{name}/tenants", tag = "plugins",
    params(("name" = String, Path, description = "Plugin name")),
    request_body = TenantsRequest,
    responses((status = 200, body = Change), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 404, body = ApiError)))]
pub async fn tenants(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Change>, Failure> {
    if caller != Caller::Admin {
        return Err(forbidden(&caller));
    }
    let request: TenantsRequest = super::from_json_object(&body).map_err(|e| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"tenants\": [names] or null}}: {e}"),
        )
    })?;
    let tenants = request.tenants.map(|named| declared(&s, named)).transpose()?;
    if let Some(named) = &tenants {
        within_plugin_quota(&s, &name, named)?;
    }
    Ok(Json(s.registry.set_tenants(&name, tenants).await?))
}

/// Refuse to make plugin `name` run for `tenants` when one of them would have more plugins of
/// its own than its `max_plugins`.
fn within_plugin_quota(s: &ApiState, name: &str, tenants: &[String]) -> Result<(), Failure> {
    let records = s.registry.plugins()?;
    for tenant in tenants {
        let Some(max) = s.tenants.max_plugins(tenant) else {
            continue;
        };
        let others = records
            .iter()
            .filter(|r| r.name != name && r.tenants.as_ref().is_some_and(|t| t.contains(tenant)))
            .count();
        if others >= max as usize {
            metrics::counter!(crate::metrics::TENANT_QUOTA_REFUSALS, "tenant" => tenant.clone(), "quota" => "max_plugins")
                .increment(1);
            return Err(Failure::new(
                StatusCode::CONFLICT,
                format!(
                    "tenant {tenant:?} has {others} plugins of its own, its quota ([tenants.{tenant}] max_plugins = {max}); remove one first"
                ),
            ));
        }
    }
    Ok(())
}

/// A plugin of `name` the caller reaches (a tenant's token: one that runs for its tenant
/// alone); another tenant's is as good as absent.
pub(super) fn reach(s: &ApiState, caller: &Caller, name: &str) -> Result<(), Failure> {
    if let Caller::Tenant(own) = caller {
        let record = s.registry.plugin(name)?;
        if !caller.reaches(record.tenants.as_deref()) {
            return Err(Failure::new(
                StatusCode::NOT_FOUND,
                format!("no plugin {name:?} of tenant {own:?}"),
            ));
        }
    }
    Ok(())
}

/// What a tenant's token may not do.
fn forbidden(caller: &Caller) -> Failure {
    let who = match caller {
        Caller::Tenant(own) => format!("the token of tenant {own:?}"),
        Caller::Admin => "the admin".into(),
    };
    Failure::new(
        StatusCode::FORBIDDEN,
        format!("{who} loads plugins for its own tenant only; the admin chooses a plugin's tenants"),
    )
}

/// `names`, each a declared tenant, sorted, at least one.
fn declared(s: &ApiState, mut names: Vec<String>) -> Result<Vec<String>, Failure> {
    let bad = |e: String| Failure::new(StatusCode::BAD_REQUEST, e);
    names.retain(|n| !n.is_empty());
    if names.is_empty() {
        return Err(bad(
            "name at least one tenant (or every tenant: null, or * in a query)".into()
        ));
    }
    for name in &names {
        s.tenants.resolve(Some(name), None).map_err(bad)?;
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// Make the shadow the active version, in one switch as a swap is: it carries on with the
/// active version's state and timers, and the shadow's own are dropped.
#[utoipa::path(post, path = "/api/plugins/{name}/promote", tag = "plugins",
    params(("name" = String, Path, description = "Plugin name")),
    responses((status = 200, body = Change), (status = 401, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "No shadow runs")))]
pub async fn promote(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Change>, Failure> {
    reach(&s, &caller, &name)?;
    Ok(Json(s.registry.promote(&name).await?))
}

/// Stop the shadow and drop its state and timers (its version stays in the history).
#[utoipa::path(delete, path = "/api/plugins/{name}/shadow", tag = "plugins",
    params(("name" = String, Path, description = "Plugin name")),
    responses((status = 200, body = Change), (status = 401, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "No shadow runs")))]
pub async fn drop_shadow(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Change>, Failure> {
    reach(&s, &caller, &name)?;
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
pub async fn show(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<PluginDetail>, Failure> {
    reach(&s, &caller, &name)?;
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
        tenants: record.tenants,
    }))
}

/// New template parameters for the running code (a new version with the same wasm, validated
/// by `init` before it goes live).
#[utoipa::path(put, path = "/api/plugins/{name}/config", tag = "plugins",
    params(("name" = String, Path, description = "Plugin name")),
    request_body(content = Object, content_type = "application/json"),
    responses((status = 200, body = Change), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 404, body = ApiError), (status = 422, body = ApiError, description = "init rejected the config")))]
pub async fn config(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Change>, Failure> {
    reach(&s, &caller, &name)?;
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
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Change>, Failure> {
    reach(&s, &caller, &name)?;
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
pub async fn enable(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Change>, Failure> {
    reach(&s, &caller, &name)?;
    Ok(Json(s.registry.set_enabled(&name, true).await?))
}

/// Stop running the plugin without forgetting it: it gets no events, and its timers that come
/// due are dead-lettered as `disabled`.
#[utoipa::path(post, path = "/api/plugins/{name}/disable", tag = "plugins",
    params(("name" = String, Path, description = "Plugin name")),
    responses((status = 200, body = Change), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
pub async fn disable(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Change>, Failure> {
    reach(&s, &caller, &name)?;
    Ok(Json(s.registry.set_enabled(&name, false).await?))
}

/// Stop the plugin and forget its versions (its state stays, for a plugin of the same name).
#[utoipa::path(delete, path = "/api/plugins/{name}", tag = "plugins",
    params(("name" = String, Path, description = "Plugin name")),
    responses((status = 200, body = Change), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
pub async fn remove(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Change>, Failure> {
    reach(&s, &caller, &name)?;
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
