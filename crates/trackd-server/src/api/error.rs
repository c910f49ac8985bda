//! The one place that knows HTTP status codes: every refusal is an [`ApiError`], answered as
//! `{"status":<code>,"message":"<field path>: <what is wrong>"}` with the same status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use trackd_core::{FieldError, StoreError};

/// Why a request was refused.
#[derive(Debug)]
pub enum ApiError {
    /// 400: malformed body, missing or invalid field, secret key in a query string.
    BadRequest(FieldError),
    /// 401: credential missing or unknown.
    Unauthorized(String),
    /// 403: credential valid but not allowed here.
    Forbidden(String),
    /// 404: no such route, or no such user where the operation needs one.
    NotFound(String),
    /// 409: the thing to create exists already.
    Conflict(String),
    /// 405: the route exists, the method does not.
    MethodNotAllowed {
        /// The request path.
        path: String,
        /// The methods the route takes, for the `Allow` header.
        allow: &'static str,
    },
    /// 408: the body took too long to arrive; retry.
    RequestTimeout(String),
    /// 413: body too large, before or after decompression.
    PayloadTooLarge(String),
    /// 415: a content encoding trackd does not decode.
    UnsupportedMediaType(String),
    /// 429: too many failed credentials from one address; retry later.
    TooManyRequests(String),
    /// 503: the write queue is full; retry later.
    Overloaded,
    /// 503: the store's last commit failed (`/readyz`).
    NotReady,
    /// 503: the store cannot commit; retry later. The cause is logged, never sent.
    Unavailable(StoreError),
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::BadRequest(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Overloaded => ApiError::Overloaded,
            e @ StoreError::Unavailable(_) => ApiError::Unavailable(e),
            StoreError::NotFound(what) => ApiError::NotFound(format!("{what}: not found")),
            StoreError::Conflict(what) => ApiError::Conflict(format!("{what}: already exists")),
            StoreError::Invalid(e) => ApiError::BadRequest(e),
        }
    }
}

impl ApiError {
    /// 400 for `field`.
    pub fn bad_request(field: impl Into<String>, problem: impl Into<String>) -> Self {
        ApiError::BadRequest(FieldError::new(field, problem))
    }

    /// The reason a refused event is counted under in `/metrics`: the refused field's first
    /// segment for a bad request, else the kind of refusal. A small, fixed set.
    pub fn reason(&self) -> String {
        match self {
            ApiError::BadRequest(e) => {
                let reason = trackd_core::read::rejection_reason(&e.field);
                // A path can start with a key the client chose (a duplicate key): only the
                // fields trackd knows become labels.
                if KNOWN_FIELDS.contains(&reason.as_str()) {
                    reason
                } else {
                    "body".to_owned()
                }
            }
            ApiError::Unauthorized(_) | ApiError::Forbidden(_) => "auth".to_owned(),
            ApiError::NotFound(_) | ApiError::MethodNotAllowed { .. } => "route".to_owned(),
            ApiError::Conflict(_) => "conflict".to_owned(),
            ApiError::RequestTimeout(_) => "timeout".to_owned(),
            ApiError::PayloadTooLarge(_) => "too_large".to_owned(),
            ApiError::UnsupportedMediaType(_) => "encoding".to_owned(),
            ApiError::TooManyRequests(_) => "rate_limited".to_owned(),
            ApiError::Overloaded | ApiError::NotReady | ApiError::Unavailable(_) => {
                "unavailable".to_owned()
            }
        }
    }
}

/// Fields that name a refusal reason in `/metrics`.
const KNOWN_FIELDS: [&str; 28] = [
    "identity",
    "event_name",
    "data",
    "extras",
    "created_at",
    "auth_token",
    "tracking_api_key",
    "id",
    "email",
    "user_id",
    "query",
    "body",
    // The Segment routes' fields.
    "userId",
    "anonymousId",
    "event",
    "properties",
    "traits",
    "context",
    "messageId",
    "timestamp",
    "originalTimestamp",
    "sentAt",
    "name",
    "category",
    "groupId",
    "previousId",
    "batch",
    "writeKey",
];

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECS: &str = "1";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message, retry) = match self {
            ApiError::BadRequest(e) => (StatusCode::BAD_REQUEST, e.to_string(), false),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m, false),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m, false),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m, false),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m, false),
            ApiError::MethodNotAllowed { path, allow } => {
                let mut response = json_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &format!("{path}: method not allowed, use {allow}"),
                );
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
                return response;
            }
            ApiError::RequestTimeout(m) => (StatusCode::REQUEST_TIMEOUT, m, false),
            ApiError::PayloadTooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m, false),
            ApiError::UnsupportedMediaType(m) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, m, false),
            ApiError::TooManyRequests(m) => (StatusCode::TOO_MANY_REQUESTS, m, true),
            ApiError::Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server: overloaded, retry later".to_owned(),
                true,
            ),
            ApiError::NotReady => (
                StatusCode::SERVICE_UNAVAILABLE,
                "store: not ready, its last commit failed".to_owned(),
                true,
            ),
            ApiError::Unavailable(e) => {
                // Logged once here; the client gets an opaque message.
                tracing::error!(error = %e, cause = ?std::error::Error::source(&e), "storage unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server: storage unavailable, retry later".to_owned(),
                    true,
                )
            }
        };
        let mut response = json_response(status, &message);
        if retry {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        response
    }
}

