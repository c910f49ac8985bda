//! A PostgreSQL cluster of the test's own (initdb and pg_ctl on a free port, never the
//! shared server), stopped with `pg_ctl stop -m immediate` under load and started again:
//! 503s during the outage, `/readyz` not ready, recovery by itself after, and every
//! acknowledged event stored exactly once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{skip_notice, ChildServer};

fn required() -> bool {
    crate::helpers::required("TRACKD_TEST_REQUIRE_ROOT")
}

/// The directory of PostgreSQL's server programs (Debian keeps them off the PATH).
fn pg_bin() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found.pop()
}

/// A throwaway cluster, run as the `postgres` user (initdb refuses root).
struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    fn create() -> Option<Cluster> {
        let Some(bin) = pg_bin() else {
            assert!(
                !required(),
                "PostgreSQL's initdb not found (TRACKD_TEST_REQUIRE_ROOT=1)"
            );
            skip_notice("PostgreSQL's initdb not found");
            return None;
        };
        let dir = tempfile::tempdir().expect("dir");
        let chowned = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !chowned {
            assert!(
                !required(),
                "cannot hand a directory to the postgres user (TRACKD_TEST_REQUIRE_ROOT=1)"
            );
            skip_notice("needs root to run a cluster as the postgres user");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let cluster = Cluster { bin, dir, port };
        cluster.as_postgres(&[
            "initdb",
            "-D",
            &cluster.data().display().to_string(),
            "-A",
            "trust",
            "-U",
            "postgres",
        ]);
        cluster.start();
        Some(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn as_postgres(&self, args: &[&str]) {
        let program = self.bin.join(args[0]);
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&program)
            .args(&args[1..])
            .output()
            .expect("runuser runs");
        assert!(
            out.status.success(),
            "{}: {}{}",
            args[0],
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log");
        self.as_postgres(&[
            "pg_ctl",
            "-D",
            &self.data().display().to_string(),
            "-o",
            &options,
            "-l",
            &log.display().to_string(),
            "-w",
            "start",
        ]);
    }

    fn stop_immediately(&self) {
        self.as_postgres(&[
            "pg_ctl",
            "-D",
            &self.data().display().to_string(),
            "-m",
            "immediate",
            "-w",
            "stop",
        ]);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args([
                "-D",
                &self.data().display().to_string(),
                "-m",
                "immediate",
                "stop",
            ])
            .output();
    }
}

async fn readyz(client: &reqwest::Client, base: &str) -> u16 {
    client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

async fn wait_readyz(client: &reqwest::Client, base: &str, status: u16) -> Duration {
    let start = Instant::now();
    while readyz(client, base).await != status {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "readyz never {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_stopping_under_load_gives_503s_then_recovery_and_loses_nothing() {
    let Some(cluster) = Cluster::create() else {
        return;
    };
    let home = tempfile::tempdir().expect("dir");
    let url = cluster.url();
    let node = ChildServer::spawn(home.path(), &[("TRACKD_DATABASE_URL", url.as_str())]);
    let token = node.printed("tracking token:");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(40))
        .build()
        .expect("client");
    let endpoint = format!("{}/api/v2/events/track?auth_token={token}", node.addr);
    let outcomes: Arc<Mutex<HashMap<u64, u16>>> = Arc::default();
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (client, endpoint) = (client.clone(), endpoint.clone());
            let (outcomes, next, stop) = (outcomes.clone(), next.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    let body = json!({"identity": {"id": format!("c{c}")}, "event_name": "load",
                                      "data": {"seq": seq}});
                    let status = match client.post(&endpoint).body(body.to_string()).send().await {
                        Ok(r) => r.status().as_u16(),
                        Err(_) => 0,
                    };
                    outcomes.lock().expect("lock").insert(seq, status);
                    if status != 200 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.stop_immediately();
    let noticed = wait_readyz(&client, &node.addr, 503).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.start();
    let recovered = wait_readyz(&client, &node.addr, 200).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }
    let outcomes = outcomes.lock().expect("lock").clone();
    let (pg, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("cluster reachable");
    tokio::spawn(connection);
    let mut stored: HashMap<u64, usize> = HashMap::new();
    for row in pg
        .query("SELECT (data::json ->> 'seq')::bigint FROM events", &[])
        .await
        .expect("events")
    {
        *stored.entry(row.get::<_, i64>(0) as u64).or_default() += 1;
    }
    let count = |status: u16| outcomes.values().filter(|s| **s == status).count();
    let acknowledged: Vec<u64> = outcomes
        .iter()
        .filter(|(_, s)| **s == 200)
        .map(|(seq, _)| *seq)
        .collect();
    println!(
        "outage: {} requests, {} answered 200, {} answered 503, {} other; readyz 503 after \
         {noticed:?}, 200 again {recovered:?} after the restart",
        outcomes.len(),
        acknowledged.len(),
        count(503),
        outcomes.len() - count(200) - count(503)
    );
    assert!(count(503) > 0, "the outage was answered 503");
    assert!(
        outcomes.values().all(|s| [200, 503].contains(s)),
        "only 200 or 503: {:?}",
        outcomes
            .values()
            .filter(|s| ![200, 503].contains(*s))
            .collect::<Vec<_>>()
    );
    for seq in &acknowledged {
        assert_eq!(stored.get(seq), Some(&1), "acknowledged event {seq}");
    }
    assert!(stored.values().all(|n| *n == 1));
    assert!(stored.keys().all(|s| outcomes.contains_key(s)));
}
