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

/// Tracks `clicked` with `data.n = n` for one shared user through `node`: the status, and
/// whether it was answered as a duplicate.
pub(crate) async fn send(
    client: &reqwest::Client,
    node: &ChildServer,
    token: &str,
    n: u64,
) -> (u16, bool) {
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
    crate::skip_without_postgres!();
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

/// A Segment call with messageId `m-{n}`, to `/v1/track` (`batch`: in a `/v1/batch`).
async fn send_v1(
    client: &reqwest::Client,
    node: &ChildServer,
    token: &str,
    n: u64,
    batch: bool,
) -> (u16, bool) {
    let call = json!({"type": "track", "userId": "shared-user", "event": "clicked",
                      "messageId": format!("m-{n}")});
    let (route, body) = if batch {
        ("batch", json!({"batch": [call]}))
    } else {
        ("track", call)
    };
    let answer = client
        .post(format!("{}/v1/{route}", node.addr))
        .basic_auth(token, Some(""))
        .body(body.to_string())
        .send()
        .await
        .expect("sent");
    let duplicate = answer.headers().contains_key("trackd-duplicate");
    assert_eq!(
        answer.text().await.expect("body"),
        r#"{"success":true}"#,
        "call {n}"
    );
    (200, duplicate)
}

#[tokio::test]
async fn one_message_id_sent_to_two_nodes_at_once_is_stored_once() {
    crate::skip_without_postgres!();
    let (db, a, b, token) = two_nodes(&[]).await;
    let client = reqwest::Client::new();
    for n in 0..100 {
        // Each call twice to each node, single and batched, all four at once.
        let answers = tokio::join!(
            send_v1(&client, &a, &token, n, false),
            send_v1(&client, &b, &token, n, true),
            send_v1(&client, &a, &token, n, true),
            send_v1(&client, &b, &token, n, false),
        );
        // Single calls say whether they were duplicates; batches do not: count the rows.
        let singles_stored = [answers.0, answers.3].iter().filter(|(_, d)| !d).count();
        assert!(singles_stored <= 1, "call {n}: {answers:?}");
        assert_eq!(stored(&db), n as i64 + 1, "call {n}: {answers:?}");
    }
    let ids: i64 = db.with_client(|c| {
        Box::pin(async move {
            c.query_one("SELECT count(*) FROM message_ids", &[])
                .await
                .expect("count")
                .get(0)
        })
    });
    assert_eq!(ids, 100);
}

#[tokio::test]
async fn a_duplicate_on_another_node_is_judged_by_the_window_in_real_time() {
    crate::skip_without_postgres!();
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

#[tokio::test]
async fn nodes_starting_at_once_on_an_empty_database_migrate_it_once() {
    crate::skip_without_postgres!();
    let db = PgDatabase::create().await;
    let clock: std::sync::Arc<dyn trackd_core::Clock> =
        std::sync::Arc::new(trackd_core::SystemClock);
    let open = || {
        trackd_store::PostgresStore::open(trackd_store::PgConfig {
            url: db.url.clone(),
            dedup_window: Duration::from_secs(180),
            message_id_window: Duration::from_secs(86_400),
            queue_capacity: 16,
            clock: clock.clone(),
            dedup_clock: None,
            pool_size: 4,
        })
    };
    let opened = futures::future::join_all((0..6).map(|_| open())).await;
    for store in &opened {
        assert!(store.is_ok(), "{:?}", store.as_ref().err());
    }
    let version: i64 = db.with_client(|c| {
        Box::pin(async move {
            c.query_one("SELECT version FROM trackd_schema", &[])
                .await
                .expect("schema version")
                .get(0)
        })
    });
    // Each migration applied once: the schema is at the last one (there are five).
    assert_eq!(version, 6);
}

#[tokio::test]
async fn the_application_role_needs_no_superuser() {
    crate::skip_without_postgres!();
    let db = PgDatabase::create().await;
    let role = format!("trackd_app_{:08x}", rand::random::<u32>());
    let ddl = format!(
        "CREATE ROLE {role} LOGIN PASSWORD '{role}' NOSUPERUSER NOCREATEDB NOCREATEROLE; \
         GRANT CREATE, USAGE ON SCHEMA public TO {role}"
    );
    db.with_client(|c| Box::pin(async move { c.batch_execute(&ddl).await.expect("role") }));
    // The same server and database, as the new role.
    let (scheme, rest) = db.url.split_once("://").expect("a postgres:// URL");
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let url = format!("{scheme}://{role}:{role}@{host}");
    let (ok, stdout, stderr) =
        crate::helpers::run_cli(&["project", "create", "app", "--database-url", &url, "--json"]);
    assert!(ok, "{stderr}");
    let created: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let token = created["tracking_token"]
        .as_str()
        .expect("token")
        .to_owned();
    // A node as that role serves, and the CLI reads what it stored.
    let home = tempfile::tempdir().expect("dir");
    let node = ChildServer::spawn(home.path(), &[("TRACKD_DATABASE_URL", url.as_str())]);
    let client = reqwest::Client::new();
    assert_eq!(send(&client, &node, &token, 1).await, (200, false));
    let (ok, listed, stderr) =
        crate::helpers::run_cli(&["project", "list", "--database-url", &url, "--json"]);
    assert!(ok, "{stderr}");
    assert_eq!(
        listed.trim(),
        r#"[{"id":1,"name":"app","retention":"off"}]"#
    );
    let (ok, exported, stderr) =
        crate::helpers::run_cli(&["export", "--project", "app", "--database-url", &url]);
    assert!(ok, "{stderr}");
    assert_eq!(exported.lines().count(), 1, "{exported}");
    drop(node);
    let cleanup = format!("DROP OWNED BY {role}; ");
    db.with_client(|c| Box::pin(async move { c.batch_execute(&cleanup).await.expect("drop") }));
    drop(db);
    let admin = std::env::var("TRACKD_TEST_DATABASE_URL").expect("url");
    let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect("admin");
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP ROLE IF EXISTS {role}"))
        .await
        .expect("drop role");
}

#[tokio::test]
async fn a_console_on_one_node_sees_the_events_every_node_commits() {
    crate::skip_without_postgres!();
    let (_db, a, b, token) = two_nodes(&[]).await;
    let secret = a.printed("secret key:");
    let client = reqwest::Client::new();
    let mut on_b = crate::live::LiveStream::open(&client, &b.addr, &secret, "").await;
    let url = format!("{}/api/v2/events/track?auth_token={token}", a.addr);
    let sender = crate::live::event_sender(url, "from-a", "on node a");
    let line = crate::live::first_live_event(&mut on_b, sender).await;
    assert_eq!(line["event"]["event_name"], "on node a");
    assert_eq!(line["event"]["user"]["id"], "from-a");
    // And a duplicate dropped by node B is counted on B's stream, whoever stored the event.
    let (status, duplicate) = send(&client, &a, &token, 7).await;
    assert_eq!((status, duplicate), (200, false));
    assert_eq!(send(&client, &b, &token, 7).await, (200, true));
    let mut seen = Vec::new();
    while let Ok(Some(line)) =
        tokio::time::timeout(Duration::from_secs(3), on_b.next_message()).await
    {
        seen.push(line);
    }
    assert!(
        seen.iter()
            .any(|l| l["type"] == "event" && l["event"]["data"]["n"] == 7),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|l| l == &json!({"type": "duplicates", "count": 1})),
        "{seen:?}"
    );
}

#[tokio::test]
async fn when_the_node_delivering_a_destination_dies_the_other_takes_over_and_nothing_is_lost() {
    crate::skip_without_postgres!();
    let fast = [("TRACKD_DELIVERY_RETRY_BASE_MS", "100")];
    let (_db, mut a, mut b, token) = two_nodes(&fast).await;
    let secret = a.printed("secret key:");
    let client = reqwest::Client::new();
    let receiver = crate::receiver::Receiver::start(vec![]).await;
    let created = client
        .post(format!("{}/api/v2/destinations", a.addr))
        .bearer_auth(&secret)
        .json(&json!({"name": "hook", "kind": "webhook", "url": receiver.url, "batch": 20}))
        .send()
        .await
        .expect("sent");
    assert_eq!(created.status(), 201);
    // Events through both nodes.
    for n in 0..200 {
        let node = if n % 2 == 0 { &a } else { &b };
        assert_eq!(send(&client, node, &token, n).await, (200, false));
    }
    receiver
        .wait_for(Duration::from_secs(30), "the first 200 events", |log| {
            log.iter().map(|r| r.items().len()).sum::<usize>() >= 200
        })
        .await;
    // Exactly one node delivers: the one that said so.
    let said = |node: &ChildServer| node.stderr.lock().expect("lock").contains("delivering");
    let (holder_is_a, a_said, b_said) = (said(&a), said(&a), said(&b));
    assert!(
        a_said != b_said,
        "exactly one node delivers (a: {a_said}, b: {b_said})"
    );
    let (dead, survivor) = if holder_is_a {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    dead.kill9();
    let killed = std::time::Instant::now();
    for n in 200..400 {
        assert_eq!(send(&client, survivor, &token, n).await, (200, false));
    }
    let deadline = killed + Duration::from_secs(15);
    while !said(survivor) {
        assert!(
            std::time::Instant::now() < deadline,
            "the survivor did not take the destination over within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    receiver
        .wait_for(Duration::from_secs(30), "every event", |log| {
            let ns: std::collections::HashSet<i64> = log
                .iter()
                .filter(|r| r.status == 200)
                .flat_map(|r| r.items())
                .filter_map(|i| i["event"]["data"]["n"].as_i64())
                .collect();
            ns.len() == 400
        })
        .await;
}
