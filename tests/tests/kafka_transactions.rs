//! The broker's transactions work end to end: a committed batch is visible under
//! `read_committed`, an aborted one is not (but was really written: `read_uncommitted` sees it).

use std::time::Duration;

use keel_tests::kafka::{consumer, create_topics, payload_str, read_topic};
use keel_tests::topics::TopicCleanup;
use keel_tests::{PATIENCE, Stack, unique};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

const COMMITTED: [&str; 3] = ["c-1", "c-2", "c-3"];
const ABORTED: [&str; 2] = ["a-1", "a-2"];

fn send_batch(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    values: &[&str],
) -> anyhow::Result<()> {
    for v in values {
        producer
            .send(BaseRecord::to(topic).key(*v).payload(*v))
            .map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(10))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn read_committed_sees_the_committed_batch_and_not_the_aborted_one() -> anyhow::Result<()> {
    let stack = Stack::from_env();
    let topic = unique("tx_topic");
    let _topic = TopicCleanup::new(stack.kafka_bootstrap.as_str()).topic(&topic);
    create_topics(&stack.kafka_bootstrap, &[&topic], 1).await?;

    let bootstrap = stack.kafka_bootstrap.clone();
    let t = topic.clone();
    // Transaction calls block: keep them off the async executor.
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("transactional.id", unique("tx_id"))
            .set("enable.idempotence", "true")
            .create()?;
        let timeout = Duration::from_secs(30);
        producer.init_transactions(timeout)?;

        producer.begin_transaction()?;
        send_batch(&producer, &t, &COMMITTED)?;
        producer.commit_transaction(timeout)?;

        producer.begin_transaction()?;
        send_batch(&producer, &t, &ABORTED)?;
        producer.abort_transaction(timeout)?;
        Ok(())
    })
    .await??;

    let committed = read_topic(
        &consumer(&stack.kafka_bootstrap, "read_committed")?,
        &topic,
        COMMITTED.len(),
        PATIENCE,
        Duration::from_secs(2),
    )
    .await?;
    let seen: Vec<String> = committed.iter().map(payload_str).collect();
    assert_eq!(
        seen, COMMITTED,
        "read_committed must see exactly the committed batch"
    );

    let everything = read_topic(
        &consumer(&stack.kafka_bootstrap, "read_uncommitted")?,
        &topic,
        COMMITTED.len() + ABORTED.len(),
        PATIENCE,
        Duration::from_secs(2),
    )
    .await?;
    let seen: Vec<String> = everything.iter().map(payload_str).collect();
    let expected: Vec<&str> = COMMITTED.iter().chain(ABORTED.iter()).copied().collect();
    assert_eq!(
        seen, expected,
        "read_uncommitted sees the aborted records too, so the abort really hid written data"
    );
    Ok(())
}
