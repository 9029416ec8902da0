//! What the sinks' dead-letter tests share (`order_sink.rs`, `inventory_sink_dlq.rs`,
//! `dead_letter_rule.rs`; each has `mod common;`): [`DlqSetup`], a sink group's input topics
//! and dead-letter topic on the stack's broker with a producer and a codec of their own;
//! [`Poison`], a record a sink cannot use, and the check that a dead letter is its copy;
//! [`header`] and [`exported`] to read a dead letter and the sink's counter.

#![allow(dead_code)] // Each test file uses its own part.

use std::time::Duration;

use anyhow::Context;
use keel_avro::{Codec, RegistryConfig};
use keel_processors::dead_letter::{self, DeadLetters};
use keel_tests::topics::TopicCleanup;
use keel_tests::{PATIENCE, Stack, unique};
use keel_topology::dlq_headers;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, Headers as _, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// A codec on the stack's registry whose subjects are this test's own.
pub fn codec(stack: &Stack) -> anyhow::Result<Codec> {
    Ok(Codec::new(RegistryConfig {
        subject_prefix: format!("{}-", unique("sink")),
        ..RegistryConfig::with_url(stack.registry_url.clone())
    })?)
}

/// A sink group and what its dead-letter tests start from: its input topics and its
/// dead-letter topic `<group>-dlq` (one partition each, so a record written after a bad one
/// proves the bad one was passed; all deleted at drop), an idempotent producer and a codec.
pub struct DlqSetup {
    pub bootstrap: String,
    /// The sink's consumer group (`unique(<tag>)`).
    pub group: String,
    /// `<group>-dlq`.
    pub dlq: String,
    pub codec: Codec,
    pub producer: FutureProducer,
    _topics: TopicCleanup,
}

impl DlqSetup {
    /// Creates `inputs` and the dead-letter topic of a new group `unique(group_tag)`.
    pub async fn new(
        stack: &Stack,
        group_tag: &str,
        inputs: &[impl AsRef<str>],
    ) -> anyhow::Result<Self> {
        let bootstrap = stack.kafka_bootstrap.clone();
        let group = unique(group_tag);
        let dlq = dead_letter::topic_for(&group);
        let mut create: Vec<&str> = inputs.iter().map(AsRef::as_ref).collect();
        create.push(&dlq);
        let topics = TopicCleanup::new(bootstrap.as_str()).topics(create.iter().copied());
        keel_tests::kafka::create_topics(&bootstrap, &create, 1).await?;
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("enable.idempotence", "true")
            .create()?;
        Ok(Self {
            codec: codec(stack)?,
            bootstrap,
            group,
            dlq,
            producer,
            _topics: topics,
        })
    }

    /// A dead-letter writer of the group for sink `sink` (e.g. `order-sink`) through the
    /// stack's broker, into `registry`.
    pub fn dead_letters(
        &self,
        sink: &str,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<DeadLetters> {
        Ok(DeadLetters::new(
            &self.bootstrap,
            &Default::default(),
            &self.group,
            sink,
            registry,
        )?)
    }

    /// A dead-letter writer of the group for sink `sink` that reaches no broker (nothing
    /// listens on port 1; a write times out after 1 s): no write is ever acknowledged.
    pub fn unreachable_dead_letters(&self, sink: &str) -> anyhow::Result<DeadLetters> {
        Ok(DeadLetters::new(
            "127.0.0.1:1",
            &[("message.timeout.ms".to_owned(), "1000".to_owned())]
                .into_iter()
                .collect(),
            &self.group,
            sink,
            &prometheus::Registry::new(),
        )?)
    }

    /// Writes `value` under `key` to `topic`, with header `trace` = `trace` when given.
    pub async fn send_poison(
        &self,
        topic: &str,
        key: &'static str,
        value: &'static [u8],
        trace: Option<&'static str>,
    ) -> anyhow::Result<Poison> {
        let mut record = FutureRecord::to(topic).key(key).payload(value);
        if let Some(trace) = trace {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: "trace",
                value: Some(trace),
            }));
        }
        let delivered = self
            .producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)?;
        Ok(Poison {
            topic: topic.to_owned(),
            key,
            value,
            trace,
            partition: delivered.partition,
            offset: delivered.offset,
        })
    }

    /// Writes `value` under `key` to `topic` (`None`: a tombstone, a record without a value);
    /// where it landed (partition, offset).
    pub async fn send_raw(
        &self,
        topic: &str,
        key: &str,
        value: Option<&[u8]>,
    ) -> anyhow::Result<(i32, i64)> {
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).key(key);
        if let Some(value) = value {
            record = record.payload(value);
        }
        let delivered = self
            .producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)?;
        Ok((delivered.partition, delivered.offset))
    }

    /// The records on the dead-letter topic (read_committed; at least one is waited for).
    pub async fn letters(&self) -> anyhow::Result<Vec<OwnedMessage>> {
        let reader = keel_tests::kafka::consumer(&self.bootstrap, "read_committed")?;
        keel_tests::kafka::read_topic(&reader, &self.dlq, 1, PATIENCE, Duration::from_secs(2)).await
    }
}

