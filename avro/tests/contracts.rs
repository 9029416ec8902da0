//! The contracts without a registry: every typed record matches its `.avsc` (a drifted field
//! fails here), round-trips through Avro binary with that schema, and every schema carries the
//! fields consumers de-duplicate and trace by.

mod common;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::{AvroSchema, Schema};
use keel_avro::{CONTRACTS, Contract, Kind, Record, contract_for_topic};
use serde_json::Value as Json;

/// A schema as JSON without `doc` (prose may differ between Rust docs and the file).
fn shape(schema: &Schema) -> Json {
    fn strip_docs(json: &mut Json) {
        match json {
            Json::Object(map) => {
                map.remove("doc");
                map.values_mut().for_each(strip_docs);
            }
            Json::Array(items) => items.iter_mut().for_each(strip_docs),
            _ => {}
        }
    }
    let mut json = serde_json::to_value(schema).expect("a schema serializes to JSON");
    strip_docs(&mut json);
    json
}

/// The derived schema of `T` equals its `.avsc` in everything but docs.
fn assert_no_drift<T: Record + AvroSchema>() {
    let contract = T::contract();
    let file = contract.schema().expect("the .avsc parses");
    let derived = T::get_schema();
    // Parse the derived schema back so both sides went through the same parser.
    let derived = Schema::parse_str(&serde_json::to_string(&derived).expect("serializes"))
        .expect("the derived schema is valid Avro");
    assert_eq!(
        shape(&derived),
        shape(file),
        "{} has drifted from {}",
        contract.rust_type,
        contract.schema_file
    );
}

/// Each sample survives Avro binary written with the `.avsc` and read back.
fn assert_round_trips<T: Record + PartialEq>(samples: Vec<T>) {
    assert!(!samples.is_empty());
    let schema = T::contract().schema().expect("the .avsc parses");
    let writer = GenericDatumWriter::builder(schema).build().expect("writer");
    let reader = GenericDatumReader::builder(schema).build().expect("reader");
    for sample in samples {
        let bytes = writer
            .write_ser_to_vec(&sample)
            .unwrap_or_else(|e| panic!("{sample:?} does not fit its schema: {e}"));
        let value = reader
            .read_value(&mut bytes.as_slice())
            .expect("the datum reads back");
        assert!(value.validate(schema), "{value:?} does not validate");
        let back: T = apache_avro::from_value(&value).expect("the value deserializes");
        assert_eq!(back, sample);
    }
}

macro_rules! contract_tests {
    ($($name:ident: $ty:ty => $samples:expr;)*) => {$(
        mod $name {
            use super::*;
            #[test]
            fn rust_type_matches_its_avsc() {
                assert_no_drift::<$ty>();
            }
            #[test]
            fn samples_round_trip_through_avro_binary() {
                assert_round_trips::<$ty>($samples);
            }
        }
    )*};
}

contract_tests! {
    order_command: keel_avro::records::OrderCommand => common::order_commands();
    inventory_command: keel_avro::records::InventoryCommand => common::inventory_commands();
    payment_command: keel_avro::records::PaymentCommand => common::payment_commands();
    order_created: keel_avro::records::OrderCreated => common::order_created();
    order_status_changed: keel_avro::records::OrderStatusChanged => common::order_status_changed();
    payment_authorized: keel_avro::records::PaymentAuthorized => common::payment_authorized();
    payment_failed: keel_avro::records::PaymentFailed => common::payment_failed();
    payment_refunded: keel_avro::records::PaymentRefunded => common::payment_refunded();
    inventory_reserved: keel_avro::records::InventoryReserved => common::inventory_reserved();
    inventory_released: keel_avro::records::InventoryReleased => common::inventory_released();
    inventory_adjusted: keel_avro::records::InventoryAdjusted => common::inventory_adjusted();
    order_decision: keel_avro::records::OrderDecision => common::order_decisions();
    cart_checked: keel_avro::records::CartChecked => common::cart_checked();
    reconciliation_mismatch: keel_avro::records::ReconciliationMismatch => common::reconciliation_mismatches();
    audit_violation: keel_avro::records::AuditViolation => common::audit_violations();
}

#[test]
fn the_drift_check_catches_a_changed_field() {
    use keel_avro::records::InventoryAdjusted;
    let file = keel_avro::contract::INVENTORY_ADJUSTED.schema_source;
    for (from, to) in [
        (
            r#""name": "on_hand", "type": "int""#,
            r#""name": "on_hand", "type": "long""#,
        ),
        (
            r#""name": "reason", "type": "string""#,
            r#""name": "why", "type": "string""#,
        ),
        (
            r#""name": "reason", "type": "string""#,
            r#""name": "reason", "type": ["null", "string"], "default": null"#,
        ),
    ] {
        assert!(file.contains(from), "fixture out of date: {from}");
        let drifted = Schema::parse_str(&file.replace(from, to)).expect("still valid Avro");
        assert_ne!(
            shape(&InventoryAdjusted::get_schema()),
            shape(&drifted),
            "changing {from} to {to} must be caught"
        );
    }
}

