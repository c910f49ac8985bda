//! The single writer: a thread that owns the write connection and commits batches of
//! concurrent requests in one transaction each (group commit).
//!
//! Requests wait on a oneshot channel; each is answered only after the transaction holding
//! it committed, or with [`StoreError::Unavailable`](trackd_core::StoreError::Unavailable) if it did not. Batching is what makes
//! `synchronous=FULL` affordable: one fsync covers every event in the batch.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use trackd_core::read::{Counter, EventRow};
use trackd_core::segment::Write;
use trackd_core::{
    Clock, EventRecord, InsertOutcome, LiveBatch, LiveFeed, ProfileRequest, StoreMetrics,
    TrackedEvent,
};

use super::dedup::{DedupIndex, Overlay};
use super::messages::{MessageIds, Pending};
use super::outbox::{self, OutboxState};
use super::privacy::{self, Suppressions};
use super::profile;
use super::users::{KnownUsers, Touches};
use crate::job::OutboxOp;
use trackd_core::delivery::{change_item, event_identity, ItemKind};

/// How often a batch is retried with a reloaded dedup index before it fails.
const MAX_RELOADS: usize = 3;

/// The most requests committed in one transaction.
const MAX_BATCH: usize = 1024;
/// How much longer than the window dedup keys are kept (see `purge_expired`).
const PURGE_SLACK_MICROS: i64 = 120_000_000;

/// How often expired dedup records are purged: often enough that each purge deletes a
/// short rowid range.
const PURGE_EVERY: Duration = Duration::from_secs(5);

/// While writes fail, how often the writer tries a small write of its own, so readiness
/// comes back when the disk does even if no request arrives to try it.
const PROBE_EVERY: Duration = Duration::from_secs(1);

pub(crate) use crate::job::{Done, Job, Totals};

pub(crate) struct Writer {
    conn: Connection,
    jobs: Receiver<Job>,
    config: WriterConfig,
    dedup: DedupIndex,
    /// `PRAGMA data_version` at the end of the last batch: it moves when another connection
    /// committed, and then the dedup index catches up.
    data_version: i64,
    /// Which projects write items, and the outbox's last position.
    outbox: OutboxState,
    /// Segment messageIds: the hot tier's index.
    messages: MessageIds,
    /// Users the writer has seen, so an event of one reads nothing.
    users: KnownUsers,
    /// Which projects have suppressed users, and the key their hashes are made with.
    suppressions: Suppressions,
    /// `meta.dedup_deletions` when the dedup index was loaded: another connection's
    /// deletion of dedup records moves it.
    dedup_deletions: i64,
    /// The last reopen failed: `conn` must not be used again.
    broken: bool,
}

/// What the writer needs besides its connection and queue.
pub(crate) struct WriterConfig {
    /// The database file, to reopen it after a failure.
    pub path: PathBuf,
    pub wal_checkpoint_pages: u32,
    /// The connection's page cache, in KiB.
    pub cache_kib: u32,
    pub clock: Arc<dyn Clock>,
    /// Dedup window in microseconds; 0 turns dedup off.
    pub window_micros: i64,
    /// Segment messageId window in microseconds; 0 turns messageId idempotency off.
    pub message_window_micros: i64,
    pub ready: Arc<AtomicBool>,
    pub metrics: StoreMetrics,
    /// Committed events for watching consoles.
    pub live: LiveFeed,
    /// Told after a committed deletion (a truncating checkpoint follows).
    pub erased: std::sync::mpsc::SyncSender<super::Checkpoint>,
}

impl Writer {
    /// Opens the writer on `conn`: loads the dedup index from the records inside the window.
    pub fn new(
        conn: Connection,
        jobs: Receiver<Job>,
        config: WriterConfig,
    ) -> rusqlite::Result<Self> {
        let (dedup, data_version) = load_index(&conn, &config)?;
        let outbox = OutboxState::load(&conn)?;
        let messages = MessageIds::load(&conn, config.message_window_micros)?;
        let suppressions = Suppressions::load(&conn, &super::secret(&conn)?)?;
        let dedup_deletions = dedup_deletions(&conn)?;
        Ok(Writer {
            dedup_deletions,
            messages,
            suppressions,
            users: KnownUsers::default(),
            conn,
            jobs,
            config,
            dedup,
            data_version,
            outbox,
            broken: false,
        })
    }

