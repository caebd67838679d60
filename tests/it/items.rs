//! The Add/Remove Cart Item API: the client against wiremock (request shape, every documented
//! code, broken answers), the guard, and the whole path against the simulator through the
//! binary and the HTTP API.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use crate::on_both_stores;
use cartwatch::cart_id::{CartId, ItemId};
use cartwatch::config::{Config, WireFormat};
use cartwatch::items::{ChangeError, ItemsService};
use cartwatch::model::{CartState, UpstreamError};
use cartwatch::provider::imaterialise::items::{ItemAction, ItemErrorKind, ItemsClient, ItemsError};
use cartwatch::secret::Secret;
use cartwatch_simulator::Status;
use cartwatch_simulator::{DEMO_API_CODE, SimulatorSettings};
use serde_json::json;
use wiremock::matchers::{body_json, body_string_contains, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const API_CODE: &str = "6f0c8e9c-3b0e-4f3e-9a57-2f1d0c7e5b11";
const CART: &str = "921a2046-66a5-4c5f-b9a6-4bc646fa5e5a";
const ITEM: &str = "333095fc-6ab2-4c30-b0d1-baecfd708f69";
const ITEMS_PATH: &str = "/web-api/cart/921a2046-66a5-4c5f-b9a6-4bc646fa5e5a/items";

const DOCUMENT_ANSWER: &str = r#"{"cartItems":[{"cartItemID":"333095fc-6ab2-4c30-b0d1-baecfd708f69","myCartItemReference":"some reference","toolID":"2054608d-b469-4cab-adeb-cf1c0569e7a1","modelID":"06515f8e-5d08-4fcb-912a-b87380d69927","fileUnits":"mm","fileScaleFactor":1.0000000000,"materialID":"035f4772-da8a-400b-8be4-2dd344b28ddb","finishID":"bba2bebb-8895-4049-aeb0-ab651cee2597","quantity":1,"mySalesUnitPrice":15.0000,"iMatUnitPrice":12.5000,"currency":"EUR","validUntil":"2014-11-26T16:54:34.937"}]}"#;

fn config_for_server(server: &MockServer, format: WireFormat) -> Config {
    let mut config = Config::default();
    config.imaterialise.base_url = server.uri();
    config.imaterialise.api_code = Secret::new(API_CODE);
    config.imaterialise.format = format;
    config
}

fn client(server: &MockServer, format: WireFormat) -> ItemsClient {
    ItemsClient::new(&config_for_server(server, format).imaterialise).unwrap()
}

fn cart() -> CartId {
    CartId::parse(CART).unwrap()
}

fn items() -> Vec<ItemId> {
    vec![ItemId::parse(&ITEM.to_uppercase()).unwrap()]
}

#[tokio::test]
async fn add_and_remove_in_json_with_the_documented_request() {
    for (action, verb) in [(ItemAction::Add, "POST"), (ItemAction::Remove, "DELETE")] {
        let server = MockServer::start().await;
        Mock::given(method(verb))
            .and(path(ITEMS_PATH))
            .and(header("apiCode", API_CODE))
            .and(header("content-type", "application/json"))
            .and(header("accept", "application/json"))
            .and(body_json(json!({ "CartItems": [{ "CartItemID": ITEM }] })))
            .respond_with(ResponseTemplate::new(200).set_body_raw(DOCUMENT_ANSWER, "application/json"))
            .expect(1)
            .mount(&server)
            .await;
        let reply = client(&server, WireFormat::Json).change(action, &cart(), &items()).await.unwrap();
        let item = &reply.items[0];
        assert_eq!(item.cart_item_id, ITEM);
        assert_eq!(item.my_cart_item_reference.as_deref(), Some("some reference"));
        assert_eq!(item.tool_id.as_deref(), Some("2054608d-b469-4cab-adeb-cf1c0569e7a1"));
        assert_eq!(item.model_id.as_deref(), Some("06515f8e-5d08-4fcb-912a-b87380d69927"));
        assert_eq!(item.file_units.as_deref(), Some("mm"));
        assert_eq!(item.file_scale_factor.unwrap().to_string(), "1.0000000000");
        assert_eq!(item.material_id.as_deref(), Some("035f4772-da8a-400b-8be4-2dd344b28ddb"));
        assert_eq!(item.finish_id.as_deref(), Some("bba2bebb-8895-4049-aeb0-ab651cee2597"));
        assert_eq!(item.quantity, Some(1));
        assert_eq!(item.my_sales_unit_price.unwrap().to_string(), "15.0000");
        assert_eq!(item.imat_unit_price.unwrap().to_string(), "12.5000");
        assert_eq!(item.currency.as_deref(), Some("EUR"));
        assert_eq!(item.valid_until.as_deref(), Some("2014-11-26T16:54:34.937"));
        assert!(reply.errors.is_empty());
    }
}

#[tokio::test]
async fn add_and_remove_in_xml() {
    let answer = "<?xml version=\"1.0\" encoding=\"utf-8\"?><CartItemsResponse><CartItems><CartItem>\
        <CartItemID>333095fc-6ab2-4c30-b0d1-baecfd708f69</CartItemID><MyCartItemReference>some reference</MyCartItemReference>\
        <FileUnits>mm</FileUnits><FileScaleFactor>1.0000000000</FileScaleFactor><Quantity>1</Quantity>\
        <MySalesUnitPrice>15.0000</MySalesUnitPrice><IMatUnitPrice>12.5000</IMatUnitPrice><Currency>EUR</Currency>\
        <ValidUntil>2014-11-26T16:54:34.937</ValidUntil></CartItem></CartItems></CartItemsResponse>";
    for (action, verb) in [(ItemAction::Add, "POST"), (ItemAction::Remove, "DELETE")] {
        let server = MockServer::start().await;
        Mock::given(method(verb))
            .and(path(ITEMS_PATH))
            .and(header("accept", "text/xml"))
            .and(body_string_contains(format!("<CartItem><CartItemID>{ITEM}</CartItemID></CartItem>")))
            .respond_with(ResponseTemplate::new(200).set_body_raw(answer, "text/xml"))
            .expect(1)
            .mount(&server)
            .await;
        let reply = client(&server, WireFormat::Xml).change(action, &cart(), &items()).await.unwrap();
        assert_eq!(reply.items[0].my_sales_unit_price.unwrap().to_string(), "15.0000");
        assert_eq!(reply.items[0].imat_unit_price.unwrap().to_string(), "12.5000");
        assert_eq!(reply.items[0].quantity, Some(1));
    }
}

#[tokio::test]
async fn every_documented_error_code_with_its_message() {
    let cases = [
        (101, "Specified Cart does not belong to partner.", ItemErrorKind::NotPartnersCart),
        (102, "Specified Cart was not found or wrong format.", ItemErrorKind::CartNotFound),
        (103, "CartItemID is of wrong format", ItemErrorKind::BadItemId),
        (105, "Cannot add/remove items. Specified Cart was already ordered.", ItemErrorKind::AlreadyOrdered),
        (106, "Not found", ItemErrorKind::NotFound),
        (
            107,
            "CartItem validity period expired on 2014-11-26T16:54:34.937",
            ItemErrorKind::ItemExpired(Some("2014-11-26T16:54:34.937".into())),
        ),
        (108, "CartItem already added to cart", ItemErrorKind::AlreadyInCart),
        (109, "CartItem not found in cart", ItemErrorKind::NotInCart),
        (
            110,
            "Cannot add/remove items. Specified Cart was already checked out or ordered.",
            ItemErrorKind::CheckedOutOrOrdered,
        ),
        (111, "Cannot add/remove items. Specified Cart has expired.", ItemErrorKind::CartExpired),
    ];
    for (code, message, kind) in cases {
        let server = MockServer::start().await;
        let body = json!({ "cartItems": [{ "error": { "message": message, "code": code }, "cartItemID": ITEM }] });
        Mock::given(method("POST")).respond_with(ResponseTemplate::new(403).set_body_json(body)).mount(&server).await;
        let error = client(&server, WireFormat::Json).change(ItemAction::Add, &cart(), &items()).await.unwrap_err();
        let ItemsError::Refused(errors) = &error else { panic!("{code}: {error:?}") };
        assert_eq!(errors[0].kind, kind, "code {code}");
        assert_eq!(
            (errors[0].code, errors[0].message.as_str(), errors[0].cart_item_id.as_deref()),
            (Some(code), message, Some(ITEM))
        );
        assert!(error.to_string().contains(&format!("({code})")), "{error}");
    }
}

#[tokio::test]
async fn refusals_in_xml_and_in_a_200_and_other_statuses() {
    let server = MockServer::start().await;
    Mock::given(method("DELETE"))
        .respond_with(ResponseTemplate::new(403).set_body_raw(
            "<CartItemsResponse><CartItems><CartItem><Error><Message>CartItem not found in cart</Message><Code>109</Code></Error><CartItemID>333095fc-6ab2-4c30-b0d1-baecfd708f69</CartItemID></CartItem></CartItems></CartItemsResponse>",
            "text/xml",
        ))
        .mount(&server)
        .await;
    let error = client(&server, WireFormat::Xml).change(ItemAction::Remove, &cart(), &items()).await.unwrap_err();
    assert!(matches!(&error, ItemsError::Refused(errors) if errors[0].kind == ItemErrorKind::NotInCart), "{error:?}");

    // A refusal sent with 200.
    let server = MockServer::start().await;
    let body = json!({ "cartItems": [{ "error": { "message": "CartItem already added to cart", "code": 108 }, "cartItemID": ITEM }] });
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200).set_body_json(body)).mount(&server).await;
    let error = client(&server, WireFormat::Json).change(ItemAction::Add, &cart(), &items()).await.unwrap_err();
    assert!(matches!(&error, ItemsError::Refused(errors) if errors[0].kind == ItemErrorKind::AlreadyInCart));

    for (status, body, expected) in [
        (401, "", ItemsError::Upstream(UpstreamError::Unauthorized)),
        (500, "<html>oops</html>", ItemsError::Upstream(UpstreamError::Http { status: 500 })),
        (404, "", ItemsError::Upstream(UpstreamError::Http { status: 404 })),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(status).set_body_string(body))
            .mount(&server)
            .await;
        assert_eq!(
            client(&server, WireFormat::Json).change(ItemAction::Add, &cart(), &items()).await.unwrap_err(),
            expected
        );
    }
}

