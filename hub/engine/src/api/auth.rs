//! Bearer-token check for admin calls, and who made them: the admin, or a tenant whose own
//! token (`[tenants.<name>] token`) lets it reach its own actors, plugins and dead letters only.

use super::Failure;
use crate::tenant::TenantConfig;
use axum::Json;
use axum::extract::{Extension, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// Who may call the admin API: the admin (see [`Admin`]) and the tenants with a token.
#[derive(Clone, Debug)]
pub struct Auth {
    admin: Admin,
    /// (token, tenant).
    tenants: Arc<[(Arc<str>, Arc<str>)]>,
}

/// How the admin is recognised.
#[derive(Clone, Debug)]
pub enum Admin {
    /// Callers must send this bearer token.
    Token(Arc<str>),
    /// No token configured, listening on loopback: open (the local default).
    OpenOnLoopback,
    /// No token configured on a non-loopback address: every call is refused.
    Closed,
}

impl Auth {
    pub fn new(token: Option<String>, listen: SocketAddr) -> Auth {
        let admin = match token.filter(|t| !t.is_empty()) {
            Some(t) => Admin::Token(t.into()),
            None if listen.ip().is_loopback() => {
                tracing::warn!("admin API without a token (HUB_ADMIN_TOKEN unset): open to local callers only");
                Admin::OpenOnLoopback
            }
            None => {
                tracing::warn!(%listen, "admin API disabled: set HUB_ADMIN_TOKEN to use it on a non-loopback address");
                Admin::Closed
            }
        };
        Auth {
            admin,
            tenants: Arc::from([]),
        }
    }

    /// The admin with `token` (see [`Auth::new`]).
    pub fn token(token: &str) -> Auth {
        Auth {
            admin: Admin::Token(token.into()),
            tenants: Arc::from([]),
        }
    }

    /// The tenants' own tokens, each different from the admin's and from one another.
    pub fn with_tenants(mut self, tenants: &BTreeMap<String, TenantConfig>) -> Result<Auth, String> {
        let mut tokens: Vec<(Arc<str>, Arc<str>)> = Vec::new();
        for (name, config) in tenants {
            let Some(token) = config.token.as_deref().filter(|t| !t.is_empty()) else {
                continue;
            };
            let taken = tokens.iter().any(|(t, _)| same(t.as_bytes(), token.as_bytes()))
                || matches!(&self.admin, Admin::Token(admin) if same(admin.as_bytes(), token.as_bytes()));
            if taken {
                return Err(format!(
                    "tenant {name:?} has the token of the admin or of another tenant; each needs its own"
                ));
            }
            tokens.push((token.into(), name.as_str().into()));
        }
        self.tenants = tokens.into();
        Ok(self)
    }

    /// Who presents `given`, or why the call is refused.
    fn caller(&self, given: Option<&str>) -> Result<Caller, &'static str> {
        if let Some(token) = given
            && let Some((_, tenant)) = self.tenants.iter().find(|(t, _)| same(t.as_bytes(), token.as_bytes()))
        {
            return Ok(Caller::Tenant(tenant.clone()));
        }
        match (&self.admin, given) {
            (Admin::OpenOnLoopback, _) => Ok(Caller::Admin),
            (Admin::Closed, _) => {
                Err("the admin API is disabled: the hub listens beyond loopback and HUB_ADMIN_TOKEN is unset")
            }
            (Admin::Token(expected), Some(t)) if same(t.as_bytes(), expected.as_bytes()) => Ok(Caller::Admin),
            (Admin::Token(_), Some(_)) => Err("wrong bearer token"),
            (Admin::Token(_), None) => Err("this call needs Authorization: Bearer <HUB_ADMIN_TOKEN>"),
        }
    }
}

/// Who made an admin call (a request extension the handlers read).
#[derive(Clone, Debug, PartialEq)]
pub enum Caller {
    Admin,
    Tenant(Arc<str>),
}

