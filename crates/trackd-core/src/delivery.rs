//! Delivery (DESIGN §8): destinations, the items of the outbox, what each kind of receiver
//! is sent, and the retry rules. No HTTP client and no SQL here: the server's delivery loop
//! sends, the stores keep the outbox and the cursors.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::read::EventRow;
use crate::time::Timestamp;
use crate::users::{ProfileChange, UserRef};
use crate::{FieldError, ProjectId};

/// Vero's API, where a `vero` destination sends unless told otherwise.
pub const VERO_DEFAULT_URL: &str = "https://api.getvero.com/api/v2";
/// Items in one webhook batch unless `batch` says otherwise.
pub const DEFAULT_BATCH: u32 = 100;
/// The most items one webhook batch may hold.
pub const MAX_BATCH: u32 = 1000;
/// The most destinations one project may have (each runs a delivery loop).
pub const MAX_DESTINATIONS: usize = 32;
/// The most event keys one filter may list.
pub const MAX_FILTER_KEYS: usize = 100;
/// A destination's backlog is counted up to this many items (a count is a scan of them,
/// and it runs every few seconds): past it, it shows as this.
pub const BACKLOG_COUNTED: i64 = 1_000_000;
/// How much of a refusing receiver's answer a dead letter keeps.
pub const DEAD_LETTER_BODY_BYTES: usize = 1024;

/// What a destination is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestinationKind {
    /// Signed JSON batches `POST`ed to a URL.
    Webhook,
    /// Each item as the Vero call it came from, to Vero's API.
    Vero,
    /// NATS JetStream publications.
    Nats,
}

impl DestinationKind {
    /// The kind's name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationKind::Webhook => "webhook",
            DestinationKind::Vero => "vero",
            DestinationKind::Nats => "nats",
        }
    }

    /// Reads a stored or given name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "webhook" => Some(DestinationKind::Webhook),
            "vero" => Some(DestinationKind::Vero),
            "nats" => Some(DestinationKind::Nats),
            _ => None,
        }
    }
}

/// Which items a destination takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Only {
    /// Events and profile changes.
    #[default]
    All,
    /// Events only.
    Events,
    /// Profile changes only.
    Users,
}

impl Only {
    /// The name, as stored and shown (`all`, `events`, `users`).
    pub fn as_str(self) -> &'static str {
        match self {
            Only::All => "all",
            Only::Events => "events",
            Only::Users => "users",
        }
    }

    /// Reads a stored or given name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "all" => Some(Only::All),
            "events" => Some(Only::Events),
            "users" => Some(Only::Users),
            _ => None,
        }
    }
}

/// A destination as created: its name, kind, settings and filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationSpec {
    /// Unique in its project: 1 to 64 letters, digits, `-` or `_`.
    pub name: String,
    /// What it is.
    pub kind: DestinationKind,
    /// The receiver: `http(s)://` for `webhook` and `vero`, `nats://` for `nats`.
    pub url: String,
    /// Items per webhook batch (1 to [`MAX_BATCH`]).
    pub batch: u32,
    /// Event keys to deliver (empty: every event).
    pub events: Vec<String>,
    /// Events, profile changes or both.
    pub only: Only,
    /// The Vero auth token (`vero` only).
    pub token: Option<String>,
    /// The subject prefix (`nats` only).
    pub subject_prefix: Option<String>,
}

