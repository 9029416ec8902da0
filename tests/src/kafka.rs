//! Kafka helpers for tests: topic creation, producers and consumers with test-friendly settings.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};

use crate::unique;

/// Create topics (one partition count for all) and wait until the broker has them.
pub async fn create_topics(bootstrap: &str, names: &[&str], partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&topics, &opts).await? {
        if let Err((topic, code)) = result {
            anyhow::bail!("could not create topic {topic}: {code}");
        }
    }
    Ok(())
}

/// A consumer in a fresh group that reads from the beginning with the given isolation level
/// (`read_committed` or `read_uncommitted`).
pub fn consumer(bootstrap: &str, isolation: &str) -> anyhow::Result<StreamConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("test_group"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()?)
}

/// Read messages from `topic` until `expected` arrived or `within` passed, then keep reading
/// for `settle` more to catch anything unexpected. Returns everything read.
pub async fn read_topic(
    consumer: &StreamConsumer,
    topic: &str,
    expected: usize,
    within: Duration,
    settle: Duration,
) -> anyhow::Result<Vec<OwnedMessage>> {
    consumer.subscribe(&[topic])?;
    let mut out = Vec::new();
    let start = Instant::now();
    let mut deadline = start + within;
    let mut settling = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        match tokio::time::timeout(deadline - now, consumer.recv()).await {
            Ok(Ok(m)) => {
                out.push(m.detach());
                if out.len() >= expected && !settling {
                    settling = true;
                    deadline = Instant::now() + settle;
                }
            }
            Ok(Err(e)) => anyhow::bail!("consuming {topic}: {e}"),
            Err(_) => break,
        }
    }
    Ok(out)
}

/// The payload of a message as UTF-8 (empty for none).
pub fn payload_str(m: &OwnedMessage) -> String {
    m.payload()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default()
}
