//! The store: everything the daemon knows, behind a boundary the rest of the program sees as a
//! few narrow async traits with typed values: what a sweep needs ([`SweepStore`]), what
//! delivery needs ([`OutboxStore`]), what registration and the services need
//! ([`CartStore`]), and what reports need ([`ReportStore`]). [`Store`] is all of them.
//!
//! SQLite ([`sqlite`]) is the backend; it is the only module that touches rusqlite. The
//! apply step (read a cart as it is now, decide, write it with its transition and events) is
//! backend-neutral, in [`apply`], over a small transaction trait each backend implements.
//! Due carts are *claimed* a page at a time, so a backend shared by several daemons can
//! lease them without the sweep changing.

pub mod apply;
pub mod postgres;
pub mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::checks::{MILLISECOND, MINUTE, Problems, SECOND};
use crate::events::{EventType, NewEvent};
use crate::model::{Cart, PollTarget, TrackRequest};
use crate::outbox::{DeadLetter, DeliveryResult, DeliveryState, PendingDelivery, SinkSpec, StoredEvent};
use crate::reconcile::{Context, PollOutcome};
use crate::secret::Secret;
use crate::upstream::Snapshot;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another connection held a lock longer than the busy timeout. Retryable.
    #[error("the database is locked by another process (waited the busy timeout); will retry")]
    Busy,
    /// The database cannot be written: read-only file, full disk, I/O error, a lost
    /// connection. Retryable later.
    #[error("the database cannot be written: {0}")]
    Unwritable(String),
    /// The database server cannot be reached now (PostgreSQL). Retryable.
    #[error("cannot reach the database: {0}")]
    Unreachable(String),
    /// The database could not be opened.
    #[error("cannot open the database {target}: {message}")]
    Open {
        /// The file (or server).
        target: String,
        /// Why.
        message: String,
    },
    /// There is no database file, and the command only works with one that exists.
    #[error(
        "there is no database at {} (the database.path setting); `cartwatch track` or `cartwatch run` creates one",
        path.display()
    )]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The database was written by a newer cartwatch.
    #[error(
        "the database has schema version {found}, newer than this cartwatch supports ({supported}); upgrade cartwatch"
    )]
    TooNew {
        /// Version found.
        found: i64,
        /// Latest this build knows.
        supported: i64,
    },
    /// The schema version is negative, which no cartwatch writes: someone set it by hand.
    #[error(
        "the database's schema version is {found}, which cartwatch never writes (was PRAGMA user_version set by hand?); \
         set it back to the version it had, or restore a backup"
    )]
    BadVersion {
        /// Version found.
        found: i64,
    },
    /// A migration failed and was rolled back.
    #[error("migrating the database to schema version {version} failed: {message}")]
    Migration {
        /// The version being applied.
        version: i64,
        /// Why.
        message: String,
    },
    /// Any other database error.
    #[error("database error: {0}")]
    Backend(String),
    /// The blocking task running the query failed.
    #[error("database task failed: {0}")]
    Task(String),
    /// The thread that writes poll outcomes died. Nothing can be recorded any more: the
    /// daemon stops, so that its service manager restarts it.
    #[error("the database writer thread stopped: {0}")]
    WriterStopped(String),
}

impl StoreError {
    /// Whether trying again later may succeed: locks and write failures are; schema problems
    /// are not.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Busy | StoreError::Unwritable(_) | StoreError::Unreachable(_) | StoreError::Task(_))
    }

    /// An equivalent error, for telling several waiters about one failure.
    pub(crate) fn duplicate(&self) -> StoreError {
        match self {
            StoreError::Busy => StoreError::Busy,
            StoreError::Unwritable(message) => StoreError::Unwritable(message.clone()),
            StoreError::Unreachable(message) => StoreError::Unreachable(message.clone()),
            other => StoreError::Task(other.to_string()),
        }
    }
}

