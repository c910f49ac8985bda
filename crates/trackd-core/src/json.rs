//! Strict JSON: the one parser every request body goes through, and the canonical form.
//!
//! `serde_json` is used for the values (`Value`, with `arbitrary_precision` so a 20-digit
//! integer keeps its digits) and for writing them, but not for reading request bodies: it
//! silently keeps the last of two duplicate keys, accepts `\u0000`, and cannot say *where* a
//! problem is. trackd's contract is that a body that different parsers or stores would read
//! differently is refused with the path of the offending field, so the reader below is strict:
//!
//! - duplicate object keys, `\u0000` (escaped or raw) and lone surrogates are errors;
//! - nesting deeper than the caller's limit is an error (no stack exhaustion);
//! - numbers are kept as written (exact), checked against the JSON grammar.
//!
//! [`canonical`] writes the form the dedup key is computed from: keys sorted at every depth,
//! no whitespace, numbers by exact decimal value (`1`, `1.0` and `10e-1` are equal).

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Number, Value};

/// Where in a body a problem is, as the dotted path clients see in error messages
/// (`data.items[2].name`).
#[derive(Clone, Copy)]
enum Path<'a> {
    Root(&'a str),
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root(name) => f.write_str(name),
            Path::Key(Path::Root(""), key) => f.write_str(key),
            Path::Key(parent, key) => write!(f, "{parent}.{key}"),
            Path::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// A body that is not strict JSON: the path of the problem and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct JsonError {
    /// Dotted path of the offending value (`body` when the document itself is broken).
    pub path: String,
    /// What is wrong, lowercase, no trailing period.
    pub problem: String,
}

/// Parses a whole document that must be a JSON object, as the top level of a request body.
///
/// `root` names the document in error messages: `""` for a request body (paths then read
/// `identity.email`), or a field name for a JSON-encoded form field (`data.price`).
/// `max_depth` counts the nesting of objects and arrays, the outermost object being 1.
pub fn parse_object(
    input: &[u8],
    root: &str,
    max_depth: usize,
) -> Result<Map<String, Value>, JsonError> {
    match parse_value(input, root, max_depth)? {
        Value::Object(map) => Ok(map),
        _ => Err(JsonError {
            path: root_name(root).to_owned(),
            problem: "must be a JSON object".to_owned(),
        }),
    }
}

/// Parses a whole document holding any JSON value (see [`parse_object`]).
pub fn parse_value(input: &[u8], root: &str, max_depth: usize) -> Result<Value, JsonError> {
    parse(input, root, max_depth, None)
}

/// What a batch body's items got wrong, by item index: the first problem of each.
pub type ItemFaults = BTreeMap<usize, JsonError>;

/// Parses a request body that is an object holding independent calls in the array under
/// `items` (Segment's `batch`), so that one bad call does not refuse the others: a problem
/// in a value inside `items[i]` (a duplicate key, a NUL, a lone surrogate, nesting past
/// `max_depth`, a number out of range) is returned against `i`, the first one per item,
/// and the parse goes on; that item's parsed value is then not what was sent and must not
/// be used. Invalid UTF-8, a syntax error anywhere, and any problem outside the items
/// refuse the whole body, as [`parse_object`] does.
pub fn parse_object_with_items(
    input: &[u8],
    root: &str,
    max_depth: usize,
    items: &str,
) -> Result<(Map<String, Value>, ItemFaults), JsonError> {
    let mut faults = ItemFaults::new();
    match parse(input, root, max_depth, Some((items, &mut faults)))? {
        Value::Object(map) => Ok((map, faults)),
        _ => Err(JsonError {
            path: root_name(root).to_owned(),
            problem: "must be a JSON object".to_owned(),
        }),
    }
}

