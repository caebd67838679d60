//! The PostgreSQL store, for several daemons sharing the work: the only module that touches
//! tokio-postgres.
//!
//! Every daemon that points at one database is a *member*. A due cart is claimed for a lease
//! (`SELECT … FOR UPDATE SKIP LOCKED`, then `lease_owner` and `lease_until` set), polled,
//! and its outcome applied in one transaction that checks the lease is still this member's;
//! deliveries are claimed the same way. The upstream's health and the request rate are
//! shared through rows every member reads and writes, and new events are announced with
//! `NOTIFY`, so every member's delivery loops wake at once. Leases use the database's clock,
//! so members on machines whose clocks disagree still agree on who holds what.

mod carts;
mod outbox;
mod reports;
pub mod schema;
mod shared;
mod traits;

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use crate::store::{DatabaseConfig, StoreError};

pub use shared::MEMBER_HEARTBEAT;

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> StoreError {
        match error.as_db_error() {
            Some(db) => {
                let code = db.code();
                if *code == SqlState::T_R_SERIALIZATION_FAILURE
                    || *code == SqlState::T_R_DEADLOCK_DETECTED
                    || *code == SqlState::LOCK_NOT_AVAILABLE
                {
                    StoreError::Busy
                } else if *code == SqlState::DISK_FULL
                    || *code == SqlState::READ_ONLY_SQL_TRANSACTION
                    || *code == SqlState::ADMIN_SHUTDOWN
                    || *code == SqlState::CANNOT_CONNECT_NOW
                {
                    StoreError::Unwritable(db.message().to_owned())
                } else {
                    StoreError::Backend(format!("{}: {}", db.code().code(), db.message()))
                }
            }
            // No answer from the server: the connection broke or could not be made.
            None => StoreError::Unreachable(describe_error(&error)),
        }
    }
}

impl From<PoolError> for StoreError {
    fn from(error: PoolError) -> StoreError {
        match error {
            PoolError::Backend(error) => StoreError::from(error),
            other => StoreError::Unreachable(describe_pool_error(&other)),
        }
    }
}

/// An error and its causes on one line.
fn describe_error(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A pool's failure to give a connection, as the server's or the network's words.
fn describe_pool_error(error: &PoolError) -> String {
    match error {
        PoolError::Backend(error) => describe_error(error),
        other => describe_error(other),
    }
}

/// Reads a connection string (a `postgres://` URL or `key=value` pairs), with `password`
/// when given.
///
/// Fails with a message that never quotes the string, which may hold a password.
pub fn parse_url(url: &str, password: Option<&str>) -> Result<tokio_postgres::Config, String> {
    let mut config = tokio_postgres::Config::from_str(url.trim()).map_err(|error| {
        format!("not a PostgreSQL connection string (postgres://user@host/database, or host=... dbname=...): {error}")
    })?;
    if let Some(password) = password {
        config.password(password);
    }
    if config.get_hosts().is_empty() {
        return Err("names no host (postgres://user@host/database, or host=/run/postgresql for a socket)".into());
    }
    if config.get_dbname().is_none() {
        return Err("names no database (postgres://user@host/database)".into());
    }
    Ok(config)
}

/// A connection string with `password` added, for a password kept in its own file.
///
/// Fails when the string cannot be read, or already has a password.
pub fn with_password(url: &str, password: &str) -> Result<String, String> {
    let parsed = parse_url(url, None)?;
    if parsed.get_password().is_some() {
        return Err("the connection string already has a password; give it in one place".into());
    }
    let url = url.trim();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let mut parsed = url::Url::parse(url).map_err(|error| format!("not a URL: {error}"))?;
        parsed.set_password(Some(password)).map_err(|()| "this URL cannot take a password".to_owned())?;
        Ok(parsed.to_string())
    } else {
        let quoted = password.replace('\\', "\\\\").replace('\'', "\\'");
        Ok(format!("{url} password='{quoted}'"))
    }
}

