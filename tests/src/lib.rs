//! Shared fixtures for Keel's end-to-end tests against the real local stack.
//!
//! The tests in `tests/tests/` talk to real servers (Kafka, Kafka Connect, the schema registry,
//! Cassandra, MariaDB, PostgreSQL) started by `stack/keel-stack up`. Each test makes its own
//! topics, subjects, keyspaces, tables and connectors with random names, so tests can run in
//! parallel and re-run against a stack that already holds data. This crate owns only those
//! fixtures; it must not hold product logic.
//!
//! Layout: [`Stack`] says where each server listens (from `KEEL_*` variables, defaulting to the
//! local stack's ports); [`unique`] makes collision-free names; [`kafka`] has admin, producer and
//! consumer helpers; [`topics`] deletes a test's own topics when it ends.

pub mod kafka;
pub mod topics;

use std::time::Duration;

/// Where the servers of the stack listen. Defaults are the local stack's (`keel-stack env`).
#[derive(Debug, Clone)]
pub struct Stack {
    pub kafka_bootstrap: String,
    pub connect_url: String,
    pub registry_url: String,
    pub cassandra_node: String,
    pub mysql_url: String,
    pub postgres_url: String,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

impl Stack {
    /// Addresses from the environment (`KEEL_KAFKA_BOOTSTRAP`, ...), else the local defaults.
    pub fn from_env() -> Self {
        Self {
            kafka_bootstrap: env_or("KEEL_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
            connect_url: env_or("KEEL_CONNECT_URL", "http://127.0.0.1:8083"),
            registry_url: env_or(
                "KEEL_SCHEMA_REGISTRY_URL",
                "http://127.0.0.1:8080/apis/ccompat/v7",
            ),
            cassandra_node: env_or("KEEL_CASSANDRA_NODES", "127.0.0.1:9042"),
            mysql_url: env_or("KEEL_MYSQL_URL", "mysql://keel:keel@127.0.0.1:3306/keel"),
            postgres_url: env_or(
                "KEEL_POSTGRES_URL",
                "postgres://keel:keel@127.0.0.1:5432/keel",
            ),
        }
    }
}

/// A name no other test (or earlier run) uses: `<prefix>_<12 random hex digits>`.
/// Underscores only, so it is valid as a Kafka topic, a CQL keyspace and an SQL identifier.
pub fn unique(prefix: &str) -> String {
    let n: u64 = rand::random();
    format!("{prefix}_{:012x}", n & 0xffff_ffff_ffff)
}

/// Ports [`free_port`] hands out: below Linux's default ephemeral range (`ip_local_port_range`,
/// 32768–60999), which the kernel draws outgoing connections' source ports from.
pub const FIXTURE_PORTS: std::ops::Range<u16> = 20_000..32_768;

/// A port nothing listens on, for a listener the test starts (and may restart). Not one the
/// kernel would pick itself (`bind(0)`): a port from the ephemeral range can become the source
/// port of an outgoing connection while its listener is down — even of a client retrying
/// against it (TCP self-connect) — and the restarted server then cannot bind it (CI:
/// "binding 127.0.0.1:34025: Address already in use" after tests/cli/checkout_crash.rs's
/// `kill -9`).
pub fn free_port() -> u16 {
    for _ in 0..1_000 {
        let port = FIXTURE_PORTS.start + rand::random::<u16>() % FIXTURE_PORTS.len() as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIXTURE_PORTS:?}")
}

/// How long a test waits for something that should happen within seconds on this stack.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The servers `stack/keel-stack` manages, in start order.
pub const STACK_SERVERS: [&str; 6] = [
    "kafka",
    "registry",
    "connect",
    "mariadb",
    "postgres",
    "cassandra",
];

/// The path of the stack script in this checkout.
pub fn stack_script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../stack/keel-stack")
}
