//! Keel's typed, layered configuration: built-in defaults (`config/default.toml`, embedded),
//! then an optional file, then `KEEL__SECTION__KEY` environment variables. Unknown keys are
//! errors, and validation reports every problem at once.

use std::collections::BTreeMap;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

const DEFAULTS: &str = include_str!("../config/default.toml");

/// Everything the `keel` binary needs to reach the stack.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeelConfig {
    pub kafka: KafkaConfig,
    /// The schema registry: URL, auto-register, compatibility level, subject prefix.
    pub registry: keel_avro::RegistryConfig,
    pub connect: UrlConfig,
    pub cassandra: CassandraConfig,
    pub mysql: UrlConfig,
    pub postgres: UrlConfig,
    /// The stream applications `keel run` hosts (saga, inventory).
    #[serde(default)]
    pub streams: StreamsSection,
    /// Partition count and replication of the topics `keel run` creates.
    #[serde(default)]
    pub topics: TopicsSection,
    #[serde(default)]
    pub saga: keel_processors::saga::SagaConfig,
    #[serde(default)]
    pub inventory: keel_processors::inventory::InventoryConfig,
    #[serde(default)]
    pub payment: keel_processors::payment::PaymentConfig,
    #[serde(default)]
    pub psp_mock: keel_processors::psp_mock::PspMockConfig,
    #[serde(default)]
    pub api: keel_ingest_api::ApiConfig,
    #[serde(default)]
    pub outbox: OutboxSection,
    #[serde(default)]
    pub carts: CartsSection,
    /// The outbox connectors of `[outbox].mode = "debezium"` (`keel connectors`, `keel run`).
    #[serde(default)]
    pub connectors: crate::connectors::ConnectorsSection,
    /// The reconciliation role: its ledger connector and grace periods.
    #[serde(default)]
    pub reconciliation: keel_processors::reconciliation::ReconciliationConfig,
    /// The invariant auditor (`--roles ...,audit`) and `keel audit`: grace periods.
    #[serde(default)]
    pub audit: keel_processors::audit::AuditConfig,
    /// The admin listener (`/metrics`, `/health`, `/ready`) of processes without the `api` role.
    #[serde(default)]
    pub metrics: crate::admin::MetricsSection,
}

/// Where the saga's view of a cart comes from (`docs/adr/0002-cart-check-from-cdc.md`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CartSource {
    /// Opt-out: the ingest API reads the cart from MariaDB and puts its lines in the
    /// place-order command; the saga validates only the command's own numbers, so a command
    /// another producer writes straight to Kafka is not checked against any cart. Needs no
    /// Kafka Connect.
    Api,
    /// The default: the saga checks every place-order command — from the API or written
    /// straight to Kafka — against a carts table built from the cart service's CDC topics
    /// (Debezium, registered by `keel run`; needs Kafka Connect).
    #[default]
    Cdc,
}

/// `[carts]`: the cart check. With `source = "cdc"` (the default), `keel run` (role `saga`)
/// creates the CDC topics `<topics.prefix><server_name>.<database>.carts|cart_items` with
/// `[topics].partitions` and registers (PUT, idempotent) the Debezium connector
/// `<streams.application_id>-carts-cdc` for the `mysql.url` database on `connect.url`, and stops
/// with an error naming both ways out (start Connect, or `source = "api"`) when it cannot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CartsSection {
    pub source: CartSource,
    /// Debezium's `topic.prefix`, after `[topics].prefix`.
    pub server_name: String,
    /// The connector's MariaDB replica id; unique among the server's binlog clients. Default: a
    /// stable number derived from the connector's name.
    pub server_id: Option<u32>,
    /// How long `keel run` waits for the connector to run (ms).
    pub register_timeout_ms: u64,
    /// How long the carts processor remembers an order it answered or released, and keeps a
    /// cart whose rows are gone after its last change, before deleting it (ms; 7 days; keel
    /// run copies it to `SagaConfig::cart_retention_ms`).
    pub retention_ms: u64,
}

impl Default for CartsSection {
    fn default() -> Self {
        Self {
            source: CartSource::Cdc,
            server_name: "cdc".to_owned(),
            server_id: None,
            register_timeout_ms: 60_000,
            retention_ms: 7 * 24 * 3_600_000,
        }
    }
}

