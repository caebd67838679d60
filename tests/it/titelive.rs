//! The Titelive provider: the client against wiremock (the documents' bodies with their
//! commas fixed, every code of each list, the token header, broken answers), both providers
//! in one daemon against the simulator, `cartwatch confirm`, and a database from before
//! providers existed.

use std::time::Duration;

use crate::common::*;
use crate::on_both_stores;
use cartwatch::config::Config;
use cartwatch::model::{CartReport, TrackRequest, UpstreamError};
use cartwatch::provider::titelive::{self, CheckCode, TiteliveClient, Token};
use cartwatch_simulator::SimulatorSettings;
use serde_json::json;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOKEN: &str = "q8k2m5v9x1c4b7n3z6l0p2r5t8";

const CART: &str = r#"{"response": {"success": true, "code": 0, "message": "cart retrieved", "object": {"cart": {
    "customer": 586, "productsQuantity": 1, "price": 22.5, "totalPrice": 22.5, "creationDate": "2016-03-03 11:39:45",
    "deliveryType": 1, "paymentMethod": 1,
    "lines": {"line": [{"id": 2, "ean": 9789462500877, "title": "Kip", "author": "Marcus Bean & Ellen Hosmar", "price": 22.5, "quantity": 1, "productForm": "BB"}]},
    "deliveryAddress": {"id": 3, "user": 586, "addressType": 1, "firstName": "Spider", "lastName": "Man", "adressLine1": "Victoria Street", "number": 44, "postcode": "10025", "city": "New York", "country": 3, "default": false},
    "invoiceAddress": {"id": 3, "user": 586, "addressType": 1, "firstName": "Spider", "lastName": "Man", "adressLine1": "Victoria Street", "number": 44, "postcode": "10025", "city": "New York", "country": 3, "default": false}
}}}}"#;

const ORDER: &str = r#"{"response": {"success": true, "code": 0, "message": "order saved", "object": {"order": {
    "id": 3, "customer": 2, "price": 22.5, "totalPrice": 22.5, "status": 1, "creationDate": "2016-02-29 15:43:21",
    "deliveryType": 3, "paymentMethod": 1,
    "lines": {"line": [{"id": 7, "ean": 9789462500877, "title": "Kip", "author": "Marcus Bean & Ellen Hosmar", "price": 22.5, "quantity": 1, "productForm": "BB"}]},
    "deliveryFirstName": "Thor", "deliveryLastName": "-", "deliveryAdressLine1": "-", "deliveryPostcode": "-", "deliveryCity": "Asgard", "deliveryCountry": 1,
    "invoiceFirstName": "Thor", "invoiceLastName": "-", "invoiceAdressLine1": "-", "invoicePostcode": "-", "invoiceCity": "Asgard", "invoiceCountry": 1
}}}}"#;

fn client(server: &MockServer) -> TiteliveClient {
    let mut config = Config::default().titelive;
    config.base_url = server.uri();
    config.request_timeout = Duration::from_secs(2);
    TiteliveClient::new(&config).unwrap()
}

fn token() -> Token {
    Token::parse(TOKEN).unwrap()
}

fn error_body(code: i64, message: &str) -> String {
    json!({ "response": { "success": false, "code": code, "message": message } }).to_string()
}

async fn answering(endpoint: &str, http_method: &str, body: &str) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method(http_method))
        .and(path(format!("/api/json/00000/cart/{endpoint}")))
        .and(header("token", TOKEN))
        .respond_with(ResponseTemplate::new(200).set_body_raw(body.to_owned(), "application/json"))
        .expect(1)
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn get_and_check_parse_the_documents_cart() {
    for endpoint in ["", "check"] {
        let server = answering(endpoint, "GET", CART).await;
        let client = client(&server);
        let answer = if endpoint.is_empty() {
            client.get("00000", &token()).await
        } else {
            client.check("00000", &token()).await
        }
        .unwrap();
        assert_eq!(answer.code, CheckCode::Valid);
        let cart = answer.object.unwrap();
        assert_eq!(
            (cart.customer, cart.products_quantity, cart.delivery_type, cart.payment_method),
            (Some(586), Some(1), Some(1), Some(1))
        );
        assert_eq!(cart.total_price.unwrap().to_string(), "22.5");
        assert_eq!(cart.creation_date.as_deref(), Some("2016-03-03 11:39:45"));
        assert!(cart.creation_date_parsed.is_some());
        let line = &cart.lines[0];
        assert_eq!(
            (line.ean.as_deref(), line.title.as_deref(), line.quantity),
            (Some("9789462500877"), Some("Kip"), Some(1))
        );
        assert_eq!(line.price.unwrap().to_string(), "22.5");
        let address = cart.delivery_address.unwrap();
        assert_eq!(
            (address.address_line1.as_deref(), address.postcode.as_deref(), address.country),
            (Some("Victoria Street"), Some("10025"), Some(3))
        );
        server.verify().await;
    }
}

