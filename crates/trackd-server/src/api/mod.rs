//! The HTTP surface: routes, shared state, and the fallbacks that keep every answer JSON.
//!
//! - [`track`]: the Vero routes: `events/track`, `users/*`, `heartbeat`.
//! - [`segment`]: the Segment-compatible routes, `/v1/*`.
//! - [`read`]: the read API: profiles, events, export, statistics.
//! - [`body`]: body limits, gzip, JSON and form decoding.
//! - [`auth`]: credential locations and the credential cache.
//! - [`error`]: the one mapping from refusals to HTTP statuses.
//! - [`limit`]: admission: in-flight bound, per-address and per-token rates.
//! - [`metrics`]: `/metrics` and the middleware that admits and counts every request.
//! - [`openapi`]: `/openapi.json`, built from the same route tables as the router.
//! - [`ui`]: the web console at `/ui`, its files embedded in the binary.

pub mod auth;
pub mod body;
pub mod destinations;
pub mod error;
pub mod limit;
pub mod metrics;
pub mod openapi;
pub mod privacy;
pub mod read;
pub mod segment;
pub mod track;
pub mod ui;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, Method, Uri};
use axum::routing::{get, on, post, MethodFilter, MethodRouter};
use axum::Router;
use tower_http::cors::{Any, CorsLayer};
use trackd_core::read::Counter;
use trackd_core::{Clock, DynStore, ProfileOp, ProjectId};

use auth::CredentialCache;
use error::ApiError;

/// The largest request line and headers hyper reads, in bytes (431 past it).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// The most header fields a request may have (431 past it).
pub const MAX_HEADERS: usize = 100;

/// Request limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest body, before and after decompression.
    pub max_body_bytes: usize,
    /// Requests with a missing or unknown credential per client address per second
    /// (0: unlimited).
    pub failed_auth_per_ip: u32,
    /// How long a request body may take to arrive.
    pub body_timeout: std::time::Duration,
    /// How long a connection may take to send a request's headers before it is closed.
    pub header_timeout: std::time::Duration,
    /// How long a write may take to commit before the client is told to retry (503).
    pub request_timeout: std::time::Duration,
    /// Requests answered at once before new ones get 503 (0: unbounded).
    pub max_in_flight: usize,
    /// Requests answered at once for one client address before its new ones get 429
    /// (0: unbounded), so that one address cannot take every in-flight slot.
    pub max_in_flight_per_ip: usize,
    /// Requests per second per client address before 429 (0: unlimited).
    pub ip_rate: u32,
    /// Requests per second per tracking token before 429 (0: unlimited).
    pub token_rate: u32,
    /// What one profile may hold.
    pub profile: trackd_core::users::ProfileLimits,
    /// How long an export waits for its client to take more before it ends.
    pub export_timeout: std::time::Duration,
    /// Largest `/v1/batch` body, before and after decompression.
    pub max_batch_bytes: usize,
    /// Most calls in one `/v1/batch`.
    pub max_batch_items: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1024 * 1024,
            failed_auth_per_ip: 100,
            body_timeout: std::time::Duration::from_secs(30),
            header_timeout: std::time::Duration::from_secs(10),
            request_timeout: std::time::Duration::from_secs(30),
            max_in_flight: 4096,
            max_in_flight_per_ip: 1024,
            ip_rate: 0,
            token_rate: 0,
            profile: trackd_core::users::ProfileLimits::default(),
            export_timeout: std::time::Duration::from_secs(30),
            max_batch_bytes: 500_000,
            max_batch_items: 2_500,
        }
    }
}

/// What every handler can reach: one allocation shared by every request (axum clones the
/// state for each one, so a clone is one reference count).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// The state of a server.
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct Shared {
    /// Where events go.
    pub store: DynStore,
    /// Active credentials.
    pub credentials: Arc<CredentialCache>,
    /// Seals and opens read cursors (its secret is kept in the store).
    pub cursor_key: Arc<trackd_core::read::CursorKey>,
    /// Names users in the audit log by keyed hash (the store's secret, as the store's own
    /// suppression hashes).
    pub suppression_key: Arc<trackd_core::privacy::SuppressionKey>,
    /// Receive times come from here.
    pub clock: Arc<dyn Clock>,
    /// Request limits.
    pub limits: Limits,
    /// Refused requests not yet added to the store's totals.
    pub rejections: Arc<Rejections>,
    /// Failed credentials per client address.
    pub failed_auth: Arc<auth::FailedAuthLimiter>,
    /// In-flight bound and rate limits.
    pub admission: Arc<limit::Admission>,
    /// Counters and histograms for `/metrics`.
    pub metrics: Arc<metrics::Metrics>,
    /// Cancelled when the server starts shutting down: endless streams (the live view)
    /// end then instead of holding the exit.
    pub shutting_down: tokio_util::sync::CancellationToken,
    /// Exports running per project.
    pub exports: Arc<ExportPermits>,
}

