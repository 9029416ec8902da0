//! Dead letters of the plain consumers (the order sink, the Cassandra sink, the payment
//! service): a record one cannot use (undecodable, or no rows can be made of it) is copied to
//! the dead-letter topic `<group id>-dlq` ([`topic_for`]: the runtime's `<application.id>-dlq`
//! rule) with the runtime's headers ([`keel_topology::dlq_headers`]), counted, and only then
//! passed over.
//!
//! The copy: the record's key, value and headers, then `keel.error` (why), `keel.source.topic`,
//! `keel.source.partition`, `keel.source.offset`, `keel.source.timestamp` (ms; `-1` if the
//! record has none) and `keel.processor` (the sink's name): the runtime's own
//! [`keel_topology::dlq_headers::for_source`] (decimal text) with the timestamp rule of
//! [`keel_topology::timestamp_ms`], so a sink's dead letter and the runtime's say the same
//! (the runtime adds `keel.task`). Its timestamp is the time it is written. The producer is
//! idempotent with `acks=all`, and [`DeadLetters::send`] returns only once the broker has
//! acknowledged the copy: a sink commits its offset past the record after that, so a crash
//! cannot lose it.
//!
//! Counted in `keel_sink_dead_letters_total{sink, topic}` (`topic`: the source topic).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use keel_topology::dlq_headers;
use prometheus::{IntCounterVec, Opts, Registry};
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers as _, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use crate::producer::AckedProducer;

/// The counter's name.
pub const METRIC: &str = "keel_sink_dead_letters_total";

/// How long the broker has to acknowledge a dead letter (librdkafka retries within it): the
/// default `message.timeout.ms` (the `client` settings of [`DeadLetters::new`] may change it).
pub const ACK_WITHIN: Duration = Duration::from_secs(30);

/// What can go wrong writing dead letters.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("kafka: creating the dead-letter producer: {0}")]
    Producer(#[source] KafkaError),
    #[error("registering {METRIC}: {0}")]
    Metrics(#[source] prometheus::Error),
    /// The broker did not acknowledge the copy: the record must not be passed over.
    #[error("kafka: writing {record} to dead-letter topic {topic}: {source}")]
    Send {
        topic: String,
        /// The record's `topic/partition@offset`.
        record: String,
        #[source]
        source: Box<KafkaError>,
    },
}

/// The dead-letter topic of consumer group `group_id`: `<group_id>-dlq`.
pub fn topic_for(group_id: &str) -> String {
    format!("{group_id}-dlq")
}

/// A sink's dead-letter writer. Cheap to clone (the producer is shared).
#[derive(Clone)]
pub struct DeadLetters {
    producer: Arc<AckedProducer>,
    topic: String,
    sink: String,
    counter: IntCounterVec,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("topic", &self.topic)
            .field("sink", &self.sink)
            .finish_non_exhaustive()
    }
}

impl DeadLetters {
    /// A writer to `<group_id>-dlq` for sink `sink` (e.g. `order-sink`: the `keel.processor`
    /// header and the counter's `sink` label), through `bootstrap` with the `client` settings
    /// (e.g. `[kafka].client`'s security settings; idempotence, `acks=all` and the murmur2
    /// partitioner are always set; `message.timeout.ms` is [`ACK_WITHIN`] unless set there). Registers this sink's `keel_sink_dead_letters_total` series
    /// into `registry` (each sink once per registry; several sinks share the name).
    /// Errors: [`Error::Producer`], [`Error::Metrics`].
    pub fn new(
        bootstrap: &str,
        client: &BTreeMap<String, String>,
        group_id: &str,
        sink: &str,
        registry: &Registry,
    ) -> Result<Self, Error> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap)
            .set("message.timeout.ms", ACK_WITHIN.as_millis().to_string());
        for (k, v) in client {
            config.set(k, v);
        }
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random");
        let producer = Arc::new(AckedProducer::from_config(&config).map_err(Error::Producer)?);
        let counter = IntCounterVec::new(
            Opts::new(
                METRIC,
                "Records a plain-consumer sink could not use, written to its dead-letter topic",
            )
            .const_label("sink", sink),
            &["topic"],
        )
        .map_err(Error::Metrics)?;
        registry
            .register(Box::new(counter.clone()))
            .map_err(Error::Metrics)?;
        Ok(Self {
            producer,
            topic: topic_for(group_id),
            sink: sink.to_owned(),
            counter,
        })
    }

    /// The dead-letter topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// How many records of `source_topic` this writer dead-lettered (creates the series at 0
    /// if there is none yet).
    pub fn count(&self, source_topic: &str) -> u64 {
        self.counter.with_label_values(&[source_topic]).get()
    }

    /// Writes the dead-letter copy of `message` (why: `why`) and waits for the broker's
    /// acknowledgement (at most `message.timeout.ms`, [`ACK_WITHIN`] by default), then counts it. An error means the copy is not
    /// known to be stored: the caller must not commit past the record. Errors: [`Error::Send`].
    pub async fn send<M: Message>(&self, message: &M, why: &str) -> Result<(), Error> {
        let (source_topic, partition, offset) =
            (message.topic(), message.partition(), message.offset());
        let mut headers = OwnedHeaders::new();
        if let Some(original) = message.headers() {
            for header in original.iter() {
                headers = headers.insert(Header {
                    key: header.key,
                    value: header.value,
                });
            }
        }
        for (key, value) in dlq_headers::for_source(
            why,
            source_topic,
            partition,
            offset,
            keel_topology::timestamp_ms(message.timestamp()),
            &self.sink,
        ) {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_str()),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic)
            .headers(headers)
            .timestamp(chrono::Utc::now().timestamp_millis());
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(value) = message.payload() {
            record = record.payload(value);
        }
        let sent = self.producer.send(record, ACK_WITHIN).await;
        if let Err(source) = sent {
            return Err(Error::Send {
                topic: self.topic.clone(),
                record: format!("{source_topic}/{partition}@{offset}"),
                source: Box::new(source),
            });
        }
        self.counter.with_label_values(&[source_topic]).inc();
        tracing::warn!(
            sink = %self.sink,
            topic = source_topic,
            partition,
            offset,
            dead_letter_topic = %self.topic,
            error = why,
            "dead-lettered a record the sink cannot use"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topic_follows_the_runtime_rule() {
        assert_eq!(topic_for("keel-order-sink"), "keel-order-sink-dlq");
    }

    #[test]
    fn two_sinks_share_the_counter_name_in_one_registry() {
        let registry = Registry::new();
        let a = DeadLetters::new(
            "127.0.0.1:1",
            &BTreeMap::new(),
            "g-a",
            "order-sink",
            &registry,
        )
        .expect("first sink");
        let b = DeadLetters::new(
            "127.0.0.1:1",
            &BTreeMap::new(),
            "g-b",
            "cassandra-sink",
            &registry,
        )
        .expect("second sink");
        a.counter.with_label_values(&["t"]).inc();
        let families = registry.gather();
        let family = families
            .iter()
            .find(|f| f.name() == METRIC)
            .expect("the counter is exported");
        assert_eq!(family.get_metric().len(), 1, "only series with a value");
        b.counter.with_label_values(&["t"]).inc();
        let families = registry.gather();
        let family = families
            .iter()
            .find(|f| f.name() == METRIC)
            .expect("the counter is exported");
        assert_eq!(family.get_metric().len(), 2, "one series per sink");
        assert_eq!((a.count("t"), b.count("t")), (1, 1));
    }
}
