//! The Segment-compatible routes (`/v1/*`, DESIGN §9): Segment's and RudderStack's SDKs
//! send here with only a host setting. The calls become the Vero routes' events and
//! profile changes ([`trackd_core::segment`]) and go through the same writer.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{json, Map, Value};
use trackd_core::segment::{self, BatchRefusal, Call, Received, Write};
use trackd_core::{json, Credential, FieldError, InsertOutcome, StoreError, Token};

use super::auth::{self, Location};
use super::error::ApiError;
use super::track::{admit, committed, DUPLICATE_HEADER, SUPPRESSED_HEADER};
use super::{body, AppState};

/// What a stored call is answered with.
const SUCCESS: &str = r#"{"success":true}"#;

/// `POST /v1/track`, `/v1/identify`, `/v1/page`, `/v1/screen`, `/v1/group`, `/v1/alias`.
pub async fn single(
    call: Call,
    state: AppState,
    peer: SocketAddr,
    headers: HeaderMap,
    request_body: Body,
) -> Result<Response, ApiError> {
    let answer = async {
        let (credential, received, decoded, _) =
            decode_authenticated(&state, peer, &headers, request_body, false).await?;
        let message = segment::single(call, &decoded, &received)
            .inspect_err(|e| state.rejections.record(credential.project, &e.field))?;
        let is_event = matches!(message.write, Write::Event(_));
        let no_user = no_user_field(&message.write);
        let mut outcomes = committed(&state, state.store.ingest(vec![message])).await?;
        match outcomes.pop() {
            Some(Ok(outcome)) => Ok((outcome, is_event)),
            Some(Err(StoreError::NotFound(_))) => {
                state.rejections.record(credential.project, no_user);
                Err(ApiError::NotFound(format!("{no_user}: no such user")))
            }
            Some(Err(StoreError::Invalid(e))) => {
                let e = segment_field(e);
                state.rejections.record(credential.project, &e.field);
                Err(ApiError::BadRequest(e))
            }
            Some(Err(e)) => Err(e.into()),
            None => Err(StoreError::unavailable(trackd_core::error::Cause(
                "the store answered no outcome",
            ))
            .into()),
        }
    };
    match answer.await {
        Ok((outcome, is_event)) => {
            if is_event {
                state.metrics.event(outcome);
            }
            state.metrics.suppressed(outcome);
            Ok(success(
                None,
                outcome == InsertOutcome::Duplicate,
                outcome == InsertOutcome::Suppressed,
            ))
        }
        Err(e) => {
            state.metrics.rejected(&e);
            Err(e)
        }
    }
}

/// `POST /v1/batch` and `/v1/import`: the valid calls commit in one transaction; the
/// refused ones are listed by index, and the others are stored all the same.
pub async fn batch(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    request_body: Body,
) -> Result<Response, ApiError> {
    let answer = async {
        let (credential, received, decoded, faults) =
            decode_authenticated(&state, peer, &headers, request_body, true).await?;
        let parsed = segment::batch(&decoded, &faults, &received, state.limits.max_batch_items)
            .map_err(|refusal| match refusal {
                BatchRefusal::Invalid(e) => {
                    state.rejections.record(credential.project, &e.field);
                    ApiError::BadRequest(e)
                }
                BatchRefusal::TooMany { items, max } => ApiError::PayloadTooLarge(format!(
                    "batch: {items} calls, more than a batch may hold ({max})"
                )),
            })?;
        let mut rejected: Vec<(usize, FieldError)> = Vec::new();
        let mut suppressed = false;
        for (index, e) in parsed.rejected {
            record_item(&state, &credential, &e);
            rejected.push((index, e));
        }
        let (indexes, messages): (Vec<usize>, Vec<_>) = parsed.messages.into_iter().unzip();
        let kinds: Vec<(bool, &'static str)> = messages
            .iter()
            .map(|m| (matches!(m.write, Write::Event(_)), no_user_field(&m.write)))
            .collect();
        let outcomes = if messages.is_empty() {
            Vec::new()
        } else {
            committed(&state, state.store.ingest(messages)).await?
        };
        for ((index, (is_event, no_user)), outcome) in indexes.into_iter().zip(kinds).zip(outcomes)
        {
            match outcome {
                Ok(outcome) => {
                    if is_event {
                        state.metrics.event(outcome);
                    }
                    state.metrics.suppressed(outcome);
                    suppressed |= outcome == InsertOutcome::Suppressed;
                }
                Err(StoreError::NotFound(_)) => {
                    state.rejections.record(credential.project, no_user);
                    let e = FieldError::new(format!("batch[{index}].{no_user}"), "no such user");
                    rejected.push((index, e));
                }
                Err(StoreError::Invalid(e)) => {
                    let e = segment_field(e);
                    state.rejections.record(credential.project, &e.field);
                    let e = FieldError::new(format!("batch[{index}].{}", e.field), e.problem);
                    rejected.push((index, e));
                }
                // Anything else failed the whole transaction, never one call.
                Err(e) => return Err(e.into()),
            }
        }
        // Refused calls are counted in /metrics like refused requests, by the field they name
        // within their call.
        for (_, e) in &rejected {
            state
                .metrics
                .rejected(&ApiError::BadRequest(within_call(e)));
        }
        rejected.sort_by_key(|(index, _)| *index);
        Ok((rejected, suppressed))
    };
    match answer.await {
        Ok((rejected, suppressed)) => Ok(success(Some(rejected), false, suppressed)),
        Err(e) => {
            state.metrics.rejected(&e);
            Err(e)
        }
    }
}

/// `POST /v1/m`: analytics.js 2.0 reports its own usage counters here (no write key, no
/// user data). Read within the body limit and answered, so the browser logs no error;
/// nothing is kept.
pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
    request_body: Body,
) -> Result<Response, ApiError> {
    body::read(
        &headers,
        request_body,
        state.limits.max_body_bytes,
        state.limits.body_timeout,
    )
    .await?;
    Ok(success(None, false, false))
}

