//! Talking to systemd: readiness, watchdog pings, reloads and shutdown, through the
//! `NOTIFY_SOCKET` datagram protocol (`sd-notify`). Without `NOTIFY_SOCKET` every call is a
//! no-op, so the same binary runs under systemd, in a terminal or in a test.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use cartwatch::daemon::Hooks;

/// systemd's view of this process.
#[derive(Debug)]
pub struct Systemd {
    watchdog: Option<Duration>,
    last_ping: Mutex<Option<Instant>>,
}

impl Systemd {
    /// Reads `WATCHDOG_USEC` (and `WATCHDOG_PID`) from the environment.
    pub fn from_environment() -> Systemd {
        Systemd { watchdog: sd_notify::watchdog_enabled(), last_ping: Mutex::new(None) }
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if let Err(error) = sd_notify::notify(states) {
            tracing::warn!(error = %error, "cannot notify systemd");
        }
    }

    /// `READY=1`: the config is valid and the database open and migrated.
    pub fn ready(&self) {
        self.send(&[NotifyState::Ready, NotifyState::Status("polling")]);
    }

    /// `RELOADING=1` with the monotonic time systemd 253+ requires.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// `WATCHDOG=1`, at most four times per watchdog interval.
    pub fn alive(&self) {
        let Some(interval) = self.watchdog else { return };
        let mut last_ping = self.last_ping.lock().unwrap_or_else(PoisonError::into_inner);
        if last_ping.is_some_and(|last| last.elapsed() < interval / 4) {
            return;
        }
        *last_ping = Some(Instant::now());
        drop(last_ping);
        self.send(&[NotifyState::Watchdog]);
    }

    /// How often the daemon's loop must report it is alive: half the watchdog interval, at
    /// most every five seconds.
    pub fn alive_every(&self) -> Duration {
        self.watchdog.map_or(Duration::from_secs(5), |interval| (interval / 2).min(Duration::from_secs(5)))
    }

    /// The daemon hooks that report to systemd.
    pub fn hooks(self: &Arc<Systemd>) -> Hooks {
        let ready = Arc::clone(self);
        let alive = Arc::clone(self);
        let reloaded = Arc::clone(self);
        let stopping = Arc::clone(self);
        Hooks {
            ready: Box::new(move || ready.ready()),
            alive: Arc::new(move || alive.alive()),
            alive_every: self.alive_every(),
            // RELOADING=1 is sent when SIGHUP arrives, before the config is read; the daemon
            // reports the reload applied, and systemd hears READY=1 again.
            reloaded: Box::new(move || reloaded.ready()),
            stopping: Box::new(move || stopping.stopping()),
            ..Hooks::default()
        }
    }
}