/// A record a sink cannot use, as written ([`DlqSetup::send_poison`]).
#[derive(Debug)]
pub struct Poison {
    pub topic: String,
    pub key: &'static str,
    pub value: &'static [u8],
    /// Its `trace` header.
    pub trace: Option<&'static str>,
    pub partition: i32,
    pub offset: i64,
}

impl Poison {
    /// Asserts that `letter` is this record's dead letter from sink `processor`: the same key,
    /// value and headers, then the runtime's headers saying where from (topic, partition,
    /// offset, a timestamp), who (`processor`) and why (not empty).
    pub fn assert_dead_letter(&self, letter: &OwnedMessage, processor: &str) -> anyhow::Result<()> {
        assert_eq!(
            letter.payload(),
            Some(self.value),
            "the value is the bad record's bytes"
        );
        assert_eq!(letter.key(), Some(self.key.as_bytes()));
        assert_eq!(
            header(letter, "trace").as_deref(),
            self.trace,
            "original headers kept"
        );
        assert_eq!(
            header(letter, dlq_headers::SOURCE_TOPIC).as_ref(),
            Some(&self.topic)
        );
        assert_eq!(
            header(letter, dlq_headers::SOURCE_PARTITION),
            Some(self.partition.to_string())
        );
        assert_eq!(
            header(letter, dlq_headers::SOURCE_OFFSET),
            Some(self.offset.to_string())
        );
        assert_eq!(
            header(letter, dlq_headers::PROCESSOR).as_deref(),
            Some(processor)
        );
        let source_timestamp: i64 = header(letter, dlq_headers::SOURCE_TIMESTAMP)
            .context("no source timestamp")?
            .parse()?;
        assert!(source_timestamp > 0, "source timestamp {source_timestamp}");
        let why = header(letter, dlq_headers::ERROR).context("no error header")?;
        assert!(!why.is_empty(), "the error header says why");
        Ok(())
    }
}

/// The last value of header `name` of `m`, as text.
pub fn header(m: &impl Message, name: &str) -> Option<String> {
    m.headers()?
        .iter()
        .filter(|h| h.key == name)
        .last()
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// `keel_sink_dead_letters_total{sink, topic}` as `registry` exports it.
pub fn exported(registry: &prometheus::Registry, sink: &str, topic: &str) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == dead_letter::METRIC)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "sink" && l.value() == sink)
                && m.get_label()
                    .iter()
                    .any(|l| l.name() == "topic" && l.value() == topic)
        })
        .map(|m| m.get_counter().value())
        .sum()
}

/// Asserts that `letter` is the dead letter of the record at `topic/partition@offset` from sink
/// `processor`, and that its `keel.error` contains `why`.
pub fn assert_from(
    letter: &OwnedMessage,
    (topic, partition, offset): (&str, i32, i64),
    processor: &str,
    why: &str,
) -> anyhow::Result<()> {
    assert_eq!(
        header(letter, dlq_headers::SOURCE_TOPIC).as_deref(),
        Some(topic)
    );
    assert_eq!(
        header(letter, dlq_headers::SOURCE_PARTITION),
        Some(partition.to_string())
    );
    assert_eq!(
        header(letter, dlq_headers::SOURCE_OFFSET),
        Some(offset.to_string())
    );
    assert_eq!(
        header(letter, dlq_headers::PROCESSOR).as_deref(),
        Some(processor)
    );
    let error = header(letter, dlq_headers::ERROR).context("no error header")?;
    assert!(
        error.contains(why),
        "keel.error {error:?} does not say {why:?}"
    );
    Ok(())
}
