//! A deleted user is gone from the files as the server leaves them (issue 12): not only
//! after a test runs a checkpoint of its own, and not only after a clean shutdown. SQLite
//! only: it reads the data directory's files.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::ChildServer;

/// How often `needle` occurs in the database file and its WAL.
pub fn occurrences(dir: &Path, needle: &[u8]) -> usize {
    ["trackd.db", "trackd.db-wal"]
        .iter()
        .map(|name| {
            let bytes = std::fs::read(dir.join(name)).unwrap_or_default();
            bytes.windows(needle.len()).filter(|w| *w == needle).count()
        })
        .sum()
}

#[tokio::test]
async fn a_deleted_user_leaves_the_wal_promptly_and_stays_gone_after_kill_9() {
    let dir = tempfile::tempdir().expect("dir");
    let mut server = ChildServer::spawn(dir.path(), &[]);
    let token = server.printed("tracking token:");
    let client = reqwest::Client::new();
    let url = |route: &str| format!("{}/api/v2/{route}?auth_token={token}", server.addr);
    let email = "erase.me.7f3a@example.com";
    let post = |route: &'static str, body: serde_json::Value| {
        let request = client.post(url(route)).body(body.to_string());
        async move {
            let response = request.send().await.expect("sent");
            assert_eq!(response.status(), 200, "{route}");
        }
    };
    post(
        "users/track",
        json!({"id": "erase-7f3a", "email": email, "data": {"name": "Erasable Name 7f3a"}}),
    )
    .await;
    for n in 0..300 {
        post(
            "events/track",
            json!({"identity": {"id": "erase-7f3a", "email": email}, "event_name": "e",
                   "data": {"n": n}}),
        )
        .await;
        post(
            "events/track",
            json!({"identity": {"id": format!("keeper-{}", n % 7)}, "event_name": "e",
                   "data": {"n": n}}),
        )
        .await;
    }
    assert!(occurrences(dir.path(), email.as_bytes()) > 0);
    post("users/delete", json!({"id": "erase-7f3a"})).await;
    // Nothing but the server touches the files: its own checkpoint must take the copies
    // out of the WAL, soon.
    let deadline = Instant::now() + Duration::from_secs(10);
    while occurrences(dir.path(), email.as_bytes()) > 0 {
        assert!(
            Instant::now() < deadline,
            "the deleted email is still in the files 10 s after the delete: {} copies",
            occurrences(dir.path(), email.as_bytes())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(occurrences(dir.path(), b"erase-7f3a"), 0);
    assert_eq!(occurrences(dir.path(), b"Erasable Name 7f3a"), 0);
    // Killed without a chance to clean up, the files hold no copy either.
    server.kill9();
    assert_eq!(occurrences(dir.path(), email.as_bytes()), 0);
    assert_eq!(occurrences(dir.path(), b"erase-7f3a"), 0);
    // The others' events are all there.
    let db = rusqlite::Connection::open(dir.path().join("trackd.db")).expect("db");
    let kept: i64 = db
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .expect("count");
    assert_eq!(kept, 300);
}
