//! Profile changes: the `users/*` routes' bodies become a validated [`ProfileChange`], and the
//! merge rules that apply them ([`merge_properties`], [`merge_channels`], [`merge_tags`]).

use serde_json::{Map, Value};

use crate::error::FieldError;
use crate::identity::{Email, Identity, UserId, MAX_IDENTITY_CHARS};
use crate::project::ProjectId;
use crate::time::Timestamp;

/// The `users/*` operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileOp {
    /// `users/track`: create or update.
    Track,
    /// `users/edit`: merge `changes` into the properties.
    Edit,
    /// `users/tags/edit`: add and remove tags.
    Tags,
    /// `users/unsubscribe`.
    Unsubscribe,
    /// `users/resubscribe`.
    Resubscribe,
    /// `users/delete`.
    Delete,
    /// `users/reidentify`: rename, or merge into an existing `new_id`.
    Reidentify,
}

/// How a request names an existing user: by id, or by email alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserRef {
    /// The user whose key is this id.
    Id(UserId),
    /// The user whose key is this email, else the one whose email field is it.
    Email(Email),
}

impl UserRef {
    /// Reads top-level `id` / `email` (the id wins when both are given).
    fn parse(body: &Map<String, Value>) -> Result<Self, FieldError> {
        let identity = top_level_identity(body)?;
        Ok(match (identity.id(), identity.email()) {
            (Some(id), _) => UserRef::Id(id.clone()),
            (None, Some(email)) => UserRef::Email(email.clone()),
            (None, None) => return Err(FieldError::new("id", "an id or an email is required")),
        })
    }

    /// The field a "no such user" answer names.
    pub fn field(&self) -> &'static str {
        match self {
            UserRef::Id(_) => "id",
            UserRef::Email(_) => "email",
        }
    }

    /// The user key this reference looks up first.
    pub fn key(&self) -> &str {
        match self {
            UserRef::Id(id) => id.as_str(),
            UserRef::Email(email) => email.as_str(),
        }
    }
}

/// A validated profile change.
#[derive(Debug, Clone)]
pub enum ProfileChange {
    /// Create or update: set the given fields, merge `data`, merge `channels`.
    Track {
        /// Who (the id when given, else the email, is the user key).
        identity: Identity,
        /// `phone_number`, when given.
        phone_number: Option<String>,
        /// Channels to merge by type and address.
        channels: Vec<Value>,
        /// Properties to merge (shallow).
        data: Map<String, Value>,
    },
    /// Merge `changes` into the properties of an existing user.
    Edit {
        /// Who.
        user: UserRef,
        /// Properties to merge (shallow).
        changes: Map<String, Value>,
    },
    /// Add and remove tags of an existing user.
    Tags {
        /// Who.
        user: UserRef,
        /// Tags to add.
        add: Vec<String>,
        /// Tags to remove (after adding).
        remove: Vec<String>,
    },
    /// Set the subscription flag, creating the user if unknown so the choice is kept.
    Subscription {
        /// Who.
        user: UserRef,
        /// The new flag.
        subscribed: bool,
    },
    /// Remove the user, its events and its dedup records.
    Delete {
        /// Who.
        user: UserRef,
    },
    /// Rename `id` to `new_id`, merging into `new_id` when it exists; nothing when they
    /// are equal.
    Reidentify {
        /// The current id.
        id: UserId,
        /// The new id.
        new_id: UserId,
    },
}

/// The most a profile may hold: one tenant's request must never make the shared writer do
/// unbounded work, nor a profile grow without end (DESIGN §7: bounded everything).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileLimits {
    /// Channels on one profile.
    pub channels: usize,
    /// Tags on one profile.
    pub tags: usize,
    /// Bytes of the profile's properties as stored (compact JSON).
    pub properties_bytes: usize,
}

impl Default for ProfileLimits {
    fn default() -> Self {
        ProfileLimits {
            channels: 100,
            tags: 1_000,
            properties_bytes: 64 * 1024,
        }
    }
}

impl ProfileLimits {
    /// Refuses a request that alone goes past a bound, before it reaches the writer.
    fn check_request(&self, change: &ProfileChange) -> Result<(), FieldError> {
        let too_many = |field: &str, n: usize, max: usize, what: &str| {
            if n > max {
                Err(FieldError::new(
                    field,
                    format!("{n} {what}, more than a profile may hold ({max})"),
                ))
            } else {
                Ok(())
            }
        };
        match change {
            ProfileChange::Track { channels, data, .. } => {
                too_many("channels", channels.len(), self.channels, "channels")?;
                self.check_properties("data", data)
            }
            ProfileChange::Edit { changes, .. } => self.check_properties("changes", changes),
            ProfileChange::Tags { add, remove, .. } => {
                too_many("add", add.len(), self.tags, "tags")?;
                too_many("remove", remove.len(), self.tags, "tags")
            }
            _ => Ok(()),
        }
    }

