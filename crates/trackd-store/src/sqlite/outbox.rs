//! The outbox on SQLite (DESIGN §8): items appended by the writer in the transaction that
//! commits them, destinations with their cursors, dead letters. Positions come from one
//! counter the single writer owns (`meta.outbox_pos`), so position order is commit order.

use std::collections::HashSet;

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};
use trackd_core::delivery::{
    DeliveryReport, Destination, DestinationChange, DestinationSpec, ItemKind, OutboxItem,
    BACKLOG_COUNTED, MAX_DESTINATIONS,
};
use trackd_core::read::PageBudget;
use trackd_core::{FieldError, ProjectId, StoreError};

use super::read::EVENT_COLUMNS;
use super::unavailable;

/// What the writer needs to append items: which projects have destinations (only their
/// commits write items) and the next position.
#[derive(Debug, Default, Clone)]
pub(crate) struct OutboxState {
    projects: HashSet<i64>,
    /// The last position handed out.
    last_pos: i64,
    /// Whether this batch handed out positions (then `meta.outbox_pos` is written).
    moved: bool,
}

impl OutboxState {
    /// Reads the state as committed.
    pub fn load(conn: &Connection) -> rusqlite::Result<Self> {
        let mut stmt = conn.prepare_cached("SELECT DISTINCT project_id FROM destinations")?;
        let projects = stmt
            .query_map([], |r| r.get::<_, i64>(0))?
            .collect::<Result<HashSet<_>, _>>()?;
        Ok(OutboxState {
            projects,
            last_pos: last_pos(conn)?,
            moved: false,
        })
    }

    /// Whether the project's commits write items.
    pub fn wanted(&self, project: ProjectId) -> bool {
        !self.projects.is_empty() && self.projects.contains(&project.get())
    }

    /// Appends an item (when its project has destinations).
    #[allow(clippy::too_many_arguments)] // an item's columns, one argument each
    pub fn append(
        &mut self,
        tx: &Transaction<'_>,
        project: ProjectId,
        kind: ItemKind,
        user_ref: i64,
        event_id: Option<i64>,
        body: Option<&str>,
        received_at: i64,
    ) -> rusqlite::Result<()> {
        if !self.wanted(project) {
            return Ok(());
        }
        self.last_pos += 1;
        self.moved = true;
        tx.prepare_cached(
            "INSERT INTO outbox (project_id, pos, user_ref, kind, event_id, body, received_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            project.get(),
            self.last_pos,
            user_ref,
            kind.code(),
            event_id,
            body,
            received_at
        ])?;
        Ok(())
    }

    /// Records the last position handed out, at the end of a batch that handed some out.
    pub fn finish(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        if self.moved {
            tx.prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'outbox_pos'")?
                .execute([self.last_pos])?;
            self.moved = false;
        }
        Ok(())
    }
}

fn last_pos(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT value FROM meta WHERE key = 'outbox_pos'", [], |r| {
        r.get(0)
    })
}

/// A deleted user's undelivered profile changes go with it, and their dead letters (which
/// could never be redriven nor cleared without their item); its events' items point at
/// events that are gone, and are skipped.
pub(crate) fn forget_user(tx: &Transaction<'_>, user_ref: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "DELETE FROM dead_letters WHERE EXISTS (\
           SELECT 1 FROM outbox o JOIN destinations d ON d.project_id = o.project_id \
           WHERE o.user_ref = ?1 AND o.body IS NOT NULL \
             AND d.id = dead_letters.destination_id AND o.pos = dead_letters.pos)",
    )?
    .execute([user_ref])?;
    tx.prepare_cached("DELETE FROM outbox WHERE user_ref = ?1 AND body IS NOT NULL")?
        .execute([user_ref])?;
    Ok(())
}

/// A merged user's undelivered profile changes follow it into the user it merged into.
pub(crate) fn merge_user(tx: &Transaction<'_>, from: i64, into: i64) -> rusqlite::Result<()> {
    tx.prepare_cached("UPDATE outbox SET user_ref = ?2 WHERE user_ref = ?1 AND body IS NOT NULL")?
        .execute([from, into])?;
    Ok(())
}

const DESTINATION_COLUMNS: &str = "d.id, d.project_id, p.name, d.name, d.kind, d.settings, \
    d.secret, d.paused, d.cursor, d.pending_to, d.generation, d.delivered, d.last_error, \
    d.created_at, \
    (SELECT count(*) FROM dead_letters x WHERE x.destination_id = d.id), \
    (SELECT count(*) FROM dead_letters x WHERE x.destination_id = d.id AND x.redrive = 1)";

