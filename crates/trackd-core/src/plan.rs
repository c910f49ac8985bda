//! The profile rules as a pure planner: what a `users/*` change does to the rows it finds.
//!
//! A store executes a change in three steps, the middle one here: it reads what
//! [`lookup`] asks for (inside its write transaction), [`plan`] decides, and it writes the
//! [`Plan`] with its own SQL. So both stores share every rule (who is found, what merges,
//! when a change is a 404 or nothing at all) and only the statements differ.

use serde_json::{Map, Value};

use crate::error::FieldError;
use crate::users::{
    merge_channels, merge_properties, merge_tags, properties_bytes, ProfileChange, ProfileLimits,
    UserRef,
};

/// A user's row, decoded: what the planner reads and writes. `id` 0 is a user not stored
/// yet.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRow {
    /// The row id (0 until inserted).
    pub id: i64,
    /// The user key: the id, else the email.
    pub user_key: String,
    /// The id, if the user has one.
    pub user_id: Option<String>,
    /// The email, if known.
    pub email: Option<String>,
    /// The phone number, if known.
    pub phone_number: Option<String>,
    /// Channels, unique by type and address.
    pub channels: Vec<Value>,
    /// Properties.
    pub properties: Map<String, Value>,
    /// Tags, a sorted set.
    pub tags: Vec<String>,
    /// The subscription flag.
    pub subscribed: bool,
    /// First seen, microseconds.
    pub first_seen: i64,
    /// Last seen, microseconds.
    pub last_seen: i64,
}

/// The columns [`UserRow::decode`] takes, in its order.
pub const USER_COLUMNS: &str = "id, user_key, user_id, email, phone_number, channels, \
                                properties, tags, subscribed, first_seen, last_seen";

/// The JSON columns of a row as stored: channels, properties, tags.
#[derive(Debug)]
pub struct EncodedJson {
    /// `channels` as a JSON array.
    pub channels: String,
    /// `properties` as a JSON object.
    pub properties: String,
    /// `tags` as a JSON array.
    pub tags: String,
}

impl UserRow {
    /// A row read as [`USER_COLUMNS`]. The JSON columns are only ever written by
    /// [`UserRow::encode`]; one that does not decode is read as empty rather than failing
    /// every later change of the user.
    #[allow(clippy::too_many_arguments)]
    pub fn decode(
        id: i64,
        user_key: String,
        user_id: Option<String>,
        email: Option<String>,
        phone_number: Option<String>,
        channels: &str,
        properties: &str,
        tags: &str,
        subscribed: bool,
        first_seen: i64,
        last_seen: i64,
    ) -> Self {
        let json = |text: &str| serde_json::from_str(text).unwrap_or(Value::Null);
        UserRow {
            id,
            user_key,
            user_id,
            email,
            phone_number,
            channels: match json(channels) {
                Value::Array(items) => items,
                _ => Vec::new(),
            },
            properties: match json(properties) {
                Value::Object(map) => map,
                _ => Map::new(),
            },
            tags: match json(tags) {
                Value::Array(items) => items
                    .into_iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
                _ => Vec::new(),
            },
            subscribed,
            first_seen,
            last_seen,
        }
    }

    /// A user not stored yet (id 0), first and last seen `now`.
    pub fn new(user_key: &str, now: i64) -> Self {
        UserRow {
            id: 0,
            user_key: user_key.to_owned(),
            user_id: None,
            email: None,
            phone_number: None,
            channels: Vec::new(),
            properties: Map::new(),
            tags: Vec::new(),
            subscribed: true,
            first_seen: now,
            last_seen: now,
        }
    }

    /// The JSON columns to store.
    pub fn encode(&self) -> EncodedJson {
        EncodedJson {
            channels: Value::Array(self.channels.clone()).to_string(),
            properties: Value::Object(self.properties.clone()).to_string(),
            tags: serde_json::json!(self.tags).to_string(),
        }
    }

