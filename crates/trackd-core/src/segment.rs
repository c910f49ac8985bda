//! The Segment HTTP Tracking API (`/v1`, DESIGN §9): each call becomes the event or profile
//! change a Vero route would make, so everything downstream (the read API, exports,
//! statistics, the console, delivery) sees one model.
//!
//! - `track` → an event (`event` → name, `properties` → data);
//! - `page` / `screen` → an event named `Viewed <name> Page` / `Viewed <name> Screen`;
//! - `identify` → `users/track` (traits → properties, `traits.email`, `traits.phone`);
//! - `group` → `users/edit` with `changes.group = {id, traits}`;
//! - `alias` → `users/reidentify` from `previousId` to `userId`.
//!
//! The user key is `userId`, else `anonymousId`; the email is `traits.email` (identify) or
//! `context.traits.email`. The event time is `timestamp`, else `originalTimestamp`
//! corrected by `sentAt` against the receive time (the device's clock skew), else the
//! receive time. `messageId` makes a call idempotent ([`MessageKey`]); Vero's content dedup
//! does not apply here.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::error::FieldError;
use crate::event::{EventName, EventRecord};
use crate::identity::{Email, Identity, UserId, MAX_IDENTITY_CHARS};
use crate::project::ProjectId;
use crate::time::{in_range, parse_iso8601, Timestamp};
use crate::users::{ProfileChange, ProfileLimits, ProfileRequest, UserRef};

/// The longest `messageId` accepted, in characters (Segment's own bound).
pub const MAX_MESSAGE_ID_CHARS: usize = 100;

/// The kinds of Segment call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// An event.
    Track,
    /// A profile update.
    Identify,
    /// A page view (an event).
    Page,
    /// A screen view (an event).
    Screen,
    /// The user joins a group (a profile edit).
    Group,
    /// The user's previous id becomes `userId` (a reidentify).
    Alias,
}

impl Call {
    /// Every call, as its `type` names it.
    pub const ALL: [Call; 6] = [
        Call::Track,
        Call::Identify,
        Call::Page,
        Call::Screen,
        Call::Group,
        Call::Alias,
    ];

    /// The call's `type` (and route) name.
    pub fn name(self) -> &'static str {
        match self {
            Call::Track => "track",
            Call::Identify => "identify",
            Call::Page => "page",
            Call::Screen => "screen",
            Call::Group => "group",
            Call::Alias => "alias",
        }
    }

    /// The call a `type` names.
    pub fn parse(name: &str) -> Option<Call> {
        Call::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// What identifies a call across retries: a hash of the project and the `messageId`, so the
/// stored key holds neither (and one project's ids never collide with another's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageKey([u8; 16]);

impl MessageKey {
    /// The key of `message_id` in `project`.
    pub fn of(project: ProjectId, message_id: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"trackd segment messageId\0");
        hasher.update(project.get().to_le_bytes());
        hasher.update(message_id.as_bytes());
        let digest = hasher.finalize();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        MessageKey(key)
    }

    /// A key as stored.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        MessageKey(bytes)
    }

    /// The 16 bytes stored.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

/// What a call writes.
#[derive(Debug, Clone)]
pub enum Write {
    /// An event (stored without Vero's content dedup).
    Event(EventRecord),
    /// A profile change.
    Profile(ProfileRequest),
}

/// A validated call, ready for the store.
#[derive(Debug, Clone)]
pub struct Message {
    /// Its `messageId`'s key, when it has one.
    pub key: Option<MessageKey>,
    /// What it writes.
    pub write: Write,
}

impl Message {
    /// The project it belongs to.
    pub fn project(&self) -> ProjectId {
        match &self.write {
            Write::Event(e) => e.project,
            Write::Profile(p) => p.project,
        }
    }

    /// When the server received it.
    pub fn received_at(&self) -> Timestamp {
        match &self.write {
            Write::Event(e) => e.received_at,
            Write::Profile(p) => p.received_at,
        }
    }
}

/// Where and when calls arrived, and the bounds their profile changes must keep.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// The project of the write key.
    pub project: ProjectId,
    /// The server's receive time.
    pub at: Timestamp,
    /// What one profile may hold.
    pub limits: ProfileLimits,
}