    pub fn run(mut self) {
        let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
        let mut last_purge = Instant::now();
        let mut last_probe = Instant::now();
        let mut stopping = false;
        while !stopping {
            let ready = self.config.ready.load(Ordering::Relaxed);
            let wait = if ready { PURGE_EVERY } else { PROBE_EVERY };
            match self.jobs.recv_timeout(wait) {
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
                if self.messages.over() && !self.broken {
                    self.move_messages();
                }
            } else if !self.config.ready.load(Ordering::Relaxed)
                && last_probe.elapsed() >= PROBE_EVERY
            {
                self.probe();
                last_probe = Instant::now();
            }
            if last_purge.elapsed() >= PURGE_EVERY && !stopping {
                self.purge_expired();
                last_purge = Instant::now();
            }
        }
    }

    fn commit_batch(&mut self, batch: &mut Vec<Job>) {
        let started = Instant::now();
        let size = batch.len();
        self.config.metrics.queue_depth.dec_by(size as i64);
        if self.broken && !self.reopen() {
            self.fail(batch);
            return;
        }
        let mut result = self.write(batch);
        // Another connection deleted dedup records (a user deleted or suppressed by the
        // command line): the index is read again from the file, and the batch written
        // with it. A few tries: each reads the count of deletions before the index.
        for _ in 0..MAX_RELOADS {
            if !matches!(result, Ok(None)) {
                break;
            }
            tracing::info!("dedup records deleted by another connection: reloading the index");
            result = self.reload_dedup().and_then(|()| self.write(batch));
        }
        let result = result.and_then(|written| {
            written.ok_or_else(|| {
                rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                    Some("dedup records kept being deleted under the writer".into()),
                )
            })
        });
        match result {
            Ok(written) => {
                // Records other connections committed (seen under the write lock) first,
                // then this batch's own.
                if let Some(catch_up) = written.catch_up {
                    if let Err(e) = self.dedup.catch_up(&self.conn) {
                        tracing::error!(error = %e, "dedup index catch-up failed");
                    }
                    self.data_version = catch_up;
                }
                self.dedup
                    .committed(&written.overlay, written.last_dedup_id);
                self.dedup_deletions = written.deletions;
                self.messages.committed(written.messages);
                for batch in written.live {
                    self.config.live.publish(batch);
                }
                if written.erased {
                    // One pending request is enough: a full channel means one is queued.
                    let _ = self.config.erased.try_send(super::Checkpoint::Truncate);
                }
                self.config.ready.store(true, Ordering::Relaxed);
                let elapsed = started.elapsed();
                self.config.metrics.batch_size.observe(size as f64);
                self.config
                    .metrics
                    .commit_seconds
                    .observe(elapsed.as_secs_f64());
                tracing::debug!(
                    size,
                    elapsed_us = elapsed.as_micros() as u64,
                    "batch committed"
                );
                for (job, done) in batch.drain(..).zip(written.done) {
                    job.answer(done);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, size, "batch failed, nothing committed");
                // It may remember users the failed transaction created.
                self.users.clear();
                self.fail(batch);
                // The connection that failed is not trusted again: after a failed fsync the
                // kernel may have dropped the dirty pages and a retried fsync would report
                // success over lost data. A new connection reads the file as it really is
                // (and the dedup index is reloaded from it).
                self.reopen();
            }
        }
    }

    /// Writes a batch (see `write_batch`); `None` when the dedup index must be reloaded.
    fn write(&mut self, batch: &[Job]) -> rusqlite::Result<Option<Written>> {
        write_batch(
            &mut self.conn,
            batch,
            &mut Batch {
                window_micros: self.config.window_micros,
                index: &self.dedup,
                seen_version: &mut self.data_version,
                deletions: self.dedup_deletions,
                watched: self.config.live.watched(),
                outbox: &mut self.outbox,
                now: self.config.clock.now().as_micros(),
                messages: &self.messages,
                users: &mut self.users,
                suppressions: &mut self.suppressions,
            },
        )
    }

    /// Reads the dedup index again from the file (after another connection deleted records).
    fn reload_dedup(&mut self) -> rusqlite::Result<()> {
        self.dedup_deletions = dedup_deletions(&self.conn)?;
        self.dedup = load_index(&self.conn, &self.config)?.0;
        Ok(())
    }

    /// Answers every job of a batch that did not commit with 503, and marks the store not
    /// ready.
    fn fail(&mut self, batch: &mut Vec<Job>) {
        self.config.ready.store(false, Ordering::Relaxed);
        self.config.metrics.commit_failures.inc();
        for job in batch.drain(..) {
            job.fail();
        }
    }

    /// Replaces the write connection with a new one and reloads the dedup index from the
    /// file. `false` (and `broken`) when that fails; the next batch or probe tries again.
    fn reopen(&mut self) -> bool {
        self.config.metrics.reopens.inc();
        let opened = super::open_write_connection(
            &self.config.path,
            self.config.wal_checkpoint_pages,
            self.config.cache_kib,
        )
        .and_then(|conn| {
            let (dedup, data_version) = load_index(&conn, &self.config)?;
            let outbox = OutboxState::load(&conn)?;
            let messages = MessageIds::load(&conn, self.config.message_window_micros)?;
            self.suppressions.reload(&conn)?;
            self.dedup_deletions = dedup_deletions(&conn)?;
            Ok((conn, dedup, data_version, outbox, messages))
        });
        match opened {
            Ok((conn, dedup, data_version, outbox, messages)) => {
                self.messages = messages;
                self.conn = conn;
                self.dedup = dedup;
                self.data_version = data_version;
                self.outbox = outbox;
                self.broken = false;
                tracing::warn!("write connection reopened");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "reopening the database failed, retrying later");
                self.broken = true;
                false
            }
        }
    }

    /// While not ready and idle: reopens if needed and tries a one-row write; a commit
    /// makes the store ready again.
    fn probe(&mut self) {
        if self.broken && !self.reopen() {
            return;
        }
        let now = self.config.clock.now().as_micros();
        let written = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .and_then(|tx| {
                tx.execute(
                    "INSERT INTO meta(key, value) VALUES ('write_probe', ?1) \
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    [now],
                )?;
                tx.commit()
            });
        match written {
            Ok(()) => {
                tracing::info!("writes succeed again, ready");
                self.config.ready.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::debug!(error = %e, "write probe failed");
                self.reopen();
            }
        }
    }

    /// Deletes dedup records older than the window.
    fn purge_expired(&mut self) {
        self.purge_messages();
        if self.config.window_micros == 0 || self.broken {
            return;
        }
        // A request is stamped when it arrives, then may spend its body timeout and a wait
        // in the queue before the writer sees it: keep keys that much longer, so a retry
        // received inside the window still finds the original.
        let cutoff = self
            .config
            .clock
            .now()
            .as_micros()
            .saturating_sub(self.config.window_micros)
            .saturating_sub(PURGE_SLACK_MICROS);
        match self.dedup.purge(&self.conn, cutoff) {
            Ok(n) => tracing::debug!(deleted = n, "expired dedup records purged"),
            Err(e) => tracing::warn!(error = %e, "dedup purge failed, retrying later"),
        }
    }

    /// The receive time before which a messageId can no longer make a request written now
    /// a duplicate (the window and the slack for requests still queued).
    fn message_cutoff(&self) -> i64 {
        self.config
            .clock
            .now()
            .as_micros()
            .saturating_sub(self.messages.window())
            .saturating_sub(PURGE_SLACK_MICROS)
    }

    /// Moves the oldest hot messageIds to the B-tree (one short transaction).
    fn move_messages(&mut self) {
        let cutoff = self.message_cutoff();
        match self.messages.move_oldest(&mut self.conn, cutoff) {
            Ok(n) => tracing::debug!(moved = n, "messageIds moved to the B-tree"),
            Err(e) => tracing::warn!(error = %e, "moving messageIds failed, retrying later"),
        }
    }

    /// Deletes messageId records of epochs wholly older than the window (and the slack).
    fn purge_messages(&mut self) {
        if self.messages.window() == 0 || self.broken {
            return;
        }
        let cutoff = self.message_cutoff();
        match self.messages.purge(&self.conn, cutoff) {
            Ok(n) => tracing::debug!(deleted = n, "expired messageId records purged"),
            Err(e) => tracing::warn!(error = %e, "messageId purge failed, retrying later"),
        }
    }
}

