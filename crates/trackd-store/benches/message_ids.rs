//! What a Segment messageId lookup costs (DESIGN §9; `src/sqlite/messages.rs`): the hot
//! tier's in-memory index, the cold tier's B-tree probe (two epochs) on a table of
//! 5,000,000 ids in a file, and the log append each stored call pays in its transaction.
//! The same statements as the store's, on the same table shapes.
//!
//! `cargo bench -p trackd-store --bench message_ids`

// criterion_group! makes an undocumented function.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use rusqlite::{params, Connection};
use trackd_core::segment::MessageKey;
use trackd_core::ProjectId;

const COLD: u32 = 5_000_000;
const HOT: u32 = 1_000_000;
const DAY: i64 = 86_400_000_000;

fn key(n: u32) -> MessageKey {
    MessageKey::of(ProjectId::new(1), &format!("bench-{n}"))
}

fn lookups(c: &mut Criterion) {
    let hot: HashMap<MessageKey, i64> = (0..HOT).map(|n| (key(n), 1)).collect();
    // Keys made beforehand: hashing a messageId is the parser's cost, not the lookup's.
    let seen: Vec<MessageKey> = (0..100_000).map(|i| key(i * 7)).collect();
    let new: Vec<MessageKey> = (0..100_000).map(|i| key(COLD + i)).collect();
    let mut i = 0usize;
    let mut next = |keys: &[MessageKey]| {
        i = (i + 1) % keys.len();
        keys[i]
    };
    c.bench_function("hot index: an id seen (1M held)", |b| {
        b.iter(|| black_box(hot.get(&next(&seen))))
    });
    c.bench_function("hot index: a new id (1M held)", |b| {
        b.iter(|| black_box(hot.get(&next(&new))))
    });
    let mut n = 0u32;

    let dir = tempfile::tempdir().expect("dir");
    let mut conn = Connection::open(dir.path().join("ids.db")).expect("db");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE message_ids (epoch INTEGER NOT NULL, key BLOB NOT NULL,
             received_at INTEGER NOT NULL, PRIMARY KEY (epoch, key)) WITHOUT ROWID;
         CREATE TABLE message_log (id INTEGER PRIMARY KEY, key BLOB NOT NULL,
             received_at INTEGER NOT NULL);",
    )
    .expect("schema");
    let now = 20_000 * DAY + DAY / 2;
    let epoch = now / DAY;
    let mut rows: Vec<(i64, [u8; 16])> = (0..COLD)
        .map(|n| (epoch - i64::from(n % 2), *key(n).as_bytes()))
        .collect();
    rows.sort_unstable();
    let tx = conn.transaction().expect("tx");
    {
        let mut insert = tx
            .prepare("INSERT INTO message_ids VALUES (?1, ?2, ?3)")
            .expect("insert");
        for (e, k) in &rows {
            insert.execute(params![e, &k[..], now - 1]).expect("row");
        }
    }
    tx.commit().expect("commit");
    drop(rows);
    let probe = |conn: &Connection, k: &MessageKey| -> Option<i64> {
        conn.prepare_cached(
            "SELECT max(received_at) FROM message_ids WHERE epoch IN (?1, ?2) AND key = ?3",
        )
        .expect("probe")
        .query_row(params![epoch - 1, epoch, &k.as_bytes()[..]], |r| r.get(0))
        .expect("row")
    };
    c.bench_function("B-tree probe: an id seen (5M held)", |b| {
        b.iter(|| black_box(probe(&conn, &next(&seen))))
    });
    c.bench_function("B-tree probe: a new id (5M held)", |b| {
        b.iter(|| black_box(probe(&conn, &next(&new))))
    });
    c.bench_function("log append, 1,000 ids a transaction (per id)", |b| {
        b.iter_custom(|iters| {
            let started = std::time::Instant::now();
            let mut left = iters;
            while left > 0 {
                let tx = conn.transaction().expect("tx");
                {
                    let mut append = tx
                        .prepare_cached(
                            "INSERT INTO message_log (key, received_at) VALUES (?1, ?2)",
                        )
                        .expect("append");
                    for _ in 0..left.min(1000) {
                        n = n.wrapping_add(1);
                        append
                            .execute(params![&key(n).as_bytes()[..], now])
                            .expect("append");
                    }
                }
                tx.commit().expect("commit");
                left = left.saturating_sub(1000);
            }
            started.elapsed()
        })
    });
}

criterion_group!(benches, lookups);
criterion_main!(benches);
