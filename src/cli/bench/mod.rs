//! `cartwatch bench`: the daemon's own cost measured against the physical bound, printed as
//! one JSON object per scenario.
//!
//! The simulator runs as a separate process (`cartwatch simulate`), so the CPU time counted
//! here (this process's, from `getrusage`) is cartwatch's alone. Scenarios:
//!
//! - `sweep`: 100,000 due carts, partner latency 20 ms (`--latency`), concurrency 8, no rate
//!   limit, optionally among more tracked carts due tomorrow (`--tracked`). The bound is
//!   ceil(N/10) × latency / concurrency, with the latency the simulator measured itself.
//!   The same run measures the floor on the same simulator and carts, and prints the ratio.
//! - `floor`: the floor alone ([`floor`]): a minimal client and a minimal writer doing the
//!   steady sweep's requests and writes.
//! - `scale`: 1,000,000 tracked carts, 10,000 due; the real daemon binary's peak RSS and the
//!   time from its start to its first request; the due query's plan.
//! - `deliver`: 100,000 events to a local webhook receiver (signed deliveries per second, per
//!   cart order checked), and through the log sink to a file.
//! - `transitions`: 100,000 carts all changing status in one sweep; every transition and event
//!   committed; time per batch write.
//! - `daemons`: 1, 2 and 3 daemon processes on one PostgreSQL database (a server named by
//!   `CARTWATCH_BENCH_POSTGRES` or `CARTWATCH_TEST_POSTGRES`; each run gets a fresh
//!   database) polling 20,000 carts at 20 ms partner latency and a concurrency of 2 each:
//!   requests per second for each count and the ratio to one; the busiest second the
//!   partner saw under a global limit; the time until a SIGKILLed daemon's carts are polled
//!   by the others.
//!
//! Every scenario runs with the daemon's logging set up at the configured level (`info` as
//! shipped), writing to a temporary file: the figures include what logging costs a user.

mod floor;

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::Utc;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use cartwatch::cart_id::CartId;
use cartwatch::clock::Clock;
use cartwatch::config::{Config, WebhookConfig};
use cartwatch::delivery::{SinkSlot, delivery_loop};
use cartwatch::events::{CartEventData, EventType, NewEvent};
use cartwatch::metrics::Metrics;
use cartwatch::model::TrackRequest;
use cartwatch::provider::imaterialise::Imaterialise;
use cartwatch::secret::Secret;
use cartwatch::sinks::{self, Sink};
use cartwatch::store::sqlite::{SqliteStore, WriterTotals};
use cartwatch::store::{CartStore, OutboxStore, SweepRecord, SweepStore};
use cartwatch::sweep::{Poller, PollerConfig};
use cartwatch_simulator::DEMO_API_CODE;

/// A benchmark scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Polling throughput against the latency bound.
    Sweep,
    /// Memory and start-up at a million carts.
    Scale,
    /// Delivery throughput.
    Deliver,
    /// Transition-heavy sweeps.
    Transitions,
    /// Several daemons sharing PostgreSQL.
    Daemons,
    /// The polling plans in simulated time.
    Plan,
    /// The floor: the minimum the sweep's job costs on this machine.
    Floor,
}

/// The knobs of `cartwatch bench`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Scales the number of carts and events (1.0 is the documented size).
    pub scale: f64,
    /// The simulated partner's latency per request (sweep, floor).
    pub latency_ms: u64,
    /// Carts tracked in all by the sweep, the due ones included.
    pub tracked: Option<usize>,
}

/// Reads a scenario name, or `all`.
///
/// Fails with the list of names for anything else.
pub fn scenarios(name: &str) -> Result<Vec<Scenario>, String> {
    Ok(match name {
        "sweep" => vec![Scenario::Sweep],
        "scale" => vec![Scenario::Scale],
        "deliver" => vec![Scenario::Deliver],
        "transitions" => vec![Scenario::Transitions],
        "daemons" => vec![Scenario::Daemons],
        "plan" => vec![Scenario::Plan],
        "floor" => vec![Scenario::Floor],
        "all" => vec![Scenario::Sweep, Scenario::Scale, Scenario::Deliver, Scenario::Transitions],
        other => {
            return Err(format!(
                "unknown scenario {other:?}; use sweep, floor, scale, deliver, transitions, plan, daemons (needs PostgreSQL) or all"
            ));
        }
    })
}

/// Runs the scenarios in order, printing each one's figures as a JSON line.
///
/// Fails when the simulator cannot start or a scenario's set-up fails.
pub async fn run(scenarios: &[Scenario], options: &Options) -> anyhow::Result<()> {
    let scale = options.scale;
    let scaled = |count: f64| ((count * scale).round() as usize).max(10);
    let logs = BenchLog::start()?;
    for scenario in scenarios {
        let written_before = logs.bytes();
        let mut figures = match scenario {
            Scenario::Sweep => {
                let due = scaled(100_000.0);
                sweep(due, options.tracked.unwrap_or(due).max(due), options.latency_ms).await?
            }
            Scenario::Floor => floor_alone(scaled(100_000.0), options.latency_ms).await?,
            Scenario::Scale => scale_up(scaled(1_000_000.0), scaled(10_000.0), &logs).await?,
            Scenario::Deliver => deliver(scaled(100_000.0)).await?,
            Scenario::Transitions => transitions(scaled(100_000.0)).await?,
            Scenario::Daemons => daemons(scaled(20_000.0)).await?,
            Scenario::Plan => plans(scale).await?,
        };
        figures["log_level"] = json!(logs.level);
        figures["log_bytes"] = json!(logs.bytes().saturating_sub(written_before));
        println!("{figures}");
    }
    Ok(())
}

/// The file the benchmarks log to, at the shipped level, as the daemon would.
struct BenchLog {
    path: std::path::PathBuf,
    level: String,
    _directory: tempfile::TempDir,
}

impl BenchLog {
    fn start() -> anyhow::Result<BenchLog> {
        let directory = tempfile::tempdir()?;
        let path = directory.path().join("cartwatch.log");
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        let logging = Config::default().logging;
        cartwatch::logging::init_to_file(&logging, file.try_clone()?);
        Ok(BenchLog { path, level: logging.level, _directory: directory })
    }

    /// A handle for a child process's standard error, appending to the same file.
    fn for_child(&self) -> anyhow::Result<Stdio> {
        Ok(Stdio::from(std::fs::OpenOptions::new().append(true).open(&self.path)?))
    }

    fn bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map(|metadata| metadata.len()).unwrap_or(0)
    }
}

