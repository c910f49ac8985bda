//! The crash harness: load from clients that record every request and its outcome, kill -9
//! at a random moment, restart, repeat; then every acknowledged event is stored exactly
//! once, an event in flight at a kill at most once, nothing never sent appears, every stored
//! event has its dedup record, and the database passes `PRAGMA integrity_check`.
//!
//! `TRACKD_CRASH_CYCLES` sets the cycles (10 by default, as in CI; `scripts/crash.sh`
//! runs longer), `TRACKD_CRASH_BIN` another build of trackd (the deliberately broken one
//! of `scripts/crash.sh --broken`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde_json::json;

use crate::helpers::{trackd_bin, ChildServer};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Sent, no answer yet (or the connection died with the server).
    InFlight,
    /// 200: committed.
    Acknowledged,
    /// A refusal (503 while shutting down, for one): may or may not be stored.
    Refused,
}

const CLIENTS: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_event() {
    let cycles: usize = std::env::var("TRACKD_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let bin = std::env::var_os("TRACKD_CRASH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(trackd_bin()));
    let dir = tempfile::tempdir().expect("dir");
    let db_path = dir.path().join("trackd.db");
    let outcomes: Arc<Mutex<HashMap<u64, Outcome>>> = Arc::default();
    let next_seq = Arc::new(AtomicU64::new(0));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut token = None;
    for cycle in 0..cycles {
        let mut server = ChildServer::spawn_bin(&bin, dir.path(), &[]);
        let token = token
            .get_or_insert_with(|| server.printed("tracking token:"))
            .clone();
        let url = format!("{}/api/v2/events/track?auth_token={token}", server.addr);
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
                let (outcomes, next_seq) = (outcomes.clone(), next_seq.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let seq = next_seq.fetch_add(1, Ordering::Relaxed);
                        let body = json!({"identity": {"id": format!("client-{c}")},
                                          "event_name": "crash",
                                          "data": {"seq": seq, "cycle": cycle}});
                        outcomes
                            .lock()
                            .expect("lock")
                            .insert(seq, Outcome::InFlight);
                        match client.post(&url).body(body.to_string()).send().await {
                            Ok(answer) => {
                                let outcome = if answer.status() == 200 {
                                    Outcome::Acknowledged
                                } else {
                                    Outcome::Refused
                                };
                                outcomes.lock().expect("lock").insert(seq, outcome);
                            }
                            // The server died under this request.
                            Err(_) => break,
                        }
                    }
                })
            })
            .collect();
        let run_for = rand::thread_rng().gen_range(200..1500);
        tokio::time::sleep(Duration::from_millis(run_for)).await;
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.await.expect("client task");
        }
        // Between runs, with nobody writing: the file is sound.
        let conn = rusqlite::Connection::open(&db_path).expect("db opens");
        let integrity: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check");
        assert_eq!(integrity, "ok", "cycle {cycle}");
    }
    // What is stored, by sequence number.
    let conn = rusqlite::Connection::open(&db_path).expect("db opens");
    let mut stored: HashMap<u64, usize> = HashMap::new();
    let mut statement = conn
        .prepare("SELECT json_extract(data, '$.seq') FROM events")
        .expect("prepare");
    for seq in statement
        .query_map([], |r| r.get::<_, i64>(0))
        .expect("query")
    {
        *stored.entry(seq.expect("row") as u64).or_default() += 1;
    }
    let events: i64 = conn
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .expect("count");
    let dedup: i64 = conn
        .query_row("SELECT count(*) FROM dedup", [], |r| r.get(0))
        .expect("count");
    let outcomes = outcomes.lock().expect("lock").clone();
    let mut acknowledged = 0;
    let mut lost = Vec::new();
    let mut in_flight = 0;
    let mut in_flight_stored = 0;
    for (seq, outcome) in &outcomes {
        let copies = stored.get(seq).copied().unwrap_or(0);
        assert!(copies <= 1, "seq {seq} stored {copies} times");
        match outcome {
            Outcome::Acknowledged => {
                acknowledged += 1;
                if copies == 0 {
                    lost.push(*seq);
                }
            }
            Outcome::InFlight | Outcome::Refused => {
                in_flight += 1;
                in_flight_stored += copies;
            }
        }
    }
    let phantoms: Vec<_> = stored
        .keys()
        .filter(|s| !outcomes.contains_key(s))
        .collect();
    println!(
        "crash harness: {cycles} kill -9 cycles, {} sent, {acknowledged} acknowledged, \
         {} stored, {} lost; {in_flight} in flight or refused at a kill, {in_flight_stored} \
         of them stored",
        outcomes.len(),
        stored.len(),
        lost.len()
    );
    assert!(phantoms.is_empty(), "stored but never sent: {phantoms:?}");
    assert!(
        lost.is_empty(),
        "acknowledged but lost: {} events, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert_eq!(dedup, events, "every stored event has its dedup record");
    assert!(
        acknowledged > cycles,
        "the load got through: {acknowledged}"
    );
}
