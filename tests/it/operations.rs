//! What an operator relies on, driven through the real binary: exit codes, pipes, signals,
//! reloads, the watchdog under a lock, readiness when sweeps fail, a database edited by hand,
//! secrets that never show, and an HTTP API no client can exhaust.

use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use cartwatch_simulator::{DEMO_API_CODE, SimulatorSettings};

fn cartwatch(config: &Path, arguments: &[&str]) -> Output {
    Command::new(BINARY)
        .arg("--config")
        .arg(config)
        .args(arguments)
        .env("CARTWATCH__IMATERIALISE__API_CODE", DEMO_API_CODE)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// A config in `directory` polling `base_url` every second, with `extra` TOML after it.
fn write_config(directory: &Path, base_url: &str, extra: &str) -> PathBuf {
    let path = directory.join("cartwatch.toml");
    let text = format!(
        "[database]\npath = {:?}\nbusy_timeout = \"500ms\"\n[sweep]\ncron = \"* * * * * *\"\n\
         [imaterialise]\nbase_url = {base_url:?}\nrequests_per_second = 0\nrequest_timeout = \"5s\"\n\
         [cadence]\ntiers = [{{ younger_than = \"30d\", every = \"1s\" }}]\nolder_every = \"1s\"\n\
         checked_out_every = \"1s\"\njitter = 0.0\n[plan]\nmode = \"tiers\"\n[sinks.log]\npath = {:?}\n{extra}",
        directory.join("cartwatch.db").display().to_string(),
        events_file(directory).display().to_string()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn track(config: &Path, ids: &[String]) {
    let mut arguments = vec!["track"];
    arguments.extend(ids.iter().map(String::as_str));
    let output = cartwatch(config, &arguments);
    assert!(output.status.success(), "{}", text(&output.stderr));
}

fn spawn_daemon(config: &Path, log: &Path, environment: &[(&str, &str)]) -> Child {
    let mut command = Command::new(BINARY);
    command
        .arg("--config")
        .arg(config)
        .arg("run")
        .env("CARTWATCH__IMATERIALISE__API_CODE", DEMO_API_CODE)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    for (name, value) in environment {
        command.env(name, value);
    }
    command.spawn().unwrap()
}

fn signal(child: &Child, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
}

/// Waits for `child` to exit, at most `limit`; returns its status and how long it took.
fn wait_for_exit(child: &mut Child, limit: Duration) -> (Option<std::process::ExitStatus>, Duration) {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return (Some(status), started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    (None, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_once_exits_6_when_the_partner_fails_and_0_when_it_answers() {
    let directory = tempfile::tempdir().unwrap();
    let simulator =
        simulator(SimulatorSettings { seed: 3, carts: 3, unknown_carts: 0, ..SimulatorSettings::default() }).await;
    let ids: Vec<String> = simulator.cart_ids().iter().map(ToString::to_string).collect();

    // Nothing listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = write_config(directory.path(), &format!("http://{closed}"), "");
    track(&config, &ids);
    let output = cartwatch(&config, &["poll-once"]);
    assert_eq!(output.status.code(), Some(6), "unreachable: {}", text(&output.stderr));
    assert!(text(&output.stderr).contains("request(s) to the partner failed"), "{}", text(&output.stderr));

    let config = write_config(directory.path(), &simulator.base_url(), "");
    simulator.set_api_code("11111111-1111-4111-8111-111111111111");
    let output = cartwatch(&config, &["poll-once", "--all"]);
    assert_eq!(output.status.code(), Some(6), "401: {}", text(&output.stderr));
    // The pause is remembered; the next run probes at once and finds the key accepted.
    simulator.set_api_code(DEMO_API_CODE);
    let output = cartwatch(&config, &["poll-once", "--all"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    simulator.stop().await;
}

#[test]
fn a_reader_that_goes_away_ends_a_command_quietly() {
    let directory = tempfile::tempdir().unwrap();
    let config = write_config(directory.path(), "http://127.0.0.1:9", "");
    track(&config, &["921a2046-66a5-4c5f-b9a6-4bc646fa5e5a".to_owned()]);
    for arguments in [
        &["check-config"][..],
        &["status"],
        &["status", "921a2046-66a5-4c5f-b9a6-4bc646fa5e5a"],
        &["events"],
        &["events", "dead"],
        &["items", "list", "921a2046-66a5-4c5f-b9a6-4bc646fa5e5a"],
        &["demo", "--carts", "2"],
    ] {
        let mut child = Command::new(BINARY)
            .arg("--config")
            .arg(&config)
            .args(arguments)
            .env("CARTWATCH__IMATERIALISE__API_CODE", DEMO_API_CODE)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the reading end before the command writes anything, as `| head -0` would.
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = text(&output.stderr);
        assert!(!stderr.contains("panicked"), "{arguments:?}: {stderr}");
        assert_eq!(output.status.code(), Some(0), "{arguments:?}: {stderr}");
    }
}

#[test]
fn commands_that_read_never_create_a_database() {
    let directory = tempfile::tempdir().unwrap();
    let config = write_config(directory.path(), "http://127.0.0.1:9", "");
    let database = directory.path().join("cartwatch.db");
    for arguments in [
        &["status"][..],
        &["events"],
        &["events", "dead"],
        &["events", "redeliver", "--dead"],
        &["items", "list", "921a2046-66a5-4c5f-b9a6-4bc646fa5e5a"],
        &["untrack", "921a2046-66a5-4c5f-b9a6-4bc646fa5e5a"],
        &["webhooks", "list"],
    ] {
        let output = cartwatch(&config, arguments);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(4), "{arguments:?}: {stderr}");
        assert!(stderr.contains(&database.display().to_string()) && stderr.contains("database.path"), "{stderr}");
        assert!(!database.exists(), "{arguments:?} created the database");
    }
}

#[test]
fn bad_arguments_and_values_are_refused_with_the_documented_codes() {
    let directory = tempfile::tempdir().unwrap();
    let config = write_config(directory.path(), "http://127.0.0.1:9", "");
    for arguments in [
        &["events", "--limit", "0", "--follow"][..],
        &["events", "dead", "--limit", "20000"],
        &["track", "--provider", "amazon", "921a2046-66a5-4c5f-b9a6-4bc646fa5e5a"],
        &["bench", "nosuch"],
        &["simulate", "--faults", "bogus:1"],
        &["simulate", "--uniform-status", "Shipped"],
        &["demo", "--provider", "amazon"],
        &["webhooks", "new-secret", "extra"],
    ] {
        let output = cartwatch(&config, arguments);
        assert_eq!(output.status.code(), Some(2), "{arguments:?}: {}", text(&output.stderr));
    }
    for extra in [
        "[imaterialise]\nrequests_per_second = 1e-300\n",
        "[cadence]\nolder_every = \"500000000000d\"\n",
        "[delivery]\nschedule = [\"0s\", \"99999d\"]\n",
    ] {
        let config = directory.path().join("extra.toml");
        std::fs::write(&config, extra).unwrap();
        let output = cartwatch(&config, &["check-config"]);
        assert_eq!(output.status.code(), Some(3), "{extra}: {}", text(&output.stderr));
        assert!(text(&output.stderr).contains("must be"), "{}", text(&output.stderr));
    }
}

#[test]
fn control_characters_from_the_partner_never_reach_the_terminal_and_strings_are_bounded() {
    let directory = tempfile::tempdir().unwrap();
    let config = write_config(directory.path(), "http://127.0.0.1:9", "");
    let cart = "921a2046-66a5-4c5f-b9a6-4bc646fa5e5a";
    track(&config, &[cart.to_owned()]);
    let hostile = "Pend\u{1b}[2J\u{1b}]0;pwned\u{7}ing";
    let connection = rusqlite::Connection::open(directory.path().join("cartwatch.db")).unwrap();
    connection.execute("UPDATE carts SET status = ?1, last_error = ?1", [hostile]).unwrap();
    for arguments in [&["status"][..], &["status", cart]] {
        let output = cartwatch(&config, arguments);
        assert!(output.status.success());
        assert!(!output.stdout.contains(&0x1b) && !output.stdout.contains(&0x07), "{arguments:?}");
        assert!(text(&output.stdout).contains("Pend\\u{1b}[2J"), "{}", text(&output.stdout));
    }
}

#[test]
fn a_schema_version_set_by_hand_to_a_negative_number_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    let config = write_config(directory.path(), "http://127.0.0.1:9", "");
    track(&config, &["921a2046-66a5-4c5f-b9a6-4bc646fa5e5a".to_owned()]);
    rusqlite::Connection::open(directory.path().join("cartwatch.db"))
        .unwrap()
        .pragma_update(None, "user_version", -1)
        .unwrap();
    let output = cartwatch(&config, &["status"]);
    assert_eq!(output.status.code(), Some(4));
    assert!(text(&output.stderr).contains("schema version is -1"), "{}", text(&output.stderr));
}

#[test]
fn a_password_in_a_webhook_url_is_never_printed_or_stored() {
    let directory = tempfile::tempdir().unwrap();
    let config = write_config(
        directory.path(),
        "http://127.0.0.1:9",
        &format!("[webhooks.erp]\nurl = \"http://shop:hunter2@127.0.0.1:9/hook\"\nsecret = {WEBHOOK_SECRET:?}\n"),
    );
    let output = cartwatch(&config, &["check-config"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(!text(&output.stdout).contains("hunter2") && text(&output.stdout).contains("<redacted>@127.0.0.1"));
    track(&config, &["921a2046-66a5-4c5f-b9a6-4bc646fa5e5a".to_owned()]);
    let output = cartwatch(&config, &["poll-once"]);
    assert!(!text(&output.stderr).contains("hunter2"), "{}", text(&output.stderr));
    let database = std::fs::read(directory.path().join("cartwatch.db")).unwrap();
    let wal = std::fs::read(directory.path().join("cartwatch.db-wal")).unwrap_or_default();
    let hunter = b"hunter2";
    for bytes in [&database, &wal] {
        assert!(!bytes.windows(hunter.len()).any(|window| window == hunter), "the password is in the database");
    }
    let output = cartwatch(&config, &["webhooks", "list"]);
    assert!(text(&output.stdout).contains("erp"), "{}", text(&output.stdout));
}

/// SIGHUP rotates a webhook's secret, moves it to a new URL and the log sink to a new file:
/// the next deliveries verify with the new secret at the new URL, and lines go to the new file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_applies_new_webhook_secrets_urls_and_log_path() {
    let directory = tempfile::tempdir().unwrap();
    let simulator = simulator(SimulatorSettings {
        seed: 31,
        carts: 20,
        unknown_carts: 0,
        min_dwell: 2,
        max_dwell: 3,
        ..SimulatorSettings::default()
    })
    .await;
    const NEW_SECRET: &str = "whsec_bmV3IHNlY3JldCBmb3IgdGhlIHJvdGF0aW9uIHRlc3Q=";
    let old_receiver = TestReceiver::start("127.0.0.1:0".parse().unwrap(), WEBHOOK_SECRET).await;
    let new_receiver = TestReceiver::start("127.0.0.1:0".parse().unwrap(), NEW_SECRET).await;
    let extra = format!(
        "[webhooks.erp]\nurl = {:?}\nsecret = {WEBHOOK_SECRET:?}\n[delivery]\nschedule = [\"0s\", \"200ms\"]\n\
         [events]\nemit = [\"cart.checked_out\", \"cart.ordered\", \"cart.pending\"]\n",
        old_receiver.url()
    );
    let old_log = events_file(directory.path());
    let config = write_config(directory.path(), &simulator.base_url(), &extra);
    let ids: Vec<String> = simulator.cart_ids().iter().map(ToString::to_string).collect();
    track(&config, &ids);
    let mut child = spawn_daemon(&config, &directory.path().join("daemon.log"), &[]);
    assert!(wait_until(Duration::from_secs(15), async || !old_receiver.received().is_empty()).await);

    // The new file replaces the log sink's path and the webhook's URL and secret.
    let new_log = directory.path().join("events-after-reload.jsonl");
    let text_before = std::fs::read_to_string(&config).unwrap();
    let reloaded =
        text_before.replace(&old_receiver.url(), &new_receiver.url()).replace(WEBHOOK_SECRET, NEW_SECRET).replace(
            &format!("path = {:?}\n", old_log.display().to_string()),
            &format!("path = {:?}\n", new_log.display().to_string()),
        );
    assert_ne!(reloaded, text_before);
    std::fs::write(&config, reloaded).unwrap();
    signal(&child, nix::sys::signal::Signal::SIGHUP);
    let moved = wait_until(Duration::from_secs(20), async || {
        new_receiver.received().len() >= 3
            && std::fs::read_to_string(&new_log).is_ok_and(|text| text.lines().count() >= 3)
    })
    .await;
    let old_count = old_receiver.received().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    let (status, _) = wait_for_exit(&mut child, Duration::from_secs(10));
    let log = std::fs::read_to_string(directory.path().join("daemon.log")).unwrap();
    assert!(moved, "after the reload: {} webhook deliveries, log: {log}", new_receiver.received().len());
    assert!(status.is_some_and(|status| status.success()), "{log}");
    assert!(log.contains("configuration reloaded"), "{log}");
    let after = new_receiver.received();
    assert!(after.iter().all(|delivery| delivery.signature_valid), "every delivery verifies with the new secret");
    first_deliveries(&after);
    assert_eq!(old_receiver.received().len(), old_count, "nothing more goes to the old URL");
    let old_lines = std::fs::read_to_string(&old_log).unwrap().lines().count();
    let new_lines = std::fs::read_to_string(&new_log).unwrap().lines().count();
    assert!(old_lines > 0 && new_lines > 0);
    simulator.stop().await;
}

/// SIGHUP during a slow sweep (twice, so reloads pile up), then SIGTERM: the daemon still
/// stops within a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_honoured_promptly_after_a_reload_during_a_slow_sweep() {
    let directory = tempfile::tempdir().unwrap();
    let simulator = simulator(SimulatorSettings {
        seed: 5,
        carts: 60,
        unknown_carts: 0,
        latency: Duration::from_secs(3),
        ..SimulatorSettings::default()
    })
    .await;
    let config = write_config(directory.path(), &simulator.base_url(), "");
    let ids: Vec<String> = simulator.cart_ids().iter().map(ToString::to_string).collect();
    track(&config, &ids);
    let mut child =
        spawn_daemon(&config, &directory.path().join("daemon.log"), &[("CARTWATCH__IMATERIALISE__CONCURRENCY", "1")]);
    assert!(wait_until(Duration::from_secs(10), async || simulator.requests() >= 1).await, "the sweep started");
    signal(&child, nix::sys::signal::Signal::SIGHUP);
    signal(&child, nix::sys::signal::Signal::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    let (status, took) = wait_for_exit(&mut child, Duration::from_secs(15));
    let log = std::fs::read_to_string(directory.path().join("daemon.log")).unwrap();
    assert!(status.is_some_and(|status| status.success()), "{log}");
    assert!(took < Duration::from_secs(6), "took {took:?} to stop: {log}");
    assert!(log.contains("configuration reloaded"), "the reload was applied during the sweep: {log}");
    simulator.stop().await;
}

/// Another process holds the database's write lock for longer than the watchdog interval:
/// the daemon is waiting, not stuck, and keeps telling the watchdog so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_is_fed_while_the_daemon_waits_on_a_lock() {
    let directory = tempfile::tempdir().unwrap();
    let simulator = simulator(SimulatorSettings {
        seed: 6,
        carts: 20,
        unknown_carts: 0,
        min_dwell: 1000,
        max_dwell: 1000,
        ..SimulatorSettings::default()
    })
    .await;
    let config = write_config(directory.path(), &simulator.base_url(), "");
    let ids: Vec<String> = simulator.cart_ids().iter().map(ToString::to_string).collect();
    track(&config, &ids);
    let socket_path = directory.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let watchdog = Duration::from_secs(2);
    let mut child = spawn_daemon(
        &config,
        &directory.path().join("daemon.log"),
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap()), ("WATCHDOG_USEC", "2000000")],
    );
    let mut pings: Vec<Instant> = Vec::new();
    let mut ready = false;
    let listen = |pings: &mut Vec<Instant>, ready: &mut bool, for_how_long: Duration| {
        let started = Instant::now();
        let mut buffer = [0u8; 4096];
        while started.elapsed() < for_how_long {
            if let Ok(length) = socket.recv(&mut buffer) {
                let message = String::from_utf8_lossy(&buffer[..length]).into_owned();
                *ready |= message.lines().any(|line| line == "READY=1");
                if message.lines().any(|line| line == "WATCHDOG=1") {
                    pings.push(Instant::now());
                }
            }
        }
    };
    listen(&mut pings, &mut ready, Duration::from_secs(3));
    assert!(ready && !pings.is_empty());

    // Hold the write lock for five watchdog intervals while carts are due every second.
    let database = directory.path().join("cartwatch.db");
    let lock = std::thread::spawn(move || {
        let connection = rusqlite::Connection::open(database).unwrap();
        connection.execute_batch("BEGIN IMMEDIATE").unwrap();
        std::thread::sleep(Duration::from_secs(10));
        connection.execute_batch("COMMIT").unwrap();
    });
    let locked_from = Instant::now();
    pings.clear();
    listen(&mut pings, &mut ready, Duration::from_secs(10));
    lock.join().unwrap();
    let mut previous = locked_from;
    let mut longest = Duration::ZERO;
    for ping in &pings {
        longest = longest.max(*ping - previous);
        previous = *ping;
    }
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    let (status, _) = wait_for_exit(&mut child, Duration::from_secs(10));
    let log = std::fs::read_to_string(directory.path().join("daemon.log")).unwrap();
    assert!(status.is_some_and(|status| status.success()), "{log}");
    assert!(longest < watchdog, "{longest:?} without a ping during the lock: {log}");
    assert!(log.contains("locked"), "the daemon did wait on the lock: {log}");
    simulator.stop().await;
}

/// Work that cannot be recorded makes the daemon not ready; a dropped index comes back; a
/// `next_poll_at` that is not a timestamp is polled anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_edits_never_stall_work_and_readiness_tells_when_sweeps_fail() {
    let directory = tempfile::tempdir().unwrap();
    let simulator = simulator(SimulatorSettings {
        seed: 12,
        carts: 6,
        unknown_carts: 0,
        min_dwell: 1000,
        max_dwell: 1000,
        ..SimulatorSettings::default()
    })
    .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config =
        write_config(directory.path(), &simulator.base_url(), &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n"));
    let ids: Vec<String> = simulator.cart_ids().iter().map(ToString::to_string).collect();
    track(&config, &ids);
    let mut child = spawn_daemon(&config, &directory.path().join("daemon.log"), &[]);
    let readyz = async || {
        reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await.map(|response| response.status().as_u16()).ok()
    };
    assert!(wait_until(Duration::from_secs(10), async || readyz().await == Some(200)).await);
    let database = directory.path().join("cartwatch.db");
    let connection = rusqlite::Connection::open(&database).unwrap();

    // An index dropped by hand is created again, and polling goes on.
    connection.execute_batch("DROP INDEX carts_due").unwrap();
    let requests = simulator.requests();
    let restored = wait_until(Duration::from_secs(10), async || {
        simulator.requests() >= requests + 2
            && connection
                .query_row("SELECT count(*) FROM sqlite_schema WHERE name = 'carts_due'", [], |row| {
                    row.get::<_, i64>(0)
                })
                .unwrap()
                == 1
    })
    .await;
    assert!(restored, "carts_due is back and carts are polled");

    // A next_poll_at that is not a timestamp (the constraint bypassed) is polled again.
    connection
        .execute_batch(&format!(
            "PRAGMA ignore_check_constraints = ON; UPDATE carts SET next_poll_at = 'whenever' WHERE cart_id = '{}';",
            ids[0]
        ))
        .unwrap();
    let repolled = wait_until(Duration::from_secs(10), async || {
        connection
            .query_row("SELECT next_poll_at FROM carts WHERE cart_id = ?1", [&ids[0]], |row| row.get::<_, String>(0))
            .unwrap()
            .starts_with('2')
    })
    .await;
    assert!(repolled, "the cart is polled again");

    // Every write to carts fails: after a few sweeps the daemon says it is not ready, and why.
    connection
        .execute_batch("CREATE TRIGGER stuck BEFORE UPDATE ON carts BEGIN SELECT RAISE(FAIL, 'disk I/O error'); END;")
        .unwrap();
    assert!(wait_until(Duration::from_secs(15), async || readyz().await == Some(503)).await, "not ready");
    let body = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await.unwrap().text().await.unwrap();
    assert!(body.contains("sweeps failed"), "{body}");
    connection.execute_batch("DROP TRIGGER stuck").unwrap();
    assert!(wait_until(Duration::from_secs(10), async || readyz().await == Some(200)).await, "ready again");
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    let (status, _) = wait_for_exit(&mut child, Duration::from_secs(10));
    assert!(status.is_some_and(|status| status.success()));
    simulator.stop().await;
}

/// Every row of `table`, in key order, as SQLite holds it.
fn rows_of(connection: &rusqlite::Connection, table: &str) -> Vec<Vec<rusqlite::types::Value>> {
    let mut statement = connection.prepare(&format!("SELECT * FROM {table} ORDER BY 1, 2")).unwrap();
    let columns = statement.column_count();
    statement
        .query_map([], |row| (0..columns).map(|index| row.get(index)).collect())
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The migration that rebuilds the carts and deliveries tables keeps every row of a database
/// with carts in every state and deliveries in every state, and every guard on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_checks_migrate_with_every_row_kept() {
    use cartwatch::store::sqlite::schema;
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("cartwatch.db");
    let tables = ["carts", "deliveries", "cart_transitions", "events", "sinks", "item_changes"];
    let before = {
        let mut connection = rusqlite::Connection::open(&path).unwrap();
        migrate_to(&mut connection, 7);
        schema::repair_missing(&connection).unwrap();
        connection
            .execute_batch(
                "INSERT INTO carts (cart_id, provider, account, session_token, reference, state, status,
                                    previous_status, status_detail, order_id, order_status, order_total,
                                    cart_created_at, cart_created_at_raw, registered_at, tracked_since,
                                    next_poll_at, last_polled_at, status_changed_at, consecutive_errors,
                                    consecutive_not_found, events_written, last_error, finished_at) VALUES
                   ('921a2046-66a5-4c5f-b9a6-4bc646fa5e5a', 'imaterialise', '', NULL, 'order-1', 'tracking',
                    'Pending', NULL, 'open', NULL, NULL, NULL, '2026-11-20T10:00:00.000', '2026-11-20T10:00:00',
                    '2026-11-20T10:00:01.000Z', '2026-11-20T10:00:01.000Z', '2026-11-26T09:00:00.000Z',
                    '2026-11-26T08:00:00.000Z', '2026-11-20T10:05:00.000Z', 2, 0, 1, 'connection reset', NULL),
                   ('bee2c269-1dbd-4f67-b9f1-2ea2d3b4917b', 'imaterialise', 'shop-2', NULL, NULL, 'ordered',
                    'Ordered', 'CheckedOut', NULL, 'ORD-7', 'Paid', '12.50', NULL, NULL,
                    '2026-11-20T10:00:01.000Z', '2026-11-20T10:00:01.000Z', NULL, '2026-11-21T08:00:00.000Z',
                    '2026-11-21T08:00:00.000Z', 0, 0, 2, NULL, '2026-11-21T08:00:00.000Z'),
                   ('59dcca18-05e7-4f5c-8b4e-89e987ea1e51', 'imaterialise', '', NULL, NULL, 'not_found',
                    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '2026-11-20T10:00:01.000Z',
                    '2026-11-20T10:00:01.000Z', NULL, '2026-11-21T08:00:00.000Z', NULL, 0, 3, 1, 'unknown cart',
                    '2026-11-21T08:00:00.000Z'),
                   ('5922ca18-05e7-4f5c-8b4e-89e987ea1e51', 'imaterialise', '', NULL, NULL, 'expired',
                    'Pending', NULL, NULL, NULL, NULL, NULL, NULL, NULL, '2026-10-20T10:00:01.000Z',
                    '2026-10-20T10:00:01.000Z', NULL, NULL, NULL, 0, 0, 0, NULL, '2026-11-20T10:00:01.000Z'),
                   ('7cf9f78f-6631-44be-905a-94cee7a2cd9c', 'titelive', '00000', 'AbCdEfGhIjKlMnOpQrStUvWxYz', NULL,
                    'untracked', 'valid', NULL, NULL, NULL, NULL, NULL, NULL, NULL, '2026-11-20T10:00:01.000Z',
                    '2026-11-20T10:00:01.000Z', NULL, NULL, NULL, 0, 0, 0, NULL, '2026-11-22T08:00:00.000Z'),
                   ('not a guid', 'imaterialise', '', NULL, NULL, 'invalid', NULL, NULL, NULL, NULL, NULL, NULL,
                    NULL, NULL, '2026-11-20T10:00:01.000Z', '2026-11-20T10:00:01.000Z', NULL, NULL, NULL, 0, 0, 0,
                    'malformed cart id', '2026-11-20T10:00:02.000Z');
                 INSERT INTO cart_transitions (cart_key, cart_id, from_status, to_status, order_id, detected_at, event_id)
                   VALUES (2, 'bee2c269-1dbd-4f67-b9f1-2ea2d3b4917b', 'CheckedOut', 'Ordered', 'ORD-7',
                           '2026-11-21T08:00:00.000Z', 'evt_2');
                 INSERT INTO sinks (sink, kind, target, created_at) VALUES
                   ('erp', 'webhook', 'http://127.0.0.1:9/hook', '2026-11-20T10:00:00.000Z'),
                   ('log', 'log', '/tmp/events.jsonl', '2026-11-20T10:00:00.000Z');
                 INSERT INTO events (event_id, event_type, cart_id, cart_sequence, created_at, payload) VALUES
                   ('evt_1', 'cart.checked_out', 'bee2c269-1dbd-4f67-b9f1-2ea2d3b4917b', 1, '2026-11-21T07:00:00.000Z', '{}'),
                   ('evt_2', 'cart.ordered', 'bee2c269-1dbd-4f67-b9f1-2ea2d3b4917b', 2, '2026-11-21T08:00:00.000Z', '{}'),
                   ('evt_3', 'cart.pending', '921a2046-66a5-4c5f-b9a6-4bc646fa5e5a', 1, '2026-11-21T08:00:00.000Z', '{}'),
                   ('evt_4', 'cart.not_found', '59dcca18-05e7-4f5c-8b4e-89e987ea1e51', 1, '2026-11-21T08:00:00.000Z', '{}');
                 INSERT INTO deliveries (sink, event_seq, ordering_key, state, attempts, next_attempt_at, last_attempt_at,
                                         last_status, last_error, delivered_at, dead_at) VALUES
                   ('erp', 1, 'bee2c269-1dbd-4f67-b9f1-2ea2d3b4917b', 'delivered', 1, '2026-11-21T07:00:00.000Z',
                    '2026-11-21T07:00:01.000Z', 200, NULL, '2026-11-21T07:00:01.000Z', NULL),
                   ('erp', 2, 'bee2c269-1dbd-4f67-b9f1-2ea2d3b4917b', 'dead', 12, '2026-11-22T08:00:00.000Z',
                    '2026-11-22T08:00:00.000Z', 500, 'HTTP 500', NULL, '2026-11-22T08:00:00.000Z'),
                   ('erp', 3, '921a2046-66a5-4c5f-b9a6-4bc646fa5e5a', 'pending', 0, '2026-11-21T08:00:00.000Z',
                    NULL, NULL, NULL, NULL, NULL),
                   ('erp', 4, '59dcca18-05e7-4f5c-8b4e-89e987ea1e51', 'skipped', 3, '2026-11-21T08:00:00.000Z',
                    '2026-11-21T08:10:00.000Z', 410, 'gone', NULL, NULL),
                   ('log', 1, NULL, 'delivered', 1, '2026-11-21T07:00:00.000Z', '2026-11-21T07:00:00.000Z', NULL,
                    NULL, '2026-11-21T07:00:00.000Z', NULL);",
            )
            .unwrap();
        // A row put in by hand past the checks, which the upgrade must not trip over.
        connection
            .execute_batch(
                "PRAGMA ignore_check_constraints = ON;
                 INSERT INTO carts (cart_id, state, next_poll_at, consecutive_errors)
                   VALUES ('7a1d0e43-3c2b-4c5e-9f1a-2b3c4d5e6f70', 'paused', 'whenever', -3);
                 PRAGMA ignore_check_constraints = OFF;",
            )
            .unwrap();
        let kept = tables.map(|table| rows_of(&connection, table));
        // Rows left behind by deletes in sqlite3, whose foreign keys are off by default.
        connection
            .execute_batch(
                "PRAGMA foreign_keys = OFF;
                 INSERT INTO cart_transitions (cart_key, cart_id, from_status, to_status, detected_at)
                   VALUES (99, 'gone', NULL, 'Pending', '2026-11-21T08:00:00.000Z');
                 INSERT INTO deliveries (sink, event_seq, next_attempt_at) VALUES ('erp', 99, '2026-11-21T08:00:00.000Z');",
            )
            .unwrap();
        kept
    };
    assert_eq!(before[0].len(), 7, "a cart in every state, and one past the checks");
    assert_eq!(before[1].len(), 5, "deliveries in every state");

    let store = cartwatch::store::sqlite::SqliteStore::open(&path, Duration::from_secs(1)).unwrap();
    let connection = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(
        connection.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)).unwrap(),
        schema::latest_version()
    );
    assert_eq!(tables.map(|table| rows_of(&connection, table)), before, "every row as it was, the orphans gone");
    assert!(schema::repair_missing(&connection).unwrap().is_empty(), "every index and view in place");
    let orphans: Option<String> =
        rusqlite::OptionalExtension::optional(connection.query_row("PRAGMA foreign_key_check", [], |row| row.get(0)))
            .unwrap();
    assert_eq!(orphans, None);
    for table in ["carts", "deliveries"] {
        let sql: String =
            connection.query_row("SELECT sql FROM sqlite_schema WHERE name = ?1", [table], |row| row.get(0)).unwrap();
        assert!(!sql.contains(" IN ("), "{sql}");
    }
    // The guards hold as before, under the same names.
    for (statement, guard) in [
        ("INSERT INTO carts (cart_id, state) VALUES ('a', 'paused')", "state_is_known"),
        ("INSERT INTO carts (cart_id, next_poll_at) VALUES ('b', 'soon')", "next_poll_at_is_a_timestamp"),
        ("UPDATE carts SET state = 'Tracking' WHERE cart_key = 1", "state_is_known"),
        ("UPDATE deliveries SET state = 'lost' WHERE event_seq = 3", "delivery_state_is_known"),
        ("UPDATE deliveries SET next_attempt_at = 'later' WHERE event_seq = 3", "next_attempt_at_is_a_timestamp"),
    ] {
        let refused = connection.execute_batch(statement).unwrap_err().to_string();
        assert!(refused.contains(guard), "{statement}: {refused}");
    }
    // And the store reads and writes the migrated rows.
    let tracked = store.cart("921a2046-66a5-4c5f-b9a6-4bc646fa5e5a".into()).await.unwrap().unwrap();
    assert_eq!((tracked.state.as_str(), tracked.consecutive_errors), ("tracking", 2));
    let garbled = store.cart("7a1d0e43-3c2b-4c5e-9f1a-2b3c4d5e6f70".into()).await.unwrap().unwrap();
    assert_eq!((garbled.state.as_str(), garbled.consecutive_errors), ("invalid", 0), "read leniently, as before");
    let ordered = store.cart("bee2c269-1dbd-4f67-b9f1-2ea2d3b4917b".into()).await.unwrap().unwrap();
    assert_eq!((ordered.state.as_str(), ordered.order_id.as_deref()), ("ordered", Some("ORD-7")));
    let resumed = store
        .track(
            vec![imaterialise_cart("5922ca18-05e7-4f5c-8b4e-89e987ea1e51", None)],
            chrono::Utc::now(),
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    assert!(matches!(resumed[0].1, cartwatch::store::TrackOutcome::Resumed(_)), "{resumed:?}");
}

/// A migration from the schema before SQLite's guards repairs what was edited by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guarded_schema_migrates_a_database_edited_by_hand() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("cartwatch.db");
    {
        let mut connection = rusqlite::Connection::open(&path).unwrap();
        migrate_to(&mut connection, 6);
        connection
            .execute_batch(
                "INSERT INTO carts (cart_id, state, next_poll_at, consecutive_errors) VALUES
                   ('921a2046-66a5-4c5f-b9a6-4bc646fa5e5a', 'tracking', 'whenever', 'lots'),
                   ('bee2c269-1dbd-4f67-b9f1-2ea2d3b4917b', 'Tracking', '2026-01-01T00:00:00.000Z', 0),
                   ('59dcca18-05e7-4f5c-8b4e-89e987ea1e51', 'paused', NULL, 0),
                   ('5922ca18-05e7-4f5c-8b4e-89e987ea1e51', 'ordered', NULL, 0);
                 INSERT INTO carts (cart_id, provider, account, next_poll_at) VALUES
                   ('AbCdEfGhIjKlMnOpQrStUvWxYz', 'titelive', '00000', '2026-01-01T00:00:00.000Z');
                 INSERT INTO events (event_id, event_type, cart_id, created_at, payload) VALUES
                   ('evt_1', 'cart.ready', 'AbCdEfGhIjKlMnOpQrStUvWxYz', '2026-01-01T00:00:00.000Z',
                    '{\"data\":{\"cartId\":\"AbCdEfGhIjKlMnOpQrStUvWxYz\"}}');
                 INSERT INTO sinks (sink, kind, target, created_at) VALUES ('erp', 'webhook', 'x', '2026-01-01');
                 INSERT INTO deliveries (sink, event_seq, ordering_key, attempts, next_attempt_at)
                   VALUES ('erp', 1, 'AbCdEfGhIjKlMnOpQrStUvWxYz', 'three', 'later');",
            )
            .unwrap();
    }
    let store = cartwatch::store::sqlite::SqliteStore::open(&path, Duration::from_secs(1)).unwrap();
    let row = |id: &str| {
        let store = store.clone();
        let id = id.to_owned();
        async move { store.cart(id).await.unwrap().unwrap() }
    };
    let garbage = row("921a2046-66a5-4c5f-b9a6-4bc646fa5e5a").await;
    assert_eq!((garbage.state.as_str(), garbage.consecutive_errors), ("tracking", 0));
    assert!(garbage.next_poll_at.is_some(), "due again, at a real timestamp");
    assert_eq!(row("bee2c269-1dbd-4f67-b9f1-2ea2d3b4917b").await.state.as_str(), "tracking");
    let unknown = row("59dcca18-05e7-4f5c-8b4e-89e987ea1e51").await;
    assert_eq!(unknown.state.as_str(), "invalid");
    assert!(unknown.last_error.unwrap().contains("'paused'"));
    assert_eq!(row("5922ca18-05e7-4f5c-8b4e-89e987ea1e51").await.state.as_str(), "ordered");
    let token = "AbCdEfGhIjKlMnOpQrStUvWxYz";
    let titelive = row(&cartwatch::provider::titelive::derived_id(token)).await;
    assert_eq!(titelive.provider, "titelive");
    assert_eq!(store.session_token(titelive.cart_id.clone()).await.unwrap().as_deref(), Some(token));
    let events = store.events_after(0, 10).await.unwrap();
    assert_eq!(events[0].cart_id.as_deref(), Some(titelive.cart_id.as_str()));
    assert!(!events[0].payload.contains(token), "the token left the events");
    let delivery = store.delivery_states(vec![1]).await.unwrap().remove(0).1;
    assert_eq!((delivery.state.as_str(), delivery.attempts), ("pending", 0));
    let version: i64 =
        rusqlite::Connection::open(&path).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, cartwatch::store::sqlite::schema::latest_version());
}

