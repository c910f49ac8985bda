//! The hostile-input contract: every category of bad input on every route it applies to,
//! on both sides of its boundary where it has one. Each case asserts the exact status and
//! JSON body; refused cases store nothing; the server answers a heartbeat after every case.
//! All mismatches are reported together.

use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trackd_server::api::Limits;

use crate::helpers::{bracket_form, json_string_fields, multipart, TestApp, TestConfig};

/// The body limit of this suite: small, so both sides of it are cheap to send.
const MAX_BODY: usize = 4096;

#[derive(Clone, Debug)]
enum Expect {
    /// 200 with Vero's success body.
    Ok,
    /// This status with `{"status": status, "message": message}`.
    Err(u16, String),
    /// 200 with exactly this JSON body, and nothing stored (a batch of refused calls).
    Refused(Value),
}

fn err(status: u16, message: impl Into<String>) -> Expect {
    Expect::Err(status, message.into())
}

#[derive(Clone, Debug)]
struct Case {
    name: String,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    expect: Expect,
}

/// A Vero write route, a body it accepts, and the id it names (created before the suite).
struct Route {
    name: &'static str,
    method: &'static str,
    valid: fn(&str) -> Value,
}

const ROUTES: [Route; 8] = [
    Route {
        name: "events/track",
        method: "POST",
        valid: |id| json!({"identity": {"id": id}, "event_name": "e", "data": {}}),
    },
    Route {
        name: "users/track",
        method: "POST",
        valid: |id| json!({"id": id}),
    },
    Route {
        name: "users/edit",
        method: "PUT",
        valid: |id| json!({"id": id, "changes": {"a": 1}}),
    },
    Route {
        name: "users/tags/edit",
        method: "PUT",
        valid: |id| json!({"id": id, "add": ["t"], "remove": []}),
    },
    Route {
        name: "users/unsubscribe",
        method: "POST",
        valid: |id| json!({"id": id}),
    },
    Route {
        name: "users/resubscribe",
        method: "POST",
        valid: |id| json!({"id": id}),
    },
    Route {
        name: "users/delete",
        method: "POST",
        valid: |id| json!({"id": id}),
    },
    Route {
        name: "users/reidentify",
        method: "PUT",
        valid: |id| json!({"id": id, "new_id": format!("{id}-new")}),
    },
];

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

/// `body` (a JSON object) padded with an ignored top-level key to exactly `size` bytes.
fn padded(body: &Value, size: usize) -> Vec<u8> {
    let mut object = body.clone();
    object["pad"] = json!("");
    let base = object.to_string().len();
    object["pad"] = json!("x".repeat(size - base));
    let text = object.to_string();
    assert_eq!(text.len(), size);
    text.into_bytes()
}

