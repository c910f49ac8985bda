//! The forms a body's fields arrive in, made one: form pairs in Rails bracket notation
//! ([`form_object`]) and object or array fields sent as strings holding JSON
//! ([`decode_json_fields`]). After these, every body is a plain JSON object and the
//! validators see one shape whatever the client sent.
//!
//! Vero runs on Rails, so its clients send forms the way Rails reads them: `data[plan]=pro`,
//! `identity[id]=7`, `add[]=vip`, `channels[][type]=push`. PHP's `http_build_query` writes
//! lists with indexes (`add[0]=vip`), which are read as lists for the list fields. n8n and
//! Vero's Postman collection send the same fields as JSON-encoded strings instead. No part
//! of any of these is ever dropped: what cannot be read is a 400 naming the field.

use serde_json::{Map, Value};

use crate::error::FieldError;
use crate::json;

/// The fields that hold objects.
const OBJECT_FIELDS: &[&str] = &["identity", "data", "extras", "changes"];
/// The fields that hold lists (`channels` may also be one object: a list of one).
const LIST_FIELDS: &[&str] = &["add", "remove", "channels"];

/// Whether `field` is one of the object or list fields that may arrive as JSON strings.
pub fn is_structured_field(field: &str) -> bool {
    OBJECT_FIELDS.contains(&field) || LIST_FIELDS.contains(&field)
}

/// One segment of a bracketed field name: `[key]` or `[]`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Push,
}

/// Splits `data[a][]` into `data` and its segments. `None` for a name that is not well
/// formed (an unclosed bracket, text after a closing bracket, an empty head).
fn split_name(name: &str) -> Option<(&str, Vec<Segment>)> {
    let Some(open) = name.find('[') else {
        return Some((name, Vec::new()));
    };
    let head = &name[..open];
    if head.is_empty() {
        return None;
    }
    let mut rest = &name[open..];
    let mut segments = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let close = inner.find(']')?;
        let key = &inner[..close];
        if key.contains('[') {
            return None;
        }
        segments.push(if key.is_empty() {
            Segment::Push
        } else {
            Segment::Key(key.to_owned())
        });
        rest = &inner[close + 1..];
    }
    Some((head, segments))
}

/// Builds a body from decoded form pairs (urlencoded or multipart), reading bracket
/// notation as Rails does. Plain values stay strings; the structured fields are decoded
/// afterwards by [`decode_json_fields`]. `max_depth` bounds the nesting (the body is
/// level 1). A name given twice, a value that is both a string and an object, or a name
/// that is not well formed is a 400 naming it.
pub fn form_object(
    pairs: impl IntoIterator<Item = (String, String)>,
    max_depth: usize,
) -> Result<Map<String, Value>, FieldError> {
    let mut body = Map::new();
    for (name, value) in pairs {
        if name.contains('\0') {
            return Err(FieldError::new(
                "body",
                "a form field name contains a NUL character (\\u0000)",
            ));
        }
        if value.contains('\0') {
            return Err(FieldError::new(
                printable(&name),
                "contains a NUL character (\\u0000)",
            ));
        }
        let Some((head, segments)) = split_name(&name) else {
            return Err(FieldError::new(
                printable(&name),
                "not a well-formed form field name (expected name, name[key] or name[])",
            ));
        };
        if segments.len() + 1 > max_depth {
            return Err(FieldError::new(
                head,
                format!("nested deeper than {max_depth} levels"),
            ));
        }
        if segments.is_empty() {
            if body.contains_key(head) {
                return Err(FieldError::new(head, "duplicate key"));
            }
            body.insert(head.to_owned(), Value::String(value));
            continue;
        }
        let slot = body
            .entry(head.to_owned())
            .or_insert_with(|| empty_for(&segments[0]));
        insert(slot, &segments, value, head)?;
    }
    // PHP writes lists with indexes: `add[0]=a&add[1]=b` is the list [a, b].
    for field in LIST_FIELDS {
        if let Some(value) = body.get_mut(*field) {
            indexed_to_list(value);
        }
    }
    Ok(body)
}

/// What a segment opens: an object for `[key]`, a list for `[]`.
fn empty_for(segment: &Segment) -> Value {
    match segment {
        Segment::Key(_) => Value::Object(Map::new()),
        Segment::Push => Value::Array(Vec::new()),
    }
}

/// A field name as it may appear in a message: control characters escaped, at most 100
/// characters.
fn printable(name: &str) -> String {
    name.chars()
        .take(100)
        .flat_map(char::escape_debug)
        .collect()
}

