//! The daemon: open the store, start the delivery loops and the schedule, sweep every
//! enabled provider on every tick until shutdown, apply reloaded settings.
//!
//! [`Daemon`] is what `cartwatch run` runs (through [`crate::app`], which adds the HTTP API)
//! and what tests drive directly with a mock upstream and a temporary database. It never
//! installs signal handlers: the caller owns the cancellation token and the reload channel.
//! It knows providers only through the [`Registry`] it is given.
//!
//! A sweep runs beside the daemon's loop, not inside it, so a reload, a shutdown or a
//! watchdog ping never waits for a sweep to end.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::clock::Clock;
use crate::delivery::{Pass, SinkSlot, delivery_loop, drain_once};
use crate::liveness::{DaemonHealth, Progress};
use crate::metrics::Metrics;
use crate::plan::PlanConfig;
use crate::policy::BackoffConfig;
use crate::provider::{Provider, Registry};
use crate::reconcile::Rules;
use crate::schedule::{Schedule, ScheduleError};
use crate::sinks::{self, Sink, SinkSettings};
use crate::store::{DatabaseConfig, OutboxStore, RETRY_BUDGET, Store, StoreError, SweepRecord, SweepStore, retrying};
use crate::sweep::{Poller, PollerConfig, SetupError, SweepConfig, check_hand_edited};

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
}

/// What the daemon runs with: built from the config by
/// [`Config::daemon_settings`](crate::config::Config::daemon_settings), or by hand.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The store.
    pub database: DatabaseConfig,
    /// Every provider, as configured; the enabled ones are polled.
    pub providers: Registry,
    /// The decision rules.
    pub rules: Arc<Rules>,
    /// Each upstream's backoff, circuit and authentication pause.
    pub backoff: BackoffConfig,
    /// The polling plan.
    pub plan: PlanConfig,
    /// When sweeps run, and their page size.
    pub sweep: SweepConfig,
    /// Where events go.
    pub sinks: SinkSettings,
}

impl Settings {
    fn poller_config(&self, provider: &Arc<dyn Provider>) -> PollerConfig {
        PollerConfig {
            provider: Arc::clone(provider),
            rules: Arc::clone(&self.rules),
            backoff: self.backoff.clone(),
            page_size: self.sweep.page_size,
        }
    }

    /// The longest a sweep may go without progress before the watchdog stops being told
    /// all is well.
    fn stall_limit(&self) -> Duration {
        let request_timeout = self
            .providers
            .enabled()
            .iter()
            .map(|provider| provider.client_settings().request_timeout)
            .max()
            .unwrap_or(Duration::from_secs(30));
        crate::liveness::stall_limit(request_timeout, self.database.busy_timeout)
    }
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
    /// Called when a sweep round ends, whatever came of it: a test on a manual clock waits
    /// for it before moving the clock again.
    pub swept: Box<dyn Fn() + Send + Sync>,
}

impl Default for Hooks {
    fn default() -> Hooks {
        Hooks {
            ready: Box::new(|| {}),
            alive: Arc::new(|| {}),
            alive_every: Duration::from_secs(5),
            reloaded: Box::new(|| {}),
            stopping: Box::new(|| {}),
            swept: Box::new(|| {}),
        }
    }
}

/// How often the daemon lets the store do its upkeep (SQLite: copy the WAL back).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(2);

/// How long shutdown lets a sweep write what it fetched, and deliveries in flight finish,
/// before dropping them (they are fetched or sent again by the next run: nothing is lost).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

/// A sweep running beside the loop.
type Sweeping = Pin<Box<dyn Future<Output = SweepOutcome> + Send>>;

/// An open daemon, ready to run: its store, metrics and health are there for whatever runs
/// beside it (the HTTP API).
pub struct Daemon {
    settings: Settings,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    health: Arc<DaemonHealth>,
    progress: Arc<Progress>,
    clock: Clock,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon").field("store", &self.store).finish_non_exhaustive()
    }
}

impl Daemon {
    /// Opens (creating if needed) and migrates the store `settings` name.
    ///
    /// Fails when it cannot be opened or migrated.
    pub async fn open(settings: Settings, clock: Clock) -> Result<Daemon, DaemonError> {
        let store = crate::store::open(&settings.database, true).await?;
        Ok(Daemon::with_store(settings, store, clock))
    }

    /// A daemon over a store already open (another backend, a test's).
    pub fn with_store(settings: Settings, store: Arc<dyn Store>, clock: Clock) -> Daemon {
        Daemon {
            settings,
            store,
            metrics: Arc::new(Metrics::default()),
            health: Arc::new(DaemonHealth::default()),
            progress: Arc::new(Progress::default()),
            clock,
        }
    }

