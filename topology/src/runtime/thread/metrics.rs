//! What a stream thread reports besides its work: the consumer-lag gauge, fed by librdkafka's
//! statistics callback on the group consumer; per-processor record counts, exported at each
//! commit; and store sizes, sampled every few seconds.

use std::time::Instant;

use rdkafka::client::ClientContext;
use rdkafka::statistics::Statistics;

use super::{Core, GroupConsumer, ThreadContext, lock};

impl ClientContext for ThreadContext {
    /// librdkafka's statistics (every `statistics.interval.ms`), served from the thread's own
    /// poll, with no request to the broker: consumer lag per owned partition, the partition's
    /// end (the last stable offset under `read_committed`, the high watermark otherwise)
    /// minus the position this thread committed (librdkafka's own `consumer_lag` uses the
    /// consumer's committed offset, which offsets committed through the transactional
    /// producer never update: the gauge froze). With nothing committed yet, the lag counts
    /// from the log start, not from offset 0. Commits move past transaction markers
    /// ([`Core::committable_positions`]), so a fully consumed partition shows 0.
    fn stats(&self, statistics: Statistics) {
        let core = lock(&self.core);
        let read_committed = core.eos();
        for (topic, t) in &statistics.topics {
            for (id, p) in &t.partitions {
                // -1 is librdkafka's internal "unassigned" partition.
                if *id < 0 {
                    continue;
                }
                let key = (topic.clone(), *id);
                let Some(committed) = core.committed.get(&key).copied() else {
                    continue;
                };
                let end = if read_committed {
                    p.ls_offset
                } else {
                    p.hi_offset
                };
                let from = committed.unwrap_or(p.lo_offset);
                if end >= 0 && from >= 0 {
                    core.shared
                        .metrics
                        .consumer_lag
                        .with_label_values(&[topic, &id.to_string()])
                        .set(lag(end, from));
                }
            }
        }
    }
}

/// Records left to read: `end` (last stable offset or high watermark) minus the committed
/// position (or the log start when nothing is committed), never negative.
fn lag(end: i64, committed_or_log_start: i64) -> i64 {
    (end - committed_or_log_start).max(0)
}

impl Core {
    /// Per-processor record counts since the last commit, and the thread-local per-record
    /// metrics (records in and out, record age, processing time, dead letters), into the
    /// metrics.
    pub(super) fn export_counts(&mut self) {
        for (records_in, age) in self.topic_metrics.values() {
            records_in.flush();
            age.flush();
        }
        for records_out in self.records_out.values() {
            records_out.flush();
        }
        for dead_letters in self.dead_letters.values() {
            dead_letters.flush();
        }
        self.process_latency.flush();
        let metrics = &self.shared.metrics;
        for task in self.tasks.values_mut() {
            for (name, n_in, n_out) in task.take_node_counts() {
                metrics.processor_in.with_label_values(&[name]).inc_by(n_in);
                metrics
                    .processor_out
                    .with_label_values(&[name])
                    .inc_by(n_out);
            }
        }
    }

    /// Store sizes and consumer lag (high watermark minus committed position).
    pub(super) fn sample(&mut self, consumer: &GroupConsumer) {
        self.last_sample = Instant::now();
        let metrics = &self.shared.metrics;
        for (id, task) in &self.tasks {
            for store in task.state().stores() {
                if let Ok(n) = store.approximate_len() {
                    metrics
                        .store_keys
                        .with_label_values(&[store.name(), &id.partition.to_string()])
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
        }
        // Consumer lag comes from librdkafka's statistics (`ThreadContext::stats`). Asking the
        // broker for watermarks here, per partition, blocked the stream thread for about half a
        // second per partition every few seconds: with 30 partitions a reply waited 15 s.
        let _ = consumer;
    }
}
