//! Compatibility replay: every request of `tests/fixtures/client-requests.jsonl` (a copy of
//! the shared reference file: 41 requests, 30 captured from the Python client and the
//! JavaScript SDK in Node and in Chromium with its CORS preflights), in order, against a
//! project whose token `TOKEN_abc123` was imported with `trackd token add`; then the stored
//! profiles and events are compared with what the calls imply.

use std::path::PathBuf;

use serde_json::Value;

use crate::helpers::{data_dir_with_vero_token, ChildServer};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/client-requests.jsonl")
}

#[tokio::test]
async fn recorded_client_requests_are_answered_200_and_stored_as_sent() {
    let text = std::fs::read_to_string(fixtures()).expect("tests/fixtures/client-requests.jsonl");
    let dir = data_dir_with_vero_token();
    let server = ChildServer::spawn(dir.path(), &[]);
    let client = reqwest::Client::new();
    let mut replayed = 0;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let r: Value = serde_json::from_str(line).expect("fixture line");
        let path = r["path"].as_str().expect("path");
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
    assert_eq!(replayed, 53);

    let db = rusqlite::Connection::open(dir.path().join("trackd.db")).expect("db");
    let users: Vec<(String, Option<String>, String, String, bool)> = db
        .prepare(
            "SELECT user_key, email, properties, tags, subscribed FROM users ORDER BY user_key",
        )
        .expect("prepare")
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    let keys: Vec<&str> = users.iter().map(|u| u.0.as_str()).collect();
    // 42 became 4242, 1234 became 5678; 43, js-1/js-2 and rb-1 were deleted; rb-2 exists
    // because it unsubscribed; the event named by nina's email alone went to n8nl-1.
    assert_eq!(
        keys,
        vec![
            "1000", "4242", "5678", "n8n-1", "n8nl-1", "nd-1", "pm-1", "rb-2", "rs-1", "rs-2",
            "sg-1", "web-1"
        ]
    );
    let user = |key: &str| users.iter().find(|u| u.0 == key).expect("user");
    let ann = user("4242");
    assert_eq!(ann.1.as_deref(), Some("ann@example.com"));
    assert_eq!(
        serde_json::from_str::<Value>(&ann.2).expect("json"),
        serde_json::json!({"first_name": "Ann", "plan": "pro"})
    );
    assert_eq!(ann.3, r#"["vip"]"#);
    assert!(ann.4, "unsubscribed then resubscribed");
    let web = user("web-1");
    assert_eq!(web.3, r#"["newsletter"]"#);
    assert!(!web.4);
    assert_eq!(
        serde_json::from_str::<Value>(&web.2).expect("json")["timezone"],
        0
    );
    assert!(!user("rb-2").4);
    assert_eq!(user("5678").3, r#"["prospect"]"#);
    // Bodies that lost data once (issue 11): bracket notation, JSON strings, multipart,
    // one channel as an object, empty tags.
    assert_eq!(
        serde_json::from_str::<Value>(&user("n8nl-1").2).expect("json"),
        serde_json::json!({"plan": "pro", "first_name": "Nina"})
    );
    assert_eq!(user("n8n-1").3, r#"["beta","vip"]"#);
    assert_eq!(user("pm-1").3, r#"["test-tag"]"#);
    assert_eq!(
        serde_json::from_str::<Value>(&user("pm-1").2).expect("json"),
        serde_json::json!({"first_name": "Jeff"})
    );
    assert_eq!(user("rs-2").3, r#"["so many tags","t-shirt fanatic"]"#);
    let channels: String = db
        .query_row(
            "SELECT channels FROM users WHERE user_key = 'rs-2'",
            [],
            |r| r.get(0),
        )
        .expect("rs-2");
    assert_eq!(
        serde_json::from_str::<Value>(&channels).expect("json"),
        serde_json::json!([{"address": "apns-token-abc", "device": "iPhone",
                            "platform": "iOS", "type": "push"}])
    );

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
    let events: Vec<(&str, &str)> = rows.iter().map(|r| (r.0.as_str(), r.1.as_str())).collect();
    assert_eq!(
        events,
        vec![
            ("4242", "Viewed product"),
            ("web-1", "Visited site"),
            ("web-1", "Viewed product"),
            ("5678", "Viewed product"),
            ("rs-1", "Order Completed"),
            ("sg-1", "viewed_page"),
            ("nd-1", "Signed up"),
            ("1000", "Viewed product"),
            ("n8nl-1", "Workflow ran"),
            ("n8n-1", "Nightly run"),
            ("pm-1", "Viewed product"),
            ("n8nl-1", "Email only"),
        ]
    );
    let find = |user: &str, name: &str| {
        rows.iter()
            .find(|r| r.0 == user && r.1 == name)
            .unwrap_or_else(|| panic!("no {name} for {user} in {rows:?}"))
    };
    assert_eq!(
        find("n8nl-1", "Workflow ran").3,
        r#"{"workflow":"nightly"}"#
    );
    assert_eq!(find("n8n-1", "Nightly run").4.as_deref(), Some("n8n"));
    assert_eq!(find("pm-1", "Viewed product").4.as_deref(), Some("postman"));
    // Python client: a float kept as sent.
    assert_eq!(
        find("4242", "Viewed product").3,
        r#"{"product":"Red T-shirt","price":20.5}"#
    );
    // 2015 docs: form-encoded, integer id.
    assert_eq!(find("5678", "Viewed product").3, r#"{"price":20}"#);
    // Segment: Unix seconds.
    assert_eq!(find("sg-1", "viewed_page").5, 1_388_534_400_000_000);
    assert_eq!(find("sg-1", "viewed_page").2, "viewed_page");
    // The browser's events carry its source.
    assert_eq!(
        find("web-1", "Visited site").4.as_deref(),
        Some("127.0.0.1")
    );
}

#[tokio::test]
async fn error_fixtures_are_refused_with_their_status_and_message() {
    let dir = data_dir_with_vero_token();
    let server = ChildServer::spawn(dir.path(), &[]);
    let client = reqwest::Client::new();
    let seed = client
        .post(format!(
            "{}/api/v2/users/track?auth_token=TOKEN_abc123",
            server.addr
        ))
        .body(r#"{"id":"1"}"#)
        .send()
        .await
        .expect("sent");
    assert_eq!(seed.status(), 200);
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/error-requests.jsonl");
    let text = std::fs::read_to_string(path).expect("error fixtures");
    let mut checked = 0;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let r: Value = serde_json::from_str(line).expect("fixture line");
        let method = reqwest::Method::from_bytes(r["method"].as_str().expect("method").as_bytes())
            .expect("method");
        let mut request = client.request(
            method,
            format!("{}{}", server.addr, r["path"].as_str().expect("path")),
        );
        for (k, v) in r["headers"].as_object().expect("headers") {
            request = request.header(k, v.as_str().expect("header value"));
        }
        let response = request
            .body(r["body"].as_str().expect("body").to_owned())
            .send()
            .await
            .expect("sent");
        let status = response.status().as_u16();
        let body: Value =
            serde_json::from_str(&response.text().await.expect("body")).expect("JSON error body");
        assert_eq!(
            (status, body.clone()),
            (
                r["status"].as_u64().expect("status") as u16,
                serde_json::json!({"status": r["status"], "message": r["message"]})
            ),
            "{line}"
        );
        checked += 1;
    }
    assert_eq!(checked, 21);
    // Nothing was stored but the seeded user.
    let db = rusqlite::Connection::open(dir.path().join("trackd.db")).expect("db");
    let (users, events): (i64, i64) = db
        .query_row(
            "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM events)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("counts");
    assert_eq!((users, events), (1, 0));
}
