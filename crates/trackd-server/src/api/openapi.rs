//! `/openapi.json`: an OpenAPI 3.0 document of every route, built from the same route tables
//! the router is built from ([`VERO_ROUTES`], [`READ_ROUTES`]), so a route cannot be served
//! without being documented or documented without being served (a test walks both).
//!
//! Request schemas describe what a valid body looks like; the server's own validation is
//! stricter in places a schema cannot say (an id or an email, dedup, sizes in bytes).

use std::sync::OnceLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use trackd_core::read::MAX_LIMIT;

use super::destinations::Action;
use super::{
    vero_paths, Handler, ReadRoute, SegmentRoute, DESTINATION_ROUTES, READ_ROUTES, SEGMENT_ROUTES,
    VERO_ROUTES,
};
use trackd_core::segment::Call;
use trackd_core::ProfileOp;

/// `GET /openapi.json`: built once, served as bytes.
pub async fn document() -> Response {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    let text = DOCUMENT.get_or_init(|| build().to_string());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        text.as_str(),
    )
        .into_response()
}

/// The whole document.
pub fn build() -> Value {
    let mut paths = Map::new();
    for (name, allow, handler) in VERO_ROUTES {
        for (path, variant) in vero_paths(name).into_iter().zip(["", "_json", "_slash"]) {
            let mut item = Map::new();
            for method in allow.split(", ") {
                let mut operation = vero_operation(handler);
                operation["operationId"] = operation_id(name, method, variant).into();
                item.insert(method.to_lowercase(), operation);
            }
            paths.insert(path, Value::Object(item));
        }
    }
    for (path, route) in SEGMENT_ROUTES {
        let id = format!("v1_{}", path.trim_start_matches("/v1/"));
        paths.insert(
            path.to_owned(),
            json!({"post": segment_operation(route, &id)}),
        );
    }
    for (path, method, route) in READ_ROUTES {
        let item = json!({ method.to_lowercase(): read_operation(route) });
        paths.insert(path.to_owned(), item);
    }
    for (path, _, methods) in DESTINATION_ROUTES {
        let mut item = Map::new();
        for &(method, action) in methods {
            item.insert(method.to_lowercase(), destination_operation(action));
        }
        paths.insert(path.to_owned(), Value::Object(item));
    }
    for (path, summary) in [
        ("/healthz", "The process is up"),
        ("/readyz", "The store takes writes (503 while commits fail)"),
    ] {
        paths.insert(
            path.to_owned(),
            json!({"get": {
                "operationId": path.trim_start_matches('/'),
                "summary": summary,
                "tags": ["operations"],
                "responses": {"200": success(), "503": error_ref()},
            }}),
        );
    }
    paths.insert(
        "/openapi.json".to_owned(),
        json!({"get": {
            "operationId": "openapi",
            "summary": "This document",
            "tags": ["operations"],
            "responses": {"200": {"description": "OpenAPI 3.0 document",
                "content": {"application/json": {"schema": {"type": "object"}}}}},
        }}),
    );
    paths.insert(
        "/".to_owned(),
        json!({"get": {
            "operationId": "root",
            "summary": "Redirects to the web console at /ui",
            "tags": ["console"],
            "responses": {"303": {"description": "See /ui",
                "headers": {"Location": {"schema": {"type": "string"}}},
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
        }}),
    );
    paths.insert(
        "/ui".to_owned(),
        json!({"get": {
            "operationId": "console",
            "summary": "The web console (sign in with a secret key)",
            "tags": ["console"],
            "responses": {"200": {"description": "The console's page",
                "content": {"text/html": {"schema": {"type": "string"}}}}},
        }}),
    );
    paths.insert(
        "/ui/{file}".to_owned(),
        json!({"get": {
            "operationId": "console_asset",
            "summary": "The console's script and stylesheet (app.js, app.css)",
            "tags": ["console"],
            "parameters": [{"name": "file", "in": "path", "required": true,
                            "schema": {"type": "string"}}],
            "responses": {"200": {"description": "The file",
                "content": {"text/javascript": {"schema": {"type": "string"}}}},
                "404": error_ref()},
        }}),
    );
    paths.insert(
        "/metrics".to_owned(),
        json!({"get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics (on --metrics-listen's address when it is set)",
            "tags": ["operations"],
            "responses": {"200": {"description": "OpenMetrics text",
                "content": {"application/openmetrics-text": {"schema": {"type": "string"}}}}},
        }}),
    );
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "trackd",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Vero Track API v2 compatible event tracking. Tracking routes take \
                a tracking token (query auth_token or tracking_api_key, the same names in the \
                body, or Authorization: Bearer); read routes take a secret key in \
                Authorization: Bearer only; anything shaped like a secret key (sk_ and 32 \
                letters and digits) in a query string is refused (400) on every route. \
                Every error is {\"status\":<code>,\"message\":\
                \"<field>: <problem>\"}. The /v1 routes are Segment's HTTP Tracking API \
                (write key by HTTP Basic), answering {\"success\":true}.",
        },
        "paths": paths,
        "components": components(),
    })
}

