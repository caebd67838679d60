//! The daemon: open the store, start the delivery loops and the schedule, sweep on every
//! tick until shutdown, apply reloaded configs.
//!
//! [`run`] is what `cartwatch run` calls and what tests call directly with a mock upstream
//! and a temporary database. It never installs signal handlers: the caller owns the
//! cancellation token and the reload channel.
//!
//! A sweep runs beside the daemon's loop, not inside it, so a reload, a shutdown or a
//! watchdog ping never waits for a sweep to end.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::confirm::ConfirmService;
use crate::delivery::{Pass, SinkSlot, delivery_loop, drain_once};
use crate::http_api::{self, Services};
use crate::items::ItemsService;
use crate::liveness::{DaemonHealth, Progress};
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

/// Opens the database named by the config, on the blocking pool, creating it if needed.
///
/// Fails when the file cannot be opened or migrated.
pub async fn open_store(config: &Config) -> Result<Store, StoreError> {
    let path = config.database.path.clone();
    let busy_timeout = config.database.busy_timeout;
    tokio::task::spawn_blocking(move || Store::open(&path, busy_timeout))
        .await
        .map_err(|error| StoreError::Task(error.to_string()))?
}

/// Opens the database named by the config, which must exist, on the blocking pool.
///
/// Fails when there is no file at `database.path`, or it cannot be opened or migrated.
pub async fn open_existing_store(config: &Config) -> Result<Store, StoreError> {
    let path = config.database.path.clone();
    let busy_timeout = config.database.busy_timeout;
    tokio::task::spawn_blocking(move || Store::open_existing(&path, busy_timeout))
        .await
        .map_err(|error| StoreError::Task(error.to_string()))?
}

