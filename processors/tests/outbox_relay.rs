//! The outbox relay against the real stack: PostgreSQL and MariaDB outbox tables in fresh
//! `keel_test_<random>` databases, random Kafka topics. Two relays run at once on one table
//! while rows keep arriving; every row must reach Kafka exactly once (counted by the
//! `keel.event.id` header) with its key and payload untouched, and end `SENT`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use keel_processors::outbox::{
    EVENT_ID_HEADER, MySqlOutbox, OutboxStore, PgOutbox, RelayConfig, run_relay,
};
use keel_processors::payment;
use keel_tests::topics::TopicCleanup;
use keel_tests::{PATIENCE, Stack, unique};
use rdkafka::message::{Headers, Message, OwnedMessage};
use sqlx::mysql::MySqlPoolOptions;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, MySqlPool, PgPool};
use tokio_util::sync::CancellationToken;

const ROWS: usize = 300;
const AGGREGATES: usize = 7;

/// One outbox row as the test wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Written {
    id: String,
    aggregate_id: String,
    payload: Vec<u8>,
}

fn rows(topic: &str) -> Vec<Written> {
    (0..ROWS)
        .map(|i| Written {
            id: uuid::Uuid::new_v4().to_string(),
            aggregate_id: format!("order-{}", i % AGGREGATES),
            payload: format!("{topic}/payload-{i}").into_bytes(),
        })
        .collect()
}

fn relay_config() -> RelayConfig {
    RelayConfig {
        poll_interval_ms: 20,
        // Small batches: the two relays contend for rows many times.
        batch_size: 7,
        ..RelayConfig::default()
    }
}

/// Start two relays on `store`, write `written` (half before, half while they run) with
/// `insert`, wait until the table has no `PENDING` row, and return what Kafka holds.
async fn relay_twice<S, F, Fut>(
    stack: &Stack,
    topic: &str,
    store: S,
    written: &[Written],
    insert: F,
    pending: impl AsyncFn() -> anyhow::Result<i64>,
) -> anyhow::Result<Vec<OwnedMessage>>
where
    S: OutboxStore + Clone + 'static,
    F: Fn(Written) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let _topic = TopicCleanup::new(stack.kafka_bootstrap.as_str()).topic(topic);
    keel_tests::kafka::create_topics(&stack.kafka_bootstrap, &[topic], 3).await?;
    let (first, second) = written.split_at(written.len() / 2);
    for row in first {
        insert(row.clone()).await?;
    }
    let stop = CancellationToken::new();
    let relays: Vec<_> = (0..2)
        .map(|_| {
            let (store, bootstrap, stop) =
                (store.clone(), stack.kafka_bootstrap.clone(), stop.clone());
            tokio::spawn(async move { run_relay(store, &bootstrap, &relay_config(), stop).await })
        })
        .collect();
    for row in second {
        insert(row.clone()).await?;
    }
    let start = Instant::now();
    loop {
        let left = pending().await?;
        if left == 0 {
            break;
        }
        if start.elapsed() > PATIENCE {
            bail!("{left} rows still PENDING");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    for relay in relays {
        relay.await??;
    }
    let consumer = keel_tests::kafka::consumer(&stack.kafka_bootstrap, "read_committed")?;
    keel_tests::kafka::read_topic(
        &consumer,
        topic,
        written.len(),
        PATIENCE,
        Duration::from_secs(3),
    )
    .await
}

fn event_id(m: &OwnedMessage) -> anyhow::Result<String> {
    let value = m
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == EVENT_ID_HEADER))
        .and_then(|h| h.value)
        .context("a record without the event id header")?;
    Ok(String::from_utf8(value.to_vec())?)
}

/// Every written row exactly once, with its key and payload.
fn assert_exactly_once(written: &[Written], published: &[OwnedMessage]) -> anyhow::Result<()> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let by_id: HashMap<&str, &Written> = written.iter().map(|w| (w.id.as_str(), w)).collect();
    for m in published {
        let id = event_id(m)?;
        let row = by_id
            .get(id.as_str())
            .context("a record no row was written for")?;
        assert_eq!(m.key(), Some(row.aggregate_id.as_bytes()), "key of {id}");
        assert_eq!(m.payload(), Some(row.payload.as_slice()), "payload of {id}");
        *seen.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "published more than once: {twice:?}");
    assert_eq!(seen.len(), written.len(), "every row published");
    assert_eq!(published.len(), written.len());
    Ok(())
}

/// Within one aggregate (one key, one partition), records follow the rows' order.
fn assert_ordered_per_aggregate(
    written: &[Written],
    published: &[OwnedMessage],
) -> anyhow::Result<()> {
    let mut expected: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for w in written {
        expected.entry(&w.aggregate_id).or_default().push(&w.id);
    }
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in published {
        let key = String::from_utf8(m.key().context("a key")?.to_vec())?;
        got.entry(key).or_default().push(event_id(m)?);
    }
    for (key, ids) in expected {
        assert_eq!(
            got.get(key)
                .map(|v| v.iter().map(String::as_str).collect::<Vec<_>>()),
            Some(ids),
            "order of {key}"
        );
    }
    Ok(())
}

async fn pg_database(stack: &Stack) -> anyhow::Result<(String, PgPool, PgPool)> {
    let name = unique("keel_test");
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&stack.postgres_url)
        .await?;
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await?;
    let (base, _) = stack.postgres_url.rsplit_once('/').context("no database")?;
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect(&format!("{base}/{name}"))
        .await?;
    payment::migrate(&pool).await?;
    Ok((name, admin, pool))
}

