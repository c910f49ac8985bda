//! The HTTP surface: routes, shared state, and the fallbacks that keep every answer JSON.
//!
//! - [`track`]: the Vero routes implemented so far.
//! - [`body`]: body limits, gzip, JSON and form decoding.
//! - [`auth`]: credential locations and the credential cache.
//! - [`error`]: the one mapping from refusals to HTTP statuses.

pub mod auth;
pub mod body;
pub mod error;
pub mod track;

use std::sync::Arc;

use axum::http::{header, Method, Uri};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use tower_http::cors::{Any, CorsLayer};
use trackd_core::{Clock, DynStore};

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

/// Builds the router.
pub fn router(state: AppState) -> Router {
    let mut vero = Router::new();
    let routes: [(&str, MethodRouter<AppState>, &'static str); 2] = [
        ("events/track", post(track::track), "POST"),
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