fn destination(r: &Row<'_>) -> rusqlite::Result<Option<Destination>> {
    let name: String = r.get(3)?;
    let kind: String = r.get(4)?;
    let settings: String = r.get(5)?;
    let Some(spec) = DestinationSpec::from_stored(&name, &kind, &settings) else {
        tracing::error!(destination = %name, "stored destination settings do not read");
        return Ok(None);
    };
    Ok(Some(Destination {
        id: r.get(0)?,
        project: ProjectId::new(r.get(1)?),
        project_name: r.get(2)?,
        spec,
        secret: r.get(6)?,
        paused: r.get(7)?,
        cursor: r.get(8)?,
        pending_to: r.get(9)?,
        generation: r.get(10)?,
        delivered: r.get(11)?,
        last_error: r.get(12)?,
        created_at: r.get(13)?,
        dead_letters: r.get(14)?,
        redrive_pending: r.get(15)?,
        backlog: 0,
        oldest_undelivered: None,
    }))
}

/// Every destination (of one project), with its backlog when asked.
pub(crate) fn destinations(
    conn: &Connection,
    project: Option<ProjectId>,
    with_backlog: bool,
) -> rusqlite::Result<Vec<Destination>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {DESTINATION_COLUMNS} FROM destinations d JOIN projects p ON p.id = d.project_id \
         WHERE ?1 IS NULL OR d.project_id = ?1 ORDER BY p.name, d.name"
    ))?;
    let mut out: Vec<Destination> = stmt
        .query_map([project.map(ProjectId::get)], destination)?
        .filter_map(|d| d.transpose())
        .collect::<Result<_, _>>()?;
    if with_backlog {
        // Bounded: a count up to BACKLOG_COUNTED, and the first item's receive time (an
        // index seek), however large a backlog grows.
        let mut count = conn.prepare_cached(
            "SELECT (SELECT count(*) FROM (SELECT 1 FROM outbox \
                     WHERE project_id = ?1 AND pos > ?2 LIMIT ?3)), \
                    (SELECT received_at FROM outbox WHERE project_id = ?1 AND pos > ?2 \
                     ORDER BY pos LIMIT 1)",
        )?;
        for d in &mut out {
            (d.backlog, d.oldest_undelivered) = count
                .query_row(params![d.project.get(), d.cursor, BACKLOG_COUNTED], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
        }
    }
    Ok(out)
}

/// Creates a destination at the end of its project's outbox.
pub(crate) fn add_destination(
    conn: &mut Connection,
    now: i64,
    project: ProjectId,
    spec: &DestinationSpec,
    secret: &str,
) -> Result<Destination, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(unavailable)?;
    let taken: Vec<String> = {
        let mut stmt = tx
            .prepare("SELECT name FROM destinations WHERE project_id = ?1")
            .map_err(unavailable)?;
        let names = stmt
            .query_map([project.get()], |r| r.get(0))
            .map_err(unavailable)?;
        names.collect::<Result<_, _>>().map_err(unavailable)?
    };
    if taken.contains(&spec.name) {
        return Err(StoreError::Conflict(format!("destination {}", spec.name)));
    }
    if taken.len() >= MAX_DESTINATIONS {
        return Err(StoreError::Invalid(FieldError::new(
            "name",
            format!("a project has at most {MAX_DESTINATIONS} destinations"),
        )));
    }
    // Under the write lock: every item committed before is behind the cursor, every one
    // committed after (the writer sees this commit before its next batch) is ahead of it.
    let cursor = last_pos(&tx).map_err(unavailable)?;
    tx.execute(
        "INSERT INTO destinations (project_id, name, kind, settings, secret, cursor, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            project.get(),
            spec.name,
            spec.kind.as_str(),
            spec.settings_json(),
            secret,
            cursor,
            now
        ],
    )
    .map_err(unavailable)?;
    let id = tx.last_insert_rowid();
    let added = tx
        .query_row(
            &format!(
                "SELECT {DESTINATION_COLUMNS} FROM destinations d \
                 JOIN projects p ON p.id = d.project_id WHERE d.id = ?1"
            ),
            [id],
            destination,
        )
        .map_err(unavailable)?
        .ok_or_else(|| StoreError::unavailable(trackd_core::error::Cause("destination lost")))?;
    tx.commit().map_err(unavailable)?;
    Ok(added)
}

