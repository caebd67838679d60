//! The command line: every subcommand, its help text, and its exit codes.
//!
//! Exit codes (also in the README):
//! 0 success; 1 unexpected failure; 2 bad command line; 3 invalid config;
//! 4 database unavailable; 5 input rejected (malformed or unknown ids); 6 the partner could
//! not be reached; 7 refused locally by the guard; 8 refused by the partner.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use chrono::Utc;
use clap::{Parser, Subcommand};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cart_id::CartId;
use crate::config::{self, Config, ConfigError, Loaded, Purpose};
use crate::confirm::{ConfirmError, ConfirmService};
use crate::daemon;
use crate::items::{ChangeError, ItemsService};
use crate::provider::imaterialise::items::ItemAction;
use crate::provider::titelive::check_domain;
use crate::provider::{Provider, canonical_any};
use crate::simulator::{DEMO_API_CODE, FaultSpec, Simulator, SimulatorSettings};
use crate::status::CartStatus;
use crate::store::{Store, TrackOutcome, TrackRequest, UntrackOutcome};
use crate::systemd::Systemd;

/// Exit code: unexpected failure.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code: the config is invalid.
pub const EXIT_CONFIG: u8 = 3;
/// Exit code: the database cannot be opened or used.
pub const EXIT_DATABASE: u8 = 4;
/// Exit code: some input was rejected; nothing was changed.
pub const EXIT_REJECTED: u8 = 5;
/// Exit code: the partner could not be reached or failed.
pub const EXIT_UPSTREAM: u8 = 6;
/// Exit code: refused locally by the guard (the cart's status forbids it); nothing was sent.
pub const EXIT_REFUSED: u8 = 7;
/// Exit code: the partner refused the change (its error codes 101..111).
pub const EXIT_PARTNER_REFUSED: u8 = 8;

