//! The Cassandra sink against the real stack (random topics under a prefix of their own, a
//! fresh keyspace dropped at the end): an inventory event it cannot decode goes to its
//! dead-letter topic `<group id>-dlq` with the runtime's headers and is counted, and the event
//! after it is applied; a dead letter the broker does not acknowledge stops the sink before
//! the offset passes the bad event. So do, while the sink keeps running, an event framed with a
//! schema id the registry does not know (after `[registry].unknown_id_patience_ms`), a
//! tombstone, and an event Cassandra refuses to write (an empty SKU: "Key may not be empty").

mod common;

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::DlqSetup;
use futures::FutureExt;
use keel_avro::records::{
    InventoryAdjusted, InventoryReleased, InventoryReserved, ReleaseReason, ReservationStatus,
};
use keel_avro::{Codec, RegistryConfig};
use keel_processors::inventory::sink::{self, CassandraSinkConfig, SinkError};
use keel_processors::topics::{self, Topics};
use keel_tests::{PATIENCE, Stack, unique};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
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

/// What a [`bad_event_case`] writes before a good event of the same topic.
#[derive(Debug, Clone, Copy)]
enum Bad {
    /// On `inventory.reserved.v1`, framed with schema id 88888888, which the registry does not
    /// know: `0x00`, the id big-endian, `zz`.
    UnknownSchemaId,
    /// On `inventory.released.v1`, a record without a value.
    Tombstone,
    /// On `inventory.adjusted.v1`, a valid adjustment of SKU "", which Cassandra refuses.
    EmptySku,
}

