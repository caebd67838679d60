//! Fault injection: one test per kind of upstream or database trouble, each asserting the
//! requests sent and the state and events recorded; and a chaos run that must lose nothing.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::on_both_stores;
use cartwatch::clock::Clock;
use cartwatch::config::Config;
use cartwatch_simulator::{Fault, FaultSpec, Simulator, SimulatorSettings};

/// One round on `clock`, which the tests move instead of sleeping.
async fn poll_once(config: &Config, clock: &Clock) -> cartwatch::store::SweepRecord {
    poll_once_at(config, clock).await.sweep.record
}

async fn events_of_type(store: &Store, event_type: &str) -> Vec<cartwatch::outbox::StoredEvent> {
    store.events_after(0, 100_000).await.unwrap().into_iter().filter(|event| event.event_type == event_type).collect()
}

fn ok_requests(simulator: &Simulator) -> usize {
    simulator.request_log().iter().filter(|record| record.outcome == "ok").count()
}

/// A simulator whose carts stay put long enough for the test not to care about statuses.
fn slow_carts(carts: usize, unknown_carts: usize) -> SimulatorSettings {
    SimulatorSettings {
        seed: 17,
        carts,
        unknown_carts,
        min_dwell: 1000,
        max_dwell: 1000,
        ..SimulatorSettings::default()
    }
}

on_both_stores! {
async fn each_transient_fault_backs_off_the_batch_and_records_why(backend: Backend) {
    let cases = [
        (Fault::Code1, "error 1"),
        (Fault::Http500, "HTTP 500"),
        (Fault::Timeout, "timed out"),
        (Fault::Malformed, "cannot decode"),
    ];
    for (fault, expected_error) in cases {
        let directory = tempfile::tempdir().unwrap();
        let simulator = simulator(SimulatorSettings { hang_for: Duration::from_secs(3), ..slow_carts(25, 0) }).await;
        simulator.set_faults(FaultSpec { always: Some(fault), ..FaultSpec::default() });
        let mut config = config_on(&simulator, directory.path(), backend).await;
        config.imaterialise.request_timeout = Duration::from_millis(500);
        config.backoff.circuit_after = 100;
        config.backoff.transient_initial = Duration::from_secs(1);
        let store = store_for(&config).await;
        track_all(&store, &simulator).await;
        let clock = simulated_clock();

        let before = clock.now();
        let record = poll_once(&config, &clock).await;
        assert_eq!((record.requests, record.failures, record.transitions, record.events), (3, 3, 0, 0), "{fault:?}");
        for cart_id in simulator.cart_ids() {
            let cart = store.cart(cart_id.to_string()).await.unwrap().unwrap();
            assert_eq!(cart.consecutive_errors, 1, "{fault:?}");
            assert!(
                cart.last_error.as_deref().unwrap_or_default().contains(expected_error),
                "{fault:?}: {:?}",
                cart.last_error
            );
            let next = cart.next_poll_at.unwrap();
            assert!(
                next > before && next <= clock.now() + chrono::Duration::seconds(1),
                "full jitter within the first step"
            );
        }
        simulator.set_faults(FaultSpec::default());
        clock.advance(Duration::from_millis(1100));
        let record = poll_once(&config, &clock).await;
        assert_eq!((record.requests, record.failures, record.carts_polled), (3, 0, 25), "{fault:?}");
        let cart = store.cart(simulator.cart_ids()[0].to_string()).await.unwrap().unwrap();
        assert_eq!((cart.consecutive_errors, cart.last_error), (0, None));
        simulator.stop().await;
    }
}
}

on_both_stores! {
async fn code_102_halves_the_batch_size_and_remembers_it(backend: Backend) {
    let directory = tempfile::tempdir().unwrap();
    let simulator = simulator(slow_carts(20, 0)).await;
    simulator.set_faults(FaultSpec { max_ids: 4, ..FaultSpec::default() });
    let mut config = config_on(&simulator, directory.path(), backend).await;
    config.imaterialise.concurrency = 1;
    let store = store_for(&config).await;
    track_all(&store, &simulator).await;
    let clock = simulated_clock();

    let record = poll_once(&config, &clock).await;
    let log: Vec<(usize, &str)> = simulator.request_log().iter().map(|r| (r.cart_ids, r.outcome)).collect();
    assert_eq!(
        log,
        [
            (10, "code102"),
            (5, "code102"),
            (2, "ok"),
            (2, "ok"),
            (1, "ok"),
            (2, "ok"),
            (2, "ok"),
            (1, "ok"),
            (2, "ok"),
            (2, "ok"),
            (2, "ok"),
            (2, "ok"),
            (2, "ok")
        ]
    );
    assert_eq!(record.carts_polled, 20);
    let records = store.upstream_records().await.unwrap();
    assert_eq!(records[0].snapshot.batch_size, 2);

    // A new run (a restart) starts at the remembered size.
    clock.advance(Duration::from_millis(1100));
    poll_once(&config, &clock).await;
    let later: Vec<usize> = simulator.request_log()[13..].iter().map(|r| r.cart_ids).collect();
    assert_eq!(later, [2; 10]);
    simulator.stop().await;
}
}

