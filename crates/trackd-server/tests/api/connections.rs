//! Connections: HTTP/1.1 only (no HTTP/2, by prior knowledge or by Upgrade), the header
//! timeout from the first byte on, a bound on the requests one client address has in
//! flight, the accept loop out of file descriptors, and hyper's own protocol refusals
//! answered as JSON.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trackd_server::api::Limits;

use crate::helpers::{event, TestApp};

/// A generous bound on "the server closes the connection" (never a timing assertion: the
/// expected close comes after about a second).
const CLOSE_WITHIN: Duration = Duration::from_secs(30);

/// An answer read off a raw connection.
pub struct RawAnswer {
    pub status: u16,
    /// The head, lowercased.
    pub head: String,
    pub body: String,
}

impl RawAnswer {
    #[track_caller]
    pub fn assert_json_error(&self, status: u16, message: &str) {
        assert_eq!(self.status, status, "{}{}", self.head, self.body);
        assert!(
            self.head.contains("content-type: application/json"),
            "{}",
            self.head
        );
        let body: Value = serde_json::from_str(&self.body).expect("a JSON body");
        assert_eq!(body, json!({"status": status, "message": message}));
    }
}

/// The first HTTP/1.1 answer in `bytes` (head, then `Content-Length` bytes of body, or
/// all the rest when `complete` and there is no length), and the bytes it took.
fn parse_answer(bytes: &[u8], complete: bool) -> Option<(RawAnswer, usize)> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&bytes[..head_end]).to_ascii_lowercase();
    let status = head.get(9..12)?.parse().ok()?;
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let end = match length {
        Some(length) if bytes.len() >= head_end + length => head_end + length,
        None if complete => bytes.len(),
        _ => return None,
    };
    let body = String::from_utf8_lossy(&bytes[head_end..end]).into_owned();
    Some((RawAnswer { status, head, body }, end))
}

/// Reads one HTTP/1.1 answer; `None` when the connection closes first.
pub async fn read_answer(stream: &mut TcpStream) -> Option<RawAnswer> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some((answer, _)) = parse_answer(&bytes, false) {
            return Some(answer);
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return parse_answer(&bytes, true).map(|(answer, _)| answer);
        }
        bytes.extend_from_slice(&chunk[..n]);
    }
}

/// Sends `bytes` on a new connection and reads the answer, within a generous bound.
pub async fn raw_exchange(app: &TestApp, bytes: &[u8]) -> Option<RawAnswer> {
    let mut stream = app.raw_connection().await;
    let _ = stream.write_all(bytes).await;
    tokio::time::timeout(CLOSE_WITHIN, read_answer(&mut stream))
        .await
        .expect("the server neither answered nor closed")
}

/// Whether the server closes `stream` (reads reach the end) within [`CLOSE_WITHIN`];
/// returns what it sent before closing.
async fn closed_by_server(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    match tokio::time::timeout(CLOSE_WITHIN, stream.read_to_end(&mut received)).await {
        Ok(_) => Some(received),
        Err(_) => None,
    }
}

/// A connection from `local` (another loopback address: 127.0.0.2 is a different client).
async fn connect_from(local: &str, server: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{local}:0").parse().expect("address"))
        .expect("bind a second loopback address");
    let server: SocketAddr = server.trim_start_matches("http://").parse().expect("addr");
    socket.connect(server).await.expect("connect")
}

