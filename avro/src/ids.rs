//! The rule for the ids Keel's records carry and are keyed by — order ids, SKUs, warehouses:
//! 1 to [`MAX_ID_CHARS`] characters, none of them whitespace or a control character. The ingest
//! API answers 422 for an id that breaks it; the processors dead-letter a command that carries
//! one (it came from another producer), so no such id reaches a store: the order tables keep
//! ids in `VARCHAR(64)`, and the Cassandra mirror refuses an empty SKU as a partition key.
//!
//! One definition here, at the bottom of the crate graph, so the API, the processors and the
//! CLI (all depend on `keel-avro`) say the same thing.

/// The longest id, in characters (not bytes).
pub const MAX_ID_CHARS: usize = 64;

/// The rule in words, for messages: "1 to 64 characters without whitespace or control
/// characters".
pub const ID_RULE: &str = "1 to 64 characters without whitespace or control characters";

/// Whether `id` is 1 to [`MAX_ID_CHARS`] characters without whitespace or control characters.
pub fn is_valid_id(id: &str) -> bool {
    // Counted up to one past the limit: a 900 KB id is not walked to the end.
    let len = id.chars().take(MAX_ID_CHARS + 1).count();
    (1..=MAX_ID_CHARS).contains(&len) && !id.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// `id` as a message shows it: Rust-quoted (`"ord-1"`, `""`), and past [`MAX_ID_CHARS`]
/// characters cut, with its full length, so a 900 KB key does not end up whole in a
/// dead-letter header or a log line.
pub fn shown(id: &str) -> String {
    let mut head = id.char_indices().skip(MAX_ID_CHARS);
    match head.next() {
        None => format!("{id:?}"),
        Some((cut, _)) => format!("{:?}… ({} characters)", &id[..cut], id.chars().count()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_1_to_64_characters_without_whitespace_or_control_characters() {
        let max = "é".repeat(MAX_ID_CHARS);
        for ok in ["SKU-1", "ord_3f2a", "a", max.as_str(), "ümlaut-ü"] {
            assert!(is_valid_id(ok), "{ok:?}");
        }
        let long = "x".repeat(MAX_ID_CHARS + 1);
        for bad in [
            "",
            long.as_str(),
            "WS X",
            " SKU",
            "SKU\t1",
            "SKU\n",
            "SKU\u{0}",
            "SKU\u{7f}",
            "SKU\u{a0}1",
        ] {
            assert!(!is_valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_long_id_is_shown_cut_with_its_length() {
        assert_eq!(shown(""), "\"\"");
        assert_eq!(shown("ord-1"), "\"ord-1\"");
        let exact = "k".repeat(MAX_ID_CHARS);
        assert_eq!(shown(&exact), format!("{exact:?}"));
        let long = "K".repeat(900_000);
        let text = shown(&long);
        assert!(text.len() < 100, "{text}");
        assert!(text.ends_with("… (900000 characters)"), "{text}");
    }
}
