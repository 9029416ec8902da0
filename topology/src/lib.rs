//! Keel's stream-processing runtime: the Processor API and topology builder, tasks per
//! partition, the poll → process → commit loop with exactly-once Kafka transactions,
//! changelogged RocksDB state (from `keel-state`), punctuators, rebalancing, the dead-letter
//! topic, metrics and an in-process test driver.
//!
//! Must not know about orders or payments: processors plug in through [`Processor`].
//!
//! Layout:
//! - [`topology`] — [`TopologyBuilder`] → [`Topology`]: sources, processors, sinks, stores,
//!   repartition topics; checked, cut into sub-topologies (`topology/`: `builder.rs`, `cut.rs`,
//!   `graph.rs`, `ids.rs`). **Start here.**
//! - [`processor`] — the [`Processor`] trait and its [`Context`] (stores, forward, punctuators,
//!   record metadata).
//! - [`task`] — [`StreamTask`](task::StreamTask): one partition of one sub-topology; decoding,
//!   the dead-letter rule, punctuation. No Kafka client in it.
//! - [`runtime`] — [`KafkaStreams`] / [`StreamsHandle`]: topics, stream threads, the
//!   exactly-once loop, restore, rebalance, interactive queries.
//! - [`driver`] — [`TestDriver`]: the same tasks with in-memory topics and a test clock.
//! - [`dsl`] — `StreamsBuilder`: filter/map, tables from topics, stream–table joins,
//!   aggregates, on top of the Processor API.
//! - [`reset`] — `keel reset`: rewind input offsets, delete internal topics and local state.
//! - [`serde`], [`record`], [`config`], [`metrics`], [`error`].

pub mod config;
pub mod driver;
pub mod dsl;
pub mod error;
pub mod metrics;
pub mod processor;
pub mod record;
pub mod reset;
pub mod runtime;
pub mod serde;
pub mod task;
pub mod topology;

pub use config::StreamsConfig;
pub use driver::{DriverConfig, TestDriver};
pub use error::{Action, Error, ProcessError, Result, SerdeError};
pub use keel_state::{Guarantee, StoreKind};
/// The data views of a task's stores that [`Context`] hands to processors (no lifecycle).
pub use keel_state::{KeyValueStore, Timer, TimerStore, TtlEntry, TtlStore};
pub use metrics::Metrics;
pub use processor::{Context, Processor, Punctuation, PunctuationType};
pub use record::{Headers, NO_TIMESTAMP, OutRecord, RawRecord, Record, RecordMeta, timestamp_ms};
pub use reset::{ResetOptions, ResetReport, reset_application};
pub use runtime::{KafkaStreams, QuietEof, StreamsHandle, default_partition, shutdown_on_signals};
pub use task::{BadRecordPolicy, dlq_headers};
pub use topology::{SubTopology, TaskId, TopicName, Topology, TopologyBuilder};
