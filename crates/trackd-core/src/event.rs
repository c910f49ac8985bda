//! Tracking an event: the wire body ([`TrackRequest`]) becomes a validated
//! [`TrackedEvent`] with its [`EventKey`] and [`DedupKey`].

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::error::FieldError;
use crate::identity::{Identity, MAX_IDENTITY_CHARS};
use crate::json;
use crate::project::ProjectId;
use crate::time::{parse_iso8601, parse_unix_seconds, Timestamp};

/// An event name as sent: non-empty, at most 254 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventName(String);

impl EventName {
    /// Reads the `event_name` field.
    pub fn parse(value: Option<&Value>) -> Result<Self, FieldError> {
        Self::parse_field(value, "event_name")
    }

    /// Reads an event name from the field `field`.
    pub fn parse_field(value: Option<&Value>, field: &str) -> Result<Self, FieldError> {
        match value {
            None | Some(Value::Null) => Err(FieldError::new(field, "is required")),
            Some(Value::String(s)) if s.is_empty() => Err(FieldError::new(field, "is empty")),
            Some(Value::String(s)) => {
                if s.len() > MAX_IDENTITY_CHARS && s.chars().count() > MAX_IDENTITY_CHARS {
                    return Err(FieldError::new(
                        field,
                        format!("longer than {MAX_IDENTITY_CHARS} characters"),
                    ));
                }
                Ok(EventName(s.clone()))
            }
            Some(_) => Err(FieldError::new(field, "must be a string")),
        }
    }

    /// The name as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The event key: Vero treats capitals and lowercase, spaces and underscores as the same.
    pub fn key(&self) -> EventKey {
        EventKey::of(&self.0)
    }
}

/// The name lowercased (Unicode) with every space and underscore as `_`:
/// `Purchased Item`, `purchased item` and `purchased_item` share `purchased_item`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventKey(String);

impl EventKey {
    /// The key of an event name.
    pub fn of(name: &str) -> Self {
        EventKey(name.to_lowercase().replace(' ', "_"))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What identifies a retried event: a hash of project, user key, event key and the
/// canonical form of `data` (or `check_id` when `data` is empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DedupKey([u8; 16]);

/// What stands for the event's content in its dedup key.
enum DedupContent<'a> {
    Data(&'a Map<String, Value>),
    CheckId(&'a Value),
    Nothing,
}

impl DedupKey {
    fn compute(
        project: ProjectId,
        user_key: &str,
        event_key: &EventKey,
        content: DedupContent<'_>,
    ) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(project.get().to_le_bytes());
        // Length prefixes keep the fields apart: ("ab","c") and ("a","bc") differ.
        for part in [user_key, event_key.as_str()] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        let mut canonical = String::new();
        let tag: u8 = match content {
            DedupContent::Data(map) => {
                json::canonical_object(map, &mut canonical);
                b'd'
            }
            DedupContent::CheckId(v) => {
                json::canonical(v, &mut canonical);
                b'c'
            }
            DedupContent::Nothing => b'n',
        };
        hasher.update([tag]);
        hasher.update(canonical.as_bytes());
        let digest = hasher.finalize();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        DedupKey(key)
    }

    /// The 16 bytes stored in the dedup table.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

/// The body of `POST /events/track` as decoded from JSON or a form: a JSON object.
#[derive(Debug, Clone)]
pub struct TrackRequest {
    body: Map<String, Value>,
}

impl TrackRequest {
    /// Wraps a decoded body.
    pub fn new(body: Map<String, Value>) -> Self {
        TrackRequest { body }
    }

    /// A top-level string field of the body (a credential, for example); `None` when absent
    /// or not a string.
    pub fn str_field(&self, name: &str) -> Option<&str> {
        self.body.get(name).and_then(Value::as_str)
    }

    /// Validates and normalises the request for `project`, received at `received_at`.
    pub fn validate(
        self,
        project: ProjectId,
        received_at: Timestamp,
    ) -> Result<TrackedEvent, FieldError> {
        let mut body = self.body;
        let identity = match body.get("identity") {
            Some(Value::Object(fields)) => Identity::from_fields(fields, "identity.")?,
            // No identity object: older clients send `id` / `email` at the top level.
            None | Some(Value::Null) => Identity::from_fields(&body, "")?,
            Some(_) => return Err(FieldError::new("identity", "must be an object")),
        };
        let name = EventName::parse(body.get("event_name"))?;
        let data = match body.remove("data") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map,
            Some(_) => return Err(FieldError::new("data", "must be an object")),
        };
        let empty = Map::new();
        let extras = match body.get("extras") {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(map)) => map,
            Some(_) => return Err(FieldError::new("extras", "must be an object")),
        };
        let source = match extras.get("source") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(FieldError::new("extras.source", "must be a string")),
        };
        let created_at = match extras.get("created_at") {
            None | Some(Value::Null) => received_at,
            // A form sends Unix seconds as text (`extras[created_at]=1388534400`).
            Some(Value::String(s)) => parse_iso8601(s)
                .or_else(|| {
                    let numeric = !s.is_empty()
                        && s.bytes()
                            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-');
                    numeric.then(|| parse_unix_seconds(s)).flatten()
                })
                .ok_or_else(|| {
                    FieldError::new(
                        "extras.created_at",
                        "not an ISO 8601 time or Unix seconds between years 1 and 9999",
                    )
                })?,
            Some(Value::Number(n)) => parse_unix_seconds(&n.to_string()).ok_or_else(|| {
                FieldError::new(
                    "extras.created_at",
                    "Unix seconds out of range (years 1 to 9999)",
                )
            })?,
            Some(_) => {
                return Err(FieldError::new(
                    "extras.created_at",
                    "must be an ISO 8601 string or Unix seconds",
                ))
            }
        };
        let check_id = match extras.get("check_id") {
            None | Some(Value::Null) => None,
            Some(v @ (Value::String(_) | Value::Number(_))) => Some(v),
            Some(_) => {
                return Err(FieldError::new(
                    "extras.check_id",
                    "must be a string or a number",
                ))
            }
        };
        let key = name.key();
        let content = match (data.is_empty(), check_id) {
            (false, _) => DedupContent::Data(&data),
            (true, Some(check_id)) => DedupContent::CheckId(check_id),
            (true, None) => DedupContent::Nothing,
        };
        let dedup_key = DedupKey::compute(project, identity.user_key(), &key, content);
        // Serialising a Value to a String cannot fail.
        let data = serde_json::to_string(&data).unwrap_or_else(|_| "{}".to_owned());
        Ok(TrackedEvent {
            record: EventRecord {
                project,
                identity,
                name,
                key,
                data,
                source,
                created_at,
                received_at,
            },
            dedup_key,
        })
    }
}

