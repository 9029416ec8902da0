//! Keel's HTTP ingest API (axum): validates requests and writes commands to Kafka; read
//! endpoints, `/metrics` and health. Errors are `application/problem+json`.
//!
//! Must not hold business state: every decision is made by the processors downstream. It reads
//! the cart (MariaDB `carts`) to build a place-order command, keeps `Idempotency-Key`s in
//! `api_idempotency`, and reads orders back through `keel_processors::orders::load_order` and
//! payments through `keel_processors::payment::view` (the PostgreSQL ledger, optional).
//!
//! Layout:
//! - [`config`] — [`ApiConfig`].
//! - [`routes`] — [`Endpoint::ALL`] (the router is built from it), the handlers, middleware.
//! - [`model`] — request and response bodies, validation.
//! - [`payments`] — the payment routes: read a payment, refund, the signed PSP callback.
//! - [`inventory`] — the inventory routes: read a SKU's stock from the Cassandra mirror,
//!   adjust, reserve, release ([`InventoryDeps`]).
//! - [`body`] — reading JSON bodies into problems that name the field.
//! - [`currency`] — the ISO 4217 currency codes the API accepts and their minor units.
//! - [`problem`] — [`Problem`] (`application/problem+json`) and its kinds.
//! - [`idempotency`] — the `api_idempotency` table: claim, replay, release; the retention and
//!   background purge of every key table, `api_payment_requests` too ([`idempotency::retention`]).
//! - `command` — writing commands: encode, produce, wait for Kafka, or 503 (every route).
//! - [`kafka`] — the idempotent `acks=all` murmur2 command producer with a delivery deadline.
//! - [`metrics`] — the Prometheus metrics; [`openapi`] — [`ApiDoc`].
//! - [`finance`] — `GET /finance/reconciliation` from the reconciliation role's view.
//! - [`dashboard`] — the live page at `/dashboard` (uPlot charts, the latest sagas).
//!
//! Start with [`serve`] (or [`spawn`] for a server on a port chosen by the OS).

pub mod body;
mod command;
pub mod config;
pub mod dashboard;
pub mod finance;
pub mod idempotency;
pub mod inventory;
pub mod kafka;
pub mod metrics;
pub mod model;
pub mod openapi;
pub mod payments;
pub mod problem;
pub mod routes;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use keel_avro::Codec;
use keel_processors::producer::AckedProducer;
use prometheus::Registry;
use sqlx::{MySqlPool, PgPool};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::ApiConfig;
pub use inventory::InventoryDeps;
pub use kafka::command_producer;
pub use openapi::ApiDoc;
pub use problem::Problem;
pub use routes::{Endpoint, ReadyFn};

/// Everything that stops the API from starting or serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid api configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving http: {0}")]
    Serve(#[source] std::io::Error),
    #[error("registering metrics: {0}")]
    Metrics(#[source] prometheus::Error),
    #[error("kafka: {operation}: {source}")]
    Kafka {
        operation: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("the server task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// `Result` with the API's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the API needs from the process that hosts it.
pub struct ApiDeps {
    /// The command producer, e.g. from [`command_producer`].
    pub producer: Arc<AckedProducer>,
    pub codec: Codec,
    /// The orders database (MariaDB), migrated with `keel_processors::orders::migrate`.
    pub pool: MySqlPool,
    /// The payment ledger (PostgreSQL, migrated with `keel_processors::payment::migrate`) that
    /// the payment routes read; `None`: they answer 501 `not-served-here` and the orders API
    /// works as before.
    pub ledger: Option<PgPool>,
    /// The inventory mirror (Cassandra, migrated with `keel_processors::inventory::sink::migrate`)
    /// that `GET /inventory/{sku}` reads and reserve/release check SKUs against; `None`: the
    /// inventory routes answer 501 `not-served-here`.
    pub inventory: Option<InventoryDeps>,
    /// The reconciliation role's view when it runs in this process (`keel run --roles
    /// ...,reconciliation`), read by `GET /finance/reconciliation`; `None`: that route answers
    /// 501 `not-served-here`.
    pub finance: Option<keel_processors::reconciliation::ReconciliationView>,
    /// The API registers its metrics here; `/metrics` renders all of it.
    pub registry: Registry,
    /// Whether the process is ready (`/ready` answers 503 until it is).
    pub ready: ReadyFn,
}

impl fmt::Debug for ApiDeps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiDeps")
            .field("codec", &self.codec)
            .field("ledger", &self.ledger.is_some())
            .field("inventory", &self.inventory)
            .field("finance", &self.finance.is_some())
            .finish_non_exhaustive()
    }
}

/// A server started by [`spawn`]: where it listens and the task serving it (ends after
/// shutdown, once in-flight requests are answered).
#[derive(Debug)]
pub struct RunningApi {
    pub addr: SocketAddr,
    pub task: JoinHandle<Result<()>>,
}

/// Serve the API on `config.listen` until `shutdown` is cancelled, then finish in-flight
/// requests. Errors: [`Error::Config`], [`Error::Bind`], [`Error::Metrics`], [`Error::Serve`].
pub async fn serve(config: ApiConfig, deps: ApiDeps, shutdown: CancellationToken) -> Result<()> {
    let running = spawn(config, deps, shutdown).await?;
    running.task.await?
}

/// Bind `config.listen` (port 0: any free port) and serve in a task; returns the bound address
/// at once. Same errors as [`serve`].
pub async fn spawn(
    config: ApiConfig,
    deps: ApiDeps,
    shutdown: CancellationToken,
) -> Result<RunningApi> {
    config.validate().map_err(Error::Config)?;
    if let Some(inventory) = &deps.inventory
        && !inventory::valid_keyspace(&inventory.keyspace)
    {
        return Err(Error::Config(vec![format!(
            "inventory keyspace {:?} is not a plain CQL identifier",
            inventory.keyspace
        )]));
    }
    let metrics = metrics::Metrics::register(&deps.registry)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: config.listen,
        source,
    })?;
    // Expired Idempotency-Keys: purged until shutdown; a failed round is retried, never fatal.
    tokio::spawn(idempotency::retention::run_purge(
        idempotency::retention::KeyStores {
            orders: deps.pool.clone(),
            ledger: deps.ledger.clone(),
        },
        idempotency::retention::Retention::from_config(&config),
        metrics.idempotency_keys_purged.clone(),
        shutdown.clone(),
    ));
    let app = routes::App::new(routes::Inner {
        in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
        token_hashes: routes::token_hashes(&config.auth_tokens),
        config,
        producer: deps.producer,
        codec: deps.codec,
        pool: deps.pool,
        ledger: deps.ledger,
        inventory: deps.inventory.map(inventory::Inventory::new),
        finance: deps.finance,
        registry: deps.registry,
        ready: deps.ready,
        metrics,
    });
    let router = routes::router(app.clone()).merge(dashboard::router(app, shutdown.clone()));
    tracing::info!(%addr, "ingest api listening");
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .map_err(Error::Serve)
    });
    Ok(RunningApi { addr, task })
}
