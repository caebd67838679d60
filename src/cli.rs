//! The command line: every subcommand, its help text, and its exit codes.
//!
//! Exit codes (also in the README):
//! 0 success; 1 unexpected failure; 2 bad command line; 3 invalid config;
//! 4 database unavailable; 5 input rejected (malformed or unknown ids); 6 the partner could
//! not be reached; 7 refused locally by the guard; 8 refused by the partner.

use std::collections::HashMap;
use std::io::BufRead;
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
        /// At most this many events.
        #[arg(long, value_name = "N", default_value_t = 100)]
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
        /// Faults to inject, e.g. `401:0.05,code1:0.05,5xx:0.05,timeout:0.01,malformed:0.05`.
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
        /// At most this many.
        #[arg(long, value_name = "N", default_value_t = 100)]
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
}

/// A failed command: what to print and which exit code to use.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub code: u8,
    /// The error, with context.
    pub error: anyhow::Error,
}

impl Failure {
    fn new(code: u8, error: impl Into<anyhow::Error>) -> Failure {
        Failure { code, error: error.into() }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Failure {
        Failure { code: EXIT_FAILURE, error }
    }
}

/// Runs a parsed command line and returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", describe(&failure.error));
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

async fn run(config_path: Option<PathBuf>) -> Result<(), Failure> {
    let loaded = loaded(config_path.as_deref(), Purpose::Upstream)?;
    crate::logging::init(&loaded.config.logging);
    log_loaded(&loaded);
    let shutdown = CancellationToken::new();
    let (reload_sender, reloads) = mpsc::channel(1);
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

/// SIGTERM and SIGINT cancel `shutdown`; SIGHUP tells systemd a reload began, reloads the
/// config and sends it on (the daemon reports READY=1 once it is applied).
fn spawn_signal_handlers(
    shutdown: CancellationToken,
    reloads: mpsc::Sender<Config>,
    config_path: Option<PathBuf>,
    systemd: Arc<Systemd>,
) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = terminate.recv() => { tracing::info!("SIGTERM received"); shutdown.cancel(); return; }
                _ = interrupt.recv() => { tracing::info!("SIGINT received"); shutdown.cancel(); return; }
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP received: reloading the configuration");
                    systemd.reloading();
                    match load_config(config_path.as_deref(), Purpose::Upstream) {
                        Ok(loaded) => {
                            log_loaded(&loaded);
                            let _ = reloads.send(loaded.config).await;
                        }
                        Err(error) => {
                            tracing::error!("SIGHUP: the new config is not usable, keeping the old one: {error}");
                            systemd.ready();
                        }
                    }
                }
            }
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
        eprintln!("{due} tracked cart(s) made due");
    }
    let record = daemon::poll_once(loaded.config, CancellationToken::new()).await.map_err(|error| match error {
        daemon::DaemonError::Store(_) => Failure::new(EXIT_DATABASE, error),
        other => Failure::new(EXIT_FAILURE, other),
    })?;
    eprintln!(
        "polled {} cart(s) in {} request(s): {} failed, {} status change(s), {} event(s){}",
        record.carts_polled,
        record.requests,
        record.failures,
        record.transitions,
        record.events,
        record.stopped_early.map(|reason| format!("; stopped early: {reason}")).unwrap_or_default()
    );
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
    let request = |cart_id: String, reference: Option<&str>| TrackRequest {
        provider,
        cart_id,
        account: account.to_owned(),
        reference: reference.map(str::to_owned),
    };
    for text in cart_ids {
        match provider.canonical_cart_id(text) {
            Ok(cart_id) => requests.push(request(cart_id, reference)),
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
        match provider.canonical_cart_id(id) {
            Ok(cart_id) => requests.push(request(cart_id, own_reference.or(reference))),
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
            TrackOutcome::AlreadyTracked => println!("{cart_id}: already tracked"),
            TrackOutcome::Resumed => println!("{cart_id}: tracking resumed"),
            TrackOutcome::Finished(state) => {
                println!("{cart_id}: not tracked again, its state is {state}")
            }
        }
    }
    println!("{added} cart(s) added, {} given", outcomes.len());
    Ok(())
}

