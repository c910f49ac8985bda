//! Profile changes inside the writer's transaction: each reads the user's row, applies the
//! domain's merge rules, and writes it back, so the rules live in `trackd-core` and only
//! the SQL lives here.

use rusqlite::{params, OptionalExtension, Row, Transaction};
use trackd_core::users::{merge_channels, merge_properties, merge_tags};
use trackd_core::{ProfileChange, ProfileRequest, StoreError, UserRef};

use super::dedup::{DedupIndex, Overlay};
use crate::user_row::{Profile, COLUMNS};

/// Reads a row selected as [`COLUMNS`].
fn from_row(r: &Row<'_>) -> rusqlite::Result<Profile> {
    Ok(Profile::decode(
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
fn save(p: &mut Profile, tx: &Transaction<'_>, project: i64, now: i64) -> rusqlite::Result<i64> {
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

fn by_key(tx: &Transaction<'_>, project: i64, key: &str) -> rusqlite::Result<Option<Profile>> {
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
) -> rusqlite::Result<Option<Profile>> {
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

fn not_found() -> Result<(), StoreError> {
    Err(StoreError::NotFound("user".into()))
}

/// Applies one change. `Ok(Err(NotFound))` when it needs a user that does not exist (the
/// batch goes on); `Err` only for a database failure (the batch rolls back).
pub(crate) fn apply(
    tx: &Transaction<'_>,
    request: &ProfileRequest,
    index: &DedupIndex,
    overlay: &mut Overlay,
) -> rusqlite::Result<Result<(), StoreError>> {
    let project = request.project.get();
    let now = request.received_at.as_micros();
    match &request.change {
        ProfileChange::Track {
            identity,
            phone_number,
            channels,
            data,
        } => {
            let user = match (identity.id(), identity.email()) {
                (Some(id), _) => UserRef::Id(id.clone()),
                (None, Some(email)) => UserRef::Email(email.clone()),
                (None, None) => return Ok(not_found()),
            };
            let mut profile = match resolve(tx, project, &user)? {
                Some(p) => p,
                None => Profile::new(identity.user_key(), now),
            };
            if let Some(id) = identity.id() {
                profile.user_id = Some(id.as_str().to_owned());
            }
            if let Some(email) = identity.email() {
                profile.email = Some(email.as_str().to_owned());
            }
            if phone_number.is_some() {
                profile.phone_number.clone_from(phone_number);
            }
            merge_channels(&mut profile.channels, channels.clone());
            merge_properties(&mut profile.properties, data.clone());
            profile.last_seen = profile.last_seen.max(now);
            save(&mut profile, tx, project, now)?;
        }
        ProfileChange::Edit { user, changes } => {
            let Some(mut profile) = resolve(tx, project, user)? else {
                return Ok(not_found());
            };
            merge_properties(&mut profile.properties, changes.clone());
            save(&mut profile, tx, project, now)?;
        }
        ProfileChange::Tags { user, add, remove } => {
            let Some(mut profile) = resolve(tx, project, user)? else {
                return Ok(not_found());
            };
            if add.is_empty() && remove.is_empty() {
                return Ok(Ok(()));
            }
            merge_tags(&mut profile.tags, add, remove);
            save(&mut profile, tx, project, now)?;
        }
        ProfileChange::Subscription { user, subscribed } => {
            // An unknown user is created so the choice is kept for when it shows up.
            let mut profile = match resolve(tx, project, user)? {
                Some(p) => p,
                None => {
                    let mut p = Profile::new(user.key(), now);
                    match user {
                        UserRef::Id(id) => p.user_id = Some(id.as_str().to_owned()),
                        UserRef::Email(email) => p.email = Some(email.as_str().to_owned()),
                    }
                    p
                }
            };
            profile.subscribed = *subscribed;
            save(&mut profile, tx, project, now)?;
        }
        ProfileChange::Delete { user } => {
            let Some(profile) = resolve(tx, project, user)? else {
                return Ok(not_found());
            };
            delete(tx, profile.id, index, overlay)?;
        }
        ProfileChange::Reidentify { id, new_id } => {
            let Some(mut old) = by_key(tx, project, id.as_str())? else {
                return Ok(not_found());
            };
            match by_key(tx, project, new_id.as_str())? {
                None => {
                    old.user_key = new_id.as_str().to_owned();
                    old.user_id = Some(new_id.as_str().to_owned());
                    save(&mut old, tx, project, now)?;
                }
                Some(mut new) => {
                    // Merge into the existing `new_id`; events and dedup records move.
                    new.absorb(&mut old);
                    for table in ["events", "dedup"] {
                        tx.prepare_cached(&format!(
                            "UPDATE {table} SET user_ref = ?2 WHERE user_ref = ?1"
                        ))?
                        .execute(params![old.id, new.id])?;
                    }
                    tx.prepare_cached("DELETE FROM users WHERE id = ?1")?
                        .execute([old.id])?;
                    save(&mut new, tx, project, now)?;
                }
            }
        }
    }
    Ok(Ok(()))
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
    for key in forget {
        // Only keys the index or this batch knows need forgetting.
        if overlay.accepted_at(index, &key).is_some() {
            overlay.forget(key);
        }
    }
    tx.prepare_cached("DELETE FROM users WHERE id = ?1")?
        .execute([user])?;
    Ok(())
}
