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

/// The refusal of a secret key found in a query string (under whatever name).
fn key_in_query(field: &str) -> String {
    format!(
        "{field}: a secret key must never be sent in a query string (revoke it: URLs are logged)"
    )
}

/// A value shaped like a generated secret key (`sk_` and 32 letters and digits) that no
/// project has.
fn unknown_key(n: usize) -> String {
    format!("sk_{:0>32}", format!("Unknown{n}"))
}

#[tokio::test]
async fn a_secret_key_in_any_query_parameter_of_any_route_is_refused_without_echoing_it() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let k = app.secret.clone();
    let t = app.token.clone();
    let body = event("u", 1).to_string();
    // Beside a valid tracking token, under names a client might use: nothing is stored.
    for (query, field) in [
        (format!("auth_token={t}&key={k}"), "key"),
        (format!("auth_token={t}&api_key={k}"), "api_key"),
        (format!("auth_token={t}&note=Bearer%20{k}"), "note"),
        (format!("auth_token={t}&x=sk%5F{}", &k[3..]), "x"),
        (format!("auth_token={t}&{k}"), "query"),
        (format!("auth_token={t}&{k}=1"), "query"),
    ] {
        let url = app.url(&format!("/api/v2/events/track?{query}"));
        let answer = app.send(app.client.post(url).body(body.clone())).await;
        answer.assert_error(400, &key_in_query(field));
        assert!(!answer.body.contains(&k[3..]), "{}", answer.body);
    }
    assert_eq!(app.count("events"), 0);
    // Every route, probes and unknown paths too (the key leaked whatever it reached), with
    // a key that is valid and one that no project has: the shape is enough.
    for key in [k.clone(), unknown_key(1)] {
        for path in [
            "/api/v2/heartbeat",
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
            "/ui",
            "/ui/app.js",
            "/",
            "/api/v2/users/track",
            "/no/such/route",
        ] {
            let answer = app
                .send(app.client.get(app.url(&format!("{path}?k={key}"))))
                .await;
            answer.assert_error(400, &key_in_query("k"));
            assert!(!answer.body.contains(&key[3..]), "{path}: {}", answer.body);
        }
    }
    // The read API, with the right header: the key as a bare parameter is not echoed back.
    let answer = app.read(&format!("/api/v2/events?{k}")).await;
    answer.assert_error(400, &key_in_query("query"));
    assert!(!answer.body.contains(&k[3..]), "{}", answer.body);
    // What only looks alike is not refused.
    app.send(
        app.client
            .get(app.url(&format!("/healthz?x=sk_short&y=task_{}", &k[3..]))),
    )
    .await
    .assert_success(false);
    assert_eq!(app.read("/api/v2/events?user_id=sk_x").await.status, 200);
}

#[tokio::test]
async fn query_values_are_never_looked_up_as_candidate_keys() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    // A thousand guesses in one request, the real key last: the answer is the same as
    // without it, naming the first key-shaped parameter, so it tells nothing.
    let guesses: Vec<String> = (0..1000)
        .map(|n| format!("c{n}={}", unknown_key(n)))
        .collect();
    let without = format!("/api/v2/events?{}", guesses.join("&"));
    let with = format!("{without}&c1000={}", app.secret);
    for path in [&without, &with] {
        app.read_as("sk_nope", path)
            .await
            .assert_error(400, &key_in_query("c0"));
    }
    // A secret key of another shape (the store takes any token) in a parameter the route
    // does not define is not looked up: it is an unknown parameter like any other.
    let store = app.store.as_ref().expect("running");
    let project = store.project("test").await.expect("project");
    let odd = trackd_core::Token::import("odd-secret-key").expect("token");
    store
        .add_credential(project.id, trackd_core::CredentialKind::Secret, &odd)
        .await
        .expect("added");
    app.read("/api/v2/events?x=odd-secret-key")
        .await
        .assert_error(
        400,
        "x: unknown parameter (this route takes event_name, user_id, since, until, limit, cursor)",
    );
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
    q("?cursor=abc").await.assert_error(400, FOREIGN_CURSOR);
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
               "totals": {"accepted": 3, "duplicates": 1, "suppressed": 0,
                          "rejected": {"identity": 1, "event_name": 1}}})
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

/// The refusal of a cursor that was not handed out for this query.
const FOREIGN_CURSOR: &str = "cursor: not a cursor this server handed out for this query";

