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
use trackd_core::delivery::{
    change_item, DeliveryReport, Destination, DestinationChange, DestinationSpec, ItemKind,
    OutboxItem, MAX_DESTINATIONS,
};
use trackd_core::read::{Counter, EventQuery, ExportQuery, Interval, StatsQuery};
use trackd_core::time::ManualClock;
use trackd_core::{
    CredentialKind, DynStore, InsertOutcome, ProfileOp, ProfileRequest, ProjectId, StoreError,
    Timestamp, Token, TrackRequest, TrackedEvent,
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
                message_id_window: Duration::from_secs(86_400),
                queue_capacity: 1000,
                clock: clock.clone(),
                wal_checkpoint_pages: trackd_store::sqlite::DEFAULT_WAL_CHECKPOINT_PAGES,
                writer_cache_kib: trackd_store::sqlite::DEFAULT_CACHE_KIB,
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
                message_id_window: Duration::from_secs(86_400),
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
                    message_id_window: Duration::from_secs(86_400),
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
                message_id_window: Duration::from_secs(86_400),
                queue_capacity: 1000,
                clock: self.clock.clone(),
                wal_checkpoint_pages: trackd_store::sqlite::DEFAULT_WAL_CHECKPOINT_PAGES,
                writer_cache_kib: trackd_store::sqlite::DEFAULT_CACHE_KIB,
            })
            .expect("sqlite store"),
        )
    }

    fn now(&self) -> Timestamp {
        use trackd_core::Clock;
        self.clock.now()
    }

    /// An event for the project, received now.
    fn tracked(&self, body: Value) -> TrackedEvent {
        let Value::Object(map) = body else {
            panic!("object")
        };
        TrackRequest::new(map)
            .validate(self.project, self.now())
            .expect("valid event")
    }

    async fn track(&self, body: Value) -> InsertOutcome {
        self.store.track(self.tracked(body)).await.expect("tracked")
    }

    /// A profile change for the project, received now.
    fn request(&self, op: ProfileOp, body: Value) -> ProfileRequest {
        let Value::Object(map) = body else {
            panic!("object")
        };
        ProfileRequest::parse(op, &map, self.project, self.now()).expect("valid change")
    }

    /// The project's statistics by day, all time.
    async fn stats(&self) -> trackd_core::read::Stats {
        self.store
            .stats(StatsQuery {
                project: self.project,
                since: None,
                until: None,
                interval: Interval::Day,
                max_counts: trackd_core::read::STATS_MAX_COUNTS,
            })
            .await
            .expect("stats")
    }

    /// A profile change that is applied (not suppressed), or its refusal.
    async fn change(&self, op: ProfileOp, body: Value) -> Result<(), StoreError> {
        let outcome = self.store.change_profile(self.request(op, body)).await?;
        assert_eq!(outcome, InsertOutcome::Inserted, "applied");
        Ok(())
    }

    /// Adds a webhook destination named `name` to the project.
    async fn add(&self, name: &str) -> Destination {
        self.store
            .add_destination(self.project, hook(name), format!("whsec_{name}"))
            .await
            .expect("destination added")
    }

    /// The project's destination named `name`, with its backlog.
    async fn destination(&self, name: &str) -> Destination {
        self.store
            .destinations(Some(self.project), true)
            .await
            .expect("destinations")
            .into_iter()
            .find(|d| d.spec.name == name)
            .unwrap_or_else(|| panic!("destination {name}"))
    }

    /// The project's outbox after `after`.
    async fn items(&self, after: i64) -> Vec<OutboxItem> {
        self.store
            .outbox(self.project, after, 1000)
            .await
            .expect("outbox")
    }

    async fn report(&self, report: DeliveryReport) -> bool {
        self.store.report_delivery(report).await.expect("report")
    }

    async fn operate(&self, name: &str, change: DestinationChange) {
        self.store
            .change_destination(self.project, name, change)
            .await
            .expect("changed");
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

fn hook(name: &str) -> DestinationSpec {
    let spec = json!({"name": name, "kind": "webhook", "url": "http://127.0.0.1:9/hook"});
    DestinationSpec::from_json(spec.as_object().expect("object")).expect("valid destination")
}

/// A report from `node` at the destination's generation, changing nothing yet.
fn report(d: &Destination, node: &str) -> DeliveryReport {
    DeliveryReport {
        destination: d.id,
        generation: d.generation,
        node: node.to_owned(),
        ..DeliveryReport::default()
    }
}

fn positions(items: &[OutboxItem]) -> Vec<i64> {
    items.iter().map(|i| i.pos).collect()
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
    a_large_restore_stores_every_event_under_its_user_in_order,
    export_is_oldest_first_by_receive_time,
    export_chunks_end_at_their_byte_budget_and_hold_nothing_between,
    stats_count_events_duplicates_and_refusals,
    stats_past_their_bound_are_refused_by_name,
    credentials_version_moves_with_every_change,
    cursor_key_is_made_once_and_shared,
    projects_are_unique_by_name,
    the_outbox_holds_what_commits_after_a_destination_in_order,
    reports_move_the_cursor_only_for_the_current_generation_and_lease,
    operators_pause_resume_replay_and_redrive,
    deleting_a_user_takes_its_undelivered_changes_and_merging_moves_them,
    leases_go_to_one_node_until_they_expire,
    pruning_deletes_only_passed_old_items_and_keeps_dead_letters,
    destinations_are_listed_with_their_backlog_and_named_once,
    a_reader_following_the_outbox_misses_nothing_while_two_nodes_write,
    changes_committed_in_one_batch_keep_their_order_deletions_and_merges,
    a_new_user_never_takes_a_deleted_ones_items,
    outbox_reads_stop_at_a_byte_budget,
    a_delete_names_the_user_it_deleted,
    a_users_fields_and_seen_times_follow_every_event,
    a_suppressed_user_is_deleted_and_refused_until_unsuppressed,
    a_suppression_by_email_deletes_the_user_the_read_api_finds_by_it,
    an_email_only_event_of_the_user_keyed_by_that_email_sets_its_email,
    a_reidentify_into_a_user_known_by_email_gives_it_the_new_id,
    the_audit_log_pages_newest_first_and_names_users_by_hash,
    retention_deletes_old_events_in_steps_and_keeps_their_counts,
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

/// A restore larger than one multi-row insert (SQLite writes 64 rows a statement), with a
/// suppressed user's events among the others: every other event is stored under its own
/// user with its own data, and the items delivered for them name their own rows, in order.
async fn a_large_restore_stores_every_event_under_its_user_in_order(b: &Backend) {
    let d = b.add("hook").await;
    let actor = trackd_core::privacy::Actor::Key("abcd1234".into());
    b.store
        .suppress(b.project, "ghost".into(), actor)
        .await
        .expect("suppressed");
    let suppressed = |n: i64| n % 7 == 3;
    let user = |n: i64| {
        if suppressed(n) {
            "ghost".to_owned()
        } else {
            format!("u{}", n % 5)
        }
    };
    let start = b.now().as_micros() - 1_000;
    let records: Vec<trackd_core::EventRecord> = (0..150)
        .map(|n| {
            let mut r = b
                .tracked(event(&user(n), "Imported", json!({ "n": n })))
                .record;
            r.received_at = Timestamp::from_micros(start + n);
            r
        })
        .collect();
    let skipped = (0..150).filter(|&n| suppressed(n)).count() as u64;
    assert_eq!(skipped, 21);
    assert_eq!(
        b.store.restore(records, true).await.expect("restored"),
        skipped
    );
    let delivered: Vec<(Option<String>, String)> = b
        .items(d.cursor)
        .await
        .iter()
        .map(|i| {
            let e = i.committed_event().expect("the item's event row");
            (e.user_id, e.data)
        })
        .collect();
    let expected: Vec<(Option<String>, String)> = (0..150)
        .filter(|&n| !suppressed(n))
        .map(|n| (Some(user(n)), format!(r#"{{"n":{n}}}"#)))
        .collect();
    assert_eq!(delivered, expected);
    for u in 0..5 {
        let stored = b.events_of(&format!("u{u}")).await.expect("the user");
        let want = (0..150).filter(|&n| !suppressed(n) && n % 5 == u).count();
        assert_eq!(stored.len(), want, "u{u}");
    }
    assert_eq!(b.events_of("ghost").await, None);
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
        .restore(vec![(*record).clone(), *record], false)
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
    let stats = b.stats().await;
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

// Delivery (DESIGN §8): destinations, the outbox, reports, leases, pruning.

async fn the_outbox_holds_what_commits_after_a_destination_in_order(b: &Backend) {
    // Without a destination, commits write no items.
    assert_eq!(
        b.track(event("u", "Before", json!({}))).await,
        InsertOutcome::Inserted
    );
    b.change(
        ProfileOp::Track,
        json!({"id": "u", "data": {"plan": "free"}}),
    )
    .await
    .expect("user");
    assert_eq!(b.items(0).await, vec![]);

    let d = b.add("hook").await;
    assert_eq!(d.spec, hook("hook"));
    assert_eq!(
        (
            d.secret.as_str(),
            d.cursor,
            d.pending_to,
            d.generation,
            d.delivered
        ),
        ("whsec_hook", 0, 0, 0, 0)
    );
    assert_eq!(
        (&d.paused, &d.last_error, d.created_at, d.state()),
        (&None, &None, START.as_micros(), "running")
    );
    assert_eq!(
        (
            d.project,
            d.project_name.as_str(),
            d.dead_letters,
            d.redrive_pending
        ),
        (b.project, "p", 0, 0)
    );

    let first_at = b.now().as_micros();
    assert_eq!(
        b.track(event("u", "Paid", json!({"amount": 5}))).await,
        InsertOutcome::Inserted
    );
    // A duplicate is not delivered.
    assert_eq!(
        b.track(event("u", "Paid", json!({"amount": 5}))).await,
        InsertOutcome::Duplicate
    );
    b.clock.advance_secs(1);
    let changes = [
        (
            ProfileOp::Track,
            json!({"id": "u", "email": "u@example.com", "data": {"plan": "pro"}}),
        ),
        (ProfileOp::Tags, json!({"id": "u", "add": ["vip"]})),
        (ProfileOp::Unsubscribe, json!({"id": "u"})),
    ];
    let mut expected = Vec::new();
    for (op, body) in changes {
        expected.push(change_item(&b.request(op, body.clone()).change));
        b.change(op, body).await.expect("changed");
        // Changes nothing: no item.
        b.change(ProfileOp::Tags, json!({"id": "u", "add": [""]}))
            .await
            .expect("nothing");
    }
    // Not found: no item.
    assert!(matches!(
        b.change(ProfileOp::Edit, json!({"id": "ghost", "changes": {"a": 1}}))
            .await,
        Err(StoreError::NotFound(_))
    ));
    let last_at = b.now().as_micros();
    b.track(event("u", "Left", json!({}))).await;
    // History restored as it was is not delivered.
    let old = json!({"id": 9, "user": {"id": "u", "email": null}, "event_name": "Old",
        "event_key": "old", "data": {}, "source": null,
        "created_at": "2020-01-01T00:00:00.000000Z", "received_at": "2020-01-01T00:00:01.000000Z"});
    let trackd_core::import::ImportItem::Restore(record) =
        trackd_core::import::parse_line(old.to_string().as_bytes(), b.project, b.now())
            .expect("line")
    else {
        panic!("restore")
    };
    b.store
        .restore(vec![(*record).clone()], false)
        .await
        .expect("restored");
    let restored_record = *record;

    let items = b.items(d.cursor).await;
    let kinds: Vec<ItemKind> = items.iter().map(|i| i.kind).collect();
    assert_eq!(
        kinds,
        vec![
            ItemKind::Event,
            ItemKind::UserTrack,
            ItemKind::UserTags,
            ItemKind::UserUnsubscribe,
            ItemKind::Event
        ]
    );
    let pos = positions(&items);
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "{pos:?}");
    assert!(pos[0] > d.cursor);
    // One user: every item names its row.
    assert!(items.iter().all(|i| i.user_ref == items[0].user_ref));
    let bodies: Vec<Option<String>> = items.iter().map(|i| i.body.clone()).collect();
    assert_eq!(
        bodies,
        vec![
            // An event's item keeps the identity it was tracked with.
            Some(r#"{"id":"u"}"#.to_owned()),
            Some(expected[0].1.clone()),
            Some(expected[1].1.clone()),
            Some(expected[2].1.clone()),
            Some(r#"{"id":"u"}"#.to_owned()),
        ]
    );
    assert_eq!(
        expected.iter().map(|e| e.0).collect::<Vec<_>>(),
        kinds[1..4].to_vec()
    );
    assert_eq!(
        expected[1].1,
        r#"{"id":"u","add":["vip"],"remove":[]}"#.to_owned()
    );
    let received: Vec<i64> = items.iter().map(|i| i.received_at).collect();
    assert_eq!(received, vec![first_at, last_at, last_at, last_at, last_at]);
    // Events come joined with their row, as exported (the email the user has now).
    let paid = items[0].event.clone().expect("event row");
    assert_eq!(
        (
            paid.user_id.as_deref(),
            paid.email.as_deref(),
            paid.event_name.as_str(),
            paid.event_key.as_str(),
            paid.data.as_str(),
            paid.received_at
        ),
        (
            Some("u"),
            Some("u@example.com"),
            "Paid",
            "paid",
            r#"{"amount":5}"#,
            first_at
        )
    );
    assert_eq!(items[4].event.as_ref().expect("row").event_name, "Left");
    assert!(items[1..4].iter().all(|i| i.event.is_none()));
    assert!(items.iter().all(OutboxItem::is_live));

    // Pages: after a position, at most `limit`.
    let page = b
        .store
        .outbox(b.project, d.cursor, 2)
        .await
        .expect("outbox");
    assert_eq!(positions(&page), pos[..2].to_vec());
    assert_eq!(positions(&b.items(pos[1]).await), pos[2..].to_vec());
    assert_eq!(b.items(pos[4]).await, vec![]);

    // Another project without destinations writes nothing, and sees none of these.
    let q = b.store.create_project("q").await.expect("q").id;
    let mut other = b.tracked(event("u", "Elsewhere", json!({})));
    other.record.project = q;
    assert_eq!(
        b.store.track(other).await.expect("tracked"),
        InsertOutcome::Inserted
    );
    assert_eq!(b.store.outbox(q, 0, 100).await.expect("outbox"), vec![]);

    // A destination added now starts after everything committed.
    let late = b.add("late").await;
    assert_eq!(late.cursor, pos[4]);
    assert_eq!(b.items(late.cursor).await, vec![]);
    b.track(event("u", "After", json!({}))).await;
    let after = b.items(late.cursor).await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].event.as_ref().expect("row").event_name, "After");

    // Track bodies imported without dedup are new events: delivered.
    b.store
        .restore(vec![restored_record], true)
        .await
        .expect("restored");
    let fresh = b.items(after[0].pos).await;
    assert_eq!(
        fresh
            .iter()
            .map(|i| (i.kind, i.committed_event().map(|e| e.event_name)))
            .collect::<Vec<_>>(),
        vec![(ItemKind::Event, Some("Old".to_owned()))]
    );
}

async fn reports_move_the_cursor_only_for_the_current_generation_and_lease(b: &Backend) {
    let d = b.add("hook").await;
    assert!(b.store.lease(d.id, "a", 60_000).await.expect("lease"));
    for n in 0..3 {
        b.track(event("u", "E", json!({ "n": n }))).await;
        b.clock.advance_secs(1);
    }
    let items = b.items(d.cursor).await;
    let pos = positions(&items);
    assert_eq!(pos.len(), 3);

    // The batch about to be sent.
    assert!(
        b.report(DeliveryReport {
            pending_to: Some(pos[1]),
            ..report(&d, "a")
        })
        .await
    );
    assert_eq!(b.destination("hook").await.pending_to, pos[1]);
    // Acknowledged up to pos[1], the first refused for good, the last attempt failing.
    assert!(
        b.report(DeliveryReport {
            cursor: Some(pos[1]),
            pending_to: Some(0),
            delivered: 1,
            dead: vec![(pos[0], 400, "bad request".into())],
            last_error: Some(Some("HTTP 503".into())),
            ..report(&d, "a")
        })
        .await
    );
    let now = b.destination("hook").await;
    assert_eq!(
        (now.cursor, now.pending_to, now.delivered, now.generation),
        (pos[1], 0, 1, 0)
    );
    assert_eq!(
        (
            now.dead_letters,
            now.redrive_pending,
            now.last_error.as_deref()
        ),
        (1, 0, Some("HTTP 503"))
    );
    assert_eq!(
        (now.backlog, now.oldest_undelivered, now.state()),
        (1, Some(items[2].received_at), "retrying")
    );

    // A stale generation, a foreign node, an unknown destination: refused, nothing written.
    let refused = [
        DeliveryReport {
            generation: 1,
            ..report(&d, "a")
        },
        report(&d, "b"),
        DeliveryReport {
            destination: d.id + 1000,
            ..report(&d, "a")
        },
    ];
    for r in refused {
        assert!(
            !b.report(DeliveryReport {
                cursor: Some(pos[2]),
                delivered: 5,
                dead: vec![(pos[2], 400, "no".into())],
                last_error: Some(None),
                pause: Some("no".into()),
                ..r
            })
            .await
        );
    }
    assert_eq!(b.destination("hook").await, now);

    // Leaving `last_error` out keeps it; `Some(None)` clears it.
    assert!(
        b.report(DeliveryReport {
            delivered: 0,
            ..report(&d, "a")
        })
        .await
    );
    assert_eq!(
        b.destination("hook").await.last_error.as_deref(),
        Some("HTTP 503")
    );
    assert!(
        b.report(DeliveryReport {
            cursor: Some(pos[2]),
            delivered: 1,
            last_error: Some(None),
            ..report(&d, "a")
        })
        .await
    );
    let done = b.destination("hook").await;
    assert_eq!(
        (
            done.cursor,
            done.delivered,
            done.last_error.clone(),
            done.state()
        ),
        (pos[2], 2, None, "running")
    );
    assert_eq!((done.backlog, done.oldest_undelivered), (0, None));

    // The cursor only moves forward in a report: a late one of a stopped loop is kept for
    // its counts, never taken back.
    assert!(
        b.report(DeliveryReport {
            cursor: Some(pos[0]),
            delivered: 1,
            ..report(&d, "a")
        })
        .await
    );
    let late = b.destination("hook").await;
    assert_eq!((late.cursor, late.delivered), (pos[2], 3));

    // A receiver's refusal pauses (the loop stops itself; the generation stays).
    assert!(
        b.report(DeliveryReport {
            pause: Some("vero answered 401".into()),
            ..report(&d, "a")
        })
        .await
    );
    let paused = b.destination("hook").await;
    assert_eq!(
        (paused.paused.as_deref(), paused.generation, paused.state()),
        (Some("vero answered 401"), 0, "paused")
    );
    assert!(b.report(report(&paused, "a")).await);
}

async fn operators_pause_resume_replay_and_redrive(b: &Backend) {
    let d = b.add("hook").await;
    assert!(b.store.lease(d.id, "a", 60_000).await.expect("lease"));
    for n in 0..4 {
        b.track(event("u", "E", json!({ "n": n }))).await;
        b.clock.advance_secs(10);
    }
    let items = b.items(d.cursor).await;
    let pos = positions(&items);
    assert!(
        b.report(DeliveryReport {
            cursor: Some(pos[3]),
            pending_to: Some(pos[3]),
            delivered: 2,
            dead: vec![(pos[0], 400, "no".into()), (pos[2], 422, "no".into())],
            last_error: Some(Some("HTTP 500".into())),
            ..report(&d, "a")
        })
        .await
    );

    // Pause and resume keep the generation: what a loop stopped by the pause had
    // acknowledged is still recorded.
    b.operate("hook", DestinationChange::Pause).await;
    let paused = b.destination("hook").await;
    assert_eq!(
        (paused.paused.as_deref(), paused.generation, paused.state()),
        (Some("paused by an operator"), 0, "paused")
    );
    assert!(b.report(report(&d, "a")).await);
    // But a loop may not announce another batch while paused.
    assert!(
        !b.report(DeliveryReport {
            pending_to: Some(pos[3]),
            ..report(&d, "a")
        })
        .await
    );

    b.operate("hook", DestinationChange::Resume).await;
    let resumed = b.destination("hook").await;
    assert_eq!(
        (&resumed.paused, &resumed.last_error, resumed.generation),
        (&None, &None, 0)
    );
    assert_eq!((resumed.cursor, resumed.pending_to), (pos[3], pos[3]));

    // Replay from the second item's receive time: the cursor goes back before it.
    b.operate(
        "hook",
        DestinationChange::Replay {
            since: items[1].received_at,
        },
    )
    .await;
    let replayed = b.destination("hook").await;
    assert_eq!(
        (replayed.cursor, replayed.pending_to, replayed.generation),
        (pos[1] - 1, 0, 1)
    );
    assert_eq!(replayed.backlog, 3);
    assert_eq!(
        positions(&b.items(replayed.cursor).await),
        pos[1..].to_vec()
    );
    // A replay from later than the cursor never moves it forward (nor one past every item).
    for since in [items[3].received_at, b.now().as_micros() + 1_000_000] {
        b.operate("hook", DestinationChange::Replay { since }).await;
    }
    let again = b.destination("hook").await;
    assert_eq!((again.cursor, again.generation), (pos[1] - 1, 3));
    // A report of the generation before the replay is refused.
    assert!(!b.report(report(&d, "a")).await);

    // Redrive marks every dead letter; they come back with their rows, in order.
    assert_eq!(
        b.store.redrive_items(d.id, 10).await.expect("redrive"),
        vec![]
    );
    b.operate("hook", DestinationChange::Redrive).await;
    let marked = b.destination("hook").await;
    assert_eq!((marked.dead_letters, marked.redrive_pending), (2, 2));
    let redrive = b.store.redrive_items(d.id, 10).await.expect("redrive");
    assert_eq!(positions(&redrive), vec![pos[0], pos[2]]);
    assert_eq!(redrive[0], items[0]);
    assert_eq!(
        positions(&b.store.redrive_items(d.id, 1).await.expect("redrive")),
        vec![pos[0]]
    );
    // One acknowledged, the other refused again (a dead letter again, not marked).
    assert!(
        b.report(DeliveryReport {
            redriven: vec![pos[0], pos[2]],
            dead: vec![(pos[2], 410, "gone".into())],
            ..report(&marked, "a")
        })
        .await
    );
    let after = b.destination("hook").await;
    assert_eq!((after.dead_letters, after.redrive_pending), (1, 0));
    assert_eq!(
        b.store.redrive_items(d.id, 10).await.expect("redrive"),
        vec![]
    );
    b.operate("hook", DestinationChange::Redrive).await;
    assert_eq!(
        positions(&b.store.redrive_items(d.id, 10).await.expect("redrive")),
        vec![pos[2]]
    );

    // Unknown names are not found; a removed destination is gone with its dead letters.
    for change in [
        DestinationChange::Pause,
        DestinationChange::Resume,
        DestinationChange::Remove,
        DestinationChange::Redrive,
        DestinationChange::Replay { since: 0 },
    ] {
        assert!(
            matches!(
                b.store.change_destination(b.project, "nope", change.clone()).await,
                Err(StoreError::NotFound(ref m)) if m == "destination nope"
            ),
            "{change:?}"
        );
    }
    b.operate("hook", DestinationChange::Remove).await;
    assert_eq!(
        b.store
            .destinations(Some(b.project), true)
            .await
            .expect("destinations"),
        vec![]
    );
    assert_eq!(
        b.store.redrive_items(d.id, 10).await.expect("redrive"),
        vec![]
    );
    assert!(!b.report(report(&after, "a")).await);
    assert!(matches!(
        b.store
            .change_destination(b.project, "hook", DestinationChange::Pause)
            .await,
        Err(StoreError::NotFound(_))
    ));
}

async fn deleting_a_user_takes_its_undelivered_changes_and_merging_moves_them(b: &Backend) {
    let d = b.add("hook").await;
    b.change(ProfileOp::Track, json!({"id": "u", "data": {"a": 1}}))
        .await
        .expect("u");
    b.track(event("u", "Paid", json!({}))).await;
    b.change(ProfileOp::Tags, json!({"id": "u", "add": ["t"]}))
        .await
        .expect("tags");
    b.track(event("o", "Paid", json!({}))).await;
    let before = b.items(d.cursor).await;
    assert_eq!(before.len(), 4);
    // The receiver refused the user's event and its tags for good.
    assert!(b.store.lease(d.id, "a", 60_000).await.expect("lease"));
    assert!(
        b.report(DeliveryReport {
            cursor: Some(before[3].pos),
            dead: vec![
                (before[1].pos, 400, "no".into()),
                (before[2].pos, 400, "no".into())
            ],
            ..report(&d, "a")
        })
        .await
    );
    assert_eq!(b.destination("hook").await.dead_letters, 2);
    b.change(ProfileOp::Delete, json!({"id": "u"}))
        .await
        .expect("deleted");
    // Both dead letters went with their items (the event's and the tags').
    b.operate("hook", DestinationChange::Redrive).await;
    let left = b.destination("hook").await;
    assert_eq!((left.dead_letters, left.redrive_pending), (0, 0));
    assert_eq!(
        b.store.redrive_items(d.id, 10).await.expect("redrive"),
        vec![]
    );
    // A refusal reported for an item deleted meanwhile leaves no dead letter behind.
    assert!(
        b.report(DeliveryReport {
            dead: vec![(before[2].pos, 400, "late".into())],
            ..report(&d, "a")
        })
        .await
    );
    assert_eq!(b.destination("hook").await.dead_letters, 0);
    let items = b.items(d.cursor).await;
    let kinds: Vec<ItemKind> = items.iter().map(|i| i.kind).collect();
    // The user's items are gone, the event item included (it held the user's identity).
    assert_eq!(kinds, vec![ItemKind::Event, ItemKind::UserDelete]);
    assert_eq!(items[0], before[3]);
    // The deletion itself is delivered.
    assert_eq!(items[1].body.as_deref(), Some(r#"{"id":"u"}"#));
    assert_eq!(items[1].user_ref, before[0].user_ref);

    // Merging c into b: c's undelivered items follow it (its events keep the identity they
    // were tracked with).
    let start = items[1].pos;
    b.change(ProfileOp::Track, json!({"id": "c", "data": {"x": 1}}))
        .await
        .expect("c");
    b.change(ProfileOp::Tags, json!({"id": "c", "add": ["from-c"]}))
        .await
        .expect("tags");
    b.track(event("c", "Viewed", json!({}))).await;
    b.change(ProfileOp::Track, json!({"id": "b", "data": {"y": 2}}))
        .await
        .expect("b");
    let before = b.items(start).await;
    let (c_ref, b_ref) = (before[0].user_ref, before[3].user_ref);
    assert_ne!(c_ref, b_ref);
    b.change(ProfileOp::Reidentify, json!({"id": "c", "new_id": "b"}))
        .await
        .expect("merged");
    let items = b.items(start).await;
    let refs: Vec<(ItemKind, i64)> = items.iter().map(|i| (i.kind, i.user_ref)).collect();
    assert_eq!(
        refs,
        vec![
            (ItemKind::UserTrack, b_ref),
            (ItemKind::UserTags, b_ref),
            (ItemKind::Event, b_ref),
            (ItemKind::UserTrack, b_ref),
            (ItemKind::UserReidentify, b_ref),
        ]
    );
    assert_ne!(c_ref, b_ref);
    assert_eq!(
        items[2].event.as_ref().expect("row").user_id.as_deref(),
        Some("b")
    );
    assert_eq!(
        items[2].committed_event().expect("row").user_id.as_deref(),
        Some("c")
    );
    assert_eq!(items[4].body.as_deref(), Some(r#"{"id":"c","new_id":"b"}"#));
    // Deleting b now takes what came from both.
    b.change(ProfileOp::Delete, json!({"id": "b"}))
        .await
        .expect("deleted");
    let kinds: Vec<(ItemKind, bool)> = b
        .items(start)
        .await
        .iter()
        .map(|i| (i.kind, i.is_live()))
        .collect();
    assert_eq!(kinds, vec![(ItemKind::UserDelete, true)]);
}

async fn leases_go_to_one_node_until_they_expire(b: &Backend) {
    let d = b.add("hook").await;
    let lease = |node: &'static str| b.store.lease(d.id, node, 1_000);
    assert!(lease("a").await.expect("lease"));
    assert!(!lease("b").await.expect("lease"));
    // Renewed by its holder.
    assert!(lease("a").await.expect("lease"));
    assert!(!lease("b").await.expect("lease"));
    assert!(b.report(report(&d, "a")).await);
    assert!(!b.report(report(&d, "b")).await);
    // Expired (SQLite judges by the store's clock, PostgreSQL by the database's).
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    b.clock.advance_secs(2);
    assert!(lease("b").await.expect("lease"));
    assert!(!lease("a").await.expect("lease"));
    assert!(!b.report(report(&d, "a")).await);
    assert!(b.report(report(&d, "b")).await);
    assert!(!b.store.lease(d.id + 1000, "a", 1_000).await.expect("lease"));
}

async fn pruning_deletes_only_passed_old_items_and_keeps_dead_letters(b: &Backend) {
    let d = b.add("hook").await;
    let d2 = b.add("other").await;
    for d in [&d, &d2] {
        assert!(b.store.lease(d.id, "a", 60_000).await.expect("lease"));
    }
    for n in 0..4 {
        b.track(event("u", "E", json!({ "n": n }))).await;
    }
    b.clock.advance_secs(3600);
    b.track(event("u", "E", json!({"n": 4}))).await;
    let pos = positions(&b.items(d.cursor).await);
    assert_eq!(pos.len(), 5);
    let keep = 1_800_000_000; // 30 minutes
                              // Nothing passed yet.
    assert_eq!(b.store.prune_outbox(keep).await.expect("prune"), 0);
    assert!(
        b.report(DeliveryReport {
            cursor: Some(pos[2]),
            dead: vec![(pos[1], 400, "no".into())],
            ..report(&d, "a")
        })
        .await
    );
    assert!(
        b.report(DeliveryReport {
            cursor: Some(pos[0]),
            ..report(&d2, "a")
        })
        .await
    );
    // Only what every destination passed.
    assert_eq!(b.store.prune_outbox(keep).await.expect("prune"), 1);
    assert_eq!(positions(&b.items(0).await), pos[1..].to_vec());
    assert!(
        b.report(DeliveryReport {
            cursor: Some(pos[4]),
            ..report(&d2, "a")
        })
        .await
    );
    // The dead letter's item stays, and so does the newest (too recent) and pos[3] (not
    // passed by `hook`).
    assert_eq!(b.store.prune_outbox(keep).await.expect("prune"), 1);
    assert_eq!(positions(&b.items(0).await), vec![pos[1], pos[3], pos[4]]);
    assert_eq!(b.store.prune_outbox(keep).await.expect("prune"), 0);
    // Without `hook` (and its dead letters), `other` has passed them all.
    b.operate("hook", DestinationChange::Remove).await;
    assert_eq!(b.store.prune_outbox(keep).await.expect("prune"), 2);
    assert_eq!(positions(&b.items(0).await), vec![pos[4]]);
    // A project without destinations keeps nothing older than `keep`.
    b.operate("other", DestinationChange::Remove).await;
    assert_eq!(b.store.prune_outbox(keep).await.expect("prune"), 0);
    b.clock.advance_secs(1);
    // Received exactly `keep` ago is kept; a microsecond more and it goes.
    assert_eq!(b.store.prune_outbox(1_000_000).await.expect("prune"), 0);
    assert_eq!(b.store.prune_outbox(999_999).await.expect("prune"), 1);
    assert_eq!(b.items(0).await, vec![]);
}

async fn destinations_are_listed_with_their_backlog_and_named_once(b: &Backend) {
    let q = b.store.create_project("a-first").await.expect("project").id;
    b.add("b-hook").await;
    b.add("a-hook").await;
    b.store
        .add_destination(q, hook("z"), "whsec_z".into())
        .await
        .expect("added");
    let names = |list: Vec<Destination>| -> Vec<(String, String)> {
        list.into_iter()
            .map(|d| (d.project_name, d.spec.name))
            .collect()
    };
    let pair = |p: &str, n: &str| (p.to_owned(), n.to_owned());
    assert_eq!(
        names(b.store.destinations(None, false).await.expect("all")),
        vec![
            pair("a-first", "z"),
            pair("p", "a-hook"),
            pair("p", "b-hook")
        ]
    );
    assert_eq!(
        names(b.store.destinations(Some(q), false).await.expect("q")),
        vec![pair("a-first", "z")]
    );

    let first_at = b.now().as_micros();
    b.track(event("u", "E", json!({}))).await;
    b.clock.advance_secs(5);
    b.change(ProfileOp::Tags, json!({"id": "u", "add": ["t"]}))
        .await
        .expect("tags");
    let counted = b
        .store
        .destinations(Some(b.project), true)
        .await
        .expect("destinations");
    let backlogs: Vec<(i64, Option<i64>)> = counted
        .iter()
        .map(|d| (d.backlog, d.oldest_undelivered))
        .collect();
    assert_eq!(backlogs, vec![(2, Some(first_at)), (2, Some(first_at))]);
    assert_eq!(counted[0].oldest_undelivered_secs(b.now()), 5);
    let uncounted: Vec<(i64, Option<i64>)> = b
        .store
        .destinations(Some(b.project), false)
        .await
        .expect("destinations")
        .iter()
        .map(|d| (d.backlog, d.oldest_undelivered))
        .collect();
    assert_eq!(uncounted, vec![(0, None), (0, None)]);
    // The other project's destination has nothing to deliver.
    let z = &b.store.destinations(Some(q), true).await.expect("q")[0];
    assert_eq!((z.backlog, z.oldest_undelivered), (0, None));

    // Names are unique in a project (not across projects), up to a bound.
    assert!(matches!(
        b.store
            .add_destination(b.project, hook("a-hook"), String::new())
            .await,
        Err(StoreError::Conflict(ref m)) if m == "destination a-hook"
    ));
    b.add("z").await;
    for n in 3..MAX_DESTINATIONS {
        b.add(&format!("d{n}")).await;
    }
    match b
        .store
        .add_destination(b.project, hook("one-more"), String::new())
        .await
    {
        Err(StoreError::Invalid(e)) => assert_eq!(e.field, "name"),
        other => panic!("{other:?}"),
    }
    let ours = b
        .store
        .destinations(Some(b.project), false)
        .await
        .expect("destinations");
    assert_eq!(ours.len(), MAX_DESTINATIONS);
    // Ids are unique across projects.
    let mut ids: Vec<i64> = b
        .store
        .destinations(None, false)
        .await
        .expect("all")
        .iter()
        .map(|d| d.id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), MAX_DESTINATIONS + 1);
    // Removing one makes room.
    b.operate("a-hook", DestinationChange::Remove).await;
    b.add("one-more").await;
    assert!(names(
        b.store
            .destinations(Some(b.project), false)
            .await
            .expect("p")
    )
    .iter()
    .all(|(_, n)| n != "a-hook"));
}

async fn a_reader_following_the_outbox_misses_nothing_while_two_nodes_write(b: &Backend) {
    use std::sync::atomic::{AtomicBool, Ordering};
    const CLIENTS: usize = 8;
    const EACH: usize = 50;
    let d = b.add("hook").await;
    let other = b.another_store().await;
    let done = AtomicBool::new(false);
    let late = std::sync::Mutex::new(None);
    // Clients of either node, each sending in turn: many small batches commit at once.
    // Halfway through, the first client adds a destination (through the other node).
    let write = async {
        let clients = (0..CLIENTS).map(|c| {
            let store = if c % 2 == 0 { &b.store } else { &other };
            let (other, late) = (&other, &late);
            async move {
                let mut outcomes = Vec::new();
                for n in 0..EACH {
                    if c == 0 && n == EACH / 2 {
                        let added = other
                            .add_destination(b.project, hook("late"), String::new())
                            .await
                            .expect("added");
                        *late.lock().expect("late") = Some(added);
                    }
                    let e = b.tracked(event(&format!("u{c}"), "E", json!({ "n": n })));
                    outcomes.push(store.track(e).await);
                }
                outcomes
            }
        });
        let outcomes: Vec<_> = futures::future::join_all(clients)
            .await
            .into_iter()
            .flatten()
            .collect();
        done.store(true, Ordering::SeqCst);
        outcomes
    };
    // (position, user, n) of each item.
    let shape = |items: Vec<OutboxItem>| -> Vec<(i64, String, i64)> {
        items
            .into_iter()
            .map(|i| {
                let row = i.event.expect("event row");
                let data: Value = serde_json::from_str(&row.data).expect("data");
                (
                    i.pos,
                    row.user_id.expect("user"),
                    data["n"].as_i64().expect("n"),
                )
            })
            .collect()
    };
    // Reads as a delivery loop does, from the last position it saw.
    let read = async {
        let mut seen = Vec::new();
        let mut after = d.cursor;
        loop {
            let finished = done.load(Ordering::SeqCst);
            let page = b.store.outbox(b.project, after, 37).await.expect("outbox");
            if let Some(last) = page.last() {
                after = last.pos;
            }
            let empty = page.is_empty();
            seen.extend(shape(page));
            if finished && empty {
                return seen;
            }
            if empty {
                tokio::task::yield_now().await;
            }
        }
    };
    let (outcomes, seen) = tokio::join!(write, read);
    assert!(outcomes
        .iter()
        .all(|o| matches!(o, Ok(InsertOutcome::Inserted))));
    let all = shape(b.items(d.cursor).await);
    assert_eq!(all.len(), CLIENTS * EACH);
    assert_eq!(seen, all);
    // Each client's events in its order: positions follow commit order.
    for c in 0..CLIENTS {
        let ns: Vec<i64> = all
            .iter()
            .filter(|(_, u, _)| *u == format!("u{c}"))
            .map(|(_, _, n)| *n)
            .collect();
        assert_eq!(ns, (0..EACH as i64).collect::<Vec<_>>(), "u{c}");
    }
    // The destination added meanwhile starts exactly between the first client's events
    // before it and after it, and gets the same items as the first from there on.
    let late = late.lock().expect("late").clone().expect("added");
    let after_late = shape(b.items(late.cursor).await);
    let first: Vec<i64> = after_late
        .iter()
        .filter(|(_, u, _)| u == "u0")
        .map(|(_, _, n)| *n)
        .collect();
    assert_eq!(first, (EACH as i64 / 2..EACH as i64).collect::<Vec<_>>());
    assert_eq!(after_late[..], all[all.len() - after_late.len()..]);
    other.shutdown().await.expect("shutdown");
}

async fn changes_committed_in_one_batch_keep_their_order_deletions_and_merges(b: &Backend) {
    let d = b.add("hook").await;
    b.change(ProfileOp::Track, json!({"id": "blocker"}))
        .await
        .expect("blocker");
    // PostgreSQL: both writers of the node are kept busy on changes of a user locked beside
    // the store, so everything queued meanwhile commits in one batch. (SQLite's one writer
    // takes the queue in order whatever its batches.)
    let mut held = None;
    let mut blocked = Vec::new();
    if let Some(db) = &b.pg {
        let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        let connection = tokio::spawn(connection);
        client
            .batch_execute("BEGIN; SELECT 1 FROM users WHERE user_key = 'blocker' FOR UPDATE")
            .await
            .expect("row lock");
        for n in 0..2 {
            let request = b.request(
                ProfileOp::Edit,
                json!({"id": "blocker", "changes": { "n": n }}),
            );
            blocked.push(b.store.change_profile(request));
            // Taken by a writer, which now waits for the lock.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        held = Some((client, connection));
    }
    // Queued at once, in this order (each call queues its job before returning).
    let changes = [
        (ProfileOp::Track, json!({"id": "u", "data": {"a": 1}})),
        (ProfileOp::Tags, json!({"id": "u", "add": ["t"]})),
        (ProfileOp::Delete, json!({"id": "u"})),
        (ProfileOp::Track, json!({"id": "c", "data": {"x": 1}})),
        (ProfileOp::Tags, json!({"id": "c", "add": ["from-c"]})),
        (ProfileOp::Track, json!({"id": "b", "data": {"y": 1}})),
        (ProfileOp::Reidentify, json!({"id": "c", "new_id": "b"})),
    ];
    let mut changed = Vec::new();
    let mut tracked = Vec::new();
    for (i, (op, body)) in changes.into_iter().enumerate() {
        if i == 1 {
            tracked.push(b.store.track(b.tracked(event("u", "Paid", json!({})))));
        }
        changed.push(b.store.change_profile(b.request(op, body)));
    }
    tracked.push(b.store.track(b.tracked(event("o", "Paid", json!({})))));
    if let Some((client, connection)) = held {
        client.batch_execute("COMMIT").await.expect("release");
        drop(client);
        let _ = connection.await;
    }
    for done in futures::future::join_all(blocked.into_iter().chain(changed)).await {
        done.expect("changed");
    }
    for outcome in futures::future::join_all(tracked).await {
        assert_eq!(outcome.expect("tracked"), InsertOutcome::Inserted);
    }
    let items = b.items(d.cursor).await;
    // Without the blocker's own changes (PostgreSQL's commit before the batch).
    let items: Vec<&OutboxItem> = items
        .iter()
        .filter(|i| {
            !i.body
                .as_deref()
                .is_some_and(|b| b.contains(r#""blocker""#))
        })
        .collect();
    let shape: Vec<(ItemKind, bool)> = items.iter().map(|i| (i.kind, i.is_live())).collect();
    assert_eq!(
        shape,
        vec![
            // u's items went with it (its event's too), but the deletion.
            (ItemKind::UserDelete, true),
            // c's changes follow it into b.
            (ItemKind::UserTrack, true),
            (ItemKind::UserTags, true),
            (ItemKind::UserTrack, true),
            (ItemKind::UserReidentify, true),
            (ItemKind::Event, true),
        ]
    );
    let refs: Vec<i64> = items.iter().map(|i| i.user_ref).collect();
    assert!(refs[1..5].iter().all(|r| *r == refs[1]));
    assert!(refs[0] != refs[1] && refs[5] != refs[0] && refs[5] != refs[1]);
    assert_eq!(
        items[1].body.as_deref(),
        Some(r#"{"id":"c","data":{"x":1}}"#)
    );
    assert_eq!(
        items[5].event.as_ref().expect("row").user_id.as_deref(),
        Some("o")
    );
}

async fn a_new_user_never_takes_a_deleted_ones_items(b: &Backend) {
    let d = b.add("hook").await;
    // The newest user, deleted: its id must not be given again.
    b.change(ProfileOp::Track, json!({"id": "first"}))
        .await
        .expect("first");
    b.change(ProfileOp::Delete, json!({"id": "first"}))
        .await
        .expect("deleted");
    b.change(ProfileOp::Track, json!({"id": "second"}))
        .await
        .expect("second");
    let items = b.items(d.cursor).await;
    assert_eq!(items.len(), 2);
    assert_ne!(items[0].user_ref, items[1].user_ref);
    // Deleting the new user leaves the first one's deletion to deliver.
    b.change(ProfileOp::Delete, json!({"id": "second"}))
        .await
        .expect("deleted");
    let bodies: Vec<(ItemKind, Option<String>)> = b
        .items(d.cursor)
        .await
        .into_iter()
        .map(|i| (i.kind, i.body))
        .collect();
    assert_eq!(
        bodies,
        vec![
            (ItemKind::UserDelete, Some(r#"{"id":"first"}"#.to_owned())),
            (ItemKind::UserDelete, Some(r#"{"id":"second"}"#.to_owned())),
        ]
    );
}

/// PostgreSQL only (several nodes commit at once there): a destination added while a
/// transaction that could not see it is in flight either waits for its commit or gets its
/// items. The transaction is held mid-way by a row lock taken beside the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_destination_added_during_a_commit_misses_nothing() {
    let Some(b) = Backend::postgres().await else {
        return;
    };
    b.change(ProfileOp::Track, json!({"id": "u"}))
        .await
        .expect("u");
    let url = b.pg.as_ref().expect("database").url.clone();
    let (mut client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let connection = tokio::spawn(connection);
    let holder = client.transaction().await.expect("begin");
    holder
        .execute("SELECT 1 FROM users WHERE user_key = 'u' FOR UPDATE", &[])
        .await
        .expect("row lock");
    let edit = tokio::spawn({
        let store = b.store.clone();
        let request = b.request(ProfileOp::Edit, json!({"id": "u", "changes": {"a": 1}}));
        async move { store.change_profile(request).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let add = tokio::spawn({
        let (store, project) = (b.store.clone(), b.project);
        async move {
            store
                .add_destination(project, hook("hook"), String::new())
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Added while the edit could not commit yet: the edit commits after it.
    let added_first = add.is_finished();
    holder.commit().await.expect("release");
    edit.await.expect("edit task").expect("edited");
    let d = add.await.expect("add task").expect("added");
    let kinds: Vec<ItemKind> = b.items(d.cursor).await.iter().map(|i| i.kind).collect();
    if added_first {
        assert_eq!(kinds, vec![ItemKind::UserEdit]);
    } else {
        assert_eq!(kinds, vec![]);
    }
    // As built: adding waits for the project's transactions in flight.
    assert!(!added_first, "the destination did not wait");
    drop(client);
    let _ = connection.await;
    b.close().await;
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

async fn outbox_reads_stop_at_a_byte_budget(b: &Backend) {
    let d = b.add("hook").await;
    let blob = "x".repeat(900_000);
    for n in 0..10 {
        b.track(event("u", "Big", json!({ "n": n, "blob": blob })))
            .await;
    }
    // 10 items of about 0.9 MB: one read holds as many as fit about 4 MiB, not all ten.
    let first = b
        .store
        .outbox(b.project, d.cursor, 1000)
        .await
        .expect("outbox");
    assert_eq!(first.len(), 5, "{} items", first.len());
    let bytes: usize = first.iter().map(OutboxItem::bytes).sum();
    let page = trackd_core::read::PAGE_BYTES;
    assert!((page..page + 1_000_000).contains(&bytes), "{bytes}");
    // The next read goes on where it stopped; every item comes, once.
    let rest = b
        .store
        .outbox(b.project, first[4].pos, 1000)
        .await
        .expect("outbox");
    assert_eq!(rest.len(), 5);
    let ns: Vec<i64> = first
        .iter()
        .chain(&rest)
        .map(|i| {
            let data: Value =
                serde_json::from_str(&i.event.as_ref().expect("row").data).expect("json");
            data["n"].as_i64().expect("n")
        })
        .collect();
    assert_eq!(ns, (0..10).collect::<Vec<_>>());
}

async fn a_delete_names_the_user_it_deleted(b: &Backend) {
    let d = b.add("hook").await;
    b.change(
        ProfileOp::Track,
        json!({"id": "d1", "email": "d1@example.com"}),
    )
    .await
    .expect("d1");
    // Named by email, delivered as the user it deleted: its id (what Vero deletes by), and
    // nothing else of it.
    b.change(ProfileOp::Delete, json!({"email": "d1@example.com"}))
        .await
        .expect("deleted");
    let items = b.items(d.cursor).await;
    assert_eq!(items.len(), 1, "the user's own items went with it");
    assert_eq!(items[0].kind, ItemKind::UserDelete);
    assert_eq!(items[0].body.as_deref(), Some(r#"{"id":"d1"}"#));
}

/// The user an event is filed under, and what it does to the user's row (DESIGN §3's
/// upsert), whatever the writer remembers of users between events: the email an event
/// brings is kept, first and last seen span every event (several in one batch too), and a
/// user deleted or merged away between two events is not written to by the second.
async fn a_users_fields_and_seen_times_follow_every_event(b: &Backend) {
    let seen = |key: &'static str| async move {
        let p = b
            .store
            .user(b.project, key)
            .await
            .expect("user")
            .expect("a user");
        (p.email, p.first_seen, p.last_seen, p.event_count)
    };
    let start = b.now().as_micros();
    // A user made by its first event `secs` after the start, with that event alone.
    let fresh = |email: &str, secs: i64| {
        let at = start + secs * 1_000_000;
        (Some(email.to_owned()), at, at, 1)
    };
    let with_email = |n: u32, email: &str| json!({"identity": {"id": "u", "email": email}, "event_name": "Viewed", "data": {"n": n}});
    b.track(with_email(1, "a@example.com")).await;
    b.clock.advance_secs(1);
    // Known now: a new email is still written.
    b.track(with_email(2, "b@example.com")).await;
    assert_eq!(
        seen("u").await,
        (Some("b@example.com".into()), start, start + 1_000_000, 2)
    );
    // Three in one batch, received at three times.
    let batch: Vec<TrackedEvent> = (3..6)
        .map(|n| {
            b.clock.advance_secs(1);
            b.tracked(with_email(n, "b@example.com"))
        })
        .collect();
    let outcomes = futures::future::join_all(batch.into_iter().map(|e| b.store.track(e))).await;
    assert!(outcomes
        .iter()
        .all(|o| o.as_ref().is_ok_and(|o| *o == InsertOutcome::Inserted)));
    assert_eq!(
        seen("u").await,
        (Some("b@example.com".into()), start, start + 4_000_000, 5)
    );
    // Deleted between two events: the next one makes a new user, seen from then on.
    b.change(ProfileOp::Delete, json!({"id": "u"}))
        .await
        .expect("deleted");
    b.clock.advance_secs(1);
    b.track(with_email(6, "c@example.com")).await;
    assert_eq!(seen("u").await, fresh("c@example.com", 5));
    // A delete and an event of the user in one batch: the event comes after the delete.
    // SQLite's one writer takes them in the order they were sent; PostgreSQL's writers
    // commit concurrent requests in either order, so there the event is sent after.
    b.clock.advance_secs(1);
    let delete = b.request(ProfileOp::Delete, json!({"id": "u"}));
    let later = b.tracked(with_email(7, "d@example.com"));
    if b.pg.is_none() {
        let (deleted, tracked) =
            futures::future::join(b.store.change_profile(delete), b.store.track(later)).await;
        deleted.expect("deleted");
        assert_eq!(tracked.expect("tracked"), InsertOutcome::Inserted);
    } else {
        b.store.change_profile(delete).await.expect("deleted");
        assert_eq!(
            b.store.track(later).await.expect("tracked"),
            InsertOutcome::Inserted
        );
    }
    assert_eq!(seen("u").await, fresh("d@example.com", 6));
    // Merged away (reidentify onto an existing user): the old key's next event makes a new
    // user, and the merged one keeps its own times.
    b.track(event("v", "Viewed", json!({"n": 8}))).await;
    b.change(ProfileOp::Reidentify, json!({"id": "u", "new_id": "v"}))
        .await
        .expect("merged");
    b.clock.advance_secs(1);
    b.track(with_email(9, "e@example.com")).await;
    assert_eq!(seen("u").await, fresh("e@example.com", 7));
    assert_eq!(seen("v").await.3, 2);
    // Named by its email alone, the user is touched as well.
    b.clock.advance_secs(1);
    b.track(json!({"identity": {"email": "e@example.com"}, "event_name": "Viewed", "data": {}}))
        .await;
    assert_eq!(
        seen("u").await,
        (
            Some("e@example.com".into()),
            start + 7_000_000,
            start + 8_000_000,
            2
        )
    );
}

/// DESIGN §10: a suppression deletes the user, then every write naming its id or email
/// (events, profile changes, restored history; on this store and on another one over the
/// same data) is `Suppressed` and stores nothing, counted as suppressed; another user is
/// untouched; unsuppress lifts it; each act is in the audit log once, by hash.
async fn a_suppressed_user_is_deleted_and_refused_until_unsuppressed(b: &Backend) {
    let alice = |n: u32| json!({"identity": {"id": "alice", "email": "alice@example.com"}, "event_name": "Viewed", "data": {"n": n}});
    assert_eq!(b.track(alice(1)).await, InsertOutcome::Inserted);
    assert_eq!(
        b.track(event("bob", "Viewed", json!({}))).await,
        InsertOutcome::Inserted
    );
    let record = b.tracked(alice(2)).record;
    let actor = trackd_core::privacy::Actor::Key("abcd1234".into());
    let done = b
        .store
        .suppress(b.project, "alice".into(), actor.clone())
        .await
        .expect("suppressed");
    assert_eq!(
        done,
        trackd_core::privacy::Suppressed {
            deleted: true,
            already: false
        }
    );
    assert_eq!(
        b.events_of("alice").await,
        None,
        "the user and its events are gone"
    );
    // By id, by email alone, and as a profile change: refused, nothing stored.
    assert_eq!(b.track(alice(3)).await, InsertOutcome::Suppressed);
    let by_email = json!({"identity": {"email": "alice@example.com"}, "event_name": "Viewed"});
    assert_eq!(b.track(by_email).await, InsertOutcome::Suppressed);
    let profile = b.request(
        ProfileOp::Track,
        json!({"id": "alice", "data": {"plan": "pro"}}),
    );
    assert_eq!(
        b.store.change_profile(profile).await.expect("answered"),
        InsertOutcome::Suppressed
    );
    // Renaming someone to the suppressed id does not bring it back.
    let rename = b.request(
        ProfileOp::Reidentify,
        json!({"id": "bob", "new_id": "alice"}),
    );
    assert_eq!(
        b.store.change_profile(rename).await.expect("answered"),
        InsertOutcome::Suppressed
    );
    assert_eq!(
        b.store
            .restore(vec![record], false)
            .await
            .expect("restored"),
        1
    );
    // Another store on the same data (a restart, another node) refuses it too.
    let other = b.another_store().await;
    assert_eq!(
        other.track(b.tracked(alice(4))).await.expect("answered"),
        InsertOutcome::Suppressed
    );
    other.shutdown().await.expect("shut down");
    assert_eq!(b.events_of("alice").await, None);
    assert!(b
        .store
        .user(b.project, "alice")
        .await
        .expect("read")
        .is_none());
    assert_eq!(
        b.events_of("bob").await.expect("bob").len(),
        1,
        "bob is untouched"
    );
    // Again: already suppressed, nothing more deleted.
    let again = b
        .store
        .suppress(b.project, "alice".into(), actor.clone())
        .await
        .expect("suppressed");
    assert_eq!((again.deleted, again.already), (false, true));
    let stats = b.stats().await;
    assert_eq!((stats.accepted, stats.suppressed), (2, 6));
    // Lifted: tracked again as anyone new; a second lift finds nothing.
    assert!(b
        .store
        .unsuppress(b.project, "alice".into(), actor.clone())
        .await
        .expect("lifted"));
    assert!(!b
        .store
        .unsuppress(b.project, "alice".into(), actor)
        .await
        .expect("answered"));
    assert_eq!(b.track(alice(5)).await, InsertOutcome::Inserted);
    assert_eq!(b.events_of("alice").await.expect("alice").len(), 1);
}

/// DESIGN §10: a suppression names a user as the read API's `{id}` does, by key or else by
/// email: suppressing the email of a user keyed by its id deletes that user, and refuses
/// its id and its email from then on (a `users/delete` by email included).
async fn a_suppression_by_email_deletes_the_user_the_read_api_finds_by_it(b: &Backend) {
    let ann = json!({"identity": {"id": "u42", "email": "ann@example.com"}, "event_name": "Paid"});
    assert_eq!(b.track(ann).await, InsertOutcome::Inserted);
    assert!(b
        .store
        .user(b.project, "ann@example.com")
        .await
        .expect("read")
        .is_some());
    let actor = trackd_core::privacy::Actor::Key("abcd1234".into());
    let done = b
        .store
        .suppress(b.project, "ann@example.com".into(), actor)
        .await
        .expect("suppressed");
    assert_eq!((done.deleted, done.already), (true, false));
    assert_eq!(
        b.events_of("u42").await,
        None,
        "the user and its events are gone"
    );
    assert!(b
        .store
        .user(b.project, "u42")
        .await
        .expect("read")
        .is_none());
    let again = json!({"identity": {"id": "u42"}, "event_name": "Paid", "data": {"n": 2}});
    assert_eq!(b.track(again).await, InsertOutcome::Suppressed);
    let delete = b.request(ProfileOp::Delete, json!({"email": "ann@example.com"}));
    assert_eq!(
        b.store.change_profile(delete).await.expect("answered"),
        InsertOutcome::Suppressed
    );
    // Lifted by the user's other identifier (suppressed by email, lifted by id): it covers
    // that id, so it is lifted whole.
    let actor = trackd_core::privacy::Actor::Key("abcd1234".into());
    assert!(b
        .store
        .unsuppress(b.project, "u42".into(), actor.clone())
        .await
        .expect("lifted"));
    let back = json!({"identity": {"id": "u42", "email": "ann@example.com"}, "event_name": "Paid"});
    assert_eq!(b.track(back).await, InsertOutcome::Inserted);
    assert!(!b
        .store
        .unsuppress(b.project, "ann@example.com".into(), actor)
        .await
        .expect("answered"));
}

/// DESIGN §3: an event naming its user by email alone belongs to the user keyed by that
/// email; its email is the event's, as an event's identity fields always become the user's
/// (both stores alike, also when the writer remembers the user).
async fn an_email_only_event_of_the_user_keyed_by_that_email_sets_its_email(b: &Backend) {
    let email_of = |b: &Backend| {
        let store = b.store.clone();
        let project = b.project;
        async move {
            store
                .user(project, "ann@x.com")
                .await
                .expect("read")
                .expect("the user")
                .email
        }
    };
    let first = json!({"identity": {"id": "ann@x.com", "email": "work@x.com"}, "event_name": "a"});
    assert_eq!(b.track(first).await, InsertOutcome::Inserted);
    assert_eq!(email_of(b).await.as_deref(), Some("work@x.com"));
    let by_email = json!({"identity": {"email": "ann@x.com"}, "event_name": "b"});
    assert_eq!(b.track(by_email).await, InsertOutcome::Inserted);
    assert_eq!(email_of(b).await.as_deref(), Some("ann@x.com"));
    // The id with its email again: the email follows.
    let again = json!({"identity": {"id": "ann@x.com", "email": "work@x.com"}, "event_name": "c"});
    assert_eq!(b.track(again).await, InsertOutcome::Inserted);
    assert_eq!(email_of(b).await.as_deref(), Some("work@x.com"));
    assert_eq!(b.events_of("ann@x.com").await.expect("events").len(), 3);
}

/// DESIGN §3: `reidentify` renames `id` to `new_id`, also when `new_id` is the key of a
/// user known only by its email: the merged user's id is `new_id`.
async fn a_reidentify_into_a_user_known_by_email_gives_it_the_new_id(b: &Backend) {
    let anon = json!({"identity": {"email": "bob@x.com"}, "event_name": "anon"});
    assert_eq!(b.track(anon).await, InsertOutcome::Inserted);
    let known = b.request(
        ProfileOp::Track,
        json!({"id": "u-77", "email": "old@x.com", "data": {"plan": "pro"}}),
    );
    assert_eq!(
        b.store.change_profile(known).await.expect("answered"),
        InsertOutcome::Inserted
    );
    let rename = b.request(
        ProfileOp::Reidentify,
        json!({"id": "u-77", "new_id": "bob@x.com"}),
    );
    assert_eq!(
        b.store.change_profile(rename).await.expect("answered"),
        InsertOutcome::Inserted
    );
    let user = b
        .store
        .user(b.project, "bob@x.com")
        .await
        .expect("read")
        .expect("the merged user");
    assert_eq!(user.id.as_deref(), Some("bob@x.com"));
    assert_eq!(user.email.as_deref(), Some("bob@x.com"));
    assert!(
        user.properties.contains("\"plan\":\"pro\""),
        "{}",
        user.properties
    );
    assert!(b
        .store
        .user(b.project, "u-77")
        .await
        .expect("read")
        .is_none());
}

/// The audit log: a project's acts newest first, paged by `before`, filtered by `since`,
/// users named by hash only; another project's acts are not in it.
async fn the_audit_log_pages_newest_first_and_names_users_by_hash(b: &Backend) {
    use trackd_core::privacy::{Actor, AuditAct, AuditQuery};
    let other = b.store.create_project("other").await.expect("project").id;
    for (project, action) in [
        (b.project, "token.add"),
        (other, "key.add"),
        (b.project, "destination.add"),
    ] {
        b.store
            .record_audit(AuditAct {
                project,
                actor: Actor::Cli,
                action,
                target: "t".into(),
            })
            .await
            .expect("recorded");
        b.clock.advance_secs(1);
    }
    let since = b.now();
    b.store
        .suppress(
            b.project,
            "carol@example.com".into(),
            Actor::Key("00ff00ff".into()),
        )
        .await
        .expect("suppressed");
    let page = |before: Option<i64>, since: Option<Timestamp>| {
        b.store.audit(AuditQuery {
            project: b.project,
            since,
            limit: 2,
            before,
        })
    };
    let first = page(None, None).await.expect("audit");
    let shown: Vec<(&str, &str)> = first
        .iter()
        .map(|e| (e.actor.as_str(), e.action.as_str()))
        .collect();
    assert_eq!(
        shown,
        [
            ("key:00ff00ff", "user.suppress"),
            ("cli", "destination.add")
        ]
    );
    assert!(first[0].target.starts_with("user:") && !first[0].target.contains("carol"));
    assert_eq!(first[0].at, since);
    let rest = page(Some(first[1].id), None).await.expect("audit");
    let actions: Vec<&str> = rest.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["token.add"]);
    let recent = page(None, Some(since)).await.expect("audit");
    assert_eq!(recent.len(), 1);
}

/// DESIGN §10, retention: a step deletes at most its limit of the oldest events received
/// before the cutoff, and of the outbox items; newer ones stay; the statistics are the same
/// after as before (the deleted events' counts are kept); the project lists its retention.
async fn retention_deletes_old_events_in_steps_and_keeps_their_counts(b: &Backend) {
    b.store
        .add_destination(b.project, hook("h"), "whsec_x".into())
        .await
        .expect("destination");
    let now = b.now().as_micros();
    let day = 86_400_000_000_i64;
    let old: Vec<trackd_core::EventRecord> = (0..5)
        .map(|n| {
            let mut r = b.tracked(event("old-user", "Old", json!({"n": n}))).record;
            r.received_at = Timestamp::from_micros(now - 10 * day + n);
            r.created_at = Timestamp::from_micros(now - 10 * day);
            r
        })
        .collect();
    assert_eq!(b.store.restore(old, true).await.expect("restored"), 0);
    assert_eq!(
        b.track(event("new-user", "New", json!({}))).await,
        InsertOutcome::Inserted
    );
    let before = b.stats().await;
    b.store
        .set_retention(b.project, Some(7 * day))
        .await
        .expect("set");
    let listed = b.store.projects().await.expect("projects");
    assert_eq!(listed[0].retention, Some(7 * day));
    let cutoff = Timestamp::from_micros(now - 7 * day);
    let mut steps = Vec::new();
    loop {
        let e = b.store.expire(b.project, cutoff, 2).await.expect("expired");
        steps.push((e.events, e.items));
        if e.events == 0 && e.items == 0 {
            break;
        }
    }
    assert_eq!(steps, [(2, 2), (2, 2), (1, 1), (0, 0)]);
    assert_eq!(
        b.events_of("old-user").await,
        Some(vec![]),
        "the user stays"
    );
    assert_eq!(b.events_of("new-user").await.expect("new").len(), 1);
    let after = b.stats().await;
    assert_eq!(after, before, "the statistics keep the counts");
    let items = b.store.outbox(b.project, 0, 100).await.expect("outbox");
    assert_eq!(items.len(), 1, "the new event's item");
    assert!(matches!(
        b.store.set_retention(ProjectId::new(999_999), None).await,
        Err(StoreError::NotFound(_))
    ));
}
