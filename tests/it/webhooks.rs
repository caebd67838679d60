//! Webhook delivery against local receivers: signatures checked by an independent verifier,
//! every receiver outcome, dead letters and redelivery, per-cart order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use cartwatch::config::Config;
use cartwatch::delivery::{SinkSlot, delivery_loop};
use cartwatch::events::{CartEventData, EventType, NewEvent};
use cartwatch::outbox::DeliveryState;
use cartwatch::sinks::{self, Sink};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const CART_A: &str = "921a2046-66a5-4c5f-b9a6-4bc646fa5e5a";
const CART_B: &str = "bee2c269-1dbd-4f67-b9f1-2ea2d3b4917b";
const OLD_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

struct Harness {
    _directory: tempfile::TempDir,
    config: Config,
    store: Store,
    sinks: Vec<Arc<Sink>>,
}

async fn harness(url: &str, tweak: impl FnOnce(&mut Config)) -> Harness {
    let directory = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.database.path = directory.path().join("cartwatch.db");
    config.sinks.log.enabled = false;
    config.delivery.schedule = [0, 200, 200].iter().map(|ms| Duration::from_millis(*ms).into()).collect();
    config.delivery.jitter = 0.0;
    add_webhook(&mut config, "erp", url, WEBHOOK_SECRET);
    tweak(&mut config);
    assert!(
        config.problems(cartwatch::config::Purpose::Database).is_empty(),
        "{:?}",
        config.problems(cartwatch::config::Purpose::Database)
    );
    let store = store_for(&config).await;
    let sinks: Vec<Arc<Sink>> = sinks::build(&config.sink_settings()).unwrap().into_iter().map(Arc::new).collect();
    store.sync_sinks(sinks.iter().map(|sink| sink.spec()).collect(), chrono::Utc::now()).await.unwrap();
    Harness { _directory: directory, config, store, sinks }
}

fn cart_event(event_type: EventType, cart_id: &str) -> NewEvent {
    let data = CartEventData {
        cart_id: cart_id.into(),
        status: Some("Ordered".into()),
        previous_status: Some("CheckedOut".into()),
        order_id: Some("7cf9f78f-6631-44be-905a-94cee7a2cd9c".into()),
        cart_created_at: None,
        reference: Some("order-1017".into()),
        provider: "imaterialise".into(),
    };
    NewEvent::cart(event_type, &data, chrono::Utc::now())
}

impl Harness {
    /// Runs the delivery loops for `duration`, then stops them.
    async fn deliver_for(&self, duration: Duration) {
        let shutdown = CancellationToken::new();
        let tasks: Vec<_> = self
            .sinks
            .iter()
            .map(|sink| {
                tokio::spawn(delivery_loop(
                    self.store.clone(),
                    SinkSlot::new(Arc::clone(sink)),
                    Arc::new(Notify::new()),
                    Arc::new(cartwatch::metrics::Metrics::default()),
                    cartwatch::clock::Clock::system(),
                    shutdown.clone(),
                    CancellationToken::new(),
                ))
            })
            .collect();
        tokio::time::sleep(duration).await;
        shutdown.cancel();
        for task in tasks {
            task.await.unwrap();
        }
    }

    async fn state(&self, event: &NewEvent, sink: &str) -> DeliveryState {
        let events = self.store.events_after(0, 1000).await.unwrap();
        let seq = events.iter().find(|e| e.event_id == event.event_id).unwrap().seq;
        self.store.delivery_states(vec![seq]).await.unwrap().into_iter().find(|(_, s)| s.sink == sink).unwrap().1
    }
}

/// The `webhook-id` of every request `server` received, in arrival order.
async fn webhook_ids(server: &MockServer) -> Vec<String> {
    let requests = server.received_requests().await.unwrap();
    requests.iter().map(|r| r.headers.get("webhook-id").unwrap().to_str().unwrap().to_owned()).collect()
}

async fn receiver_answering(response: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST")).and(path("/hook")).respond_with(response).mount(&server).await;
    server
}

