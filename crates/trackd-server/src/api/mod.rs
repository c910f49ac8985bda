//! The HTTP surface: routes, shared state, and the fallbacks that keep every answer JSON.
//!
//! - [`track`]: the Vero routes: `events/track`, `users/*`, `heartbeat`.
//! - [`body`]: body limits, gzip, JSON and form decoding.
//! - [`auth`]: credential locations and the credential cache.
//! - [`error`]: the one mapping from refusals to HTTP statuses.

pub mod auth;
pub mod body;
pub mod error;
pub mod track;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, Uri};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;
use tower_http::cors::{Any, CorsLayer};
use trackd_core::{Clock, DynStore, ProfileOp};

use auth::CredentialCache;
use error::ApiError;

/// Request limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest body, before and after decompression.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// Where events go.
    pub store: DynStore,
    /// Active credentials.
    pub credentials: Arc<CredentialCache>,
    /// Receive times come from here.
    pub clock: Arc<dyn Clock>,
    /// Request limits.
    pub limits: Limits,
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

fn method_router(allow: &'static str, handler: Handler) -> MethodRouter<AppState> {
    let filter = allow
        .split(", ")
        .filter_map(|m| MethodFilter::try_from(Method::from_bytes(m.as_bytes()).ok()?).ok())
        .reduce(MethodFilter::or)
        .unwrap_or(MethodFilter::POST);
    let router = match handler {
        Handler::Track => on(filter, track::track),
        Handler::Heartbeat => on(filter, track::heartbeat),
        Handler::Profile(op) => on(
            filter,
            move |State(state): State<AppState>, uri: Uri, headers: HeaderMap, body: Body| {
                track::profile(op, state, uri, headers, body)
            },
        ),
    };
    router.fallback(move |uri: Uri| async move {
        ApiError::MethodNotAllowed {
            path: uri.path().to_owned(),
            allow,
        }
    })
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    let mut vero = Router::new();
    for (name, allow, handler) in VERO_ROUTES {
        let method_router = method_router(allow, handler);
        for path in vero_paths(name) {
            vero = vero.route(&path, method_router.clone());
        }
    }
    // The JavaScript SDK calls these routes from browsers with a JSON body: every origin,
    // no credentials (the token is in the URL or body, never a cookie).
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
        .allow_headers([header::CONTENT_TYPE, header::ACCEPT, header::AUTHORIZATION]);
    vero.layer(cors)
        .fallback(
            |uri: Uri| async move { ApiError::NotFound(format!("{}: no such route", uri.path())) },
        )
        .with_state(state)
}
