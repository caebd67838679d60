//! The outbox on PostgreSQL: events with their deliveries, written in the transaction that
//! detected them and announced with `NOTIFY`; deliveries claimed for a lease, so one event is
//! in flight to one sink from at most one member, and never before an earlier event of its
//! cart on that sink is done.

use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use super::PgStore;
use crate::events::NewEvent;
use crate::outbox::{DeadLetter, DeliveryResult, DeliveryState, PendingDelivery, SinkSpec, StoredEvent};
use crate::store::StoreError;
use crate::time::{format_ts, parse_ts};

/// The channel new events are announced on.
pub(super) const EVENTS_CHANNEL: &str = "cartwatch_events";

/// Writes an event and one pending delivery per configured sink that wants its type, except
/// the sink it is about (as [`crate::store::sqlite`] does), and announces it to every member
/// when the transaction commits.
pub(super) async fn insert_event(
    transaction: &deadpool_postgres::Transaction<'_>,
    event: &NewEvent,
) -> Result<i64, StoreError> {
    let created_at = parse_ts(&event.created_at).unwrap_or_else(Utc::now);
    let cart_sequence: Option<i32> = match &event.cart_id {
        Some(cart_id) => {
            let statement = transaction
                .prepare_cached(
                    "UPDATE carts SET events_written = events_written + 1 WHERE cart_id = $1 RETURNING events_written",
                )
                .await?;
            let next = transaction.query_opt(&statement, &[cart_id]).await?;
            match next {
                Some(row) => Some(row.get(0)),
                None => {
                    transaction
                        .execute(
                            "INSERT INTO carts (cart_id, state, registered_at, tracked_since, finished_at, events_written) \
                             VALUES ($1, 'untracked', $2, $2, $2, 1)",
                            &[cart_id, &created_at],
                        )
                        .await?;
                    Some(1)
                }
            }
        }
        None => None,
    };
    let statement = transaction
        .prepare_cached(
            "INSERT INTO events (event_id, event_type, cart_id, cart_sequence, created_at, payload) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq",
        )
        .await?;
    let seq: i64 = transaction
        .query_one(
            &statement,
            &[
                &event.event_id,
                &event.event_type.as_str(),
                &event.cart_id,
                &cart_sequence,
                &created_at,
                &event.payload(cart_sequence.map(i64::from)),
            ],
        )
        .await?
        .get(0);
    let statement = transaction
        .prepare_cached(
            "INSERT INTO deliveries (sink, event_seq, ordering_key, next_attempt_at) \
             SELECT sink, $1, CASE WHEN kind = 'log' THEN NULL ELSE $2 END, $3 FROM sinks \
             WHERE active AND (event_types IS NULL OR strpos(event_types, $4) > 0) AND sink IS DISTINCT FROM $5",
        )
        .await?;
    transaction
        .execute(
            &statement,
            &[&seq, &event.cart_id, &created_at, &format!(",{},", event.event_type.as_str()), &event.not_for_sink],
        )
        .await?;
    let statement = transaction.prepare_cached("SELECT pg_notify($1, '')").await?;
    transaction.execute(&statement, &[&EVENTS_CHANNEL]).await?;
    Ok(seq)
}

const EVENT_COLUMNS: &str = "e.seq, e.event_id, e.event_type, e.cart_id, e.created_at, e.payload";

fn read_event(row: &Row) -> StoredEvent {
    StoredEvent {
        seq: row.get(0),
        event_id: row.get(1),
        event_type: row.get(2),
        cart_id: row.get(3),
        created_at: format_ts(row.get(4)),
        payload: row.get(5),
    }
}

const DELIVERY_COLUMNS: &str =
    "d.sink, d.state, d.attempts, d.next_attempt_at, d.last_status, d.last_error, d.delivered_at, d.dead_at";

fn read_delivery(row: &Row, offset: usize) -> DeliveryState {
    let time = |index: usize| row.get::<_, Option<DateTime<Utc>>>(offset + index).map(format_ts);
    DeliveryState {
        sink: row.get(offset),
        state: row.get(offset + 1),
        attempts: u32::try_from(row.get::<_, i32>(offset + 2)).unwrap_or(0),
        next_attempt_at: time(3),
        last_status: row.get::<_, Option<i32>>(offset + 4).and_then(|status| u16::try_from(status).ok()),
        last_error: row.get(offset + 5),
        delivered_at: time(6),
        dead_at: time(7),
    }
}

