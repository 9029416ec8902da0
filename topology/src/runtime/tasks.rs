//! What a stream thread does with its tasks around the commit point and on close: applying a
//! committed interval to the stores, and the interactive-query readers of each task's stores.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::Action;

use crate::runtime::thread::Readers;
use crate::task::StreamTask;
use crate::topology::TaskId;

/// Attempts at applying a committed interval to a task's stores before the task is restored
/// from its changelog instead.
pub(crate) const APPLY_ATTEMPTS: u32 = 3;

/// After the commit point (the transaction committed): applies each task's pending writes to
/// its stores, with `offsets` the last changelog offset per store of each task that wrote.
///
/// Nothing here may abort or rewind: the interval is committed, and replaying it would process
/// it twice. An environment failure (disk, I/O) is retried up to [`APPLY_ATTEMPTS`] times,
/// `backoff` apart (a failed apply keeps the pending writes, so a retry applies what is left);
/// what still fails, or fails with corruption or a bug, comes back with its error: the caller
/// must close that task dirty, so it is restored from the changelog, which holds the interval.
pub(crate) fn apply_committed(
    tasks: &mut BTreeMap<TaskId, StreamTask>,
    mut offsets: BTreeMap<TaskId, Vec<(String, i64)>>,
    backoff: Duration,
) -> Vec<(TaskId, keel_state::Error)> {
    let mut failed = Vec::new();
    for (id, task) in tasks.iter_mut() {
        let offsets = offsets.remove(id).unwrap_or_default();
        let mut attempt = 1;
        loop {
            let applied =
                match crate::runtime::faults::injected(crate::runtime::faults::STORE_APPLY) {
                    Some(_) => Err(keel_state::Error::Io {
                        op: "apply (failpoint)",
                        path: task.state().dir().to_owned(),
                        source: std::io::Error::other("injected"),
                    }),
                    None => task.state_mut().commit(offsets.iter().cloned()),
                };
            match applied {
                Ok(()) => break,
                Err(e)
                    if Action::of_state(&e) == Action::AbortAndRetry
                        && attempt < APPLY_ATTEMPTS =>
                {
                    tracing::warn!(task = %id, attempt, error = %e, "applying the committed interval failed; retrying");
                    std::thread::sleep(backoff * attempt);
                    attempt += 1;
                }
                Err(e) => {
                    tracing::error!(task = %id, error = %e, "cannot apply the committed interval; the task will be restored from its changelog");
                    failed.push((*id, e));
                    break;
                }
            }
        }
    }
    failed
}

/// Serves the committed state of `task`'s key-value stores to interactive queries.
pub(crate) fn publish_readers(readers: &Readers, task: &StreamTask) {
    if let Ok(mut readers) = readers.write() {
        for store in task.state().stores() {
            if let Some(reader) = store.committed_reader() {
                readers.insert((store.name().to_owned(), task.id().partition), reader);
            }
        }
    }
}

