//! trackd's storage backends. SQL lives here and nowhere else.
//!
//! - [`sqlite`]: [`SqliteStore`], the embedded default: one file, WAL, `synchronous=FULL`,
//!   one writer thread that group-commits concurrent requests.
//! - [`postgres`]: [`PostgresStore`], shared by any number of nodes: per-node group commit,
//!   dedup across nodes by one upsert per batch on the database clock.

mod job;
pub mod postgres;
pub mod sqlite;

pub use postgres::{PgConfig, PostgresStore};
pub use sqlite::{SqliteConfig, SqliteStore};
