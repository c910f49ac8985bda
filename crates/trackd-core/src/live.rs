//! [`LiveFeed`]: committed events fanned out to the consoles watching this node. Stores
//! publish after each commit, only while someone watches, so an unwatched server pays
//! nothing for it.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::read::EventRow;
use crate::ProjectId;

/// What one commit accepted for one project, and how many duplicates it dropped.
#[derive(Debug, Clone)]
pub struct LiveBatch {
    /// The project.
    pub project: ProjectId,
    /// The accepted events, in commit order.
    pub events: Vec<EventRow>,
    /// Duplicates dropped in the same commit.
    pub duplicates: u64,
}

/// A node's fan-out of committed batches. Cloning shares it.
#[derive(Clone, Debug)]
pub struct LiveFeed {
    sender: broadcast::Sender<Arc<LiveBatch>>,
}

/// Batches a slow watcher may fall behind by before it is told it missed some (a stalled
/// watcher holds at most this many).
const CAPACITY: usize = 64;

impl Default for LiveFeed {
    fn default() -> Self {
        LiveFeed {
            sender: broadcast::channel(CAPACITY).0,
        }
    }
}

impl LiveFeed {
    /// Whether anyone on this node watches (stores skip building batches otherwise).
    pub fn watched(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    /// Hands a committed batch to the watchers, if any.
    pub fn publish(&self, batch: LiveBatch) {
        if !batch.events.is_empty() || batch.duplicates > 0 {
            let _ = self.sender.send(Arc::new(batch));
        }
    }

    /// Starts watching.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveBatch>> {
        self.sender.subscribe()
    }
}
