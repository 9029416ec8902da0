//! The transaction protocol of a stream thread: `begin_transaction`, each transactional call
//! handled as librdkafka documents for it (retry, abort, fatal), the commit path — changelog
//! records, the input positions with the group metadata, flush, `commit_transaction` — then,
//! past the commit point, recording the committed positions and applying the stores' writes;
//! and the abort path: abort the transaction, drop the tasks' pending work, rewind the consumer
//! to the committed offsets. See [the module docs](super) for the commit point.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{Producer as _, PurgeConfig};
use rdkafka::{Offset, TopicPartitionList};

use super::{Core, GroupConsumer, KAFKA_TIMEOUT, SAMPLE_EVERY, now_ms};
use crate::error::{Error, Result, is_fenced};
use crate::record::Headers;
use crate::runtime::faults::{self, TxnAction};
use crate::runtime::kafka::{self, Producer};
use crate::runtime::tasks;
use crate::task;
use crate::topology::TaskId;

/// Aborts the open transaction. Unsent and in-flight records are purged first and their
/// delivery reports served (a `BaseProducer` only serves them when polled; abort waits for
/// them); an abort that times out is resumed, as librdkafka allows. Fatal errors (fenced)
/// come back for the thread to restart with a new producer.
fn abort_transaction(producer: &Producer) -> Result<()> {
    producer.purge(PurgeConfig::default().queue().inflight());
    let mut last = None;
    for _ in 0..6 {
        let deadline = Instant::now() + Duration::from_secs(5);
        while producer.in_flight_count() > 0 && Instant::now() < deadline {
            producer.poll(Duration::from_millis(10));
        }
        match producer.abort_transaction(Duration::from_secs(5)) {
            Ok(()) => return Ok(()),
            Err(KafkaError::Transaction(e)) if e.is_fatal() => {
                return Err(Error::Kafka {
                    context: "abort_transaction".into(),
                    source: KafkaError::Transaction(e),
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "abort_transaction did not finish; resuming it");
                producer.poll(Duration::from_millis(100));
                last = Some(e);
            }
        }
    }
    Err(Error::Kafka {
        context: "abort_transaction kept failing".into(),
        source: last.unwrap_or(KafkaError::Canceled),
    })
}

/// librdkafka's verdict on a transactional call's error. Errors that are not transactional
/// errors (a failed send, a flush timeout) abort the transaction.
fn txn_action(error: &KafkaError) -> TxnAction {
    match error {
        KafkaError::Transaction(e) if e.is_fatal() => TxnAction::Fatal,
        KafkaError::Transaction(e) if e.txn_requires_abort() => TxnAction::Abort,
        KafkaError::Transaction(e) if e.is_retriable() => TxnAction::Retry,
        _ => TxnAction::Abort,
    }
}

/// The changelog topic of `store`, resolved once per store name.
fn changelog_topic<'a>(
    topics: &'a mut rustc_hash::FxHashMap<Arc<str>, String>,
    env: &keel_state::StoreEnv,
    store: &str,
) -> &'a str {
    if !topics.contains_key(store) {
        topics.insert(store.into(), env.changelog_topic(store));
    }
    topics.get(store).map_or("", String::as_str)
}

/// The commit point passed: a failpoint that can only crash (`panic`), never return an error.
fn fail_after_commit_point() {
    if faults::injected(faults::AFTER_COMMIT_TRANSACTION).is_some() {
        tracing::error!(
            "failpoint {} armed with `return`: only `panic` is meaningful after the commit point",
            faults::AFTER_COMMIT_TRANSACTION
        );
    }
}

