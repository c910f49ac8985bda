//! `/metrics`: Prometheus text from one registry per server (tests run several servers in
//! one process, so nothing is global), and the middleware that admits and counts requests.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use trackd_core::StoreMetrics;

use super::error::ApiError;
use super::AppState;

/// `route` and `status` of a served request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

/// Why events were refused, or which limit refused a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    reason: String,
}

/// What a tracked event became.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    outcome: &'static str,
}

/// The server's metrics and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    events: Family<OutcomeLabels, Counter>,
    suppressed: Counter,
    expired_events: Counter,
    expired_items: Counter,
    rejected: Family<ReasonLabels, Counter>,
    limited: Family<ReasonLabels, Counter>,
    in_flight: Gauge,
    /// Delivery's, per destination.
    pub delivery: Arc<crate::delivery::DeliveryMetrics>,
}

impl Metrics {
    /// A registry with the server's metrics and the store's.
    pub fn new(store: &StoreMetrics) -> Self {
        let mut registry = Registry::with_prefix("trackd");
        let metrics = Metrics {
            requests: Family::default(),
            events: Family::default(),
            suppressed: Counter::default(),
            expired_events: Counter::default(),
            expired_items: Counter::default(),
            rejected: Family::default(),
            limited: Family::default(),
            in_flight: Gauge::default(),
            registry: Registry::default(),
            delivery: Arc::default(),
        };
        registry.register(
            "http_requests",
            "Requests answered, by route, method and status",
            metrics.requests.clone(),
        );
        registry.register(
            "events",
            "Tracked events by outcome (accepted: stored; duplicate: inside the dedup window; \
             suppressed: of a suppressed user)",
            metrics.events.clone(),
        );
        registry.register(
            "retention_deleted_events",
            "Events deleted for being older than their project's retention",
            metrics.expired_events.clone(),
        );
        registry.register(
            "retention_deleted_outbox_items",
            "Outbox items (delivered or not) deleted for being older than their project's retention",
            metrics.expired_items.clone(),
        );
        registry.register(
            "suppressed_writes",
            "Calls naming a suppressed user (events and profile changes): 200, nothing stored",
            metrics.suppressed.clone(),
        );
        registry.register(
            "events_rejected",
            "events/track requests refused, by reason (the refused field, or auth, body, limit, unavailable)",
            metrics.rejected.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused by a limit (token, ip, failed_auth, in_flight, write_queue)",
            metrics.limited.clone(),
        );
        registry.register(
            "http_requests_in_flight",
            "Requests being answered",
            metrics.in_flight.clone(),
        );
        store.register(&mut registry);
        metrics.delivery.register(&mut registry);
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Counts a tracked event by outcome.
    pub fn event(&self, outcome: trackd_core::InsertOutcome) {
        let outcome = match outcome {
            trackd_core::InsertOutcome::Inserted => "accepted",
            trackd_core::InsertOutcome::Duplicate => "duplicate",
            trackd_core::InsertOutcome::Suppressed => "suppressed",
        };
        self.events.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Counts what a retention step deleted.
    pub fn expired(&self, expired: trackd_core::privacy::Expired) {
        self.expired_events.inc_by(expired.events);
        self.expired_items.inc_by(expired.items);
    }

    /// Counts a call (event or profile change) answered as suppressed.
    pub fn suppressed(&self, outcome: trackd_core::InsertOutcome) {
        if outcome == trackd_core::InsertOutcome::Suppressed {
            self.suppressed.inc();
        }
    }

    /// Counts a refused `events/track` request.
    pub fn rejected(&self, error: &ApiError) {
        let reason = error.reason();
        if reason == "rate_limited" {
            return; // counted by the limit that refused it
        }
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts a request refused by `limit`.
    pub fn limited(&self, limit: &str) {
        self.limited
            .get_or_create(&ReasonLabels {
                reason: limit.to_owned(),
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// `GET /metrics`.
pub async fn metrics(State(metrics): State<Arc<Metrics>>) -> Response {
    match metrics.render() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The route a request is counted under: its route pattern, with the Vero `.json` and
/// trailing-slash variants folded into the bare path; `unmatched` for unknown paths (the
/// label set stays bounded whatever clients send).
fn route_label(matched: Option<&MatchedPath>) -> String {
    match matched {
        None => "unmatched".to_owned(),
        Some(m) => {
            let path = m.as_str();
            let path = path.strip_suffix('/').unwrap_or(path);
            path.strip_suffix(".json").unwrap_or(path).to_owned()
        }
    }
}

/// Every request passes here: refused with 503 past the in-flight bound, with 429 past the
/// per-address rate, then answered and counted by route and status.
pub async fn admit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = route_label(request.extensions().get::<MatchedPath>());
    let method = request.method().as_str().to_owned();
    let metrics = state.metrics.clone();
    let response = match state.admission.admit(&request) {
        Err(e) => {
            metrics.limited(e.1);
            e.0.into_response()
        }
        Ok(permit) => {
            // Decremented on drop: also when the client goes away mid-request.
            struct InFlight(prometheus_client::metrics::gauge::Gauge);
            impl Drop for InFlight {
                fn drop(&mut self) {
                    self.0.dec();
                }
            }
            metrics.in_flight.inc();
            let _in_flight = InFlight(metrics.in_flight.clone());
            let response = next.run(request).await;
            drop(permit);
            response
        }
    };
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            method: bounded_method(&method),
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// Methods outside the standard set are counted as `other` (bounded labels).
fn bounded_method(method: &str) -> String {
    match method {
        "GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS" => method.to_owned(),
        _ => "other".to_owned(),
    }
}
