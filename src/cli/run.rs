//! `cartwatch run` and `cartwatch poll-once`: the daemon, and one sweep of it.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use cartwatch::app;
use cartwatch::clock::Clock;
use cartwatch::config::{Config, Loaded, Purpose};
use cartwatch::daemon::{self, DaemonError};
use chrono::Utc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::systemd::Systemd;
use super::{EXIT_DATABASE, EXIT_FAILURE, EXIT_UPSTREAM, Failure, load_config, loaded, open_store};

pub async fn run(config_path: Option<PathBuf>) -> Result<(), Failure> {
    let loaded = loaded(config_path.as_deref(), Purpose::Upstream)?;
    cartwatch::logging::init(&loaded.config.logging);
    log_loaded(&loaded);
    let shutdown = CancellationToken::new();
    let (reload_sender, reloads) = mpsc::unbounded_channel();
    let systemd = Arc::new(Systemd::from_environment());
    spawn_signal_handlers(shutdown.clone(), reload_sender, config_path, Arc::clone(&systemd))
        .context("while installing signal handlers")?;
    app::run(loaded.config, reloads, systemd.hooks(), shutdown).await.map_err(|error| match error {
        app::AppError::Daemon(DaemonError::Store(_)) => Failure::new(EXIT_DATABASE, error),
        other => Failure::new(EXIT_FAILURE, other),
    })
}

pub fn log_loaded(loaded: &Loaded) {
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
pub fn spawn_signal_handlers(
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

pub async fn poll_once(config_path: Option<PathBuf>, all: bool) -> Result<(), Failure> {
    let loaded = loaded(config_path.as_deref(), Purpose::Upstream)?;
    cartwatch::logging::init(&loaded.config.logging);
    log_loaded(&loaded);
    if all {
        let store = open_store(&loaded.config).await?;
        let due = store.make_all_due(Utc::now()).await.map_err(|error| Failure::new(EXIT_DATABASE, error))?;
        drop(store);
        let _ = writeln!(std::io::stderr(), "{due} tracked cart(s) made due");
    }
    let settings = loaded.config.daemon_settings();
    let outcome =
        daemon::poll_once(settings, Clock::system(), CancellationToken::new()).await.map_err(|error| match error {
            DaemonError::Store(_) => Failure::new(EXIT_DATABASE, error),
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
pub fn poll_once_status(outcome: &daemon::PollOnce) -> Result<(), Failure> {
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
