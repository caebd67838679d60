//! When sweeps start: tokio-cron-scheduler ticks, guarded so that sweeps never overlap.
//!
//! The scheduler spawns every activation and has no overlap guard of its own, so a tick only
//! asks for a sweep: if one is running (or already asked for), the tick is skipped and
//! counted. Skipping loses nothing, because what is due lives in the database.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::metrics::counter::Counter;

use croner::parser::{CronParser, Seconds};
use tokio::sync::mpsc;
use tokio_cron_scheduler::{Job, JobScheduler};

/// Checks a cron expression exactly as the scheduler will read it (six fields, seconds
/// first). Returns a message naming the problem.
pub fn parse_cron(expression: &str) -> Result<(), String> {
    let parser = CronParser::builder().seconds(Seconds::Required).dom_and_dow(true).build();
    match parser.parse(expression.trim()) {
        Ok(_) => Ok(()),
        Err(error) => {
            let fields = expression.split_whitespace().count();
            let hint = if fields == 5 {
                "; cartwatch's cron has a seconds field first, e.g. \"0 */5 * * * *\" for every five minutes"
            } else {
                "; expected six fields: sec min hour day-of-month month day-of-week"
            };
            Err(format!("unparsable cron expression {expression:?}: {error}{hint}"))
        }
    }
}

/// Why the scheduler could not start.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// tokio-cron-scheduler refused the schedule or could not start.
    #[error("cannot start the scheduler: {0}")]
    Scheduler(#[from] tokio_cron_scheduler::JobSchedulerError),
    /// The time zone is unknown.
    #[error("unknown time zone {0:?}")]
    TimeZone(String),
}

/// A running schedule: receive ticks from it, and shut it down at the end.
pub struct Schedule {
    scheduler: JobScheduler,
    ticks: mpsc::Receiver<()>,
    busy: Arc<AtomicBool>,
    skipped: Counter,
}

impl Schedule {
    /// Starts ticking on `cron` in `timezone`, counting skipped ticks in `skipped`. Needs a
    /// multi-thread runtime.
    ///
    /// Fails when the expression or zone is invalid or the scheduler cannot start.
    pub async fn start(cron: &str, timezone: &str, skipped: Counter) -> Result<Schedule, ScheduleError> {
        let zone: chrono_tz::Tz = timezone.parse().map_err(|_| ScheduleError::TimeZone(timezone.to_owned()))?;
        let (sender, ticks) = mpsc::channel(1);
        let busy = Arc::new(AtomicBool::new(false));
        let job = {
            let busy = Arc::clone(&busy);
            let skipped = skipped.clone();
            Job::new_async_tz(cron.trim(), zone, move |_id, _scheduler| {
                let running = busy.load(Ordering::SeqCst);
                let queued = !running && sender.try_send(()).is_ok();
                if !queued {
                    let total = skipped.inc() + 1;
                    tracing::info!(skipped_ticks = total, "a sweep is still running; this tick is skipped");
                }
                Box::pin(async {})
            })?
        };
        let scheduler = JobScheduler::new().await?;
        scheduler.add(job).await?;
        scheduler.start().await?;
        Ok(Schedule { scheduler, ticks, busy, skipped })
    }

    /// Waits for the next tick. Returns `None` if the scheduler stopped.
    pub async fn next_tick(&mut self) -> Option<()> {
        self.ticks.recv().await
    }

    /// Marks a sweep as running or finished; ticks while running are skipped.
    pub fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::SeqCst);
    }

    /// Ticks skipped so far.
    pub fn skipped(&self) -> u64 {
        self.skipped.get()
    }

    /// Stops the scheduler.
    pub async fn shutdown(mut self) {
        if let Err(error) = self.scheduler.shutdown().await {
            tracing::debug!(error = %error, "scheduler shutdown reported an error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_needs_a_seconds_field() {
        assert!(parse_cron("*/15 * * * * *").is_ok());
        assert!(parse_cron("0 0 3 * * Mon-Fri").is_ok());
        let error = parse_cron("*/5 * * * *").unwrap_err();
        assert!(error.contains("seconds field first"), "{error}");
        assert!(parse_cron("every minute").is_err());
        assert!(parse_cron("61 * * * * *").is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ticks_arrive_and_are_skipped_while_busy() {
        let mut schedule = Schedule::start("* * * * * *", "UTC", Counter::default()).await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(3), schedule.next_tick()).await.unwrap().unwrap();
        schedule.set_busy(true);
        tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
        assert!(schedule.skipped() >= 1, "ticks during a sweep are skipped");
        schedule.shutdown().await;
    }
}
