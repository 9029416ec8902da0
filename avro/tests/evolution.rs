//! Subjects and schema evolution against the real registry: `register_all` sets each subject's
//! level and registers every contract, `check_all` is the deployment gate, compatible changes
//! register and incompatible ones are refused with the subject and the reason, and data written
//! with one version is read with the other wherever the level allows.

mod common;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use keel_avro::records::{OrderStatusChanged, PaymentCommand};
use keel_avro::wire::{self, Frame};
use keel_avro::{
    CONTRACTS, Codec, CompatibilityLevel, Error, Record, RegistryConfig, SchemaRegistry, Verdict,
    any_incompatible, check_all, register_all, render_check_table,
};
use serde_json::{Value as Json, json};

/// `source` (a record's `.avsc`) with `edit` applied to its top-level field list.
fn edit_fields(source: &str, edit: impl FnOnce(&mut Vec<Json>)) -> String {
    let mut json: Json = serde_json::from_str(source).expect("an .avsc is JSON");
    let fields = json["fields"].as_array_mut().expect("a record has fields");
    edit(fields);
    json.to_string()
}

fn with_field(source: &str, field: Json) -> String {
    edit_fields(source, |fields| fields.push(field))
}

fn without_field(source: &str, name: &str) -> String {
    edit_fields(source, |fields| fields.retain(|f| f["name"] != name))
}

#[tokio::test]
async fn register_all_registers_every_contract_with_backward_and_the_check_is_clean()
-> anyhow::Result<()> {
    let config = common::config("register");
    let registry = SchemaRegistry::new(&config)?;

    let before = check_all(&config).await?;
    assert_eq!(before.len(), CONTRACTS.len());
    assert!(
        before.iter().all(|row| row.verdict == Verdict::NewSubject),
        "{before:?}"
    );

    let registered = register_all(&config).await?;
    assert_eq!(registered.len(), CONTRACTS.len());
    for (row, contract) in registered.iter().zip(CONTRACTS) {
        assert_eq!(
            row.subject,
            format!("{}{}-value", config.subject_prefix, contract.topic)
        );
        assert_eq!(row.version, Some(1), "{}", row.subject);
        assert_eq!(
            registry.compatibility(&row.subject).await?,
            Some(CompatibilityLevel::Backward),
            "{}",
            row.subject
        );
    }

    let again = register_all(&config).await?;
    assert_eq!(
        again
            .iter()
            .map(|r| (r.schema_id, r.version))
            .collect::<Vec<_>>(),
        registered
            .iter()
            .map(|r| (r.schema_id, r.version))
            .collect::<Vec<_>>(),
        "registering the same schemas again changes nothing"
    );

    let rows = check_all(&config).await?;
    for row in &rows {
        assert_eq!(row.verdict, Verdict::Compatible, "{row:?}");
        assert_eq!(row.local_version, Some(1));
        assert_eq!(row.latest_version, Some(1));
    }
    assert!(!any_incompatible(&rows));
    let table = render_check_table(&rows);
    assert_eq!(table.lines().count(), 1 + CONTRACTS.len(), "{table}");
    assert!(table.contains(&rows[0].subject), "{table}");
    Ok(())
}

