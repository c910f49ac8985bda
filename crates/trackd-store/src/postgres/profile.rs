//! Profile changes inside the writer's transaction: each reads the user's row, applies the
//! domain's merge rules, and writes it back, so the rules live in `trackd-core` and only
//! the SQL lives here. The same changes as `sqlite/profile.rs`, with the same outcomes.
//!
//! SQLite has one writer; here other nodes change users at the same time. Rows are read
//! `FOR UPDATE`, so a read-modify-write never overwrites a change committed between its
//! read and its write (two nodes merging properties into one user both keep theirs), and a
//! user created by another node between the lookup and the insert is changed instead of
//! failing the batch. Either way the outcome is the one SQLite gives when the other
//! transaction came first, which it did.

use tokio_postgres::{Error, Row, Transaction};
use trackd_core::users::{merge_channels, merge_properties, merge_tags};
use trackd_core::{ProfileChange, ProfileRequest, StoreError, UserRef};

use crate::user_row::{Profile, COLUMNS};

const INSERT: &str = "INSERT INTO users (project_id, user_key, user_id, email, phone_number, \
                      channels, properties, tags, subscribed, first_seen, last_seen, created_at, \
                      updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)";

/// What an insert does when another transaction committed a user with the same key after
/// the lookup.
#[derive(Clone, Copy)]
enum OnRace {
    /// Writes nothing and says so: the change is tried again against that user.
    Yield,
    /// Fails with the database's unique violation.
    Fail,
}

/// Reads a row selected as [`COLUMNS`].
fn from_row(r: &Row) -> Result<Profile, Error> {
    Ok(Profile::decode(
        r.try_get(0)?,
        r.try_get(1)?,
        r.try_get(2)?,
        r.try_get(3)?,
        r.try_get(4)?,
        r.try_get::<_, &str>(5)?,
        r.try_get::<_, &str>(6)?,
        r.try_get::<_, &str>(7)?,
        r.try_get(8)?,
        r.try_get(9)?,
        r.try_get(10)?,
    ))
}