impl Core {
    /// One call of librdkafka's transactional API, handled as librdkafka documents for each
    /// call: a retriable error (a timeout: the operation goes on in the background) calls the
    /// same function again, with backoff, for up to the transaction timeout (then the producer
    /// is given up, as fatal); an error that requires an abort comes back for the loop to
    /// abort and replay; a fatal one (fenced) marks the producer unusable, so the thread
    /// restarts with a new one (whose `init_transactions` fences this one's transaction) and
    /// restores its tasks from the changelogs. Never abort after a timed-out
    /// `commit_transaction`: the commit may complete in the background, and the replay would
    /// then be a second copy of the interval.
    pub(super) fn txn_call(
        &mut self,
        what: &'static str,
        failpoint: &'static str,
        mut call: impl FnMut(&Producer) -> rdkafka::error::KafkaResult<()>,
    ) -> Result<()> {
        let started = Instant::now();
        let patience = Duration::from_millis(self.shared.config.transaction_timeout_ms);
        let mut backoff = Duration::from_millis(self.shared.config.retry_backoff_ms);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (action, error) = match faults::injected_txn_error(failpoint) {
                Some(action) => (
                    action,
                    KafkaError::Global(rdkafka::types::RDKafkaErrorCode::Fail),
                ),
                None => match call(&self.producer) {
                    Ok(()) => return Ok(()),
                    Err(e) => (txn_action(&e), e),
                },
            };
            let context = format!("{what} (attempt {attempt})");
            match action {
                TxnAction::Retry if started.elapsed() < patience => {
                    tracing::warn!(thread = self.index, error = %error, ?backoff, "{what} failed with a retriable error; calling it again");
                    self.producer.poll(Duration::ZERO);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                TxnAction::Abort => {
                    return Err(Error::Kafka {
                        context,
                        source: error,
                    });
                }
                TxnAction::Retry | TxnAction::Fatal => {
                    self.producer_fatal = true;
                    if is_fenced(&error) {
                        // A newer epoch of transactional.id <app>-<instance>-<thread>: another
                        // instance with this instance id, or the broker itself (it aborted a
                        // transaction left open past its timeout). Either way this producer is
                        // done: the thread restarts with new clients, and the supervisor stops
                        // the application if the new ones are fenced again at once.
                        tracing::warn!(thread = self.index, error = %error, "{what}: the producer was fenced");
                        return Err(Error::Kafka {
                            context: format!(
                                "{context}: the producer (transactional.id {}-{}-{}) was fenced",
                                self.shared.config.application_id,
                                self.shared.config.instance_id(),
                                self.index
                            ),
                            source: error,
                        });
                    }
                    tracing::error!(thread = self.index, error = %error, ?action, "{what} failed; this producer cannot go on");
                    return Err(Error::Kafka {
                        context,
                        source: error,
                    });
                }
            }
        }
    }

    pub(super) fn begin(&mut self) -> Result<()> {
        if self.eos() && !self.txn_open {
            self.producer.begin_transaction().map_err(|e| {
                if txn_action(&e) == TxnAction::Fatal {
                    self.producer_fatal = true;
                }
                Error::Kafka {
                    context: "begin_transaction".into(),
                    source: e,
                }
            })?;
            self.producer.context().clear();
        }
        self.txn_open = true;
        Ok(())
    }

