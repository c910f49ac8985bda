//! Properties every input must keep, checked by both the cargo-fuzz targets (`fuzz/`) and
//! the proptest suite that runs in CI: one definition, two drivers. Each function takes an
//! input, panics when a property fails, and says whether the input was accepted (and what
//! it became) or refused (and why): refusing is fine, panicking, answering inconsistently or
//! changing what was sent is not. The generators that feed the proptests are in
//! [`strategies`]; the drivers count what was accepted, since a property checked only on
//! refused inputs proves nothing about the success path.

pub mod strategies;

use std::fmt;

use serde_json::{Map, Value};

use crate::error::FieldError;
use crate::import::ImportItem;
use crate::read::{Cursor, CursorKey, EventQuery, ExportQuery, StatsQuery, MAX_LIMIT};
use crate::users::ProfileChange;
use crate::{
    json, EventKey, ProfileOp, ProfileRequest, ProjectId, Timestamp, TrackRequest, TrackedEvent,
};

const PROJECT: ProjectId = ProjectId::new(1);
/// The cursor key every property seals and opens cursors with.
pub fn cursor_key() -> CursorKey {
    CursorKey::new([7; 32])
}

/// The receive time every property validates at (2026-11-26T12:00:00Z).
pub const NOW: Timestamp = Timestamp::from_micros(1_795_694_400_000_000);

/// Why an input was refused, as the client reads it: `<field path>: <problem>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The field path (`identity.email`, `body` for the document itself).
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl From<FieldError> for Refusal {
    fn from(e: FieldError) -> Self {
        Refusal {
            field: e.field,
            problem: e.problem,
        }
    }
}

impl From<json::JsonError> for Refusal {
    fn from(e: json::JsonError) -> Self {
        Refusal {
            field: e.path,
            problem: e.problem,
        }
    }
}

fn canonical(value: &Value) -> String {
    let mut out = String::new();
    json::canonical(value, &mut out);
    out
}

/// Strict JSON: never panics. What it accepts has a canonical form that is JSON (another
/// parser reads it), names the same value (same keys and strings, numbers equal by exact
/// decimal value), is its own canonical form, and does not depend on how the document was
/// spelled: keys in another order, other whitespace and escapes, numbers written another way
/// (`1`, `1.0`, `10e-1`) give the same canonical form.
///
/// (The canonical form is not always readable by the strict parser itself: `0.001e-1000000`
/// is accepted and its canonical form `1e-1000003` has an exponent past the parser's bound.
/// The canonical form is only hashed, so serde_json reads it back here.)
pub fn json_canonical(bytes: &[u8]) -> Result<Value, Refusal> {
    let value = json::parse_value(bytes, "", crate::MAX_JSON_DEPTH)?;
    let first = canonical(&value);
    let reparsed: Value = serde_json::from_str(&first)
        .unwrap_or_else(|e| panic!("canonical form {first:?} is not JSON: {e}"));
    assert!(
        same_value(&value, &reparsed),
        "canonical form {first:?} names another value than {value}"
    );
    assert_eq!(canonical(&reparsed), first, "canonical form is not stable");
    let respelled = respell_text(&value);
    let again = json::parse_value(respelled.as_bytes(), "", crate::MAX_JSON_DEPTH)
        .unwrap_or_else(|e| panic!("the respelling {respelled:?} does not parse: {e}"));
    assert!(
        same_value(&value, &again),
        "the respelling {respelled:?} names another value than {value}"
    );
    assert_eq!(
        canonical(&again),
        first,
        "canonical form depends on spelling: {respelled:?}"
    );
    Ok(value)
}

/// A batch body read item by item ([`json::parse_object_with_items`]) agrees with the strict
/// reading: what the strict reading takes is taken whole, with no item refused and the same
/// value; a body with refused items is one the strict reading refuses, with the first
/// item's problem; what the item reading refuses, the strict reading refuses too. Returns
/// how many items were refused.
pub fn batch_items(bytes: &[u8]) -> Result<usize, Refusal> {
    let depth = crate::MAX_JSON_DEPTH;
    let strict = json::parse_object(bytes, "", depth);
    let items = json::parse_object_with_items(bytes, "", depth, "batch");
    match (strict, items) {
        (Ok(strict), Ok((read, faults))) => {
            assert!(
                faults.is_empty(),
                "items refused in a valid body: {faults:?}"
            );
            assert_eq!(strict, read, "the item reading names another value");
            Ok(0)
        }
        (Ok(_), Err(e)) => panic!("the item reading refuses a valid body: {e}"),
        (Err(e), Ok((_, faults))) => {
            let first = faults.values().next();
            assert_eq!(
                first,
                Some(&e),
                "the strict reading's refusal is not the first item's problem"
            );
            Ok(faults.len())
        }
        (Err(_), Err(e)) => Err(e.into()),
    }
}

