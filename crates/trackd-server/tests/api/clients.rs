//! What real third-party clients send, exactly as they send it, read back through the read
//! API: each case is a request that a checked client made and trackd once answered 200
//! while dropping part of it, or refused (issue 11). Runs on both stores.

use serde_json::{json, Value};

use crate::helpers::{Answer, TestApp};

/// POSTs (or PUTs) a raw body with a content type to a Vero route, the token in the query.
async fn send(app: &TestApp, method: &str, route: &str, content_type: &str, body: &str) -> Answer {
    let url = app.url(&format!("/api/v2/{route}?auth_token={}", app.token));
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    app.send(
        app.client
            .request(method, url)
            .header("content-type", content_type)
            .body(body.to_owned()),
    )
    .await
}

/// The profile of user `id` through the read API.
async fn profile(app: &TestApp, id: &str) -> Value {
    let answer = app.read(format!("/api/v2/users/{id}")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()
}

/// The events of user `id` through the read API, newest first.
async fn events_of(app: &TestApp, id: &str) -> Vec<Value> {
    let answer = app.read(format!("/api/v2/users/{id}/events")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()["events"].as_array().expect("events").clone()
}

/// A `multipart/form-data` body of text fields, as Postman sends it.
fn multipart(fields: &[(&str, &str)]) -> (String, String) {
    let boundary = "--------------------------471118463726537453417924";
    let mut body = String::new();
    for (name, value) in fields {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        ));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    (format!("multipart/form-data; boundary={boundary}"), body)
}

const FORM: &str = "application/x-www-form-urlencoded";

#[tokio::test]
async fn n8n_before_0_157_users_track_in_bracket_notation_keeps_its_data() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let body = format!(
        "auth_token={}&id=n8nl-1&email=nina%40example.com&data%5Bplan%5D=pro&data%5Bfirst_name%5D=Nina",
        app.token
    );
    let url = app.url("/api/v2/users/track");
    app.send(app.client.post(url).header("content-type", FORM).body(body))
        .await
        .assert_success(false);
    let user = profile(&app, "n8nl-1").await;
    assert_eq!(user["email"], "nina@example.com");
    assert_eq!(
        user["properties"],
        json!({"plan": "pro", "first_name": "Nina"})
    );
}

#[tokio::test]
async fn n8n_before_0_157_events_track_in_bracket_notation_finds_its_user() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    app.call(
        "POST",
        "users/track",
        &json!({"id": "n8nl-1", "email": "nina@example.com"}),
    )
    .await
    .assert_success(false);
    let body = "identity%5Bid%5D=n8nl-1&identity%5Bemail%5D=nina%40example.com\
                &email=nina%40example.com&event_name=Workflow%20ran\
                &data=%7B%22workflow%22%3A%22nightly%22%2C%22runs%22%3A3%7D";
    send(&app, "POST", "events/track", FORM, body)
        .await
        .assert_success(false);
    let events = events_of(&app, "n8nl-1").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event_name"], "Workflow ran");
    assert_eq!(
        events[0]["user"],
        json!({"id": "n8nl-1", "email": "nina@example.com"})
    );
    assert_eq!(events[0]["data"], json!({"workflow": "nightly", "runs": 3}));
    // Not a second, email-keyed user: the email names the one user.
    let user = profile(&app, "nina%40example.com").await;
    assert_eq!(
        (&user["id"], &user["event_count"]),
        (&json!("n8nl-1"), &json!(1))
    );
}

#[tokio::test]
async fn n8n_current_sends_tags_and_data_as_json_strings() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    app.call("POST", "users/track", &json!({"id": "n8n-1"}))
        .await
        .assert_success(false);
    app.call(
        "PUT",
        "users/tags/edit",
        &json!({"id": "n8n-1", "add": "[\"vip\",\"beta\"]"}),
    )
    .await
    .assert_success(false);
    assert_eq!(profile(&app, "n8n-1").await["tags"], json!(["beta", "vip"]));

    app.call(
        "POST",
        "events/track",
        &json!({"identity": {"id": "n8n-1"}, "event_name": "Nightly run",
                "data": "{\"workflow\":\"nightly\"}", "extras": "{\"source\":\"n8n\"}"}),
    )
    .await
    .assert_success(false);
    let events = events_of(&app, "n8n-1").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"], json!({"workflow": "nightly"}));
    assert_eq!(events[0]["source"], "n8n");
}