    /// A reidentify onto this existing user: `old`'s profile merges in (this user's
    /// properties win, tags unite, unsubscribed if either was, the earliest first seen and
    /// the latest last seen).
    fn absorb(&mut self, old: &UserRow) {
        let mut properties = old.properties.clone();
        merge_properties(&mut properties, std::mem::take(&mut self.properties));
        self.properties = properties;
        let mut channels = old.channels.clone();
        merge_channels(&mut channels, std::mem::take(&mut self.channels));
        self.channels = channels;
        merge_tags(&mut self.tags, &old.tags, &[]);
        self.subscribed = self.subscribed && old.subscribed;
        self.email = self.email.take().or_else(|| old.email.clone());
        self.phone_number = self
            .phone_number
            .take()
            .or_else(|| old.phone_number.clone());
        self.first_seen = self.first_seen.min(old.first_seen);
        self.last_seen = self.last_seen.max(old.last_seen);
    }
}

/// What a change needs read before it can be planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Nothing: the change is decided without reading.
    Nothing,
    /// The user a reference names: by key; for an email alone, else the oldest user whose
    /// email field it is.
    User(UserRef),
    /// A reidentify: the user keyed `from`, and the one keyed `to` (by key only).
    Pair {
        /// The current id.
        from: String,
        /// The new id.
        to: String,
    },
}

/// What the store found for a [`Lookup`].
// One value per change, on the stack for a moment, never in a collection: boxing the rows
// would cost an allocation each for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Found {
    /// For [`Lookup::Nothing`].
    Nothing,
    /// For [`Lookup::User`].
    User(Option<UserRow>),
    /// For [`Lookup::Pair`]: the users keyed `from` and `to`.
    Pair(Option<UserRow>, Option<UserRow>),
}

/// What a change writes.
// As `Found`: one per change, short-lived.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Nothing to write (both tag lists empty, a reidentify onto the same id).
    Nothing,
    /// The change needs a user that does not exist: nothing is written.
    NotFound,
    /// The merged profile would go past a bound of [`ProfileLimits`]: nothing is written.
    Refused(FieldError),
    /// Insert (id 0) or update this row.
    Save(UserRow),
    /// Remove the user, its events and its dedup records.
    Delete(UserRow),
    /// A reidentify to a free id: the row with its new key (`from_key` was its old one);
    /// its events and dedup records go with it.
    Rename {
        /// The renamed row.
        user: UserRow,
        /// Its key before.
        from_key: String,
    },
    /// A reidentify onto an existing user: `from`'s events and dedup records move to
    /// `into`, `from` is removed, `into` (already merged) is saved.
    Merge {
        /// The user renamed away, to remove.
        from: UserRow,
        /// The user it merged into, to save.
        into: UserRow,
    },
}

/// What `change` needs read.
pub fn lookup(change: &ProfileChange) -> Lookup {
    match change {
        ProfileChange::Track { identity, .. } => match (identity.id(), identity.email()) {
            (Some(id), _) => Lookup::User(UserRef::Id(id.clone())),
            (None, Some(email)) => Lookup::User(UserRef::Email(email.clone())),
            // An identity always has one of the two.
            (None, None) => Lookup::Nothing,
        },
        ProfileChange::Edit { user, .. }
        | ProfileChange::Tags { user, .. }
        | ProfileChange::Subscription { user, .. }
        | ProfileChange::Delete { user } => Lookup::User(user.clone()),
        ProfileChange::Reidentify { id, new_id } if id == new_id => Lookup::Nothing,
        ProfileChange::Reidentify { id, new_id } => Lookup::Pair {
            from: id.as_str().to_owned(),
            to: new_id.as_str().to_owned(),
        },
    }
}

/// Decides what `change`, received at `now` (microseconds), writes given what was `found`
/// for its [`lookup`]; a change that would grow a profile past `limits` is refused. Only
/// growth is refused: a profile already past a bound (a reidentify merge, which is not
/// bounded since each side was; a bound lowered since) still takes every change that does
/// not make it bigger there, so an unsubscribe or a trim is never lost.
pub fn plan(change: &ProfileChange, now: i64, found: Found, limits: &ProfileLimits) -> Plan {
    let before = match &found {
        Found::User(Some(row)) => Size::of(row),
        _ => Size::default(),
    };
    match plan_unbounded(change, now, found) {
        Plan::Save(row) => match past_limits(&row, &before, limits, change) {
            Some(e) => Plan::Refused(e),
            None => Plan::Save(row),
        },
        other => other,
    }
}

