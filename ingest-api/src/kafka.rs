//! The command producer: idempotent, `acks=all`, Kafka's murmur2 partitioner, and a delivery
//! deadline of `produce_timeout_ms` so an unreachable or slow cluster becomes a 503 quickly.

use std::sync::Arc;
use std::time::Duration;

use keel_processors::producer::AckedProducer;
use rdkafka::ClientConfig;
use rdkafka::producer::FutureRecord;

use crate::config::ApiConfig;
use crate::{Error, Result};

/// A producer for commands, talking to `bootstrap`. `overrides` are extra librdkafka settings
/// (e.g. security), applied last.
pub fn command_producer(
    bootstrap: &str,
    config: &ApiConfig,
    overrides: &[(String, String)],
) -> Result<Arc<AckedProducer>> {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "2")
        .set("message.timeout.ms", config.produce_timeout_ms.to_string())
        .set(
            "request.timeout.ms",
            config.produce_timeout_ms.clamp(1, 30_000).to_string(),
        );
    for (k, v) in overrides {
        client.set(k, v);
    }
    let producer = AckedProducer::from_config(&client).map_err(|source| Error::Kafka {
        operation: "creating the command producer",
        source,
    })?;
    Ok(Arc::new(producer))
}

/// Why a command was not confirmed.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("kafka did not confirm the command within {0:?}")]
    Timeout(Duration),
    #[error("kafka refused the command: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// Send `payload` to `topic` with key `key` and wait until every in-sync replica has it, or
/// `timeout` passes. Returns (partition, offset).
pub async fn produce(
    producer: &AckedProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    timeout: Duration,
) -> std::result::Result<(i32, i64), ProduceError> {
    let record = FutureRecord::to(topic).key(key).payload(payload);
    // librdkafka fails the message itself at message.timeout.ms; this bound is a safety net.
    let send = producer.send(record, timeout);
    match tokio::time::timeout(timeout + Duration::from_millis(500), send).await {
        Ok(Ok(delivered)) => Ok(delivered),
        Ok(Err(e)) => Err(ProduceError::Kafka(e)),
        Err(_) => Err(ProduceError::Timeout(timeout)),
    }
}
