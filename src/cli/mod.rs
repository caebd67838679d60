//! The command line: every subcommand, its help text, and its exit codes.
//!
//! Exit codes (also in the README):
//! 0 success; 1 unexpected failure; 2 bad command line (an unknown argument or a value it
//! cannot take: a scenario, provider, fault or status that does not exist); 3 invalid config;
//! 4 database unavailable; 5 input rejected (malformed or unknown ids); 6 the partner could
//! not be reached; 7 refused locally by the guard; 8 refused by the partner.

mod bench;
mod check_config;
mod confirm;
mod demo;
mod events;
mod items;
pub mod output;
mod plan;
mod run;
mod simulate;
mod status;
mod systemd;
mod track;
mod webhooks;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use cartwatch::config::{self, Config, ConfigError, Loaded, Purpose};
use cartwatch::provider::imaterialise::items::ItemAction;
use cartwatch::store::Store;
use cartwatch_simulator::{FaultSpec, SimulatorSettings, Status};
use clap::{Parser, Subcommand};

/// Exit code: unexpected failure.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code: a bad command line (what clap reports, and argument values it cannot check).
pub const EXIT_USAGE: u8 = 2;
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

/// The exit codes, for `--help`.
const EXIT_CODES_HELP: &str = "Exit codes: 0 success, 1 unexpected failure, 2 bad command line, 3 invalid config, \
4 database unavailable, 5 input rejected (nothing changed), 6 the partner could not be reached, 7 refused \
locally by the guard, 8 refused by the partner.";