#[tokio::test]
async fn malformed_answers_are_decode_errors() {
    for body in ["{\"cartItems\":[", "{\"unexpected\":true}", "<html>"] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_raw(body, "application/json"))
            .mount(&server)
            .await;
        let error = client(&server, WireFormat::Json).change(ItemAction::Add, &cart(), &items()).await.unwrap_err();
        assert!(matches!(error, ItemsError::Upstream(UpstreamError::Decode(_))), "{body}: {error:?}");
    }
}

/// A store with one cart in a given status, polled `polled_ago` ago, and a service for it.
async fn guarded(
    server: &MockServer,
    status: Option<&str>,
    state: &str,
    polled_ago: Duration,
) -> (Arc<ItemsService>, Store, tempfile::TempDir) {
    let directory = tempfile::tempdir().unwrap();
    let mut config = config_for_server(server, WireFormat::Json);
    config.database.path = directory.path().join("cartwatch.db");
    config.sinks.log.enabled = false;
    let store = store_for(&config).await;
    track(&store, vec![imaterialise_cart(CART, Some("order-9".into()))]).await;
    let polled_at = cartwatch::time::format_ts(chrono::Utc::now() - chrono::Duration::from_std(polled_ago).unwrap());
    rusqlite::Connection::open(&config.database.path)
        .unwrap()
        .execute(
            "UPDATE carts SET status = ?1, state = ?2, last_polled_at = ?3",
            rusqlite::params![status, state, polled_at],
        )
        .unwrap();
    let service = items_service(&store, &config);
    (service, store, directory)
}

