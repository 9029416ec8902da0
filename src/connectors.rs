//! `keel connectors …`: Keel's Debezium connectors on Kafka Connect.
//!
//! Keel's connectors are the outbox connectors of `[outbox].mode = "debezium"`
//! (`<application_id>-order-outbox` on MariaDB, `<application_id>-payment-outbox` on
//! PostgreSQL, `keel_connectors::outbox`), with `[carts].source = "cdc"` the carts connector,
//! and with `[connectors].ledger = true` the reconciliation role's ledger connector
//! (`<application_id>-ledger-cdc`, `src/reconciliation.rs`). Commands that take connector names
//! act on Keel's connectors when given none.
//!
//! - `register`: creates what the connectors need first (the event topics with
//!   `[topics].partitions`, the MariaDB schema history topic — one partition, delete cleanup,
//!   unlimited retention —, the PostgreSQL heartbeat table and publication of the payment outbox
//!   connector; for the ledger connector what the reconciliation role prepares at its start: its
//!   heartbeat table and CDC topics, while its publication is Debezium's own, `filtered`
//!   autocreate, so no publication is made for it), then PUTs each
//!   configuration (create or update: registering twice changes nothing) and waits until the
//!   connector and its tasks are RUNNING, or fails with the task's trace, shortened.
//! - `status`: connector and task states with their errors; for a PostgreSQL connector also
//!   its replication slot (missing, or invalidated: `wal_status = lost`). Exits 1 when anything
//!   is FAILED, not registered, or a slot is missing or lost (Debezium would otherwise create a
//!   new slot and skip what the old one held).
//! - `pause`, `resume`, `restart` (connector and all tasks), `delete` (a PostgreSQL
//!   connector's replication slot is dropped with it, so it no longer holds WAL).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Subcommand;
use keel_connectors::outbox::{self, PgHeartbeat, SchemaHistoryTopic};
use keel_connectors::{ConnectClient, ConnectorConfig, MySqlFlavor, MySqlSource, PostgresSource};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use serde::Deserialize;

use crate::config::{KeelConfig, OutboxMode};

/// `[connectors]`: the outbox connectors of `[outbox].mode = "debezium"`. Durations in ms.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectorsSection {
    /// With `[outbox].mode = "debezium"`, the process hosting the `relay` role registers the
    /// outbox connectors (idempotent) before it starts, and fails to start if they do not run.
    pub register_on_start: bool,
    /// How long `register` waits for a connector and its tasks to run.
    pub register_timeout_ms: u64,
    /// Debezium's logical server name after `[topics].prefix`; the connectors use
    /// `<prefix><server_name>.orders` and `<prefix><server_name>.payments` (the MariaDB schema
    /// history topic is `<prefix><server_name>.orders.schema-history`).
    pub server_name: String,
    /// The MariaDB replica id of the order outbox connector; default: derived from its name.
    pub order_server_id: Option<u32>,
    /// The replication slot (and publication) of the payment outbox connector; default:
    /// `<application_id>_payment_outbox`, made a valid slot name.
    pub slot_name: Option<String>,
    /// How often the PostgreSQL connector writes its heartbeat row and confirms its position.
    pub heartbeat_interval_ms: u64,
    /// How often `keel run` checks that the connectors it registered for its roles still run
    /// (`src/connector_watch.rs`: log, `keel_connector_running`, `/ready`).
    pub watch_interval_ms: u64,
    /// `keel connectors` also manages the reconciliation role's ledger connector
    /// (`[reconciliation]`), e.g. to register it ahead of `keel run --roles …,reconciliation`
    /// (which registers it too) or see it in `status`. Default false: it takes a replication
    /// slot, so only a deployment that runs the reconciliation role wants it.
    pub ledger: bool,
}

impl Default for ConnectorsSection {
    fn default() -> Self {
        Self {
            register_on_start: true,
            register_timeout_ms: 120_000,
            server_name: "outbox".to_owned(),
            order_server_id: None,
            slot_name: None,
            heartbeat_interval_ms: 10_000,
            watch_interval_ms: 10_000,
            ledger: false,
        }
    }
}

