//! The whole service as `cartwatch run` runs it: the [`Daemon`], and beside it the HTTP API
//! with the item and confirm services, all built from one [`Config`] and reloaded together.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::clock::Clock;
use crate::config::Config;
use crate::confirm::ConfirmService;
use crate::daemon::{Daemon, DaemonError, Hooks};
use crate::http_api::{self, Services};
use crate::items::ItemsService;
use crate::model::UpstreamError;
use crate::provider::imaterialise::Imaterialise;
use crate::provider::titelive::Titelive;
use crate::store::Store;

/// Why the service could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The daemon could not start or had to stop.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// The item or confirm service could not be set up.
    #[error(transparent)]
    Setup(#[from] UpstreamError),
    /// The HTTP API could not listen on its address.
    #[error("the HTTP API cannot listen on {address}: {source}")]
    Http {
        /// The configured address.
        address: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// How long the HTTP API may take to finish the requests in progress at shutdown.
const HTTP_GRACE: Duration = Duration::from_secs(2);

/// Runs the daemon and the HTTP API until `shutdown` is cancelled. Configs sent on `reloads`
/// are applied whole; keys that need a restart are named in one log line.
///
/// Fails when the database cannot be opened, the HTTP API cannot bind its address, or the
/// daemon fails (see [`Daemon::run`]).
pub async fn run(
    config: Config,
    mut reloads: mpsc::UnboundedReceiver<Config>,
    hooks: Hooks,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    let clock = Clock::system();
    let daemon = Daemon::open(config.daemon_settings(), clock.clone()).await?;
    let store = daemon.store();
    let services = Arc::new(RwLock::new(build_services(&store, &config, &clock)?));
    let stop_http = CancellationToken::new();
    let http = match config.http.address() {
        Some(address) => {
            let listener = http_api::bind(address).await.map_err(|source| AppError::Http { address, source })?;
            let state = http_api::ApiState {
                store: Arc::clone(&store),
                clock: clock.clone(),
                metrics: daemon.metrics(),
                token: (!config.http.token.is_empty()).then(|| config.http.token.clone()),
                services: Arc::clone(&services),
                health: daemon.health(),
            };
            let limits = http_api::Limits::from_config(&config.http);
            Some(tokio::spawn(http_api::serve(listener, state, limits, stop_http.clone())))
        }
        None => None,
    };

    let (settings_sender, settings_receiver) = mpsc::unbounded_channel();
    let forward = {
        let services = Arc::clone(&services);
        let mut current = config;
        async move {
            while let Some(new) = reloads.recv().await {
                let restart = restart_needed(&current, &new);
                if !restart.is_empty() {
                    warn!(
                        keys = %restart.join(", "),
                        "these changed settings take effect only when cartwatch restarts (systemctl restart cartwatch); everything else is applied"
                    );
                }
                match build_services(&store, &new, &clock) {
                    Ok(built) => *services.write().unwrap_or_else(PoisonError::into_inner) = built,
                    Err(error) => {
                        error!(error = %error, "cannot apply the new config to item changes and confirmations")
                    }
                }
                if settings_sender.send(new.daemon_settings()).is_err() {
                    return;
                }
                current = new;
            }
        }
    };
    let forwarding = tokio::spawn(forward);
    let result = daemon.run(settings_receiver, hooks, shutdown).await;
    forwarding.abort();
    stop_http.cancel();
    if let Some(http) = http
        && tokio::time::timeout(HTTP_GRACE, http).await.is_err()
    {
        warn!("HTTP requests in progress did not finish in time");
    }
    Ok(result?)
}

/// The services the HTTP API offers, for the providers `config` enables.
///
/// Fails when a service's HTTP client cannot be built.
pub fn build_services(store: &Arc<dyn Store>, config: &Config, clock: &Clock) -> Result<Services, UpstreamError> {
    let rules = Arc::new(config.rules());
    let items = match config.imaterialise.enabled {
        true => Some(Arc::new(ItemsService::new(
            Arc::clone(store),
            Arc::new(Imaterialise::new(config.imaterialise.clone())),
            config.items.clone(),
            Arc::clone(&rules),
            clock.clone(),
        )?)),
        false => None,
    };
    let confirm = match config.titelive.enabled {
        true => Some(Arc::new(ConfirmService::new(
            Arc::clone(store),
            Arc::new(Titelive::new(config.titelive.clone())),
            rules,
            clock.clone(),
        )?)),
        false => None,
    };
    Ok(Services { providers: config.providers(), items, confirm })
}

/// The settings a running service cannot change: it holds the database open, listens on the
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
