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
use rustc_hash::FxHashMap;

use crate::config::StreamsConfig;
use crate::error::{Error, Result};
use crate::record::{Headers, OutRecord};

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

/// librdkafka's memory bounds the runtime sets where the user set nothing (in `client` or the
/// role's own map), so a stream thread's clients hold megabytes, not librdkafka's defaults
/// (a consumer pre-fetches up to 100,000 messages per partition or 64 MiB; a producer queues
/// up to 1 GiB). Each is a plain librdkafka setting: set it in `streams.consumer` /
/// `streams.producer` to trade memory for speed.
pub(crate) mod memory_defaults {
    /// The group consumer: messages pre-fetched per partition (librdkafka: 100,000). 20,000
    /// small records are ~0.1 s of a partition at 200,000 records/s.
    pub(crate) const GROUP_QUEUED_MIN_MESSAGES: &str = "20000";
    /// The group consumer: KiB pre-fetched in all (librdkafka: 65,536).
    pub(crate) const GROUP_QUEUED_MAX_KBYTES: &str = "16384";
    /// The group consumer: bytes fetched per partition and request (librdkafka: 1 MiB). The
    /// limit is on the compressed batches, and librdkafka keeps one ~190-byte message object
    /// per record: 1 MiB of lz4 batches of small records was ~400,000 records, ~75 MiB, per
    /// partition. A batch larger than this still comes whole (KIP-74).
    pub(crate) const GROUP_MAX_PARTITION_FETCH_BYTES: &str = "262144";
    /// Both consumers: how long librdkafka postpones a partition's next fetch once its queue
    /// is over the thresholds above (librdkafka: 1,000 ms). With small queues the default
    /// leaves the thread idle: a 256 KiB fetch is drained in well under a second, then the
    /// partition waited out the rest (57,000 records/s with the machine 20 % busy).
    pub(crate) const FETCH_QUEUE_BACKOFF_MS: &str = "10";
    /// The restore consumer: messages pre-fetched per partition (librdkafka: 100,000).
    pub(crate) const RESTORE_QUEUED_MIN_MESSAGES: &str = "50000";
    /// The restore consumer: KiB pre-fetched in all (librdkafka: 65,536); 64 of its 512 KiB
    /// partition fetches (`StreamsConfig::restore_fetch_bytes`). (librdkafka counts keys and
    /// values only: for small records, the message count above is what binds.)
    pub(crate) const RESTORE_QUEUED_MAX_KBYTES: &str = "32768";
    /// The producer: KiB of records queued or in flight (librdkafka: 1,048,576); a full queue
    /// makes a send wait for delivery reports (`send_parts`).
    pub(crate) const PRODUCER_QUEUE_MAX_KBYTES: &str = "65536";
}

/// Sets `key` to `value` unless the user's settings (already in `c`) name it.
pub(crate) fn set_default(c: &mut ClientConfig, key: &str, value: &str) {
    if c.get(key).is_none() {
        c.set(key, value);
    }
}

/// The stream thread `index`'s producer: the user's settings, the runtime's defaults where the
/// user set nothing (`linger.ms` 5), then what the runtime owns (Kafka's murmur2 partitioner,
/// idempotence, the transactional id). Settings of the user that contradict what the runtime
/// owns are refused by [`StreamsConfig::validate`], never silently replaced.
pub(crate) fn producer_config(
    config: &StreamsConfig,
    instance: &str,
    index: usize,
) -> ClientConfig {
    let eos = config.processing_guarantee == keel_state::Guarantee::ExactlyOnce;
    let mut pc = client_config(config, Role::Producer);
    if pc.get("linger.ms").is_none() && pc.get("queue.buffering.max.ms").is_none() {
        pc.set("linger.ms", "5");
    }
    set_default(
        &mut pc,
        "queue.buffering.max.kbytes",
        memory_defaults::PRODUCER_QUEUE_MAX_KBYTES,
    );
    pc.set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true");
    if eos {
        pc.set(
            "transactional.id",
            format!("{}-{instance}-{index}", config.application_id),
        )
        .set(
            "transaction.timeout.ms",
            config.transaction_timeout_ms.to_string(),
        );
    }
    pc
}

/// A client context that stays quiet about partition EOF (the end signal of a consumer with
/// `enable.partition.eof`: the restore consumer's, `keel audit`'s) and logs other client errors
/// through `tracing`.
#[derive(Debug, Default)]
pub struct QuietEof;