#[tokio::test]
async fn confirm_posts_a_form_and_parses_the_order() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/json/00000/cart/confirm"))
        .and(header("token", TOKEN))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(ORDER, "application/json"))
        .expect(1)
        .mount(&server)
        .await;
    let answer = client(&server).confirm("00000", &token()).await.unwrap();
    let order = answer.object.unwrap();
    assert_eq!((order.id.as_deref(), order.status, order.customer), (Some("3"), Some(1), Some(2)));
    assert_eq!(order.total_price.unwrap().to_string(), "22.5");
    assert_eq!((order.delivery.city.as_deref(), order.invoice.first_name.as_deref()), (Some("Asgard"), Some("Thor")));
    assert_eq!(order.lines.len(), 1);
}

#[tokio::test]
async fn every_code_of_each_list_maps_to_its_outcome() {
    let check_codes = [
        (1, CheckCode::DomainMalformed),
        (2, CheckCode::RequiredFieldEmpty),
        (3, CheckCode::RequiredFieldMalformed),
        (4, CheckCode::NoSession),
        (10, CheckCode::NoCart),
        (11, CheckCode::AlreadyOrder),
        (12, CheckCode::NoProducts),
        (13, CheckCode::NotShopsCart),
        (14, CheckCode::NoEmail),
        (15, CheckCode::InvoiceAddressNotSet),
        (16, CheckCode::InvoiceAddressUnknown),
        (17, CheckCode::DeliveryTypeNotSet),
        (18, CheckCode::DeliveryTypeUnknown),
        (19, CheckCode::DeliveryAddressNotSet),
        (20, CheckCode::DeliveryAddressUnknown),
        (21, CheckCode::ShopNotSelected),
        (22, CheckCode::ShopUnknown),
        (23, CheckCode::PaymentMethodNotSet),
        (24, CheckCode::PaymentMethodUnknown),
        (25, CheckCode::ShopPaymentNeedsShopDelivery),
    ];
    for (code, expected) in check_codes {
        let server = answering("check", "GET", &error_body(code, "as documented")).await;
        let answer = client(&server).check("00000", &token()).await.unwrap();
        assert_eq!(answer.code, expected, "check code {code}");
        assert_eq!(answer.message, "as documented");
    }
    // Confirm numbers payment codes one lower.
    for (code, expected) in [
        (11, CheckCode::AlreadyOrder),
        (21, CheckCode::ShopNotSelected),
        (22, CheckCode::PaymentMethodNotSet),
        (23, CheckCode::PaymentMethodUnknown),
    ] {
        let server = answering("confirm", "POST", &error_body(code, "as documented")).await;
        assert_eq!(client(&server).confirm("00000", &token()).await.unwrap().code, expected, "confirm code {code}");
    }
    // Get has only 0-4 and 10.
    for (code, expected) in [(4, CheckCode::NoSession), (10, CheckCode::NoCart)] {
        let server = answering("", "GET", &error_body(code, "no cart at this time")).await;
        assert_eq!(client(&server).get("00000", &token()).await.unwrap().code, expected);
    }
    // 99 is a failure of the partner's, retried like any transient error.
    let server = answering("check", "GET", &error_body(99, "Uncatched exception")).await;
    assert_eq!(
        client(&server).check("00000", &token()).await.unwrap_err(),
        UpstreamError::Api { code: Some(99), message: "Uncatched exception".into() }
    );
}

