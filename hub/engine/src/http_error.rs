//! The JSON error answer of every HTTP route (`{"error": …}`), shared by the admin API and the
//! device connections on `/push`; a leaf, so neither has to import the other.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The body of every error answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ApiError {
    pub error: String,
}

/// An error answer: a status and a message for the admin.
pub struct Failure(StatusCode, String);

impl Failure {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Failure {
        Failure(status, message.into())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

/// Error answers not made by [`Failure`] (axum's rejections: 413 for a body over the limit, 405,
/// 415, an unknown route's empty 404…) become `{"error": <their text, or the status's reason>}`,
/// so a client reads every error of the hub the same way. JSON answers pass unchanged.
pub async fn json_errors(response: Response) -> Response {
    /// Rejection texts are a line or two; a longer body is cut to its status's reason.
    const MAX_TEXT: usize = 4096;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim();
            mime.eq_ignore_ascii_case("application/json") || mime.to_ascii_lowercase().ends_with("+json")
        });
    if status.as_u16() < 400 || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_TEXT)
        .await
        .ok()
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_ENCODING);
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    let body = serde_json::to_vec(&ApiError { error: text }).unwrap_or_default();
    Response::from_parts(parts, axum::body::Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    async fn body_of(response: Response) -> (StatusCode, Option<String>, Value) {
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.expect("body");
        (status, content_type, serde_json::from_slice(&bytes).expect("JSON"))
    }

    #[tokio::test]
    async fn error_answers_in_plain_text_become_json() {
        let text = (
            StatusCode::PAYLOAD_TOO_LARGE,
            "Failed to buffer the body: length limit exceeded",
        )
            .into_response();
        let (status, content_type, body) = body_of(json_errors(text).await).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(content_type.as_deref(), Some("application/json"));
        assert_eq!(
            body,
            serde_json::json!({"error": "Failed to buffer the body: length limit exceeded"})
        );

        let empty = StatusCode::METHOD_NOT_ALLOWED.into_response();
        let (_, _, body) = body_of(json_errors(empty).await).await;
        assert_eq!(body, serde_json::json!({"error": "Method Not Allowed"}));

        let own = Failure::new(StatusCode::CONFLICT, "nothing to roll back").into_response();
        let (status, _, body) = body_of(json_errors(own).await).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::CONFLICT,
                serde_json::json!({"error": "nothing to roll back"})
            )
        );
    }
}
