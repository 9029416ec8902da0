//! The stream thread's Kafka clients: the producer (transactional under exactly-once, its
//! transactions initialised, which fences an earlier incarnation), the restore consumer that
//! reads changelogs, and the group consumer whose context hands rebalances and statistics to
//! the thread's [`Core`]. Only their configuration lives here; what they do is in the other
//! files of [`thread`](super).

use std::sync::{Arc, Mutex};

use keel_state::Guarantee;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::producer::Producer as _;

use super::{Core, GroupConsumer, KAFKA_TIMEOUT, RestoreConsumer, ThreadContext};
use crate::config::StreamsConfig;
use crate::error::{Error, Result};
use crate::runtime::kafka::{self, DeliveryLog, Producer};

/// The thread's producer; under exactly-once its transactions are initialised (which also
/// aborts whatever an earlier incarnation of this thread left open).
///
/// `known_topic`, a topic that exists, is asked about twice first (see [`connect`]).
pub(super) fn producer(
    config: &StreamsConfig,
    instance: &str,
    index: usize,
    known_topic: Option<&str>,
) -> Result<Producer> {
    let eos = config.processing_guarantee == Guarantee::ExactlyOnce;
    let pc = kafka::producer_config(config, instance, index);
    let producer = Producer::from_config_and_context(&pc, DeliveryLog::default())
        .map_err(Error::kafka("creating the producer"))?;
    if eos {
        connect(&producer, known_topic);
        // Also aborts whatever an earlier incarnation of this thread left open.
        producer
            .init_transactions(KAFKA_TIMEOUT)
            .map_err(Error::kafka("init_transactions"))?;
    }
    Ok(producer)
}

/// Makes sure the producer has a connection to a broker it learnt from metadata before
/// `init_transactions`. librdkafka looks for the transaction coordinator at once only when
/// such a connection is up; otherwise it asks again after a fixed 500 ms (`rd_kafka_txn_coord_query`
/// in librdkafka's rdkafka_txnmgr.c). Right after the producer is created only the bootstrap
/// connection exists, and the first metadata answer replaces it by the brokers it names, so the
/// second answer comes over one of those: with it, a thread's start (and every restart after a
/// fence) no longer waits out those 500 ms (measured: 3–5 of 30 `init_transactions` on a new
/// producer took 0.5 s instead of 0.05 s; none after two metadata requests). Best effort: an
/// error here shows again, with its cause, in `init_transactions`.
fn connect(producer: &Producer, known_topic: Option<&str>) {
    let Some(topic) = known_topic else {
        return;
    };
    for _ in 0..2 {
        if let Err(e) = producer.client().fetch_metadata(Some(topic), KAFKA_TIMEOUT) {
            tracing::debug!(error = %e, topic, "metadata before init_transactions");
            return;
        }
    }
}

/// The consumer that reads changelogs during restore (committed records only, no group
/// offsets of its own).
pub(super) fn restore_consumer(config: &StreamsConfig) -> Result<RestoreConsumer> {
    let mut rc = kafka::client_config(config, kafka::Role::Consumer);
    rc.set("group.id", format!("{}-restore", config.application_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "10")
        .set(
            "max.partition.fetch.bytes",
            config.restore_fetch_bytes.to_string(),
        )
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest");
    kafka::set_default(
        &mut rc,
        "queued.min.messages",
        kafka::memory_defaults::RESTORE_QUEUED_MIN_MESSAGES,
    );
    kafka::set_default(
        &mut rc,
        "queued.max.messages.kbytes",
        kafka::memory_defaults::RESTORE_QUEUED_MAX_KBYTES,
    );
    kafka::set_default(
        &mut rc,
        "fetch.queue.backoff.ms",
        kafka::memory_defaults::FETCH_QUEUE_BACKOFF_MS,
    );
    RestoreConsumer::from_config_and_context(&rc, kafka::QuietEof)
        .map_err(Error::kafka("creating the restore consumer"))
}

/// The member of the application's consumer group (static membership, cooperative-sticky
/// assignment, offsets committed by the thread), its context reaching `core`.
pub(super) fn group_consumer(
    config: &StreamsConfig,
    instance: &str,
    index: usize,
    core: Arc<Mutex<Core>>,
) -> Result<GroupConsumer> {
    let eos = config.processing_guarantee == Guarantee::ExactlyOnce;
    let mut cc = kafka::client_config(config, kafka::Role::Consumer);
    cc.set("group.id", &config.application_id)
        .set(
            "client.id",
            crate::runtime::owners::client_id(&config.application_id, instance, index),
        )
        .set("group.instance.id", format!("{instance}-{index}"))
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "isolation.level",
            if eos {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        );
    if !config.client.contains_key("session.timeout.ms")
        && !config.consumer.contains_key("session.timeout.ms")
    {
        cc.set("session.timeout.ms", "10000");
    }
    if !config.client.contains_key("statistics.interval.ms")
        && !config.consumer.contains_key("statistics.interval.ms")
    {
        // Feeds the consumer-lag gauge (`ThreadContext::stats`).
        cc.set("statistics.interval.ms", "5000");
    }
    kafka::set_default(
        &mut cc,
        "queued.min.messages",
        kafka::memory_defaults::GROUP_QUEUED_MIN_MESSAGES,
    );
    kafka::set_default(
        &mut cc,
        "queued.max.messages.kbytes",
        kafka::memory_defaults::GROUP_QUEUED_MAX_KBYTES,
    );
    kafka::set_default(
        &mut cc,
        "max.partition.fetch.bytes",
        kafka::memory_defaults::GROUP_MAX_PARTITION_FETCH_BYTES,
    );
    kafka::set_default(
        &mut cc,
        "fetch.queue.backoff.ms",
        kafka::memory_defaults::FETCH_QUEUE_BACKOFF_MS,
    );
    GroupConsumer::from_config_and_context(&cc, ThreadContext { core })
        .map_err(Error::kafka("creating the consumer"))
}
