//! The read API (secret key, `Authorization: Bearer`): profiles, events by page, NDJSON
//! export and import, statistics. No CORS: these routes are for servers, not browsers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use trackd_core::read::{EventQuery, ExportQuery, StatsQuery};
use trackd_core::{Credential, LiveItem};

use super::error::ApiError;
use super::{auth, body, AppState};

pub(crate) async fn authenticate(
    state: &AppState,
    peer: SocketAddr,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<(Credential, Vec<(String, String)>), ApiError> {
    let query = body::form_pairs(uri.query().unwrap_or("").as_bytes(), "query")?;
    let credential = state
        .failed_auth
        .guard(
            peer.ip(),
            auth::secret_credential(&state.credentials, headers),
        )
        .await
        .inspect_err(|e| {
            if matches!(e, ApiError::TooManyRequests(_)) {
                state.metrics.limited("failed_auth");
            }
        })?;
    // The credential never reaches the query parsers below.
    Ok((credential, query))
}

fn json(bytes: Vec<u8>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response()
}

/// The `{id}` of a path, URL-decoded; a 400 naming `id` when it does not decode.
fn user_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(id)| id)
        .map_err(|_| ApiError::bad_request("id", "not valid UTF-8 once URL-decoded"))
}

/// `GET /api/v2/users/{id}`.
pub async fn user(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    path: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, _, profile) = named_user(&state, peer, path, &uri, &headers).await?;
    Ok(json(profile.to_json()))
}

