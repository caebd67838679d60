//! The database schema and its migrations, one per `PRAGMA user_version`.
//!
//! Migrations only ever append: a database at version N gets migrations N+1.. applied in
//! order, each in its own transaction. Never edit a migration that has shipped.

use rusqlite::{Connection, OptionalExtension};

use crate::store::StoreError;

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
    // 7: SQLite's own guards. Every table is rebuilt STRICT, with CHECK constraints on the
    // columns the daemon relies on and foreign keys between them, so a hand edit that would
    // stall work is refused with the constraint's name instead. Rows edited by hand before
    // are repaired on the way (an unknown state becomes `invalid` with the reason, a
    // timestamp that is not one makes a tracked cart due at once, a counter that is not a
    // number restarts at zero). New columns: the status before the current one, when
    // tracking last (re)started, the per-cart event sequence, Titelive session tokens apart
    // from the public id, the last success and error of each upstream, and failed writes per
    // sweep. Deliveries gain the state `skipped` (an operator passed over a dead letter).
    r#"
    DROP VIEW IF EXISTS cart_overview;
    DROP VIEW IF EXISTS orders_today;
    DROP VIEW IF EXISTS carts_stuck_checked_out;
    DROP VIEW IF EXISTS dead_letters;
    DROP VIEW IF EXISTS outbox_backlog;

    CREATE TABLE carts_v7 (
        cart_key              INTEGER PRIMARY KEY,
        cart_id               TEXT NOT NULL,
        provider              TEXT NOT NULL DEFAULT 'imaterialise',
        account               TEXT NOT NULL DEFAULT '',
        session_token         TEXT,
        reference             TEXT,
        state                 TEXT NOT NULL DEFAULT 'tracking' CONSTRAINT state_is_known
            CHECK (state IN ('tracking', 'ordered', 'not_found', 'expired', 'untracked', 'invalid')),
        status                TEXT,
        previous_status       TEXT,
        status_detail         TEXT,
        order_id              TEXT,
        order_status          TEXT,
        order_total           TEXT,
        cart_created_at       TEXT,
        cart_created_at_raw   TEXT,
        registered_at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
            CONSTRAINT registered_at_is_a_timestamp
            CHECK (registered_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9][T ][0-9][0-9]:[0-9][0-9]*'),
        tracked_since         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
            CONSTRAINT tracked_since_is_a_timestamp
            CHECK (tracked_since GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9][T ][0-9][0-9]:[0-9][0-9]*'),
        next_poll_at          TEXT CONSTRAINT next_poll_at_is_a_timestamp CHECK (next_poll_at IS NULL
            OR next_poll_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9][T ][0-9][0-9]:[0-9][0-9]*'),
        last_polled_at        TEXT,
        status_changed_at     TEXT,
        consecutive_errors    INTEGER NOT NULL DEFAULT 0 CHECK (consecutive_errors >= 0),
        consecutive_not_found INTEGER NOT NULL DEFAULT 0 CHECK (consecutive_not_found >= 0),
        events_written        INTEGER NOT NULL DEFAULT 0 CHECK (events_written >= 0),
        last_error            TEXT,
        finished_at           TEXT
    ) STRICT;
    INSERT INTO carts_v7 (cart_key, cart_id, provider, account, reference, state, status, status_detail, order_id,
                          order_status, order_total, cart_created_at, cart_created_at_raw, registered_at,
                          tracked_since, next_poll_at, last_polled_at, status_changed_at, consecutive_errors,
                          consecutive_not_found, last_error, finished_at)
    SELECT cart_key, CAST(cart_id AS TEXT), coalesce(CAST(provider AS TEXT), 'imaterialise'),
           coalesce(CAST(account AS TEXT), ''), CAST(reference AS TEXT),
           CASE WHEN lower(trim(state)) IN ('tracking', 'ordered', 'not_found', 'expired', 'untracked', 'invalid')
                THEN lower(trim(state)) ELSE 'invalid' END,
           CAST(status AS TEXT), CAST(status_detail AS TEXT), CAST(order_id AS TEXT), CAST(order_status AS TEXT),
           CAST(order_total AS TEXT), CAST(cart_created_at AS TEXT), CAST(cart_created_at_raw AS TEXT),
           CASE WHEN registered_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9][T ][0-9][0-9]:[0-9][0-9]*'
                THEN registered_at ELSE strftime('%Y-%m-%dT%H:%M:%fZ', 'now') END,
           CASE WHEN registered_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9][T ][0-9][0-9]:[0-9][0-9]*'
                THEN registered_at ELSE strftime('%Y-%m-%dT%H:%M:%fZ', 'now') END,
           CASE WHEN next_poll_at IS NULL THEN NULL
                WHEN typeof(next_poll_at) = 'text' AND next_poll_at
                     GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9][T ][0-9][0-9]:[0-9][0-9]*' THEN next_poll_at
                WHEN lower(trim(state)) = 'tracking' THEN strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
           END,
           CAST(last_polled_at AS TEXT), CAST(status_changed_at AS TEXT),
           CASE WHEN typeof(consecutive_errors) = 'integer' AND consecutive_errors >= 0 THEN consecutive_errors ELSE 0 END,
           CASE WHEN typeof(consecutive_not_found) = 'integer' AND consecutive_not_found >= 0
                THEN consecutive_not_found ELSE 0 END,
           CASE WHEN lower(trim(state)) IN ('tracking', 'ordered', 'not_found', 'expired', 'untracked', 'invalid')
                THEN CAST(last_error AS TEXT)
                ELSE 'the state ' || quote(state) || ' is not one cartwatch knows; set it to ''tracking'' to poll this cart again' END,
           CAST(finished_at AS TEXT)
    FROM carts;
    UPDATE carts_v7 SET previous_status = last.from_status
    FROM (SELECT cart_key, from_status, max(transition_id) FROM cart_transitions GROUP BY cart_key) AS last
    WHERE last.cart_key = carts_v7.cart_key;
    DROP TABLE carts;
    ALTER TABLE carts_v7 RENAME TO carts;

    CREATE TABLE cart_transitions_v7 (
        transition_id INTEGER PRIMARY KEY,
        cart_key      INTEGER NOT NULL REFERENCES carts (cart_key) ON DELETE CASCADE,
        cart_id       TEXT NOT NULL,
        from_status   TEXT,
        to_status     TEXT NOT NULL,
        order_id      TEXT,
        detected_at   TEXT NOT NULL,
        event_id      TEXT
    ) STRICT;
    INSERT INTO cart_transitions_v7
    SELECT transition_id, cart_key, CAST(cart_id AS TEXT), CAST(from_status AS TEXT), CAST(to_status AS TEXT),
           CAST(order_id AS TEXT), CAST(detected_at AS TEXT), CAST(event_id AS TEXT)
    FROM cart_transitions WHERE cart_key IN (SELECT cart_key FROM carts);
    DROP TABLE cart_transitions;
    ALTER TABLE cart_transitions_v7 RENAME TO cart_transitions;

    CREATE TABLE events_v7 (
        seq           INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id      TEXT NOT NULL UNIQUE,
        event_type    TEXT NOT NULL,
        cart_id       TEXT,
        cart_sequence INTEGER CHECK (cart_sequence IS NULL OR cart_sequence >= 1),
        created_at    TEXT NOT NULL,
        payload       TEXT NOT NULL
    ) STRICT;
    INSERT INTO events_v7 (seq, event_id, event_type, cart_id, cart_sequence, created_at, payload)
    SELECT seq, CAST(event_id AS TEXT), CAST(event_type AS TEXT), CAST(cart_id AS TEXT),
           CASE WHEN cart_id IS NOT NULL THEN row_number() OVER (PARTITION BY cart_id ORDER BY seq) END,
           CAST(created_at AS TEXT), CAST(payload AS TEXT)
    FROM events;
    DROP TABLE events;
    ALTER TABLE events_v7 RENAME TO events;
    UPDATE carts SET events_written = counted.written
    FROM (SELECT cart_id, max(cart_sequence) AS written FROM events WHERE cart_id IS NOT NULL GROUP BY cart_id) AS counted
    WHERE counted.cart_id = carts.cart_id;

    CREATE TABLE sinks_v7 (
        sink            TEXT PRIMARY KEY,
        kind            TEXT NOT NULL CHECK (kind IN ('log', 'webhook')),
        target          TEXT NOT NULL DEFAULT '',
        event_types     TEXT,
        active          INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
        disabled_at     TEXT,
        disabled_reason TEXT,
        created_at      TEXT NOT NULL
    ) STRICT;
    INSERT INTO sinks_v7
    SELECT CAST(sink AS TEXT), CASE WHEN kind = 'log' THEN 'log' ELSE 'webhook' END, coalesce(CAST(target AS TEXT), ''),
           CAST(event_types AS TEXT), CASE WHEN active = 1 THEN 1 ELSE 0 END, CAST(disabled_at AS TEXT),
           CAST(disabled_reason AS TEXT), CAST(created_at AS TEXT)
    FROM sinks;
    DROP TABLE sinks;
    ALTER TABLE sinks_v7 RENAME TO sinks;

    CREATE TABLE deliveries_v7 (
        sink            TEXT NOT NULL REFERENCES sinks (sink),
        event_seq       INTEGER NOT NULL REFERENCES events (seq) ON DELETE CASCADE,
        ordering_key    TEXT,
        state           TEXT NOT NULL DEFAULT 'pending' CONSTRAINT delivery_state_is_known
            CHECK (state IN ('pending', 'delivered', 'dead', 'skipped')),
        attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        next_attempt_at TEXT NOT NULL CONSTRAINT next_attempt_at_is_a_timestamp
            CHECK (next_attempt_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9][T ][0-9][0-9]:[0-9][0-9]*'),
        last_attempt_at TEXT,
        last_status     INTEGER,
        last_error      TEXT,
        delivered_at    TEXT,
        dead_at         TEXT,
        PRIMARY KEY (sink, event_seq)
    ) STRICT, WITHOUT ROWID;
    INSERT INTO deliveries_v7
    SELECT CAST(d.sink AS TEXT), d.event_seq, CAST(d.ordering_key AS TEXT),
           CASE WHEN d.state IN ('pending', 'delivered', 'dead') THEN d.state ELSE 'pending' END,
           CASE WHEN typeof(d.attempts) = 'integer' AND d.attempts >= 0 THEN d.attempts ELSE 0 END,
           CASE WHEN typeof(d.next_attempt_at) = 'text' AND d.next_attempt_at
                     GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9][T ][0-9][0-9]:[0-9][0-9]*' THEN d.next_attempt_at
                ELSE strftime('%Y-%m-%dT%H:%M:%fZ', 'now') END,
           CAST(d.last_attempt_at AS TEXT),
           CASE WHEN typeof(d.last_status) = 'integer' THEN d.last_status END,
           CAST(d.last_error AS TEXT), CAST(d.delivered_at AS TEXT), CAST(d.dead_at AS TEXT)
    FROM deliveries d
    WHERE d.sink IN (SELECT sink FROM sinks) AND d.event_seq IN (SELECT seq FROM events);
    DROP TABLE deliveries;
    ALTER TABLE deliveries_v7 RENAME TO deliveries;

    CREATE TABLE upstream_state_v7 (
        provider             TEXT PRIMARY KEY,
        mode                 TEXT NOT NULL CHECK (mode IN ('healthy', 'circuit_open', 'auth_paused')),
        since                TEXT,
        next_probe_at        TEXT,
        step                 INTEGER NOT NULL DEFAULT 0 CHECK (step >= 0),
        consecutive_failures INTEGER NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
        throttled_until      TEXT,
        batch_size           INTEGER NOT NULL CHECK (batch_size BETWEEN 1 AND 10),
        last_success_at      TEXT,
        last_error_at        TEXT,
        last_error           TEXT,
        updated_at           TEXT NOT NULL
    ) STRICT;
    INSERT INTO upstream_state_v7 (provider, mode, since, next_probe_at, step, consecutive_failures, throttled_until,
                                   batch_size, last_error, updated_at)
    SELECT CAST(provider AS TEXT),
           CASE WHEN mode IN ('healthy', 'circuit_open', 'auth_paused') THEN mode ELSE 'healthy' END,
           CAST(since AS TEXT), CAST(next_probe_at AS TEXT),
           CASE WHEN typeof(step) = 'integer' AND step >= 0 THEN step ELSE 0 END,
           CASE WHEN typeof(consecutive_failures) = 'integer' AND consecutive_failures >= 0 THEN consecutive_failures ELSE 0 END,
           CAST(throttled_until AS TEXT),
           CASE WHEN typeof(batch_size) = 'integer' AND batch_size BETWEEN 1 AND 10 THEN batch_size ELSE 10 END,
           CAST(last_error AS TEXT), coalesce(CAST(updated_at AS TEXT), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    FROM upstream_state;
    DROP TABLE upstream_state;
    ALTER TABLE upstream_state_v7 RENAME TO upstream_state;

    CREATE TABLE sweeps_v7 (
        sweep_id       INTEGER PRIMARY KEY,
        provider       TEXT,
        started_at     TEXT NOT NULL,
        finished_at    TEXT,
        carts_polled   INTEGER NOT NULL DEFAULT 0,
        requests       INTEGER NOT NULL DEFAULT 0,
        failures       INTEGER NOT NULL DEFAULT 0,
        write_failures INTEGER NOT NULL DEFAULT 0,
        transitions    INTEGER NOT NULL DEFAULT 0,
        events         INTEGER NOT NULL DEFAULT 0,
        stopped_early  TEXT
    ) STRICT;
    INSERT INTO sweeps_v7 (sweep_id, provider, started_at, finished_at, carts_polled, requests, failures, transitions,
                           events, stopped_early)
    SELECT sweep_id, CAST(provider AS TEXT), CAST(started_at AS TEXT), CAST(finished_at AS TEXT),
           coalesce(CAST(carts_polled AS INTEGER), 0), coalesce(CAST(requests AS INTEGER), 0),
           coalesce(CAST(failures AS INTEGER), 0), coalesce(CAST(transitions AS INTEGER), 0),
           coalesce(CAST(events AS INTEGER), 0), CAST(stopped_early AS TEXT)
    FROM sweeps;
    DROP TABLE sweeps;
    ALTER TABLE sweeps_v7 RENAME TO sweeps;

    CREATE TABLE item_changes_v7 (
        change_id           INTEGER PRIMARY KEY,
        cart_id             TEXT NOT NULL,
        cart_item_id        TEXT NOT NULL,
        action              TEXT NOT NULL CHECK (action IN ('add', 'remove')),
        quantity            INTEGER,
        my_sales_unit_price TEXT,
        imat_unit_price     TEXT,
        currency            TEXT,
        valid_until         TEXT,
        changed_at          TEXT NOT NULL,
        event_id            TEXT
    ) STRICT;
    INSERT INTO item_changes_v7
    SELECT change_id, CAST(cart_id AS TEXT), CAST(cart_item_id AS TEXT),
           CASE WHEN action = 'remove' THEN 'remove' ELSE 'add' END,
           CASE WHEN typeof(quantity) = 'integer' THEN quantity END, CAST(my_sales_unit_price AS TEXT),
           CAST(imat_unit_price AS TEXT), CAST(currency AS TEXT), CAST(valid_until AS TEXT),
           CAST(changed_at AS TEXT), CAST(event_id AS TEXT)
    FROM item_changes;
    DROP TABLE item_changes;
    ALTER TABLE item_changes_v7 RENAME TO item_changes;
    "#,
    // 8: the allowed states of carts and deliveries checked by comparisons instead of an IN
    // list. SQLite checks a list of more than two values through a temporary b-tree that it
    // builds anew for every statement writing the column: every cart registered or finished
    // and every delivery written or settled paid for one (about half the cost of inserting
    // a row). Same columns, same rows, same constraint names; the two tables are rebuilt and
    // their indexes and views created again in their current forms. Rows are copied as they
    // are, checks off, so a value someone put in by hand past the checks does not stop the
    // upgrade (the daemon repairs those as before); rows left pointing at a deleted cart or
    // event (a delete in sqlite3, whose foreign keys are off by default) are dropped, as
    // migration 7 did.
    r#"
    PRAGMA ignore_check_constraints = ON;
    DELETE FROM cart_transitions WHERE cart_key NOT IN (SELECT cart_key FROM carts);
    DROP VIEW IF EXISTS cart_overview;
    DROP VIEW IF EXISTS orders_today;
    DROP VIEW IF EXISTS carts_stuck_checked_out;
    DROP VIEW IF EXISTS dead_letters;
    DROP VIEW IF EXISTS held_deliveries;
    DROP VIEW IF EXISTS outbox_backlog;

    CREATE TABLE carts_v8 (
        cart_key              INTEGER PRIMARY KEY,
        cart_id               TEXT NOT NULL,
        provider              TEXT NOT NULL DEFAULT 'imaterialise',
        account               TEXT NOT NULL DEFAULT '',
        session_token         TEXT,
        reference             TEXT,
        state                 TEXT NOT NULL DEFAULT 'tracking' CONSTRAINT state_is_known
            CHECK (state = 'tracking' OR state = 'ordered' OR state = 'not_found' OR state = 'expired'
                   OR state = 'untracked' OR state = 'invalid'),
        status                TEXT,
        previous_status       TEXT,
        status_detail         TEXT,
        order_id              TEXT,
        order_status          TEXT,
        order_total           TEXT,
        cart_created_at       TEXT,
        cart_created_at_raw   TEXT,
        registered_at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
            CONSTRAINT registered_at_is_a_timestamp
            CHECK (registered_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9][T ][0-9][0-9]:[0-9][0-9]*'),
        tracked_since         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
            CONSTRAINT tracked_since_is_a_timestamp
            CHECK (tracked_since GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9][T ][0-9][0-9]:[0-9][0-9]*'),
        next_poll_at          TEXT CONSTRAINT next_poll_at_is_a_timestamp CHECK (next_poll_at IS NULL
            OR next_poll_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9][T ][0-9][0-9]:[0-9][0-9]*'),
        last_polled_at        TEXT,
        status_changed_at     TEXT,
        consecutive_errors    INTEGER NOT NULL DEFAULT 0 CHECK (consecutive_errors >= 0),
        consecutive_not_found INTEGER NOT NULL DEFAULT 0 CHECK (consecutive_not_found >= 0),
        events_written        INTEGER NOT NULL DEFAULT 0 CHECK (events_written >= 0),
        last_error            TEXT,
        finished_at           TEXT
    ) STRICT;
    INSERT INTO carts_v8 (cart_key, cart_id, provider, account, session_token, reference, state, status,
                          previous_status, status_detail, order_id, order_status, order_total, cart_created_at,
                          cart_created_at_raw, registered_at, tracked_since, next_poll_at, last_polled_at,
                          status_changed_at, consecutive_errors, consecutive_not_found, events_written, last_error,
                          finished_at)
    SELECT cart_key, cart_id, provider, account, session_token, reference, state, status,
           previous_status, status_detail, order_id, order_status, order_total, cart_created_at,
           cart_created_at_raw, registered_at, tracked_since, next_poll_at, last_polled_at,
           status_changed_at, consecutive_errors, consecutive_not_found, events_written, last_error,
           finished_at
    FROM carts;
    DROP TABLE carts;
    ALTER TABLE carts_v8 RENAME TO carts;

    CREATE TABLE deliveries_v8 (
        sink            TEXT NOT NULL REFERENCES sinks (sink),
        event_seq       INTEGER NOT NULL REFERENCES events (seq) ON DELETE CASCADE,
        ordering_key    TEXT,
        state           TEXT NOT NULL DEFAULT 'pending' CONSTRAINT delivery_state_is_known
            CHECK (state = 'pending' OR state = 'delivered' OR state = 'dead' OR state = 'skipped'),
        attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        next_attempt_at TEXT NOT NULL CONSTRAINT next_attempt_at_is_a_timestamp
            CHECK (next_attempt_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9][T ][0-9][0-9]:[0-9][0-9]*'),
        last_attempt_at TEXT,
        last_status     INTEGER,
        last_error      TEXT,
        delivered_at    TEXT,
        dead_at         TEXT,
        PRIMARY KEY (sink, event_seq)
    ) STRICT, WITHOUT ROWID;
    INSERT INTO deliveries_v8 (sink, event_seq, ordering_key, state, attempts, next_attempt_at, last_attempt_at,
                               last_status, last_error, delivered_at, dead_at)
    SELECT sink, event_seq, ordering_key, state, attempts, next_attempt_at, last_attempt_at,
           last_status, last_error, delivered_at, dead_at
    FROM deliveries
    WHERE sink IN (SELECT sink FROM sinks) AND event_seq IN (SELECT seq FROM events);
    DROP TABLE deliveries;
    ALTER TABLE deliveries_v8 RENAME TO deliveries;
    PRAGMA ignore_check_constraints = OFF;
    "#,
];

