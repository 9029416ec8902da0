//! [`TestDriver`]: runs a topology in-process with no broker — topics are in-memory queues,
//! changelogs are in-memory logs, the wall clock is whatever the test says — so processors can
//! be unit-tested in milliseconds (Kafka Streams' `TopologyTestDriver`). Stores are the real
//! stores with RocksDB's files in memory (only locks and checkpoints go to a temporary
//! directory), committed after every input record, so what a test sees is what the runtime
//! would commit.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keel_state::{Guarantee, StateConfig, StoreEnv};

use crate::error::{Error, Result};
use crate::processor::PunctuationType;
use crate::record::{Headers, OutRecord, RawRecord};
use crate::runtime::default_partition;
use crate::serde::Serde;
use crate::task::{BadRecordPolicy, StreamTask};
use crate::topology::{TaskId, Topology};

/// How the driver lays out its pretend cluster.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub application_id: String,
    /// Partitions per source topic (default 1). Repartition topics get the largest count.
    pub partitions: HashMap<String, i32>,
    /// Initial wall-clock time, epoch ms.
    pub wall_clock: i64,
    pub on_bad_record: BadRecordPolicy,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            application_id: "test-app".into(),
            partitions: HashMap::new(),
            wall_clock: 1_700_000_000_000,
            on_bad_record: BadRecordPolicy::DeadLetter,
        }
    }
}

type LogRecord = (i64, Vec<u8>, Option<Vec<u8>>);

/// A topology under test.
pub struct TestDriver {
    topology: Topology,
    config: DriverConfig,
    dir: PathBuf,
    env: Option<StoreEnv>,
    tasks: BTreeMap<TaskId, StreamTask>,
    outputs: HashMap<String, VecDeque<OutRecord>>,
    offsets: HashMap<(String, i32), i64>,
    changelogs: HashMap<(String, i32), Vec<LogRecord>>,
    wall_clock: i64,
}

impl std::fmt::Debug for TestDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDriver")
            .field("dir", &self.dir)
            .field("tasks", &self.tasks.keys().collect::<Vec<_>>())
            .field("wall_clock", &self.wall_clock)
            .finish_non_exhaustive()
    }
}

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

impl TestDriver {
    /// One partition per topic, application id `test-app`.
    pub fn new(topology: Topology) -> Result<Self> {
        Self::with_config(topology, DriverConfig::default())
    }

