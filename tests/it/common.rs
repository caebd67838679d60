//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cartwatch::app::{self, AppError};
use cartwatch::clock::Clock;
use cartwatch::config::Config;
use cartwatch::daemon::{self, Hooks, PollOnce};
use cartwatch::model::TrackRequest;
use cartwatch_simulator::{DEMO_API_CODE, Simulator, SimulatorSettings};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The store, as the daemon and the services hold it.
pub type Store = Arc<dyn cartwatch::store::Store>;

/// The real binary built for these tests.
pub const BINARY: &str = env!("CARGO_BIN_EXE_cartwatch");

/// A simulator on a free loopback port.
pub async fn simulator(settings: SimulatorSettings) -> Simulator {
    Simulator::start(settings, "127.0.0.1:0".parse().unwrap()).await.unwrap()
}

/// A fast-polling config for `simulator`, its database and log sink file in `directory`.
pub fn config_for(simulator: &Simulator, directory: &Path) -> Config {
    let database = directory.join("cartwatch.db");
    let mut config = Config::polling_every_second(&simulator.base_url(), DEMO_API_CODE, &database);
    config.sinks.log.path = events_file(directory);
    config
}

/// The log sink's file in `directory`.
pub fn events_file(directory: &Path) -> PathBuf {
    directory.join("events.jsonl")
}

/// Every JSON line the log sink wrote so far.
pub fn logged_events(directory: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(events_file(directory))
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("bad line {line:?}: {error}")))
        .collect()
}

/// Opens the store of `config`.
pub async fn store_for(config: &Config) -> Store {
    cartwatch::store::open(&config.database, true).await.unwrap()
}

/// Which store a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded default.
    Sqlite,
    /// A fresh database on the PostgreSQL server `CARTWATCH_TEST_POSTGRES` names.
    Postgres,
}

/// The connection string of the PostgreSQL server the tests use, or a failure saying how to
/// start one: a test that needs PostgreSQL never passes without it.
pub fn postgres_server() -> String {
    std::env::var("CARTWATCH_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "this test needs PostgreSQL: start a throwaway server with `eval \"$(.ci/postgres start)\"` \
             (it sets CARTWATCH_TEST_POSTGRES), then run the tests again"
        )
    })
}

/// A fresh, empty PostgreSQL database for one test; returns its connection string.
pub async fn postgres_database() -> String {
    let server = postgres_server();
    let (client, connection) = tokio_postgres::connect(&server, tokio_postgres::NoTls).await.unwrap_or_else(|error| {
        panic!("cannot reach the PostgreSQL of CARTWATCH_TEST_POSTGRES ({server}): {error}; start one with `eval \"$(.ci/postgres start)\"`")
    });
    tokio::spawn(connection);
    let name = format!("cw_{}", uuid::Uuid::new_v4().simple());
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    format!("{server} dbname={name}")
}

/// [`config_for`], on `backend`.
pub async fn config_on(simulator: &Simulator, directory: &Path, backend: Backend) -> Config {
    let mut config = config_for(simulator, directory);
    if backend == Backend::Postgres {
        config.database.url = cartwatch::secret::Secret::new(postgres_database().await);
    }
    config
}

