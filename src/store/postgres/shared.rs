//! What the members share beyond rows of work: the probe of a paused upstream (one member
//! sends it), the rate limit (one token bucket per upstream, on the database's clock), the
//! members table with heartbeats, and `LISTEN` for new events.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use super::PgStore;
use super::outbox::EVENTS_CHANNEL;
use crate::store::StoreError;

/// How often a member says it is alive. A member silent for twelve times this is removed
/// from the table (its leases expire on their own).
pub const MEMBER_HEARTBEAT: Duration = Duration::from_secs(5);

impl PgStore {
    /// Claims the probe of `provider`'s paused upstream for `hold`; `false` when another
    /// member holds it.
    pub(super) async fn claim_probe(
        &self,
        provider: &str,
        now: chrono::DateTime<chrono::Utc>,
        hold: Duration,
    ) -> Result<bool, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "INSERT INTO upstream_state (provider, mode, batch_size, updated_at, probe_owner, probe_until) \
                 VALUES ($1, 'healthy', 10, now(), $2, now() + make_interval(secs => $3)) \
                 ON CONFLICT (provider) DO UPDATE SET probe_owner = excluded.probe_owner, \
                   probe_until = excluded.probe_until \
                 WHERE (upstream_state.probe_owner IS NULL OR upstream_state.probe_until < now() \
                        OR upstream_state.probe_owner = $2) \
                   AND upstream_state.mode <> 'healthy' \
                   AND (upstream_state.next_probe_at IS NULL OR upstream_state.next_probe_at <= $4) \
                 RETURNING 1",
                &[&provider, &self.member, &hold.as_secs_f64(), &now],
            )
            .await?;
        Ok(row.is_some())
    }

    /// Takes one request slot of `provider`'s shared token bucket (refilled at
    /// `requests_per_second`, holding at most one token, on the database's clock): `None`
    /// when the request may go, else how long to wait before asking again.
    pub(super) async fn take_request_slot(
        &self,
        provider: &str,
        requests_per_second: f64,
    ) -> Result<Option<Duration>, StoreError> {
        let client = self.client().await?;
        let available = "least(1.0, rate_limits.tokens \
             + extract(epoch FROM clock_timestamp() - rate_limits.updated_at)::float8 * $2)";
        let take = client
            .prepare_cached(&format!(
                "INSERT INTO rate_limits (provider, tokens, updated_at) VALUES ($1, 0, clock_timestamp()) \
                 ON CONFLICT (provider) DO UPDATE SET tokens = {available} - 1, updated_at = clock_timestamp() \
                 WHERE {available} >= 1 RETURNING tokens"
            ))
            .await?;
        let taken = client.query_opt(&take, &[&provider, &requests_per_second]).await?;
        if taken.is_some() {
            return Ok(None);
        }
        let row = client
            .query_one(
                &format!("SELECT {available} FROM rate_limits WHERE provider = $1"),
                &[&provider, &requests_per_second],
            )
            .await?;
        let missing = (1.0 - row.get::<_, f64>(0)).max(0.0);
        Ok(Some(Duration::from_secs_f64(missing / requests_per_second).max(Duration::from_millis(1))))
    }

    /// Runs this member's upkeep until `shutdown`: it joins the members table and says it is
    /// alive every [`MEMBER_HEARTBEAT`], removes members silent for long, and listens for
    /// new events, waking `events` for each; at the end it leaves the table and gives back
    /// its claims.
    pub(super) fn start_upkeep(&self, events: Arc<Notify>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut listener: Option<tokio::task::JoinHandle<()>> = None;
            loop {
                if listener.as_ref().is_none_or(|task| task.is_finished()) {
                    listener = match store.listen(Arc::clone(&events)).await {
                        Ok(task) => Some(task),
                        Err(error) => {
                            tracing::warn!(error = %error, "cannot listen for new events; delivery loops poll every second");
                            None
                        }
                    };
                }
                if let Err(error) = store.heartbeat().await {
                    tracing::warn!(error = %error, "cannot tell the database this daemon is alive; retrying");
                }
                if shutdown.run_until_cancelled(tokio::time::sleep(MEMBER_HEARTBEAT)).await.is_none() {
                    break;
                }
            }
            if let Some(task) = listener {
                task.abort();
            }
            if let Err(error) = store.leave().await {
                tracing::warn!(error = %error, "cannot leave the members table; the entry expires on its own");
            }
        })
    }

    async fn heartbeat(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO members (member_id, host, pid, version, started_at, last_seen) \
                 VALUES ($1, $2, $3, $4, now(), now()) \
                 ON CONFLICT (member_id) DO UPDATE SET last_seen = now()",
                &[
                    &self.member,
                    &super::hostname(),
                    &i32::try_from(std::process::id()).unwrap_or(0),
                    &env!("CARGO_PKG_VERSION"),
                ],
            )
            .await?;
        client
            .execute(
                "DELETE FROM members WHERE last_seen < now() - make_interval(secs => $1)",
                &[&(MEMBER_HEARTBEAT.as_secs_f64() * 12.0)],
            )
            .await?;
        Ok(())
    }

    async fn leave(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute("UPDATE carts SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1", &[&self.member])
            .await?;
        client
            .execute(
                "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1",
                &[&self.member],
            )
            .await?;
        client.execute("DELETE FROM members WHERE member_id = $1", &[&self.member]).await?;
        Ok(())
    }

    /// A connection of its own that `LISTEN`s for new events; the task ends when the
    /// connection does.
    async fn listen(&self, events: Arc<Notify>) -> Result<tokio::task::JoinHandle<()>, StoreError> {
        let (client, mut connection) = self.config.connect(NoTls).await?;
        let task = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |context| connection.poll_message(context));
            let keep = client;
            let command = format!("LISTEN {EVENTS_CHANNEL}");
            let listening = keep.batch_execute(&command);
            tokio::pin!(listening);
            let mut subscribed = false;
            loop {
                tokio::select! {
                    result = &mut listening, if !subscribed => {
                        if result.is_err() {
                            return;
                        }
                        subscribed = true;
                    }
                    message = messages.next() => match message {
                        Some(Ok(AsyncMessage::Notification(_))) => events.notify_waiters(),
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => return,
                    },
                }
            }
        });
        Ok(task)
    }
}
