//! The health of one partner API as the daemon sees it: healthy, throttled, circuit open or
//! paused on authentication failure; when the next probe may go; the current batch size.
//!
//! A plain state machine driven by explicit times, so every pause, probe and recovery is
//! unit-tested without sleeping. The sweep asks [`UpstreamHealth::gate`] before each request
//! and reports each outcome back; the [`Change`]s it returns are logged, persisted and, for
//! authentication, announced as events.

use chrono::{DateTime, Utc};

use crate::policy::{Exponential, FailureKind};

/// The broad state, as shown by `cartwatch status` and stored in `upstream_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Requests flow.
    Healthy,
    /// Too many transient failures in a row: one probe per delay step.
    CircuitOpen,
    /// The apiCode was rejected: one probe per delay step.
    AuthPaused,
}

impl Mode {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Healthy => "healthy",
            Mode::CircuitOpen => "circuit_open",
            Mode::AuthPaused => "auth_paused",
        }
    }

    /// Reads a stored name.
    pub fn parse(text: &str) -> Option<Mode> {
        [Mode::Healthy, Mode::CircuitOpen, Mode::AuthPaused].into_iter().find(|mode| mode.as_str() == text)
    }
}

/// May a request go now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Yes.
    Send,
    /// Yes, as the one probe of a paused upstream; report its outcome with `probe = true`.
    Probe,
    /// No: not before `until`. `probe_in_flight` says a probe's answer may open it sooner.
    Wait {
        /// The earliest time worth asking again.
        until: DateTime<Utc>,
        /// Whether a probe is under way.
        probe_in_flight: bool,
    },
}

/// A change worth logging and persisting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The apiCode was rejected; polling is paused until a probe succeeds.
    AuthFailed {
        /// When the first probe goes.
        next_probe_at: DateTime<Utc>,
    },
    /// A probe succeeded after an authentication failure.
    AuthRecovered {
        /// When the pause began.
        since: DateTime<Utc>,
    },
    /// Too many failures in a row; the circuit opened.
    CircuitOpened {
        /// Failures in a row.
        failures: u32,
        /// When the first probe goes.
        next_probe_at: DateTime<Utc>,
    },
    /// A probe succeeded; the circuit closed.
    CircuitClosed {
        /// When it opened.
        since: DateTime<Utc>,
    },
    /// A probe failed; the next one waits longer.
    ProbeFailed {
        /// When the next probe goes.
        next_probe_at: DateTime<Utc>,
    },
    /// The server asked for a pause.
    Throttled {
        /// Until when.
        until: DateTime<Utc>,
    },
    /// The server refused the batch size; it was halved.
    BatchSizeReduced {
        /// The new size.
        batch_size: usize,
    },
}

/// Persistable view of the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Broad state.
    pub mode: Mode,
    /// When the current pause began.
    pub since: Option<DateTime<Utc>>,
    /// When the next probe may go.
    pub next_probe_at: Option<DateTime<Utc>>,
    /// Delay steps taken in the current pause.
    pub step: u32,
    /// Failed requests in a row.
    pub consecutive_failures: u32,
    /// Until when the server asked us to hold off.
    pub throttled_until: Option<DateTime<Utc>>,
    /// Current batch size.
    pub batch_size: usize,
}

/// The state machine.
#[derive(Debug, Clone)]
pub struct UpstreamHealth {
    transient: Exponential,
    auth: Exponential,
    circuit_after: u32,
    mode: Mode,
    since: Option<DateTime<Utc>>,
    next_probe_at: Option<DateTime<Utc>>,
    step: u32,
    probe_in_flight: bool,
    consecutive_failures: u32,
    throttled_until: Option<DateTime<Utc>>,
    batch_size: usize,
    configured_batch_size: usize,
}

impl UpstreamHealth {
    /// A healthy upstream with the configured batch size.
    pub fn new(transient: Exponential, auth: Exponential, circuit_after: u32, batch_size: usize) -> UpstreamHealth {
        UpstreamHealth {
            transient,
            auth,
            circuit_after: circuit_after.max(1),
            mode: Mode::Healthy,
            since: None,
            next_probe_at: None,
            step: 0,
            probe_in_flight: false,
            consecutive_failures: 0,
            throttled_until: None,
            batch_size: batch_size.max(1),
            configured_batch_size: batch_size.max(1),
        }
    }

