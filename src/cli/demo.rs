//! `cartwatch demo`: the whole job on one machine with nothing to configure. A simulator
//! plays the partner, a temporary database holds the state, the real daemon polls on a fast
//! schedule, and each event is printed as it is written.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use cartwatch::app;
use cartwatch::config::Config;
use cartwatch::daemon::Hooks;
use cartwatch::model::TrackRequest;
use cartwatch::provider::imaterialise::items::ItemAction;
use cartwatch::render::render_event_line;
use cartwatch_simulator::{DEMO_API_CODE, Simulator, SimulatorSettings};

/// The longest the demo runs.
const TIME_LIMIT: Duration = Duration::from_secs(50);

/// Which partner the demo plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partner {
    /// i.materialise.
    Imaterialise,
    /// Titelive.
    Titelive,
}

impl Partner {
    /// Reads a provider name.
    pub fn parse(name: &str) -> Option<Partner> {
        match name.trim().to_ascii_lowercase().as_str() {
            "imaterialise" => Some(Partner::Imaterialise),
            "titelive" => Some(Partner::Titelive),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Partner::Imaterialise => "imaterialise",
            Partner::Titelive => "titelive",
        }
    }
}

/// Runs the demo: `carts` simulated carts of `provider` on the timeline of `seed`.
///
/// Fails when the simulator cannot bind a loopback port or the temporary database cannot be
/// created.
pub async fn run(provider: Partner, carts: usize, seed: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    let directory = tempfile::tempdir().context("while creating a temporary directory")?;
    let carts = carts.clamp(1, 10_000);
    let settings = match provider {
        Partner::Imaterialise => SimulatorSettings { seed, carts, unknown_carts: 3, ..SimulatorSettings::default() },
        Partner::Titelive => SimulatorSettings {
            seed,
            carts: 0,
            unknown_carts: 0,
            titelive_sessions: carts,
            ..SimulatorSettings::default()
        },
    };
    let simulator = Simulator::start(settings, "127.0.0.1:0".parse()?).await.context("while starting the simulator")?;
    let database = directory.path().join("cartwatch.db");
    let mut config = Config::polling_every_second(&simulator.base_url(), DEMO_API_CODE, &database);
    if provider == Partner::Titelive {
        config.imaterialise.enabled = false;
        config.titelive.enabled = true;
        config.titelive.base_url = simulator.base_url();
        config.titelive.requests_per_second = 0.0;
    }
    let events_file = directory.path().join("events.jsonl");
    config.sinks.log.path = events_file.clone();
    cartwatch::logging::init(&config.logging);

    crate::say!("cartwatch demo: a simulated partner on {},", simulator.base_url());
    crate::say!("a temporary database, polling every second.");
    let store = cartwatch::store::open(&config.database, true).await?;
    let providers = config.providers();
    let ids = match provider {
        Partner::Imaterialise => simulator.cart_ids(),
        Partner::Titelive => simulator.session_tokens(),
    };
    let requests: Vec<TrackRequest> = ids
        .iter()
        .enumerate()
        .filter_map(|(index, id)| {
            let reference = Some(format!("demo-{:02}", index + 1));
            providers.track_request(provider.name(), id, Some("00000"), reference).ok()
        })
        .collect();
    let tracked = requests.len();
    let now = Utc::now();
    store.track(requests, now, now).await?;
    match provider {
        Partner::Imaterialise => crate::say!(
            "Tracking {tracked} i.materialise carts ({} unknown to the partner).\nEvents as they happen:\n",
            simulator.unknown_cart_ids().len()
        ),
        Partner::Titelive => {
            crate::say!("Tracking {tracked} Titelive sessions (shop domain 00000).\nEvents as they happen:\n")
        }
    }

    // One item change, as a shop would make before sending the customer to pay: it shows
    // as a `cart.items_changed` event among the others.
    if provider == Partner::Imaterialise {
        let unknown = simulator.unknown_cart_ids();
        let cart = ids.iter().find(|id| !unknown.contains(id));
        let item = simulator.items().into_iter().next().map(|(id, _)| id);
        let services = app::build_services(&store, &config, &cartwatch::clock::Clock::system())?;
        if let (Some(cart), Some(item), Some(items)) = (cart, item, services.items) {
            let change = items.change(ItemAction::Add, &cart.to_string(), &[item], false).await;
            if let Err(error) = change {
                crate::say!("  (the item change was refused: {error})");
            }
        }
    }

    let shutdown = CancellationToken::new();
    let (_reload_sender, reloads) = mpsc::unbounded_channel();
    let daemon_task = tokio::spawn(app::run(config, reloads, Hooks::default(), shutdown.clone()));

    let mut cursor = 0;
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    let mut checked_out = std::collections::HashSet::<String>::new();
    let mut quiet_since_settled: Option<Instant> = None;
    while started.elapsed() < TIME_LIMIT {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for event in store.events_after(cursor, 1000).await? {
            cursor = event.seq;
            *counts.entry(event.event_type.clone()).or_default() += 1;
            let again = event.event_type == "cart.checked_out"
                && !checked_out.insert(event.cart_id.clone().unwrap_or_default());
            crate::say!("{}", render_event_line(&event, started.elapsed()));
            if again {
                crate::say!("           (checked out again: the customer went back to Pending first)");
            }
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
        Partner::Imaterialise => {
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
        Partner::Titelive => {
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
    // Where every cart ended, from the database.
    let summary = store.summary(Utc::now()).await?;
    let mut states = std::collections::BTreeMap::<String, u64>::new();
    for (state, status, carts) in &summary.carts {
        let key = match (state.as_str(), status) {
            ("tracking", Some(status)) => format!("still tracked, {status}"),
            ("tracking", None) => "still tracked, not seen yet".to_owned(),
            (state, _) => state.replace('_', " "),
        };
        *states.entry(key).or_default() += carts;
    }
    crate::say!("  where the {} carts are:", states.values().sum::<u64>());
    for (state, carts) in &states {
        crate::say!("    {carts:>4}  {state}");
    }
    crate::say!("  (the events also went to a log file, deleted with the demo)");
    crate::say!("\nNext, try it on your own, in two terminals:");
    crate::say!("  cartwatch simulate       # a partner with carts and items, on 127.0.0.1:8900");
    crate::say!("  export CARTWATCH__IMATERIALISE__BASE_URL=http://127.0.0.1:8900 \\");
    crate::say!("    CARTWATCH__IMATERIALISE__API_CODE={DEMO_API_CODE} \\");
    crate::say!("    CARTWATCH__DATABASE__PATH=$PWD/cartwatch.db");
    crate::say!("  cartwatch track ID       # an id from http://127.0.0.1:8900/_sim/carts");
    crate::say!("  cartwatch run            # then: cartwatch status, cartwatch items add ...");
    simulator.stop().await;
    Ok(())
}
