//! The store contract: one behaviour suite, written once against the [`Store`] trait and run
//! on every backend (SQLite always; PostgreSQL with `TRACKD_TEST_DATABASE_URL`). A new
//! backend is done when it passes this; the HTTP suite stays on top of it.
//!
//! Each case gets a store of its own (a fresh data directory, or a fresh database) and a
//! manual clock for receive times.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use trackd_core::read::{Counter, EventQuery, ExportQuery, Interval, StatsQuery};
use trackd_core::time::ManualClock;
use trackd_core::{
    CredentialKind, DynStore, InsertOutcome, ProfileOp, ProfileRequest, ProjectId, StoreError,
    Timestamp, Token, TrackRequest,
};
use trackd_store::{PgConfig, PostgresStore, SqliteConfig, SqliteStore};

const START: Timestamp = Timestamp::from_micros(1_795_694_400_000_000);
const WINDOW_SECS: u64 = 180;

/// A store under test, with what it needs kept alive.
struct Backend {
    store: DynStore,
    clock: Arc<ManualClock>,
    project: ProjectId,
    _dir: Option<tempfile::TempDir>,
    pg: Option<PgDatabase>,
}

impl Backend {
    async fn sqlite() -> Backend {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::new(START));
        let store: DynStore = Arc::new(
            SqliteStore::open(SqliteConfig {
                data_dir: dir.path().to_owned(),
                dedup_window: Duration::from_secs(WINDOW_SECS),
                queue_capacity: 1000,
                clock: clock.clone(),
                wal_checkpoint_pages: trackd_store::sqlite::DEFAULT_WAL_CHECKPOINT_PAGES,
            })
            .expect("sqlite store"),
        );
        let project = store.create_project("p").await.expect("project").id;
        Backend {
            store,
            clock,
            project,
            _dir: Some(dir),
            pg: None,
        }
    }

    /// `None` (after a notice nothing can hide) when no PostgreSQL is configured and none
    /// is required.
    async fn postgres() -> Option<Backend> {
        let db = PgDatabase::create().await?;
        let clock = Arc::new(ManualClock::new(START));
        let store: DynStore = Arc::new(
            PostgresStore::open(PgConfig {
                url: db.url.clone(),
                dedup_window: Duration::from_secs(WINDOW_SECS),
                queue_capacity: 1000,
                clock: clock.clone(),
                dedup_clock: Some(clock.clone()),
                pool_size: 4,
            })
            .await
            .expect("postgres store"),
        );
        let project = store.create_project("p").await.expect("project").id;
        Some(Backend {
            store,
            clock,
            project,
            _dir: None,
            pg: Some(db),
        })
    }

    /// A second store on the same data: another node, or the same one after a restart.
    async fn another_store(&self) -> DynStore {
        if let Some(db) = &self.pg {
            return Arc::new(
                PostgresStore::open(PgConfig {
                    url: db.url.clone(),
                    dedup_window: Duration::from_secs(WINDOW_SECS),
                    queue_capacity: 1000,
                    clock: self.clock.clone(),
                    dedup_clock: Some(self.clock.clone()),
                    pool_size: 2,
                })
                .await
                .expect("postgres store"),
            );
        }
        let dir = self._dir.as_ref().expect("a data directory");
        Arc::new(
            SqliteStore::open(SqliteConfig {
                data_dir: dir.path().to_owned(),
                dedup_window: Duration::from_secs(WINDOW_SECS),
                queue_capacity: 1000,
                clock: self.clock.clone(),
                wal_checkpoint_pages: trackd_store::sqlite::DEFAULT_WAL_CHECKPOINT_PAGES,
            })
            .expect("sqlite store"),
        )
    }

    fn now(&self) -> Timestamp {
        use trackd_core::Clock;
        self.clock.now()
    }

    async fn track(&self, body: Value) -> InsertOutcome {
        let Value::Object(map) = body else {
            panic!("object")
        };
        let event = TrackRequest::new(map)
            .validate(self.project, self.now())
            .expect("valid event");
        self.store.track(event).await.expect("tracked")
    }

    async fn change(&self, op: ProfileOp, body: Value) -> Result<(), StoreError> {
        let Value::Object(map) = body else {
            panic!("object")
        };
        let request =
            ProfileRequest::parse(op, &map, self.project, self.now()).expect("valid change");
        self.store.change_profile(request).await
    }

    /// Event names of a user, newest first; `None` for an unknown user.
    async fn events_of(&self, key: &str) -> Option<Vec<String>> {
        let (rows, _) = self
            .store
            .events(EventQuery {
                project: self.project,
                user_key: Some(key.to_owned()),
                event_key: None,
                since: None,
                until: None,
                limit: 1000,
                cursor: None,
            })
            .await
            .expect("events")?;
        Some(rows.into_iter().map(|r| r.event_name).collect())
    }

    async fn profile(&self, key: &str) -> Option<Value> {
        let p = self.store.user(self.project, key).await.expect("user")?;
        Some(json!({
            "id": p.id, "email": p.email,
            "channels": serde_json::from_str::<Value>(&p.channels).expect("channels"),
            "properties": serde_json::from_str::<Value>(&p.properties).expect("properties"),
            "tags": serde_json::from_str::<Value>(&p.tags).expect("tags"),
            "subscribed": p.subscribed, "event_count": p.event_count,
        }))
    }

    async fn close(self) {
        self.store.shutdown().await.expect("shutdown");
        drop(self.store);
        if let Some(db) = self.pg {
            db.drop_database().await;
        }
    }
}

