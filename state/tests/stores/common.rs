//! Test harness: a state environment in a temp dir, and an in-memory stand-in for the changelog
//! topics with transactional offsets (every commit and abort writes a marker that takes an
//! offset, as Kafka does).

use std::collections::BTreeMap;
use std::error::Error;

use keel_state::{
    ChangelogRecord, Guarantee, KeyValueStore, RestoreProgress, StateConfig, StoreEnv, TaskState,
    TtlStore,
};

pub type TestResult<T = ()> = Result<T, Box<dyn Error>>;

pub const TASK: &str = "0_3";

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub env: StoreEnv,
}

impl Harness {
    pub fn new() -> TestResult<Self> {
        Harness::with_config(|_| {})
    }

    pub fn with_config(tweak: impl FnOnce(&mut StateConfig)) -> TestResult<Self> {
        let dir = tempfile::tempdir()?;
        let mut config = StateConfig::with_dir(dir.path());
        config.block_cache_bytes = 8 << 20;
        config.write_buffer_bytes = 4 << 20;
        config.memtable_bytes = 1 << 20;
        tweak(&mut config);
        let env = StoreEnv::new(config, "keel-test")?;
        Ok(Harness { dir, env })
    }

    pub fn open(&self, guarantee: Guarantee) -> keel_state::Result<TaskState> {
        self.env.open_task(TASK, guarantee)
    }

    pub fn task_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("keel-test").join(TASK)
    }

    pub fn checkpoint_path(&self) -> std::path::PathBuf {
        self.task_dir().join(".checkpoint")
    }
}

pub type Record = (i64, Vec<u8>, Option<Vec<u8>>);

#[derive(Debug, Default, Clone)]
pub struct Partition {
    pub records: Vec<Record>,
    pub end: i64,
}

/// The changelog partitions of one task, one per store.
#[derive(Debug, Default, Clone)]
pub struct Changelogs {
    pub topics: BTreeMap<String, Partition>,
    /// Records drained from the task during the open transaction, not yet produced.
    pub in_flight: Vec<ChangelogRecord>,
}

impl Changelogs {
    /// Drains the task's changelog records into the open transaction (as a runtime that
    /// produces after every processed record would).
    pub fn drain(&mut self, task: &mut TaskState) {
        self.in_flight.extend(task.take_changelog());
    }

    /// Produces the task's undrained changelog records in a transaction, commits it, and tells
    /// the task. Returns the last offset per store.
    pub fn commit(&mut self, task: &mut TaskState) -> keel_state::Result<BTreeMap<String, i64>> {
        let mut last = BTreeMap::new();
        self.drain(task);
        for record in std::mem::take(&mut self.in_flight) {
            let partition = self.topics.entry(record.store.to_string()).or_default();
            let offset = partition.end;
            partition.records.push((offset, record.key, record.value));
            partition.end += 1;
            last.insert(record.store.to_string(), offset);
        }
        for store in last.keys() {
            if let Some(p) = self.topics.get_mut(store) {
                p.end += 1; // commit marker
            }
        }
        task.commit(last.iter().map(|(s, o)| (s.as_str(), *o)))?;
        Ok(last)
    }

    /// Produces the undrained records into a transaction that aborts: they take offsets but are
    /// never read under read_committed.
    pub fn abort(&mut self, task: &mut TaskState) {
        let mut counts: BTreeMap<String, i64> = BTreeMap::new();
        self.drain(task);
        for record in std::mem::take(&mut self.in_flight) {
            *counts.entry(record.store.to_string()).or_default() += 1;
        }
        for (store, count) in counts {
            self.topics.entry(store).or_default().end += count + 1;
        }
        task.abort();
    }

    /// Restores every store of the task from its plan, in batches.
    pub fn restore(
        &self,
        task: &mut TaskState,
        batch_size: usize,
    ) -> keel_state::Result<Vec<RestoreProgress>> {
        let empty = Partition::default();
        let mut out = Vec::new();
        for plan in task.restore_plans() {
            let partition = self.topics.get(&*plan.store).unwrap_or(&empty);
            let seek = plan.seek_offset(0);
            let tail: Vec<Record> = partition
                .records
                .iter()
                .filter(|(offset, _, _)| *offset >= seek)
                .cloned()
                .collect();
            let batches: Vec<Vec<Record>> = tail.chunks(batch_size).map(<[_]>::to_vec).collect();
            out.push(task.restore(&plan.store, 0, partition.end, batches, &mut ())?);
        }
        Ok(out)
    }
}

pub fn kv_contents(store: &KeyValueStore) -> keel_state::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    store.iter()?.collect()
}

/// A TTL store's live entries: key → (value, expiry).
pub type TtlContents = BTreeMap<Vec<u8>, (Vec<u8>, i64)>;

pub fn ttl_contents(store: &TtlStore, now: i64) -> keel_state::Result<TtlContents> {
    Ok(store
        .prefix(b"", now)?
        .into_iter()
        .map(|e| (e.key, (e.value, e.expires_at)))
        .collect())
}

pub fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}