    fn check_properties(&self, field: &str, map: &Map<String, Value>) -> Result<(), FieldError> {
        let bytes = properties_bytes(map);
        if bytes > self.properties_bytes {
            return Err(FieldError::new(
                field,
                format!(
                    "{bytes} bytes of properties, more than a profile may hold ({})",
                    self.properties_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// The size of properties as stored (compact JSON).
pub fn properties_bytes(map: &Map<String, Value>) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a Value to a counter cannot fail.
    let _ = serde_json::to_writer(&mut count, map);
    count.0
}

/// A profile change for a project, with the time it was received.
#[derive(Debug, Clone)]
pub struct ProfileRequest {
    /// The project the credential belongs to.
    pub project: ProjectId,
    /// When the server received it.
    pub received_at: Timestamp,
    /// What to change.
    pub change: ProfileChange,
    /// What the changed profile may hold (checked again on the merged profile).
    pub limits: ProfileLimits,
}

impl ProfileRequest {
    /// Validates the body of a `users/*` call.
    pub fn parse(
        op: ProfileOp,
        body: &Map<String, Value>,
        project: ProjectId,
        received_at: Timestamp,
    ) -> Result<Self, FieldError> {
        let change = match op {
            ProfileOp::Track => ProfileChange::Track {
                identity: top_level_identity(body)?,
                phone_number: optional_string(body, "phone_number")?,
                channels: channels(body)?,
                data: optional_object(body, "data")?.unwrap_or_default(),
            },
            ProfileOp::Edit => ProfileChange::Edit {
                user: UserRef::parse(body)?,
                changes: optional_object(body, "changes")?
                    .ok_or_else(|| FieldError::new("changes", "is required"))?,
            },
            ProfileOp::Tags => ProfileChange::Tags {
                user: UserRef::parse(body)?,
                add: tag_list(body, "add")?,
                remove: tag_list(body, "remove")?,
            },
            ProfileOp::Unsubscribe | ProfileOp::Resubscribe => ProfileChange::Subscription {
                user: UserRef::parse(body)?,
                subscribed: op == ProfileOp::Resubscribe,
            },
            ProfileOp::Delete => ProfileChange::Delete {
                user: UserRef::parse(body)?,
            },
            ProfileOp::Reidentify => {
                // `new_id` equal to `id` is valid and changes nothing (older clients send it).
                ProfileChange::Reidentify {
                    id: required_id(body, "id")?,
                    new_id: required_id(body, "new_id")?,
                }
            }
        };
        Ok(ProfileRequest {
            project,
            received_at,
            change,
            limits: ProfileLimits::default(),
        })
    }

    /// Bounds the change by `limits`: a request that alone goes past one is refused here;
    /// the merged profile is checked again where it is merged ([`crate::plan`]).
    pub fn limited(mut self, limits: ProfileLimits) -> Result<Self, FieldError> {
        limits.check_request(&self.change)?;
        self.limits = limits;
        Ok(self)
    }
}

/// `id` / `email` at the top level of a `users/*` body; a body with neither names `id`.
fn top_level_identity(body: &Map<String, Value>) -> Result<Identity, FieldError> {
    Identity::from_fields(body, "").map_err(|e| {
        if e.field == "identity" {
            FieldError::new("id", e.problem)
        } else {
            e
        }
    })
}

fn required_id(body: &Map<String, Value>, field: &str) -> Result<UserId, FieldError> {
    match body.get(field) {
        Some(v) => UserId::parse(v, field)?,
        None => None,
    }
    .ok_or_else(|| FieldError::new(field, "is required"))
}

fn optional_string(body: &Map<String, Value>, field: &str) -> Result<Option<String>, FieldError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => {
            if s.chars().count() > MAX_IDENTITY_CHARS {
                return Err(FieldError::new(
                    field,
                    format!("longer than {MAX_IDENTITY_CHARS} characters"),
                ));
            }
            Ok(Some(s.clone()))
        }
        Some(_) => Err(FieldError::new(field, "must be a string")),
    }
}

fn optional_object(
    body: &Map<String, Value>,
    field: &str,
) -> Result<Option<Map<String, Value>>, FieldError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map.clone())),
        Some(_) => Err(FieldError::new(field, "must be an object")),
    }
}

