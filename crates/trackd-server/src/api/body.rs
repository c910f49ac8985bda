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

/// The decoding property the `request_decode` fuzz target and the proptest below check:
/// whatever the bytes and content type, decoding and validation never panic and are
/// deterministic. `kind` picks the content type.
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub fn check_decode(kind: u8, bytes: &[u8]) {
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
    let first = decode(&headers, bytes);
    let second = decode(&headers, bytes);
    match (first, second) {
        (Ok(map), Ok(again)) => {
            assert_eq!(map, again, "decoding is not deterministic");
            let _ = trackd_core::properties::track_map(map.clone());
            for op in 0..7 {
                let _ = trackd_core::properties::profile_map(op, &map);
            }
        }
        (Err(_), Err(_)) => {}
        _ => panic!("decoding is not deterministic"),
    }
    let _ = form_pairs(bytes, "query");
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn decoding_holds_on_any_bytes(kind in any::<u8>(), bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            super::check_decode(kind, &bytes);
        }

        #[test]
        fn decoding_holds_on_form_like_bodies(kind in any::<u8>(), body in "([a-z_]{1,10}=([-a-z0-9%+.@{}\\[\\]\":,]{0,20})&?){0,6}") {
            super::check_decode(kind, body.as_bytes());
        }
    }
}
