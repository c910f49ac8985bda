//! One connection's transport: the TCP stream, with the answers hyper writes by itself (to
//! a request head it cannot parse, before any route sees it: an empty body) replaced by
//! trackd's JSON answer of the same status ([`crate::api::error::protocol_refusal`]).
//!
//! hyper writes a connection's output through `poll_write` in one flat buffer (vectored
//! writes are off), and its own refusal is the last thing it writes before closing: it is
//! recognised at the end of that buffer, the bytes before it go out as they are, and in
//! its place the JSON answer is written whole before hyper is told its head was sent.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream whose protocol refusals are JSON.
pub struct JsonRefusals<S> {
    inner: S,
    /// The answer being written in place of hyper's refusal: its bytes, how many went out,
    /// and the length of hyper's refusal (what hyper is told was written).
    replacing: Option<(Vec<u8>, usize, usize)>,
}

impl<S> JsonRefusals<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        JsonRefusals {
            inner,
            replacing: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonRefusals<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonRefusals<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.replacing.is_none() {
            match crate::api::error::protocol_refusal(buf) {
                // The answers before hyper's refusal go out as they are.
                Some((at, _)) if at > 0 => {
                    return Pin::new(&mut this.inner).poll_write(cx, &buf[..at]);
                }
                Some((_, answer)) => this.replacing = Some((answer, 0, buf.len())),
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        // hyper calls again with the same bytes until told they were written.
        while let Some((answer, sent, refusal_len)) = &mut this.replacing {
            if *sent == answer.len() {
                let written = *refusal_len;
                this.replacing = None;
                return Poll::Ready(Ok(written));
            }
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &answer[*sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *sent += n;
        }
        Poll::Ready(Ok(0))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_refusal_at_the_end_is_replaced_and_the_rest_passes_through() {
        let (client, server) = tokio::io::duplex(16);
        let mut server = JsonRefusals::new(server);
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".to_vec();
        let mut written = ok.clone();
        written.extend_from_slice(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        let reader = tokio::spawn(async move {
            let mut client = client;
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.map(|_| all)
        });
        // A small pipe: many partial writes, as a slow client causes.
        server.write_all(&written).await.expect("written");
        server.shutdown().await.expect("shut down");
        drop(server);
        let all = reader.await.expect("reader").expect("read");
        let text = String::from_utf8(all).expect("utf-8");
        let (first, rest) = text.split_at(ok.len());
        assert_eq!(first.as_bytes(), &ok[..]);
        assert!(
            rest.starts_with("HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"),
            "{rest}"
        );
        let body = rest.split("\r\n\r\n").nth(1).expect("a body");
        let body: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(
            body,
            serde_json::json!({
                "status": 400,
                "message": "request: not a valid HTTP/1.1 request line or header"
            })
        );
    }
}