/// The value of a sample in Prometheus text, 0 when the server has not reported it yet.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The HTTP/2 connection preface and an empty SETTINGS frame, as an h2c client with prior
/// knowledge opens.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test]
async fn http2_is_not_served_prior_knowledge_is_closed_and_upgrade_is_answered_as_http1() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    // Prior knowledge: no HTTP/2 frame comes back (an HTTP/2 server answers with its
    // SETTINGS frame and keeps the connection open); the connection is closed.
    let mut stream = app.raw_connection().await;
    stream.write_all(H2_PREFACE).await.expect("write");
    let received = closed_by_server(&mut stream)
        .await
        .expect("an HTTP/2 preface must not keep a connection open");
    assert!(
        received.is_empty() || received.starts_with(b"HTTP/1.1 "),
        "answered as HTTP/2: {received:?}"
    );
    // Upgrade: h2c is ignored, the request is answered as HTTP/1.1 (no 101).
    let answer = raw_exchange(
        &app,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    )
    .await
    .expect("an answer");
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert!(answer.head.starts_with("http/1.1 200"), "{}", answer.head);
    assert!(!answer.head.contains("upgrade"), "{}", answer.head);
    // A request line that names HTTP/2 is a malformed HTTP/1.1 request.
    raw_exchange(&app, b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n")
        .await
        .expect("an answer")
        .assert_json_error(400, "request: not a valid HTTP/1.1 request line or header");
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_timeout() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn_with_limits(Limits {
        header_timeout: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    // A new connection that never sends a byte.
    let mut silent = app.raw_connection().await;
    let received = closed_by_server(&mut silent)
        .await
        .expect("a silent connection must be closed at the header timeout");
    assert!(received.is_empty(), "{received:?}");
    // A kept-alive connection that goes silent after its first request.
    let mut kept = app.raw_connection().await;
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let answer = read_answer(&mut kept).await.expect("an answer");
    assert_eq!(answer.status, 200);
    assert!(
        !answer.head.contains("connection: close"),
        "{}",
        answer.head
    );
    let received = closed_by_server(&mut kept)
        .await
        .expect("an idle kept-alive connection must be closed at the header timeout");
    assert!(received.is_empty(), "{received:?}");
    // The server still serves.
    let alive = app.send(app.client.get(app.url("/healthz"))).await;
    assert_eq!(alive.status, 200);
}

/// One address (127.0.0.2) holds requests whose bodies never arrive, with no credential:
/// it gets at most `--max-in-flight-per-ip` of the in-flight slots, so another client
/// (127.0.0.1) is still served, and the probes answer for everyone.
#[tokio::test]
async fn one_address_cannot_take_every_in_flight_slot() {
    crate::skip_without_postgres!();
    const SLOTS: usize = 100;
    // The default is a quarter of the global bound (1,024 of 4,096): the same proportion.
    let per_ip = SLOTS / 4;
    assert_eq!(
        Limits::default().max_in_flight_per_ip * 4,
        Limits::default().max_in_flight
    );
    let app = TestApp::spawn_with_limits(Limits {
        max_in_flight: SLOTS,
        max_in_flight_per_ip: per_ip,
        ..Default::default()
    })
    .await;
    let mut stalled = Vec::new();
    for _ in 0..SLOTS {
        let mut stream = connect_from("127.0.0.2", &app.addr).await;
        stream
            .write_all(
                b"POST /api/v2/events/track HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
            )
            .await
            .expect("write");
        stalled.push(stream);
    }
    // Every stalled request was either admitted (in flight) or refused by the new bound.
    // (The scrape itself is in flight while it renders: one less.)
    let deadline = std::time::Instant::now() + CLOSE_WITHIN;
    loop {
        let m = app.metrics().await;
        let in_flight = sample(&m, "trackd_http_requests_in_flight") - 1.0;
        let refused = sample(
            &m,
            r#"trackd_rate_limited_total{reason="in_flight_per_ip"}"#,
        );
        if in_flight + refused >= SLOTS as f64 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Another client is served.
    app.track(&event("victim", 1)).await.assert_success(false);
    // The address at its bound gets 429 naming the limit; its probes still answer.
    let attacker = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().expect("ip"))
        .build()
        .expect("client");
    let refused = app.send(attacker.get(app.url("/api/v2/heartbeat"))).await;
    refused.assert_error(
        429,
        &format!("client: more than {per_ip} requests in flight from this address"),
    );
    assert_eq!(refused.headers["retry-after"], "1");
    for probe in ["/healthz", "/readyz", "/metrics"] {
        let answer = app.send(attacker.get(app.url(probe))).await;
        assert_eq!(answer.status, 200, "{probe}: {}", answer.body);
    }
    let m = app.metrics().await;
    assert_eq!(
        sample(&m, "trackd_http_requests_in_flight"),
        per_ip as f64 + 1.0
    );
    assert!(
        sample(
            &m,
            r#"trackd_rate_limited_total{reason="in_flight_per_ip"}"#
        ) >= (SLOTS - per_ip + 1) as f64
    );
    // Once the stalled requests go away, the address is served again.
    drop(stalled);
    let deadline = std::time::Instant::now() + CLOSE_WITHIN;
    loop {
        let answer = app.send(attacker.get(app.url("/api/v2/heartbeat"))).await;
        if answer.status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", answer.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.count("events"), 1);
}

/// What hyper refuses by itself, before any route sees the request, is JSON too.
#[tokio::test]
async fn protocol_errors_are_json() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let token = app.token.clone();
    let malformed = "request: not a valid HTTP/1.1 request line or header";
    let too_large = "headers: the request line and headers are larger than 65536 bytes, or more \
                     than 100 header fields";
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "a Content-Length past u64",
            format!(
                "POST /api/v2/events/track?auth_token={token} HTTP/1.1\r\nHost: x\r\n\
                 Content-Length: 99999999999999999999999\r\n\r\n"
            )
            .into_bytes(),
            400,
            malformed,
        ),
        (
            "two Content-Lengths",
            format!(
                "POST /api/v2/events/track?auth_token={token} HTTP/1.1\r\nHost: x\r\n\
                 Content-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}"
            )
            .into_bytes(),
            400,
            malformed,
        ),
        (
            "a header without a colon",
            b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n".to_vec(),
            400,
            malformed,
        ),
        (
            "garbage",
            b"\x00\x01\x02 not http\r\n\r\n".to_vec(),
            400,
            malformed,
        ),
        (
            "a 200 KB URL",
            format!(
                "GET /api/v2/heartbeat?x={} HTTP/1.1\r\nHost: x\r\n\r\n",
                "a".repeat(200_000)
            )
            .into_bytes(),
            431,
            too_large,
        ),
        (
            "a 70 KB header",
            format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "a".repeat(70_000)
            )
            .into_bytes(),
            431,
            too_large,
        ),
        (
            "101 headers",
            format!("GET /healthz HTTP/1.1\r\n{}\r\n", "X-A: b\r\n".repeat(101)).into_bytes(),
            431,
            too_large,
        ),
    ];
    for (name, bytes, status, message) in cases {
        let answer = raw_exchange(&app, &bytes)
            .await
            .unwrap_or_else(|| panic!("{name}: closed without an answer"));
        assert!(
            answer.head.starts_with(&format!("http/1.1 {status} ")),
            "{name}: {}",
            answer.head
        );
        assert!(
            answer.head.contains("connection: close"),
            "{name}: {}",
            answer.head
        );
        answer.assert_json_error(status, message);
    }
    // Just under the bounds, the same requests are served.
    let answer = raw_exchange(
        &app,
        format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(60_000)
        )
        .as_bytes(),
    )
    .await
    .expect("an answer");
    assert_eq!(answer.status, 200, "{}", answer.head);
    let answer = raw_exchange(
        &app,
        format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\n{}\r\n",
            "X-A: b\r\n".repeat(99)
        )
        .as_bytes(),
    )
    .await
    .expect("an answer");
    assert_eq!(answer.status, 200, "{}", answer.head);
    // A pipelined good request, then a malformed one: the first answer is intact, the
    // second is JSON.
    let mut stream = app.raw_connection().await;
    stream
        .write_all(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost x\r\n\r\n",
        )
        .await
        .expect("write");
    let both = closed_by_server(&mut stream)
        .await
        .expect("closed after the refusal");
    let (first, taken) = parse_answer(&both, false).expect("first answer");
    assert_eq!(first.status, 200, "{}{}", first.head, first.body);
    parse_answer(&both[taken..], true)
        .expect("second answer")
        .0
        .assert_json_error(400, malformed);
    assert_eq!(app.count("events"), 0);
}

