//! `GET /api/v2/events/live`: events pushed as they are committed.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::TestApp;

/// A live stream being read line by line.
pub struct LiveStream {
    response: reqwest::Response,
    pending: String,
}

impl LiveStream {
    pub async fn open(client: &reqwest::Client, base: &str, key: &str, query: &str) -> LiveStream {
        let response = client
            .get(format!("{base}/api/v2/events/live{query}"))
            .bearer_auth(key)
            .send()
            .await
            .expect("live stream");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/x-ndjson");
        let mut stream = LiveStream {
            response,
            pending: String::new(),
        };
        assert_eq!(stream.next().await, Some(json!({"type": "hello"})));
        stream
    }

    /// The next line, or `None` when the stream ended or nothing came for 10 s.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(at) = self.pending.find('\n') {
                let line: String = self.pending.drain(..=at).collect();
                return Some(serde_json::from_str(line.trim()).expect("a JSON line"));
            }
            match tokio::time::timeout(Duration::from_secs(10), self.response.chunk()).await {
                Ok(Ok(Some(bytes))) => self.pending.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }

    /// The next line that is not a heartbeat.
    pub async fn next_message(&mut self) -> Option<Value> {
        loop {
            let line = self.next().await?;
            if line["type"] != "heartbeat" {
                return Some(line);
            }
        }
    }
}

/// Tracks events named `name` (a new one every 300 ms) until the stream shows one: on
/// PostgreSQL commits announce their events once a watcher said so (within a second).
pub async fn first_live_event(
    stream: &mut LiveStream,
    send: impl Fn(u64) -> futures::future::BoxFuture<'static, ()>,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut n = 0;
    loop {
        send(n).await;
        n += 1;
        let got = tokio::time::timeout(Duration::from_millis(300), stream.next_message()).await;
        if let Ok(Some(line)) = got {
            if line["type"] == "event" {
                return line;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no event reached the live stream"
        );
    }
}

/// For [`first_live_event`]: the n-th event of `user` named `name`, tracked at `url`.
pub fn event_sender(
    url: String,
    user: &'static str,
    name: &'static str,
) -> impl Fn(u64) -> futures::future::BoxFuture<'static, ()> {
    let client = reqwest::Client::new();
    move |n: u64| -> futures::future::BoxFuture<'static, ()> {
        let (client, url) = (client.clone(), url.clone());
        Box::pin(async move {
            let body = json!({"identity": {"id": user}, "event_name": name, "data": {"n": n}});
            client
                .post(url)
                .body(body.to_string())
                .send()
                .await
                .expect("sent");
        })
    }
}

#[tokio::test]
async fn committed_events_and_dropped_duplicates_are_pushed_to_the_project_s_watchers() {
    crate::skip_without_postgres!();
    let mut app = TestApp::spawn().await;
    let (other_token, _) = app.add_project("other").await;
    let mut stream = LiveStream::open(&app.client, &app.addr, &app.secret, "").await;
    let url = app.url(&format!("/api/v2/events/track?auth_token={}", app.token));
    let warm = event_sender(url, "warm", "warm");
    first_live_event(&mut stream, warm).await;
    // Drain what the warm-up left in flight.
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_millis(500), stream.next_message()).await
    {}
    // Another project's event is not shown; this project's is, whole.
    app.track_as(
        &other_token,
        &json!({"identity": {"id": "x"}, "event_name": "theirs"}),
    )
    .await
    .assert_success(false);
    let body = json!({"identity": {"id": "ann", "email": "ann@example.com"},
                      "event_name": "Viewed product", "data": {"price": 12.50, "html": "<b>"},
                      "extras": {"source": "web"}});
    app.track(&body).await.assert_success(false);
    let line = stream.next_message().await.expect("the event");
    assert_eq!(line["type"], "event");
    let event = &line["event"];
    assert_eq!(event["event_name"], "Viewed product");
    assert_eq!(event["event_key"], "viewed_product");
    assert_eq!(
        event["user"],
        json!({"id": "ann", "email": "ann@example.com"})
    );
    assert_eq!(event["data"], json!({"price": 12.50, "html": "<b>"}));
    assert_eq!(event["source"], "web");
    assert!(event["id"].as_i64().is_some());
    // The resend is a duplicate: counted, not shown again.
    app.track(&body).await.assert_success(true);
    assert_eq!(
        stream.next_message().await,
        Some(json!({"type": "duplicates", "count": 1}))
    );
    // A shutdown ends the stream instead of waiting for it.
    let started = Instant::now();
    app.stop().await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(stream.next_message().await, None);
}