/// Cases that apply to every Vero write route: `id` is a user the route may act on.
fn body_cases(route: &Route, token: &str, fresh_id: &mut dyn FnMut() -> String) -> Vec<Case> {
    let path = format!("/api/v2/{}?auth_token={token}", route.name);
    let case = |name: &str, body: Vec<u8>, expect: Expect| Case {
        name: format!("{} {name}", route.name),
        method: route.method,
        path: path.clone(),
        headers: vec![("content-type", "application/json".into())],
        body,
        expect,
    };
    let valid = (route.valid)(&fresh_id());
    let mut cases = vec![
        // Malformed JSON.
        case(
            "empty body",
            b"".to_vec(),
            err(400, "body: empty, expected a JSON object"),
        ),
        case(
            "truncated",
            b"{\"id\":".to_vec(),
            err(400, "body: invalid JSON: unexpected end of input at byte 6"),
        ),
        case(
            "trailing garbage",
            b"{\"id\":\"a\"} x".to_vec(),
            err(
                400,
                "body: invalid JSON: trailing characters after the JSON value at byte 11",
            ),
        ),
        case(
            "single quotes",
            b"{'id':'a'}".to_vec(),
            err(400, "body: invalid JSON: expected a string key at byte 1"),
        ),
        case(
            "array at the top",
            b"[]".to_vec(),
            err(400, "body: must be a JSON object"),
        ),
        case(
            "null at the top",
            b"null".to_vec(),
            err(400, "body: must be a JSON object"),
        ),
        // Invalid UTF-8, lone surrogates, NUL.
        case(
            "invalid UTF-8",
            b"{\"id\":\"\xff\xfe\"}".to_vec(),
            err(400, "body: invalid UTF-8 at byte 7"),
        ),
        case(
            "lone surrogate",
            br#"{"id":"\ud800"}"#.to_vec(),
            err(400, "id: contains a lone surrogate"),
        ),
        case(
            "escaped NUL",
            br#"{"id":"a\u0000b"}"#.to_vec(),
            err(400, "id: contains a NUL character (\\u0000)"),
        ),
        case(
            "raw NUL",
            b"{\"id\":\"a\0b\"}".to_vec(),
            err(400, "id: contains a NUL character (\\u0000)"),
        ),
        // Duplicate keys.
        case(
            "duplicate key",
            br#"{"id":"a","id":"b"}"#.to_vec(),
            err(400, "id: duplicate key"),
        ),
        // Deep nesting, both sides of 64 levels (the body itself is level 1).
        case("nested 64 levels", nested(&valid, 63), Expect::Ok),
        case(
            "nested 65 levels",
            nested(&valid, 64),
            err(
                400,
                format!("pad{}: nested deeper than 64 levels", "[0]".repeat(63)),
            ),
        ),
        // Size, both sides of the limit, plain and gzip.
        case(
            "body at the limit",
            padded(&(route.valid)(&fresh_id()), MAX_BODY),
            Expect::Ok,
        ),
        case(
            "body one byte over the limit",
            padded(&valid, MAX_BODY + 1),
            err(413, format!("body: larger than {MAX_BODY} bytes")),
        ),
        case(
            "huge string",
            format!(r#"{{"id":"{}"}}"#, "x".repeat(MAX_BODY * 4)).into_bytes(),
            err(413, format!("body: larger than {MAX_BODY} bytes")),
        ),
        case(
            "huge array",
            format!(r#"{{"add":[{}1]}}"#, "1,".repeat(MAX_BODY)).into_bytes(),
            err(413, format!("body: larger than {MAX_BODY} bytes")),
        ),
    ];
    let gz = |name: &str, body: Vec<u8>, expect: Expect| {
        let mut c = case(name, gzip(&body), expect);
        c.headers.push(("content-encoding", "gzip".into()));
        c
    };
    cases.push(gz(
        "gzip inflating to the limit",
        padded(&(route.valid)(&fresh_id()), MAX_BODY),
        Expect::Ok,
    ));
    cases.push(gz(
        "gzip inflating one byte over the limit",
        padded(&valid, MAX_BODY + 1),
        err(
            413,
            format!("body: larger than {MAX_BODY} bytes after decompression"),
        ),
    ));
    // A bomb that fits the limit compressed (2 MiB of spaces is ~2 KiB of gzip): it is
    // never inflated past the limit.
    cases.push(gz(
        "gzip bomb",
        vec![b' '; 2 * 1024 * 1024],
        err(
            413,
            format!("body: larger than {MAX_BODY} bytes after decompression"),
        ),
    ));
    cases.push(gz(
        "gzip bomb too large even compressed",
        vec![b' '; 64 * 1024 * 1024],
        err(413, format!("body: larger than {MAX_BODY} bytes")),
    ));
    let mut corrupt = gzip(&valid.to_string().into_bytes());
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 0xff;
    let mut c = case("corrupt gzip", corrupt, err(400, "body: invalid gzip data"));
    c.headers.push(("content-encoding", "gzip".into()));
    cases.push(c);
    // Exactly one gzip member: what follows it is refused, never silently dropped.
    for (name, after) in [
        ("gzip with trailing bytes", b"trailing".to_vec()),
        ("gzip with zero padding", vec![0; 16]),
        ("two gzip members", gzip(&valid.to_string().into_bytes())),
    ] {
        let mut body = gzip(&valid.to_string().into_bytes());
        body.extend_from_slice(&after);
        let mut c = case(
            name,
            body,
            err(400, "body: data after the end of the gzip stream"),
        );
        c.headers.push(("content-encoding", "gzip".into()));
        cases.push(c);
    }
    let mut c = case(
        "gzip header on a plain body",
        valid.to_string().into_bytes(),
        err(400, "body: invalid gzip data"),
    );
    c.headers.push(("content-encoding", "gzip".into()));
    cases.push(c);
    for encoding in ["br", "deflate", "zstd", "gzip, br"] {
        let mut c = case(
            &format!("content-encoding {encoding}"),
            valid.to_string().into_bytes(),
            err(
                415,
                format!("content-encoding: '{encoding}' is not supported, use gzip or none"),
            ),
        );
        c.headers.push(("content-encoding", encoding.into()));
        cases.push(c);
    }
    // Two Content-Encoding headers say the body was encoded twice, like `gzip,gzip`: a body
    // gzipped once is not read as if one of them were not there.
    let mut c = case(
        "two content-encoding headers",
        gzip(&valid.to_string().into_bytes()),
        err(
            415,
            "content-encoding: 'gzip,gzip' is not supported, use gzip or none",
        ),
    );
    c.headers.push(("content-encoding", "gzip".into()));
    c.headers.push(("content-encoding", "gzip".into()));
    cases.push(c);
    // Every content type: JSON whatever it says; form bodies with JSON-string fields.
    for content_type in [
        "text/plain",
        "application/xml",
        "application/octet-stream",
        "",
    ] {
        let mut c = case(
            &format!("JSON sent as {content_type:?}"),
            (route.valid)(&fresh_id()).to_string().into_bytes(),
            Expect::Ok,
        );
        c.headers = vec![("content-type", content_type.into())];
        cases.push(c);
    }
    let mut c = case(
        "XML body",
        b"<event><id>a</id></event>".to_vec(),
        err(400, "body: invalid JSON: expected a value at byte 0"),
    );
    c.headers = vec![("content-type", "application/xml".into())];
    cases.push(c);
    let mut c = case(
        "form body with broken percent-encoding",
        b"id=%ff%fe".to_vec(),
        err(400, "body: invalid UTF-8 in form encoding"),
    );
    c.headers = vec![("content-type", "application/x-www-form-urlencoded".into())];
    cases.push(c);
    let mut c = case(
        "form body with a repeated field",
        b"id=a&id=b".to_vec(),
        err(400, "id: duplicate key"),
    );
    c.headers = vec![("content-type", "application/x-www-form-urlencoded".into())];
    cases.push(c);
    // Every form of a body is read whole: the valid body in bracket notation, as
    // multipart with JSON-string fields, and as JSON with its object and list fields sent
    // as JSON strings. What cannot be read whole is refused by name.
    let form = |name: &str, body: String, expect: Expect| {
        let mut c = case(name, body.into_bytes(), expect);
        c.headers = vec![("content-type", "application/x-www-form-urlencoded".into())];
        c
    };
    cases.push(form(
        "valid body in bracket notation",
        bracket_form(&(route.valid)(&fresh_id())),
        Expect::Ok,
    ));
    let mut c = case(
        "valid body as JSON with JSON-string fields",
        json_string_fields(&(route.valid)(&fresh_id()))
            .to_string()
            .into_bytes(),
        Expect::Ok,
    );
    c.headers = vec![("content-type", "application/json".into())];
    cases.push(c);
    let mut c = case(
        "valid body as multipart",
        multipart(&(route.valid)(&fresh_id()), "b0undary"),
        Expect::Ok,
    );
    c.headers = vec![(
        "content-type",
        "multipart/form-data; boundary=b0undary".into(),
    )];
    cases.push(c);
    for (name, body, message) in [
        (
            "form value and object at once",
            "id=x&data[a]=1&data[a][b]=2",
            "data.a: given both as a value and in bracket notation",
        ),
        (
            "form field as JSON and in brackets",
            "id=x&data=%7B%7D&data[a]=1",
            "data: given both as a value and in bracket notation",
        ),
        (
            "form key given twice in brackets",
            "id=x&changes[a]=1&changes[a]=2",
            "changes.a: given more than once (or both as a value and as an object)",
        ),
        (
            "form list and object at once",
            "id=x&add[]=a&add[k]=b",
            "add: given both as a list (name[]) and as an object (name[key])",
        ),
        (
            "unclosed bracket",
            "id=x&data[a=1",
            "data[a: not a well-formed form field name (expected name, name[key] or name[])",
        ),
        (
            "JSON-string field of the wrong type",
            "id=x&extras=%5B1%5D",
            "extras: must be an object; the string holds JSON of another type",
        ),
        (
            "form field that is neither JSON nor brackets",
            "id=x&add=vip",
            "add: must be a list of strings, or a string holding it as JSON",
        ),
        (
            "NUL in a bracketed value",
            "id=x&data[a]=%00",
            "data[a]: contains a NUL character (\\u0000)",
        ),
    ] {
        cases.push(form(name, body.to_owned(), err(400, message)));
    }
    let mut c = case(
        "multipart without its closing boundary",
        b"--b0undary\r\ncontent-disposition: form-data; name=\"id\"\r\n\r\nx\r\n".to_vec(),
        err(
            400,
            "body: malformed multipart/form-data: the body ends before its closing boundary",
        ),
    );
    c.headers = vec![(
        "content-type",
        "multipart/form-data; boundary=b0undary".into(),
    )];
    cases.push(c);
    let mut c = case(
        "multipart file part",
        b"--b0undary\r\ncontent-disposition: form-data; name=\"data\"; filename=\"d.json\"\r\n\r\n{}\r\n--b0undary--\r\n".to_vec(),
        err(
            400,
            "data: a file part is not accepted, send the value as a text field",
        ),
    );
    c.headers = vec![(
        "content-type",
        "multipart/form-data; boundary=b0undary".into(),
    )];
    cases.push(c);
    let mut c = case(
        "multipart without a boundary",
        b"id=x".to_vec(),
        err(
            400,
            "content-type: multipart/form-data without a valid boundary",
        ),
    );
    c.headers = vec![("content-type", "multipart/form-data".into())];
    cases.push(c);
    // Credentials.
    let mut c = case("no credential", valid.to_string().into_bytes(), err(401, "auth_token: missing (send it as ?auth_token=, ?tracking_api_key=, in the body, or as Authorization: Bearer)"));
    c.path = format!("/api/v2/{}", route.name);
    cases.push(c);
    let mut c = case(
        "unknown credential",
        valid.to_string().into_bytes(),
        err(401, "auth_token: unknown credential"),
    );
    c.path = format!("/api/v2/{}?auth_token=tk_nope", route.name);
    cases.push(c);
    let mut c = case(
        "credential of the wrong type",
        valid.to_string().into_bytes(),
        err(400, "auth_token: must be a string"),
    );
    c.path = format!("/api/v2/{}", route.name);
    let mut body = valid.clone();
    body["auth_token"] = json!(12);
    c.body = body.to_string().into_bytes();
    cases.push(c);
    // Wrong methods.
    for method in ["GET", "PATCH"] {
        let mut c = case(
            &format!("method {method}"),
            valid.to_string().into_bytes(),
            err(
                405,
                format!(
                    "/api/v2/{}: method not allowed, use {}",
                    route.name,
                    allow(route.name)
                ),
            ),
        );
        c.method = method;
        cases.push(c);
    }
    cases
}

fn allow(route: &str) -> &'static str {
    match route {
        "users/edit" | "users/tags/edit" | "users/reidentify" => "PUT, POST",
        "users/delete" => "POST, DELETE",
        _ => "POST",
    }
}

/// `body` with a `pad` key holding arrays nested so the body is `levels + 1` deep.
fn nested(body: &Value, levels: usize) -> Vec<u8> {
    let text = body.to_string();
    let inner = format!("{}{}", "[".repeat(levels), "]".repeat(levels));
    format!("{},\"pad\":{inner}}}", &text[..text.len() - 1]).into_bytes()
}

/// Field-level cases: wrong types, boundary lengths, huge numbers, per route.
fn field_cases(token: &str, fresh_id: &mut dyn FnMut() -> String) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |route: &str, method: &'static str, name: &str, body: Value, expect: Expect| {
        cases.push(Case {
            name: format!("{route} {name}"),
            method,
            path: format!("/api/v2/{route}?auth_token={token}"),
            headers: vec![("content-type", "application/json".into())],
            body: body.to_string().into_bytes(),
            expect,
        });
    };
    let t = "events/track";
    let id254 = "i".repeat(254);
    let id255 = "i".repeat(255);
    for (name, body, expect) in [
        (
            "identity as a string",
            json!({"identity": "u", "event_name": "e"}),
            err(
                400,
                "identity: must be an object, or a string holding it as JSON",
            ),
        ),
        (
            "identity without id or email",
            json!({"identity": {}, "event_name": "e"}),
            err(400, "identity: an id or an email is required"),
        ),
        (
            "id as a bool",
            json!({"identity": {"id": true}, "event_name": "e"}),
            err(400, "identity.id: must be a string or an integer"),
        ),
        (
            "id as a float",
            json!({"identity": {"id": 1.5}, "event_name": "e"}),
            err(400, "identity.id: must be a string or an integer"),
        ),
        (
            "id of 254 characters",
            json!({"identity": {"id": id254}, "event_name": "e"}),
            Expect::Ok,
        ),
        (
            "id of 255 characters",
            json!({"identity": {"id": id255}, "event_name": "e"}),
            err(400, "identity.id: longer than 254 characters"),
        ),
        (
            "email as a number",
            json!({"identity": {"email": 5}, "event_name": "e"}),
            err(400, "identity.email: must be a string or null"),
        ),
        (
            "email without @",
            json!({"identity": {"email": "nobody"}, "event_name": "e"}),
            err(400, "identity.email: not a valid email address"),
        ),
        (
            "event_name missing",
            json!({"identity": {"id": "u"}}),
            err(400, "event_name: is required"),
        ),
        (
            "event_name empty",
            json!({"identity": {"id": "u"}, "event_name": ""}),
            err(400, "event_name: is empty"),
        ),
        (
            "event_name as a number",
            json!({"identity": {"id": "u"}, "event_name": 7}),
            err(400, "event_name: must be a string"),
        ),
        (
            "event_name of 254 characters",
            json!({"identity": {"id": "u"}, "event_name": "n".repeat(254)}),
            Expect::Ok,
        ),
        (
            "event_name of 255 characters",
            json!({"identity": {"id": "u"}, "event_name": "n".repeat(255)}),
            err(400, "event_name: longer than 254 characters"),
        ),
        (
            "data as an array",
            json!({"identity": {"id": "u"}, "event_name": "e", "data": []}),
            err(400, "data: must be an object"),
        ),
        (
            "extras as a string",
            json!({"identity": {"id": "u"}, "event_name": "e", "extras": "x"}),
            err(
                400,
                "extras: must be an object, or a string holding it as JSON",
            ),
        ),
        (
            "source as a number",
            json!({"identity": {"id": "u"}, "event_name": "e", "extras": {"source": 1}}),
            err(400, "extras.source: must be a string"),
        ),
    ] {
        add(t, "POST", name, body, expect);
    }
    // Huge numbers: kept exactly in data; an id must fit what an integer id can be.
    let mut raws = Vec::new();
    let mut raw = |name: &str, body: &str, expect: Expect| {
        raws.push(Case {
            name: format!("events/track {name}"),
            method: "POST",
            path: format!("/api/v2/events/track?auth_token={token}"),
            headers: vec![],
            body: body.as_bytes().to_vec(),
            expect,
        });
    };
    raw(
        "a 40-digit number in data",
        r#"{"identity":{"id":"u"},"event_name":"big","data":{"n":1234567890123456789012345678901234567890}}"#,
        Expect::Ok,
    );
    raw(
        "1e400 in data",
        r#"{"identity":{"id":"u"},"event_name":"big","data":{"n":1e400}}"#,
        Expect::Ok,
    );
    raw(
        "an exponent past a million",
        r#"{"identity":{"id":"u"},"event_name":"big","data":{"n":1e1000001}}"#,
        err(400, "data.n: number out of range"),
    );
    raw(
        "a 40-digit id",
        r#"{"identity":{"id":1234567890123456789012345678901234567890},"event_name":"e"}"#,
        Expect::Ok,
    );
    raw(
        "a negative zero id",
        r#"{"identity":{"id":-0},"event_name":"e"}"#,
        Expect::Ok,
    );
    raw(
        "a leading-zero number",
        r#"{"identity":{"id":"u"},"event_name":"e","data":{"n":01}}"#,
        err(400, "body: invalid JSON: expected ',' or '}' at byte 53"),
    );
    let user = fresh_id();
    let mut more = Vec::new();
    for (route, method, name, body, expect) in [
        (
            "users/track",
            "POST",
            "id missing",
            json!({"data": {}}),
            err(400, "id: an id or an email is required"),
        ),
        (
            "users/track",
            "POST",
            "channels as an object",
            json!({"id": user, "channels": {}}),
            err(400, "channels[0].type: is required"),
        ),
        (
            "users/track",
            "POST",
            "data as a string",
            json!({"id": user, "data": "x"}),
            err(
                400,
                "data: must be an object, or a string holding it as JSON",
            ),
        ),
        (
            "users/edit",
            "PUT",
            "changes missing",
            json!({"id": user}),
            err(400, "changes: is required"),
        ),
        (
            "users/edit",
            "PUT",
            "changes as an array",
            json!({"id": user, "changes": []}),
            err(400, "changes: must be an object"),
        ),
        (
            "users/edit",
            "PUT",
            "an unknown user",
            json!({"id": "nobody-here", "changes": {}}),
            err(404, "id: no such user"),
        ),
        (
            "users/tags/edit",
            "PUT",
            "add as a string",
            json!({"id": user, "add": "t"}),
            err(
                400,
                "add: must be a list of strings, or a string holding it as JSON",
            ),
        ),
        (
            "users/tags/edit",
            "PUT",
            "a number tag",
            json!({"id": user, "add": [1]}),
            err(400, "add[0]: must be a string"),
        ),
        (
            "users/tags/edit",
            "PUT",
            "an empty tag (skipped, as the Go client sends them)",
            json!({"id": user, "add": [""]}),
            Expect::Ok,
        ),
        (
            "users/tags/edit",
            "PUT",
            "a tag of 254 characters",
            json!({"id": user, "add": ["t".repeat(254)]}),
            Expect::Ok,
        ),
        (
            "users/tags/edit",
            "PUT",
            "a tag of 255 characters",
            json!({"id": user, "add": ["t".repeat(255)]}),
            err(400, "add[0]: longer than 254 characters"),
        ),
        (
            "users/reidentify",
            "PUT",
            "new_id missing",
            json!({"id": user}),
            err(400, "new_id: is required"),
        ),
        (
            "users/reidentify",
            "PUT",
            "new_id equal to id (a 200 that changes nothing)",
            json!({"id": user, "new_id": user}),
            Expect::Ok,
        ),
        (
            "users/reidentify",
            "PUT",
            "new_id of 255 characters",
            json!({"id": user, "new_id": "n".repeat(255)}),
            err(400, "new_id: longer than 254 characters"),
        ),
        (
            "users/delete",
            "POST",
            "email as a number",
            json!({"email": 5}),
            err(400, "email: must be a string or null"),
        ),
        (
            "users/unsubscribe",
            "POST",
            "id as an object",
            json!({"id": {}}),
            err(400, "id: must be a string or an integer"),
        ),
    ] {
        more.push((route, method, name, body, expect));
    }
    for (route, method, name, body, expect) in more {
        add(route, method, name, body, expect);
    }
    cases.extend(raws);
    cases
}