/// A track body's bytes, parsed strictly, then [`track_map`].
pub fn track_body(bytes: &[u8]) -> Result<TrackedEvent, Refusal> {
    let map = json::parse_object(bytes, "", crate::MAX_JSON_DEPTH)?;
    track_map(map)
}

fn validate(map: Map<String, Value>) -> Result<TrackedEvent, FieldError> {
    TrackRequest::new(map).validate(PROJECT, NOW)
}

/// A track body as the decoder produces it (strings hold no NUL: the strict parser and the
/// form decoder refuse it). Validation never panics and is deterministic (the same event,
/// dedup key, or refusal naming a field), and an accepted body:
///
/// - stores `data` without loss: the stored text parses back, strictly, to the data sent
///   (numbers by their text, so a 20-digit integer keeps its digits; key order aside), or
///   `{}` when none was sent;
/// - keeps the name as sent beside its event key, takes the user key from the id, else the
///   email, keeps `source`, and without `created_at` is timed at its receive time;
/// - has the dedup key of every equivalent body: data with keys in another order at every
///   depth and numbers spelled otherwise (`1`, `1.0`, `1e0`), the name with other capitals
///   and spaces for underscores, an integer id sent as a string, another email beside the
///   id, the identity at the top level, other `source` and `created_at`, another
///   `check_id` beside non-empty data;
/// - and not the dedup key of a body with other data, another event key or another user.
pub fn track_map(map: Map<String, Value>) -> Result<TrackedEvent, Refusal> {
    let event = match (validate(map.clone()), validate(map.clone())) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.dedup_key, b.dedup_key, "dedup key is not deterministic");
            assert_eq!(a.record.data, b.record.data);
            assert_eq!(a.record.key, b.record.key);
            assert_eq!(a.record.identity, b.record.identity);
            assert_eq!(a.record.created_at, b.record.created_at);
            a
        }
        (Err(a), Err(b)) => {
            assert_eq!(a, b, "validation is not deterministic");
            assert!(!a.field.is_empty(), "a refusal names a field: {a}");
            return Err(a.into());
        }
        (a, b) => panic!(
            "validation is not deterministic: {:?} then {:?}",
            a.map(|_| ()),
            b.map(|_| ())
        ),
    };

    let sent = match map.get("data") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(data)) => data.clone(),
        Some(other) => panic!("data {other} was accepted though it is not an object"),
    };
    let stored = json::parse_object(event.data.as_bytes(), "", crate::MAX_JSON_DEPTH)
        .unwrap_or_else(|e| panic!("stored data {:?} does not parse: {e}", event.data));
    assert_eq!(stored, sent, "stored data is not the data sent");

    assert_eq!(
        Some(event.name.as_str()),
        map.get("event_name").and_then(Value::as_str),
        "the name is not kept as sent"
    );
    assert_eq!(event.key, EventKey::of(event.name.as_str()));
    assert_eq!(
        Some(event.identity.user_key().to_owned()),
        user_key(identity_fields(&map)),
        "wrong user key"
    );
    let extras = map.get("extras").and_then(Value::as_object);
    let field = |name: &str| extras.and_then(|e| e.get(name)).filter(|v| !v.is_null());
    assert_eq!(
        event.source.as_deref(),
        field("source").and_then(Value::as_str)
    );
    if field("created_at").is_none() {
        assert_eq!(event.created_at, NOW, "no created_at: the receive time");
    }
    assert_eq!(event.received_at, NOW);

    for (what, variant) in track_equivalents(&map) {
        let other = validate(variant.clone())
            .unwrap_or_else(|e| panic!("{what}: an equivalent body is refused ({e}): {variant:?}"));
        assert_eq!(
            other.dedup_key, event.dedup_key,
            "{what} changed the dedup key: {variant:?}"
        );
        assert_eq!(other.key, event.key, "{what} changed the event key");
    }
    for (what, variant) in track_differents(&map, &event) {
        let other = validate(variant.clone())
            .unwrap_or_else(|e| panic!("{what}: the changed body is refused ({e}): {variant:?}"));
        assert_ne!(
            other.dedup_key, event.dedup_key,
            "{what} kept the dedup key: {variant:?}"
        );
    }
    Ok(event)
}

/// Where a track body's `id` and `email` are read from.
fn identity_fields(map: &Map<String, Value>) -> &Map<String, Value> {
    match map.get("identity") {
        Some(Value::Object(fields)) => fields,
        _ => map,
    }
}

