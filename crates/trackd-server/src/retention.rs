//! Retention (DESIGN §10): a background task that deletes each project's events received
//! longer ago than its retention, with its outbox items of that age, a short transaction
//! ([`RETENTION_CHUNK`] rows) at a time, paced to a fifth of the writer's time. The
//! statistics keep the deleted events' counts (per hour). On PostgreSQL every node runs it;
//! nodes skip each other's rows.

use std::sync::Arc;
use std::time::Duration;

use trackd_core::privacy::RETENTION_CHUNK;
use trackd_core::{Clock, DynStore, StoreError, Timestamp};

use crate::api::metrics::Metrics;

/// How often projects are looked at.
pub const RETENTION_EVERY: Duration = Duration::from_secs(2);

/// The pause after a step of a large deletion, as a multiple of the step's time: the task
/// takes at most a fifth of the writer's time, however large the backlog (measured with
/// no pacing but 5 ms between steps: ingest halved while 38k events/s were deleted;
/// `bench/retention.sh`).
const PAUSE_PER_STEP: u32 = 4;
/// The shortest pause between two steps: requests queued behind one step are written
/// before the next.
const MIN_PAUSE: Duration = Duration::from_millis(5);

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

/// Deletes everything past its retention now. Projects take turns, a step each: one
/// project's large backlog never holds back another's retention.
pub async fn expire_all(
    store: &DynStore,
    clock: &dyn Clock,
    metrics: &Metrics,
) -> Result<(), StoreError> {
    let now = clock.now().as_micros();
    let mut due: Vec<(trackd_core::Project, Timestamp)> = store
        .projects()
        .await?
        .into_iter()
        .filter_map(|p| {
            let cutoff = Timestamp::from_micros(now.saturating_sub(p.retention?));
            Some((p, cutoff))
        })
        .collect();
    while !due.is_empty() {
        let mut more = Vec::new();
        for (project, cutoff) in due {
            let started = std::time::Instant::now();
            let expired = store.expire(project.id, cutoff, RETENTION_CHUNK).await?;
            metrics.expired(expired);
            if expired.events > 0 || expired.items > 0 {
                // The time includes the wait for the writer (SQLite: behind queued batches).
                tracing::debug!(
                    project = %project.name,
                    events = expired.events,
                    items = expired.items,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "expired past retention"
                );
            }
            let full = RETENTION_CHUNK as u64;
            if expired.events >= full || expired.items >= full {
                more.push((project, cutoff));
                tokio::time::sleep((started.elapsed() * PAUSE_PER_STEP).max(MIN_PAUSE)).await;
            }
        }
        due = more;
    }
    Ok(())
}