fn event(user: &str, name: &str, data: Value) -> Value {
    json!({"identity": {"id": user}, "event_name": name, "data": data})
}

/// Runs each case on SQLite and on PostgreSQL.
macro_rules! store_contract {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let backend = super::Backend::sqlite().await;
                    super::$case(&backend).await;
                    backend.close().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(backend) = super::Backend::postgres().await else {
                        return;
                    };
                    super::$case(&backend).await;
                    backend.close().await;
                }
            )*
        }
    };
}

store_contract!(
    dedup_window_by_receive_time,
    duplicates_inside_one_batch_count_once,
    events_named_by_email_alone_join_their_user,
    an_email_only_event_after_the_call_that_created_its_user_joins_it,
    users_track_creates_then_merges,
    changes_that_need_a_user_are_not_found_without_one,
    tags_are_a_set_and_empty_edits_change_nothing,
    unsubscribe_keeps_the_choice_of_an_unknown_user,
    delete_removes_profile_events_and_dedup_records,
    reidentify_renames_merges_and_keeps_dedup_under_the_old_id,
    restore_keeps_events_as_they_were_without_dedup,
    export_is_oldest_first_by_receive_time,
    export_chunks_end_at_their_byte_budget_and_hold_nothing_between,
    stats_count_events_duplicates_and_refusals,
    stats_past_their_bound_are_refused_by_name,
    credentials_version_moves_with_every_change,
    cursor_key_is_made_once_and_shared,
    projects_are_unique_by_name,
);

async fn dedup_window_by_receive_time(b: &Backend) {
    let e = event("u", "Paid", json!({"amount": 1}));
    assert_eq!(b.track(e.clone()).await, InsertOutcome::Inserted);
    // Same content by value (1.0 is 1): a duplicate.
    assert_eq!(
        b.track(event("u", "paid", json!({"amount": 1.0}))).await,
        InsertOutcome::Duplicate
    );
    b.clock.advance_secs(WINDOW_SECS as i64 - 1);
    assert_eq!(b.track(e.clone()).await, InsertOutcome::Duplicate);
    // Duplicates did not extend the window.
    b.clock.advance_secs(1);
    assert_eq!(b.track(e).await, InsertOutcome::Inserted);
    assert_eq!(b.events_of("u").await.expect("user").len(), 2);
}

async fn duplicates_inside_one_batch_count_once(b: &Backend) {
    let sends = (0..20).map(|_| b.track(event("u", "Burst", json!({"n": 1}))));
    let outcomes = futures::future::join_all(sends).await;
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == InsertOutcome::Inserted)
            .count(),
        1
    );
    assert_eq!(b.events_of("u").await.expect("user").len(), 1);
}

async fn events_named_by_email_alone_join_their_user(b: &Backend) {
    b.change(
        ProfileOp::Track,
        json!({"id": "u-1", "email": "eve@example.com"}),
    )
    .await
    .expect("tracked");
    let by_email = json!({"identity": {"email": "eve@example.com"}, "event_name": "Signed in"});
    assert_eq!(b.track(by_email.clone()).await, InsertOutcome::Inserted);
    assert_eq!(b.events_of("u-1").await, Some(vec!["Signed in".to_owned()]));
    // No second user keyed by the email: a lookup by the email finds u-1.
    assert_eq!(
        b.profile("eve@example.com").await.expect("found")["id"],
        "u-1"
    );
    // Deleting u-1 takes the event's dedup record with it.
    b.change(ProfileOp::Delete, json!({"id": "u-1"}))
        .await
        .expect("deleted");
    assert_eq!(b.track(by_email).await, InsertOutcome::Inserted);
    let fresh = b.profile("eve@example.com").await.expect("new user");
    assert_eq!(fresh["id"], Value::Null);
    assert_eq!(fresh["event_count"], 1);
}