    /// The store.
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    /// The metrics the daemon keeps.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Whether recent sweeps worked.
    pub fn health(&self) -> Arc<DaemonHealth> {
        Arc::clone(&self.health)
    }

    /// Runs until `shutdown` is cancelled. Settings sent on `reloads` are applied whole:
    /// pollers (client, apiCode, rate limit, cadence, backoff, event types), webhook
    /// endpoints and the log sink, and the schedule. (The database is opened once: a new
    /// location takes a restart.)
    ///
    /// Fails when the schedule or the sinks cannot start, or later, when the store's writer
    /// dies. Everything else that goes wrong is logged, retried and reflected in the store
    /// instead.
    pub async fn run(
        self,
        mut reloads: mpsc::UnboundedReceiver<Settings>,
        hooks: Hooks,
        shutdown: CancellationToken,
    ) -> Result<(), DaemonError> {
        let Daemon { settings, store, metrics, health, progress, clock } = self;
        let wake = Arc::new(Notify::new());
        let upkeep_shutdown = CancellationToken::new();
        let upkeep = store.start_upkeep(UPKEEP_INTERVAL, Arc::clone(&wake), upkeep_shutdown.clone())?;

        let tracker = TaskTracker::new();
        let stop_deliveries = CancellationToken::new();
        let abort = CancellationToken::new();
        let mut deliveries = Deliveries {
            store: Arc::clone(&store),
            metrics: Arc::clone(&metrics),
            clock: clock.clone(),
            wake: Arc::clone(&wake),
            loops: HashMap::new(),
        };
        deliveries.apply(&settings.sinks, &tracker, &stop_deliveries, &abort, &shutdown).await?;
        let mut pollers = Vec::new();
        reconcile_pollers(&mut pollers, &store, &settings, &metrics, &progress, &clock).await?;
        let mut schedule =
            Schedule::start(&settings.sweep.cron, &settings.sweep.timezone, metrics.sweeps_skipped.clone(), &clock)
                .await?;
        let providers: Vec<&str> = pollers.iter().map(|poller| poller.provider()).collect();
        metrics.prepare(&providers, &deliveries.names());
        info!(
            database = %settings.database.target(),
            cron = %settings.sweep.cron,
            providers = %pollers.iter().map(|poller| poller.provider()).collect::<Vec<_>>().join(","),
            sinks = %deliveries.names().join(","),
            "cartwatch started"
        );
        (hooks.ready)();

        let mut settings = settings;
        let mut sweeping: Option<Sweeping> = None;
        // Sweep once at start, so a restart does not wait for the first tick.
        let mut sweep_wanted = true;
        let mut next_replan: Option<chrono::DateTime<chrono::Utc>> = None;
        let mut stall_reported = false;
        let result = loop {
            if sweep_wanted && sweeping.is_none() {
                schedule.set_busy(true);
                progress.mark();
                // The plan is sized anew at start, after a reload, and every `plan.refresh`.
                let now = clock.now();
                let replan = next_replan.is_none_or(|at| now >= at);
                if replan {
                    next_replan = Some(crate::time::add(now, settings.plan.refresh));
                }
                let round = Round {
                    store: Arc::clone(&store),
                    providers: settings.providers.clone(),
                    pollers: pollers.clone(),
                    clock: clock.clone(),
                    replan: replan.then(|| settings.plan.clone()),
                };
                sweeping = Some(Box::pin(round.run(shutdown.clone())));
                sweep_wanted = false;
            }
            if crate::liveness::alive(sweeping.is_some(), progress.since_last(), settings.stall_limit()) {
                (hooks.alive)();
                stall_reported = false;
            } else if !std::mem::replace(&mut stall_reported, true) {
                error!(
                    stalled_for = ?progress.since_last(),
                    "the sweep has made no progress for longer than any of its waits can take; the watchdog is no longer told all is well"
                );
            }
            // A paused upstream is probed when its delay ends, not at the next tick after.
            let reopen = pollers.iter().filter_map(|poller| poller.reopens_at()).min();
            let reopened = {
                let clock = clock.clone();
                async move {
                    match reopen {
                        Some(at) => clock.sleep_until(at).await,
                        None => std::future::pending().await,
                    }
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
                    (hooks.swept)();
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
                Some(mut new_settings) = reloads.recv() => {
                    // Reloads that piled up: the latest wins.
                    while let Ok(newer) = reloads.try_recv() {
                        new_settings = newer;
                    }
                    if let Err(error) = reconcile_pollers(&mut pollers, &store, &new_settings, &metrics, &progress, &clock).await {
                        error!(error = %error, "cannot apply the new config to the pollers; they keep the old one");
                    }
                    if let Err(error) = deliveries.apply(&new_settings.sinks, &tracker, &stop_deliveries, &abort, &shutdown).await {
                        error!(error = %error, "cannot apply the new config to the sinks; they keep the old one");
                    }
                    let old = (&settings.sweep.cron, &settings.sweep.timezone);
                    if old != (&new_settings.sweep.cron, &new_settings.sweep.timezone) {
                        let sweep = &new_settings.sweep;
                        match Schedule::start(&sweep.cron, &sweep.timezone, metrics.sweeps_skipped.clone(), &clock).await {
                            Ok(started) => std::mem::replace(&mut schedule, started).shutdown().await,
                            Err(error) => error!(error = %error, "cannot start the new schedule; the old one goes on"),
                        }
                    }
                    let providers: Vec<&str> = pollers.iter().map(|poller| poller.provider()).collect();
                    metrics.prepare(&providers, &deliveries.names());
                    info!("configuration reloaded and applied; probing a paused upstream at once");
                    settings = new_settings;
                    next_replan = None;
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
            warn!(
                "deliveries in flight did not finish in time; they are sent again, with the same ids, at the next start"
            );
            abort.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(1), tracker.wait()).await;
        }
        abort.cancel();
        upkeep_shutdown.cancel();
        if let Some(upkeep) = upkeep {
            let _ = upkeep.await;
        }
        info!("cartwatch stopped");
        result
    }
}

/// Builds the sinks `settings` enable and records them in the store, so each has its
/// deliveries (a webhook whose URL changed after it answered `410 Gone` is enabled again).
///
/// Fails when a sink cannot be built or the store cannot be written within the retry budget.
async fn sync_sinks(
    store: &dyn OutboxStore,
    settings: &SinkSettings,
    clock: &Clock,
    shutdown: &CancellationToken,
) -> Result<Vec<Arc<Sink>>, DaemonError> {
    let sinks: Vec<Arc<Sink>> = sinks::build(settings)?.into_iter().map(Arc::new).collect();
    let specs: Vec<_> = sinks.iter().map(|sink| sink.spec()).collect();
    retrying("record the configured sinks", RETRY_BUDGET, shutdown, || store.sync_sinks(specs.clone(), clock.now()))
        .await?;
    Ok(sinks)
}

/// The running delivery loops, one per configured sink.
struct Deliveries {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    clock: Clock,
    wake: Arc<Notify>,
    loops: HashMap<String, (SinkSlot, CancellationToken)>,
}

impl Deliveries {
    /// Makes the loops match `settings`: a new sink gets a loop, a changed one its new
    /// settings for its next batch (URL, secrets, log file, timeout...), a removed one
    /// stops after its batch in flight. The `sinks` table follows, so a webhook whose URL
    /// changed after it answered `410 Gone` is enabled again.
    ///
    /// Fails when a sink cannot be built or the table cannot be written within the retry
    /// budget; nothing is changed then.
    async fn apply(
        &mut self,
        settings: &SinkSettings,
        tracker: &TaskTracker,
        stop: &CancellationToken,
        abort: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Result<(), DaemonError> {
        let sinks = sync_sinks(self.store.as_ref(), settings, &self.clock, shutdown).await?;
        let names: Vec<String> = sinks.iter().map(|sink| sink.name().to_owned()).collect();
        for sink in sinks {
            match self.loops.get(sink.name()) {
                Some((slot, _)) => slot.replace(sink),
                None => {
                    let name = sink.name().to_owned();
                    let slot = SinkSlot::new(sink);
                    let token = stop.child_token();
                    tracker.spawn(delivery_loop(
                        Arc::clone(&self.store) as Arc<dyn OutboxStore>,
                        slot.clone(),
                        Arc::clone(&self.wake),
                        Arc::clone(&self.metrics),
                        self.clock.clone(),
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

/// Makes `pollers` match the providers `settings` enables: existing ones take the new
/// settings, new ones are created (resuming any persisted pause), disabled ones are dropped.
async fn reconcile_pollers(
    pollers: &mut Vec<Arc<Poller>>,
    store: &Arc<dyn Store>,
    settings: &Settings,
    metrics: &Arc<Metrics>,
    progress: &Arc<Progress>,
    clock: &Clock,
) -> Result<(), DaemonError> {
    let mut next = Vec::new();
    for provider in settings.providers.enabled() {
        let config = settings.poller_config(&provider);
        match pollers.iter().find(|poller| poller.provider() == provider.name()) {
            Some(poller) => {
                poller.reload(&config).map_err(SetupError::Client)?;
                next.push(Arc::clone(poller));
            }
            None => {
                let store = Arc::clone(store) as Arc<dyn SweepStore>;
                let poller =
                    Poller::new(store, &config, Arc::clone(metrics), Arc::clone(progress), clock.clone()).await?;
                next.push(Arc::new(poller));
            }
        }
    }
    *pollers = next;
    Ok(())
}

/// What a round of sweeps came to.
#[derive(Debug, Clone, Default)]
pub struct SweepOutcome {
    /// The sweeps' figures added up.
    pub record: SweepRecord,
    /// Why a sweep failed (could not read due carts, or could not record outcomes), if one did.
    pub failure: Option<String>,
}

/// One round of sweeps: hand edits checked, then every provider swept at once.
struct Round {
    store: Arc<dyn Store>,
    providers: Registry,
    pollers: Vec<Arc<Poller>>,
    clock: Clock,
    /// Size the polling plan anew after the sweeps, with these settings.
    replan: Option<PlanConfig>,
}

impl Round {
    /// Checks hand edits, sweeps every provider at once and adds up their figures. A
    /// provider whose sweep fails is logged; the others are not held up.
    async fn run(self, shutdown: CancellationToken) -> SweepOutcome {
        let mut outcome = SweepOutcome::default();
        // When the database is locked this waits for a later round rather than holding
        // this one up.
        match check_hand_edited(self.store.as_ref(), &self.providers, self.clock.now()).await {
            Ok(_) => {}
            Err(error) if error.is_retryable() => {
                warn!(error = %error, "cannot check hand-edited carts now; the next sweep will")
            }
            Err(error) => {
                error!(error = %error, "cannot check hand-edited carts");
                outcome.failure = Some(format!("checking hand-edited carts: {error}"));
            }
        }
        let records = futures_util::future::join_all(self.pollers.iter().map(|poller| poller.sweep(&shutdown))).await;
        for (poller, record) in self.pollers.iter().zip(records) {
            match record {
                Ok(record) => {
                    if record.write_failures > 0 {
                        outcome.failure = Some(format!(
                            "{}: {} database operation(s) failed",
                            poller.provider(),
                            record.write_failures
                        ));
                    }
                    outcome.record.add(&record);
                }
                Err(error) => {
                    error!(provider = poller.provider(), error = %error, "sweep failed; the next tick retries");
                    outcome.failure = Some(format!("{}: {error}", poller.provider()));
                }
            }
        }
        // Sized after the sweeps, so reading the history never delays a due cart: the first
        // sweep after a start follows the tiers.
        if let Some(config) = &self.replan {
            replan(self.store.as_ref(), &self.pollers, config).await;
        }
        outcome
    }
}

/// Sizes every poller's plan anew from the store's history; a failure keeps the current one.
async fn replan(store: &dyn Store, pollers: &[Arc<Poller>], config: &PlanConfig) {
    for poller in pollers {
        match poller.replan(store, config).await {
            Ok(planned) => info!(
                provider = poller.provider(),
                budget = planned.figures.budget_requests_per_day.round(),
                expected = planned.figures.expected_requests_per_day.round(),
                estimated_p95_s = planned.figures.estimated_p95_detection_seconds.round(),
                "polling plan sized (requests a day)"
            ),
            Err(error) => {
                warn!(provider = poller.provider(), error = %error, "cannot size the polling plan now; the current one stays")
            }
        }
    }
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
pub async fn poll_once(settings: Settings, clock: Clock, shutdown: CancellationToken) -> Result<PollOnce, DaemonError> {
    let store = crate::store::open(&settings.database, true).await?;
    let metrics = Arc::new(Metrics::default());
    let sinks = sync_sinks(store.as_ref(), &settings.sinks, &clock, &shutdown).await?;
    let mut pollers = Vec::new();
    reconcile_pollers(&mut pollers, &store, &settings, &metrics, &Arc::default(), &clock).await?;
    // One sweep follows the plan the daemon would follow.
    replan(store.as_ref(), &pollers, &settings.plan).await;
    let round = Round {
        store: Arc::clone(&store),
        providers: settings.providers.clone(),
        pollers,
        clock: clock.clone(),
        replan: None,
    };
    let sweep = round.run(shutdown.clone()).await;
    let mut deliveries = Pass::default();
    for sink in sinks {
        let pass = drain_once(store.as_ref(), &sink, &metrics, &clock, &shutdown).await;
        deliveries.attempted += pass.attempted;
        deliveries.delivered += pass.delivered;
    }
    Ok(PollOnce { sweep, deliveries })
}
