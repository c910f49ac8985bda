//! [`App`]: the server, built from a store and served on a listener the caller bound (tests
//! bind port 0), until a shutdown future resolves.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use trackd_core::{Clock, DynStore, StoreError};

use crate::api::auth::{CredentialCache, REFRESH_EVERY};
use crate::api::{self, AppState, Limits, Rejections};

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
                rejections: Arc::default(),
                failed_auth: Arc::new(crate::api::auth::FailedAuthLimiter::new(
                    limits.failed_auth_per_ip,
                )),
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
        let rejections = state.rejections.clone();
        let counter = tokio::spawn(flush_rejections(store.clone(), rejections.clone()));
        let router = api::router(state);
        let served = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await;
        refresher.abort();
        counter.abort();
        flush(&store, &rejections).await;
        if let Err(e) = store.shutdown().await {
            tracing::error!(error = %e, "store did not shut down cleanly");
        }
        served
    }
}

/// How often refusal counts are added to the store's totals.
const FLUSH_REJECTIONS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

async fn flush_rejections(store: DynStore, rejections: Arc<Rejections>) {
    let mut tick = tokio::time::interval(FLUSH_REJECTIONS_EVERY);
    loop {
        tick.tick().await;
        flush(&store, &rejections).await;
    }
}

async fn flush(store: &DynStore, rejections: &Rejections) {
    let counts = rejections.take();
    if !counts.is_empty() {
        if let Err(e) = store.add_counters(counts).await {
            tracing::warn!(error = %e, "refusal counts not saved");
        }
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