impl CartsSection {
    /// Every problem with these settings.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.retention_ms == 0 {
            out.push("carts.retention_ms must be above 0".to_owned());
        }
        out
    }
}

/// How the outbox tables (`order_outbox`, `payment_outbox`) reach Kafka.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxMode {
    /// Keel's relay (`keel run --roles relay`) publishes PENDING rows and marks them SENT.
    #[default]
    Relay,
    /// Debezium's outbox event router streams the tables; the relay role does nothing.
    Debezium,
}

/// `[outbox]`: the mode, the relay's settings (`[outbox.relay]`) and the clean-up of shipped
/// rows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxSection {
    pub mode: OutboxMode,
    pub relay: keel_processors::outbox::RelayConfig,
    /// Shipped rows older than this are deleted by the relay role (0: never); an unshipped row
    /// never is (`keel_processors::outbox::cleanup`).
    pub retention_ms: u64,
    /// How often the clean-up runs.
    pub cleanup_interval_ms: u64,
    /// Debezium mode: subtracted from the connector's committed source time (longer than any
    /// transaction that writes an outbox row stays open).
    pub position_margin_ms: u64,
}

impl Default for OutboxSection {
    fn default() -> Self {
        let cleanup = keel_processors::outbox::cleanup::CleanupConfig::default();
        Self {
            mode: OutboxMode::default(),
            relay: keel_processors::outbox::RelayConfig::default(),
            retention_ms: cleanup.retention_ms,
            cleanup_interval_ms: cleanup.interval_ms,
            position_margin_ms: cleanup.position_margin_ms,
        }
    }
}

impl OutboxSection {
    /// The clean-up's settings.
    pub fn cleanup(&self) -> keel_processors::outbox::cleanup::CleanupConfig {
        use keel_processors::outbox::cleanup::{CleanupConfig, CleanupMode};
        CleanupConfig {
            mode: match self.mode {
                OutboxMode::Relay => CleanupMode::Relay,
                OutboxMode::Debezium => CleanupMode::Debezium,
            },
            retention_ms: self.retention_ms,
            interval_ms: self.cleanup_interval_ms,
            position_margin_ms: self.position_margin_ms,
            ..CleanupConfig::default()
        }
    }
}

/// `[streams]`: what every stream application of this process shares. Each role runs as its own
/// application, `<application_id>-<role>` (consumer group, internal topics, state directory).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsSection {
    pub application_id: String,
    /// Stable identity of this process (transactional ids, static membership); default: the
    /// host name. Two processes of one application must have different ids.
    pub instance_id: Option<String>,
    pub num_stream_threads: usize,
    /// Default 100 ms under exactly-once (Kafka Streams' default).
    pub commit_interval_ms: Option<u64>,
    /// A thread whose input ran dry commits once this long has passed since its last commit
    /// (`keel_topology::StreamsConfig::min_commit_interval_ms`); `None`: every
    /// `commit_interval_ms` only.
    pub min_commit_interval_ms: Option<u64>,
    /// A thread commits early once its stores hold this many bytes of uncommitted writes
    /// (`keel_topology::StreamsConfig::max_uncommitted_bytes`, 64 MiB).
    pub max_uncommitted_bytes: usize,
    pub processing_guarantee: keel_topology::Guarantee,
    /// Root of the local RocksDB state (`<state_dir>/<application id>/<task>/<store>`).
    pub state_dir: std::path::PathBuf,
    /// RocksDB's memory, per role.
    pub rocksdb: RocksDbSection,
}

/// `[streams.rocksdb]`: RocksDB's memory of each role's stores (each role has one block cache
/// and one write buffer budget that all its stores share). Defaults and the meaning of each
/// setting: `keel_state::StateConfig`. `keel run` warns when the open stores' memtables take
/// over half of `write_buffer_bytes` before holding anything.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RocksDbSection {
    /// Block cache, memtables included (bytes).
    pub block_cache_bytes: usize,
    /// All memtables of the role's stores (bytes).
    pub write_buffer_bytes: usize,
    /// One memtable (bytes).
    pub memtable_bytes: usize,
    /// A memtable's arena block, charged per store that holds a key (bytes).
    pub arena_block_bytes: usize,
    /// A memtable's Bloom filter, in percent of `memtable_bytes` (0: none).
    pub memtable_bloom_percent: u32,
}