impl ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka reports the end of a partition both ways: as a partition error and, from
        // its error callback, as a global one.
        if !matches!(
            error,
            KafkaError::PartitionEOF(_)
                | KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::warn!(%error, reason, "kafka client error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for QuietEof {}

/// The delivery tag ([`send_parts`]' `origin`) of a changelog record: no input record is
/// behind it (like 0), and its delivered offset is recorded for the store's checkpoint. The
/// offsets of other records are not recorded: nothing reads them, and a delivery report that
/// looks nothing up costs less (the topic name behind a report is a C string to measure and
/// check per record).
pub(crate) const CHANGELOG: usize = usize::MAX;

/// Records the offset of the last changelog record delivered per topic-partition, and the
/// first delivery failure, for the commit that follows.
#[derive(Debug, Default)]
pub(crate) struct DeliveryLog {
    /// Per changelog topic, per partition (looked up by the delivered message's borrowed topic
    /// name: no allocation per delivery report).
    last: Mutex<FxHashMap<String, FxHashMap<i32, i64>>>,
    failure: Mutex<Option<DeliveryFailure>>,
    /// The origins of every refused record since the last call of `take_refused_origins`.
    refused: Mutex<Vec<usize>>,
}

/// A record the producer could not deliver.
#[derive(Debug, Clone)]
pub(crate) struct DeliveryFailure {
    pub(crate) topic: String,
    pub(crate) error: KafkaError,
    /// The sender's tag of the record ([`send_from`]): which input record it came from; 0
    /// (punctuation output) or [`CHANGELOG`] for none.
    pub(crate) origin: usize,
}

impl DeliveryFailure {
    /// Whether the broker (or the producer's own limits) refused this record for what it is —
    /// too large for the topic, a timestamp outside the topic's window, an invalid record — so
    /// sending it again can never succeed, unlike a transient failure.
    pub(crate) fn refused(&self) -> bool {
        let code = match &self.error {
            KafkaError::MessageProduction(code) | KafkaError::Global(code) => Some(*code),
            _ => self.error.rdkafka_error_code(),
        };
        matches!(
            code,
            Some(
                RDKafkaErrorCode::MessageSizeTooLarge
                    | RDKafkaErrorCode::InvalidMessageSize
                    | RDKafkaErrorCode::MessageBatchTooLarge
                    | RDKafkaErrorCode::InvalidTimestamp
                    | RDKafkaErrorCode::InvalidRecord
                    | RDKafkaErrorCode::InvalidMessage
            )
        )
    }
}

impl std::fmt::Display for DeliveryFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "delivery to {} failed: {}", self.topic, self.error)
    }
}

impl DeliveryLog {
    /// Offsets of the changelog records ([`CHANGELOG`]) delivered since the last call.
    pub(crate) fn take_offsets(&self) -> HashMap<(String, i32), i64> {
        let last = self
            .last
            .lock()
            .map(|mut m| std::mem::take(&mut *m))
            .unwrap_or_default();
        last.into_iter()
            .flat_map(|(topic, partitions)| {
                partitions
                    .into_iter()
                    .map(move |(partition, offset)| ((topic.clone(), partition), offset))
            })
            .collect()
    }

    /// The first failure since the last call.
    pub(crate) fn take_failure(&self) -> Option<DeliveryFailure> {
        self.failure.lock().ok().and_then(|mut f| f.take())
    }

    /// Keeps the first failure, except that a refused record wins over a failure of another
    /// kind: when the broker refuses one record of a batch, the others of the batch fail with
    /// `InvalidDifferentRecord`, possibly reported first.
    fn record_failure(&self, failure: DeliveryFailure) {
        if failure.refused()
            && let Ok(mut refused) = self.refused.lock()
        {
            refused.push(failure.origin);
        }
        if let Ok(mut slot) = self.failure.lock() {
            let replace = match slot.as_ref() {
                None => true,
                Some(first) => !first.refused() && failure.refused(),
            };
            if replace {
                *slot = Some(failure);
            }
        }
    }

    /// The origins of the records refused since the last call. The broker refuses a whole
    /// batch for one bad record (every record of it gets the same error), so this names the
    /// suspects, not necessarily the culprit.
    pub(crate) fn take_refused_origins(&self) -> Vec<usize> {
        self.refused
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
    }

    pub(crate) fn clear(&self) {
        self.take_offsets();
        self.take_failure();
        self.take_refused_origins();
    }
}

impl ClientContext for DeliveryLog {}