/// The window of the unknown-id case (`[registry].unknown_id_patience_ms`).
const WINDOW_MS: u64 = 1_500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_schema_id_is_asked_again_for_the_window_then_dead_lettered_and_the_sink_goes_on()
-> anyhow::Result<()> {
    bad_event_case(Bad::UnknownSchemaId).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_is_dead_lettered_with_why_and_the_next_event_is_applied() -> anyhow::Result<()>
{
    bad_event_case(Bad::Tombstone).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_cassandra_refuses_to_write_is_dead_lettered_and_the_next_is_applied()
-> anyhow::Result<()> {
    bad_event_case(Bad::EmptySku).await
}

async fn bad_event_case(bad: Bad) -> anyhow::Result<()> {
    let stack = Stack::from_env();
    let session = sink::connect(std::slice::from_ref(&stack.cassandra_node))
        .await
        .context("Cassandra of the stack")?;
    let keyspace = unique("dlq_sink");
    let result = AssertUnwindSafe(bad_event_scenario(&stack, &keyspace, bad))
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

/// Writes `bad`, then a good event of the same topic (one partition: it comes after), and
/// runs the sink until the good event's figure (7) is in `stock_level`: the bad one is in the
/// dead-letter topic with where it came from and why, counted, and the sink is still running.
async fn bad_event_scenario(stack: &Stack, keyspace: &str, bad: Bad) -> anyhow::Result<()> {
    let names = Topics::with_prefix(format!("{}.", unique("dlq")));
    let inputs = [
        names.name(topics::INVENTORY_RESERVED),
        names.name(topics::INVENTORY_RELEASED),
        names.name(topics::INVENTORY_ADJUSTED),
    ];
    let setup = DlqSetup::new(stack, "cassandra_sink", &inputs).await?;
    // The window for unknown ids comes from the registry settings, short here.
    let codec = Codec::new(RegistryConfig {
        unknown_id_patience_ms: WINDOW_MS,
        ..setup.codec.config().clone()
    })?;
    let sku = unique("SKU");
    let now = chrono::Utc::now().timestamp_millis();
    let (topic, good, bad_at, why) = match bad {
        Bad::UnknownSchemaId => {
            let topic = &inputs[0];
            let mut value = vec![0];
            value.extend_from_slice(&88_888_888_u32.to_be_bytes());
            value.extend_from_slice(b"zz");
            let at = setup.send_raw(topic, "order-bad", Some(&value)).await?;
            let good = InventoryReserved {
                event_id: unique("evt"),
                sku: sku.clone(),
                occurred_at: now,
                causation_id: "cause".to_owned(),
                correlation_id: "corr".to_owned(),
                order_id: unique("order"),
                status: ReservationStatus::Shortage,
                quantity: 1,
                available: 0,
                expires_at: None,
                warehouse: None,
                held: Some(7),
                warehouse_held: None,
                held_version: Some(now * 1_000),
            };
            (
                topic,
                codec.encode_to(topic, &good).await?,
                at,
                "schema id 88888888 is unknown to the registry",
            )
        }
        Bad::Tombstone => {
            let topic = &inputs[1];
            let at = setup.send_raw(topic, "order-bad", None).await?;
            let good = InventoryReleased {
                event_id: unique("evt"),
                sku: sku.clone(),
                occurred_at: now,
                causation_id: "cause".to_owned(),
                correlation_id: "corr".to_owned(),
                order_id: unique("order"),
                quantity: 1,
                reason: ReleaseReason::OrderCancelled,
                warehouse: None,
                held: Some(7),
                warehouse_held: None,
                held_version: Some(now * 1_000),
            };
            (topic, codec.encode_to(topic, &good).await?, at, "tombstone")
        }
        Bad::EmptySku => {
            let topic = &inputs[2];
            let adjustment = |sku: &str| InventoryAdjusted {
                event_id: unique("evt"),
                sku: sku.to_owned(),
                occurred_at: now,
                causation_id: "cause".to_owned(),
                correlation_id: "corr".to_owned(),
                delta: 7,
                on_hand: 7,
                reason: "RESTOCK".to_owned(),
                warehouse: None,
                warehouse_on_hand: None,
            };
            let value = codec.encode_to(topic, &adjustment("")).await?;
            let at = setup.send_raw(topic, "", Some(&value)).await?;
            (
                topic,
                codec.encode_to(topic, &adjustment(&sku)).await?,
                at,
                "Key may not be empty",
            )
        }
    };
    setup.send_raw(topic, &sku, Some(&good)).await?;

    let config = CassandraSinkConfig {
        keyspace: keyspace.to_owned(),
        group_id: setup.group.clone(),
        ..CassandraSinkConfig::default()
    };
    let session = sink::connect(std::slice::from_ref(&stack.cassandra_node)).await?;
    sink::migrate(&session, &config).await?;
    let reader = sink::connect(std::slice::from_ref(&stack.cassandra_node)).await?;
    let registry = prometheus::Registry::new();
    let dead_letters = setup.dead_letters("cassandra-sink", &registry)?;
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn({
        let (bootstrap, names, stop, dead_letters) = (
            setup.bootstrap.clone(),
            names.clone(),
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
    let waited = wait_for_figure(&reader, keyspace, &sku, &task).await;
    let took = started.elapsed();
    let still_running = !task.is_finished();
    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .context("the sink did not stop after shutdown")?;
    assert!(
        still_running,
        "the sink stopped on the bad event ({bad:?}): {stopped:?}"
    );
    stopped??;
    assert_eq!(waited.context("the good event after the bad one")?, 7);
    // The bad event and the good one: both passed, both committed once the sink stopped (it
    // commits at most once a second while running; the last commit is on shutdown).
    assert_eq!(
        committed_offset(&setup.bootstrap, &setup.group, topic)?,
        Some(2),
        "what the sink committed on {topic} when it stopped"
    );
    if matches!(bad, Bad::UnknownSchemaId) {
        assert!(
            took >= Duration::from_millis(WINDOW_MS),
            "the unknown id was dead-lettered after {took:?}, before its window"
        );
    }

    let letters = setup.letters().await?;
    assert_eq!(
        letters.len(),
        1,
        "dead letters on {}: {letters:?}",
        setup.dlq
    );
    let letter = &letters[0];
    common::assert_from(letter, (topic, bad_at.0, bad_at.1), "cassandra-sink", why)?;
    if matches!(bad, Bad::Tombstone) {
        assert_eq!(
            letter.payload(),
            None,
            "a tombstone's dead letter has no value"
        );
    }
    assert_eq!(dead_letters.count(topic), 1);
    Ok(())
}

/// The offset `group` committed on partition 0 of `topic`, if any.
fn committed_offset(bootstrap: &str, group: &str, topic: &str) -> anyhow::Result<Option<i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()?;
    let mut asked = TopicPartitionList::new();
    asked.add_partition(topic, 0);
    let got = consumer.committed_offsets(asked, Duration::from_secs(10))?;
    Ok(match got.find_partition(topic, 0).map(|e| e.offset()) {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    })
}

/// `stock_level`'s `on_hand`, or else `held`, of `sku` once the sink wrote one; an error if
/// the sink stops first.
async fn wait_for_figure(
    session: &Session,
    keyspace: &str,
    sku: &str,
    sink: &tokio::task::JoinHandle<Result<(), SinkError>>,
) -> anyhow::Result<i32> {
    let start = Instant::now();
    while start.elapsed() < PATIENCE && !sink.is_finished() {
        let rows = session
            .query_unpaged(
                format!("SELECT on_hand, held FROM {keyspace}.stock_level WHERE sku = ?"),
                (sku,),
            )
            .await?
            .into_rows_result()?;
        let found: Vec<(Option<i32>, Option<i32>)> = rows
            .rows::<(Option<i32>, Option<i32>)>()?
            .collect::<Result<_, _>>()?;
        if let Some(figure) = found.first().and_then(|(on_hand, held)| on_hand.or(*held)) {
            return Ok(figure);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("no stock_level figure for {sku} within {PATIENCE:?} while the sink ran")
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
