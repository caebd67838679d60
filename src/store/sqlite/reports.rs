//! What people and monitoring ask of the database: summaries, one cart in detail, the
//! upstream's persisted health and the sweep log.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use super::outbox::insert_event;
use super::rows::{CART_COLUMNS, lenient_text, read_cart};
use crate::events::NewEvent;
use crate::store::{
    CartDetail, PlanHistory, SinkSummary, StoreError, StoredTransition, Summary, SweepRecord, UpstreamRecord,
};
use crate::time::{format_ts, parse_ts};
use crate::upstream::{Mode, Snapshot};

impl SqliteStore {
    /// One cart and its transitions.
    pub async fn cart_detail(&self, cart_id: String) -> Result<Option<CartDetail>, StoreError> {
        self.read(move |connection| {
            let Some(cart) = connection
                .query_row(&format!("SELECT {CART_COLUMNS} FROM carts WHERE cart_id = ?1"), [&cart_id], read_cart)
                .optional()?
            else {
                return Ok(None);
            };
            let mut statement = connection.prepare_cached(
                "SELECT from_status, to_status, order_id, detected_at, event_id FROM cart_transitions \
                 WHERE cart_key = ?1 ORDER BY transition_id",
            )?;
            let transitions = statement
                .query_map([cart.key], |row| {
                    Ok(StoredTransition {
                        from_status: lenient_text(row, 0)?,
                        to_status: lenient_text(row, 1)?.unwrap_or_default(),
                        order_id: lenient_text(row, 2)?,
                        detected_at: lenient_text(row, 3)?.unwrap_or_default(),
                        event_id: lenient_text(row, 4)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(Some(CartDetail { cart, transitions }))
        })
        .await
    }

    /// Hands `visit` each cart of `provider` tracked now or since `since`, with its
    /// transitions: one query of the carts joined to their transitions, in cart order.
    pub async fn plan_history(
        &self,
        provider: String,
        since: DateTime<Utc>,
        mut visit: Box<dyn FnMut(PlanHistory) + Send>,
    ) -> Result<(), StoreError> {
        self.read(move |connection| {
            let columns: Vec<String> = CART_COLUMNS.split(',').map(|column| format!("c.{}", column.trim())).collect();
            let mut statement = connection.prepare(&format!(
                "SELECT {}, t.to_status, t.detected_at FROM carts c \
                 LEFT JOIN cart_transitions t ON t.cart_key = c.cart_key \
                 WHERE c.provider = ?1 AND (c.state = 'tracking' OR c.tracked_since >= ?2) \
                 ORDER BY c.cart_key, t.transition_id",
                columns.join(", ")
            ))?;
            let seen_at = columns.len();
            let mut rows = statement.query(params![provider, format_ts(since)])?;
            let mut current: Option<PlanHistory> = None;
            while let Some(row) = rows.next()? {
                let key: i64 = row.get(0)?;
                if let Some(finished) = current.take_if(|history| history.cart.key != key) {
                    visit(finished);
                }
                let history = match current.as_mut() {
                    Some(history) => history,
                    None => current.insert(PlanHistory { cart: read_cart(row)?, seen: Vec::new() }),
                };
                let at = lenient_text(row, seen_at + 1)?.as_deref().and_then(parse_ts);
                if let (Some(status), Some(at)) = (lenient_text(row, seen_at)?, at) {
                    history.seen.push((status, at));
                }
            }
            if let Some(history) = current {
                visit(history);
            }
            Ok(())
        })
        .await
    }

    /// The ids of the events written in `[since, until)`, of `event_type` if given.
    pub async fn event_ids_between(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        event_type: Option<String>,
    ) -> Result<Vec<String>, StoreError> {
        self.read(move |connection| {
            let mut statement = connection.prepare(
                "SELECT event_id FROM events WHERE created_at >= ?1 AND created_at < ?2 \
                 AND (?3 IS NULL OR event_type = ?3) ORDER BY seq",
            )?;
            let ids = statement
                .query_map(params![format_ts(since), format_ts(until), event_type], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            Ok(ids)
        })
        .await
    }

    /// Requests sent to `provider`'s partner by sweeps started since `since`.
    pub async fn requests_since(&self, provider: String, since: DateTime<Utc>) -> Result<u64, StoreError> {
        self.read(move |connection| {
            Ok(connection.query_row(
                "SELECT coalesce(sum(requests), 0) FROM sweeps WHERE coalesce(provider, 'imaterialise') = ?1 AND started_at >= ?2",
                params![provider, format_ts(since)],
                |row| row.get::<_, i64>(0),
            )? as u64)
        })
        .await
    }

    /// The counts behind `cartwatch status`.
    pub async fn summary(&self, now: DateTime<Utc>) -> Result<Summary, StoreError> {
        let upstreams = self.upstream_records().await?;
        self.read(move |connection| {
            let mut summary = Summary { upstreams, ..Summary::default() };
            let mut statement =
                connection.prepare("SELECT state, status, count(*) FROM carts GROUP BY state, status ORDER BY state, status")?;
            summary.carts = statement
                .query_map([], |row| Ok((lenient_text(row, 0)?.unwrap_or_default(), lenient_text(row, 1)?, row.get(2)?)))?
                .collect::<Result<_, _>>()?;
            summary.due_now = connection.query_row(
                "SELECT count(*) FROM carts WHERE state = 'tracking' AND next_poll_at <= ?1",
                [format_ts(now)],
                |row| row.get(0),
            )?;
            let mut statement = connection.prepare(
                "SELECT s.sink, \
                   (SELECT count(*) FROM deliveries d WHERE d.sink = s.sink AND d.state = 'pending'), \
                   (SELECT count(*) FROM deliveries d WHERE d.sink = s.sink AND d.state = 'delivered'), \
                   (SELECT count(*) FROM deliveries d WHERE d.sink = s.sink AND d.state = 'dead'), \
                   (SELECT count(*) FROM deliveries d WHERE d.sink = s.sink AND d.state = 'pending' \
                      AND d.ordering_key IS NOT NULL AND EXISTS (SELECT 1 FROM deliveries b \
                        WHERE b.sink = d.sink AND b.ordering_key = d.ordering_key AND b.state = 'dead' \
                          AND b.event_seq < d.event_seq)), \
                   CASE WHEN s.disabled_at IS NOT NULL THEN coalesce(s.disabled_reason, 'disabled') END, \
                   (SELECT min(e.created_at) FROM deliveries d JOIN events e ON e.seq = d.event_seq \
                      WHERE d.sink = s.sink AND d.state = 'pending') \
                 FROM sinks s WHERE s.active = 1 ORDER BY s.sink",
            )?;
            summary.sinks = statement
                .query_map([], |row| {
                    Ok(SinkSummary {
                        sink: lenient_text(row, 0)?.unwrap_or_default(),
                        pending: row.get(1)?,
                        delivered: row.get(2)?,
                        dead: row.get(3)?,
                        held: row.get(4)?,
                        disabled: lenient_text(row, 5)?,
                        oldest_pending_age: lenient_text(row, 6)?
                            .as_deref()
                            .and_then(parse_ts)
                            .and_then(|oldest| (now - oldest).to_std().ok())
                            .unwrap_or_default(),
                    })
                })?
                .collect::<Result<_, _>>()?;
            summary.events = connection.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |row| row.get(0))?;
            summary.last_sweep = connection
                .query_row(
                    "SELECT started_at, finished_at, carts_polled, requests, failures, transitions, events, stopped_early, \
                     coalesce(provider, 'imaterialise'), write_failures FROM sweeps ORDER BY sweep_id DESC LIMIT 1",
                    [],
                    read_sweep,
                )
                .optional()?;
            let mut statement = connection.prepare(
                "SELECT cart_id, coalesce(last_error, '') FROM carts WHERE state = 'invalid' ORDER BY cart_key LIMIT 20",
            )?;
            summary.invalid = statement
                .query_map([], |row| Ok((lenient_text(row, 0)?.unwrap_or_default(), lenient_text(row, 1)?.unwrap_or_default())))?
                .collect::<Result<_, _>>()?;
            Ok(summary)
        })
        .await
    }

    /// Persists an upstream's health, with the events that announce a change of it, in one
    /// transaction: an `upstream.*` event exists only if the state it announces was saved.
    pub async fn save_upstream(&self, record: UpstreamRecord, events: Vec<NewEvent>) -> Result<(), StoreError> {
        self.write(move |connection| {
            let transaction = connection.transaction()?;
            let snapshot = &record.snapshot;
            transaction.execute(
                "INSERT INTO upstream_state (provider, mode, since, next_probe_at, step, consecutive_failures, throttled_until, \
                   batch_size, last_success_at, last_error_at, last_error, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
                 ON CONFLICT (provider) DO UPDATE SET mode = excluded.mode, since = excluded.since, \
                   next_probe_at = excluded.next_probe_at, step = excluded.step, \
                   consecutive_failures = excluded.consecutive_failures, throttled_until = excluded.throttled_until, \
                   batch_size = excluded.batch_size, last_success_at = excluded.last_success_at, \
                   last_error_at = excluded.last_error_at, last_error = coalesce(excluded.last_error, last_error), \
                   updated_at = excluded.updated_at",
                params![
                    record.provider,
                    snapshot.mode.as_str(),
                    snapshot.since.map(format_ts),
                    snapshot.next_probe_at.map(format_ts),
                    snapshot.step,
                    snapshot.consecutive_failures,
                    snapshot.throttled_until.map(format_ts),
                    snapshot.batch_size.clamp(1, 10) as i64,
                    record.last_success_at.map(format_ts),
                    record.last_error_at.map(format_ts),
                    record.last_error.as_deref().map(|error| crate::cart_id::shorten(error, 300)),
                    record.updated_at
                ],
            )?;
            for event in &events {
                insert_event(&transaction, event)?;
            }
            transaction.commit()?;
            Ok(())
        })
        .await
    }

    /// Every upstream's persisted health.
    pub async fn upstream_records(&self) -> Result<Vec<UpstreamRecord>, StoreError> {
        self.read(|connection| {
            let mut statement = connection.prepare(
                "SELECT provider, mode, since, next_probe_at, step, consecutive_failures, throttled_until, batch_size, last_error, \
                 updated_at, last_success_at, last_error_at FROM upstream_state ORDER BY provider",
            )?;
            let rows = statement.query_map([], |row| {
                let time = |index| -> rusqlite::Result<Option<DateTime<Utc>>> {
                    Ok(lenient_text(row, index)?.as_deref().and_then(parse_ts))
                };
                Ok(UpstreamRecord {
                    provider: lenient_text(row, 0)?.unwrap_or_default(),
                    snapshot: Snapshot {
                        mode: lenient_text(row, 1)?.as_deref().and_then(Mode::parse).unwrap_or(Mode::Healthy),
                        since: time(2)?,
                        next_probe_at: time(3)?,
                        step: row.get::<_, Option<u32>>(4).ok().flatten().unwrap_or(0),
                        consecutive_failures: row.get::<_, Option<u32>>(5).ok().flatten().unwrap_or(0),
                        throttled_until: time(6)?,
                        batch_size: row.get::<_, Option<i64>>(7).ok().flatten().unwrap_or(10).clamp(1, 10) as usize,
                    },
                    last_success_at: time(10)?,
                    last_error_at: time(11)?,
                    last_error: lenient_text(row, 8)?,
                    updated_at: lenient_text(row, 9)?.unwrap_or_default(),
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Records a finished sweep and keeps only the latest thousand.
    pub async fn record_sweep(&self, record: SweepRecord) -> Result<(), StoreError> {
        self.write(move |connection| {
            connection.execute(
                "INSERT INTO sweeps (started_at, finished_at, carts_polled, requests, failures, transitions, events, stopped_early, \
                 provider, write_failures) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    record.started_at,
                    record.finished_at,
                    record.carts_polled,
                    record.requests,
                    record.failures,
                    record.transitions,
                    record.events,
                    record.stopped_early,
                    record.provider,
                    record.write_failures
                ],
            )?;
            connection.execute("DELETE FROM sweeps WHERE sweep_id <= (SELECT max(sweep_id) - 1000 FROM sweeps)", [])?;
            Ok(())
        })
        .await
    }
}

fn read_sweep(row: &rusqlite::Row<'_>) -> rusqlite::Result<SweepRecord> {
    Ok(SweepRecord {
        started_at: lenient_text(row, 0)?.unwrap_or_default(),
        finished_at: lenient_text(row, 1)?,
        carts_polled: row.get(2)?,
        requests: row.get(3)?,
        failures: row.get(4)?,
        transitions: row.get(5)?,
        events: row.get(6)?,
        stopped_early: lenient_text(row, 7)?,
        provider: lenient_text(row, 8)?.unwrap_or_default(),
        write_failures: row.get(9)?,
    })
}
