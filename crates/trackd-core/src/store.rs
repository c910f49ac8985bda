//! The [`Store`] trait: what the server needs from storage, whatever the backend.

use std::sync::Arc;

use crate::delivery::{
    DeliveryReport, Destination, DestinationChange, DestinationSpec, OutboxItem,
};
use crate::error::StoreError;
use crate::event::EventRecord;
use crate::event::TrackedEvent;
use crate::project::{Credential, CredentialKind, Project, ProjectId, Token};
use crate::read::{
    Counter, Cursor, EventQuery, EventRow, ExportKey, ExportQuery, Stats, StatsQuery, UserProfile,
};
use crate::users::ProfileRequest;

/// What became of a tracked event. A duplicate is an outcome, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Stored, with its dedup record, in a committed transaction.
    Inserted,
    /// An accepted event with the same dedup key was received within the window: not stored.
    Duplicate,
    /// It names a suppressed user (DESIGN §10): answered 200 with `Trackd-Suppressed: true`,
    /// nothing stored.
    Suppressed,
}

/// What became of one Segment call ([`Store::ingest`]): stored, a duplicate of a messageId
/// received within the window (nothing written), or refused alone
/// ([`StoreError::NotFound`]: the change needs a user there is none of;
/// [`StoreError::Invalid`]: a profile bound) while the others commit.
pub type MessageOutcome = Result<InsertOutcome, StoreError>;

