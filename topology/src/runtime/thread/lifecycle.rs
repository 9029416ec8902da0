//! Opening and closing a stream thread's tasks: opening a task's state (waiting for another
//! thread to release its lock, wiping corrupt local state), closing a task cleanly (its
//! processors' `close`, a checkpoint) or dirty, closing every task at shutdown, and closing a
//! task dirty whose committed interval could not be applied, to restore it from the changelog.

use std::time::Duration;

use super::{Core, GroupConsumer, now_ms};
use crate::error::{Action, Result};
use crate::runtime::{faults, restore, tasks};
use crate::task::StreamTask;
use crate::topology::TaskId;

impl Core {
    /// Tasks whose committed interval could not be applied: closes each dirty (no checkpoint,
    /// so its stores restore from the changelog, which holds the interval) and queues its
    /// partitions for set-up again; corrupt local state is wiped first. Returns the first
    /// error whose action is to stop (a bug).
    pub(super) fn restore_from_changelog(
        &mut self,
        failed: Vec<(TaskId, keel_state::Error)>,
    ) -> Option<keel_state::Error> {
        let mut bug = None;
        for (id, error) in failed {
            let action = Action::of_state(&error);
            self.close_for_restore(id, action == Action::RestoreTask);
            if action == Action::Stop {
                bug.get_or_insert(error);
            }
        }
        bug
    }

    /// Closes task `id` dirty, deletes its local state when `wipe` (corrupt: only the changelog
    /// can be trusted), and queues its partitions for set-up, which restores it.
    pub(super) fn close_for_restore(&mut self, id: TaskId, wipe: bool) {
        if let Some(task) = self.tasks.remove(&id) {
            self.close_task(task, false);
        }
        if wipe && let Err(e) = self.shared.env.remove_task_state(&id.to_string()) {
            tracing::warn!(task = %id, error = %e, "could not wipe the corrupt local state now; the set-up wipes it");
        }
        for (topic, partition) in self.committed.keys() {
            let of_task = *partition == id.partition
                && self.shared.topic_subs.get(topic) == Some(&id.sub_topology);
            let entry = (topic.clone(), *partition);
            if of_task && !self.pending_assign.contains(&entry) {
                self.pending_assign.push(entry);
            }
        }
    }

    /// Opens task `id`'s state (its restore and `init` follow in `restore_slice`). Local state
    /// that RocksDB reports corrupt (a store that does not open) is wiped and the task opened
    /// again, to restore from the changelog alone.
    pub(super) fn open_task(&mut self, id: TaskId) -> Result<StreamTask> {
        match self.try_open_task(id) {
            Err(e) if e.action() == Action::RestoreTask => {
                tracing::warn!(thread = self.index, task = %id, error = %e, "local state is corrupt; wiping it and restoring from the changelog");
                self.shared.env.remove_task_state(&id.to_string())?;
                self.try_open_task(id)
            }
            other => other,
        }
    }

    pub(super) fn try_open_task(&mut self, id: TaskId) -> Result<StreamTask> {
        faults::check(faults::TASK_SET_UP)?;
        let shared = self.shared.clone();
        let config = &shared.config;
        // Another thread of this process may still be closing the task it lost to us.
        let mut attempts = 0;
        let state = loop {
            match shared
                .env
                .open_task(&id.to_string(), config.processing_guarantee)
            {
                Ok(state) => break state,
                Err(keel_state::Error::TaskLocked { .. }) if attempts < 100 => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let task = StreamTask::new(
            id,
            config.application_id.as_str().into(),
            shared.topology.graph.clone(),
            state,
            shared.dead_letter_topic.clone(),
            config.on_bad_record,
            shared.topic_partitions.clone(),
        )?;
        Ok(task)
    }

    /// Closes one task: its readers go (only its own: other tasks of the partition keep
    /// theirs); on a clean close its processors' `close` runs and its stores checkpoint.
    pub(super) fn close_task(&mut self, mut task: StreamTask, clean: bool) {
        let id = task.id();
        let _ = faults::injected(faults::TASK_CLOSE);
        tasks::withdraw_readers(&self.shared.readers, &task);
        if clean {
            task.close_processors(now_ms());
        }
        let state = task.into_state();
        if clean {
            if let Err(e) = state.close() {
                tracing::warn!(task = %id, error = %e, "closing the task's state failed");
            }
        } else {
            state.close_dirty();
        }
    }

    /// Shutdown: commit what is done, then close every task (cleanly only if the commit held).
    pub(super) fn close_all(&mut self, consumer: &GroupConsumer, clean: bool) -> Result<()> {
        let committed = if clean {
            self.commit(consumer).map_err(|e| {
                tracing::warn!(thread = self.index, error = %e, "final commit failed");
                e
            })
        } else {
            Ok(())
        };
        if committed.is_err() || !clean {
            let _ = self.abort(consumer, "shutdown");
        }
        let ok = clean && committed.is_ok();
        let tasks = std::mem::take(&mut self.tasks);
        for (_, task) in tasks {
            self.close_task(task, ok);
        }
        for (_, r) in std::mem::take(&mut self.restoring) {
            close_restoring(r, ok);
        }
        tracing::info!(thread = self.index, clean = ok, "stream thread stopped");
        committed
    }
}

/// Closes a task that has not finished restoring (its processors never ran): cleanly, its
/// stores checkpoint what they restored, so the next owner goes on from there.
pub(super) fn close_restoring(r: restore::Restoring, clean: bool) {
    let id = r.task.id();
    let state = r.task.into_state();
    if clean {
        if let Err(e) = state.close() {
            tracing::warn!(task = %id, error = %e, "closing a restoring task's state failed");
        }
    } else {
        state.close_dirty();
    }
}