impl DestinationSpec {
    /// Reads and checks a destination from a JSON object (the API's body; the CLI builds
    /// the same object from its flags): `name`, `kind`, `url`, `batch`, `events` (a list of
    /// event names), `only`, `token`, `subject_prefix`.
    pub fn from_json(body: &Map<String, Value>) -> Result<Self, FieldError> {
        const KNOWN: [&str; 8] = [
            "name",
            "kind",
            "url",
            "batch",
            "events",
            "only",
            "token",
            "subject_prefix",
        ];
        if let Some(unknown) = body.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(FieldError::new(
                unknown.as_str(),
                "is not a destination setting",
            ));
        }
        let text = |field: &str| -> Result<Option<String>, FieldError> {
            match body.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(FieldError::new(field, "must be a string")),
            }
        };
        let name = text("name")?.ok_or_else(|| FieldError::new("name", "is required"))?;
        let kind = text("kind")?.ok_or_else(|| FieldError::new("kind", "is required"))?;
        let kind = DestinationKind::parse(&kind)
            .ok_or_else(|| FieldError::new("kind", "must be webhook, vero or nats"))?;
        let batch = match body.get("batch") {
            None | Some(Value::Null) => DEFAULT_BATCH,
            Some(v) => v
                .as_u64()
                .filter(|n| (1..=u64::from(MAX_BATCH)).contains(n))
                .map(|n| n as u32)
                .ok_or_else(|| {
                    FieldError::new("batch", format!("must be an integer from 1 to {MAX_BATCH}"))
                })?,
        };
        let events = match body.get("events") {
            None | Some(Value::Null) => Vec::new(),
            // Each as an event's own name is checked (up to 254 characters), so every
            // name that can be tracked can be filtered on.
            Some(Value::Array(list)) => list
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let field = format!("events[{i}]");
                    let name = crate::event::EventName::parse_field(Some(v), &field)?;
                    if name.as_str().trim().is_empty() {
                        return Err(FieldError::new(field, "is blank"));
                    }
                    Ok(name.key().as_str().to_owned())
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(FieldError::new("events", "must be a list of event names")),
        };
        let only = match text("only")? {
            None => Only::All,
            Some(s) => Only::parse(&s)
                .ok_or_else(|| FieldError::new("only", "must be events, users or all"))?,
        };
        let spec = DestinationSpec {
            name,
            kind,
            url: text("url")?.unwrap_or_default(),
            batch,
            events,
            only,
            token: text("token")?,
            subject_prefix: text("subject_prefix")?,
        };
        spec.validated()
    }

    /// Checks every setting, filling in defaults (Vero's URL).
    pub fn validated(mut self) -> Result<Self, FieldError> {
        validate_destination_name(&self.name)?;
        if self.kind == DestinationKind::Vero && self.url.is_empty() {
            self.url = VERO_DEFAULT_URL.to_owned();
        }
        let schemes: &[&str] = match self.kind {
            DestinationKind::Webhook | DestinationKind::Vero => &["http://", "https://"],
            DestinationKind::Nats => &["nats://"],
        };
        // Parsed as a URL with a host (and a port that exists): a URL that can never be
        // sent to is refused now, not retried forever.
        let url_ok = self.url.len() <= 2048
            && !self
                .url
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            && url::Url::parse(&self.url).is_ok_and(|u| {
                schemes
                    .iter()
                    .any(|s| s.trim_end_matches("://") == u.scheme())
                    && u.host_str().is_some_and(|h| !h.is_empty())
            });
        if !url_ok {
            return Err(FieldError::new(
                "url",
                format!(
                    "must be a {} URL of at most 2048 bytes",
                    match self.kind {
                        DestinationKind::Nats => "nats://",
                        _ => "http:// or https://",
                    }
                ),
            ));
        }
        // A Vero base URL gets each call's path appended (`/events/track?auth_token=…`): a
        // query or a fragment in it would send every call somewhere else.
        if self.kind == DestinationKind::Vero
            && url::Url::parse(&self.url)
                .is_ok_and(|u| u.query().is_some() || u.fragment().is_some())
        {
            return Err(FieldError::new(
                "url",
                "must be Vero's API base URL, without a query or a fragment",
            ));
        }
        self.events.sort();
        self.events.dedup();
        if self.events.len() > MAX_FILTER_KEYS {
            return Err(FieldError::new(
                "events",
                format!("must list at most {MAX_FILTER_KEYS} event names"),
            ));
        }
        if !self.events.is_empty() && self.only == Only::Users {
            return Err(FieldError::new(
                "events",
                "filters events, so it cannot go with only=users",
            ));
        }
        match (self.kind, &self.token) {
            (DestinationKind::Vero, None) => {
                return Err(FieldError::new(
                    "token",
                    "is required for a vero destination",
                ))
            }
            (DestinationKind::Vero, Some(t)) => {
                if t.is_empty() || t.len() > 512 || t.bytes().any(|b| !b.is_ascii_graphic()) {
                    return Err(FieldError::new(
                        "token",
                        "must be 1 to 512 printable characters without spaces",
                    ));
                }
            }
            (_, Some(_)) => return Err(FieldError::new("token", "is only for a vero destination")),
            (_, None) => {}
        }
        match (self.kind, &self.subject_prefix) {
            (DestinationKind::Nats, None) => self.subject_prefix = Some("trackd".to_owned()),
            (DestinationKind::Nats, Some(p)) => {
                let ok = !p.is_empty()
                    && p.len() <= 128
                    && p.split('.').all(|t| {
                        !t.is_empty()
                            && t.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    });
                if !ok {
                    return Err(FieldError::new(
                        "subject_prefix",
                        "must be dot-separated tokens of letters, digits, '-' or '_'",
                    ));
                }
            }
            (_, Some(_)) => {
                return Err(FieldError::new(
                    "subject_prefix",
                    "is only for a nats destination",
                ))
            }
            (_, None) => {}
        }
        Ok(self)
    }

    /// The settings as stored (everything but name and kind), JSON.
    pub fn settings_json(&self) -> String {
        serde_json::json!({
            "url": self.url,
            "batch": self.batch,
            "events": self.events,
            "only": self.only.as_str(),
            "token": self.token,
            "subject_prefix": self.subject_prefix,
        })
        .to_string()
    }

    /// Reads stored settings back; `None` when they do not read (never written so).
    pub fn from_stored(name: &str, kind: &str, settings: &str) -> Option<Self> {
        let v: Map<String, Value> = serde_json::from_str(settings).ok()?;
        Some(DestinationSpec {
            name: name.to_owned(),
            kind: DestinationKind::parse(kind)?,
            url: v.get("url")?.as_str()?.to_owned(),
            batch: v.get("batch")?.as_u64()? as u32,
            events: v
                .get("events")?
                .as_array()?
                .iter()
                .filter_map(|e| e.as_str().map(str::to_owned))
                .collect(),
            only: Only::parse(v.get("only")?.as_str()?)?,
            token: v.get("token").and_then(Value::as_str).map(str::to_owned),
            subject_prefix: v
                .get("subject_prefix")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }

    /// Whether an item of this kind (and event key) goes to this destination. A user's
    /// deletion goes to every destination, whatever its filter: DESIGN §8, "the delete
    /// itself is still delivered" (a receiver that got the user's events must learn they
    /// are gone; a `vero` destination deletes the user at Vero).
    pub fn wants(&self, item: &OutboxItem) -> bool {
        match (&item.kind, self.only) {
            (ItemKind::UserDelete, _) => true,
            (ItemKind::Event, Only::Users) => false,
            (ItemKind::Event, _) => {
                self.events.is_empty()
                    || item
                        .event
                        .as_ref()
                        .is_some_and(|e| self.events.binary_search(&e.event_key).is_ok())
            }
            (_, Only::Events) => false,
            (_, _) => true,
        }
    }
}

/// Checks a destination name: 1 to 64 letters, digits, `-` or `_`.
pub fn validate_destination_name(name: &str) -> Result<(), FieldError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            "name",
            "must be 1 to 64 letters, digits, '-' or '_'",
        ))
    }
}

