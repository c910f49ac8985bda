//! The read API: secret-key auth, every route, filters, cursor walks, export, statistics,
//! and tenant isolation.

use serde_json::{json, Value};

use crate::helpers::{event, TestApp, START};

/// An event of `user` named `name` at `START + secs`.
fn at(user: &str, name: &str, secs: i64, n: i64) -> Value {
    json!({"identity": {"id": user}, "event_name": name, "data": {"n": n},
           "extras": {"created_at": (START.as_micros() / 1_000_000) + secs}})
}

fn ids(page: &Value) -> Vec<i64> {
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["data"]["n"].as_i64().expect("n"))
        .collect()
}

#[tokio::test]
async fn read_routes_need_a_secret_key_in_the_authorization_header() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let routes = [
        "/api/v2/users/42",
        "/api/v2/users/42/events",
        "/api/v2/events",
        "/api/v2/events/export",
        "/api/v2/stats/events",
    ];
    for route in routes {
        app.send(app.client.get(app.url(route))).await.assert_error(
            401,
            "authorization: missing (send Authorization: Bearer <secret key>)",
        );
        app.read_as("sk_nope", route)
            .await
            .assert_error(401, "authorization: unknown credential");
        app.read_as(&app.token, route).await.assert_error(
            403,
            "authorization: a tracking token cannot read, use a secret key",
        );
        // Even with the right header, a secret key in the URL is refused: it leaked.
        app.read(&format!("{route}?key={}", app.secret))
            .await
            .assert_error(
            400,
            "key: a secret key must never be sent in a query string (revoke it: URLs are logged)",
        );
    }
}

#[tokio::test]
async fn read_routes_send_no_cors_headers() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    app.track(&crate::helpers::event("u", 1))
        .await
        .assert_success(false);
    for (method, path) in [
        ("GET", "/api/v2/users/u"),
        ("GET", "/api/v2/users/u/events"),
        ("GET", "/api/v2/events"),
        ("GET", "/api/v2/events/export"),
        ("POST", "/api/v2/events/import"),
        ("GET", "/api/v2/stats/events"),
    ] {
        let preflight = app
            .send(
                app.client
                    .request(reqwest::Method::OPTIONS, app.url(path))
                    .header("origin", "http://evil.example")
                    .header("access-control-request-method", method)
                    .header("access-control-request-headers", "authorization"),
            )
            .await;
        assert_eq!(preflight.status, 405, "{path}");
        assert!(
            preflight
                .headers
                .get("access-control-allow-origin")
                .is_none(),
            "{path}"
        );
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let answer = app
            .send(
                app.client
                    .request(m, app.url(path))
                    .bearer_auth(&app.secret)
                    .header("origin", "http://evil.example"),
            )
            .await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        assert!(
            answer.headers.get("access-control-allow-origin").is_none(),
            "{path}"
        );
    }
}

#[tokio::test]
async fn user_profile_has_every_field() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    app.call(
        "POST",
        "users/track",
        &json!({"id": "42", "email": "ann@example.com",
        "phone_number": "+15550100", "channels": [{"type": "push", "address": "D1"}],
        "data": {"plan": "pro", "big": 12345678901234567890123u128}}),
    )
    .await
    .assert_success(false);
    app.call(
        "PUT",
        "users/tags/edit",
        &json!({"id": "42", "add": ["vip"]}),
    )
    .await
    .assert_success(false);
    app.clock.advance_secs(60);
    app.track(&event("42", 1)).await.assert_success(false);
    app.track(&event("42", 2)).await.assert_success(false);
    let answer = app.read("/api/v2/users/42").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.json(),
        json!({"id": "42", "email": "42@example.com", "phone_number": "+15550100",
               "channels": [{"type": "push", "address": "D1"}],
               "properties": {"plan": "pro", "big": 12345678901234567890123u128},
               "tags": ["vip"], "subscribed": true,
               "first_seen": "2026-11-26T12:00:00.000000Z", "last_seen": "2026-11-26T12:01:00.000000Z",
               "created_at": "2026-11-26T12:00:00.000000Z", "updated_at": "2026-11-26T12:00:00.000000Z",
               "event_count": 2})
    );
    assert!(
        answer.body.contains("12345678901234567890123"),
        "digits kept: {}",
        answer.body
    );
    // A URL-encoded id.
    app.call("POST", "users/track", &json!({"id": "a/b c"}))
        .await
        .assert_success(false);
    assert_eq!(
        app.read("/api/v2/users/a%2Fb%20c").await.json()["id"],
        "a/b c"
    );
    app.read("/api/v2/users/nope")
        .await
        .assert_error(404, "id: no such user");
    app.read("/api/v2/users/42?x=1")
        .await
        .assert_error(400, "x: unknown parameter (this route takes none)");
}