/// The indexes and views the code relies on, in their current form. They are created when
/// missing every time the database is opened, so an index or view dropped by hand comes back
/// instead of making every sweep fail. A migration that changes one drops it; this puts the
/// new form in place.
const REQUIRED_OBJECTS: &str = r#"
    CREATE UNIQUE INDEX IF NOT EXISTS carts_by_cart_id ON carts (cart_id);
    CREATE INDEX IF NOT EXISTS carts_due ON carts (provider, next_poll_at, cart_key) WHERE state = 'tracking';
    CREATE INDEX IF NOT EXISTS carts_unchecked ON carts (cart_key) WHERE state = 'tracking' AND next_poll_at IS NULL;
    CREATE INDEX IF NOT EXISTS carts_by_state ON carts (state, status);
    CREATE INDEX IF NOT EXISTS cart_transitions_by_cart ON cart_transitions (cart_key, transition_id);
    CREATE INDEX IF NOT EXISTS cart_transitions_ordered_by_time ON cart_transitions (detected_at)
        WHERE to_status = 'Ordered';
    CREATE INDEX IF NOT EXISTS deliveries_pending_in_order ON deliveries (sink, event_seq) WHERE state = 'pending';
    CREATE INDEX IF NOT EXISTS deliveries_blocking_by_key ON deliveries (sink, ordering_key, event_seq)
        WHERE state IN ('pending', 'dead') AND ordering_key IS NOT NULL;
    CREATE INDEX IF NOT EXISTS deliveries_dead ON deliveries (sink, dead_at) WHERE state = 'dead';
    CREATE INDEX IF NOT EXISTS deliveries_by_event ON deliveries (event_seq);
    CREATE INDEX IF NOT EXISTS item_changes_by_cart ON item_changes (cart_id, change_id);

    CREATE VIEW IF NOT EXISTS cart_overview AS
        SELECT state, status, count(*) AS carts FROM carts GROUP BY state, status ORDER BY state, status;

    CREATE VIEW IF NOT EXISTS orders_today AS
        SELECT c.cart_id, c.order_id, c.reference, t.detected_at AS ordered_at
        FROM cart_transitions t JOIN carts c ON c.cart_key = t.cart_key
        WHERE t.to_status = 'Ordered' AND t.detected_at >= strftime('%Y-%m-%dT00:00:00.000Z', 'now')
        ORDER BY t.detected_at;

    CREATE VIEW IF NOT EXISTS carts_stuck_checked_out AS
        SELECT cart_id, reference, status_changed_at AS checked_out_since, last_polled_at, last_error
        FROM carts
        WHERE state = 'tracking' AND status = 'CheckedOut'
          AND status_changed_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 hour')
        ORDER BY status_changed_at;

    CREATE VIEW IF NOT EXISTS dead_letters AS
        SELECT d.sink, e.event_id, e.event_type, e.cart_id, d.attempts, d.last_status, d.last_error, d.dead_at
        FROM deliveries d JOIN events e ON e.seq = d.event_seq
        WHERE d.state = 'dead'
        ORDER BY d.dead_at;

    CREATE VIEW IF NOT EXISTS held_deliveries AS
        SELECT d.sink, e.event_id, e.event_type, e.cart_id, e.created_at,
               (SELECT x.event_id FROM deliveries b JOIN events x ON x.seq = b.event_seq
                WHERE b.sink = d.sink AND b.ordering_key = d.ordering_key AND b.state = 'dead'
                  AND b.event_seq < d.event_seq
                ORDER BY b.event_seq LIMIT 1) AS held_behind
        FROM deliveries d JOIN events e ON e.seq = d.event_seq
        WHERE d.state = 'pending' AND d.ordering_key IS NOT NULL
          AND EXISTS (SELECT 1 FROM deliveries b WHERE b.sink = d.sink AND b.ordering_key = d.ordering_key
                        AND b.state = 'dead' AND b.event_seq < d.event_seq)
        ORDER BY d.sink, d.event_seq;

    CREATE VIEW IF NOT EXISTS outbox_backlog AS
        SELECT s.sink, count(d.event_seq) AS pending, min(e.created_at) AS oldest_pending_event,
               min(d.next_attempt_at) AS next_attempt_at, s.disabled_reason
        FROM sinks s
        LEFT JOIN deliveries d ON d.sink = s.sink AND d.state = 'pending'
        LEFT JOIN events e ON e.seq = d.event_seq
        WHERE s.active = 1
        GROUP BY s.sink
        ORDER BY s.sink;
