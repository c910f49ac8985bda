//! Delivery to a Vero relay and to NATS JetStream (DESIGN §8), black-box: a recording fake
//! Vero (an axum server on port 0 in the test) and a real `nats-server -js` started per test
//! on a free port. Runs on both stores, except the kill -9 test (a child process on a SQLite
//! data directory).
//!
//! Without `nats-server` (on the PATH, or in `/usr/sbin` where Debian puts it) the NATS
//! tests print a SKIPPED notice and return, unless `TRACKD_TEST_REQUIRE_NATS=1` (CI), where
//! they fail.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{Answer, TestApp};

// ---------------------------------------------------------------------------------------
// The fake Vero.

/// One request the fake Vero received, and what it answered.
#[derive(Clone, Debug, PartialEq)]
struct Call {
    method: String,
    /// Under the fake's base (`/events/track`).
    route: String,
    query: String,
    content_type: Option<String>,
    body: Value,
    status: u16,
}

/// Decides the fake's answer to a call, seeing the calls before it.
type Answerer = Box<dyn FnMut(&Call, &[Call]) -> (u16, String) + Send>;

#[derive(Clone)]
struct FakeState {
    calls: Arc<Mutex<Vec<Call>>>,
    answer: Arc<Mutex<Answerer>>,
}

const SUCCESS: &str = r#"{"status":200,"message":"Success."}"#;

/// A recording Vero on port 0: every request is kept (method, route, query, body) with the
/// answer it got; the answer is 200 `Success.` unless [`FakeVero::answer_with`] says else.
struct FakeVero {
    /// The base URL a `vero` destination is given (`http://127.0.0.1:PORT/api/v2`).
    base: String,
    state: FakeState,
    server: tokio::task::JoinHandle<()>,
}

async fn record(
    axum::extract::State(s): axum::extract::State<FakeState>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let method = request.method().as_str().to_owned();
    let route = request
        .uri()
        .path()
        .strip_prefix("/api/v2")
        .unwrap_or("(outside the base)")
        .to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let content_type = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    let mut call = Call {
        method,
        route,
        query,
        content_type,
        body,
        status: 0,
    };
    let (status, text) = {
        let mut calls = s.calls.lock().expect("lock");
        let answer = (s.answer.lock().expect("lock"))(&call, &calls);
        call.status = answer.0;
        calls.push(call);
        answer
    };
    (
        axum::http::StatusCode::from_u16(status).expect("status"),
        [("content-type", "application/json")],
        text,
    )
        .into_response()
}

impl FakeVero {
    async fn start() -> FakeVero {
        let state = FakeState {
            calls: Arc::default(),
            answer: Arc::new(Mutex::new(Box::new(|_: &Call, _: &[Call]| {
                (200, SUCCESS.to_owned())
            }))),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = axum::Router::new()
            .fallback(record)
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("fake Vero runs");
        });
        FakeVero {
            base: format!("http://{addr}/api/v2"),
            state,
            server,
        }
    }

    fn answer_with(&self, f: impl FnMut(&Call, &[Call]) -> (u16, String) + Send + 'static) {
        *self.state.answer.lock().expect("lock") = Box::new(f);
    }

    /// Every call so far, in arrival order, whatever it was answered.
    fn calls(&self) -> Vec<Call> {
        self.state.calls.lock().expect("lock").clone()
    }

    /// The calls answered 2xx, in arrival order, as (method, route, body).
    fn acknowledged(&self) -> Vec<(String, String, Value)> {
        self.calls()
            .into_iter()
            .filter(|c| (200..300).contains(&c.status))
            .map(|c| (c.method, c.route, c.body))
            .collect()
    }
}

impl Drop for FakeVero {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A Vero call as the fake should see it.
fn vero(method: &str, route: &str, body: Value) -> (String, String, Value) {
    (method.to_owned(), route.to_owned(), body)
}

/// An `events/track` call as the relay sends it.
fn vero_event(identity: Value, name: &str, data: Value, extras: Value) -> (String, String, Value) {
    vero(
        "POST",
        "/events/track",
        json!({"identity": identity, "event_name": name, "data": data, "extras": extras}),
    )
}

// ---------------------------------------------------------------------------------------
// Destinations through the API.

/// `POST /api/v2/destinations` with the secret key; asserts the 201.
async fn add_destination(app: &TestApp, spec: Value) -> Value {
    let answer = app
        .send(
            app.client
                .post(app.url("/api/v2/destinations"))
                .bearer_auth(&app.secret)
                .header("content-type", "application/json")
                .body(spec.to_string()),
        )
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    answer.json()
}

/// `POST /api/v2/destinations/{name}/{action}` with the secret key.
async fn destination_action(app: &TestApp, name: &str, action: &str) -> Answer {
    app.send(
        app.client
            .post(app.url(&format!("/api/v2/destinations/{name}/{action}")))
            .bearer_auth(&app.secret),
    )
    .await
}

/// `GET /api/v2/destinations/{name}`.
async fn destination(app: &TestApp, name: &str) -> Value {
    app.read_json(&format!("/api/v2/destinations/{name}")).await
}

/// Polls the destination until `done` holds; panics with `what` and the last state after
/// `within`.
async fn wait_for_destination(
    app: &TestApp,
    name: &str,
    within: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let d = destination(app, name).await;
        if done(&d) {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "destination {name}: not {what} after {within:?}: {d}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every committed item was delivered (nothing after the cursor).
async fn drained(app: &TestApp, name: &str, within: Duration) -> Value {
    wait_for_destination(app, name, within, "drained", |d| d["backlog"] == 0).await
}

// ---------------------------------------------------------------------------------------
// The reference requests.

/// One request of the reference file.
struct Recorded {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

/// The 41 requests of `tests/fixtures/reference-client-requests.jsonl` (a verbatim copy of
/// the shared `client-requests.jsonl` the issue names), with `TOKEN_abc123` replaced by
/// `token` wherever it appears.
fn reference_requests(token: &str) -> Vec<Recorded> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/reference-client-requests.jsonl");
    let text = std::fs::read_to_string(&path).expect("the reference requests");
    let requests: Vec<Recorded> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let r: Value = serde_json::from_str(line).expect("a reference line");
            let text = |v: &Value| v.as_str().expect("a string").replace("TOKEN_abc123", token);
            Recorded {
                method: text(&r["method"]),
                path: text(&r["path"]),
                headers: r["headers"]
                    .as_object()
                    .expect("headers")
                    .iter()
                    .map(|(k, v)| (k.clone(), text(v)))
                    .collect(),
                body: text(&r["body"]),
            }
        })
        .collect();
    assert_eq!(requests.len(), 41);
    requests
}

/// Sends one reference request to trackd.
async fn replay(app: &TestApp, r: &Recorded) -> Answer {
    let method = reqwest::Method::from_bytes(r.method.as_bytes()).expect("method");
    let mut request = app.client.request(method, app.url(&r.path));
    for (k, v) in &r.headers {
        request = request.header(k, v);
    }
    app.send(request.body(r.body.clone())).await
}

/// Asserts a reference request's answer: a 2xx preflight, else Vero's 200.
#[track_caller]
fn assert_accepted(r: &Recorded, answer: &Answer) {
    if r.method == "OPTIONS" {
        assert!(
            (200..300).contains(&answer.status),
            "{} {}: {}",
            r.method,
            r.path,
            answer.status
        );
    } else {
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (200, SUCCESS),
            "{} {}",
            r.method,
            r.path
        );
        assert!(answer.headers.get("trackd-duplicate").is_none());
    }
}

/// Receive time of everything in these tests (the manual clock does not move).
const NOW: &str = "2026-11-26T12:00:00.000000Z";
const CHROMIUM: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
                        HeadlessChrome/156.0.0.0 Safari/537.36";

