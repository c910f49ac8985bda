//! Generators for the properties' proptest drivers (here and in trackd-server): request
//! bodies that are mostly valid (identity by id and/or email, names and data in any
//! script, nested data with big integers, extras with times in every accepted format), and
//! a minority made invalid by one mutation of a valid body, each carrying the exact refusal
//! the contract promises for it. A generator that never reaches the success path proves
//! nothing about it: the drivers count what was accepted and assert a floor.

use std::cell::Cell;
use std::io::Write;

use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Map, Value};

use super::Refusal;
use crate::json;
use crate::users::ProfileOp;

/// A private-use character no generator produces: text-level mutations replace it with
/// what no `serde_json::Value` can hold (a lone surrogate, a raw control byte, invalid
/// UTF-8).
const MARK: char = '\u{E000}';

/// A generated body and what the contract says of it.
#[derive(Debug, Clone)]
pub struct Case {
    /// The body before any text-level change.
    pub body: Map<String, Value>,
    /// A change made to the body's JSON text.
    pub edit: TextEdit,
    /// Written with `serde_json`'s pretty printer (other whitespace) instead of compactly.
    pub pretty: bool,
    /// Valid, or the refusal it must get.
    pub expect: Expect,
    /// What was done to a valid body (`valid` when nothing).
    pub mutation: &'static str,
}

/// A change to a body's JSON text, for what a `Value` cannot hold.
#[derive(Debug, Clone)]
pub enum TextEdit {
    /// The text as written.
    None,
    /// The first [`MARK`] replaced with these bytes.
    Mark(Vec<u8>),
    /// `"<first key>":null,` inserted before the first key.
    DuplicateFirstKey,
    /// Cut to this many thousandths of its length (always short of the end).
    Truncate(u16),
    /// ` x` appended.
    Trailing,
}

/// What the contract says of a generated body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Accepted.
    Valid,
    /// Refused with exactly this `field: problem` message.
    Message(String),
    /// Refused naming this field (the problem depends on where the text was cut).
    Field(String),
    /// Refused with this message followed by the byte offset of the marked spot.
    AtMark(String),
    /// Refused with this message followed by the offset of the appended ` x`'s `x`.
    AtEnd(String),
}

impl Case {
    fn valid(body: Map<String, Value>, pretty: bool) -> Case {
        Case {
            body,
            edit: TextEdit::None,
            pretty,
            expect: Expect::Valid,
            mutation: "valid",
        }
    }

    fn refused(body: Map<String, Value>, mutation: &'static str, message: String) -> Case {
        Case {
            body,
            edit: TextEdit::None,
            pretty: false,
            expect: Expect::Message(message),
            mutation,
        }
    }

    /// Whether the body is valid.
    pub fn is_valid(&self) -> bool {
        self.expect == Expect::Valid
    }

    /// The JSON text before the text-level change.
    fn base_text(&self) -> Vec<u8> {
        let written = if self.pretty {
            serde_json::to_vec_pretty(&self.body)
        } else {
            serde_json::to_vec(&self.body)
        };
        written.unwrap_or_else(|e| panic!("a generated body serialises: {e}"))
    }

    fn mark_at(text: &[u8]) -> usize {
        let mut mark = [0u8; 4];
        let mark = MARK.encode_utf8(&mut mark).as_bytes();
        text.windows(mark.len())
            .position(|w| w == mark)
            .unwrap_or_else(|| panic!("a marked body holds the mark"))
    }

    /// The body as bytes on the wire: JSON, with the text-level change made.
    pub fn bytes(&self) -> Vec<u8> {
        let mut text = self.base_text();
        match &self.edit {
            TextEdit::None => {}
            TextEdit::Mark(with) => {
                let at = Self::mark_at(&text);
                text.splice(at..at + MARK.len_utf8(), with.iter().copied());
            }
            TextEdit::DuplicateFirstKey => {
                let key = self.body.keys().next().expect("a body with a key");
                let insert = format!("{}:null,", Value::String(key.clone()));
                let at = text.iter().position(|&b| b == b'{').expect("an object") + 1;
                text.splice(at..at, insert.bytes());
            }
            TextEdit::Truncate(per_mille) => {
                let cut = text.len() * usize::from(*per_mille) / 1000;
                text.truncate(cut.min(text.len() - 1));
            }
            TextEdit::Trailing => text.extend_from_slice(b" x"),
        }
        text
    }

    /// The exact refusal expected, resolved against the text (`None` for a valid body).
    fn expected_message(&self) -> Option<Result<String, String>> {
        match &self.expect {
            Expect::Valid => None,
            Expect::Message(m) => Some(Ok(m.clone())),
            Expect::Field(f) => Some(Err(f.clone())),
            Expect::AtMark(m) => Some(Ok(format!("{m}{}", Self::mark_at(&self.base_text())))),
            Expect::AtEnd(m) => Some(Ok(format!("{m}{}", self.base_text().len() + 1))),
        }
    }

    /// Panics unless `verdict` is what the contract says of this body.
    #[track_caller]
    pub fn check<T>(&self, verdict: &Result<T, Refusal>) {
        let shown = || String::from_utf8_lossy(&self.bytes()).into_owned();
        match (self.expected_message(), verdict) {
            (None, Ok(_)) => {}
            (None, Err(refusal)) => panic!("a valid body was refused ({refusal}): {}", shown()),
            (Some(_), Ok(_)) => panic!(
                "a body made invalid by {} was accepted: {}",
                self.mutation,
                shown()
            ),
            (Some(Ok(message)), Err(refusal)) => assert_eq!(
                refusal.to_string(),
                message,
                "{} refused with the wrong message: {}",
                self.mutation,
                shown()
            ),
            (Some(Err(field)), Err(refusal)) => assert_eq!(
                refusal.field,
                field,
                "{} refused naming the wrong field ({refusal}): {}",
                self.mutation,
                shown()
            ),
        }
    }
}

/// A JSON number written exactly as `text`.
fn number(text: &str) -> Value {
    json::parse_value(text.as_bytes(), "", 1)
        .unwrap_or_else(|e| panic!("generated number {text:?} parses: {e}"))
}