/// An operator's change.
pub(crate) fn change_destination(
    conn: &mut Connection,
    project: ProjectId,
    name: &str,
    change: &DestinationChange,
) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(unavailable)?;
    let found: Option<(i64, i64)> = tx
        .query_row(
            "SELECT id, cursor FROM destinations WHERE project_id = ?1 AND name = ?2",
            params![project.get(), name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(unavailable)?;
    let Some((id, cursor)) = found else {
        return Err(StoreError::NotFound(format!("destination {name}")));
    };
    let run = |sql: &str, p: &[&dyn rusqlite::ToSql]| tx.execute(sql, p).map_err(unavailable);
    match change {
        DestinationChange::Pause => {
            run(
                "UPDATE destinations SET paused = 'paused by an operator' WHERE id = ?1",
                &[&id],
            )?;
        }
        DestinationChange::Resume => {
            run(
                "UPDATE destinations SET paused = NULL, last_error = NULL WHERE id = ?1",
                &[&id],
            )?;
        }
        DestinationChange::Remove => {
            run("DELETE FROM dead_letters WHERE destination_id = ?1", &[&id])?;
            run("DELETE FROM destinations WHERE id = ?1", &[&id])?;
        }
        DestinationChange::Replay { since } => {
            let first: Option<i64> = tx
                .query_row(
                    "SELECT min(pos) FROM outbox WHERE project_id = ?1 AND received_at >= ?2",
                    params![project.get(), since],
                    |r| r.get(0),
                )
                .map_err(unavailable)?;
            let to = first.map_or(cursor, |p| cursor.min(p - 1));
            run(
                "UPDATE destinations SET cursor = ?2, pending_to = 0, \
                 generation = generation + 1 WHERE id = ?1",
                &[&id, &to],
            )?;
        }
        DestinationChange::Redrive => {
            run(
                "UPDATE dead_letters SET redrive = 1 WHERE destination_id = ?1",
                &[&id],
            )?;
        }
    }
    tx.commit().map_err(unavailable)
}

/// An item's own columns, after the event's (`read::EVENT_COLUMNS`, from a LEFT JOIN: all
/// NULL when the event is gone).
const ITEM_COLUMNS: &str = "o.pos, o.kind, o.user_ref, o.received_at, o.body";

fn item(r: &Row<'_>) -> rusqlite::Result<Option<OutboxItem>> {
    let Some(kind) = ItemKind::from_code(r.get(10)?) else {
        return Ok(None);
    };
    let event = match r.get::<_, Option<i64>>(0)? {
        Some(_) => Some(super::read::event_row(r)?),
        None => None,
    };
    Ok(Some(OutboxItem {
        pos: r.get(9)?,
        kind,
        user_ref: r.get(11)?,
        received_at: r.get(12)?,
        event,
        body: r.get(13)?,
    }))
}

/// Items of a project after a position.
pub(crate) fn items(
    conn: &Connection,
    project: ProjectId,
    after: i64,
    limit: usize,
) -> rusqlite::Result<Vec<OutboxItem>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS}, {ITEM_COLUMNS} FROM outbox o \
         LEFT JOIN events e ON e.id = o.event_id LEFT JOIN users u ON u.id = e.user_ref \
         WHERE o.project_id = ?1 AND o.pos > ?2 ORDER BY o.pos LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![project.get(), after, limit as i64], item)?;
    // Rows are stepped lazily: past the byte budget the rest is never read.
    Ok(PageBudget::fill(limit, rows.filter_map(|r| r.transpose()), OutboxItem::bytes)?.0)
}

/// Dead letters marked for redrive.
pub(crate) fn redrive_items(
    conn: &Connection,
    destination: i64,
    limit: usize,
) -> rusqlite::Result<Vec<OutboxItem>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS}, {ITEM_COLUMNS} FROM dead_letters x \
         JOIN destinations d ON d.id = x.destination_id \
         JOIN outbox o ON o.project_id = d.project_id AND o.pos = x.pos \
         LEFT JOIN events e ON e.id = o.event_id LEFT JOIN users u ON u.id = e.user_ref \
         WHERE x.destination_id = ?1 AND x.redrive = 1 ORDER BY x.pos LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![destination, limit as i64], item)?;
    Ok(PageBudget::fill(limit, rows.filter_map(|r| r.transpose()), OutboxItem::bytes)?.0)
}

/// A destination's dead letters after `after`, in position order.
pub(crate) fn dead_letters(
    conn: &Connection,
    project: ProjectId,
    destination: i64,
    after: i64,
    limit: usize,
) -> rusqlite::Result<Vec<trackd_core::delivery::DeadLetter>> {
    conn.prepare_cached(
        "SELECT pos, status, response, failed_at, redrive FROM dead_letters \
         WHERE destination_id = ?1 AND pos > ?2 \
           AND ?1 IN (SELECT id FROM destinations WHERE project_id = ?4) \
         ORDER BY pos LIMIT ?3",
    )?
    .query_map(
        params![destination, after, limit as i64, project.get()],
        |r| {
            Ok(trackd_core::delivery::DeadLetter {
                pos: r.get(0)?,
                status: r.get(1)?,
                response: r.get(2)?,
                failed_at: r.get(3)?,
                redrive: r.get(4)?,
            })
        },
    )?
    .collect()
}

