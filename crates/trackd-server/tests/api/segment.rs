//! The Segment-compatible API (`/v1/*`, DESIGN §9): each call read back through the read
//! API as the Vero model, write keys, messageId idempotency (across restarts too), batches
//! that keep their valid calls, Segment's timestamps.

use serde_json::{json, Value};

use crate::helpers::{Answer, TestApp, TestConfig};

impl TestApp {
    /// POSTs a `/v1` call with the tracking token as the HTTP Basic user name.
    pub async fn v1(&self, route: &str, body: &Value) -> Answer {
        self.v1_as(&self.token, route, body).await
    }

    /// POSTs a `/v1` call with `key` as the HTTP Basic user name.
    pub async fn v1_as(&self, key: &str, route: &str, body: &Value) -> Answer {
        let url = self.url(&format!("/v1/{route}"));
        self.send(
            self.client
                .post(url)
                .basic_auth(key, Some(""))
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    /// The events of user `id`, newest first, through the read API.
    pub async fn user_events(&self, id: &str) -> Vec<Value> {
        let page = self
            .read_json(&format!("/api/v2/users/{id}/events?limit=1000"))
            .await;
        page["events"].as_array().expect("events").clone()
    }
}

impl Answer {
    /// Asserts `{"success":true}` and whether it was a duplicate.
    #[track_caller]
    pub fn assert_v1_success(&self, duplicate: bool) {
        assert_eq!(self.status, 200, "body: {}", self.body);
        assert_eq!(self.body, r#"{"success":true}"#);
        assert_eq!(
            self.headers.get("trackd-duplicate").is_some(),
            duplicate,
            "trackd-duplicate header"
        );
    }
}

/// The fields of an event the read API gives that a test controls.
fn shape(e: &Value) -> Value {
    json!({
        "user": e["user"],
        "event_name": e["event_name"],
        "event_key": e["event_key"],
        "data": e["data"],
        "source": e["source"],
        "created_at": e["created_at"],
        "received_at": e["received_at"],
    })
}

#[tokio::test]
async fn every_call_becomes_the_vero_model() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let lib = json!({"library": {"name": "analytics-python", "version": "2.3.3"}});
    app.v1(
        "identify",
        &json!({"userId": "u1", "anonymousId": "a1", "messageId": "m-1", "context": lib,
                "traits": {"email": "ann@example.com", "phone": "+4412", "plan": "pro"}}),
    )
    .await
    .assert_v1_success(false);
    app.v1(
        "track",
        &json!({"userId": "u1", "event": "Order Completed", "messageId": "m-2",
                "properties": {"order_id": "o-1", "total": 42.5}, "context": lib,
                "timestamp": "2026-11-26T11:00:00+01:00"}),
    )
    .await
    .assert_v1_success(false);
    app.v1(
        "page",
        &json!({"userId": "u1", "name": "Pricing", "category": "Docs", "messageId": "m-3",
                "properties": {"path": "/pricing"}}),
    )
    .await
    .assert_v1_success(false);
    app.v1(
        "screen",
        &json!({"userId": "u1", "name": "Home", "messageId": "m-4"}),
    )
    .await
    .assert_v1_success(false);
    app.v1(
        "group",
        &json!({"userId": "u1", "groupId": "acme", "traits": {"name": "Acme Inc"},
                "messageId": "m-5"}),
    )
    .await
    .assert_v1_success(false);
    // An anonymous visitor's event, then the alias that makes them a known user.
    app.v1(
        "track",
        &json!({"anonymousId": "anon-9", "event": "Viewed Ad", "messageId": "m-6"}),
    )
    .await
    .assert_v1_success(false);
    app.v1(
        "alias",
        &json!({"previousId": "anon-9", "userId": "u2", "messageId": "m-7"}),
    )
    .await
    .assert_v1_success(false);

    let profile = app.profile("u1").await.expect("u1");
    assert_eq!(profile["email"], "ann@example.com");
    assert_eq!(profile["phone_number"], "+4412");
    assert_eq!(
        profile["properties"],
        json!({"email": "ann@example.com", "phone": "+4412", "plan": "pro",
               "group": {"id": "acme", "traits": {"name": "Acme Inc"}}})
    );
    assert_eq!(profile["event_count"], 3);
    let received = "2026-11-26T12:00:00.000000Z";
    let user = json!({"id": "u1", "email": "ann@example.com"});
    let events: Vec<Value> = app.user_events("u1").await.iter().map(shape).collect();
    assert_eq!(
        events,
        vec![
            json!({"user": user, "event_name": "Viewed Home Screen",
                   "event_key": "viewed_home_screen", "data": {}, "source": null,
                   "created_at": received, "received_at": received}),
            json!({"user": user, "event_name": "Viewed Pricing Page",
                   "event_key": "viewed_pricing_page",
                   "data": {"path": "/pricing", "category": "Docs"}, "source": null,
                   "created_at": received, "received_at": received}),
            json!({"user": user, "event_name": "Order Completed",
                   "event_key": "order_completed",
                   "data": {"order_id": "o-1", "total": 42.5}, "source": "analytics-python",
                   "created_at": "2026-11-26T10:00:00.000000Z", "received_at": received}),
        ]
    );
    // The anonymous visitor is now u2, with their event.
    assert!(app.profile("anon-9").await.is_none());
    let u2 = app.user_events("u2").await;
    assert_eq!(u2.len(), 1);
    assert_eq!(u2[0]["event_name"], "Viewed Ad");
    // Counted like any event; nothing was a duplicate.
    assert_eq!(app.totals().await, (4, 0));
}

#[tokio::test]
async fn the_write_key_comes_from_basic_auth_the_body_or_bearer() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let call = json!({"userId": "k", "event": "E"});
    app.v1("track", &call).await.assert_v1_success(false);
    let mut in_body = call.clone();
    in_body["writeKey"] = json!(app.token);
    let url = app.url("/v1/track");
    app.send(app.client.post(&url).body(in_body.to_string()))
        .await
        .assert_v1_success(false);
    app.send(
        app.client
            .post(&url)
            .bearer_auth(&app.token)
            .body(call.to_string()),
    )
    .await
    .assert_v1_success(false);
    assert_eq!(app.user_events("k").await.len(), 3);

    app.send(app.client.post(&url).body(call.to_string()))
        .await
        .assert_error(
            401,
            "writeKey: missing (send it as the HTTP Basic user name with an empty password, \
             or as writeKey in the body)",
        );
    app.v1_as("wk_nobody", "track", &call)
        .await
        .assert_error(401, "authorization: unknown credential");
    app.v1_as(&app.secret.clone(), "track", &call)
        .await
        .assert_error(
            403,
            "authorization: a secret key is not accepted here, use a tracking token",
        );
    app.send(
        app.client
            .post(&url)
            .header("authorization", "Basic !!!")
            .body(call.to_string()),
    )
    .await
    .assert_error(
        401,
        "authorization: must be Basic <base64 of writeKey:> (or Bearer <writeKey>)",
    );
    let mut bad = call.clone();
    bad["writeKey"] = json!(7);
    app.send(app.client.post(&url).body(bad.to_string()))
        .await
        .assert_error(400, "writeKey: must be a string");
    assert_eq!(app.user_events("k").await.len(), 3, "nothing more stored");
}

#[tokio::test]
async fn a_message_id_is_stored_once_and_content_dedup_does_not_apply() {
    crate::skip_without_postgres!();
    let mut app = TestApp::spawn().await;
    let call = json!({"userId": "m", "event": "Added to cart", "messageId": "msg-1",
                      "properties": {"sku": "A"}});
    app.v1("track", &call).await.assert_v1_success(false);
    app.v1("track", &call).await.assert_v1_success(true);
    // The same content under another messageId is another event (Vero's dedup is off).
    let mut other = call.clone();
    other["messageId"] = json!("msg-2");
    app.v1("track", &other).await.assert_v1_success(false);
    // A retry in a batch, and a messageId repeated inside one batch, count once.
    let batch = json!({"batch": [
        {"type": "track", "userId": "m", "event": "Added to cart", "messageId": "msg-1"},
        {"type": "track", "userId": "m", "event": "Checkout", "messageId": "msg-3"},
        {"type": "track", "userId": "m", "event": "Checkout", "messageId": "msg-3"},
        {"type": "identify", "userId": "m", "traits": {"plan": "a"}, "messageId": "msg-4"},
        {"type": "identify", "userId": "m", "traits": {"plan": "b"}, "messageId": "msg-4"},
    ]});
    app.v1("batch", &batch).await.assert_v1_success(false);
    assert_eq!(app.user_events("m").await.len(), 3);
    assert_eq!(
        app.profile("m").await.expect("m")["properties"],
        json!({"plan": "a"})
    );
    // The window survives a restart.
    app.restart().await;
    app.v1("track", &call).await.assert_v1_success(true);
    app.clock.advance_secs(86_399);
    app.v1("track", &other).await.assert_v1_success(true);
    assert_eq!(app.user_events("m").await.len(), 3);
    // A day later the messageId is new again.
    app.clock.advance_secs(1);
    app.v1("track", &call).await.assert_v1_success(false);
    assert_eq!(app.user_events("m").await.len(), 4);
    assert_eq!(app.totals().await, (4, 5));
}

#[tokio::test]
async fn a_refused_call_does_not_use_up_its_message_id() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let alias = json!({"previousId": "anon", "userId": "known", "messageId": "al-1"});
    app.v1("alias", &alias)
        .await
        .assert_error(404, "previousId: no such user");
    let group = json!({"userId": "anon", "groupId": "g", "messageId": "gr-1"});
    app.v1("group", &group)
        .await
        .assert_error(404, "userId: no such user");
    app.v1("track", &json!({"anonymousId": "anon", "event": "Visit"}))
        .await
        .assert_v1_success(false);
    // The same messageIds now succeed: the refusals recorded nothing.
    app.v1("group", &group).await.assert_v1_success(false);
    app.v1("alias", &alias).await.assert_v1_success(false);
    let profile = app.profile("known").await.expect("known");
    assert_eq!(
        profile["properties"]["group"],
        json!({"id": "g", "traits": {}})
    );
    app.v1("alias", &alias).await.assert_v1_success(true);
    // The two refusals were counted, by the field they named.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let stats = app.read_json("/api/v2/stats/events").await;
        if stats["totals"]["rejected"] == json!({"previousId": 1, "userId": 1}) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{stats}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_batch_stores_its_valid_calls_and_names_the_bad_ones() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let batch = json!({"batch": [
        {"type": "track", "userId": "b", "event": "First", "messageId": "b-1"},
        {"type": "track", "userId": "b", "messageId": "b-2"},
        {"type": "alias", "previousId": "ghost", "userId": "b2", "messageId": "b-3"},
        "not a call",
        {"type": "identify", "userId": "b", "traits": {"email": "not-an-email"}},
        {"type": "fly", "userId": "b"},
        {"type": "page", "userId": "b", "name": "Home", "messageId": "b-4"},
    ]});
    let answer = app.v1("batch", &batch).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.json(),
        json!({"success": true, "rejected": [
            {"index": 1, "message": "batch[1].event: is required"},
            {"index": 2, "message": "batch[2].previousId: no such user"},
            {"index": 3, "message": "batch[3]: must be an object"},
            {"index": 4, "message": "batch[4].traits.email: not a valid email address"},
            {"index": 5, "message":
                "batch[5].type: must be one of track, identify, page, screen, group, alias"},
        ]})
    );
    let names: Vec<Value> = app
        .user_events("b")
        .await
        .iter()
        .map(|e| e["event_name"].clone())
        .collect();
    assert_eq!(names, vec![json!("Viewed Home Page"), json!("First")]);
    let stats = app.read_json("/api/v2/stats/events").await;
    assert_eq!(stats["totals"]["accepted"], 2);
    // Every refused call is counted as rejected, by the field it names (the rejections
    // reach the store's totals in the background).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let stats = app.read_json("/api/v2/stats/events").await;
        let rejected = &stats["totals"]["rejected"];
        if rejected == &json!({"event": 1, "previousId": 1, "batch": 1, "traits": 1, "type": 1}) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{rejected}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The rejected calls' messageIds are free: b-2 and b-3 are stored once fixed.
    let fixed = json!({"batch": [
        {"type": "track", "userId": "b", "event": "Second", "messageId": "b-2"},
        {"type": "track", "userId": "b", "event": "First", "messageId": "b-1"},
    ]});
    app.v1("batch", &fixed).await.assert_v1_success(false);
    assert_eq!(app.user_events("b").await.len(), 3);
}

