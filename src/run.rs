//! `keel run`: one process hosting the roles of Keel — by default all of them (what a newcomer
//! starts), or any subset with `--roles`, so a shop runs each role as its own horizontally scaled
//! deployment (instances of one application id split the partitions).
//!
//! Roles: `api` (HTTP ingest), `saga` and `inventory` (stream applications
//! `<streams.application_id>-<role>` on the runtime), `payment` (payment service against the
//! PSP), `sinks` (order sink to MySQL, Cassandra mirror of inventory) and `relay` (outbox relays
//! with `[outbox].mode = "relay"`; with `"debezium"` it relays nothing and registers the outbox
//! connectors at start when `[connectors].register_on_start`, `src/connectors.rs`; in both
//! modes it deletes shipped outbox rows older than `[outbox].retention_ms`,
//! `src/outbox_cleanup.rs`).
//!
//! `reconciliation` (payment ledger CDC vs the saga's decisions, `src/reconciliation.rs`) is not
//! a default role: it registers a Debezium connector and takes a replication slot.
//!
//! `audit` (the invariant auditor, `keel_processors::audit`, application
//! `<streams.application_id>-audit`) is a role of its own, not part of `saga` or `inventory`:
//! it reads both of their outputs, so it must not share their fate (a bug in the saga must not
//! stop the process that reports it) and it scales on its own (usually one small instance). Not
//! a default role yet (it only reads topics; see docs/adr/0005-invariant-auditor.md).
//!
//! Start: the topics are created when missing (`[topics]`), then each role starts; SIGTERM or
//! SIGINT stops every role: the stream threads commit and close their stores, consumers finish
//! the record in hand and commit.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use keel_avro::Codec;
use keel_processors::format::Format;
use keel_processors::{inventory, saga, topics};
use keel_topology::{KafkaStreams, StreamsHandle};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{CartSource, KeelConfig, OutboxMode};

/// A part of Keel that `keel run` can host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Api,
    Saga,
    Inventory,
    Payment,
    Sinks,
    Relay,
    Reconciliation,
    Audit,
}

impl Role {
    pub const ALL: [Role; 8] = [
        Self::Api,
        Self::Saga,
        Self::Inventory,
        Self::Payment,
        Self::Sinks,
        Self::Relay,
        Self::Reconciliation,
        Self::Audit,
    ];

    /// What `keel run` hosts without `--roles`: every role but `reconciliation`, which needs a
    /// Debezium connector and a replication slot (`src/reconciliation.rs`).
    pub const DEFAULT: [Role; 6] = [
        Self::Api,
        Self::Saga,
        Self::Inventory,
        Self::Payment,
        Self::Sinks,
        Self::Relay,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Saga => "saga",
            Self::Inventory => "inventory",
            Self::Payment => "payment",
            Self::Sinks => "sinks",
            Self::Relay => "relay",
            Self::Reconciliation => "reconciliation",
            Self::Audit => "audit",
        }
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.name() == s.trim())
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|r| r.name()).collect();
                format!("unknown role {s:?}; roles are {}", names.join(", "))
            })
    }
}

/// With `[carts].source = "cdc"`: the cart service's CDC topics and the Debezium connector that
/// writes them (for the `mysql.url` database), else `None`.
pub fn carts_cdc(
    config: &KeelConfig,
) -> anyhow::Result<
    Option<(
        keel_processors::carts::CdcTopics,
        keel_connectors::ConnectorConfig,
    )>,
> {
    if config.carts.source != CartSource::Cdc {
        return Ok(None);
    }
    let url = reqwest::Url::parse(&config.mysql.url)
        .with_context(|| format!("mysql.url {:?} is not a URL", config.mysql.url))?;
    let database = url.path().trim_start_matches('/').to_owned();
    anyhow::ensure!(
        !database.is_empty(),
        "mysql.url names no database; the carts connector needs one"
    );
    let server = format!("{}{}", config.topics.prefix, config.carts.server_name);
    let name = format!("{}-carts-cdc", config.streams.application_id);
    // A stable replica id per connector name (FNV-1a), away from small hand-picked ids.
    let server_id = config.carts.server_id.unwrap_or_else(|| {
        let hash = name.bytes().fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        100_000 + hash % 1_000_000_000
    });
    let source = keel_connectors::MySqlSource {
        name,
        flavor: keel_connectors::MySqlFlavor::MariaDb,
        host: url.host_str().unwrap_or("127.0.0.1").to_owned(),
        port: url.port().unwrap_or(3306),
        user: url.username().to_owned(),
        password: url.password().unwrap_or_default().to_owned(),
        server_id,
        topic_prefix: server.clone(),
        databases: Vec::new(),
        tables: Vec::new(),
        kafka_bootstrap: config.kafka.bootstrap_servers.clone(),
        snapshot_mode: "initial".to_owned(),
    };
    let connector = keel_connectors::carts::cart_tables(
        &source,
        &database,
        &keel_connectors::RegistryValues::from_registry_url(&config.registry.url),
    );
    Ok(Some((
        keel_processors::carts::CdcTopics::new(&server, &database),
        connector,
    )))
}

