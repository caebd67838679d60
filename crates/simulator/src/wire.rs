//! What the simulator reads from requests and how it names statuses, written from the
//! partner's documents: GUIDs in any case, keys in any case, XML element names compared by
//! local name in any case (the documents lost theirs), the four Cart Status values, and the
//! Titelive check codes with their messages.

use serde_json::Value;

/// A cart status of the Cart Status API.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Status {
    /// Created over the API but not yet shown to the customer.
    NotOrdered,
    /// Open: items can still be added.
    Pending,
    /// The customer started the ordering flow.
    CheckedOut,
    /// Ordered; the answer carries the OrderID.
    Ordered,
}

impl Status {
    /// The documented value (the documents also write "Not Ordered" and "Checked Out").
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::NotOrdered => "NotOrdered",
            Status::Pending => "Pending",
            Status::CheckedOut => "CheckedOut",
            Status::Ordered => "Ordered",
        }
    }

    /// Reads a value in either documented spelling, any case.
    pub fn parse(text: &str) -> Option<Status> {
        let squeezed: String =
            text.chars().filter(|c| c.is_ascii_alphabetic()).collect::<String>().to_ascii_lowercase();
        [Status::NotOrdered, Status::Pending, Status::CheckedOut, Status::Ordered]
            .into_iter()
            .find(|status| status.as_str().eq_ignore_ascii_case(&squeezed))
    }
}

/// A GUID in lower-case hyphenated form, or `None` when the text is not one.
pub fn canonical_guid(text: &str) -> Option<String> {
    uuid::Uuid::try_parse(text.trim()).ok().map(|uuid| uuid.hyphenated().to_string())
}

/// A key of a JSON object, matched in any case.
pub fn get_ci<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    value.as_object()?.iter().find(|(name, _)| name.eq_ignore_ascii_case(key)).map(|(_, value)| value)
}

/// A JSON value as text: strings as they are, numbers in their JSON spelling.
pub fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// The text of every element whose local name is `name` (any case), in document order, or
/// `None` when the body is not well-formed XML.
pub fn xml_texts(body: &[u8], name: &str) -> Option<Vec<String>> {
    use quick_xml::events::Event;
    let text = std::str::from_utf8(body).ok()?;
    let mut reader = quick_xml::Reader::from_str(text);
    let mut found = Vec::new();
    let mut inside = 0usize;
    loop {
        match reader.read_event().ok()? {
            Event::Start(start) if start.local_name().into_inner().eq_ignore_ascii_case(name) => {
                inside += 1;
                found.push(String::new());
            }
            Event::End(end) if end.local_name().into_inner().eq_ignore_ascii_case(name) => {
                inside = inside.saturating_sub(1);
            }
            Event::Text(text) if inside > 0 => {
                if let Some(last) = found.last_mut() {
                    last.push_str(text.xml10_content().trim());
                }
            }
            Event::Eof => return Some(found),
            _ => {}
        }
    }
}

/// The Titelive `check` code list: each code's status name and message. The confirm list
/// numbers the payment codes one lower from 22 on.
pub const CHECK_CODES: &[(i64, &str, &str)] = &[
    (0, "Valid", "cart is valid"),
    (1, "", "Domain code missing or malformed"),
    (2, "", "Required field empty"),
    (3, "", "Required field malformed"),
    (4, "NoSession", "There is not session with this token"),
    (10, "NoCart", "cart does not exist"),
    (11, "Ordered", "cart already became an order"),
    (12, "NoProducts", "cart contains no products"),
    (13, "NotShopsCart", "cart error - does not belong to shop"),
    (14, "NoEmail", "cart belongs to a unregistred user while no email address has been given"),
    (15, "NoInvoiceAddress", "facturation address not set"),
    (16, "UnknownInvoiceAddress", "facturation address does not exist"),
    (17, "NoDeliveryType", "delivery type not set"),
    (18, "UnknownDeliveryType", "delivery type does not exist / is not defined"),
    (19, "NoDeliveryAddress", "delivery address not set"),
    (20, "UnknownDeliveryAddress", "facturation address does not exist"),
    (21, "NoShopSelected", "delivery in shop set while no shop has been selected"),
    (22, "UnknownShop", "shop to be delivered in not exist"),
    (23, "NoPaymentMethod", "payment method not set"),
    (24, "UnknownPaymentMethod", "payment method does not exist / is not defined"),
    (25, "ShopPaymentNeedsShopDelivery", "payment in shop must have delivery in shop"),
    (99, "", "Uncatched exception"),
];

/// The status name `check` gives a code.
pub fn status_name(code: i64) -> &'static str {
    CHECK_CODES.iter().find(|(number, ..)| *number == code).map_or("Unknown", |(_, name, _)| name)
}

/// The message of a `check` code.
pub fn check_message(code: i64) -> &'static str {
    CHECK_CODES.iter().find(|(number, ..)| *number == code).map_or("undocumented", |(_, _, message)| message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_documents_write() {
        assert_eq!(Status::parse("Checked Out"), Some(Status::CheckedOut));
        assert_eq!(Status::parse("notordered"), Some(Status::NotOrdered));
        assert_eq!(Status::parse("Shipped"), None);
        assert_eq!(
            canonical_guid(" 921A2046-66A5-4C5F-B9A6-4BC646FA5E5A "),
            Some("921a2046-66a5-4c5f-b9a6-4bc646fa5e5a".into())
        );
        let xml = br#"<R xmlns:x="u"><x:Carts><Cart><CartID>a</CartID></Cart><Cart><cartid> b </cartid></Cart></x:Carts></R>"#;
        assert_eq!(xml_texts(xml, "CartID"), Some(vec!["a".into(), "b".into()]));
        assert_eq!(xml_texts(b"<a><b></a>", "b"), None);
        assert_eq!((status_name(15), check_message(4)), ("NoInvoiceAddress", "There is not session with this token"));
    }
}