/// `[database]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatabaseConfig {
    /// The SQLite file.
    pub path: PathBuf,
    /// How long a statement waits for another connection's lock.
    #[serde(with = "humantime_serde")]
    pub busy_timeout: Duration,
    /// A PostgreSQL connection string; when set, the store is PostgreSQL, shared by every
    /// daemon that uses it.
    pub url: Secret,
    /// A file holding the connection string.
    pub url_file: PathBuf,
    /// A file holding the password, for a connection string without one.
    pub password_file: PathBuf,
    /// How long a claimed cart or delivery stays a daemon's (PostgreSQL).
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Connections per daemon (PostgreSQL).
    pub pool_size: u32,
}

impl DatabaseConfig {
    /// Records every problem of this section in `problems`.
    pub fn check(&self, problems: &mut Problems) {
        if self.path.as_os_str().is_empty() && self.url.is_empty() {
            problems.add("database.path", "must not be empty");
        }
        if !self.url.is_empty()
            && let Err(message) = postgres::parse_url(self.url.expose(), None)
        {
            problems.add("database.url", message);
        }
        problems.duration("database.busy_timeout", self.busy_timeout, 10 * MILLISECOND, 10 * MINUTE);
        problems.duration("database.lease", self.lease, 5 * SECOND, 60 * MINUTE);
        problems.number("database.pool_size", self.pool_size, 2..=256);
    }

    /// Whether the store is PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        !self.url.is_empty()
    }

    /// Where the store is, for messages: the file, or the server and database (never the
    /// password).
    pub fn target(&self) -> String {
        if self.is_postgres() { postgres::describe_url(self.url.expose()) } else { self.path.display().to_string() }
    }
}

/// Opens (creating if needed, when `create`) and migrates the database `config` names, on
/// the blocking pool.
///
/// Fails when it cannot be opened or migrated, or, without `create`, does not exist.
pub async fn open(config: &DatabaseConfig, create: bool) -> Result<Arc<dyn Store>, StoreError> {
    if config.is_postgres() {
        return Ok(Arc::new(postgres::PgStore::connect(config).await?));
    }
    let config = config.clone();
    let store = tokio::task::spawn_blocking(move || match create {
        true => sqlite::SqliteStore::open(&config.path, config.busy_timeout),
        false => sqlite::SqliteStore::open_existing(&config.path, config.busy_timeout),
    })
    .await
    .map_err(|error| StoreError::Task(error.to_string()))??;
    Ok(Arc::new(store))
}

/// Where a page of due carts ended, for reading the next: opaque to everyone but the
/// backend that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueCursor(String);

impl DueCursor {
    /// A cursor a backend encodes as it likes.
    pub fn from_token(token: String) -> DueCursor {
        DueCursor(token)
    }

    /// What the backend encoded.
    pub fn token(&self) -> &str {
        &self.0
    }
}

/// A page of due carts, claimed for polling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DuePage {
    /// The carts, in due order.
    pub carts: Vec<PollTarget>,
    /// Where to continue; `None` when this was the last page.
    pub next: Option<DueCursor>,
}

/// A row registered by hand (`next_poll_at` empty) whose id has not been checked yet, or a
/// due row whose id is not canonical.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UncheckedCart {
    /// Row key.
    pub key: i64,
    /// The id as found.
    pub cart_id: String,
    /// The provider as found.
    pub provider: String,
    /// The session token, if the row has one.
    pub session_token: Option<String>,
}

/// A poll outcome for one cart, with a uniform sample in `[0, 1)` to jitter its next poll.
pub type Outcome = (i64, PollOutcome, f64);

/// An item added to or removed from a cart, as the item history keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemRecord {
    /// The item.
    pub cart_item_id: String,
    /// Pieces.
    pub quantity: Option<i64>,
    /// The shop's price per piece, exact decimal text.
    pub my_sales_unit_price: Option<String>,
    /// The partner's price per piece, exact decimal text.
    pub imat_unit_price: Option<String>,
    /// Currency.
    pub currency: Option<String>,
    /// The item's expiry, as sent.
    pub valid_until: Option<String>,
}