/// Idle or slow clients are disconnected and connections beyond the limit refused, while
/// the API keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_cannot_be_exhausted_by_idle_connections() {
    let directory = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = write_config(
        directory.path(),
        "http://127.0.0.1:9",
        &format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\nmax_connections = 4\nheader_timeout = \"1s\"\nidle_timeout = \"2s\"\n"
        ),
    );
    let mut child = spawn_daemon(&config, &directory.path().join("daemon.log"), &[]);
    let address = format!("127.0.0.1:{port}");
    assert!(
        wait_until(Duration::from_secs(10), async || std::net::TcpStream::connect(&address).is_ok()).await,
        "listening"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Four connections that never send a header hold every slot...
    let mut idle: Vec<std::net::TcpStream> = (0..4).map(|_| std::net::TcpStream::connect(&address).unwrap()).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...so a fifth is closed at once.
    let mut fifth = std::net::TcpStream::connect(&address).unwrap();
    fifth.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    fifth.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut answer = Vec::new();
    let read = fifth.read_to_end(&mut answer);
    let closed = read.is_ok() || read.as_ref().is_err_and(|error| error.kind() == std::io::ErrorKind::ConnectionReset);
    assert!(closed && answer.is_empty(), "refused beyond the limit: {read:?} {}", text(&answer));
    // The silent ones are dropped after the header timeout.
    let started = Instant::now();
    for stream in &mut idle {
        let mut buffer = [0u8; 16];
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(matches!(stream.read(&mut buffer), Ok(0)), "the server closed the connection");
    }
    assert!(started.elapsed() < Duration::from_secs(3), "within the header timeout");
    // The API answers again.
    let response = reqwest::get(format!("http://{address}/healthz")).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    let (status, _) = wait_for_exit(&mut child, Duration::from_secs(10));
    assert!(status.is_some_and(|status| status.success()));
}