/// The dedup records inside the window (older ones are deleted) and the data version.
fn load_index(conn: &Connection, config: &WriterConfig) -> rusqlite::Result<(DedupIndex, i64)> {
    let cutoff = config
        .clock
        .now()
        .as_micros()
        .saturating_sub(config.window_micros)
        .saturating_sub(PURGE_SLACK_MICROS);
    Ok((DedupIndex::load(conn, cutoff)?, data_version(conn)?))
}

/// How many transactions have deleted dedup records (a user's deletion), by any connection.
fn dedup_deletions(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT coalesce((SELECT value FROM meta WHERE key = 'dedup_deletions'), 0)",
        [],
        |r| r.get(0),
    )
}

fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA data_version", [], |r| r.get(0))
}

/// What a committed batch wrote.
struct Written {
    /// Each job's result, in order.
    done: Vec<Done>,
    /// The dedup records it wrote and deleted.
    overlay: Overlay,
    /// The rowid of the last dedup record written.
    last_dedup_id: i64,
    /// `Some(data_version)` when another connection had committed since the last batch:
    /// the index must catch up before taking this batch's changes.
    catch_up: Option<i64>,
    /// What watching consoles are shown, by project (empty when nobody watches).
    live: Vec<LiveBatch>,
    /// Whether a user was deleted: the WAL's older copies of it must go.
    erased: bool,
    /// The messageIds it recorded.
    messages: Pending,
    /// `meta.dedup_deletions` after it (its own deletions move it; the index knows them).
    deletions: i64,
}