    /// Commits the open transaction (or, under at-least-once, flushes and commits offsets).
    pub(super) fn commit(&mut self, consumer: &GroupConsumer) -> Result<()> {
        let has_changelog = self
            .tasks
            .values()
            .any(|t| t.state().stores().any(|s| s.unlogged_writes() > 0));
        let to_commit = self.committable_positions(consumer);
        let moves = to_commit
            .iter()
            .any(|(tp, offset)| self.committed.get(tp).copied().flatten() != Some(*offset));
        if !self.dirty && !has_changelog && !moves {
            self.last_commit = Instant::now();
            return Ok(());
        }
        self.begin()?;
        let started = Instant::now();
        // The changelog records went out with the records and punctuations that wrote them
        // (`process`, `punctuate_wall_clock`); what is left (writes made outside both, e.g. in
        // a processor's `init`) goes now.
        self.send_changelog(None, now_ms())?;
        // Every transaction carries the position of every owned partition, moved or not, with
        // the group's metadata: the group coordinator refuses it from a member that lost its
        // partitions (paused past the session timeout), so a zombie cannot commit timer or
        // punctuation output that the new owner also commits (KIP-447). Offsets alone would
        // leave a transaction with no new input unfenced.
        let mut to_commit = to_commit;
        for (tp, committed) in &self.committed {
            if let Some(offset) = committed {
                to_commit.entry(tp.clone()).or_insert(*offset);
            }
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in &to_commit {
            let mut element = tpl.add_partition(topic, *partition);
            element
                .set_offset(Offset::Offset(*offset))
                .map_err(Error::kafka("building the offset list"))?;
            // The task's stream time goes with its offsets (as in Kafka Streams), so the
            // next owner resumes it (`set_up_assigned`).
            // A task still restoring passes on the stream time its last owner committed.
            let stream_time = self.shared.topic_subs.get(topic).and_then(|&sub| {
                let id = TaskId {
                    sub_topology: sub,
                    partition: *partition,
                };
                match self.tasks.get(&id) {
                    Some(task) => Some(task.stream_time()),
                    None => self.restoring.get(&id).and_then(|r| r.stream_time),
                }
            });
            if let Some(t) = stream_time
                && t > i64::MIN
            {
                element.set_metadata(task::stream_time_metadata(t));
            }
        }
        let sent = started.elapsed();
        faults::check(faults::AFTER_CHANGELOG_SEND)?;
        if self.eos() && tpl.count() > 0 {
            let group = consumer.group_metadata().ok_or_else(|| Error::Transient {
                context: "the consumer has no group metadata yet".into(),
            })?;
            self.txn_call("send_offsets_to_transaction", faults::SEND_OFFSETS, |p| {
                p.send_offsets_to_transaction(&tpl, &group, KAFKA_TIMEOUT)
            })?;
        }
        let offsets_sent = started.elapsed();
        faults::check(faults::AFTER_OFFSETS)?;
        let in_flight = self.producer.in_flight_count();
        kafka::flush(&self.producer, KAFKA_TIMEOUT)?;
        let flushed = started.elapsed();
        if let Some(failure) = self.producer.context().take_failure() {
            return Err(self.delivery_failed(failure));
        }
        faults::check(faults::AFTER_FLUSH)?;
        if self.eos() {
            self.txn_call("commit_transaction", faults::COMMIT_TRANSACTION, |p| {
                p.commit_transaction(KAFKA_TIMEOUT)
            })?;
            self.txn_open = false;
        }
        fail_after_commit_point();
        // The commit point (exactly-once): the interval is committed. Below, nothing may
        // return an error before the committed positions are recorded, and a store that cannot
        // apply is restored, never aborted (see the module docs).
        tracing::debug!(
            thread = self.index,
            changelog_sent_ms = sent.as_millis() as u64,
            offsets_sent_ms = offsets_sent.as_millis() as u64,
            in_flight_at_flush = in_flight,
            flushed_ms = flushed.as_millis() as u64,
            committed_ms = started.elapsed().as_millis() as u64,
            "committed"
        );
        // Committed: the stores may now apply what they held back, each with the offset of its
        // last changelog record in the transaction. (Every task that sent in this transaction
        // is still here: tasks leave only after a commit or an abort.)
        let delivered = self.producer.context().take_offsets();
        let mut per_task: BTreeMap<TaskId, Vec<(String, i64)>> = BTreeMap::new();
        if !delivered.is_empty() {
            for (id, task) in &self.tasks {
                for store in task.state().stores() {
                    let topic =
                        changelog_topic(&mut self.changelog_topics, &self.shared.env, store.name());
                    if let Some(offset) = delivered.get(&(topic.to_owned(), id.partition)) {
                        per_task
                            .entry(*id)
                            .or_default()
                            .push((store.name().to_owned(), *offset));
                    }
                }
            }
        }
        for task in self.tasks.values_mut() {
            task.mark_committed();
        }
        let failed = tasks::apply_committed(
            &mut self.tasks,
            per_task,
            Duration::from_millis(self.shared.config.retry_backoff_ms),
        );
        let bug = self.restore_from_changelog(failed);
        if !self.eos() && tpl.count() > 0 {
            consumer
                .commit(&tpl, CommitMode::Sync)
                .map_err(Error::kafka("committing offsets"))?;
        }
        self.positions.clear();
        self.origins.clear();
        // Refused records behind the committed positions are done with.
        let pending = |(topic, partition, offset): &(Arc<str>, i32, i64)| {
            to_commit
                .get(&(topic.to_string(), *partition))
                .is_none_or(|committed| offset >= committed)
        };
        if let Some(mut poison) = self.shared.poisoned.if_any() {
            poison.refused.retain(|k, _| pending(k));
            poison.suspects.retain(pending);
        }
        for (tp, offset) in to_commit {
            self.committed.insert(tp, Some(offset));
        }
        self.dirty = false;
        if let Some(e) = bug {
            // A contract violation (not the disk): the task is closed; stop rather than loop.
            return Err(e.into());
        }
        self.last_commit = Instant::now();
        self.committed_once = true;
        self.shared.metrics.commits.inc();
        self.shared
            .metrics
            .commit_latency
            .observe(started.elapsed().as_secs_f64());
        self.export_counts();
        if self.last_sample.elapsed() >= SAMPLE_EVERY {
            self.sample(consumer);
        }
        Ok(())
    }

    /// Sends the changelog records queued by the stores of task `only` (every task: `None`)
    /// since the last drain into the open transaction, timestamped `timestamp` (ms), to their
    /// changelog partition (the task's). The stores keep the writes pending until the commit,
    /// and an abort discards both the sent records (with the transaction) and the writes.
    pub(super) fn send_changelog(&mut self, only: Option<TaskId>, timestamp: i64) -> Result<()> {
        let no_headers = Headers::default();
        let producer = &self.producer;
        let env = &self.shared.env;
        let topics = &mut self.changelog_topics;
        let mut sent = 0;
        let tasks = match only {
            Some(id) => self
                .tasks
                .range_mut((Bound::Included(id), Bound::Included(id))),
            None => self
                .tasks
                .range_mut((Bound::<TaskId>::Unbounded, Bound::Unbounded)),
        };
        for (id, task) in tasks {
            for store in task.state_mut().stores_mut() {
                if store.unlogged_writes() == 0 {
                    continue;
                }
                let topic = changelog_topic(topics, env, store.name());
                sent += store.drain_changelog(|key, value| {
                    kafka::send_parts(
                        producer,
                        kafka::Outgoing {
                            topic,
                            partition: Some(id.partition),
                            key: Some(key),
                            value,
                            timestamp,
                            headers: &no_headers,
                        },
                        kafka::CHANGELOG,
                    )
                })?;
            }
        }
        if sent > 0 {
            self.dirty = true;
        }
        Ok(())
    }

    /// The position to commit per owned input partition: what this interval consumed, or the
    /// consumer's position when it is further.
    ///
    /// librdkafka never hands commit markers (nor, under `read_committed`, aborted records) to
    /// the application, but polling past them moves the consumer's position (as in Kafka's
    /// Java consumer). Committing only "last record + 1" would leave a fully consumed
    /// transactional partition one marker behind its end forever (a lag of 1 in `keel lag`
    /// and Kafka's tools). Kafka Streams commits the consumer's position; so does this. It is
    /// safe: every record polled is processed in this interval or the interval aborts, and
    /// the abort's seek resets the position, so a position ahead of ours skips only what the
    /// application never sees. Only for the partitions of running tasks (see below).
    pub(super) fn committable_positions(
        &self,
        consumer: &GroupConsumer,
    ) -> HashMap<(String, i32), i64> {
        let mut out: HashMap<(String, i32), i64> = self
            .positions
            .iter()
            .map(|((t, p), o)| ((t.to_string(), *p), *o))
            .collect();
        let Ok(positions) = consumer.position() else {
            return out;
        };
        for e in positions.elements() {
            let Offset::Offset(position) = e.offset() else {
                continue;
            };
            // Only a running task's partition: a task still restoring processed nothing (a
            // record fetched before the pause moved the consumer's position past what it has
            // seen), and once a thread closes its tasks (a restart after a failed interval),
            // the consumer keeps fetching from where the abort sought it and, serving the
            // commit markers it fetched, moves its position past records nothing processed,
            // before the commit on revoke asks for it.
            if !self.is_running(e.topic(), e.partition()) {
                continue;
            }
            let tp = (e.topic().to_owned(), e.partition());
            let Some(committed) = self.committed.get(&tp).copied() else {
                continue;
            };
            let position = match &self.unprocessed {
                Some((t, p, offset)) if *t == tp.0 && *p == tp.1 => position.min(*offset),
                _ => position,
            };
            let current = out.get(&tp).copied().or(committed);
            if current.is_none_or(|c| position > c) {
                out.insert(tp, position);
            }
        }
        out
    }

    /// Drops the interval's work: aborts the transaction, discards pending store writes and
    /// unsent output, and seeks every owned partition back to its last committed offset.
    pub(super) fn abort(&mut self, consumer: &GroupConsumer, reason: &str) -> Result<()> {
        if self.eos() && self.txn_open {
            abort_transaction(&self.producer)?;
        }
        self.txn_open = false;
        self.producer.context().clear();
        self.origins.clear();
        for dead_letters in self.dead_letters.values() {
            dead_letters.reset();
        }
        for task in self.tasks.values_mut() {
            task.abort();
        }
        self.rewind(consumer)?;
        self.dirty = false;
        self.shared
            .metrics
            .aborts
            .with_label_values(&[reason])
            .inc();
        Ok(())
    }

    pub(super) fn rewind(&mut self, consumer: &GroupConsumer) -> Result<()> {
        self.positions.clear();
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), committed) in &self.committed {
            let offset = committed.map_or(Offset::Beginning, Offset::Offset);
            tpl.add_partition_offset(topic, *partition, offset)
                .map_err(Error::kafka("building the rewind list"))?;
        }
        if tpl.count() > 0 {
            consumer
                .seek_partitions(tpl, KAFKA_TIMEOUT)
                .map_err(Error::kafka("seeking back to the committed offsets"))?;
        }
        Ok(())
    }
}