/// An event ready to store: who, what and when. A tracked event adds its dedup key; an
/// imported export line is stored as one, as it was.
#[derive(Debug, Clone)]
pub struct EventRecord {
    /// The project it belongs to.
    pub project: ProjectId,
    /// Who the event is about.
    pub identity: Identity,
    /// The name as sent.
    pub name: EventName,
    /// The name's event key.
    pub key: EventKey,
    /// `data` as compact JSON, numbers and key order as sent.
    pub data: String,
    /// `extras.source`.
    pub source: Option<String>,
    /// The event's time: `extras.created_at`, else the receive time.
    pub created_at: Timestamp,
    /// When the server received it (the dedup window runs on this clock).
    pub received_at: Timestamp,
}

/// A validated event with its dedup key, ready for the store.
#[derive(Debug, Clone)]
pub struct TrackedEvent {
    /// The event.
    pub record: EventRecord,
    /// The dedup key.
    pub dedup_key: DedupKey,
}

impl std::ops::Deref for TrackedEvent {
    type Target = EventRecord;

    fn deref(&self) -> &EventRecord {
        &self.record
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P: ProjectId = ProjectId::new(1);
    const NOW: Timestamp = Timestamp::from_micros(1_764_151_200_000_000);

    fn track(body: &str) -> Result<TrackedEvent, String> {
        let map = json::parse_object(body.as_bytes(), "", 64).map_err(|e| e.to_string())?;
        TrackRequest::new(map)
            .validate(P, NOW)
            .map_err(|e| e.to_string())
    }

    fn key(body: &str) -> DedupKey {
        track(body).expect("valid").dedup_key
    }

    #[test]
    fn event_key_folds_case_spaces_and_underscores() {
        for name in [
            "Purchased Item",
            "purchased item",
            "purchased_item",
            "PURCHASED_ITEM",
        ] {
            assert_eq!(EventKey::of(name).as_str(), "purchased_item");
        }
        assert_eq!(EventKey::of("Ünïcode Ñame").as_str(), "ünïcode_ñame");
        assert_eq!(EventKey::of("a-b").as_str(), "a-b");
    }

    #[test]
    fn seed_example_is_normalised() {
        let e = track(
            r#"{"identity":{"id":1000,"email":"test@example.com"},"event_name":"Viewed product",
            "data":{"product_name":"Red T-shirt","product_url":"http://www.yourdomain.com/products/red-t-shirt"},
            "extras":{"source":"Segment.com","created_at":"2023-05-30T04:46:31+0000"}}"#,
        )
        .expect("valid");
        assert_eq!(e.identity.user_key(), "1000");
        assert_eq!(e.key.as_str(), "viewed_product");
        assert_eq!(
            e.data,
            r#"{"product_name":"Red T-shirt","product_url":"http://www.yourdomain.com/products/red-t-shirt"}"#
        );
        assert_eq!(e.source.as_deref(), Some("Segment.com"));
        assert_eq!(e.created_at.to_rfc3339(), "2023-05-30T04:46:31.000000Z");
    }

