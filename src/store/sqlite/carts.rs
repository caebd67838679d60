//! Carts: registration, hand-edit repairs, claiming due carts, and handing a batch's
//! outcomes to the writer thread.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Transaction, params};

use super::SqliteStore;
use super::rows::{CART_COLUMNS, lenient_text, read_cart};
use super::writer::{ApplyJob, WriterJob};
use crate::model::{Cart, CartState, PollTarget, TrackRequest};
use crate::reconcile::Context;
use crate::store::{
    AppliedBatch, DueCursor, DuePage, Outcome, StoreError, TrackOutcome, UncheckedCart, UntrackOutcome,
};
use crate::time::{MAX_STORED, format_ts};

/// Due carts of one provider in due order after a keyset cursor; uses the `carts_due` index.
const DUE_PAGE_SQL: &str = "SELECT cart_key, cart_id, account, session_token, next_poll_at FROM carts INDEXED BY carts_due \
     WHERE state = 'tracking' AND provider = ?1 AND next_poll_at <= ?2 AND (next_poll_at, cart_key) > (?3, ?4) \
     ORDER BY next_poll_at, cart_key LIMIT ?5";

/// What a request needs of a cart selected as `cart_key, cart_id, account, session_token`.
fn read_target(row: &rusqlite::Row<'_>) -> rusqlite::Result<PollTarget> {
    Ok(PollTarget {
        key: row.get(0)?,
        cart_id: lenient_text(row, 1)?.unwrap_or_default(),
        account: lenient_text(row, 2)?.unwrap_or_default(),
        session_token: lenient_text(row, 3)?,
    })
}

/// A cursor after the row due at `next_poll_at` with key `key`.
fn cursor(next_poll_at: &str, key: i64) -> DueCursor {
    DueCursor::from_token(format!("{next_poll_at}|{key}"))
}

/// The position a cursor names; the start for one this backend did not make.
fn position(cursor: Option<&DueCursor>) -> (String, i64) {
    cursor
        .and_then(|cursor| {
            let (time, key) = cursor.token().rsplit_once('|')?;
            Some((time.to_owned(), key.parse().ok()?))
        })
        .unwrap_or_default()
}