impl ConnectorsSection {
    /// Every problem of the section.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(slot) = &self.slot_name
            && !outbox::valid_slot_name(slot)
        {
            out.push(format!(
                "connectors.slot_name = {slot:?} must be 1-63 lower-case letters, digits or '_'"
            ));
        }
        if self.heartbeat_interval_ms == 0 {
            out.push("connectors.heartbeat_interval_ms must be above 0".to_owned());
        }
        if self.register_timeout_ms == 0 {
            out.push("connectors.register_timeout_ms must be above 0".to_owned());
        }
        if self.watch_interval_ms == 0 {
            out.push("connectors.watch_interval_ms must be above 0".to_owned());
        }
        out
    }
}

/// `keel connectors <action>`.
#[derive(Debug, Subcommand)]
pub enum ConnectorsAction {
    /// Installed connector plugins.
    Plugins,
    /// Registered connectors.
    List,
    /// Register Keel's connectors (create or update) and wait until they run.
    Register,
    /// Connector and task states with their errors, and PostgreSQL slots; exit 1 on a failure.
    Status { names: Vec<String> },
    /// Pause connectors (they keep their offsets).
    Pause { names: Vec<String> },
    /// Resume paused connectors.
    Resume { names: Vec<String> },
    /// Restart connectors and all their tasks.
    Restart { names: Vec<String> },
    /// Delete connectors; a PostgreSQL connector's replication slot is dropped too.
    Delete { names: Vec<String> },
}

/// A URL's parts as a connector needs them.
struct Db {
    host: String,
    port: u16,
    user: String,
    password: String,
    database: String,
}

fn db(url: &str, key: &str, default_port: u16) -> anyhow::Result<Db> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("{key} {url:?} is not a URL"))?;
    let database = parsed.path().trim_start_matches('/').to_owned();
    anyhow::ensure!(!database.is_empty(), "{key} names no database");
    Ok(Db {
        host: parsed.host_str().unwrap_or("127.0.0.1").to_owned(),
        port: parsed.port().unwrap_or(default_port),
        user: parsed.username().to_owned(),
        password: parsed.password().unwrap_or_default().to_owned(),
        database,
    })
}

/// The order outbox connector (`<application_id>-order-outbox`).
pub fn order_outbox(config: &KeelConfig) -> anyhow::Result<ConnectorConfig> {
    let my = db(&config.mysql.url, "mysql.url", 3306)?;
    let name = format!("{}-order-outbox", config.streams.application_id);
    let source = MySqlSource {
        server_id: config
            .connectors
            .order_server_id
            .unwrap_or_else(|| outbox::stable_server_id(&name)),
        name,
        flavor: MySqlFlavor::MariaDb,
        host: my.host,
        port: my.port,
        user: my.user,
        password: my.password,
        topic_prefix: format!(
            "{}{}.orders",
            config.topics.prefix, config.connectors.server_name
        ),
        databases: Vec::new(),
        tables: Vec::new(),
        kafka_bootstrap: config.kafka.bootstrap_servers.clone(),
        snapshot_mode: "initial".to_owned(),
    };
    Ok(outbox::order_outbox(&source, &my.database))
}

/// The replication slot (and publication) of the payment outbox connector.
pub fn payment_slot(config: &KeelConfig) -> String {
    config.connectors.slot_name.clone().unwrap_or_else(|| {
        outbox::slot_name_from(&format!("{}_payment_outbox", config.streams.application_id))
    })
}

/// The payment outbox connector (`<application_id>-payment-outbox`).
pub fn payment_outbox(config: &KeelConfig) -> anyhow::Result<ConnectorConfig> {
    let pg = db(&config.postgres.url, "postgres.url", 5432)?;
    let slot = payment_slot(config);
    let source = PostgresSource {
        name: format!("{}-payment-outbox", config.streams.application_id),
        host: pg.host,
        port: pg.port,
        user: pg.user,
        password: pg.password,
        database: pg.database,
        topic_prefix: format!(
            "{}{}.payments",
            config.topics.prefix, config.connectors.server_name
        ),
        tables: Vec::new(),
        slot_name: slot.clone(),
        publication_name: slot,
        publication_mode: keel_connectors::PublicationMode::Disabled,
        snapshot_mode: "initial".to_owned(),
    };
    Ok(outbox::payment_outbox(
        &source,
        &PgHeartbeat {
            interval_ms: config.connectors.heartbeat_interval_ms,
        },
    ))
}

/// The outbox connectors (`[outbox].mode = "debezium"`).
pub fn outbox_connectors(config: &KeelConfig) -> anyhow::Result<Vec<ConnectorConfig>> {
    Ok(vec![order_outbox(config)?, payment_outbox(config)?])
}

