//! Importing NDJSON, the same for `POST /api/v2/events/import` and `trackd import`: export
//! lines are restored as they were, track bodies are ingested like API requests (dedup on
//! unless turned off). A bad line is reported with its number and skipped whole.

use std::collections::VecDeque;

use futures_util::stream::{FuturesOrdered, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};
use trackd_core::import::{parse_line, ImportItem};
use trackd_core::{Clock, DynStore, EventRecord, InsertOutcome, ProjectId, StoreError};

/// The longest line read; a longer one is a bad line, skipped without holding it.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
/// How much an import writes in one transaction and holds at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Restored events per store transaction, at most.
    pub restore_batch: usize,
    /// Bytes of input held at once, by the batch being built, the batch being written and
    /// the track bodies waiting for the writer: whatever the lines' sizes, an import's
    /// memory stays near this.
    pub bytes_held: usize,
}

impl Limits {
    /// `POST /api/v2/events/import`: a server's live writes queue behind each transaction,
    /// so transactions stay short (tens of milliseconds).
    pub const SERVER: Limits = Limits::batch(2000);
    /// `trackd import` into SQLite. Lines of random users each dirty a page of the per-user
    /// index, and a commit writes every dirty page once (to the WAL, then again at the
    /// checkpoint), so the more events a commit holds, the more of them share each page:
    /// with the writer's bulk cache holding them, 10 million lines of 100,000 users went in
    /// at 71k events/s with 50,000 a commit, 91k with 100,000, 125k with 200,000 and 145k
    /// with 400,000 (README, "Benchmarks"). 200,000 keeps the memory under 1 GiB (two
    /// batches of lines and the 512 MiB cache). A server on the same data dir waits for each
    /// such commit (up to 2.5 s a write during 10 million lines; `--batch` makes them
    /// smaller).
    pub const BULK: Limits = Limits::batch(200_000);

    /// Transactions of `events` restored events, holding room for lines of about 300 bytes
    /// (longer ones make smaller transactions), 16 MiB at least.
    pub const fn batch(events: usize) -> Limits {
        let bytes = events.saturating_mul(4 * 320);
        Limits {
            restore_batch: events,
            bytes_held: if bytes > 16 * 1024 * 1024 {
                bytes
            } else {
                16 * 1024 * 1024
            },
        }
    }
}
/// Track bodies waiting for the writer at once (the writer batches them).
const TRACKS_IN_FLIGHT: usize = 2048;
/// Bad lines listed in the summary (all are counted).
const ERRORS_LISTED: usize = 100;

/// A line that was not imported.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: u64,
    /// `<field>: <problem>`.
    pub message: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImportSummary {
    /// Events stored.
    pub imported: u64,
    /// Track bodies that were duplicates within the window (not stored).
    pub duplicates: u64,
    /// Bad lines, skipped.
    pub rejected: u64,
    /// Lines of suppressed users (DESIGN §10), not stored; shown only when there are some.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub suppressed: u64,
    /// The first bad lines.
    pub errors: Vec<LineError>,
}