/// Registers (PUT: create or update) the carts connector and waits until it runs. Errors name
/// the connector and Connect's URL, and say how to go on: start Connect, or opt out of the
/// default with `[carts].source = "api"`.
pub async fn register_carts_connector(
    config: &KeelConfig,
    connector: &keel_connectors::ConnectorConfig,
) -> anyhow::Result<()> {
    const OPT_OUT: &str = "or set [carts].source = \"api\" (KEEL__CARTS__SOURCE=api) to check \
                           carts in the API only, not the orders other producers write to Kafka";
    let connect = keel_connectors::ConnectClient::new(&config.connect.url);
    if let Err(e) = connect.apply(connector).await {
        let fix = match e {
            keel_connectors::Error::Unreachable { .. } => {
                "Start Kafka Connect (stack/keel-stack up, or keel stack up) and run again"
            }
            _ => "Fix what Connect says below (the connector needs the Debezium MySQL plugin)",
        };
        let context = format!(
            "registering the carts connector {} on Kafka Connect at {}: the cart check of \
             [carts].source = \"cdc\" (the default) streams the carts from MariaDB through \
             it. {fix}, {OPT_OUT}",
            connector.name(),
            config.connect.url
        );
        return Err(anyhow::Error::new(e).context(context));
    }
    connect
        .ensure_running(
            connector.name(),
            Duration::from_millis(config.carts.register_timeout_ms),
        )
        .await
        .with_context(|| {
            format!(
                "the carts connector {} is not running on Kafka Connect at {} (keel connectors \
                 status shows why; it needs MariaDB's row binlog and the Debezium MySQL plugin), \
                 {OPT_OUT}",
                connector.name(),
                config.connect.url
            )
        })?;
    tracing::info!(connector = connector.name(), "carts CDC connector running");
    Ok(())
}

/// Creates every topic of [`topics::ALL`] (with `[topics].prefix`) that does not exist yet, with
/// `[topics]` settings; with `[carts].source = "cdc"` also the carts CDC topics, so Debezium
/// does not create them with one partition (they must be co-partitioned with the checks).
pub async fn ensure_topics(config: &KeelConfig) -> anyhow::Result<()> {
    let mut names = config.topics.names().all();
    if let Some((cdc, _)) = carts_cdc(config)? {
        names.push(cdc.carts);
        names.push(cdc.cart_items);
    }
    // The plain consumers' dead letters (`<group id>-dlq`, `keel_processors::dead_letter`).
    for group in config.plain_consumer_group_ids() {
        names.push(keel_processors::dead_letter::topic_for(&group));
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    create_topics(config, &names).await
}

/// The locks a `keel run` holds for its life, one per role but the API:
/// `<state_dir>/<application_id>@<instance_id>.<role>.lock` (exclusive `flock`s, released when
/// the process ends, however it ends). A second `keel run` of the same role, application and
/// instance id on this machine would join that role's groups with the same static membership
/// (`group.instance.id`) and fence the running one (whose sinks then exit with
/// `FencedInstanceId`): it refuses to start instead, naming the lock. Processes with other
/// roles, or only the API, share an instance id freely.
fn lock_instance(
    config: &KeelConfig,
    roles: &BTreeSet<Role>,
) -> anyhow::Result<Vec<std::fs::File>> {
    let dir = &config.streams.state_dir;
    let instance = config.streams_for("saga").instance_id();
    let mut locks = Vec::new();
    if roles.iter().any(|r| *r != Role::Api) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the state directory {}", dir.display()))?;
    }
    for role in roles.iter().filter(|r| **r != Role::Api) {
        let path = dir.join(format!(
            "{}@{instance}.{}.lock",
            config.streams.application_id,
            role.name()
        ));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => locks.push(file),
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "another keel run with role {} of application {} and instance id {instance} is \
                 running on this machine (it holds {}): a second one would take over its \
                 consumer groups' static membership and fence it. Stop it first, or give this \
                 one another [streams].instance_id",
                role.name(),
                config.streams.application_id,
                path.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
    }
    Ok(locks)
}

