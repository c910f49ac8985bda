//! The outbox on PostgreSQL (DESIGN §8): items appended by the writers in the transaction
//! that commits them, destinations with their cursors, dead letters; the same answers as
//! `sqlite/outbox.rs`.
//!
//! SQLite has one writer and hands out positions itself. Here every node's writers commit
//! at once, so positions come from a sequence, and two advisory locks per project make
//! position order commit order within each project (a reader at `pos > cursor` never skips
//! an item committed later with a smaller position):
//!
//! - [`WRITE_LOCK`], shared by every writer transaction of the project from its start to its
//!   commit, before it reads which projects have destinations; taken exclusively by
//!   [`add_destination`], which thereby waits for every transaction that could not see the
//!   new destination and is waited for by every one that will. Its cursor, the project's
//!   last committed position, is then exactly the line between the two.
//! - [`ORDER_LOCK`], taken exclusively by a writer transaction from when it draws its
//!   positions (the batch's last statement) to its commit: positions of the project are
//!   drawn and committed one transaction at a time, in order.
//!
//! Delivery's own writes (reports, leases, pruning, operators' changes) are short
//! transactions on a pooled connection, never through the writers.

use std::collections::HashSet;

use deadpool_postgres::{Client, Transaction};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, Row};
use trackd_core::delivery::{
    DeliveryReport, Destination, DestinationChange, DestinationSpec, ItemKind, OutboxItem,
    MAX_DESTINATIONS,
};
use trackd_core::error::Cause;
use trackd_core::{FieldError, ProjectId, StoreError};

use super::read::EVENT_COLUMNS;
use super::unavailable;

/// Advisory lock namespace of a project's writer transactions (shared) and of adding a
/// destination to it (exclusive).
pub(super) const WRITE_LOCK: i32 = 0x7472_6b01;
/// Advisory lock namespace of drawing and committing a project's positions (exclusive).
pub(super) const ORDER_LOCK: i32 = 0x7472_6b02;

/// A project's advisory lock key in either namespace. Ids past `i32::MAX` wrap around: two
/// projects sharing a key only wait for each other a little more.
pub(super) fn lock_key(project: i64) -> i32 {
    project.rem_euclid(1 << 31) as i32
}

