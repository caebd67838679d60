//! The polling plan in the daemon, against the built-in simulator on a manual clock: carts
//! are scheduled as the planner says, and the free seats of a sweep's last request carry the
//! carts due soonest.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use crate::on_both_stores;
use cartwatch::clock::Clock;
use cartwatch::config::{Config, PlanMode};
use cartwatch::model::{CartState, StatusModel};
use cartwatch::reconcile::{Context, situation};
use cartwatch::time::{add, format_ts};
use cartwatch_simulator::{Simulator, SimulatorSettings};

fn slow_carts(carts: usize) -> SimulatorSettings {
    SimulatorSettings {
        seed: 23,
        carts,
        unknown_carts: 0,
        min_dwell: 1000,
        max_dwell: 1000,
        ..SimulatorSettings::default()
    }
}

/// A config following the budget plan without jitter, on SQLite.
fn budget_config(
    simulator: &Simulator,
    directory: &std::path::Path,
    requests_per_day: u64,
    min_interval: Duration,
) -> Config {
    let config = config_for(simulator, directory);
    with_budget(config, requests_per_day, min_interval)
}

/// `config` following the budget plan without jitter.
fn with_budget(mut config: Config, requests_per_day: u64, min_interval: Duration) -> Config {
    config.plan.mode = PlanMode::Budget;
    config.plan.requests_per_day = requests_per_day;
    config.plan.min_interval = min_interval;
    config.cadence.checked_out_every = min_interval;
    config
}

/// The plan the daemon sizes at `clock`'s time, built the way `cartwatch plan` builds it.
async fn plan_at(store: &Store, config: &Config, clock: &Clock) -> cartwatch::planning::Planned {
    let provider = config.providers().get("imaterialise").unwrap();
    let model = Arc::clone(&provider) as Arc<dyn StatusModel>;
    cartwatch::planning::build(store.as_ref(), &config.plan, &config.rules(), model, 10, 0.0, clock.now())
        .await
        .unwrap()
}