/// Creates each of `topics` that does not exist yet with `[topics]` partitions and replication
/// (through `[kafka]`'s client settings); an existing topic is left as it is.
pub async fn create_topics(config: &KeelConfig, topics: &[&str]) -> anyhow::Result<()> {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.kafka.bootstrap_servers);
    for (k, v) in &config.kafka.client {
        client.set(k, v);
    }
    let admin: AdminClient<DefaultClientContext> = client.create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            NewTopic::new(
                t,
                config.topics.partitions,
                TopicReplication::Fixed(config.topics.replication_factor),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    tracing::info!(brokers = %config.kafka.bootstrap_servers, topics = topics.len(),
        "creating the topics that are missing");
    let created = admin.create_topics(&new, &opts).await.with_context(|| {
        format!(
            "creating Keel's topics on the brokers at {} ([kafka].bootstrap_servers): are they \
             running and reachable from here?",
            config.kafka.bootstrap_servers
        )
    })?;
    for result in created {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("cannot create topic {topic}: {code}"),
        }
    }
    let names: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
    let counts = tokio::task::spawn_blocking(move || {
        wait_until_listed(&admin, &names, TOPICS_LISTED_WITHIN)
    })
    .await??;
    let other: Vec<String> = counts
        .iter()
        .filter(|(_, n)| **n != config.topics.partitions)
        .map(|(topic, n)| format!("{topic} ({n})"))
        .collect();
    if !other.is_empty() {
        tracing::warn!(
            partitions = config.topics.partitions,
            topics = other.join(", "),
            "these topics exist with another partition count than [topics].partitions and are \
             used as they are: Keel never changes an existing topic's partitions (more \
             partitions send keys to other partitions than the ones their state and earlier \
             records are on); to change it, start on new topics ([topics].prefix) or recreate \
             them"
        );
    }
    Ok(())
}

/// How long [`create_topics`] waits for the broker to list what it created.
const TOPICS_LISTED_WITHIN: Duration = Duration::from_secs(30);