/// What a batch is written with besides its jobs.
struct Batch<'a> {
    window_micros: i64,
    index: &'a DedupIndex,
    seen_version: &'a mut i64,
    /// `meta.dedup_deletions` as the index knows it.
    deletions: i64,
    watched: bool,
    outbox: &'a mut OutboxState,
    now: i64,
    messages: &'a MessageIds,
    users: &'a mut KnownUsers,
    suppressions: &'a mut Suppressions,
}

/// Writes one batch in one transaction, job by job in arrival order: events (the dedup
/// decision; then the user upsert, the event row, its dedup record and its outbox item) and
/// profile changes (and theirs). Nothing is written unless everything is. `None` (nothing
/// written) when another connection deleted dedup records the index still holds.
fn write_batch(
    conn: &mut Connection,
    jobs: &[Job],
    b: &mut Batch<'_>,
) -> rusqlite::Result<Option<Written>> {
    let (window_micros, index, watched) = (b.window_micros, b.index, b.watched);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Under the write lock no other connection can commit: if one did since the last batch
    // (an import beside the server, a destination added by the CLI), its dedup records and
    // the outbox's state are read before any lookup.
    let version = data_version(&tx)?;
    let mut catch_up = None;
    let mut overlay = Overlay::default();
    if version != *b.seen_version {
        if dedup_deletions(&tx)? != b.deletions {
            return Ok(None);
        }
        catch_up = Some(version);
        for (key, received) in DedupIndex::records_after(&tx, index.last_id())? {
            overlay.record(key, received);
        }
        *b.outbox = OutboxState::load(&tx)?;
        // Users may have been changed or deleted under the writer's memory of them.
        b.users.clear();
        b.suppressions.reload(&tx)?;
    }
    let mut users = BatchUsers {
        known: &mut *b.users,
        touches: Touches::default(),
    };
    // A failed batch leaves the writer's state as it was (the writer reopens and reloads).
    let mut after = After {
        items: b.outbox.clone(),
        totals: Totals::default(),
        live: std::collections::BTreeMap::new(),
        watched,
        erased: false,
    };
    let mut done = Vec::with_capacity(jobs.len());
    let mut last_dedup_id = 0;
    let mut pending_messages = Pending::default();
    for job in jobs {
        match job {
            Job::Track { event, .. } if b.suppressions.covers(&tx, &event.record)? => {
                after.totals.add(event.project, Counter::Suppressed, 1);
                done.push(Done::Event(InsertOutcome::Suppressed));
            }
            Job::Track { event, .. } => {
                let (outcome, id) = track_event(
                    &tx,
                    &mut users,
                    event,
                    window_micros,
                    index,
                    &mut overlay,
                    &mut last_dedup_id,
                )?;
                after.event(&tx, event, outcome, id)?;
                done.push(Done::Event(outcome));
            }
            Job::Profile { request, .. } if b.suppressions.covers(&tx, request.as_ref())? => {
                after.totals.add(request.project, Counter::Suppressed, 1);
                done.push(Done::Profile(Ok(InsertOutcome::Suppressed)));
            }
            Job::Profile { request, .. } => {
                let result = users
                    .before_profile(&tx, || profile::apply(&tx, request, index, &mut overlay))?;
                after.profile(&tx, request, &result)?;
                done.push(Done::Profile(result.map(|_| InsertOutcome::Inserted)));
            }
            Job::Suppress {
                project,
                key,
                actor,
                ..
            } => {
                // The user (found as the read API finds `{id}`: by key, else by email) goes
                // as `users/delete` takes it (its outbox item included), then the hashes of
                // the key and of the user's id and email are kept.
                let found = privacy::target_of(&tx, *project, key)?;
                let mut deleted = false;
                if let Some(request) = found
                    .as_ref()
                    .and_then(|(user_key, _)| crate::job::delete_request(*project, user_key, b.now))
                {
                    let result = users.before_profile(&tx, || {
                        profile::apply(&tx, &request, index, &mut overlay)
                    })?;
                    after.profile(&tx, &request, &result)?;
                    deleted = matches!(result, Ok(Some(_)));
                }
                let identifiers = found.map(|(_, identifiers)| identifiers);
                let already = b.suppressions.add(
                    &tx,
                    *project,
                    key,
                    &identifiers.unwrap_or_default(),
                    b.now,
                )?;
                let act = b
                    .suppressions
                    .act(*project, key, actor.clone(), "user.suppress");
                privacy::record(&tx, &act, b.now)?;
                done.push(Done::Suppressed(trackd_core::privacy::Suppressed {
                    deleted,
                    already,
                }));
            }
            Job::Expire {
                project,
                cutoff,
                limit,
                ..
            } => {
                let expired = privacy::expire(&tx, *project, *cutoff, *limit)?;
                // Their older page images leave the WAL with a truncating checkpoint, once
                // the backlog is done (the last step deletes less than its limit): one per
                // step would checkpoint the whole WAL, fsync included, every few ms.
                let last = expired.events < *limit as u64 && expired.items < *limit as u64;
                after.erased |= last && (expired.events > 0 || expired.items > 0);
                done.push(Done::Expired(expired));
            }
            Job::Unsuppress {
                project,
                key,
                actor,
                ..
            } => {
                let lifted = b.suppressions.lift(&tx, *project, key)?;
                if lifted {
                    let act = b
                        .suppressions
                        .act(*project, key, actor.clone(), "user.unsuppress");
                    privacy::record(&tx, &act, b.now)?;
                }
                done.push(Done::Lifted(lifted));
            }
            Job::Messages { messages, .. } => {
                let mut outcomes = Vec::with_capacity(messages.len());
                for message in messages {
                    if b.suppressions.covers(&tx, message)? {
                        after.totals.add(message.project(), Counter::Suppressed, 1);
                        outcomes.push(Ok(InsertOutcome::Suppressed));
                        continue;
                    }
                    let received = message.received_at().as_micros();
                    let key = message.key.filter(|_| b.messages.window() > 0);
                    if let Some(key) = key {
                        if b.messages.seen(&tx, &pending_messages, &key, received)? {
                            if let Write::Event(event) = &message.write {
                                after.totals.add(event.project, Counter::Duplicates, 1);
                                after.duplicate(event.project);
                            }
                            outcomes.push(Ok(InsertOutcome::Duplicate));
                            continue;
                        }
                    }
                    let outcome = match &message.write {
                        Write::Event(event) => {
                            let id = insert_event(&tx, &mut users, event)?;
                            after.event(&tx, event, InsertOutcome::Inserted, Some(id))?;
                            Ok(InsertOutcome::Inserted)
                        }
                        Write::Profile(request) => {
                            let result = users.before_profile(&tx, || {
                                profile::apply(&tx, request, index, &mut overlay)
                            })?;
                            after.profile(&tx, request, &result)?;
                            result.map(|_| InsertOutcome::Inserted)
                        }
                    };
                    if let (Ok(_), Some(key)) = (&outcome, key) {
                        b.messages
                            .record(&tx, &mut pending_messages, key, received)?;
                    }
                    outcomes.push(outcome);
                }
                done.push(Done::Messages(outcomes));
            }
            Job::Restore {
                events, deliver, ..
            } => {
                let mut skipped = 0;
                let mut rows = Vec::with_capacity(events.len());
                for event in events {
                    // A suppressed user's history is not restored.
                    if b.suppressions.covers(&tx, event)? {
                        after.totals.add(event.project, Counter::Suppressed, 1);
                        skipped += 1;
                        continue;
                    }
                    rows.push((event, event_user(&tx, &mut users, event)?));
                }
                insert_restored(&tx, &rows, |event, user_ref, id| {
                    if *deliver {
                        after.event_item(&tx, event, user_ref, id)?;
                    }
                    Ok(())
                })?;
                done.push(Done::Count(skipped));
            }
            Job::Counters { counts, .. } => {
                for (project, counter, n) in counts {
                    after.totals.add(*project, counter.clone(), *n);
                }
                done.push(Done::Other(Ok(())));
            }
            Job::Outbox { op, .. } => {
                let n = match op.as_ref() {
                    OutboxOp::Report(r) => u64::from(outbox::report(&tx, r, b.now)?),
                    OutboxOp::Lease {
                        destination,
                        node,
                        ttl_ms,
                    } => u64::from(outbox::lease(&tx, *destination, node, *ttl_ms, b.now)?),
                    OutboxOp::Prune { cutoff } => outbox::prune(&tx, *cutoff)?,
                };
                done.push(Done::Count(n));
            }
            Job::Shutdown => done.push(Done::Nothing),
        }
    }
    let After {
        mut items,
        totals,
        live,
        erased,
        ..
    } = after;
    users.touches.flush(&tx)?;
    items.finish(&tx)?;
    let mut count = tx.prepare_cached(
        "INSERT INTO counters (project_id, name, value) VALUES (?1, ?2, ?3) \
         ON CONFLICT (project_id, name) DO UPDATE SET value = value + excluded.value",
    )?;
    for (project, name, n) in totals.rows() {
        count.execute(params![project, name, n])?;
    }
    drop(count);
    let deletions = if erased {
        dedup_deletions(&tx)?
    } else {
        b.deletions
    };
    tx.commit()?;
    *b.outbox = items;
    Ok(Some(Written {
        done,
        overlay,
        last_dedup_id,
        catch_up,
        live: live.into_values().collect(),
        erased,
        messages: pending_messages,
        deletions,
    }))
}

