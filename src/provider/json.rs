//! Reading partner JSON tolerantly, as every provider must: keys in any case, numbers written
//! as strings and strings as numbers, prices as exact decimals, never binary floating point.

use rust_decimal::Decimal;
use serde_json::Value;

/// Looks up a key case-insensitively.
pub fn get_ci<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    let object = value.as_object()?;
    object.get(key).or_else(|| object.iter().find(|(name, _)| name.eq_ignore_ascii_case(key)).map(|(_, v)| v))
}

/// Reads a value as text: strings as they are, numbers and booleans in their JSON spelling.
pub fn json_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// Reads an integer code written as a number or a string.
pub fn json_code(value: &Value) -> Option<i64> {
    match value {
        Value::Number(number) => number.as_i64(),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

/// Reads an exact decimal written as a JSON number or a string.
pub fn json_decimal(value: &Value) -> Option<Decimal> {
    match value {
        // With serde_json's arbitrary precision, a number keeps the digits it was sent with.
        Value::Number(number) => exact_decimal(&number.to_string()),
        Value::String(text) => exact_decimal(text),
        _ => None,
    }
}

/// Reads a decimal exactly as written (`15.0000`, `1.5e2`), never through binary floating point.
pub fn exact_decimal(text: &str) -> Option<Decimal> {
    let text = text.trim();
    Decimal::from_str_exact(text).ok().or_else(|| Decimal::from_scientific(text).ok())
}
