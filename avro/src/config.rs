//! How Keel reaches the schema registry: URL, auto-registration, the compatibility level its
//! subjects get, and an optional subject prefix.

use std::fmt;
use std::time::Duration;

use schema_registry_converter::async_impl::schema_registry::SrSettings;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The local stack's registry (Apicurio's Confluent-compatible API).
pub const DEFAULT_REGISTRY_URL: &str = "http://127.0.0.1:8080/apis/ccompat/v7";

/// The `schema_registry` section of Keel's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Base URL of the registry's Confluent API.
    pub url: String,
    /// Register the local schema on first use of a subject (as Confluent's serializers do).
    /// When off, a producer only uses a schema that `keel schemas register` registered before.
    pub auto_register: bool,
    /// The level `keel schemas register` sets on every subject, and `keel schemas check`
    /// judges against.
    pub compatibility: CompatibilityLevel,
    /// Prepended to every subject: `<prefix><topic>-value`. Empty in production; tests and
    /// shared registries use it to keep their subjects apart.
    pub subject_prefix: String,
    /// Timeout of one registry HTTP call, in milliseconds.
    pub timeout_ms: u64,
    /// How long, in milliseconds after the registry first answered "schema not found" (HTTP
    /// 404, error code 40403) for a schema id read from a record, that id is asked again
    /// before the record is the producer's fault (dead-lettered): the time a registry replica
    /// may lag behind the one that issued the id. While it lasts the consumer waits on the
    /// record (a stream thread holds its partitions). 0: an unknown id is final at once. At
    /// most [`MAX_UNKNOWN_ID_PATIENCE_MS`].
    pub unknown_id_patience_ms: u64,
    /// The registry hands out schema ids in increasing order (Confluent's Schema Registry and
    /// Apicurio do, for every schema registered through their API). Then a replica that served
    /// an id held every lower id, so a miss for an id at or below one this process resolved
    /// at least `unknown_id_patience_ms` ago cannot be lag and is final at once. Set `false`
    /// when schemas are imported with ids of their own (Confluent's IMPORT mode, schema
    /// linking): every miss then gets the whole window.
    pub increasing_ids: bool,
}

/// The largest `unknown_id_patience_ms`: a stream thread waits at most 60 s on the registry
/// for one record (`processors/src/format.rs`), so a longer window would not be kept there.
pub const MAX_UNKNOWN_ID_PATIENCE_MS: u64 = 60_000;

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_REGISTRY_URL.to_owned(),
            auto_register: true,
            compatibility: CompatibilityLevel::Backward,
            subject_prefix: String::new(),
            timeout_ms: 10_000,
            unknown_id_patience_ms: 10_000,
            increasing_ids: true,
        }
    }
}

impl RegistryConfig {
    /// The defaults, pointed at `url`.
    pub fn with_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Check every field; the error lists every problem at once.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            problems.push(format!(
                "url must start with http:// or https://, got {:?}",
                self.url
            ));
        }
        if self.url.ends_with('/') {
            problems.push(format!(
                "url must not end with '/', got {:?} (subjects are appended as /subjects/...)",
                self.url
            ));
        }
        if self.timeout_ms == 0 {
            problems.push("timeout_ms must be greater than 0".to_owned());
        }
        if self.unknown_id_patience_ms > MAX_UNKNOWN_ID_PATIENCE_MS {
            problems.push(format!(
                "unknown_id_patience_ms must be at most {MAX_UNKNOWN_ID_PATIENCE_MS} (ms), got {}",
                self.unknown_id_patience_ms
            ));
        }
        if let Some(bad) = self
            .subject_prefix
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || *c == '/')
        {
            problems.push(format!(
                "subject_prefix must not contain {bad:?}, got {:?}",
                self.subject_prefix
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Config { problems })
        }
    }

    /// `unknown_id_patience_ms` as a duration.
    pub fn unknown_id_patience(&self) -> Duration {
        Duration::from_millis(self.unknown_id_patience_ms)
    }

    /// Settings for `schema_registry_converter`, after validating.
    pub(crate) fn sr_settings(&self) -> Result<SrSettings> {
        self.validate()?;
        SrSettings::new_builder(self.url.clone())
            .set_timeout(Duration::from_millis(self.timeout_ms))
            .build()
            .map_err(|e| Error::Config {
                problems: vec![format!("cannot build the registry client: {e}")],
            })
    }
}

