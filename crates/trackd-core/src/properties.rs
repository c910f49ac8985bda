//! Properties every input must keep, checked by both the cargo-fuzz targets (`fuzz/`) and
//! the proptest suite that runs in CI: one definition, two drivers. Each function takes
//! arbitrary bytes and panics when a property fails; a clean return is a pass (refusing
//! the input is fine, panicking or answering inconsistently is not).

use serde_json::{Map, Value};

use crate::read::{Cursor, CursorKey, EventQuery, ExportQuery, StatsQuery};
use crate::{json, ProfileOp, ProfileRequest, ProjectId, Timestamp, TrackRequest};

const PROJECT: ProjectId = ProjectId::new(1);
const NOW: Timestamp = Timestamp::from_micros(1_795_694_400_000_000);

/// Strict JSON: never panics; what it accepts has a canonical form that is valid JSON,
/// parses back to the same value, and is its own canonical form.
pub fn json_canonical(bytes: &[u8]) {
    let Ok(value) = json::parse_value(bytes, "", crate::MAX_JSON_DEPTH) else {
        return;
    };
    let mut first = String::new();
    json::canonical(&value, &mut first);
    let reparsed = json::parse_value(first.as_bytes(), "", crate::MAX_JSON_DEPTH + 1)
        .unwrap_or_else(|e| panic!("canonical form {first:?} does not parse: {e}"));
    let mut second = String::new();
    json::canonical(&reparsed, &mut second);
    assert_eq!(first, second, "canonical form is not stable");
    serde_json::from_str::<Value>(&first).expect("canonical form is JSON");
}

/// A track body: validation never panics, is deterministic (same event, same dedup key),
/// and what it stores as `data` is canonical JSON.
pub fn track_body(bytes: &[u8]) {
    let Ok(map) = json::parse_object(bytes, "", crate::MAX_JSON_DEPTH) else {
        return;
    };
    track_map(map);
}

/// [`track_body`] from an already decoded body (form bodies, generated maps).
pub fn track_map(map: Map<String, Value>) {
    let first = TrackRequest::new(map.clone()).validate(PROJECT, NOW);
    let second = TrackRequest::new(map).validate(PROJECT, NOW);
    match (first, second) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.dedup_key, b.dedup_key, "dedup key is not deterministic");
            assert_eq!(a.record.key, b.record.key);
            let data = json::parse_value(a.record.data.as_bytes(), "", crate::MAX_JSON_DEPTH)
                .expect("stored data parses");
            let mut canonical = String::new();
            json::canonical(&data, &mut canonical);
            assert_eq!(canonical, a.record.data, "stored data is not canonical");
            assert!(!a.record.name.as_str().is_empty());
        }
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("validation is not deterministic"),
    }
}

/// A `users/*` body for the operation chosen by `op`: parsing never panics and names a
/// field when it refuses.
pub fn profile_body(op: u8, bytes: &[u8]) {
    let Ok(map) = json::parse_object(bytes, "", crate::MAX_JSON_DEPTH) else {
        return;
    };
    profile_map(op, &map);
}

/// [`profile_body`] from an already decoded body.
pub fn profile_map(op: u8, map: &Map<String, Value>) {
    const OPS: [ProfileOp; 7] = [
        ProfileOp::Track,
        ProfileOp::Edit,
        ProfileOp::Tags,
        ProfileOp::Unsubscribe,
        ProfileOp::Resubscribe,
        ProfileOp::Delete,
        ProfileOp::Reidentify,
    ];
    let op = OPS[usize::from(op) % OPS.len()];
    if let Err(e) = ProfileRequest::parse(op, map, PROJECT, NOW) {
        assert!(!e.field.is_empty(), "a refusal names a field: {e}");
    }
}

