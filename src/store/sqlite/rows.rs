//! Reading rows into typed values at the store's edge, leniently, since people edit these
//! tables by hand: a number where text belongs is read as text, an unreadable timestamp as
//! absent (or, where one is required, as now), a counter that is not one as zero.

use chrono::{DateTime, Utc};
use rusqlite::Row;
use rusqlite::types::{Value, ValueRef};

use crate::model::{Cart, CartState};
use crate::time::{format_naive, format_ts, parse_naive, parse_ts};

/// The columns of a [`Cart`], in the order [`read_cart`] expects (a macro, so that the
/// statements built from it are constants).
macro_rules! cart_columns {
    () => {
        "cart_key, cart_id, reference, state, status, order_id, cart_created_at, \
         cart_created_at_raw, registered_at, next_poll_at, last_polled_at, status_changed_at, \
         consecutive_errors, consecutive_not_found, last_error, finished_at, provider, account, status_detail, \
         order_status, order_total, previous_status, tracked_since"
    };
}

/// The columns of a [`Cart`], in the order [`read_cart`] expects.
pub(super) const CART_COLUMNS: &str = cart_columns!();

/// One cart by its row key, read as [`read_cart`] expects: for every cart of every poll.
pub(super) const CART_BY_KEY: &str = concat!("SELECT ", cart_columns!(), " FROM carts WHERE cart_key = ?1");

/// Reads a row selected with [`CART_COLUMNS`].
pub(super) fn read_cart(row: &Row<'_>) -> rusqlite::Result<Cart> {
    // Timestamps and the state are read in place: each cart has six timestamps, and none
    // of them needs a copy of its text.
    let time = |index| read_text(row, index, parse_ts);
    let state = read_text(row, 3, CartState::parse)?.unwrap_or(CartState::Invalid);
    Ok(Cart {
        key: row.get(0)?,
        cart_id: lenient_text(row, 1)?.unwrap_or_default(),
        reference: lenient_text(row, 2)?,
        state,
        status: lenient_text(row, 4)?,
        order_id: lenient_text(row, 5)?,
        created_at: read_text(row, 6, parse_naive)?,
        created_at_raw: lenient_text(row, 7)?,
        registered_at: time(8)?.unwrap_or_else(Utc::now),
        next_poll_at: time(9)?,
        last_polled_at: time(10)?,
        status_changed_at: time(11)?,
        consecutive_errors: lenient_count(row, 12)?,
        consecutive_not_found: lenient_count(row, 13)?,
        last_error: lenient_text(row, 14)?,
        finished_at: time(15)?,
        provider: lenient_text(row, 16)?.unwrap_or_default(),
        account: lenient_text(row, 17)?.unwrap_or_default(),
        status_detail: lenient_text(row, 18)?,
        order_status: lenient_text(row, 19)?,
        order_total: lenient_text(row, 20)?,
        previous_status: lenient_text(row, 21)?,
        tracked_since: time(22)?.or(time(8)?).unwrap_or_else(Utc::now),
    })
}

/// Column `index` read by `read` from its text in place (copied only when it is not stored
/// as text); `None` for NULL or what `read` does not take.
fn read_text<T>(row: &Row<'_>, index: usize, read: impl FnOnce(&str) -> Option<T>) -> rusqlite::Result<Option<T>> {
    Ok(match row.get_ref(index)? {
        ValueRef::Text(bytes) => std::str::from_utf8(bytes).ok().and_then(read),
        ValueRef::Null => None,
        _ => lenient_text(row, index)?.as_deref().and_then(read),
    })
}

/// A value as text whatever its storage class; `None` for NULL.
pub(super) fn lenient_text(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<String>> {
    Ok(match row.get_ref(index)? {
        ValueRef::Null => None,
        ValueRef::Integer(number) => Some(number.to_string()),
        ValueRef::Real(number) => Some(number.to_string()),
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
    })
}

/// A counter; anything that is not a non-negative integer reads as zero.
pub(super) fn lenient_count(row: &Row<'_>, index: usize) -> rusqlite::Result<u32> {
    Ok(match row.get::<_, Value>(index)? {
        Value::Integer(number) => u32::try_from(number).unwrap_or(0),
        Value::Text(text) => text.trim().parse().unwrap_or(0),
        _ => 0,
    })
}

/// A timestamp in the stored form, or NULL.
pub(super) fn stored(instant: Option<DateTime<Utc>>) -> Option<String> {
    instant.map(format_ts)
}

/// A partner's creation date in the stored form (no zone), or NULL.
pub(super) fn stored_naive(date: Option<chrono::NaiveDateTime>) -> Option<String> {
    date.map(format_naive)
}
