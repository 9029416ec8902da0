//! Changelog records: what a store's writes look like on its compacted changelog topic.
//!
//! Every store writes through to `<application.id>-<store>-changelog`, one partition per task
//! partition. A store never talks to Kafka: it hands out [`ChangelogRecord`]s from
//! `take_changelog()` and the runtime produces them inside the current transaction.
//!
//! * **Deduplicated per key.** Between two `take_changelog()` calls a store remembers only which
//!   keys changed; the records carry each key's latest value. The topic is compacted, so only the
//!   last value per key matters; taking once per commit interval would send one record per
//!   touched key. The stream runtime takes after every input record (so the commit does not
//!   wait for the interval's changelog), which sends one record per write.
//! * **Keys** are the store's keys. **Values** are the store's values, except for TTL and timer
//!   stores whose values are `[1u8][time: i64 big-endian][payload]` (expiry or due time in
//!   millis) so that restore can rebuild their time index.
//! * **`value: None`** is a tombstone: the key was deleted, expired or fired.

use std::sync::Arc;

use crate::error::{Error, Result};

/// One write to a store's changelog topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChangelogRecord {
    /// The store the write belongs to; the topic is [`changelog_topic`]`(application_id, store)`.
    pub store: Arc<str>,
    /// The record key.
    pub key: Vec<u8>,
    /// The record value; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
}

impl ChangelogRecord {
    /// Whether this record deletes its key.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

/// The changelog topic of a store: `<application.id>-<store>-changelog`.
pub fn changelog_topic(application_id: &str, store: &str) -> String {
    format!("{application_id}-{store}-changelog")
}

/// Kafka topic names allow 249 characters of `[A-Za-z0-9._-]`; the changelog topic embeds the
/// application id and the store name, so both are held to that alphabet.
pub(crate) fn validate_name(what: &'static str, name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("must not be empty")
    } else if name == "." || name == ".." {
        Some("must not be `.` or `..`")
    } else if name.starts_with('.') {
        Some("must not start with `.` (reserved for the task's own files)")
    } else if name.len() > 200 {
        Some("must be at most 200 characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("may only contain ASCII letters, digits, `.`, `_` and `-`")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(Error::InvalidName {
            what,
            name: name.to_owned(),
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changelog_topic_follows_kafka_streams_naming() {
        assert_eq!(
            changelog_topic("keel-inventory", "holds"),
            "keel-inventory-holds-changelog"
        );
    }

    #[test]
    fn names_that_cannot_be_topics_or_directories_are_rejected() {
        for ok in ["counts", "0_3", "saga.v1", "a-b_c"] {
            assert!(validate_name("store name", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".checkpoint",
            "a/b",
            "a b",
            "ü",
            &"x".repeat(201),
        ] {
            assert!(validate_name("store name", bad).is_err(), "{bad}");
        }
    }
}
