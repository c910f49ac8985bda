//! The SQLite schema, as ordered migrations tracked by `PRAGMA user_version`.

use rusqlite::Connection;

/// Each entry takes the schema from version `i` to `i + 1`. Append only: a released
/// migration never changes.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE projects (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

-- Tokens and secret keys, by SHA-256 hash: the database never holds one in clear.
CREATE TABLE credentials (
    hash       BLOB PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    kind       TEXT NOT NULL CHECK (kind IN ('tracking', 'secret')),
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

-- Small named values: `credentials_version` changes on every credential change so running
-- servers reload their credential cache.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta(key, value) VALUES ('credentials_version', 0);

CREATE TABLE users (
    id           INTEGER PRIMARY KEY,
    project_id   INTEGER NOT NULL,
    user_key     TEXT NOT NULL,   -- the id when known, else the email
    user_id      TEXT,
    email        TEXT,
    phone_number TEXT,
    channels     TEXT NOT NULL DEFAULT '[]', -- JSON array of {type, address, platform}
    properties   TEXT NOT NULL DEFAULT '{}', -- JSON object
    tags         TEXT NOT NULL DEFAULT '[]', -- JSON array, sorted, no repeats
    subscribed   INTEGER NOT NULL DEFAULT 1,
    first_seen   INTEGER NOT NULL, -- receive times, microseconds since the epoch
    last_seen    INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    UNIQUE (project_id, user_key)
);
-- Operations that name a user by email alone fall back to the email field.
CREATE INDEX users_by_email ON users(project_id, email) WHERE email IS NOT NULL;

-- AUTOINCREMENT: ids are never reused, even after the newest rows are deleted (a user
-- deletion), so exported ids stay unique and a cursor's `max_id` stays a true bound.
CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id  INTEGER NOT NULL,
    user_ref    INTEGER NOT NULL, -- users.id: a reidentify renames the user, not its events
    event_name  TEXT NOT NULL,
    event_key   TEXT NOT NULL,
    data        TEXT NOT NULL,    -- compact JSON, numbers as sent
    source      TEXT,
    created_at  INTEGER NOT NULL, -- event time, microseconds since the epoch (UTC)
    received_at INTEGER NOT NULL
);
-- A user's events: deleting or merging a user, and its timeline.
CREATE INDEX events_by_user ON events(user_ref, created_at);
-- Reads by event time, by event key and time, and exports by receive time. Live events
-- arrive with times near now, so these grow at their ends (cheap appends).
CREATE INDEX events_by_time ON events(project_id, created_at);
CREATE INDEX events_by_key ON events(project_id, event_key, created_at);
CREATE INDEX events_by_received ON events(project_id, received_at);

