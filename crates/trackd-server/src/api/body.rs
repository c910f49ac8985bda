//! Reading a request body: size limit, `Content-Encoding: gzip`, and decoding to a JSON
//! object from JSON (whatever the content type says) or from a form whose object and array
//! fields are JSON-encoded strings.

use std::io::Read;

use axum::body::Body;
use axum::http::{header, HeaderMap};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{Map, Value};
use trackd_core::json;

use super::error::ApiError;

/// Form fields that carry JSON (objects and arrays) as strings.
const JSON_FORM_FIELDS: &[&str] = &[
    "identity", "data", "extras", "changes", "add", "remove", "channels",
];

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
        Err(_) => return Err(ApiError::BadRequest("body: could not be read".into())),
    };
    match content_encoding(headers)? {
        Encoding::Identity => Ok(bytes.to_vec()),
        Encoding::Gzip => gunzip(&bytes, limit),
    }
}

enum Encoding {
    Identity,
    Gzip,
}

fn content_encoding(headers: &HeaderMap) -> Result<Encoding, ApiError> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(Encoding::Identity);
    };
    let value = value.to_str().unwrap_or("").trim().to_ascii_lowercase();
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
fn gunzip(compressed: &[u8], limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::with_capacity(compressed.len().saturating_mul(4).min(limit));
    let read = flate2::read::GzDecoder::new(compressed)
        .take(limit as u64 + 1)
        .read_to_end(&mut out);
    match read {
        Ok(n) if n > limit => Err(ApiError::PayloadTooLarge(format!(
            "body: larger than {limit} bytes after decompression"
        ))),
        Ok(_) => Ok(out),
        Err(_) => Err(ApiError::BadRequest("body: invalid gzip data".into())),
    }
}

/// Decodes a body into a JSON object: a form when the content type says so, JSON otherwise
/// (browsers' `sendBeacon` sends JSON as `text/plain`). A "form" that starts with `{` is
/// JSON sent with curl's default content type: no form field name starts with a brace.
pub fn decode(headers: &HeaderMap, bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    let looks_like_json = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if is_form && !looks_like_json {
        decode_form(bytes)
    } else {
        json::parse_object(bytes, "", trackd_core::MAX_JSON_DEPTH)
            .map_err(|e| ApiError::BadRequest(e.to_string()))
    }
}

fn decode_form(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let mut map = Map::new();
    for (key, value) in form_pairs(bytes, "body")? {
        if map.contains_key(&key) {
            return Err(ApiError::BadRequest(format!("{key}: duplicate key")));
        }
        let value = if JSON_FORM_FIELDS.contains(&key.as_str()) {
            if value.is_empty() {
                Value::Null
            } else {
                // The form is level 1, so a JSON field starts at level 2.
                json::parse_value(value.as_bytes(), &key, trackd_core::MAX_JSON_DEPTH - 1)
                    .map_err(|e| ApiError::BadRequest(e.to_string()))?
            }
        } else {
            if value.contains('\0') {
                return Err(ApiError::BadRequest(format!(
                    "{key}: contains a NUL character (\\u0000)"
                )));
            }
            Value::String(value)
        };
        map.insert(key, value);
    }
    Ok(map)
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
            .map_err(|_| ApiError::BadRequest(format!("{what}: invalid UTF-8 in form encoding")))
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
    const TYPES: [Option<&str>; 4] = [
        Some("application/json"),
        Some("application/x-www-form-urlencoded"),
        Some("text/plain"),
        None,
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
        ApiError::BadRequest(message) => message,
        other => panic!("decoding answered {other:?}, not a 400"),
    };
    match (decode(&headers, bytes), decode(&headers, bytes)) {
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

    use super::{check_decode, JSON_FORM_FIELDS};

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
                    Value::String(s) if !JSON_FORM_FIELDS.contains(&key.as_str()) => s.clone(),
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