fn parse(
    input: &[u8],
    root: &str,
    max_depth: usize,
    items: Option<(&str, &mut ItemFaults)>,
) -> Result<Value, JsonError> {
    let text = std::str::from_utf8(input).map_err(|e| JsonError {
        path: root_name(root).to_owned(),
        problem: format!("invalid UTF-8 at byte {}", e.valid_up_to()),
    })?;
    let mut parser = Parser {
        src: text.as_bytes(),
        text,
        pos: 0,
        max_depth,
        items,
    };
    parser.skip_ws();
    if parser.pos == parser.src.len() {
        return Err(JsonError {
            path: root_name(root).to_owned(),
            problem: "empty, expected a JSON object".to_owned(),
        });
    }
    let value = parser.value(&Path::Root(root), 0)?;
    parser.skip_ws();
    if parser.pos != parser.src.len() {
        return Err(parser.syntax(
            &Path::Root(root),
            "trailing characters after the JSON value",
        ));
    }
    Ok(value)
}

fn root_name(root: &str) -> &str {
    if root.is_empty() {
        "body"
    } else {
        root
    }
}

struct Parser<'s, 'f> {
    src: &'s [u8],
    text: &'s str,
    pos: usize,
    max_depth: usize,
    /// A tolerant parse's items key and the faults found in its items so far.
    items: Option<(&'f str, &'f mut ItemFaults)>,
}

impl Parser<'_, '_> {
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.src.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn error(&self, path: &Path<'_>, problem: impl Into<String>) -> JsonError {
        let path = match path {
            Path::Root(name) => root_name(name).to_owned(),
            other => other.to_string(),
        };
        JsonError {
            path,
            problem: problem.into(),
        }
    }

    /// A syntax error: reported against the document, with the byte offset, since the path
    /// of a value that does not parse is not always meaningful.
    fn syntax(&self, path: &Path<'_>, what: &str) -> JsonError {
        let mut root = path;
        while let Path::Key(parent, _) | Path::Index(parent, _) = root {
            root = parent;
        }
        self.error(root, format!("invalid JSON: {what} at byte {}", self.pos))
    }

    /// A problem with one value (not with the grammar): refuses the document, except inside
    /// an item of a tolerant parse, where it is recorded against the item (the first one
    /// counts) and the parse goes on with a stand-in value.
    fn fault(&mut self, path: &Path<'_>, problem: impl Into<String>) -> Result<(), JsonError> {
        let e = self.error(path, problem);
        let Some((key, _)) = &self.items else {
            return Err(e);
        };
        match item_index(path, key) {
            Some(i) => {
                if let Some((_, faults)) = self.items.as_mut() {
                    faults.entry(i).or_insert(e);
                }
                Ok(())
            }
            None => Err(e),
        }
    }

    fn value(&mut self, path: &Path<'_>, depth: usize) -> Result<Value, JsonError> {
        match self.peek() {
            Some(b'{' | b'[') if depth + 1 > self.max_depth => {
                self.fault(
                    path,
                    format!("nested deeper than {} levels", self.max_depth),
                )?;
                self.skip_value(path)?;
                Ok(Value::Null)
            }
            Some(b'{') => self.object(path, depth + 1).map(Value::Object),
            Some(b'[') => self.array(path, depth + 1).map(Value::Array),
            Some(b'"') => self.string(path).map(Value::String),
            Some(b'-' | b'0'..=b'9') => self.number(path).map(Value::Number),
            Some(b't') => self.literal("true", Value::Bool(true), path),
            Some(b'f') => self.literal("false", Value::Bool(false), path),
            Some(b'n') => self.literal("null", Value::Null, path),
            Some(_) => Err(self.syntax(path, "expected a value")),
            None => Err(self.syntax(path, "unexpected end of input")),
        }
    }