#[tokio::test]
async fn signatures_verify_with_the_standard_webhooks_crate_including_a_rotated_secret() {
    let server = receiver_answering(ResponseTemplate::new(204)).await;
    let harness = harness(&format!("{}/hook", server.uri()), |config| {
        config.webhooks.get_mut("erp").unwrap().previous_secret = cartwatch::secret::Secret::new(OLD_SECRET);
    })
    .await;
    let event = cart_event(EventType::CartOrdered, CART_A);
    harness.store.write_events(vec![event.clone()]).await.unwrap();
    harness.deliver_for(Duration::from_millis(500)).await;

    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    let mut headers = axum::http::HeaderMap::new();
    for (name, value) in request.headers.iter() {
        headers.insert(name.clone(), value.clone());
    }
    assert_eq!(headers["webhook-id"], event.event_id.as_str());
    assert_eq!(headers["content-type"], "application/json");
    let stored = harness.store.events_after(0, 1).await.unwrap().remove(0);
    assert_eq!(stored.event_id, event.event_id);
    assert_eq!(request.body, stored.payload.as_bytes(), "the body is the stored payload, byte for byte");
    // Receivers holding either the new or the old secret accept it; a stranger's does not.
    standardwebhooks::Webhook::new(WEBHOOK_SECRET).unwrap().verify(&request.body, &headers).unwrap();
    standardwebhooks::Webhook::new(OLD_SECRET).unwrap().verify(&request.body, &headers).unwrap();
    assert!(
        standardwebhooks::Webhook::new("whsec_dGhpcyBpcyBub3QgdGhlIHNlY3JldA==")
            .unwrap()
            .verify(&request.body, &headers)
            .is_err()
    );
    let signature = headers["webhook-signature"].to_str().unwrap();
    assert_eq!(signature.split(' ').count(), 2);
    assert!(signature.split(' ').all(|part| part.starts_with("v1,")));

    let state = harness.state(&event, "erp").await;
    assert_eq!((state.state.as_str(), state.attempts, state.last_status), ("delivered", 1, Some(204)));
}

#[tokio::test]
async fn a_redirect_is_a_failure_and_is_not_followed() {
    let server = MockServer::start().await;
    Mock::given(path("/hook"))
        .respond_with(ResponseTemplate::new(302).insert_header("Location", format!("{}/elsewhere", server.uri())))
        .mount(&server)
        .await;
    Mock::given(path("/elsewhere")).respond_with(ResponseTemplate::new(200)).expect(0).mount(&server).await;
    let harness = harness(&format!("{}/hook", server.uri()), |config| {
        config.delivery.schedule = vec![Duration::ZERO.into(), Duration::from_secs(60).into()];
    })
    .await;
    let event = cart_event(EventType::CartOrdered, CART_A);
    harness.store.write_events(vec![event.clone()]).await.unwrap();
    harness.deliver_for(Duration::from_millis(400)).await;
    let state = harness.state(&event, "erp").await;
    assert_eq!((state.state.as_str(), state.attempts, state.last_status), ("pending", 1, Some(302)));
    assert!(state.last_error.unwrap().contains("redirects are not followed"));
}

#[tokio::test]
async fn client_and_server_errors_are_retried_on_the_schedule_then_dead_lettered() {
    for status in [400, 500] {
        let server = receiver_answering(ResponseTemplate::new(status).set_body_string("no thanks")).await;
        let harness = harness(&format!("{}/hook", server.uri()), |_| {}).await;
        let event = cart_event(EventType::CartOrdered, CART_A);
        harness.store.write_events(vec![event.clone()]).await.unwrap();
        harness.deliver_for(Duration::from_millis(1500)).await;
        assert_eq!(
            server.received_requests().await.unwrap().len(),
            3,
            "one attempt per schedule entry, status {status}"
        );
        let state = harness.state(&event, "erp").await;
        assert_eq!((state.state.as_str(), state.attempts, state.last_status), ("dead", 3, Some(status)));
        assert!(state.last_error.as_deref().unwrap().contains("no thanks"));
        assert!(state.dead_at.is_some());

        let dead = harness.store.dead_letters(Some("erp".into()), 10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].event.event_id, event.event_id);
    }
}

