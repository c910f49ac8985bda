//! [`PostgresStore`]: the shared store. Any number of trackd nodes use one PostgreSQL
//! database; each node group-commits its own requests ([`writer`]), and dedup holds across
//! nodes through one upsert per batch on the dedup key, judged by the database clock.
//! Connections come from a bounded pool with bounded waits: when the database is
//! unreachable, requests get 503 within the pool's wait and `ready()` turns false until a
//! round trip succeeds again.

mod live;
mod outbox;
mod privacy;
mod profile;
mod read;
mod schema;
mod writer;

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;
use trackd_core::delivery::{
    DeliveryReport, Destination, DestinationChange, DestinationSpec, OutboxItem,
};
use trackd_core::error::Cause;
use trackd_core::read::{
    Counter, EventQuery, ExportKey, ExportQuery, Stats, StatsQuery, UserProfile,
};
use trackd_core::{
    Clock, Credential, CredentialKind, EventPage, EventRecord, ExportChunk, InsertOutcome,
    LiveFeed, ProfileRequest, Project, ProjectId, Store, StoreError, StoreFuture, StoreMetrics,
    Token, TrackedEvent,
};

use writer::{Job, Writers};

/// How a [`PostgresStore`] is opened.
pub struct PgConfig {
    /// `postgres://user:password@host:port/database` (libpq-style key=value also works).
    pub url: String,
    /// The dedup window; zero turns dedup off.
    pub dedup_window: Duration,
    /// The Segment messageId window; zero turns messageId idempotency off.
    pub message_id_window: Duration,
    /// How many writes may wait for this node's writers before new ones are refused.
    pub queue_capacity: usize,
    /// Creation times of projects and credentials.
    pub clock: Arc<dyn Clock>,
    /// Dedup receive times from this clock instead of the database's. The database clock is
    /// what keeps nodes with skewed clocks consistent; tests set a manual clock here.
    pub dedup_clock: Option<Arc<dyn Clock>>,
    /// Pooled connections of this node (writers, reads and admin share them).
    pub pool_size: usize,
}

/// Writers per node: a batch commits while the next one is written.
const WRITERS: usize = 2;
/// How long a request waits for a pooled connection, or to connect, before 503.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// Counter shards (see the `counters` table).
const SHARDS: u32 = 64;

/// The PostgreSQL store.
pub struct PostgresStore {
    pool: Pool,
    jobs: mpsc::Sender<Job>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    background: Vec<JoinHandle<()>>,
    ready: Arc<AtomicBool>,
    clock: Arc<dyn Clock>,
    metrics: StoreMetrics,
    /// Bounds concurrent exports, which hold a connection as long as their client reads.
    exporting: Arc<tokio::sync::Semaphore>,
    live: LiveFeed,
    /// The key suppression hashes are made with.
    suppression: trackd_core::privacy::SuppressionKey,
}

/// A counter shard for this node, at random: nodes in containers often share a process id.
fn random_shard() -> i32 {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (random % u64::from(SHARDS)) as i32
}

/// The store's secret (cursors are sealed, suppression hashes keyed with it): 32 random
/// bytes made on first use. The first node to insert wins (a racing insert waits for it,
/// then does nothing); every node reads what was kept.
async fn secret(client: &deadpool_postgres::Client) -> Result<[u8; 32], StoreError> {
    let fresh = trackd_core::read::CursorKey::random_secret();
    client
        .execute(
            "INSERT INTO meta (key, value, bytes) VALUES ('cursor_key', 0, $1) \
             ON CONFLICT (key) DO NOTHING",
            &[&&fresh[..]],
        )
        .await
        .map_err(unavailable)?;
    let row = client
        .query_one("SELECT bytes FROM meta WHERE key = 'cursor_key'", &[])
        .await
        .map_err(unavailable)?;
    let kept: Option<&[u8]> = row.try_get(0).map_err(unavailable)?;
    kept.and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| StoreError::unavailable(Cause("meta.cursor_key is not 32 bytes")))
}

fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::unavailable(e)
}

