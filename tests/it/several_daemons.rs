//! Several daemons on one PostgreSQL database: they share the carts, the deliveries, the
//! rate limit and the upstream's health; one killed is taken over within a lease; nothing is
//! lost and nothing is announced under two ids.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use cartwatch::config::Config;
use cartwatch::daemon::{Daemon, Hooks};
use cartwatch::secret::Secret;
use cartwatch_simulator::{DEMO_API_CODE, SimulatorSettings};
use rand::{RngExt, SeedableRng};
use tokio_util::sync::CancellationToken;

/// A daemon's config in its own directory, on the shared database `url`.
fn write_config(directory: &Path, base_url: &str, webhook_url: &str, url: &str, extra: &str) -> PathBuf {
    std::fs::create_dir_all(directory).unwrap();
    let path = directory.join("cartwatch.toml");
    let text = format!(
        r#"
[database]
url = {url:?}
lease = "5s"
[sweep]
cron = "* * * * * *"
[imaterialise]
base_url = {base_url:?}
request_timeout = "2s"
{extra}
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
schedule = ["0s", "200ms", "500ms", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s"]
[webhooks.erp]
url = {webhook_url:?}
[sinks.log]
enabled = false
[logging]
level = "debug"
format = "json"
"#
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `cartwatch run` on `config`, its diagnostics appended to `daemon.log` beside it.
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

fn track_with(config: &Path, simulator: &cartwatch_simulator::Simulator) {
    let status = Command::new(BINARY)
        .arg("--config")
        .arg(config)
        .arg("track")
        .args(simulator.cart_ids())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

fn terminate(mut child: Child) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

fn pairs_in(first: &[Received]) -> Vec<(String, String)> {
    checkouts_and_orders(&first.iter().map(|received| received.body.clone()).collect::<Vec<_>>())
}

/// The most requests the simulator saw in any one second.
fn busiest_second(arrivals: &[Instant]) -> usize {
    arrivals
        .iter()
        .map(|start| arrivals.iter().filter(|at| **at >= *start && **at < *start + Duration::from_secs(1)).count())
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_daemons_share_the_carts_the_deliveries_and_one_rate_limit() {
    let url = postgres_database().await;
    let directory = tempfile::tempdir().unwrap();
    let settings = SimulatorSettings {
        seed: 41,
        carts: 60,
        unknown_carts: 0,
        min_dwell: 1,
        max_dwell: 2,
        latency: Duration::from_millis(30),
        ..SimulatorSettings::default()
    };
    let simulator = simulator(settings).await;
    let receiver = TestReceiver::start("127.0.0.1:0".parse().unwrap(), WEBHOOK_SECRET).await;
    let extra = "batch_size = 3\nconcurrency = 2\nrequests_per_second = 8";
    let configs: Vec<PathBuf> = (0..3)
        .map(|index| {
            let home = directory.path().join(format!("daemon-{index}"));
            write_config(&home, &simulator.base_url(), &receiver.url(), &url, extra)
        })
        .collect();
    track_with(&configs[0], &simulator);
    let daemons: Vec<Child> = configs.iter().map(|config| spawn_daemon(config)).collect();

    let finished = wait_until(Duration::from_secs(90), async || {
        simulator.settled()
            && pairs_in(&first_deliveries(&receiver.received())) == true_checkouts_and_orders(&simulator)
    })
    .await;
    let client = connect(&url).await;
    let members: i64 = client.query_one("SELECT count(*) FROM members", &[]).await.unwrap().get(0);
    let status = Command::new(BINARY).arg("--config").arg(&configs[1]).arg("status").output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert_eq!(status.matches("cart(s) claimed").count(), 3, "status lists the three daemons:\n{status}");
    for daemon in daemons {
        terminate(daemon);
    }
    if !finished {
        let got = pairs_in(&first_deliveries(&receiver.received()));
        let want = true_checkouts_and_orders(&simulator);
        let missing: Vec<_> = want.iter().filter(|pair| !got.contains(pair)).collect();
        let extra: Vec<_> = got.iter().filter(|pair| !want.contains(pair)).collect();
        let log = std::fs::read_to_string(directory.path().join("daemon-0/daemon.log")).unwrap_or_default();
        let problems: Vec<&str> =
            log.lines().filter(|line| line.contains("WARN") || line.contains("ERROR")).take(20).collect();
        panic!("missing {missing:?}\nextra {extra:?}\n{}", problems.join("\n"));
    }
    assert_eq!(members, 3, "every daemon announced itself");

    // Every true transition announced, each under one id, each cart's events in order.
    let first = first_deliveries(&receiver.received());
    assert_eq!(pairs_in(&first), true_checkouts_and_orders(&simulator));
    assert_per_cart_order(&first);

    // Each due cart was asked about by one daemon: no cart twice within half its cadence.
    let log = simulator.request_log();
    let mut asked: BTreeMap<&str, Vec<Instant>> = BTreeMap::new();
    for record in &log {
        for cart_id in &record.asked {
            asked.entry(cart_id).or_default().push(record.at);
        }
    }
    for (cart_id, times) in &asked {
        for pair in times.windows(2) {
            assert!(
                pair[1] - pair[0] >= Duration::from_millis(500),
                "cart {cart_id} asked twice {:?} apart",
                pair[1] - pair[0]
            );
        }
    }

    // The three together never sent more than the one configured rate.
    let arrivals: Vec<Instant> = log.iter().map(|record| record.at).collect();
    let busiest = busiest_second(&arrivals);
    assert!(busiest <= 8 + 1, "{busiest} requests in one second against a global limit of 8");
    let working: i64 =
        client.query_one("SELECT count(DISTINCT member_id) FROM sweeps WHERE requests > 0", &[]).await.unwrap().get(0);
    if working < 2 {
        let rows = client
            .query("SELECT member_id, count(*), sum(requests)::bigint FROM sweeps GROUP BY member_id", &[])
            .await
            .unwrap();
        let sweeps: Vec<(String, i64, i64)> = rows.iter().map(|row| (row.get(0), row.get(1), row.get(2))).collect();
        let mut logs = String::new();
        for index in 0..3 {
            let log = std::fs::read_to_string(directory.path().join(format!("daemon-{index}/daemon.log")))
                .unwrap_or_default();
            let lines: Vec<&str> = log.lines().filter(|line| !line.contains("DEBUG")).take(12).collect();
            logs.push_str(&format!("daemon {index}:\n{}\n", lines.join("\n")));
        }
        panic!("only {working} daemon polled: {sweeps:?}\n{logs}");
    }
    simulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_sigkills_over_three_daemons_lose_nothing_and_are_taken_over_within_a_lease() {
    let url = postgres_database().await;
    let directory = tempfile::tempdir().unwrap();
    let settings = SimulatorSettings {
        seed: 43,
        carts: 30,
        unknown_carts: 0,
        min_dwell: 3,
        max_dwell: 4,
        latency: Duration::from_millis(150),
        ..SimulatorSettings::default()
    };
    let simulator = simulator(settings).await;
    let receiver =
        TestReceiver::start_with_delay("127.0.0.1:0".parse().unwrap(), WEBHOOK_SECRET, Duration::from_millis(100))
            .await;
    let extra = "batch_size = 2\nconcurrency = 2\nrequests_per_second = 0";
    let configs: Vec<PathBuf> = (0..3)
        .map(|index| {
            let home = directory.path().join(format!("daemon-{index}"));
            write_config(&home, &simulator.base_url(), &receiver.url(), &url, extra)
        })
        .collect();
    track_with(&configs[0], &simulator);
    let mut daemons: Vec<Child> = configs.iter().map(|config| spawn_daemon(config)).collect();
    let client = connect(&url).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut random = rand::rngs::StdRng::seed_from_u64(2026);
    let mut takeovers = Vec::new();
    let mut kills_per_daemon = [0; 3];
    let holding = async |pid: i32| -> Vec<i64> {
        client
            .query(
                "SELECT c.cart_key FROM carts c JOIN members m ON m.member_id = c.lease_owner \
                 WHERE m.pid = $1 AND c.lease_until > now()",
                &[&pid],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    };
    for kill in 0..30 {
        let victim = random.random_range(0..3);
        tokio::time::sleep(Duration::from_millis(random.random_range(150..700))).await;
        let pid = daemons[victim].id() as i32;
        // Every fifth kill waits until the victim holds carts: they must be taken over once
        // its leases run out (5 s), not later.
        let measured = kill % 5 == 0;
        if measured {
            let _ = wait_until(Duration::from_secs(5), async || !holding(pid).await.is_empty()).await;
        }
        let held = holding(pid).await;
        daemons[victim].kill().unwrap(); // SIGKILL
        daemons[victim].wait().unwrap();
        kills_per_daemon[victim] += 1;
        let killed_at = Instant::now();
        if measured {
            daemons[victim] = spawn_daemon(&configs[victim]);
            if !held.is_empty() {
                let taken = wait_until(Duration::from_secs(15), async || {
                    let rows = client
                        .query(
                            "SELECT count(*) FROM carts c LEFT JOIN members m ON m.member_id = c.lease_owner \
                             WHERE c.cart_key = ANY($1) AND m.pid = $2",
                            &[&held, &pid],
                        )
                        .await
                        .unwrap();
                    rows[0].get::<_, i64>(0) == 0
                })
                .await;
                assert!(taken, "the dead daemon's carts were taken over");
                takeovers.push(killed_at.elapsed());
            }
        } else {
            daemons[victim] = spawn_daemon(&configs[victim]);
        }
    }
    assert!(kills_per_daemon.iter().all(|kills| *kills >= 5), "kills spread over the daemons: {kills_per_daemon:?}");

    let finished = wait_until(Duration::from_secs(90), async || {
        simulator.settled()
            && pairs_in(&first_deliveries(&receiver.received())) == true_checkouts_and_orders(&simulator)
    })
    .await;
    for daemon in daemons {
        terminate(daemon);
    }
    let received = receiver.received();
    let first = first_deliveries(&received);
    assert!(finished, "{} carts unsettled", simulator.unsettled());
    assert_eq!(pairs_in(&first), true_checkouts_and_orders(&simulator), "every order delivered, each under one id");
    assert_per_cart_order(&first);
    assert!(!takeovers.is_empty());
    let slowest = takeovers.iter().max().unwrap();
    assert!(*slowest <= Duration::from_secs(5 + 2), "takeover took {slowest:?}; the lease is 5 s");
    println!(
        "30 kills {kills_per_daemon:?}; takeovers {takeovers:?}; {} deliveries of {} events",
        received.len(),
        first.len()
    );
    simulator.stop().await;
}

/// Runs `daemons` daemons in this process on one database, a manual clock shared by all,
/// for ten simulated minutes of a rejected apiCode; returns the requests the partner saw.
async fn storm(daemons: usize) -> usize {
    let directory = tempfile::tempdir().unwrap();
    let simulator =
        simulator(SimulatorSettings { seed: 47, carts: 10, unknown_carts: 0, ..SimulatorSettings::default() }).await;
    let mut config: Config = config_on(&simulator, directory.path(), Backend::Postgres).await;
    config.imaterialise.api_code = Secret::new("11111111-1111-4111-8111-111111111111");
    config.imaterialise.concurrency = 1;
    config.backoff = Config::default().backoff;
    let store = store_for(&config).await;
    track_all(&store, &simulator).await;
    let clock = simulated_clock();
    let shutdown = CancellationToken::new();
    let mut running = Vec::new();
    for _ in 0..daemons {
        let daemon = Daemon::open(config.daemon_settings(), clock.clone()).await.unwrap();
        let (_reloads, receiver) = tokio::sync::mpsc::unbounded_channel();
        running.push((tokio::spawn(daemon.run(receiver, Hooks::default(), shutdown.clone())), _reloads));
    }
    for _ in 0..120 {
        clock.advance(Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    for (task, _) in running {
        task.await.unwrap().unwrap();
    }
    assert!(simulator.request_log().iter().all(|record| record.outcome == "unauthorized"));
    let requests = simulator.requests() as usize;

    simulator.stop().await;
    requests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_401_storm_seen_by_three_daemons_is_probed_as_by_one() {
    let one = storm(1).await;
    let three = storm(3).await;
    // One daemon: the first request, then probes at 1, 3 and 7 minutes. Three: the same
    // probes; only their first requests may cross before the pause is shared.
    assert!((3..=5).contains(&one), "{one} requests from one daemon");
    assert!(three <= one + 2, "three daemons sent {three} requests, one sends {one}");
    assert!(
        three.saturating_sub(3) < one,
        "probes: {} from three daemons, {} from one",
        three.saturating_sub(3),
        one - 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_says_whether_the_database_answers_and_never_shows_its_password() {
    let directory = tempfile::tempdir().unwrap();
    let check = |url: &str| {
        let path = directory.path().join("cartwatch.toml");
        std::fs::write(&path, format!("[database]\nurl = {url:?}\n")).unwrap();
        check_config(&path, &[])
    };
    let output = check(&postgres_database().await);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        stdout.contains("answers; its schema is up to date") && stdout.contains("url = \"<redacted>\""),
        "{stdout}"
    );

    let output = check("postgres://cartwatch:hunter2@127.0.0.1:1/shop");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("postgres://cartwatch@127.0.0.1:1/shop") && stderr.contains("cannot"), "{stderr}");
    assert!(!stderr.contains("hunter2") && !String::from_utf8_lossy(&output.stdout).contains("hunter2"));
}