/// A stored destination and where its delivery stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Destination {
    /// Its row id (unique across projects).
    pub id: i64,
    /// Its project.
    pub project: ProjectId,
    /// Its project's name (the NATS subject holds it).
    pub project_name: String,
    /// What it is.
    pub spec: DestinationSpec,
    /// The webhook signing secret (`whsec_…`), empty for other kinds.
    pub secret: String,
    /// Why it is paused, when it is (`paused` by an operator, or the receiver's refusal).
    pub paused: Option<String>,
    /// The last acknowledged outbox position.
    pub cursor: i64,
    /// The last position of the batch being sent when there is one: after a restart the
    /// same batch (same id) is sent again.
    pub pending_to: i64,
    /// Changes on every replay (the cursor moved back): a delivery loop holding an older
    /// generation stops, and its reports are refused.
    pub generation: i64,
    /// Items acknowledged, all time.
    pub delivered: i64,
    /// The last failure, if the last attempt failed.
    pub last_error: Option<String>,
    /// When it was created (µs).
    pub created_at: i64,
    /// Dead letters waiting for `redrive`.
    pub dead_letters: i64,
    /// Dead letters asked to be sent again.
    pub redrive_pending: i64,
    /// Items after the cursor, counted up to [`BACKLOG_COUNTED`].
    pub backlog: i64,
    /// Receive time (µs) of the first item after the cursor (receive times follow
    /// positions, but for the few moments a request waits for the writer).
    pub oldest_undelivered: Option<i64>,
}

impl Destination {
    /// `running`, `retrying` (the last attempt failed) or `paused`.
    pub fn state(&self) -> &'static str {
        if self.paused.is_some() {
            "paused"
        } else if self.last_error.is_some() {
            "retrying"
        } else {
            "running"
        }
    }

    /// Seconds since the oldest undelivered item was received (0 when there is none).
    pub fn oldest_undelivered_secs(&self, now: Timestamp) -> i64 {
        self.oldest_undelivered
            .map(|t| ((now.as_micros() - t) / 1_000_000).max(0))
            .unwrap_or(0)
    }

    /// As the API and `destination list --json` show it (never the secret nor the token).
    pub fn to_json(&self, now: Timestamp) -> Value {
        let s = &self.spec;
        serde_json::json!({
            "name": s.name,
            "kind": s.kind.as_str(),
            "url": s.url,
            "batch": s.batch,
            "events": s.events,
            "only": s.only.as_str(),
            "subject_prefix": s.subject_prefix,
            "state": self.state(),
            "paused_reason": self.paused,
            "backlog": self.backlog,
            "oldest_undelivered_secs": self.oldest_undelivered_secs(now),
            "delivered": self.delivered,
            "dead_letters": self.dead_letters,
            "last_error": self.last_error,
            "created_at": Timestamp::from_micros(self.created_at).to_rfc3339(),
        })
    }
}

/// A dead letter: an item a receiver refused for good (a batch's refusal makes one per
/// item), kept until it is redriven and acknowledged or the destination is removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The item's outbox position: its id is `trk_<project>_<pos>`.
    pub pos: i64,
    /// The receiver's status.
    pub status: u16,
    /// The first KiB of the receiver's answer.
    pub response: String,
    /// When it was refused, microseconds since the epoch.
    pub failed_at: i64,
    /// Marked to be sent again by a redrive, not yet acknowledged.
    pub redrive: bool,
}

