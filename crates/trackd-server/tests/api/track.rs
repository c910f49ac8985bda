//! `events/track`: every status it can give, every credential location and body encoding.

use std::io::Write;

use serde_json::{json, Value};

use crate::helpers::{event, TestApp, START};

const SEED: &str = r#"
{
  "identity": {
    "id": 1000,
    "email": "test@example.com"
  },
  "event_name": "Viewed product",
  "data": {
    "product_name": "Red T-shirt",
    "product_url": "http://www.yourdomain.com/products/red-t-shirt"
  },
  "extras": {
    "source": "Segment.com",
    "created_at": "2023-05-30T04:46:31+0000"
  }
}
"#;

#[tokio::test]
async fn seed_example_from_vero_docs_is_answered_exactly_and_stored() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    app.track_raw(SEED).await.assert_success(false);
    let events = app.events();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.user_key, "1000");
    assert_eq!(e.email.as_deref(), Some("test@example.com"));
    assert_eq!(e.name, "Viewed product");
    assert_eq!(e.key, "viewed_product");
    assert_eq!(
        e.data,
        r#"{"product_name":"Red T-shirt","product_url":"http://www.yourdomain.com/products/red-t-shirt"}"#
    );
    assert_eq!(e.source.as_deref(), Some("Segment.com"));
    assert_eq!(e.created_at, 1_685_421_991_000_000);
    assert_eq!(e.received_at, START.as_micros());
}

#[tokio::test]
async fn every_path_variant_is_served() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    for (i, path) in [
        "/api/v2/events/track",
        "/api/v2/events/track.json",
        "/api/v2/events/track/",
    ]
    .into_iter()
    .enumerate()
    {
        let url = app.url(&format!("{path}?auth_token={}", app.token));
        app.send(app.client.post(url).body(event("u", i as i64).to_string()))
            .await
            .assert_success(false);
    }
    assert_eq!(app.count("events"), 3);
}

#[tokio::test]
async fn credential_is_found_in_each_location() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let body = |n: i64, extra: Option<(&str, &str)>| {
        let mut v = event("u", n);
        if let Some((k, t)) = extra {
            v[k] = json!(t);
        }
        v.to_string()
    };
    let track = app.url("/api/v2/events/track");
    let cases = [
        app.client
            .post(format!("{track}?auth_token={}", app.token))
            .body(body(1, None)),
        app.client
            .post(format!("{track}?tracking_api_key={}", app.token))
            .body(body(2, None)),
        app.client
            .post(&track)
            .body(body(3, Some(("auth_token", &app.token)))),
        app.client
            .post(&track)
            .body(body(4, Some(("tracking_api_key", &app.token)))),
        app.client
            .post(&track)
            .bearer_auth(&app.token)
            .body(body(5, None)),
        // Vero's own curl example sends an empty `?auth_token=`: it counts as absent.
        app.client
            .post(format!("{track}?auth_token="))
            .bearer_auth(&app.token)
            .body(body(6, None)),
    ];
    for request in cases {
        app.send(request).await.assert_success(false);
    }
    assert_eq!(app.count("events"), 6);
}

#[tokio::test]
async fn first_credential_found_wins_even_when_a_later_one_is_valid() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let mut body = event("u", 1);
    body["auth_token"] = json!(app.token);
    let url = app.url("/api/v2/events/track?tracking_api_key=wrong");
    app.send(app.client.post(url).body(body.to_string()))
        .await
        .assert_error(401, "tracking_api_key: unknown credential");
    let mut body = event("u", 2);
    body["auth_token"] = json!("wrong");
    let url = app.url("/api/v2/events/track");
    app.send(
        app.client
            .post(url)
            .bearer_auth(&app.token)
            .body(body.to_string()),
    )
    .await
    .assert_error(401, "auth_token: unknown credential");
    assert_eq!(app.count("events"), 0);
}