/// How many carts the database holds, read on a connection of its own, as an operator's
/// `sqlite3` or `psql` would.
pub async fn count_carts_elsewhere(config: &Config) -> i64 {
    if config.database.is_postgres() {
        let (client, connection) =
            tokio_postgres::connect(config.database.url.expose(), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client.query_one("SELECT count(*) FROM carts", &[]).await.unwrap().get(0)
    } else {
        let path = config.database.path.clone();
        tokio::task::spawn_blocking(move || {
            rusqlite::Connection::open(&path)
                .unwrap()
                .query_row("SELECT count(*) FROM carts", [], |row| row.get(0))
                .expect("a reader is never refused")
        })
        .await
        .unwrap()
    }
}

/// Defines a test that runs on both stores: `NAME::sqlite` and `NAME::postgres`.
#[macro_export]
macro_rules! on_both_stores {
    ($(#[doc = $doc:expr])* async fn $name:ident($backend:ident: Backend) $body:block) => {
        $(#[doc = $doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($backend: Backend) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                run(Backend::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                run(Backend::Postgres).await
            }
        }
    };
}

/// A registration of the i.materialise cart `cart_id` (any GUID spelling).
pub fn imaterialise_cart(cart_id: &str, reference: Option<String>) -> TrackRequest {
    Config::default().providers().track_request("imaterialise", cart_id, None, reference).unwrap()
}

/// A registration of the Titelive session `token` in domain 00000.
pub fn titelive_session(token: &str) -> TrackRequest {
    let mut config = Config::default();
    config.titelive.enabled = true;
    config.providers().track_request("titelive", token, Some("00000"), None).unwrap()
}

/// Registers `requests`, due now.
pub async fn track(store: &Store, requests: Vec<TrackRequest>) {
    let now = chrono::Utc::now();
    store.track(requests, now, now).await.unwrap();
}

/// Registers every cart the simulator knows (and the unknown ones).
pub async fn track_all(store: &Store, simulator: &Simulator) -> usize {
    let requests: Vec<TrackRequest> =
        simulator.cart_ids().iter().map(|cart_id| imaterialise_cart(cart_id, None)).collect();
    let count = requests.len();
    track(store, requests).await;
    count
}

/// The item change service `config` builds over `store`.
pub fn items_service(store: &Store, config: &Config) -> Arc<cartwatch::items::ItemsService> {
    app::build_services(store, config, &Clock::system()).unwrap().items.expect("i.materialise is enabled")
}

/// One sweep of every enabled provider and one delivery pass, as `poll-once` does.
pub async fn poll_once(config: &Config) -> PollOnce {
    daemon::poll_once(config.daemon_settings(), Clock::system(), CancellationToken::new()).await.unwrap()
}

/// A manual clock standing at the wall clock's now: tests move it instead of sleeping.
pub fn simulated_clock() -> Clock {
    Clock::manual(chrono::Utc::now())
}

/// One sweep and one delivery pass on `clock`.
pub async fn poll_once_at(config: &Config, clock: &Clock) -> PollOnce {
    daemon::poll_once(config.daemon_settings(), clock.clone(), CancellationToken::new()).await.unwrap()
}

/// A daemon running in this process.
pub struct RunningDaemon {
    pub shutdown: CancellationToken,
    pub reloads: mpsc::UnboundedSender<Config>,
    pub task: tokio::task::JoinHandle<Result<(), AppError>>,
}

impl RunningDaemon {
    pub fn start(config: Config) -> RunningDaemon {
        let shutdown = CancellationToken::new();
        let (reload_sender, reloads) = mpsc::unbounded_channel();
        let task = tokio::spawn(app::run(config, reloads, Hooks::default(), shutdown.clone()));
        RunningDaemon { shutdown, reloads: reload_sender, task }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task).await.expect("daemon stops").unwrap().unwrap();
    }
}

/// Polls `condition` every 100 ms until it holds or `timeout` passes; returns whether it held.
pub async fn wait_until(timeout: Duration, mut condition: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    condition().await
}

/// The (cart id, event type) pairs of the simulator's true transitions to CheckedOut and
/// Ordered, sorted.
pub fn true_checkouts_and_orders(simulator: &Simulator) -> Vec<(String, String)> {
    let mut expected: Vec<(String, String)> = simulator
        .truth()
        .into_iter()
        .filter_map(|transition| match transition.to.as_str() {
            "CheckedOut" => Some((transition.cart_id, "cart.checked_out".to_owned())),
            "Ordered" => Some((transition.cart_id, "cart.ordered".to_owned())),
            _ => None,
        })
        .collect();
    expected.sort();
    expected
}

/// The (cart id, event type) pairs of checkout and order events in `events`, sorted.
pub fn checkouts_and_orders(events: &[serde_json::Value]) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = events
        .iter()
        .filter(|event| matches!(event["type"].as_str(), Some("cart.checked_out" | "cart.ordered")))
        .map(|event| (event["data"]["cartId"].as_str().unwrap().to_owned(), event["type"].as_str().unwrap().to_owned()))
        .collect();
    found.sort();
    found
}

/// A webhook receiver on loopback that verifies every signature with the `standardwebhooks`
/// crate and records what arrived.
pub struct TestReceiver {
    pub address: std::net::SocketAddr,
    pub in_flight: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub received: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// One request a [`TestReceiver`] got.
#[derive(Debug, Clone)]
pub struct Received {
    pub webhook_id: String,
    pub body: serde_json::Value,
    pub signature_valid: bool,
}

/// A test signing secret.
pub const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

impl TestReceiver {
    /// Starts on `address` (port 0 for any), answering 200 to every request.
    pub async fn start(address: std::net::SocketAddr, secret: &str) -> TestReceiver {
        TestReceiver::start_with_delay(address, secret, Duration::ZERO).await
    }

