//! trackd's server: the HTTP API, configuration and command line around the domain
//! ([`trackd_core`]) and the stores ([`trackd_store`]).
//!
//! Reading order:
//! - [`app`]: [`App`], built from a config and a store, served on a bound listener until a
//!   shutdown future resolves.
//! - [`api`]: routes, body decoding, credentials, error mapping.
//! - [`conn`]: a connection's transport (hyper's own refusals answered as JSON).
//! - [`import`]: NDJSON import, shared by the import route and `trackd import`.
//! - [`retention`]: the background task deleting events past their project's retention.
//! - [`cli`]: the `trackd` command line; [`transfer`]: its `export` and `import`.

pub mod api;
pub mod app;
pub mod cli;
pub mod conn;
pub mod delivery;
pub mod import;
pub mod retention;
pub mod transfer;

pub use app::App;