/// Paths, methods and headers that are wrong whatever the body.
fn request_cases(token: &str) -> Vec<Case> {
    let body = json!({"identity": {"id": "u"}, "event_name": "e"})
        .to_string()
        .into_bytes();
    let case = |name: &str, method: &'static str, path: String, expect: Expect| Case {
        name: name.to_owned(),
        method,
        path,
        headers: vec![],
        body: body.clone(),
        expect,
    };
    let long = format!("/api/v2/{}", "a".repeat(8000));
    vec![
        case(
            "misspelled route",
            "POST",
            "/api/v2/events/trak".into(),
            err(404, "/api/v2/events/trak: no such route"),
        ),
        case(
            "another API version",
            "POST",
            "/api/v1/events/track".into(),
            err(404, "/api/v1/events/track: no such route"),
        ),
        case(
            "an .xml suffix",
            "POST",
            "/api/v2/events/track.xml".into(),
            err(404, "/api/v2/events/track.xml: no such route"),
        ),
        case(
            "a double slash",
            "POST",
            "/api//v2/events/track".into(),
            err(404, "/api//v2/events/track: no such route"),
        ),
        case(
            "dot segments",
            "GET",
            "/api/v2/../../etc/passwd".into(),
            err(404, "/etc/passwd: no such route"),
        ),
        case(
            "a long path",
            "GET",
            long.clone(),
            err(404, format!("{long}: no such route")),
        ),
        case(
            "the root with POST",
            "POST",
            "/".into(),
            err(405, "/: method not allowed, use GET"),
        ),
        case(
            "heartbeat with POST",
            "POST",
            "/api/v2/heartbeat".into(),
            err(405, "/api/v2/heartbeat: method not allowed, use GET"),
        ),
        case(
            "read route with POST",
            "POST",
            "/api/v2/events".into(),
            err(405, "/api/v2/events: method not allowed, use GET"),
        ),
        case(
            "import with GET",
            "GET",
            "/api/v2/events/import".into(),
            err(405, "/api/v2/events/import: method not allowed, use POST"),
        ),
        case(
            "read route with a .json suffix",
            "GET",
            "/api/v2/events.json".into(),
            err(404, "/api/v2/events.json: no such route"),
        ),
        case(
            "a query without a value",
            "POST",
            format!("/api/v2/events/track?auth_token={token}&&=&x"),
            Expect::Ok,
        ),
        case(
            "broken percent-encoding in the query",
            "POST",
            "/api/v2/events/track?auth_token=%ff".into(),
            err(400, "query: invalid UTF-8 in form encoding"),
        ),
        case(
            "an over-long token",
            "POST",
            format!("/api/v2/events/track?auth_token={}", "t".repeat(300)),
            err(401, "auth_token: unknown credential"),
        ),
        {
            let mut c = case(
                "two Authorization headers",
                "POST",
                "/api/v2/events/track".into(),
                err(400, "authorization: given more than once"),
            );
            c.headers = vec![
                ("authorization", format!("Bearer {token}")),
                ("authorization", "Bearer tk_other".into()),
            ];
            c
        },
        {
            let mut c = case(
                "a non-Bearer Authorization header",
                "POST",
                "/api/v2/events/track".into(),
                err(401, "authorization: must be Bearer <token>"),
            );
            c.headers = vec![("authorization", format!("Basic {token}"))];
            c
        },
        {
            let mut c = case(
                "an Authorization header of bytes",
                "POST",
                "/api/v2/events/track".into(),
                err(401, "authorization: must be Bearer <token>"),
            );
            c.headers = vec![("authorization", "Bearer \u{e9}".into())];
            c
        },
        {
            let mut c = case(
                "a bogus content type",
                "POST",
                format!("/api/v2/events/track?auth_token={token}"),
                Expect::Ok,
            );
            c.headers = vec![("content-type", ";;;/=\u{e9}".into())];
            c
        },
    ]
}

