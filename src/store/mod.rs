//! The SQLite store: the only module that touches rusqlite.
//!
//! Everything the daemon knows lives here: tracked carts and when each is due, the transitions
//! seen, the events outbox and each sink's delivery state, the upstream's health. The rest of
//! the program sees a narrow async interface; a PostgreSQL store for several daemons sharing
//! the work would implement the same methods.
//!
//! rusqlite is blocking, so every call runs on tokio's blocking pool, one writer connection
//! and one reader connection, each behind a mutex. No transaction is ever held across network
//! I/O: callers fetch first, then hand the outcome to one short write transaction.

mod carts;
mod items;
mod outbox;
mod reports;
pub mod schema;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

pub use carts::{AppliedBatch, DueCart, HandEditReport, TrackOutcome, TrackRequest, UntrackOutcome, WriterTotals};
pub use items::ItemChange;
pub use outbox::{DeadLetter, DeliveryResult, DeliveryState, PendingDelivery, SinkSpec, StoredEvent};
pub use reports::{CartDetail, SinkSummary, StoredTransition, Summary, SweepRecord, UpstreamRecord};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another connection held a lock longer than the busy timeout. Retryable.
    #[error("the database is locked by another process (waited the busy timeout); will retry")]
    Busy,
    /// The database cannot be written: read-only file, full disk, I/O error. Retryable later.
    #[error("the database cannot be written: {0}")]
    Unwritable(String),
    /// The file could not be opened.
    #[error("cannot open the database {path}: {source} (does the directory exist and is it writable?)")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// There is no database file, and the command only works with one that exists.
    #[error(
        "there is no database at {} (the database.path setting); `cartwatch track` or `cartwatch run` creates one",
        path.display()
    )]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The database was written by a newer cartwatch.
    #[error(
        "the database has schema version {found}, newer than this cartwatch supports ({supported}); upgrade cartwatch"
    )]
    TooNew {
        /// Version found.
        found: i64,
        /// Latest this build knows.
        supported: i64,
    },
    /// `PRAGMA user_version` is negative, which no cartwatch writes: someone set it by hand.
    #[error(
        "the database's schema version is {found}, which cartwatch never writes (was PRAGMA user_version set by hand?); \
         set it back to the version it had, or restore a backup"
    )]
    BadVersion {
        /// Version found.
        found: i64,
    },
    /// A migration failed and was rolled back.
    #[error("migrating the database to schema version {version} failed: {source}")]
    Migration {
        /// The version being applied.
        version: i64,
        /// Why.
        source: rusqlite::Error,
    },
    /// Any other SQLite error.
    #[error("database error: {0}")]
    Sqlite(rusqlite::Error),
    /// The blocking task running the query failed.
    #[error("database task failed: {0}")]
    Task(String),
    /// The thread that writes poll outcomes died. Nothing can be recorded any more: the
    /// daemon stops, so that its service manager restarts it.
    #[error("the database writer thread stopped: {0}")]
    WriterStopped(String),
}

impl StoreError {
    /// Whether trying again later may succeed: locks and write failures are; schema problems
    /// are not.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Busy | StoreError::Unwritable(_) | StoreError::Task(_))
    }

    /// An equivalent error, for telling several waiters about one failure.
    pub(crate) fn duplicate(&self) -> StoreError {
        match self {
            StoreError::Busy => StoreError::Busy,
            StoreError::Unwritable(message) => StoreError::Unwritable(message.clone()),
            other => StoreError::Task(other.to_string()),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> StoreError {
        match error.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Busy,
            Some(
                ErrorCode::ReadOnly
                | ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
                | ErrorCode::PermissionDenied,
            ) => StoreError::Unwritable(error.to_string()),
            _ => StoreError::Sqlite(error),
        }
    }
}

struct Inner {
    writer: Arc<Mutex<Connection>>,
    reader: Mutex<Connection>,
    path: PathBuf,
    /// Batches' outcomes on their way to the writer thread, which commits the batches that
    /// arrive within a moment of each other in one transaction.
    apply_queue: std::sync::mpsc::Sender<carts::WriterJob>,
    writer_stats: Arc<carts::WriterStats>,
    writer_failure: Arc<carts::WriterFailure>,
}