async fn an_email_only_event_after_the_call_that_created_its_user_joins_it(b: &Backend) {
    // Each pair in order (a client's second call after its first answer), the pairs at
    // once, so pairs share batches and a second event may ride in the batch that creates
    // its user. (Two calls in flight together have no order: PostgreSQL's two writers may
    // commit them either way.)
    let pairs = (0..10).map(|i| async move {
        let email = format!("in-run-{i}@example.com");
        let first = b
            .track(json!({"identity": {"id": format!("r{i}"), "email": email},
                          "event_name": "First"}))
            .await;
        let second = b
            .track(json!({"identity": {"email": email}, "event_name": "Second"}))
            .await;
        (first, second)
    });
    let outcomes = futures::future::join_all(pairs).await;
    assert!(outcomes
        .iter()
        .all(|o| *o == (InsertOutcome::Inserted, InsertOutcome::Inserted)));
    for i in 0..10 {
        assert_eq!(
            b.events_of(&format!("r{i}")).await,
            Some(vec!["Second".to_owned(), "First".to_owned()]),
            "r{i}"
        );
        assert_eq!(
            b.profile(&format!("in-run-{i}@example.com"))
                .await
                .expect("by email")["id"],
            format!("r{i}")
        );
    }
}

async fn users_track_creates_then_merges(b: &Backend) {
    b.change(
        ProfileOp::Track,
        json!({"id": "u", "email": "u@example.com", "data": {"a": 1, "b": {"x": 1}},
               "channels": {"type": "push", "address": "t1"}}),
    )
    .await
    .expect("created");
    b.change(
        ProfileOp::Track,
        json!({"id": "u", "data": {"b": {"y": 2}},
               "channels": [{"type": "push", "address": "t1", "platform": "ios"},
                            {"type": "email", "address": "u@example.com"}]}),
    )
    .await
    .expect("merged");
    let p = b.profile("u").await.expect("user");
    assert_eq!(p["email"], "u@example.com");
    assert_eq!(p["properties"], json!({"a": 1, "b": {"y": 2}}));
    assert_eq!(
        p["channels"],
        json!([{"type": "push", "address": "t1", "platform": "ios"},
               {"type": "email", "address": "u@example.com"}])
    );
}

async fn changes_that_need_a_user_are_not_found_without_one(b: &Backend) {
    for (op, body) in [
        (ProfileOp::Edit, json!({"id": "ghost", "changes": {"a": 1}})),
        (ProfileOp::Tags, json!({"id": "ghost", "add": ["t"]})),
        (ProfileOp::Delete, json!({"email": "ghost@example.com"})),
        (
            ProfileOp::Reidentify,
            json!({"id": "ghost", "new_id": "g2"}),
        ),
    ] {
        assert!(
            matches!(
                b.change(op, body.clone()).await,
                Err(StoreError::NotFound(_))
            ),
            "{op:?} {body}"
        );
    }
    assert_eq!(b.profile("ghost").await, None);
    assert_eq!(b.profile("g2").await, None);
    // Onto itself: nothing to change, nothing to find.
    b.change(
        ProfileOp::Reidentify,
        json!({"id": "ghost", "new_id": "ghost"}),
    )
    .await
    .expect("nothing");
    assert_eq!(b.profile("ghost").await, None);
}

async fn tags_are_a_set_and_empty_edits_change_nothing(b: &Backend) {
    b.change(ProfileOp::Track, json!({"id": "u"}))
        .await
        .expect("user");
    b.change(
        ProfileOp::Tags,
        json!({"id": "u", "add": ["b", "a", "b", ""], "remove": null}),
    )
    .await
    .expect("tags");
    b.change(
        ProfileOp::Tags,
        json!({"id": "u", "add": ["c"], "remove": ["a", "c"]}),
    )
    .await
    .expect("tags");
    b.change(
        ProfileOp::Tags,
        json!({"id": "u", "add": [""], "remove": []}),
    )
    .await
    .expect("nothing");
    assert_eq!(b.profile("u").await.expect("user")["tags"], json!(["b"]));
}