#[tokio::test]
async fn a_dead_letter_can_be_redelivered_by_hand() {
    let server = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(503)).up_to_n_times(3).mount(&server).await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).mount(&server).await;
    let harness = harness(&format!("{}/hook", server.uri()), |_| {}).await;
    let event = cart_event(EventType::CartCheckedOut, CART_A);
    harness.store.write_events(vec![event.clone()]).await.unwrap();
    harness.deliver_for(Duration::from_millis(1200)).await;
    assert_eq!(harness.state(&event, "erp").await.state, "dead");

    let (queued, unknown) =
        harness.store.redeliver(vec![], true, Some("erp".into()), chrono::Utc::now()).await.unwrap();
    assert_eq!((queued, unknown.len()), (1, 0));
    harness.deliver_for(Duration::from_millis(500)).await;
    let state = harness.state(&event, "erp").await;
    assert_eq!((state.state.as_str(), state.attempts), ("delivered", 1), "attempts start afresh");
    let ids = webhook_ids(&server).await;
    assert_eq!(ids, vec![event.event_id.clone(); 4], "the same webhook-id on every attempt");
}

#[tokio::test]
async fn gone_disables_the_endpoint_and_keeps_its_events() {
    let server = receiver_answering(ResponseTemplate::new(410)).await;
    let harness = harness(&format!("{}/hook", server.uri()), |_| {}).await;
    let first = cart_event(EventType::CartOrdered, CART_A);
    harness.store.write_events(vec![first.clone()]).await.unwrap();
    harness.deliver_for(Duration::from_millis(600)).await;
    assert_eq!(server.received_requests().await.unwrap().len(), 1, "nothing more after 410");
    let reason = harness.store.sink_disabled("erp".into()).await.unwrap();
    assert!(reason.unwrap().contains("410 Gone"));
    assert_eq!(harness.state(&first, "erp").await.state, "pending", "undelivered, still queued");

    // Later events are queued for the disabled endpoint, but nothing is sent to it.
    let later = cart_event(EventType::CartOrdered, CART_B);
    let second = cart_event(EventType::CartOrdered, CART_A);
    harness.store.write_events(vec![later.clone(), second.clone()]).await.unwrap();
    harness.deliver_for(Duration::from_millis(300)).await;
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
    assert_eq!(harness.state(&later, "erp").await.state, "pending", "queued while disabled");
    let summary = cartwatch::render::render_summary(&harness.store.summary(chrono::Utc::now()).await.unwrap());
    assert!(summary.contains("DISABLED") && summary.contains("webhooks enable erp"), "{summary}");

    // A new URL enables it again, and everything queued meanwhile goes out, in each cart's order.
    let other = receiver_answering(ResponseTemplate::new(200)).await;
    let mut config = harness.config.clone();
    config.webhooks.get_mut("erp").unwrap().url = format!("{}/hook", other.uri());
    let sinks: Vec<Arc<Sink>> = sinks::build(&config.sink_settings()).unwrap().into_iter().map(Arc::new).collect();
    harness.store.sync_sinks(sinks.iter().map(|sink| sink.spec()).collect(), chrono::Utc::now()).await.unwrap();
    let harness = Harness { sinks, ..harness };
    harness.deliver_for(Duration::from_millis(500)).await;
    for event in [&first, &later, &second] {
        let state = harness.state(event, "erp").await;
        assert_eq!((state.state.as_str(), state.attempts), ("delivered", 1), "the refusal does not count");
    }
    let arrivals = webhook_ids(&other).await;
    let position = |event: &NewEvent| arrivals.iter().position(|id| *id == event.event_id).unwrap();
    assert!(position(&first) < position(&second), "cart A's events in order: {arrivals:?}");
}

