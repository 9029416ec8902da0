//! The values of Debezium's table topics: Avro in the Confluent wire format (magic byte, 4-byte
//! schema id, datum), written by the registry converter in Kafka Connect (ADR 0006). The schema
//! is Debezium's own (derived from the table), so values are read generically with the writer
//! schema the frame names, then handed to the envelope decoder as a JSON tree shaped like the one
//! Debezium's `JsonConverter` writes (ADR 0002's interim format): records are objects, unions
//! are their branch, Debezium's semantic types (`io.debezium.time.*`, decimals as text with
//! `decimal.handling.mode = string`) keep their plain Avro types (long, int, string).
//!
//! Where the writer schemas come from ([`CdcValues`]):
//! - [`Format::Avro`]: the schema registry, through [`keel_avro::Codec::decode_generic`] (ids
//!   cached; a registry that fails, or does not know an id yet within
//!   `[registry].unknown_id_patience_ms`, is asked again with backoff, a not-yet-known id no
//!   later than its window's end; an id still unknown after it dead-letters);
//! - [`Format::Json`] (the test driver, no registry): the process-wide [`LocalSchemas`], where
//!   tests register the Debezium schemas they frame values with ([`frame_local`]).
//!
//! Anything else — schemaless JSON as Debezium wrote before ADR 0006, a wrong magic byte, a
//! datum that does not decode — is the record's fault ([`DecodeError::NotAvro`]): dead-lettered.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value as Avro;
use apache_avro::writer::datum::GenericDatumWriter;
use keel_avro::wire::Frame;
use serde_json::{Map, Number, Value as Json};

use super::envelope::DecodeError;
use crate::format::Format;

/// How a CDC topic's Avro values get their writer schema (see the module docs).
#[derive(Debug, Clone)]
pub enum CdcValues {
    /// The schema registry (production).
    Registry {
        codec: keel_avro::Codec,
        handle: tokio::runtime::Handle,
    },
    /// The in-process [`LocalSchemas`] (test driver).
    Local,
}

impl CdcValues {
    /// The registry for [`Format::Avro`], [`LocalSchemas`] for [`Format::Json`].
    pub fn for_format(format: &Format) -> Self {
        match format {
            Format::Avro { codec, handle } => Self::Registry {
                codec: codec.clone(),
                handle: handle.clone(),
            },
            Format::Json => Self::Local,
        }
    }

    /// `bytes` of `topic` decoded with their writer schema, as a JSON tree (module docs).
    /// Runs on a stream thread: a registry outage blocks it (retried with backoff for up to a
    /// minute) rather than dead-lettering good records.
    pub fn decode(&self, topic: &str, bytes: &[u8]) -> Result<Json, DecodeError> {
        let value = match self {
            Self::Registry { codec, handle } => registry_decode(codec, handle, topic, bytes)?,
            Self::Local => {
                let frame = Frame::parse(bytes).map_err(not_avro)?;
                let schema = LocalSchemas::get(frame.schema_id).ok_or_else(|| {
                    DecodeError::NotAvro(format!(
                        "schema id {} is not among the local schemas",
                        frame.schema_id
                    ))
                })?;
                let mut rest = frame.datum;
                let value = GenericDatumReader::builder(&schema)
                    .build()
                    .and_then(|reader| reader.read_value(&mut rest))
                    .map_err(|e| DecodeError::NotAvro(format!("the datum does not decode: {e}")))?;
                if !rest.is_empty() {
                    return Err(DecodeError::NotAvro(format!(
                        "{} trailing bytes after the datum",
                        rest.len()
                    )));
                }
                // apache_avro reads a value cut off by the end of the input as null.
                if !value.validate(&schema) {
                    return Err(DecodeError::NotAvro(
                        "the datum is truncated (the value read does not fit its schema)".into(),
                    ));
                }
                value
            }
        };
        to_json(&value).map_err(DecodeError::NotAvro)
    }
}

fn not_avro(e: impl std::fmt::Display) -> DecodeError {
    DecodeError::NotAvro(format!(
        "not Avro in the Confluent wire format (magic byte 0, schema id): {e}"
    ))
}

/// How long a registry outage may block a stream thread before the record is given up.
const REGISTRY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

