//! The PostgreSQL schema: the tables and operator views SQLite has, with native types
//! (`timestamptz`, `boolean`), plus what sharing needs: leases on carts and deliveries, the
//! probe lease and rate bucket of each upstream, and the members. Append-only migrations
//! keyed by `cartwatch_schema.version`, applied under an advisory lock so daemons starting
//! together migrate once.

use crate::store::StoreError;

/// Every migration, in order. Never edit one that shipped; append a new one.
pub const MIGRATIONS: &[&str] = &[
    // 1: everything.
    r#"
    CREATE TABLE carts (
        cart_key              bigserial PRIMARY KEY,
        cart_id               text NOT NULL UNIQUE,
        provider              text NOT NULL DEFAULT 'imaterialise',
        account               text NOT NULL DEFAULT '',
        session_token         text,
        reference             text,
        state                 text NOT NULL DEFAULT 'tracking' CONSTRAINT state_is_known
            CHECK (state IN ('tracking', 'ordered', 'not_found', 'expired', 'untracked', 'invalid')),
        status                text,
        previous_status       text,
        status_detail         text,
        order_id              text,
        order_status          text,
        order_total           text,
        cart_created_at       timestamp,
        cart_created_at_raw   text,
        registered_at         timestamptz NOT NULL DEFAULT now(),
        tracked_since         timestamptz NOT NULL DEFAULT now(),
        next_poll_at          timestamptz,
        last_polled_at        timestamptz,
        status_changed_at     timestamptz,
        consecutive_errors    integer NOT NULL DEFAULT 0 CHECK (consecutive_errors >= 0),
        consecutive_not_found integer NOT NULL DEFAULT 0 CHECK (consecutive_not_found >= 0),
        events_written        integer NOT NULL DEFAULT 0 CHECK (events_written >= 0),
        last_error            text,
        finished_at           timestamptz,
        lease_owner           text,
        lease_until           timestamptz
    );
    CREATE INDEX carts_due ON carts (provider, next_poll_at, cart_key) WHERE state = 'tracking';
    CREATE INDEX carts_unchecked ON carts (cart_key) WHERE state = 'tracking' AND next_poll_at IS NULL;
    CREATE INDEX carts_by_state ON carts (state, status);

    CREATE TABLE cart_transitions (
        transition_id bigserial PRIMARY KEY,
        cart_key      bigint NOT NULL REFERENCES carts (cart_key) ON DELETE CASCADE,
        cart_id       text NOT NULL,
        from_status   text,
        to_status     text NOT NULL,
        order_id      text,
        detected_at   timestamptz NOT NULL,
        event_id      text
    );
    CREATE INDEX cart_transitions_by_cart ON cart_transitions (cart_key, transition_id);
    CREATE INDEX cart_transitions_ordered_by_time ON cart_transitions (detected_at) WHERE to_status = 'Ordered';

    CREATE TABLE events (
        seq           bigserial PRIMARY KEY,
        event_id      text NOT NULL UNIQUE,
        event_type    text NOT NULL,
        cart_id       text,
        cart_sequence integer CHECK (cart_sequence IS NULL OR cart_sequence >= 1),
        created_at    timestamptz NOT NULL,
        payload       text NOT NULL
    );

    CREATE TABLE sinks (
        sink            text PRIMARY KEY,
        kind            text NOT NULL CHECK (kind IN ('log', 'webhook')),
        target          text NOT NULL DEFAULT '',
        event_types     text,
        active          boolean NOT NULL DEFAULT true,
        disabled_at     timestamptz,
        disabled_reason text,
        created_at      timestamptz NOT NULL
    );

    CREATE TABLE deliveries (
        sink            text NOT NULL REFERENCES sinks (sink),
        event_seq       bigint NOT NULL REFERENCES events (seq) ON DELETE CASCADE,
        ordering_key    text,
        state           text NOT NULL DEFAULT 'pending' CONSTRAINT delivery_state_is_known
            CHECK (state IN ('pending', 'delivered', 'dead', 'skipped')),
        attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        next_attempt_at timestamptz NOT NULL,
        last_attempt_at timestamptz,
        last_status     integer,
        last_error      text,
        delivered_at    timestamptz,
        dead_at         timestamptz,
        lease_owner     text,
        lease_until     timestamptz,
        PRIMARY KEY (sink, event_seq)
    );
    CREATE INDEX deliveries_pending_in_order ON deliveries (sink, event_seq) WHERE state = 'pending';
    CREATE INDEX deliveries_blocking_by_key ON deliveries (sink, ordering_key, event_seq)
        WHERE state IN ('pending', 'dead') AND ordering_key IS NOT NULL;
    CREATE INDEX deliveries_dead ON deliveries (sink, dead_at) WHERE state = 'dead';
    CREATE INDEX deliveries_by_event ON deliveries (event_seq);

    CREATE TABLE item_changes (
        change_id           bigserial PRIMARY KEY,
        cart_id             text NOT NULL,
        cart_item_id        text NOT NULL,
        action              text NOT NULL CHECK (action IN ('add', 'remove')),
        quantity            bigint,
        my_sales_unit_price text,
        imat_unit_price     text,
        currency            text,
        valid_until         text,
        changed_at          timestamptz NOT NULL,
        event_id            text
    );
    CREATE INDEX item_changes_by_cart ON item_changes (cart_id, change_id);

    CREATE TABLE upstream_state (
        provider             text PRIMARY KEY,
        mode                 text NOT NULL CHECK (mode IN ('healthy', 'circuit_open', 'auth_paused')),
        since                timestamptz,
        next_probe_at        timestamptz,
        step                 integer NOT NULL DEFAULT 0 CHECK (step >= 0),
        consecutive_failures integer NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
        throttled_until      timestamptz,
        batch_size           integer NOT NULL CHECK (batch_size BETWEEN 1 AND 10),
        last_success_at      timestamptz,
        last_error_at        timestamptz,
        last_error           text,
        updated_at           timestamptz NOT NULL,
        probe_owner          text,
        probe_until          timestamptz
    );

    CREATE TABLE rate_limits (
        provider   text PRIMARY KEY,
        tokens     double precision NOT NULL,
        updated_at timestamptz NOT NULL
    );

    CREATE TABLE members (
        member_id  text PRIMARY KEY,
        host       text NOT NULL,
        pid        integer NOT NULL,
        version    text NOT NULL,
        started_at timestamptz NOT NULL,
        last_seen  timestamptz NOT NULL
    );

    CREATE TABLE sweeps (
        sweep_id       bigserial PRIMARY KEY,
        provider       text,
        member_id      text,
        started_at     timestamptz NOT NULL,
        finished_at    timestamptz,
        carts_polled   bigint NOT NULL DEFAULT 0,
        requests       bigint NOT NULL DEFAULT 0,
        failures       bigint NOT NULL DEFAULT 0,
        write_failures bigint NOT NULL DEFAULT 0,
        transitions    bigint NOT NULL DEFAULT 0,
        events         bigint NOT NULL DEFAULT 0,
        stopped_early  text
    );

    CREATE VIEW cart_overview AS
        SELECT state, status, count(*) AS carts FROM carts GROUP BY state, status ORDER BY state, status;

    CREATE VIEW orders_today AS
        SELECT c.cart_id, c.order_id, c.reference, t.detected_at AS ordered_at
        FROM cart_transitions t JOIN carts c ON c.cart_key = t.cart_key
        WHERE t.to_status = 'Ordered' AND t.detected_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
        ORDER BY t.detected_at;

    CREATE VIEW carts_stuck_checked_out AS
        SELECT cart_id, reference, status_changed_at AS checked_out_since, last_polled_at, last_error
        FROM carts
        WHERE state = 'tracking' AND status = 'CheckedOut' AND status_changed_at < now() - interval '1 hour'
        ORDER BY status_changed_at;

    CREATE VIEW dead_letters AS
        SELECT d.sink, e.event_id, e.event_type, e.cart_id, d.attempts, d.last_status, d.last_error, d.dead_at
        FROM deliveries d JOIN events e ON e.seq = d.event_seq
        WHERE d.state = 'dead'
        ORDER BY d.dead_at;

    CREATE VIEW held_deliveries AS
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

    CREATE VIEW outbox_backlog AS
        SELECT s.sink, count(d.event_seq) AS pending, min(e.created_at) AS oldest_pending_event,
               min(d.next_attempt_at) AS next_attempt_at, s.disabled_reason
        FROM sinks s
        LEFT JOIN deliveries d ON d.sink = s.sink AND d.state = 'pending'
        LEFT JOIN events e ON e.seq = d.event_seq
        WHERE s.active
        GROUP BY s.sink, s.disabled_reason
        ORDER BY s.sink;

    CREATE VIEW members_overview AS
        SELECT member_id, host, pid, version, started_at, last_seen,
               (SELECT count(*) FROM carts c WHERE c.lease_owner = m.member_id AND c.lease_until > now()) AS carts_claimed
        FROM members m ORDER BY started_at;
    "#,
];

