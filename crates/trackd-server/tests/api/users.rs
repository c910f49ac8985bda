//! `users/*`: profiles, tags, subscriptions, delete and reidentify, as real clients call them.

use serde_json::{json, Value};

use crate::helpers::{event, TestApp, START};

#[tokio::test]
async fn users_track_creates_then_merges_shallowly() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    app.call("POST", "users/track", &json!({"id": "42", "email": "ann@example.com",
        "phone_number": "+15550100", "channels": [{"type": "push", "address": "D1", "platform": "ios"}],
        "data": {"first_name": "Ann", "address": {"city": "Paris"}}}))
        .await
        .assert_success(false);
    app.clock.advance_secs(5);
    // The JavaScript SDK always sends `channels: []`: it changes nothing.
    app.call(
        "POST",
        "users/track",
        &json!({"id": "42", "email": null, "channels": [],
        "data": {"address": {"zip": "75001"}, "age": 30}}),
    )
    .await
    .assert_success(false);
    let user = app.user("42").expect("user");
    assert_eq!(user.id.as_deref(), Some("42"));
    assert_eq!(user.email.as_deref(), Some("ann@example.com"));
    assert_eq!(user.phone_number.as_deref(), Some("+15550100"));
    assert_eq!(
        user.channels,
        json!([{"type": "push", "address": "D1", "platform": "ios"}])
    );
    assert_eq!(
        user.properties,
        json!({"first_name": "Ann", "address": {"zip": "75001"}, "age": 30})
    );
    assert!(user.subscribed);
    assert_eq!(user.first_seen, START.as_micros());
    assert_eq!(user.last_seen, START.as_micros() + 5_000_000);
    // A channel with the same type and address is replaced, a new one appended.
    app.call(
        "POST",
        "users/track",
        &json!({"id": "42", "channels": [
        {"type": "push", "address": "D1", "platform": "android"},
        {"type": "email", "address": "ann@example.com"}]}),
    )
    .await
    .assert_success(false);
    assert_eq!(
        app.user("42").expect("user").channels,
        json!([{"type": "push", "address": "D1", "platform": "android"},
               {"type": "email", "address": "ann@example.com"}])
    );
    assert_eq!(app.count("users"), 1);
}

#[tokio::test]
async fn users_edit_merges_changes_and_404s_for_an_unknown_user() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    app.call(
        "POST",
        "users/track",
        &json!({"id": "42", "email": "ann@example.com", "data": {"a": 1, "b": 2}}),
    )
    .await
    .assert_success(false);
    for method in ["PUT", "POST"] {
        app.call(
            method,
            "users/edit",
            &json!({"id": "42", "changes": {"b": 3, "plan": method}}),
        )
        .await
        .assert_success(false);
    }
    assert_eq!(
        app.user("42").expect("user").properties,
        json!({"a": 1, "b": 3, "plan": "POST"})
    );
    // By email alone: the user whose email field it is.
    app.call(
        "PUT",
        "users/edit",
        &json!({"email": "ann@example.com", "changes": {"via": "email"}}),
    )
    .await
    .assert_success(false);
    assert_eq!(app.user("42").expect("user").properties["via"], "email");
    app.call(
        "PUT",
        "users/edit",
        &json!({"id": "nope", "changes": {"a": 1}}),
    )
    .await
    .assert_error(404, "id: no such user");
    app.call(
        "PUT",
        "users/edit",
        &json!({"email": "nope@example.com", "changes": {"a": 1}}),
    )
    .await
    .assert_error(404, "email: no such user");
    assert!(app.user("nope").is_none());
    app.call("PUT", "users/edit", &json!({"id": "42"}))
        .await
        .assert_error(400, "changes: is required");
    app.call("PUT", "users/edit", &json!({"changes": {}}))
        .await
        .assert_error(400, "id: an id or an email is required");
}

