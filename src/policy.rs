//! Pure decisions about time: how long to wait after a failure, how often to poll a cart, and
//! what kind of failure an upstream error is.
//!
//! Nothing here sleeps, reads a clock or draws random numbers: callers pass the attempt
//! number and a uniform sample in `[0, 1)`, so every delay sequence is unit-tested exactly.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::checks::{DAY, LONGEST, MILLISECOND, Problems, SECOND};
use crate::model::UpstreamError;

/// An exponential delay: `initial`, doubling per attempt, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exponential {
    /// The delay before the first retry (attempt 0).
    pub initial: Duration,
    /// The cap.
    pub max: Duration,
}

impl Exponential {
    /// The un-jittered delay for a 0-based attempt: `min(max, initial × 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// "Full jitter": a delay drawn uniformly from `[0, ceiling(attempt)]`, which spreads
    /// retries of many clients best. `unit` is a uniform sample in `[0, 1)`.
    pub fn full_jitter(&self, attempt: u32, unit: f64) -> Duration {
        scale(self.ceiling(attempt), unit.clamp(0.0, 1.0))
    }
}

/// The transient-failure backoff from config.
pub fn transient_backoff(config: &BackoffConfig) -> Exponential {
    Exponential { initial: config.transient_initial, max: config.transient_max }
}

/// The 401 probe backoff from config.
pub fn auth_backoff(config: &BackoffConfig) -> Exponential {
    Exponential { initial: config.auth_initial, max: config.auth_max }
}

/// What kind of failure an upstream error is, which decides what happens next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Wrong or empty apiCode: pause the whole upstream and probe on a growing delay.
    Auth,
    /// Throttled: wait at least this long (when the server said so).
    Throttled(Option<Duration>),
    /// Anything that may pass by itself: back off the batch, count towards the circuit.
    Transient,
    /// Code 102, more than the server's limit of ids: halve the batch size and retry.
    TooManyIds,
    /// Code 501, wrong request body: split the batch to find the cart that causes it.
    WrongBody,
}

/// Classifies an upstream error for a batch of `batch_len` carts.
pub fn classify(error: &UpstreamError, batch_len: usize) -> FailureKind {
    match error {
        UpstreamError::Unauthorized => FailureKind::Auth,
        UpstreamError::Throttled { retry_after, .. } => FailureKind::Throttled(*retry_after),
        UpstreamError::Api { code: Some(102), .. } if batch_len > 1 => FailureKind::TooManyIds,
        UpstreamError::Api { code: Some(501), .. } => FailureKind::WrongBody,
        // 101 is documented per cart; as a general error on a batch it can only mean one of
        // the carts is wrong, which splitting finds.
        UpstreamError::Api { code: Some(101), .. } => FailureKind::WrongBody,
        UpstreamError::Http { .. }
        | UpstreamError::Timeout
        | UpstreamError::Connection(_)
        | UpstreamError::TooLarge { .. }
        | UpstreamError::Decode(_)
        | UpstreamError::Api { .. } => FailureKind::Transient,
    }
}

/// How long to wait before polling a cart again, by its age and whether an order is near
/// (CheckedOut, or Valid on Titelive), before jitter.
pub fn poll_interval(cadence: &CadenceConfig, age: Duration, order_is_near: bool) -> Duration {
    if order_is_near {
        return cadence.checked_out_every;
    }
    cadence.tiers.iter().find(|tier| age < tier.younger_than).map_or(cadence.older_every, |tier| tier.every)
}

/// Spreads an interval by up to `fraction` either way; `unit` is uniform in `[0, 1)`.
/// Never returns less than one second.
pub fn spread(interval: Duration, fraction: f64, unit: f64) -> Duration {
    let factor = 1.0 + fraction * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
    scale(interval, factor).max(Duration::from_secs(1))
}