#[tokio::test]
async fn the_enable_command_sends_what_was_queued_for_a_disabled_endpoint() {
    let server = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(410)).up_to_n_times(1).mount(&server).await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).mount(&server).await;
    let harness = harness(&format!("{}/hook", server.uri()), |_| {}).await;
    let events: Vec<NewEvent> = (0..4).map(|i| cart_event(EventType::CartOrdered, [CART_A, CART_B][i % 2])).collect();
    harness.store.write_events(events[..1].to_vec()).await.unwrap();
    harness.deliver_for(Duration::from_millis(400)).await;
    assert!(harness.store.sink_disabled("erp".into()).await.unwrap().is_some());
    harness.store.write_events(events[1..].to_vec()).await.unwrap();
    harness.deliver_for(Duration::from_millis(300)).await;
    assert_eq!(server.received_requests().await.unwrap().len(), 1, "nothing while disabled");
    assert_eq!(harness.store.enable_sink("erp".into(), chrono::Utc::now()).await.unwrap(), Some(true));
    harness.deliver_for(Duration::from_millis(500)).await;
    for event in &events {
        assert_eq!(harness.state(event, "erp").await.state, "delivered");
    }
    assert_eq!(harness.store.enable_sink("nope".into(), chrono::Utc::now()).await.unwrap(), None);
}

#[tokio::test]
async fn a_dead_letter_holds_its_carts_later_events_until_redelivered_or_skipped() {
    let server = MockServer::start().await;
    let first_a = cart_event(EventType::CartCheckedOut, CART_A);
    let first_b = cart_event(EventType::CartCheckedOut, CART_B);
    for event in [&first_a, &first_b] {
        Mock::given(method("POST"))
            .and(wiremock::matchers::header("webhook-id", event.event_id.as_str()))
            .respond_with(ResponseTemplate::new(500))
            .up_to_n_times(3)
            .mount(&server)
            .await;
    }
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).mount(&server).await;
    let harness = harness(&format!("{}/hook", server.uri()), |_| {}).await;
    let later_a: Vec<NewEvent> = (0..2).map(|_| cart_event(EventType::CartOrdered, CART_A)).collect();
    let later_b = cart_event(EventType::CartOrdered, CART_B);
    let mut all = vec![first_a.clone(), first_b.clone()];
    all.extend(later_a.iter().cloned());
    all.push(later_b.clone());
    harness.store.write_events(all).await.unwrap();
    harness.deliver_for(Duration::from_millis(1500)).await;

    // Both first events are dead after the schedule; everything after them waits unsent.
    assert_eq!(harness.state(&first_a, "erp").await.state, "dead");
    for event in later_a.iter().chain([&later_b]) {
        let state = harness.state(event, "erp").await;
        assert_eq!((state.state.as_str(), state.attempts), ("pending", 0), "held, not sent");
    }
    let summary = harness.store.summary(chrono::Utc::now()).await.unwrap();
    let erp = summary.sinks.iter().find(|sink| sink.sink == "erp").unwrap();
    assert_eq!((erp.dead, erp.held), (2, 3));
    assert!(cartwatch::render::render_summary(&summary).contains("held 3 behind dead letters"));

    // Redelivered, cart A's dead letter goes first and its later events follow in order.
    harness.store.redeliver(vec![first_a.event_id.clone()], false, None, chrono::Utc::now()).await.unwrap();
    // Skipped, cart B's dead letter is passed over and its later event goes out.
    let (skipped, unknown) =
        harness.store.skip_dead(vec![first_b.event_id.clone()], false, None, chrono::Utc::now()).await.unwrap();
    assert_eq!((skipped, unknown.len()), (1, 0));
    harness.deliver_for(Duration::from_millis(600)).await;
    let arrivals = webhook_ids(&server).await;
    let first_a_delivered = arrivals.iter().rposition(|id| *id == first_a.event_id).unwrap();
    let positions: Vec<usize> =
        later_a.iter().map(|event| arrivals.iter().position(|id| *id == event.event_id).unwrap()).collect();
    assert!(first_a_delivered < positions[0] && positions[0] < positions[1], "cart A in order: {arrivals:?}");
    assert_eq!(harness.state(&first_b, "erp").await.state, "skipped");
    assert_eq!(harness.state(&later_b, "erp").await.state, "delivered");
    let summary = harness.store.summary(chrono::Utc::now()).await.unwrap();
    let erp = summary.sinks.iter().find(|sink| sink.sink == "erp").unwrap();
    assert_eq!((erp.pending, erp.dead, erp.held), (0, 0, 0));
}

