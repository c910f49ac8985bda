//! Delivery as a real process shows it (SQLite): kill -9 in the middle of a backlog, and
//! signatures checked by an implementation nobody here wrote (the `standardwebhooks`
//! package from PyPI).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::erasure::occurrences;
use crate::helpers::{required, skip_notice, ChildServer};
use crate::receiver::Receiver;

const FAST_RETRIES: [(&str, &str); 1] = [("TRACKD_DELIVERY_RETRY_BASE_MS", "100")];

/// The read API of a child server, with its secret key.
struct Api<'a> {
    client: reqwest::Client,
    server: &'a ChildServer,
    key: String,
}

impl<'a> Api<'a> {
    fn of(server: &'a ChildServer) -> Api<'a> {
        Api {
            client: reqwest::Client::new(),
            server,
            key: server.printed("secret key:"),
        }
    }

    /// `method /api/v2/{path}`, which must succeed; its JSON answer.
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .client
            .request(method, format!("{}/api/v2/{path}", self.server.addr))
            .bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("sent");
        let status = response.status();
        let text = response.text().await.expect("body");
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).expect("json")
    }

    async fn post(&self, path: &str, body: Option<Value>) -> Value {
        self.call(reqwest::Method::POST, path, body).await
    }

    async fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None).await
    }
}

/// Imports `n` track bodies for `users` users in one request.
async fn import(client: &reqwest::Client, server: &ChildServer, key: &str, n: usize, users: usize) {
    let mut body = String::new();
    for i in 0..n {
        body.push_str(
            &json!({"identity": {"id": format!("user-{}", i % users)}, "event_name": "Viewed",
                    "data": {"n": i}})
            .to_string(),
        );
        body.push('\n');
    }
    let response = client
        .post(format!("{}/api/v2/events/import", server.addr))
        .bearer_auth(key)
        .body(body)
        .send()
        .await
        .expect("sent");
    assert_eq!(
        response.status(),
        200,
        "{}",
        response.text().await.unwrap_or_default()
    );
}

#[tokio::test]
async fn kill_9_in_the_middle_of_a_backlog_loses_nothing_and_resends_only_what_was_in_flight() {
    const EVENTS: usize = 20_000;
    const BATCH: usize = 100;
    let dir = tempfile::tempdir().expect("dir");
    let mut server = ChildServer::spawn(dir.path(), &FAST_RETRIES);
    let key = server.printed("secret key:");
    let client = reqwest::Client::new();
    let api = Api::of(&server);
    let receiver = Receiver::start(vec![]).await;
    api.post(
        "destinations",
        Some(json!({"name": "hook", "kind": "webhook", "url": receiver.url, "batch": BATCH})),
    )
    .await;
    api.post("destinations/hook/pause", None).await;
    import(&client, &server, &key, EVENTS, 50).await;
    api.post("destinations/hook/resume", None).await;
    // Kill it once a part of the backlog went out.
    receiver
        .wait_for(Duration::from_secs(60), "a tenth of the backlog", |log| {
            log.iter().map(|r| r.items().len()).sum::<usize>() >= EVENTS / 10
        })
        .await;
    server.kill9();
    let before_kill = receiver.log().len();
    assert!(
        receiver.acknowledged_items().len() < EVENTS,
        "the backlog drained before the kill: the test proves nothing"
    );
    let server = ChildServer::spawn(dir.path(), &FAST_RETRIES);
    receiver
        .wait_for(Duration::from_secs(120), "every event", |log| {
            let mut ids = std::collections::HashSet::new();
            for r in log.iter().filter(|r| r.status == 200) {
                for item in r.items() {
                    ids.insert(item["id"].as_str().unwrap_or_default().to_owned());
                }
            }
            ids.len() >= EVENTS
        })
        .await;
    // Every stored event arrived, each id always with the same content.
    let exported: Vec<Value> = client
        .get(format!("{}/api/v2/events/export", server.addr))
        .bearer_auth(&key)
        .send()
        .await
        .expect("export")
        .text()
        .await
        .expect("body")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(exported.len(), EVENTS);
    let mut by_id: HashMap<String, (Value, usize)> = HashMap::new();
    for item in receiver.acknowledged_items() {
        let id = item["id"].as_str().expect("id").to_owned();
        let entry = by_id.entry(id.clone()).or_insert((item.clone(), 0));
        assert_eq!(entry.0, item, "{id} was re-sent with other content");
        entry.1 += 1;
    }
    let delivered: std::collections::HashSet<i64> = by_id
        .values()
        .map(|(item, _)| item["event"]["id"].as_i64().expect("event id"))
        .collect();
    for e in &exported {
        assert!(
            delivered.contains(&e["id"].as_i64().expect("id")),
            "{e} never arrived"
        );
    }
    // Only what was in flight at the kill came twice: the batch being sent, and the one
    // acknowledged just before whose cursor was not yet written.
    let twice = by_id.values().filter(|(_, n)| *n > 1).count();
    assert!(twice <= 2 * BATCH, "{twice} items were delivered twice");
    assert!(by_id.values().all(|(_, n)| *n <= 2));
    // A batch sent again after the restart carries the id it had.
    let log = receiver.log();
    let ids_before: std::collections::HashSet<&str> =
        log[..before_kill].iter().map(|r| r.id.as_str()).collect();
    let resent: Vec<&str> = log[before_kill..]
        .iter()
        .map(|r| r.id.as_str())
        .filter(|id| ids_before.contains(id))
        .collect();
    assert!(
        resent.len() <= 2,
        "batches re-sent after the restart: {resent:?}"
    );
}

