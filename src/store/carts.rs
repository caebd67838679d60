//! Carts: registration, the due-cart query, and applying a batch's poll outcomes in one
//! transaction together with its transitions and outbox events.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use rusqlite::types::Value;
use std::sync::{Mutex, PoisonError};

use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};

use super::outbox::insert_event;
use super::{Store, StoreError};
use crate::cart_id::CartId;
use crate::events::{EventType, NewEvent};
use crate::provider::Provider;
use crate::reconcile::{CartRow, CartState, Context, PollOutcome, decide};
use crate::time::format_ts;

/// The columns of [`CartRow`], in the order [`read_cart_row`] expects.
pub(super) const CART_COLUMNS: &str = "cart_key, cart_id, reference, state, status, order_id, cart_created_at, \
     cart_created_at_raw, registered_at, next_poll_at, last_polled_at, status_changed_at, \
     consecutive_errors, consecutive_not_found, last_error, finished_at, provider, account, status_detail, \
     order_status, order_total, previous_status, tracked_since";

/// Reads a row selected with [`CART_COLUMNS`]. Lenient about types, since people edit this
/// table by hand: a number where text belongs is read as text, garbage counters as zero.
pub(super) fn read_cart_row(row: &Row<'_>) -> rusqlite::Result<CartRow> {
    Ok(CartRow {
        key: row.get(0)?,
        cart_id: lenient_text(row, 1)?.unwrap_or_default(),
        reference: lenient_text(row, 2)?,
        state: lenient_text(row, 3)?.unwrap_or_default(),
        status: lenient_text(row, 4)?,
        order_id: lenient_text(row, 5)?,
        cart_created_at: lenient_text(row, 6)?,
        cart_created_at_raw: lenient_text(row, 7)?,
        registered_at: lenient_text(row, 8)?.unwrap_or_default(),
        next_poll_at: lenient_text(row, 9)?,
        last_polled_at: lenient_text(row, 10)?,
        status_changed_at: lenient_text(row, 11)?,
        consecutive_errors: lenient_count(row, 12)?,
        consecutive_not_found: lenient_count(row, 13)?,
        last_error: lenient_text(row, 14)?,
        finished_at: lenient_text(row, 15)?,
        provider: lenient_text(row, 16)?.unwrap_or_else(|| crate::provider::imaterialise::PROVIDER.to_owned()),
        account: lenient_text(row, 17)?.unwrap_or_default(),
        status_detail: lenient_text(row, 18)?,
        order_status: lenient_text(row, 19)?,
        order_total: lenient_text(row, 20)?,
        previous_status: lenient_text(row, 21)?,
        tracked_since: lenient_text(row, 22)?.unwrap_or_default(),
    })
}

