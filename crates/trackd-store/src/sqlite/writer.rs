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

use rusqlite::{params, Connection, TransactionBehavior};
use tokio::sync::oneshot;
use trackd_core::{Clock, InsertOutcome, StoreError, TrackedEvent};

use super::dedup::DedupIndex;

/// The most requests committed in one transaction.
const MAX_BATCH: usize = 1024;
/// How often expired dedup records are purged: often enough that each purge deletes a
/// short rowid range.
const PURGE_EVERY: Duration = Duration::from_secs(5);

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
    pub dedup: DedupIndex,
    /// `PRAGMA data_version` at the end of the last batch: it moves when another connection
    /// committed, and then the dedup index catches up.
    pub data_version: i64,
}

impl Writer {
    /// Opens the writer on `conn`: loads the dedup index from the records inside the window.
    pub fn new(
        conn: Connection,
        jobs: Receiver<Job>,
        clock: Arc<dyn Clock>,
        window_micros: i64,
        ready: Arc<AtomicBool>,
    ) -> rusqlite::Result<Self> {
        let cutoff = clock.now().as_micros().saturating_sub(window_micros);
        let dedup = DedupIndex::load(&conn, cutoff)?;
        let data_version = data_version(&conn)?;
        Ok(Writer {
            conn,
            jobs,
            clock,
            window_micros,
            ready,
            dedup,
            data_version,
        })
    }

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
        let size = events.len();
        let result = write_events(
            &mut self.conn,
            &events,
            self.window_micros,
            &mut self.dedup,
            &mut self.data_version,
        );
        match result {
            Ok(written) => {
                self.dedup
                    .committed(&written.dedup_keys, written.last_dedup_id);
                self.ready.store(true, Ordering::Relaxed);
                tracing::debug!(
                    size,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "batch committed"
                );
                for (job, outcome) in batch.drain(..).zip(written.outcomes) {
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

    /// Deletes dedup records older than the window.
    fn purge_expired(&mut self) {
        if self.window_micros == 0 {
            return;
        }
        let cutoff = self.clock.now().as_micros() - self.window_micros;
        match self.dedup.purge(&self.conn, cutoff) {
            Ok(n) => tracing::debug!(deleted = n, "expired dedup records purged"),
            Err(e) => tracing::warn!(error = %e, "dedup purge failed, retrying later"),
        }
    }
}

fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA data_version", [], |r| r.get(0))
}

/// What a committed batch wrote.
struct Written {
    /// Each event's outcome, in order.
    outcomes: Vec<InsertOutcome>,
    /// The dedup keys recorded, with their receive times.
    dedup_keys: Vec<([u8; 16], i64)>,
    /// The rowid of the last dedup record written.
    last_dedup_id: i64,
}

/// Writes one batch in one transaction: for each event that is not a duplicate, the user
/// upsert, the event row and its dedup record. Nothing is written unless everything is.
fn write_events(
    conn: &mut Connection,
    events: &[&TrackedEvent],
    window_micros: i64,
    index: &mut DedupIndex,
    seen_version: &mut i64,
) -> rusqlite::Result<Written> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Under the write lock no other connection can commit: if one did since the last batch
    // (an import beside the server), its dedup records join the index before any lookup.
    let version = data_version(&tx)?;
    if version != *seen_version {
        index.catch_up(&tx)?;
        *seen_version = version;
    }
    let mut outcomes = Vec::with_capacity(events.len());
    let mut dedup_keys: Vec<([u8; 16], i64)> = Vec::with_capacity(events.len());
    // Keys accepted earlier in this batch (the index learns them only after the commit).
    let mut in_batch: HashMap<[u8; 16], i64> = HashMap::new();
    let mut totals: HashMap<i64, (i64, i64)> = HashMap::new();
    let mut last_dedup_id = 0;
    {
        let mut user = tx.prepare_cached(
            "INSERT INTO users (project_id, user_key, user_id, email, first_seen, last_seen) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?5) \
             ON CONFLICT (project_id, user_key) DO UPDATE \
               SET last_seen = max(last_seen, excluded.last_seen), \
                   user_id = coalesce(excluded.user_id, user_id), \
                   email = coalesce(excluded.email, email) \
             RETURNING id",
        )?;
        let mut insert = tx.prepare_cached(
            "INSERT INTO events \
             (project_id, user_ref, event_name, event_key, data, source, created_at, received_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut record = tx.prepare_cached(
            "INSERT INTO dedup (project_id, key, received_at, user_ref) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for event in events {
            let project = event.project.get();
            let key = *event.dedup_key.as_bytes();
            let received = event.received_at.as_micros();
            if window_micros > 0 {
                let last = in_batch
                    .get(&key)
                    .copied()
                    .or_else(|| index.accepted_at(&key));
                // A duplicate: an accepted event with this key was received less than the
                // window ago. Its receive time is not touched, so the window never grows.
                if last.is_some_and(|at| received - at < window_micros) {
                    outcomes.push(InsertOutcome::Duplicate);
                    totals.entry(project).or_default().1 += 1;
                    continue;
                }
            }
            let user_ref: i64 = user.query_row(
                params![
                    project,
                    event.identity.user_key(),
                    event.identity.id().map(|i| i.as_str()),
                    event.identity.email().map(|e| e.as_str()),
                    received,
                ],
                |r| r.get(0),
            )?;
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
            if window_micros > 0 {
                record.execute(params![project, &key[..], received, user_ref])?;
                last_dedup_id = tx.last_insert_rowid();
                in_batch.insert(key, received);
                dedup_keys.push((key, received));
            }
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
    Ok(Written {
        outcomes,
        dedup_keys,
        last_dedup_id,
    })
}
