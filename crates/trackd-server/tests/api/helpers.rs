//! `TestApp`: a real trackd on port 0 with a fresh store and a manual clock: a data
//! directory in the `api` test binary (SQLite), a database of its own in `api_postgres`
//! (PostgreSQL at `TRACKD_TEST_DATABASE_URL`; without it each test of that binary prints a
//! SKIPPED notice and returns, or fails when `TRACKD_TEST_REQUIRE_POSTGRES=1`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::Value;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use trackd_core::time::ManualClock;
use trackd_core::{DynStore, Timestamp};
use trackd_server::api::Limits;
use trackd_server::cli::create_project;
use trackd_server::App;
use trackd_store::{PgConfig, PostgresStore, SqliteConfig, SqliteStore};

/// 2026-11-26T12:00:00Z.
pub const START: Timestamp = Timestamp::from_micros(1_795_694_400_000_000);

/// How a test server is configured.
#[derive(Clone)]
pub struct TestConfig {
    pub dedup_window: Duration,
    pub message_id_window: Duration,
    pub limits: Limits,
    pub queue_capacity: usize,
    /// Where the data directory is made (a tmpfs); the system's temp dir when `None`.
    pub parent_dir: Option<std::path::PathBuf>,
    /// SQLite even in the PostgreSQL suite (the parity test runs one of each).
    pub force_sqlite: bool,
    /// Delivery to destinations: quick retries and polls, so tests run in seconds.
    pub delivery: trackd_server::delivery::DeliveryConfig,
}

impl Default for TestConfig {
    fn default() -> Self {
        TestConfig {
            dedup_window: Duration::from_secs(180),
            message_id_window: Duration::from_secs(86_400),
            limits: Limits::default(),
            queue_capacity: 50_000,
            parent_dir: None,
            force_sqlite: false,
            delivery: trackd_server::delivery::DeliveryConfig {
                timeout: Duration::from_secs(2),
                retry_base: Duration::from_millis(100),
                poll: Duration::from_millis(50),
                ..Default::default()
            },
        }
    }
}

pub struct TestApp {
    pub addr: String,
    pub client: reqwest::Client,
    pub clock: Arc<ManualClock>,
    pub token: String,
    pub secret: String,
    pub config: TestConfig,
    /// The running server's store, for setting up what the API cannot (a second project).
    pub store: Option<DynStore>,
    dir: TempDir,
    /// The test's own database in the PostgreSQL suite.
    pub pg: Option<PgDatabase>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

/// An answer, read whole.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("answer body is JSON")
    }

    /// Asserts an error answer: this status, and the JSON body `{"status", "message"}`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, message: &str) {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert_eq!(
            self.json(),
            serde_json::json!({"status": status, "message": message})
        );
        assert_eq!(
            self.headers
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
    }

    /// Asserts Vero's success answer, and whether it was a duplicate.
    #[track_caller]
    pub fn assert_success(&self, duplicate: bool) {
        assert_eq!(self.status, 200, "body: {}", self.body);
        assert_eq!(self.body, r#"{"status":200,"message":"Success."}"#);
        assert_eq!(
            self.headers.get("trackd-duplicate").is_some(),
            duplicate,
            "trackd-duplicate header"
        );
    }
}

/// Whether this test binary runs the suite against PostgreSQL.
pub fn postgres() -> bool {
    env!("CARGO_CRATE_NAME") == "api_postgres"
}

/// Whether the environment variable `name` is `1`: a capability a test would otherwise
/// skip without is required, and its absence fails the test.
pub fn required(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| v == "1")
}