/// cartwatch: watch partner carts until they are checked out and ordered.
#[derive(Debug, Parser)]
#[command(name = "cartwatch", version, about, long_about = None)]
pub struct Cli {
    /// Config file [default: /etc/cartwatch/cartwatch.toml, optional when absent].
    #[arg(long, global = true, env = "CARTWATCH_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: sweep on the schedule and deliver events until SIGTERM or SIGINT.
    /// SIGHUP reloads the config (for a new apiCode) and probes a paused upstream at once.
    Run,
    /// Run one sweep over the carts due now, deliver pending events once, and exit.
    PollOnce {
        /// Poll every tracked cart, not only those due.
        #[arg(long)]
        all: bool,
    },
    /// Register carts to watch, by id (any GUID spelling), from a file, or from stdin.
    Track {
        /// Cart ids: GUIDs for i.materialise, session tokens for Titelive.
        #[arg(value_name = "CART_ID")]
        cart_ids: Vec<String>,
        /// The platform the carts live on: imaterialise or titelive.
        #[arg(long, value_name = "NAME", default_value = "imaterialise")]
        provider: String,
        /// The shop's domain code (Titelive) [default: titelive.default_domain].
        #[arg(long, value_name = "CODE")]
        domain: Option<String>,
        /// The shop's own reference, stored with the cart and sent in its events.
        #[arg(long, value_name = "TEXT")]
        reference: Option<String>,
        /// Read ids from a file (one per line, optionally `id,reference`; `#` starts a
        /// comment); `-` reads standard input.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Confirm a Titelive cart: turn the session's cart into a pending order, record it and
    /// announce cart.ordered. Never done automatically.
    Confirm {
        /// The session token.
        #[arg(value_name = "TOKEN")]
        token: String,
        /// The shop's domain code [default: the tracked cart's, else titelive.default_domain].
        #[arg(long, value_name = "CODE")]
        domain: Option<String>,
    },
    /// Stop watching carts. Their rows and history stay in the database.
    Untrack {
        /// Cart ids.
        #[arg(value_name = "CART_ID", required = true)]
        cart_ids: Vec<String>,
    },
    /// Show a summary of all carts, or one cart in detail with its transitions.
    Status {
        /// A cart id to show in detail.
        #[arg(value_name = "CART_ID")]
        cart_id: Option<String>,
    },
    /// List events from the outbox, oldest first, with each sink's delivery state; or
    /// manage dead letters.
    Events {
        /// `dead` or `redeliver`; without one, events are listed.
        #[command(subcommand)]
        action: Option<EventsAction>,
        /// Only events after this sequence number (a cursor: pass the last `seq` you saw).
        #[arg(long, value_name = "SEQ", default_value_t = 0)]
        after: i64,
        /// At most this many events at a time, 1 to 10000.
        #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
        /// Keep printing new events as they are written, like `tail -f`.
        #[arg(long)]
        follow: bool,
        /// One JSON object per line (the event as the log sink writes it, plus
        /// `deliveries`), instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Add or remove a tracked cart's items through the Add/Remove Cart Item API, guarded
    /// by the cart's last known status; or list the changes made.
    Items {
        /// `add`, `remove` or `list`.
        #[command(subcommand)]
        action: ItemsCommand,
    },
    /// Manage webhook endpoints: list them, enable one its receiver disabled.
    Webhooks {
        /// `list` or `enable`.
        #[command(subcommand)]
        action: WebhooksCommand,
    },
    /// Validate the config and print the effective values, secrets redacted.
    CheckConfig,
    /// Run the built-in partner simulator as its own process, until SIGTERM or Ctrl-C: the
    /// Cart Status and Add/Remove Cart Item APIs, the Titelive cart API, and `/_sim/stats`,
    /// `/_sim/carts`, `/_sim/truth` to see what it did.
    Simulate {
        /// Address to listen on.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8900")]
        listen: std::net::SocketAddr,
        /// Milliseconds added to every status request.
        #[arg(long, value_name = "MS", default_value_t = 0)]
        latency: u64,
        /// Simulated i.materialise carts.
        #[arg(long, value_name = "N", default_value_t = 30)]
        carts: usize,
        /// Cart ids it does not know (answered with 101).
        #[arg(long, value_name = "N", default_value_t = 2)]
        unknown: usize,
        /// Simulated Titelive sessions (domain 00000).
        #[arg(long, value_name = "N", default_value_t = 0)]
        sessions: usize,
        /// Seed of the scripts, ids and faults.
        #[arg(long, value_name = "S", default_value_t = 1)]
        seed: u64,
        /// Faults to inject, e.g. `401:0.05,code1:0.05,5xx:0.05,timeout:0.01,malformed:0.05`
        /// (per request) or `zero-date:0.2,no-order-id:0.5,stale-duplicate:0.3` (per cart).
        #[arg(long, value_name = "SPEC", default_value = "")]
        faults: String,
        /// Every cart shows this status for good (NotOrdered, Pending, CheckedOut, Ordered).
        #[arg(long, value_name = "STATUS")]
        uniform_status: Option<String>,
        /// Fewest times a status is served before a cart moves on.
        #[arg(long, value_name = "N", default_value_t = 1)]
        min_dwell: u32,
        /// Most times a status is served before a cart moves on.
        #[arg(long, value_name = "N", default_value_t = 3)]
        max_dwell: u32,
    },
    /// Run a benchmark and print its figures as one JSON object per scenario: sweep, scale,
    /// deliver, transitions, or all.
    Bench {
        /// The scenario.
        #[arg(value_name = "SCENARIO", default_value = "all")]
        scenario: String,
        /// Scale the number of carts and events by this factor (1.0 is the documented size).
        #[arg(long, value_name = "FACTOR", default_value_t = 1.0)]
        scale: f64,
    },
    /// Watch simulated carts being checked out and ordered: a built-in simulator, a
    /// temporary database, no config and no network. Ends within a minute.
    Demo {
        /// Which partner to simulate: imaterialise or titelive.
        #[arg(long, value_name = "NAME", default_value = "imaterialise")]
        provider: String,
        /// How many simulated carts to track.
        #[arg(long, default_value_t = 40)]
        carts: usize,
        /// Seed of the simulated timeline.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
}

/// What `cartwatch items` does.
#[derive(Debug, Subcommand)]
pub enum ItemsCommand {
    /// Add items (created with the Cart Item Creation API) to a cart.
    Add {
        /// The cart.
        #[arg(value_name = "CART_ID")]
        cart_id: String,
        /// Cart item ids.
        #[arg(value_name = "ITEM_ID", required = true)]
        item_ids: Vec<String>,
        /// Ask the partner even if the cart is untracked or its last known status forbids it.
        #[arg(long)]
        force: bool,
    },
    /// Remove items from a cart.
    Remove {
        /// The cart.
        #[arg(value_name = "CART_ID")]
        cart_id: String,
        /// Cart item ids.
        #[arg(value_name = "ITEM_ID", required = true)]
        item_ids: Vec<String>,
        /// Ask the partner even if the cart is untracked or its last known status forbids it.
        #[arg(long)]
        force: bool,
    },
    /// List the item changes recorded for a cart.
    List {
        /// The cart.
        #[arg(value_name = "CART_ID")]
        cart_id: String,
    },
}

/// What `cartwatch events` can do besides listing.
#[derive(Debug, Subcommand)]
pub enum EventsAction {
    /// List dead letters: deliveries given up after the last attempt of the schedule.
    Dead {
        /// Only this endpoint's (a webhook name, or `log`).
        #[arg(long, value_name = "NAME")]
        endpoint: Option<String>,
        /// At most this many, 1 to 10000.
        #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
    },
    /// Queue events for delivery again, attempts starting afresh: by event id, or every dead
    /// letter with --dead.
    Redeliver {
        /// Event ids (`evt_...`).
        #[arg(value_name = "EVENT_ID")]
        event_ids: Vec<String>,
        /// Every dead letter.
        #[arg(long)]
        dead: bool,
        /// Only on this endpoint (for an event id: even if it had no delivery there).
        #[arg(long, value_name = "NAME")]
        endpoint: Option<String>,
    },
    /// Give up dead letters for good, so the later events of their carts, held behind them
    /// to keep each cart's events in order, are delivered: by event id, or every dead letter
    /// with --dead.
    Skip {
        /// Event ids (`evt_...`).
        #[arg(value_name = "EVENT_ID")]
        event_ids: Vec<String>,
        /// Every dead letter.
        #[arg(long)]
        dead: bool,
        /// Only on this endpoint.
        #[arg(long, value_name = "NAME")]
        endpoint: Option<String>,
    },
}

/// What `cartwatch webhooks` does.
#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// List the endpoints with their delivery figures, and whether each is disabled.
    List,
    /// Enable an endpoint its receiver disabled with 410 Gone: everything queued for it
    /// meanwhile is delivered, in order.
    Enable {
        /// The endpoint's name (`[webhooks.NAME]`).
        #[arg(value_name = "NAME")]
        name: String,
    },
}

/// A failed command: what to print and which exit code to use.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub code: u8,
    /// The error, with context.
    pub error: anyhow::Error,
    /// Whether nothing is to be printed (the reader of standard output went away).
    pub quiet: bool,
}

impl Failure {
    fn new(code: u8, error: impl Into<anyhow::Error>) -> Failure {
        Failure { code, error: error.into(), quiet: false }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Failure {
        match error.downcast::<crate::output::Closed>() {
            Ok(closed) => Failure::from(closed),
            Err(error) => Failure::new(EXIT_FAILURE, error),
        }
    }
}

impl From<crate::output::Closed> for Failure {
    /// A reader that went away ends the command quietly and successfully: it had what it
    /// wanted. Any other write failure is reported.
    fn from(closed: crate::output::Closed) -> Failure {
        let quiet = closed.reader_left();
        Failure { code: if quiet { 0 } else { EXIT_FAILURE }, error: closed.into(), quiet }
    }
}

/// Runs a parsed command line and returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "error: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(dispatch(cli));
    // Database work still running on the blocking pool (a statement waiting out another
    // process's lock) is not waited for: what was not committed is fetched again next time.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) if failure.quiet => ExitCode::from(failure.code),
        Err(failure) => {
            let _ = writeln!(std::io::stderr(), "error: {}", describe(&failure.error));
            ExitCode::from(failure.code)
        }
    }
}

