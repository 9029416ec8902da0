//! The schema registry speaks the Confluent API: schemas register, records round-trip in the
//! Confluent wire format through `schema_registry_converter`, and BACKWARD compatibility refuses
//! an incompatible change while accepting a compatible one.

use apache_avro::types::Value;
use keel_tests::{Stack, unique};
use schema_registry_converter::async_impl::easy_avro::{EasyAvroDecoder, EasyAvroEncoder};
use schema_registry_converter::async_impl::schema_registry::{
    SrSettings, is_compatible_schema, post_schema,
};
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};

const V1: &str = r#"{"type":"record","name":"Greeting","namespace":"keel.test",
  "fields":[{"name":"id","type":"string"},{"name":"count","type":"long"}]}"#;
/// Adds an optional field with a default: readers of v2 can read v1 data (BACKWARD).
const V2_COMPATIBLE: &str = r#"{"type":"record","name":"Greeting","namespace":"keel.test",
  "fields":[{"name":"id","type":"string"},{"name":"count","type":"long"},
            {"name":"note","type":["null","string"],"default":null}]}"#;
/// Adds a required field without a default: v1 data cannot be read with it.
const V2_INCOMPATIBLE: &str = r#"{"type":"record","name":"Greeting","namespace":"keel.test",
  "fields":[{"name":"id","type":"string"},{"name":"count","type":"long"},
            {"name":"region","type":"string"}]}"#;

fn avro(schema: &str) -> SuppliedSchema {
    SuppliedSchema::new(
        Some("keel.test.Greeting".into()),
        SchemaType::Avro,
        schema.into(),
    )
}

async fn set_compatibility(stack: &Stack, subject: &str, level: &str) -> anyhow::Result<()> {
    let resp = reqwest::Client::new()
        .put(format!("{}/config/{subject}", stack.registry_url))
        .header("Content-Type", "application/vnd.schemaregistry.v1+json")
        .json(&serde_json::json!({ "compatibility": level }))
        .send()
        .await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "setting {level} on {subject}: HTTP {}: {}",
        resp.status(),
        resp.text().await.unwrap_or_default()
    );
    Ok(())
}

#[tokio::test]
async fn a_record_round_trips_in_the_confluent_wire_format() -> anyhow::Result<()> {
    let stack = Stack::from_env();
    let topic = unique("sr_roundtrip");
    let settings = SrSettings::new(stack.registry_url.clone());
    let registered = post_schema(&settings, format!("{topic}-value"), avro(V1)).await?;

    let encoder = EasyAvroEncoder::new(settings.clone());
    let strategy = SubjectNameStrategy::TopicNameStrategy(topic.clone(), false);
    let bytes = encoder
        .encode(
            vec![
                ("id", Value::String("order-42".into())),
                ("count", Value::Long(3)),
            ],
            strategy,
        )
        .await?;

    assert_eq!(bytes[0], 0, "Confluent framing starts with magic byte 0");
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    assert_eq!(
        id, registered.id,
        "the frame names the registered schema id"
    );

    let decoded = EasyAvroDecoder::new(settings).decode(Some(&bytes)).await?;
    assert_eq!(
        decoded.value,
        Value::Record(vec![
            ("id".into(), Value::String("order-42".into())),
            ("count".into(), Value::Long(3)),
        ])
    );
    Ok(())
}

#[tokio::test]
async fn backward_compatibility_refuses_a_new_required_field_and_accepts_an_optional_one()
-> anyhow::Result<()> {
    let stack = Stack::from_env();
    let subject = format!("{}-value", unique("sr_compat"));
    let settings = SrSettings::new(stack.registry_url.clone());

    let v1 = post_schema(&settings, subject.clone(), avro(V1)).await?;
    set_compatibility(&stack, &subject, "BACKWARD").await?;

    assert!(
        !is_compatible_schema(&settings, subject.clone(), avro(V2_INCOMPATIBLE)).await?,
        "a new required field must not be BACKWARD compatible"
    );
    let refused = post_schema(&settings, subject.clone(), avro(V2_INCOMPATIBLE)).await;
    assert!(
        refused.is_err(),
        "registering an incompatible schema must be refused, got {refused:?}"
    );

    assert!(is_compatible_schema(&settings, subject.clone(), avro(V2_COMPATIBLE)).await?);
    let v2 = post_schema(&settings, subject.clone(), avro(V2_COMPATIBLE)).await?;
    assert_ne!(v1.id, v2.id, "the compatible evolution is a new schema");
    Ok(())
}
