//! The real binary: bad input is refused with a clear message and changes nothing, the
//! config is explained, and SIGTERM stops the daemon cleanly.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::common::*;
use crate::on_both_stores;
use cartwatch_simulator::{DEMO_API_CODE, SimulatorSettings};

fn cartwatch(config: &Path, arguments: &[&str]) -> Output {
    Command::new(BINARY).arg("--config").arg(config).args(arguments).env_remove("RUST_LOG").output().unwrap()
}

fn write_config(directory: &Path, extra: &str) -> std::path::PathBuf {
    let path = directory.join("cartwatch.toml");
    let text = format!(
        "[database]\npath = {:?}\n[sinks.log]\npath = {:?}\n{extra}",
        directory.join("cartwatch.db").display().to_string(),
        events_file(directory).display().to_string()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A config file in `directory` on `backend`, `extra` appended, and the config it means.
async fn write_config_on(
    directory: &Path,
    backend: Backend,
    extra: &str,
) -> (std::path::PathBuf, cartwatch::config::Config) {
    let mut config = cartwatch::config::Config::default();
    config.database.path = directory.join("cartwatch.db");
    if backend == Backend::Postgres {
        config.database.url = cartwatch::secret::Secret::new(postgres_database().await);
    }
    let path = directory.join("cartwatch.toml");
    let text = format!(
        "[database]\npath = {:?}\nurl = {:?}\n[sinks.log]\npath = {:?}\n{extra}",
        config.database.path.display().to_string(),
        config.database.url.expose(),
        events_file(directory).display().to_string()
    );
    std::fs::write(&path, text).unwrap();
    (path, config)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn cart_count(directory: &Path) -> i64 {
    let path = directory.join("cartwatch.db");
    if !path.exists() {
        return 0;
    }
    rusqlite::Connection::open(path).unwrap().query_row("SELECT count(*) FROM carts", [], |row| row.get(0)).unwrap()
}

#[test]
fn track_rejects_malformed_ids_and_inserts_nothing() {
    let directory = tempfile::tempdir().unwrap();
    let config = write_config(directory.path(), "");
    let output = cartwatch(&config, &["track", "921A2046-66A5-4C5F-B9A6-4BC646FA5E5A", "not-a-cart", "12345"]);
    assert_eq!(output.status.code(), Some(5));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("malformed cart id \"not-a-cart\""), "{stderr}");
    assert!(stderr.contains("malformed cart id \"12345\""), "{stderr}");
    assert!(stderr.contains("nothing was registered"), "{stderr}");
    assert_eq!(cart_count(directory.path()), 0);

    // From a file, with line numbers.
    let list = directory.path().join("carts.txt");
    std::fs::write(&list, "921a2046-66a5-4c5f-b9a6-4bc646fa5e5a\nbee2c269-1dbd-4f67-b9f1\n").unwrap();
    let output = cartwatch(&config, &["track", "--file", list.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(5));
    assert!(text(&output.stderr).contains("line 2: malformed cart id"), "{}", text(&output.stderr));
    assert_eq!(cart_count(directory.path()), 0);
}

on_both_stores! {
async fn track_normalises_and_status_shows_the_cart(backend: Backend) {
    let directory = tempfile::tempdir().unwrap();
    let (config, settings) = write_config_on(directory.path(), backend, "").await;
    let output = cartwatch(&config, &["track", "--reference", "order-17", "921A2046-66A5-4C5F-B9A6-4BC646FA5E5A"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("1 cart(s) added"));

    let mut child = Command::new(BINARY)
        .arg("--config")
        .arg(&config)
        .args(["track", "--file", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"# from the shop\nBEE2C269-1DBD-4F67-B9F1-2EA2D3B4917B,order-18\n921a2046-66a5-4c5f-b9a6-4bc646fa5e5a\n",
        )
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert!(text(&output.stdout).contains("already tracked"));
    assert_eq!(count_carts_elsewhere(&settings).await, 2);

    let output = cartwatch(&config, &["status", "921a2046-66a5-4c5f-b9a6-4bc646fa5e5a"]);
    let stdout = text(&output.stdout);
    assert!(stdout.contains("order-17") && stdout.contains("tracking"), "{stdout}{}", text(&output.stderr));
    let output = cartwatch(&config, &["status"]);
    assert!(text(&output.stdout).contains("due now: 2"), "{}", text(&output.stdout));

    // Registering again with another reference says what it replaces (on both stores).
    let output = cartwatch(&config, &["track", "--reference", "order-19", "921a2046-66a5-4c5f-b9a6-4bc646fa5e5a"]);
    assert!(output.status.success());
    assert!(text(&output.stdout).contains("its reference \"order-17\" is replaced"), "{}", text(&output.stdout));
    let output = cartwatch(&config, &["track", "--reference", "order-19", "921a2046-66a5-4c5f-b9a6-4bc646fa5e5a"]);
    assert!(!text(&output.stdout).contains("replaced"), "the same reference replaces nothing");

    let output = cartwatch(
        &config,
        &["untrack", "bee2c269-1dbd-4f67-b9f1-2ea2d3b4917b", "59dcca18-05e7-4f5c-8b4e-89e987ea1e51"],
    );
    assert_eq!(output.status.code(), Some(5), "one of them is unknown");
    assert!(text(&output.stdout).contains("bee2c269-1dbd-4f67-b9f1-2ea2d3b4917b: untracked"));

    let output = cartwatch(&config, &["status", "59dcca18-05e7-4f5c-8b4e-89e987ea1e51"]);
    assert_eq!(output.status.code(), Some(5));
    assert!(text(&output.stderr).contains("not in the database"));
}
}

#[test]
fn a_broken_config_names_each_key_and_problem() {
    let directory = tempfile::tempdir().unwrap();
    let config = write_config(
        directory.path(),
        "[imaterialise]\nbatch_size = 12\nbase_url = \"not a url\"\nbacth_size = 3\n[sweep]\ncron = \"*/5 * * * *\"\n",
    );
    let output = cartwatch(&config, &["check-config"]);
    assert_eq!(output.status.code(), Some(3));
    let stderr = text(&output.stderr);
    for expected in [
        "imaterialise.bacth_size: unknown key",
        "imaterialise.batch_size: must be between 1 and 10",
        "imaterialise.base_url: not a valid URL",
        "sweep.cron: unparsable cron expression",
        "imaterialise.api_code: missing apiCode",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }

    std::fs::write(&config, "[imaterialise\nbatch_size = 3\n").unwrap();
    let output = cartwatch(&config, &["check-config"]);
    assert_eq!(output.status.code(), Some(3));
    assert!(text(&output.stderr).contains("cartwatch.toml"), "{}", text(&output.stderr));

    let output = cartwatch(&directory.path().join("missing.toml"), &["status"]);
    assert_eq!(output.status.code(), Some(3));
    assert!(text(&output.stderr).contains("missing.toml"));
}

#[test]
fn check_config_redacts_the_api_code_from_any_source() {
    let directory = tempfile::tempdir().unwrap();
    let secret_file = directory.path().join("api-code");
    std::fs::write(&secret_file, format!("{DEMO_API_CODE}\n")).unwrap();
    let config = write_config(
        directory.path(),
        &format!("[imaterialise]\napi_code_file = {:?}\n", secret_file.display().to_string()),
    );
    let output = cartwatch(&config, &["check-config"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(stdout.contains("api_code = \"<redacted>\""), "{stdout}");
    assert!(!stdout.contains(DEMO_API_CODE));

    let config = write_config(directory.path(), "");
    let output = check_config(&config, &[("CARTWATCH__IMATERIALISE__BATCH_SIZE", "7")]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(stdout.contains("batch_size = 7"));
    assert!(!stdout.contains(DEMO_API_CODE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_daemon_cleanly_and_nothing_secret_is_logged() {
    let directory = tempfile::tempdir().unwrap();
    let simulator =
        simulator(SimulatorSettings { seed: 9, carts: 20, unknown_carts: 0, ..SimulatorSettings::default() }).await;
    let config = write_config(
        directory.path(),
        &format!(
            "[sweep]\ncron = \"* * * * * *\"\n[imaterialise]\nbase_url = {:?}\nrequests_per_second = 0\n[logging]\nlevel = \"debug\"\nformat = \"json\"\n",
            simulator.base_url()
        ),
    );
    let ids: Vec<String> = simulator.cart_ids().iter().map(ToString::to_string).collect();
    let mut arguments = vec!["track"];
    arguments.extend(ids.iter().map(String::as_str));
    assert!(cartwatch(&config, &arguments).status.success());

    let child = Command::new(BINARY)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("CARTWATCH__IMATERIALISE__API_CODE", DEMO_API_CODE)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let requested = wait_until(Duration::from_secs(15), async || simulator.requests() >= 2).await;
    assert!(requested, "the daemon polled");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let output = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("SIGTERM received") && stderr.contains("cartwatch stopped"), "{stderr}");
    assert!(!stderr.contains(DEMO_API_CODE), "the apiCode must never be logged");
    // Every line is JSON, as configured, and lines about a cart carry its id.
    for line in stderr.lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        if value["message"] == "status changed" {
            assert!(value["cart_id"].is_string(), "{line}");
        }
    }
    simulator.stop().await;
}

on_both_stores! {
async fn events_lists_delivery_states_and_manages_dead_letters(backend: Backend) {
    use cartwatch::events::{CartEventData, EventType, NewEvent};
    use cartwatch::outbox::{DeliveryResult, SinkSpec};
    let directory = tempfile::tempdir().unwrap();
    let (config_path, config) = write_config_on(directory.path(), backend, "").await;
    let store = store_for(&config).await;
    let sink = |name: &str, kind: &str| SinkSpec {
        name: name.into(),
        kind: kind.into(),
        target: "x".into(),
        event_types: None,
    };
    store.sync_sinks(vec![sink("log", "log"), sink("erp", "webhook")], chrono::Utc::now()).await.unwrap();
    let data = CartEventData {
        cart_id: "921a2046-66a5-4c5f-b9a6-4bc646fa5e5a".into(),
        status: Some("Ordered".into()),
        previous_status: None,
        order_id: Some("7cf9f78f-6631-44be-905a-94cee7a2cd9c".into()),
        cart_created_at: None,
        reference: None,
        provider: "imaterialise".into(),
    };
    let event = NewEvent::cart(EventType::CartOrdered, &data, chrono::Utc::now());
    store.write_events(vec![event.clone()]).await.unwrap();
    let now = chrono::Utc::now();
    store
        .record_deliveries("log".into(), vec![DeliveryResult::Delivered { event_seq: 1, status: None }], vec![], now)
        .await
        .unwrap();
    let dead = DeliveryResult::Dead { event_seq: 1, status: Some(500), error: "HTTP 500: boom".into() };
    store.record_deliveries("erp".into(), vec![dead], vec![], now).await.unwrap();

    let listing = text(&cartwatch(&config_path, &["events"]).stdout);
    assert!(
        listing.contains(&event.event_id)
            && listing.contains("log:delivered")
            && listing.contains("erp:dead(1 attempt(s))"),
        "{listing}"
    );
    let json = text(&cartwatch(&config_path, &["events", "--json", "--after", "0"]).stdout);
    let value: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(value["id"], event.event_id.as_str());
    assert_eq!(value["deliveries"][0]["sink"], "erp");
    assert_eq!(value["deliveries"][0]["state"], "dead");
    assert!(text(&cartwatch(&config_path, &["events", "--after", "1"]).stdout).is_empty());

    let dead_letters = text(&cartwatch(&config_path, &["events", "dead"]).stdout);
    assert!(
        dead_letters.contains(&event.event_id)
            && dead_letters.contains("endpoint erp")
            && dead_letters.contains("HTTP 500"),
        "{dead_letters}"
    );

    let output = cartwatch(&config_path, &["events", "redeliver", "--dead", "--endpoint", "nope"]);
    assert_eq!(output.status.code(), Some(5));
    assert!(text(&output.stderr).contains("known endpoints: erp, log"));
    let output = cartwatch(&config_path, &["events", "redeliver", "evt_doesnotexist"]);
    assert_eq!(output.status.code(), Some(5));
    let output = cartwatch(&config_path, &["events", "redeliver", "--dead", "--endpoint", "erp"]);
    assert!(output.status.success());
    assert!(text(&output.stdout).starts_with("1 deliver(ies) queued"));
    assert_eq!(text(&cartwatch(&config_path, &["events", "dead"]).stdout).trim(), "no dead letters");
    let states = store.delivery_states(vec![1]).await.unwrap();
    let erp = &states.iter().find(|(_, state)| state.sink == "erp").unwrap().1;
    assert_eq!((erp.state.as_str(), erp.attempts), ("pending", 0));
    // Redelivering one event by id to one endpoint re-queues only that delivery.
    let output = cartwatch(&config_path, &["events", "redeliver", &event.event_id, "--endpoint", "log"]);
    assert!(output.status.success());
    let states = store.delivery_states(vec![1]).await.unwrap();
    assert!(states.iter().all(|(_, state)| state.state.as_str() == "pending"));
}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_tails_new_events() {
    use cartwatch::events::{EventType, NewEvent, UpstreamEventData};
    use std::io::BufRead;
    let directory = tempfile::tempdir().unwrap();
    let config_path = write_config(directory.path(), "");
    let mut config = cartwatch::config::Config::default();
    config.database.path = directory.path().join("cartwatch.db");
    let store = store_for(&config).await;
    let event = |message: &str| {
        let data = UpstreamEventData { provider: "imaterialise".into(), message: message.into(), since: None };
        NewEvent::upstream(EventType::UpstreamAuthFailed, &data, chrono::Utc::now())
    };
    store.write_events(vec![event("first")]).await.unwrap();

    let mut child = Command::new(BINARY)
        .arg("--config")
        .arg(&config_path)
        .args(["events", "--follow", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    let next = || receiver.recv_timeout(Duration::from_secs(5)).expect("a line within 5 s");
    let first: serde_json::Value = serde_json::from_str(&next()).unwrap();
    assert_eq!(first["data"]["message"], "first");
    store.write_events(vec![event("second"), event("third")]).await.unwrap();
    let second: serde_json::Value = serde_json::from_str(&next()).unwrap();
    let third: serde_json::Value = serde_json::from_str(&next()).unwrap();
    assert_eq!(
        (second["data"]["message"].as_str(), third["data"]["message"].as_str()),
        (Some("second"), Some("third"))
    );
    assert_eq!(third["seq"], 3);
    child.kill().unwrap();
    child.wait().unwrap();
}

on_both_stores! {
async fn events_are_redelivered_by_time_range_and_type(backend: Backend) {
    let directory = tempfile::tempdir().unwrap();
    let simulator =
        simulator(SimulatorSettings { seed: 31, carts: 8, unknown_carts: 0, ..SimulatorSettings::default() }).await;
    let config = config_on(&simulator, directory.path(), backend).await;
    let store = store_for(&config).await;
    track_all(&store, &simulator).await;
    let clock = simulated_clock();
    for _ in 0..20 {
        poll_once_at(&config, &clock).await;
        clock.advance(Duration::from_secs(2));
    }
    let events = store.events_after(0, 1000).await.unwrap();
    let ordered: Vec<i64> = events.iter().filter(|event| event.event_type == "cart.ordered").map(|e| e.seq).collect();
    assert!(!ordered.is_empty() && ordered.len() < events.len(), "{} of {}", ordered.len(), events.len());
    let states = |seqs: Vec<i64>| {
        let store = store.clone();
        async move { store.delivery_states(seqs).await.unwrap().into_iter().map(|(_, state)| state.state).collect::<Vec<_>>() }
    };
    let all: Vec<i64> = events.iter().map(|event| event.seq).collect();
    assert!(states(all.clone()).await.iter().all(|state| state == "delivered"));

    let file = directory.path().join("cartwatch.toml");
    std::fs::write(
        &file,
        format!(
            "[database]\npath = {:?}\nurl = {:?}\n[sinks.log]\npath = {:?}\n",
            config.database.path.display().to_string(),
            config.database.url.expose(),
            events_file(directory.path()).display().to_string()
        ),
    )
    .unwrap();
    // Written long before the range: nothing.
    let output = cartwatch(&file, &["events", "redeliver", "--since", "2000-01-01T00:00:00Z", "--until", "2001-01-01T00:00:00Z"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("0 event(s) written"), "{}", text(&output.stdout));
    // The orders since yesterday: queued again, the other events left delivered. (The
    // sweeps ran on a clock moved ahead of this one, hence an explicit end.)
    let output = cartwatch(
        &file,
        &["events", "redeliver", "--since", "1d", "--until", "2100-01-01T00:00:00Z", "--type", "cart.ordered"],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let said = text(&output.stdout);
    assert!(said.contains(&format!("{} event(s) written", ordered.len())), "{said}");
    assert!(said.contains(&format!("{} deliver(ies) queued", ordered.len())), "{said}");
    assert!(states(ordered.clone()).await.iter().all(|state| state == "pending"));
    let others: Vec<i64> = all.into_iter().filter(|seq| !ordered.contains(seq)).collect();
    assert!(states(others).await.iter().all(|state| state == "delivered"));
    // Bad values are a bad command line.
    for arguments in [
        &["events", "redeliver", "--since", "yesterday-ish"][..],
        &["events", "redeliver", "--since", "1h", "--type", "cart.shipped"],
        &["events", "redeliver", "--until", "1h"],
    ] {
        assert_eq!(cartwatch(&file, arguments).status.code(), Some(2), "{arguments:?}");
    }
    simulator.stop().await;
}
}

/// Every key of `value` (nested) that is not camelCase.
fn snake_keys(value: &serde_json::Value) -> Vec<String> {
    match value {
        serde_json::Value::Object(map) => map
            .iter()
            .flat_map(|(key, inner)| {
                let mut found = snake_keys(inner);
                if key.contains('_') {
                    found.push(key.clone());
                }
                found
            })
            .collect(),
        serde_json::Value::Array(items) => items.iter().flat_map(snake_keys).collect(),
        _ => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_inspection_command_speaks_camel_case_json() {
    let directory = tempfile::tempdir().unwrap();
    let simulator = simulator(SimulatorSettings {
        seed: 41,
        carts: 4,
        unknown_carts: 0,
        uniform_status: Some(cartwatch_simulator::Status::Pending),
        ..SimulatorSettings::default()
    })
    .await;
    let secret = cartwatch::sinks::webhook::new_secret();
    let file = directory.path().join("cartwatch.toml");
    std::fs::write(
        &file,
        format!(
            "[database]\npath = {:?}\n[sweep]\ncron = \"* * * * * *\"\n[imaterialise]\nbase_url = {:?}\napi_code = {:?}\n\
             requests_per_second = 0\n[delivery]\nschedule = [\"0s\"]\n[webhooks.erp]\nurl = \"http://127.0.0.1:9/hook\"\n\
             secret = {:?}\n[sinks.log]\npath = {:?}\n",
            directory.path().join("cartwatch.db").display().to_string(),
            simulator.base_url(),
            DEMO_API_CODE,
            secret.expose(),
            events_file(directory.path()).display().to_string()
        ),
    )
    .unwrap();
    let run = |arguments: &[&str]| {
        let output = cartwatch(&file, arguments);
        assert!(output.status.success(), "{arguments:?}: {}", text(&output.stderr));
        text(&output.stdout)
    };
    let carts: Vec<String> = simulator.cart_ids().iter().map(ToString::to_string).collect();
    run(&["track", &carts[0], &carts[1]]);
    // A sweep sees the carts Pending (and records the sinks); an item change then makes an
    // event, which the webhook nobody answers dead-letters at the next delivery pass.
    let _ = cartwatch(&file, &["poll-once"]);
    let item = simulator.items()[0].0.clone();
    run(&["items", "add", &carts[0], &item]);
    let _ = cartwatch(&file, &["poll-once"]);

    let status: serde_json::Value = serde_json::from_str(run(&["status", "--json"]).trim()).unwrap();
    assert_eq!(status["carts"].as_array().unwrap().iter().map(|c| c["carts"].as_u64().unwrap()).sum::<u64>(), 2);
    assert_eq!(status["upstreams"][0]["mode"], "healthy");
    assert!(
        status["sinks"].as_array().unwrap().iter().any(|sink| sink["sink"] == "erp" && sink["dead"].as_u64() > Some(0)),
        "{status}"
    );
    assert!(status["lastSweep"]["cartsPolled"].as_u64() >= Some(2), "{status}");
    assert_eq!(status["plans"][0]["provider"], "imaterialise");
    assert_eq!(snake_keys(&status), Vec::<String>::new(), "{status}");

    let cart: serde_json::Value = serde_json::from_str(run(&["status", &carts[0], "--json"]).trim()).unwrap();
    assert_eq!(cart["cartId"], carts[0].as_str());
    assert_eq!(cart["transitions"][0]["toStatus"], "Pending");
    assert!(cart["nextPoll"]["why"].as_str().unwrap().contains("every"), "{cart}");
    assert_eq!(snake_keys(&cart), Vec::<String>::new(), "{cart}");

    let dead = run(&["events", "dead", "--json"]);
    let letters: Vec<serde_json::Value> = dead.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert!(!letters.is_empty());
    for letter in &letters {
        assert_eq!(letter["deliveries"][0]["state"], "dead", "{letter}");
        assert!(letter["deliveries"][0]["lastError"].is_string(), "{letter}");
        assert_eq!(snake_keys(letter), Vec::<String>::new(), "{letter}");
    }

    let items = run(&["items", "list", &carts[0], "--json"]);
    let change: serde_json::Value = serde_json::from_str(items.lines().next().unwrap()).unwrap();
    assert_eq!((change["cartItemId"].as_str(), change["action"].as_str()), (Some(item.as_str()), Some("add")));
    assert_eq!(snake_keys(&change), Vec::<String>::new(), "{change}");

    let checked: serde_json::Value = serde_json::from_str(run(&["check-config", "--json"]).trim()).unwrap();
    assert_eq!(checked["valid"], true);
    assert_eq!(checked["config"]["imaterialise"]["batch_size"], 10, "config keys as in the file");
    assert!(!checked.to_string().contains(secret.expose()), "secrets redacted");
    let bad = directory.path().join("bad.toml");
    std::fs::write(&bad, "[imaterialise]\nbatch_size = 12\n").unwrap();
    let output = cartwatch(&bad, &["check-config", "--json"]);
    assert_eq!(output.status.code(), Some(3));
    let refused: serde_json::Value = serde_json::from_str(text(&output.stdout).trim()).unwrap();
    assert_eq!(refused["valid"], false);
    assert!(refused["problems"].as_array().unwrap().iter().any(|problem| problem["key"] == "imaterialise.batch_size"));
    simulator.stop().await;
}