/// The user key the contract gives an object with `id` and/or `email`.
fn user_key(fields: &Map<String, Value>) -> Option<String> {
    match fields.get("id") {
        Some(Value::String(id)) if !id.is_empty() => return Some(id.clone()),
        Some(Value::Number(id)) => return Some(id.to_string()),
        _ => {}
    }
    match fields.get("email") {
        Some(Value::String(email)) if !email.is_empty() => Some(email.clone()),
        _ => None,
    }
}

/// Bodies that must get the same dedup key as `map` (a valid body).
fn track_equivalents(map: &Map<String, Value>) -> Vec<(&'static str, Map<String, Value>)> {
    let mut out = Vec::new();
    let mut counter = 0usize;

    let mut respelled = map.clone();
    if let Some(data) = respelled.get_mut("data") {
        *data = respell(data, &mut counter);
    }
    if let Some(Value::Object(extras)) = respelled.get_mut("extras") {
        if let Some(check_id) = extras.get_mut("check_id") {
            *check_id = respell(check_id, &mut counter);
        }
    }
    out.push(("data respelled (key order, number spelling)", respelled));

    let reversed: Map<String, Value> = map
        .iter()
        .rev()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.push(("top-level keys reversed", reversed));

    if let Some(Value::String(name)) = map.get("event_name") {
        let other: String = name
            .chars()
            .map(|c| match c {
                ' ' => '_',
                '_' => ' ',
                c if c.is_ascii_lowercase() => c.to_ascii_uppercase(),
                c if c.is_ascii_uppercase() => c.to_ascii_lowercase(),
                c => c,
            })
            .collect();
        let mut variant = map.clone();
        variant.insert("event_name".into(), Value::String(other));
        out.push((
            "event name with other capitals, spaces for underscores",
            variant,
        ));
    }

    let in_identity = map.get("identity").is_some_and(Value::is_object);
    let with_who = |f: &dyn Fn(&mut Map<String, Value>)| {
        let mut variant = map.clone();
        if in_identity {
            if let Some(Value::Object(who)) = variant.get_mut("identity") {
                f(who);
            }
        } else {
            f(&mut variant);
        }
        variant
    };
    let who = identity_fields(map);
    if let Some(Value::Number(id)) = who.get("id") {
        let text = id.to_string();
        out.push((
            "integer id sent as a string",
            with_who(&|w| {
                w.insert("id".into(), Value::String(text.clone()));
            }),
        ));
    }
    let has_id = match who.get("id") {
        Some(Value::String(id)) => !id.is_empty(),
        Some(Value::Number(_)) => true,
        _ => false,
    };
    if has_id {
        out.push((
            "another email beside the id",
            with_who(&|w| {
                w.insert("email".into(), Value::String("other@example.com".into()));
            }),
        ));
    }
    let mut moved = map.clone();
    if in_identity {
        moved.shift_remove("identity");
        moved.shift_remove("id");
        moved.shift_remove("email");
        for key in ["id", "email"] {
            if let Some(value) = who.get(key) {
                moved.insert(key.into(), value.clone());
            }
        }
        out.push(("identity at the top level", moved));
    } else {
        let fields: Map<String, Value> = ["id", "email"]
            .into_iter()
            .filter_map(|k| Some((k.to_owned(), map.get(k)?.clone())))
            .collect();
        moved.shift_remove("id");
        moved.shift_remove("email");
        moved.insert("identity".into(), Value::Object(fields));
        out.push(("top-level id and email in identity", moved));
    }

    let mut extras = match map.get("extras") {
        Some(Value::Object(extras)) => extras.clone(),
        _ => Map::new(),
    };
    extras.insert("source".into(), Value::String("elsewhere".into()));
    extras.insert(
        "created_at".into(),
        Value::String("2001-02-03T04:05:06+0100".into()),
    );
    let data_empty = match map.get("data") {
        Some(Value::Object(data)) => data.is_empty(),
        _ => true,
    };
    if !data_empty {
        extras.insert("check_id".into(), Value::String("another check".into()));
    }
    let mut variant = map.clone();
    variant.insert("extras".into(), Value::Object(extras));
    out.push((
        "other source, created_at (and check_id beside data)",
        variant,
    ));
    out
}