/// Sorted distinct lock keys of projects: every transaction locks in this order.
fn lock_keys(projects: impl IntoIterator<Item = i64>) -> Vec<i32> {
    let mut keys: Vec<i32> = projects.into_iter().map(lock_key).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// An item of the batch being written, given its position at the batch's end.
#[derive(Debug)]
struct Item {
    project: i64,
    user_ref: i64,
    kind: ItemKind,
    event_id: Option<i64>,
    body: Option<String>,
    received_at: i64,
}

/// What a writer transaction appends to the outbox: which of its projects have
/// destinations (only their commits write items), and its items in arrival order.
#[derive(Debug, Default)]
pub(super) struct Pending {
    wanted: HashSet<i64>,
    /// Which of its projects have suppressed users (read with `wanted`).
    suppressing: HashSet<i64>,
    items: Vec<Item>,
}

impl Pending {
    /// At the start of a writer transaction, before any write: takes the projects' write
    /// locks (shared), then reads which of them have destinations, in a statement of its own
    /// so that it sees every destination added before the locks were granted.
    pub async fn start(
        tx: &Transaction<'_>,
        projects: impl IntoIterator<Item = i64>,
    ) -> Result<Self, Error> {
        let mut projects: Vec<i64> = projects.into_iter().collect();
        projects.sort_unstable();
        projects.dedup();
        if projects.is_empty() {
            return Ok(Pending::default());
        }
        let lock = tx
            .prepare_cached(
                "SELECT pg_advisory_xact_lock_shared($1, k) \
                 FROM unnest($2::int4[]) WITH ORDINALITY AS x(k, o) ORDER BY o",
            )
            .await?;
        // In the same statement: which of them have suppressed users (`privacy.rs`).
        let read = tx
            .prepare_cached(
                "SELECT DISTINCT project_id, true FROM destinations WHERE project_id = ANY($1) \
                 UNION ALL \
                 SELECT p, false FROM unnest($1::bigint[]) AS p \
                 WHERE EXISTS (SELECT 1 FROM suppressions s WHERE s.project_id = p)",
            )
            .await?;
        // Pipelined: both are sent at once, and the server runs the read after the locks
        // are held, with a snapshot of its own (READ COMMITTED), so it sees every commit
        // that held them exclusively.
        let keys = lock_keys(projects.iter().copied());
        let (lock_params, read_params): ([&(dyn ToSql + Sync); 2], [&(dyn ToSql + Sync); 1]) =
            ([&WRITE_LOCK, &keys], [&projects]);
        let (_, rows) = tokio::try_join!(
            tx.execute(&lock, &lock_params),
            tx.query(&read, &read_params)
        )?;
        let (mut wanted, mut suppressing) = (HashSet::new(), HashSet::new());
        for row in rows {
            let project: i64 = row.try_get(0)?;
            if row.try_get::<_, bool>(1)? {
                wanted.insert(project);
            } else {
                suppressing.insert(project);
            }
        }
        Ok(Pending {
            wanted,
            suppressing,
            items: Vec::new(),
        })
    }

    /// Whether any of the batch's projects has suppressed users.
    pub fn any_suppressing(&self) -> bool {
        !self.suppressing.is_empty()
    }

    /// Whether the project has suppressed users.
    pub fn suppressing(&self, project: ProjectId) -> bool {
        self.suppressing.contains(&project.get())
    }

    /// Whether the project's commits write items.
    pub fn wanted(&self, project: ProjectId) -> bool {
        self.wanted.contains(&project.get())
    }

    /// An accepted event (when its project has destinations).
    pub fn event(
        &mut self,
        project: ProjectId,
        user_ref: i64,
        event_id: i64,
        identity: &trackd_core::Identity,
        received_at: i64,
    ) {
        if self.wanted(project) {
            self.items.push(Item {
                project: project.get(),
                user_ref,
                kind: ItemKind::Event,
                event_id: Some(event_id),
                body: Some(trackd_core::delivery::event_identity(identity)),
                received_at,
            });
        }
    }

    /// A profile change that changed something (when its project has destinations).
    pub fn change(
        &mut self,
        project: ProjectId,
        user_ref: i64,
        kind: ItemKind,
        body: String,
        received_at: i64,
    ) {
        if self.wanted(project) {
            self.items.push(Item {
                project: project.get(),
                user_ref,
                kind,
                event_id: None,
                body: Some(body),
                received_at,
            });
        }
    }

    /// Appends the items, if any: takes the order locks of their projects (sorted), then
    /// draws their positions in arrival order, in one statement. Must be the transaction's
    /// last statement before its commit: the order locks are held until then.
    pub async fn write(self, tx: &Transaction<'_>) -> Result<(), Error> {
        if self.items.is_empty() {
            return Ok(());
        }
        let lock = tx
            .prepare_cached(
                "SELECT pg_advisory_xact_lock($1, k) \
                 FROM unnest($2::int4[]) WITH ORDINALITY AS x(k, o) ORDER BY o",
            )
            .await?;
        tx.execute(
            &lock,
            &[
                &ORDER_LOCK,
                &lock_keys(self.items.iter().map(|i| i.project)),
            ],
        )
        .await?;
        let n = self.items.len();
        let (mut projects, mut users, mut kinds) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut events, mut bodies, mut received) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for item in &self.items {
            projects.push(item.project);
            users.push(item.user_ref);
            kinds.push(item.kind.code() as i16);
            events.push(item.event_id);
            bodies.push(item.body.as_deref());
            received.push(item.received_at);
        }
        let insert = tx
            .prepare_cached(
                "INSERT INTO outbox (project_id, pos, user_ref, kind, event_id, body, \
                                     received_at) \
                 SELECT p, nextval('outbox_pos'), u, k, e, b, r \
                 FROM unnest($1::bigint[], $2::bigint[], $3::int2[], $4::bigint[], \
                             $5::text[], $6::bigint[]) WITH ORDINALITY \
                   AS x(p, u, k, e, b, r, o) \
                 ORDER BY o",
            )
            .await?;
        tx.execute(
            &insert,
            &[&projects, &users, &kinds, &events, &bodies, &received],
        )
        .await?;
        Ok(())
    }
}

