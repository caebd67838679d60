//! The plain answer, read straight into a [`StatusReply`]: an object whose one `carts` key
//! (in any case) holds a list of objects with string (or null) `cartID`, `cartStatus`,
//! `orderID` and `cartCreationDateTime`, and no error anywhere. Nearly every answer is this,
//! and reading it without building a JSON tree first saves the tree's maps, keys and
//! copies.
//!
//! Anything else (an error object, a number where text was expected, a key given twice, a
//! list that is not one) is declined, and [`super::decode_json`] reads the answer through
//! the tree, whose rules are the reference: this reading must give the same reply whenever
//! it gives one (a property test checks that).

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{Entry, StatusReply, entry_outcome};

/// Reads `body` if it is a plain answer; `None` otherwise.
pub(super) fn decode(body: &[u8]) -> Option<StatusReply> {
    let mut reader = serde_json::Deserializer::from_slice(body);
    let reply = reader.deserialize_map(RootVisitor).ok()?;
    reader.end().ok()?;
    Some(reply)
}

/// The keys this reading knows, in any case.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    Carts,
    /// `error`, `errors` or `cartError`: the tree reads those.
    Error,
    CartId,
    CartStatus,
    OrderId,
    CreatedAt,
    Other,
}

impl Key {
    fn of(name: &str) -> Key {
        const KNOWN: [(&str, Key); 8] = [
            ("carts", Key::Carts),
            ("error", Key::Error),
            ("errors", Key::Error),
            ("carterror", Key::Error),
            ("cartid", Key::CartId),
            ("cartstatus", Key::CartStatus),
            ("orderid", Key::OrderId),
            ("cartcreationdatetime", Key::CreatedAt),
        ];
        KNOWN.iter().find(|(known, _)| name.eq_ignore_ascii_case(known)).map_or(Key::Other, |(_, key)| *key)
    }
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Key, E> {
                Ok(Key::of(name))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// A declined answer; its message is never shown.
fn decline<E: de::Error>() -> E {
    E::custom("not a plain answer")
}

struct RootVisitor;

impl<'de> Visitor<'de> for RootVisitor {
    type Value = StatusReply;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an object with a carts list")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StatusReply, A::Error> {
        let mut reply = None;
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Carts if reply.is_none() => reply = Some(map.next_value_seed(CartsSeed)?),
                Key::Carts | Key::Error => return Err(decline()),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        reply.ok_or_else(decline)
    }
}

struct CartsSeed;

impl<'de> DeserializeSeed<'de> for CartsSeed {
    type Value = StatusReply;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<StatusReply, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for CartsSeed {
    type Value = StatusReply;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a list of carts")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<StatusReply, A::Error> {
        let mut reply = StatusReply::default();
        while let Some(entry) = items.next_element_seed(EntrySeed)? {
            match entry {
                Some(entry) => reply.entries.push(entry),
                None => reply.unidentified_entries += 1,
            }
        }
        Ok(reply)
    }
}

/// One entry of the list: `None` when it names no cart.
struct EntrySeed;

impl<'de> DeserializeSeed<'de> for EntrySeed {
    type Value = Option<Entry>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<Entry>, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EntrySeed {
    type Value = Option<Entry>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a cart object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Entry>, A::Error> {
        // Each field: not seen yet (`None`), or seen with its text or null.
        let (mut cart_id, mut status, mut order_id, mut created_at) = (None, None, None, None);
        while let Some(key) = map.next_key::<Key>()? {
            let slot = match key {
                Key::CartId => &mut cart_id,
                Key::CartStatus => &mut status,
                Key::OrderId => &mut order_id,
                Key::CreatedAt => &mut created_at,
                Key::Carts | Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                Key::Error => return Err(decline()),
            };
            if slot.is_some() {
                return Err(decline());
            }
            *slot = Some(map.next_value_seed(TextSeed)?);
        }
        let Some(cart_id) = cart_id.flatten() else { return Ok(None) };
        let filled = |text: Option<Option<String>>| text.flatten().filter(|text| !text.trim().is_empty());
        let outcome = entry_outcome(status.flatten(), None, filled(order_id), filled(created_at));
        Ok(Some(Entry { cart_id, outcome }))
    }
}

/// A string, or null (`None`); anything else declines the answer.
struct TextSeed;

impl<'de> DeserializeSeed<'de> for TextSeed {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<String>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TextSeed {
    type Value = Option<String>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a string or null")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Option<String>, E> {
        Ok(Some(text.to_owned()))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Option<String>, E> {
        Ok(Some(text))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Option<String>, E> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::imaterialise::wire::decode_json_tree;

    #[test]
    fn the_usual_answer_is_read_without_the_tree_and_as_the_tree_reads_it() {
        for body in [
            // The documents' example, and the same with keys in other cases, nulls and unknown keys.
            r#"{ "carts":[ { "cartID":"921a2046-66a5-4c5f-b9a6-4bc646fa5e5a", "cartCreationDateTime":"2017-06-13T16:28:47", "orderID":"7cf9f78f-6631-44be-905a-94cee7a2cd9c", "cartStatus":"Ordered" }, { "cartID":"bee2c269-1dbd-4f67-b9f1-2ea2d3b4917b", "cartCreationDateTime":"2017-06-14T16:46:55.473", "cartStatus":"CheckedOut" } ] }"#,
            r#"{"Carts":[{"CARTID":"921a2046-66a5-4c5f-b9a6-4bc646fa5e5a","CartStatus":"Checked Out","OrderId":null,"extra":{"a":[1,2]}},{"cartStatus":"Pending"},{}],"meta":1}"#,
            r#"{"carts":[{"cartID":"x\u0041\"","cartStatus":"","orderID":"  ","cartCreationDateTime":"9999-99-99"}]}"#,
            r#"{"carts":[]}"#,
        ] {
            let plain = decode(body.as_bytes());
            assert!(plain.is_some(), "{body}");
            assert_eq!(plain.map(Ok), Some(decode_json_tree(body.as_bytes())), "{body}");
        }
    }

    #[test]
    fn anything_else_is_left_to_the_tree() {
        for body in [
            r#"{"carts":[{"cartID":"921a2046-66a5-4c5f-b9a6-4bc646fa5e5a","cartError":{"code":101,"message":"x"}}]}"#,
            r#"{"Error":{"Code":"102","Message":"too many"}}"#,
            r#"{"carts":[{"cartID":"a","cartStatus":"Pending"}],"errors":[]}"#,
            r#"{"carts":[{"cartID":123,"cartStatus":"Pending"}]}"#,
            r#"{"carts":[{"cartID":"a","cartStatus":"Pending","CartStatus":"Ordered"}]}"#,
            r#"{"carts":[{"cartID":"a"}],"Carts":[]}"#,
            r#"{"carts":[{"cartID":"a"}, 7]}"#,
            r#"{"carts":null}"#,
            r#"[{"cartID":"a","cartStatus":"Pending"}]"#,
            r#"{"carts":[]} trailing"#,
            "not json",
        ] {
            assert_eq!(decode(body.as_bytes()), None, "{body}");
        }
    }
}