impl DeadLetter {
    /// How the destinations API and the CLI show it.
    pub fn to_json(&self, project: ProjectId) -> Value {
        serde_json::json!({
            "item": format!("trk_{}_{}", project.get(), self.pos),
            "position": self.pos,
            "status": self.status,
            "response": self.response,
            "failed_at": Timestamp::from_micros(self.failed_at).to_rfc3339(),
            "redrive": self.redrive,
        })
    }
}

/// An operator's change to a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationChange {
    /// Stop delivering (the backlog keeps growing).
    Pause,
    /// Deliver again (clears a pause by the receiver too).
    Resume,
    /// Delete it, its dead letters and its cursor.
    Remove,
    /// Send again every kept item received at or after this time (µs).
    Replay {
        /// Receive time to start from.
        since: i64,
    },
    /// Send the dead letters again.
    Redrive,
}

/// What a delivery loop tells the store after an attempt. Applied only while the
/// destination is still at `generation` (and, on PostgreSQL, leased to the node).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeliveryReport {
    /// The destination.
    pub destination: i64,
    /// The generation the loop read the items at.
    pub generation: i64,
    /// The node holding the lease.
    pub node: String,
    /// Move the cursor to this position (everything up to it acknowledged or dead).
    pub cursor: Option<i64>,
    /// Record the batch about to be sent (its last position), or clear it (0).
    pub pending_to: Option<i64>,
    /// Items acknowledged by this attempt.
    pub delivered: i64,
    /// Items refused for good: (position, HTTP status, the first KiB of the answer).
    pub dead: Vec<(i64, u16, String)>,
    /// Dead letters sent again and acknowledged (or refused again: then in `dead` too).
    pub redriven: Vec<i64>,
    /// `Some(None)` clears the last error, `Some(Some(e))` records one.
    pub last_error: Option<Option<String>>,
    /// Pause the destination, saying why (a `vero` 401).
    pub pause: Option<String>,
}

/// What an item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ItemKind {
    /// An accepted event.
    #[serde(rename = "event")]
    Event,
    /// `users/track`.
    #[serde(rename = "user.track")]
    UserTrack,
    /// `users/edit`.
    #[serde(rename = "user.edit")]
    UserEdit,
    /// `users/tags/edit`.
    #[serde(rename = "user.tags")]
    UserTags,
    /// `users/unsubscribe`.
    #[serde(rename = "user.unsubscribe")]
    UserUnsubscribe,
    /// `users/resubscribe`.
    #[serde(rename = "user.resubscribe")]
    UserResubscribe,
    /// `users/reidentify`.
    #[serde(rename = "user.reidentify")]
    UserReidentify,
    /// `users/delete`.
    #[serde(rename = "user.delete")]
    UserDelete,
}

impl ItemKind {
    const ALL: [ItemKind; 8] = [
        ItemKind::Event,
        ItemKind::UserTrack,
        ItemKind::UserEdit,
        ItemKind::UserTags,
        ItemKind::UserUnsubscribe,
        ItemKind::UserResubscribe,
        ItemKind::UserReidentify,
        ItemKind::UserDelete,
    ];

    /// The stored code.
    pub fn code(self) -> i64 {
        self as i64
    }

    /// Reads a stored code.
    pub fn from_code(code: i64) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.code() == code)
    }

    /// The name in a webhook item's `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Event => "event",
            ItemKind::UserTrack => "user.track",
            ItemKind::UserEdit => "user.edit",
            ItemKind::UserTags => "user.tags",
            ItemKind::UserUnsubscribe => "user.unsubscribe",
            ItemKind::UserResubscribe => "user.resubscribe",
            ItemKind::UserReidentify => "user.reidentify",
            ItemKind::UserDelete => "user.delete",
        }
    }

    /// The Vero call an item of this kind came from: method and path under the base URL.
    pub fn vero_call(self) -> (&'static str, &'static str) {
        match self {
            ItemKind::Event => ("POST", "/events/track"),
            ItemKind::UserTrack => ("POST", "/users/track"),
            ItemKind::UserEdit => ("PUT", "/users/edit"),
            ItemKind::UserTags => ("PUT", "/users/tags/edit"),
            ItemKind::UserUnsubscribe => ("POST", "/users/unsubscribe"),
            ItemKind::UserResubscribe => ("POST", "/users/resubscribe"),
            ItemKind::UserReidentify => ("PUT", "/users/reidentify"),
            ItemKind::UserDelete => ("POST", "/users/delete"),
        }
    }
}