/// A deleted user's undelivered profile changes go with it, committed ones (and their dead
/// letters, which could never be redriven nor cleared without their item) and this
/// batch's; its events' items point at events that are gone, and are skipped.
///
/// The items first, then (a statement of its own, so it sees what committed meanwhile)
/// their dead letters: a report recording one locks its item first (see [`report`]), so
/// either it commits before the items are deleted and its dead letter is seen here, or it
/// finds the item gone.
pub(super) async fn forget_user(
    tx: &tokio_postgres::Transaction<'_>,
    pending: &mut Pending,
    user_ref: i64,
) -> Result<(), Error> {
    let gone = tx
        .query(
            "DELETE FROM outbox WHERE user_ref = $1 AND body IS NOT NULL \
             RETURNING project_id, pos",
            &[&user_ref],
        )
        .await?;
    if !gone.is_empty() {
        let mut projects = Vec::with_capacity(gone.len());
        let mut positions = Vec::with_capacity(gone.len());
        for row in &gone {
            projects.push(row.try_get::<_, i64>(0)?);
            positions.push(row.try_get::<_, i64>(1)?);
        }
        tx.execute(
            "DELETE FROM dead_letters x USING destinations d, \
               unnest($1::bigint[], $2::bigint[]) AS g(p, pos) \
             WHERE d.id = x.destination_id AND d.project_id = g.p AND x.pos = g.pos",
            &[&projects, &positions],
        )
        .await?;
    }
    pending
        .items
        .retain(|i| i.user_ref != user_ref || i.body.is_none());
    Ok(())
}

/// A merged user's undelivered profile changes follow it into the user it merged into.
pub(super) async fn merge_user(
    tx: &tokio_postgres::Transaction<'_>,
    pending: &mut Pending,
    from: i64,
    into: i64,
) -> Result<(), Error> {
    tx.execute(
        "UPDATE outbox SET user_ref = $2 WHERE user_ref = $1 AND body IS NOT NULL",
        &[&from, &into],
    )
    .await?;
    for item in &mut pending.items {
        if item.user_ref == from && item.body.is_some() {
            item.user_ref = into;
        }
    }
    Ok(())
}

const DESTINATION_COLUMNS: &str = "d.id, d.project_id, p.name, d.name, d.kind, d.settings, \
    d.secret, d.paused, d.cursor, d.pending_to, d.generation, d.delivered, d.last_error, \
    d.created_at, \
    (SELECT count(*) FROM dead_letters x WHERE x.destination_id = d.id), \
    (SELECT count(*) FROM dead_letters x WHERE x.destination_id = d.id AND x.redrive)";

fn destination(r: &Row) -> Result<Option<Destination>, Error> {
    let name: String = r.try_get(3)?;
    let kind: &str = r.try_get(4)?;
    let settings: &str = r.try_get(5)?;
    let Some(spec) = DestinationSpec::from_stored(&name, kind, settings) else {
        tracing::error!(destination = %name, "stored destination settings do not read");
        return Ok(None);
    };
    Ok(Some(Destination {
        id: r.try_get(0)?,
        project: ProjectId::new(r.try_get(1)?),
        project_name: r.try_get(2)?,
        spec,
        secret: r.try_get(6)?,
        paused: r.try_get(7)?,
        cursor: r.try_get(8)?,
        pending_to: r.try_get(9)?,
        generation: r.try_get(10)?,
        delivered: r.try_get(11)?,
        last_error: r.try_get(12)?,
        created_at: r.try_get(13)?,
        dead_letters: r.try_get(14)?,
        redrive_pending: r.try_get(15)?,
        backlog: 0,
        oldest_undelivered: None,
    }))
}

