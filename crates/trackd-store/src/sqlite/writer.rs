//! The single writer: a thread that owns the write connection and commits batches of
//! concurrent requests in one transaction each (group commit).
//!
//! Requests wait on a oneshot channel; each is answered only after the transaction holding
//! it committed, or with [`StoreError::Unavailable`] if it did not. Batching is what makes
//! `synchronous=FULL` affordable: one fsync covers every event in the batch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::oneshot;
use trackd_core::{Clock, InsertOutcome, StoreError, TrackedEvent};

/// The most requests committed in one transaction.
const MAX_BATCH: usize = 1024;
/// How often expired dedup records are purged.
const PURGE_EVERY: Duration = Duration::from_secs(30);
/// The most dedup records deleted per purge transaction, so a purge never holds the write
/// lock for long.
const PURGE_CHUNK: i64 = 20_000;

/// A queued write and where its answer goes.
pub(crate) enum Job {
    Track {
        event: Box<TrackedEvent>,
        reply: oneshot::Sender<Result<InsertOutcome, StoreError>>,
    },
    /// Commit everything queued before it, then stop.
    Shutdown,
}

pub(crate) struct Writer {
    pub conn: Connection,
    pub jobs: Receiver<Job>,
    pub clock: Arc<dyn Clock>,
    /// Dedup window in microseconds; 0 turns dedup off.
    pub window_micros: i64,
    pub ready: Arc<AtomicBool>,
}

