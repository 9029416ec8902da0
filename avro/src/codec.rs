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
//!
//! **Unknown schema ids.** Only schemas found are cached. A registry replica that lags answers
//! "schema not found" for an id that another replica has just issued, so a miss is asked
//! again on the next call: for the window `[registry].unknown_id_patience_ms` after an id's
//! first miss (10 s by default; [`Codec::with_unknown_id_patience`] in tests) it is
//! [`Error::SchemaIdNotYetKnown`] ([`Fault::Dependency`](crate::Fault::Dependency): the caller
//! waits and asks again), after that [`Error::UnknownSchemaId`]
//! ([`Fault::Input`](crate::Fault::Input): the record is dead-lettered). An id found later is
//! decoded as usual.
//!
//! The window is cut short where lag cannot explain a miss: Confluent-compatible registries
//! hand out ids in increasing order (`[registry].increasing_ids`), so the replica that served
//! an id held every lower one at that moment, and every replica holds them one window later.
//! A miss for an id at or below an id this codec resolved (read a schema by, or was given at
//! registration) is final once the window has passed since that resolution: in a running
//! process, at once for any id below the ids it has been using. An id above every resolved id
//! (one registered just now, on a replica this one lags behind) keeps its whole window.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

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

/// How many times [`Codec::encode_to`] asks the registry again after a retriable failure (a
/// call that failed in transit, a 5xx), waiting [`TRANSIENT_RETRY_BACKOFF`] and then four times
/// that: a blip costs an encode ~250 ms, not an error.
pub const TRANSIENT_RETRIES: u32 = 2;
/// The first wait of [`TRANSIENT_RETRIES`].
pub const TRANSIENT_RETRY_BACKOFF: Duration = Duration::from_millis(50);

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
    /// What the registry answered about schema ids so far.
    ids: Mutex<SeenIds>,
    unknown_id_patience: Duration,
}

/// The schema ids the registry answered about, with when.
#[derive(Debug, Default)]
struct SeenIds {
    /// Ids it answered "not found" for (not found since), with the time of the first miss.
    missing: HashMap<u32, Instant>,
    /// Ids it resolved, with the time of the first answer.
    resolved: BTreeMap<u32, Instant>,
}

impl SeenIds {
    fn resolved(&mut self, id: u32) {
        self.resolved.entry(id).or_insert_with(Instant::now);
        self.missing.remove(&id);
    }

    /// When a miss for `id` (first missed at `first_miss`) stops being possible lag:
    /// `patience` after the first miss or, with `increasing_ids`, `patience` after the first
    /// resolution of any id at or above it, whichever comes first; with that id, if it decided.
    fn final_at(
        &self,
        id: u32,
        first_miss: Instant,
        patience: Duration,
        increasing_ids: bool,
    ) -> (Instant, Option<u32>) {
        let by_miss = first_miss + patience;
        if !increasing_ids {
            return (by_miss, None);
        }
        match self.resolved.range(id..).min_by_key(|(_, at)| **at) {
            Some((above, at)) if *at + patience < by_miss => (*at + patience, Some(*above)),
            _ => (by_miss, None),
        }
    }
}

impl Codec {
    /// A codec for `config` (validated here). Makes no call to the registry yet.
    pub fn new(config: RegistryConfig) -> Result<Self> {
        let settings = config.sr_settings()?;
        let unknown_id_patience = config.unknown_id_patience();
        Ok(Self {
            inner: Arc::new(Inner {
                encoder: AvroEncoder::new(settings.clone()),
                decoder: AvroDecoder::new(settings.clone()),
                settings,
                config,
                looked_up: Mutex::new(HashMap::new()),
                ids: Mutex::new(SeenIds::default()),
                unknown_id_patience,
            }),
        })
    }