impl SqliteStore {
    /// Registers carts in one transaction, first due at `due_at`.
    ///
    /// Fails only on database errors, in which case nothing is registered.
    pub async fn track(
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
                    let state: Option<Option<String>> = transaction
                        .query_row("SELECT state FROM carts WHERE cart_id = ?1", [&cart_id], |row| lenient_text(row, 0))
                        .optional()?;
                    state
                        .map_or(UntrackOutcome::Unknown, |state| UntrackOutcome::NotTracking(state.unwrap_or_default()))
                };
                outcomes.push((cart_id, outcome));
            }
            transaction.commit()?;
            Ok(outcomes)
        })
        .await
    }

    /// Tracked rows with no `next_poll_at` (a plain `INSERT`), whose id has not been checked.
    pub async fn unchecked_carts(&self, limit: u32) -> Result<Vec<UncheckedCart>, StoreError> {
        self.read(move |connection| {
            let mut statement = connection.prepare_cached(
                // Without the hint the planner walks `carts_by_state` over every tracked
                // cart, before the first request: with a million tracked, spawn to first
                // request took 195–243 ms that way and takes 41–56 ms through this index.
                "SELECT cart_key, cart_id, provider, session_token FROM carts INDEXED BY carts_unchecked \
                 WHERE state = 'tracking' AND next_poll_at IS NULL LIMIT ?1",
            )?;
            let rows = statement.query_map([limit], |row| {
                Ok(UncheckedCart {
                    key: row.get(0)?,
                    cart_id: lenient_text(row, 1)?.unwrap_or_default(),
                    provider: lenient_text(row, 2)?.unwrap_or_default(),
                    session_token: lenient_text(row, 3)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Gives a row its canonical id and session token, due at `now` if it was not scheduled;
    /// the reason instead when another row has that id.
    pub async fn set_cart_id(
        &self,
        key: i64,
        cart_id: String,
        session_token: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Result<(), String>, StoreError> {
        self.write(move |connection| {
            let transaction = connection.transaction()?;
            let duplicate: Option<i64> = transaction
                .query_row(
                    "SELECT cart_key FROM carts WHERE cart_id = ?1 AND cart_key <> ?2",
                    params![cart_id, key],
                    |row| row.get(0),
                )
                .optional()?;
            if duplicate.is_some() {
                return Ok(Err(format!("duplicate of cart {cart_id}, which is already registered")));
            }
            transaction.execute(
                "UPDATE carts SET cart_id = ?2, session_token = ?3, next_poll_at = coalesce(next_poll_at, ?4) \
                 WHERE cart_key = ?1",
                params![key, cart_id, session_token, format_ts(now)],
            )?;
            transaction.commit()?;
            Ok(Ok(()))
        })
        .await
    }

    /// Flags a row `invalid`, with why in `last_error`.
    pub async fn flag_invalid(&self, key: i64, reason: String, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.write(move |connection| {
            connection.execute(
                "UPDATE carts SET state = 'invalid', next_poll_at = NULL, last_error = ?2, finished_at = ?3 \
                 WHERE cart_key = ?1",
                params![key, reason, format_ts(now)],
            )?;
            Ok(())
        })
        .await
    }

    /// Makes due now the tracked carts of `provider` whose `next_poll_at` is not a
    /// timestamp: such text sorts after every real one and would never come due.
    pub async fn reschedule_garbled(
        &self,
        provider: &str,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        let provider = provider.to_owned();
        self.write(move |connection| {
            let mut statement = connection.prepare_cached(
                "UPDATE carts SET next_poll_at = ?2 WHERE cart_key IN (SELECT cart_key FROM carts \
                   WHERE state = 'tracking' AND provider = ?1 AND next_poll_at > ?3 LIMIT ?4) \
                 RETURNING cart_id",
            )?;
            let rows = statement.query_map(params![provider, format_ts(now), format_ts(MAX_STORED), limit], |row| {
                lenient_text(row, 0).map(Option::unwrap_or_default)
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// A page of `provider`'s carts due at `now`, after `after`, in due order. One daemon
    /// owns a SQLite file, so claiming is reading.
    pub async fn claim_due(
        &self,
        provider: &str,
        now: DateTime<Utc>,
        after: Option<DueCursor>,
        limit: u32,
    ) -> Result<DuePage, StoreError> {
        let provider = provider.to_owned();
        self.read(move |connection| {
            let (after_time, after_key) = position(after.as_ref());
            let mut statement = connection.prepare_cached(DUE_PAGE_SQL)?;
            let mut last = None;
            let rows = statement.query_map(params![provider, format_ts(now), after_time, after_key, limit], |row| {
                Ok((read_target(row)?, lenient_text(row, 4)?.unwrap_or_default()))
            })?;
            let mut carts = Vec::new();
            for row in rows {
                let (target, due) = row?;
                last = Some(cursor(&due, target.key));
                carts.push(target);
            }
            let full = carts.len() as u64 >= u64::from(limit);
            Ok(DuePage { carts, next: last.filter(|_| full) })
        })
        .await
    }

    /// Up to `limit` carts due after `started` and by `until`, not polled since `started` and
    /// not failing, soonest first.
    pub async fn claim_early(
        &self,
        provider: &str,
        started: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<PollTarget>, StoreError> {
        let provider = provider.to_owned();
        self.read(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT cart_key, cart_id, account, session_token FROM carts INDEXED BY carts_due \
                 WHERE state = 'tracking' AND provider = ?1 AND next_poll_at > ?2 AND next_poll_at <= ?3 \
                   AND (last_polled_at IS NULL OR last_polled_at < ?2) AND consecutive_errors = 0 \
                 ORDER BY next_poll_at, cart_key LIMIT ?4",
            )?;
            let rows =
                statement.query_map(params![provider, format_ts(started), format_ts(until), limit], read_target)?;
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
    ///
    /// Batches that arrive within a moment of each other are written together in one
    /// transaction, so concurrent batches share one commit and never queue behind each
    /// other's.
    pub async fn apply(&self, outcomes: Vec<Outcome>, context: Context) -> Result<AppliedBatch, StoreError> {
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

    /// One cart by id.
    pub async fn cart(&self, cart_id: String) -> Result<Option<Cart>, StoreError> {
        self.read(move |connection| {
            Ok(connection
                .query_row(&format!("SELECT {CART_COLUMNS} FROM carts WHERE cart_id = ?1"), [cart_id], read_cart)
                .optional()?)
        })
        .await
    }
}

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
            request.provider,
            request.account,
            request.session_token,
            request.reference,
            now,
            due_at
        ])?;
    if inserted > 0 {
        return Ok(TrackOutcome::Added);
    }
    let (state, reference): (String, Option<String>) = transaction.query_row(
        "SELECT state, reference FROM carts WHERE cart_id = ?1",
        [request.cart_id.as_str()],
        |row| Ok((lenient_text(row, 0)?.unwrap_or_default(), lenient_text(row, 1)?)),
    )?;
    match CartState::parse(&state) {
        Some(CartState::Tracking) => {
            transaction.execute(
                "UPDATE carts SET reference = coalesce(?2, reference), session_token = coalesce(?3, session_token) \
                 WHERE cart_id = ?1",
                params![request.cart_id, request.reference, request.session_token],
            )?;
            Ok(TrackOutcome::AlreadyTracked {
                replaced: crate::store::replaced_reference(reference, request.reference.as_deref()),
            })
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