/// Characters of every kind a client sends: ASCII, punctuation JSON escapes, other
/// scripts, emoji, controls, bidirectional overrides. Never NUL and never [`MARK`].
fn any_char() -> impl Strategy<Value = char> {
    prop_oneof![
        8 => proptest::char::range('a', 'z'),
        2 => proptest::char::range('A', 'Z'),
        2 => proptest::char::range('0', '9'),
        3 => select(vec![' ', '_', '-', '.', '"', '\\', '/', '\'', '<', '>', '&', '=', '+', '%', '@']),
        2 => select(vec![
            'é', 'ß', 'Ω', 'Σ', 'ς', 'ж', 'İ', '中', '文', 'ا', 'ע', '😀', '🎉', '\u{202e}',
            '\u{200b}', '\u{7f}', '\u{1}', '\t', '\n', '\u{1f}', '\u{fffd}', '\u{10ffff}',
            '\u{feff}', '\u{2028}',
        ]),
    ]
}

/// A string of `min..=max` characters of [`any_char`].
fn text(min: usize, max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any_char(), min..=max).prop_map(|c| c.into_iter().collect())
}

/// Short usually, exactly `max` characters sometimes (the boundary).
fn bounded_text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        9 => text(1, 24),
        1 => text(max, max),
    ]
}

/// `id`: a string, an integer, or an integer too big for 64 bits.
fn user_id() -> BoxedStrategy<Value> {
    prop_oneof![
        6 => bounded_text(254).prop_map(Value::String),
        2 => any::<i64>().prop_map(Value::from),
        1 => "-?[1-9][0-9]{19,40}".prop_map(|d| number(&d)),
    ]
    .boxed()
}

const EMAIL_LOCAL: &str =
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.!#$%&'*+/=?^_`{|}~-";

/// An address that passes the WHATWG `<input type=email>` rule, now and then exactly 254
/// characters long.
fn email() -> BoxedStrategy<String> {
    let local = prop::collection::vec(select(EMAIL_LOCAL.chars().collect::<Vec<_>>()), 1..=20)
        .prop_map(|c| c.into_iter().collect::<String>());
    let label = "[A-Za-z0-9]([A-Za-z0-9-]{0,10}[A-Za-z0-9])?";
    prop_oneof![
        9 => (local, prop::collection::vec(label, 1..=3))
            .prop_map(|(local, labels)| format!("{local}@{}", labels.join("."))),
        1 => Just(format!("{}@example.com", "a".repeat(254 - "@example.com".len()))),
    ]
    .boxed()
}

/// Invalid addresses, each a different way to break the rule.
const BAD_EMAILS: &[&str] = &[
    "plain",
    "a@",
    "@example.com",
    "a b@example.com",
    "a@-example.com",
    "a@example-.com",
    "a@example..com",
    "a@example.com.",
    "a@b@example.com",
    "é@example.com",
    "a@exämple.com",
    "a@xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx.com",
];

/// A JSON number: 64-bit integers, integers past them, decimals, exponents, and the
/// spellings that mean the same value.
fn json_number() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => any::<i64>().prop_map(Value::from),
        2 => "-?[1-9][0-9]{18,30}".prop_map(|d| number(&d)),
        2 => "-?(0|[1-9][0-9]{0,5})\\.[0-9]{1,6}".prop_map(|d| number(&d)),
        1 => "-?[1-9](\\.[0-9]{1,4})?[eE][-+]?[0-9]{1,3}".prop_map(|d| number(&d)),
        1 => select(vec![
            "0", "-0", "0.0", "1.0", "1e0", "10e-1", "1E+2", "0.001e-1000000", "1e400",
            "123456789012345678901234567890",
        ])
        .prop_map(number),
    ]
    .boxed()
}

/// Any JSON value, nested a few levels.
fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        3 => json_number(),
        4 => text(0, 24).prop_map(Value::String),
        1 => text(300, 300).prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((text(0, 10), inner), 0..5)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
    .boxed()
}

/// `{"deep": [[...]]}` with `arrays` nested arrays: 62 reach depth 64 inside a body's
/// object field, the deepest a body may go; 63 are one level too deep.
fn deep(arrays: usize) -> Value {
    let mut v = Value::Array(Vec::new());
    for _ in 1..arrays {
        v = Value::Array(vec![v]);
    }
    let mut map = Map::new();
    map.insert("deep".into(), v);
    Value::Object(map)
}

/// A non-empty object of properties.
fn properties() -> BoxedStrategy<Map<String, Value>> {
    prop_oneof![
        9 => prop::collection::vec((text(0, 12), json_value()), 1..8)
            .prop_map(|entries| entries.into_iter().collect::<Map<_, _>>()),
        1 => Just(deep(62)).prop_map(|v| match v {
            Value::Object(map) => map,
            _ => Map::new(),
        }),
    ]
    .boxed()
}

/// An optional object field: absent (`None`), null, `{}`, or properties.
fn object_field() -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        1 => Just(Some(Value::Object(Map::new()))),
        6 => properties().prop_map(|m| Some(Value::Object(m))),
    ]
    .boxed()
}

/// `extras.created_at` in every accepted form: ISO 8601 with `Z`, `+00:00`, `+0000`, other
/// offsets or none, with or without fractional seconds; Unix seconds as an integer, with a
/// fraction or with an exponent.
fn created_at() -> BoxedStrategy<Value> {
    let iso = (
        1971u32..2100,
        1u32..=12,
        1u32..=28,
        0u32..24,
        0u32..60,
        0u32..60,
        select(vec!["", ".1", ".123", ".123456", ".123456789"]),
        select(vec![
            "Z", "+00:00", "+0000", "", "-05:30", "+0200", "+14:00",
        ]),
    )
        .prop_map(|(y, mo, d, h, mi, s, frac, offset)| {
            Value::String(format!(
                "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}{offset}"
            ))
        });
    prop_oneof![
        5 => iso,
        2 => (0i64..4_000_000_000).prop_map(Value::from),
        1 => (0i64..4_000_000_000, 0u32..1_000_000)
            .prop_map(|(s, f)| number(&format!("{s}.{f:06}"))),
        1 => select(vec![
            "1.3885344e9", "-86400", "0", "253402300799", "-62135596800",
        ])
        .prop_map(number),
        1 => select(vec!["0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z"])
            .prop_map(|s| Value::String(s.to_owned())),
    ]
    .boxed()
}

