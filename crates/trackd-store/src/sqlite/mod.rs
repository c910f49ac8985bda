//! [`SqliteStore`]: the embedded store. One database file in the data directory, WAL mode,
//! `synchronous=FULL`; one writer thread ([`writer`]) commits batches, while admin work and
//! reads use their own connection.

mod dedup;
mod messages;
mod outbox;
mod privacy;
mod profile;
mod read;
mod schema;
mod users;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use tokio::sync::oneshot;
use trackd_core::error::Cause;
use trackd_core::read::{
    Counter, EventQuery, ExportKey, ExportQuery, Stats, StatsQuery, UserProfile,
};
use trackd_core::{
    Clock, Credential, CredentialKind, EventPage, EventRecord, ExportChunk, InsertOutcome,
    LiveFeed, ProfileRequest, Project, ProjectId, Store, StoreError, StoreFuture, StoreMetrics,
    Token, TrackedEvent,
};

use crate::job::OutboxOp;
use trackd_core::delivery::{
    DeliveryReport, Destination, DestinationChange, DestinationSpec, OutboxItem,
};
use writer::{Job, Writer, WriterConfig};

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "trackd.db";

/// How a [`SqliteStore`] is opened.
pub struct SqliteConfig {
    /// The data directory; created if missing.
    pub data_dir: PathBuf,
    /// The dedup window; zero turns dedup off.
    pub dedup_window: Duration,
    /// The Segment messageId window; zero turns messageId idempotency off.
    pub message_id_window: Duration,
    /// How many writes may wait for the writer before new ones are refused as overloaded.
    pub queue_capacity: usize,
    /// The clock receive times are compared with when purging.
    pub clock: Arc<dyn Clock>,
    /// WAL pages after which the writer finishes a checkpoint itself (bounds the WAL
    /// under sustained writes); [`DEFAULT_WAL_CHECKPOINT_PAGES`] unless tuning.
    pub wal_checkpoint_pages: u32,
    /// The writer connection's page cache in KiB: [`DEFAULT_CACHE_KIB`] for a server,
    /// [`BULK_WRITER_CACHE_KIB`] for `trackd import`, whose large transactions would
    /// otherwise spill dirty pages of the per-user index before their commit.
    pub writer_cache_kib: u32,
}

/// The embedded SQLite store.
pub struct SqliteStore {
    jobs: SyncSender<Job>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Dropping it (and the writer's) stops the checkpointer.
    checkpointer: Mutex<Option<(SyncSender<Checkpoint>, JoinHandle<()>)>>,
    /// For admin writes and reads; SQLite serialises it with the writer (busy timeout).
    admin: Arc<Mutex<Connection>>,
    /// Idle reader connections, and a bound on how many queries read at once.
    readers: Arc<Mutex<Vec<Connection>>>,
    reading: Arc<tokio::sync::Semaphore>,
    /// Per project, the permits of `reading` its queries may hold at once: all but one
    /// ([`read_share`]), so one project's slow queries always leave a reader to the others.
    read_shares: Mutex<HashMap<i64, Arc<tokio::sync::Semaphore>>>,
    /// Exports last as long as their clients read: they get their own permits so slow
    /// export readers cannot starve the other read queries.
    exporting: Arc<tokio::sync::Semaphore>,
    path: PathBuf,
    ready: Arc<AtomicBool>,
    clock: Arc<dyn Clock>,
    metrics: StoreMetrics,
    live: LiveFeed,
}

/// WAL pages after which the writer finishes a checkpoint itself (about 40 MiB).
pub const DEFAULT_WAL_CHECKPOINT_PAGES: u32 = 10_000;

/// Each connection's page cache, in KiB.
pub const DEFAULT_CACHE_KIB: u32 = 16 * 1024;
/// The writer's page cache for a bulk import: at 10 million events of 100,000 users the
/// per-user index alone is 220 MiB.
pub const BULK_WRITER_CACHE_KIB: u32 = 512 * 1024;

/// How much of the database file a reader connection maps into memory (all of it, up to
/// 1 TiB; `SQLITE_MAX_MMAP_SIZE` in `.cargo/config.toml` allows as much). A query then
/// reads pages in place: no `pread` copy into a cache page of its own, which was half of a
/// user timeline's CPU at 10 million events (ARCHITECTURE, "Reads").
pub const READER_MMAP_BYTES: i64 = 1 << 40;

/// How many queries read at once: two more than the CPUs, of which one project's queries
/// hold at most one more than the CPUs ([`read_share`]). A query on the mapped file with
/// its pages in the OS cache is CPU work, so readers beyond the cores only preempt each
/// other mid-query: on 2 CPUs, 8 timeline clients of one project over 10 million events got
/// a p99 of 4.6-5.6 ms with 8 readers against 3.3-4.6 ms with 3 (fewer requests a second
/// with 2), README "Benchmarks". The spare one keeps the cores busy while a read waits for
/// the disk.
fn max_readers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()) + 2
}

