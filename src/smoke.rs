//! `keel smoke`: one real round trip per server, printing what each check verified.
//!
//! Every check uses the client Keel itself uses (rdkafka, reqwest against the Confluent API,
//! the Connect client, sqlx, scylla), so a green smoke run means Keel can talk to the stack.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use keel_connectors::ConnectClient;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use scylla::client::session_builder::SessionBuilder;

use crate::config::KeelConfig;

const DEBEZIUM_PLUGINS: [&str; 3] = [
    "io.debezium.connector.mariadb.MariaDbConnector",
    "io.debezium.connector.mysql.MySqlConnector",
    "io.debezium.connector.postgresql.PostgresConnector",
];

/// Run every check, print one line each, and say whether all passed.
pub async fn run(config: &KeelConfig) -> bool {
    let mut ok = true;
    ok &= report("kafka", kafka(config)).await;
    ok &= report("registry", registry(config)).await;
    ok &= report("connect", connect(config)).await;
    ok &= report("mariadb", mariadb(config)).await;
    ok &= report("postgres", postgres(config)).await;
    ok &= report("cassandra", cassandra(config)).await;
    println!(
        "{}",
        if ok {
            "smoke: every server verified"
        } else {
            "smoke: FAILED (see above)"
        }
    );
    ok
}

async fn report(name: &str, check: impl Future<Output = anyhow::Result<String>>) -> bool {
    let start = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(90), check)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out after 90 s")));
    let ms = start.elapsed().as_millis();
    match result {
        Ok(what) => {
            println!("ok    {name:<10} {what} ({ms} ms)");
            true
        }
        Err(e) => {
            println!("FAIL  {name:<10} {e:#}");
            false
        }
    }
}

fn kafka_client(config: &KeelConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in &config.kafka.client {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &config.kafka.bootstrap_servers);
    c
}

/// A transactional write, read back under `read_committed`.
async fn kafka(config: &KeelConfig) -> anyhow::Result<String> {
    let topic = format!("keel-smoke-{}", uuid::Uuid::new_v4().simple());
    let admin: AdminClient<DefaultClientContext> = kafka_client(config).create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin
        .create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &opts,
        )
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
    }
    let base = kafka_client(config);
    let t = topic.clone();
    let value = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let producer: ThreadedProducer<DefaultProducerContext> = base
            .clone()
            .set("transactional.id", format!("{t}-tx"))
            .create()?;
        let timeout = Duration::from_secs(30);
        producer
            .init_transactions(timeout)
            .context("init_transactions")?;
        producer.begin_transaction()?;
        producer
            .send(BaseRecord::to(&t).key("smoke").payload("hello"))
            .map_err(|(e, _)| e)?;
        producer
            .commit_transaction(timeout)
            .context("commit_transaction")?;

        let consumer: BaseConsumer = base
            .clone()
            .set("group.id", format!("{t}-group"))
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .create()?;
        consumer.subscribe(&[&t])?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(m) = consumer.poll(Duration::from_millis(500)) {
                let m = m?;
                return Ok(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
            }
        }
        anyhow::bail!("the committed record did not arrive within 30 s")
    })
    .await??;
    anyhow::ensure!(value == "hello", "read back {value:?}, wrote \"hello\"");
    admin.delete_topics(&[&topic], &opts).await?;
    Ok(format!(
        "transactional write committed and read back under read_committed ({})",
        config.kafka.bootstrap_servers
    ))
}

/// The Confluent-compatible API answers with its subject list.
async fn registry(config: &KeelConfig) -> anyhow::Result<String> {
    let url = format!("{}/subjects", config.registry.url);
    let subjects: Vec<String> = reqwest::get(&url).await?.error_for_status()?.json().await?;
    Ok(format!(
        "Confluent API answers at {} ({} subjects)",
        config.registry.url,
        subjects.len()
    ))
}

/// Kafka Connect runs with the Debezium plugins loaded.
async fn connect(config: &KeelConfig) -> anyhow::Result<String> {
    let plugins = ConnectClient::new(&config.connect.url).plugins().await?;
    let missing: Vec<&str> = DEBEZIUM_PLUGINS
        .into_iter()
        .filter(|want| !plugins.iter().any(|p| p.class == *want))
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "plugins missing: {}",
        missing.join(", ")
    );
    Ok("Debezium MariaDB, MySQL and PostgreSQL plugins loaded".to_owned())
}

/// MariaDB answers and writes a row-based binlog (what Debezium needs).
async fn mariadb(config: &KeelConfig) -> anyhow::Result<String> {
    let pool = sqlx::MySqlPool::connect(&config.mysql.url).await?;
    let (format, log_bin): (String, i64) = sqlx::query_as("SELECT @@binlog_format, @@log_bin")
        .fetch_one(&pool)
        .await?;
    anyhow::ensure!(
        format == "ROW" && log_bin == 1,
        "binlog_format={format}, log_bin={log_bin}"
    );
    let (version,): (String,) = sqlx::query_as("SELECT VERSION()").fetch_one(&pool).await?;
    Ok(format!("{version}, binlog ROW"))
}

/// PostgreSQL answers with logical WAL (what Debezium needs).
async fn postgres(config: &KeelConfig) -> anyhow::Result<String> {
    let pool = sqlx::PgPool::connect(&config.postgres.url).await?;
    let (wal,): (String,) = sqlx::query_as("SHOW wal_level").fetch_one(&pool).await?;
    anyhow::ensure!(wal == "logical", "wal_level={wal}");
    let (version,): (String,) = sqlx::query_as("SHOW server_version")
        .fetch_one(&pool)
        .await?;
    Ok(format!("PostgreSQL {version}, wal_level logical"))
}

/// Cassandra answers CQL.
async fn cassandra(config: &KeelConfig) -> anyhow::Result<String> {
    let session = SessionBuilder::new()
        .known_nodes(&config.cassandra.nodes)
        .build()
        .await?;
    let rows = session
        .query_unpaged("SELECT release_version FROM system.local", &[])
        .await?
        .into_rows_result()?;
    let (version,) = rows.single_row::<(String,)>()?;
    Ok(format!("Cassandra {version} answers CQL"))
}
