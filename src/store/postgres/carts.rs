//! Carts on PostgreSQL: registration, claiming due carts for a lease, and applying outcomes
//! in one transaction that checks the lease is still this member's.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::PgStore;
use super::outbox::insert_event;
use crate::events::NewEvent;
use crate::model::{Cart, CartState, PollTarget, TrackRequest};
use crate::reconcile::{Context, Transition};
use crate::store::apply::{CartTransaction, apply_outcomes};
use crate::store::{
    AppliedBatch, DueCursor, DuePage, Outcome, StoreError, TrackOutcome, UncheckedCart, UntrackOutcome,
};

/// The columns of a [`Cart`], in the order [`read_cart`] expects.
pub(super) const CART_COLUMNS: &str = "cart_key, cart_id, reference, state, status, order_id, cart_created_at, \
     cart_created_at_raw, registered_at, next_poll_at, last_polled_at, status_changed_at, \
     consecutive_errors, consecutive_not_found, last_error, finished_at, provider, account, status_detail, \
     order_status, order_total, previous_status, tracked_since";

/// Reads a row selected with [`CART_COLUMNS`].
pub(super) fn read_cart(row: &Row) -> Cart {
    let count = |index: usize| u32::try_from(row.get::<_, i32>(index)).unwrap_or(0);
    Cart {
        key: row.get(0),
        cart_id: row.get(1),
        reference: row.get(2),
        state: CartState::parse(row.get(3)).unwrap_or(CartState::Invalid),
        status: row.get(4),
        order_id: row.get(5),
        created_at: row.get(6),
        created_at_raw: row.get(7),
        registered_at: row.get(8),
        next_poll_at: row.get(9),
        last_polled_at: row.get(10),
        status_changed_at: row.get(11),
        consecutive_errors: count(12),
        consecutive_not_found: count(13),
        last_error: row.get(14),
        finished_at: row.get(15),
        provider: row.get(16),
        account: row.get(17),
        status_detail: row.get(18),
        order_status: row.get(19),
        order_total: row.get(20),
        previous_status: row.get(21),
        tracked_since: row.get(22),
    }
}

