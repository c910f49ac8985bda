//! A user's row as both stores read, change and write it: decoded once, changed by the
//! domain's merge rules (`trackd_core::users`), encoded back. Only the SQL around it
//! differs between the stores.

use serde_json::{Map, Value};
use trackd_core::users::{merge_channels, merge_properties, merge_tags};

/// A user's row, decoded.
pub(crate) struct Profile {
    pub id: i64,
    pub user_key: String,
    pub user_id: Option<String>,
    pub email: Option<String>,
    pub phone_number: Option<String>,
    pub channels: Vec<Value>,
    pub properties: Map<String, Value>,
    pub tags: Vec<String>,
    pub subscribed: bool,
    pub first_seen: i64,
    pub last_seen: i64,
}

/// The columns [`Profile::decode`] takes, in its order.
pub(crate) const COLUMNS: &str = "id, user_key, user_id, email, phone_number, channels, \
                                  properties, tags, subscribed, first_seen, last_seen";

/// The JSON columns as stored: channels, properties, tags.
pub(crate) struct Encoded {
    pub channels: String,
    pub properties: String,
    pub tags: String,
}

impl Profile {
    /// A row read as [`COLUMNS`]. The JSON columns are only ever written by the stores'
    /// `save`; one that does not decode is read as empty rather than failing every later
    /// change of the user.
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
        Profile {
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
        Profile {
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

    /// The JSON columns to store, taken out of the profile.
    pub fn encode(&mut self) -> Encoded {
        Encoded {
            channels: Value::Array(std::mem::take(&mut self.channels)).to_string(),
            properties: Value::Object(std::mem::take(&mut self.properties)).to_string(),
            tags: serde_json::json!(self.tags).to_string(),
        }
    }

    /// A reidentify onto this existing user: `old`'s profile merges in (this user's
    /// properties win, tags unite, unsubscribed if either was, the earliest first seen and
    /// the latest last seen). Its events and dedup records are the stores' to move.
    pub fn absorb(&mut self, old: &mut Profile) {
        let mut properties = std::mem::take(&mut old.properties);
        merge_properties(&mut properties, std::mem::take(&mut self.properties));
        self.properties = properties;
        let mut channels = std::mem::take(&mut old.channels);
        merge_channels(&mut channels, std::mem::take(&mut self.channels));
        self.channels = channels;
        merge_tags(&mut self.tags, &old.tags, &[]);
        self.subscribed = self.subscribed && old.subscribed;
        self.email = self.email.take().or(old.email.take());
        self.phone_number = self.phone_number.take().or(old.phone_number.take());
        self.first_seen = self.first_seen.min(old.first_seen);
        self.last_seen = self.last_seen.max(old.last_seen);
    }
}