/// Every destination (of one project), with its backlog when asked.
pub(super) async fn destinations(
    client: &Client,
    project: Option<ProjectId>,
    with_backlog: bool,
) -> Result<Vec<Destination>, Error> {
    let list = client
        .prepare_cached(&format!(
            "SELECT {DESTINATION_COLUMNS} FROM destinations d \
             JOIN projects p ON p.id = d.project_id \
             WHERE $1::bigint IS NULL OR d.project_id = $1 \
             ORDER BY p.name COLLATE \"C\", d.name COLLATE \"C\""
        ))
        .await?;
    let mut out = Vec::new();
    for row in client.query(&list, &[&project.map(ProjectId::get)]).await? {
        out.extend(destination(&row)?);
    }
    if with_backlog {
        let count = client
            .prepare_cached(
                "SELECT (SELECT count(*) FROM (SELECT 1 FROM outbox \
                         WHERE project_id = $1 AND pos > $2 LIMIT $3) AS b), \
                        (SELECT received_at FROM outbox WHERE project_id = $1 AND pos > $2 \
                         ORDER BY pos LIMIT 1)",
            )
            .await?;
        for d in &mut out {
            let row = client
                .query_one(
                    &count,
                    &[
                        &d.project.get(),
                        &d.cursor,
                        &trackd_core::delivery::BACKLOG_COUNTED,
                    ],
                )
                .await?;
            d.backlog = row.try_get(0)?;
            d.oldest_undelivered = row.try_get(1)?;
        }
    }
    Ok(out)
}

/// Creates a destination at the end of its project's outbox.
pub(super) async fn add_destination(
    client: &mut Client,
    now: i64,
    project: ProjectId,
    spec: &DestinationSpec,
    secret: &str,
) -> Result<Destination, StoreError> {
    let tx = client.transaction().await.map_err(unavailable)?;
    // Exclusive: granted once every writer transaction of the project in flight (which
    // did not see this destination) has committed; new ones wait for this commit and see it.
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&WRITE_LOCK, &lock_key(project.get())],
    )
    .await
    .map_err(unavailable)?;
    let taken: Vec<String> = tx
        .query(
            "SELECT name FROM destinations WHERE project_id = $1",
            &[&project.get()],
        )
        .await
        .map_err(unavailable)?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(unavailable)?;
    if taken.contains(&spec.name) {
        return Err(StoreError::Conflict(format!("destination {}", spec.name)));
    }
    if taken.len() >= MAX_DESTINATIONS {
        return Err(StoreError::Invalid(FieldError::new(
            "name",
            format!("a project has at most {MAX_DESTINATIONS} destinations"),
        )));
    }
    // This statement's snapshot is taken under the lock: it sees every item of the project
    // committed before, and every one committed after draws a larger position (the
    // sequence never goes back, nor hands a value out twice).
    let row = tx
        .query_one(
            &format!(
                "WITH added AS ( \
                   INSERT INTO destinations \
                     (project_id, name, kind, settings, secret, cursor, created_at) \
                   VALUES ($1, $2, $3, $4, $5, \
                     (SELECT COALESCE(max(pos), 0) FROM outbox WHERE project_id = $1), $6) \
                   RETURNING * ) \
                 SELECT {DESTINATION_COLUMNS} FROM added d \
                 JOIN projects p ON p.id = d.project_id"
            ),
            &[
                &project.get(),
                &spec.name,
                &spec.kind.as_str(),
                &spec.settings_json(),
                &secret,
                &now,
            ],
        )
        .await
        .map_err(unavailable)?;
    let added = destination(&row)
        .map_err(unavailable)?
        .ok_or_else(|| StoreError::unavailable(Cause("destination lost")))?;
    tx.commit().await.map_err(unavailable)?;
    Ok(added)
}