/// What registering a cart did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackOutcome {
    /// Newly tracked.
    Added,
    /// Already tracked; the reference was updated if one was given. `replaced` is the
    /// reference it had when a different one replaced it.
    AlreadyTracked {
        /// The reference replaced, if a different one was given.
        replaced: Option<String>,
    },
    /// Its tracking had ended (the state it was in is given): it is polled again from now,
    /// with its age and maximum age counted afresh.
    Resumed(String),
    /// Already ordered, or flagged invalid; left as it is (the state is given).
    Finished(String),
}

/// The reference a re-registration replaces: the stored one, when a different one is given.
pub fn replaced_reference(stored: Option<String>, given: Option<&str>) -> Option<String> {
    stored.filter(|stored| given.is_some_and(|given| given != stored))
}

/// What untracking a cart did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UntrackOutcome {
    /// No longer polled.
    Untracked,
    /// Was not being tracked; its state is given.
    NotTracking(String),
    /// No such cart.
    Unknown,
}

/// What applying a batch wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppliedBatch {
    /// Status changes: cart id, from, to.
    pub transitions: Vec<(String, Option<String>, String)>,
    /// Events written: type, cart id, event id.
    pub events: Vec<(EventType, String, String)>,
    /// Status values the document does not list: cart id, value.
    pub unknown_statuses: Vec<(String, String)>,
    /// Carts whose polling ended, with their new state.
    pub finished: Vec<(String, String)>,
    /// Carts whose outcome was not applied because they are no longer tracked.
    pub skipped: usize,
}

/// A recorded status change.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredTransition {
    /// Status before; `None` for the first sighting.
    pub from_status: Option<String>,
    /// Status after.
    pub to_status: String,
    /// OrderID at the time.
    pub order_id: Option<String>,
    /// When it was detected.
    pub detected_at: String,
    /// The event announcing it, if one was written.
    pub event_id: Option<String>,
}

/// One cart with its history.
#[derive(Debug, Clone, PartialEq)]
pub struct CartDetail {
    /// The cart.
    pub cart: Cart,
    /// Its transitions, oldest first.
    pub transitions: Vec<StoredTransition>,
}

/// A cart as the polling plan learns from it: the row, and each status seen with when it was
/// first seen, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanHistory {
    /// The cart.
    pub cart: Cart,
    /// `(to_status, detected_at)` of its transitions, oldest first.
    pub seen: Vec<(String, DateTime<Utc>)>,
}

/// The persisted health of one upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRecord {
    /// Provider name.
    pub provider: String,
    /// The state machine's view.
    pub snapshot: Snapshot,
    /// When a request last succeeded.
    pub last_success_at: Option<DateTime<Utc>>,
    /// When a request last failed.
    pub last_error_at: Option<DateTime<Utc>>,
    /// The last failure, for people.
    pub last_error: Option<String>,
    /// When it was written.
    pub updated_at: String,
}

/// One sweep's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepRecord {
    /// The provider swept (empty for the sum of several).
    pub provider: String,
    /// When it started.
    pub started_at: String,
    /// When it ended.
    pub finished_at: Option<String>,
    /// Carts whose outcome was applied.
    pub carts_polled: u64,
    /// Requests sent upstream.
    pub requests: u64,
    /// Requests that failed.
    pub failures: u64,
    /// Database reads or writes that failed (the carts involved stay due).
    pub write_failures: u64,
    /// Status changes recorded.
    pub transitions: u64,
    /// Events written.
    pub events: u64,
    /// Why the sweep stopped before reaching every due cart, if it did.
    pub stopped_early: Option<String>,
}

impl SweepRecord {
    /// Adds another sweep's figures (of another provider, in the same round).
    pub fn add(&mut self, other: &SweepRecord) {
        if self.started_at.is_empty() || other.started_at < self.started_at {
            self.started_at.clone_from(&other.started_at);
        }
        if other.finished_at > self.finished_at {
            self.finished_at.clone_from(&other.finished_at);
        }
        self.carts_polled += other.carts_polled;
        self.requests += other.requests;
        self.failures += other.failures;
        self.write_failures += other.write_failures;
        self.transitions += other.transitions;
        self.events += other.events;
        if let Some(reason) = &other.stopped_early {
            self.stopped_early = Some(match self.stopped_early.take() {
                Some(earlier) => format!("{earlier}; {reason}"),
                None => reason.clone(),
            });
        }
    }
}