/// `extras`: absent, null, or an object of `source`, `created_at`, `check_id` and keys
/// trackd does not know.
fn extras() -> BoxedStrategy<Option<Value>> {
    let source = prop_oneof![
        4 => text(0, 20).prop_map(Value::String),
        1 => Just(Value::Null),
    ];
    let check_id = prop_oneof![
        3 => bounded_text(64).prop_map(Value::String),
        2 => json_number(),
        1 => Just(Value::Null),
    ];
    let unknown = (text(1, 8), json_value());
    let fields = (
        prop::option::of(source),
        prop::option::of(created_at()),
        prop::option::of(check_id),
        prop::option::of(unknown),
    )
        .prop_map(|(source, created_at, check_id, unknown)| {
            let mut map = Map::new();
            if let Some((key, value)) = unknown {
                map.insert(key, value);
            }
            for (key, value) in [
                ("source", source),
                ("created_at", created_at),
                ("check_id", check_id),
            ] {
                if let Some(value) = value {
                    map.insert(key.into(), value);
                }
            }
            Some(Value::Object(map))
        });
    prop_oneof![
        2 => Just(None),
        1 => Just(Some(Value::Null)),
        6 => fields,
    ]
    .boxed()
}

/// `id` and/or `email` (at least one usable), as an object's fields: an id alone, an
/// email alone, both, an id with a null or empty email, an empty id with an email, and
/// profile traits older clients put beside them.
fn who() -> BoxedStrategy<Map<String, Value>> {
    let blank_email = select(vec![Value::Null, Value::String(String::new())]);
    let traits = prop::collection::vec(
        (
            select(vec!["name", "first_name", "plan", "age", "vero"]),
            json_value(),
        ),
        1..3,
    );
    prop_oneof![
        3 => user_id().prop_map(|id| fields([("id", id)])),
        2 => email().prop_map(|e| fields([("email", Value::String(e))])),
        3 => (user_id(), email())
            .prop_map(|(id, e)| fields([("id", id), ("email", Value::String(e))])),
        1 => (user_id(), blank_email).prop_map(|(id, e)| fields([("id", id), ("email", e)])),
        1 => email().prop_map(|e| fields([
            ("id", Value::String(String::new())),
            ("email", Value::String(e)),
        ])),
        1 => (user_id(), traits).prop_map(|(id, traits)| {
            let mut map = fields([("id", id)]);
            for (key, value) in traits {
                map.insert(key.into(), value);
            }
            map
        }),
    ]
    .boxed()
}

fn fields<const N: usize>(entries: [(&str, Value); N]) -> Map<String, Value> {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

/// A valid `events/track` body: identity in an `identity` object (or, as older clients
/// send it, `id`/`email` at the top level), a name of up to 254 characters in any script,
/// data, extras, unknown top-level keys now and then, keys in any order.
pub fn valid_track_body() -> BoxedStrategy<Map<String, Value>> {
    (
        who(),
        0u8..10,
        bounded_text(254),
        object_field(),
        extras(),
        prop::option::of(select(vec![
            ("development_mode", Value::Bool(true)),
            ("library", Value::String("vero-ruby".into())),
        ])),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(who, top_level, name, data, extras, unknown, order)| {
            let mut entries: Vec<(String, Value)> = Vec::new();
            if top_level == 0 {
                entries.extend(who);
            } else {
                entries.push(("identity".into(), Value::Object(who)));
            }
            entries.push(("event_name".into(), Value::String(name)));
            if let Some(data) = data {
                entries.push(("data".into(), data));
            }
            if let Some(extras) = extras {
                entries.push(("extras".into(), extras));
            }
            if let Some((key, value)) = unknown {
                entries.push((key.into(), value));
            }
            let n = entries.len();
            entries.rotate_left(order.index(n));
            entries.into_iter().collect()
        })
        .boxed()
}

/// Ways to make a valid track body invalid; see [`mutate_track`].
const TRACK_MUTATIONS: &[&str] = &[
    "no identity",
    "identity not an object",
    "id not a string or integer",
    "id of 255 characters",
    "email of 255 characters",
    "bad email",
    "email not a string",
    "no event_name",
    "empty event_name",
    "event_name not a string",
    "event_name of 255 characters",
    "data not an object",
    "extras not an object",
    "source not a string",
    "created_at not a time",
    "created_at of a wrong type",
    "created_at out of range",
    "check_id of a wrong type",
    "NUL in a string",
    "NUL in a key",
    "nested 65 deep",
    "lone surrogate",
    "raw control character",
    "invalid UTF-8",
    "duplicate key",
    "truncated",
    "trailing characters",
];

/// Where a body's `id` and `email` are: `identity` (with its path prefix) or the top level.
fn who_of(body: &mut Map<String, Value>) -> (&mut Map<String, Value>, &'static str) {
    if body.get("identity").is_some_and(Value::is_object) {
        match body.get_mut("identity") {
            Some(Value::Object(who)) => (who, "identity."),
            _ => unreachable!("checked above"),
        }
    } else {
        (body, "")
    }
}

fn wrong_type(n: u8, allowed: &[&str]) -> Value {
    let all = [
        ("number", Value::from(5)),
        ("fraction", number("1.5")),
        ("bool", Value::Bool(true)),
        ("array", Value::Array(vec![Value::from(1)])),
        ("object", Value::Object(Map::new())),
    ];
    let candidates: Vec<&Value> = all
        .iter()
        .filter(|(kind, _)| allowed.contains(kind))
        .map(|(_, v)| v)
        .collect();
    candidates[usize::from(n) % candidates.len()].clone()
}

fn extras_of(body: &mut Map<String, Value>) -> &mut Map<String, Value> {
    if !body.get("extras").is_some_and(Value::is_object) {
        body.insert("extras".into(), Value::Object(Map::new()));
    }
    match body.get_mut("extras") {
        Some(Value::Object(extras)) => extras,
        _ => unreachable!("inserted above"),
    }
}

fn data_of<'a>(body: &'a mut Map<String, Value>, field: &str) -> &'a mut Map<String, Value> {
    if !body.get(field).is_some_and(Value::is_object) {
        body.insert(field.into(), Value::Object(Map::new()));
    }
    match body.get_mut(field) {
        Some(Value::Object(data)) => data,
        _ => unreachable!("inserted above"),
    }
}