    #[test]
    fn created_at_defaults_to_receive_time_and_accepts_unix_seconds() {
        let e = track(r#"{"identity":{"id":"1"},"event_name":"x"}"#).expect("valid");
        assert_eq!(e.created_at, NOW);
        let e =
            track(r#"{"identity":{"id":"1"},"event_name":"x","extras":{"created_at":1388534400}}"#)
                .expect("valid");
        assert_eq!(e.created_at.to_rfc3339(), "2014-01-01T00:00:00.000000Z");
    }

    #[test]
    fn validation_errors_name_the_field() {
        let cases = [
            (
                r#"{"event_name":"x"}"#,
                "identity: an id or an email is required",
            ),
            (
                r#"{"identity":"42","event_name":"x"}"#,
                "identity: must be an object",
            ),
            (r#"{"identity":{"id":"1"}}"#, "event_name: is required"),
            (
                r#"{"identity":{"id":"1"},"event_name":""}"#,
                "event_name: is empty",
            ),
            (
                r#"{"identity":{"id":"1"},"event_name":5}"#,
                "event_name: must be a string",
            ),
            (
                r#"{"identity":{"id":"1"},"event_name":"x","data":[]}"#,
                "data: must be an object",
            ),
            (
                r#"{"identity":{"id":"1"},"event_name":"x","extras":1}"#,
                "extras: must be an object",
            ),
            (
                r#"{"identity":{"id":"1"},"event_name":"x","extras":{"created_at":"soon"}}"#,
                "extras.created_at: not an ISO 8601 time or Unix seconds between years 1 and 9999",
            ),
            (
                r#"{"identity":{"id":"1"},"event_name":"x","extras":{"created_at":true}}"#,
                "extras.created_at: must be an ISO 8601 string or Unix seconds",
            ),
            (
                r#"{"identity":{"id":"1"},"event_name":"x","extras":{"check_id":{}}}"#,
                "extras.check_id: must be a string or a number",
            ),
            (
                r#"{"identity":{"id":"1"},"event_name":"x","extras":{"source":1}}"#,
                "extras.source: must be a string",
            ),
            (
                r#"{"identity":{"email":"nope"},"event_name":"x"}"#,
                "identity.email: not a valid email address",
            ),
            (
                r#"{"id":1.5,"event_name":"x"}"#,
                "id: must be a string or an integer",
            ),
        ];
        for (body, message) in cases {
            assert_eq!(track(body).expect_err(body), message, "{body}");
        }
    }

    #[test]
    fn event_name_254_accepted_255_refused() {
        let ok = format!(
            r#"{{"identity":{{"id":"1"}},"event_name":"{}"}}"#,
            "ß".repeat(254)
        );
        assert!(track(&ok).is_ok());
        let long = format!(
            r#"{{"identity":{{"id":"1"}},"event_name":"{}"}}"#,
            "ß".repeat(255)
        );
        assert_eq!(
            track(&long).expect_err("refused"),
            "event_name: longer than 254 characters"
        );
    }

    #[test]
    fn top_level_id_and_email_stand_in_for_identity() {
        let e = track(r#"{"id":"nd-1","email":"nd@example.com","event_name":"Signed up"}"#)
            .expect("valid");
        assert_eq!(e.identity.user_key(), "nd-1");
        assert_eq!(
            e.identity.email().map(|e| e.as_str()),
            Some("nd@example.com")
        );
    }

    #[test]
    fn dedup_key_ignores_key_order_whitespace_number_form_and_name_spelling() {
        let a = key(
            r#"{"identity":{"id":"1"},"event_name":"Purchased Item","data":{"a":1,"b":{"c":[1,2]}}}"#,
        );
        let b = key(
            r#"{ "identity" : {"id":"1","email":"x@y.z"}, "event_name":"purchased_item",
                        "data": { "b": {"c": [1.0, 2e0]}, "a": 1 } }"#,
        );
        assert_eq!(a, b);
    }

    #[test]
    fn dedup_key_differs_by_project_user_event_data_and_array_order() {
        let base = r#"{"identity":{"id":"1"},"event_name":"e","data":{"a":[1,2]}}"#;
        let k = key(base);
        assert_ne!(
            k,
            key(r#"{"identity":{"id":"2"},"event_name":"e","data":{"a":[1,2]}}"#)
        );
        assert_ne!(
            k,
            key(r#"{"identity":{"id":"1"},"event_name":"f","data":{"a":[1,2]}}"#)
        );
        assert_ne!(
            k,
            key(r#"{"identity":{"id":"1"},"event_name":"e","data":{"a":[2,1]}}"#)
        );
        assert_ne!(
            k,
            key(r#"{"identity":{"id":"1"},"event_name":"e","data":{"a":[1,2],"b":0}}"#)
        );
        let map = json::parse_object(base.as_bytes(), "", 64).expect("json");
        let other = TrackRequest::new(map)
            .validate(ProjectId::new(2), NOW)
            .expect("valid");
        assert_ne!(k, other.dedup_key);
    }

    #[test]
    fn check_id_stands_in_for_empty_data_only() {
        let with = |data: &str, check: &str| {
            key(&format!(
                r#"{{"identity":{{"id":"1"}},"event_name":"e","data":{data},"extras":{{"check_id":{check}}}}}"#
            ))
        };
        assert_ne!(with("{}", "1"), with("{}", "2"));
        assert_eq!(with("{}", "1"), with("null", "1.0"));
        assert_ne!(with("{}", "1"), with("{}", r#""1""#));
        // With data, check_id plays no part.
        assert_eq!(with(r#"{"x":1}"#, "1"), with(r#"{"x":1}"#, "2"));
        // Without data or check_id the key is project + user + event.
        let bare = key(r#"{"identity":{"id":"1"},"event_name":"e"}"#);
        assert_eq!(
            bare,
            key(r#"{"identity":{"id":"1"},"event_name":"E","data":{}}"#)
        );
        assert_ne!(bare, with("{}", "1"));
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[a-z\\u{e9} ]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,4}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Writes `v` with its object keys in reverse order and spaces between tokens.
    fn reordered(v: &Value) -> String {
        match v {
            Value::Object(map) => {
                let parts: Vec<String> = map
                    .iter()
                    .rev()
                    .map(|(k, v)| format!(" {} : {} ", Value::String(k.clone()), reordered(v)))
                    .collect();
                format!("{{ {} }}", parts.join(" , "))
            }
            Value::Array(items) => {
                let parts: Vec<String> = items.iter().map(reordered).collect();
                format!("[ {} ]", parts.join(" ,\n "))
            }
            other => other.to_string(),
        }
    }

    proptest! {
        #[test]
        fn canonical_form_is_invariant_under_key_order_and_whitespace(v in arb_json()) {
            let mut a = String::new();
            json::canonical(&v, &mut a);
            let reparsed = json::parse_value(reordered(&v).as_bytes(), "", 64).expect("valid");
            let mut b = String::new();
            json::canonical(&reparsed, &mut b);
            prop_assert_eq!(a, b);
        }

        #[test]
        fn strict_parser_agrees_with_serde_json_on_valid_documents(v in arb_json()) {
            let text = serde_json::to_string(&v).expect("serialises");
            let parsed = json::parse_value(text.as_bytes(), "", 64).expect("valid");
            prop_assert_eq!(parsed, v);
        }

        #[test]
        fn parser_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = json::parse_value(&bytes, "", 64);
        }
    }
}
