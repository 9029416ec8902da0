//! Typed records to Confluent-framed bytes and back, through the registry.
//!
//! Encoding writes a record with its contract's `.avsc` under the subject `<prefix><topic>-value`:
//! with auto-registration the converter registers the schema on first use; without it the
//! schema's id is looked up once and an unregistered schema is an error. Decoding reads the
//! frame's schema id, fetches that writer schema (once per id, cached by the converter), decodes
//! the datum with it and resolves the value into the record's own `.avsc` (Avro schema
//! resolution), so a reader on v1 reads v2 data and the other way round wherever the change
//! was compatible. Every failure is a typed [`Error`] naming the subject and schema id; no
//! input bytes make it panic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::{SrSettings, perform_sr_call};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SrCall, SubjectNameStrategy, SuppliedSchema,
};

use crate::config::RegistryConfig;
use crate::contract::{Contract, Record, subject_for_topic};
use crate::error::{Error, Result};
use crate::registry::{describe, raw_error_code, registry_error};
use crate::resolve::resolve;
use crate::wire::{self, Frame};

/// "Schema not found" in the Confluent API.
const SCHEMA_NOT_FOUND: u32 = 40403;
const SUBJECT_NOT_FOUND: u32 = 40401;

/// Encoder and decoder of Keel's records in the Confluent wire format. Cheap to clone; clones
/// share the schema caches.
#[derive(Debug, Clone)]
pub struct Codec {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: RegistryConfig,
    settings: SrSettings,
    encoder: AvroEncoder,
    decoder: AvroDecoder,
    /// Schema ids looked up by subject when auto-registration is off.
    looked_up: Mutex<HashMap<String, u32>>,
}