/// How many queries of one project read at once: all the readers but one. A statistics
/// query over 10 million events takes 7 to 9 s; a project running several still leaves a
/// reader to the other projects' queries.
fn read_share() -> usize {
    max_readers().saturating_sub(1).max(1)
}
/// How many exports run at once (beside the queries).
const MAX_EXPORTS: usize = 4;

/// How long a connection waits for another writer (the CLI, another process) to finish.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit is on disk (WAL fsynced) before it returns, so a 200 survives a power
    // cut, not only a process crash.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "cache_size", -i64::from(DEFAULT_CACHE_KIB))?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Deleted content is overwritten with zeros, so a deleted user is gone from the file.
    // On for every transaction, not only deletions: with it off, page splits during
    // ordinary inserts leave stale copies of rows in the free space of pages, which a
    // later deletion cannot know about (found by the delete test's byte scan).
    conn.pragma_update(None, "secure_delete", true)?;
    // After a checkpoint resets the WAL, truncate the file back to this size.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    Ok(conn)
}

/// The writer's connection. Checkpoints mostly run on their own thread (see
/// `spawn_checkpointer`), not inside the writer's commits. But a checkpoint on another
/// connection can never finish while the writer keeps appending, and only a finished one
/// lets the WAL start over: under sustained load the WAL would grow without bound (found by
/// the 10-million-event import). So the writer still checkpoints once the WAL passes
/// `wal_checkpoint_pages`; by then the background checkpoints have copied nearly all of it,
/// so this one is short.
fn open_write_connection(
    path: &Path,
    wal_checkpoint_pages: u32,
    cache_kib: u32,
) -> rusqlite::Result<Connection> {
    let conn = open_connection(path)?;
    conn.pragma_update(None, "wal_autocheckpoint", wal_checkpoint_pages)?;
    conn.pragma_update(None, "cache_size", -i64::from(cache_kib))?;
    Ok(conn)
}

