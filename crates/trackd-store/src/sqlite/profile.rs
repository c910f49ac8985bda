//! Profile changes inside the writer's transaction: each reads the user's row, applies the
//! domain's merge rules, and writes it back, so the rules live in `trackd-core` and only
//! the SQL lives here.

use rusqlite::{params, OptionalExtension, Row, Transaction};
use serde_json::{Map, Value};
use trackd_core::users::{merge_channels, merge_properties, merge_tags};
use trackd_core::{ProfileChange, ProfileRequest, StoreError, UserRef};

use super::dedup::{DedupIndex, Overlay};

/// A user's row, decoded.
struct Profile {
    id: i64,
    user_key: String,
    user_id: Option<String>,
    email: Option<String>,
    phone_number: Option<String>,
    channels: Vec<Value>,
    properties: Map<String, Value>,
    tags: Vec<String>,
    subscribed: bool,
    first_seen: i64,
    last_seen: i64,
}

const COLUMNS: &str = "id, user_key, user_id, email, phone_number, channels, properties, tags, \
                       subscribed, first_seen, last_seen";

impl Profile {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        // The JSON columns are only ever written by `save`; a row that does not decode is
        // read as empty rather than failing every later change of the user.
        let json = |i: usize| -> rusqlite::Result<Value> {
            let text: String = r.get(i)?;
            Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
        };
        Ok(Profile {
            id: r.get(0)?,
            user_key: r.get(1)?,
            user_id: r.get(2)?,
            email: r.get(3)?,
            phone_number: r.get(4)?,
            channels: match json(5)? {
                Value::Array(items) => items,
                _ => Vec::new(),
            },
            properties: match json(6)? {
                Value::Object(map) => map,
                _ => Map::new(),
            },
            tags: match json(7)? {
                Value::Array(items) => items
                    .into_iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
                _ => Vec::new(),
            },
            subscribed: r.get(8)?,
            first_seen: r.get(9)?,
            last_seen: r.get(10)?,
        })
    }

    fn new(user_key: &str, now: i64) -> Self {
        Profile {
            id: 0,
            user_key: user_key.to_owned(),
            user_id: None,
            email: None,
            phone_number: None,
            channels: Vec::new(),
            properties: Map::new(),
            tags: Vec::new(),
            subscribed: true,
            first_seen: now,
            last_seen: now,
        }
    }

    /// Inserts (id 0) or updates the row; returns its id.
    fn save(&mut self, tx: &Transaction<'_>, project: i64, now: i64) -> rusqlite::Result<i64> {
        let channels = Value::Array(std::mem::take(&mut self.channels)).to_string();
        let properties = Value::Object(std::mem::take(&mut self.properties)).to_string();
        let tags = serde_json::json!(self.tags).to_string();
        self.id = tx
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
                    (self.id != 0).then_some(self.id),
                    project,
                    self.user_key,
                    self.user_id,
                    self.email,
                    self.phone_number,
                    channels,
                    properties,
                    tags,
                    self.subscribed,
                    self.first_seen,
                    self.last_seen,
                    now,
                ],
                |r| r.get(0),
            )?;
        Ok(self.id)
    }
}

fn by_key(tx: &Transaction<'_>, project: i64, key: &str) -> rusqlite::Result<Option<Profile>> {
    tx.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM users WHERE project_id = ?1 AND user_key = ?2"
    ))?
    .query_row(params![project, key], Profile::from_row)
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
            .query_row(params![project, email.as_str()], Profile::from_row)
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
            profile.save(tx, project, now)?;
        }
        ProfileChange::Edit { user, changes } => {
            let Some(mut profile) = resolve(tx, project, user)? else {
                return Ok(not_found());
            };
            merge_properties(&mut profile.properties, changes.clone());
            profile.save(tx, project, now)?;
        }
        ProfileChange::Tags { user, add, remove } => {
            let Some(mut profile) = resolve(tx, project, user)? else {
                return Ok(not_found());
            };
            if add.is_empty() && remove.is_empty() {
                return Ok(Ok(()));
            }
            merge_tags(&mut profile.tags, add, remove);
            profile.save(tx, project, now)?;
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
            profile.save(tx, project, now)?;
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
                    old.save(tx, project, now)?;
                }
                Some(mut new) => {
                    // Merge into the existing `new_id`: its properties win, tags unite,
                    // unsubscribed if either was; events and dedup records move.
                    let mut properties = std::mem::take(&mut old.properties);
                    merge_properties(&mut properties, std::mem::take(&mut new.properties));
                    new.properties = properties;
                    let mut channels = std::mem::take(&mut old.channels);
                    merge_channels(&mut channels, std::mem::take(&mut new.channels));
                    new.channels = channels;
                    merge_tags(&mut new.tags, &old.tags, &[]);
                    new.subscribed = new.subscribed && old.subscribed;
                    new.email = new.email.or(old.email);
                    new.phone_number = new.phone_number.or(old.phone_number);
                    new.first_seen = new.first_seen.min(old.first_seen);
                    new.last_seen = new.last_seen.max(old.last_seen);
                    for table in ["events", "dedup"] {
                        tx.prepare_cached(&format!(
                            "UPDATE {table} SET user_ref = ?2 WHERE user_ref = ?1"
                        ))?
                        .execute(params![old.id, new.id])?;
                    }
                    tx.prepare_cached("DELETE FROM users WHERE id = ?1")?
                        .execute([old.id])?;
                    new.save(tx, project, now)?;
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
