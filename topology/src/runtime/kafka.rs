//! The Kafka clients of a stream thread: configuration, the producer context that records
//! delivered offsets, and sending [`OutRecord`]s.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext};

use crate::config::StreamsConfig;
use crate::error::{Error, Result};
use crate::record::OutRecord;

/// Which client a config is for (picks the pass-through section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Admin,
    Consumer,
    Producer,
}

/// A client config with the bootstrap servers and the user's pass-through settings; `set`s
/// made after this call are the runtime's and win.
pub(crate) fn client_config(config: &StreamsConfig, role: Role) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.bootstrap_servers);
    let specific = match role {
        Role::Admin => None,
        Role::Consumer => Some(&config.consumer),
        Role::Producer => Some(&config.producer),
    };
    for (k, v) in config.client.iter().chain(specific.into_iter().flatten()) {
        c.set(k, v);
    }
    c
}

/// A client context that stays quiet about partition EOF (the restore consumer's end signal)
/// and logs other client errors through `tracing`.
#[derive(Debug, Default)]
pub(crate) struct QuietEof;

impl ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_)) {
            tracing::warn!(%error, reason, "kafka client error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for QuietEof {}

/// Records the offset of the last record delivered per topic-partition, and the first
/// delivery failure, for the commit that follows.
#[derive(Debug, Default)]
pub(crate) struct DeliveryLog {
    last: Mutex<HashMap<(String, i32), i64>>,
    failure: Mutex<Option<String>>,
}

impl DeliveryLog {
    /// Offsets delivered since the last call.
    pub(crate) fn take_offsets(&self) -> HashMap<(String, i32), i64> {
        self.last
            .lock()
            .map(|mut m| std::mem::take(&mut *m))
            .unwrap_or_default()
    }

    /// The first failure since the last call.
    pub(crate) fn take_failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|mut f| f.take())
    }

    pub(crate) fn clear(&self) {
        self.take_offsets();
        self.take_failure();
    }
}

impl ClientContext for DeliveryLog {}

impl ProducerContext for DeliveryLog {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => {
                if let Ok(mut last) = self.last.lock() {
                    let entry = last
                        .entry((m.topic().to_owned(), m.partition()))
                        .or_insert(-1);
                    *entry = (*entry).max(m.offset());
                }
            }
            Err((e, m)) => {
                if let Ok(mut failure) = self.failure.lock()
                    && failure.is_none()
                {
                    *failure = Some(format!(
                        "delivery to {}/{} failed: {e}",
                        m.topic(),
                        m.partition()
                    ));
                }
            }
        }
    }
}

pub(crate) type Producer = BaseProducer<DeliveryLog>;

/// Sends one record, waiting for queue space when the local queue is full.
pub(crate) fn send(producer: &Producer, record: &OutRecord) -> Result<()> {
    let mut headers = OwnedHeaders::new();
    for (name, value) in record.headers.iter() {
        headers = headers.insert(Header {
            key: name,
            value: Some(value),
        });
    }
    let mut base: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&record.topic)
        .timestamp(record.timestamp.max(0))
        .headers(headers);
    if let Some(key) = &record.key {
        base = base.key(key.as_slice());
    }
    if let Some(value) = &record.value {
        base = base.payload(value.as_slice());
    }
    if let Some(p) = record.partition {
        base = base.partition(p);
    }
    loop {
        match producer.send(base) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                base = back;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, _)) => {
                return Err(Error::Kafka {
                    context: format!("sending to {}", record.topic),
                    source: e,
                });
            }
        }
    }
}

/// Waits until every record sent has its delivery report served. (rdkafka's
/// `BaseProducer::flush` polls in 100 ms slices that do not return early, which put a fixed
/// 100 ms into every commit.)
pub(crate) fn flush(producer: &Producer, timeout: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        producer.poll(Duration::ZERO);
        if producer.in_flight_count() == 0 {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(Error::Kafka {
                context: format!(
                    "flush: {} records still in flight",
                    producer.in_flight_count()
                ),
                source: KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut),
            });
        }
        producer.poll(Duration::from_millis(1));
    }
}

/// Kafka's default partitioner: murmur2 of the serialized key, positive, modulo partitions.
pub fn default_partition(key: &[u8], partitions: i32) -> i32 {
    let hash = murmur2(key) & 0x7fff_ffff;
    i32::try_from(hash % partitions.max(1) as u32).unwrap_or(0)
}

/// The murmur2 variant Kafka's Java client uses (seed 0x9747b28c).
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_match_the_java_client() {
        // Values from Kafka's own partitioner tests (Utils.murmur2 / toPositive % n).
        assert_eq!(murmur2(b"21") as i32, -973_932_308);
        assert_eq!(murmur2(b"foobar") as i32, -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985_981_536);
        assert_eq!(murmur2(b"abc") as i32, 479_470_107);
    }
}