/// The Vero call each reference request becomes, by its index in the file (0-based); the
/// heartbeat (11) and the four preflights (21, 23, 26, 28) change nothing and are absent.
/// Each is what trackd stored for it: bodies normalised (ids as strings, no credential,
/// `email: null` left out, the JavaScript SDK's empty `channels` left out, tags as two
/// lists, times in UTC), events with the identity of their user, the stored data and
/// `extras` holding `source` (when given) and the event's time.
fn reference_calls() -> Vec<(usize, (String, String, Value))> {
    let web_data = json!({"language": "en-US", "timezone": 0, "ianaTimezone": "UTC",
                          "userAgent": CHROMIUM});
    let mut web_product = web_data.clone();
    web_product["product_name"] = json!("Red T-shirt");
    let mut web_profile = web_data.clone();
    web_profile["first_name"] = json!("Wen");
    let ann = json!({"id": "42", "email": "ann@example.com"});
    let js = json!({"id": "js-1", "email": "js@example.com"});
    let web = json!({"id": "web-1", "email": "web@example.com"});
    vec![
        (
            0,
            vero(
                "POST",
                "/users/track",
                json!({"id": "42", "email": "ann@example.com", "data": {"first_name": "Ann"}}),
            ),
        ),
        (
            1,
            vero(
                "POST",
                "/users/track",
                json!({"id": "43", "data": {"x": 1}}),
            ),
        ),
        (
            2,
            vero(
                "PUT",
                "/users/edit",
                json!({"id": "42", "changes": {"plan": "pro"}}),
            ),
        ),
        (
            3,
            vero(
                "PUT",
                "/users/tags/edit",
                json!({"id": "42", "add": ["vip", "beta"], "remove": []}),
            ),
        ),
        (
            4,
            vero(
                "PUT",
                "/users/tags/edit",
                json!({"id": "42", "add": [], "remove": ["beta"]}),
            ),
        ),
        (
            5,
            vero_event(
                ann.clone(),
                "Viewed product",
                json!({"product": "Red T-shirt", "price": 20.5}),
                json!({"created_at": NOW}),
            ),
        ),
        (
            6,
            vero_event(
                json!({"id": "43"}),
                "Signed up",
                json!({}),
                json!({"created_at": NOW}),
            ),
        ),
        (7, vero("POST", "/users/unsubscribe", json!({"id": "42"}))),
        (8, vero("POST", "/users/resubscribe", json!({"id": "42"}))),
        (
            9,
            vero(
                "PUT",
                "/users/reidentify",
                json!({"id": "42", "new_id": "4242"}),
            ),
        ),
        // Sent with DELETE by the Python client: Vero's documented method is POST.
        (10, vero("POST", "/users/delete", json!({"id": "43"}))),
        (
            12,
            vero(
                "POST",
                "/users/track",
                json!({"id": "js-1", "email": "js@example.com",
                       "channels": [{"type": "push", "address": "DEVICE_TOKEN", "platform": "android"}],
                       "data": {"first_name": "Jo", "age": 30}}),
            ),
        ),
        (
            13,
            vero_event(
                js.clone(),
                "Added to cart",
                json!({"sku": "A-1", "qty": 2}),
                json!({"created_at": "2026-11-26T11:58:05.265000Z"}),
            ),
        ),
        (
            14,
            vero_event(
                js.clone(),
                "Purchased item",
                json!({"sku": "A-1"}),
                json!({"source": "checkout", "created_at": "2023-05-30T04:46:31.000000Z"}),
            ),
        ),
        (
            15,
            vero(
                "PUT",
                "/users/tags/edit",
                json!({"id": "js-1", "add": ["trial"], "remove": []}),
            ),
        ),
        (
            16,
            vero(
                "PUT",
                "/users/tags/edit",
                json!({"id": "js-1", "add": [], "remove": ["trial"]}),
            ),
        ),
        (
            17,
            vero(
                "PUT",
                "/users/reidentify",
                json!({"id": "js-1", "new_id": "js-2"}),
            ),
        ),
        (
            18,
            vero("POST", "/users/unsubscribe", json!({"id": "js-2"})),
        ),
        (
            19,
            vero("POST", "/users/resubscribe", json!({"id": "js-2"})),
        ),
        (20, vero("POST", "/users/delete", json!({"id": "js-2"}))),
        (
            22,
            vero(
                "POST",
                "/users/track",
                json!({"id": "web-1", "email": "web@example.com", "data": web_profile}),
            ),
        ),
        (
            24,
            vero_event(
                web.clone(),
                "Visited site",
                web_data,
                json!({"source": "127.0.0.1", "created_at": "2026-11-26T11:58:34.206000Z"}),
            ),
        ),
        (
            25,
            vero_event(
                web,
                "Viewed product",
                web_product,
                json!({"source": "127.0.0.1", "created_at": "2026-11-26T11:58:34.216000Z"}),
            ),
        ),
        (
            27,
            vero(
                "PUT",
                "/users/tags/edit",
                json!({"id": "web-1", "add": ["newsletter"], "remove": []}),
            ),
        ),
        (
            29,
            vero("POST", "/users/unsubscribe", json!({"id": "web-1"})),
        ),
        (
            30,
            vero_event(
                json!({"id": "rb-1", "email": "rb@example.com"}),
                "Purchased item",
                json!({"price": 10}),
                json!({"created_at": NOW}),
            ),
        ),
        (
            31,
            vero(
                "PUT",
                "/users/tags/edit",
                json!({"id": "rb-1", "add": ["vip"], "remove": []}),
            ),
        ),
        (32, vero("POST", "/users/delete", json!({"id": "rb-1"}))),
        // Unknown until now: the unsubscribe creates rb-2, so the choice is kept.
        (
            33,
            vero("POST", "/users/unsubscribe", json!({"id": "rb-2"})),
        ),
        (
            34,
            vero_event(
                json!({"id": "1234", "email": "f@example.com"}),
                "Viewed product",
                json!({"price": 20}),
                json!({"source": "web", "created_at": NOW}),
            ),
        ),
        (
            35,
            vero(
                "PUT",
                "/users/tags/edit",
                json!({"id": "1234", "add": ["prospect"], "remove": []}),
            ),
        ),
        (
            36,
            vero(
                "PUT",
                "/users/reidentify",
                json!({"id": "1234", "new_id": "5678"}),
            ),
        ),
        (
            37,
            vero_event(
                json!({"id": "rs-1", "email": "rs@example.com"}),
                "Order Completed",
                json!({"revenue": 42}),
                json!({"created_at": NOW}),
            ),
        ),
        (
            38,
            vero_event(
                json!({"id": "sg-1", "email": "sg@example.com"}),
                "viewed_page",
                json!({"userAgent": "Mozilla/5.0"}),
                json!({"source": "segment", "created_at": "2014-01-01T00:00:00.000000Z"}),
            ),
        ),
        (
            39,
            vero_event(
                json!({"id": "nd-1", "email": "nd@example.com"}),
                "Signed up",
                json!({}),
                json!({"created_at": NOW}),
            ),
        ),
        (
            40,
            vero_event(
                json!({"id": "1000", "email": "test@example.com"}),
                "Viewed product",
                json!({"product_name": "Red T-shirt",
                       "product_url": "http://www.yourdomain.com/products/red-t-shirt"}),
                json!({"source": "Segment.com", "created_at": "2023-05-30T04:46:31.000000Z"}),
            ),
        ),
    ]
}

