//! The store's traits, answered by [`SqliteStore`]'s methods.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::SqliteStore;
use crate::events::NewEvent;
use crate::model::{Cart, PollTarget, TrackRequest};
use crate::outbox::{DeadLetter, DeliveryResult, DeliveryState, PendingDelivery, SinkSpec, StoredEvent};
use crate::reconcile::Context;
use crate::store::{
    AppliedBatch, CartDetail, CartStore, DueCursor, DuePage, ItemChange, ItemRecord, OutboxStore, Outcome, PlanHistory,
    ReportStore, StoreError, Summary, SweepRecord, SweepStore, TrackOutcome, UncheckedCart, UntrackOutcome,
    UpstreamRecord,
};

#[async_trait]
impl SweepStore for SqliteStore {
    async fn repair_schema(&self) -> Result<Vec<String>, StoreError> {
        self.write(|connection| super::schema::repair_missing(connection)).await
    }

    async fn unchecked_carts(&self, limit: u32) -> Result<Vec<UncheckedCart>, StoreError> {
        SqliteStore::unchecked_carts(self, limit).await
    }

    async fn set_cart_id(
        &self,
        key: i64,
        cart_id: String,
        session_token: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Result<(), String>, StoreError> {
        SqliteStore::set_cart_id(self, key, cart_id, session_token, now).await
    }

    async fn flag_invalid(&self, key: i64, reason: String, now: DateTime<Utc>) -> Result<(), StoreError> {
        SqliteStore::flag_invalid(self, key, reason, now).await
    }

    async fn reschedule_garbled(
        &self,
        provider: &str,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        SqliteStore::reschedule_garbled(self, provider, now, limit).await
    }

    async fn claim_due(
        &self,
        provider: &str,
        now: DateTime<Utc>,
        after: Option<DueCursor>,
        limit: u32,
    ) -> Result<DuePage, StoreError> {
        SqliteStore::claim_due(self, provider, now, after, limit).await
    }

    async fn claim_early(
        &self,
        provider: &str,
        started: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<PollTarget>, StoreError> {
        SqliteStore::claim_early(self, provider, started, until, limit).await
    }

    async fn apply(&self, outcomes: Vec<Outcome>, context: Context) -> Result<AppliedBatch, StoreError> {
        SqliteStore::apply(self, outcomes, context).await
    }

    async fn record_sweep(&self, record: SweepRecord) -> Result<(), StoreError> {
        SqliteStore::record_sweep(self, record).await
    }

    async fn save_upstream(&self, record: UpstreamRecord, events: Vec<NewEvent>) -> Result<(), StoreError> {
        SqliteStore::save_upstream(self, record, events).await
    }

    async fn upstream_records(&self) -> Result<Vec<UpstreamRecord>, StoreError> {
        SqliteStore::upstream_records(self).await
    }

    fn start_upkeep(
        &self,
        interval: std::time::Duration,
        _events: std::sync::Arc<tokio::sync::Notify>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<Option<tokio::task::JoinHandle<()>>, StoreError> {
        self.start_background_checkpoints(interval, shutdown).map(Some)
    }
}

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn write_events(&self, events: Vec<NewEvent>) -> Result<(), StoreError> {
        SqliteStore::write_events(self, events).await
    }

    async fn sync_sinks(&self, specs: Vec<SinkSpec>, now: DateTime<Utc>) -> Result<(), StoreError> {
        SqliteStore::sync_sinks(self, specs, now).await
    }

    async fn sink_disabled(&self, sink: String) -> Result<Option<String>, StoreError> {
        SqliteStore::sink_disabled(self, sink).await
    }

    async fn disable_sink(
        &self,
        sink: String,
        reason: String,
        announcement: Option<NewEvent>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        SqliteStore::disable_sink(self, sink, reason, announcement, now).await
    }

    async fn enable_sink(&self, sink: String, now: DateTime<Utc>) -> Result<Option<bool>, StoreError> {
        SqliteStore::enable_sink(self, sink, now).await
    }

    async fn pending_deliveries(
        &self,
        sink: String,
        now: DateTime<Utc>,
        limit: u32,
        sequential: bool,
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        SqliteStore::pending_deliveries(self, sink, now, limit, sequential).await
    }

    async fn record_deliveries(
        &self,
        sink: String,
        results: Vec<DeliveryResult>,
        announcements: Vec<(i64, NewEvent)>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        SqliteStore::record_deliveries(self, sink, results, announcements, now).await
    }

    async fn next_delivery_due(&self, sink: String, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, StoreError> {
        SqliteStore::next_delivery_due(self, sink, now).await
    }

    async fn has_pending(&self, sink: String) -> Result<bool, StoreError> {
        SqliteStore::has_pending(self, sink).await
    }
}

#[async_trait]
impl CartStore for SqliteStore {
    async fn track(
        &self,
        requests: Vec<TrackRequest>,
        now: DateTime<Utc>,
        due_at: DateTime<Utc>,
    ) -> Result<Vec<(String, TrackOutcome)>, StoreError> {
        SqliteStore::track(self, requests, now, due_at).await
    }

    async fn untrack(
        &self,
        cart_ids: Vec<String>,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, UntrackOutcome)>, StoreError> {
        SqliteStore::untrack(self, cart_ids, now).await
    }

    async fn cart(&self, cart_id: String) -> Result<Option<Cart>, StoreError> {
        SqliteStore::cart(self, cart_id).await
    }

    async fn session_token(&self, cart_id: String) -> Result<Option<String>, StoreError> {
        SqliteStore::session_token(self, cart_id).await
    }

    async fn poll_soon(&self, cart_id: String, now: DateTime<Utc>) -> Result<(), StoreError> {
        SqliteStore::poll_soon(self, cart_id, now).await
    }

    async fn note_cart(&self, cart_id: String, note: String, now: DateTime<Utc>) -> Result<(), StoreError> {
        SqliteStore::note_cart(self, cart_id, note, now).await
    }

    async fn record_item_change(
        &self,
        cart_id: String,
        action: String,
        items: Vec<ItemRecord>,
        event: Option<NewEvent>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        SqliteStore::record_item_change(self, cart_id, action, items, event, now).await
    }

    async fn item_history(&self, cart_id: String) -> Result<Vec<ItemChange>, StoreError> {
        SqliteStore::item_history(self, cart_id).await
    }
}

#[async_trait]
impl ReportStore for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|connection| Ok(connection.query_row("SELECT 1", [], |_| Ok(()))?)).await
    }