#[tokio::test]
async fn vero_postman_collection_multipart_bodies_are_read() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let (content_type, body) = multipart(&[
        ("auth_token", &app.token),
        ("id", "1234"),
        ("email", "test@example.com"),
        ("data", r#"{"first_name":"Jeff","last_name":"Kane"}"#),
    ]);
    let url = app.url("/api/v2/users/track");
    app.send(
        app.client
            .post(url)
            .header("content-type", content_type)
            .body(body),
    )
    .await
    .assert_success(false);
    let (content_type, body) = multipart(&[
        ("auth_token", &app.token),
        ("id", "1234"),
        ("add", r#"["test-tag"]"#),
    ]);
    let url = app.url("/api/v2/users/tags/edit");
    app.send(
        app.client
            .put(url)
            .header("content-type", content_type)
            .body(body),
    )
    .await
    .assert_success(false);
    let (content_type, body) = multipart(&[
        ("auth_token", &app.token),
        ("identity", r#"{"id":"1234","email":"test@example.com"}"#),
        ("event_name", "Viewed product"),
        ("data", r#"{"product_name":"Red T-shirt","price":19.99}"#),
        (
            "extras",
            r#"{"source":"postman","created_at":"2023-05-30T04:46:31+0000"}"#,
        ),
    ]);
    let url = app.url("/api/v2/events/track");
    app.send(
        app.client
            .post(url)
            .header("content-type", content_type)
            .body(body),
    )
    .await
    .assert_success(false);

    let user = profile(&app, "1234").await;
    assert_eq!(user["tags"], json!(["test-tag"]));
    assert_eq!(
        user["properties"],
        json!({"first_name": "Jeff", "last_name": "Kane"})
    );
    let events = events_of(&app, "1234").await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0]["data"],
        json!({"product_name": "Red T-shirt", "price": 19.99})
    );
    assert_eq!(events[0]["source"], "postman");
    assert_eq!(events[0]["created_at"], "2023-05-30T04:46:31.000000Z");
}

#[tokio::test]
async fn rudderstack_mobile_identify_sends_one_channel_as_an_object() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    app.call(
        "POST",
        "users/track",
        &json!({"id": "rs-2", "email": "rs@example.com",
                "channels": {"address": "apns-token-abc", "device": "iPhone",
                             "platform": "iOS", "type": "push"}}),
    )
    .await
    .assert_success(false);
    assert_eq!(
        profile(&app, "rs-2").await["channels"],
        json!([{"address": "apns-token-abc", "device": "iPhone", "platform": "iOS",
                "type": "push"}])
    );
}

#[tokio::test]
async fn go_client_add_tags_skips_empty_strings_and_a_null_list() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    app.call("POST", "users/track", &json!({"id": "go-1"}))
        .await
        .assert_success(false);
    app.call(
        "PUT",
        "users/tags/edit.json",
        &json!({"id": "go-1", "add": ["", "", "t-shirt fanatic", "so many tags"], "remove": null}),
    )
    .await
    .assert_success(false);
    assert_eq!(
        profile(&app, "go-1").await["tags"],
        json!(["so many tags", "t-shirt fanatic"])
    );
}

#[tokio::test]
async fn reidentify_onto_the_same_id_is_a_200_that_changes_nothing() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    app.call(
        "POST",
        "users/track",
        &json!({"id": "dm@example.com", "data": {"a": 1}}),
    )
    .await
    .assert_success(false);
    let before = profile(&app, "dm%40example.com").await;
    app.call(
        "PUT",
        "users/reidentify",
        &json!({"id": "dm@example.com", "new_id": "dm@example.com"}),
    )
    .await
    .assert_success(false);
    assert_eq!(profile(&app, "dm%40example.com").await, before);
}