/// Read-route query strings (split on `&` and `=`): parsing never panics, and a sealed
/// cursor opens to itself under its own scope only.
pub fn read_query(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let pairs: Vec<(String, String)> = text
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let key = CursorKey::new([7; 32]);
    let _ = EventQuery::parse(PROJECT, &pairs, None, &key);
    let _ = EventQuery::parse(PROJECT, &pairs, Some("user".into()), &key);
    let _ = ExportQuery::parse(PROJECT, &pairs);
    let _ = StatsQuery::parse(PROJECT, &pairs);
    let _ = Cursor::open(&text, &key, b"");
    // Any numbers, sealed for any scope, open to themselves there and nowhere else.
    if bytes.len() >= 24 {
        let number = |at: usize| {
            let mut n = [0u8; 8];
            n.copy_from_slice(&bytes[at..at + 8]);
            i64::from_be_bytes(n)
        };
        let cursor = Cursor {
            created_at: number(0),
            id: number(8),
            max_id: number(16),
        };
        let scope = &bytes[24..];
        let sealed = cursor.seal(&key, scope);
        assert_eq!(Cursor::open(&sealed, &key, scope), Ok(cursor));
        assert!(Cursor::open(&sealed, &key, &[scope, b"x"].concat()).is_err());
    }
}

/// An import line: parsing never panics.
pub fn import_line(bytes: &[u8]) {
    let _ = crate::import::parse_line(bytes, PROJECT, NOW);
}

#[cfg(test)]
mod tests {
    //! The CI side of the fuzz targets: the same properties on generated inputs.

    use proptest::prelude::*;

    use super::*;

    /// Bytes that look like JSON often enough to get past the parser.
    fn jsonish() -> impl Strategy<Value = Vec<u8>> {
        let token = prop_oneof![
            Just("{".to_owned()),
            Just("}".to_owned()),
            Just("[".to_owned()),
            Just("]".to_owned()),
            Just(",".to_owned()),
            Just(":".to_owned()),
            Just("\"identity\"".to_owned()),
            Just("\"id\"".to_owned()),
            Just("\"email\"".to_owned()),
            Just("\"event_name\"".to_owned()),
            Just("\"data\"".to_owned()),
            Just("\"extras\"".to_owned()),
            Just("\"created_at\"".to_owned()),
            Just("\"changes\"".to_owned()),
            Just("\"add\"".to_owned()),
            Just("\"new_id\"".to_owned()),
            Just("\"a@b.co\"".to_owned()),
            Just("\"\\ud800\"".to_owned()),
            Just("\"\\u0000\"".to_owned()),
            Just("1e400".to_owned()),
            Just("-0".to_owned()),
            Just("123456789012345678901234567890".to_owned()),
            Just("null".to_owned()),
            Just("true".to_owned()),
            "\"[a-z0-9 .@-]{0,8}\"".prop_map(|s| s),
            "-?[0-9]{1,5}(\\.[0-9]{1,3})?".prop_map(|s| s),
        ];
        prop::collection::vec(token, 0..40).prop_map(|t| t.concat().into_bytes())
    }

    fn arb_track_map() -> impl Strategy<Value = Map<String, Value>> {
        let scalar = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,300}".prop_map(Value::String),
        ];
        let value = scalar.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_]{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        let keys = prop_oneof![
            Just("identity".to_owned()),
            Just("id".to_owned()),
            Just("email".to_owned()),
            Just("event_name".to_owned()),
            Just("data".to_owned()),
            Just("extras".to_owned()),
            Just("created_at".to_owned()),
            Just("changes".to_owned()),
            Just("add".to_owned()),
            Just("remove".to_owned()),
            Just("channels".to_owned()),
            Just("new_id".to_owned()),
        ];
        prop::collection::btree_map(keys, value, 0..6).prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn json_canonical_holds(bytes in jsonish()) {
            json_canonical(&bytes);
        }

        #[test]
        fn json_canonical_holds_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
            json_canonical(&bytes);
        }

        #[test]
        fn track_body_holds(bytes in jsonish()) {
            track_body(&bytes);
        }

        #[test]
        fn track_map_holds(map in arb_track_map()) {
            track_map(map);
        }

        #[test]
        fn profile_holds(op in any::<u8>(), map in arb_track_map(), bytes in jsonish()) {
            profile_map(op, &map);
            profile_body(op, &bytes);
        }

        #[test]
        fn read_query_holds(query in "([a-z_]{0,10}(=[-0-9a-zA-Z.:%+_]{0,30})?&?){0,6}") {
            read_query(query.as_bytes());
        }

        #[test]
        fn import_line_holds(bytes in jsonish()) {
            import_line(&bytes);
        }
    }
}
