//! Debezium on Kafka Connect captures changes: a MariaDB and a PostgreSQL connector are
//! registered through Connect's REST API, rows are inserted, and their change events are read
//! from Kafka — the snapshot of a row that existed before, and the streamed insert after.

use std::time::Duration;

use keel_connectors::config::{MySqlFlavor, MySqlSource, PostgresSource, PublicationMode};
use keel_connectors::{ConnectClient, ConnectorConfig};
use keel_tests::kafka::{consumer, create_topics, read_topic};
use keel_tests::topics::TopicCleanup;
use keel_tests::{PATIENCE, Stack, unique};
use rdkafka::Message;
use serde_json::Value;
// Table names in these statements come from `unique()` (hex digits), never from input.
use sqlx::AssertSqlSafe;

/// Register `config`, wait until it runs, then read `topic` until an event with
/// `after.id == want_id` and `op == want_op` arrives. Deletes the connector afterwards.
async fn capture(
    stack: &Stack,
    config: ConnectorConfig,
    topic: &str,
    insert_after_start: impl AsyncFnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Vec<Value>> {
    let connect = ConnectClient::new(&stack.connect_url);
    connect.apply(&config).await?;
    let result = async {
        connect.wait_running(config.name(), PATIENCE).await?;
        // RUNNING comes before the snapshot ends: wait for the snapshot event (op "r") so the
        // next insert is certainly streamed from the log (op "c"), not read by the snapshot.
        let snapshot = read_topic(
            &consumer(&stack.kafka_bootstrap, "read_committed")?,
            topic,
            1,
            Duration::from_secs(120),
            Duration::ZERO,
        )
        .await?;
        anyhow::ensure!(snapshot.len() == 1, "no snapshot event on {topic}");
        insert_after_start().await?;
        let messages = read_topic(
            &consumer(&stack.kafka_bootstrap, "read_committed")?,
            topic,
            2,
            Duration::from_secs(120),
            Duration::from_secs(1),
        )
        .await?;
        messages
            .iter()
            .map(|m| Ok(serde_json::from_slice(m.payload().unwrap_or_default())?))
            .collect::<anyhow::Result<Vec<Value>>>()
    }
    .await;
    connect.delete(config.name()).await?;
    result
}

fn ops_and_ids(events: &[Value]) -> Vec<(String, i64)> {
    events
        .iter()
        .map(|e| {
            (
                e["op"].as_str().unwrap_or("?").to_owned(),
                e["after"]["id"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_connector_streams_a_snapshot_row_and_a_new_insert() -> anyhow::Result<()> {
    let stack = Stack::from_env();
    let table = unique("cdc_orders");
    let prefix = unique("dbz");
    // Every topic the connector writes (its tables', its schema history) and its heartbeats.
    let _topics = TopicCleanup::new(stack.kafka_bootstrap.as_str())
        .prefix(format!("{prefix}."))
        .topic(format!("__debezium-heartbeat.{prefix}"));
    let topic = format!("{prefix}.keel.{table}");
    create_topics(&stack.kafka_bootstrap, &[&topic], 1).await?;

    let db = sqlx::MySqlPool::connect(&stack.mysql_url).await?;
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, status VARCHAR(32) NOT NULL)"
    )))
    .execute(&db)
    .await?;
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} VALUES (1, 'PENDING')"
    )))
    .execute(&db)
    .await?;

    let config = MySqlSource {
        name: unique("mariadb_cdc"),
        flavor: MySqlFlavor::MariaDb,
        host: "127.0.0.1".into(),
        port: 3306,
        user: "keel".into(),
        password: "keel".into(),
        server_id: 10_000 + rand::random::<u32>() % 100_000,
        topic_prefix: prefix.clone(),
        databases: vec!["keel".into()],
        tables: vec![format!("keel.{table}")],
        kafka_bootstrap: stack.kafka_bootstrap.clone(),
        snapshot_mode: "initial".into(),
    }
    .to_config()
    .with_json_values();

    let events = capture(&stack, config, &topic, async || {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {table} VALUES (2, 'CONFIRMED')"
        )))
        .execute(&db)
        .await?;
        Ok(())
    })
    .await?;

    assert_eq!(
        ops_and_ids(&events),
        vec![("r".to_owned(), 1), ("c".to_owned(), 2)]
    );
    assert_eq!(events[1]["after"]["status"], "CONFIRMED");
    assert_eq!(events[1]["source"]["table"], table.as_str());
    sqlx::query(AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&db)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_connector_streams_a_snapshot_row_and_a_new_insert() -> anyhow::Result<()> {
    let stack = Stack::from_env();
    let table = unique("cdc_payments");
    let prefix = unique("dbz");
    // Every topic the connector writes (its tables', its schema history) and its heartbeats.
    let _topics = TopicCleanup::new(stack.kafka_bootstrap.as_str())
        .prefix(format!("{prefix}."))
        .topic(format!("__debezium-heartbeat.{prefix}"));
    let topic = format!("{prefix}.public.{table}");
    create_topics(&stack.kafka_bootstrap, &[&topic], 1).await?;

    let db = sqlx::PgPool::connect(&stack.postgres_url).await?;
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, amount_minor BIGINT NOT NULL)"
    )))
    .execute(&db)
    .await?;
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} VALUES (1, 1999)"
    )))
    .execute(&db)
    .await?;

    let config = PostgresSource {
        name: unique("pg_cdc"),
        host: "127.0.0.1".into(),
        port: 5432,
        user: "keel".into(),
        password: "keel".into(),
        database: "keel".into(),
        topic_prefix: prefix.clone(),
        tables: vec![format!("public.{table}")],
        slot_name: table.clone(),
        publication_name: table.clone(),
        publication_mode: PublicationMode::Filtered,
        snapshot_mode: "initial".into(),
    }
    .to_config()
    .with_json_values()
    // The slot belongs to this test only: drop it with the connector so WAL is not retained.
    .set("slot.drop.on.stop", "true");

    let events = capture(&stack, config, &topic, async || {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {table} VALUES (2, 4500)"
        )))
        .execute(&db)
        .await?;
        Ok(())
    })
    .await?;

    assert_eq!(
        ops_and_ids(&events),
        vec![("r".to_owned(), 1), ("c".to_owned(), 2)]
    );
    assert_eq!(events[1]["after"]["amount_minor"], 4500);
    assert_eq!(events[1]["source"]["table"], table.as_str());
    sqlx::query(AssertSqlSafe(format!("DROP PUBLICATION IF EXISTS {table}")))
        .execute(&db)
        .await?;
    sqlx::query(AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&db)
        .await?;
    Ok(())
}