impl Default for RocksDbSection {
    fn default() -> Self {
        let state = keel_state::StateConfig::default();
        Self {
            block_cache_bytes: state.block_cache_bytes,
            write_buffer_bytes: state.write_buffer_bytes,
            memtable_bytes: state.memtable_bytes,
            arena_block_bytes: state.arena_block_bytes,
            memtable_bloom_percent: state.memtable_bloom_percent,
        }
    }
}

impl RocksDbSection {
    /// `state` with these settings.
    pub fn apply(&self, state: &mut keel_state::StateConfig) {
        state.block_cache_bytes = self.block_cache_bytes;
        state.write_buffer_bytes = self.write_buffer_bytes;
        state.memtable_bytes = self.memtable_bytes;
        state.arena_block_bytes = self.arena_block_bytes;
        state.memtable_bloom_percent = self.memtable_bloom_percent;
    }
}

impl Default for StreamsSection {
    fn default() -> Self {
        let home = std::env::var_os("HOME").map_or_else(|| "/tmp".into(), std::path::PathBuf::from);
        Self {
            application_id: "keel".to_owned(),
            instance_id: None,
            num_stream_threads: 1,
            commit_interval_ms: None,
            min_commit_interval_ms: None,
            max_uncommitted_bytes: keel_topology::StreamsConfig::default().max_uncommitted_bytes,
            processing_guarantee: keel_topology::Guarantee::ExactlyOnce,
            state_dir: home.join(".local/state/keel/streams"),
            rocksdb: RocksDbSection::default(),
        }
    }
}

impl TopicsSection {
    pub fn names(&self) -> keel_processors::topics::Topics {
        keel_processors::topics::Topics::with_prefix(self.prefix.clone())
    }
}

/// `[topics]`: how `keel run` creates the topics it needs when they are missing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsSection {
    /// Put in front of every topic name (empty in production; tests use a random one).
    pub prefix: String,
    /// Partitions of every topic; topics read together by one task must agree (the runtime
    /// checks co-partitioning at start).
    pub partitions: i32,
    pub replication_factor: i32,
}

impl Default for TopicsSection {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            partitions: 6,
            replication_factor: 1,
        }
    }
}

/// Kafka: where the brokers are, plus librdkafka settings passed through untouched (those the
/// stream runtime owns are refused: `keel_topology::StreamsConfig::problems`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    #[serde(default)]
    pub client: BTreeMap<String, String>,
}

/// A server reached by one URL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlConfig {
    pub url: String,
}

/// Cassandra contact points (`host:port`) and where the inventory mirror lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CassandraConfig {
    pub nodes: Vec<String>,
    #[serde(default = "default_keyspace")]
    pub keyspace: String,
    #[serde(default = "default_replication")]
    pub replication_factor: u32,
}

fn default_keyspace() -> String {
    "keel_inventory".to_owned()
}

fn default_replication() -> u32 {
    1
}

impl KeelConfig {
    /// The stream runtime's settings of role `role` (`saga`, `inventory`, `reconciliation`,
    /// `audit`): application id `<streams.application_id>-<role>`, `[kafka]`'s brokers and
    /// client settings, `[streams]`, and `[topics].replication_factor` for the internal topics
    /// the runtime creates (changelogs, repartition topics, the dead-letter topic).
    pub fn streams_for(&self, role: &str) -> keel_topology::StreamsConfig {
        let streams = &self.streams;
        let mut config = keel_topology::StreamsConfig::new(
            format!("{}-{role}", streams.application_id),
            self.kafka.bootstrap_servers.clone(),
        );
        config.instance_id = streams.instance_id.clone();
        config.num_stream_threads = streams.num_stream_threads;
        config.commit_interval_ms = streams.commit_interval_ms;
        config.min_commit_interval_ms = streams.min_commit_interval_ms;
        config.max_uncommitted_bytes = streams.max_uncommitted_bytes;
        config.processing_guarantee = streams.processing_guarantee;
        config.replication_factor = self.topics.replication_factor;
        config.state.dir = streams.state_dir.clone();
        streams.rocksdb.apply(&mut config.state);
        config.client = self.kafka.client.clone();
        config
    }

