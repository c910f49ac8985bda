//! The read side: query parameters become typed queries ([`EventQuery`], [`ExportQuery`],
//! [`StatsQuery`]), keyset cursors, and the JSON shapes answers are written in.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::error::FieldError;
use crate::event::EventKey;
use crate::identity::MAX_IDENTITY_CHARS;
use crate::project::ProjectId;
use crate::time::{parse_iso8601, parse_unix_seconds, Timestamp};

/// Events per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit`.
pub const MAX_LIMIT: usize = 1000;

/// Where a walk of pages stands: the last event returned (newest first by event time, then
/// id) and the newest event id present when the walk started, so events added during the
/// walk are never returned by it.
///
/// Clients only ever see it sealed ([`Cursor::seal`]): encrypted and authenticated with the
/// server's [`CursorKey`], bound to the project and the query's filters. Event ids are one
/// sequence over all projects, so a readable `max_id` would tell a tenant how much the
/// others track; a forged, altered, or another project's or query's cursor is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Event time (µs) of the last event returned.
    pub created_at: i64,
    /// Id of the last event returned.
    pub id: i64,
    /// The newest event id when the walk started.
    pub max_id: i64,
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The key cursors are sealed with, made from the 32 random bytes the store keeps
/// ([`crate::Store::cursor_key`]): every node of one data set shares it, and it survives
/// restarts, so a cursor works on any node until the data set is gone.
#[derive(Clone)]
pub struct CursorKey {
    /// Authenticates (and names the keystream of) a cursor.
    mac: [u8; 32],
    /// Derives the keystream that hides a cursor's numbers.
    enc: [u8; 32],
}

impl std::fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorKey(..)")
    }
}

/// HMAC-SHA256 keyed with a 32-byte key. HMAC pads a key shorter than the hash's 64-byte
/// block with zeros, so this is exactly HMAC under `key` (and needs no fallible call).
fn keyed(key: &[u8; 32]) -> HmacSha256 {
    use hmac::KeyInit;
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    <HmacSha256 as KeyInit>::new(&block.into())
}

/// HMAC-SHA256 of the concatenated `parts` under `key`.
pub(crate) fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    use hmac::Mac;
    let mut mac = keyed(key);
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// The first byte of a sealed cursor: its format.
const CURSOR_VERSION: u8 = 2;
/// Bytes of the authentication tag kept (128 bits).
const CURSOR_TAG: usize = 16;
/// Bytes of the sealed numbers: event time, id, newest id.
const CURSOR_BODY: usize = 24;

impl CursorKey {
    /// The key made from the store's secret: one subkey to authenticate, one to encrypt.
    pub fn new(secret: [u8; 32]) -> Self {
        CursorKey {
            mac: hmac(&secret, &[b"trackd cursor authentication"]),
            enc: hmac(&secret, &[b"trackd cursor encryption"]),
        }
    }

    /// 32 fresh random bytes, for a store making its cursor secret on first use.
    pub fn random_secret() -> [u8; 32] {
        rand::random()
    }
}