impl PostgresStore {
    /// Connects, applies migrations (safe when several nodes start at once) and starts the
    /// writers. Must be called inside a Tokio runtime.
    pub async fn open(config: PgConfig) -> Result<Self, StoreError> {
        let mut pg = tokio_postgres::Config::from_str(&config.url).map_err(unavailable)?;
        // A database host that vanishes without a reset must fail writes, not hang them:
        // unacknowledged data and silent connections are given up on within seconds.
        pg.keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .tcp_user_timeout(Duration::from_secs(15));
        let build = |size: usize, pg: &tokio_postgres::Config| {
            let manager = Manager::from_config(
                pg.clone(),
                NoTls,
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            );
            Pool::builder(manager)
                .max_size(size)
                .runtime(Runtime::Tokio1)
                .timeouts(Timeouts {
                    wait: Some(POOL_WAIT),
                    create: Some(POOL_WAIT),
                    recycle: Some(POOL_WAIT),
                })
                .build()
                .map_err(unavailable)
        };
        // The writers' connections are their own: reads and exports, however slow, never
        // make a write wait for a connection.
        let pool = build(config.pool_size.max(2), &pg)?;
        // The writers run a few statements over and over, on arrays whose lengths vary:
        // planned once, not at every batch (a custom plan costs more than the execution).
        let mut writer_pg = pg.clone();
        writer_pg.options("-c plan_cache_mode=force_generic_plan");
        let write_pool = build(WRITERS + 1, &writer_pg)?; // and one for the probe and the purge
        {
            let mut client = pool.get().await.map_err(unavailable)?;
            schema::migrate(&mut client).await.map_err(unavailable)?;
        }
        let suppression = {
            let client = pool.get().await.map_err(unavailable)?;
            trackd_core::privacy::SuppressionKey::new(&secret(&client).await?)
        };
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let ready = Arc::new(AtomicBool::new(true));
        let metrics = StoreMetrics::default();
        let live_feed = LiveFeed::default();
        let live_wanted_until = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let writers = Arc::new(Writers {
            pool: write_pool,
            jobs: tokio::sync::Mutex::new(rx),
            window_micros: i64::try_from(config.dedup_window.as_micros()).unwrap_or(i64::MAX),
            message_window_micros: i64::try_from(config.message_id_window.as_micros())
                .unwrap_or(i64::MAX),
            dedup_clock: config.dedup_clock,
            shard: random_shard(),
            ready: ready.clone(),
            metrics: metrics.clone(),
            suppression: suppression.clone(),
            live_wanted_until: live_wanted_until.clone(),
        });
        let (tasks, mut background) = spawn_writers(writers)?;
        background.extend([
            tokio::spawn(live::listen(pg, live_feed.clone(), live_wanted_until)),
            tokio::spawn(live::announce(pool.clone(), live_feed.clone())),
        ]);
        Ok(PostgresStore {
            suppression,
            pool,
            jobs: tx,
            tasks: Mutex::new(tasks),
            background,
            ready,
            clock: config.clock,
            metrics,
            exporting: Arc::new(tokio::sync::Semaphore::new(4)),
            live: live_feed,
        })
    }

    /// Queues a write without waiting for room: a full queue is [`StoreError::Overloaded`].
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
                Err(mpsc::error::TrySendError::Full(_)) => return Err(StoreError::Overloaded),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err(StoreError::unavailable(Cause("writers stopped")))
                }
            }
            answer
                .await
                .map_err(|_| StoreError::unavailable(Cause("writers stopped")))?
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(unavailable)
    }
}

