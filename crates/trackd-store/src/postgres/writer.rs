//! The node's writers: tasks that take the queued writes of this node in batches and commit
//! each batch in one transaction (group commit), answering every request after the commit.
//!
//! Dedup across nodes is one statement per run of consecutive events: an upsert on the
//! dedup key that replaces the stored record only when it is older than the window by the
//! database clock, so two nodes racing on one key serialise on its row and exactly one
//! wins; the losers' rows come back absent from `RETURNING` and are duplicates. Identical
//! keys inside one batch are resolved in memory first (PostgreSQL refuses to touch one row
//! twice in a statement). Rows are locked in sorted order (dedup keys, then users), so
//! nodes never deadlock on each other's batches.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use deadpool_postgres::Transaction;
use tokio::sync::{mpsc, Mutex};
use trackd_core::delivery::change_item;
use trackd_core::privacy::Suppressible;
use trackd_core::read::Counter;
use trackd_core::segment::{Message, Write};
use trackd_core::store::MessageOutcome;
use trackd_core::{Clock, EventRecord, InsertOutcome, StoreMetrics, TrackedEvent};

use super::outbox::Pending;
use super::privacy::Covered;
use super::profile;

/// The most requests committed in one transaction.
pub(super) const MAX_BATCH: usize = 1024;

pub(crate) use crate::job::{Done, Job, Totals};

/// What the writers share.
pub(crate) struct Writers {
    pub pool: Pool,
    pub jobs: Mutex<mpsc::Receiver<Job>>,
    /// Dedup window in microseconds; 0 turns dedup off.
    pub window_micros: i64,
    /// Segment messageId window in microseconds; 0 turns messageId idempotency off.
    pub message_window_micros: i64,
    /// Dedup receive times from this clock instead of the database's (tests only).
    pub dedup_clock: Option<Arc<dyn Clock>>,
    /// This node's first counter shard: writer `i` adds to shard `shard + i` (modulo the
    /// shards), so a node's writers never wait for each other's commits on one row.
    pub shard: i32,
    pub ready: Arc<AtomicBool>,
    pub metrics: StoreMetrics,
    /// The key suppression hashes are made with.
    pub suppression: trackd_core::privacy::SuppressionKey,
    /// Until when (ms since the epoch) some node's console watches: commits announce their
    /// events to every node (`NOTIFY trackd_live`) only then.
    pub live_wanted_until: Arc<AtomicU64>,
}

/// Now, in milliseconds since the epoch.
pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The `NOTIFY trackd_live` payloads of a commit: project, accepted ids, duplicates. Ids
/// are chunked to stay well under PostgreSQL's 8,000-byte payload limit.
fn live_payloads(project: i64, ids: &[i64], duplicates: u64) -> Vec<String> {
    if ids.is_empty() {
        return vec![serde_json::json!({"p": project, "ids": [], "d": duplicates}).to_string()];
    }
    ids.chunks(400)
        .enumerate()
        .map(|(i, chunk)| {
            let d = if i == 0 { duplicates } else { 0 };
            serde_json::json!({"p": project, "ids": chunk, "d": d}).to_string()
        })
        .collect()
}

impl Writers {
    /// One writer: takes a batch (holding the queue only while taking it), commits it,
    /// answers it; until the queue is closed and empty.
    pub async fn run(self: Arc<Self>, writer: i32) {
        let shard = (self.shard + writer).rem_euclid(super::SHARDS as i32);
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            {
                let mut jobs = self.jobs.lock().await;
                match jobs.recv().await {
                    Some(job) => batch.push(job),
                    None => return,
                }
                while batch.len() < MAX_BATCH {
                    match jobs.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                if batch.iter().any(|j| matches!(j, Job::Shutdown)) {
                    // No new writes; what is queued still drains, through every writer.
                    jobs.close();
                }
            }
            batch.retain(|j| !matches!(j, Job::Shutdown));
            if !batch.is_empty() {
                self.commit(&mut batch, shard).await;
            }
        }
    }