#[tokio::test]
async fn tags_are_a_set_added_then_removed() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    app.call("POST", "users/track", &json!({"id": "42"}))
        .await
        .assert_success(false);
    // The Python client sends only `add`, then only `remove`.
    app.call(
        "PUT",
        "users/tags/edit",
        &json!({"id": "42", "add": ["vip", "beta", "vip"]}),
    )
    .await
    .assert_success(false);
    app.call(
        "PUT",
        "users/tags/edit",
        &json!({"id": "42", "remove": ["beta"]}),
    )
    .await
    .assert_success(false);
    assert_eq!(app.user("42").expect("user").tags, json!(["vip"]));
    // Both empty: a 200 that changes nothing.
    app.call(
        "POST",
        "users/tags/edit",
        &json!({"id": "42", "add": [], "remove": []}),
    )
    .await
    .assert_success(false);
    assert_eq!(app.user("42").expect("user").tags, json!(["vip"]));
    app.call(
        "PUT",
        "users/tags/edit",
        &json!({"id": "nope", "add": ["x"]}),
    )
    .await
    .assert_error(404, "id: no such user");
    app.call("PUT", "users/tags/edit", &json!({"id": "42", "add": [1]}))
        .await
        .assert_error(400, "add[0]: must be a string");
}

#[tokio::test]
async fn unsubscribe_and_resubscribe_set_the_flag_and_keep_the_choice_of_unknown_users() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    app.call("POST", "users/unsubscribe", &json!({"id": "later"}))
        .await
        .assert_success(false);
    assert!(!app.user("later").expect("created").subscribed);
    // The user's first event does not undo the choice.
    app.track(&event("later", 1)).await.assert_success(false);
    assert!(!app.user("later").expect("user").subscribed);
    app.call("POST", "users/resubscribe", &json!({"id": "later"}))
        .await
        .assert_success(false);
    assert!(app.user("later").expect("user").subscribed);
    app.call(
        "POST",
        "users/unsubscribe",
        &json!({"email": "only@example.com"}),
    )
    .await
    .assert_success(false);
    let by_email = app.user("only@example.com").expect("created by email");
    assert_eq!(by_email.email.as_deref(), Some("only@example.com"));
    assert!(!by_email.subscribed);
}

#[tokio::test]
async fn delete_removes_profile_events_and_dedup_records() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    app.track(&event("42", 1)).await.assert_success(false);
    app.track(&event("42", 2)).await.assert_success(false);
    app.track(&event("43", 1)).await.assert_success(false);
    // The Python client: DELETE with a JSON body and `"email": null`.
    app.call(
        "DELETE",
        "users/delete",
        &json!({"id": "42", "email": null}),
    )
    .await
    .assert_success(false);
    assert!(app.user("42").is_none());
    assert_eq!(app.count("events"), 1);
    assert_eq!(app.count("dedup"), 1);
    // Its dedup records are gone: the same event again is new, not a duplicate.
    app.track(&event("42", 1)).await.assert_success(false);
    app.call("POST", "users/delete", &json!({"id": "nope"}))
        .await
        .assert_error(404, "id: no such user");
    app.call("GET", "users/delete", &json!({"id": "42"}))
        .await
        .assert_error(
            405,
            "/api/v2/users/delete: method not allowed, use POST, DELETE",
        );
}

#[tokio::test]
async fn delete_really_deletes_the_bytes() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let email = "forget.me.please@example.com";
    app.call(
        "POST",
        "users/track",
        &json!({"id": "gdpr-1", "email": email, "data": {"n": "Forgettable Name"}}),
    )
    .await
    .assert_success(false);
    for n in 0..400 {
        app.track(
            &json!({"identity": {"id": "gdpr-1", "email": email}, "event_name": "e",
                          "data": {"secret": format!("payload-of-forgettable-user-{n}")}}),
        )
        .await
        .assert_success(false);
        app.track(&event("keeper", n)).await.assert_success(false);
    }
    app.call("POST", "users/delete", &json!({"id": "gdpr-1"}))
        .await
        .assert_success(false);
    // Gone from every read route; the other user's events stay.
    assert_eq!(app.profile("gdpr-1").await, None);
    assert_eq!(app.profile(email).await, None, "not found by email either");
    app.read("/api/v2/users/gdpr-1/events")
        .await
        .assert_error(404, "id: no such user");
    assert_eq!(
        app.read_json("/api/v2/events?user_id=gdpr-1").await,
        json!({"events": [], "next_cursor": null})
    );
    let export = app.read("/api/v2/events/export").await;
    assert_eq!(export.status, 200);
    assert_eq!(export.body.lines().count(), 400);
    for needle in [
        email,
        "Forgettable Name",
        "payload-of-forgettable-user",
        "gdpr-1",
    ] {
        assert!(!export.body.contains(needle), "{needle} still exported");
    }
    assert_eq!(
        app.profile("keeper").await.expect("kept")["event_count"],
        400
    );
    if !crate::helpers::postgres() {
        app.assert_not_in_files(&[
            email.as_bytes(),
            b"Forgettable Name",
            b"payload-of-forgettable-user",
        ])
        .await;
    }
    // Its dedup records went with it: the same event again is new, not a duplicate.
    app.track(
        &json!({"identity": {"id": "gdpr-1", "email": email}, "event_name": "e",
                "data": {"secret": "payload-of-forgettable-user-0"}}),
    )
    .await
    .assert_success(false);
}