impl Cursor {
    /// The text handed to clients: hex of the format byte, a 128-bit tag and the three
    /// numbers encrypted. A deterministic authenticated encryption (SIV, with HMAC-SHA256 as
    /// the only primitive): the tag is the HMAC of `scope` and the numbers, the keystream the
    /// HMAC of the tag under the other subkey. Nothing in it is readable, and any change to
    /// it, or another `scope`, fails the tag. Hex, not base64: no `_`, so a cursor never looks
    /// like a secret key in a query string.
    pub fn seal(&self, key: &CursorKey, scope: &[u8]) -> String {
        let mut plain = [0u8; CURSOR_BODY];
        plain[..8].copy_from_slice(&self.created_at.to_be_bytes());
        plain[8..16].copy_from_slice(&self.id.to_be_bytes());
        plain[16..].copy_from_slice(&self.max_id.to_be_bytes());
        let tag = hmac(&key.mac, &[&[CURSOR_VERSION], scope, &plain]);
        let tag = &tag[..CURSOR_TAG];
        let pad = hmac(&key.enc, &[tag]);
        let mut out = String::with_capacity(2 * (1 + CURSOR_TAG + CURSOR_BODY));
        let sealed = plain.iter().zip(pad).map(|(p, k)| p ^ k);
        for b in [CURSOR_VERSION]
            .into_iter()
            .chain(tag.iter().copied())
            .chain(sealed)
        {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// Opens a cursor [`Cursor::seal`] made with this key and scope; anything else (not
    /// one, altered, or sealed for another project or query) is a 400 on `cursor`.
    pub fn open(text: &str, key: &CursorKey, scope: &[u8]) -> Result<Self, FieldError> {
        use hmac::Mac;
        let invalid = || {
            FieldError::new(
                "cursor",
                "not a cursor this server handed out for this query",
            )
        };
        let bytes = unhex(text).ok_or_else(invalid)?;
        let Some((&version, rest)) = bytes.split_first() else {
            return Err(invalid());
        };
        if version != CURSOR_VERSION || rest.len() != CURSOR_TAG + CURSOR_BODY {
            return Err(invalid());
        }
        let (tag, sealed) = rest.split_at(CURSOR_TAG);
        let pad = hmac(&key.enc, &[tag]);
        let mut plain = [0u8; CURSOR_BODY];
        for ((p, s), k) in plain.iter_mut().zip(sealed).zip(pad) {
            *p = s ^ k;
        }
        let mut mac = keyed(&key.mac);
        mac.update(&[CURSOR_VERSION]);
        mac.update(scope);
        mac.update(&plain);
        // Constant time: a forger learns nothing from how long a refusal took.
        mac.verify_truncated_left(tag).map_err(|_| invalid())?;
        let number = |at: usize| {
            let mut n = [0u8; 8];
            n.copy_from_slice(&plain[at..at + 8]);
            i64::from_be_bytes(n)
        };
        Ok(Cursor {
            created_at: number(0),
            id: number(8),
            max_id: number(16),
        })
    }
}

/// Lowercase hex to bytes; `None` for anything else.
fn unhex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let pairs = text.as_bytes().chunks_exact(2);
    if !pairs.remainder().is_empty() {
        return None;
    }
    pairs
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// A page of events, newest first.
#[derive(Debug, Clone)]
pub struct EventQuery {
    /// Whose events.
    pub project: ProjectId,
    /// Only this user's (by user key).
    pub user_key: Option<String>,
    /// Only events with this event key.
    pub event_key: Option<EventKey>,
    /// Event time at or after.
    pub since: Option<Timestamp>,
    /// Event time before.
    pub until: Option<Timestamp>,
    /// At most this many.
    pub limit: usize,
    /// Where the previous page ended.
    pub cursor: Option<Cursor>,
}

/// An export: events oldest first by receive time.
#[derive(Debug, Clone)]
pub struct ExportQuery {
    /// Whose events.
    pub project: ProjectId,
    /// Received at or after.
    pub since: Option<Timestamp>,
    /// Received before.
    pub until: Option<Timestamp>,
}

/// Bucket width of [`StatsQuery`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    /// One hour.
    Hour,
    /// One day (UTC).
    Day,
}

impl Interval {
    /// The width in microseconds.
    pub fn micros(self) -> i64 {
        match self {
            Interval::Hour => 3_600_000_000,
            Interval::Day => 86_400_000_000,
        }
    }
}

/// Event counts per bucket of event time, and the project's running totals.
#[derive(Debug, Clone)]
pub struct StatsQuery {
    /// Whose events.
    pub project: ProjectId,
    /// Event time at or after.
    pub since: Option<Timestamp>,
    /// Event time before.
    pub until: Option<Timestamp>,
    /// Bucket width.
    pub interval: Interval,
    /// The most (bucket, event key) counts one answer holds ([`STATS_MAX_COUNTS`]).
    pub max_counts: usize,
}

/// The most (bucket, event key) counts one statistics answer holds: a range of years by the
/// hour over many event names would otherwise be an answer of any size.
pub const STATS_MAX_COUNTS: usize = 100_000;

impl StatsQuery {
    /// The refusal of a range that holds more counts than one answer may.
    pub fn too_many(&self) -> FieldError {
        FieldError::new(
            "since",
            format!(
                "the range holds more than {} counts (buckets × event names): narrow \
                 since/until or use interval=day",
                self.max_counts
            ),
        )
    }
}

/// Query parameters, checked: each known at most once, unknown ones refused.
pub struct Params<'a> {
    pairs: &'a [(String, String)],
}

