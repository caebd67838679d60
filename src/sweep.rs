//! A sweep: read the due carts in pages, send them upstream in batches with bounded
//! concurrency and a rate limit, and apply each batch's outcome in one transaction.
//!
//! The [`Poller`] owns everything about one upstream that outlives a sweep: its health
//! (backoff, circuit, authentication pause, batch size) and its [`Tuning`], the client, rate
//! limiter and decision settings built from the config, which a reload swaps even in the
//! middle of a sweep. A sweep never holds a database transaction while a request is in
//! flight.

use std::collections::{HashSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::cart_id::shorten;
use crate::checks::Problems;
use crate::clock::Clock;
use crate::events::{EventType, NewEvent, UpstreamEventData};
use crate::liveness::Progress;
use crate::metrics::Metrics;
use crate::model::{BatchReply, CartReport, PollTarget, StatusModel, UpstreamError};
use crate::plan::{FILL_HORIZON, Plan, PlanConfig};
use crate::planning::Planned;
use crate::policy::{BackoffConfig, FailureKind, classify};
use crate::provider::{BatchClient, ClientSettings, Provider, Registry};
use crate::reconcile::{Context, PollOutcome, Rules};
use crate::store::{
    AppliedBatch, DueCursor, Outcome, RETRY_BUDGET, ReportStore, StoreError, SweepRecord, SweepStore, UpstreamRecord,
    retrying,
};
use crate::time::format_ts;
use crate::upstream::{Change, Gate, UpstreamHealth};

/// Longest wait inside a sweep for a short throttle to pass; longer pauses end the sweep and
/// leave the remaining carts due for the next one.
const MAX_IN_SWEEP_WAIT: Duration = Duration::from_secs(5);

/// How old the shared upstream health may be before a request reads it again.
const SHARED_HEALTH_AGE: Duration = Duration::from_millis(200);

/// Batch outcomes being written at once; the writer commits those that arrive together in
/// one transaction.
const WRITES_IN_FLIGHT: usize = 64;

/// Why a poller could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The HTTP client could not be built.
    #[error(transparent)]
    Client(#[from] UpstreamError),
    /// The persisted upstream state could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Figures of one sweep.
#[derive(Debug, Default)]
struct Counters {
    carts_polled: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
    write_failures: AtomicU64,
    transitions: AtomicU64,
    events: AtomicU64,
}

/// Per-sweep state shared by the batches in flight.
#[derive(Default)]
struct SweepRun {
    counters: Counters,
    stop: AtomicBool,
    stop_reason: Mutex<Option<String>>,
    /// Carts claimed and not yet recorded: given back at the end, so that on a shared store
    /// another daemon need not wait for their leases to run out.
    unsettled: Mutex<HashSet<i64>>,
}

impl SweepRun {
    fn stop(&self, reason: String) {
        if !self.stop.swap(true, Ordering::SeqCst) {
            info!(reason = %reason, "sweep stops early; the remaining carts stay due");
            *self.stop_reason.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// What a poller takes from the config: replaced whole on every reload.
#[derive(Debug, Clone)]
pub struct PollerConfig {
    /// The provider, with its settings.
    pub provider: Arc<dyn Provider>,
    /// The decision rules.
    pub rules: Arc<Rules>,
    /// The upstream's backoff, circuit and authentication pause.
    pub backoff: BackoffConfig,
    /// Due carts read per page.
    pub page_size: u32,
}

/// What a poller builds from its [`PollerConfig`]: rebuilt whole on every reload.
#[derive(Debug)]
struct Tuning {
    provider: Arc<dyn Provider>,
    client: Arc<dyn BatchClient>,
    settings: ClientSettings,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    rules: Arc<Rules>,
    page_size: u32,
}

impl Tuning {
    fn new(config: &PollerConfig) -> Result<Tuning, UpstreamError> {
        let mut settings = config.provider.client_settings();
        settings.batch_size = settings.batch_size.clamp(1, config.provider.max_batch());
        Ok(Tuning {
            client: config.provider.client()?,
            limiter: rate_limiter(settings.requests_per_second).map(Arc::new),
            settings,
            provider: Arc::clone(&config.provider),
            rules: Arc::clone(&config.rules),
            page_size: config.page_size,
        })
    }

    /// The same tuning, the same client and rate limiter, following `plan`.
    fn with_plan(&self, plan: Plan) -> Tuning {
        Tuning {
            provider: Arc::clone(&self.provider),
            client: Arc::clone(&self.client),
            settings: self.settings.clone(),
            limiter: self.limiter.clone(),
            rules: Arc::new(self.rules.with_plan(plan)),
            page_size: self.page_size,
        }
    }
}

/// When the upstream last answered, and when and how it last failed.
#[derive(Debug, Default, Clone)]
struct LastOutcomes {
    success_at: Option<DateTime<Utc>>,
    error_at: Option<DateTime<Utc>>,
    error: Option<String>,
}

/// Polls one upstream on behalf of the daemon.
pub struct Poller {
    store: Arc<dyn SweepStore>,
    name: &'static str,
    tuning: RwLock<Arc<Tuning>>,
    health: Mutex<UpstreamHealth>,
    probe_done: Notify,
    unknown_statuses: Mutex<HashSet<String>>,
    last: Mutex<LastOutcomes>,
    progress: Arc<Progress>,
    metrics: Arc<Metrics>,
    clock: Clock,
    /// A reload asked for a probe at once; on a shared store, every daemon must see it.
    probe_requested: AtomicBool,
    /// When the shared health was last read, on the poller's clock.
    synced_at: Mutex<Option<DateTime<Utc>>>,
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller").field("provider", &self.name).finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Poller {
    /// Builds the poller for one provider and resumes any pause persisted by an earlier run.
    /// Every request, write and wait marks `progress`, so a watchdog can tell a long sweep
    /// from a stuck one.
    ///
    /// Fails when the client cannot be built or the persisted state cannot be read.
    pub async fn new(
        store: Arc<dyn SweepStore>,
        config: &PollerConfig,
        metrics: Arc<Metrics>,
        progress: Arc<Progress>,
        clock: Clock,
    ) -> Result<Poller, SetupError> {
        let tuning = Tuning::new(config)?;
        let name = config.provider.name();
        let mut health = UpstreamHealth::new(
            crate::policy::transient_backoff(&config.backoff),
            crate::policy::auth_backoff(&config.backoff),
            config.backoff.circuit_after,
            tuning.settings.batch_size,
        );
        let records = store.upstream_records().await?;
        let mut last = LastOutcomes::default();
        if let Some(record) = records.iter().find(|record| record.provider == name) {
            // A daemon joining others takes their view as it is; one alone probes at once.
            if store.is_shared() {
                health.sync(&record.snapshot);
            } else {
                health.resume(&record.snapshot, clock.now());
            }
            if health.mode() != crate::upstream::Mode::Healthy {
                warn!(
                    provider = name,
                    mode = health.mode().as_str(),
                    "resuming a pause from the previous run; probing at once"
                );
            }
            last = LastOutcomes {
                success_at: record.last_success_at,
                error_at: record.last_error_at,
                error: record.last_error.clone(),
            };
        }
        metrics.set_paused(name, health.mode());
        Ok(Poller {
            store,
            name,
            tuning: RwLock::new(Arc::new(tuning)),
            health: Mutex::new(health),
            probe_done: Notify::new(),
            unknown_statuses: Mutex::new(HashSet::new()),
            last: Mutex::new(last),
            progress,
            metrics,
            clock,
            probe_requested: AtomicBool::new(false),
            synced_at: Mutex::new(None),
        })
    }

    /// Applies a reloaded config: a new client (base URL, apiCode, format, timeouts), rate
    /// limit, concurrency, batch size, cadence, backoff and event types, taking effect with
    /// the next request even in the middle of a sweep; then probes a paused upstream at once.
    ///
    /// Fails when the new client cannot be built; the old tuning then stays.
    pub fn reload(&self, config: &PollerConfig) -> Result<(), UpstreamError> {
        let tuning = Tuning::new(config)?;
        lock(&self.health).reconfigure(
            crate::policy::transient_backoff(&config.backoff),
            crate::policy::auth_backoff(&config.backoff),
            config.backoff.circuit_after,
            tuning.settings.batch_size,
        );
        *self.tuning.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(tuning);
        lock(&self.health).probe_now(self.clock.now());
        self.probe_requested.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Sizes the polling plan anew from the store's history (see [`crate::planning`]) and
    /// follows it from the next poll on; publishes its figures.
    ///
    /// Fails when the store cannot be read; the current plan then stays.
    pub async fn replan(&self, store: &dyn ReportStore, config: &PlanConfig) -> Result<Planned, StoreError> {
        let tuning = self.tuning();
        let model: Arc<dyn StatusModel> = Arc::clone(&tuning.provider) as Arc<dyn StatusModel>;
        let seats = tuning.settings.batch_size;
        let rps = tuning.settings.requests_per_second;
        let planned = crate::planning::build(store, config, &tuning.rules, model, seats, rps, self.clock.now()).await?;
        let mut current = self.tuning.write().unwrap_or_else(PoisonError::into_inner);
        *current = Arc::new(current.with_plan(planned.plan.clone()));
        drop(current);
        self.metrics.set_plan(self.name, &planned.figures);
        Ok(planned)
    }

    fn tuning(&self) -> Arc<Tuning> {
        Arc::clone(&self.tuning.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The name of the provider this poller polls.
    pub fn provider(&self) -> &'static str {
        self.name
    }

    /// The request timeout of its client, for the watchdog's patience.
    pub fn request_timeout(&self) -> Duration {
        self.tuning().settings.request_timeout
    }

    /// When a paused or throttled upstream may next be asked, if it is closed now: the daemon
    /// sweeps again at that moment instead of waiting for the next tick.
    pub fn reopens_at(&self) -> Option<DateTime<Utc>> {
        lock(&self.health).reopens_at(self.clock.now())
    }

    /// The upstream's current health.
    pub fn health(&self) -> crate::upstream::Snapshot {
        lock(&self.health).snapshot()
    }

    /// Runs one sweep over every cart due now. Returns its figures; they are also recorded in
    /// the `sweeps` table, and the upstream's health in `upstream_state`.
    ///
    /// Fails only when the database cannot be read at all; upstream failures are handled
    /// inside and end up in the carts' rows and the upstream state.
    pub async fn sweep(&self, shutdown: &CancellationToken) -> Result<SweepRecord, StoreError> {
        let started = self.clock.now();
        let span = info_span!("sweep", provider = self.name, started_at = %format_ts(started));
        self.sweep_inner(shutdown, started).instrument(span).await
    }

    /// Runs the sweep's two stages: requests, `concurrency` at a time, and writes of their
    /// outcomes. A request's slot is free again as soon as its answer is in, so waiting for
    /// the database never stretches the time between requests. Due carts are read a page at
    /// a time, ahead of need and while the requests go on: a slot freed while the next page
    /// is read is filled at once from what is queued.
    async fn pipeline(&self, run: &SweepRun, shutdown: &CancellationToken, started: DateTime<Utc>) {
        let tuning = self.tuning();
        let concurrency = tuning.settings.concurrency.max(1);
        // On a shared store a page is claimed for a lease: one round of requests, so that
        // its carts are asked about well within the lease and the daemons sweeping at the
        // same tick share the due carts between them.
        let page_size = match self.store.is_shared() {
            true => tuning.page_size.min((concurrency * tuning.settings.batch_size).clamp(1, 100_000) as u32),
            false => tuning.page_size,
        };
        drop(tuning);
        let mut cursor: Option<Option<DueCursor>> = Some(None);
        let mut claiming = None;
        let mut queue: VecDeque<Vec<PollTarget>> = VecDeque::new();
        let mut requests = FuturesUnordered::new();
        let mut writes = FuturesUnordered::new();
        loop {
            let going = !run.stopped() && !shutdown.is_cancelled();
            if going
                && claiming.is_none()
                && queue.len() < concurrency
                && let Some(after) = cursor.take()
            {
                claiming = Some(Box::pin(self.next_page(run, started, after, page_size)));
            }
            while going && requests.len() < concurrency {
                let Some(batch) = queue.pop_front() else { break };
                requests.push(self.run_batch(batch, run, shutdown));
            }
            if requests.is_empty() && writes.is_empty() && claiming.is_none() {
                return;
            }
            tokio::select! {
                Some(page) = async { Some(claiming.as_mut()?.await) }, if claiming.is_some() => {
                    claiming = None;
                    match page {
                        Ok((next, batches)) => {
                            cursor = next.map(Some);
                            queue.extend(batches);
                        }
                        Err(error) => {
                            error!(error = %error, "cannot read due carts; the sweep ends here");
                            run.counters.write_failures.fetch_add(1, Ordering::Relaxed);
                            self.metrics.store_errors.inc();
                            run.stop(format!("cannot read due carts: {error}"));
                        }
                    }
                }
                Some(outcome_groups) = requests.next(), if !requests.is_empty() && writes.len() < WRITES_IN_FLIGHT => {
                    for outcomes in outcome_groups {
                        writes.push(self.apply_outcomes(outcomes, run, shutdown));
                    }
                }
                Some(()) = writes.next(), if !writes.is_empty() => self.progress.mark(),
            }
        }
    }

    /// Claims the next page of due carts and cuts it into requests, the last page's last
    /// request filled with carts due soon. It runs beside the requests and their writes,
    /// never in place of them: a write waiting to be polled holds a database connection,
    /// and a claim waiting for one would wait for ever (on PostgreSQL, until the pool's
    /// timeout).
    async fn next_page(
        &self,
        run: &SweepRun,
        started: DateTime<Utc>,
        after: Option<DueCursor>,
        page_size: u32,
    ) -> Result<(Option<DueCursor>, Vec<Vec<PollTarget>>), StoreError> {
        let page = self.store.claim_due(self.name, started, after, page_size).await?;
        lock(&run.unsettled).extend(page.carts.iter().map(|cart| cart.key));
        let mut batches = self.batches_of(page.carts).await;
        if page.next.is_none() {
            self.fill_seats(&mut batches, run, started).await;
        }
        Ok((page.next, batches))
    }

    async fn sweep_inner(
        &self,
        shutdown: &CancellationToken,
        started: DateTime<Utc>,
    ) -> Result<SweepRecord, StoreError> {
        self.progress.mark();
        // A `next_poll_at` edited by hand into something that is not a timestamp sorts after
        // every real one and would never come due. When the database is locked this waits for
        // a later sweep rather than holding this one up.
        match self.store.reschedule_garbled(self.name, started, 10_000).await {
            Ok(rescheduled) => {
                for cart_id in &rescheduled {
                    warn!(cart_id = ?shorten(cart_id, 60), "this cart's next_poll_at was not a timestamp (edited by hand?); it is polled now");
                }
            }
            Err(error) if error.is_retryable() => {
                warn!(error = %error, "cannot check hand-edited carts now; the next sweep will")
            }
            Err(error) => return Err(error),
        }

        let run = SweepRun::default();
        self.pipeline(&run, shutdown, started).await;
        let unsettled: Vec<i64> = lock(&run.unsettled).drain().collect();
        if let Err(error) = self.store.release(unsettled).await {
            debug!(error = %error, "cannot give back the claims of carts not polled; their leases run out");
        }

        let counters = &run.counters;
        let record = SweepRecord {
            provider: self.name.to_owned(),
            started_at: format_ts(started),
            finished_at: Some(format_ts(self.clock.now())),
            carts_polled: counters.carts_polled.load(Ordering::Relaxed),
            requests: counters.requests.load(Ordering::Relaxed),
            failures: counters.failures.load(Ordering::Relaxed),
            write_failures: counters.write_failures.load(Ordering::Relaxed),
            transitions: counters.transitions.load(Ordering::Relaxed),
            events: counters.events.load(Ordering::Relaxed),
            stopped_early: lock(&run.stop_reason)
                .clone()
                .or_else(|| shutdown.is_cancelled().then(|| "shutdown".to_owned())),
        };
        if let Err(error) = self.store.record_sweep(record.clone()).await {
            warn!(error = %error, "cannot record the sweep's figures");
        }
        // When the partner last answered and failed is written after every sweep, so
        // `status` always shows it; the health itself, when it changed. (On a shared store
        // another daemon may have changed it since this one last read it.)
        self.note_outcomes().await;
        let finished = self.clock.now();
        self.metrics.sweeps.inc();
        self.metrics.sweep_duration.observe((finished - started).to_std().unwrap_or_default().as_secs_f64());
        if record.stopped_early.is_none() && record.failures == 0 && record.write_failures == 0 {
            self.metrics.last_successful_sweep.set(finished.timestamp_millis() as f64 / 1000.0);
        }
        let busy = record.requests > 0 || record.transitions > 0 || record.failures > 0 || record.write_failures > 0;
        if busy {
            info!(
                carts = record.carts_polled,
                requests = record.requests,
                failures = record.failures,
                write_failures = record.write_failures,
                transitions = record.transitions,
                events = record.events,
                "sweep finished"
            );
        } else {
            debug!("sweep finished; nothing was due");
        }
        Ok(record)
    }

    /// Fills the free seats of the sweep's last request with the carts due soonest after it
    /// (within [`FILL_HORIZON`]): the request is sent anyway, and each cart it carries now is
    /// one request fewer later. Never more carts than the batch size, never a cart twice in a
    /// sweep (the store skips carts polled since it started), no request more.
    async fn fill_seats(&self, batches: &mut [Vec<PollTarget>], run: &SweepRun, started: DateTime<Utc>) {
        let batch_size = lock(&self.health).batch_size().clamp(1, self.tuning().provider.max_batch());
        let Some(last) = batches.last_mut().filter(|last| last.len() < batch_size) else { return };
        let free = (batch_size - last.len()) as u32;
        let until = crate::time::add(started, FILL_HORIZON);
        match self.store.claim_early(self.name, started, until, free).await {
            Ok(early) if !early.is_empty() => {
                lock(&run.unsettled).extend(early.iter().map(|cart| cart.key));
                let count = early.len();
                for batch in self.batches_of(early).await {
                    last.extend(batch);
                }
                last.truncate(batch_size);
                self.metrics.seats_filled(self.name, count as u64);
                debug!(carts = count, "filled the free seats of the last request with carts due soon");
            }
            Ok(_) => {}
            Err(error) => {
                debug!(error = %error, "cannot read carts due soon; the last request goes out with free seats")
            }
        }
    }

    /// Validates the ids of a page (repairing or flagging hand-edited rows) and cuts it into
    /// batches of the current batch size.
    async fn batches_of(&self, page: Vec<PollTarget>) -> Vec<Vec<PollTarget>> {
        let provider = Arc::clone(&self.tuning().provider);
        let mut carts = Vec::with_capacity(page.len());
        for mut due in page {
            if provider.stored_id_is_canonical(&due.cart_id, due.session_token.as_deref()) {
                carts.push(due);
                continue;
            }
            let found = due.cart_id.clone();
            let now = self.clock.now();
            match repair_cart_id(
                self.store.as_ref(),
                provider.as_ref(),
                due.key,
                &found,
                due.session_token.as_deref(),
                now,
            )
            .await
            {
                Ok(Ok((cart_id, session_token))) => {
                    info!(cart_id = %cart_id, "normalised a hand-edited cart id");
                    due.cart_id = cart_id;
                    due.session_token = session_token;
                    carts.push(due);
                }
                Ok(Err(reason)) => {
                    warn!(cart_id = ?shorten(&found, 60), reason = %reason, "flagged a cart as invalid; it will not be polled")
                }
                Err(error) => {
                    warn!(cart_id = ?shorten(&found, 60), error = %error, "cannot repair a hand-edited cart id")
                }
            }
        }
        let batch_size = lock(&self.health).batch_size().clamp(1, provider.max_batch());
        let mut batches = Vec::with_capacity(carts.len().div_ceil(batch_size));
        let mut carts = carts.into_iter().peekable();
        while carts.peek().is_some() {
            batches.push(carts.by_ref().take(batch_size).collect());
        }
        batches
    }

    /// Sends one batch, splitting it when the upstream asks for that. Returns the outcomes to
    /// write, one group per request that settled something.
    async fn run_batch(
        &self,
        batch: Vec<PollTarget>,
        run: &SweepRun,
        shutdown: &CancellationToken,
    ) -> Vec<Vec<(i64, PollOutcome)>> {
        let mut settled = Vec::new();
        let mut work = VecDeque::from([batch]);
        while let Some(part) = work.pop_front() {
            // A batch formed before the batch size was halved is cut down before it goes.
            let batch_size = lock(&self.health).batch_size();
            if part.len() > batch_size {
                for chunk in part.chunks(batch_size).rev() {
                    work.push_front(chunk.to_vec());
                }
                continue;
            }
            let Some(probe) = self.wait_for_gate(run, shutdown).await else {
                return settled;
            };
            // The tuning of this request: a reload in the middle of a sweep applies from here.
            let tuning = self.tuning();
            if !self.take_request_slot(&tuning, run, shutdown).await {
                self.abandon_probe(probe);
                return settled;
            }
            let health_before = self.health();
            run.counters.requests.fetch_add(1, Ordering::Relaxed);
            self.progress.mark();
            // A shutdown drops the request in flight: nothing of this batch is written, and
            // the next run fetches the same statuses again.
            let sent = std::time::Instant::now();
            let Some(result) = shutdown.run_until_cancelled(tuning.client.fetch(&part)).await else {
                self.abandon_probe(probe);
                return settled;
            };
            self.progress.mark();
            match result {
                Ok(reply) => {
                    self.metrics.request(self.name, "ok", sent.elapsed());
                    lock(&self.last).success_at = Some(self.clock.now());
                    let change = lock(&self.health).on_success();
                    self.after_probe(probe);
                    match change {
                        Some(change) => self.handle_change(change, None).await,
                        None => self.share_health(&health_before).await,
                    }
                    settled.push(reply_outcomes(&part, reply));
                }
                Err(upstream_error) => {
                    self.metrics.request(self.name, upstream_error.label(), sent.elapsed());
                    run.counters.failures.fetch_add(1, Ordering::Relaxed);
                    {
                        let mut last = lock(&self.last);
                        last.error_at = Some(self.clock.now());
                        last.error = Some(upstream_error.to_string());
                    }
                    let kind = classify(&upstream_error, part.len());
                    let change = {
                        let mut health = lock(&self.health);
                        let change = health.on_failure(kind, probe, self.clock.now());
                        match kind {
                            FailureKind::TooManyIds => health.on_too_many_ids(part.len()),
                            _ => change,
                        }
                    };
                    self.after_probe(probe);
                    warn!(error = %upstream_error, carts = part.len(), probe, "batch request failed");
                    match change {
                        Some(change) => self.handle_change(change, Some(&upstream_error)).await,
                        None => self.share_health(&health_before).await,
                    }
                    match kind {
                        FailureKind::Auth | FailureKind::Throttled(_) => {
                            // The carts stay due; the gate holds the next requests.
                        }
                        FailureKind::Transient => {
                            let message = upstream_error.to_string();
                            settled
                                .push(part.iter().map(|due| (due.key, PollOutcome::Failed(message.clone()))).collect());
                        }
                        FailureKind::TooManyIds => work.push_front(part),
                        FailureKind::WrongBody if part.len() > 1 => {
                            let (left, right) = part.split_at(part.len() / 2);
                            work.push_front(right.to_vec());
                            work.push_front(left.to_vec());
                        }
                        FailureKind::WrongBody => {
                            let due = &part[0];
                            warn!(cart_id = %due.cart_id, error = %upstream_error, "the partner rejects requests containing this cart");
                            let outcome = PollOutcome::Failed(format!("{upstream_error} (isolated to this cart)"));
                            settled.push(vec![(due.key, outcome)]);
                        }
                    }
                }
            }
        }
        settled
    }

    /// Waits for a slot of the rate limit: the daemon's own, or on a shared store the one
    /// every daemon shares. Returns `false` when the request should not go after all.
    async fn take_request_slot(&self, tuning: &Tuning, run: &SweepRun, shutdown: &CancellationToken) -> bool {
        let rate = tuning.settings.requests_per_second;
        if !self.store.is_shared() || rate <= 0.0 {
            return match &tuning.limiter {
                Some(limiter) => shutdown.run_until_cancelled(limiter.until_ready()).await.is_some(),
                None => true,
            };
        }
        loop {
            self.progress.mark();
            match self.store.take_request_slot(self.name, rate).await {
                Ok(None) => return true,
                Ok(Some(wait)) => {
                    if shutdown.run_until_cancelled(tokio::time::sleep(wait)).await.is_none() {
                        return false;
                    }
                }
                Err(error) => {
                    warn!(error = %error, "cannot take a slot of the shared rate limit; the sweep ends here");
                    run.counters.write_failures.fetch_add(1, Ordering::Relaxed);
                    self.metrics.store_errors.inc();
                    run.stop(format!("cannot reach the shared rate limit: {error}"));
                    return false;
                }
            }
        }
    }

    /// On a shared store, takes the health every daemon shares (or, after a reload, makes
    /// this daemon's probe-at-once the shared one).
    async fn sync_health(&self) {
        if !self.store.is_shared() {
            return;
        }
        if self.probe_requested.swap(false, Ordering::SeqCst) {
            lock(&self.health).probe_now(self.clock.now());
            self.save_health(Vec::new()).await;
            return;
        }
        // Read at most every SHARED_HEALTH_AGE: a pause another daemon saw stops this one's
        // requests within that time, without a query before every request.
        {
            let now = self.clock.now();
            let mut synced_at = lock(&self.synced_at);
            if synced_at.is_some_and(|at| (now - at).to_std().unwrap_or_default() < SHARED_HEALTH_AGE) {
                return;
            }
            *synced_at = Some(now);
        }
        match self.store.upstream_records().await {
            Ok(records) => {
                if let Some(record) = records.into_iter().find(|record| record.provider == self.name) {
                    lock(&self.health).sync(&record.snapshot);
                }
            }
            Err(error) => debug!(error = %error, "cannot read the shared upstream health; using this daemon's"),
        }
    }

    /// On a shared store, saves a health that a request changed without a [`Change`] (a
    /// failure counted, a count reset), so every daemon counts the same failures.
    async fn share_health(&self, before: &crate::upstream::Snapshot) {
        if self.store.is_shared() && self.health() != *before {
            self.save_health(Vec::new()).await;
        }
    }

    /// Waits until a request may go. Returns whether it is a probe, or `None` when the sweep
    /// should send nothing more.
    async fn wait_for_gate(&self, run: &SweepRun, shutdown: &CancellationToken) -> Option<bool> {
        let mut waited_for_others = Duration::ZERO;
        loop {
            if run.stopped() || shutdown.is_cancelled() {
                return None;
            }
            self.progress.mark();
            self.sync_health().await;
            let probe_finished = self.probe_done.notified();
            let now = self.clock.now();
            let gate = lock(&self.health).gate(now);
            match gate {
                Gate::Send => return Some(false),
                Gate::Probe => {
                    let hold = self.tuning().settings.request_timeout * 2;
                    match self.store.claim_probe(self.name, now, hold).await {
                        Ok(false) => {
                            // Another daemon is sending the probe, or has just sent it; its
                            // outcome is shared, and read afresh.
                            lock(&self.health).release_probe();
                            *lock(&self.synced_at) = None;
                            if waited_for_others > MAX_IN_SWEEP_WAIT {
                                run.stop("another daemon is probing the paused upstream".into());
                                return None;
                            }
                            let pause = Duration::from_millis(250);
                            shutdown.run_until_cancelled(self.clock.sleep(pause)).await?;
                            waited_for_others += pause;
                            continue;
                        }
                        Ok(true) => {}
                        Err(error) => debug!(error = %error, "cannot claim the probe on the store; sending it"),
                    }
                    info!("sending a probe request to the paused upstream");
                    return Some(true);
                }
                Gate::Wait { probe_in_flight: true, .. } => {
                    let wait = tokio::time::timeout(self.tuning().settings.request_timeout * 2, probe_finished);
                    shutdown.run_until_cancelled(wait).await?.ok();
                }
                Gate::Wait { until, .. } => {
                    let wait = (until - now).to_std().unwrap_or(Duration::ZERO);
                    if wait > MAX_IN_SWEEP_WAIT {
                        run.stop(format!("upstream paused until {}", format_ts(until)));
                        return None;
                    }
                    shutdown.run_until_cancelled(self.clock.sleep(wait)).await?;
                }
            }
        }
    }

    fn after_probe(&self, probe: bool) {
        if probe {
            self.probe_done.notify_waiters();
        }
    }

    /// A probe that was granted but never sent must not keep the upstream closed.
    fn abandon_probe(&self, probe: bool) {
        if probe {
            lock(&self.health).probe_now(self.clock.now());
            self.probe_done.notify_waiters();
        }
    }

    /// Writes a batch's outcomes, retrying while the database is locked or unwritable. When
    /// the budget runs out the outcome is dropped: the carts stay due and are fetched again.
    async fn apply_outcomes(&self, outcomes: Vec<(i64, PollOutcome)>, run: &SweepRun, shutdown: &CancellationToken) {
        let outcomes: Vec<Outcome> =
            outcomes.into_iter().map(|(key, outcome)| (key, outcome, rand::random::<f64>())).collect();
        let count = outcomes.len();
        let writing = std::time::Instant::now();
        let applied = retrying("record a batch's outcome", RETRY_BUDGET, shutdown, || {
            // Each attempt is progress: waiting out another process's lock is not being stuck.
            self.progress.mark();
            self.store.apply(outcomes.clone(), self.context())
        })
        .await;
        self.metrics.store_apply_duration.observe(writing.elapsed().as_secs_f64());
        let applied = match applied {
            Ok(applied) => {
                let mut unsettled = lock(&run.unsettled);
                for (key, ..) in &outcomes {
                    unsettled.remove(key);
                }
                applied
            }
            Err(error) => {
                error!(error = %error, carts = count, "cannot record a batch's outcome; its carts stay due and will be polled again");
                run.counters.write_failures.fetch_add(1, Ordering::Relaxed);
                self.metrics.store_errors.inc();
                return;
            }
        };
        run.counters.carts_polled.fetch_add((count - applied.skipped) as u64, Ordering::Relaxed);
        run.counters.transitions.fetch_add(applied.transitions.len() as u64, Ordering::Relaxed);
        run.counters.events.fetch_add(applied.events.len() as u64, Ordering::Relaxed);
        self.log_applied(&applied);
    }

    fn log_applied(&self, applied: &AppliedBatch) {
        for (cart_id, from, to) in &applied.transitions {
            info!(cart_id = %cart_id, from = ?from.as_deref().unwrap_or("unknown"), to = ?to, "status changed");
            self.metrics.transition(to);
        }
        for (event_type, cart_id, event_id) in &applied.events {
            debug!(cart_id = %cart_id, event_type = %event_type, event_id = %event_id, "event written");
            self.metrics.event_written(*event_type);
        }
        for (cart_id, state) in &applied.finished {
            info!(cart_id = %cart_id, state = %state, "polling ended");
        }
        for (cart_id, raw) in &applied.unknown_statuses {
            let first_time = lock(&self.unknown_statuses).insert(raw.clone());
            if first_time {
                warn!(cart_id = %cart_id, status = ?shorten(raw, 60), "the partner sent a status the documentation does not list; kept verbatim");
            }
        }
    }

    fn context(&self) -> Context {
        let tuning = self.tuning();
        let model: Arc<dyn StatusModel> = Arc::clone(&tuning.provider) as Arc<dyn StatusModel>;
        Context { now: self.clock.now(), rules: Arc::clone(&tuning.rules), model }
    }

    /// Logs a health change, and persists the new state together with the event that
    /// announces it, in one transaction.
    async fn handle_change(&self, change: Change, cause: Option<&UpstreamError>) {
        let provider = self.name;
        let now = self.clock.now();
        let mut event = None;
        match &change {
            Change::AuthFailed { next_probe_at } => {
                error!(
                    provider,
                    next_probe_at = %format_ts(*next_probe_at),
                    "the partner rejected the apiCode (HTTP 401); polling is paused until a probe succeeds. \
                     Fix the apiCode and send SIGHUP (systemctl reload cartwatch) to probe at once"
                );
                event = Some((
                    EventType::UpstreamAuthFailed,
                    "the partner rejected the apiCode (HTTP 401); polling is paused".to_owned(),
                    None,
                ));
            }
            Change::AuthRecovered { since } => {
                warn!(provider, paused_since = %format_ts(*since), "the partner accepts the apiCode again; polling resumed");
                event = Some((
                    EventType::UpstreamAuthRecovered,
                    "the partner accepts the apiCode again; polling resumed".to_owned(),
                    Some(format_ts(*since)),
                ));
            }
            Change::CircuitOpened { failures, next_probe_at } => warn!(
                provider,
                failures,
                next_probe_at = %format_ts(*next_probe_at),
                "upstream circuit opened after repeated failures; sending one probe per delay step"
            ),
            Change::CircuitClosed { since } => {
                info!(provider, open_since = %format_ts(*since), "upstream circuit closed; polling resumed")
            }
            Change::ProbeFailed { next_probe_at } => {
                warn!(provider, next_probe_at = %format_ts(*next_probe_at), "probe failed; the upstream stays paused")
            }
            Change::Throttled { until } => {
                warn!(provider, until = %format_ts(*until), "the partner asked us to slow down; waiting")
            }
            Change::BatchSizeReduced { batch_size } => {
                warn!(provider, batch_size, "the partner refused the batch size (code 102); halved it")
            }
        }
        if cause.is_some() {
            lock(&self.last).error_at = Some(now);
        }
        let events: Vec<NewEvent> = event
            .filter(|(event_type, ..)| self.tuning().rules.emit.contains(event_type))
            .map(|(event_type, message, since)| {
                let data = UpstreamEventData { provider: provider.to_owned(), message, since };
                NewEvent::upstream(event_type, &data, now)
            })
            .into_iter()
            .collect();
        let written: Vec<EventType> = events.iter().map(|event| event.event_type).collect();
        if self.save_health(events).await {
            for event_type in written {
                self.metrics.event_written(event_type);
            }
        }
    }

    /// Persists when the upstream last answered and failed.
    async fn note_outcomes(&self) {
        match self.store.note_upstream(self.upstream_record()).await {
            Ok(()) => self.metrics.set_paused(self.name, self.health().mode),
            Err(error) => warn!(error = %error, "cannot persist the upstream state"),
        }
    }

    fn upstream_record(&self) -> UpstreamRecord {
        let last = lock(&self.last).clone();
        UpstreamRecord {
            provider: self.name.to_owned(),
            snapshot: self.health(),
            last_success_at: last.success_at,
            last_error_at: last.error_at,
            last_error: last.error,
            updated_at: format_ts(self.clock.now()),
        }
    }

    /// Persists the upstream's health and `events` in one transaction; returns whether it
    /// was written.
    async fn save_health(&self, events: Vec<NewEvent>) -> bool {
        let record = self.upstream_record();
        self.metrics.set_paused(self.name, record.snapshot.mode);
        match self.store.save_upstream(record, events).await {
            Ok(()) => true,
            Err(error) => {
                warn!(error = %error, "cannot persist the upstream state");
                false
            }
        }
    }
}

/// What checking rows inserted by hand did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandEditReport {
    /// Indexes and views someone dropped, created again.
    pub repaired: Vec<String>,
    /// Rows accepted (some after their id was put in canonical form).
    pub accepted: Vec<String>,
    /// Rows flagged invalid: the id as found and why.
    pub flagged: Vec<(String, String)>,
}

/// Checks what people changed by hand: indexes or views the store needs that were dropped
/// are created again, and each tracked row with no `next_poll_at` (a plain `INSERT`) gets
/// its provider's canonical id and is made due, or is flagged `invalid` with the reason in
/// its `last_error`, so it never reaches a partner. Cheap when nothing was changed.
///
/// Fails when the store cannot be read or written.
pub async fn check_hand_edited(
    store: &dyn SweepStore,
    providers: &Registry,
    now: DateTime<Utc>,
) -> Result<HandEditReport, StoreError> {
    let mut report = HandEditReport { repaired: store.repair_schema().await?, ..HandEditReport::default() };
    for row in store.unchecked_carts(10_000).await? {
        let Some(provider) = providers.get(&row.provider) else {
            let reason = format!("unknown provider {:?}; known providers: {}", row.provider, providers.names());
            store.flag_invalid(row.key, reason.clone(), now).await?;
            report.flagged.push((row.cart_id, reason));
            continue;
        };
        let token = row.session_token.as_deref();
        match repair_cart_id(store, provider.as_ref(), row.key, &row.cart_id, token, now).await? {
            Ok((cart_id, _)) => report.accepted.push(cart_id),
            Err(reason) => report.flagged.push((row.cart_id, reason)),
        }
    }
    if !report.accepted.is_empty() {
        info!(count = report.accepted.len(), "accepted carts inserted directly into the database");
    }
    for (found, reason) in &report.flagged {
        warn!(cart_id = ?shorten(found, 60), reason = %reason, "flagged a hand-inserted cart as invalid; it will not be polled");
    }
    Ok(report)
}

/// Puts a hand-edited row's id into its provider's canonical form (a token given as the id
/// moves to `session_token`), or flags the row invalid. Returns the canonical id with its
/// token, or why the row was flagged.
async fn repair_cart_id(
    store: &dyn SweepStore,
    provider: &dyn Provider,
    key: i64,
    found: &str,
    session_token: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Result<(String, Option<String>), String>, StoreError> {
    // A row inserted by hand may name its cart by the token, in either column.
    let registered = match session_token.map(|token| provider.register_id(token)) {
        Some(Ok(registered)) => Ok(registered),
        _ => provider.register_id(found),
    };
    let reason = match registered {
        Ok((cart_id, token)) => match store.set_cart_id(key, cart_id.clone(), token.clone(), now).await? {
            Ok(()) => return Ok(Ok((cart_id, token))),
            Err(reason) => reason,
        },
        Err(reason) => reason,
    };
    store.flag_invalid(key, reason.clone(), now).await?;
    Ok(Err(reason))
}

/// Pairs an answer's reports with the requested carts, logging what does not fit.
fn reply_outcomes(part: &[PollTarget], reply: BatchReply) -> Vec<(i64, PollOutcome)> {
    if !reply.unexpected.is_empty() || reply.unidentified > 0 {
        warn!(
            unexpected = ?shorten(&reply.unexpected.join(","), 200),
            unidentified = reply.unidentified,
            "the partner's answer mentions carts that were not asked for; ignored"
        );
    }
    if !reply.duplicated.is_empty() {
        warn!(
            carts = %shorten(&reply.duplicated.join(","), 200),
            "the partner's answer lists these carts more than once; kept the most advanced entry of each"
        );
    }
    part.iter()
        .zip(reply.reports)
        .map(|(due, (reported_id, report))| {
            debug_assert_eq!(due.cart_id, reported_id);
            if report == CartReport::Missing {
                warn!(cart_id = %due.cart_id, "the partner's answer did not mention this cart");
            }
            (due.key, PollOutcome::Report(report))
        })
        .collect()
}

/// A direct rate limiter that lets one request through per `1 / requests_per_second`, with
/// no burst, so a late sweep never sends faster than the configured rate. `None` for 0.
fn rate_limiter(requests_per_second: f64) -> Option<DefaultDirectRateLimiter> {
    if requests_per_second <= 0.0 || !requests_per_second.is_finite() {
        return None;
    }
    // Config keeps the rate within 0.001..=10000; the fallback only guards the arithmetic.
    let period = Duration::try_from_secs_f64(1.0 / requests_per_second).unwrap_or(Duration::from_secs(1000));
    let quota = Quota::with_period(period)?.allow_burst(NonZeroU32::MIN);
    Some(RateLimiter::direct(quota))
}

/// `[sweep]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepConfig {
    /// Cron expression with a seconds field.
    pub cron: String,
    /// IANA zone the cron expression is read in.
    pub timezone: String,
    /// Due carts read from the database per page.
    pub page_size: u32,
}

impl SweepConfig {
    /// Records every problem of this section in `problems`.
    pub fn check(&self, problems: &mut Problems) {
        if let Err(message) = crate::schedule::parse_cron(&self.cron) {
            problems.add("sweep.cron", message);
        }
        if self.timezone.parse::<chrono_tz::Tz>().is_err() {
            problems.add(
                "sweep.timezone",
                format!("unknown time zone {:?}; use an IANA name such as \"Europe/Brussels\"", self.timezone),
            );
        }
        problems.number("sweep.page_size", self.page_size, 1..=100_000);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_is_off_for_zero_and_strict_otherwise() {
        assert!(rate_limiter(0.0).is_none());
        let limiter = rate_limiter(2.0).unwrap();
        assert!(limiter.check().is_ok());
        assert!(limiter.check().is_err(), "no burst beyond one request");
    }
}