async fn mount_items(server: &MockServer, expected_calls: u64) {
    Mock::given(path(ITEMS_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_raw(DOCUMENT_ANSWER, "application/json"))
        .expect(expected_calls)
        .mount(server)
        .await;
}

#[tokio::test]
async fn the_guard_refuses_locally_unless_forced() {
    for (status, state) in
        [(Some("CheckedOut"), "tracking"), (Some("Ordered"), "ordered"), (Some("Pending"), "untracked")]
    {
        let server = MockServer::start().await;
        mount_items(&server, 0).await;
        let (service, _store, _directory) = guarded(&server, status, state, Duration::ZERO).await;
        let error = service.change(ItemAction::Add, CART, &[ITEM.into()], false).await.unwrap_err();
        assert!(matches!(error, ChangeError::Refused(_)), "{status:?}/{state}: {error:?}");
        server.verify().await;
    }
    // A cart that is not registered at all.
    let server = MockServer::start().await;
    mount_items(&server, 1).await;
    let (service, store, _directory) = guarded(&server, Some("Pending"), "tracking", Duration::ZERO).await;
    store.untrack(vec![CART.to_owned()], chrono::Utc::now()).await.unwrap();
    let other = "bee2c269-1dbd-4f67-b9f1-2ea2d3b4917b";
    let error = service.change(ItemAction::Add, other, &[ITEM.into()], false).await.unwrap_err();
    assert!(error.to_string().contains("is not tracked"), "{error}");
    // --force asks anyway.
    let outcome = service.change(ItemAction::Add, CART, &[ITEM.into()], true).await.unwrap();
    assert_eq!(outcome.items.len(), 1);
    server.verify().await;
    // Malformed ids never leave the machine.
    assert!(matches!(
        service.change(ItemAction::Add, "nope", &[ITEM.into()], true).await,
        Err(ChangeError::Malformed(_))
    ));
    assert!(matches!(
        service.change(ItemAction::Add, CART, &["nope".into()], true).await,
        Err(ChangeError::Malformed(_))
    ));
}

#[tokio::test]
async fn a_fresh_pending_cart_changes_and_records_history_and_an_event() {
    let server = MockServer::start().await;
    mount_items(&server, 1).await;
    Mock::given(path("/web-api/cartstatus/statuses"))
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&server)
        .await;
    let (service, store, _directory) = guarded(&server, Some("Pending"), "tracking", Duration::from_secs(10)).await;
    let outcome = service.change(ItemAction::Add, CART, &[ITEM.to_uppercase()], false).await.unwrap();
    assert!(!outcome.refreshed);
    let history = store.item_history(CART.into()).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(
        (history[0].action.as_str(), history[0].my_sales_unit_price.as_deref(), history[0].imat_unit_price.as_deref()),
        ("add", Some("15.0000"), Some("12.5000"))
    );
    let events = store.events_after(0, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, "cart.items_changed");
    assert_eq!(Some(events[0].event_id.clone()), outcome.event_id);
    let payload: serde_json::Value = serde_json::from_str(&events[0].payload).unwrap();
    assert_eq!(payload["data"]["action"], "add");
    assert_eq!(payload["data"]["reference"], "order-9");
    assert_eq!(payload["data"]["items"][0]["mySalesUnitPrice"], "15.0000");
    // The cart is polled soon, to see it Pending again.
    let row = store.cart(CART.into()).await.unwrap().unwrap();
    assert!(row.next_poll_at.unwrap() <= chrono::Utc::now());
}