/// Why a `/v1/batch` body was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchRefusal {
    /// Not a batch: 400 naming the field.
    Invalid(FieldError),
    /// More items than a batch may hold: 413.
    TooMany {
        /// Items sent.
        items: usize,
        /// The bound.
        max: usize,
    },
}

/// A `/v1/batch` body: the valid calls, each with its index in the batch, and the refused
/// ones with why (`batch[i].<field>: <problem>`).
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// The valid calls, in batch order.
    pub messages: Vec<(usize, Message)>,
    /// The refused items, in batch order.
    pub rejected: Vec<(usize, FieldError)>,
}

/// Validates a `/v1/batch` (or `/v1/import`) body: `batch` (at most `max_items` calls,
/// each with its `type`), and the batch's own `sentAt` and `context`, which apply to the
/// calls that lack their own. `faults` are the items the body's parse found broken
/// ([`crate::json::parse_object_with_items`]): each is refused with its problem.
pub fn batch(
    body: &Map<String, Value>,
    faults: &crate::json::ItemFaults,
    received: &Received,
    max_items: usize,
) -> Result<Batch, BatchRefusal> {
    let items = match body.get("batch") {
        None | Some(Value::Null) => {
            return Err(BatchRefusal::Invalid(FieldError::new(
                "batch",
                "is required (an array of calls)",
            )))
        }
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(BatchRefusal::Invalid(FieldError::new(
                "batch",
                "must be an array of calls",
            )))
        }
    };
    if items.len() > max_items {
        return Err(BatchRefusal::TooMany {
            items: items.len(),
            max: max_items,
        });
    }
    let shared = Shared::of(body).map_err(BatchRefusal::Invalid)?;
    let mut out = Batch::default();
    for (i, item) in items.iter().enumerate() {
        if let Some(fault) = faults.get(&i) {
            out.rejected.push((i, FieldError::from(fault.clone())));
            continue;
        }
        let prefix = format!("batch[{i}].");
        let parsed = match item {
            Value::Object(call) => match call.get("type") {
                None | Some(Value::Null) => Err(FieldError::new("type", "is required")),
                Some(Value::String(t)) => match Call::parse(t) {
                    Some(kind) => message(kind, call, &shared, received),
                    None => Err(FieldError::new(
                        "type",
                        "must be one of track, identify, page, screen, group, alias",
                    )),
                },
                Some(_) => Err(FieldError::new("type", "must be a string")),
            },
            _ => Err(FieldError::new("", "must be an object")),
        };
        match parsed {
            Ok(message) => out.messages.push((i, message)),
            Err(e) => {
                let field = if e.field.is_empty() {
                    format!("batch[{i}]")
                } else {
                    format!("{prefix}{}", e.field)
                };
                out.rejected.push((i, FieldError::new(field, e.problem)));
            }
        }
    }
    Ok(out)
}

/// Validates a single call (`/v1/track`, `/v1/identify`, ...): the route says what it is.
pub fn single(
    call: Call,
    body: &Map<String, Value>,
    received: &Received,
) -> Result<Message, FieldError> {
    message(call, body, &Shared::default(), received)
}

/// What a batch gives each of its calls: its `sentAt` and `context`.
#[derive(Default)]
struct Shared<'a> {
    sent_at: Option<Timestamp>,
    context: Option<&'a Map<String, Value>>,
}

impl<'a> Shared<'a> {
    fn of(body: &'a Map<String, Value>) -> Result<Self, FieldError> {
        Ok(Shared {
            sent_at: time(body, "sentAt")?,
            context: object(body, "context")?,
        })
    }
}

