//! The database schema and its migrations, one per `PRAGMA user_version`.
//!
//! Migrations only ever append: a database at version N gets migrations N+1.. applied in
//! order, each in its own transaction. Never edit a migration that has shipped.

use rusqlite::Connection;

use super::StoreError;

/// Migrations in order; the database's `user_version` is the number applied.
pub const MIGRATIONS: &[&str] = &[
    // 1: carts, transitions, the events outbox, per-sink deliveries, upstream state, sweeps.
    r#"
    CREATE TABLE carts (
        cart_key              INTEGER PRIMARY KEY,
        cart_id               TEXT NOT NULL,
        reference             TEXT,
        state                 TEXT NOT NULL DEFAULT 'tracking',
        status                TEXT,
        order_id              TEXT,
        cart_created_at       TEXT,
        cart_created_at_raw   TEXT,
        registered_at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        next_poll_at          TEXT,
        last_polled_at        TEXT,
        status_changed_at     TEXT,
        consecutive_errors    INTEGER NOT NULL DEFAULT 0,
        consecutive_not_found INTEGER NOT NULL DEFAULT 0,
        last_error            TEXT,
        finished_at           TEXT
    );
    CREATE UNIQUE INDEX carts_by_cart_id ON carts (cart_id);
    CREATE INDEX carts_due ON carts (next_poll_at, cart_key) WHERE state = 'tracking';
    CREATE INDEX carts_unchecked ON carts (cart_key) WHERE state = 'tracking' AND next_poll_at IS NULL;
    CREATE INDEX carts_by_state ON carts (state, status);

    CREATE TABLE cart_transitions (
        transition_id INTEGER PRIMARY KEY,
        cart_key      INTEGER NOT NULL,
        cart_id       TEXT NOT NULL,
        from_status   TEXT,
        to_status     TEXT NOT NULL,
        order_id      TEXT,
        detected_at   TEXT NOT NULL,
        event_id      TEXT
    );
    CREATE INDEX cart_transitions_by_cart ON cart_transitions (cart_key, transition_id);
    CREATE INDEX cart_transitions_by_time ON cart_transitions (detected_at);

    CREATE TABLE events (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id   TEXT NOT NULL UNIQUE,
        event_type TEXT NOT NULL,
        cart_id    TEXT,
        created_at TEXT NOT NULL,
        payload    TEXT NOT NULL
    );
    CREATE INDEX events_by_cart ON events (cart_id, seq);

    CREATE TABLE sinks (
        sink            TEXT PRIMARY KEY,
        kind            TEXT NOT NULL,
        target          TEXT NOT NULL DEFAULT '',
        event_types     TEXT,
        active          INTEGER NOT NULL DEFAULT 1,
        disabled_at     TEXT,
        disabled_reason TEXT,
        created_at      TEXT NOT NULL
    );

    CREATE TABLE deliveries (
        sink            TEXT NOT NULL,
        event_seq       INTEGER NOT NULL,
        ordering_key    TEXT,
        state           TEXT NOT NULL DEFAULT 'pending',
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TEXT NOT NULL,
        last_attempt_at TEXT,
        last_status     INTEGER,
        last_error      TEXT,
        delivered_at    TEXT,
        dead_at         TEXT,
        PRIMARY KEY (sink, event_seq)
    ) WITHOUT ROWID;
    CREATE INDEX deliveries_pending ON deliveries (sink, next_attempt_at) WHERE state = 'pending';
    CREATE INDEX deliveries_pending_in_order ON deliveries (sink, event_seq) WHERE state = 'pending';
    CREATE INDEX deliveries_pending_by_key ON deliveries (sink, ordering_key, event_seq) WHERE state = 'pending';
    CREATE INDEX deliveries_dead ON deliveries (sink, dead_at) WHERE state = 'dead';

    CREATE TABLE upstream_state (
        provider             TEXT PRIMARY KEY,
        mode                 TEXT NOT NULL,
        since                TEXT,
        next_probe_at        TEXT,
        step                 INTEGER NOT NULL DEFAULT 0,
        consecutive_failures INTEGER NOT NULL DEFAULT 0,
        throttled_until      TEXT,
        batch_size           INTEGER NOT NULL,
        last_error           TEXT,
        updated_at           TEXT NOT NULL
    );

    CREATE TABLE sweeps (
        sweep_id      INTEGER PRIMARY KEY,
        started_at    TEXT NOT NULL,
        finished_at   TEXT,
        carts_polled  INTEGER NOT NULL DEFAULT 0,
        requests      INTEGER NOT NULL DEFAULT 0,
        failures      INTEGER NOT NULL DEFAULT 0,
        transitions   INTEGER NOT NULL DEFAULT 0,
        events        INTEGER NOT NULL DEFAULT 0,
        stopped_early TEXT
    );
    "#,
    // 2: views for the questions operators ask with sqlite3.
    r#"
    CREATE VIEW cart_overview AS
        SELECT state, status, count(*) AS carts FROM carts GROUP BY state, status ORDER BY state, status;

    CREATE VIEW orders_today AS
        SELECT c.cart_id, c.order_id, c.reference, t.detected_at AS ordered_at
        FROM cart_transitions t JOIN carts c ON c.cart_key = t.cart_key
        WHERE t.to_status = 'Ordered' AND t.detected_at >= strftime('%Y-%m-%dT00:00:00.000Z', 'now')
        ORDER BY t.detected_at;

    CREATE VIEW carts_stuck_checked_out AS
        SELECT cart_id, reference, status_changed_at AS checked_out_since, last_polled_at, last_error
        FROM carts
        WHERE state = 'tracking' AND status = 'CheckedOut'
          AND status_changed_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 hour')
        ORDER BY status_changed_at;

    CREATE VIEW dead_letters AS
        SELECT d.sink, e.event_id, e.event_type, e.cart_id, d.attempts, d.last_status, d.last_error, d.dead_at
        FROM deliveries d JOIN events e ON e.seq = d.event_seq
        WHERE d.state = 'dead'
        ORDER BY d.dead_at;

    CREATE VIEW outbox_backlog AS
        SELECT s.sink, count(d.event_seq) AS pending, min(e.created_at) AS oldest_pending_event,
               min(d.next_attempt_at) AS next_attempt_at, s.disabled_reason
        FROM sinks s
        LEFT JOIN deliveries d ON d.sink = s.sink AND d.state = 'pending'
        LEFT JOIN events e ON e.seq = d.event_seq
        WHERE s.active = 1
        GROUP BY s.sink
        ORDER BY s.sink;
    "#,
    // 3: the history of item changes made through the Add/Remove Cart Item API.
    r#"
    CREATE TABLE item_changes (
        change_id           INTEGER PRIMARY KEY,
        cart_id             TEXT NOT NULL,
        cart_item_id        TEXT NOT NULL,
        action              TEXT NOT NULL,
        quantity            INTEGER,
        my_sales_unit_price TEXT,
        imat_unit_price     TEXT,
        currency            TEXT,
        valid_until         TEXT,
        changed_at          TEXT NOT NULL,
        event_id            TEXT
    );
    CREATE INDEX item_changes_by_cart ON item_changes (cart_id, change_id);
    "#,
    // 4: carts from more than one provider. Existing carts are i.materialise carts.
    r#"
    ALTER TABLE carts ADD COLUMN provider TEXT NOT NULL DEFAULT 'imaterialise';
    ALTER TABLE carts ADD COLUMN account TEXT NOT NULL DEFAULT '';
    ALTER TABLE carts ADD COLUMN status_detail TEXT;
    ALTER TABLE carts ADD COLUMN order_status TEXT;
    ALTER TABLE carts ADD COLUMN order_total TEXT;
    ALTER TABLE sweeps ADD COLUMN provider TEXT;
    DROP INDEX carts_due;
    CREATE INDEX carts_due ON carts (provider, next_poll_at, cart_key) WHERE state = 'tracking';
    "#,
    // 5: fewer index writes per poll. Nothing looks events up by cart or deliveries by due
    // time (pending deliveries are few and found through their partial index), and only
    // orders are looked up by time.
    r#"
    DROP INDEX events_by_cart;
    DROP INDEX deliveries_pending;
    DROP INDEX cart_transitions_by_time;
    CREATE INDEX cart_transitions_ordered_by_time ON cart_transitions (detected_at) WHERE to_status = 'Ordered';
    "#,
    // 6: the log sink writes every event in order, so its deliveries need no per-cart
    // ordering key, and the index that keeps a cart's events in order skips them.
    r#"
    UPDATE deliveries SET ordering_key = NULL WHERE sink IN (SELECT sink FROM sinks WHERE kind = 'log');
    DROP INDEX deliveries_pending_by_key;
    CREATE INDEX deliveries_pending_by_key ON deliveries (sink, ordering_key, event_seq)
        WHERE state = 'pending' AND ordering_key IS NOT NULL;
    "#,
];

/// The schema version this build writes.
pub fn latest_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// Brings the schema up to date.
///
/// Fails when the database is newer than this build (a downgrade), or a migration fails, in
/// which case that migration's transaction is rolled back and the version is unchanged.
pub fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if current > latest_version() {
        return Err(StoreError::TooNew { found: current, supported: latest_version() });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = index as i64 + 1;
        let transaction = connection.transaction()?;
        transaction.execute_batch(sql).map_err(|source| StoreError::Migration { version, source })?;
        transaction.pragma_update(None, "user_version", version)?;
        transaction.commit()?;
        tracing::info!(version, "database schema migrated");
    }
    Ok(())
}