/// A query string's pairs, percent-decoded.
fn query_pairs(query: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8()
            .expect("UTF-8")
            .into_owned()
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Every call the fake got carried the destination's token in the query, nothing else, and
/// a JSON body.
#[track_caller]
fn assert_token_and_json(calls: &[Call], token: &str) {
    for c in calls {
        assert_eq!(
            query_pairs(&c.query),
            vec![("auth_token".to_owned(), token.to_owned())],
            "{c:?}"
        );
        assert_eq!(c.content_type.as_deref(), Some("application/json"), "{c:?}");
    }
}

/// The project's row id (item ids are `trk_<project>_<position>`).
async fn project_id(app: &TestApp) -> i64 {
    let store = app.store.as_ref().expect("running");
    store.project("test").await.expect("project").id.get()
}

/// The calls with each event's `extras.check_id` taken out, after checking it: the item's
/// id, `trk_<project>_<position>`, positions rising in the order given (commit order).
/// Other calls have none.
#[track_caller]
fn without_check_ids(
    project: i64,
    calls: &[(String, String, Value)],
) -> Vec<(String, String, Value)> {
    let prefix = format!("trk_{project}_");
    let mut last = 0;
    calls
        .iter()
        .map(|(method, route, body)| {
            let mut body = body.clone();
            if route == "/events/track" {
                let id = body["extras"]
                    .as_object_mut()
                    .and_then(|extras| extras.remove("check_id"))
                    .unwrap_or_else(|| panic!("no extras.check_id: {body}"));
                let pos: i64 = id
                    .as_str()
                    .and_then(|id| id.strip_prefix(&prefix))
                    .and_then(|pos| pos.parse().ok())
                    .unwrap_or_else(|| panic!("extras.check_id {id} is not {prefix}<pos>"));
                assert!(pos > last, "positions out of commit order: {calls:?}");
                last = pos;
            } else {
                assert!(body.get("extras").is_none(), "{body}");
            }
            (method.clone(), route.clone(), body)
        })
        .collect()
}

/// Shows two lists of calls one per line, for a failed comparison.
fn lines(calls: &[(String, String, Value)]) -> String {
    calls
        .iter()
        .map(|(m, r, b)| format!("  {m} {r} {b}\n"))
        .collect()
}

#[track_caller]
fn assert_calls(got: &[(String, String, Value)], expected: &[(String, String, Value)]) {
    assert!(
        got == expected,
        "the fake Vero got:\n{}expected:\n{}",
        lines(got),
        lines(expected)
    );
}

// ---------------------------------------------------------------------------------------
// Vero relay.

/// The 41 reference requests, each delivered before the next is sent (so the order is
/// total and nothing depends on timing): the fake Vero gets exactly the state-changing
/// calls, once each, in order, with the destination's token; no heartbeat, no preflight.
/// Then client retries inside the dedup window (answered 200, `Trackd-Duplicate`), calls
/// for unknown users (404), calls that change nothing and invalid ones: none is forwarded,
/// except the retry of an event whose user was deleted since (trackd accepts it anew).
#[tokio::test]
async fn vero_relay_forwards_each_accepted_reference_request_once_in_order() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let fake = FakeVero::start().await;
    let created = add_destination(
        &app,
        json!({"name": "vero", "kind": "vero", "url": fake.base, "token": "VERO_TOKEN"}),
    )
    .await;
    assert_eq!(
        (
            &created["name"],
            &created["kind"],
            &created["url"],
            &created["state"]
        ),
        (
            &json!("vero"),
            &json!("vero"),
            &json!(fake.base),
            &json!("running")
        )
    );
    assert!(created.get("token").is_none(), "the token is never shown");
    assert!(
        created.get("secret").is_none(),
        "no signing secret for vero"
    );

    let requests = reference_requests(&app.token);
    for r in &requests {
        let answer = replay(&app, r).await;
        assert_accepted(r, &answer);
        drained(&app, "vero", Duration::from_secs(15)).await;
    }
    let project = project_id(&app).await;
    let mut expected: Vec<_> = reference_calls().into_iter().map(|(_, c)| c).collect();
    assert_eq!(expected.len(), 36);
    assert_calls(&without_check_ids(project, &fake.acknowledged()), &expected);

    // A client's retries of the events it sent: duplicates, not forwarded (42 and 1234
    // were renamed since: the retry with the old id is still a duplicate).
    for i in [5, 24, 25, 34, 37, 38, 39, 40] {
        let answer = replay(&app, &requests[i]).await;
        answer.assert_success(true);
    }
    // 43 was deleted with its dedup records: its retry is a new event, and is forwarded.
    replay(&app, &requests[6]).await.assert_success(false);
    expected.push(vero_event(
        json!({"id": "43"}),
        "Signed up",
        json!({}),
        json!({"created_at": NOW}),
    ));
    // Refused: unknown users (404), an invalid body (400), no credential (401).
    for (method, route, body, status) in [
        (
            "PUT",
            "users/edit",
            json!({"id": "nobody", "changes": {"a": 1}}),
            404,
        ),
        (
            "PUT",
            "users/tags/edit",
            json!({"id": "nobody", "add": ["x"]}),
            404,
        ),
        (
            "PUT",
            "users/reidentify",
            json!({"id": "nobody", "new_id": "somebody"}),
            404,
        ),
        ("POST", "users/delete", json!({"id": "43x"}), 404),
        (
            "POST",
            "events/track",
            json!({"identity": {"id": "42", "email": "not an email"}, "event_name": "x"}),
            400,
        ),
    ] {
        let answer = app.call(method, route, &body).await;
        assert_eq!(answer.status, status, "{route} {body}: {}", answer.body);
    }
    let answer = app
        .send(
            app.client
                .post(app.url("/api/v2/events/track"))
                .body(json!({"identity": {"id": "42"}, "event_name": "x"}).to_string()),
        )
        .await;
    assert_eq!(answer.status, 401);
    // Accepted but changing nothing: a reidentify onto itself.
    app.call(
        "PUT",
        "users/reidentify",
        &json!({"id": "4242", "new_id": "4242"}),
    )
    .await
    .assert_success(false);
    drained(&app, "vero", Duration::from_secs(15)).await;
    // Time for a stray item to go out, were there one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls = fake.calls();
    assert_token_and_json(&calls, "VERO_TOKEN");
    assert!(calls.iter().all(|c| c.status == 200), "{calls:?}");
    assert_calls(&without_check_ids(project, &fake.acknowledged()), &expected);
    let d = destination(&app, "vero").await;
    assert_eq!(
        (
            &d["state"],
            &d["delivered"],
            &d["dead_letters"],
            &d["last_error"]
        ),
        (&json!("running"), &json!(37), &json!(0), &Value::Null)
    );
}

/// The user a call concerns, by the name it had first (a reidentify's `id`).
fn user_of(body: &Value) -> String {
    let who = body["identity"]["id"]
        .as_str()
        .or(body["id"].as_str())
        .or(body["email"].as_str())
        .unwrap_or("?");
    match who {
        "4242" => "42",
        "js-2" => "js-1",
        "5678" => "1234",
        other => other,
    }
    .to_owned()
}

/// The calls grouped by user, each user's in arrival order.
fn per_user(calls: &[(String, String, Value)]) -> BTreeMap<String, Vec<(String, String, Value)>> {
    let mut out: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for c in calls {
        out.entry(user_of(&c.2)).or_default().push(c.clone());
    }
    out
}

