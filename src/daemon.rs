//! The daemon: open the store, start the delivery loops and the schedule, sweep on every
//! tick until shutdown, apply reloaded configs.
//!
//! [`run`] is what `cartwatch run` calls and what tests call directly with a mock upstream
//! and a temporary database. It never installs signal handlers: the caller owns the
//! cancellation token and the reload channel.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::confirm::ConfirmService;
use crate::delivery::delivery_loop;
use crate::http_api;
use crate::items::ItemsService;
use crate::metrics::Metrics;
use crate::schedule::{Schedule, ScheduleError};
use crate::sinks::{self, Sink};
use crate::store::{Store, StoreError, SweepRecord, retrying};
use crate::sweep::{Poller, STORE_RETRY_BUDGET, SetupError};

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The database could not be opened or used.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The poller could not be set up.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The schedule could not start.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// A sink could not be set up.
    #[error(transparent)]
    Sink(#[from] crate::sinks::WebhookSetupError),
    /// The HTTP API could not listen on its address.
    #[error("the HTTP API cannot listen on {address}: {source}")]
    Http {
        /// The configured address.
        address: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Opens the database named by the config, on the blocking pool.
///
/// Fails when the file cannot be opened or migrated.
pub async fn open_store(config: &Config) -> Result<Store, StoreError> {
    let path = config.database.path.clone();
    let busy_timeout = config.database.busy_timeout;
    tokio::task::spawn_blocking(move || Store::open(&path, busy_timeout))
        .await
        .map_err(|error| StoreError::Task(error.to_string()))?
}

/// Hooks the daemon calls at points of interest, for systemd notification and the demo.
pub struct Hooks {
    /// Called once the config is valid and the database is open and migrated.
    pub ready: Box<dyn Fn() + Send + Sync>,
    /// Called as work progresses (between batches and while idle), for a watchdog.
    pub alive: Arc<dyn Fn() + Send + Sync>,
    /// How often the idle loop calls `alive` at least.
    pub alive_every: Duration,
    /// Called after a reloaded config has been applied.
    pub reloaded: Box<dyn Fn() + Send + Sync>,
    /// Called when shutdown begins.
    pub stopping: Box<dyn Fn() + Send + Sync>,
}

impl Default for Hooks {
    fn default() -> Hooks {
        Hooks {
            ready: Box::new(|| {}),
            alive: Arc::new(|| {}),
            alive_every: Duration::from_secs(5),
            reloaded: Box::new(|| {}),
            stopping: Box::new(|| {}),
        }
    }
}

/// How often the daemon copies the WAL back into the database.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(2);

/// Runs the daemon until `shutdown` is cancelled. Configs sent on `reloads` replace the
/// apiCode and probe a paused upstream at once.
///
/// Fails when the database cannot be opened, the HTTP API cannot bind its address, or the
/// schedule cannot start; everything that goes wrong later is logged, retried and reflected
/// in the database instead.
pub async fn run(
    config: Config,
    mut reloads: mpsc::Receiver<Config>,
    hooks: Hooks,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::default());
    let store = open_store(&config).await?;
    let checkpoints_shutdown = CancellationToken::new();
    let checkpoints = store.start_background_checkpoints(CHECKPOINT_INTERVAL, checkpoints_shutdown.clone())?;
    let sinks = start_sinks(&store, &config, &shutdown).await?;
    let pollers = start_pollers(&store, &config, &metrics, &hooks.alive).await?;
    let http_listener = match config.http.address() {
        Some(address) => Some(http_api::bind(address).await.map_err(|source| DaemonError::Http { address, source })?),
        None => None,
    };
    let mut schedule =
        Schedule::start(&config.sweep.cron, &config.sweep.timezone, metrics.sweeps_skipped.clone()).await?;
    info!(
        database = %store.path().display(),
        cron = %config.sweep.cron,
        sinks = %sinks.iter().map(|s| s.name()).collect::<Vec<_>>().join(","),
        "cartwatch started"
    );
    (hooks.ready)();

    let tracker = TaskTracker::new();
    let background_shutdown = CancellationToken::new();
    let wake = Arc::new(Notify::new());
    for sink in &sinks {
        tracker.spawn(delivery_loop(
            store.clone(),
            Arc::clone(sink),
            Arc::clone(&wake),
            Arc::clone(&metrics),
            background_shutdown.clone(),
        ));
    }
    let items = match config.imaterialise.enabled {
        true => Some(Arc::new(ItemsService::new(store.clone(), Arc::clone(&config)).map_err(SetupError::Client)?)),
        false => None,
    };
    if let Some(listener) = http_listener {
        let token = (!config.http.token.is_empty()).then(|| config.http.token.clone());
        let confirm = match config.titelive.enabled {
            true => {
                Some(Arc::new(ConfirmService::new(store.clone(), Arc::clone(&config)).map_err(SetupError::Client)?))
            }
            false => None,
        };
        let state = http_api::ApiState {
            store: store.clone(),
            metrics: Arc::clone(&metrics),
            token,
            items: items.clone(),
            confirm,
        };
        let max_body = usize::try_from(config.http.max_body_bytes).unwrap_or(usize::MAX);
        tracker.spawn(http_api::serve(listener, state, max_body, background_shutdown.clone()));
    }
    tracker.close();

    // Sweep once at start, so a restart does not wait for the first tick.
    let mut sweep_now = true;
    loop {
        if sweep_now {
            schedule.set_busy(true);
            if sweep_all(&pollers, &shutdown).await.events > 0 {
                wake.notify_waiters();
            }
            schedule.set_busy(false);
            sweep_now = false;
        }
        (hooks.alive)();
        // A paused upstream is probed when its delay ends, not at the next tick after.
        let reopen = pollers
            .iter()
            .filter_map(Poller::reopens_at)
            .min()
            .and_then(|at| (at - Utc::now()).to_std().ok())
            .filter(|wait| !wait.is_zero());
        let reopened = async move {
            match reopen {
                Some(wait) => tokio::time::sleep(wait).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = reopened => sweep_now = true,
            () = shutdown.cancelled() => break,
            tick = schedule.next_tick() => {
                if tick.is_none() {
                    warn!("the scheduler stopped; shutting down");
                    break;
                }
                sweep_now = true;
            }
            Some(new_config) = reloads.recv() => {
                for poller in &pollers {
                    poller.reload(&new_config);
                }
                if let Some(items) = &items {
                    items.reload(&new_config);
                }
                info!("configuration reloaded; probing the upstream at once");
                (hooks.reloaded)();
                sweep_now = true;
            }
            () = tokio::time::sleep(hooks.alive_every) => {}
        }
    }

    (hooks.stopping)();
    info!("shutting down: finishing deliveries in progress");
    schedule.shutdown().await;
    background_shutdown.cancel();
    tracker.wait().await;
    checkpoints_shutdown.cancel();
    let _ = checkpoints.await;
    info!("cartwatch stopped");
    Ok(())
}

/// Builds the configured sinks and records them in the store, waiting out a lock held by
/// another process.
async fn start_sinks(
    store: &Store,
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<Vec<Arc<Sink>>, DaemonError> {
    let sinks: Vec<Arc<Sink>> = sinks::from_config(config)?.into_iter().map(Arc::new).collect();
    let specs: Vec<_> = sinks.iter().map(|sink| sink.spec()).collect();
    retrying("record the configured sinks", STORE_RETRY_BUDGET, shutdown, || {
        store.sync_sinks(specs.clone(), Utc::now())
    })
    .await?;
    Ok(sinks)
}

/// One poller per enabled provider.
async fn start_pollers(
    store: &Store,
    config: &Arc<Config>,
    metrics: &Arc<Metrics>,
    alive: &Arc<dyn Fn() + Send + Sync>,
) -> Result<Vec<Poller>, DaemonError> {
    let mut pollers = Vec::new();
    for settings in config.pollers() {
        let alive = Arc::clone(alive);
        let poller = Poller::new(store.clone(), Arc::clone(config), settings, Arc::clone(metrics)).await?;
        pollers.push(poller.with_heartbeat(move || alive()));
    }
    Ok(pollers)
}

/// Sweeps every provider at once and adds up their figures. A provider whose sweep fails is
/// logged; the others are not held up.
async fn sweep_all(pollers: &[Poller], shutdown: &CancellationToken) -> SweepRecord {
    let records = futures_util::future::join_all(pollers.iter().map(|poller| poller.sweep(shutdown))).await;
    let mut total = SweepRecord::default();
    for (poller, record) in pollers.iter().zip(records) {
        match record {
            Ok(record) => total.add(&record),
            Err(error) => {
                error!(provider = poller.provider().as_str(), error = %error, "sweep failed; the next tick retries")
            }
        }
    }
    total
}

/// Runs one sweep of every enabled provider, then delivers what is pending once, and returns
/// the sweeps' figures added up.
///
/// Fails when the database cannot be opened or a poller cannot be set up.
pub async fn poll_once(config: Config, shutdown: CancellationToken) -> Result<SweepRecord, DaemonError> {
    let config = Arc::new(config);
    let store = open_store(&config).await?;
    let sinks = start_sinks(&store, &config, &shutdown).await?;
    let no_watchdog: Arc<dyn Fn() + Send + Sync> = Arc::new(|| {});
    let pollers = start_pollers(&store, &config, &Arc::new(Metrics::default()), &no_watchdog).await?;
    let record = sweep_all(&pollers, &shutdown).await;
    for sink in sinks {
        drain_once(&store, &sink, &shutdown).await;
    }
    Ok(record)
}

/// Delivers every delivery of `sink` that is due now, one pass, without waiting for retries.
pub async fn drain_once(store: &Store, sink: &Sink, shutdown: &CancellationToken) {
    loop {
        let now = Utc::now();
        let pending =
            match store.pending_deliveries(sink.name().to_owned(), now, sink.batch_limit(), sink.sequential()).await {
                Ok(pending) if !pending.is_empty() => pending,
                Ok(_) => return,
                Err(error) => {
                    warn!(sink = sink.name(), error = %error, "cannot read pending deliveries");
                    return;
                }
            };
        let count = pending.len();
        let results = sink.deliver(pending, now).await.results;
        let delivered = results.iter().filter(|r| matches!(r, crate::store::DeliveryResult::Delivered { .. })).count();
        let recorded = retrying("record deliveries", STORE_RETRY_BUDGET, shutdown, || {
            store.record_deliveries(sink.name().to_owned(), results.clone(), Utc::now())
        })
        .await;
        if let Err(error) = recorded {
            warn!(sink = sink.name(), error = %error, "cannot record deliveries");
            return;
        }
        if delivered < count {
            return;
        }
    }
}
