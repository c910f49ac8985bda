//! Parity: the same generated requests (valid, duplicate, profile changes, hostile) through
//! a SQLite trackd and a PostgreSQL trackd give the same answers, and afterwards the same
//! export, profiles and statistics.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::helpers::{TestApp, TestConfig};

/// One generated request: method, Vero route, raw body.
fn generate(rng: &mut StdRng, sent: &[String]) -> (&'static str, &'static str, String) {
    let user = format!("u{}", rng.gen_range(0..12));
    let other = format!("u{}", rng.gen_range(0..12));
    let name = ["Viewed", "Bought", "Left", "Searched"][rng.gen_range(0..4)];
    match rng.gen_range(0..100) {
        // An exact resend of something already sent: a duplicate inside the window.
        0..=14 if !sent.is_empty() => {
            ("POST", "events/track", sent[rng.gen_range(0..sent.len())].clone())
        }
        0..=54 => {
            let body = json!({"identity": {"id": user, "email": format!("{user}@example.com")},
                              "event_name": name,
                              "data": {"n": rng.gen_range(0..5), "big": 12345678901234567890u64},
                              "extras": {"source": "parity"}});
            ("POST", "events/track", body.to_string())
        }
        55..=59 => (
            "POST",
            "users/track",
            json!({"id": user, "data": {"plan": name}, "channels": [{"type": "push", "address": "a"}]})
                .to_string(),
        ),
        60..=64 => (
            "PUT",
            "users/edit",
            json!({"id": user, "changes": {"age": rng.gen_range(20..60)}}).to_string(),
        ),
        65..=69 => (
            "PUT",
            "users/tags/edit",
            json!({"id": user, "add": [name], "remove": ["Left"]}).to_string(),
        ),
        70..=72 => ("POST", "users/unsubscribe", json!({"id": user}).to_string()),
        73..=75 => ("POST", "users/resubscribe", json!({"id": user}).to_string()),
        76..=78 => ("POST", "users/delete", json!({"id": user}).to_string()),
        79..=82 => (
            "PUT",
            "users/reidentify",
            json!({"id": user, "new_id": other}).to_string(),
        ),
        // Hostile.
        83..=86 => ("POST", "events/track", r#"{"identity":{"id":"u1"},"event_name":"#.into()),
        87..=90 => (
            "POST",
            "events/track",
            r#"{"identity":{"id":"u1"},"event_name":"e","e":1,"e":2}"#.into(),
        ),
        91..=94 => (
            "POST",
            "events/track",
            json!({"identity": {"email": "not an email"}, "event_name": "e"}).to_string(),
        ),
        _ => ("PUT", "users/edit", json!({"id": user, "changes": []}).to_string()),
    }
}

async fn send(app: &TestApp, method: &str, route: &str, body: &str) -> (u16, String, bool) {
    let url = app.url(&format!("/api/v2/{route}?auth_token={}", app.token));
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let answer = app
        .send(app.client.request(method, url).body(body.to_owned()))
        .await;
    let duplicate = answer.headers.contains_key("trackd-duplicate");
    (answer.status, answer.body, duplicate)
}

/// The export as JSON values, each without its `id` (ids are the stores' own).
async fn export(app: &TestApp) -> Vec<Value> {
    let answer = app.read("/api/v2/events/export").await;
    assert_eq!(answer.status, 200);
    answer
        .body
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).expect("export line");
            v.as_object_mut().expect("object").remove("id");
            v
        })
        .collect()
}

#[tokio::test]
async fn the_same_requests_through_both_stores_give_the_same_answers_and_data() {
    crate::skip_without_postgres!();
    let sqlite = TestApp::spawn_with(TestConfig {
        force_sqlite: true,
        ..TestConfig::default()
    })
    .await;
    let postgres = TestApp::spawn().await;
    assert!(postgres.pg.is_some() && sqlite.pg.is_none());
    let mut rng = StdRng::seed_from_u64(7);
    let mut sent = Vec::new();
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..600 {
        if i % 50 == 49 {
            // Now and then past the window, on both clocks alike.
            let secs = rng.gen_range(1..200);
            for app in [&sqlite, &postgres] {
                app.clock.advance_secs(secs);
            }
        }
        let (method, route, body) = generate(&mut rng, &sent);
        if std::env::var_os("PARITY_TRACE").is_some() {
            println!("{i} {method} {route} {body}");
        }
        let a = send(&sqlite, method, route, &body).await;
        let b = send(&postgres, method, route, &body).await;
        assert_eq!(a, b, "request {i}: {method} {route} {body}");
        *statuses.entry(a.0).or_insert(0) += 1;
        if route == "events/track" && a.0 == 200 {
            sent.push(body);
        }
    }
    println!("parity: 600 requests, statuses {statuses:?}");
    assert!(statuses.len() >= 3, "a mix of answers: {statuses:?}");
    assert_eq!(export(&sqlite).await, export(&postgres).await);
    for n in 0..12 {
        let path = format!("/api/v2/users/u{n}");
        let (a, b) = (sqlite.read(path.clone()).await, postgres.read(path).await);
        assert_eq!((a.status, a.body), (b.status, b.body), "user u{n}");
    }
    // Refusal counts reach the store's totals in the background (once a second): wait
    // until both have them all.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (a, b) = (
            sqlite.read("/api/v2/stats/events").await,
            postgres.read("/api/v2/stats/events").await,
        );
        if a.body == b.body {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}\n{}",
            a.body,
            b.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (a, b) = (
        sqlite.read("/api/v2/events?limit=1000").await,
        postgres.read("/api/v2/events?limit=1000").await,
    );
    let strip = |body: &str| -> Value {
        let mut v: Value = serde_json::from_str(body).expect("page");
        for e in v["events"].as_array_mut().expect("events") {
            e.as_object_mut().expect("event").remove("id");
        }
        v
    };
    assert_eq!(strip(&a.body), strip(&b.body));
}
