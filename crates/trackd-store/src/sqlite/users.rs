//! The user an event belongs to, as the writer finds it: DESIGN §3's upsert (create the user
//! keyed by the identity, or touch it), without a statement per event.
//!
//! The writer remembers the users it has read or written ([`KnownUsers`]: project and user
//! key to row id and the identity fields as stored), so an event of a known user reads
//! nothing; its first/last-seen touch waits in [`Touches`] and is written once per user per
//! batch, before anything else reads the row (a profile change) and before the commit.
//! The memory is only a cache of committed rows: it is cleared whenever rows may have
//! changed under it (a profile change, another connection's commit, a failed batch).

use std::collections::HashMap;

use rusqlite::{params, OptionalExtension, Transaction};
use trackd_core::EventRecord;

/// At most this many users are remembered; the memory is cleared when it is full (about
/// 120 bytes a user: 24 MiB at most).
const MAX_KNOWN: usize = 200_000;

/// A user's row as the writer last saw it committed (or wrote it in this batch).
struct Known {
    id: i64,
    user_id: Option<Box<str>>,
    email: Option<Box<str>>,
}

/// Users by project, then user key.
#[derive(Default)]
pub(crate) struct KnownUsers {
    users: HashMap<i64, HashMap<Box<str>, Known>>,
    len: usize,
}

/// The receive times of a batch's events by user row, written at the end of the batch.
#[derive(Default)]
pub(crate) struct Touches {
    seen: HashMap<i64, (i64, i64)>,
}

impl Touches {
    /// A receive time of an event of the user `id`.
    pub(crate) fn add(&mut self, id: i64, received: i64) {
        let seen = self.seen.entry(id).or_insert((received, received));
        seen.0 = seen.0.min(received);
        seen.1 = seen.1.max(received);
    }

    /// Writes the waiting touches: one statement per user.
    pub(crate) fn flush(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        if self.seen.is_empty() {
            return Ok(());
        }
        let mut touch = tx.prepare_cached(
            "UPDATE users SET first_seen = min(first_seen, ?2), last_seen = max(last_seen, ?3) \
             WHERE id = ?1",
        )?;
        // In row order: consecutive updates land on the same or neighbouring pages (an
        // import's commit touches tens of thousands of users; a map's order is random).
        let mut seen: Vec<(i64, (i64, i64))> = self.seen.drain().collect();
        seen.sort_unstable_by_key(|&(id, _)| id);
        for (id, (first, last)) in seen {
            touch.execute(params![id, first, last])?;
        }
        Ok(())
    }
}

impl KnownUsers {
    /// Forgets every user: rows may have changed under the memory.
    pub(crate) fn clear(&mut self) {
        self.users.clear();
        self.len = 0;
    }

    /// Whether the user keyed by `key` is remembered.
    pub(crate) fn contains(&self, project: i64, key: &str) -> bool {
        self.users
            .get(&project)
            .is_some_and(|u| u.contains_key(key))
    }

    /// The row id of the event's user (by its user key), created when new. Same effect as
    /// `INSERT ... ON CONFLICT (project_id, user_key) DO UPDATE SET first_seen = min(..),
    /// last_seen = max(..), user_id = coalesce(new, old), email = coalesce(new, old)`, with
    /// the touch left in `touches`.
    pub(crate) fn resolve(
        &mut self,
        tx: &Transaction<'_>,
        touches: &mut Touches,
        e: &EventRecord,
    ) -> rusqlite::Result<i64> {
        let project = e.project.get();
        let key = e.identity.user_key();
        let user_id = e.identity.id().map(|i| i.as_str());
        let email = e.identity.email().map(|m| m.as_str());
        let received = e.received_at.as_micros();
        if let Some(known) = self.users.get_mut(&project).and_then(|u| u.get_mut(key)) {
            known.update(tx, user_id, email)?;
            touches.add(known.id, received);
            return Ok(known.id);
        }
        let found = tx
            .prepare_cached(
                "SELECT id, user_id, email FROM users WHERE project_id = ?1 AND user_key = ?2",
            )?
            .query_row(params![project, key], |r| {
                Ok(Known {
                    id: r.get(0)?,
                    user_id: r.get::<_, Option<String>>(1)?.map(Box::from),
                    email: r.get::<_, Option<String>>(2)?.map(Box::from),
                })
            })
            .optional()?;
        let known = match found {
            Some(mut known) => {
                known.update(tx, user_id, email)?;
                touches.add(known.id, received);
                known
            }
            None => {
                tx.prepare_cached(
                    "INSERT INTO users (project_id, user_key, user_id, email, first_seen, \
                     last_seen, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?5, ?5)",
                )?
                .execute(params![project, key, user_id, email, received])?;
                Known {
                    id: tx.last_insert_rowid(),
                    user_id: user_id.map(Box::from),
                    email: email.map(Box::from),
                }
            }
        };
        let id = known.id;
        if self.len >= MAX_KNOWN {
            self.clear();
        }
        self.users
            .entry(project)
            .or_default()
            .insert(Box::from(key), known);
        self.len += 1;
        Ok(id)
    }
}

impl Known {
    /// Sets the identity fields the event brings when they differ from the row's.
    fn update(
        &mut self,
        tx: &Transaction<'_>,
        user_id: Option<&str>,
        email: Option<&str>,
    ) -> rusqlite::Result<()> {
        let new_id = user_id.filter(|id| self.user_id.as_deref() != Some(id));
        let new_email = email.filter(|m| self.email.as_deref() != Some(m));
        if new_id.is_none() && new_email.is_none() {
            return Ok(());
        }
        tx.prepare_cached(
            "UPDATE users SET user_id = coalesce(?2, user_id), email = coalesce(?3, email) \
             WHERE id = ?1",
        )?
        .execute(params![self.id, new_id, new_email])?;
        if let Some(id) = new_id {
            self.user_id = Some(id.into());
        }
        if let Some(email) = new_email {
            self.email = Some(email.into());
        }
        Ok(())
    }
}