#[tokio::test]
async fn a_users_timeline_is_newest_first_with_exact_event_shape() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    app.track(&json!({"identity": {"id": "42", "email": "ann@example.com"}, "event_name": "Viewed product",
                      "data": {"f": 1.50}, "extras": {"source": "web", "created_at": "2026-11-26T11:00:00Z"}}))
        .await
        .assert_success(false);
    app.track(&at("42", "Later", 10, 2))
        .await
        .assert_success(false);
    app.track(&at("other", "Later", 20, 3))
        .await
        .assert_success(false);
    let page = app.read("/api/v2/users/42/events").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let page = page.json();
    assert_eq!(page["next_cursor"], Value::Null);
    assert_eq!(page["events"].as_array().expect("events").len(), 2);
    assert_eq!(page["events"][0]["event_name"], "Later");
    assert_eq!(
        page["events"][1],
        json!({"id": 1, "user": {"id": "42", "email": "ann@example.com"}, "event_name": "Viewed product",
               "event_key": "viewed_product", "data": {"f": 1.50}, "source": "web",
               "created_at": "2026-11-26T11:00:00.000000Z", "received_at": "2026-11-26T12:00:00.000000Z"})
    );
    app.read("/api/v2/users/nope/events")
        .await
        .assert_error(404, "id: no such user");
}

#[tokio::test]
async fn events_filter_by_event_key_user_and_time() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    app.track(&at("a", "Purchased Item", 0, 1))
        .await
        .assert_success(false);
    app.track(&at("b", "purchased_item", 3600, 2))
        .await
        .assert_success(false);
    app.track(&at("a", "Viewed", 7200, 3))
        .await
        .assert_success(false);
    app.track(&at("b", "PURCHASED ITEM", 10800, 4))
        .await
        .assert_success(false);
    let q = |query: &str| app.read(format!("/api/v2/events{query}"));
    assert_eq!(ids(&q("").await.json()), vec![4, 3, 2, 1]);
    assert_eq!(
        ids(&q("?event_name=Purchased%20Item").await.json()),
        vec![4, 2, 1]
    );
    assert_eq!(
        ids(&q("?event_name=purchased_item&user_id=b").await.json()),
        vec![4, 2]
    );
    assert_eq!(ids(&q("?user_id=nobody").await.json()), Vec::<i64>::new());
    let start = START.as_micros() / 1_000_000;
    assert_eq!(
        ids(
            &q(&format!("?since={}&until={}", start + 3600, start + 10800))
                .await
                .json()
        ),
        vec![3, 2]
    );
    assert_eq!(
        ids(&q("?since=2026-11-26T13:00:00Z").await.json()),
        vec![4, 3, 2]
    );
    q("?limit=0")
        .await
        .assert_error(400, "limit: must be an integer from 1 to 1000");
    q("?since=soon").await.assert_error(
        400,
        "since: not an ISO 8601 time or Unix seconds (years 1 to 9999)",
    );
    q("?cursor=abc")
        .await
        .assert_error(400, "cursor: not a cursor this server handed out");
    q("?order=asc").await.assert_error(
        400,
        "order: unknown parameter (this route takes event_name, user_id, since, until, limit, cursor)",
    );
}

