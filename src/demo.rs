//! `cartwatch demo`: the whole job on one machine with nothing to configure. A simulator
//! plays the partner, a temporary database holds the state, the real daemon polls on a fast
//! schedule, and each event is printed as it is written.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{CadenceTier, Config};
use crate::daemon::{self, Hooks};
use crate::provider::Provider;
use crate::render::render_event_line;
use crate::secret::Secret;
use crate::simulator::{DEMO_API_CODE, Simulator, SimulatorSettings};
use crate::store::TrackRequest;

/// The longest the demo runs.
const TIME_LIMIT: Duration = Duration::from_secs(50);

/// A config that polls `base_url` every second into the database at `database`, for the
/// demo and the end-to-end tests.
pub fn simulator_config(base_url: &str, database: &Path) -> Config {
    let mut config = Config::default();
    config.database.path = database.to_owned();
    config.sweep.cron = "* * * * * *".into();
    config.imaterialise.base_url = base_url.to_owned();
    config.imaterialise.api_code = Secret::new(DEMO_API_CODE);
    config.imaterialise.requests_per_second = 0.0;
    config.imaterialise.request_timeout = Duration::from_secs(5);
    let second = Duration::from_secs(1);
    config.cadence.tiers = vec![CadenceTier { younger_than: Duration::from_secs(30 * 24 * 3600), every: second }];
    config.cadence.older_every = second;
    config.cadence.checked_out_every = second;
    config.cadence.jitter = 0.0;
    config.backoff.transient_initial = Duration::from_millis(500);
    config.backoff.transient_max = Duration::from_secs(4);
    config.backoff.auth_initial = Duration::from_secs(1);
    config.backoff.auth_max = Duration::from_secs(4);
    config.backoff.not_found_after = 3;
    config.logging.level = "warn".into();
    config
}

/// Runs the demo: `carts` simulated carts of `provider` on the timeline of `seed`.
///
/// Fails when the simulator cannot bind a loopback port or the temporary database cannot be
/// created.
pub async fn run(provider: Provider, carts: usize, seed: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    let directory = tempfile::tempdir().context("while creating a temporary directory")?;
    let carts = carts.clamp(1, 10_000);
    let settings = match provider {
        Provider::Imaterialise => SimulatorSettings { seed, carts, unknown_carts: 3, ..SimulatorSettings::default() },
        Provider::Titelive => SimulatorSettings {
            seed,
            carts: 0,
            unknown_carts: 0,
            titelive_sessions: carts,
            ..SimulatorSettings::default()
        },
    };
    let simulator = Simulator::start(settings, "127.0.0.1:0".parse()?).await.context("while starting the simulator")?;
    let mut config = simulator_config(&simulator.base_url(), &directory.path().join("cartwatch.db"));
    if provider == Provider::Titelive {
        config.imaterialise.enabled = false;
        config.titelive.enabled = true;
        config.titelive.base_url = simulator.base_url();
        config.titelive.requests_per_second = 0.0;
    }
    let events_file = directory.path().join("events.jsonl");
    config.sinks.log.path = events_file.clone();
    crate::logging::init(&config.logging);

    crate::say!(
        "cartwatch demo: a simulated partner on {}, a temporary database, polling every second.",
        simulator.base_url()
    );
    let store = daemon::open_store(&config).await?;
    let reference = |index: usize| Some(format!("demo-{:02}", index + 1));
    let requests: Vec<TrackRequest> = match provider {
        Provider::Imaterialise => simulator
            .cart_ids()
            .into_iter()
            .enumerate()
            .map(|(index, cart_id)| TrackRequest::imaterialise(cart_id, reference(index)))
            .collect(),
        Provider::Titelive => simulator
            .session_tokens()
            .into_iter()
            .enumerate()
            .filter_map(|(index, token)| TrackRequest::parse(provider, &token, "00000", reference(index)).ok())
            .collect(),
    };
    let tracked = requests.len();
    store.track(requests, Utc::now()).await?;
    match provider {
        Provider::Imaterialise => crate::say!(
            "Tracking {tracked} i.materialise carts ({} of them unknown to the partner). Events as they happen:\n",
            simulator.unknown_cart_ids().len()
        ),
        Provider::Titelive => {
            crate::say!("Tracking {tracked} Titelive sessions (shop domain 00000). Events as they happen:\n")
        }
    }

    let shutdown = CancellationToken::new();
    let (_reload_sender, reloads) = mpsc::unbounded_channel();
    let daemon_task = tokio::spawn(daemon::run(config, reloads, Hooks::default(), shutdown.clone()));

    let mut cursor = 0;
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    let mut quiet_since_settled: Option<Instant> = None;
    while started.elapsed() < TIME_LIMIT {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for event in store.events_after(cursor, 1000).await? {
            cursor = event.seq;
            *counts.entry(event.event_type.clone()).or_default() += 1;
            crate::say!("{}", render_event_line(&event, started.elapsed()));
        }
        if daemon_task.is_finished() {
            break;
        }
        if simulator.settled() {
            // Give the daemon a moment to see the last statuses the simulator served.
            let since = *quiet_since_settled.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(3) {
                break;
            }
        }
    }
    shutdown.cancel();
    match daemon_task.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return Err(error).context("while running the daemon"),
        Err(error) => return Err(anyhow::anyhow!("the daemon task failed: {error}")),
    }

    let truth = simulator.truth();
    let true_count = |status: &str| truth.iter().filter(|t| t.to == status).count();
    let found = |event_type: &str| counts.get(event_type).copied().unwrap_or(0);
    crate::say!("\nSummary after {:.1}s", started.elapsed().as_secs_f64());
    crate::say!("  carts tracked          {tracked}");
    match provider {
        Provider::Imaterialise => {
            crate::say!(
                "  checkouts found        {} (the simulator made {})",
                found("cart.checked_out"),
                true_count("CheckedOut")
            );
            crate::say!(
                "  orders found           {} (the simulator made {})",
                found("cart.ordered"),
                true_count("Ordered")
            );
            crate::say!("  carts not found        {}", found("cart.not_found"));
            crate::say!("  requests sent          {} (at most 10 carts each)", simulator.requests());
        }
        Provider::Titelive => {
            crate::say!(
                "  carts ready found      {} (the simulator made {})",
                found("cart.ready"),
                true_count("Valid")
            );
            crate::say!(
                "  orders found           {} (the simulator made {})",
                found("cart.ordered"),
                true_count("Ordered")
            );
            crate::say!(
                "  sessions expired       {} (the simulator ended {})",
                found("cart.session_expired"),
                true_count("NoSession")
            );
            crate::say!("  requests sent          {} (one session each)", simulator.requests());
        }
    }
    crate::say!("  events written to      {} (deleted with the demo's temporary directory)", events_file.display());
    simulator.stop().await;
    Ok(())
}
