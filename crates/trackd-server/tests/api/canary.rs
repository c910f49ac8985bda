//! The log canary: distinctive tokens, keys, ids, emails and payloads sent through every
//! route, accepted and refused, at trace level, never appear in what the server logs.

use std::time::Duration;

use serde_json::json;

use crate::helpers::ChildServer;

#[tokio::test]
async fn no_credential_id_email_or_payload_reaches_the_logs_on_any_route() {
    let dir = tempfile::tempdir().expect("dir");
    let server = ChildServer::spawn(dir.path(), &[("TRACKD_LOG", "trace")]);
    let token = server.printed("tracking token:");
    let secret = server.printed("secret key:");
    let client = reqwest::Client::new();
    let base = server.addr.clone();
    let id = "canary-id-5b1f";
    let email = "canary.mail.77e2@example.com";
    let new_id = "canary-newid-c0de";
    let payload = "canary-payload-9a9a";
    let tag = "canary-tag-4242";
    let wrong = "tk_canarywrongtoken31337";
    let bad_email = "canary-bad-email-at-nowhere";
    let mut sent = 0;
    let mut send = |method: &str, path: String, body: serde_json::Value| {
        sent += 1;
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        client
            .request(method, format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let q = format!("auth_token={token}");
    let writes = [
        (
            "POST",
            "users/track",
            json!({"id": id, "email": email, "data": {"p": payload}}),
        ),
        (
            "POST",
            "events/track",
            json!({"identity": {"id": id, "email": email}, "event_name": payload, "data": {"p": payload}}),
        ),
        (
            "PUT",
            "users/edit",
            json!({"id": id, "changes": {"p": payload}}),
        ),
        ("PUT", "users/tags/edit", json!({"id": id, "add": [tag]})),
        ("POST", "users/unsubscribe", json!({"email": email})),
        ("POST", "users/resubscribe", json!({"email": email})),
        // Refused: a bad email, an unknown user, a duplicate key holding a payload.
        (
            "POST",
            "events/track",
            json!({"identity": {"email": bad_email}, "event_name": "e"}),
        ),
        ("PUT", "users/edit", json!({"id": payload, "changes": {}})),
    ];
    for (method, route, body) in &writes {
        let answer = send(method, format!("/api/v2/{route}?{q}"), body.clone())
            .await
            .expect("sent");
        assert!(answer.status().as_u16() < 500);
    }
    // Wrong and misplaced credentials.
    send(
        "POST",
        format!("/api/v2/events/track?auth_token={wrong}"),
        json!({"identity": {"id": id}, "event_name": "e"}),
    )
    .await
    .expect("sent");
    send(
        "POST",
        format!("/api/v2/events/track?auth_token={secret}"),
        json!({"identity": {"id": id}, "event_name": "e"}),
    )
    .await
    .expect("sent");
    // A duplicate key named after the payload (its path is in the 400 message).
    client
        .post(format!("{base}/api/v2/events/track?{q}"))
        .body(format!(r#"{{"{payload}":1,"{payload}":2}}"#))
        .send()
        .await
        .expect("sent");
    // Every read route, with the key in the header, and once in the query (refused).
    for path in [
        format!("/api/v2/users/{id}"),
        format!("/api/v2/users/{id}/events"),
        format!("/api/v2/events?user_id={id}&event_name={payload}"),
        "/api/v2/events/export".to_owned(),
        "/api/v2/stats/events".to_owned(),
    ] {
        let answer = client
            .get(format!("{base}{path}"))
            .bearer_auth(&secret)
            .send()
            .await
            .expect("sent");
        assert_eq!(answer.status(), 200, "{path}");
        answer.text().await.expect("body");
    }
    client
        .get(format!("{base}/api/v2/events?auth_token={secret}"))
        .send()
        .await
        .expect("sent");
    client
        .get(format!("{base}/api/v2/users/{id}"))
        .bearer_auth(wrong)
        .send()
        .await
        .expect("sent");
    let line = json!({"identity": {"id": id, "email": email}, "event_name": "imported", "data": {"p": payload}});
    let answer = client
        .post(format!("{base}/api/v2/events/import"))
        .bearer_auth(&secret)
        .body(format!("{line}\n{{\"bad\": \"{payload}\"}}\n"))
        .send()
        .await
        .expect("sent");
    assert_eq!(answer.status(), 200);
    send(
        "PUT",
        format!("/api/v2/users/reidentify?{q}"),
        json!({"id": id, "new_id": new_id}),
    )
    .await
    .expect("sent");
    send(
        "POST",
        format!("/api/v2/users/delete?{q}"),
        json!({"id": new_id}),
    )
    .await
    .expect("sent");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = server.stderr.lock().expect("lock").clone();
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "trace logging is on: {logs}"
    );
    assert!(sent >= 12);
    for needle in [
        &token, &secret, wrong, id, email, new_id, payload, tag, bad_email, "canary",
    ] {
        assert!(!logs.contains(needle), "the log holds {needle}:\n{logs}");
    }
}

/// A receiver that fails with an answer echoing what it was sent (a proxy's error page may)
/// puts user ids, emails and payloads in the destination's status, where the secret key
/// reads them, but never in the log: the log says what failed, not what was answered.
#[tokio::test]
async fn a_receivers_answer_never_reaches_the_logs() {
    use crate::receiver::{Receiver, Reply};
    let dir = tempfile::tempdir().expect("dir");
    let server = ChildServer::spawn(dir.path(), &[("TRACKD_LOG", "trace")]);
    let token = server.printed("tracking token:");
    let secret = server.printed("secret key:");
    let receiver = Receiver::start(vec![Reply::Echo(503), Reply::Echo(503)]).await;
    let client = reqwest::Client::new();
    let base = server.addr.clone();
    let added = client
        .post(format!("{base}/api/v2/destinations"))
        .bearer_auth(&secret)
        .json(&json!({"name": "echo", "kind": "webhook", "url": receiver.url}))
        .send()
        .await
        .expect("sent");
    assert_eq!(
        added.status(),
        201,
        "{}",
        added.text().await.unwrap_or_default()
    );
    let (id, email, payload) = (
        "canary-echo-id-71",
        "canary.echo.71@example.com",
        "canary-echo-p",
    );
    let tracked = client
        .post(format!("{base}/api/v2/events/track?auth_token={token}"))
        .json(&json!({"identity": {"id": id, "email": email}, "event_name": "e", "data": {"p": payload}}))
        .send()
        .await
        .expect("sent");
    assert_eq!(tracked.status(), 200);
    // Two echoed failures, then acknowledged.
    receiver
        .wait_for(
            Duration::from_secs(30),
            "a delivery after two failures",
            |log| log.iter().filter(|r| r.status == 200).count() == 1,
        )
        .await;
    let echoed = receiver.log();
    assert_eq!(echoed[0].status, 503);
    assert!(
        String::from_utf8_lossy(&echoed[0].raw).contains(email),
        "the echo holds the email"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = server.stderr.lock().expect("lock").clone();
    assert!(
        logs.contains("delivery attempt failed") && logs.contains("the receiver answered 503"),
        "the failures were logged: {logs}"
    );
    for needle in [id, email, payload, &token, &secret, "could not process"] {
        assert!(!logs.contains(needle), "the log holds {needle}:\n{logs}");
    }
}