/// What the bounds measure of a profile.
#[derive(Default)]
struct Size {
    channels: usize,
    tags: usize,
    properties_bytes: usize,
}

impl Size {
    fn of(row: &UserRow) -> Size {
        Size {
            channels: row.channels.len(),
            tags: row.tags.len(),
            properties_bytes: properties_bytes(&row.properties),
        }
    }
}

/// What in `row` grew past `limits` from its size `before`, named by the field that would
/// have put it there.
fn past_limits(
    row: &UserRow,
    before: &Size,
    limits: &ProfileLimits,
    change: &ProfileChange,
) -> Option<FieldError> {
    let after = Size::of(row);
    if after.channels > limits.channels && after.channels > before.channels {
        return Some(FieldError::new(
            "channels",
            format!(
                "the profile would hold {} channels, more than {}",
                row.channels.len(),
                limits.channels
            ),
        ));
    }
    if after.tags > limits.tags && after.tags > before.tags {
        return Some(FieldError::new(
            "add",
            format!(
                "the profile would hold {} tags, more than {}",
                row.tags.len(),
                limits.tags
            ),
        ));
    }
    let bytes = after.properties_bytes;
    if bytes > limits.properties_bytes && bytes > before.properties_bytes {
        let field = match change {
            ProfileChange::Edit { .. } => "changes",
            _ => "data",
        };
        return Some(FieldError::new(
            field,
            format!(
                "the profile's properties would take {bytes} bytes, more than {}",
                limits.properties_bytes
            ),
        ));
    }
    None
}

