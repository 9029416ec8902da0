//! The `reconciliation` role of `keel run`: the payment ledger's CDC connector
//! (`keel_connectors::ledger`) and the reconciliation stream application
//! (`<streams.application_id>-reconciliation`, `keel_processors::reconciliation`).
//!
//! At start the role (1) creates the heartbeat table in the ledger database if missing,
//! (2) creates the CDC topics `<topics.prefix><server_name>.public.payments` and
//! `….public.<heartbeat_table>` with `[topics].partitions` (they are read together with
//! `order.decisions.v1` and must be co-partitioned with it; Debezium would create them with one
//! partition), (3) PUTs the connector (idempotent) and waits until it runs, then (4) starts the
//! stream application, whose view the API's `GET /finance/reconciliation` reads when the `api`
//! role runs in the same process.
//!
//! Not a default role: it needs Kafka Connect with the Debezium PostgreSQL plugin and a
//! replication slot in the ledger database (`wal_level = logical`), which `keel stack up`
//! provides but a plain PostgreSQL does not. Start it with `keel run --roles …,reconciliation`.

use std::time::Duration;

use anyhow::Context as _;
use keel_connectors::ledger::{self, LedgerCdc};
use keel_connectors::{ConnectClient, ConnectorConfig, PostgresSource, PublicationMode};
use keel_processors::reconciliation::{
    self, LedgerTopics, ReconciliationMetrics, ReconciliationView,
};

use crate::config::KeelConfig;

/// The ledger connector's name: `[reconciliation].connector_name`, default
/// `<streams.application_id>-ledger-cdc`.
pub fn connector_name(config: &KeelConfig) -> String {
    config
        .reconciliation
        .connector_name
        .clone()
        .unwrap_or_else(|| format!("{}-ledger-cdc", config.streams.application_id))
}

/// The slot (and, unless configured apart, publication) name: a PostgreSQL identifier from the
/// connector name.
fn slot_name(config: &KeelConfig) -> String {
    config.reconciliation.slot_name.clone().unwrap_or_else(|| {
        connector_name(config)
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect()
    })
}

/// The ledger connector and the topics it writes, for this configuration. What `keel
/// connectors register` would call to include it.
pub fn ledger_connector(config: &KeelConfig) -> anyhow::Result<(ConnectorConfig, LedgerTopics)> {
    let url = reqwest::Url::parse(&config.postgres.url)
        .with_context(|| format!("postgres.url {:?} is not a URL", config.postgres.url))?;
    let database = url.path().trim_start_matches('/').to_owned();
    anyhow::ensure!(
        !database.is_empty(),
        "postgres.url names no database; the ledger connector needs one"
    );
    let r = &config.reconciliation;
    let name = connector_name(config);
    let slot = slot_name(config);
    let source = PostgresSource {
        name: name.clone(),
        host: url.host_str().unwrap_or("127.0.0.1").to_owned(),
        port: url.port().unwrap_or(5432),
        user: url.username().to_owned(),
        password: url.password().unwrap_or_default().to_owned(),
        database,
        topic_prefix: format!("{}{}", config.topics.prefix, r.server_name),
        tables: Vec::new(),
        slot_name: slot.clone(),
        publication_name: r.publication_name.clone().unwrap_or(slot),
        publication_mode: PublicationMode::Filtered,
        snapshot_mode: "initial".to_owned(),
    };
    let cdc = LedgerCdc {
        schema: "public".to_owned(),
        heartbeat_table: r.heartbeat_table.clone(),
        heartbeat_interval_ms: r.heartbeat_interval_ms,
    };
    let (payments, heartbeats) =
        ledger::ledger_topics(&source.topic_prefix, &cdc.schema, &cdc.heartbeat_table);
    Ok((
        ledger::ledger_tables(
            &source,
            &cdc,
            &keel_connectors::RegistryValues::from_registry_url(&config.registry.url),
        ),
        LedgerTopics {
            payments,
            heartbeats,
            connector: name,
        },
    ))
}

/// Steps (1)–(3) of the module docs: heartbeat table, CDC topics, connector running.
pub async fn prepare(config: &KeelConfig) -> anyhow::Result<LedgerTopics> {
    let (connector, topics) = ledger_connector(config)?;
    let pool = crate::run::ledger_pool(config).await?;
    keel_processors::payment::migrate(&pool).await?;
    // The table name is checked by `[reconciliation]` validation (lower-case identifier).
    sqlx::raw_sql(sqlx::AssertSqlSafe(ledger::heartbeat_table_ddl(
        "public",
        &config.reconciliation.heartbeat_table,
    )))
    .execute(&pool)
    .await
    .context("creating the CDC heartbeat table in the ledger database")?;
    pool.close().await;
    crate::run::create_topics(config, &[&topics.payments, &topics.heartbeats]).await?;
    let connect = ConnectClient::new(&config.connect.url);
    connect
        .apply(&connector)
        .await
        .with_context(|| format!("registering connector {}", connector.name()))?;
    connect
        .ensure_running(
            connector.name(),
            Duration::from_millis(config.reconciliation.register_timeout_ms),
        )
        .await
        .with_context(|| format!("connector {} is not running", connector.name()))?;
    tracing::info!(
        connector = connector.name(),
        "payment ledger CDC connector running"
    );
    Ok(topics)
}

/// The reconciliation stream application's topology, with its view registered in `registry`.
pub fn topology(
    config: &KeelConfig,
    format: &keel_processors::format::Format,
    topics: &LedgerTopics,
    registry: &prometheus::Registry,
) -> anyhow::Result<(keel_topology::Topology, ReconciliationView)> {
    let view = ReconciliationView::new();
    let metrics = ReconciliationMetrics::register(registry, &view)?;
    let topology = reconciliation::topology(
        format,
        &config.topics.names(),
        topics,
        config.reconciliation.settings(),
        view.clone(),
        metrics,
    )?;
    Ok((topology, view))
}