/// Bodies that must not get the dedup key of `map` (a valid body).
fn track_differents(
    map: &Map<String, Value>,
    event: &TrackedEvent,
) -> Vec<(&'static str, Map<String, Value>)> {
    let mut out = Vec::new();
    let mut variant = map.clone();
    let mut data = match map.get("data") {
        Some(Value::Object(data)) => data.clone(),
        _ => Map::new(),
    };
    let probe = match data.get("\u{1f511}probe") {
        Some(Value::String(s)) if s == "x" => "y",
        _ => "x",
    };
    data.insert("\u{1f511}probe".into(), Value::String(probe.into()));
    variant.insert("data".into(), Value::Object(data));
    out.push(("other data", variant));

    if event.name.as_str().chars().count() < 254 {
        let mut variant = map.clone();
        variant.insert(
            "event_name".into(),
            Value::String(format!("{}x", event.name.as_str())),
        );
        out.push(("another event name", variant));
    }

    let key = event.identity.user_key();
    if event.identity.id().is_some() && key.chars().count() < 254 {
        let mut variant = map.clone();
        let who = if map.get("identity").is_some_and(Value::is_object) {
            match variant.get_mut("identity") {
                Some(Value::Object(who)) => who,
                _ => unreachable!("checked above"),
            }
        } else {
            &mut variant
        };
        who.insert("id".into(), Value::String(format!("{key}x")));
        out.push(("another user", variant));
    }
    out
}

/// `value` with object keys in reverse order at every depth and numbers spelled another
/// way (the same decimal value): what a client re-sending "the same" event may send.
fn respell(value: &Value, counter: &mut usize) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .rev()
                .map(|(k, v)| (k.clone(), respell(v, counter)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| respell(v, counter)).collect()),
        Value::Number(n) => {
            *counter += 1;
            let text = respell_number(&n.to_string(), *counter);
            json::parse_value(text.as_bytes(), "", 1)
                .unwrap_or_else(|e| panic!("respelled number {text:?} parses: {e}"))
        }
        other => other.clone(),
    }
}

/// Another spelling of a JSON number with the same decimal value: a trailing zero in the
/// fraction, the mantissa times ten with the exponent one less, or an explicit `E+`.
fn respell_number(text: &str, choice: usize) -> String {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().ok()),
        None => (rest, Some(0)),
    };
    let Some(exponent) = exponent else {
        return text.to_owned();
    };
    let sign = if negative { "-" } else { "" };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    match choice % 3 {
        0 => format!("{sign}{int}.{frac}0e{exponent}"),
        1 if exponent > -999_000 => {
            // One more digit before the point: times ten, exponent one less.
            let (moved, frac) = match frac.split_at_checked(1) {
                Some((first, rest)) => (first.to_owned(), rest),
                None => ("0".to_owned(), ""),
            };
            let digits = format!("{int}{moved}");
            let digits = digits.trim_start_matches('0');
            let digits = if digits.is_empty() { "0" } else { digits };
            let frac = if frac.is_empty() {
                String::new()
            } else {
                format!(".{frac}")
            };
            format!("{sign}{digits}{frac}e{}", exponent - 1)
        }
        _ => format!(
            "{sign}{mantissa}E{}{exponent}",
            if exponent >= 0 { "+" } else { "" }
        ),
    }
}

/// `value` written with keys in reverse order, whitespace between tokens, every non-ASCII
/// character and some ASCII ones as `\u` escapes, and numbers respelled.
fn respell_text(value: &Value) -> String {
    fn string(s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '/' => out.push_str("\\/"),
                c if c.is_ascii_graphic() || c == ' ' => out.push(c),
                c => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{unit:04X}"));
                    }
                }
            }
        }
        out.push('"');
    }
    fn write(value: &Value, out: &mut String, counter: &mut usize) {
        match value {
            Value::Object(map) => {
                out.push_str("{ ");
                for (i, (k, v)) in map.iter().rev().enumerate() {
                    if i > 0 {
                        out.push_str(" ,\n\t");
                    }
                    string(k, out);
                    out.push_str(" : ");
                    write(v, out, counter);
                }
                out.push_str(" }");
            }
            Value::Array(items) => {
                out.push_str("[\r\n");
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(" , ");
                    }
                    write(v, out, counter);
                }
                out.push_str(" ]");
            }
            Value::String(s) => string(s, out),
            Value::Number(n) => {
                *counter += 1;
                out.push_str(&respell_number(&n.to_string(), *counter));
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::from(" \n");
    write(value, &mut out, &mut 0);
    out.push_str("\n ");
    out
}

/// Whether two JSON values are the same: same keys (any order), strings and literals, and
/// numbers equal by exact decimal value.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(k, v)| b.get(k).is_some_and(|w| same_value(v, w)))
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(v, w)| same_value(v, w))
        }
        (Value::Number(a), Value::Number(b)) => decimal(&a.to_string()) == decimal(&b.to_string()),
        (a, b) => a == b,
    }
}

/// A JSON number as (negative, significant digits, exponent) with the value
/// 0.`digits` × 10^`exponent`; zero is `(false, "", 0)`.
fn decimal(text: &str) -> (bool, String, i64) {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (
            &rest[..i],
            rest[i + 1..]
                .parse::<i64>()
                .unwrap_or_else(|e| panic!("exponent of {text}: {e}")),
        ),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    let leading = digits.len() - digits.trim_start_matches('0').len();
    let significant = digits.trim_start_matches('0').trim_end_matches('0');
    if significant.is_empty() {
        return (false, String::new(), 0);
    }
    let point = int.len() as i64 - leading as i64;
    (negative, significant.to_owned(), point + exponent)
}