async fn unsubscribe_keeps_the_choice_of_an_unknown_user(b: &Backend) {
    b.change(
        ProfileOp::Unsubscribe,
        json!({"email": "later@example.com"}),
    )
    .await
    .expect("kept");
    let p = b.profile("later@example.com").await.expect("created");
    assert_eq!(
        (p["subscribed"].clone(), p["email"].clone()),
        (json!(false), json!("later@example.com"))
    );
    b.change(
        ProfileOp::Resubscribe,
        json!({"email": "later@example.com"}),
    )
    .await
    .expect("resubscribed");
    assert_eq!(
        b.profile("later@example.com").await.expect("user")["subscribed"],
        true
    );
}

async fn delete_removes_profile_events_and_dedup_records(b: &Backend) {
    let e = event("u", "Paid", json!({"n": 1}));
    b.track(e.clone()).await;
    b.track(event("other", "Paid", json!({"n": 1}))).await;
    b.change(ProfileOp::Delete, json!({"id": "u"}))
        .await
        .expect("deleted");
    assert_eq!(b.profile("u").await, None);
    assert_eq!(b.events_of("u").await, None);
    // The dedup record went too: the same event is accepted again at once.
    assert_eq!(b.track(e).await, InsertOutcome::Inserted);
    assert_eq!(b.events_of("other").await.expect("other").len(), 1);
}

async fn reidentify_renames_merges_and_keeps_dedup_under_the_old_id(b: &Backend) {
    let old = event("a", "Paid", json!({"n": 1}));
    b.track(old.clone()).await;
    b.change(ProfileOp::Reidentify, json!({"id": "a", "new_id": "b"}))
        .await
        .expect("renamed");
    assert_eq!(b.profile("a").await, None);
    assert_eq!(b.events_of("b").await.expect("b").len(), 1);
    // A late retry sent with the old id is still a duplicate.
    assert_eq!(b.track(old).await, InsertOutcome::Duplicate);

    b.change(
        ProfileOp::Track,
        json!({"id": "c", "data": {"x": 1, "y": 1}}),
    )
    .await
    .expect("c");
    b.change(ProfileOp::Tags, json!({"id": "c", "add": ["from-c"]}))
        .await
        .expect("tags");
    b.change(ProfileOp::Track, json!({"id": "b", "data": {"y": 2}}))
        .await
        .expect("b");
    b.track(event("c", "Viewed", json!({}))).await;
    b.change(ProfileOp::Reidentify, json!({"id": "c", "new_id": "b"}))
        .await
        .expect("merged");
    assert_eq!(b.profile("c").await, None);
    let merged = b.profile("b").await.expect("b");
    assert_eq!(merged["properties"], json!({"x": 1, "y": 2}));
    assert_eq!(merged["tags"], json!(["from-c"]));
    assert_eq!(merged["event_count"], 2);
    // Deleting the merged user deletes what came from both.
    b.change(ProfileOp::Delete, json!({"id": "b"}))
        .await
        .expect("deleted");
    assert_eq!(
        b.track(event("a", "Paid", json!({"n": 1}))).await,
        InsertOutcome::Inserted
    );
}