/// A future returned by a [`Store`] method.
pub type StoreFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Storage for events, users, projects and credentials.
///
/// Every write resolves only after its transaction committed: a caller that gets `Ok` may
/// answer 200. Implementations batch concurrent writes (group commit).
pub trait Store: Send + Sync + 'static {
    /// The numbers this store reports about its writes.
    fn metrics(&self) -> crate::metrics::StoreMetrics;

    /// Committed events as they are accepted, for the console's live view: this node's
    /// (SQLite), or every node's (PostgreSQL).
    fn live(&self) -> &crate::live::LiveFeed;

    /// Dedups and appends an event (creating or touching its user), in one transaction
    /// with its dedup record.
    fn track(&self, event: TrackedEvent) -> StoreFuture<'_, InsertOutcome>;

    /// Applies a profile change, through the same writer as events so an event and a
    /// profile change for one user never race. [`StoreError::NotFound`] when the change
    /// needs an existing user and there is none.
    /// [`InsertOutcome::Suppressed`] (nothing written) when it names a suppressed user.
    fn change_profile(&self, request: ProfileRequest) -> StoreFuture<'_, InsertOutcome>;

    /// Suppresses a user (DESIGN §10), in one transaction through the writer (so no write
    /// queued after it stores anything of the user): deletes the user whose key is `key`
    /// (as `users/delete` does: profile, events, dedup records, outbox items), keeps the
    /// keyed hashes of `key` and of the deleted user's id and email, and records the act in
    /// the audit log. From its commit on, every write naming one of those identifiers is
    /// [`InsertOutcome::Suppressed`], on every node.
    fn suppress(
        &self,
        project: ProjectId,
        key: String,
        actor: crate::privacy::Actor,
    ) -> StoreFuture<'_, crate::privacy::Suppressed>;

    /// Lifts every suppression covering `key` (made for it, or for the id or email of the
    /// user it deleted), each with every hash it kept, recording the act; `false` (nothing
    /// recorded) when nothing covers `key`.
    fn unsuppress(
        &self,
        project: ProjectId,
        key: String,
        actor: crate::privacy::Actor,
    ) -> StoreFuture<'_, bool>;

    /// Sets how long a project's events are kept, in µs of receive time (`None`: for ever).
    fn set_retention(&self, project: ProjectId, retention: Option<i64>) -> StoreFuture<'_, ()>;

    /// One step of retention (DESIGN §10), in one short transaction (SQLite: a writer job
    /// between batches): deletes at most `limit` of the project's events received before
    /// `cutoff`, oldest first, adding their counts to the statistics' hourly rollup (the
    /// statistics keep them), and at most `limit` of its outbox items received before it,
    /// delivered or not.
    fn expire(
        &self,
        project: ProjectId,
        cutoff: crate::Timestamp,
        limit: usize,
    ) -> StoreFuture<'_, crate::privacy::Expired>;

    /// Records an administrative act in the audit log.
    fn record_audit(&self, act: crate::privacy::AuditAct) -> StoreFuture<'_, ()>;

    /// A page of a project's audit log, newest first.
    fn audit(
        &self,
        query: crate::privacy::AuditQuery,
    ) -> StoreFuture<'_, Vec<crate::privacy::AuditEntry>>;

    /// Stores Segment calls (DESIGN §9) in one transaction, in order: each call's messageId
    /// (when it has one) is recorded in that transaction only if the call is stored, and a
    /// call whose messageId was received within the message-id window (by this node or
    /// any other, before a restart or not, earlier in the same list or not) is a
    /// duplicate. Events skip Vero's content dedup. Answers every call's outcome, in order,
    /// after the commit.
    fn ingest(
        &self,
        messages: Vec<crate::segment::Message>,
    ) -> StoreFuture<'_, Vec<MessageOutcome>>;

    /// The profile of the user whose key is `key`.
    fn user(&self, project: ProjectId, key: &str) -> StoreFuture<'_, Option<UserProfile>>;

    /// A page of events, newest first, and the cursor of the next page. `None` when the
    /// query names a user that does not exist.
    fn events(&self, query: EventQuery) -> StoreFuture<'_, Option<EventPage>>;

    /// The next chunk of an export, oldest first by receive time: the events after `after`
    /// (from the query's start when `None`), at most [`EXPORT_CHUNK_ROWS`] and about
    /// [`PAGE_BYTES`] of them, and the key to resume after (`None` once the export is
    /// complete). Each chunk is a short read of its own: nothing (no snapshot, no
    /// connection) is held between chunks, however slowly the caller goes on.
    ///
    /// [`EXPORT_CHUNK_ROWS`]: crate::read::EXPORT_CHUNK_ROWS
    /// [`PAGE_BYTES`]: crate::read::PAGE_BYTES
    fn export_chunk(
        &self,
        query: ExportQuery,
        after: Option<ExportKey>,
    ) -> StoreFuture<'_, ExportChunk>;

    /// Counts per bucket and the running totals.
    fn stats(&self, query: StatsQuery) -> StoreFuture<'_, Stats>;

    /// Stores exported events again as they were (new ids, no dedup records), in one
    /// transaction; `deliver`: they are new to destinations (track bodies imported without
    /// dedup), so their items go to the outbox; export lines restored are not. Events of
    /// suppressed users are skipped: answers how many.
    fn restore(&self, events: Vec<EventRecord>, deliver: bool) -> StoreFuture<'_, u64>;

    /// Adds to the project's running totals (refused requests by reason).
    fn add_counters(&self, counts: Vec<(ProjectId, Counter, i64)>) -> StoreFuture<'_, ()>;

    /// Every active credential, and the version of the credential set they were read at.
    fn credentials(&self) -> StoreFuture<'_, (u64, Vec<Credential>)>;

    /// The current version of the credential set: it changes whenever a credential is
    /// added or revoked, by this process or another.
    fn credentials_version(&self) -> StoreFuture<'_, u64>;

    /// The secret cursors are sealed with ([`crate::read::CursorKey`]): 32 random bytes,
    /// made on first use ([`crate::read::CursorKey::random_secret`]) and kept in the store,
    /// atomically (nodes or processes asking at once all get the one that was kept), so
    /// every node of one data set seals alike and cursors survive restarts.
    fn cursor_key(&self) -> StoreFuture<'_, [u8; 32]>;

    /// Creates a project.
    fn create_project(&self, name: &str) -> StoreFuture<'_, Project>;

    /// Every project, by name.
    fn projects(&self) -> StoreFuture<'_, Vec<Project>>;

    /// The project named `name`.
    fn project(&self, name: &str) -> StoreFuture<'_, Project>;

    /// Adds a credential to a project.
    fn add_credential(
        &self,
        project: ProjectId,
        kind: CredentialKind,
        token: &Token,
    ) -> StoreFuture<'_, ()>;

    /// Revokes a project's credential of `kind`; [`StoreError::NotFound`] when the project
    /// has no such active credential.
    fn revoke_credential(
        &self,
        project: ProjectId,
        kind: CredentialKind,
        token: &Token,
    ) -> StoreFuture<'_, ()>;

    /// Every destination of `project` (of every project when `None`), by project then name.
    /// `backlog` and `oldest_undelivered` are counted only `with_backlog` (a count over the
    /// outbox); otherwise they are 0 and `None`.
    fn destinations(
        &self,
        project: Option<ProjectId>,
        with_backlog: bool,
    ) -> StoreFuture<'_, Vec<Destination>>;

    /// Creates a destination; its cursor starts at the project's last committed outbox
    /// position, so it gets every item committed after it (exactly: no item of a batch
    /// committing at the same moment is missed). From then on every commit of the project
    /// writes its items to the outbox. [`StoreError::Conflict`] when the name is taken,
    /// [`StoreError::Invalid`] past [`crate::delivery::MAX_DESTINATIONS`].
    fn add_destination(
        &self,
        project: ProjectId,
        spec: DestinationSpec,
        secret: String,
    ) -> StoreFuture<'_, Destination>;

    /// Pauses, resumes, removes, replays or redrives a destination;
    /// [`StoreError::NotFound`] when the project has none of that name. Replay moves the
    /// cursor back to just before the first kept item received at or after `since` (never
    /// forward) and starts a new generation (a loop of the old one stops; its reports are
    /// refused); resume clears the last error; redrive marks every dead letter to be sent
    /// again.
    fn change_destination(
        &self,
        project: ProjectId,
        name: &str,
        change: DestinationChange,
    ) -> StoreFuture<'_, ()>;

    /// Up to `limit` items of the project's outbox after position `after`, in position
    /// (commit) order, events joined with their stored row (`event: None` when the event
    /// is gone with its user).
    fn outbox(
        &self,
        project: ProjectId,
        after: i64,
        limit: usize,
    ) -> StoreFuture<'_, Vec<OutboxItem>>;

    /// Up to `limit` dead letters of a destination marked for redrive, in position order.
    fn redrive_items(&self, destination: i64, limit: usize) -> StoreFuture<'_, Vec<OutboxItem>>;

    /// Up to `limit` dead letters of the project's destination after position `after`, in
    /// position order (what the operator lists before a redrive); none for a destination
    /// of another project. Read within the project's share of the readers.
    fn dead_letters(
        &self,
        project: ProjectId,
        destination: i64,
        after: i64,
        limit: usize,
    ) -> StoreFuture<'_, Vec<crate::delivery::DeadLetter>>;

    /// Records what an attempt achieved (cursor, pending batch, counts, dead letters, the
    /// last error, a pause), in one transaction, only while the destination is still at the
    /// report's generation and leased to its node, and (for a report announcing a batch to
    /// send, `pending_to` > 0) not paused; `false` (nothing written) otherwise. The
    /// cursor only moves forward here (`max`): a late report of a stopped loop never takes
    /// it back.
    fn report_delivery(&self, report: DeliveryReport) -> StoreFuture<'_, bool>;

    /// Takes or renews the destination's lease for `node` for `ttl_ms` (database clock on
    /// PostgreSQL): `true` when the node holds it now.
    fn lease(&self, destination: i64, node: &str, ttl_ms: i64) -> StoreFuture<'_, bool>;

    /// Deletes outbox items every destination of their project has passed (and every item
    /// of a project without destinations) that were received more than `keep_micros` ago,
    /// keeping dead letters' items; returns how many went.
    fn prune_outbox(&self, keep_micros: i64) -> StoreFuture<'_, u64>;

    /// Whether writes currently succeed.
    fn ready(&self) -> bool;

    /// Stops taking writes, commits what is queued and waits for the writer to finish.
    fn shutdown(&self) -> StoreFuture<'_, ()>;
}

