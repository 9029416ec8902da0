//! Debezium connector configurations and the Kafka Connect REST client that manages them.
//!
//! Keel never dual-writes: services write a row and an outbox row in one SQL transaction, and
//! Debezium streams both to Kafka. This crate owns *how* those connectors are described and
//! registered; it knows nothing about the saga or about Keel's runtime.
//!
//! Layout:
//! - [`config`]: typed descriptions of the MariaDB/MySQL and PostgreSQL connectors, rendered to
//!   the flat string map Kafka Connect expects.
//! - [`carts`]: the connector of the cart service's `carts`/`cart_items`, keyed by cart id.
//! - [`outbox`]: the outbox connectors (`order_outbox`, `payment_outbox`) through Debezium's
//!   outbox event router to the public event topics, byte for byte what the relay writes.
//! - [`ledger`]: the connector of the payment ledger's `payments` (envelope kept), keyed by order
//!   id, with a heartbeat table.
//! - [`client`]: a small async client for Connect's REST API (create or update, status, pause,
//!   resume, delete, plugins) with errors that name the connector and the HTTP answer.
//! - [`error`]: the crate's error enum.

pub mod carts;
pub mod client;
pub mod config;
pub mod error;
pub mod ledger;
pub mod outbox;

pub use client::{ConnectClient, ConnectorState, ConnectorStatus};
pub use config::{
    AVRO_CONVERTER, ConnectorConfig, MySqlFlavor, MySqlSource, PostgresSource, PublicationMode,
    RegistryValues,
};
pub use error::{Error, Result};