/// A committed profile change as the outbox keeps it: its kind and its normalised body
/// (the Vero call's body, without credentials).
pub fn change_item(change: &ProfileChange) -> (ItemKind, String) {
    fn who(user: &UserRef) -> Map<String, Value> {
        let mut m = Map::new();
        match user {
            UserRef::Id(id) => m.insert("id".into(), Value::String(id.as_str().to_owned())),
            UserRef::Email(e) => m.insert("email".into(), Value::String(e.as_str().to_owned())),
        };
        m
    }
    let (kind, body) = match change {
        ProfileChange::Track {
            identity,
            phone_number,
            channels,
            data,
        } => {
            let mut m = Map::new();
            if let Some(id) = identity.id() {
                m.insert("id".into(), Value::String(id.as_str().to_owned()));
            }
            if let Some(email) = identity.email() {
                m.insert("email".into(), Value::String(email.as_str().to_owned()));
            }
            if let Some(phone) = phone_number {
                m.insert("phone_number".into(), Value::String(phone.clone()));
            }
            if !channels.is_empty() {
                m.insert("channels".into(), Value::Array(channels.clone()));
            }
            m.insert("data".into(), Value::Object(data.clone()));
            (ItemKind::UserTrack, m)
        }
        ProfileChange::Edit { user, changes } => {
            let mut m = who(user);
            m.insert("changes".into(), Value::Object(changes.clone()));
            (ItemKind::UserEdit, m)
        }
        ProfileChange::Tags { user, add, remove } => {
            let mut m = who(user);
            let list =
                |v: &Vec<String>| Value::Array(v.iter().cloned().map(Value::String).collect());
            m.insert("add".into(), list(add));
            m.insert("remove".into(), list(remove));
            (ItemKind::UserTags, m)
        }
        ProfileChange::Subscription { user, subscribed } => (
            if *subscribed {
                ItemKind::UserResubscribe
            } else {
                ItemKind::UserUnsubscribe
            },
            who(user),
        ),
        ProfileChange::Delete { user } => (ItemKind::UserDelete, who(user)),
        ProfileChange::Reidentify { id, new_id } => {
            let mut m = Map::new();
            m.insert("id".into(), Value::String(id.as_str().to_owned()));
            m.insert("new_id".into(), Value::String(new_id.as_str().to_owned()));
            (ItemKind::UserReidentify, m)
        }
    };
    (kind, Value::Object(body).to_string())
}

/// A deletion as delivered: `{"id": ..}`, the user it deleted as stored (its id, else its
/// key), whichever way the request named it: Vero's `users/delete` takes the id. Nothing
/// else of the user (no email): the deletion is kept until delivered.
pub fn delete_body(user: &crate::plan::UserRow) -> String {
    let id = user
        .user_id
        .clone()
        .unwrap_or_else(|| user.user_key.clone());
    serde_json::json!({ "id": id }).to_string()
}

/// One committed item of a project's outbox, as a delivery loop reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxItem {
    /// Its position in the project's outbox (commit order).
    pub pos: i64,
    /// What it is.
    pub kind: ItemKind,
    /// The user it concerns (the store's row id): order is kept per user.
    pub user_ref: i64,
    /// When it was received (µs).
    pub received_at: i64,
    /// An event as stored (export shape); `None` for a profile change, or for an event
    /// deleted since (with its user): such an item is skipped.
    pub event: Option<EventRow>,
    /// A profile change's normalised body.
    pub body: Option<String>,
}

/// What an event's outbox item keeps of its identity: the id and email it was tracked with
/// (`{"id":..,"email":..}`, either may be missing), so it is delivered as committed even
/// after a reidentify or a merge renamed its user.
pub fn event_identity(identity: &crate::Identity) -> String {
    let mut m = Map::new();
    if let Some(id) = identity.id() {
        m.insert("id".into(), Value::String(id.as_str().to_owned()));
    }
    if let Some(email) = identity.email() {
        m.insert("email".into(), Value::String(email.as_str().to_owned()));
    }
    Value::Object(m).to_string()
}

impl OutboxItem {
    /// About how many bytes the item holds (its event's data and names, its body): reads of
    /// the outbox stop at [`crate::read::PAGE_BYTES`] of them, so a batch of large events
    /// is never held whole (1,000 events of 1 MiB would be 1 GB).
    pub fn bytes(&self) -> usize {
        let event = self.event.as_ref().map_or(0, |e| {
            e.data.len()
                + e.event_name.len()
                + e.event_key.len()
                + e.user_id.as_ref().map_or(0, String::len)
                + e.email.as_ref().map_or(0, String::len)
        });
        event + self.body.as_ref().map_or(0, String::len) + 64
    }

    /// The event as committed: its stored row, with the identity it was tracked with (when
    /// the item kept it) in place of its user's current one.
    pub fn committed_event(&self) -> Option<EventRow> {
        let mut event = self.event.clone()?;
        if let Some(Ok(Value::Object(identity))) =
            self.body.as_deref().map(serde_json::from_str::<Value>)
        {
            let text = |k: &str| identity.get(k).and_then(Value::as_str).map(str::to_owned);
            event.user_id = text("id");
            event.email = text("email");
        }
        Some(event)
    }

