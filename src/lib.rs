//! cartwatch keeps a shop's systems in step with carts that live on a partner's platform: it
//! polls the partner's Cart Status API, notices checkouts and orders, records them in the
//! store and announces them through an outbox delivered to log and webhook sinks.
//!
//! The modules form layers; each may use the ones below it, never one above, and the
//! components of one layer do not use each other (ARCHITECTURE.md has the rule; a test keeps
//! it true):
//!
//! 0. Vocabulary: [`cart_id`], [`time`], [`clock`], [`secret`], [`checks`], [`events`],
//!    [`outbox`], [`model`] (the provider-neutral poll model), [`net`] (HTTP plumbing),
//!    [`xml_tree`].
//! 1. Decisions, pure: [`policy`], [`upstream`], [`reconcile`].
//! 2. Components, beside each other: [`provider`] (one folder per partner API behind one
//!    trait), [`store`] (a few narrow traits; SQLite behind them), [`sinks`].
//! 3. The daemon: [`sweep`], [`delivery`], [`schedule`], [`liveness`], [`metrics`],
//!    [`daemon`].
//! 4. The service: [`items`], [`confirm`], [`http_api`], [`app`] (daemon and HTTP API from
//!    one config), [`config`] (loads the sections each component defines), [`render`],
//!    [`logging`].
//!
//! The command line, the demo and the benchmarks are the binary's; the partner simulator is
//! its own crate. Nothing here depends on them.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod app;
pub mod cart_id;
pub mod checks;
pub mod clock;
pub mod config;
pub mod confirm;
pub mod daemon;
pub mod delivery;
pub mod events;
pub mod http_api;
pub mod items;
pub mod liveness;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod net;
pub mod outbox;
pub mod plan;
pub mod planning;
pub mod policy;
pub mod provider;
pub mod reconcile;
pub mod render;
pub mod schedule;
pub mod secret;
pub mod sinks;
pub mod store;
pub mod sweep;
pub mod time;
pub mod upstream;
pub mod xml_tree;