/// Text-level mutations shared by every body: the mark goes into the string field `field`
/// (created when absent).
fn text_mutation(
    mut body: Map<String, Value>,
    mutation: &'static str,
    field: &str,
    n: u8,
) -> Option<Case> {
    let mark = |body: &mut Map<String, Value>| {
        let text = match body.get(field) {
            Some(Value::String(s)) => s.clone(),
            _ => "n".to_owned(),
        };
        let cut: String = text.chars().take(20).collect();
        body.insert(field.into(), Value::String(format!("{cut}{MARK}")));
    };
    let (edit, expect) = match mutation {
        "lone surrogate" => {
            mark(&mut body);
            let escape =
                [&b"\\ud800"[..], b"\\udfff", b"\\ud800\\u0041", b"\\udbff x"][usize::from(n) % 4];
            (
                TextEdit::Mark(escape.to_vec()),
                Expect::Message(format!("{field}: contains a lone surrogate")),
            )
        }
        "NUL in a string" if n < 128 => {
            mark(&mut body);
            let nul = if n < 64 { &b"\0"[..] } else { b"\\u0000" };
            (
                TextEdit::Mark(nul.to_vec()),
                Expect::Message(format!("{field}: contains a NUL character (\\u0000)")),
            )
        }
        "raw control character" => {
            mark(&mut body);
            (
                TextEdit::Mark(vec![1 + n % 31]),
                Expect::AtMark("body: invalid JSON: control character in string at byte ".into()),
            )
        }
        "invalid UTF-8" => {
            mark(&mut body);
            let bad = [
                &[0xffu8][..],
                &[0xc3, 0x28],
                &[0xed, 0xa0, 0x80],
                &[0xe2, 0x82],
            ][usize::from(n) % 4];
            (
                TextEdit::Mark(bad.to_vec()),
                Expect::AtMark("body: invalid UTF-8 at byte ".into()),
            )
        }
        "duplicate key" => {
            let key = body.keys().next()?.clone();
            (
                TextEdit::DuplicateFirstKey,
                Expect::Message(format!("{key}: duplicate key")),
            )
        }
        "truncated" => (
            TextEdit::Truncate((u32::from(n) * 1000 / 256) as u16),
            Expect::Field("body".into()),
        ),
        "trailing characters" => (
            TextEdit::Trailing,
            Expect::AtEnd(
                "body: invalid JSON: trailing characters after the JSON value at byte ".into(),
            ),
        ),
        _ => return None,
    };
    Some(Case {
        body,
        edit,
        pretty: n > 170,
        expect,
        mutation,
    })
}

/// A valid track body made invalid by `mutation`, with the refusal it must get; `n` picks
/// among the variants of a mutation.
pub fn mutate_track(mut body: Map<String, Value>, mutation: &'static str, n: u8) -> Case {
    if let Some(case) = text_mutation(body.clone(), mutation, "event_name", n) {
        return case;
    }
    let long = "é".repeat(255);
    let message = match mutation {
        "no identity" => {
            body.shift_remove("identity");
            body.shift_remove("id");
            body.shift_remove("email");
            "identity: an id or an email is required".to_owned()
        }
        "identity not an object" => {
            body.insert(
                "identity".into(),
                wrong_type(n, &["number", "bool", "array"]),
            );
            "identity: must be an object".to_owned()
        }
        "id not a string or integer" => {
            let (who, prefix) = who_of(&mut body);
            who.insert(
                "id".into(),
                wrong_type(n, &["fraction", "bool", "array", "object"]),
            );
            format!("{prefix}id: must be a string or an integer")
        }
        "id of 255 characters" => {
            let (who, prefix) = who_of(&mut body);
            who.insert("id".into(), Value::String(long));
            format!("{prefix}id: longer than 254 characters")
        }
        "email of 255 characters" => {
            let (who, prefix) = who_of(&mut body);
            let local = "a".repeat(255 - "@example.com".len());
            who.insert(
                "email".into(),
                Value::String(format!("{local}@example.com")),
            );
            format!("{prefix}email: longer than 254 characters")
        }
        "bad email" => {
            let (who, prefix) = who_of(&mut body);
            let bad = BAD_EMAILS[usize::from(n) % BAD_EMAILS.len()];
            who.insert("email".into(), Value::String(bad.into()));
            format!("{prefix}email: not a valid email address")
        }
        "email not a string" => {
            let (who, prefix) = who_of(&mut body);
            who.insert(
                "email".into(),
                wrong_type(n, &["number", "bool", "array", "object"]),
            );
            format!("{prefix}email: must be a string or null")
        }
        "no event_name" => {
            if n < 128 {
                body.shift_remove("event_name");
            } else {
                body.insert("event_name".into(), Value::Null);
            }
            "event_name: is required".to_owned()
        }
        "empty event_name" => {
            body.insert("event_name".into(), Value::String(String::new()));
            "event_name: is empty".to_owned()
        }
        "event_name not a string" => {
            body.insert(
                "event_name".into(),
                wrong_type(n, &["number", "bool", "array", "object"]),
            );
            "event_name: must be a string".to_owned()
        }
        "event_name of 255 characters" => {
            body.insert("event_name".into(), Value::String(long));
            "event_name: longer than 254 characters".to_owned()
        }
        "data not an object" => {
            body.insert("data".into(), wrong_type(n, &["number", "bool", "array"]));
            "data: must be an object".to_owned()
        }
        "extras not an object" => {
            body.insert("extras".into(), wrong_type(n, &["number", "bool", "array"]));
            "extras: must be an object".to_owned()
        }
        "source not a string" => {
            extras_of(&mut body).insert(
                "source".into(),
                wrong_type(n, &["number", "bool", "array", "object"]),
            );
            "extras.source: must be a string".to_owned()
        }
        "created_at not a time" => {
            let bad = [
                "soon",
                "2023-13-01T00:00:00Z",
                "2023-05-30",
                "",
                "12:00",
                "1388534400s",
            ][usize::from(n) % 6];
            extras_of(&mut body).insert("created_at".into(), Value::String(bad.into()));
            "extras.created_at: not an ISO 8601 time or Unix seconds between years 1 and 9999"
                .to_owned()
        }
        "created_at of a wrong type" => {
            extras_of(&mut body).insert(
                "created_at".into(),
                wrong_type(n, &["bool", "array", "object"]),
            );
            "extras.created_at: must be an ISO 8601 string or Unix seconds".to_owned()
        }
        "created_at out of range" => {
            let bad = [
                "1e300",
                "253402300800",
                "-62135596801",
                "99999999999999999999",
            ][usize::from(n) % 4];
            extras_of(&mut body).insert("created_at".into(), number(bad));
            "extras.created_at: Unix seconds out of range (years 1 to 9999)".to_owned()
        }
        "check_id of a wrong type" => {
            extras_of(&mut body).insert(
                "check_id".into(),
                wrong_type(n, &["bool", "array", "object"]),
            );
            "extras.check_id: must be a string or a number".to_owned()
        }
        "NUL in a string" => {
            data_of(&mut body, "data").insert("note".into(), Value::String("a\0b".into()));
            "data.note: contains a NUL character (\\u0000)".to_owned()
        }
        "NUL in a key" => {
            data_of(&mut body, "data").insert("k\0".into(), Value::from(1));
            "data: contains a NUL character (\\u0000)".to_owned()
        }
        "nested 65 deep" => {
            data_of(&mut body, "data").insert("deep".into(), deep(63)["deep"].clone());
            format!(
                "data.deep{}: nested deeper than 64 levels",
                "[0]".repeat(62)
            )
        }
        other => unreachable!("unknown track mutation {other}"),
    };
    Case::refused(body, mutation, message)
}