/// Read-route cases: the secret key, query parameters on both sides of their bounds.
fn read_cases(secret: &str, token: &str) -> Vec<Case> {
    let case =
        |name: &str, path: &str, headers: Vec<(&'static str, String)>, expect: Expect| Case {
            name: name.to_owned(),
            method: if path.starts_with("/api/v2/events/import") {
                "POST"
            } else {
                "GET"
            },
            path: path.to_owned(),
            headers,
            body: Vec::new(),
            expect,
        };
    let bearer = || vec![("authorization", format!("Bearer {secret}"))];
    let mut cases = vec![
        case("read without a key", "/api/v2/events", vec![], err(401, "authorization: missing (send Authorization: Bearer <secret key>)")),
        case("read with a tracking token", "/api/v2/events", vec![("authorization", format!("Bearer {token}"))], err(403, "authorization: a tracking token cannot read, use a secret key")),
        case("secret key in the query", &format!("/api/v2/events?auth_token={secret}"), vec![], err(400, "auth_token: a secret key must never be sent in a query string (revoke it: URLs are logged)")),
    ];
    for (query, expect) in [
        ("limit=1", None),
        ("limit=1000", None),
        ("limit=0", Some("limit: must be an integer from 1 to 1000")),
        ("limit=1001", Some("limit: must be an integer from 1 to 1000")),
        ("limit=-1", Some("limit: must be an integer from 1 to 1000")),
        ("limit=99999999999999999999999", Some("limit: must be an integer from 1 to 1000")),
        ("limit=1&limit=2", Some("limit: given more than once")),
        ("bogus=1", Some("bogus: unknown parameter (this route takes event_name, user_id, since, until, limit, cursor)")),
        ("cursor=AAAA", Some("cursor: not a cursor this server handed out for this query")),
        ("since=yesterday", Some("since: not an ISO 8601 time or Unix seconds (years 1 to 9999)")),
        ("since=0001-01-01T00:00:00Z", None),
        ("since=9999-12-31T23:59:59Z", None),
        ("since=10000-01-01T00:00:00Z", Some("since: not an ISO 8601 time or Unix seconds (years 1 to 9999)")),
        ("since=99999999999999999999", Some("since: not an ISO 8601 time or Unix seconds (years 1 to 9999)")),
        ("since=200&until=100", Some("until: is before since")),
        ("event_name=%ff", Some("query: invalid UTF-8 in form encoding")),
    ] {
        cases.push(case(
            &format!("events?{query}"),
            &format!("/api/v2/events?{query}"),
            bearer(),
            match expect {
                None => Expect::Ok,
                Some(m) => err(400, m),
            },
        ));
    }
    for (query, expect) in [
        ("interval=hour", None),
        ("interval=week", Some("interval: must be hour or day")),
    ] {
        cases.push(case(
            &format!("stats?{query}"),
            &format!("/api/v2/stats/events?{query}"),
            bearer(),
            match expect {
                None => Expect::Ok,
                Some(m) => err(400, m),
            },
        ));
    }
    cases.push(case(
        "export with an unknown parameter",
        "/api/v2/events/export?limit=5",
        bearer(),
        err(
            400,
            "limit: unknown parameter (this route takes since, until)",
        ),
    ));
    cases.push(case(
        "user with a parameter",
        "/api/v2/users/u?x=1",
        bearer(),
        err(400, "x: unknown parameter (this route takes none)"),
    ));
    cases.push(case(
        "user with invalid UTF-8 in the id",
        "/api/v2/users/%ff",
        bearer(),
        err(400, "id: not valid UTF-8 once URL-decoded"),
    ));
    cases.push(case(
        "an unknown user",
        "/api/v2/users/nobody-at-all",
        bearer(),
        err(404, "id: no such user"),
    ));
    cases.push(case(
        "import with dedup=maybe",
        "/api/v2/events/import?dedup=maybe",
        bearer(),
        err(400, "dedup: must be true or false"),
    ));
    cases
}