/// A subject's compatibility level, as the Confluent API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompatibilityLevel {
    /// New schemas read data written with the latest one (consumers upgrade first).
    Backward,
    BackwardTransitive,
    /// The latest schema reads data written with new ones (producers upgrade first).
    Forward,
    ForwardTransitive,
    /// Both.
    Full,
    FullTransitive,
    /// No check.
    None,
}

impl CompatibilityLevel {
    /// The name the registry's API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backward => "BACKWARD",
            Self::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Self::Forward => "FORWARD",
            Self::ForwardTransitive => "FORWARD_TRANSITIVE",
            Self::Full => "FULL",
            Self::FullTransitive => "FULL_TRANSITIVE",
            Self::None => "NONE",
        }
    }

    /// Whether a new schema must read data written with the old one.
    pub(crate) fn new_reads_old(self) -> bool {
        matches!(
            self,
            Self::Backward | Self::BackwardTransitive | Self::Full | Self::FullTransitive
        )
    }

    /// Whether the old schema must read data written with the new one.
    pub(crate) fn old_reads_new(self) -> bool {
        matches!(
            self,
            Self::Forward | Self::ForwardTransitive | Self::Full | Self::FullTransitive
        )
    }
}

impl fmt::Display for CompatibilityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_point_at_the_local_stack_with_backward_compatibility() {
        let config = RegistryConfig::default();
        assert_eq!(config.url, DEFAULT_REGISTRY_URL);
        assert!(config.auto_register);
        assert_eq!(config.compatibility, CompatibilityLevel::Backward);
        assert_eq!(config.subject_prefix, "");
        assert_eq!(config.unknown_id_patience(), Duration::from_secs(10));
        assert!(config.increasing_ids);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn a_partial_section_fills_in_defaults_and_unknown_keys_are_refused() {
        let config: RegistryConfig =
            serde_json::from_str(r#"{"auto_register": false, "compatibility": "FULL_TRANSITIVE"}"#)
                .expect("a partial section deserializes");
        assert!(!config.auto_register);
        assert_eq!(config.compatibility, CompatibilityLevel::FullTransitive);
        assert_eq!(config.url, DEFAULT_REGISTRY_URL);

        let unknown = serde_json::from_str::<RegistryConfig>(r#"{"urll": "http://x"}"#)
            .expect_err("a misspelt key is an error, not ignored");
        assert!(unknown.to_string().contains("urll"), "{unknown}");
        assert!(
            serde_json::from_str::<RegistryConfig>(r#"{"compatibility": "SIDEWAYS"}"#).is_err()
        );
    }

    #[test]
    fn validation_reports_every_problem_at_once() {
        let config = RegistryConfig {
            url: "localhost:8080/".to_owned(),
            timeout_ms: 0,
            subject_prefix: "a b".to_owned(),
            unknown_id_patience_ms: MAX_UNKNOWN_ID_PATIENCE_MS + 1,
            ..RegistryConfig::default()
        };
        match config.validate() {
            Err(Error::Config { problems }) => assert_eq!(problems.len(), 5, "{problems:?}"),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn levels_use_the_registry_names_and_directions() {
        for level in [
            CompatibilityLevel::Backward,
            CompatibilityLevel::BackwardTransitive,
            CompatibilityLevel::Forward,
            CompatibilityLevel::ForwardTransitive,
            CompatibilityLevel::Full,
            CompatibilityLevel::FullTransitive,
            CompatibilityLevel::None,
        ] {
            let json = serde_json::to_string(&level).expect("a level serializes");
            assert_eq!(json, format!("\"{}\"", level.as_str()));
        }
        assert!(CompatibilityLevel::Backward.new_reads_old());
        assert!(!CompatibilityLevel::Backward.old_reads_new());
        assert!(
            CompatibilityLevel::Full.new_reads_old() && CompatibilityLevel::Full.old_reads_new()
        );
        assert!(
            !CompatibilityLevel::None.new_reads_old() && !CompatibilityLevel::None.old_reads_new()
        );
    }
}