/// Applies a delivery report in the writer's transaction; `false` when the destination
/// moved on (another generation, another lease holder, removed), or when the report
/// announces a batch to send (`pending_to` > 0) and the destination is paused.
pub(crate) fn report(tx: &Transaction<'_>, r: &DeliveryReport, now: i64) -> rusqlite::Result<bool> {
    let current: Option<(i64, Option<String>, bool)> = tx
        .prepare_cached(
            "SELECT generation, lease_owner, paused IS NOT NULL FROM destinations WHERE id = ?1",
        )?
        .query_row([r.destination], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()?;
    let Some((generation, owner, paused)) = current else {
        return Ok(false);
    };
    let announces = r.pending_to.is_some_and(|p| p > 0);
    if generation != r.generation
        || owner.as_deref() != Some(r.node.as_str())
        || (paused && announces)
    {
        return Ok(false);
    }
    let (set_error, error) = match &r.last_error {
        Some(e) => (true, e.clone()),
        None => (false, None),
    };
    tx.prepare_cached(
        "UPDATE destinations SET cursor = max(cursor, coalesce(?2, cursor)), \
           pending_to = coalesce(?3, pending_to), delivered = delivered + ?4, \
           last_error = CASE WHEN ?5 THEN ?6 ELSE last_error END, \
           paused = coalesce(?7, paused) \
         WHERE id = ?1",
    )?
    .execute(params![
        r.destination,
        r.cursor,
        r.pending_to,
        r.delivered,
        set_error,
        error,
        r.pause
    ])?;
    let mut forget =
        tx.prepare_cached("DELETE FROM dead_letters WHERE destination_id = ?1 AND pos = ?2")?;
    for pos in &r.redriven {
        forget.execute([r.destination, *pos])?;
    }
    // Only for an item still there: one deleted meanwhile (with its user) is not retried.
    let mut dead = tx.prepare_cached(
        "INSERT INTO dead_letters (destination_id, pos, status, response, failed_at) \
         SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (\
           SELECT 1 FROM outbox o JOIN destinations d ON d.project_id = o.project_id \
           WHERE d.id = ?1 AND o.pos = ?2) \
         ON CONFLICT (destination_id, pos) DO UPDATE \
         SET status = excluded.status, response = excluded.response, \
             failed_at = excluded.failed_at, redrive = 0",
    )?;
    for (pos, status, response) in &r.dead {
        dead.execute(params![r.destination, pos, status, response, now])?;
    }
    Ok(true)
}

/// Takes or renews a lease.
pub(crate) fn lease(
    tx: &Transaction<'_>,
    destination: i64,
    node: &str,
    ttl_ms: i64,
    now: i64,
) -> rusqlite::Result<bool> {
    let changed = tx
        .prepare_cached(
            "UPDATE destinations SET lease_owner = ?2, lease_until = ?3 \
             WHERE id = ?1 AND (lease_owner = ?2 OR lease_owner IS NULL OR lease_until < ?4)",
        )?
        .execute(params![destination, node, now + ttl_ms * 1000, now])?;
    Ok(changed == 1)
}

/// Items deleted per statement while pruning: keeps each write short.
const PRUNE_CHUNK: i64 = 5_000;

/// Deletes up to [`PRUNE_CHUNK`] passed items per project.
pub(crate) fn prune(tx: &Transaction<'_>, cutoff: i64) -> rusqlite::Result<u64> {
    let projects: Vec<(i64, Option<i64>)> = {
        let mut stmt = tx.prepare_cached(
            "SELECT p.id, (SELECT min(cursor) FROM destinations d WHERE d.project_id = p.id) \
             FROM projects p",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut deleted = 0u64;
    let mut stmt = tx.prepare_cached(
        "DELETE FROM outbox WHERE project_id = ?1 AND pos IN (\
           SELECT pos FROM outbox WHERE project_id = ?1 AND pos <= ?2 AND received_at < ?3 \
             AND NOT EXISTS (SELECT 1 FROM dead_letters x JOIN destinations d \
                             ON d.id = x.destination_id \
                             WHERE d.project_id = ?1 AND x.pos = outbox.pos) \
           ORDER BY pos LIMIT ?4)",
    )?;
    for (project, horizon) in projects {
        let horizon = horizon.unwrap_or(i64::MAX);
        deleted += stmt.execute(params![project, horizon, cutoff, PRUNE_CHUNK])? as u64;
    }
    Ok(deleted)
}