/// An error and its causes on one line, leaving out a cause whose text the message before it
/// already quotes (many messages name their cause, for the log lines that show only them).
fn describe(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1).map(ToString::to_string) {
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

async fn dispatch(cli: Cli) -> Result<(), Failure> {
    let config_path = cli.config.clone();
    match cli.command {
        Command::Run => run(config_path).await,
        Command::PollOnce { all } => poll_once(config_path, all).await,
        Command::Track { cart_ids, provider, domain, reference, file } => {
            track(config_path, cart_ids, provider, domain, reference, file).await
        }
        Command::Confirm { token, domain } => confirm(config_path, token, domain).await,
        Command::Untrack { cart_ids } => untrack(config_path, cart_ids).await,
        Command::Status { cart_id } => status(config_path, cart_id).await,
        Command::Events { action: None, after, limit, follow, json } => {
            events(config_path, after, limit, follow, json).await
        }
        Command::Events { action: Some(EventsAction::Dead { endpoint, limit }), .. } => {
            dead_letters(config_path, endpoint, limit).await
        }
        Command::Events { action: Some(EventsAction::Redeliver { event_ids, dead, endpoint }), .. } => {
            redeliver(config_path, event_ids, dead, endpoint).await
        }
        Command::Events { action: Some(EventsAction::Skip { event_ids, dead, endpoint }), .. } => {
            skip(config_path, event_ids, dead, endpoint).await
        }
        Command::Webhooks { action: WebhooksCommand::List } => list_webhooks(config_path).await,
        Command::Webhooks { action: WebhooksCommand::Enable { name } } => enable_webhook(config_path, name).await,
        Command::Items { action: ItemsCommand::Add { cart_id, item_ids, force } } => {
            change_items(config_path, ItemAction::Add, cart_id, item_ids, force).await
        }
        Command::Items { action: ItemsCommand::Remove { cart_id, item_ids, force } } => {
            change_items(config_path, ItemAction::Remove, cart_id, item_ids, force).await
        }
        Command::Items { action: ItemsCommand::List { cart_id } } => list_items(config_path, cart_id).await,
        Command::CheckConfig => check_config(config_path),
        Command::Simulate {
            listen,
            latency,
            carts,
            unknown,
            sessions,
            seed,
            faults,
            uniform_status,
            min_dwell,
            max_dwell,
        } => {
            let faults =
                FaultSpec::parse(&faults).map_err(|message| Failure::new(EXIT_REJECTED, anyhow::anyhow!(message)))?;
            let uniform_status = uniform_status.map(|status| CartStatus::parse(&status));
            let settings = SimulatorSettings {
                seed,
                carts,
                unknown_carts: unknown,
                titelive_sessions: sessions,
                latency: std::time::Duration::from_millis(latency),
                faults,
                uniform_status,
                min_dwell,
                max_dwell,
                ..SimulatorSettings::default()
            };
            simulate(settings, listen).await
        }
        Command::Bench { scenario, scale } => {
            let scenarios = crate::bench::scenarios(&scenario)
                .map_err(|message| Failure::new(EXIT_REJECTED, anyhow::anyhow!(message)))?;
            crate::bench::run(&scenarios, scale).await.map_err(Failure::from)
        }
        Command::Demo { provider, carts, seed } => {
            let provider = Provider::parse(&provider).ok_or_else(|| {
                Failure::new(
                    EXIT_REJECTED,
                    anyhow::anyhow!("unknown provider {provider:?}; use imaterialise or titelive"),
                )
            })?;
            crate::demo::run(provider, carts, seed).await.map_err(Failure::from)
        }
    }
}

/// Loads the config the way every command does: embedded defaults, the file, then
/// `CARTWATCH__*` environment variables.
pub fn load_config(path: Option<&Path>, purpose: Purpose) -> Result<Loaded, ConfigError> {
    let explicit = path.is_some();
    let path = path.unwrap_or(Path::new(config::DEFAULT_PATH));
    let environment: HashMap<String, String> = std::env::vars().collect();
    config::load(path, explicit, environment, purpose)
}

fn loaded(path: Option<&Path>, purpose: Purpose) -> Result<Loaded, Failure> {
    load_config(path, purpose).map_err(|error| Failure::new(EXIT_CONFIG, error))
}

async fn open_store(config: &Config) -> Result<Store, Failure> {
    daemon::open_store(config).await.map_err(|error| Failure::new(EXIT_DATABASE, error))
}

/// Opens the database for a command that reads or changes what is in it: it must exist.
async fn open_existing_store(config: &Config) -> Result<Store, Failure> {
    daemon::open_existing_store(config).await.map_err(|error| Failure::new(EXIT_DATABASE, error))
}

async fn run(config_path: Option<PathBuf>) -> Result<(), Failure> {
    let loaded = loaded(config_path.as_deref(), Purpose::Upstream)?;
    crate::logging::init(&loaded.config.logging);
    log_loaded(&loaded);
    let shutdown = CancellationToken::new();
    let (reload_sender, reloads) = mpsc::unbounded_channel();
    let systemd = Arc::new(Systemd::from_environment());
    spawn_signal_handlers(shutdown.clone(), reload_sender, config_path, Arc::clone(&systemd))
        .context("while installing signal handlers")?;
    daemon::run(loaded.config, reloads, systemd.hooks(), shutdown).await.map_err(|error| match error {
        daemon::DaemonError::Store(_) => Failure::new(EXIT_DATABASE, error),
        other => Failure::new(EXIT_FAILURE, other),
    })
}

fn log_loaded(loaded: &Loaded) {
    match &loaded.file {
        Some(file) => tracing::info!(file = %file.display(), "configuration loaded"),
        None => tracing::info!("no config file; using built-in defaults and the environment"),
    }
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
}

/// SIGTERM and SIGINT cancel `shutdown` (a second one exits at once); SIGHUP tells systemd a
/// reload began, reloads the config and sends it on (the daemon reports READY=1 once it is
/// applied). Nothing here waits on the daemon, so a signal is always heard.
fn spawn_signal_handlers(
    shutdown: CancellationToken,
    reloads: mpsc::UnboundedSender<Config>,
    config_path: Option<PathBuf>,
    systemd: Arc<Systemd>,
) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP received: reloading the configuration");
                    systemd.reloading();
                    match load_config(config_path.as_deref(), Purpose::Upstream) {
                        Ok(loaded) => {
                            log_loaded(&loaded);
                            let _ = reloads.send(loaded.config);
                        }
                        Err(error) => {
                            tracing::error!("SIGHUP: the new config is not usable, keeping the old one: {error}");
                            systemd.ready();
                        }
                    }
                    continue;
                }
            };
            if shutdown.is_cancelled() {
                tracing::warn!("{name} received again: exiting at once");
                std::process::exit(i32::from(EXIT_FAILURE));
            }
            tracing::info!("{name} received: shutting down");
            shutdown.cancel();
        }
    });
    Ok(())
}

