//! Suppression and the audit log (DESIGN §10): `POST /api/v2/users/{id}/suppress` and
//! `/unsuppress`, `GET /api/v2/audit` (secret key).

use std::net::SocketAddr;

use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use trackd_core::privacy::{audit_cursor, audit_scope, Actor, AuditAct, AuditQuery};
use trackd_core::{Credential, ProjectId, UserId};

use super::error::ApiError;
use super::read::authenticate;
use super::AppState;

/// Who a secret key is, in the audit log.
pub(crate) fn actor(credential: &Credential) -> Actor {
    Actor::Key(credential.hash.fingerprint())
}

/// Records an act done through the API. An act that cannot be recorded is answered 503:
/// the act itself has happened (it committed first), so a retry repeats it and is
/// recorded then.
pub(crate) async fn record(
    state: &AppState,
    credential: &Credential,
    action: &'static str,
    target: String,
) -> Result<(), ApiError> {
    let act = AuditAct {
        project: credential.project,
        actor: actor(credential),
        action,
        target,
    };
    state.store.record_audit(act).await?;
    Ok(())
}

/// How the audit log names a user: by keyed hash, never the id.
pub(crate) fn user_target(state: &AppState, project: ProjectId, key: &str) -> String {
    state.suppression_key.audit_target(project, key)
}

/// The `{id}` of a suppression route: a user key as `users/*` takes one, and no query.
async fn suppression_target(
    state: &AppState,
    peer: SocketAddr,
    path: Result<Path<String>, PathRejection>,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<(Credential, String), ApiError> {
    let (credential, query) = authenticate(state, peer, uri, headers).await?;
    let Path(id) =
        path.map_err(|_| ApiError::bad_request("id", "not valid UTF-8 once URL-decoded"))?;
    if let Some((name, _)) = query.first() {
        return Err(ApiError::bad_request(
            name,
            "unknown parameter (this route takes none)",
        ));
    }
    UserId::from_text(&id, "id")?;
    Ok((credential, id))
}

fn json_response(value: Value) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        value.to_string(),
    )
        .into_response()
}

/// `POST /api/v2/users/{id}/suppress`: deletes the user (as `users/delete`) and refuses it
/// from then on. 200 whether or not the user existed: a suppression may come before the
/// person is ever tracked.
pub async fn suppress(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    path: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    change(true, &state, peer, path, &uri, &headers).await
}

/// `POST /api/v2/users/{id}/unsuppress`: lifts the suppression; 404 when there is none.
pub async fn unsuppress(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    path: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    change(false, &state, peer, path, &uri, &headers).await
}

/// Suppresses (`suppress`) or lifts a suppression, after the commit.
async fn change(
    suppress: bool,
    state: &AppState,
    peer: SocketAddr,
    path: Result<Path<String>, PathRejection>,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let (credential, id) = suppression_target(state, peer, path, uri, headers).await?;
    let (project, actor) = (credential.project, actor(&credential));
    let store = &state.store;
    if suppress {
        let done = super::track::committed(state, store.suppress(project, id, actor)).await?;
        return Ok(json_response(
            json!({"suppressed": true, "deleted": done.deleted}),
        ));
    }
    if !super::track::committed(state, store.unsuppress(project, id, actor)).await? {
        return Err(ApiError::NotFound("id: not suppressed".into()));
    }
    Ok(json_response(json!({"suppressed": false})))
}

/// `GET /api/v2/project`: the key's project, its name and retention (for the console).
pub async fn project(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (credential, query) = authenticate(&state, peer, &uri, &headers).await?;
    trackd_core::read::Params::new(&query, &[])?;
    let project = state
        .store
        .projects()
        .await?
        .into_iter()
        .find(|p| p.id == credential.project)
        .ok_or_else(|| ApiError::NotFound("project: gone".into()))?;
    Ok(json_response(json!({
        "name": project.name,
        "retention": trackd_core::privacy::format_retention(project.retention),
    })))
}

/// `GET /api/v2/audit`: the project's administrative acts, newest first, by page.
pub async fn audit(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (credential, query) = authenticate(&state, peer, &uri, &headers).await?;
    let mut query = AuditQuery::parse(credential.project, &query, &state.cursor_key)?;
    let limit = query.limit;
    // One more than asked: a next page is offered only when there is one.
    query.limit += 1;
    let mut entries = state.store.audit(query).await?;
    let more = entries.len() > limit;
    entries.truncate(limit);
    let next = entries
        .last()
        .filter(|_| more)
        .map(|last| audit_cursor(last).seal(&state.cursor_key, &audit_scope(credential.project)));
    Ok(json_response(json!({
        "entries": entries.iter().map(|e| e.to_json()).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}