/// Keel's connectors as configured: the outbox connectors with `[outbox].mode = "debezium"`,
/// the carts connector with `[carts].source = "cdc"`, the ledger connector with
/// `[connectors].ledger = true`.
pub fn keel_connectors(config: &KeelConfig) -> anyhow::Result<Vec<ConnectorConfig>> {
    let mut out = Vec::new();
    if config.outbox.mode == OutboxMode::Debezium {
        out.extend(outbox_connectors(config)?);
    }
    if let Some((_, carts)) = crate::run::carts_cdc(config)? {
        out.push(carts);
    }
    if config.connectors.ledger {
        out.push(crate::reconciliation::ledger_connector(config)?.0);
    }
    Ok(out)
}

/// The outbox connectors of this configuration (`planned`, by name) that are `registered` in
/// Kafka Connect, in `planned` order.
fn second_publishers(planned: &[String], registered: &[String]) -> Vec<String> {
    planned
        .iter()
        .filter(|name| registered.contains(name))
        .cloned()
        .collect()
}

/// Why `keel run` refuses to relay while `names` (this configuration's outbox connectors) are
/// registered on Connect at `url`, and the two ways out.
fn second_publisher_error(names: &[String], url: &str) -> String {
    format!(
        "refusing to start the outbox relay: Keel's Debezium outbox connectors for this \
         configuration are registered in Kafka Connect ({url}): {}. They publish the same \
         outbox rows ([outbox].mode = \"debezium\", e.g. left by `make demo`), so the relay \
         ([outbox].mode = \"relay\") would publish every outbox row twice. Either let the \
         connectors publish: KEEL__OUTBOX__MODE=debezium keel run; or remove them first: \
         keel connectors delete {}",
        names.join(", "),
        names.join(" ")
    )
}

/// `keel run` with the relay role in `[outbox].mode = "relay"`: fails when this
/// configuration's own outbox connectors (`outbox_connectors`) are registered in Kafka Connect,
/// since both would publish every outbox row. Connect unreachable (or answering an error): a
/// warning, and the relay starts (relay mode does not depend on Connect). Other modes: `Ok`.
pub async fn refuse_second_outbox_publisher(config: &KeelConfig) -> anyhow::Result<()> {
    if config.outbox.mode != OutboxMode::Relay {
        return Ok(());
    }
    let planned: Vec<String> = outbox_connectors(config)?
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    let registered = match ConnectClient::new(&config.connect.url).connectors().await {
        Ok(names) => names,
        Err(e) => {
            tracing::warn!(
                error = %e,
                connectors = planned.join(","),
                "could not check Kafka Connect for Debezium outbox connectors of this \
                 configuration (they would publish the outbox a second time); the relay starts"
            );
            return Ok(());
        }
    };
    let both = second_publishers(&planned, &registered);
    anyhow::ensure!(
        both.is_empty(),
        "{}",
        second_publisher_error(&both, &config.connect.url)
    );
    Ok(())
}

/// The `registered` connectors named `<application_id>-…`, sorted: what `status` shows when
/// no connector is named and none configured.
fn of_application(application_id: &str, registered: Vec<String>) -> Vec<String> {
    let prefix = format!("{application_id}-");
    let mut out: Vec<String> = registered
        .into_iter()
        .filter(|name| name.starts_with(&prefix))
        .collect();
    out.sort();
    out
}

/// Whether `register` makes the publication of PostgreSQL connector `settings` itself: only
/// when the connector does not create its own (`publication.autocreate.mode = disabled`, the
/// payment outbox connector's). A `filtered` (or `all_tables`) publication is Debezium's: the
/// ledger connector's lists exactly its tables, and adding the outbox's heartbeat table to it
/// would stream changes the reconciliation does not read.
fn keel_makes_publication(settings: &std::collections::BTreeMap<String, String>) -> bool {
    is_postgres(settings)
        && settings
            .get("publication.autocreate.mode")
            .is_none_or(|mode| mode == "disabled")
}

fn is_postgres(settings: &std::collections::BTreeMap<String, String>) -> bool {
    settings.get("connector.class").map(String::as_str)
        == Some("io.debezium.connector.postgresql.PostgresConnector")
}