fn plan_unbounded(change: &ProfileChange, now: i64, found: Found) -> Plan {
    let (user, pair) = match found {
        Found::Nothing => (None, (None, None)),
        Found::User(user) => (user, (None, None)),
        Found::Pair(from, to) => (None, (from, to)),
    };
    match change {
        ProfileChange::Track {
            identity,
            phone_number,
            channels,
            data,
        } => {
            let mut row = user.unwrap_or_else(|| UserRow::new(identity.user_key(), now));
            if let Some(id) = identity.id() {
                row.user_id = Some(id.as_str().to_owned());
            }
            if let Some(email) = identity.email() {
                row.email = Some(email.as_str().to_owned());
            }
            if phone_number.is_some() {
                row.phone_number.clone_from(phone_number);
            }
            merge_channels(&mut row.channels, channels.clone());
            merge_properties(&mut row.properties, data.clone());
            row.last_seen = row.last_seen.max(now);
            Plan::Save(row)
        }
        ProfileChange::Edit { changes, .. } => match user {
            None => Plan::NotFound,
            Some(mut row) => {
                merge_properties(&mut row.properties, changes.clone());
                Plan::Save(row)
            }
        },
        ProfileChange::Tags { add, remove, .. } => match user {
            None => Plan::NotFound,
            Some(_) if add.is_empty() && remove.is_empty() => Plan::Nothing,
            Some(mut row) => {
                merge_tags(&mut row.tags, add, remove);
                Plan::Save(row)
            }
        },
        ProfileChange::Subscription {
            user: reference,
            subscribed,
        } => {
            // An unknown user is created so the choice is kept for when it shows up.
            let mut row = user.unwrap_or_else(|| {
                let mut row = UserRow::new(reference.key(), now);
                match reference {
                    UserRef::Id(id) => row.user_id = Some(id.as_str().to_owned()),
                    UserRef::Email(email) => row.email = Some(email.as_str().to_owned()),
                }
                row
            });
            row.subscribed = *subscribed;
            Plan::Save(row)
        }
        ProfileChange::Delete { .. } => match user {
            None => Plan::NotFound,
            Some(row) => Plan::Delete(row),
        },
        ProfileChange::Reidentify { id, new_id } => {
            if id == new_id {
                return Plan::Nothing;
            }
            match pair {
                (None, _) => Plan::NotFound,
                (Some(mut old), None) => {
                    let from_key = std::mem::replace(&mut old.user_key, new_id.as_str().to_owned());
                    old.user_id = Some(new_id.as_str().to_owned());
                    Plan::Rename {
                        user: old,
                        from_key,
                    }
                }
                (Some(old), Some(mut into)) => {
                    into.absorb(&old);
                    // Renamed to new_id: that is its id now, also when the user it joins
                    // was known by its email alone.
                    into.user_id = Some(new_id.as_str().to_owned());
                    Plan::Merge { from: old, into }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::{ProfileOp, ProfileRequest};
    use crate::{ProjectId, Timestamp};
    use serde_json::json;

    const NOW: i64 = 1_000;

    /// The planner with the default bounds (bounds have tests of their own).
    fn plan(change: &ProfileChange, now: i64, found: Found) -> Plan {
        super::plan(change, now, found, &ProfileLimits::default())
    }

    fn change(op: ProfileOp, body: Value) -> ProfileChange {
        let Value::Object(map) = body else {
            panic!("object")
        };
        ProfileRequest::parse(op, &map, ProjectId::new(1), Timestamp::from_micros(NOW))
            .expect("valid")
            .change
    }

    fn stored(key: &str) -> UserRow {
        let mut row = UserRow::new(key, 10);
        row.id = 7;
        row.user_id = Some(key.to_owned());
        row
    }

    #[test]
    fn lookups_name_what_is_read() {
        assert_eq!(
            lookup(&change(ProfileOp::Track, json!({"email": "a@example.com"}))),
            Lookup::User(UserRef::Email(
                crate::Email::parse(&json!("a@example.com"), "email")
                    .expect("ok")
                    .expect("some")
            ))
        );
        assert_eq!(
            lookup(&change(
                ProfileOp::Reidentify,
                json!({"id": "a", "new_id": "b"})
            )),
            Lookup::Pair {
                from: "a".into(),
                to: "b".into()
            }
        );
        assert_eq!(
            lookup(&change(
                ProfileOp::Reidentify,
                json!({"id": "a", "new_id": "a"})
            )),
            Lookup::Nothing
        );
    }

    #[test]
    fn track_creates_or_merges() {
        let c = change(
            ProfileOp::Track,
            json!({"id": "u", "email": "u@example.com", "data": {"plan": "pro"},
                   "channels": {"type": "push", "address": "tok"}}),
        );
        let Plan::Save(row) = plan(&c, NOW, Found::User(None)) else {
            panic!("save")
        };
        assert_eq!(row.id, 0);
        assert_eq!(row.user_key, "u");
        assert_eq!(row.email.as_deref(), Some("u@example.com"));
        assert_eq!(
            row.channels,
            vec![json!({"type": "push", "address": "tok"})]
        );
        assert_eq!(Value::Object(row.properties), json!({"plan": "pro"}));
        let Plan::Save(row) = plan(&c, NOW, Found::User(Some(stored("u")))) else {
            panic!("save")
        };
        assert_eq!((row.id, row.first_seen, row.last_seen), (7, 10, NOW));
    }

    #[test]
    fn unknown_users_are_not_found_except_where_the_rules_create_them() {
        for (op, body) in [
            (ProfileOp::Edit, json!({"id": "x", "changes": {}})),
            (ProfileOp::Tags, json!({"id": "x", "add": [], "remove": []})),
            (ProfileOp::Delete, json!({"id": "x"})),
        ] {
            assert_eq!(
                plan(&change(op, body), NOW, Found::User(None),),
                Plan::NotFound
            );
        }
        assert_eq!(
            plan(
                &change(ProfileOp::Reidentify, json!({"id": "x", "new_id": "y"})),
                NOW,
                Found::Pair(None, Some(stored("y")))
            ),
            Plan::NotFound
        );
        let Plan::Save(row) = plan(
            &change(ProfileOp::Unsubscribe, json!({"email": "e@example.com"})),
            NOW,
            Found::User(None),
        ) else {
            panic!("save")
        };
        assert_eq!(
            (row.user_key.as_str(), row.email.as_deref(), row.subscribed),
            ("e@example.com", Some("e@example.com"), false)
        );
    }

    #[test]
    fn empty_tag_edits_and_self_reidentify_write_nothing() {
        assert_eq!(
            plan(
                &change(
                    ProfileOp::Tags,
                    json!({"id": "u", "add": ["", ""], "remove": null})
                ),
                NOW,
                Found::User(Some(stored("u")))
            ),
            Plan::Nothing
        );
        assert_eq!(
            plan(
                &change(ProfileOp::Reidentify, json!({"id": "u", "new_id": "u"})),
                NOW,
                Found::Nothing
            ),
            Plan::Nothing
        );
    }

    #[test]
    fn merged_profiles_past_their_bounds_are_refused() {
        let limits = ProfileLimits {
            channels: 2,
            tags: 2,
            properties_bytes: 10,
        };
        let mut row = stored("u");
        row.tags = vec!["a".into(), "b".into()];
        let c = change(ProfileOp::Tags, json!({"id": "u", "add": ["c"]}));
        assert_eq!(
            super::plan(&c, NOW, Found::User(Some(row.clone())), &limits),
            Plan::Refused(FieldError::new(
                "add",
                "the profile would hold 3 tags, more than 2"
            ))
        );
        let c = change(
            ProfileOp::Tags,
            json!({"id": "u", "add": ["c"], "remove": ["a"]}),
        );
        assert!(matches!(
            super::plan(&c, NOW, Found::User(Some(row)), &limits),
            Plan::Save(_)
        ));
        let c = change(
            ProfileOp::Edit,
            json!({"id": "u", "changes": {"k": "123456"}}),
        );
        assert_eq!(
            super::plan(&c, NOW, Found::User(Some(stored("u"))), &limits),
            Plan::Refused(FieldError::new(
                "changes",
                "the profile's properties would take 14 bytes, more than 10"
            ))
        );
    }

    #[test]
    fn a_profile_already_past_a_bound_takes_changes_that_do_not_grow_it() {
        let limits = ProfileLimits {
            channels: 2,
            tags: 2,
            properties_bytes: 10,
        };
        let mut row = stored("u");
        row.tags = vec!["a".into(), "b".into(), "c".into(), "d".into()];
        let unsubscribe = change(ProfileOp::Unsubscribe, json!({"id": "u"}));
        assert!(matches!(
            super::plan(&unsubscribe, NOW, Found::User(Some(row.clone())), &limits),
            Plan::Save(r) if !r.subscribed
        ));
        let trim = change(ProfileOp::Tags, json!({"id": "u", "remove": ["a"]}));
        assert!(matches!(
            super::plan(&trim, NOW, Found::User(Some(row.clone())), &limits),
            Plan::Save(r) if r.tags.len() == 3
        ));
        let grow = change(ProfileOp::Tags, json!({"id": "u", "add": ["e"]}));
        assert_eq!(
            super::plan(&grow, NOW, Found::User(Some(row)), &limits),
            Plan::Refused(FieldError::new(
                "add",
                "the profile would hold 5 tags, more than 2"
            ))
        );
    }

    #[test]
    fn reidentify_renames_or_merges() {
        let c = change(ProfileOp::Reidentify, json!({"id": "a", "new_id": "b"}));
        let Plan::Rename { user, from_key } = plan(&c, NOW, Found::Pair(Some(stored("a")), None))
        else {
            panic!("rename")
        };
        assert_eq!((user.user_key.as_str(), from_key.as_str()), ("b", "a"));
        assert_eq!(user.user_id.as_deref(), Some("b"));

        let mut a = stored("a");
        a.properties = json!({"x": 1, "y": 1}).as_object().cloned().expect("map");
        a.tags = vec!["t1".into()];
        a.subscribed = false;
        a.first_seen = 5;
        let mut b = stored("b");
        b.id = 8;
        // Known by its email alone until now.
        b.user_id = None;
        b.properties = json!({"y": 2}).as_object().cloned().expect("map");
        b.tags = vec!["t2".into()];
        let Plan::Merge { from, into } = plan(&c, NOW, Found::Pair(Some(a), Some(b))) else {
            panic!("merge")
        };
        assert_eq!((from.id, into.id), (7, 8));
        assert_eq!(into.user_id.as_deref(), Some("b"), "renamed to new_id");
        assert_eq!(Value::Object(into.properties), json!({"x": 1, "y": 2}));
        assert_eq!(into.tags, vec!["t1", "t2"]);
        assert!(!into.subscribed);
        assert_eq!(into.first_seen, 5);
    }
}
