//! Consuming Debezium change events: the envelope decoder (`envelope.rs`) and the runtime serde
//! ([`CdcSerde`]) that hands typed changes to a processor and sends what does not decode to the
//! dead-letter topic with why (a [`SerdeError`] from a source is dead-lettered by the runtime,
//! with the `keel.error`, `keel.source.*` headers — the rule the carts processor relies on too).
//!
//! - `avro.rs`: [`CdcValues`] reads a value (Avro in the Confluent wire format, written by the
//!   registry converter in Kafka Connect, ADR 0006) with its writer schema from the registry
//!   into a tree; anything else (schemaless JSON included) is dead-lettered. [`LocalSchemas`]
//!   and [`frame_local`] stand in for the registry in test-driver tests.
//! - `envelope.rs`: [`decode`] → [`Change<T>`] (op, before/after [`Image`]s read through
//!   [`FromImage`], [`Source`] with `ts_ms` and the log [`Position`]), tombstones, snapshot
//!   reads, the TOAST placeholder as [`Field::Unchanged`], temporal and decimal columns.
//! - De-duplication is the consumer's: keep the last applied [`Position`] per key and skip a
//!   change unless [`Position::supersedes`] it (Debezium re-sends changes after a restart).

mod avro;
mod envelope;

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use std::marker::PhantomData;

pub use avro::{CdcValues, LocalSchemas, frame_local, to_json};
pub use envelope::{
    Change, DecodeError, Field, FromImage, Image, Op, Position, RowChange, Source, Temporal,
    UNAVAILABLE, decode,
};
use keel_topology::SerdeError;
use keel_topology::serde::Serde;

/// The runtime serde of a Debezium table topic: reads the Avro value with its writer schema
/// ([`CdcValues`]), decodes the envelope into a [`Change<T>`] and maps it to the processor's
/// input `I` with `map`. An undecodable value is a [`SerdeError`] naming the topic and the
/// problem, so the runtime dead-letters it; a tombstone reaches `map` as
/// [`Change::Tombstone`]. Keel never writes CDC topics: `serialize` refuses.
pub struct CdcSerde<T, I> {
    values: CdcValues,
    map: fn(Change<T>) -> I,
    _t: PhantomData<fn() -> T>,
}

impl<T, I> std::fmt::Debug for CdcSerde<T, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CdcSerde")
            .field("row", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

impl<T, I> CdcSerde<T, I> {
    /// Values read through `values` (see [`CdcValues::for_format`]), mapped with `map`.
    pub fn new(values: CdcValues, map: fn(Change<T>) -> I) -> Self {
        Self {
            values,
            map,
            _t: PhantomData,
        }
    }
}

impl<T: FromImage + 'static, I: 'static> Serde<I> for CdcSerde<T, I> {
    fn serialize(&self, topic: &str, _: &I) -> Result<Option<Vec<u8>>, SerdeError> {
        Err(SerdeError(format!(
            "CDC topics are written by Debezium, never by Keel (topic {topic})"
        )))
    }

    fn deserialize(&self, topic: &str, bytes: Option<&[u8]>) -> Result<I, SerdeError> {
        let tree = bytes
            .map(|bytes| self.values.decode(topic, bytes))
            .transpose();
        tree.and_then(|tree| decode::<T>(tree.as_ref()))
            .map(self.map)
            .map_err(|e| SerdeError(format!("{topic}: Debezium change event: {e}")))
    }
}
