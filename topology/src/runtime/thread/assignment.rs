//! Partitions coming and going: the rebalance callbacks (which run inside `poll`), setting up
//! the tasks of assigned partitions (committed offsets and stream time read, task opened, its
//! partitions paused), restoring them one slice per loop turn so the member keeps polling,
//! resuming their partitions once restored, and committing then closing the tasks of revoked
//! or lost partitions.

use std::collections::{HashMap, HashSet};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{Offset, TopicPartitionList};

use super::lifecycle::close_restoring;
use super::{Core, GroupConsumer, KAFKA_TIMEOUT, ThreadContext, lock, now_ms};
use crate::error::{Action, Error, Result};
use crate::runtime::{restore, tasks};
use crate::task;
use crate::topology::TaskId;

impl ConsumerContext for ThreadContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut core = lock(&self.core);
            let revoked: Vec<(String, i32)> = tpl
                .elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect();
            let lost = consumer.assignment_lost();
            if let Err(e) = core.on_revoke(consumer, &revoked, lost) {
                core.failure.get_or_insert(e);
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut core = lock(&self.core);
            for e in tpl.elements() {
                core.pending_assign
                    .push((e.topic().to_owned(), e.partition()));
            }
            tracing::info!(
                thread = core.index,
                partitions = tpl.count(),
                "partitions assigned"
            );
        }
    }
}

impl Core {
    /// Creates, restores and initialises the tasks of newly assigned partitions.
    ///
    /// The assignment stays pending until every one of its tasks is set up: if reading the
    /// committed offsets, taking a task's lock or restoring fails (a broker hiccup), the error
    /// aborts this turn and the next turn sets up what is left, so a failure only delays the
    /// tasks. Tasks set up before the failure stay.
    pub(super) fn set_up_assigned(&mut self, consumer: &GroupConsumer) -> Result<()> {
        let mut assigned = self.pending_assign.clone();
        assigned.sort();
        assigned.dedup();
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in &assigned {
            tpl.add_partition(topic, *partition);
        }
        let committed = consumer
            .committed_offsets(tpl, KAFKA_TIMEOUT)
            .map_err(Error::kafka("reading committed offsets"))?;
        let mut stream_times: HashMap<TaskId, i64> = HashMap::new();
        for e in committed.elements() {
            let offset = match e.offset() {
                Offset::Offset(n) => Some(n),
                _ => None,
            };
            self.committed
                .insert((e.topic().to_owned(), e.partition()), offset);
            if let (Some(&sub), Some(t)) = (
                self.shared.topic_subs.get(e.topic()),
                task::parse_stream_time_metadata(e.metadata()),
            ) {
                let id = TaskId {
                    sub_topology: sub,
                    partition: e.partition(),
                };
                let entry = stream_times.entry(id).or_insert(t);
                *entry = (*entry).max(t);
            }
        }
        let mut ids: Vec<TaskId> = assigned
            .iter()
            .filter_map(|(topic, partition)| {
                self.shared.topic_subs.get(topic).map(|&sub| TaskId {
                    sub_topology: sub,
                    partition: *partition,
                })
            })
            .collect();
        ids.sort();
        ids.dedup();
        for id in ids {
            if self.tasks.contains_key(&id) || self.restoring.contains_key(&id) {
                continue;
            }
            let task = self.open_task(id)?;
            let partitions: Vec<(String, i32)> = assigned
                .iter()
                .filter(|(topic, partition)| {
                    *partition == id.partition
                        && self.shared.topic_subs.get(topic) == Some(&id.sub_topology)
                })
                .cloned()
                .collect();
            // Nothing of the task's input is fetched until its stores are restored; the group
            // consumer keeps being polled meanwhile (`restore_slice`).
            let mut tpl = TopicPartitionList::new();
            for (topic, partition) in &partitions {
                tpl.add_partition(topic, *partition);
            }
            self.restoring.insert(
                id,
                restore::Restoring::new(task, partitions, stream_times.get(&id).copied()),
            );
            consumer
                .pause(&tpl)
                .map_err(Error::kafka("pausing a restoring task's partitions"))?;
        }
        self.pending_assign.retain(|tp| !assigned.contains(tp));
        Ok(())
    }

    /// Whether `topic`/`partition` belongs to a task of this thread that is running (set up
    /// and restored).
    pub(super) fn is_running(&self, topic: &str, partition: i32) -> bool {
        self.shared.topic_subs.get(topic).is_some_and(|&sub| {
            self.tasks.contains_key(&TaskId {
                sub_topology: sub,
                partition,
            })
        })
    }

    /// Whether the task reading `topic`/`partition` is still restoring.
    pub(super) fn is_restoring(&self, topic: &str, partition: i32) -> bool {
        // Asked for every polled record: no topic lookup while nothing restores.
        !self.restoring.is_empty()
            && self.shared.topic_subs.get(topic).is_some_and(|&sub| {
                self.restoring.contains_key(&TaskId {
                    sub_topology: sub,
                    partition,
                })
            })
    }