/// Puts `value` at `segments` inside `slot`, Rails' way: `[]` appends; `[][k]` adds `k` to
/// the list's last object unless it has `k` already, else starts a new object.
fn insert(
    slot: &mut Value,
    segments: &[Segment],
    value: String,
    path: &str,
) -> Result<(), FieldError> {
    let Some((first, rest)) = segments.split_first() else {
        return Err(FieldError::new(path, "duplicate key"));
    };
    match (slot, first) {
        (Value::Object(map), Segment::Key(key)) => {
            let child_path = format!("{path}.{}", printable(key));
            if rest.is_empty() {
                if map.contains_key(key) {
                    return Err(FieldError::new(
                        child_path,
                        "given more than once (or both as a value and as an object)",
                    ));
                }
                map.insert(key.clone(), Value::String(value));
                return Ok(());
            }
            let child = map
                .entry(key.clone())
                .or_insert_with(|| empty_for(&rest[0]));
            insert(child, rest, value, &child_path)
        }
        (Value::Array(items), Segment::Push) => {
            let child_path = format!("{path}[{}]", items.len());
            if rest.is_empty() {
                items.push(Value::String(value));
                return Ok(());
            }
            let reuse = matches!(
                items.last(),
                Some(Value::Object(last)) if matches!(&rest[0], Segment::Key(_)) && !has_path(last, rest)
            );
            if !reuse {
                items.push(empty_for(&rest[0]));
            }
            let index = items.len() - 1;
            let child_path = if reuse {
                format!("{path}[{index}]")
            } else {
                child_path
            };
            match items.last_mut() {
                Some(last) => insert(last, rest, value, &child_path),
                None => Err(FieldError::new(path, "duplicate key")),
            }
        }
        (Value::Object(_), Segment::Push) => Err(FieldError::new(
            path,
            "given both as an object (name[key]) and as a list (name[])",
        )),
        (Value::Array(_), Segment::Key(_)) => Err(FieldError::new(
            path,
            "given both as a list (name[]) and as an object (name[key])",
        )),
        (_, _) => Err(FieldError::new(
            path,
            "given both as a value and in bracket notation",
        )),
    }
}

/// Whether `map` holds something at the key path `segments` (Rails'
/// `params_hash_has_key?`): a later `[][a]` then starts a new object.
fn has_path(map: &Map<String, Value>, segments: &[Segment]) -> bool {
    let mut current = map;
    for (i, segment) in segments.iter().enumerate() {
        let Segment::Key(key) = segment else {
            return true;
        };
        match current.get(key) {
            None => return false,
            Some(Value::Object(inner)) if i + 1 < segments.len() => current = inner,
            Some(_) => return true,
        }
    }
    true
}

/// An object whose keys are all list indexes (`0`, `1`, …) becomes the list of its values
/// in index order (`channels[0][type]` makes a list of objects).
fn indexed_to_list(value: &mut Value) {
    let Value::Object(map) = value else {
        return;
    };
    if map.is_empty() || !map.keys().all(|k| is_index(k)) {
        return;
    }
    let mut entries: Vec<(u64, Value)> = std::mem::take(map)
        .into_iter()
        .map(|(k, v)| (k.parse().unwrap_or(u64::MAX), v))
        .collect();
    entries.sort_by_key(|(i, _)| *i);
    *value = Value::Array(entries.into_iter().map(|(_, v)| v).collect());
}

fn is_index(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 9
        && key.bytes().all(|b| b.is_ascii_digit())
        && (key == "0" || !key.starts_with('0'))
}

