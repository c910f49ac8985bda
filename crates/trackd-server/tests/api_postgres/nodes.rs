//! What only several trackd processes on one PostgreSQL show: dedup holds across nodes, in
//! real time.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{ChildServer, PgDatabase};

/// Two `trackd serve` processes on one fresh database; the first one created the project.
async fn two_nodes(extra: &[(&str, &str)]) -> (PgDatabase, ChildServer, ChildServer, String) {
    let db = PgDatabase::create().await;
    let dir_a = tempfile::tempdir().expect("dir");
    let dir_b = tempfile::tempdir().expect("dir");
    let mut envs = vec![("TRACKD_DATABASE_URL", db.url.as_str())];
    envs.extend_from_slice(extra);
    let a = ChildServer::spawn(dir_a.path(), &envs);
    let token = a.printed("tracking token:");
    let b = ChildServer::spawn(dir_b.path(), &envs);
    (db, a, b, token)
}

async fn send(client: &reqwest::Client, node: &ChildServer, token: &str, n: u64) -> (u16, bool) {
    let body = json!({"identity": {"id": "shared-user"}, "event_name": "clicked",
                      "data": {"n": n}});
    let answer = client
        .post(format!(
            "{}/api/v2/events/track?auth_token={token}",
            node.addr
        ))
        .body(body.to_string())
        .send()
        .await
        .expect("sent");
    let duplicate = answer.headers().contains_key("trackd-duplicate");
    (answer.status().as_u16(), duplicate)
}

fn stored(db: &PgDatabase) -> i64 {
    db.with_client(|c| {
        Box::pin(async move {
            c.query_one("SELECT count(*) FROM events", &[])
                .await
                .expect("count")
                .get(0)
        })
    })
}

#[tokio::test]
async fn identical_events_sent_to_two_nodes_at_once_are_stored_once() {
    let (db, a, b, token) = two_nodes(&[]).await;
    let client = reqwest::Client::new();
    for n in 0..100 {
        // Each event twice to each node, all four at once.
        let (r1, r2, r3, r4) = tokio::join!(
            send(&client, &a, &token, n),
            send(&client, &b, &token, n),
            send(&client, &a, &token, n),
            send(&client, &b, &token, n),
        );
        let answers = [r1, r2, r3, r4];
        assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
        let stored_once = answers.iter().filter(|(_, dup)| !dup).count();
        assert_eq!(stored_once, 1, "event {n}: {answers:?}");
    }
    assert_eq!(stored(&db), 100);
}

#[tokio::test]
async fn a_duplicate_on_another_node_is_judged_by_the_window_in_real_time() {
    let (db, a, b, token) = two_nodes(&[("TRACKD_DEDUP_WINDOW", "3")]).await;
    let client = reqwest::Client::new();
    assert_eq!(send(&client, &a, &token, 1).await, (200, false));
    // Inside the window, on the other node: a duplicate.
    assert_eq!(send(&client, &b, &token, 1).await, (200, true));
    tokio::time::sleep(Duration::from_millis(3500)).await;
    // Past it: a new event, and from then on the window starts again.
    assert_eq!(send(&client, &b, &token, 1).await, (200, false));
    assert_eq!(send(&client, &a, &token, 1).await, (200, true));
    assert_eq!(stored(&db), 2);
}