impl<'a> Params<'a> {
    /// Checks `pairs` against the names a route `allowed`.
    pub fn new(pairs: &'a [(String, String)], allowed: &[&str]) -> Result<Self, FieldError> {
        for (i, (name, _)) in pairs.iter().enumerate() {
            if !allowed.contains(&name.as_str()) {
                let takes = if allowed.is_empty() {
                    "none".to_owned()
                } else {
                    allowed.join(", ")
                };
                return Err(FieldError::new(
                    name.clone(),
                    format!("unknown parameter (this route takes {})", takes),
                ));
            }
            if pairs[..i].iter().any(|(n, _)| n == name) {
                return Err(FieldError::new(name.clone(), "given more than once"));
            }
        }
        Ok(Params { pairs })
    }

    /// The value of `name`, if given and not empty.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.pairs
            .iter()
            .find(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// A time parameter: ISO 8601 or Unix seconds.
    pub fn time(&self, name: &str) -> Result<Option<Timestamp>, FieldError> {
        let Some(text) = self.get(name) else {
            return Ok(None);
        };
        let numeric = text
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-');
        let parsed = if numeric {
            parse_unix_seconds(text)
        } else {
            parse_iso8601(text)
        };
        parsed.map(Some).ok_or_else(|| {
            FieldError::new(
                name,
                "not an ISO 8601 time or Unix seconds (years 1 to 9999)",
            )
        })
    }

    fn range(&self) -> Result<(Option<Timestamp>, Option<Timestamp>), FieldError> {
        let since = self.time("since")?;
        let until = self.time("until")?;
        if let (Some(s), Some(u)) = (since, until) {
            if u < s {
                return Err(FieldError::new("until", "is before since"));
            }
        }
        Ok((since, until))
    }

    /// `limit`: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when not given.
    pub fn limit(&self) -> Result<usize, FieldError> {
        match self.get("limit") {
            None => Ok(DEFAULT_LIMIT),
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    FieldError::new("limit", format!("must be an integer from 1 to {MAX_LIMIT}"))
                }),
        }
    }

    fn bounded(&self, name: &str) -> Result<Option<String>, FieldError> {
        match self.get(name) {
            Some(v) if v.chars().count() > MAX_IDENTITY_CHARS => Err(FieldError::new(
                name,
                format!("longer than {MAX_IDENTITY_CHARS} characters"),
            )),
            other => Ok(other.map(str::to_owned)),
        }
    }
}

impl EventQuery {
    /// `GET /events` (`user_key` `None`) or `GET /users/{id}/events` (`Some`); a `cursor` is
    /// opened with `key` and must have been sealed for this project and these filters.
    pub fn parse(
        project: ProjectId,
        pairs: &[(String, String)],
        user_key: Option<String>,
        key: &CursorKey,
    ) -> Result<Self, FieldError> {
        let allowed: &[&str] = if user_key.is_some() {
            &["event_name", "since", "until", "limit", "cursor"]
        } else {
            &["event_name", "user_id", "since", "until", "limit", "cursor"]
        };
        let params = Params::new(pairs, allowed)?;
        let (since, until) = params.range()?;
        let mut query = EventQuery {
            project,
            user_key: match user_key {
                Some(key) => Some(key),
                None => params.bounded("user_id")?,
            },
            event_key: params.bounded("event_name")?.map(|n| EventKey::of(&n)),
            since,
            until,
            limit: params.limit()?,
            cursor: None,
        };
        if let Some(text) = params.get("cursor") {
            query.cursor = Some(Cursor::open(text, key, &query.scope())?);
        }
        Ok(query)
    }

    /// What a cursor of this query is bound to: the project and every filter (not `limit`,
    /// which may change between pages), each length-prefixed so no two differ only in
    /// where one ends.
    pub fn scope(&self) -> Vec<u8> {
        let mut scope = Vec::with_capacity(64);
        scope.extend_from_slice(&self.project.get().to_be_bytes());
        for text in [
            self.user_key.as_deref(),
            self.event_key.as_ref().map(EventKey::as_str),
        ] {
            match text {
                None => scope.push(0),
                Some(t) => {
                    scope.push(1);
                    scope.extend_from_slice(&(t.len() as u64).to_be_bytes());
                    scope.extend_from_slice(t.as_bytes());
                }
            }
        }
        for time in [self.since, self.until] {
            match time {
                None => scope.push(0),
                Some(t) => {
                    scope.push(1);
                    scope.extend_from_slice(&t.as_micros().to_be_bytes());
                }
            }
        }
        scope
    }
}

/// Where an export chunk starts: after this (receive time, id) key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExportKey {
    /// Receive time (µs).
    pub received_at: i64,
    /// Event id.
    pub id: i64,
}

