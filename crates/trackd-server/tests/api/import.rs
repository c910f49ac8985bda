//! `POST /api/v2/events/import`: Content-Encoding (gzip streamed, others 415) and the idle
//! timeout of a long upload (408).

use std::io::Write;
use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt;
use trackd_server::api::Limits;

use crate::connections::read_answer;
use crate::helpers::{event, TestApp};

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

/// Three track bodies, one a line.
fn ndjson(user: &str) -> String {
    (0..3).map(|n| format!("{}\n", event(user, n))).collect()
}

async fn import(app: &TestApp, encoding: Option<&str>, body: Vec<u8>) -> crate::helpers::Answer {
    let mut request = app
        .client
        .post(app.url("/api/v2/events/import"))
        .bearer_auth(&app.secret);
    if let Some(encoding) = encoding {
        request = request.header("content-encoding", encoding);
    }
    app.send(request.body(body)).await
}

#[tokio::test]
async fn a_gzip_import_is_inflated_line_by_line() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let answer = import(&app, Some("gzip"), gzip(ndjson("g").as_bytes())).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.json(),
        json!({"imported": 3, "duplicates": 0, "rejected": 0, "errors": []})
    );
    assert_eq!(app.count("events"), 3);
    // Inflating past a line's bound (a bomb of one endless line) costs a bad line, not
    // memory: 8 MiB of spaces is 8 KiB of gzip.
    let mut bomb = vec![b' '; 8 << 20];
    bomb.extend_from_slice(format!("\n{}\n", event("g", 9)).as_bytes());
    let answer = import(&app, Some("x-gzip"), gzip(&bomb)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["imported"], 1);
    assert_eq!(answer.json()["rejected"], 1);
    assert_eq!(
        answer.json()["errors"][0]["message"],
        "line: longer than 1048576 bytes"
    );
    assert_eq!(app.count("events"), 4);
}

#[tokio::test]
async fn an_import_in_another_encoding_is_415_and_nothing_is_stored() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    for encoding in ["br", "deflate", "zstd", "gzip, br"] {
        import(&app, Some(encoding), ndjson("e").into_bytes())
            .await
            .assert_error(
                415,
                &format!("content-encoding: '{encoding}' is not supported, use gzip or none"),
            );
    }
    assert_eq!(app.count("events"), 0);
    // identity is no encoding.
    let answer = import(&app, Some("identity"), ndjson("e").into_bytes()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(app.count("events"), 3);
}

#[tokio::test]
async fn corrupt_gzip_in_an_import_is_400_and_the_lines_before_it_stay_imported() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    import(&app, Some("gzip"), b"not gzip at all".to_vec())
        .await
        .assert_error(
            400,
            "body: invalid gzip data at line 1 (the lines before it were imported)",
        );
    // One gzip member, then bytes that are not one: refused, as a second member is.
    let mut trailing = gzip(ndjson("t").as_bytes());
    trailing.extend_from_slice(b"trailing");
    import(&app, Some("gzip"), trailing).await.assert_error(
        400,
        "body: data after the end of the gzip stream at line 4 (the lines before it were \
         imported)",
    );
    assert_eq!(app.count("events"), 3);
    let mut two = gzip(ndjson("a").as_bytes());
    two.extend_from_slice(&gzip(ndjson("b").as_bytes()));
    import(&app, Some("gzip"), two).await.assert_error(
        400,
        "body: data after the end of the gzip stream at line 4 (the lines before it were \
         imported)",
    );
    assert_eq!(app.count("events"), 6);
}

/// An import may stream for as long as it sends; one that stops sending for
/// `--body-timeout` is answered 408, and what it sent before stays imported.
#[tokio::test]
async fn an_import_that_stops_sending_is_408_after_the_body_timeout() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn_with_limits(Limits {
        body_timeout: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let mut stream = app.raw_connection().await;
    let line = format!("{}\n", event("slow", 1));
    let partial = r#"{"identity":{"id":"slow"},"#;
    stream
        .write_all(
            format!(
                "POST /api/v2/events/import HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
                 Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{line}\r\n",
                app.secret,
                line.len()
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    // Part of the next line, then nothing.
    stream
        .write_all(format!("{:x}\r\n{partial}\r\n", partial.len()).as_bytes())
        .await
        .expect("write");
    // Then nothing.
    let answer = tokio::time::timeout(Duration::from_secs(30), read_answer(&mut stream))
        .await
        .expect("the server never answered a stalled import")
        .expect("an answer");
    answer.assert_json_error(
        408,
        "body: nothing received for 1 s at line 2 (the lines before it were imported)",
    );
    assert_eq!(app.count("events"), 1);
    // The same through gzip: a stalled compressed body is a timeout, not bad gzip.
    let mut stream = app.raw_connection().await;
    let header = &gzip(line.as_bytes())[..10];
    let mut head = format!(
        "POST /api/v2/events/import HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        app.secret,
        header.len()
    )
    .into_bytes();
    head.extend_from_slice(header);
    head.extend_from_slice(b"\r\n");
    stream.write_all(&head).await.expect("write");
    let answer = tokio::time::timeout(Duration::from_secs(30), read_answer(&mut stream))
        .await
        .expect("the server never answered a stalled gzip import")
        .expect("an answer");
    answer.assert_json_error(
        408,
        "body: nothing received for 1 s at line 1 (the lines before it were imported)",
    );
    assert_eq!(app.count("events"), 1);
}