/// Waits until the broker's metadata lists every topic of `names` with a leader for each
/// partition; returns each one's partition count. A consumer that subscribes to a topic its
/// broker does not list yet leaves it out of its assignment until its next periodic metadata
/// refresh (librdkafka's `topic.metadata.refresh.interval.ms`, 5 minutes): a role started
/// right after the topics were created could miss one of its inputs for that long.
fn wait_until_listed(
    admin: &AdminClient<DefaultClientContext>,
    names: &[String],
    within: Duration,
) -> anyhow::Result<std::collections::BTreeMap<String, i32>> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let metadata = admin
            .inner()
            .fetch_metadata(None, within)
            .context("reading the topics' metadata")?;
        // The topics of `names` listed with a leader for each partition, and their counts.
        let listed: std::collections::BTreeMap<String, i32> = metadata
            .topics()
            .iter()
            .filter(|t| {
                names.iter().any(|n| n == t.name())
                    && t.error().is_none()
                    && !t.partitions().is_empty()
                    && t.partitions().iter().all(|p| p.leader() >= 0)
            })
            .map(|t| {
                let count = i32::try_from(t.partitions().len()).unwrap_or(i32::MAX);
                (t.name().to_owned(), count)
            })
            .collect();
        let missing: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|name| !listed.contains_key(*name))
            .collect();
        if missing.is_empty() {
            return Ok(listed);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the broker did not list {missing:?} within {within:?} of creating them"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts a stream application off the async runtime (its start talks to the broker).
async fn start_streams(
    topology: keel_topology::Topology,
    config: keel_topology::StreamsConfig,
    registry: prometheus::Registry,
) -> anyhow::Result<StreamsHandle> {
    let app = config.application_id.clone();
    tokio::task::spawn_blocking(move || {
        KafkaStreams::new(topology, config)?
            .with_registry(registry)
            .start()
    })
    .await?
    .with_context(|| format!("starting stream application {app}"))
}

/// The running roles of one process.
pub struct Running {
    pub shutdown: CancellationToken,
    pub streams: Vec<Arc<StreamsHandle>>,
    pub tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
    pub registry: prometheus::Registry,
    /// The reconciliation role's view (`GET /finance/reconciliation`), when it runs here.
    pub finance: Option<keel_processors::reconciliation::ReconciliationView>,
    /// The connectors this process registered that do not run (`src/connector_watch.rs`).
    pub connectors: crate::connector_watch::ConnectorProblems,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("streams", &self.streams.len())
            .field("tasks", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

impl Running {
    /// `/ready`'s answer: ready when every stream application runs with its tasks assigned
    /// and restored, and every connector the process watches runs; else why not.
    pub fn readiness(&self) -> keel_ingest_api::ReadyFn {
        let streams = self.streams.clone();
        let connectors = self.connectors.clone();
        Arc::new(move || {
            let streaming = streams
                .iter()
                .all(|s| s.is_running() && !s.local_stores().is_empty());
            if !streaming {
                return Err("the process is starting or stopping".to_owned());
            }
            connectors.describe().map_or(Ok(()), Err)
        })
    }
}

/// Consumer settings of a plain consumer role: the Kafka client settings, plus static
/// membership (`group.instance.id = <instance id>-<role>`) so a restarted process takes its
/// partitions back at once instead of waiting out the old member's session.
fn member_settings(config: &KeelConfig, role: &str) -> std::collections::BTreeMap<String, String> {
    let instance = config.streams_for(role).instance_id();
    let mut settings = config.kafka.client.clone();
    settings.insert("group.instance.id".into(), format!("{instance}-{role}"));
    settings
        .entry("session.timeout.ms".into())
        .or_insert_with(|| "10000".into());
    settings
}

/// Starts the stream roles (saga, inventory) and the Cassandra sink of `roles`.
pub async fn start_stream_roles(
    config: &KeelConfig,
    roles: &BTreeSet<Role>,
    codec: &Codec,
    running: &mut Running,
) -> anyhow::Result<()> {
    let names = config.topics.names();
    let format = Format::Avro {
        codec: codec.clone(),
        handle: tokio::runtime::Handle::current(),
    };
    if roles.contains(&Role::Saga) {
        let metrics = saga::SagaMetrics::register(&running.registry)?;
        // `[inventory].oversell = "prevent"` makes the saga wait for the sale before CONFIRMED.
        let saga_config = saga::SagaConfig {
            oversell: config.inventory.oversell,
            cart_retention_ms: config.carts.retention_ms,
            ..config.saga.clone()
        };
        let topology = match carts_cdc(config)? {
            Some((cdc, _)) => {
                saga::topology_with_carts(&format, &names, &saga_config, metrics, &cdc)?
            }
            None => saga::topology(&format, &names, &saga_config, metrics)?,
        };
        let streams = config.streams_for("saga");
        running.streams.push(Arc::new(
            start_streams(topology, streams, running.registry.clone()).await?,
        ));
    }
    if roles.contains(&Role::Inventory) {
        let metrics = inventory::InventoryMetrics::register(&running.registry)?;
        let topology = inventory::topology(&format, &names, &config.inventory, metrics)?;
        let streams = config.streams_for("inventory");
        running.streams.push(Arc::new(
            start_streams(topology, streams, running.registry.clone()).await?,
        ));
    }
    if roles.contains(&Role::Reconciliation) {
        let ledger = crate::reconciliation::prepare(config).await?;
        let (topology, view) =
            crate::reconciliation::topology(config, &format, &ledger, &running.registry)?;
        let streams = config.streams_for("reconciliation");
        running.streams.push(Arc::new(
            start_streams(topology, streams, running.registry.clone()).await?,
        ));
        running.finance = Some(view);
    }
    if roles.contains(&Role::Audit) {
        let view = keel_processors::audit::AuditView::new();
        let metrics = keel_processors::audit::AuditMetrics::register(&running.registry, &view)?;
        let settings = config.audit.settings(config.inventory.oversell);
        let topology = keel_processors::audit::topology(&format, &names, settings, view, metrics)?;
        let streams = config.streams_for("audit");
        running.streams.push(Arc::new(
            start_streams(topology, streams, running.registry.clone()).await?,
        ));
    }
    if roles.contains(&Role::Sinks) {
        let session = inventory::sink::connect(&config.cassandra.nodes).await?;
        let sink_config = inventory::sink::CassandraSinkConfig {
            keyspace: config.cassandra.keyspace.clone(),
            replication_factor: config.cassandra.replication_factor,
            group_id: config.cassandra_sink_group_id(),
            consumer: member_settings(config, "cassandra-sink"),
        };
        // The keyspace is migrated here, before any role starts, so the API's migration and
        // the sink's find it done: two concurrent `ALTER TABLE ... ADD` of one column (a
        // keyspace from before warehouses) leave Cassandra's schema disagreeing with itself.
        inventory::sink::migrate(&session, &sink_config)
            .await
            .with_context(|| "migrating the inventory keyspace (cassandra.keyspace)")?;
        let bootstrap = config.kafka.bootstrap_servers.clone();
        let dead_letters = keel_processors::dead_letter::DeadLetters::new(
            &bootstrap,
            &config.kafka.client,
            &sink_config.group_id,
            "cassandra-sink",
            &running.registry,
        )?;
        let codec = codec.clone();
        let shutdown = running.shutdown.clone();
        let names = names.clone();
        running.tasks.spawn(async move {
            let result = inventory::sink::run(
                &bootstrap,
                &names,
                codec,
                session,
                sink_config,
                dead_letters,
                shutdown,
            )
            .await;
            ("cassandra sink", result.map_err(anyhow::Error::from))
        });
    }
    Ok(())
}

/// Waits for SIGTERM/SIGINT or a role that stops by itself, then stops everything.
pub async fn wait(mut running: Running) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut failure = None;
    let watch_streams = {
        let streams = running.streams.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if streams.iter().any(|s| !s.is_running()) {
                    return;
                }
            }
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
        _ = watch_streams => {
            failure = Some(anyhow::anyhow!("a stream application stopped"));
        }
        Some(done) = running.tasks.join_next() => {
            let (role, result) = done?;
            failure = Some(match result {
                Ok(()) => anyhow::anyhow!("{role} stopped"),
                Err(e) => e.context(format!("{role} failed")),
            });
        }
    }
    running.shutdown.cancel();
    for streams in &running.streams {
        streams.request_shutdown();
    }
    while let Some(done) = running.tasks.join_next().await {
        if let Ok((role, Err(e))) = done {
            tracing::warn!(role, error = %e, "role stopped with an error");
        }
    }
    for streams in running.streams.drain(..) {
        let result = tokio::task::spawn_blocking(move || match Arc::try_unwrap(streams) {
            Ok(handle) => handle.wait(),
            Err(_) => Ok(()),
        })
        .await?;
        if let Err(e) = result {
            failure.get_or_insert(anyhow::Error::from(e));
        }
    }
    failure.map_or(Ok(()), Err)
}

/// Connects to the orders database (MariaDB/MySQL) and applies its migrations.
pub async fn orders_pool(config: &KeelConfig) -> anyhow::Result<sqlx::MySqlPool> {
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&config.mysql.url)
        .await
        .with_context(|| "connecting to the orders database (mysql.url)")?;
    keel_processors::orders::migrate(&pool).await?;
    Ok(pool)
}