    fn literal(&mut self, word: &str, value: Value, path: &Path<'_>) -> Result<Value, JsonError> {
        if self.src[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.syntax(path, "expected a value"))
        }
    }

    /// Checks the grammar of one value without building it or recursing: the value of an
    /// item nested past the limit, in a tolerant parse. Open containers are a stack of bytes.
    fn skip_value(&mut self, path: &Path<'_>) -> Result<(), JsonError> {
        let mut open: Vec<u8> = Vec::new();
        loop {
            self.skip_ws();
            match self.peek() {
                Some(b'{') => {
                    self.pos += 1;
                    self.skip_ws();
                    if self.peek() == Some(b'}') {
                        self.pos += 1;
                    } else {
                        open.push(b'{');
                        self.key(path)?;
                        continue;
                    }
                }
                Some(b'[') => {
                    self.pos += 1;
                    self.skip_ws();
                    if self.peek() == Some(b']') {
                        self.pos += 1;
                    } else {
                        open.push(b'[');
                        continue;
                    }
                }
                Some(b'"') => {
                    self.string(path)?;
                }
                Some(b'-' | b'0'..=b'9') => {
                    self.number(path)?;
                }
                Some(b't') => {
                    self.literal("true", Value::Null, path)?;
                }
                Some(b'f') => {
                    self.literal("false", Value::Null, path)?;
                }
                Some(b'n') => {
                    self.literal("null", Value::Null, path)?;
                }
                Some(_) => return Err(self.syntax(path, "expected a value")),
                None => return Err(self.syntax(path, "unexpected end of input")),
            }
            // After a value: close what ends here, up to the next one.
            loop {
                self.skip_ws();
                let Some(&container) = open.last() else {
                    return Ok(());
                };
                match (container, self.peek()) {
                    (_, Some(b',')) => {
                        self.pos += 1;
                        if container == b'{' {
                            self.key(path)?;
                        }
                        break;
                    }
                    (b'{', Some(b'}')) | (b'[', Some(b']')) => {
                        self.pos += 1;
                        open.pop();
                    }
                    (b'{', _) => return Err(self.syntax(path, "expected ',' or '}'")),
                    _ => return Err(self.syntax(path, "expected ',' or ']'")),
                }
            }
        }
    }

    /// An object's key and its ':' (for [`Self::skip_value`]).
    fn key(&mut self, path: &Path<'_>) -> Result<(), JsonError> {
        self.skip_ws();
        if self.peek() != Some(b'"') {
            return Err(self.syntax(path, "expected a string key"));
        }
        self.string(path)?;
        self.skip_ws();
        if self.peek() != Some(b':') {
            return Err(self.syntax(path, "expected ':'"));
        }
        self.pos += 1;
        Ok(())
    }

    fn object(&mut self, path: &Path<'_>, depth: usize) -> Result<Map<String, Value>, JsonError> {
        self.pos += 1; // '{'
        let mut map = Map::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(map);
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.syntax(path, "expected a string key"));
            }
            let key = self.string(path)?;
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(self.syntax(path, "expected ':'"));
            }
            self.pos += 1;
            self.skip_ws();
            let child = Path::Key(path, &key);
            let value = self.value(&child, depth)?;
            if map.contains_key(&key) {
                // Tolerated only inside an item, which is then refused: the first is kept.
                self.fault(&child, "duplicate key")?;
            } else {
                map.insert(key, value);
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(map);
                }
                _ => return Err(self.syntax(path, "expected ',' or '}'")),
            }
        }
    }

    fn array(&mut self, path: &Path<'_>, depth: usize) -> Result<Vec<Value>, JsonError> {
        self.pos += 1; // '['
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(items);
        }
        loop {
            self.skip_ws();
            let child = Path::Index(path, items.len());
            items.push(self.value(&child, depth)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(items);
                }
                _ => return Err(self.syntax(path, "expected ',' or ']'")),
            }
        }
    }

    fn string(&mut self, path: &Path<'_>) -> Result<String, JsonError> {
        self.pos += 1; // opening quote
        let start = self.pos;
        // Fast path: no escapes. The input is valid UTF-8 and '"' / '\\' are ASCII, so any
        // run between them is a valid str slice.
        while let Some(&b) = self.src.get(self.pos) {
            match b {
                b'"' => {
                    let s = &self.text[start..self.pos];
                    self.pos += 1;
                    return Ok(s.to_owned());
                }
                b'\\' => break,
                0 => {
                    self.fault(path, "contains a NUL character (\\u0000)")?;
                    self.pos += 1;
                }
                0x01..=0x1f => return Err(self.syntax(path, "control character in string")),
                _ => self.pos += 1,
            }
        }
        let mut out = String::from(&self.text[start..self.pos]);
        loop {
            let Some(&b) = self.src.get(self.pos) else {
                return Err(self.syntax(path, "unterminated string"));
            };
            match b {
                b'"' => {
                    self.pos += 1;
                    return Ok(out);
                }
                b'\\' => {
                    self.pos += 1;
                    let Some(&esc) = self.src.get(self.pos) else {
                        return Err(self.syntax(path, "unterminated string"));
                    };
                    self.pos += 1;
                    match esc {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => out.push(self.unicode_escape(path)?),
                        _ => return Err(self.syntax(path, "invalid escape")),
                    }
                }
                0 => {
                    self.fault(path, "contains a NUL character (\\u0000)")?;
                    out.push(char::REPLACEMENT_CHARACTER);
                    self.pos += 1;
                }
                0x01..=0x1f => return Err(self.syntax(path, "control character in string")),
                _ => {
                    // Copy one whole UTF-8 character.
                    let ch_len = utf8_len(b);
                    out.push_str(&self.text[self.pos..self.pos + ch_len]);
                    self.pos += ch_len;
                }
            }
        }
    }

    fn hex4(&mut self, path: &Path<'_>) -> Result<u32, JsonError> {
        let digits = self
            .src
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.syntax(path, "unterminated \\u escape"))?;
        let mut v = 0u32;
        for &d in digits {
            let n = (d as char)
                .to_digit(16)
                .ok_or_else(|| self.syntax(path, "invalid \\u escape"))?;
            v = v * 16 + n;
        }
        self.pos += 4;
        Ok(v)
    }

    fn unicode_escape(&mut self, path: &Path<'_>) -> Result<char, JsonError> {
        const LONE: &str = "contains a lone surrogate";
        let first = self.hex4(path)?;
        let code = match first {
            0 => {
                self.fault(path, "contains a NUL character (\\u0000)")?;
                return Ok(char::REPLACEMENT_CHARACTER);
            }
            0xD800..=0xDBFF => {
                if self.src.get(self.pos..self.pos + 2) != Some(b"\\u") {
                    self.fault(path, LONE)?;
                    return Ok(char::REPLACEMENT_CHARACTER);
                }
                self.pos += 2;
                let second = self.hex4(path)?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    self.fault(path, LONE)?;
                    return Ok(char::REPLACEMENT_CHARACTER);
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => {
                self.fault(path, LONE)?;
                return Ok(char::REPLACEMENT_CHARACTER);
            }
            other => other,
        };
        match char::from_u32(code) {
            Some(c) => Ok(c),
            None => {
                self.fault(path, LONE)?;
                Ok(char::REPLACEMENT_CHARACTER)
            }
        }
    }

    fn number(&mut self, path: &Path<'_>) -> Result<Number, JsonError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.syntax(path, "invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.syntax(path, "invalid number"));
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.syntax(path, "invalid number"));
            }
            self.digits();
        }
        let text = &self.text[start..self.pos];
        // With `arbitrary_precision` serde_json keeps the text as written.
        match DecimalParts::of(text).and_then(|_| text.parse::<Number>().ok()) {
            Some(n) => Ok(n),
            None => {
                self.fault(path, "number out of range")?;
                Ok(Number::from(0))
            }
        }
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }
}