/// Starts the writers, and the write probe and the purge, on a runtime of their own on a
/// thread of their own, where their connections are driven too: a batch's round trips to
/// the database are answered when they arrive, not after the HTTP work queued on the
/// server's worker threads (`bench/ingest_pg.sh`: fewer waits, more of the idle CPU used).
/// Returns the writers' tasks and the background ones; the thread ends once every writer
/// has (the queue closed and drained).
#[allow(clippy::type_complexity)] // the two kinds of task, each a list of handles
fn spawn_writers(
    writers: Arc<Writers>,
) -> Result<(Vec<JoinHandle<()>>, Vec<JoinHandle<()>>), StoreError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(unavailable)?;
    let mut finished = Vec::with_capacity(WRITERS);
    let tasks = (0..WRITERS)
        .map(|i| {
            let (done, finish) = oneshot::channel::<()>();
            finished.push(finish);
            let writers = writers.clone();
            runtime.spawn(async move {
                writers.run(i as i32).await;
                let _ = done.send(());
            })
        })
        .collect();
    let background = vec![
        runtime.spawn(writers.clone().probe()),
        runtime.spawn(writers.purge()),
    ];
    std::thread::Builder::new()
        .name("trackd-pg-writers".into())
        .spawn(move || {
            runtime.block_on(async move {
                for finish in finished {
                    let _ = finish.await;
                }
            })
        })
        .map_err(unavailable)?;
    Ok((tasks, background))
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        for task in &self.background {
            task.abort();
        }
    }
}

async fn read_version(client: &impl tokio_postgres::GenericClient) -> Result<u64, StoreError> {
    let row = client
        .query_one(
            "SELECT value FROM meta WHERE key = 'credentials_version'",
            &[],
        )
        .await
        .map_err(unavailable)?;
    Ok(row.get::<_, i64>(0) as u64)
}

async fn bump_credentials_version(tx: &tokio_postgres::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE meta SET value = value + 1 WHERE key = 'credentials_version'",
        &[],
    )
    .await
    .map_err(unavailable)?;
    Ok(())
}