fn as_seconds<S: serde::Serializer>(duration: &std::time::Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

/// One sink's deliveries, for `cartwatch status` and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SinkSummary {
    /// The sink's name (`log`, or the webhook's).
    pub sink: String,
    /// Deliveries waiting to be attempted (held ones included).
    pub pending: u64,
    /// Deliveries made.
    pub delivered: u64,
    /// Dead letters.
    pub dead: u64,
    /// Pending deliveries held behind a dead letter of the same cart.
    pub held: u64,
    /// How long the oldest event waiting for this sink has waited (zero when none waits).
    #[serde(serialize_with = "as_seconds")]
    pub oldest_pending_age: std::time::Duration,
    /// Why the sink is disabled, if it is.
    pub disabled: Option<String>,
}

/// Counts for `cartwatch status` and metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Carts by state and status.
    pub carts: Vec<(String, Option<String>, u64)>,
    /// Carts due now.
    pub due_now: u64,
    /// Each configured sink's deliveries.
    pub sinks: Vec<SinkSummary>,
    /// Events in the outbox.
    pub events: u64,
    /// Upstream health.
    pub upstreams: Vec<UpstreamRecord>,
    /// The latest sweep.
    pub last_sweep: Option<SweepRecord>,
    /// Carts flagged invalid, with why.
    pub invalid: Vec<(String, String)>,
    /// The daemons sharing the store (PostgreSQL), most recent first.
    pub members: Vec<Member>,
}

/// A daemon sharing the store, as it announces itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// Its name: host and a unique suffix; what its leases are held under.
    pub member_id: String,
    /// The machine.
    pub host: String,
    /// Its process id there.
    pub pid: u32,
    /// Its cartwatch version.
    pub version: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it last said it was alive.
    pub last_seen: DateTime<Utc>,
    /// The carts it holds a lease on now.
    pub carts_claimed: u64,
}

/// One recorded item change.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemChange {
    /// The cart.
    pub cart_id: String,
    /// The item.
    pub cart_item_id: String,
    /// `add` or `remove`.
    pub action: String,
    /// Pieces.
    pub quantity: Option<i64>,
    /// The shop's price per piece, exact.
    pub my_sales_unit_price: Option<String>,
    /// i.materialise's price per piece, exact.
    pub imat_unit_price: Option<String>,
    /// Currency.
    pub currency: Option<String>,
    /// The item's expiry, as sent.
    pub valid_until: Option<String>,
    /// When the change was made.
    pub changed_at: String,
    /// The `cart.items_changed` event, if written.
    pub event_id: Option<String>,
}

/// What a sweep needs: hand edits checked, due carts claimed, outcomes applied, figures and
/// upstream health recorded.
#[async_trait]
pub trait SweepStore: Send + Sync + std::fmt::Debug {
    /// Creates again the indexes and views the store needs that someone dropped, and says
    /// which. Cheap when nothing is missing.
    async fn repair_schema(&self) -> Result<Vec<String>, StoreError>;

    /// Tracked rows registered by hand whose id has not been checked yet, at most `limit`.
    async fn unchecked_carts(&self, limit: u32) -> Result<Vec<UncheckedCart>, StoreError>;

