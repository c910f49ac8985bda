//! The Vero routes: `events/track`, the `users/*` profile changes, and `heartbeat`.

use axum::body::Body;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use trackd_core::{
    Credential, InsertOutcome, ProfileChange, ProfileOp, ProfileRequest, StoreError, Timestamp,
    TrackRequest,
};

use super::error::{ApiError, SUCCESS_BODY};
use super::{auth, body, AppState};

/// Set on the answer to a duplicate: it was accepted (200) but not stored again.
pub static DUPLICATE_HEADER: HeaderName = HeaderName::from_static("trackd-duplicate");

/// Set on the answer to a call naming a suppressed user (DESIGN §10): 200 so no client
/// retries it, and nothing stored.
pub static SUPPRESSED_HEADER: HeaderName = HeaderName::from_static("trackd-suppressed");

/// What every Vero route does first: stamp the receive time, read and decode the body, and
/// resolve the tracking credential (which may be in the body).
async fn decode_authenticated(
    state: &AppState,
    peer: SocketAddr,
    uri: &Uri,
    headers: &HeaderMap,
    request_body: Body,
) -> Result<(Timestamp, Credential, Map<String, Value>), ApiError> {
    let received_at = state.clock.now();
    let query = body::form_pairs(uri.query().unwrap_or("").as_bytes(), "query")?;
    let bytes = body::read(
        headers,
        request_body,
        state.limits.max_body_bytes,
        state.limits.body_timeout,
    )
    .await?;
    let decoded = match body::decode(headers, bytes).await {
        Ok(decoded) => decoded,
        Err(e) => {
            let found = auth::find(&query, &Map::new(), headers).ok().flatten();
            count_undecodable(state, peer, found, &e).await;
            return Err(e);
        }
    };
    let found = auth::find(&query, &decoded, headers)?;
    let credential = admit(
        state,
        peer,
        auth::tracking_credential(&state.credentials, found),
    )
    .await?;
    Ok((received_at, credential, decoded))
}

/// A body refused before it could be read (bad JSON, a duplicate key, a bad form) is still a
/// rejection of the project whose valid credential the query or the headers carry
/// (`found`), counted by the refused field like any other; one sent only inside the
/// unreadable body cannot be known. Never changes the answer: an unknown or rate-limited
/// credential is simply not counted. The lookup goes through [`admit`], as every other
/// does: an unknown token counts against its address's failed-credential limit, so broken
/// bodies cannot be used to look up tokens unchecked.
pub(super) async fn count_undecodable(
    state: &AppState,
    peer: SocketAddr,
    found: Option<(trackd_core::Token, auth::Location)>,
    e: &ApiError,
) {
    let ApiError::BadRequest(refused) = e else {
        return;
    };
    if found.is_none() {
        return;
    }
    let resolve = auth::tracking_credential(&state.credentials, found);
    if let Ok(credential) = admit(state, peer, resolve).await {
        state.rejections.record(credential.project, &refused.field);
    }
}

/// Resolves a tracking credential behind the failed-credential limit of the client's
/// address, then applies the token's rate.
pub(super) async fn admit(
    state: &AppState,
    peer: SocketAddr,
    resolve: impl std::future::Future<Output = Result<Credential, ApiError>>,
) -> Result<Credential, ApiError> {
    let credential = state
        .failed_auth
        .guard(peer.ip(), resolve)
        .await
        .inspect_err(|e| {
            if matches!(e, ApiError::TooManyRequests(_)) {
                state.metrics.limited("failed_auth");
            }
        })?;
    state
        .admission
        .check_token(&credential.hash)
        .inspect_err(|_| state.metrics.limited("token"))?;
    Ok(credential)
}

/// `POST events/track`: decode, authenticate, validate, then dedup and store; answers after
/// the commit.
pub async fn track(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    request_body: Body,
) -> Result<Response, ApiError> {
    let answer = async {
        let (received_at, credential, decoded) =
            decode_authenticated(&state, peer, &uri, &headers, request_body).await?;
        let event = TrackRequest::new(decoded)
            .validate(credential.project, received_at)
            .inspect_err(|e| state.rejections.record(credential.project, &e.field))?;
        Ok(committed(&state, state.store.track(event)).await?)
    };
    match answer.await {
        Ok(outcome) => {
            state.metrics.event(outcome);
            state.metrics.suppressed(outcome);
            Ok(success(outcome))
        }
        Err(e) => {
            state.metrics.rejected(&e);
            Err(e)
        }
    }
}

/// `users/*`: decode, authenticate, validate, then apply through the writer; answers after
/// the commit.
pub async fn profile(
    op: ProfileOp,
    state: AppState,
    peer: SocketAddr,
    uri: Uri,
    headers: HeaderMap,
    request_body: Body,
) -> Result<Response, ApiError> {
    let (received_at, credential, decoded) =
        decode_authenticated(&state, peer, &uri, &headers, request_body).await?;
    let request = ProfileRequest::parse(op, &decoded, credential.project, received_at)
        .and_then(|r| r.limited(state.limits.profile))
        .inspect_err(|e| state.rejections.record(credential.project, &e.field))?;
    let field = match &request.change {
        ProfileChange::Track { .. } => "id",
        ProfileChange::Reidentify { .. } => "id",
        ProfileChange::Edit { user, .. }
        | ProfileChange::Tags { user, .. }
        | ProfileChange::Subscription { user, .. }
        | ProfileChange::Delete { user } => user.field(),
    };
    match committed(&state, state.store.change_profile(request)).await {
        Ok(outcome) => {
            state.metrics.suppressed(outcome);
            Ok(success(outcome))
        }
        Err(StoreError::NotFound(_)) => Err(ApiError::NotFound(format!("{field}: no such user"))),
        Err(StoreError::Invalid(e)) => {
            state.rejections.record(credential.project, &e.field);
            Err(ApiError::BadRequest(e))
        }
        Err(e) => Err(e.into()),
    }
}

/// Waits for a write to commit, at most the request timeout. Past it the client gets 503 +
/// `Retry-After`: the write may still commit, and a retried event is then a duplicate.
pub(super) async fn committed<T>(
    state: &AppState,
    write: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let timeout = state.limits.request_timeout;
    match tokio::time::timeout(timeout, write).await {
        Ok(Err(StoreError::Overloaded)) => {
            state.metrics.limited("write_queue");
            Err(StoreError::Overloaded)
        }
        Ok(result) => result,
        Err(_) => Err(StoreError::unavailable(trackd_core::error::Cause(
            "not committed within the request timeout",
        ))),
    }
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
    let header = match outcome {
        InsertOutcome::Inserted => None,
        InsertOutcome::Duplicate => Some(&DUPLICATE_HEADER),
        InsertOutcome::Suppressed => Some(&SUPPRESSED_HEADER),
    };
    if let Some(header) = header {
        response
            .headers_mut()
            .insert(header.clone(), HeaderValue::from_static("true"));
    }
    response
}

/// Vero's liveness route: no credential, always the success body.
pub async fn heartbeat() -> Response {
    success(InsertOutcome::Inserted)
}

/// `/healthz`: the process is up.
pub async fn healthz() -> Response {
    success(InsertOutcome::Inserted)
}

/// `/readyz`: the store takes writes (its last commit succeeded); 503 + `Retry-After`
/// while it does not, so a load balancer sends traffic elsewhere.
pub async fn readyz(State(state): State<AppState>) -> Result<Response, ApiError> {
    if state.store.ready() {
        Ok(success(InsertOutcome::Inserted))
    } else {
        Err(ApiError::NotReady)
    }
}