/// A count as PostgreSQL's `integer`.
fn int(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

impl PgStore {
    /// Registers carts in one transaction, first due at `due_at`.
    pub(super) async fn track(
        &self,
        requests: Vec<TrackRequest>,
        now: DateTime<Utc>,
        due_at: DateTime<Utc>,
    ) -> Result<Vec<(String, TrackOutcome)>, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        let insert = transaction
            .prepare(
                "INSERT INTO carts (cart_id, provider, account, session_token, reference, state, registered_at, \
                 tracked_since, next_poll_at) VALUES ($1, $2, $3, $4, $5, 'tracking', $6, $6, $7) \
                 ON CONFLICT (cart_id) DO NOTHING",
            )
            .await?;
        let mut outcomes = Vec::with_capacity(requests.len());
        for request in requests {
            let parameters: [&(dyn ToSql + Sync); 7] = [
                &request.cart_id,
                &request.provider,
                &request.account,
                &request.session_token,
                &request.reference,
                &now,
                &due_at,
            ];
            let outcome = if transaction.execute(&insert, &parameters).await? > 0 {
                TrackOutcome::Added
            } else {
                let row = transaction
                    .query_one("SELECT state, reference FROM carts WHERE cart_id = $1 FOR UPDATE", &[&request.cart_id])
                    .await?;
                let (state, reference): (String, Option<String>) = (row.get(0), row.get(1));
                match CartState::parse(&state) {
                    Some(CartState::Tracking) => {
                        transaction
                            .execute(
                                "UPDATE carts SET reference = coalesce($2, reference), \
                                 session_token = coalesce($3, session_token) WHERE cart_id = $1",
                                &[&request.cart_id, &request.reference, &request.session_token],
                            )
                            .await?;
                        let replaced = crate::store::replaced_reference(reference, request.reference.as_deref());
                        TrackOutcome::AlreadyTracked { replaced }
                    }
                    Some(CartState::Untracked | CartState::Expired | CartState::NotFound) => {
                        transaction
                            .execute(
                                "UPDATE carts SET state = 'tracking', next_poll_at = $2, tracked_since = $3, \
                                 finished_at = NULL, consecutive_errors = 0, consecutive_not_found = 0, \
                                 last_error = NULL, reference = coalesce($4, reference), \
                                 session_token = coalesce($5, session_token) WHERE cart_id = $1",
                                &[&request.cart_id, &due_at, &now, &request.reference, &request.session_token],
                            )
                            .await?;
                        TrackOutcome::Resumed(state)
                    }
                    Some(CartState::Ordered | CartState::Invalid) | None => TrackOutcome::Finished(state),
                }
            };
            outcomes.push((request.cart_id, outcome));
        }
        transaction.commit().await?;
        Ok(outcomes)
    }

    /// Stops polling carts. Their rows and history stay.
    pub(super) async fn untrack(
        &self,
        cart_ids: Vec<String>,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, UntrackOutcome)>, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        let mut outcomes = Vec::with_capacity(cart_ids.len());
        for cart_id in cart_ids {
            let changed = transaction
                .execute(
                    "UPDATE carts SET state = 'untracked', next_poll_at = NULL, finished_at = $2, \
                     lease_owner = NULL, lease_until = NULL WHERE cart_id = $1 AND state = 'tracking'",
                    &[&cart_id, &now],
                )
                .await?;
            let outcome = if changed > 0 {
                UntrackOutcome::Untracked
            } else {
                let state = transaction.query_opt("SELECT state FROM carts WHERE cart_id = $1", &[&cart_id]).await?;
                state.map_or(UntrackOutcome::Unknown, |row| UntrackOutcome::NotTracking(row.get(0)))
            };
            outcomes.push((cart_id, outcome));
        }
        transaction.commit().await?;
        Ok(outcomes)
    }

    /// Tracked rows with no `next_poll_at` (a plain `INSERT`), whose id has not been checked.
    pub(super) async fn unchecked_carts(&self, limit: u32) -> Result<Vec<UncheckedCart>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT cart_key, cart_id, provider, session_token FROM carts \
                 WHERE state = 'tracking' AND next_poll_at IS NULL LIMIT $1",
                &[&i64::from(limit)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| UncheckedCart {
                key: row.get(0),
                cart_id: row.get(1),
                provider: row.get(2),
                session_token: row.get(3),
            })
            .collect())
    }

    /// Gives a row its canonical id and token, due at `now` if it was not scheduled.
    pub(super) async fn set_cart_id(
        &self,
        key: i64,
        cart_id: String,
        session_token: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Result<(), String>, StoreError> {
        let client = self.client().await?;
        let duplicate =
            client.query_opt("SELECT 1 FROM carts WHERE cart_id = $1 AND cart_key <> $2", &[&cart_id, &key]).await?;
        if duplicate.is_some() {
            return Ok(Err(format!("duplicate of cart {cart_id}, which is already registered")));
        }
        client
            .execute(
                "UPDATE carts SET cart_id = $2, session_token = $3, next_poll_at = coalesce(next_poll_at, $4) \
                 WHERE cart_key = $1",
                &[&key, &cart_id, &session_token, &now],
            )
            .await?;
        Ok(Ok(()))
    }

    /// Flags a row `invalid`, with why in `last_error`.
    pub(super) async fn flag_invalid(&self, key: i64, reason: String, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "UPDATE carts SET state = 'invalid', next_poll_at = NULL, last_error = $2, finished_at = $3 \
                 WHERE cart_key = $1",
                &[&key, &reason, &now],
            )
            .await?;
        Ok(())
    }

    /// Claims up to `limit` of `provider`'s carts due at `now` that no member holds, for this
    /// member's lease, skipping rows another member is claiming at the same moment. Claimed
    /// carts are not claimable again, so the cursor only says whether to ask again.
    pub(super) async fn claim_due(
        &self,
        provider: &str,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<DuePage, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "WITH due AS (
                     SELECT cart_key FROM carts
                     WHERE state = 'tracking' AND provider = $1 AND next_poll_at <= $2
                       AND (lease_until IS NULL OR lease_until < now())
                     ORDER BY next_poll_at, cart_key LIMIT $3
                     FOR UPDATE SKIP LOCKED)
                 UPDATE carts c SET lease_owner = $4, lease_until = now() + make_interval(secs => $5)
                 FROM due WHERE c.cart_key = due.cart_key
                 RETURNING c.cart_key, c.cart_id, c.account, c.session_token, c.next_poll_at",
            )
            .await?;
        let rows = client
            .query(&statement, &[&provider, &now, &i64::from(limit), &self.member, &self.lease_seconds()])
            .await?;
        let carts = self.note_claims(&rows, now);
        let full = carts.len() as u64 >= u64::from(limit);
        Ok(DuePage { carts, next: full.then(|| DueCursor::from_token(String::new())) })
    }

    /// Claims up to `limit` carts due after `started` and by `until`, not polled since
    /// `started` and not failing, soonest first.
    pub(super) async fn claim_early(
        &self,
        provider: &str,
        started: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<PollTarget>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "WITH early AS (
                     SELECT cart_key FROM carts
                     WHERE state = 'tracking' AND provider = $1 AND next_poll_at > $2 AND next_poll_at <= $3
                       AND (last_polled_at IS NULL OR last_polled_at < $2) AND consecutive_errors = 0
                       AND (lease_until IS NULL OR lease_until < now())
                     ORDER BY next_poll_at, cart_key LIMIT $4
                     FOR UPDATE SKIP LOCKED)
                 UPDATE carts c SET lease_owner = $5, lease_until = now() + make_interval(secs => $6)
                 FROM early WHERE c.cart_key = early.cart_key
                 RETURNING c.cart_key, c.cart_id, c.account, c.session_token, c.next_poll_at",
            )
            .await?;
        let rows = client
            .query(&statement, &[&provider, &started, &until, &i64::from(limit), &self.member, &self.lease_seconds()])
            .await?;
        Ok(self.note_claims(&rows, until))
    }

    /// The carts a claim returned (`cart_key, cart_id, account, session_token, next_poll_at`),
    /// in due order (a missing due time counts as `due`), remembered as this member's.
    fn note_claims(&self, rows: &[Row], due: DateTime<Utc>) -> Vec<PollTarget> {
        let mut claimed: Vec<(DateTime<Utc>, PollTarget)> = rows
            .iter()
            .map(|row| {
                let target =
                    PollTarget { key: row.get(0), cart_id: row.get(1), account: row.get(2), session_token: row.get(3) };
                (row.get::<_, Option<DateTime<Utc>>>(4).unwrap_or(due), target)
            })
            .collect();
        claimed.sort_by_key(|(due, target)| (*due, target.key));
        let carts: Vec<PollTarget> = claimed.into_iter().map(|(_, target)| target).collect();
        self.claimed().extend(carts.iter().map(|cart| cart.key));
        carts
    }

    /// Gives back this member's claims on carts it will not poll after all.
    pub(super) async fn release(&self, keys: Vec<i64>) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.client()
            .await?
            .execute(
                "UPDATE carts SET lease_owner = NULL, lease_until = NULL WHERE cart_key = ANY($1) AND lease_owner = $2",
                &[&keys, &self.member],
            )
            .await?;
        let mut claimed = self.claimed();
        for key in keys {
            claimed.remove(&key);
        }
        Ok(())
    }

    /// Makes every tracked cart due at `now`. Returns how many.
    pub(super) async fn make_all_due(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let changed = self
            .client()
            .await?
            .execute("UPDATE carts SET next_poll_at = $1 WHERE state = 'tracking'", &[&now])
            .await?;
        Ok(changed as usize)
    }

    /// How many carts are due at `now`.
    pub(super) async fn due_count(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let row = self
            .client()
            .await?
            .query_one("SELECT count(*) FROM carts WHERE state = 'tracking' AND next_poll_at <= $1", &[&now])
            .await?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }

    /// Applies a batch's outcomes in one transaction. A cart this member claimed is written
    /// only while the claim is still its own: if its lease ran out and another member took
    /// the cart, the outcome is dropped (that member polls it). A cart nobody claimed (an
    /// item change's refresh, a confirmation) is written whoever holds it.
    pub(super) async fn apply(&self, outcomes: Vec<Outcome>, context: Context) -> Result<AppliedBatch, StoreError> {
        let keys: Vec<i64> = outcomes.iter().map(|(key, ..)| *key).collect();
        let claimed: Vec<i64> = {
            let claims = self.claimed();
            keys.iter().copied().filter(|key| claims.contains(key)).collect()
        };
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        let mut pg = PgTransaction {
            transaction: &transaction,
            member: &self.member,
            claimed: &claimed,
            locked: HashMap::new(),
            writes: Vec::new(),
        };
        let applied = apply_outcomes(&mut pg, &outcomes, &context).await?;
        transaction.commit().await?;
        let mut claims = self.claimed();
        for key in keys {
            claims.remove(&key);
        }
        Ok(applied)
    }

    /// The session token a cart is polled with, if it has one.
    pub(super) async fn session_token(&self, cart_id: String) -> Result<Option<String>, StoreError> {
        let row =
            self.client().await?.query_opt("SELECT session_token FROM carts WHERE cart_id = $1", &[&cart_id]).await?;
        Ok(row.and_then(|row| row.get(0)))
    }

    /// One cart by id.
    pub(super) async fn cart(&self, cart_id: String) -> Result<Option<Cart>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(&format!("SELECT {CART_COLUMNS} FROM carts WHERE cart_id = $1"), &[&cart_id])
            .await?;
        Ok(row.as_ref().map(read_cart))
    }
}