/// Creates the schema history topic `topic` if missing (one partition, delete cleanup,
/// unlimited retention).
async fn ensure_history_topic(
    config: &KeelConfig,
    topic: &SchemaHistoryTopic,
) -> anyhow::Result<()> {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.kafka.bootstrap_servers);
    for (k, v) in &config.kafka.client {
        client.set(k, v);
    }
    let admin: AdminClient<DefaultClientContext> = client.create()?;
    let mut new = NewTopic::new(
        &topic.name,
        SchemaHistoryTopic::PARTITIONS,
        TopicReplication::Fixed(config.topics.replication_factor),
    );
    for (k, v) in SchemaHistoryTopic::settings() {
        new = new.set(k, v);
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics([&new], &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("cannot create schema history topic {name}: {code}"),
        }
    }
    Ok(())
}

/// The heartbeat table and the publication of the payment outbox connector `connector`.
async fn prepare_publication(pg: &sqlx::PgPool, connector: &ConnectorConfig) -> anyhow::Result<()> {
    let publication = connector
        .get("publication.name")
        .context("a PostgreSQL outbox connector names its publication")?;
    anyhow::ensure!(
        outbox::valid_slot_name(publication),
        "publication name {publication:?} is not a plain identifier"
    );
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)")
            .bind(publication)
            .fetch_one(pg)
            .await?;
    for statement in outbox::publication_statements(publication, exists) {
        // Names checked above (`valid_slot_name`) or constants.
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone()))
            .execute(pg)
            .await
            .with_context(|| {
                format!("preparing PostgreSQL for the outbox connector: {statement}")
            })?;
    }
    Ok(())
}

/// Registers `connectors` (create or update) after creating what they need, and waits until
/// each runs. An outbox connector's tables are migrated first, so they exist.
pub async fn register(config: &KeelConfig, connectors: &[ConnectorConfig]) -> anyhow::Result<()> {
    crate::run::ensure_topics(config).await?;
    let connect = ConnectClient::new(&config.connect.url);
    let mut ledger = None;
    for connector in connectors {
        if let Some(history) = SchemaHistoryTopic::of(connector) {
            ensure_history_topic(config, &history).await?;
        }
        if connector
            .get("table.include.list")
            .is_some_and(|t| t.ends_with(outbox::ORDER_OUTBOX))
        {
            crate::run::orders_pool(config).await?.close().await;
        }
        if config.connectors.ledger
            && connector.name() == crate::reconciliation::connector_name(config)
        {
            // The reconciliation role's own preparation: heartbeat table, CDC topics with
            // `[topics].partitions` (co-partitioned with the decisions), PUT, wait running.
            crate::reconciliation::prepare(config).await?;
            continue;
        }
        if keel_makes_publication(connector.settings()) {
            let pool = match &ledger {
                Some(pool) => pool,
                None => {
                    let pool = crate::run::ledger_pool(config).await?;
                    keel_processors::payment::migrate(&pool).await?;
                    ledger.insert(pool)
                }
            };
            prepare_publication(pool, connector).await?;
        }
        connect
            .apply(connector)
            .await
            .with_context(|| format!("registering connector {}", connector.name()))?;
    }
    let timeout = Duration::from_millis(config.connectors.register_timeout_ms);
    for connector in connectors {
        connect
            .ensure_running(connector.name(), timeout)
            .await
            .with_context(|| format!("connector {} is not running", connector.name()))?;
        tracing::info!(connector = connector.name(), "connector running");
    }
    Ok(())
}

/// What `status` found about one PostgreSQL replication slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    Missing,
    /// `wal_status = lost`: the WAL it needed is gone; the connector cannot continue from it.
    Lost,
    Present {
        active: bool,
        wal_status: String,
    },
}

impl SlotState {
    fn is_problem(&self) -> bool {
        matches!(self, Self::Missing | Self::Lost)
    }
}

async fn slot_state(pg: &sqlx::PgPool, slot: &str) -> anyhow::Result<SlotState> {
    let row: Option<(bool, Option<String>)> =
        sqlx::query_as("SELECT active, wal_status FROM pg_replication_slots WHERE slot_name = $1")
            .bind(slot)
            .fetch_optional(pg)
            .await?;
    Ok(match row {
        None => SlotState::Missing,
        Some((_, Some(wal))) if wal == "lost" => SlotState::Lost,
        Some((active, wal)) => SlotState::Present {
            active,
            wal_status: wal.unwrap_or_default(),
        },
    })
}

