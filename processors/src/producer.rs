//! [`AckedProducer`]: a Kafka producer whose [`send`](AckedProducer::send) resolves once the
//! broker has acknowledged the record (or failed it), for the plain producers of a process: the
//! ingest API's commands, the outbox relays, the dead-letter writers.
//!
//! It does what rdkafka's `FutureProducer` does, with a polling thread of its own. rdkafka's
//! (`ThreadedProducer`'s) calls `poll(100 ms)`, and `poll(d)` asks librdkafka's queue in whole
//! milliseconds, rounded down, until `d` has passed: the part of a millisecond left after the
//! last whole-millisecond wait is spent asking without waiting, about 1 ms of every 100 ms. With
//! six such producers an idle `keel run` spent 4.8 % of a core there, 57 % of its CPU
//! (docs/BENCHMARKS.md). This thread waits [`POLL_WAIT`], 5 µs past a whole millisecond, so
//! the wait ends past the deadline and nothing is left to spin on; a window in which a delivery
//! report arrived still ends with up to a millisecond of asking, as before.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Message, ToBytes};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, FutureRecord, ProducerContext};
use tokio::sync::oneshot;

/// How long one poll of the polling thread waits for delivery reports: 100 ms, as rdkafka's own
/// thread, and 5 µs (see the module's documentation).
const POLL_WAIT: Duration = Duration::from_micros(100_005);

/// How long [`AckedProducer::send`] sleeps before trying again when librdkafka's queue is full.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(10);

/// Where a record landed: (partition, offset).
pub type Delivered = (i32, i64);

/// Hands each delivery report to the `send` waiting for it.
struct AckContext;

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Box<oneshot::Sender<KafkaResult<Delivered>>>;

    fn delivery(&self, result: &DeliveryResult<'_>, waiting: Self::DeliveryOpaque) {
        let outcome = match result {
            Ok(message) => Ok((message.partition(), message.offset())),
            Err((e, _)) => Err(e.clone()),
        };
        // The `send` may have been dropped (its caller gave up): nothing waits then.
        let _ = waiting.send(outcome);
    }
}

/// A producer whose [`send`](Self::send) is a future of the broker's acknowledgement; a thread
/// of its own serves the delivery reports. Dropping it stops the thread (within
/// [`POLL_WAIT`]); a `send` still waiting then fails.
pub struct AckedProducer {
    producer: Arc<BaseProducer<AckContext>>,
    stop: Arc<AtomicBool>,
    poller: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for AckedProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckedProducer").finish_non_exhaustive()
    }
}

impl AckedProducer {
    /// A producer with `config` (librdkafka's settings) and its polling thread. Errors: a
    /// setting librdkafka refuses, or a thread that cannot be started.
    pub fn from_config(config: &ClientConfig) -> KafkaResult<Self> {
        let producer: Arc<BaseProducer<AckContext>> =
            Arc::new(config.create_with_context(AckContext)?);
        let stop = Arc::new(AtomicBool::new(false));
        let poller = std::thread::Builder::new()
            .name("keel-acks".to_owned())
            .spawn({
                let (producer, stop) = (Arc::clone(&producer), Arc::clone(&stop));
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        producer.poll(POLL_WAIT);
                    }
                }
            })
            .map_err(|e| {
                tracing::error!(error = %e, "cannot start a producer's polling thread");
                KafkaError::ClientCreation(format!("polling thread: {e}"))
            })?;
        Ok(Self {
            producer,
            stop,
            poller: Some(poller),
        })
    }

    /// Enqueues `record` and waits for the broker's acknowledgement: its (partition, offset),
    /// or the error librdkafka reports (e.g. `MessageTimedOut` after `message.timeout.ms`).
    /// While librdkafka's queue is full it tries again every 10 ms for up to `queue_timeout`,
    /// then fails with `QueueFull`.
    pub async fn send<K, P>(
        &self,
        record: FutureRecord<'_, K, P>,
        queue_timeout: Duration,
    ) -> KafkaResult<Delivered>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let give_up = tokio::time::Instant::now() + queue_timeout;
        let (tx, rx) = oneshot::channel();
        let mut base = BaseRecord::with_opaque_to(record.topic, Box::new(tx));
        base.partition = record.partition;
        base.key = record.key;
        base.payload = record.payload;
        base.timestamp = record.timestamp;
        base.headers = record.headers;
        loop {
            match self.producer.send(base) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if tokio::time::Instant::now() < give_up =>
                {
                    base = back;
                    tokio::time::sleep(QUEUE_FULL_WAIT).await;
                }
                Err((e, _)) => return Err(e),
            }
        }
        match rx.await {
            Ok(outcome) => outcome,
            // librdkafka dropped the record without a report: only when the producer closes.
            Err(_) => Err(KafkaError::Canceled),
        }
    }
}

impl Drop for AckedProducer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(poller) = self.poller.take() {
            let _ = poller.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A producer for a broker that is not there (nothing listens on port 1).
    fn unreachable(message_timeout_ms: u64) -> AckedProducer {
        AckedProducer::from_config(
            ClientConfig::new()
                .set("bootstrap.servers", "127.0.0.1:1")
                .set("message.timeout.ms", message_timeout_ms.to_string()),
        )
        .expect("producer")
    }

    #[tokio::test]
    async fn a_record_no_broker_acknowledges_fails_with_librdkafkas_timeout() {
        let producer = unreachable(300);
        let record = FutureRecord::<str, str>::to("t").key("k").payload("v");
        let failed = producer
            .send(record, Duration::from_secs(1))
            .await
            .expect_err("nothing acknowledged it");
        assert_eq!(
            failed.rdkafka_error_code(),
            Some(RDKafkaErrorCode::MessageTimedOut),
            "{failed}"
        );
    }

    #[tokio::test]
    async fn a_full_queue_is_tried_again_until_the_queue_timeout_then_refused() {
        let producer = AckedProducer::from_config(
            ClientConfig::new()
                .set("bootstrap.servers", "127.0.0.1:1")
                .set("message.timeout.ms", "5000")
                .set("queue.buffering.max.messages", "1"),
        )
        .expect("producer");
        let first = producer.send(
            FutureRecord::<str, str>::to("t").payload("1"),
            Duration::from_secs(1),
        );
        let started = std::time::Instant::now();
        let second = producer.send(
            FutureRecord::<str, str>::to("t").payload("2"),
            Duration::from_millis(200),
        );
        tokio::pin!(first);
        // `biased`: the first is enqueued first. The first holds the queue's one place; the second waits for room, then gives up.
        let refused = tokio::select! {
            biased;
            _ = &mut first => panic!("nothing can acknowledge the first"),
            refused = second => refused.expect_err("no room within 200 ms"),
        };
        assert_eq!(
            refused.rdkafka_error_code(),
            Some(RDKafkaErrorCode::QueueFull),
            "{refused}"
        );
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