#[tokio::test]
async fn a_stale_status_is_refreshed_first() {
    let server = MockServer::start().await;
    mount_items(&server, 0).await;
    Mock::given(path("/web-api/cartstatus/statuses"))
        .and(body_json(json!({ "Carts": [{ "CartID": CART }] })))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({ "carts": [{ "cartID": CART, "cartStatus": "Checked Out" }] })),
        )
        .expect(1)
        .mount(&server)
        .await;
    let (service, store, _directory) = guarded(&server, Some("Pending"), "tracking", Duration::from_secs(600)).await;
    let error = service.change(ItemAction::Add, CART, &[ITEM.into()], false).await.unwrap_err();
    assert!(error.to_string().contains("is CheckedOut"), "{error}");
    // The refresh went through the normal path: transition and event recorded.
    let row = store.cart(CART.into()).await.unwrap().unwrap();
    assert_eq!(row.status.as_deref(), Some("CheckedOut"));
    assert_eq!(store.events_after(0, 10).await.unwrap()[0].event_type, "cart.checked_out");
    server.verify().await;
}

#[tokio::test]
async fn code_110_polls_the_cart_at_once_and_111_is_noted_but_ends_nothing_alone() {
    let server = MockServer::start().await;
    let refusal = json!({ "cartItems": [{ "error": { "message": "Cannot add/remove items. Specified Cart was already checked out or ordered.", "code": 110 }, "cartItemID": ITEM }] });
    Mock::given(path(ITEMS_PATH)).respond_with(ResponseTemplate::new(403).set_body_json(refusal)).mount(&server).await;
    Mock::given(path("/web-api/cartstatus/statuses"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "carts": [{ "cartID": CART, "cartStatus": "Ordered", "orderID": "7cf9f78f-6631-44be-905a-94cee7a2cd9c" }] })))
        .expect(1)
        .mount(&server)
        .await;
    let (service, store, _directory) = guarded(&server, Some("Pending"), "tracking", Duration::ZERO).await;
    let error = service.change(ItemAction::Add, CART, &[ITEM.into()], false).await.unwrap_err();
    assert!(matches!(error, ChangeError::Rejected(_)));
    let row = store.cart(CART.into()).await.unwrap().unwrap();
    assert_eq!(
        (row.state.as_str(), row.order_id.as_deref()),
        ("ordered", Some("7cf9f78f-6631-44be-905a-94cee7a2cd9c"))
    );
    assert_eq!(store.events_after(0, 10).await.unwrap()[0].event_type, "cart.ordered", "no transition is lost");
    server.verify().await;

    let server = MockServer::start().await;
    let refusal = json!({ "cartItems": [{ "error": { "message": "Cannot add/remove items. Specified Cart has expired.", "code": 111 }, "cartItemID": ITEM }] });
    Mock::given(path(ITEMS_PATH)).respond_with(ResponseTemplate::new(403).set_body_json(refusal)).mount(&server).await;
    let (service, store, _directory) = guarded(&server, Some("Pending"), "tracking", Duration::ZERO).await;
    let before = chrono::Utc::now();
    assert!(service.change(ItemAction::Add, CART, &[ITEM.into()], false).await.is_err());
    let row = store.cart(CART.into()).await.unwrap().unwrap();
    assert_eq!(row.state, CartState::Tracking, "one answer never ends tracking");
    assert!(row.last_error.as_deref().unwrap().contains("refused with 111"), "{:?}", row.last_error);
    let due = row.next_poll_at.unwrap();
    assert!(due <= chrono::Utc::now() && due >= before - chrono::Duration::milliseconds(1), "polled at once");
    assert!(store.events_after(0, 10).await.unwrap().is_empty(), "nothing announced on one answer");
}

