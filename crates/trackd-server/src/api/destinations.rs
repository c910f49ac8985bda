//! Destinations through the read API (secret key): list, show, create, pause, resume,
//! replay, redrive, remove (DESIGN §8). The CLI's `trackd destination` does the same on the
//! store directly.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use trackd_core::delivery::{
    generate_secret, validate_destination_name, Destination, DestinationChange, DestinationKind,
    DestinationSpec,
};
use trackd_core::read::Params;
use trackd_core::{json, DynStore, FieldError, ProjectId, StoreError, Timestamp};

use super::error::ApiError;
use super::{body, read::authenticate, AppState};

/// What a destination route does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `GET /api/v2/destinations`.
    List,
    /// `POST /api/v2/destinations`.
    Create,
    /// `GET /api/v2/destinations/{name}`.
    Show,
    /// `DELETE /api/v2/destinations/{name}`.
    Remove,
    /// `POST /api/v2/destinations/{name}/pause`.
    Pause,
    /// `POST /api/v2/destinations/{name}/resume`.
    Resume,
    /// `POST /api/v2/destinations/{name}/replay` (`since`).
    Replay,
    /// `POST /api/v2/destinations/{name}/redrive`.
    Redrive,
    /// `GET /api/v2/destinations/{name}/dead-letters` (`after`, `limit`).
    DeadLetters,
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        value.to_string(),
    )
        .into_response()
}

/// The destination named `name` of a project, with its backlog.
pub async fn find(
    store: &DynStore,
    project: ProjectId,
    name: &str,
) -> Result<Destination, StoreError> {
    store
        .destinations(Some(project), true)
        .await?
        .into_iter()
        .find(|d| d.spec.name == name)
        .ok_or_else(|| StoreError::NotFound(format!("destination {name}")))
}

/// Creates a destination: `(destination, secret)`, the secret shown once (webhooks).
pub async fn create(
    store: &DynStore,
    project: ProjectId,
    spec: DestinationSpec,
) -> Result<Destination, StoreError> {
    let secret = if spec.kind == DestinationKind::Webhook {
        generate_secret()
    } else {
        String::new()
    };
    store.add_destination(project, spec, secret).await
}

/// As created: the destination and, for a webhook, its signing secret (shown only here).
pub fn created_json(d: &Destination, now: Timestamp) -> Value {
    let mut v = d.to_json(now);
    if d.spec.kind == DestinationKind::Webhook {
        v["secret"] = Value::String(d.secret.clone());
    }
    v
}

