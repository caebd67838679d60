//! Every parser against arbitrary bytes and against well-formed but strange documents: huge
//! numbers, deep nesting, odd Unicode, duplicate keys, missing or mistyped fields. Each must
//! answer with a value or a typed error, never a panic. (The fuzz targets in `fuzz/` run the
//! same parsers for much longer.)

use cartwatch::cart_id::{CartId, ItemId};
use cartwatch::config::WireFormat;
use cartwatch::provider::imaterialise::status::CartStatus;
use cartwatch::provider::imaterialise::{decode, items, wire};
use cartwatch::provider::titelive;
use cartwatch::xml_tree;
use proptest::prelude::*;

/// Every parser, fed the same bytes.
fn parse_everything(bytes: &[u8]) {
    let _ = wire::decode_json(bytes);
    let _ = wire::decode_xml(bytes);
    let _ = decode(bytes, WireFormat::Json, "");
    let _ = decode(bytes, WireFormat::Xml, "text/xml");
    let _ = items::decode_json(bytes);
    let _ = items::decode_xml(bytes);
    let _ = items::decode(bytes, WireFormat::Json, "application/json");
    if let Ok(envelope) = titelive::decode_envelope(bytes)
        && let Some(object) = &envelope.object
    {
        let _ = titelive::cart_of(object);
        let _ = titelive::order_of(object);
    }
    let _ = xml_tree::parse(bytes);
    let text = String::from_utf8_lossy(bytes);
    let _ = CartId::parse(&text);
    let _ = ItemId::parse(&text);
    let _ = titelive::Token::parse(&text);
    let _ = titelive::check_domain(&text);
    let _ = CartStatus::parse(&text);
    let _ = cartwatch::time::parse_ts(&text);
    let _ = cartwatch::time::parse_naive(&text);
    let _ = cartwatch::provider::json::exact_decimal(&text);
    let _ = cartwatch_simulator::FaultSpec::parse(&text);
    let _ = cartwatch::schedule::parse_cron(&text);
}

const KEYS: &[&str] = &[
    "carts",
    "Carts",
    "CARTS",
    "cartID",
    "CartId",
    "cartStatus",
    "cartError",
    "cartCreationDateTime",
    "orderID",
    "error",
    "Error",
    "errors",
    "code",
    "message",
    "cartItems",
    "cartItemID",
    "mySalesUnitPrice",
    "iMatUnitPrice",
    "fileScaleFactor",
    "quantity",
    "validUntil",
    "response",
    "success",
    "object",
    "cart",
    "order",
    "lines",
    "line",
    "price",
    "totalPrice",
    "ean",
    "creationDate",
    "deliveryAddress",
    "adressLine1",
    "id",
    "status",
    "",
    "\u{0}",
    "é",
    "🛒",
];

const STRINGS: &[&str] = &[
    "921a2046-66a5-4c5f-b9a6-4bc646fa5e5a",
    "921A2046-66A5-4C5F-B9A6-4BC646FA5E5A",
    "Checked Out",
    "Ordered",
    "NotOrdered",
    "2017-06-14T16:46:55.473",
    "2016-03-03 11:39:45",
    "9999-99-99T99:99:99",
    "",
    " ",
    "\u{202e}evil",
    "\u{feff}",
    "🛒🛒🛒",
    "\\\"",
    "101",
    "1e999999",
    "-0",
    "NaN",
];

const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "101",
    "501",
    "102",
    "1",
    "99",
    "11",
    "22.5",
    "15.0000",
    "1.0000000000",
    "1e999999",
    "-1e-999999",
    "123456789012345678901234567890123456789",
    "9789462500877",
    "18446744073709551616",
    "0.1",
    "-9223372036854775809",
];

