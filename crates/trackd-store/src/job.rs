//! [`Job`]: a write queued for a store's writer, and where its answer goes. Both stores'
//! writers take the same jobs; each request is answered only after the transaction holding
//! it committed, or with [`StoreError::Unavailable`] if it did not.

use tokio::sync::oneshot;
use trackd_core::error::Cause;
use trackd_core::{EventRecord, InsertOutcome, ProfileRequest, StoreError, TrackedEvent};

/// A queued write.
pub(crate) enum Job {
    Track {
        event: Box<TrackedEvent>,
        reply: oneshot::Sender<Result<InsertOutcome, StoreError>>,
    },
    Profile {
        request: Box<ProfileRequest>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Exported events to store again as they were.
    Restore {
        events: Vec<EventRecord>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Additions to running totals: (project, counter name, amount).
    Counters {
        counts: Vec<(i64, String, i64)>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Commit everything queued before it, then stop.
    Shutdown,
}

impl Job {
    /// Answers that the batch holding this job did not commit (the requester may have gone
    /// away; nothing is lost by not telling it).
    pub fn fail(self) {
        let failed = || StoreError::Unavailable(Box::new(Cause("commit failed")));
        match self {
            Job::Track { reply, .. } => {
                let _ = reply.send(Err(failed()));
            }
            Job::Profile { reply, .. }
            | Job::Counters { reply, .. }
            | Job::Restore { reply, .. } => {
                let _ = reply.send(Err(failed()));
            }
            Job::Shutdown => {}
        }
    }
}