/// Hooks the daemon calls at points of interest, for systemd notification and the demo.
pub struct Hooks {
    /// Called once the config is valid and the database is open and migrated.
    pub ready: Box<dyn Fn() + Send + Sync>,
    /// Called while the daemon is alive and making progress, for a watchdog.
    pub alive: Arc<dyn Fn() + Send + Sync>,
    /// How often the loop calls `alive` at least.
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

/// How long shutdown lets a sweep write what it fetched, and deliveries in flight finish,
/// before dropping them (they are fetched or sent again by the next run: nothing is lost).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

/// A sweep running beside the loop.
type Sweeping = Pin<Box<dyn Future<Output = SweepOutcome> + Send>>;

/// Runs the daemon until `shutdown` is cancelled. Configs sent on `reloads` are applied
/// whole: pollers (client, apiCode, rate limit, cadence, backoff, event types), webhook
/// endpoints and the log sink, the schedule, and the item and confirm services; keys that
/// need a restart are named in one log line.
///
/// Fails when the database cannot be opened, the HTTP API cannot bind its address, or the
/// schedule cannot start; or later, when the database writer dies. Everything else that goes
/// wrong is logged, retried and reflected in the database instead.
pub async fn run(
    config: Config,
    mut reloads: mpsc::UnboundedReceiver<Config>,
    hooks: Hooks,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(DaemonHealth::default());
    let progress = Arc::new(Progress::default());
    let store = open_store(&config).await?;
    let checkpoints_shutdown = CancellationToken::new();
    let checkpoints = store.start_background_checkpoints(CHECKPOINT_INTERVAL, checkpoints_shutdown.clone())?;

    let tracker = TaskTracker::new();
    let stop_deliveries = CancellationToken::new();
    let abort = CancellationToken::new();
    let wake = Arc::new(Notify::new());
    let mut deliveries = Deliveries {
        store: store.clone(),
        metrics: Arc::clone(&metrics),
        wake: Arc::clone(&wake),
        loops: HashMap::new(),
    };
    deliveries.apply(&config, &tracker, &stop_deliveries, &abort, &shutdown).await?;
    let mut pollers = Vec::new();
    reconcile_pollers(&mut pollers, &store, &config, &metrics, &progress).await?;
    let services = Arc::new(RwLock::new(build_services(&store, &config)?));
    if let Some(address) = config.http.address() {
        let listener = http_api::bind(address).await.map_err(|source| DaemonError::Http { address, source })?;
        let state = http_api::ApiState {
            store: store.clone(),
            metrics: Arc::clone(&metrics),
            token: (!config.http.token.is_empty()).then(|| config.http.token.clone()),
            services: Arc::clone(&services),
            health: Arc::clone(&health),
        };
        tracker.spawn(http_api::serve(listener, state, http_api::Limits::from_config(&config.http), abort.clone()));
    }
    let mut schedule =
        Schedule::start(&config.sweep.cron, &config.sweep.timezone, metrics.sweeps_skipped.clone()).await?;
    info!(
        database = %store.path().display(),
        cron = %config.sweep.cron,
        sinks = %deliveries.names().join(","),
        "cartwatch started"
    );
    (hooks.ready)();

    let mut config = config;
    let mut sweeping: Option<Sweeping> = None;
    // Sweep once at start, so a restart does not wait for the first tick.
    let mut sweep_wanted = true;
    let mut stall_reported = false;
    let result = loop {
        if sweep_wanted && sweeping.is_none() {
            schedule.set_busy(true);
            progress.mark();
            sweeping = Some(Box::pin(sweep_all(pollers.clone(), shutdown.clone())));
            sweep_wanted = false;
        }
        let stall_limit = crate::liveness::stall_limit(
            config.imaterialise.request_timeout.max(config.titelive.request_timeout),
            config.database.busy_timeout,
        );
        if crate::liveness::alive(sweeping.is_some(), progress.since_last(), stall_limit) {
            (hooks.alive)();
            stall_reported = false;
        } else if !std::mem::replace(&mut stall_reported, true) {
            error!(
                stalled_for = ?progress.since_last(),
                "the sweep has made no progress for longer than any of its waits can take; the watchdog is no longer told all is well"
            );
        }
        // A paused upstream is probed when its delay ends, not at the next tick after.
        let reopen = pollers
            .iter()
            .filter_map(|poller| poller.reopens_at())
            .min()
            .and_then(|at| (at - Utc::now()).to_std().ok())
            .filter(|wait| !wait.is_zero());
        let reopened = async move {
            match reopen {
                Some(wait) => tokio::time::sleep(wait).await,
                None => std::future::pending().await,
            }
        };
        let idle = sweeping.is_none();
        let swept = async {
            match sweeping.as_mut() {
                Some(sweep) => sweep.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            outcome = swept => {
                sweeping = None;
                schedule.set_busy(false);
                health.record_sweep(outcome.failure.clone());
                if outcome.record.events > 0 {
                    wake.notify_waiters();
                }
            }
            () = reopened, if idle => sweep_wanted = true,
            () = shutdown.cancelled() => break Ok(()),
            error = store.writer_stopped() => {
                error!(error = %error, "the database writer stopped; cartwatch cannot record anything and stops");
                break Err(DaemonError::Store(error));
            }
            tick = schedule.next_tick() => {
                if tick.is_none() {
                    warn!("the scheduler stopped; shutting down");
                    break Ok(());
                }
                sweep_wanted = true;
            }
            Some(mut new_config) = reloads.recv() => {
                // Reloads that piled up: the latest wins.
                while let Ok(newer) = reloads.try_recv() {
                    new_config = newer;
                }
                let changes = Reload {
                    store: &store,
                    metrics: &metrics,
                    progress: &progress,
                    services: &services,
                    tracker: &tracker,
                    stop_deliveries: &stop_deliveries,
                    abort: &abort,
                    shutdown: &shutdown,
                };
                changes.apply(&config, &new_config, &mut pollers, &mut deliveries, &mut schedule).await;
                config = new_config;
                (hooks.reloaded)();
                sweep_wanted = true;
            }
            () = tokio::time::sleep(hooks.alive_every) => {}
        }
    };

    (hooks.stopping)();
    info!("shutting down: finishing what is in flight");
    schedule.shutdown().await;
    if let Some(sweep) = sweeping {
        // The sweep saw the cancellation: it sends nothing more and writes what it has.
        if tokio::time::timeout(SHUTDOWN_GRACE, sweep).await.is_err() {
            warn!("the sweep did not finish its writes in time; its carts are polled again at the next start");
        }
    }
    stop_deliveries.cancel();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await.is_err() {
        warn!("deliveries in flight did not finish in time; they are sent again, with the same ids, at the next start");
        abort.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), tracker.wait()).await;
    }
    abort.cancel();
    checkpoints_shutdown.cancel();
    let _ = checkpoints.await;
    info!("cartwatch stopped");
    result
}

/// The parts of the daemon a reload touches.
struct Reload<'a> {
    store: &'a Store,
    metrics: &'a Arc<Metrics>,
    progress: &'a Arc<Progress>,
    services: &'a Arc<RwLock<Services>>,
    tracker: &'a TaskTracker,
    stop_deliveries: &'a CancellationToken,
    abort: &'a CancellationToken,
    shutdown: &'a CancellationToken,
}

