//! Profile changes inside the writer's transaction: the rows `trackd_core::plan` asks
//! for are read here, it decides, and its plan is written here. The rules live in
//! `trackd-core`; only the SQL lives here.

use rusqlite::{params, OptionalExtension, Row, Transaction};
use trackd_core::plan::{self, Found, Lookup, Plan, UserRow, USER_COLUMNS as COLUMNS};
use trackd_core::{ProfileRequest, StoreError, UserRef};

use super::dedup::{DedupIndex, Overlay};

/// Reads a row selected as [`COLUMNS`].
pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<UserRow> {
    Ok(UserRow::decode(
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        &r.get::<_, String>(5)?,
        &r.get::<_, String>(6)?,
        &r.get::<_, String>(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
    ))
}

/// Inserts (id 0) or updates the row; returns its id.
fn save(p: &mut UserRow, tx: &Transaction<'_>, project: i64, now: i64) -> rusqlite::Result<i64> {
    let json = p.encode();
    p.id = tx
        .prepare_cached(
            "INSERT INTO users (id, project_id, user_key, user_id, email, phone_number, \
             channels, properties, tags, subscribed, first_seen, last_seen, created_at, \
             updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13) \
             ON CONFLICT (id) DO UPDATE SET user_key = excluded.user_key, \
               user_id = excluded.user_id, email = excluded.email, \
               phone_number = excluded.phone_number, channels = excluded.channels, \
               properties = excluded.properties, tags = excluded.tags, \
               subscribed = excluded.subscribed, first_seen = excluded.first_seen, \
               last_seen = excluded.last_seen, updated_at = excluded.updated_at \
             RETURNING id",
        )?
        .query_row(
            params![
                (p.id != 0).then_some(p.id),
                project,
                p.user_key,
                p.user_id,
                p.email,
                p.phone_number,
                json.channels,
                json.properties,
                json.tags,
                p.subscribed,
                p.first_seen,
                p.last_seen,
                now,
            ],
            |r| r.get(0),
        )?;
    Ok(p.id)
}

fn by_key(tx: &Transaction<'_>, project: i64, key: &str) -> rusqlite::Result<Option<UserRow>> {
    tx.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM users WHERE project_id = ?1 AND user_key = ?2"
    ))?
    .query_row(params![project, key], from_row)
    .optional()
}

/// The user a reference names: by key; for an email alone, else the oldest user whose email
/// field it is.
fn resolve(
    tx: &Transaction<'_>,
    project: i64,
    user: &UserRef,
) -> rusqlite::Result<Option<UserRow>> {
    if let Some(found) = by_key(tx, project, user.key())? {
        return Ok(Some(found));
    }
    match user {
        UserRef::Id(_) => Ok(None),
        UserRef::Email(email) => tx
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM users WHERE project_id = ?1 AND email = ?2 \
                 ORDER BY id LIMIT 1"
            ))?
            .query_row(params![project, email.as_str()], from_row)
            .optional(),
    }
}

/// Applies one change: reads what the planner asks for, lets it decide, writes the plan.
/// `Ok(Ok(Some(user)))` names the user it changed (`None`: nothing changed);
/// `Ok(Err(NotFound))` when it needs a user that does not exist (the batch goes on); `Err`
/// only for a database failure (the batch rolls back).
pub(crate) fn apply(
    tx: &Transaction<'_>,
    request: &ProfileRequest,
    index: &DedupIndex,
    overlay: &mut Overlay,
) -> rusqlite::Result<Result<crate::job::Changed, StoreError>> {
    let project = request.project.get();
    let now = request.received_at.as_micros();
    let found = match plan::lookup(&request.change) {
        Lookup::Nothing => Found::Nothing,
        Lookup::User(user) => Found::User(resolve(tx, project, &user)?),
        Lookup::Pair { from, to } => {
            Found::Pair(by_key(tx, project, &from)?, by_key(tx, project, &to)?)
        }
    };
    let changed = match plan::plan(&request.change, now, found, &request.limits) {
        Plan::Nothing => None,
        Plan::NotFound => return Ok(Err(StoreError::NotFound("user".into()))),
        Plan::Refused(e) => return Ok(Err(StoreError::Invalid(e))),
        Plan::Save(mut row) => Some((save(&mut row, tx, project, now)?, None)),
        // Dedup records point at the row, so they follow a rename by themselves.
        Plan::Rename { mut user, .. } => Some((save(&mut user, tx, project, now)?, None)),
        Plan::Delete(row) => {
            delete(tx, row.id, index, overlay)?;
            Some((row.id, Some(trackd_core::delivery::delete_body(&row))))
        }
        Plan::Merge { from, mut into } => {
            for table in ["events", "dedup"] {
                tx.prepare_cached(&format!(
                    "UPDATE {table} SET user_ref = ?2 WHERE user_ref = ?1"
                ))?
                .execute(params![from.id, into.id])?;
            }
            super::outbox::merge_user(tx, from.id, into.id)?;
            tx.prepare_cached("DELETE FROM users WHERE id = ?1")?
                .execute([from.id])?;
            Some((save(&mut into, tx, project, now)?, None))
        }
    };
    Ok(Ok(changed))
}

/// Removes a user, its events and its dedup records.
fn delete(
    tx: &Transaction<'_>,
    user: i64,
    index: &DedupIndex,
    overlay: &mut Overlay,
) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM events WHERE user_ref = ?1")?
        .execute([user])?;
    let mut forget = Vec::new();
    {
        let mut stmt = tx.prepare_cached("DELETE FROM dedup WHERE user_ref = ?1 RETURNING key")?;
        let mut rows = stmt.query([user])?;
        while let Some(row) = rows.next()? {
            let key: Vec<u8> = row.get(0)?;
            if let Ok(key) = <[u8; 16]>::try_from(key.as_slice()) {
                forget.push(key);
            }
        }
    }
    // Other connections' writers hold these records in memory: they reload their index
    // when this moves.
    tx.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('dedup_deletions', 1) \
         ON CONFLICT (key) DO UPDATE SET value = value + 1",
    )?
    .execute([])?;
    for key in forget {
        // Only keys the index or this batch knows need forgetting.
        if overlay.accepted_at(index, &key).is_some() {
            overlay.forget(key);
        }
    }
    super::outbox::forget_user(tx, user)?;
    tx.prepare_cached("DELETE FROM users WHERE id = ?1")?
        .execute([user])?;
    Ok(())
}
