//! Time as the runtime sees it: one [`Clock`], passed to everything that asks what time it
//! is or waits for a time, so tests can run backoff, pauses, cadence and retries in
//! simulated time without sleeping.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

/// The clock: the system's, or a manual one a test moves forward. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Clock(Option<Arc<Manual>>);

#[derive(Debug)]
struct Manual {
    now: Mutex<DateTime<Utc>>,
    moved: watch::Sender<DateTime<Utc>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock(None)
    }

    /// A clock standing at `start` until [`advance`](Self::advance) moves it.
    pub fn manual(start: DateTime<Utc>) -> Clock {
        let (moved, _) = watch::channel(start);
        Clock(Some(Arc::new(Manual { now: Mutex::new(start), moved })))
    }

    /// Whether this is a manual clock, which only moves when told to.
    pub fn is_manual(&self) -> bool {
        self.0.is_some()
    }

    /// The current instant.
    pub fn now(&self) -> DateTime<Utc> {
        match &self.0 {
            None => Utc::now(),
            Some(manual) => *manual.now.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// Waits `duration` from now (the call, not the first poll): in real time on the system
    /// clock, until the clock is moved that far on a manual one.
    pub fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
        let clock = self.clone();
        let deadline = self.0.as_ref().map(|_| crate::time::add(self.now(), duration));
        async move {
            match deadline {
                None => tokio::time::sleep(duration).await,
                Some(deadline) => clock.sleep_until(deadline).await,
            }
        }
    }

    /// Waits until `instant`.
    pub async fn sleep_until(&self, instant: DateTime<Utc>) {
        match &self.0 {
            None => {
                if let Ok(wait) = (instant - Utc::now()).to_std() {
                    tokio::time::sleep(wait).await;
                }
            }
            Some(manual) => {
                let mut moved = manual.moved.subscribe();
                while *moved.borrow_and_update() < instant {
                    if moved.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Moves a manual clock forward, waking whatever waits for that time. Does nothing to
    /// the system clock.
    pub fn advance(&self, by: Duration) {
        if let Some(manual) = &self.0 {
            let mut now = manual.now.lock().unwrap_or_else(PoisonError::into_inner);
            *now = crate::time::add(*now, by);
            manual.moved.send_replace(*now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[tokio::test]
    async fn a_manual_clock_wakes_sleepers_only_when_moved_far_enough() {
        let start = Utc.with_ymd_and_hms(2026, 11, 25, 8, 0, 0).unwrap();
        let clock = Clock::manual(start);
        let sleeper = tokio::spawn(clock.sleep(Duration::from_secs(60)));
        clock.advance(Duration::from_secs(59));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_secs(1));
        tokio::time::timeout(Duration::from_secs(1), sleeper).await.unwrap().unwrap();
        assert_eq!(clock.now(), start + chrono::Duration::seconds(60));
    }
}