async fn drop_pg(name: &str, admin: &PgPool, pool: PgPool) {
    pool.close().await;
    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
    if let Err(e) = sqlx::raw_sql(AssertSqlSafe(drop)).execute(admin).await {
        eprintln!("dropping {name}: {e}");
    }
}

async fn pg_insert(pool: &PgPool, topic: &str, row: Written) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO payment_outbox (id, aggregate_id, event_type, payload) VALUES ($1, $2, $3, $4)",
    )
    .bind(row.id)
    .bind(row.aggregate_id)
    .bind(topic)
    .bind(row.payload)
    .execute(pool)
    .await?;
    Ok(())
}

async fn pg_pending(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM payment_outbox WHERE status = 'PENDING'")
            .fetch_one(pool)
            .await?,
    )
}

#[tokio::test]
async fn two_relays_publish_every_postgres_outbox_row_exactly_once() -> anyhow::Result<()> {
    let stack = Stack::from_env();
    let (name, admin, pool) = pg_database(&stack).await?;
    let topic = unique("outbox_pg");
    let written = rows(&topic);
    let store = PgOutbox::new(pool.clone(), "payment_outbox")?;
    let published = relay_twice(
        &stack,
        &topic,
        store,
        &written,
        |row| pg_insert(&pool, &topic, row),
        async || pg_pending(&pool).await,
    )
    .await;
    let sent_at_missing: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM payment_outbox WHERE status = 'SENT' AND sent_at IS NULL",
    )
    .fetch_one(&pool)
    .await?;
    drop_pg(&name, &admin, pool).await;
    assert_exactly_once(&written, &published?)?;
    assert_eq!(sent_at_missing, 0);
    Ok(())
}

#[tokio::test]
async fn one_relay_keeps_each_aggregates_order() -> anyhow::Result<()> {
    let stack = Stack::from_env();
    let (name, admin, pool) = pg_database(&stack).await?;
    let topic = unique("outbox_order");
    let _topic = TopicCleanup::new(stack.kafka_bootstrap.as_str()).topic(&topic);
    keel_tests::kafka::create_topics(&stack.kafka_bootstrap, &[&topic], 3).await?;
    let written = rows(&topic);
    for row in &written {
        pg_insert(&pool, &topic, row.clone()).await?;
    }
    let store = PgOutbox::new(pool.clone(), "payment_outbox")?;
    let stop = CancellationToken::new();
    let relay = tokio::spawn({
        let (bootstrap, stop) = (stack.kafka_bootstrap.clone(), stop.clone());
        async move { run_relay(store, &bootstrap, &relay_config(), stop).await }
    });
    let consumer = keel_tests::kafka::consumer(&stack.kafka_bootstrap, "read_committed")?;
    let published =
        keel_tests::kafka::read_topic(&consumer, &topic, ROWS, PATIENCE, Duration::from_secs(1))
            .await;
    stop.cancel();
    relay.await??;
    drop_pg(&name, &admin, pool).await;
    let published = published?;
    assert_exactly_once(&written, &published)?;
    assert_ordered_per_aggregate(&written, &published)
}

async fn mysql_database(stack: &Stack) -> anyhow::Result<(String, MySqlPool, MySqlPool)> {
    let name = unique("keel_test");
    let admin = MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&stack.mysql_url)
        .await?;
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
        .execute(&admin)
        .await
        .context("creating the test database (needs the keel\\_% grant)")?;
    let (base, _) = stack.mysql_url.rsplit_once('/').context("no database")?;
    let pool = MySqlPoolOptions::new()
        .max_connections(10)
        .connect(&format!("{base}/{name}"))
        .await?;
    // The columns the outbox convention fixes (the orders service creates its own the same way).
    sqlx::raw_sql(
        "CREATE TABLE order_outbox (
            id CHAR(36) NOT NULL PRIMARY KEY,
            aggregate_id VARCHAR(64) NOT NULL,
            event_type VARCHAR(255) NOT NULL,
            payload LONGBLOB NOT NULL,
            status VARCHAR(8) NOT NULL DEFAULT 'PENDING',
            created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
            sent_at DATETIME(3) NULL,
            KEY order_outbox_pending (status, created_at, id)
        ) ENGINE = InnoDB",
    )
    .execute(&pool)
    .await?;
    Ok((name, admin, pool))
}

#[tokio::test]
async fn two_relays_publish_every_mariadb_outbox_row_exactly_once() -> anyhow::Result<()> {
    let stack = Stack::from_env();
    let (name, admin, pool) = mysql_database(&stack).await?;
    let topic = unique("outbox_maria");
    let written = rows(&topic);
    let store = MySqlOutbox::new(pool.clone(), "order_outbox")?;
    let insert = |row: Written| {
        let pool = pool.clone();
        let topic = topic.clone();
        async move {
            sqlx::query(
                "INSERT INTO order_outbox (id, aggregate_id, event_type, payload) \
                 VALUES (?, ?, ?, ?)",
            )
            .bind(row.id)
            .bind(row.aggregate_id)
            .bind(topic)
            .bind(row.payload)
            .execute(&pool)
            .await?;
            Ok(())
        }
    };
    let published = relay_twice(&stack, &topic, store, &written, insert, async || {
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM order_outbox WHERE status = 'PENDING'")
                .fetch_one(&pool)
                .await?,
        )
    })
    .await;
    let sent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM order_outbox WHERE status = 'SENT' AND sent_at IS NOT NULL",
    )
    .fetch_one(&pool)
    .await?;
    pool.close().await;
    if let Err(e) = sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{name}`")))
        .execute(&admin)
        .await
    {
        eprintln!("dropping {name}: {e}");
    }
    assert_exactly_once(&written, &published?)?;
    assert_eq!(usize::try_from(sent)?, ROWS);
    Ok(())
}
