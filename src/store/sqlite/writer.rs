//! The writer thread: batches' outcomes are applied by [`apply_outcomes`], on one connection,
//! those arriving within a moment of each other in one transaction. Its
//! [`CartTransaction`] answers at once, so each apply completes in a single poll.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SendError, Sender};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use rusqlite::{CachedStatement, Connection, OptionalExtension, TransactionBehavior, params};

use super::SqliteStore;
use super::outbox::insert_event;
use super::rows::{CART_BY_KEY, read_cart, stored, stored_naive};
use crate::events::NewEvent;
use crate::model::Cart;
use crate::reconcile::{Context, Transition};
use crate::store::apply::{CartTransaction, apply_outcomes};
use crate::store::{AppliedBatch, Outcome, StoreError};
use crate::time::format_ts;

/// One batch's outcomes for the writer thread.
pub(super) struct ApplyJob {
    pub(super) outcomes: Vec<Outcome>,
    pub(super) context: Context,
    pub(super) reply: tokio::sync::oneshot::Sender<Result<AppliedBatch, StoreError>>,
}

/// What the writer thread has done since the store was opened.
#[derive(Debug, Default)]
pub(super) struct WriterStats {
    busy_nanos: AtomicU64,
    commits: AtomicU64,
    batches: AtomicU64,
}

impl WriterStats {
    fn record(&self, busy: std::time::Duration, batches: u64) {
        self.busy_nanos.fetch_add(u64::try_from(busy.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.batches.fetch_add(batches, Ordering::Relaxed);
    }
}

/// The writer's totals since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WriterTotals {
    /// Time spent writing and committing transactions.
    pub busy: std::time::Duration,
    /// Transactions committed (or attempted).
    pub commits: u64,
    /// Batches written in them.
    pub batches: u64,
}

impl SqliteStore {
    /// What the database writer thread has done since the store was opened.
    pub fn writer_totals(&self) -> WriterTotals {
        let stats = &self.inner.writer_stats;
        WriterTotals {
            busy: std::time::Duration::from_nanos(stats.busy_nanos.load(Ordering::Relaxed)),
            commits: stats.commits.load(Ordering::Relaxed),
            batches: stats.batches.load(Ordering::Relaxed),
        }
    }
}

/// Most batches written in one transaction.
const MAX_GROUP: usize = 64;

/// How long the writer waits for more batches to join the first one. Every commit costs a
/// fixed amount (the WAL header, the pages every group dirties again, a walk of the page
/// cache), so fewer, larger commits cost less CPU; a status reaching the database this much
/// later changes nothing, and a poll lost to a crash in the meantime is polled again. At a
/// partner latency of 20 ms, 50 ms rather than 20 took a third off the writer's time per
/// batch.
const GROUP_LINGER: std::time::Duration = std::time::Duration::from_millis(50);

/// Why the writer thread died, once it has.
#[derive(Debug, Default)]
pub(super) struct WriterFailure {
    pub(super) reason: std::sync::OnceLock<String>,
    pub(super) notify: tokio::sync::Notify,
}

/// What the writer thread is asked to do.
pub(super) enum WriterJob {
    /// Write a batch's outcomes.
    Apply(ApplyJob),
    /// Die, as a bug would make it: for the test that shows a dead writer is noticed.
    #[cfg(test)]
    Crash,
}

/// The way to the writer thread. While the thread gathers a group it is parked rather than
/// waiting in `recv`, so adding a batch wakes nobody (a wake-up and two context switches per
/// batch before); the batch that fills the group wakes it.
pub(super) struct WriterQueue {
    sender: Sender<WriterJob>,
    /// Batches sent since the group being gathered began (taken into it or still queued).
    queued: Arc<AtomicUsize>,
    thread: std::thread::Thread,
}

impl WriterQueue {
    /// Hands `job` to the writer thread.
    ///
    /// Fails when the thread has ended.
    pub(super) fn send(&self, job: WriterJob) -> Result<(), SendError<WriterJob>> {
        self.sender.send(job)?;
        if self.queued.fetch_add(1, Ordering::AcqRel) + 1 >= MAX_GROUP {
            self.thread.unpark();
        }
        Ok(())
    }
}

/// Starts the thread that writes batches' outcomes, grouping those that wait together.
/// It ends when the store (and so the queue's sender) is dropped. Should it die of a bug,
/// `failure` says so and wakes whoever waits on it: nothing would be recorded any more, and
/// a daemon that kept running would only look alive.
pub(super) fn start_apply_thread(
    writer: Arc<Mutex<Connection>>,
    stats: Arc<WriterStats>,
    failure: Arc<WriterFailure>,
) -> Result<WriterQueue, StoreError> {
    let (sender, receiver) = std::sync::mpsc::channel::<WriterJob>();
    let queued = Arc::new(AtomicUsize::new(0));
    let taken = Arc::clone(&queued);
    let handle = std::thread::Builder::new()
        .name("cartwatch-writer".into())
        .spawn(move || {
            let work = std::panic::AssertUnwindSafe(|| write_jobs(&receiver, &taken, &writer, &stats));
            if let Err(panic) = std::panic::catch_unwind(work) {
                let reason = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|text| (*text).to_owned()))
                    .unwrap_or_else(|| "it panicked".into());
                tracing::error!(reason = %reason, "the database writer thread died");
                let _ = failure.reason.set(reason);
                failure.notify.notify_waiters();
            }
        })
        .map_err(|error| StoreError::Task(format!("cannot start the database writer thread: {error}")))?;
    Ok(WriterQueue { sender, queued, thread: handle.thread().clone() })
}