#[tokio::test]
async fn a_live_stream_can_follow_one_event_name_or_one_user() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let mut by_name = LiveStream::open(
        &app.client,
        &app.addr,
        &app.secret,
        "?event_name=Signed%20Up",
    )
    .await;
    let mut by_user = LiveStream::open(&app.client, &app.addr, &app.secret, "?user_id=bo").await;
    let url = app.url(&format!("/api/v2/events/track?auth_token={}", app.token));
    let sender = |user, name| event_sender(url.clone(), user, name);
    // Other names and users first: the filtered streams skip them.
    app.track(&json!({"identity": {"id": "al"}, "event_name": "Other"}))
        .await
        .assert_success(false);
    let first = first_live_event(&mut by_name, sender("al", "signed up")).await;
    assert_eq!(first["event"]["event_key"], "signed_up");
    assert_eq!(first["event"]["user"]["id"], "al");
    let first = first_live_event(&mut by_user, sender("bo", "Anything")).await;
    assert_eq!(first["event"]["user"]["id"], "bo");
}

#[tokio::test]
async fn the_live_stream_takes_a_secret_key_and_known_parameters_only() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let url = app.url("/api/v2/events/live");
    app.send(app.client.get(&url)).await.assert_error(
        401,
        "authorization: missing (send Authorization: Bearer <secret key>)",
    );
    app.send(app.client.get(&url).bearer_auth(&app.token))
        .await
        .assert_error(
            403,
            "authorization: a tracking token cannot read, use a secret key",
        );
    app.send(
        app.client
            .get(format!("{url}?limit=5"))
            .bearer_auth(&app.secret),
    )
    .await
    .assert_error(
        400,
        "limit: unknown parameter (this route takes event_name, user_id)",
    );
}

#[tokio::test]
async fn revoking_a_key_ends_the_live_streams_it_opened_before_they_show_another_event() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let store = app.store.as_ref().expect("running");
    let project = store.project("test").await.expect("project").id;
    let other = trackd_core::Token::generate(trackd_core::CredentialKind::Secret);
    store
        .add_credential(project, trackd_core::CredentialKind::Secret, &other)
        .await
        .expect("second key");
    let mut revoked = LiveStream::open(&app.client, &app.addr, &app.secret, "").await;
    let mut kept = LiveStream::open(&app.client, &app.addr, other.expose(), "").await;
    let url = app.url(&format!("/api/v2/events/track?auth_token={}", app.token));
    first_live_event(&mut revoked, event_sender(url.clone(), "warm", "warm")).await;
    first_live_event(&mut kept, event_sender(url, "warm", "warm")).await;
    for stream in [&mut revoked, &mut kept] {
        while let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(500), stream.next_message()).await
        {}
    }
    app.revoke_secret().await;
    // An event tracked after the revocation: the revoked key's stream never shows it and
    // ends; the other key's stream does.
    app.track(&json!({"identity": {"id": "after"}, "event_name": "after revocation"}))
        .await
        .assert_success(false);
    assert_eq!(
        revoked.next_message().await,
        Some(json!({"type": "revoked"}))
    );
    let end = tokio::time::timeout(Duration::from_secs(30), revoked.response.chunk()).await;
    assert!(
        matches!(end, Ok(Ok(None))),
        "the stream ended: {end:?} {:?}",
        revoked.pending
    );
    let line = kept.next_message().await.expect("the other key's stream");
    assert_eq!(line["event"]["event_name"], "after revocation");
}
