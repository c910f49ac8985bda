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
use axum::response::Response;
use axum::routing::{get, on, post, MethodFilter, MethodRouter};
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

/// The handler of one `users/*` operation.
fn profile(
    op: ProfileOp,
) -> impl Fn(State<AppState>, Uri, HeaderMap, Body) -> BoxFuture<Result<Response, ApiError>>
       + Clone
       + Send
       + Sync
       + 'static {
    move |State(state), uri, headers, body| Box::pin(track::profile(op, state, uri, headers, body))
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Builds the router.
pub fn router(state: AppState) -> Router {
    let mut vero = Router::new();
    let put_post = MethodFilter::PUT.or(MethodFilter::POST);
    let post_delete = MethodFilter::POST.or(MethodFilter::DELETE);
    let routes: [(&str, MethodRouter<AppState>, &'static str); 9] = [
        ("events/track", post(track::track), "POST"),
        (
            "users/track",
            on(MethodFilter::POST, profile(ProfileOp::Track)),
            "POST",
        ),
        (
            "users/edit",
            on(put_post, profile(ProfileOp::Edit)),
            "PUT, POST",
        ),
        (
            "users/tags/edit",
            on(put_post, profile(ProfileOp::Tags)),
            "PUT, POST",
        ),
        (
            "users/unsubscribe",
            on(MethodFilter::POST, profile(ProfileOp::Unsubscribe)),
            "POST",
        ),
        (
            "users/resubscribe",
            on(MethodFilter::POST, profile(ProfileOp::Resubscribe)),
            "POST",
        ),
        (
            "users/delete",
            on(post_delete, profile(ProfileOp::Delete)),
            "POST, DELETE",
        ),
        (
            "users/reidentify",
            on(put_post, profile(ProfileOp::Reidentify)),
            "PUT, POST",
        ),
        ("heartbeat", get(track::heartbeat), "GET"),
    ];
    for (name, method_router, allow) in routes {
        let method_router = method_router.fallback(move |uri: Uri| async move {
            ApiError::MethodNotAllowed {
                path: uri.path().to_owned(),
                allow,
            }
        });
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
