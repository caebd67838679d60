//! The i.materialise cart status model: the four documented values in either spelling, and
//! anything else kept verbatim.

use std::fmt;

/// A cart status as reported by the Cart Status API.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CartStatus {
    /// Created over the API but not yet shown to the customer.
    NotOrdered,
    /// Open: items can still be added, but the cart must then be re-opened in the UI.
    Pending,
    /// The customer started the ordering flow; items should not be added any more.
    CheckedOut,
    /// The customer ordered; the API returns the OrderID.
    Ordered,
    /// A value the document does not list, kept exactly as received.
    Other(String),
}

impl CartStatus {
    /// Reads a status in any documented spelling ("CheckedOut", "Checked Out", any case).
    /// Anything else becomes [`CartStatus::Other`] with the text unchanged.
    pub fn parse(raw: &str) -> CartStatus {
        const KNOWN: [CartStatus; 4] =
            [CartStatus::NotOrdered, CartStatus::Pending, CartStatus::CheckedOut, CartStatus::Ordered];
        // This runs several times for every cart of every poll, and nearly always meets the
        // canonical spelling (the store keeps that one): that is matched as is. Other
        // spellings are compared character by character rather than through a lowered copy.
        let squeezed =
            || raw.chars().filter(|c| !c.is_whitespace() && *c != '_' && *c != '-').flat_map(char::to_lowercase);
        KNOWN
            .iter()
            .find(|status| status.as_str() == raw)
            .or_else(|| KNOWN.iter().find(|status| squeezed().eq(status.as_str().chars().flat_map(char::to_lowercase))))
            .cloned()
            .unwrap_or_else(|| CartStatus::Other(raw.to_owned()))
    }

    /// The canonical spelling stored in SQLite and sent in events.
    pub fn as_str(&self) -> &str {
        match self {
            CartStatus::NotOrdered => "NotOrdered",
            CartStatus::Pending => "Pending",
            CartStatus::CheckedOut => "CheckedOut",
            CartStatus::Ordered => "Ordered",
            CartStatus::Other(raw) => raw,
        }
    }

    /// Position along the normal flow, used to tell a step forward from a step back.
    /// Unknown values have no rank.
    pub fn rank(&self) -> Option<u8> {
        match self {
            CartStatus::NotOrdered => Some(0),
            CartStatus::Pending => Some(1),
            CartStatus::CheckedOut => Some(2),
            CartStatus::Ordered => Some(3),
            CartStatus::Other(_) => None,
        }
    }

    /// Whether the Add/Remove Cart Item API still accepts changes in this status.
    pub fn allows_item_changes(&self) -> bool {
        !matches!(self, CartStatus::CheckedOut | CartStatus::Ordered)
    }
}

impl fmt::Display for CartStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(raw: &str, expected: CartStatus) {
        assert_eq!(CartStatus::parse(raw), expected, "raw {raw:?}");
    }

    #[test]
    fn both_spellings_in_any_case() {
        check("NotOrdered", CartStatus::NotOrdered);
        check("Not Ordered", CartStatus::NotOrdered);
        check("not ordered", CartStatus::NotOrdered);
        check("Pending", CartStatus::Pending);
        check("PENDING", CartStatus::Pending);
        check("CheckedOut", CartStatus::CheckedOut);
        check("Checked Out", CartStatus::CheckedOut);
        check("checked_out", CartStatus::CheckedOut);
        check("Ordered", CartStatus::Ordered);
        check(" ordered ", CartStatus::Ordered);
    }

    #[test]
    fn unknown_values_are_kept_verbatim() {
        check("Cancelled", CartStatus::Other("Cancelled".into()));
        check("", CartStatus::Other(String::new()));
        assert_eq!(CartStatus::parse("Weird Value").as_str(), "Weird Value");
    }
}