/// A batch item that the strict JSON reading refuses (a lone surrogate, a duplicate key, a
/// NUL, nesting too deep) is refused alone, like any other bad item (DESIGN §9: "one bad
/// item must not lose the others"); the same problem outside the items refuses the body.
#[tokio::test]
async fn a_batch_item_the_json_reading_refuses_is_refused_alone() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let deep = format!("{}1{}", "[".repeat(70), "]".repeat(70));
    let body = format!(
        r#"{{"batch":[
          {{"type":"track","userId":"j","event":"Good","messageId":"j-1"}},
          {{"type":"track","userId":"j","event":"Bad","messageId":"j-2","properties":{{"name":"\ud83d"}}}},
          {{"type":"track","userId":"j","event":"Bad","properties":{{"k":1,"k":2}}}},
          {{"type":"track","userId":"j","event":"Bad","properties":{{"s":"a\u0000"}}}},
          {{"type":"track","userId":"j","event":"Bad","properties":{{"d":{deep}}}}},
          {{"type":"track","userId":"j","event":"Also good","messageId":"j-3","properties":{{"e":"\ud83d\ude00"}}}}
        ]}}"#
    );
    let send = |body: String| {
        app.send(
            app.client
                .post(app.url("/v1/batch"))
                .basic_auth(&app.token, Some(""))
                .header("content-type", "application/json")
                .body(body),
        )
    };
    let answer = send(body).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.json(),
        json!({"success": true, "rejected": [
            {"index": 1, "message": "batch[1].properties.name: contains a lone surrogate"},
            {"index": 2, "message": "batch[2].properties.k: duplicate key"},
            {"index": 3, "message": "batch[3].properties.s: contains a NUL character (\\u0000)"},
            {"index": 4, "message": format!(
                "batch[4].properties.d{}: nested deeper than 64 levels", "[0]".repeat(60))},
        ]})
    );
    let events = app.user_events("j").await;
    let stored: Vec<(Value, Value)> = events
        .iter()
        .map(|e| (e["event_name"].clone(), e["data"].clone()))
        .collect();
    assert_eq!(
        stored,
        vec![
            (json!("Also good"), json!({"e": "\u{1f600}"})),
            (json!("Good"), json!({})),
        ]
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let stats = app.read_json("/api/v2/stats/events").await;
        if stats["totals"]["rejected"] == json!({"properties": 4}) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{stats}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The refused item's messageId stays free: the corrected call is stored.
    let fixed = r#"{"batch":[{"type":"track","userId":"j","event":"Fixed","messageId":"j-2"}]}"#;
    send(fixed.to_owned()).await.assert_v1_success(false);
    assert_eq!(app.user_events("j").await.len(), 3);
    // Outside the items the same problems refuse the whole body, and nothing is stored.
    let envelope =
        r#"{"batch":[{"type":"track","userId":"k","event":"E"}],"context":{"a":1,"a":2}}"#;
    send(envelope.to_owned())
        .await
        .assert_error(400, "context.a: duplicate key");
    let twice = r#"{"batch":[{"type":"track","userId":"k","event":"E"}],"batch":[]}"#;
    send(twice.to_owned())
        .await
        .assert_error(400, "batch: duplicate key");
    let broken = r#"{"batch":[{"type":"track","userId":"k","event":"E"},{"a":}]}"#;
    assert_eq!(send(broken.to_owned()).await.status, 400);
    assert!(app.profile("k").await.is_none(), "nothing stored");
}

