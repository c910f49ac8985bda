//! Reading a request body: size limit, `Content-Encoding: gzip`, and decoding to a JSON
//! object from JSON (whatever the content type says) or from a form, urlencoded or
//! multipart, in bracket notation or with object and list fields as JSON strings. And a
//! streamed upload (the import): its encoding honoured as it arrives, with an idle timeout.

use std::io::{BufRead, Read};
use std::time::Duration;

use axum::body::Body;
use axum::body::Bytes;
use axum::http::{header, HeaderMap};
use futures_util::{Stream, StreamExt};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{Map, Value};
use tokio::io::AsyncBufRead;
use trackd_core::{json, wire, FieldError};

use super::error::ApiError;

/// Above this many bytes a body is decompressed and parsed on the blocking pool: the async
/// runtime has one worker per core but one, and a megabyte of JSON costs milliseconds that
/// every other request on that worker would wait.
pub const BLOCKING_BYTES: usize = 64 * 1024;

/// Reads the whole body, at most `limit` bytes before and after decompression, within
/// `timeout` (a client that trickles its body is answered 408 and holds nothing longer).
pub async fn read(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Vec<u8>, ApiError> {
    let too_large = || ApiError::PayloadTooLarge(format!("body: larger than {limit} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect())
        .await
        .map_err(|_| {
            ApiError::RequestTimeout(format!(
                "body: not received within {} s",
                timeout.as_secs_f64()
            ))
        })?;
    let bytes = match collected {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
        Err(_) => return Err(ApiError::bad_request("body", "could not be read")),
    };
    match content_encoding(headers)? {
        Encoding::Identity => Ok(bytes.to_vec()),
        // Inflating is CPU work whatever the compressed size (a few KiB may inflate to the
        // whole limit): always off the runtime's few workers.
        Encoding::Gzip => tokio::task::spawn_blocking(move || gunzip(&bytes, limit))
            .await
            .map_err(|_| ApiError::bad_request("body", "could not be decompressed"))?,
    }
}

enum Encoding {
    Identity,
    Gzip,
}

fn content_encoding(headers: &HeaderMap) -> Result<Encoding, ApiError> {
    // Every Content-Encoding header counts: two `gzip` headers say the body was gzipped
    // twice, as `gzip, gzip` does, and are refused alike rather than read once.
    let values: Vec<String> = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .map(|v| v.to_str().unwrap_or("").trim().to_ascii_lowercase())
        .collect();
    if values.is_empty() {
        return Ok(Encoding::Identity);
    }
    let value = values.join(",");
    match value.as_str() {
        "" | "identity" => Ok(Encoding::Identity),
        "gzip" | "x-gzip" => Ok(Encoding::Gzip),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "content-encoding: '{}' is not supported, use gzip or none",
            other.escape_debug()
        ))),
    }
}

/// Inflates at most `limit` bytes: a gzip bomb stops at the cap, it never inflates past it.
/// The body is exactly one gzip member: a second member, or any byte after the first
/// (garbage, padding), is refused, not silently dropped (a reader that took only the first
/// member would ignore data the client meant).
fn gunzip(compressed: &[u8], limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::with_capacity(compressed.len().saturating_mul(4).min(limit));
    // `bufread` reads from the slice itself, so what it leaves is what follows the member.
    let mut decoder = flate2::bufread::GzDecoder::new(compressed);
    let read = (&mut decoder).take(limit as u64 + 1).read_to_end(&mut out);
    match read {
        Ok(n) if n > limit => Err(ApiError::PayloadTooLarge(format!(
            "body: larger than {limit} bytes after decompression"
        ))),
        Ok(_) if !decoder.into_inner().is_empty() => Err(ApiError::bad_request("body", AFTER_GZIP)),
        Ok(_) => Ok(out),
        Err(_) => Err(ApiError::bad_request("body", "invalid gzip data")),
    }
}

/// What is wrong with bytes after a gzip member.
pub const AFTER_GZIP: &str = "data after the end of the gzip stream";

/// Why a streamed upload stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// No byte arrived for this long (408).
    #[error("nothing received for {} s", .0.as_secs_f64())]
    Idle(Duration),
    /// The connection broke, or the body was malformed at the HTTP level (400).
    #[error("could not be read")]
    Broken,
    /// Not gzip, or gzip cut short (400).
    #[error("invalid gzip data")]
    InvalidGzip,
    /// Bytes after the gzip member: a second member, or garbage (400).
    #[error("{AFTER_GZIP}")]
    AfterGzip,
}

