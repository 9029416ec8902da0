//! [`StreamsConfig`]: the runtime's settings (the `streams` section of Keel's configuration).

use std::collections::BTreeMap;

use keel_state::{Guarantee, StateConfig};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::task::BadRecordPolicy;

/// How one application runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsConfig {
    /// Names the consumer group, the internal topics (`<application_id>-<store>-changelog`,
    /// `<application_id>-<name>-repartition`), the state directory and the transactional ids.
    pub application_id: String,
    pub bootstrap_servers: String,
    /// `exactly_once` (transactions, read_committed) or `at_least_once`.
    pub processing_guarantee: Guarantee,
    /// How often the current transaction is committed; `None`: 100 ms under exactly-once,
    /// 30 s under at-least-once (Kafka Streams' defaults).
    pub commit_interval_ms: Option<u64>,
    /// Stream threads in this instance; each has its own consumer and producer.
    pub num_stream_threads: usize,
    /// Stable identity of this instance. Transactional ids are `<application_id>-<instance_id>-<thread>`,
    /// so a restarted instance fences its own unfinished transactions at once. Default: the
    /// host name.
    pub instance_id: Option<String>,
    /// Where bad records go; default `<application_id>-dlq`.
    pub dead_letter_topic: Option<String>,
    pub on_bad_record: BadRecordPolicy,
    /// Replication factor of the internal topics the runtime creates.
    pub replication_factor: i32,
    /// Partitions of repartition topics when no upstream topic says otherwise.
    pub repartition_partitions: Option<i32>,
    /// The broker aborts a transaction left open this long (a crashed instance that does not
    /// come back).
    pub transaction_timeout_ms: u64,
    /// Backoff after a retryable failure, doubled up to `retry_backoff_max_ms`.
    pub retry_backoff_ms: u64,
    pub retry_backoff_max_ms: u64,
    /// Local state: directory, block cache and write buffer budget.
    pub state: StateConfig,
    /// librdkafka settings for every client, passed through as-is.
    pub client: BTreeMap<String, String>,
    /// librdkafka settings for the consumers only (e.g. `session.timeout.ms`).
    pub consumer: BTreeMap<String, String>,
    /// librdkafka settings for the producers only (e.g. `linger.ms`, `compression.type`).
    pub producer: BTreeMap<String, String>,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        Self {
            application_id: String::new(),
            bootstrap_servers: "127.0.0.1:9092".to_owned(),
            processing_guarantee: Guarantee::ExactlyOnce,
            commit_interval_ms: None,
            num_stream_threads: 1,
            instance_id: None,
            dead_letter_topic: None,
            on_bad_record: BadRecordPolicy::DeadLetter,
            replication_factor: 1,
            repartition_partitions: None,
            transaction_timeout_ms: 10_000,
            retry_backoff_ms: 100,
            retry_backoff_max_ms: 10_000,
            state: StateConfig::default(),
            client: BTreeMap::new(),
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
        }
    }
}

impl StreamsConfig {
    /// Defaults for `application_id` against `bootstrap_servers`.
    pub fn new(application_id: impl Into<String>, bootstrap_servers: impl Into<String>) -> Self {
        Self {
            application_id: application_id.into(),
            bootstrap_servers: bootstrap_servers.into(),
            ..Self::default()
        }
    }

    pub fn commit_interval(&self) -> std::time::Duration {
        let ms = self
            .commit_interval_ms
            .unwrap_or(match self.processing_guarantee {
                Guarantee::ExactlyOnce => 100,
                Guarantee::AtLeastOnce => 30_000,
            });
        std::time::Duration::from_millis(ms)
    }

    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{}-dlq", self.application_id))
    }

    pub fn instance_id(&self) -> String {
        self.instance_id.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "keel".to_owned())
        })
    }

    /// Every problem at once.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        let valid_name = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        };
        if !valid_name(&self.application_id) {
            problems.push(format!(
                "application_id {:?} must be non-empty and use only [a-zA-Z0-9._-] (it names topics)",
                self.application_id
            ));
        }
        if self.bootstrap_servers.trim().is_empty() {
            problems.push("bootstrap_servers is empty".to_owned());
        }
        if self.num_stream_threads == 0 {
            problems.push("num_stream_threads must be at least 1".to_owned());
        }
        if self.commit_interval_ms == Some(0) {
            problems.push("commit_interval_ms must be greater than 0".to_owned());
        }
        if self.replication_factor < 1 {
            problems.push("replication_factor must be at least 1".to_owned());
        }
        if let Some(id) = &self.instance_id
            && !valid_name(id)
        {
            problems.push(format!("instance_id {id:?} must use only [a-zA-Z0-9._-]"));
        }
        if self.retry_backoff_ms == 0 || self.retry_backoff_max_ms < self.retry_backoff_ms {
            problems.push("retry_backoff_ms must be > 0 and <= retry_backoff_max_ms".to_owned());
        }
        if let Err(e) = self.state.validate() {
            problems.push(format!("state: {e}"));
        }
        for key in [
            "group.id",
            "transactional.id",
            "enable.auto.commit",
            "isolation.level",
        ] {
            if self.client.contains_key(key) {
                problems.push(format!(
                    "client.{key} is set by the runtime and may not be overridden"
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(problems))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_guarantee() {
        let mut c = StreamsConfig::new("app", "localhost:9092");
        assert_eq!(c.commit_interval().as_millis(), 100);
        c.processing_guarantee = Guarantee::AtLeastOnce;
        assert_eq!(c.commit_interval().as_millis(), 30_000);
        assert_eq!(c.dead_letter_topic(), "app-dlq");
        c.validate().expect("valid");
    }

    #[test]
    fn every_problem_is_listed() {
        let mut c = StreamsConfig::new("bad id", " ");
        c.num_stream_threads = 0;
        c.client.insert("group.id".into(), "x".into());
        let err = c.validate().expect_err("invalid").to_string();
        for needle in [
            "application_id",
            "bootstrap_servers",
            "num_stream_threads",
            "client.group.id",
        ] {
            assert!(err.contains(needle), "{needle} missing: {err}");
        }
    }
}