#[tokio::test]
async fn cursors_are_sealed_to_their_project_and_query() {
    crate::skip_without_postgres!();
    let mut app = TestApp::spawn().await;
    let (other_token, other_secret) = app.add_project("other").await;
    for n in 0..5 {
        app.track(&at("u", "e", n, n)).await.assert_success(false);
        app.track_as(&other_token, &at("u", "e", n, n))
            .await
            .assert_success(false);
    }
    let next = |page: crate::helpers::Answer| -> String {
        assert_eq!(page.status, 200, "{}", page.body);
        page.json()["next_cursor"]
            .as_str()
            .expect("a next page")
            .to_owned()
    };
    let mine = next(app.read("/api/v2/events?limit=2").await);
    let theirs = next(app.read_as(&other_secret, "/api/v2/events?limit=2").await);
    // A genuine cursor works, for its own project and query (`limit` may change).
    let page = app
        .read(&format!("/api/v2/events?limit=1&cursor={mine}"))
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(ids(&page.json()), vec![2]);
    // It shows nothing readable: not the ids and times it stands for.
    assert!(
        !mine
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-'),
        "{mine}"
    );
    // Forged in the old readable form, another project's, tampered with, or used with
    // other filters: 400, never a page.
    // base64url of "1.9223372036854775807.3.1000": (event time, id, newest id).
    let forged = "MS45MjIzMzcyMDM2ODU0Nzc1ODA3LjMuMTAwMA";
    let tampered = {
        let mut bytes = mine.clone().into_bytes();
        let last = bytes.len() - 1;
        bytes[last] = if bytes[last] == b'0' { b'1' } else { b'0' };
        String::from_utf8(bytes).expect("ascii")
    };
    for path in [
        format!("/api/v2/events?cursor={forged}"),
        format!("/api/v2/events?cursor={theirs}"),
        format!("/api/v2/events?cursor={tampered}"),
        format!("/api/v2/events?cursor={}", &mine[..mine.len() - 2]),
        format!("/api/v2/events?cursor={mine}&event_name=e"),
        format!("/api/v2/events?cursor={mine}&user_id=u"),
        format!("/api/v2/events?cursor={mine}&since=0"),
        format!("/api/v2/users/u/events?cursor={mine}"),
    ] {
        app.read(&path).await.assert_error(400, FOREIGN_CURSOR);
    }
    // The other project's own cursor still works for it.
    let page = app
        .read_as(&other_secret, &format!("/api/v2/events?cursor={theirs}"))
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(ids(&page.json()), vec![2, 1, 0]);
    // The server's key is kept in the store: a cursor outlives a restart.
    app.restart().await;
    let page = app
        .read(&format!("/api/v2/events?limit=1&cursor={mine}"))
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(ids(&page.json()), vec![2]);
}

/// GETs `path` exactly as written, with the secret key: URL libraries (reqwest's too)
/// resolve `..`, `%2E%2E` and `.` segments before sending, as browsers do, so this is the
/// only way to see what the server makes of them. Answers (status, JSON body).
async fn raw_read(app: &TestApp, path: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = app.raw_connection().await;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        app.secret
    );
    stream.write_all(request.as_bytes()).await.expect("sent");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("answer");
    let text = String::from_utf8(answer).expect("utf-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let status = head[9..12].parse().expect("status");
    (status, serde_json::from_str(body).expect("a JSON body"))
}

#[tokio::test]
async fn users_named_dot_and_dot_dot_are_read_as_themselves() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    for (n, user) in ["..", ".", "someone"].into_iter().enumerate() {
        app.track(&at(user, "e", 0, n as i64))
            .await
            .assert_success(false);
    }
    for (segment, id, n) in [("%2E%2E", "..", 0), ("%2e%2e", "..", 0), ("%2E", ".", 1)] {
        let (status, profile) = raw_read(&app, &format!("/api/v2/users/{segment}")).await;
        assert_eq!(status, 200, "{segment}: {profile}");
        assert_eq!(profile["id"], id);
        assert_eq!(profile["event_count"], 1);
        let (status, page) = raw_read(&app, &format!("/api/v2/users/{segment}/events")).await;
        assert_eq!(status, 200, "{segment}: {page}");
        assert_eq!(ids(&page), vec![n], "{segment}: only the user's own events");
        // The console's way, which no URL parser rewrites: the id in the query.
        let page = app.read(&format!("/api/v2/events?user_id={segment}")).await;
        assert_eq!(ids(&page.json()), vec![n], "{segment}");
    }
    // Sent unencoded, the server does not resolve them either: the id is the segment.
    let (status, page) = raw_read(&app, "/api/v2/users/../events").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids(&page), vec![0]);
}
