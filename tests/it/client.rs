//! The Cart Status client against a wiremock upstream: request shape, every documented answer
//! and every kind of broken answer, each with its exact outcome.

use std::time::Duration;

use cartwatch::cart_id::CartId;
use cartwatch::config::{Config, ImaterialiseConfig, WireFormat};
use cartwatch::model::{CartReport, UpstreamError};
use cartwatch::provider::imaterialise::StatusClient;
use cartwatch::provider::imaterialise::status::CartStatus;
use cartwatch::secret::Secret;
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const API_CODE: &str = "6f0c8e9c-3b0e-4f3e-9a57-2f1d0c7e5b11";
const A: &str = "921a2046-66a5-4c5f-b9a6-4bc646fa5e5a";
const B: &str = "bee2c269-1dbd-4f67-b9f1-2ea2d3b4917b";
const C: &str = "59dcca18-05e7-4f5c-8b4e-89e987ea1e51";

fn settings(server: &MockServer, format: WireFormat) -> ImaterialiseConfig {
    let mut settings = Config::default().imaterialise;
    settings.base_url = server.uri();
    settings.api_code = Secret::new(API_CODE);
    settings.format = format;
    settings.request_timeout = Duration::from_secs(2);
    settings.max_response_bytes = 4096;
    settings
}

fn ids(texts: &[&str]) -> Vec<CartId> {
    texts.iter().map(|text| CartId::parse(text).unwrap()).collect()
}

async fn fetch_json(body: &str, status: u16, requested: &[&str]) -> Result<Vec<(String, CartReport)>, UpstreamError> {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/web-api/cartstatus/statuses"))
        .respond_with(ResponseTemplate::new(status).set_body_raw(body.to_owned(), "application/json"))
        .mount(&server)
        .await;
    let client = StatusClient::new(&settings(&server, WireFormat::Json)).unwrap();
    client.fetch_ids(&ids(requested)).await.map(|reply| reply.reports)
}

/// The status reported, read back through the i.materialise status model.
fn status_of(report: &CartReport) -> CartStatus {
    match report {
        CartReport::Status(observed) => {
            assert_eq!(observed.known_status, !matches!(CartStatus::parse(&observed.status), CartStatus::Other(_)));
            CartStatus::parse(&observed.status)
        }
        other => panic!("expected a status, got {other:?}"),
    }
}