/// The most events one export chunk holds (and at most about [`PAGE_BYTES`] of them).
pub const EXPORT_CHUNK_ROWS: usize = 10_000;

impl ExportQuery {
    /// The key the first chunk starts after. `since` is folded into the starting key
    /// rather than given as its own bound: with both, SQLite seeks by the plain bound and
    /// filters by the key, so every chunk would rescan from `since` (quadratic; found on 10
    /// million events).
    pub fn start(&self) -> ExportKey {
        match self.since {
            Some(since) => ExportKey {
                received_at: since.as_micros().saturating_sub(1),
                id: i64::MAX,
            },
            None => ExportKey {
                received_at: i64::MIN,
                id: i64::MIN,
            },
        }
    }

    /// The receive time every exported event is before.
    pub fn end(&self) -> i64 {
        self.until.map_or(i64::MAX, |t| t.as_micros())
    }

    /// `GET /events/export`.
    pub fn parse(project: ProjectId, pairs: &[(String, String)]) -> Result<Self, FieldError> {
        let params = Params::new(pairs, &["since", "until"])?;
        let (since, until) = params.range()?;
        Ok(ExportQuery {
            project,
            since,
            until,
        })
    }
}

impl StatsQuery {
    /// `GET /stats/events`.
    pub fn parse(project: ProjectId, pairs: &[(String, String)]) -> Result<Self, FieldError> {
        let params = Params::new(pairs, &["since", "until", "interval"])?;
        let (since, until) = params.range()?;
        let interval = match params.get("interval") {
            None | Some("hour") => Interval::Hour,
            Some("day") => Interval::Day,
            Some(_) => return Err(FieldError::new("interval", "must be hour or day")),
        };
        Ok(StatsQuery {
            project,
            since,
            until,
            interval,
            max_counts: STATS_MAX_COUNTS,
        })
    }
}

/// A stored event as the store reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    /// The event's id.
    pub id: i64,
    /// The user's id, if known.
    pub user_id: Option<String>,
    /// The user's email, if known.
    pub email: Option<String>,
    /// The name as sent.
    pub event_name: String,
    /// The event key.
    pub event_key: String,
    /// `data` as stored (compact JSON).
    pub data: String,
    /// `extras.source`.
    pub source: Option<String>,
    /// Event time (µs).
    pub created_at: i64,
    /// Receive time (µs).
    pub received_at: i64,
}

/// The most bytes of events one page holds (their `data` and names): a page stops early
/// there and hands a cursor, so a page of large events never has to be built whole (1,000
/// events of 1 MiB would be 1 GB). A page holds at least one event whatever its size.
pub const PAGE_BYTES: usize = 4 * 1024 * 1024;

/// What a page of events costs in memory, roughly: what varies per event, plus a fixed
/// part for the rest of the row.
pub fn row_bytes(data_len: usize, name_len: usize) -> usize {
    data_len + 2 * name_len + 256
}

/// Decides where a page ends while its rows are read in page order: at `limit` rows or
/// once [`PAGE_BYTES`] are reached, whichever comes first.
#[derive(Debug)]
pub struct PageBudget {
    limit: usize,
    rows: usize,
    bytes: usize,
}

impl PageBudget {
    /// A page of at most `limit` rows.
    pub fn new(limit: usize) -> Self {
        PageBudget {
            limit,
            rows: 0,
            bytes: 0,
        }
    }

    /// Whether the page is full: a further row, if there is one, starts the next page.
    pub fn full(&self) -> bool {
        self.rows >= self.limit || (self.rows > 0 && self.bytes >= PAGE_BYTES)
    }

    /// Counts a row taken into the page.
    pub fn take(&mut self, bytes: usize) {
        self.rows += 1;
        self.bytes += bytes;
    }

    /// Takes `items` in page order until a page of at most `limit` is full (each costing
    /// `bytes`); also says whether an item followed (read, not taken: one past the page).
    pub fn fill<T, E>(
        limit: usize,
        items: impl IntoIterator<Item = Result<T, E>>,
        bytes: impl Fn(&T) -> usize,
    ) -> Result<(Vec<T>, bool), E> {
        let mut budget = PageBudget::new(limit);
        let mut taken = Vec::new();
        for item in items {
            if budget.full() {
                return Ok((taken, true));
            }
            let item = item?;
            budget.take(bytes(&item));
            taken.push(item);
        }
        Ok((taken, false))
    }
}

