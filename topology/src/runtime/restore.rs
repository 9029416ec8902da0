//! Restoring a task's stores from their changelog topics before it processes anything.
//!
//! A restore runs in slices on the stream thread, between polls of the group consumer (as
//! Kafka Streams' restoration in the poll loop does): each loop turn gives the restoring tasks
//! at most [`SLICE`] (one batch), then the thread polls the group consumer again, so a restore
//! of any length never holds the member past `max.poll.interval.ms` (an eviction would revoke
//! the task, wipe it and restore it again, forever). The restoring task's input partitions
//! stay paused on the group consumer until it is running (`thread/assignment.rs`).

use std::time::{Duration, Instant};

use keel_state::{RestorePlan, RestoreProgress};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::runtime::faults;
use crate::runtime::thread::RestoreConsumer;
use crate::task::StreamTask;

const BATCH: usize = 10_000;
/// How long one loop turn may spend restoring before the thread polls its group consumer.
pub(crate) const SLICE: Duration = Duration::from_millis(100);
/// Records polled between two readings of the clock while a batch fills (~1 µs each).
const CLOCK_EVERY: u32 = 64;
/// How long a restore may see no new record before it gives up (a stuck changelog).
const STALL: Duration = Duration::from_secs(120);

/// A task whose stores are being restored, with where each store's restore stands.
pub(crate) struct Restoring {
    pub(crate) task: StreamTask,
    /// The partitions of the task's input, paused on the group consumer while it restores.
    pub(crate) partitions: Vec<(String, i32)>,
    /// The stream time its last owner committed, resumed once the task is initialised.
    pub(crate) stream_time: Option<i64>,
    /// Index into the task's plans of the store being restored.
    next: usize,
    active: Option<Active>,
}

/// One store's restore in progress: the restore consumer is assigned its changelog partition.
struct Active {
    plan: RestorePlan,
    high: i64,
    progress: RestoreProgress,
    remaining: prometheus::IntGauge,
    started: Instant,
    last_progress: Instant,
}

impl std::fmt::Debug for Restoring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restoring")
            .field("task", &self.task.id())
            .field("next", &self.next)
            .field(
                "active",
                &self.active.as_ref().map(|a| a.plan.store.clone()),
            )
            .finish()
    }
}

impl Restoring {
    pub(crate) fn new(
        task: StreamTask,
        partitions: Vec<(String, i32)>,
        stream_time: Option<i64>,
    ) -> Self {
        Restoring {
            task,
            partitions,
            stream_time,
            next: 0,
            active: None,
        }
    }

    /// Whether a store's restore is under way (the restore consumer is assigned to it).
    pub(crate) fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Forgets where the current store stands, after an error: the next slice looks up the
    /// changelog's range again and goes on from what the store applied (records already
    /// applied are skipped, so nothing is lost or applied twice).
    pub(crate) fn reset(&mut self) {
        self.active = None;
    }

    /// Restores for up to `budget` (at least one batch once a store is under way). Returns
    /// whether every store is restored.
    pub(crate) fn slice(
        &mut self,
        consumer: &RestoreConsumer,
        metrics: &Metrics,
        budget: Duration,
    ) -> Result<bool> {
        let deadline = Instant::now() + budget;
        loop {
            if self.active.is_none() {
                let plans = self.task.state().restore_plans();
                let Some(plan) = plans.get(self.next).cloned() else {
                    return Ok(true);
                };
                match self.start(plan, consumer, metrics)? {
                    Some(active) => self.active = Some(active),
                    None => {
                        self.next += 1;
                        continue;
                    }
                }
            }
            if self.batch(consumer, metrics, deadline)? {
                self.finish(consumer)?;
                self.next += 1;
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
        }
    }

    /// Looks up the changelog partition's range and assigns the restore consumer to it;
    /// `None` when the store has nothing to restore.
    fn start(
        &self,
        plan: RestorePlan,
        consumer: &RestoreConsumer,
        metrics: &Metrics,
    ) -> Result<Option<Active>> {
        let partition = self.task.id().partition;
        let topic = plan.changelog_topic.clone();
        let (low, high) = consumer
            .fetch_watermarks(&topic, partition, Duration::from_secs(30))
            .map_err(Error::kafka(format!("watermarks of {topic}/{partition}")))?;
        // Local state from another history of the changelog (reset, recreated) is a
        // corruption: the task is wiped and restored from scratch (`thread/assignment.rs`).
        plan.check(low, high)?;
        if !plan.is_needed(low, high) {
            return Ok(None);
        }
        let start = plan.seek_offset(low);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, partition, Offset::Offset(start))
            .map_err(Error::kafka("restore assignment"))?;
        consumer
            .assign(&tpl)
            .map_err(Error::kafka("assigning the changelog"))?;
        let progress = RestoreProgress::new(&plan, low, high);
        let remaining = metrics
            .restore_remaining
            .with_label_values(&[plan.store.as_ref(), partition.to_string().as_str()]);
        remaining.set(i64::try_from(progress.remaining()).unwrap_or(i64::MAX));
        tracing::info!(task = %self.task.id(), store = %plan.store, from = start, to = high, "restoring");
        Ok(Some(Active {
            plan,
            high,
            progress,
            remaining,
            started: Instant::now(),
            last_progress: Instant::now(),
        }))
    }

