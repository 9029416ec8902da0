//! How the domain topologies turn Keel's typed records into bytes and back.
//!
//! Production uses [`Format::Avro`]: the Confluent wire format through the schema registry
//! (`keel_avro::Codec`, whose schema ids are cached after the first call). The runtime's serdes
//! are synchronous and run on stream threads (plain OS threads), so the codec's futures are
//! driven with the caller's tokio [`Handle`]; never call them from inside a runtime worker.
//! Test-driver tests use [`Format::Json`] (the same serde model, no registry), so a processor's
//! wiring is tested in milliseconds.

use std::marker::PhantomData;
use std::sync::Arc;

use keel_avro::{Codec, Record};
use keel_topology::SerdeError;
use keel_topology::serde::Serde;
use tokio::runtime::Handle;

/// The value format of every topic a topology reads and writes.
#[derive(Debug, Clone)]
pub enum Format {
    /// Avro in the Confluent wire format; `handle` drives the codec's registry calls.
    Avro { codec: Codec, handle: Handle },
    /// serde JSON of the same records (tests only: no registry, readable failures).
    Json,
}

impl Format {
    /// `bytes` of `topic` as a `T`; a typed error names the topic and what was wrong.
    pub fn decode<T: Record>(&self, topic: &str, bytes: &[u8]) -> Result<T, SerdeError> {
        match self {
            Self::Avro { codec, handle } => {
                retrying(|| handle.block_on(codec.decode_from::<T>(topic, bytes)))
            }
            Self::Json => serde_json::from_slice(bytes)
                .map_err(|e| SerdeError(format!("not a {} in JSON: {e}", T::contract().rust_type))),
        }
    }

    /// `record` as the bytes of a value of `topic`.
    pub fn encode<T: Record>(&self, topic: &str, record: &T) -> Result<Vec<u8>, SerdeError> {
        match self {
            Self::Avro { codec, handle } => {
                retrying(|| handle.block_on(codec.encode_to(topic, record)))
            }
            Self::Json => serde_json::to_vec(record)
                .map_err(|e| SerdeError(format!("cannot write JSON: {e}"))),
        }
    }

    /// A runtime serde for values of type `T`.
    pub fn serde<T: Record>(&self) -> RecordSerde<T> {
        RecordSerde {
            format: Arc::new(self.clone()),
            _t: PhantomData,
        }
    }
}

/// How long a registry outage may block a stream thread before the record is given up as bad.
const REGISTRY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs `call` again while the registry fails (`Fault::Dependency`: unreachable, a 5xx, or a
/// schema id it does not know yet within `[registry].unknown_id_patience_ms`), with backoff up
/// to [`REGISTRY_PATIENCE`]: a registry outage pauses the task instead of dead-lettering every
/// record. A not-yet-known id is asked again no later than when its window ends, so the wait
/// is the window, not the window plus a backoff step. Input faults (bad bytes, an unknown id
/// after its window) fail at once.
fn retrying<T>(mut call: impl FnMut() -> keel_avro::Result<T>) -> Result<T, SerdeError> {
    let started = std::time::Instant::now();
    let mut backoff = std::time::Duration::from_millis(100);
    loop {
        match call() {
            Ok(value) => return Ok(value),
            Err(e)
                if e.fault() == keel_avro::Fault::Dependency
                    && started.elapsed() < REGISTRY_PATIENCE =>
            {
                let wait = e.retry_wait(backoff);
                match &e {
                    keel_avro::Error::SchemaIdNotYetKnown { .. } => {
                        tracing::warn!(error = %e, ?wait,
                            "schema id not known to the registry (yet); asking again");
                    }
                    _ => {
                        tracing::warn!(error = %e, ?wait, "schema registry call failed; retrying");
                    }
                }
                std::thread::sleep(wait);
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
            }
            Err(e) => return Err(SerdeError(e.to_string())),
        }
    }
}

/// [`Serde`] of one record type in a [`Format`]; a null payload is refused (dead-lettered).
#[derive(Debug)]
pub struct RecordSerde<T> {
    format: Arc<Format>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for RecordSerde<T> {
    fn clone(&self) -> Self {
        Self {
            format: self.format.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: Record> Serde<T> for RecordSerde<T> {
    fn serialize(&self, topic: &str, value: &T) -> Result<Option<Vec<u8>>, SerdeError> {
        self.format.encode(topic, value).map(Some)
    }

    fn deserialize(&self, topic: &str, bytes: Option<&[u8]>) -> Result<T, SerdeError> {
        let bytes = bytes
            .ok_or_else(|| SerdeError(format!("null value on {topic}; a record was required")))?;
        self.format.decode(topic, bytes)
    }
}