/// The `/v1/batch` bounds of this suite.
const MAX_BATCH_BODY: usize = 6144;
const MAX_BATCH_ITEMS: usize = 5;

/// The Segment routes, each with a call it accepts for user `id`.
/// A call the route accepts, for a user id.
type ValidCall = fn(&str) -> Value;

const SEGMENT_ROUTES: [(&str, ValidCall); 8] = [
    ("track", |id| json!({"userId": id, "event": "e"})),
    (
        "identify",
        |id| json!({"userId": id, "traits": {"plan": "x"}}),
    ),
    ("page", |id| json!({"userId": id, "name": "Home"})),
    ("screen", |id| json!({"userId": id, "name": "Home"})),
    ("group", |id| json!({"userId": id, "groupId": "g"})),
    (
        "alias",
        |id| json!({"previousId": id, "userId": format!("{id}-new")}),
    ),
    (
        "batch",
        |id| json!({"batch": [{"type": "track", "userId": id, "event": "e"}]}),
    ),
    (
        "import",
        |id| json!({"batch": [{"type": "track", "userId": id, "event": "e"}]}),
    ),
];

/// The `/v1` routes: malformed bodies, sizes, encodings, write keys, methods, and every
/// field of every call, single and in a batch.
fn segment_cases(token: &str, secret: &str, fresh_id: &mut dyn FnMut() -> String) -> Vec<Case> {
    use base64::Engine;
    let basic = |key: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
        )
    };
    let auth = basic(token);
    let mut cases = Vec::new();
    for (route, valid) in SEGMENT_ROUTES {
        let limit = if matches!(route, "batch" | "import") {
            MAX_BATCH_BODY
        } else {
            MAX_BODY
        };
        let case = |name: &str, body: Vec<u8>, expect: Expect| Case {
            name: format!("/v1/{route} {name}"),
            method: "POST",
            path: format!("/v1/{route}"),
            headers: vec![
                ("content-type", "application/json".into()),
                ("authorization", auth.clone()),
            ],
            body,
            expect,
        };
        let ok = valid(&fresh_id());
        cases.extend([
            case(
                "valid",
                valid(&fresh_id()).to_string().into_bytes(),
                Expect::Ok,
            ),
            case(
                "empty body",
                vec![],
                err(400, "body: empty, expected a JSON object"),
            ),
            case(
                "truncated",
                b"{\"userId\":".to_vec(),
                err(
                    400,
                    "body: invalid JSON: unexpected end of input at byte 10",
                ),
            ),
            case(
                "array at the top",
                b"[]".to_vec(),
                err(400, "body: must be a JSON object"),
            ),
            case(
                "invalid UTF-8",
                b"{\"userId\":\"\xff\"}".to_vec(),
                err(400, "body: invalid UTF-8 at byte 11"),
            ),
            case(
                "lone surrogate",
                br#"{"userId":"\ud800"}"#.to_vec(),
                err(400, "userId: contains a lone surrogate"),
            ),
            case(
                "NUL",
                br#"{"userId":"a\u0000"}"#.to_vec(),
                err(400, "userId: contains a NUL character (\\u0000)"),
            ),
            case(
                "duplicate key",
                br#"{"userId":"a","userId":"b"}"#.to_vec(),
                err(400, "userId: duplicate key"),
            ),
            case(
                "nested 64 levels",
                nested(&valid(&fresh_id()), 63),
                Expect::Ok,
            ),
            case(
                "nested 65 levels",
                nested(&ok, 64),
                err(
                    400,
                    format!("pad{}: nested deeper than 64 levels", "[0]".repeat(63)),
                ),
            ),
            case(
                "body at the limit",
                padded(&valid(&fresh_id()), limit),
                Expect::Ok,
            ),
            case(
                "body one byte over the limit",
                padded(&ok, limit + 1),
                err(413, format!("body: larger than {limit} bytes")),
            ),
        ]);
        let mut gz = case(
            "gzip inflating one byte over the limit",
            gzip(&padded(&ok, limit + 1)),
            err(
                413,
                format!("body: larger than {limit} bytes after decompression"),
            ),
        );
        gz.headers.push(("content-encoding", "gzip".into()));
        cases.push(gz);
        let mut gz = case(
            "gzip",
            gzip(&valid(&fresh_id()).to_string().into_bytes()),
            Expect::Ok,
        );
        gz.headers.push(("content-encoding", "gzip".into()));
        cases.push(gz);
        let mut br = case(
            "content-encoding br",
            ok.to_string().into_bytes(),
            err(
                415,
                "content-encoding: 'br' is not supported, use gzip or none",
            ),
        );
        br.headers.push(("content-encoding", "br".into()));
        cases.push(br);
        // Write keys.
        let keyed = |name: &str, authorization: Option<String>, body: Value, expect: Expect| {
            let mut c = case(name, body.to_string().into_bytes(), expect);
            c.headers.retain(|(h, _)| *h != "authorization");
            if let Some(a) = authorization {
                c.headers.push(("authorization", a));
            }
            c
        };
        let with_key = |key: Value| {
            let mut body = ok.clone();
            body["writeKey"] = key;
            body
        };
        cases.extend([
            keyed(
                "no write key",
                None,
                ok.clone(),
                err(
                    401,
                    "writeKey: missing (send it as the HTTP Basic user name with an empty \
                     password, or as writeKey in the body)",
                ),
            ),
            keyed(
                "unknown write key",
                Some(basic("wk_unknown")),
                ok.clone(),
                err(401, "authorization: unknown credential"),
            ),
            keyed(
                "unknown write key in the body",
                None,
                with_key(json!("wk_unknown")),
                err(401, "writeKey: unknown credential"),
            ),
            keyed(
                "secret key as the write key",
                Some(basic(secret)),
                ok.clone(),
                err(
                    403,
                    "authorization: a secret key is not accepted here, use a tracking token",
                ),
            ),
            keyed(
                "secret key in the body",
                None,
                with_key(json!(secret)),
                err(
                    403,
                    "writeKey: a secret key is not accepted here, use a tracking token",
                ),
            ),
            keyed(
                "write key not a string",
                None,
                with_key(json!(["k"])),
                err(400, "writeKey: must be a string"),
            ),
            keyed(
                "basic auth not base64",
                Some("Basic %%%".into()),
                ok.clone(),
                err(
                    401,
                    "authorization: must be Basic <base64 of writeKey:> (or Bearer <writeKey>)",
                ),
            ),
            keyed(
                "digest auth",
                Some("Digest abc".into()),
                ok.clone(),
                err(
                    401,
                    "authorization: must be Basic <base64 of writeKey:> (or Bearer <writeKey>)",
                ),
            ),
        ]);
        for method in ["GET", "PUT", "DELETE"] {
            cases.push(Case {
                method,
                ..case(
                    &format!("method {method}"),
                    ok.to_string().into_bytes(),
                    err(405, format!("/v1/{route}: method not allowed, use POST")),
                )
            });
        }
    }
    // Field cases: each once as a single call and once inside a batch.
    let id = fresh_id();
    let fields: Vec<(&str, Value, &str, String)> = vec![
        (
            "track",
            json!({"event": "e"}),
            "userId",
            "userId or anonymousId is required".into(),
        ),
        (
            "track",
            json!({"userId": "", "anonymousId": null, "event": "e"}),
            "userId",
            "userId or anonymousId is required".into(),
        ),
        (
            "track",
            json!({"userId": {}, "event": "e"}),
            "userId",
            "must be a string or an integer".into(),
        ),
        (
            "track",
            json!({"userId": 1.5, "event": "e"}),
            "userId",
            "must be a string or an integer".into(),
        ),
        (
            "track",
            json!({"userId": "u".repeat(255), "event": "e"}),
            "userId",
            "longer than 254 characters".into(),
        ),
        (
            "track",
            json!({"anonymousId": [], "event": "e"}),
            "anonymousId",
            "must be a string or an integer".into(),
        ),
        (
            "track",
            json!({"userId": id}),
            "event",
            "is required".into(),
        ),
        (
            "track",
            json!({"userId": id, "event": ""}),
            "event",
            "is empty".into(),
        ),
        (
            "track",
            json!({"userId": id, "event": 5}),
            "event",
            "must be a string".into(),
        ),
        (
            "track",
            json!({"userId": id, "event": "e".repeat(255)}),
            "event",
            "longer than 254 characters".into(),
        ),
        (
            "track",
            json!({"userId": id, "event": "e", "properties": []}),
            "properties",
            "must be an object".into(),
        ),
        (
            "track",
            json!({"userId": id, "event": "e", "context": "web"}),
            "context",
            "must be an object".into(),
        ),
        (
            "track",
            json!({"userId": id, "event": "e", "context": {"traits": 1}}),
            "context.traits",
            "must be an object".into(),
        ),
        (
            "track",
            json!({"userId": id, "event": "e", "context": {"traits": {"email": "x"}}}),
            "context.traits.email",
            "not a valid email address".into(),
        ),
        (
            "track",
            json!({"userId": id, "event": "e", "messageId": 7}),
            "messageId",
            "must be a string".into(),
        ),
        (
            "track",
            json!({"userId": id, "event": "e", "messageId": "m".repeat(101)}),
            "messageId",
            "longer than 100 characters".into(),
        ),
        (
            "track",
            json!({"userId": id, "event": "e", "timestamp": "today"}),
            "timestamp",
            "not an ISO 8601 time between years 1 and 9999".into(),
        ),
        (
            "track",
            json!({"userId": id, "event": "e", "timestamp": 1700000000}),
            "timestamp",
            "must be an ISO 8601 string".into(),
        ),
        (
            "track",
            json!({"userId": id, "event": "e", "sentAt": "10000-01-01T00:00:00Z"}),
            "sentAt",
            "not an ISO 8601 time between years 1 and 9999".into(),
        ),
        (
            "track",
            json!({"userId": id, "event": "e", "originalTimestamp": "0001-01-01T00:00:00Z", "sentAt": "9999-12-31T00:00:00Z"}),
            "originalTimestamp",
            "corrected by sentAt, falls outside years 1 to 9999".into(),
        ),
        (
            "identify",
            json!({"userId": id, "traits": "pro"}),
            "traits",
            "must be an object".into(),
        ),
        (
            "identify",
            json!({"userId": id, "traits": {"email": "no"}}),
            "traits.email",
            "not a valid email address".into(),
        ),
        (
            "identify",
            json!({"userId": id, "traits": {"phone": {}}}),
            "traits.phone",
            "must be a string or a number".into(),
        ),
        (
            "page",
            json!({"userId": id, "name": ["a"]}),
            "name",
            "must be a string".into(),
        ),
        (
            "page",
            json!({"userId": id, "name": "n".repeat(243)}),
            "name",
            "longer than 242 characters (the event is named Viewed <name> Page, at most 254)"
                .into(),
        ),
        (
            "screen",
            json!({"userId": id, "name": "n".repeat(241)}),
            "name",
            "longer than 240 characters (the event is named Viewed <name> Screen, at most 254)"
                .into(),
        ),
        (
            "screen",
            json!({"userId": id, "category": 1}),
            "category",
            "must be a string".into(),
        ),
        (
            "group",
            json!({"userId": id}),
            "groupId",
            "is required".into(),
        ),
        (
            "group",
            json!({"userId": id, "groupId": ""}),
            "groupId",
            "is empty".into(),
        ),
        (
            "group",
            json!({"userId": id, "groupId": true}),
            "groupId",
            "must be a string or a number".into(),
        ),
        (
            "group",
            json!({"userId": id, "groupId": "g", "traits": 1}),
            "traits",
            "must be an object".into(),
        ),
        (
            "alias",
            json!({"userId": id}),
            "previousId",
            "is required".into(),
        ),
        (
            "alias",
            json!({"previousId": id}),
            "userId",
            "is required".into(),
        ),
        (
            "alias",
            json!({"previousId": {}, "userId": id}),
            "previousId",
            "must be a string or an integer".into(),
        ),
    ];
    for (call, body, field, problem) in fields {
        cases.push(Case {
            name: format!("/v1/{call} {field} {body}"),
            method: "POST",
            path: format!("/v1/{call}"),
            headers: vec![("authorization", auth.clone())],
            body: body.to_string().into_bytes(),
            expect: err(400, format!("{field}: {problem}")),
        });
        let mut item = body.clone();
        item["type"] = json!(call);
        cases.push(Case {
            name: format!("/v1/batch {call} {field} {body}"),
            method: "POST",
            path: "/v1/batch".into(),
            headers: vec![("authorization", auth.clone())],
            body: json!({"batch": [item]}).to_string().into_bytes(),
            expect: Expect::Refused(json!({"success": true, "rejected": [
                {"index": 0, "message": format!("batch[0].{field}: {problem}")}
            ]})),
        });
    }
    // Unknown users where the call needs one: 404 alone, listed in a batch.
    for (call, body, field) in [
        (
            "group",
            json!({"userId": "nobody-here", "groupId": "g"}),
            "userId",
        ),
        (
            "alias",
            json!({"previousId": "nobody-here", "userId": "x"}),
            "previousId",
        ),
    ] {
        cases.push(Case {
            name: format!("/v1/{call} unknown user"),
            method: "POST",
            path: format!("/v1/{call}"),
            headers: vec![("authorization", auth.clone())],
            body: body.to_string().into_bytes(),
            expect: err(404, format!("{field}: no such user")),
        });
        let mut item = body;
        item["type"] = json!(call);
        cases.push(Case {
            name: format!("/v1/batch {call} unknown user"),
            method: "POST",
            path: "/v1/batch".into(),
            headers: vec![("authorization", auth.clone())],
            body: json!({"batch": [item]}).to_string().into_bytes(),
            expect: Expect::Refused(json!({"success": true, "rejected": [
                {"index": 0, "message": format!("batch[0].{field}: no such user")}
            ]})),
        });
    }
    // What makes a batch no batch at all, and the bound on its calls.
    let call = json!({"type": "track", "userId": id, "event": "e"});
    for (name, body, expect) in [
        (
            "no batch",
            json!({"calls": []}),
            err(400, "batch: is required (an array of calls)"),
        ),
        (
            "batch null",
            json!({"batch": null}),
            err(400, "batch: is required (an array of calls)"),
        ),
        (
            "batch an object",
            json!({"batch": {}}),
            err(400, "batch: must be an array of calls"),
        ),
        (
            "batch a string",
            json!({"batch": "[]"}),
            err(400, "batch: must be an array of calls"),
        ),
        (
            "sentAt invalid",
            json!({"batch": [call], "sentAt": "now"}),
            err(400, "sentAt: not an ISO 8601 time between years 1 and 9999"),
        ),
        (
            "context not an object",
            json!({"batch": [call], "context": []}),
            err(400, "context: must be an object"),
        ),
        (
            "calls past the bound",
            json!({"batch": vec![call.clone(); MAX_BATCH_ITEMS + 1]}),
            err(
                413,
                format!(
                    "batch: {} calls, more than a batch may hold ({MAX_BATCH_ITEMS})",
                    MAX_BATCH_ITEMS + 1
                ),
            ),
        ),
        (
            "an item not an object",
            json!({"batch": [1]}),
            Expect::Refused(
                json!({"success": true, "rejected": [{"index": 0, "message": "batch[0]: must be an object"}]}),
            ),
        ),
        (
            "an item without a type",
            json!({"batch": [{"userId": id, "event": "e"}]}),
            Expect::Refused(
                json!({"success": true, "rejected": [{"index": 0, "message": "batch[0].type: is required"}]}),
            ),
        ),
        (
            "an item of an unknown type",
            json!({"batch": [{"type": "Track", "userId": id, "event": "e"}]}),
            Expect::Refused(
                json!({"success": true, "rejected": [{"index": 0, "message": "batch[0].type: must be one of track, identify, page, screen, group, alias"}]}),
            ),
        ),
        (
            "an item's type not a string",
            json!({"batch": [{"type": 1}]}),
            Expect::Refused(
                json!({"success": true, "rejected": [{"index": 0, "message": "batch[0].type: must be a string"}]}),
            ),
        ),
    ] {
        cases.push(Case {
            name: format!("/v1/batch {name}"),
            method: "POST",
            path: "/v1/batch".into(),
            headers: vec![("authorization", auth.clone())],
            body: body.to_string().into_bytes(),
            expect,
        });
    }
    cases
}