#[test]
fn text_logs_to_a_pipe_carry_no_colour_codes_and_libraries_stay_quiet() {
    let directory = tempfile::tempdir().unwrap();
    // A partner nobody answers for: the sweep fails and says so.
    let config =
        write_config(directory.path(), "http://127.0.0.1:9", "[logging]\nformat = \"text\"\nlevel = \"debug\"\n");
    track(&config, &["921a2046-66a5-4c5f-b9a6-4bc646fa5e5a".to_owned()]);
    let output = cartwatch(&config, &["poll-once"]);
    let logs = text(&output.stderr);
    assert!(logs.contains("WARN") || logs.contains("ERROR"), "{logs}");
    assert!(!output.stderr.contains(&0x1b), "no escape codes on a pipe: {logs:?}");
    // At debug, the libraries stay at warn: the TLS set-up's debug line does not show, as it
    // does when RUST_LOG asks for every crate's.
    assert!(!logs.contains("CA root certificates"), "{logs}");
    let verbose = Command::new(BINARY)
        .arg("--config")
        .arg(&config)
        .arg("poll-once")
        .env("CARTWATCH__IMATERIALISE__API_CODE", DEMO_API_CODE)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(text(&verbose.stderr).contains("CA root certificates"), "{}", text(&verbose.stderr));
}