async fn untrack(config_path: Option<PathBuf>, cart_ids: Vec<String>) -> Result<(), Failure> {
    let parsed: Result<Vec<String>, _> = cart_ids.iter().map(|text| canonical_any(text)).collect();
    let parsed =
        parsed.map_err(|error| Failure::new(EXIT_REJECTED, anyhow::anyhow!("{error}; nothing was changed")))?;
    let loaded = loaded(config_path.as_deref(), Purpose::Database)?;
    let store = open_store(&loaded.config).await?;
    let outcomes = store.untrack(parsed, Utc::now()).await.map_err(|error| Failure::new(EXIT_DATABASE, error))?;
    let mut unknown = 0;
    for (cart_id, outcome) in outcomes {
        match outcome {
            UntrackOutcome::Untracked => println!("{cart_id}: untracked"),
            UntrackOutcome::NotTracking(state) => {
                println!("{cart_id}: was not being tracked (state {state})")
            }
            UntrackOutcome::Unknown => {
                unknown += 1;
                println!("{cart_id}: unknown cart");
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
    let store = open_store(&loaded.config).await?;
    let database = |error| Failure::new(EXIT_DATABASE, error);
    match cart_id {
        Some(text) => {
            let cart_id = canonical_any(&text).map_err(|error| Failure::new(EXIT_REJECTED, anyhow::anyhow!(error)))?;
            let detail = store.cart_detail(cart_id.clone()).await.map_err(database)?;
            let detail = detail
                .ok_or_else(|| Failure::new(EXIT_REJECTED, anyhow::anyhow!("cart {cart_id} is not in the database")))?;
            print!("{}", crate::render::render_cart_detail(&detail));
        }
        None => {
            let summary = store.summary(Utc::now()).await.map_err(database)?;
            print!("{}", crate::render::render_summary(&summary));
        }
    }
    Ok(())
}

async fn events(config_path: Option<PathBuf>, after: i64, limit: u32, follow: bool, json: bool) -> Result<(), Failure> {
    let loaded = loaded(config_path.as_deref(), Purpose::Database)?;
    let store = open_store(&loaded.config).await?;
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
    let store = open_store(&loaded.config).await?;
    check_endpoint(&store, endpoint.as_deref()).await?;
    let letters = store.dead_letters(endpoint, limit).await.map_err(|error| Failure::new(EXIT_DATABASE, error))?;
    if letters.is_empty() {
        println!("no dead letters");
    }
    for letter in &letters {
        println!("{}", crate::render::render_dead_letter(letter));
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
    let store = open_store(&loaded.config).await?;
    check_endpoint(&store, endpoint.as_deref()).await?;
    let (queued, unknown) = store
        .redeliver(event_ids, dead, endpoint, Utc::now())
        .await
        .map_err(|error| Failure::new(EXIT_DATABASE, error))?;
    println!("{queued} deliver(ies) queued; a running daemon sends them within a second");
    if !unknown.is_empty() {
        return Err(Failure::new(EXIT_REJECTED, anyhow::anyhow!("unknown event id(s): {}", unknown.join(", "))));
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
        println!("(the cart's status was refreshed first)");
    }
    for item in &outcome.items {
        println!("{}", crate::render::render_cart_item(item));
    }
    for refusal in &outcome.refused {
        println!("refused: {refusal}");
    }
    println!(
        "{} item(s) {verb} cart {}; the cart must be re-opened in the shop's UI",
        outcome.items.len(),
        cart_id.trim().to_ascii_lowercase()
    );
    if let Some(event_id) = outcome.event_id {
        println!("event {event_id} (cart.items_changed) written");
    }
    Ok(())
}

async fn list_items(config_path: Option<PathBuf>, cart_id: String) -> Result<(), Failure> {
    let cart_id = CartId::parse(&cart_id).map_err(|error| Failure::new(EXIT_REJECTED, error))?;
    let loaded = loaded(config_path.as_deref(), Purpose::Database)?;
    let store = open_store(&loaded.config).await?;
    let changes = store.item_history(cart_id.to_string()).await.map_err(|error| Failure::new(EXIT_DATABASE, error))?;
    if changes.is_empty() {
        println!("no item changes recorded for cart {cart_id}");
    }
    for change in &changes {
        println!("{}", crate::render::render_item_change(change));
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
    println!("{}", simulator.base_url());
    println!("apiCode {DEMO_API_CODE}; Titelive domain 00000; see {}/_sim/stats", simulator.base_url());
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
    let order = service.confirm(&token, domain.as_deref()).await.map_err(|error| {
        let code = match &error {
            ConfirmError::Malformed(_) => EXIT_REJECTED,
            ConfirmError::Refused(_) => EXIT_PARTNER_REFUSED,
            ConfirmError::Upstream(_) => EXIT_UPSTREAM,
            ConfirmError::Store(_) => EXIT_DATABASE,
        };
        Failure::new(code, error)
    })?;
    println!(
        "order {} created (status {}, total {}); cart.ordered written",
        order.id.as_deref().unwrap_or("?"),
        order.status.map_or("?".to_owned(), |status| status.to_string()),
        order.total_price.map_or("?".to_owned(), |total| total.to_string()),
    );
    Ok(())
}

fn check_config(config_path: Option<PathBuf>) -> Result<(), Failure> {
    let loaded = loaded(config_path.as_deref(), Purpose::Upstream)?;
    match &loaded.file {
        Some(file) => println!("# config file: {}", file.display()),
        None => println!("# no config file; built-in defaults and the environment"),
    }
    for warning in &loaded.warnings {
        println!("# warning: {warning}");
    }
    println!("# the config is valid\n");
    print!("{}", loaded.config.to_redacted_toml());
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
        assert_eq!((requests[0].cart_id.as_str(), requests[0].account.as_str()), (token.as_str(), "00000"));
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
