//! Whether the daemon is alive and making progress, for the systemd watchdog.
//!
//! The daemon's loop runs beside the sweep, so it stays responsive while a sweep waits; it
//! pings the watchdog on its own between sweeps, and during a sweep only while the sweep
//! shows progress. Every request, every write attempt (waiting out another process's lock
//! included) and every wait for the upstream marks progress; a sweep that marks nothing for
//! longer than any of its bounded waits could take is stuck, and the watchdog is left to
//! restart the daemon.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The time of the latest progress mark.
#[derive(Debug)]
pub struct Progress {
    origin: Instant,
    last_millis: AtomicU64,
}

impl Default for Progress {
    fn default() -> Progress {
        Progress { origin: Instant::now(), last_millis: AtomicU64::new(0) }
    }
}

impl Progress {
    /// Records progress now.
    pub fn mark(&self) {
        let millis = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_millis.fetch_max(millis, Ordering::Relaxed);
    }

    /// How long ago progress was last marked.
    pub fn since_last(&self) -> Duration {
        self.origin.elapsed().saturating_sub(Duration::from_millis(self.last_millis.load(Ordering::Relaxed)))
    }
}

/// Whether the daemon may tell the watchdog it is alive: always between sweeps (the loop
/// that asks is running), and during a sweep while its latest progress is more recent than
/// `stall_limit`.
pub fn alive(sweeping: bool, since_progress: Duration, stall_limit: Duration) -> bool {
    !sweeping || since_progress <= stall_limit
}

/// How long a sweep may go without progress before it counts as stuck: twice the longest
/// bounded wait it can be in (a request up to its timeout, a statement up to the busy
/// timeout), plus a minute.
pub fn stall_limit(request_timeout: Duration, busy_timeout: Duration) -> Duration {
    request_timeout.max(busy_timeout).saturating_mul(2).saturating_add(Duration::from_secs(60))
}

/// Sweeps that failed in a row before the daemon stops calling itself ready.
pub const FAILED_SWEEPS_NOT_READY: u32 = 3;

/// Whether sweeps are working, for the readiness probe: a daemon whose sweeps keep failing
/// (it cannot read due carts or record outcomes) is up but not doing its job.
#[derive(Debug, Default)]
pub struct DaemonHealth {
    failed_sweeps: AtomicU32,
    last_failure: Mutex<Option<String>>,
}

impl DaemonHealth {
    /// Records a round of sweeps: `failure` says why it failed, `None` that it worked.
    pub fn record_sweep(&self, failure: Option<String>) {
        match failure {
            Some(reason) => {
                self.failed_sweeps.fetch_add(1, Ordering::Relaxed);
                *self.last_failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
            }
            None => self.failed_sweeps.store(0, Ordering::Relaxed),
        }
    }

    /// Why the daemon is not ready, when its last sweeps all failed.
    pub fn problem(&self) -> Option<String> {
        let failed = self.failed_sweeps.load(Ordering::Relaxed);
        (failed >= FAILED_SWEEPS_NOT_READY).then(|| {
            let reason = self.last_failure.lock().unwrap_or_else(PoisonError::into_inner).clone().unwrap_or_default();
            format!("the last {failed} sweeps failed; the latest: {reason}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_is_alive_while_it_makes_progress() {
        let limit = stall_limit(Duration::from_secs(30), Duration::from_secs(5));
        assert_eq!(limit, Duration::from_secs(120));
        assert!(alive(false, Duration::from_secs(3600), limit), "between sweeps the loop itself is the proof");
        assert!(alive(true, Duration::from_secs(119), limit), "waiting on a lock or a slow partner");
        assert!(!alive(true, Duration::from_secs(121), limit), "no progress for longer than any wait: stuck");
    }

    #[test]
    fn sweeps_failing_in_a_row_make_the_daemon_not_ready() {
        let health = DaemonHealth::default();
        for _ in 1..FAILED_SWEEPS_NOT_READY {
            health.record_sweep(Some("no such index: carts_due".into()));
            assert_eq!(health.problem(), None, "one failure may pass");
        }
        health.record_sweep(Some("no such index: carts_due".into()));
        assert!(health.problem().unwrap().contains("carts_due"));
        health.record_sweep(None);
        assert_eq!(health.problem(), None);
    }

    #[test]
    fn marks_move_forward() {
        let progress = Progress::default();
        std::thread::sleep(Duration::from_millis(20));
        assert!(progress.since_last() >= Duration::from_millis(20));
        progress.mark();
        assert!(progress.since_last() < Duration::from_millis(20));
    }
}
