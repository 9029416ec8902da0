//! Typed descriptions of Keel's Debezium source connectors.
//!
//! A description renders to the flat `String → String` map that Kafka Connect stores
//! ([`ConnectorConfig`]); anything not modelled here can still be set with
//! [`ConnectorConfig::set`], the same way rdkafka's `ClientConfig` passes settings through.

use std::collections::BTreeMap;

use serde::Serialize;

/// A connector's name and its complete configuration, ready to PUT to Connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectorConfig {
    name: String,
    settings: BTreeMap<String, String>,
}

impl ConnectorConfig {
    /// An empty configuration for the connector `name` of class `class`.
    pub fn new(name: impl Into<String>, class: &str) -> Self {
        let mut settings = BTreeMap::new();
        settings.insert("connector.class".to_owned(), class.to_owned());
        Self {
            name: name.into(),
            settings,
        }
    }

    /// Set (or replace) one setting.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.insert(key.into(), value.into());
        self
    }

    /// The connector's name on the Connect cluster.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// One setting's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.settings.get(key).map(String::as_str)
    }

    /// Every setting, as Connect stores them.
    pub fn settings(&self) -> &BTreeMap<String, String> {
        &self.settings
    }

    /// Keys as plain strings (`StringConverter`: no JSON quoting, so Kafka's murmur2 partitioner
    /// sees the bare id) and values as Avro in the Confluent wire format through `registry`
    /// (ADR 0006): the [`AVRO_CONVERTER`] registers the schema Debezium derives from the table
    /// under the subject `<topic>-value` (`TopicIdStrategy`, as Keel's own subjects, group
    /// `default`) on first use, the registry's compatibility rule deciding about a changed table
    /// (`BACKWARD`, Keel's global level: an incompatible change fails the task with a 409
    /// instead of writing), and frames each value with magic byte 0 and the schema's 4-byte
    /// **content id** — the id the registry's Confluent API serves at `/schemas/ids/{id}`, so
    /// `keel_avro::Codec` and Confluent clients resolve it. The id goes in the value, never in
    /// headers.
    pub fn with_registry_values(self, registry: &RegistryValues) -> Self {
        const P: &str = "value.converter.apicurio.registry";
        self.set(
            "key.converter",
            "org.apache.kafka.connect.storage.StringConverter",
        )
        .set("value.converter", AVRO_CONVERTER)
        .set(format!("{P}.url"), &registry.url)
        .set(format!("{P}.auto-register"), "true")
        .set(
            format!("{P}.artifact-resolver-strategy"),
            "io.apicurio.registry.serde.strategy.TopicIdStrategy",
        )
        .set(format!("{P}.as-confluent"), "true")
        .set(
            format!("{P}.id-handler"),
            "io.apicurio.registry.serde.Legacy4ByteIdHandler",
        )
        .set(format!("{P}.use-id"), "contentId")
        .set(format!("{P}.headers.enabled"), "false")
    }

    /// Values as schemaless JSON (the row image as a JSON object), keys as strings.
    pub fn with_json_values(self) -> Self {
        self.set(
            "key.converter",
            "org.apache.kafka.connect.json.JsonConverter",
        )
        .set("key.converter.schemas.enable", "false")
        .set(
            "value.converter",
            "org.apache.kafka.connect.json.JsonConverter",
        )
        .set("value.converter.schemas.enable", "false")
    }
}

/// The Kafka Connect converter that writes values as Avro in the Confluent wire format through
/// the schema registry (ADR 0006): Apicurio Registry's converter
/// (`io.apicurio:apicurio-registry-utils-converter`), installed in Connect's `plugin.path` by
/// `stack/servers/connect.sh` and the compose stack's Connect image.
pub const AVRO_CONVERTER: &str = "io.apicurio.registry.utils.converter.AvroConverter";

/// Where the [`AVRO_CONVERTER`] registers and looks up schemas: Apicurio Registry's native API
/// (`…/apis/registry/v2`), the same registry Keel's codec reads through its Confluent API
/// (`…/apis/ccompat/v7`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryValues {
    /// The registry's native v2 API, as Kafka Connect reaches it.
    pub url: String,
}

