//! The generic outbox relay: publishes the rows services write to their `<service>_outbox`
//! table (same SQL transaction as their state change) to Kafka, then marks them `SENT`.
//!
//! A round: one transaction claims up to `batch_size` `PENDING` rows in `created_at` order with
//! `SELECT ... FOR UPDATE SKIP LOCKED` ([`OutboxStore::claim_pending`]), produces each to
//! topic = `event_type`, key = `aggregate_id`, value = `payload` (already Confluent-framed
//! Avro, passed through untouched), header `keel.event.id` = `id`, through an idempotent
//! `acks=all` producer with Kafka's murmur2 partitioner; waits for every delivery; marks the
//! rows `SENT` in the transaction that still holds their locks ([`ClaimedBatch::mark_sent`]) and
//! commits. Several relays on one table never publish a row twice (each skips the rows another
//! holds). A crash between delivery and commit republishes the batch: consumers recognise the
//! copies by the `keel.event.id` header. With several relays running at once the order of one
//! aggregate's events across batches is not guaranteed; run one relay per table where that
//! order matters (a second one as a hot standby costs nothing: it claims nothing while the
//! first holds the rows).
//!
//! Layout: this file — [`OutboxRow`], the [`OutboxStore`] / [`ClaimedBatch`] traits,
//! [`RelayConfig`], [`run_relay`]; `postgres` — [`PgOutbox`]; `mysql` — [`MySqlOutbox`]
//! (MySQL / MariaDB; MariaDB ≥ 10.6 for `SKIP LOCKED`); [`cleanup`] — deletes shipped rows
//! older than `[outbox].retention_ms` in both modes, never an unshipped one.

pub mod cleanup;
mod mysql;
mod postgres;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::producer::AckedProducer;

pub use mysql::MySqlOutbox;
pub use postgres::PgOutbox;

/// The Kafka header carrying the row's id (the event id).
pub const EVENT_ID_HEADER: &str = "keel.event.id";

/// One outbox row, as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// The event id (UUID text, 36 chars): the `keel.event.id` header.
    pub id: String,
    /// The Kafka key (the order id).
    pub aggregate_id: String,
    /// The destination topic.
    pub event_type: String,
    /// The Kafka value, already Confluent-framed.
    pub payload: Vec<u8>,
}

impl OutboxRow {
    /// The rows a claim query returned (columns `id`, `aggregate_id`, `event_type`, `payload`),
    /// whatever the database.
    fn read_all<R>(rows: &[R]) -> std::result::Result<Vec<Self>, sqlx::Error>
    where
        R: sqlx::Row,
        for<'a> &'a str: sqlx::ColumnIndex<R>,
        String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        Vec<u8>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        rows.iter()
            .map(|r| {
                Ok(Self {
                    id: r.try_get("id")?,
                    aggregate_id: r.try_get("aggregate_id")?,
                    event_type: r.try_get("event_type")?,
                    payload: r.try_get("payload")?,
                })
            })
            .collect()
    }
}

/// A table of outbox rows.
pub trait OutboxStore: Send + Sync {
    type Claim: ClaimedBatch;

    /// Begin a transaction and lock up to `limit` `PENDING` rows, oldest first, skipping rows
    /// another transaction holds. The locks last until the batch is marked or released.
    fn claim_pending(&self, limit: usize) -> impl Future<Output = Result<Self::Claim>> + Send;
}

/// Rows claimed by one transaction.
pub trait ClaimedBatch: Send {
    fn rows(&self) -> &[OutboxRow];

    /// Mark `ids` `SENT` (with `sent_at`) and commit, releasing the locks.
    fn mark_sent(self, ids: &[String]) -> impl Future<Output = Result<()>> + Send;

    /// Roll back: the rows stay `PENDING` for the next round.
    fn release(self) -> impl Future<Output = Result<()>> + Send;
}

/// The relay's settings (the `outbox` section of Keel's configuration). Durations in ms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// How long to wait after a round that found nothing. Every checkout waits for two relays
    /// (payment, then order): half of this on average each, so it is short (50 ms); an idle
    /// round is one indexed `SELECT ... FOR UPDATE SKIP LOCKED` that finds nothing.
    pub poll_interval_ms: u64,
    /// Rows claimed per round.
    pub batch_size: usize,
    /// How long a delivery may take before the batch is released and retried.
    pub delivery_timeout_ms: u64,
    /// Extra librdkafka producer settings, passed through as-is.
    pub client: BTreeMap<String, String>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            poll_interval_ms: 50,
            batch_size: 500,
            delivery_timeout_ms: 30_000,
            client: BTreeMap::new(),
        }
    }
}

