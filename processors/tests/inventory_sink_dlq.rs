//! The Cassandra sink against the real stack (random topics under a prefix of their own, a
//! fresh keyspace dropped at the end): an inventory event it cannot decode goes to its
//! dead-letter topic `<group id>-dlq` with the runtime's headers and is counted, and the event
//! after it is applied; a dead letter the broker does not acknowledge stops the sink before
//! the offset passes the bad event.

mod common;

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::DlqSetup;
use futures::FutureExt;
use keel_avro::records::InventoryAdjusted;
use keel_processors::inventory::sink::{self, CassandraSinkConfig, SinkError};
use keel_processors::topics::{self, Topics};
use keel_tests::{PATIENCE, Stack, unique};
use rdkafka::producer::FutureRecord;
use scylla::client::session::Session;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_inventory_event_is_dead_lettered_and_the_next_is_applied()
-> anyhow::Result<()> {
    with_keyspace(false).await
}

/// A first run whose dead-letter writes are never acknowledged stops with the error before the
/// event after the bad one; the next run (same group) reads the bad event again, dead-letters
/// it and goes on: nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_dead_letter_stops_the_sink_and_the_event_is_read_again()
-> anyhow::Result<()> {
    with_keyspace(true).await
}

async fn with_keyspace(unacknowledged_first: bool) -> anyhow::Result<()> {
    let stack = Stack::from_env();
    let session = sink::connect(std::slice::from_ref(&stack.cassandra_node))
        .await
        .context("Cassandra of the stack")?;
    let keyspace = unique("dlq_sink");
    let result = AssertUnwindSafe(scenario(&stack, &keyspace, unacknowledged_first))
        .catch_unwind()
        .await;
    if let Err(e) = session
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), &[])
        .await
    {
        eprintln!("dropping {keyspace}: {e}");
    }
    result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

async fn scenario(stack: &Stack, keyspace: &str, unacknowledged_first: bool) -> anyhow::Result<()> {
    let bootstrap = stack.kafka_bootstrap.clone();
    let names = Topics::with_prefix(format!("{}.", unique("dlq")));
    let inputs = [
        names.name(topics::INVENTORY_RESERVED),
        names.name(topics::INVENTORY_RELEASED),
        names.name(topics::INVENTORY_ADJUSTED),
    ];
    let adjusted = &inputs[2];
    let setup = DlqSetup::new(stack, "cassandra_sink", &inputs).await?;
    let (group, codec, producer) = (&setup.group, &setup.codec, &setup.producer);
    // Not Confluent-framed Avro (no magic byte 0): the input's fault.
    let bad = setup
        .send_poison(adjusted, "MUG-BAD", b"{\"sku\": \"not avro\"}", Some("t-2"))
        .await?;
    let sku = unique("SKU");
    let now = chrono::Utc::now().timestamp_millis();
    let good = InventoryAdjusted {
        event_id: unique("evt"),
        sku: sku.clone(),
        occurred_at: now,
        causation_id: "cause".to_owned(),
        correlation_id: "corr".to_owned(),
        delta: 7,
        on_hand: 7,
        reason: "RESTOCK".to_owned(),
        warehouse: None,
        warehouse_on_hand: None,
    };
    let payload = codec.encode_to(adjusted, &good).await?;
    producer
        .send(
            FutureRecord::to(adjusted).key(&sku).payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;

    let config = CassandraSinkConfig {
        keyspace: keyspace.to_owned(),
        group_id: group.clone(),
        ..CassandraSinkConfig::default()
    };
    let session = sink::connect(std::slice::from_ref(&stack.cassandra_node)).await?;
    sink::migrate(&session, &config).await?;
    let reader = sink::connect(std::slice::from_ref(&stack.cassandra_node)).await?;
    if unacknowledged_first {
        // Nothing listens on port 1: no dead-letter write is ever acknowledged.
        let unreachable = setup.unreachable_dead_letters("cassandra-sink")?;
        let first = sink::connect(std::slice::from_ref(&stack.cassandra_node)).await?;
        let stopped = tokio::time::timeout(
            Duration::from_secs(30),
            sink::run(
                &bootstrap,
                &names,
                codec.clone(),
                first,
                config.clone(),
                unreachable.clone(),
                CancellationToken::new(),
            ),
        )
        .await
        .context("the sink neither stopped nor kept the bad event")?;
        assert!(
            matches!(stopped, Err(SinkError::DeadLetter(_))),
            "the first run must stop on the unacknowledged dead letter: {stopped:?}"
        );
        assert_eq!(unreachable.count(adjusted), 0);
        assert_eq!(
            stock(&reader, keyspace, &sku).await?,
            None,
            "the event after the bad one was applied: the bad one was passed over"
        );
    }
    let registry = prometheus::Registry::new();
    let dead_letters = setup.dead_letters("cassandra-sink", &registry)?;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (bootstrap, names, codec, stop, dead_letters) = (
            bootstrap.clone(),
            names.clone(),
            codec.clone(),
            shutdown.clone(),
            dead_letters.clone(),
        );
        async move {
            sink::run(
                &bootstrap,
                &names,
                codec,
                session,
                config,
                dead_letters,
                stop,
            )
            .await
        }
    });
    let waited = wait_for_stock(&reader, keyspace, &sku).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .context("the sink did not stop after shutdown")???;
    let on_hand = waited.context("the good event after the bad one")?;
    assert_eq!(on_hand, 7);

    let letters = setup.letters().await?;
    assert_eq!(
        letters.len(),
        1,
        "dead letters on {}: {letters:?}",
        setup.dlq
    );
    bad.assert_dead_letter(&letters[0], "cassandra-sink")?;

    assert_eq!(dead_letters.count(adjusted), 1);
    let exported = common::exported(&registry, "cassandra-sink", adjusted);
    assert!((exported - 1.0).abs() < f64::EPSILON, "exported {exported}");
    Ok(())
}

/// `stock_level.on_hand` of `sku`, if written.
async fn stock(session: &Session, keyspace: &str, sku: &str) -> anyhow::Result<Option<i32>> {
    let rows = session
        .query_unpaged(
            format!("SELECT on_hand FROM {keyspace}.stock_level WHERE sku = ?"),
            (sku,),
        )
        .await?
        .into_rows_result()?;
    let found: Vec<(Option<i32>,)> = rows.rows::<(Option<i32>,)>()?.collect::<Result<_, _>>()?;
    Ok(found.first().and_then(|(on_hand,)| *on_hand))
}

/// `stock_level.on_hand` of `sku` once the sink wrote it.
async fn wait_for_stock(session: &Session, keyspace: &str, sku: &str) -> anyhow::Result<i32> {
    let start = Instant::now();
    while start.elapsed() < PATIENCE {
        if let Some(on_hand) = stock(session, keyspace, sku).await? {
            return Ok(on_hand);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("no stock_level row for {sku} within {PATIENCE:?}")
}