#[tokio::test]
async fn the_check_result_becomes_the_carts_status() {
    for (code, status) in [
        (0, Some("Valid")),
        (11, Some("Ordered")),
        (4, Some("NoSession")),
        (10, Some("NoCart")),
        (15, Some("NoInvoiceAddress")),
        (2, None),
    ] {
        let body = if code == 0 { CART.to_owned() } else { error_body(code, "message") };
        let server = answering("check", "GET", &body).await;
        let report = client(&server).poll("00000", TOKEN).await.unwrap();
        match (report, status) {
            (CartReport::Status(observed), Some(status)) => assert_eq!(observed.status, status),
            (CartReport::Error(Some(2), message), None) => assert!(message.contains("required field is empty")),
            (other, _) => panic!("code {code}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn broken_answers_are_transient_failures() {
    for (status, body, content_type) in [
        (200, "{\"response\": {\"success\": true \"code\": 0}}", "application/json"),
        (502, "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>", "text/html"),
        (200, "<html><body>Maintenance</body></html>", "text/html"),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(status).set_body_raw(body, content_type))
            .mount(&server)
            .await;
        let error = client(&server).check("00000", &token()).await.unwrap_err();
        match status {
            502 => assert_eq!(error, UpstreamError::Http { status: 502 }),
            _ => assert!(matches!(error, UpstreamError::Decode(_)), "{body}: {error:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_providers_in_one_daemon_match_the_simulators_truth() {
    let directory = tempfile::tempdir().unwrap();
    let settings = SimulatorSettings {
        seed: 29,
        carts: 10,
        unknown_carts: 0,
        titelive_sessions: 12,
        ..SimulatorSettings::default()
    };
    let simulator = simulator(settings).await;
    let mut config = config_for(&simulator, directory.path());
    config.titelive.enabled = true;
    config.titelive.base_url = simulator.base_url();
    config.titelive.requests_per_second = 0.0;
    let store = store_for(&config).await;
    track_all(&store, &simulator).await;
    let sessions: Vec<TrackRequest> =
        simulator.session_tokens().into_iter().map(|token| titelive_session(&token)).collect();
    track(&store, sessions).await;

    let daemon = RunningDaemon::start(config.clone());
    let expected = || {
        let mut expected: Vec<(String, String)> = simulator
            .truth()
            .into_iter()
            .filter_map(|t| {
                // Titelive carts are announced by the id derived from their session token.
                let cart_id = if t.cart_id.len() == 26 { titelive::derived_id(&t.cart_id) } else { t.cart_id };
                match t.to.as_str() {
                    "CheckedOut" => Some((cart_id, "cart.checked_out".to_owned())),
                    "Ordered" => Some((cart_id, "cart.ordered".to_owned())),
                    "Valid" => Some((cart_id, "cart.ready".to_owned())),
                    "NoSession" => Some((cart_id, "cart.session_expired".to_owned())),
                    _ => None,
                }
            })
            .collect();
        expected.sort();
        expected
    };
    let announced = |events: &[serde_json::Value]| {
        let mut found: Vec<(String, String)> = events
            .iter()
            .filter(|e| {
                matches!(
                    e["type"].as_str(),
                    Some("cart.checked_out" | "cart.ordered" | "cart.ready" | "cart.session_expired")
                )
            })
            .map(|e| (e["data"]["cartId"].as_str().unwrap().to_owned(), e["type"].as_str().unwrap().to_owned()))
            .collect();
        found.sort();
        found
    };
    let matched = wait_until(Duration::from_secs(60), async || {
        simulator.settled() && announced(&logged_events(directory.path())) == expected()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    daemon.stop().await;
    let events = logged_events(directory.path());
    assert_eq!(announced(&events), expected());
    assert!(matched, "{} unsettled", simulator.unsettled());
    let titelive_events: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["data"]["provider"] == "titelive").collect();
    assert!(titelive_events.iter().any(|e| e["type"] == "cart.ready"));
    assert!(titelive_events.iter().any(|e| e["type"] == "cart.ordered"));
    assert!(events.iter().any(|e| e["data"]["provider"] == "imaterialise" && e["type"] == "cart.ordered"));
    // Ordered sessions are no longer polled and their rows say so.
    for transition in simulator.truth().into_iter().filter(|t| t.to == "Ordered" && t.cart_id.len() == 26) {
        let cart = store.cart(titelive::derived_id(&transition.cart_id)).await.unwrap().unwrap();
        assert_eq!(
            (cart.state.as_str(), cart.provider.as_str(), cart.account.as_str()),
            ("ordered", "titelive", "00000")
        );
    }

    // A session whose cart stays valid is confirmed by hand.
    let valid = store
        .summary(chrono::Utc::now())
        .await
        .unwrap()
        .carts
        .iter()
        .any(|(state, status, _)| state == "tracking" && status.as_deref() == Some("Valid"));
    assert!(valid, "the seed leaves a session valid and unordered");
    let valid_token = simulator
        .session_tokens()
        .into_iter()
        .find(|token| simulator.truth().iter().rfind(|t| &t.cart_id == token).is_some_and(|t| t.to == "Valid"))
        .unwrap();
    let config_path = directory.path().join("cartwatch.toml");
    std::fs::write(
        &config_path,
        format!(
            "[database]\npath = {:?}\n[titelive]\nenabled = true\nbase_url = {:?}\n[sinks.log]\nenabled = false\n",
            config.database.path.display().to_string(),
            simulator.base_url()
        ),
    )
    .unwrap();
    let output = std::process::Command::new(BINARY)
        .arg("--config")
        .arg(&config_path)
        .args(["confirm", &valid_token])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("created (status 1, total 22.5)"));
    let valid_id = titelive::derived_id(&valid_token);
    let cart = store.cart(valid_id.clone()).await.unwrap().unwrap();
    let order = simulator.truth().into_iter().rfind(|t| t.cart_id == valid_token).unwrap();
    assert_eq!(
        (cart.state.as_str(), cart.order_id.clone(), cart.order_total.as_deref()),
        ("ordered", order.order_id, Some("22.5"))
    );
    let last = store.events_after(0, 10_000).await.unwrap().pop().unwrap();
    assert_eq!((last.event_type.as_str(), last.cart_id.as_deref()), ("cart.ordered", Some(valid_id.as_str())));
    assert!(!last.payload.contains(&valid_token), "the session token is never in an event");
    // Confirming again is refused by the partner (already an order).
    let output = std::process::Command::new(BINARY)
        .arg("--config")
        .arg(&config_path)
        .args(["confirm", &valid_token])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(8));
    assert!(String::from_utf8_lossy(&output.stderr).contains("already became an order"));
    simulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_before_providers_migrates_and_keeps_working() {
    let directory = tempfile::tempdir().unwrap();
    let simulator =
        simulator(SimulatorSettings { seed: 37, carts: 6, unknown_carts: 0, ..SimulatorSettings::default() }).await;
    let config = config_for(&simulator, directory.path());
    // Build the schema as it was before this change (versions 1 to 3) and fill it.
    {
        let mut connection = rusqlite::Connection::open(&config.database.path).unwrap();
        connection.pragma_update(None, "journal_mode", "wal").unwrap();
        migrate_to(&mut connection, 3);
        for cart_id in simulator.cart_ids() {
            connection
                .execute(
                    "INSERT INTO carts (cart_id, reference, next_poll_at) VALUES (?1, 'old', '2020-01-01T00:00:00.000Z')",
                    [cart_id.as_str()],
                )
                .unwrap();
        }
        connection
            .execute(
                "INSERT INTO events (event_id, event_type, cart_id, created_at, payload) VALUES ('evt_old', 'cart.ordered', NULL, '2020-01-01T00:00:00.000Z', '{}')",
                [],
            )
            .unwrap();
    }
    let store = store_for(&config).await;
    let version: i64 = rusqlite::Connection::open(&config.database.path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, cartwatch::store::sqlite::schema::latest_version());
    let old = store.cart(simulator.cart_ids()[0].to_string()).await.unwrap().unwrap();
    assert_eq!(
        (old.provider.as_str(), old.account.as_str(), old.reference.as_deref()),
        ("imaterialise", "", Some("old"))
    );
    assert_eq!(store.events_after(0, 10).await.unwrap()[0].event_id, "evt_old");

    let record = poll_once(&config).await.sweep.record;
    assert_eq!((record.requests, record.carts_polled), (1, 6));
    let polled = store.cart(simulator.cart_ids()[0].to_string()).await.unwrap().unwrap();
    assert!(polled.status.is_some());
    simulator.stop().await;
}

on_both_stores! {
async fn confirm_through_the_http_api(backend: Backend) {
    let directory = tempfile::tempdir().unwrap();
    let settings = SimulatorSettings {
        seed: 43,
        carts: 0,
        unknown_carts: 0,
        titelive_sessions: 8,
        ..SimulatorSettings::default()
    };
    let simulator = simulator(settings).await;
    let mut config = config_on(&simulator, directory.path(), backend).await;
    config.imaterialise.enabled = false;
    config.titelive.enabled = true;
    config.titelive.base_url = simulator.base_url();
    config.titelive.requests_per_second = 0.0;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    config.http.listen = format!("127.0.0.1:{port}");
    let store = store_for(&config).await;
    let sessions: Vec<TrackRequest> =
        simulator.session_tokens().into_iter().map(|token| titelive_session(&token)).collect();
    track(&store, sessions).await;
    let daemon = RunningDaemon::start(config);
    // Wait for a session whose cart is valid and not yet ordered.
    let mut valid = None;
    let found = wait_until(Duration::from_secs(30), async || {
        for token in simulator.session_tokens() {
            if store
                .cart(titelive::derived_id(&token))
                .await
                .unwrap()
                .is_some_and(|cart| cart.state.as_str() == "tracking" && cart.status.as_deref() == Some("Valid"))
            {
                valid = Some(token);
                return true;
            }
        }
        false
    })
    .await;
    assert!(found, "a session became valid");
    let token = valid.unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/v1/carts/{token}/confirm");
    let response = client.post(&url).send().await.unwrap();
    let status = response.status().as_u16();
    let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    // The customer may have confirmed it on the shop's site a moment before: then the partner
    // says so and the answer is 422; either way the session ends up an order.
    match status {
        200 => {
            assert_eq!(body["order"]["status"], 1);
            assert_eq!(body["order"]["totalPrice"], "22.5");
        }
        422 => assert!(body["error"].as_str().unwrap().contains("already became an order"), "{body}"),
        other => panic!("{other}: {body}"),
    }
    let response = client.post(&url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 422, "an order cannot be confirmed twice");
    let response = client.post(format!("http://127.0.0.1:{port}/v1/carts/short/confirm")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let ordered = wait_until(Duration::from_secs(10), async || {
        store.cart(titelive::derived_id(&token)).await.unwrap().unwrap().state.as_str() == "ordered"
    })
    .await;
    assert!(ordered);
    daemon.stop().await;
    simulator.stop().await;
}
}

/// A session token is a customer's credential: it is kept for polling and nowhere else. Logs,
/// output, the HTTP API and events name the cart by the id derived from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_tokens_stay_out_of_logs_output_and_events() {
    let directory = tempfile::tempdir().unwrap();
    let settings = SimulatorSettings {
        seed: 47,
        carts: 0,
        unknown_carts: 0,
        titelive_sessions: 3,
        ..SimulatorSettings::default()
    };
    let simulator = simulator(settings).await;
    let config_path = directory.path().join("cartwatch.toml");
    std::fs::write(
        &config_path,
        format!(
            "[database]\npath = {:?}\n[imaterialise]\nenabled = false\n[titelive]\nenabled = true\nbase_url = {:?}\n\
             requests_per_second = 0\n[sinks.log]\npath = {:?}\n[logging]\nlevel = \"debug\"\n",
            directory.path().join("cartwatch.db").display().to_string(),
            simulator.base_url(),
            events_file(directory.path()).display().to_string()
        ),
    )
    .unwrap();
    let tokens = simulator.session_tokens();
    let run = |arguments: &[&str]| {
        std::process::Command::new(BINARY).arg("--config").arg(&config_path).args(arguments).output().unwrap()
    };
    let mut arguments = vec!["track", "--provider", "titelive", "--domain", "00000"];
    arguments.extend(tokens.iter().map(String::as_str));
    let mut outputs = vec![run(&arguments)];
    // Enough polls for the scripts to reach a valid cart and an order.
    for _ in 0..16 {
        outputs.push(run(&["poll-once", "--all"]));
    }
    outputs.push(run(&["status"]));
    outputs.push(run(&["status", &tokens[0]]));
    outputs.push(run(&["events"]));
    let everything: String = outputs
        .iter()
        .map(|output| format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
        .collect::<String>()
        + &std::fs::read_to_string(events_file(directory.path())).unwrap_or_default();
    let derived = titelive::derived_id(&tokens[0]);
    assert!(simulator.requests() >= 6, "polled: {everything}");
    assert!(std::fs::read_to_string(events_file(directory.path())).unwrap().contains("\"provider\":\"titelive\""));
    assert!(everything.contains(&derived), "the derived id names the cart: {everything}");
    assert!(everything.contains("\"level\":\"DEBUG\"") || everything.contains("DEBUG"), "debug logs were on");
    for token in &tokens {
        assert!(!everything.contains(token.as_str()), "a session token leaked: {everything}");
    }
    // `status TOKEN` finds the cart by its token without showing it.
    assert!(String::from_utf8_lossy(&outputs[outputs.len() - 2].stdout).contains(&derived));
    simulator.stop().await;
}
