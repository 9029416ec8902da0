//! [`StreamTask`]: one partition of one sub-topology — its processors, its stores, its
//! punctuators — turning input records into output records. Knows nothing of Kafka clients:
//! the stream thread and the test driver feed it and take what it produced.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use keel_state::{StoreKind, TaskState};
use rustc_hash::FxHashMap;

use crate::error::{Action, Error, ProcessError, Result};
use crate::processor::{
    Context, ErasedProcessor, NodeFailure, Payload, Punctuation, PunctuationType, Schedule,
};
use crate::record::{Headers, OutRecord, RawRecord, RecordMeta};
use crate::topology::{EncodeFailure, Graph, NodeKind, TaskId};

/// Dead-letter header names (values are UTF-8) and [`for_source`](dlq_headers::for_source),
/// the one rule for their values, which the runtime and the plain consumers' sinks share.
pub mod dlq_headers {
    pub const ERROR: &str = "keel.error";
    pub const SOURCE_TOPIC: &str = "keel.source.topic";
    pub const SOURCE_PARTITION: &str = "keel.source.partition";
    pub const SOURCE_OFFSET: &str = "keel.source.offset";
    pub const PROCESSOR: &str = "keel.processor";
    pub const TASK: &str = "keel.task";
    /// The original record's timestamp (ms): a dead letter carries the time it was written, which
    /// the broker takes, not the original's, which it may refuse.
    pub const SOURCE_TIMESTAMP: &str = "keel.source.timestamp";

    /// The dead-letter headers of the record at `topic`/`partition`@`offset` with `timestamp`
    /// (ms since the epoch, or [`NO_TIMESTAMP`](crate::NO_TIMESTAMP) if it has none, as
    /// [`timestamp_ms`](crate::timestamp_ms) gives it), which `processor` could not use because
    /// of `why`. In this order: [`ERROR`], [`SOURCE_TOPIC`], [`SOURCE_PARTITION`],
    /// [`SOURCE_OFFSET`], [`SOURCE_TIMESTAMP`], [`PROCESSOR`]; numbers as decimal text, so a
    /// record without a timestamp reads `-1`. They go after the record's own headers; the
    /// runtime adds [`TASK`] (the plain consumers' sinks have no task).
    pub fn for_source(
        why: &str,
        topic: &str,
        partition: i32,
        offset: i64,
        timestamp: i64,
        processor: &str,
    ) -> [(&'static str, String); 6] {
        [
            (ERROR, why.to_owned()),
            (SOURCE_TOPIC, topic.to_owned()),
            (SOURCE_PARTITION, partition.to_string()),
            (SOURCE_OFFSET, offset.to_string()),
            (SOURCE_TIMESTAMP, timestamp.to_string()),
            (PROCESSOR, processor.to_owned()),
        ]
    }
}

/// What to do with a record that cannot be decoded or that a processor rejects as bad input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BadRecordPolicy {
    /// Write it to the dead-letter topic with headers saying why and where from; go on.
    DeadLetter,
    /// Stop the application.
    Stop,
}

/// What one record may change, as it was before the record (see [`StreamTask::process`]).
struct RecordSavepoint {
    stream_time: i64,
    output: usize,
    emitted: u64,
    schedules: usize,
}

/// Counters of one task since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskCounters {
    pub processed: u64,
    pub dead_lettered: u64,
    pub emitted: u64,
    pub punctuations: u64,
}