    /// Takes new backoff settings and a new configured batch size from a reloaded config. The
    /// current pause, if any, keeps its schedule; a batch size the partner refused stays
    /// refused unless the new one is smaller.
    pub fn reconfigure(&mut self, transient: Exponential, auth: Exponential, circuit_after: u32, batch_size: usize) {
        self.transient = transient;
        self.auth = auth;
        self.circuit_after = circuit_after.max(1);
        let refused = self.batch_size < self.configured_batch_size;
        self.configured_batch_size = batch_size.max(1);
        self.batch_size =
            if refused { self.batch_size.min(self.configured_batch_size) } else { self.configured_batch_size };
    }

    /// Resumes a pause persisted by an earlier run, probing at once: the config may have
    /// changed since, and a restart should not announce the same failure twice.
    pub fn resume(&mut self, snapshot: &Snapshot, now: DateTime<Utc>) {
        if snapshot.mode != Mode::Healthy {
            self.mode = snapshot.mode;
            self.since = snapshot.since.or(Some(now));
            self.step = snapshot.step;
            self.next_probe_at = Some(now);
        }
        self.consecutive_failures = snapshot.consecutive_failures;
        self.throttled_until = snapshot.throttled_until.filter(|until| *until > now);
        self.batch_size = snapshot.batch_size.clamp(1, self.batch_size);
    }

    /// Adopts the health several daemons share through their store, as it is: the pause
    /// and its schedule, the failures in a row, a throttle, a refused batch size. A probe
    /// this daemon has in flight stays in flight.
    pub fn sync(&mut self, snapshot: &Snapshot) {
        self.mode = snapshot.mode;
        self.since = snapshot.since;
        self.next_probe_at = snapshot.next_probe_at;
        self.step = snapshot.step;
        self.consecutive_failures = snapshot.consecutive_failures;
        self.throttled_until = snapshot.throttled_until;
        self.batch_size = snapshot.batch_size.clamp(1, self.configured_batch_size);
        if self.mode == Mode::Healthy {
            self.probe_in_flight = false;
        }
    }

    /// Gives back a probe [`gate`](Self::gate) granted that another daemon is sending
    /// instead: the schedule stays as it is.
    pub fn release_probe(&mut self) {
        self.probe_in_flight = false;
    }

    /// The current batch size, which a 102 answer halves.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The broad state.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Decides whether a request may go at `now`. Granting a probe marks it in flight.
    pub fn gate(&mut self, now: DateTime<Utc>) -> Gate {
        if let Some(until) = self.throttled_until {
            if until > now {
                return Gate::Wait { until, probe_in_flight: false };
            }
            self.throttled_until = None;
        }
        match self.mode {
            Mode::Healthy => Gate::Send,
            Mode::CircuitOpen | Mode::AuthPaused => {
                let next_probe_at = self.next_probe_at.unwrap_or(now);
                if self.probe_in_flight {
                    Gate::Wait { until: next_probe_at.max(now), probe_in_flight: true }
                } else if now >= next_probe_at {
                    self.probe_in_flight = true;
                    Gate::Probe
                } else {
                    Gate::Wait { until: next_probe_at, probe_in_flight: false }
                }
            }
        }
    }

    /// Records a successful request.
    pub fn on_success(&mut self) -> Option<Change> {
        self.consecutive_failures = 0;
        self.probe_in_flight = false;
        let since = self.since.take();
        let previous = std::mem::replace(&mut self.mode, Mode::Healthy);
        self.next_probe_at = None;
        self.step = 0;
        match (previous, since) {
            (Mode::AuthPaused, Some(since)) => Some(Change::AuthRecovered { since }),
            (Mode::CircuitOpen, Some(since)) => Some(Change::CircuitClosed { since }),
            _ => None,
        }
    }

