//! The `trackd` command line: `serve`, and the admin commands for projects, tracking tokens
//! and secret keys. Admin commands work on the data directory directly, also while a server
//! runs on it; running servers pick the change up without a restart.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::json;
use tokio::net::TcpListener;
use trackd_core::project::validate_project_name;
use trackd_core::{CredentialKind, DynStore, Project, StoreError, SystemClock, Token};
use trackd_store::{PgConfig, PostgresStore, SqliteConfig, SqliteStore};

use crate::api::Limits;
use crate::App;

/// trackd: a self-hosted, Vero-compatible customer event tracking server.
#[derive(Debug, Parser)]
#[command(
    name = "trackd",
    version,
    about = "trackd: a self-hosted, Vero-compatible customer event tracking server"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Create and list projects.
    #[command(subcommand)]
    Project(ProjectCommand),
    /// Add and revoke tracking tokens (write only, safe in browser JavaScript).
    #[command(subcommand)]
    Token(CredentialCommand),
    /// Add and revoke secret keys (read and admin).
    #[command(subcommand)]
    Key(CredentialCommand),
    /// Export events as NDJSON, oldest first by receive time.
    Export(ExportArgs),
    /// Import NDJSON: export lines are restored as they were, Vero track bodies are
    /// ingested like API requests.
    Import(ImportArgs),
    /// Deliver a project's events and profile changes to webhooks, Vero and NATS.
    #[command(subcommand)]
    Destination(DestinationCommand),
    /// One user's data.
    #[command(subcommand)]
    User(UserCommand),
    /// A project's audit log, newest first: administrative acts by the API and this CLI.
    Audit(AuditArgs),
}

/// `trackd audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Where the data lives.
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// The project.
    #[arg(long, default_value = "default")]
    pub(crate) project: String,
    /// At most this many entries (1 to 1000).
    #[arg(long, default_value_t = 100)]
    pub(crate) limit: usize,
    /// One JSON object per line.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `trackd user suppress` and `unsuppress`.
#[derive(Debug, Args)]
pub struct SuppressArgs {
    /// Where the data lives.
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// The project.
    #[arg(long, default_value = "default")]
    pub(crate) project: String,
    /// The user's id (or email, for a user without an id).
    pub(crate) id: String,
}

/// `trackd user ...`.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// A data subject's export, NDJSON: the profile, then every event of the user, newest
    /// first (what `GET /api/v2/users/{id}/export` gives).
    Export(UserExportArgs),
    /// Deletes the user (as users/delete) and refuses it from now on: later calls naming
    /// its id or email are answered 200 with Trackd-Suppressed: true and store nothing.
    Suppress(SuppressArgs),
    /// Lifts a suppression.
    Unsuppress(SuppressArgs),
}

/// `trackd user export`.
#[derive(Debug, Args)]
pub struct UserExportArgs {
    /// Where the data lives.
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// The project.
    #[arg(long, default_value = "default")]
    pub(crate) project: String,
    /// The user's id (or email, for a user without an id).
    pub(crate) id: String,
    /// Output file [default: stdout].
    #[arg(short, long)]
    pub(crate) output: Option<PathBuf>,
}