impl Reload<'_> {
    /// Applies `new` over `old`. A part that cannot take the new config keeps the old one and
    /// says why; the rest is applied.
    async fn apply(
        &self,
        old: &Config,
        new: &Config,
        pollers: &mut Vec<Arc<Poller>>,
        deliveries: &mut Deliveries,
        schedule: &mut Schedule,
    ) {
        let restart = restart_needed(old, new);
        if !restart.is_empty() {
            warn!(
                keys = %restart.join(", "),
                "these changed settings take effect only when cartwatch restarts (systemctl restart cartwatch); everything else is applied"
            );
        }
        if let Err(error) = reconcile_pollers(pollers, self.store, new, self.metrics, self.progress).await {
            error!(error = %error, "cannot apply the new config to the pollers; they keep the old one");
        }
        if let Err(error) = deliveries.apply(new, self.tracker, self.stop_deliveries, self.abort, self.shutdown).await {
            error!(error = %error, "cannot apply the new config to the sinks; they keep the old one");
        }
        match build_services(self.store, new) {
            Ok(services) => *self.services.write().unwrap_or_else(PoisonError::into_inner) = services,
            Err(error) => error!(error = %error, "cannot apply the new config to item changes and confirmations"),
        }
        if (&old.sweep.cron, &old.sweep.timezone) != (&new.sweep.cron, &new.sweep.timezone) {
            match Schedule::start(&new.sweep.cron, &new.sweep.timezone, self.metrics.sweeps_skipped.clone()).await {
                Ok(started) => std::mem::replace(schedule, started).shutdown().await,
                Err(error) => error!(error = %error, "cannot start the new schedule; the old one goes on"),
            }
        }
        info!("configuration reloaded and applied; probing a paused upstream at once");
    }
}

/// The settings a running daemon cannot change: it holds the database open, listens on the
/// address, and set up logging at start.
pub fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut check = |changed: bool, key| {
        if changed {
            keys.push(key);
        }
    };
    check(old.database.path != new.database.path, "database.path");
    check(old.database.busy_timeout != new.database.busy_timeout, "database.busy_timeout");
    check(old.http.listen != new.http.listen, "http.listen");
    check(old.http.token.expose() != new.http.token.expose(), "http.token");
    check(old.http.max_body_bytes != new.http.max_body_bytes, "http.max_body_bytes");
    check(old.http.max_connections != new.http.max_connections, "http.max_connections");
    check(old.http.header_timeout != new.http.header_timeout, "http.header_timeout");
    check(old.http.idle_timeout != new.http.idle_timeout, "http.idle_timeout");
    check(old.logging.level != new.logging.level, "logging.level");
    check(old.logging.format != new.logging.format, "logging.format");
    keys
}

/// The running delivery loops, one per configured sink.
struct Deliveries {
    store: Store,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    loops: HashMap<String, (SinkSlot, CancellationToken)>,
}