pub(super) fn lenient_text(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<String>> {
    Ok(match row.get::<_, Value>(index)? {
        Value::Null => None,
        Value::Integer(number) => Some(number.to_string()),
        Value::Real(number) => Some(number.to_string()),
        Value::Text(text) => Some(text),
        Value::Blob(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
    })
}

fn lenient_count(row: &Row<'_>, index: usize) -> rusqlite::Result<u32> {
    Ok(match row.get::<_, Value>(index)? {
        Value::Integer(number) => u32::try_from(number).unwrap_or(0),
        Value::Text(text) => text.trim().parse().unwrap_or(0),
        _ => 0,
    })
}

/// One cart to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackRequest {
    /// The provider it lives on.
    pub provider: Provider,
    /// The cart's public id in its provider's canonical form.
    pub cart_id: String,
    /// What polling sends instead of the id, when that is a secret (Titelive's session token).
    pub session_token: Option<String>,
    /// The partner account (Titelive: the domain code); empty for i.materialise.
    pub account: String,
    /// The shop's reference, if any.
    pub reference: Option<String>,
}

impl TrackRequest {
    /// An i.materialise cart.
    pub fn imaterialise(cart_id: CartId, reference: Option<String>) -> TrackRequest {
        TrackRequest {
            provider: Provider::Imaterialise,
            cart_id: cart_id.to_string(),
            session_token: None,
            account: String::new(),
            reference,
        }
    }

    /// A cart of `provider` named by `text` as a user typed it, in `account`.
    ///
    /// Fails with a message naming the problem when `text` is not an id of that provider.
    pub fn parse(
        provider: Provider,
        text: &str,
        account: &str,
        reference: Option<String>,
    ) -> Result<TrackRequest, String> {
        let (cart_id, session_token) = provider.register_id(text)?;
        Ok(TrackRequest { provider, cart_id, session_token, account: account.to_owned(), reference })
    }
}

/// What registering a cart did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackOutcome {
    /// Newly tracked.
    Added,
    /// Already tracked; the reference was updated if one was given.
    AlreadyTracked,
    /// Its tracking had ended (the state it was in is given): it is polled again from now,
    /// with its age and maximum age counted afresh.
    Resumed(String),
    /// Already ordered, or flagged invalid; left as it is (the state is given).
    Finished(String),
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

/// A cart due for polling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueCart {
    /// Row key.
    pub key: i64,
    /// The id as stored (possibly edited by hand).
    pub cart_id: String,
    /// When it became due, for keyset paging.
    pub next_poll_at: String,
    /// The partner account (Titelive domain).
    pub account: String,
    /// What polling sends for a cart whose id is not that (Titelive's session token).
    pub session_token: Option<String>,
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

/// What checking rows inserted or edited by hand did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandEditReport {
    /// Rows accepted (some after normalising their id).
    pub accepted: Vec<String>,
    /// Rows flagged invalid: the id as found and why.
    pub flagged: Vec<(String, String)>,
    /// Tracked carts whose `next_poll_at` was not a timestamp, made due now.
    pub rescheduled: Vec<String>,
}

impl Store {
    /// Registers carts for polling, all in one transaction; each is due at once.
    ///
    /// Fails only on database errors, in which case nothing is registered.
    pub async fn track(
        &self,
        requests: Vec<TrackRequest>,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, TrackOutcome)>, StoreError> {
        self.track_due_at(requests, now, now).await
    }

    /// Registers carts like [`track`](Self::track), first due at `due_at`.
    ///
    /// Fails only on database errors, in which case nothing is registered.
    pub async fn track_due_at(
        &self,
        requests: Vec<TrackRequest>,
        now: DateTime<Utc>,
        due_at: DateTime<Utc>,
    ) -> Result<Vec<(String, TrackOutcome)>, StoreError> {
        self.write(move |connection| {
            let transaction = connection.transaction()?;
            let now = format_ts(now);
            let due_at = format_ts(due_at);
            let mut outcomes = Vec::with_capacity(requests.len());
            for request in requests {
                let outcome = track_one(&transaction, &request, &now, &due_at)?;
                outcomes.push((request.cart_id, outcome));
            }
            transaction.commit()?;
            Ok(outcomes)
        })
        .await
    }

    /// Stops polling carts. Their rows and history stay.
    pub async fn untrack(
        &self,
        cart_ids: Vec<String>,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, UntrackOutcome)>, StoreError> {
        self.write(move |connection| {
            let transaction = connection.transaction()?;
            let now = format_ts(now);
            let mut outcomes = Vec::with_capacity(cart_ids.len());
            for cart_id in cart_ids {
                let changed = transaction.execute(
                    "UPDATE carts SET state = 'untracked', next_poll_at = NULL, finished_at = ?2 \
                     WHERE cart_id = ?1 AND state = 'tracking'",
                    params![cart_id, now],
                )?;
                let outcome = if changed > 0 {
                    UntrackOutcome::Untracked
                } else {
                    let state: Option<String> = transaction
                        .query_row("SELECT state FROM carts WHERE cart_id = ?1", [&cart_id], |row| row.get(0))
                        .optional()?;
                    state.map_or(UntrackOutcome::Unknown, UntrackOutcome::NotTracking)
                };
                outcomes.push((cart_id, outcome));
            }
            transaction.commit()?;
            Ok(outcomes)
        })
        .await
    }

