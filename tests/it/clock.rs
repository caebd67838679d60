//! The daemon in simulated time: the documented backoff (a minute doubling to an hour for a
//! rejected apiCode, 5 s doubling for transient failures) runs on a manual clock the test
//! moves, so minutes of pauses and probes take a few real seconds and no test sleeps for them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::*;
use cartwatch::clock::Clock;
use cartwatch::config::Config;
use cartwatch::daemon::{Daemon, DaemonError, Hooks, Settings};
use cartwatch::secret::Secret;
use cartwatch::upstream::Mode;
use cartwatch_simulator::{DEMO_API_CODE, Fault, FaultSpec, Simulator, SimulatorSettings};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A daemon on a manual clock.
struct SimulatedDaemon {
    clock: Clock,
    reloads: mpsc::UnboundedSender<Settings>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), DaemonError>>,
    /// Sweep rounds ended so far.
    sweeps: Arc<AtomicUsize>,
}

impl SimulatedDaemon {
    async fn start(config: &Config) -> SimulatedDaemon {
        let clock = simulated_clock();
        let daemon = Daemon::open(config.daemon_settings(), clock.clone()).await.unwrap();
        let (reloads, receiver) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let sweeps = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&sweeps);
        let hooks = Hooks {
            swept: Box::new(move || {
                counted.fetch_add(1, Ordering::SeqCst);
            }),
            ..Hooks::default()
        };
        let task = tokio::spawn(daemon.run(receiver, hooks, shutdown.clone()));
        SimulatedDaemon { clock, reloads, shutdown, task, sweeps }
    }

    /// Moves the clock `by`, a `step` at a time, giving the daemon a moment of real time
    /// after each step to do what came due.
    async fn advance(&self, by: Duration, step: Duration) {
        let mut moved = Duration::ZERO;
        while moved < by {
            self.clock.advance(step);
            moved += step;
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }

    /// Moves the clock like [`advance`](Self::advance), for a daemon that sweeps after each
    /// step (each crosses a tick and nothing else makes it wait on the clock): the clock
    /// moves on only when that sweep has ended, however slow the machine is, so no sweep
    /// sees a time later than its tick (a few seconds at most, should none come).
    async fn advance_sweeping(&self, by: Duration, step: Duration) {
        let mut moved = Duration::ZERO;
        while moved < by {
            let swept = self.sweeps.load(Ordering::SeqCst);
            self.clock.advance(step);
            moved += step;
            let patience = std::time::Instant::now() + Duration::from_secs(3);
            while self.sweeps.load(Ordering::SeqCst) == swept && std::time::Instant::now() < patience {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }

    /// Moves the clock a `step` at a time until `condition` holds, for at most `limit` of
    /// simulated time; returns whether it held.
    async fn advance_until(&self, limit: Duration, step: Duration, mut condition: impl AsyncFnMut() -> bool) -> bool {
        let mut moved = Duration::ZERO;
        while moved < limit {
            if condition().await {
                return true;
            }
            self.advance(step, step).await;
            moved += step;
        }
        condition().await
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task).await.expect("daemon stops").unwrap().unwrap();
    }
}

fn slow_carts(carts: usize) -> SimulatorSettings {
    SimulatorSettings {
        seed: 17,
        carts,
        unknown_carts: 0,
        min_dwell: 1000,
        max_dwell: 1000,
        ..SimulatorSettings::default()
    }
}

fn ok_requests(simulator: &Simulator) -> usize {
    simulator.request_log().iter().filter(|record| record.outcome == "ok").count()
}

async fn mode(store: &Store) -> Option<Mode> {
    store.upstream_records().await.unwrap().first().map(|record| record.snapshot.mode)
}

async fn events_of_type(store: &Store, event_type: &str) -> usize {
    store.events_after(0, 100_000).await.unwrap().iter().filter(|event| event.event_type == event_type).count()
}

async fn all_polled(store: &Store) -> bool {
    store.summary(chrono::Utc::now()).await.unwrap().carts.iter().all(|(_, status, _)| status.is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_api_code_pauses_with_probes_doubling_from_a_minute_and_a_reload_resumes_at_once() {
    let directory = tempfile::tempdir().unwrap();
    let simulator = simulator(slow_carts(20)).await;
    let mut config = config_for(&simulator, directory.path());
    config.imaterialise.api_code = Secret::new("11111111-1111-4111-8111-111111111111");
    config.imaterialise.concurrency = 1;
    let documented = Config::default().backoff;
    (config.backoff.auth_initial, config.backoff.auth_max) = (documented.auth_initial, documented.auth_max);
    assert_eq!(config.backoff.auth_initial, Duration::from_secs(60));
    let store = store_for(&config).await;
    track_all(&store, &simulator).await;

    let daemon = SimulatedDaemon::start(&config).await;
    daemon.advance(Duration::from_secs(10 * 60), Duration::from_secs(5)).await;
    // Ten minutes of 401: the first request, then probes at 1, 3 and 7 minutes.
    let requests = simulator.requests();
    assert!((3..=5).contains(&requests), "{requests} requests in 10 simulated minutes of 401; expected 4");
    assert!(simulator.request_log().iter().all(|record| record.outcome == "unauthorized"));
    assert_eq!(events_of_type(&store, "upstream.auth_failed").await, 1, "announced once, not per probe");
    assert_eq!(mode(&store).await, Some(Mode::AuthPaused));
    let cart = store.cart(simulator.cart_ids()[0].clone()).await.unwrap().unwrap();
    assert_eq!((cart.consecutive_errors, cart.status), (0, None), "no cart is charged with the partner's refusal");

    // The operator fixes the key and reloads: a probe goes without the clock moving at all.
    let mut fixed = config.clone();
    fixed.imaterialise.api_code = Secret::new(DEMO_API_CODE);
    daemon.reloads.send(fixed.daemon_settings()).unwrap();
    let resumed = wait_until(Duration::from_secs(5), async || ok_requests(&simulator) >= 2).await;
    assert!(resumed, "polling resumed at once, not at the next probe 8 simulated minutes away");
    assert!(
        daemon.advance_until(Duration::from_secs(60), Duration::from_secs(1), async || all_polled(&store).await).await
    );
    daemon.stop().await;
    assert_eq!(events_of_type(&store, "upstream.auth_recovered").await, 1);
    assert_eq!(mode(&store).await, Some(Mode::Healthy));
    simulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_back_off_each_cart_and_open_the_circuit_with_the_documented_steps() {
    let directory = tempfile::tempdir().unwrap();
    let simulator = simulator(slow_carts(30)).await;
    simulator.set_faults(FaultSpec { always: Some(Fault::Code1), ..FaultSpec::default() });
    let mut config = config_for(&simulator, directory.path());
    config.imaterialise.concurrency = 1;
    config.backoff = Config::default().backoff;
    config.backoff.circuit_after = 3;
    let store = store_for(&config).await;
    track_all(&store, &simulator).await;

    let daemon = SimulatedDaemon::start(&config).await;
    daemon.advance(Duration::from_secs(60), Duration::from_secs(1)).await;
    // Three batches fail and open the circuit; then one probe per step: +5, +10, +20 s.
    let requests = simulator.requests();
    assert!((5..=7).contains(&requests), "{requests} requests in a simulated minute; expected 6");
    assert_eq!(mode(&store).await, Some(Mode::CircuitOpen));
    let cart = store.cart(simulator.cart_ids()[0].clone()).await.unwrap().unwrap();
    assert!(cart.consecutive_errors >= 1);
    assert!(cart.last_error.as_deref().unwrap().contains("error 1"), "{:?}", cart.last_error);
    assert!(store.events_after(0, 100).await.unwrap().is_empty(), "failures announce nothing");

    simulator.set_faults(FaultSpec::default());
    let recovered = daemon
        .advance_until(Duration::from_secs(30 * 60), Duration::from_secs(5), async || all_polled(&store).await)
        .await;
    daemon.stop().await;
    assert!(recovered, "every cart polled once the partner recovered");
    assert_eq!(mode(&store).await, Some(Mode::Healthy));
    let cart = store.cart(simulator.cart_ids()[0].clone()).await.unwrap().unwrap();
    assert_eq!(cart.consecutive_errors, 0, "reset after success");
    simulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carts_are_polled_at_their_cadence_tier_in_simulated_hours() {
    let directory = tempfile::tempdir().unwrap();
    let simulator = simulator(slow_carts(5)).await;
    let mut config = config_for(&simulator, directory.path());
    config.cadence = Config::default().cadence;
    config.cadence.jitter = 0.0;
    let store = store_for(&config).await;
    track_all(&store, &simulator).await;

    let daemon = SimulatedDaemon::start(&config).await;
    let polls_per_cart = || simulator.request_log().iter().map(|record| record.cart_ids).sum::<usize>() as f64 / 5.0;
    // Young carts are polled every minute: in ten simulated minutes, once at start and once
    // a minute after.
    daemon.advance_sweeping(Duration::from_secs(10 * 60), Duration::from_secs(10)).await;
    let young = polls_per_cart();
    assert!((10.0..=12.0).contains(&young), "{young} polls per cart in ten simulated minutes at one a minute");
    // Past an hour of age they move to every five minutes.
    daemon.advance_sweeping(Duration::from_secs(60 * 60), Duration::from_secs(30)).await;
    let before = polls_per_cart();
    daemon.advance_sweeping(Duration::from_secs(30 * 60), Duration::from_secs(30)).await;
    let older = polls_per_cart() - before;
    assert!((5.0..=7.0).contains(&older), "{older} polls per cart in half an hour at one every five minutes");
    daemon.stop().await;
    simulator.stop().await;
}