fn write_jobs(receiver: &Receiver<WriterJob>, queued: &AtomicUsize, writer: &Mutex<Connection>, stats: &WriterStats) {
    let take = |job: WriterJob| match job {
        WriterJob::Apply(job) => job,
        #[cfg(test)]
        WriterJob::Crash => panic!("told to crash"),
    };
    while let Ok(first) = receiver.recv() {
        let deadline = std::time::Instant::now() + GROUP_LINGER;
        let mut jobs = vec![take(first)];
        loop {
            while jobs.len() < MAX_GROUP {
                match receiver.try_recv() {
                    Ok(job) => jobs.push(take(job)),
                    Err(_) => break,
                }
            }
            let now = std::time::Instant::now();
            if jobs.len() >= MAX_GROUP || now >= deadline {
                break;
            }
            // Until the deadline, or until the batch that fills the group unparks it (or a
            // spurious wake-up: the loop only looks again).
            std::thread::park_timeout(deadline - now);
        }
        // The count is of batches sent since this group began, taken or still queued.
        queued.fetch_sub(jobs.len(), Ordering::AcqRel);
        let mut connection = writer.lock().unwrap_or_else(PoisonError::into_inner);
        let writing = std::time::Instant::now();
        let batches = jobs.len() as u64;
        write_group(&mut connection, jobs);
        stats.record(writing.elapsed(), batches);
    }
}

/// Writes a group of batches in one transaction. Should one batch fail, the group is rolled
/// back and each batch written in its own transaction, so a failure costs only its batch.
/// (Savepoints would give the same isolation, but sub-journalling every page they touch
/// costs more than the rare retry.) Every job gets its own answer.
fn write_group(connection: &mut Connection, jobs: Vec<ApplyJob>) {
    let together = (|| -> Result<Vec<AppliedBatch>, StoreError> {
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let applied = {
            let mut sqlite = SqliteTransaction::new(&transaction);
            jobs.iter().map(|job| apply_in(&mut sqlite, &job.outcomes, &job.context)).collect::<Result<Vec<_>, _>>()?
        };
        transaction.commit()?;
        Ok(applied)
    })();
    match together {
        Ok(applied) => {
            for (job, applied) in jobs.into_iter().zip(applied) {
                let _ = job.reply.send(Ok(applied));
            }
        }
        Err(error) if error.is_retryable() || jobs.len() == 1 => {
            let mut jobs = jobs.into_iter();
            let first = jobs.next();
            for job in jobs {
                let _ = job.reply.send(Err(error.duplicate()));
            }
            // The first (or only) job gets the error itself, so that a failure that will not
            // pass (a constraint, a trigger) is not mistaken for one that will.
            if let Some(first) = first {
                let _ = first.reply.send(Err(error));
            }
        }
        Err(_) => {
            for job in jobs {
                let alone = (|| -> Result<AppliedBatch, StoreError> {
                    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let applied = apply_in(&mut SqliteTransaction::new(&transaction), &job.outcomes, &job.context)?;
                    transaction.commit()?;
                    Ok(applied)
                })();
                let _ = job.reply.send(alone);
            }
        }
    }
}

/// Applies one batch inside the open transaction.
fn apply_in(
    sqlite: &mut SqliteTransaction<'_>,
    outcomes: &[Outcome],
    context: &Context,
) -> Result<AppliedBatch, StoreError> {
    // Every step of a SQLite transaction answers at once: one poll completes the apply.
    apply_outcomes(sqlite, outcomes, context)
        .now_or_never()
        .unwrap_or_else(|| Err(StoreError::Task("the apply step waited on a SQLite transaction".into())))
}

/// A SQLite transaction as the apply step sees it. The two statements every poll runs are
/// prepared once per transaction, not looked up in the statement cache for each cart.
struct SqliteTransaction<'a> {
    connection: &'a Connection,
    read: Option<CachedStatement<'a>>,
    schedule: Option<CachedStatement<'a>>,
}

