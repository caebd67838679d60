//! Secrets from config: the partner apiCode and webhook signing secrets.
//!
//! A [`Secret`] never shows its value through `Debug`, `Display` or serialisation, so printing
//! the effective config, logging a struct or formatting an error cannot leak it. The one way
//! to read it is [`Secret::expose`], which the HTTP clients call when building a request.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a secret looks like wherever it is shown.
pub const REDACTED: &str = "<redacted>";

/// A secret string from config, an environment variable or a credentials file.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(SecretString::from(value.into()))
    }

    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// Whether the value is empty, which config treats as "not set".
    pub fn is_empty(&self) -> bool {
        self.expose().trim().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.is_empty() { serializer.serialize_str("") } else { serializer.serialize_str(REDACTED) }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        String::deserialize(deserializer).map(Secret::new)
    }
}

/// A URL as it may be shown: credentials in it (`https://user:password@host/...`) replaced by
/// [`REDACTED`]. Works on text that is not a valid URL too, since error messages quote those.
pub fn redact_url(text: &str) -> String {
    let Some(scheme_end) = text.find("://").map(|at| at + 3) else { return text.to_owned() };
    let authority_end = text[scheme_end..].find(['/', '?', '#']).map_or(text.len(), |offset| scheme_end + offset);
    match text[scheme_end..authority_end].rfind('@') {
        Some(at) => format!("{}{REDACTED}@{}", &text[..scheme_end], &text[scheme_end + at + 1..]),
        None => text.to_owned(),
    }
}

/// Serialises a URL with [`redact_url`], for `#[serde(serialize_with)]` on config fields.
pub fn serialize_redacted_url<S: Serializer>(url: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&redact_url(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_shows_its_value() {
        let secret = Secret::new("0f7c3c55-5d5b-4a4e-9a52-b1b5d4b0e6a7");
        assert_eq!(format!("{secret:?}"), REDACTED);
        assert_eq!(format!("{secret}"), REDACTED);
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"<redacted>\"");
        assert_eq!(secret.expose(), "0f7c3c55-5d5b-4a4e-9a52-b1b5d4b0e6a7");
    }

    #[test]
    fn credentials_in_urls_are_never_shown() {
        assert_eq!(redact_url("https://user:hunter2@erp.example.com/hook"), "https://<redacted>@erp.example.com/hook");
        assert_eq!(redact_url("https://erp.example.com/a@b"), "https://erp.example.com/a@b", "an @ in the path");
        assert_eq!(redact_url("https://hunter2@erp.example.com"), "https://<redacted>@erp.example.com");
        assert_eq!(redact_url("not a url at all"), "not a url at all");
        assert_eq!(redact_url("http://us:er:p@ss@host:8080?q"), "http://<redacted>@host:8080?q");
    }

    #[test]
    fn empty_is_shown_as_empty() {
        assert_eq!(serde_json::to_string(&Secret::new("")).unwrap(), "\"\"");
        assert!(Secret::new("  ").is_empty());
    }
}