/// The Python receiver: verifies each request with `standardwebhooks` and records it.
const PY_RECEIVER: &str = r#"
import http.server, json, sys
from standardwebhooks.webhooks import Webhook
secret, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
wh = Webhook(secret)
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        headers = {k: self.headers.get(k) for k in ("webhook-id", "webhook-timestamp", "webhook-signature")}
        try:
            wh.verify(body, headers)
            verified, error = True, None
        except Exception as e:
            verified, error = False, repr(e)
        with open(log, "a") as f:
            f.write(json.dumps({"id": headers["webhook-id"], "verified": verified, "error": error,
                                "items": [i["id"] for i in json.loads(body)["items"]]}) + "\n")
        self.send_response(204 if verified else 400)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

#[tokio::test]
async fn signatures_verify_with_the_standard_webhooks_reference_library() {
    let available = std::process::Command::new("python3")
        .args(["-c", "import standardwebhooks"])
        .status()
        .is_ok_and(|s| s.success());
    if !available {
        assert!(
            !required("TRACKD_TEST_REQUIRE_WEBHOOK_VERIFIER"),
            "the standardwebhooks package (PyPI) is required"
        );
        skip_notice("python3 with the standardwebhooks package (PyPI) is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let server = ChildServer::spawn(dir.path(), &FAST_RETRIES);
    let token = server.printed("tracking token:");
    let client = reqwest::Client::new();
    let api = Api::of(&server);
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = reserved.local_addr().expect("addr").port();
    drop(reserved);
    let created = api
        .post(
            "destinations",
            Some(
                json!({"name": "py", "kind": "webhook", "url": format!("http://127.0.0.1:{port}/"),
                    "batch": 10}),
            ),
        )
        .await;
    let secret = created["secret"].as_str().expect("secret").to_owned();
    let log = dir.path().join("verified.ndjson");
    let script = dir.path().join("receiver.py");
    std::fs::write(&script, PY_RECEIVER).expect("script");
    let mut python = std::process::Command::new("python3")
        .arg(&script)
        .arg(&secret)
        .arg(port.to_string())
        .arg(&log)
        .spawn()
        .expect("python receiver");
    for n in 0..35 {
        let answer = client
            .post(format!(
                "{}/api/v2/events/track?auth_token={token}",
                server.addr
            ))
            .json(
                &json!({"identity": {"id": format!("u{}", n % 3), "email": "ann@example.com"},
                          "event_name": "Paid ✓", "data": {"amount": n, "note": "naïve \u{2028}"}}),
            )
            .send()
            .await
            .expect("sent");
        assert_eq!(answer.status(), 200);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let records: Vec<Value> = loop {
        let records: Vec<Value> = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        let items: usize = records
            .iter()
            .filter(|r| r["verified"] == true)
            .map(|r| r["items"].as_array().map_or(0, Vec::len))
            .sum();
        if items >= 35 {
            break records;
        }
        assert!(
            Instant::now() < deadline,
            "not every item verified: {records:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = python.kill();
    let _ = python.wait();
    assert!(
        records.iter().all(|r| r["verified"] == true),
        "a signature did not verify: {records:?}"
    );
    assert!(records.len() >= 4, "batches of 10: {records:?}");
}

#[tokio::test]
async fn a_deleted_users_undelivered_items_leave_the_files_and_its_delete_is_delivered() {
    let dir = tempfile::tempdir().expect("dir");
    let server = ChildServer::spawn(dir.path(), &FAST_RETRIES);
    let token = server.printed("tracking token:");
    let client = reqwest::Client::new();
    let api = Api::of(&server);
    let receiver = Receiver::start(vec![]).await;
    api.post(
        "destinations",
        Some(json!({"name": "hook", "kind": "webhook", "url": receiver.url})),
    )
    .await;
    api.post("destinations/hook/pause", None).await;
    let call = |method: reqwest::Method, route: &'static str, body: Value| {
        let request = client
            .request(
                method,
                format!("{}/api/v2/{route}?auth_token={token}", server.addr),
            )
            .json(&body);
        async move {
            let response = request.send().await.expect("sent");
            assert_eq!(response.status(), 200, "{route}");
        }
    };
    let (id, email) = ("gone-5e1d", "gone.5e1d@example.com");
    let secrets: [&[u8]; 4] = [
        email.as_bytes(),
        b"Secret Name 5e1d",
        b"event-marker-5e1d",
        b"private note 5e1d",
    ];
    call(
        reqwest::Method::POST,
        "users/track",
        json!({"id": id, "email": email, "data": {"name": "Secret Name 5e1d"}}),
    )
    .await;
    for n in 0..50 {
        call(
            reqwest::Method::POST,
            "events/track",
            json!({"identity": {"id": id, "email": email}, "event_name": "e",
                   "data": {"m": "event-marker-5e1d", "n": n}}),
        )
        .await;
        call(
            reqwest::Method::POST,
            "events/track",
            json!({"identity": {"id": format!("keeper-{}", n % 3)}, "event_name": "e",
                   "data": {"n": n}}),
        )
        .await;
    }
    call(
        reqwest::Method::PUT,
        "users/edit",
        json!({"id": id, "changes": {"note": "private note 5e1d"}}),
    )
    .await;
    for secret in secrets {
        assert!(occurrences(dir.path(), secret) > 0);
    }
    let listed = api.get("destinations/hook").await;
    assert_eq!(listed["backlog"], 102, "{listed}");
    call(reqwest::Method::POST, "users/delete", json!({"id": id})).await;
    // The user's items are gone from the outbox, and their bytes from the files.
    let deadline = Instant::now() + Duration::from_secs(10);
    for secret in secrets {
        while occurrences(dir.path(), secret) > 0 {
            assert!(
                Instant::now() < deadline,
                "{} is still in the files after the delete",
                String::from_utf8_lossy(secret)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let listed = api.get("destinations/hook").await;
    assert_eq!(
        listed["backlog"], 51,
        "the keepers' 50 events and the delete: {listed}"
    );
    // Delivered: the keepers' events and the delete, nothing of the user but its id.
    api.post("destinations/hook/resume", None).await;
    receiver
        .wait_for(Duration::from_secs(30), "the delete", |log| {
            log.iter()
                .flat_map(|r| r.items())
                .any(|i| i["type"] == "user.delete")
        })
        .await;
    let items = receiver.delivered_items();
    assert_eq!(items.len(), 51);
    let delete = items
        .iter()
        .find(|i| i["type"] == "user.delete")
        .expect("delete");
    assert_eq!(delete["user"], json!({"id": id}));
    let text = serde_json::to_string(&items).expect("json");
    assert_eq!(
        text.matches("5e1d").count(),
        1,
        "only the delete names the user"
    );
}
