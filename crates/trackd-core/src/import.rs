//! Import lines: an export line (`{id, user, event_name, event_key, data, source,
//! created_at, received_at}`) is restored as it was; anything else is read as a Vero track
//! body and ingested like an API request. A line with any field only an export line has
//! (`user`, `event_key`, `received_at`) is an export line, and must be a whole one: read as
//! a track body, its event `id` would be taken for a user id (older Vero clients send the
//! identity at the top level).

use serde_json::{Map, Value};

use crate::error::FieldError;
use crate::event::{EventName, EventRecord, TrackRequest, TrackedEvent};
use crate::identity::Identity;
use crate::json;
use crate::project::ProjectId;
use crate::time::{parse_iso8601, Timestamp};

/// One parsed import line.
#[derive(Debug, Clone)]
pub enum ImportItem {
    /// An export line: stored as it was (new id, no dedup record: it is history, not a
    /// retry).
    Restore(Box<EventRecord>),
    /// A Vero track body.
    Track(Box<TrackedEvent>),
}

/// Parses one line for `project`; a track body is received at `now`.
pub fn parse_line(
    line: &[u8],
    project: ProjectId,
    now: Timestamp,
) -> Result<ImportItem, FieldError> {
    let map = json::parse_object(line, "", crate::MAX_JSON_DEPTH)?;
    if ["user", "event_key", "received_at"]
        .iter()
        .any(|k| map.contains_key(*k))
    {
        restore(map, project, now).map(|r| ImportItem::Restore(Box::new(r)))
    } else {
        let mut map = map;
        crate::wire::decode_json_fields(&mut map, crate::MAX_JSON_DEPTH)?;
        TrackRequest::new(map)
            .validate(project, now)
            .map(|t| ImportItem::Track(Box::new(t)))
    }
}

/// How far past the importing server's clock a restored receive time may be: clocks of two
/// servers differ a little; a receive time beyond this would come back in every incremental
/// export until then, and no retention could expire it.
pub const RECEIVED_AT_SLACK_MICROS: i64 = 5 * 60 * 1_000_000;

fn restore(
    mut map: Map<String, Value>,
    project: ProjectId,
    now: Timestamp,
) -> Result<EventRecord, FieldError> {
    let identity = match map.get("user") {
        Some(Value::Object(user)) => Identity::from_fields(user, "user.")?,
        _ => {
            return Err(FieldError::new(
                "user",
                "must be an object with id and email",
            ))
        }
    };
    let name = EventName::parse(map.get("event_name"))?;
    let data = match map.remove("data") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(data)) => data,
        Some(_) => return Err(FieldError::new("data", "must be an object")),
    };
    let source = match map.get("source") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(FieldError::new("source", "must be a string")),
    };
    let time = |field: &str| -> Result<Timestamp, FieldError> {
        match map.get(field) {
            None => Err(FieldError::new(field, "is required in an export line")),
            Some(v) => v
                .as_str()
                .and_then(parse_iso8601)
                .ok_or_else(|| FieldError::new(field, "must be an ISO 8601 time")),
        }
    };
    let received_at = time("received_at")?;
    if received_at.as_micros() > now.as_micros().saturating_add(RECEIVED_AT_SLACK_MICROS) {
        return Err(FieldError::new(
            "received_at",
            "is in the future (later than this server's clock by more than 5 minutes)",
        ));
    }
    Ok(EventRecord {
        project,
        identity,
        key: name.key(),
        name,
        // Serialising a Value to a String cannot fail.
        data: serde_json::to_string(&data).unwrap_or_else(|_| "{}".to_owned()),
        source,
        created_at: time("created_at")?,
        received_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: ProjectId = ProjectId::new(1);
    /// 2026-11-26T12:00:00Z.
    const NOW: Timestamp = Timestamp::from_micros(1_795_694_400_000_000);

    #[test]
    fn export_lines_are_restored_as_they_were() {
        let line = br#"{"id":9,"user":{"id":"42","email":null},"event_name":"Viewed product","event_key":"viewed_product","data":{"big":12345678901234567890123},"source":"web","created_at":"2023-05-30T04:46:31.000000Z","received_at":"2026-11-26T12:00:00.000000Z"}"#;
        let ImportItem::Restore(r) = parse_line(line, P, NOW).expect("valid") else {
            panic!("restore")
        };
        assert_eq!(r.identity.user_key(), "42");
        assert_eq!(r.data, r#"{"big":12345678901234567890123}"#);
        assert_eq!(r.created_at.to_rfc3339(), "2023-05-30T04:46:31.000000Z");
        assert_eq!(r.received_at.to_rfc3339(), "2026-11-26T12:00:00.000000Z");
    }

    #[test]
    fn an_export_line_without_its_event_key_is_restored_with_the_key_derived() {
        let line = br#"{"id":903,"user":{"id":"alice","email":"alice@x.com"},"event_name":"Purchase Made","data":{"amount":7},"source":"web","created_at":"2019-05-05T05:05:05Z","received_at":"2019-05-05T05:05:06Z"}"#;
        let Ok(ImportItem::Restore(r)) = parse_line(line, P, NOW) else {
            panic!("an export line");
        };
        assert_eq!(r.identity.user_key(), "alice");
        assert_eq!(r.key.as_str(), "purchase_made");
        assert_eq!(r.source.as_deref(), Some("web"));
        assert_eq!(r.created_at.to_rfc3339(), "2019-05-05T05:05:05.000000Z");
    }

    #[test]
    fn track_bodies_are_validated_like_requests() {
        let line = br#"{"identity":{"id":"1"},"event_name":"x"}"#;
        assert!(matches!(parse_line(line, P, NOW), Ok(ImportItem::Track(_))));
        let cases: [(&[u8], &str); 8] = [
            (b"{", "body: invalid JSON: expected a string key at byte 1"),
            (br#"{"event_name":"x"}"#, "identity: an id or an email is required"),
            (br#"{"user":1,"event_name":"x","event_key":"x","received_at":"x"}"#, "user: must be an object with id and email"),
            (br#"{"user":{"id":"1"},"event_name":"x","event_key":"x","created_at":"2020-01-01T00:00:00Z","received_at":"soon"}"#, "received_at: must be an ISO 8601 time"),
            // An export line missing a field is refused, not read as a track body whose
            // top-level `id` (the event's) would name a user.
            (br#"{"id":901,"user":{"id":"alice"},"event_name":"P","event_key":"p","created_at":"2019-05-05T05:05:05Z"}"#, "received_at: is required in an export line"),
            (br#"{"id":903,"user":{"id":"alice"},"event_name":"P","created_at":"2019-05-05T05:05:05Z","received_at":"2019-05-05T05:05:06Z","data":7}"#, "data: must be an object"),
            (br#"{"id":904,"event_name":"P","received_at":"2019-05-05T05:05:06Z"}"#, "user: must be an object with id and email"),
            // Past NOW by more than the slack: in the future. Within it: taken.
            (br#"{"user":{"id":"1"},"event_name":"x","created_at":"1970-01-01T00:00:00Z","received_at":"2026-11-26T12:05:01Z"}"#, "received_at: is in the future (later than this server's clock by more than 5 minutes)"),
        ];
        for (line, message) in cases {
            assert_eq!(
                parse_line(line, P, NOW).expect_err(message).to_string(),
                message
            );
        }
    }
}
