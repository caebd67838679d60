//! The store's traits, answered by [`PgStore`]'s methods.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::PgStore;
use crate::events::NewEvent;
use crate::model::{Cart, PollTarget, TrackRequest};
use crate::outbox::{DeadLetter, DeliveryResult, DeliveryState, PendingDelivery, SinkSpec, StoredEvent};
use crate::reconcile::Context;
use crate::store::{
    AppliedBatch, CartDetail, CartStore, DueCursor, DuePage, ItemChange, ItemRecord, Member, OutboxStore, Outcome,
    PlanHistory, ReportStore, StoreError, Summary, SweepRecord, SweepStore, TrackOutcome, UncheckedCart,
    UntrackOutcome, UpstreamRecord,
};

#[async_trait]
impl SweepStore for PgStore {
    async fn repair_schema(&self) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    async fn unchecked_carts(&self, limit: u32) -> Result<Vec<UncheckedCart>, StoreError> {
        PgStore::unchecked_carts(self, limit).await
    }

    async fn set_cart_id(
        &self,
        key: i64,
        cart_id: String,
        session_token: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Result<(), String>, StoreError> {
        PgStore::set_cart_id(self, key, cart_id, session_token, now).await
    }

    async fn flag_invalid(&self, key: i64, reason: String, now: DateTime<Utc>) -> Result<(), StoreError> {
        PgStore::flag_invalid(self, key, reason, now).await
    }

    async fn reschedule_garbled(
        &self,
        provider: &str,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        // PostgreSQL keeps timestamps typed: a `next_poll_at` cannot be garbled text.
        let _ = (provider, now, limit);
        Ok(Vec::new())
    }

    async fn claim_due(
        &self,
        provider: &str,
        now: DateTime<Utc>,
        after: Option<DueCursor>,
        limit: u32,
    ) -> Result<DuePage, StoreError> {
        let _ = after;
        PgStore::claim_due(self, provider, now, limit).await
    }

    async fn claim_early(
        &self,
        provider: &str,
        started: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<PollTarget>, StoreError> {
        PgStore::claim_early(self, provider, started, until, limit).await
    }

    async fn apply(&self, outcomes: Vec<Outcome>, context: Context) -> Result<AppliedBatch, StoreError> {
        PgStore::apply(self, outcomes, context).await
    }

    async fn record_sweep(&self, record: SweepRecord) -> Result<(), StoreError> {
        PgStore::record_sweep(self, record).await
    }

    async fn save_upstream(&self, record: UpstreamRecord, events: Vec<NewEvent>) -> Result<(), StoreError> {
        PgStore::save_upstream(self, record, events).await
    }

    async fn upstream_records(&self) -> Result<Vec<UpstreamRecord>, StoreError> {
        PgStore::upstream_records(self).await
    }

    fn start_upkeep(
        &self,
        _interval: Duration,
        events: Arc<tokio::sync::Notify>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<Option<tokio::task::JoinHandle<()>>, StoreError> {
        Ok(Some(PgStore::start_upkeep(self, events, shutdown)))
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn release(&self, keys: Vec<i64>) -> Result<(), StoreError> {
        PgStore::release(self, keys).await
    }

    async fn note_upstream(&self, record: UpstreamRecord) -> Result<(), StoreError> {
        PgStore::note_upstream(self, record).await
    }

    async fn claim_probe(&self, provider: &str, now: DateTime<Utc>, hold: Duration) -> Result<bool, StoreError> {
        PgStore::claim_probe(self, provider, now, hold).await
    }

    async fn take_request_slot(
        &self,
        provider: &str,
        requests_per_second: f64,
    ) -> Result<Option<Duration>, StoreError> {
        PgStore::take_request_slot(self, provider, requests_per_second).await
    }
}

#[async_trait]
impl OutboxStore for PgStore {
    async fn write_events(&self, events: Vec<NewEvent>) -> Result<(), StoreError> {
        PgStore::write_events(self, events).await
    }

    async fn sync_sinks(&self, specs: Vec<SinkSpec>, now: DateTime<Utc>) -> Result<(), StoreError> {
        PgStore::sync_sinks(self, specs, now).await
    }

    async fn sink_disabled(&self, sink: String) -> Result<Option<String>, StoreError> {
        PgStore::sink_disabled(self, sink).await
    }

    async fn disable_sink(
        &self,
        sink: String,
        reason: String,
        announcement: Option<NewEvent>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        PgStore::disable_sink(self, sink, reason, announcement, now).await
    }

    async fn enable_sink(&self, sink: String, now: DateTime<Utc>) -> Result<Option<bool>, StoreError> {
        PgStore::enable_sink(self, sink, now).await
    }

    async fn pending_deliveries(
        &self,
        sink: String,
        now: DateTime<Utc>,
        limit: u32,
        sequential: bool,
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        PgStore::pending_deliveries(self, sink, now, limit, sequential).await
    }

    async fn record_deliveries(
        &self,
        sink: String,
        results: Vec<DeliveryResult>,
        announcements: Vec<(i64, NewEvent)>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        PgStore::record_deliveries(self, sink, results, announcements, now).await
    }

    async fn next_delivery_due(&self, sink: String, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, StoreError> {
        PgStore::next_delivery_due(self, sink, now).await
    }

    async fn has_pending(&self, sink: String) -> Result<bool, StoreError> {
        PgStore::has_pending(self, sink).await
    }
}

#[async_trait]
impl CartStore for PgStore {
    async fn track(
        &self,
        requests: Vec<TrackRequest>,
        now: DateTime<Utc>,
        due_at: DateTime<Utc>,
    ) -> Result<Vec<(String, TrackOutcome)>, StoreError> {
        PgStore::track(self, requests, now, due_at).await
    }

    async fn untrack(
        &self,
        cart_ids: Vec<String>,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, UntrackOutcome)>, StoreError> {
        PgStore::untrack(self, cart_ids, now).await
    }

    async fn cart(&self, cart_id: String) -> Result<Option<Cart>, StoreError> {
        PgStore::cart(self, cart_id).await
    }

    async fn session_token(&self, cart_id: String) -> Result<Option<String>, StoreError> {
        PgStore::session_token(self, cart_id).await
    }

    async fn poll_soon(&self, cart_id: String, now: DateTime<Utc>) -> Result<(), StoreError> {
        PgStore::poll_soon(self, cart_id, now).await
    }

    async fn note_cart(&self, cart_id: String, note: String, now: DateTime<Utc>) -> Result<(), StoreError> {
        PgStore::note_cart(self, cart_id, note, now).await
    }

    async fn record_item_change(
        &self,
        cart_id: String,
        action: String,
        items: Vec<ItemRecord>,
        event: Option<NewEvent>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        PgStore::record_item_change(self, cart_id, action, items, event, now).await
    }

    async fn item_history(&self, cart_id: String) -> Result<Vec<ItemChange>, StoreError> {
        PgStore::item_history(self, cart_id).await
    }
}

#[async_trait]
impl ReportStore for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.client().await?.query_one("SELECT 1", &[]).await?;
        Ok(())
    }

    async fn writer_stopped(&self) -> StoreError {
        std::future::pending().await
    }

    async fn summary(&self, now: DateTime<Utc>) -> Result<Summary, StoreError> {
        PgStore::summary(self, now).await
    }

    async fn cart_detail(&self, cart_id: String) -> Result<Option<CartDetail>, StoreError> {
        PgStore::cart_detail(self, cart_id).await
    }

    async fn plan_history(
        &self,
        provider: String,
        since: DateTime<Utc>,
        visit: Box<dyn FnMut(PlanHistory) + Send>,
    ) -> Result<(), StoreError> {
        PgStore::plan_history(self, provider, since, visit).await
    }

    async fn event_ids_between(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        event_type: Option<String>,
    ) -> Result<Vec<String>, StoreError> {
        PgStore::event_ids_between(self, since, until, event_type).await
    }

    async fn requests_since(&self, provider: String, since: DateTime<Utc>) -> Result<u64, StoreError> {
        PgStore::requests_since(self, provider, since).await
    }

    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        PgStore::events_after(self, after, limit).await
    }

    async fn delivery_states(&self, seqs: Vec<i64>) -> Result<Vec<(i64, DeliveryState)>, StoreError> {
        PgStore::delivery_states(self, seqs).await
    }

    async fn dead_letters(&self, sink: Option<String>, limit: u32) -> Result<Vec<DeadLetter>, StoreError> {
        PgStore::dead_letters(self, sink, limit).await
    }

    async fn redeliver(
        &self,
        event_ids: Vec<String>,
        dead_only: bool,
        sink: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<(usize, Vec<String>), StoreError> {
        PgStore::redeliver(self, event_ids, dead_only, sink, now).await
    }

    async fn skip_dead(
        &self,
        event_ids: Vec<String>,
        dead_only: bool,
        sink: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<(usize, Vec<String>), StoreError> {
        PgStore::skip_dead(self, event_ids, dead_only, sink, now).await
    }

    async fn sink_names(&self) -> Result<Vec<String>, StoreError> {
        PgStore::sink_names(self).await
    }

    async fn make_all_due(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        PgStore::make_all_due(self, now).await
    }

    async fn due_count(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        PgStore::due_count(self, now).await
    }

    async fn members(&self) -> Result<Vec<Member>, StoreError> {
        PgStore::members(self).await
    }
}
