//! Segment messageIds received within the window (DESIGN §9), in two tiers.
//!
//! A day of ids does not fit in memory at a busy rate (10,000 calls/s is 864 million a
//! day), and a B-tree keyed by a random id costs a random page write per insert (measured:
//! inserting each id there in the call's own transaction cut `/v1/batch` from 95,000 to
//! 38,000 events/s). So:
//!
//! - **Hot**: each id is appended to `message_log` (rowid order: one page at the table's
//!   end) in the transaction of the call it protects, and indexed in memory by the writer
//!   thread, which alone owns it. At most [`HOT_MAX`] ids (about 50 MB), loaded again from
//!   the log at start, so the window survives restarts and kill -9.
//! - **Cold**: past that, the writer moves the oldest ids, [`MOVE_CHUNK`] per short
//!   transaction and sorted, into the `message_ids` B-tree, keyed by (epoch, key): `epoch`
//!   is the receive time divided by the window, so a lookup probes two epochs, and expiry
//!   deletes whole old epochs from the left edge of the tree. The epoch width is kept in
//!   `meta`; when the window changes the kept ids are re-keyed once at start.
//!
//! A lookup asks the batch's own ids, then the hot index, then the B-tree.

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use trackd_core::segment::MessageKey;

/// Ids held in memory before the oldest move to the B-tree.
pub(crate) const HOT_MAX: usize = 1_000_000;
/// Ids moved to the B-tree per transaction.
pub(crate) const MOVE_CHUNK: usize = 50_000;
/// Rows deleted per purge transaction.
const PURGE_CHUNK: usize = 20_000;
/// Purge transactions per purge run, so one run never holds the writer long.
const PURGE_ROUNDS: usize = 10;

/// The hot tier: the ids in `message_log`, by key, with their latest receive time (µs).
pub(crate) struct MessageIds {
    window: i64,
    hot: HashMap<MessageKey, i64>,
    /// Whether the B-tree may hold ids (until the first move it is not even probed).
    cold: bool,
}