/// A page of rows read in page order, and whether a row followed it (then the cursor of the
/// next page starts after the last row).
///
/// `last` is the (event time, id) the page ended at, when a row followed it: the next page
/// starts after it. It comes from where the page was decided, not from `rows`: a store that
/// reads the rows in a second statement may find fewer (a user deleted between the two), and
/// the walk must still go on after the page's end, never stop there.
pub fn page_of(rows: Vec<EventRow>, last: Option<(i64, i64)>, max_id: i64) -> crate::EventPage {
    let next = last.map(|(created_at, id)| Cursor {
        created_at,
        id,
        max_id,
    });
    (rows, next)
}

impl EventRow {
    /// The row of a just-stored event (the live view's, before any read).
    pub fn of(record: &crate::EventRecord, id: i64) -> EventRow {
        EventRow {
            id,
            user_id: record.identity.id().map(|i| i.as_str().to_owned()),
            email: record.identity.email().map(|e| e.as_str().to_owned()),
            event_name: record.name.as_str().to_owned(),
            event_key: record.key.as_str().to_owned(),
            data: record.data.clone(),
            source: record.source.clone(),
            created_at: record.created_at.as_micros(),
            received_at: record.received_at.as_micros(),
        }
    }
}

#[derive(Serialize)]
struct UserOut<'a> {
    id: Option<&'a str>,
    email: Option<&'a str>,
}

#[derive(Serialize)]
struct EventOut<'a> {
    id: i64,
    user: UserOut<'a>,
    event_name: &'a str,
    event_key: &'a str,
    data: &'a RawValue,
    source: Option<&'a str>,
    created_at: String,
    received_at: String,
}

impl EventRow {
    /// Appends the event as one JSON object: `{id, user: {id, email}, event_name,
    /// event_key, data, source, created_at, received_at}`, `data` exactly as stored.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let empty = RawValue::NULL;
        let data = serde_json::from_str::<&RawValue>(&self.data).unwrap_or(empty);
        let event = EventOut {
            id: self.id,
            user: UserOut {
                id: self.user_id.as_deref(),
                email: self.email.as_deref(),
            },
            event_name: &self.event_name,
            event_key: &self.event_key,
            data,
            source: self.source.as_deref(),
            created_at: Timestamp::from_micros(self.created_at).to_rfc3339(),
            received_at: Timestamp::from_micros(self.received_at).to_rfc3339(),
        };
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(out, &event);
    }
}

/// A page of events: `{"events": [...], "next_cursor": "..." | null}`, the next cursor
/// already sealed ([`Cursor::seal`]).
pub fn write_page(events: &[EventRow], next: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + events.len() * 400);
    out.extend_from_slice(b"{\"events\":[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        event.write_json(&mut out);
    }
    out.extend_from_slice(b"],\"next_cursor\":");
    match next {
        Some(cursor) => {
            let _ = serde_json::to_writer(&mut out, cursor);
        }
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
    out
}

/// A user's profile as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct UserProfile {
    /// The id, if known.
    pub id: Option<String>,
    /// The email, if known.
    pub email: Option<String>,
    /// The phone number, if known.
    pub phone_number: Option<String>,
    /// Channels, a JSON array as stored.
    pub channels: String,
    /// Properties, a JSON object as stored.
    pub properties: String,
    /// Tags, a JSON array as stored.
    pub tags: String,
    /// Whether the user is subscribed.
    pub subscribed: bool,
    /// First receive time (µs).
    pub first_seen: i64,
    /// Last receive time (µs).
    pub last_seen: i64,
    /// Creation time (µs).
    pub created_at: i64,
    /// Last profile change (µs).
    pub updated_at: i64,
    /// How many events the user has.
    pub event_count: i64,
}