/// Says that the running test is skipped and why, where `cargo test` shows it: straight to
/// the process's stderr (libtest captures `println!` and `eprintln!` of passing tests).
pub fn skip_notice(why: &str) {
    use std::io::Write;
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// The PostgreSQL server the PostgreSQL suite makes its databases on, if one is named.
fn database_url() -> Option<String> {
    std::env::var("TRACKD_TEST_DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
}

/// True when the running test must skip: in the PostgreSQL suite without
/// `TRACKD_TEST_DATABASE_URL` (after a SKIPPED notice); a failure instead when
/// `TRACKD_TEST_REQUIRE_POSTGRES=1`. Always false in the SQLite suite. See
/// [`skip_without_postgres!`].
pub fn skip_without_postgres() -> bool {
    if !postgres() || database_url().is_some() {
        return false;
    }
    assert!(
        !required("TRACKD_TEST_REQUIRE_POSTGRES"),
        "TRACKD_TEST_REQUIRE_POSTGRES=1 but TRACKD_TEST_DATABASE_URL is not set: the \
         PostgreSQL suite needs a server where it may create databases \
         (postgres://postgres@127.0.0.1:5432/postgres on the development machines)"
    );
    skip_notice("TRACKD_TEST_DATABASE_URL is not set, so the PostgreSQL suite cannot run");
    true
}

/// The first line of every test that needs PostgreSQL in the PostgreSQL suite: returns from
/// the test, after a visible SKIPPED notice, when no server is configured (a failure with
/// `TRACKD_TEST_REQUIRE_POSTGRES=1`). Nothing in the SQLite suite.
#[macro_export]
macro_rules! skip_without_postgres {
    () => {
        if $crate::helpers::skip_without_postgres() {
            return;
        }
    };
}

/// A PostgreSQL URL with its password hidden, for messages.
fn without_password(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((user, host)) => {
                let user = user.split(':').next().unwrap_or("");
                format!("{scheme}://{user}@{host}")
            }
            None => url.to_owned(),
        },
        None => "(not a URL)".to_owned(),
    }
}

/// A PostgreSQL database of one test's own, dropped with it.
pub struct PgDatabase {
    admin_url: String,
    name: String,
    /// Where the test's store connects.
    pub url: String,
}

impl PgDatabase {
    /// Creates a fresh database on the server at `TRACKD_TEST_DATABASE_URL`. A test that
    /// gets here without the variable lacks its `skip_without_postgres!()` line.
    pub async fn create() -> PgDatabase {
        let Some(admin_url) = database_url() else {
            panic!(
                "TRACKD_TEST_DATABASE_URL is not set: this test needs PostgreSQL and lacks \
                 `crate::skip_without_postgres!();` as its first line"
            );
        };
        let name = format!("trackd_test_{:016x}", rand::random::<u64>());
        pg_execute(&admin_url, &format!("CREATE DATABASE {name}")).await;
        let (base, query) = admin_url.split_once('?').unwrap_or((&admin_url, ""));
        let (server, _) = base
            .rsplit_once('/')
            .expect("a postgres:// URL with a database");
        let mut url = format!("{server}/{name}");
        if !query.is_empty() {
            url = format!("{url}?{query}");
        }
        PgDatabase {
            admin_url,
            name,
            url,
        }
    }

    /// Runs `f` with a connection to this database, from sync code (its own thread and
    /// runtime, so it can be called anywhere in a test).
    pub fn with_client<T: Send>(
        &self,
        f: impl FnOnce(&tokio_postgres::Client) -> futures::future::BoxFuture<'_, T> + Send,
    ) -> T {
        let url = self.url.clone();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    runtime.block_on(async move {
                        let (client, connection) =
                            tokio_postgres::connect(&url, tokio_postgres::NoTls)
                                .await
                                .expect("test database reachable");
                        tokio::spawn(connection);
                        f(&client).await
                    })
                })
                .join()
                .expect("query thread")
        })
    }
}

async fn pg_execute(url: &str, sql: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            let cause = std::error::Error::source(&e)
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            panic!(
                "PostgreSQL at TRACKD_TEST_DATABASE_URL ({}) is unreachable: {e}{cause}",
                without_password(url)
            )
        });
    tokio::spawn(connection);
    client.batch_execute(sql).await.expect(sql);
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (url, sql) = (
            self.admin_url.clone(),
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(pg_execute(&url, &sql));
        })
        .join();
    }
}