/// The credential, the `{id}` and the profile of a route that names a user and takes no
/// parameters: 404 for an unknown user.
async fn named_user(
    state: &AppState,
    peer: SocketAddr,
    path: Result<Path<String>, PathRejection>,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<(Credential, String, trackd_core::read::UserProfile), ApiError> {
    let (credential, query) = authenticate(state, peer, uri, headers).await?;
    let id = user_id(path)?;
    if let Some((name, _)) = query.first() {
        return Err(ApiError::bad_request(
            name,
            "unknown parameter (this route takes none)",
        ));
    }
    match state.store.user(credential.project, &id).await? {
        Some(profile) => Ok((credential, id, profile)),
        None => Err(ApiError::NotFound("id: no such user".into())),
    }
}

/// `GET /api/v2/users/{id}/events`.
pub async fn user_events(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    path: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (credential, query) = authenticate(&state, peer, &uri, &headers).await?;
    let id = user_id(path)?;
    let query = EventQuery::parse(credential.project, &query, Some(id), &state.cursor_key)?;
    let scope = query.scope();
    match state.store.events(query).await? {
        Some((events, next)) => Ok(page(&state, &scope, &events, next)),
        None => Err(ApiError::NotFound("id: no such user".into())),
    }
}

/// `GET /api/v2/events`.
pub async fn events(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (credential, query) = authenticate(&state, peer, &uri, &headers).await?;
    let query = EventQuery::parse(credential.project, &query, None, &state.cursor_key)?;
    let scope = query.scope();
    let (events, next) = state.store.events(query).await?.unwrap_or_default();
    Ok(page(&state, &scope, &events, next))
}

/// A page of events, its next cursor sealed for the query it continues.
fn page(
    state: &AppState,
    scope: &[u8],
    events: &[trackd_core::read::EventRow],
    next: Option<trackd_core::read::Cursor>,
) -> Response {
    let next = next.map(|cursor| cursor.seal(&state.cursor_key, scope));
    json(trackd_core::read::write_page(events, next.as_deref()))
}

/// Bytes of NDJSON gathered before they are handed to the connection.
const EXPORT_CHUNK_BYTES: usize = 64 * 1024;
/// Chunks in flight between the reader and the connection: with the chunk size and the
/// store's chunk of rows, the bound on an export's memory whatever its length.
const EXPORT_CHUNKS_IN_FLIGHT: usize = 8;
/// `GET /api/v2/events/export`: NDJSON, oldest first by receive time, streamed. The store
/// is read in short chunks (nothing held between them); a client that takes nothing for
/// `--export-timeout` loses its export, which ends without its last chunk, so an
/// incomplete export never looks complete.
pub async fn export(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (credential, query) = authenticate(&state, peer, &uri, &headers).await?;
    let query = ExportQuery::parse(credential.project, &query)?;
    let permit = state.exports.acquire(credential.project)?;
    let chunks = trackd_core::export_chunks(state.store.clone(), query);
    Ok(ndjson(&state, &credential, permit, Vec::new(), chunks))
}

/// `GET /api/v2/users/{id}/export`: a data subject's export, NDJSON: the profile (as
/// `GET /users/{id}` gives it), then every event of the user (the export's line shape),
/// newest first, streamed in constant memory as `/events/export` is.
pub async fn user_export(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    path: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (credential, id, profile) = named_user(&state, peer, path, &uri, &headers).await?;
    let permit = state.exports.acquire(credential.project)?;
    // Handing out a person's data is an act the audit log keeps.
    let target = super::privacy::user_target(&state, credential.project, &id);
    super::privacy::record(&state, &credential, "user.export", target).await?;
    let mut head = profile.to_json();
    head.push(b'\n');
    let pages = trackd_core::store::user_event_pages(state.store.clone(), credential.project, id);
    Ok(ndjson(&state, &credential, permit, head, pages))
}

/// Streams `head`, then each chunk of events as NDJSON lines, from a task of its own
/// through a bounded channel. The store is read in short chunks (nothing held between
/// them); a client that takes nothing for `--export-timeout` loses its export, which ends
/// without its last chunk, so an incomplete export never looks complete; so does one whose
/// key is revoked.
fn ndjson(
    state: &AppState,
    credential: &Credential,
    permit: tokio::sync::OwnedSemaphorePermit,
    head: Vec<u8>,
    chunks: impl futures_util::Stream<
            Item = Result<Vec<trackd_core::read::EventRow>, trackd_core::StoreError>,
        > + Send
        + 'static,
) -> Response {
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(EXPORT_CHUNKS_IN_FLIGHT);
    let timeout = state.limits.export_timeout;
    let finished = Arc::new(AtomicBool::new(false));
    let done = finished.clone();
    let credentials = state.credentials.clone();
    let key = credential.hash;
    tokio::spawn(async move {
        let _permit = permit;
        let mut chunks = std::pin::pin!(chunks);
        let mut buffer = Vec::with_capacity(EXPORT_CHUNK_BYTES + 4096);
        buffer.extend_from_slice(&head);
        let mut count = 0u64;
        while let Some(chunk) = chunks.next().await {
            // A revoked key ends what it opened: no chunk read after the revocation reached
            // this server (the cache is refreshed every second) is sent.
            if !credentials.holds(&key) {
                tracing::debug!(key = %key.fingerprint(), "export ended: key revoked");
                return;
            }
            let events = match chunk {
                Ok(events) => events,
                Err(e) => {
                    // Dropping the sender without `finished` ends the body with an error; no
                    // wait on a client that may be reading nothing.
                    tracing::error!(error = %e, "export failed midway");
                    return;
                }
            };
            for event in &events {
                event.write_json(&mut buffer);
                buffer.push(b'\n');
                count += 1;
                if buffer.len() >= EXPORT_CHUNK_BYTES && !send(&tx, &mut buffer, timeout).await {
                    return;
                }
            }
        }
        if !buffer.is_empty() && !send(&tx, &mut buffer, timeout).await {
            return;
        }
        done.store(true, Ordering::Release);
        tracing::debug!(count, "export finished");
    });
    // The body ends cleanly only after the export finished: a reader that stopped early
    // (timeout, store failure) ends it with an error, so no client takes a cut export for
    // a whole one.
    let stream = futures_util::stream::unfold(Some(rx), move |rx| {
        let finished = finished.clone();
        async move {
            let mut rx = rx?;
            match rx.recv().await {
                Some(item) => Some((item, Some(rx))),
                None if finished.load(Ordering::Acquire) => None,
                None => Some((Err(std::io::Error::other("export ended early")), None)),
            }
        }
    });
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        )],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Hands the buffered NDJSON to the connection; `false` when the export must end: the
/// client went away, or took nothing for `timeout`. Then the body ends with an error (no
/// closing chunk): the client sees a broken transfer, never a short export.
async fn send(
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buffer: &mut Vec<u8>,
    timeout: std::time::Duration,
) -> bool {
    let chunk = Bytes::from(std::mem::replace(
        buffer,
        Vec::with_capacity(EXPORT_CHUNK_BYTES + 4096),
    ));
    match tokio::time::timeout(timeout, tx.send(Ok(chunk))).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            tracing::debug!("export ended: the client read nothing in time");
            // The channel is full; the reader drops it, and the body ends unfinished.
            false
        }
    }
}

