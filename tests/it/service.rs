//! Running as a service: the systemd notify protocol played by the test, the unit file
//! checked by systemd-analyze, and every README sqlite3 query run against a database the
//! daemon filled.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::on_both_stores;
use cartwatch_simulator::{DEMO_API_CODE, SimulatorSettings};

fn write_config(directory: &Path, base_url: &str) -> std::path::PathBuf {
    let path = directory.join("cartwatch.toml");
    let text = format!(
        "[database]\npath = {:?}\n[sweep]\ncron = \"* * * * * *\"\n[imaterialise]\nbase_url = {base_url:?}\nrequests_per_second = 0\n[sinks.log]\npath = {:?}\n",
        directory.join("cartwatch.db").display().to_string(),
        events_file(directory).display().to_string(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn receive_until(
    socket: &UnixDatagram,
    messages: &mut Vec<String>,
    deadline: Duration,
    done: impl Fn(&[String]) -> bool,
) -> bool {
    let started = Instant::now();
    let mut buffer = [0u8; 4096];
    while started.elapsed() < deadline {
        if done(messages) {
            return true;
        }
        if let Ok(length) = socket.recv(&mut buffer) {
            let text = String::from_utf8_lossy(&buffer[..length]).into_owned();
            messages.extend(text.lines().map(str::to_owned));
        }
    }
    done(messages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_speaks_the_systemd_notify_protocol() {
    let directory = tempfile::tempdir().unwrap();
    let simulator =
        simulator(SimulatorSettings { seed: 2, carts: 5, unknown_carts: 0, ..SimulatorSettings::default() }).await;
    let config = write_config(directory.path(), &simulator.base_url());
    let socket_path = directory.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();

    let log = std::fs::File::create(directory.path().join("daemon.log")).unwrap();
    let mut child = Command::new(BINARY)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .env("CARTWATCH__IMATERIALISE__API_CODE", DEMO_API_CODE)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut messages = Vec::new();
    let count = |messages: &[String], wanted: &str| messages.iter().filter(|m| *m == wanted).count();

    // READY=1, then the watchdog at least twice per 400 ms interval.
    assert!(receive_until(&socket, &mut messages, Duration::from_secs(10), |m| count(m, "READY=1") == 1));
    let ready_at = Instant::now();
    assert!(receive_until(&socket, &mut messages, Duration::from_secs(3), |m| count(m, "WATCHDOG=1") >= 5));
    assert!(ready_at.elapsed() < Duration::from_millis(2500), "pings come at least every half interval");

    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    assert!(receive_until(&socket, &mut messages, Duration::from_secs(5), |m| count(m, "READY=1") == 2));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(receive_until(&socket, &mut messages, Duration::from_secs(5), |m| m.iter().any(|m| m == "STOPPING=1")));
    assert!(child.wait().unwrap().success());

    let position = |wanted: &str| {
        messages.iter().position(|m| m == wanted).unwrap_or_else(|| panic!("no {wanted} in {messages:?}"))
    };
    let reloading = position("RELOADING=1");
    let second_ready = messages.iter().enumerate().filter(|(_, m)| *m == "READY=1").nth(1).unwrap().0;
    assert!(position("READY=1") < position("WATCHDOG=1"));
    assert!(
        position("WATCHDOG=1") < reloading && reloading < second_ready && second_ready < position("STOPPING=1"),
        "{messages:?}"
    );
    assert!(messages[reloading + 1].starts_with("MONOTONIC_USEC="), "{messages:?}");
    simulator.stop().await;
}

fn systemd_analyze_available() -> bool {
    Command::new("systemd-analyze").arg("--version").output().is_ok_and(|output| output.status.success())
}

#[test]
fn the_unit_verifies_and_is_hardened_to_an_exposure_of_at_most_1_5() {
    if !systemd_analyze_available() {
        eprintln!("systemd-analyze is not installed; the unit checks are skipped");
        return;
    }
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/cartwatch.service");
    // verify checks that ExecStart exists, so point it at the binary under test.
    let directory = tempfile::tempdir().unwrap();
    let copy = directory.path().join("cartwatch.service");
    std::fs::write(&copy, std::fs::read_to_string(&unit).unwrap().replace("/usr/local/bin/cartwatch", BINARY)).unwrap();
    let verify = Command::new("systemd-analyze").arg("verify").arg(&copy).output().unwrap();
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && complaints.trim().is_empty(), "systemd-analyze verify: {complaints}");

    let security = Command::new("systemd-analyze").args(["security", "--offline=yes"]).arg(&unit).output().unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|line| line.split("Overall exposure level for cartwatch.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    assert!(exposure <= 1.5, "exposure {exposure} is above 1.5:\n{report}");
}

/// Runs `query` as pasted into `sqlite3 -readonly`, in JSON mode.
fn sqlite3(database: &Path, query: &str) -> Vec<serde_json::Value> {
    use std::io::Write;
    let mut child = Command::new("sqlite3")
        .arg("-readonly")
        .arg("-json")
        .arg(database)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sqlite3 is installed");
    child.stdin.take().unwrap().write_all(query.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{query}: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8_lossy(&output.stdout);
    if text.trim().is_empty() { Vec::new() } else { serde_json::from_str(&text).unwrap() }
}

/// Runs `query` as pasted into `psql`, each row as a JSON object (integers as numbers).
async fn psql(url: &str, query: &str) -> Vec<serde_json::Value> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let messages = client.simple_query(query).await.unwrap_or_else(|error| panic!("{query}: {error}"));
    messages
        .iter()
        .filter_map(|message| match message {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .map(|row| {
            let fields = row.columns().iter().enumerate().map(|(index, column)| {
                let value = match row.get(index) {
                    None => serde_json::Value::Null,
                    Some(text) => {
                        text.parse::<i64>().map_or_else(|_| serde_json::json!(text), |number| serde_json::json!(number))
                    }
                };
                (column.name().to_owned(), value)
            });
            serde_json::Value::Object(fields.collect())
        })
        .collect()
}

/// The README's `sql` blocks, by their `-- name:` line.
fn readme_queries() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    readme
        .split("```sql\n")
        .skip(1)
        .filter_map(|block| {
            let block = block.split("```").next()?;
            let name = block.lines().next()?.strip_prefix("-- name: ")?.trim().to_owned();
            Some((name, block.to_owned()))
        })
        .collect()
}

on_both_stores! {
async fn every_readme_query_answers_correctly_on_a_database_the_daemon_filled(backend: Backend) {
    assert!(Command::new("sqlite3").arg("-version").output().is_ok(), "sqlite3 is required (.ci/run installs it)");
    let directory = tempfile::tempdir().unwrap();
    let simulator =
        simulator(SimulatorSettings { seed: 13, carts: 25, unknown_carts: 1, ..SimulatorSettings::default() }).await;
    let mut config = config_on(&simulator, directory.path(), backend).await;
    // A webhook nobody listens on, with one attempt: every event becomes a dead letter.
    add_webhook(&mut config, "erp", "http://127.0.0.1:9/hook", WEBHOOK_SECRET);
    config.delivery.schedule = vec![Duration::ZERO.into()];
    let store = store_for(&config).await;
    let tracked = track_all(&store, &simulator).await as u64;
    let daemon = RunningDaemon::start(config.clone());
    let settled = wait_until(Duration::from_secs(60), async || {
        simulator.settled()
            && checkouts_and_orders(&logged_events(directory.path())) == true_checkouts_and_orders(&simulator)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    daemon.stop().await;
    assert!(settled);

    // One cart checked out two hours ago and never ordered.
    let database = config.database.path.clone();
    let url = config.database.url.expose().to_owned();
    let one_stuck = "WHERE cart_key = (SELECT min(cart_key) FROM carts WHERE state = 'tracking' AND status = 'CheckedOut') \
                     RETURNING cart_id";
    let stuck: Option<String> = match backend {
        Backend::Sqlite => rusqlite::Connection::open(&database)
            .unwrap()
            .query_row(
                &format!("UPDATE carts SET status_changed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-2 hours') {one_stuck}"),
                [],
                |row| row.get(0),
            )
            .ok(),
        Backend::Postgres => psql(&url, &format!("UPDATE carts SET status_changed_at = now() - interval '2 hours' {one_stuck}"))
            .await
            .first()
            .and_then(|row| row["cart_id"].as_str().map(str::to_owned)),
    };
    assert!(stuck.is_some(), "the seed has a cart that stays CheckedOut");
    // The carts' events; erp's dead letters are also announced (webhook.dead_lettered, about
    // no cart) to the log sink, and are neither dead nor held there.
    let mut events = store.events_after(0, 10_000).await.unwrap();
    events.retain(|event| event.cart_id.is_some());
    let orders: Vec<_> = simulator.truth().into_iter().filter(|t| t.to == "Ordered").collect();
    let history_cart = orders[0].cart_id.clone();

    let mut held_behind = 0;
    let queries = readme_queries();
    let names: Vec<&str> = queries.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "overview",
            "orders-today",
            "stuck",
            "cart-history",
            "failing",
            "dead-letters",
            "held",
            "backlog",
            "upstream",
            "sweeps",
            "time-to-checkout",
            "time-to-checkout-postgres"
        ]
    );
    for (name, query) in &queries {
        if name.as_str() == (if backend == Backend::Sqlite { "time-to-checkout-postgres" } else { "time-to-checkout" }) {
            continue;
        }
        let query = query.replace("921a2046-66a5-4c5f-b9a6-4bc646fa5e5a", &history_cart);
        let rows = match backend {
            Backend::Sqlite => sqlite3(&database, &query),
            Backend::Postgres => psql(&url, &query).await,
        };
        match name.as_str() {
            "overview" => assert_eq!(rows.iter().map(|r| r["carts"].as_u64().unwrap()).sum::<u64>(), tracked),
            "orders-today" => {
                let mut found: Vec<(String, String)> = rows
                    .iter()
                    .map(|r| (r["cart_id"].as_str().unwrap().to_owned(), r["order_id"].as_str().unwrap().to_owned()))
                    .collect();
                let mut expected: Vec<(String, String)> =
                    orders.iter().map(|t| (t.cart_id.clone(), t.order_id.clone().unwrap())).collect();
                found.sort();
                expected.sort();
                assert_eq!(found, expected);
            }
            "stuck" => {
                let found: Vec<&str> = rows.iter().map(|r| r["cart_id"].as_str().unwrap()).collect();
                assert_eq!(found, stuck.iter().map(String::as_str).collect::<Vec<_>>());
            }
            "cart-history" => {
                let found: Vec<&str> = rows.iter().map(|r| r["to_status"].as_str().unwrap()).collect();
                let expected: Vec<String> =
                    simulator.truth().into_iter().filter(|t| t.cart_id == history_cart).map(|t| t.to).collect();
                assert_eq!(found, expected);
            }
            "failing" => assert!(rows.is_empty(), "{rows:?}"),
            "dead-letters" => {
                // The first event of each cart is dead; the cart's later ones wait behind it.
                let mut carts: Vec<&str> = events.iter().filter_map(|event| event.cart_id.as_deref()).collect();
                carts.sort();
                carts.dedup();
                assert_eq!(rows.len(), carts.len());
                assert!(
                    rows.iter()
                        .all(|r| r["sink"] == "erp" && r["last_error"].as_str().unwrap().contains("cannot reach"))
                );
                held_behind = events.len() - rows.len();
            }
            "held" => {
                assert_eq!(rows.len(), held_behind);
                assert!(
                    rows.iter().all(|r| r["sink"] == "erp" && r["held_behind"].as_str().unwrap().starts_with("evt_"))
                );
            }
            "backlog" => {
                assert_eq!(rows.len(), 2);
                let pending =
                    |sink: &str| rows.iter().find(|r| r["sink"] == sink).unwrap()["pending"].as_u64().unwrap();
                assert_eq!((pending("log"), pending("erp")), (0, held_behind as u64), "{rows:?}");
            }
            "upstream" => {
                assert_eq!(rows.len(), 1, "{rows:?}");
                assert_eq!(rows[0]["mode"], "healthy");
                assert!(rows[0]["last_success_at"].is_string(), "healthy is shown too, with the last success");
            }
            "sweeps" => {
                assert_eq!(rows.len(), 10);
                assert!(rows.iter().all(|r| r["stopped_early"].is_null()));
            }
            "time-to-checkout" | "time-to-checkout-postgres" => {
                let mut checked_out: Vec<String> =
                    simulator.truth().into_iter().filter(|t| t.to == "CheckedOut").map(|t| t.cart_id).collect();
                checked_out.sort();
                checked_out.dedup();
                let carts: u64 = rows.iter().map(|r| r["carts"].as_u64().unwrap()).sum();
                assert_eq!(carts, checked_out.len() as u64, "{rows:?}");
                assert!(rows.iter().all(|r| r["checked_out_after"].as_str().unwrap().contains(':')), "{rows:?}");
            }
            other => panic!("no check for query {other}"),
        }
    }
    simulator.stop().await;
}
}

fn cargo_deb_available() -> bool {
    Command::new("cargo").args(["deb", "--version"]).output().is_ok_and(|output| output.status.success())
}

/// Runs `program` with `arguments` and returns its standard output, failing with its
/// standard error.
fn output_of(program: &str, arguments: &[&str], directory: &Path) -> String {
    let output = Command::new(program).args(arguments).current_dir(directory).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{program} {arguments:?}: {stderr}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `.ci/package` on a copy of the sources with the binary under test in place of a release
/// build (so the test costs no optimised build), then the package's files, conffiles,
/// unit and postinst as dpkg-deb shows them.
#[test]
fn the_debian_package_installs_the_service_its_config_and_its_documentation() {
    if !cargo_deb_available() {
        eprintln!("cargo-deb is not installed (cargo install cargo-deb); the package test is skipped");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let copy = tempfile::tempdir().unwrap();
    for file in ["Cargo.toml", "Cargo.lock", "LICENSE", "README.md", "CHANGELOG.md"] {
        std::fs::copy(root.join(file), copy.path().join(file)).unwrap();
    }
    for directory in ["src", "config", "systemd", ".ci", "crates/simulator"] {
        copy_tree(&root.join(directory), &copy.path().join(directory));
    }
    std::fs::create_dir_all(copy.path().join("target/release")).unwrap();
    std::fs::copy(BINARY, copy.path().join("target/release/cartwatch")).unwrap();
    let output = copy.path().join("out");
    // Stripped and lightly compressed: the debug binary is 250 MB, and xz would take a minute.
    let output_arg = output.to_str().unwrap();
    output_of(".ci/package", &["--no-build", "--offline", "--strip", "--fast", "--output", output_arg], copy.path());
    let package = std::fs::read_dir(&output).unwrap().next().unwrap().unwrap().path();
    let package = package.to_str().unwrap();

    let contents = output_of("dpkg-deb", &["--contents", package], copy.path());
    let files: Vec<&str> = contents.lines().filter_map(|line| line.split_whitespace().nth(5)).collect();
    for expected in [
        "./usr/bin/cartwatch",
        "./etc/cartwatch/cartwatch.toml",
        "./usr/share/man/man1/cartwatch.1.gz",
        "./usr/share/bash-completion/completions/cartwatch",
        "./usr/share/zsh/vendor-completions/_cartwatch",
        "./usr/share/fish/vendor_completions.d/cartwatch.fish",
        "./usr/share/doc/cartwatch/README.md",
        "./usr/share/doc/cartwatch/CHANGELOG.md",
        "./usr/share/doc/cartwatch/copyright",
        "./usr/share/cartwatch/monitoring/cartwatch-alerts.yml",
        "./usr/share/cartwatch/monitoring/cartwatch-dashboard.json",
    ] {
        assert!(files.contains(&expected), "{expected} is not in the package:\n{contents}");
    }
    let unit_path = files
        .iter()
        .find(|file| file.ends_with("/systemd/system/cartwatch.service"))
        .unwrap_or_else(|| panic!("no unit in the package:\n{contents}"));

    let unpacked = copy.path().join("unpacked");
    output_of("dpkg-deb", &["--raw-extract", package, unpacked.to_str().unwrap()], copy.path());
    let unit = std::fs::read_to_string(unpacked.join(unit_path)).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/cartwatch --config /etc/cartwatch/cartwatch.toml run"), "{unit}");
    assert!(unit.contains("Documentation=file:///usr/share/doc/cartwatch/README.md"), "{unit}");
    assert!(!unit.contains("/usr/local/"), "{unit}");
    let conffiles = std::fs::read_to_string(unpacked.join("DEBIAN/conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/cartwatch/cartwatch.toml");
    assert_eq!(
        std::fs::read(unpacked.join("etc/cartwatch/cartwatch.toml")).unwrap(),
        std::fs::read(root.join("config/cartwatch.toml")).unwrap()
    );
    let postinst = std::fs::read_to_string(unpacked.join("DEBIAN/postinst")).unwrap();
    assert!(postinst.contains("install -d -m 0700 /etc/cartwatch/credentials"), "{postinst}");
    assert!(postinst.contains("systemctl"), "the unit's install steps are generated in: {postinst}");
    assert!(!postinst.contains("#DEBHELPER#"), "{postinst}");
    let control = std::fs::read_to_string(unpacked.join("DEBIAN/control")).unwrap();
    assert!(control.contains("Package: cartwatch") && control.contains("Version: 0.1.0"), "{control}");
    let manual = output_of(
        "sh",
        &["-c", &format!("gzip -dc {}", unpacked.join("usr/share/man/man1/cartwatch.1.gz").display())],
        copy.path(),
    );
    assert!(manual.contains(".TH cartwatch"), "{manual}");
}
