//! When sweeps start: tokio-cron-scheduler ticks, guarded so that sweeps never overlap.
//!
//! The scheduler spawns every activation and has no overlap guard of its own, so a tick only
//! asks for a sweep: if one is running (or already asked for), the tick is skipped and
//! counted. Skipping loses nothing, because what is due lives in the database.
//!
//! On a manual [`Clock`] (tests in simulated time) the same expression is followed on that
//! clock instead, each tick when the clock reaches the expression's next time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus::IntCounter as Counter;

use croner::Cron;
use croner::parser::{CronParser, Seconds};
use tokio::sync::mpsc;
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::clock::Clock;

fn parser() -> CronParser {
    CronParser::builder().seconds(Seconds::Required).dom_and_dow(true).build()
}

/// Checks a cron expression exactly as the scheduler will read it (six fields, seconds
/// first). Returns a message naming the problem.
pub fn parse_cron(expression: &str) -> Result<(), String> {
    match parser().parse(expression.trim()) {
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
    /// The expression cannot be read.
    #[error("{0}")]
    Expression(String),
    /// The time zone is unknown.
    #[error("unknown time zone {0:?}")]
    TimeZone(String),
}

/// A running schedule: receive ticks from it, and shut it down at the end.
pub struct Schedule {
    ticker: Ticker,
    ticks: mpsc::Receiver<()>,
    busy: Arc<AtomicBool>,
    skipped: Counter,
}

/// What makes the ticks.
enum Ticker {
    /// tokio-cron-scheduler, on the system clock.
    System(JobScheduler),
    /// A task following the expression on a manual clock.
    Manual(tokio::task::JoinHandle<()>),
}

/// Asks for a sweep, unless one is running or already asked for; then counts a skipped tick.
fn tick(sender: &mpsc::Sender<()>, busy: &AtomicBool, skipped: &Counter) {
    let running = busy.load(Ordering::SeqCst);
    let queued = !running && sender.try_send(()).is_ok();
    if !queued {
        skipped.inc();
        let total = skipped.get();
        tracing::info!(skipped_ticks = total, "a sweep is still running; this tick is skipped");
    }
}

impl Schedule {
    /// Starts ticking on `cron` in `timezone` on `clock`, counting skipped ticks in
    /// `skipped`. Needs a multi-thread runtime.
    ///
    /// Fails when the expression or zone is invalid or the scheduler cannot start.
    pub async fn start(cron: &str, timezone: &str, skipped: Counter, clock: &Clock) -> Result<Schedule, ScheduleError> {
        let zone: chrono_tz::Tz = timezone.parse().map_err(|_| ScheduleError::TimeZone(timezone.to_owned()))?;
        let (sender, ticks) = mpsc::channel(1);
        let busy = Arc::new(AtomicBool::new(false));
        let ticker = if clock.is_manual() {
            let expression: Cron =
                parser().parse(cron.trim()).map_err(|error| ScheduleError::Expression(error.to_string()))?;
            let (clock, busy, skipped) = (clock.clone(), Arc::clone(&busy), skipped.clone());
            Ticker::Manual(tokio::spawn(async move {
                loop {
                    let now = clock.now().with_timezone(&zone);
                    let Ok(next) = expression.find_next_occurrence(&now, false) else { return };
                    clock.sleep_until(next.with_timezone(&chrono::Utc)).await;
                    tick(&sender, &busy, &skipped);
                }
            }))
        } else {
            let job = {
                let busy = Arc::clone(&busy);
                let skipped = skipped.clone();
                Job::new_async_tz(cron.trim(), zone, move |_id, _scheduler| {
                    tick(&sender, &busy, &skipped);
                    Box::pin(async {})
                })?
            };
            let scheduler = JobScheduler::new().await?;
            scheduler.add(job).await?;
            scheduler.start().await?;
            Ticker::System(scheduler)
        };
        Ok(Schedule { ticker, ticks, busy, skipped })
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
    pub async fn shutdown(self) {
        match self.ticker {
            Ticker::System(mut scheduler) => {
                if let Err(error) = scheduler.shutdown().await {
                    tracing::debug!(error = %error, "scheduler shutdown reported an error");
                }
            }
            Ticker::Manual(task) => task.abort(),
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
        let mut schedule =
            Schedule::start("* * * * * *", "UTC", Counter::new("skipped", "skipped").unwrap(), &Clock::system())
                .await
                .unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(3), schedule.next_tick()).await.unwrap().unwrap();
        schedule.set_busy(true);
        tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
        assert!(schedule.skipped() >= 1, "ticks during a sweep are skipped");
        schedule.shutdown().await;
    }

    #[tokio::test]
    async fn on_a_manual_clock_ticks_follow_the_clock() {
        let start = chrono::DateTime::parse_from_rfc3339("2026-11-25T08:00:00.5Z").unwrap().to_utc();
        let clock = Clock::manual(start);
        let mut schedule =
            Schedule::start("*/10 * * * * *", "UTC", Counter::new("skipped", "skipped").unwrap(), &clock)
                .await
                .unwrap();
        tokio::task::yield_now().await;
        clock.advance(std::time::Duration::from_secs(9));
        let early = tokio::time::timeout(std::time::Duration::from_millis(50), schedule.next_tick()).await;
        assert!(early.is_err(), "no tick before 08:00:10");
        clock.advance(std::time::Duration::from_secs(1));
        tokio::time::timeout(std::time::Duration::from_secs(1), schedule.next_tick()).await.unwrap().unwrap();
        schedule.shutdown().await;
    }
}
