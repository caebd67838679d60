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
    assert_eq!(body["carts"][0], json!({ "cartId": ids[0], "outcome": "added", "state": null }));
    // Many, one of them already known.
    let (status, body) = api.call(reqwest::Method::POST, "/v1/carts", Some(json!({ "carts": ids })), Some(TOKEN)).await;
    assert_eq!(status, 200);
    let outcomes: Vec<&str> =
        body["carts"].as_array().unwrap().iter().map(|c| c["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes.iter().filter(|o| **o == "added").count(), 11);
    assert_eq!(outcomes[0], "already_tracked");

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