#[tokio::test]
async fn retry_after_on_429_is_a_floor_for_the_next_attempt() {
    let server = receiver_answering(ResponseTemplate::new(429).insert_header("Retry-After", "30")).await;
    let harness = harness(&format!("{}/hook", server.uri()), |_| {}).await;
    let event = cart_event(EventType::CartOrdered, CART_A);
    harness.store.write_events(vec![event.clone()]).await.unwrap();
    let before = chrono::Utc::now();
    harness.deliver_for(Duration::from_millis(700)).await;
    assert_eq!(server.received_requests().await.unwrap().len(), 1, "no retry before Retry-After");
    let state = harness.state(&event, "erp").await;
    let next = cartwatch::time::parse_ts(state.next_attempt_at.as_deref().unwrap()).unwrap();
    // Stored timestamps have millisecond precision.
    assert!(
        next >= before + chrono::Duration::milliseconds(29_999),
        "next attempt at {next}, not before Retry-After: {state:?}"
    );
    assert_eq!(state.last_status, Some(429));
}

#[tokio::test]
async fn a_receiver_that_hangs_past_the_timeout_fails_the_attempt() {
    let server = receiver_answering(ResponseTemplate::new(200).set_delay(Duration::from_secs(5))).await;
    let harness = harness(&format!("{}/hook", server.uri()), |config| {
        config.webhooks.get_mut("erp").unwrap().timeout = Duration::from_millis(300);
        config.delivery.schedule = vec![Duration::ZERO.into(), Duration::from_secs(60).into()];
    })
    .await;
    let event = cart_event(EventType::CartOrdered, CART_A);
    harness.store.write_events(vec![event.clone()]).await.unwrap();
    let started = Instant::now();
    harness.deliver_for(Duration::from_millis(800)).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    let state = harness.state(&event, "erp").await;
    assert_eq!((state.state.as_str(), state.attempts, state.last_status), ("pending", 1, None));
    assert!(state.last_error.unwrap().contains("no answer within 300ms"));
}

#[tokio::test]
async fn a_receiver_that_closes_the_connection_fails_the_attempt() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            drop(socket);
        }
    });
    let harness = harness(&format!("http://{address}/hook"), |config| {
        config.delivery.schedule = vec![Duration::ZERO.into(), Duration::from_secs(60).into()];
    })
    .await;
    let event = cart_event(EventType::CartOrdered, CART_A);
    harness.store.write_events(vec![event.clone()]).await.unwrap();
    harness.deliver_for(Duration::from_millis(500)).await;
    let state = harness.state(&event, "erp").await;
    assert_eq!((state.state.as_str(), state.attempts, state.last_status), ("pending", 1, None));
    assert!(state.last_error.unwrap().contains("cannot reach"));
}

#[tokio::test]
async fn events_of_one_cart_wait_for_the_earlier_one_while_other_carts_flow() {
    let server = MockServer::start().await;
    let first_a = cart_event(EventType::CartCheckedOut, CART_A);
    // The receiver refuses cart A's first event twice.
    Mock::given(method("POST"))
        .and(wiremock::matchers::header("webhook-id", first_a.event_id.as_str()))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(2)
        .mount(&server)
        .await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).mount(&server).await;
    let harness = harness(&format!("{}/hook", server.uri()), |_| {}).await;
    let second_a = cart_event(EventType::CartOrdered, CART_A);
    let first_b = cart_event(EventType::CartOrdered, CART_B);
    harness.store.write_events(vec![first_a.clone(), second_a.clone(), first_b.clone()]).await.unwrap();
    harness.deliver_for(Duration::from_millis(1500)).await;

    let arrivals = webhook_ids(&server).await;
    assert_eq!(arrivals.len(), 5);
    let position = |id: &str| arrivals.iter().position(|a| a == id).unwrap();
    let last_of_first_a = arrivals.iter().rposition(|a| *a == first_a.event_id).unwrap();
    assert!(position(&second_a.event_id) > last_of_first_a, "cart A's second event waited: {arrivals:?}");
    assert!(position(&first_b.event_id) < last_of_first_a, "cart B was not held up: {arrivals:?}");
    for event in [&first_a, &second_a, &first_b] {
        assert_eq!(harness.state(event, "erp").await.state, "delivered");
    }
}

