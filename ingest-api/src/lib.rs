//! Keel's HTTP ingest API (axum): validates requests and writes commands to Kafka; read
//! endpoints, `/metrics` and health. Errors are `application/problem+json`.
//!
//! Must not hold business state: every decision is made by the processors downstream.
//!
//! Layout: arrives with the ingest work.