/// The simulator, as a child process.
struct SimProcess {
    child: tokio::process::Child,
    base_url: String,
    http: reqwest::Client,
}

impl SimProcess {
    async fn start(arguments: &[String]) -> anyhow::Result<SimProcess> {
        let exe = std::env::current_exe().context("while finding the cartwatch binary")?;
        let mut child = tokio::process::Command::new(exe)
            .arg("simulate")
            .args(["--listen", "127.0.0.1:0"])
            .args(arguments)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("while starting the simulator")?;
        let stdout = child.stdout.take().context("no simulator output")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let base_url = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .context("the simulator did not start")??
            .context("the simulator exited")?;
        // The rest of its output is read and dropped: a closed pipe would end it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(SimProcess { child, base_url, http: reqwest::Client::new() })
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let text = self.http.get(format!("{}{path}", self.base_url)).send().await?.text().await?;
        Ok(serde_json::from_str(&text)?)
    }

    async fn stats(&self) -> anyhow::Result<Value> {
        self.get("/_sim/stats").await
    }

    async fn carts(&self) -> anyhow::Result<Vec<CartId>> {
        let carts = self.get("/_sim/carts").await?;
        Ok(carts["carts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|id| id.as_str())
            .filter_map(|id| CartId::parse(id).ok())
            .collect())
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// CPU time (user + system) this process has used.
fn cpu_time() -> Duration {
    match nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) {
        Ok(usage) => {
            let micros = |time: nix::sys::time::TimeVal| time.tv_sec() as u64 * 1_000_000 + time.tv_usec() as u64;
            Duration::from_micros(micros(usage.user_time()) + micros(usage.system_time()))
        }
        Err(_) => Duration::ZERO,
    }
}

fn bench_config(base_url: &str, directory: &Path) -> Config {
    let mut config = Config::polling_every_second(base_url, DEMO_API_CODE, &directory.join("cartwatch.db"));
    config.imaterialise.concurrency = 8;
    config.imaterialise.request_timeout = Duration::from_secs(30);
    config.sinks.log.path = directory.join("events.jsonl");
    config
}

/// Opens the SQLite database the config names: the benchmarks read the writer's own figures.
async fn open_store(config: &Config) -> anyhow::Result<SqliteStore> {
    let (path, busy_timeout) = (config.database.path.clone(), config.database.busy_timeout);
    Ok(tokio::task::spawn_blocking(move || SqliteStore::open(&path, busy_timeout)).await??)
}

/// The poller of the i.materialise carts the config describes.
async fn imaterialise_poller(store: &SqliteStore, config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Poller> {
    let poller_config = PollerConfig {
        provider: Arc::new(Imaterialise::new(config.imaterialise.clone())),
        rules: Arc::new(config.rules()),
        backoff: config.backoff.clone(),
        page_size: config.sweep.page_size,
    };
    let store: Arc<dyn SweepStore> = Arc::new(store.clone());
    Ok(Poller::new(store, &poller_config, metrics, Arc::default(), Clock::system()).await?)
}

async fn track(store: &dyn CartStore, ids: Vec<CartId>, due_at: chrono::DateTime<Utc>) -> anyhow::Result<()> {
    track_in_chunks(store, &ids, due_at, 50_000).await
}

/// Registers `ids` as i.materialise carts due at `due_at`, `chunk` to a transaction.
async fn track_in_chunks(
    store: &dyn CartStore,
    ids: &[CartId],
    due_at: chrono::DateTime<Utc>,
    chunk: usize,
) -> anyhow::Result<()> {
    for chunk in ids.chunks(chunk) {
        let requests = chunk
            .iter()
            .map(|id| TrackRequest {
                provider: "imaterialise".into(),
                cart_id: id.to_string(),
                session_token: None,
                account: String::new(),
                reference: None,
            })
            .collect();
        store.track(requests, Utc::now(), due_at).await?;
    }
    Ok(())
}

/// `count` cart ids the simulator does not know: random, the same for every run.
fn strangers(count: usize) -> Vec<CartId> {
    let mut random = rand::rngs::StdRng::seed_from_u64(1_000_000);
    (0..count)
        .filter_map(|_| CartId::parse(&uuid::Builder::from_random_bytes(random.random()).into_uuid().to_string()).ok())
        .collect()
}

/// Registers `count` carts the simulator does not know, due at `due_at`: the tracked
/// population around the due carts.
async fn track_elsewhere(store: &dyn CartStore, count: usize, due_at: chrono::DateTime<Utc>) -> anyhow::Result<()> {
    track_in_chunks(store, &strangers(count), due_at, 100_000).await
}

/// Registers the `due` carts among `others` more, all in a shuffled order, so that the due
/// carts' rows lie scattered through the table as a shop's do after months of
/// registrations; then makes only the `due` ones due at `now`.
async fn track_scattered(
    store: &dyn CartStore,
    database: &Path,
    due: &[CartId],
    others: usize,
    now: chrono::DateTime<Utc>,
) -> anyhow::Result<()> {
    use rand::seq::SliceRandom as _;
    let mut all = strangers(others);
    all.extend_from_slice(due);
    all.shuffle(&mut rand::rngs::StdRng::seed_from_u64(7));
    track_in_chunks(store, &all, now + chrono::Duration::days(1), 50_000).await?;
    make_due(database, now, Some(due.to_vec())).await
}

/// Makes `carts` due at `now`, or without a list every cart a sweep polled, leaving the
/// others (due tomorrow) alone, as an operator would with `sqlite3`.
async fn make_due(database: &Path, now: chrono::DateTime<Utc>, carts: Option<Vec<CartId>>) -> anyhow::Result<()> {
    let database = database.to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut connection = rusqlite::Connection::open(database)?;
        connection.busy_timeout(Duration::from_secs(10))?;
        let now = cartwatch::time::format_ts(now);
        let transaction = connection.transaction()?;
        match carts {
            Some(carts) => {
                let mut update = transaction.prepare("UPDATE carts SET next_poll_at = ?1 WHERE cart_id = ?2")?;
                for cart in &carts {
                    update.execute([now.as_str(), cart.as_str()])?;
                }
            }
            None => {
                transaction.execute(
                    "UPDATE carts SET next_poll_at = ?1 WHERE state = 'tracking' AND last_polled_at IS NOT NULL",
                    [&now],
                )?;
            }
        }
        transaction.commit()?;
        Ok(())
    })
    .await?
}

/// The simulator's own time per request between two of its `stats` answers, in
/// milliseconds: the latency the bound is computed with.
fn partner_ms_per_request(before: &Value, after: &Value) -> f64 {
    let requests = number(&after["requests"]) - number(&before["requests"]);
    (number(&after["busyMicros"]) - number(&before["busyMicros"])) / requests.max(1.0) / 1000.0
}

fn number(value: &Value) -> f64 {
    value.as_f64().unwrap_or(0.0)
}

/// Figures of one measured sweep.
struct Measured {
    wall: Duration,
    cpu: Duration,
    requests: f64,
    measured_latency_ms: f64,
    /// Submitted to committed, waiting for the group included: mean, and the 99th
    /// percentile's bucket upper bound.
    commit_latency_mean_ms: f64,
    commit_latency_p99_ms: f64,
    writer: WriterFigures,
    record: SweepRecord,
}

/// The database writer's work between two readings of its totals.
struct WriterFigures {
    busy: Duration,
    commits: u64,
    batches: u64,
}

impl WriterFigures {
    fn between(before: WriterTotals, after: WriterTotals) -> WriterFigures {
        WriterFigures {
            busy: after.busy.saturating_sub(before.busy),
            commits: after.commits.saturating_sub(before.commits),
            batches: after.batches.saturating_sub(before.batches),
        }
    }