impl<'a> SqliteTransaction<'a> {
    fn new(connection: &'a Connection) -> SqliteTransaction<'a> {
        SqliteTransaction { connection, read: None, schedule: None }
    }
}

/// `slot`'s statement, prepared from `sql` on first use.
fn prepared<'s, 'a>(
    slot: &'s mut Option<CachedStatement<'a>>,
    connection: &'a Connection,
    sql: &str,
) -> rusqlite::Result<&'s mut CachedStatement<'a>> {
    if slot.is_none() {
        *slot = Some(connection.prepare_cached(sql)?);
    }
    slot.as_mut().ok_or(rusqlite::Error::InvalidQuery)
}

/// Whether `next` differs from `current` only in the columns the schedule update writes.
fn schedule_only(current: &Cart, next: &Cart) -> bool {
    current.status == next.status
        && current.previous_status == next.previous_status
        && current.state == next.state
        && current.order_id == next.order_id
        && current.order_status == next.order_status
        && current.order_total == next.order_total
        && current.status_changed_at == next.status_changed_at
        && current.finished_at == next.finished_at
}

impl CartTransaction for SqliteTransaction<'_> {
    async fn cart(&mut self, key: i64) -> Result<Option<Cart>, StoreError> {
        let select = prepared(&mut self.read, self.connection, CART_BY_KEY)?;
        Ok(select.query_row([key], read_cart).optional()?)
    }

    async fn write_cart(&mut self, before: &Cart, after: &Cart) -> Result<(), StoreError> {
        if schedule_only(before, after) {
            // Most polls change nothing but the schedule and the bookkeeping; leaving the
            // status, state and order columns out of the statement spares their index.
            prepared(
                &mut self.schedule,
                self.connection,
                "UPDATE carts SET cart_created_at = ?2, cart_created_at_raw = ?3, next_poll_at = ?4, \
                 last_polled_at = ?5, consecutive_errors = ?6, consecutive_not_found = ?7, last_error = ?8, \
                 status_detail = ?9 WHERE cart_key = ?1",
            )?
            .execute(params![
                after.key,
                stored_naive(after.created_at),
                after.created_at_raw,
                stored(after.next_poll_at),
                stored(after.last_polled_at),
                after.consecutive_errors,
                after.consecutive_not_found,
                after.last_error,
                after.status_detail
            ])?;
        } else {
            self.connection
                .prepare_cached(
                    "UPDATE carts SET status = ?2, order_id = ?3, cart_created_at = ?4, cart_created_at_raw = ?5, \
                     state = ?6, next_poll_at = ?7, last_polled_at = ?8, status_changed_at = ?9, \
                     consecutive_errors = ?10, consecutive_not_found = ?11, last_error = ?12, finished_at = ?13, \
                     status_detail = ?14, order_status = ?15, order_total = ?16, previous_status = ?17 \
                     WHERE cart_key = ?1",
                )?
                .execute(params![
                    after.key,
                    after.status,
                    after.order_id,
                    stored_naive(after.created_at),
                    after.created_at_raw,
                    after.state.as_str(),
                    stored(after.next_poll_at),
                    stored(after.last_polled_at),
                    stored(after.status_changed_at),
                    after.consecutive_errors,
                    after.consecutive_not_found,
                    after.last_error,
                    stored(after.finished_at),
                    after.status_detail,
                    after.order_status,
                    after.order_total,
                    after.previous_status
                ])?;
        }
        Ok(())
    }