/// An open PostgreSQL transaction as the apply step sees it: the batch's carts are locked
/// and read in one statement, and written back in one.
struct PgTransaction<'a> {
    transaction: &'a deadpool_postgres::Transaction<'a>,
    member: &'a str,
    /// The carts of the batch this member claimed (the others nobody claimed).
    claimed: &'a [i64],
    /// The carts locked by [`CartTransaction::prefetch`], with the member holding each.
    locked: HashMap<i64, (Cart, Option<String>)>,
    /// The carts to write when the batch is done.
    writes: Vec<Cart>,
}

impl PgTransaction<'_> {
    fn admit(&self, key: i64, cart: Cart, owner: Option<&str>) -> Option<Cart> {
        if self.claimed.contains(&key) && owner.is_some_and(|owner| owner != self.member) {
            tracing::info!(cart_key = key, "another daemon took this cart over; its outcome here is dropped");
            return None;
        }
        Some(cart)
    }
}

impl CartTransaction for PgTransaction<'_> {
    async fn prefetch(&mut self, keys: &[i64]) -> Result<(), StoreError> {
        // Locked in key order, so that two transactions never wait for each other's rows.
        let statement = self
            .transaction
            .prepare_cached(&format!(
                "SELECT {CART_COLUMNS}, lease_owner FROM carts WHERE cart_key = ANY($1) ORDER BY cart_key FOR UPDATE"
            ))
            .await?;
        let keys = keys.to_vec();
        for row in self.transaction.query(&statement, &[&keys]).await? {
            let cart = read_cart(&row);
            self.locked.insert(cart.key, (cart, row.get(23)));
        }
        Ok(())
    }

    async fn cart(&mut self, key: i64) -> Result<Option<Cart>, StoreError> {
        if let Some((cart, owner)) = self.locked.get(&key) {
            return Ok(self.admit(key, cart.clone(), owner.as_deref()));
        }
        let statement = self
            .transaction
            .prepare_cached(&format!("SELECT {CART_COLUMNS}, lease_owner FROM carts WHERE cart_key = $1 FOR UPDATE"))
            .await?;
        let Some(row) = self.transaction.query_opt(&statement, &[&key]).await? else { return Ok(None) };
        let owner: Option<String> = row.get(23);
        Ok(self.admit(key, read_cart(&row), owner.as_deref()))
    }

    async fn write_cart(&mut self, _before: &Cart, after: &Cart) -> Result<(), StoreError> {
        self.writes.push(after.clone());
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), StoreError> {
        if self.writes.is_empty() {
            return Ok(());
        }
        let writes = std::mem::take(&mut self.writes);
        let column = |get: &dyn Fn(&Cart) -> Option<String>| writes.iter().map(get).collect::<Vec<Option<String>>>();
        let time = |get: &dyn Fn(&Cart) -> Option<DateTime<Utc>>| writes.iter().map(get).collect::<Vec<_>>();
        let keys: Vec<i64> = writes.iter().map(|cart| cart.key).collect();
        let status = column(&|cart| cart.status.clone());
        let order_id = column(&|cart| cart.order_id.clone());
        let created_at: Vec<Option<chrono::NaiveDateTime>> = writes.iter().map(|cart| cart.created_at).collect();
        let created_at_raw = column(&|cart| cart.created_at_raw.clone());
        let state: Vec<String> = writes.iter().map(|cart| cart.state.as_str().to_owned()).collect();
        let next_poll_at = time(&|cart| cart.next_poll_at);
        let last_polled_at = time(&|cart| cart.last_polled_at);
        let status_changed_at = time(&|cart| cart.status_changed_at);
        let errors: Vec<i32> = writes.iter().map(|cart| int(cart.consecutive_errors)).collect();
        let not_found: Vec<i32> = writes.iter().map(|cart| int(cart.consecutive_not_found)).collect();
        let last_error = column(&|cart| cart.last_error.clone());
        let finished_at = time(&|cart| cart.finished_at);
        let status_detail = column(&|cart| cart.status_detail.clone());
        let order_status = column(&|cart| cart.order_status.clone());
        let order_total = column(&|cart| cart.order_total.clone());
        let previous_status = column(&|cart| cart.previous_status.clone());
        let statement = self
            .transaction
            .prepare_cached(
                "UPDATE carts c SET status = u.status, order_id = u.order_id, cart_created_at = u.created_at, \
                   cart_created_at_raw = u.created_at_raw, state = u.state, next_poll_at = u.next_poll_at, \
                   last_polled_at = u.last_polled_at, status_changed_at = u.status_changed_at, \
                   consecutive_errors = u.errors, consecutive_not_found = u.not_found, last_error = u.last_error, \
                   finished_at = u.finished_at, status_detail = u.status_detail, order_status = u.order_status, \
                   order_total = u.order_total, previous_status = u.previous_status, \
                   lease_owner = NULL, lease_until = NULL \
                 FROM unnest($1::bigint[], $2::text[], $3::text[], $4::timestamp[], $5::text[], $6::text[], \
                             $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::integer[], $11::integer[], \
                             $12::text[], $13::timestamptz[], $14::text[], $15::text[], $16::text[], $17::text[]) \
                   AS u(key, status, order_id, created_at, created_at_raw, state, next_poll_at, last_polled_at, \
                        status_changed_at, errors, not_found, last_error, finished_at, status_detail, order_status, \
                        order_total, previous_status) \
                 WHERE c.cart_key = u.key",
            )
            .await?;
        self.transaction
            .execute(
                &statement,
                &[
                    &keys,
                    &status,
                    &order_id,
                    &created_at,
                    &created_at_raw,
                    &state,
                    &next_poll_at,
                    &last_polled_at,
                    &status_changed_at,
                    &errors,
                    &not_found,
                    &last_error,
                    &finished_at,
                    &status_detail,
                    &order_status,
                    &order_total,
                    &previous_status,
                ],
            )
            .await?;
        Ok(())
    }

    async fn insert_transition(
        &mut self,
        cart: &Cart,
        transition: &Transition,
        detected_at: DateTime<Utc>,
        event_id: Option<&str>,
    ) -> Result<(), StoreError> {
        let statement = self
            .transaction
            .prepare_cached(
                "INSERT INTO cart_transitions (cart_key, cart_id, from_status, to_status, order_id, detected_at, event_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .await?;
        self.transaction
            .execute(
                &statement,
                &[&cart.key, &cart.cart_id, &transition.from, &transition.to, &cart.order_id, &detected_at, &event_id],
            )
            .await?;
        Ok(())
    }

    async fn insert_event(&mut self, event: &NewEvent) -> Result<(), StoreError> {
        insert_event(self.transaction, event).await.map(|_| ())
    }
}
