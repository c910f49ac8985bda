//! Bounded work per request (issue 12): what one tenant's request may make the shared writer
//! do, and what a profile may hold. Runs on both stores.

use serde_json::{json, Value};
use trackd_core::users::ProfileLimits;
use trackd_server::api::Limits;

use crate::helpers::TestApp;

async fn with_profile_limits(channels: usize, tags: usize, properties_bytes: usize) -> TestApp {
    TestApp::spawn_with_limits(Limits {
        profile: ProfileLimits {
            channels,
            tags,
            properties_bytes,
        },
        ..Limits::default()
    })
    .await
}

fn channels(from: usize, to: usize) -> Value {
    Value::Array(
        (from..to)
            .map(|i| json!({"type": "push", "address": format!("device-{i}")}))
            .collect(),
    )
}

async fn profile(app: &TestApp, id: &str) -> Value {
    let answer = app.read(format!("/api/v2/users/{id}")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()
}

#[tokio::test]
async fn a_request_past_a_profile_bound_is_400_before_the_writer() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let limits = ProfileLimits::default();
    // The defaults, documented in the README: 100 channels, 1,000 tags, 64 KiB.
    assert_eq!(
        (limits.channels, limits.tags, limits.properties_bytes),
        (100, 1_000, 65_536)
    );
    app.call(
        "POST",
        "users/track",
        &json!({"id": "big", "channels": channels(0, 101)}),
    )
    .await
    .assert_error(
        400,
        "channels: 101 channels, more than a profile may hold (100)",
    );
    let tags: Vec<String> = (0..1_001).map(|i| format!("t{i}")).collect();
    app.call("PUT", "users/tags/edit", &json!({"id": "big", "add": tags}))
        .await
        .assert_error(400, "add: 1001 tags, more than a profile may hold (1000)");
    let data = json!({"blob": "x".repeat(65_536)});
    app.call("POST", "users/track", &json!({"id": "big", "data": data}))
        .await
        .assert_error(
            400,
            "data: 65547 bytes of properties, more than a profile may hold (65536)",
        );
    app.read("/api/v2/users/big")
        .await
        .assert_error(404, "id: no such user");
    // At the bounds: accepted.
    app.call(
        "POST",
        "users/track",
        &json!({"id": "big", "channels": channels(0, 100),
                "data": {"blob": "x".repeat(65_536 - 11)}}),
    )
    .await
    .assert_success(false);
    let tags: Vec<String> = (0..1_000).map(|i| format!("t{i}")).collect();
    app.call("PUT", "users/tags/edit", &json!({"id": "big", "add": tags}))
        .await
        .assert_success(false);
    let user = profile(&app, "big").await;
    assert_eq!(user["channels"].as_array().expect("channels").len(), 100);
    assert_eq!(user["tags"].as_array().expect("tags").len(), 1_000);
}

#[tokio::test]
async fn a_profile_merged_past_a_bound_is_refused_and_keeps_what_it_had() {
    crate::skip_without_postgres!();
    let app = with_profile_limits(4, 3, 40).await;
    app.call(
        "POST",
        "users/track",
        &json!({"id": "u", "channels": channels(0, 3), "data": {"a": "12345"}}),
    )
    .await
    .assert_success(false);
    // Re-sending present channels merges in place: still 3.
    app.call(
        "POST",
        "users/track",
        &json!({"id": "u", "channels": channels(0, 3)}),
    )
    .await
    .assert_success(false);
    app.call(
        "POST",
        "users/track",
        &json!({"id": "u", "channels": channels(2, 5)}),
    )
    .await
    .assert_error(
        400,
        "channels: the profile would hold 5 channels, more than 4",
    );
    app.call(
        "PUT",
        "users/tags/edit",
        &json!({"id": "u", "add": ["a", "b", "c"]}),
    )
    .await
    .assert_success(false);
    app.call("PUT", "users/tags/edit", &json!({"id": "u", "add": ["d"]}))
        .await
        .assert_error(400, "add: the profile would hold 4 tags, more than 3");
    // Removing one makes room in the same call.
    app.call(
        "PUT",
        "users/tags/edit",
        &json!({"id": "u", "add": ["d"], "remove": ["a"]}),
    )
    .await
    .assert_success(false);
    app.call(
        "PUT",
        "users/edit",
        &json!({"id": "u", "changes": {"b": "012345678901234567890"}}),
    )
    .await
    .assert_error(
        400,
        "changes: the profile's properties would take 41 bytes, more than 40",
    );
    let user = profile(&app, "u").await;
    assert_eq!(user["channels"], channels(0, 3));
    assert_eq!(user["tags"], json!(["b", "c", "d"]));
    assert_eq!(user["properties"], json!({"a": "12345"}));
    // Refusals are counted by the field that caused them (flushed every second).
    let want = json!({"channels": 1, "add": 1, "changes": 1});
    let mut rejected = Value::Null;
    for _ in 0..50 {
        rejected = app.read("/api/v2/stats/events").await.json()["totals"]["rejected"].clone();
        if rejected == want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(rejected, want);
}

#[tokio::test]
async fn a_page_of_large_events_stops_at_its_byte_budget_and_the_walk_is_complete() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    // Ten events of 900 KB each: a page of 1,000 would be 9 MB; the budget is 4 MiB.
    let blob = "x".repeat(900_000);
    for n in 0..10 {
        app.track(&json!({"identity": {"id": "fat"}, "event_name": "Big",
                          "data": {"n": n, "blob": blob}}))
            .await
            .assert_success(false);
    }
    for route in [
        "/api/v2/events?limit=1000",
        "/api/v2/users/fat/events?limit=1000",
    ] {
        let mut seen = Vec::new();
        let mut pages = 0;
        let mut path = route.to_owned();
        loop {
            let answer = app.read(path.clone()).await;
            assert_eq!(answer.status, 200, "{}", answer.body);
            assert!(
                answer.body.len() < 5 * 1024 * 1024,
                "a page of {} bytes",
                answer.body.len()
            );
            let page = answer.json();
            pages += 1;
            for e in page["events"].as_array().expect("events") {
                seen.push(e["data"]["n"].as_i64().expect("n"));
            }
            match page["next_cursor"].as_str() {
                Some(cursor) => path = format!("{route}&cursor={cursor}"),
                None => break,
            }
        }
        // 4 MiB a page: five events of 900 KB, then the next five.
        assert_eq!(pages, 2, "{route}");
        assert_eq!(seen, (0..10).rev().collect::<Vec<_>>(), "{route}");
    }
}