/// `duration × factor`, saturating instead of panicking as `Duration::mul_f64` does when the
/// product does not fit; a negative or NaN factor gives zero.
pub fn scale(duration: Duration, factor: f64) -> Duration {
    let factor = if factor.is_nan() { 0.0 } else { factor.max(0.0) };
    Duration::try_from_secs_f64(duration.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

/// When to try a delivery again after `attempts_made` failed attempts, from the schedule of
/// delays before each attempt (Svix-style: the first delay is before the first attempt).
/// `None` means the schedule is spent: dead-letter it. The delay is spread by `jitter` either
/// way (`unit` uniform in `[0, 1)`) and is never shorter than the receiver's `Retry-After`.
pub fn redelivery_delay(
    schedule: &[Duration],
    attempts_made: u32,
    jitter: f64,
    unit: f64,
    retry_after: Option<Duration>,
) -> Option<Duration> {
    let planned = *schedule.get(attempts_made as usize)?;
    let spread = scale(planned, 1.0 + jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0));
    Some(retry_after.map_or(spread, |wait| spread.max(wait)))
}

/// One age tier of the polling cadence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CadenceTier {
    /// Applies to carts younger than this.
    #[serde(with = "humantime_serde")]
    pub younger_than: Duration,
    /// Poll interval for those carts.
    #[serde(with = "humantime_serde")]
    pub every: Duration,
}

/// `[cadence]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CadenceConfig {
    /// Age tiers, youngest first.
    pub tiers: Vec<CadenceTier>,
    /// Interval past the last tier.
    #[serde(with = "humantime_serde")]
    pub older_every: Duration,
    /// Interval for CheckedOut carts.
    #[serde(with = "humantime_serde")]
    pub checked_out_every: Duration,
    /// Age at which an unordered cart expires.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Fraction by which intervals are spread either way.
    pub jitter: f64,
}

/// `[backoff]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackoffConfig {
    /// First delay after a transient failure.
    #[serde(with = "humantime_serde")]
    pub transient_initial: Duration,
    /// Cap of the transient delay.
    #[serde(with = "humantime_serde")]
    pub transient_max: Duration,
    /// Failed requests in a row before the circuit opens.
    pub circuit_after: u32,
    /// First probe delay after a 401.
    #[serde(with = "humantime_serde")]
    pub auth_initial: Duration,
    /// Cap of the 401 probe delay.
    #[serde(with = "humantime_serde")]
    pub auth_max: Duration,
    /// Consecutive not-found answers before a cart is given up.
    pub not_found_after: u32,
}

impl CadenceConfig {
    /// Records every problem of this section in `problems`.
    pub fn check(&self, problems: &mut Problems) {
        let mut previous_age = Duration::ZERO;
        for (index, tier) in self.tiers.iter().enumerate() {
            let key = format!("cadence.tiers[{index}]");
            if tier.younger_than <= previous_age {
                problems.add(&key, "tiers must be listed youngest first, each `younger_than` larger than the last");
            }
            problems.duration(&format!("{key}.younger_than"), tier.younger_than, SECOND, LONGEST);
            problems.duration(&format!("{key}.every"), tier.every, SECOND, 365 * DAY);
            previous_age = tier.younger_than;
        }
        problems.duration("cadence.older_every", self.older_every, SECOND, 365 * DAY);
        problems.duration("cadence.checked_out_every", self.checked_out_every, SECOND, 365 * DAY);
        problems.duration("cadence.max_age", self.max_age, SECOND, LONGEST);
        problems.fraction("cadence.jitter", self.jitter);
    }
}

