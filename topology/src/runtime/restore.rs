//! Restoring a task's stores from their changelog topics before it processes anything.

use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::runtime::thread::RestoreConsumer;
use crate::task::StreamTask;

const BATCH: usize = 10_000;
/// How long a restore may see no new record before it gives up (a stuck changelog).
const STALL: Duration = Duration::from_secs(120);

/// Replays every store of `task` from its checkpointed offset (or the beginning) to the end of
/// its changelog partition, in write batches, reporting progress in logs and metrics.
pub(crate) fn restore_task(
    task: &mut StreamTask,
    consumer: &RestoreConsumer,
    metrics: &Metrics,
) -> Result<()> {
    let partition = task.id().partition;
    let plans = task.state().restore_plans();
    for plan in plans {
        let topic = plan.changelog_topic.clone();
        let (low, high) = consumer
            .fetch_watermarks(&topic, partition, Duration::from_secs(30))
            .map_err(Error::kafka(format!("watermarks of {topic}/{partition}")))?;
        // Local state from another history of the changelog (reset, recreated) is a
        // corruption: the task is wiped and restored from scratch (`thread.rs` `open_task`).
        plan.check(low, high)?;
        if !plan.is_needed(low, high) {
            continue;
        }
        let start = plan.seek_offset(low);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, partition, Offset::Offset(start))
            .map_err(Error::kafka("restore assignment"))?;
        consumer
            .assign(&tpl)
            .map_err(Error::kafka("assigning the changelog"))?;
        let mut progress = keel_state::RestoreProgress::new(&plan, low, high);
        let remaining = metrics
            .restore_remaining
            .with_label_values(&[plan.store.as_ref(), partition.to_string().as_str()]);
        remaining.set(i64::try_from(progress.remaining()).unwrap_or(i64::MAX));
        tracing::info!(task = %task.id(), store = %plan.store, from = start, to = high, "restoring");
        let started = Instant::now();
        let mut last_progress = Instant::now();
        let mut batch: Vec<(i64, Vec<u8>, Option<Vec<u8>>)> = Vec::with_capacity(BATCH);
        let mut done = false;
        while !done {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let offset = m.offset();
                    // Every record Keel writes to a changelog has a key; one without (a topic
                    // written by something else) names no entry. It is skipped, never applied
                    // as the empty key, which is a key of its own.
                    match m.key() {
                        Some(key) => {
                            batch.push((offset, key.to_vec(), m.payload().map(<[u8]>::to_vec)))
                        }
                        None => tracing::warn!(
                            task = %task.id(), store = %plan.store, offset,
                            "changelog record without a key skipped"
                        ),
                    }
                    done = offset + 1 >= high;
                    last_progress = Instant::now();
                }
                Some(Err(KafkaError::PartitionEOF(_))) => done = true,
                Some(Err(e)) => {
                    return Err(Error::Kafka {
                        context: format!("restoring {topic}/{partition}"),
                        source: e,
                    });
                }
                None => {
                    // Past the last record, only commit markers may be left.
                    let position = consumer.position().ok().and_then(|p| {
                        p.find_partition(&topic, partition)
                            .and_then(|e| e.offset().to_raw())
                    });
                    if position.is_some_and(|p| p >= high) {
                        done = true;
                    } else if last_progress.elapsed() > STALL {
                        return Err(Error::Topology(format!(
                            "restore of {topic}/{partition} stalled at {} of {high}",
                            progress.position()
                        )));
                    }
                }
            }
            if batch.len() >= BATCH || (done && !batch.is_empty()) {
                crate::runtime::faults::check(crate::runtime::faults::RESTORE_BATCH)?;
                let records = std::mem::take(&mut batch);
                let stats = task.state_mut().restore_batch(&plan.store, records)?;
                progress.record_batch(&stats, None);
                metrics
                    .restored
                    .with_label_values(&[plan.store.as_ref()])
                    .inc_by(stats.applied);
                remaining.set(i64::try_from(progress.remaining()).unwrap_or(i64::MAX));
                tracing::debug!(store = %plan.store, restored = progress.restored(), remaining = progress.remaining(), "restore batch");
            }
        }
        progress.mark_complete();
        remaining.set(0);
        tracing::info!(
            task = %task.id(), store = %plan.store, restored = progress.restored(),
            elapsed_ms = started.elapsed().as_millis() as u64, "restored"
        );
        consumer
            .unassign()
            .map_err(Error::kafka("unassigning the changelog"))?;
    }
    Ok(())
}