    /// How long a schema id the registry does not know is retried before decoding it is
    /// [`Error::UnknownSchemaId`] (see the module docs), instead of the configuration's
    /// `unknown_id_patience_ms`; `Duration::ZERO`: at once. Call it before cloning the codec.
    #[must_use]
    pub fn with_unknown_id_patience(mut self, patience: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.unknown_id_patience = patience;
        } else {
            tracing::warn!("with_unknown_id_patience on a shared codec: ignored");
        }
        self
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
            // A registry call that failed in transit (a pooled connection the server had closed,
            // a restart) is asked again, twice, before the error goes to the caller: registering
            // the same schema is idempotent. (Seen in CI: one "error sending request" between two
            // successful registrations of the same test.)
            let mut backoff = TRANSIENT_RETRY_BACKOFF;
            let mut retries = TRANSIENT_RETRIES;
            loop {
                match self.inner.encoder.encode_struct(record, &strategy).await {
                    Ok(bytes) => {
                        if let Ok(frame) = Frame::parse(&bytes) {
                            self.ids().resolved(frame.schema_id);
                        }
                        return Ok(bytes);
                    }
                    Err(e) if e.retriable && retries > 0 => {
                        retries -= 1;
                        self.inner.encoder.remove_errors_from_cache();
                        tracing::debug!(subject, error = %describe(&e), ?backoff, "registry call failed; asking again");
                        tokio::time::sleep(backoff).await;
                        backoff *= 4;
                    }
                    Err(e) => return Err(self.encode_error(&subject, contract, &e)),
                }
            }
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
            .writer_schema(&subject, schema_id, contract.full_name)
            .await?;
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

    /// Decode a payload read from `topic` with its writer schema alone (fetched by the frame's
    /// id, cached like [`Codec::decode_from`]'s), into a generic Avro [`Value`] with that
    /// schema's id. For topics whose schema is not one of Keel's contracts, e.g. Debezium's
    /// table topics written through a registry converter. Errors as [`Codec::decode_from`]'s:
    /// not framed, unknown id (after the patience), or a datum that does not decode are the
    /// payload's fault; an unreachable registry is retriable.
    pub async fn decode_generic(&self, topic: &str, payload: &[u8]) -> Result<(u32, Value)> {
        let subject = self.subject(topic);
        let frame = Frame::parse(payload).map_err(|reason| Error::NotFramed {
            subject: subject.clone(),
            reason,
        })?;
        let schema_id = frame.schema_id;
        let writer = self
            .writer_schema(&subject, schema_id, "its writer schema")
            .await?;
        let value =
            read_datum(&writer.parsed, frame.datum).map_err(|detail| Error::AvroDecode {
                subject: subject.clone(),
                schema_id,
                detail,
            })?;
        Ok((schema_id, value))
    }

    /// The writer schema `schema_id`, from the converter's cache or the registry; a miss is
    /// never cached (see the module docs). `reader` names what it is read as, for errors.
    async fn writer_schema(
        &self,
        subject: &str,
        schema_id: u32,
        reader: &str,
    ) -> Result<Arc<schema_registry_converter::avro_common::AvroSchema>> {
        match self.inner.decoder.get_schema(schema_id).await {
            Ok(schema) => {
                self.ids().resolved(schema_id);
                Ok(schema)
            }
            Err(e) => Err(self.fetch_error(subject, schema_id, reader, &e)),
        }
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
        self.ids().resolved(id);
        Ok(id)
    }

