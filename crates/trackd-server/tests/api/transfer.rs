//! `trackd export` / `trackd import` and the import route: round trips, bad lines, remote.

use serde_json::{json, Value};

use crate::helpers::{data_dir_with_vero_token, run_cli, ChildServer, TestApp};

/// Export lines without their `id` (new ids are the one thing an import changes).
fn without_ids(ndjson: &str) -> Vec<Value> {
    ndjson
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).expect("json line");
            v.as_object_mut().expect("object").remove("id");
            v
        })
        .collect()
}

async fn seed(app: &TestApp) {
    let bodies = [
        json!({"identity": {"id": "42", "email": "ann@example.com"}, "event_name": "Viewed product",
               "data": {"big": 12345678901234567890123u128, "f": 1.5, "s": "é\n"},
               "extras": {"source": "web", "created_at": "2023-05-30T04:46:31Z"}}),
        json!({"identity": {"email": "only@example.com"}, "event_name": "Signed up"}),
        json!({"identity": {"id": 7}, "event_name": "x", "data": {"nested": {"a": [1, {"b": null}]}}}),
    ];
    for (i, body) in bodies.iter().enumerate() {
        app.clock.advance_secs(i as i64);
        app.track(body).await.assert_success(false);
    }
}

#[tokio::test]
async fn export_then_import_into_an_empty_data_dir_gives_the_same_export() {
    let app = TestApp::spawn().await;
    seed(&app).await;
    let d = app.data_dir().to_str().expect("utf-8").to_owned();
    let out = tempfile::tempdir().expect("dir");
    let file = out.path().join("events.ndjson");
    let file_s = file.to_str().expect("utf-8");
    let (ok, _, stderr) = run_cli(&[
        "export",
        "--data-dir",
        &d,
        "--project",
        "test",
        "-o",
        file_s,
    ]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("exported 3 events"), "{stderr}");
    let first = std::fs::read_to_string(&file).expect("export");

    let target = data_dir_with_vero_token();
    let t = target.path().to_str().expect("utf-8");
    let (ok, stdout, stderr) = run_cli(&["import", file_s, "--data-dir", t, "--json"]);
    assert!(ok, "{stderr}");
    let summary: Value = serde_json::from_str(stdout.trim()).expect("summary");
    assert_eq!(
        summary,
        json!({"imported": 3, "duplicates": 0, "rejected": 0, "errors": []})
    );
    let (ok, second, stderr) = run_cli(&["export", "--data-dir", t]);
    assert!(ok, "{stderr}");
    assert_eq!(without_ids(&second), without_ids(&first));
    assert!(second.contains("12345678901234567890123"));
}

#[tokio::test]
async fn bad_lines_are_reported_with_their_numbers_and_skipped_whole() {
    let target = data_dir_with_vero_token();
    let t = target.path().to_str().expect("utf-8");
    let file = target.path().join("in.ndjson");
    let long = format!(
        r#"{{"identity":{{"id":"1"}},"event_name":"x","data":{{"s":"{}"}}}}"#,
        "a".repeat(1024 * 1024 + 10)
    );
    let lines = [
        r#"{"identity":{"id":"1"},"event_name":"first","data":{"n":1}}"#.to_owned(),
        r#"{"identity":{"id":"1"},"event_name":"first","data":{"n":1}}"#.to_owned(), // duplicate
        r#"{"identity":{"email":"nope"},"event_name":"x"}"#.to_owned(),
        String::new(),
        long,
        r#"{"user":{"id":"2"},"event_name":"old","event_key":"old","data":{},"source":null,"created_at":"2020-01-01T00:00:00Z","received_at":"bad"}"#.to_owned(),
        r#"{"identity":{"id":"1"},"event_name":"last","data":{"n":2}}"#.to_owned(),
    ];
    std::fs::write(&file, lines.join("\n")).expect("write");
    let (ok, stdout, stderr) = run_cli(&[
        "import",
        file.to_str().expect("utf-8"),
        "--data-dir",
        t,
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let summary: Value = serde_json::from_str(stdout.trim()).expect("summary");
    assert_eq!(
        summary,
        json!({"imported": 2, "duplicates": 1, "rejected": 3, "errors": [
            {"line": 3, "message": "identity.email: not a valid email address"},
            {"line": 5, "message": "line: longer than 1048576 bytes"},
            {"line": 6, "message": "received_at: must be an ISO 8601 time"}]})
    );
    assert!(
        stderr.contains("line 3: identity.email: not a valid email address"),
        "{stderr}"
    );
    assert!(
        stderr.contains("imported 2 events (1 duplicates skipped, 3 bad lines)"),
        "{stderr}"
    );
    let db = rusqlite::Connection::open(target.path().join("trackd.db")).expect("db");
    let names: Vec<String> = db
        .prepare("SELECT event_name FROM events ORDER BY event_name")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(names, vec!["first", "last"]);
    // --no-dedup stores the duplicate too.
    let again = target.path().join("again.ndjson");
    std::fs::write(&again, format!("{}\n{}\n", lines[0], lines[1])).expect("write");
    let (ok, stdout, _) = run_cli(&[
        "import",
        again.to_str().expect("utf-8"),
        "--data-dir",
        t,
        "--no-dedup",
        "--json",
    ]);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(stdout.trim()).expect("json")["imported"],
        2
    );
}

/// `trackd import FILE --data-dir DIR --json EXTRA...`, which must succeed: its summary.
fn import_file(file: &std::path::Path, data_dir: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "import",
        file.to_str().expect("utf-8"),
        "--data-dir",
        data_dir,
        "--json",
    ];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = run_cli(&args);
    assert!(ok, "{stderr}");
    serde_json::from_str(stdout.trim()).expect("summary")
}

