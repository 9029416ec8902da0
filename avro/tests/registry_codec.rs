//! The codec against the real registry: every record type round-trips in the Confluent wire
//! format, auto-registration can be turned off, and bytes that cannot be read give a typed error
//! that names the subject, the schema id and what failed.

mod common;

use std::collections::HashSet;

use keel_avro::records::{OrderCreated, OrderStatusChanged, PaymentAuthorized};
use keel_avro::wire::{self, Frame};
use keel_avro::{
    Codec, Error, Fault, FramingError, Record, RegistryConfig, SchemaRegistry, register_all,
};

/// Encode and decode every sample; all of a type's samples share one schema id, which is the
/// latest version registered under the subject.
async fn round_trip<T: Record + PartialEq>(codec: &Codec, samples: Vec<T>) -> anyhow::Result<()> {
    let topic = T::contract().topic;
    let mut ids = HashSet::new();
    for sample in samples {
        let bytes = codec.encode(&sample).await?;
        let frame = Frame::parse(&bytes)?;
        ids.insert(frame.schema_id);
        let back: T = codec.decode(&bytes).await?;
        assert_eq!(back, sample, "{topic}");
    }
    assert_eq!(ids.len(), 1, "{topic}: one schema id per subject");
    let subject = codec.subject(topic);
    let latest = SchemaRegistry::new(codec.config())?
        .latest(&subject)
        .await?
        .unwrap_or_else(|| panic!("{subject} was auto-registered"));
    assert!(
        ids.contains(&latest.id),
        "{subject}: frames carry the registered id"
    );
    assert_eq!(latest.version, Some(1));
    Ok(())
}

#[tokio::test]
async fn every_record_type_round_trips_through_the_registry() -> anyhow::Result<()> {
    let codec = Codec::new(common::config("roundtrip"))?;
    round_trip(&codec, common::order_commands()).await?;
    round_trip(&codec, common::inventory_commands()).await?;
    round_trip(&codec, common::payment_commands()).await?;
    round_trip(&codec, common::order_created()).await?;
    round_trip(&codec, common::order_status_changed()).await?;
    round_trip(&codec, common::payment_authorized()).await?;
    round_trip(&codec, common::payment_failed()).await?;
    round_trip(&codec, common::payment_refunded()).await?;
    round_trip(&codec, common::inventory_reserved()).await?;
    round_trip(&codec, common::inventory_released()).await?;
    round_trip(&codec, common::inventory_adjusted()).await?;
    Ok(())
}

#[tokio::test]
async fn a_record_can_be_encoded_for_another_topic_name() -> anyhow::Result<()> {
    let codec = Codec::new(common::config("topic"))?;
    let sample = common::order_created().remove(0);
    let bytes = codec.encode_to("order.created.replay", &sample).await?;
    let back: OrderCreated = codec.decode_from("order.created.replay", &bytes).await?;
    assert_eq!(back, sample);
    let subject = codec.subject("order.created.replay");
    assert!(subject.ends_with("order.created.replay-value"), "{subject}");
    let latest = SchemaRegistry::new(codec.config())?
        .latest(&subject)
        .await?;
    assert_eq!(latest.map(|l| l.id), Some(Frame::parse(&bytes)?.schema_id));
    Ok(())
}

#[tokio::test]
async fn without_auto_register_only_a_registered_schema_is_used() -> anyhow::Result<()> {
    let config = RegistryConfig {
        auto_register: false,
        ..common::config("noauto")
    };
    let codec = Codec::new(config.clone())?;
    let sample = common::order_created().remove(0);

    match codec.encode(&sample).await {
        Err(Error::NotRegistered { subject, .. }) => {
            assert_eq!(
                subject,
                format!("{}order.created-value", config.subject_prefix)
            );
        }
        other => panic!("expected NotRegistered, got {other:?}"),
    }

    let registered = register_all(&config).await?;
    let id = registered
        .iter()
        .find(|r| r.topic == "order.created")
        .map(|r| r.schema_id);
    let bytes = codec.encode(&sample).await?;
    assert_eq!(Some(Frame::parse(&bytes)?.schema_id), id);
    assert_eq!(codec.decode::<OrderCreated>(&bytes).await?, sample);
    Ok(())
}

