//! Segment messageIds received within the window (DESIGN §9), on disk.
//!
//! A day of ids does not fit in memory at a busy rate (10,000 calls/s is 864 million a
//! day), so unlike Vero's 180-second dedup index these are looked up in the `message_ids`
//! B-tree, written in the same transaction as the call they protect. The table is keyed by
//! (epoch, key): `epoch` is the receive time divided by the window, so a lookup probes two
//! epochs (any id received less than a window ago is in the current or the previous one),
//! and expiry deletes whole old epochs from the left edge of the tree, in short
//! transactions, never scanning. The epoch width is kept in `meta`; when the window is
//! changed the kept ids are re-keyed once at start.

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use trackd_core::segment::MessageKey;

/// Rows deleted per purge transaction.
const PURGE_CHUNK: usize = 20_000;
/// Purge transactions per purge run, so one run never holds the writer long.
const PURGE_ROUNDS: usize = 10;

/// Makes the kept ids' epochs match `window` (µs): re-keys them once when the window
/// changed since they were written. Nothing to do when the window is 0 (idempotency off).
pub(crate) fn prepare(conn: &Connection, window: i64) -> rusqlite::Result<()> {
    if window <= 0 {
        return Ok(());
    }
    let kept: Option<i64> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'message_id_epoch_micros'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if kept == Some(window) {
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    // Two ids of one key falling into one new epoch: either row marks it seen.
    tx.execute(
        "UPDATE OR REPLACE message_ids SET epoch = received_at / ?1",
        [window],
    )?;
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('message_id_epoch_micros', ?1) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [window],
    )?;
    tx.commit()
}

/// The messageIds one batch has recorded so far (visible to its own later calls).
#[derive(Default)]
pub(crate) struct Seen(HashMap<MessageKey, i64>);

impl Seen {
    /// Whether `key` was received less than `window` before `received` (µs): earlier in
    /// this batch, or in a committed one.
    pub fn seen(
        &self,
        tx: &Transaction<'_>,
        key: &MessageKey,
        received: i64,
        window: i64,
    ) -> rusqlite::Result<bool> {
        if self.0.get(key).is_some_and(|&at| received - at < window) {
            return Ok(true);
        }
        let epoch = received.div_euclid(window);
        let last: Option<i64> = tx
            .prepare_cached(
                "SELECT max(received_at) FROM message_ids \
                 WHERE epoch IN (?1, ?2) AND key = ?3",
            )?
            .query_row(params![epoch - 1, epoch, &key.as_bytes()[..]], |r| r.get(0))?;
        Ok(last.is_some_and(|at| received - at < window))
    }

    /// Records `key` as received at `received`, in the batch's transaction.
    pub fn record(
        &mut self,
        tx: &Transaction<'_>,
        key: MessageKey,
        received: i64,
        window: i64,
    ) -> rusqlite::Result<()> {
        tx.prepare_cached(
            "INSERT OR REPLACE INTO message_ids (epoch, key, received_at) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![
            received.div_euclid(window),
            &key.as_bytes()[..],
            received
        ])?;
        self.0.insert(key, received);
        Ok(())
    }
}

/// Deletes the ids of every epoch that ends at or before `cutoff` (µs), a chunk per
/// transaction, from the left edge of the tree; returns how many went.
pub(crate) fn purge(conn: &Connection, window: i64, cutoff: i64) -> rusqlite::Result<usize> {
    // Epochs before this one end at or before the cutoff: nothing in them can still be
    // inside the window of any request being written.
    let keep_from = cutoff.div_euclid(window);
    let mut deleted = 0;
    for _ in 0..PURGE_ROUNDS {
        let n = conn
            .prepare_cached(
                "DELETE FROM message_ids WHERE (epoch, key) IN \
                 (SELECT epoch, key FROM message_ids WHERE epoch < ?1 LIMIT ?2)",
            )?
            .execute(params![keep_from, PURGE_CHUNK as i64])?;
        deleted += n;
        if n < PURGE_CHUNK {
            break;
        }
    }
    Ok(deleted)
}