/// Exports one project may run at once: its own exports, however slowly they are read,
/// never hold another project's back.
pub const EXPORTS_PER_PROJECT: usize = 2;

/// The export permits of each project.
#[derive(Default)]
pub struct ExportPermits(
    std::sync::Mutex<std::collections::HashMap<ProjectId, Arc<tokio::sync::Semaphore>>>,
);

impl ExportPermits {
    /// A permit for one more export of `project`, held until the export ends; 429 when the
    /// project runs as many as it may.
    pub fn acquire(
        &self,
        project: ProjectId,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, error::ApiError> {
        let semaphore = match self.0.lock() {
            Ok(mut map) => map
                .entry(project)
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(EXPORTS_PER_PROJECT)))
                .clone(),
            Err(_) => Arc::new(tokio::sync::Semaphore::new(EXPORTS_PER_PROJECT)),
        };
        semaphore.try_acquire_owned().map_err(|_| {
            error::ApiError::TooManyRequests(format!(
                "export: {EXPORTS_PER_PROJECT} exports of this project are running, retry when one ends"
            ))
        })
    }
}

/// Counts of refused requests by project and reason, added to the store's running totals
/// in the background (a burst of bad requests must not become a burst of writes).
#[derive(Default)]
pub struct Rejections(std::sync::Mutex<std::collections::HashMap<(ProjectId, Counter), i64>>);

impl Rejections {
    /// Counts one refusal of a request for `project` because of `field`.
    pub fn record(&self, project: ProjectId, field: &str) {
        if let Ok(mut counts) = self.0.lock() {
            let reason = Counter::Rejected(trackd_core::read::rejection_reason(field));
            *counts.entry((project, reason)).or_default() += 1;
        }
    }

