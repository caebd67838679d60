//! The seams: a third provider, defined here and nowhere else, runs through the daemon with
//! the sweep, the store and the sinks untouched; and the sweep runs against an in-memory
//! store, with the apply step the SQLite store uses.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use cartwatch::clock::Clock;
use cartwatch::config::Config;
use cartwatch::daemon::{Daemon, Hooks, Settings};
use cartwatch::events::{EventType, NewEvent};
use cartwatch::metrics::Metrics;
use cartwatch::model::{
    BatchReply, Cart, CartReport, CartState, Ending, Observation, PollTarget, StatusModel, UpstreamError,
};
use cartwatch::provider::imaterialise::Imaterialise;
use cartwatch::provider::{BatchClient, ClientSettings, Provider, Registry};
use cartwatch::reconcile::{Context, Transition};
use cartwatch::store::apply::{CartTransaction, apply_outcomes};
use cartwatch::store::{
    AppliedBatch, DueCursor, DuePage, Outcome, StoreError, SweepRecord, SweepStore, UncheckedCart, UpstreamRecord,
};
use cartwatch::sweep::{Poller, PollerConfig};
use cartwatch_simulator::SimulatorSettings;
use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::common::*;

/// A parcel shop whose carts are `PCL-` and six digits, and go open → paying → paid.
#[derive(Debug)]
struct Parcel {
    script: Arc<Script>,
}

/// What the fake parcel shop answers: each cart's statuses, one more per poll, the last kept.
#[derive(Debug, Default)]
struct Script {
    statuses: Mutex<HashMap<String, Vec<&'static str>>>,
    requests: Mutex<Vec<usize>>,
}

const FLOW: [&str; 3] = ["open", "paying", "paid"];

impl StatusModel for Parcel {
    fn name(&self) -> &'static str {
        "parcel"
    }
    fn rank(&self, status: &str) -> Option<u8> {
        FLOW.iter().position(|known| *known == status).map(|rank| rank as u8)
    }
    fn announces(&self, status: &str) -> Option<EventType> {
        match status {
            "paying" => Some(EventType::CartCheckedOut),
            "paid" => Some(EventType::CartOrdered),
            _ => None,
        }
    }
    fn ending(&self, status: &str) -> Ending {
        if status == "paid" { Ending::Ordered } else { Ending::Continue }
    }
    fn order_is_near(&self, status: &str) -> bool {
        status == "paying"
    }
    fn orders_carry_an_id(&self) -> bool {
        true
    }
}

fn parcel_id(text: &str) -> Option<String> {
    let text = text.trim().to_ascii_uppercase();
    let digits = text.strip_prefix("PCL-")?;
    (digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit())).then_some(text)
}

impl Provider for Parcel {
    fn enabled(&self) -> bool {
        true
    }
    fn max_batch(&self) -> usize {
        3
    }
    fn client_settings(&self) -> ClientSettings {
        ClientSettings {
            batch_size: 3,
            concurrency: 2,
            requests_per_second: 0.0,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            max_response_bytes: 1 << 16,
        }
    }
    fn register_id(&self, text: &str) -> Result<(String, Option<String>), String> {
        parcel_id(text).map(|id| (id, None)).ok_or_else(|| format!("malformed parcel cart id {text:?}"))
    }
    fn public_id(&self, text: &str) -> Option<String> {
        parcel_id(text)
    }
    fn stored_id_is_canonical(&self, cart_id: &str, session_token: Option<&str>) -> bool {
        session_token.is_none() && parcel_id(cart_id).as_deref() == Some(cart_id)
    }
    fn account(&self, _given: Option<&str>) -> Result<String, String> {
        Ok(String::new())
    }
    fn client(&self) -> Result<Arc<dyn BatchClient>, UpstreamError> {
        Ok(Arc::new(ParcelClient(Arc::clone(&self.script))))
    }
}

#[derive(Debug)]
struct ParcelClient(Arc<Script>);