#[tokio::test]
async fn log_and_webhook_sinks_keep_their_own_state() {
    let server = receiver_answering(ResponseTemplate::new(500)).await;
    let harness = harness(&format!("{}/hook", server.uri()), |config| {
        config.sinks.log.enabled = true;
        config.sinks.log.path = config.database.path.with_file_name("events.jsonl");
        config.webhooks.get_mut("erp").unwrap().event_types = vec!["cart.ordered".into()];
    })
    .await;
    let ordered = cart_event(EventType::CartOrdered, CART_A);
    let checked_out = cart_event(EventType::CartCheckedOut, CART_B);
    harness.store.write_events(vec![ordered.clone(), checked_out.clone()]).await.unwrap();
    harness.deliver_for(Duration::from_millis(400)).await;
    assert_eq!(harness.state(&ordered, "log").await.state, "delivered");
    assert_eq!(harness.state(&checked_out, "log").await.state, "delivered");
    assert_eq!(harness.state(&ordered, "erp").await.state, "pending");
    let seq = harness.store.events_after(0, 10).await.unwrap()[1].seq;
    let states = harness.store.delivery_states(vec![seq]).await.unwrap();
    assert_eq!(states.len(), 1, "the webhook only wants cart.ordered: {states:?}");
}

#[test]
fn plain_http_is_refused_for_remote_hosts_unless_enabled() {
    let mut config = Config::default();
    add_webhook(&mut config, "erp", "http://erp.example.com/hook", WEBHOOK_SECRET);
    let problems = config.problems(cartwatch::config::Purpose::Database);
    assert!(problems.iter().any(|p| p.key == "webhooks.erp.url" && p.message.contains("plain http")), "{problems:?}");
    config.webhooks.get_mut("erp").unwrap().allow_http = true;
    assert!(config.problems(cartwatch::config::Purpose::Database).is_empty());
    add_webhook(&mut config, "bad", "https://x.example.com/hook", "whsec_not base64!");
    let problems = config.problems(cartwatch::config::Purpose::Database);
    assert!(problems.iter().any(|p| p.key == "webhooks.bad.secret" && !p.message.contains("not base64")));
}

/// The events of `event_type` in the outbox, with their payloads' `data`.
async fn written(store: &Store, event_type: EventType) -> Vec<(cartwatch::outbox::StoredEvent, serde_json::Value)> {
    let events = store.events_after(0, 1000).await.unwrap();
    events
        .into_iter()
        .filter(|event| event.event_type == event_type.as_str())
        .map(|event| {
            let payload: serde_json::Value = serde_json::from_str(&event.payload).unwrap();
            (event, payload["data"].clone())
        })
        .collect()
}

/// Endpoint `erp` at `failing` and `crm` at `gone`, the log sink on, and `tweak` for the
/// rest; one cart.ordered written and delivered for `deliver_for`.
async fn two_troubled_endpoints(
    failing: &MockServer,
    gone: &MockServer,
    tweak: impl FnOnce(&mut Config),
    deliver_for: Duration,
) -> (Harness, NewEvent) {
    let harness = harness(&format!("{}/hook", failing.uri()), |config| {
        config.sinks.log.enabled = true;
        config.sinks.log.path = config.database.path.with_file_name("events.jsonl");
        add_webhook(config, "crm", &format!("{}/hook", gone.uri()), WEBHOOK_SECRET);
        tweak(config);
    })
    .await;
    let ordered = cart_event(EventType::CartOrdered, CART_A);
    harness.store.write_events(vec![ordered.clone()]).await.unwrap();
    harness.deliver_for(deliver_for).await;
    (harness, ordered)
}

