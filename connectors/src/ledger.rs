//! The payment ledger's `payments` table as the reconciliation processor reads it: plain CDC of
//! the table itself (not the outbox), keyed by the **order id** so a payment's changes land in
//! the partition of the saga's decisions for that order (`order.decisions.v1`, key order id).
//!
//! - topics: `<topic prefix>.<schema>.payments` and `<topic prefix>.<schema>.<heartbeat table>`;
//!   both must be created with the decisions topic's partition count before the connector first
//!   writes (the reconciliation task reads all three together);
//! - keys: `message.key.columns` keys `payments` by `order_id` (unique in the table) and the
//!   heartbeat table by `connector`; two `ExtractField$Key` transforms — each limited by a
//!   `TopicNameMatches` predicate to its table's topic — take the bare value out of the key
//!   struct, and the `StringConverter` writes it without JSON quoting, so Kafka's murmur2
//!   partitioner puts it where Keel's own producers put that order id;
//! - values: **the Debezium envelope is kept** (`before`, `after`, `op`, `source` with `ts_ms`
//!   and `lsn`), as Avro in the Confluent wire format through the registry converter
//!   ([`ConnectorConfig::with_registry_values`], ADR 0006; subject `<topic>-value`, Debezium's
//!   envelope schema `<topic>.Envelope`). The consumer needs `op` (to tell a snapshot read from a change), `source.ts_ms` (for
//!   the CDC lag) and `source.lsn` (to drop the duplicates Debezium's at-least-once delivery
//!   makes across restarts), which an unwrapped row would lose; decoded by
//!   `keel_processors::cdc`. Deletes are followed by a tombstone (the consumer skips it);
//! - types: `decimal.handling.mode = string` (a `NUMERIC` arrives as its exact decimal text, an
//!   Avro `string`, never a float or Avro `bytes` with a `decimal` logical type), timestamps
//!   stay Debezium's (`time.precision.mode` left at `adaptive`: `TIMESTAMPTZ` is
//!   `io.debezium.time.ZonedTimestamp`, an ISO-8601 Avro `string`; `TIMESTAMP` is
//!   `io.debezium.time.MicroTimestamp`, an Avro `long` of µs since the epoch);
//! - heartbeats: every `heartbeat.interval.ms` the connector runs `heartbeat.action.query`, an
//!   upsert into the heartbeat table, which is in the publication: its change travels through the
//!   WAL behind every earlier change, so (1) the slot's confirmed position advances while the
//!   ledger is idle (no WAL is held back) and (2) the consumer sees a source commit time that is
//!   recent exactly when the connector has caught up — what keeps `keel_cdc_lag_seconds` honest
//!   on an idle ledger;
//! - its own publication (`publication.autocreate.mode = filtered`: exactly these two tables)
//!   and its own replication slot; `snapshot.mode = initial`, so payments that existed before
//!   the connector arrive as snapshot reads (`op = r`).
//!
//! The heartbeat table (see [`heartbeat_table_ddl`]) must exist before the connector starts;
//! `keel run --roles reconciliation` creates it.

use crate::config::{ConnectorConfig, PostgresSource, PublicationMode, RegistryValues};

/// Default name of the table the heartbeat query writes.
pub const HEARTBEAT_TABLE: &str = "keel_cdc_heartbeat";

/// What [`ledger_tables`] needs beyond the PostgreSQL source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerCdc {
    /// The schema of `payments` and of the heartbeat table (usually `public`).
    pub schema: String,
    /// The heartbeat table's name ([`HEARTBEAT_TABLE`] unless tests pick another).
    pub heartbeat_table: String,
    /// How often the connector writes a heartbeat (ms).
    pub heartbeat_interval_ms: u64,
}

impl Default for LedgerCdc {
    fn default() -> Self {
        Self {
            schema: "public".to_owned(),
            heartbeat_table: HEARTBEAT_TABLE.to_owned(),
            heartbeat_interval_ms: 10_000,
        }
    }
}