impl UploadError {
    /// What stopped an upload, from the error its reader returned: one of ours, else the
    /// gzip decoder's (its own errors are about the data).
    pub fn of(e: &std::io::Error) -> &UploadError {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<UploadError>())
            .unwrap_or(&UploadError::InvalidGzip)
    }

    fn into_io(self) -> std::io::Error {
        std::io::Error::other(self)
    }
}

/// Inflated bytes handed from the decoding thread to the import at once, at most.
const INFLATED_CHUNK_BYTES: usize = 64 * 1024;
/// Inflated chunks in flight between the decoding thread and the import: with the chunk
/// size, the bound on what decoding holds, whatever the compression ratio.
const INFLATED_CHUNKS_IN_FLIGHT: usize = 4;

/// A streamed upload (the import's NDJSON), read as it arrives: `Content-Encoding` gzip
/// inflated on a blocking thread in bounded chunks (one member, nothing after it), other
/// encodings refused (415) before a byte is read; `idle` without a byte ends it with
/// [`UploadError::Idle`]. There is no size limit: the reader bounds what it holds.
pub fn stream(
    headers: &HeaderMap,
    body: Body,
    idle: Duration,
) -> Result<Box<dyn AsyncBufRead + Send + Unpin>, ApiError> {
    let encoding = content_encoding(headers)?;
    let data = body.into_data_stream();
    let timed = futures_util::stream::unfold(Some(data), move |data| async move {
        let mut data = data?;
        match tokio::time::timeout(idle, data.next()).await {
            Err(_) => Some((Err(UploadError::Idle(idle).into_io()), None)),
            Ok(None) => None,
            Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some(data))),
            Ok(Some(Err(_))) => Some((Err(UploadError::Broken.into_io()), None)),
        }
    });
    // Fused: a reader may ask again after the end.
    let timed = Box::pin(timed.fuse());
    match encoding {
        Encoding::Identity => Ok(Box::new(tokio_util::io::StreamReader::new(timed))),
        Encoding::Gzip => {
            let (tx, rx) = tokio::sync::mpsc::channel(INFLATED_CHUNKS_IN_FLIGHT);
            let compressed = BlockingBody {
                stream: timed,
                handle: tokio::runtime::Handle::current(),
                current: Bytes::new(),
                done: false,
            };
            // Inflating is CPU work: off the async runtime.
            tokio::task::spawn_blocking(move || inflate(compressed, tx));
            let inflated = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            });
            Ok(Box::new(tokio_util::io::StreamReader::new(Box::pin(
                inflated.fuse(),
            ))))
        }
    }
}

/// Inflates one gzip member from `compressed` into `tx`, chunk by chunk (a full channel
/// waits for the import), then checks nothing follows it. Stops when the import is gone.
fn inflate(compressed: impl BufRead, tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>) {
    let mut decoder = flate2::bufread::GzDecoder::new(compressed);
    loop {
        let mut chunk = vec![0; INFLATED_CHUNK_BYTES];
        let item = match decoder.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                chunk.truncate(n);
                Ok(Bytes::from(chunk))
            }
            Err(e) => Err(e),
        };
        let failed = item.is_err();
        if tx.blocking_send(item).is_err() || failed {
            return;
        }
    }
    let after = match decoder.into_inner().fill_buf() {
        Ok([]) => return,
        Ok(_) => UploadError::AfterGzip.into_io(),
        Err(e) => e,
    };
    let _ = tx.blocking_send(Err(after));
}

/// A body stream read from a blocking thread (the gzip decoder's), each wait handed to the
/// runtime.
struct BlockingBody<S> {
    stream: S,
    handle: tokio::runtime::Handle,
    current: Bytes,
    done: bool,
}

impl<S: Stream<Item = std::io::Result<Bytes>> + Unpin> Read for BlockingBody<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<S: Stream<Item = std::io::Result<Bytes>> + Unpin> BufRead for BlockingBody<S> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.current.is_empty() && !self.done {
            match self.handle.block_on(self.stream.next()) {
                Some(Ok(bytes)) => self.current = bytes,
                Some(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                None => self.done = true,
            }
        }
        Ok(&self.current)
    }

    fn consume(&mut self, n: usize) {
        self.current = self.current.slice(n.min(self.current.len())..);
    }
}