/// A reader's connection: the database file mapped ([`READER_MMAP_BYTES`]). The file
/// never shrinks (no VACUUM, no auto-vacuum: freed pages are reused), so a mapped page
/// stays valid; the resident size the OS reports counts each connection's mapped pages,
/// which are the OS's file cache, shared, not memory of the process's own.
fn open_read_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = open_connection(path)?;
    conn.pragma_update(None, "mmap_size", READER_MMAP_BYTES)?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `config.data_dir`, applies migrations and
    /// starts the writer thread.
    pub fn open(config: SqliteConfig) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            StoreError::unavailable(std::io::Error::new(
                e.kind(),
                format!("data dir {}: {e}", config.data_dir.display()),
            ))
        })?;
        let path = config.data_dir.join(DB_FILE);
        let mut conn =
            open_write_connection(&path, config.wal_checkpoint_pages, config.writer_cache_kib)
                .map_err(StoreError::unavailable)?;
        schema::migrate(&mut conn).map_err(StoreError::unavailable)?;
        let checkpointer =
            spawn_checkpointer(open_connection(&path).map_err(StoreError::unavailable)?)?;
        let erased = checkpointer.0.clone();
        let admin = open_connection(&path).map_err(StoreError::unavailable)?;
        let (tx, rx) = sync_channel(config.queue_capacity.max(1));
        let ready = Arc::new(AtomicBool::new(true));
        let metrics = StoreMetrics::default();
        let live = LiveFeed::default();
        let writer = Writer::new(
            conn,
            rx,
            WriterConfig {
                path: path.clone(),
                wal_checkpoint_pages: config.wal_checkpoint_pages,
                cache_kib: config.writer_cache_kib,
                clock: config.clock.clone(),
                window_micros: i64::try_from(config.dedup_window.as_micros()).unwrap_or(i64::MAX),
                message_window_micros: i64::try_from(config.message_id_window.as_micros())
                    .unwrap_or(i64::MAX),
                ready: ready.clone(),
                metrics: metrics.clone(),
                live: live.clone(),
                erased,
            },
        )
        .map_err(StoreError::unavailable)?;
        let handle = std::thread::Builder::new()
            .name("trackd-writer".into())
            .spawn(move || writer.run())
            .map_err(StoreError::unavailable)?;
        Ok(SqliteStore {
            jobs: tx,
            writer: Mutex::new(Some(handle)),
            checkpointer: Mutex::new(Some(checkpointer)),
            admin: Arc::new(Mutex::new(admin)),
            readers: Arc::new(Mutex::new(Vec::new())),
            reading: Arc::new(tokio::sync::Semaphore::new(max_readers())),
            read_shares: Mutex::new(HashMap::new()),
            exporting: Arc::new(tokio::sync::Semaphore::new(MAX_EXPORTS)),
            path,
            ready,
            clock: config.clock,
            metrics,
            live,
        })
    }

    /// Queues a write for the writer without waiting for room: a full queue is
    /// [`StoreError::Overloaded`] at once. Resolves when the writer answers, after the commit.
    fn submit<T: Send + 'static>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Job,
    ) -> StoreFuture<'_, T> {
        let (reply, answer) = oneshot::channel();
        let sent = self.jobs.try_send(job(reply));
        if sent.is_ok() {
            self.metrics.queue_depth.inc();
        }
        Box::pin(async move {
            match sent {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => return Err(StoreError::Overloaded),
                Err(TrySendError::Disconnected(_)) => {
                    return Err(StoreError::unavailable(Cause("writer stopped")))
                }
            }
            answer
                .await
                .map_err(|_| StoreError::unavailable(Cause("writer stopped")))?
        })
    }

    /// Runs `f` on a reader connection on the blocking pool.
    fn read<T, F>(&self, f: F) -> StoreFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.read_with(self.reading.clone(), f)
    }

    /// [`Self::read`] for one project's query: it holds one of the project's own permits
    /// ([`read_share`]) first, then one of `reading`.
    fn read_in<T, F>(&self, project: ProjectId, f: F) -> StoreFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let share = {
            // A panic elsewhere while holding the map leaves it whole: its entries are
            // only ever added.
            let mut shares = self.read_shares.lock().unwrap_or_else(|e| e.into_inner());
            shares
                .entry(project.get())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(read_share())))
                .clone()
        };
        // Lazy: `read`'s permit is asked for only once the project's is held.
        let read = self.read(f);
        Box::pin(async move {
            let _share = share
                .acquire_owned()
                .await
                .map_err(StoreError::unavailable)?;
            read.await
        })
    }

    /// [`Self::read`], holding a permit of `reading` while it runs.
    fn read_with<T, F>(&self, reading: Arc<tokio::sync::Semaphore>, f: F) -> StoreFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let readers = self.readers.clone();
        let path = self.path.clone();
        Box::pin(async move {
            let _permit = reading
                .acquire_owned()
                .await
                .map_err(StoreError::unavailable)?;
            tokio::task::spawn_blocking(move || {
                let idle = readers.lock().ok().and_then(|mut r| r.pop());
                let conn = match idle {
                    Some(conn) => conn,
                    None => open_read_connection(&path).map_err(unavailable)?,
                };
                let result = f(&conn).map_err(unavailable);
                if let Ok(mut idle) = readers.lock() {
                    idle.push(conn);
                }
                result
            })
            .await
            .map_err(StoreError::unavailable)?
        })
    }

    /// Runs `f` on the admin connection on the blocking pool.
    fn admin<T, F>(&self, f: F) -> StoreFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, i64) -> Result<T, StoreError> + Send + 'static,
    {
        let admin = self.admin.clone();
        let now = self.clock.now().as_micros();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut conn = admin
                    .lock()
                    .map_err(|_| StoreError::unavailable(Cause("admin connection poisoned")))?;
                f(&mut conn, now)
            })
            .await
            .map_err(StoreError::unavailable)?
        })
    }
}

/// The store's secret (cursors are sealed, suppression hashes keyed with it): 32 random
/// bytes made on first use. The first to insert wins; everyone reads what was kept.
pub(crate) fn secret(conn: &Connection) -> rusqlite::Result<[u8; 32]> {
    conn.execute(
        "INSERT INTO meta (key, value, bytes) VALUES ('cursor_key', 0, ?1) \
         ON CONFLICT (key) DO NOTHING",
        [&trackd_core::read::CursorKey::random_secret()[..]],
    )?;
    let kept: Vec<u8> =
        conn.query_row("SELECT bytes FROM meta WHERE key = 'cursor_key'", [], |r| {
            r.get(0)
        })?;
    <[u8; 32]>::try_from(kept.as_slice()).map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            32,
            rusqlite::types::Type::Blob,
            "meta.cursor_key is not 32 bytes".into(),
        )
    })
}