/// Deliveries a receiver refused with `410 Gone` while their sink is enabled are attempted at
/// once, their attempts starting afresh.
async fn restart_refused_deliveries(
    transaction: &deadpool_postgres::Transaction<'_>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    transaction
        .execute(
            "UPDATE deliveries SET attempts = 0, next_attempt_at = $1, last_status = NULL, last_error = NULL \
             WHERE state = 'pending' AND last_status = 410 \
               AND sink IN (SELECT sink FROM sinks WHERE disabled_at IS NULL AND active)",
            &[&now],
        )
        .await?;
    Ok(())
}

impl PgStore {
    /// Every sink's delivery state for each of the events `seqs`.
    pub(super) async fn delivery_states(&self, seqs: Vec<i64>) -> Result<Vec<(i64, DeliveryState)>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT d.event_seq, {DELIVERY_COLUMNS} FROM deliveries d WHERE d.event_seq = ANY($1) \
                     ORDER BY d.event_seq, d.sink"
                ),
                &[&seqs],
            )
            .await?;
        Ok(rows.iter().map(|row| (row.get(0), read_delivery(row, 1))).collect())
    }

    /// Dead letters, newest first, optionally of one sink.
    pub(super) async fn dead_letters(&self, sink: Option<String>, limit: u32) -> Result<Vec<DeadLetter>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT {EVENT_COLUMNS}, {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.seq = d.event_seq \
                     WHERE d.state = 'dead' AND ($1::text IS NULL OR d.sink = $1) \
                     ORDER BY d.dead_at DESC, e.seq DESC LIMIT $2"
                ),
                &[&sink, &i64::from(limit)],
            )
            .await?;
        Ok(rows.iter().map(|row| DeadLetter { event: read_event(row), delivery: read_delivery(row, 6) }).collect())
    }

    /// Queues events for delivery again, attempts starting afresh.
    pub(super) async fn redeliver(
        &self,
        event_ids: Vec<String>,
        dead_only: bool,
        sink: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<(usize, Vec<String>), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        let requeue = "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = $1, \
                       delivered_at = NULL, dead_at = NULL, lease_owner = NULL, lease_until = NULL";
        let mut queued = 0;
        let mut unknown = Vec::new();
        if dead_only {
            queued += transaction
                .execute(&format!("{requeue} WHERE state = 'dead' AND ($2::text IS NULL OR sink = $2)"), &[&now, &sink])
                .await?;
        }
        for event_id in event_ids {
            let found =
                transaction.query_opt("SELECT seq, cart_id FROM events WHERE event_id = $1", &[&event_id]).await?;
            let Some(found) = found else {
                unknown.push(event_id);
                continue;
            };
            let (seq, cart_id): (i64, Option<String>) = (found.get(0), found.get(1));
            if let Some(sink) = &sink {
                transaction
                    .execute(
                        "INSERT INTO deliveries (sink, event_seq, ordering_key, next_attempt_at) \
                         SELECT $1, $2, CASE WHEN kind = 'log' THEN NULL ELSE $3 END, $4 FROM sinks WHERE sink = $1 \
                         ON CONFLICT (sink, event_seq) DO NOTHING",
                        &[sink, &seq, &cart_id, &now],
                    )
                    .await?;
            }
            queued += transaction
                .execute(
                    &format!("{requeue} WHERE event_seq = $3 AND ($2::text IS NULL OR sink = $2)"),
                    &[&now, &sink, &seq],
                )
                .await?;
        }
        transaction.execute("SELECT pg_notify($1, '')", &[&EVENTS_CHANNEL]).await?;
        transaction.commit().await?;
        Ok((queued as usize, unknown))
    }

    /// The names of the sinks, active or not.
    pub(super) async fn sink_names(&self) -> Result<Vec<String>, StoreError> {
        let rows = self.client().await?.query("SELECT sink FROM sinks ORDER BY sink", &[]).await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Writes events no poll produced, with their deliveries, in one transaction.
    pub(super) async fn write_events(&self, events: Vec<NewEvent>) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        for event in &events {
            insert_event(&transaction, event).await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    /// Makes the sinks match one member's config: listed sinks active. (With several
    /// members, give them the same sinks.)
    pub(super) async fn sync_sinks(&self, specs: Vec<SinkSpec>, now: DateTime<Utc>) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        transaction.execute("UPDATE sinks SET active = false", &[]).await?;
        for spec in specs {
            let event_types = spec.event_types.map(|types| format!(",{},", types.join(",")));
            transaction
                .execute(
                    "INSERT INTO sinks (sink, kind, target, event_types, active, created_at) \
                     VALUES ($1, $2, $3, $4, true, $5) \
                     ON CONFLICT (sink) DO UPDATE SET kind = excluded.kind, event_types = excluded.event_types, \
                       active = true, \
                       disabled_at = CASE WHEN sinks.target = excluded.target THEN sinks.disabled_at END, \
                       disabled_reason = CASE WHEN sinks.target = excluded.target THEN sinks.disabled_reason END, \
                       target = excluded.target",
                    &[&spec.name, &spec.kind, &spec.target, &event_types, &now],
                )
                .await?;
        }
        restart_refused_deliveries(&transaction, now).await?;
        transaction.commit().await?;
        Ok(())
    }

    /// Enables a sink its receiver disabled; `None` when there is no such sink.
    pub(super) async fn enable_sink(&self, sink: String, now: DateTime<Utc>) -> Result<Option<bool>, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        let disabled: Option<bool> = transaction
            .query_opt("SELECT disabled_at IS NOT NULL FROM sinks WHERE sink = $1", &[&sink])
            .await?
            .map(|row| row.get(0));
        transaction
            .execute("UPDATE sinks SET disabled_at = NULL, disabled_reason = NULL WHERE sink = $1", &[&sink])
            .await?;
        restart_refused_deliveries(&transaction, now).await?;
        transaction.execute("SELECT pg_notify($1, '')", &[&EVENTS_CHANNEL]).await?;
        transaction.commit().await?;
        Ok(disabled)
    }

    /// Gives dead letters up, so the later events of their carts go out.
    pub(super) async fn skip_dead(
        &self,
        event_ids: Vec<String>,
        dead_only: bool,
        sink: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<(usize, Vec<String>), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        let note = format!(" (skipped by an operator at {})", format_ts(now));
        let skip = "UPDATE deliveries SET state = 'skipped', last_error = coalesce(last_error, '') || $1 \
                    WHERE state = 'dead' AND ($2::text IS NULL OR sink = $2)";
        let mut skipped = 0;
        if dead_only {
            skipped += transaction.execute(skip, &[&note, &sink]).await?;
        }
        let mut unknown = Vec::new();
        for event_id in event_ids {
            let seq = transaction.query_opt("SELECT seq FROM events WHERE event_id = $1", &[&event_id]).await?;
            match seq {
                Some(row) => {
                    let seq: i64 = row.get(0);
                    skipped +=
                        transaction.execute(&format!("{skip} AND event_seq = $3"), &[&note, &sink, &seq]).await?;
                }
                None => unknown.push(event_id),
            }
        }
        transaction.execute("SELECT pg_notify($1, '')", &[&EVENTS_CHANNEL]).await?;
        transaction.commit().await?;
        Ok((skipped as usize, unknown))
    }

    /// Disables a sink, as when its receiver answers `410 Gone`, writing `announcement` if
    /// this call disabled it (another member may have been first).
    pub(super) async fn disable_sink(
        &self,
        sink: String,
        reason: String,
        announcement: Option<NewEvent>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        let disabled = transaction
            .execute(
                "UPDATE sinks SET disabled_at = $2, disabled_reason = $3 WHERE sink = $1 AND disabled_at IS NULL",
                &[&sink, &now, &reason],
            )
            .await?;
        if let Some(event) = announcement.filter(|_| disabled > 0) {
            insert_event(&transaction, &event).await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    /// Whether a sink is disabled, and why.
    pub(super) async fn sink_disabled(&self, sink: String) -> Result<Option<String>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT coalesce(disabled_reason, '') FROM sinks WHERE sink = $1 AND disabled_at IS NOT NULL",
                &[&sink],
            )
            .await?;
        Ok(row.map(|row| row.get(0)))
    }

    /// Claims up to `limit` of `sink`'s due deliveries for this member's lease, oldest event
    /// first, never one whose cart has an earlier delivery pending or dead on this sink
    /// (held by any member). A `sequential` sink (the log) gets the oldest ones up to the
    /// first not due yet.
    pub(super) async fn pending_deliveries(
        &self,
        sink: String,
        now: DateTime<Utc>,
        limit: u32,
        sequential: bool,
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        let eligible = if sequential {
            "d.next_attempt_at <= $2 AND NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.sink = $1 \
               AND p.state = 'pending' AND p.event_seq < d.event_seq AND p.next_attempt_at > $2)"
        } else {
            "d.next_attempt_at <= $2 AND NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.sink = $1 \
               AND p.state IN ('pending', 'dead') AND p.ordering_key = d.ordering_key AND p.event_seq < d.event_seq)"
        };
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "WITH next AS (
                         SELECT d.sink, d.event_seq FROM deliveries d
                         WHERE d.sink = $1 AND d.state = 'pending' AND (d.lease_until IS NULL OR d.lease_until < now())
                           AND {eligible}
                         ORDER BY d.event_seq LIMIT $3
                         FOR UPDATE SKIP LOCKED),
                     claimed AS (
                         UPDATE deliveries d SET lease_owner = $4, lease_until = now() + make_interval(secs => $5)
                         FROM next WHERE d.sink = next.sink AND d.event_seq = next.event_seq
                         RETURNING d.event_seq, d.attempts)
                     SELECT {EVENT_COLUMNS}, claimed.attempts FROM claimed JOIN events e ON e.seq = claimed.event_seq
                     ORDER BY e.seq"
            ))
            .await?;
        let rows =
            client.query(&statement, &[&sink, &now, &i64::from(limit), &self.member, &self.lease_seconds()]).await?;
        Ok(rows
            .iter()
            .map(|row| PendingDelivery {
                event: read_event(row),
                attempts: u32::try_from(row.get::<_, i32>(6)).unwrap_or(0),
            })
            .collect())
    }

    /// Whether `sink` has any delivery pending.
    pub(super) async fn has_pending(&self, sink: String) -> Result<bool, StoreError> {
        let row = self
            .client()
            .await?
            .query_one("SELECT EXISTS (SELECT 1 FROM deliveries WHERE sink = $1 AND state = 'pending')", &[&sink])
            .await?;
        Ok(row.get(0))
    }

    /// When the next pending delivery of `sink` not due at `now` becomes due.
    pub(super) async fn next_delivery_due(
        &self,
        sink: String,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT min(next_attempt_at) FROM deliveries WHERE sink = $1 AND state = 'pending' AND next_attempt_at > $2",
                &[&sink, &now],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Records the outcomes of delivery attempts in one transaction, each only while its
    /// delivery is still pending and not claimed by another member since, with the
    /// announcements of the dead letters it makes.
    pub(super) async fn record_deliveries(
        &self,
        sink: String,
        results: Vec<DeliveryResult>,
        mut announcements: Vec<(i64, NewEvent)>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        let statement = transaction
            .prepare_cached(
                "UPDATE deliveries SET attempts = attempts + 1, last_attempt_at = $3::timestamptz, state = $4::text, \
                 next_attempt_at = coalesce($5, next_attempt_at), last_status = $6, last_error = $7, \
                 delivered_at = CASE WHEN $4::text = 'delivered' THEN $3::timestamptz END, \
                 dead_at = CASE WHEN $4::text = 'dead' THEN $3::timestamptz END, \
                 lease_owner = NULL, lease_until = NULL \
                 WHERE sink = $1 AND event_seq = $2 AND state = 'pending' AND (lease_owner IS NULL OR lease_owner = $8)",
            )
            .await?;
        for result in results {
            let (seq, state, next, status, error) = match result {
                DeliveryResult::Delivered { event_seq, status } => (event_seq, "delivered", None, status, None),
                DeliveryResult::Retry { event_seq, at, status, error } => {
                    (event_seq, "pending", Some(at), status, Some(error))
                }
                DeliveryResult::Dead { event_seq, status, error } => (event_seq, "dead", None, status, Some(error)),
            };
            let status = status.map(i32::from);
            let recorded = transaction
                .execute(&statement, &[&sink, &seq, &now, &state, &next, &status, &error, &self.member])
                .await?;
            if state == "dead" && recorded > 0 {
                for (_, event) in announcements.extract_if(.., |(about, _)| *about == seq) {
                    insert_event(&transaction, &event).await?;
                }
            }
        }
        transaction.commit().await?;
        Ok(())
    }

    /// Events after the cursor `after`, oldest first, at most `limit`.
    pub(super) async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!("SELECT {EVENT_COLUMNS} FROM events e WHERE e.seq > $1 ORDER BY e.seq LIMIT $2"),
                &[&after, &i64::from(limit)],
            )
            .await?;
        Ok(rows.iter().map(read_event).collect())
    }
}
