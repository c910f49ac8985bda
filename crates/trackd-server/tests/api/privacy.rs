//! A data subject's rights (DESIGN §10): the per-user export (`GET
//! /api/v2/users/{id}/export`, `trackd user export`): the profile, then every event of the
//! user and nothing of anyone else's, streamed in constant memory.

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::helpers::{run_cli, ChildServer, TestApp};

/// The lines of a per-user export, parsed.
async fn user_export(app: &TestApp, id: &str) -> Vec<Value> {
    let answer = app.read(format!("/api/v2/users/{id}/export")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/x-ndjson")
    );
    answer
        .body
        .lines()
        .map(|l| serde_json::from_str(l).expect("a line is JSON"))
        .collect()
}

#[tokio::test]
async fn a_users_export_is_their_profile_then_every_event_of_theirs() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    // 2,500 events of the subject (more than two pages of the read API), and another
    // user's, interleaved.
    for round in 0..2 {
        let calls: Vec<Value> = (0..1250)
            .flat_map(|i| {
                let n = round * 1250 + i;
                let mine = json!({"type": "track", "userId": "subject", "event": "Viewed",
                                  "properties": {"n": n}});
                let theirs = json!({"type": "track", "userId": "someone-else",
                                    "event": "Viewed", "properties": {"n": n}});
                if i % 50 == 0 {
                    vec![mine, theirs]
                } else {
                    vec![mine]
                }
            })
            .collect();
        for chunk in calls.chunks(1000) {
            app.v1("batch", &json!({"batch": chunk}))
                .await
                .assert_v1_success(false);
        }
    }
    app.v1(
        "identify",
        &json!({"userId": "subject", "traits": {"email": "s@example.com", "plan": "pro"}}),
    )
    .await
    .assert_v1_success(false);

    let lines = user_export(&app, "subject").await;
    let profile = app.profile("subject").await.expect("subject");
    assert_eq!(
        lines[0], profile,
        "the profile first, as GET /users/{{id}} gives it"
    );
    let events = &lines[1..];
    assert_eq!(events.len(), 2500);
    assert!(
        events.iter().all(|e| e["user"]["id"] == "subject"),
        "nobody else's"
    );
    let mut seen: Vec<i64> = events
        .iter()
        .map(|e| e["data"]["n"].as_i64().expect("n"))
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..2500).collect::<Vec<_>>(), "every event once");
    // The same events the read API walks, in the export line shape.
    let exported: HashSet<String> = events.iter().map(|e| e.to_string()).collect();
    let all: HashSet<String> = app
        .exported()
        .await
        .into_iter()
        .filter(|e| e["user"]["id"] == "subject")
        .map(|e| e.to_string())
        .collect();
    assert_eq!(exported, all);

    app.read("/api/v2/users/nobody/export")
        .await
        .assert_error(404, "id: no such user");
    app.read("/api/v2/users/subject/export?limit=5")
        .await
        .assert_error(400, "limit: unknown parameter (this route takes none)");
    app.read_as(&app.token.clone(), "/api/v2/users/subject/export")
        .await
        .assert_error(
            403,
            "authorization: a tracking token cannot read, use a secret key",
        );
}

/// The peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test]
async fn a_users_export_of_100000_events_streams_in_constant_memory_and_the_cli_gives_the_same() {
    if crate::helpers::postgres() {
        return; // a process of its own on a data dir (the stores share the streaming code)
    }
    let dir = tempfile::tempdir().expect("dir");
    let server = ChildServer::spawn(dir.path(), &[]);
    let secret = server.printed("secret key:");
    let client = reqwest::Client::new();
    // 100,000 events of one user and 20,000 of another, restored from export lines.
    for (user, count) in [("big", 100_000), ("small", 20_000)] {
        let lines: String = (0..count)
            .map(|n| {
                json!({"id": n, "user": {"id": user, "email": null}, "event_name": "Viewed",
                       "event_key": "viewed", "data": {"n": n, "pad": "x".repeat(200)},
                       "source": null, "created_at": "2026-11-01T00:00:00Z",
                       "received_at": "2026-11-01T00:00:00Z"})
                .to_string()
                    + "\n"
            })
            .collect();
        let imported = client
            .post(format!("{}/api/v2/events/import", server.addr))
            .bearer_auth(&secret)
            .body(lines)
            .send()
            .await
            .expect("import");
        assert_eq!(imported.status(), 200, "{:?}", imported.text().await);
    }
    let pid = server.process.id();
    let export = |user: &'static str| {
        let client = client.clone();
        let url = format!("{}/api/v2/users/{user}/export", server.addr);
        let secret = secret.clone();
        async move {
            let mut response = client
                .get(url)
                .bearer_auth(&secret)
                .send()
                .await
                .expect("export");
            assert_eq!(response.status(), 200);
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.expect("chunk") {
                body.extend_from_slice(&chunk);
            }
            body
        }
    };
    // The small export first warms the allocator and a reader's page cache. The big one
    // (over 40 MB of NDJSON) may still fill that cache up to its bound (16 MiB) and move
    // the allocator's high-water mark a little; held whole, it would add its own size
    // (seen: 72 MB more).
    let small = export("small").await;
    assert_eq!(small.iter().filter(|&&b| b == b'\n').count(), 20_001);
    let warm = peak_rss_kib(pid);
    let api = export("big").await;
    let after = peak_rss_kib(pid);
    assert_eq!(
        api.iter().filter(|&&b| b == b'\n').count(),
        100_001,
        "the profile and 100,000 events"
    );
    assert!(api.len() > 40_000_000, "{} bytes", api.len());
    assert!(
        after.saturating_sub(warm) < 24 * 1024,
        "peak RSS grew from {warm} KiB to {after} KiB during a {}-byte export",
        api.len()
    );
    // The CLI, on the data directory beside the running server, gives the same lines.
    let data_dir = dir.path().to_str().expect("path");
    let (ok, stdout, stderr) = run_cli(&["user", "export", "--data-dir", data_dir, "big"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.as_bytes(), api.as_slice());
    assert!(
        stderr.contains("exported the profile and 100000 events"),
        "{stderr}"
    );
    let (ok, _, stderr) = run_cli(&["user", "export", "--data-dir", data_dir, "nobody"]);
    assert!(!ok);
    assert!(
        stderr.contains("id: no such user in project default"),
        "{stderr}"
    );
    drop(server);
}