/// One task.
///
/// # Stream time
///
/// A task's stream time is the largest timestamp of the input records it has *processed*: a
/// record moves it only once it was decoded and went through the whole graph (Kafka Streams'
/// rule). A record that cannot be decoded, or that a processor rejects as bad input, is
/// dead-lettered without moving it, so a poison record stamped an hour ahead fires no
/// stream-time punctuator and expires no timer.
///
/// How far one record may push stream time ahead of the partition's other records: **as far as
/// its timestamp says**; there is no cap. A record that decodes and that every processor
/// accepts is a real event, and holding stream time back from it would make its timers and
/// punctuators disagree with Kafka Streams and with a replay. The guard against producers with
/// a wrong clock is the broker's, per topic: `message.timestamp.after.max.ms` (refuses records
/// stamped too far in the future), and the processors' own validation (reject a record whose
/// event time is implausible as bad input, and it will not move stream time).
pub struct StreamTask {
    id: TaskId,
    graph: Arc<Graph>,
    processors: Vec<Option<Box<dyn ErasedProcessor>>>,
    state: TaskState,
    schedules: Vec<Schedule>,
    stream_time: i64,
    /// Stream time and the punctuation schedule as of the last commit: an abort rolls back
    /// to them, so the replay fires what the aborted interval fired.
    committed_clock: (i64, Vec<Schedule>),
    dead_letter_topic: String,
    policy: BadRecordPolicy,
    output: Vec<OutRecord>,
    counters: TaskCounters,
    /// Resolved topic → the source node of this task that reads it and the topic's partition
    /// count if known (looked up per record; the count goes to [`RecordMeta::partitions`]).
    sources: FxHashMap<String, (usize, Option<i32>)>,
    /// Per node: a sink's resolved topic and that topic's partition count (for custom
    /// partitioners), resolved once here rather than per record.
    sinks: Vec<Option<(String, Option<i32>)>>,
    /// Per node since the last `take_node_counts`: records handed in, records forwarded.
    node_in: Vec<u64>,
    node_out: Vec<u64>,
    /// What the running processor forwards, reused from record to record (empty between
    /// processor calls).
    forwarded: Vec<(usize, Payload)>,
    /// The records still to run through the graph, reused from record to record (empty
    /// between records).
    queue: VecDeque<(usize, Payload)>,
}