impl RegistryValues {
    /// From the Confluent-compatible URL Keel's codec uses (`[registry].url`): its
    /// `/apis/ccompat/v7` (or `v6`) becomes `/apis/registry/v2`, the API the converter speaks;
    /// any other URL is taken as the native API already.
    pub fn from_registry_url(url: &str) -> Self {
        let trimmed = url.trim_end_matches('/');
        let base = ["/apis/ccompat/v7", "/apis/ccompat/v6"]
            .iter()
            .find_map(|suffix| trimmed.strip_suffix(suffix));
        Self {
            url: match base {
                Some(base) => format!("{base}/apis/registry/v2"),
                None => trimmed.to_owned(),
            },
        }
    }
}

/// Which binlog connector reads the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MySqlFlavor {
    /// Oracle MySQL 8 (`io.debezium.connector.mysql.MySqlConnector`).
    MySql,
    /// MariaDB (`io.debezium.connector.mariadb.MariaDbConnector`), used by the local stack.
    MariaDb,
}

impl MySqlFlavor {
    fn class(self) -> &'static str {
        match self {
            Self::MySql => "io.debezium.connector.mysql.MySqlConnector",
            Self::MariaDb => "io.debezium.connector.mariadb.MariaDbConnector",
        }
    }
}

/// A binlog source: MySQL or MariaDB tables streamed to `<topic_prefix>.<db>.<table>`.
#[derive(Debug, Clone)]
pub struct MySqlSource {
    pub name: String,
    pub flavor: MySqlFlavor,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    /// Unique among all binlog clients of the server (it poses as a replica).
    pub server_id: u32,
    pub topic_prefix: String,
    pub databases: Vec<String>,
    /// Fully qualified `db.table` names; empty means every table of `databases`.
    pub tables: Vec<String>,
    /// Where the connector keeps its schema history topic.
    pub kafka_bootstrap: String,
    /// `initial` (snapshot then stream), `no_data`, `when_needed`, ...
    pub snapshot_mode: String,
}

impl MySqlSource {
    /// Render to Connect's configuration map.
    pub fn to_config(&self) -> ConnectorConfig {
        let mut c = ConnectorConfig::new(&self.name, self.flavor.class())
            .set("tasks.max", "1")
            .set("database.hostname", &self.host)
            .set("database.port", self.port.to_string())
            .set("database.user", &self.user)
            .set("database.password", &self.password)
            .set("database.server.id", self.server_id.to_string())
            .set("topic.prefix", &self.topic_prefix)
            .set("database.include.list", self.databases.join(","))
            .set("snapshot.mode", &self.snapshot_mode)
            .set("include.schema.changes", "false")
            .set(
                "schema.history.internal.kafka.bootstrap.servers",
                &self.kafka_bootstrap,
            )
            .set(
                "schema.history.internal.kafka.topic",
                format!("{}.schema-history", self.topic_prefix),
            );
        if !self.tables.is_empty() {
            c = c.set("table.include.list", self.tables.join(","));
        }
        c
    }
}

/// How the PostgreSQL connector gets its publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicationMode {
    /// The publication exists already (created by a superuser); the connector only uses it.
    Disabled,
    /// The connector creates a publication for exactly the included tables.
    Filtered,
}

/// A logical-replication source: PostgreSQL tables streamed to `<topic_prefix>.<schema>.<table>`.
#[derive(Debug, Clone)]
pub struct PostgresSource {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
    pub topic_prefix: String,
    /// Fully qualified `schema.table` names.
    pub tables: Vec<String>,
    /// The replication slot; one per connector.
    pub slot_name: String,
    pub publication_name: String,
    pub publication_mode: PublicationMode,
    pub snapshot_mode: String,
}