impl Writer {
    pub fn run(mut self) {
        let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
        let mut last_purge = Instant::now();
        let mut stopping = false;
        while !stopping {
            match self.jobs.recv_timeout(PURGE_EVERY) {
                Ok(job) => batch.push(job),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while batch.len() < MAX_BATCH {
                match self.jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            if let Some(pos) = batch.iter().position(|j| matches!(j, Job::Shutdown)) {
                // Everything queued before the shutdown is answered; a sender racing the
                // shutdown may still have queued jobs behind it: take them too.
                batch.remove(pos);
                while let Ok(job) = self.jobs.try_recv() {
                    if !matches!(job, Job::Shutdown) {
                        batch.push(job);
                    }
                }
                stopping = true;
            }
            if !batch.is_empty() {
                self.commit_batch(&mut batch);
            }
            if last_purge.elapsed() >= PURGE_EVERY && !stopping {
                self.purge_expired();
                last_purge = Instant::now();
            }
        }
    }

    fn commit_batch(&mut self, batch: &mut Vec<Job>) {
        let started = Instant::now();
        let events: Vec<&TrackedEvent> = batch
            .iter()
            .filter_map(|j| match j {
                Job::Track { event, .. } => Some(&**event),
                Job::Shutdown => None,
            })
            .collect();
        let result = write_events(&mut self.conn, &events, self.window_micros);
        let size = events.len();
        match result {
            Ok(outcomes) => {
                self.ready.store(true, Ordering::Relaxed);
                tracing::debug!(
                    size,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "batch committed"
                );
                for (job, outcome) in batch.drain(..).zip(outcomes) {
                    if let Job::Track { reply, .. } = job {
                        // The requester may have gone away (client disconnected): the event
                        // is committed either way.
                        let _ = reply.send(Ok(outcome));
                    }
                }
            }
            Err(e) => {
                self.ready.store(false, Ordering::Relaxed);
                tracing::error!(error = %e, size, "batch failed, nothing committed");
                for job in batch.drain(..) {
                    if let Job::Track { reply, .. } = job {
                        let _ = reply.send(Err(StoreError::Unavailable(Box::new(
                            trackd_core::error::Cause("commit failed"),
                        ))));
                    }
                }
            }
        }
    }

    /// Deletes dedup records older than the window, in bounded chunks.
    fn purge_expired(&mut self) {
        if self.window_micros == 0 {
            return;
        }
        let cutoff = self.clock.now().as_micros() - self.window_micros;
        loop {
            let deleted = self.conn.execute(
                "DELETE FROM dedup WHERE (project_id, key) IN \
                 (SELECT project_id, key FROM dedup WHERE received_at <= ?1 LIMIT ?2)",
                params![cutoff, PURGE_CHUNK],
            );
            match deleted {
                Ok(n) if n as i64 == PURGE_CHUNK => continue,
                Ok(n) => {
                    tracing::debug!(deleted = n, "expired dedup records purged");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "dedup purge failed, retrying later");
                    break;
                }
            }
        }
    }
}

/// Writes one batch in one transaction: for each event, the dedup upsert, then (when it is
/// not a duplicate) the user upsert and the event row. Returns each event's outcome, in
/// order; nothing is written unless everything is.
fn write_events(
    conn: &mut Connection,
    events: &[&TrackedEvent],
    window_micros: i64,
) -> rusqlite::Result<Vec<InsertOutcome>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut outcomes = Vec::with_capacity(events.len());
    let mut totals: HashMap<i64, (i64, i64)> = HashMap::new();
    {
        // The upsert succeeds only when no record exists or the stored one is older than
        // the window: one statement decides, so there is no read-then-write race. A
        // duplicate does not touch the stored receive time, so it never extends the window.
        let mut dedup = tx.prepare_cached(
            "INSERT INTO dedup (project_id, key, received_at, user_ref) \
             VALUES (?1, ?2, ?3, (SELECT id FROM users WHERE project_id = ?1 AND user_key = ?4)) \
             ON CONFLICT (project_id, key) DO UPDATE \
               SET received_at = excluded.received_at, user_ref = excluded.user_ref \
               WHERE dedup.received_at <= ?5 \
             RETURNING user_ref",
        )?;
        let mut user = tx.prepare_cached(
            "INSERT INTO users (project_id, user_key, user_id, email, first_seen, last_seen) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?5) \
             ON CONFLICT (project_id, user_key) DO UPDATE \
               SET last_seen = max(last_seen, excluded.last_seen), \
                   user_id = coalesce(excluded.user_id, user_id), \
                   email = coalesce(excluded.email, email) \
             RETURNING id",
        )?;
        let mut set_dedup_user =
            tx.prepare_cached("UPDATE dedup SET user_ref = ?3 WHERE project_id = ?1 AND key = ?2")?;
        let mut insert = tx.prepare_cached(
            "INSERT INTO events \
             (project_id, user_ref, event_name, event_key, data, source, created_at, received_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for event in events {
            let project = event.project.get();
            let user_key = event.identity.user_key();
            let key = &event.dedup_key.as_bytes()[..];
            let received = event.received_at.as_micros();
            // `Some(user_ref)` when the record was written (a new event); `None` when an
            // unexpired record exists (a duplicate).
            let written: Option<Option<i64>> = if window_micros > 0 {
                dedup
                    .query_row(
                        params![project, key, received, user_key, received - window_micros],
                        |r| r.get::<_, Option<i64>>(0),
                    )
                    .optional()?
            } else {
                Some(None)
            };
            let Some(known_user) = written else {
                outcomes.push(InsertOutcome::Duplicate);
                totals.entry(project).or_default().1 += 1;
                continue;
            };
            let user_ref: i64 = user.query_row(
                params![
                    project,
                    user_key,
                    event.identity.id().map(|i| i.as_str()),
                    event.identity.email().map(|e| e.as_str()),
                    received,
                ],
                |r| r.get(0),
            )?;
            if known_user.is_none() && window_micros > 0 {
                set_dedup_user.execute(params![project, key, user_ref])?;
            }
            insert.execute(params![
                project,
                user_ref,
                event.name.as_str(),
                event.key.as_str(),
                event.data,
                event.source,
                event.created_at.as_micros(),
                received,
            ])?;
            outcomes.push(InsertOutcome::Inserted);
            totals.entry(project).or_default().0 += 1;
        }
        let mut count = tx.prepare_cached(
            "INSERT INTO counters (project_id, name, value) VALUES (?1, ?2, ?3) \
             ON CONFLICT (project_id, name) DO UPDATE SET value = value + excluded.value",
        )?;
        for (project, (accepted, duplicates)) in totals {
            for (name, n) in [("accepted", accepted), ("duplicates", duplicates)] {
                if n > 0 {
                    count.execute(params![project, name, n])?;
                }
            }
        }
    }
    tx.commit()?;
    Ok(outcomes)
}
