//! Keel's state stores: RocksDB key-value, TTL and timer stores, write batching, changelog
//! records, checkpoints and restore.
//!
//! Must not know about Kafka consumers or the shop's domain: the runtime (`keel-topology`) feeds
//! it changelog records and asks it to commit; it never talks to a broker itself.
//!
//! Layout: the stores arrive with the runtime work (issue #3); today the crate pins RocksDB.