    async fn insert_transition(
        &mut self,
        cart: &Cart,
        transition: &Transition,
        detected_at: DateTime<Utc>,
        event_id: Option<&str>,
    ) -> Result<(), StoreError> {
        self.connection
            .prepare_cached(
                "INSERT INTO cart_transitions (cart_key, cart_id, from_status, to_status, order_id, detected_at, event_id) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                cart.key,
                cart.cart_id,
                transition.from,
                transition.to,
                cart.order_id,
                format_ts(detected_at),
                event_id
            ])?;
        Ok(())
    }

    async fn insert_event(&mut self, event: &NewEvent) -> Result<(), StoreError> {
        insert_event(self.connection, event).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CartReport, CartState, Observation, TrackRequest};
    use crate::reconcile::fixtures::context_at;
    use crate::reconcile::{PollOutcome, decide};
    use crate::store::sqlite::test_support::temp_store;
    use crate::store::{ReportStore, SweepStore};

    fn observed(status: &str, created_at_raw: &str, detail: Option<&str>) -> Observation {
        Observation {
            status: status.into(),
            known_status: true,
            detail: detail.map(str::to_owned),
            created_at_raw: Some(created_at_raw.into()),
            created_at: crate::time::parse_naive(created_at_raw),
            ..Observation::default()
        }
    }

    fn status(status: &str, created_at_raw: &str, detail: Option<&str>) -> PollOutcome {
        PollOutcome::Report(CartReport::Status(observed(status, created_at_raw, detail)))
    }

    /// Registers one cart of the `shop` model, due at the instant it returns.
    async fn track_one_cart(store: &SqliteStore) -> (String, DateTime<Utc>) {
        let cart_id = "921a2046-66a5-4c5f-b9a6-4bc646fa5e5a".to_owned();
        let request = TrackRequest {
            provider: "shop".into(),
            cart_id: cart_id.clone(),
            session_token: None,
            account: String::new(),
            reference: None,
        };
        let start = crate::time::parse_ts("2026-11-25T07:30:00.000Z").unwrap();
        store.track(vec![request], start, start).await.unwrap();
        (cart_id, start)
    }

    #[tokio::test]
    async fn a_dead_writer_is_reported_not_hidden() {
        let (store, _directory) = temp_store();
        store.inner.apply_queue.send(WriterJob::Crash).unwrap();
        let stopped = tokio::time::timeout(std::time::Duration::from_secs(5), store.writer_stopped()).await.unwrap();
        assert!(matches!(&stopped, StoreError::WriterStopped(reason) if reason.contains("told to crash")), "{stopped}");
        assert!(!stopped.is_retryable());
        let error = SweepStore::apply(&store, vec![(1, PollOutcome::Failed("x".into()), 0.5)], context_at(Utc::now()))
            .await
            .unwrap_err();
        assert!(matches!(error, StoreError::WriterStopped(_)), "{error}");
    }

    /// Text that is not UTF-8, put in a row by hand, is read with replacement characters
    /// rather than failing the read, and the cart is polled as any other.
    #[tokio::test]
    async fn a_row_with_bytes_that_are_not_utf8_is_still_read_and_polled() {
        let (store, _directory) = temp_store();
        let (cart_id, start) = track_one_cart(&store).await;
        rusqlite::Connection::open(store.path())
            .unwrap()
            .execute_batch("UPDATE carts SET reference = CAST(x'6f72646572ff' AS TEXT), status = CAST(x'ff' AS TEXT)")
            .unwrap();
        let before = store.cart(cart_id.clone()).await.unwrap().unwrap();
        assert_eq!((before.reference.as_deref(), before.status.as_deref()), (Some("order\u{fffd}"), Some("\u{fffd}")));
        let outcome = status("Pending", "2026-11-25T07:00:00", None);
        let applied = SweepStore::apply(&store, vec![(before.key, outcome, 0.25)], context_at(start)).await.unwrap();
        assert_eq!(applied.transitions.len(), 1);
        assert_eq!(store.cart(cart_id).await.unwrap().unwrap().status.as_deref(), Some("Pending"));
    }

    /// Whichever statement writes it (only the schedule when the status stays, or the whole
    /// row), the stored cart is exactly what `decide` made of the outcome.
    #[tokio::test]
    async fn both_update_paths_store_exactly_the_decided_cart() {
        let (store, _directory) = temp_store();
        let (cart_id, start) = track_one_cart(&store).await;
        let ordered = PollOutcome::Report(CartReport::Status(Observation {
            order_id: Some("ORD-1".into()),
            order_total: Some("12.50".into()),
            ..observed("Ordered", "2026-11-25T07:00:00.5", None)
        }));
        let outcomes = [
            (status("Pending", "2026-11-25T07:00:00", None), false),
            (status("Pending", "2026-11-25T07:00:00.5", Some("still open")), true),
            (PollOutcome::Failed("connection reset".into()), true),
            (status("CheckedOut", "2026-11-25T07:00:00.5", None), false),
            (ordered, false),
        ];
        for (number, (outcome, schedule_only_expected)) in outcomes.into_iter().enumerate() {
            let before = store.cart(cart_id.clone()).await.unwrap().unwrap();
            let context = context_at(start + chrono::Duration::seconds(number as i64 * 90));
            let decided = decide(&before, &outcome, &context, 0.25).unwrap().cart;
            assert_eq!(schedule_only(&before, &decided), schedule_only_expected, "outcome {number}");
            SweepStore::apply(&store, vec![(before.key, outcome, 0.25)], context).await.unwrap();
            let stored = store.cart(cart_id.clone()).await.unwrap().unwrap();
            assert_eq!(stored, decided, "outcome {number}");
        }
        let last = store.cart(cart_id).await.unwrap().unwrap();
        assert_eq!((last.state, last.order_id.as_deref()), (CartState::Ordered, Some("ORD-1")));
    }
}