fn message(
    call: Call,
    body: &Map<String, Value>,
    shared: &Shared<'_>,
    received: &Received,
) -> Result<Message, FieldError> {
    let key = match body.get("messageId") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => {
            if s.chars().count() > MAX_MESSAGE_ID_CHARS {
                return Err(FieldError::new(
                    "messageId",
                    format!("longer than {MAX_MESSAGE_ID_CHARS} characters"),
                ));
            }
            Some(MessageKey::of(received.project, s))
        }
        Some(_) => return Err(FieldError::new("messageId", "must be a string")),
    };
    let context = match object(body, "context")? {
        Some(c) => Some(c),
        None => shared.context,
    };
    let context_traits = match context {
        Some(c) => object(c, "traits").map_err(|e| under("context", e))?,
        None => None,
    };
    let created_at = event_time(body, shared, received.at)?;
    let write = match call {
        Call::Track | Call::Page | Call::Screen => {
            let name = match call {
                Call::Track => EventName::parse_field(body.get("event"), "event")?,
                _ => {
                    let what = if call == Call::Page { "Page" } else { "Screen" };
                    let full = match body.get("name") {
                        None | Some(Value::Null) => format!("Viewed {what}"),
                        Some(Value::String(s)) if s.is_empty() => format!("Viewed {what}"),
                        Some(Value::String(s)) => format!("Viewed {s} {what}"),
                        Some(_) => return Err(FieldError::new("name", "must be a string")),
                    };
                    // The event's name holds at most 254 characters, `Viewed ` and the
                    // suffix included.
                    let room = MAX_IDENTITY_CHARS - "Viewed  ".len() - what.len();
                    EventName::parse_field(Some(&Value::String(full)), "name").map_err(|_| {
                        FieldError::new(
                            "name",
                            format!(
                                "longer than {room} characters (the event is named \
                                 Viewed <name> {what}, at most {MAX_IDENTITY_CHARS})"
                            ),
                        )
                    })?
                }
            };
            let mut data = object(body, "properties")?.cloned().unwrap_or_default();
            if call != Call::Track {
                match body.get("category") {
                    None | Some(Value::Null) => {}
                    Some(v @ Value::String(_)) => {
                        data.entry("category").or_insert_with(|| v.clone());
                    }
                    Some(_) => return Err(FieldError::new("category", "must be a string")),
                }
            }
            let email = email(context_traits, "context.traits.email")?;
            let identity = identity(body, email)?;
            let key = name.key();
            Write::Event(EventRecord {
                project: received.project,
                identity,
                key,
                name,
                // Serialising a map to a string cannot fail.
                data: serde_json::to_string(&data).unwrap_or_else(|_| "{}".to_owned()),
                source: library(context),
                created_at,
                received_at: received.at,
            })
        }
        Call::Identify => {
            // RudderStack's Python SDK sends an identify's traits in `context.traits` only;
            // where both are sent, `traits` wins key by key and nothing is dropped.
            let root = object(body, "traits")?;
            let merged: Option<Map<String, Value>> = match (root, context_traits) {
                (Some(root), Some(context)) => {
                    let mut all = context.clone();
                    all.extend(root.iter().map(|(k, v)| (k.clone(), v.clone())));
                    Some(all)
                }
                _ => None,
            };
            let (traits, at) = match (root, merged.as_ref()) {
                (Some(_), Some(all)) => (Some(all), "traits"),
                (Some(root), None) => (Some(root), "traits"),
                (None, _) => (context_traits, "context.traits"),
            };
            let email = match email(traits, &format!("{at}.email"))? {
                Some(e) => Some(e),
                None => email(context_traits, "context.traits.email")?,
            };
            let identity = identity(body, email)?;
            let phone_number = match traits.and_then(|t| t.get("phone")) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.is_empty() => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                Some(_) => {
                    return Err(FieldError::new(
                        format!("{at}.phone"),
                        "must be a string or a number",
                    ))
                }
            };
            if phone_number
                .as_ref()
                .is_some_and(|p| p.chars().count() > MAX_IDENTITY_CHARS)
            {
                return Err(FieldError::new(
                    format!("{at}.phone"),
                    format!("longer than {MAX_IDENTITY_CHARS} characters"),
                ));
            }
            profile(
                received,
                ProfileChange::Track {
                    identity,
                    phone_number,
                    channels: Vec::new(),
                    data: traits.cloned().unwrap_or_default(),
                },
            )?
        }
        Call::Group => {
            let group_id = match body.get("groupId") {
                None | Some(Value::Null) => return Err(FieldError::new("groupId", "is required")),
                Some(Value::String(s)) if s.is_empty() => {
                    return Err(FieldError::new("groupId", "is empty"))
                }
                Some(v @ Value::String(s)) => {
                    if s.chars().count() > MAX_IDENTITY_CHARS {
                        return Err(FieldError::new(
                            "groupId",
                            format!("longer than {MAX_IDENTITY_CHARS} characters"),
                        ));
                    }
                    v.clone()
                }
                Some(v @ Value::Number(_)) => v.clone(),
                Some(_) => return Err(FieldError::new("groupId", "must be a string or a number")),
            };
            let traits = object(body, "traits")?.cloned().unwrap_or_default();
            let email = email(context_traits, "context.traits.email")?;
            let identity = identity(body, email)?;
            let user = match (identity.id(), identity.email()) {
                (Some(id), _) => UserRef::Id(id.clone()),
                (None, Some(email)) => UserRef::Email(email.clone()),
                (None, None) => return Err(missing_user()),
            };
            let mut group = Map::new();
            group.insert("id".to_owned(), group_id);
            group.insert("traits".to_owned(), Value::Object(traits));
            let mut changes = Map::new();
            changes.insert("group".to_owned(), Value::Object(group));
            profile(received, ProfileChange::Edit { user, changes })?
        }
        Call::Alias => {
            let previous = required_id(body, "previousId")?;
            let user = required_id(body, "userId")?;
            profile(
                received,
                ProfileChange::Reidentify {
                    id: previous,
                    new_id: user,
                },
            )?
        }
    };
    Ok(Message { key, write })
}