/// An operator's change.
pub(super) async fn change_destination(
    client: &mut Client,
    project: ProjectId,
    name: &str,
    change: &DestinationChange,
) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(unavailable)?;
    let found = tx
        .query_opt(
            "SELECT id, cursor FROM destinations WHERE project_id = $1 AND name = $2 \
             FOR UPDATE",
            &[&project.get(), &name],
        )
        .await
        .map_err(unavailable)?;
    let Some(found) = found else {
        return Err(StoreError::NotFound(format!("destination {name}")));
    };
    let (id, cursor): (i64, i64) = (
        found.try_get(0).map_err(unavailable)?,
        found.try_get(1).map_err(unavailable)?,
    );
    let run = |sql: &'static str| {
        let tx = &tx;
        async move { tx.execute(sql, &[&id]).await.map_err(unavailable) }
    };
    match change {
        DestinationChange::Pause => {
            run("UPDATE destinations SET paused = 'paused by an operator' WHERE id = $1").await?;
        }
        DestinationChange::Resume => {
            run("UPDATE destinations SET paused = NULL, last_error = NULL WHERE id = $1").await?;
        }
        DestinationChange::Remove => {
            run("DELETE FROM dead_letters WHERE destination_id = $1").await?;
            run("DELETE FROM destinations WHERE id = $1").await?;
        }
        DestinationChange::Replay { since } => {
            let first: Option<i64> = tx
                .query_one(
                    "SELECT min(pos) FROM outbox WHERE project_id = $1 AND received_at >= $2",
                    &[&project.get(), since],
                )
                .await
                .map_err(unavailable)?
                .try_get(0)
                .map_err(unavailable)?;
            let to = first.map_or(cursor, |p| cursor.min(p - 1));
            tx.execute(
                "UPDATE destinations SET cursor = $2, pending_to = 0, \
                 generation = generation + 1 WHERE id = $1",
                &[&id, &to],
            )
            .await
            .map_err(unavailable)?;
        }
        DestinationChange::Redrive => {
            run("UPDATE dead_letters SET redrive = TRUE WHERE destination_id = $1").await?;
        }
    }
    tx.commit().await.map_err(unavailable)
}

/// An item's own columns, after the event's (`read::EVENT_COLUMNS`, from a LEFT JOIN: all
/// NULL when the event is gone).
const ITEM_COLUMNS: &str = "o.pos, o.kind, o.user_ref, o.received_at, o.body";

fn item(r: &Row) -> Result<Option<OutboxItem>, Error> {
    let Some(kind) = ItemKind::from_code(i64::from(r.try_get::<_, i16>(10)?)) else {
        return Ok(None);
    };
    let event = match r.try_get::<_, Option<i64>>(0)? {
        Some(_) => Some(super::read::event_row(r)?),
        None => None,
    };
    Ok(Some(OutboxItem {
        pos: r.try_get(9)?,
        kind,
        user_ref: r.try_get(11)?,
        received_at: r.try_get(12)?,
        event,
        body: r.try_get(13)?,
    }))
}

/// Runs a query of items and takes them in order until `limit` items or about
/// [`trackd_core::read::PAGE_BYTES`] of them: the rows are streamed, and past the budget
/// the rest is dropped as it arrives, never held.
async fn items_of(
    client: &Client,
    stmt: &tokio_postgres::Statement,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    limit: usize,
) -> Result<Vec<OutboxItem>, Error> {
    use futures_util::TryStreamExt;
    let rows = client.query_raw(stmt, params.iter().copied()).await?;
    futures_util::pin_mut!(rows);
    let mut budget = trackd_core::read::PageBudget::new(limit);
    let mut out = Vec::new();
    while let Some(row) = rows.try_next().await? {
        if budget.full() {
            break;
        }
        if let Some(found) = item(&row)? {
            budget.take(found.bytes());
            out.push(found);
        }
    }
    Ok(out)
}

