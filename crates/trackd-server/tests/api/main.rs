//! Black-box tests: the real server on port 0 with its own data directory, over HTTP.

mod bounds;
mod canary;
mod cli;
mod clients;
mod compat;
mod connections;
mod console;
mod crash;
mod dedup;
mod delivery;
mod delivery_crash;
mod durability;
mod erasure;
mod faults;
mod helpers;
mod hostile;
mod import;
mod live;
mod operate;
mod read;
mod receiver;
mod relay;
mod segment;
mod track;
mod transfer;
mod users;