/// `Some(i)` when `path` is inside `<items>[i]` of the document (its two outermost steps).
fn item_index(path: &Path<'_>, items: &str) -> Option<usize> {
    let mut child: Option<&Path<'_>> = None;
    let mut step = path;
    loop {
        match step {
            Path::Root(_) => return None,
            Path::Key(Path::Root(_), key) => {
                return match child {
                    Some(Path::Index(_, i)) if *key == items => Some(*i),
                    _ => None,
                }
            }
            Path::Key(parent, _) | Path::Index(parent, _) => {
                child = Some(step);
                step = parent;
            }
        }
    }
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

/// A JSON number as an exact decimal: `-`? `digits` × 10^`exponent`, with no leading or
/// trailing zeros in `digits` (zero is the empty digit string, never negative).
#[derive(Debug, PartialEq, Eq)]
struct DecimalParts<'a> {
    negative: bool,
    int: &'a str,
    frac: &'a str,
    exponent: i64,
}

/// Exponents past this are refused: they say nothing a real event needs and would make the
/// canonical form of one short number arbitrarily long.
const MAX_EXPONENT: i64 = 1_000_000;

impl<'a> DecimalParts<'a> {
    /// Splits a number already checked against the JSON grammar; `None` when its exponent
    /// is out of range.
    fn of(text: &'a str) -> Option<Self> {
        let (negative, rest) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (mantissa, exponent) = match rest.find(['e', 'E']) {
            Some(i) => {
                let exp = &rest[i + 1..];
                let exp = exp.strip_prefix('+').unwrap_or(exp);
                let value: i64 = exp.parse().ok()?;
                if value.abs() > MAX_EXPONENT {
                    return None;
                }
                (&rest[..i], value)
            }
            None => (rest, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        Some(DecimalParts {
            negative,
            int,
            frac,
            exponent,
        })
    }

    /// Writes `[-]D+eE` with D free of leading and trailing zeros; zero is `0`.
    fn write_canonical(&self, out: &mut String) {
        let digits: String = self.int.chars().chain(self.frac.chars()).collect();
        let trimmed = digits.trim_start_matches('0');
        let significant = trimmed.trim_end_matches('0');
        if significant.is_empty() {
            out.push('0');
            return;
        }
        let trailing = (trimmed.len() - significant.len()) as i64;
        let exponent = self.exponent - self.frac.len() as i64 + trailing;
        if self.negative {
            out.push('-');
        }
        out.push_str(significant);
        out.push('e');
        out.push_str(&exponent.to_string());
    }
}

/// Appends the canonical form of `value` to `out`: object keys sorted (by code point) at every
/// depth, arrays in order, no whitespace, strings as serde_json escapes them, numbers by exact
/// decimal value.
pub fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => canonical_number(n, out),
        Value::String(s) => canonical_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => canonical_object(map, out),
    }
}