/// The `users/*` operation a number stands for (modulo 7, in the order of
/// [`strategies::PROFILE_OPS`]).
pub fn profile_op(op: u8) -> ProfileOp {
    strategies::PROFILE_OPS[usize::from(op) % strategies::PROFILE_OPS.len()]
}

/// A `users/*` body's bytes for the operation chosen by `op`, parsed strictly, then
/// [`profile_map`].
pub fn profile_body(op: u8, bytes: &[u8]) -> Result<ProfileRequest, Refusal> {
    let map = json::parse_object(bytes, "", crate::MAX_JSON_DEPTH)?;
    profile_map(op, &map)
}

/// A `users/*` body as the decoder produces it, for the operation chosen by `op`: parsing
/// never panics and is deterministic, a refusal names a field, and an accepted body becomes
/// the change it asks for: the user it names (the id, else the email), the data, changes,
/// channels, phone number and tags as sent, the subscription the route sets, the ids of a
/// rename. Unknown keys, key order and an integer id sent as a string change nothing.
pub fn profile_map(op: u8, map: &Map<String, Value>) -> Result<ProfileRequest, Refusal> {
    let op = profile_op(op);
    let parse = |map: &Map<String, Value>| ProfileRequest::parse(op, map, PROJECT, NOW);
    let request = match (parse(map), parse(map)) {
        (Ok(a), Ok(b)) => {
            assert_eq!(
                format!("{:?}", a.change),
                format!("{:?}", b.change),
                "parsing is not deterministic"
            );
            a
        }
        (Err(a), Err(b)) => {
            assert_eq!(a, b, "parsing is not deterministic");
            assert!(!a.field.is_empty(), "a refusal names a field: {a}");
            return Err(a.into());
        }
        (a, b) => panic!(
            "parsing is not deterministic: {:?} then {:?}",
            a.map(|_| ()),
            b.map(|_| ())
        ),
    };
    check_profile_change(op, map, &request.change);

    let mut variants: Vec<(&str, Map<String, Value>)> = Vec::new();
    let mut noisy = map.clone();
    noisy.insert("development_mode".into(), Value::Bool(true));
    noisy.insert("vero_library".into(), Value::String("1.0".into()));
    variants.push(("unknown keys", noisy));
    variants.push((
        "keys reversed",
        map.iter()
            .rev()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    ));
    let mut stringly = map.clone();
    for key in ["id", "new_id"] {
        if let Some(Value::Number(n)) = map.get(key) {
            stringly.insert(key.into(), Value::String(n.to_string()));
        }
    }
    variants.push(("integer ids sent as strings", stringly));
    for (what, variant) in variants {
        let other = parse(&variant)
            .unwrap_or_else(|e| panic!("{what}: an equivalent body is refused ({e})"));
        assert_eq!(
            format!("{:?}", other.change),
            format!("{:?}", request.change),
            "{what} changed the profile change"
        );
    }
    Ok(request)
}

