//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cartwatch::config::Config;
use cartwatch::daemon::{self, Hooks};
use cartwatch::simulator::{Simulator, SimulatorSettings};
use cartwatch::store::{Store, TrackRequest};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The real binary built for these tests.
pub const BINARY: &str = env!("CARGO_BIN_EXE_cartwatch");

/// A simulator on a free loopback port.
pub async fn simulator(settings: SimulatorSettings) -> Simulator {
    Simulator::start(settings, "127.0.0.1:0".parse().unwrap()).await.unwrap()
}

/// A fast-polling config for `simulator`, its database and log sink file in `directory`.
pub fn config_for(simulator: &Simulator, directory: &Path) -> Config {
    let mut config = cartwatch::demo::simulator_config(&simulator.base_url(), &directory.join("cartwatch.db"));
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
    daemon::open_store(config).await.unwrap()
}

/// Registers every cart the simulator knows (and the unknown ones).
pub async fn track_all(store: &Store, simulator: &Simulator) -> usize {
    let requests: Vec<TrackRequest> =
        simulator.cart_ids().into_iter().map(|cart_id| TrackRequest { cart_id, reference: None }).collect();
    let count = requests.len();
    store.track(requests, chrono::Utc::now()).await.unwrap();
    count
}

/// A daemon running in this process.
pub struct RunningDaemon {
    pub shutdown: CancellationToken,
    pub reloads: mpsc::Sender<Config>,
    pub task: tokio::task::JoinHandle<Result<(), daemon::DaemonError>>,
}

impl RunningDaemon {
    pub fn start(config: Config) -> RunningDaemon {
        let shutdown = CancellationToken::new();
        let (reload_sender, reloads) = mpsc::channel(1);
        let task = tokio::spawn(daemon::run(config, reloads, Hooks::default(), shutdown.clone()));
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