/// The server and database a connection string names, for messages: never its password.
pub fn describe_url(url: &str) -> String {
    match parse_url(url, None) {
        Ok(config) => {
            let host = match config.get_hosts().first() {
                Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
                Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
                None => String::new(),
            };
            let port = config.get_ports().first().copied().unwrap_or(5432);
            format!(
                "postgres://{}@{host}:{port}/{}",
                config.get_user().unwrap_or("?"),
                config.get_dbname().unwrap_or("?")
            )
        }
        Err(_) => "the PostgreSQL database of database.url".into(),
    }
}

/// A handle to the shared database; cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// The connection settings, for the connection that listens for new events.
    config: tokio_postgres::Config,
    /// This process's name among the members: what its leases are held under.
    member: String,
    /// How long a claim lasts.
    lease: Duration,
    /// Where the database is, for messages.
    target: String,
    /// The carts this member has claimed and not yet applied.
    claimed: Arc<Mutex<HashSet<i64>>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("target", &self.target).field("member", &self.member).finish()
    }
}

impl PgStore {
    /// Connects to the database `config` names and migrates it.
    ///
    /// Fails when the server cannot be reached, refuses the login, or a migration fails.
    pub async fn connect(config: &DatabaseConfig) -> Result<PgStore, StoreError> {
        let target = config.target();
        let open_error = |message: String| StoreError::Open { target: target.clone(), message };
        let pg_config = parse_url(config.url.expose(), None).map_err(open_error)?;
        let manager =
            Manager::from_config(pg_config.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(2) as usize)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.busy_timeout.max(Duration::from_secs(1))))
            .create_timeout(Some(Duration::from_secs(10)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|error| open_error(error.to_string()))?;
        let store = PgStore {
            pool,
            config: pg_config,
            member: format!("{}-{}", hostname(), uuid::Uuid::now_v7().simple()),
            lease: config.lease,
            target: target.clone(),
            claimed: Arc::default(),
        };
        let mut client = store.pool.get().await.map_err(|error| open_error(describe_pool_error(&error)))?;
        schema::migrate(&mut client).await?;
        Ok(store)
    }

    /// This daemon's name among the members.
    pub fn member(&self) -> &str {
        &self.member
    }

    /// The carts this member has claimed and not yet applied.
    fn claimed(&self) -> MutexGuard<'_, HashSet<i64>> {
        self.claimed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A pooled connection.
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.pool.get().await?)
    }

    /// The lease as a PostgreSQL interval, in seconds.
    fn lease_seconds(&self) -> f64 {
        self.lease.as_secs_f64()
    }
}

/// This machine's name, for the members table.
fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|name| name.into_string().ok()).unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_are_checked_and_described_without_their_password() {
        assert!(parse_url("postgres://cartwatch:s3cret@db.internal:5433/shop", None).is_ok());
        assert!(parse_url("host=/run/postgresql dbname=shop user=cartwatch", None).is_ok());
        let error = parse_url("postgres://cartwatch:s3cret@/", None).unwrap_err();
        assert!(!error.contains("s3cret"), "{error}");
        let error = parse_url("not a url at all ===", None).unwrap_err();
        assert!(error.contains("not a PostgreSQL connection string"), "{error}");
        let described = describe_url("postgres://cartwatch:s3cret@db.internal:5433/shop");
        assert_eq!(described, "postgres://cartwatch@db.internal:5433/shop");
    }

    #[test]
    fn a_password_from_its_own_file_joins_either_form() {
        let url = with_password("postgres://cartwatch@db.internal/shop", "p@ss word").unwrap();
        assert_eq!(parse_url(&url, None).unwrap().get_password(), Some(&b"p@ss word"[..]));
        let pairs = with_password("host=db.internal dbname=shop user=cartwatch", "it's").unwrap();
        assert_eq!(parse_url(&pairs, None).unwrap().get_password(), Some(&b"it's"[..]));
        assert!(with_password("postgres://cartwatch:old@db.internal/shop", "new").unwrap_err().contains("already"));
    }
}