/// Items of a project after a position.
pub(super) async fn items(
    client: &Client,
    project: ProjectId,
    after: i64,
    limit: usize,
) -> Result<Vec<OutboxItem>, Error> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS}, {ITEM_COLUMNS} FROM outbox o \
             LEFT JOIN events e ON e.id = o.event_id LEFT JOIN users u ON u.id = e.user_ref \
             WHERE o.project_id = $1 AND o.pos > $2 ORDER BY o.pos LIMIT $3"
        ))
        .await?;
    let rows = i64::try_from(limit).unwrap_or(i64::MAX);
    items_of(client, &stmt, &[&project.get(), &after, &rows], limit).await
}

/// A destination's dead letters after `after`, in position order.
pub(super) async fn dead_letters(
    client: &Client,
    project: ProjectId,
    destination: i64,
    after: i64,
    limit: usize,
) -> Result<Vec<trackd_core::delivery::DeadLetter>, Error> {
    let rows = i64::try_from(limit).unwrap_or(i64::MAX);
    client
        .query(
            "SELECT pos, status, response, failed_at, redrive FROM dead_letters \
             WHERE destination_id = $1 AND pos > $2 \
               AND $1 IN (SELECT id FROM destinations WHERE project_id = $4) \
             ORDER BY pos LIMIT $3",
            &[&destination, &after, &rows, &project.get()],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(trackd_core::delivery::DeadLetter {
                pos: r.try_get(0)?,
                status: u16::try_from(r.try_get::<_, i32>(1)?).unwrap_or(0),
                response: r.try_get(2)?,
                failed_at: r.try_get(3)?,
                redrive: r.try_get(4)?,
            })
        })
        .collect()
}

/// Dead letters marked for redrive.
pub(super) async fn redrive_items(
    client: &Client,
    destination: i64,
    limit: usize,
) -> Result<Vec<OutboxItem>, Error> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS}, {ITEM_COLUMNS} FROM dead_letters x \
             JOIN destinations d ON d.id = x.destination_id \
             JOIN outbox o ON o.project_id = d.project_id AND o.pos = x.pos \
             LEFT JOIN events e ON e.id = o.event_id LEFT JOIN users u ON u.id = e.user_ref \
             WHERE x.destination_id = $1 AND x.redrive ORDER BY x.pos LIMIT $2"
        ))
        .await?;
    let rows = i64::try_from(limit).unwrap_or(i64::MAX);
    items_of(client, &stmt, &[&destination, &rows], limit).await
}

