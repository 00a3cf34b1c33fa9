//! Bearer-token check for admin calls.

use super::Failure;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::Arc;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// Who may call the admin API.
#[derive(Clone, Debug)]
pub enum Auth {
    /// Callers must send this bearer token.
    Token(Arc<str>),
    /// No token configured, listening on loopback: open (the local default).
    OpenOnLoopback,
    /// No token configured on a non-loopback address: every call is refused.
    Closed,
}

impl Auth {
    pub fn new(token: Option<String>, listen: SocketAddr) -> Auth {
        match token.filter(|t| !t.is_empty()) {
            Some(t) => Auth::Token(t.into()),
            None if listen.ip().is_loopback() => {
                tracing::warn!("admin API without a token (HUB_ADMIN_TOKEN unset): open to local callers only");
                Auth::OpenOnLoopback
            }
            None => {
                tracing::warn!(%listen, "admin API disabled: set HUB_ADMIN_TOKEN to use it on a non-loopback address");
                Auth::Closed
            }
        }
    }
}

pub async fn require_token(State(auth): State<Auth>, request: Request, next: Next) -> Response {
    let denied = match &auth {
        Auth::OpenOnLoopback => None,
        Auth::Closed => Some("the admin API is disabled: the hub listens beyond loopback and HUB_ADMIN_TOKEN is unset"),
        Auth::Token(expected) => {
            let given = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer_token);
            match given {
                Some(t) if same(t.as_bytes(), expected.as_bytes()) => None,
                Some(_) => Some("wrong bearer token"),
                None => Some("this call needs Authorization: Bearer <HUB_ADMIN_TOKEN>"),
            }
        }
    };
    match denied {
        None => next.run(request).await,
        Some(why) => {
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