fn operation_id(name: &str, method: &str, path_variant: &str) -> String {
    format!(
        "{}_{}{}",
        method.to_lowercase(),
        name.replace('/', "_"),
        path_variant
    )
}

fn vero_operation(handler: Handler) -> Value {
    let (summary, schema) = match handler {
        Handler::Track => ("Track an event", "TrackEvent"),
        Handler::Heartbeat => ("Liveness (Vero's heartbeat)", ""),
        Handler::Profile(op) => match op {
            ProfileOp::Track => ("Create or update a user", "UserTrack"),
            ProfileOp::Edit => ("Merge properties into a user", "UserEdit"),
            ProfileOp::Tags => ("Add and remove tags", "UserTags"),
            ProfileOp::Unsubscribe => ("Unsubscribe a user", "UserRef"),
            ProfileOp::Resubscribe => ("Resubscribe a user", "UserRef"),
            ProfileOp::Delete => ("Delete a user and their events", "UserRef"),
            ProfileOp::Reidentify => ("Change a user's id", "UserReidentify"),
        },
    };
    let mut operation = json!({
        "summary": summary,
        "tags": ["tracking"],
        "responses": responses(matches!(handler, Handler::Heartbeat), false),
    });
    if !schema.is_empty() {
        operation["security"] = json!([{"trackingToken": []}, {"trackingTokenQuery": []}]);
        operation["requestBody"] = json!({
            "required": true,
            "content": {
                "application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}},
            },
        });
    }
    operation
}