impl BatchClient for ParcelClient {
    fn fetch<'a>(&'a self, carts: &'a [PollTarget]) -> BoxFuture<'a, Result<BatchReply, UpstreamError>> {
        self.0.requests.lock().unwrap().push(carts.len());
        let mut statuses = self.0.statuses.lock().unwrap();
        let reports = carts
            .iter()
            .map(|cart| {
                let report = match statuses.get_mut(&cart.cart_id) {
                    None => CartReport::NotFound("no such parcel cart".into()),
                    Some(script) => {
                        let status = if script.len() > 1 { script.remove(0) } else { script[0] };
                        CartReport::Status(Observation {
                            status: status.into(),
                            known_status: true,
                            order_id: (status == "paid").then(|| format!("ORD-{}", &cart.cart_id[4..])),
                            ..Observation::default()
                        })
                    }
                };
                (cart.cart_id.clone(), report)
            })
            .collect();
        futures_util::future::ready(Ok(BatchReply::of(reports))).boxed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_provider_defined_in_a_test_runs_through_the_daemon() {
    let directory = tempfile::tempdir().unwrap();
    let script = Arc::new(Script::default());
    let ids = ["PCL-000001", "PCL-000002", "PCL-000003", "PCL-000004"];
    for id in ids {
        script.statuses.lock().unwrap().insert(id.to_owned(), vec!["open", "open", "paying", "paid"]);
    }
    let parcel: Arc<dyn Provider> = Arc::new(Parcel { script: Arc::clone(&script) });
    let providers = Registry::new(vec![parcel]);
    let mut config = Config::default();
    config.database.path = directory.path().join("cartwatch.db");
    config.sinks.log.path = events_file(directory.path());
    let settings = Settings { providers: providers.clone(), ..config.daemon_settings() };

    let clock = simulated_clock();
    let daemon = Daemon::open(settings, clock.clone()).await.unwrap();
    let store = daemon.store();
    let requests: Vec<_> = ids
        .iter()
        .map(|id| providers.track_request("parcel", &id.to_ascii_lowercase(), None, Some(format!("ref-{id}"))).unwrap())
        .collect();
    assert!(providers.track_request("parcel", "PCL-12", None, None).unwrap_err().contains("malformed parcel cart id"));
    store.track(requests, clock.now(), clock.now()).await.unwrap();
    let (_reloads, receiver) = tokio::sync::mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(daemon.run(receiver, Hooks::default(), shutdown.clone()));

    // Ten simulated minutes at the documented cadence (every minute while young).
    for _ in 0..60 {
        clock.advance(Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let delivered = wait_until(Duration::from_secs(5), async || {
        logged_events(directory.path()).iter().filter(|event| event["type"] == "cart.ordered").count() == 4
    })
    .await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
    assert!(delivered, "{:#?}", logged_events(directory.path()));

    for id in ids {
        let cart = store.cart(id.to_owned()).await.unwrap().unwrap();
        assert_eq!((cart.provider.as_str(), cart.state), ("parcel", CartState::Ordered));
        assert_eq!(cart.order_id.as_deref(), Some(format!("ORD-{}", &id[4..]).as_str()));
        let types: Vec<String> = logged_events(directory.path())
            .iter()
            .filter(|event| event["data"]["cartId"] == id)
            .map(|event| event["type"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(types, ["cart.checked_out", "cart.ordered"], "{id}");
    }
    assert!(script.requests.lock().unwrap().iter().all(|size| *size <= 3), "the provider's batch size holds");
    let upstreams = store.upstream_records().await.unwrap();
    assert_eq!(upstreams.iter().map(|record| record.provider.as_str()).collect::<Vec<_>>(), ["parcel"]);
}

/// A store in memory, for the sweep: carts, transitions, events, sweeps, upstream health.
#[derive(Debug, Default)]
struct MemoryStore(Mutex<Memory>);

#[derive(Debug, Default, Clone)]
struct Memory {
    carts: BTreeMap<i64, Cart>,
    transitions: Vec<(String, Option<String>, String)>,
    events: Vec<NewEvent>,
    sweeps: Vec<SweepRecord>,
    upstream: Vec<UpstreamRecord>,
    pages: usize,
}

impl MemoryStore {
    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The in-memory transaction: every step answers at once.
struct MemoryTransaction<'a>(&'a mut Memory);

impl CartTransaction for MemoryTransaction<'_> {
    async fn cart(&mut self, key: i64) -> Result<Option<Cart>, StoreError> {
        Ok(self.0.carts.get(&key).cloned())
    }
    async fn write_cart(&mut self, _before: &Cart, after: &Cart) -> Result<(), StoreError> {
        self.0.carts.insert(after.key, after.clone());
        Ok(())
    }
    async fn insert_transition(
        &mut self,
        cart: &Cart,
        transition: &Transition,
        _detected_at: DateTime<Utc>,
        _event_id: Option<&str>,
    ) -> Result<(), StoreError> {
        self.0.transitions.push((cart.cart_id.clone(), transition.from.clone(), transition.to.clone()));
        Ok(())
    }
    async fn insert_event(&mut self, event: &NewEvent) -> Result<(), StoreError> {
        self.0.events.push(event.clone());
        Ok(())
    }
}

fn due_position(cart: &Cart) -> (DateTime<Utc>, i64) {
    (cart.next_poll_at.unwrap_or(DateTime::<Utc>::MAX_UTC), cart.key)
}

/// What a request needs of a cart.
fn poll_target(cart: &Cart) -> PollTarget {
    PollTarget { key: cart.key, cart_id: cart.cart_id.clone(), account: cart.account.clone(), session_token: None }
}

#[async_trait]
impl SweepStore for MemoryStore {
    async fn repair_schema(&self) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }
    async fn unchecked_carts(&self, _limit: u32) -> Result<Vec<UncheckedCart>, StoreError> {
        Ok(Vec::new())
    }
    async fn set_cart_id(
        &self,
        key: i64,
        cart_id: String,
        session_token: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Result<(), String>, StoreError> {
        let _ = session_token;
        if let Some(cart) = self.memory().carts.get_mut(&key) {
            cart.cart_id = cart_id;
            cart.next_poll_at.get_or_insert(now);
        }
        Ok(Ok(()))
    }
    async fn flag_invalid(&self, key: i64, reason: String, now: DateTime<Utc>) -> Result<(), StoreError> {
        if let Some(cart) = self.memory().carts.get_mut(&key) {
            (cart.state, cart.last_error, cart.finished_at, cart.next_poll_at) =
                (CartState::Invalid, Some(reason), Some(now), None);
        }
        Ok(())
    }
    async fn reschedule_garbled(&self, _: &str, _: DateTime<Utc>, _: u32) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }
    async fn claim_due(
        &self,
        provider: &str,
        now: DateTime<Utc>,
        after: Option<DueCursor>,
        limit: u32,
    ) -> Result<DuePage, StoreError> {
        let mut memory = self.memory();
        memory.pages += 1;
        let after: Option<i64> = after.and_then(|cursor| cursor.token().parse().ok());
        let mut due: Vec<&Cart> = memory
            .carts
            .values()
            .filter(|cart| cart.state == CartState::Tracking && cart.provider == provider)
            .filter(|cart| cart.next_poll_at.is_some_and(|at| at <= now))
            .collect();
        due.sort_by_key(|cart| due_position(cart));
        if let Some(after) = after.and_then(|key| memory.carts.get(&key)).map(due_position) {
            due.retain(|cart| due_position(cart) > after);
        }
        let carts: Vec<PollTarget> = due.iter().take(limit as usize).map(|cart| poll_target(cart)).collect();
        let next = (carts.len() == limit as usize)
            .then(|| carts.last().map(|cart| DueCursor::from_token(cart.key.to_string())))
            .flatten();
        Ok(DuePage { carts, next })
    }
    async fn claim_early(
        &self,
        provider: &str,
        started: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<PollTarget>, StoreError> {
        let memory = self.memory();
        let mut early: Vec<&Cart> = memory
            .carts
            .values()
            .filter(|cart| cart.state == CartState::Tracking && cart.provider == provider)
            .filter(|cart| cart.next_poll_at.is_some_and(|at| at > started && at <= until))
            .filter(|cart| cart.last_polled_at.is_none_or(|at| at < started) && cart.consecutive_errors == 0)
            .collect();
        early.sort_by_key(|cart| due_position(cart));
        Ok(early.iter().take(limit as usize).map(|cart| poll_target(cart)).collect())
    }
    async fn apply(&self, outcomes: Vec<Outcome>, context: Context) -> Result<AppliedBatch, StoreError> {
        let mut memory = self.memory();
        let mut working = memory.clone();
        let applied = apply_outcomes(&mut MemoryTransaction(&mut working), &outcomes, &context)
            .now_or_never()
            .expect("the in-memory transaction answers at once")?;
        *memory = working;
        Ok(applied)
    }
    async fn record_sweep(&self, record: SweepRecord) -> Result<(), StoreError> {
        self.memory().sweeps.push(record);
        Ok(())
    }
    async fn save_upstream(&self, record: UpstreamRecord, events: Vec<NewEvent>) -> Result<(), StoreError> {
        let mut memory = self.memory();
        memory.upstream.retain(|saved| saved.provider != record.provider);
        memory.upstream.push(record);
        memory.events.extend(events);
        Ok(())
    }
    async fn upstream_records(&self) -> Result<Vec<UpstreamRecord>, StoreError> {
        Ok(self.memory().upstream.clone())
    }
}

/// A tracked i.materialise cart as a fresh registration would store it.
fn tracked(key: i64, cart_id: &str, now: DateTime<Utc>) -> Cart {
    Cart {
        key,
        cart_id: cart_id.to_owned(),
        provider: "imaterialise".into(),
        account: String::new(),
        reference: None,
        state: CartState::Tracking,
        status: None,
        previous_status: None,
        status_detail: None,
        order_id: None,
        order_status: None,
        order_total: None,
        created_at_raw: None,
        created_at: None,
        registered_at: now,
        tracked_since: now,
        next_poll_at: Some(now),
        last_polled_at: None,
        status_changed_at: None,
        consecutive_errors: 0,
        consecutive_not_found: 0,
        last_error: None,
        finished_at: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_runs_against_an_in_memory_store_and_misses_no_transition() {
    let simulator =
        simulator(SimulatorSettings { seed: 23, carts: 25, unknown_carts: 0, ..SimulatorSettings::default() }).await;
    let directory = tempfile::tempdir().unwrap();
    let config = config_for(&simulator, directory.path());
    let clock = Clock::manual(Utc::now());
    let store = Arc::new(MemoryStore::default());
    for (index, cart_id) in simulator.cart_ids().iter().enumerate() {
        store.memory().carts.insert(index as i64 + 1, tracked(index as i64 + 1, cart_id, clock.now()));
    }
    let poller_config = PollerConfig {
        provider: Arc::new(Imaterialise::new(config.imaterialise.clone())),
        rules: Arc::new(config.rules()),
        backoff: config.backoff.clone(),
        page_size: 4,
    };
    let poller =
        Poller::new(store.clone(), &poller_config, Arc::new(Metrics::default()), Arc::default(), clock.clone())
            .await
            .unwrap();
    let shutdown = CancellationToken::new();
    for _ in 0..40 {
        poller.sweep(&shutdown).await.unwrap();
        if simulator.settled() {
            break;
        }
        clock.advance(Duration::from_secs(1));
    }
    poller.sweep(&shutdown).await.unwrap();
    assert!(simulator.settled(), "the simulated carts reached their last status");

    let memory = store.memory().clone();
    let mut announced: Vec<(String, String)> = memory
        .events
        .iter()
        .filter(|event| matches!(event.event_type, EventType::CartCheckedOut | EventType::CartOrdered))
        .map(|event| (event.cart_id.clone().unwrap(), event.event_type.as_str().to_owned()))
        .collect();
    announced.sort();
    assert_eq!(announced, true_checkouts_and_orders(&simulator));
    for transition in simulator.truth().iter().filter(|transition| transition.to == "Ordered") {
        let cart = memory.carts.values().find(|cart| cart.cart_id == transition.cart_id).unwrap();
        assert_eq!((cart.state, &cart.order_id), (CartState::Ordered, &transition.order_id));
    }
    assert!(memory.pages > 2 * memory.sweeps.len(), "due carts were claimed a page of four at a time");
    assert!(
        memory.sweeps.iter().map(|sweep| sweep.carts_polled).sum::<u64>() > 25,
        "every cart was polled, some more than once"
    );
    assert_eq!(memory.upstream.len(), 1, "the health was saved");
    simulator.stop().await;
}
