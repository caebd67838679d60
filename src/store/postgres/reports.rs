//! Reports, upstream health, the sweep log and item changes on PostgreSQL.

use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use super::PgStore;
use super::carts::{CART_COLUMNS, read_cart};
use super::outbox::insert_event;
use crate::events::NewEvent;
use crate::store::{
    CartDetail, ItemChange, ItemRecord, Member, PlanHistory, SinkSummary, StoreError, StoredTransition, Summary,
    SweepRecord, UpstreamRecord,
};
use crate::time::{format_ts, parse_ts};
use crate::upstream::{Mode, Snapshot};

fn count(row: &Row, index: usize) -> u64 {
    row.get::<_, i64>(index).max(0) as u64
}

fn read_upstream(row: &Row) -> UpstreamRecord {
    let counter = |index: usize| u32::try_from(row.get::<_, i32>(index)).unwrap_or(0);
    UpstreamRecord {
        provider: row.get(0),
        snapshot: Snapshot {
            mode: Mode::parse(row.get(1)).unwrap_or(Mode::Healthy),
            since: row.get(2),
            next_probe_at: row.get(3),
            step: counter(4),
            consecutive_failures: counter(5),
            throttled_until: row.get(6),
            batch_size: row.get::<_, i32>(7).clamp(1, 10) as usize,
        },
        last_error: row.get(8),
        updated_at: format_ts(row.get(9)),
        last_success_at: row.get(10),
        last_error_at: row.get(11),
    }
}

fn read_sweep(row: &Row) -> SweepRecord {
    SweepRecord {
        started_at: format_ts(row.get(0)),
        finished_at: row.get::<_, Option<DateTime<Utc>>>(1).map(format_ts),
        carts_polled: count(row, 2),
        requests: count(row, 3),
        failures: count(row, 4),
        transitions: count(row, 5),
        events: count(row, 6),
        stopped_early: row.get(7),
        provider: row.get::<_, Option<String>>(8).unwrap_or_default(),
        write_failures: count(row, 9),
    }
}

impl PgStore {
    /// One cart and its transitions.
    pub(super) async fn cart_detail(&self, cart_id: String) -> Result<Option<CartDetail>, StoreError> {
        let client = self.client().await?;
        let Some(row) =
            client.query_opt(&format!("SELECT {CART_COLUMNS} FROM carts WHERE cart_id = $1"), &[&cart_id]).await?
        else {
            return Ok(None);
        };
        let cart = read_cart(&row);
        let rows = client
            .query(
                "SELECT from_status, to_status, order_id, detected_at, event_id FROM cart_transitions \
                 WHERE cart_key = $1 ORDER BY transition_id",
                &[&cart.key],
            )
            .await?;
        let transitions = rows
            .iter()
            .map(|row| StoredTransition {
                from_status: row.get(0),
                to_status: row.get(1),
                order_id: row.get(2),
                detected_at: format_ts(row.get(3)),
                event_id: row.get(4),
            })
            .collect();
        Ok(Some(CartDetail { cart, transitions }))
    }