/// cartwatch: watch partner carts until they are checked out and ordered.
#[derive(Debug, Parser)]
#[command(name = "cartwatch", version, about, long_about = None, after_help = EXIT_CODES_HELP)]
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
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show the polling plan: its budget, the requests a day it expects and sends, its
    /// estimated p95 detection delay, and each status and age's chance of moving towards an
    /// order with the interval it gets.
    Plan {
        /// One JSON object per provider.
        #[arg(long)]
        json: bool,
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
    CheckConfig {
        /// One JSON object: the file, warnings, problems, and the effective config.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script: `cartwatch completions bash > /etc/bash_completion.d/cartwatch`.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `cartwatch man | man -l -`.
    Man,
    /// Run the built-in partner simulator as its own process, until SIGTERM or Ctrl-C: the
    /// Cart Status and Add/Remove Cart Item APIs, the Titelive cart API, and `/_sim/stats`,
    /// `/_sim/carts`, `/_sim/truth` to see what it did, `/_sim/items` its cart item
    /// catalogue (`POST /_sim/items` adds one).
    Simulate {
        /// Cart items in its catalogue at start, for `cartwatch items add`.
        #[arg(long, value_name = "N", default_value_t = 5)]
        items: usize,
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
    /// Run a benchmark and print its figures as one JSON object per scenario: sweep (with
    /// the floor measured in the same run), floor (alone), scale, deliver, transitions, all
    /// (sweep, scale, deliver, transitions), plan (the polling plans in simulated time, with
    /// plan-curve.svg) or daemons (needs PostgreSQL). Logs go to a temporary file at the
    /// shipped level, as the daemon's would.
    Bench {
        /// The scenario.
        #[arg(value_name = "SCENARIO", default_value = "all")]
        scenario: String,
        /// Scale the number of carts and events by this factor (1.0 is the documented size).
        #[arg(long, value_name = "FACTOR", default_value_t = 1.0)]
        scale: f64,
        /// sweep and floor: the simulated partner's latency per request, in milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=10_000))]
        latency: u64,
        /// sweep: carts tracked in all, the due ones included (the rest are due tomorrow);
        /// default: only the due ones.
        #[arg(long, value_name = "N")]
        tracked: Option<usize>,
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
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
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
        /// One JSON object per line, the event with its delivery.
        #[arg(long)]
        json: bool,
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
        /// Every event written since WHEN, delivered or not: an RFC 3339 time,
        /// "2026-11-26 08:00:00" (UTC), or a duration ago such as "2h".
        #[arg(long, value_name = "WHEN", value_parser = parse_when)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// With --since: only events written before WHEN.
        #[arg(long, value_name = "WHEN", value_parser = parse_when, requires = "since")]
        until: Option<chrono::DateTime<chrono::Utc>>,
        /// With --since: only events of this type (cart.ordered, ...).
        #[arg(long = "type", value_name = "TYPE", value_parser = parse_event_type, requires = "since")]
        event_type: Option<String>,
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
    /// Print a fresh signing secret (`whsec_` and 32 random bytes in base64) for a
    /// `[webhooks.NAME]` secret and its receiver. Reads no config and no database.
    NewSecret,
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
    pub fn new(code: u8, error: impl Into<anyhow::Error>) -> Failure {
        Failure { code, error: error.into(), quiet: false }
    }

    /// A failure already reported on standard output (as JSON): only the exit code is left.
    pub fn quiet(code: u8) -> Failure {
        Failure { code, error: anyhow::anyhow!("reported on standard output"), quiet: true }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Failure {
        match error.downcast::<output::Closed>() {
            Ok(closed) => Failure::from(closed),
            Err(error) => Failure::new(EXIT_FAILURE, error),
        }
    }
}

impl From<output::Closed> for Failure {
    /// A reader that went away ends the command quietly and successfully: it had what it
    /// wanted. Any other write failure is reported.
    fn from(closed: output::Closed) -> Failure {
        let quiet = closed.reader_left();
        Failure { code: if quiet { 0 } else { EXIT_FAILURE }, error: closed.into(), quiet }
    }
}

/// Runs a parsed command line and returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    // One thread for every task: the work is waiting on the network, and the database runs on
    // its own threads (the writer, the blocking pool), so worker threads would only add
    // hand-offs. Measured on the steady sweep (bench sweep, interleaved runs): 323 → 290 µs
    // CPU per request at 20 ms partner latency, 200 → 167 µs at 0 ms (medians of three).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
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
        Command::Run => run::run(config_path).await,
        Command::PollOnce { all } => run::poll_once(config_path, all).await,
        Command::Track { cart_ids, provider, domain, reference, file } => {
            track::track(config_path, cart_ids, provider, domain, reference, file).await
        }
        Command::Confirm { token, domain } => confirm::confirm(config_path, token, domain).await,
        Command::Untrack { cart_ids } => track::untrack(config_path, cart_ids).await,
        Command::Status { cart_id, json } => status::status(config_path, cart_id, json).await,
        Command::Plan { json } => plan::plan(config_path, json).await,
        Command::Events { action: None, after, limit, follow, json } => {
            events::events(config_path, after, limit, follow, json).await
        }
        Command::Events { action: Some(EventsAction::Dead { endpoint, limit, json }), .. } => {
            events::dead_letters(config_path, endpoint, limit, json).await
        }
        Command::Events {
            action: Some(EventsAction::Redeliver { event_ids, dead, endpoint, since, until, event_type }),
            ..
        } => {
            let range = since.map(|since| events::Range { since, until, event_type });
            events::redeliver(config_path, event_ids, dead, endpoint, range).await
        }
        Command::Events { action: Some(EventsAction::Skip { event_ids, dead, endpoint }), .. } => {
            events::skip(config_path, event_ids, dead, endpoint).await
        }
        Command::Webhooks { action: WebhooksCommand::List } => webhooks::list_webhooks(config_path).await,
        Command::Webhooks { action: WebhooksCommand::NewSecret } => {
            crate::say_raw!("{}\n", cartwatch::sinks::webhook::new_secret().expose());
            Ok(())
        }
        Command::Webhooks { action: WebhooksCommand::Enable { name } } => {
            webhooks::enable_webhook(config_path, name).await
        }
        Command::Items { action: ItemsCommand::Add { cart_id, item_ids, force } } => {
            items::change_items(config_path, ItemAction::Add, cart_id, item_ids, force).await
        }
        Command::Items { action: ItemsCommand::Remove { cart_id, item_ids, force } } => {
            items::change_items(config_path, ItemAction::Remove, cart_id, item_ids, force).await
        }
        Command::Items { action: ItemsCommand::List { cart_id, json } } => {
            items::list_items(config_path, cart_id, json).await
        }
        Command::CheckConfig { json } => check_config::check_config(config_path, json).await,
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "cartwatch", &mut script);
            crate::say_raw!("{}", String::from_utf8_lossy(&script));
            Ok(())
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .render(&mut page)
                .map_err(|error| Failure::new(EXIT_FAILURE, anyhow::Error::new(error)))?;
            crate::say_raw!("{}", String::from_utf8_lossy(&page));
            Ok(())
        }
        Command::Simulate {
            items,
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
                FaultSpec::parse(&faults).map_err(|message| Failure::new(EXIT_USAGE, anyhow::anyhow!(message)))?;
            let uniform_status = uniform_status
                .map(|status| {
                    Status::parse(&status).ok_or_else(|| {
                        let message =
                            format!("unknown status {status:?}; use NotOrdered, Pending, CheckedOut or Ordered");
                        Failure::new(EXIT_USAGE, anyhow::anyhow!(message))
                    })
                })
                .transpose()?;
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
                items,
                ..SimulatorSettings::default()
            };
            simulate::simulate(settings, listen).await
        }
        Command::Bench { scenario, scale, latency, tracked } => {
            let scenarios =
                bench::scenarios(&scenario).map_err(|message| Failure::new(EXIT_USAGE, anyhow::anyhow!(message)))?;
            let options = bench::Options { scale, latency_ms: latency, tracked };
            bench::run(&scenarios, &options).await.map_err(Failure::from)
        }
        Command::Demo { provider, carts, seed } => {
            let provider = demo::Partner::parse(&provider).ok_or_else(|| {
                Failure::new(EXIT_USAGE, anyhow::anyhow!("unknown provider {provider:?}; use imaterialise or titelive"))
            })?;
            demo::run(provider, carts, seed).await.map_err(Failure::from)
        }
    }
}