/// The same 41 requests while the destination is paused (Vero unreachable for a while, say),
/// then a resume: the backlog goes out in order per user, each call as the client made it
/// (an event keeps the id it was sent with even when its user was renamed since), and a
/// deleted user's undelivered items are gone: only the delete goes out for them.
#[tokio::test]
async fn vero_relay_sends_a_backlog_in_order_per_user_as_the_calls_were_made() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let fake = FakeVero::start().await;
    add_destination(
        &app,
        json!({"name": "vero", "kind": "vero", "url": fake.base, "token": "VERO_TOKEN"}),
    )
    .await;
    let paused = destination_action(&app, "vero", "pause").await;
    assert_eq!(paused.status, 200, "{}", paused.body);
    assert_eq!(paused.json()["state"], "paused");
    for r in &reference_requests(&app.token) {
        let answer = replay(&app, r).await;
        assert_accepted(r, &answer);
    }
    let d = destination(&app, "vero").await;
    // 24 calls to make: the items of users deleted meanwhile went with them (their events'
    // too), but their deletes.
    assert_eq!((&d["state"], &d["backlog"]), (&json!("paused"), &json!(24)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(fake.calls().is_empty(), "paused: {:?}", fake.calls());

    let resumed = destination_action(&app, "vero", "resume").await;
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    drained(&app, "vero", Duration::from_secs(15)).await;
    let calls = fake.calls();
    assert_token_and_json(&calls, "VERO_TOKEN");
    // Deleted before delivery: 43 (users/track, one event), js-1 alias js-2 (everything
    // but the delete), rb-1 (one event, one tags edit).
    let gone = [1, 6, 12, 13, 14, 15, 16, 17, 18, 19, 30, 31];
    let expected: Vec<_> = reference_calls()
        .into_iter()
        .filter(|(i, _)| !gone.contains(i))
        .map(|(_, c)| c)
        .collect();
    assert_eq!(expected.len(), 24);
    let got = fake.acknowledged();
    let project = project_id(&app).await;
    let (got_by_user, expected_by_user) = (per_user(&got), per_user(&expected));
    for (user, calls) in &expected_by_user {
        let got = got_by_user.get(user).map_or(&[][..], Vec::as_slice);
        assert_calls(&without_check_ids(project, got), calls);
    }
    assert_eq!(
        got_by_user.keys().collect::<Vec<_>>(),
        expected_by_user.keys().collect::<Vec<_>>()
    );
    assert_eq!(got.len(), 24);
}

/// The flow reidentify exists for: events tracked under an anonymous id, then the user
/// signs in and the anonymous id is renamed (or merged into a known user). Delivered from
/// a backlog, each event still goes out under the id it was tracked with, before the
/// reidentify: sent under the new id, it would reach Vero before the rename and create
/// that user there, so the rename (or merge) finds the new id taken.
#[tokio::test]
async fn vero_relay_sends_each_event_under_the_id_it_was_tracked_with() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let fake = FakeVero::start().await;
    add_destination(
        &app,
        json!({"name": "vero", "kind": "vero", "url": fake.base, "token": "VERO_TOKEN"}),
    )
    .await;
    app.call("POST", "users/track", &json!({"id": "user-2"}))
        .await
        .assert_success(false);
    drained(&app, "vero", Duration::from_secs(15)).await;
    let paused = destination_action(&app, "vero", "pause").await;
    assert_eq!(paused.status, 200, "{}", paused.body);
    for (anonymous, known) in [("anon-1", "user-1"), ("anon-2", "user-2")] {
        app.track(&step(anonymous, 0)).await.assert_success(false);
        app.call(
            "PUT",
            "users/reidentify",
            &json!({"id": anonymous, "new_id": known}),
        )
        .await
        .assert_success(false);
    }
    let resumed = destination_action(&app, "vero", "resume").await;
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    drained(&app, "vero", Duration::from_secs(15)).await;
    let project = project_id(&app).await;
    let got = fake.acknowledged();
    for (anonymous, known) in [("anon-1", "user-1"), ("anon-2", "user-2")] {
        let of_this: Vec<_> = got
            .iter()
            .filter(|(_, _, b)| {
                [anonymous, known].contains(&b["identity"]["id"].as_str().unwrap_or_default())
                    || b["id"] == anonymous
            })
            .cloned()
            .collect();
        let of_this = without_check_ids(project, &of_this);
        assert_calls(
            &of_this,
            &[
                vero_event(
                    json!({"id": anonymous}),
                    "step",
                    json!({"n": 0}),
                    json!({"created_at": NOW}),
                ),
                vero(
                    "PUT",
                    "/users/reidentify",
                    json!({"id": anonymous, "new_id": known}),
                ),
            ],
        );
    }
}

/// A 401 from Vero (the destination's token is wrong): the destination pauses itself,
/// saying so, and sends nothing more; the backlog waits; a resume once the token is fixed
/// delivers it all, the refused call first.
#[tokio::test]
async fn vero_401_pauses_the_destination_until_resumed() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let fake = FakeVero::start().await;
    let refusal = r#"{"status":401,"message":"Your credentials are invalid."}"#;
    fake.answer_with(move |_, _| (401, refusal.to_owned()));
    // A token with characters a query string must escape.
    let token = "v3r0+t/k=n&x%";
    add_destination(
        &app,
        json!({"name": "vero", "kind": "vero", "url": fake.base, "token": token}),
    )
    .await;
    for n in 0..3 {
        app.track(&crate::helpers::event("ann", n))
            .await
            .assert_success(false);
    }
    let d = wait_for_destination(&app, "vero", Duration::from_secs(15), "paused", |d| {
        d["state"] == "paused"
    })
    .await;
    let why = format!("Vero answered 401 (the destination's token is refused): {refusal}");
    assert_eq!(
        (&d["last_error"], &d["paused_reason"], &d["backlog"]),
        (&json!(why), &json!(why), &json!(3)),
        "{d}"
    );
    // The same through the list.
    let list = app.read_json("/api/v2/destinations").await;
    assert_eq!(list["destinations"][0]["state"], "paused");
    assert_eq!(list["destinations"][0]["last_error"], json!(why));
    // One user: its first call was refused, and nothing was sent after it, even as more
    // arrives and time passes.
    app.track(&crate::helpers::event("bob", 9))
        .await
        .assert_success(false);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let calls = fake.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(
        (calls[0].status, calls[0].body["data"]["n"].clone()),
        (401, json!(0))
    );
    let d = destination(&app, "vero").await;
    assert_eq!((&d["state"], &d["backlog"]), (&json!("paused"), &json!(4)));

    fake.answer_with(|_, _| (200, SUCCESS.to_owned()));
    let resumed = destination_action(&app, "vero", "resume").await;
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    assert_eq!(
        (&resumed.json()["state"], &resumed.json()["last_error"]),
        (&json!("running"), &Value::Null)
    );
    let d = drained(&app, "vero", Duration::from_secs(15)).await;
    assert_eq!(
        (&d["state"], &d["delivered"], &d["dead_letters"]),
        (&json!("running"), &json!(4), &json!(0))
    );
    // After the refused call: ann's three (the refused one again first, the same call),
    // bob's one.
    let calls = fake.calls();
    assert_eq!(calls.len(), 5, "{calls:?}");
    assert_eq!(
        calls_of(&calls, "ann"),
        vec![
            (401, "/events/track".to_owned(), json!(0)),
            (200, "/events/track".to_owned(), json!(0)),
            (200, "/events/track".to_owned(), json!(1)),
            (200, "/events/track".to_owned(), json!(2)),
        ]
    );
    let ann: Vec<&Call> = calls.iter().filter(|c| user_of(&c.body) == "ann").collect();
    assert_eq!(ann[0].body, ann[1].body);
    assert_eq!(
        calls_of(&calls, "bob"),
        vec![(200, "/events/track".to_owned(), json!(9))]
    );
    assert_token_and_json(&fake.calls(), token);
}

/// A step of user `user`'s: an event `step` with `data.n`.
fn step(user: &str, n: i64) -> Value {
    json!({"identity": {"id": user}, "event_name": "step", "data": {"n": n}})
}

/// The calls of one user (by [`user_of`]) as (status, route, `data.n`), in arrival order.
fn calls_of(calls: &[Call], user: &str) -> Vec<(u16, String, Value)> {
    calls
        .iter()
        .filter(|c| user_of(&c.body) == user)
        .map(|c| (c.status, c.route.clone(), c.body["data"]["n"].clone()))
        .collect()
}