#[tokio::test]
async fn a_cursor_walk_returns_every_event_present_at_its_start_exactly_once() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    // Events with interleaved event times, several sharing one time.
    for n in 0..30 {
        app.track(&at("u", "e", (n * 7) % 11, n))
            .await
            .assert_success(false);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut extra = 100;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v2/users/u/events?limit=7&cursor={c}"),
            None => "/api/v2/users/u/events?limit=7".to_owned(),
        };
        let page = app.read(&path).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let page = page.json();
        seen.extend(ids(&page));
        // New events arrive during the walk, at times before, inside and after it.
        for secs in [-5, 5, 50] {
            app.track(&at("u", "e", secs, extra))
                .await
                .assert_success(false);
            extra += 1;
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..30).collect::<Vec<i64>>(),
        "every original event once, none added"
    );
    // And in order: event time descending, then id descending.
    let expected: Vec<i64> = {
        let mut v: Vec<i64> = (0..30).collect();
        v.sort_by_key(|&n| std::cmp::Reverse(((n * 7) % 11, n)));
        v
    };
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn export_streams_ndjson_oldest_first_by_receive_time() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    // Event times run backwards; receive times forwards.
    for n in 0..5 {
        app.track(&at("u", "e", 100 - n, n))
            .await
            .assert_success(false);
        app.clock.advance_secs(60);
    }
    let answer = app.read("/api/v2/events/export").await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/x-ndjson")
    );
    let lines: Vec<Value> = answer
        .body
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let order: Vec<i64> = lines
        .iter()
        .map(|l| l["data"]["n"].as_i64().expect("n"))
        .collect();
    assert_eq!(order, vec![0, 1, 2, 3, 4]);
    assert!(answer.body.ends_with('\n'));
    // since/until filter on receive time.
    let since = START.as_micros() / 1_000_000 + 60;
    let until = since + 120;
    let window = app
        .read(&format!(
            "/api/v2/events/export?since={since}&until={until}"
        ))
        .await;
    let order: Vec<i64> = window
        .body
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("json")["data"]["n"]
                .as_i64()
                .expect("n")
        })
        .collect();
    assert_eq!(order, vec![1, 2]);
    app.read("/api/v2/events/export?limit=5")
        .await
        .assert_error(
            400,
            "limit: unknown parameter (this route takes since, until)",
        );
}

#[tokio::test]
async fn a_large_export_is_complete() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    // More than one export chunk of the store (10,000 rows) and of the HTTP stream.
    let bodies: Vec<String> = (0..12_000)
        .map(|n| event(&format!("u{}", n % 50), n).to_string())
        .collect();
    for chunk in bodies.chunks(200) {
        let answers =
            futures::future::join_all(chunk.iter().map(|b| app.track_raw(b.clone()))).await;
        assert!(answers.iter().all(|a| a.status == 200));
    }
    let answer = app.read("/api/v2/events/export").await;
    let mut seen: Vec<i64> = answer
        .body
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("json")["data"]["n"]
                .as_i64()
                .expect("n")
        })
        .collect();
    assert_eq!(seen.len(), 12_000);
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 12_000);
}

