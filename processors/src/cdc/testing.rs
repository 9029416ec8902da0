//! Test helpers: Debezium values as the registry converter writes them (Avro, Confluent-framed),
//! with writer schemas registered in [`LocalSchemas`] (what [`CdcValues::Local`] reads, the
//! test driver's stand-in for the registry).
//!
//! The schemas in `fixtures/` are the ones Apicurio's converter registered for Debezium 3.x
//! (MariaDB 3.5.0 for `carts`/`cart_items` through `ExtractNewRecordState`, PostgreSQL 3.6.1
//! for the ledger's envelopes) on the local stack, fetched back through the Confluent API; only
//! the topic prefix in their names was changed.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use apache_avro::Schema;
use apache_avro::types::Value as Avro;
use serde_json::Value as Json;

use super::{LocalSchemas, frame_local};

/// `carts` rows (`ExtractNewRecordState`, `__deleted`).
pub(crate) const CARTS: &str = include_str!("fixtures/carts.avsc");
/// `cart_items` rows (`ExtractNewRecordState`, `__deleted`).
pub(crate) const CART_ITEMS: &str = include_str!("fixtures/cart_items.avsc");
/// The `payments` envelope (`before`, `after`, `source`, `op`, …), `decimal.handling.mode =
/// string`, `TIMESTAMPTZ` as `io.debezium.time.ZonedTimestamp` text.
pub(crate) const PAYMENTS: &str = include_str!("fixtures/payments.avsc");
/// The heartbeat table's envelope.
pub(crate) const HEARTBEAT: &str = include_str!("fixtures/heartbeat.avsc");

/// The local schema id of `schema` (registered once per text).
pub(crate) fn schema_id(schema: &str) -> u32 {
    static IDS: OnceLock<Mutex<HashMap<String, u32>>> = OnceLock::new();
    let mut ids = IDS
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .expect("ids");
    *ids.entry(schema.to_owned()).or_insert_with(|| {
        LocalSchemas::register(Schema::parse_str(schema).expect("a fixture schema parses"))
    })
}

/// `tree` (the value as JSON, as Debezium's `JsonConverter` would have written it) written
/// with `schema` and Confluent-framed. Fields the tree leaves out are filled: NULL where the
/// schema allows it, else the type's zero; so tests name only the columns they are about.
pub(crate) fn avro(schema: &str, tree: Json) -> Vec<u8> {
    let id = schema_id(schema);
    let parsed = LocalSchemas::get(id).expect("registered");
    let mut tree = tree;
    fill(&parsed, &mut tree);
    let value = Avro::try_from(tree)
        .expect("JSON to Avro")
        .resolve(&parsed)
        .expect("the tree fits the schema");
    frame_local(id, value).expect("writes")
}

fn fill(schema: &Schema, tree: &mut Json) {
    match (schema, tree) {
        (Schema::Record(record), Json::Object(map)) => {
            for field in &record.fields {
                match map.get_mut(&field.name) {
                    Some(v) => fill(&field.schema, v),
                    None if field.default.is_some() => {}
                    None => {
                        map.insert(field.name.clone(), zero(&field.schema));
                    }
                }
            }
        }
        (Schema::Union(union), tree @ Json::Object(_)) => {
            if let Some(record) = union
                .variants()
                .iter()
                .find(|v| matches!(v, Schema::Record(_)))
            {
                fill(record, tree);
            }
        }
        _ => {}
    }
}

fn zero(schema: &Schema) -> Json {
    match schema {
        Schema::Union(u) if u.variants().iter().any(|v| matches!(v, Schema::Null)) => Json::Null,
        Schema::Union(u) => u.variants().first().map_or(Json::Null, zero),
        Schema::String | Schema::Enum(_) => Json::String(String::new()),
        Schema::Boolean => Json::Bool(false),
        Schema::Record(_) => {
            let mut tree = Json::Object(serde_json::Map::new());
            fill(schema, &mut tree);
            tree
        }
        _ => Json::from(0),
    }
}