#[tokio::test]
async fn missing_or_unknown_credential_is_401_and_nothing_is_stored() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let url = app.url("/api/v2/events/track");
    app.send(app.client.post(&url).body(event("u", 1).to_string()))
        .await
        .assert_error(
            401,
            "auth_token: missing (send it as ?auth_token=, ?tracking_api_key=, in the body, \
             or as Authorization: Bearer)",
        );
    app.send(
        app.client
            .post(&url)
            .bearer_auth("nope")
            .body(event("u", 1).to_string()),
    )
    .await
    .assert_error(401, "authorization: unknown credential");
    assert_eq!(app.count("events"), 0);
    assert_eq!(app.count("users"), 0);
}

#[tokio::test]
async fn secret_key_is_403_on_a_tracking_route_and_400_in_a_query() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let url = app.url("/api/v2/events/track");
    app.send(
        app.client
            .post(&url)
            .bearer_auth(&app.secret)
            .body(event("u", 1).to_string()),
    )
    .await
    .assert_error(
        403,
        "authorization: a secret key is not accepted here, use a tracking token",
    );
    app.send(
        app.client
            .post(format!("{url}?auth_token={}", app.secret))
            .body(event("u", 1).to_string()),
    )
    .await
    .assert_error(
        400,
        "auth_token: a secret key must never be sent in a query string (revoke it: URLs are logged)",
    );
    assert_eq!(app.count("events"), 0);
}

#[tokio::test]
async fn invalid_bodies_are_400_naming_the_field_and_store_nothing() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let long = "x".repeat(255);
    let cases: Vec<(String, &str)> = vec![
        ("".into(), "body: empty, expected a JSON object"),
        ("{".into(), "body: invalid JSON: expected a string key at byte 1"),
        ("[1]".into(), "body: must be a JSON object"),
        (r#"{"event_name":"x"}"#.into(), "identity: an id or an email is required"),
        (r#"{"identity":{"id":"1"}}"#.into(), "event_name: is required"),
        (r#"{"identity":{"id":"1"},"event_name":""}"#.into(), "event_name: is empty"),
        (
            format!(r#"{{"identity":{{"id":"1"}},"event_name":"{long}"}}"#),
            "event_name: longer than 254 characters",
        ),
        (
            format!(r#"{{"identity":{{"id":"{long}"}},"event_name":"x"}}"#),
            "identity.id: longer than 254 characters",
        ),
        (
            r#"{"identity":{"email":"not-an-email"},"event_name":"x"}"#.into(),
            "identity.email: not a valid email address",
        ),
        (
            r#"{"identity":{"id":1.5},"event_name":"x"}"#.into(),
            "identity.id: must be a string or an integer",
        ),
        (
            r#"{"identity":{"id":"1","id":"2"},"event_name":"x"}"#.into(),
            "identity.id: duplicate key",
        ),
        (
            r#"{"identity":{"id":"1"},"event_name":"x","data":{"a":"\u0000"}}"#.into(),
            "data.a: contains a NUL character (\\u0000)",
        ),
        (
            r#"{"identity":{"id":"1"},"event_name":"x","data":{"a":"\ud800"}}"#.into(),
            "data.a: contains a lone surrogate",
        ),
        (
            r#"{"identity":{"id":"1"},"event_name":"x","data":"s"}"#.into(),
            "data: must be an object, or a string holding it as JSON",
        ),
        (
            r#"{"identity":{"id":"1"},"event_name":"x","extras":{"created_at":"tomorrow"}}"#.into(),
            "extras.created_at: not an ISO 8601 time or Unix seconds between years 1 and 9999",
        ),
        (
            format!(
                r#"{{"identity":{{"id":"1"}},"event_name":"x","data":{{"d":{}0{}}}}}"#,
                "[".repeat(63),
                "]".repeat(63)
            ),
            "data.d[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]: nested deeper than 64 levels",
        ),
    ];
    for (body, message) in cases {
        let mut with_token = body.clone();
        // Put the token in the query so a body error is what is reported.
        let url = app.url(&format!("/api/v2/events/track?auth_token={}", app.token));
        app.send(app.client.post(url).body(std::mem::take(&mut with_token)))
            .await
            .assert_error(400, message);
    }
    assert_eq!(app.count("events"), 0);
    assert_eq!(app.count("users"), 0);
    assert_eq!(app.count("dedup"), 0);
}

#[tokio::test]
async fn nesting_up_to_64_levels_is_accepted() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let body = format!(
        r#"{{"identity":{{"id":"1"}},"event_name":"x","data":{{"d":{}0{}}}}}"#,
        "[".repeat(62),
        "]".repeat(62)
    );
    app.track_raw(body).await.assert_success(false);
}

#[tokio::test]
async fn identity_and_event_name_of_254_characters_are_accepted() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let id = "é".repeat(254);
    let name = "n".repeat(254);
    let local = "a".repeat(254 - "@example.com".len());
    app.track(&json!({"identity": {"id": id, "email": format!("{local}@example.com")}, "event_name": name}))
        .await
        .assert_success(false);
    assert_eq!(app.events()[0].user_key, id);
}

#[tokio::test]
async fn data_is_stored_without_loss() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    app.track_raw(
        r#"{"identity":{"id":"1"},"event_name":"x","data":{"big":12345678901234567890123,"f":1.50,"e":1e400,"s":"é\n\"q\"","z":{"b":[1,{"c":null}],"a":true}}}"#,
    )
    .await
    .assert_success(false);
    // Digits are kept as sent; an exponent is written with its sign (the same value).
    assert_eq!(
        app.events()[0].data,
        r#"{"big":12345678901234567890123,"f":1.50,"e":1e+400,"s":"é\n\"q\"","z":{"b":[1,{"c":null}],"a":true}}"#
    );
}

#[tokio::test]
async fn created_at_in_each_form_is_stored_in_utc() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let forms = [
        json!("2023-05-30T04:46:31Z"),
        json!("2023-05-30T06:46:31+02:00"),
        json!("2023-05-30T04:46:31+0000"),
        json!("2023-05-30T04:46:31.000"),
        json!(1_685_421_991),
    ];
    for (i, created_at) in forms.iter().enumerate() {
        app.track(
            &json!({"identity": {"id": "1"}, "event_name": "x", "data": {"i": i},
                          "extras": {"created_at": created_at}}),
        )
        .await
        .assert_success(false);
    }
    let times: Vec<i64> = app.events().iter().map(|e| e.created_at).collect();
    assert_eq!(times, vec![1_685_421_991_000_000; 5]);
}