/// A time given on the command line: RFC 3339, a UTC date and time, or a duration ago.
fn parse_when(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Some(instant) = cartwatch::time::parse_ts(text) {
        return Ok(instant);
    }
    let ago = humantime::parse_duration(text.trim()).map_err(|_| {
        format!("{text:?} is neither a time (2026-11-26T08:00:00Z, \"2026-11-26 08:00:00\") nor a duration ago (2h)")
    })?;
    Ok(chrono::Utc::now() - cartwatch::time::to_chrono(ago))
}

/// An event type's name, checked.
fn parse_event_type(text: &str) -> Result<String, String> {
    cartwatch::events::EventType::parse(text).map(|event_type| event_type.as_str().to_owned()).ok_or_else(|| {
        let known: Vec<&str> = cartwatch::events::EventType::ALL.iter().map(|event_type| event_type.as_str()).collect();
        format!("unknown event type {text:?}; known: {}", known.join(", "))
    })
}

/// Loads the config the way every command does: embedded defaults, the file, then
/// `CARTWATCH__*` environment variables.
pub fn load_config(path: Option<&Path>, purpose: Purpose) -> Result<Loaded, ConfigError> {
    let explicit = path.is_some();
    let path = path.unwrap_or(Path::new(config::DEFAULT_PATH));
    let environment: HashMap<String, String> = std::env::vars().collect();
    config::load(path, explicit, environment, purpose)
}

/// Loads the config, or fails with the config's exit code.
pub fn loaded(path: Option<&Path>, purpose: Purpose) -> Result<Loaded, Failure> {
    load_config(path, purpose).map_err(|error| Failure::new(EXIT_CONFIG, error))
}

/// Opens the database, creating it if needed.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, Failure> {
    cartwatch::store::open(&config.database, true).await.map_err(|error| Failure::new(EXIT_DATABASE, error))
}

/// Opens the database for a command that reads or changes what is in it: it must exist.
pub async fn open_existing_store(config: &Config) -> Result<Arc<dyn Store>, Failure> {
    cartwatch::store::open(&config.database, false).await.map_err(|error| Failure::new(EXIT_DATABASE, error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_line_names_each_cause_once() {
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(directory.path().join("a-file"), "").unwrap();
        let path = directory.path().join("a-file/dir/cartwatch.db");
        let error = cartwatch::store::sqlite::SqliteStore::open(&path, std::time::Duration::from_secs(1)).unwrap_err();
        let error = anyhow::Error::new(error).context("cannot show the status");
        let line = describe(&error);
        assert!(line.starts_with("cannot show the status: cannot open the database"), "{line}");
        assert_eq!(line.matches(&path.display().to_string()).count(), 1, "{line}");
        let plain = anyhow::anyhow!("disk full").context("writing the batch");
        assert_eq!(describe(&plain), "writing the batch: disk full");
    }

    #[test]
    fn config_flag_is_global() {
        let cli = Cli::try_parse_from(["cartwatch", "status", "--config", "/tmp/x.toml"]).unwrap();
        assert_eq!(cli.config.as_deref(), Some(Path::new("/tmp/x.toml")));
        let cli = Cli::try_parse_from(["cartwatch", "--config", "/tmp/y.toml", "run"]).unwrap();
        assert_eq!(cli.config.as_deref(), Some(Path::new("/tmp/y.toml")));
    }
}