/// Connects to the payment ledger (PostgreSQL); the caller applies its migrations.
pub async fn ledger_pool(config: &KeelConfig) -> anyhow::Result<sqlx::PgPool> {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&config.postgres.url)
        .await
        .with_context(|| "connecting to the payment ledger (postgres.url)")
}

/// Starts the roles that are not stream applications: the API, the payment service and the
/// order sink. Called after [`start_stream_roles`], so `/ready` can watch the streams.
pub async fn start_service_roles(
    config: &KeelConfig,
    roles: &BTreeSet<Role>,
    codec: &Codec,
    running: &mut Running,
) -> anyhow::Result<()> {
    let names = config.topics.names();
    let bootstrap = config.kafka.bootstrap_servers.clone();
    let relay = roles.contains(&Role::Relay) && config.outbox.mode == OutboxMode::Relay;
    // One pool per database for the whole process, migrated once.
    let orders = if roles.contains(&Role::Api) || roles.contains(&Role::Sinks) || relay {
        Some(orders_pool(config).await?)
    } else {
        None
    };
    let ledger = if roles.contains(&Role::Api) || roles.contains(&Role::Payment) || relay {
        let pool = ledger_pool(config).await?;
        keel_processors::payment::migrate(&pool).await?;
        Some(pool)
    } else {
        None
    };
    if let (true, Some(pool)) = (roles.contains(&Role::Sinks), &orders) {
        let (pool, codec, shutdown) = (pool.clone(), codec.clone(), running.shutdown.clone());
        let (bootstrap, topic) = (bootstrap.clone(), names.name(topics::ORDER_DECISIONS));
        let group = config.order_sink_group_id();
        let names = names.clone();
        let settings = member_settings(config, "order-sink");
        let dead_letters = keel_processors::dead_letter::DeadLetters::new(
            &bootstrap,
            &config.kafka.client,
            &group,
            "order-sink",
            &running.registry,
        )?;
        running.tasks.spawn(async move {
            let result = keel_processors::orders::run_order_sink_with(
                &bootstrap,
                &group,
                &topic,
                &names,
                &settings,
                codec,
                pool,
                dead_letters,
                shutdown,
            )
            .await;
            ("order sink", result.map_err(anyhow::Error::from))
        });
    }
    if let (true, Some(pg)) = (roles.contains(&Role::Payment), ledger.clone()) {
        let mut payment = config.payment.clone();
        payment.authorized_topic = names.name(topics::PAYMENT_AUTHORIZED);
        payment.failed_topic = names.name(topics::PAYMENT_FAILED);
        payment.refunded_topic = names.name(topics::PAYMENT_REFUNDED);
        payment.group_id = config.payment_group_id();
        for (k, v) in member_settings(config, "payment") {
            payment.client.entry(k).or_insert(v);
        }
        let (codec, shutdown, registry) = (
            codec.clone(),
            running.shutdown.clone(),
            running.registry.clone(),
        );
        let (bootstrap, topic) = (bootstrap.clone(), names.name(topics::PAYMENT_COMMANDS));
        running.tasks.spawn(async move {
            let result = keel_processors::payment::run(
                payment, &bootstrap, codec, pg, &topic, &registry, shutdown,
            )
            .await;
            ("payment service", result.map_err(anyhow::Error::from))
        });
    }
    if let (true, Some(pg)) = (relay, ledger.clone()) {
        use keel_processors::outbox::{MySqlOutbox, PgOutbox, run_relay};
        // The relay's own connections read committed: its `FOR UPDATE SKIP LOCKED` claims then
        // take no gap locks, so they do not deadlock with the order sink's inserts.
        let relay_pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    use sqlx::Executor as _;
                    conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        .await
                        .map(|_| ())
                })
            })
            .connect(&config.mysql.url)
            .await
            .with_context(|| "connecting the order outbox relay (mysql.url)")?;
        let store = MySqlOutbox::new(relay_pool, "order_outbox")?;
        let (relay, shutdown, bootstrap2) = (
            config.outbox.relay.clone(),
            running.shutdown.clone(),
            bootstrap.clone(),
        );
        running.tasks.spawn(async move {
            let result = run_relay(store, &bootstrap2, &relay, shutdown).await;
            ("order outbox relay", result.map_err(anyhow::Error::from))
        });
        let store = PgOutbox::new(pg, "payment_outbox")?;
        let (relay, shutdown, bootstrap2) = (
            config.outbox.relay.clone(),
            running.shutdown.clone(),
            bootstrap.clone(),
        );
        running.tasks.spawn(async move {
            let result = run_relay(store, &bootstrap2, &relay, shutdown).await;
            ("payment outbox relay", result.map_err(anyhow::Error::from))
        });
    }
    // Both modes: shipped outbox rows older than `[outbox].retention_ms` are deleted.
    if roles.contains(&Role::Relay) {
        crate::outbox_cleanup::spawn(config, running).await?;
    }
    if let (true, Some(pool)) = (roles.contains(&Role::Api), orders) {
        let mut api = config.api.clone();
        api.orders_topic = names.name(topics::ORDER_COMMANDS);
        api.payments_topic = names.name(topics::PAYMENT_COMMANDS);
        api.inventory_topic = names.name(topics::INVENTORY_COMMANDS);
        // The inventory routes read the Cassandra mirror; its tables are the sink's (created
        // here too when missing, so the API answers before the sink has started).
        let session = inventory::sink::connect(&config.cassandra.nodes)
            .await
            .with_context(|| "connecting to Cassandra for the inventory API (cassandra.nodes)")?;
        inventory::sink::migrate(
            &session,
            &inventory::sink::CassandraSinkConfig {
                keyspace: config.cassandra.keyspace.clone(),
                replication_factor: config.cassandra.replication_factor,
                ..Default::default()
            },
        )
        .await
        .with_context(|| "creating the inventory keyspace (cassandra.keyspace)")?;
        let overrides: Vec<(String, String)> = config
            .kafka
            .client
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let producer = keel_ingest_api::command_producer(&bootstrap, &api, &overrides)?;
        let deps = keel_ingest_api::ApiDeps {
            producer,
            codec: codec.clone(),
            pool,
            ledger: ledger.clone(),
            inventory: Some(keel_ingest_api::InventoryDeps {
                session: Arc::new(session),
                keyspace: config.cassandra.keyspace.clone(),
                min_hold_ttl_ms: config.inventory.min_hold_ttl_ms,
                max_hold_ttl_ms: config.inventory.max_hold_ttl_ms,
            }),
            registry: running.registry.clone(),
            finance: running.finance.clone(),
            ready: running.readiness(),
        };
        let served = keel_ingest_api::spawn(api, deps, running.shutdown.clone()).await?;
        tracing::info!(addr = %served.addr, "ingest API listening");
        running.tasks.spawn(async move {
            let result = match served.task.await {
                Ok(r) => r.map_err(anyhow::Error::from),
                Err(e) => Err(anyhow::Error::from(e)),
            };
            ("api", result)
        });
    }
    Ok(())
}