/// `trackd destination ...`.
#[derive(Debug, Subcommand)]
pub enum DestinationCommand {
    /// Add a destination; it gets every item committed from now on.
    Add {
        /// The project.
        #[arg(long)]
        project: String,
        /// Its name: letters, digits, '-', '_'.
        #[arg(long)]
        name: String,
        /// webhook, vero or nats.
        #[arg(long)]
        kind: String,
        /// Receiver: http(s):// (webhook; vero: its API base, Vero's by default) or nats://.
        #[arg(long)]
        url: Option<String>,
        /// Items per webhook batch (1 to 1000).
        #[arg(long)]
        batch: Option<u32>,
        /// Only these event names (comma separated).
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        /// events, users or all.
        #[arg(long)]
        only: Option<String>,
        /// The Vero auth token (vero).
        #[arg(long, env = "TRACKD_VERO_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Subject prefix (nats): subjects are PREFIX.<project>.event|user.
        #[arg(long)]
        subject_prefix: Option<String>,
        /// Print {"name","kind","secret"} as JSON (the signing secret is shown once).
        #[arg(long)]
        json: bool,
        /// Where the data lives.
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Each destination: state, backlog, oldest undelivered age, delivered, dead letters.
    List {
        /// The project.
        #[arg(long)]
        project: String,
        /// One JSON array on stdout.
        #[arg(long)]
        json: bool,
        /// Where the data lives.
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Stop delivering (the backlog keeps growing).
    Pause(DestinationName),
    /// Deliver again.
    Resume(DestinationName),
    /// Remove it, its cursor and its dead letters.
    Remove(DestinationName),
    /// Send again every kept item received at or after --since.
    Replay {
        /// Which destination.
        #[command(flatten)]
        which: DestinationName,
        /// ISO 8601 or Unix seconds.
        #[arg(long)]
        since: String,
    },
    /// Send the dead letters again.
    Redrive(DestinationName),
    /// The items a receiver refused for good: one JSON object a line, in position order,
    /// each with the receiver's status and the first KiB of its answer.
    DeadLetters {
        /// Which destination.
        #[command(flatten)]
        which: DestinationName,
        /// Only those after this position (the last one printed, to page on).
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// Which destination.
#[derive(Debug, Args)]
pub struct DestinationName {
    /// The project.
    #[arg(long)]
    project: String,
    /// The destination.
    #[arg(long)]
    name: String,
    /// Where the data lives.
    #[command(flatten)]
    store: StoreArgs,
}

/// A running server to talk to instead of the data directory.
#[derive(Debug, Args)]
pub struct RemoteArgs {
    /// Base URL of a running trackd (http://host:port); the project is the key's.
    #[arg(long, env = "TRACKD_URL", requires = "key")]
    pub(crate) url: Option<String>,
    /// Secret key for --url.
    #[arg(long, env = "TRACKD_KEY", hide_env_values = true)]
    pub(crate) key: Option<String>,
}

/// `trackd export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Where the data lives.
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// Or a running server.
    #[command(flatten)]
    pub(crate) remote: RemoteArgs,
    /// The project (with --data-dir).
    #[arg(long, default_value = "default")]
    pub(crate) project: String,
    /// Received at or after (ISO 8601 or Unix seconds).
    #[arg(long)]
    pub(crate) since: Option<String>,
    /// Received before (ISO 8601 or Unix seconds).
    #[arg(long)]
    pub(crate) until: Option<String>,
    /// Output file [default: stdout].
    #[arg(short, long)]
    pub(crate) output: Option<PathBuf>,
}

/// `trackd import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// NDJSON file to import.
    pub(crate) file: PathBuf,
    /// Where the data lives.
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// Or a running server.
    #[command(flatten)]
    pub(crate) remote: RemoteArgs,
    /// The project (with --data-dir).
    #[arg(long, default_value = "default")]
    pub(crate) project: String,
    /// Store track bodies even when they are duplicates within the window.
    #[arg(long)]
    pub(crate) no_dedup: bool,
    /// Export lines restored a transaction (with --data-dir; default 200,000 on SQLite,
    /// 2,000 on PostgreSQL). A server on the same data dir waits for each commit: a
    /// smaller batch keeps its writes quick, at a lower import rate and a smaller memory.
    /// Not with --url: the server's import route sets its own.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=500_000), conflicts_with = "url")]
    pub(crate) batch: Option<u32>,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Where the data lives.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Data directory (SQLite database).
    #[arg(long, env = "TRACKD_DATA_DIR", default_value = "./trackd-data")]
    pub data_dir: PathBuf,
    /// PostgreSQL instead of the data directory (postgres://user:pass@host/db): any number
    /// of trackd nodes may share it.
    #[arg(long, env = "TRACKD_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

impl StoreArgs {
    /// Where the data lives, for logs (no password).
    fn describe(&self) -> String {
        match &self.database_url {
            Some(url) => match tokio_postgres_host(url) {
                Some(host) => format!("postgres at {host}"),
                None => "postgres".to_owned(),
            },
            None => self.data_dir.display().to_string(),
        }
    }
}

/// The host part of a `postgres://` URL, without credentials.
fn tokio_postgres_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    Some(rest.split(['/', '?']).next().unwrap_or(rest))
}

/// `trackd serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Address to listen on.
    #[arg(long, env = "TRACKD_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Dedup window in seconds (0 turns dedup off).
    #[arg(long, env = "TRACKD_DEDUP_WINDOW", default_value_t = 180)]
    dedup_window: u64,
    /// Seconds a Segment call's messageId is remembered: the same messageId again within
    /// it is answered 200 and not stored again (0 turns this off).
    #[arg(long, env = "TRACKD_MESSAGE_ID_WINDOW", default_value_t = 86_400)]
    message_id_window: u64,
    /// Largest `/v1/batch` (and `/v1/import`) body in bytes, before and after
    /// decompression.
    #[arg(long, env = "TRACKD_MAX_BATCH_BYTES", default_value_t = 500_000)]
    max_batch_bytes: usize,
    /// Most calls in one `/v1/batch` (past it: 413).
    #[arg(long, env = "TRACKD_MAX_BATCH_ITEMS", default_value_t = 2_500)]
    max_batch_items: usize,
    /// Requests that may wait for the writer before new ones get 503.
    #[arg(long, env = "TRACKD_WRITE_QUEUE", default_value_t = 50_000)]
    write_queue: usize,
    /// Largest request body in bytes, before and after decompression.
    #[arg(long, env = "TRACKD_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    max_body_bytes: usize,
    /// Requests with a missing or unknown credential allowed per client address per
    /// second before 429 (0: unlimited). Behind a proxy every client shares its address.
    #[arg(long, env = "TRACKD_FAILED_AUTH_PER_IP", default_value_t = 100)]
    failed_auth_per_ip: u32,
    /// Seconds a request body may take to arrive before 408 (an import, streamed: seconds
    /// without a byte of it).
    #[arg(long, env = "TRACKD_BODY_TIMEOUT", default_value_t = 30)]
    body_timeout: u64,
    /// Seconds a connection may take to send a request's headers, counted from the
    /// connection's start or the previous answer (an idle or silent connection), before
    /// it is closed.
    #[arg(long, env = "TRACKD_HEADER_TIMEOUT", default_value_t = 10)]
    header_timeout: u64,
    /// Seconds a write may take to commit before the client gets 503 + Retry-After.
    #[arg(long, env = "TRACKD_REQUEST_TIMEOUT", default_value_t = 30)]
    request_timeout: u64,
    /// Requests answered at once before new ones get 503 + Retry-After (0: unbounded).
    /// Each may hold a body of up to --max-body-bytes.
    #[arg(long, env = "TRACKD_MAX_IN_FLIGHT", default_value_t = 4096)]
    max_in_flight: usize,
    /// Requests answered at once for one client address before its new ones get 429 +
    /// Retry-After (0: unbounded), so one address cannot take every --max-in-flight slot.
    /// A quarter of --max-in-flight when not given: no busy client comes near it, and no
    /// one address (an IPv6 /64) can hold every slot. Behind a proxy every client shares
    /// its address.
    #[arg(long, env = "TRACKD_MAX_IN_FLIGHT_PER_IP")]
    max_in_flight_per_ip: Option<usize>,
    /// Requests per second per client address before 429 (0: unlimited). Behind a proxy
    /// every client shares its address.
    #[arg(long, env = "TRACKD_IP_RATE", default_value_t = 0)]
    ip_rate: u32,
    /// Requests per second per tracking token before 429 (0: unlimited).
    #[arg(long, env = "TRACKD_TOKEN_RATE", default_value_t = 0)]
    token_rate: u32,
    /// Channels one profile may hold (a `users/track` past it is 400).
    #[arg(long, env = "TRACKD_MAX_PROFILE_CHANNELS", default_value_t = 100)]
    max_profile_channels: usize,
    /// Tags one profile may hold (a `users/tags/edit` past it is 400).
    #[arg(long, env = "TRACKD_MAX_PROFILE_TAGS", default_value_t = 1_000)]
    max_profile_tags: usize,
    /// Bytes of properties one profile may hold, as compact JSON (past it: 400).
    #[arg(long, env = "TRACKD_MAX_PROFILE_BYTES", default_value_t = 65_536)]
    max_profile_bytes: usize,
    /// Seconds an export waits for its client to read more before it ends (unfinished).
    #[arg(long, env = "TRACKD_EXPORT_TIMEOUT", default_value_t = 30)]
    export_timeout: u64,
    /// Serve /metrics on this address instead of --listen.
    #[arg(long, env = "TRACKD_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Deliver to destinations from this node (on PostgreSQL, nodes share them by lease).
    #[arg(long, env = "TRACKD_DELIVERY", default_value_t = true, action = clap::ArgAction::Set)]
    delivery: bool,
    /// Seconds one delivery attempt may take before it counts as failed and is retried.
    #[arg(long, env = "TRACKD_DELIVERY_TIMEOUT", default_value_t = 10)]
    delivery_timeout: u64,
    /// Milliseconds the first retry waits at most; the wait doubles (full jitter) to 10
    /// minutes.
    #[arg(long, env = "TRACKD_DELIVERY_RETRY_BASE_MS", default_value_t = 1000)]
    delivery_retry_base_ms: u64,
    /// Hours delivered items stay in the outbox, for `destination replay`.
    #[arg(long, env = "TRACKD_OUTBOX_KEEP_HOURS", default_value_t = 24)]
    outbox_keep_hours: u64,
    /// HTTP worker threads [default: one less than the CPUs, at least one: the store's
    /// writer thread is a core's worth of work of its own].
    #[arg(long, env = "TRACKD_WORKERS")]
    workers: Option<usize>,
}

impl Cli {
    /// How many async worker threads the runtime should have.
    pub fn worker_threads(&self) -> usize {
        let serve_workers = match &self.command {
            Command::Serve(args) => args.workers,
            _ => None,
        };
        serve_workers.filter(|&n| n > 0).unwrap_or_else(|| {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            cpus.saturating_sub(1).max(1)
        })
    }
}

/// `trackd project ...`.
#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Create a project with one tracking token and one secret key (printed once).
    Create {
        /// Project name: letters, digits, '-', '_', '.'.
        name: String,
        /// Where the data lives.
        #[command(flatten)]
        store: StoreArgs,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Change a project's settings.
    Set {
        /// The project.
        name: String,
        /// Keep events this long by receive time (90d, 12h, 2w, ...; off: for ever). Older
        /// ones are deleted continuously; the statistics keep their counts.
        #[arg(long)]
        retention: String,
        /// Where the data lives.
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List projects (name and retention).
    List {
        /// Where the data lives.
        #[command(flatten)]
        store: StoreArgs,
        /// Print a JSON array on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// `trackd token ...` and `trackd key ...`.
#[derive(Debug, Subcommand)]
pub enum CredentialCommand {
    /// Add one (printed once).
    Add {
        /// The project.
        #[arg(long)]
        project: String,
        /// Import an existing token string as is (an old Vero token); tokens only.
        #[arg(long)]
        value: Option<String>,
        /// Where the data lives.
        #[command(flatten)]
        store: StoreArgs,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Revoke one.
    Revoke {
        /// The project.
        #[arg(long)]
        project: String,
        /// The token or key to revoke.
        value: String,
        /// Where the data lives.
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// A command's failure, printed as `error: ...`.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad argument.
    #[error("{0}")]
    Invalid(String),
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// I/O (binding the listener, serving, files).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Talking to a running server.
    #[error("{0}")]
    Remote(String),
}

impl From<crate::import::ImportError> for CliError {
    fn from(e: crate::import::ImportError) -> Self {
        match e {
            crate::import::ImportError::Store(e) => CliError::Store(e),
            e @ crate::import::ImportError::Input { .. } => CliError::Invalid(e.to_string()),
        }
    }
}

impl From<trackd_core::FieldError> for CliError {
    fn from(e: trackd_core::FieldError) -> Self {
        CliError::Invalid(e.to_string())
    }
}

async fn open_store(
    args: &StoreArgs,
    dedup_window: Duration,
    message_id_window: Duration,
    queue: usize,
    writer_cache_kib: u32,
) -> Result<DynStore, CliError> {
    if let Some(url) = &args.database_url {
        let store = PostgresStore::open(PgConfig {
            url: url.clone(),
            dedup_window,
            message_id_window,
            queue_capacity: queue,
            clock: Arc::new(SystemClock),
            dedup_clock: None,
            pool_size: 16,
        })
        .await?;
        return Ok(Arc::new(store));
    }
    let store = SqliteStore::open(SqliteConfig {
        wal_checkpoint_pages: trackd_store::sqlite::DEFAULT_WAL_CHECKPOINT_PAGES,
        writer_cache_kib,
        data_dir: args.data_dir.clone(),
        dedup_window,
        message_id_window,
        queue_capacity: queue,
        clock: Arc::new(SystemClock),
    })?;
    Ok(Arc::new(store))
}

/// The store of a command that works on existing data: on SQLite, a data dir without a
/// database is refused (a mistyped `--data-dir` would otherwise get a new, empty database
/// and then a puzzling "project default not found").
pub(crate) async fn admin_store(args: &StoreArgs) -> Result<DynStore, CliError> {
    if args.database_url.is_none() {
        let file = args.data_dir.join(trackd_store::sqlite::DB_FILE);
        if !file.exists() {
            return Err(CliError::Invalid(format!(
                "--data-dir {}: no trackd data here ({} not found; `trackd serve` or \
                 `trackd project create` makes it)",
                args.data_dir.display(),
                trackd_store::sqlite::DB_FILE
            )));
        }
    }
    creating_store(args).await
}

/// The store of a command that may start a data set (`trackd project create`).
pub(crate) async fn creating_store(args: &StoreArgs) -> Result<DynStore, CliError> {
    command_store(args, trackd_store::sqlite::DEFAULT_CACHE_KIB).await
}

/// The store `trackd import` writes to: on SQLite, a writer cache that holds the pages its
/// large transactions dirty ([`crate::import::Limits::BULK`]).
pub(crate) async fn bulk_store(args: &StoreArgs) -> Result<DynStore, CliError> {
    command_store(args, trackd_store::sqlite::BULK_WRITER_CACHE_KIB).await
}

async fn command_store(args: &StoreArgs, writer_cache_kib: u32) -> Result<DynStore, CliError> {
    // The CLI takes no Segment calls: a zero window leaves the server's messageIds (and
    // their epochs) alone.
    open_store(
        args,
        Duration::from_secs(180),
        Duration::ZERO,
        16,
        writer_cache_kib,
    )
    .await
}

/// Runs a parsed command.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Project(ProjectCommand::Create { name, store, json }) => {
            let store = creating_store(&store).await?;
            let created = async {
                let created = create_project(&store, &name).await?;
                audited(&store, created.0.id, "project.create", name.clone()).await?;
                Ok::<_, CliError>(created)
            }
            .await;
            store.shutdown().await?;
            let (project, tracking, secret) = created?;
            if json {
                println!(
                    "{}",
                    json!({"id": project.id.get(), "name": project.name,
                           "tracking_token": tracking.expose(), "secret_key": secret.expose()})
                );
            } else {
                print_created(&project, &tracking, &secret);
            }
            Ok(())
        }
        Command::Project(ProjectCommand::List { store, json }) => {
            let store = admin_store(&store).await?;
            let projects = store.projects().await;
            store.shutdown().await?;
            let projects = projects?;
            if json {
                let list: Vec<_> = projects
                    .iter()
                    .map(|p| {
                        json!({"id": p.id.get(), "name": p.name,
                               "retention": format_retention(p.retention)})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                for p in projects {
                    println!("{:<24} retention {}", p.name, format_retention(p.retention));
                }
            }
            Ok(())
        }
        Command::Project(ProjectCommand::Set {
            name,
            retention,
            store,
        }) => {
            let retention = trackd_core::privacy::parse_retention(&retention)?;
            let store = admin_store(&store).await?;
            let set = async {
                let p = store.project(&name).await?;
                store.set_retention(p.id, retention).await?;
                let target = format!("{name} retention={}", format_retention(retention));
                audited(&store, p.id, "project.set", target).await
            }
            .await;
            store.shutdown().await?;
            set?;
            eprintln!("project {name}: retention {}", format_retention(retention));
            Ok(())
        }
        Command::Export(args) => crate::transfer::export(args).await,
        Command::Import(args) => crate::transfer::import(args).await,
        Command::Destination(cmd) => destination(cmd).await,
        Command::User(UserCommand::Export(args)) => crate::transfer::user_export(args).await,
        Command::User(UserCommand::Suppress(args)) => suppression(args, true).await,
        Command::User(UserCommand::Unsuppress(args)) => suppression(args, false).await,
        Command::Audit(args) => audit(args).await,
        Command::Token(cmd) => credential(cmd, CredentialKind::Tracking).await,
        Command::Key(cmd) => credential(cmd, CredentialKind::Secret).await,
    }
}

async fn destination(cmd: DestinationCommand) -> Result<(), CliError> {
    use trackd_core::delivery::{DestinationChange, DestinationSpec};
    let now = trackd_core::Clock::now(&SystemClock);
    let (which, change) = match cmd {
        DestinationCommand::Add {
            project,
            name,
            kind,
            url,
            batch,
            events,
            only,
            token,
            subject_prefix,
            json,
            store,
        } => {
            let mut body = serde_json::Map::new();
            body.insert("name".into(), name.into());
            body.insert("kind".into(), kind.into());
            for (field, value) in [
                ("url", url),
                ("only", only),
                ("token", token),
                ("subject_prefix", subject_prefix),
            ] {
                if let Some(v) = value {
                    body.insert(field.into(), v.into());
                }
            }
            if let Some(b) = batch {
                body.insert("batch".into(), b.into());
            }
            if !events.is_empty() {
                body.insert("events".into(), events.into());
            }
            let spec = DestinationSpec::from_json(&body)?;
            let store = admin_store(&store).await?;
            let added = async {
                let p = store.project(&project).await?;
                let d = crate::api::destinations::create(&store, p.id, spec).await?;
                audited(&store, p.id, "destination.add", d.spec.name.clone()).await?;
                Ok::<_, CliError>(d)
            }
            .await;
            store.shutdown().await?;
            let d = added?;
            if json {
                let mut out = json!({"name": d.spec.name, "kind": d.spec.kind.as_str()});
                if !d.secret.is_empty() {
                    out["secret"] = d.secret.clone().into();
                }
                println!("{out}");
            } else {
                println!(
                    "destination {} ({}) added",
                    d.spec.name,
                    d.spec.kind.as_str()
                );
                if !d.secret.is_empty() {
                    println!("  signing secret (shown once): {}", d.secret);
                }
            }
            return Ok(());
        }
        DestinationCommand::List {
            project,
            json,
            store,
        } => {
            let store = admin_store(&store).await?;
            let listed = async {
                let p = store.project(&project).await?;
                store.destinations(Some(p.id), true).await
            }
            .await;
            store.shutdown().await?;
            let list = listed?;
            if json {
                let all: Vec<_> = list.iter().map(|d| d.to_json(now)).collect();
                println!("{}", serde_json::Value::Array(all));
            } else {
                println!(
                    "{:<24} {:<8} {:<9} {:>10} {:>8} {:>12} {:>6}  LAST ERROR",
                    "NAME", "KIND", "STATE", "BACKLOG", "OLDEST", "DELIVERED", "DEAD"
                );
                for d in &list {
                    println!(
                        "{:<24} {:<8} {:<9} {:>10} {:>7}s {:>12} {:>6}  {}",
                        d.spec.name,
                        d.spec.kind.as_str(),
                        d.state(),
                        d.backlog,
                        d.oldest_undelivered_secs(now),
                        d.delivered,
                        d.dead_letters,
                        d.last_error.as_deref().unwrap_or("-")
                    );
                }
            }
            return Ok(());
        }
        DestinationCommand::DeadLetters {
            which,
            after,
            limit,
        } => {
            if !(1..=trackd_core::read::MAX_LIMIT).contains(&limit) {
                return Err(CliError::Invalid(format!(
                    "--limit: must be from 1 to {}",
                    trackd_core::read::MAX_LIMIT
                )));
            }
            if after < 0 {
                return Err(CliError::Invalid("--after: must be 0 or more".into()));
            }
            let store = admin_store(&which.store).await?;
            let listed = async {
                let p = store.project(&which.project).await?;
                let d = crate::api::destinations::find(&store, p.id, &which.name).await?;
                Ok::<_, CliError>((p.id, store.dead_letters(p.id, d.id, after, limit).await?))
            }
            .await;
            store.shutdown().await?;
            let (project, letters) = listed?;
            for letter in &letters {
                println!("{}", letter.to_json(project));
            }
            return Ok(());
        }
        DestinationCommand::Pause(w) => (w, DestinationChange::Pause),
        DestinationCommand::Resume(w) => (w, DestinationChange::Resume),
        DestinationCommand::Remove(w) => (w, DestinationChange::Remove),
        DestinationCommand::Redrive(w) => (w, DestinationChange::Redrive),
        DestinationCommand::Replay { which, since } => {
            let pairs = [("since".to_owned(), since)];
            let since = trackd_core::read::Params::new(&pairs, &["since"])?
                .time("since")?
                .ok_or_else(|| CliError::Invalid("--since: is required".into()))?;
            (
                which,
                DestinationChange::Replay {
                    since: since.as_micros(),
                },
            )
        }
    };
    let what = match &change {
        DestinationChange::Pause => "paused",
        DestinationChange::Resume => "resumed",
        DestinationChange::Remove => "removed",
        DestinationChange::Replay { .. } => "replaying",
        DestinationChange::Redrive => "redriving its dead letters",
    };
    let store = admin_store(&which.store).await?;
    let changed = async {
        let p = store.project(&which.project).await?;
        let action = crate::api::destinations::change_action(&change);
        store.change_destination(p.id, &which.name, change).await?;
        audited(&store, p.id, action, which.name.clone()).await
    }
    .await;
    store.shutdown().await?;
    changed?;
    eprintln!("destination {} {what}", which.name);
    Ok(())
}

async fn credential(cmd: CredentialCommand, kind: CredentialKind) -> Result<(), CliError> {
    let (label, add_action, revoke_action) = match kind {
        CredentialKind::Tracking => ("tracking_token", "token.add", "token.revoke"),
        CredentialKind::Secret => ("secret_key", "key.add", "key.revoke"),
    };
    match cmd {
        CredentialCommand::Add {
            project,
            value,
            store,
            json,
        } => {
            let token = match (value, kind) {
                (Some(v), CredentialKind::Tracking) => Token::import(&v)?,
                (Some(_), CredentialKind::Secret) => {
                    return Err(CliError::Invalid(
                        "secret keys are generated, --value is for tracking tokens".into(),
                    ))
                }
                (None, kind) => Token::generate(kind),
            };
            let store = admin_store(&store).await?;
            let added = async {
                let p = store.project(&project).await?;
                store.add_credential(p.id, kind, &token).await?;
                audited(&store, p.id, add_action, token.hash().fingerprint()).await
            }
            .await;
            store.shutdown().await?;
            added?;
            if json {
                println!("{}", json!({"project": project, label: token.expose()}));
            } else {
                println!("{}", token.expose());
            }
            Ok(())
        }
        CredentialCommand::Revoke {
            project,
            value,
            store,
        } => {
            let store = admin_store(&store).await?;
            let revoked = async {
                let p = store.project(&project).await?;
                let token = Token::presented(&value);
                store.revoke_credential(p.id, kind, &token).await?;
                audited(&store, p.id, revoke_action, token.hash().fingerprint()).await
            }
            .await;
            store.shutdown().await?;
            revoked?;
            eprintln!("revoked");
            Ok(())
        }
    }
}

use trackd_core::privacy::format_retention;

/// Records an act of this command line in the audit log.
pub(crate) async fn audited(
    store: &DynStore,
    project: trackd_core::ProjectId,
    action: &'static str,
    target: String,
) -> Result<(), CliError> {
    let act = trackd_core::privacy::AuditAct {
        project,
        actor: trackd_core::privacy::Actor::Cli,
        action,
        target,
    };
    Ok(store.record_audit(act).await?)
}

/// `trackd user suppress` (`suppress`) and `unsuppress`.
async fn suppression(args: SuppressArgs, suppress: bool) -> Result<(), CliError> {
    trackd_core::UserId::from_text(&args.id, "id")?;
    let store = admin_store(&args.store).await?;
    let done = async {
        let p = store.project(&args.project).await?;
        let actor = trackd_core::privacy::Actor::Cli;
        if suppress {
            let done = store.suppress(p.id, args.id.clone(), actor).await?;
            Ok::<_, CliError>(if done.deleted {
                "suppressed; the user and its events were deleted"
            } else {
                "suppressed (no such user was stored)"
            })
        } else if store.unsuppress(p.id, args.id.clone(), actor).await? {
            Ok("unsuppressed")
        } else {
            Err(CliError::Invalid(format!("{}: not suppressed", args.id)))
        }
    }
    .await;
    store.shutdown().await?;
    eprintln!("{}", done?);
    Ok(())
}

/// `trackd audit`: the newest entries of a project's audit log.
async fn audit(args: AuditArgs) -> Result<(), CliError> {
    if !(1..=trackd_core::read::MAX_LIMIT).contains(&args.limit) {
        return Err(CliError::Invalid(format!(
            "--limit: must be from 1 to {}",
            trackd_core::read::MAX_LIMIT
        )));
    }
    let store = admin_store(&args.store).await?;
    let entries = async {
        let p = store.project(&args.project).await?;
        let query = trackd_core::privacy::AuditQuery {
            project: p.id,
            since: None,
            limit: args.limit,
            before: None,
        };
        Ok::<_, CliError>(store.audit(query).await?)
    }
    .await;
    store.shutdown().await?;
    for e in entries? {
        if args.json {
            println!("{}", e.to_json());
        } else {
            println!(
                "{}  {:<14} {:<20} {}",
                e.at.to_rfc3339(),
                e.actor,
                e.action,
                e.target
            );
        }
    }
    Ok(())
}

/// Creates a project with one tracking token and one secret key.
pub async fn create_project(
    store: &DynStore,
    name: &str,
) -> Result<(Project, Token, Token), CliError> {
    validate_project_name(name)?;
    let project = store.create_project(name).await?;
    let tracking = Token::generate(CredentialKind::Tracking);
    let secret = Token::generate(CredentialKind::Secret);
    store
        .add_credential(project.id, CredentialKind::Tracking, &tracking)
        .await?;
    store
        .add_credential(project.id, CredentialKind::Secret, &secret)
        .await?;
    Ok((project, tracking, secret))
}

fn print_created(project: &Project, tracking: &Token, secret: &Token) {
    println!("project {} created; these are shown once:", project.name);
    println!("  tracking token: {}", tracking.expose());
    println!("  secret key:     {}", secret.expose());
}

async fn serve(args: ServeArgs) -> Result<(), CliError> {
    let store = open_store(
        &args.store,
        Duration::from_secs(args.dedup_window),
        Duration::from_secs(args.message_id_window),
        args.write_queue,
        trackd_store::sqlite::DEFAULT_CACHE_KIB,
    )
    .await?;
    let listener = TcpListener::bind(args.listen).await?;
    // First start on an empty data dir: a project to send to at once.
    if store.projects().await?.is_empty() {
        // Nodes starting at once on an empty database: one creates it, the rest go on.
        match create_project(&store, "default").await {
            Ok((project, tracking, secret)) => {
                // An administrative act like `trackd project create` (DESIGN §10).
                audited(&store, project.id, "project.create", project.name.clone()).await?;
                print_created(&project, &tracking, &secret);
                let addr = listener.local_addr()?;
                let host = if addr.ip().is_unspecified() {
                    format!("127.0.0.1:{}", addr.port())
                } else {
                    addr.to_string()
                };
                println!("  web console:    http://{host}/ui (sign in with the secret key)");
                println!("  send events to: http://{host}/api/v2/events/track");
            }
            Err(CliError::Store(StoreError::Conflict(_))) => {}
            Err(e) => return Err(e),
        }
    }
    let limits = Limits {
        max_body_bytes: args.max_body_bytes,
        failed_auth_per_ip: args.failed_auth_per_ip,
        body_timeout: Duration::from_secs(args.body_timeout),
        header_timeout: Duration::from_secs(args.header_timeout),
        request_timeout: Duration::from_secs(args.request_timeout),
        max_in_flight: args.max_in_flight,
        max_in_flight_per_ip: args
            .max_in_flight_per_ip
            .unwrap_or((args.max_in_flight / 4).max(usize::from(args.max_in_flight > 0))),
        ip_rate: args.ip_rate,
        token_rate: args.token_rate,
        profile: trackd_core::users::ProfileLimits {
            channels: args.max_profile_channels,
            tags: args.max_profile_tags,
            properties_bytes: args.max_profile_bytes,
        },
        export_timeout: Duration::from_secs(args.export_timeout),
        max_batch_bytes: args.max_batch_bytes,
        max_batch_items: args.max_batch_items,
    };
    let mut app = App::build(listener, store, Arc::new(SystemClock), limits)
        .await?
        .with_delivery(crate::delivery::DeliveryConfig {
            enabled: args.delivery,
            timeout: Duration::from_secs(args.delivery_timeout.max(1)),
            retry_base: Duration::from_millis(args.delivery_retry_base_ms.max(1)),
            keep: Duration::from_secs(args.outbox_keep_hours.saturating_mul(3600)),
            ..Default::default()
        });
    if let Some(addr) = args.metrics_listen {
        let metrics_listener = TcpListener::bind(addr).await?;
        tracing::info!(addr = %metrics_listener.local_addr()?, "metrics listening");
        app = app.with_metrics_listener(metrics_listener);
    }
    tracing::info!(addr = %app.local_addr()?, store = %args.store.describe(),
        dedup_window_secs = args.dedup_window,
        message_id_window_secs = args.message_id_window, "trackd listening");
    app.run(shutdown_signal()).await?;
    tracing::info!("trackd stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
