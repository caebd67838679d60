//! At-least-once delivery under the worst conditions: the real binary killed with SIGKILL at
//! random moments, and a receiver that goes away and comes back. Nothing is lost, duplicates
//! repeat their webhook-id, and each cart's events arrive in order. Secrets never leak.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;
use crate::on_both_stores;
use cartwatch_simulator::{DEMO_API_CODE, SimulatorSettings};
use rand::{RngExt, SeedableRng};

/// The `[database]` line of a config in `directory` on `backend`.
async fn database_line(directory: &Path, backend: Backend) -> String {
    match backend {
        Backend::Sqlite => format!("path = {:?}", directory.join("cartwatch.db").display().to_string()),
        Backend::Postgres => format!("url = {:?}\nlease = \"5s\"", postgres_database().await),
    }
}

fn write_config(
    directory: &Path,
    base_url: &str,
    webhook_url: &str,
    schedule: &str,
    database: &str,
) -> std::path::PathBuf {
    let path = directory.join("cartwatch.toml");
    let text = format!(
        r#"
[database]
{database}
[sweep]
cron = "* * * * * *"
[imaterialise]
base_url = {base_url:?}
requests_per_second = 0
request_timeout = "2s"
[cadence]
tiers = [{{ younger_than = "30d", every = "1s" }}]
older_every = "1s"
checked_out_every = "1s"
jitter = 0.0
[plan]
mode = "tiers"
[backoff]
transient_initial = "500ms"
transient_max = "2s"
[delivery]
schedule = {schedule}
[webhooks.erp]
url = {webhook_url:?}
concurrency = 2
[sinks.log]
path = {log:?}
[logging]
level = "debug"
format = "json"
"#,
        log = events_file(directory).display().to_string(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `cartwatch run`, its diagnostics appended to `daemon.log` beside the config (a pipe
/// nobody reads would fill up and stall it).
fn spawn_daemon(config: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(config.with_file_name("daemon.log")).unwrap();
    Command::new(BINARY)
        .arg("--config")
        .arg(config)
        .arg("run")
        .env("CARTWATCH__IMATERIALISE__API_CODE", DEMO_API_CODE)
        .env("CARTWATCH__WEBHOOKS__ERP__SECRET", WEBHOOK_SECRET)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn track(config: &Path, simulator: &cartwatch_simulator::Simulator) {
    let ids: Vec<String> = simulator.cart_ids().iter().map(ToString::to_string).collect();
    let status = Command::new(BINARY)
        .arg("--config")
        .arg(config)
        .arg("track")
        .args(&ids)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

fn true_pairs_in(first: &[Received]) -> Vec<(String, String)> {
    checkouts_and_orders(&first.iter().map(|r| r.body.clone()).collect::<Vec<_>>())
}

on_both_stores! {
async fn sigkill_at_random_moments_loses_no_event(backend: Backend) {
    let directory = tempfile::tempdir().unwrap();
    // A partner and a receiver that take a moment per request, so kills land during sweeps
    // and during deliveries.
    let settings = SimulatorSettings {
        seed: 31,
        carts: 25,
        unknown_carts: 0,
        min_dwell: 3,
        max_dwell: 4,
        latency: Duration::from_millis(150),
        ..SimulatorSettings::default()
    };
    let simulator = simulator(settings).await;
    let receiver =
        TestReceiver::start_with_delay("127.0.0.1:0".parse().unwrap(), WEBHOOK_SECRET, Duration::from_millis(150))
            .await;
    let schedule = r#"["0s", "200ms", "500ms", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s"]"#;
    let database = database_line(directory.path(), backend).await;
    let config = write_config(directory.path(), &simulator.base_url(), &receiver.url(), schedule, &database);
    track(&config, &simulator);

    let mut random = rand::rngs::StdRng::seed_from_u64(2026);
    let (mut kills, mut during_sweeps, mut during_deliveries) = (0, 0, 0);
    while kills < 22 {
        let mut child = spawn_daemon(&config);
        let lifetime = Duration::from_millis(random.random_range(250..1400));
        tokio::time::sleep(lifetime).await;
        // Every third kill waits (briefly) for a request to the partner or the receiver to be
        // in flight, so both kinds of moment are certainly covered.
        let sweeping = || simulator.stats().in_flight.load(std::sync::atomic::Ordering::SeqCst) > 0;
        let delivering = || receiver.in_flight.load(std::sync::atomic::Ordering::SeqCst) > 0;
        // (On PostgreSQL the carts a killed daemon claimed wait out their lease, 5 s here, so
        // the wait is longer.)
        match kills % 6 {
            1 => drop(wait_until(Duration::from_secs(6), async || sweeping()).await),
            4 => drop(wait_until(Duration::from_secs(6), async || delivering()).await),
            _ => {}
        }
        let (in_sweep, in_delivery) = (sweeping(), delivering());
        child.kill().unwrap(); // SIGKILL
        during_sweeps += usize::from(in_sweep);
        during_deliveries += usize::from(in_delivery);
        child.wait().unwrap();
        kills += 1;
    }
    println!("{kills} kills: {during_sweeps} during a status request, {during_deliveries} during a delivery");
    assert!(during_sweeps >= 2 && during_deliveries >= 2, "kills landed in sweeps and deliveries");

    // Finally let it finish (and run long enough to have its signal handlers in place).
    let child = spawn_daemon(&config);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let finished = wait_until(Duration::from_secs(60), async || {
        simulator.settled() && {
            let first = first_deliveries(&receiver.received());
            true_pairs_in(&first) == true_checkouts_and_orders(&simulator)
        }
    })
    .await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut child = child;
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(directory.path().join("daemon.log")).unwrap();
    let tail: Vec<&str> = log.lines().rev().take(15).collect();
    assert!(status.success(), "{status:?}; last log lines, newest first:\n{}", tail.join("\n"));

    let received = receiver.received();
    let first = first_deliveries(&received);
    assert_eq!(
        true_pairs_in(&first),
        true_checkouts_and_orders(&simulator),
        "every true transition arrived, each under one id"
    );
    assert!(finished, "{} carts unsettled", simulator.unsettled());
    assert_per_cart_order(&first);
    println!("{} deliveries of {} events", received.len(), first.len());
    simulator.stop().await;
}
}

on_both_stores! {
async fn a_receiver_outage_delays_but_loses_nothing(backend: Backend) {
    let directory = tempfile::tempdir().unwrap();
    let simulator =
        simulator(SimulatorSettings { seed: 41, carts: 20, unknown_carts: 0, ..SimulatorSettings::default() }).await;
    let receiver = TestReceiver::start("127.0.0.1:0".parse().unwrap(), WEBHOOK_SECRET).await;
    let address = receiver.address;
    let mut config = config_on(&simulator, directory.path(), backend).await;
    add_webhook(&mut config, "erp", &receiver.url(), WEBHOOK_SECRET);
    config.delivery.schedule = ["0s", "500ms", "1s", "2s", "4s", "8s"]
        .iter()
        .map(|text| humantime::parse_duration(text).unwrap().into())
        .collect();
    let store = store_for(&config).await;
    track_all(&store, &simulator).await;

    // The receiver goes down before the first transitions and stays down for a while.
    let before_outage = receiver.stop().await.lock().unwrap().clone();
    assert!(before_outage.is_empty());
    let daemon = RunningDaemon::start(config);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pending_during_outage = store.summary(chrono::Utc::now()).await.unwrap().sinks;
    let erp = pending_during_outage.iter().find(|sink| sink.sink == "erp").unwrap();
    assert!(erp.pending > 0 && erp.delivered == 0, "events queue up while the receiver is down: {erp:?}");

    let receiver = TestReceiver::start(address, WEBHOOK_SECRET).await;
    let arrived = wait_until(Duration::from_secs(40), async || {
        simulator.settled()
            && true_pairs_in(&first_deliveries(&receiver.received())) == true_checkouts_and_orders(&simulator)
    })
    .await;
    daemon.stop().await;
    let first = first_deliveries(&receiver.received());
    assert_eq!(true_pairs_in(&first), true_checkouts_and_orders(&simulator));
    assert!(arrived);
    assert_per_cart_order(&first);
    assert!(
        store.dead_letters(None, 10).await.unwrap().is_empty(),
        "no dead letters for an outage shorter than the schedule"
    );
    simulator.stop().await;
}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_secret_never_appears_in_logs_output_or_the_database() {
    let directory = tempfile::tempdir().unwrap();
    let simulator = simulator(SimulatorSettings {
        seed: 5,
        carts: 10,
        unknown_carts: 0,
        min_dwell: 1,
        max_dwell: 1,
        ..SimulatorSettings::default()
    })
    .await;
    let receiver = TestReceiver::start("127.0.0.1:0".parse().unwrap(), WEBHOOK_SECRET).await;
    // The first attempts fail, so errors are logged and stored too.
    let config = write_config(
        directory.path(),
        &simulator.base_url(),
        &format!("{}-missing", receiver.url()),
        r#"["0s", "100ms"]"#,
        &database_line(directory.path(), Backend::Sqlite).await,
    );
    track(&config, &simulator);
    let child = spawn_daemon(&config);
    tokio::time::sleep(Duration::from_secs(3)).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    let stderr = std::fs::read_to_string(directory.path().join("daemon.log")).unwrap();
    assert!(stderr.contains("webhook delivery failed"), "deliveries were attempted: {stderr}");

    let check = check_config(&config, &[("CARTWATCH__WEBHOOKS__ERP__SECRET", WEBHOOK_SECRET)]);
    let check_output = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(check_output.contains("secret = \"<redacted>\""), "{check_output}");

    let key = WEBHOOK_SECRET.trim_start_matches("whsec_");
    let mut database = Vec::new();
    for suffix in ["", "-wal"] {
        if let Ok(bytes) = std::fs::read(format!("{}{suffix}", directory.path().join("cartwatch.db").display())) {
            database.extend(bytes);
        }
    }
    assert!(!database.is_empty());
    for (what, text) in [
        ("logs", stderr.as_str()),
        ("check-config", check_output.as_str()),
        ("database", &String::from_utf8_lossy(&database)),
    ] {
        assert!(!text.contains(key), "the secret appears in the {what}");
        assert!(!text.contains(DEMO_API_CODE), "the apiCode appears in the {what}");
    }
    drop(receiver);
    simulator.stop().await;
}