/// Vero answers 500 to one user's first call three times: the call is retried, the same
/// each time, and that user's later calls go out only after it went through; the other
/// users' calls arrive too, each once, in order.
#[tokio::test]
async fn vero_retries_keep_one_users_order_and_the_others_go_on() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let fake = FakeVero::start().await;
    fake.answer_with(|call, before| {
        let refused = before.iter().filter(|c| c.status == 500).count();
        if user_of(&call.body) == "slow" && refused < 3 {
            (
                500,
                r#"{"status":500,"message":"Internal error"}"#.to_owned(),
            )
        } else {
            (200, SUCCESS.to_owned())
        }
    });
    add_destination(
        &app,
        json!({"name": "vero", "kind": "vero", "url": fake.base, "token": "VERO_TOKEN"}),
    )
    .await;
    app.track(&step("slow", 0)).await.assert_success(false);
    for user in ["a", "b", "c"] {
        app.track(&step(user, 0)).await.assert_success(false);
    }
    app.call(
        "PUT",
        "users/tags/edit",
        &json!({"id": "slow", "add": ["x"]}),
    )
    .await
    .assert_success(false);
    for user in ["slow", "a", "b", "c"] {
        app.track(&step(user, 1)).await.assert_success(false);
    }
    let d = drained(&app, "vero", Duration::from_secs(30)).await;
    assert_eq!(
        (
            &d["state"],
            &d["delivered"],
            &d["dead_letters"],
            &d["last_error"]
        ),
        (&json!("running"), &json!(9), &json!(0), &Value::Null)
    );
    let calls = fake.calls();
    assert_token_and_json(&calls, "VERO_TOKEN");
    let track = "/events/track".to_owned();
    assert_eq!(
        calls_of(&calls, "slow"),
        vec![
            (500, track.clone(), json!(0)),
            (500, track.clone(), json!(0)),
            (500, track.clone(), json!(0)),
            (200, track.clone(), json!(0)),
            (200, "/users/tags/edit".to_owned(), Value::Null),
            (200, track.clone(), json!(1)),
        ]
    );
    // A retry is the same call again.
    let first: Vec<&Call> = calls
        .iter()
        .filter(|c| user_of(&c.body) == "slow")
        .take(4)
        .collect();
    assert!(first.iter().all(|c| c.body == first[0].body), "{first:?}");
    for user in ["a", "b", "c"] {
        assert_eq!(
            calls_of(&calls, user),
            vec![
                (200, track.clone(), json!(0)),
                (200, track.clone(), json!(1))
            ],
            "{user}"
        );
    }
}

/// Vero keeps failing one user's call (500, retried without end as DESIGN §8 says): the
/// other users' calls, including those committed after it started failing, still go out;
/// only that user's later calls wait. The fake refuses `slow` until every other call
/// arrived, so a relay that holds everyone behind one user never drains.
#[tokio::test]
async fn vero_one_users_failing_calls_do_not_hold_up_other_users_later_calls() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let fake = FakeVero::start().await;
    fake.answer_with(|call, before| {
        let others = before
            .iter()
            .filter(|c| user_of(&c.body) != "slow" && c.status == 200)
            .count();
        if user_of(&call.body) == "slow" && others < 6 {
            (
                500,
                r#"{"status":500,"message":"Internal error"}"#.to_owned(),
            )
        } else {
            (200, SUCCESS.to_owned())
        }
    });
    add_destination(
        &app,
        json!({"name": "vero", "kind": "vero", "url": fake.base, "token": "VERO_TOKEN"}),
    )
    .await;
    app.track(&step("slow", 0)).await.assert_success(false);
    let deadline = Instant::now() + Duration::from_secs(15);
    while fake.calls().len() < 2 {
        assert!(Instant::now() < deadline, "slow's call was not tried twice");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Committed while slow's call is being retried.
    for n in 0..2 {
        for user in ["a", "b", "c"] {
            app.track(&step(user, n)).await.assert_success(false);
        }
    }
    app.track(&step("slow", 1)).await.assert_success(false);
    let d = drained(&app, "vero", Duration::from_secs(20)).await;
    assert_eq!(
        (&d["delivered"], &d["dead_letters"]),
        (&json!(8), &json!(0))
    );
    let calls = fake.calls();
    let track = "/events/track".to_owned();
    let slow = calls_of(&calls, "slow");
    let refused = slow.iter().take_while(|c| c.0 == 500).count();
    assert!(refused >= 2, "{slow:?}");
    assert_eq!(
        slow[refused..].to_vec(),
        vec![
            (200, track.clone(), json!(0)),
            (200, track.clone(), json!(1))
        ]
    );
    for user in ["a", "b", "c"] {
        assert_eq!(
            calls_of(&calls, user),
            vec![
                (200, track.clone(), json!(0)),
                (200, track.clone(), json!(1))
            ],
            "{user}"
        );
    }
}

