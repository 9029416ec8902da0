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
    /// When set, a stream thread also commits as soon as its input runs dry, once this long
    /// (ms) has passed since its last commit: at low load an output is visible to
    /// `read_committed` readers about this long after its input arrived instead of up to
    /// `commit_interval_ms`; under load the input never runs dry and commits stay at
    /// `commit_interval_ms`, as large as before. More, smaller transactions cost the broker
    /// CPU. `None` (the default): every `commit_interval_ms` only, as in Kafka Streams. At
    /// most `commit_interval_ms`.
    pub min_commit_interval_ms: Option<u64>,
    /// A stream thread commits early, before `commit_interval_ms` is up, once its tasks' stores
    /// hold this many bytes of uncommitted writes (approximate: keys, values and a fixed cost
    /// per entry). Uncommitted writes are held in memory until the commit, so this bounds that
    /// memory whatever the interval and the input rate. Kafka Streams' equivalent is
    /// `statestore.uncommitted.max.bytes` (KIP-892), whose default this is: 64 MiB.
    pub max_uncommitted_bytes: usize,
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
    /// Bytes the restore consumer fetches per changelog partition and request (librdkafka's
    /// `max.partition.fetch.bytes` for it; default 512 KiB; at least 64 KiB). librdkafka hands
    /// a fetch's records to the consumer only once its broker thread has parsed the whole
    /// response, so the restoring thread waits out each large fetch: 4 MiB restored 0.91–1.14M
    /// records/s where 512 KiB restored 1.23–1.30M (docs/BENCHMARKS.md, "Restore: smaller
    /// fetches"). librdkafka also keeps one ~190-byte message object per fetched record until
    /// it is consumed, so a fetch of small records costs several times its size in memory.
    pub restore_fetch_bytes: usize,
    /// librdkafka settings for every client, passed through as-is.
    pub client: BTreeMap<String, String>,
    /// librdkafka settings for the consumers only (e.g. `session.timeout.ms`).
    pub consumer: BTreeMap<String, String>,
    /// librdkafka settings for the producers only (e.g. `linger.ms`, default 5, and
    /// `compression.type`). Settings the runtime owns, in any of the three maps, are refused by
    /// [`StreamsConfig::problems`] with the reason: ids and isolation, a partitioner other than
    /// Kafka's murmur2, `enable.idempotence = false`.
    pub producer: BTreeMap<String, String>,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        Self {
            application_id: String::new(),
            bootstrap_servers: "127.0.0.1:9092".to_owned(),
            processing_guarantee: Guarantee::ExactlyOnce,
            commit_interval_ms: None,
            min_commit_interval_ms: None,
            max_uncommitted_bytes: 64 << 20,
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
            restore_fetch_bytes: 512 << 10,
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

    /// [`min_commit_interval_ms`](Self::min_commit_interval_ms) as a duration.
    pub fn min_commit_interval(&self) -> Option<std::time::Duration> {
        self.min_commit_interval_ms
            .map(std::time::Duration::from_millis)
    }

    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{}-dlq", self.application_id))
    }

    /// `instance_id`, or the host name (read once per process from `/etc/hostname`, so the
    /// transactional ids and the static membership of every thread, restart included, use the
    /// same name), or `keel`.
    pub fn instance_id(&self) -> String {
        self.instance_id
            .clone()
            .unwrap_or_else(|| host_name().to_owned())
    }

    /// librdkafka settings the runtime owns, or cannot honour, in the pass-through maps: each
    /// with the reason (they used to be overwritten silently), named `name("<map>.<key>")`.
    fn refused_client_settings(&self, name: &dyn Fn(&str) -> String) -> Vec<String> {
        const OWNED: [(&str, &str); 6] = [
            ("group.id", "the consumer group is the application_id"),
            (
                "group.instance.id",
                "static membership is <instance_id>-<thread>",
            ),
            (
                "transactional.id",
                "transactional ids are <application_id>-<instance_id>-<thread>",
            ),
            (
                "enable.auto.commit",
                "offsets are committed with each transaction",
            ),
            (
                "isolation.level",
                "it follows processing_guarantee (read_committed under exactly-once)",
            ),
            (
                "partition.assignment.strategy",
                "the runtime uses cooperative-sticky",
            ),
        ];
        let mut problems = Vec::new();
        for (section, map) in [
            ("client", &self.client),
            ("consumer", &self.consumer),
            ("producer", &self.producer),
        ] {
            for (key, why) in OWNED {
                if map.contains_key(key) {
                    problems.push(format!(
                        "{} is set by the runtime and may not be overridden ({why})",
                        name(&format!("{section}.{key}"))
                    ));
                }
            }
            if map.contains_key("bootstrap.servers") {
                problems.push(format!(
                    "{} is refused: the brokers are {} (a second setting silently won over it)",
                    name(&format!("{section}.bootstrap.servers")),
                    name("bootstrap_servers")
                ));
            }
            if section != "consumer" {
                if let Some(p) = map.get("partitioner")
                    && !matches!(p.as_str(), "murmur2" | "murmur2_random")
                {
                    problems.push(format!(
                        "{} = {p:?} is refused: the runtime places keys with Kafka's \
                         murmur2 partitioner (murmur2 or murmur2_random), as Kafka Streams does, so \
                         co-partitioned topics, repartition topics and interactive queries agree on \
                         a key's partition; to place one sink's records otherwise, give that sink a \
                         partitioner (TopologyBuilder::add_sink_with_partitioner)",
                        name(&format!("{section}.partitioner"))
                    ));
                }
                if map
                    .get("enable.idempotence")
                    .is_some_and(|v| v.eq_ignore_ascii_case("false"))
                {
                    problems.push(format!(
                        "{} = false is refused: the runtime's producer is idempotent \
                         (transactions require it; at-least-once keeps it against duplicates and \
                         reordering on retries)",
                        name(&format!("{section}.enable.idempotence"))
                    ));
                }
            }
        }
        problems
    }

    /// Every problem of this configuration at once (empty: valid), each naming the settings it
    /// is about as the caller's configuration spells them. `name` maps the runtime's key — a
    /// field (`commit_interval_ms`), `state.<field>` of [`StateConfig`] (`state.dir`), or
    /// `<map>.<librdkafka key>` of a pass-through map (`client.group.id`,
    /// `producer.partitioner`) — to the caller's: an application that fills this from its own
    /// configuration passes where each setting comes from (Keel: `streams.commit_interval_ms`,
    /// `kafka.client.group.id`), so its check reports every rule of the runtime once, in its
    /// own words. [`validate`](Self::validate) names the runtime's keys.
    pub fn problems(&self, name: &dyn Fn(&str) -> String) -> Vec<String> {
        let mut problems = Vec::new();
        let valid_name = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        };
        if !valid_name(&self.application_id) {
            problems.push(format!(
                "{} {:?} must be non-empty and use only [a-zA-Z0-9._-] (it names topics)",
                name("application_id"),
                self.application_id
            ));
        }
        if self.bootstrap_servers.trim().is_empty() {
            problems.push(format!("{} is empty", name("bootstrap_servers")));
        }
        if self.num_stream_threads == 0 {
            problems.push(format!("{} must be at least 1", name("num_stream_threads")));
        }
        if self.commit_interval_ms == Some(0) {
            problems.push(format!(
                "{} must be greater than 0",
                name("commit_interval_ms")
            ));
        }
        if let Some(min) = self.min_commit_interval_ms {
            let interval = self.commit_interval().as_millis();
            if min == 0 || u128::from(min) > interval {
                problems.push(format!(
                    "{} = {min} must be greater than 0 and at most {} ({interval})",
                    name("min_commit_interval_ms"),
                    name("commit_interval_ms")
                ));
            }
        }
        if self.max_uncommitted_bytes == 0 {
            problems.push(format!(
                "{} must be greater than 0",
                name("max_uncommitted_bytes")
            ));
        }
        if self.restore_fetch_bytes < 64 * 1024 {
            problems.push(format!(
                "{} ({}) must be at least 64 KiB",
                name("restore_fetch_bytes"),
                self.restore_fetch_bytes
            ));
        }
        if self.replication_factor < 1 {
            problems.push(format!("{} must be at least 1", name("replication_factor")));
        }
        if let Some(id) = &self.instance_id
            && !valid_name(id)
        {
            problems.push(format!(
                "{} {id:?} must use only [a-zA-Z0-9._-]",
                name("instance_id")
            ));
        }
        if self.retry_backoff_ms == 0 || self.retry_backoff_max_ms < self.retry_backoff_ms {
            problems.push(format!(
                "{} must be > 0 and <= {}",
                name("retry_backoff_ms"),
                name("retry_backoff_max_ms")
            ));
        }
        match self.state.validate() {
            Ok(()) => {}
            // Each of the state's problems starts with the field it is about.
            Err(keel_state::Error::Config { problems: state }) => {
                problems.extend(state.iter().map(|p| match p.split_once(' ') {
                    Some((field, rest)) => format!("{} {rest}", name(&format!("state.{field}"))),
                    None => format!("{}: {p}", name("state")),
                }));
            }
            Err(other) => problems.push(format!("{}: {other}", name("state"))),
        }
        problems.extend(self.refused_client_settings(name));
        problems
    }

    /// [`problems`](Self::problems) under the runtime's own keys, as an error listing them all.
    pub fn validate(&self) -> Result<()> {
        let problems = self.problems(&|key| key.to_owned());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(problems))
        }
    }
}

