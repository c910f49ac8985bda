//! The web console at `/ui`: one page, a script and a stylesheet, embedded in the binary at
//! build time (no front-end server, no CDN: it works offline). The page signs in with a
//! project's secret key, kept in the browser session and sent as a bearer header; it reads
//! through the read API and `GET /api/v2/events/live`. Event data is shown as text only
//! (the script never builds HTML from data), and the content security policy allows no
//! script but the console's own.

use axum::extract::Path;
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

const INDEX: &str = include_str!("../../ui/index.html");
const SCRIPT: &str = include_str!("../../ui/app.js");
const STYLE: &str = include_str!("../../ui/app.css");

/// Only the console's own files, no inline script or style, no framing, no referrer.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                      connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                      form-action 'none'; frame-ancestors 'none'";

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                HeaderName::from_static("cross-origin-opener-policy"),
                HeaderValue::from_static("same-origin"),
            ),
        ],
        body,
    )
        .into_response()
}

/// `GET /`: a newcomer's browser opening the server's address is sent to the console; the
/// body says where it is for clients that do not follow redirects.
pub async fn root() -> Response {
    (
        axum::http::StatusCode::SEE_OTHER,
        [
            (header::LOCATION, HeaderValue::from_static("/ui")),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
        ],
        r#"{"status":303,"message":"/: the web console is at /ui, the Vero API at /api/v2"}"#,
    )
        .into_response()
}

/// `GET /ui`.
pub async fn page() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

/// `GET /ui/{file}`: the script and the stylesheet.
pub async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    match name.as_str() {
        "app.js" => Ok(file("text/javascript; charset=utf-8", SCRIPT)),
        "app.css" => Ok(file("text/css; charset=utf-8", STYLE)),
        _ => Err(ApiError::NotFound(format!("/ui/{name}: no such file"))),
    }
}