    async fn writer_stopped(&self) -> StoreError {
        self.wait_for_writer_failure().await
    }

    async fn summary(&self, now: DateTime<Utc>) -> Result<Summary, StoreError> {
        SqliteStore::summary(self, now).await
    }

    async fn cart_detail(&self, cart_id: String) -> Result<Option<CartDetail>, StoreError> {
        SqliteStore::cart_detail(self, cart_id).await
    }

    async fn plan_history(
        &self,
        provider: String,
        since: DateTime<Utc>,
        visit: Box<dyn FnMut(PlanHistory) + Send>,
    ) -> Result<(), StoreError> {
        SqliteStore::plan_history(self, provider, since, visit).await
    }

    async fn event_ids_between(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        event_type: Option<String>,
    ) -> Result<Vec<String>, StoreError> {
        SqliteStore::event_ids_between(self, since, until, event_type).await
    }

    async fn requests_since(&self, provider: String, since: DateTime<Utc>) -> Result<u64, StoreError> {
        SqliteStore::requests_since(self, provider, since).await
    }

    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        SqliteStore::events_after(self, after, limit).await
    }

    async fn delivery_states(&self, seqs: Vec<i64>) -> Result<Vec<(i64, DeliveryState)>, StoreError> {
        SqliteStore::delivery_states(self, seqs).await
    }

    async fn dead_letters(&self, sink: Option<String>, limit: u32) -> Result<Vec<DeadLetter>, StoreError> {
        SqliteStore::dead_letters(self, sink, limit).await
    }

    async fn redeliver(
        &self,
        event_ids: Vec<String>,
        dead_only: bool,
        sink: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<(usize, Vec<String>), StoreError> {
        SqliteStore::redeliver(self, event_ids, dead_only, sink, now).await
    }

    async fn skip_dead(
        &self,
        event_ids: Vec<String>,
        dead_only: bool,
        sink: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<(usize, Vec<String>), StoreError> {
        SqliteStore::skip_dead(self, event_ids, dead_only, sink, now).await
    }

    async fn sink_names(&self) -> Result<Vec<String>, StoreError> {
        SqliteStore::sink_names(self).await
    }

    async fn make_all_due(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        SqliteStore::make_all_due(self, now).await
    }

    async fn due_count(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        SqliteStore::due_count(self, now).await
    }
}