/// Sends a case and says what was wrong with the answer, if anything.
async fn check(app: &TestApp, case: &Case) -> Option<String> {
    let counts = || (app.count("events"), app.count("users"));
    let before = counts();
    let method = reqwest::Method::from_bytes(case.method.as_bytes()).expect("method");
    let mut request = app
        .client
        .request(method, app.url(&case.path))
        .body(case.body.clone());
    for (name, value) in &case.headers {
        // From bytes: some cases send what a header string may not hold (non-ASCII).
        let value = reqwest::header::HeaderValue::from_bytes(value.as_bytes()).expect("header");
        request = request.header(*name, value);
    }
    let answer = app.send(request).await;
    let problem = match &case.expect {
        Expect::Ok if answer.status == 200 => None,
        Expect::Ok => Some(format!(
            "expected 200, got {} {}",
            answer.status, answer.body
        )),
        Expect::Refused(expected) => {
            let got: Option<Value> = serde_json::from_str(&answer.body).ok();
            if answer.status != 200 || got.as_ref() != Some(expected) {
                Some(format!(
                    "expected 200 {expected}, got {} {}",
                    answer.status, answer.body
                ))
            } else if counts() != before {
                Some(format!("stored something: {before:?} -> {:?}", counts()))
            } else {
                None
            }
        }
        Expect::Err(status, message) => {
            let expected = json!({"status": status, "message": message});
            let got: Option<Value> = serde_json::from_str(&answer.body).ok();
            let content_type = answer
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok());
            if answer.status != *status || got.as_ref() != Some(&expected) {
                Some(format!(
                    "expected {expected}, got {} {}",
                    answer.status, answer.body
                ))
            } else if content_type != Some("application/json") {
                Some(format!("content-type {content_type:?}"))
            } else if counts() != before {
                Some(format!("stored something: {before:?} -> {:?}", counts()))
            } else {
                None
            }
        }
    };
    let alive = app.send(app.client.get(app.url("/api/v2/heartbeat"))).await;
    match (problem, alive.status) {
        (None, 200) => None,
        (Some(p), _) => Some(p),
        (None, s) => Some(format!("heartbeat answered {s} after the case")),
    }
}