#[tokio::test]
async fn reidentify_renames_and_keeps_dedup_records_under_the_old_id() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    app.track(&event("anon-1", 1)).await.assert_success(false);
    let before = app.user("anon-1").expect("user");
    app.call(
        "PUT",
        "users/reidentify",
        &json!({"id": "anon-1", "new_id": "42"}),
    )
    .await
    .assert_success(false);
    assert!(app.user("anon-1").is_none());
    let after = app.user("42").expect("renamed");
    assert_eq!(after.rowid, before.rowid);
    assert_eq!(after.id.as_deref(), Some("42"));
    let events = app.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].user_key, "42", "events follow the user");
    // A late retry sent with the old id is still a duplicate.
    app.track(&event("anon-1", 1)).await.assert_success(true);
    assert_eq!(app.count("events"), 1);
    assert!(app.user("anon-1").is_none(), "a duplicate creates no user");
}

#[tokio::test]
async fn reidentify_merges_into_an_existing_new_id() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    app.call(
        "POST",
        "users/track",
        &json!({"id": "old", "email": "old@example.com",
        "data": {"plan": "free", "from_old": true}}),
    )
    .await
    .assert_success(false);
    app.call(
        "PUT",
        "users/tags/edit",
        &json!({"id": "old", "add": ["a", "b"]}),
    )
    .await
    .assert_success(false);
    app.call("POST", "users/unsubscribe", &json!({"id": "old"}))
        .await
        .assert_success(false);
    app.track(&event("old", 1)).await.assert_success(false);
    app.clock.advance_secs(10);
    app.call(
        "POST",
        "users/track",
        &json!({"id": "new", "data": {"plan": "pro"}}),
    )
    .await
    .assert_success(false);
    app.call(
        "PUT",
        "users/tags/edit",
        &json!({"id": "new", "add": ["c", "b"]}),
    )
    .await
    .assert_success(false);
    app.track(&event("new", 2)).await.assert_success(false);
    // The 2015 docs send reidentify as POST.
    app.call(
        "POST",
        "users/reidentify",
        &json!({"id": "old", "new_id": "new"}),
    )
    .await
    .assert_success(false);
    assert!(app.user("old").is_none());
    let merged = app.user("new").expect("merged");
    assert_eq!(merged.properties, json!({"plan": "pro", "from_old": true}));
    assert_eq!(merged.tags, json!(["a", "b", "c"]));
    assert!(!merged.subscribed, "unsubscribed if either was");
    assert_eq!(
        merged.email.as_deref(),
        Some("new@example.com"),
        "new_id's fields win"
    );
    assert_eq!(merged.first_seen, START.as_micros());
    let users: Vec<String> = app.events().into_iter().map(|e| e.user_key).collect();
    assert_eq!(users, vec!["new", "new"]);
    assert_eq!(app.count("users"), 1);
    // The old id's dedup record moved with the events: deleting the user removes it too.
    app.call("POST", "users/delete", &json!({"id": "new"}))
        .await
        .assert_success(false);
    assert_eq!(app.count("dedup"), 0);
    assert_eq!(app.count("events"), 0);
}

