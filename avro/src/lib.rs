//! Keel's Avro contracts: every `.avsc` on Keel's topics, the typed Rust records kept in step
//! with them, and encode/decode in the Confluent wire format through the schema registry
//! (`schema_registry_converter`), with subject and compatibility setup.
//!
//! Must not know about processors, the runtime or HTTP: it turns records into bytes and back,
//! and says in a typed [`Error`] why bytes could not be read so the runtime can dead-letter them.
//!
//! Layout:
//! - `avro/schemas/` — one `.avsc` per topic (`<topic>.avsc`), the source of truth, embedded
//!   at build time; command topics carry one envelope record whose `command` is a union.
//! - [`contract`] — the explicit list [`CONTRACTS`] of topic → schema file → Rust type, and the
//!   [`Record`] trait the typed records implement.
//! - [`records`] — the typed records (serde + derived Avro schema), checked against their
//!   `.avsc` by drift tests.
//! - [`ids`] — the rule for the ids records carry and are keyed by (order ids, SKUs,
//!   warehouses), shared by the API, the processors and the CLI.
//! - [`wire`] — the Confluent frame (magic byte, schema id, datum); pure, no registry.
//! - [`codec`] — [`Codec`]: encode a record for a topic, decode bytes into a record, with
//!   schema ids cached.
//! - `resolve` — writer-to-reader schema resolution that keeps union branches by name
//!   (`apache_avro` 0.22's own picks the first branch that fits, confusing similar records).
//! - [`registry`] — `keel schemas register` / `keel schemas check`: [`register_all`],
//!   [`check_all`], [`render_check_table`].
//! - [`config`] — [`RegistryConfig`]: URL, auto-register, compatibility level, subject prefix.
//! - [`error`] — [`Error`], [`Result`] and [`Fault`] (dead-letter, retry or stop).

pub mod codec;
pub mod config;
pub mod contract;
pub mod error;
pub mod ids;
pub mod records;
pub mod registry;
mod resolve;
pub mod wire;

/// Runs `f` to completion on a current-thread runtime (the unit tests' registry calls).
#[cfg(test)]
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

pub use codec::Codec;
pub use config::{CompatibilityLevel, DEFAULT_REGISTRY_URL, RegistryConfig};
pub use contract::{CONTRACTS, Contract, Envelope, Kind, Record, contract_for_topic};
pub use error::{Error, Fault, FramingError, Result};
pub use registry::{
    CheckRow, Registered, SchemaRegistry, Verdict, any_incompatible, check_all, register_all,
    render_check_table, render_registered_table,
};