impl Store for PostgresStore {
    fn destinations(
        &self,
        project: Option<ProjectId>,
        with_backlog: bool,
    ) -> StoreFuture<'_, Vec<Destination>> {
        Box::pin(async move {
            let client = self.client().await?;
            outbox::destinations(&client, project, with_backlog)
                .await
                .map_err(unavailable)
        })
    }

    fn add_destination(
        &self,
        project: ProjectId,
        spec: DestinationSpec,
        secret: String,
    ) -> StoreFuture<'_, Destination> {
        let now = self.clock.now().as_micros();
        Box::pin(async move {
            let mut client = self.client().await?;
            outbox::add_destination(&mut client, now, project, &spec, &secret).await
        })
    }

    fn change_destination(
        &self,
        project: ProjectId,
        name: &str,
        change: DestinationChange,
    ) -> StoreFuture<'_, ()> {
        let name = name.to_owned();
        Box::pin(async move {
            let mut client = self.client().await?;
            outbox::change_destination(&mut client, project, &name, &change).await
        })
    }

    fn outbox(
        &self,
        project: ProjectId,
        after: i64,
        limit: usize,
    ) -> StoreFuture<'_, Vec<OutboxItem>> {
        Box::pin(async move {
            let client = self.client().await?;
            outbox::items(&client, project, after, limit)
                .await
                .map_err(unavailable)
        })
    }

    fn redrive_items(&self, destination: i64, limit: usize) -> StoreFuture<'_, Vec<OutboxItem>> {
        Box::pin(async move {
            let client = self.client().await?;
            outbox::redrive_items(&client, destination, limit)
                .await
                .map_err(unavailable)
        })
    }

    fn dead_letters(
        &self,
        project: ProjectId,
        destination: i64,
        after: i64,
        limit: usize,
    ) -> StoreFuture<'_, Vec<trackd_core::delivery::DeadLetter>> {
        Box::pin(async move {
            let client = self.client().await?;
            outbox::dead_letters(&client, project, destination, after, limit)
                .await
                .map_err(unavailable)
        })
    }

    fn report_delivery(&self, report: DeliveryReport) -> StoreFuture<'_, bool> {
        let now = self.clock.now().as_micros();
        Box::pin(async move {
            let mut client = self.client().await?;
            outbox::report(&mut client, &report, now)
                .await
                .map_err(unavailable)
        })
    }

    fn lease(&self, destination: i64, node: &str, ttl_ms: i64) -> StoreFuture<'_, bool> {
        let node = node.to_owned();
        Box::pin(async move {
            let client = self.client().await?;
            outbox::lease(&client, destination, &node, ttl_ms)
                .await
                .map_err(unavailable)
        })
    }

    fn prune_outbox(&self, keep_micros: i64) -> StoreFuture<'_, u64> {
        let cutoff = self.clock.now().as_micros().saturating_sub(keep_micros);
        Box::pin(async move {
            let client = self.client().await?;
            outbox::prune(&client, cutoff).await.map_err(unavailable)
        })
    }

    fn metrics(&self) -> StoreMetrics {
        self.metrics.clone()
    }

    fn live(&self) -> &LiveFeed {
        &self.live
    }

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
        Box::pin(async move {
            let client = self.client().await?;
            read::user(&**client, project, &key)
                .await
                .map_err(unavailable)
        })
    }

    fn events(&self, query: EventQuery) -> StoreFuture<'_, Option<EventPage>> {
        Box::pin(async move {
            let client = self.client().await?;
            read::events(&**client, &query).await.map_err(unavailable)
        })
    }

    fn export_chunk(
        &self,
        query: ExportQuery,
        after: Option<ExportKey>,
    ) -> StoreFuture<'_, ExportChunk> {
        Box::pin(async move {
            let _permit = self
                .exporting
                .clone()
                .acquire_owned()
                .await
                .map_err(unavailable)?;
            let client = self.client().await?;
            let after = after.unwrap_or_else(|| query.start());
            read::export_chunk(&**client, &query, after)
                .await
                .map_err(unavailable)
        })
    }

    fn stats(&self, query: StatsQuery) -> StoreFuture<'_, Stats> {
        Box::pin(async move {
            let client = self.client().await?;
            read::stats(&**client, &query)
                .await
                .map_err(unavailable)?
                .ok_or_else(|| StoreError::Invalid(query.too_many()))
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
        Box::pin(async move {
            let mut client = self.client().await?;
            // One snapshot: the version and the set it describes.
            let tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .start()
                .await
                .map_err(unavailable)?;
            let version = read_version(&*tx).await?;
            let rows = tx
                .query("SELECT hash, project_id, kind FROM credentials", &[])
                .await
                .map_err(unavailable)?;
            tx.commit().await.map_err(unavailable)?;
            let out = rows
                .iter()
                .filter_map(|r| {
                    Credential::from_stored(r.get::<_, &[u8]>(0), r.get(1), r.get::<_, &str>(2))
                })
                .collect();
            Ok((version, out))
        })
    }

    fn credentials_version(&self) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let client = self.client().await?;
            read_version(&**client).await
        })
    }

    fn cursor_key(&self) -> StoreFuture<'_, [u8; 32]> {
        Box::pin(async move { secret(&self.client().await?).await })
    }

    fn suppress(
        &self,
        project: ProjectId,
        key: String,
        actor: trackd_core::privacy::Actor,
    ) -> StoreFuture<'_, trackd_core::privacy::Suppressed> {
        let now = self.clock.now().as_micros();
        Box::pin(async move {
            let mut client = self.client().await?;
            privacy::suppress(&mut client, &self.suppression, project, &key, &actor, now).await
        })
    }

    fn unsuppress(
        &self,
        project: ProjectId,
        key: String,
        actor: trackd_core::privacy::Actor,
    ) -> StoreFuture<'_, bool> {
        let now = self.clock.now().as_micros();
        Box::pin(async move {
            let mut client = self.client().await?;
            privacy::unsuppress(&mut client, &self.suppression, project, &key, &actor, now).await
        })
    }

    fn set_retention(&self, project: ProjectId, retention: Option<i64>) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let client = self.client().await?;
            let n = client
                .execute(
                    "UPDATE projects SET retention = $2 WHERE id = $1",
                    &[&project.get(), &retention],
                )
                .await
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
        Box::pin(async move {
            let mut client = self.client().await?;
            privacy::expire(&mut client, project, cutoff.as_micros(), limit)
                .await
                .map_err(unavailable)
        })
    }

    fn record_audit(&self, act: trackd_core::privacy::AuditAct) -> StoreFuture<'_, ()> {
        let now = self.clock.now().as_micros();
        Box::pin(async move {
            let client = self.client().await?;
            privacy::record(&client, &act, now)
                .await
                .map_err(unavailable)
        })
    }

    fn audit(
        &self,
        query: trackd_core::privacy::AuditQuery,
    ) -> StoreFuture<'_, Vec<trackd_core::privacy::AuditEntry>> {
        Box::pin(async move {
            let client = self.client().await?;
            privacy::page(&client, &query).await.map_err(unavailable)
        })
    }

    fn create_project(&self, name: &str) -> StoreFuture<'_, Project> {
        let name = name.to_owned();
        let now = self.clock.now().as_micros();
        Box::pin(async move {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "INSERT INTO projects (name, created_at) VALUES ($1, $2) \
                     ON CONFLICT (name) DO NOTHING RETURNING id",
                    &[&name, &now],
                )
                .await
                .map_err(unavailable)?;
            match row {
                Some(row) => Ok(Project {
                    id: ProjectId::new(row.get(0)),
                    name,
                    retention: None,
                }),
                None => Err(StoreError::Conflict(format!("project {name}"))),
            }
        })
    }

    fn projects(&self) -> StoreFuture<'_, Vec<Project>> {
        Box::pin(async move {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT id, name, retention FROM projects ORDER BY name COLLATE \"C\"",
                    &[],
                )
                .await
                .map_err(unavailable)?;
            Ok(rows
                .iter()
                .map(|r| Project {
                    id: ProjectId::new(r.get(0)),
                    name: r.get(1),
                    retention: r.get(2),
                })
                .collect())
        })
    }

    fn project(&self, name: &str) -> StoreFuture<'_, Project> {
        let name = name.to_owned();
        Box::pin(async move {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "SELECT id, name, retention FROM projects WHERE name = $1",
                    &[&name],
                )
                .await
                .map_err(unavailable)?;
            row.map(|r| Project {
                id: ProjectId::new(r.get(0)),
                name: r.get(1),
                retention: r.get(2),
            })
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
        let now = self.clock.now().as_micros();
        Box::pin(async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(unavailable)?;
            let inserted = tx
                .execute(
                    "INSERT INTO credentials (hash, project_id, kind, created_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (hash) DO NOTHING",
                    &[&&hash.as_bytes()[..], &project.get(), &kind.as_str(), &now],
                )
                .await
                .map_err(unavailable)?;
            if inserted == 0 {
                return Err(StoreError::Conflict(format!(
                    "credential {}",
                    hash.fingerprint()
                )));
            }
            bump_credentials_version(&tx).await?;
            tx.commit().await.map_err(unavailable)
        })
    }

    fn revoke_credential(
        &self,
        project: ProjectId,
        kind: CredentialKind,
        token: &Token,
    ) -> StoreFuture<'_, ()> {
        let hash = token.hash();
        Box::pin(async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(unavailable)?;
            let deleted = tx
                .execute(
                    "DELETE FROM credentials WHERE hash = $1 AND project_id = $2 AND kind = $3",
                    &[&&hash.as_bytes()[..], &project.get(), &kind.as_str()],
                )
                .await
                .map_err(unavailable)?;
            if deleted == 0 {
                return Err(StoreError::NotFound(format!(
                    "{} credential {}",
                    kind.as_str(),
                    hash.fingerprint()
                )));
            }
            bump_credentials_version(&tx).await?;
            tx.commit().await.map_err(unavailable)
        })
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn shutdown(&self) -> StoreFuture<'_, ()> {
        let tasks = self
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        let jobs = self.jobs.clone();
        Box::pin(async move {
            if tasks.is_empty() {
                return Ok(());
            }
            // Waits for room: everything queued before it is committed first.
            let _ = jobs.send(Job::Shutdown).await;
            for task in tasks {
                task.await.map_err(unavailable)?;
            }
            self.pool.close();
            Ok(())
        })
    }
}