    /// Keel's key of a setting of [`streams_for`](Self::streams_for)'s configuration, from the
    /// runtime's key as `keel_topology::StreamsConfig::problems` names it: where `streams_for`
    /// takes it from. Settings Keel leaves at the runtime's defaults (the `consumer`/`producer`
    /// maps, retry backoff, ...) are named as if under `[streams]`.
    fn streams_key(runtime: &str) -> String {
        if runtime == "bootstrap_servers" {
            format!("kafka.{runtime}")
        } else if runtime == "replication_factor" {
            format!("topics.{runtime}")
        } else if runtime == "state.dir" {
            "streams.state_dir".to_owned()
        } else if let Some(setting) = runtime.strip_prefix("client.") {
            format!("kafka.client.{setting}")
        } else if let Some(setting) = runtime.strip_prefix("state.") {
            format!("streams.rocksdb.{setting}")
        } else {
            format!("streams.{runtime}")
        }
    }

    /// The payment service's consumer group: `[payment].group_id`, or
    /// `<streams.application_id>-payment` while it is left at its default (so two applications
    /// on one cluster do not share it). Its dead letters go to `<group>-dlq`.
    pub fn payment_group_id(&self) -> String {
        if self.payment.group_id == keel_processors::payment::PaymentConfig::default().group_id {
            format!("{}-payment", self.streams.application_id)
        } else {
            self.payment.group_id.clone()
        }
    }

    /// The order sink's consumer group: `<streams.application_id>-order-sink`.
    pub fn order_sink_group_id(&self) -> String {
        format!("{}-order-sink", self.streams.application_id)
    }

    /// The Cassandra sink's consumer group: `<streams.application_id>-cassandra-sink`.
    pub fn cassandra_sink_group_id(&self) -> String {
        format!("{}-cassandra-sink", self.streams.application_id)
    }

    /// The plain consumers' groups (not the stream roles'): the order sink, the Cassandra sink
    /// and the payment service. Each has its dead-letter topic `<group>-dlq`.
    pub fn plain_consumer_group_ids(&self) -> [String; 3] {
        [
            self.order_sink_group_id(),
            self.cassandra_sink_group_id(),
            self.payment_group_id(),
        ]
    }