#[tokio::test]
async fn an_event_named_by_email_alone_belongs_to_the_user_with_that_email() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    app.call(
        "POST",
        "users/track",
        &json!({"id": "u-1", "email": "eve@example.com"}),
    )
    .await
    .assert_success(false);
    let event = json!({"identity": {"email": "eve@example.com"}, "event_name": "Signed in"});
    app.track(&event).await.assert_success(false);
    // The same body again inside the window is a duplicate, as for any retry.
    app.track(&event).await.assert_success(true);
    let events = events_of(&app, "u-1").await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0]["user"],
        json!({"id": "u-1", "email": "eve@example.com"})
    );
    let user = profile(&app, "eve%40example.com").await;
    assert_eq!(
        (&user["id"], &user["event_count"]),
        (&json!("u-1"), &json!(1))
    );

    // Deleting the user removes the event and its dedup record: the same event is then
    // accepted again, for a new user keyed by the email.
    app.call("POST", "users/delete", &json!({"id": "u-1"}))
        .await
        .assert_success(false);
    app.track(&event).await.assert_success(false);
    assert_eq!(profile(&app, "eve%40example.com").await["id"], Value::Null);
    assert_eq!(events_of(&app, "eve%40example.com").await.len(), 1);

    // An email-keyed user wins over another user that only has the email as a field.
    app.call(
        "POST",
        "users/track",
        &json!({"id": "u-2", "email": "eve@example.com"}),
    )
    .await
    .assert_success(false);
    app.track(&json!({"identity": {"email": "eve@example.com"}, "event_name": "Again"}))
        .await
        .assert_success(false);
    assert_eq!(events_of(&app, "eve%40example.com").await.len(), 2);
    assert!(events_of(&app, "u-2").await.is_empty());
}

#[tokio::test]
async fn unix_seconds_in_a_form_are_read_as_unix_seconds() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    send(
        &app,
        "POST",
        "events/track",
        FORM,
        "identity[id]=f-1&event_name=x&extras[created_at]=1388534400&extras[source]=form",
    )
    .await
    .assert_success(false);
    let events = events_of(&app, "f-1").await;
    assert_eq!(events[0]["created_at"], "2014-01-01T00:00:00.000000Z");
    assert_eq!(events[0]["source"], "form");
}

#[tokio::test]
async fn a_half_readable_form_is_refused_and_stores_nothing() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    send(
        &app,
        "POST",
        "users/track",
        FORM,
        "id=h-1&data[plan]=pro&data[plan][tier]=gold",
    )
    .await
    .assert_error(
        400,
        "data.plan: given both as a value and in bracket notation",
    );
    app.read("/api/v2/users/h-1")
        .await
        .assert_error(404, "id: no such user");
}

#[tokio::test]
async fn the_server_root_sends_a_browser_to_the_console() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let answer = app.send(client.get(app.url("/"))).await;
    assert_eq!(answer.status, 303);
    assert_eq!(answer.headers["location"], "/ui");
    assert_eq!(
        answer.body,
        r#"{"status":303,"message":"/: the web console is at /ui, the Vero API at /api/v2"}"#
    );
    // A browser following it lands on the console's page.
    let page = app.send(app.client.get(app.url("/"))).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<title>"), "{}", page.body);
}

#[tokio::test]
async fn a_token_created_while_serving_works_for_every_concurrent_first_request() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    for round in 0..5 {
        // Created through the store, as `trackd token add` or another node would: the
        // server's cache has not seen it.
        let (token, _) = app.add_project(&format!("new-{round}")).await;
        let requests = (0..32).map(|i| {
            let token = token.clone();
            let app = &app;
            async move {
                app.track_as(
                    &token,
                    &json!({"identity": {"id": format!("c-{i}")}, "event_name": "first"}),
                )
                .await
            }
        });
        crate::helpers::assert_all_200(&futures::future::join_all(requests).await);
    }
    // An unknown token is still refused, after its own reload.
    app.track_as(
        "tk_never_created",
        &json!({"identity": {"id": "x"}, "event_name": "e"}),
    )
    .await
    .assert_error(401, "auth_token: unknown credential");
}

