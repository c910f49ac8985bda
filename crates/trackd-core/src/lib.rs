//! trackd's domain: what a valid request is and what it means. No HTTP, no SQL.
//!
//! Reading order:
//! - [`json`]: the strict JSON reader every body goes through, and the canonical form.
//! - [`identity`]: user ids, emails and the user key.
//! - [`event`]: a track request becomes a [`TrackedEvent`] with its event key and dedup key.
//! - [`wire`]: bodies made one shape: form bracket notation and fields sent as JSON strings.
//! - [`users`]: profile changes (`users/*`) and their merge rules; [`plan`]: what a change
//!   writes, decided from the rows it finds (the one profile planner both stores execute).
//! - [`project`]: projects, tracking tokens and secret keys.
//! - [`import`]: import lines: export lines restored, track bodies ingested.
//! - [`read`]: read queries, keyset cursors and the JSON shapes of answers.
//! - [`privacy`]: suppression hashes and the audit log (DESIGN §10).
//! - [`live`]: committed events fanned out to watching consoles.
//! - [`time`]: timestamps, the injectable [`Clock`], `created_at` parsing.
//! - [`store`]: the [`Store`] trait the backends implement; [`metrics`]: what they report.
//! - [`error`]: field errors and store errors.

pub mod delivery;
pub mod error;
pub mod event;
pub mod identity;
pub mod import;
pub mod json;
pub mod live;
pub mod metrics;
pub mod plan;
pub mod privacy;
pub mod project;
#[cfg(any(test, feature = "testing"))]
pub mod properties;
pub mod read;
pub mod segment;
pub mod store;
pub mod time;
pub mod users;
pub mod wire;

pub use error::{FieldError, StoreError};
pub use event::{DedupKey, EventKey, EventName, EventRecord, TrackRequest, TrackedEvent};
pub use identity::{Email, Identity, UserId};
pub use live::{LiveBatch, LiveFeed, LiveItem, LiveReceiver};
pub use metrics::StoreMetrics;
pub use project::{Credential, CredentialKind, Project, ProjectId, Token, TokenHash};
pub use store::{
    export_chunks, DynStore, EventPage, ExportChunk, InsertOutcome, Store, StoreFuture,
};
pub use time::{Clock, SystemClock, Timestamp};
pub use users::{ProfileChange, ProfileOp, ProfileRequest, UserRef};

/// How deep a body may nest objects and arrays, the body itself being level 1.
pub const MAX_JSON_DEPTH: usize = 64;