impl Codec {
    /// A codec for `config` (validated here). Makes no call to the registry yet.
    pub fn new(config: RegistryConfig) -> Result<Self> {
        let settings = config.sr_settings()?;
        Ok(Self {
            inner: Arc::new(Inner {
                encoder: AvroEncoder::new(settings.clone()),
                decoder: AvroDecoder::new(settings.clone()),
                settings,
                config,
                looked_up: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.inner.config
    }

    /// The subject of `topic`'s values: `<prefix><topic>-value`.
    pub fn subject(&self, topic: &str) -> String {
        subject_for_topic(&self.inner.config.subject_prefix, topic)
    }

    /// Encode a record for its own topic ([`Contract::topic`]).
    pub async fn encode<T: Record>(&self, record: &T) -> Result<Vec<u8>> {
        self.encode_to(T::contract().topic, record).await
    }

    /// Encode a record for `topic` (subject `<prefix><topic>-value`) with its contract's schema.
    pub async fn encode_to<T: Record>(&self, topic: &str, record: &T) -> Result<Vec<u8>> {
        let contract = T::contract();
        let schema = contract.schema()?;
        let subject = self.subject(topic);
        if self.inner.config.auto_register {
            let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
                format!("{}{topic}", self.inner.config.subject_prefix),
                false,
                SuppliedSchema::new(
                    Some(contract.full_name.to_owned()),
                    SchemaType::Avro,
                    contract.schema_source.to_owned(),
                ),
            );
            self.inner
                .encoder
                .encode_struct(record, &strategy)
                .await
                .map_err(|e| self.encode_error(&subject, contract, &e))
        } else {
            let id = self.registered_id(&subject, contract).await?;
            let datum = write_datum(schema, record).map_err(|detail| Error::Encode {
                subject: subject.clone(),
                rust_type: contract.rust_type,
                detail,
            })?;
            Ok(wire::frame(id, &datum))
        }
    }

    /// Decode a payload of `T`'s own topic.
    pub async fn decode<T: Record>(&self, payload: &[u8]) -> Result<T> {
        self.decode_from(T::contract().topic, payload).await
    }

    /// Decode a payload read from `topic` into `T`, resolving the writer's schema (named by the
    /// frame's id) into `T`'s `.avsc`.
    pub async fn decode_from<T: Record>(&self, topic: &str, payload: &[u8]) -> Result<T> {
        let contract = T::contract();
        let subject = self.subject(topic);
        let frame = Frame::parse(payload).map_err(|reason| Error::NotFramed {
            subject: subject.clone(),
            reason,
        })?;
        let schema_id = frame.schema_id;
        let writer = self
            .inner
            .decoder
            .get_schema(schema_id)
            .await
            .map_err(|e| self.fetch_error(&subject, schema_id, contract, &e))?;
        let reader = contract.schema()?;
        let mismatch = |detail: String| Error::SchemaMismatch {
            subject: subject.clone(),
            schema_id,
            writer: schema_name(&writer.parsed),
            reader: contract.full_name.to_owned(),
            detail,
        };
        if schema_name(&writer.parsed) != contract.full_name {
            return Err(mismatch(format!(
                "the payload is a {}, not a {}",
                schema_name(&writer.parsed),
                contract.full_name
            )));
        }
        let value =
            read_datum(&writer.parsed, frame.datum).map_err(|detail| Error::AvroDecode {
                subject: subject.clone(),
                schema_id,
                detail,
            })?;
        let resolved = resolve(value, &writer.parsed, reader)
            .map_err(|e| mismatch(format!("schema resolution failed: {e}")))?;
        apache_avro::from_value::<T>(&resolved).map_err(|e| {
            mismatch(format!(
                "the resolved value does not fit {}: {e}",
                contract.rust_type
            ))
        })
    }

    /// The id under which the local schema is registered, looked up once per subject.
    async fn registered_id(&self, subject: &str, contract: &Contract) -> Result<u32> {
        if let Some(id) = self.looked_up().get(subject) {
            return Ok(*id);
        }
        let body = serde_json::json!({ "schema": contract.schema_source, "schemaType": "AVRO" })
            .to_string();
        let id = match perform_sr_call(&self.inner.settings, SrCall::PostForVersion(subject, &body))
            .await
        {
            Ok(raw) => raw.id.ok_or_else(|| Error::Registry {
                subject: subject.to_owned(),
                operation: "look up schema",
                detail: "the registry's answer has no schema id".to_owned(),
                retriable: false,
            })?,
            Err(e)
                if matches!(
                    raw_error_code(&e),
                    Some(SUBJECT_NOT_FOUND | SCHEMA_NOT_FOUND)
                ) =>
            {
                return Err(Error::NotRegistered {
                    subject: subject.to_owned(),
                    detail: describe(&e),
                });
            }
            Err(e) => return Err(registry_error(subject, "look up schema", &e)),
        };
        self.looked_up().insert(subject.to_owned(), id);
        Ok(id)
    }

    fn looked_up(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        // The map is only ever inserted into, so a panic elsewhere cannot leave it torn.
        self.inner
            .looked_up
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn encode_error(&self, subject: &str, contract: &Contract, e: &SRCError) -> Error {
        if e.error.starts_with("Could not get Avro bytes") {
            return Error::Encode {
                subject: subject.to_owned(),
                rust_type: contract.rust_type,
                detail: describe(e),
            };
        }
        if raw_error_code(e) == Some(409) {
            return Error::Incompatible {
                subject: subject.to_owned(),
                reason: describe(e),
            };
        }
        // The converter caches non-retriable registry errors for good; a registry hiccup must
        // not poison the subject for the life of the process.
        self.inner.encoder.remove_errors_from_cache();
        registry_error(subject, "register schema", e)
    }

    fn fetch_error(
        &self,
        subject: &str,
        schema_id: u32,
        contract: &Contract,
        e: &SRCError,
    ) -> Error {
        if raw_error_code(e) == Some(SCHEMA_NOT_FOUND) {
            // Stays cached: an id the registry does not know is the payload's fault.
            return Error::UnknownSchemaId {
                subject: subject.to_owned(),
                schema_id,
                detail: describe(e),
            };
        }
        self.inner.decoder.remove_errors_from_cache();
        if e.error.contains("is not correct") || e.error.contains("cant be turned into a Schema") {
            return Error::SchemaMismatch {
                subject: subject.to_owned(),
                schema_id,
                writer: "a schema that is not usable Avro".to_owned(),
                reader: contract.full_name.to_owned(),
                detail: describe(e),
            };
        }
        registry_error(subject, "get schema by id", e)
    }
}

/// The full name of a named schema, or its kind.
fn schema_name(schema: &Schema) -> String {
    match schema.name() {
        Some(name) => name.fullname(None),
        None => format!("{:?}", apache_avro::schema::SchemaKind::from(schema)),
    }
}

/// Write `record` as an Avro datum with `schema`.
pub(crate) fn write_datum<T: serde::Serialize>(
    schema: &Schema,
    record: &T,
) -> std::result::Result<Vec<u8>, String> {
    GenericDatumWriter::builder(schema)
        .build()
        .and_then(|writer| writer.write_ser_to_vec(record))
        .map_err(|e| e.to_string())
}

/// Read one Avro datum written with `schema`; trailing bytes are an error.
pub(crate) fn read_datum(schema: &Schema, datum: &[u8]) -> std::result::Result<Value, String> {
    let mut rest = datum;
    let value = GenericDatumReader::builder(schema)
        .build()
        .and_then(|reader| reader.read_value(&mut rest))
        .map_err(|e| e.to_string())?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(format!(
            "{} trailing bytes after the datum ({} bytes in all)",
            rest.len(),
            datum.len()
        ))
    }
}