    /// Hands `visit` each cart of `provider` tracked now or since `since`, with its
    /// transitions: one stream of the carts joined to their transitions, in cart order.
    pub(super) async fn plan_history(
        &self,
        provider: String,
        since: DateTime<Utc>,
        mut visit: Box<dyn FnMut(PlanHistory) + Send>,
    ) -> Result<(), StoreError> {
        use futures_util::TryStreamExt;
        let columns: Vec<String> = CART_COLUMNS.split(',').map(|column| format!("c.{}", column.trim())).collect();
        let query = format!(
            "SELECT {}, t.to_status, t.detected_at FROM carts c \
             LEFT JOIN cart_transitions t ON t.cart_key = c.cart_key \
             WHERE c.provider = $1 AND (c.state = 'tracking' OR c.tracked_since >= $2) \
             ORDER BY c.cart_key, t.transition_id",
            columns.join(", ")
        );
        let client = self.client().await?;
        let parameters: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&provider, &since];
        let rows = client.query_raw(&query, parameters).await?;
        futures_util::pin_mut!(rows);
        let seen_at = columns.len();
        let mut current: Option<PlanHistory> = None;
        while let Some(row) = rows.try_next().await? {
            let key: i64 = row.get(0);
            if let Some(finished) = current.take_if(|history| history.cart.key != key) {
                visit(finished);
            }
            let history = current.get_or_insert_with(|| PlanHistory { cart: read_cart(&row), seen: Vec::new() });
            if let (Some(status), Some(at)) =
                (row.get::<_, Option<String>>(seen_at), row.get::<_, Option<DateTime<Utc>>>(seen_at + 1))
            {
                history.seen.push((status, at));
            }
        }
        if let Some(history) = current {
            visit(history);
        }
        Ok(())
    }

    /// The ids of the events written in `[since, until)`, of `event_type` if given.
    pub(super) async fn event_ids_between(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        event_type: Option<String>,
    ) -> Result<Vec<String>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT event_id FROM events WHERE created_at >= $1 AND created_at < $2 \
                 AND ($3::text IS NULL OR event_type = $3) ORDER BY seq",
                &[&since, &until, &event_type],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Requests sent to `provider`'s partner by sweeps started since `since`.
    pub(super) async fn requests_since(&self, provider: String, since: DateTime<Utc>) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT coalesce(sum(requests), 0)::bigint FROM sweeps WHERE coalesce(provider, 'imaterialise') = $1 AND started_at >= $2",
                &[&provider, &since],
            )
            .await?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    /// The counts behind `cartwatch status`.
    pub(super) async fn summary(&self, now: DateTime<Utc>) -> Result<Summary, StoreError> {
        let upstreams = self.upstream_records().await?;
        let members = self.members().await?;
        let client = self.client().await?;
        let carts = client
            .query("SELECT state, status, count(*) FROM carts GROUP BY state, status ORDER BY state, status", &[])
            .await?
            .iter()
            .map(|row| (row.get(0), row.get(1), count(row, 2)))
            .collect();
        let due_now = count(
            &client
                .query_one("SELECT count(*) FROM carts WHERE state = 'tracking' AND next_poll_at <= $1", &[&now])
                .await?,
            0,
        );
        let sinks = client
            .query(
                "SELECT s.sink,
                   (SELECT count(*) FROM deliveries d WHERE d.sink = s.sink AND d.state = 'pending'),
                   (SELECT count(*) FROM deliveries d WHERE d.sink = s.sink AND d.state = 'delivered'),
                   (SELECT count(*) FROM deliveries d WHERE d.sink = s.sink AND d.state = 'dead'),
                   (SELECT count(*) FROM deliveries d WHERE d.sink = s.sink AND d.state = 'pending'
                      AND d.ordering_key IS NOT NULL AND EXISTS (SELECT 1 FROM deliveries b
                        WHERE b.sink = d.sink AND b.ordering_key = d.ordering_key AND b.state = 'dead'
                          AND b.event_seq < d.event_seq)),
                   CASE WHEN s.disabled_at IS NOT NULL THEN coalesce(s.disabled_reason, 'disabled') END,
                   (SELECT min(e.created_at) FROM deliveries d JOIN events e ON e.seq = d.event_seq
                      WHERE d.sink = s.sink AND d.state = 'pending')
                 FROM sinks s WHERE s.active ORDER BY s.sink",
                &[],
            )
            .await?
            .iter()
            .map(|row| SinkSummary {
                sink: row.get(0),
                pending: count(row, 1),
                delivered: count(row, 2),
                dead: count(row, 3),
                held: count(row, 4),
                disabled: row.get(5),
                oldest_pending_age: row
                    .get::<_, Option<DateTime<Utc>>>(6)
                    .and_then(|oldest| (now - oldest).to_std().ok())
                    .unwrap_or_default(),
            })
            .collect();
        let events = count(&client.query_one("SELECT coalesce(max(seq), 0) FROM events", &[]).await?, 0);
        let last_sweep = client
            .query_opt(
                "SELECT started_at, finished_at, carts_polled, requests, failures, transitions, events, stopped_early, \
                 provider, write_failures FROM sweeps ORDER BY sweep_id DESC LIMIT 1",
                &[],
            )
            .await?
            .as_ref()
            .map(read_sweep);
        let invalid = client
            .query(
                "SELECT cart_id, coalesce(last_error, '') FROM carts WHERE state = 'invalid' ORDER BY cart_key LIMIT 20",
                &[],
            )
            .await?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        Ok(Summary { carts, due_now, sinks, events, upstreams, last_sweep, invalid, members })
    }

    /// The daemons sharing the database, most recent first.
    pub(super) async fn members(&self) -> Result<Vec<Member>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT member_id, host, pid, version, started_at, last_seen, carts_claimed FROM members_overview \
                 ORDER BY last_seen DESC",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| Member {
                member_id: row.get(0),
                host: row.get(1),
                pid: u32::try_from(row.get::<_, i32>(2)).unwrap_or(0),
                version: row.get(3),
                started_at: row.get(4),
                last_seen: row.get(5),
                carts_claimed: count(row, 6),
            })
            .collect())
    }

    /// Persists an upstream's health with the events announcing its change, in one
    /// transaction, and gives back the probe this member held.
    pub(super) async fn save_upstream(&self, record: UpstreamRecord, events: Vec<NewEvent>) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        let snapshot = &record.snapshot;
        let updated_at = parse_ts(&record.updated_at).unwrap_or_else(Utc::now);
        let int = |value: u32| i32::try_from(value).unwrap_or(i32::MAX);
        transaction
            .execute(
                "INSERT INTO upstream_state (provider, mode, since, next_probe_at, step, consecutive_failures, \
                   throttled_until, batch_size, last_success_at, last_error_at, last_error, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT (provider) DO UPDATE SET mode = excluded.mode, since = excluded.since, \
                   next_probe_at = excluded.next_probe_at, step = excluded.step, \
                   consecutive_failures = excluded.consecutive_failures, throttled_until = excluded.throttled_until, \
                   batch_size = excluded.batch_size, \
                   last_success_at = greatest(upstream_state.last_success_at, excluded.last_success_at), \
                   last_error_at = greatest(upstream_state.last_error_at, excluded.last_error_at), \
                   last_error = coalesce(excluded.last_error, upstream_state.last_error), \
                   updated_at = excluded.updated_at, \
                   probe_owner = CASE WHEN upstream_state.probe_owner = $13 THEN NULL ELSE upstream_state.probe_owner END, \
                   probe_until = CASE WHEN upstream_state.probe_owner = $13 THEN NULL ELSE upstream_state.probe_until END",
                &[
                    &record.provider,
                    &snapshot.mode.as_str(),
                    &snapshot.since,
                    &snapshot.next_probe_at,
                    &int(snapshot.step),
                    &int(snapshot.consecutive_failures),
                    &snapshot.throttled_until,
                    &(snapshot.batch_size.clamp(1, 10) as i32),
                    &record.last_success_at,
                    &record.last_error_at,
                    &record.last_error.as_deref().map(|error| crate::cart_id::shorten(error, 300)),
                    &updated_at,
                    &self.member,
                ],
            )
            .await?;
        for event in &events {
            insert_event(&transaction, event).await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    /// Records when the upstream last answered and failed, leaving its health as it is.
    pub(super) async fn note_upstream(&self, record: UpstreamRecord) -> Result<(), StoreError> {
        let updated_at = parse_ts(&record.updated_at).unwrap_or_else(Utc::now);
        self.client()
            .await?
            .execute(
                "INSERT INTO upstream_state (provider, mode, batch_size, last_success_at, last_error_at, last_error, \
                   updated_at) VALUES ($1, 'healthy', $2, $3, $4, $5, $6) \
                 ON CONFLICT (provider) DO UPDATE SET \
                   last_success_at = greatest(upstream_state.last_success_at, excluded.last_success_at), \
                   last_error_at = greatest(upstream_state.last_error_at, excluded.last_error_at), \
                   last_error = coalesce(excluded.last_error, upstream_state.last_error), \
                   updated_at = greatest(upstream_state.updated_at, excluded.updated_at)",
                &[
                    &record.provider,
                    &(record.snapshot.batch_size.clamp(1, 10) as i32),
                    &record.last_success_at,
                    &record.last_error_at,
                    &record.last_error.as_deref().map(|error| crate::cart_id::shorten(error, 300)),
                    &updated_at,
                ],
            )
            .await?;
        Ok(())
    }

    /// Every upstream's persisted health.
    pub(super) async fn upstream_records(&self) -> Result<Vec<UpstreamRecord>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT provider, mode, since, next_probe_at, step, consecutive_failures, throttled_until, batch_size, \
                 last_error, updated_at, last_success_at, last_error_at FROM upstream_state ORDER BY provider",
            )
            .await?;
        let rows = client.query(&statement, &[]).await?;
        Ok(rows.iter().map(read_upstream).collect())
    }

    /// Records a finished sweep and keeps only the latest thousand.
    pub(super) async fn record_sweep(&self, record: SweepRecord) -> Result<(), StoreError> {
        let client = self.client().await?;
        let number = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        let started_at = parse_ts(&record.started_at).unwrap_or_else(Utc::now);
        let finished_at = record.finished_at.as_deref().and_then(parse_ts);
        client
            .execute(
                "INSERT INTO sweeps (started_at, finished_at, carts_polled, requests, failures, transitions, events, \
                 stopped_early, provider, write_failures, member_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                &[
                    &started_at,
                    &finished_at,
                    &number(record.carts_polled),
                    &number(record.requests),
                    &number(record.failures),
                    &number(record.transitions),
                    &number(record.events),
                    &record.stopped_early,
                    &record.provider,
                    &number(record.write_failures),
                    &self.member,
                ],
            )
            .await?;
        client.execute("DELETE FROM sweeps WHERE sweep_id <= (SELECT max(sweep_id) - 1000 FROM sweeps)", &[]).await?;
        Ok(())
    }

    /// Records an item change: history rows, the event, an early poll.
    pub(super) async fn record_item_change(
        &self,
        cart_id: String,
        action: String,
        items: Vec<ItemRecord>,
        event: Option<NewEvent>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        if let Some(event) = &event {
            insert_event(&transaction, event).await?;
        }
        let event_id = event.as_ref().map(|event| event.event_id.clone());
        for item in &items {
            transaction
                .execute(
                    "INSERT INTO item_changes (cart_id, cart_item_id, action, quantity, my_sales_unit_price, \
                     imat_unit_price, currency, valid_until, changed_at, event_id) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    &[
                        &cart_id,
                        &item.cart_item_id,
                        &action,
                        &item.quantity,
                        &item.my_sales_unit_price,
                        &item.imat_unit_price,
                        &item.currency,
                        &item.valid_until,
                        &now,
                        &event_id,
                    ],
                )
                .await?;
        }
        transaction
            .execute("UPDATE carts SET next_poll_at = $2 WHERE cart_id = $1 AND state = 'tracking'", &[&cart_id, &now])
            .await?;
        transaction.commit().await?;
        Ok(())
    }

    /// The item changes made to a cart, oldest first.
    pub(super) async fn item_history(&self, cart_id: String) -> Result<Vec<ItemChange>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT cart_id, cart_item_id, action, quantity, my_sales_unit_price, imat_unit_price, currency, \
                 valid_until, changed_at, event_id FROM item_changes WHERE cart_id = $1 ORDER BY change_id",
                &[&cart_id],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| ItemChange {
                cart_id: row.get(0),
                cart_item_id: row.get(1),
                action: row.get(2),
                quantity: row.get(3),
                my_sales_unit_price: row.get(4),
                imat_unit_price: row.get(5),
                currency: row.get(6),
                valid_until: row.get(7),
                changed_at: format_ts(row.get(8)),
                event_id: row.get(9),
            })
            .collect())
    }

    /// Notes what the partner said about a tracked cart, and makes it due at `now`.
    pub(super) async fn note_cart(&self, cart_id: String, note: String, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "UPDATE carts SET last_error = $2, next_poll_at = $3 WHERE cart_id = $1 AND state = 'tracking'",
                &[&cart_id, &note, &now],
            )
            .await?;
        Ok(())
    }

    /// Makes a tracked cart due at `now`.
    pub(super) async fn poll_soon(&self, cart_id: String, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute("UPDATE carts SET next_poll_at = $2 WHERE cart_id = $1 AND state = 'tracking'", &[&cart_id, &now])
            .await?;
        Ok(())
    }
}
