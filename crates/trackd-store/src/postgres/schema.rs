//! The PostgreSQL schema, as ordered migrations recorded in `trackd_schema`, applied under
//! an advisory lock so nodes starting at once apply each step exactly once. Needs no
//! superuser: only CREATE on the database's schema.

use tokio_postgres::Client;

/// Each entry takes the schema from version `i` to `i + 1`. Append only.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE projects (
    id         BIGSERIAL PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

-- Tokens and secret keys, by SHA-256 hash: the database never holds one in clear.
CREATE TABLE credentials (
    hash       BYTEA PRIMARY KEY,
    project_id BIGINT NOT NULL REFERENCES projects(id),
    kind       TEXT NOT NULL CHECK (kind IN ('tracking', 'secret')),
    created_at BIGINT NOT NULL
);

-- `credentials_version` changes on every credential change so running nodes reload.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO meta(key, value) VALUES ('credentials_version', 0);

CREATE TABLE users (
    id           BIGSERIAL PRIMARY KEY,
    project_id   BIGINT NOT NULL,
    user_key     TEXT NOT NULL,   -- the id when known, else the email
    user_id      TEXT,
    email        TEXT,
    phone_number TEXT,
    channels     TEXT NOT NULL DEFAULT '[]', -- JSON array of {type, address, platform}
    properties   TEXT NOT NULL DEFAULT '{}', -- JSON object
    tags         TEXT NOT NULL DEFAULT '[]', -- JSON array, sorted, no repeats
    subscribed   BOOLEAN NOT NULL DEFAULT TRUE,
    first_seen   BIGINT NOT NULL, -- receive times, microseconds since the epoch
    last_seen    BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    UNIQUE (project_id, user_key)
) WITH (fillfactor = 70); -- room for HOT updates: touching a user adds no index entries
CREATE INDEX users_by_email ON users(project_id, email) WHERE email IS NOT NULL;

-- Sequence ids are never reused.
CREATE TABLE events (
    id          BIGSERIAL PRIMARY KEY,
    project_id  BIGINT NOT NULL,
    user_ref    BIGINT NOT NULL, -- users.id: a reidentify renames the user, not its events
    event_name  TEXT NOT NULL,
    event_key   TEXT NOT NULL,
    data        TEXT NOT NULL,   -- compact JSON, numbers as sent
    source      TEXT,
    created_at  BIGINT NOT NULL, -- event time, microseconds since the epoch (UTC)
    received_at BIGINT NOT NULL
);
-- Ending in the id: pages walk (time, id) without a sort.
CREATE INDEX events_by_user ON events(user_ref, created_at, id);
CREATE INDEX events_by_time ON events(project_id, created_at, id);
CREATE INDEX events_by_key ON events(project_id, event_key, created_at, id);
CREATE INDEX events_by_received ON events(project_id, received_at, id);

-- The dedup record of the last accepted event per key. An upsert replaces it only when it
-- is older than the window (database clock), in the transaction of the event it admits.
-- One index only (the key): the user's key is kept for deletions and renames, which scan
-- the window's records, and the purge scans by time once a minute.
CREATE TABLE dedup (
    project_id  BIGINT NOT NULL,
    key         BYTEA NOT NULL,  -- 16 bytes of SHA-256 over project, user, event key, data
    received_at BIGINT NOT NULL, -- database clock, microseconds
    user_key    TEXT NOT NULL,
    PRIMARY KEY (project_id, key)
);

-- Running totals per project: `accepted`, `duplicates`, `rejected:<reason>`. Spread over
-- shards (each node writes one, chosen at start) so nodes never wait for each other's
-- commits on one hot row; readers sum the shards.
CREATE TABLE counters (
    project_id BIGINT NOT NULL,
    name       TEXT NOT NULL,
    shard      INTEGER NOT NULL,
    value      BIGINT NOT NULL,
    PRIMARY KEY (project_id, name, shard)
);
"#,
    r#"
-- Values that are bytes: `cursor_key`, the secret read cursors are sealed with (made on
-- first use, with `value` 0; every node reads the same one).
ALTER TABLE meta ADD COLUMN bytes BYTEA;
"#,
    r#"
-- Delivery (DESIGN §8), as on SQLite. A destination's cursor is the last outbox position
-- its receiver acknowledged; `generation` changes on pause, resume and replay so a loop of
-- an older one stops; the lease (database clock) says which node delivers it.
CREATE TABLE destinations (
    id          BIGSERIAL PRIMARY KEY,
    project_id  BIGINT NOT NULL REFERENCES projects(id),
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    settings    TEXT NOT NULL,    -- JSON: url, batch, events, only, token, subject_prefix
    secret      TEXT NOT NULL,    -- the webhook signing secret (whsec_), '' for other kinds
    paused      TEXT,             -- why, when paused
    cursor      BIGINT NOT NULL,
    pending_to  BIGINT NOT NULL DEFAULT 0, -- the batch being sent ends here (0: none)
    generation  BIGINT NOT NULL DEFAULT 0,
    delivered   BIGINT NOT NULL DEFAULT 0,
    last_error  TEXT,
    lease_owner TEXT,
    lease_until BIGINT NOT NULL DEFAULT 0, -- database clock, microseconds
    created_at  BIGINT NOT NULL,
    UNIQUE (project_id, name)
);

