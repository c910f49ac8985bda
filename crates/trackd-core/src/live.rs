//! [`LiveFeed`]: committed events fanned out to the consoles watching this node. Stores
//! publish after each commit, only while someone watches, so an unwatched server pays
//! nothing for it.
//!
//! What a watcher can pin is bounded in bytes: each watcher has a queue of its own project's
//! events of at most [`WATCHER_BYTES`] (batches are cut into pieces of about
//! [`PIECE_BYTES`]); what does not fit while it is slow is dropped for it alone and counted,
//! and it is told how many events it missed. Nothing is kept for a watcher that is gone,
//! and nothing at all once the last one leaves.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::read::{row_bytes, EventRow};
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

/// The most bytes of events queued for one watcher (a stalled watcher holds no more).
pub const WATCHER_BYTES: usize = 8 * 1024 * 1024;
/// About how many bytes of events one queued piece holds (at least one event).
pub const PIECE_BYTES: usize = 256 * 1024;
/// Watchers of one project on one node: with [`WATCHER_BYTES`] each, what one tenant's
/// streams can pin is bounded too.
pub const WATCHERS_PER_PROJECT: usize = 16;

/// A watcher as the feed sees it.
struct Slot {
    project: ProjectId,
    queue: mpsc::UnboundedSender<Arc<LiveBatch>>,
    shared: Arc<Shared>,
}

/// What a watcher and the feed both count.
#[derive(Default)]
struct Shared {
    /// Bytes queued and not yet taken.
    queued: AtomicUsize,
    /// Events dropped for this watcher since it last heard of it.
    missed: AtomicU64,
}

/// A node's fan-out of committed batches. Cloning shares it.
#[derive(Clone, Default)]
pub struct LiveFeed {
    watchers: Arc<Mutex<Vec<Slot>>>,
}

impl std::fmt::Debug for LiveFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveFeed")
            .field("watched", &self.watched())
            .finish()
    }
}

/// What a watcher receives.
#[derive(Debug)]
pub enum LiveItem {
    /// Committed events (and duplicates dropped) of its project.
    Batch(Arc<LiveBatch>),
    /// Events that did not fit its queue while it was slow.
    Missed(u64),
}

/// One watcher's end of the feed. Dropping it stops its queue.
pub struct LiveReceiver {
    queue: mpsc::UnboundedReceiver<Arc<LiveBatch>>,
    shared: Arc<Shared>,
}

impl LiveReceiver {
    /// The next item: first any count of missed events, then the next queued batch;
    /// `None` once the feed is gone.
    pub async fn recv(&mut self) -> Option<LiveItem> {
        let missed = self.shared.missed.swap(0, Ordering::AcqRel);
        if missed > 0 {
            return Some(LiveItem::Missed(missed));
        }
        let batch = self.queue.recv().await?;
        self.shared
            .queued
            .fetch_sub(batch_bytes(&batch), Ordering::AcqRel);
        Some(LiveItem::Batch(batch))
    }
}

fn batch_bytes(batch: &LiveBatch) -> usize {
    batch
        .events
        .iter()
        .map(|e| row_bytes(e.data.len(), e.event_name.len()))
        .sum::<usize>()
        + 64
}

impl LiveFeed {
    /// Whether anyone on this node watches (stores skip building batches otherwise).
    pub fn watched(&self) -> bool {
        self.watchers.lock().map(|w| !w.is_empty()).unwrap_or(false)
    }

    /// Whether anyone on this node watches `project`.
    pub fn watches(&self, project: ProjectId) -> bool {
        self.watchers
            .lock()
            .map(|w| w.iter().any(|s| s.project == project))
            .unwrap_or(false)
    }

    /// Hands a committed batch to the watchers of its project, in pieces, each queued
    /// where it fits.
    pub fn publish(&self, batch: LiveBatch) {
        if batch.events.is_empty() && batch.duplicates == 0 {
            return;
        }
        let Ok(mut watchers) = self.watchers.lock() else {
            return;
        };
        watchers.retain(|s| !s.queue.is_closed());
        if !watchers.iter().any(|s| s.project == batch.project) {
            return;
        }
        for piece in pieces(batch) {
            let piece = Arc::new(piece);
            let bytes = batch_bytes(&piece);
            for slot in watchers.iter().filter(|s| s.project == piece.project) {
                let queued = slot.shared.queued.load(Ordering::Acquire);
                if queued + bytes > WATCHER_BYTES && queued > 0 {
                    slot.shared
                        .missed
                        .fetch_add(piece.events.len() as u64, Ordering::AcqRel);
                    continue;
                }
                slot.shared.queued.fetch_add(bytes, Ordering::AcqRel);
                if slot.queue.send(piece.clone()).is_err() {
                    slot.shared.queued.fetch_sub(bytes, Ordering::AcqRel);
                }
            }
        }
    }

