//! Cart identifiers: parsing, validation and the one canonical spelling used everywhere.
//!
//! The partner's documents send GUIDs in upper case and receive them in lower case, so every
//! identifier is normalised to lower-case hyphenated form when it is registered, and that form
//! is the only one stored or sent.

use std::fmt;

use uuid::Uuid;

/// A cart identifier in canonical lower-case hyphenated GUID form.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CartId(String);

/// Why a piece of text is not a cart identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed cart id {shown:?}: expected a GUID like 921a2046-66a5-4c5f-b9a6-4bc646fa5e5a")]
pub struct MalformedCartId {
    /// The offending input, shortened so a huge input cannot flood a log line.
    pub shown: String,
}

impl CartId {
    /// Parses a GUID in any of the usual spellings (upper or lower case, with or without
    /// braces, surrounding whitespace) and returns its canonical form.
    ///
    /// Fails when the text is not a GUID with hyphens or braces, so that a 32-digit hex blob
    /// pasted by mistake is not silently accepted.
    pub fn parse(text: &str) -> Result<CartId, MalformedCartId> {
        // Ids the daemon stored, and nearly all the partner sends back, are canonical already;
        // each is checked several times per poll.
        if is_canonical(text) {
            return Ok(CartId(text.to_owned()));
        }
        let trimmed = text.trim();
        let inner = trimmed.strip_prefix('{').and_then(|rest| rest.strip_suffix('}')).unwrap_or(trimmed);
        if inner.len() != 36 {
            return Err(MalformedCartId::new(text));
        }
        match Uuid::try_parse(inner) {
            Ok(uuid) => Ok(CartId(uuid.hyphenated().to_string())),
            Err(_) => Err(MalformedCartId::new(text)),
        }
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The canonical text, owned.
    pub fn into_string(self) -> String {
        self.0
    }

    /// Builds a cart id from text that is already canonical, such as a row the daemon wrote.
    /// Returns `None` when the text is not canonical, so callers can flag the row.
    pub fn from_canonical(text: &str) -> Option<CartId> {
        is_canonical(text).then(|| CartId(text.to_owned()))
    }
}

/// The canonical lower-case hyphenated form of a GUID written in any usual spelling, or
/// `None` when the text is not a GUID with hyphens (braces and surrounding space allowed).
fn canonical_guid(text: &str) -> Option<String> {
    let trimmed = text.trim();
    let inner = trimmed.strip_prefix('{').and_then(|rest| rest.strip_suffix('}')).unwrap_or(trimmed);
    if inner.len() != 36 {
        return None;
    }
    Uuid::try_parse(inner).ok().map(|uuid| uuid.hyphenated().to_string())
}

/// A cart item identifier (a GUID from the Cart Item Creation API), canonical like [`CartId`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ItemId(String);

/// Why a piece of text is not a cart item identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed cart item id {shown:?}: expected a GUID like 333095fc-6ab2-4c30-b0d1-baecfd708f69")]
pub struct MalformedItemId {
    /// The offending input, shortened.
    pub shown: String,
}

impl ItemId {
    /// Parses a GUID in any usual spelling.
    ///
    /// Fails when the text is not a GUID with hyphens or braces.
    pub fn parse(text: &str) -> Result<ItemId, MalformedItemId> {
        canonical_guid(text).map(ItemId).ok_or_else(|| MalformedItemId { shown: shorten(text, 60) })
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl MalformedCartId {
    fn new(text: &str) -> MalformedCartId {
        MalformedCartId { shown: shorten(text, 60) }
    }
}

/// The public id of a cart named by a session token (Titelive): `tl_` and the first 32 hexadecimal digits of the
/// SHA-256 of its session token. The token is a credential for the customer's session
/// (whoever holds it can confirm the cart), so it is kept only where polling needs it; logs,
/// output, the HTTP API and events name the cart by this id, which anyone holding the token
/// can compute and nobody can turn back into the token.
pub fn derived_session_id(token: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(token.trim().as_bytes());
    let mut id = String::with_capacity(35);
    id.push_str(DERIVED_SESSION_ID_PREFIX);
    for byte in &digest[..16] {
        let _ = std::fmt::Write::write_fmt(&mut id, format_args!("{byte:02x}"));
    }
    id
}

/// What every Titelive cart id starts with.
pub const DERIVED_SESSION_ID_PREFIX: &str = "tl_";

/// Whether `text` is a Titelive cart id as [`derived_session_id`] makes them.
pub fn is_derived_session_id(text: &str) -> bool {
    text.strip_prefix(DERIVED_SESSION_ID_PREFIX).is_some_and(|hex| {
        hex.len() == 32 && hex.bytes().all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
    })
}

/// Shortens text for messages, on a character boundary, marking the cut with an ellipsis.
pub fn shorten(text: &str, max_chars: usize) -> String {
    if fits(text, max_chars) {
        return text.to_owned();
    }
    let mut shortened: String = text.chars().take(max_chars).collect();
    shortened.push('…');
    shortened
}

/// Whether `text` is a cart id in its canonical spelling (a lower-case hyphenated GUID,
/// nothing around it): a check of its bytes, without a copy.
pub fn is_canonical(text: &str) -> bool {
    // Each group is checked whole, without stopping at the first bad byte, which the
    // compiler turns into a few vector instructions: it runs several times per poll.
    let hex = |group: &[u8]| {
        group.iter().fold(true, |hex, &byte| hex & (byte.is_ascii_digit() | (byte.wrapping_sub(b'a') < 6)))
    };
    let bytes = text.as_bytes();
    bytes.len() == 36
        && [8, 13, 18, 23].iter().all(|&at| bytes[at] == b'-')
        && [&bytes[..8], &bytes[9..13], &bytes[14..18], &bytes[19..23], &bytes[24..]].into_iter().all(hex)
}

/// Whether `text` has at most `max_chars` characters; counted only when its length in bytes
/// (never fewer than its characters) does not settle it.
pub fn fits(text: &str, max_chars: usize) -> bool {
    text.len() <= max_chars || text.chars().count() <= max_chars
}

impl fmt::Display for CartId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CartId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CartId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(input: &str, expected: Option<&str>) {
        let parsed = CartId::parse(input).ok();
        assert_eq!(parsed.as_ref().map(CartId::as_str), expected, "input {input:?}");
    }

    #[test]
    fn parses_the_usual_spellings() {
        let canonical = "921a2046-66a5-4c5f-b9a6-4bc646fa5e5a";
        check("921A2046-66A5-4C5F-B9A6-4BC646FA5E5A", Some(canonical));
        check(canonical, Some(canonical));
        check("  921a2046-66A5-4c5f-b9a6-4bc646fa5e5a\n", Some(canonical));
        check("{921A2046-66A5-4C5F-B9A6-4BC646FA5E5A}", Some(canonical));
    }

    proptest::proptest! {
        /// The byte check agrees with the uuid crate: canonical exactly when parsing and
        /// writing the id again gives the same text.
        #[test]
        fn the_canonical_check_agrees_with_the_uuid_parser(
            text in "([0-9a-fA-FgG-]{36}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-fA]{4}-[0-9a-f]{4}-[0-9a-f_]{12}|.{0,40})",
        ) {
            let by_uuid = Uuid::try_parse(&text).is_ok_and(|uuid| uuid.hyphenated().to_string() == text);
            proptest::prop_assert_eq!(is_canonical(&text), by_uuid);
        }
    }

    #[test]
    fn rejects_what_is_not_a_guid() {
        check("", None);
        check("921A2046-66A5-4C5F-B9A6-4BC646FA5E5", None);
        check("921A2046-66A5-4C5F-B9A6-4BC646FA5E5AA", None);
        check("921a204666a54c5fb9a64bc646fa5e5a", None);
        check("urn:uuid:921a2046-66a5-4c5f-b9a6-4bc646fa5e5a", None);
        check("zzzzzzzz-66a5-4c5f-b9a6-4bc646fa5e5a", None);
        check("921a2046_66a5_4c5f_b9a6_4bc646fa5e5a", None);
    }

    #[test]
    fn the_canonical_shortcut_agrees_with_the_full_reading() {
        for text in [
            "921a2046-66a5-4c5f-b9a6-4bc646fa5e5a",
            "921A2046-66A5-4C5F-B9A6-4BC646FA5E5A",
            "{921a2046-66a5-4c5f-b9a6-4bc646fa5e5a}",
            "921a204666a54c5fb9a64bc646fa5e5a0000",
            "921a2046-66a5-4c5f-b9a6-4bc646fa5e5g",
            "921a2046_66a5-4c5f-b9a6-4bc646fa5e5a",
            " 921a2046-66a5-4c5f-b9a6-4bc646fa5e5a",
        ] {
            // The reading without the shortcut.
            let inner = text.trim().strip_prefix('{').and_then(|rest| rest.strip_suffix('}')).unwrap_or(text.trim());
            let full =
                Uuid::try_parse(inner).ok().filter(|_| inner.len() == 36).map(|uuid| uuid.hyphenated().to_string());
            assert_eq!(CartId::parse(text).ok().map(|id| id.0), full, "{text}");
        }
    }

    #[test]
    fn fitting_counts_characters_not_bytes() {
        let accented = "é".repeat(64);
        assert!(fits(&accented, 64), "128 bytes, 64 characters");
        assert!(!fits(&format!("{accented}é"), 64));
        assert_eq!(shorten(&accented, 64), accented);
        assert_eq!(shorten(&format!("{accented}é"), 64), format!("{accented}…"));
    }

    #[test]
    fn error_message_names_the_input_and_is_bounded() {
        let error = CartId::parse(&"x".repeat(1000)).unwrap_err();
        assert!(error.to_string().starts_with("malformed cart id \"xxxx"));
        assert!(error.to_string().len() < 200);
    }

    #[test]
    fn from_canonical_refuses_other_spellings() {
        assert!(CartId::from_canonical("921a2046-66a5-4c5f-b9a6-4bc646fa5e5a").is_some());
        assert!(CartId::from_canonical("921A2046-66A5-4C5F-B9A6-4BC646FA5E5A").is_none());
    }
}