/// The host name, read from `/etc/hostname` the first time it is asked for.
fn host_name() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        #[cfg(test)]
        tests::HOST_READS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "keel".to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) static HOST_READS: std::sync::atomic::AtomicUsize =
        std::sync::atomic::AtomicUsize::new(0);

    #[test]
    fn a_min_commit_interval_must_be_positive_and_within_the_interval() {
        let mut c = StreamsConfig::new("app", "localhost:9092");
        c.min_commit_interval_ms = Some(20);
        assert!(c.validate().is_ok());
        for bad in [0, 101] {
            c.min_commit_interval_ms = Some(bad);
            let err = c.validate().expect_err("refused").to_string();
            assert!(err.contains("min_commit_interval_ms"), "{err}");
        }
        c.commit_interval_ms = Some(1_000);
        c.min_commit_interval_ms = Some(101);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn problems_name_the_settings_as_the_caller_spells_them() {
        let streams = |key: &str| match key.split_once('.') {
            Some(("client", k)) => format!("kafka.client.{k}"),
            Some(("state", k)) => format!("streams.rocksdb.{k}"),
            _ => format!("streams.{key}"),
        };
        let mut c = StreamsConfig::new("app", "localhost:9092");
        assert_eq!(c.problems(&streams), Vec::<String>::new());
        c.min_commit_interval_ms = Some(101);
        c.num_stream_threads = 0;
        c.state.arena_block_bytes = 1;
        c.client.insert("group.id".into(), "mine".into());
        c.producer
            .insert("enable.idempotence".into(), "false".into());
        let problems = c.problems(&streams);
        assert_eq!(problems.len(), 5, "{problems:#?}");
        assert_eq!(
            problems[..2],
            [
                "streams.num_stream_threads must be at least 1",
                "streams.min_commit_interval_ms = 101 must be greater than 0 and at most \
                 streams.commit_interval_ms (100)",
            ]
        );
        assert!(
            problems[2].starts_with("streams.rocksdb.arena_block_bytes (1) must be at least 4 KiB"),
            "{problems:#?}"
        );
        assert!(
            problems[3].starts_with("kafka.client.group.id is set by the runtime"),
            "{problems:#?}"
        );
        assert!(
            problems[4].starts_with("streams.producer.enable.idempotence = false is refused"),
            "{problems:#?}"
        );
        // `validate` lists the same problems under the runtime's own keys.
        let err = c.validate().expect_err("invalid").to_string();
        for key in [
            "\n  - num_stream_threads",
            "\n  - min_commit_interval_ms = 101",
            "at most commit_interval_ms (100)",
            "\n  - state.arena_block_bytes (1)",
            "\n  - client.group.id",
            "\n  - producer.enable.idempotence",
        ] {
            assert!(err.contains(key), "{key} missing: {err}");
        }
        assert_eq!(err.matches("\n  - ").count(), 5, "{err}");
    }

    #[test]
    fn the_host_name_is_read_once_per_process() {
        let c = StreamsConfig::new("app", "localhost:9092");
        let first = c.instance_id();
        for _ in 0..10 {
            assert_eq!(c.instance_id(), first);
        }
        assert_eq!(
            HOST_READS.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "/etc/hostname read once"
        );
    }

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