#[test]
fn a_fresh_install_creates_the_database_directory_and_new_secrets_are_long_enough() {
    let directory = tempfile::tempdir().unwrap();
    let nested = directory.path().join("var/lib/cartwatch");
    let config = directory.path().join("cartwatch.toml");
    std::fs::write(&config, format!("[database]\npath = {:?}\n", nested.join("cartwatch.db").display().to_string()))
        .unwrap();
    track(&config, &["921a2046-66a5-4c5f-b9a6-4bc646fa5e5a".to_owned()]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&nested).unwrap().permissions().mode() & 0o777, 0o700);

    let output = Command::new(BINARY).args(["webhooks", "new-secret"]).output().unwrap();
    assert!(output.status.success());
    let secret = text(&output.stdout).trim().to_owned();
    assert!(secret.starts_with("whsec_") && secret.len() == 6 + 44, "{secret}");
    let webhook = |secret: &str| {
        let path = directory.path().join("webhook.toml");
        std::fs::write(&path, format!("[webhooks.erp]\nurl = \"https://erp.example/hook\"\nsecret = {secret:?}\n"))
            .unwrap();
        check_config(&path, &[])
    };
    assert!(webhook(&secret).status.success(), "{}", text(&webhook(&secret).stderr));
    let short = webhook("whsec_MTIz");
    assert_eq!(short.status.code(), Some(3));
    assert!(text(&short.stderr).contains("at least 24 random bytes"), "{}", text(&short.stderr));
}