    /// Takes the counts gathered so far.
    pub fn take(&self) -> Vec<(ProjectId, Counter, i64)> {
        match self.0.lock() {
            Ok(mut counts) => counts.drain().map(|((p, name), n)| (p, name, n)).collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// The Vero v2 path `name` with the variants every client uses: bare, `.json`, trailing `/`.
fn vero_paths(name: &str) -> [String; 3] {
    [
        format!("/api/v2/{name}"),
        format!("/api/v2/{name}.json"),
        format!("/api/v2/{name}/"),
    ]
}

/// What answers a Vero route.
#[derive(Clone, Copy)]
enum Handler {
    Track,
    Profile(ProfileOp),
    Heartbeat,
}

/// The Vero routes: path, the methods real clients use (also the `Allow` header of a 405),
/// and what answers.
const VERO_ROUTES: [(&str, &str, Handler); 9] = [
    ("events/track", "POST", Handler::Track),
    ("users/track", "POST", Handler::Profile(ProfileOp::Track)),
    ("users/edit", "PUT, POST", Handler::Profile(ProfileOp::Edit)),
    (
        "users/tags/edit",
        "PUT, POST",
        Handler::Profile(ProfileOp::Tags),
    ),
    (
        "users/unsubscribe",
        "POST",
        Handler::Profile(ProfileOp::Unsubscribe),
    ),
    (
        "users/resubscribe",
        "POST",
        Handler::Profile(ProfileOp::Resubscribe),
    ),
    (
        "users/delete",
        "POST, DELETE",
        Handler::Profile(ProfileOp::Delete),
    ),
    (
        "users/reidentify",
        "PUT, POST",
        Handler::Profile(ProfileOp::Reidentify),
    ),
    ("heartbeat", "GET", Handler::Heartbeat),
];

/// What answers a Segment-compatible route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SegmentRoute {
    /// One call of this kind.
    Call(trackd_core::segment::Call),
    /// A batch of calls.
    Batch,
    /// analytics.js's own usage metrics: no write key, nothing to store.
    Metrics,
}

/// The Segment-compatible routes (`POST` only): Segment's paths, and the one-letter ones
/// analytics.js 2.0 posts to (`/v1/t` for a track, `/v1/b` for a batch, `/v1/m` for its
/// metrics).
pub(crate) const SEGMENT_ROUTES: [(&str, SegmentRoute); 16] = {
    use trackd_core::segment::Call::*;
    use SegmentRoute::*;
    [
        ("/v1/track", Call(Track)),
        ("/v1/identify", Call(Identify)),
        ("/v1/page", Call(Page)),
        ("/v1/screen", Call(Screen)),
        ("/v1/group", Call(Group)),
        ("/v1/alias", Call(Alias)),
        ("/v1/batch", Batch),
        ("/v1/import", Batch),
        ("/v1/t", Call(Track)),
        ("/v1/i", Call(Identify)),
        ("/v1/p", Call(Page)),
        ("/v1/s", Call(Screen)),
        ("/v1/g", Call(Group)),
        ("/v1/a", Call(Alias)),
        ("/v1/b", Batch),
        ("/v1/m", Metrics),
    ]
};

/// The `/v1` routes.
fn segment_routes() -> Router<AppState> {
    let mut router = Router::new();
    for (path, route) in SEGMENT_ROUTES {
        let method_router = match route {
            SegmentRoute::Call(call) => post(
                move |State(state): State<AppState>,
                      ConnectInfo(peer): ConnectInfo<SocketAddr>,
                      headers: HeaderMap,
                      body: Body| {
                    segment::single(call, state, peer, headers, body)
                },
            ),
            SegmentRoute::Batch => post(segment::batch),
            SegmentRoute::Metrics => post(segment::metrics),
        };
        router = router.route(path, with_allow(method_router, "POST"));
    }
    router
}

/// What answers a read route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadRoute {
    User,
    UserEvents,
    UserExport,
    Events,
    Export,
    Import,
    Stats,
    Live,
    Suppress,
    Unsuppress,
    Audit,
    Project,
}

/// The read routes (secret key): path, method, what answers.
const READ_ROUTES: [(&str, &str, ReadRoute); 12] = [
    ("/api/v2/project", "GET", ReadRoute::Project),
    ("/api/v2/users/{id}", "GET", ReadRoute::User),
    ("/api/v2/users/{id}/events", "GET", ReadRoute::UserEvents),
    ("/api/v2/users/{id}/export", "GET", ReadRoute::UserExport),
    ("/api/v2/users/{id}/suppress", "POST", ReadRoute::Suppress),
    (
        "/api/v2/users/{id}/unsuppress",
        "POST",
        ReadRoute::Unsuppress,
    ),
    ("/api/v2/audit", "GET", ReadRoute::Audit),
    ("/api/v2/events", "GET", ReadRoute::Events),
    ("/api/v2/events/export", "GET", ReadRoute::Export),
    ("/api/v2/events/import", "POST", ReadRoute::Import),
    ("/api/v2/stats/events", "GET", ReadRoute::Stats),
    ("/api/v2/events/live", "GET", ReadRoute::Live),
];

/// The destination routes (secret key): path, its methods (the `Allow` header of a 405),
/// and what answers each method.
type DestinationRoute = (
    &'static str,
    &'static str,
    &'static [(&'static str, destinations::Action)],
);
pub(crate) const DESTINATION_ROUTES: [DestinationRoute; 7] = {
    use destinations::Action::*;
    [
        (
            "/api/v2/destinations",
            "GET, POST",
            &[("GET", List), ("POST", Create)],
        ),
        (
            "/api/v2/destinations/{name}",
            "GET, DELETE",
            &[("GET", Show), ("DELETE", Remove)],
        ),
        (
            "/api/v2/destinations/{name}/pause",
            "POST",
            &[("POST", Pause)],
        ),
        (
            "/api/v2/destinations/{name}/resume",
            "POST",
            &[("POST", Resume)],
        ),
        (
            "/api/v2/destinations/{name}/replay",
            "POST",
            &[("POST", Replay)],
        ),
        (
            "/api/v2/destinations/{name}/redrive",
            "POST",
            &[("POST", Redrive)],
        ),
        (
            "/api/v2/destinations/{name}/dead-letters",
            "GET",
            &[("GET", DeadLetters)],
        ),
    ]
};

/// The destination routes, one method router per path.
fn destination_routes() -> Router<AppState> {
    let mut router = Router::new();
    for (path, allow, methods) in DESTINATION_ROUTES {
        let mut method_router: MethodRouter<AppState> = MethodRouter::new();
        for &(method, action) in methods {
            method_router = method_router.on(
                method_filter(method),
                move |State(state): State<AppState>,
                      ConnectInfo(peer): ConnectInfo<SocketAddr>,
                      path: Result<
                    axum::extract::Path<String>,
                    axum::extract::rejection::PathRejection,
                >,
                      uri: Uri,
                      headers: HeaderMap,
                      body: Body| {
                    destinations::handle(action, state, peer, path, uri, headers, body)
                },
            );
        }
        router = router.route(path, with_allow(method_router, allow));
    }
    router
}

/// The methods of an `Allow` list (`"GET, POST"`) as a filter.
fn method_filter(allow: &str) -> MethodFilter {
    allow
        .split(", ")
        .filter_map(|m| MethodFilter::try_from(Method::from_bytes(m.as_bytes()).ok()?).ok())
        .reduce(MethodFilter::or)
        .unwrap_or(MethodFilter::POST)
}