    /// Transaction time per batch: the writer's busy time shared out among the batches it
    /// committed.
    fn sqlite_ms_per_batch(&self) -> f64 {
        self.busy.as_secs_f64() * 1000.0 / self.batches.max(1) as f64
    }

    /// Batches that shared one transaction, on average.
    fn batches_per_commit(&self) -> f64 {
        self.batches as f64 / self.commits.max(1) as f64
    }
}

/// Measures one sweep of `poller`, reading the simulator's own request figures around it.
async fn measure_sweep(
    poller: &Poller,
    simulator: &SimProcess,
    metrics: &Metrics,
    store: &SqliteStore,
) -> anyhow::Result<Measured> {
    let before = simulator.stats().await?;
    let writer_before = store.writer_totals();
    let cpu_before = cpu_time();
    let started = Instant::now();
    let record = poller.sweep(&CancellationToken::new()).await?;
    let wall = started.elapsed();
    let cpu = cpu_time() - cpu_before;
    let after = simulator.stats().await?;
    let requests = number(&after["requests"]) - number(&before["requests"]);
    let measured_latency_ms = partner_ms_per_request(&before, &after);
    let writer = WriterFigures::between(writer_before, store.writer_totals());
    let (commit_latency_mean_ms, commit_latency_p99_ms) = apply_times(metrics, store).await?;
    Ok(Measured {
        wall,
        cpu,
        requests,
        measured_latency_ms,
        commit_latency_mean_ms,
        commit_latency_p99_ms,
        writer,
        record,
    })
}

/// A simulator of `carts` carts answering after `latency_ms`, whose statuses do not move
/// between sweeps: a second sweep sees the same ones.
async fn steady_simulator(carts: usize, latency_ms: u64) -> anyhow::Result<SimProcess> {
    let arguments: Vec<String> = [
        "--carts",
        &carts.to_string(),
        "--unknown",
        "0",
        "--latency",
        &latency_ms.to_string(),
        "--min-dwell",
        "1000",
        "--max-dwell",
        "1000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    SimProcess::start(&arguments).await
}

/// Measures the floor against `simulator`'s carts, off the runtime's threads.
async fn measure_floor(simulator: &SimProcess, carts: Vec<CartId>, concurrency: usize) -> anyhow::Result<floor::Floor> {
    let base_url = simulator.base_url.clone();
    let directory = tempfile::tempdir()?;
    tokio::task::spawn_blocking(move || floor::measure(&base_url, DEMO_API_CODE, &carts, concurrency, directory.path()))
        .await?
}

/// The floor's figures, beside the bound for its requests.
fn floor_json(floor: &floor::Floor, measured_latency_ms: f64, concurrency: f64) -> Value {
    let bound = floor.requests as f64 * measured_latency_ms / concurrency / 1000.0;
    json!({
        "requests": floor.requests,
        "carts_written": floor.carts_written,
        "commits": floor.commits,
        "wall_s": round(floor.wall.as_secs_f64(), 3),
        "ratio_to_bound": round(floor.wall.as_secs_f64() / bound.max(1e-9), 4),
        "cpu_s": round(floor.cpu.as_secs_f64(), 3),
        "cpu_us_per_request": round(floor.cpu_per_request_us(), 1),
    })
}

/// `bench floor`: the floor alone, for `carts` carts at `latency_ms`.
async fn floor_alone(carts: usize, latency_ms: u64) -> anyhow::Result<Value> {
    let simulator = steady_simulator(carts, latency_ms).await?;
    let ids = simulator.carts().await?;
    let before = simulator.stats().await?;
    let floor = measure_floor(&simulator, ids, 8).await?;
    let after = simulator.stats().await?;
    simulator.stop().await;
    let measured_latency_ms = partner_ms_per_request(&before, &after);
    Ok(json!({
        "scenario": "floor",
        "carts": carts,
        "concurrency": 8,
        "partner_latency_ms": latency_ms,
        "partner_measured_ms_per_request": round(measured_latency_ms, 3),
        "floor": floor_json(&floor, measured_latency_ms, 8.0),
    }))
}

/// Sweeps `carts` due carts at `latency_ms` partner latency and concurrency 8, among
/// `tracked` carts in all (the others due tomorrow): first when every due cart is new (each
/// poll records a transition, many an event), then again when nothing changed (the steady
/// state of a running daemon); then the floor does the steady sweep's work.
async fn sweep(carts: usize, tracked: usize, latency_ms: u64) -> anyhow::Result<Value> {
    let concurrency = 8.0;
    let simulator = steady_simulator(carts, latency_ms).await?;
    let directory = tempfile::tempdir()?;
    let config = bench_config(&simulator.base_url, directory.path());
    let store = open_store(&config).await?;
    let ids = simulator.carts().await?;
    match tracked.saturating_sub(carts) {
        0 => track(&store, ids.clone(), Utc::now()).await?,
        others => track_scattered(&store, &config.database.path, &ids, others, Utc::now()).await?,
    }
    let checkpoints = CancellationToken::new();
    store.start_background_checkpoints(Duration::from_secs(2), checkpoints.clone())?;
    let metrics = Arc::new(Metrics::default());
    let poller = imaterialise_poller(&store, &config, Arc::clone(&metrics)).await?;
    let first = measure_sweep(&poller, &simulator, &metrics, &store).await?;
    let summary = store.summary(Utc::now()).await?;
    let committed: u64 =
        summary.carts.iter().filter(|(_, status, _)| status.is_some()).map(|(_, _, count)| count).sum();

    make_due(&config.database.path, Utc::now(), None).await?;
    let steady_metrics = Arc::new(Metrics::default());
    let poller = imaterialise_poller(&store, &config, Arc::clone(&steady_metrics)).await?;
    let steady = measure_sweep(&poller, &simulator, &steady_metrics, &store).await?;
    let floor = measure_floor(&simulator, ids, concurrency as usize).await?;
    simulator.stop().await;
    checkpoints.cancel();

    let batches = (carts as f64 / 10.0).ceil();
    let bound = |measured: &Measured| batches * measured.measured_latency_ms / concurrency / 1000.0;
    let floor_us = floor.cpu_per_request_us();
    let figures = |measured: &Measured| {
        let cpu_us = measured.cpu.as_secs_f64() * 1e6 / measured.requests.max(1.0);
        json!({
            "requests": measured.requests,
            "partner_measured_ms_per_request": round(measured.measured_latency_ms, 3),
            "bound_measured_s": round(bound(measured), 3),
            "wall_s": round(measured.wall.as_secs_f64(), 3),
            "ratio_to_bound": round(measured.wall.as_secs_f64() / bound(measured), 4),
            "cpu_s": round(measured.cpu.as_secs_f64(), 3),
            "cpu_us_per_request": round(cpu_us, 1),
            "cpu_ratio_to_floor": round(cpu_us / floor_us.max(1e-9), 2),
            "sqlite_ms_per_batch_mean": round(measured.writer.sqlite_ms_per_batch(), 3),
            "batches_per_commit": round(measured.writer.batches_per_commit(), 1),
            "commit_latency_ms_mean": round(measured.commit_latency_mean_ms, 3),
            "carts_polled": measured.record.carts_polled,
        })
    };
    Ok(json!({
        "scenario": "sweep",
        "carts": carts,
        "tracked_carts": tracked.max(carts),
        "concurrency": concurrency,
        "partner_latency_ms": latency_ms,
        "bound_nominal_s": round(batches * latency_ms as f64 / concurrency / 1000.0, 3),
        "target_ratio": 1.03,
        "target_cpu_ratio_to_floor": 1.3,
        "first_sweep_every_cart_new": figures(&first),
        "steady_sweep_nothing_changed": figures(&steady),
        "floor_steady_work": floor_json(&floor, steady.measured_latency_ms, concurrency),
        "carts_committed": committed,
        "all_committed": committed as usize == carts && first.record.carts_polled as usize == carts,
    }))
}

fn round(value: f64, places: i32) -> f64 {
    let factor = 10f64.powi(places);
    (value * factor).round() / factor
}

/// A million tracked carts, ten thousand due; the real binary, measured from outside.
async fn scale_up(total: usize, due: usize, logs: &BenchLog) -> anyhow::Result<Value> {
    let simulator = SimProcess::start(&["--carts".into(), due.to_string(), "--unknown".into(), "0".into()]).await?;
    let directory = tempfile::tempdir()?;
    let mut config = bench_config(&simulator.base_url, directory.path());
    config.sweep.cron = "0 0 * * * *".into();
    config.sinks.log.enabled = false;
    let store = open_store(&config).await?;
    let setup = Instant::now();
    track(&store, simulator.carts().await?, Utc::now()).await?;
    track_elsewhere(&store, total.saturating_sub(due), Utc::now() + chrono::Duration::days(1)).await?;
    let setup_s = setup.elapsed().as_secs_f64();
    let plan = store.explain_due_page().await?;
    drop(store);

    let config_path = directory.path().join("cartwatch.toml");
    std::fs::write(
        &config_path,
        format!(
            "[database]\npath = {:?}\n[sweep]\ncron = \"0 0 * * * *\"\n[imaterialise]\nbase_url = {:?}\nrequests_per_second = 0\nconcurrency = 8\n[sinks.log]\nenabled = false\n",
            config.database.path.display().to_string(),
            simulator.base_url
        ),
    )?;
    let spawned_unix_micros = Utc::now().timestamp_micros();
    let started = Instant::now();
    let mut daemon = tokio::process::Command::new(std::env::current_exe()?)
        .arg("--config")
        .arg(&config_path)
        .arg("run")
        .env("CARTWATCH__IMATERIALISE__API_CODE", DEMO_API_CODE)
        .stdout(Stdio::null())
        .stderr(logs.for_child()?)
        .kill_on_drop(true)
        .spawn()?;
    let pid = daemon.id().context("the daemon has no pid")?;
    let expected_requests = due.div_ceil(10) as f64;
    let mut peak_rss_kib = 0u64;
    loop {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            peak_rss_kib = peak_rss_kib.max(status_field(&status, "VmHWM:"));
        }
        if number(&simulator.stats().await?["requests"]) >= expected_requests
            || started.elapsed() > Duration::from_secs(120)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let swept_s = started.elapsed().as_secs_f64();
    // Let it settle, then read its high-water mark once more before stopping it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        peak_rss_kib = peak_rss_kib.max(status_field(&status, "VmHWM:"));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM)?;
    let exit = daemon.wait().await?;
    let stats = simulator.stats().await?;
    simulator.stop().await;
    let first_request_ms = (number(&stats["firstRequestUnixMicros"]) - spawned_unix_micros as f64) / 1000.0;
    Ok(json!({
        "scenario": "scale",
        "tracked_carts": total,
        "due_carts": due,
        "setup_s": round(setup_s, 1),
        "peak_rss_mib": round(peak_rss_kib as f64 / 1024.0, 1),
        "target_peak_rss_mib": 32,
        "first_request_ms": round(first_request_ms, 1),
        "target_first_request_ms": 100,
        "due_carts_swept_s": round(swept_s, 3),
        "requests": number(&stats["requests"]),
        "due_query_plan": plan,
        "due_query_uses_index": plan.iter().any(|line| line.contains("USING INDEX carts_due")),
        "clean_exit": exit.success(),
    }))
}

fn status_field(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

/// A receiver that answers 200 at once and checks each cart's events arrive in order.
struct Receiver {
    address: std::net::SocketAddr,
    received: Arc<AtomicU64>,
    out_of_order: Arc<AtomicU64>,
    shutdown: CancellationToken,
}

impl Receiver {
    async fn start() -> anyhow::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let received = Arc::new(AtomicU64::new(0));
        let out_of_order = Arc::new(AtomicU64::new(0));
        let last_round: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let shutdown = CancellationToken::new();
        let app = {
            let (received, out_of_order) = (Arc::clone(&received), Arc::clone(&out_of_order));
            axum::Router::new().route(
                "/hook",
                axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let (received, out_of_order, last_round) =
                        (Arc::clone(&received), Arc::clone(&out_of_order), Arc::clone(&last_round));
                    async move {
                        let signed = headers.contains_key("webhook-signature") && headers.contains_key("webhook-id");
                        let payload: Value = serde_json::from_slice(&body).unwrap_or_default();
                        let cart = payload["data"]["cartId"].as_str().unwrap_or_default().to_owned();
                        let round: u64 =
                            payload["data"]["reference"].as_str().and_then(|r| r.parse().ok()).unwrap_or(0);
                        let previous = last_round.lock().map(|mut rounds| rounds.insert(cart, round)).unwrap_or(None);
                        if previous.is_some_and(|previous| previous >= round) || !signed {
                            out_of_order.fetch_add(1, Ordering::Relaxed);
                        }
                        received.fetch_add(1, Ordering::Relaxed);
                        axum::http::StatusCode::OK
                    }
                }),
            )
        };
        let token = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(token.cancelled_owned()).await;
        });
        Ok(Receiver { address, received, out_of_order, shutdown })
    }
}