on_both_stores! {
async fn code_501_is_isolated_to_the_cart_that_causes_it(backend: Backend) {
    let directory = tempfile::tempdir().unwrap();
    let simulator = simulator(slow_carts(10, 0)).await;
    let poison = simulator.cart_ids()[6].to_string();
    simulator.set_faults(FaultSpec { poison_cart: Some(poison.clone()), ..FaultSpec::default() });
    let mut config = config_on(&simulator, directory.path(), backend).await;
    config.imaterialise.concurrency = 1;
    let store = store_for(&config).await;
    track_all(&store, &simulator).await;
    let clock = simulated_clock();

    poll_once(&config, &clock).await;
    let log: Vec<(usize, &str)> = simulator.request_log().iter().map(|r| (r.cart_ids, r.outcome)).collect();
    // Halves until the poison is alone: 10 → 5 + 5 → (the poisoned 5) 2 + 3 → 1 + 1.
    assert_eq!(log, [(10, "code501"), (5, "ok"), (5, "code501"), (2, "code501"), (1, "ok"), (1, "code501"), (3, "ok")]);
    for cart_id in simulator.cart_ids() {
        let cart = store.cart(cart_id.to_string()).await.unwrap().unwrap();
        if cart.cart_id == poison {
            assert_eq!(cart.consecutive_errors, 1);
            assert!(
                cart.last_error.as_deref().unwrap().contains("error 501")
                    && cart.last_error.as_deref().unwrap().contains("isolated")
            );
            assert_eq!(cart.status, None);
        } else {
            assert_eq!((cart.consecutive_errors, cart.status.is_some()), (0, true), "{}", cart.cart_id);
        }
    }
    simulator.stop().await;
}
}

on_both_stores! {
async fn carts_not_found_n_times_in_a_row_are_given_up_with_an_event(backend: Backend) {
    let directory = tempfile::tempdir().unwrap();
    let simulator = simulator(slow_carts(0, 2)).await;
    let config = config_on(&simulator, directory.path(), backend).await;
    assert_eq!(config.backoff.not_found_after, 3);
    let store = store_for(&config).await;
    track_all(&store, &simulator).await;
    let clock = simulated_clock();

    for round in 1..=3 {
        let record = poll_once(&config, &clock).await;
        assert_eq!(record.requests, 1, "round {round}");
        if round < 3 {
            assert!(events_of_type(&store, "cart.not_found").await.is_empty());
            clock.advance(Duration::from_millis(1100));
        }
    }
    let given_up = events_of_type(&store, "cart.not_found").await;
    assert_eq!(given_up.len(), 2);
    for cart_id in simulator.unknown_cart_ids() {
        let cart = store.cart(cart_id.to_string()).await.unwrap().unwrap();
        assert_eq!((cart.state.as_str(), cart.next_poll_at), ("not_found", None));
        assert!(cart.last_error.unwrap().contains("101"));
    }
    clock.advance(Duration::from_millis(1100));
    assert_eq!(poll_once(&config, &clock).await.requests, 0, "no longer polled");
    simulator.stop().await;
}
}

on_both_stores! {
async fn retry_after_is_honoured(backend: Backend) {
    let directory = tempfile::tempdir().unwrap();
    let simulator = simulator(slow_carts(5, 0)).await;
    simulator.set_faults(FaultSpec { always: Some(Fault::Throttled(2)), ..FaultSpec::default() });
    let config = config_on(&simulator, directory.path(), backend).await;
    let store = store_for(&config).await;
    track_all(&store, &simulator).await;

    let daemon = RunningDaemon::start(config);
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let arrivals: Vec<Instant> = simulator.request_log().iter().map(|r| r.at).collect();
    assert!((2..=3).contains(&arrivals.len()), "{} requests in 5.5 s with Retry-After: 2", arrivals.len());
    for pair in arrivals.windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_millis(1990), "waited {:?}", pair[1] - pair[0]);
    }
    simulator.set_faults(FaultSpec::default());
    let recovered = wait_until(Duration::from_secs(5), async || ok_requests(&simulator) >= 1).await;
    daemon.stop().await;
    assert!(recovered);
    simulator.stop().await;
}
}