"#;

/// The schema version this build writes.
pub fn latest_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// Brings the schema up to date, then puts back any index or view the code needs that is
/// missing.
///
/// Fails when the database is newer than this build (a downgrade), its version is negative
/// (edited by hand), or a migration fails, in which case that migration's transaction is
/// rolled back and the version is unchanged.
pub fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if current > latest_version() {
        return Err(StoreError::TooNew { found: current, supported: latest_version() });
    }
    if current < 0 {
        return Err(StoreError::BadVersion { found: current });
    }
    let pending = usize::try_from(current).unwrap_or(usize::MAX);
    if pending < MIGRATIONS.len() {
        // Rebuilding a table needs the foreign keys off, which only works outside a
        // transaction; every migration is then checked before it commits.
        connection.execute_batch("PRAGMA foreign_keys = OFF")?;
        let migrated = apply_migrations(connection, pending);
        // A migration that failed half-way may have left the checks off.
        connection.execute_batch("PRAGMA foreign_keys = ON; PRAGMA ignore_check_constraints = OFF")?;
        migrated?;
        // The migrations leave out the indexes and views of the tables they rebuild; their
        // current forms go in here. That is no news, unlike one found missing later.
        connection.execute_batch(REQUIRED_OBJECTS)?;
    }
    repair_missing(connection)?;
    Ok(())
}

