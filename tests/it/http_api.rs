//! The local HTTP API against a running daemon: every endpoint's success and error cases, the
//! token rule, the body limit, and a metrics scrape parsed as Prometheus text whose counters
//! move as sweeps run.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use cartwatch::secret::Secret;
use cartwatch_simulator::SimulatorSettings;
use serde_json::{Value, json};

const TOKEN: &str = "s3cret-token-for-tests";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None, Some(TOKEN)).await
    }

    async fn metrics(&self) -> HashMap<String, f64> {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200);
        let text = body.as_str().unwrap().to_owned();
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).unwrap();
        let mut values = HashMap::new();
        for sample in scrape.samples {
            let value = match sample.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => continue,
            };
            let mut labels: Vec<String> = sample.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            *values.entry(format!("{}{{{}}}", sample.metric, labels.join(","))).or_default() += value;
            *values.entry(sample.metric.clone()).or_default() += value;
        }
        values
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_end_to_end() {
    let directory = tempfile::tempdir().unwrap();
    let simulator =
        simulator(SimulatorSettings { seed: 23, carts: 12, unknown_carts: 0, ..SimulatorSettings::default() }).await;
    let mut config = config_for(&simulator, directory.path());
    let port = free_port();
    config.http.listen = format!("127.0.0.1:{port}");
    config.http.token = Secret::new(TOKEN);
    config.http.max_body_bytes = 4096;
    let daemon = RunningDaemon::start(config.clone());
    let api = Api { base: format!("http://127.0.0.1:{port}"), client: reqwest::Client::new() };
    assert!(
        wait_until(Duration::from_secs(5), async || api
            .client
            .get(format!("{}/healthz", api.base))
            .send()
            .await
            .is_ok())
        .await
    );

    // Probes need no token.
    assert_eq!(api.call(reqwest::Method::GET, "/healthz", None, None).await, (200, json!({ "status": "ok" })));
    assert_eq!(api.call(reqwest::Method::GET, "/readyz", None, None).await.0, 200);
    // Everything else does, and a wrong one is refused.
    assert_eq!(api.call(reqwest::Method::GET, "/metrics", None, None).await.0, 401);
    assert_eq!(api.call(reqwest::Method::GET, "/v1/events", None, Some("wrong")).await.0, 401);
    assert_eq!(api.get("/nope").await.0, 404);

    // Register: one, with a reference, in upper case.
    let ids: Vec<String> = simulator.cart_ids().iter().map(ToString::to_string).collect();
    let (status, body) = api
        .call(
            reqwest::Method::POST,
            "/v1/carts",
            Some(json!({ "cartId": ids[0].to_uppercase(), "reference": "order-1" })),
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["carts"][0],
        json!({ "cartId": ids[0], "outcome": "added", "state": null, "replacedReference": null })
    );
    // Many, one of them already known.
    let (status, body) = api.call(reqwest::Method::POST, "/v1/carts", Some(json!({ "carts": ids })), Some(TOKEN)).await;
    assert_eq!(status, 200);
    let outcomes: Vec<&str> =
        body["carts"].as_array().unwrap().iter().map(|c| c["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes.iter().filter(|o| **o == "added").count(), 11);
    assert_eq!(outcomes[0], "already_tracked");
    assert_eq!(body["carts"][0]["replacedReference"], Value::Null, "no reference given, none replaced");
    let (_, body) = api
        .call(
            reqwest::Method::POST,
            "/v1/carts",
            Some(json!({ "cartId": ids[0], "reference": "order-2" })),
            Some(TOKEN),
        )
        .await;
    assert_eq!(body["carts"][0]["replacedReference"], "order-1");
    let (_, body) = api
        .call(
            reqwest::Method::POST,
            "/v1/carts",
            Some(json!({ "cartId": ids[0], "reference": "order-1" })),
            Some(TOKEN),
        )
        .await;
    assert_eq!(body["carts"][0]["replacedReference"], "order-2");

    // Malformed requests: 400 with the problem named, nothing registered.
    let (status, body) = api
        .call(
            reqwest::Method::POST,
            "/v1/carts",
            Some(json!(["59dcca18-05e7-4f5c-8b4e-89e987ea1e51", "nope"])),
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("carts[1]: malformed cart id \"nope\""), "{body}");
    assert_eq!(api.get("/v1/carts/59dcca18-05e7-4f5c-8b4e-89e987ea1e51").await.0, 404, "all or nothing");
    let raw = api
        .client
        .post(format!("{}/v1/carts", api.base))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{\"cartId\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 400);
    let body: Value = serde_json::from_str(&raw.text().await.unwrap()).unwrap();
    assert!(body["error"].as_str().unwrap().contains("not valid JSON"));
    let raw = api
        .client
        .post(format!("{}/v1/carts", api.base))
        .bearer_auth(TOKEN)
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 415);
    // The body limit.
    let huge = json!({ "carts": vec!["921a2046-66a5-4c5f-b9a6-4bc646fa5e5a"; 200] });
    let (status, body) = api.call(reqwest::Method::POST, "/v1/carts", Some(huge), Some(TOKEN)).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].is_string());

    // The daemon polls them; the cart shows its transitions.
    assert!(wait_until(Duration::from_secs(10), async || simulator.requests() >= 3).await);
    let polled = wait_until(Duration::from_secs(10), async || {
        api.get(&format!("/v1/carts/{}", ids[0])).await.1["transitions"].as_array().is_some_and(|t| !t.is_empty())
    })
    .await;
    assert!(polled);
    let (status, cart) = api.get(&format!("/v1/carts/{}", ids[0].to_uppercase())).await;
    assert_eq!(status, 200);
    assert_eq!((cart["cartId"].as_str(), cart["reference"].as_str()), (Some(ids[0].as_str()), Some("order-1")));
    assert_eq!(api.get("/v1/carts/not-a-guid").await.0, 400);

    // Metrics parse as Prometheus text and move as sweeps run.
    let before = api.metrics().await;
    assert_eq!(before["cartwatch_carts"], 12.0);
    assert!(before["cartwatch_upstream_requests_total{outcome=ok,provider=imaterialise}"] >= 1.0);
    assert!(before["cartwatch_last_successful_sweep_timestamp_seconds"] > 1.7e9);
    assert!(before["cartwatch_sweep_duration_seconds_count"] >= 1.0);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = api.metrics().await;
    assert!(after["cartwatch_sweeps_total"] > before["cartwatch_sweeps_total"]);
    assert!(after["cartwatch_upstream_requests_total"] > before["cartwatch_upstream_requests_total"]);
    assert!(after["cartwatch_transitions_total"] >= before["cartwatch_transitions_total"]);
    assert!(after["cartwatch_transitions_total"] > 0.0);
    assert!(after.contains_key("cartwatch_outbox_backlog{sink=log}"));
    // Deliveries are counted once the first checkout or order has been announced.
    let delivered = wait_until(Duration::from_secs(15), async || {
        api.metrics()
            .await
            .get("cartwatch_deliveries_total{outcome=delivered,sink=log}")
            .is_some_and(|count| *count >= 1.0)
    })
    .await;
    assert!(delivered);

    // The events cursor.
    let (status, page) = api.get("/v1/events?after=0&limit=2").await;
    assert_eq!(status, 200);
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(page["nextAfter"], events[1]["seq"]);
    let (_, next) = api.get(&format!("/v1/events?after={}&limit=1000", page["nextAfter"])).await;
    assert!(next["events"].as_array().unwrap().iter().all(|e| e["seq"].as_i64() > page["nextAfter"].as_i64()));
    assert!(events.iter().all(|e| e["id"].as_str().unwrap().starts_with("evt_") && e["type"].is_string()));
    for bad in ["/v1/events?after=-1", "/v1/events?limit=0", "/v1/events?limit=5000", "/v1/events?after=x"] {
        let (status, body) = api.get(bad).await;
        assert_eq!(status, 400, "{bad}");
        assert!(body["error"].is_string());
    }

    // Untrack.
    let path = format!("/v1/carts/{}", ids[1]);
    let (status, body) = api.call(reqwest::Method::DELETE, &path, None, Some(TOKEN)).await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("untracked")));
    let (status, body) = api.call(reqwest::Method::DELETE, &path, None, Some(TOKEN)).await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("not_tracking")));
    assert_eq!(
        api.call(reqwest::Method::DELETE, "/v1/carts/59dcca18-05e7-4f5c-8b4e-89e987ea1e51", None, Some(TOKEN)).await.0,
        404
    );

    // Not ready while the partner rejects the apiCode.
    simulator.set_api_code("22222222-2222-4222-8222-222222222222");
    let unready = wait_until(Duration::from_secs(10), async || {
        api.call(reqwest::Method::GET, "/readyz", None, None).await.0 == 503
    })
    .await;
    assert!(unready);
    let (_, body) = api.call(reqwest::Method::GET, "/readyz", None, None).await;
    assert!(body["problems"][0].as_str().unwrap().contains("rejects the apiCode"));
    assert_eq!(api.metrics().await["cartwatch_upstream_paused{provider=imaterialise}"], 1.0);
    daemon.stop().await;
    simulator.stop().await;
}