fn tag_list(body: &Map<String, Value>, field: &str) -> Result<Vec<String>, FieldError> {
    let items = match body.get(field) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(FieldError::new(field, "must be an array of strings")),
    };
    let mut tags = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match item {
            // Clients send empty strings for unset list entries (the Go client's AddTags):
            // there is no tag in them.
            Value::String(s) if s.is_empty() => {}
            Value::String(s) if s.chars().count() <= MAX_IDENTITY_CHARS => tags.push(s.clone()),
            Value::String(_) => {
                return Err(FieldError::new(
                    format!("{field}[{i}]"),
                    format!("longer than {MAX_IDENTITY_CHARS} characters"),
                ))
            }
            _ => return Err(FieldError::new(format!("{field}[{i}]"), "must be a string")),
        }
    }
    Ok(tags)
}

fn channels(body: &Map<String, Value>) -> Result<Vec<Value>, FieldError> {
    let one;
    let items = match body.get("channels") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items.as_slice(),
        // RudderStack's mobile identify sends its one channel as an object.
        Some(channel @ Value::Object(_)) => {
            one = [channel.clone()];
            &one[..]
        }
        Some(_) => {
            return Err(FieldError::new(
                "channels",
                "must be an array of objects (or one object)",
            ))
        }
    };
    for (i, item) in items.iter().enumerate() {
        let Value::Object(channel) = item else {
            return Err(FieldError::new(
                format!("channels[{i}]"),
                "must be an object",
            ));
        };
        for key in ["type", "address"] {
            match channel.get(key) {
                Some(Value::String(s)) if !s.is_empty() => {}
                Some(_) => {
                    return Err(FieldError::new(
                        format!("channels[{i}].{key}"),
                        "must be a non-empty string",
                    ))
                }
                None => {
                    return Err(FieldError::new(
                        format!("channels[{i}].{key}"),
                        "is required",
                    ))
                }
            }
        }
    }
    Ok(items.to_vec())
}

/// Shallow merge: every key of `changes` replaces the property of the same name.
pub fn merge_properties(properties: &mut Map<String, Value>, changes: Map<String, Value>) {
    for (key, value) in changes {
        properties.insert(key, value);
    }
}

/// Merges channels by `type` + `address`: a channel already present is replaced by the new
/// one, a new one is appended. An empty list changes nothing. Linear: one index of the
/// present channels, never a scan per new one.
pub fn merge_channels(channels: &mut Vec<Value>, new: Vec<Value>) {
    if new.is_empty() {
        return;
    }
    let id = |c: &Value| {
        let part = |key: &str| c.get(key).map(Value::to_string);
        (part("type"), part("address"))
    };
    let mut index: std::collections::HashMap<_, usize> = channels
        .iter()
        .enumerate()
        .map(|(i, c)| (id(c), i))
        .collect();
    for channel in new {
        match index.entry(id(&channel)) {
            std::collections::hash_map::Entry::Occupied(at) => channels[*at.get()] = channel,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(channels.len());
                channels.push(channel);
            }
        }
    }
}