/// Decodes the structured fields (`identity`, `data`, `extras`, `changes`, `add`,
/// `remove`, `channels`) that arrived as strings holding JSON, as if they had been sent as
/// JSON; an empty string is absent. A string that is not strict JSON, or holds JSON of the
/// wrong type, is a 400 naming the field. Nested strings are data and stay strings.
pub fn decode_json_fields(
    body: &mut Map<String, Value>,
    max_depth: usize,
) -> Result<(), FieldError> {
    for (field, value) in body.iter_mut() {
        let Value::String(text) = value else {
            continue;
        };
        let wants = if OBJECT_FIELDS.contains(&field.as_str()) {
            "an object"
        } else if field == "channels" {
            "a list of objects (or one object)"
        } else if LIST_FIELDS.contains(&field.as_str()) {
            "a list of strings"
        } else {
            continue;
        };
        if text.trim().is_empty() {
            *value = Value::Null;
            continue;
        }
        let starts = text.trim_start().as_bytes().first().copied();
        if !matches!(starts, Some(b'{' | b'[' | b'n')) {
            return Err(FieldError::new(
                field.as_str(),
                format!("must be {wants}, or a string holding it as JSON"),
            ));
        }
        // The body is level 1, so the field's own value starts at level 2.
        let decoded = json::parse_value(text.as_bytes(), field, max_depth.saturating_sub(1))?;
        let fits = match &decoded {
            Value::Null => true,
            Value::Object(_) => OBJECT_FIELDS.contains(&field.as_str()) || field == "channels",
            Value::Array(_) => LIST_FIELDS.contains(&field.as_str()),
            _ => false,
        };
        if !fits {
            return Err(FieldError::new(
                field.as_str(),
                format!("must be {wants}; the string holds JSON of another type"),
            ));
        }
        *value = decoded;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn form(pairs: &[(&str, &str)]) -> Result<Value, String> {
        let mut body = form_object(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
            crate::MAX_JSON_DEPTH,
        )
        .map_err(|e| e.to_string())?;
        decode_json_fields(&mut body, crate::MAX_JSON_DEPTH).map_err(|e| e.to_string())?;
        Ok(Value::Object(body))
    }

    #[test]
    fn bracket_notation_builds_objects_and_lists() {
        assert_eq!(
            form(&[
                ("auth_token", "t"),
                ("id", "n8nl-1"),
                ("data[plan]", "pro"),
                ("data[first_name]", "Nina"),
                ("data[address][city]", "Oslo"),
                ("add[]", "vip"),
                ("add[]", "beta"),
            ]),
            Ok(json!({
                "auth_token": "t", "id": "n8nl-1",
                "data": {"plan": "pro", "first_name": "Nina", "address": {"city": "Oslo"}},
                "add": ["vip", "beta"]
            }))
        );
    }

    #[test]
    fn lists_of_objects_follow_rails() {
        assert_eq!(
            form(&[
                ("channels[][type]", "push"),
                ("channels[][address]", "a1"),
                ("channels[][type]", "email"),
                ("channels[][address]", "a2"),
            ]),
            Ok(json!({"channels": [
                {"type": "push", "address": "a1"},
                {"type": "email", "address": "a2"}
            ]}))
        );
    }

    #[test]
    fn indexed_lists_are_lists_for_list_fields_only() {
        assert_eq!(
            form(&[
                ("add[1]", "b"),
                ("add[0]", "a"),
                ("channels[0][type]", "push"),
                ("channels[0][address]", "x"),
                ("data[0]", "kept as a key"),
            ]),
            Ok(json!({
                "add": ["a", "b"],
                "channels": [{"type": "push", "address": "x"}],
                "data": {"0": "kept as a key"}
            }))
        );
    }

    #[test]
    fn json_strings_decode_as_json() {
        assert_eq!(
            form(&[
                ("identity", r#"{"id":"n8nl-1","email":"n@example.com"}"#),
                ("data", r#"{"workflow":"nightly","n":12345678901234567890}"#),
                ("add", r#"["test-tag"]"#),
                ("extras", ""),
            ]),
            Ok(json!({
                "identity": {"id": "n8nl-1", "email": "n@example.com"},
                "data": {"workflow": "nightly", "n": 12345678901234567890u64},
                "add": ["test-tag"],
                "extras": null
            }))
        );
        assert_eq!(
            form(&[("channels", r#"{"type":"push","address":"x"}"#)]),
            Ok(json!({"channels": {"type": "push", "address": "x"}}))
        );
    }

    #[test]
    fn what_cannot_be_read_is_refused_by_name() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("id", "1"), ("id", "2")], "id: duplicate key"),
            (
                &[("data[a]", "1"), ("data[a]", "2")],
                "data.a: given more than once (or both as a value and as an object)",
            ),
            (
                &[("data[a]", "1"), ("data[a][b]", "2")],
                "data.a: given both as a value and in bracket notation",
            ),
            (
                &[("data", "{}"), ("data[a]", "1")],
                "data: given both as a value and in bracket notation",
            ),
            (
                &[("data[a", "1")],
                "data[a: not a well-formed form field name (expected name, name[key] or name[])",
            ),
            (
                &[("[a]", "1")],
                "[a]: not a well-formed form field name (expected name, name[key] or name[])",
            ),
            (
                &[("data[a]b", "1")],
                "data[a]b: not a well-formed form field name (expected name, name[key] or name[])",
            ),
            (
                &[("add", "vip")],
                "add: must be a list of strings, or a string holding it as JSON",
            ),
            (
                &[("data", "[1]")],
                "data: must be an object; the string holds JSON of another type",
            ),
            (&[("data", "{\"a\":1,\"a\":2}")], "data.a: duplicate key"),
            (
                &[("data[x]", "a\0b")],
                "data[x]: contains a NUL character (\\u0000)",
            ),
            (
                &[("data[a\0]", "1")],
                "body: a form field name contains a NUL character (\\u0000)",
            ),
            (
                &[("data[a][]", "1"), ("data[a][b]", "2")],
                "data.a: given both as a list (name[]) and as an object (name[key])",
            ),
        ];
        for (pairs, message) in cases {
            assert_eq!(
                form(pairs).as_ref().map_err(String::as_str),
                Err(*message),
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn depth_is_bounded() {
        let name = format!("data{}", "[a]".repeat(64));
        assert!(form(&[(name.as_str(), "x")]).is_err());
        let name = format!("data{}", "[a]".repeat(63));
        assert!(form(&[(name.as_str(), "x")]).is_ok());
    }

    #[test]
    fn json_bodies_decode_string_fields_and_leave_data_strings_alone() {
        let mut body = json!({
            "id": "n8n-1",
            "add": "[\"vip\",\"beta\"]",
            "data": "{\"note\":\"{\\\"not\\\":\\\"decoded\\\"}\"}",
            "email": "{\"not\":\"decoded\"}"
        })
        .as_object()
        .cloned()
        .expect("object");
        decode_json_fields(&mut body, crate::MAX_JSON_DEPTH).expect("decodes");
        assert_eq!(
            Value::Object(body),
            json!({
                "id": "n8n-1",
                "add": ["vip", "beta"],
                "data": {"note": "{\"not\":\"decoded\"}"},
                "email": "{\"not\":\"decoded\"}"
            })
        );
    }
}