/// How a body is encoded, by its content type.
enum Form {
    /// `application/x-www-form-urlencoded`.
    UrlEncoded,
    /// `multipart/form-data` with its boundary.
    Multipart(String),
    /// JSON, whatever the content type says (browsers' `sendBeacon` sends `text/plain`).
    Json,
}

fn form_kind(headers: &HeaderMap) -> Result<Form, ApiError> {
    let Some(content_type) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(Form::Json);
    };
    let lower = content_type.trim_start().to_ascii_lowercase();
    if lower.starts_with("application/x-www-form-urlencoded") {
        Ok(Form::UrlEncoded)
    } else if lower.starts_with("multipart/form-data") {
        multer::parse_boundary(content_type)
            .map(Form::Multipart)
            .map_err(|_| {
                ApiError::bad_request(
                    "content-type",
                    "multipart/form-data without a valid boundary",
                )
            })
    } else {
        Ok(Form::Json)
    }
}

/// Decodes a body into a JSON object: JSON (whatever the content type says), or a form
/// (urlencoded or multipart) whose fields may use bracket notation or hold JSON strings;
/// then the object and list fields sent as JSON strings are decoded
/// ([`trackd_core::wire`]). A "form" that starts with `{` is JSON sent with curl's default
/// content type: no form field name starts with a brace.
pub async fn decode(headers: &HeaderMap, bytes: Vec<u8>) -> Result<Map<String, Value>, ApiError> {
    if bytes.len() <= BLOCKING_BYTES {
        return decode_now(headers, &bytes).await;
    }
    let headers = headers.clone();
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || runtime.block_on(decode_now(&headers, &bytes)))
        .await
        .map_err(|_| ApiError::bad_request("body", "could not be decoded"))?
}

/// Decodes a body that must be a JSON object (the `/v1` routes: Segment's API is JSON
/// only), whatever its content type says; large ones on the blocking pool. With `items`
/// (a batch's array), a problem inside one of its items is that item's, returned by index,
/// not the body's ([`json::parse_object_with_items`]).
pub async fn decode_json(
    bytes: Vec<u8>,
    items: Option<&'static str>,
) -> Result<(Map<String, Value>, json::ItemFaults), ApiError> {
    let small = bytes.len() <= BLOCKING_BYTES;
    let parse = move || {
        let depth = trackd_core::MAX_JSON_DEPTH;
        match items {
            Some(items) => json::parse_object_with_items(&bytes, "", depth, items),
            None => json::parse_object(&bytes, "", depth).map(|map| (map, Default::default())),
        }
        .map_err(|e| ApiError::BadRequest(FieldError::from(e)))
    };
    if small {
        return parse();
    }
    tokio::task::spawn_blocking(parse)
        .await
        .map_err(|_| ApiError::bad_request("body", "could not be decoded"))?
}

/// [`decode`] on the current thread.
async fn decode_now(headers: &HeaderMap, bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let looks_like_json = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let depth = trackd_core::MAX_JSON_DEPTH;
    let mut body = match form_kind(headers)? {
        Form::UrlEncoded if !looks_like_json => {
            wire::form_object(form_pairs(bytes, "body")?, depth)?
        }
        Form::Multipart(boundary) if !looks_like_json => {
            wire::form_object(multipart_pairs(bytes, boundary).await?, depth)?
        }
        _ => json::parse_object(bytes, "", depth).map_err(FieldError::from)?,
    };
    wire::decode_json_fields(&mut body, depth)?;
    Ok(body)
}

/// The text fields of a `multipart/form-data` body (Vero's Postman collection sends its
/// examples this way). A file part is refused: nothing in a tracking call is a file.
async fn multipart_pairs(
    bytes: &[u8],
    boundary: String,
) -> Result<Vec<(String, String)>, ApiError> {
    let stream = futures_util::stream::once(std::future::ready(Ok::<_, std::convert::Infallible>(
        axum::body::Bytes::copy_from_slice(bytes),
    )));
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut pairs = Vec::new();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => return Ok(pairs),
            Err(e) => {
                return Err(ApiError::bad_request(
                    "body",
                    format!("malformed multipart/form-data: {}", multipart_problem(&e)),
                ))
            }
        };
        let Some(name) = field.name().map(str::to_owned) else {
            return Err(ApiError::bad_request(
                "body",
                "malformed multipart/form-data: a part without a name",
            ));
        };
        if field.file_name().is_some() {
            return Err(ApiError::bad_request(
                name.chars().take(100).collect::<String>(),
                "a file part is not accepted, send the value as a text field",
            ));
        }
        let value = field.bytes().await.map_err(|e| {
            ApiError::bad_request(
                "body",
                format!("malformed multipart/form-data: {}", multipart_problem(&e)),
            )
        })?;
        let value = String::from_utf8(value.to_vec()).map_err(|_| {
            ApiError::bad_request(name.chars().take(100).collect::<String>(), "invalid UTF-8")
        })?;
        pairs.push((name, value));
    }
}

