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
    fn set_overrides_and_json_values_pass_through() {
        let c = mariadb()
            .to_config()
            .with_json_values()
            .set("snapshot.mode", "no_data");
        assert_eq!(c.get("snapshot.mode"), Some("no_data"));
        assert_eq!(c.get("value.converter.schemas.enable"), Some("false"));
    }
}
