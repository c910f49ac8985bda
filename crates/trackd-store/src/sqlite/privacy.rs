//! The suppression list and the audit log (DESIGN §10) in SQLite.
//!
//! `suppressions` holds keyed hashes ([`SuppressionKey`]) of the identifiers a suppression
//! covers (the key it was made for, and the deleted user's id and email), each with the hash
//! of that key (`origin`), so unsuppressing lifts them together. The writer remembers which
//! projects have any suppression at all: a write of any other project costs no hash and no
//! read; one of such a project costs a primary-key probe per identifier.

use std::collections::HashSet;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use trackd_core::privacy::{
    AuditAct, AuditEntry, AuditQuery, Expired, Suppressible, SuppressionKey, ROLLUP_MICROS,
};
use trackd_core::{ProjectId, Timestamp};

/// The writer's view of the suppression list.
pub(crate) struct Suppressions {
    key: SuppressionKey,
    /// Projects with at least one suppression.
    projects: HashSet<i64>,
}

impl Suppressions {
    /// Reads which projects have suppressions, with the store's secret.
    pub fn load(conn: &Connection, secret: &[u8; 32]) -> rusqlite::Result<Self> {
        let mut s = Suppressions {
            key: SuppressionKey::new(secret),
            projects: HashSet::new(),
        };
        s.reload(conn)?;
        Ok(s)
    }

    /// Reads the projects again (another connection may have suppressed or lifted).
    pub fn reload(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        let mut stmt = conn.prepare_cached("SELECT DISTINCT project_id FROM suppressions")?;
        self.projects = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(())
    }

    /// Whether a write names a suppressed user (by any of its identifiers).
    pub fn covers(
        &self,
        tx: &Transaction<'_>,
        write: &impl Suppressible,
    ) -> rusqlite::Result<bool> {
        // The common case, no suppression anywhere: nothing to look at.
        if self.projects.is_empty() {
            return Ok(false);
        }
        let (project, identifiers) = write.identifiers();
        if !self.projects.contains(&project.get()) {
            return Ok(false);
        }
        let mut probe = tx.prepare_cached(
            "SELECT 1 FROM suppressions WHERE project_id = ?1 AND hash = ?2 LIMIT 1",
        )?;
        for identifier in identifiers {
            let hash = self.key.hash(project, identifier);
            if probe.exists(params![project.get(), &hash[..]])? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Keeps the hashes of `key` and of the identifiers of the user it named (`found`: its
    /// id and email, read before it was deleted); `true` when `key` was already suppressed.
    pub fn add(
        &mut self,
        tx: &Transaction<'_>,
        project: ProjectId,
        key: &str,
        found: &[String],
        now: i64,
    ) -> rusqlite::Result<bool> {
        let origin = self.key.hash(project, key);
        let already = tx
            .prepare_cached(
                "SELECT 1 FROM suppressions WHERE project_id = ?1 AND hash = ?2 AND origin = ?2",
            )?
            .exists(params![project.get(), &origin[..]])?;
        let mut insert = tx.prepare_cached(
            "INSERT INTO suppressions (project_id, hash, origin, created_at) \
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
        )?;
        for identifier in std::iter::once(key).chain(found.iter().map(String::as_str)) {
            let hash = self.key.hash(project, identifier);
            insert.execute(params![project.get(), &hash[..], &origin[..], now])?;
        }
        self.projects.insert(project.get());
        Ok(already)
    }

    /// Lifts every suppression covering `key` (each with every hash it kept); `false` when none does.
    pub fn lift(
        &self,
        tx: &Transaction<'_>,
        project: ProjectId,
        key: &str,
    ) -> rusqlite::Result<bool> {
        // Every suppression that covers `key`: the one made for it, and one made for the
        // user's other identifier (suppressed by email, lifted by id, or the reverse).
        let hash = self.key.hash(project, key);
        let n = tx
            .prepare_cached(
                "DELETE FROM suppressions WHERE project_id = ?1 AND origin IN \
                 (SELECT origin FROM suppressions WHERE project_id = ?1 AND hash = ?2)",
            )?
            .execute(params![project.get(), &hash[..]])?;
        Ok(n > 0)
    }

    /// The audit log's record of an act on the user of `key`.
    pub fn act(
        &self,
        project: ProjectId,
        key: &str,
        actor: trackd_core::privacy::Actor,
        action: &'static str,
    ) -> AuditAct {
        AuditAct::on_user(&self.key, project, key, actor, action)
    }
}

/// The user a suppression of `key` deletes, found as the read API finds `{id}`: the user
/// keyed by it, else the oldest whose email field it is. Its key, then its id and email.
pub(crate) fn target_of(
    tx: &Transaction<'_>,
    project: ProjectId,
    key: &str,
) -> rusqlite::Result<Option<(String, Vec<String>)>> {
    tx.prepare_cached(
        "SELECT user_key, user_id, email FROM users WHERE project_id = ?1 AND user_key = coalesce(\
             (SELECT user_key FROM users WHERE project_id = ?1 AND user_key = ?2), \
             (SELECT user_key FROM users WHERE project_id = ?1 AND email = ?2 \
              ORDER BY id LIMIT 1))",
    )?
    .query_row(params![project.get(), key], |r| {
        let user_key: String = r.get(0)?;
        let id: Option<String> = r.get(1)?;
        let email: Option<String> = r.get(2)?;
        Ok((user_key, id.into_iter().chain(email).collect()))
    })
    .optional()
}

/// Appends an act to the audit log.
pub(crate) fn record(conn: &Connection, act: &AuditAct, now: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO audit (project_id, at, actor, action, target) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        act.project.get(),
        now,
        act.actor.name(),
        act.action,
        act.target
    ])?;
    Ok(())
}

/// A page of a project's audit log, newest first.
pub(crate) fn page(conn: &Connection, q: &AuditQuery) -> rusqlite::Result<Vec<AuditEntry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, at, actor, action, target FROM audit \
         WHERE project_id = ?1 AND id < ?2 AND at >= ?3 ORDER BY id DESC LIMIT ?4",
    )?;
    let rows = stmt.query_map(
        params![
            q.project.get(),
            q.before.unwrap_or(i64::MAX),
            q.since.map_or(i64::MIN, Timestamp::as_micros),
            q.limit as i64
        ],
        |r| {
            Ok(AuditEntry {
                id: r.get(0)?,
                at: Timestamp::from_micros(r.get(1)?),
                actor: r.get(2)?,
                action: r.get(3)?,
                target: r.get(4)?,
            })
        },
    )?;
    rows.collect()
}