impl MessageIds {
    /// Loads the hot tier from the log, after making the B-tree's epochs match `window`
    /// (µs). With a zero window (idempotency off) nothing is read or changed.
    pub fn load(conn: &Connection, window: i64) -> rusqlite::Result<Self> {
        let mut ids = MessageIds {
            window,
            hot: HashMap::new(),
            cold: false,
        };
        if window <= 0 {
            return Ok(ids);
        }
        rekey(conn, window)?;
        ids.cold = conn.query_row("SELECT EXISTS (SELECT 1 FROM message_ids)", [], |r| {
            r.get(0)
        })?;
        let mut stmt = conn.prepare("SELECT key, received_at FROM message_log ORDER BY id")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let key: Vec<u8> = row.get(0)?;
            if let Ok(key) = <[u8; 16]>::try_from(key.as_slice()) {
                ids.remember(MessageKey::from_bytes(key), row.get(1)?);
            }
        }
        Ok(ids)
    }

    /// The window (µs); 0 when idempotency is off.
    pub fn window(&self) -> i64 {
        self.window
    }

    fn remember(&mut self, key: MessageKey, received: i64) {
        let at = self.hot.entry(key).or_insert(received);
        *at = (*at).max(received);
    }

    /// Whether `key` was received less than the window before `received` (µs): earlier in
    /// this batch (`pending`), or in a committed one.
    pub fn seen(
        &self,
        tx: &Transaction<'_>,
        pending: &Pending,
        key: &MessageKey,
        received: i64,
    ) -> rusqlite::Result<bool> {
        let window = self.window;
        let within = |at: i64| received - at < window;
        if pending.0.get(key).is_some_and(|&at| within(at)) {
            return Ok(true);
        }
        if self.hot.get(key).is_some_and(|&at| within(at)) {
            return Ok(true);
        }
        if !self.cold {
            return Ok(false);
        }
        let epoch = received.div_euclid(window);
        let last: Option<i64> = tx
            .prepare_cached(
                "SELECT max(received_at) FROM message_ids \
                 WHERE epoch IN (?1, ?2) AND key = ?3",
            )?
            .query_row(params![epoch - 1, epoch, &key.as_bytes()[..]], |r| r.get(0))?;
        Ok(last.is_some_and(within))
    }

    /// Records `key` as received at `received`, in the batch's transaction.
    pub fn record(
        &self,
        tx: &Transaction<'_>,
        pending: &mut Pending,
        key: MessageKey,
        received: i64,
    ) -> rusqlite::Result<()> {
        tx.prepare_cached("INSERT INTO message_log (key, received_at) VALUES (?1, ?2)")?
            .execute(params![&key.as_bytes()[..], received])?;
        pending.0.insert(key, received);
        Ok(())
    }

    /// Takes a committed batch's ids into the hot index.
    pub fn committed(&mut self, pending: Pending) {
        for (key, received) in pending.0 {
            self.remember(key, received);
        }
    }

    /// Whether the hot tier holds more than it should.
    pub fn over(&self) -> bool {
        self.hot.len() > HOT_MAX
    }

    /// Moves the oldest [`MOVE_CHUNK`] ids of the log to the B-tree, sorted, in one
    /// transaction (ids already past the window, `cutoff`, are dropped instead); returns
    /// how many left the log.
    pub fn move_oldest(&mut self, conn: &mut Connection, cutoff: i64) -> rusqlite::Result<usize> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut rows: Vec<(i64, [u8; 16], i64)> = Vec::with_capacity(MOVE_CHUNK);
        {
            let mut stmt = tx.prepare_cached(
                "SELECT id, key, received_at FROM message_log ORDER BY id LIMIT ?1",
            )?;
            let mut found = stmt.query([MOVE_CHUNK as i64])?;
            while let Some(row) = found.next()? {
                let key: Vec<u8> = row.get(1)?;
                if let Ok(key) = <[u8; 16]>::try_from(key.as_slice()) {
                    rows.push((row.get(0)?, key, row.get(2)?));
                }
            }
        }
        let Some(last) = rows.iter().map(|r| r.0).max() else {
            return Ok(0);
        };
        let window = self.window;
        let mut keep: Vec<(i64, [u8; 16], i64)> = rows
            .iter()
            .filter(|r| r.2 > cutoff)
            .map(|&(_, key, received)| (received.div_euclid(window), key, received))
            .collect();
        // Key order: each B-tree page is written once per chunk however many ids it takes.
        keep.sort_unstable();
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO message_ids (epoch, key, received_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (epoch, key) DO UPDATE \
                   SET received_at = max(received_at, excluded.received_at)",
            )?;
            for (epoch, key, received) in &keep {
                insert.execute(params![epoch, &key[..], received])?;
            }
        }
        tx.execute("DELETE FROM message_log WHERE id <= ?1", [last])?;
        tx.commit()?;
        self.cold |= !keep.is_empty();
        for (_, key, received) in &rows {
            let key = MessageKey::from_bytes(*key);
            // Still in the log under a later receive time: it stays hot.
            if self.hot.get(&key) == Some(received) {
                self.hot.remove(&key);
            }
        }
        Ok(rows.len())
    }

    /// Deletes the B-tree's ids of every epoch that ends at or before `cutoff` (µs), a
    /// chunk per transaction, from the left edge of the tree; returns how many went.
    pub fn purge(&self, conn: &Connection, cutoff: i64) -> rusqlite::Result<usize> {
        if self.window <= 0 {
            return Ok(0);
        }
        // Epochs before this one end at or before the cutoff: nothing in them can still be
        // inside the window of any request being written.
        let keep_from = cutoff.div_euclid(self.window);
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
}