impl std::fmt::Debug for StreamTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamTask")
            .field("id", &self.id)
            .field("stream_time", &self.stream_time)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl StreamTask {
    /// Makes the task's processors and registers its stores in `state` (not yet restored:
    /// restore, then call [`StreamTask::init`]). `topic_partitions`: the partition count of
    /// each resolved topic known (sinks with a partitioner need theirs; a source's reaches its
    /// processors as [`RecordMeta::partitions`]).
    pub(crate) fn new(
        id: TaskId,
        application_id: Arc<str>,
        graph: Arc<Graph>,
        mut state: TaskState,
        dead_letter_topic: String,
        policy: BadRecordPolicy,
        topic_partitions: Arc<HashMap<String, i32>>,
    ) -> Result<Self> {
        let mut processors = Vec::with_capacity(graph.nodes.len());
        let mut stores: Vec<&str> = Vec::new();
        for node in &graph.nodes {
            let own = node.sub_topology == id.sub_topology;
            processors.push(match (&node.kind, own) {
                (NodeKind::Processor { factory }, true) => {
                    stores.extend(node.stores.iter().map(String::as_str));
                    Some(factory())
                }
                _ => None,
            });
        }
        stores.sort_unstable();
        stores.dedup();
        let graph_len = graph.nodes.len();
        let sinks = graph
            .nodes
            .iter()
            .map(|node| match &node.kind {
                NodeKind::Sink { topic, .. } => {
                    let topic = topic.resolve(&application_id);
                    let partitions = topic_partitions.get(&topic).copied();
                    Some((topic, partitions))
                }
                _ => None,
            })
            .collect();
        let mut sources = FxHashMap::default();
        for (i, node) in graph.nodes.iter().enumerate() {
            if let NodeKind::Source { topics, .. } = &node.kind
                && node.sub_topology == id.sub_topology
            {
                for t in topics {
                    let topic = t.resolve(&application_id);
                    let partitions = topic_partitions.get(&topic).copied();
                    sources.insert(topic, (i, partitions));
                }
            }
        }
        for name in stores {
            let Some(spec) = graph.store(name) else {
                continue;
            };
            match spec.kind {
                StoreKind::KeyValue => {
                    state.register_kv(name)?;
                }
                StoreKind::Ttl => {
                    state.register_ttl(name)?;
                }
                StoreKind::Timer => {
                    state.register_timers(name)?;
                }
            }
        }
        Ok(Self {
            id,
            graph,
            processors,
            state,
            schedules: Vec::new(),
            stream_time: i64::MIN,
            committed_clock: (i64::MIN, Vec::new()),
            dead_letter_topic,
            policy,
            output: Vec::new(),
            counters: TaskCounters::default(),
            sources,
            sinks,
            node_in: vec![0; graph_len],
            node_out: vec![0; graph_len],
            forwarded: Vec::new(),
            queue: VecDeque::new(),
        })
    }

    pub fn id(&self) -> TaskId {
        self.id
    }

    pub fn state(&self) -> &TaskState {
        &self.state
    }

    pub fn state_mut(&mut self) -> &mut TaskState {
        &mut self.state
    }

    pub fn into_state(self) -> TaskState {
        self.state
    }

    pub fn counters(&self) -> TaskCounters {
        self.counters
    }

    pub fn stream_time(&self) -> i64 {
        self.stream_time
    }

    /// Runs every processor's `init` (after restore).
    pub(crate) fn init(&mut self, wall_clock: i64) -> Result<()> {
        for node in 0..self.processors.len() {
            let Some(mut processor) = self.processors[node].take() else {
                continue;
            };
            let mut emitted = Vec::new();
            let result = {
                let mut ctx = self.context(node, None, &mut emitted, wall_clock);
                processor.init(&mut ctx)
            };
            self.processors[node] = Some(processor);
            result.map_err(|source| Error::Processor {
                processor: self.graph.node_name(node).to_owned(),
                source,
            })?;
            self.queue.extend(emitted);
            self.run_queue(None, wall_clock)?;
        }
        self.mark_committed();
        Ok(())
    }

    fn context<'a>(
        &'a mut self,
        node: usize,
        meta: Option<&'a RecordMeta>,
        emitted: &'a mut Vec<(usize, Payload)>,
        wall_clock: i64,
    ) -> Context<'a> {
        Context {
            node,
            graph: &self.graph,
            task: self.id,
            state: &mut self.state,
            meta,
            emitted,
            schedules: &mut self.schedules,
            stream_time: self.stream_time,
            wall_clock,
        }
    }

    /// Decodes `raw` with its topic's source and runs it through the graph. Bad records go to
    /// the dead-letter output (or stop the task, per policy); retryable and fatal failures come
    /// back as errors for the thread to handle.
    ///
    /// A record is all or nothing: its store writes (a savepoint in the pending sets, see
    /// [`TaskState::set_savepoint`]), the records it made, the punctuators it scheduled and
    /// the stream time it moved are kept only if every processor took it. A record that cannot
    /// be decoded, or that a processor rejects as bad input anywhere in the graph, leaves
    /// nothing behind but its dead-letter record. (A processor's own fields are its business:
    /// they are not rolled back.)
    pub(crate) fn process(&mut self, raw: &RawRecord, wall_clock: i64) -> Result<()> {
        let Some(&(source, partitions)) = self.sources.get(&*raw.topic) else {
            return Err(Error::Topology(format!(
                "task {} got a record from {:?}, which none of its sources reads",
                self.id, raw.topic
            )));
        };
        self.counters.processed += 1;
        let NodeKind::Source { decode, .. } = &self.graph.nodes[source].kind else {
            unreachable!("position() matched a source");
        };
        let meta = RecordMeta {
            partitions,
            ..raw.meta()
        };
        // A source hands the decoded record to each child; extra children get their own
        // decode rather than requiring Clone of every record type.
        let children = self.graph.children(source).len();
        debug_assert!(self.queue.is_empty());
        // At least one decode, so a source with no children still checks its input.
        for i in 0..children.max(1) {
            match decode(raw) {
                Ok(payload) => {
                    if let Some(&child) = self.graph.children(source).get(i) {
                        self.queue.push_back((child, payload));
                    }
                }
                Err(e) => {
                    self.queue.clear();
                    return self.bad_record(
                        raw,
                        self.graph.node_name(source).to_owned(),
                        e.0,
                        wall_clock,
                    );
                }
            }
        }
        // Decoded: the record counts for stream time, unless the graph rejects it below.
        let before = RecordSavepoint {
            stream_time: self.stream_time,
            output: self.output.len(),
            emitted: self.counters.emitted,
            schedules: self.schedules.len(),
        };
        self.state.set_savepoint();
        self.stream_time = self.stream_time.max(raw.timestamp);
        match self.run_queue(Some(&meta), wall_clock) {
            Ok(()) => self.state.release_savepoint(),
            Err(e) if e.action() == Action::DeadLetter => {
                let (processor, why) = e.blame();
                self.state.rollback_to_savepoint();
                self.output.truncate(before.output);
                self.counters.emitted = before.emitted;
                self.schedules.truncate(before.schedules);
                self.stream_time = before.stream_time;
                return self.bad_record(raw, processor, why, wall_clock);
            }
            Err(e) => {
                // The thread aborts the interval, which drops everything anyway.
                self.state.release_savepoint();
                return Err(e);
            }
        }
        self.punctuate(PunctuationType::StreamTime, self.stream_time, wall_clock)
    }

    fn bad_record(
        &mut self,
        raw: &RawRecord,
        processor: String,
        why: String,
        wall_clock: i64,
    ) -> Result<()> {
        if self.policy == BadRecordPolicy::Stop {
            return Err(Error::Processor {
                processor,
                source: ProcessError::Fatal(format!(
                    "bad record at {}/{}@{} and the policy is to stop: {why}",
                    raw.topic, raw.partition, raw.offset
                )),
            });
        }
        tracing::warn!(
            task = %self.id, topic = %raw.topic, partition = raw.partition, offset = raw.offset,
            processor = %processor, error = %why, "dead-lettering a bad record"
        );
        let record = self.dead_letter(raw, processor, why, wall_clock);
        self.output.push(record);
        Ok(())
    }

    /// The dead-letter copy of input record `raw`: its key, value and headers, plus headers
    /// saying why and where from ([`dlq_headers::for_source`], then [`dlq_headers::TASK`]). Its
    /// timestamp is `wall_clock`, which the broker takes (the original's may be what the broker
    /// refused); the original's is in [`dlq_headers::SOURCE_TIMESTAMP`] (`-1` if it has none).
    pub(crate) fn dead_letter(
        &mut self,
        raw: &RawRecord,
        processor: String,
        why: String,
        wall_clock: i64,
    ) -> OutRecord {
        let mut headers = raw.headers.clone();
        for (name, value) in dlq_headers::for_source(
            &why,
            &raw.topic,
            raw.partition,
            raw.offset,
            raw.timestamp,
            &processor,
        ) {
            headers.insert(name, value);
        }
        headers.insert(dlq_headers::TASK, self.id.to_string());
        self.counters.dead_lettered += 1;
        OutRecord {
            topic: self.dead_letter_topic.clone(),
            partition: None,
            key: raw.key.clone(),
            value: raw.value.clone(),
            timestamp: wall_clock,
            headers,
        }
    }

    /// The bad-record policy (what to do with a record the broker refuses to take, too).
    pub(crate) fn policy(&self) -> BadRecordPolicy {
        self.policy
    }

    /// Runs the queued records through the graph until none is left (or one fails: the queue
    /// is emptied then too).
    fn run_queue(&mut self, meta: Option<&RecordMeta>, wall_clock: i64) -> Result<()> {
        let result = self.run_until_empty(meta, wall_clock);
        if result.is_err() {
            self.queue.clear();
        }
        result
    }

    fn run_until_empty(&mut self, meta: Option<&RecordMeta>, wall_clock: i64) -> Result<()> {
        while let Some((node, payload)) = self.queue.pop_front() {
            self.node_in[node] += 1;
            match &self.graph.nodes[node].kind {
                NodeKind::Sink { encode, .. } => {
                    let Some((topic, partitions)) = &self.sinks[node] else {
                        unreachable!("every sink node has its resolved topic");
                    };
                    let encoded = encode(topic, payload, *partitions).map_err(|e| match e {
                        EncodeFailure::WrongType { expected } => Error::TypeMismatch {
                            node: self.graph.node_name(node).to_owned(),
                            from: self.parent_names(node),
                            expected: expected.to_owned(),
                        },
                        EncodeFailure::UnknownPartitions => Error::Topology(format!(
                            "sink {:?} has a partitioner but the partition count of {topic} is unknown (does the topic exist?)",
                            self.graph.node_name(node)
                        )),
                        EncodeFailure::Serde(e) => Error::Processor {
                            processor: self.graph.node_name(node).to_owned(),
                            source: ProcessError::BadInput(format!(
                                "cannot serialize for {topic}: {e}"
                            )),
                        },
                    })?;
                    self.output.push(OutRecord {
                        topic: topic.clone(),
                        partition: encoded.partition,
                        key: encoded.key,
                        value: encoded.value,
                        timestamp: encoded.timestamp,
                        headers: encoded.headers,
                    });
                    self.counters.emitted += 1;
                }
                NodeKind::Processor { .. } => {
                    let Some(mut processor) = self.processors[node].take() else {
                        return Err(Error::Topology(format!(
                            "{:?} is not part of task {}",
                            self.graph.node_name(node),
                            self.id
                        )));
                    };
                    let mut out = std::mem::take(&mut self.forwarded);
                    let result = {
                        let mut ctx = self.context(node, meta, &mut out, wall_clock);
                        processor.process(&mut ctx, payload)
                    };
                    self.processors[node] = Some(processor);
                    self.node_out[node] += if result.is_ok() { out.len() as u64 } else { 0 };
                    self.queue.extend(out.drain(..));
                    self.forwarded = out;
                    match result {
                        Ok(()) => {}
                        Err(NodeFailure::WrongType { expected }) => {
                            return Err(Error::TypeMismatch {
                                node: self.graph.node_name(node).to_owned(),
                                from: self.parent_names(node),
                                expected: expected.to_owned(),
                            });
                        }
                        Err(NodeFailure::Process(source)) => {
                            return Err(Error::Processor {
                                processor: self.graph.node_name(node).to_owned(),
                                source,
                            });
                        }
                    }
                }
                NodeKind::Source { .. } => {
                    return Err(Error::Topology(format!(
                        "a record was forwarded to source {:?}",
                        self.graph.node_name(node)
                    )));
                }
            }
        }
        Ok(())
    }

    fn parent_names(&self, node: usize) -> String {
        self.graph.nodes[node]
            .parents
            .iter()
            .map(|&p| self.graph.node_name(p))
            .collect::<Vec<_>>()
            .join(" or ")
    }

    /// Whether a wall-clock punctuator is scheduled (the thread then polls at most
    /// `WALL_CLOCK_CHECK` at a time, so it fires on time while the input is idle).
    pub(crate) fn has_wall_clock_punctuators(&self) -> bool {
        self.schedules
            .iter()
            .any(|s| s.kind == PunctuationType::WallClock)
    }

    /// Fires the punctuators of `kind` that are due at `now`.
    pub(crate) fn punctuate(
        &mut self,
        kind: PunctuationType,
        now: i64,
        wall_clock: i64,
    ) -> Result<()> {
        if kind == PunctuationType::StreamTime && now == i64::MIN {
            return Ok(());
        }
        let mut due = Vec::new();
        for (i, s) in self.schedules.iter_mut().enumerate() {
            if s.kind == kind && s.due(now) {
                due.push(i);
            }
        }
        for i in due {
            let (node, name) = (self.schedules[i].node, self.schedules[i].name.clone());
            let Some(mut processor) = self.processors[node].take() else {
                continue;
            };
            let punctuation = Punctuation {
                name,
                kind,
                timestamp: now,
            };
            let mut emitted = Vec::new();
            let result = {
                let mut ctx = self.context(node, None, &mut emitted, wall_clock);
                processor.punctuate(&mut ctx, &punctuation)
            };
            self.processors[node] = Some(processor);
            result.map_err(|source| Error::Processor {
                processor: self.graph.node_name(node).to_owned(),
                source,
            })?;
            self.counters.punctuations += 1;
            self.node_out[node] += emitted.len() as u64;
            self.queue.extend(emitted);
            self.run_queue(None, wall_clock)?;
        }
        Ok(())
    }

    /// Records handed to and forwarded by each node since the last call: (name, in, out).
    pub(crate) fn take_node_counts(&mut self) -> Vec<(&str, u64, u64)> {
        let mut out = Vec::new();
        for (i, node) in self.graph.nodes.iter().enumerate() {
            let (n_in, n_out) = (self.node_in[i], self.node_out[i]);
            if n_in > 0 || n_out > 0 {
                out.push((node.name.as_str(), n_in, n_out));
            }
            self.node_in[i] = 0;
            self.node_out[i] = 0;
        }
        out
    }

    /// Calls every processor's [`close`](crate::Processor::close) (a clean close, after the last
    /// commit). Errors are logged, not raised; store writes and records made in `close` are
    /// dropped.
    pub(crate) fn close_processors(&mut self, wall_clock: i64) {
        for node in 0..self.processors.len() {
            let Some(mut processor) = self.processors[node].take() else {
                continue;
            };
            let mut emitted = Vec::new();
            let result = {
                let mut ctx = self.context(node, None, &mut emitted, wall_clock);
                processor.close(&mut ctx)
            };
            self.processors[node] = Some(processor);
            if let Err(e) = result {
                tracing::warn!(
                    task = %self.id, processor = self.graph.node_name(node), error = %e,
                    "processor close failed"
                );
            }
            if !emitted.is_empty() {
                tracing::warn!(
                    task = %self.id, processor = self.graph.node_name(node), records = emitted.len(),
                    "records forwarded in close are dropped"
                );
            }
        }
        self.output.clear();
        self.state.abort();
    }

    /// Takes the records produced since the last call (outputs, repartition, dead letters).
    pub(crate) fn take_output(&mut self) -> Vec<OutRecord> {
        std::mem::take(&mut self.output)
    }

    /// Like [`take_output`](Self::take_output), into `into` (emptied first), leaving `into`'s
    /// old buffer to the task: with two buffers swapped per record, neither is reallocated.
    pub(crate) fn swap_output(&mut self, into: &mut Vec<OutRecord>) {
        into.clear();
        std::mem::swap(&mut self.output, into);
    }

    /// The transaction aborted: drop unsent output and pending store writes, and roll stream
    /// time and the punctuation schedule back to the last commit.
    pub(crate) fn abort(&mut self) {
        self.output.clear();
        self.state.abort();
        self.stream_time = self.committed_clock.0;
        self.schedules.clone_from(&self.committed_clock.1);
    }

    /// The interval committed: stream time and the schedule as they are now are what an abort
    /// rolls back to.
    pub(crate) fn mark_committed(&mut self) {
        self.committed_clock = (self.stream_time, self.schedules.clone());
    }

    /// Stream time as committed with the input offsets (the offsets' metadata, see
    /// [`stream_time_metadata`]) by the task's last owner: after `init`, so stream-time
    /// punctuators keep their grid across restarts and moves instead of starting over at the
    /// next record.
    pub(crate) fn resume_stream_time(&mut self, stream_time: i64) {
        if stream_time > self.stream_time {
            self.stream_time = stream_time;
            for s in &mut self.schedules {
                if s.kind == PunctuationType::StreamTime && s.next.is_none() {
                    s.due(stream_time);
                }
            }
        }
        self.mark_committed();
    }
}

/// The committed offsets' metadata carrying a task's stream time (Kafka Streams keeps it there
/// too): `keel:st=<ms>`.
pub(crate) fn stream_time_metadata(stream_time: i64) -> String {
    format!("keel:st={stream_time}")
}

/// The stream time in committed offset metadata written by [`stream_time_metadata`].
pub(crate) fn parse_stream_time_metadata(metadata: &str) -> Option<i64> {
    metadata.strip_prefix("keel:st=")?.parse().ok()
}

/// Dead-letter headers as a map (for tests and tools).
pub fn dead_letter_reason(headers: &Headers) -> Option<&str> {
    headers.get_str(dlq_headers::ERROR)
}