#[tokio::test]
async fn what_is_not_a_batch_is_refused_whole() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn_with(TestConfig {
        limits: trackd_server::api::Limits {
            max_batch_items: 3,
            max_batch_bytes: 2_000,
            ..Default::default()
        },
        ..TestConfig::default()
    })
    .await;
    let call = json!({"type": "track", "userId": "x", "event": "E"});
    app.v1("batch", &json!({"calls": [call]}))
        .await
        .assert_error(400, "batch: is required (an array of calls)");
    app.v1("batch", &json!({"batch": call}))
        .await
        .assert_error(400, "batch: must be an array of calls");
    app.v1("batch", &json!({"batch": [call, call, call, call]}))
        .await
        .assert_error(413, "batch: 4 calls, more than a batch may hold (3)");
    let big = json!({"batch": [{"type": "track", "userId": "x", "event": "E",
                                "properties": {"pad": "p".repeat(2_000)}}]});
    app.v1("import", &big)
        .await
        .assert_error(413, "body: larger than 2000 bytes");
    let url = app.url("/v1/batch");
    app.send(
        app.client
            .post(&url)
            .basic_auth(&app.token, Some(""))
            .body("[1,2]"),
    )
    .await
    .assert_error(400, "body: must be a JSON object");
    app.send(app.client.get(&url))
        .await
        .assert_error(405, "/v1/batch: method not allowed, use POST");
    assert!(app.profile("x").await.is_none(), "nothing stored");
}

