//! The payment service: consumes `payments.commands.v1`, calls the PSP with bounded
//! concurrency and an idempotency key per attempt, and keeps the PostgreSQL ledger
//! (`payments`, `payment_attempts`, `refunds`, `processed_commands`) and its outbox
//! (`payment_outbox` → `payment.authorized.v1`, `payment.failed.v1`, `payment.refunded.v1`) in
//! one transaction per decision.
//!
//! Delivery: at-least-once from Kafka (offsets committed only after the ledger transaction,
//! never past an unfinished command), exactly-once in effect through the database: a replayed
//! command finds its `processed_commands` row and changes nothing; a replayed PSP call reuses
//! its attempt's idempotency key (`<payment id>:authorize`, ...), so the PSP answers it with its
//! first answer and never charges twice (a replay that finds the first call still running at
//! the PSP waits for its answer); PSP callbacks are de-duplicated on `psp_event_id`, and one
//! that arrives after the payment moved past it is kept as a `stale` attempt that changes
//! nothing and counts as no attempt in the metrics.
//! A timeout fails the payment (`payment.failed.v1`, reason `TIMEOUT`, detail `PSP_TIMEOUT`) and
//! leaves the attempt for the reconciler, which asks the PSP again and voids a late success.
//!
//! Layout:
//! - [`logic`] — the pure state machine `decide(state, input) -> (state, effects)`.
//! - `ledger` — the SQL (runtime-checked queries) and [`migrate`].
//! - `psp` — the HTTP client of the PSP (the [`crate::psp_mock::api`] contract).
//! - `service` — one command: decide, call the PSP, write ledger + outbox.
//! - `reconcile` — the loop that settles timed-out authorizations.
//! - `offsets` — which offset may be committed while commands run out of order.
//! - `worker` — [`run`]: the Kafka consumer, per-order sequencing, bounded concurrency.
//! - `metrics` — [`PaymentMetrics`].
//! - [`view`] — the read side for the API: [`load_payment`], [`locate_payment`].

mod ledger;
pub mod logic;
mod metrics;
mod offsets;
mod psp;
mod reconcile;
mod service;
#[cfg(test)]
mod tests;
pub mod view;
mod worker;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use metrics::PaymentMetrics;
pub use view::{
    PaymentAttemptView, PaymentKeys, PaymentView, RefundView, load_payment, load_payment_by_order,
    locate_payment,
};
pub use worker::run;

/// The default command topic.
pub const COMMANDS_TOPIC: &str = "payments.commands.v1";

/// The `payment` section of Keel's configuration. Durations in ms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PaymentConfig {
    /// Base URL of the PSP (the mock by default).
    pub psp_url: String,
    /// How long one PSP call may take; an authorization without an answer by then fails with
    /// reason `TIMEOUT` and is reconciled later.
    pub psp_timeout_ms: u64,
    /// Retries of a PSP call answered 5xx or refused at connect. "Still in progress" (an
    /// earlier call with the same idempotency key, e.g. from a killed process, is running at
    /// the PSP) is not retried this many times but waited out, up to `psp_timeout_ms`.
    pub psp_retries: u32,
    /// First backoff between those retries (doubles each time, at most 10 s).
    pub psp_retry_backoff_ms: u64,
    /// Commands processed at once (different orders; one order's commands run in sequence).
    pub max_in_flight: usize,
    /// The consumer group.
    pub group_id: String,
    /// How often the offsets of finished commands are committed.
    pub commit_interval_ms: u64,
    /// How often timed-out authorizations are asked about again.
    pub reconcile_interval_ms: u64,
    /// On shutdown, how long running commands may finish before they are abandoned (and
    /// replayed by the next owner).
    pub shutdown_grace_ms: u64,
    /// Destination topics of the outbox rows (the `event_type` column).
    pub authorized_topic: String,
    pub failed_topic: String,
    pub refunded_topic: String,
    /// Extra librdkafka consumer settings, passed through as-is.
    pub client: BTreeMap<String, String>,
}

impl Default for PaymentConfig {
    fn default() -> Self {
        Self {
            psp_url: "http://127.0.0.1:8090".to_owned(),
            psp_timeout_ms: 30_000,
            psp_retries: 3,
            psp_retry_backoff_ms: 200,
            max_in_flight: 32,
            group_id: "keel-payment".to_owned(),
            commit_interval_ms: 1_000,
            reconcile_interval_ms: 5_000,
            shutdown_grace_ms: 10_000,
            authorized_topic: "payment.authorized.v1".to_owned(),
            failed_topic: "payment.failed.v1".to_owned(),
            refunded_topic: "payment.refunded.v1".to_owned(),
            client: BTreeMap::new(),
        }
    }
}

