//! The local stack's Prometheus (stack/servers/prometheus.sh) scrapes Kafka Connect and the
//! Kafka broker through the Prometheus JMX exporter agents the stack loads into them
//! (stack/lib.sh, rules in docker/prometheus/jmx-{connect,kafka}.yml). Asked through
//! Prometheus' HTTP API, not the exporters directly: a series is only there when Prometheus
//! scraped it, so these fail when an agent is not attached, listens elsewhere, or is not a scrape
//! job.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use keel_connectors::ConnectClient;
use keel_connectors::config::{PostgresSource, PublicationMode};
use keel_tests::kafka::create_topics;
use keel_tests::topics::TopicCleanup;
use keel_tests::{PATIENCE, Stack, unique};
use serde_json::Value;
// Table names in these statements come from `unique()` (hex digits), never from input.
use sqlx::AssertSqlSafe;

/// Prometheus' address: `KEEL_PROMETHEUS_URL`, else the local stack's.
fn prometheus_url() -> String {
    std::env::var("KEEL_PROMETHEUS_URL").unwrap_or_else(|_| "http://127.0.0.1:9090".to_owned())
}

/// One series of an instant query: its labels and its value.
type Sample = (BTreeMap<String, String>, f64);

/// A PromQL query and what its first series' value must satisfy.
type Check = (String, fn(f64) -> bool);

/// `GET /api/v1/query?query=<promql>`: the instant vector it answers.
async fn query(client: &reqwest::Client, promql: &str) -> anyhow::Result<Vec<Sample>> {
    let body: Value = client
        .get(format!("{}/api/v1/query", prometheus_url()))
        .query(&[("query", promql)])
        .timeout(Duration::from_secs(10))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    anyhow::ensure!(body["status"] == "success", "{promql}: {body}");
    body["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let labels = r["metric"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect();
            let value = r["value"][1]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("{promql}: no value in {r}"))?
                .parse()?;
            Ok((labels, value))
        })
        .collect()
}

/// Ask each `(promql, condition)` until every condition holds of the first series the query
/// returns, or `within` passes; then report every query with what it returned last.
async fn wait_for(
    client: &reqwest::Client,
    checks: &[Check],
    within: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let mut seen = Vec::new();
        let mut all = true;
        for (promql, holds) in checks {
            let samples = query(client, promql).await?;
            all &= samples.first().is_some_and(|(_, v)| holds(*v));
            seen.push(format!("{promql} -> {samples:?}"));
        }
        if all {
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < within,
            "Prometheus did not show, within {within:?}:\n  {}\n(is the JMX exporter agent \
             attached? `stack/keel-stack status` lists the metrics endpoints)",
            seen.join("\n  ")
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn is_one(v: f64) -> bool {
    v == 1.0
}

fn at_least_two(v: f64) -> bool {
    v >= 2.0
}

fn not_negative(v: f64) -> bool {
    v >= 0.0
}

fn positive(v: f64) -> bool {
    v > 0.0
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_connector_status_and_debezium_lag_from_the_connect_worker()
-> anyhow::Result<()> {
    let stack = Stack::from_env();
    let client = reqwest::Client::new();
    let table = unique("metrics_cdc");
    let prefix = unique("dbzm");
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

    let name = unique("pg_metrics");
    let config = PostgresSource {
        name: name.clone(),
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
    let connect = ConnectClient::new(&stack.connect_url);
    connect.apply(&config).await?;

    let result = async {
        connect.wait_running(&name, PATIENCE).await?;
        // The snapshot row, then a streamed one: records polled >= 2, and Debezium's streaming
        // metrics (registered once streaming starts) have an event to measure.
        let checks: Vec<Check> = vec![
            (r#"up{job="connect"}"#.to_owned(), is_one),
            (
                format!(r#"kafka_connect_connector_status{{connector="{name}",status="running"}}"#),
                is_one,
            ),
            (
                format!(r#"debezium_streaming_connected{{plugin="postgres",server="{prefix}"}}"#),
                is_one,
            ),
        ];
        wait_for(&client, &checks, PATIENCE).await?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {table} VALUES (2, 4500)"
        )))
        .execute(&db)
        .await?;
        let checks: Vec<Check> = vec![
            (
                format!(r#"kafka_connect_source_task_records_polled_total{{connector="{name}"}}"#),
                at_least_two,
            ),
            (
                format!(
                    r#"debezium_streaming_events_seen_total{{plugin="postgres",server="{prefix}"}}"#
                ),
                positive,
            ),
            (
                format!(
                    r#"debezium_streaming_milliseconds_behind_source{{plugin="postgres",server="{prefix}"}}"#
                ),
                not_negative,
            ),
        ];
        wait_for(&client, &checks, PATIENCE).await
    }
    .await;

    connect.delete(&name).await?;
    sqlx::query(AssertSqlSafe(format!("DROP PUBLICATION IF EXISTS {table}")))
        .execute(&db)
        .await?;
    sqlx::query(AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&db)
        .await?;
    result
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_the_kafka_brokers_jmx_exporter() -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    // Every test writes to the broker, so messages-in is above zero on any stack that has
    // served a test; the controller in the same JVM is the active one.
    let checks: Vec<Check> = vec![
        (r#"up{job="kafka"}"#.to_owned(), is_one),
        (
            r#"kafka_controller_active_controller_count{job="kafka"}"#.to_owned(),
            is_one,
        ),
        (
            r#"kafka_server_partitions{job="kafka"}"#.to_owned(),
            positive,
        ),
        (
            r#"kafka_server_messages_in_total{job="kafka"}"#.to_owned(),
            not_negative,
        ),
    ];
    wait_for(&client, &checks, Duration::from_secs(30)).await
}

/// The rules each local-stack module loads are the compose stack's files (one file, not a
/// copy), Prometheus has a job per exporter, and docs/metrics.md lists every metric they export.
#[test]
fn the_stack_loads_the_compose_rules_and_docs_list_what_they_export() -> anyhow::Result<()> {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let read = |path: &str| std::fs::read_to_string(repo.join(path));
    let metrics_md = read("docs/metrics.md")?;
    let prometheus_sh = read("stack/servers/prometheus.sh")?;
    for (module, rules, job, port) in [
        ("connect", "jmx-connect.yml", "connect", "9404"),
        ("kafka", "jmx-kafka.yml", "kafka", "9405"),
    ] {
        let script = read(&format!("stack/servers/{module}.sh"))?;
        assert!(
            script.contains("stack_jmx_agent_opt") && script.contains(&format!("/{rules}\"")),
            "stack/servers/{module}.sh does not load docker/prometheus/{rules}"
        );
        assert!(
            script.contains(&format!(":-{port}}}")),
            "{module}'s exporter is not on {port} by default"
        );
        assert!(
            prometheus_sh.contains(&format!("- job_name: {job}\n")),
            "the local Prometheus has no job {job}"
        );
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&read(&format!("docker/prometheus/{rules}"))?)?;
        let names: Vec<&str> = doc["rules"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert!(!names.is_empty(), "{rules} names no metric");
        for name in names {
            assert!(
                metrics_md.contains(&format!("| `{name}` |")),
                "{rules} exports {name}, which docs/metrics.md does not list"
            );
        }
    }
    Ok(())
}