#[tokio::test]
async fn segment_timestamps_correct_the_device_clock() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    // Received at 12:00:00 by the server; the device thought it was 11:50 when it sent,
    // and 11:45 when the call happened: the call happened five minutes before receipt.
    let batch = json!({"sentAt": "2026-11-26T11:50:00Z", "batch": [
        {"type": "track", "userId": "t", "event": "Skewed",
         "originalTimestamp": "2026-11-26T11:45:00Z"},
        {"type": "track", "userId": "t", "event": "Own sentAt",
         "originalTimestamp": "2026-11-26T11:45:00Z", "sentAt": "2026-11-26T11:46:00Z"},
        {"type": "track", "userId": "t", "event": "Timestamp wins",
         "timestamp": "2026-11-20T08:00:00.250Z",
         "originalTimestamp": "2026-11-26T11:45:00Z"},
    ]});
    app.v1("batch", &batch).await.assert_v1_success(false);
    let times: Vec<(Value, Value)> = app
        .user_events("t")
        .await
        .iter()
        .map(|e| (e["event_name"].clone(), e["created_at"].clone()))
        .collect();
    let mut times = times;
    times.sort_by_key(|(n, _)| n.to_string());
    assert_eq!(
        times,
        vec![
            (json!("Own sentAt"), json!("2026-11-26T11:59:00.000000Z")),
            (json!("Skewed"), json!("2026-11-26T11:55:00.000000Z")),
            (
                json!("Timestamp wins"),
                json!("2026-11-20T08:00:00.250000Z")
            ),
        ]
    );
    app.v1(
        "track",
        &json!({"userId": "t", "event": "E", "originalTimestamp": "soon"}),
    )
    .await
    .assert_error(
        400,
        "originalTimestamp: not an ISO 8601 time between years 1 and 9999",
    );
}