async fn poll_once(config_path: Option<PathBuf>, all: bool) -> Result<(), Failure> {
    let loaded = loaded(config_path.as_deref(), Purpose::Upstream)?;
    crate::logging::init(&loaded.config.logging);
    log_loaded(&loaded);
    if all {
        let store = open_store(&loaded.config).await?;
        let due = store.make_all_due(Utc::now()).await.map_err(|error| Failure::new(EXIT_DATABASE, error))?;
        let _ = writeln!(std::io::stderr(), "{due} tracked cart(s) made due");
    }
    let outcome = daemon::poll_once(loaded.config, CancellationToken::new()).await.map_err(|error| match error {
        daemon::DaemonError::Store(_) => Failure::new(EXIT_DATABASE, error),
        other => Failure::new(EXIT_FAILURE, other),
    })?;
    let record = &outcome.sweep.record;
    let _ = writeln!(
        std::io::stderr(),
        "polled {} cart(s) in {} request(s): {} failed, {} status change(s), {} event(s); \
         {} of {} deliveries made{}",
        record.carts_polled,
        record.requests,
        record.failures,
        record.transitions,
        record.events,
        outcome.deliveries.delivered,
        outcome.deliveries.attempted,
        record.stopped_early.as_deref().map(|reason| format!("; stopped early: {reason}")).unwrap_or_default()
    );
    poll_once_status(&outcome)
}

/// The exit status of `poll-once`, which cron users rely on: 4 when the database failed, 6
/// when a request to the partner failed or a paused partner was not asked at all.
fn poll_once_status(outcome: &daemon::PollOnce) -> Result<(), Failure> {
    let record = &outcome.sweep.record;
    if let Some(failure) = &outcome.sweep.failure {
        return Err(Failure::new(EXIT_DATABASE, anyhow::anyhow!("the sweep could not use the database: {failure}")));
    }
    if record.failures > 0 {
        return Err(Failure::new(
            EXIT_UPSTREAM,
            anyhow::anyhow!("{} request(s) to the partner failed; the carts concerned stay due", record.failures),
        ));
    }
    if let Some(reason) = record.stopped_early.as_deref().filter(|reason| reason.contains("paused")) {
        return Err(Failure::new(EXIT_UPSTREAM, anyhow::anyhow!("the partner was not asked: {reason}")));
    }
    Ok(())
}