impl PaymentConfig {
    /// Check every field; the error lists every problem at once.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if !(self.psp_url.starts_with("http://") || self.psp_url.starts_with("https://")) {
            problems.push(format!(
                "psp_url must start with http:// or https://, got {:?}",
                self.psp_url
            ));
        }
        for (name, value) in [
            ("psp_timeout_ms", self.psp_timeout_ms),
            ("commit_interval_ms", self.commit_interval_ms),
            ("reconcile_interval_ms", self.reconcile_interval_ms),
        ] {
            if value == 0 {
                problems.push(format!("{name} must be greater than 0"));
            }
        }
        if self.max_in_flight == 0 {
            problems.push("max_in_flight must be greater than 0".to_owned());
        }
        for (name, value) in [
            ("group_id", &self.group_id),
            ("authorized_topic", &self.authorized_topic),
            ("failed_topic", &self.failed_topic),
            ("refunded_topic", &self.refunded_topic),
        ] {
            if value.is_empty() {
                problems.push(format!("{name} must not be empty"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(problems))
        }
    }
}

/// What to do about an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The command itself is bad: dead-letter it (`<group id>-dlq`, [`crate::dead_letter`]),
    /// count it, go on.
    Skip,
    /// A dependency (PostgreSQL, the PSP, the registry, Kafka) failed: retry with backoff.
    Retry,
    /// Keel's configuration or code is wrong: stop.
    Stop,
}

/// Everything that can go wrong in the payment service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid payment configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    #[error("the ledger failed to {operation}: {source}")]
    Database {
        operation: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("the ledger migration failed: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("the PSP call {operation} failed: {detail}")]
    Psp {
        operation: &'static str,
        detail: String,
    },
    #[error("Kafka {operation} failed: {source}")]
    Kafka {
        operation: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error(transparent)]
    Avro(#[from] keel_avro::Error),
    #[error("bad command at {topic}/{partition}@{offset}: {detail}")]
    BadCommand {
        topic: String,
        partition: i32,
        offset: i64,
        detail: String,
    },
    /// A decoded command the service cannot apply as it is (an intent for an amount or a
    /// currency no payment can have): dead-lettered with why.
    #[error("invalid payment command {command_id}: {detail}")]
    InvalidCommand { command_id: String, detail: String },
    #[error("cannot register the payment metrics: {0}")]
    Metrics(#[source] prometheus::Error),
    #[error("a command task failed: {0}")]
    Task(String),
    /// The dead-letter writer could not be set up, or a dead letter was not acknowledged.
    #[error(transparent)]
    DeadLetter(#[from] crate::dead_letter::Error),
}

impl Error {
    /// Whether to skip, retry or stop; the one place that decides it.
    pub fn action(&self) -> Action {
        match self {
            Self::BadCommand { .. } | Self::InvalidCommand { .. } => Action::Skip,
            // The command carries data PostgreSQL refuses (SQLSTATE class 22: a NUL in a
            // text, a value out of range): every retry fails the same way and would hold back
            // the order's later commands for ever. It is a bad command.
            Self::Database { source, .. } if is_data_error(source) => Action::Skip,
            Self::Database { .. } | Self::Psp { .. } | Self::Kafka { .. } | Self::DeadLetter(_) => {
                Action::Retry
            }
            Self::Avro(e) => match e.fault() {
                keel_avro::Fault::Input => Action::Skip,
                keel_avro::Fault::Dependency => Action::Retry,
                keel_avro::Fault::Bug => Action::Stop,
            },
            Self::Config(_) | Self::Migrate(_) | Self::Metrics(_) | Self::Task(_) => Action::Stop,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether PostgreSQL refused the data itself (SQLSTATE class 22, "data exception", e.g.
/// 22021 for a NUL character in a text): the same statement with the same values can never
/// succeed.
pub fn is_data_error(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.code().is_some_and(|c| c.starts_with("22")))
}

/// Apply the ledger migrations (`processors/migrations/payments`) to `pg`. Idempotent; call it
/// at start before [`run`].
pub async fn migrate(pg: &sqlx::PgPool) -> Result<()> {
    ledger::migrate(pg).await
}
