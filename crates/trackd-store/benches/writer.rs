//! What the SQLite writer costs an event, with nothing else on the machine: the group-commit
//! writer of a real `SqliteStore` (durable commits, `synchronous=FULL`) taking batches of
//! tracked events as live ingest (16 at a time, what 64 connections give it) and as an
//! import gives them (`restore`, 2,000 a batch). Bodies are the ingest benchmark's
//! (`bench/wrk_track.lua`): 100,000 distinct users in turn, every event unique.
//!
//! `cargo bench -p trackd-store --bench writer`; the budget table in ARCHITECTURE.md is
//! built from it and from `valgrind --tool=callgrind` runs of the same bench.

// criterion_group! makes an undocumented function.
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Value};
use trackd_core::{Clock, EventRecord, ProjectId, Store, SystemClock, TrackRequest, TrackedEvent};
use trackd_store::sqlite::{SqliteConfig, SqliteStore, DEFAULT_WAL_CHECKPOINT_PAGES};

const USERS: u64 = 100_000;

fn body(n: u64) -> Value {
    let user = n % USERS;
    json!({
        "identity": {"id": user.to_string(), "email": format!("u{user}@example.com")},
        "event_name": "Viewed product",
        "data": {"product_name": "Red T-shirt",
                 "product_url": "http://www.yourdomain.com/products/red-t-shirt", "n": n},
        "extras": {"source": "bench", "created_at": "2023-05-30T04:46:31+0000"}
    })
}

fn tracked(project: ProjectId, n: u64) -> TrackedEvent {
    let Value::Object(map) = body(n) else {
        unreachable!("an object")
    };
    TrackRequest::new(map)
        .validate(project, SystemClock.now())
        .expect("a valid event")
}

struct Bench {
    rt: tokio::runtime::Runtime,
    store: Arc<SqliteStore>,
    project: ProjectId,
    _dir: tempfile::TempDir,
}

fn open() -> Bench {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    // On the disk the repo is on: a tmpfs would make fsync free.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("data dir");
    let store = Arc::new(
        SqliteStore::open(SqliteConfig {
            data_dir: dir.path().to_owned(),
            dedup_window: Duration::from_secs(3600),
            message_id_window: Duration::from_secs(86_400),
            queue_capacity: 100_000,
            clock: Arc::new(SystemClock),
            wal_checkpoint_pages: DEFAULT_WAL_CHECKPOINT_PAGES,
            writer_cache_kib: trackd_store::sqlite::DEFAULT_CACHE_KIB,
        })
        .expect("store"),
    );
    let project = rt
        .block_on(store.create_project("bench"))
        .expect("project")
        .id;
    Bench {
        rt,
        store,
        project,
        _dir: dir,
    }
}

fn writer(c: &mut Criterion) {
    let mut group = c.benchmark_group("writer");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(10));
    for batch in [16u64, 256] {
        let b = open();
        let mut n = 0u64;
        // Warm: every user exists, as in a running server.
        b.rt.block_on(async {
            for chunk in 0..(USERS / 1000) {
                let events: Vec<TrackedEvent> = (chunk * 1000..(chunk + 1) * 1000)
                    .map(|i| tracked(b.project, i))
                    .collect();
                futures::future::join_all(events.into_iter().map(|e| b.store.track(e))).await;
            }
        });
        n += USERS;
        group.throughput(Throughput::Elements(batch));
        group.bench_function(format!("track, {batch} events a commit"), |bench| {
            bench.iter_custom(|iters| {
                let events: Vec<Vec<TrackedEvent>> = (0..iters)
                    .map(|_| {
                        let batch: Vec<TrackedEvent> =
                            (n..n + batch).map(|i| tracked(b.project, i)).collect();
                        n += batch.len() as u64;
                        batch
                    })
                    .collect();
                let started = Instant::now();
                b.rt.block_on(async {
                    for batch in events {
                        let all =
                            futures::future::join_all(batch.into_iter().map(|e| b.store.track(e)))
                                .await;
                        assert!(all.iter().all(Result::is_ok));
                    }
                });
                started.elapsed()
            })
        });
        b.rt.block_on(b.store.shutdown()).expect("shutdown");
    }
    let b = open();
    let mut n = 0u64;
    group.throughput(Throughput::Elements(2000));
    group.bench_function("restore (import), 2,000 events a commit", |bench| {
        bench.iter_custom(|iters| {
            let batches: Vec<Vec<EventRecord>> = (0..iters)
                .map(|_| {
                    let batch = (n..n + 2000)
                        .map(|i| tracked(b.project, i).record)
                        .collect();
                    n += 2000;
                    batch
                })
                .collect();
            let started = Instant::now();
            b.rt.block_on(async {
                for batch in batches {
                    b.store.restore(batch, false).await.expect("restored");
                }
            });
            started.elapsed()
        })
    });
    b.rt.block_on(b.store.shutdown()).expect("shutdown");
    group.finish();
}

criterion_group!(benches, writer);
criterion_main!(benches);
