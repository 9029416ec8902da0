//! Committing a plain consumer's position, so a caught-up group shows lag 0 on transactionally
//! written topics.
//!
//! A transactional producer writes a commit marker after its records. librdkafka never hands
//! the marker to the application, but polling past it moves the consumer's position (as in
//! Kafka's Java consumer). A consumer that commits "last record + 1" stays one offset behind the
//! partition's end forever (a permanent lag of 1 in `keel lag` and Kafka's tools); Kafka Streams,
//! and Keel's stream runtime, commit the position instead. The plain consumers (order sink,
//! Cassandra sink, payment worker) do the same through [`positions`].
//!
//! At-least-once: the position of a partition is one past the last record handed to the
//! application (or past markers and aborted records that follow it), so committing it is safe
//! only when every record received on that partition is processed. Callers guarantee that.

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};

/// The consumer's position per assigned partition that has one, as `((topic, partition),
/// next offset to read)`; `unprocessed` (topic, partition, offset of a record received and
/// not processed) caps its partition at that offset.
pub fn positions<X: ConsumerContext, C: Consumer<X>>(
    consumer: &C,
    unprocessed: Option<(&str, i32, i64)>,
) -> KafkaResult<Vec<((String, i32), i64)>> {
    let tpl = consumer.position()?;
    Ok(tpl
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => {
                let o = match unprocessed {
                    Some((t, p, at)) if t == e.topic() && p == e.partition() => o.min(at),
                    _ => o,
                };
                Some(((e.topic().to_owned(), e.partition()), o))
            }
            _ => None,
        })
        .collect())
}

/// Commits [`positions`] when they differ from `last` (what this consumer committed before;
/// updated on success). Only call it when every record received is processed, but
/// `unprocessed`.
pub fn commit_positions<X: ConsumerContext, C: Consumer<X>>(
    consumer: &C,
    mode: rdkafka::consumer::CommitMode,
    unprocessed: Option<(&str, i32, i64)>,
    last: &mut Vec<((String, i32), i64)>,
) -> KafkaResult<()> {
    let positions = positions::<X, C>(consumer, unprocessed)?;
    if positions.is_empty() || positions == *last {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in &positions {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    consumer.commit(&tpl, mode)?;
    *last = positions;
    Ok(())
}