/// Stops serving `task`'s stores, and only those: other tasks of the same partition (other
/// sub-topologies) keep theirs. A store belongs to one sub-topology, so (store, partition)
/// names one task's store.
pub(crate) fn withdraw_readers(readers: &Readers, task: &StreamTask) {
    if let Ok(mut readers) = readers.write() {
        for store in task.state().stores() {
            readers.remove(&(store.name().to_owned(), task.id().partition));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, RwLock};

    use keel_state::{Guarantee, StateConfig, StoreEnv, StoreKind, failpoints};

    use super::*;
    use crate::error::ProcessError;
    use crate::processor::{Context, Processor};
    use crate::record::Record;
    use crate::serde::{I64, Utf8};
    use crate::task::BadRecordPolicy;
    use crate::topology::{Topology, TopologyBuilder};

    struct Pass;
    impl Processor for Pass {
        type Key = String;
        type Value = i64;
        fn process(
            &mut self,
            ctx: &mut Context<'_>,
            r: Record<String, i64>,
        ) -> Result<(), ProcessError> {
            ctx.forward(r);
            Ok(())
        }
    }

    /// Two sub-topologies: `in-a` → `pa` (store `sa`), `in-b` → `pb` (store `sb`).
    fn two_subs() -> Topology {
        let mut b = TopologyBuilder::new();
        b.add_source("a", &["in-a"], Utf8, I64)
            .add_processor("pa", || Pass, &["a"])
            .add_state_store("sa", StoreKind::KeyValue, &["pa"])
            .add_source("b", &["in-b"], Utf8, I64)
            .add_processor("pb", || Pass, &["b"])
            .add_state_store("sb", StoreKind::KeyValue, &["pb"]);
        b.build().expect("valid")
    }

    struct Fixture {
        dir: std::path::PathBuf,
        env: StoreEnv,
        topology: Topology,
    }

    impl Fixture {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "keel-tasks-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let env = StoreEnv::new(
                StateConfig {
                    block_cache_bytes: 8 << 20,
                    write_buffer_bytes: 4 << 20,
                    memtable_bytes: 1 << 20,
                    in_memory: true,
                    ..StateConfig::with_dir(&dir)
                },
                "app",
            )
            .expect("env");
            Self {
                dir,
                env,
                topology: two_subs(),
            }
        }

        fn task(&self, sub_topology: usize, partition: i32) -> StreamTask {
            let id = TaskId {
                sub_topology,
                partition,
            };
            let state = self
                .env
                .open_task(&id.to_string(), Guarantee::ExactlyOnce)
                .expect("open");
            StreamTask::new(
                id,
                "app".into(),
                self.topology.graph.clone(),
                state,
                "app-dlq".into(),
                BadRecordPolicy::DeadLetter,
                Arc::new(HashMap::new()),
            )
            .expect("task")
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn closing_one_task_keeps_the_readers_of_another_task_on_the_same_partition() {
        let f = Fixture::new("readers");
        let a = f.task(0, 3);
        let b = f.task(1, 3);
        let readers: Readers = Arc::new(RwLock::new(HashMap::new()));
        publish_readers(&readers, &a);
        publish_readers(&readers, &b);
        withdraw_readers(&readers, &a);
        let readers = readers.read().expect("lock");
        assert!(!readers.contains_key(&("sa".to_owned(), 3)));
        let sb = readers
            .get(&("sb".to_owned(), 3))
            .expect("task 1_3's store still answers");
        assert_eq!(sb.get(b"k").expect("open store"), None);
    }

    #[test]
    fn a_failed_apply_after_the_commit_point_is_retried_not_dropped() {
        let f = Fixture::new("retry");
        let mut tasks = BTreeMap::new();
        let mut task = f.task(0, 0);
        task.state_mut()
            .kv_mut("sa")
            .expect("sa")
            .put(&b"k"[..], &b"v"[..]);
        assert_eq!(task.state_mut().take_changelog().len(), 1);
        let id = task.id();
        tasks.insert(id, task);
        failpoints::arm(failpoints::STORE_APPLY, 1);
        let failed = apply_committed(
            &mut tasks,
            [(id, vec![("sa".to_owned(), 0)])].into(),
            Duration::from_millis(1),
        );
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(failpoints::remaining(failpoints::STORE_APPLY), 0);
        let kv = tasks[&id].state().store("sa").expect("sa");
        assert_eq!(
            kv.committed_reader()
                .expect("a key-value store")
                .get(b"k")
                .expect("reads"),
            Some(b"v".to_vec()),
            "the committed write reached RocksDB on the retry"
        );
        assert_eq!(kv.applied_offset(), Some(0));
    }

    #[test]
    fn an_apply_that_keeps_failing_hands_the_task_back_for_restore() {
        let f = Fixture::new("restore");
        let mut tasks = BTreeMap::new();
        for sub in [0, 1] {
            let mut task = f.task(sub, 0);
            let store = if sub == 0 { "sa" } else { "sb" };
            task.state_mut()
                .kv_mut(store)
                .expect("kv")
                .put(&b"k"[..], &b"v"[..]);
            task.state_mut().take_changelog();
            tasks.insert(task.id(), task);
        }
        // Task 0_0 applies first and fails every attempt; 1_0 then applies.
        failpoints::arm(failpoints::STORE_APPLY, APPLY_ATTEMPTS);
        let failed = apply_committed(&mut tasks, BTreeMap::new(), Duration::from_millis(1));
        let ids: Vec<TaskId> = failed.iter().map(|(id, _)| *id).collect();
        assert_eq!(
            ids,
            vec![TaskId {
                sub_topology: 0,
                partition: 0
            }]
        );
        let other = tasks[&TaskId {
            sub_topology: 1,
            partition: 0,
        }]
            .state()
            .store("sb")
            .expect("sb")
            .committed_reader()
            .expect("a key-value store");
        assert_eq!(other.get(b"k").expect("reads"), Some(b"v".to_vec()));
    }
}
