//! The live dashboard: one page at `/` and its assets under `/dashboard/{file}`, all compiled
//! into the binary so that the page works on a hub without Internet access.
//!
//! The page is static; it reads the admin API (`/api/status`, its history and its event stream,
//! dead letters, plugins) with the operator's bearer token, so serving it needs no token and
//! shows nothing by itself. Our own files are `dashboard/index.html`, `dashboard.js` and
//! `dashboard.css`; `dashboard/vendor/uplot/` holds uPlot (MIT), unchanged.

use crate::http_error::Failure;
use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::LazyLock;

/// A file of the page.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("dashboard/index.html"),
    },
    Asset {
        name: "dashboard.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("dashboard/dashboard.js"),
    },
    Asset {
        name: "dashboard.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("dashboard/dashboard.css"),
    },
    Asset {
        name: "uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("dashboard/vendor/uplot/uPlot.iife.min.js"),
    },
    Asset {
        name: "uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("dashboard/vendor/uplot/uPlot.min.css"),
    },
];

/// Each asset's entity tag: a hash of its bytes. The file names carry no version, so browsers
/// revalidate every load (`no-cache`) and a hub upgrade is seen at once; an unchanged file costs
/// a 304.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let tag = format!("\"{:016x}\"", xxhash_rust::xxh3::xxh3_64(a.body));
            HeaderValue::from_str(&tag).unwrap_or(HeaderValue::from_static("\"\""))
        })
        .collect()
});

/// The page keeps a bearer token: it runs only our own scripts, talks only to this hub, and
/// is framed by no other site.
const CSP: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// `/` (the page) and `/dashboard/{file}` (its scripts and styles), for any server state.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|headers: HeaderMap| async move { serve("index.html", &headers) }),
        )
        .route(
            "/dashboard/{file}",
            get(|Path(file): Path<String>, headers: HeaderMap| async move { serve(&file, &headers) }),
        )
}

fn serve(name: &str, request: &HeaderMap) -> Response {
    let Some(index) = ASSETS.iter().position(|a| a.name == name) else {
        return Failure::new(StatusCode::NOT_FOUND, format!("no such dashboard file: {name}")).into_response();
    };
    let asset = &ASSETS[index];
    let etag = ETAGS[index].clone();
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::ETAG, etag),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
    ];
    if fresh {
        (StatusCode::NOT_MODIFIED, headers).into_response()
    } else {
        (headers, asset.body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(path: &str, if_none_match: Option<&str>) -> Response {
        let mut request = Request::get(path);
        if let Some(tag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        router::<()>()
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("response")
    }

    fn header_of(response: &Response, name: header::HeaderName) -> &str {
        response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    #[tokio::test]
    async fn the_page_and_its_assets_are_served_with_their_types() {
        for (path, content_type) in [
            ("/", "text/html; charset=utf-8"),
            ("/dashboard/dashboard.js", "text/javascript; charset=utf-8"),
            ("/dashboard/dashboard.css", "text/css; charset=utf-8"),
            ("/dashboard/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
            ("/dashboard/uPlot.min.css", "text/css; charset=utf-8"),
        ] {
            let response = get(path, None).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(header_of(&response, header::CONTENT_TYPE), content_type, "{path}");
            assert_eq!(header_of(&response, header::CACHE_CONTROL), "no-cache", "{path}");
            let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
            assert!(!body.is_empty(), "{path}");
        }
    }

    #[test]
    fn every_file_the_page_names_is_served() {
        let page = String::from_utf8_lossy(ASSETS[0].body);
        for name in ASSETS.iter().skip(1).map(|a| a.name) {
            assert!(page.contains(&format!("/dashboard/{name}")), "index.html loads {name}");
        }
    }

    #[tokio::test]
    async fn an_unchanged_file_is_not_sent_again() {
        let first = get("/dashboard/dashboard.js", None).await;
        let tag = header_of(&first, header::ETAG).to_owned();
        assert!(tag.starts_with('"'), "{tag}");
        let again = get("/dashboard/dashboard.js", Some(&tag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        let other = get("/dashboard/dashboard.js", Some("\"something else\"")).await;
        assert_eq!(other.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn other_files_are_not_found() {
        for path in ["/dashboard/nope.js", "/dashboard/..%2FCargo.toml"] {
            let response = get(path, None).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
            assert_eq!(header_of(&response, header::CONTENT_TYPE), "application/json", "{path}");
        }
        assert_eq!(get("/dashboard/", None).await.status(), StatusCode::NOT_FOUND);
    }
}