async fn open_store(
    dir: &Path,
    pg: Option<&PgDatabase>,
    config: &TestConfig,
    clock: Arc<ManualClock>,
) -> DynStore {
    if let Some(pg) = pg {
        return Arc::new(
            PostgresStore::open(PgConfig {
                url: pg.url.clone(),
                dedup_window: config.dedup_window,
                message_id_window: config.message_id_window,
                queue_capacity: config.queue_capacity,
                clock: clock.clone(),
                dedup_clock: Some(clock),
                pool_size: 8,
            })
            .await
            .expect("store opens"),
        );
    }
    Arc::new(
        SqliteStore::open(SqliteConfig {
            wal_checkpoint_pages: trackd_store::sqlite::DEFAULT_WAL_CHECKPOINT_PAGES,
            writer_cache_kib: trackd_store::sqlite::DEFAULT_CACHE_KIB,
            data_dir: dir.to_path_buf(),
            dedup_window: config.dedup_window,
            message_id_window: config.message_id_window,
            queue_capacity: config.queue_capacity,
            clock,
        })
        .expect("store opens"),
    )
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(TestConfig::default()).await
    }

    /// A server with these request limits, the rest default.
    pub async fn spawn_with_limits(limits: Limits) -> TestApp {
        Self::spawn_with(TestConfig {
            limits,
            ..TestConfig::default()
        })
        .await
    }

    /// A raw TCP connection to the server, for clients no HTTP library would imitate.
    pub async fn raw_connection(&self) -> tokio::net::TcpStream {
        tokio::net::TcpStream::connect(self.addr.trim_start_matches("http://"))
            .await
            .expect("connect")
    }

    pub async fn spawn_with(config: TestConfig) -> TestApp {
        let dir = match &config.parent_dir {
            Some(parent) => tempfile::tempdir_in(parent),
            None => tempfile::tempdir(),
        }
        .expect("temp dir");
        let clock = Arc::new(ManualClock::new(START));
        let pg = if postgres() && !config.force_sqlite {
            Some(PgDatabase::create().await)
        } else {
            None
        };
        let store = open_store(dir.path(), pg.as_ref(), &config, clock.clone()).await;
        let (_, token, secret) = create_project(&store, "test").await.expect("project");
        let mut app = TestApp {
            addr: String::new(),
            client: reqwest::Client::new(),
            clock,
            token: token.expose().to_owned(),
            secret: secret.expose().to_owned(),
            config,
            store: None,
            dir,
            pg,
            stop: None,
            server: None,
        };
        app.start(store).await;
        app
    }

    async fn start(&mut self, store: DynStore) {
        self.store = Some(store.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let app = App::build(listener, store, self.clock.clone(), self.config.limits)
            .await
            .expect("app builds")
            .with_delivery(self.config.delivery.clone());
        self.addr = format!("http://{}", app.local_addr().expect("addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        self.stop = Some(stop);
        self.server = Some(tokio::spawn(async move {
            app.run(async {
                let _ = stopped.await;
            })
            .await
            .expect("server runs");
        }));
    }

    /// Stops the server gracefully (everything committed) and starts a new one on the same
    /// data directory, as a restart would.
    pub async fn restart(&mut self) {
        self.stop().await;
        let store = open_store(
            self.dir.path(),
            self.pg.as_ref(),
            &self.config,
            self.clock.clone(),
        )
        .await;
        self.start(store).await;
    }

    /// SQLite: none of `needles` is in any file of the data directory, once every WAL page
    /// is checkpointed into the database (secure_delete overwrote freed bytes).
    pub async fn assert_not_in_files(&self, needles: &[&[u8]]) {
        let app = self;
        // SQLite: secure_delete overwrote the freed bytes, so after a checkpoint the
        // user's data is in neither file.
        // Copy every WAL page into the database and empty the WAL, then scan both files.
        // The server's background checkpointer may hold the checkpoint lock for a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (busy, _, _): (i64, i64, i64) = app
                .db()
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .expect("checkpoint");
            if busy == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "checkpoint never completed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let dir = app.db().path().map(std::path::PathBuf::from).expect("path");
        let dir = dir.parent().expect("dir").to_path_buf();
        let mut scanned = 0;
        for entry in std::fs::read_dir(&dir).expect("dir") {
            let path = entry.expect("entry").path();
            let bytes = std::fs::read(&path).expect("read");
            scanned += bytes.len();
            for needle in needles {
                let at = bytes.windows(needle.len()).position(|w| w == *needle);
                assert!(
                    at.is_none(),
                    "{} still in {} at {at:?}: {:?}",
                    String::from_utf8_lossy(needle),
                    path.display(),
                    String::from_utf8_lossy(
                        &bytes[at.unwrap_or(0).saturating_sub(200)
                            ..(at.unwrap_or(0) + 100).min(bytes.len())]
                    )
                );
            }
        }
        assert!(scanned > 0);
    }

    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task");
        }
    }

    /// Creates another project; returns its (tracking token, secret key).
    pub async fn add_project(&self, name: &str) -> (String, String) {
        let store = self.store.as_ref().expect("running");
        let (_, token, secret) = create_project(store, name).await.expect("project");
        (token.expose().to_owned(), secret.expose().to_owned())
    }

    /// GETs a read route with the secret key as a bearer token.
    pub async fn read(&self, path_and_query: impl Into<String>) -> Answer {
        self.read_as(&self.secret, path_and_query).await
    }

    /// GETs a read route with `key` as a bearer token.
    pub async fn read_as(&self, key: &str, path_and_query: impl Into<String>) -> Answer {
        let url = self.url(&path_and_query.into());
        self.send(self.client.get(url).bearer_auth(key)).await
    }

    /// GETs a read route that must answer 200 with JSON, and returns the JSON.
    pub async fn read_json(&self, path_and_query: &str) -> Value {
        let answer = self.read(path_and_query).await;
        assert_eq!(answer.status, 200, "{path_and_query}: {}", answer.body);
        answer.json()
    }

    /// The profile of the user `id` from `GET /api/v2/users/{id}`; `None` when the answer
    /// is the 404 for an unknown user.
    pub async fn profile(&self, id: &str) -> Option<Value> {
        let path = format!(
            "/api/v2/users/{}",
            percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC)
        );
        let answer = self.read(&path).await;
        if answer.status == 404 {
            answer.assert_error(404, "id: no such user");
            return None;
        }
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        Some(answer.json())
    }

    /// Every stored event of the project from `GET /api/v2/events/export` (oldest first by
    /// receive time).
    pub async fn exported(&self) -> Vec<Value> {
        let answer = self.read("/api/v2/events/export").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer
            .body
            .lines()
            .map(|line| serde_json::from_str(line).expect("an export line is JSON"))
            .collect()
    }

    /// The project's running totals of accepted and duplicate events, from
    /// `GET /api/v2/stats/events`.
    pub async fn totals(&self) -> (i64, i64) {
        let stats = self.read_json("/api/v2/stats/events").await;
        let count = |name: &str| stats["totals"][name].as_i64().expect("a count");
        (count("accepted"), count("duplicates"))
    }

    /// Runs SQL on the store from outside the server: `sqlite` on the SQLite file, `postgres`
    /// on the test's PostgreSQL database.
    pub fn execute(&self, sqlite: &str, postgres: &str) {
        if let Some(pg) = &self.pg {
            let sql = postgres.to_owned();
            return pg.with_client(|c| {
                Box::pin(async move { c.batch_execute(&sql).await.expect(&sql) })
            });
        }
        self.db().execute_batch(sqlite).expect(sqlite);
    }

    /// Holds the store's write lock from another connection until [`WriteBlock::release`]:
    /// SQLite's (`BEGIN IMMEDIATE`), or on PostgreSQL an exclusive lock on the events table
    /// (reads go on).
    pub async fn block_writes(&self) -> WriteBlock {
        if let Some(pg) = &self.pg {
            let (client, connection) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls)
                .await
                .expect("test database reachable");
            tokio::spawn(connection);
            client
                .batch_execute("BEGIN; LOCK TABLE events IN EXCLUSIVE MODE")
                .await
                .expect("lock");
            return WriteBlock::Postgres(client);
        }
        let db = self.db();
        db.execute_batch("BEGIN IMMEDIATE").expect("lock");
        WriteBlock::Sqlite(db)
    }

    /// A second store on the same data (the same SQLite file, the same PostgreSQL
    /// database), as another process beside the server would open it.
    pub async fn another_store(&self) -> DynStore {
        open_store(
            self.dir.path(),
            self.pg.as_ref(),
            &self.config,
            self.clock.clone(),
        )
        .await
    }

    /// Revokes the project's secret key as the CLI does (through the store), then waits
    /// until the server, which drops it from its cache within a second, refuses it.
    pub async fn revoke_secret(&self) {
        let store = self.store.as_ref().expect("running");
        let project = store.project("test").await.expect("project").id;
        store
            .revoke_credential(
                project,
                trackd_core::CredentialKind::Secret,
                &trackd_core::Token::presented(&self.secret),
            )
            .await
            .expect("revoked");
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while self.read("/api/v2/events?limit=1").await.status != 401 {
            assert!(std::time::Instant::now() < deadline, "the key still reads");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let answer = self.send(self.client.get(self.url("/metrics"))).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.body
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.addr, path)
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await.expect("body read");
        Answer {
            status,
            headers,
            body,
        }
    }

    /// POSTs a raw JSON body to `events/track` with the token in the query.
    pub async fn track_raw(&self, body: impl Into<String>) -> Answer {
        let url = self.url(&format!("/api/v2/events/track?auth_token={}", self.token));
        self.send(
            self.client
                .post(url)
                .header("content-type", "application/json")
                .body(body.into()),
        )
        .await
    }

    /// Calls a Vero route (`users/edit`, …) with a JSON body and the token in the query.
    pub async fn call(&self, method: &str, route: &str, body: &Value) -> Answer {
        let url = self.url(&format!("/api/v2/{route}?auth_token={}", self.token));
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        self.send(
            self.client
                .request(method, url)
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    /// The stored profile of the user whose key is `key`.
    pub fn user(&self, key: &str) -> Option<UserRow> {
        use rusqlite::OptionalExtension;
        const SQL: &str = "SELECT id, user_id, email, phone_number, channels, properties, tags, \
             subscribed, first_seen, last_seen FROM users WHERE user_key = $1";
        let json = |text: String| -> Value { serde_json::from_str(&text).expect("stored JSON") };
        if let Some(pg) = &self.pg {
            let key = key.to_owned();
            return pg.with_client(|c| {
                Box::pin(async move {
                    c.query_opt(SQL, &[&key])
                        .await
                        .expect("user")
                        .map(|r| UserRow {
                            rowid: r.get(0),
                            id: r.get(1),
                            email: r.get(2),
                            phone_number: r.get(3),
                            channels: json(r.get(4)),
                            properties: json(r.get(5)),
                            tags: json(r.get(6)),
                            subscribed: r.get(7),
                            first_seen: r.get(8),
                            last_seen: r.get(9),
                        })
                })
            });
        }
        self.db()
            .query_row(SQL, [key], |r| {
                Ok(UserRow {
                    rowid: r.get(0)?,
                    id: r.get(1)?,
                    email: r.get(2)?,
                    phone_number: r.get(3)?,
                    channels: json(r.get(4)?),
                    properties: json(r.get(5)?),
                    tags: json(r.get(6)?),
                    subscribed: r.get(7)?,
                    first_seen: r.get(8)?,
                    last_seen: r.get(9)?,
                })
            })
            .optional()
            .expect("query")
    }

    /// Tracks an event with the given token.
    pub async fn track_as(&self, token: &str, body: &Value) -> Answer {
        let url = self.url(&format!("/api/v2/events/track?auth_token={token}"));
        self.send(self.client.post(url).body(body.to_string()))
            .await
    }

    pub async fn track(&self, body: &Value) -> Answer {
        self.track_raw(body.to_string()).await
    }

    /// A read-only connection to the data directory's database.
    /// The SQLite database (SQLite-only tests; the PostgreSQL suite skips them).
    pub fn db(&self) -> rusqlite::Connection {
        assert!(
            self.pg.is_none(),
            "a SQLite-only test ran in the PostgreSQL suite"
        );
        rusqlite::Connection::open(self.dir.path().join("trackd.db")).expect("db opens")
    }

    pub fn count(&self, table: &str) -> i64 {
        self.scalar(&format!("SELECT count(*) FROM {table}"))
    }

    /// The one integer `sql` selects, from either store.
    pub fn scalar(&self, sql: &str) -> i64 {
        if let Some(pg) = &self.pg {
            let sql = sql.to_owned();
            return pg.with_client(|c| {
                Box::pin(async move { c.query_one(&sql, &[]).await.expect(&sql).get(0) })
            });
        }
        self.db().query_row(sql, [], |r| r.get(0)).expect(sql)
    }

    /// Every stored event as (user_id, event_name, event_key, data, source, created_at µs).
    pub fn events(&self) -> Vec<StoredEvent> {
        const SQL: &str = "SELECT u.user_key, u.email, e.event_name, e.event_key, e.data, \
             e.source, e.created_at, e.received_at FROM events e JOIN users u ON u.id = e.user_ref \
             ORDER BY e.id";
        if let Some(pg) = &self.pg {
            return pg.with_client(|c| {
                Box::pin(async move {
                    c.query(SQL, &[])
                        .await
                        .expect("events")
                        .iter()
                        .map(|r| StoredEvent {
                            user_key: r.get(0),
                            email: r.get(1),
                            name: r.get(2),
                            key: r.get(3),
                            data: r.get(4),
                            source: r.get(5),
                            created_at: r.get(6),
                            received_at: r.get(7),
                        })
                        .collect()
                })
            });
        }
        let db = self.db();
        let mut stmt = db.prepare(SQL).expect("prepare");
        stmt.query_map([], |r| {
            Ok(StoredEvent {
                user_key: r.get(0)?,
                email: r.get(1)?,
                name: r.get(2)?,
                key: r.get(3)?,
                data: r.get(4)?,
                source: r.get(5)?,
                created_at: r.get(6)?,
                received_at: r.get(7)?,
            })
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
    }
}

/// A write lock held from outside the server ([`TestApp::block_writes`]).
pub enum WriteBlock {
    Sqlite(rusqlite::Connection),
    Postgres(tokio_postgres::Client),
}

impl WriteBlock {
    /// Commits the holding transaction: the store's writes go on.
    pub async fn release(self) {
        match self {
            WriteBlock::Sqlite(db) => db.execute_batch("COMMIT").expect("unlock"),
            WriteBlock::Postgres(client) => client.batch_execute("COMMIT").await.expect("unlock"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct UserRow {
    pub rowid: i64,
    pub id: Option<String>,
    pub email: Option<String>,
    pub phone_number: Option<String>,
    pub channels: Value,
    pub properties: Value,
    pub tags: Value,
    pub subscribed: bool,
    pub first_seen: i64,
    pub last_seen: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub user_key: String,
    pub email: Option<String>,
    pub name: String,
    pub key: String,
    pub data: String,
    pub source: Option<String>,
    pub created_at: i64,
    pub received_at: i64,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A small valid track body for user `user`.
pub fn event(user: &str, n: i64) -> Value {
    serde_json::json!({
        "identity": {"id": user, "email": format!("{user}@example.com")},
        "event_name": "Viewed product",
        "data": {"product_name": "Red T-shirt", "n": n},
    })
}

/// The `trackd` binary built for these tests.
pub fn trackd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_trackd")
}

/// A `trackd serve` child process on port 0, for what only a real process shows: kill -9,
/// signals, stdout and stderr.
pub struct ChildServer {
    pub process: std::process::Child,
    pub addr: String,
    /// The bootstrap lines printed on stdout (first start only).
    pub stdout: Arc<std::sync::Mutex<String>>,
    /// Everything logged so far.
    pub stderr: Arc<std::sync::Mutex<String>>,
}

impl ChildServer {
    pub fn spawn(data_dir: &Path, envs: &[(&str, &str)]) -> ChildServer {
        Self::spawn_bin(Path::new(trackd_bin()), data_dir, envs)
    }

    /// [`ChildServer::spawn`] with another build of trackd.
    pub fn spawn_bin(bin: &Path, data_dir: &Path, envs: &[(&str, &str)]) -> ChildServer {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let mut process = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("trackd starts");
        let stdout = Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        let out = process.stdout.take().expect("stdout");
        let sink = stdout.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let mut s = sink.lock().expect("lock");
                s.push_str(&line);
                s.push('\n');
            }
        });
        let err = process.stderr.take().expect("stderr");
        let sink = stderr.clone();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("addr=").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                    let _ = addr_tx.send(addr);
                }
                let mut s = sink.lock().expect("lock");
                s.push_str(&line);
                s.push('\n');
            }
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("trackd logs its address");
        ChildServer {
            process,
            addr: format!("http://{addr}"),
            stdout,
            stderr,
        }
    }

    /// The value printed after `label:` on stdout at first start. Stdout is read on its
    /// own thread, which may lag behind the log line that gave the address: wait for it.
    pub fn printed(&self, label: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.stdout.lock().expect("lock").clone();
            let found = out
                .lines()
                .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_owned()));
            match found {
                Some(value) => return value,
                None if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                None => panic!("no {label} in stdout: {out}"),
            }
        }
    }

    pub fn kill9(&mut self) {
        self.process.kill().expect("SIGKILL");
        self.process.wait().expect("reaped");
    }

    pub fn sigterm(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.process.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// A data dir with project `default` whose tracking token `TOKEN_abc123` was imported with
/// `trackd token add`, as the reference requests expect.
pub fn data_dir_with_vero_token() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path().to_str().expect("utf-8 path");
    let (ok, _, stderr) = run_cli(&["project", "create", "default", "--data-dir", d]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = run_cli(&[
        "token",
        "add",
        "--project",
        "default",
        "--value",
        "TOKEN_abc123",
        "--data-dir",
        d,
    ]);
    assert!(ok, "{stderr}");
    dir
}

/// Runs the `trackd` binary with `args`, returning (success, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(trackd_bin())
        .args(args)
        .output()
        .expect("trackd runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A JSON body in Rails bracket notation (`data[a]=1`, `add[]=t`); empty objects and lists
/// have no form and are left out.
pub fn bracket_form(body: &Value) -> String {
    fn walk(name: &str, value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    walk(&format!("{name}[{k}]"), v, out);
                }
            }
            Value::Array(items) => {
                for v in items {
                    walk(&format!("{name}[]"), v, out);
                }
            }
            Value::String(s) => out.push(format!("{}={}", enc(name), enc(s))),
            other => out.push(format!("{}={}", enc(name), enc(&other.to_string()))),
        }
    }
    fn enc(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
    let mut out = Vec::new();
    for (k, v) in body.as_object().expect("object") {
        walk(k, v, &mut out);
    }
    out.join("&")
}

/// The body with every object and list field sent as a string holding its JSON.
pub fn json_string_fields(body: &Value) -> Value {
    let mut body = body.clone();
    for (_, v) in body.as_object_mut().expect("object").iter_mut() {
        if v.is_object() || v.is_array() {
            *v = Value::String(v.to_string());
        }
    }
    body
}

/// The body as `multipart/form-data`: strings as they are, everything else as JSON text.
pub fn multipart(body: &Value, boundary: &str) -> Vec<u8> {
    let mut out = String::new();
    for (k, v) in body.as_object().expect("object") {
        let text = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        out.push_str(&format!(
            "--{boundary}\r\ncontent-disposition: form-data; name=\"{k}\"\r\n\r\n{text}\r\n"
        ));
    }
    out.push_str(&format!("--{boundary}--\r\n"));
    out.into_bytes()
}

/// Asserts every answer is a 200, showing the others when not.
#[track_caller]
pub fn assert_all_200(answers: &[Answer]) {
    let others: Vec<_> = answers
        .iter()
        .filter(|a| a.status != 200)
        .map(|a| (a.status, &a.body))
        .collect();
    assert!(others.is_empty(), "{others:?}");
}