    /// Records a failed request. `probe` says whether it was the probe granted by
    /// [`gate`](Self::gate); failures of requests sent before a pause began do not step the
    /// delay further.
    pub fn on_failure(&mut self, kind: FailureKind, probe: bool, now: DateTime<Utc>) -> Option<Change> {
        if probe {
            self.probe_in_flight = false;
        }
        match kind {
            FailureKind::Auth => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                if self.mode == Mode::AuthPaused {
                    return probe.then(|| self.step_probe(self.auth, now));
                }
                self.mode = Mode::AuthPaused;
                self.since = Some(now);
                self.step = 0;
                let next_probe_at = crate::time::add(now, self.auth.ceiling(0));
                self.next_probe_at = Some(next_probe_at);
                Some(Change::AuthFailed { next_probe_at })
            }
            FailureKind::Throttled(retry_after) => {
                let delay = retry_after.unwrap_or_else(|| self.transient.ceiling(self.consecutive_failures));
                let until = crate::time::add(now, delay);
                self.throttled_until = Some(self.throttled_until.map_or(until, |current| current.max(until)));
                Some(Change::Throttled { until })
            }
            FailureKind::Transient => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                match self.mode {
                    Mode::AuthPaused => probe.then(|| self.step_probe(self.auth, now)),
                    Mode::CircuitOpen => probe.then(|| self.step_probe(self.transient, now)),
                    Mode::Healthy if self.consecutive_failures >= self.circuit_after => {
                        self.mode = Mode::CircuitOpen;
                        self.since = Some(now);
                        self.step = 0;
                        let next_probe_at = crate::time::add(now, self.transient.ceiling(0));
                        self.next_probe_at = Some(next_probe_at);
                        Some(Change::CircuitOpened { failures: self.consecutive_failures, next_probe_at })
                    }
                    Mode::Healthy => None,
                }
            }
            // Halving needs the refused batch's length: see `on_too_many_ids`.
            FailureKind::TooManyIds => None,
            FailureKind::WrongBody => None,
        }
    }

    /// Records a code 102 for a batch of `batch_len` ids: the batch size becomes at most half
    /// of that, so a refusal of a batch formed before an earlier halving halves nothing twice.
    pub fn on_too_many_ids(&mut self, batch_len: usize) -> Option<Change> {
        let halved = (batch_len / 2).max(1);
        if halved >= self.batch_size {
            return None;
        }
        self.batch_size = halved;
        Some(Change::BatchSizeReduced { batch_size: halved })
    }

    /// When a paused or throttled upstream next accepts a request, if it is closed now.
    pub fn reopens_at(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let throttled = self.throttled_until.filter(|until| *until > now);
        let probe = match self.mode {
            Mode::Healthy => None,
            Mode::CircuitOpen | Mode::AuthPaused => self.next_probe_at,
        };
        match (throttled, probe) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    fn step_probe(&mut self, backoff: Exponential, now: DateTime<Utc>) -> Change {
        self.step = self.step.saturating_add(1);
        let next_probe_at = crate::time::add(now, backoff.ceiling(self.step));
        self.next_probe_at = Some(next_probe_at);
        Change::ProbeFailed { next_probe_at }
    }

    /// Lets the next request through as a probe at once, as after a config reload.
    pub fn probe_now(&mut self, now: DateTime<Utc>) {
        if self.mode != Mode::Healthy {
            self.next_probe_at = Some(now);
            self.probe_in_flight = false;
        }
    }

    /// The persistable view.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            mode: self.mode,
            since: self.since,
            next_probe_at: self.next_probe_at,
            step: self.step,
            consecutive_failures: self.consecutive_failures,
            throttled_until: self.throttled_until,
            batch_size: self.batch_size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration as ChronoDuration, TimeZone};
    use std::time::Duration;

    fn health() -> UpstreamHealth {
        UpstreamHealth::new(
            Exponential { initial: Duration::from_secs(5), max: Duration::from_secs(900) },
            Exponential { initial: Duration::from_secs(60), max: Duration::from_secs(3600) },
            3,
            10,
        )
    }

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 8, 0, 0).unwrap()
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        t0() + ChronoDuration::seconds(seconds)
    }

    #[test]
    fn auth_failure_pauses_and_probes_on_a_doubling_delay() {
        let mut health = health();
        assert_eq!(health.gate(at(0)), Gate::Send);
        assert_eq!(
            health.on_failure(FailureKind::Auth, false, at(0)),
            Some(Change::AuthFailed { next_probe_at: at(60) })
        );
        // Requests sent before the pause that fail later change nothing and announce nothing.
        assert_eq!(health.on_failure(FailureKind::Auth, false, at(1)), None);
        assert_eq!(health.gate(at(30)), Gate::Wait { until: at(60), probe_in_flight: false });
        let mut probes = Vec::new();
        let mut now = 0;
        while now <= 3 * 3600 {
            if health.gate(at(now)) == Gate::Probe {
                probes.push(now);
                assert!(matches!(health.gate(at(now)), Gate::Wait { probe_in_flight: true, .. }));
                health.on_failure(FailureKind::Auth, true, at(now));
            }
            now += 1;
        }
        assert_eq!(probes, [60, 180, 420, 900, 1860, 3780, 7380]);
        assert_eq!(health.on_success(), Some(Change::AuthRecovered { since: at(0) }));
        assert_eq!(health.gate(at(10981)), Gate::Send);
    }

    #[test]
    fn circuit_opens_after_repeated_failures_and_closes_on_a_probe_success() {
        let mut health = health();
        assert_eq!(health.on_failure(FailureKind::Transient, false, at(0)), None);
        assert_eq!(health.on_failure(FailureKind::Transient, false, at(0)), None);
        assert_eq!(
            health.on_failure(FailureKind::Transient, false, at(0)),
            Some(Change::CircuitOpened { failures: 3, next_probe_at: at(5) })
        );
        assert_eq!(health.gate(at(4)), Gate::Wait { until: at(5), probe_in_flight: false });
        assert_eq!(health.gate(at(5)), Gate::Probe);
        assert_eq!(
            health.on_failure(FailureKind::Transient, true, at(5)),
            Some(Change::ProbeFailed { next_probe_at: at(15) })
        );
        assert_eq!(health.gate(at(15)), Gate::Probe);
        assert_eq!(health.on_success(), Some(Change::CircuitClosed { since: at(0) }));
        assert_eq!(health.snapshot().consecutive_failures, 0);
    }

    #[test]
    fn success_resets_the_failure_count() {
        let mut health = health();
        health.on_failure(FailureKind::Transient, false, at(0));
        health.on_failure(FailureKind::Transient, false, at(0));
        assert_eq!(health.on_success(), None);
        assert_eq!(health.on_failure(FailureKind::Transient, false, at(0)), None, "the count restarted");
    }

    #[test]
    fn throttling_waits_at_least_retry_after() {
        let mut health = health();
        assert_eq!(
            health.on_failure(FailureKind::Throttled(Some(Duration::from_secs(30))), false, at(0)),
            Some(Change::Throttled { until: at(30) })
        );
        assert_eq!(health.gate(at(29)), Gate::Wait { until: at(30), probe_in_flight: false });
        assert_eq!(health.gate(at(30)), Gate::Send);
    }

    #[test]
    fn too_many_ids_halves_the_batch_size_down_to_one() {
        let mut health = health();
        let sizes: Vec<usize> = (0..5)
            .map(|_| {
                health.on_too_many_ids(health.batch_size());
                health.batch_size()
            })
            .collect();
        assert_eq!(sizes, [5, 2, 1, 1, 1]);
    }

    #[test]
    fn a_stale_large_batch_does_not_halve_twice() {
        let mut health = health();
        assert_eq!(health.on_too_many_ids(10), Some(Change::BatchSizeReduced { batch_size: 5 }));
        // Another batch of 10, formed before the first answer, is refused too.
        assert_eq!(health.on_too_many_ids(10), None);
        assert_eq!(health.batch_size(), 5);
        assert_eq!(health.on_too_many_ids(5), Some(Change::BatchSizeReduced { batch_size: 2 }));
    }

    #[test]
    fn a_reload_takes_the_new_batch_size_unless_the_partner_refused_a_smaller_one() {
        let backoffs = |h: &UpstreamHealth| (h.transient, h.auth);
        let mut health = health();
        let (transient, auth) = backoffs(&health);
        health.reconfigure(transient, auth, 3, 6);
        assert_eq!(health.batch_size(), 6);
        health.reconfigure(transient, auth, 3, 10);
        assert_eq!(health.batch_size(), 10);
        health.on_too_many_ids(10);
        health.reconfigure(transient, auth, 3, 8);
        assert_eq!(health.batch_size(), 5, "the partner refused more than 5");
        health.reconfigure(transient, auth, 3, 2);
        assert_eq!(health.batch_size(), 2);
    }

    #[test]
    fn reopening_time_of_a_closed_upstream() {
        let mut health = health();
        assert_eq!(health.reopens_at(at(0)), None);
        health.on_failure(FailureKind::Auth, false, at(0));
        assert_eq!(health.reopens_at(at(0)), Some(at(60)));
        health.on_failure(FailureKind::Throttled(Some(Duration::from_secs(120))), false, at(0));
        assert_eq!(health.reopens_at(at(0)), Some(at(120)));
    }

    #[test]
    fn probe_now_after_a_reload() {
        let mut health = health();
        health.on_failure(FailureKind::Auth, false, at(0));
        health.probe_now(at(10));
        assert_eq!(health.gate(at(10)), Gate::Probe);
    }

    #[test]
    fn a_persisted_pause_resumes_with_an_immediate_probe_and_no_new_announcement() {
        let mut before = health();
        before.on_failure(FailureKind::Auth, false, at(0));
        let mut after = health();
        after.resume(&before.snapshot(), at(100));
        assert_eq!(after.mode(), Mode::AuthPaused);
        assert_eq!(after.gate(at(100)), Gate::Probe);
        assert!(matches!(after.on_failure(FailureKind::Auth, true, at(100)), Some(Change::ProbeFailed { .. })));
    }
}
