//! The admin REST API under `/api/` (JSON): plugins and their versions, actors
//! (profile, state, timers, action ledger, erasure), contact policies, kept dead letters.
//!
//! Every call but `GET /api/openapi.json` needs `Authorization: Bearer $HUB_ADMIN_TOKEN`. Without
//! a configured token the API is open only when the hub listens on loopback (the local default
//! of `hub up`), and the hub says so at start; on any other address it refuses every call.
//! Errors are `{"error": "..."}` with a message meant for the admin: the handlers' own, and
//! every other error answer too (axum's rejections, unknown routes, …), rewritten by
//! [`json_errors`].

pub mod actors;
mod auth;
pub mod backtest;
pub mod dead_letters;
pub mod plugins;
pub mod policies;
pub mod status;
pub mod tenants;

pub use crate::http_error::{ApiError, Failure, json_errors};
use auth::BearerScheme;
pub use auth::{Auth, Caller};

use axum::Json;
use axum::http::StatusCode;
use axum::routing::{delete, get, post, put};
use serde::de::{self, Deserializer, IntoDeserializer, Visitor};
use serde_json::Value;
use utoipa::OpenApi;

/// What the API's handlers can see of the running hub.
#[derive(Clone)]
pub struct ApiState {
    pub router: crate::router::Router,
    pub registry: std::sync::Arc<crate::registry::Registry>,
    pub stats: std::sync::Arc<crate::stats::PluginStats>,
    pub profiles: crate::state::Profiles,
    pub policies: crate::arbiter::PolicyStore,
    pub auth: Auth,
    /// Upload bodies up to this size (plus room for the refusal to say why) are read.
    pub max_module_bytes: usize,
    /// The kept dead letters (`None`: the stream could not be set up).
    pub dead_letters: Option<crate::dead_letter::KeptLetters>,
    /// For publishing replays.
    pub nats: async_nats::Client,
    /// The headline figures, taken once a second.
    pub status: std::sync::Arc<crate::status::StatusBoard>,
    /// Where replayed deliveries go.
    pub sinks: crate::delivery::Sinks,
    /// Backtests of candidate versions (`None` with core input: no inputs are kept).
    pub backtests: Option<std::sync::Arc<crate::backtest::Backtester>>,
    /// The cluster this instance takes part in (`None`: a single hub).
    pub cluster: Option<std::sync::Arc<crate::cluster::Cluster>>,
    /// The tenants actors may be named in (`?tenant=`).
    pub tenants: crate::tenant::Tenants,
    /// The state database, for tenant-wide scans.
    pub db: crate::state::Db,
}

impl ApiState {
    /// The tenant a call is about: the one `asked` for (`?tenant=`, a path), or a tenant
    /// token's own; `None`: the default tenant. 403 past the caller's reach, 400 for a tenant
    /// that is not declared.
    pub fn tenant_for<'a>(&self, caller: &'a Caller, asked: Option<&'a str>) -> Result<Option<&'a str>, Failure> {
        self.tenants
            .resolve(caller.tenant(asked)?, None)
            .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, e))
    }
}