#[test]
fn completions_and_the_manual_page_are_generated_and_help_lists_the_exit_codes() {
    for shell in ["bash", "zsh", "fish"] {
        let output = Command::new(BINARY).args(["completions", shell]).output().unwrap();
        assert!(output.status.success(), "{shell}: {}", text(&output.stderr));
        let script = text(&output.stdout);
        assert!(script.contains("poll-once") && script.contains("new-secret"), "{shell}: {script}");
    }
    assert_eq!(Command::new(BINARY).args(["completions", "tcsh"]).output().unwrap().status.code(), Some(2));
    let man = Command::new(BINARY).arg("man").output().unwrap();
    assert!(man.status.success());
    let page = text(&man.stdout);
    assert!(page.starts_with(".ie") || page.contains(".TH cartwatch"), "{page}");
    assert!(page.contains("poll\\-once") && page.contains("Exit codes"), "{page}");
    let help = text(&Command::new(BINARY).arg("--help").output().unwrap().stdout);
    assert!(help.contains("Exit codes: 0 success") && help.contains("8 refused by the partner"), "{help}");
}

#[test]
fn under_systemd_diagnostics_go_to_the_journal() {
    use std::os::unix::fs::MetadataExt;
    let directory = tempfile::tempdir().unwrap();
    let config = write_config(directory.path(), "http://127.0.0.1:9", "");
    track(&config, &["921a2046-66a5-4c5f-b9a6-4bc646fa5e5a".to_owned()]);
    // Standard error is the stream JOURNAL_STREAM names, as systemd sets it up.
    let stderr_path = directory.path().join("stderr");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let identity = stderr.metadata().unwrap();
    let output = Command::new(BINARY)
        .arg("--config")
        .arg(&config)
        .arg("poll-once")
        .env("CARTWATCH__IMATERIALISE__API_CODE", DEMO_API_CODE)
        .env("JOURNAL_STREAM", format!("{}:{}", identity.dev(), identity.ino()))
        .env_remove("RUST_LOG")
        .stderr(Stdio::from(stderr))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(6), "the partner cannot be reached");
    let written = std::fs::read_to_string(&stderr_path).unwrap();
    if Path::new("/run/systemd/journal/socket").exists() {
        assert!(!written.contains("batch request failed"), "diagnostics went to the journal: {written}");
    } else {
        // No journald here: said once, then the usual lines.
        assert!(written.contains("cannot write to the journal"), "{written}");
        assert!(written.contains("batch request failed"), "{written}");
    }
}