on_both_stores! {
async fn missing_and_unrequested_carts_in_an_answer_are_handled(backend: Backend) {
    let directory = tempfile::tempdir().unwrap();
    let simulator = simulator(slow_carts(6, 0)).await;
    let missing = simulator.cart_ids()[2].to_string();
    let stranger = "0badc0de-0000-4000-8000-000000000000".to_owned();
    simulator.set_faults(FaultSpec {
        omit_cart: Some(missing.clone()),
        extra_cart: Some(stranger.clone()),
        ..FaultSpec::default()
    });
    let config = config_on(&simulator, directory.path(), backend).await;
    let store = store_for(&config).await;
    track_all(&store, &simulator).await;
    let clock = simulated_clock();

    let record = poll_once(&config, &clock).await;
    assert_eq!((record.requests, record.carts_polled), (1, 6));
    let cart = store.cart(missing.clone()).await.unwrap().unwrap();
    assert_eq!(cart.consecutive_errors, 1);
    assert!(cart.last_error.unwrap().contains("did not mention"));
    assert!(store.cart(stranger).await.unwrap().is_none(), "an unrequested cart is not adopted");
    let others = simulator.cart_ids().into_iter().filter(|id| id.as_str() != missing);
    for cart_id in others {
        assert!(store.cart(cart_id.to_string()).await.unwrap().unwrap().status.is_some());
    }
    simulator.stop().await;
}
}

on_both_stores! {
async fn the_rate_limit_holds_even_when_many_carts_are_due_at_once(backend: Backend) {
    let directory = tempfile::tempdir().unwrap();
    let simulator = simulator(slow_carts(20, 0)).await;
    let mut config = config_on(&simulator, directory.path(), backend).await;
    config.imaterialise.batch_size = 1;
    config.imaterialise.concurrency = 8;
    config.imaterialise.requests_per_second = 5.0;
    let store = store_for(&config).await;
    track_all(&store, &simulator).await;
    let clock = simulated_clock();

    poll_once(&config, &clock).await;
    let arrivals: Vec<Instant> = simulator.request_log().iter().map(|r| r.at).collect();
    assert_eq!(arrivals.len(), 20);
    let mut sorted = arrivals.clone();
    sorted.sort();
    for pair in sorted.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(150),
            "two requests {:?} apart at 5 per second",
            pair[1] - pair[0]
        );
    }
    assert!(sorted[19] - sorted[0] >= Duration::from_millis(19 * 180));
    simulator.stop().await;
}
}