    /// Defaults, then `file` (if given), then the environment; then validate.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        Self::from_figment(Self::figment(file))
    }

    fn figment(file: Option<&Path>) -> Figment {
        let mut fig = Figment::from(Toml::string(DEFAULTS));
        if let Some(path) = file {
            fig = fig.merge(Toml::file_exact(path));
        }
        fig.merge(Env::prefixed("KEEL__").split("__").lowercase(true))
    }

    fn from_figment(fig: Figment) -> anyhow::Result<Self> {
        let config: Self = fig
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        let problems = config.problems();
        if !problems.is_empty() {
            anyhow::bail!("invalid configuration:\n  - {}", problems.join("\n  - "));
        }
        Ok(config)
    }

    /// Every validation problem, not just the first.
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (key, url, schemes) in [
            ("connect.url", &self.connect.url, &["http", "https"][..]),
            ("mysql.url", &self.mysql.url, &["mysql", "mariadb"][..]),
            (
                "postgres.url",
                &self.postgres.url,
                &["postgres", "postgresql"][..],
            ),
        ] {
            let scheme = url.split_once("://").map(|(s, _)| s);
            if !scheme.is_some_and(|s| schemes.contains(&s)) {
                out.push(format!(
                    "{key} = {url:?} must start with {}://",
                    schemes.join(":// or ")
                ));
            }
        }
        match self.registry.validate() {
            Ok(()) => {}
            Err(keel_avro::Error::Config { problems }) => {
                out.extend(problems.iter().map(|p| format!("registry.{p}")));
            }
            Err(other) => out.push(format!("registry: {other}")),
        }
        if self.topics.partitions < 1 {
            out.push(format!(
                "topics.partitions = {} must be at least 1",
                self.topics.partitions
            ));
        }
        // The runtime's rules (kafka.bootstrap_servers, kafka.client and [streams], RocksDB
        // included), under Keel's keys. The roles' settings differ only in the application id,
        // `<application_id>-<role>`, whose suffix changes no rule: one role is enough.
        // A problem quoting the role's id (`<application_id>-saga`) quotes the configured one.
        let (role_id, configured) = (
            format!("{:?}", format!("{}-saga", self.streams.application_id)),
            format!("{:?}", self.streams.application_id),
        );
        out.extend(
            self.streams_for("saga")
                .problems(&Self::streams_key)
                .into_iter()
                .map(|p| p.replacen(&role_id, &configured, 1)),
        );
        // "-saga" passes the runtime's rule on application ids; an empty one is Keel's own.
        if self.streams.application_id.is_empty() {
            out.push("streams.application_id is empty".to_owned());
        }
        if self.saga.cart_timeout_ms <= self.saga.cart_wait_ms {
            out.push(format!(
                "saga.cart_timeout_ms ({}) must exceed saga.cart_wait_ms ({}), so the carts \
                 processor's answer (CART_NOT_FOUND) reaches the saga before it gives up",
                self.saga.cart_timeout_ms, self.saga.cart_wait_ms
            ));
        }
        if self.saga.payment_timeout_ms == 0 || self.saga.inventory_timeout_ms == 0 {
            out.push("saga timeouts must be above 0 ms".to_owned());
        }
        if self.inventory.hold_ttl_ms < 1_000 {
            out.push(format!(
                "inventory.hold_ttl_ms = {} must be at least 1000 (Cassandra TTLs are whole seconds)",
                self.inventory.hold_ttl_ms
            ));
        }
        // The bounds apply to a reserve's own TTL; the default (hold_ttl_ms) may lie outside
        // them (tests run with 3 s holds).
        let inv = &self.inventory;
        if inv.min_hold_ttl_ms < 1_000 || inv.min_hold_ttl_ms > inv.max_hold_ttl_ms {
            out.push(format!(
                "inventory: 1000 <= min_hold_ttl_ms ({}) <= max_hold_ttl_ms ({}) must hold \
                 (Cassandra TTLs are whole seconds)",
                inv.min_hold_ttl_ms, inv.max_hold_ttl_ms
            ));
        }
        if let Err(problems) = self.api.validate() {
            out.extend(problems.iter().map(|p| format!("api.{p}")));
        }
        if let Err(e) = self.payment.validate() {
            out.push(format!("payment: {e}"));
        }
        if let Err(e) = self.psp_mock.validate() {
            out.push(format!("psp_mock: {e}"));
        }
        if self.saga.payment_timeout_ms <= self.payment.psp_timeout_ms {
            out.push(format!(
                "saga.payment_timeout_ms ({}) must exceed payment.psp_timeout_ms ({}), so a PSP timeout \
                 reaches the saga as PSP_TIMEOUT before the saga gives up",
                self.saga.payment_timeout_ms, self.payment.psp_timeout_ms
            ));
        }
        out.extend(self.carts.problems());
        out.extend(self.connectors.problems());
        out.extend(self.reconciliation.problems());
        out.extend(self.audit.problems());
        out.extend(self.metrics.problems());
        if self.cassandra.nodes.is_empty() {
            out.push("cassandra.nodes is empty".to_owned());
        }
        for node in &self.cassandra.nodes {
            let port_ok = node
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
            if !port_ok {
                out.push(format!("cassandra.nodes entry {node:?} is not host:port"));
            }
        }
        out
    }
}

