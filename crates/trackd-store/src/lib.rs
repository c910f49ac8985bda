//! trackd's storage backends. SQL lives here and nowhere else.
//!
//! - [`sqlite`]: [`SqliteStore`], the embedded default: one file, WAL, `synchronous=FULL`,
//!   one writer thread that group-commits concurrent requests.

pub mod sqlite;

pub use sqlite::{SqliteConfig, SqliteStore};