/// Drops the replication slot `slot` once no connection streams from it (a deleted
/// connector's task takes a moment to stop). Missing already: nothing to do.
async fn drop_slot(pg: &sqlx::PgPool, slot: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        match slot_state(pg, slot).await? {
            SlotState::Missing => return Ok(()),
            SlotState::Present { active: true, .. }
                if start.elapsed() < Duration::from_secs(60) =>
            {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            SlotState::Present { active: true, .. } => {
                anyhow::bail!("replication slot {slot} is still in use after 60 s; not dropped")
            }
            SlotState::Present { .. } | SlotState::Lost => {
                match sqlx::query("SELECT pg_drop_replication_slot($1)")
                    .bind(slot)
                    .execute(pg)
                    .await
                {
                    Ok(_) => return Ok(()),
                    // Became active or vanished in between: look again.
                    Err(e) if start.elapsed() < Duration::from_secs(60) => {
                        tracing::debug!(slot, error = %e, "slot not dropped yet");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => return Err(e).with_context(|| format!("dropping slot {slot}")),
                }
            }
        }
    }
}

/// The names given, or Keel's connectors.
fn names_or_keel(config: &KeelConfig, names: Vec<String>) -> anyhow::Result<Vec<String>> {
    if !names.is_empty() {
        return Ok(names);
    }
    let keel: Vec<String> = keel_connectors(config)?
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    anyhow::ensure!(
        !keel.is_empty(),
        "no connector named and none configured: Keel's connectors are the outbox connectors \
         ([outbox].mode = \"debezium\"), the carts connector ([carts].source = \"cdc\") and \
         the ledger connector ([connectors].ledger = true)"
    );
    Ok(keel)
}

/// What `status` adds under a binlog connector that failed on a binlog gap
/// (`ConnectorStatus::is_binlog_gap`): what it means and what to do.
const BINLOG_GAP_HELP: &str = "  BINLOG GAP: the binlog position this connector stored was \
purged from the MariaDB/MySQL server (binlog expiry or PURGE BINARY LOGS while the connector \
was stopped or behind).
  Changes written since then cannot be streamed any more, and nothing was re-snapshotted \
(snapshot.mode = initial): their events are missing downstream until you act.
  Do not switch to snapshot.mode = when_needed. Re-snapshot deliberately: \
docs/operations.md, \"Binlog gap: re-snapshot deliberately\".";

/// One connector's status for people; `false` when something is wrong.
async fn print_status(
    connect: &ConnectClient,
    config: &KeelConfig,
    planned: &[ConnectorConfig],
    ledger: &mut Option<sqlx::PgPool>,
    name: &str,
) -> anyhow::Result<bool> {
    let status = match connect.status(name).await {
        Ok(s) => s,
        Err(keel_connectors::Error::NotFound(_)) => {
            println!("{name}: NOT REGISTERED");
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    };
    let mut ok = !status.is_failed();
    println!(
        "{name}: {} on {}",
        status.summary(),
        status.connector.worker_id
    );
    if let Some(trace) = status.short_failure() {
        for line in trace.lines() {
            println!("  error: {line}");
        }
    }
    // The settings (slot, class): from the stored config, else from Keel's own plan.
    let settings = match connect.config(name).await {
        Ok(s) => s,
        Err(_) => planned
            .iter()
            .find(|c| c.name() == name)
            .map(|c| c.settings().clone())
            .unwrap_or_default(),
    };
    if status.is_binlog_gap() && !is_postgres(&settings) {
        println!("{BINLOG_GAP_HELP}");
    }
    if is_postgres(&settings)
        && let Some(slot) = settings.get("slot.name")
    {
        let pool = match ledger {
            Some(pool) => pool,
            None => ledger.insert(crate::run::ledger_pool(config).await?),
        };
        let state = slot_state(pool, slot).await?;
        match &state {
            SlotState::Missing => println!(
                "  slot {slot}: MISSING — the connector's position is gone; changes since it \
                 was lost are not streamed (re-register deliberately, expecting a re-snapshot)"
            ),
            SlotState::Lost => println!(
                "  slot {slot}: INVALIDATED (wal_status lost) — WAL the connector needed was \
                 removed; events were lost"
            ),
            SlotState::Present { active, wal_status } => println!(
                "  slot {slot}: {} wal_status {wal_status}",
                if *active { "active" } else { "inactive" }
            ),
        }
        ok &= !state.is_problem();
    }
    Ok(ok)
}

/// Deletes `name`; a PostgreSQL connector's slot is dropped too (from its stored config, or
/// Keel's plan when the connector is gone already).
async fn delete(
    connect: &ConnectClient,
    config: &KeelConfig,
    planned: &[ConnectorConfig],
    name: &str,
) -> anyhow::Result<()> {
    let settings = match connect.config(name).await {
        Ok(s) => Some(s),
        Err(keel_connectors::Error::NotFound(_)) => planned
            .iter()
            .find(|c| c.name() == name)
            .map(|c| c.settings().clone()),
        Err(e) => return Err(e.into()),
    };
    connect.delete(name).await?;
    if let Some(settings) = settings
        && is_postgres(&settings)
        && let Some(slot) = settings.get("slot.name")
    {
        let pool = crate::run::ledger_pool(config).await?;
        drop_slot(&pool, slot).await?;
        println!("{name}: deleted, replication slot {slot} dropped");
    } else {
        println!("{name}: deleted");
    }
    Ok(())
}

/// `keel connectors <action>`.
pub async fn run(config: &KeelConfig, action: ConnectorsAction) -> anyhow::Result<ExitCode> {
    let connect = ConnectClient::new(&config.connect.url);
    match action {
        ConnectorsAction::Plugins => {
            for p in connect.plugins().await? {
                println!(
                    "{:<8} {:<60} {}",
                    p.kind,
                    p.class,
                    p.version.unwrap_or_default()
                );
            }
        }
        ConnectorsAction::List => {
            for name in connect.connectors().await? {
                println!("{name}");
            }
        }
        ConnectorsAction::Register => {
            let connectors = keel_connectors(config)?;
            anyhow::ensure!(
                !connectors.is_empty(),
                "nothing to register: set [outbox].mode = \"debezium\", [carts].source = \"cdc\" \
                 or [connectors].ledger = true"
            );
            register(config, &connectors).await?;
            for c in &connectors {
                println!("{}: RUNNING", c.name());
            }
        }
        ConnectorsAction::Status { names } => {
            let planned = keel_connectors(config)?;
            let app = &config.streams.application_id;
            let found = if names.is_empty() && planned.is_empty() {
                of_application(app, connect.connectors().await?)
            } else {
                Vec::new()
            };
            let names = if found.is_empty() {
                names_or_keel(config, names)?
            } else {
                println!(
                    "none configured here ([outbox].mode = \"relay\", no carts or ledger \
                     connector): showing the connectors registered in Kafka Connect named \
                     {app}-*"
                );
                found
            };
            let mut ledger = None;
            let mut ok = true;
            for name in names {
                ok &= print_status(&connect, config, &planned, &mut ledger, &name).await?;
            }
            if !ok {
                return Ok(ExitCode::FAILURE);
            }
        }
        ConnectorsAction::Pause { names } => {
            for name in names_or_keel(config, names)? {
                connect.pause(&name).await?;
                println!("{name}: pause requested");
            }
        }
        ConnectorsAction::Resume { names } => {
            for name in names_or_keel(config, names)? {
                connect.resume(&name).await?;
                println!("{name}: resume requested");
            }
        }
        ConnectorsAction::Restart { names } => {
            for name in names_or_keel(config, names)? {
                connect.restart(&name).await?;
                println!("{name}: restart requested (connector and tasks)");
            }
        }
        ConnectorsAction::Delete { names } => {
            let planned = keel_connectors(config)?;
            for name in names_or_keel(config, names)? {
                delete(&connect, config, &planned, &name).await?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_router_writes_the_relays_event_id_header() {
        assert_eq!(
            outbox::EVENT_ID_HEADER,
            keel_processors::outbox::EVENT_ID_HEADER
        );
    }

    #[test]
    fn the_relay_refuses_only_this_configurations_registered_outbox_connectors() {
        let planned = ["a-order-outbox".to_owned(), "a-payment-outbox".to_owned()];
        let registered = [
            "a-payment-outbox".to_owned(),
            "b-order-outbox".to_owned(),
            "a-order-outbox".to_owned(),
        ];
        let both = second_publishers(&planned, &registered);
        assert_eq!(both, ["a-order-outbox", "a-payment-outbox"]);
        assert!(second_publishers(&planned, &registered[1..2]).is_empty());
        let message = second_publisher_error(&both, "http://connect:8083");
        for part in [
            "a-order-outbox, a-payment-outbox",
            "twice",
            "KEEL__OUTBOX__MODE=debezium",
            "keel connectors delete a-order-outbox a-payment-outbox",
        ] {
            assert!(message.contains(part), "{part:?} in {message}");
        }
    }

    #[test]
    fn status_falls_back_to_the_applications_registered_connectors() {
        let registered = vec![
            "shop-payment-outbox".to_owned(),
            "shopper-order-outbox".to_owned(),
            "other-order-outbox".to_owned(),
            "shop-order-outbox".to_owned(),
        ];
        assert_eq!(
            of_application("shop", registered),
            ["shop-order-outbox", "shop-payment-outbox"]
        );
        assert!(of_application("shop", vec!["shopper-x".to_owned()]).is_empty());
    }

    #[test]
    fn outbox_connectors_are_named_after_the_application_and_isolated_by_prefix() {
        let mut config = KeelConfig::load(None).expect("defaults");
        config.streams.application_id = "shop-a".into();
        config.topics.prefix = "t1.".into();
        let [orders, payments] =
            <[ConnectorConfig; 2]>::try_from(outbox_connectors(&config).expect("connectors"))
                .expect("two");
        assert_eq!(orders.name(), "shop-a-order-outbox");
        assert_eq!(orders.get("topic.prefix"), Some("t1.outbox.orders"));
        assert_eq!(
            orders.get("schema.history.internal.kafka.topic"),
            Some("t1.outbox.orders.schema-history")
        );
        assert_eq!(orders.get("table.include.list"), Some("keel.order_outbox"));
        assert_eq!(payments.name(), "shop-a-payment-outbox");
        assert_eq!(payments.get("slot.name"), Some("shop_a_payment_outbox"));
        assert_eq!(
            payments.get("publication.name"),
            Some("shop_a_payment_outbox")
        );
        assert_eq!(payments.get("database.dbname"), Some("keel"));
        assert!(config.connectors.problems().is_empty());
        config.connectors.slot_name = Some("Bad-Slot".into());
        assert_eq!(config.connectors.problems().len(), 1);
    }

    #[test]
    fn the_ledger_connector_is_keels_only_when_connectors_ledger_says_so() {
        let mut config = KeelConfig::load(None).expect("defaults");
        config.streams.application_id = "shop-b".into();
        config.outbox.mode = OutboxMode::Debezium;
        let names = |config: &KeelConfig| -> Vec<String> {
            keel_connectors(config)
                .expect("connectors")
                .iter()
                .map(|c| c.name().to_owned())
                .collect()
        };
        assert!(!config.connectors.ledger, "off by default");
        assert_eq!(
            names(&config),
            [
                "shop-b-order-outbox",
                "shop-b-payment-outbox",
                "shop-b-carts-cdc"
            ],
            "the carts connector of the default cart check ([carts].source = \"cdc\")"
        );
        config.carts.source = crate::config::CartSource::Api;
        assert_eq!(
            names(&config),
            ["shop-b-order-outbox", "shop-b-payment-outbox"]
        );
        config.connectors.ledger = true;
        assert_eq!(
            names(&config),
            [
                "shop-b-order-outbox",
                "shop-b-payment-outbox",
                "shop-b-ledger-cdc"
            ]
        );
        let connectors = keel_connectors(&config).expect("connectors");
        let ledger = connectors.last().expect("the ledger connector");
        assert_eq!(
            ledger.name(),
            crate::reconciliation::connector_name(&config),
            "register() recognises it by this name"
        );
        // The outbox connector's publication is Keel's; the ledger's is Debezium's (filtered).
        assert_eq!(ledger.get("publication.autocreate.mode"), Some("filtered"));
        assert!(!keel_makes_publication(ledger.settings()));
        assert!(keel_makes_publication(
            payment_outbox(&config).expect("payment outbox").settings()
        ));
        assert!(!keel_makes_publication(
            order_outbox(&config).expect("order outbox").settings()
        ));
    }

    #[test]
    #[allow(
        clippy::result_large_err,
        reason = "figment::Jail closures must return figment::Error by value"
    )]
    fn the_ledger_switch_is_a_setting() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("KEEL__CONNECTORS__LEDGER", "true");
            let config = KeelConfig::load(None).map_err(|e| e.to_string())?;
            assert!(config.connectors.ledger);
            Ok(())
        });
    }
}