fn method_router(allow: &'static str, handler: Handler) -> MethodRouter<AppState> {
    let filter = method_filter(allow);
    let router = match handler {
        Handler::Track => on(filter, track::track),
        Handler::Heartbeat => on(filter, track::heartbeat),
        Handler::Profile(op) => on(
            filter,
            move |State(state): State<AppState>,
                  ConnectInfo(peer): ConnectInfo<SocketAddr>,
                  uri: Uri,
                  headers: HeaderMap,
                  body: Body| { track::profile(op, state, peer, uri, headers, body) },
        ),
    };
    with_allow(router, allow)
}

/// Answers other methods with a JSON 405 naming the allowed ones.
fn with_allow(router: MethodRouter<AppState>, allow: &'static str) -> MethodRouter<AppState> {
    router.fallback(move |uri: Uri| async move {
        ApiError::MethodNotAllowed {
            path: uri.path().to_owned(),
            allow,
        }
    })
}

/// Builds the router; `/metrics` is on it unless it is served on an address of its own.
pub fn router(state: AppState, with_metrics: bool) -> Router {
    let mut vero = Router::new();
    for (name, allow, handler) in VERO_ROUTES {
        let method_router = method_router(allow, handler);
        for path in vero_paths(name) {
            vero = vero.route(&path, method_router.clone());
        }
    }
    // The JavaScript SDKs (Vero's, analytics.js) call these routes from browsers with a
    // JSON body: every origin, no credentials (the key is in the URL, body or an
    // Authorization header, never a cookie).
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
        // RudderStack's browser SDK (v3) sends its anonymous id as a header of its own.
        .allow_headers([
            header::CONTENT_TYPE,
            header::ACCEPT,
            header::AUTHORIZATION,
            header::HeaderName::from_static("anonymousid"),
        ])
        // Browsers keep an answered preflight this long (Chromium caps it at 2 hours)
        // instead of asking again before every call.
        .max_age(std::time::Duration::from_secs(7200));
    // The read API: exact paths (no `.json` or trailing-slash variants), no CORS.
    let mut reads = Router::new();
    for (path, allow, route) in READ_ROUTES {
        let method_router = match route {
            ReadRoute::User => get(read::user),
            ReadRoute::UserEvents => get(read::user_events),
            ReadRoute::UserExport => get(read::user_export),
            ReadRoute::Events => get(read::events),
            ReadRoute::Export => get(read::export),
            ReadRoute::Import => post(read::import),
            ReadRoute::Stats => get(read::stats),
            ReadRoute::Live => get(read::live),
            ReadRoute::Suppress => post(privacy::suppress),
            ReadRoute::Unsuppress => post(privacy::unsuppress),
            ReadRoute::Audit => get(privacy::audit),
            ReadRoute::Project => get(privacy::project),
        };
        reads = reads.route(path, with_allow(method_router, allow));
    }
    reads = reads.merge(destination_routes());
    // Probes: no credential.
    let probes = Router::new()
        .route("/healthz", with_allow(get(track::healthz), "GET"))
        .route("/readyz", with_allow(get(track::readyz), "GET"))
        .route("/openapi.json", with_allow(get(openapi::document), "GET"))
        .route("/", with_allow(get(ui::root), "GET"))
        .route("/ui", with_allow(get(ui::page), "GET"))
        .route("/ui/", with_allow(get(ui::page), "GET"))
        .route("/ui/{file}", with_allow(get(ui::asset), "GET"));
    let mut router = vero
        .merge(segment_routes())
        .layer(cors)
        .merge(reads)
        .merge(probes)
        .fallback(|uri: Uri| async move {
            ApiError::NotFound(format!("{}: no such route", uri.path()))
        });
    if with_metrics {
        router = router.merge(metrics_router(state.metrics.clone()));
    }
    router
        // Inside admission: refusals are counted like any answer.
        .layer(axum::middleware::from_fn(auth::refuse_secret_in_query))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::admit,
        ))
        .with_state(state)
}

/// `/metrics` alone, for `--metrics-listen`.
pub fn metrics_router<S>(metrics: Arc<metrics::Metrics>) -> Router<S> {
    Router::new()
        .route("/metrics", with_allow_any(get(metrics::metrics), "GET"))
        .with_state(metrics)
}

fn with_allow_any<S: Clone + Send + Sync + 'static>(
    router: MethodRouter<S>,
    allow: &'static str,
) -> MethodRouter<S> {
    router.fallback(move |uri: Uri| async move {
        ApiError::MethodNotAllowed {
            path: uri.path().to_owned(),
            allow,
        }
    })
}
