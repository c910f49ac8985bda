//! The dedup index: which dedup keys were accepted within the window.
//!
//! The durable record is the `dedup` table, written in the same transaction as each event.
//! It is append-only (rowid order is commit order), so recording a key costs one page at
//! the table's end instead of a random page of a hash-keyed B-tree: measured under the
//! ingest benchmark, those random pages were half of every commit's WAL writes. Lookups go
//! to this in-memory index of the same records, which the writer thread alone owns:
//!
//! - built at start from the records still inside the window (so the window survives
//!   restarts and kill -9);
//! - changed only after the transaction that wrote the records committed;
//! - caught up from the table when another process (another connection) committed, using
//!   the rowid watermark, so an import running beside the server is seen;
//! - pruned of expired keys when expired records are purged.
//!
//! Memory is bounded by the window: one entry (about 32 bytes) per event accepted in the
//! last `window` seconds.

use std::collections::{HashMap, VecDeque};

use rusqlite::{params, Connection};

/// Keys accepted within the window and where their records end in the table.
pub(crate) struct DedupIndex {
    /// Dedup key → receive time (µs) of the latest accepted event with that key.
    accepted: HashMap<[u8; 16], i64>,
    /// Largest rowid of the `dedup` table this index has seen.
    last_id: i64,
    /// (largest receive time, last rowid) per committed batch, oldest first: the purge
    /// deletes by rowid range, never scanning the table.
    segments: VecDeque<(i64, i64)>,
}

impl DedupIndex {
    /// Loads the records received after `cutoff` (µs) and deletes the older ones.
    pub fn load(conn: &Connection, cutoff: i64) -> rusqlite::Result<Self> {
        conn.execute("DELETE FROM dedup WHERE received_at <= ?1", [cutoff])?;
        let mut index = DedupIndex {
            accepted: HashMap::new(),
            last_id: 0,
            segments: VecDeque::new(),
        };
        index.catch_up(conn)?;
        Ok(index)
    }

    /// The largest rowid of the `dedup` table this index has seen.
    pub fn last_id(&self) -> i64 {
        self.last_id
    }

    /// The (key, receive time) of every record past rowid `after`.
    pub fn records_after(conn: &Connection, after: i64) -> rusqlite::Result<Vec<([u8; 16], i64)>> {
        let mut stmt = conn.prepare_cached("SELECT key, received_at FROM dedup WHERE id > ?1")?;
        let rows = stmt.query_map([after], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (key, received) = row?;
            if let Ok(key) = <[u8; 16]>::try_from(key.as_slice()) {
                out.push((key, received));
            }
        }
        Ok(out)
    }

    /// Reads the records committed by other connections since the last look.
    pub fn catch_up(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        let mut stmt = conn
            .prepare_cached("SELECT id, key, received_at FROM dedup WHERE id > ?1 ORDER BY id")?;
        let mut rows = stmt.query([self.last_id])?;
        let mut newest = None;
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            let key: Vec<u8> = row.get(1)?;
            let received: i64 = row.get(2)?;
            if let Ok(key) = <[u8; 16]>::try_from(key.as_slice()) {
                self.remember(key, received);
            }
            self.last_id = id;
            newest = Some(newest.map_or(received, |n: i64| n.max(received)));
        }
        if let Some(newest) = newest {
            self.segments.push_back((newest, self.last_id));
        }
        Ok(())
    }

    fn remember(&mut self, key: [u8; 16], received: i64) {
        let entry = self.accepted.entry(key).or_insert(received);
        *entry = (*entry).max(received);
    }

    /// When the key was last accepted, if it is still indexed.
    pub fn accepted_at(&self, key: &[u8; 16]) -> Option<i64> {
        self.accepted.get(key).copied()
    }

    /// Applies a committed batch: the keys it recorded (`Some(receive time)`) or deleted
    /// (`None`), and the last rowid its records took.
    pub fn committed(&mut self, changes: &Overlay, last_id: i64) {
        let mut newest = None;
        for (&key, &change) in &changes.0 {
            match change {
                Some(received) => {
                    self.remember(key, received);
                    newest = Some(newest.map_or(received, |n: i64| n.max(received)));
                }
                None => {
                    self.accepted.remove(&key);
                }
            }
        }
        if let Some(newest) = newest {
            self.last_id = self.last_id.max(last_id);
            self.segments.push_back((newest, self.last_id));
        }
    }

    /// Forgets keys received at or before `cutoff` and deletes their records, by whole
    /// committed batches.
    pub fn purge(&mut self, conn: &Connection, cutoff: i64) -> rusqlite::Result<usize> {
        let mut upto = None;
        while let Some(&(newest, last_id)) = self.segments.front() {
            if newest > cutoff {
                break;
            }
            upto = Some(last_id);
            self.segments.pop_front();
        }
        self.accepted.retain(|_, received| *received > cutoff);
        match upto {
            Some(id) => conn.execute("DELETE FROM dedup WHERE id <= ?1", params![id]),
            None => Ok(0),
        }
    }
}