    /// The item's stable id: the same on every attempt, every node, after every crash.
    pub fn id(&self, project: ProjectId) -> String {
        format!("trk_{}_{}", project.get(), self.pos)
    }

    /// Whether there is still something to send (an event deleted with its user is not).
    pub fn is_live(&self) -> bool {
        match self.kind {
            ItemKind::Event => self.event.is_some(),
            _ => self.body.is_some(),
        }
    }

    /// The item as a webhook batch holds it: `{id, type, received_at, event | user}`.
    pub fn write_json(&self, project: ProjectId, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"id\":");
        let _ = serde_json::to_writer(&mut *out, &self.id(project));
        out.extend_from_slice(b",\"type\":\"");
        out.extend_from_slice(self.kind.as_str().as_bytes());
        out.extend_from_slice(b"\",\"received_at\":\"");
        out.extend_from_slice(
            Timestamp::from_micros(self.received_at)
                .to_rfc3339()
                .as_bytes(),
        );
        out.push(b'"');
        match (self.committed_event(), &self.body) {
            (Some(event), _) => {
                out.extend_from_slice(b",\"event\":");
                event.write_json(out);
            }
            (None, Some(body)) => {
                out.extend_from_slice(b",\"user\":");
                out.extend_from_slice(body.as_bytes());
            }
            (None, None) => {}
        }
        out.push(b'}');
    }

    /// The Vero call this item came from: method, path under the base URL, JSON body.
    /// An event's `extras.check_id` is the item's id: Vero takes `check_id` in place of
    /// empty `data` in its dedup key, so two events trackd accepted (told apart by their
    /// own `check_id`, which is not kept) stay two at Vero, and a re-sent item stays one.
    pub fn vero_request(&self, project: ProjectId) -> (&'static str, &'static str, Vec<u8>) {
        let (method, path) = self.kind.vero_call();
        let body = match (self.committed_event(), &self.body) {
            (Some(e), _) => {
                let mut identity = Map::new();
                if let Some(id) = &e.user_id {
                    identity.insert("id".into(), Value::String(id.clone()));
                }
                if let Some(email) = &e.email {
                    identity.insert("email".into(), Value::String(email.clone()));
                }
                let data: Value =
                    serde_json::from_str(&e.data).unwrap_or(Value::Object(Map::new()));
                let mut extras = Map::new();
                if let Some(source) = &e.source {
                    extras.insert("source".into(), Value::String(source.clone()));
                }
                extras.insert(
                    "created_at".into(),
                    Value::String(Timestamp::from_micros(e.created_at).to_rfc3339()),
                );
                extras.insert("check_id".into(), Value::String(self.id(project)));
                serde_json::to_vec(&serde_json::json!({
                    "identity": identity,
                    "event_name": e.event_name,
                    "data": data,
                    "extras": extras,
                }))
                .unwrap_or_default()
            }
            (None, Some(body)) => body.as_bytes().to_vec(),
            (None, None) => b"{}".to_vec(),
        };
        (method, path, body)
    }
}

/// A webhook batch's body: `{"type":"trackd.batch","project":..,"items":[...]}`.
pub fn webhook_body(project: ProjectId, project_name: &str, items: &[&OutboxItem]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + items.len() * 420);
    out.extend_from_slice(b"{\"type\":\"trackd.batch\",\"project\":");
    let _ = serde_json::to_writer(&mut out, project_name);
    out.extend_from_slice(b",\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        item.write_json(project, &mut out);
    }
    out.extend_from_slice(b"]}");
    out
}

/// A batch's stable id (Standard Webhooks' `webhook-id`): the destination, its generation
/// and the range of outbox positions the batch covers, so a retry, or a resend after a
/// restart, carries the same id, while a replay (a new generation) is a message of its own
/// that receivers deduplicating on the id do not drop.
pub fn batch_id(destination: i64, generation: i64, after: i64, last: i64) -> String {
    format!("msg_{destination}_{generation}_{after}_{last}")
}

/// What an answer (or its absence) means for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Acknowledged (2xx).
    Ack,
    /// Try again later; the answer's `Retry-After`, when it gave one.
    Retry(Option<Duration>),
    /// Refused for good: to the dead letters.
    Dead,
    /// The credential is wrong: pause the destination.
    Pause,
}

/// Classifies an HTTP status (DESIGN §8): 2xx acknowledges; 408, 429 and 5xx are retried;
/// a `vero` destination pauses on 401; other answers are refused for good.
pub fn verdict(status: u16, retry_after: Option<Duration>, kind: DestinationKind) -> Verdict {
    match status {
        200..=299 => Verdict::Ack,
        408 | 429 | 500..=599 => Verdict::Retry(retry_after),
        401 if kind == DestinationKind::Vero => Verdict::Pause,
        _ => Verdict::Dead,
    }
}