/// Out of file descriptors (`prlimit` leaves the server about 20 more than it has open, and
/// more silent connections come than that):
/// the accept loop backs off and logs at most once a second, the silent connections are
/// closed at the header timeout, and a client is served again. SQLite only (a child
/// process on a data directory).
#[tokio::test]
async fn out_of_file_descriptors_the_accept_loop_backs_off_logs_rarely_and_recovers() {
    crate::skip_without_postgres!();
    if crate::helpers::postgres() {
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let server = crate::helpers::ChildServer::spawn(
        &dir.path().join("data"),
        &[("TRACKD_HEADER_TIMEOUT", "1")],
    );
    // Room for about 20 more descriptors than the server has open now.
    let pid = server.process.id();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc")
        .count();
    let limited = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={}", open + 20))
        .status();
    if !limited.is_ok_and(|s| s.success()) {
        println!("SKIPPED: prlimit (util-linux) could not lower the server's descriptor limit");
        return;
    }
    let started = std::time::Instant::now();
    let addr = server.addr.trim_start_matches("http://").to_owned();
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(TcpStream::connect(&addr).await.expect("connect"));
    }
    // Held while the server is out of descriptors.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let answer = client.get(format!("{}/healthz", server.addr)).send().await;
        if answer.is_ok_and(|a| a.status() == 200) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never served again: {}",
            server.stderr.lock().expect("lock")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(silent);
    let log = server.stderr.lock().expect("lock").clone();
    let failures = log.matches("accept failed").count();
    assert!(
        failures >= 1,
        "the server never ran out of descriptors:\n{log}"
    );
    assert!(
        failures as f64 <= elapsed + 2.0,
        "{failures} accept failures logged in {elapsed:.1} s:\n{log}"
    );
}