#[tokio::test]
async fn top_level_id_and_email_are_used_without_identity() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    app.track(
        &json!({"id": "nd-1", "email": "nd@example.com", "event_name": "Signed up",
                      "data": {}, "development_mode": false}),
    )
    .await
    .assert_success(false);
    let e = &app.events()[0];
    assert_eq!(
        (e.user_key.as_str(), e.email.as_deref()),
        ("nd-1", Some("nd@example.com"))
    );
}

#[tokio::test]
async fn email_only_identity_uses_the_email_as_user_key() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    app.track(&json!({"identity": {"email": "only@example.com"}, "event_name": "x"}))
        .await
        .assert_success(false);
    assert_eq!(app.events()[0].user_key, "only@example.com");
}

#[tokio::test]
async fn json_is_accepted_whatever_the_content_type_says() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let url = app.url(&format!("/api/v2/events/track?auth_token={}", app.token));
    for (i, ct) in [
        "text/plain;charset=UTF-8",
        "application/json",
        "application/octet-stream",
    ]
    .into_iter()
    .enumerate()
    {
        app.send(
            app.client
                .post(&url)
                .header("content-type", ct)
                .body(event("u", i as i64).to_string()),
        )
        .await
        .assert_success(false);
    }
    // No content type at all.
    app.send(app.client.post(&url).body(event("u", 9).to_string()))
        .await
        .assert_success(false);
    assert_eq!(app.count("events"), 4);
}

