//! The black-box behaviour suite again, against PostgreSQL: the same test files as `api`
//! (the helpers see this binary's name and give each test a database of its own on the
//! server at `TRACKD_TEST_DATABASE_URL`), plus what only several nodes show (`nodes.rs`).
//! Without the variable each test prints a SKIPPED notice on stderr (visible in
//! `cargo test`'s output) and returns, unless `TRACKD_TEST_REQUIRE_POSTGRES=1` (CI), where
//! each fails; a server that cannot be reached fails them too.

// The helpers serve both suites; some are for the SQLite one only.
#![allow(dead_code)]

#[path = "../api/bounds.rs"]
mod bounds;
#[path = "../api/clients.rs"]
mod clients;
#[path = "../api/connections.rs"]
mod connections;
#[path = "../api/dedup.rs"]
mod dedup;
#[path = "../api/delivery.rs"]
mod delivery;
mod failures;
#[path = "../api/helpers.rs"]
mod helpers;
#[path = "../api/hostile.rs"]
mod hostile;
#[path = "../api/import.rs"]
mod import;
#[path = "../api/live.rs"]
mod live;
mod nodes;
#[path = "../api/operate.rs"]
mod operate;
mod outage;
mod parity;
#[path = "../api/privacy.rs"]
mod privacy;
#[path = "../api/read.rs"]
mod read;
#[path = "../api/receiver.rs"]
mod receiver;
#[path = "../api/relay.rs"]
mod relay;
#[path = "../api/segment.rs"]
mod segment;
#[path = "../api/track.rs"]
mod track;
#[path = "../api/users.rs"]
mod users;