#[test]
fn the_demo_fits_80_columns_accounts_for_every_cart_and_says_what_to_try_next() {
    let output = Command::new(BINARY).args(["demo", "--carts", "6", "--seed", "3"]).output().unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    // A new database is complete as created: nothing to warn about.
    let logged = text(&output.stderr);
    assert!(!logged.contains("WARN") && !logged.contains("lacked indexes"), "{logged}");
    let shown = text(&output.stdout);
    for line in shown.lines() {
        assert!(line.chars().count() <= 80, "{} columns: {line}", line.chars().count());
    }
    let tracked: u64 = shown
        .lines()
        .find_map(|line| line.trim().strip_prefix("carts tracked"))
        .and_then(|rest| rest.trim().parse().ok())
        .expect("the summary says how many carts were tracked");
    let accounted: u64 = shown
        .lines()
        .skip_while(|line| !line.contains("where the"))
        .skip(1)
        .take_while(|line| line.starts_with("    "))
        .map(|line| line.split_whitespace().next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(accounted, tracked, "{shown}");
    let last: Vec<&str> = shown.lines().rev().take(6).collect();
    assert!(last[0].contains("cartwatch run") && last[1].contains("cartwatch track"), "{shown}");
    assert!(shown.contains("cartwatch simulate"), "{shown}");
    assert!(shown.contains("items changed"), "the demo changes one cart's items: {shown}");
}