/// Inserts (id 0) or updates the row. `false` only when an insert yielded to a user
/// with the same key that another transaction committed since the lookup.
///
/// Two statements where SQLite has one upsert on `id`: a BIGSERIAL takes its next value
/// only when the column is left out, never for an explicit NULL.
async fn save(
    p: &mut Profile,
    tx: &Transaction<'_>,
    project: i64,
    now: i64,
    on_race: OnRace,
) -> Result<bool, Error> {
    let json = p.encode();
    let (channels, properties, tags) = (json.channels, json.properties, json.tags);
    if p.id != 0 {
        tx.execute(
            "UPDATE users SET user_key = $2, user_id = $3, email = $4, phone_number = $5, \
             channels = $6, properties = $7, tags = $8, subscribed = $9, first_seen = $10, \
             last_seen = $11, updated_at = $12 WHERE id = $1",
            &[
                &p.id,
                &p.user_key,
                &p.user_id,
                &p.email,
                &p.phone_number,
                &channels,
                &properties,
                &tags,
                &p.subscribed,
                &p.first_seen,
                &p.last_seen,
                &now,
            ],
        )
        .await?;
        return Ok(true);
    }
    let sql = match on_race {
        OnRace::Yield => {
            format!("{INSERT} ON CONFLICT (project_id, user_key) DO NOTHING RETURNING id")
        }
        OnRace::Fail => format!("{INSERT} RETURNING id"),
    };
    let row = tx
        .query_opt(
            sql.as_str(),
            &[
                &project,
                &p.user_key,
                &p.user_id,
                &p.email,
                &p.phone_number,
                &channels,
                &properties,
                &tags,
                &p.subscribed,
                &p.first_seen,
                &p.last_seen,
                &now,
            ],
        )
        .await?;
    match row {
        Some(row) => {
            p.id = row.try_get(0)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

async fn by_key(tx: &Transaction<'_>, project: i64, key: &str) -> Result<Option<Profile>, Error> {
    let sql =
        format!("SELECT {COLUMNS} FROM users WHERE project_id = $1 AND user_key = $2 FOR UPDATE");
    match tx.query_opt(sql.as_str(), &[&project, &key]).await? {
        Some(row) => from_row(&row).map(Some),
        None => Ok(None),
    }
}

/// The user a reference names: by key; for an email alone, else the oldest user whose email
/// field it is.
async fn resolve(
    tx: &Transaction<'_>,
    project: i64,
    user: &UserRef,
) -> Result<Option<Profile>, Error> {
    if let Some(found) = by_key(tx, project, user.key()).await? {
        return Ok(Some(found));
    }
    match user {
        UserRef::Id(_) => Ok(None),
        UserRef::Email(email) => {
            let sql = format!(
                "SELECT {COLUMNS} FROM users WHERE project_id = $1 AND email = $2 \
                 ORDER BY id LIMIT 1 FOR UPDATE"
            );
            match tx
                .query_opt(sql.as_str(), &[&project, &email.as_str()])
                .await?
            {
                Some(row) => from_row(&row).map(Some),
                None => Ok(None),
            }
        }
    }
}

fn not_found() -> Result<(), StoreError> {
    Err(StoreError::NotFound("user".into()))
}

/// Applies one change. `Ok(Err(NotFound))` when it needs a user that does not exist (the
/// batch goes on); `Err` only for a database failure (the batch rolls back).
pub(super) async fn apply(
    tx: &Transaction<'_>,
    request: &ProfileRequest,
) -> Result<Result<(), StoreError>, Error> {
    // An attempt yields only to a user another transaction committed after its lookup,
    // which the next attempt's lookup sees (read committed: each statement sees what was
    // committed before it; under repeatable read PostgreSQL fails the insert instead). Only
    // that user being deleted and created again in between brings a third attempt, which
    // inserts without yielding: the database's own error rather than another round.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let on_race = if attempts < 3 {
            OnRace::Yield
        } else {
            OnRace::Fail
        };
        if let Some(result) = attempt(tx, request, on_race).await? {
            return Ok(result);
        }
    }
}

/// One try at a change: `None` when it yielded to a user another transaction created
/// meanwhile. Nothing is written before the insert that may yield, so a try that yields
/// leaves nothing behind.
async fn attempt(
    tx: &Transaction<'_>,
    request: &ProfileRequest,
    on_race: OnRace,
) -> Result<Option<Result<(), StoreError>>, Error> {
    let project = request.project.get();
    let now = request.received_at.as_micros();
    let saved = match &request.change {
        ProfileChange::Track {
            identity,
            phone_number,
            channels,
            data,
        } => {
            let user = match (identity.id(), identity.email()) {
                (Some(id), _) => UserRef::Id(id.clone()),
                (None, Some(email)) => UserRef::Email(email.clone()),
                (None, None) => return Ok(Some(not_found())),
            };
            let mut profile = match resolve(tx, project, &user).await? {
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
            save(&mut profile, tx, project, now, on_race).await?
        }
        ProfileChange::Edit { user, changes } => {
            let Some(mut profile) = resolve(tx, project, user).await? else {
                return Ok(Some(not_found()));
            };
            merge_properties(&mut profile.properties, changes.clone());
            save(&mut profile, tx, project, now, on_race).await?
        }
        ProfileChange::Tags { user, add, remove } => {
            let Some(mut profile) = resolve(tx, project, user).await? else {
                return Ok(Some(not_found()));
            };
            if add.is_empty() && remove.is_empty() {
                return Ok(Some(Ok(())));
            }
            merge_tags(&mut profile.tags, add, remove);
            save(&mut profile, tx, project, now, on_race).await?
        }
        ProfileChange::Subscription { user, subscribed } => {
            // An unknown user is created so the choice is kept for when it shows up.
            let mut profile = match resolve(tx, project, user).await? {
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
            save(&mut profile, tx, project, now, on_race).await?
        }
        ProfileChange::Delete { user } => {
            let Some(profile) = resolve(tx, project, user).await? else {
                return Ok(Some(not_found()));
            };
            delete(tx, project, &profile).await?;
            true
        }
        ProfileChange::Reidentify { id, new_id } => {
            let Some(mut old) = by_key(tx, project, id.as_str()).await? else {
                return Ok(Some(not_found()));
            };
            match by_key(tx, project, new_id.as_str()).await? {
                None => {
                    move_dedup(tx, project, &old.user_key, new_id.as_str()).await?;
                    old.user_key = new_id.as_str().to_owned();
                    old.user_id = Some(new_id.as_str().to_owned());
                    save(&mut old, tx, project, now, on_race).await?
                }
                Some(mut new) => {
                    // Merge into the existing `new_id`; events and dedup records move.
                    new.absorb(&mut old);
                    tx.execute(
                        "UPDATE events SET user_ref = $2 WHERE user_ref = $1",
                        &[&old.id, &new.id],
                    )
                    .await?;
                    move_dedup(tx, project, &old.user_key, &new.user_key).await?;
                    tx.execute("DELETE FROM users WHERE id = $1", &[&old.id])
                        .await?;
                    save(&mut new, tx, project, now, on_race).await?
                }
            }
        }
    };
    // Only an insert can yield, and every insert is the change's first write.
    Ok(saved.then_some(Ok(())))
}

/// Removes a user, its events and its dedup records. The records are the whole of dedup
/// here: deleting them is what makes a resend of one of the user's events accepted again,
/// as forgetting their keys in the index does in the SQLite store. They are found by the
/// user's key (a scan of the window's records: deletions are rare, and an index on it would
/// cost every event a second index entry).
async fn delete(tx: &Transaction<'_>, project: i64, user: &Profile) -> Result<(), Error> {
    tx.execute("DELETE FROM events WHERE user_ref = $1", &[&user.id])
        .await?;
    tx.execute(
        "DELETE FROM dedup WHERE project_id = $1 AND user_key = $2",
        &[&project, &user.user_key],
    )
    .await?;
    tx.execute("DELETE FROM users WHERE id = $1", &[&user.id])
        .await?;
    Ok(())
}

/// Dedup records follow their user when it is renamed or merged into another.
async fn move_dedup(tx: &Transaction<'_>, project: i64, from: &str, to: &str) -> Result<(), Error> {
    tx.execute(
        "UPDATE dedup SET user_key = $3 WHERE project_id = $1 AND user_key = $2",
        &[&project, &from, &to],
    )
    .await?;
    Ok(())
}