/// A batch's changes to the index, visible to the batch's own later lookups before the
/// commit and applied to the index only after it.
#[derive(Default)]
pub(crate) struct Overlay(HashMap<[u8; 16], Option<i64>>);

impl Overlay {
    /// When the key was last accepted, as this batch sees it.
    pub fn accepted_at(&self, index: &DedupIndex, key: &[u8; 16]) -> Option<i64> {
        match self.0.get(key) {
            Some(change) => *change,
            None => index.accepted_at(key),
        }
    }

    /// The batch recorded `key` at `received`.
    pub fn record(&mut self, key: [u8; 16], received: i64) {
        self.0.insert(key, Some(received));
    }

    /// The batch deleted the record of `key`.
    pub fn forget(&mut self, key: [u8; 16]) {
        self.0.insert(key, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().expect("dir");
        let mut conn = Connection::open(dir.path().join("t.db")).expect("open");
        super::super::schema::migrate(&mut conn).expect("migrate");
        (dir, conn)
    }

    fn record(conn: &Connection, key: u8, received: i64) -> i64 {
        conn.execute(
            "INSERT INTO dedup (project_id, key, received_at, user_ref) VALUES (1, ?1, ?2, 1)",
            params![&[key; 16][..], received],
        )
        .expect("insert");
        conn.last_insert_rowid()
    }

    fn rows(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM dedup", [], |r| r.get(0))
            .expect("count")
    }

    #[test]
    fn load_keeps_records_inside_the_window_and_deletes_the_rest() {
        let (_dir, conn) = db();
        record(&conn, 1, 100);
        record(&conn, 2, 200);
        let index = DedupIndex::load(&conn, 150).expect("load");
        assert_eq!(index.accepted_at(&[1; 16]), None);
        assert_eq!(index.accepted_at(&[2; 16]), Some(200));
        assert_eq!(rows(&conn), 1);
    }

    #[test]
    fn purge_forgets_and_deletes_whole_expired_batches_only() {
        let (_dir, conn) = db();
        let mut index = DedupIndex::load(&conn, 0).expect("load");
        let a = record(&conn, 1, 100);
        index.committed(&overlay(&[(1, Some(100))]), a);
        record(&conn, 2, 300);
        let c = record(&conn, 3, 150);
        // One batch whose newest record is 300: not purged while 300 is inside the window,
        // even though one of its records (150) is older than the cutoff.
        index.committed(&overlay(&[(2, Some(300)), (3, Some(150))]), c);
        assert_eq!(index.purge(&conn, 200).expect("purge"), 1);
        assert_eq!(rows(&conn), 2);
        assert_eq!(index.accepted_at(&[1; 16]), None);
        assert_eq!(
            index.accepted_at(&[3; 16]),
            None,
            "expired keys leave the index"
        );
        assert_eq!(index.accepted_at(&[2; 16]), Some(300));
        assert_eq!(index.purge(&conn, 300).expect("purge"), 2);
        assert_eq!(rows(&conn), 0);
    }

    #[test]
    fn catch_up_reads_only_rows_past_the_watermark() {
        let (_dir, conn) = db();
        let mut index = DedupIndex::load(&conn, 0).expect("load");
        let mine = record(&conn, 1, 100);
        index.committed(&overlay(&[(1, Some(100))]), mine);
        record(&conn, 2, 110); // written by another connection
        index.catch_up(&conn).expect("catch up");
        assert_eq!(index.accepted_at(&[2; 16]), Some(110));
        assert_eq!(index.accepted_at(&[1; 16]), Some(100));
        // A key accepted again later keeps its latest time.
        let again = record(&conn, 1, 500);
        index.committed(&overlay(&[(1, Some(500))]), again);
        assert_eq!(index.accepted_at(&[1; 16]), Some(500));
        // A deleted record (the user was deleted) leaves the index.
        index.committed(&overlay(&[(1, None)]), again);
        assert_eq!(index.accepted_at(&[1; 16]), None);
    }

    fn overlay(changes: &[(u8, Option<i64>)]) -> Overlay {
        let mut o = Overlay::default();
        for &(k, change) in changes {
            match change {
                Some(t) => o.record([k; 16], t),
                None => o.forget([k; 16]),
            }
        }
        o
    }
}