/// Track bodies: three in four valid, the rest one mutation away from valid.
pub fn track_case() -> BoxedStrategy<Case> {
    prop_oneof![
        3 => (valid_track_body(), any::<bool>()).prop_map(|(body, pretty)| Case::valid(body, pretty)),
        1 => (valid_track_body(), select(TRACK_MUTATIONS), any::<u8>())
            .prop_map(|(body, mutation, n)| mutate_track(body, mutation, n)),
    ]
    .boxed()
}

/// The `users/*` operations, as the properties number them.
pub const PROFILE_OPS: [ProfileOp; 7] = [
    ProfileOp::Track,
    ProfileOp::Edit,
    ProfileOp::Tags,
    ProfileOp::Unsubscribe,
    ProfileOp::Resubscribe,
    ProfileOp::Delete,
    ProfileOp::Reidentify,
];

/// A tag: 1 to 254 characters.
fn tag() -> BoxedStrategy<Value> {
    bounded_text(254).prop_map(Value::String).boxed()
}

/// `add` or `remove`: absent, null, empty, or tags.
fn tag_list() -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        1 => Just(Some(Value::Array(Vec::new()))),
        5 => prop::collection::vec(tag(), 1..5).prop_map(|t| Some(Value::Array(t))),
    ]
    .boxed()
}

/// `channels`: absent, null, the JavaScript SDK's empty list, or channels with a type and
/// an address (and other keys).
fn channels() -> BoxedStrategy<Option<Value>> {
    let channel = (
        select(vec!["push", "email", "sms"]),
        bounded_text(64),
        prop::option::of(select(vec!["ios", "android", "web"])),
    )
        .prop_map(|(kind, address, platform)| {
            let mut map = fields([
                ("type", Value::String(kind.into())),
                ("address", Value::String(address)),
            ]);
            if let Some(platform) = platform {
                map.insert("platform".into(), Value::String(platform.into()));
            }
            Value::Object(map)
        });
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        2 => Just(Some(Value::Array(Vec::new()))),
        4 => prop::collection::vec(channel, 1..4).prop_map(|c| Some(Value::Array(c))),
    ]
    .boxed()
}

/// `phone_number`: absent, null, empty, or up to 254 characters.
fn phone() -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        2 => Just(None),
        1 => Just(Some(Value::Null)),
        1 => Just(Some(Value::String(String::new()))),
        4 => bounded_text(254).prop_map(|p| Some(Value::String(p))),
    ]
    .boxed()
}