/// Panics unless `change` is what `map` asked `op` for.
fn check_profile_change(op: ProfileOp, map: &Map<String, Value>, change: &ProfileChange) {
    let expected_key = user_key(map);
    let expected_field = match map.get("id") {
        Some(Value::String(id)) if !id.is_empty() => "id",
        Some(Value::Number(_)) => "id",
        _ => "email",
    };
    let object = |field: &str| match map.get(field) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => panic!("{field} {other} was accepted though it is not an object"),
    };
    let list = |field: &str| match map.get(field) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(other) => panic!("{field} {other} was accepted though it is not an array"),
    };
    let id_text = |field: &str| match map.get(field) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    match (op, change) {
        (
            ProfileOp::Track,
            ProfileChange::Track {
                identity,
                phone_number,
                channels,
                data,
            },
        ) => {
            assert_eq!(Some(identity.user_key().to_owned()), expected_key);
            let email = map
                .get("email")
                .and_then(Value::as_str)
                .filter(|e| !e.is_empty());
            assert_eq!(identity.email().map(|e| e.as_str()), email);
            let phone = map
                .get("phone_number")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty());
            assert_eq!(phone_number.as_deref(), phone);
            // One channel object is a list of one (RudderStack's mobile identify).
            let sent = match map.get("channels") {
                Some(one @ Value::Object(_)) => vec![one.clone()],
                _ => list("channels"),
            };
            assert_eq!(channels, &sent, "channels are not as sent");
            assert_eq!(data, &object("data"), "data is not as sent");
        }
        (ProfileOp::Edit, ProfileChange::Edit { user, changes }) => {
            assert_eq!(Some(user.key().to_owned()), expected_key);
            assert_eq!(user.field(), expected_field);
            assert_eq!(changes, &object("changes"), "changes are not as sent");
        }
        (ProfileOp::Tags, ProfileChange::Tags { user, add, remove }) => {
            assert_eq!(Some(user.key().to_owned()), expected_key);
            assert_eq!(user.field(), expected_field);
            // Empty strings are no tags: skipped (the Go client sends them).
            let strings = |field: &str| -> Vec<String> {
                list(field)
                    .iter()
                    .map(|t| t.as_str().expect("an accepted tag is a string").to_owned())
                    .filter(|t| !t.is_empty())
                    .collect()
            };
            assert_eq!(add, &strings("add"));
            assert_eq!(remove, &strings("remove"));
        }
        (
            ProfileOp::Unsubscribe | ProfileOp::Resubscribe,
            ProfileChange::Subscription { user, subscribed },
        ) => {
            assert_eq!(Some(user.key().to_owned()), expected_key);
            assert_eq!(user.field(), expected_field);
            assert_eq!(*subscribed, op == ProfileOp::Resubscribe);
        }
        (ProfileOp::Delete, ProfileChange::Delete { user }) => {
            assert_eq!(Some(user.key().to_owned()), expected_key);
            assert_eq!(user.field(), expected_field);
        }
        (ProfileOp::Reidentify, ProfileChange::Reidentify { id, new_id }) => {
            assert_eq!(Some(id.as_str().to_owned()), id_text("id"));
            // `new_id` equal to `id` is accepted: a 200 that changes nothing.
            assert_eq!(Some(new_id.as_str().to_owned()), id_text("new_id"));
        }
        (op, change) => panic!("users/{op:?} became {change:?}"),
    }
}

thread_local! {
    static TRACK_CASES: proptest::strategy::BoxedStrategy<strategies::Case> = strategies::track_case();
    static PROFILE_CASES: proptest::strategy::BoxedStrategy<(u8, strategies::Case)> =
        strategies::profile_case();
}

/// [`track_body`] on generated bodies: `bytes` seed the generator of track bodies
/// ([`strategies::track_case`]), and the body it makes must get exactly the verdict the
/// contract gives it (valid, or the refusal its mutation earns). True when accepted.
pub fn track_case(bytes: &[u8]) -> bool {
    let Some(case) = TRACK_CASES.with(|cases| strategies::from_bytes(cases, bytes)) else {
        return false;
    };
    let verdict = track_body(&case.bytes());
    case.check(&verdict);
    verdict.is_ok()
}

/// [`profile_body`] on generated bodies, as [`track_case`] for `users/*` bodies.
pub fn profile_case(bytes: &[u8]) -> bool {
    let Some((op, case)) = PROFILE_CASES.with(|cases| strategies::from_bytes(cases, bytes)) else {
        return false;
    };
    let verdict = profile_body(op, &case.bytes());
    case.check(&verdict);
    verdict.is_ok()
}

/// Read-route query strings (split on `&` and `=`): parsing never panics, an accepted
/// query keeps its limit in 1..=1000 and `since` before `until`, a user's events are that
/// user's, and a cursor the server hands out decodes to itself. True when some read route
/// accepts the query.
pub fn read_query(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let pairs: Vec<(String, String)> = text
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let key = cursor_key();
    let events = EventQuery::parse(PROJECT, &pairs, None, &key);
    let user_events = EventQuery::parse(PROJECT, &pairs, Some("user".into()), &key);
    for query in [&events, &user_events].into_iter().flatten() {
        assert!(
            (1..=MAX_LIMIT).contains(&query.limit),
            "limit {}",
            query.limit
        );
        if let (Some(since), Some(until)) = (query.since, query.until) {
            assert!(since <= until, "since after until");
        }
        let cursor_sent = pairs.iter().any(|(k, v)| k == "cursor" && !v.is_empty());
        assert_eq!(query.cursor.is_some(), cursor_sent);
    }
    if let Ok(query) = &user_events {
        assert_eq!(query.user_key.as_deref(), Some("user"));
    }
    let export = ExportQuery::parse(PROJECT, &pairs);
    let stats = StatsQuery::parse(PROJECT, &pairs);
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
    events.is_ok() || user_events.is_ok() || export.is_ok() || stats.is_ok()
}