/// Runs one sink's delivery loop until nothing is pending; returns the wall time.
async fn drain(store: &SqliteStore, sink: Arc<Sink>) -> anyhow::Result<Duration> {
    let name = sink.name().to_owned();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let outbox: Arc<dyn OutboxStore> = Arc::new(store.clone());
    let task = tokio::spawn(delivery_loop(
        outbox,
        SinkSlot::new(sink),
        Arc::new(Notify::new()),
        Arc::new(Metrics::default()),
        Clock::system(),
        shutdown.clone(),
        CancellationToken::new(),
    ));
    while store.has_pending(name.clone()).await? {
        if started.elapsed() > Duration::from_secs(600) {
            bail!("{name} did not finish within ten minutes");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let wall = started.elapsed();
    shutdown.cancel();
    task.await?;
    Ok(wall)
}

/// `events` events, ten per cart, interleaved as sweeps produce them.
async fn deliver(events: usize) -> anyhow::Result<Value> {
    let receiver = Receiver::start().await?;
    let directory = tempfile::tempdir()?;
    let mut config = Config::default();
    config.database.path = directory.path().join("cartwatch.db");
    config.sinks.log.path = directory.path().join("events.jsonl");
    config.webhooks.insert(
        "bench".into(),
        WebhookConfig {
            url: format!("http://{}/hook", receiver.address),
            secret: Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            ..WebhookConfig::default()
        },
    );
    let store = open_store(&config).await?;
    let checkpoints = CancellationToken::new();
    store.start_background_checkpoints(Duration::from_secs(2), checkpoints.clone())?;
    let all_sinks: Vec<Arc<Sink>> = sinks::build(&config.sink_settings())?.into_iter().map(Arc::new).collect();
    store.sync_sinks(all_sinks.iter().map(|sink| sink.spec()).collect(), Utc::now()).await?;
    let carts = (events / 10).max(1);
    let cart_ids: Vec<String> = (0..carts).map(|index| format!("00000000-0000-4000-8000-{index:012}")).collect();
    let mut batch = Vec::with_capacity(5000);
    for round in 0..events.div_ceil(carts) {
        for cart_id in &cart_ids {
            let data = CartEventData {
                cart_id: cart_id.clone(),
                status: Some("CheckedOut".into()),
                previous_status: Some("Pending".into()),
                order_id: None,
                cart_created_at: None,
                reference: Some(round.to_string()),
                provider: "imaterialise".into(),
            };
            batch.push(NewEvent::cart(EventType::CartCheckedOut, &data, Utc::now()));
            if batch.len() == 5000 {
                store.write_events(std::mem::take(&mut batch)).await?;
            }
        }
    }
    store.write_events(batch).await?;
    let written = events.div_ceil(carts) * carts;

    let webhook = all_sinks.iter().find(|sink| sink.name() == "bench").cloned().context("no webhook sink")?;
    let log = all_sinks.iter().find(|sink| sink.name() == "log").cloned().context("no log sink")?;
    let cpu_before = cpu_time();
    let webhook_wall = drain(&store, webhook).await?;
    let webhook_cpu = cpu_time() - cpu_before;
    let log_wall = drain(&store, log).await?;
    receiver.shutdown.cancel();
    checkpoints.cancel();
    let lines = std::fs::read_to_string(&config.sinks.log.path)?.lines().count();
    Ok(json!({
        "scenario": "deliver",
        "events": written,
        "carts": carts,
        "webhook_delivered": receiver.received.load(Ordering::Relaxed),
        "webhook_out_of_order": receiver.out_of_order.load(Ordering::Relaxed),
        "webhook_wall_s": round(webhook_wall.as_secs_f64(), 3),
        "webhook_per_s": round(written as f64 / webhook_wall.as_secs_f64(), 0),
        "webhook_cpu_s_with_receiver": round(webhook_cpu.as_secs_f64(), 3),
        "target_webhook_per_s": 2000,
        "log_lines": lines,
        "log_wall_s": round(log_wall.as_secs_f64(), 3),
        "log_per_s": round(written as f64 / log_wall.as_secs_f64(), 0),
        "target_log_per_s": 100_000,
    }))
}

/// `carts` carts, all Pending, all seen CheckedOut in one sweep.
async fn transitions(carts: usize) -> anyhow::Result<Value> {
    let arguments = |status: &str| -> Vec<String> {
        ["--carts", &carts.to_string(), "--unknown", "0", "--seed", "5", "--uniform-status", status]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let directory = tempfile::tempdir()?;
    // First every cart is seen Pending (set-up, not measured)...
    let pending = SimProcess::start(&arguments("Pending")).await?;
    let mut config = bench_config(&pending.base_url, directory.path());
    let store = open_store(&config).await?;
    let checkpoints = CancellationToken::new();
    store.start_background_checkpoints(Duration::from_secs(2), checkpoints.clone())?;
    track(&store, pending.carts().await?, Utc::now()).await?;
    let poller = imaterialise_poller(&store, &config, Arc::new(Metrics::default())).await?;
    poller.sweep(&CancellationToken::new()).await?;
    pending.stop().await;
    let events_before = store.events_after(0, u32::MAX).await?.len();

    // ...then every one of them is CheckedOut.
    let checked_out = SimProcess::start(&arguments("CheckedOut")).await?;
    config.imaterialise.base_url = checked_out.base_url.clone();
    store.make_all_due(Utc::now()).await?;
    let metrics = Arc::new(Metrics::default());
    let poller = imaterialise_poller(&store, &config, Arc::clone(&metrics)).await?;
    let measured = measure_sweep(&poller, &checked_out, &metrics, &store).await?;
    checked_out.stop().await;
    checkpoints.cancel();

    let events = store.events_after(0, u32::MAX).await?.len() - events_before;
    let transitions = measured.record.transitions;
    let wall = measured.wall.as_secs_f64();
    Ok(json!({
        "scenario": "transitions",
        "carts": carts,
        "transitions_committed": transitions,
        "events_committed": events,
        "all_committed": transitions as usize == carts && events == carts,
        "wall_s": round(wall, 3),
        "transitions_per_s": round(carts as f64 / wall, 0),
        "cpu_s": round(measured.cpu.as_secs_f64(), 3),
        "batches": measured.record.requests,
        "sqlite_ms_per_batch_mean": round(measured.writer.sqlite_ms_per_batch(), 3),
        "batches_per_commit": round(measured.writer.batches_per_commit(), 1),
        "commit_latency_ms_mean": round(measured.commit_latency_mean_ms, 3),
        "commit_latency_ms_p99_at_most": round(measured.commit_latency_p99_ms, 3),
    }))
}

/// Mean and 99th percentile (bucket upper bound) of the time from a batch's submission to
/// its commit, in milliseconds, read back from the Prometheus rendering.
async fn apply_times(metrics: &Metrics, store: &SqliteStore) -> anyhow::Result<(f64, f64)> {
    let text = metrics.render(&store.summary(Utc::now()).await?);
    let metric = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let batches = metric("cartwatch_store_apply_duration_seconds_count");
    let seconds = metric("cartwatch_store_apply_duration_seconds_sum");
    let p99 = histogram_quantile(&text, "cartwatch_store_apply_duration_seconds_bucket", 0.99);
    Ok((seconds * 1000.0 / batches.max(1.0), p99 * 1000.0))
}

/// The upper bound of the bucket holding quantile `q`, from a Prometheus text histogram.
fn histogram_quantile(text: &str, bucket_prefix: &str, q: f64) -> f64 {
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|line| line.strip_prefix(bucket_prefix))
        .filter_map(|rest| {
            let bound = rest.split("le=\"").nth(1)?.split('"').next()?;
            let count = rest.rsplit(' ').next()?.parse().ok()?;
            Some((if bound == "+Inf" { f64::INFINITY } else { bound.parse().ok()? }, count))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |(_, count)| *count);
    buckets.iter().find(|(_, count)| *count >= total * q).map_or(0.0, |(bound, _)| *bound)
}

/// A PostgreSQL server for the `daemons` scenario, and a fresh database on it.
async fn fresh_postgres_database() -> anyhow::Result<String> {
    let server = std::env::var("CARTWATCH_BENCH_POSTGRES")
        .or_else(|_| std::env::var("CARTWATCH_TEST_POSTGRES"))
        .context("the daemons scenario needs PostgreSQL: set CARTWATCH_BENCH_POSTGRES (or run `eval \"$(.ci/postgres start)\"`)")?;
    let (client, connection) =
        tokio_postgres::connect(&server, tokio_postgres::NoTls).await.context("while connecting to PostgreSQL")?;
    tokio::spawn(connection);
    let name = format!("cw_bench_{}", uuid::Uuid::new_v4().simple());
    client.batch_execute(&format!("CREATE DATABASE {name}")).await?;
    Ok(format!("{server} dbname={name}"))
}

/// A daemon's config for the `daemons` scenario.
fn daemon_config(
    home: &Path,
    base_url: &str,
    url: &str,
    concurrency: u32,
    requests_per_second: f64,
) -> anyhow::Result<std::path::PathBuf> {
    std::fs::create_dir_all(home)?;
    let path = home.join("cartwatch.toml");
    std::fs::write(
        &path,
        format!(
            "[database]\nurl = {url:?}\nlease = \"5s\"\n[sweep]\ncron = \"* * * * * *\"\n\
             [imaterialise]\nbase_url = {base_url:?}\napi_code = {DEMO_API_CODE:?}\nconcurrency = {concurrency}\n\
             requests_per_second = {requests_per_second}\nrequest_timeout = \"5s\"\n\
             [cadence]\ntiers = [{{ younger_than = \"30d\", every = \"1h\" }}]\nolder_every = \"1h\"\n\
             checked_out_every = \"1h\"\njitter = 0.0\n[plan]\nmode = \"tiers\"\n[sinks.log]\nenabled = false\n"
        ),
    )?;
    Ok(path)
}

/// `cartwatch run` on `config`, as a child process, its diagnostics in `daemon.log` beside it.
fn spawn_daemon(config: &Path) -> anyhow::Result<tokio::process::Child> {
    let exe = std::env::current_exe().context("while finding the cartwatch binary")?;
    let log = std::fs::File::create(config.with_file_name("daemon.log"))?;
    Ok(tokio::process::Command::new(exe)
        .arg("--config")
        .arg(config)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?)
}

/// Request arrivals the simulator saw: seconds after the first, and carts asked about.
async fn arrivals(simulator: &SimProcess) -> anyhow::Result<Vec<(f64, u64)>> {
    let value = simulator.get("/_sim/arrivals").await?;
    Ok(value["arrivals"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|pair| (number(&pair[0]) / 1e6, number(&pair[1]) as u64))
        .collect())
}

/// The most requests in any one-second window.
fn busiest_second(times: &[f64]) -> usize {
    let mut busiest = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end] - times[start] >= 1.0 {
            start += 1;
        }
        busiest = busiest.max(end + 1 - start);
    }
    busiest
}

/// One run: `count` daemons poll `carts` carts (all due a few seconds after they start) once
/// each; returns the requests per second the partner saw, its busiest second, and the run's
/// database and simulator for what follows.
async fn shared_run(
    carts: usize,
    count: usize,
    concurrency: u32,
    requests_per_second: f64,
    directory: &Path,
) -> anyhow::Result<(f64, usize, Vec<tokio::process::Child>, SimProcess, String)> {
    let arguments: Vec<String> =
        ["--carts", &carts.to_string(), "--unknown", "0", "--latency", "20", "--uniform-status", "Pending"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let simulator = SimProcess::start(&arguments).await?;
    let url = fresh_postgres_database().await?;
    let mut config = Config::default();
    config.database.url = Secret::new(url.clone());
    let store = cartwatch::store::open(&config.database, true).await?;
    let due_at = Utc::now() + chrono::Duration::seconds(4);
    track_in_chunks(store.as_ref(), &simulator.carts().await?, due_at, 5000).await?;
    let mut daemons = Vec::new();
    for index in 0..count {
        let config = daemon_config(
            &directory.join(format!("{count}-{index}")),
            &simulator.base_url,
            &url,
            concurrency,
            requests_per_second,
        )?;
        daemons.push(spawn_daemon(&config)?);
    }
    let expected = carts.div_ceil(10) as f64;
    let started = Instant::now();
    while number(&simulator.stats().await?["requests"]) < expected {
        if started.elapsed() > Duration::from_secs(300) {
            bail!(
                "{count} daemon(s) did not poll every cart within five minutes; see daemon.log in {}",
                directory.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let times: Vec<f64> = arrivals(&simulator).await?.into_iter().map(|(at, _)| at).collect();
    let span = times.last().copied().unwrap_or(0.0) - times.first().copied().unwrap_or(0.0);
    let rate = (times.len().saturating_sub(1)) as f64 / span.max(1e-3);
    Ok((rate, busiest_second(&times), daemons, simulator, url))
}

async fn daemons(carts: usize) -> anyhow::Result<Value> {
    let directory = tempfile::tempdir()?;
    let concurrency = 2;
    // The highest rate the config allows: the shared bucket is asked, but does not bind.
    let unlimited = 10_000.0;
    let mut rates = Vec::new();
    for count in 1..=3 {
        let (rate, _, daemons, simulator, _) =
            shared_run(carts, count, concurrency, unlimited, directory.path()).await?;
        drop(daemons);
        simulator.stop().await;
        rates.push(rate);
    }
    // A binding global limit: three daemons together stay under it.
    let limit = (rates[2] / 2.0).round().max(10.0);
    let (limited_rate, busiest, daemons, simulator, _) =
        shared_run(carts / 4, 3, concurrency, limit, directory.path()).await?;
    drop(daemons);
    simulator.stop().await;

    // Takeover: three daemons with 5 s leases; one is killed mid-work; how long until the
    // carts it held are polled by the others.
    let takeover = takeover(carts, concurrency, directory.path()).await?;
    Ok(json!({
        "scenario": "daemons",
        "carts": carts,
        "partner_latency_ms": 20,
        "concurrency_per_daemon": concurrency,
        "requests_per_second": { "1": round(rates[0], 1), "2": round(rates[1], 1), "3": round(rates[2], 1) },
        "ratio_to_one": { "2": round(rates[1] / rates[0], 3), "3": round(rates[2] / rates[0], 3) },
        "target_ratio": { "2": 1.8, "3": 2.6 },
        "global_limit_rps": limit,
        "limited_rate_rps": round(limited_rate, 1),
        "busiest_second_requests": busiest,
        "limit_held": busiest as f64 <= limit + 1.0,
        "lease_s": 5,
        "takeover_s": round(takeover, 2),
    }))
}

/// Seconds from SIGKILLing one of three daemons until every cart it held has been polled.
async fn takeover(carts: usize, concurrency: u32, directory: &Path) -> anyhow::Result<f64> {
    let (_, _, mut daemons, simulator, url) = shared_run(carts / 10, 3, concurrency, 10_000.0, directory).await?;
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    // Make every cart due again, and kill a daemon while it holds some.
    client.execute("UPDATE carts SET next_poll_at = now()", &[]).await?;
    let victim = daemons.remove(0);
    let pid = i32::try_from(victim.id().context("no pid")?)?;
    let started = Instant::now();
    let keys: Vec<i64> = loop {
        let rows = client
            .query(
                "SELECT c.cart_key FROM carts c JOIN members m ON m.member_id = c.lease_owner \
                 WHERE m.pid = $1 AND c.lease_until > now()",
                &[&pid],
            )
            .await?;
        if !rows.is_empty() {
            break rows.iter().map(|row| row.get(0)).collect();
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the daemon never held a cart");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let mut victim = victim;
    victim.start_kill()?;
    let killed = Instant::now();
    victim.wait().await?;
    loop {
        let row = client
            .query_one(
                "SELECT count(*) FROM carts WHERE cart_key = ANY($1) AND (last_polled_at IS NULL OR next_poll_at <= now())",
                &[&keys],
            )
            .await?;
        if row.get::<_, i64>(0) == 0 {
            break;
        }
        if killed.elapsed() > Duration::from_secs(120) {
            bail!("the killed daemon's carts were not taken over within two minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = killed.elapsed().as_secs_f64();
    drop(daemons);
    simulator.stop().await;
    Ok(elapsed)
}

/// The polling plans on one seeded workload: fixed polling, today's tiers, and the budget
/// plan at a range of budgets; then the comparisons at equal detection latency and at equal
/// requests, and the curve of requests against p95 detection latency as an SVG beside the
/// working directory's `plan-curve.svg`.
async fn plans(scale: f64) -> anyhow::Result<Value> {
    use cartwatch::plan::evaluate::{Planner, Report, Settings, evaluate};
    use cartwatch::plan::workload::Model;
    let settings = Settings::default();
    let model = Model { carts_per_day: 20_000.0 * scale, ..Model::default() };
    let started = Instant::now();
    let timelines = model.generate(settings.days, 2026);
    let generated = started.elapsed();
    let cadence = Config::default().cadence;
    // Fixed polling, and the tiers scaled for the curve, cost much to replay poll by poll and
    // scale exactly with the number of carts: they run on a sample of the same workload, their
    // requests multiplied back.
    let sampled = |every: usize| timelines.iter().step_by(every).cloned().collect::<Vec<_>>();
    let (twentieth, fifth) = (sampled(20), sampled(5));
    let mut lines: Vec<(String, Vec<Value>)> = Vec::new();
    let mut timings = Vec::new();
    let mut run = |planner: &Planner, timelines: &[cartwatch::plan::workload::Timeline], every: f64| -> Report {
        let started = Instant::now();
        let mut report = evaluate(timelines, planner, &settings);
        timings.push(round(started.elapsed().as_secs_f64(), 2));
        report.requests_per_day *= every;
        report.peak_requests_per_tick = (report.peak_requests_per_tick as f64 * every) as usize;
        println!("{}", plan_json(&report, 1.0 / every, settings.tick));
        report
    };
    let mut fixed = Vec::new();
    for seconds in [30, 60, 120, 300, 600] {
        fixed.push(run(&Planner::Fixed(Duration::from_secs(seconds)), &twentieth, 20.0));
    }
    let scaled_tiers = |factor: f64| {
        let mut scaled = cadence.clone();
        let by = |interval: Duration| Duration::from_secs_f64(interval.as_secs_f64() * factor);
        for tier in &mut scaled.tiers {
            tier.every = by(tier.every);
        }
        scaled.older_every = by(scaled.older_every);
        scaled.checked_out_every = by(scaled.checked_out_every);
        scaled
    };
    let mut tiers_line = vec![run(&Planner::Tiers(scaled_tiers(0.5)), &fifth, 5.0)];
    let tiers = run(&Planner::Tiers(cadence.clone()), &timelines, 1.0);
    tiers_line.push(tiers.clone());
    tiers_line.push(run(&Planner::Tiers(scaled_tiers(2.0)), &fifth, 5.0));
    let mut budget = Vec::new();
    for fraction in [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 1.0] {
        let planner = Planner::Budget {
            requests_per_day: (tiers.requests_per_day * fraction).round(),
            bounds: (settings.tick, Duration::from_secs(6 * 3600)),
            near_order_every: cadence.checked_out_every,
        };
        budget.push(run(&planner, &timelines, 1.0));
    }
    // The cheapest budget whose p95 is no worse than a reference's, for both changes.
    let cheapest_as_good_as = |reference: &Report| {
        budget
            .iter()
            .filter(|plan| {
                plan.checked_out.p95 <= reference.checked_out.p95 && plan.ordered.p95 <= reference.ordered.p95
            })
            .min_by(|a, b| a.requests_per_day.total_cmp(&b.requests_per_day))
    };
    let as_good_as_tiers = cheapest_as_good_as(&tiers);
    let at_tiers_requests = budget.last().context("no budget plan")?;
    let fixed_1m = &fixed[1];
    let as_good_as_fixed = cheapest_as_good_as(fixed_1m);
    let point = |report: &Report| json!([report.requests_per_day, report.checked_out.p95, report.ordered.p95]);
    lines.push(("fixed interval (30 s to 10 min)".into(), fixed.iter().map(point).collect()));
    lines.push(("tiers (intervals ×0.5, ×1, ×2)".into(), tiers_line.iter().map(point).collect()));
    lines.push(("budget plan (square-root rule)".into(), budget.iter().map(point).collect()));
    let svg = std::path::PathBuf::from("plan-curve.svg");
    draw_plan_curve(&svg, &lines)?;
    Ok(json!({
        "scenario": "plan",
        "summary": true,
        "carts": timelines.len(),
        "days": settings.days,
        "measured_days": settings.days - settings.measured_from_day,
        "requests_ratio_vs_tiers_at_equal_p95": as_good_as_tiers.map(|plan| round(tiers.requests_per_day / plan.requests_per_day, 2)),
        "budget_at_equal_p95": as_good_as_tiers.map(|plan| plan.label.clone()),
        "p95_ratio_vs_tiers_at_equal_requests": round(tiers.ordered.p95 / at_tiers_requests.ordered.p95, 2),
        "requests_ratio_vs_fixed_1m_at_equal_p95": as_good_as_fixed.map(|plan| round(fixed_1m.requests_per_day / plan.requests_per_day, 1)),
        "targets": { "requests_ratio_vs_tiers": 3, "p95_ratio_vs_tiers": 2, "requests_ratio_vs_fixed_1m": 20, "evaluate_s": 30 },
        "generate_s": round(generated.as_secs_f64(), 2),
        "evaluate_s": timings,
        "svg": svg.display().to_string(),
    }))
}

/// Requests per day (x, logarithmic) against the 95th percentile of detection latency, for
/// checkouts and for orders, one line per plan.
fn draw_plan_curve(path: &Path, lines: &[(String, Vec<Value>)]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1100, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(550);
    let colors = [RGBColor(120, 120, 120), RGBColor(31, 119, 180), RGBColor(214, 39, 40)];
    let points = |line: &[Value], index: usize| -> Vec<(f64, f64)> {
        line.iter().map(|point| (number(&point[0]), number(&point[index]).max(1.0))).collect()
    };
    let all: Vec<(f64, f64)> =
        lines.iter().flat_map(|(_, line)| points(line, 1).into_iter().chain(points(line, 2))).collect();
    let x_range = all.iter().map(|(x, _)| *x).fold(f64::MAX, f64::min) * 0.7
        ..all.iter().map(|(x, _)| *x).fold(0.0, f64::max) * 1.4;
    let y_range = 5.0..all.iter().map(|(_, y)| *y).fold(0.0, f64::max) * 1.5;
    for (area, index, title) in
        [(&left, 1, "checkouts found: p95 delay (s)"), (&right, 2, "orders found: p95 delay (s)")]
    {
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(x_range.clone().log_scale(), y_range.clone().log_scale())?;
        let count = |value: &f64| match *value {
            value if value >= 1e6 => format!("{}M", value / 1e6),
            value if value >= 1e3 => format!("{}k", value / 1e3),
            value => format!("{value}"),
        };
        chart
            .configure_mesh()
            .x_desc("requests per day")
            .y_desc("seconds")
            .x_label_formatter(&count)
            .y_label_formatter(&|value| format!("{value:.0}"))
            .draw()?;
        for ((label, line), color) in lines.iter().zip(colors) {
            let series = points(line, index);
            chart
                .draw_series(LineSeries::new(series.clone(), color.stroke_width(2)))?
                .label(label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
            chart.draw_series(series.into_iter().map(|point| Circle::new(point, 4, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.9))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn plan_json(report: &cartwatch::plan::evaluate::Report, sampled: f64, tick: Duration) -> Value {
    let latency = |latency: &cartwatch::plan::evaluate::Latency| json!({ "count": latency.count, "p50_s": round(latency.p50, 1), "p95_s": round(latency.p95, 1), "p99_s": round(latency.p99, 1) });
    json!({
        "plan": report.label,
        "requests_per_day": round(report.requests_per_day, 0),
        "polls_per_request": round(report.polls_per_request, 2),
        "requests_per_detected_order": round(report.requests_per_detected_order, 1),
        "peak_requests_per_tick": report.peak_requests_per_tick,
        "peak_requests_per_second": round(report.peak_requests_per_tick as f64 / tick.as_secs_f64(), 1),
        "checked_out": latency(&report.checked_out),
        "ordered": latency(&report.ordered),
        "carts_replayed": report.carts,
        "sampled": sampled,
    })
}