    /// Gives a row its canonical id and session token, and makes it due at `now` if it was
    /// not scheduled. Returns the reason instead when another row already has that id.
    async fn set_cart_id(
        &self,
        key: i64,
        cart_id: String,
        session_token: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Result<(), String>, StoreError>;

    /// Flags a row `invalid` with `reason` in its `last_error`: it is never polled.
    async fn flag_invalid(&self, key: i64, reason: String, now: DateTime<Utc>) -> Result<(), StoreError>;

    /// Makes due now the tracked carts of `provider` whose `next_poll_at` is not a timestamp
    /// (edited by hand past the constraint), at most `limit`; returns their ids.
    async fn reschedule_garbled(
        &self,
        provider: &str,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<String>, StoreError>;

    /// Claims a page of `provider`'s carts due at `now`, after `after`, in due order: the
    /// carts this daemon polls now.
    async fn claim_due(
        &self,
        provider: &str,
        now: DateTime<Utc>,
        after: Option<DueCursor>,
        limit: u32,
    ) -> Result<DuePage, StoreError>;

    /// Claims up to `limit` of `provider`'s carts due after `started` and by `until`, soonest
    /// first, to fill the free seats of a sweep's last request: only carts not polled since
    /// `started` (so none twice in a sweep) and not failing (their backoff stands).
    async fn claim_early(
        &self,
        provider: &str,
        started: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<PollTarget>, StoreError>;

    /// Applies a batch's poll outcomes in one transaction: each cart's new record, its
    /// transition and its events (with their deliveries), together or not at all.
    async fn apply(&self, outcomes: Vec<Outcome>, context: Context) -> Result<AppliedBatch, StoreError>;

    /// Records a finished sweep's figures.
    async fn record_sweep(&self, record: SweepRecord) -> Result<(), StoreError>;

    /// Persists an upstream's health, with the events that announce a change of it, in one
    /// transaction.
    async fn save_upstream(&self, record: UpstreamRecord, events: Vec<NewEvent>) -> Result<(), StoreError>;

    /// Every upstream's persisted health.
    async fn upstream_records(&self) -> Result<Vec<UpstreamRecord>, StoreError>;

    /// Records when the upstream last answered and last failed, leaving its health as it
    /// is: on a shared store, the daemons that saw a change write it, and a sweep's end
    /// must not write back an older view.
    async fn note_upstream(&self, record: UpstreamRecord) -> Result<(), StoreError> {
        self.save_upstream(record, Vec::new()).await
    }

    /// Starts what the store does in the background while a daemon runs, until `shutdown`:
    /// SQLite copies the WAL back into the database every `interval`; PostgreSQL keeps this
    /// daemon in the members table and wakes `events` when any member writes an event.
    /// `None` when there is nothing to do.
    ///
    /// Fails when the background work cannot start.
    fn start_upkeep(
        &self,
        interval: Duration,
        events: Arc<tokio::sync::Notify>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<Option<tokio::task::JoinHandle<()>>, StoreError> {
        let _ = (interval, events, shutdown);
        Ok(None)
    }

    /// Whether several daemons share this store: claims are leases, and the upstream's
    /// health, its probe and its rate limit are shared through it.
    fn is_shared(&self) -> bool {
        false
    }

    /// Gives back claims on carts this daemon will not poll after all (a pause, a shutdown),
    /// so another daemon need not wait for the lease to run out.
    async fn release(&self, keys: Vec<i64>) -> Result<(), StoreError> {
        let _ = keys;
        Ok(())
    }

    /// Claims the probe of `provider`'s paused upstream, due at `now`, for `hold`: `false`
    /// when another daemon is sending it, or has just sent it (the shared state no longer
    /// has a probe due).
    async fn claim_probe(&self, provider: &str, now: DateTime<Utc>, hold: Duration) -> Result<bool, StoreError> {
        let _ = (provider, now, hold);
        Ok(true)
    }

    /// Takes a request slot under a rate limit every daemon shares: `None` when the request
    /// may go, else how long to wait before asking again. A store that is not shared leaves
    /// the rate to each daemon (`None`).
    async fn take_request_slot(
        &self,
        provider: &str,
        requests_per_second: f64,
    ) -> Result<Option<Duration>, StoreError> {
        let _ = (provider, requests_per_second);
        Ok(None)
    }
}

/// What delivery needs: the outbox, the sinks and each sink's deliveries.
#[async_trait]
pub trait OutboxStore: Send + Sync + std::fmt::Debug {
    /// Writes events no poll produced (manual actions), with their deliveries, in one
    /// transaction.
    async fn write_events(&self, events: Vec<NewEvent>) -> Result<(), StoreError>;

    /// Makes the sinks match the config; one whose target changed is enabled again.
    async fn sync_sinks(&self, specs: Vec<SinkSpec>, now: DateTime<Utc>) -> Result<(), StoreError>;

    /// Why a sink is disabled, if it is.
    async fn sink_disabled(&self, sink: String) -> Result<Option<String>, StoreError>;

    /// Disables a sink, as when its receiver answers `410 Gone`, and writes `announcement`
    /// (a `webhook.endpoint_disabled` event) in the same transaction, but only if this call
    /// is the one that disabled it: a sink already disabled keeps its first reason.
    async fn disable_sink(
        &self,
        sink: String,
        reason: String,
        announcement: Option<NewEvent>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Enables a disabled sink; `None` when there is no such sink, else whether it was
    /// disabled.
    async fn enable_sink(&self, sink: String, now: DateTime<Utc>) -> Result<Option<bool>, StoreError>;

    /// Up to `limit` deliveries of `sink` due at `now`, oldest event first, never one whose
    /// cart has an earlier delivery pending or dead on this sink. A `sequential` sink gets
    /// the oldest pending ones up to the first not due yet.
    async fn pending_deliveries(
        &self,
        sink: String,
        now: DateTime<Utc>,
        limit: u32,
        sequential: bool,
    ) -> Result<Vec<PendingDelivery>, StoreError>;

    /// Records the outcomes of delivery attempts in one transaction, with the
    /// `announcements`: an event written for a delivery (by `event_seq`) that this call
    /// dead-letters, such as `webhook.dead_lettered`. A result that no longer applies (the
    /// delivery was recorded by another member meanwhile) writes no announcement.
    async fn record_deliveries(
        &self,
        sink: String,
        results: Vec<DeliveryResult>,
        announcements: Vec<(i64, NewEvent)>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// When the next pending delivery of `sink` not due at `now` becomes due.
    async fn next_delivery_due(&self, sink: String, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Whether `sink` has any delivery pending.
    async fn has_pending(&self, sink: String) -> Result<bool, StoreError>;
}

/// What registration and the services need: carts by id, and the changes made to them.
#[async_trait]
pub trait CartStore: Send + Sync + std::fmt::Debug {
    /// Registers carts in one transaction, first due at `due_at`.
    async fn track(
        &self,
        requests: Vec<TrackRequest>,
        now: DateTime<Utc>,
        due_at: DateTime<Utc>,
    ) -> Result<Vec<(String, TrackOutcome)>, StoreError>;

    /// Stops polling carts; their rows and history stay.
    async fn untrack(
        &self,
        cart_ids: Vec<String>,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, UntrackOutcome)>, StoreError>;

    /// One cart by its public id.
    async fn cart(&self, cart_id: String) -> Result<Option<Cart>, StoreError>;

    /// The session token a cart is polled with, if it has one.
    async fn session_token(&self, cart_id: String) -> Result<Option<String>, StoreError>;

    /// Makes a tracked cart due at `now`.
    async fn poll_soon(&self, cart_id: String, now: DateTime<Utc>) -> Result<(), StoreError>;

    /// Notes what the partner said about a tracked cart in its `last_error`, and makes it
    /// due at `now`.
    async fn note_cart(&self, cart_id: String, note: String, now: DateTime<Utc>) -> Result<(), StoreError>;

    /// Records an item change: one history row per item, the event (with its deliveries)
    /// and an early poll of the cart.
    async fn record_item_change(
        &self,
        cart_id: String,
        action: String,
        items: Vec<ItemRecord>,
        event: Option<NewEvent>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// The item changes made to a cart, oldest first.
    async fn item_history(&self, cart_id: String) -> Result<Vec<ItemChange>, StoreError>;
}

/// What people and monitoring ask: summaries, histories, the outbox, dead letters.
#[async_trait]
pub trait ReportStore: Send + Sync + std::fmt::Debug {
    /// Whether the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Waits until the store can no longer record anything (its writer died), and says
    /// why. Never returns while all is well.
    async fn writer_stopped(&self) -> StoreError;

    /// The counts behind `cartwatch status` and the metrics.
    async fn summary(&self, now: DateTime<Utc>) -> Result<Summary, StoreError>;

    /// One cart and its transitions.
    async fn cart_detail(&self, cart_id: String) -> Result<Option<CartDetail>, StoreError>;

    /// Hands `visit` each cart of `provider` tracked now or since `since`, with its
    /// transitions, one at a time (a million carts never sit in memory together): what the
    /// polling plan estimates its hazards and sizes its budget from.
    async fn plan_history(
        &self,
        provider: String,
        since: DateTime<Utc>,
        visit: Box<dyn FnMut(PlanHistory) + Send>,
    ) -> Result<(), StoreError>;

    /// Requests sent to `provider`'s partner by sweeps started since `since` (the store keeps
    /// the last thousand sweeps).
    async fn requests_since(&self, provider: String, since: DateTime<Utc>) -> Result<u64, StoreError>;

    /// The ids of the events written from `since` until before `until`, of `event_type` if
    /// given, oldest first: what `events redeliver --since` replays.
    async fn event_ids_between(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        event_type: Option<String>,
    ) -> Result<Vec<String>, StoreError>;

    /// Events after the cursor `after` (a `seq`), oldest first, at most `limit`.
    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<StoredEvent>, StoreError>;

    /// Every sink's delivery state for each of the events `seqs`.
    async fn delivery_states(&self, seqs: Vec<i64>) -> Result<Vec<(i64, DeliveryState)>, StoreError>;

    /// Dead letters, newest first, optionally of one sink.
    async fn dead_letters(&self, sink: Option<String>, limit: u32) -> Result<Vec<DeadLetter>, StoreError>;

    /// Queues events for delivery again, attempts starting afresh; returns how many, and the
    /// event ids that do not exist.
    async fn redeliver(
        &self,
        event_ids: Vec<String>,
        dead_only: bool,
        sink: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<(usize, Vec<String>), StoreError>;

    /// Gives dead letters up (`skipped`), so their carts' later events go out.
    async fn skip_dead(
        &self,
        event_ids: Vec<String>,
        dead_only: bool,
        sink: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<(usize, Vec<String>), StoreError>;

    /// The names of the sinks, active or not.
    async fn sink_names(&self) -> Result<Vec<String>, StoreError>;

    /// Makes every tracked cart due at `now`; returns how many.
    async fn make_all_due(&self, now: DateTime<Utc>) -> Result<usize, StoreError>;

    /// The daemons sharing the store, most recent first (none when it is not shared).
    async fn members(&self) -> Result<Vec<Member>, StoreError> {
        Ok(Vec::new())
    }

    /// How many carts are due at `now`.
    async fn due_count(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;
}

/// The whole store.
pub trait Store: SweepStore + OutboxStore + CartStore + ReportStore {}

impl<T: SweepStore + OutboxStore + CartStore + ReportStore + ?Sized> Store for T {}

/// How long a failed write is retried before it is given up (what it would have recorded
/// is then done again: a batch's carts stay due, a delivery is attempted again).
pub const RETRY_BUDGET: Duration = Duration::from_secs(60);

/// Runs a store operation, retrying while it fails for a reason that may pass (another
/// process holding a lock, a full disk), with a doubling pause up to 5 s, until `budget` is
/// spent or `shutdown` is cancelled. Returns the last error otherwise.
pub async fn retrying<T, Fut>(
    what: &str,
    budget: Duration,
    shutdown: &tokio_util::sync::CancellationToken,
    mut operation: impl FnMut() -> Fut,
) -> Result<T, StoreError>
where
    Fut: Future<Output = Result<T, StoreError>>,
{
    let deadline = tokio::time::Instant::now() + budget;
    let mut delay = Duration::from_millis(100);
    loop {
        match operation().await {
            Err(error)
                if error.is_retryable() && tokio::time::Instant::now() < deadline && !shutdown.is_cancelled() =>
            {
                tracing::warn!(error = %error, retry_in = ?delay, "cannot {what} yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            result => return result,
        }
    }
}