/// An import line: parsing never panics and is deterministic; an export line is restored
/// as it was (its data as sent, its name and its key, its user), and a track body is read
/// exactly as [`track_map`] reads it.
pub fn import_line(bytes: &[u8]) -> Result<ImportItem, Refusal> {
    let first = crate::import::parse_line(bytes, PROJECT, NOW);
    let second = crate::import::parse_line(bytes, PROJECT, NOW);
    assert_eq!(
        format!("{first:?}"),
        format!("{second:?}"),
        "import parsing is not deterministic"
    );
    let item = first?;
    let map = json::parse_object(bytes, "", crate::MAX_JSON_DEPTH)
        .unwrap_or_else(|e| panic!("an accepted line is a JSON object: {e}"));
    match &item {
        ImportItem::Restore(record) => {
            let sent = match map.get("data") {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(data)) => data.clone(),
                Some(other) => panic!("data {other} was restored though it is not an object"),
            };
            let stored = json::parse_object(record.data.as_bytes(), "", crate::MAX_JSON_DEPTH)
                .unwrap_or_else(|e| panic!("restored data {:?} does not parse: {e}", record.data));
            assert_eq!(stored, sent, "restored data is not the data exported");
            assert_eq!(
                Some(record.name.as_str()),
                map.get("event_name").and_then(Value::as_str)
            );
            assert_eq!(record.key, EventKey::of(record.name.as_str()));
            let user = map
                .get("user")
                .and_then(Value::as_object)
                .expect("a restored line has a user");
            assert_eq!(Some(record.identity.user_key().to_owned()), user_key(user));
        }
        ImportItem::Track(tracked) => {
            let again = track_map(map).unwrap_or_else(|e| {
                panic!("a line imported as a track body is not a valid one: {e}")
            });
            assert_eq!(again.dedup_key, tracked.dedup_key);
        }
    }
    Ok(item)
}

#[cfg(test)]
mod tests {
    //! The CI side of the fuzz targets: the same properties on generated inputs, most of
    //! them valid. Each test counts what was accepted, prints it past libtest's capture and
    //! asserts a floor, so a generator that stops reaching the success path fails.

    use std::cell::Cell;

    use proptest::prelude::*;

    use super::strategies::{self, mostly_valid, tally};
    use super::*;

    #[test]
    fn json_canonical_holds_on_documents() {
        let (accepted, refused) = tally(
            "json_canonical (documents)",
            512,
            strategies::json_document(),
            |bytes| json_canonical(&bytes).is_ok(),
        );
        assert_eq!(refused, 0, "a valid JSON document was refused");
        assert_eq!(accepted, 512);
    }

    #[test]
    fn json_canonical_holds_on_edited_documents() {
        let (accepted, refused) = tally(
            "json_canonical (edited documents)",
            512,
            strategies::havoc(strategies::json_document()),
            |bytes| json_canonical(&bytes).is_ok(),
        );
        assert!(
            accepted > 0 && refused > 0,
            "{accepted} accepted, {refused} refused"
        );
    }

    #[test]
    fn batch_items_hold() {
        let faulted = Cell::new(0u32);
        let (accepted, refused) =
            tally(
                "batch_items",
                512,
                strategies::batch_body(),
                |bytes| match batch_items(&bytes) {
                    Ok(n) => {
                        faulted.set(faulted.get() + u32::from(n > 0));
                        true
                    }
                    Err(_) => false,
                },
            );
        let _ = std::io::Write::write_fmt(
            &mut std::io::stderr(),
            format_args!(
                "property batch_items: {} accepted with items refused\n",
                faulted.get()
            ),
        );
        // Each path reached: bodies taken whole, bodies taken with items refused, bodies
        // refused (a problem outside the items, broken grammar).
        assert!(
            faulted.get() > 0 && accepted > faulted.get() && refused > 0,
            "{accepted} accepted ({} with items refused), {refused} refused",
            faulted.get()
        );
    }

    #[test]
    fn json_canonical_holds_on_any_bytes() {
        let (_, refused) = tally(
            "json_canonical (any bytes)",
            512,
            prop::collection::vec(any::<u8>(), 0..128),
            |bytes| json_canonical(&bytes).is_ok(),
        );
        assert!(refused > 0);
    }

    #[test]
    fn track_body_holds() {
        mostly_valid(tally("track_body", 512, strategies::track_case(), |case| {
            let verdict = track_body(&case.bytes());
            case.check(&verdict);
            verdict.is_ok()
        }));
    }

    #[test]
    fn track_body_holds_on_edited_bodies() {
        let bodies = strategies::track_case()
            .prop_map(|case| case.bytes())
            .boxed();
        let (accepted, refused) = tally(
            "track_body (edited bodies)",
            512,
            strategies::havoc(bodies),
            |bytes| track_body(&bytes).is_ok(),
        );
        assert!(
            accepted > 0 && refused > 0,
            "{accepted} accepted, {refused} refused"
        );
    }