    /// Like [`TestReceiver::start`], taking `delay` to answer each request.
    pub async fn start_with_delay(address: std::net::SocketAddr, secret: &str, delay: Duration) -> TestReceiver {
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        let address = listener.local_addr().unwrap();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let verifier = std::sync::Arc::new(standardwebhooks::Webhook::new(secret).unwrap());
        let shutdown = CancellationToken::new();
        let in_flight = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let app = {
            let received = received.clone();
            let in_flight = in_flight.clone();
            axum::Router::new().route(
                "/hook",
                axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let received = received.clone();
                    let verifier = verifier.clone();
                    let in_flight = in_flight.clone();
                    async move {
                        // Recorded on arrival: a sender that dies before reading the answer
                        // has still delivered, and will deliver again.
                        let signature_valid = verifier.verify(&body, &headers).is_ok();
                        let webhook_id =
                            headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                        let body = serde_json::from_slice(&body).unwrap_or_default();
                        received.lock().unwrap().push(Received { webhook_id, body, signature_valid });
                        let _counted = InFlight::enter(&in_flight);
                        tokio::time::sleep(delay).await;
                        axum::http::StatusCode::OK
                    }
                }),
            )
        };
        let task = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                // Stopping drops connections at once, as a crashed receiver would.
                tokio::select! {
                    served = std::future::IntoFuture::into_future(axum::serve(listener, app)) => served.unwrap(),
                    () = shutdown.cancelled_owned() => {}
                }
            })
        };
        TestReceiver { address, in_flight, received, shutdown, task }
    }

    /// The URL to configure.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.address)
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Stops listening (the port refuses connections until restarted).
    pub async fn stop(self) -> std::sync::Arc<std::sync::Mutex<Vec<Received>>> {
        self.shutdown.cancel();
        let _ = self.task.await;
        self.received
    }
}

/// Adds a webhook named `name` to `config`.
pub fn add_webhook(config: &mut Config, name: &str, url: &str, secret: &str) {
    let webhook = cartwatch::config::WebhookConfig {
        url: url.to_owned(),
        secret: cartwatch::secret::Secret::new(secret),
        ..cartwatch::config::WebhookConfig::default()
    };
    config.webhooks.insert(name.to_owned(), webhook);
}

/// The first delivery of each webhook id, in arrival order, checked for consistency: every
/// duplicate carries the same body and every signature verified.
pub fn first_deliveries(received: &[Received]) -> Vec<Received> {
    let mut first: Vec<Received> = Vec::new();
    for delivery in received {
        assert!(delivery.signature_valid, "a signature did not verify: {delivery:?}");
        match first.iter().find(|f| f.webhook_id == delivery.webhook_id) {
            Some(earlier) => assert_eq!(earlier.body, delivery.body, "a duplicate differs from its first delivery"),
            None => first.push(delivery.clone()),
        }
    }
    first
}

/// Checks that each cart's first deliveries arrived in the order their events were detected.
pub fn assert_per_cart_order(first: &[Received]) {
    let mut last_seen: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for delivery in first {
        let Some(cart_id) = delivery.body["data"]["cartId"].as_str() else { continue };
        let timestamp = delivery.body["timestamp"].as_str().unwrap().to_owned();
        if let Some(previous) = last_seen.get(cart_id) {
            assert!(
                *previous < timestamp,
                "cart {cart_id}: an event detected at {timestamp} arrived after one detected at {previous}"
            );
        }
        last_seen.insert(cart_id.to_owned(), timestamp);
    }
}

/// Counts a request in flight until dropped, even when the sender goes away mid-request.
struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a std::sync::atomic::AtomicUsize) -> InFlight<'a> {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies the directory `from`, with everything in it, to `to`.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// `cartwatch --config CONFIG check-config` with the demo apiCode and `environment`.
pub fn check_config(config: &Path, environment: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(BINARY)
        .arg("--config")
        .arg(config)
        .arg("check-config")
        .env("CARTWATCH__IMATERIALISE__API_CODE", DEMO_API_CODE)
        .envs(environment.iter().copied())
        .output()
        .unwrap()
}

/// Brings `connection`'s database to schema `version` as the releases of that time left it:
/// the first `version` migrations, each in its own transaction.
pub fn migrate_to(connection: &mut rusqlite::Connection, version: usize) {
    for (index, sql) in cartwatch::store::sqlite::schema::MIGRATIONS[..version].iter().enumerate() {
        let transaction = connection.transaction().unwrap();
        transaction.execute_batch(sql).unwrap();
        transaction.pragma_update(None, "user_version", index as i64 + 1).unwrap();
        transaction.commit().unwrap();
    }
}