/// Tracks `n` events of about `size` bytes for the app's project, 100 at a time.
async fn fill(app: &TestApp, n: usize, size: usize) {
    let blob = "y".repeat(size);
    for start in (0..n).step_by(100) {
        let sends = (start..(start + 100).min(n)).map(|i| {
            let body = json!({"identity": {"id": format!("u{}", i % 50)}, "event_name": "Fill",
                              "data": {"i": i, "blob": blob}});
            async move { app.track(&body).await }
        });
        for answer in futures::future::join_all(sends).await {
            answer.assert_success(false);
        }
    }
}

#[tokio::test]
async fn unread_exports_of_one_project_never_hold_back_another() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    fill(&app, 2_000, 10_000).await;
    let (other_token, other_secret) = app.add_project("other").await;
    app.track_as(
        &other_token,
        &json!({"identity": {"id": "b"}, "event_name": "Mine"}),
    )
    .await
    .assert_success(false);
    // Two exports of 20 MB each, opened and never read: they hold their project's permits.
    let mut held = Vec::new();
    for _ in 0..2 {
        let response = app
            .client
            .get(app.url("/api/v2/events/export"))
            .bearer_auth(&app.secret)
            .send()
            .await
            .expect("export opened");
        assert_eq!(response.status(), 200);
        held.push(response);
    }
    app.read("/api/v2/events/export").await.assert_error(
        429,
        "export: 2 exports of this project are running, retry when one ends",
    );
    // The other project's export is answered whole, at once.
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        app.read_as(&other_secret, "/api/v2/events/export"),
    )
    .await
    .expect("the other project's export is not held back");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body.lines().count(), 1);
    // Writes go on meanwhile.
    app.track(&json!({"identity": {"id": "w"}, "event_name": "During"}))
        .await
        .assert_success(false);
    drop(held);
}

#[tokio::test]
async fn an_export_its_client_stops_reading_ends_unfinished() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn_with_limits(Limits {
        export_timeout: std::time::Duration::from_secs(1),
        ..Limits::default()
    })
    .await;
    fill(&app, 2_000, 10_000).await;
    let response = app
        .client
        .get(app.url("/api/v2/events/export"))
        .bearer_auth(&app.secret)
        .send()
        .await
        .expect("export opened");
    assert_eq!(response.status(), 200);
    // Read nothing for longer than the timeout, then everything that is left.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let read = response.bytes().await;
    assert!(
        read.is_err(),
        "an export cut by its timeout must not end like a whole one"
    );
    // The permit went back with it: a new export runs to its end.
    let answer = app.read("/api/v2/events/export").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body.lines().count(), 2_000);
}

#[tokio::test]
async fn revoking_a_key_ends_the_exports_it_opened() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    fill(&app, 2_000, 10_000).await;
    let response = app
        .client
        .get(app.url("/api/v2/events/export"))
        .bearer_auth(&app.secret)
        .send()
        .await
        .expect("export opened");
    assert_eq!(response.status(), 200);
    app.revoke_secret().await;
    // What was already in flight may arrive; the export ends unfinished, never whole.
    let read = response.bytes().await;
    assert!(read.is_err(), "an export of a revoked key ran to its end");
}

#[tokio::test]
async fn a_project_holds_a_bounded_number_of_live_streams() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let open = || async {
        app.client
            .get(app.url("/api/v2/events/live"))
            .bearer_auth(&app.secret)
            .send()
            .await
            .expect("sent")
    };
    let mut held = Vec::new();
    for _ in 0..trackd_core::live::WATCHERS_PER_PROJECT {
        let stream = open().await;
        assert_eq!(stream.status(), 200);
        held.push(stream);
    }
    app.read("/api/v2/events/live").await.assert_error(
        429,
        "live: 16 live streams of this project are open on this server, retry when one ends",
    );
    // Another project is not held back; a stream that ends frees its place.
    let (_, other_secret) = app.add_project("other").await;
    let other = app
        .client
        .get(app.url("/api/v2/events/live"))
        .bearer_auth(&other_secret)
        .send()
        .await
        .expect("sent");
    assert_eq!(other.status(), 200);
    drop(held.pop());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let again = open().await;
        if again.status() == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", again.status());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