    fn looked_up(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        // The map is only ever inserted into, so a panic elsewhere cannot leave it torn.
        self.inner
            .looked_up
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn ids(&self) -> std::sync::MutexGuard<'_, SeenIds> {
        // Inserts and removes of whole entries: a panic elsewhere cannot leave it torn.
        self.inner
            .ids
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

    fn fetch_error(&self, subject: &str, schema_id: u32, reader: &str, e: &SRCError) -> Error {
        // The converter caches errors; only successes may stay (a miss is asked again).
        self.inner.decoder.remove_errors_from_cache();
        if raw_error_code(e) == Some(SCHEMA_NOT_FOUND) {
            let patience = self.inner.unknown_id_patience;
            let (first_miss, (final_at, above)) = {
                let mut ids = self.ids();
                let first_miss = *ids.missing.entry(schema_id).or_insert_with(Instant::now);
                let decided = ids.final_at(
                    schema_id,
                    first_miss,
                    patience,
                    self.inner.config.increasing_ids,
                );
                (first_miss, decided)
            };
            let now = Instant::now();
            let waited = now.saturating_duration_since(first_miss);
            if now < final_at {
                return Error::SchemaIdNotYetKnown {
                    subject: subject.to_owned(),
                    schema_id,
                    waited,
                    remaining: final_at - now,
                    patience,
                };
            }
            let why = match above {
                Some(above) => format!(
                    "not a lagging replica: ids increase, and id {above} was resolved more than \
                     {patience:?} ago"
                ),
                None => format!("still unknown {waited:?} after the first miss"),
            };
            return Error::UnknownSchemaId {
                subject: subject.to_owned(),
                schema_id,
                detail: format!("{} ({why})", describe(e)),
            };
        }
        if e.error.contains("is not correct") || e.error.contains("cant be turned into a Schema") {
            return Error::SchemaMismatch {
                subject: subject.to_owned(),
                schema_id,
                writer: "a schema that is not usable Avro".to_owned(),
                reader: reader.to_owned(),
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

/// Read one Avro datum written with `schema`; trailing bytes are an error, and so is a datum
/// cut short. apache_avro 0.22 reads a string, boolean or union cut off by the end of the input
/// as a null (a union as its branch 0) instead of failing: such a value either does not fit the
/// schema, or encodes to more bytes than were read — a faithful read never does, since a
/// writer's blocks and varints are at most as compact as the canonical encoding.
pub(crate) fn read_datum(schema: &Schema, datum: &[u8]) -> std::result::Result<Value, String> {
    let mut rest = datum;
    let value = GenericDatumReader::builder(schema)
        .build()
        .and_then(|reader| reader.read_value(&mut rest))
        .map_err(|e| e.to_string())?;
    let truncated = || {
        format!(
            "the datum is truncated: the value read from its {} bytes does not fit its schema",
            datum.len()
        )
    };
    if !value.validate(schema) {
        return Err(truncated());
    }
    let canonical = GenericDatumWriter::builder(schema)
        .build()
        .and_then(|writer| writer.write_value_to_vec(value.clone()))
        .map_err(|e| e.to_string())?;
    if canonical.len() > datum.len() - rest.len() {
        Err(truncated())
    } else if rest.is_empty() {
        Ok(value)
    } else {
        Err(format!(
            "{} trailing bytes after the datum ({} bytes in all)",
            rest.len(),
            datum.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;
    use crate::block_on;
    use crate::records::OrderCreated;

    /// A registry that answers `GET /schemas/ids/<id>` with "schema not found" (40403) until
    /// `known` is set (or for ids not in `known_ids`), then with `schema`. Counts the lookups.
    struct StubRegistry {
        url: String,
        known: Arc<AtomicBool>,
        known_ids: Arc<Mutex<Vec<u32>>>,
        lookups: Arc<AtomicUsize>,
    }

    fn stub_registry(schema: &'static str) -> StubRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let known = Arc::new(AtomicBool::new(false));
        let known_ids = Arc::new(Mutex::new(Vec::new()));
        let lookups = Arc::new(AtomicUsize::new(0));
        let (k, ids, l) = (known.clone(), known_ids.clone(), lookups.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut request = String::new();
                let _ = reader.read_line(&mut request);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                }
                let (status, body) = if !request.contains("/schemas/ids/") {
                    (
                        "404 Not Found",
                        r#"{"error_code":40401,"message":"no"}"#.to_owned(),
                    )
                } else {
                    l.fetch_add(1, Ordering::SeqCst);
                    let id: Option<u32> = request
                        .split("/schemas/ids/")
                        .nth(1)
                        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                        .and_then(|digits| digits.parse().ok());
                    let listed = id.is_some_and(|id| {
                        ids.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .contains(&id)
                    });
                    if k.load(Ordering::SeqCst) || listed {
                        (
                            "200 OK",
                            serde_json::json!({ "schema": schema }).to_string(),
                        )
                    } else {
                        (
                            "404 Not Found",
                            r#"{"error_code":40403,"message":"Schema not found"}"#.to_owned(),
                        )
                    }
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        StubRegistry {
            url,
            known,
            known_ids,
            lookups,
        }
    }

    /// A registry that closes its first `drops` connections without an answer (a call that
    /// fails in transit), then registers any schema under id 7. Counts the connections.
    fn flaky_registry(drops: usize) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = connections.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                if seen.fetch_add(1, Ordering::SeqCst) < drops {
                    drop(stream);
                    continue;
                }
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = std::io::Read::read_exact(&mut reader, &mut body);
                let answer = r#"{"id":7}"#;
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        (url, connections)
    }

    fn adjusted() -> crate::records::InventoryAdjusted {
        crate::records::InventoryAdjusted {
            event_id: "e-1".into(),
            sku: "sku-1".into(),
            occurred_at: 1,
            causation_id: "c-1".into(),
            correlation_id: "o-1".into(),
            delta: 1,
            on_hand: 1,
            reason: "restock".into(),
            warehouse: None,
            warehouse_on_hand: None,
        }
    }

    #[test]
    fn a_registration_that_fails_in_transit_is_asked_again() {
        let (url, connections) = flaky_registry(1);
        let codec = codec(&url, Duration::ZERO);
        let bytes = block_on(codec.encode(&adjusted())).expect("encoded on the second call");
        assert_eq!(
            &bytes[..5],
            &[0, 0, 0, 0, 7],
            "framed with the registered id"
        );
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_registry_that_keeps_failing_in_transit_is_a_retriable_error() {
        let (url, connections) = flaky_registry(usize::MAX);
        let codec = codec(&url, Duration::ZERO);
        let e = block_on(codec.encode(&adjusted())).expect_err("never answered");
        assert_eq!(e.fault(), crate::Fault::Dependency, "{e}");
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1 + TRANSIENT_RETRIES as usize
        );
    }

    fn codec(url: &str, patience: Duration) -> Codec {
        Codec::new(RegistryConfig::with_url(url))
            .expect("codec")
            .with_unknown_id_patience(patience)
    }

    #[test]
    fn a_schema_registered_after_the_first_miss_is_found_the_miss_is_not_cached() {
        let contract = OrderCreated::contract();
        let stub = stub_registry(contract.schema_source);
        let codec = codec(&stub.url, Duration::from_secs(60));
        let subject = codec.subject(contract.topic);
        let first =
            block_on(codec.writer_schema(&subject, 7, contract.full_name)).expect_err("not yet");
        assert_eq!(
            first.fault(),
            crate::Fault::Dependency,
            "a miss within the patience is retried, not dead-lettered: {first}"
        );
        // The registry (a lagging replica) now has it.
        stub.known.store(true, Ordering::SeqCst);
        let found = block_on(codec.writer_schema(&subject, 7, contract.full_name))
            .expect("found once registered: the miss was not cached");
        assert_eq!(schema_name(&found.parsed), contract.full_name);
        // Successes are cached.
        let before = stub.lookups.load(Ordering::SeqCst);
        block_on(codec.writer_schema(&subject, 7, contract.full_name)).expect("cached");
        assert_eq!(stub.lookups.load(Ordering::SeqCst), before);
    }

    #[test]
    fn a_foreign_value_decodes_generically_with_the_writer_schema_its_frame_names() {
        const SCHEMA: &str = r#"{"type": "record", "name": "Value", "namespace": "cdc.keel.carts",
            "fields": [{"name": "cart_id", "type": "string"},
                       {"name": "__deleted", "type": ["null", "string"], "default": null}]}"#;
        let stub = stub_registry(SCHEMA);
        stub.known.store(true, Ordering::SeqCst);
        let codec = codec(&stub.url, Duration::ZERO);
        let schema = Schema::parse_str(SCHEMA).expect("schema");
        let value = Value::Record(vec![
            ("cart_id".into(), Value::String("c1".into())),
            (
                "__deleted".into(),
                Value::Union(1, Box::new(Value::String("true".into()))),
            ),
        ]);
        let datum = GenericDatumWriter::builder(&schema)
            .build()
            .and_then(|w| w.write_value_to_vec(value.clone()))
            .expect("datum");
        let (id, decoded) =
            block_on(codec.decode_generic("cdc.keel.carts", &wire::frame(5065, &datum)))
                .expect("decodes");
        assert_eq!((id, decoded), (5065, value));
        let json = block_on(codec.decode_generic("cdc.keel.carts", br#"{"cart_id":"c1"}"#))
            .expect_err("JSON is not framed");
        assert!(matches!(json, Error::NotFramed { .. }), "{json:?}");
        assert_eq!(json.fault(), crate::Fault::Input);
        let short =
            block_on(codec.decode_generic("cdc.keel.carts", &wire::frame(5065, &datum[..2])))
                .expect_err("a truncated datum");
        assert!(
            matches!(
                short,
                Error::AvroDecode {
                    schema_id: 5065,
                    ..
                }
            ),
            "{short:?}"
        );
    }

    /// Every cut of a record's datum is an error, never a value with nulls where the cut fell
    /// (`decode_from` reads Keel's records through the same reader).
    #[test]
    fn a_datum_cut_short_anywhere_does_not_read() {
        let schema = Schema::parse_str(
            r#"{"type": "record", "name": "R", "fields": [
                {"name": "id", "type": "string"},
                {"name": "ok", "type": "boolean"},
                {"name": "note", "type": ["null", "string"], "default": null}]}"#,
        )
        .expect("schema");
        let value = Value::Record(vec![
            ("id".into(), Value::String("order-1".into())),
            ("ok".into(), Value::Boolean(true)),
            (
                "note".into(),
                Value::Union(1, Box::new(Value::String("n".into()))),
            ),
        ]);
        let datum = GenericDatumWriter::builder(&schema)
            .build()
            .and_then(|w| w.write_value_to_vec(value.clone()))
            .expect("datum");
        assert_eq!(read_datum(&schema, &datum), Ok(value));
        for cut in 0..datum.len() {
            let read = read_datum(&schema, &datum[..cut]);
            assert!(
                read.is_err(),
                "{cut} of {} bytes read as {read:?}",
                datum.len()
            );
        }
    }

    #[test]
    fn an_id_still_unknown_after_the_patience_is_the_payloads_fault() {
        let contract = OrderCreated::contract();
        let stub = stub_registry(contract.schema_source);
        let codec = codec(&stub.url, Duration::from_millis(200));
        let subject = codec.subject(contract.topic);
        let first =
            block_on(codec.writer_schema(&subject, 9, contract.full_name)).expect_err("missing");
        assert_eq!(first.fault(), crate::Fault::Dependency, "{first}");
        std::thread::sleep(Duration::from_millis(250));
        let last =
            block_on(codec.writer_schema(&subject, 9, contract.full_name)).expect_err("missing");
        assert!(
            matches!(last, Error::UnknownSchemaId { schema_id: 9, .. }),
            "{last:?}"
        );
        assert_eq!(last.fault(), crate::Fault::Input);
        assert_eq!(
            stub.lookups.load(Ordering::SeqCst),
            2,
            "every miss asked the registry again"
        );
    }

    #[test]
    fn a_miss_says_the_registry_does_not_know_the_id_and_how_long_it_is_asked_again() {
        let contract = OrderCreated::contract();
        let stub = stub_registry(contract.schema_source);
        let codec = codec(&stub.url, Duration::from_secs(10));
        let subject = codec.subject(contract.topic);
        let miss = block_on(codec.writer_schema(&subject, 88_888_888, contract.full_name))
            .expect_err("unknown");
        assert_eq!(miss.fault(), crate::Fault::Dependency, "{miss}");
        let text = miss.to_string();
        assert!(
            text.contains("the registry answered that it does not know schema id 88888888"),
            "{text}"
        );
        assert!(text.contains("asked again for another"), "{text}");
        assert!(!text.contains("unreachable"), "{text}");
        assert_eq!(miss.schema_id(), Some(88_888_888));
    }

    /// Ids are handed out increasing: a replica that served id 7 had every lower id then, and
    /// any replica has them one window later. A miss for 5 after that is final at once; a miss
    /// for 9 (it may have been registered just now) still gets its window.
    #[test]
    fn a_miss_below_an_id_resolved_a_window_ago_is_final_at_once() {
        let contract = OrderCreated::contract();
        let stub = stub_registry(contract.schema_source);
        stub.known_ids.lock().expect("ids").push(7);
        let codec = codec(&stub.url, Duration::from_millis(300));
        let subject = codec.subject(contract.topic);
        block_on(codec.writer_schema(&subject, 7, contract.full_name)).expect("id 7 is known");
        std::thread::sleep(Duration::from_millis(350));
        let below =
            block_on(codec.writer_schema(&subject, 5, contract.full_name)).expect_err("no 5");
        assert!(
            matches!(below, Error::UnknownSchemaId { schema_id: 5, .. }),
            "a first miss below an id resolved a window ago is final: {below:?}"
        );
        let above =
            block_on(codec.writer_schema(&subject, 9, contract.full_name)).expect_err("no 9");
        assert_eq!(
            above.fault(),
            crate::Fault::Dependency,
            "an id above every resolved one may be new: {above}"
        );
    }

    /// The real lag case: id 7 was just resolved (from one replica); 5 may be registered just
    /// before it and not yet on the replica that answers now, so its miss is retried.
    #[test]
    fn a_miss_below_an_id_resolved_just_now_is_asked_again() {
        let contract = OrderCreated::contract();
        let stub = stub_registry(contract.schema_source);
        stub.known_ids.lock().expect("ids").push(7);
        let codec = codec(&stub.url, Duration::from_secs(60));
        let subject = codec.subject(contract.topic);
        block_on(codec.writer_schema(&subject, 7, contract.full_name)).expect("id 7 is known");
        let below =
            block_on(codec.writer_schema(&subject, 5, contract.full_name)).expect_err("no 5");
        assert_eq!(below.fault(), crate::Fault::Dependency, "{below}");
        stub.known_ids.lock().expect("ids").push(5);
        block_on(codec.writer_schema(&subject, 5, contract.full_name))
            .expect("found once the replica has it");
    }

    #[test]
    fn the_window_and_the_id_rule_come_from_the_configuration() {
        let contract = OrderCreated::contract();
        let stub = stub_registry(contract.schema_source);
        stub.known_ids.lock().expect("ids").push(7);
        let at_once = Codec::new(RegistryConfig {
            unknown_id_patience_ms: 0,
            ..RegistryConfig::with_url(&stub.url)
        })
        .expect("codec");
        let subject = at_once.subject(contract.topic);
        let miss =
            block_on(at_once.writer_schema(&subject, 9, contract.full_name)).expect_err("unknown");
        assert!(matches!(miss, Error::UnknownSchemaId { .. }), "{miss:?}");

        let no_id_rule = Codec::new(RegistryConfig {
            unknown_id_patience_ms: 300,
            increasing_ids: false,
            ..RegistryConfig::with_url(&stub.url)
        })
        .expect("codec");
        block_on(no_id_rule.writer_schema(&subject, 7, contract.full_name)).expect("known");
        std::thread::sleep(Duration::from_millis(350));
        let below =
            block_on(no_id_rule.writer_schema(&subject, 5, contract.full_name)).expect_err("no 5");
        assert_eq!(
            below.fault(),
            crate::Fault::Dependency,
            "without increasing ids a first miss gets its window: {below}"
        );
    }
}
