//! Delivery to webhooks (DESIGN §8), black-box on both stores: a real receiver on port 0
//! that fails as told; every accepted event arrives at least once, in commit order per
//! user, signed; failures are retried with the same batch id; a 400 goes to the dead
//! letters and redrive sends it again; the destinations API says where each stands.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{event, Answer, TestApp};
use crate::receiver::{Receiver, Reply};

/// `POST /api/v2/destinations` with the secret key.
pub async fn post_destination(app: &TestApp, body: &Value) -> Answer {
    app.send(
        app.client
            .post(app.url("/api/v2/destinations"))
            .bearer_auth(&app.secret)
            .json(body),
    )
    .await
}

/// Adds a webhook destination; returns its signing secret.
pub async fn add_webhook(app: &TestApp, name: &str, url: &str, extra: Value) -> String {
    let mut body = json!({"name": name, "kind": "webhook", "url": url});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let answer = post_destination(app, &body).await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    let created = answer.json();
    assert_eq!(created["name"], name);
    assert_eq!(created["state"], "running");
    let secret = created["secret"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    secret
}

/// `DELETE /api/v2/destinations/{name}` with the secret key.
async fn remove_destination(app: &TestApp, name: &str) -> Answer {
    app.send(
        app.client
            .delete(app.url(&format!("/api/v2/destinations/{name}")))
            .bearer_auth(&app.secret),
    )
    .await
}

/// An action on a destination (`pause`, `resume`, `redrive`, `replay?since=…`).
pub async fn act(app: &TestApp, name: &str, action: &str) -> Answer {
    app.send(
        app.client
            .post(app.url(&format!("/api/v2/destinations/{name}/{action}")))
            .bearer_auth(&app.secret),
    )
    .await
}

/// `GET /api/v2/destinations/{name}`.
pub async fn destination(app: &TestApp, name: &str) -> Value {
    app.read_json(&format!("/api/v2/destinations/{name}")).await
}

/// Waits until the destination has nothing left to send (backlog 0, no dead letters
/// unless `dead` of them).
pub async fn wait_drained(app: &TestApp, name: &str, dead: i64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let d = destination(app, name).await;
        if d["backlog"] == 0 && d["dead_letters"] == dead && d["state"] != "retrying" {
            return d;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "destination never drained: {d}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the destination says it is retrying; returns it.
async fn wait_retrying(app: &TestApp, name: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let d = destination(app, name).await;
        if d["state"] == "retrying" {
            return d;
        }
        assert!(std::time::Instant::now() < deadline, "never retrying: {d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks every request's Standard Webhooks signature with the destination's secret.
fn assert_signed(receiver: &Receiver, secret: &str) {
    for r in receiver.log() {
        let ts: i64 = r.timestamp.parse().expect("webhook-timestamp is seconds");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        assert!((now - ts).abs() < 300, "timestamp {ts} is not now ({now})");
        let expected = trackd_core::delivery::sign(secret, &r.id, ts, &r.raw).expect("signs");
        assert_eq!(r.signature, expected, "signature of {}", r.id);
    }
}

/// Event ids per user, in the order their items arrived (first arrival of each).
fn arrival_order(items: &[Value]) -> BTreeMap<String, Vec<i64>> {
    let mut seen = HashSet::new();
    let mut order: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for item in items {
        if item["type"] != "event" || !seen.insert(item["id"].as_str().map(str::to_owned)) {
            continue;
        }
        let e = &item["event"];
        let user = e["user"]["id"].as_str().unwrap_or_default().to_owned();
        order
            .entry(user)
            .or_default()
            .push(e["id"].as_i64().expect("event id"));
    }
    order
}

#[tokio::test]
async fn every_event_arrives_signed_in_commit_order_per_user_through_failures() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    // The first batch is answered 500, then not at all (past the 2 s timeout), then 429
    // with Retry-After: 2; the rest are acknowledged.
    let receiver = Receiver::start(vec![
        Reply::Status(500, "oops"),
        Reply::Hang(Duration::from_secs(3)),
        Reply::RetryAfter(2),
    ])
    .await;
    let secret = add_webhook(&app, "hook", &receiver.url, json!({"batch": 7})).await;
    for n in 0..40 {
        app.track(&event(&format!("user-{}", n % 4), n))
            .await
            .assert_success(false);
    }
    app.call(
        "PUT",
        "users/edit",
        &json!({"id": "user-1", "changes": {"plan": "pro"}}),
    )
    .await
    .assert_success(false);
    let d = wait_drained(&app, "hook", 0).await;
    assert_eq!(d["delivered"], 41, "{d}");
    assert_eq!(d["state"], "running");
    assert_eq!(d["last_error"], Value::Null);

    let log = receiver.log();
    // The first batch was tried four times, always under the same id and body.
    assert_eq!(
        log[..4].iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![500, 0, 429, 200]
    );
    assert!(log[..4]
        .iter()
        .all(|r| r.id == log[0].id && r.raw == log[0].raw));
    // Retry-After was honoured: the attempt after the 429 came 2 s later or more.
    assert!(log[3].at.duration_since(log[2].at) >= Duration::from_secs(2));
    assert_signed(&receiver, &secret);
    // Batches of at most 7, each a trackd.batch of the project.
    for r in &log {
        assert_eq!(r.body["type"], "trackd.batch");
        assert_eq!(r.body["project"], "test");
        assert!(!r.items().is_empty() && r.items().len() <= 7, "{}", r.body);
    }

    // Every stored event arrived, as exported, in commit order per user; then the edit.
    let items = receiver.delivered_items();
    let exported = app.exported().await;
    let delivered_events: HashMap<i64, Value> = items
        .iter()
        .filter(|i| i["type"] == "event")
        .map(|i| (i["event"]["id"].as_i64().expect("id"), i["event"].clone()))
        .collect();
    assert_eq!(exported.len(), 40);
    for e in &exported {
        let id = e["id"].as_i64().expect("id");
        assert_eq!(delivered_events.get(&id), Some(e), "event {id} as exported");
    }
    for (user, ids) in arrival_order(&items) {
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(ids, sorted, "{user}'s events out of commit order");
        assert_eq!(ids.len(), 10, "{user}");
    }
    let edit = items.last().expect("items");
    assert_eq!(edit["type"], "user.edit");
    assert_eq!(
        edit["user"],
        json!({"id": "user-1", "changes": {"plan": "pro"}})
    );
    // Item ids are unique and stable in shape.
    let ids: HashSet<&str> = items.iter().filter_map(|i| i["id"].as_str()).collect();
    assert_eq!(ids.len(), 41);
    assert!(ids.iter().all(|id| id.starts_with("trk_")));
    // And the metrics say so.
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(
            "trackd_delivery_attempts_total{project=\"test\",destination=\"hook\",outcome=\"retry\"} 3"
        ),
        "{metrics}"
    );
}

/// `GET /api/v2/destinations/hook/dead-letters` with `query`.
async fn dead_letters(app: &TestApp, query: &str) -> Value {
    app.read_json(&format!("/api/v2/destinations/hook/dead-letters{query}"))
        .await
}

#[tokio::test]
async fn a_refused_batch_becomes_dead_letters_delivery_moves_on_and_redrive_sends_it() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let receiver = Receiver::start(vec![
        Reply::Status(400, "no thanks: field x"),
        Reply::Status(422, "no thanks: field y"),
    ])
    .await;
    add_webhook(&app, "hook", &receiver.url, json!({"batch": 1})).await;
    for n in 0..3 {
        app.track(&event("u", n)).await.assert_success(false);
    }
    let d = wait_drained(&app, "hook", 2).await;
    assert_eq!(d["delivered"], 1, "{d}");
    assert_eq!(d["dead_letters"], 2);
    let log = receiver.log();
    assert_eq!(log.len(), 3, "a 400 is not retried");
    assert_eq!((log[0].status, log[1].status), (400, 422));
    let dead: Vec<Value> = log[..2].iter().map(|r| r.items()[0].clone()).collect();
    assert_eq!(dead[0]["event"]["data"]["n"], 0);

    // Listed (DESIGN §8: "dead letters are listed"), a page at a time, with the answers.
    let first = dead_letters(&app, "?limit=1").await;
    let letters = first["dead_letters"].as_array().expect("list").clone();
    assert_eq!(letters.len(), 1, "{first}");
    assert_eq!(letters[0]["item"], dead[0]["id"]);
    assert_eq!(letters[0]["status"], 400);
    assert_eq!(letters[0]["response"], "no thanks: field x");
    assert_eq!(letters[0]["redrive"], false);
    assert!(
        letters[0]["failed_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{first}"
    );
    let after = first["next_after"].as_i64().expect("a next page");
    assert_eq!(letters[0]["position"], after);
    let second = dead_letters(&app, &format!("?limit=1&after={after}")).await;
    assert_eq!(second["dead_letters"][0]["item"], dead[1]["id"]);
    assert_eq!(second["dead_letters"][0]["status"], 422);
    let all = dead_letters(&app, "").await;
    assert_eq!(all["dead_letters"].as_array().map(Vec::len), Some(2));
    assert_eq!(all["next_after"], Value::Null);
    for (query, message) in [
        ("?after=-1", "after: must be an item's position (0 or more)"),
        ("?limit=0", "limit: must be an integer from 1 to 1000"),
        (
            "?since=1",
            "since: unknown parameter (this route takes after, limit)",
        ),
    ] {
        app.read(&format!("/api/v2/destinations/hook/dead-letters{query}"))
            .await
            .assert_error(400, message);
    }
    app.read("/api/v2/destinations/nope/dead-letters")
        .await
        .assert_error(404, "destination nope: not found");
    // The command line lists the same, a JSON object a line.
    let [flag, dir] = crate::privacy::store_args(&app);
    let (ok, stdout, stderr) = crate::helpers::run_cli(&[
        "destination",
        "dead-letters",
        "--project",
        "test",
        "--name",
        "hook",
        &flag,
        &dir,
    ]);
    assert!(ok, "{stderr}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines, all["dead_letters"].as_array().expect("list").clone());

    let answer = act(&app, "hook", "redrive").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    receiver
        .wait_for(Duration::from_secs(20), "the redriven items", |log| {
            log.len() == 5
        })
        .await;
    let d = wait_drained(&app, "hook", 0).await;
    assert_eq!(d["delivered"], 3, "{d}");
    let again = &receiver.log()[3..];
    assert!(again.iter().all(|r| r.status == 200));
    let redriven: Vec<Value> = again.iter().map(|r| r.items()[0].clone()).collect();
    assert_eq!(redriven, dead, "the same items, the same ids");
    assert_ne!(again[0].id, log[0].id, "a redrive is a message of its own");
    assert_eq!(
        dead_letters(&app, "").await,
        json!({"dead_letters": [], "next_after": null})
    );
    // Removed, its series leave /metrics at the next refresh (every 5 s): an alert on its
    // dead letters or backlog does not go on firing.
    assert!(app.metrics().await.contains(r#"destination="hook""#));
    let removed = remove_destination(&app, "hook").await;
    assert_eq!(removed.status, 200, "{}", removed.body);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = app.metrics().await;
        if !m.contains(r#"destination="hook""#) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still there:\n{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn an_unreachable_receiver_never_slows_ingest_and_gets_everything_when_it_comes_up() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    // A port nobody listens on yet.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = reserved.local_addr().expect("addr");
    drop(reserved);
    add_webhook(&app, "hook", &format!("http://{addr}/hook"), json!({})).await;
    for n in 0..20 {
        app.track(&event("u", n)).await.assert_success(false);
    }
    // Retrying, saying why, with the backlog waiting.
    let d = wait_retrying(&app, "hook").await;
    assert_eq!(
        d["last_error"],
        "the receiver refused the connection or could not be reached"
    );
    assert_eq!(d["backlog"], 20);
    assert_eq!(d["delivered"], 0);
    let receiver = Receiver::start_on(addr, vec![]).await;
    let d = wait_drained(&app, "hook", 0).await;
    assert_eq!(d["delivered"], 20, "{d}");
    assert_eq!(d["last_error"], Value::Null);
    assert_eq!(receiver.delivered_items().len(), 20);
}

#[tokio::test]
async fn filters_pause_resume_and_replay() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let receiver = Receiver::start(vec![]).await;
    add_webhook(
        &app,
        "signups",
        &receiver.url,
        json!({"events": ["Signed up"], "only": "events"}),
    )
    .await;
    let pause = act(&app, "signups", "pause").await;
    assert_eq!(pause.status, 200, "{}", pause.body);
    assert_eq!(pause.json()["state"], "paused");
    assert_eq!(pause.json()["paused_reason"], "paused by an operator");
    for (n, name) in ["Signed up", "Viewed", "signed_up"].iter().enumerate() {
        app.track(&json!({"identity": {"id": "a"}, "event_name": name, "data": {"n": n}}))
            .await
            .assert_success(false);
    }
    app.call(
        "PUT",
        "users/edit",
        &json!({"id": "a", "changes": {"x": 1}}),
    )
    .await
    .assert_success(false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.log().is_empty(), "paused: nothing sent");
    assert_eq!(destination(&app, "signups").await["backlog"], 4);
    assert_eq!(act(&app, "signups", "resume").await.status, 200);
    let d = wait_drained(&app, "signups", 0).await;
    assert_eq!(d["delivered"], 2, "{d}");
    let names: Vec<Value> = receiver
        .delivered_items()
        .iter()
        .map(|i| i["event"]["event_name"].clone())
        .collect();
    assert_eq!(names, vec![json!("Signed up"), json!("signed_up")]);

    // Replay from the start: the same items again, with the same ids.
    let first = receiver.delivered_items();
    let answer = act(&app, "signups", "replay?since=2000-01-01T00:00:00Z").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    receiver
        .wait_for(Duration::from_secs(20), "the replay", |log| {
            crate::receiver::delivered(log).len() == 4
        })
        .await;
    assert_eq!(receiver.delivered_items()[2..], first[..]);
    // A replay is a message of its own: receivers deduplicating on webhook-id keep it.
    let log = receiver.log();
    let ids: HashSet<&str> = log.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), log.len(), "{ids:?}");
}

#[tokio::test]
async fn the_destinations_api_checks_what_it_is_given() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    for (body, status, message) in [
        (
            json!({"kind": "webhook", "url": "http://x"}),
            400,
            "name: is required",
        ),
        (
            json!({"name": "a b", "kind": "webhook", "url": "http://x"}),
            400,
            "name: must be 1 to 64 letters, digits, '-' or '_'",
        ),
        (
            json!({"name": "a", "kind": "kafka"}),
            400,
            "kind: must be webhook, vero or nats",
        ),
        (
            json!({"name": "a", "kind": "webhook", "url": "ftp://x"}),
            400,
            "url: must be a http:// or https:// URL of at most 2048 bytes",
        ),
        (
            json!({"name": "a", "kind": "webhook", "url": "http://x", "batch": 5000}),
            400,
            "batch: must be an integer from 1 to 1000",
        ),
        (
            json!({"name": "a", "kind": "vero"}),
            400,
            "token: is required for a vero destination",
        ),
        (
            json!({"name": "a", "kind": "webhook", "url": "http://x", "secret": "mine"}),
            400,
            "secret: is not a destination setting",
        ),
    ] {
        post_destination(&app, &body)
            .await
            .assert_error(status, message);
    }
    let not_json = app
        .send(
            app.client
                .post(app.url("/api/v2/destinations"))
                .bearer_auth(&app.secret)
                .body("{nope"),
        )
        .await;
    assert_eq!(not_json.status, 400, "{}", not_json.body);
    // Read as strictly as every body: a duplicate key would silently choose what is
    // delivered; a NUL is refused everywhere.
    let raw = |body: &'static str| {
        app.send(
            app.client
                .post(app.url("/api/v2/destinations"))
                .bearer_auth(&app.secret)
                .body(body),
        )
    };
    raw(r#"{"name":"d","kind":"webhook","url":"http://x","only":"users","only":"events"}"#)
        .await
        .assert_error(400, "only: duplicate key");
    raw(r#"{"name":"d","kind":"webhook","url":"http://x","events":["x\u0000"]}"#)
        .await
        .assert_error(400, "events[0]: contains a NUL character (\\u0000)");
    // Any name an event may have can be filtered on: 254 characters, not bytes.
    let long = "ü".repeat(254);
    for (events, message) in [
        (
            json!(["Paid", "ü".repeat(255)]),
            "events[1]: longer than 254 characters",
        ),
        (json!(["  "]), "events[0]: is blank"),
        (json!([1]), "events[0]: must be a string"),
    ] {
        post_destination(
            &app,
            &json!({"name": "d", "kind": "webhook", "url": "http://x", "events": events}),
        )
        .await
        .assert_error(400, message);
    }
    assert!(
        app.read("/api/v2/destinations/d").await.status == 404,
        "nothing stored"
    );
    app.read("/api/v2/destinations?x=1")
        .await
        .assert_error(400, "x: unknown parameter (this route takes none)");
    add_webhook(
        &app,
        "long",
        "http://127.0.0.1:9/hook",
        json!({"events": [long]}),
    )
    .await;
    let removed = remove_destination(&app, "long").await;
    assert_eq!(removed.status, 200, "{}", removed.body);
    add_webhook(&app, "a", "http://127.0.0.1:9/hook", json!({})).await;
    post_destination(
        &app,
        &json!({"name": "a", "kind": "webhook", "url": "http://x"}),
    )
    .await
    .assert_error(409, "destination a: already exists");
    app.read("/api/v2/destinations/nope")
        .await
        .assert_error(404, "destination nope: not found");
    act(&app, "nope", "pause")
        .await
        .assert_error(404, "destination nope: not found");
    act(&app, "a", "replay")
        .await
        .assert_error(400, "since: is required");
    act(&app, "a", "replay?since=yesterday").await.assert_error(
        400,
        "since: not an ISO 8601 time or Unix seconds (years 1 to 9999)",
    );
    // A tracking token is not a secret key; no key at all is 401.
    app.read_as(&app.token, "/api/v2/destinations")
        .await
        .assert_error(
            403,
            "authorization: a tracking token cannot read, use a secret key",
        );
    let answer = app
        .send(app.client.get(app.url("/api/v2/destinations")))
        .await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    // Another project does not see this one's destinations.
    let (_, other) = app.add_project("other").await;
    let theirs = app.read_as(&other, "/api/v2/destinations").await;
    assert_eq!(theirs.json(), json!({"destinations": []}));
    // The list never shows the secret.
    let list = app.read_json("/api/v2/destinations").await;
    assert_eq!(list["destinations"].as_array().map(Vec::len), Some(1));
    assert!(!list.to_string().contains("whsec_"), "{list}");
    let removed = remove_destination(&app, "a").await;
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert_eq!(removed.json(), json!({"name": "a", "removed": true}));
    app.read("/api/v2/destinations/a")
        .await
        .assert_error(404, "destination a: not found");
}

#[tokio::test]
async fn a_deleted_users_undelivered_items_are_not_sent_and_the_delete_is() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    // The first batch is processed but answered after the sender's 2 s timeout, so it is
    // sent again under its id (as under CI's load): what arrived is counted once per id.
    let receiver = Receiver::start(vec![Reply::Late(Duration::from_secs(3))]).await;
    add_webhook(&app, "hook", &receiver.url, json!({})).await;
    assert_eq!(act(&app, "hook", "pause").await.status, 200);
    app.call(
        "POST",
        "users/track",
        &json!({"id": "gone", "data": {"secret_marker": "forget-me-9c1e"}}),
    )
    .await
    .assert_success(false);
    for n in 0..5 {
        app.track(&json!({"identity": {"id": "gone"}, "event_name": "e",
                          "data": {"marker": format!("gone-event-{n}-9c1e")}}))
            .await
            .assert_success(false);
        app.track(&event("stays", n)).await.assert_success(false);
    }
    app.call("POST", "users/delete", &json!({"id": "gone"}))
        .await
        .assert_success(false);
    assert_eq!(act(&app, "hook", "resume").await.status, 200);
    wait_drained(&app, "hook", 0).await;
    let log = receiver.log();
    assert!(
        log.len() >= 2 && log[1].id == log[0].id && log[1].raw == log[0].raw,
        "the late batch was sent again as it was: {:?}",
        log.iter().map(|r| (&r.id, r.status)).collect::<Vec<_>>()
    );
    let items = receiver.delivered_items();
    let text = serde_json::to_string(&items).expect("json");
    assert!(
        !text.contains("9c1e"),
        "a deleted user's data was sent: {text}"
    );
    let kinds: Vec<&str> = items.iter().filter_map(|i| i["type"].as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "event").count(), 5);
    assert_eq!(kinds.last(), Some(&"user.delete"));
    assert_eq!(items.last().expect("items")["user"], json!({"id": "gone"}));
}

#[tokio::test]
async fn a_failure_is_described_without_the_receivers_url() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    // A receiver that reads the request and hangs up without an answer.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = vec![0u8; 4096];
            let _ = stream.read(&mut buf).await;
        }
    });
    // The URL holds a credential, as webhook URLs (and Vero's) often do.
    let url = format!("http://{addr}/hook?key=s3cr3t-in-url");
    add_webhook(&app, "hook", &url, json!({})).await;
    app.track(&event("u", 1)).await.assert_success(false);
    let d = wait_retrying(&app, "hook").await;
    let error = d["last_error"].as_str().expect("an error");
    assert!(error.starts_with("the request failed: "), "{error}");
    assert!(
        !error.contains("s3cr3t"),
        "the URL's credential is shown: {error}"
    );
    assert!(!app.metrics().await.contains("s3cr3t"));
}