#[cfg(test)]
#[allow(
    clippy::result_large_err,
    reason = "figment::Jail closures must return figment::Error by value"
)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn defaults_point_at_the_local_stack() {
        Jail::expect_with(|_| {
            let c = KeelConfig::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.kafka.bootstrap_servers, "127.0.0.1:9092");
            assert_eq!(c.cassandra.nodes, vec!["127.0.0.1:9042".to_owned()]);
            assert_eq!(c.streams.application_id, "keel");
            assert_eq!(c.topics.partitions, 6);
            assert_eq!(c.saga.payment_timeout_ms, 60_000);
            assert_eq!(c.inventory.hold_ttl_ms, 600_000);
            assert_eq!(
                (c.inventory.min_hold_ttl_ms, c.inventory.max_hold_ttl_ms),
                (10_000, 3_600_000)
            );
            assert_eq!(c.api.listen.port(), 8088);
            assert!(c.saga.payment_timeout_ms > c.payment.psp_timeout_ms);
            Ok(())
        });
    }

    #[test]
    fn a_file_then_the_environment_override_the_defaults() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "keel.toml",
                "[kafka]\nbootstrap_servers = \"file:9092\"\n[kafka.client]\n\"acks\" = \"all\"\n",
            )?;
            jail.set_env("KEEL__CONNECT__URL", "http://env:8083");
            let c = KeelConfig::load(Some(Path::new("keel.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.kafka.bootstrap_servers, "file:9092");
            assert_eq!(c.kafka.client.get("acks").map(String::as_str), Some("all"));
            assert_eq!(c.connect.url, "http://env:8083");
            Ok(())
        });
    }

    #[test]
    fn rocksdb_memory_settings_reach_each_roles_state_and_are_validated() {
        Jail::expect_with(|jail| {
            jail.set_env("KEEL__STREAMS__ROCKSDB__WRITE_BUFFER_BYTES", "67108864");
            jail.set_env("KEEL__STREAMS__ROCKSDB__BLOCK_CACHE_BYTES", "134217728");
            let c = KeelConfig::load(None).map_err(|e| e.to_string())?;
            let saga = c.streams_for("saga");
            assert_eq!(saga.state.write_buffer_bytes, 64 << 20);
            assert_eq!(saga.state.block_cache_bytes, 128 << 20);
            assert_eq!(
                saga.state.arena_block_bytes,
                keel_state::StateConfig::default().arena_block_bytes
            );
            jail.set_env("KEEL__STREAMS__ROCKSDB__ARENA_BLOCK_BYTES", "1");
            let err = KeelConfig::load(None)
                .expect_err("an arena block of 1 byte must be refused")
                .to_string();
            assert!(err.contains("streams.rocksdb.arena_block_bytes"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn topics_replication_factor_reaches_the_runtimes_internal_topics_and_is_checked() {
        Jail::expect_with(|jail| {
            jail.set_env("KEEL__TOPICS__REPLICATION_FACTOR", "3");
            let c = KeelConfig::load(None).map_err(|e| e.to_string())?;
            for role in ["saga", "inventory", "reconciliation", "audit"] {
                assert_eq!(c.streams_for(role).replication_factor, 3, "{role}");
            }
            Ok(())
        });
        let problems = load_problems(&[("KEEL__TOPICS__REPLICATION_FACTOR", "0")], None);
        assert_eq!(problems, ["topics.replication_factor must be at least 1"]);
    }

    #[test]
    fn commits_on_drained_input_are_off_by_default_and_checked_against_the_interval() {
        Jail::expect_with(|jail| {
            let c = KeelConfig::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.streams_for("saga").min_commit_interval_ms, None);
            jail.set_env("KEEL__STREAMS__MIN_COMMIT_INTERVAL_MS", "50");
            jail.set_env("KEEL__STREAMS__COMMIT_INTERVAL_MS", "40");
            let err = KeelConfig::load(None)
                .expect_err("a minimum above the interval must be refused")
                .to_string();
            assert!(err.contains("streams.min_commit_interval_ms = 50"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_min_commit_interval_problem_is_reported_once_under_keels_key() {
        Jail::expect_with(|jail| {
            jail.set_env("KEEL__STREAMS__MIN_COMMIT_INTERVAL_MS", "0");
            let err = KeelConfig::load(None)
                .expect_err("a minimum of 0 must be refused")
                .to_string();
            assert!(err.contains("streams.min_commit_interval_ms = 0"), "{err}");
            assert!(err.contains("streams.commit_interval_ms (100)"), "{err}");
            assert_eq!(err.matches("min_commit_interval_ms").count(), 1, "{err}");
            assert_eq!(err.matches("\n  - ").count(), 1, "one problem: {err}");
            Ok(())
        });
    }

    /// The problems `KeelConfig::load` reports for the defaults with `env` set and `file` (if
    /// any) layered in, one per element.
    fn load_problems(env: &[(&str, &str)], file: Option<&str>) -> Vec<String> {
        let mut problems = Vec::new();
        Jail::expect_with(|jail| {
            for (key, value) in env {
                jail.set_env(key, value);
            }
            if let Some(text) = file {
                jail.create_file("keel.toml", text)?;
            }
            let err = KeelConfig::load(file.map(|_| Path::new("keel.toml")))
                .expect_err("an invalid configuration must be refused")
                .to_string();
            let list = err
                .strip_prefix("invalid configuration:\n  - ")
                .unwrap_or_else(|| panic!("a list of problems: {err}"));
            problems = list.split("\n  - ").map(str::to_owned).collect();
            Ok(())
        });
        problems
    }

    #[test]
    fn a_zero_commit_interval_is_reported_once_under_keels_key() {
        let problems = load_problems(&[("KEEL__STREAMS__COMMIT_INTERVAL_MS", "0")], None);
        assert_eq!(
            problems,
            ["streams.commit_interval_ms must be greater than 0"],
            "the runtime's rule, once, under Keel's key"
        );
    }

    #[test]
    fn zero_stream_threads_are_reported_once_under_keels_key() {
        let problems = load_problems(&[("KEEL__STREAMS__NUM_STREAM_THREADS", "0")], None);
        assert_eq!(problems, ["streams.num_stream_threads must be at least 1"]);
    }

    #[test]
    fn application_id_and_state_dir_problems_are_reported_once_under_keels_keys() {
        let problems = load_problems(
            &[
                ("KEEL__STREAMS__APPLICATION_ID", "my shop"),
                ("KEEL__STREAMS__STATE_DIR", ""),
            ],
            None,
        );
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(
            problems[0].starts_with("streams.application_id \"my shop\" must"),
            "{problems:#?}"
        );
        assert_eq!(problems[1], "streams.state_dir must not be empty");
        let problems = load_problems(&[("KEEL__STREAMS__APPLICATION_ID", "")], None);
        assert_eq!(problems, ["streams.application_id is empty"]);
    }

    #[test]
    fn bootstrap_servers_among_the_client_settings_is_refused_naming_keels_key() {
        let problems = load_problems(
            &[],
            Some("[kafka.client]\n\"bootstrap.servers\" = \"127.0.0.1:1\"\n"),
        );
        assert_eq!(
            problems,
            [
                "kafka.client.bootstrap.servers is refused: the brokers are \
                 kafka.bootstrap_servers (a second setting silently won over it)"
            ]
        );
    }

    #[test]
    fn client_settings_the_runtime_owns_are_refused_once_under_keels_keys() {
        let problems = load_problems(
            &[],
            Some(
                "[kafka.client]\n\"group.id\" = \"mine\"\n\"transactional.id\" = \"t\"\n\
                 \"partitioner\" = \"random\"\n\"linger.ms\" = \"20\"\n",
            ),
        );
        assert_eq!(problems.len(), 3, "{problems:#?}");
        for (key, reason) in [
            ("kafka.client.group.id", "is set by the runtime"),
            ("kafka.client.transactional.id", "is set by the runtime"),
            ("kafka.client.partitioner = \"random\"", "murmur2"),
        ] {
            let found: Vec<_> = problems.iter().filter(|p| p.starts_with(key)).collect();
            assert_eq!(found.len(), 1, "{key} once: {problems:#?}");
            assert!(found[0].contains(reason), "{key}: {problems:#?}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        Jail::expect_with(|jail| {
            jail.create_file("keel.toml", "[kafka]\nbootstrap_server = \"typo:9092\"\n")?;
            let err = KeelConfig::load(Some(Path::new("keel.toml")))
                .expect_err("a misspelt key must not be ignored")
                .to_string();
            assert!(err.contains("bootstrap_server"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn validation_reports_every_problem_at_once() {
        Jail::expect_with(|jail| {
            jail.set_env("KEEL__REGISTRY__URL", "ftp://x");
            jail.set_env("KEEL__POSTGRES__URL", "localhost:5432");
            jail.set_env("KEEL__KAFKA__BOOTSTRAP_SERVERS", " ");
            let err = KeelConfig::load(None)
                .expect_err("three problems")
                .to_string();
            assert!(err.contains("registry.url"), "{err}");
            assert!(err.contains("postgres.url"), "{err}");
            assert!(err.contains("kafka.bootstrap_servers"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_carts_retention_defaults_to_7_days_and_must_be_above_0() {
        Jail::expect_with(|jail| {
            let c = KeelConfig::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.carts.retention_ms, 604_800_000);
            jail.set_env("KEEL__CARTS__RETENTION_MS", "0");
            let err = KeelConfig::load(None)
                .expect_err("a retention of 0")
                .to_string();
            assert!(err.contains("carts.retention_ms must be above 0"), "{err}");
            Ok(())
        });
    }
}