/// The SQL that creates the heartbeat table `<schema>.<table>` if missing: one row per
/// connector (`connector` TEXT primary key, `beat_at` TIMESTAMPTZ).
pub fn heartbeat_table_ddl(schema: &str, table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {schema}.{table} (connector TEXT PRIMARY KEY, \
         beat_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
}

/// A Java regex matching exactly `topic` (Kafka topic names only hold `[a-zA-Z0-9._-]`).
fn exact(topic: &str) -> String {
    topic.replace('.', "\\.")
}

/// The connector streaming `<schema>.payments` and the heartbeat table of `source`'s database
/// (its `tables` and `snapshot_mode` are replaced) to [`ledger_topics`], values through the
/// registry converter of `registry`.
pub fn ledger_tables(
    source: &PostgresSource,
    cdc: &LedgerCdc,
    registry: &RegistryValues,
) -> ConnectorConfig {
    let schema = &cdc.schema;
    let beat = &cdc.heartbeat_table;
    let source = PostgresSource {
        tables: vec![format!("{schema}.payments"), format!("{schema}.{beat}")],
        publication_mode: PublicationMode::Filtered,
        snapshot_mode: "initial".to_owned(),
        ..source.clone()
    };
    let (payments, heartbeats) = ledger_topics(&source.topic_prefix, schema, beat);
    // The connector's name is a plain identifier (Connect refuses quotes in names anyway);
    // the query is the connector's own, never user input.
    let name = source.name.replace('\'', "");
    source
        .to_config()
        .with_registry_values(registry)
        .set(
            "message.key.columns",
            format!("{schema}.payments:order_id;{schema}.{beat}:connector"),
        )
        .set("decimal.handling.mode", "string")
        .set(
            "heartbeat.interval.ms",
            cdc.heartbeat_interval_ms.to_string(),
        )
        .set(
            "heartbeat.action.query",
            format!(
                "INSERT INTO {schema}.{beat} (connector, beat_at) VALUES ('{name}', now()) \
                 ON CONFLICT (connector) DO UPDATE SET beat_at = EXCLUDED.beat_at"
            ),
        )
        .set("transforms", "orderId,beatKey")
        .set(
            "transforms.orderId.type",
            "org.apache.kafka.connect.transforms.ExtractField$Key",
        )
        .set("transforms.orderId.field", "order_id")
        .set("transforms.orderId.predicate", "isPayments")
        .set(
            "transforms.beatKey.type",
            "org.apache.kafka.connect.transforms.ExtractField$Key",
        )
        .set("transforms.beatKey.field", "connector")
        .set("transforms.beatKey.predicate", "isHeartbeat")
        .set("predicates", "isPayments,isHeartbeat")
        .set(
            "predicates.isPayments.type",
            "org.apache.kafka.connect.transforms.predicates.TopicNameMatches",
        )
        .set("predicates.isPayments.pattern", exact(&payments))
        .set(
            "predicates.isHeartbeat.type",
            "org.apache.kafka.connect.transforms.predicates.TopicNameMatches",
        )
        .set("predicates.isHeartbeat.pattern", exact(&heartbeats))
}

/// The two topics [`ledger_tables`] writes: `(payments, heartbeats)`.
pub fn ledger_topics(topic_prefix: &str, schema: &str, heartbeat_table: &str) -> (String, String) {
    (
        format!("{topic_prefix}.{schema}.payments"),
        format!("{topic_prefix}.{schema}.{heartbeat_table}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> PostgresSource {
        PostgresSource {
            name: "keel-ledger-cdc".into(),
            host: "127.0.0.1".into(),
            port: 5432,
            user: "keel".into(),
            password: "keel".into(),
            database: "keel".into(),
            topic_prefix: "ledger".into(),
            tables: vec![],
            slot_name: "keel_ledger".into(),
            publication_name: "keel_ledger".into(),
            publication_mode: PublicationMode::Disabled,
            snapshot_mode: "no_data".into(),
        }
    }

    fn registry() -> RegistryValues {
        RegistryValues::from_registry_url("http://127.0.0.1:8080/apis/ccompat/v7")
    }

    #[test]
    fn payments_are_keyed_by_order_id_as_plain_strings_and_keep_the_envelope() {
        let c = ledger_tables(&source(), &LedgerCdc::default(), &registry());
        assert_eq!(c.get("value.converter"), Some(crate::AVRO_CONVERTER));
        assert_eq!(
            c.get("table.include.list"),
            Some("public.payments,public.keel_cdc_heartbeat")
        );
        assert_eq!(
            c.get("message.key.columns"),
            Some("public.payments:order_id;public.keel_cdc_heartbeat:connector")
        );
        assert_eq!(
            c.get("key.converter"),
            Some("org.apache.kafka.connect.storage.StringConverter")
        );
        assert_eq!(c.get("transforms.orderId.field"), Some("order_id"));
        assert_eq!(
            c.get("predicates.isPayments.pattern"),
            Some("ledger\\.public\\.payments")
        );
        // The envelope is kept: no ExtractNewRecordState anywhere.
        assert!(
            c.settings()
                .values()
                .all(|v| !v.contains("ExtractNewRecordState")),
            "{c:?}"
        );
        assert_eq!(c.get("snapshot.mode"), Some("initial"));
        assert_eq!(c.get("publication.autocreate.mode"), Some("filtered"));
        assert_eq!(c.get("slot.name"), Some("keel_ledger"));
        assert_eq!(c.get("decimal.handling.mode"), Some("string"));
    }

    #[test]
    fn the_heartbeat_query_upserts_this_connectors_row_in_the_captured_table() {
        let cdc = LedgerCdc {
            heartbeat_interval_ms: 1_000,
            ..LedgerCdc::default()
        };
        let c = ledger_tables(&source(), &cdc, &registry());
        assert_eq!(c.get("heartbeat.interval.ms"), Some("1000"));
        let query = c.get("heartbeat.action.query").expect("a heartbeat query");
        assert!(
            query.starts_with("INSERT INTO public.keel_cdc_heartbeat"),
            "{query}"
        );
        assert!(query.contains("'keel-ledger-cdc'"), "{query}");
        assert!(query.contains("ON CONFLICT (connector)"), "{query}");
        assert_eq!(
            ledger_topics("ledger", "public", HEARTBEAT_TABLE),
            (
                "ledger.public.payments".into(),
                "ledger.public.keel_cdc_heartbeat".into()
            )
        );
        assert!(heartbeat_table_ddl("public", HEARTBEAT_TABLE).contains("IF NOT EXISTS"));
    }
}