/// What is wrong with a multipart body, in words that hold no client data.
fn multipart_problem(e: &multer::Error) -> &'static str {
    match e {
        multer::Error::IncompleteStream | multer::Error::IncompleteFieldData { .. } => {
            "the body ends before its closing boundary"
        }
        multer::Error::IncompleteHeaders | multer::Error::ReadHeaderFailed(_) => {
            "a part's headers are malformed"
        }
        multer::Error::DecodeHeaderName { .. } | multer::Error::DecodeHeaderValue { .. } => {
            "a part's header is not valid"
        }
        _ => "not a valid multipart body",
    }
}

/// Splits `application/x-www-form-urlencoded` text (a body or a query string) into decoded
/// pairs; a pair that does not decode to UTF-8 is a 400 naming `what`.
pub fn form_pairs(bytes: &[u8], what: &str) -> Result<Vec<(String, String)>, ApiError> {
    let decode = |part: &[u8]| -> Result<String, ApiError> {
        let spaced: Vec<u8> = part
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        percent_encoding::percent_decode(&spaced)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| ApiError::bad_request(what, "invalid UTF-8 in form encoding"))
    };
    bytes
        .split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// What [`check_decode`] found: the decoding's refusal (`field: problem`), or the decoded
/// body's verdict as a track body and as each `users/*` body (in the order of
/// `trackd_core::properties::profile_op`).
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub type DecodeVerdict = Result<
    (
        Result<trackd_core::TrackedEvent, trackd_core::properties::Refusal>,
        Vec<Result<trackd_core::ProfileRequest, trackd_core::properties::Refusal>>,
    ),
    String,
>;

/// The decoding property the `request_decode` fuzz target and the proptests below check:
/// whatever the bytes and content type, decoding and validation never panic and are
/// deterministic, and a decoded body keeps the track and profile properties
/// (`trackd_core::properties`). `kind` picks the content type.
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub fn check_decode(kind: u8, bytes: &[u8]) -> DecodeVerdict {
    const TYPES: [Option<&str>; 5] = [
        Some("application/json"),
        Some("application/x-www-form-urlencoded"),
        Some("text/plain"),
        None,
        Some("multipart/form-data; boundary=XyZ"),
    ];
    let mut headers = HeaderMap::new();
    if let Some(content_type) = TYPES[usize::from(kind) % TYPES.len()] {
        headers.insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static(content_type),
        );
    }
    let _ = form_pairs(bytes, "query");
    let message = |e: ApiError| match e {
        ApiError::BadRequest(e) => e.to_string(),
        other => panic!("decoding answered {other:?}, not a 400"),
    };
    // Decoding never waits (the body is in memory): a current-thread runtime drives it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    let first = runtime.block_on(decode_now(&headers, bytes));
    let second = runtime.block_on(decode_now(&headers, bytes));
    match (first, second) {
        (Ok(map), Ok(again)) => {
            assert_eq!(map, again, "decoding is not deterministic");
            let track = trackd_core::properties::track_map(map.clone());
            let profile = (0..7)
                .map(|op| trackd_core::properties::profile_map(op, &map))
                .collect();
            Ok((track, profile))
        }
        (Err(a), Err(b)) => {
            let (a, b) = (message(a), message(b));
            assert_eq!(a, b, "decoding is not deterministic");
            Err(a)
        }
        _ => panic!("decoding is not deterministic"),
    }
}

#[cfg(test)]
mod tests {
    //! The decoding property on bodies as clients send them: mostly valid track and
    //! profile bodies as JSON (under each content type) and as forms with JSON-encoded
    //! object fields, the rest one mutation from valid, each checked against the answer the
    //! contract promises; then the same bodies with random byte edits, and any bytes.

    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    use proptest::prelude::*;
    use serde_json::Value;
    use trackd_core::properties::strategies::{self, havoc, mostly_valid, tally, Case};
    use trackd_core::properties::Refusal;