#[tokio::test]
async fn form_encoded_body_with_json_string_fields_is_accepted() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let body = format!(
        "auth_token={}&event_name=Viewed+product&identity=%7B%22id%22%3A1234%2C%22email%22%3A%22f%40example.com%22%7D&data=%7B%22price%22%3A20%7D&extras=%7B%22source%22%3A%22web%22%7D",
        app.token
    );
    app.send(
        app.client
            .post(app.url("/api/v2/events/track"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body),
    )
    .await
    .assert_success(false);
    let e = &app.events()[0];
    assert_eq!(e.user_key, "1234");
    assert_eq!(e.name, "Viewed product");
    assert_eq!(e.data, r#"{"price":20}"#);
    assert_eq!(e.source.as_deref(), Some("web"));
}

#[tokio::test]
async fn form_errors_name_the_field() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let form = |body: String| {
        app.client
            .post(app.url("/api/v2/events/track"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    };
    let t = &app.token;
    app.send(form(format!("auth_token={t}&event_name=x&identity=%7B")))
        .await
        .assert_error(
            400,
            "identity: invalid JSON: expected a string key at byte 1",
        );
    app.send(form(format!(
        "auth_token={t}&event_name=x&event_name=y&identity=%7B%22id%22%3A1%7D"
    )))
    .await
    .assert_error(400, "event_name: duplicate key");
    app.send(form(format!(
        "auth_token={t}&event_name=%FF&identity=%7B%22id%22%3A1%7D"
    )))
    .await
    .assert_error(400, "body: invalid UTF-8 in form encoding");
    app.send(form(format!(
        "auth_token={t}&event_name=x&identity=%7B%22id%22%3A1%7D&data=%7B%22a%22%3A1%2C%22a%22%3A2%7D"
    )))
    .await
    .assert_error(400, "data.a: duplicate key");
    assert_eq!(app.count("events"), 0);
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).expect("gzip");
    enc.finish().expect("gzip")
}

#[tokio::test]
async fn gzip_bodies_are_decoded() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let url = app.url(&format!("/api/v2/events/track?auth_token={}", app.token));
    app.send(
        app.client
            .post(url)
            .header("content-encoding", "gzip")
            .body(gzip(event("u", 1).to_string().as_bytes())),
    )
    .await
    .assert_success(false);
    assert_eq!(app.count("events"), 1);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_before_and_after_decompression() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let url = app.url(&format!("/api/v2/events/track?auth_token={}", app.token));
    let limit = 1024 * 1024;
    // Exactly at the limit: valid JSON padded with whitespace is accepted.
    let mut at_limit = event("u", 1).to_string().into_bytes();
    at_limit.resize(limit, b' ');
    app.send(app.client.post(&url).body(at_limit.clone()))
        .await
        .assert_success(false);
    let mut over = at_limit.clone();
    over.push(b' ');
    app.send(app.client.post(&url).body(over.clone()))
        .await
        .assert_error(413, "body: larger than 1048576 bytes");
    // A gzip bomb: tiny on the wire, past the limit inflated.
    app.send(
        app.client
            .post(&url)
            .header("content-encoding", "gzip")
            .body(gzip(&over)),
    )
    .await
    .assert_error(413, "body: larger than 1048576 bytes after decompression");
    // Inflating to exactly the limit is fine.
    let mut at_limit2 = event("u", 2).to_string().into_bytes();
    at_limit2.resize(limit, b' ');
    app.send(
        app.client
            .post(&url)
            .header("content-encoding", "gzip")
            .body(gzip(&at_limit2)),
    )
    .await
    .assert_success(false);
    assert_eq!(app.count("events"), 2);
}

#[tokio::test]
async fn unsupported_encoding_is_415_and_corrupt_gzip_is_400() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let url = app.url(&format!("/api/v2/events/track?auth_token={}", app.token));
    app.send(
        app.client
            .post(&url)
            .header("content-encoding", "br")
            .body(event("u", 1).to_string()),
    )
    .await
    .assert_error(
        415,
        "content-encoding: 'br' is not supported, use gzip or none",
    );
    app.send(
        app.client
            .post(&url)
            .header("content-encoding", "gzip")
            .body("not gzip"),
    )
    .await
    .assert_error(400, "body: invalid gzip data");
    assert_eq!(app.count("events"), 0);
}