    #[test]
    fn profile_body_holds() {
        mostly_valid(tally(
            "profile_body",
            1024,
            strategies::profile_case(),
            |(op, case)| {
                let verdict = profile_body(op, &case.bytes());
                case.check(&verdict);
                verdict.is_ok()
            },
        ));
    }

    #[test]
    fn profile_body_holds_on_edited_bodies() {
        let bodies = strategies::profile_case()
            .prop_map(|(op, case)| {
                let mut bytes = vec![op];
                bytes.extend(case.bytes());
                bytes
            })
            .boxed();
        let (accepted, refused) = tally(
            "profile_body (edited bodies)",
            512,
            strategies::havoc(bodies),
            |bytes| match bytes.split_first() {
                Some((op, body)) => profile_body(*op, body).is_ok(),
                None => false,
            },
        );
        assert!(
            accepted > 0 && refused > 0,
            "{accepted} accepted, {refused} refused"
        );
    }

    #[test]
    fn forms_real_clients_send_keep_the_profile_property() {
        for (op, body) in [
            (
                0u8,
                r#"{"id":"rs-2","channels":{"type":"push","address":"apns-1"}}"#,
            ),
            (
                2,
                r#"{"id":"go-1","add":["","","t-shirt fanatic"],"remove":null}"#,
            ),
            (6, r#"{"id":"dm@example.com","new_id":"dm@example.com"}"#),
        ] {
            let map = json::parse_object(body.as_bytes(), "", crate::MAX_JSON_DEPTH)
                .expect("a JSON object");
            assert!(profile_map(op, &map).is_ok(), "{body}");
        }
    }

    #[test]
    fn read_query_holds() {
        mostly_valid(tally(
            "read_query",
            512,
            strategies::read_query(),
            |(query, valid)| {
                let accepted = read_query(query.as_bytes());
                let pairs: Vec<(String, String)> = query
                    .split('&')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').unwrap_or((p, ""));
                        (k.to_owned(), v.to_owned())
                    })
                    .collect();
                let events = EventQuery::parse(PROJECT, &pairs, None, &cursor_key());
                assert_eq!(events.is_ok(), valid, "GET /events?{query}: {events:?}");
                assert_eq!(accepted, valid, "{query}");
                accepted
            },
        ));
    }

    #[test]
    fn import_line_holds() {
        mostly_valid(tally(
            "import_line",
            512,
            strategies::import_line(),
            |(line, valid)| {
                let verdict = import_line(&line);
                assert_eq!(
                    verdict.is_ok(),
                    valid,
                    "{}: {:?}",
                    String::from_utf8_lossy(&line),
                    verdict.as_ref().err()
                );
                verdict.is_ok()
            },
        ));
    }

    #[test]
    fn generated_cases_hold_from_fuzzer_bytes() {
        let bytes = || prop::collection::vec(any::<u8>(), 0..2048);
        mostly_valid(tally("track_case (bytes)", 256, bytes(), |b| {
            track_case(&b)
        }));
        mostly_valid(tally("profile_case (bytes)", 256, bytes(), |b| {
            profile_case(&b)
        }));
        // The same bytes, the same body.
        let once = TRACK_CASES.with(|c| strategies::from_bytes(c, b"seed").map(|c| c.bytes()));
        let again = TRACK_CASES.with(|c| strategies::from_bytes(c, b"seed").map(|c| c.bytes()));
        assert_eq!(once, again);
    }

    /// The respellings the dedup-key property relies on are other spellings of the same
    /// number, and the independent decimal comparison tells numbers apart.
    #[test]
    fn respellings_name_the_same_number() {
        for (text, choice) in [
            ("1", 0),
            ("1", 1),
            ("1", 2),
            ("-0.05", 1),
            ("1.5e3", 1),
            ("0.001e-1000000", 1),
            ("12345678901234567890", 0),
        ] {
            let other = respell_number(text, choice);
            assert_ne!(other, text);
            assert_eq!(decimal(&other), decimal(text), "{text} → {other}");
        }
        assert_ne!(decimal("1"), decimal("10"));
        assert_ne!(decimal("-1"), decimal("1"));
        assert_eq!(decimal("-0.0"), decimal("0"));
        assert_eq!(decimal("0.001e-1000000"), decimal("1e-1000003"));
    }

    #[test]
    fn stored_data_keeps_the_digits_and_spelling_sent() {
        let body = br#"{"identity":{"id":7},"event_name":"Big Number","data":{"b":12345678901234567890123,"a":1.50}}"#;
        let event = track_body(body).expect("valid");
        assert_eq!(event.data, r#"{"b":12345678901234567890123,"a":1.50}"#);
        assert_eq!(
            track_body(br#"{"identity":{"id":"1"}}"#)
                .expect_err("no name")
                .to_string(),
            "event_name: is required"
        );
    }
}
