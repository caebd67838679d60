//! The item change history, and the cart updates an item change causes.

use chrono::{DateTime, Utc};
use rusqlite::params;

use super::SqliteStore;
use super::outbox::insert_event;
use super::rows::lenient_text;
use crate::events::NewEvent;
use crate::store::{ItemChange, ItemRecord, StoreError};
use crate::time::format_ts;

impl SqliteStore {
    /// Records a successful change: one history row per item, the event (with its
    /// deliveries), and an early poll of the cart, which the partner has made Pending.
    pub async fn record_item_change(
        &self,
        cart_id: String,
        action: String,
        items: Vec<ItemRecord>,
        event: Option<NewEvent>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.write(move |connection| {
            let transaction = connection.transaction()?;
            let now = format_ts(now);
            if let Some(event) = &event {
                insert_event(&transaction, event)?;
            }
            {
                let mut insert = transaction.prepare_cached(
                    "INSERT INTO item_changes (cart_id, cart_item_id, action, quantity, my_sales_unit_price, imat_unit_price, \
                     currency, valid_until, changed_at, event_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?;
                for item in &items {
                    insert.execute(params![
                        cart_id,
                        item.cart_item_id,
                        action,
                        item.quantity,
                        item.my_sales_unit_price,
                        item.imat_unit_price,
                        item.currency,
                        item.valid_until,
                        now,
                        event.as_ref().map(|event| event.event_id.clone()),
                    ])?;
                }
            }
            transaction.execute(
                "UPDATE carts SET next_poll_at = ?2 WHERE cart_id = ?1 AND state = 'tracking'",
                params![cart_id, now],
            )?;
            transaction.commit()?;
            Ok(())
        })
        .await
    }

    /// The item changes made to a cart, oldest first.
    pub async fn item_history(&self, cart_id: String) -> Result<Vec<ItemChange>, StoreError> {
        self.read(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT cart_id, cart_item_id, action, quantity, my_sales_unit_price, imat_unit_price, currency, valid_until, \
                 changed_at, event_id FROM item_changes WHERE cart_id = ?1 ORDER BY change_id",
            )?;
            let rows = statement.query_map([cart_id], |row| {
                Ok(ItemChange {
                    cart_id: lenient_text(row, 0)?.unwrap_or_default(),
                    cart_item_id: lenient_text(row, 1)?.unwrap_or_default(),
                    action: lenient_text(row, 2)?.unwrap_or_default(),
                    quantity: row.get::<_, Option<i64>>(3).ok().flatten(),
                    my_sales_unit_price: lenient_text(row, 4)?,
                    imat_unit_price: lenient_text(row, 5)?,
                    currency: lenient_text(row, 6)?,
                    valid_until: lenient_text(row, 7)?,
                    changed_at: lenient_text(row, 8)?.unwrap_or_default(),
                    event_id: lenient_text(row, 9)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Notes what the partner said about a tracked cart in its `last_error`, and makes it due
    /// at once so a poll checks it.
    pub async fn note_cart(&self, cart_id: String, note: String, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.write(move |connection| {
            connection.execute(
                "UPDATE carts SET last_error = ?2, next_poll_at = ?3 WHERE cart_id = ?1 AND state = 'tracking'",
                params![cart_id, note, format_ts(now)],
            )?;
            Ok(())
        })
        .await
    }

    /// Makes a tracked cart due at once, so the daemon polls it at its next sweep.
    pub async fn poll_soon(&self, cart_id: String, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.write(move |connection| {
            connection.execute(
                "UPDATE carts SET next_poll_at = ?2 WHERE cart_id = ?1 AND state = 'tracking'",
                params![cart_id, format_ts(now)],
            )?;
            Ok(())
        })
        .await
    }
}