#[tokio::test]
async fn reidentify_onto_the_same_id_changes_nothing_and_an_unknown_user_is_404() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    // A 2015 Node client renames a user onto its own id: 200, nothing changes.
    app.call(
        "PUT",
        "users/reidentify",
        &json!({"id": "a", "new_id": "a"}),
    )
    .await
    .assert_success(false);
    app.read("/api/v2/users/a")
        .await
        .assert_error(404, "id: no such user");
    app.call(
        "PUT",
        "users/reidentify",
        &json!({"id": "a", "new_id": "b"}),
    )
    .await
    .assert_error(404, "id: no such user");
    app.call("PUT", "users/reidentify", &json!({"id": "a"}))
        .await
        .assert_error(400, "new_id: is required");
}

#[tokio::test]
async fn every_users_route_answers_its_path_variants_and_preflights() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    app.call("POST", "users/track", &json!({"id": "42"}))
        .await
        .assert_success(false);
    for route in [
        "users/track",
        "users/edit",
        "users/tags/edit",
        "users/unsubscribe",
        "users/resubscribe",
        "users/delete",
        "users/reidentify",
    ] {
        for path in [
            format!("/api/v2/{route}"),
            format!("/api/v2/{route}.json"),
            format!("/api/v2/{route}/"),
        ] {
            let answer = app
                .send(
                    app.client
                        .request(reqwest::Method::OPTIONS, app.url(&path))
                        .header("origin", "http://127.0.0.1:18910")
                        .header("access-control-request-method", "PUT")
                        .header("access-control-request-headers", "content-type"),
                )
                .await;
            assert!((200..300).contains(&answer.status), "{path}");
            assert_eq!(
                answer
                    .headers
                    .get("access-control-allow-origin")
                    .and_then(|v| v.to_str().ok()),
                Some("*")
            );
        }
    }
    // The Ruby gem: `.json` paths, `tracking_api_key` in the body.
    let url = app.url("/api/v2/users/tags/edit.json");
    app.send(
        app.client.put(url).body(
            json!({"tracking_api_key": app.token, "id": "42", "add": ["vip"], "remove": []})
                .to_string(),
        ),
    )
    .await
    .assert_success(false);
    assert_eq!(app.user("42").expect("user").tags, json!(["vip"]));
    app.send(
        app.client
            .post(app.url("/api/v2/users/edit/"))
            .body(json!({"auth_token": app.token, "id": "42", "changes": {"x": 1}}).to_string()),
    )
    .await
    .assert_success(false);
    app.send(app.client.get(app.url("/api/v2/users/track")))
        .await
        .assert_error(405, "/api/v2/users/track: method not allowed, use POST");
}

#[tokio::test]
async fn form_encoded_profile_calls_from_the_2015_docs() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let form = |route: &str, method: reqwest::Method, body: String| {
        app.client
            .request(method, app.url(&format!("/api/v2/{route}")))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    };
    let t = &app.token;
    app.send(form(
        "users/unsubscribe.json",
        reqwest::Method::POST,
        format!("auth_token={t}&id=rb-2&development_mode=false"),
    ))
    .await
    .assert_success(false);
    assert!(!app.user("rb-2").expect("user").subscribed);
    app.call("POST", "users/track", &json!({"id": "1234"}))
        .await
        .assert_success(false);
    app.send(form(
        "users/tags/edit",
        reqwest::Method::PUT,
        format!("auth_token={t}&id=1234&add=%5B%22prospect%22%5D"),
    ))
    .await
    .assert_success(false);
    assert_eq!(app.user("1234").expect("user").tags, json!(["prospect"]));
    app.send(form(
        "users/reidentify",
        reqwest::Method::POST,
        format!("auth_token={t}&id=1234&new_id=5678"),
    ))
    .await
    .assert_success(false);
    assert_eq!(app.user("5678").expect("renamed").tags, json!(["prospect"]));
    app.send(form(
        "users/tags/edit",
        reqwest::Method::PUT,
        format!("auth_token={t}&id=5678&add=%5B1%5D"),
    ))
    .await
    .assert_error(400, "add[0]: must be a string");
}

