//! [`Job`]: a write queued for a store's writer, and where its answer goes. Both stores'
//! writers take the same jobs; each request is answered only after the transaction holding
//! it committed, or with [`StoreError::Unavailable`] if it did not.

use tokio::sync::oneshot;
use trackd_core::error::Cause;
use trackd_core::privacy::{Actor, Expired, Suppressed};
use trackd_core::read::Counter;
use trackd_core::segment::Message;
use trackd_core::store::MessageOutcome;
use trackd_core::{
    EventRecord, InsertOutcome, ProfileRequest, ProjectId, StoreError, TrackedEvent,
};

/// What a profile change changed: the user's row id and, for a deletion, the body its
/// outbox item carries (the user it deleted); `None` when nothing changed.
pub(crate) type Changed = Option<(i64, Option<String>)>;

/// A queued write.
pub(crate) enum Job {
    Track {
        event: Box<TrackedEvent>,
        reply: oneshot::Sender<Result<InsertOutcome, StoreError>>,
    },
    Profile {
        request: Box<ProfileRequest>,
        reply: oneshot::Sender<Result<InsertOutcome, StoreError>>,
    },
    /// Suppress a user (SQLite: through the writer, so it lands between batches).
    Suppress {
        project: ProjectId,
        key: String,
        actor: Actor,
        reply: oneshot::Sender<Result<Suppressed, StoreError>>,
    },
    /// One step of retention.
    Expire {
        project: ProjectId,
        cutoff: i64,
        limit: usize,
        reply: oneshot::Sender<Result<Expired, StoreError>>,
    },
    /// Lift a suppression.
    Unsuppress {
        project: ProjectId,
        key: String,
        actor: Actor,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    /// Segment calls, committed together: each is idempotent by its messageId.
    Messages {
        messages: Vec<Message>,
        reply: oneshot::Sender<Result<Vec<MessageOutcome>, StoreError>>,
    },
    /// Exported events to store again as they were.
    Restore {
        events: Vec<EventRecord>,
        /// New to destinations (imported track bodies): their items go to the outbox.
        deliver: bool,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    /// Additions to running totals: (project, counter, amount).
    Counters {
        counts: Vec<(ProjectId, Counter, i64)>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Delivery's own writes (SQLite: through the writer, so they ride on its commits).
    Outbox {
        op: Box<OutboxOp>,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    /// Commit everything queued before it, then stop.
    Shutdown,
}

/// A write of the delivery loops.
pub(crate) enum OutboxOp {
    /// An attempt's outcome (answers 1 when applied, 0 when the destination moved on).
    Report(trackd_core::delivery::DeliveryReport),
    /// Take or renew a lease (answers 1 when held).
    Lease {
        destination: i64,
        node: String,
        ttl_ms: i64,
    },
    /// Delete passed items received before `cutoff` (µs); answers how many.
    Prune { cutoff: i64 },
}

/// What became of one job of a committed batch, as both writers report it.
pub(crate) enum Done {
    /// An event: stored or a duplicate.
    Event(InsertOutcome),
    /// A profile change: applied or suppressed, or refused without failing the batch (a
    /// user not found, a profile bound).
    Profile(Result<InsertOutcome, StoreError>),
    /// A suppression.
    Suppressed(Suppressed),
    /// A retention step: what it deleted.
    Expired(Expired),
    /// An unsuppression: whether there was one to lift.
    Lifted(bool),
    /// Any other job: done, or refused without failing the batch.
    Other(Result<(), StoreError>),
    /// A delivery write: its count.
    Count(u64),
    /// Segment calls: each one's outcome.
    Messages(Vec<MessageOutcome>),
    /// Nothing to answer (a shutdown marker).
    Nothing,
}

/// A committed batch's running totals, summed per project and counter, written once per
/// batch rather than once per event.
#[derive(Default)]
pub(crate) struct Totals(std::collections::BTreeMap<(i64, Counter), i64>);

impl Totals {
    /// Adds `n` to a project's counter.
    pub fn add(&mut self, project: ProjectId, counter: Counter, n: i64) {
        *self.0.entry((project.get(), counter)).or_default() += n;
    }

    /// (project, counter name, amount) rows to write, in a stable order.
    pub fn rows(self) -> impl Iterator<Item = (i64, String, i64)> {
        self.0.into_iter().map(|((p, c), n)| (p, c.name(), n))
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Job {
    /// Answers a job of a committed batch with what became of it. A requester may have
    /// gone away (client disconnected): what it asked for is committed either way.
    pub fn answer(self, done: Done) {
        match (self, done) {
            (Job::Track { reply, .. }, Done::Event(outcome)) => {
                let _ = reply.send(Ok(outcome));
            }
            (Job::Profile { reply, .. }, Done::Profile(result)) => {
                let _ = reply.send(result);
            }
            (Job::Suppress { reply, .. }, Done::Suppressed(s)) => {
                let _ = reply.send(Ok(s));
            }
            (Job::Expire { reply, .. }, Done::Expired(e)) => {
                let _ = reply.send(Ok(e));
            }
            (Job::Unsuppress { reply, .. }, Done::Lifted(lifted)) => {
                let _ = reply.send(Ok(lifted));
            }
            (Job::Counters { reply, .. }, Done::Other(result)) => {
                let _ = reply.send(result);
            }
            (Job::Outbox { reply, .. }, Done::Count(n))
            | (Job::Restore { reply, .. }, Done::Count(n)) => {
                let _ = reply.send(Ok(n));
            }
            (Job::Messages { reply, .. }, Done::Messages(outcomes)) => {
                let _ = reply.send(Ok(outcomes));
            }
            // A mismatch cannot happen (each writer pushes one `Done` per job, in order);
            // were it to, the job is failed rather than left hanging.
            (job, _) => job.fail(),
        }
    }

    /// Answers that the batch holding this job did not commit (the requester may have gone
    /// away; nothing is lost by not telling it).
    pub fn fail(self) {
        let failed = || StoreError::Unavailable(Box::new(Cause("commit failed")));
        match self {
            Job::Track { reply, .. } => {
                let _ = reply.send(Err(failed()));
            }
            Job::Profile { reply, .. } => {
                let _ = reply.send(Err(failed()));
            }
            Job::Suppress { reply, .. } => {
                let _ = reply.send(Err(failed()));
            }
            Job::Unsuppress { reply, .. } => {
                let _ = reply.send(Err(failed()));
            }
            Job::Expire { reply, .. } => {
                let _ = reply.send(Err(failed()));
            }
            Job::Counters { reply, .. } => {
                let _ = reply.send(Err(failed()));
            }
            Job::Restore { reply, .. } => {
                let _ = reply.send(Err(failed()));
            }
            Job::Outbox { reply, .. } => {
                let _ = reply.send(Err(failed()));
            }
            Job::Messages { reply, .. } => {
                let _ = reply.send(Err(failed()));
            }
            Job::Shutdown => {}
        }
    }
}

/// The deletion a suppression makes of the user whose key is `key` (`None` for a key no
/// user can have: empty, or too long).
pub(crate) fn delete_request(
    project: trackd_core::ProjectId,
    key: &str,
    now: i64,
) -> Option<ProfileRequest> {
    let id = trackd_core::UserId::parse(&serde_json::Value::String(key.to_owned()), "id")
        .ok()
        .flatten()?;
    Some(ProfileRequest {
        project,
        received_at: trackd_core::Timestamp::from_micros(now),
        change: trackd_core::ProfileChange::Delete {
            user: trackd_core::UserRef::Id(id),
        },
        limits: Default::default(),
    })
}