/// `GET /api/v2/stats/events`.
pub async fn stats(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (credential, query) = authenticate(&state, peer, &uri, &headers).await?;
    let query = StatsQuery::parse(credential.project, &query)?;
    Ok(json(state.store.stats(query).await?.to_json()))
}

/// `POST /api/v2/events/import`: NDJSON of export lines or Vero track bodies, streamed
/// (no body size limit; each line at most 1 MiB), plain or `Content-Encoding: gzip`
/// (inflated as it arrives; other encodings 415). `?dedup=false` stores track bodies
/// without dedup. Answers the summary once every good line is committed. A body that stops
/// arriving for `--body-timeout` seconds is 408, one that breaks off or whose gzip is bad
/// is 400: the good lines before that point stay imported, and the message says where.
pub async fn import(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    request_body: Body,
) -> Result<Response, ApiError> {
    let (credential, query) = authenticate(&state, peer, &uri, &headers).await?;
    let params = trackd_core::read::Params::new(&query, &["dedup"])?;
    let dedup = match params.get("dedup") {
        None | Some("true") => true,
        Some("false") => false,
        Some(_) => return Err(ApiError::bad_request("dedup", "must be true or false")),
    };
    let input = body::stream(&headers, request_body, state.limits.body_timeout)?;
    let imported = crate::import::run(
        &state.store,
        state.clock.as_ref(),
        credential.project,
        input,
        dedup,
        crate::import::Limits::SERVER,
        |_| {},
    )
    .await;
    let summary = match imported {
        Ok(summary) => summary,
        Err(crate::import::ImportError::Store(e)) => return Err(e.into()),
        Err(crate::import::ImportError::Input { line, error }) => {
            let problem = body::UploadError::of(&error);
            let message = format!("{problem} at line {line} (the lines before it were imported)");
            return Err(match problem {
                body::UploadError::Idle(_) => ApiError::RequestTimeout(format!("body: {message}")),
                _ => ApiError::bad_request("body", message),
            });
        }
    };
    Ok(json(serde_json::to_vec(&summary).unwrap_or_default()))
}

/// How often an idle live stream says it is still there (proxies close silent streams).
const LIVE_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(15);

/// What a live stream shows: all of the project's events, or those of one event name or
/// one user.
struct LiveFilter {
    event_key: Option<String>,
    user: Option<String>,
}

impl LiveFilter {
    fn parse(pairs: &[(String, String)]) -> Result<Self, ApiError> {
        let params = trackd_core::read::Params::new(pairs, &["event_name", "user_id"])?;
        Ok(LiveFilter {
            event_key: params
                .get("event_name")
                .map(|n| trackd_core::EventKey::of(n).as_str().to_owned()),
            user: params.get("user_id").map(str::to_owned),
        })
    }

    fn admits(&self, event: &trackd_core::read::EventRow) -> bool {
        self.event_key
            .as_ref()
            .is_none_or(|k| *k == event.event_key)
            && self.user.as_ref().is_none_or(|u| {
                event.user_id.as_deref() == Some(u.as_str()) || event.email.as_deref() == Some(u)
            })
    }
}

fn live_line(value: &serde_json::Value) -> Bytes {
    let mut line = value.to_string().into_bytes();
    line.push(b'\n');
    Bytes::from(line)
}

