//! Retention (DESIGN §10): a background task that deletes each project's events received
//! longer ago than its retention, with its outbox items of that age, a short transaction
//! ([`RETENTION_CHUNK`] rows) at a time, leaving the writer to ingest between steps. The
//! statistics keep the deleted events' counts (per hour). On PostgreSQL every node runs it;
//! nodes skip each other's rows.

use std::sync::Arc;
use std::time::Duration;

use trackd_core::privacy::RETENTION_CHUNK;
use trackd_core::{Clock, DynStore, StoreError, Timestamp};

use crate::api::metrics::Metrics;

/// How often projects are looked at.
pub const RETENTION_EVERY: Duration = Duration::from_secs(2);

/// The pause between two steps of a large deletion: requests queued behind one step are
/// written before the next.
const BETWEEN_STEPS: Duration = Duration::from_millis(5);

/// Runs until aborted (at shutdown).
pub async fn run(store: DynStore, clock: Arc<dyn Clock>, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(RETENTION_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = expire_all(&store, clock.as_ref(), &metrics).await {
            tracing::warn!(error = %e, "retention step failed, retrying later");
        }
    }
}

/// Deletes everything past its retention now, project by project.
pub async fn expire_all(
    store: &DynStore,
    clock: &dyn Clock,
    metrics: &Metrics,
) -> Result<(), StoreError> {
    for project in store.projects().await? {
        let Some(retention) = project.retention else {
            continue;
        };
        let cutoff = Timestamp::from_micros(clock.now().as_micros().saturating_sub(retention));
        loop {
            let expired = store.expire(project.id, cutoff, RETENTION_CHUNK).await?;
            metrics.expired(expired);
            if expired.events > 0 || expired.items > 0 {
                tracing::debug!(
                    project = %project.name,
                    events = expired.events,
                    items = expired.items,
                    "expired past retention"
                );
            }
            let full = RETENTION_CHUNK as u64;
            if expired.events < full && expired.items < full {
                break;
            }
            tokio::time::sleep(BETWEEN_STEPS).await;
        }
    }
    Ok(())
}
