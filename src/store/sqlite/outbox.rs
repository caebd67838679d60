//! The events outbox and each sink's delivery state.
//!
//! An event and one delivery row per interested sink are written in the transaction that
//! detected the event. Each sink then works through its own pending rows in event order,
//! never past an earlier pending event of the same cart.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use super::rows::lenient_text;
use crate::events::NewEvent;
use crate::outbox::{DeadLetter, DeliveryResult, DeliveryState, PendingDelivery, SinkSpec, StoredEvent};
use crate::store::StoreError;
use crate::time::{format_ts, parse_ts};

/// Writes an event and one pending delivery per configured sink that wants its type, a
/// disabled one included (it gets the event when it is enabled again), except the sink the
/// event is about (`NewEvent::not_for_sink`). An event about a cart
/// takes the cart's next sequence number; a cart with no row yet (an item change forced on a
/// cart nobody registered) gets one, untracked, so that its events are numbered too.
pub(super) fn insert_event(transaction: &rusqlite::Connection, event: &NewEvent) -> Result<i64, StoreError> {
    let cart_sequence = match &event.cart_id {
        Some(cart_id) => {
            // Read, then written by row key: `RETURNING` would build a temporary b-tree for
            // every event.
            let written = transaction
                .prepare_cached("SELECT cart_key, events_written FROM carts WHERE cart_id = ?1")?
                .query_row([cart_id], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)))
                .optional()?;
            match written {
                Some((key, written)) => {
                    let sequence = written.saturating_add(1);
                    transaction
                        .prepare_cached("UPDATE carts SET events_written = ?2 WHERE cart_key = ?1")?
                        .execute(params![key, sequence])?;
                    Some(sequence)
                }
                None => {
                    transaction.execute(
                        "INSERT INTO carts (cart_id, state, registered_at, tracked_since, finished_at, events_written) \
                         VALUES (?1, 'untracked', ?2, ?2, ?2, 1)",
                        params![cart_id, event.created_at],
                    )?;
                    Some(1)
                }
            }
        }
        None => None,
    };
    transaction
        .prepare_cached(
            "INSERT INTO events (event_id, event_type, cart_id, cart_sequence, created_at, payload) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            event.event_id,
            event.event_type.as_str(),
            event.cart_id,
            cart_sequence,
            event.created_at,
            event.payload(cart_sequence)
        ])?;
    let seq = transaction.last_insert_rowid();
    transaction
        .prepare_cached(
            "INSERT INTO deliveries (sink, event_seq, ordering_key, next_attempt_at) \
             SELECT sink, ?1, CASE WHEN kind = 'log' THEN NULL ELSE ?2 END, ?3 FROM sinks \
             WHERE active = 1 AND (event_types IS NULL OR instr(event_types, ?4) > 0) AND sink IS NOT ?5",
        )?
        .execute(params![
            seq,
            event.cart_id,
            event.created_at,
            format!(",{},", event.event_type.as_str()),
            event.not_for_sink
        ])?;
    Ok(seq)
}

/// Deliveries a receiver refused with `410 Gone` while their sink is enabled (again) are
/// attempted at once, their attempts starting afresh: the refusal was the endpoint's, not the
/// event's.
fn restart_refused_deliveries(transaction: &rusqlite::Connection, now: &str) -> Result<(), StoreError> {
    transaction.execute(
        "UPDATE deliveries SET attempts = 0, next_attempt_at = ?1, last_status = NULL, last_error = NULL \
         WHERE state = 'pending' AND last_status = 410 \
           AND sink IN (SELECT sink FROM sinks WHERE disabled_at IS NULL AND active = 1)",
        [now],
    )?;
    Ok(())
}

fn read_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        seq: row.get(0)?,
        event_id: lenient_text(row, 1)?.unwrap_or_default(),
        event_type: lenient_text(row, 2)?.unwrap_or_default(),
        cart_id: lenient_text(row, 3)?,
        created_at: lenient_text(row, 4)?.unwrap_or_default(),
        payload: lenient_text(row, 5)?.unwrap_or_default(),
    })
}

const DELIVERY_COLUMNS: &str =
    "d.sink, d.state, d.attempts, d.next_attempt_at, d.last_status, d.last_error, d.delivered_at, d.dead_at";