/// Reads cart ids (and optional references) from arguments and an optional file; every
/// malformed id is reported, with its line for files.
fn collect_track_requests(
    provider: Provider,
    account: &str,
    cart_ids: &[String],
    reference: Option<&str>,
    lines: Option<Vec<(usize, String)>>,
) -> Result<Vec<TrackRequest>, Vec<String>> {
    let mut requests = Vec::new();
    let mut problems = Vec::new();
    let request = |text: &str, reference: Option<&str>| {
        TrackRequest::parse(provider, text, account, reference.map(str::to_owned))
    };
    for text in cart_ids {
        match request(text, reference) {
            Ok(request) => requests.push(request),
            Err(error) => problems.push(error),
        }
    }
    for (number, line) in lines.unwrap_or_default() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let (id, own_reference) = match line.split_once([',', '\t']) {
            Some((id, own)) => (id.trim(), Some(own.trim()).filter(|text| !text.is_empty())),
            None => (line, None),
        };
        match request(id, own_reference.or(reference)) {
            Ok(request) => requests.push(request),
            Err(error) => problems.push(format!("line {number}: {error}")),
        }
    }
    if problems.is_empty() { Ok(requests) } else { Err(problems) }
}

fn read_lines(file: &Path) -> anyhow::Result<Vec<(usize, String)>> {
    let reader: Box<dyn BufRead> = if file == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(file).with_context(|| format!("while opening {}", file.display()))?,
        ))
    };
    reader
        .lines()
        .enumerate()
        .map(|(index, line)| Ok((index + 1, line.with_context(|| format!("while reading {}", file.display()))?)))
        .collect()
}

async fn track(
    config_path: Option<PathBuf>,
    cart_ids: Vec<String>,
    provider: String,
    domain: Option<String>,
    reference: Option<String>,
    file: Option<PathBuf>,
) -> Result<(), Failure> {
    let provider = Provider::parse(&provider).ok_or_else(|| {
        Failure::new(EXIT_REJECTED, anyhow::anyhow!("unknown provider {provider:?}; use imaterialise or titelive"))
    })?;
    if cart_ids.is_empty() && file.is_none() {
        return Err(Failure::new(
            EXIT_REJECTED,
            anyhow::anyhow!("give cart ids as arguments or --file FILE (use - for standard input)"),
        ));
    }
    let loaded = loaded(config_path.as_deref(), Purpose::Database)?;
    let account = match provider {
        Provider::Imaterialise => String::new(),
        Provider::Titelive => {
            let domain = domain.unwrap_or_else(|| loaded.config.titelive.default_domain.clone());
            if domain.is_empty() {
                return Err(Failure::new(
                    EXIT_REJECTED,
                    anyhow::anyhow!("Titelive carts need the shop's domain code: --domain CODE"),
                ));
            }
            check_domain(&domain).map_err(|message| Failure::new(EXIT_REJECTED, anyhow::anyhow!(message)))?
        }
    };
    let lines = file.as_deref().map(read_lines).transpose()?;
    let requests =
        collect_track_requests(provider, &account, &cart_ids, reference.as_deref(), lines).map_err(|problems| {
            Failure::new(EXIT_REJECTED, anyhow::anyhow!("nothing was registered:\n  {}", problems.join("\n  ")))
        })?;
    let store = open_store(&loaded.config).await?;
    let outcomes = store.track(requests, Utc::now()).await.map_err(|error| Failure::new(EXIT_DATABASE, error))?;
    let mut added = 0;
    for (cart_id, outcome) in &outcomes {
        match outcome {
            TrackOutcome::Added => added += 1,
            TrackOutcome::AlreadyTracked => crate::say!("{cart_id}: already tracked"),
            TrackOutcome::Resumed(state) => {
                crate::say!("{cart_id}: tracking resumed (it was {state}); it is polled again from now")
            }
            TrackOutcome::Finished(state) => {
                crate::say!("{cart_id}: not tracked again, its state is {state}")
            }
        }
    }
    crate::say!("{added} cart(s) added, {} given", outcomes.len());
    Ok(())
}

async fn untrack(config_path: Option<PathBuf>, cart_ids: Vec<String>) -> Result<(), Failure> {
    let parsed: Result<Vec<String>, _> = cart_ids.iter().map(|text| canonical_any(text)).collect();
    let parsed =
        parsed.map_err(|error| Failure::new(EXIT_REJECTED, anyhow::anyhow!("{error}; nothing was changed")))?;
    let loaded = loaded(config_path.as_deref(), Purpose::Database)?;
    let store = open_existing_store(&loaded.config).await?;
    let outcomes = store.untrack(parsed, Utc::now()).await.map_err(|error| Failure::new(EXIT_DATABASE, error))?;
    let mut unknown = 0;
    for (cart_id, outcome) in outcomes {
        match outcome {
            UntrackOutcome::Untracked => crate::say!("{cart_id}: untracked"),
            UntrackOutcome::NotTracking(state) => {
                crate::say!("{cart_id}: was not being tracked (state {state})")
            }
            UntrackOutcome::Unknown => {
                unknown += 1;
                crate::say!("{cart_id}: unknown cart");
            }
        }
    }
    if unknown > 0 {
        return Err(Failure::new(EXIT_REJECTED, anyhow::anyhow!("{unknown} cart id(s) are not in the database")));
    }
    Ok(())
}