/// The longest a checkpoint waits for a lock or a reader (and so holds the writer).
const CHECKPOINT_WAIT: Duration = Duration::from_millis(20);

/// How often the checkpointer copies committed WAL pages into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// What the writer asks of the checkpointer.
pub(crate) enum Checkpoint {
    /// A deletion committed: copy the whole WAL into the database and truncate it, so the
    /// older page images holding the deleted data leave the files now, not whenever the
    /// WAL happens to be overwritten (and not only at a clean shutdown).
    Truncate,
}

/// Runs passive checkpoints on a connection of its own, so the writer's commits never pay
/// for copying the WAL into the database (SQLite's default runs them inside the commit that
/// crosses the threshold). A passive checkpoint never blocks the writer. After a deletion it
/// runs a truncating one: that waits for the writer's lock and holds it while it copies
/// what is left of the WAL (the passive ones have copied most of it), so a deletion costs
/// the writer one short pause; until it succeeds it is tried again every tick.
fn spawn_checkpointer(
    conn: Connection,
) -> Result<(SyncSender<Checkpoint>, JoinHandle<()>), StoreError> {
    // A truncating checkpoint takes the write lock and then waits for readers on older
    // snapshots: with the usual busy timeout one long read would hold every tenant's writes
    // for seconds. It waits this long at most, falls back to copying what it can, and is
    // tried again on the next tick.
    conn.busy_timeout(CHECKPOINT_WAIT)
        .map_err(StoreError::unavailable)?;
    let (asks, asked) = sync_channel::<Checkpoint>(1);
    let handle = std::thread::Builder::new()
        .name("trackd-checkpoint".into())
        .spawn(move || {
            let mut truncate = false;
            loop {
                // Returns when the store and its writer are gone.
                match asked.recv_timeout(CHECKPOINT_EVERY) {
                    Ok(Checkpoint::Truncate) => truncate = true,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
                let sql = if truncate {
                    "PRAGMA wal_checkpoint(TRUNCATE)"
                } else {
                    "PRAGMA wal_checkpoint(PASSIVE)"
                };
                // The first column is 1 when the checkpoint could not finish (busy).
                match conn.query_row(sql, [], |r| r.get::<_, i64>(0)) {
                    Ok(0) => truncate = false,
                    Ok(_) => tracing::debug!(truncate, "checkpoint busy, retrying"),
                    Err(e) => tracing::warn!(error = %e, "checkpoint failed, retrying later"),
                }
            }
        })
        .map_err(StoreError::unavailable)?;
    Ok((asks, handle))
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::unavailable(e)
}

fn bump_credentials_version(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE meta SET value = value + 1 WHERE key = 'credentials_version'",
        [],
    )?;
    Ok(())
}

fn read_version(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT value FROM meta WHERE key = 'credentials_version'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|v| v as u64)
}

