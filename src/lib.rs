//! cartwatch keeps a shop's systems in step with carts that live on a partner's platform: it
//! polls the partner's Cart Status API, notices checkouts and orders, records them in SQLite
//! and announces them through an outbox delivered to log and webhook sinks.
//!
//! Layout (see ARCHITECTURE.md for the bird's-eye view):
//!
//! - [`config`]: layered configuration and validation; [`secret`]: values never shown.
//! - [`cart_id`], [`status`], [`time`]: the small vocabulary types.
//! - [`provider`]: partner API clients and their wire formats; [`xml_tree`] reads XML.
//! - [`policy`], [`upstream`], [`reconcile`]: pure decisions (backoff, health, what a poll means).
//! - [`store`]: SQLite, the only module that touches rusqlite.
//! - [`sweep`]: one pass over the due carts; [`schedule`]: when sweeps start.
//! - [`events`], [`sinks`], [`delivery`]: what is announced, where, and the delivery loop.
//! - [`daemon`]: `run(config, reloads, hooks, shutdown)`, the whole daemon as a function.
//! - [`http_api`], [`metrics`], [`systemd`], [`liveness`]: the local HTTP API, Prometheus
//!   metrics, readiness and watchdog notifications, and when the watchdog may be told all is well.
//! - [`simulator`], [`demo`], [`bench`]: a fake partner on loopback, and the demo and the
//!   benchmarks built on it.
//! - [`cli`], [`render`], [`output`], [`logging`]: the command line, text for people and the
//!   standard output it goes to, diagnostics.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bench;
pub mod cart_id;
pub mod cli;
pub mod config;
pub mod confirm;
pub mod daemon;
pub mod delivery;
pub mod demo;
pub mod events;
pub mod http_api;
pub mod items;
pub mod liveness;
pub mod logging;
pub mod metrics;
pub mod output;
pub mod policy;
pub mod provider;
pub mod reconcile;
pub mod render;
pub mod schedule;
pub mod secret;
pub mod simulator;
pub mod sinks;
pub mod status;
pub mod store;
pub mod sweep;
pub mod systemd;
pub mod time;
pub mod upstream;
pub mod xml_tree;