/// Counts a refused batch call under the field it names within its call.
fn record_item(state: &AppState, credential: &Credential, e: &FieldError) {
    state
        .rejections
        .record(credential.project, &within_call(e).field);
}

/// A batch call's refusal as its call would name it (`batch[3].event` → `event`; a call
/// that is no call at all → `batch`).
fn within_call(e: &FieldError) -> FieldError {
    let field = e.field.split_once("].").map_or("batch", |(_, field)| field);
    FieldError::new(field, e.problem.clone())
}

/// The field a "no such user" answer names for a call's write.
fn no_user_field(write: &Write) -> &'static str {
    match write {
        Write::Profile(p) => match &p.change {
            trackd_core::ProfileChange::Reidentify { .. } => "previousId",
            trackd_core::ProfileChange::Edit {
                user: trackd_core::UserRef::Email(_),
                ..
            } => "context.traits.email",
            _ => "userId",
        },
        Write::Event(_) => "userId",
    }
}

/// A bound the store found, named by the Segment field that carries it.
fn segment_field(e: FieldError) -> FieldError {
    match e.field.as_str() {
        "data" | "changes" | "properties" => FieldError::new("traits", e.problem),
        _ => e,
    }
}

/// `{"success":true}`, with the refused calls of a batch when there are any; with
/// `Trackd-Duplicate: true` for a single call that was a duplicate, and
/// `Trackd-Suppressed: true` when a call (of a batch: any) named a suppressed user.
fn success(
    rejected: Option<Vec<(usize, FieldError)>>,
    duplicate: bool,
    suppressed: bool,
) -> Response {
    let body = match rejected {
        Some(rejected) if !rejected.is_empty() => json!({
            "success": true,
            "rejected": rejected
                .into_iter()
                .map(|(index, e)| json!({"index": index, "message": e.to_string()}))
                .collect::<Vec<_>>(),
        })
        .to_string(),
        _ => SUCCESS.to_owned(),
    };
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    if duplicate {
        response
            .headers_mut()
            .insert(DUPLICATE_HEADER.clone(), HeaderValue::from_static("true"));
    }
    if suppressed {
        response
            .headers_mut()
            .insert(SUPPRESSED_HEADER.clone(), HeaderValue::from_static("true"));
    }
    response
}

/// Stamps the receive time, reads the body within the single-call or the batch limit (JSON
/// whatever the content type says: browsers' `sendBeacon` sends `text/plain`), and
/// resolves the write key: the credential, and where and when the calls arrived.
async fn decode_authenticated(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    request_body: Body,
    batch: bool,
) -> Result<(Credential, Received, Map<String, Value>, json::ItemFaults), ApiError> {
    let received_at = state.clock.now();
    let limit = if batch {
        state.limits.max_batch_bytes
    } else {
        state.limits.max_body_bytes
    };
    let bytes = body::read(headers, request_body, limit, state.limits.body_timeout).await?;
    let (decoded, faults) = match body::decode_json(bytes, batch.then_some("batch")).await {
        Ok(decoded) => decoded,
        Err(e) => {
            let found = write_key(headers, &Map::new()).ok().flatten();
            super::track::count_undecodable(state, peer, found, &e).await;
            return Err(e);
        }
    };
    let found = write_key(headers, &decoded)?;
    let credential = admit(state, peer, async {
        match found {
            Some(found) => auth::tracking_credential(&state.credentials, Some(found)).await,
            None => Err(ApiError::Unauthorized(
                "writeKey: missing (send it as the HTTP Basic user name with an empty \
                 password, or as writeKey in the body)"
                    .into(),
            )),
        }
    })
    .await?;
    let received = Received {
        project: credential.project,
        at: received_at,
        limits: state.limits.profile,
    };
    Ok((credential, received, decoded, faults))
}

/// The write key: the HTTP Basic user name (Segment's SDKs), `Authorization: Bearer`, or
/// `writeKey` in the body; first found wins, an empty one counts as absent.
fn write_key(
    headers: &HeaderMap,
    body: &Map<String, Value>,
) -> Result<Option<(Token, Location)>, ApiError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    if let Some(value) = values.next() {
        if values.next().is_some() {
            return Err(ApiError::bad_request(
                "authorization",
                "given more than once",
            ));
        }
        let malformed = || {
            ApiError::Unauthorized(
                "authorization: must be Basic <base64 of writeKey:> (or Bearer <writeKey>)".into(),
            )
        };
        let value = value.to_str().map_err(|_| malformed())?.trim();
        if !value.is_empty() {
            let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
            let rest = rest.trim();
            if scheme.eq_ignore_ascii_case("basic") {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(rest)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(malformed)?;
                // `writeKey:` (Segment's empty password): the key is what comes before the
                // last colon, so an imported token holding a colon still works.
                let user = decoded
                    .rsplit_once(':')
                    .map_or(decoded.as_str(), |(u, _)| u);
                if !user.is_empty() {
                    return Ok(Some((Token::presented(user), Location::Header)));
                }
            } else if scheme.eq_ignore_ascii_case("bearer") {
                if !rest.is_empty() {
                    return Ok(Some((Token::presented(rest), Location::Header)));
                }
            } else {
                return Err(malformed());
            }
        }
    }
    match body.get("writeKey") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some((Token::presented(s), Location::Body("writeKey")))),
        Some(_) => Err(ApiError::bad_request("writeKey", "must be a string")),
    }
}