/// Re-keys the B-tree's ids when the window changed since they were written.
fn rekey(conn: &Connection, window: i64) -> rusqlite::Result<()> {
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

/// The ids one batch has recorded so far: visible to its own later calls, and taken into
/// the hot index only once the batch committed.
#[derive(Default)]
pub(crate) struct Pending(HashMap<MessageKey, i64>);

#[cfg(test)]
mod tests {
    use super::*;
    use trackd_core::ProjectId;

    const HOUR: i64 = 3_600_000_000;

    fn db() -> Connection {
        let mut conn = Connection::open_in_memory().expect("db");
        super::super::schema::migrate(&mut conn).expect("schema");
        conn
    }

    fn key(n: u32) -> MessageKey {
        MessageKey::of(ProjectId::new(1), &format!("m-{n}"))
    }

    /// Records `keys` at `at` in one committed transaction.
    fn record(conn: &mut Connection, ids: &mut MessageIds, keys: &[MessageKey], at: i64) {
        let tx = conn.transaction().expect("tx");
        let mut pending = Pending::default();
        for k in keys {
            ids.record(&tx, &mut pending, *k, at).expect("record");
        }
        tx.commit().expect("commit");
        ids.committed(pending);
    }

    fn seen(conn: &mut Connection, ids: &MessageIds, k: &MessageKey, at: i64) -> bool {
        let tx = conn.transaction().expect("tx");
        let seen = ids.seen(&tx, &Pending::default(), k, at).expect("seen");
        tx.rollback().expect("rollback");
        seen
    }

    #[test]
    fn ids_are_found_hot_after_a_reload_and_cold_after_a_move() {
        let mut conn = db();
        let window = 24 * HOUR;
        let mut ids = MessageIds::load(&conn, window).expect("load");
        let start = 1_000 * window + 5 * HOUR;
        record(&mut conn, &mut ids, &[key(1), key(2)], start);
        assert!(seen(&mut conn, &ids, &key(1), start + HOUR));
        assert!(!seen(&mut conn, &ids, &key(3), start + HOUR));
        // Reloaded from the log (a restart).
        let mut ids = MessageIds::load(&conn, window).expect("reload");
        assert!(seen(&mut conn, &ids, &key(2), start + HOUR));
        // Moved to the B-tree: the log is empty, the hot index too, the ids still seen, in
        // the next epoch as well, until the window has passed.
        assert_eq!(ids.move_oldest(&mut conn, start - window).expect("move"), 2);
        let log: i64 = conn
            .query_row("SELECT count(*) FROM message_log", [], |r| r.get(0))
            .expect("count");
        assert_eq!((log, ids.hot.len()), (0, 0));
        assert!(seen(&mut conn, &ids, &key(1), start + 20 * HOUR));
        assert!(seen(&mut conn, &ids, &key(2), start + window - 1));
        assert!(!seen(&mut conn, &ids, &key(2), start + window));
        // Expiry deletes whole epochs that ended by the cutoff (the oldest receive time
        // that can still matter), never one that holds a later id.
        assert_eq!(ids.purge(&conn, start - 1).expect("purge"), 0);
        assert_eq!(
            ids.purge(&conn, start + 1).expect("purge"),
            0,
            "epoch not ended"
        );
        assert_eq!(ids.purge(&conn, start + window).expect("purge"), 2);
    }

    #[test]
    fn a_changed_window_rekeys_the_cold_ids() {
        let mut conn = db();
        let mut ids = MessageIds::load(&conn, 24 * HOUR).expect("load");
        let start = 500 * 24 * HOUR + 23 * HOUR;
        record(&mut conn, &mut ids, &[key(7)], start);
        ids.move_oldest(&mut conn, 0).expect("move");
        // Two hours' window now: the id (an hour old) must still be found.
        let ids = MessageIds::load(&conn, 2 * HOUR).expect("load");
        assert!(seen(&mut conn, &ids, &key(7), start + HOUR));
        assert!(!seen(&mut conn, &ids, &key(7), start + 2 * HOUR));
    }

    #[test]
    fn a_move_keeps_ids_received_again_later_hot() {
        let mut conn = db();
        let window = 24 * HOUR;
        let mut ids = MessageIds::load(&conn, window).expect("load");
        let start = 300 * window;
        record(&mut conn, &mut ids, &[key(1)], start);
        // The id again after the window: logged again, later.
        record(&mut conn, &mut ids, &[key(1)], start + window + HOUR);
        // Only the first row moves (chunk of the oldest); an expired one is dropped.
        ids.move_oldest(&mut conn, start + 1).expect("move");
        assert_eq!(
            ids.hot.get(&key(1)),
            None,
            "one move takes both rows of this tiny log"
        );
        assert!(seen(&mut conn, &ids, &key(1), start + window + 2 * HOUR));
    }
}
