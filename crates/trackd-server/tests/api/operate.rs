//! Operating trackd: rate limits, the in-flight bound, `/metrics`, `/openapi.json`.

use tokio::io::AsyncWriteExt;
use trackd_server::api::Limits;

use crate::helpers::{event, TestApp};

#[tokio::test]
async fn a_token_past_its_rate_gets_429_and_other_tokens_do_not() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn_with_limits(Limits {
        token_rate: 5,
        ..Default::default()
    })
    .await;
    let (other_token, _) = app.add_project("other").await;
    for n in 0..5 {
        app.track(&event("u", n)).await.assert_success(false);
    }
    let refused = app.track(&event("u", 99)).await;
    refused.assert_error(
        429,
        "auth_token: more than 5 requests per second with this token",
    );
    assert_eq!(refused.headers["retry-after"], "1");
    app.track_as(&other_token, &event("u", 1))
        .await
        .assert_success(false);
    assert_eq!(app.count("events"), 6);
    // The quota refills: a second later the token is served again.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    app.track(&event("u", 100)).await.assert_success(false);
    let metrics = app.metrics().await;
    assert_eq!(
        metric(&metrics, r#"trackd_rate_limited_total{reason="token"}"#),
        1.0
    );
}

#[tokio::test]
async fn an_address_past_its_rate_gets_429_but_probes_get_through() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn_with_limits(Limits {
        ip_rate: 3,
        ..Default::default()
    })
    .await;
    for n in 0..3 {
        app.track(&event("u", n)).await.assert_success(false);
    }
    let refused = app.track(&event("u", 3)).await;
    refused.assert_error(
        429,
        "client: more than 3 requests per second from this address",
    );
    assert_eq!(refused.headers["retry-after"], "1");
    // Read routes count against the same address.
    app.read("/api/v2/events").await.assert_error(
        429,
        "client: more than 3 requests per second from this address",
    );
    for probe in ["/healthz", "/readyz", "/metrics"] {
        let answer = app.send(app.client.get(app.url(probe))).await;
        assert_eq!(answer.status, 200, "{probe}: {}", answer.body);
    }
    assert_eq!(app.count("events"), 3);
}