impl RelayConfig {
    /// Check every field; the error lists every problem at once.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if self.poll_interval_ms == 0 {
            problems.push("poll_interval_ms must be greater than 0".to_owned());
        }
        if self.batch_size == 0 {
            problems.push("batch_size must be greater than 0".to_owned());
        }
        if self.delivery_timeout_ms == 0 {
            problems.push("delivery_timeout_ms must be greater than 0".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(problems))
        }
    }
}

/// Why the relay could not start or a round failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid outbox relay configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    #[error("the outbox table failed to {operation}: {source}")]
    Database {
        operation: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("Kafka {operation} failed: {source}")]
    Kafka {
        operation: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A table name that is safe to put into SQL: `name` or `schema.name`, ASCII letters, digits
/// and underscores, not starting with a digit.
pub(crate) fn checked_table(table: &str) -> Result<String> {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 64
            && !p.starts_with(|c: char| c.is_ascii_digit())
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let parts: Vec<&str> = table.split('.').collect();
    if parts.len() <= 2 && parts.iter().all(|p| part_ok(p)) {
        Ok(table.to_owned())
    } else {
        Err(Error::Config(vec![format!(
            "outbox table must be `name` or `schema.name` of [A-Za-z0-9_], got {table:?}"
        )]))
    }
}

/// The relay's producer: idempotent, `acks=all`, murmur2 partitioner, plus `config.client`.
pub fn producer(bootstrap: &str, config: &RelayConfig) -> Result<AckedProducer> {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", config.delivery_timeout_ms.to_string())
        .set("linger.ms", "5");
    for (k, v) in &config.client {
        client.set(k, v);
    }
    AckedProducer::from_config(&client).map_err(|source| Error::Kafka {
        operation: "create the outbox producer",
        source,
    })
}

/// One round: claim, publish, mark. Returns how many rows were published (0: none pending).
pub async fn relay_once<S: OutboxStore>(
    store: &S,
    producer: &AckedProducer,
    config: &RelayConfig,
) -> Result<usize> {
    let batch = store.claim_pending(config.batch_size).await?;
    if batch.rows().is_empty() {
        batch.release().await?;
        return Ok(0);
    }
    let timeout = Duration::from_millis(config.delivery_timeout_ms);
    let deliveries = batch.rows().iter().map(|row| {
        let headers = OwnedHeaders::new().insert(Header {
            key: EVENT_ID_HEADER,
            value: Some(row.id.as_bytes()),
        });
        let record = FutureRecord::to(&row.event_type)
            .key(&row.aggregate_id)
            .payload(&row.payload)
            .headers(headers);
        producer.send(record, timeout)
    });
    // Enqueued in row order (join_all polls them in order), so one key's rows keep their order.
    let results = futures::future::join_all(deliveries).await;
    if let Some(error) = results.into_iter().find_map(Result::err) {
        batch.release().await?;
        return Err(Error::Kafka {
            operation: "deliver outbox rows",
            source: error,
        });
    }
    let ids: Vec<String> = batch.rows().iter().map(|r| r.id.clone()).collect();
    batch.mark_sent(&ids).await?;
    Ok(ids.len())
}

/// Relay `store` to the Kafka at `bootstrap` until `shutdown`. A failed round is logged and
/// retried with backoff (its rows stay `PENDING`); only an invalid configuration returns an
/// error.
pub async fn run_relay<S: OutboxStore>(
    store: S,
    bootstrap: &str,
    config: &RelayConfig,
    shutdown: CancellationToken,
) -> Result<()> {
    config.validate()?;
    let producer = producer(bootstrap, config)?;
    let idle = Duration::from_millis(config.poll_interval_ms);
    let mut backoff = idle;
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let pause = match relay_once(&store, &producer, config).await {
            Ok(0) => {
                backoff = idle;
                idle
            }
            Ok(published) => {
                tracing::debug!(published, "outbox rows published");
                backoff = idle;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                    "outbox relay round failed");
                let pause = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                pause
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(pause) => {}
        }
    }
}
