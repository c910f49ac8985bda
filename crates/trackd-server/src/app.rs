//! [`App`]: the server, built from a store and served on a listener the caller bound (tests
//! bind port 0), until a shutdown future resolves.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt;
use trackd_core::read::CursorKey;
use trackd_core::{Clock, DynStore, StoreError};

use crate::api::auth::{CredentialCache, REFRESH_EVERY};
use crate::api::limit::Admission;
use crate::api::metrics::Metrics;
use crate::api::{self, AppState, Limits, Rejections};

/// A server ready to run.
pub struct App {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    state: AppState,
    delivery: crate::delivery::DeliveryConfig,
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
        let secret = store.cursor_key().await?;
        let cursor_key = Arc::new(CursorKey::new(secret));
        let suppression_key = Arc::new(trackd_core::privacy::SuppressionKey::new(&secret));
        let metrics = Arc::new(Metrics::new(&store.metrics()));
        Ok(App {
            listener,
            metrics_listener: None,
            delivery: crate::delivery::DeliveryConfig::default(),
            state: AppState::new(crate::api::Shared {
                admission: Arc::new(Admission::new(&limits)),
                metrics,
                shutting_down: tokio_util::sync::CancellationToken::new(),
                exports: Default::default(),
                store,
                credentials,
                cursor_key,
                suppression_key,
                clock,
                limits,
                rejections: Arc::default(),
                failed_auth: Arc::new(crate::api::auth::FailedAuthLimiter::new(
                    limits.failed_auth_per_ip,
                )),
            }),
        })
    }

    /// Serves `/metrics` on `listener` instead of the main address.
    pub fn with_metrics_listener(mut self, listener: TcpListener) -> Self {
        self.metrics_listener = Some(listener);
        self
    }

    /// How this server delivers to destinations (on by default).
    pub fn with_delivery(mut self, config: crate::delivery::DeliveryConfig) -> Self {
        self.delivery = config;
        self
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
        let App {
            listener,
            metrics_listener,
            state,
            delivery,
        } = self;
        let header_timeout = state.limits.header_timeout;
        let store = state.store.clone();
        let mut background = vec![
            tokio::spawn(refresh_credentials(state.credentials.clone())),
            tokio::spawn(flush_rejections(store.clone(), state.rejections.clone())),
            tokio::spawn(prune_rate_limits(state.admission.clone())),
            tokio::spawn(crate::retention::run(
                store.clone(),
                state.clock.clone(),
                state.metrics.clone(),
            )),
        ];
        let delivering = tokio_util::sync::CancellationToken::new();
        let delivery = delivery.enabled.then(|| {
            tokio::spawn(crate::delivery::run(
                store.clone(),
                state.clock.clone(),
                delivery,
                state.metrics.delivery.clone(),
                delivering.clone(),
            ))
        });
        let metrics_listener_absent = metrics_listener.is_none();
        if let Some(listener) = metrics_listener {
            let router = api::metrics_router(state.metrics.clone())
                .layer(axum::middleware::from_fn(api::auth::refuse_secret_in_query));
            background.push(tokio::spawn(async move {
                let never = std::future::pending::<()>();
                if let Err(e) = serve(listener, router, header_timeout, never).await {
                    tracing::error!(error = %e, "metrics listener failed");
                }
            }));
        }
        let rejections = state.rejections.clone();
        let stopping = state.shutting_down.clone();
        let shutdown = async move {
            shutdown.await;
            stopping.cancel();
        };
        let router = api::router(state, metrics_listener_absent);
        let served = serve(listener, router, header_timeout, shutdown).await;
        // Delivery stops first and records how far its receivers acknowledged; an attempt in
        // flight is sent again after a restart (its items keep their ids).
        delivering.cancel();
        if let Some(delivery) = delivery {
            let _ = delivery.await;
        }
        for task in background {
            task.abort();
        }
        flush(&store, &rejections).await;
        if let Err(e) = store.shutdown().await {
            tracing::error!(error = %e, "store did not shut down cleanly");
        }
        served
    }
}

/// How long a shutdown waits for open connections.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);

/// After an accept error that is not about one connection (out of file descriptors or
/// memory): how long the accept loop waits before trying again, instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one log line per this long about failing accepts.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(1);

/// The accept loop: HTTP/1.1 only (an HTTP/2 preface is refused as a malformed request
/// and the connection closed; `Upgrade: h2c` is ignored), a header read timeout that runs
/// from a connection's start and from each answer (a connection that sends nothing, or
/// never completes its headers, is closed), hyper's own refusals answered as JSON
/// ([`crate::conn`]), each request told its peer address, and a graceful end: once
/// `shutdown` resolves, no new connection is accepted and the open ones finish the request
/// they are on.
async fn serve(
    listener: TcpListener,
    router: axum::Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_headers(api::MAX_HEADERS)
        .max_header_size(api::MAX_HEADER_BYTES)
        // One flat buffer per write: what `conn::JsonRefusals` looks at.
        .writev(false);
    let graceful = GracefulShutdown::new();
    let mut accept_errors = AcceptErrors::default();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            // One connection's trouble (reset before it was accepted): the next one.
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors and the like: the pending connection stays
                // queued, so retrying at once would spin. Wait, and say so now and then.
                accept_errors.failed(&e);
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    () = &mut shutdown => break,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(request)
        });
        let io = TokioIo::new(crate::conn::JsonRefusals::new(stream));
        let connection = graceful.watch(builder.serve_connection(io, service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection closed with an error");
            }
        });
    }
    drop(listener);
    // Requests in flight finish; a connection still busy after the deadline (a slow export
    // reader) is dropped rather than holding the exit.
    if tokio::time::timeout(SHUTDOWN_DEADLINE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open at the shutdown deadline, closing them");
    }
    Ok(())
}

/// An accept error about one connection only (it went away before it was accepted).
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    )
}

/// Failed accepts, logged at most once per [`ACCEPT_LOG_EVERY`] with how many there were.
#[derive(Default)]
struct AcceptErrors {
    last_logged: Option<tokio::time::Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    fn failed(&mut self, e: &std::io::Error) {
        self.unlogged += 1;
        let now = tokio::time::Instant::now();
        if self
            .last_logged
            .is_some_and(|last| now.duration_since(last) < ACCEPT_LOG_EVERY)
        {
            return;
        }
        tracing::warn!(error = %e, failures = self.unlogged,
            "accept failed, retrying (out of file descriptors? see ulimit -n)");
        self.last_logged = Some(now);
        self.unlogged = 0;
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

/// How often rate-limit state of senders that went quiet is dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

async fn prune_rate_limits(admission: Arc<Admission>) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    loop {
        tick.tick().await;
        admission.prune();
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