/// A handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.inner.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) and migrates the database, in WAL mode with a busy timeout.
    ///
    /// Fails when the file cannot be opened or created, the schema is newer than this build,
    /// or a migration fails.
    pub fn open(path: &Path, busy_timeout: Duration) -> Result<Store, StoreError> {
        Store::open_with(path, busy_timeout, true)
    }

    /// Opens and migrates a database that exists, for commands that read or change what is
    /// there: a mistyped path then names itself instead of creating an empty database.
    ///
    /// Fails like [`open`](Self::open), and when there is no file at `path`.
    pub fn open_existing(path: &Path, busy_timeout: Duration) -> Result<Store, StoreError> {
        Store::open_with(path, busy_timeout, false)
    }

    fn open_with(path: &Path, busy_timeout: Duration, create: bool) -> Result<Store, StoreError> {
        if !create && !path.exists() {
            return Err(StoreError::Missing { path: path.to_owned() });
        }
        let open = |flags: OpenFlags| -> Result<Connection, StoreError> {
            let connection = Connection::open_with_flags(path, flags)
                .map_err(|source| StoreError::Open { path: path.to_owned(), source })?;
            connection.busy_timeout(busy_timeout)?;
            rusqlite::vtab::array::load_module(&connection)?;
            Ok(connection)
        };
        let mut writer =
            open(OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        // WAL lets `sqlite3` and the HTTP API read while the daemon writes. NORMAL sync is
        // durable across process crashes, which is what at-least-once delivery needs.
        let mode: String = writer.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(journal_mode = %mode, "the database is not in WAL mode; readers may block the daemon");
        }
        // A larger page cache keeps the carts' index pages in memory between batches.
        writer.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA cache_size = -8192;")?;
        schema::migrate(&mut writer)?;
        let reader = open(OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        let writer = Arc::new(Mutex::new(writer));
        let writer_stats = Arc::new(carts::WriterStats::default());
        let writer_failure = Arc::new(carts::WriterFailure::default());
        let apply_queue =
            carts::start_apply_thread(Arc::clone(&writer), Arc::clone(&writer_stats), Arc::clone(&writer_failure))?;
        Ok(Store {
            inner: Arc::new(Inner {
                writer,
                reader: Mutex::new(reader),
                path: path.to_owned(),
                apply_queue,
                writer_stats,
                writer_failure,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `work` with the writer connection on the blocking pool.
    async fn write<R, F>(&self, work: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut connection = inner.writer.lock().unwrap_or_else(PoisonError::into_inner);
            work(&mut connection)
        })
        .await
        .map_err(|error| StoreError::Task(error.to_string()))?
    }

    /// Runs `work` with the reader connection on the blocking pool.
    async fn read<R, F>(&self, work: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let connection = inner.reader.lock().unwrap_or_else(PoisonError::into_inner);
            work(&connection)
        })
        .await
        .map_err(|error| StoreError::Task(error.to_string()))?
    }

    /// Moves WAL checkpoints off the write path: the writer stops checkpointing on commit,
    /// and a task on its own connection copies the WAL back into the database every
    /// `interval` until `shutdown`, then once more. A checkpoint's fsync then never stalls a
    /// batch's commit. For long-running processes (the daemon); one-shot commands keep
    /// SQLite's automatic checkpoints.
    ///
    /// Fails when the checkpoint connection cannot be opened.
    pub fn start_background_checkpoints(
        &self,
        interval: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, StoreError> {
        let checkpointer = Connection::open_with_flags(
            &self.inner.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Open { path: self.inner.path.clone(), source })?;
        checkpointer.busy_timeout(Duration::from_millis(100))?;
        self.inner.writer.lock().unwrap_or_else(PoisonError::into_inner).pragma_update(
            None,
            "wal_autocheckpoint",
            0,
        )?;
        let checkpointer = Arc::new(Mutex::new(checkpointer));
        let checkpoint = move || {
            let checkpointer = Arc::clone(&checkpointer);
            tokio::task::spawn_blocking(move || {
                let connection = checkpointer.lock().unwrap_or_else(PoisonError::into_inner);
                if let Err(error) = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::debug!(error = %error, "WAL checkpoint did not run; the next one will");
                }
            })
        };
        Ok(tokio::spawn(async move {
            while shutdown.run_until_cancelled(tokio::time::sleep(interval)).await.is_some() {
                let _ = checkpoint().await;
            }
            let _ = checkpoint().await;
        }))
    }

    /// Waits until the thread that writes poll outcomes dies, and says why. Never returns
    /// while it is alive.
    pub async fn writer_stopped(&self) -> StoreError {
        let failure = &self.inner.writer_failure;
        loop {
            let notified = failure.notify.notified();
            if let Some(reason) = failure.reason.get() {
                return StoreError::WriterStopped(reason.clone());
            }
            notified.await;
        }
    }

    /// Checks that the database answers a trivial query, for readiness probes.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.read(|connection| Ok(connection.query_row("SELECT 1", [], |_| Ok(()))?)).await
    }
}

/// Runs a store operation, retrying while it fails for a reason that may pass (another
/// process holding a lock, a full disk), with a doubling pause up to 5 s, until `budget` is
/// spent or `shutdown` is cancelled. Returns the last error otherwise.
pub async fn retrying<T, Fut>(
    what: &str,
    budget: Duration,
    shutdown: &tokio_util::sync::CancellationToken,
    mut operation: impl FnMut() -> Fut,
) -> Result<T, StoreError>
where
    Fut: Future<Output = Result<T, StoreError>>,
{
    let deadline = tokio::time::Instant::now() + budget;
    let mut delay = Duration::from_millis(100);
    loop {
        match operation().await {
            Err(error)
                if error.is_retryable() && tokio::time::Instant::now() < deadline && !shutdown.is_cancelled() =>
            {
                tracing::warn!(error = %error, retry_in = ?delay, "cannot {what} yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            result => return result,
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A store in a fresh temporary directory, kept alive by the returned guard.
    pub fn temp_store() -> (Store, tempfile::TempDir) {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(&directory.path().join("cartwatch.db"), Duration::from_secs(5)).unwrap();
        (store, directory)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_in_wal_mode_at_the_latest_version() {
        let (store, _directory) = test_support::temp_store();
        let (mode, version): (String, i64) = store
            .read(|c| {
                Ok((
                    c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?,
                    c.query_row("PRAGMA user_version", [], |r| r.get(0))?,
                ))
            })
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(version, schema::latest_version());
        // Re-opening applies nothing and keeps the version.
        drop(store);
        let store = Store::open(&_directory.path().join("cartwatch.db"), Duration::from_secs(1)).unwrap();
        store.ping().await.unwrap();
    }

    #[tokio::test]
    async fn refuses_a_newer_schema() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("cartwatch.db");
        Connection::open(&path).unwrap().pragma_update(None, "user_version", 999).unwrap();
        let error = Store::open(&path, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(error, StoreError::TooNew { found: 999, .. }), "{error}");
    }

    #[test]
    fn a_missing_directory_is_a_clear_error() {
        let error = Store::open(Path::new("/nonexistent/dir/cartwatch.db"), Duration::from_secs(1)).unwrap_err();
        assert!(error.to_string().contains("/nonexistent/dir/cartwatch.db"), "{error}");
    }
}
