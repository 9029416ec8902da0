//! The cart service's tables (`carts`, `cart_items`) as the carts processor reads them: one
//! topic per table, `<topic prefix>.<database>.<table>`, each record keyed by the cart id as a
//! plain string and valued by the row itself as Avro in the Confluent wire format through the
//! schema registry (ADR 0006).
//!
//! - keys: `message.key.columns` keys `cart_items` by `cart_id` (its primary key is
//!   `(cart_id, sku)`), `ExtractField$Key` takes the bare id out of the key struct and the
//!   `StringConverter` writes it without JSON quoting, so Kafka's murmur2 partitioner puts a
//!   cart's rows on the partition Keel's own producers use for that cart id;
//! - values: `ExtractNewRecordState` unwraps the envelope to the row; a delete becomes the
//!   deleted row with `"__deleted": "true"` (`delete.tombstone.handling.mode = rewrite`) rather
//!   than a tombstone, because a `cart_items` key (the cart id) alone would not say which item
//!   went; `__deleted` is a nullable string field of the row's Avro record;
//! - value format: [`ConnectorConfig::with_registry_values`] — Apicurio's registry converter,
//!   subject `<topic>-value`, schema Debezium's (a record `<topic>.Value` of the table's
//!   columns: `VARCHAR` → string, `INT` → int, `BIGINT` → long, `DATETIME(3)` →
//!   `io.debezium.time.Timestamp`, a long of ms), 4-byte content ids (ADR 0006);
//! - `snapshot.mode = initial`: carts that existed before the connector arrive too.

use crate::config::{ConnectorConfig, MySqlSource, RegistryValues};

/// The connector streaming `<database>.carts` and `<database>.cart_items` of `source` (whose
/// `databases`/`tables` are replaced) to `<source.topic_prefix>.<database>.carts|cart_items`,
/// values through the registry converter of `registry`.
pub fn cart_tables(
    source: &MySqlSource,
    database: &str,
    registry: &RegistryValues,
) -> ConnectorConfig {
    let source = MySqlSource {
        databases: vec![database.to_owned()],
        tables: vec![
            format!("{database}.carts"),
            format!("{database}.cart_items"),
        ],
        snapshot_mode: "initial".to_owned(),
        ..source.clone()
    };
    source
        .to_config()
        .with_registry_values(registry)
        .set(
            "message.key.columns",
            format!("{database}.carts:cart_id;{database}.cart_items:cart_id"),
        )
        .set("tombstones.on.delete", "false")
        .set("transforms", "unwrap,cartId")
        .set(
            "transforms.unwrap.type",
            "io.debezium.transforms.ExtractNewRecordState",
        )
        .set(
            "transforms.unwrap.delete.tombstone.handling.mode",
            "rewrite",
        )
        .set(
            "transforms.cartId.type",
            "org.apache.kafka.connect.transforms.ExtractField$Key",
        )
        .set("transforms.cartId.field", "cart_id")
}

/// The two topics [`cart_tables`] writes: `(carts, cart_items)`.
pub fn cart_topics(topic_prefix: &str, database: &str) -> (String, String) {
    (
        format!("{topic_prefix}.{database}.carts"),
        format!("{topic_prefix}.{database}.cart_items"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MySqlFlavor;

    #[test]
    fn cart_rows_are_keyed_by_cart_id_as_plain_strings_unwrapped_and_avro_through_the_registry() {
        let source = MySqlSource {
            name: "keel-carts-cdc".into(),
            flavor: MySqlFlavor::MariaDb,
            host: "127.0.0.1".into(),
            port: 3306,
            user: "keel".into(),
            password: "keel".into(),
            server_id: 5402,
            topic_prefix: "cdc".into(),
            databases: vec![],
            tables: vec![],
            kafka_bootstrap: "127.0.0.1:9092".into(),
            snapshot_mode: "no_data".into(),
        };
        let c = cart_tables(
            &source,
            "keel",
            &RegistryValues::from_registry_url("http://127.0.0.1:8080/apis/ccompat/v7"),
        );
        assert_eq!(
            c.get("table.include.list"),
            Some("keel.carts,keel.cart_items")
        );
        assert_eq!(
            c.get("message.key.columns"),
            Some("keel.carts:cart_id;keel.cart_items:cart_id")
        );
        assert_eq!(
            c.get("key.converter"),
            Some("org.apache.kafka.connect.storage.StringConverter")
        );
        assert_eq!(c.get("value.converter"), Some(crate::AVRO_CONVERTER));
        assert_eq!(
            c.get("value.converter.apicurio.registry.url"),
            Some("http://127.0.0.1:8080/apis/registry/v2")
        );
        assert_eq!(c.get("transforms.cartId.field"), Some("cart_id"));
        assert_eq!(c.get("snapshot.mode"), Some("initial"));
        assert_eq!(
            cart_topics("cdc", "keel"),
            ("cdc.keel.carts".into(), "cdc.keel.cart_items".into())
        );
    }
}
