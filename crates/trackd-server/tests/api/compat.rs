//! Compatibility replay: the `events/track` requests (and their CORS preflights) of
//! `tests/fixtures/client-requests.jsonl` (a copy of the shared reference file), captured
//! from real Vero clients, against a project whose token `TOKEN_abc123` was imported with
//! `trackd token add`.

use std::path::PathBuf;

use serde_json::Value;

use crate::helpers::{run_cli, ChildServer};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/client-requests.jsonl")
}

/// Lines this issue's routes serve: `events/track` and `heartbeat`, with their preflights.
fn served(path: &str) -> bool {
    path.starts_with("/api/v2/events/track") || path.starts_with("/api/v2/heartbeat")
}

#[tokio::test]
async fn recorded_client_requests_are_answered_200_and_stored_as_sent() {
    let text = std::fs::read_to_string(fixtures()).expect("tests/fixtures/client-requests.jsonl");
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path().to_str().expect("utf-8 path");
    let (ok, _, _) = run_cli(&["project", "create", "default", "--data-dir", d]);
    assert!(ok);
    let (ok, _, stderr) = run_cli(&[
        "token",
        "add",
        "--project",
        "default",
        "--value",
        "TOKEN_abc123",
        "--data-dir",
        d,
    ]);
    assert!(ok, "{stderr}");
    let server = ChildServer::spawn(dir.path(), &[]);
    let client = reqwest::Client::new();
    let mut replayed = 0;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let r: Value = serde_json::from_str(line).expect("fixture line");
        let path = r["path"].as_str().expect("path");
        if !served(path) {
            continue;
        }
        let method = reqwest::Method::from_bytes(r["method"].as_str().expect("method").as_bytes())
            .expect("method");
        let mut request = client.request(method.clone(), format!("{}{}", server.addr, path));
        for (k, v) in r["headers"].as_object().expect("headers") {
            request = request.header(k, v.as_str().expect("header value"));
        }
        let response = request
            .body(r["body"].as_str().expect("body").to_owned())
            .send()
            .await
            .expect("sent");
        let status = response.status().as_u16();
        if method == reqwest::Method::OPTIONS {
            assert!((200..300).contains(&status), "{line}: {status}");
        } else {
            let body = response.text().await.expect("body");
            assert_eq!(
                (status, body.as_str()),
                (200, r#"{"status":200,"message":"Success."}"#),
                "{line}"
            );
        }
        replayed += 1;
    }
    assert!(replayed >= 12, "replayed only {replayed} lines");

    let db = rusqlite::Connection::open(dir.path().join("trackd.db")).expect("db");
    let mut stmt = db
        .prepare(
            "SELECT u.user_key, e.event_name, e.event_key, e.data, e.source, e.created_at \
             FROM events e JOIN users u ON u.id = e.user_ref ORDER BY e.id",
        )
        .expect("prepare");
    let rows: Vec<(String, String, String, String, Option<String>, i64)> = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    let find = |user: &str, name: &str| {
        rows.iter()
            .find(|r| r.0 == user && r.1 == name)
            .unwrap_or_else(|| panic!("no {name} for {user} in {rows:?}"))
    };
    // Python client: email null, float kept as sent.
    assert_eq!(
        find("42", "Viewed product").3,
        r#"{"product":"Red T-shirt","price":20.5}"#
    );
    find("43", "Signed up");
    // JavaScript SDK (Node): created_at with a +0000 offset, source kept.
    let purchased = find("js-1", "Purchased item");
    assert_eq!(purchased.2, "purchased_item");
    assert_eq!(purchased.4.as_deref(), Some("checkout"));
    assert_eq!(purchased.5, 1_685_421_991_000_000);
    // Ruby gem: token in the body, .json path.
    assert_eq!(find("rb-1", "Purchased item").3, r#"{"price":10}"#);
    // 2015 docs: form-encoded, integer id.
    assert_eq!(find("1234", "Viewed product").3, r#"{"price":20}"#);
    // Segment: Unix seconds.
    assert_eq!(find("sg-1", "viewed_page").5, 1_388_534_400_000_000);
    // Older Node client: top-level id.
    find("nd-1", "Signed up");
    // The docs' curl example: a numeric id.
    find("1000", "Viewed product");
    // The browser's events.
    find("web-1", "Visited site");
    find("web-1", "Viewed product");
}