/// A decimal text of an id (what the user key is).
fn id_text(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A valid body for `users/<op>` (`op` indexes [`PROFILE_OPS`]).
pub fn valid_profile_body(op: u8) -> BoxedStrategy<Map<String, Value>> {
    let unknown = prop::option::of(select(vec![
        ("development_mode", Value::Bool(true)),
        ("traits", Value::Object(Map::new())),
    ]));
    let with = |mut body: Map<String, Value>, entries: Vec<(&str, Option<Value>)>| {
        for (key, value) in entries {
            if let Some(value) = value {
                body.insert(key.into(), value);
            }
        }
        body
    };
    let body = match PROFILE_OPS[usize::from(op) % PROFILE_OPS.len()] {
        ProfileOp::Track => (who(), phone(), channels(), object_field())
            .prop_map(move |(who, phone, channels, data)| {
                with(
                    who,
                    vec![
                        ("phone_number", phone),
                        ("channels", channels),
                        ("data", data),
                    ],
                )
            })
            .boxed(),
        ProfileOp::Edit => (who(), properties(), any::<bool>())
            .prop_map(move |(who, changes, empty)| {
                let changes = if empty { Map::new() } else { changes };
                with(who, vec![("changes", Some(Value::Object(changes)))])
            })
            .boxed(),
        ProfileOp::Tags => (who(), tag_list(), tag_list())
            .prop_map(move |(who, add, remove)| with(who, vec![("add", add), ("remove", remove)]))
            .boxed(),
        ProfileOp::Unsubscribe | ProfileOp::Resubscribe | ProfileOp::Delete => who(),
        ProfileOp::Reidentify => (user_id(), user_id(), prop::option::of(email()))
            .prop_map(|(id, new_id, email)| {
                let new_id = if id_text(&id) == id_text(&new_id) {
                    Value::String(format!(
                        "{}-new",
                        id_text(&id).chars().take(200).collect::<String>()
                    ))
                } else {
                    new_id
                };
                let mut body = fields([("id", id), ("new_id", new_id)]);
                if let Some(email) = email {
                    body.insert("email".into(), Value::String(email));
                }
                body
            })
            .boxed(),
    };
    (body, unknown, any::<prop::sample::Index>())
        .prop_map(|(body, unknown, order)| {
            let mut entries: Vec<(String, Value)> = body.into_iter().collect();
            if let Some((key, value)) = unknown {
                entries.push((key.into(), value));
            }
            let n = entries.len();
            entries.rotate_left(order.index(n));
            entries.into_iter().collect()
        })
        .boxed()
}

/// Ways to make a valid `users/*` body invalid; each applies to some operations (see
/// [`mutate_profile`]).
const PROFILE_MUTATIONS: &[&str] = &[
    "no user",
    "id not a string or integer",
    "id of 255 characters",
    "bad email",
    "email of 255 characters",
    "phone_number not a string",
    "phone_number of 255 characters",
    "channels not an array",
    "channel not an object",
    "channel without an address",
    "channel with an empty type",
    "data not an object",
    "no changes",
    "changes not an object",
    "add not an array",
    "tag not a string",
    "tag of 255 characters",
    "no new_id",
    "new_id not a string or integer",
    "new_id of 255 characters",
    "NUL in a string",
    "lone surrogate",
    "raw control character",
    "invalid UTF-8",
    "duplicate key",
    "truncated",
    "trailing characters",
];

/// A valid `users/<op>` body made invalid by `mutation`, with the refusal it must get.
/// `None` when the mutation means nothing for that operation.
pub fn mutate_profile(
    op: u8,
    mut body: Map<String, Value>,
    mutation: &'static str,
    n: u8,
) -> Option<Case> {
    let op = PROFILE_OPS[usize::from(op) % PROFILE_OPS.len()];
    if let Some(case) = text_mutation(body.clone(), mutation, "note", n) {
        return Some(case);
    }
    let long = "ж".repeat(255);
    let by_user = op != ProfileOp::Reidentify;
    let message = match mutation {
        "no user" => {
            body.shift_remove("id");
            body.shift_remove("email");
            if by_user {
                "id: an id or an email is required"
            } else {
                "id: is required"
            }
            .to_owned()
        }
        "id not a string or integer" => {
            body.insert(
                "id".into(),
                wrong_type(n, &["fraction", "bool", "array", "object"]),
            );
            "id: must be a string or an integer".to_owned()
        }
        "id of 255 characters" => {
            body.insert("id".into(), Value::String(long));
            "id: longer than 254 characters".to_owned()
        }
        "bad email" if by_user => {
            let bad = BAD_EMAILS[usize::from(n) % BAD_EMAILS.len()];
            body.insert("email".into(), Value::String(bad.into()));
            "email: not a valid email address".to_owned()
        }
        "email of 255 characters" if by_user => {
            let local = "a".repeat(255 - "@example.com".len());
            body.insert(
                "email".into(),
                Value::String(format!("{local}@example.com")),
            );
            "email: longer than 254 characters".to_owned()
        }
        "phone_number not a string" if op == ProfileOp::Track => {
            body.insert(
                "phone_number".into(),
                wrong_type(n, &["number", "bool", "array", "object"]),
            );
            "phone_number: must be a string".to_owned()
        }
        "phone_number of 255 characters" if op == ProfileOp::Track => {
            body.insert("phone_number".into(), Value::String(long));
            "phone_number: longer than 254 characters".to_owned()
        }
        "channels not an array" if op == ProfileOp::Track => {
            body.insert("channels".into(), wrong_type(n, &["number", "bool"]));
            "channels: must be an array of objects (or one object)".to_owned()
        }
        "channel not an object" | "channel without an address" | "channel with an empty type"
            if op == ProfileOp::Track =>
        {
            let mut list = match body.get("channels") {
                Some(Value::Array(list)) => list.clone(),
                _ => Vec::new(),
            };
            let i = list.len();
            let (channel, message) = match mutation {
                "channel not an object" => (
                    wrong_type(n, &["number", "bool", "array"]),
                    format!("channels[{i}]: must be an object"),
                ),
                "channel without an address" => (
                    Value::Object(fields([("type", Value::String("push".into()))])),
                    format!("channels[{i}].address: is required"),
                ),
                _ => (
                    Value::Object(fields([
                        ("type", Value::String(String::new())),
                        ("address", Value::String("D1".into())),
                    ])),
                    format!("channels[{i}].type: must be a non-empty string"),
                ),
            };
            list.push(channel);
            body.insert("channels".into(), Value::Array(list));
            message
        }
        "data not an object" if op == ProfileOp::Track => {
            body.insert("data".into(), wrong_type(n, &["number", "bool", "array"]));
            "data: must be an object".to_owned()
        }
        "no changes" if op == ProfileOp::Edit => {
            if n < 128 {
                body.shift_remove("changes");
            } else {
                body.insert("changes".into(), Value::Null);
            }
            "changes: is required".to_owned()
        }
        "changes not an object" if op == ProfileOp::Edit => {
            body.insert(
                "changes".into(),
                wrong_type(n, &["number", "bool", "array"]),
            );
            "changes: must be an object".to_owned()
        }
        "add not an array" if op == ProfileOp::Tags => {
            let field = if n < 128 { "add" } else { "remove" };
            body.insert(
                field.into(),
                wrong_type(n / 2, &["number", "bool", "object"]),
            );
            format!("{field}: must be an array of strings")
        }
        "tag not a string" | "tag of 255 characters" if op == ProfileOp::Tags => {
            let field = if n < 128 { "add" } else { "remove" };
            let mut list = match body.get(field) {
                Some(Value::Array(list)) => list.clone(),
                _ => Vec::new(),
            };
            let i = list.len();
            let message = if mutation == "tag not a string" {
                list.push(wrong_type(n / 2, &["number", "bool", "array", "object"]));
                format!("{field}[{i}]: must be a string")
            } else {
                list.push(Value::String(long));
                format!("{field}[{i}]: longer than 254 characters")
            };
            body.insert(field.into(), Value::Array(list));
            message
        }
        "no new_id" if op == ProfileOp::Reidentify => {
            body.shift_remove("new_id");
            "new_id: is required".to_owned()
        }
        "new_id not a string or integer" if op == ProfileOp::Reidentify => {
            body.insert(
                "new_id".into(),
                wrong_type(n, &["fraction", "bool", "array", "object"]),
            );
            "new_id: must be a string or an integer".to_owned()
        }
        "new_id of 255 characters" if op == ProfileOp::Reidentify => {
            body.insert("new_id".into(), Value::String(long));
            "new_id: longer than 254 characters".to_owned()
        }
        "NUL in a string" => {
            body.insert("note".into(), Value::String("a\0b".into()));
            "note: contains a NUL character (\\u0000)".to_owned()
        }
        _ => return None,
    };
    Some(Case::refused(body, mutation, message))
}

/// The mutations that mean something for `users/<op>` (see [`mutate_profile`]).
fn profile_mutations(op: u8) -> Vec<&'static str> {
    let mut all = vec![
        "no user",
        "id not a string or integer",
        "id of 255 characters",
        "NUL in a string",
        "lone surrogate",
        "raw control character",
        "invalid UTF-8",
        "duplicate key",
        "truncated",
        "trailing characters",
    ];
    let op = PROFILE_OPS[usize::from(op) % PROFILE_OPS.len()];
    if op != ProfileOp::Reidentify {
        all.extend(["bad email", "email of 255 characters"]);
    }
    all.extend(match op {
        ProfileOp::Track => &[
            "phone_number not a string",
            "phone_number of 255 characters",
            "channels not an array",
            "channel not an object",
            "channel without an address",
            "channel with an empty type",
            "data not an object",
        ][..],
        ProfileOp::Edit => &["no changes", "changes not an object"][..],
        ProfileOp::Tags => &[
            "add not an array",
            "tag not a string",
            "tag of 255 characters",
        ][..],
        ProfileOp::Reidentify => &[
            "no new_id",
            "new_id not a string or integer",
            "new_id of 255 characters",
        ][..],
        ProfileOp::Unsubscribe | ProfileOp::Resubscribe | ProfileOp::Delete => &[][..],
    });
    debug_assert!(all.iter().all(|m| PROFILE_MUTATIONS.contains(m)));
    all
}