on_both_stores! {
async fn end_to_end_against_the_simulator_through_the_binary_and_the_http_api(backend: Backend) {
    let directory = tempfile::tempdir().unwrap();
    let simulator =
        simulator(SimulatorSettings { seed: 19, carts: 4, unknown_carts: 0, ..SimulatorSettings::default() }).await;
    let ids: Vec<String> = simulator.cart_ids().iter().map(ToString::to_string).collect();
    let (pending, checked_out, http_cart) = (&ids[0], &ids[1], &ids[2]);
    simulator.force_status(pending, Status::Pending);
    simulator.force_status(checked_out, Status::CheckedOut);
    simulator.force_status(http_cart, Status::NotOrdered);
    let mut config = config_on(&simulator, directory.path(), backend).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    config.http.listen = format!("127.0.0.1:{port}");
    let store = store_for(&config).await;
    track_all(&store, &simulator).await;
    let daemon = RunningDaemon::start(config.clone());
    let known = wait_until(Duration::from_secs(10), async || {
        store.cart(checked_out.clone()).await.unwrap().unwrap().status.as_deref() == Some("CheckedOut")
    })
    .await;
    assert!(known);

    let config_path = directory.path().join("cartwatch.toml");
    std::fs::write(
        &config_path,
        format!(
            "[database]\npath = {:?}\nurl = {:?}\n[imaterialise]\nbase_url = {:?}\n[sinks.log]\nenabled = false\n",
            config.database.path.display().to_string(),
            config.database.url.expose(),
            simulator.base_url()
        ),
    )
    .unwrap();
    let cli = |arguments: &[&str]| {
        Command::new(BINARY)
            .arg("--config")
            .arg(&config_path)
            .args(arguments)
            .env("CARTWATCH__IMATERIALISE__API_CODE", DEMO_API_CODE)
            .output()
            .unwrap()
    };

    let item = simulator.new_item(false);
    let output = cli(&["items", "add", pending, &item.to_uppercase()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("1 item(s) added to cart"));
    assert_eq!(simulator.cart_items(pending), vec![item.clone()]);
    let listed = String::from_utf8_lossy(&cli(&["items", "list", pending]).stdout).into_owned();
    assert!(listed.contains(&item) && listed.contains("add") && listed.contains("EUR"), "{listed}");
    // The event reaches the log sink.
    let delivered = wait_until(Duration::from_secs(5), async || {
        logged_events(directory.path())
            .iter()
            .any(|e| e["type"] == "cart.items_changed" && e["data"]["items"][0]["cartItemId"] == item.as_str())
    })
    .await;
    assert!(delivered);

    // Refused locally for the CheckedOut cart: nothing reaches the partner.
    let requests = simulator.item_requests();
    let output = cli(&["items", "add", checked_out, &simulator.new_item(false)]);
    assert_eq!(output.status.code(), Some(7), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stderr).contains("is CheckedOut"));
    assert_eq!(simulator.item_requests(), requests);
    // The partner's own refusal: removing an item that is not in the cart (109).
    let output = cli(&["items", "remove", pending, &simulator.new_item(false)]);
    assert_eq!(output.status.code(), Some(8));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not in the cart (109)"));

    // The same through the HTTP API.
    let client = reqwest::Client::new();
    let call = async |method: reqwest::Method, cart: &str, items: serde_json::Value| {
        let response = client
            .request(method, format!("http://127.0.0.1:{port}/v1/carts/{cart}/items"))
            .header("content-type", "application/json")
            .body(json!({ "items": items }).to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, serde_json::from_str(&response.text().await.unwrap()).unwrap_or(serde_json::Value::Null))
    };
    let second = simulator.new_item(false);
    let (status, body) = call(reqwest::Method::POST, http_cart, json!([second])).await;
    assert_eq!(status, 200);
    assert_eq!(body["items"][0]["cartItemId"], second.as_str());
    assert!(body["eventId"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(call(reqwest::Method::DELETE, http_cart, json!([second])).await.0, 200);
    let (status, body) = call(reqwest::Method::DELETE, http_cart, json!([second])).await;
    assert_eq!(status, 422);
    assert_eq!(body["codes"], json!([109]));
    assert_eq!(call(reqwest::Method::POST, checked_out, json!([second])).await.0, 409);
    assert_eq!(call(reqwest::Method::POST, checked_out, json!(["nope"])).await.0, 400);
    // The partner made the carts Pending; the daemon sees it.
    let pending_now = wait_until(Duration::from_secs(5), async || {
        store.cart(http_cart.clone()).await.unwrap().unwrap().status.as_deref() == Some("Pending")
    })
    .await;
    assert!(pending_now);
    daemon.stop().await;
    simulator.stop().await;
}
}

/// `cartwatch simulate` as its own process, as a newcomer runs it: its catalogue is listed at
/// start and at `/_sim/items`, more items can be made, and `cartwatch items add` succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_add_works_against_cartwatch_simulate_as_its_own_process() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let directory = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut simulate = Command::new(BINARY)
        .args(["simulate", "--listen", &format!("127.0.0.1:{port}"), "--carts", "3", "--items", "2"])
        .args(["--uniform-status", "Pending"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(simulate.stdout.take().unwrap()).lines();
    let base_url = lines.next().unwrap().unwrap();
    let _ = lines.next();
    let listed = lines.next().unwrap().unwrap();
    assert!(listed.starts_with("cart items for `cartwatch items add CART ITEM`:"), "{listed}");

    let client = reqwest::Client::new();
    let json = |text: String| serde_json::from_str::<serde_json::Value>(&text).unwrap();
    let catalogue = json(client.get(format!("{base_url}/_sim/items")).send().await.unwrap().text().await.unwrap());
    let items: Vec<String> = catalogue["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["cartItemId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|item| listed.contains(item.as_str())), "{listed}");
    let made = json(client.post(format!("{base_url}/_sim/items")).send().await.unwrap().text().await.unwrap());
    let made = made["cartItemId"].as_str().unwrap().to_owned();
    let carts = json(client.get(format!("{base_url}/_sim/carts")).send().await.unwrap().text().await.unwrap());
    let cart = carts["carts"][0].as_str().unwrap().to_owned();

    let config = directory.path().join("cartwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\npath = {:?}\n[imaterialise]\nbase_url = {base_url:?}\napi_code = {:?}\n[sinks.log]\npath = {:?}\n",
            directory.path().join("cartwatch.db").display().to_string(),
            cartwatch_simulator::DEMO_API_CODE,
            events_file(directory.path()).display().to_string()
        ),
    )
    .unwrap();
    let run = |arguments: &[&str]| Command::new(BINARY).arg("--config").arg(&config).args(arguments).output().unwrap();
    assert!(run(&["track", &cart]).status.success());
    let added = run(&["items", "add", &cart, &items[0], &made]);
    let said = String::from_utf8_lossy(&added.stdout).into_owned() + &String::from_utf8_lossy(&added.stderr);
    assert!(added.status.success(), "{said}");
    assert!(said.contains(&items[0]) && said.contains(&made), "{said}");
    let listed = run(&["items", "list", &cart]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&made));
    let events = String::from_utf8_lossy(&run(&["events", "--json"]).stdout).into_owned();
    assert!(events.contains("cart.items_changed"), "{events}");
    let _ = Command::new("kill").arg(simulate.id().to_string()).status();
    let _ = simulate.wait();
}