/// Reads a `Retry-After` header: delay seconds, or an HTTP date (then the time until it).
pub fn retry_after(value: &str, now: Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(MAX_BACKOFF.as_secs())));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let micros = at.timestamp_micros() - now.as_micros();
    Some(Duration::from_micros(micros.max(0) as u64).min(MAX_BACKOFF))
}

/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// The wait before attempt `attempt + 1` (0 after the first failure): exponential from
/// `base`, doubling to [`MAX_BACKOFF`], with full jitter (`jitter` in `[0, 1)`), and never
/// shorter than what the receiver asked for.
pub fn backoff(base: Duration, attempt: u32, jitter: f64, asked: Option<Duration>) -> Duration {
    let ceiling = base
        .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
        .min(MAX_BACKOFF);
    let wait = ceiling.mul_f64(jitter.clamp(0.0, 1.0));
    match asked {
        Some(asked) => wait.max(asked.min(MAX_BACKOFF)),
        None => wait,
    }
}

/// A dead letter's copy of the answer: at most [`DEAD_LETTER_BODY_BYTES`], cut at a
/// character boundary.
pub fn dead_letter_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut end = text.len().min(DEAD_LETTER_BODY_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    // No NUL: PostgreSQL's text refuses it (the dead letter would never be written).
    text[..end].replace('\0', "\u{fffd}")
}