/// A gzip body is exactly one gzip member: a second member, or any byte after the first
/// (garbage, zero padding), is refused rather than silently dropped.
#[tokio::test]
async fn a_gzip_body_is_one_member_with_nothing_after_it() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let one = gzip(event("u", 1).to_string().as_bytes());
    let mut trailing = one.clone();
    trailing.extend_from_slice(b"garbage");
    let mut padded = one.clone();
    padded.extend_from_slice(&[0; 8]);
    let mut two = one.clone();
    two.extend_from_slice(&gzip(b" "));
    let message = "body: data after the end of the gzip stream";
    for (route, body) in [
        ("events/track", trailing),
        ("events/track", padded),
        ("events/track", two.clone()),
        ("users/track", {
            let mut b = gzip(json!({"id": "u"}).to_string().as_bytes());
            b.push(b'x');
            b
        }),
    ] {
        let url = app.url(&format!("/api/v2/{route}?auth_token={}", app.token));
        app.send(
            app.client
                .post(url)
                .header("content-encoding", "gzip")
                .body(body),
        )
        .await
        .assert_error(400, message);
    }
    assert_eq!(app.count("events"), 0);
    assert_eq!(app.count("users"), 0);
    let url = app.url(&format!("/api/v2/events/track?auth_token={}", app.token));
    app.send(
        app.client
            .post(url)
            .header("content-encoding", "gzip")
            .body(one),
    )
    .await
    .assert_success(false);
    assert_eq!(app.count("events"), 1);
}

#[tokio::test]
async fn wrong_method_is_405_with_allow_and_unknown_route_is_404() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let answer = app
        .send(app.client.get(app.url("/api/v2/events/track")))
        .await;
    answer.assert_error(405, "/api/v2/events/track: method not allowed, use POST");
    assert_eq!(
        answer.headers.get("allow").and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    app.send(app.client.put(app.url("/api/v2/events/track.json")))
        .await
        .assert_error(
            405,
            "/api/v2/events/track.json: method not allowed, use POST",
        );
    app.send(app.client.post(app.url("/api/v2/events/nope")))
        .await
        .assert_error(404, "/api/v2/events/nope: no such route");
    app.send(app.client.post(app.url("/")))
        .await
        .assert_error(405, "/: method not allowed, use GET");
}

#[tokio::test]
async fn cors_preflight_is_answered_for_any_origin_on_every_variant() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    for path in [
        "/api/v2/events/track",
        "/api/v2/events/track.json",
        "/api/v2/events/track/",
        "/api/v2/heartbeat",
    ] {
        let answer = app
            .send(
                app.client
                    .request(
                        reqwest::Method::OPTIONS,
                        app.url(&format!("{path}?tracking_api_key=x")),
                    )
                    .header("origin", "http://shop.example.com")
                    .header("access-control-request-method", "POST")
                    .header("access-control-request-headers", "content-type"),
            )
            .await;
        assert!(
            (200..300).contains(&answer.status),
            "{path}: {}",
            answer.status
        );
        let h = |name: &str| {
            answer
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(h("access-control-allow-origin").as_deref(), Some("*"));
        let allowed = h("access-control-allow-headers").unwrap_or_default();
        for header in ["content-type", "accept", "authorization"] {
            assert!(allowed.contains(header), "{path}: {allowed}");
        }
        assert!(h("access-control-allow-methods")
            .unwrap_or_default()
            .contains("POST"));
        assert_eq!(h("access-control-allow-credentials"), None);
    }
    // The actual request carries the header too, so the browser can read errors.
    let answer = app
        .send(
            app.client
                .post(app.url("/api/v2/events/track"))
                .header("origin", "http://a.example")
                .body(event("u", 1).to_string()),
        )
        .await;
    assert_eq!(answer.status, 401);
    assert_eq!(
        answer
            .headers
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("*")
    );
}