/// While Vero fails, the destination says so: `retrying`, with the failure.
#[tokio::test]
async fn vero_failing_shows_retrying_with_the_error() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let fake = FakeVero::start().await;
    fake.answer_with(|_, _| (503, r#"{"status":503,"message":"down"}"#.to_owned()));
    add_destination(
        &app,
        json!({"name": "vero", "kind": "vero", "url": fake.base, "token": "VERO_TOKEN"}),
    )
    .await;
    app.track(&crate::helpers::event("ann", 1))
        .await
        .assert_success(false);
    let d = wait_for_destination(&app, "vero", Duration::from_secs(10), "retrying", |d| {
        d["state"] == "retrying"
    })
    .await;
    assert_eq!(
        d["last_error"],
        json!(r#"the receiver answered 503: {"status":503,"message":"down"}"#)
    );
    assert_eq!(d["backlog"], 1);
    fake.answer_with(|_, _| (200, SUCCESS.to_owned()));
    let d = wait_for_destination(&app, "vero", Duration::from_secs(15), "running", |d| {
        d["state"] == "running" && d["backlog"] == 0
    })
    .await;
    assert_eq!(d["last_error"], Value::Null);
    assert_eq!(fake.acknowledged().len(), 1);
}

/// A 401 with many users waiting, while one user's call is being retried (500): the
/// destination pauses at once (it does not wait for the retries), the calls already in
/// flight (at most 16 users at once) get their answer, and no new call starts.
#[tokio::test]
async fn vero_401_stops_new_calls_at_once_with_many_users_waiting() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let fake = FakeVero::start().await;
    fake.answer_with(|call, _| {
        if user_of(&call.body) == "user-0" {
            (
                500,
                r#"{"status":500,"message":"Internal error"}"#.to_owned(),
            )
        } else {
            (401, r#"{"status":401,"message":"Unauthorized"}"#.to_owned())
        }
    });
    add_destination(
        &app,
        json!({"name": "vero", "kind": "vero", "url": fake.base, "token": "VERO_TOKEN"}),
    )
    .await;
    let paused = destination_action(&app, "vero", "pause").await;
    assert_eq!(paused.status, 200, "{}", paused.body);
    for n in 0..40 {
        app.track(&step(&format!("user-{n}"), n))
            .await
            .assert_success(false);
    }
    let resumed = destination_action(&app, "vero", "resume").await;
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    let d = wait_for_destination(&app, "vero", Duration::from_secs(15), "paused", |d| {
        d["state"] == "paused"
    })
    .await;
    assert_eq!(
        (&d["backlog"], &d["paused_reason"]),
        (
            &json!(40),
            &json!(
                r#"Vero answered 401 (the destination's token is refused): {"status":401,"message":"Unauthorized"}"#
            )
        )
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let calls = fake.calls();
    let users: BTreeSet<String> = calls.iter().map(|c| user_of(&c.body)).collect();
    assert!(
        users.len() <= 16,
        "{} users' calls made with a token Vero refused",
        users.len()
    );
    let refused = calls.iter().filter(|c| c.status == 401).count();
    assert_eq!(refused, users.len() - usize::from(users.contains("user-0")));
}

/// Vero's dedup key is token + event name + user + `data`, or `check_id` in place of empty
/// `data`. Two events trackd accepted as distinct (same user and name, no data, different
/// `check_id`) must not look like one to Vero; and a call sent again (a retry) must look
/// the same, so Vero drops the copy.
#[tokio::test]
async fn vero_relay_keeps_distinct_events_distinct_for_veros_dedup() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let fake = FakeVero::start().await;
    // The first attempt fails: the event is sent twice.
    fake.answer_with(|_, before| {
        if before.is_empty() {
            (503, r#"{"status":503,"message":"busy"}"#.to_owned())
        } else {
            (200, SUCCESS.to_owned())
        }
    });
    add_destination(
        &app,
        json!({"name": "vero", "kind": "vero", "url": fake.base, "token": "VERO_TOKEN"}),
    )
    .await;
    for check_id in [1, 2] {
        app.track(
            &json!({"identity": {"id": "rs-1"}, "event_name": "Logged in",
                          "extras": {"check_id": check_id}}),
        )
        .await
        .assert_success(false);
    }
    drained(&app, "vero", Duration::from_secs(15)).await;
    let calls = fake.calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(
        calls.iter().all(|c| c.body["data"] == json!({})),
        "{calls:?}"
    );
    // What Vero's dedup compares when there is no data.
    let check_ids: Vec<&Value> = calls
        .iter()
        .map(|c| &c.body["extras"]["check_id"])
        .collect();
    assert_eq!(
        check_ids[0], check_ids[1],
        "a retry is the same event: {calls:?}"
    );
    assert!(
        !check_ids[1].is_null() && check_ids[1] != check_ids[2],
        "two events trackd accepted would be one to Vero: {calls:?}"
    );
    let project = project_id(&app).await;
    let logged_in = vero_event(
        json!({"id": "rs-1"}),
        "Logged in",
        json!({}),
        json!({"created_at": NOW}),
    );
    assert_calls(
        &without_check_ids(project, &fake.acknowledged()),
        &[logged_in.clone(), logged_in],
    );
}

/// A user deleted while its items wait: its undelivered profile changes go, its delete is
/// delivered. Another user deleted later (on SQLite it may get the first one's row id once
/// that is free) does not take the first one's delete with it.
#[tokio::test]
async fn vero_gets_every_delete_of_a_backlog() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let fake = FakeVero::start().await;
    add_destination(
        &app,
        json!({"name": "vero", "kind": "vero", "url": fake.base, "token": "VERO_TOKEN"}),
    )
    .await;
    let paused = destination_action(&app, "vero", "pause").await;
    assert_eq!(paused.status, 200, "{}", paused.body);
    for user in ["ann", "bob"] {
        app.call(
            "POST",
            "users/track",
            &json!({"id": user, "data": {"a": 1}}),
        )
        .await
        .assert_success(false);
        app.track(&step(user, 0)).await.assert_success(false);
        app.call("POST", "users/delete", &json!({"id": user}))
            .await
            .assert_success(false);
    }
    let resumed = destination_action(&app, "vero", "resume").await;
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    drained(&app, "vero", Duration::from_secs(15)).await;
    assert_calls(
        &fake.acknowledged(),
        &[
            vero("POST", "/users/delete", json!({"id": "ann"})),
            vero("POST", "/users/delete", json!({"id": "bob"})),
        ],
    );
}

// ---------------------------------------------------------------------------------------
// NATS JetStream.

/// The `nats-server` binary: on the PATH, or where Debian puts it (`/usr/sbin`, often
/// not on a user's PATH).
fn nats_server() -> Option<PathBuf> {
    ["nats-server", "/usr/sbin/nats-server"]
        .into_iter()
        .map(PathBuf::from)
        .find(|bin| {
            std::process::Command::new(bin)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// True when the running test must skip for want of `nats-server` (after a SKIPPED
/// notice); a failure instead with `TRACKD_TEST_REQUIRE_NATS=1`.
fn skip_without_nats() -> bool {
    if nats_server().is_some() {
        return false;
    }
    assert!(
        !crate::helpers::required("TRACKD_TEST_REQUIRE_NATS"),
        "TRACKD_TEST_REQUIRE_NATS=1 but nats-server is not on the PATH (Debian: apt-get \
         install nats-server)"
    );
    crate::helpers::skip_notice("nats-server is not installed, so the NATS tests cannot run");
    true
}

/// A port nothing listens on (for now).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A `nats-server -js` of the test's own, on 127.0.0.1, killed with the test.
struct Nats {
    process: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nats {
    fn start(port: u16) -> Nats {
        let dir = tempfile::tempdir().expect("dir");
        let log = std::fs::File::create(dir.path().join("nats.log")).expect("log");
        let mut process = std::process::Command::new(nats_server().expect("nats-server"))
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path().join("store"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("nats-server starts");
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = process.try_wait().expect("wait") {
                panic!(
                    "nats-server exited ({status}): {}",
                    std::fs::read_to_string(dir.path().join("nats.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "nats-server does not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nats {
            process,
            port,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Creates the stream `TRACKD` on `trackd.>` with a 2-minute duplicate window (JetStream
/// may take a moment after the port opens).
async fn trackd_stream(url: &str) -> (async_nats::Client, async_nats::jetstream::stream::Stream) {
    let client = async_nats::connect(url).await.expect("NATS connects");
    let js = async_nats::jetstream::new(client.clone());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let created = js
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: "TRACKD".into(),
                subjects: vec!["trackd.>".into()],
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await;
        match created {
            Ok(stream) => return (client, stream),
            Err(e) => {
                assert!(Instant::now() < deadline, "no stream: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A message of the stream: subject, `Nats-Msg-Id`, payload.
#[derive(Debug, Clone)]
struct Published {
    subject: String,
    msg_id: String,
    payload: Value,
}

/// Every message of the stream, in stream order.
async fn stream_messages(stream: &mut async_nats::jetstream::stream::Stream) -> Vec<Published> {
    let info = stream.info().await.expect("stream info").clone();
    assert_eq!(info.state.first_sequence.max(1), 1, "nothing was removed");
    let mut out = Vec::new();
    for seq in 1..=info.state.last_sequence {
        let m = stream.get_raw_message(seq).await.expect("message");
        out.push(Published {
            subject: m.subject.to_string(),
            msg_id: m
                .headers
                .get("Nats-Msg-Id")
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default(),
            payload: serde_json::from_slice(&m.payload).expect("a JSON payload"),
        });
    }
    assert_eq!(out.len() as u64, info.state.messages);
    out
}

/// Each message carries its item's id as `Nats-Msg-Id` and in its payload, and no two
/// share one.
#[track_caller]
fn assert_ids_once(messages: &[Published]) {
    let mut seen = BTreeSet::new();
    for m in messages {
        assert!(m.msg_id.starts_with("trk_"), "{m:?}");
        assert_eq!(m.payload["id"], json!(m.msg_id), "{m:?}");
        assert!(seen.insert(m.msg_id.clone()), "twice in the stream: {m:?}");
    }
}

/// Events and profile changes published to a real JetStream: each once, on
/// `trackd.<project>.event` / `.user`, `Nats-Msg-Id` = the item id, the payload the item
/// (an event in the export shape), in commit order.
#[tokio::test]
async fn nats_publishes_every_item_once_with_its_id() {
    crate::skip_without_postgres!();
    if skip_without_nats() {
        return;
    }
    let nats = Nats::start(free_port());
    let (_client, mut stream) = trackd_stream(&nats.url()).await;
    let app = TestApp::spawn().await;
    let created = add_destination(
        &app,
        json!({"name": "stream", "kind": "nats", "url": nats.url()}),
    )
    .await;
    assert_eq!(
        (
            &created["kind"],
            &created["subject_prefix"],
            &created["url"]
        ),
        (&json!("nats"), &json!("trackd"), &json!(nats.url()))
    );
    app.call(
        "POST",
        "users/track",
        &json!({"id": "u0", "email": "u0@example.com", "data": {"plan": "pro"}}),
    )
    .await
    .assert_success(false);
    const N: i64 = 60;
    for n in 0..N {
        let user = format!("u{}", n % 3);
        app.track(&crate::helpers::event(&user, n))
            .await
            .assert_success(false);
    }
    // A retry: a duplicate, not stored, not published.
    app.track(&crate::helpers::event("u1", 1))
        .await
        .assert_success(true);
    app.call(
        "PUT",
        "users/edit",
        &json!({"id": "u2", "changes": {"a": 1}}),
    )
    .await
    .assert_success(false);
    let d = drained(&app, "stream", Duration::from_secs(20)).await;
    assert_eq!(
        (&d["state"], &d["delivered"], &d["last_error"]),
        (&json!("running"), &json!(N + 2), &Value::Null)
    );

    let messages = stream_messages(&mut stream).await;
    assert_eq!(messages.len() as i64, N + 2);
    assert_ids_once(&messages);
    let exported: BTreeMap<String, Value> = app
        .exported()
        .await
        .into_iter()
        .map(|e| (e["id"].to_string(), e))
        .collect();
    assert_eq!(exported.len() as i64, N);
    // Commit order: the profile, the events in the order sent, the edit.
    let first = &messages[0];
    assert_eq!(first.subject, "trackd.test.user");
    assert_eq!(first.payload["type"], "user.track");
    assert_eq!(
        first.payload["user"],
        json!({"id": "u0", "email": "u0@example.com", "data": {"plan": "pro"}})
    );
    assert_eq!(first.payload["received_at"], NOW);
    for (n, m) in messages[1..=N as usize].iter().enumerate() {
        assert_eq!(m.subject, "trackd.test.event", "{m:?}");
        assert_eq!(m.payload["type"], "event");
        let event = &m.payload["event"];
        assert_eq!(event["data"]["n"], json!(n), "commit order: {m:?}");
        assert_eq!(
            Some(event),
            exported.get(&event["id"].to_string()),
            "the export shape"
        );
        assert_eq!(m.payload["received_at"], event["received_at"]);
        assert_eq!(
            m.payload.as_object().map(|o| o.len()),
            Some(4),
            "id, type, received_at, event: {m:?}"
        );
    }
    let last = &messages[N as usize + 1];
    assert_eq!(
        (
            last.subject.as_str(),
            &last.payload["type"],
            &last.payload["user"]
        ),
        (
            "trackd.test.user",
            &json!("user.edit"),
            &json!({"id": "u2", "changes": {"a": 1}})
        )
    );
}

/// An event trackd accepts at its default body limit (1 MiB) can make an item larger than
/// NATS's default `max_payload` (1 MiB, headers included): the server will never take it.
/// It goes to the dead letters, like a receiver's 4xx, and delivery moves on; it does not
/// stop the destination for good.
#[tokio::test]
async fn nats_an_item_too_big_for_the_server_does_not_stop_delivery() {
    crate::skip_without_postgres!();
    if skip_without_nats() {
        return;
    }
    let nats = Nats::start(free_port());
    let (_client, mut stream) = trackd_stream(&nats.url()).await;
    let app = TestApp::spawn().await;
    add_destination(
        &app,
        json!({"name": "stream", "kind": "nats", "url": nats.url()}),
    )
    .await;
    // A body 16 bytes under trackd's limit.
    let skeleton = json!({"identity": {"id": "big"}, "event_name": "big", "data": {"s": ""}});
    let fill = 1024 * 1024 - 16 - skeleton.to_string().len();
    let big = json!({"identity": {"id": "big"}, "event_name": "big",
                     "data": {"s": "x".repeat(fill)}});
    assert_eq!(big.to_string().len(), 1024 * 1024 - 16);
    app.track(&big).await.assert_success(false);
    app.track(&crate::helpers::event("ann", 1))
        .await
        .assert_success(false);
    let d = drained(&app, "stream", Duration::from_secs(20)).await;
    assert_eq!(
        (&d["delivered"], &d["dead_letters"]),
        (&json!(1), &json!(1)),
        "{d}"
    );
    let messages = stream_messages(&mut stream).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].payload["event"]["data"]["n"], 1);
}

/// NATS not running: ingest answers 200 at once all the same, the destination shows
/// `retrying` with the connection error, and once NATS (and its stream) is up everything
/// arrives, once.
#[tokio::test]
async fn nats_down_keeps_ingest_answering_and_delivers_once_it_is_up() {
    crate::skip_without_postgres!();
    if skip_without_nats() {
        return;
    }
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let app = TestApp::spawn().await;
    add_destination(&app, json!({"name": "stream", "kind": "nats", "url": url})).await;
    const N: i64 = 30;
    for n in 0..N {
        let started = Instant::now();
        app.track(&crate::helpers::event("ann", n))
            .await
            .assert_success(false);
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "ingest waited for NATS: {:?}",
            started.elapsed()
        );
        if n == 0 {
            // Let delivery try (and fail) while the rest comes in.
            wait_for_destination(&app, "stream", Duration::from_secs(10), "retrying", |d| {
                d["state"] == "retrying"
            })
            .await;
        }
    }
    let d = destination(&app, "stream").await;
    assert_eq!(
        (&d["state"], &d["backlog"]),
        (&json!("retrying"), &json!(N))
    );
    let error = d["last_error"].as_str().expect("an error");
    assert!(
        error.starts_with("connecting to NATS failed: "),
        "not a clear error: {error}"
    );

    let nats = Nats::start(port);
    let (_client, mut stream) = trackd_stream(&nats.url()).await;
    let d = wait_for_destination(&app, "stream", Duration::from_secs(40), "caught up", |d| {
        d["backlog"] == 0 && d["state"] == "running"
    })
    .await;
    assert_eq!(
        (&d["delivered"], &d["last_error"]),
        (&json!(N), &Value::Null)
    );
    let messages = stream_messages(&mut stream).await;
    assert_ids_once(&messages);
    let ns: Vec<Value> = messages
        .iter()
        .map(|m| m.payload["event"]["data"]["n"].clone())
        .collect();
    assert_eq!(ns, (0..N).map(|n| json!(n)).collect::<Vec<_>>());
}

/// The real binary delivering a backlog of 4,000 events to JetStream is killed with -9
/// (twice, at random moments while it publishes) and restarted on its data directory: the
/// stream holds every event exactly once. A core subscriber on `trackd.>` counts what was
/// published: the items re-sent after a kill carried their ids again, and JetStream's
/// duplicate window dropped them. SQLite only (a child process on a data directory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_after_kill_9_holds_every_event_once() {
    crate::skip_without_postgres!();
    if crate::helpers::postgres() || skip_without_nats() {
        return;
    }
    use futures::StreamExt;
    use rand::Rng;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let nats = Nats::start(free_port());
    let (client, mut stream) = trackd_stream(&nats.url()).await;
    let published = Arc::new(AtomicUsize::new(0));
    let mut subscriber = client.subscribe("trackd.>").await.expect("subscribe");
    client.flush().await.expect("flush");
    let counter = published.clone();
    let counting = tokio::spawn(async move {
        while subscriber.next().await.is_some() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });

    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let envs = [("TRACKD_DELIVERY_RETRY_BASE_MS", "100")];
    let mut server = crate::helpers::ChildServer::spawn(&data, &envs);
    let token = server.printed("tracking token:");
    let secret = server.printed("secret key:");
    let http = reqwest::Client::new();
    let api = |server: &crate::helpers::ChildServer, path: &str| format!("{}{path}", server.addr);
    let answer = http
        .post(api(&server, "/api/v2/destinations"))
        .bearer_auth(&secret)
        .body(json!({"name": "stream", "kind": "nats", "url": nats.url()}).to_string())
        .send()
        .await
        .expect("sent");
    assert_eq!(answer.status(), 201);
    let answer = http
        .post(api(&server, "/api/v2/destinations/stream/pause"))
        .bearer_auth(&secret)
        .send()
        .await
        .expect("sent");
    assert_eq!(answer.status(), 200);

    // The backlog, from 8 clients at once.
    const N: usize = 4000;
    let url = api(&server, &format!("/api/v2/events/track?auth_token={token}"));
    let senders: Vec<_> = (0..8)
        .map(|c| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move {
                for n in (c..N).step_by(8) {
                    let body = json!({"identity": {"id": format!("u{}", n % 50)},
                                      "event_name": "backlog", "data": {"n": n}});
                    let answer = http.post(&url).body(body.to_string()).send().await;
                    assert_eq!(answer.expect("sent").status(), 200);
                }
            })
        })
        .collect();
    for s in senders {
        s.await.expect("sender");
    }
    let answer = http
        .post(api(&server, "/api/v2/destinations/stream/resume"))
        .bearer_auth(&secret)
        .send()
        .await
        .expect("sent");
    assert_eq!(answer.status(), 200);

    // Two kills while publishing, each after a random number of new publications.
    let mut kills = Vec::new();
    for _ in 0..2 {
        let from = published.load(Ordering::SeqCst);
        let wait_for = rand::thread_rng().gen_range(1..=600);
        let deadline = Instant::now() + Duration::from_secs(60);
        while published.load(Ordering::SeqCst) < from + wait_for {
            assert!(Instant::now() < deadline, "delivery does not progress");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        server.kill9();
        let in_stream = stream.info().await.expect("info").state.messages;
        kills.push(in_stream);
        assert!(
            (in_stream as usize) < N,
            "the kill came after delivery had finished: make the backlog bigger"
        );
        server = crate::helpers::ChildServer::spawn(&data, &envs);
    }
    // The last run delivers the rest (after the dead node's lease ran out).
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let d: Value = http
            .get(api(&server, "/api/v2/destinations/stream"))
            .bearer_auth(&secret)
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("JSON");
        if d["backlog"] == 0 {
            assert_eq!(
                (&d["state"], &d["last_error"]),
                (&json!("running"), &Value::Null)
            );
            break;
        }
        assert!(Instant::now() < deadline, "not drained: {d}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The core subscriber may lag a little behind the stream.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let messages = stream_messages(&mut stream).await;
    assert_eq!(messages.len(), N);
    assert_ids_once(&messages);
    let mut ns: Vec<u64> = messages
        .iter()
        .map(|m| {
            assert_eq!(m.subject, "trackd.default.event");
            m.payload["event"]["data"]["n"].as_u64().expect("n")
        })
        .collect();
    ns.sort_unstable();
    assert_eq!(ns, (0..N as u64).collect::<Vec<_>>());
    let resent = published.load(Ordering::SeqCst) - N;
    println!("nats kill -9: stream held {kills:?} at the kills; {resent} publications re-sent and dropped as duplicates");
    assert!(resent > 0, "no item was re-sent after the kills: {kills:?}");
    counting.abort();
    drop(server);
}

/// A call Vero refuses for good (400) is a dead letter and the relay goes on; `redrive`
/// sends it again, and once Vero takes it the dead letter is gone.
#[tokio::test]
async fn vero_dead_letters_are_redriven() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let fake = FakeVero::start().await;
    // The first call with n = 0 is refused; everything else (and its redrive) is taken.
    let refused = Arc::new(Mutex::new(false));
    let once = refused.clone();
    fake.answer_with(move |call, _| {
        let mut done = once.lock().expect("lock");
        if !*done && call.body["data"]["n"] == 0 {
            *done = true;
            return (400, r#"{"status":400,"message":"bad data"}"#.to_owned());
        }
        (200, SUCCESS.to_owned())
    });
    add_destination(
        &app,
        json!({"name": "vero", "kind": "vero", "url": fake.base, "token": "T"}),
    )
    .await;
    for n in 0..3 {
        app.track(&crate::helpers::event("ann", n))
            .await
            .assert_success(false);
    }
    let d = wait_for_destination(
        &app,
        "vero",
        Duration::from_secs(15),
        "a dead letter",
        |d| d["backlog"] == 0 && d["dead_letters"] == 1,
    )
    .await;
    assert_eq!(d["delivered"], 2, "{d}");
    assert_eq!(fake.calls().len(), 3);
    assert_eq!(
        destination_action(&app, "vero", "redrive").await.status,
        200
    );
    let d = wait_for_destination(&app, "vero", Duration::from_secs(15), "redriven", |d| {
        d["dead_letters"] == 0
    })
    .await;
    assert_eq!(d["delivered"], 3, "{d}");
    let calls = fake.calls();
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert_eq!(calls[3].body, calls[0].body, "the same call again");
    assert_eq!(calls[3].status, 200);
}

/// A visitor's event is still being retried when the visitor signs in and its anonymous id
/// is merged into a known user: the merge waits for the event, so Vero sees the event under
/// the anonymous id first, then the reidentify, then what came after it.
#[tokio::test]
async fn vero_reidentify_waits_for_the_calls_before_it() {
    crate::skip_without_postgres!();
    let app = TestApp::spawn().await;
    let fake = FakeVero::start().await;
    // The anonymous event is refused (503) three times before Vero takes it.
    fake.answer_with(|call, before| {
        let anon = call.route == "/events/track" && call.body["identity"]["id"] == "anon-1";
        let refused = before
            .iter()
            .filter(|c| c.route == "/events/track" && c.body["identity"]["id"] == "anon-1")
            .count();
        if anon && refused < 3 {
            return (503, r#"{"status":503,"message":"busy"}"#.to_owned());
        }
        (200, SUCCESS.to_owned())
    });
    app.call(
        "POST",
        "users/track",
        &json!({"id": "42", "data": {"plan": "pro"}}),
    )
    .await
    .assert_success(false);
    add_destination(
        &app,
        json!({"name": "vero", "kind": "vero", "url": fake.base, "token": "T"}),
    )
    .await;
    app.track(&json!({"identity": {"id": "anon-1"}, "event_name": "Viewed", "data": {}}))
        .await
        .assert_success(false);
    // The event is read and being retried when the merge commits.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fake.calls().is_empty() {
        assert!(Instant::now() < deadline, "the event was never tried");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.call(
        "PUT",
        "users/reidentify",
        &json!({"id": "anon-1", "new_id": "42"}),
    )
    .await
    .assert_success(false);
    app.track(&json!({"identity": {"id": "42"}, "event_name": "Paid", "data": {}}))
        .await
        .assert_success(false);
    wait_for_destination(&app, "vero", Duration::from_secs(30), "drained", |d| {
        d["backlog"] == 0 && d["state"] == "running"
    })
    .await;
    let acknowledged: Vec<(String, Value)> = fake
        .calls()
        .into_iter()
        .filter(|c| c.status == 200)
        .map(|c| (c.route, c.body))
        .collect();
    let routes: Vec<&str> = acknowledged.iter().map(|(r, _)| r.as_str()).collect();
    // Paid, tracked after the merge, goes after it.
    assert_eq!(
        routes,
        vec!["/events/track", "/users/reidentify", "/events/track"],
        "{acknowledged:?}"
    );
    assert_eq!(acknowledged[0].1["identity"]["id"], "anon-1");
    assert_eq!(acknowledged[2].1["event_name"], "Paid");
}