#[tokio::test]
async fn browsers_get_cors_on_v1() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let answer = app
        .send(
            app.client
                .request(reqwest::Method::OPTIONS, app.url("/v1/batch"))
                .header("origin", "https://shop.example")
                .header("access-control-request-method", "POST")
                // RudderStack's browser SDK (v3) sends an AnonymousId header of its own.
                .header(
                    "access-control-request-headers",
                    "content-type, authorization, anonymousid",
                ),
        )
        .await;
    assert!(answer.status < 300, "{}", answer.status);
    assert_eq!(
        answer
            .headers
            .get("access-control-allow-origin")
            .expect("present"),
        "*"
    );
    let allowed = answer
        .headers
        .get("access-control-allow-headers")
        .expect("present")
        .to_str()
        .expect("present")
        .to_ascii_lowercase();
    for header in ["authorization", "content-type", "anonymousid"] {
        assert!(allowed.contains(header), "{allowed}");
    }
    // sendBeacon's text/plain body is read as JSON.
    let answer = app
        .send(
            app.client
                .post(app.url("/v1/track"))
                .header("origin", "https://shop.example")
                .header("content-type", "text/plain;charset=UTF-8")
                .body(json!({"writeKey": app.token, "userId": "c", "event": "E"}).to_string()),
        )
        .await;
    answer.assert_v1_success(false);
    assert_eq!(
        answer
            .headers
            .get("access-control-allow-origin")
            .expect("present"),
        "*"
    );
}