    async fn commit(&self, batch: &mut Vec<Job>, shard: i32) {
        let started = Instant::now();
        let size = batch.len();
        self.metrics.queue_depth.dec_by(size as i64);
        let mut written = self.write(batch, shard).await;
        if written.as_ref().is_err_and(WriteError::is_transient) {
            // Another transaction won a lock or a key (a deadlock between nodes, a user
            // created at the same moment): nothing was answered yet, so try once more.
            tracing::debug!("batch lost a race, retrying it once");
            written = self.write(batch, shard).await;
        }
        match written {
            Ok(done) => {
                self.ready.store(true, Ordering::Relaxed);
                let elapsed = started.elapsed();
                self.metrics.batch_size.observe(size as f64);
                self.metrics.commit_seconds.observe(elapsed.as_secs_f64());
                tracing::debug!(
                    size,
                    elapsed_us = elapsed.as_micros() as u64,
                    "batch committed"
                );
                for (job, done) in batch.drain(..).zip(done) {
                    job.answer(done);
                }
            }
            Err(e) => {
                self.ready.store(false, Ordering::Relaxed);
                self.metrics.commit_failures.inc();
                tracing::error!(error = %e, size, "batch failed, nothing committed");
                for job in batch.drain(..) {
                    job.fail();
                }
            }
        }
    }