#[tokio::test]
async fn unreadable_bytes_give_typed_errors_naming_subject_and_schema_id() -> anyhow::Result<()> {
    // An unknown id is the input's fault at once here; the patience for a lagging registry
    // replica has its own tests in src/codec.rs.
    let codec =
        Codec::new(common::config("errors"))?.with_unknown_id_patience(std::time::Duration::ZERO);
    let subject = codec.subject("order.created");
    let sample = common::order_created().remove(0);
    let bytes = codec.encode(&sample).await?;
    let id = Frame::parse(&bytes)?.schema_id;

    // Not framed at all.
    let err = codec
        .decode::<OrderCreated>(br#"{"order_id":"order-42"}"#)
        .await
        .expect_err("JSON is not Confluent-framed");
    assert!(matches!(
        &err,
        Error::NotFramed {
            reason: FramingError::BadMagic { byte: b'{' },
            ..
        }
    ));
    assert_eq!(err.subject(), Some(subject.as_str()));
    assert_eq!(err.fault(), Fault::Input);
    assert!(err.to_string().contains(&subject), "{err}");
    let err = codec
        .decode::<OrderCreated>(&[0, 0, 1])
        .await
        .expect_err("too short");
    assert!(matches!(
        err,
        Error::NotFramed {
            reason: FramingError::TooShort { len: 3 },
            ..
        }
    ));

    // A truncated datum and trailing garbage.
    for broken in [
        &bytes[..bytes.len() - 4],
        &[&bytes[..], &[1, 2, 3]].concat()[..],
    ] {
        let err = codec
            .decode::<OrderCreated>(broken)
            .await
            .expect_err("broken datum");
        assert!(matches!(err, Error::AvroDecode { .. }), "{err:?}");
        assert_eq!(err.schema_id(), Some(id));
        assert_eq!(err.fault(), Fault::Input);
        assert!(
            err.to_string().contains(&format!("schema id {id}")),
            "{err}"
        );
    }

    // The right frame read as the wrong type.
    let err = codec
        .decode::<PaymentAuthorized>(&bytes)
        .await
        .expect_err("an OrderCreated is not a PaymentAuthorized");
    match &err {
        Error::SchemaMismatch {
            schema_id,
            writer,
            reader,
            ..
        } => {
            assert_eq!(*schema_id, id);
            assert_eq!(writer, "dev.keel.v1.OrderCreated");
            assert_eq!(reader, "dev.keel.v1.PaymentAuthorized");
        }
        other => panic!("expected SchemaMismatch, got {other:?}"),
    }
    assert_eq!(err.kind(), "schema_mismatch");

    // A schema id the registry never issued.
    let unknown = 0x7fff_0000 + (rand::random::<u32>() & 0xffff);
    let framed = wire::frame(unknown, &bytes[wire::HEADER_LEN..]);
    let err = codec
        .decode::<OrderCreated>(&framed)
        .await
        .expect_err("unknown id");
    assert!(matches!(err, Error::UnknownSchemaId { .. }), "{err:?}");
    assert_eq!(err.schema_id(), Some(unknown));
    assert_eq!(err.fault(), Fault::Input);
    assert!(err.to_string().contains(&unknown.to_string()), "{err}");
    Ok(())
}

#[tokio::test]
async fn an_unreachable_registry_is_a_retriable_dependency_failure() -> anyhow::Result<()> {
    // Nothing listens on the discard port of the loopback interface.
    let codec = Codec::new(RegistryConfig {
        timeout_ms: 2_000,
        ..RegistryConfig::with_url("http://127.0.0.1:9")
    })?;
    let payload = wire::frame(1, &[0]);
    let err = codec
        .decode::<OrderStatusChanged>(&payload)
        .await
        .expect_err("no registry");
    assert!(
        matches!(
            err,
            Error::Registry {
                retriable: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.fault(), Fault::Dependency);

    let err = codec
        .encode(&common::order_status_changed().remove(0))
        .await
        .expect_err("no registry");
    assert_eq!(err.fault(), Fault::Dependency, "{err:?}");
    Ok(())
}

#[test]
fn an_invalid_configuration_is_refused_before_any_call() {
    let err = Codec::new(RegistryConfig::with_url("127.0.0.1:8080")).expect_err("no scheme");
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    assert_eq!(err.fault(), Fault::Bug);
}