/// `users/*` bodies with the operation they are for: three in four valid, the rest one
/// mutation away from valid.
pub fn profile_case() -> BoxedStrategy<(u8, Case)> {
    let valid = (0u8..7, any::<bool>()).prop_flat_map(|(op, pretty)| {
        valid_profile_body(op).prop_map(move |body| (op, Case::valid(body, pretty)))
    });
    let mutated = (0u8..7).prop_flat_map(|op| {
        (
            valid_profile_body(op),
            select(profile_mutations(op)),
            any::<u8>(),
        )
            .prop_map(move |(body, mutation, n)| {
                let case = mutate_profile(op, body, mutation, n)
                    .unwrap_or_else(|| panic!("{mutation} applies to users/{op}"));
                (op, case)
            })
    });
    prop_oneof![3 => valid, 1 => mutated].boxed()
}

/// A value of `strategy` generated from a seed made of `bytes` (their SHA-256): how the
/// generated-body fuzz targets turn libFuzzer's inputs into bodies, each input always the
/// same body. (Proptest's pass-through RNG would let the bytes steer each choice, but once
/// they run out it yields zeros, on which proptest's rejection sampling never returns, and
/// a body with long strings draws hundreds of kilobytes.)
pub fn from_bytes<S: Strategy>(strategy: &S, bytes: &[u8]) -> Option<S::Value> {
    use sha2::{Digest, Sha256};
    let seed = Sha256::digest(bytes);
    let rng = TestRng::from_seed(RngAlgorithm::XorShift, &seed[..16]);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    strategy
        .new_tree(&mut runner)
        .ok()
        .map(|tree| tree.current())
}

/// Bytes of a body with one to four random edits (a byte replaced, inserted or removed):
/// what a fuzzer's mutator makes of a valid body. Some stay valid, most do not.
pub fn havoc(body: BoxedStrategy<Vec<u8>>) -> BoxedStrategy<Vec<u8>> {
    (
        body,
        prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..5),
    )
        .prop_map(|(mut bytes, edits)| {
            for (at, what, byte) in edits {
                let i = at.index(bytes.len() + 1);
                match what {
                    0 if i < bytes.len() => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    _ if i < bytes.len() => {
                        bytes.remove(i);
                    }
                    _ => bytes.push(byte),
                }
            }
            bytes
        })
        .boxed()
}

/// Any JSON document (objects, arrays, scalars), compact or pretty.
pub fn json_document() -> BoxedStrategy<Vec<u8>> {
    (json_value(), any::<bool>())
        .prop_map(|(value, pretty)| {
            if pretty {
                serde_json::to_vec_pretty(&value)
            } else {
                serde_json::to_vec(&value)
            }
            .unwrap_or_else(|e| panic!("a generated value serialises: {e}"))
        })
        .boxed()
}