/// Sends `body` to `route` in one of the forms a client may use: 0 JSON, 1 JSON with its
/// object and list fields as JSON strings, 2 a urlencoded form in bracket notation, 3 a
/// multipart form with those fields as JSON strings.
async fn send_as(app: &TestApp, form: usize, method: &str, route: &str, body: &Value) -> Answer {
    use crate::helpers::{bracket_form, json_string_fields, multipart};
    match form {
        0 => send(app, method, route, "application/json", &body.to_string()).await,
        1 => {
            let text = json_string_fields(body).to_string();
            send(app, method, route, "application/json", &text).await
        }
        2 => send(app, method, route, FORM, &bracket_form(body)).await,
        _ => {
            let bytes = multipart(body, "Xb0undary");
            let text = String::from_utf8(bytes).expect("utf-8");
            let content_type = "multipart/form-data; boundary=Xb0undary";
            send(app, method, route, content_type, &text).await
        }
    }
}

#[tokio::test]
async fn every_form_of_every_body_is_read_whole() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    // Text values only: a form carries text, so the forms can be compared exactly.
    for form in 0..4 {
        let id = format!("whole-{form}");
        let email = format!("whole-{form}@example.com");
        send_as(
            &app,
            form,
            "POST",
            "users/track",
            &json!({"id": id, "email": email, "phone_number": "+4712345678",
                    "channels": [{"type": "push", "address": "tok-1", "platform": "ios"},
                                 {"type": "email", "address": email}],
                    "data": {"plan": "pro", "address": {"city": "Oslo", "zip": "0150"},
                             "langs": ["no", "en"]}}),
        )
        .await
        .assert_success(false);
        send_as(
            &app,
            form,
            "PUT",
            "users/edit",
            &json!({"id": id, "changes": {"plan": "team", "seats": "5"}}),
        )
        .await
        .assert_success(false);
        send_as(
            &app,
            form,
            "PUT",
            "users/tags/edit",
            &json!({"id": id, "add": ["vip", "beta", "gone"], "remove": ["gone"]}),
        )
        .await
        .assert_success(false);
        send_as(
            &app,
            form,
            "POST",
            "events/track",
            &json!({"identity": {"id": id, "email": email}, "event_name": "Paid",
                    "data": {"amount": "19.99", "items": ["a", "b"], "meta": {"k": "v"}},
                    "extras": {"source": "form-test", "created_at": "2023-05-30T04:46:31Z"}}),
        )
        .await
        .assert_success(false);
        let user = profile(&app, &id).await;
        assert_eq!(user["email"], email, "form {form}");
        assert_eq!(user["phone_number"], "+4712345678", "form {form}");
        assert_eq!(
            user["channels"],
            json!([{"type": "push", "address": "tok-1", "platform": "ios"},
                   {"type": "email", "address": email}]),
            "form {form}"
        );
        assert_eq!(
            user["properties"],
            json!({"plan": "team", "address": {"city": "Oslo", "zip": "0150"},
                   "langs": ["no", "en"], "seats": "5"}),
            "form {form}"
        );
        assert_eq!(user["tags"], json!(["beta", "vip"]), "form {form}");
        let events = events_of(&app, &id).await;
        assert_eq!(events.len(), 1, "form {form}");
        assert_eq!(
            events[0]["data"],
            json!({"amount": "19.99", "items": ["a", "b"], "meta": {"k": "v"}}),
            "form {form}"
        );
        assert_eq!(events[0]["source"], "form-test", "form {form}");
        assert_eq!(events[0]["created_at"], "2023-05-30T04:46:31.000000Z");
    }
}