fn fields(contract: &Contract) -> Vec<(String, Json)> {
    let json: Json = serde_json::from_str(contract.schema_source).expect("the .avsc is JSON");
    json["fields"]
        .as_array()
        .expect("a record has fields")
        .iter()
        .map(|f| {
            (
                f["name"].as_str().expect("a name").to_owned(),
                f["type"].clone(),
            )
        })
        .collect()
}

#[test]
fn every_topic_of_the_design_has_exactly_one_contract() {
    let topics = [
        "orders.commands.v1",
        "inventory.commands.v1",
        "payments.commands.v1",
        "order.created",
        "order.status.changed",
        "payment.authorized.v1",
        "payment.failed.v1",
        "payment.refunded.v1",
        "inventory.reserved.v1",
        "inventory.released.v1",
        "inventory.adjusted.v1",
        "order.decisions.v1",
        "cart.checked.v1",
        "reconciliation.mismatches.v1",
        "audit.violations.v1",
    ];
    assert_eq!(CONTRACTS.len(), topics.len());
    for topic in topics {
        let contract = contract_for_topic(topic).expect("a contract for every topic");
        assert_eq!(contract.subject(""), format!("{topic}-value"));
        assert_eq!(contract.schema_file, format!("{topic}.avsc"));
        let schema = contract.schema().expect("parses");
        let name = schema.name().expect("a named record");
        assert_eq!(name.fullname(None), contract.full_name);
        assert_eq!(contract.subject("t-x-"), format!("t-x-{topic}-value"));
    }
    assert!(contract_for_topic("orders.commands.v2").is_none());
}

#[test]
fn every_record_carries_its_ids_time_causation_and_correlation() {
    let millis = serde_json::json!({"type": "long", "logicalType": "timestamp-millis"});
    for contract in CONTRACTS {
        let fields = fields(contract);
        let (id, at) = match contract.kind {
            Kind::Command => ("command_id", "issued_at"),
            Kind::Event => ("event_id", "occurred_at"),
            Kind::Decision => ("decision_id", "decided_at"),
        };
        let type_of = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.clone())
                .unwrap_or_else(|| panic!("{} has no field {name}", contract.topic))
        };
        assert_eq!(fields[0].0, id, "{}: the id comes first", contract.topic);
        assert_eq!(type_of(id), "string");
        assert_eq!(type_of(at), millis, "{}", contract.topic);
        assert_eq!(type_of("causation_id"), "string");
        assert_eq!(type_of("correlation_id"), "string");
        assert_eq!(type_of(contract.aggregate_field), "string");
        assert_eq!(type_of(contract.key_field), "string");
    }
}

#[test]
fn money_is_minor_units_and_a_currency_everywhere() {
    let mut seen = 0;
    for contract in CONTRACTS {
        let text = contract.schema_source;
        for (at, _) in text.match_indices(r#""name": "Money""#) {
            seen += 1;
            let def = &text[at..];
            let def = &def[..def.find(']').expect("the fields end")];
            assert!(
                def.contains(r#"{"name": "amount_minor", "type": "long"}"#),
                "{}: {def}",
                contract.topic
            );
            assert!(
                def.contains(r#"{"name": "currency", "type": "string""#),
                "{}: {def}",
                contract.topic
            );
        }
        assert!(!text.contains("\"double\"") && !text.contains("\"float\""));
    }
    assert_eq!(
        seen, 8,
        "Money is defined once in each schema that has money"
    );
}

#[test]
fn keys_and_envelopes_read_the_right_fields() {
    let place = &common::order_commands()[0];
    assert_eq!(place.key(), "order-42");
    let envelope = place.envelope();
    assert_eq!(envelope.id, "cmd-1");
    assert_eq!(envelope.aggregate_id, "order-42");
    assert_eq!(envelope.causation_id, "http-req-7");
    assert_eq!(envelope.correlation_id, "order-42");

    let reserve = &common::inventory_commands()[0];
    assert_eq!(reserve.key(), "SKU-RED-MUG");
    assert_eq!(reserve.envelope().correlation_id, "order-42");

    let reserved = &common::inventory_reserved()[0];
    assert_eq!(
        reserved.key(),
        "order-42",
        "the answer lands in the saga's partition"
    );
    assert_eq!(reserved.envelope().aggregate_id, "SKU-RED-MUG");
    assert_eq!(reserved.envelope().id, "evt-6");

    let authorized = &common::payment_authorized()[0];
    assert_eq!(authorized.key(), "order-42");
    assert_eq!(authorized.envelope().aggregate_id, "pay-1");
    assert_eq!(authorized.envelope().at_millis, 1_767_225_600_123);
}
