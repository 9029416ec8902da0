//! The outbox connectors: Debezium streams `order_outbox` (MariaDB) and `payment_outbox`
//! (PostgreSQL) through its outbox event router to Keel's public event topics, in place of the
//! relay (`[outbox].mode = "debezium"`, `docs/adr/0003-outbox-through-debezium.md`).
//!
//! Every outbox row becomes one record, byte for byte what the relay would have produced:
//! - topic = the row's `event_type` (already the full, prefixed topic name:
//!   `route.topic.replacement = ${routedByValue}`);
//! - key = `aggregate_id` (the order id) through the `StringConverter`: plain UTF-8, no JSON
//!   quoting, so Kafka's murmur2 partitioner puts it on the partition Keel's producers use;
//! - value = `payload`, already Confluent-framed Avro, passed through untouched by the
//!   `ByteArrayConverter`;
//! - header `keel.event.id` = the row's `id` (`table.fields.additional.placement`), written by
//!   Connect's `SimpleHeaderConverter` as the UTF-8 bytes of the string, like the relay's.
//!
//! Only inserts and snapshot reads are events: `skipped.operations = u,d,t` drops the relay's
//! `status` updates and the clean-up's deletes at the source. The snapshot
//! (`snapshot.mode = initial`, only when the connector has no offsets yet) reads the `PENDING`
//! rows only: rows the relay marked `SENT` are on Kafka already. Heartbeat records (PostgreSQL)
//! are dropped by a `Filter` before the converters (their offsets are still committed, which is
//! what moves the replication slot).

use crate::config::{ConnectorConfig, MySqlSource, PostgresSource, PublicationMode};

/// The Kafka header carrying the outbox row's id (the event id); the relay's too.
pub const EVENT_ID_HEADER: &str = "keel.event.id";

/// The table the PostgreSQL connector's heartbeat query writes (one row per slot), part of the
/// connector's publication so that idle periods still confirm an LSN and free WAL.
pub const HEARTBEAT_TABLE: &str = "keel_outbox_heartbeat";

/// The MariaDB outbox table.
pub const ORDER_OUTBOX: &str = "order_outbox";

/// The PostgreSQL outbox table.
pub const PAYMENT_OUTBOX: &str = "payment_outbox";

/// The settings every outbox connector shares: converters, the event router, skipped
/// operations. `table` is the fully qualified captured table (`db.table` / `schema.table`).
fn with_event_router(config: ConnectorConfig, table: &str) -> ConnectorConfig {
    config
        .set(
            "key.converter",
            "org.apache.kafka.connect.storage.StringConverter",
        )
        .set(
            "value.converter",
            "org.apache.kafka.connect.converters.ByteArrayConverter",
        )
        .set(
            "header.converter",
            "org.apache.kafka.connect.storage.SimpleHeaderConverter",
        )
        .set("skipped.operations", "u,d,t")
        .set("tombstones.on.delete", "false")
        // No `__debezium.context.*` headers: the records carry what the relay's carry.
        .set("extended.headers.enabled", "false")
        .set("snapshot.select.statement.overrides", table)
        .set(
            format!("snapshot.select.statement.overrides.{table}"),
            format!("SELECT * FROM {table} WHERE status = 'PENDING'"),
        )
        .set("transforms", "dropHeartbeats,outbox")
        .set(
            "transforms.dropHeartbeats.type",
            "org.apache.kafka.connect.transforms.Filter",
        )
        .set("transforms.dropHeartbeats.predicate", "isHeartbeat")
        .set("predicates", "isHeartbeat")
        .set(
            "predicates.isHeartbeat.type",
            "org.apache.kafka.connect.transforms.predicates.TopicNameMatches",
        )
        .set(
            "predicates.isHeartbeat.pattern",
            "__debezium-heartbeat\\..*",
        )
        .set(
            "transforms.outbox.type",
            "io.debezium.transforms.outbox.EventRouter",
        )
        .set("transforms.outbox.table.field.event.id", "id")
        .set("transforms.outbox.table.field.event.key", "aggregate_id")
        .set("transforms.outbox.table.field.event.payload", "payload")
        .set("transforms.outbox.route.by.field", "event_type")
        .set(
            "transforms.outbox.route.topic.replacement",
            "${routedByValue}",
        )
        .set(
            "transforms.outbox.table.fields.additional.placement",
            format!("id:header:{EVENT_ID_HEADER}"),
        )
        .set("transforms.outbox.table.expand.json.payload", "false")
}