#[tokio::test]
async fn heartbeat_needs_no_credential() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    for path in [
        "/api/v2/heartbeat",
        "/api/v2/heartbeat.json",
        "/api/v2/heartbeat/",
    ] {
        app.send(app.client.get(app.url(path)))
            .await
            .assert_success(false);
    }
    app.send(app.client.post(app.url("/api/v2/heartbeat")))
        .await
        .assert_error(405, "/api/v2/heartbeat: method not allowed, use GET");
}

#[tokio::test]
async fn an_event_creates_its_user_and_later_ones_touch_it() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    assert_eq!(app.profile("42").await, None);
    app.track(&json!({"identity": {"id": "42", "email": null}, "event_name": "a"}))
        .await
        .assert_success(false);
    let user = app.profile("42").await.expect("created by its first event");
    assert_eq!(user["email"], Value::Null);
    assert_eq!(user["first_seen"], "2026-11-26T12:00:00.000000Z");
    assert_eq!(user["event_count"], 1);
    app.clock.advance_secs(10);
    app.track(&json!({"identity": {"id": "42", "email": "ann@example.com"}, "event_name": "b"}))
        .await
        .assert_success(false);
    let user = app.profile("42").await.expect("user");
    assert_eq!(user["id"], "42");
    assert_eq!(user["email"], "ann@example.com");
    assert_eq!(user["first_seen"], "2026-11-26T12:00:00.000000Z");
    assert_eq!(user["last_seen"], "2026-11-26T12:00:10.000000Z");
    assert_eq!(user["event_count"], 2);
    // One user: named by its email it is the same one, and both events are its.
    assert_eq!(app.profile("ann@example.com").await, Some(user));
    let events = app.exported().await;
    assert_eq!(events.len(), 2);
    for e in &events {
        assert_eq!(
            e["user"],
            json!({"id": "42", "email": "ann@example.com"}),
            "{e}"
        );
    }
}

#[tokio::test]
async fn a_failed_commit_answers_503_and_stores_nothing_then_service_resumes() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    // A real failure inside the writer's transaction, injected from outside the server.
    app.execute(
        "CREATE TRIGGER fail BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'injected'); END;",
        "CREATE FUNCTION fail() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN RAISE EXCEPTION 'injected'; END $$; \
         CREATE TRIGGER fail BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION fail();",
    );
    let answer = app.track(&event("u", 1)).await;
    answer.assert_error(503, "server: storage unavailable, retry later");
    assert_eq!(
        answer
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    // Nothing of it anywhere: no event, no user, nothing counted.
    assert_eq!(app.exported().await, Vec::<Value>::new());
    assert_eq!(app.profile("u").await, None);
    assert_eq!(
        app.read_json("/api/v2/events").await,
        json!({"events": [], "next_cursor": null})
    );
    assert_eq!(app.totals().await, (0, 0));
    app.execute(
        "DROP TRIGGER fail;",
        "DROP TRIGGER fail ON events; DROP FUNCTION fail();",
    );
    // The retry is not a duplicate: the failed attempt left no dedup record.
    app.track(&event("u", 1)).await.assert_success(false);
    let events = app.exported().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["user"]["id"], "u");
    assert_eq!(app.profile("u").await.expect("user")["event_count"], 1);
    assert_eq!(app.totals().await, (1, 0));
    app.send(app.client.get(app.url("/readyz")))
        .await
        .assert_success(false);
}