/// A new webhook signing secret: `whsec_` and 32 random bytes in base64 (Standard Webhooks).
pub fn generate_secret() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut key);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// The `webhook-signature` of a message (Standard Webhooks 1.0): `v1,` and the base64
/// HMAC-SHA256, under the secret's key, of `id.timestamp.body`. `None` when the secret is
/// not `whsec_` and base64.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    use base64::Engine;
    use hmac::{KeyInit, Mac};
    let engine = base64::engine::general_purpose::STANDARD;
    let key = engine.decode(secret.strip_prefix("whsec_")?).ok()?;
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&key).ok()?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(format!("v1,{}", engine.encode(mac.finalize().into_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> Result<DestinationSpec, FieldError> {
        DestinationSpec::from_json(v.as_object().expect("object"))
    }

    #[test]
    fn specs_are_checked_field_by_field() {
        let ok = spec(
            json!({"name": "hook", "kind": "webhook", "url": "http://127.0.0.1:9/x",
            "events": ["Viewed Product", "viewed product", "Signup"]}),
        )
        .expect("valid");
        assert_eq!(ok.batch, DEFAULT_BATCH);
        assert_eq!(
            ok.events,
            vec!["signup".to_owned(), "viewed_product".to_owned()]
        );
        let vero = spec(json!({"name": "v", "kind": "vero", "token": "abc"})).expect("valid");
        assert_eq!(vero.url, VERO_DEFAULT_URL);
        let nats = spec(json!({"name": "n", "kind": "nats", "url": "nats://127.0.0.1:4222"}))
            .expect("valid");
        assert_eq!(nats.subject_prefix.as_deref(), Some("trackd"));
        for (body, field) in [
            (json!({"kind": "webhook", "url": "http://x"}), "name"),
            (
                json!({"name": "a b", "kind": "webhook", "url": "http://x"}),
                "name",
            ),
            (
                json!({"name": "a", "kind": "kafka", "url": "http://x"}),
                "kind",
            ),
            (
                json!({"name": "a", "kind": "webhook", "url": "ftp://x"}),
                "url",
            ),
            (json!({"name": "a", "kind": "webhook"}), "url"),
            (
                json!({"name": "a", "kind": "webhook", "url": "http://h:99999/"}),
                "url",
            ),
            (
                json!({"name": "a", "kind": "webhook", "url": "http://[::1"}),
                "url",
            ),
            (
                json!({"name": "a", "kind": "nats", "url": "nats://"}),
                "url",
            ),
            (
                json!({"name": "a", "kind": "webhook", "url": "http://x", "batch": 0}),
                "batch",
            ),
            (
                json!({"name": "a", "kind": "webhook", "url": "http://x", "batch": 1001}),
                "batch",
            ),
            (
                json!({"name": "a", "kind": "webhook", "url": "http://x", "only": "x"}),
                "only",
            ),
            (
                json!({"name": "a", "kind": "webhook", "url": "http://x", "token": "t"}),
                "token",
            ),
            (json!({"name": "a", "kind": "vero"}), "token"),
            (
                json!({"name": "a", "kind": "nats", "url": "http://x"}),
                "url",
            ),
            (
                json!({"name": "a", "kind": "nats", "url": "nats://x", "subject_prefix": "a..b"}),
                "subject_prefix",
            ),
            (
                json!({"name": "a", "kind": "webhook", "url": "http://x", "color": 1}),
                "color",
            ),
            (
                json!({"name": "a", "kind": "webhook", "url": "http://x", "events": [1]}),
                "events[0]",
            ),
            (
                json!({"name": "a", "kind": "webhook", "url": "http://x", "events": "Paid"}),
                "events",
            ),
            (
                json!({"name": "a", "kind": "vero", "token": "t", "url": "http://x/api/v2?r=eu"}),
                "url",
            ),
            (
                json!({"name": "a", "kind": "vero", "token": "t", "url": "http://x/api/v2#f"}),
                "url",
            ),
        ] {
            assert_eq!(
                spec(body.clone()).expect_err(&body.to_string()).field,
                field
            );
        }
    }

    #[test]
    fn stored_settings_read_back() {
        let s = spec(json!({"name": "v", "kind": "vero", "token": "abc", "only": "users"}))
            .expect("valid");
        let back = DestinationSpec::from_stored("v", "vero", &s.settings_json()).expect("reads");
        assert_eq!(back, s);
    }

    #[test]
    fn statuses_decide_retry_dead_or_pause() {
        use DestinationKind::*;
        assert_eq!(verdict(204, None, Webhook), Verdict::Ack);
        for s in [408, 429, 500, 503] {
            assert!(matches!(verdict(s, None, Webhook), Verdict::Retry(_)));
        }
        assert_eq!(verdict(400, None, Webhook), Verdict::Dead);
        assert_eq!(verdict(401, None, Webhook), Verdict::Dead);
        assert_eq!(verdict(401, None, Vero), Verdict::Pause);
        assert_eq!(verdict(302, None, Webhook), Verdict::Dead);
    }

    #[test]
    fn backoff_doubles_to_ten_minutes_with_jitter_and_honours_retry_after() {
        let base = Duration::from_secs(1);
        assert_eq!(backoff(base, 0, 0.999_999, None).as_secs(), 0);
        assert_eq!(backoff(base, 3, 0.5, None), Duration::from_secs(4));
        assert_eq!(backoff(base, 30, 1.0, None), MAX_BACKOFF);
        assert_eq!(
            backoff(base, 0, 0.0, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        let now = Timestamp::from_micros(1_700_000_000_000_000);
        assert_eq!(retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(retry_after("99999", now), Some(MAX_BACKOFF));
        assert_eq!(retry_after("soon", now), None);
    }

    #[test]
    fn profile_changes_keep_their_vero_body() {
        let change = ProfileChange::Tags {
            user: UserRef::Id(
                crate::UserId::parse(&json!("42"), "id")
                    .expect("id")
                    .expect("some"),
            ),
            add: vec!["vip".into()],
            remove: vec![],
        };
        let (kind, body) = change_item(&change);
        assert_eq!(kind, ItemKind::UserTags);
        assert_eq!(body, r#"{"id":"42","add":["vip"],"remove":[]}"#);
        assert_eq!(kind.vero_call(), ("PUT", "/users/tags/edit"));
        assert_eq!(ItemKind::from_code(kind.code()), Some(kind));
    }

    #[test]
    fn filters_choose_events_and_changes_but_every_destination_gets_deletes() {
        let item = |kind| OutboxItem {
            pos: 1,
            kind,
            user_ref: 1,
            received_at: 0,
            event: None,
            body: Some("{}".into()),
        };
        let spec = |only: &str, events: Value| {
            DestinationSpec::from_json(
                json!({"name": "d", "kind": "webhook", "url": "http://x", "only": only,
                       "events": events})
                .as_object()
                .expect("object"),
            )
            .expect("valid")
        };
        let events_only = spec("events", json!([]));
        let paid_only = spec("all", json!(["Paid"]));
        let users_only = spec("users", json!([]));
        for d in [&events_only, &paid_only, &users_only] {
            assert!(d.wants(&item(ItemKind::UserDelete)), "{:?}", d.only);
        }
        assert!(!events_only.wants(&item(ItemKind::UserTrack)));
        assert!(paid_only.wants(&item(ItemKind::UserEdit)));
        assert!(users_only.wants(&item(ItemKind::UserReidentify)));
        assert!(!users_only.wants(&item(ItemKind::Event)));
    }

    #[test]
    fn dead_letter_excerpts_hold_no_nul() {
        assert_eq!(dead_letter_excerpt(b"a\0b"), "a\u{fffd}b");
    }

    #[test]
    fn dead_letter_excerpts_stop_at_a_character() {
        let body = "é".repeat(600);
        let cut = dead_letter_excerpt(body.as_bytes());
        assert!(cut.len() <= DEAD_LETTER_BODY_BYTES && cut.len() >= DEAD_LETTER_BODY_BYTES - 1);
    }

    #[test]
    fn signatures_match_the_standard_webhooks_test_vector() {
        // From the Standard Webhooks reference libraries' tests.
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(
            sig.as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
        assert!(generate_secret().starts_with("whsec_"));
        assert_eq!(sign("nope", "a", 1, b""), None);
    }
}