    /// Writes one batch in one transaction, in arrival order: each run of consecutive
    /// events with one dedup statement, profile changes one by one, and last the outbox
    /// items of what they stored (see `outbox.rs` for the locks that keep their positions
    /// in commit order). Nothing is written unless everything is.
    async fn write(&self, batch: &[Job], shard: i32) -> Result<Vec<Done>, WriteError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // Before any write: the projects whose items this batch may write.
        let mut outbox = Pending::start(
            &tx,
            batch.iter().flat_map(|job| match job {
                Job::Track { event, .. } => vec![event.project.get()],
                Job::Profile { request, .. } => vec![request.project.get()],
                Job::Messages { messages, .. } => {
                    messages.iter().map(|m| m.project().get()).collect()
                }
                // Restores too, delivered or not: their projects' suppressions are read
                // (and a suppression of their users waits for them, or they for it).
                Job::Restore { events, .. } => events.iter().map(|e| e.project.get()).collect(),
                _ => Vec::new(),
            }),
        )
        .await?;
        // Identifiers are gathered (and hashed) only when some project of the batch has
        // suppressed users.
        let writes = batch
            .iter()
            .filter(|_| outbox.any_suppressing())
            .flat_map(|job| match job {
                Job::Track { event, .. } => vec![event.record.identifiers()],
                Job::Profile { request, .. } => vec![request.identifiers()],
                Job::Messages { messages, .. } => {
                    messages.iter().map(Suppressible::identifiers).collect()
                }
                Job::Restore { events, .. } => {
                    events.iter().map(Suppressible::identifiers).collect()
                }
                _ => Vec::new(),
            })
            .collect();
        let covered = Covered::read(&tx, &self.suppression, &outbox, writes).await?;
        let key = &self.suppression;
        let mut done: Vec<Done> = Vec::with_capacity(batch.len());
        let mut totals = Totals::default();
        let announce = now_ms() < self.live_wanted_until.load(Ordering::Relaxed);
        let mut live: BTreeMap<i64, (Vec<i64>, u64)> = BTreeMap::new();
        let mut i = 0;
        while i < batch.len() {
            match &batch[i] {
                Job::Track { .. } => {
                    let run: Vec<&TrackedEvent> = batch[i..]
                        .iter()
                        .map_while(|j| match j {
                            Job::Track { event, .. } => Some(event.as_ref()),
                            _ => None,
                        })
                        .collect();
                    i += run.len();
                    let (kept, suppressed): (Vec<&TrackedEvent>, Vec<&TrackedEvent>) =
                        run.iter().partition(|e| !covered.covers(key, &e.record));
                    let (outcomes, stored) = self.track(&tx, &kept).await?;
                    let mut outcomes = outcomes.into_iter();
                    let outcomes: Vec<InsertOutcome> = run
                        .iter()
                        .map(|e| {
                            if suppressed.iter().any(|s| std::ptr::eq(*s, *e)) {
                                InsertOutcome::Suppressed
                            } else {
                                outcomes.next().unwrap_or(InsertOutcome::Suppressed)
                            }
                        })
                        .collect();
                    let mut stored = stored.into_iter();
                    for (event, outcome) in run.iter().zip(outcomes) {
                        let id = match outcome {
                            InsertOutcome::Inserted => stored.next(),
                            InsertOutcome::Duplicate | InsertOutcome::Suppressed => None,
                        };
                        if let Some((id, user_ref)) = id {
                            outbox.event(
                                event.project,
                                user_ref,
                                id,
                                &event.identity,
                                event.received_at.as_micros(),
                            );
                        }
                        if announce {
                            let entry = live.entry(event.project.get()).or_default();
                            match outcome {
                                InsertOutcome::Inserted => entry.0.extend(id.map(|(id, _)| id)),
                                InsertOutcome::Duplicate => entry.1 += 1,
                                InsertOutcome::Suppressed => {}
                            }
                        }
                        totals.add(event.project, Counter::of(outcome), 1);
                        done.push(Done::Event(outcome));
                    }
                    continue;
                }
                Job::Profile { request, .. } if covered.covers(key, request.as_ref()) => {
                    totals.add(request.project, Counter::Suppressed, 1);
                    done.push(Done::Profile(Ok(InsertOutcome::Suppressed)));
                }
                Job::Profile { request, .. } => {
                    let result = profile::apply(&tx, request, &mut outbox).await?;
                    profile_item(&mut outbox, request, &result);
                    done.push(Done::Profile(result.map(|_| InsertOutcome::Inserted)));
                }
                Job::Messages { .. } => {
                    // Consecutive Segment jobs are written as one: their messageIds in one
                    // sorted upsert and their events' users in sorted runs, as a run of
                    // Vero events is, so nodes lock rows in one order and never deadlock.
                    let jobs: Vec<&[Message]> = batch[i..]
                        .iter()
                        .map_while(|j| match j {
                            Job::Messages { messages, .. } => Some(messages.as_slice()),
                            _ => None,
                        })
                        .collect();
                    i += jobs.len();
                    let every: Vec<&Message> = jobs.iter().flat_map(|m| m.iter()).collect();
                    let all: Vec<&Message> = every
                        .iter()
                        .copied()
                        .filter(|m| !covered.covers(key, *m))
                        .collect();
                    let (kept, stored) = self.messages(&tx, &all, &mut outbox, &mut totals).await?;
                    let mut kept = kept.into_iter();
                    let outcomes: Vec<MessageOutcome> = every
                        .iter()
                        .map(|m| {
                            if covered.covers(key, *m) {
                                totals.add(m.project(), Counter::Suppressed, 1);
                                Ok(InsertOutcome::Suppressed)
                            } else {
                                kept.next().unwrap_or(Ok(InsertOutcome::Suppressed))
                            }
                        })
                        .collect();
                    if announce {
                        for (message, outcome) in all.iter().zip(&outcomes) {
                            if let (Write::Event(e), Ok(InsertOutcome::Duplicate)) =
                                (&message.write, outcome)
                            {
                                live.entry(e.project.get()).or_default().1 += 1;
                            }
                        }
                        for (project, id) in stored {
                            live.entry(project).or_default().0.push(id);
                        }
                    }
                    let mut outcomes = outcomes.into_iter();
                    for job in jobs {
                        done.push(Done::Messages(outcomes.by_ref().take(job.len()).collect()));
                    }
                    continue;
                }
                // History restored as it was: no items (it is not being received now).
                Job::Restore {
                    events, deliver, ..
                } => {
                    // A suppressed user's history is not restored.
                    let records: Vec<&EventRecord> = events
                        .iter()
                        .filter(|e| {
                            let covers = covered.covers(key, *e);
                            if covers {
                                totals.add(e.project, Counter::Suppressed, 1);
                            }
                            !covers
                        })
                        .collect();
                    let skipped = (events.len() - records.len()) as u64;
                    let keys = user_keys(&tx, &records).await?;
                    let stored = insert_events(&tx, &records, &keys).await?;
                    if *deliver {
                        for (event, (id, user_ref)) in records.iter().zip(stored) {
                            outbox.event(
                                event.project,
                                user_ref,
                                id,
                                &event.identity,
                                event.received_at.as_micros(),
                            );
                        }
                    }
                    done.push(Done::Count(skipped));
                }
                Job::Counters { counts, .. } => {
                    for (project, counter, n) in counts {
                        totals.add(*project, counter.clone(), *n);
                    }
                    done.push(Done::Other(Ok(())));
                }
                // Delivery writes its own transactions on PostgreSQL, never through here.
                Job::Outbox { .. } => done.push(Done::Count(0)),
                // Suppressions run their own transactions on PostgreSQL (`privacy.rs`): a
                // job of theirs here is failed, never answered as done.
                Job::Suppress { .. } | Job::Unsuppress { .. } | Job::Expire { .. } => {
                    done.push(Done::Nothing)
                }
                Job::Shutdown => done.push(Done::Nothing),
            }
            i += 1;
        }
        if !totals.is_empty() {
            let (projects, names, values): (Vec<i64>, Vec<String>, Vec<i64>) = totals.rows().fold(
                (vec![], vec![], vec![]),
                |(mut a, mut b, mut c), (p, n, v)| {
                    a.push(p);
                    b.push(n);
                    c.push(v);
                    (a, b, c)
                },
            );
            let add = tx
                .prepare_cached(
                    "INSERT INTO counters (project_id, name, shard, value) \
                     SELECT p, n, $4, v FROM unnest($1::bigint[], $2::text[], $3::bigint[]) \
                       AS u(p, n, v) \
                     ON CONFLICT (project_id, name, shard) \
                       DO UPDATE SET value = counters.value + EXCLUDED.value",
                )
                .await?;
            tx.execute(&add, &[&projects, &names, &values, &shard])
                .await?;
        }
        // Last: the order locks it takes are held until the commit.
        outbox.write(&tx).await?;
        tx.commit().await?;
        // Announced after the commit, outside it: only committed events are announced, and
        // a commit never waits for the notification queue's lock. A failed announcement
        // costs the live view an update, never a write.
        for (project, (ids, duplicates)) in live {
            for payload in live_payloads(project, &ids, duplicates) {
                if let Err(e) = client
                    .execute("SELECT pg_notify('trackd_live', $1)", &[&payload])
                    .await
                {
                    tracing::debug!(error = %e, "live announcement failed");
                }
            }
        }
        Ok(done)
    }

    /// A run of events: the in-batch and cross-node dedup decisions, then the accepted
    /// events with their users, and their dedup records pointed at their users. Returns
    /// each event's outcome and, in order, the accepted ones' (event id, user row id).
    async fn track(
        &self,
        tx: &Transaction<'_>,
        run: &[&TrackedEvent],
    ) -> Result<(Vec<InsertOutcome>, Vec<(i64, i64)>), WriteError> {
        let mut outcomes = vec![InsertOutcome::Inserted; run.len()];
        let records: Vec<&EventRecord> = run.iter().map(|e| &e.record).collect();
        // The user each event is filed under (an email alone may name an id-keyed user):
        // its dedup record names that user too, so deleting the user finds it.
        let user_keys = user_keys(tx, &records).await?;
        if self.window_micros > 0 {
            // Identical keys in the batch: the first stands for all; the rest are its
            // duplicates whatever the database says of it.
            let mut first: HashSet<(i64, [u8; 16])> = HashSet::new();
            let mut candidates: Vec<usize> = Vec::new();
            for (i, e) in run.iter().enumerate() {
                if first.insert((e.project.get(), *e.dedup_key.as_bytes())) {
                    candidates.push(i);
                } else {
                    outcomes[i] = InsertOutcome::Duplicate;
                }
            }
            let projects: Vec<i64> = candidates.iter().map(|&i| run[i].project.get()).collect();
            let keys: Vec<Vec<u8>> = candidates
                .iter()
                .map(|&i| run[i].dedup_key.as_bytes().to_vec())
                .collect();
            let users: Vec<&str> = candidates.iter().map(|&i| user_keys[i].as_str()).collect();
            let now: Option<i64> = self.dedup_clock.as_ref().map(|c| c.now().as_micros());
            let statement = tx
                .prepare_cached(
                    "INSERT INTO dedup (project_id, key, received_at, user_key) \
                     SELECT p, k, COALESCE($4::bigint, \
                        (extract(epoch FROM clock_timestamp()) * 1000000)::bigint), u \
                     FROM unnest($1::bigint[], $2::bytea[], $5::text[]) AS x(p, k, u) \
                     ORDER BY p, k \
                     ON CONFLICT (project_id, key) DO UPDATE \
                       SET received_at = EXCLUDED.received_at, user_key = EXCLUDED.user_key \
                       WHERE dedup.received_at <= EXCLUDED.received_at - $3 \
                     RETURNING project_id, key",
                )
                .await?;
            let admitted: HashSet<(i64, Vec<u8>)> = tx
                .query(
                    &statement,
                    &[&projects, &keys, &self.window_micros, &now, &users],
                )
                .await?
                .iter()
                .map(|r| (r.get::<_, i64>(0), r.get::<_, Vec<u8>>(1)))
                .collect();
            for &i in &candidates {
                let e = run[i];
                if !admitted.contains(&(e.project.get(), e.dedup_key.as_bytes().to_vec())) {
                    outcomes[i] = InsertOutcome::Duplicate;
                }
            }
        }
        let (accepted, keys): (Vec<&EventRecord>, Vec<String>) = records
            .into_iter()
            .zip(user_keys)
            .zip(&outcomes)
            .filter(|(_, o)| **o == InsertOutcome::Inserted)
            .map(|(pair, _)| pair)
            .unzip();
        if accepted.is_empty() {
            return Ok((outcomes, Vec::new()));
        }
        let ids = insert_events(tx, &accepted, &keys).await?;
        Ok((outcomes, ids))
    }

    /// Segment calls, in order: the messageId decisions (one upsert for the job's ids,
    /// serialising nodes racing on one id), then each call not a duplicate: runs of events
    /// stored together (no content dedup), profile changes one by one. A call refused alone
    /// (no such user, a bound) gives its messageId back, so a corrected retry is stored.
    async fn messages(
        &self,
        tx: &Transaction<'_>,
        messages: &[&Message],
        outbox: &mut Pending,
        totals: &mut Totals,
    ) -> Result<(Vec<MessageOutcome>, Vec<(i64, i64)>), WriteError> {
        let window = self.message_window_micros;
        let mut stored_events = Vec::new();
        // The first call of each messageId in the job stands for it.
        let mut admitted: HashSet<[u8; 16]> = HashSet::new();
        if window > 0 {
            let mut keys: Vec<Vec<u8>> = messages
                .iter()
                .filter_map(|m| m.key.map(|k| k.as_bytes().to_vec()))
                .collect();
            keys.sort_unstable();
            keys.dedup();
            if !keys.is_empty() {
                let now: Option<i64> = self.dedup_clock.as_ref().map(|c| c.now().as_micros());
                let statement = tx
                    .prepare_cached(
                        "INSERT INTO message_ids (key, received_at)                          SELECT k, COALESCE($2::bigint,                             (extract(epoch FROM clock_timestamp()) * 1000000)::bigint)                          FROM unnest($1::bytea[]) AS x(k) ORDER BY k                          ON CONFLICT (key) DO UPDATE SET received_at = EXCLUDED.received_at                            WHERE message_ids.received_at <= EXCLUDED.received_at - $3                          RETURNING key",
                    )
                    .await?;
                for row in tx.query(&statement, &[&keys, &now, &window]).await? {
                    if let Ok(key) = <[u8; 16]>::try_from(row.get::<_, Vec<u8>>(0).as_slice()) {
                        admitted.insert(key);
                    }
                }
            }
        }
        // Per admitted key: whether a call holding it was stored (later calls with it are
        // then duplicates) or every one so far was refused (the next one is tried).
        let mut stored_key: HashMap<[u8; 16], bool> = HashMap::new();
        let mut outcomes: Vec<Option<MessageOutcome>> = messages.iter().map(|_| None).collect();
        let mut i = 0;
        while i < messages.len() {
            let wanted = |m: &Message| -> bool {
                match m.key.filter(|_| window > 0) {
                    None => true,
                    Some(k) => {
                        admitted.contains(k.as_bytes())
                            && !stored_key.get(k.as_bytes()).copied().unwrap_or(false)
                    }
                }
            };
            match &messages[i].write {
                Write::Event(_) => {
                    // A run of consecutive events, each not a duplicate of an earlier one.
                    let mut run: Vec<(usize, &EventRecord)> = Vec::new();
                    let mut in_run: HashSet<[u8; 16]> = HashSet::new();
                    while i < messages.len() {
                        let Write::Event(e) = &messages[i].write else {
                            break;
                        };
                        let fresh = wanted(messages[i])
                            && messages[i]
                                .key
                                .filter(|_| window > 0)
                                .is_none_or(|k| in_run.insert(*k.as_bytes()));
                        if fresh {
                            run.push((i, e));
                        } else {
                            outcomes[i] = Some(Ok(InsertOutcome::Duplicate));
                            totals.add(e.project, Counter::Duplicates, 1);
                        }
                        i += 1;
                    }
                    let records: Vec<&EventRecord> = run.iter().map(|(_, e)| *e).collect();
                    let keys = user_keys(tx, &records).await?;
                    let stored = insert_events(tx, &records, &keys).await?;
                    for (&(j, e), (id, user_ref)) in run.iter().zip(stored) {
                        outbox.event(
                            e.project,
                            user_ref,
                            id,
                            &e.identity,
                            e.received_at.as_micros(),
                        );
                        stored_events.push((e.project.get(), id));
                        totals.add(e.project, Counter::Accepted, 1);
                        if let Some(k) = messages[j].key {
                            stored_key.insert(*k.as_bytes(), true);
                        }
                        outcomes[j] = Some(Ok(InsertOutcome::Inserted));
                    }
                }
                Write::Profile(request) => {
                    if wanted(messages[i]) {
                        let result = profile::apply(tx, request, outbox).await?;
                        profile_item(outbox, request, &result);
                        if let Some(k) = messages[i].key {
                            let ok = result.is_ok();
                            let entry = stored_key.entry(*k.as_bytes()).or_insert(false);
                            *entry |= ok;
                        }
                        outcomes[i] = Some(result.map(|_| InsertOutcome::Inserted));
                    } else {
                        outcomes[i] = Some(Ok(InsertOutcome::Duplicate));
                    }
                    i += 1;
                }
            }
        }
        // Admitted ids no call of which was stored: given back.
        let refused: Vec<Vec<u8>> = admitted
            .iter()
            .filter(|k| !stored_key.get(*k).copied().unwrap_or(false))
            .map(|k| k.to_vec())
            .collect();
        if !refused.is_empty() {
            tx.execute(
                "DELETE FROM message_ids WHERE key = ANY($1::bytea[])",
                &[&refused],
            )
            .await?;
        }
        let outcomes = outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Ok(InsertOutcome::Duplicate)))
            .collect();
        Ok((outcomes, stored_events))
    }

    /// While writes fail: every second, a round trip through a pooled connection; ready
    /// again when it succeeds (a commit succeeding also makes it ready).
    pub async fn probe(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.ready.load(Ordering::Relaxed) {
                continue;
            }
            // A committed write, not a read: a database that answers but cannot write
            // (read-only after a failover, out of disk) is not ready.
            let reached = async {
                let client = self.pool.get().await?;
                client
                    .execute(
                        "INSERT INTO meta (key, value) VALUES ('write_probe', 0) \
                         ON CONFLICT (key) DO UPDATE SET value = meta.value + 1",
                        &[],
                    )
                    .await?;
                Ok::<_, WriteError>(())
            };
            if reached.await.is_ok() {
                tracing::info!("database reachable again, ready");
                self.ready.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Every minute: deletes dedup records past the window (and a margin for requests
    /// still queued), by the database clock. Every node may do it; it is idempotent.
    pub async fn purge(self: Arc<Self>) {
        const SLACK_MICROS: i64 = 120_000_000;
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            if self.window_micros == 0 {
                self.purge_messages().await;
                continue;
            }
            let now: Option<i64> = self.dedup_clock.as_ref().map(|c| c.now().as_micros());
            let purged = async {
                let client = self.pool.get().await?;
                let n = client
                    .execute(
                        "DELETE FROM dedup WHERE received_at < COALESCE($1::bigint, \
                            (extract(epoch FROM clock_timestamp()) * 1000000)::bigint) - $2",
                        &[&now, &self.window_micros.saturating_add(SLACK_MICROS)],
                    )
                    .await?;
                Ok::<_, WriteError>(n)
            };
            match purged.await {
                Ok(n) => tracing::debug!(deleted = n, "expired dedup records purged"),
                Err(e) => tracing::warn!(error = %e, "dedup purge failed, retrying later"),
            }
            self.purge_messages().await;
        }
    }
}

impl Writers {
    /// Deletes messageId records past the window (and the slack), a chunk at a time.
    async fn purge_messages(&self) {
        const SLACK_MICROS: i64 = 120_000_000;
        const CHUNK: i64 = 20_000;
        if self.message_window_micros == 0 {
            return;
        }
        let now: Option<i64> = self.dedup_clock.as_ref().map(|c| c.now().as_micros());
        let purged = async {
            let client = self.pool.get().await?;
            let mut total = 0;
            loop {
                let n = client
                    .execute(
                        "DELETE FROM message_ids WHERE key IN (SELECT key FROM message_ids                            WHERE received_at < COALESCE($1::bigint,                              (extract(epoch FROM clock_timestamp()) * 1000000)::bigint) - $2                            LIMIT $3)",
                        &[
                            &now,
                            &self.message_window_micros.saturating_add(SLACK_MICROS),
                            &CHUNK,
                        ],
                    )
                    .await?;
                total += n;
                if n < CHUNK as u64 {
                    return Ok::<_, WriteError>(total);
                }
            }
        };
        match purged.await {
            Ok(n) => tracing::debug!(deleted = n, "expired messageId records purged"),
            Err(e) => tracing::warn!(error = %e, "messageId purge failed, retrying later"),
        }
    }
}

/// A profile change's outbox item, when it changed something.
pub(super) fn profile_item(
    outbox: &mut Pending,
    request: &trackd_core::ProfileRequest,
    result: &Result<crate::job::Changed, trackd_core::StoreError>,
) {
    if let Ok(Some((user_ref, deleted))) = result {
        if outbox.wanted(request.project) {
            let (kind, body) = change_item(&request.change);
            let body = deleted.clone().unwrap_or(body);
            outbox.change(
                request.project,
                *user_ref,
                kind,
                body,
                request.received_at.as_micros(),
            );
        }
    }
}

/// The key of the user each event is filed under: its identity's user key, except for an
/// event that names its user by email alone, which belongs to the user whose key is that
/// email, else to the oldest whose email field it is (DESIGN §3), else to a new user keyed
/// by the email. One statement for every email-only event of the run.
async fn user_keys(
    tx: &Transaction<'_>,
    events: &[&EventRecord],
) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut keys: Vec<String> = events
        .iter()
        .map(|e| e.identity.user_key().to_owned())
        .collect();
    let by_email: Vec<usize> = (0..events.len())
        .filter(|&i| events[i].identity.id().is_none())
        .collect();
    if by_email.is_empty() {
        return Ok(keys);
    }
    let projects: Vec<i64> = by_email.iter().map(|&i| events[i].project.get()).collect();
    let emails: Vec<&str> = by_email.iter().map(|&i| keys[i].as_str()).collect();
    let find = tx
        .prepare_cached(
            "SELECT q.o, u.user_key \
             FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS q(p, e, o) \
             CROSS JOIN LATERAL ( \
               SELECT user_key FROM ( \
                 (SELECT user_key, 0 AS rank, id FROM users \
                   WHERE project_id = q.p AND user_key = q.e) \
                 UNION ALL \
                 (SELECT user_key, 1 AS rank, id FROM users \
                   WHERE project_id = q.p AND email = q.e ORDER BY id LIMIT 1) \
               ) AS c ORDER BY rank, id LIMIT 1 \
             ) AS u",
        )
        .await?;
    let found: Vec<(usize, String)> = tx
        .query(&find, &[&projects, &emails])
        .await?
        .iter()
        .map(|r| (r.get::<_, i64>(0) as usize - 1, r.get::<_, String>(1)))
        .collect();
    let mut stored = HashSet::new();
    for (slot, key) in found {
        if let Some(&i) = by_email.get(slot) {
            keys[i] = key;
            stored.insert(i);
        }
    }
    // A user this run creates is not in the database yet: an email-only event found none
    // there joins the first earlier event of the run with that email (its user is created
    // by that event), as SQLite, writing event by event, would find it.
    let mut in_run: HashMap<(i64, String), String> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        let Some(email) = e.identity.email() else {
            continue;
        };
        let slot = (e.project.get(), email.as_str().to_owned());
        if e.identity.id().is_none() && !stored.contains(&i) {
            if let Some(key) = in_run.get(&slot) {
                keys[i] = key.clone();
            }
        }
        in_run.entry(slot).or_insert_with(|| keys[i].clone());
    }
    Ok(keys)
}