/// A profile change, bounded as a Vero call's is; a bound is named by the Segment field.
fn profile(received: &Received, change: ProfileChange) -> Result<Write, FieldError> {
    let request = ProfileRequest {
        project: received.project,
        received_at: received.at,
        change,
        limits: ProfileLimits::default(),
    };
    request
        .limited(received.limits)
        .map(Write::Profile)
        .map_err(|e| match e.field.as_str() {
            "data" | "changes" => FieldError::new("traits", e.problem),
            _ => e,
        })
}

fn missing_user() -> FieldError {
    FieldError::new("userId", "userId or anonymousId is required")
}

/// `userId`, else `anonymousId`, with the email when there is one.
fn identity(body: &Map<String, Value>, email: Option<Email>) -> Result<Identity, FieldError> {
    let mut id = None;
    for field in ["userId", "anonymousId"] {
        if let Some(v) = body.get(field) {
            if let Some(parsed) = UserId::parse(v, field)? {
                id = Some(parsed);
                break;
            }
        }
    }
    Identity::new(id, email).ok_or_else(missing_user)
}

fn required_id(body: &Map<String, Value>, field: &str) -> Result<UserId, FieldError> {
    match body.get(field) {
        Some(v) => UserId::parse(v, field)?,
        None => None,
    }
    .ok_or_else(|| FieldError::new(field, "is required"))
}

/// The email in `traits` (`field` names it in errors), if any.
fn email(traits: Option<&Map<String, Value>>, field: &str) -> Result<Option<Email>, FieldError> {
    match traits.and_then(|t| t.get("email")) {
        Some(v) => Email::parse(v, field),
        None => Ok(None),
    }
}

/// `context.library.name`, kept as the event's source (`analytics-python`).
fn library(context: Option<&Map<String, Value>>) -> Option<String> {
    context?
        .get("library")?
        .as_object()?
        .get("name")?
        .as_str()
        .filter(|s| !s.is_empty() && s.chars().count() <= MAX_IDENTITY_CHARS)
        .map(str::to_owned)
}

/// An optional object field (absent or null: `None`).
fn object<'a>(
    body: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a Map<String, Value>>, FieldError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(_) => Err(FieldError::new(field, "must be an object")),
    }
}

fn under(parent: &str, e: FieldError) -> FieldError {
    FieldError::new(format!("{parent}.{}", e.field), e.problem)
}

/// An optional ISO 8601 time field.
fn time(body: &Map<String, Value>, field: &str) -> Result<Option<Timestamp>, FieldError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_iso8601(s)
            .map(Some)
            .ok_or_else(|| FieldError::new(field, "not an ISO 8601 time between years 1 and 9999")),
        Some(_) => Err(FieldError::new(field, "must be an ISO 8601 string")),
    }
}

