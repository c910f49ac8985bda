//! The dedup window: 180 s of server receive time, not extended by duplicates, surviving
//! restarts, exact under concurrency.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{event, TestApp, TestConfig};

#[tokio::test]
async fn duplicate_within_window_is_stored_once() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    app.track(&event("u", 1)).await.assert_success(false);
    app.clock.advance_secs(179);
    app.track(&event("u", 1)).await.assert_success(true);
    let events = app.exported().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        events[0]["data"],
        json!({"product_name": "Red T-shirt", "n": 1})
    );
    assert_eq!(events[0]["received_at"], "2026-11-26T12:00:00.000000Z");
    assert_eq!(app.totals().await, (1, 1), "one accepted, one duplicate");
    assert_eq!(
        app.profile("u").await.expect("user")["event_count"],
        1,
        "the duplicate is not the user's event"
    );
}

#[tokio::test]
async fn same_event_after_the_window_is_stored_again() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    app.track(&event("u", 1)).await.assert_success(false);
    app.clock.advance_secs(180);
    app.track(&event("u", 1)).await.assert_success(false);
    assert_eq!(app.count("events"), 2);
}

#[tokio::test]
async fn duplicates_do_not_extend_the_window() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    app.track(&event("u", 1)).await.assert_success(false);
    app.clock.advance_secs(100);
    app.track(&event("u", 1)).await.assert_success(true);
    app.clock.advance_secs(80); // 180 s after the accepted one, 80 s after the duplicate
    app.track(&event("u", 1)).await.assert_success(false);
    assert_eq!(app.count("events"), 2);
}

#[tokio::test]
async fn created_at_plays_no_part_in_the_window() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let with_time = |t: &str| {
        json!({"identity": {"id": "u"}, "event_name": "e", "data": {"a": 1},
               "extras": {"created_at": t}})
    };
    app.track(&with_time("2020-01-01T00:00:00Z"))
        .await
        .assert_success(false);
    app.track(&with_time("2024-01-01T00:00:00Z"))
        .await
        .assert_success(true);
}

#[tokio::test]
async fn name_spelling_key_order_and_number_form_do_not_make_a_new_event() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    app.track_raw(
        r#"{"identity":{"id":"u"},"event_name":"Purchased Item","data":{"a":1,"b":[1,2]}}"#,
    )
    .await
    .assert_success(false);
    app.track_raw(r#"{"identity":{"id":"u","email":"u@example.com"},"event_name":"purchased_item","data":{"b":[1.0,2e0],"a":1}}"#)
        .await
        .assert_success(true);
    // Another user, another event name, other data: all new.
    app.track_raw(
        r#"{"identity":{"id":"v"},"event_name":"Purchased Item","data":{"a":1,"b":[1,2]}}"#,
    )
    .await
    .assert_success(false);
    app.track_raw(
        r#"{"identity":{"id":"u"},"event_name":"Purchased Items","data":{"a":1,"b":[1,2]}}"#,
    )
    .await
    .assert_success(false);
    app.track_raw(
        r#"{"identity":{"id":"u"},"event_name":"Purchased Item","data":{"a":1,"b":[2,1]}}"#,
    )
    .await
    .assert_success(false);
    assert_eq!(app.count("events"), 4);
}

#[tokio::test]
async fn check_id_separates_events_without_data() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let with_check = |c: i64| {
        json!({"identity": {"id": "u"}, "event_name": "Order Completed", "data": {},
               "extras": {"check_id": c}})
    };
    app.track(&with_check(1)).await.assert_success(false);
    app.track(&with_check(2)).await.assert_success(false);
    app.track(&with_check(1)).await.assert_success(true);
    // Neither data nor check_id: the key is user + event name.
    app.track(&json!({"identity": {"id": "u"}, "event_name": "Ping"}))
        .await
        .assert_success(false);
    app.track(&json!({"identity": {"id": "u"}, "event_name": "ping", "data": null}))
        .await
        .assert_success(true);
    assert_eq!(app.count("events"), 3);
}

