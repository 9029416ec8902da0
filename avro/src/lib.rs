//! Keel's Avro contracts: every `.avsc` on Keel's topics, the typed Rust records kept in step
//! with them, and encode/decode in the Confluent wire format through the schema registry
//! (`schema_registry_converter`), with subject and compatibility setup.
//!
//! Must not know about processors, the runtime or HTTP: it turns records into bytes and back.
//!
//! Layout: the schemas and typed records arrive with the Avro contracts work (issue #4); today
//! the crate pins the one `apache-avro` version shared with `schema_registry_converter`.