/// What a batch does after each write: outbox items, the live view, running totals.
struct After {
    /// The outbox as this batch leaves it.
    items: OutboxState,
    totals: Totals,
    /// What watching consoles are shown, by project.
    live: std::collections::BTreeMap<i64, LiveBatch>,
    watched: bool,
    /// Whether a user was deleted.
    erased: bool,
}

impl After {
    fn live(&mut self, project: trackd_core::ProjectId) -> &mut LiveBatch {
        self.live.entry(project.get()).or_insert_with(|| LiveBatch {
            project,
            events: Vec::new(),
            duplicates: 0,
        })
    }

    /// An event's outcome: its item (when stored), the live view, the totals.
    fn event(
        &mut self,
        tx: &Transaction<'_>,
        event: &EventRecord,
        outcome: InsertOutcome,
        stored: Option<(i64, i64)>,
    ) -> rusqlite::Result<()> {
        if let Some((user_ref, id)) = stored {
            self.event_item(tx, event, user_ref, id)?;
            if self.watched {
                self.live(event.project)
                    .events
                    .push(EventRow::of(event, id));
            }
        } else {
            self.duplicate(event.project);
        }
        self.totals.add(event.project, Counter::of(outcome), 1);
        Ok(())
    }

    /// A stored event's outbox item, when its project has destinations.
    fn event_item(
        &mut self,
        tx: &Transaction<'_>,
        event: &EventRecord,
        user_ref: i64,
        id: i64,
    ) -> rusqlite::Result<()> {
        if self.items.wanted(event.project) {
            self.items.append(
                tx,
                event.project,
                ItemKind::Event,
                user_ref,
                Some(id),
                Some(&event_identity(&event.identity)),
                event.received_at.as_micros(),
            )?;
        }
        Ok(())
    }