    /// Starts watching `project`; `None` when it has [`WATCHERS_PER_PROJECT`] watchers
    /// on this node already.
    pub fn subscribe(&self, project: ProjectId) -> Option<LiveReceiver> {
        let (queue, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let mut watchers = self.watchers.lock().ok()?;
        watchers.retain(|s| !s.queue.is_closed());
        if watchers.iter().filter(|s| s.project == project).count() >= WATCHERS_PER_PROJECT {
            return None;
        }
        watchers.push(Slot {
            project,
            queue,
            shared: shared.clone(),
        });
        Some(LiveReceiver {
            queue: receiver,
            shared,
        })
    }
}

/// Cuts a batch into pieces of about [`PIECE_BYTES`] (at least one event each); the
/// duplicates count rides on the last.
fn pieces(batch: LiveBatch) -> Vec<LiveBatch> {
    let LiveBatch {
        project,
        events,
        duplicates,
    } = batch;
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for event in events {
        bytes += row_bytes(event.data.len(), event.event_name.len());
        current.push(event);
        if bytes >= PIECE_BYTES {
            out.push(LiveBatch {
                project,
                events: std::mem::take(&mut current),
                duplicates: 0,
            });
            bytes = 0;
        }
    }
    if !current.is_empty() || duplicates > 0 || out.is_empty() {
        out.push(LiveBatch {
            project,
            events: current,
            duplicates,
        });
    } else if let Some(last) = out.last_mut() {
        last.duplicates = duplicates;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: i64, size: usize) -> EventRow {
        EventRow {
            id,
            user_id: Some("u".into()),
            email: None,
            event_name: "e".into(),
            event_key: "e".into(),
            data: "x".repeat(size),
            source: None,
            created_at: 0,
            received_at: 0,
        }
    }

    #[tokio::test]
    async fn a_stalled_watcher_holds_a_bounded_queue_and_hears_what_it_missed() {
        let feed = LiveFeed::default();
        let p = ProjectId::new(1);
        let mut slow = feed.subscribe(p).expect("watcher");
        let mut other = feed.subscribe(ProjectId::new(2)).expect("watcher");
        assert!(feed.watches(p));
        // 64 MB of events while nobody reads.
        for batch in 0..64 {
            feed.publish(LiveBatch {
                project: p,
                events: (0..4).map(|i| event(batch * 4 + i, 250_000)).collect(),
                duplicates: 1,
            });
        }
        let mut queued_events = 0;
        let mut missed = 0;
        let mut duplicates = 0;
        while let Ok(Some(item)) =
            tokio::time::timeout(std::time::Duration::from_millis(50), slow.recv()).await
        {
            match item {
                LiveItem::Batch(b) => {
                    queued_events += b.events.len() as u64;
                    duplicates += b.duplicates;
                }
                LiveItem::Missed(n) => missed += n,
            }
        }
        // About 8 MiB of 250 KB events were kept, the rest counted as missed.
        assert!((30..=34).contains(&queued_events), "{queued_events}");
        assert_eq!(queued_events + missed, 256);
        assert!(duplicates > 0);
        // The other project's watcher got nothing of it.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), other.recv())
                .await
                .is_err()
        );
        // Once read, the queue takes new events again.
        feed.publish(LiveBatch {
            project: p,
            events: vec![event(999, 10)],
            duplicates: 0,
        });
        match slow.recv().await {
            Some(LiveItem::Batch(b)) => assert_eq!(b.events[0].id, 999),
            other => panic!("{other:?}"),
        }
        drop(slow);
        drop(other);
        feed.publish(LiveBatch {
            project: p,
            events: vec![event(1000, 10)],
            duplicates: 0,
        });
        assert!(!feed.watched());
    }

    #[test]
    fn a_project_has_a_bounded_number_of_watchers_and_the_gone_ones_free_their_place() {
        let feed = LiveFeed::default();
        let p = ProjectId::new(1);
        let watchers: Vec<_> = (0..WATCHERS_PER_PROJECT)
            .map(|_| feed.subscribe(p).expect("room"))
            .collect();
        assert!(feed.subscribe(p).is_none());
        assert!(feed.subscribe(ProjectId::new(2)).is_some());
        drop(watchers);
        assert!(feed.subscribe(p).is_some());
    }

    #[test]
    fn pieces_keep_every_event_in_order() {
        let batch = LiveBatch {
            project: ProjectId::new(1),
            events: (0..10).map(|i| event(i, 100_000)).collect(),
            duplicates: 3,
        };
        let pieces = pieces(batch);
        assert!(pieces.len() > 1);
        let ids: Vec<i64> = pieces
            .iter()
            .flat_map(|p| p.events.iter().map(|e| e.id))
            .collect();
        assert_eq!(ids, (0..10).collect::<Vec<_>>());
        assert_eq!(pieces.iter().map(|p| p.duplicates).sum::<u64>(), 3);
    }
}