    pub fn with_config(topology: Topology, config: DriverConfig) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "keel-driver-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let mut driver = Self {
            topology,
            wall_clock: config.wall_clock,
            config,
            dir,
            env: None,
            tasks: BTreeMap::new(),
            outputs: HashMap::new(),
            offsets: HashMap::new(),
            changelogs: HashMap::new(),
        };
        driver.start_tasks()?;
        Ok(driver)
    }

    fn partitions_of(&self, topic: &str) -> i32 {
        let app = &self.config.application_id;
        if self
            .topology
            .internal_topics(app)
            .iter()
            .any(|t| t == topic)
        {
            return self.config.partitions.values().copied().max().unwrap_or(1);
        }
        self.config.partitions.get(topic).copied().unwrap_or(1)
    }

    fn start_tasks(&mut self) -> Result<()> {
        let env = match self.env.take() {
            Some(env) => env,
            // RocksDB keeps its files in memory; only locks and checkpoints touch the disk.
            None => StoreEnv::new(
                StateConfig {
                    block_cache_bytes: 8 << 20,
                    write_buffer_bytes: 4 << 20,
                    memtable_bytes: 1 << 20,
                    in_memory: true,
                    ..StateConfig::with_dir(&self.dir)
                },
                &self.config.application_id,
            )?,
        };
        let app: Arc<str> = self.config.application_id.as_str().into();
        // Every source and sink topic, as the runtime hands them to its tasks.
        let topic_partitions: Arc<HashMap<String, i32>> = Arc::new(
            self.topology
                .source_topics(&app)
                .into_iter()
                .chain(self.topology.sink_topics(&app))
                .map(|t| {
                    let n = self.partitions_of(&t);
                    (t, n)
                })
                .collect(),
        );
        for sub in self.topology.sub_topologies().to_vec() {
            let n = sub
                .source_topics
                .first()
                .map_or(1, |t| self.partitions_of(&t.resolve(&app)));
            for partition in 0..n {
                let id = TaskId {
                    sub_topology: sub.id,
                    partition,
                };
                let state = env.open_task(&id.to_string(), Guarantee::ExactlyOnce)?;
                let mut task = StreamTask::new(
                    id,
                    app.clone(),
                    self.topology.graph.clone(),
                    state,
                    format!("{app}-dlq"),
                    self.config.on_bad_record,
                    topic_partitions.clone(),
                )?;
                for plan in task.state().restore_plans() {
                    let log = self
                        .changelogs
                        .get(&(plan.changelog_topic.clone(), partition))
                        .cloned()
                        .unwrap_or_default();
                    let end = log.last().map_or(0, |(o, _, _)| o + 1);
                    task.state_mut()
                        .restore(&plan.store, 0, end, [log], &mut ())?;
                }
                task.init(self.wall_clock)?;
                self.tasks.insert(id, task);
            }
        }
        self.env = Some(env);
        Ok(())
    }

    /// Feeds one raw record to `topic` (partition by Kafka's default partitioner on the key).
    pub fn pipe_raw(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp: i64,
    ) -> Result<()> {
        self.pipe_with_headers(topic, key, value, timestamp, Headers::default())
    }

    pub fn pipe_with_headers(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp: i64,
        headers: Headers,
    ) -> Result<()> {
        let partition = key.map_or(0, |k| default_partition(k, self.partitions_of(topic)));
        self.pipe_to_partition(topic, partition, key, value, timestamp, headers)
    }

    /// Feeds one raw record to `partition` of `topic`, whatever its key: what a producer with
    /// another partitioner than Kafka's default (murmur2) does.
    ///
    /// # Errors
    /// [`Error::Topology`] if `topic` has no such partition.
    pub fn pipe_to_partition(
        &mut self,
        topic: &str,
        partition: i32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp: i64,
        headers: Headers,
    ) -> Result<()> {
        let partitions = self.partitions_of(topic);
        if !(0..partitions).contains(&partition) {
            return Err(Error::Topology(format!(
                "{topic} has {partitions} partition(s); there is no partition {partition}"
            )));
        }
        let offset = self
            .offsets
            .entry((topic.to_owned(), partition))
            .or_insert(0);
        let raw = RawRecord {
            topic: topic.into(),
            partition,
            offset: *offset,
            timestamp,
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            headers,
        };
        *offset += 1;
        let mut queue = VecDeque::from([raw]);
        while let Some(raw) = queue.pop_front() {
            let app = &self.config.application_id;
            let sub = self
                .topology
                .sub_topology_of(app, &raw.topic)
                .ok_or_else(|| Error::MissingTopic(raw.topic.to_string()))?;
            let id = TaskId {
                sub_topology: sub,
                partition: raw.partition,
            };
            let task = self
                .tasks
                .get_mut(&id)
                .ok_or_else(|| Error::Topology(format!("no task {id}")))?;
            task.process(&raw, self.wall_clock)?;
            let out = task.take_output();
            self.commit(id)?;
            queue.extend(self.route(out));
        }
        Ok(())
    }

    /// Feeds one typed record.
    pub fn pipe<K, V>(
        &mut self,
        topic: &str,
        key: &K,
        value: &V,
        timestamp: i64,
        key_serde: &impl Serde<K>,
        value_serde: &impl Serde<V>,
    ) -> Result<()> {
        let k = key_serde
            .serialize(topic, key)
            .map_err(|e| Error::Topology(format!("test key does not serialize: {e}")))?;
        let v = value_serde
            .serialize(topic, value)
            .map_err(|e| Error::Topology(format!("test value does not serialize: {e}")))?;
        self.pipe_raw(topic, k.as_deref(), v.as_deref(), timestamp)
    }

    /// Moves the wall clock and fires the wall-clock punctuators that fall due.
    pub fn advance_wall_clock(&mut self, by: Duration) -> Result<()> {
        self.wall_clock = self
            .wall_clock
            .saturating_add(i64::try_from(by.as_millis()).unwrap_or(i64::MAX));
        let ids: Vec<TaskId> = self.tasks.keys().copied().collect();
        for id in ids {
            let now = self.wall_clock;
            let out = {
                let Some(task) = self.tasks.get_mut(&id) else {
                    continue;
                };
                task.punctuate(PunctuationType::WallClock, now, now)?;
                task.take_output()
            };
            self.commit(id)?;
            let follow = self.route(out);
            for raw in follow {
                self.pipe_with_headers(
                    &raw.topic,
                    raw.key.as_deref(),
                    raw.value.as_deref(),
                    raw.timestamp,
                    raw.headers,
                )?;
            }
        }
        Ok(())
    }

    pub fn wall_clock(&self) -> i64 {
        self.wall_clock
    }

    /// Output records go to their topic's queue; records for repartition topics come back as
    /// input.
    fn route(&mut self, out: Vec<OutRecord>) -> Vec<RawRecord> {
        let internal = self.topology.internal_topics(&self.config.application_id);
        let mut again = Vec::new();
        for record in out {
            if internal.contains(&record.topic) {
                let n = self.partitions_of(&record.topic);
                let partition = record.partition.unwrap_or_else(|| {
                    record.key.as_deref().map_or(0, |k| default_partition(k, n))
                });
                let offset = self
                    .offsets
                    .entry((record.topic.clone(), partition))
                    .or_insert(0);
                again.push(RawRecord {
                    topic: record.topic.as_str().into(),
                    partition,
                    offset: *offset,
                    timestamp: record.timestamp,
                    key: record.key,
                    value: record.value,
                    headers: record.headers,
                });
                *offset += 1;
            } else {
                self.outputs
                    .entry(record.topic.clone())
                    .or_default()
                    .push_back(record);
            }
        }
        again
    }

    /// Appends the task's changelog to the in-memory changelog topics and commits its stores.
    fn commit(&mut self, id: TaskId) -> Result<()> {
        let Some(task) = self.tasks.get_mut(&id) else {
            return Ok(());
        };
        let app = &self.config.application_id;
        let mut last: HashMap<String, i64> = HashMap::new();
        for record in task.state_mut().take_changelog() {
            let topic = keel_state::changelog_topic(app, &record.store);
            let log = self.changelogs.entry((topic, id.partition)).or_default();
            let offset = log.last().map_or(0, |(o, _, _)| o + 1);
            log.push((offset, record.key, record.value));
            last.insert(record.store.to_string(), offset);
        }
        task.state_mut().commit(last)?;
        task.mark_committed();
        Ok(())
    }

    /// Takes every record written to `topic` so far.
    ///
    /// Records keep the partition a custom sink partitioner chose (`None`: the default one).
    pub fn read_output(&mut self, topic: &str) -> Vec<OutRecord> {
        self.outputs
            .get_mut(topic)
            .map(|q| q.drain(..).collect())
            .unwrap_or_default()
    }

    /// Takes every record written to `topic`, decoded.
    pub fn read_output_as<K, V>(
        &mut self,
        topic: &str,
        key_serde: &impl Serde<K>,
        value_serde: &impl Serde<V>,
    ) -> Result<Vec<(K, V)>> {
        self.read_output(topic)
            .into_iter()
            .map(|r| {
                let k = key_serde
                    .deserialize(topic, r.key.as_deref())
                    .map_err(|e| Error::Topology(format!("output key: {e}")))?;
                let v = value_serde
                    .deserialize(topic, r.value.as_deref())
                    .map_err(|e| Error::Topology(format!("output value: {e}")))?;
                Ok((k, v))
            })
            .collect()
    }

    /// Takes the dead-lettered records.
    pub fn dead_letters(&mut self) -> Vec<OutRecord> {
        let topic = format!("{}-dlq", self.config.application_id);
        self.read_output(&topic)
    }

    /// The committed value of `key` in key-value store `store`, on the partition that owns it.
    pub fn kv_get(&self, store: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        for task in self.tasks.values() {
            if let Ok(kv) = task.state().kv(store)
                && let Some(v) = kv.get(key)?
            {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// The timer `key` of timer store `store` (pending writes included), on whichever partition
    /// holds it.
    pub fn timer(&self, store: &str, key: &[u8]) -> Result<Option<keel_state::Timer>> {
        for task in self.tasks.values() {
            if let Ok(timers) = task.state().timers(store)
                && let Some(t) = timers.get(key)?
            {
                return Ok(Some(t));
            }
        }
        Ok(None)
    }

    /// The in-memory changelog of `store`, partition `partition`.
    pub fn changelog(&self, store: &str, partition: i32) -> &[LogRecord] {
        let topic = keel_state::changelog_topic(&self.config.application_id, store);
        self.changelogs
            .get(&(topic, partition))
            .map_or(&[], Vec::as_slice)
    }

    /// Closes every task and opens it again; with `wipe`, the local stores are deleted first,
    /// so they come back from the in-memory changelogs alone.
    pub fn restart(&mut self, wipe: bool) -> Result<()> {
        for (_, mut task) in std::mem::take(&mut self.tasks) {
            task.close_processors(self.wall_clock);
            task.into_state().close()?;
        }
        if wipe && let Some(env) = self.env.take() {
            env.remove_all_local_state()?;
        }
        self.start_tasks()
    }
}

impl Drop for TestDriver {
    fn drop(&mut self) {
        for (_, task) in std::mem::take(&mut self.tasks) {
            task.into_state().close_dirty();
        }
        self.env = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