/// Creates the indexes and views the code needs that someone dropped, and says which. Cheap
/// when nothing is missing: a few lookups in `sqlite_schema`, so the daemon runs it at every
/// sweep.
///
/// Fails when the schema cannot be read or written.
pub fn repair_missing(connection: &Connection) -> Result<Vec<String>, StoreError> {
    let repaired = missing_objects(connection)?;
    if !repaired.is_empty() {
        connection.execute_batch(REQUIRED_OBJECTS)?;
        tracing::warn!(objects = %repaired.join(", "), "the database lacked indexes or views cartwatch needs; created them again");
    }
    Ok(repaired)
}

fn apply_migrations(connection: &mut Connection, from: usize) -> Result<(), StoreError> {
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(from) {
        let version = index as i64 + 1;
        let transaction = connection.transaction()?;
        let fail = |source: rusqlite::Error| StoreError::Migration { version, message: source.to_string() };
        transaction.execute_batch(sql).map_err(fail)?;
        if version == 7 {
            move_titelive_tokens(&transaction).map_err(fail)?;
        }
        let orphans: Option<String> =
            transaction.query_row("PRAGMA foreign_key_check", [], |row| row.get(0)).optional().map_err(fail)?;
        if let Some(table) = orphans {
            return Err(StoreError::Migration {
                version,
                message: format!("rows of {table} refer to rows that do not exist"),
            });
        }
        transaction.pragma_update(None, "user_version", version)?;
        transaction.commit()?;
        tracing::info!(version, "database schema migrated");
    }
    Ok(())
}