#[tokio::test]
async fn json_request_has_the_documented_shape_and_headers() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/web-api/cartstatus/statuses"))
        .and(header("apiCode", API_CODE))
        .and(header("accept", "application/json"))
        .and(header("content-type", "application/json"))
        .and(body_json(serde_json::json!({ "Carts": [{ "CartID": A }, { "CartID": B }] })))
        .respond_with(ResponseTemplate::new(200).set_body_raw(format!(r#"{{"carts":[{{"cartID":"{A}","cartCreationDateTime":"2017-06-13T16:28:47","cartStatus":"Pending"}},{{"cartID":"{B}","cartCreationDateTime":"2017-06-14T16:46:55.473","cartStatus":"Pending"}}]}}"#), "application/json"))
        .expect(1)
        .mount(&server)
        .await;
    let client = StatusClient::new(&settings(&server, WireFormat::Json)).unwrap();
    // Registered in upper case, sent in the canonical lower case.
    let reply = client.fetch_ids(&ids(&[&A.to_uppercase(), B])).await.unwrap();
    assert_eq!(reply.reports.len(), 2);
    assert!(reply.unexpected.is_empty());
}

#[tokio::test]
async fn documents_example_response_decodes_with_order_id_and_dates() {
    let body = format!(
        r#"{{ "carts":[ {{ "cartID":"{A}", "cartCreationDateTime":"2017-06-13T16:28:47", "orderID":"7cf9f78f-6631-44be-905a-94cee7a2cd9c", "cartStatus":"Ordered" }}, {{ "cartID":"{B}", "cartCreationDateTime":"2017-06-14T16:46:55.473", "cartStatus":"CheckedOut" }}, {{ "cartID":"{C}", "cartCreationDateTime":"2017-06-13T14:12:42.933", "cartStatus":"Pending" }} ] }}"#
    );
    let reports = fetch_json(&body, 200, &[A, B, C]).await.unwrap();
    let CartReport::Status(first) = &reports[0].1 else { panic!() };
    assert_eq!(first.status, "Ordered");
    assert_eq!(first.order_id.as_deref(), Some("7cf9f78f-6631-44be-905a-94cee7a2cd9c"));
    assert_eq!(first.created_at_raw.as_deref(), Some("2017-06-13T16:28:47"));
    assert_eq!(status_of(&reports[1].1), CartStatus::CheckedOut);
    assert_eq!(status_of(&reports[2].1), CartStatus::Pending);
}

#[tokio::test]
async fn upper_case_ids_in_the_response_match_lower_case_requests() {
    let body = format!(r#"{{"CARTS":[{{"CartId":"{}","CartStatus":"Pending"}}]}}"#, A.to_uppercase());
    let reports = fetch_json(&body, 200, &[A]).await.unwrap();
    assert_eq!(reports[0].0.as_str(), A);
    assert_eq!(status_of(&reports[0].1), CartStatus::Pending);
}

#[tokio::test]
async fn every_status_spelling_and_an_unknown_one() {
    let cases = [
        ("NotOrdered", CartStatus::NotOrdered),
        ("Not Ordered", CartStatus::NotOrdered),
        ("Pending", CartStatus::Pending),
        ("CheckedOut", CartStatus::CheckedOut),
        ("Checked Out", CartStatus::CheckedOut),
        ("checked out", CartStatus::CheckedOut),
        ("Ordered", CartStatus::Ordered),
        ("Refunded", CartStatus::Other("Refunded".into())),
    ];
    for (spelling, expected) in cases {
        let body = format!(r#"{{"carts":[{{"cartID":"{A}","cartStatus":"{spelling}"}}]}}"#);
        let reports = fetch_json(&body, 200, &[A]).await.unwrap();
        assert_eq!(status_of(&reports[0].1), expected, "spelling {spelling:?}");
    }
}

#[tokio::test]
async fn per_cart_error_101_is_reported_for_that_cart_only() {
    let body = format!(
        r#"{{"carts":[{{"cartID":"{A}","cartError":{{"message":"Specified Cart was not found or wrong format.","code":101}}}},{{"cartID":"{B}","cartStatus":"Pending"}}]}}"#
    );
    let reports = fetch_json(&body, 200, &[A, B]).await.unwrap();
    assert_eq!(reports[0].1, CartReport::NotFound("Specified Cart was not found or wrong format.".into()));
    assert_eq!(status_of(&reports[1].1), CartStatus::Pending);
}

#[tokio::test]
async fn general_errors_1_501_and_102() {
    for (code, message) in [
        (1, "Unknown error"),
        (501, "Wrong request body. Check if all parameters are set correctly."),
        (102, "You can check no more than 10 CartIDs per one request."),
    ] {
        let body = format!(r#"{{"error":{{"code":{code},"message":"{message}"}}}}"#);
        let error = fetch_json(&body, 200, &[A, B]).await.unwrap_err();
        assert_eq!(error, UpstreamError::Api { code: Some(code), message: message.into() });
    }
    // The same error object with a failure status keeps its code.
    let error = fetch_json(r#"{"Error":{"Code":501,"Message":"Wrong request body."}}"#, 400, &[A]).await.unwrap_err();
    assert_eq!(error, UpstreamError::Api { code: Some(501), message: "Wrong request body.".into() });
}

#[tokio::test]
async fn http_401_is_an_authentication_failure() {
    let error = fetch_json("Unauthorized", 401, &[A]).await.unwrap_err();
    assert_eq!(error, UpstreamError::Unauthorized);
    assert!(!error.to_string().contains(API_CODE));
}

#[tokio::test]
async fn http_5xx_and_throttling() {
    assert_eq!(fetch_json("<html>oops</html>", 502, &[A]).await.unwrap_err(), UpstreamError::Http { status: 502 });
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "42"))
        .mount(&server)
        .await;
    let client = StatusClient::new(&settings(&server, WireFormat::Json)).unwrap();
    assert_eq!(
        client.fetch_ids(&ids(&[A])).await.unwrap_err(),
        UpstreamError::Throttled { status: 429, retry_after: Some(Duration::from_secs(42)) }
    );
}

#[tokio::test]
async fn malformed_bodies_are_decode_errors() {
    for body in ["{\"carts\":[{\"cartID\":", "<html><body>Service Unavailable</body></html>", "{\"hello\":1}", ""] {
        let error = fetch_json(body, 200, &[A]).await.unwrap_err();
        assert!(matches!(error, UpstreamError::Decode(_)), "body {body:?} gave {error:?}");
    }
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let padding = "x".repeat(10_000);
    let body = format!(r#"{{"carts":[{{"cartID":"{A}","cartStatus":"Pending","padding":"{padding}"}}]}}"#);
    assert_eq!(fetch_json(&body, 200, &[A]).await.unwrap_err(), UpstreamError::TooLarge { limit: 4096 });
}

#[tokio::test]
async fn slow_answers_time_out() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
        .mount(&server)
        .await;
    let client = StatusClient::new(&settings(&server, WireFormat::Json)).unwrap();
    assert_eq!(client.fetch_ids(&ids(&[A])).await.unwrap_err(), UpstreamError::Timeout);
}

#[tokio::test]
async fn missing_and_unrequested_carts_are_reported_not_fatal() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200).set_body_raw(
                format!(r#"{{"carts":[{{"cartID":"{C}","cartStatus":"Pending"}}]}}"#),
                "application/json",
            ),
        )
        .mount(&server)
        .await;
    let client = StatusClient::new(&settings(&server, WireFormat::Json)).unwrap();
    let reply = client.fetch_ids(&ids(&[A])).await.unwrap();
    assert_eq!(reply.reports, vec![(A.to_owned(), CartReport::Missing)]);
    assert_eq!(reply.unexpected, vec![C.to_owned()]);
}

#[tokio::test]
async fn xml_request_and_response() {
    let server = MockServer::start().await;
    let response = format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<CartStatusResponse xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">
  <Carts>
    <Cart><CartID>{A}</CartID><CartCreationDateTime>2017-06-13T16:28:47</CartCreationDateTime><OrderID>7cf9f78f-6631-44be-905a-94cee7a2cd9c</OrderID><CartStatus>Ordered</CartStatus></Cart>
    <Cart><CartID>{}</CartID><CartError><Message>Specified Cart was not found or wrong format.</Message><Code>101</Code></CartError></Cart>
    <Cart><CartID>{C}</CartID><CartStatus>Checked Out</CartStatus></Cart>
  </Carts>
</CartStatusResponse>"#,
        B.to_uppercase()
    );
    Mock::given(method("POST"))
        .and(header("accept", "text/xml"))
        .and(header("apiCode", API_CODE))
        .respond_with(ResponseTemplate::new(200).set_body_raw(response, "text/xml; charset=utf-8"))
        .expect(1)
        .mount(&server)
        .await;
    let client = StatusClient::new(&settings(&server, WireFormat::Xml)).unwrap();
    let reply = client.fetch_ids(&ids(&[A, B, C])).await.unwrap();
    let CartReport::Status(first) = &reply.reports[0].1 else { panic!() };
    assert_eq!(first.status, "Ordered");
    assert_eq!(first.order_id.as_deref(), Some("7cf9f78f-6631-44be-905a-94cee7a2cd9c"));
    assert_eq!(reply.reports[1].1, CartReport::NotFound("Specified Cart was not found or wrong format.".into()));
    assert_eq!(status_of(&reply.reports[2].1), CartStatus::CheckedOut);

    let requests = server.received_requests().await.unwrap();
    let sent = String::from_utf8(requests[0].body.clone()).unwrap();
    assert!(sent.contains(&format!("<Cart><CartID>{A}</CartID></Cart>")), "{sent}");
    assert!(sent.starts_with("<?xml"));
}

#[tokio::test]
async fn xml_general_error_and_malformed_xml() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_raw("<CartStatusResponse><Error><Code>102</Code><Message>You can check no more than 10 CartIDs per one request.</Message></Error></CartStatusResponse>", "text/xml"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_raw("<CartStatusResponse><Carts><Cart>", "text/xml"))
        .mount(&server)
        .await;
    let client = StatusClient::new(&settings(&server, WireFormat::Xml)).unwrap();
    assert_eq!(
        client.fetch_ids(&ids(&[A, B])).await.unwrap_err(),
        UpstreamError::Api {
            code: Some(102),
            message: "You can check no more than 10 CartIDs per one request.".into()
        }
    );
    assert!(matches!(client.fetch_ids(&ids(&[A])).await.unwrap_err(), UpstreamError::Decode(_)));
}
