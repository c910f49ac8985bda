//! The suppression list and the audit log (DESIGN §10) on PostgreSQL.
//!
//! A suppression runs in a transaction of its own holding its project's write lock
//! exclusively (`outbox.rs`): every writer transaction of the project in flight finishes
//! first, and every later one waits for its commit and then sees it, on every node. Writer
//! transactions learn which of their projects have suppressions in the statement that
//! reads which have destinations (no extra round trip); only writes of those projects are
//! hashed and looked up, in one statement per batch.

use std::collections::HashSet;

use deadpool_postgres::{Client, Transaction};
use tokio_postgres::Error;
use trackd_core::privacy::{
    Actor, AuditAct, AuditEntry, AuditQuery, Expired, Suppressed, Suppressible, SuppressionHash,
    SuppressionKey, ROLLUP_MICROS,
};
use trackd_core::{ProjectId, StoreError, Timestamp};

use super::outbox::{lock_key, Pending, WRITE_LOCK};
use super::unavailable;

/// The suppressed hashes a batch's writes name.
#[derive(Default)]
pub(super) struct Covered(HashSet<(i64, SuppressionHash)>);

impl Covered {
    /// Looks up the hashes of the writes of projects that have suppressions (`pending`
    /// knows which), in one statement; nothing for a batch without such writes.
    pub async fn read(
        tx: &Transaction<'_>,
        key: &SuppressionKey,
        pending: &Pending,
        writes: Vec<(ProjectId, Vec<&str>)>,
    ) -> Result<Self, Error> {
        let (mut projects, mut hashes): (Vec<i64>, Vec<Vec<u8>>) = (Vec::new(), Vec::new());
        for (project, identifiers) in writes {
            if pending.suppressing(project) {
                for identifier in identifiers {
                    projects.push(project.get());
                    hashes.push(key.hash(project, identifier).to_vec());
                }
            }
        }
        if projects.is_empty() {
            return Ok(Covered::default());
        }
        let stmt = tx
            .prepare_cached(
                "SELECT DISTINCT s.project_id, s.hash FROM suppressions s \
                 JOIN unnest($1::bigint[], $2::bytea[]) AS u(p, h) \
                   ON s.project_id = u.p AND s.hash = u.h",
            )
            .await?;
        let mut found = HashSet::new();
        for row in tx.query(&stmt, &[&projects, &hashes]).await? {
            let hash: Vec<u8> = row.try_get(1)?;
            if let Ok(hash) = SuppressionHash::try_from(hash.as_slice()) {
                found.insert((row.try_get::<_, i64>(0)?, hash));
            }
        }
        Ok(Covered(found))
    }

    /// Whether a write names a suppressed user.
    pub fn covers(&self, key: &SuppressionKey, write: &impl Suppressible) -> bool {
        if self.0.is_empty() {
            return false;
        }
        let (project, identifiers) = write.identifiers();
        identifiers
            .into_iter()
            .any(|i| self.0.contains(&(project.get(), key.hash(project, i))))
    }
}

/// Suppresses the user of `user_key`: deletes it as `users/delete` does, keeps the hashes,
/// records the act; one transaction under the project's exclusive write lock.
pub(super) async fn suppress(
    client: &mut Client,
    key: &SuppressionKey,
    project: ProjectId,
    user_key: &str,
    actor: &Actor,
    now: i64,
) -> Result<Suppressed, StoreError> {
    let tx = client.transaction().await.map_err(unavailable)?;
    lock(&tx, project).await?;
    let mut pending = Pending::start(&tx, [project.get()])
        .await
        .map_err(unavailable)?;
    // The user found as the read API finds `{id}`: by key, else the oldest by email.
    let found = tx
        .query_opt(
            "SELECT user_key, user_id, email FROM users WHERE project_id = $1 AND user_key = \
             coalesce((SELECT user_key FROM users WHERE project_id = $1 AND user_key = $2), \
                      (SELECT user_key FROM users WHERE project_id = $1 AND email = $2 \
                       ORDER BY id LIMIT 1))",
            &[&project.get(), &user_key],
        )
        .await
        .map_err(unavailable)?;
    let mut identifiers = vec![user_key.to_owned()];
    let mut deleted = false;
    if let Some(row) = found {
        let found_key: String = row.try_get(0).map_err(unavailable)?;
        for i in 1..3 {
            let value: Option<String> = row.try_get(i).map_err(unavailable)?;
            identifiers.extend(value);
        }
        if let Some(request) = crate::job::delete_request(project, &found_key, now) {
            let result = super::profile::apply(&tx, &request, &mut pending)
                .await
                .map_err(unavailable)?;
            super::writer::profile_item(&mut pending, &request, &result);
            deleted = matches!(result, Ok(Some(_)));
        }
    }
    let origin = key.hash(project, user_key).to_vec();
    let already: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM suppressions \
             WHERE project_id = $1 AND hash = $2 AND origin = $2)",
            &[&project.get(), &origin],
        )
        .await
        .map_err(unavailable)?
        .get(0);
    let hashes: Vec<Vec<u8>> = identifiers
        .iter()
        .map(|i| key.hash(project, i).to_vec())
        .collect();
    tx.execute(
        "INSERT INTO suppressions (project_id, hash, origin, created_at) \
         SELECT $1, h, $3, $4 FROM unnest($2::bytea[]) AS h ON CONFLICT DO NOTHING",
        &[&project.get(), &hashes, &origin, &now],
    )
    .await
    .map_err(unavailable)?;
    let act = AuditAct::on_user(key, project, user_key, actor.clone(), "user.suppress");
    record(&tx, &act, now).await.map_err(unavailable)?;
    pending.write(&tx).await.map_err(unavailable)?;
    tx.commit().await.map_err(unavailable)?;
    Ok(Suppressed { deleted, already })
}