/// Segment's rule: `timestamp`; else `originalTimestamp` moved by the device's clock skew
/// (the receive time minus `sentAt`, both the same moment on two clocks); else the receive
/// time.
fn event_time(
    body: &Map<String, Value>,
    shared: &Shared<'_>,
    received: Timestamp,
) -> Result<Timestamp, FieldError> {
    let timestamp = time(body, "timestamp")?;
    let original = time(body, "originalTimestamp")?;
    let sent_at = match time(body, "sentAt")? {
        Some(t) => Some(t),
        None => shared.sent_at,
    };
    Ok(match (timestamp, original, sent_at) {
        (Some(t), _, _) => t,
        (None, Some(original), Some(sent)) => {
            let skew = received.as_micros() - sent.as_micros();
            original
                .as_micros()
                .checked_add(skew)
                .and_then(in_range)
                .ok_or_else(|| {
                    FieldError::new(
                        "originalTimestamp",
                        "corrected by sentAt, falls outside years 1 to 9999",
                    )
                })?
        }
        (None, Some(original), None) => original,
        (None, None, _) => received,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at() -> Received {
        Received {
            project: ProjectId::new(7),
            at: parse_iso8601("2026-12-01T12:00:00Z").expect("valid"),
            limits: ProfileLimits::default(),
        }
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn event(call: Call, v: Value) -> Result<EventRecord, FieldError> {
        match single(call, &obj(v), &at())?.write {
            Write::Event(e) => Ok(e),
            Write::Profile(_) => panic!("not an event"),
        }
    }

    fn err(call: Call, v: Value) -> String {
        single(call, &obj(v), &at())
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn track_maps_event_properties_user_and_library() {
        let e = event(
            Call::Track,
            json!({"userId": 42, "anonymousId": "a-1", "event": "Order Completed",
                   "properties": {"total": 42.5},
                   "context": {"library": {"name": "analytics-python"},
                               "traits": {"email": "ann@example.com"}}}),
        )
        .expect("valid");
        assert_eq!(e.identity.user_key(), "42");
        assert_eq!(
            e.identity.email().expect("valid").as_str(),
            "ann@example.com"
        );
        assert_eq!(e.name.as_str(), "Order Completed");
        assert_eq!(e.key.as_str(), "order_completed");
        assert_eq!(e.data, r#"{"total":42.5}"#);
        assert_eq!(e.source.as_deref(), Some("analytics-python"));
        assert_eq!(e.created_at, at().at);
        let anon = event(Call::Track, json!({"anonymousId": "a-1", "event": "x"})).expect("valid");
        assert_eq!(anon.identity.user_key(), "a-1");
    }

    #[test]
    fn page_and_screen_are_viewed_events() {
        let p = event(
            Call::Page,
            json!({"userId": "u", "name": "Pricing", "category": "Docs",
                   "properties": {"path": "/pricing"}}),
        )
        .expect("valid");
        assert_eq!(p.name.as_str(), "Viewed Pricing Page");
        assert_eq!(p.data, r#"{"path":"/pricing","category":"Docs"}"#);
        let s = event(Call::Screen, json!({"userId": "u"})).expect("valid");
        assert_eq!(s.name.as_str(), "Viewed Screen");
        assert_eq!(
            err(Call::Page, json!({"userId": "u", "name": 3})),
            "name: must be a string"
        );
    }

    #[test]
    fn timestamps_follow_segment() {
        let t = |v: Value| {
            event(Call::Track, v)
                .expect("valid")
                .created_at
                .to_rfc3339()
        };
        let base = json!({"userId": "u", "event": "e"});
        let mut v = base.clone();
        v["timestamp"] = json!("2026-11-30T10:00:00+01:00");
        v["originalTimestamp"] = json!("2020-01-01T00:00:00Z");
        assert_eq!(t(v), "2026-11-30T09:00:00.000000Z");
        // The device's clock is 10 minutes behind: sentAt 11:50 when the server says 12:00.
        let mut v = base.clone();
        v["originalTimestamp"] = json!("2026-12-01T11:45:00Z");
        v["sentAt"] = json!("2026-12-01T11:50:00Z");
        assert_eq!(t(v), "2026-12-01T11:55:00.000000Z");
        let mut v = base.clone();
        v["originalTimestamp"] = json!("2026-12-01T11:45:00Z");
        assert_eq!(t(v), "2026-12-01T11:45:00.000000Z");
        assert_eq!(t(base.clone()), "2026-12-01T12:00:00.000000Z");
        let mut v = base.clone();
        v["sentAt"] = json!("yesterday");
        assert_eq!(
            err(Call::Track, v),
            "sentAt: not an ISO 8601 time between years 1 and 9999"
        );
        let mut v = base;
        v["originalTimestamp"] = json!("0001-01-01T00:00:00Z");
        v["sentAt"] = json!("9999-01-01T00:00:00Z");
        assert!(err(Call::Track, v).starts_with("originalTimestamp: "));
    }

    #[test]
    fn identify_group_and_alias_are_profile_changes() {
        let m = single(
            Call::Identify,
            &obj(json!({"userId": "u1", "traits": {"email": "a@example.com", "phone": 555, "plan": "pro"}})),
            &at(),
        )
        .expect("valid");
        let Write::Profile(p) = m.write else { panic!() };
        let ProfileChange::Track {
            identity,
            phone_number,
            data,
            ..
        } = p.change
        else {
            panic!()
        };
        assert_eq!(identity.user_key(), "u1");
        assert_eq!(identity.email().expect("valid").as_str(), "a@example.com");
        assert_eq!(phone_number.as_deref(), Some("555"));
        assert_eq!(data["plan"], "pro");

        let m = single(
            Call::Group,
            &obj(json!({"userId": "u1", "groupId": "acme", "traits": {"name": "Acme"}})),
            &at(),
        )
        .expect("valid");
        let Write::Profile(p) = m.write else { panic!() };
        let ProfileChange::Edit { user, changes } = p.change else {
            panic!()
        };
        assert_eq!(
            user,
            UserRef::Id(
                UserId::parse(&json!("u1"), "")
                    .expect("valid")
                    .expect("valid")
            )
        );
        assert_eq!(
            Value::Object(changes),
            json!({"group": {"id": "acme", "traits": {"name": "Acme"}}})
        );

        let m = single(
            Call::Alias,
            &obj(json!({"previousId": "anon", "userId": "u2"})),
            &at(),
        )
        .expect("valid");
        let Write::Profile(p) = m.write else { panic!() };
        let ProfileChange::Reidentify { id, new_id } = p.change else {
            panic!()
        };
        assert_eq!((id.as_str(), new_id.as_str()), ("anon", "u2"));

        assert_eq!(
            err(Call::Alias, json!({"userId": "u2"})),
            "previousId: is required"
        );
        assert_eq!(
            err(Call::Group, json!({"userId": "u2"})),
            "groupId: is required"
        );
        assert_eq!(
            err(
                Call::Identify,
                json!({"userId": "u", "traits": {"email": "nope"}})
            ),
            "traits.email: not a valid email address"
        );
        assert_eq!(
            err(Call::Identify, json!({"userId": "u", "traits": []})),
            "traits: must be an object"
        );
    }

    #[test]
    fn identify_traits_may_come_in_the_context() {
        let m = single(
            Call::Identify,
            &obj(json!({"userId": "u", "context": {"traits": {"email": "c@example.com", "plan": "x"}}})),
            &at(),
        )
        .expect("valid");
        let Write::Profile(p) = m.write else { panic!() };
        let ProfileChange::Track { identity, data, .. } = p.change else {
            panic!()
        };
        assert_eq!(identity.email().expect("valid").as_str(), "c@example.com");
        assert_eq!(
            Value::Object(data),
            json!({"email": "c@example.com", "plan": "x"})
        );
    }

    #[test]
    fn identify_takes_traits_and_context_traits_together() {
        let m = single(
            Call::Identify,
            &obj(json!({"userId": "u", "traits": {"plan": "b"},
                        "context": {"traits": {"plan": "a", "name": "Ann"}}})),
            &at(),
        )
        .expect("valid");
        let Write::Profile(p) = m.write else { panic!() };
        let ProfileChange::Track { data, .. } = p.change else {
            panic!()
        };
        assert_eq!(Value::Object(data), json!({"plan": "b", "name": "Ann"}));
    }

    #[test]
    fn a_page_name_fits_the_event_name() {
        let ok = event(Call::Page, json!({"userId": "u", "name": "n".repeat(242)}));
        assert_eq!(ok.expect("valid").name.as_str().chars().count(), 254);
        assert_eq!(
            err(Call::Page, json!({"userId": "u", "name": "n".repeat(243)})),
            "name: longer than 242 characters (the event is named Viewed <name> Page, at most 254)"
        );
    }

    #[test]
    fn refusals_name_the_segment_field() {
        assert_eq!(
            err(Call::Track, json!({"event": "e"})),
            "userId: userId or anonymousId is required"
        );
        assert_eq!(
            err(Call::Track, json!({"userId": "u"})),
            "event: is required"
        );
        assert_eq!(
            err(Call::Track, json!({"userId": {}, "event": "e"})),
            "userId: must be a string or an integer"
        );
        assert_eq!(
            err(
                Call::Track,
                json!({"userId": "u", "event": "e", "properties": 1})
            ),
            "properties: must be an object"
        );
        assert_eq!(
            err(
                Call::Track,
                json!({"userId": "u", "event": "e", "messageId": 1})
            ),
            "messageId: must be a string"
        );
        let long = "m".repeat(101);
        assert_eq!(
            err(
                Call::Track,
                json!({"userId": "u", "event": "e", "messageId": long})
            ),
            "messageId: longer than 100 characters"
        );
        assert_eq!(
            err(
                Call::Track,
                json!({"userId": "u", "event": "e", "context": {"traits": 1}})
            ),
            "context.traits: must be an object"
        );
    }

    #[test]
    fn message_keys_are_per_project() {
        let a = MessageKey::of(ProjectId::new(1), "m-1");
        assert_eq!(a, MessageKey::of(ProjectId::new(1), "m-1"));
        assert_ne!(a, MessageKey::of(ProjectId::new(2), "m-1"));
        assert_ne!(a, MessageKey::of(ProjectId::new(1), "m-2"));
    }

    #[test]
    fn a_batch_keeps_its_valid_calls_and_names_the_bad_ones() {
        let body = obj(json!({
            "sentAt": "2026-12-01T11:50:00Z",
            "context": {"library": {"name": "lib"}},
            "batch": [
                {"type": "track", "userId": "u", "event": "A", "originalTimestamp": "2026-12-01T11:45:00Z"},
                {"type": "track", "userId": "u"},
                7,
                {"type": "nope"},
                {"event": "x"},
                {"type": "identify", "userId": "u", "context": {}},
            ]
        }));
        let b = batch(&body, &Default::default(), &at(), 10).expect("valid");
        assert_eq!(
            b.messages.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![0, 5]
        );
        let Write::Event(e) = &b.messages[0].1.write else {
            panic!()
        };
        assert_eq!(e.created_at.to_rfc3339(), "2026-12-01T11:55:00.000000Z");
        assert_eq!(e.source.as_deref(), Some("lib"));
        let rejected: Vec<String> = b.rejected.iter().map(|(i, e)| format!("{i} {e}")).collect();
        assert_eq!(
            rejected,
            vec![
                "1 batch[1].event: is required",
                "2 batch[2]: must be an object",
                "3 batch[3].type: must be one of track, identify, page, screen, group, alias",
                "4 batch[4].type: is required",
            ]
        );
        assert_eq!(
            batch(&body, &Default::default(), &at(), 5).expect_err("refused"),
            BatchRefusal::TooMany { items: 6, max: 5 }
        );
        assert_eq!(
            batch(&obj(json!({"batch": {}})), &Default::default(), &at(), 5).expect_err("refused"),
            BatchRefusal::Invalid(FieldError::new("batch", "must be an array of calls"))
        );
        assert_eq!(
            batch(&obj(json!({})), &Default::default(), &at(), 5).expect_err("refused"),
            BatchRefusal::Invalid(FieldError::new("batch", "is required (an array of calls)"))
        );
    }
}