fn registry_decode(
    codec: &keel_avro::Codec,
    handle: &tokio::runtime::Handle,
    topic: &str,
    bytes: &[u8],
) -> Result<Avro, DecodeError> {
    let started = std::time::Instant::now();
    let mut backoff = std::time::Duration::from_millis(100);
    loop {
        match handle.block_on(codec.decode_generic(topic, bytes)) {
            Ok((_, value)) => return Ok(value),
            Err(e)
                if e.fault() == keel_avro::Fault::Dependency
                    && started.elapsed() < REGISTRY_PATIENCE =>
            {
                // Worded as the stream path words it (`format.rs`); a not-yet-known id is asked
                // again no later than its window's end.
                let wait = e.retry_wait(backoff);
                match &e {
                    keel_avro::Error::SchemaIdNotYetKnown { .. } => {
                        tracing::warn!(error = %e, ?wait, topic,
                            "schema id not known to the registry (yet); asking again");
                    }
                    _ => {
                        tracing::warn!(error = %e, ?wait, topic,
                            "schema registry call failed; retrying");
                    }
                }
                std::thread::sleep(wait);
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
            }
            Err(e @ keel_avro::Error::NotFramed { .. }) => return Err(not_avro(e)),
            Err(e) => return Err(DecodeError::NotAvro(e.to_string())),
        }
    }
}

/// The writer schemas of [`CdcValues::Local`]: an in-memory stand-in for the registry, shared
/// by the whole process (ids are handed out once and never reused, so parallel tests do not
/// collide).
#[derive(Debug)]
pub struct LocalSchemas;

fn local() -> &'static RwLock<HashMap<u32, Arc<Schema>>> {
    static SCHEMAS: OnceLock<RwLock<HashMap<u32, Arc<Schema>>>> = OnceLock::new();
    SCHEMAS.get_or_init(|| RwLock::new(HashMap::new()))
}

impl LocalSchemas {
    /// Registers `schema` under a new id and returns it.
    pub fn register(schema: Schema) -> u32 {
        let mut map = local()
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let id = u32::try_from(map.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        map.insert(id, Arc::new(schema));
        id
    }

    /// The schema registered under `id`.
    pub fn get(id: u32) -> Option<Arc<Schema>> {
        local()
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .cloned()
    }
}

/// `value` written with the local schema `id` (see [`LocalSchemas::register`]), Confluent-framed:
/// what the registry converter writes, for tests. Panics-free: an unwritable value is an error.
pub fn frame_local(id: u32, value: Avro) -> Result<Vec<u8>, String> {
    let schema = LocalSchemas::get(id).ok_or_else(|| format!("no local schema {id}"))?;
    let datum = GenericDatumWriter::builder(&schema)
        .build()
        .and_then(|writer| writer.write_value_to_vec(value))
        .map_err(|e| e.to_string())?;
    Ok(keel_avro::wire::frame(id, &datum))
}

/// An Avro value as the JSON tree Debezium's `JsonConverter` would have written for it.
/// Decimal and duration values (only written with `decimal.handling.mode = precise` or
/// `interval.handling.mode = numeric` on unusual columns) are refused: Keel's connectors write
/// decimals as text.
pub fn to_json(value: &Avro) -> Result<Json, String> {
    Ok(match value {
        Avro::Null => Json::Null,
        Avro::Boolean(b) => Json::Bool(*b),
        Avro::Int(i) | Avro::Date(i) | Avro::TimeMillis(i) => Json::from(*i),
        Avro::Long(i)
        | Avro::TimeMicros(i)
        | Avro::TimestampMillis(i)
        | Avro::TimestampMicros(i)
        | Avro::TimestampNanos(i)
        | Avro::LocalTimestampMillis(i)
        | Avro::LocalTimestampMicros(i)
        | Avro::LocalTimestampNanos(i) => Json::from(*i),
        Avro::Float(f) => number(f64::from(*f))?,
        Avro::Double(f) => number(*f)?,
        Avro::String(s) | Avro::Enum(_, s) => Json::String(s.clone()),
        Avro::Uuid(u) => Json::String(u.to_string()),
        Avro::Bytes(b) | Avro::Fixed(_, b) => Json::String(hex::encode(b)),
        Avro::Union(_, inner) => to_json(inner)?,
        Avro::Array(items) => Json::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        Avro::Map(entries) => Json::Object(
            entries
                .iter()
                .map(|(k, v)| Ok((k.clone(), to_json(v)?)))
                .collect::<Result<Map<_, _>, String>>()?,
        ),
        Avro::Record(fields) => Json::Object(
            fields
                .iter()
                .map(|(k, v)| Ok((k.clone(), to_json(v)?)))
                .collect::<Result<Map<_, _>, String>>()?,
        ),
        other => {
            return Err(format!(
                "an Avro {:?} value is not read (decimals must arrive as text: \
                 decimal.handling.mode = string)",
                apache_avro::schema::SchemaKind::from(other)
            ));
        }
    })
}

fn number(f: f64) -> Result<Json, String> {
    Number::from_f64(f)
        .map(Json::Number)
        .ok_or_else(|| format!("{f} is not a finite number"))
}