#[tokio::test]
async fn a_new_optional_field_registers_and_a_new_required_field_is_refused() -> anyhow::Result<()>
{
    let config = common::config("evolve");
    register_all(&config).await?;
    let registry = SchemaRegistry::new(&config)?;
    let contract = &keel_avro::contract::ORDER_CREATED;
    let subject = contract.subject(&config.subject_prefix);

    let v2 = with_field(
        contract.schema_source,
        json!({"name": "gift_note", "type": ["null", "string"], "default": null}),
    );
    assert_eq!(
        registry.check(&subject, &v2).await?.verdict,
        Verdict::Compatible
    );
    let registered = registry.register(&subject, &v2).await?;
    assert_eq!(
        registered.version,
        Some(2),
        "the optional field is version 2"
    );

    let v3 = with_field(&v2, json!({"name": "loyalty_tier", "type": "string"}));
    let check = registry.check(&subject, &v3).await?;
    match &check.verdict {
        Verdict::Incompatible(reason) => assert!(reason.contains("loyalty_tier"), "{reason}"),
        other => panic!("a new required field must be incompatible, got {other:?}"),
    }
    let err = registry
        .register(&subject, &v3)
        .await
        .expect_err("the registry refuses a new required field under BACKWARD");
    match &err {
        Error::Incompatible {
            subject: refused,
            reason,
        } => {
            assert_eq!(refused, &subject);
            assert!(reason.contains("loyalty_tier"), "{reason}");
        }
        other => panic!("expected Incompatible, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&subject) && message.contains("loyalty_tier"),
        "{message}"
    );
    assert_eq!(
        registry.latest(&subject).await?.and_then(|l| l.version),
        Some(2),
        "the refused schema was not registered"
    );

    // The local schema (v1) can still read what v2 writes: the gate stays green.
    let rows = check_all(&config).await?;
    let row = rows
        .iter()
        .find(|r| r.subject == subject)
        .expect("a row per subject");
    assert_eq!(row.verdict, Verdict::Compatible);
    assert_eq!((row.local_version, row.latest_version), (Some(1), Some(2)));
    Ok(())
}

#[tokio::test]
async fn the_gate_reports_a_local_schema_the_registry_would_refuse() -> anyhow::Result<()> {
    let config = common::config("gate");
    let registry = SchemaRegistry::new(&config)?;
    let contract = &keel_avro::contract::PAYMENT_AUTHORIZED;
    let subject = contract.subject(&config.subject_prefix);

    // What is registered lacks a field the local schema requires without a default.
    registry
        .set_compatibility(&subject, CompatibilityLevel::Backward)
        .await?;
    registry
        .register(
            &subject,
            &without_field(contract.schema_source, "psp_reference"),
        )
        .await?;

    let rows = check_all(&config).await?;
    assert!(any_incompatible(&rows));
    for row in &rows {
        if row.subject == subject {
            match &row.verdict {
                Verdict::Incompatible(reason) => {
                    assert!(reason.contains("psp_reference"), "{reason}");
                }
                other => panic!("expected Incompatible, got {other:?}"),
            }
            assert_eq!((row.local_version, row.latest_version), (None, Some(1)));
        } else {
            assert_eq!(row.verdict, Verdict::NewSubject, "{row:?}");
        }
    }
    let table = render_check_table(&rows);
    let line = table
        .lines()
        .find(|l| l.starts_with(&subject))
        .expect("the subject's line");
    assert!(
        line.contains("unregistered") && line.contains("INCOMPATIBLE"),
        "{table}"
    );

    let err = register_all(&config)
        .await
        .expect_err("register refuses what check flagged");
    match err {
        Error::Incompatible {
            subject: refused,
            reason,
        } => {
            assert_eq!(refused, subject);
            assert!(reason.contains("psp_reference"), "{reason}");
        }
        other => panic!("expected Incompatible, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn a_removed_field_without_default_is_refused_under_full_but_allowed_by_backward()
-> anyhow::Result<()> {
    let contract = &keel_avro::contract::INVENTORY_ADJUSTED;
    let removed = without_field(contract.schema_source, "on_hand");

    let full = RegistryConfig {
        compatibility: CompatibilityLevel::Full,
        ..common::config("full")
    };
    register_all(&full).await?;
    let registry = SchemaRegistry::new(&full)?;
    let subject = contract.subject(&full.subject_prefix);
    match registry.register(&subject, &removed).await {
        Err(Error::Incompatible {
            subject: refused,
            reason,
        }) => {
            assert_eq!(refused, subject);
            assert!(reason.contains("on_hand"), "{reason}");
        }
        other => panic!("FULL must refuse removing a field without default, got {other:?}"),
    }

    // BACKWARD only asks new readers to read old data, and they can ignore the field.
    let backward = common::config("backward");
    register_all(&backward).await?;
    let registry = SchemaRegistry::new(&backward)?;
    let subject = contract.subject(&backward.subject_prefix);
    let v2 = registry.register(&subject, &removed).await?;
    assert_eq!(v2.version, Some(2));
    Ok(())
}

/// The v1 sample as a v2 value with `note` set.
fn as_v2(v1: &Schema, v2: &Schema, sample: &OrderStatusChanged, note: &str) -> Value {
    let bytes = GenericDatumWriter::builder(v1)
        .build()
        .and_then(|w| w.write_ser_to_vec(sample))
        .expect("v1 writes the sample");
    let value = GenericDatumReader::builder(v1)
        .reader_schema(v2)
        .build()
        .and_then(|r| r.read_value(&mut bytes.as_slice()))
        .expect("v2 reads v1 data");
    let Value::Record(mut fields) = value else {
        panic!("a record")
    };
    for (name, field) in &mut fields {
        if name == "note" {
            *field = Value::Union(1, Box::new(Value::String(note.to_owned())));
        }
    }
    Value::Record(fields)
}

#[tokio::test]
async fn data_written_with_v2_is_read_by_v1_and_v1_data_by_v2() -> anyhow::Result<()> {
    let config = common::config("readers");
    register_all(&config).await?;
    let registry = SchemaRegistry::new(&config)?;
    let codec = Codec::new(config.clone())?;
    let contract = OrderStatusChanged::contract();
    let subject = contract.subject(&config.subject_prefix);
    let v1 = contract.schema()?;
    let v2_text = with_field(
        contract.schema_source,
        json!({"name": "note", "type": ["null", "string"], "default": null}),
    );
    let v2 = Schema::parse_str(&v2_text)?;
    let v2_id = registry.register(&subject, &v2_text).await?.id;
    let sample = common::order_status_changed().remove(1);

    // A v2 producer's record, read by this crate's v1 type: the new field is skipped.
    let datum = GenericDatumWriter::builder(&v2)
        .build()?
        .write_value_to_vec(as_v2(v1, &v2, &sample, "left at the door"))?;
    let from_v2: OrderStatusChanged = codec.decode(&wire::frame(v2_id, &datum)).await?;
    assert_eq!(from_v2, sample);

    // This crate's v1 record, read by a v2 reader: the new field takes its default.
    let bytes = codec.encode(&sample).await?;
    let frame = Frame::parse(&bytes)?;
    assert_ne!(frame.schema_id, v2_id, "written with v1");
    let read = GenericDatumReader::builder(v1)
        .reader_schema(&v2)
        .build()?
        .read_value(&mut &frame.datum[..])?;
    let Value::Record(fields) = read else {
        panic!("a record")
    };
    let note = fields
        .iter()
        .find(|(name, _)| name == "note")
        .map(|(_, v)| v);
    assert_eq!(note, Some(&Value::Union(0, Box::new(Value::Null))));
    Ok(())
}

#[tokio::test]
async fn data_whose_writer_lacks_a_required_field_is_a_schema_mismatch() -> anyhow::Result<()> {
    // No compatibility set on this subject: the registry's default (NONE here) lets it in.
    let config = common::config("mismatch");
    let registry = SchemaRegistry::new(&config)?;
    let codec = Codec::new(config.clone())?;
    let contract = OrderStatusChanged::contract();
    let subject = contract.subject(&config.subject_prefix);
    registry
        .set_compatibility(&subject, CompatibilityLevel::None)
        .await?;
    let old_text = without_field(contract.schema_source, "to_status");
    let old = Schema::parse_str(&old_text)?;
    let old_id = registry.register(&subject, &old_text).await?.id;

    let sample = common::order_status_changed().remove(0);
    let full = GenericDatumWriter::builder(contract.schema()?)
        .build()?
        .write_ser_to_vec(&sample)?;
    let value = GenericDatumReader::builder(contract.schema()?)
        .reader_schema(&old)
        .build()?
        .read_value(&mut full.as_slice())?;
    let datum = GenericDatumWriter::builder(&old)
        .build()?
        .write_value_to_vec(value)?;

    let err = codec
        .decode::<OrderStatusChanged>(&wire::frame(old_id, &datum))
        .await
        .expect_err("the reader needs to_status and the writer has none");
    match &err {
        Error::SchemaMismatch {
            schema_id, detail, ..
        } => {
            assert_eq!(*schema_id, old_id);
            assert!(detail.contains("to_status"), "{detail}");
        }
        other => panic!("expected SchemaMismatch, got {other:?}"),
    }
    assert!(err.to_string().contains(&subject), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_command_written_with_v2_keeps_its_union_branch_for_a_v1_reader() -> anyhow::Result<()> {
    // apache_avro 0.22's own resolution would read this refund as an authorize (the first
    // branch whose fields it can fill); the codec must not.
    let config = common::config("branches");
    register_all(&config).await?;
    let registry = SchemaRegistry::new(&config)?;
    let codec = Codec::new(config.clone())?;
    let contract = PaymentCommand::contract();
    let subject = contract.subject(&config.subject_prefix);
    let v1 = contract.schema()?;
    let v2_text = with_field(
        contract.schema_source,
        json!({"name": "trace", "type": ["null", "string"], "default": null}),
    );
    let v2 = Schema::parse_str(&v2_text)?;
    let v2_id = registry.register(&subject, &v2_text).await?.id;

    for sample in common::payment_commands() {
        let v1_datum = GenericDatumWriter::builder(v1)
            .build()?
            .write_ser_to_vec(&sample)?;
        let Value::Record(mut fields) = GenericDatumReader::builder(v1)
            .build()?
            .read_value(&mut v1_datum.as_slice())?
        else {
            panic!("a record")
        };
        fields.push((
            "trace".to_owned(),
            Value::Union(1, Box::new(Value::String("t-1".to_owned()))),
        ));
        let v2_datum = GenericDatumWriter::builder(&v2)
            .build()?
            .write_value_to_vec(Value::Record(fields))?;
        let read: PaymentCommand = codec.decode(&wire::frame(v2_id, &v2_datum)).await?;
        assert_eq!(read, sample);
    }
    Ok(())
}