/// The API's routes, for a server whose state `S` holds an [`ApiState`].
pub fn router<S>(state: &ApiState) -> axum::Router<S>
where
    ApiState: axum::extract::FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    let body_limit = state.max_module_bytes.saturating_add(1 << 20);
    let guarded = axum::Router::new()
        .route("/api/plugins", get(plugins::list))
        .route(
            "/api/plugins/{name}",
            put(plugins::push).get(plugins::show).delete(plugins::remove),
        )
        .route("/api/plugins/{name}/config", put(plugins::config))
        .route("/api/plugins/{name}/tenants", put(plugins::tenants))
        .route("/api/plugins/{name}/backtest", post(backtest::run))
        .route("/api/plugins/{name}/promote", post(plugins::promote))
        .route("/api/plugins/{name}/shadow", delete(plugins::drop_shadow))
        .route("/api/plugins/{name}/rollback", post(plugins::rollback))
        .route("/api/plugins/{name}/enable", post(plugins::enable))
        .route("/api/plugins/{name}/disable", post(plugins::disable))
        .route(
            "/api/policies",
            get(policies::show).put(policies::replace).delete(policies::forget),
        )
        .route("/api/status", get(status::current))
        .route("/api/whoami", get(auth::whoami))
        .route("/api/cluster", get(status::cluster))
        .route("/api/status/history", get(status::history))
        .route("/api/status/stream", get(status::stream))
        .route("/api/tenants/{name}", get(tenants::show).delete(tenants::erase))
        .route("/api/tenants/{name}/export", get(tenants::export))
        .route("/api/dead-letters", get(dead_letters::list))
        .route("/api/dead-letters/replay", post(dead_letters::replay_reason))
        .route("/api/dead-letters/{seq}", get(dead_letters::show))
        .route("/api/dead-letters/{seq}/replay", post(dead_letters::replay_one))
        .merge(
            axum::Router::new()
                .route("/api/actors/{id}", get(actors::show).delete(actors::erase))
                .route(
                    "/api/actors/{id}/profile",
                    put(actors::put_profile).patch(actors::patch_profile),
                )
                .route_layer(axum::middleware::from_fn_with_state(state.clone(), actors::at_owner)),
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
        plugins::tenants,
        plugins::rollback,
        plugins::enable,
        plugins::disable,
        plugins::remove,
        backtest::run,
        plugins::promote,
        plugins::drop_shadow,
        actors::show,
        actors::put_profile,
        actors::patch_profile,
        actors::erase,
        tenants::show,
        tenants::export,
        tenants::erase,
        policies::show,
        policies::replace,
        policies::forget,
        status::cluster,
        dead_letters::list,
        dead_letters::show,
        dead_letters::replay_one,
        dead_letters::replay_reason,
        status::current,
        status::history,
        status::stream,
        auth::whoami
    ),
    components(schemas(ApiError)),
    modifiers(&BearerScheme),
    security(("bearer" = []))
)]
struct ApiDoc;

/// Make the same call on another member of the cluster (at `http`), with the caller's
/// credentials: how an instance passes on what another one holds.
pub(crate) async fn on_member(
    http: &str,
    method: reqwest::Method,
    path: &str,
    headers: &axum::http::HeaderMap,
) -> Result<reqwest::Response, reqwest::Error> {
    let mut request = reqwest::Client::new().request(method, format!("http://{http}{path}"));
    if let Some(auth) = headers.get(axum::http::header::AUTHORIZATION) {
        request = request.header(axum::http::header::AUTHORIZATION, auth.clone());
    }
    request.send().await
}

/// The OpenAPI description of this API, generated from the handlers.
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// Read a request body as `T`, a struct the API takes as a JSON object.
///
/// serde's derived structs also accept a JSON array, matching fields by position: `[]` read as
/// policies was every field at its default, i.e. no limits at all. Here a struct is read only
/// from a JSON object, at the top and at every depth.
pub fn from_json_object<T: de::DeserializeOwned>(body: &[u8]) -> Result<T, serde_json::Error> {
    let value: Value = serde_json::from_slice(body)?;
    if !value.is_object() {
        return Err(de::Error::custom(format!(
            "the body must be a JSON object, not {}",
            kind(&value)
        )));
    }
    T::deserialize(ObjectsOnly(value))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON value that deserializes structs from objects only (see [`from_json_object`]).
struct ObjectsOnly(Value);

impl ObjectsOnly {
    fn visit_array<'de, V: Visitor<'de>>(items: Vec<Value>, visitor: V) -> Result<V::Value, serde_json::Error> {
        let mut seq = de::value::SeqDeserializer::new(items.into_iter().map(ObjectsOnly));
        let value = visitor.visit_seq(&mut seq)?;
        seq.end()?;
        Ok(value)
    }

    fn visit_object<'de, V: Visitor<'de>>(
        map: serde_json::Map<String, Value>,
        visitor: V,
    ) -> Result<V::Value, serde_json::Error> {
        let mut map = de::value::MapDeserializer::new(map.into_iter().map(|(k, v)| (k, ObjectsOnly(v))));
        let value = visitor.visit_map(&mut map)?;
        map.end()?;
        Ok(value)
    }
}

impl<'de> IntoDeserializer<'de, serde_json::Error> for ObjectsOnly {
    type Deserializer = ObjectsOnly;

    fn into_deserializer(self) -> ObjectsOnly {
        self
    }
}

impl<'de> Deserializer<'de> for ObjectsOnly {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Array(items) => Self::visit_array(items, visitor),
            Value::Object(map) => Self::visit_object(map, visitor),
            scalar => scalar.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            value => visitor.visit_some(ObjectsOnly(value)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(map) => Self::visit_object(map, visitor),
            other => Err(de::Error::custom(format!(
                "expected {}, found {}: it must be a JSON object",
                Expected(&visitor),
                kind(&other)
            ))),
        }
    }

    /// Enums keep serde_json's reading (the API reads none holding a struct).
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf unit
        unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

/// What a visitor expects, for an error message.
struct Expected<'a, V>(&'a V);

