//! Profile changes inside the writer's transaction: the rows `trackd_core::plan` asks
//! for are read here, it decides, and its plan is written here, as in `sqlite/profile.rs`.
//! The rules live in `trackd-core`; only the SQL lives here.
//!
//! SQLite has one writer; here other nodes change users at the same time. Rows are read
//! `FOR UPDATE`, so a read-modify-write never overwrites a change committed between its
//! read and its write (two nodes merging properties into one user both keep theirs), and a
//! user created by another node between the lookup and the insert is changed instead of
//! failing the batch. Either way the outcome is the one SQLite gives when the other
//! transaction came first, which it did.

use tokio_postgres::{Error, Row, Transaction};
use trackd_core::plan::{self, Found, Lookup, Plan, UserRow, USER_COLUMNS as COLUMNS};
use trackd_core::{ProfileRequest, StoreError, UserRef};

use super::outbox::{self, Pending};

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
fn from_row(r: &Row) -> Result<UserRow, Error> {
    Ok(UserRow::decode(
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
    p: &mut UserRow,
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

async fn by_key(tx: &Transaction<'_>, project: i64, key: &str) -> Result<Option<UserRow>, Error> {
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
) -> Result<Option<UserRow>, Error> {
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

/// Applies one change. `Ok(Ok(Some(user)))` names the user it changed (`None`: nothing
/// changed); `Ok(Err(NotFound))` when it needs a user that does not exist (the batch goes
/// on); `Err` only for a database failure (the batch rolls back). A deletion or a merge
/// also takes the user's outbox items with it, committed ones and the batch's `pending`.
pub(super) async fn apply(
    tx: &Transaction<'_>,
    request: &ProfileRequest,
    pending: &mut Pending,
) -> Result<Result<crate::job::Changed, StoreError>, Error> {
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
        if let Some(result) = attempt(tx, request, on_race, pending).await? {
            return Ok(result);
        }
    }
}

/// One try at a change: reads what the planner asks for, lets it decide, writes the plan.
/// `None` when it yielded to a user another transaction created meanwhile. Nothing is
/// written before the insert that may yield, so a try that yields leaves nothing behind.
async fn attempt(
    tx: &Transaction<'_>,
    request: &ProfileRequest,
    on_race: OnRace,
    pending: &mut Pending,
) -> Result<Option<Result<crate::job::Changed, StoreError>>, Error> {
    let project = request.project.get();
    let now = request.received_at.as_micros();
    let found = match plan::lookup(&request.change) {
        Lookup::Nothing => Found::Nothing,
        Lookup::User(user) => Found::User(resolve(tx, project, &user).await?),
        Lookup::Pair { from, to } => Found::Pair(
            by_key(tx, project, &from).await?,
            by_key(tx, project, &to).await?,
        ),
    };
    let changed = match plan::plan(&request.change, now, found, &request.limits) {
        Plan::Nothing => return Ok(Some(Ok(None))),
        Plan::NotFound => return Ok(Some(Err(StoreError::NotFound("user".into())))),
        Plan::Refused(e) => return Ok(Some(Err(StoreError::Invalid(e)))),
        Plan::Save(mut row) => save(&mut row, tx, project, now, on_race)
            .await?
            .then_some((row.id, None)),
        Plan::Delete(row) => {
            delete(tx, project, &row, pending).await?;
            Some((row.id, Some(trackd_core::delivery::delete_body(&row))))
        }
        Plan::Rename { mut user, from_key } => {
            move_dedup(tx, project, &from_key, &user.user_key).await?;
            save(&mut user, tx, project, now, on_race)
                .await?
                .then_some((user.id, None))
        }
        Plan::Merge { from, mut into } => {
            tx.execute(
                "UPDATE events SET user_ref = $2 WHERE user_ref = $1",
                &[&from.id, &into.id],
            )
            .await?;
            move_dedup(tx, project, &from.user_key, &into.user_key).await?;
            outbox::merge_user(tx, pending, from.id, into.id).await?;
            tx.execute("DELETE FROM users WHERE id = $1", &[&from.id])
                .await?;
            save(&mut into, tx, project, now, on_race)
                .await?
                .then_some((into.id, None))
        }
    };
    // Only an insert can yield, and every insert is the change's first write.
    Ok(changed.map(|user| Ok(Some(user))))
}

/// Removes a user, its events and its dedup records. The records are the whole of dedup
/// here: deleting them is what makes a resend of one of the user's events accepted again,
/// as forgetting their keys in the index does in the SQLite store. They are found by the
/// user's key (a scan of the window's records: deletions are rare, and an index on it would
/// cost every event a second index entry). Its undelivered profile changes go too.
async fn delete(
    tx: &Transaction<'_>,
    project: i64,
    user: &UserRow,
    pending: &mut Pending,
) -> Result<(), Error> {
    tx.execute("DELETE FROM events WHERE user_ref = $1", &[&user.id])
        .await?;
    tx.execute(
        "DELETE FROM dedup WHERE project_id = $1 AND user_key = $2",
        &[&project, &user.user_key],
    )
    .await?;
    outbox::forget_user(tx, pending, user.id).await?;
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