impl Store for SqliteStore {
    fn track(&self, event: TrackedEvent) -> StoreFuture<'_, InsertOutcome> {
        self.submit(|reply| Job::Track {
            event: Box::new(event),
            reply,
        })
    }

    fn ingest(
        &self,
        messages: Vec<trackd_core::segment::Message>,
    ) -> StoreFuture<'_, Vec<trackd_core::store::MessageOutcome>> {
        self.submit(|reply| Job::Messages { messages, reply })
    }

    fn change_profile(&self, request: ProfileRequest) -> StoreFuture<'_, InsertOutcome> {
        self.submit(|reply| Job::Profile {
            request: Box::new(request),
            reply,
        })
    }

    fn user(&self, project: ProjectId, key: &str) -> StoreFuture<'_, Option<UserProfile>> {
        let key = key.to_owned();
        self.read_in(project, move |conn| read::user(conn, project, &key))
    }

    fn events(&self, query: EventQuery) -> StoreFuture<'_, Option<EventPage>> {
        self.read_in(query.project, move |conn| read::events(conn, &query))
    }

    fn export_chunk(
        &self,
        query: ExportQuery,
        after: Option<ExportKey>,
    ) -> StoreFuture<'_, ExportChunk> {
        self.read_with(self.exporting.clone(), move |conn| {
            let after = after.unwrap_or_else(|| query.start());
            read::export_chunk(conn, &query, after)
        })
    }

    fn stats(&self, query: StatsQuery) -> StoreFuture<'_, Stats> {
        Box::pin(async move {
            let too_many = query.too_many();
            self.read_in(query.project, move |conn| read::stats(conn, &query))
                .await?
                .ok_or(StoreError::Invalid(too_many))
        })
    }

    fn restore(&self, events: Vec<EventRecord>, deliver: bool) -> StoreFuture<'_, u64> {
        self.submit(|reply| Job::Restore {
            events,
            deliver,
            reply,
        })
    }

    fn add_counters(&self, counts: Vec<(ProjectId, Counter, i64)>) -> StoreFuture<'_, ()> {
        self.submit(|reply| Job::Counters { counts, reply })
    }

    fn credentials(&self) -> StoreFuture<'_, (u64, Vec<Credential>)> {
        self.admin(|conn, _| {
            let tx = conn.transaction().map_err(unavailable)?;
            let version = read_version(&tx).map_err(unavailable)?;
            let mut stmt = tx
                .prepare("SELECT hash, project_id, kind FROM credentials")
                .map_err(unavailable)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })
                .map_err(unavailable)?;
            let mut out = Vec::new();
            for row in rows {
                let (hash, project, kind) = row.map_err(unavailable)?;
                out.extend(Credential::from_stored(&hash, project, &kind));
            }
            Ok((version, out))
        })
    }

    fn credentials_version(&self) -> StoreFuture<'_, u64> {
        self.admin(|conn, _| read_version(conn).map_err(unavailable))
    }

    fn cursor_key(&self) -> StoreFuture<'_, [u8; 32]> {
        self.admin(|conn, _| secret(conn).map_err(unavailable))
    }

    fn suppress(
        &self,
        project: ProjectId,
        key: String,
        actor: trackd_core::privacy::Actor,
    ) -> StoreFuture<'_, trackd_core::privacy::Suppressed> {
        self.submit(|reply| Job::Suppress {
            project,
            key,
            actor,
            reply,
        })
    }

    fn unsuppress(
        &self,
        project: ProjectId,
        key: String,
        actor: trackd_core::privacy::Actor,
    ) -> StoreFuture<'_, bool> {
        self.submit(|reply| Job::Unsuppress {
            project,
            key,
            actor,
            reply,
        })
    }

    fn set_retention(&self, project: ProjectId, retention: Option<i64>) -> StoreFuture<'_, ()> {
        self.admin(move |conn, _| {
            let n = conn
                .execute(
                    "UPDATE projects SET retention = ?2 WHERE id = ?1",
                    params![project.get(), retention],
                )
                .map_err(unavailable)?;
            if n == 0 {
                return Err(StoreError::NotFound("project".into()));
            }
            Ok(())
        })
    }

    fn expire(
        &self,
        project: ProjectId,
        cutoff: trackd_core::Timestamp,
        limit: usize,
    ) -> StoreFuture<'_, trackd_core::privacy::Expired> {
        self.submit(|reply| Job::Expire {
            project,
            cutoff: cutoff.as_micros(),
            limit,
            reply,
        })
    }

    fn record_audit(&self, act: trackd_core::privacy::AuditAct) -> StoreFuture<'_, ()> {
        self.admin(move |conn, now| privacy::record(conn, &act, now).map_err(unavailable))
    }

    fn audit(
        &self,
        query: trackd_core::privacy::AuditQuery,
    ) -> StoreFuture<'_, Vec<trackd_core::privacy::AuditEntry>> {
        self.read_in(query.project, move |conn| privacy::page(conn, &query))
    }

    fn create_project(&self, name: &str) -> StoreFuture<'_, Project> {
        let name = name.to_owned();
        self.admin(move |conn, now| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            let exists: Option<i64> = tx
                .query_row("SELECT id FROM projects WHERE name = ?1", [&name], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(unavailable)?;
            if exists.is_some() {
                return Err(StoreError::Conflict(format!("project {name}")));
            }
            tx.execute(
                "INSERT INTO projects (name, created_at) VALUES (?1, ?2)",
                params![name, now],
            )
            .map_err(unavailable)?;
            let id = tx.last_insert_rowid();
            tx.commit().map_err(unavailable)?;
            Ok(Project {
                id: ProjectId::new(id),
                name,
                retention: None,
            })
        })
    }

    fn projects(&self) -> StoreFuture<'_, Vec<Project>> {
        self.admin(|conn, _| {
            let mut stmt = conn
                .prepare("SELECT id, name, retention FROM projects ORDER BY name")
                .map_err(unavailable)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(Project {
                        id: ProjectId::new(r.get(0)?),
                        name: r.get(1)?,
                        retention: r.get(2)?,
                    })
                })
                .map_err(unavailable)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
        })
    }

    fn project(&self, name: &str) -> StoreFuture<'_, Project> {
        let name = name.to_owned();
        self.admin(move |conn, _| {
            conn.query_row(
                "SELECT id, name, retention FROM projects WHERE name = ?1",
                [&name],
                |r| {
                    Ok(Project {
                        id: ProjectId::new(r.get(0)?),
                        name: r.get(1)?,
                        retention: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(unavailable)?
            .ok_or_else(|| StoreError::NotFound(format!("project {name}")))
        })
    }

    fn add_credential(
        &self,
        project: ProjectId,
        kind: CredentialKind,
        token: &Token,
    ) -> StoreFuture<'_, ()> {
        let hash = token.hash();
        self.admin(move |conn, now| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            let inserted = tx
                .execute(
                    "INSERT INTO credentials (hash, project_id, kind, created_at) \
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (hash) DO NOTHING",
                    params![&hash.as_bytes()[..], project.get(), kind.as_str(), now],
                )
                .map_err(unavailable)?;
            if inserted == 0 {
                return Err(StoreError::Conflict(format!(
                    "credential {}",
                    hash.fingerprint()
                )));
            }
            bump_credentials_version(&tx).map_err(unavailable)?;
            tx.commit().map_err(unavailable)
        })
    }

    fn revoke_credential(
        &self,
        project: ProjectId,
        kind: CredentialKind,
        token: &Token,
    ) -> StoreFuture<'_, ()> {
        let hash = token.hash();
        self.admin(move |conn, _| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            let deleted = tx
                .execute(
                    "DELETE FROM credentials WHERE hash = ?1 AND project_id = ?2 AND kind = ?3",
                    params![&hash.as_bytes()[..], project.get(), kind.as_str()],
                )
                .map_err(unavailable)?;
            if deleted == 0 {
                return Err(StoreError::NotFound(format!(
                    "{} credential {}",
                    kind.as_str(),
                    hash.fingerprint()
                )));
            }
            bump_credentials_version(&tx).map_err(unavailable)?;
            tx.commit().map_err(unavailable)
        })
    }

    fn destinations(
        &self,
        project: Option<ProjectId>,
        with_backlog: bool,
    ) -> StoreFuture<'_, Vec<Destination>> {
        self.read(move |conn| outbox::destinations(conn, project, with_backlog))
    }

    fn add_destination(
        &self,
        project: ProjectId,
        spec: DestinationSpec,
        secret: String,
    ) -> StoreFuture<'_, Destination> {
        self.admin(move |conn, now| outbox::add_destination(conn, now, project, &spec, &secret))
    }

    fn change_destination(
        &self,
        project: ProjectId,
        name: &str,
        change: DestinationChange,
    ) -> StoreFuture<'_, ()> {
        let name = name.to_owned();
        self.admin(move |conn, _| outbox::change_destination(conn, project, &name, &change))
    }

    fn outbox(
        &self,
        project: ProjectId,
        after: i64,
        limit: usize,
    ) -> StoreFuture<'_, Vec<OutboxItem>> {
        self.read_in(project, move |conn| {
            outbox::items(conn, project, after, limit)
        })
    }

    fn redrive_items(&self, destination: i64, limit: usize) -> StoreFuture<'_, Vec<OutboxItem>> {
        self.read(move |conn| outbox::redrive_items(conn, destination, limit))
    }

    fn dead_letters(
        &self,
        project: ProjectId,
        destination: i64,
        after: i64,
        limit: usize,
    ) -> StoreFuture<'_, Vec<trackd_core::delivery::DeadLetter>> {
        self.read_in(project, move |conn| {
            outbox::dead_letters(conn, project, destination, after, limit)
        })
    }

    fn report_delivery(&self, report: DeliveryReport) -> StoreFuture<'_, bool> {
        let done = self.submit(|reply| Job::Outbox {
            op: Box::new(OutboxOp::Report(report)),
            reply,
        });
        Box::pin(async move { Ok(done.await? == 1) })
    }

    fn lease(&self, destination: i64, node: &str, ttl_ms: i64) -> StoreFuture<'_, bool> {
        let done = self.submit(|reply| Job::Outbox {
            op: Box::new(OutboxOp::Lease {
                destination,
                node: node.to_owned(),
                ttl_ms,
            }),
            reply,
        });
        Box::pin(async move { Ok(done.await? == 1) })
    }

    fn prune_outbox(&self, keep_micros: i64) -> StoreFuture<'_, u64> {
        let cutoff = self.clock.now().as_micros().saturating_sub(keep_micros);
        Box::pin(async move {
            // Most data sets have no destination: a read says so without a write.
            let any = self
                .read(move |conn| {
                    conn.query_row(
                        // Each project's first item (positions follow receive times).
                        "SELECT EXISTS (SELECT 1 FROM projects p WHERE (SELECT received_at \
                         FROM outbox o WHERE o.project_id = p.id ORDER BY pos LIMIT 1) < ?1)",
                        [cutoff],
                        |r| r.get::<_, bool>(0),
                    )
                })
                .await?;
            if !any {
                return Ok(0);
            }
            self.submit(|reply| Job::Outbox {
                op: Box::new(OutboxOp::Prune { cutoff }),
                reply,
            })
            .await
        })
    }

    fn metrics(&self) -> StoreMetrics {
        self.metrics.clone()
    }

    fn live(&self) -> &LiveFeed {
        &self.live
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn shutdown(&self) -> StoreFuture<'_, ()> {
        let jobs = self.jobs.clone();
        let handle = self.writer.lock().ok().and_then(|mut h| h.take());
        let checkpointer = self.checkpointer.lock().ok().and_then(|mut c| c.take());
        Box::pin(async move {
            // A full queue still drains: the shutdown marker waits its turn (off the runtime).
            let sent = tokio::task::spawn_blocking(move || jobs.send(Job::Shutdown))
                .await
                .map_err(StoreError::unavailable)?;
            if sent.is_err() {
                return Ok(());
            }
            if let Some(handle) = handle {
                tokio::task::spawn_blocking(move || handle.join())
                    .await
                    .map_err(StoreError::unavailable)?
                    .map_err(|_| StoreError::unavailable(Cause("writer panicked")))?;
            }
            if let Some((stop, handle)) = checkpointer {
                drop(stop);
                tokio::task::spawn_blocking(move || handle.join())
                    .await
                    .map_err(StoreError::unavailable)?
                    .map_err(|_| StoreError::unavailable(Cause("checkpointer panicked")))?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trackd_core::{EventName, Identity, SystemClock, Timestamp};

    fn event(n: i64) -> EventRecord {
        let mut fields = serde_json::Map::new();
        fields.insert("id".into(), format!("user-{}", n % 500).into());
        let name = EventName::parse(Some(&"Viewed product".into())).expect("name");
        EventRecord {
            project: ProjectId::new(1),
            identity: Identity::from_fields(&fields, "").expect("identity"),
            key: name.key(),
            name,
            data: format!(r#"{{"n":{n},"pad":"{}"}}"#, "x".repeat(200)),
            source: None,
            created_at: Timestamp::from_micros(n),
            received_at: Timestamp::from_micros(n),
        }
    }

    /// The bundled SQLite is built with `.cargo/config.toml`'s flags: each connection its
    /// own page cache (with SQLITE_ENABLE_MEMORY_MANAGEMENT, libsqlite3-sys's default, every
    /// page fetch of every connection takes one global mutex), no memory statistics, no
    /// double-quoted strings. A build without the file falls back silently; this says so.
    #[test]
    fn sqlite_is_built_with_the_repository_flags() {
        let conn = Connection::open_in_memory().expect("open");
        let options: Vec<String> = conn
            .prepare("SELECT compile_options FROM pragma_compile_options")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "{options:?}"
        );
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
        assert!(options.iter().any(|o| o == "DQS=0"), "{options:?}");
        assert!(
            options
                .iter()
                .any(|o| o == &format!("MAX_MMAP_SIZE={READER_MMAP_BYTES}")),
            "{options:?}"
        );
    }

    fn config(dir: &Path, wal_checkpoint_pages: u32) -> SqliteConfig {
        SqliteConfig {
            data_dir: dir.to_path_buf(),
            dedup_window: Duration::from_secs(180),
            message_id_window: Duration::from_secs(86_400),
            queue_capacity: 16,
            clock: Arc::new(SystemClock),
            wal_checkpoint_pages,
            writer_cache_kib: DEFAULT_CACHE_KIB,
        }
    }

    /// Queries read the database file in place: every reader connection maps all of it
    /// (SQLite lowers a larger `mmap_size` to its compiled ceiling, 2 GiB by default).
    #[tokio::test]
    async fn readers_map_the_whole_database_file() {
        let dir = tempfile::tempdir().expect("dir");
        let store =
            SqliteStore::open(config(dir.path(), DEFAULT_WAL_CHECKPOINT_PAGES)).expect("open");
        let mapped: i64 = store
            .read(|conn| conn.query_row("PRAGMA mmap_size", [], |r| r.get(0)))
            .await
            .expect("read");
        store.shutdown().await.expect("shutdown");
        assert_eq!(mapped, READER_MMAP_BYTES);
    }

    /// One project's queries hold at most all the readers but one: while as many of its
    /// queries as there are readers wait inside SQLite, all but one of them running, another
    /// project's query still gets a reader and answers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_projects_slow_reads_leave_a_reader_to_the_others() {
        use std::sync::atomic::AtomicUsize;
        use std::sync::Condvar;
        let dir = tempfile::tempdir().expect("dir");
        let store = Arc::new(
            SqliteStore::open(config(dir.path(), DEFAULT_WAL_CHECKPOINT_PAGES)).expect("open"),
        );
        /// Opens the gate when dropped, also when an assertion fails: the runtime waits
        /// for its blocking threads, so a query left waiting would hang the test.
        struct Gate(Arc<(Mutex<bool>, Condvar)>);
        impl Drop for Gate {
            fn drop(&mut self) {
                let (open, opened) = &*self.0;
                *open.lock().unwrap_or_else(|e| e.into_inner()) = true;
                opened.notify_all();
            }
        }
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let opener = Gate(gate.clone());
        let started = Arc::new(AtomicUsize::new(0));
        let slow = ProjectId::new(1);
        let mut held = Vec::new();
        for _ in 0..max_readers() {
            let (store, gate, started) = (store.clone(), gate.clone(), started.clone());
            held.push(tokio::spawn(async move {
                store
                    .read_in(slow, move |_| {
                        started.fetch_add(1, Ordering::SeqCst);
                        let (open, opened) = &*gate;
                        let mut open = open.lock().expect("gate");
                        while !*open {
                            open = opened.wait(open).expect("gate");
                        }
                        Ok(())
                    })
                    .await
            }));
        }
        for _ in 0..3000 {
            if started.load(Ordering::SeqCst) == read_share() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(started.load(Ordering::SeqCst), read_share());
        // A guard against hanging, not a measure: without the share it waits for ever.
        let other = tokio::time::timeout(
            Duration::from_secs(30),
            store.read_in(ProjectId::new(2), |conn| {
                conn.query_row("SELECT 7", [], |r| r.get::<_, i64>(0))
            }),
        )
        .await
        .expect("another project's query waited for the first project's")
        .expect("read");
        assert_eq!(other, 7);
        // The first project's last query still waits for one of its own permits.
        assert_eq!(started.load(Ordering::SeqCst), read_share());
        drop(opener);
        for query in held {
            query.await.expect("joined").expect("read");
        }
        assert_eq!(started.load(Ordering::SeqCst), max_readers());
    }

    /// Regression: with checkpoints only on another connection, a checkpoint never finished
    /// while the writer kept appending, the WAL never started over, and a 10-million-event
    /// import grew it past 45 GB. The writer now finishes one past the threshold.
    #[tokio::test]
    async fn the_wal_stays_bounded_under_sustained_writes() {
        let dir = tempfile::tempdir().expect("dir");
        let store = SqliteStore::open(config(dir.path(), 100)).expect("open");
        let wal = dir.path().join(format!("{DB_FILE}-wal"));
        let mut largest = 0;
        for batch in 0..40 {
            let events = (0..500).map(|i| event(batch * 500 + i)).collect();
            store.restore(events, false).await.expect("restore");
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        }
        let db = std::fs::metadata(dir.path().join(DB_FILE))
            .expect("db")
            .len();
        store.shutdown().await.expect("shutdown");
        // 20,000 events of ~300 bytes: several MB of pages were written through the WAL,
        // yet it never held much more than one threshold's worth of them.
        assert!(db > 4_000_000, "database {db} bytes");
        assert!(largest < 2_000_000, "WAL reached {largest} bytes");
    }
}