/// In one statement: the users of `events` (created or touched, in key order), then the
/// event rows in order, each filed under the user of `keys[i]`; returns the events' ids and
/// their users' row ids, in order.
async fn insert_events(
    tx: &Transaction<'_>,
    events: &[&EventRecord],
    keys: &[String],
) -> Result<Vec<(i64, i64)>, WriteError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    // One row per user: the batch's first and last receive times, and the last id and
    // email it names (as one upsert per event, in order, would leave them).
    struct Touch {
        user_id: Option<String>,
        email: Option<String>,
        first: i64,
        last: i64,
    }
    let mut users: BTreeMap<(i64, String), Touch> = BTreeMap::new();
    for (e, key) in events.iter().zip(keys) {
        let received = e.received_at.as_micros();
        let touch = users
            .entry((e.project.get(), key.clone()))
            .or_insert(Touch {
                user_id: None,
                email: None,
                first: received,
                last: received,
            });
        if let Some(id) = e.identity.id() {
            touch.user_id = Some(id.as_str().to_owned());
        }
        if let Some(email) = e.identity.email() {
            touch.email = Some(email.as_str().to_owned());
        }
        touch.first = touch.first.min(received);
        touch.last = touch.last.max(received);
    }
    let mut projects = Vec::with_capacity(users.len());
    let mut user_keys = Vec::with_capacity(users.len());
    let mut ids = Vec::with_capacity(users.len());
    let mut emails = Vec::with_capacity(users.len());
    let mut firsts = Vec::with_capacity(users.len());
    let mut lasts = Vec::with_capacity(users.len());
    for ((project, key), t) in users {
        projects.push(project);
        user_keys.push(key);
        ids.push(t.user_id);
        emails.push(t.email);
        firsts.push(t.first);
        lasts.push(t.last);
    }
    let projects_of: Vec<i64> = events.iter().map(|e| e.project.get()).collect();
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    let event_keys: Vec<&str> = events.iter().map(|e| e.key.as_str()).collect();
    let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
    let sources: Vec<Option<&str>> = events.iter().map(|e| e.source.as_deref()).collect();
    let created: Vec<i64> = events.iter().map(|e| e.created_at.as_micros()).collect();
    let received: Vec<i64> = events.iter().map(|e| e.received_at.as_micros()).collect();
    // One statement: the users' upsert, then each event filed under its user's row. The
    // events are inserted in their order, so their ids (from the sequence) are too.
    let insert = tx
        .prepare_cached(
            "WITH u AS ( \
               INSERT INTO users (project_id, user_key, user_id, email, first_seen, \
                                  last_seen, created_at, updated_at) \
               SELECT p, k, i, e, f, l, f, f \
               FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[], \
                           $6::bigint[]) AS u(p, k, i, e, f, l) \
               ORDER BY p, k \
               ON CONFLICT (project_id, user_key) DO UPDATE \
                 SET first_seen = LEAST(users.first_seen, EXCLUDED.first_seen), \
                     last_seen = GREATEST(users.last_seen, EXCLUDED.last_seen), \
                     user_id = COALESCE(EXCLUDED.user_id, users.user_id), \
                     email = COALESCE(EXCLUDED.email, users.email) \
               RETURNING project_id, user_key, id) \
             INSERT INTO events (project_id, user_ref, event_name, event_key, data, source, \
                                 created_at, received_at) \
             SELECT x.p, u.id, x.n, x.k, x.d, x.s, x.c, x.r \
             FROM unnest($7::bigint[], $8::text[], $9::text[], $10::text[], $11::text[], \
                         $12::text[], $13::bigint[], $14::bigint[]) WITH ORDINALITY \
               AS x(p, uk, n, k, d, s, c, r, o) \
             JOIN u ON u.project_id = x.p AND u.user_key = x.uk \
             ORDER BY x.o \
             RETURNING id, user_ref",
        )
        .await?;
    let rows = tx
        .query(
            &insert,
            &[
                &projects,
                &user_keys,
                &ids,
                &emails,
                &firsts,
                &lasts,
                &projects_of,
                &keys,
                &names,
                &event_keys,
                &data,
                &sources,
                &created,
                &received,
            ],
        )
        .await?;
    // Every user was just upserted and returned: an event missing here is a broken
    // invariant, and the batch fails rather than file an event under no user.
    if rows.len() != events.len() {
        return Err(WriteError::Invariant("an upserted user was not returned"));
    }
    // Ids come from the sequence in row order, so sorted they are the events' own order.
    let mut stored: Vec<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    stored.sort_unstable();
    Ok(stored)
}

/// Why a batch did not commit.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteError {
    #[error("no database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database error: {0}")]
    Database(#[from] tokio_postgres::Error),
    #[error("invariant broken: {0}")]
    Invariant(&'static str),
}

impl WriteError {
    /// Lost a race with another transaction: worth one retry.
    fn is_transient(&self) -> bool {
        use tokio_postgres::error::SqlState;
        match self {
            WriteError::Database(e) => e.code().is_some_and(|c| {
                *c == SqlState::T_R_DEADLOCK_DETECTED
                    || *c == SqlState::T_R_SERIALIZATION_FAILURE
                    || *c == SqlState::UNIQUE_VIOLATION
            }),
            WriteError::Pool(_) | WriteError::Invariant(_) => false,
        }
    }
}