fn sqlite3_available() -> bool {
    std::process::Command::new("sqlite3").arg("-version").output().is_ok_and(|output| output.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_holding_the_write_lock_delays_but_never_drops_an_outcome() {
    let directory = tempfile::tempdir().unwrap();
    let simulator = simulator(slow_carts(30, 0)).await;
    let mut config = config_for(&simulator, directory.path());
    config.database.busy_timeout = Duration::from_millis(500);
    let store = store_for(&config).await;
    track_all(&store, &simulator).await;
    let clock = simulated_clock();
    drop(store);

    // An operator's sqlite3 session holds a write transaction for four seconds.
    let database = config.database.path.clone();
    let holder = if sqlite3_available() {
        let script = format!(
            "(echo 'BEGIN IMMEDIATE;'; echo \"UPDATE carts SET reference = 'held' WHERE 0;\"; sleep 4; echo 'COMMIT;') | sqlite3 '{}'",
            database.display()
        );
        let child = std::process::Command::new("sh").arg("-c").arg(script).spawn().unwrap();
        std::thread::spawn(move || {
            let mut child = child;
            child.wait().unwrap();
        })
    } else {
        let database = database.clone();
        std::thread::spawn(move || {
            let mut connection = rusqlite::Connection::open(database).unwrap();
            let transaction = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
            std::thread::sleep(Duration::from_secs(4));
            transaction.commit().unwrap();
        })
    };
    // Wait until the lock is really held.
    let probe = rusqlite::Connection::open(&database).unwrap();
    probe.busy_timeout(Duration::ZERO).unwrap();
    let locked =
        wait_until(Duration::from_secs(5), async || probe.execute_batch("BEGIN IMMEDIATE; ROLLBACK;").is_err()).await;
    assert!(locked, "the other process holds the lock");

    let started = Instant::now();
    let record = poll_once(&config, &clock).await;
    holder.join().unwrap();
    assert!(started.elapsed() >= Duration::from_secs(2), "the sweep waited for the lock");
    assert_eq!(record.requests, 3, "outcomes were retried, not fetched again");
    assert_eq!(record.carts_polled, 30, "every outcome was recorded");
    let store = store_for(&config).await;
    let summary = store.summary(clock.now()).await.unwrap();
    assert!(summary.carts.iter().all(|(_, status, _)| status.is_some()));
    simulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_write_loses_nothing_already_committed_and_is_retried_later() {
    let directory = tempfile::tempdir().unwrap();
    let simulator = simulator(SimulatorSettings {
        seed: 4,
        carts: 12,
        unknown_carts: 0,
        min_dwell: 2,
        max_dwell: 2,
        ..SimulatorSettings::default()
    })
    .await;
    let config = config_for(&simulator, directory.path());
    let store = store_for(&config).await;
    track_all(&store, &simulator).await;
    let clock = simulated_clock();
    poll_once(&config, &clock).await;
    let committed_events = store.events_after(0, 1000).await.unwrap();
    let committed_transitions = store.summary(clock.now()).await.unwrap().carts;

    // Every write to carts now fails, as on a full disk.
    let connection = rusqlite::Connection::open(&config.database.path).unwrap();
    connection
        .execute_batch("CREATE TRIGGER full_disk BEFORE UPDATE ON carts BEGIN SELECT RAISE(FAIL, 'database or disk is full'); END;")
        .unwrap();
    clock.advance(Duration::from_millis(1100));
    let record = poll_once(&config, &clock).await;
    assert_eq!((record.requests, record.carts_polled), (2, 0), "fetched, but nothing could be recorded");
    assert_eq!(store.events_after(0, 1000).await.unwrap(), committed_events, "nothing announced, nothing lost");
    assert_eq!(store.summary(clock.now()).await.unwrap().carts, committed_transitions);
    assert_eq!(store.due_count(clock.now()).await.unwrap(), 12, "the carts stay due");

    connection.execute_batch("DROP TRIGGER full_disk;").unwrap();
    let record = poll_once(&config, &clock).await;
    assert_eq!((record.requests, record.carts_polled), (2, 12), "retried by the next sweep");
    let events = store.events_after(0, 1000).await.unwrap();
    assert!(events.starts_with(&committed_events));
    simulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_inserted_by_hand_are_normalised_or_flagged_and_never_sent_malformed() {
    let directory = tempfile::tempdir().unwrap();
    let simulator = simulator(slow_carts(2, 0)).await;
    let config = config_for(&simulator, directory.path());
    let store = store_for(&config).await;
    let ids = simulator.cart_ids();
    let connection = rusqlite::Connection::open(&config.database.path).unwrap();
    // SQLite's own guards refuse what would stall work, naming the column or constraint.
    let refused = connection
        .execute(
            "INSERT INTO carts (cart_id, consecutive_errors) VALUES (?1, 'lots')",
            [ids[1].as_str().to_uppercase()],
        )
        .unwrap_err()
        .to_string();
    assert!(refused.contains("cannot store TEXT value in INTEGER column carts.consecutive_errors"), "{refused}");
    let refused = connection
        .execute("INSERT INTO carts (cart_id, next_poll_at) VALUES (?1, 'soon')", [ids[1].as_str().to_uppercase()])
        .unwrap_err()
        .to_string();
    assert!(refused.contains("next_poll_at_is_a_timestamp"), "{refused}");
    connection
        .execute_batch(&format!(
            "INSERT INTO carts (cart_id, reference) VALUES ('  {}  ', 'by hand');
             INSERT INTO carts (cart_id) VALUES ('not-a-guid');
             INSERT INTO carts (cart_id, next_poll_at) VALUES ('{}', '2020-01-01 00:00:00');",
            ids[0].as_str().to_uppercase(),
            ids[1].as_str().to_uppercase()
        ))
        .unwrap();

    let clock = simulated_clock();
    let record = poll_once(&config, &clock).await;
    assert_eq!((record.requests, record.carts_polled), (1, 2));
    assert_eq!(simulator.batch_sizes(), [2]);
    for cart_id in &ids {
        let cart = store.cart(cart_id.to_string()).await.unwrap().expect("stored under the canonical id");
        assert!(cart.status.is_some());
    }
    assert_eq!(store.cart(ids[0].to_string()).await.unwrap().unwrap().reference.as_deref(), Some("by hand"));
    let summary = store.summary(clock.now()).await.unwrap();
    assert_eq!(summary.invalid.len(), 1);
    assert_eq!(summary.invalid[0].0, "not-a-guid");
    assert!(summary.invalid[0].1.contains("malformed cart id"));
    simulator.stop().await;
}

on_both_stores! {
async fn carts_past_their_maximum_age_expire_with_an_event(backend: Backend) {
    let directory = tempfile::tempdir().unwrap();
    let simulator =
        simulator(SimulatorSettings { seed: 8, carts: 20, unknown_carts: 0, ..SimulatorSettings::default() }).await;
    let mut config = config_on(&simulator, directory.path(), backend).await;
    // The simulator's carts were created minutes ago, before they were registered; their
    // maximum age of one second counts from registration, and expiry needs two polls past it.
    config.cadence.max_age = Duration::from_secs(1);
    let store = store_for(&config).await;
    track_all(&store, &simulator).await;
    let clock = simulated_clock();
    let summary = async || store.summary(clock.now()).await.unwrap();
    let count = |summary: &cartwatch::store::Summary, state: &str| {
        summary.carts.iter().filter(|(s, _, _)| s == state).map(|(_, _, n)| n).sum::<u64>()
    };
    poll_once(&config, &clock).await;
    assert_eq!(count(&summary().await, "expired"), 0, "registered a moment ago");
    clock.advance(Duration::from_millis(1100));
    poll_once(&config, &clock).await;
    assert_eq!(count(&summary().await, "expired"), 0, "one poll past the maximum age is not enough");
    clock.advance(Duration::from_millis(1100));
    poll_once(&config, &clock).await;
    let summary = summary().await;
    assert_eq!(count(&summary, "expired") + count(&summary, "ordered"), 20);
    assert!(count(&summary, "expired") > 0);
    assert_eq!(events_of_type(&store, "cart.expired").await.len() as u64, count(&summary, "expired"));
    clock.advance(Duration::from_millis(1100));
    assert_eq!(poll_once(&config, &clock).await.requests, 0);
    simulator.stop().await;
}
}

on_both_stores! {
async fn chaos_loses_no_transition_and_announces_each_once(backend: Backend) {
    let directory = tempfile::tempdir().unwrap();
    let settings = SimulatorSettings {
        seed: 21,
        carts: 30,
        unknown_carts: 0,
        min_dwell: 2,
        max_dwell: 3,
        hang_for: Duration::from_secs(1),
        faults: FaultSpec::parse("401:0.05,code1:0.1,5xx:0.1,timeout:0.05,malformed:0.1").unwrap(),
        ..SimulatorSettings::default()
    };
    let simulator = simulator(settings).await;
    let mut config = config_on(&simulator, directory.path(), backend).await;
    config.imaterialise.request_timeout = Duration::from_millis(500);
    config.backoff.transient_initial = Duration::from_millis(200);
    config.backoff.transient_max = Duration::from_secs(1);
    config.backoff.auth_initial = Duration::from_millis(500);
    config.backoff.auth_max = Duration::from_secs(2);
    config.backoff.circuit_after = 4;
    let store = store_for(&config).await;
    track_all(&store, &simulator).await;

    let daemon = RunningDaemon::start(config);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let faults_injected = simulator.stats().faults.load(std::sync::atomic::Ordering::Relaxed);
    simulator.set_faults(FaultSpec::default());
    let matched = wait_until(Duration::from_secs(60), async || {
        simulator.settled()
            && checkouts_and_orders(&logged_events(directory.path())) == true_checkouts_and_orders(&simulator)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    daemon.stop().await;
    assert_eq!(checkouts_and_orders(&logged_events(directory.path())), true_checkouts_and_orders(&simulator));
    assert!(matched, "{} carts unsettled", simulator.unsettled());
    assert!(faults_injected >= 5, "only {faults_injected} faults injected");
    for transition in simulator.truth().into_iter().filter(|t| t.to == "Ordered") {
        let cart = store.cart(transition.cart_id.clone()).await.unwrap().unwrap();
        assert_eq!(cart.order_id, transition.order_id);
    }
    simulator.stop().await;
}
}