impl ProducerContext for DeliveryLog {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, origin: usize) {
        match result {
            Ok(_) if origin != CHANGELOG => {}
            Ok(m) => {
                if let Ok(mut last) = self.last.lock() {
                    let (partition, offset) = (m.partition(), m.offset());
                    match last.get_mut(m.topic()) {
                        Some(partitions) => {
                            let entry = partitions.entry(partition).or_insert(-1);
                            *entry = (*entry).max(offset);
                        }
                        None => {
                            last.insert(
                                m.topic().to_owned(),
                                FxHashMap::from_iter([(partition, offset)]),
                            );
                        }
                    }
                }
            }
            // Purged by an abort: the abort is already under way.
            Err((
                KafkaError::MessageProduction(
                    RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight,
                ),
                _,
            )) => {}
            Err((e, m)) => self.record_failure(DeliveryFailure {
                topic: m.topic().to_owned(),
                error: e.clone(),
                origin,
            }),
        }
    }
}

pub(crate) type Producer = BaseProducer<DeliveryLog>;

/// Sends one record tagged with `origin` (see [`DeliveryFailure::origin`]), waiting for queue
/// space when the local queue is full. A record the producer refuses at once for what it is
/// (larger than `message.max.bytes`) is reported like a refused delivery, for the commit to
/// handle.
pub(crate) fn send_from(producer: &Producer, record: &OutRecord, origin: usize) -> Result<()> {
    send_parts(
        producer,
        Outgoing {
            topic: &record.topic,
            partition: record.partition,
            key: record.key.as_deref(),
            value: record.value.as_deref(),
            timestamp: record.timestamp,
            headers: &record.headers,
        },
        origin,
    )
}

/// A record to send, borrowed from wherever it lives (an [`OutRecord`], a changelog record).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outgoing<'a> {
    pub(crate) topic: &'a str,
    /// `None`: the producer's partitioner (murmur2 of the key).
    pub(crate) partition: Option<i32>,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) value: Option<&'a [u8]>,
    /// Milliseconds since the epoch; negative values are sent as 0.
    pub(crate) timestamp: i64,
    pub(crate) headers: &'a Headers,
}

/// Sends `record` tagged with `origin`, as [`send_from`]. Builds librdkafka's header list only
/// for a record that has headers (an empty list is still one allocation and free per record).
pub(crate) fn send_parts(producer: &Producer, record: Outgoing<'_>, origin: usize) -> Result<()> {
    let mut base: BaseRecord<'_, [u8], [u8], usize> =
        BaseRecord::with_opaque_to(record.topic, origin).timestamp(record.timestamp.max(0));
    if !record.headers.0.is_empty() {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.0.len());
        for (name, value) in record.headers.iter() {
            headers = headers.insert(Header { key: name, value });
        }
        base = base.headers(headers);
    }
    if let Some(key) = record.key {
        base = base.key(key);
    }
    if let Some(value) = record.value {
        base = base.payload(value);
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
                let failure = DeliveryFailure {
                    topic: record.topic.to_owned(),
                    error: e.clone(),
                    origin,
                };
                if failure.refused() {
                    producer.context().record_failure(failure);
                    return Ok(());
                }
                return Err(Error::Kafka {
                    context: format!("sending to {}", record.topic),
                    source: e,
                });
            }
        }
    }
}

/// Waits until every record sent has its delivery report served, checking every
/// [`FLUSH_CHECK`]. (rdkafka's `BaseProducer::flush` polls in 100 ms slices that do not return
/// early, which put a fixed 100 ms into every commit; and `BaseProducer::poll(t)` serves events
/// until `t` has passed, asking librdkafka's queue with whole milliseconds, so the last
/// sub-millisecond of every call busy-loops on the clock — a `poll(1 ms)` loop spent a third
/// of a checkout run's CPU in `clock_gettime`. Sleeping between non-blocking polls costs at
/// most [`FLUSH_CHECK`] per commit and no CPU while the broker answers.)
pub(crate) fn flush(producer: &Producer, timeout: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        serve_delivery_reports(producer);
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
        std::thread::sleep(FLUSH_CHECK);
    }
}

/// Serves every delivery report librdkafka has ready, without waiting for more. rdkafka's
/// `poll` with a zero timeout serves one event, and one event carries the reports of one
/// produce request: at 300,000 records/s a commit found ~65,000 records "in flight" that were
/// mostly reports waiting to be served, and the flush, serving one event per check, spent
/// ~10 ms of each commit asleep between them. (`in_flight_count` is librdkafka's
/// `rd_kafka_outq_len`: records queued or in flight plus events not yet served; serving an
/// event lowers it, so the loop stops when a poll served nothing.)
pub(crate) fn serve_delivery_reports(producer: &Producer) {
    let mut before = producer.in_flight_count();
    while before > 0 {
        producer.poll(Duration::ZERO);
        let after = producer.in_flight_count();
        if after >= before {
            return;
        }
        before = after;
    }
}