#[tokio::test]
async fn a_full_write_queue_answers_503_with_retry_after_and_the_queued_requests_commit() {
    crate::skip_without_postgres!();
    let app = std::sync::Arc::new(
        TestApp::spawn_with(crate::helpers::TestConfig {
            queue_capacity: 1,
            ..Default::default()
        })
        .await,
    );
    // Another connection holds the write lock: the writers wait on their first batches
    // while requests pile up behind them.
    let blocker = app.block_writes().await;
    let mut pending = Vec::new();
    let mut refused = None;
    for n in 0..20 {
        let app = app.clone();
        let task = tokio::spawn(async move { app.track(&event("u", n)).await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if task.is_finished() {
            refused = Some(task.await.expect("task"));
            break;
        }
        pending.push(task);
    }
    let refused = refused.expect("a request was refused while the queue was full");
    refused.assert_error(503, "server: overloaded, retry later");
    assert_eq!(
        refused
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    blocker.release().await;
    let queued = pending.len();
    for task in pending {
        task.await.expect("task").assert_success(false);
    }
    // Every request that waited was stored; the refused one was not.
    let mut stored: Vec<i64> = app
        .exported()
        .await
        .iter()
        .map(|e| e["data"]["n"].as_i64().expect("n"))
        .collect();
    stored.sort_unstable();
    assert_eq!(stored, (0..queued as i64).collect::<Vec<_>>());
    assert_eq!(app.totals().await, (queued as i64, 0));
}

#[tokio::test]
async fn failed_credentials_past_the_per_address_limit_get_429() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn_with_limits(trackd_server::api::Limits {
        failed_auth_per_ip: 3,
        ..Default::default()
    })
    .await;
    let wrong = app.url("/api/v2/events/track?auth_token=guess");
    for _ in 0..3 {
        app.send(app.client.post(&wrong).body(event("u", 1).to_string()))
            .await
            .assert_error(401, "auth_token: unknown credential");
    }
    let limited = app
        .send(app.client.post(&wrong).body(event("u", 1).to_string()))
        .await;
    limited.assert_error(
        429,
        "auth_token: more than 3 requests with a missing or unknown credential in a second from this address",
    );
    assert_eq!(
        limited
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    // The read routes share the limit: the address is guessing.
    assert_eq!(app.read_as("sk_guess", "/api/v2/events").await.status, 429);
    assert_eq!(app.count("events"), 0);
}

/// A body that cannot be read is still answered 400, but its unknown token (looked up to
/// count the rejection) counts against the address's limit like any other guess.
#[tokio::test]
async fn unreadable_bodies_with_unknown_tokens_count_as_guesses() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn_with_limits(trackd_server::api::Limits {
        failed_auth_per_ip: 3,
        ..Default::default()
    })
    .await;
    let wrong = app.url("/api/v2/events/track?auth_token=guess");
    for _ in 0..3 {
        app.send(app.client.post(&wrong).body(r#"{"a":1,"a":2}"#))
            .await
            .assert_error(400, "a: duplicate key");
    }
    app.send(app.client.post(&wrong).body(event("u", 1).to_string()))
        .await
        .assert_error(
            429,
            "auth_token: more than 3 requests with a missing or unknown credential in a second from this address",
        );
}

#[tokio::test]
async fn a_body_that_trickles_in_too_slowly_is_408_and_nothing_is_stored() {
    crate::skip_without_postgres!();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn_with_limits(trackd_server::api::Limits {
        body_timeout: std::time::Duration::from_millis(500),
        ..Default::default()
    })
    .await;
    let body = event("u", 1).to_string();
    let mut stream = app.raw_connection().await;
    let head = format!(
        "POST /api/v2/events/track?auth_token={} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        app.token,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    // Half the body, then nothing.
    stream
        .write_all(&body.as_bytes()[..body.len() / 2])
        .await
        .expect("half");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut buf = [0u8; 1024];
        loop {
            let n = stream.read(&mut buf).await.expect("read");
            answer.extend_from_slice(&buf[..n]);
            if n == 0 || answer.windows(2).any(|w| w == b"}\n") || answer.ends_with(b"}") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer within 10 s");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.ends_with(r#"{"status":408,"message":"body: not received within 0.5 s"}"#),
        "{text}"
    );
    assert_eq!(app.count("events"), 0);
}

#[tokio::test]
async fn a_connection_that_never_completes_its_headers_is_closed() {
    crate::skip_without_postgres!();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn_with_limits(trackd_server::api::Limits {
        header_timeout: std::time::Duration::from_millis(500),
        ..Default::default()
    })
    .await;
    let mut stream = app.raw_connection().await;
    stream
        .write_all(b"POST /api/v2/events/track HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .expect("partial head");
    // The server closes the connection (EOF, possibly after a 408) well before 10 s.
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection was still open after 10 s");
    // The server still serves others.
    app.track(&event("u", 1)).await.assert_success(false);
}

#[tokio::test]
async fn a_write_not_committed_within_the_request_timeout_is_503_and_its_retry_a_duplicate() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn_with_limits(trackd_server::api::Limits {
        request_timeout: std::time::Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    // Another connection holds the write lock for longer than the request timeout.
    let blocker = app.block_writes().await;
    let answer = app.track(&event("u", 1)).await;
    answer.assert_error(503, "server: storage unavailable, retry later");
    assert_eq!(
        answer
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    blocker.release().await;
    // The write went on and committed; the client's retry is recognised.
    app.track(&event("u", 1)).await.assert_success(true);
    let events = app.exported().await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0]["data"],
        json!({"product_name": "Red T-shirt", "n": 1})
    );
    assert_eq!(app.totals().await, (1, 1));
}

/// A body refused before it could be read (a duplicate key, a conflicting form field, a
/// JSON-string field that is not an object, broken JSON) is counted as a rejection of the
/// project whose valid credential is in the query or the headers, by the refused field, as
/// every refusal of a request with a valid credential is; a credential that is wrong, or
/// only inside the unreadable body, counts nothing.
#[tokio::test]
async fn unreadable_bodies_are_counted_for_the_credentials_project() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let track = app.url(&format!("/api/v2/events/track?auth_token={}", app.token));
    let send = |url: String, kind: &'static str, body: String| {
        app.send(app.client.post(url).header("content-type", kind).body(body))
    };
    let json = "application/json";
    let form = "application/x-www-form-urlencoded";
    for (kind, body, message) in [
        (
            json,
            r#"{"identity":{"id":"u"},"event_name":"e","data":{"a":1,"a":2}}"#,
            "data.a: duplicate key",
        ),
        (
            form,
            "identity[id]=u&event_name=e&data[a]=1&data[a][b]=2",
            "",
        ),
        (
            json,
            r#"{"identity":{"id":"u"},"event_name":"e","data":"[1]"}"#,
            "",
        ),
        (json, r#"{"identity":"#, ""),
        (
            json,
            r#"{"identity":{"id":"u"},"event_name":"e","data":[1]}"#,
            "",
        ),
    ] {
        let answer = send(track.clone(), kind, body.to_owned()).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.body);
        if !message.is_empty() {
            answer.assert_error(400, message);
        }
    }
    // /v1 with the write key in the header.
    let v1 = app
        .send(
            app.client
                .post(app.url("/v1/track"))
                .basic_auth(&app.token, Some(""))
                .body(r#"{"userId":"u","event":"E","properties":{"k":1,"k":2}}"#),
        )
        .await;
    v1.assert_error(400, "properties.k: duplicate key");
    // Not counted: a wrong token; a token only inside the unreadable body.
    let wrong = app.url("/api/v2/events/track?auth_token=tk_nobody");
    assert_eq!(
        send(wrong, json, r#"{"a":1,"a":2}"#.into()).await.status,
        400
    );
    let inside = format!(r#"{{"auth_token":"{}","a":1,"a":2}}"#, app.token);
    let plain = app.url("/api/v2/events/track");
    assert_eq!(send(plain, json, inside).await.status, 400);
    let want = json!({"data": 4, "body": 1, "properties": 1});
    let mut rejected = Value::Null;
    for _ in 0..50 {
        rejected = app.read_json("/api/v2/stats/events").await["totals"]["rejected"].clone();
        if rejected == want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(rejected, want);
}