/// [`canonical`] for an object held as a map.
pub fn canonical_object(map: &Map<String, Value>, out: &mut String) {
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.push('{');
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        canonical_string(key, out);
        out.push(':');
        canonical(value, out);
    }
    out.push('}');
}

/// Appends the canonical form of a number (see [`canonical`]).
pub fn canonical_number(n: &Number, out: &mut String) {
    let text = n.to_string();
    match DecimalParts::of(&text) {
        Some(parts) => parts.write_canonical(out),
        // Unreachable for numbers from this module's parser; any other number is written
        // as serde_json writes it.
        None => out.push_str(&text),
    }
}

fn canonical_string(s: &str, out: &mut String) {
    // serde_json's escaping of a &str cannot fail.
    match serde_json::to_string(s) {
        Ok(escaped) => out.push_str(&escaped),
        Err(_) => out.push_str("\"\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Map<String, Value>, JsonError> {
        parse_object(s.as_bytes(), "", 64)
    }

    fn err(s: &str) -> String {
        parse(s).expect_err("should be refused").to_string()
    }

    fn canon(s: &str) -> String {
        let mut out = String::new();
        canonical(&parse_value(s.as_bytes(), "", 64).expect("valid"), &mut out);
        out
    }

    #[test]
    fn twenty_digit_integer_keeps_its_digits() {
        let map = parse(r#"{"n":12345678901234567890123}"#).expect("valid");
        assert_eq!(map["n"].to_string(), "12345678901234567890123");
        assert_eq!(
            serde_json::to_string(&map).expect("serialises"),
            r#"{"n":12345678901234567890123}"#
        );
    }

    #[test]
    fn duplicate_keys_are_refused_with_their_path() {
        assert_eq!(err(r#"{"a":1,"a":2}"#), "a: duplicate key");
        assert_eq!(
            err(r#"{"data":{"x":[{"k":1,"k":1}]}}"#),
            "data.x[0].k: duplicate key"
        );
    }

    #[test]
    fn nul_is_refused_escaped_or_raw() {
        assert_eq!(
            err(r#"{"data":{"s":"a\u0000b"}}"#),
            "data.s: contains a NUL character (\\u0000)"
        );
        assert_eq!(
            parse_object(b"{\"s\":\"a\0\"}", "", 64)
                .expect_err("refused")
                .to_string(),
            "s: contains a NUL character (\\u0000)"
        );
        assert_eq!(
            err(r#"{"a\u0000":1}"#),
            "body: contains a NUL character (\\u0000)"
        );
    }

    #[test]
    fn lone_surrogates_are_refused_and_pairs_decoded() {
        assert_eq!(err(r#"{"s":"\ud800"}"#), "s: contains a lone surrogate");
        assert_eq!(err(r#"{"s":"\udc00x"}"#), "s: contains a lone surrogate");
        assert_eq!(
            err(r#"{"s":"\ud800\u0041"}"#),
            "s: contains a lone surrogate"
        );
        let map = parse(r#"{"s":"\ud83d\ude00 \u00e9\n"}"#).expect("valid");
        assert_eq!(map["s"], "😀 é\n");
    }

    #[test]
    fn depth_limit_counts_the_outer_object() {
        let ok = format!("{}{}", "[".repeat(63), "]".repeat(63));
        assert!(parse(&format!(r#"{{"a":{ok}}}"#)).is_ok());
        let deep = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert_eq!(
            err(&format!(r#"{{"a":{deep}}}"#)),
            format!("a{}: nested deeper than 64 levels", "[0]".repeat(63))
        );
        // Far past the limit it still fails cleanly instead of exhausting the stack.
        let very = format!("{{\"a\":{}", "[".repeat(1_000_000));
        assert!(parse(&very).is_err());
    }

    fn items(s: &str) -> Result<(Map<String, Value>, Vec<String>), String> {
        parse_object_with_items(s.as_bytes(), "", 64, "batch")
            .map(|(map, faults)| {
                let faults = faults
                    .into_iter()
                    .map(|(i, e)| format!("{i} {e}"))
                    .collect();
                (map, faults)
            })
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_tolerant_parse_refuses_items_not_the_body() {
        let deep = format!("{}1{}", "[".repeat(70), "]".repeat(70));
        let body = format!(
            r#"{{"batch":[{{"a":1}},{{"k":1,"k":2}},{{"s":"x\u0000"}},{{"s":"\ud83d"}},
               {{"p":{{"q":"\udc00"}}}},{{"d":{deep}}},{{"n":1e9999999}},{{"s":"\ud83d\u0041"}},
               {{"ok":"\ud83d\ude00","d2":{{"k":1,"k":2}},"then":"\u0000"}}],"context":{{}}}}"#
        );
        let (map, faults) = items(&body).expect("a batch");
        assert_eq!(
            faults,
            [
                "1 batch[1].k: duplicate key",
                "2 batch[2].s: contains a NUL character (\\u0000)",
                "3 batch[3].s: contains a lone surrogate",
                "4 batch[4].p.q: contains a lone surrogate",
                &format!(
                    "5 batch[5].d{}: nested deeper than 64 levels",
                    "[0]".repeat(61)
                ),
                "6 batch[6].n: number out of range",
                "7 batch[7].s: contains a lone surrogate",
                // Only the first problem of an item is kept.
                "8 batch[8].d2.k: duplicate key",
            ]
        );
        let batch = map["batch"].as_array().expect("array");
        assert_eq!(batch.len(), 9);
        assert_eq!(batch[0], serde_json::json!({"a": 1}));
        assert_eq!(batch[8]["ok"], "\u{1f600}");
        assert!(map.contains_key("context"));
        // A raw NUL byte inside an item is a fault of that item too.
        let (_, faults) = items("{\"batch\":[{\"s\":\"a\0b\"},{}]}").expect("a batch");
        assert_eq!(faults, ["0 batch[0].s: contains a NUL character (\\u0000)"]);
    }

    #[test]
    fn a_tolerant_parse_still_refuses_the_body_for_what_is_not_in_an_item() {
        // Outside the items: the envelope, the items array itself, another array.
        assert_eq!(
            items(r#"{"batch":[],"batch":[]}"#).expect_err("refused"),
            "batch: duplicate key"
        );
        assert_eq!(
            items(r#"{"batch":[{}],"context":{"s":"\u0000"}}"#).expect_err("refused"),
            "context.s: contains a NUL character (\\u0000)"
        );
        assert_eq!(
            items(r#"{"other":[{"k":1,"k":2}],"batch":[]}"#).expect_err("refused"),
            "other[0].k: duplicate key"
        );
        assert_eq!(
            items(r#"{"nested":{"batch":[{"k":1,"k":2}]}}"#).expect_err("refused"),
            "nested.batch[0].k: duplicate key"
        );
        // Broken grammar anywhere, also inside a value skipped for its depth.
        assert!(items(r#"{"batch":[{"a":1,}]}"#)
            .expect_err("refused")
            .starts_with("body: invalid JSON"));
        let broken = format!(
            "{{\"batch\":[{{\"d\":{}1 2{}}}]}}",
            "[".repeat(70),
            "]".repeat(70)
        );
        assert!(items(&broken)
            .expect_err("refused")
            .starts_with("body: invalid JSON: expected ',' or ']'"));
        let unclosed = format!("{{\"batch\":[{{\"d\":{}", "[".repeat(1_000_000));
        assert!(items(&unclosed)
            .expect_err("refused")
            .starts_with("body: invalid JSON: unexpected end of input"));
        let invalid_utf8 = parse_object_with_items(b"{\"batch\":[\"\xff\"]}", "", 64, "batch");
        assert_eq!(
            invalid_utf8.expect_err("refused").to_string(),
            "body: invalid UTF-8 at byte 11"
        );
        // The strict parse of the same bodies refuses them whole, as before.
        assert_eq!(
            err(r#"{"batch":[{"a":1},{"k":1,"k":2}]}"#),
            "batch[1].k: duplicate key"
        );
    }

    #[test]
    fn syntax_errors_name_the_body_and_offset() {
        assert_eq!(
            err("{"),
            "body: invalid JSON: expected a string key at byte 1"
        );
        assert_eq!(err(""), "body: empty, expected a JSON object");
        assert_eq!(err("[]"), "body: must be a JSON object");
        assert_eq!(
            err(r#"{"a":1} x"#),
            "body: invalid JSON: trailing characters after the JSON value at byte 8"
        );
        assert_eq!(
            err(r#"{"a":01}"#),
            "body: invalid JSON: expected ',' or '}' at byte 6"
        );
        assert_eq!(
            parse_object(b"{\"a\":\"\xff\"}", "", 64)
                .expect_err("refused")
                .to_string(),
            "body: invalid UTF-8 at byte 6"
        );
        assert_eq!(
            parse_object(b"[1", "data", 64)
                .expect_err("refused")
                .to_string(),
            "data: invalid JSON: expected ',' or ']' at byte 2"
        );
    }

    #[test]
    fn huge_exponents_are_refused() {
        assert_eq!(err(r#"{"n":1e99999999}"#), "n: number out of range");
        assert!(parse(r#"{"n":1e400}"#).is_ok());
    }

    #[test]
    fn canonical_sorts_keys_at_every_depth_and_keeps_array_order() {
        assert_eq!(
            canon(r#"{ "b": {"y":1, "x":[3, 1, {"q":0,"p":null}]}, "a": "s" }"#),
            r#"{"a":"s","b":{"x":[3e0,1e0,{"p":null,"q":0}],"y":1e0}}"#
        );
    }

    #[test]
    fn canonical_numbers_are_equal_by_value() {
        for same in ["1", "1.0", "1e0", "10e-1", "0.1e1", "1.000E+0"] {
            assert_eq!(canon(same), "1e0", "{same}");
        }
        for zero in ["0", "-0", "0.0", "0e10", "-0.000"] {
            assert_eq!(canon(zero), "0", "{zero}");
        }
        assert_eq!(canon("1500"), "15e2");
        assert_eq!(canon("-0.0025"), "-25e-4");
        assert_ne!(canon("12345678901234567890"), canon("12345678901234567891"));
    }
}