    /// Restores one slice ([`restore::SLICE`]) of one restoring task — the one under way, or
    /// the first — so the loop polls the group consumer again well within
    /// `max.poll.interval.ms`, however long the whole restore takes. A task whose stores are
    /// restored is initialised, its stream time resumed, its readers published, and its
    /// partitions resumed from the committed offsets. Corrupt local state (found by the
    /// changelog check or a read during restore or `init`) is wiped and the task restored again
    /// from the changelog alone; another error resets the restore to go on from what the
    /// stores applied, on a later turn.
    pub(super) fn restore_slice(&mut self, consumer: &GroupConsumer) -> Result<()> {
        let head = self
            .restoring
            .iter()
            .find(|(_, r)| r.is_active())
            .or_else(|| self.restoring.iter().next())
            .map(|(id, _)| *id);
        let Some(id) = head else {
            return Ok(());
        };
        let shared = self.shared.clone();
        let Some(r) = self.restoring.get_mut(&id) else {
            return Ok(());
        };
        let result = r
            .slice(&self.restore, &shared.metrics, restore::SLICE)
            .and_then(|done| {
                if done {
                    r.task.init(now_ms()).map(|()| true)
                } else {
                    Ok(false)
                }
            })
            .map_err(|e| e.in_task(id));
        match result {
            Ok(false) => Ok(()),
            Ok(true) => {
                let Some(r) = self.restoring.remove(&id) else {
                    return Ok(());
                };
                let mut task = r.task;
                if let Some(t) = r.stream_time {
                    task.resume_stream_time(t);
                }
                tasks::publish_readers(&shared.readers, &task);
                self.tasks.insert(id, task);
                tracing::info!(thread = self.index, task = %id, "task running");
                self.resume(consumer, &r.partitions)
            }
            Err(e) if e.action() == Action::RestoreTask => {
                tracing::warn!(thread = self.index, task = %id, error = %e, "local state is corrupt; wiping it and restoring from the changelog");
                let Some(r) = self.restoring.remove(&id) else {
                    return Ok(());
                };
                let _ = self.restore.unassign();
                r.task.into_state().close_dirty();
                shared.env.remove_task_state(&id.to_string())?;
                let task = self.try_open_task(id)?;
                self.restoring.insert(
                    id,
                    restore::Restoring::new(task, r.partitions, r.stream_time),
                );
                Ok(())
            }
            Err(e) => {
                r.reset();
                Err(e)
            }
        }
    }

    /// Resumes a task's partitions on the group consumer from their committed offsets (a
    /// record fetched before the pause was dropped, so the consumer's position is not the
    /// task's).
    pub(super) fn resume(
        &mut self,
        consumer: &GroupConsumer,
        partitions: &[(String, i32)],
    ) -> Result<()> {
        let mut all = TopicPartitionList::new();
        let mut seek = TopicPartitionList::new();
        for (topic, partition) in partitions {
            all.add_partition(topic, *partition);
            if let Some(committed) = self.committed.get(&(topic.clone(), *partition)) {
                seek.add_partition_offset(
                    topic,
                    *partition,
                    committed.map_or(Offset::Beginning, Offset::Offset),
                )
                .map_err(Error::kafka("building the resume list"))?;
            }
        }
        if all.count() == 0 {
            return Ok(());
        }
        consumer
            .resume(&all)
            .map_err(Error::kafka("resuming a restored task's partitions"))?;
        if seek.count() > 0 {
            consumer
                .seek_partitions(seek, KAFKA_TIMEOUT)
                .map_err(Error::kafka("seeking a restored task's partitions"))?;
        }
        Ok(())
    }

    /// Partitions are leaving: commit what was done, then close their tasks cleanly (or, when
    /// the assignment was lost, abort and close them without a checkpoint).
    pub(super) fn on_revoke(
        &mut self,
        consumer: &GroupConsumer,
        revoked: &[(String, i32)],
        lost: bool,
    ) -> Result<()> {
        if lost {
            self.abort(consumer, "assignment lost")?;
        } else if let Err(e) = self.commit(consumer) {
            tracing::warn!(thread = self.index, error = %e, "commit on revoke failed; aborting");
            self.abort(consumer, "commit on revoke failed")?;
        }
        let mut gone = HashSet::new();
        for (topic, partition) in revoked {
            self.committed.remove(&(topic.clone(), *partition));
            let _ = self
                .shared
                .metrics
                .consumer_lag
                .remove_label_values(&[topic, &partition.to_string()]);
            self.positions
                .retain(|(t, p), _| !(&**t == topic.as_str() && p == partition));
            self.pending_assign
                .retain(|(t, p)| !(t == topic && p == partition));
            if let Some(&sub) = self.shared.topic_subs.get(topic) {
                gone.insert(TaskId {
                    sub_topology: sub,
                    partition: *partition,
                });
            }
        }
        for id in gone {
            if let Some(task) = self.tasks.remove(&id) {
                self.close_task(task, !lost);
            }
            if let Some(r) = self.restoring.remove(&id) {
                if r.is_active() {
                    let _ = self.restore.unassign();
                }
                close_restoring(r, !lost);
            }
        }
        tracing::info!(
            thread = self.index,
            partitions = revoked.len(),
            lost,
            "partitions revoked"
        );
        Ok(())
    }
}