/// The connector of `<database>.order_outbox` on `source` (a MariaDB/MySQL source whose
/// `databases`, `tables` and `snapshot_mode` are replaced). Its schema history topic is
/// [`schema_history_topic`]; create it first ([`SchemaHistoryTopic`]).
pub fn order_outbox(source: &MySqlSource, database: &str) -> ConnectorConfig {
    let table = format!("{database}.{ORDER_OUTBOX}");
    let source = MySqlSource {
        databases: vec![database.to_owned()],
        tables: vec![table.clone()],
        snapshot_mode: "initial".to_owned(),
        ..source.clone()
    };
    with_event_router(source.to_config(), &table)
        // Only the captured table's DDL in the history: it stays small and replays fast.
        .set(
            "schema.history.internal.store.only.captured.tables.ddl",
            "true",
        )
        .set(
            "schema.history.internal.store.only.captured.databases.ddl",
            "true",
        )
}

/// The PostgreSQL outbox connector's own settings beyond the source's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgHeartbeat {
    /// How often the connector runs [`heartbeat_query`] and confirms its position (ms).
    pub interval_ms: u64,
}

/// The connector of `public.payment_outbox` on `source` (whose `tables`, `snapshot_mode` and
/// `publication_mode` are replaced). The publication `source.publication_name` must exist and
/// hold the outbox and the heartbeat table ([`publication_statements`]); the connector does not
/// create it (`publication.autocreate.mode = disabled`), so the heartbeat table is in it.
pub fn payment_outbox(source: &PostgresSource, heartbeat: &PgHeartbeat) -> ConnectorConfig {
    let table = format!("public.{PAYMENT_OUTBOX}");
    let source = PostgresSource {
        tables: vec![table.clone()],
        snapshot_mode: "initial".to_owned(),
        publication_mode: PublicationMode::Disabled,
        ..source.clone()
    };
    with_event_router(source.to_config(), &table)
        .set("heartbeat.interval.ms", heartbeat.interval_ms.to_string())
        .set("heartbeat.action.query", heartbeat_query(&source.slot_name))
        // The slot is Keel's to keep: it survives a connector stop, `keel connectors delete`
        // drops it.
        .set("slot.drop.on.stop", "false")
}

/// The heartbeat statement of the slot `slot`: an upsert of its row in [`HEARTBEAT_TABLE`].
pub fn heartbeat_query(slot: &str) -> String {
    format!(
        "INSERT INTO {HEARTBEAT_TABLE} (slot_name, beat_at) VALUES ('{slot}', now()) \
         ON CONFLICT (slot_name) DO UPDATE SET beat_at = EXCLUDED.beat_at"
    )
}

/// The statements (idempotent) that prepare the PostgreSQL database for the connector: the
/// heartbeat table, and the publication `publication` of the outbox and heartbeat tables. An
/// existing publication is left as it is (`publication_exists`): recreating it would not be
/// seen by a slot that already streams it.
pub fn publication_statements(publication: &str, publication_exists: bool) -> Vec<String> {
    let mut out = vec![format!(
        "CREATE TABLE IF NOT EXISTS {HEARTBEAT_TABLE} (slot_name TEXT PRIMARY KEY, \
         beat_at TIMESTAMPTZ NOT NULL)"
    )];
    if !publication_exists {
        out.push(format!(
            "CREATE PUBLICATION {publication} FOR TABLE public.{PAYMENT_OUTBOX}, \
             public.{HEARTBEAT_TABLE}"
        ));
    }
    out
}