impl UserProfile {
    /// The profile as JSON: `{id, email, phone_number, channels, properties, tags,
    /// subscribed, first_seen, last_seen, created_at, updated_at, event_count}`.
    pub fn to_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Out<'a> {
            id: Option<&'a str>,
            email: Option<&'a str>,
            phone_number: Option<&'a str>,
            channels: &'a RawValue,
            properties: &'a RawValue,
            tags: &'a RawValue,
            subscribed: bool,
            first_seen: String,
            last_seen: String,
            created_at: String,
            updated_at: String,
            event_count: i64,
        }
        fn raw(s: &str) -> &RawValue {
            serde_json::from_str::<&RawValue>(s).unwrap_or(RawValue::NULL)
        }
        let time = |t: i64| Timestamp::from_micros(t).to_rfc3339();
        serde_json::to_vec(&Out {
            id: self.id.as_deref(),
            email: self.email.as_deref(),
            phone_number: self.phone_number.as_deref(),
            channels: raw(&self.channels),
            properties: raw(&self.properties),
            tags: raw(&self.tags),
            subscribed: self.subscribed,
            first_seen: time(self.first_seen),
            last_seen: time(self.last_seen),
            created_at: time(self.created_at),
            updated_at: time(self.updated_at),
            event_count: self.event_count,
        })
        .unwrap_or_default()
    }
}

/// Counts per bucket and the running totals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// (bucket start µs, event key, count), ordered by start then key.
    pub buckets: Vec<(i64, String, i64)>,
    /// Accepted events, all time.
    pub accepted: i64,
    /// Duplicates dropped, all time.
    pub duplicates: i64,
    /// Writes naming a suppressed user (answered 200, nothing stored), all time.
    pub suppressed: i64,
    /// Refused requests by reason, all time.
    pub rejected: Vec<(String, i64)>,
}

impl Stats {
    /// `{"buckets": [{"start", "counts": {event_key: n}}], "totals": {"accepted",
    /// "duplicates", "suppressed", "rejected": {reason: n}}}`.
    pub fn to_json(&self) -> Vec<u8> {
        let mut buckets: Vec<serde_json::Value> = Vec::new();
        let mut current: Option<(i64, serde_json::Map<String, serde_json::Value>)> = None;
        for (start, key, n) in &self.buckets {
            if current.as_ref().is_some_and(|(s, _)| s != start) {
                if let Some((s, counts)) = current.take() {
                    buckets.push(bucket(s, counts));
                }
            }
            current
                .get_or_insert_with(|| (*start, serde_json::Map::new()))
                .1
                .insert(key.clone(), (*n).into());
        }
        if let Some((s, counts)) = current {
            buckets.push(bucket(s, counts));
        }
        let rejected: serde_json::Map<String, serde_json::Value> = self
            .rejected
            .iter()
            .map(|(k, n)| (k.clone(), (*n).into()))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "buckets": buckets,
            "totals": {"accepted": self.accepted, "duplicates": self.duplicates,
                       "suppressed": self.suppressed, "rejected": rejected},
        }))
        .unwrap_or_default()
    }
}

fn bucket(start: i64, counts: serde_json::Map<String, serde_json::Value>) -> serde_json::Value {
    serde_json::json!({"start": Timestamp::from_micros(start).to_rfc3339(), "counts": counts})
}

/// A project's running total, as both stores keep it (a row per name in `counters`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Counter {
    /// Events accepted and stored.
    Accepted,
    /// Duplicates answered 200 and not stored.
    Duplicates,
    /// Writes naming a suppressed user, answered 200 and not stored.
    Suppressed,
    /// Requests refused, by reason ([`rejection_reason`]).
    Rejected(String),
}

impl Counter {
    /// The name it is stored under.
    pub fn name(&self) -> String {
        match self {
            Counter::Accepted => "accepted".to_owned(),
            Counter::Duplicates => "duplicates".to_owned(),
            Counter::Suppressed => "suppressed".to_owned(),
            Counter::Rejected(reason) => format!("rejected:{reason}"),
        }
    }

    /// The counter stored under `name`; `None` for a name no version of trackd wrote.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "accepted" => Some(Counter::Accepted),
            "duplicates" => Some(Counter::Duplicates),
            "suppressed" => Some(Counter::Suppressed),
            other => other
                .strip_prefix("rejected:")
                .map(|reason| Counter::Rejected(reason.to_owned())),
        }
    }

    /// The counter for an event's outcome.
    pub fn of(outcome: crate::InsertOutcome) -> Self {
        match outcome {
            crate::InsertOutcome::Inserted => Counter::Accepted,
            crate::InsertOutcome::Duplicate => Counter::Duplicates,
            crate::InsertOutcome::Suppressed => Counter::Suppressed,
        }
    }
}