/// No event without its user, and no event or dedup record of a deleted user.
fn assert_consistent(app: &TestApp) {
    // PostgreSQL's dedup records name their user by key, SQLite's by row id.
    let dedup_orphans = if crate::helpers::postgres() {
        "SELECT count(*) FROM dedup d WHERE NOT EXISTS \
           (SELECT 1 FROM users u WHERE u.project_id = d.project_id AND u.user_key = d.user_key)"
    } else {
        "SELECT count(*) FROM dedup WHERE user_ref NOT IN (SELECT id FROM users)"
    };
    let orphans = app
        .scalar("SELECT count(*) FROM events WHERE user_ref NOT IN (SELECT id FROM users)")
        + app.scalar(dedup_orphans);
    assert_eq!(orphans, 0, "orphan events or dedup records");
}

#[tokio::test]
async fn delete_racing_with_tracking_leaves_a_consistent_state() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    for round in 0..5 {
        let tracks = (0..40).map(|n| app.track_raw(event("racer", round * 100 + n).to_string()));
        let body = json!({"id": "racer"});
        let delete = app.call("POST", "users/delete", &body);
        let (answers, deleted) = tokio::join!(futures::future::join_all(tracks), delete);
        crate::helpers::assert_all_200(&answers);
        assert!(
            deleted.status == 200 || deleted.status == 404,
            "{}",
            deleted.body
        );
        assert_consistent(&app);
        // Whatever was tracked after the delete belongs to a (re-created) user.
        let events = app.count("events");
        assert_eq!(events > 0, app.user("racer").is_some());
    }
}

#[tokio::test]
async fn reidentify_racing_with_tracking_leaves_a_consistent_state() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    app.track(&event("r-0", 0)).await.assert_success(false);
    let mut duplicates = 0;
    for round in 0..5 {
        let old = format!("r-{round}");
        let new = format!("r-{}", round + 1);
        let tracks = (0..20).flat_map(|n| {
            [
                app.track_raw(event(&old, round * 100 + n).to_string()),
                app.track_raw(event(&new, round * 100 + n).to_string()),
            ]
        });
        let body = json!({"id": old, "new_id": new});
        let rename = app.call("PUT", "users/reidentify", &body);
        let (answers, renamed) = tokio::join!(futures::future::join_all(tracks), rename);
        crate::helpers::assert_all_200(&answers);
        duplicates += answers
            .iter()
            .filter(|a| a.headers.get("trackd-duplicate").is_some())
            .count();
        assert_eq!(renamed.status, 200, "{}", renamed.body);
        assert_consistent(&app);
    }
    // The first round's event 0 of r-0 repeats the one tracked before the race; every
    // other event is new. Each is stored once and belongs to a user the API finds, whose
    // event count is the number of its events.
    assert_eq!(duplicates, 1);
    let events = app.exported().await;
    assert_eq!(events.len(), 200);
    assert_eq!(app.totals().await, (200, 1));
    let mut per_user: std::collections::BTreeMap<String, i64> = Default::default();
    for e in &events {
        let id = e["user"]["id"].as_str().expect("an event's user has an id");
        *per_user.entry(id.to_owned()).or_default() += 1;
    }
    assert!(per_user.contains_key("r-5"), "{per_user:?}");
    for (id, count) in &per_user {
        let user = app.profile(id).await.expect("an event's user exists");
        assert_eq!(user["event_count"], *count, "{id}");
    }
}

#[tokio::test]
async fn ids_of_deleted_events_are_never_reused() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let ids = |events: Vec<Value>| -> Vec<i64> {
        events
            .iter()
            .map(|e| e["id"].as_i64().expect("an event id"))
            .collect()
    };
    app.track(&event("keeper", 1)).await.assert_success(false);
    app.track(&event("gone", 2)).await.assert_success(false);
    app.track(&event("gone", 3)).await.assert_success(false);
    // What an export taken before the deletion named.
    let before = ids(app.exported().await);
    assert_eq!(before.len(), 3);
    app.call("POST", "users/delete", &json!({"id": "gone"}))
        .await
        .assert_success(false);
    app.track(&event("later", 4)).await.assert_success(false);
    let after = ids(app.exported().await);
    assert_eq!(after.len(), 2);
    assert_eq!(after[0], before[0], "the kept event keeps its id");
    let newest = before.iter().max().expect("ids");
    assert!(
        after[1] > *newest,
        "the new event's id {} reuses or precedes a deleted one ({before:?})",
        after[1]
    );
}