on_both_stores! {
async fn the_daemon_schedules_each_cart_as_the_planner_says(backend: Backend) {
    let directory = tempfile::tempdir().unwrap();
    let simulator = simulator(slow_carts(40)).await;
    // 100 requests a day for 40 carts: about an hour between polls, shared by the square-root rule.
    let config = with_budget(config_on(&simulator, directory.path(), backend).await, 100, Duration::from_secs(5 * 60));
    let store = store_for(&config).await;
    track_all(&store, &simulator).await;
    let clock = simulated_clock();

    // The same rows at the same time: the plan the daemon sizes before its sweep.
    let planned = plan_at(&store, &config, &clock).await;
    assert!(matches!(planned.plan, cartwatch::plan::Plan::Budget(_)), "{:?}", planned.plan);
    assert!((planned.figures.budget_requests_per_day - 100.0).abs() < 1e-9);
    poll_once_at(&config, &clock).await;

    let provider = config.providers().get("imaterialise").unwrap();
    let rules = Arc::new(config.rules().with_plan(planned.plan.clone()));
    let mut intervals = HashSet::new();
    for cart_id in simulator.cart_ids() {
        let cart = store.cart(cart_id.clone()).await.unwrap().unwrap();
        assert_eq!(cart.state, CartState::Tracking, "{cart:?}");
        let polled = cart.last_polled_at.expect("polled");
        let context =
            Context { now: polled, rules: Arc::clone(&rules), model: Arc::clone(&provider) as Arc<dyn StatusModel> };
        let interval = planned.plan.interval(&situation(&cart, &context));
        let stored = cart.next_poll_at.expect("scheduled");
        // Both stored truncated to the millisecond: at most one apart.
        let off = (stored - add(polled, interval)).num_microseconds().unwrap().abs();
        assert!(
            off <= 1_000,
            "{cart_id} ({:?}): stored {stored}, the planner's {interval:?} after {polled}",
            cart.status
        );
        assert!(interval >= config.plan.min_interval && interval <= config.plan.max_interval);
        intervals.insert(interval);
    }
    assert!(intervals.iter().all(|interval| *interval != Duration::from_secs(1)), "not the tiers' one second");
    assert!(intervals.len() > 1, "carts of different status or age get different intervals: {intervals:?}");
    simulator.stop().await;
}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_seats_carry_the_carts_due_soonest_and_save_requests() {
    let directory = tempfile::tempdir().unwrap();
    let simulator = simulator(slow_carts(25)).await;
    // A generous budget: every cart polled again after the shortest interval, half an hour.
    let config = budget_config(&simulator, directory.path(), 100_000, Duration::from_secs(30 * 60));
    let store = store_for(&config).await;
    track_all(&store, &simulator).await;
    let clock = simulated_clock();
    let start = clock.now();
    // 12 carts due now; 13 due one to thirteen minutes from now.
    let ids = simulator.cart_ids();
    let connection = rusqlite::Connection::open(&config.database.path).unwrap();
    for (index, cart_id) in ids.iter().enumerate() {
        let due = if index < 12 { start } else { add(start, Duration::from_secs(60 * (index as u64 - 11))) };
        connection
            .execute(
                "UPDATE carts SET next_poll_at = ?1 WHERE cart_id = ?2",
                rusqlite::params![format_ts(due), cart_id],
            )
            .unwrap();
    }
    drop(connection);

    let first = poll_once_at(&config, &clock).await;
    // Two requests for the 12 due carts, the second one's 8 free seats filled with the 8
    // carts due soonest.
    assert_eq!((first.sweep.record.requests, first.sweep.record.carts_polled), (2, 20), "{:?}", first.sweep.record);
    for (index, cart_id) in ids.iter().enumerate() {
        let cart = store.cart(cart_id.clone()).await.unwrap().unwrap();
        assert_eq!(cart.last_polled_at.map(format_ts) == Some(format_ts(start)), index < 20, "{index}: {cart:?}");
    }
    // Thirteen minutes on, the five carts left are due; their request fills its five free
    // seats with carts polled in the first sweep (due again within the hour).
    clock.advance(Duration::from_secs(13 * 60));
    let second = poll_once_at(&config, &clock).await;
    assert_eq!((second.sweep.record.requests, second.sweep.record.carts_polled), (1, 10), "{:?}", second.sweep.record);

    let log = simulator.request_log();
    assert!(log.iter().all(|request| request.cart_ids <= 10), "never more than 10 carts a request");
    for sweep in [&log[..2], &log[2..]] {
        let mut seen = HashSet::new();
        for cart in sweep.iter().flat_map(|request| &request.asked) {
            assert!(seen.insert(cart.clone()), "{cart} asked about twice in one sweep");
        }
    }
    for cart_id in &ids {
        let cart = store.cart(cart_id.clone()).await.unwrap().unwrap();
        assert!(cart.last_polled_at.is_some(), "every due cart polled: {cart_id}");
    }
    // Without filling: ⌈12/10⌉ now and ⌈13/10⌉ as the others come due, four requests.
    let without_filling = 12_usize.div_ceil(10) + 13_usize.div_ceil(10);
    assert!(log.len() < without_filling, "{} requests, {without_filling} without filling", log.len());
    simulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_and_status_explain_the_schedule() {
    let directory = tempfile::tempdir().unwrap();
    let simulator = simulator(slow_carts(10)).await;
    let config = budget_config(&simulator, directory.path(), 100, Duration::from_secs(5 * 60));
    let store = store_for(&config).await;
    track_all(&store, &simulator).await;
    poll_once_at(&config, &simulated_clock()).await;
    let file = directory.path().join("cartwatch.toml");
    std::fs::write(
        &file,
        format!(
            "[database]\npath = {:?}\n[imaterialise]\nbase_url = {:?}\n[cadence]\nchecked_out_every = \"5m\"\n\
             [plan]\nmode = \"budget\"\nrequests_per_day = 100\nmin_interval = \"5m\"\n",
            config.database.path.display().to_string(),
            simulator.base_url()
        ),
    )
    .unwrap();
    let run = |arguments: &[&str]| {
        let output = std::process::Command::new(BINARY).arg("--config").arg(&file).args(arguments).output().unwrap();
        assert!(output.status.success(), "{arguments:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };

    let plan: serde_json::Value = serde_json::from_str(run(&["plan", "--json"]).trim()).unwrap();
    assert_eq!((plan["provider"].as_str(), plan["mode"].as_str()), (Some("imaterialise"), Some("budget")));
    assert_eq!(plan["budgetRequestsPerDay"], 100.0);
    assert_eq!(plan["cartsTracked"], 10);
    let expected = plan["expectedRequestsPerDay"].as_f64().unwrap();
    assert!((90.0..=110.0).contains(&expected), "the plan spends its budget: {plan}");
    let hazards = plan["hazards"].as_array().unwrap();
    assert!(hazards.iter().any(|row| row["status"] == "CheckedOut"), "{plan}");
    for row in hazards {
        let interval = row["intervalSeconds"].as_f64().unwrap();
        assert!((300.0..=21_600.0).contains(&interval), "{row}");
    }
    assert!(run(&["plan"]).contains("chance/hour"));

    let cart_id = &simulator.cart_ids()[0];
    let status = run(&["status", cart_id]);
    assert!(status.contains("Next poll"), "{status}");
    assert!(status.contains("within 100 requests a day"), "{status}");
    let summary = run(&["status"]);
    assert!(summary.contains("plan imaterialise: budget 100 requests a day"), "{summary}");
    simulator.stop().await;
}