impl<'de, V: Visitor<'de>> std::fmt::Display for Expected<'_, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.expecting(f)
    }
}

impl From<crate::registry::AdminError> for Failure {
    fn from(e: crate::registry::AdminError) -> Failure {
        use crate::registry::AdminError as E;
        use crate::runtime::LoadError;
        let status = match &e {
            E::BadName(_) | E::ConfigNotObject => StatusCode::BAD_REQUEST,
            E::NotFound(_) | E::NoSuchVersion { .. } => StatusCode::NOT_FOUND,
            E::NothingToRollBack(_) | E::NoShadow(_) | E::ShadowOfDisabled(_) => StatusCode::CONFLICT,
            E::Refused(LoadError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            E::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            E::Store(_) | E::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            E::Shared(crate::cluster::plugins::SharedError::Conflict(_)) => StatusCode::CONFLICT,
            // The cluster's registry cannot be reached now: nothing changed, try again.
            E::Shared(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        Failure::new(status, e.to_string())
    }
}

impl From<crate::registry::StoreError> for Failure {
    fn from(e: crate::registry::StoreError) -> Failure {
        Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arbiter::Policies;

    #[test]
    fn policies_from_a_json_array_are_refused_at_any_depth() {
        let err = from_json_object::<Policies>(b"[]").expect_err("refused");
        assert_eq!(err.to_string(), "the body must be a JSON object, not an array");
        let err = from_json_object::<Policies>(br#"{"max_actions": [1, "1h"]}"#).expect_err("refused");
        assert!(
            err.to_string().contains("expected struct Limit, found an array"),
            "{err}"
        );
        let err =
            from_json_object::<Policies>(br#"{"suppressions": [["support", ["offer"], "1h"]]}"#).expect_err("refused");
        assert!(
            err.to_string().contains("expected struct Suppression, found an array"),
            "{err}"
        );
        let err = from_json_object::<Policies>(br#"{"categories": {"offer": [1, null, "0s"]}}"#).expect_err("refused");
        assert!(
            err.to_string()
                .contains("expected struct CategoryPolicy, found an array"),
            "{err}"
        );
    }

    #[test]
    fn policies_from_a_json_object_read_as_before() {
        let example = Policies::example();
        let json = serde_json::to_vec(&example).expect("json");
        assert_eq!(from_json_object::<Policies>(&json).expect("object"), example);
        assert_eq!(
            from_json_object::<Policies>(br#"{"max_actions": null}"#).expect("null limit"),
            Policies::default()
        );
        let err = from_json_object::<Policies>(br#"{"max_action": {}}"#).expect_err("typo");
        assert!(err.to_string().contains("unknown field `max_action`"), "{err}");
        let err = from_json_object::<Policies>(br#"{"conflict_window": "soon"}"#).expect_err("bad");
        assert!(err.to_string().contains("\"soon\" is not a duration"), "{err}");
        let err = from_json_object::<Policies>(br#"{"max_actions": {"count": -1, "window": "1h"}}"#).expect_err("bad");
        assert!(err.to_string().contains("invalid value: integer `-1`"), "{err}");
    }
}
