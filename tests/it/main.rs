//! The integration tests, one binary: each module a capability, run against the real daemon,
//! the simulator, local webhook receivers and SQLite files in temporary directories.

mod bench;
mod cli;
mod client;
mod clock;
mod common;
mod delivery_guarantees;
mod end_to_end;
mod http_api;
mod items;
mod operations;
mod parsers;
mod plan;
mod providers;
mod resilience;
mod service;
mod several_daemons;
mod tidy;
mod titelive;
mod webhooks;