-- One row per accepted event within the dedup window, written in the event's transaction.
-- Append-only in commit order (lookups use the writer's in-memory index of these rows),
-- purged by rowid range once expired. `user_ref` lets a user's deletion remove its records.
CREATE TABLE dedup (
    id          INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused: catch-up reads past a watermark
    project_id  INTEGER NOT NULL,
    key         BLOB NOT NULL,    -- 16 bytes of SHA-256 over project, user, event key, data
    received_at INTEGER NOT NULL,
    user_ref    INTEGER NOT NULL
);

-- Running totals that survive restarts, per project: `accepted`, `duplicates`, and
-- `rejected:<reason>` for refused requests.
CREATE TABLE counters (
    project_id INTEGER NOT NULL,
    name       TEXT NOT NULL,
    value      INTEGER NOT NULL,
    PRIMARY KEY (project_id, name)
) WITHOUT ROWID;
"#,
    r#"
-- Values that are bytes: `cursor_key`, the secret read cursors are sealed with (made on
-- first use, with `value` 0).
ALTER TABLE meta ADD COLUMN bytes BLOB;
"#,
    r#"
-- Delivery (DESIGN §8). A destination's cursor is the last outbox position its receiver
-- acknowledged; `generation` changes on pause, resume and replay so a loop of an older one
-- stops; the lease says which process delivers it.
CREATE TABLE destinations (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id  INTEGER NOT NULL REFERENCES projects(id),
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    settings    TEXT NOT NULL,    -- JSON: url, batch, events, only, token, subject_prefix
    secret      TEXT NOT NULL,    -- the webhook signing secret (whsec_), '' for other kinds
    paused      TEXT,             -- why, when paused
    cursor      INTEGER NOT NULL,
    pending_to  INTEGER NOT NULL DEFAULT 0, -- the batch being sent ends here (0: none)
    generation  INTEGER NOT NULL DEFAULT 0,
    delivered   INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    lease_owner TEXT,
    lease_until INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    UNIQUE (project_id, name)
);

-- Committed items of projects that have destinations, in commit order. An event's item
-- points at its row (no copy of the data: deleting the user deletes what it would send); a
-- profile change keeps its normalised body, deleted with the user.
CREATE TABLE outbox (
    project_id  INTEGER NOT NULL,
    pos         INTEGER NOT NULL, -- from meta.outbox_pos: commit order, never reused
    user_ref    INTEGER NOT NULL, -- users.id: order is kept per user
    kind        INTEGER NOT NULL, -- delivery::ItemKind
    event_id    INTEGER,
    body        TEXT,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (project_id, pos)
) WITHOUT ROWID;
CREATE INDEX outbox_changes_by_user ON outbox(user_ref) WHERE body IS NOT NULL;
INSERT INTO meta(key, value) VALUES ('outbox_pos', 0);

-- Items a receiver refused for good, until redriven.
CREATE TABLE dead_letters (
    destination_id INTEGER NOT NULL,
    pos            INTEGER NOT NULL,
    status         INTEGER NOT NULL,
    response       TEXT NOT NULL,   -- the first KiB of the answer
    failed_at      INTEGER NOT NULL,
    redrive        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (destination_id, pos)
) WITHOUT ROWID;
"#,
    r#"
-- User ids are never reused, as event ids: the outbox names a user by its id, and a new
-- user taking the id of a deleted one (the newest) would take its undelivered items with
-- it (a later deletion or merge of the new user would drop or move the first one's
-- `user.delete`). AUTOINCREMENT needs the table rebuilt; the counter starts past every id
-- the outbox names.
CREATE TABLE users_v4 (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id   INTEGER NOT NULL,
    user_key     TEXT NOT NULL,
    user_id      TEXT,
    email        TEXT,
    phone_number TEXT,
    channels     TEXT NOT NULL DEFAULT '[]',
    properties   TEXT NOT NULL DEFAULT '{}',
    tags         TEXT NOT NULL DEFAULT '[]',
    subscribed   INTEGER NOT NULL DEFAULT 1,
    first_seen   INTEGER NOT NULL,
    last_seen    INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    UNIQUE (project_id, user_key)
);
INSERT INTO users_v4 (id, project_id, user_key, user_id, email, phone_number, channels,
                      properties, tags, subscribed, first_seen, last_seen, created_at,
                      updated_at)
    SELECT id, project_id, user_key, user_id, email, phone_number, channels, properties, tags,
           subscribed, first_seen, last_seen, created_at, updated_at FROM users;
DROP TABLE users;
ALTER TABLE users_v4 RENAME TO users;
CREATE INDEX users_by_email ON users(project_id, email) WHERE email IS NOT NULL;
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'users', coalesce((SELECT max(user_ref) FROM outbox), 0)
    WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'users');
UPDATE sqlite_sequence SET seq = max(seq, coalesce((SELECT max(user_ref) FROM outbox), 0))
    WHERE name = 'users';
"#,
    r#"
-- Segment messageIds received within the window (DESIGN §9; `sqlite/messages.rs`). Each is
-- appended to the log in the transaction of what it protects (the writer indexes the log in
-- memory); the oldest move, sorted, to the B-tree. `epoch` is the receive time divided by
-- the window (`meta` message_id_epoch_micros), so a lookup probes two epochs and expiry
-- deletes whole epochs from the left of the tree; `key` is a hash of project and messageId,
-- never the id.
CREATE TABLE message_log (
    id          INTEGER PRIMARY KEY,
    key         BLOB NOT NULL,
    received_at INTEGER NOT NULL
);
CREATE TABLE message_ids (
    epoch       INTEGER NOT NULL,
    key         BLOB NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (epoch, key)
) WITHOUT ROWID;
"#,
    r#"
-- Suppressed users (DESIGN §10; `sqlite/privacy.rs`): keyed hashes of the identifiers a
-- suppression covers, never the identifiers; `origin` is the hash of the key it was made
-- for, so unsuppressing it lifts every hash it kept.
CREATE TABLE suppressions (
    project_id INTEGER NOT NULL,
    hash       BLOB NOT NULL,
    origin     BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (project_id, hash, origin)
) WITHOUT ROWID;
CREATE INDEX suppressions_by_origin ON suppressions(project_id, origin);

-- Administrative acts: never deleted with what they record (a user is named by hash).
CREATE TABLE audit (
    id         INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL,
    at         INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL
);
CREATE INDEX audit_by_project ON audit(project_id, id);

-- Retention (DESIGN §10): how long a project keeps its events (µs of receive time; NULL:
-- for ever); the counts of the events it deleted, per hour and event key, so the
-- statistics keep them.
ALTER TABLE projects ADD COLUMN retention INTEGER;
CREATE TABLE stats_rollup (
    project_id INTEGER NOT NULL,
    hour       INTEGER NOT NULL,
    event_key  TEXT NOT NULL,
    count      INTEGER NOT NULL,
    PRIMARY KEY (project_id, hour, event_key)
) WITHOUT ROWID;
"#,
];

/// Brings the database to the latest schema, each step in its own transaction. Safe to run
/// from several processes at once: the first takes the write lock, the others then see the
/// new version and skip.
pub(crate) fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    for (version, sql) in MIGRATIONS.iter().enumerate() {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let current: usize = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if current <= version {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", version + 1)?;
        }
        tx.commit()?;
    }
    Ok(())
}