#[tokio::test]
async fn a_user_deleted_while_its_batch_is_retried_is_not_sent_when_it_goes_through() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let receiver = Receiver::start(vec![Reply::Status(503, "down"); 8]).await;
    add_webhook(&app, "hook", &receiver.url, json!({})).await;
    // One batch of all six events.
    assert_eq!(act(&app, "hook", "pause").await.status, 200);
    for n in 0..3 {
        app.track(&json!({"identity": {"id": "gone"}, "event_name": "e",
                          "data": {"marker": "deleted-while-retried-77", "n": n}}))
            .await
            .assert_success(false);
        app.track(&event("stays", n)).await.assert_success(false);
    }
    assert_eq!(act(&app, "hook", "resume").await.status, 200);
    receiver
        .wait_for(Duration::from_secs(10), "a first refusal", |log| {
            !log.is_empty()
        })
        .await;
    assert_eq!(receiver.log()[0].items().len(), 6);
    app.call("POST", "users/delete", &json!({"id": "gone"}))
        .await
        .assert_success(false);
    let d = wait_drained(&app, "hook", 0).await;
    assert_eq!(d["last_error"], Value::Null);
    let log = receiver.log();
    // The batch that was refused went through under its id, without the deleted user.
    let sent = log.iter().find(|r| r.status == 200).expect("acknowledged");
    assert_eq!(sent.id, log[0].id, "the same batch, the same id");
    let text = String::from_utf8_lossy(&sent.raw);
    assert!(!text.contains("deleted-while-retried-77"), "{text}");
    assert_eq!(
        receiver
            .delivered_items()
            .iter()
            .filter(|i| i["type"] == "event")
            .count(),
        3
    );
    assert!(receiver
        .delivered_items()
        .iter()
        .any(|i| i["type"] == "user.delete"));
}