impl BackoffConfig {
    /// Records every problem of this section in `problems`.
    pub fn check(&self, problems: &mut Problems) {
        problems.duration("backoff.transient_initial", self.transient_initial, MILLISECOND, DAY);
        problems.duration("backoff.transient_max", self.transient_max, MILLISECOND, 7 * DAY);
        if self.transient_max < self.transient_initial {
            problems.add("backoff.transient_max", "must not be shorter than backoff.transient_initial");
        }
        problems.duration("backoff.auth_initial", self.auth_initial, MILLISECOND, DAY);
        problems.duration("backoff.auth_max", self.auth_max, MILLISECOND, 7 * DAY);
        if self.auth_max < self.auth_initial {
            problems.add("backoff.auth_max", "must not be shorter than backoff.auth_initial");
        }
        problems.number("backoff.circuit_after", self.circuit_after, 1..=1000);
        // One answer alone never ends the tracking of a cart.
        problems.number("backoff.not_found_after", self.not_found_after, 2..=1000);
    }
}

/// The documented defaults (`config/cartwatch.toml`), for tests across the crate; a test of
/// the config checks that they agree with the file.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    /// `[cadence]` as documented.
    pub fn cadence() -> CadenceConfig {
        CadenceConfig {
            tiers: vec![
                CadenceTier { younger_than: S(3600), every: S(60) },
                CadenceTier { younger_than: S(86_400), every: S(300) },
                CadenceTier { younger_than: S(7 * 86_400), every: S(1800) },
            ],
            older_every: S(6 * 3600),
            checked_out_every: S(60),
            max_age: S(30 * 86_400),
            jitter: 0.1,
        }
    }

    /// `[backoff]` as documented.
    pub fn backoff() -> BackoffConfig {
        BackoffConfig {
            transient_initial: S(5),
            transient_max: S(900),
            circuit_after: 5,
            auth_initial: S(60),
            auth_max: S(3600),
            not_found_after: 5,
        }
    }

    /// `[delivery] schedule` as documented.
    pub fn delivery_schedule() -> Vec<Duration> {
        [0, 5, 300, 1800, 7200, 18_000, 36_000, 36_000].into_iter().map(S).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn transient_delays_double_up_to_the_cap() {
        let backoff = transient_backoff(&fixtures::backoff());
        let ceilings: Vec<Duration> = (0..10).map(|attempt| backoff.ceiling(attempt)).collect();
        assert_eq!(ceilings, [S(5), S(10), S(20), S(40), S(80), S(160), S(320), S(640), S(900), S(900)]);
        assert_eq!(backoff.ceiling(u32::MAX), S(900));
    }

    #[test]
    fn auth_delays_double_from_a_minute_to_an_hour() {
        let backoff = auth_backoff(&fixtures::backoff());
        let ceilings: Vec<u64> = (0..8).map(|attempt| backoff.ceiling(attempt).as_secs()).collect();
        assert_eq!(ceilings, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
    }

    #[test]
    fn full_jitter_stays_within_zero_and_the_ceiling() {
        let backoff = Exponential { initial: S(5), max: S(900) };
        for attempt in 0..12 {
            assert_eq!(backoff.full_jitter(attempt, 0.0), Duration::ZERO);
            let high = backoff.full_jitter(attempt, 0.999_999);
            assert!(high <= backoff.ceiling(attempt) && high > backoff.ceiling(attempt).mul_f64(0.99));
            assert_eq!(backoff.full_jitter(attempt, 0.5), backoff.ceiling(attempt) / 2);
        }
        assert_eq!(backoff.full_jitter(3, 7.0), backoff.ceiling(3), "out-of-range samples are clamped");
    }

    #[test]
    fn classification_of_every_error_kind() {
        let api = |code| UpstreamError::Api { code: Some(code), message: String::new() };
        assert_eq!(classify(&UpstreamError::Unauthorized, 10), FailureKind::Auth);
        assert_eq!(
            classify(&UpstreamError::Throttled { status: 429, retry_after: Some(S(7)) }, 10),
            FailureKind::Throttled(Some(S(7)))
        );
        assert_eq!(classify(&api(1), 10), FailureKind::Transient);
        assert_eq!(classify(&api(102), 10), FailureKind::TooManyIds);
        assert_eq!(classify(&api(102), 1), FailureKind::Transient, "one id cannot be too many");
        assert_eq!(classify(&api(501), 10), FailureKind::WrongBody);
        assert_eq!(classify(&api(101), 4), FailureKind::WrongBody);
        assert_eq!(classify(&UpstreamError::Http { status: 502 }, 10), FailureKind::Transient);
        assert_eq!(classify(&UpstreamError::Timeout, 10), FailureKind::Transient);
        assert_eq!(classify(&UpstreamError::Decode("x".into()), 10), FailureKind::Transient);
        assert_eq!(classify(&UpstreamError::TooLarge { limit: 1 }, 10), FailureKind::Transient);
    }

    #[test]
    fn cadence_by_age_and_status() {
        let cadence = fixtures::cadence();
        let minutes = |m: u64| S(60 * m);
        assert_eq!(poll_interval(&cadence, minutes(0), false), minutes(1));
        assert_eq!(poll_interval(&cadence, minutes(59), false), minutes(1));
        assert_eq!(poll_interval(&cadence, minutes(60), false), minutes(5));
        assert_eq!(poll_interval(&cadence, minutes(60 * 30), false), minutes(30));
        assert_eq!(poll_interval(&cadence, minutes(60 * 24 * 8), false), minutes(360));
        assert_eq!(poll_interval(&cadence, minutes(60 * 24 * 8), true), minutes(1));
    }

    #[test]
    fn redelivery_follows_the_schedule_then_gives_up() {
        let schedule = fixtures::delivery_schedule();
        let delays: Vec<Option<Duration>> =
            (1..=8).map(|attempts| redelivery_delay(&schedule, attempts, 0.0, 0.5, None)).collect();
        let hours = |h: u64| Some(S(3600 * h));
        assert_eq!(delays, [Some(S(5)), Some(S(300)), Some(S(1800)), hours(2), hours(5), hours(10), hours(10), None]);
        // ±20 % jitter.
        assert_eq!(redelivery_delay(&schedule, 2, 0.2, 0.0, None), Some(S(240)));
        assert_eq!(redelivery_delay(&schedule, 2, 0.2, 0.5, None), Some(S(300)));
        assert!(redelivery_delay(&schedule, 2, 0.2, 0.999_999, None).unwrap() <= S(360));
        // Retry-After is a floor, never a shortcut.
        assert_eq!(redelivery_delay(&schedule, 1, 0.2, 0.5, Some(S(60))), Some(S(60)));
        assert_eq!(redelivery_delay(&schedule, 2, 0.0, 0.5, Some(S(60))), Some(S(300)));
        assert_eq!(
            redelivery_delay(&schedule, 8, 0.0, 0.5, Some(S(60))),
            None,
            "Retry-After does not extend the schedule"
        );
    }

    #[test]
    fn scaling_saturates_instead_of_panicking() {
        assert_eq!(scale(Duration::MAX, 1.5), Duration::MAX);
        assert_eq!(scale(S(10), f64::NAN), Duration::ZERO);
        assert_eq!(scale(S(10), -1.0), Duration::ZERO);
        assert_eq!(spread(Duration::MAX, 0.5, 0.999), Duration::MAX);
        let huge = Exponential { initial: Duration::MAX, max: Duration::MAX }.full_jitter(40, 0.9);
        assert!(huge > S(u64::MAX / 2), "{huge:?}");
    }

    #[test]
    fn spread_is_bounded_and_never_below_a_second() {
        assert_eq!(spread(S(100), 0.1, 0.0), S(90));
        assert_eq!(spread(S(100), 0.1, 0.5), S(100));
        assert!(spread(S(100), 0.1, 0.999_999) <= S(110));
        assert_eq!(spread(Duration::from_millis(10), 0.1, 0.5), S(1));
        assert_eq!(spread(S(100), 0.0, 0.9), S(100));
    }
}