async fn restore_keeps_events_as_they_were_without_dedup(b: &Backend) {
    let line = json!({"id": 9, "user": {"id": "r", "email": "r@example.com"},
        "event_name": "Old", "event_key": "old", "data": {"big": 12345678901234567890u64},
        "source": "import", "created_at": "2020-01-01T00:00:00.000000Z",
        "received_at": "2020-01-01T00:00:01.000000Z"});
    let trackd_core::import::ImportItem::Restore(record) =
        trackd_core::import::parse_line(line.to_string().as_bytes(), b.project, b.now())
            .expect("line")
    else {
        panic!("restore")
    };
    b.store
        .restore(vec![(*record).clone(), *record])
        .await
        .expect("restored");
    let (rows, _) = b
        .store
        .events(EventQuery {
            project: b.project,
            user_key: Some("r".into()),
            event_key: None,
            since: None,
            until: None,
            limit: 10,
            cursor: None,
        })
        .await
        .expect("events")
        .expect("user");
    assert_eq!(rows.len(), 2, "restored twice: no dedup");
    assert_eq!(rows[0].data, r#"{"big":12345678901234567890}"#);
    assert_eq!(rows[0].received_at, 1_577_836_801_000_000);
    // History has no dedup records: tracking the same content now is accepted.
    assert_eq!(
        b.track(json!({"identity": {"id": "r"}, "event_name": "Old",
                       "data": {"big": 12345678901234567890u64}}))
            .await,
        InsertOutcome::Inserted
    );
}

async fn export_is_oldest_first_by_receive_time(b: &Backend) {
    for n in 0..5 {
        b.track(
            json!({"identity": {"id": "x"}, "event_name": format!("e{n}"),
                       "extras": {"created_at": 1_000_000_000 - n}}),
        )
        .await;
        b.clock.advance_secs(1);
    }
    let names: Vec<String> = all_chunks(b, None)
        .await
        .into_iter()
        .flatten()
        .map(|row| row.event_name)
        .collect();
    assert_eq!(names, vec!["e0", "e1", "e2", "e3", "e4"]);
    // `since` and `until` bound the receive time.
    let names: Vec<String> = all_chunks(
        b,
        Some((START.as_micros() + 1_000_000, START.as_micros() + 3_000_000)),
    )
    .await
    .into_iter()
    .flatten()
    .map(|row| row.event_name)
    .collect();
    assert_eq!(names, vec!["e1", "e2"]);
}

/// Every chunk of an export of the project, optionally between two receive times.
async fn all_chunks(
    b: &Backend,
    range: Option<(i64, i64)>,
) -> Vec<Vec<trackd_core::read::EventRow>> {
    let query = ExportQuery {
        project: b.project,
        since: range.map(|r| Timestamp::from_micros(r.0)),
        until: range.map(|r| Timestamp::from_micros(r.1)),
    };
    let mut chunks = std::pin::pin!(trackd_core::export_chunks(b.store.clone(), query));
    let mut out = Vec::new();
    while let Some(chunk) = futures::StreamExt::next(&mut chunks).await {
        out.push(chunk.expect("chunk"));
    }
    out
}

async fn export_chunks_end_at_their_byte_budget_and_hold_nothing_between(b: &Backend) {
    let blob = "x".repeat(1_000_000);
    for n in 0..9 {
        b.track(
            json!({"identity": {"id": "fat"}, "event_name": "Big", "data": {"n": n, "blob": blob}}),
        )
        .await;
    }
    let chunks = all_chunks(b, None).await;
    let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
    // About 4 MiB a chunk: it ends with the event that reaches the budget (five of 1 MB),
    // then the other four.
    assert_eq!(sizes, vec![5, 4]);
    let ns: Vec<Value> = chunks
        .into_iter()
        .flatten()
        .map(|row| serde_json::from_str::<Value>(&row.data).expect("data")["n"].clone())
        .collect();
    assert_eq!(ns, (0..9).map(|n| json!(n)).collect::<Vec<_>>());
    // An export resumes from its key after a write between two of its chunks, and the
    // event written meanwhile (received after the others) comes in the second chunk.
    let query = ExportQuery {
        project: b.project,
        since: None,
        until: None,
    };
    let (first, next) = b
        .store
        .export_chunk(query.clone(), None)
        .await
        .expect("chunk");
    assert_eq!(first.len(), 5);
    assert_eq!(
        b.track(event("w", "During", json!({}))).await,
        InsertOutcome::Inserted
    );
    let (second, _) = b.store.export_chunk(query, next).await.expect("chunk");
    // The rest, and the event written meanwhile (received after them).
    assert_eq!(second.len(), 5);
}

async fn stats_count_events_duplicates_and_refusals(b: &Backend) {
    b.track(event("u", "A", json!({}))).await;
    b.track(event("u", "A", json!({}))).await;
    b.track(event("u", "B", json!({}))).await;
    b.store
        .add_counters(vec![
            (b.project, Counter::Rejected("identity".into()), 2),
            (b.project, Counter::Rejected("identity".into()), 1),
        ])
        .await
        .expect("counted");
    let stats = b
        .store
        .stats(StatsQuery {
            project: b.project,
            since: None,
            until: None,
            interval: Interval::Day,
            max_counts: trackd_core::read::STATS_MAX_COUNTS,
        })
        .await
        .expect("stats");
    assert_eq!((stats.accepted, stats.duplicates), (2, 1));
    assert_eq!(stats.rejected, vec![("identity".to_owned(), 3)]);
    let keys: Vec<(&str, i64)> = stats
        .buckets
        .iter()
        .map(|(_, key, n)| (key.as_str(), *n))
        .collect();
    assert_eq!(keys, vec![("a", 1), ("b", 1)]);
}

async fn stats_past_their_bound_are_refused_by_name(b: &Backend) {
    for name in ["A", "B", "C"] {
        b.track(event("u", name, json!({}))).await;
    }
    let query = |max_counts| StatsQuery {
        project: b.project,
        since: None,
        until: None,
        interval: Interval::Hour,
        max_counts,
    };
    assert_eq!(
        b.store.stats(query(3)).await.expect("stats").buckets.len(),
        3
    );
    match b.store.stats(query(2)).await {
        Err(StoreError::Invalid(e)) => assert_eq!(
            e.to_string(),
            "since: the range holds more than 2 counts (buckets × event names): narrow \
             since/until or use interval=day"
        ),
        other => panic!("{other:?}"),
    }
}

async fn credentials_version_moves_with_every_change(b: &Backend) {
    let before = b.store.credentials_version().await.expect("version");
    let token = Token::generate(CredentialKind::Tracking);
    b.store
        .add_credential(b.project, CredentialKind::Tracking, &token)
        .await
        .expect("added");
    let (version, creds) = b.store.credentials().await.expect("credentials");
    assert_ne!(version, before);
    assert!(creds.iter().any(|c| c.hash == token.hash()));
    b.store
        .revoke_credential(b.project, CredentialKind::Tracking, &token)
        .await
        .expect("revoked");
    assert_ne!(
        b.store.credentials_version().await.expect("version"),
        version
    );
    let (_, creds) = b.store.credentials().await.expect("credentials");
    assert!(!creds.iter().any(|c| c.hash == token.hash()));
    assert!(matches!(
        b.store
            .revoke_credential(b.project, CredentialKind::Tracking, &token)
            .await,
        Err(StoreError::NotFound(_))
    ));
}

async fn cursor_key_is_made_once_and_shared(b: &Backend) {
    // Asked at once, from two stores on the same data (two nodes, or a restart).
    let other = b.another_store().await;
    let keys = futures::future::join_all((0..8).map(|i| {
        let store = if i % 2 == 0 { &b.store } else { &other };
        store.cursor_key()
    }))
    .await;
    let first = *keys[0].as_ref().expect("key");
    for key in &keys {
        assert_eq!(key.as_ref().expect("key"), &first);
    }
    assert_ne!(first, [0u8; 32]);
    assert_eq!(b.store.cursor_key().await.expect("key"), first);
    other.shutdown().await.expect("shutdown");
}

async fn projects_are_unique_by_name(b: &Backend) {
    assert!(matches!(
        b.store.create_project("p").await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        b.store.project("nope").await,
        Err(StoreError::NotFound(_))
    ));
    b.store.create_project("q").await.expect("q");
    let names: Vec<String> = b
        .store
        .projects()
        .await
        .expect("projects")
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, vec!["p", "q"]);
}

