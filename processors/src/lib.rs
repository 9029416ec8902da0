//! Keel's domain: the checkout saga orchestrator, inventory, the payment service and PSP mock,
//! the MySQL/PostgreSQL/Cassandra sinks, each on the runtime (`keel-topology`) or, where the
//! work is a side effect at a database's edge, as an idempotent consumer.
//!
//! Must not speak HTTP to users (that is `keel-ingest-api`) nor manage connectors.
//!
//! Layout — each service a folder with the same few files: `logic.rs` (pure transitions
//! `(state, input, now) → (state, effects)`), `state.rs` (what is stored, how it is keyed and
//! encoded), `topology.rs` (wiring onto the runtime), `sink.rs` (database writes), `tests.rs`.
//! - [`saga`] — the checkout saga orchestrator (keyed by order id). **Start here.**
//! - [`carts`] — the carts table from the cart service's CDC topics and the saga's cart checks.
//! - [`inventory`] — stock and holds per SKU, hold expiry, oversell.
//! - [`payment`] — the payment service: PSP calls, PostgreSQL ledger + outbox; [`psp_mock`] —
//!   the PSP it talks to in development and tests; [`outbox`] — the outbox → Kafka relay.
//! - [`cdc`] — the Debezium envelope decoder; [`reconciliation`] — the saga vs the payment
//!   ledger's CDC: mismatches, CDC lag, the finance view.
//! - [`audit`] — the invariant auditor: the system's promises checked from its events.
//! - [`dead_letter`] — the plain consumers' dead-letter writer (`<group id>-dlq`);
//!   [`command_key`] — a command record's key is its id, on its key's murmur2 partition;
//!   [`producer`] — the plain producers' acknowledged send.
//! - [`topics`] — the topic names; [`format`] — Avro (or JSON under test) serdes for the runtime;
//!   [`timers`] — the durable due-timer index the keyed processors arm, disarm and fire.
pub mod audit;
pub mod carts;
pub mod cdc;
pub mod command_key;
pub mod dead_letter;
pub mod format;
pub mod inventory;
pub mod money;
pub mod orders;
pub mod outbox;
pub mod payment;
pub mod positions;
pub mod producer;
pub mod psp_mock;
pub mod reconciliation;
pub mod saga;
pub mod timers;
pub mod topics;