fn read_operation(route: ReadRoute) -> Value {
    let id = json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"},
                    "description": "The user's id (or email when the user has no id)"});
    let time = |name: &str, what: &str| {
        json!({"name": name, "in": "query", "schema": {"type": "string"},
               "description": format!("{what} (ISO 8601 or Unix seconds)")})
    };
    let limit = json!({"name": "limit", "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100}});
    let cursor = json!({"name": "cursor", "in": "query", "schema": {"type": "string"},
                        "description": "next_cursor of the previous page of the same query (same filters; limit may change)"});
    let event_name = json!({"name": "event_name", "in": "query", "schema": {"type": "string"}});
    let user_id = json!({"name": "user_id", "in": "query", "schema": {"type": "string"}});
    let (op_id, summary, parameters, ok) = match route {
        ReadRoute::User => (
            "get_user",
            "A user's profile",
            vec![id],
            json_ok("UserProfile"),
        ),
        ReadRoute::UserEvents => (
            "get_user_events",
            "A user's events, newest first, by page",
            vec![
                id,
                event_name,
                time("since", "Events at or after"),
                time("until", "Events before"),
                limit,
                cursor,
            ],
            json_ok("EventPage"),
        ),
        ReadRoute::UserExport => (
            "export_user",
            "A data subject's export: the profile, then every event of the user (NDJSON)",
            vec![id.clone()],
            json!({"description": "The profile's line, then one event per line, newest first",
                   "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}),
        ),
        ReadRoute::Suppress => (
            "suppress_user",
            "Deletes the user and refuses it from now on (every later call naming its id or \
             email: 200 with Trackd-Suppressed: true, nothing stored)",
            vec![id.clone()],
            json_ok("Suppression"),
        ),
        ReadRoute::Unsuppress => (
            "unsuppress_user",
            "Lifts a suppression (404 when the id is not suppressed)",
            vec![id.clone()],
            json_ok("Suppression"),
        ),
        ReadRoute::Project => (
            "get_project",
            "The key's project: its name and retention",
            vec![],
            json_ok("ProjectInfo"),
        ),
        ReadRoute::Audit => (
            "get_audit",
            "The project's audit log, newest first, by page",
            vec![
                time("since", "Entries at or after"),
                limit.clone(),
                cursor.clone(),
            ],
            json_ok("AuditPage"),
        ),
        ReadRoute::Events => (
            "get_events",
            "Events, newest first, by page",
            vec![
                event_name,
                user_id,
                time("since", "Events at or after"),
                time("until", "Events before"),
                limit,
                cursor,
            ],
            json_ok("EventPage"),
        ),
        ReadRoute::Export => (
            "export_events",
            "Every event as NDJSON, oldest first by receive time",
            vec![
                time("since", "Received at or after"),
                time("until", "Received before"),
            ],
            json!({"description": "One event per line",
                   "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}),
        ),
        ReadRoute::Import => (
            "import_events",
            "Import NDJSON (export lines restored, track bodies ingested)",
            vec![json!({"name": "dedup", "in": "query",
                        "schema": {"type": "boolean", "default": true}})],
            json_ok("ImportSummary"),
        ),
        ReadRoute::Live => (
            "live_events",
            "Events as they are committed, pushed as NDJSON (the console's live view)",
            vec![event_name.clone(), user_id.clone()],
            json!({"description": "An endless NDJSON stream: {\"type\":\"event\",\"event\":{…}}, \
                   {\"type\":\"duplicates\",\"count\":n}, heartbeats",
                   "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}),
        ),
        ReadRoute::Stats => (
            "get_event_stats",
            "Counts per event name per bucket, and running totals",
            vec![
                time("since", "Buckets at or after"),
                time("until", "Buckets before"),
                json!({"name": "interval", "in": "query",
                       "schema": {"type": "string", "enum": ["hour", "day"]}}),
            ],
            json_ok("Stats"),
        ),
    };
    let mut operation = json!({
        "operationId": op_id,
        "summary": summary,
        "tags": ["read"],
        "security": [{"secretKey": []}],
        "parameters": parameters,
        "responses": responses(false, true),
    });
    operation["responses"]["200"] = ok;
    if route == ReadRoute::Import {
        // NDJSON whatever the content type says.
        operation["requestBody"] = json!({"required": true, "content": {
            "text/plain": {"schema": {"type": "string"}},
            "application/x-ndjson": {"schema": {"type": "string"}}}});
    }
    operation
}

fn destination_operation(action: Action) -> Value {
    let name = json!({"name": "name", "in": "path", "required": true,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}});
    let (op_id, summary, ok) = match action {
        Action::List => (
            "list_destinations",
            "The project's destinations and where each stands",
            json_ok("DestinationList"),
        ),
        Action::Create => (
            "create_destination",
            "Adds a destination (a webhook's signing secret is in this answer only)",
            json_ok("Destination"),
        ),
        Action::Show => ("get_destination", "One destination", json_ok("Destination")),
        Action::Remove => (
            "remove_destination",
            "Removes a destination, its cursor and its dead letters",
            success(),
        ),
        Action::Pause => (
            "pause_destination",
            "Stops delivering (the backlog grows)",
            json_ok("Destination"),
        ),
        Action::Resume => (
            "resume_destination",
            "Delivers again",
            json_ok("Destination"),
        ),
        Action::Replay => (
            "replay_destination",
            "Sends again every kept item received at or after since",
            json_ok("Destination"),
        ),
        Action::Redrive => (
            "redrive_destination",
            "Sends the dead letters again",
            json_ok("Destination"),
        ),
        Action::DeadLetters => (
            "list_dead_letters",
            "The items a receiver refused for good, in position order, with its answer",
            json_ok("DeadLetterList"),
        ),
    };
    let mut parameters = Vec::new();
    if !matches!(action, Action::List | Action::Create) {
        parameters.push(name);
    }
    if action == Action::DeadLetters {
        parameters.push(json!({"name": "after", "in": "query", "required": false,
            "schema": {"type": "integer", "minimum": 0},
            "description": "List the dead letters after this position (next_after of the page before)"}));
        parameters.push(json!({"name": "limit", "in": "query", "required": false,
            "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}));
    }
    if action == Action::Replay {
        parameters.push(json!({"name": "since", "in": "query", "required": true,
            "schema": {"type": "string"},
            "description": "Receive time to replay from (ISO 8601 or Unix seconds)"}));
    }
    let mut responses = responses(false, true);
    responses["200"] = ok.clone();
    if action == Action::Create {
        responses["201"] = ok;
        if let Some(r) = responses.as_object_mut() {
            r.remove("200");
        }
        responses["409"] = error_ref();
    }
    if !matches!(action, Action::List | Action::Create) {
        responses["404"] = error_ref();
    }
    let mut operation = json!({
        "operationId": op_id,
        "summary": summary,
        "tags": ["destinations"],
        "security": [{"secretKey": []}],
        "parameters": parameters,
        "responses": responses,
    });
    if action == Action::Create {
        operation["requestBody"] = json!({"required": true, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/DestinationSpec"}}}});
    }
    operation
}

fn segment_operation(route: SegmentRoute, id: &str) -> Value {
    let (summary, schema) = match route {
        SegmentRoute::Call(call) => match call {
            Call::Track => ("Segment track: an event", "SegmentTrack"),
            Call::Identify => (
                "Segment identify: create or update a user",
                "SegmentIdentify",
            ),
            Call::Page => ("Segment page: the event Viewed <name> Page", "SegmentPage"),
            Call::Screen => (
                "Segment screen: the event Viewed <name> Screen",
                "SegmentPage",
            ),
            Call::Group => ("Segment group: sets the user's group", "SegmentGroup"),
            Call::Alias => ("Segment alias: previousId becomes userId", "SegmentAlias"),
        },
        SegmentRoute::Batch => (
            "Segment batch: the valid calls commit together, the refused ones are listed",
            "SegmentBatch",
        ),
        SegmentRoute::Metrics => ("analytics.js usage metrics (accepted, not kept)", ""),
    };
    let mut responses = Map::new();
    responses.insert("200".into(), json_ok("SegmentSuccess"));
    if schema.is_empty() {
        for code in ["400", "408", "413", "415", "429", "503"] {
            responses.insert(code.into(), error_ref());
        }
        return json!({
            "operationId": id, "summary": summary, "tags": ["segment"],
            "requestBody": {"content": {"text/plain": {"schema": {"type": "string"}}}},
            "responses": responses,
        });
    }
    for code in [
        "400", "401", "403", "404", "405", "408", "413", "415", "429", "503",
    ] {
        responses.insert(code.into(), error_ref());
    }
    json!({
        "operationId": id,
        "summary": summary,
        "tags": ["segment"],
        "security": [{"writeKey": []}],
        "requestBody": {"required": true, "content": {"application/json": {
            "schema": {"$ref": format!("#/components/schemas/{schema}")}}}},
        "responses": responses,
    })
}

fn json_ok(schema: &str) -> Value {
    json!({"description": "OK", "content": {"application/json": {
        "schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn success() -> Value {
    json!({"description": "Done (for writes: committed)",
           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Success"}}}})
}

fn error_ref() -> Value {
    json!({"$ref": "#/components/responses/Error"})
}

fn responses(heartbeat: bool, read: bool) -> Value {
    let mut r = Map::new();
    r.insert("200".into(), success());
    if !heartbeat {
        for code in ["400", "401", "408", "413", "415"] {
            r.insert(code.into(), error_ref());
        }
    }
    // Every route: a client address past its in-flight bound (or a rate).
    r.insert("429".into(), error_ref());
    if read {
        r.insert("403".into(), error_ref());
    }
    for code in ["404", "405", "503"] {
        r.insert(code.into(), error_ref());
    }
    Value::Object(r)
}

/// The `/v1` schemas.
fn segment_schemas() -> Value {
    let string_or_int = json!({"oneOf": [{"type": "string", "minLength": 1}, {"type": "integer"}]});
    json!({
            "SegmentSuccess": {"type": "object", "required": ["success"], "properties": {
                "success": {"type": "boolean", "enum": [true]},
                "rejected": {"type": "array", "items": {"type": "object",
                    "required": ["index", "message"], "properties": {
                        "index": {"type": "integer"},
                        "message": {"type": "string",
                                    "description": "batch[i].<field>: <problem>"}}}}}},
            "SegmentTrack": segment_call(json!({"event": {"type": "string", "minLength": 1},
                "properties": {"type": "object"}}), &["event"]),
            "SegmentIdentify": segment_call(json!({"traits": {"type": "object"}}), &[]),
            "SegmentPage": segment_call(json!({"name": {"type": "string"},
                "category": {"type": "string"}, "properties": {"type": "object"}}), &[]),
            "SegmentGroup": segment_call(json!({"groupId": string_or_int,
                "traits": {"type": "object"}}), &["groupId"]),
            "SegmentAlias": segment_call(json!({"previousId": string_or_int}), &["previousId", "userId"]),
            "SegmentBatch": {"type": "object", "required": ["batch"], "properties": {
                "batch": {"type": "array", "maxItems": 2500, "items": {"type": "object",
                    "required": ["type"], "properties": {"type": {"type": "string",
                        "enum": ["track", "identify", "page", "screen", "group", "alias"]}}}},
                "sentAt": {"type": "string", "format": "date-time"},
                "context": {"type": "object"},
                "writeKey": {"type": "string"}}},
    })
}

/// A Segment call's schema: the fields every call has, and its own.
fn segment_call(own: Value, required: &[&str]) -> Value {
    let string_or_int = json!({"oneOf": [{"type": "string", "minLength": 1}, {"type": "integer"}]});
    let mut properties = json!({
        "userId": string_or_int,
        "anonymousId": string_or_int,
        "messageId": {"type": "string", "maxLength": 100},
        "timestamp": {"type": "string", "format": "date-time"},
        "originalTimestamp": {"type": "string", "format": "date-time"},
        "sentAt": {"type": "string", "format": "date-time"},
        "context": {"type": "object"},
        "writeKey": {"type": "string"},
    });
    if let (Some(all), Value::Object(own)) = (properties.as_object_mut(), own) {
        all.extend(own);
    }
    json!({"type": "object", "required": required, "properties": properties,
           "description": "userId or anonymousId is required (alias: previousId and userId)"})
}

fn components() -> Value {
    let mut all = base_components();
    if let (Some(schemas), Value::Object(segment)) = (
        all.get_mut("schemas").and_then(Value::as_object_mut),
        segment_schemas(),
    ) {
        schemas.extend(segment);
    }
    all
}

fn base_components() -> Value {
    let string_or_int = json!({"oneOf": [{"type": "string", "minLength": 1}, {"type": "integer"}]});
    let email = json!({"type": "string", "format": "email", "nullable": true});
    let tags = json!({"type": "array", "items": {"type": "string", "minLength": 1}});
    let mut components = json!({
        "securitySchemes": {
            "trackingToken": {"type": "http", "scheme": "bearer",
                              "description": "A tracking token (tk_...)"},
            "trackingTokenQuery": {"type": "apiKey", "in": "query", "name": "tracking_api_key"},
            "writeKey": {"type": "http", "scheme": "basic",
                         "description": "Segment's write key: a tracking token as the user \
                             name, empty password (or writeKey in the body)"},
            "secretKey": {"type": "http", "scheme": "bearer",
                          "description": "A secret key (sk_...), never in a query string"},
        },
        "responses": {
            "Error": {"description": "Refused; nothing stored. 408, 429 and 503 carry Retry-After",
                      "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        },
        "schemas": {
            "Success": {"type": "object", "required": ["status", "message"], "properties": {
                "status": {"type": "integer", "enum": [200]},
                "message": {"type": "string", "enum": ["Success."]}}},
            "Error": {"type": "object", "required": ["status", "message"], "properties": {
                "status": {"type": "integer"},
                "message": {"type": "string", "description": "<field path>: <what is wrong>"}}},
            "Identity": {"type": "object", "properties": {"id": string_or_int, "email": email},
                         "description": "An id or an email is required; other keys are ignored"},
            "TrackEvent": {"type": "object", "required": ["event_name"], "properties": {
                "identity": {"$ref": "#/components/schemas/Identity"},
                "event_name": {"type": "string", "minLength": 1, "maxLength": 255},
                "data": {"type": "object"},
                "extras": {"type": "object", "properties": {
                    "source": {"type": "string"},
                    "created_at": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
                    "check_id": {"type": "string"}}},
                "created_at": {"oneOf": [{"type": "string"}, {"type": "integer"}]}}},
            "UserTrack": {"type": "object", "properties": {
                "id": string_or_int, "email": email,
                "phone_number": {"type": "string"},
                "channels": {"type": "array", "items": {"type": "object"}},
                "data": {"type": "object"}}},
            "UserRef": {"type": "object", "properties": {"id": string_or_int, "email": email}},
            "UserEdit": {"type": "object", "required": ["changes"], "properties": {
                "id": string_or_int, "email": email, "changes": {"type": "object"}}},
            "UserTags": {"type": "object", "properties": {
                "id": string_or_int, "email": email, "add": tags, "remove": tags}},
            "UserReidentify": {"type": "object", "required": ["id", "new_id"], "properties": {
                "id": string_or_int, "new_id": string_or_int}},
            "UserProfile": {"type": "object"},
            "EventPage": {"type": "object", "required": ["events"], "properties": {
                "events": {"type": "array", "items": {"type": "object"}},
                "next_cursor": {"type": "string", "nullable": true}}},
            "ImportSummary": {"type": "object"},
            "Stats": {"type": "object"},
            "DestinationList": {"type": "object", "required": ["destinations"], "properties": {
                "destinations": {"type": "array",
                    "items": {"$ref": "#/components/schemas/Destination"}}}},
            "Destination": {"type": "object", "required": ["name", "kind", "state", "backlog",
                "oldest_undelivered_secs", "delivered", "dead_letters"], "properties": {
                "name": {"type": "string"},
                "kind": {"type": "string", "enum": ["webhook", "vero", "nats"]},
                "url": {"type": "string"},
                "batch": {"type": "integer"},
                "events": {"type": "array", "items": {"type": "string"}},
                "only": {"type": "string", "enum": ["all", "events", "users"]},
                "subject_prefix": {"type": "string", "nullable": true},
                "state": {"type": "string", "enum": ["running", "retrying", "paused"]},
                "paused_reason": {"type": "string", "nullable": true},
                "backlog": {"type": "integer"},
                "oldest_undelivered_secs": {"type": "integer"},
                "delivered": {"type": "integer"},
                "dead_letters": {"type": "integer"},
                "last_error": {"type": "string", "nullable": true},
                "created_at": {"type": "string"},
                "secret": {"type": "string", "description": "whsec_…, in the create answer only"}}},
            "DeadLetterList": {"type": "object", "required": ["dead_letters", "next_after"],
                "properties": {
                "dead_letters": {"type": "array", "items": {"type": "object",
                    "required": ["item", "position", "status", "response", "failed_at", "redrive"],
                    "properties": {
                    "item": {"type": "string", "description": "trk_<project>_<position>"},
                    "position": {"type": "integer"},
                    "status": {"type": "integer"},
                    "response": {"type": "string", "description": "the first KiB of the answer"},
                    "failed_at": {"type": "string"},
                    "redrive": {"type": "boolean", "description": "marked to be sent again"}}}},
                "next_after": {"type": "integer", "nullable": true}}},
            "DestinationSpec": {"type": "object", "required": ["name", "kind"],
                "additionalProperties": false, "properties": {
                "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                "kind": {"type": "string", "enum": ["webhook", "vero", "nats"]},
                "url": {"type": "string", "description": "http(s):// (webhook, vero), nats:// (nats)"},
                "batch": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                "events": {"type": "array", "items": {"type": "string"}},
                "only": {"type": "string", "enum": ["all", "events", "users"]},
                "token": {"type": "string", "description": "Vero auth token (vero only)"},
                "subject_prefix": {"type": "string", "description": "nats only"}}},
        },
    });
    // Beside the rest: one macro call of everything passes serde_json's recursion limit.
    components["schemas"]["Suppression"] = json!({"type": "object",
        "required": ["suppressed"], "properties": {
        "suppressed": {"type": "boolean"},
        "deleted": {"type": "boolean",
                    "description": "a user of that id existed and was deleted"}}});
    components["schemas"]["ProjectInfo"] = json!({"type": "object",
        "required": ["name", "retention"], "properties": {
        "name": {"type": "string"},
        "retention": {"type": "string", "description": "90d, 12h, …; off: kept for ever"}}});
    components["schemas"]["AuditPage"] = json!({"type": "object",
        "required": ["entries", "next_cursor"], "properties": {
        "entries": {"type": "array", "items": {"type": "object", "properties": {
            "id": {"type": "integer"}, "at": {"type": "string"},
            "actor": {"type": "string"}, "action": {"type": "string"},
            "target": {"type": "string"}}}},
        "next_cursor": {"type": "string", "nullable": true}}});
    components
}