/// A page of events and the cursor of the next page, if there is one.
pub type EventPage = (Vec<EventRow>, Option<Cursor>);

/// An export chunk: events oldest first, and the key the next chunk starts after (`None`
/// when this was the last).
pub type ExportChunk = (Vec<EventRow>, Option<ExportKey>);

/// Every chunk of an export in turn, each read when the previous one was taken.
pub fn export_chunks(
    store: DynStore,
    query: ExportQuery,
) -> impl futures_util::Stream<Item = Result<Vec<EventRow>, StoreError>> {
    futures_util::stream::unfold(Some(None), move |next: Option<Option<ExportKey>>| {
        let store = store.clone();
        let query = query.clone();
        async move {
            let after = next?;
            match store.export_chunk(query, after).await {
                Ok((rows, next)) => Some((Ok(rows), next.map(Some))),
                Err(e) => Some((Err(e), None)),
            }
        }
    })
}

/// Every event of one user, newest first, a page of [`crate::read::MAX_LIMIT`] at a time,
/// each read when the previous one was taken (a data subject's export: constant memory
/// however many events the user has). A walk of the read API's cursor: every event present
/// when it started, exactly once. Ends at once when the user does not exist.
pub fn user_event_pages(
    store: DynStore,
    project: crate::ProjectId,
    user_key: String,
) -> impl futures_util::Stream<Item = Result<Vec<crate::read::EventRow>, StoreError>> {
    let first = EventQuery {
        project,
        user_key: Some(user_key),
        event_key: None,
        since: None,
        until: None,
        limit: crate::read::MAX_LIMIT,
        cursor: None,
    };
    futures_util::stream::unfold(Some(first), move |next: Option<EventQuery>| {
        let store = store.clone();
        async move {
            let query = next?;
            match store.events(query.clone()).await {
                Ok(Some((rows, cursor))) => {
                    let next = cursor.map(|cursor| EventQuery {
                        cursor: Some(cursor),
                        ..query
                    });
                    Some((Ok(rows), next))
                }
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        }
    })
}

/// A shared store, as the server holds it.
pub type DynStore = Arc<dyn Store>;