#[test]
fn a_non_loopback_address_needs_a_token() {
    let mut config = cartwatch::config::Config::default();
    config.http.listen = "0.0.0.0:8787".into();
    let problems = config.problems(cartwatch::config::Purpose::Database);
    assert!(problems.iter().any(|p| p.key == "http.listen" && p.message.contains("needs http.token")), "{problems:?}");
    config.http.token = Secret::new(TOKEN);
    assert!(config.problems(cartwatch::config::Purpose::Database).is_empty());
    config.http.listen = "localhost".into();
    assert!(config.problems(cartwatch::config::Purpose::Database).iter().any(|p| p.key == "http.listen"));
}

/// The series `/metrics` documents, each with a label set it has from start.
const SERIES_AT_START: [&str; 17] = [
    "cartwatch_build_info{version=VERSION}",
    "cartwatch_sweeps_total",
    "cartwatch_sweeps_skipped_total",
    "cartwatch_upstream_requests_total{outcome=ok,provider=imaterialise}",
    "cartwatch_upstream_paused{provider=imaterialise}",
    "cartwatch_seats_filled_total{provider=imaterialise}",
    "cartwatch_plan{figure=expected_requests_per_day,provider=imaterialise}",
    "cartwatch_events_written_total{type=cart.ordered}",
    "cartwatch_events_written_total{type=upstream.auth_failed}",
    "cartwatch_deliveries_total{outcome=dead,sink=log}",
    "cartwatch_outbox_backlog{sink=log}",
    "cartwatch_oldest_undelivered_event_age_seconds{sink=log}",
    "cartwatch_last_successful_sweep_timestamp_seconds",
    "cartwatch_store_errors_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_start_time_seconds",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_series_exists_from_start_and_the_scrape_is_promtool_clean() {
    let directory = tempfile::tempdir().unwrap();
    // A partner that never answers: nothing moves, and every series must still be there.
    let mut config = cartwatch::config::Config::polling_every_second(
        "http://127.0.0.1:9",
        cartwatch_simulator::DEMO_API_CODE,
        &directory.path().join("cartwatch.db"),
    );
    config.sinks.log.path = events_file(directory.path());
    let port = free_port();
    config.http.listen = format!("127.0.0.1:{port}");
    config.http.token = Secret::new(TOKEN);
    // One cart, which the partner never answers for.
    let store = store_for(&config).await;
    track(&store, vec![imaterialise_cart("921a2046-66a5-4c5f-b9a6-4bc646fa5e5a", None)]).await;
    drop(store);
    let daemon = RunningDaemon::start(config.clone());
    let api = Api { base: format!("http://127.0.0.1:{port}"), client: reqwest::Client::new() };
    let up = wait_until(Duration::from_secs(5), async || {
        api.client.get(format!("{}/healthz", api.base)).send().await.is_ok()
    })
    .await;
    assert!(up);

    let response = api.client.get(format!("{}/metrics", api.base)).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8",
        "the classic text format, under its own content type"
    );
    let body = response.text().await.unwrap();
    let values = api.metrics().await;
    for series in SERIES_AT_START {
        let series = series.replace("VERSION", env!("CARGO_PKG_VERSION"));
        assert!(values.contains_key(&series), "{series} is missing at start:\n{body}");
    }
    assert_eq!(values["cartwatch_upstream_paused{provider=imaterialise}"], 0.0);
    assert!(values["process_resident_memory_bytes"] > 1e6);
    // Every family has its HELP and TYPE, as promtool checks.
    for line in body.lines().filter(|line| !line.starts_with('#') && !line.is_empty()) {
        let name = line.split(['{', ' ']).next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix).filter(|base| body.contains(&format!("# TYPE {base} histogram")))
            })
            .unwrap_or(name);
        assert!(body.contains(&format!("# HELP {family} ")), "no HELP for {family}");
        assert!(body.contains(&format!("# TYPE {family} ")), "no TYPE for {family}");
    }
    match std::process::Command::new("promtool").arg("--version").output() {
        Ok(_) => {
            use std::io::Write;
            let mut child = std::process::Command::new("promtool")
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
            let output = child.wait_with_output().unwrap();
            let said =
                format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
            assert!(output.status.success(), "promtool check metrics: {said}");
        }
        Err(_) => eprintln!("promtool is not installed; the scrape was checked by the parser only"),
    }

    // The shipped alert rules and dashboard ask only for series the scrape has.
    let monitoring = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/monitoring");
    let rules = monitoring.join("cartwatch-alerts.yml");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(monitoring.join("cartwatch-dashboard.json")).unwrap()).unwrap();
    let mut expressions: Vec<String> = std::fs::read_to_string(&rules)
        .unwrap()
        .lines()
        .filter_map(|line| line.trim().strip_prefix("expr:").map(|expr| expr.trim().to_owned()))
        .collect();
    assert_eq!(
        expressions.len(),
        5,
        "upstream paused, no successful sweep, backlog age, dead letters, database errors"
    );
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            expressions.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    let mut families: Vec<&str> =
        body.lines().filter_map(|line| line.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    // Its labels (the statuses) are the partner's: it appears with the first change.
    families.push("cartwatch_transitions_total");
    for expression in &expressions {
        for word in expression.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("cartwatch_") || word.starts_with("process_") {
                let family = word.strip_suffix("_bucket").unwrap_or(word);
                assert!(families.contains(&family), "{word} in {expression:?} is not exported");
            }
        }
    }
    if let Ok(output) = std::process::Command::new("promtool").arg("check").arg("rules").arg(&rules).output() {
        assert!(output.status.success(), "promtool check rules: {}", String::from_utf8_lossy(&output.stderr));
    }
    daemon.stop().await;
}