    /// A duplicate, for the live view.
    fn duplicate(&mut self, project: trackd_core::ProjectId) {
        if self.watched {
            self.live(project).duplicates += 1;
        }
    }

    /// A profile change's outcome: its item when it changed something.
    fn profile(
        &mut self,
        tx: &Transaction<'_>,
        request: &ProfileRequest,
        result: &Result<crate::job::Changed, trackd_core::StoreError>,
    ) -> rusqlite::Result<()> {
        self.erased |=
            result.is_ok() && matches!(request.change, trackd_core::ProfileChange::Delete { .. });
        if let Ok(Some((user_ref, deleted))) = result {
            if self.items.wanted(request.project) {
                let (kind, body) = change_item(&request.change);
                let body = deleted.clone().unwrap_or(body);
                self.items.append(
                    tx,
                    request.project,
                    kind,
                    *user_ref,
                    None,
                    Some(&body),
                    request.received_at.as_micros(),
                )?;
            }
        }
        Ok(())
    }
}

/// The batch's view of users: the writer's memory and the touches waiting to be written.
struct BatchUsers<'a> {
    known: &'a mut KnownUsers,
    touches: Touches,
}

impl BatchUsers<'_> {
    /// Runs a profile change: it reads and rewrites whole rows, so the touches are written
    /// first, and the memory is forgotten when it changed something.
    fn before_profile<T>(
        &mut self,
        tx: &Transaction<'_>,
        apply: impl FnOnce() -> rusqlite::Result<Result<crate::job::Changed, T>>,
    ) -> rusqlite::Result<Result<crate::job::Changed, T>> {
        self.touches.flush(tx)?;
        let result = apply()?;
        if matches!(result, Ok(Some(_))) {
            self.known.clear();
        }
        Ok(result)
    }
}

