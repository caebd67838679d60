//! The SQLite store, the embedded default: the only module that touches rusqlite.
//!
//! rusqlite is blocking, so every call runs on tokio's blocking pool, one writer connection
//! and one reader connection, each behind a mutex; batches' outcomes go to a writer thread
//! that commits those arriving together in one transaction. No transaction is ever held
//! across network I/O: callers fetch first, then hand the outcome to one short write
//! transaction.

mod carts;
mod items;
mod outbox;
mod reports;
mod rows;
pub mod schema;
mod traits;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::store::StoreError;
pub use writer::WriterTotals;

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
            _ => StoreError::Backend(error.to_string()),
        }
    }
}

struct Inner {
    writer: Arc<Mutex<Connection>>,
    reader: Mutex<Connection>,
    path: PathBuf,
    /// Batches' outcomes on their way to the writer thread, which commits the batches that
    /// arrive within a moment of each other in one transaction.
    apply_queue: writer::WriterQueue,
    writer_stats: Arc<writer::WriterStats>,
    writer_failure: Arc<writer::WriterFailure>,
}

/// A handle to the database; cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.inner.path).finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database, in WAL mode with a busy timeout.
    ///
    /// Fails when the file cannot be opened or created, the schema is newer than this build,
    /// or a migration fails.
    pub fn open(path: &Path, busy_timeout: Duration) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(path, busy_timeout, true)
    }

    /// Opens and migrates a database that exists, for commands that read or change what is
    /// there: a mistyped path then names itself instead of creating an empty database.
    ///
    /// Fails like [`open`](Self::open), and when there is no file at `path`.
    pub fn open_existing(path: &Path, busy_timeout: Duration) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(path, busy_timeout, false)
    }

    fn open_with(path: &Path, busy_timeout: Duration, create: bool) -> Result<SqliteStore, StoreError> {
        if !create && !path.exists() {
            return Err(StoreError::Missing { path: path.to_owned() });
        }
        // A fresh install without systemd's StateDirectory=: the directory is made here,
        // readable by this user only, as the unit would.
        if let Some(parent) =
            path.parent().filter(|parent| create && !parent.as_os_str().is_empty() && !parent.exists())
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent).map_err(|error| {
                StoreError::Open {
                    target: path.display().to_string(),
                    message: format!("cannot create its directory {} (database.path): {error}", parent.display()),
                }
            })?;
        }
        let open = |flags: OpenFlags| -> Result<Connection, StoreError> {
            let connection = Connection::open_with_flags(path, flags).map_err(|source| StoreError::Open {
                target: path.display().to_string(),
                message: format!("{source} (database.path: does the directory exist and is it writable?)"),
            })?;
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
        let writer_stats = Arc::new(writer::WriterStats::default());
        let writer_failure = Arc::new(writer::WriterFailure::default());
        let apply_queue =
            writer::start_apply_thread(Arc::clone(&writer), Arc::clone(&writer_stats), Arc::clone(&writer_failure))?;
        Ok(SqliteStore {
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
        .map_err(|source| StoreError::Open {
            target: self.inner.path.display().to_string(),
            message: source.to_string(),
        })?;
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
    async fn wait_for_writer_failure(&self) -> StoreError {
        let failure = &self.inner.writer_failure;
        loop {
            let notified = failure.notify.notified();
            if let Some(reason) = failure.reason.get() {
                return StoreError::WriterStopped(reason.clone());
            }
            notified.await;
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A store in a fresh temporary directory, kept alive by the returned guard.
    pub fn temp_store() -> (SqliteStore, tempfile::TempDir) {
        let directory = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&directory.path().join("cartwatch.db"), Duration::from_secs(5)).unwrap();
        (store, directory)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ReportStore;

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
        let store = SqliteStore::open(&_directory.path().join("cartwatch.db"), Duration::from_secs(1)).unwrap();
        store.ping().await.unwrap();
    }

    #[tokio::test]
    async fn refuses_a_newer_schema() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("cartwatch.db");
        Connection::open(&path).unwrap().pragma_update(None, "user_version", 999).unwrap();
        let error = SqliteStore::open(&path, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(error, StoreError::TooNew { found: 999, .. }), "{error}");
    }

    #[test]
    fn a_missing_directory_is_made_and_an_impossible_one_is_a_clear_error() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("var/lib/cartwatch/cartwatch.db");
        SqliteStore::open(&path, Duration::from_secs(1)).unwrap();
        assert!(path.exists());
        let file = directory.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        let beneath_a_file = file.join("dir/cartwatch.db");
        let error = SqliteStore::open(&beneath_a_file, Duration::from_secs(1)).unwrap_err().to_string();
        assert!(error.contains(&beneath_a_file.display().to_string()) && error.contains("database.path"), "{error}");
    }
}