impl PostgresSource {
    /// Render to Connect's configuration map (pgoutput, no server-side plugin needed).
    pub fn to_config(&self) -> ConnectorConfig {
        let mode = match self.publication_mode {
            PublicationMode::Disabled => "disabled",
            PublicationMode::Filtered => "filtered",
        };
        ConnectorConfig::new(
            &self.name,
            "io.debezium.connector.postgresql.PostgresConnector",
        )
        .set("tasks.max", "1")
        .set("plugin.name", "pgoutput")
        .set("database.hostname", &self.host)
        .set("database.port", self.port.to_string())
        .set("database.user", &self.user)
        .set("database.password", &self.password)
        .set("database.dbname", &self.database)
        .set("topic.prefix", &self.topic_prefix)
        .set("table.include.list", self.tables.join(","))
        .set("slot.name", &self.slot_name)
        .set("publication.name", &self.publication_name)
        .set("publication.autocreate.mode", mode)
        .set("snapshot.mode", &self.snapshot_mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mariadb() -> MySqlSource {
        MySqlSource {
            name: "orders-cdc".into(),
            flavor: MySqlFlavor::MariaDb,
            host: "127.0.0.1".into(),
            port: 3306,
            user: "keel".into(),
            password: "keel".into(),
            server_id: 5401,
            topic_prefix: "keel".into(),
            databases: vec!["keel".into()],
            tables: vec!["keel.orders".into(), "keel.order_outbox".into()],
            kafka_bootstrap: "127.0.0.1:9092".into(),
            snapshot_mode: "initial".into(),
        }
    }

    #[test]
    fn mariadb_source_names_the_mariadb_connector_and_its_history_topic() {
        let c = mariadb().to_config();
        assert_eq!(
            c.get("connector.class"),
            Some("io.debezium.connector.mariadb.MariaDbConnector")
        );
        assert_eq!(
            c.get("schema.history.internal.kafka.topic"),
            Some("keel.schema-history")
        );
        assert_eq!(
            c.get("table.include.list"),
            Some("keel.orders,keel.order_outbox")
        );
        assert_eq!(c.get("database.server.id"), Some("5401"));
    }

    #[test]
    fn mysql_flavor_switches_only_the_class() {
        let maria = mariadb().to_config();
        let mysql = MySqlSource {
            flavor: MySqlFlavor::MySql,
            ..mariadb()
        }
        .to_config();
        assert_eq!(
            mysql.get("connector.class"),
            Some("io.debezium.connector.mysql.MySqlConnector")
        );
        let differing: Vec<_> = maria
            .settings()
            .iter()
            .filter(|(k, v)| mysql.get(k) != Some(v.as_str()))
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(differing, vec!["connector.class"]);
    }

    #[test]
    fn postgres_source_uses_pgoutput_and_the_given_publication_mode() {
        let c = PostgresSource {
            name: "payments-cdc".into(),
            host: "127.0.0.1".into(),
            port: 5432,
            user: "keel".into(),
            password: "keel".into(),
            database: "keel".into(),
            topic_prefix: "keel".into(),
            tables: vec!["public.payment_outbox".into()],
            slot_name: "keel_payments".into(),
            publication_name: "keel_payments".into(),
            publication_mode: PublicationMode::Filtered,
            snapshot_mode: "initial".into(),
        }
        .to_config();
        assert_eq!(c.get("plugin.name"), Some("pgoutput"));
        assert_eq!(c.get("publication.autocreate.mode"), Some("filtered"));
        assert_eq!(c.get("table.include.list"), Some("public.payment_outbox"));
    }

    #[test]
    fn registry_values_are_confluent_framed_avro_with_content_ids_and_plain_string_keys() {
        let registry = RegistryValues::from_registry_url("http://127.0.0.1:8080/apis/ccompat/v7");
        assert_eq!(registry.url, "http://127.0.0.1:8080/apis/registry/v2");
        let c = mariadb().to_config().with_registry_values(&registry);
        assert_eq!(
            c.get("key.converter"),
            Some("org.apache.kafka.connect.storage.StringConverter")
        );
        assert_eq!(c.get("value.converter"), Some(AVRO_CONVERTER));
        let p = |k: &str| c.get(&format!("value.converter.apicurio.registry.{k}"));
        assert_eq!(p("url"), Some("http://127.0.0.1:8080/apis/registry/v2"));
        assert_eq!(p("auto-register"), Some("true"));
        // 4-byte ids (magic 0 + id, Confluent's frame), the id ccompat serves: the content id.
        assert_eq!(
            p("id-handler"),
            Some("io.apicurio.registry.serde.Legacy4ByteIdHandler")
        );
        assert_eq!(p("use-id"), Some("contentId"));
        // In the value, not in headers (the converter's default).
        assert_eq!(p("headers.enabled"), Some("false"));
        assert_eq!(
            p("artifact-resolver-strategy"),
            Some("io.apicurio.registry.serde.strategy.TopicIdStrategy")
        );
        assert_eq!(c.get("value.converter.schemas.enable"), None);
        // Another URL is the native API already.
        assert_eq!(
            RegistryValues::from_registry_url("http://registry:8080/apis/registry/v2/").url,
            "http://registry:8080/apis/registry/v2"
        );
    }

    #[test]
    fn set_overrides_and_json_values_pass_through() {
        let c = mariadb()
            .to_config()
            .with_json_values()
            .set("snapshot.mode", "no_data");
        assert_eq!(c.get("snapshot.mode"), Some("no_data"));
        assert_eq!(c.get("value.converter.schemas.enable"), Some("false"));
    }
}