    /// Polls and applies one batch: up to [`BATCH`] records, or what arrives before
    /// `deadline`. Returns whether the store reached the end of its changelog.
    fn batch(
        &mut self,
        consumer: &RestoreConsumer,
        metrics: &Metrics,
        deadline: Instant,
    ) -> Result<bool> {
        let id = self.task.id();
        let Some(active) = self.active.as_mut() else {
            return Ok(true);
        };
        let topic = active.plan.changelog_topic.clone();
        let partition = id.partition;
        let high = active.high;
        let mut batch: Vec<(i64, Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut done = false;
        // While records flow the clock is read once per `CLOCK_EVERY` of them (and after any
        // other poll): reading it per record was ~6 % of a restoring thread (docs/BENCHMARKS.md).
        let mut now = Instant::now();
        let mut since_clock = 0u32;
        // A record arrived since `last_progress` was set.
        let mut progressed = false;
        while !done && batch.len() < BATCH && now < deadline {
            let wait = deadline
                .saturating_duration_since(now)
                .min(Duration::from_millis(50));
            let polled = consumer.poll(wait);
            since_clock += 1;
            if since_clock >= CLOCK_EVERY || !matches!(polled, Some(Ok(_))) {
                now = Instant::now();
                since_clock = 0;
            }
            match polled {
                Some(Ok(m)) => {
                    faults::check(faults::RESTORE_RECORD)?;
                    let offset = m.offset();
                    // Every record Keel writes to a changelog has a key; one without (a topic
                    // written by something else) names no entry. It is skipped, never applied
                    // as the empty key, which is a key of its own.
                    match m.key() {
                        Some(key) => {
                            batch.push((offset, key.to_vec(), m.payload().map(<[u8]>::to_vec)))
                        }
                        None => tracing::warn!(
                            task = %id, store = %active.plan.store, offset,
                            "changelog record without a key skipped"
                        ),
                    }
                    done = offset + 1 >= high;
                    progressed = true;
                }
                Some(Err(KafkaError::PartitionEOF(_))) => done = true,
                // librdkafka reports connection trouble (a broker restarting: AllBrokersDown,
                // BrokerTransportFailure) as error events and recovers by itself. The restore
                // consumer is polled only while restoring, so every such event since the last
                // restore waits in its queue: failing on each would fail one attempt per queued
                // event, minutes after the broker is back. Only a fatal error ends the restore;
                // a restore that gets nowhere ends at STALL.
                Some(Err(e)) if consumer.client().fatal_error().is_none() => {
                    tracing::debug!(task = %id, error = %e, "restore consumer error (transient)");
                }
                Some(Err(e)) => {
                    return Err(Error::Kafka {
                        context: format!("restoring {topic}/{partition}"),
                        source: e,
                    });
                }
                None => {
                    if std::mem::take(&mut progressed) {
                        active.last_progress = now;
                    }
                    // Past the last record, only commit markers may be left.
                    let position = consumer.position().ok().and_then(|p| {
                        p.find_partition(&topic, partition)
                            .and_then(|e| e.offset().to_raw())
                    });
                    if position.is_some_and(|p| p >= high) {
                        done = true;
                    } else if active.last_progress.elapsed() > STALL {
                        return Err(Error::Topology(format!(
                            "restore of {topic}/{partition} stalled at {} of {high}",
                            active.progress.position()
                        )));
                    }
                }
            }
        }
        if progressed {
            active.last_progress = Instant::now();
        }
        if !batch.is_empty() {
            faults::check(faults::RESTORE_BATCH)?;
            let stats = self
                .task
                .state_mut()
                .restore_batch(&active.plan.store, batch)?;
            active.progress.record_batch(&stats, None);
            metrics
                .restored
                .with_label_values(&[active.plan.store.as_ref()])
                .inc_by(stats.applied);
            active
                .remaining
                .set(i64::try_from(active.progress.remaining()).unwrap_or(i64::MAX));
            tracing::debug!(store = %active.plan.store, restored = active.progress.restored(), remaining = active.progress.remaining(), "restore batch");
        }
        Ok(done)
    }

    fn finish(&mut self, consumer: &RestoreConsumer) -> Result<()> {
        let Some(mut active) = self.active.take() else {
            return Ok(());
        };
        active.progress.mark_complete();
        active.remaining.set(0);
        tracing::info!(
            task = %self.task.id(), store = %active.plan.store, restored = active.progress.restored(),
            elapsed_ms = active.started.elapsed().as_millis() as u64, "restored"
        );
        consumer
            .unassign()
            .map_err(Error::kafka("unassigning the changelog"))
    }
}
