//! One rule for dead-letter headers, against the real broker: the same poison records (one
//! without a timestamp, one with) dead-lettered by a plain consumer's sink
//! ([`keel_processors::dead_letter::DeadLetters`]) and by the stream runtime
//! ([`keel_topology::KafkaStreams`], a source that cannot decode them) carry the same
//! `keel.source.*` headers; a missing timestamp reads `-1` in both.

mod common;

use std::time::Duration;

use anyhow::Context;
use common::{DlqSetup, header};
use keel_tests::topics::TopicCleanup;
use keel_tests::{PATIENCE, Stack, unique};
use keel_topology::serde::{I64, Utf8};
use keel_topology::{KafkaStreams, StreamsConfig, TopologyBuilder, dlq_headers};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureRecord;

/// The `keel.source.*` headers of a dead letter, as text, in a fixed order.
fn source_headers(m: &OwnedMessage) -> Vec<(&'static str, Option<String>)> {
    [
        dlq_headers::SOURCE_TOPIC,
        dlq_headers::SOURCE_PARTITION,
        dlq_headers::SOURCE_OFFSET,
        dlq_headers::SOURCE_TIMESTAMP,
    ]
    .into_iter()
    .map(|name| (name, header(m, name)))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_without_a_timestamp_gets_the_same_dead_letter_headers_from_a_sink_and_the_runtime()
-> anyhow::Result<()> {
    let stack = Stack::from_env();
    let bootstrap = stack.kafka_bootstrap.clone();
    let input = unique("dlq_rule_in");
    let output = unique("dlq_rule_out");
    let app = unique("dlq_rule_app");
    let setup = DlqSetup::new(&stack, "dlq_rule_sink", &[&input, &output]).await?;
    let _app_topics = TopicCleanup::new(bootstrap.as_str()).prefix(format!("{app}-"));

    // Not 8-byte big-endian integers: the runtime's source cannot decode them. The first has
    // no timestamp (Kafka's NO_TIMESTAMP, -1, as an old client writes it), the second has one.
    let with_timestamp = 1_700_000_000_000_i64;
    for timestamp in [-1, with_timestamp] {
        setup
            .producer
            .send(
                FutureRecord::to(&input)
                    .key("k")
                    .payload(&b"bad"[..])
                    .timestamp(timestamp),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    let reader = keel_tests::kafka::consumer(&bootstrap, "read_committed")?;
    let sources =
        keel_tests::kafka::read_topic(&reader, &input, 2, PATIENCE, Duration::from_secs(1)).await?;
    assert_eq!(sources.len(), 2, "the two poison records: {sources:?}");
    assert_eq!(
        sources[0].timestamp().to_millis(),
        None,
        "the broker kept the first record without a timestamp"
    );

    // A plain consumer's sink dead-letters them.
    let dead_letters = setup.dead_letters("order-sink", &prometheus::Registry::new())?;
    for m in &sources {
        dead_letters.send(m, "cannot use it").await?;
    }
    let from_sink = setup.letters().await?;

    // The runtime dead-letters them.
    let dir = std::env::temp_dir().join(unique("keel_dlq_rule"));
    let mut config = StreamsConfig::new(&app, &bootstrap);
    config.state.dir = dir.clone();
    config
        .consumer
        .insert("session.timeout.ms".into(), "6000".into());
    let mut builder = TopologyBuilder::new();
    builder
        .add_source("in", &[input.as_str()], Utf8, I64)
        .add_sink("out", &output, Utf8, I64, &["in"]);
    // The dead-letter topic exists before the reader subscribes: a subscription to a topic
    // the runtime has not created yet is only picked up at librdkafka's next metadata refresh
    // (minutes), which made a CI run read nothing here.
    let dlq = format!("{app}-dlq");
    keel_tests::kafka::create_topics(&bootstrap, &[&dlq], 1).await?;
    let handle = KafkaStreams::new(builder.build()?, config)?.start()?;
    let reader = keel_tests::kafka::consumer(&bootstrap, "read_committed")?;
    let from_runtime =
        keel_tests::kafka::read_topic(&reader, &dlq, 2, PATIENCE, Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| handle.shutdown()).ok();
    let _ = std::fs::remove_dir_all(&dir);
    let from_runtime = from_runtime.context("the runtime's dead letters")?;

    assert_eq!(from_sink.len(), 2, "the sink's dead letters: {from_sink:?}");
    assert_eq!(
        from_runtime.len(),
        2,
        "the runtime's dead letters: {from_runtime:?}"
    );
    let sink: Vec<_> = from_sink.iter().map(source_headers).collect();
    let runtime: Vec<_> = from_runtime.iter().map(source_headers).collect();
    assert_eq!(sink, runtime, "one rule for the sink and the runtime");
    let timestamps: Vec<_> = sink
        .iter()
        .map(|h| h[3].1.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        timestamps,
        ["-1".to_owned(), with_timestamp.to_string()],
        "a missing timestamp reads -1 (Kafka's NO_TIMESTAMP)"
    );
    Ok(())
}