#[tokio::test]
async fn past_the_in_flight_bound_requests_get_503_until_one_finishes() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn_with_limits(Limits {
        max_in_flight: 1,
        ..Default::default()
    })
    .await;
    // One request in flight: its headers are sent, its body never arrives.
    let mut stalled = app.raw_connection().await;
    let head = format!(
        "POST /api/v2/events/track?auth_token={} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n",
        app.token
    );
    stalled.write_all(head.as_bytes()).await.expect("write");
    // Wait until the server took it (the gauge moves), then the next one is refused.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while metric(&app.metrics().await, "trackd_http_requests_in_flight") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "stalled request never admitted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let refused = app.track(&event("u", 1)).await;
    refused.assert_error(503, "server: overloaded, retry later");
    assert_eq!(refused.headers["retry-after"], "1");
    drop(stalled);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let answer = app.track(&event("u", 1)).await;
        if answer.status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", answer.body);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(app.count("events"), 1);
    let metrics = app.metrics().await;
    assert!(metric(&metrics, r#"trackd_rate_limited_total{reason="in_flight"}"#) >= 1.0);
}

#[tokio::test]
async fn metrics_count_requests_events_refusals_and_commits() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    app.track(&event("u", 1)).await.assert_success(false);
    app.track(&event("u", 1)).await.assert_success(true);
    app.track(&serde_json::json!({"identity": {"id": "u"}}))
        .await
        .assert_error(400, "event_name: is required");
    // A duplicate key chosen by the client does not become a label.
    app.track_raw(r#"{"zz_made_up":1,"zz_made_up":2}"#)
        .await
        .assert_error(400, "zz_made_up: duplicate key");
    let answer = app.send(app.client.get(app.url("/metrics"))).await;
    assert_eq!(answer.status, 200);
    assert!(answer.headers["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("application/openmetrics-text"));
    let m = &answer.body;
    assert_eq!(metric(m, r#"trackd_events_total{outcome="accepted"}"#), 1.0);
    assert_eq!(
        metric(m, r#"trackd_events_total{outcome="duplicate"}"#),
        1.0
    );
    assert_eq!(
        metric(m, r#"trackd_events_rejected_total{reason="event_name"}"#),
        1.0
    );
    assert_eq!(
        metric(m, r#"trackd_events_rejected_total{reason="body"}"#),
        1.0
    );
    assert!(!m.contains("zz_made_up"), "{m}");
    assert_eq!(
        metric(
            m,
            r#"trackd_http_requests_total{route="/api/v2/events/track",method="POST",status="200"}"#
        ),
        2.0
    );
    assert_eq!(
        metric(
            m,
            r#"trackd_http_requests_total{route="/api/v2/events/track",method="POST",status="400"}"#
        ),
        2.0
    );
    // Both accepted writes went through the writer: one commit each, or one for both.
    assert!(metric(m, "trackd_store_commit_batch_size_count") >= 1.0);
    assert!(metric(m, "trackd_store_commit_duration_seconds_count") >= 1.0);
    assert_eq!(metric(m, "trackd_store_commit_batch_size_sum"), 2.0);
    assert_eq!(metric(m, "trackd_store_write_queue_depth"), 0.0);
    assert_eq!(metric(m, "trackd_store_commit_failures_total"), 0.0);
    // Unknown paths share one label, whatever they are.
    app.send(app.client.get(app.url("/no/such/path/abc123")))
        .await;
    let m = app.metrics().await;
    assert!(!m.contains("abc123"), "{m}");
    assert_eq!(
        metric(
            &m,
            r#"trackd_http_requests_total{route="unmatched",method="GET",status="404"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn every_documented_operation_is_served_and_nothing_else_is() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let answer = app.send(app.client.get(app.url("/openapi.json"))).await;
    assert_eq!(answer.status, 200);
    let doc = answer.json();
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().expect("paths");
    // Every Vero route with its variants, the sixteen Segment paths (analytics.js's
    // one-letter ones included), the twelve read routes (suppression, the audit log and the
    // project's settings among them), the seven paths of the destination routes (their
    // dead letters among them), probes, metrics, the document, the root's redirect, the
    // console's page and files.
    assert_eq!(paths.len(), 9 * 3 + 16 + 12 + 7 + 4 + 3);
    // Answers as sent: the root's 303 is what is documented, not the page behind it.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let mut ids = std::collections::HashSet::new();
    for (path, item) in paths {
        let url = app.url(
            &path
                .replace("{id}", "nobody")
                .replace("{name}", "nobody")
                .replace("{file}", "app.js"),
        );
        let documented: Vec<&String> = item.as_object().expect("item").keys().collect();
        for method in ["get", "post", "put", "delete", "patch"] {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("m");
            let answer = app.send(client.request(m, &url)).await;
            if documented.iter().any(|d| *d == method) {
                let op = &item[method];
                assert!(ids.insert(op["operationId"].as_str().expect("id").to_owned()));
                assert!(
                    ![404, 405].contains(&answer.status)
                        || answer.body.contains("no such user")
                        || answer.body.contains("destination nobody: not found"),
                    "{method} {path}: {} {}",
                    answer.status,
                    answer.body
                );
                let codes: Vec<&String> = op["responses"].as_object().expect("r").keys().collect();
                assert!(
                    codes.iter().any(|c| **c == answer.status.to_string()),
                    "{method} {path}: {} not documented",
                    answer.status
                );
            } else {
                assert_eq!(answer.status, 405, "{method} {path}: {}", answer.body);
            }
        }
    }
}

/// The value of the sample named exactly `name` (with its labels) in Prometheus text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| {
            v.split_whitespace()
                .next()
                .unwrap_or("")
                .parse()
                .expect("number")
        })
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}