/// Whether `name` is usable as a PostgreSQL replication slot or publication name: 1 to 63
/// lower-case letters, digits and underscores (a slot name allows nothing else).
pub fn valid_slot_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// `name` made into a valid slot name: lower-cased, every other character an underscore,
/// cut to 63 characters.
pub fn slot_name_from(name: &str) -> String {
    name.chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect()
}

/// A stable MariaDB replica id for the connector `name` (FNV-1a), away from small hand-picked
/// ids: the same name always poses as the same replica.
pub fn stable_server_id(name: &str) -> u32 {
    let hash = name.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    100_000 + hash % 1_000_000_000
}

/// The schema history topic a binlog connector needs before it starts: one partition (the
/// history is one ordered log), `cleanup.policy = delete` with unlimited retention (never
/// compaction: every DDL record is needed to replay the schema at a binlog position).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaHistoryTopic {
    pub name: String,
}

impl SchemaHistoryTopic {
    /// The history topic `config` writes, if it is a binlog connector.
    pub fn of(config: &ConnectorConfig) -> Option<Self> {
        config
            .get("schema.history.internal.kafka.topic")
            .map(|name| Self {
                name: name.to_owned(),
            })
    }

    pub const PARTITIONS: i32 = 1;

    /// The topic settings: `(key, value)`.
    pub fn settings() -> [(&'static str, &'static str); 3] {
        [
            ("cleanup.policy", "delete"),
            ("retention.ms", "-1"),
            ("retention.bytes", "-1"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MySqlFlavor;

    fn maria() -> MySqlSource {
        MySqlSource {
            name: "keel-order-outbox".into(),
            flavor: MySqlFlavor::MariaDb,
            host: "127.0.0.1".into(),
            port: 3306,
            user: "keel".into(),
            password: "keel".into(),
            server_id: stable_server_id("keel-order-outbox"),
            topic_prefix: "outbox.orders".into(),
            databases: vec![],
            tables: vec![],
            kafka_bootstrap: "127.0.0.1:9092".into(),
            snapshot_mode: "no_data".into(),
        }
    }

    fn pg() -> PostgresSource {
        PostgresSource {
            name: "keel-payment-outbox".into(),
            host: "127.0.0.1".into(),
            port: 5432,
            user: "keel".into(),
            password: "keel".into(),
            database: "keel".into(),
            topic_prefix: "outbox.payments".into(),
            tables: vec![],
            slot_name: "keel_payment_outbox".into(),
            publication_name: "keel_payment_outbox".into(),
            publication_mode: PublicationMode::Filtered,
            snapshot_mode: "no_data".into(),
        }
    }

    #[test]
    fn order_outbox_routes_rows_by_event_type_with_the_id_header_and_raw_bytes() {
        let c = order_outbox(&maria(), "shop");
        assert_eq!(
            c.get("connector.class"),
            Some("io.debezium.connector.mariadb.MariaDbConnector")
        );
        assert_eq!(c.get("table.include.list"), Some("shop.order_outbox"));
        assert_eq!(c.get("database.include.list"), Some("shop"));
        assert_eq!(
            c.get("transforms.outbox.route.by.field"),
            Some("event_type")
        );
        assert_eq!(
            c.get("transforms.outbox.route.topic.replacement"),
            Some("${routedByValue}"),
            "event_type is the whole topic name already"
        );
        assert_eq!(
            c.get("transforms.outbox.table.field.event.key"),
            Some("aggregate_id")
        );
        assert_eq!(
            c.get("transforms.outbox.table.fields.additional.placement"),
            Some("id:header:keel.event.id")
        );
        assert_eq!(
            c.get("value.converter"),
            Some("org.apache.kafka.connect.converters.ByteArrayConverter")
        );
        assert_eq!(
            c.get("key.converter"),
            Some("org.apache.kafka.connect.storage.StringConverter")
        );
        assert_eq!(c.get("skipped.operations"), Some("u,d,t"));
    }

    #[test]
    fn snapshots_start_from_scratch_only_and_read_only_unsent_rows() {
        for (c, table) in [
            (order_outbox(&maria(), "shop"), "shop.order_outbox"),
            (
                payment_outbox(&pg(), &PgHeartbeat { interval_ms: 5000 }),
                "public.payment_outbox",
            ),
        ] {
            // `initial`: a snapshot only when the connector has no offsets; a purged binlog
            // position or a lost slot fails the task instead of re-snapshotting
            // (tests/cli/binlog_gap.rs: the binlog case, against a real MariaDB).
            assert_eq!(c.get("snapshot.mode"), Some("initial"));
            assert_eq!(c.get("snapshot.select.statement.overrides"), Some(table));
            assert_eq!(
                c.get(&format!("snapshot.select.statement.overrides.{table}")),
                Some(format!("SELECT * FROM {table} WHERE status = 'PENDING'").as_str())
            );
        }
    }

    #[test]
    fn order_outbox_history_topic_is_its_own() {
        let c = order_outbox(&maria(), "shop");
        assert_eq!(
            SchemaHistoryTopic::of(&c),
            Some(SchemaHistoryTopic {
                name: "outbox.orders.schema-history".into()
            })
        );
        assert_eq!(SchemaHistoryTopic::PARTITIONS, 1);
        assert!(SchemaHistoryTopic::settings().contains(&("cleanup.policy", "delete")));
        assert!(SchemaHistoryTopic::settings().contains(&("retention.ms", "-1")));
    }

    #[test]
    fn payment_outbox_uses_its_own_publication_slot_and_heartbeat() {
        let c = payment_outbox(&pg(), &PgHeartbeat { interval_ms: 5000 });
        assert_eq!(
            c.get("connector.class"),
            Some("io.debezium.connector.postgresql.PostgresConnector")
        );
        assert_eq!(c.get("plugin.name"), Some("pgoutput"));
        assert_eq!(c.get("table.include.list"), Some("public.payment_outbox"));
        assert_eq!(c.get("slot.name"), Some("keel_payment_outbox"));
        assert_eq!(c.get("publication.autocreate.mode"), Some("disabled"));
        assert_eq!(c.get("slot.drop.on.stop"), Some("false"));
        assert_eq!(c.get("heartbeat.interval.ms"), Some("5000"));
        let query = c.get("heartbeat.action.query").expect("a heartbeat query");
        assert!(query.contains("keel_outbox_heartbeat"), "{query}");
        assert!(query.contains("'keel_payment_outbox'"), "{query}");
        assert_eq!(
            c.get("predicates.isHeartbeat.pattern"),
            Some("__debezium-heartbeat\\..*"),
            "heartbeat records never reach the byte-array converter"
        );
        assert_eq!(c.get("transforms"), Some("dropHeartbeats,outbox"));
    }

    #[test]
    fn the_publication_holds_the_outbox_and_the_heartbeat_table() {
        let fresh = publication_statements("keel_payment_outbox", false);
        assert_eq!(fresh.len(), 2);
        assert!(fresh[0].starts_with("CREATE TABLE IF NOT EXISTS keel_outbox_heartbeat"));
        assert_eq!(
            fresh[1],
            "CREATE PUBLICATION keel_payment_outbox FOR TABLE public.payment_outbox, \
             public.keel_outbox_heartbeat"
        );
        assert_eq!(publication_statements("keel_payment_outbox", true).len(), 1);
    }

    #[test]
    fn slot_names_are_made_valid() {
        assert_eq!(slot_name_from("Keel-e2e.1_payment"), "keel_e2e_1_payment");
        assert!(valid_slot_name(&slot_name_from(&"x".repeat(100))));
        assert!(!valid_slot_name("bad-name"));
        assert!(!valid_slot_name(""));
        assert_eq!(stable_server_id("a"), stable_server_id("a"));
        assert_ne!(stable_server_id("a"), stable_server_id("b"));
    }
}
