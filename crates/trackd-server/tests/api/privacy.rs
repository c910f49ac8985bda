//! A data subject's rights (DESIGN §10): the per-user export (`GET
//! /api/v2/users/{id}/export`, `trackd user export`): the profile, then every event of the
//! user and nothing of anyone else's, streamed in constant memory.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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

/// A process's own resident memory (its heap and stacks, not the database file its readers
/// map, which is the OS's file cache), in KiB.
fn anon_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("RssAnon")
}

/// Samples [`anon_rss_kib`] every 2 ms until the returned flag is set; the thread's result
/// is the largest sample.
fn watch_anon_rss(pid: u32) -> (Arc<AtomicBool>, std::thread::JoinHandle<u64>) {
    let done = Arc::new(AtomicBool::new(false));
    let stop = done.clone();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(Ordering::Relaxed) {
            peak = peak.max(anon_rss_kib(pid));
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        peak
    });
    (done, sampler)
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
    // The small export first warms the allocator and a reader's connection. The big one
    // (over 40 MB of NDJSON) may still fill the connection's page cache up to its bound
    // (16 MiB; mapped pages are not in it) and move the allocator's high-water mark a
    // little; held whole, it would add its own size (seen: 72 MB more).
    let small = export("small").await;
    assert_eq!(small.iter().filter(|&&b| b == b'\n').count(), 20_001);
    let (done, sampler) = watch_anon_rss(pid);
    let warm = anon_rss_kib(pid);
    let api = export("big").await;
    done.store(true, Ordering::Relaxed);
    let after = sampler.join().expect("sampler");
    assert_eq!(
        api.iter().filter(|&&b| b == b'\n').count(),
        100_001,
        "the profile and 100,000 events"
    );
    assert!(api.len() > 40_000_000, "{} bytes", api.len());
    assert!(
        after.saturating_sub(warm) < 24 * 1024,
        "anonymous RSS grew from {warm} KiB to a peak of {after} KiB during a {}-byte export",
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

/// POSTs a suppression route with `key` as the bearer token.
async fn suppression(app: &TestApp, key: &str, route: &str, id: &str) -> crate::helpers::Answer {
    let url = app.url(&format!("/api/v2/users/{id}/{route}"));
    app.send(app.client.post(url).bearer_auth(key)).await
}

/// Asserts the answer to a call naming a suppressed user: 200, the route's own success
/// body, `Trackd-Suppressed: true`.
#[track_caller]
fn assert_suppressed(answer: &crate::helpers::Answer, body: &str) {
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body, body);
    assert_eq!(
        answer
            .headers
            .get("trackd-suppressed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
}

/// DESIGN §10, suppression: the user is deleted, then every Vero and `/v1` route answers a
/// call naming its id or email 200 with `Trackd-Suppressed: true` and stores nothing (also
/// after a restart), counted as suppressed; the files hold neither the id nor the email;
/// unsuppress restores normal tracking; each act is audited once, by hash.
#[tokio::test]
async fn a_suppressed_user_is_refused_everywhere_until_unsuppressed() {
    crate::skip_without_postgres!();
    let mut app = TestApp::spawn().await;
    let (id, email) = ("suppressed-person-1", "forget.me@example.com");
    let identity = json!({"id": id, "email": email});
    for n in 0..3 {
        app.track(&json!({"identity": identity, "event_name": "Viewed",
                          "data": {"secret": format!("payload-of-suppressed-{n}")}}))
            .await
            .assert_success(false);
    }
    app.track(&crate::helpers::event("bystander", 1))
        .await
        .assert_success(false);

    // A tracking token may not suppress; a bad id or a query is a 400.
    let refused = suppression(&app, &app.token, "suppress", id).await;
    assert!(
        [401, 403].contains(&refused.status),
        "tracking token: {}",
        refused.status
    );
    let long = "x".repeat(255);
    suppression(&app, &app.secret, "suppress", &long)
        .await
        .assert_error(400, "id: longer than 254 characters");
    // A NUL (refused in every body) is refused in the path too, and so is an empty id.
    suppression(&app, &app.secret, "suppress", "a%00b")
        .await
        .assert_error(400, "id: contains a NUL character (\\u0000)");
    suppression(&app, &app.secret, "suppress", "%00")
        .await
        .assert_error(400, "id: contains a NUL character (\\u0000)");
    assert!(app.profile(id).await.is_some(), "nothing done by refusals");

    assert_eq!(
        user_export(&app, id).await.len(),
        4,
        "the profile and 3 events"
    );
    let done = suppression(&app, &app.secret, "suppress", id).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(done.json(), json!({"suppressed": true, "deleted": true}));
    assert_eq!(app.profile(id).await, None);

    let vero_ok = r#"{"status":200,"message":"Success."}"#;
    let track = json!({"identity": identity, "event_name": "Viewed", "data": {"n": 9}});
    for round in 0..2 {
        // The second time, after a restart.
        if round == 1 {
            app.restart().await;
        }
        assert_suppressed(&app.track(&track).await, vero_ok);
        let by_email = json!({"identity": {"email": email}, "event_name": "Viewed"});
        assert_suppressed(&app.track(&by_email).await, vero_ok);
        for (route, body) in [
            ("users/track", json!({"id": id, "data": {"plan": "pro"}})),
            ("users/edit", json!({"id": id, "changes": {"plan": "pro"}})),
            ("users/tags/edit", json!({"id": id, "add": ["a"]})),
            ("users/unsubscribe", json!({"id": id})),
            ("users/resubscribe", json!({"id": id})),
            ("users/delete", json!({"id": id})),
            ("users/reidentify", json!({"id": "bystander", "new_id": id})),
        ] {
            assert_suppressed(&app.call("POST", route, &body).await, vero_ok);
        }
        let v1_ok = r#"{"success":true}"#;
        assert_suppressed(
            &app.v1("track", &json!({"userId": id, "event": "Viewed"}))
                .await,
            v1_ok,
        );
        assert_suppressed(
            &app.v1(
                "identify",
                &json!({"userId": id, "traits": {"email": email}}),
            )
            .await,
            v1_ok,
        );
        // In a batch: that call refused, the others stored.
        let batch = json!({"batch": [
            {"type": "track", "userId": id, "event": "Viewed"},
            {"type": "track", "userId": "bystander", "event": "Batched"}]});
        assert_suppressed(&app.v1("batch", &batch).await, v1_ok);
    }
    assert_eq!(app.profile(id).await, None);
    assert_eq!(app.profile(email).await, None);
    assert_eq!(
        app.profile("bystander").await.expect("bystander")["event_count"],
        3
    );
    let stats = app.read_json("/api/v2/stats/events").await;
    assert_eq!(stats["totals"]["suppressed"], 2 * 12);
    assert!(
        app.metrics().await.contains("suppressed_writes_total 12"),
        "counted since the restart"
    );
    if !crate::helpers::postgres() {
        app.assert_not_in_files(&[id.as_bytes(), email.as_bytes(), b"payload-of-suppressed"])
            .await;
    }

    // Lifted: tracked as anyone; lifting again is a 404.
    let lifted = suppression(&app, &app.secret, "unsuppress", id).await;
    assert_eq!(lifted.status, 200, "{}", lifted.body);
    assert_eq!(lifted.json(), json!({"suppressed": false}));
    suppression(&app, &app.secret, "unsuppress", id)
        .await
        .assert_error(404, "id: not suppressed");
    app.track(&track).await.assert_success(false);
    assert_eq!(app.profile(id).await.expect("back")["event_count"], 1);

    // The audit log: each act once, newest first, the user by hash; a tracking token
    // cannot read it.
    let audit = app.read_json("/api/v2/audit").await;
    let entries = audit["entries"].as_array().expect("entries");
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().expect("action"))
        .collect();
    assert_eq!(actions, ["user.unsuppress", "user.suppress", "user.export"]);
    assert_eq!(entries[0]["target"], entries[1]["target"]);
    assert_eq!(entries[1]["target"], entries[2]["target"]);
    assert!(!audit.to_string().contains(id) && !audit.to_string().contains(email));
    assert!(entries[0]["actor"]
        .as_str()
        .is_some_and(|a| a.starts_with("key:")));
    let page = app.read_json("/api/v2/audit?limit=2").await;
    let cursor = page["next_cursor"].as_str().expect("a next page");
    let next = app
        .read_json(&format!("/api/v2/audit?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(next["entries"][0]["action"], "user.export");
    assert_eq!(next["entries"].as_array().map(Vec::len), Some(1));
    assert_eq!(next["next_cursor"], Value::Null, "no empty last page");
    // A cursor of this query is no cursor for another project's log, nor for events.
    app.read(&format!("/api/v2/events?cursor={cursor}"))
        .await
        .assert_error(
            400,
            "cursor: not a cursor this server handed out for this query",
        );
    let as_token = app.read_as(&app.token, "/api/v2/audit").await;
    assert!([401, 403].contains(&as_token.status));
    // Nothing alters it: the log has no write route.
    let url = app.url("/api/v2/audit");
    for method in [
        reqwest::Method::POST,
        reqwest::Method::DELETE,
        reqwest::Method::PUT,
    ] {
        let answer = app
            .send(app.client.request(method, &url).bearer_auth(&app.secret))
            .await;
        assert_eq!(answer.status, 405, "{}", answer.body);
    }
    assert_eq!(
        app.read_json("/api/v2/audit").await["entries"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    app.read("/api/v2/audit?limit=0")
        .await
        .assert_error(400, "limit: must be an integer from 1 to 1000");
    app.read("/api/v2/audit?user=1").await.assert_error(
        400,
        "user: unknown parameter (this route takes since, limit, cursor)",
    );
}

/// Where the command line finds the test server's data: its data directory, or its
/// PostgreSQL database.
pub(crate) fn store_args(app: &TestApp) -> [String; 2] {
    match &app.pg {
        Some(db) => ["--database-url".into(), db.url.clone()],
        None => [
            "--data-dir".into(),
            app.data_dir().to_str().expect("path").to_owned(),
        ],
    }
}

/// The command line beside a running server: `trackd user suppress` takes effect on the
/// server's next write (on SQLite the server's writer drops the user's dedup keys it held
/// in memory), `trackd audit` lists every administrative command once, `unsuppress` lifts
/// the suppression.
#[tokio::test]
async fn the_cli_suppresses_beside_a_running_server_and_every_act_is_audited() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let [flag, dir] = store_args(&app);
    let (flag, dir) = (flag.as_str(), dir.as_str());
    let track = json!({"identity": {"id": "cli-user"}, "event_name": "Viewed"});
    app.track(&track).await.assert_success(false);
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend([flag, dir, "--project", "test"]);
        run_cli(&all)
    };
    let (ok, stdout, stderr) = cli(&["user", "export", "cli-user"]);
    assert!(ok && stdout.lines().count() == 2, "{stderr}");
    // An empty id is refused (an argument cannot hold a NUL: the route's test has that).
    let (ok, _, stderr) = cli(&["user", "suppress", ""]);
    assert!(!ok && stderr.contains("id: is required"), "{stderr}");
    let (ok, _, stderr) = cli(&["user", "suppress", "cli-user"]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("suppressed; the user and its events were deleted"));
    assert_suppressed(
        &app.track(&track).await,
        r#"{"status":200,"message":"Success."}"#,
    );
    assert_eq!(app.profile("cli-user").await, None);
    let (ok, _, stderr) = cli(&["token", "add"]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = cli(&["user", "unsuppress", "cli-user"]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = cli(&["user", "unsuppress", "cli-user"]);
    assert!(
        !ok && stderr.contains("cli-user: not suppressed"),
        "{stderr}"
    );
    // The same event again is new: its dedup record went with the user, and the server's
    // writer, which held it in memory, read its index again after the other process's
    // deletion (it answered duplicate before).
    app.track(&track).await.assert_success(false);
    // Every other administrative command leaves one row; one that fails leaves none.
    let (ok, stdout, stderr) = cli(&["key", "add", "--json"]);
    assert!(ok, "{stderr}");
    let added: Value = serde_json::from_str(stdout.trim()).expect("JSON");
    let key = added["secret_key"].as_str().expect("key").to_owned();
    let hook = "http://127.0.0.1:9/hook";
    for args in [
        vec!["key", "revoke", key.as_str()],
        vec![
            "destination",
            "add",
            "--name",
            "d1",
            "--kind",
            "webhook",
            "--url",
            hook,
        ],
        vec!["destination", "pause", "--name", "d1"],
        vec!["destination", "remove", "--name", "d1"],
    ] {
        let (ok, _, stderr) = cli(&args);
        assert!(ok, "{args:?}: {stderr}");
    }
    let (ok, _, _) = cli(&["key", "revoke", key.as_str()]);
    assert!(!ok, "revoked already: refused, not recorded");
    let set = ["project", "set", "test", "--retention", "30d", flag, dir];
    assert!(run_cli(&set).0);
    let (ok, _, stderr) = run_cli(&["project", "create", "other", flag, dir]);
    assert!(ok, "{stderr}");
    let (ok, stdout, _) = run_cli(&["audit", "--project", "other", flag, dir]);
    assert!(ok);
    assert!(
        stdout.lines().count() == 1 && stdout.contains("cli") && stdout.contains("project.create"),
        "{stdout}"
    );
    let (ok, stdout, stderr) = cli(&["audit", "--json"]);
    assert!(ok, "{stderr}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let acts: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["actor"].as_str().expect("actor"),
                l["action"].as_str().expect("action"),
            )
        })
        .collect();
    assert_eq!(
        acts,
        [
            ("cli", "project.set"),
            ("cli", "destination.remove"),
            ("cli", "destination.pause"),
            ("cli", "destination.add"),
            ("cli", "key.revoke"),
            ("cli", "key.add"),
            ("cli", "user.unsuppress"),
            ("cli", "token.add"),
            ("cli", "user.suppress"),
            ("cli", "user.export")
        ]
    );
    assert!(!stdout.contains("cli-user"), "users by hash only: {stdout}");
}

/// DESIGN §10, retention, on a running server: history restored by import with old receive
/// times is deleted by the background task once the project has a retention (the server's
/// clock is the test's), recent events stay, the statistics keep the old counts, the
/// deletion is counted in `/metrics`, and (SQLite) the files no longer hold the old bytes.
#[tokio::test]
async fn retention_deletes_old_history_in_the_background_and_the_files_forget_it() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let lines: String = (0..300)
        .map(|n| {
            let line = json!({"id": n + 1, "user": {"id": "old-user"}, "event_name": "Old",
                "event_key": "old", "data": {"secret": format!("payload-of-expired-{n}")},
                "created_at": "2020-01-01T00:00:00Z",
                "received_at": format!("2020-01-01T00:{:02}:00Z", n % 60)});
            format!("{line}\n")
        })
        .collect();
    let url = app.url("/api/v2/events/import");
    let imported = app
        .send(app.client.post(url).bearer_auth(&app.secret).body(lines))
        .await;
    assert_eq!(imported.status, 200, "{}", imported.body);
    assert_eq!(imported.json()["imported"], 300);
    app.track(&crate::helpers::event("new-user", 1))
        .await
        .assert_success(false);
    let stats = "/api/v2/stats/events?since=2019-12-01T00:00:00Z&interval=day";
    let before = app.read_json(stats).await;

    {
        let [flag, dir] = store_args(&app);
        let (flag, dir) = (flag.as_str(), dir.as_str());
        let set = ["project", "set", "test", "--retention", "90d", flag, dir];
        let (ok, _, stderr) = run_cli(&set);
        assert!(
            ok && stderr.contains("project test: retention 90d"),
            "{stderr}"
        );
        let (ok, stdout, _) = run_cli(&["project", "list", "--json", flag, dir]);
        assert!(ok);
        let listed: Value = serde_json::from_str(stdout.trim()).expect("JSON");
        assert_eq!(listed[0]["retention"], "90d");
        let (ok, _, stderr) = run_cli(&["project", "set", "test", "--retention", "90", flag, dir]);
        assert!(!ok);
        assert!(
            stderr.contains("retention: must be a whole number and a unit"),
            "{stderr}"
        );
    }
    assert_eq!(app.read_json("/api/v2/project").await["retention"], "90d");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while app.exported().await.len() > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "old events still there"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let left = app.exported().await;
    assert_eq!(left[0]["user"]["id"], "new-user");
    assert_eq!(app.read_json(stats).await, before, "the counts stay");
    assert!(
        app.metrics()
            .await
            .contains("trackd_retention_deleted_events_total 300"),
        "counted"
    );
    if !crate::helpers::postgres() {
        app.assert_not_in_files(&[b"payload-of-expired"]).await;
        let audit = app.read_json("/api/v2/audit").await;
        assert_eq!(audit["entries"][0]["action"], "project.set");
        assert_eq!(audit["entries"][0]["target"], "test retention=90d");
    }
}