    use super::check_decode;

    /// `application/x-www-form-urlencoded`, as the content types in `check_decode` go.
    const FORM: u8 = 1;

    /// A valid body as a form: object and array fields as JSON text, other fields as their
    /// text (an integer id as its digits, null as empty).
    fn form(case: &Case) -> Vec<u8> {
        case.body
            .iter()
            .map(|(key, value)| {
                let text = match value {
                    Value::Null => String::new(),
                    Value::String(s) if !trackd_core::wire::is_structured_field(key) => s.clone(),
                    other => other.to_string(),
                };
                format!(
                    "{}={}",
                    utf8_percent_encode(key, NON_ALPHANUMERIC),
                    utf8_percent_encode(&text, NON_ALPHANUMERIC)
                )
            })
            .collect::<Vec<_>>()
            .join("&")
            .into_bytes()
    }

    /// The body on the wire and its content type: a valid body is sent as a form when
    /// `kind` says so, every other one as JSON (under `application/json`, `text/plain` or
    /// no content type).
    fn wire(case: &Case, kind: u8) -> (u8, Vec<u8>) {
        match kind % 4 {
            FORM if case.is_valid() => (FORM, form(case)),
            FORM => (0, case.bytes()),
            kind => (kind, case.bytes()),
        }
    }

    /// A decoding refusal as the client reads it.
    fn refusal(message: String) -> Refusal {
        let (field, problem) = message.split_once(": ").unwrap_or((&message, ""));
        Refusal {
            field: field.to_owned(),
            problem: problem.to_owned(),
        }
    }

    #[test]
    fn track_bodies_decode_and_hold() {
        mostly_valid(tally(
            "request_decode (track bodies)",
            512,
            (strategies::track_case(), any::<u8>()),
            |(case, kind)| {
                let (kind, bytes) = wire(&case, kind);
                let verdict = match check_decode(kind, &bytes) {
                    Ok((track, _)) => track.map(|_| ()),
                    Err(message) => Err(refusal(message)),
                };
                case.check(&verdict);
                verdict.is_ok()
            },
        ));
    }

    #[test]
    fn profile_bodies_decode_and_hold() {
        mostly_valid(tally(
            "request_decode (profile bodies)",
            1024,
            (strategies::profile_case(), any::<u8>()),
            |((op, case), kind)| {
                let (kind, bytes) = wire(&case, kind);
                let verdict = match check_decode(kind, &bytes) {
                    Ok((_, mut profile)) => profile.swap_remove(usize::from(op)).map(|_| ()),
                    Err(message) => Err(refusal(message)),
                };
                case.check(&verdict);
                verdict.is_ok()
            },
        ));
    }

    /// Accepted as a track body or as some `users/*` body.
    fn accepted(verdict: &super::DecodeVerdict) -> bool {
        match verdict {
            Ok((track, profile)) => track.is_ok() || profile.iter().any(Result::is_ok),
            Err(_) => false,
        }
    }

    #[test]
    fn decoding_holds_on_edited_bodies() {
        let bodies = (
            strategies::track_case(),
            strategies::profile_case(),
            any::<u8>(),
        )
            .prop_map(|(track, (_, profile), kind)| {
                let case = if kind % 2 == 0 { track } else { profile };
                let (kind, bytes) = wire(&case, kind);
                let mut out = vec![kind];
                out.extend(bytes);
                out
            })
            .boxed();
        let (accepted, refused) = tally(
            "request_decode (edited bodies)",
            512,
            havoc(bodies),
            |bytes| match bytes.split_first() {
                Some((kind, body)) => accepted(&check_decode(*kind, body)),
                None => false,
            },
        );
        assert!(
            accepted > 0 && refused > 0,
            "{accepted} accepted, {refused} refused"
        );
    }

    #[test]
    fn decoding_holds_on_any_bytes() {
        let (_, refused) = tally(
            "request_decode (any bytes)",
            512,
            (any::<u8>(), prop::collection::vec(any::<u8>(), 0..256)),
            |(kind, bytes)| accepted(&check_decode(kind, &bytes)),
        );
        assert!(refused > 0);
    }
}