#[tokio::test]
async fn hostile_inputs_get_exact_refusals_store_nothing_and_leave_the_server_up() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn_with(TestConfig {
        limits: Limits {
            max_body_bytes: MAX_BODY,
            max_batch_bytes: MAX_BATCH_BODY,
            max_batch_items: MAX_BATCH_ITEMS,
            failed_auth_per_ip: 0,
            ..Limits::default()
        },
        ..TestConfig::default()
    })
    .await;
    let mut n = 0;
    let mut ids = Vec::new();
    let mut fresh_id = || {
        n += 1;
        let id = format!("h{n}");
        ids.push(id.clone());
        id
    };
    let mut cases = Vec::new();
    for route in &ROUTES {
        cases.extend(body_cases(route, &app.token, &mut fresh_id));
    }
    cases.extend(field_cases(&app.token, &mut fresh_id));
    cases.extend(request_cases(&app.token));
    cases.extend(read_cases(&app.secret, &app.token));
    cases.extend(segment_cases(&app.token, &app.secret, &mut fresh_id));
    // Every id a case may act on exists first (edit, delete and the like need the user).
    for id in &ids {
        app.call("POST", "users/track", &json!({"id": id}))
            .await
            .assert_success(false);
    }
    let mut failures = Vec::new();
    for case in &cases {
        if let Some(problem) = check(&app, case).await {
            failures.push(format!("{}: {problem}", case.name));
        }
    }
    println!("{} hostile cases run", cases.len());
    assert!(cases.len() > 300, "{} cases", cases.len());
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// What no HTTP library sends: raw bytes on a socket. The server answers (JSON, also where
/// hyper refuses by itself) or closes, and stays up; nothing is stored.
#[tokio::test]
async fn malformed_http_is_answered_or_closed_and_the_server_stays_up() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let token = app.token.clone();
    let requests: Vec<(String, Vec<u8>, Option<u16>)> = vec![
        ("garbage".into(), b"\x00\x01\x02 not http\r\n\r\n".to_vec(), Some(400)),
        ("HTTP/0.9".into(), b"GET /\r\n\r\n".to_vec(), Some(400)),
        ("a header without a colon".into(), b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n".to_vec(), Some(400)),
        ("a huge header".into(), format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(1 << 20)).into_bytes(), Some(431)),
        ("ten thousand headers".into(), format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{}\r\n", "X-A: b\r\n".repeat(10_000)).into_bytes(), Some(431)),
        ("two Content-Lengths".into(), format!("POST /api/v2/events/track?auth_token={token} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}").into_bytes(), Some(400)),
        ("a negative Content-Length".into(), format!("POST /api/v2/events/track?auth_token={token} HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n").into_bytes(), Some(400)),
        ("Content-Length and chunked".into(), format!("POST /api/v2/events/track?auth_token={token} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").into_bytes(), Some(400)),
        ("a bad chunk size".into(), format!("POST /api/v2/events/track?auth_token={token} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").into_bytes(), Some(400)),
        ("a body shorter than its Content-Length".into(), format!("POST /api/v2/events/track?auth_token={token} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{{}}").into_bytes(), None),
    ];
    for (name, bytes, expected) in requests {
        let mut stream = app.raw_connection().await;
        let _ = stream.write_all(&bytes).await;
        let _ = stream.shutdown().await;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            stream.read_to_end(&mut answer),
        )
        .await;
        assert!(
            read.is_ok(),
            "{name}: the server neither answered nor closed"
        );
        let text = String::from_utf8_lossy(&answer);
        if let Some(status) = expected {
            assert!(
                text.starts_with(&format!("HTTP/1.1 {status}")),
                "{name}: {text}"
            );
            // Also what hyper refuses before any route sees it is JSON of the same status.
            let (head, body) = text.split_once("\r\n\r\n").expect("a head");
            assert!(
                head.to_ascii_lowercase()
                    .contains("content-type: application/json"),
                "{name}: {text}"
            );
            let body: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
            assert_eq!(body["status"], status, "{name}: {text}");
        }
        let alive = app.send(app.client.get(app.url("/api/v2/heartbeat"))).await;
        assert_eq!(alive.status, 200, "after {name}");
    }
    assert_eq!(app.count("events"), 0);
}