#[tokio::test]
async fn stats_count_by_bucket_and_totals_survive_a_restart() {
    crate::skip_without_postgres!();
    let mut app = TestApp::spawn().await;
    app.track(&at("u", "Purchased Item", 0, 1))
        .await
        .assert_success(false);
    app.track(&at("u", "purchased_item", 60, 2))
        .await
        .assert_success(false);
    app.track(&at("u", "Viewed", 3600, 3))
        .await
        .assert_success(false);
    app.track(&at("u", "Viewed", 3600, 3))
        .await
        .assert_success(true);
    app.track(&json!({"identity": {"email": "bad"}, "event_name": "x"}))
        .await
        .assert_error(400, "identity.email: not a valid email address");
    app.track(&json!({"identity": {"id": "u"}}))
        .await
        .assert_error(400, "event_name: is required");
    app.restart().await;
    let stats = app.read("/api/v2/stats/events?interval=hour").await;
    assert_eq!(stats.status, 200, "{}", stats.body);
    assert_eq!(
        stats.json(),
        json!({"buckets": [
                {"start": "2026-11-26T12:00:00.000000Z", "counts": {"purchased_item": 2}},
                {"start": "2026-11-26T13:00:00.000000Z", "counts": {"viewed": 1}}],
               "totals": {"accepted": 3, "duplicates": 1, "rejected": {"identity": 1, "event_name": 1}}})
    );
    let day = app
        .read("/api/v2/stats/events?interval=day&since=2026-11-26T13:00:00Z")
        .await
        .json();
    assert_eq!(
        day["buckets"],
        json!([{"start": "2026-11-26T00:00:00.000000Z", "counts": {"viewed": 1}}])
    );
    app.read("/api/v2/stats/events?interval=week")
        .await
        .assert_error(400, "interval: must be hour or day");
}

#[tokio::test]
async fn nothing_crosses_projects_on_any_read_route() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let (other_token, other_secret) = app.add_project("other").await;
    app.track(&at("42", "Mine", 0, 1))
        .await
        .assert_success(false);
    app.track_as(&other_token, &at("42", "Theirs", 0, 2))
        .await
        .assert_success(false);
    app.track_as(&other_token, &at("only-theirs", "Theirs", 0, 3))
        .await
        .assert_success(false);
    for (key, name, n) in [(&app.secret, "Mine", 1), (&other_secret, "Theirs", 2)] {
        let events = app.read_as(key, "/api/v2/events").await.json();
        assert!(events["events"]
            .as_array()
            .expect("events")
            .iter()
            .all(|e| e["event_name"] == name));
        let timeline = app.read_as(key, "/api/v2/users/42/events").await.json();
        assert_eq!(ids(&timeline), vec![n]);
        assert_eq!(
            app.read_as(key, "/api/v2/users/42").await.json()["event_count"],
            1
        );
        let export = app.read_as(key, "/api/v2/events/export").await.body;
        assert!(export.lines().all(|l| l.contains(name)), "{export}");
        let stats = app.read_as(key, "/api/v2/stats/events").await.json();
        assert_eq!(
            stats["buckets"][0]["counts"]
                .as_object()
                .expect("counts")
                .len(),
            1
        );
    }
    app.read("/api/v2/users/only-theirs")
        .await
        .assert_error(404, "id: no such user");
    app.read("/api/v2/users/only-theirs/events")
        .await
        .assert_error(404, "id: no such user");
    assert_eq!(
        ids(&app.read("/api/v2/events?user_id=only-theirs").await.json()),
        Vec::<i64>::new()
    );
    assert_eq!(
        app.read("/api/v2/stats/events").await.json()["totals"]["accepted"],
        1
    );
}

#[tokio::test]
async fn a_user_is_found_by_email_as_well_as_by_id() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    app.track(&crate::helpers::event("u-77", 1))
        .await
        .assert_success(false);
    let by_id = app.read("/api/v2/users/u-77").await;
    assert_eq!(by_id.status, 200, "{}", by_id.body);
    let by_email = app.read("/api/v2/users/u-77%40example.com").await;
    assert_eq!(by_email.status, 200, "{}", by_email.body);
    assert_eq!(by_email.json()["id"], "u-77");
    let events = app.read("/api/v2/users/u-77@example.com/events").await;
    assert_eq!(events.json()["events"].as_array().map(Vec::len), Some(1));
    app.read("/api/v2/users/nobody@example.com")
        .await
        .assert_error(404, "id: no such user");
}
