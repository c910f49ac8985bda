//! [`App`]: the server, built from a store and served on a listener the caller bound (tests
//! bind port 0), until a shutdown future resolves.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use trackd_core::{Clock, DynStore, StoreError};

use crate::api::auth::{CredentialCache, REFRESH_EVERY};
use crate::api::{self, AppState, Limits};

/// A server ready to run.
pub struct App {
    listener: TcpListener,
    state: AppState,
}

impl App {
    /// Loads credentials and prepares the router; nothing is served until [`App::run`].
    pub async fn build(
        listener: TcpListener,
        store: DynStore,
        clock: Arc<dyn Clock>,
        limits: Limits,
    ) -> Result<Self, StoreError> {
        let credentials = CredentialCache::load(store.clone()).await?;
        Ok(App {
            listener,
            state: AppState {
                store,
                credentials,
                clock,
                limits,
            },
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then stops accepting, answers the requests in
    /// flight, commits what the writer holds, and returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let App { listener, state } = self;
        let store = state.store.clone();
        let refresher = tokio::spawn(refresh_credentials(state.credentials.clone()));
        let router = api::router(state);
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await;
        refresher.abort();
        if let Err(e) = store.shutdown().await {
            tracing::error!(error = %e, "store did not shut down cleanly");
        }
        served
    }
}

async fn refresh_credentials(cache: Arc<CredentialCache>) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = cache.refresh().await {
            tracing::warn!(error = %e, "credential refresh failed");
        }
    }
}
