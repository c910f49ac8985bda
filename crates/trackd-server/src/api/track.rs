//! `POST /api/v2/events/track` and `GET /api/v2/heartbeat`.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use trackd_core::{InsertOutcome, TrackRequest};

use super::error::{ApiError, SUCCESS_BODY};
use super::{auth, body, AppState};

/// Set on the answer to a duplicate: it was accepted (200) but not stored again.
pub static DUPLICATE_HEADER: HeaderName = HeaderName::from_static("trackd-duplicate");

/// Decode, authenticate, validate, then dedup and store; answers after the commit.
pub async fn track(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    request_body: Body,
) -> Result<Response, ApiError> {
    let received_at = state.clock.now();
    let query = body::form_pairs(uri.query().unwrap_or("").as_bytes(), "query")?;
    let bytes = body::read(&headers, request_body, state.limits.max_body_bytes).await?;
    let decoded = body::decode(&headers, &bytes)?;
    let found = auth::find(&query, &decoded, &headers)?;
    let credential = auth::tracking_credential(&state.credentials, found).await?;
    let event = TrackRequest::new(decoded).validate(credential.project, received_at)?;
    let outcome = state.store.track(event).await?;
    Ok(success(outcome))
}

fn success(outcome: InsertOutcome) -> Response {
    let mut response = (
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        SUCCESS_BODY,
    )
        .into_response();
    if outcome == InsertOutcome::Duplicate {
        response
            .headers_mut()
            .insert(DUPLICATE_HEADER.clone(), HeaderValue::from_static("true"));
    }
    response
}

/// Vero's liveness route: no credential, always the success body.
pub async fn heartbeat() -> Response {
    success(InsertOutcome::Inserted)
}