/// How often a live stream checks that its key is still active (in the credential cache,
/// itself refreshed every second): a revoked key's stream ends within about two seconds.
const LIVE_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// What a live stream holds between the chunks it sends.
struct LiveState {
    feed: trackd_core::LiveReceiver,
    filter: LiveFilter,
    stopping: tokio_util::sync::CancellationToken,
    credentials: std::sync::Arc<auth::CredentialCache>,
    key: trackd_core::TokenHash,
    recheck: tokio::time::Interval,
    heartbeat: tokio::time::Interval,
    /// The key was revoked and the last line sent: the stream ends.
    revoked: bool,
}

/// `GET /api/v2/events/live`: NDJSON pushed as events are committed (every node's, on
/// PostgreSQL): `{"type":"event","event":{…}}` per event, `{"type":"duplicates","count":n}`
/// per commit that dropped some, a heartbeat after 15 s without a line,
/// `{"type":"lagged","missed":n}` if the reader fell behind. Ends when the server shuts
/// down, and after `{"type":"revoked"}` once its key is revoked: before every batch it
/// sends and every second, it checks that the key is still in the credential cache.
pub async fn live(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (credential, query) = authenticate(&state, peer, &uri, &headers).await?;
    let filter = LiveFilter::parse(&query)?;
    let project = credential.project;
    let every = |period| {
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    };
    let live = LiveState {
        feed: state.store.live().subscribe(project).ok_or_else(|| {
            ApiError::TooManyRequests(format!(
                "live: {} live streams of this project are open on this server, retry when \
                 one ends",
                trackd_core::live::WATCHERS_PER_PROJECT
            ))
        })?,
        filter,
        stopping: state.shutting_down.clone(),
        credentials: state.credentials.clone(),
        key: credential.hash,
        recheck: every(LIVE_RECHECK),
        heartbeat: every(LIVE_HEARTBEAT),
        revoked: false,
    };
    let hello = live_line(&serde_json::json!({"type": "hello"}));
    let first = futures_util::stream::once(async move { Ok::<_, std::io::Error>(hello) });
    let rest = futures_util::stream::unfold(live, move |mut live| async move {
        if live.revoked {
            return None;
        }
        let revoked = |mut live: LiveState| {
            tracing::debug!(key = %live.key.fingerprint(), "live stream ended: key revoked");
            live.revoked = true;
            let line = live_line(&serde_json::json!({"type": "revoked"}));
            Some((Ok::<_, std::io::Error>(line), live))
        };
        loop {
            let received = tokio::select! {
                () = live.stopping.cancelled() => return None,
                _ = live.recheck.tick() => {
                    if !live.credentials.holds(&live.key) {
                        return revoked(live);
                    }
                    continue;
                }
                _ = live.heartbeat.tick() => None,
                r = live.feed.recv() => Some(r),
            };
            let chunk = match received {
                None => live_line(&serde_json::json!({"type": "heartbeat"})),
                Some(Some(LiveItem::Missed(n))) => {
                    live_line(&serde_json::json!({"type": "lagged", "missed": n}))
                }
                Some(None) => return None,
                Some(Some(LiveItem::Batch(batch))) => {
                    // Never one more event for a key that is gone.
                    if !live.credentials.holds(&live.key) {
                        return revoked(live);
                    }
                    let mut out = Vec::new();
                    for event in batch.events.iter().filter(|e| live.filter.admits(e)) {
                        out.extend_from_slice(br#"{"type":"event","event":"#);
                        event.write_json(&mut out);
                        out.extend_from_slice(b"}\n");
                    }
                    if batch.duplicates > 0 {
                        out.extend_from_slice(&live_line(&serde_json::json!(
                            {"type": "duplicates", "count": batch.duplicates}
                        )));
                    }
                    if out.is_empty() {
                        continue;
                    }
                    Bytes::from(out)
                }
            };
            live.heartbeat.reset();
            return Some((Ok::<_, std::io::Error>(chunk), live));
        }
    });
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        Body::from_stream(first.chain(rest)),
    )
        .into_response())
}