/// The latest schema version this build knows.
pub fn latest_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// The lock every member takes while migrating, so that members starting together migrate
/// once.
const MIGRATION_LOCK: i64 = 0x6361_7274_7761_7463;

/// Brings the schema up to date.
///
/// Fails when the database's schema is newer than this build, or a migration fails (it is
/// rolled back).
pub async fn migrate(client: &mut deadpool_postgres::Object) -> Result<(), StoreError> {
    let transaction = client.transaction().await?;
    transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    let exists: bool = transaction.query_one("SELECT to_regclass('cartwatch_schema') IS NOT NULL", &[]).await?.get(0);
    if !exists {
        transaction.batch_execute("CREATE TABLE cartwatch_schema (version integer NOT NULL)").await?;
    }
    let found: Option<i32> =
        transaction.query_opt("SELECT version FROM cartwatch_schema", &[]).await?.map(|row| row.get(0));
    let found = i64::from(found.unwrap_or(0));
    if found > latest_version() {
        return Err(StoreError::TooNew { found, supported: latest_version() });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = index as i64 + 1;
        transaction
            .batch_execute(sql)
            .await
            .map_err(|error| StoreError::Migration { version, message: error.to_string() })?;
    }
    transaction.execute("DELETE FROM cartwatch_schema", &[]).await?;
    transaction.execute("INSERT INTO cartwatch_schema (version) VALUES ($1)", &[&(latest_version() as i32)]).await?;
    transaction.commit().await?;
    Ok(())
}