/// One step of retention (`Store::expire`): at most `limit` events received before
/// `cutoff`, oldest first (their counts go to the hourly rollup the statistics read), and
/// at most `limit` outbox items received before it, with their dead letters.
pub(crate) fn expire(
    tx: &Transaction<'_>,
    project: ProjectId,
    cutoff: i64,
    limit: usize,
) -> rusqlite::Result<Expired> {
    const CHUNK: &str = "SELECT id FROM events WHERE project_id = ?1 AND received_at < ?2 \
                         ORDER BY received_at, id LIMIT ?3";
    tx.prepare_cached(&format!(
        "INSERT INTO stats_rollup (project_id, hour, event_key, count) \
         SELECT ?1, created_at - ((created_at % ?4) + ?4) % ?4 AS hour, event_key, count(*) \
         FROM events WHERE id IN ({CHUNK}) GROUP BY hour, event_key \
         ON CONFLICT (project_id, hour, event_key) DO UPDATE SET count = count + excluded.count"
    ))?
    .execute(params![project.get(), cutoff, limit as i64, ROLLUP_MICROS])?;
    let events = tx
        .prepare_cached(&format!("DELETE FROM events WHERE id IN ({CHUNK})"))?
        .execute(params![project.get(), cutoff, limit as i64])?;
    // Positions follow commit order and so, but for requests in flight together, receive
    // order: the walk stops at the first item received at or after the cutoff.
    let mut old = Vec::new();
    {
        let mut walk = tx.prepare_cached(
            "SELECT pos, received_at FROM outbox WHERE project_id = ?1 ORDER BY pos",
        )?;
        let mut rows = walk.query([project.get()])?;
        while let Some(row) = rows.next()? {
            if row.get::<_, i64>(1)? >= cutoff || old.len() >= limit {
                break;
            }
            old.push(row.get::<_, i64>(0)?);
        }
    }
    let mut delete = tx.prepare_cached("DELETE FROM outbox WHERE project_id = ?1 AND pos = ?2")?;
    let mut dead = tx.prepare_cached(
        "DELETE FROM dead_letters WHERE pos = ?2 \
         AND destination_id IN (SELECT id FROM destinations WHERE project_id = ?1)",
    )?;
    for pos in &old {
        delete.execute(params![project.get(), pos])?;
        dead.execute(params![project.get(), pos])?;
    }
    Ok(Expired {
        events: events as u64,
        items: old.len() as u64,
    })
}