/// Lifts the suppression made for `user_key`; `false` when there is none.
pub(super) async fn unsuppress(
    client: &mut Client,
    key: &SuppressionKey,
    project: ProjectId,
    user_key: &str,
    actor: &Actor,
    now: i64,
) -> Result<bool, StoreError> {
    let tx = client.transaction().await.map_err(unavailable)?;
    lock(&tx, project).await?;
    // Every suppression that covers `user_key`: the one made for it, and one made for the
    // user's other identifier (suppressed by email, lifted by id, or the reverse).
    let hash = key.hash(project, user_key).to_vec();
    let n = tx
        .execute(
            "DELETE FROM suppressions WHERE project_id = $1 AND origin IN \
             (SELECT origin FROM suppressions WHERE project_id = $1 AND hash = $2)",
            &[&project.get(), &hash],
        )
        .await
        .map_err(unavailable)?;
    if n > 0 {
        let act = AuditAct::on_user(key, project, user_key, actor.clone(), "user.unsuppress");
        record(&tx, &act, now).await.map_err(unavailable)?;
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(n > 0)
}

/// The project's write lock, exclusively: in-flight writer transactions of the project
/// finish first; later ones see this one's commit.
async fn lock(tx: &Transaction<'_>, project: ProjectId) -> Result<(), StoreError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&WRITE_LOCK, &lock_key(project.get())],
    )
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// Appends an act to the audit log.
pub(super) async fn record(
    client: &impl deadpool_postgres::GenericClient,
    act: &AuditAct,
    now: i64,
) -> Result<(), Error> {
    client
        .execute(
            "INSERT INTO audit (project_id, at, actor, action, target) \
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &act.project.get(),
                &now,
                &act.actor.name(),
                &act.action,
                &act.target,
            ],
        )
        .await?;
    Ok(())
}

/// A page of a project's audit log, newest first.
pub(super) async fn page(
    client: &impl deadpool_postgres::GenericClient,
    q: &AuditQuery,
) -> Result<Vec<AuditEntry>, Error> {
    let rows = client
        .query(
            "SELECT id, at, actor, action, target FROM audit \
             WHERE project_id = $1 AND id < $2 AND at >= $3 ORDER BY id DESC LIMIT $4",
            &[
                &q.project.get(),
                &q.before.unwrap_or(i64::MAX),
                &q.since.map_or(i64::MIN, Timestamp::as_micros),
                &(q.limit as i64),
            ],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(AuditEntry {
                id: r.try_get(0)?,
                at: Timestamp::from_micros(r.try_get(1)?),
                actor: r.try_get(2)?,
                action: r.try_get(3)?,
                target: r.try_get(4)?,
            })
        })
        .collect()
}

/// One step of retention (`Store::expire`), in a transaction of its own. Rows another node
/// is expiring at the same moment are skipped (`SKIP LOCKED`), not waited for.
pub(super) async fn expire(
    client: &mut Client,
    project: ProjectId,
    cutoff: i64,
    limit: usize,
) -> Result<Expired, Error> {
    let tx = client.transaction().await?;
    let limit = limit as i64;
    let events: i64 = tx
        .query_one(
            "WITH chunk AS ( \
               SELECT id, created_at, event_key FROM events \
               WHERE project_id = $1 AND received_at < $2 \
               ORDER BY received_at, id LIMIT $3 FOR UPDATE SKIP LOCKED), \
             gone AS ( \
               DELETE FROM events e USING chunk WHERE e.id = chunk.id \
               RETURNING chunk.created_at, chunk.event_key), \
             rolled AS ( \
               INSERT INTO stats_rollup (project_id, hour, event_key, count) \
               SELECT $1, created_at - ((created_at % $4) + $4) % $4, event_key, count(*) \
               FROM gone GROUP BY 2, 3 \
               ON CONFLICT (project_id, hour, event_key) \
                 DO UPDATE SET count = stats_rollup.count + EXCLUDED.count) \
             SELECT count(*) FROM gone",
            &[&project.get(), &cutoff, &limit, &ROLLUP_MICROS],
        )
        .await?
        .try_get(0)?;
    // Positions follow commit order and so, but for requests in flight together, receive
    // order: the oldest `limit` items are read and those before the first one received at
    // or after the cutoff go.
    let rows = tx
        .query(
            "SELECT pos, received_at FROM outbox WHERE project_id = $1 ORDER BY pos LIMIT $2",
            &[&project.get(), &limit],
        )
        .await?;
    let mut old: Vec<i64> = Vec::new();
    for row in rows {
        if row.try_get::<_, i64>(1)? >= cutoff {
            break;
        }
        old.push(row.try_get(0)?);
    }
    if !old.is_empty() {
        tx.execute(
            "DELETE FROM outbox WHERE project_id = $1 AND pos = ANY($2)",
            &[&project.get(), &old],
        )
        .await?;
        tx.execute(
            "DELETE FROM dead_letters WHERE pos = ANY($2) \
             AND destination_id IN (SELECT id FROM destinations WHERE project_id = $1)",
            &[&project.get(), &old],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Expired {
        events: events as u64,
        items: old.len() as u64,
    })
}