/// A JSON text built from interesting keys and values, nested up to `depth`, with the
/// occasional duplicate key (which a serialiser could not produce).
fn json_text(depth: u32) -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        prop::sample::select(STRINGS).prop_map(|s| serde_json::to_string(s).unwrap()),
        prop::sample::select(NUMBERS).prop_map(str::to_owned),
        Just("true".to_owned()),
        Just("null".to_owned()),
        "\\PC{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
    ];
    leaf.prop_recursive(depth, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(|items| format!("[{}]", items.join(","))),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|fields| {
                let fields: Vec<String> = fields
                    .into_iter()
                    .map(|(key, value)| format!("{}:{value}", serde_json::to_string(key).unwrap()))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
    .boxed()
}

/// A value as a partner's cart entry holds it: mostly a string, sometimes null, a number
/// or something stranger.
fn plain_value() -> BoxedStrategy<String> {
    prop_oneof![
        6 => prop::sample::select(STRINGS).prop_map(|s| serde_json::to_string(s).unwrap()),
        2 => "\\PC{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        1 => Just("null".to_owned()),
        1 => prop::sample::select(NUMBERS).prop_map(str::to_owned),
        1 => json_text(2),
    ]
    .boxed()
}

const ELEMENTS: &[&str] = &[
    "CartStatusResponse",
    "Carts",
    "Cart",
    "CartID",
    "cartid",
    "x:CartID",
    "CartStatus",
    "CartError",
    "Error",
    "Code",
    "Message",
    "OrderID",
    "CartItems",
    "CartItem",
    "CartItemID",
    "MySalesUnitPrice",
    "Quantity",
    "a:b:c",
    "é",
];

const TEXTS: &[&str] = &[
    "921a2046-66a5-4c5f-b9a6-4bc646fa5e5a",
    "Ordered",
    "Checked Out",
    "101",
    "&amp;",
    "&#x41;",
    "&#0;",
    "&bogus;",
    "<![CDATA[x]]>",
    "15.0000",
    "1e999999",
    "",
    "🛒",
    "&#xFFFFFFFF;",
];

/// An XML text of interesting elements and texts, nested up to `depth`.
fn xml_text(depth: u32) -> BoxedStrategy<String> {
    let leaf = prop::sample::select(TEXTS).prop_map(str::to_owned);
    leaf.prop_recursive(depth, 64, 5, |inner| {
        (prop::sample::select(ELEMENTS), prop::collection::vec(inner, 0..5), any::<bool>()).prop_map(
            |(name, children, attribute)| {
                let attribute = if attribute { " xmlns:x=\"urn:x\" a=\"1\"" } else { "" };
                format!("<{name}{attribute}>{}</{name}>", children.join(""))
            },
        )
    })
    .boxed()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        parse_everything(&bytes);
    }

    #[test]
    fn strange_json_never_panics(text in json_text(8)) {
        parse_everything(text.as_bytes());
        parse_everything(format!("{{\"carts\":[{text}],\"carts\":{text}}}").as_bytes());
        parse_everything(format!("{{\"response\":{{\"success\":true,\"code\":0,\"object\":{{\"cart\":{text},\"order\":{text}}}}}}}").as_bytes());
        parse_everything(format!("{{\"cartItems\":[{text},{{\"error\":{text}}}]}}").as_bytes());
    }

    /// The plain answer is read without a JSON tree; whatever that reading accepts, it must
    /// read exactly as the tree does (which reads everything else).
    #[test]
    fn json_answers_read_the_same_with_or_without_the_tree(
        entries in prop::collection::vec(
            prop::collection::vec((prop::sample::select(KEYS), plain_value()), 0..6),
            0..5,
        ),
        other in prop::sample::select(KEYS),
        value in json_text(2),
        carts_key in prop::sample::select(&["carts", "Carts", "CARTS", "cartS"][..]),
    ) {
        let entries: Vec<String> = entries
            .into_iter()
            .map(|fields| {
                let fields: Vec<String> = fields
                    .into_iter()
                    .map(|(key, value)| format!("{}:{value}", serde_json::to_string(key).unwrap()))
                    .collect();
                format!("{{{}}}", fields.join(","))
            })
            .collect();
        let list = format!("[{}]", entries.join(","));
        for body in [
            format!("{{\"{carts_key}\":{list}}}"),
            format!("{{\"{carts_key}\":{list},{}:{value}}}", serde_json::to_string(other).unwrap()),
            format!("{{{}:{value},\"{carts_key}\":{list}}}", serde_json::to_string(other).unwrap()),
            list.clone(),
        ] {
            prop_assert_eq!(wire::decode_json(body.as_bytes()), wire::decode_json_tree(body.as_bytes()), "{}", body);
        }
    }

    #[test]
    fn strange_xml_never_panics(text in xml_text(8)) {
        parse_everything(text.as_bytes());
        parse_everything(format!("<?xml version=\"1.0\"?><Root>{text}{text}</Root>").as_bytes());
    }

    #[test]
    fn decoded_statuses_are_kept_verbatim_or_canonical(status in "\\PC{0,20}") {
        let body = serde_json::json!({ "carts": [{ "cartID": "921a2046-66a5-4c5f-b9a6-4bc646fa5e5a", "cartStatus": status }] });
        let reply = wire::decode_json(body.to_string().as_bytes()).unwrap();
        let wire::EntryOutcome::Status(reported) = &reply.entries[0].outcome else { panic!("not a status") };
        match &reported.status {
            CartStatus::Other(raw) => prop_assert_eq!(raw, &status),
            known => prop_assert!(["NotOrdered", "Pending", "CheckedOut", "Ordered"].contains(&known.as_str())),
        }
    }
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let json = "[".repeat(100_000) + &"]".repeat(100_000);
    assert!(wire::decode_json(json.as_bytes()).is_err());
    assert!(titelive::decode_envelope(json.as_bytes()).is_err());
    assert!(items::decode_json(json.as_bytes()).is_err());
    let xml = "<a>".repeat(100_000) + &"</a>".repeat(100_000);
    assert!(wire::decode_xml(xml.as_bytes()).is_err());
    assert!(items::decode_xml(xml.as_bytes()).is_err());
}

#[test]
fn huge_numbers_are_typed_errors_or_values() {
    let body =
        br#"{"carts":[{"cartID":"921a2046-66a5-4c5f-b9a6-4bc646fa5e5a","cartError":{"code":1e999999,"message":"x"}}]}"#;
    let reply = wire::decode_json(body).unwrap();
    assert!(matches!(&reply.entries[0].outcome, wire::EntryOutcome::Error(error) if error.code.is_none()));
    let body = br#"{"cartItems":[{"cartItemID":"333095fc-6ab2-4c30-b0d1-baecfd708f69","mySalesUnitPrice":123456789012345678901234567890123456789,"quantity":18446744073709551616}]}"#;
    let reply = items::decode_json(body).unwrap();
    assert_eq!(reply.items[0].my_sales_unit_price, None, "beyond the range of an exact decimal");
    assert_eq!(reply.items[0].quantity, None);
}
