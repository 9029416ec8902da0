//! Keel's domain: the checkout saga orchestrator, inventory, the payment service and PSP mock,
//! the MySQL/PostgreSQL/Cassandra sinks and reconciliation, each a processor on the runtime.
//!
//! Must not speak HTTP to users (that is `keel-ingest-api`) nor manage connectors.
//!
//! Layout: arrives with the saga work, one folder per processor
//! (`{mod.rs, state.rs, logic.rs, tests.rs}`).