impl Deliveries {
    /// Makes the loops match `config`: a new sink gets a loop, a changed one its new
    /// settings for its next batch (URL, secrets, log file, timeout...), a removed one
    /// stops after its batch in flight. The `sinks` table follows, so a webhook whose URL
    /// changed after it answered `410 Gone` is enabled again.
    ///
    /// Fails when a sink cannot be built or the table cannot be written within the retry
    /// budget; nothing is changed then.
    async fn apply(
        &mut self,
        config: &Config,
        tracker: &TaskTracker,
        stop: &CancellationToken,
        abort: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Result<(), DaemonError> {
        let sinks: Vec<Arc<Sink>> = sinks::from_config(config)?.into_iter().map(Arc::new).collect();
        let specs: Vec<_> = sinks.iter().map(|sink| sink.spec()).collect();
        retrying("record the configured sinks", STORE_RETRY_BUDGET, shutdown, || {
            self.store.sync_sinks(specs.clone(), Utc::now())
        })
        .await?;
        let names: Vec<String> = sinks.iter().map(|sink| sink.name().to_owned()).collect();
        for sink in sinks {
            match self.loops.get(sink.name()) {
                Some((slot, _)) => slot.replace(sink),
                None => {
                    let name = sink.name().to_owned();
                    let slot = SinkSlot::new(sink);
                    let token = stop.child_token();
                    tracker.spawn(delivery_loop(
                        self.store.clone(),
                        slot.clone(),
                        Arc::clone(&self.wake),
                        Arc::clone(&self.metrics),
                        token.clone(),
                        abort.clone(),
                    ));
                    self.loops.insert(name, (slot, token));
                }
            }
        }
        self.loops.retain(|name, (_, token)| {
            let keep = names.contains(name);
            if !keep {
                info!(sink = %name, "this sink is no longer configured; its loop stops");
                token.cancel();
            }
            keep
        });
        // Sinks enabled again by the change may have work waiting.
        self.wake.notify_waiters();
        Ok(())
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.loops.keys().cloned().collect();
        names.sort();
        names
    }
}

/// Makes `pollers` match the providers `config` enables: existing ones take the new config,
/// new ones are created (resuming any persisted pause), disabled ones are dropped.
async fn reconcile_pollers(
    pollers: &mut Vec<Arc<Poller>>,
    store: &Store,
    config: &Config,
    metrics: &Arc<Metrics>,
    progress: &Arc<Progress>,
) -> Result<(), DaemonError> {
    let mut next = Vec::new();
    for provider in config.enabled_providers() {
        match pollers.iter().find(|poller| poller.provider() == provider) {
            Some(poller) => {
                poller.reload(config).map_err(SetupError::Client)?;
                next.push(Arc::clone(poller));
            }
            None => {
                let poller =
                    Poller::new(store.clone(), config, provider, Arc::clone(metrics), Arc::clone(progress)).await?;
                next.push(Arc::new(poller));
            }
        }
    }
    *pollers = next;
    Ok(())
}

/// The item and confirm services the HTTP API offers, for the providers `config` enables.
fn build_services(store: &Store, config: &Config) -> Result<Services, DaemonError> {
    let config = Arc::new(config.clone());
    let items = match config.imaterialise.enabled {
        true => Some(Arc::new(ItemsService::new(store.clone(), Arc::clone(&config)).map_err(SetupError::Client)?)),
        false => None,
    };
    let confirm = match config.titelive.enabled {
        true => Some(Arc::new(ConfirmService::new(store.clone(), Arc::clone(&config)).map_err(SetupError::Client)?)),
        false => None,
    };
    Ok(Services { items, confirm })
}

/// What a round of sweeps came to.
#[derive(Debug, Clone, Default)]
pub struct SweepOutcome {
    /// The sweeps' figures added up.
    pub record: SweepRecord,
    /// Why a sweep failed (could not read due carts, or could not record outcomes), if one did.
    pub failure: Option<String>,
}

/// Sweeps every provider at once and adds up their figures. A provider whose sweep fails is
/// logged; the others are not held up.
async fn sweep_all(pollers: Vec<Arc<Poller>>, shutdown: CancellationToken) -> SweepOutcome {
    let records = futures_util::future::join_all(pollers.iter().map(|poller| poller.sweep(&shutdown))).await;
    let mut outcome = SweepOutcome::default();
    for (poller, record) in pollers.iter().zip(records) {
        match record {
            Ok(record) => {
                if record.write_failures > 0 {
                    outcome.failure = Some(format!(
                        "{}: {} database operation(s) failed",
                        poller.provider().as_str(),
                        record.write_failures
                    ));
                }
                outcome.record.add(&record);
            }
            Err(error) => {
                error!(provider = poller.provider().as_str(), error = %error, "sweep failed; the next tick retries");
                outcome.failure = Some(format!("{}: {error}", poller.provider().as_str()));
            }
        }
    }
    outcome
}

/// What `poll-once` did.
#[derive(Debug, Clone, Default)]
pub struct PollOnce {
    /// The sweeps and their figures.
    pub sweep: SweepOutcome,
    /// Deliveries attempted and delivered, over every sink.
    pub deliveries: Pass,
}

/// Runs one sweep of every enabled provider, then delivers what is pending once, through the
/// same pass the daemon's delivery loops use.
///
/// Fails when the database cannot be opened or a poller or sink cannot be set up.
pub async fn poll_once(config: Config, shutdown: CancellationToken) -> Result<PollOnce, DaemonError> {
    let store = open_store(&config).await?;
    let metrics = Arc::new(Metrics::default());
    let sinks: Vec<Arc<Sink>> = sinks::from_config(&config)?.into_iter().map(Arc::new).collect();
    let specs: Vec<_> = sinks.iter().map(|sink| sink.spec()).collect();
    retrying("record the configured sinks", STORE_RETRY_BUDGET, &shutdown, || {
        store.sync_sinks(specs.clone(), Utc::now())
    })
    .await?;
    let mut pollers = Vec::new();
    reconcile_pollers(&mut pollers, &store, &config, &metrics, &Arc::default()).await?;
    let sweep = sweep_all(pollers, shutdown.clone()).await;
    let mut deliveries = Pass::default();
    for sink in sinks {
        let pass = drain_once(&store, &sink, &metrics, &shutdown).await;
        deliveries.attempted += pass.attempted;
        deliveries.delivered += pass.delivered;
    }
    Ok(PollOnce { sweep, deliveries })
}