-- Committed items of projects that have destinations, in commit order per project. An
-- event's item points at its row (no copy of the data: deleting the user deletes what it
-- would send); a profile change keeps its normalised body, deleted with the user.
CREATE TABLE outbox (
    project_id  BIGINT NOT NULL,
    pos         BIGINT NOT NULL,  -- from outbox_pos, taken under the project's order lock
    user_ref    BIGINT NOT NULL,  -- users.id: order is kept per user
    kind        SMALLINT NOT NULL, -- delivery::ItemKind
    event_id    BIGINT,
    body        TEXT,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (project_id, pos)
);
CREATE INDEX outbox_changes_by_user ON outbox(user_ref) WHERE body IS NOT NULL;
-- CACHE 1 (no values kept per session): a value taken later is always larger, which is
-- what makes positions follow commit order per project.
CREATE SEQUENCE outbox_pos CACHE 1;

-- Items a receiver refused for good, until redriven.
CREATE TABLE dead_letters (
    destination_id BIGINT NOT NULL,
    pos            BIGINT NOT NULL,
    status         INTEGER NOT NULL,
    response       TEXT NOT NULL,   -- the first KiB of the answer
    failed_at      BIGINT NOT NULL,
    redrive        BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (destination_id, pos)
);
"#,
    r#"
-- Segment messageIds received within the window (DESIGN §9): an upsert in the transaction
-- of what they protect replaces a row only when it is older than the window, so nodes
-- racing on one messageId serialise on its row and exactly one stores the call. `key` is
-- a hash of project and messageId, never the id.
CREATE TABLE message_ids (
    key         BYTEA PRIMARY KEY,
    received_at BIGINT NOT NULL
);
CREATE INDEX message_ids_by_time ON message_ids(received_at);
"#,
    r#"
-- Rows rewritten at every batch (a user's first and last seen, the running totals) keep
-- room on their page for the new version, so the update stays on the page (HOT): no new
-- index entries, and the dead versions are pruned as the page is next read.
ALTER TABLE users SET (fillfactor = 80);
ALTER TABLE counters SET (fillfactor = 50);
"#,
    r#"
-- Suppressed users (DESIGN §10; `postgres/privacy.rs`): keyed hashes of the identifiers a
-- suppression covers, never the identifiers; `origin` is the hash of the key it was made
-- for, so unsuppressing it lifts every hash it kept.
CREATE TABLE suppressions (
    project_id BIGINT NOT NULL,
    hash       BYTEA NOT NULL,
    origin     BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (project_id, hash, origin)
);
CREATE INDEX suppressions_by_origin ON suppressions(project_id, origin);

-- Administrative acts: never deleted with what they record (a user is named by hash).
CREATE TABLE audit (
    id         BIGSERIAL PRIMARY KEY,
    project_id BIGINT NOT NULL,
    at         BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL
);
CREATE INDEX audit_by_project ON audit(project_id, id);

-- Retention (DESIGN §10): how long a project keeps its events (µs of receive time; NULL:
-- for ever); the counts of the events it deleted, per hour and event key, so the
-- statistics keep them.
ALTER TABLE projects ADD COLUMN retention BIGINT;
CREATE TABLE stats_rollup (
    project_id BIGINT NOT NULL,
    hour       BIGINT NOT NULL,
    event_key  TEXT NOT NULL,
    count      BIGINT NOT NULL,
    PRIMARY KEY (project_id, hour, event_key)
);
"#,
];

/// The advisory lock key migrations run under ("trackd" in ASCII).
const MIGRATION_LOCK: i64 = 0x7472_6163_6b64;

/// Brings the database to the latest schema. Several nodes may call it at once: the
/// advisory lock makes the others wait, then they find nothing left to do.
pub(crate) async fn migrate(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS trackd_schema (version BIGINT NOT NULL); \
         INSERT INTO trackd_schema (version) SELECT 0 \
           WHERE NOT EXISTS (SELECT 1 FROM trackd_schema)",
    )
    .await?;
    let current: i64 = tx
        .query_one("SELECT version FROM trackd_schema", &[])
        .await?
        .get(0);
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "UPDATE trackd_schema SET version = $1",
            &[&(version as i64 + 1)],
        )
        .await?;
    }
    tx.commit().await
}