/// How often [`flush`] looks for delivery reports: a broker's acknowledgement takes a
/// millisecond or more on loopback, so a check every 100 µs adds at most that (and the sleep's
/// overshoot) to a commit; 500 µs made commits longer in the A/B of docs/BENCHMARKS.md.
const FLUSH_CHECK: Duration = Duration::from_micros(100);

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

    /// One call serves every delivery report that is ready, not one produce request's worth.
    /// Before, the commit's flush served one event per check and slept 100 µs between checks:
    /// ~10 ms of each commit at 300,000 records/s (docs/BENCHMARKS.md). Against the stack's
    /// broker: 1,000 records in produce requests of 10 make ~100 report events; a call per
    /// 50 ms must have served them all in a few calls, where one event per call needs ~100.
    #[test]
    fn serving_delivery_reports_serves_every_ready_request() {
        let bootstrap = keel_tests::Stack::from_env().kafka_bootstrap;
        let topic = keel_tests::unique("serve_reports");
        let _cleanup = keel_tests::topics::TopicCleanup::new(bootstrap.clone()).topic(&topic);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(keel_tests::kafka::create_topics(&bootstrap, &[&topic], 1))
            .expect("topic");
        let producer: Producer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("linger.ms", "0")
            .set("batch.num.messages", "10")
            .create_with_context(DeliveryLog::default())
            .expect("producer");
        let no_headers = Headers::default();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        for i in 0..1_000_u32 {
            let value = i.to_be_bytes();
            send_parts(
                &producer,
                Outgoing {
                    topic: &topic,
                    partition: Some(0),
                    key: None,
                    value: Some(&value),
                    timestamp: now_ms,
                    headers: &no_headers,
                },
                CHANGELOG,
            )
            .expect("send");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut calls = 0;
        while producer.in_flight_count() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            serve_delivery_reports(&producer);
            calls += 1;
        }
        assert_eq!(
            producer.in_flight_count(),
            0,
            "reports left after {calls} calls"
        );
        assert!(
            calls <= 40,
            "{calls} calls to serve the reports of ~100 produce requests"
        );
        assert_eq!(
            producer.context().take_offsets().get(&(topic.clone(), 0)),
            Some(&999),
            "the last changelog offset delivered"
        );
    }

    #[test]
    fn the_users_linger_is_honoured() {
        let mut c = StreamsConfig::new("app", "localhost:9092");
        c.producer.insert("linger.ms".into(), "50".into());
        let pc = producer_config(&c, "one", 0);
        assert_eq!(pc.get("linger.ms"), Some("50"));
        assert_eq!(pc.get("partitioner"), Some("murmur2_random"));
        c.producer.remove("linger.ms");
        assert_eq!(
            producer_config(&c, "one", 0).get("linger.ms"),
            Some("5"),
            "the runtime's default"
        );
    }

    #[test]
    fn settings_the_runtime_owns_or_cannot_honour_are_refused_with_a_reason() {
        let mut c = StreamsConfig::new("app", "localhost:9092");
        c.producer.insert("partitioner".into(), "consistent".into());
        c.producer.insert("transactional.id".into(), "mine".into());
        c.producer
            .insert("enable.idempotence".into(), "false".into());
        c.consumer.insert("group.id".into(), "other".into());
        c.consumer
            .insert("isolation.level".into(), "read_uncommitted".into());
        let err = c.validate().expect_err("refused").to_string();
        for needle in [
            "producer.partitioner",
            "murmur2",
            "producer.transactional.id",
            "producer.enable.idempotence",
            "consumer.group.id",
            "consumer.isolation.level",
        ] {
            assert!(err.contains(needle), "{needle} missing: {err}");
        }
        // Kafka's murmur2 partitioner itself may be named.
        let mut ok = StreamsConfig::new("app", "localhost:9092");
        ok.producer
            .insert("partitioner".into(), "murmur2_random".into());
        ok.producer.insert("linger.ms".into(), "20".into());
        ok.validate().expect("valid");
    }

    #[test]
    fn partitions_match_the_java_client() {
        // Values from Kafka's own partitioner tests (Utils.murmur2 / toPositive % n).
        assert_eq!(murmur2(b"21") as i32, -973_932_308);
        assert_eq!(murmur2(b"foobar") as i32, -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985_981_536);
        assert_eq!(murmur2(b"abc") as i32, 479_470_107);
    }
}
