//! Receivers for the delivery benchmark (`bench/drain.sh`), as fast as the machine allows,
//! so the benchmark measures trackd's side:
//!
//! - `bench_receiver webhook ADDR`: answers every `POST` with 204 at once and counts the
//!   items of the batches (`GET /count` says how many so far, and the first and last
//!   arrival in microseconds since the epoch).
//! - `bench_receiver nats-create URL STREAM SUBJECT`: (re)creates a JetStream stream.
//! - `bench_receiver nats-count URL STREAM`: prints how many messages the stream holds.
//! - `bench_receiver nats-delete URL STREAM`: deletes the stream.

use std::convert::Infallible;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

#[derive(Default)]
struct Counts {
    items: AtomicU64,
    batches: AtomicU64,
    first: AtomicI64,
    last: AtomicI64,
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

async fn handle(
    counts: Arc<Counts>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() == Method::GET {
        let text = format!(
            "{{\"items\":{},\"batches\":{},\"first_us\":{},\"last_us\":{}}}",
            counts.items.load(Ordering::Relaxed),
            counts.batches.load(Ordering::Relaxed),
            counts.first.load(Ordering::Relaxed),
            counts.last.load(Ordering::Relaxed)
        );
        return Ok(Response::new(Full::new(Bytes::from(text))));
    }
    let body = match request.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    // Every item starts with its id.
    let needle = b"{\"id\":\"trk_";
    let n = body.windows(needle.len()).filter(|w| w == needle).count() as u64;
    let now = now_micros();
    let _ = counts
        .first
        .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    counts.last.store(now, Ordering::Relaxed);
    counts.items.fetch_add(n, Ordering::Relaxed);
    counts.batches.fetch_add(1, Ordering::Relaxed);
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

async fn webhook(addr: &str) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    let counts = Arc::new(Counts::default());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let counts = counts.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |r| handle(counts.clone(), r));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["webhook", addr] => webhook(addr).await?,
        ["nats-create", url, stream, subject] => {
            let js = async_nats::jetstream::new(async_nats::connect(*url).await?);
            let _ = js.delete_stream(*stream).await;
            js.create_stream(async_nats::jetstream::stream::Config {
                name: (*stream).to_owned(),
                subjects: vec![(*subject).to_owned()],
                duplicate_window: std::time::Duration::from_secs(120),
                ..Default::default()
            })
            .await?;
        }
        ["nats-delete", url, stream] => {
            let js = async_nats::jetstream::new(async_nats::connect(*url).await?);
            js.delete_stream(*stream).await?;
        }
        ["nats-count", url, stream] => {
            let js = async_nats::jetstream::new(async_nats::connect(*url).await?);
            let mut s = js.get_stream(*stream).await?;
            println!("{}", s.info().await?.state.messages);
        }
        _ => {
            eprintln!(
                "usage: bench_receiver webhook ADDR | nats-create URL STREAM SUBJECT | \
                 nats-count URL STREAM | nats-delete URL STREAM"
            );
            std::process::exit(2);
        }
    }
    Ok(())
}
