//! The daemon against the simulator: every true checkout and order is announced exactly once,
//! OrderIDs land in SQLite, a one-off sweep sends the fewest requests, and the database stays
//! readable by another connection while the daemon writes.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::*;
use crate::on_both_stores;
use cartwatch_simulator::SimulatorSettings;

on_both_stores! {
async fn every_true_checkout_and_order_is_announced_exactly_once(backend: Backend) {
    let directory = tempfile::tempdir().unwrap();
    let simulator =
        simulator(SimulatorSettings { seed: 11, carts: 40, unknown_carts: 3, ..SimulatorSettings::default() }).await;
    let config = config_on(&simulator, directory.path(), backend).await;
    let store = store_for(&config).await;
    let tracked = track_all(&store, &simulator).await;
    assert_eq!(tracked, 43);

    let daemon = RunningDaemon::start(config.clone());
    // Another connection reads throughout, as an operator with sqlite3 or psql would.
    let reader = tokio::spawn({
        let config = config.clone();
        async move {
            let mut reads = 0;
            let started = std::time::Instant::now();
            while started.elapsed() < Duration::from_secs(8) {
                assert_eq!(count_carts_elsewhere(&config).await, 43);
                reads += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            reads
        }
    });

    let settled = wait_until(Duration::from_secs(60), async || {
        simulator.settled()
            && checkouts_and_orders(&logged_events(directory.path())) == true_checkouts_and_orders(&simulator)
    })
    .await;
    assert!(reader.await.unwrap() > 50);
    // A little longer, to be sure nothing is announced twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    daemon.stop().await;
    let events = logged_events(directory.path());
    let expected = true_checkouts_and_orders(&simulator);
    assert_eq!(checkouts_and_orders(&events), expected);
    assert!(settled, "{} carts unsettled", simulator.unsettled());
    assert!(
        expected.iter().any(|(_, kind)| kind == "cart.ordered")
            && expected.iter().any(|(_, kind)| kind == "cart.checked_out")
    );

    // Each event id once, each unknown cart given up on once.
    let mut ids: Vec<&str> = events.iter().map(|event| event["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), events.len());
    let mut not_found: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "cart.not_found")
        .map(|e| e["data"]["cartId"].as_str().unwrap())
        .collect();
    not_found.sort();
    let mut unknown: Vec<String> = simulator.unknown_cart_ids().iter().map(ToString::to_string).collect();
    unknown.sort();
    assert_eq!(not_found, unknown);

    // The right OrderIDs in the store, and the carts no longer polled.
    let mut orders = 0;
    for transition in simulator.truth().into_iter().filter(|t| t.to == "Ordered") {
        let cart = store.cart(transition.cart_id.clone()).await.unwrap().unwrap();
        assert_eq!(cart.order_id, transition.order_id, "cart {}", transition.cart_id);
        assert_eq!(cart.state.as_str(), "ordered");
        assert_eq!(cart.next_poll_at, None);
        orders += 1;
    }
    assert!(orders > 10);

    // The order events carry the order id and the previous status.
    let ordered: Vec<&serde_json::Value> = events.iter().filter(|e| e["type"] == "cart.ordered").collect();
    assert!(ordered.iter().all(|e| e["data"]["orderId"].is_string() && e["data"]["provider"] == "imaterialise"));
    simulator.stop().await;
}
}

on_both_stores! {
async fn poll_once_sends_the_fewest_requests_for_the_due_carts(backend: Backend) {
    let directory = tempfile::tempdir().unwrap();
    let simulator =
        simulator(SimulatorSettings { seed: 3, carts: 93, unknown_carts: 0, ..SimulatorSettings::default() }).await;
    let config = config_on(&simulator, directory.path(), backend).await;
    let store = store_for(&config).await;
    assert_eq!(track_all(&store, &simulator).await, 93);

    let record = poll_once(&config).await.sweep.record;
    assert_eq!(simulator.requests(), 10, "ceil(93 / 10) requests");
    assert_eq!(simulator.batch_sizes().iter().sum::<usize>(), 93);
    assert!(simulator.batch_sizes().iter().all(|size| *size <= 10));
    assert_eq!(record.carts_polled, 93);
    assert_eq!(record.requests, 10);

    // Nothing is due right after: a second run sends nothing.
    poll_once(&config).await;
    assert_eq!(simulator.requests(), 10);
    // Every cart got a status, and the events of this sweep reached the log sink.
    let summary = store.summary(chrono::Utc::now()).await.unwrap();
    let seen: u64 = summary.carts.iter().filter(|(_, status, _)| status.is_some()).map(|(_, _, count)| count).sum();
    assert_eq!(seen, 93);
    let logged = logged_events(directory.path()).len() as u64;
    assert_eq!(logged, summary.events);
    simulator.stop().await;
}
}

on_both_stores! {
async fn batch_size_and_xml_are_honoured_end_to_end(backend: Backend) {
    let directory = tempfile::tempdir().unwrap();
    let simulator =
        simulator(SimulatorSettings { seed: 5, carts: 12, unknown_carts: 1, ..SimulatorSettings::default() }).await;
    let mut config = config_on(&simulator, directory.path(), backend).await;
    config.imaterialise.batch_size = 4;
    config.imaterialise.format = cartwatch::config::WireFormat::Xml;
    let store = store_for(&config).await;
    track_all(&store, &simulator).await;
    poll_once(&config).await;
    let mut sizes = simulator.batch_sizes();
    sizes.sort();
    assert_eq!(sizes, [1, 4, 4, 4]);
    let summary = store.summary(chrono::Utc::now()).await.unwrap();
    let by_status: BTreeMap<Option<String>, u64> = summary
        .carts
        .iter()
        .map(|(_, status, count)| (status.clone(), *count))
        .fold(BTreeMap::new(), |mut map, (status, count)| {
            *map.entry(status).or_default() += count;
            map
        });
    assert_eq!(by_status.get(&None), Some(&1), "only the unknown cart has no status: {by_status:?}");
    simulator.stop().await;
}
}

on_both_stores! {
/// A partner's bad day, a few seconds of each: creation dates of `0001-01-01`, orders without
/// their OrderID, and every cart listed twice with a stale copy first. Every order still
/// reaches the log sink and a webhook with its OrderID, exactly once each; no cart expires;
/// no checkout is announced more often than it happened.
async fn a_partners_bad_day_loses_no_order_and_announces_nothing_twice(backend: Backend) {
    use cartwatch_simulator::FaultSpec;
    let directory = tempfile::tempdir().unwrap();
    let settings = SimulatorSettings {
        seed: 29,
        carts: 40,
        unknown_carts: 0,
        min_dwell: 2,
        max_dwell: 4,
        ..SimulatorSettings::default()
    };
    let simulator = simulator(settings).await;
    let receiver = TestReceiver::start("127.0.0.1:0".parse().unwrap(), WEBHOOK_SECRET).await;
    let mut config = config_on(&simulator, directory.path(), backend).await;
    // Short enough that any date believed from those answers would expire the cart at once.
    config.cadence.max_age = Duration::from_secs(3600);
    add_webhook(&mut config, "erp", &receiver.url(), WEBHOOK_SECRET);
    let store = store_for(&config).await;
    track_all(&store, &simulator).await;
    let daemon = RunningDaemon::start(config.clone());
    for fault in ["zero-date:1", "no-order-id:1", "stale-duplicate:1"] {
        simulator.set_faults(FaultSpec::parse(fault).unwrap());
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    simulator.set_faults(FaultSpec::default());

    let true_orders = || {
        let mut orders: Vec<(String, String)> = simulator
            .truth()
            .into_iter()
            .filter(|t| t.to == "Ordered")
            .map(|t| (t.cart_id, t.order_id.unwrap()))
            .collect();
        orders.sort();
        orders
    };
    let orders_in = |events: &[serde_json::Value]| {
        let mut orders: Vec<(String, String)> = events
            .iter()
            .filter(|event| event["type"] == "cart.ordered")
            .map(|event| {
                let data = &event["data"];
                (data["cartId"].as_str().unwrap().to_owned(), data["orderId"].as_str().unwrap_or("(none)").to_owned())
            })
            .collect();
        orders.sort();
        orders
    };
    let webhook_events = || -> Vec<serde_json::Value> {
        first_deliveries(&receiver.received()).into_iter().map(|delivery| delivery.body).collect()
    };
    let settled = wait_until(Duration::from_secs(90), async || {
        simulator.settled()
            && orders_in(&logged_events(directory.path())) == true_orders()
            && orders_in(&webhook_events()) == true_orders()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    daemon.stop().await;
    assert!(settled, "{} carts unsettled", simulator.unsettled());

    let logged = logged_events(directory.path());
    assert!(!true_orders().is_empty());
    assert_eq!(orders_in(&logged), true_orders(), "every order once in the log, with its OrderID");
    assert_eq!(orders_in(&webhook_events()), true_orders(), "every order once at the webhook, with its OrderID");
    assert_per_cart_order(&first_deliveries(&receiver.received()));
    let summary = store.summary(chrono::Utc::now()).await.unwrap();
    assert!(summary.carts.iter().all(|(state, _, _)| state != "expired"), "{:?}", summary.carts);
    let mut announced: BTreeMap<String, usize> = BTreeMap::new();
    for event in logged.iter().filter(|event| event["type"] == "cart.checked_out") {
        *announced.entry(event["data"]["cartId"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    let mut happened: BTreeMap<String, usize> = BTreeMap::new();
    for transition in simulator.truth().into_iter().filter(|t| t.to == "CheckedOut") {
        *happened.entry(transition.cart_id).or_default() += 1;
    }
    for (cart_id, times) in &announced {
        assert!(times <= happened.get(cart_id).unwrap_or(&0), "cart {cart_id} announced checked out {times} times");
    }
    // The sequence numbers a receiver can check order with.
    for event in &logged {
        assert!(event["data"]["cartSequence"].as_u64().is_some_and(|sequence| sequence >= 1), "{event}");
    }
    receiver.stop().await;
    simulator.stop().await;
}
}