impl Caller {
    /// The tenant an actor of the call belongs to, `asked` for (`?tenant=`): a tenant's token
    /// reaches its own tenant's actors only, which it need not name.
    pub fn tenant<'a>(&'a self, asked: Option<&'a str>) -> Result<Option<&'a str>, Failure> {
        match (self, asked) {
            (Caller::Admin, asked) => Ok(asked),
            (Caller::Tenant(own), None) => Ok(Some(own)),
            (Caller::Tenant(own), Some(asked)) if asked == &**own => Ok(Some(own)),
            (Caller::Tenant(own), Some(asked)) => Err(Failure::new(
                StatusCode::FORBIDDEN,
                format!("the token of tenant {own:?} does not reach tenant {asked:?}"),
            )),
        }
    }

    /// Whether the call may see or change a plugin that runs for `tenants` (`None`: every
    /// tenant): a tenant's token reaches the plugins that run for its tenant alone.
    pub fn reaches(&self, tenants: Option<&[String]>) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Tenant(own) => matches!(tenants, Some([only]) if only == &**own),
        }
    }

    /// Whether the call may see a dead letter of `tenant` (`None`: the default one, or none).
    pub fn sees(&self, tenant: Option<&str>) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Tenant(own) => tenant == Some(&**own),
        }
    }
}

/// `GET /api/whoami`: whose token the call carries.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Whoami {
    /// The tenant whose own token it is; absent: the admin's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// Whose token this is: the admin's, or a tenant's (which reaches that tenant alone). The
/// dashboard asks it first, to show a tenant its own figures instead of the hub's.
#[utoipa::path(get, path = "/api/whoami", tag = "status",
    responses((status = 200, body = Whoami), (status = 401, body = super::ApiError)))]
pub async fn whoami(Extension(caller): Extension<Caller>) -> Json<Whoami> {
    Json(Whoami {
        tenant: match caller {
            Caller::Admin => None,
            Caller::Tenant(tenant) => Some(tenant.to_string()),
        },
    })
}

/// What a tenant's token may call: its actors, plugins, contact policies, dead letters, figures
/// and export (each handler keeps it to its own tenant), and who it is. Status, the cluster and
/// the history are the platform's.
fn tenants_may_call(path: &str) -> bool {
    path == "/api/whoami"
        || [
            "/api/actors/",
            "/api/plugins",
            "/api/dead-letters",
            "/api/tenants/",
            "/api/policies",
        ]
        .iter()
        .any(|prefix| path.starts_with(prefix))
}

pub async fn require_token(State(auth): State<Auth>, mut request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    match auth.caller(given) {
        Ok(Caller::Tenant(tenant)) if !tenants_may_call(request.uri().path()) => Failure::new(
            StatusCode::FORBIDDEN,
            format!(
                "the token of tenant {tenant:?} reaches /api/actors, /api/plugins, /api/policies, /api/dead-letters and /api/tenants/{tenant} of its own tenant only (and /api/whoami)"
            ),
        )
        .into_response(),
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(why) => {
            let mut response = Failure::new(StatusCode::UNAUTHORIZED, why).into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            response
        }
    }
}

/// The token of `Authorization: Bearer <token>`. The scheme name is case-insensitive (RFC 9110
/// §11.1): clients that send `bearer` or `BEARER` are as right as those that send `Bearer`.
fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once([' ', '\t'])?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compare without stopping at the first difference, so timing does not reveal the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Declares the bearer scheme in the OpenAPI document.
pub struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{bearer_token, same};

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for header in ["Bearer t0k", "bearer t0k", "BEARER t0k", "bEaReR   t0k ", "Bearer\tt0k"] {
            assert_eq!(bearer_token(header), Some("t0k"), "{header:?}");
        }
        for header in ["Basic dDBr", "Bearert0k", "t0k", "", "Bearer"] {
            assert_eq!(bearer_token(header), None, "{header:?}");
        }
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
    }
}