/// Applies a delivery report in one transaction; `false` (nothing written) when the
/// destination moved on (another generation, another lease holder, removed), or when the
/// report announces a batch to send (`pending_to` > 0) and the destination is paused.
pub(super) async fn report(
    client: &mut Client,
    r: &DeliveryReport,
    now: i64,
) -> Result<bool, Error> {
    let tx = client.transaction().await?;
    let current = tx
        .query_opt(
            "SELECT generation, lease_owner, paused IS NOT NULL FROM destinations \
             WHERE id = $1 FOR UPDATE",
            &[&r.destination],
        )
        .await?;
    let Some(row) = current else {
        return Ok(false);
    };
    let (generation, owner, paused): (i64, Option<String>, bool) =
        (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
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
    tx.execute(
        "UPDATE destinations SET cursor = GREATEST(cursor, COALESCE($2::bigint, cursor)), \
           pending_to = COALESCE($3::bigint, pending_to), delivered = delivered + $4, \
           last_error = CASE WHEN $5 THEN $6::text ELSE last_error END, \
           paused = COALESCE($7::text, paused) \
         WHERE id = $1",
        &[
            &r.destination,
            &r.cursor,
            &r.pending_to,
            &r.delivered,
            &set_error,
            &error,
            &r.pause,
        ],
    )
    .await?;
    if !r.redriven.is_empty() {
        tx.execute(
            "DELETE FROM dead_letters WHERE destination_id = $1 AND pos = ANY($2)",
            &[&r.destination, &r.redriven],
        )
        .await?;
    }
    if !r.dead.is_empty() {
        // Only for items still there (one deleted meanwhile with its user is not retried),
        // locked so that a deletion waits for this commit and then sees the dead letter.
        let all: Vec<i64> = r.dead.iter().map(|(pos, _, _)| *pos).collect();
        let live: HashSet<i64> = tx
            .query(
                "SELECT o.pos FROM outbox o JOIN destinations d ON d.project_id = o.project_id \
                 WHERE d.id = $1 AND o.pos = ANY($2) ORDER BY o.pos FOR KEY SHARE OF o",
                &[&r.destination, &all],
            )
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        let mut positions = Vec::with_capacity(r.dead.len());
        let mut statuses = Vec::with_capacity(r.dead.len());
        let mut responses = Vec::with_capacity(r.dead.len());
        for (pos, status, response) in r.dead.iter().filter(|d| live.contains(&d.0)) {
            positions.push(*pos);
            statuses.push(i32::from(*status));
            responses.push(response.as_str());
        }
        // One row per position (the last word on it), in position order.
        tx.execute(
            "INSERT INTO dead_letters (destination_id, pos, status, response, failed_at) \
             SELECT DISTINCT ON (p) $1::bigint, p, s, t, $5::bigint \
             FROM unnest($2::bigint[], $3::int4[], $4::text[]) WITH ORDINALITY \
               AS x(p, s, t, o) \
             ORDER BY p, o DESC \
             ON CONFLICT (destination_id, pos) DO UPDATE \
             SET status = EXCLUDED.status, response = EXCLUDED.response, \
                 failed_at = EXCLUDED.failed_at, redrive = FALSE",
            &[&r.destination, &positions, &statuses, &responses, &now],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// Takes or renews a lease, by the database clock.
pub(super) async fn lease(
    client: &Client,
    destination: i64,
    node: &str,
    ttl_ms: i64,
) -> Result<bool, Error> {
    let stmt = client
        .prepare_cached(
            "WITH clock AS ( \
               SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS now) \
             UPDATE destinations SET lease_owner = $2, lease_until = clock.now + $3::bigint * 1000 \
             FROM clock \
             WHERE id = $1 \
               AND (lease_owner = $2 OR lease_owner IS NULL OR lease_until < clock.now)",
        )
        .await?;
    Ok(client
        .execute(&stmt, &[&destination, &node, &ttl_ms])
        .await?
        == 1)
}

/// Items deleted per statement while pruning: keeps each write short.
const PRUNE_CHUNK: i64 = 5_000;

/// Deletes up to [`PRUNE_CHUNK`] passed items per project received before `cutoff`, each
/// project in a statement of its own.
pub(super) async fn prune(client: &Client, cutoff: i64) -> Result<u64, Error> {
    let projects: Vec<i64> = client
        .query("SELECT id FROM projects", &[])
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    let stmt = client
        .prepare_cached(
            "DELETE FROM outbox WHERE project_id = $1 AND pos IN ( \
               SELECT pos FROM outbox o WHERE project_id = $1 \
                 AND pos <= COALESCE((SELECT min(cursor) FROM destinations d \
                                      WHERE d.project_id = $1), 9223372036854775807) \
                 AND received_at < $2 \
                 AND NOT EXISTS (SELECT 1 FROM dead_letters x JOIN destinations d \
                                 ON d.id = x.destination_id \
                                 WHERE d.project_id = $1 AND x.pos = o.pos) \
               ORDER BY pos LIMIT $3)",
        )
        .await?;
    let mut deleted = 0;
    for project in projects {
        deleted += client
            .execute(&stmt, &[&project, &cutoff, &PRUNE_CHUNK])
            .await?;
    }
    Ok(deleted)
}