/// Every destination route.
#[allow(clippy::too_many_arguments)]
pub async fn handle(
    action: Action,
    state: AppState,
    peer: SocketAddr,
    path: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
    request_body: Body,
) -> Result<Response, ApiError> {
    let (credential, query) = authenticate(&state, peer, &uri, &headers).await?;
    let project = credential.project;
    let now = state.clock.now();
    let allowed: &[&str] = match action {
        Action::Replay => &["since"],
        Action::DeadLetters => &["after", "limit"],
        _ => &[],
    };
    let params = Params::new(&query, allowed)?;
    let name = match action {
        Action::List | Action::Create => None,
        _ => {
            let name = path
                .map(|Path(n)| n)
                .map_err(|_| ApiError::bad_request("name", "not valid UTF-8 once URL-decoded"))?;
            validate_destination_name(&name)?;
            Some(name)
        }
    };
    // Bodies are small JSON objects (or nothing), read as strictly as every other body: a
    // duplicate key (which would silently choose what is delivered) or a NUL is a 400.
    let bytes = body::read(&headers, request_body, 64 * 1024, state.limits.body_timeout).await?;
    let object: Map<String, Value> = if bytes.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        json::parse_object(&bytes, "", trackd_core::MAX_JSON_DEPTH).map_err(FieldError::from)?
    };
    if action != Action::Create && action != Action::Replay {
        if let Some(field) = object.keys().next() {
            return Err(ApiError::bad_request(
                field.as_str(),
                "unknown field (this route takes no body)",
            ));
        }
    }
    let store = &state.store;
    let name_ref = name.as_deref().unwrap_or_default();
    let (state_ref, credential_ref) = (&state, &credential);
    let changed = |change: DestinationChange| async move {
        let action = change_action(&change);
        store.change_destination(project, name_ref, change).await?;
        super::privacy::record(state_ref, credential_ref, action, name_ref.to_owned()).await?;
        Ok::<_, ApiError>(())
    };
    match action {
        Action::List => {
            let list: Vec<Value> = store
                .destinations(Some(project), true)
                .await?
                .iter()
                .map(|d| d.to_json(now))
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &json!({"destinations": list}),
            ))
        }
        Action::Create => {
            let spec = DestinationSpec::from_json(&object)?;
            let d = create(store, project, spec).await?;
            super::privacy::record(&state, &credential, "destination.add", d.spec.name.clone())
                .await?;
            Ok(json_response(StatusCode::CREATED, &created_json(&d, now)))
        }
        Action::Show => {
            let d = find(store, project, name_ref).await?;
            Ok(json_response(StatusCode::OK, &d.to_json(now)))
        }
        Action::DeadLetters => {
            let after = match params.get("after") {
                None => 0,
                Some(text) => text
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| {
                        ApiError::bad_request("after", "must be an item's position (0 or more)")
                    })?,
            };
            let limit = params.limit()?;
            let d = find(store, project, name_ref).await?;
            let letters = store.dead_letters(project, d.id, after, limit).await?;
            let next_after = match letters.last() {
                Some(last) if letters.len() == limit => Some(last.pos),
                _ => None,
            };
            let list: Vec<Value> = letters.iter().map(|l| l.to_json(project)).collect();
            Ok(json_response(
                StatusCode::OK,
                &json!({"dead_letters": list, "next_after": next_after}),
            ))
        }
        Action::Remove => {
            changed(DestinationChange::Remove).await?;
            Ok(json_response(
                StatusCode::OK,
                &json!({"name": name_ref, "removed": true}),
            ))
        }
        Action::Pause | Action::Resume | Action::Redrive | Action::Replay => {
            let change = match action {
                Action::Pause => DestinationChange::Pause,
                Action::Resume => DestinationChange::Resume,
                Action::Redrive => DestinationChange::Redrive,
                _ => DestinationChange::Replay {
                    since: replay_since(&params, &object)?.as_micros(),
                },
            };
            changed(change).await?;
            let d = find(store, project, name_ref).await?;
            Ok(json_response(StatusCode::OK, &d.to_json(now)))
        }
    }
}

/// The audit log's name for a destination change.
pub fn change_action(change: &DestinationChange) -> &'static str {
    match change {
        DestinationChange::Pause => "destination.pause",
        DestinationChange::Resume => "destination.resume",
        DestinationChange::Remove => "destination.remove",
        DestinationChange::Replay { .. } => "destination.replay",
        DestinationChange::Redrive => "destination.redrive",
    }
}

/// `since` of a replay, from the query or the body (ISO 8601 or Unix seconds); required.
fn replay_since(params: &Params<'_>, object: &Map<String, Value>) -> Result<Timestamp, ApiError> {
    if let Some(field) = object.keys().find(|k| k.as_str() != "since") {
        return Err(ApiError::bad_request(
            field.as_str(),
            "unknown field (this route takes since)",
        ));
    }
    if let Some(t) = params.time("since")? {
        return Ok(t);
    }
    let text = match object.get("since") {
        None => return Err(ApiError::bad_request("since", "is required")),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "since",
                "must be an ISO 8601 time or Unix seconds",
            ))
        }
    };
    let pairs = [("since".to_owned(), text)];
    Params::new(&pairs, &["since"])?
        .time("since")?
        .ok_or_else(|| ApiError::bad_request("since", "is required"))
}