/// Titelive carts used their session token as their id, so the token (a credential for the
/// customer's session) was in every event, log line and output. From version 7 the id is
/// derived from the token and the token is kept only in `session_token`, for polling.
fn move_titelive_tokens(transaction: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    let tokens: Vec<(i64, String)> = {
        let mut statement = transaction.prepare("SELECT cart_key, cart_id FROM carts WHERE provider = 'titelive'")?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    if tokens.is_empty() {
        return Ok(());
    }
    transaction.execute_batch("CREATE TEMP TABLE token_ids (token TEXT PRIMARY KEY, cart_id TEXT NOT NULL)")?;
    for (key, token) in &tokens {
        let derived = crate::cart_id::derived_session_id(token);
        transaction.execute(
            "UPDATE carts SET cart_id = ?2, session_token = ?3 WHERE cart_key = ?1",
            rusqlite::params![key, derived, token],
        )?;
        transaction.execute("INSERT OR IGNORE INTO token_ids VALUES (?1, ?2)", rusqlite::params![token, derived])?;
    }
    transaction.execute_batch(
        "UPDATE cart_transitions SET cart_id = m.cart_id FROM token_ids m WHERE cart_transitions.cart_id = m.token;
         UPDATE events SET cart_id = m.cart_id, payload = replace(payload, m.token, m.cart_id)
             FROM token_ids m WHERE events.cart_id = m.token;
         UPDATE deliveries SET ordering_key = m.cart_id FROM token_ids m WHERE deliveries.ordering_key = m.token;
         DROP TABLE token_ids;",
    )
}

/// The names of required indexes and views that are not in the database.
fn missing_objects(connection: &Connection) -> Result<Vec<String>, StoreError> {
    let mut statement = connection.prepare_cached("SELECT 1 FROM sqlite_schema WHERE name = ?1")?;
    let mut missing = Vec::new();
    for name in REQUIRED_OBJECTS
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(4)
        .filter_map(|words| (words[0..3] == ["IF", "NOT", "EXISTS"]).then_some(words[3]))
    {
        if !statement.exists([name])? {
            missing.push(name.to_owned());
        }
    }
    Ok(missing)
}