/// `trackd import` into SQLite commits large transactions of restored events (200,000 by
/// default; 40,000 here, set by `--batch`, so the file stays small): every line of a file
/// of two full transactions and a partial one is stored once, a bad line between them is
/// skipped alone, and the export after it has every event in order.
#[tokio::test]
async fn a_bulk_import_stores_every_line_across_its_large_transactions() {
    let target = data_dir_with_vero_token();
    let t = target.path().to_str().expect("utf-8");
    let file = target.path().join("in.ndjson");
    let lines = 100_001;
    let mut text = String::with_capacity(lines * 200);
    for i in 0..lines {
        if i == 40_000 {
            text.push_str("{\"user\":{\"id\":\"bad\"}}\n");
        }
        text.push_str(&format!(
            "{{\"user\":{{\"id\":\"u{}\"}},\"event_name\":\"n\",\"event_key\":\"n\",\"data\":{{\"i\":{i}}},\
             \"source\":null,\"created_at\":\"2024-01-01T00:00:00Z\",\"received_at\":\"2024-01-01T00:00:00Z\"}}\n",
            i % 997
        ));
    }
    std::fs::write(&file, text).expect("write");
    let summary = import_file(&file, t, &["--batch", "40000"]);
    assert_eq!(summary["imported"], 100_001, "{summary}");
    assert_eq!(summary["rejected"], 1, "{summary}");
    assert_eq!(summary["errors"][0]["line"], 40_001, "{summary}");
    let db = rusqlite::Connection::open(target.path().join("trackd.db")).expect("db");
    let (count, distinct, users): (i64, i64, i64) = db
        .query_row(
            "SELECT count(*), count(DISTINCT json_extract(data, '$.i')), \
             (SELECT count(*) FROM users) FROM events",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("counts");
    assert_eq!((count, distinct, users), (100_001, 100_001, 997));
    // Ids follow the file's order, so the export does too.
    let out_of_order: i64 = db
        .query_row(
            "SELECT count(*) FROM events a JOIN events b ON b.id = a.id + 1 \
             WHERE json_extract(b.data, '$.i') != json_extract(a.data, '$.i') + 1",
            [],
            |r| r.get(0),
        )
        .expect("order");
    assert_eq!(out_of_order, 0);
}

/// `--batch N` sets the lines a transaction; out of 1..=500,000, or with `--url`, it is
/// refused before anything is read; both ends of the range are taken.
#[tokio::test]
async fn import_batch_sizes_are_taken_within_bounds() {
    let target = data_dir_with_vero_token();
    let t = target.path().to_str().expect("utf-8");
    let file = target.path().join("in.ndjson");
    let lines: String = (0..7)
        .map(|i| {
            format!(
                "{{\"user\":{{\"id\":\"u{i}\"}},\"event_name\":\"n\",\"event_key\":\"n\",\"data\":{{}},\
                 \"source\":null,\"created_at\":\"2024-01-01T00:00:00Z\",\"received_at\":\"2024-01-01T00:00:00Z\"}}\n"
            )
        })
        .collect();
    std::fs::write(&file, lines).expect("write");
    let f = file.to_str().expect("utf-8");
    for bad in ["0", "500001", "-1", "x"] {
        let flag = format!("--batch={bad}");
        let (ok, stdout, stderr) = run_cli(&["import", f, "--data-dir", t, &flag, "--json"]);
        assert!(!ok, "--batch {bad}: {stdout}");
        assert!(stderr.contains("--batch"), "--batch {bad}: {stderr}");
    }
    // Through a server, the route sets the batch: asking for one is an error, not ignored.
    let (ok, _, stderr) = run_cli(&[
        "import",
        f,
        "--batch",
        "3",
        "--url",
        "http://127.0.0.1:9",
        "--key",
        "sk_x",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("'--batch <BATCH>' cannot be used with '--url <URL>'"),
        "{stderr}"
    );
    for batch in ["3", "1", "500000"] {
        assert_eq!(
            import_file(&file, t, &["--batch", batch]),
            json!({"imported": 7, "duplicates": 0, "rejected": 0, "errors": []}),
            "--batch {batch}"
        );
    }
    // Export lines are restored as they were, once per import.
    let db = rusqlite::Connection::open(target.path().join("trackd.db")).expect("db");
    let count: i64 = db
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .expect("count");
    assert_eq!(count, 21);
}

#[tokio::test]
async fn export_and_import_through_a_running_server() {
    let source = data_dir_with_vero_token();
    let server = ChildServer::spawn(source.path(), &[]);
    let client = reqwest::Client::new();
    for n in 0..5 {
        let r = client
            .post(format!(
                "{}/api/v2/events/track?auth_token=TOKEN_abc123",
                server.addr
            ))
            .body(json!({"identity": {"id": "u"}, "event_name": "e", "data": {"n": n}}).to_string())
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status(), 200);
    }
    let d = source.path().to_str().expect("utf-8");
    let (ok, stdout, _) = run_cli(&[
        "key",
        "add",
        "--project",
        "default",
        "--data-dir",
        d,
        "--json",
    ]);
    assert!(ok);
    let key = serde_json::from_str::<Value>(stdout.trim()).expect("json")["secret_key"]
        .as_str()
        .expect("key")
        .to_owned();
    let (ok, remote, stderr) = run_cli(&["export", "--url", &server.addr, "--key", &key]);
    assert!(ok, "{stderr}");
    let (ok, local, _) = run_cli(&["export", "--data-dir", d]);
    assert!(ok);
    assert_eq!(remote, local);
    assert_eq!(remote.lines().count(), 5);
    // Importing the export back through the server restores the lines as new events.
    let file = source.path().join("back.ndjson");
    std::fs::write(&file, &remote).expect("write");
    let (ok, stdout, stderr) = run_cli(&[
        "import",
        file.to_str().expect("utf-8"),
        "--url",
        &server.addr,
        "--key",
        &key,
        "--json",
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(
        serde_json::from_str::<Value>(stdout.trim()).expect("json")["imported"],
        5
    );
    let (_, after, _) = run_cli(&["export", "--data-dir", d]);
    assert_eq!(after.lines().count(), 10);
    // A wrong key is a clear error.
    let (ok, _, stderr) = run_cli(&["export", "--url", &server.addr, "--key", "sk_wrong"]);
    assert!(!ok);
    assert!(
        stderr.contains("authorization: unknown credential"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_import_route_needs_a_secret_key_and_answers_a_summary() {
    let app = TestApp::spawn().await;
    let url = app.url("/api/v2/events/import");
    let body = "{\"identity\":{\"id\":\"1\"},\"event_name\":\"x\"}\n{oops\n";
    app.send(app.client.post(&url).bearer_auth(&app.token).body(body))
        .await
        .assert_error(
            403,
            "authorization: a tracking token cannot read, use a secret key",
        );
    let answer = app
        .send(app.client.post(&url).bearer_auth(&app.secret).body(body))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.json(),
        json!({"imported": 1, "duplicates": 0, "rejected": 1,
               "errors": [{"line": 2, "message": "body: invalid JSON: expected a string key at byte 1"}]})
    );
    app.send(
        app.client
            .post(format!("{url}?dedup=maybe"))
            .bearer_auth(&app.secret)
            .body(body),
    )
    .await
    .assert_error(400, "dedup: must be true or false");
    assert_eq!(app.count("events"), 1);
}
