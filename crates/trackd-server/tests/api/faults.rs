//! Storage faults: a full disk (a small tmpfs) and failing fsyncs (strace injecting EIO into
//! `fdatasync`). Both need root (mount, ptrace); CI runs as root and sets
//! `TRACKD_TEST_REQUIRE_ROOT=1`, so there they fail instead of being skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::helpers::{required, skip_notice, ChildServer, TestApp, TestConfig};

/// A missing capability fails the test (CI) or skips it with a visible notice.
fn skip(what: &str) {
    assert!(
        !required("TRACKD_TEST_REQUIRE_ROOT"),
        "{what} (TRACKD_TEST_REQUIRE_ROOT=1)"
    );
    skip_notice(&format!("{what}; run as root to include this test"));
}

/// A tmpfs mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("dir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            skip("cannot mount a tmpfs");
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .expect("df runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df prints the free bytes")
}

/// A ballast file that leaves about `leave` bytes free on the file system of `dir`.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    let ballast = dir.join("ballast");
    let size = free_bytes(dir).saturating_sub(leave);
    std::fs::write(&ballast, vec![0xA5u8; size as usize]).expect("ballast written");
    ballast
}

async fn wait_ready(client: &reqwest::Client, base: &str, ready: bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz")
            .status()
            .as_u16();
        if (status == 200) == ready {
            return;
        }
        assert!(Instant::now() < deadline, "readyz stayed {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn integrity_ok(db: &Path) {
    let conn = rusqlite::Connection::open(db).expect("db opens");
    let result: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(result, "ok");
}

fn event_with_payload(n: usize) -> serde_json::Value {
    serde_json::json!({"identity": {"id": format!("user-{n}")}, "event_name": "filled",
                       "data": {"n": n, "padding": "p".repeat(20_000)}})
}

#[tokio::test]
async fn a_full_disk_answers_503_never_200_and_service_resumes_when_space_returns() {
    let Some(fs) = Tmpfs::mount("16m") else {
        return;
    };
    let app = TestApp::spawn_with(TestConfig {
        parent_dir: Some(fs.path().to_path_buf()),
        ..TestConfig::default()
    })
    .await;
    let ballast = fill(fs.path(), 1024 * 1024);
    let mut acknowledged = Vec::new();
    let mut refused = None;
    for n in 0..400 {
        let answer = app.track(&event_with_payload(n)).await;
        match answer.status {
            200 => acknowledged.push(n),
            _ => {
                answer.assert_error(503, "server: storage unavailable, retry later");
                assert_eq!(answer.headers["retry-after"], "1");
                refused = Some(n);
                break;
            }
        }
    }
    let refused = refused.expect("the disk filled up");
    assert!(!acknowledged.is_empty());
    wait_ready(&app.client, &app.addr, false).await;
    // While full: every write is refused with 503, reads still answer.
    let answer = app.track(&event_with_payload(1000)).await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    let answer = app.read("/api/v2/events?limit=1").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    // Space returns: readiness comes back by itself, without a request to try it.
    std::fs::remove_file(&ballast).expect("ballast removed");
    wait_ready(&app.client, &app.addr, true).await;
    app.track(&event_with_payload(2000))
        .await
        .assert_success(false);
    acknowledged.push(2000);
    let mut stored: Vec<usize> = app
        .events()
        .iter()
        .map(|e| {
            let data: serde_json::Value = serde_json::from_str(&e.data).expect("data is JSON");
            data["n"].as_u64().expect("n") as usize
        })
        .collect();
    stored.sort_unstable();
    assert_eq!(stored, acknowledged, "refused: {refused}");
    let metrics = app.metrics().await;
    assert!(metrics.contains("trackd_store_commit_failures_total"));
    integrity_ok(&app.data_dir().join("trackd.db"));
}

/// strace attached to every thread of `pid`, failing each `fdatasync` with EIO until it is
/// dropped (then it detaches and the process runs on).
struct FailingFsync(std::process::Child);

impl FailingFsync {
    fn attach(pid: u32) -> Option<FailingFsync> {
        let log = tempfile::NamedTempFile::new().expect("log file");
        let child = Command::new("strace")
            .args(["-f", "-e", "trace=fdatasync,fsync"])
            .args([
                "-e",
                "inject=fdatasync:error=EIO",
                "-e",
                "inject=fsync:error=EIO",
            ])
            .args(["-p", &pid.to_string(), "-o"])
            .arg(log.path())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            skip("strace is not installed");
            return None;
        };
        // strace reports the attach on stderr once every thread is traced.
        let mut stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 256];
            let mut seen = String::new();
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                if seen.contains("attached") {
                    let _ = tx.send(true);
                }
            }
            let _ = tx.send(false);
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(true) => Some(FailingFsync(child)),
            _ => {
                let _ = child.kill();
                skip("strace could not attach (ptrace not permitted)");
                None
            }
        }
    }
}

impl Drop for FailingFsync {
    fn drop(&mut self) {
        // SIGTERM: strace detaches from every thread and exits.
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_failed_fsync_answers_503_reopens_the_store_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("dir");
    let mut server = ChildServer::spawn(dir.path(), &[]);
    let token = server.printed("tracking token:");
    let client = reqwest::Client::new();
    let url = format!("{}/api/v2/events/track?auth_token={token}", server.addr);
    let send = |n: u32| {
        let body =
            serde_json::json!({"identity": {"id": "u"}, "event_name": "e", "data": {"n": n}});
        client.post(&url).body(body.to_string()).send()
    };
    for n in 0..3 {
        assert_eq!(send(n).await.expect("sent").status(), 200);
    }
    let Some(failing) = FailingFsync::attach(server.process.id()) else {
        return;
    };
    let answer = send(3).await.expect("sent");
    assert_eq!(answer.status(), 503);
    assert_eq!(answer.headers()["retry-after"], "1");
    assert_eq!(
        answer.text().await.expect("body"),
        r#"{"status":503,"message":"server: storage unavailable, retry later"}"#
    );
    wait_ready(&client, &server.addr, false).await;
    let answer = send(4).await.expect("sent");
    assert_eq!(answer.status(), 503);
    drop(failing);
    wait_ready(&client, &server.addr, true).await;
    assert_eq!(send(5).await.expect("sent").status(), 200);
    let logs = server.stderr.lock().expect("lock").clone();
    assert!(logs.contains("write connection reopened"), "{logs}");
    server.sigterm();
    server.process.wait().expect("exits");
    let db = dir.path().join("trackd.db");
    integrity_ok(&db);
    let conn = rusqlite::Connection::open(&db).expect("db");
    let mut stored: Vec<i64> = conn
        .prepare("SELECT json_extract(data, '$.n') FROM events ORDER BY 1")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect();
    // 3 and 4 were refused: each is stored at most once (a 503 may still have reached the
    // disk); every acknowledged one exactly once.
    for refused in [3, 4] {
        assert!(stored.iter().filter(|n| **n == refused).count() <= 1);
    }
    stored.retain(|n| ![3, 4].contains(n));
    assert_eq!(stored, vec![0, 1, 2, 5]);
}