impl Stats {
    /// Adds a stored counter row to the totals (names no version wrote are skipped).
    pub fn add_counter(&mut self, name: &str, value: i64) {
        match Counter::parse(name) {
            Some(Counter::Accepted) => self.accepted += value,
            Some(Counter::Duplicates) => self.duplicates += value,
            Some(Counter::Suppressed) => self.suppressed += value,
            Some(Counter::Rejected(reason)) => {
                match self.rejected.iter_mut().find(|(r, _)| *r == reason) {
                    Some((_, n)) => *n += value,
                    None => self.rejected.push((reason, value)),
                }
            }
            None => {}
        }
    }
}

/// The reason a refusal is counted under: the first segment of the field path
/// (`identity.email` → `identity`, `data.a[0]` → `data`).
pub fn rejection_reason(field: &str) -> String {
    let end = field.find(['.', '[']).unwrap_or(field.len());
    field[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cursors_round_trip_sealed_and_refuse_anything_else() {
        let key = CursorKey::new([7; 32]);
        let c = Cursor {
            created_at: -5,
            id: 42,
            max_id: 1_000_000,
        };
        let text = c.seal(&key, b"scope");
        assert_eq!(Cursor::open(&text, &key, b"scope"), Ok(c));
        assert_eq!(text.len(), 82);
        // Nothing readable: neither the numbers' bytes nor their digits.
        let bytes = unhex(&text).expect("hex");
        for n in [c.created_at, c.id, c.max_id] {
            let be = n.to_be_bytes();
            assert!(!bytes.windows(8).any(|w| w == be), "{n}");
        }
        assert!(!text.contains("1000000"));
        // Same numbers, other key or scope: another text.
        assert_ne!(c.seal(&CursorKey::new([8; 32]), b"scope"), text);
        assert_ne!(c.seal(&key, b"other"), text);
        let mut flipped = text.clone().into_bytes();
        for at in [0, 2, 40, 81] {
            flipped[at] = if flipped[at] == b'0' { b'1' } else { b'0' };
        }
        let flipped = String::from_utf8(flipped).expect("ascii");
        for bad in [
            "",
            "x",
            "MS4yLjM",
            &text[..80],
            &format!("{text}00"),
            &text.to_uppercase(),
            &flipped,
        ] {
            assert_eq!(
                Cursor::open(bad, &key, b"scope")
                    .expect_err(bad)
                    .to_string(),
                "cursor: not a cursor this server handed out for this query"
            );
        }
        for (other_key, scope) in [(CursorKey::new([8; 32]), &b"scope"[..]), (key, b"other")] {
            assert!(Cursor::open(&text, &other_key, scope).is_err());
        }
    }

    #[test]
    fn the_zero_padded_key_is_hmac_under_the_key_itself() {
        use hmac::{KeyInit, Mac};
        let key = [0x5a; 32];
        let mut plain = <HmacSha256 as KeyInit>::new_from_slice(&key).expect("any length");
        plain.update(b"message");
        let expected: [u8; 32] = plain.finalize().into_bytes().into();
        assert_eq!(hmac(&key, &[b"mess", b"age"]), expected);
    }

    #[test]
    fn a_cursor_is_bound_to_the_project_and_filters_but_not_the_limit() {
        let key = CursorKey::new([1; 32]);
        let parse = |project: i64, list: &[(&str, &str)], user: Option<&str>| {
            EventQuery::parse(
                ProjectId::new(project),
                &pairs(list),
                user.map(str::to_owned),
                &key,
            )
        };
        let base = parse(1, &[("event_name", "a b")], None).expect("query");
        let text = Cursor {
            created_at: 1,
            id: 2,
            max_id: 3,
        }
        .seal(&key, &base.scope());
        fn with<'a>(text: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
            let mut list = vec![("event_name", "a b"), ("cursor", text)];
            list.extend_from_slice(extra);
            list
        }
        // The same filters (an equal event key) and another limit: accepted.
        for list in [with(&text, &[]), with(&text, &[("limit", "5")])] {
            assert!(parse(1, &list, None).expect("accepted").cursor.is_some());
        }
        let same_key = [("event_name", "A_B"), ("cursor", text.as_str())];
        assert!(parse(1, &same_key, None).is_ok());
        // Another project, filter, or route's user: refused.
        assert!(parse(2, &with(&text, &[]), None).is_err());
        assert!(parse(1, &with(&text, &[("user_id", "u")]), None).is_err());
        assert!(parse(1, &with(&text, &[("since", "0")]), None).is_err());
        assert!(parse(1, &with(&text, &[("until", "1")]), None).is_err());
        assert!(parse(1, &with(&text, &[]), Some("u")).is_err());
        assert!(parse(1, &[("cursor", text.as_str())], None).is_err());
    }

    #[test]
    fn event_query_parameters_are_checked_by_name() {
        let p = ProjectId::new(1);
        let key = CursorKey::new([0; 32]);
        let q = EventQuery::parse(
            p,
            &pairs(&[
                ("event_name", "Purchased Item"),
                ("limit", "5"),
                ("since", "2023-05-30T00:00:00Z"),
                ("until", "1700000000"),
            ]),
            None,
            &key,
        )
        .expect("valid");
        assert_eq!(
            q.event_key.as_ref().map(|k| k.as_str()),
            Some("purchased_item")
        );
        assert_eq!(q.limit, 5);
        assert_eq!(q.since, Some(Timestamp::from_micros(1_685_404_800_000_000)));
        assert_eq!(q.until, Some(Timestamp::from_micros(1_700_000_000_000_000)));
        let cases = [
            (vec![("limit", "0")], "limit: must be an integer from 1 to 1000"),
            (vec![("limit", "1001")], "limit: must be an integer from 1 to 1000"),
            (vec![("limit", "ten")], "limit: must be an integer from 1 to 1000"),
            (vec![("since", "yesterday")], "since: not an ISO 8601 time or Unix seconds (years 1 to 9999)"),
            (vec![("since", "200"), ("until", "100")], "until: is before since"),
            (vec![("cursor", "zzz")], "cursor: not a cursor this server handed out for this query"),
            (vec![("limit", "1"), ("limit", "2")], "limit: given more than once"),
            (vec![("sort", "asc")], "sort: unknown parameter (this route takes event_name, user_id, since, until, limit, cursor)"),
        ];
        for (list, message) in cases {
            assert_eq!(
                EventQuery::parse(p, &pairs(&list), None, &key)
                    .expect_err(message)
                    .to_string(),
                message
            );
        }
        // A user's timeline takes no user_id.
        assert!(EventQuery::parse(p, &pairs(&[("user_id", "x")]), Some("u".into()), &key).is_err());
    }

    #[test]
    fn stats_and_export_parameters() {
        let p = ProjectId::new(1);
        assert_eq!(
            StatsQuery::parse(p, &pairs(&[("interval", "day")]))
                .expect("ok")
                .interval,
            Interval::Day
        );
        assert_eq!(
            StatsQuery::parse(p, &pairs(&[("interval", "week")]))
                .expect_err("bad")
                .to_string(),
            "interval: must be hour or day"
        );
        assert!(ExportQuery::parse(p, &pairs(&[("limit", "1")])).is_err());
    }

    #[test]
    fn event_rows_are_written_with_data_as_stored() {
        let row = EventRow {
            id: 7,
            user_id: Some("42".into()),
            email: None,
            event_name: "Viewed product".into(),
            event_key: "viewed_product".into(),
            data: r#"{"big":12345678901234567890123,"f":1.50}"#.into(),
            source: None,
            created_at: 0,
            received_at: 1_000_000,
        };
        let mut out = Vec::new();
        row.write_json(&mut out);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            r#"{"id":7,"user":{"id":"42","email":null},"event_name":"Viewed product","event_key":"viewed_product","data":{"big":12345678901234567890123,"f":1.50},"source":null,"created_at":"1970-01-01T00:00:00.000000Z","received_at":"1970-01-01T00:00:01.000000Z"}"#
        );
    }

    #[test]
    fn stats_group_counts_by_bucket() {
        let stats = Stats {
            buckets: vec![
                (0, "a".into(), 2),
                (0, "b".into(), 1),
                (3_600_000_000, "a".into(), 5),
            ],
            accepted: 8,
            duplicates: 1,
            suppressed: 0,
            rejected: vec![("identity".into(), 3)],
        };
        let v: serde_json::Value = serde_json::from_slice(&stats.to_json()).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"buckets": [
                {"start": "1970-01-01T00:00:00.000000Z", "counts": {"a": 2, "b": 1}},
                {"start": "1970-01-01T01:00:00.000000Z", "counts": {"a": 5}}],
              "totals": {"accepted": 8, "duplicates": 1, "suppressed": 0,
                         "rejected": {"identity": 3}}})
        );
        assert_eq!(rejection_reason("identity.email"), "identity");
        assert_eq!(rejection_reason("data[0]"), "data");
        assert_eq!(rejection_reason("body"), "body");
    }
}