/// `{"status":<code>,"message":...}` with the same HTTP status.
pub fn json_response(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "status": status.as_u16(), "message": message });
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_string(),
    )
        .into_response()
}

/// What a request whose head hyper refused before any route saw it is told, by the
/// status hyper chose (it answers a head it cannot parse by itself, with an empty body).
fn protocol_problem(status: StatusCode) -> Option<String> {
    Some(match status {
        StatusCode::BAD_REQUEST => {
            "request: not a valid HTTP/1.1 request line or header".to_owned()
        }
        StatusCode::URI_TOO_LONG => "uri: longer than 65534 bytes".to_owned(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => format!(
            "headers: the request line and headers are larger than {} bytes, or more than {} \
             header fields",
            super::MAX_HEADER_BYTES,
            super::MAX_HEADERS
        ),
        _ => return None,
    })
}

/// hyper's own refusals are the only answers trackd writes with one of these statuses and
/// an empty body (every [`ApiError`] has a JSON body), and the last thing written on their
/// connection (hyper closes it then): the bytes at the end of `written` may be one. Their
/// head is small; only the end is looked at.
const PROTOCOL_REFUSAL_MAX_BYTES: usize = 256;

/// When `written` (what a connection is about to send) ends with hyper's own refusal of a
/// request it could not parse (`HTTP/1.1 400 Bad Request`, `content-length: 0`, a date),
/// where that refusal starts and the answer to send instead: the same status, as JSON
/// `{"status","message"}`, and the connection closed.
pub fn protocol_refusal(written: &[u8]) -> Option<(usize, Vec<u8>)> {
    if !written.ends_with(b"\r\n\r\n") {
        return None;
    }
    let tail_start = written.len().saturating_sub(PROTOCOL_REFUSAL_MAX_BYTES);
    let tail = &written[tail_start..];
    let at = tail.windows(9).rposition(|w| w == b"HTTP/1.1 ")?;
    let head = std::str::from_utf8(&tail[at..])
        .ok()?
        .strip_suffix("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status = StatusCode::from_bytes(status_line.get(9..12)?.as_bytes()).ok()?;
    if status_line.get(12..)? != format!(" {}", status.canonical_reason()?) {
        return None;
    }
    let message = protocol_problem(status)?;
    let mut empty = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "content-length" if value.trim() == "0" => empty = true,
            "date" | "connection" => {}
            _ => return None,
        }
    }
    if !empty {
        return None;
    }
    let body = serde_json::json!({ "status": status.as_u16(), "message": message }).to_string();
    let answer = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason()?,
        body.len()
    );
    Some((tail_start + at, answer.into_bytes()))
}

/// The success answer, the same bytes Vero sends.
pub const SUCCESS_BODY: &str = r#"{"status":200,"message":"Success."}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_refusals_become_json_and_nothing_else_does() {
        let hyper = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\
                      date: Tue, 01 Dec 2026 12:00:00 GMT\r\n\r\n";
        let (at, answer) = protocol_refusal(hyper).expect("recognised");
        assert_eq!(at, 0);
        let answer = String::from_utf8(answer).expect("utf-8");
        assert!(answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(answer.contains("\r\nconnection: close\r\n"));
        let body = answer.split("\r\n\r\n").nth(1).expect("body");
        let json: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(json["status"], 431);
        // After an answer still being written: found at its end.
        let first = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        let mut two = first.to_vec();
        two.extend_from_slice(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(protocol_refusal(&two).map(|(at, _)| at), Some(first.len()));
        // trackd's own answers, streamed heads, other statuses: untouched.
        for written in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 40\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-other: 1\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n",
            b"HTTP/1.1 400 Bad\r\ncontent-length: 0\r\n\r\n",
            b"{\"a\":1}\n",
        ] {
            assert!(protocol_refusal(written).is_none(), "{}", String::from_utf8_lossy(written));
        }
    }
}