/// `keel run`: topics, then every role in `roles`, then wait for a signal.
pub async fn run(config: KeelConfig, roles: BTreeSet<Role>) -> anyhow::Result<()> {
    let _instance = lock_instance(&config, &roles)?;
    ensure_topics(&config).await?;
    // The connectors registered here are watched while the process runs.
    let mut watched = Vec::new();
    if roles.contains(&Role::Saga)
        && let Some((_, connector)) = carts_cdc(&config)?
    {
        register_carts_connector(&config, &connector).await?;
        watched.push(connector.name().to_owned());
    }
    // `[outbox].mode = "debezium"`: no relay; the relay role registers the outbox connectors.
    if roles.contains(&Role::Relay)
        && config.outbox.mode == OutboxMode::Debezium
        && config.connectors.register_on_start
    {
        let connectors = crate::connectors::outbox_connectors(&config)?;
        crate::connectors::register(&config, &connectors).await?;
        watched.extend(connectors.iter().map(|c| c.name().to_owned()));
    }
    // `[outbox].mode = "relay"`: not while this configuration's Debezium connectors publish too.
    if roles.contains(&Role::Relay) {
        crate::connectors::refuse_second_outbox_publisher(&config).await?;
    }
    let codec = Codec::new(config.registry.clone())?;
    let mut running = Running {
        shutdown: CancellationToken::new(),
        streams: Vec::new(),
        tasks: JoinSet::new(),
        registry: prometheus::Registry::new(),
        finance: None,
        connectors: crate::connector_watch::ConnectorProblems::default(),
    };
    if !watched.is_empty() {
        let watch = crate::connector_watch::watch(
            &config.connect.url,
            watched,
            Duration::from_millis(config.connectors.watch_interval_ms),
            &running.registry,
            running.connectors.clone(),
            running.shutdown.clone(),
        )?;
        running.tasks.spawn(async move {
            // The watch only reports; it ends with the process.
            watch.await;
            ("connector watch", Ok(()))
        });
    }
    start_stream_roles(&config, &roles, &codec, &mut running).await?;
    start_service_roles(&config, &roles, &codec, &mut running).await?;
    // /metrics, /health, /ready without the api role, and the lag sampler (src/admin.rs).
    crate::admin::spawn(&config, &roles, &mut running).await?;
    let names: Vec<&str> = roles.iter().map(|r| r.name()).collect();
    tracing::info!(roles = names.join(","), "keel run: started");
    wait(running).await
}