#[tokio::test]
async fn gzip_batches_are_read() {
    crate::skip_without_postgres!();
    use std::io::Write;
    let app = TestApp::spawn().await;
    let body = json!({"batch": (0..200).map(|i| json!({"type": "track", "userId": "g",
        "event": "E", "messageId": format!("g-{i}"), "properties": {"i": i}}))
        .collect::<Vec<_>>()});
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.to_string().as_bytes()).expect("present");
    let answer = app
        .send(
            app.client
                .post(app.url("/v1/batch"))
                .basic_auth(&app.token, Some(""))
                .header("content-encoding", "gzip")
                .body(gz.finish().expect("present")),
        )
        .await;
    answer.assert_v1_success(false);
    assert_eq!(app.user_events("g").await.len(), 200);
}

#[tokio::test]
async fn a_message_id_survives_kill_9() {
    if crate::helpers::postgres() {
        return; // a process of its own on a data dir: the SQLite store (nodes.rs has PostgreSQL's)
    }
    let dir = tempfile::tempdir().expect("dir");
    let mut server = crate::helpers::ChildServer::spawn(dir.path(), &[]);
    let token = server.printed("tracking token:");
    let client = reqwest::Client::new();
    let send = |addr: String, id: &'static str| {
        let client = client.clone();
        let token = token.clone();
        async move {
            let answer = client
                .post(format!("{addr}/v1/batch"))
                .basic_auth(&token, Some(""))
                .body(
                    json!({"batch": [{"type": "track", "userId": "k9", "event": "E",
                                      "messageId": id}]})
                    .to_string(),
                )
                .send()
                .await
                .expect("sent");
            assert_eq!(answer.status(), 200);
        }
    };
    send(server.addr.clone(), "before-crash").await;
    server.kill9();
    let server = crate::helpers::ChildServer::spawn(dir.path(), &[]);
    send(server.addr.clone(), "before-crash").await;
    send(server.addr.clone(), "after-crash").await;
    let db = rusqlite::Connection::open(dir.path().join("trackd.db")).expect("db");
    let events: i64 = db
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .expect("count");
    assert_eq!(events, 2, "the retry after the crash was a duplicate");
    drop(server);
}

#[tokio::test]
async fn destinations_get_v1_calls_as_they_get_vero_calls() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let receiver = crate::receiver::Receiver::start(vec![]).await;
    crate::delivery::add_webhook(&app, "hook", &receiver.url, json!({})).await;
    // The same profile and event, once per API, for two users.
    app.v1(
        "batch",
        &json!({"batch": [
            {"type": "identify", "userId": "twin", "traits": {"email": "t@example.com", "plan": "pro"}},
            {"type": "track", "userId": "twin", "event": "Paid", "properties": {"amount": 5},
             "timestamp": "2026-11-26T10:00:00Z"},
        ]}),
    )
    .await
    .assert_v1_success(false);
    app.call(
        "POST",
        "users/track",
        &json!({"id": "vero-twin", "email": "t@example.com", "data": {"email": "t@example.com", "plan": "pro"}}),
    )
    .await
    .assert_success(false);
    app.track(
        &json!({"identity": {"id": "vero-twin"}, "event_name": "Paid",
                      "data": {"amount": 5}, "extras": {"created_at": "2026-11-26T10:00:00Z"}}),
    )
    .await
    .assert_success(false);
    crate::delivery::wait_drained(&app, "hook", 0).await;
    let items = receiver.delivered_items();
    assert_eq!(items.len(), 4, "{items:?}");
    // Item ids and event ids differ; everything else is the same but the user.
    let normal = |item: &Value| {
        let mut item = item.clone();
        if let Some(o) = item.as_object_mut() {
            o.remove("id");
            if let Some(Value::Object(e)) = o.get_mut("event") {
                e.remove("id");
            }
        }
        item.to_string().replace("vero-twin", "twin")
    };
    println!("{}\n{}", normal(&items[0]), normal(&items[1]));
    assert_eq!(normal(&items[0]), normal(&items[2]));
    assert_eq!(normal(&items[1]), normal(&items[3]));
}