async fn status(config_path: Option<PathBuf>, cart_id: Option<String>) -> Result<(), Failure> {
    let loaded = loaded(config_path.as_deref(), Purpose::Database)?;
    let store = open_existing_store(&loaded.config).await?;
    let database = |error| Failure::new(EXIT_DATABASE, error);
    match cart_id {
        Some(text) => {
            let cart_id = canonical_any(&text).map_err(|error| Failure::new(EXIT_REJECTED, anyhow::anyhow!(error)))?;
            let detail = store.cart_detail(cart_id.clone()).await.map_err(database)?;
            let detail = detail
                .ok_or_else(|| Failure::new(EXIT_REJECTED, anyhow::anyhow!("cart {cart_id} is not in the database")))?;
            crate::say_raw!("{}", crate::render::render_cart_detail(&detail));
        }
        None => {
            let summary = store.summary(Utc::now()).await.map_err(database)?;
            crate::say_raw!("{}", crate::render::render_summary(&summary));
        }
    }
    Ok(())
}

async fn events(config_path: Option<PathBuf>, after: i64, limit: u32, follow: bool, json: bool) -> Result<(), Failure> {
    let loaded = loaded(config_path.as_deref(), Purpose::Database)?;
    let store = open_existing_store(&loaded.config).await?;
    let database = |error| Failure::new(EXIT_DATABASE, error);
    let mut cursor = after;
    loop {
        let events = store.events_after(cursor, limit).await.map_err(database)?;
        let seqs = events.iter().map(|event| event.seq).collect();
        let states = store.delivery_states(seqs).await.map_err(database)?;
        let mut out = std::io::stdout().lock();
        for event in &events {
            let deliveries: Vec<&crate::store::DeliveryState> =
                states.iter().filter(|(seq, _)| *seq == event.seq).map(|(_, state)| state).collect();
            let line = if json {
                crate::render::event_json_with_deliveries(event, &deliveries)
            } else {
                crate::render::render_event_row(event, &deliveries)
            };
            if std::io::Write::write_all(&mut out, format!("{line}\n").as_bytes()).is_err() {
                // The reader went away (a closed pipe): nothing more to do.
                return Ok(());
            }
            cursor = event.seq;
        }
        let _ = std::io::Write::flush(&mut out);
        drop(out);
        if !follow {
            return Ok(());
        }
        if events.len() < limit as usize {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
}

async fn dead_letters(config_path: Option<PathBuf>, endpoint: Option<String>, limit: u32) -> Result<(), Failure> {
    let loaded = loaded(config_path.as_deref(), Purpose::Database)?;
    let store = open_existing_store(&loaded.config).await?;
    check_endpoint(&store, endpoint.as_deref()).await?;
    let letters = store.dead_letters(endpoint, limit).await.map_err(|error| Failure::new(EXIT_DATABASE, error))?;
    if letters.is_empty() {
        crate::say!("no dead letters");
    }
    for letter in &letters {
        crate::say!("{}", crate::render::render_dead_letter(letter));
    }
    Ok(())
}

async fn check_endpoint(store: &Store, endpoint: Option<&str>) -> Result<(), Failure> {
    let Some(endpoint) = endpoint else { return Ok(()) };
    let names = store.sink_names().await.map_err(|error| Failure::new(EXIT_DATABASE, error))?;
    if names.iter().any(|name| name == endpoint) {
        return Ok(());
    }
    Err(Failure::new(
        EXIT_REJECTED,
        anyhow::anyhow!("no endpoint named {endpoint:?}; known endpoints: {}", names.join(", ")),
    ))
}

async fn redeliver(
    config_path: Option<PathBuf>,
    event_ids: Vec<String>,
    dead: bool,
    endpoint: Option<String>,
) -> Result<(), Failure> {
    if event_ids.is_empty() && !dead {
        return Err(Failure::new(EXIT_REJECTED, anyhow::anyhow!("give event ids, or --dead for every dead letter")));
    }
    let loaded = loaded(config_path.as_deref(), Purpose::Database)?;
    let store = open_existing_store(&loaded.config).await?;
    check_endpoint(&store, endpoint.as_deref()).await?;
    let (queued, unknown) = store
        .redeliver(event_ids, dead, endpoint, Utc::now())
        .await
        .map_err(|error| Failure::new(EXIT_DATABASE, error))?;
    crate::say!("{queued} deliver(ies) queued; a running daemon sends them within a second");
    if !unknown.is_empty() {
        return Err(Failure::new(EXIT_REJECTED, anyhow::anyhow!("unknown event id(s): {}", unknown.join(", "))));
    }
    Ok(())
}

async fn skip(
    config_path: Option<PathBuf>,
    event_ids: Vec<String>,
    dead: bool,
    endpoint: Option<String>,
) -> Result<(), Failure> {
    if event_ids.is_empty() && !dead {
        return Err(Failure::new(EXIT_REJECTED, anyhow::anyhow!("give event ids, or --dead for every dead letter")));
    }
    let loaded = loaded(config_path.as_deref(), Purpose::Database)?;
    let store = open_existing_store(&loaded.config).await?;
    check_endpoint(&store, endpoint.as_deref()).await?;
    let (skipped, unknown) = store
        .skip_dead(event_ids, dead, endpoint, Utc::now())
        .await
        .map_err(|error| Failure::new(EXIT_DATABASE, error))?;
    crate::say!("{skipped} dead letter(s) skipped; the later events of their carts go out now");
    if !unknown.is_empty() {
        return Err(Failure::new(EXIT_REJECTED, anyhow::anyhow!("unknown event id(s): {}", unknown.join(", "))));
    }
    Ok(())
}

async fn list_webhooks(config_path: Option<PathBuf>) -> Result<(), Failure> {
    let loaded = loaded(config_path.as_deref(), Purpose::Database)?;
    let store = open_existing_store(&loaded.config).await?;
    let summary = store.summary(Utc::now()).await.map_err(|error| Failure::new(EXIT_DATABASE, error))?;
    let webhooks: Vec<_> = summary.sinks.iter().filter(|sink| sink.sink != crate::sinks::LOG_SINK).collect();
    if webhooks.is_empty() {
        crate::say!("no webhook endpoints configured");
    }
    for sink in webhooks {
        crate::say!("{}", crate::render::render_sink_line(sink));
    }
    Ok(())
}

async fn enable_webhook(config_path: Option<PathBuf>, name: String) -> Result<(), Failure> {
    let loaded = loaded(config_path.as_deref(), Purpose::Database)?;
    let store = open_existing_store(&loaded.config).await?;
    match store.enable_sink(name.clone(), Utc::now()).await.map_err(|error| Failure::new(EXIT_DATABASE, error))? {
        Some(true) => crate::say!("{name}: enabled; a running daemon sends what was queued for it within a second"),
        Some(false) => crate::say!("{name}: was not disabled"),
        None => {
            check_endpoint(&store, Some(&name)).await?;
        }
    }
    Ok(())
}

async fn change_items(
    config_path: Option<PathBuf>,
    action: ItemAction,
    cart_id: String,
    item_ids: Vec<String>,
    force: bool,
) -> Result<(), Failure> {
    let loaded = loaded(config_path.as_deref(), Purpose::Upstream)?;
    crate::logging::init(&loaded.config.logging);
    let store = open_store(&loaded.config).await?;
    let service =
        ItemsService::new(store, Arc::new(loaded.config)).map_err(|error| Failure::new(EXIT_UPSTREAM, error))?;
    let outcome = service.change(action, &cart_id, &item_ids, force).await.map_err(|error| {
        let code = match &error {
            ChangeError::Malformed(_) => EXIT_REJECTED,
            ChangeError::Refused(_) => EXIT_REFUSED,
            ChangeError::Rejected(_) => EXIT_PARTNER_REFUSED,
            ChangeError::Upstream(_) => EXIT_UPSTREAM,
            ChangeError::Store(_) => EXIT_DATABASE,
        };
        Failure::new(code, error)
    })?;
    let verb = match action {
        ItemAction::Add => "added to",
        ItemAction::Remove => "removed from",
    };
    if outcome.refreshed {
        crate::say!("(the cart's status was refreshed first)");
    }
    for item in &outcome.items {
        crate::say!("{}", crate::render::render_cart_item(item));
    }
    for refusal in &outcome.refused {
        crate::say!("refused: {refusal}");
    }
    crate::say!(
        "{} item(s) {verb} cart {}; the cart must be re-opened in the shop's UI",
        outcome.items.len(),
        cart_id.trim().to_ascii_lowercase()
    );
    if let Some(event_id) = outcome.event_id {
        crate::say!("event {event_id} (cart.items_changed) written");
    }
    Ok(())
}

async fn list_items(config_path: Option<PathBuf>, cart_id: String) -> Result<(), Failure> {
    let cart_id = CartId::parse(&cart_id).map_err(|error| Failure::new(EXIT_REJECTED, error))?;
    let loaded = loaded(config_path.as_deref(), Purpose::Database)?;
    let store = open_existing_store(&loaded.config).await?;
    let changes = store.item_history(cart_id.to_string()).await.map_err(|error| Failure::new(EXIT_DATABASE, error))?;
    if changes.is_empty() {
        crate::say!("no item changes recorded for cart {cart_id}");
    }
    for change in &changes {
        crate::say!("{}", crate::render::render_item_change(change));
    }
    Ok(())
}

async fn simulate(settings: SimulatorSettings, listen: std::net::SocketAddr) -> Result<(), Failure> {
    crate::logging::init(&crate::config::LoggingConfig {
        level: "warn".into(),
        format: crate::config::LogFormat::Auto,
    });
    let simulator = Simulator::start(settings, listen)
        .await
        .map_err(|error| Failure::new(EXIT_FAILURE, anyhow::anyhow!("cannot listen on {listen}: {error}")))?;
    // The first line is for programs that start the simulator and need its address.
    crate::say!("{}", simulator.base_url());
    crate::say!("apiCode {DEMO_API_CODE}; Titelive domain 00000; see {}/_sim/stats", simulator.base_url());
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("while installing signal handlers")?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    simulator.stop().await;
    Ok(())
}

async fn confirm(config_path: Option<PathBuf>, token: String, domain: Option<String>) -> Result<(), Failure> {
    let loaded = loaded(config_path.as_deref(), Purpose::Database)?;
    crate::logging::init(&loaded.config.logging);
    let store = open_store(&loaded.config).await?;
    let service =
        ConfirmService::new(store, Arc::new(loaded.config)).map_err(|error| Failure::new(EXIT_UPSTREAM, error))?;
    let (cart_id, order) = service.confirm(&token, domain.as_deref()).await.map_err(|error| {
        let code = match &error {
            ConfirmError::Malformed(_) => EXIT_REJECTED,
            ConfirmError::Refused(_) => EXIT_PARTNER_REFUSED,
            ConfirmError::Upstream(_) => EXIT_UPSTREAM,
            ConfirmError::Store(_) => EXIT_DATABASE,
        };
        Failure::new(code, error)
    })?;
    crate::say!(
        "cart {cart_id}: order {} created (status {}, total {}); cart.ordered written",
        order.id.as_deref().unwrap_or("?"),
        order.status.map_or("?".to_owned(), |status| status.to_string()),
        order.total_price.map_or("?".to_owned(), |total| total.to_string()),
    );
    Ok(())
}

fn check_config(config_path: Option<PathBuf>) -> Result<(), Failure> {
    let loaded = loaded(config_path.as_deref(), Purpose::Upstream)?;
    match &loaded.file {
        Some(file) => crate::say!("# config file: {}", file.display()),
        None => crate::say!("# no config file; built-in defaults and the environment"),
    }
    for warning in &loaded.warnings {
        crate::say!("# warning: {warning}");
    }
    crate::say!("# the config is valid\n");
    crate::say_raw!("{}", loaded.config.to_redacted_toml());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_line_names_each_cause_once() {
        let path = std::path::Path::new("/nonexistent/dir/cartwatch.db");
        let error = anyhow::Error::new(crate::store::Store::open(path, std::time::Duration::from_secs(1)).unwrap_err())
            .context("cannot show the status");
        let line = describe(&error);
        assert!(line.starts_with("cannot show the status: cannot open the database"), "{line}");
        assert_eq!(line.matches("/nonexistent/dir/cartwatch.db").count(), 2, "{line}");
        let plain = anyhow::anyhow!("disk full").context("writing the batch");
        assert_eq!(describe(&plain), "writing the batch: disk full");
    }

    #[test]
    fn track_requests_from_arguments_and_lines() {
        let lines = vec![
            (1, "# carts from the shop".to_owned()),
            (2, "BEE2C269-1DBD-4F67-B9F1-2EA2D3B4917B,order-9".to_owned()),
            (3, "   ".to_owned()),
            (4, "59dcca18-05e7-4f5c-8b4e-89e987ea1e51  # trailing comment".to_owned()),
        ];
        let arguments = ["921A2046-66A5-4C5F-B9A6-4BC646FA5E5A".to_owned()];
        let requests =
            collect_track_requests(Provider::Imaterialise, "", &arguments, Some("batch-1"), Some(lines)).unwrap();
        assert_eq!(requests.len(), 3);
        assert_eq!(requests[0].cart_id.as_str(), "921a2046-66a5-4c5f-b9a6-4bc646fa5e5a");
        assert_eq!(requests[1].reference.as_deref(), Some("order-9"));
        assert_eq!(requests[2].reference.as_deref(), Some("batch-1"));
    }

    #[test]
    fn every_malformed_id_is_reported_with_its_line() {
        let lines = Some(vec![(7, "12345".to_owned())]);
        let problems =
            collect_track_requests(Provider::Imaterialise, "", &["nope".to_owned()], None, lines).unwrap_err();
        assert_eq!(problems.len(), 2);
        assert!(problems[0].contains("\"nope\""));
        assert!(problems[1].starts_with("line 7: malformed cart id \"12345\""));
    }

    #[test]
    fn titelive_tokens_keep_their_case_and_carry_the_domain() {
        let token = "AbCdEfGhIjKlMnOpQrStUvWxYz".to_owned();
        let requests =
            collect_track_requests(Provider::Titelive, "00000", std::slice::from_ref(&token), None, None).unwrap();
        assert_eq!(requests[0].session_token.as_deref(), Some(token.as_str()), "the token is kept as typed");
        let derived = crate::provider::titelive::derived_id(&token);
        assert_eq!((requests[0].cart_id.as_str(), requests[0].account.as_str()), (derived.as_str(), "00000"));
        let problems =
            collect_track_requests(Provider::Titelive, "00000", &["short".to_owned()], None, None).unwrap_err();
        assert!(problems[0].contains("malformed Titelive session token"));
    }

    #[test]
    fn config_flag_is_global() {
        let cli = Cli::try_parse_from(["cartwatch", "status", "--config", "/tmp/x.toml"]).unwrap();
        assert_eq!(cli.config.as_deref(), Some(Path::new("/tmp/x.toml")));
        let cli = Cli::try_parse_from(["cartwatch", "--config", "/tmp/y.toml", "run"]).unwrap();
        assert_eq!(cli.config.as_deref(), Some(Path::new("/tmp/y.toml")));
    }
}