/// Why an import stopped before the end of its input. What was read before is imported:
/// every good line before `line` is committed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Reading the input failed while reading line `line`.
    #[error("line {line}: {error}")]
    Input {
        /// 1-based number of the line being read.
        line: u64,
        /// What the reader said.
        error: std::io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the caller hears while an import runs.
pub enum Progress<'a> {
    /// This many bytes of input were read so far.
    Read(u64),
    /// A line was refused.
    Bad(&'a LineError),
}

/// Reads `input` to its end and imports every good line into `project`. When reading
/// fails midway, the lines before are still committed, then [`ImportError::Input`] says
/// where it stopped.
pub async fn run(
    store: &DynStore,
    clock: &dyn Clock,
    project: ProjectId,
    mut input: impl AsyncBufRead + Unpin,
    dedup: bool,
    limits: Limits,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<ImportSummary, ImportError> {
    let mut summary = ImportSummary::default();
    // Export lines restored as they were (not delivered), and track bodies imported without
    // dedup (new events: delivered to the project's destinations).
    let mut restores: Vec<EventRecord> = Vec::new();
    let mut fresh: Vec<EventRecord> = Vec::new();
    // One batch is written while the next is parsed.
    let mut writing: Option<trackd_core::StoreFuture<'_, u64>> = None;
    let mut tracks = FuturesOrdered::new();
    // Input bytes behind each track in flight (oldest first), and their sum.
    let mut track_bytes: VecDeque<usize> = VecDeque::new();
    let mut held_by_tracks = 0usize;
    let mut restore_bytes = 0usize;
    let mut line = Vec::new();
    let mut number = 0u64;
    let mut read = 0u64;
    let mut stopped = None;
    loop {
        line.clear();
        let n = match (&mut input)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(n) => n,
            Err(error) => {
                stopped = Some(ImportError::Input {
                    line: number + 1,
                    error,
                });
                break;
            }
        };
        if n == 0 {
            break;
        }
        read += n as u64;
        number += 1;
        let complete = line.last() == Some(&b'\n');
        let result = if line.len() > MAX_LINE_BYTES && !complete {
            // Skip the rest of the overlong line without keeping it.
            let mut rest = Vec::new();
            loop {
                rest.clear();
                match (&mut input)
                    .take(64 * 1024)
                    .read_until(b'\n', &mut rest)
                    .await
                {
                    Ok(m) => {
                        read += m as u64;
                        if m == 0 || rest.last() == Some(&b'\n') {
                            break;
                        }
                    }
                    Err(error) => {
                        stopped = Some(ImportError::Input {
                            line: number,
                            error,
                        });
                        break;
                    }
                }
            }
            if stopped.is_some() {
                break;
            }
            Err(format!("line: longer than {MAX_LINE_BYTES} bytes"))
        } else {
            let text = line.trim_ascii();
            if text.is_empty() {
                continue;
            }
            parse_line(text, project, clock.now()).map_err(|e| e.to_string())
        };
        match result {
            Ok(ImportItem::Restore(event)) => {
                restore_bytes += line.len();
                restores.push(*event);
            }
            Ok(ImportItem::Track(event)) if !dedup => {
                restore_bytes += line.len();
                fresh.push(event.record);
            }
            Ok(ImportItem::Track(event)) => {
                tracks.push_back(store.track(*event));
                track_bytes.push_back(line.len());
                held_by_tracks += line.len();
                while tracks.len() >= TRACKS_IN_FLIGHT || held_by_tracks > limits.bytes_held / 2 {
                    let Some(outcome) = tracks.next().await else {
                        break;
                    };
                    held_by_tracks -= track_bytes.pop_front().unwrap_or(0);
                    count(&mut summary, outcome?);
                }
            }
            Err(message) => {
                let error = LineError {
                    line: number,
                    message,
                };
                progress(Progress::Bad(&error));
                summary.rejected += 1;
                if summary.errors.len() < ERRORS_LISTED {
                    summary.errors.push(error);
                }
            }
        }
        if restores.len() + fresh.len() >= limits.restore_batch
            || restore_bytes > limits.bytes_held / 4
        {
            restore_bytes = 0;
            for (batch, deliver) in [(&mut restores, false), (&mut fresh, true)] {
                if batch.is_empty() {
                    continue;
                }
                if let Some(previous) = writing.take() {
                    let skipped: u64 = previous.await?;
                    summary.imported -= skipped;
                    summary.suppressed += skipped;
                }
                summary.imported += batch.len() as u64;
                writing = Some(store.restore(std::mem::take(batch), deliver));
            }
        }
        progress(Progress::Read(read));
    }
    while let Some(outcome) = tracks.next().await {
        count(&mut summary, outcome?);
    }
    if let Some(previous) = writing.take() {
        let skipped: u64 = previous.await?;
        summary.imported -= skipped;
        summary.suppressed += skipped;
    }
    for (batch, deliver) in [(restores, false), (fresh, true)] {
        if !batch.is_empty() {
            let len = batch.len() as u64;
            let skipped = store.restore(batch, deliver).await?;
            summary.imported += len - skipped;
            summary.suppressed += skipped;
        }
    }
    match stopped {
        Some(stopped) => Err(stopped),
        None => Ok(summary),
    }
}

fn count(summary: &mut ImportSummary, outcome: InsertOutcome) {
    match outcome {
        InsertOutcome::Inserted => summary.imported += 1,
        InsertOutcome::Duplicate => summary.duplicates += 1,
        InsertOutcome::Suppressed => summary.suppressed += 1,
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