fn read_delivery(row: &rusqlite::Row<'_>, offset: usize) -> rusqlite::Result<DeliveryState> {
    Ok(DeliveryState {
        sink: lenient_text(row, offset)?.unwrap_or_default(),
        state: lenient_text(row, offset + 1)?.unwrap_or_default(),
        attempts: row.get::<_, Option<i64>>(offset + 2).ok().flatten().unwrap_or(0).clamp(0, i64::from(u32::MAX))
            as u32,
        next_attempt_at: lenient_text(row, offset + 3)?,
        last_status: row.get::<_, Option<i64>>(offset + 4).ok().flatten().and_then(|s| u16::try_from(s).ok()),
        last_error: lenient_text(row, offset + 5)?,
        delivered_at: lenient_text(row, offset + 6)?,
        dead_at: lenient_text(row, offset + 7)?,
    })
}

impl SqliteStore {
    /// Every sink's delivery state for each of the events `seqs`, by event.
    pub async fn delivery_states(&self, seqs: Vec<i64>) -> Result<Vec<(i64, DeliveryState)>, StoreError> {
        self.read(move |connection| {
            let mut statement = connection.prepare_cached(&format!(
                "SELECT d.event_seq, {DELIVERY_COLUMNS} FROM deliveries d WHERE d.event_seq = ?1 ORDER BY d.sink"
            ))?;
            let mut states = Vec::new();
            for seq in seqs {
                let rows = statement.query_map([seq], |row| Ok((row.get(0)?, read_delivery(row, 1)?)))?;
                for row in rows {
                    states.push(row?);
                }
            }
            Ok(states)
        })
        .await
    }