/// The user upsert (creating the user, or touching it) and the event row; returns the
/// user's row id and the event's.
fn insert_event(
    tx: &Transaction<'_>,
    users: &mut BatchUsers<'_>,
    e: &EventRecord,
) -> rusqlite::Result<(i64, i64)> {
    let user_ref = event_user(tx, users, e)?;
    insert_row(tx, e, user_ref)?;
    Ok((user_ref, tx.last_insert_rowid()))
}

/// An event's row, under its user's.
fn insert_row(tx: &Transaction<'_>, e: &EventRecord, user_ref: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO events \
         (project_id, user_ref, event_name, event_key, data, source, created_at, received_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        e.project.get(),
        user_ref,
        e.name.as_str(),
        e.key.as_str(),
        e.data,
        e.source,
        e.created_at.as_micros(),
        e.received_at.as_micros(),
    ])?;
    Ok(())
}

/// An event's user: the user upsert (creating the user, or touching it); its row id.
fn event_user(
    tx: &Transaction<'_>,
    users: &mut BatchUsers<'_>,
    e: &EventRecord,
) -> rusqlite::Result<i64> {
    match email_user(tx, users.known, e)? {
        Some(user_ref) => {
            users.touches.add(user_ref, e.received_at.as_micros());
            Ok(user_ref)
        }
        None => users.known.resolve(tx, &mut users.touches, e),
    }
}

/// Rows a restore inserts with one statement.
const RESTORE_ROWS: usize = 64;

/// Restored events, [`RESTORE_ROWS`] at a time with one statement, each with its user's row
/// id; `stored` gets each event's user and row id, in order. One statement for many rows
/// opens the table's and its four indexes' cursors once, not once a row. AUTOINCREMENT
/// gives the rows of one statement consecutive ids (each one more than the largest ever),
/// so the last id names them all.
fn insert_restored(
    tx: &Transaction<'_>,
    rows: &[(&EventRecord, i64)],
    mut stored: impl FnMut(&EventRecord, i64, i64) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    let mut chunks = rows.chunks_exact(RESTORE_ROWS);
    let sql = if rows.len() >= RESTORE_ROWS {
        restore_sql()
    } else {
        String::new()
    };
    for chunk in chunks.by_ref() {
        let mut stmt = tx.prepare_cached(&sql)?;
        let values: Vec<RowValues<'_>> = chunk
            .iter()
            .map(|(e, user_ref)| RowValues {
                ints: [
                    e.project.get(),
                    *user_ref,
                    e.created_at.as_micros(),
                    e.received_at.as_micros(),
                ],
                name: e.name.as_str(),
                key: e.key.as_str(),
                data: &e.data,
                source: e.source.as_deref(),
            })
            .collect();
        let mut args: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(RESTORE_ROWS * 8);
        for v in &values {
            let [project, user_ref, created_at, received_at] = &v.ints;
            args.extend_from_slice(&[
                project,
                user_ref,
                &v.name,
                &v.key,
                &v.data,
                &v.source,
                created_at,
                received_at,
            ]);
        }
        let inserted = stmt.execute(args.as_slice())?;
        if inserted != chunk.len() {
            return Err(rusqlite::Error::StatementChangedRows(inserted));
        }
        let first = tx.last_insert_rowid() - (chunk.len() as i64 - 1);
        for (offset, (e, user_ref)) in chunk.iter().enumerate() {
            stored(e, *user_ref, first + offset as i64)?;
        }
    }
    for (e, user_ref) in chunks.remainder() {
        insert_row(tx, e, *user_ref)?;
        stored(e, *user_ref, tx.last_insert_rowid())?;
    }
    Ok(())
}

