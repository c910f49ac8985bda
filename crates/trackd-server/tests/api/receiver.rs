//! A webhook receiver for the delivery tests: an axum server on port 0 that records every
//! request and answers what the test scripted (a status, a slow answer, a `Retry-After`),
//! then 200 once the script is used up.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::net::TcpListener;

/// What the receiver answers to one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// This status and body.
    Status(u16, &'static str),
    /// This status, with the request's own body echoed back (as some proxies' error pages do).
    Echo(u16),
    /// 429 with `Retry-After: secs`.
    RetryAfter(u64),
    /// Nothing for this long (past the sender's timeout), then 200.
    Hang(Duration),
    /// Processed (logged as acknowledged), but answered 200 only after this long, past the
    /// sender's timeout: at-least-once delivery sends it again.
    Late(Duration),
}

/// One request as it arrived.
#[derive(Clone, Debug)]
pub struct Received {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Value,
    pub raw: Bytes,
    pub at: Instant,
    /// What it was answered (200 unless scripted).
    pub status: u16,
}

impl Received {
    /// The items of the batch.
    pub fn items(&self) -> Vec<Value> {
        self.body["items"].as_array().cloned().unwrap_or_default()
    }
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Reply>,
    log: Vec<Received>,
}

/// A running receiver.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

impl Receiver {
    /// Starts a receiver on a free port.
    pub async fn start(script: Vec<Reply>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(listener, script)
    }

    /// Starts a receiver on `addr` (a port reserved earlier).
    pub async fn start_on(addr: std::net::SocketAddr, script: Vec<Reply>) -> Receiver {
        let listener = TcpListener::bind(addr).await.expect("bind again");
        Self::serve(listener, script)
    }

    fn serve(listener: TcpListener, script: Vec<Reply>) -> Receiver {
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let inner = Arc::new(Mutex::new(Inner {
            script: script.into(),
            log: Vec::new(),
        }));
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(inner.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url, inner }
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<Received> {
        self.inner.lock().expect("lock").log.clone()
    }

    /// The items of every acknowledged request, in arrival order.
    pub fn acknowledged_items(&self) -> Vec<Value> {
        self.log()
            .iter()
            .filter(|r| r.status == 200)
            .flat_map(Received::items)
            .collect()
    }

    /// The items a receiver that keeps each `webhook-id` once (as Standard Webhooks asks of
    /// it) processes, in arrival order. Delivery is at least once: a batch whose answer
    /// came after the sender's timeout is sent again, under the same id.
    pub fn delivered_items(&self) -> Vec<Value> {
        delivered(&self.log())
    }

    /// Waits until `done` holds for the log (at most `limit`); panics with the log if not.
    pub async fn wait_for(&self, limit: Duration, what: &str, done: impl Fn(&[Received]) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            if done(&self.log()) {
                return;
            }
            if Instant::now() > deadline {
                let log = self.log();
                panic!(
                    "receiver: {what} not seen in {limit:?}; {} requests: {:?}",
                    log.len(),
                    log.iter().map(|r| (&r.id, r.status)).collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The items of `log`'s acknowledged requests, each `webhook-id` once.
pub fn delivered(log: &[Received]) -> Vec<Value> {
    let mut seen = HashSet::new();
    log.iter()
        .filter(|r| r.status == 200 && seen.insert(r.id.as_str()))
        .flat_map(Received::items)
        .collect()
}

async fn receive(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let reply = inner.lock().expect("lock").script.pop_front();
    let reply_kind = reply.clone();
    let (status, answer): (u16, Response) = match reply {
        None => (200, StatusCode::OK.into_response()),
        Some(Reply::Status(code, text)) => (
            code,
            (StatusCode::from_u16(code).expect("status"), text).into_response(),
        ),
        Some(Reply::Echo(code)) => (
            code,
            (
                StatusCode::from_u16(code).expect("status"),
                format!("could not process: {}", String::from_utf8_lossy(&body)),
            )
                .into_response(),
        ),
        Some(Reply::RetryAfter(secs)) => (
            429,
            (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", secs.to_string())],
                "slow down",
            )
                .into_response(),
        ),
        // The sender gives up before the answer: whatever it says, nobody reads it.
        Some(Reply::Hang(_)) => (0, StatusCode::OK.into_response()),
        Some(Reply::Late(_)) => (200, StatusCode::OK.into_response()),
    };
    let hang = match reply_kind {
        Some(Reply::Hang(d) | Reply::Late(d)) => Some(d),
        _ => None,
    };
    inner.lock().expect("lock").log.push(Received {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        raw: body,
        at: Instant::now(),
        status,
    });
    if let Some(d) = hang {
        tokio::time::sleep(d).await;
    }
    answer
}