    /// Dead letters, newest first, optionally of one sink.
    pub async fn dead_letters(&self, sink: Option<String>, limit: u32) -> Result<Vec<DeadLetter>, StoreError> {
        self.read(move |connection| {
            let mut statement = connection.prepare_cached(&format!(
                "SELECT e.seq, e.event_id, e.event_type, e.cart_id, e.created_at, e.payload, {DELIVERY_COLUMNS} \
                 FROM deliveries d JOIN events e ON e.seq = d.event_seq \
                 WHERE d.state = 'dead' AND (?1 IS NULL OR d.sink = ?1) ORDER BY d.dead_at DESC, e.seq DESC LIMIT ?2"
            ))?;
            let rows = statement.query_map(params![sink, limit], |row| {
                Ok(DeadLetter { event: read_event(row)?, delivery: read_delivery(row, 6)? })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Queues events for delivery again, attempts starting afresh: the events named by id (on
    /// every sink that had them, or on `sink` only, adding a delivery there if it had none),
    /// or with `dead_only` every dead letter (of `sink`, if given). Returns how many
    /// deliveries were queued, and the event ids that do not exist.
    pub async fn redeliver(
        &self,
        event_ids: Vec<String>,
        dead_only: bool,
        sink: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<(usize, Vec<String>), StoreError> {
        self.write(move |connection| {
            let transaction = connection.transaction()?;
            let now = format_ts(now);
            let requeue = "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?1, \
                           delivered_at = NULL, dead_at = NULL";
            let mut queued = 0;
            let mut unknown = Vec::new();
            if dead_only {
                queued += transaction.execute(
                    &format!("{requeue} WHERE state = 'dead' AND (?2 IS NULL OR sink = ?2)"),
                    params![now, sink],
                )?;
            }
            for event_id in event_ids {
                let found: Option<(i64, Option<String>)> = transaction
                    .query_row("SELECT seq, cart_id FROM events WHERE event_id = ?1", [&event_id], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })
                    .optional()?;
                let Some((seq, cart_id)) = found else {
                    unknown.push(event_id);
                    continue;
                };
                if let Some(sink) = &sink {
                    transaction.execute(
                        "INSERT INTO deliveries (sink, event_seq, ordering_key, next_attempt_at) \
                         SELECT ?1, ?2, CASE WHEN kind = 'log' THEN NULL ELSE ?3 END, ?4 FROM sinks WHERE sink = ?1 \
                         ON CONFLICT (sink, event_seq) DO NOTHING",
                        params![sink, seq, cart_id, now],
                    )?;
                }
                queued += transaction.execute(
                    &format!("{requeue} WHERE event_seq = ?3 AND (?2 IS NULL OR sink = ?2)"),
                    params![now, sink, seq],
                )?;
            }
            transaction.commit()?;
            Ok((queued, unknown))
        })
        .await
    }

    /// The names of the sinks in the `sinks` table, active or not.
    pub async fn sink_names(&self) -> Result<Vec<String>, StoreError> {
        self.read(|connection| {
            let mut statement = connection.prepare("SELECT sink FROM sinks ORDER BY sink")?;
            let rows = statement.query_map([], |row| row.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Writes events that no poll produced (upstream health, manual actions) in one
    /// transaction.
    pub async fn write_events(&self, events: Vec<NewEvent>) -> Result<(), StoreError> {
        self.write(move |connection| {
            let transaction = connection.transaction()?;
            for event in &events {
                insert_event(&transaction, event)?;
            }
            transaction.commit()?;
            Ok(())
        })
        .await
    }

    /// Makes the `sinks` table match the config: listed sinks active, others inactive. A sink
    /// disabled by its receiver stays disabled unless its target changed; one enabled again
    /// gets its queued deliveries with their attempts starting afresh.
    pub async fn sync_sinks(&self, specs: Vec<SinkSpec>, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.write(move |connection| {
            let transaction = connection.transaction()?;
            transaction.execute("UPDATE sinks SET active = 0", [])?;
            for spec in specs {
                let event_types = spec.event_types.map(|types| format!(",{},", types.join(",")));
                transaction.execute(
                    "INSERT INTO sinks (sink, kind, target, event_types, active, created_at) VALUES (?1, ?2, ?3, ?4, 1, ?5) \
                     ON CONFLICT (sink) DO UPDATE SET kind = excluded.kind, event_types = excluded.event_types, active = 1, \
                       disabled_at = CASE WHEN target = excluded.target THEN disabled_at END, \
                       disabled_reason = CASE WHEN target = excluded.target THEN disabled_reason END, \
                       target = excluded.target",
                    params![spec.name, spec.kind, spec.target, event_types, format_ts(now)],
                )?;
            }
            restart_refused_deliveries(&transaction, &format_ts(now))?;
            transaction.commit()?;
            Ok(())
        })
        .await
    }

    /// Enables a sink its receiver disabled with `410 Gone`, as `cartwatch webhooks enable`
    /// does: everything queued for it while it was disabled is sent, in order. Returns
    /// whether it was disabled, or `None` when there is no such sink.
    pub async fn enable_sink(&self, sink: String, now: DateTime<Utc>) -> Result<Option<bool>, StoreError> {
        self.write(move |connection| {
            let transaction = connection.transaction()?;
            let disabled: Option<bool> = transaction
                .query_row("SELECT disabled_at IS NOT NULL FROM sinks WHERE sink = ?1", [&sink], |row| row.get(0))
                .optional()?;
            transaction
                .execute("UPDATE sinks SET disabled_at = NULL, disabled_reason = NULL WHERE sink = ?1", [&sink])?;
            restart_refused_deliveries(&transaction, &format_ts(now))?;
            transaction.commit()?;
            Ok(disabled)
        })
        .await
    }

    /// Marks dead letters as skipped, so the later events of their carts, held behind them,
    /// go out: the events named by id (on every sink where they are dead, or on `sink`), or
    /// with `dead_only` every dead letter (of `sink`, if given). Returns how many were
    /// skipped, and the event ids that do not exist.
    pub async fn skip_dead(
        &self,
        event_ids: Vec<String>,
        dead_only: bool,
        sink: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<(usize, Vec<String>), StoreError> {
        self.write(move |connection| {
            let transaction = connection.transaction()?;
            let note = format!(" (skipped by an operator at {})", format_ts(now));
            let skip = "UPDATE deliveries SET state = 'skipped', last_error = coalesce(last_error, '') || ?1 \
                        WHERE state = 'dead' AND (?2 IS NULL OR sink = ?2)";
            let mut skipped = 0;
            if dead_only {
                skipped += transaction.execute(skip, params![note, sink])?;
            }
            let mut unknown = Vec::new();
            for event_id in event_ids {
                let seq: Option<i64> = transaction
                    .query_row("SELECT seq FROM events WHERE event_id = ?1", [&event_id], |row| row.get(0))
                    .optional()?;
                match seq {
                    Some(seq) => {
                        skipped +=
                            transaction.execute(&format!("{skip} AND event_seq = ?3"), params![note, sink, seq])?
                    }
                    None => unknown.push(event_id),
                }
            }
            transaction.commit()?;
            Ok((skipped, unknown))
        })
        .await
    }

    /// Disables a sink, as when its receiver answers `410 Gone`, writing `announcement` if
    /// this call disabled it. Its pending deliveries stay.
    pub async fn disable_sink(
        &self,
        sink: String,
        reason: String,
        announcement: Option<NewEvent>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.write(move |connection| {
            let transaction = connection.transaction()?;
            let disabled = transaction.execute(
                "UPDATE sinks SET disabled_at = ?2, disabled_reason = ?3 WHERE sink = ?1 AND disabled_at IS NULL",
                params![sink, format_ts(now), reason],
            )?;
            if let Some(event) = announcement.filter(|_| disabled > 0) {
                insert_event(&transaction, &event)?;
            }
            transaction.commit()?;
            Ok(())
        })
        .await
    }

    /// Whether a sink is disabled, and why.
    pub async fn sink_disabled(&self, sink: String) -> Result<Option<String>, StoreError> {
        self.read(move |connection| {
            let reason: Option<Option<String>> = connection
                .query_row(
                    "SELECT disabled_reason FROM sinks WHERE sink = ?1 AND disabled_at IS NOT NULL",
                    [sink],
                    |row| row.get(0),
                )
                .optional()?;
            Ok(reason.map(Option::unwrap_or_default))
        })
        .await
    }

    /// Up to `limit` deliveries of `sink` that are due at `now`, oldest event first, never an
    /// event whose cart has an earlier delivery still pending or dead on this sink: a dead
    /// letter holds its cart's later events until it is redelivered or skipped, so a
    /// receiver never sees a cart's events out of order.
    ///
    /// A `sequential` sink (one that handles a batch in order, all or nothing, like the log
    /// sink) gets the oldest pending deliveries up to the first that is not due yet: the
    /// order is kept across all events, so the per-cart check is not needed.
    pub async fn pending_deliveries(
        &self,
        sink: String,
        now: DateTime<Utc>,
        limit: u32,
        sequential: bool,
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        self.read(move |connection| {
            let now = format_ts(now);
            if sequential {
                let mut statement = connection.prepare_cached(
                    "SELECT e.seq, e.event_id, e.event_type, e.cart_id, e.created_at, e.payload, d.attempts, d.next_attempt_at \
                     FROM deliveries d INDEXED BY deliveries_pending_in_order JOIN events e ON e.seq = d.event_seq \
                     WHERE d.sink = ?1 AND d.state = 'pending' ORDER BY d.event_seq LIMIT ?2",
                )?;
                let mut rows = statement.query(params![sink, limit])?;
                let mut pending = Vec::new();
                while let Some(row) = rows.next()? {
                    if lenient_text(row, 7)?.is_some_and(|due| due > now) {
                        break;
                    }
                    pending.push(PendingDelivery {
                        event: read_event(row)?,
                        attempts: row.get::<_, i64>(6)?.clamp(0, i64::from(u32::MAX)) as u32,
                    });
                }
                return Ok(pending);
            }
            let mut statement = connection.prepare_cached(
                "SELECT e.seq, e.event_id, e.event_type, e.cart_id, e.created_at, e.payload, d.attempts \
                 FROM deliveries d INDEXED BY deliveries_pending_in_order JOIN events e ON e.seq = d.event_seq \
                 WHERE d.sink = ?1 AND d.state = 'pending' AND d.next_attempt_at <= ?2 \
                   AND NOT EXISTS (SELECT 1 FROM deliveries p INDEXED BY deliveries_blocking_by_key \
                                   WHERE p.sink = ?1 AND p.state IN ('pending', 'dead') \
                                     AND p.ordering_key = d.ordering_key AND p.event_seq < d.event_seq) \
                 ORDER BY d.event_seq LIMIT ?3",
            )?;
            let rows = statement.query_map(params![sink, now, limit], |row| {
                Ok(PendingDelivery {
                    event: read_event(row)?,
                    attempts: row.get::<_, i64>(6)?.clamp(0, i64::from(u32::MAX)) as u32,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Whether `sink` has any delivery pending.
    pub async fn has_pending(&self, sink: String) -> Result<bool, StoreError> {
        self.read(move |connection| {
            Ok(connection.query_row(
                "SELECT EXISTS (SELECT 1 FROM deliveries INDEXED BY deliveries_pending_in_order \
                 WHERE sink = ?1 AND state = 'pending')",
                [sink],
                |row| row.get(0),
            )?)
        })
        .await
    }

    /// When the next pending delivery of `sink` that is not due yet becomes due, if any.
    /// (Deliveries already due but waiting for an earlier event of their cart become
    /// deliverable when that one is attempted, which this also covers.)
    pub async fn next_delivery_due(
        &self,
        sink: String,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.read(move |connection| {
            let next: Option<String> = connection.query_row(
                "SELECT min(next_attempt_at) FROM deliveries WHERE sink = ?1 AND state = 'pending' AND next_attempt_at > ?2",
                params![sink, format_ts(now)],
                |row| lenient_text(row, 0),
            )?;
            Ok(next.as_deref().and_then(parse_ts))
        })
        .await
    }

    /// Records the outcomes of delivery attempts in one transaction, with the announcements
    /// of the dead letters it makes.
    pub async fn record_deliveries(
        &self,
        sink: String,
        results: Vec<DeliveryResult>,
        mut announcements: Vec<(i64, NewEvent)>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.write(move |connection| {
            let transaction = connection.transaction()?;
            {
                let now = format_ts(now);
                // Successes without a status (the log sink's whole batches) are written with
                // one statement; the rest one by one.
                let mut plain_successes = Vec::new();
                let mut statement = transaction.prepare_cached(
                    "UPDATE deliveries SET attempts = attempts + 1, last_attempt_at = ?3, state = ?4, \
                     next_attempt_at = coalesce(?5, next_attempt_at), last_status = ?6, last_error = ?7, \
                     delivered_at = CASE WHEN ?4 = 'delivered' THEN ?3 END, dead_at = CASE WHEN ?4 = 'dead' THEN ?3 END \
                     WHERE sink = ?1 AND event_seq = ?2",
                )?;
                for result in results {
                    let (seq, state, next, status, error) = match result {
                        DeliveryResult::Delivered { event_seq, status: None } => {
                            plain_successes.push(rusqlite::types::Value::Integer(event_seq));
                            continue;
                        }
                        DeliveryResult::Delivered { event_seq, status } => (event_seq, "delivered", None, status, None),
                        DeliveryResult::Retry { event_seq, at, status, error } => {
                            (event_seq, "pending", Some(format_ts(at)), status, Some(error))
                        }
                        DeliveryResult::Dead { event_seq, status, error } => (event_seq, "dead", None, status, Some(error)),
                    };
                    let recorded = statement.execute(params![sink, seq, now, state, next, status, error])?;
                    if state == "dead" && recorded > 0 {
                        for (_, event) in announcements.extract_if(.., |(about, _)| *about == seq) {
                            insert_event(&transaction, &event)?;
                        }
                    }
                }
                if !plain_successes.is_empty() {
                    transaction
                        .prepare_cached(
                            "UPDATE deliveries SET attempts = attempts + 1, last_attempt_at = ?2, state = 'delivered', \
                             last_status = NULL, last_error = NULL, delivered_at = ?2, dead_at = NULL \
                             WHERE sink = ?1 AND event_seq IN rarray(?3)",
                        )?
                        .execute(params![sink, now, std::rc::Rc::new(plain_successes)])?;
                }
            }
            transaction.commit()?;
            Ok(())
        })
        .await
    }

    /// Events after the cursor `after` (a `seq`), oldest first, at most `limit`.
    pub async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        self.read(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT seq, event_id, event_type, cart_id, created_at, payload FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = statement.query_map(params![after, limit], read_event)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use crate::events::{CartEventData, EventType, NewEvent};
    use crate::model::TrackRequest;
    use crate::store::sqlite::test_support::temp_store;

    fn checked_out(cart_id: &str) -> NewEvent {
        let data = CartEventData {
            cart_id: cart_id.into(),
            status: Some("CheckedOut".into()),
            previous_status: Some("Pending".into()),
            order_id: None,
            cart_created_at: None,
            reference: None,
            provider: "imaterialise".into(),
        };
        NewEvent::cart(EventType::CartCheckedOut, &data, Utc::now())
    }

    /// Each cart's events are numbered 1, 2, 3… in the order written, across transactions;
    /// a cart nobody registered gets an untracked row so that its events are numbered too.
    #[tokio::test]
    async fn each_carts_events_are_numbered_in_order() {
        let (store, _directory) = temp_store();
        let tracked = "921a2046-66a5-4c5f-b9a6-4bc646fa5e5a";
        let stranger = "333095fc-6ab2-4c30-b0d1-baecfd708f69";
        let request = TrackRequest {
            provider: "imaterialise".into(),
            cart_id: tracked.into(),
            session_token: None,
            account: String::new(),
            reference: None,
        };
        store.track(vec![request], Utc::now(), Utc::now()).await.unwrap();
        store.write_events(vec![checked_out(tracked), checked_out(stranger), checked_out(tracked)]).await.unwrap();
        store.write_events(vec![checked_out(tracked), checked_out(stranger)]).await.unwrap();

        let connection = rusqlite::Connection::open(store.path()).unwrap();
        let numbered = |cart_id: &str| -> Vec<i64> {
            let mut statement =
                connection.prepare("SELECT cart_sequence FROM events WHERE cart_id = ?1 ORDER BY seq").unwrap();
            statement.query_map([cart_id], |row| row.get(0)).unwrap().map(Result::unwrap).collect()
        };
        assert_eq!(numbered(tracked), [1, 2, 3]);
        assert_eq!(numbered(stranger), [1, 2]);
        let rows: Vec<(String, i64)> = connection
            .prepare("SELECT state, events_written FROM carts ORDER BY cart_key")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rows, [("tracking".to_owned(), 3), ("untracked".to_owned(), 2)]);
    }
}
