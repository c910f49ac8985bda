//! Segment's and RudderStack's own SDKs, unmodified, from PyPI and npm, pointed at a real
//! `trackd serve` by their host setting (`tests/sdk/`): each sends identify, track, page,
//! group, an anonymous track, alias and a flush of 1,000 queued calls (which they send as
//! batches, gzip for RudderStack's), and every call is read back through the read API.
//! analytics.js 2.0 (`@segment/analytics-next`) runs in Debian's chromium on a page of
//! another origin, with its settings inline. Needs `npm ci --prefix
//! crates/trackd-server/tests/sdk` and `pip install -r crates/trackd-server/tests/sdk/
//! requirements.txt`; without them each test prints SKIPPED, or fails with
//! `TRACKD_TEST_REQUIRE_SDKS=1` (CI).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::helpers::{required, skip_notice, ChildServer};

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk")
}

/// Whether the SDKs a test needs are installed; prints SKIPPED (or fails when required).
fn ready(python_module: Option<&str>, node_package: Option<&str>, browser: bool) -> bool {
    let python = python_module.is_none_or(|m| {
        Command::new("python3")
            .args(["-c", &format!("import {m}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let node = node_package.is_none_or(|p| sdk_dir().join("node_modules").join(p).exists());
    let chromium = !browser || Path::new("/usr/bin/chromium").exists();
    if python && node && chromium {
        return true;
    }
    assert!(
        !required("TRACKD_TEST_REQUIRE_SDKS"),
        "SDK missing (TRACKD_TEST_REQUIRE_SDKS=1): python {python_module:?} {python}, \
         node {node_package:?} {node}, chromium {chromium}"
    );
    skip_notice(&format!(
        "needs {} (npm ci --prefix crates/trackd-server/tests/sdk; pip install -r \
         crates/trackd-server/tests/sdk/requirements.txt)",
        python_module.or(node_package).unwrap_or("chromium")
    ));
    false
}

/// A server, the driver run against it, and the read API as its secret key sees it.
struct Run {
    server: ChildServer,
    secret: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Run {
    /// Runs `program script HOST TOKEN PREFIX` in `tests/sdk` against a fresh server.
    async fn drive(program: &str, script: &str, prefix: &str) -> Run {
        let dir = tempfile::tempdir().expect("dir");
        let server = ChildServer::spawn(dir.path(), &[]);
        let token = server.printed("tracking token:");
        let secret = server.printed("secret key:");
        let mut command = Command::new(program);
        command
            .arg(script)
            .args([&server.addr, &token, prefix])
            .current_dir(sdk_dir());
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("joined")
            .expect("the driver runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{script} failed:\nstdout: {stdout}\nstderr: {stderr}\ntrackd: {}",
            server.stderr.lock().expect("lock")
        );
        println!("{script}: {}", stdout.trim());
        Run {
            server,
            secret,
            client: reqwest::Client::new(),
            _dir: dir,
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let answer = self
            .client
            .get(format!("{}{path}", self.server.addr))
            .bearer_auth(&self.secret)
            .send()
            .await
            .expect("read");
        let status = answer.status().as_u16();
        (status, answer.json().await.expect("JSON"))
    }

    async fn events(&self, user: &str) -> Vec<Value> {
        let (status, page) = self
            .get(&format!("/api/v2/users/{user}/events?limit=1000"))
            .await;
        assert_eq!(status, 200, "{page}");
        page["events"].as_array().expect("events").clone()
    }

    /// Every call of the driver's script, read back.
    async fn assert_everything_arrived(&self, p: &str, library: &str) {
        let (status, u1) = self.get(&format!("/api/v2/users/{p}-u1")).await;
        assert_eq!(status, 200, "{u1}");
        assert_eq!(u1["email"], format!("{p}-u1@example.com"));
        assert_eq!(u1["properties"]["name"], "Ann");
        assert_eq!(u1["properties"]["plan"], "pro");
        assert_eq!(
            u1["properties"]["group"],
            json!({"id": "acme", "traits": {"name": "Acme Inc"}})
        );
        let events = self.events(&format!("{p}-u1")).await;
        let find = |name: &str| {
            events
                .iter()
                .find(|e| e["event_name"] == name)
                .unwrap_or_else(|| panic!("no {name} in {events:?}"))
                .clone()
        };
        let order = find("Order Completed");
        assert_eq!(order["data"], json!({"order_id": "o-1", "total": 42.5}));
        assert_eq!(order["source"], library);
        assert_eq!(find("Viewed Pricing Page")["data"]["path"], "/pricing");
        assert_eq!(events.len(), 2, "{events:?}");
        // The anonymous visitor became u2 with the alias, their event with them.
        let (status, _) = self.get(&format!("/api/v2/users/{p}-anon")).await;
        assert_eq!(status, 404);
        let u2 = self.events(&format!("{p}-u2")).await;
        assert_eq!(u2.len(), 1, "{u2:?}");
        assert_eq!(u2[0]["event_name"], "Viewed Ad");
        // All 1,000 queued calls, each once.
        let bulk = self.events(&format!("{p}-bulk")).await;
        let mut seen: Vec<i64> = bulk
            .iter()
            .map(|e| e["data"]["i"].as_i64().expect("i"))
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        let (_, stats) = self.get("/api/v2/stats/events").await;
        assert_eq!(stats["totals"]["accepted"], 1003, "{stats}");
        assert_eq!(stats["totals"]["rejected"], json!({}), "{stats}");
    }
}

#[tokio::test]
async fn segment_analytics_python() {
    if !ready(Some("segment.analytics"), None, false) {
        return;
    }
    let run = Run::drive("python3", "segment_python.py", "sp").await;
    run.assert_everything_arrived("sp", "analytics-python")
        .await;
}

#[tokio::test]
async fn rudder_sdk_python() {
    if !ready(Some("rudderstack.analytics"), None, false) {
        return;
    }
    let run = Run::drive("python3", "rudder_python.py", "rp").await;
    run.assert_everything_arrived("rp", "analytics-python")
        .await;
}

#[tokio::test]
async fn segment_analytics_node() {
    if !ready(None, Some("@segment/analytics-node"), false) {
        return;
    }
    let run = Run::drive("node", "segment_node.mjs", "sn").await;
    run.assert_everything_arrived("sn", "@segment/analytics-node")
        .await;
}

#[tokio::test]
async fn rudder_sdk_node() {
    if !ready(None, Some("@rudderstack/rudder-sdk-node"), false) {
        return;
    }
    let run = Run::drive("node", "rudder_node.mjs", "rn").await;
    run.assert_everything_arrived("rn", "analytics-node").await;
}

#[tokio::test]
async fn analytics_next_in_chromium_from_another_origin() {
    if !ready(None, Some("@segment/analytics-next"), true) {
        return;
    }
    let run = Run::drive("node", "browser_segment.mjs", "bw").await;
    let p = "bw";
    let (status, web) = run.get(&format!("/api/v2/users/{p}-web")).await;
    assert_eq!(status, 200, "{web}");
    assert_eq!(web["email"], format!("{p}-web@example.com"));
    assert_eq!(web["properties"]["plan"], "pro");
    let events = run.events(&format!("{p}-web")).await;
    let mut names: Vec<&str> = events
        .iter()
        .map(|e| e["event_name"].as_str().expect("name"))
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        vec!["Order Completed", "Viewed Pricing Page"],
        "{events:?}"
    );
    for e in &events {
        assert_eq!(e["source"], "analytics.js", "{e}");
    }
    let order = events.iter().find(|e| e["event_name"] == "Order Completed");
    assert_eq!(
        order.expect("order")["data"],
        json!({"order_id": "o-1", "total": 42.5})
    );
}