/// One restored row's values, borrowed.
struct RowValues<'a> {
    /// Project, user, event time, receive time.
    ints: [i64; 4],
    name: &'a str,
    key: &'a str,
    data: &'a str,
    source: Option<&'a str>,
}

/// The statement that inserts [`RESTORE_ROWS`] events.
fn restore_sql() -> String {
    let row = "(?, ?, ?, ?, ?, ?, ?, ?)";
    // OR FAIL: a row that broke a constraint would keep the rows before it, where the
    // default (ABORT) undoes them; the error fails the whole batch either way. ABORT makes
    // SQLite copy every page the statement changes to a statement journal first (a fifth
    // of the writer's time in a restore, in `perf`).
    format!(
        "INSERT OR FAIL INTO events \
         (project_id, user_ref, event_name, event_key, data, source, created_at, received_at) \
         VALUES {}",
        vec![row; RESTORE_ROWS].join(", ")
    )
}

/// For an event that names its user by email alone, the user whose email field it is (the
/// oldest) when no user is keyed by it (DESIGN §3). `None` otherwise: the upsert then finds
/// the user keyed by the email, taking the email as its email field as PostgreSQL's upsert
/// does, or creates it.
fn email_user(
    tx: &Transaction<'_>,
    known: &KnownUsers,
    e: &EventRecord,
) -> rusqlite::Result<Option<i64>> {
    let (None, Some(email)) = (e.identity.id(), e.identity.email()) else {
        return Ok(None);
    };
    let project = e.project.get();
    if known.contains(project, email.as_str()) {
        return Ok(None);
    }
    let keyed = tx
        .prepare_cached("SELECT 1 FROM users WHERE project_id = ?1 AND user_key = ?2")?
        .exists(params![project, email.as_str()])?;
    if keyed {
        return Ok(None);
    }
    tx.prepare_cached(
        "SELECT id FROM users WHERE project_id = ?1 AND email = ?2 ORDER BY id LIMIT 1",
    )?
    .query_row(params![project, email.as_str()], |r| r.get::<_, i64>(0))
    .optional()
}

/// One event: the dedup decision, then the user upsert, the event row and its dedup record.
/// Returns the outcome and, when stored, the user's and the event's row ids.
fn track_event(
    tx: &Transaction<'_>,
    users: &mut BatchUsers<'_>,
    event: &TrackedEvent,
    window_micros: i64,
    index: &DedupIndex,
    overlay: &mut Overlay,
    last_dedup_id: &mut i64,
) -> rusqlite::Result<(InsertOutcome, Option<(i64, i64)>)> {
    let project = event.project.get();
    let key = *event.dedup_key.as_bytes();
    let received = event.received_at.as_micros();
    if window_micros > 0 {
        // A duplicate: an accepted event with this key was received less than the window
        // ago. Its receive time is not touched, so the window never grows.
        let last = overlay.accepted_at(index, &key);
        if last.is_some_and(|at| received - at < window_micros) {
            return Ok((InsertOutcome::Duplicate, None));
        }
    }
    let (user_ref, id) = insert_event(tx, users, event)?;
    if window_micros > 0 {
        tx.prepare_cached(
            "INSERT INTO dedup (project_id, key, received_at, user_ref) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![project, &key[..], received, user_ref])?;
        *last_dedup_id = tx.last_insert_rowid();
        overlay.record(key, received);
    }
    Ok((InsertOutcome::Inserted, Some((user_ref, id))))
}