/// A PostgreSQL database of one case's own on the server at `TRACKD_TEST_DATABASE_URL`.
struct PgDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl PgDatabase {
    async fn create() -> Option<PgDatabase> {
        let required = std::env::var("TRACKD_TEST_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
        let Ok(admin_url) = std::env::var("TRACKD_TEST_DATABASE_URL") else {
            assert!(
                !required,
                "TRACKD_TEST_REQUIRE_POSTGRES=1 but TRACKD_TEST_DATABASE_URL is not set"
            );
            // Straight to the process's stderr: the harness captures `eprintln!`.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: store contract on PostgreSQL (TRACKD_TEST_DATABASE_URL is not set)"
            );
            return None;
        };
        let name = format!(
            "trackd_contract_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        execute(&admin_url, &format!("CREATE DATABASE {name}")).await;
        let (base, query) = admin_url
            .split_once('?')
            .map_or((admin_url.as_str(), ""), |(b, q)| (b, q));
        let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
        let url = if query.is_empty() {
            format!("{base}/{name}")
        } else {
            format!("{base}/{name}?{query}")
        };
        Some(PgDatabase {
            admin_url,
            name,
            url,
        })
    }

    async fn drop_database(self) {
        execute(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        )
        .await;
    }
}

async fn execute(url: &str, sql: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at TRACKD_TEST_DATABASE_URL: {e}"));
    let task = tokio::spawn(connection);
    client.batch_execute(sql).await.expect(sql);
    drop(client);
    let _ = task.await;
}