    /// Checks rows inserted or edited by hand: a tracked row with no `next_poll_at` (a
    /// plain `INSERT`) gets a canonical id and is made due, or is flagged `invalid` with the
    /// reason in `last_error` so it never reaches the API; a tracked row of `provider` whose
    /// `next_poll_at` is not a timestamp (which would sort after every real one and never
    /// come due) is made due now. Both use indexes, so they cost nothing when all is well.
    /// An index or view the code needs that someone dropped is created again first.
    pub async fn check_hand_edited(
        &self,
        provider: Provider,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<HandEditReport, StoreError> {
        self.write(move |connection| {
            let transaction = connection.transaction()?;
            super::schema::repair_missing(&transaction)?;
            let rows: Vec<(i64, String, String)> = {
                let mut statement = transaction.prepare_cached(
                    "SELECT cart_key, cart_id, provider FROM carts \
                     WHERE state = 'tracking' AND next_poll_at IS NULL LIMIT ?1",
                )?;
                let rows = statement.query_map([limit], |row| {
                    Ok((
                        row.get(0)?,
                        lenient_text(row, 1)?.unwrap_or_default(),
                        lenient_text(row, 2)?.unwrap_or_default(),
                    ))
                })?;
                rows.collect::<Result<_, _>>()?
            };
            let mut report = HandEditReport::default();
            let now = format_ts(now);
            for (key, found, provider) in rows {
                match repair_cart_id(&transaction, key, &found, &provider, &now)? {
                    Ok((canonical, _)) => report.accepted.push(canonical),
                    Err(reason) => report.flagged.push((found, reason)),
                }
            }
            report.rescheduled = {
                let mut statement = transaction.prepare_cached(
                    "UPDATE carts SET next_poll_at = ?2 WHERE cart_key IN (SELECT cart_key FROM carts \
                       WHERE state = 'tracking' AND provider = ?1 AND next_poll_at > ?3 LIMIT ?4) \
                     RETURNING cart_id",
                )?;
                let rows = statement
                    .query_map(params![provider.as_str(), now, format_ts(crate::time::max_stored()), limit], |row| {
                        lenient_text(row, 0).map(Option::unwrap_or_default)
                    })?;
                rows.collect::<Result<_, _>>()?
            };
            transaction.commit()?;
            Ok(report)
        })
        .await
    }

    /// Normalises the id of one due row whose id is not in canonical form, or flags it
    /// invalid. Returns the canonical id with its session token, or the reason it was flagged.
    pub async fn repair_due_cart(
        &self,
        key: i64,
        found: String,
        provider: Provider,
        now: DateTime<Utc>,
    ) -> Result<Result<(String, Option<String>), String>, StoreError> {
        self.write(move |connection| {
            let transaction = connection.transaction()?;
            let result = repair_cart_id(&transaction, key, &found, provider.as_str(), &format_ts(now))?;
            transaction.commit()?;
            Ok(result)
        })
        .await
    }

    /// One page of `provider`'s carts due at `now`, after the keyset cursor `after`
    /// (`next_poll_at`, `cart_key`), in due order. Uses the `carts_due` index.
    pub async fn due_page(
        &self,
        provider: Provider,
        now: DateTime<Utc>,
        after: Option<(String, i64)>,
        limit: u32,
    ) -> Result<Vec<DueCart>, StoreError> {
        self.read(move |connection| {
            let (after_time, after_key) = after.unwrap_or_default();
            let mut statement = connection.prepare_cached(DUE_PAGE_SQL)?;
            let rows = statement.query_map(
                params![provider.as_str(), format_ts(now), after_time, after_key, limit],
                |row| {
                    Ok(DueCart {
                        key: row.get(0)?,
                        cart_id: lenient_text(row, 1)?.unwrap_or_default(),
                        next_poll_at: lenient_text(row, 2)?.unwrap_or_default(),
                        account: lenient_text(row, 3)?.unwrap_or_default(),
                        session_token: lenient_text(row, 4)?,
                    })
                },
            )?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// The query plan of the due-cart query, for benchmarks and operators.
    pub async fn explain_due_page(&self) -> Result<Vec<String>, StoreError> {
        self.read(|connection| {
            let mut statement = connection.prepare(&format!("EXPLAIN QUERY PLAN {DUE_PAGE_SQL}"))?;
            let rows = statement.query_map(params!["imaterialise", "", "", 0, 1], |row| row.get::<_, String>(3))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Makes every tracked cart due at `now`, as for a full sweep on demand. Returns how many.
    pub async fn make_all_due(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        self.write(move |connection| {
            Ok(connection.execute("UPDATE carts SET next_poll_at = ?1 WHERE state = 'tracking'", [format_ts(now)])?)
        })
        .await
    }

    /// How many carts are due at `now`.
    pub async fn due_count(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.read(move |connection| {
            Ok(connection.query_row(
                "SELECT count(*) FROM carts WHERE state = 'tracking' AND next_poll_at <= ?1",
                [format_ts(now)],
                |row| row.get(0),
            )?)
        })
        .await
    }

    /// Applies one batch's poll outcomes in one transaction: each cart's new row, its
    /// transition and its events (with their deliveries) are written together or not at all.
    /// `outcomes` pairs each cart key with its outcome and a jitter sample in `[0, 1)`.
    ///
    /// Batches that arrive within a moment of each other are written together in one
    /// transaction, so concurrent batches share one commit and never queue behind each
    /// other's.
    pub async fn apply(
        &self,
        outcomes: Vec<(i64, PollOutcome, f64)>,
        context: Arc<Context>,
    ) -> Result<AppliedBatch, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let stopped = || {
            let reason = self.inner.writer_failure.reason.get().cloned();
            StoreError::WriterStopped(reason.unwrap_or_else(|| "it ended".into()))
        };
        self.inner.apply_queue.send(WriterJob::Apply(ApplyJob { outcomes, context, reply })).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// The session token a cart is polled with (Titelive), if it has one.
    pub async fn session_token(&self, cart_id: String) -> Result<Option<String>, StoreError> {
        self.read(move |connection| {
            Ok(connection
                .query_row("SELECT session_token FROM carts WHERE cart_id = ?1", [cart_id], |row| lenient_text(row, 0))
                .optional()?
                .flatten())
        })
        .await
    }

    /// One cart by id, as stored.
    pub async fn cart(&self, cart_id: String) -> Result<Option<CartRow>, StoreError> {
        self.read(move |connection| {
            Ok(connection
                .query_row(&format!("SELECT {CART_COLUMNS} FROM carts WHERE cart_id = ?1"), [cart_id], read_cart_row)
                .optional()?)
        })
        .await
    }
}

const DUE_PAGE_SQL: &str = "SELECT cart_key, cart_id, next_poll_at, account, session_token FROM carts INDEXED BY carts_due \
     WHERE state = 'tracking' AND provider = ?1 AND next_poll_at <= ?2 AND (next_poll_at, cart_key) > (?3, ?4) \
     ORDER BY next_poll_at, cart_key LIMIT ?5";

fn track_one(
    transaction: &Transaction<'_>,
    request: &TrackRequest,
    now: &str,
    due_at: &str,
) -> Result<TrackOutcome, StoreError> {
    let inserted = transaction
        .prepare_cached(
            "INSERT INTO carts (cart_id, provider, account, session_token, reference, state, registered_at, \
             tracked_since, next_poll_at) VALUES (?1, ?2, ?3, ?4, ?5, 'tracking', ?6, ?6, ?7) \
             ON CONFLICT (cart_id) DO NOTHING",
        )?
        .execute(params![
            request.cart_id,
            request.provider.as_str(),
            request.account,
            request.session_token,
            request.reference,
            now,
            due_at
        ])?;
    if inserted > 0 {
        return Ok(TrackOutcome::Added);
    }
    let state: String =
        transaction.query_row("SELECT state FROM carts WHERE cart_id = ?1", [request.cart_id.as_str()], |row| {
            Ok(lenient_text(row, 0)?.unwrap_or_default())
        })?;
    match CartState::parse(&state) {
        Some(CartState::Tracking) => {
            transaction.execute(
                "UPDATE carts SET reference = coalesce(?2, reference), session_token = coalesce(?3, session_token) \
                 WHERE cart_id = ?1",
                params![request.cart_id, request.reference, request.session_token],
            )?;
            Ok(TrackOutcome::AlreadyTracked)
        }
        // Registering again is how an operator says "keep watching this one": a cart that was
        // untracked, expired or not found is polled again, its age counted from now.
        Some(CartState::Untracked | CartState::Expired | CartState::NotFound) => {
            transaction.execute(
                "UPDATE carts SET state = 'tracking', next_poll_at = ?2, tracked_since = ?3, finished_at = NULL, \
                 consecutive_errors = 0, consecutive_not_found = 0, last_error = NULL, \
                 reference = coalesce(?4, reference), session_token = coalesce(?5, session_token) \
                 WHERE cart_id = ?1",
                params![request.cart_id, due_at, now, request.reference, request.session_token],
            )?;
            Ok(TrackOutcome::Resumed(state))
        }
        Some(CartState::Ordered | CartState::Invalid) | None => Ok(TrackOutcome::Finished(state)),
    }
}

/// Puts a hand-edited row's id into canonical form (a Titelive token moves to
/// `session_token`, the id becomes the one derived from it), or flags the row invalid.
fn repair_cart_id(
    transaction: &Transaction<'_>,
    key: i64,
    found: &str,
    provider: &str,
    now: &str,
) -> Result<Result<(String, Option<String>), String>, StoreError> {
    let flag = |reason: String| -> Result<Result<(String, Option<String>), String>, StoreError> {
        transaction.execute(
            "UPDATE carts SET state = 'invalid', next_poll_at = NULL, last_error = ?2, finished_at = ?3 WHERE cart_key = ?1",
            params![key, reason, now],
        )?;
        Ok(Err(reason))
    };
    let Some(provider) = Provider::parse(provider) else {
        return flag(format!("unknown provider {provider:?}; expected imaterialise or titelive"));
    };
    let session_token: Option<String> =
        transaction
            .query_row("SELECT session_token FROM carts WHERE cart_key = ?1", [key], |row| lenient_text(row, 0))?;
    // A Titelive row inserted by hand names its cart by the token.
    let given = match (provider, &session_token) {
        (Provider::Titelive, Some(token)) => token.as_str(),
        _ => found,
    };
    let (canonical, token) = match provider.register_id(given) {
        Ok(registered) => registered,
        Err(message) => return flag(message),
    };
    if canonical != found {
        let duplicate: Option<i64> = transaction
            .query_row(
                "SELECT cart_key FROM carts WHERE cart_id = ?1 AND cart_key <> ?2",
                params![canonical, key],
                |row| row.get(0),
            )
            .optional()?;
        if duplicate.is_some() {
            return flag(format!("duplicate of cart {canonical}, which is already registered"));
        }
    }
    transaction.execute(
        "UPDATE carts SET cart_id = ?2, session_token = ?3, next_poll_at = coalesce(next_poll_at, ?4) WHERE cart_key = ?1",
        params![key, canonical, token, now],
    )?;
    Ok(Ok((canonical, token)))
}

/// One batch's outcomes for the writer thread.
pub(super) struct ApplyJob {
    outcomes: Vec<(i64, PollOutcome, f64)>,
    context: Arc<Context>,
    reply: tokio::sync::oneshot::Sender<Result<AppliedBatch, StoreError>>,
}

/// What the writer thread has done since the store was opened.
#[derive(Debug, Default)]
pub(super) struct WriterStats {
    busy_nanos: AtomicU64,
    commits: AtomicU64,
    batches: AtomicU64,
}

impl WriterStats {
    fn record(&self, busy: std::time::Duration, batches: u64) {
        self.busy_nanos.fetch_add(u64::try_from(busy.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.batches.fetch_add(batches, Ordering::Relaxed);
    }
}

/// The writer's totals since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WriterTotals {
    /// Time spent writing and committing transactions.
    pub busy: std::time::Duration,
    /// Transactions committed (or attempted).
    pub commits: u64,
    /// Batches written in them.
    pub batches: u64,
}

impl Store {
    /// What the database writer thread has done since the store was opened.
    pub fn writer_totals(&self) -> WriterTotals {
        let stats = &self.inner.writer_stats;
        WriterTotals {
            busy: std::time::Duration::from_nanos(stats.busy_nanos.load(Ordering::Relaxed)),
            commits: stats.commits.load(Ordering::Relaxed),
            batches: stats.batches.load(Ordering::Relaxed),
        }
    }
}

/// Most batches written in one transaction.
const MAX_GROUP: usize = 64;

/// How long the writer waits for more batches to join the first one. Every commit costs a
/// fixed amount (the WAL header, and a walk of the page cache), so fewer, larger commits
/// cost less CPU; a status reaching the database this much later changes nothing.
const GROUP_LINGER: std::time::Duration = std::time::Duration::from_millis(20);

/// Why the writer thread died, once it has.
#[derive(Debug, Default)]
pub(super) struct WriterFailure {
    pub(super) reason: std::sync::OnceLock<String>,
    pub(super) notify: tokio::sync::Notify,
}

/// What the writer thread is asked to do.
pub(super) enum WriterJob {
    /// Write a batch's outcomes.
    Apply(ApplyJob),
    /// Die, as a bug would make it: for the test that shows a dead writer is noticed.
    #[cfg(test)]
    Crash,
}

/// Starts the thread that writes batches' outcomes, grouping those that wait together.
/// It ends when the store (and so the queue's sender) is dropped. Should it die of a bug,
/// `failure` says so and wakes whoever waits on it: nothing would be recorded any more, and
/// a daemon that kept running would only look alive.
pub(super) fn start_apply_thread(
    writer: Arc<Mutex<Connection>>,
    stats: Arc<WriterStats>,
    failure: Arc<WriterFailure>,
) -> Result<std::sync::mpsc::Sender<WriterJob>, StoreError> {
    let (sender, receiver) = std::sync::mpsc::channel::<WriterJob>();
    std::thread::Builder::new()
        .name("cartwatch-writer".into())
        .spawn(move || {
            let work = std::panic::AssertUnwindSafe(|| write_jobs(&receiver, &writer, &stats));
            if let Err(panic) = std::panic::catch_unwind(work) {
                let reason = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|text| (*text).to_owned()))
                    .unwrap_or_else(|| "it panicked".into());
                tracing::error!(reason = %reason, "the database writer thread died");
                let _ = failure.reason.set(reason);
                failure.notify.notify_waiters();
            }
        })
        .map_err(|error| StoreError::Task(format!("cannot start the database writer thread: {error}")))?;
    Ok(sender)
}

fn write_jobs(receiver: &std::sync::mpsc::Receiver<WriterJob>, writer: &Mutex<Connection>, stats: &WriterStats) {
    let take = |job: WriterJob| match job {
        WriterJob::Apply(job) => job,
        #[cfg(test)]
        WriterJob::Crash => panic!("told to crash"),
    };
    while let Ok(first) = receiver.recv() {
        let deadline = std::time::Instant::now() + GROUP_LINGER;
        let mut jobs = vec![take(first)];
        while jobs.len() < MAX_GROUP {
            match receiver.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
                Ok(job) => jobs.push(take(job)),
                Err(_) => break,
            }
        }
        let mut connection = writer.lock().unwrap_or_else(PoisonError::into_inner);
        let writing = std::time::Instant::now();
        let batches = jobs.len() as u64;
        write_group(&mut connection, jobs);
        stats.record(writing.elapsed(), batches);
    }
}

/// Writes a group of batches in one transaction. Should one batch fail, the group is rolled
/// back and each batch written in its own transaction, so a failure costs only its batch.
/// (Savepoints would give the same isolation, but sub-journalling every page they touch
/// costs more than the rare retry.) Every job gets its own answer.
fn write_group(connection: &mut Connection, jobs: Vec<ApplyJob>) {
    let together = (|| -> Result<Vec<AppliedBatch>, StoreError> {
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let applied = jobs
            .iter()
            .map(|job| apply_in(&transaction, &job.outcomes, &job.context))
            .collect::<Result<Vec<_>, _>>()?;
        transaction.commit()?;
        Ok(applied)
    })();
    match together {
        Ok(applied) => {
            for (job, applied) in jobs.into_iter().zip(applied) {
                let _ = job.reply.send(Ok(applied));
            }
        }
        Err(error) if error.is_retryable() || jobs.len() == 1 => {
            let mut jobs = jobs.into_iter();
            let first = jobs.next();
            for job in jobs {
                let _ = job.reply.send(Err(error.duplicate()));
            }
            // The first (or only) job gets the error itself, so that a failure that will not
            // pass (a constraint, a trigger) is not mistaken for one that will.
            if let Some(first) = first {
                let _ = first.reply.send(Err(error));
            }
        }
        Err(_) => {
            for job in jobs {
                let alone = (|| -> Result<AppliedBatch, StoreError> {
                    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let applied = apply_in(&transaction, &job.outcomes, &job.context)?;
                    transaction.commit()?;
                    Ok(applied)
                })();
                let _ = job.reply.send(alone);
            }
        }
    }
}

/// Whether `next` differs from `current` only in the columns the schedule update writes.
fn schedule_only(current: &CartRow, next: &CartRow) -> bool {
    current.status == next.status
        && current.previous_status == next.previous_status
        && current.state == next.state
        && current.order_id == next.order_id
        && current.order_status == next.order_status
        && current.order_total == next.order_total
        && current.status_changed_at == next.status_changed_at
        && current.finished_at == next.finished_at
}

fn apply_in(
    transaction: &Connection,
    outcomes: &[(i64, PollOutcome, f64)],
    context: &Context,
) -> Result<AppliedBatch, StoreError> {
    let mut applied = AppliedBatch::default();
    let mut select = transaction.prepare_cached(&format!("SELECT {CART_COLUMNS} FROM carts WHERE cart_key = ?1"))?;
    let mut update = transaction.prepare_cached(
        "UPDATE carts SET status = ?2, order_id = ?3, cart_created_at = ?4, cart_created_at_raw = ?5, state = ?6, \
         next_poll_at = ?7, last_polled_at = ?8, status_changed_at = ?9, consecutive_errors = ?10, \
         consecutive_not_found = ?11, last_error = ?12, finished_at = ?13, status_detail = ?14, order_status = ?15, \
         order_total = ?16, previous_status = ?17 WHERE cart_key = ?1",
    )?;
    // Most polls change nothing but the schedule and the bookkeeping; leaving the status,
    // state and order columns out of the statement spares the (state, status) index.
    let mut update_schedule = transaction.prepare_cached(
        "UPDATE carts SET cart_created_at = ?2, cart_created_at_raw = ?3, next_poll_at = ?4, last_polled_at = ?5, \
         consecutive_errors = ?6, consecutive_not_found = ?7, last_error = ?8, status_detail = ?9 WHERE cart_key = ?1",
    )?;
    let mut insert_transition = transaction.prepare_cached(
        "INSERT INTO cart_transitions (cart_key, cart_id, from_status, to_status, order_id, detected_at, event_id) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let detected_at = format_ts(context.now);
    for (key, outcome, unit) in outcomes {
        let Some(current) = select.query_row([key], read_cart_row).optional()? else {
            applied.skipped += 1;
            continue;
        };
        let Some(decision) = decide(&current, outcome, context, *unit) else {
            applied.skipped += 1;
            continue;
        };
        let row = &decision.row;
        if schedule_only(&current, row) {
            update_schedule.execute(params![
                key,
                row.cart_created_at,
                row.cart_created_at_raw,
                row.next_poll_at,
                row.last_polled_at,
                row.consecutive_errors,
                row.consecutive_not_found,
                row.last_error,
                row.status_detail
            ])?;
        } else {
            update.execute(params![
                key,
                row.status,
                row.order_id,
                row.cart_created_at,
                row.cart_created_at_raw,
                row.state,
                row.next_poll_at,
                row.last_polled_at,
                row.status_changed_at,
                row.consecutive_errors,
                row.consecutive_not_found,
                row.last_error,
                row.finished_at,
                row.status_detail,
                row.order_status,
                row.order_total,
                row.previous_status
            ])?;
        }
        let mut first_event_id = None;
        for (event_type, data) in &decision.events {
            let event = NewEvent::cart(*event_type, data, context.now);
            insert_event(transaction, &event)?;
            applied.events.push((*event_type, row.cart_id.clone(), event.event_id.clone()));
            first_event_id.get_or_insert(event.event_id);
        }
        if let Some(transition) = &decision.transition {
            insert_transition.execute(params![
                key,
                row.cart_id,
                transition.from,
                transition.to,
                row.order_id,
                detected_at,
                first_event_id
            ])?;
            applied.transitions.push((row.cart_id.clone(), transition.from.clone(), transition.to.clone()));
        }
        if let Some(raw) = decision.unknown_status {
            applied.unknown_statuses.push((row.cart_id.clone(), raw));
        }
        if row.state != current.state {
            applied.finished.push((row.cart_id.clone(), row.state.clone()));
        }
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::provider::{CartReport, Observation};
    use crate::store::test_support::temp_store;

    fn status(status: &str, created_at_raw: &str, detail: Option<&str>) -> PollOutcome {
        PollOutcome::Report(CartReport::Status(Observation {
            status: status.into(),
            known_status: true,
            detail: detail.map(str::to_owned),
            created_at_raw: Some(created_at_raw.into()),
            created_at: crate::time::parse_naive(created_at_raw),
            ..Observation::default()
        }))
    }

    #[tokio::test]
    async fn a_dead_writer_is_reported_not_hidden() {
        let (store, _directory) = temp_store();
        store.inner.apply_queue.send(WriterJob::Crash).unwrap();
        let stopped = tokio::time::timeout(std::time::Duration::from_secs(5), store.writer_stopped()).await.unwrap();
        assert!(matches!(&stopped, StoreError::WriterStopped(reason) if reason.contains("told to crash")), "{stopped}");
        assert!(!stopped.is_retryable());
        let context = Arc::new(Context::from_config(&Config::default(), Utc::now()));
        let error = store.apply(vec![(1, PollOutcome::Failed("x".into()), 0.5)], context).await.unwrap_err();
        assert!(matches!(error, StoreError::WriterStopped(_)), "{error}");
    }

    /// Whichever statement writes it (the whole row, or only the schedule when the status
    /// stays), the stored row is exactly what `decide` made of the outcome.
    #[tokio::test]
    async fn both_update_paths_store_exactly_the_decided_row() {
        let (store, _directory) = temp_store();
        let cart_id = CartId::parse("921A2046-66A5-4C5F-B9A6-4BC646FA5E5A").unwrap();
        store.track(vec![TrackRequest::imaterialise(cart_id.clone(), None)], Utc::now()).await.unwrap();
        let config = Config::default();
        let outcomes = [
            (status("Pending", "2026-11-25T07:00:00", None), false),
            (status("Pending", "2026-11-25T07:00:00.5", Some("still open")), true),
            (PollOutcome::Failed("connection reset".into()), true),
            (status("CheckedOut", "2026-11-25T07:00:00.5", None), false),
        ];
        for (number, (outcome, schedule_only_expected)) in outcomes.into_iter().enumerate() {
            let before = store.cart(cart_id.as_str().to_owned()).await.unwrap().unwrap();
            let now = Utc::now() + chrono::Duration::seconds(number as i64 * 90);
            let context = Context::from_config(&config, now);
            let decided = decide(&before, &outcome, &context, 0.25).unwrap().row;
            assert_eq!(schedule_only(&before, &decided), schedule_only_expected, "outcome {number}");
            store.apply(vec![(before.key, outcome, 0.25)], Arc::new(context)).await.unwrap();
            let stored = store.cart(cart_id.as_str().to_owned()).await.unwrap().unwrap();
            assert_eq!(stored, decided, "outcome {number}");
        }
    }
}