/// `/v1/batch`-shaped bodies whose calls are valid JSON or carry one problem the strict
/// reading refuses (a duplicate key, a NUL, a lone surrogate, nesting past the limit, a
/// number out of range); sometimes the envelope carries one too, and a fifth are edited
/// bytes (mostly broken grammar).
pub fn batch_body() -> BoxedStrategy<Vec<u8>> {
    let item = (0u8..8, json_value()).prop_map(|(kind, value)| {
        let v = serde_json::to_string(&value)
            .unwrap_or_else(|e| panic!("a generated value serialises: {e}"));
        match kind {
            0 => format!(r#"{{"a":{v},"a":{v}}}"#),
            1 => format!(r#"{{"v":{v},"s":"x\u0000"}}"#),
            2 => format!(r#"{{"s":"\ud800","v":{v}}}"#),
            3 => format!(r#"{{"d":{}{v}{}}}"#, "[".repeat(70), "]".repeat(70)),
            4 => format!(r#"[{v},1e9999999]"#),
            _ => v,
        }
    });
    let body = (prop::collection::vec(item, 0..6), 0u8..6).prop_map(|(items, envelope)| {
        let context = match envelope {
            0 => r#"{"k":1,"k":2}"#,
            1 => r#""\u0000""#,
            _ => "{}",
        };
        format!(r#"{{"batch":[{}],"context":{context}}}"#, items.join(",")).into_bytes()
    });
    prop_oneof![4 => body.clone().boxed(), 1 => havoc(body.boxed())].boxed()
}

/// Import lines: export lines as `trackd export` writes them, track bodies, and both one
/// mutation away from valid. The flag says whether the line is valid.
pub fn import_line() -> BoxedStrategy<(Vec<u8>, bool)> {
    let export = (
        1i64..1_000_000,
        who(),
        bounded_text(254),
        object_field(),
        prop::option::of(text(0, 20)),
        // Received before the properties' NOW (an export is of the past); events may have
        // happened at any time.
        (
            0i64..4_000_000_000,
            0i64..super::NOW.as_micros() / 1_000_000,
        ),
    )
        .prop_map(|(id, who, name, data, source, (created, received))| {
            let time = |secs: i64| crate::Timestamp::from_micros(secs * 1_000_000).to_rfc3339();
            let user = fields([
                (
                    "id",
                    who.get("id").map_or(Value::Null, |id| match id {
                        Value::String(s) if s.is_empty() => Value::Null,
                        other => Value::String(id_text(other)),
                    }),
                ),
                ("email", who.get("email").cloned().unwrap_or(Value::Null)),
            ]);
            let line = fields([
                ("id", Value::from(id)),
                ("user", Value::Object(user)),
                (
                    "event_key",
                    Value::String(crate::EventKey::of(&name).as_str().to_owned()),
                ),
                ("event_name", Value::String(name)),
                ("data", data.unwrap_or(Value::Null)),
                ("source", source.map_or(Value::Null, Value::String)),
                ("created_at", Value::String(time(created))),
                ("received_at", Value::String(time(received))),
            ]);
            Value::Object(line)
        })
        .boxed();
    let broken_export = (export.clone(), 0u8..5).prop_map(|(mut line, how)| {
        if let Value::Object(map) = &mut line {
            match how {
                0 => {
                    map.insert("user".into(), Value::from(1));
                }
                1 => {
                    map.insert("received_at".into(), Value::String("soon".into()));
                }
                2 => {
                    map.insert("event_name".into(), Value::String(String::new()));
                }
                3 => {
                    // A day past NOW: in the future.
                    let later =
                        crate::Timestamp::from_micros(super::NOW.as_micros() + 86_400 * 1_000_000);
                    map.insert("received_at".into(), Value::String(later.to_rfc3339()));
                }
                _ => {
                    map.insert("data".into(), Value::Array(Vec::new()));
                }
            }
        }
        line
    });
    let serialise = |v: &Value| serde_json::to_vec(v).unwrap_or_default();
    prop_oneof![
        3 => export.prop_map(move |l| (serialise(&l), true)),
        1 => broken_export.prop_map(move |l| (serialise(&l), false)),
        4 => track_case().prop_map(|case| (case.bytes(), case.is_valid())),
    ]
    .boxed()
}

/// Read-route query strings: most valid for `GET /events` (each known parameter at most
/// once, `since` before `until`, a limit from 1 to 1000, a cursor the server handed out),
/// the rest one mutation away. The flag says whether `GET /events` must accept it.
pub fn read_query() -> BoxedStrategy<(String, bool)> {
    let cursor =
        (any::<i64>(), any::<i64>(), any::<i64>()).prop_map(|(c, i, m)| crate::read::Cursor {
            created_at: c,
            id: i,
            max_id: m,
        });
    let valid = (
        prop::option::of("[A-Za-z0-9 _.:-]{1,20}"),
        prop::option::of("[A-Za-z0-9_.@-]{1,20}"),
        prop::option::of((0i64..4_000_000_000, 0i64..4_000_000_000, any::<bool>())),
        prop::option::of(1usize..=1000),
        prop::option::of(cursor),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(name, user, range, limit, cursor, order)| {
            let mut pairs: Vec<String> = Vec::new();
            if let Some(name) = name {
                pairs.push(format!("event_name={name}"));
            }
            if let Some(user) = user {
                pairs.push(format!("user_id={user}"));
            }
            if let Some((a, b, iso)) = range {
                // Unix seconds or ISO 8601; the earlier one is `since`.
                let time = |secs: i64| {
                    if iso {
                        crate::Timestamp::from_micros(secs * 1_000_000).to_rfc3339()
                    } else {
                        secs.to_string()
                    }
                };
                pairs.push(format!("since={}", time(a.min(b))));
                pairs.push(format!("until={}", time(a.max(b))));
            }
            if let Some(limit) = limit {
                pairs.push(format!("limit={limit}"));
            }
            if let Some(cursor) = cursor {
                // Sealed as the server would seal it for this very query.
                let plain: Vec<(String, String)> = pairs
                    .iter()
                    .map(|p| {
                        let (k, v) = p.split_once('=').unwrap_or((p, ""));
                        (k.to_owned(), v.to_owned())
                    })
                    .collect();
                let key = super::cursor_key();
                if let Ok(query) =
                    crate::read::EventQuery::parse(super::PROJECT, &plain, None, &key)
                {
                    pairs.push(format!("cursor={}", cursor.seal(&key, &query.scope())));
                }
            }
            if !pairs.is_empty() {
                let n = pairs.len();
                pairs.rotate_left(order.index(n));
            }
            pairs.join("&")
        });
    let broken = (valid.clone(), 0u8..6).prop_map(|(query, how)| {
        let bad = [
            "limit=0",
            "limit=1001",
            "since=soon",
            "colour=red",
            "cursor=not-a-cursor",
            "since=2&until=1",
        ][usize::from(how)];
        let kept: Vec<&str> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .filter(|p| {
                let name = p.split('=').next().unwrap_or("");
                !bad.split('&').any(|b| b.split('=').next() == Some(name))
            })
            .collect();
        let mut parts = kept;
        parts.push(bad);
        parts.join("&")
    });
    prop_oneof![
        3 => valid.prop_map(|q| (q, true)),
        1 => broken.prop_map(|q| (q, false)),
    ]
    .boxed()
}

/// Runs `test` on `cases` inputs of `strategy` (`test` says whether the input was
/// accepted), prints the tally on the process's stderr, where libtest's capture does not
/// hide it, and returns (accepted, refused). Panics when `test` does (with the smallest
/// failing input proptest finds).
pub fn tally<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> bool,
) -> (u32, u32) {
    let accepted = Cell::new(0u32);
    let refused = Cell::new(0u32);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&strategy, |input| {
        let counter = if test(input) { &accepted } else { &refused };
        counter.set(counter.get() + 1);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    let (a, r) = (accepted.get(), refused.get());
    // Straight to the process's stderr: libtest captures eprintln!, not this.
    let _ = writeln!(
        std::io::stderr(),
        "property {name}: {a} of {} inputs accepted ({}%), {r} refused",
        a + r,
        a * 100 / (a + r).max(1)
    );
    (a, r)
}

/// The floor for a generator of mostly valid inputs: at least half accepted, and some
/// (the mutated ones) refused.
#[track_caller]
pub fn mostly_valid((accepted, refused): (u32, u32)) {
    assert!(
        accepted >= refused,
        "only {accepted} of {} inputs accepted",
        accepted + refused
    );
    assert!(refused > 0, "no mutated input was refused");
}