crate::on_both_stores! {
    /// A dead letter and a disabled endpoint are announced, in the transaction that records
    /// them, to every other sink and never to the endpoint concerned; an announcement that is
    /// itself dead-lettered is not announced again.
    async fn dead_letters_and_disabled_endpoints_are_announced_to_the_other_sinks(backend: Backend) {
        let failing = receiver_answering(ResponseTemplate::new(500).set_body_string("no thanks")).await;
        let gone = receiver_answering(ResponseTemplate::new(410)).await;
        let healthy = receiver_answering(ResponseTemplate::new(204)).await;
        let database = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(postgres_database().await),
        };
        let tweak = |config: &mut Config| {
            if let Some(url) = database {
                config.database.url = cartwatch::secret::Secret::new(url);
            }
            add_webhook(config, "ops", &format!("{}/hook", healthy.uri()), WEBHOOK_SECRET);
        };
        let (harness, ordered) = two_troubled_endpoints(&failing, &gone, tweak, Duration::from_millis(2500)).await;

        assert_eq!(harness.state(&ordered, "erp").await.state, "dead");
        let dead_lettered = written(&harness.store, EventType::WebhookDeadLettered).await;
        assert_eq!(dead_lettered.len(), 1, "one announcement, for erp's dead letter only: {dead_lettered:?}");
        let (announcement, data) = &dead_lettered[0];
        assert_eq!(data["endpoint"], "erp");
        assert_eq!(data["eventId"], ordered.event_id.as_str());
        assert_eq!(data["eventType"], "cart.ordered");
        assert_eq!(data["cartId"], CART_A);
        assert_eq!(data["attempts"], 3);
        assert_eq!(data["lastStatus"], 500);
        assert!(data["error"].as_str().unwrap().contains("no thanks"), "{data}");
        assert!(data["message"].as_str().unwrap().contains("events redeliver --endpoint erp"), "{data}");
        assert_eq!(announcement.cart_id, None, "about no cart, so it waits for nothing");

        let disabled = written(&harness.store, EventType::WebhookEndpointDisabled).await;
        assert_eq!(disabled.len(), 1, "{disabled:?}");
        let (disabled, disabled_data) = &disabled[0];
        assert_eq!(disabled_data["endpoint"], "crm");
        assert_eq!(disabled_data["lastStatus"], 410);
        assert!(disabled_data["error"].as_str().unwrap().contains("410 Gone"), "{disabled_data}");

        let sinks_of = |seq: i64| {
            let store = harness.store.clone();
            async move {
                let mut states: Vec<(String, String)> = store
                    .delivery_states(vec![seq])
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|(_, state)| (state.sink, state.state))
                    .collect();
                states.sort();
                states
            }
        };
        // erp's dead letter reaches the log and ops, and waits for crm while it is disabled.
        assert_eq!(
            sinks_of(announcement.seq).await,
            [("crm", "pending"), ("log", "delivered"), ("ops", "delivered")].map(|(a, b)| (a.into(), b.into()))
        );
        // crm's disabling reaches the others; erp gives up on it too, which is not announced.
        assert_eq!(
            sinks_of(disabled.seq).await,
            [("erp", "dead"), ("log", "delivered"), ("ops", "delivered")].map(|(a, b)| (a.into(), b.into()))
        );
        let ids = webhook_ids(&healthy).await;
        for event_id in [&ordered.event_id, &announcement.event_id, &disabled.event_id] {
            assert!(ids.contains(event_id), "ops got {event_id}: {ids:?}");
        }
        assert_eq!(gone.received_requests().await.unwrap().len(), 1, "nothing after the 410");
        let log = std::fs::read_to_string(harness.config.sinks.log.path.clone()).unwrap();
        assert!(log.contains("\"webhook.dead_lettered\"") && log.contains("\"webhook.endpoint_disabled\""), "{log}");
    }
}

#[tokio::test]
async fn announcements_left_out_of_events_emit_are_not_written() {
    let failing = receiver_answering(ResponseTemplate::new(500)).await;
    let gone = receiver_answering(ResponseTemplate::new(410)).await;
    let leave_out = |config: &mut Config| config.events.emit.retain(|name| !name.starts_with("webhook."));
    let (harness, ordered) = two_troubled_endpoints(&failing, &gone, leave_out, Duration::from_millis(1200)).await;
    assert_eq!(harness.state(&ordered, "erp").await.state, "dead");
    assert!(harness.store.sink_disabled("crm".into()).await.unwrap().is_some());
    let events = harness.store.events_after(0, 100).await.unwrap();
    assert_eq!(events.len(), 1, "only the cart's event: {events:?}");
}