/// Adds, then removes, keeping the tags a sorted set. `O(n log n)` in all the tags
/// involved: a set, never a scan per tag.
pub fn merge_tags(tags: &mut Vec<String>, add: &[String], remove: &[String]) {
    let mut set: std::collections::BTreeSet<String> = std::mem::take(tags).into_iter().collect();
    set.extend(add.iter().cloned());
    for tag in remove {
        set.remove(tag);
    }
    *tags = set.into_iter().collect();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(op: ProfileOp, body: Value) -> Result<ProfileChange, String> {
        let Value::Object(map) = body else {
            panic!("object")
        };
        ProfileRequest::parse(op, &map, ProjectId::new(1), Timestamp::from_micros(0))
            .map(|r| r.change)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn user_refs_prefer_the_id() {
        let ProfileChange::Delete { user } =
            parse(ProfileOp::Delete, json!({"id": "42", "email": null})).expect("valid")
        else {
            panic!("delete")
        };
        assert_eq!(
            user,
            UserRef::Id(UserId::parse(&json!("42"), "id").expect("ok").expect("id"))
        );
        let ProfileChange::Delete { user } =
            parse(ProfileOp::Delete, json!({"email": "a@example.com"})).expect("valid")
        else {
            panic!("delete")
        };
        assert_eq!(user.field(), "email");
    }

    #[test]
    fn validation_errors_name_the_field() {
        let cases = [
            (ProfileOp::Edit, json!({"id": "1"}), "changes: is required"),
            (
                ProfileOp::Edit,
                json!({"id": "1", "changes": []}),
                "changes: must be an object",
            ),
            (
                ProfileOp::Edit,
                json!({"changes": {}}),
                "id: an id or an email is required",
            ),
            (
                ProfileOp::Tags,
                json!({"id": "1", "add": "vip"}),
                "add: must be an array of strings",
            ),
            (
                ProfileOp::Tags,
                json!({"id": "1", "remove": [1]}),
                "remove[0]: must be a string",
            ),
            (
                ProfileOp::Tags,
                json!({"id": "1", "add": ["", "x".repeat(255)]}),
                "add[1]: longer than 254 characters",
            ),
            (
                ProfileOp::Reidentify,
                json!({"id": "1"}),
                "new_id: is required",
            ),
            (
                ProfileOp::Reidentify,
                json!({"new_id": "1"}),
                "id: is required",
            ),
            (
                ProfileOp::Track,
                json!({"id": "1", "channels": "push"}),
                "channels: must be an array of objects (or one object)",
            ),
            (
                ProfileOp::Track,
                json!({"id": "1", "channels": {}}),
                "channels[0].type: is required",
            ),
            (
                ProfileOp::Track,
                json!({"id": "1", "channels": [{"type": "push"}]}),
                "channels[0].address: is required",
            ),
            (
                ProfileOp::Track,
                json!({"id": "1", "phone_number": 5}),
                "phone_number: must be a string",
            ),
            (
                ProfileOp::Track,
                json!({"id": "1", "data": "x"}),
                "data: must be an object",
            ),
            (
                ProfileOp::Track,
                json!({"email": "bad"}),
                "email: not a valid email address",
            ),
        ];
        for (op, body, message) in cases {
            assert_eq!(
                parse(op, body.clone()).expect_err("refused"),
                message,
                "{body}"
            );
        }
    }

    #[test]
    fn what_real_clients_send_is_read() {
        // RudderStack's mobile identify: one channel as an object.
        let ProfileChange::Track { channels, .. } = parse(
            ProfileOp::Track,
            json!({"id": "rs-2", "channels": {"address": "apns-token-abc", "device": "iPhone",
                   "platform": "iOS", "type": "push"}}),
        )
        .expect("valid") else {
            panic!("track")
        };
        assert_eq!(channels.len(), 1);
        // The Go client's AddTags: empty strings, and a null list.
        let ProfileChange::Tags { add, remove, .. } = parse(
            ProfileOp::Tags,
            json!({"id": "g", "add": ["", "", "t-shirt fanatic", "so many tags"], "remove": null}),
        )
        .expect("valid") else {
            panic!("tags")
        };
        assert_eq!(add, vec!["t-shirt fanatic", "so many tags"]);
        assert!(remove.is_empty());
        // A 2015 Node client: reidentify onto the same id.
        assert!(parse(
            ProfileOp::Reidentify,
            json!({"id": "dm@example.com", "new_id": "dm@example.com"})
        )
        .is_ok());
    }

    #[test]
    fn merges_follow_the_profile_rules() {
        let mut props = json!({"a": 1, "b": {"x": 1}})
            .as_object()
            .cloned()
            .expect("map");
        merge_properties(
            &mut props,
            json!({"b": {"y": 2}, "c": null})
                .as_object()
                .cloned()
                .expect("map"),
        );
        assert_eq!(
            Value::Object(props),
            json!({"a": 1, "b": {"y": 2}, "c": null})
        );

        let mut channels = vec![json!({"type": "push", "address": "D1", "platform": "ios"})];
        merge_channels(&mut channels, vec![]);
        assert_eq!(channels.len(), 1);
        merge_channels(
            &mut channels,
            vec![
                json!({"type": "push", "address": "D1", "platform": "android"}),
                json!({"type": "push", "address": "D2"}),
            ],
        );
        assert_eq!(
            channels,
            vec![
                json!({"type": "push", "address": "D1", "platform": "android"}),
                json!({"type": "push", "address": "D2"})
            ]
        );

        let mut tags = vec!["b".to_owned()];
        merge_tags(
            &mut tags,
            &["a".into(), "b".into(), "c".into()],
            &["c".into()],
        );
        assert_eq!(tags, vec!["a", "b"]);
        merge_tags(&mut tags, &[], &[]);
        assert_eq!(tags, vec!["a", "b"]);
    }
}
