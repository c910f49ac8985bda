//! What only a real process shows: kill -9 inside the dedup window, graceful SIGTERM.

use serde_json::json;

use crate::helpers::{event, ChildServer};

async fn post(client: &reqwest::Client, url: &str, body: String) -> reqwest::Response {
    client.post(url).body(body).send().await.expect("sent")
}

#[tokio::test]
async fn kill_9_inside_the_window_keeps_the_event_and_its_dedup_record() {
    let dir = tempfile::tempdir().expect("dir");
    let client = reqwest::Client::new();
    let mut server = ChildServer::spawn(dir.path(), &[]);
    let token = server.printed("tracking token:");
    let url = format!("{}/api/v2/events/track?auth_token={token}", server.addr);
    let first = post(&client, &url, event("u", 1).to_string()).await;
    assert_eq!(first.status(), 200);
    server.kill9();

    let server = ChildServer::spawn(dir.path(), &[]);
    let url = format!("{}/api/v2/events/track?auth_token={token}", server.addr);
    let retry = post(&client, &url, event("u", 1).to_string()).await;
    assert_eq!(retry.status(), 200);
    assert_eq!(
        retry
            .headers()
            .get("trackd-duplicate")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let fresh = post(&client, &url, event("u", 2).to_string()).await;
    assert!(fresh.headers().get("trackd-duplicate").is_none());
    let db = rusqlite::Connection::open(dir.path().join("trackd.db")).expect("db");
    let n: i64 = db
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .expect("count");
    assert_eq!(n, 2);
    // Nothing was printed again: the project existed.
    assert!(server.stdout.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn sigterm_answers_requests_in_flight_commits_and_exits_zero() {
    let dir = tempfile::tempdir().expect("dir");
    let client = reqwest::Client::new();
    let mut server = ChildServer::spawn(dir.path(), &[]);
    let token = server.printed("tracking token:");
    let url = format!("{}/api/v2/events/track?auth_token={token}", server.addr);
    // A steady stream of requests; SIGTERM lands in the middle of it.
    let senders: Vec<_> = (0..8)
        .map(|worker| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let mut acknowledged = 0;
                for n in 0..200 {
                    let body = json!({"identity": {"id": format!("w{worker}")}, "event_name": "e",
                                      "data": {"n": n}});
                    match client.post(&url).body(body.to_string()).send().await {
                        Ok(r) if r.status() == 200 => acknowledged += 1,
                        // Refused connections after the listener closed are expected.
                        _ => break,
                    }
                }
                acknowledged
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    server.sigterm();
    let mut acknowledged = 0;
    for s in senders {
        acknowledged += s.await.expect("sender");
    }
    let status = server.process.wait().expect("exits");
    assert!(status.success(), "exit status {status:?}");
    let db = rusqlite::Connection::open(dir.path().join("trackd.db")).expect("db");
    let stored: i64 = db
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .expect("count");
    // Every acknowledged event is stored; a request cut off by the close was never answered
    // 200, so it may or may not have been stored.
    assert!(acknowledged > 0);
    assert!(
        stored >= acknowledged,
        "stored {stored} < acknowledged {acknowledged}"
    );
    assert!(
        stored <= acknowledged + 8,
        "stored {stored}, acknowledged {acknowledged}"
    );
}