#[tokio::test]
async fn dedup_window_zero_turns_dedup_off() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn_with(TestConfig {
        dedup_window: Duration::ZERO,
        ..TestConfig::default()
    })
    .await;
    app.track(&event("u", 1)).await.assert_success(false);
    app.track(&event("u", 1)).await.assert_success(false);
    assert_eq!(app.count("events"), 2);
    assert_eq!(app.count("dedup"), 0);
}

#[tokio::test]
async fn a_short_window_is_honoured() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn_with(TestConfig {
        dedup_window: Duration::from_secs(5),
        ..TestConfig::default()
    })
    .await;
    app.track(&event("u", 1)).await.assert_success(false);
    app.clock.advance_secs(4);
    app.track(&event("u", 1)).await.assert_success(true);
    app.clock.advance_secs(1);
    app.track(&event("u", 1)).await.assert_success(false);
}

#[tokio::test]
async fn window_survives_a_restart() {
    crate::skip_without_postgres!();
    let mut app = TestApp::spawn().await;
    app.track(&event("u", 1)).await.assert_success(false);
    app.restart().await;
    app.clock.advance_secs(60);
    app.track(&event("u", 1)).await.assert_success(true);
    assert_eq!(app.count("events"), 1);
}

#[tokio::test]
async fn hundred_identical_concurrent_requests_store_exactly_one_event() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let body = event("u", 7).to_string();
    let answers = futures::future::join_all((0..100).map(|_| app.track_raw(body.clone()))).await;
    let mut duplicates = 0;
    for answer in &answers {
        assert_eq!(answer.status, 200, "{}", answer.body);
        if answer.headers.get("trackd-duplicate").is_some() {
            duplicates += 1;
        }
    }
    assert_eq!(duplicates, 99);
    assert_eq!(app.count("events"), 1);
    assert_eq!(app.count("dedup"), 1);
}

#[tokio::test]
async fn expired_dedup_records_are_not_counted_as_duplicates_after_restart() {
    crate::skip_without_postgres!();
    let mut app = TestApp::spawn().await;
    app.track(&event("u", 1)).await.assert_success(false);
    app.restart().await;
    app.clock.advance_secs(181);
    app.track(&event("u", 1)).await.assert_success(false);
    assert_eq!(app.count("events"), 2);
}

#[tokio::test]
async fn a_dedup_record_committed_by_another_process_is_honoured() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    // Warm the writer so its dedup state is built before the outside write.
    app.track(&event("other", 0)).await.assert_success(false);
    let tracked = |body: &serde_json::Value| {
        let serde_json::Value::Object(map) = body.clone() else {
            panic!("object")
        };
        trackd_core::TrackRequest::new(map)
            .validate(trackd_core::ProjectId::new(1), crate::helpers::START)
            .expect("valid")
    };
    // Another process on the same data (an import beside the server, another node)
    // commits an event: the server's answer to the same event is a duplicate.
    let other = app.another_store().await;
    let body = event("u", 1);
    assert_eq!(
        other.track(tracked(&body)).await.expect("committed"),
        trackd_core::InsertOutcome::Inserted
    );
    other.shutdown().await.expect("other store stops");
    app.track(&body).await.assert_success(true);
    if !crate::helpers::postgres() {
        // SQLite: a bare dedup record written beside the server (what an import writes
        // before its events) is honoured too: the writer catches up with the file.
        let body = event("u", 2);
        app.db()
            .execute(
                "INSERT INTO dedup (project_id, key, received_at, user_ref) VALUES (1, ?1, ?2, 0)",
                rusqlite::params![
                    &tracked(&body).dedup_key.as_bytes()[..],
                    crate::helpers::START.as_micros()
                ],
            )
            .expect("outside write");
        app.track(&body).await.assert_success(true);
    }
    let events = app.exported().await;
    let users: Vec<&serde_json::Value> = events.iter().map(|e| &e["user"]["id"]).collect();
    assert_eq!(users, ["other", "u"], "the server stored no second copy");
    assert_eq!(
        events[1]["data"],
        json!({"product_name": "Red T-shirt", "n": 1})
    );
    assert_eq!(app.profile("u").await.expect("user")["event_count"], 1);
}
