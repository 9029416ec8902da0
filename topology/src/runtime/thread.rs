//! A stream thread: one consumer in the application's group, one producer (transactional under
//! exactly-once), the tasks of the partitions it owns, and the poll → process → commit loop.
//!
//! Exactly-once, per commit interval: `begin_transaction`; each polled record runs through its
//! task and what the task produced is sent; at commit, every task's changelog records are sent
//! to `<app>-<store>-changelog` (partition = the task's), the input positions go to
//! `send_offsets_to_transaction`, the producer is flushed (delivery reports give the changelog
//! offsets) and the transaction commits; only then do the stores apply their pending writes
//! and remember those offsets. Any failure before that point aborts: the tasks drop their
//! pending writes and output, and the consumer seeks back to the last committed offsets, so
//! the interval is replayed as if it never ran.
//!
//! **The commit point** is `commit_transaction` returning Ok. After it, nothing may abort or
//! rewind (the interval would be processed twice): the committed positions are recorded first,
//! and a store that cannot apply its writes is retried, then its task is closed dirty and set
//! up again, restoring from the changelog that holds the interval
//! ([`tasks::apply_committed`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keel_state::{CommittedReader, Guarantee, StoreEnv};
use rdkafka::client::ClientContext;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers as _, Message};
use rdkafka::producer::{Producer as _, PurgeConfig};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::StreamsConfig;
use crate::error::{Action, Error, ProcessError, Result, is_fenced};
use crate::metrics::Metrics;
use crate::processor::PunctuationType;
use crate::record::{Headers, RawRecord};
use crate::runtime::faults::{self, TxnAction};
use crate::runtime::kafka::{self, DeliveryLog, Producer};
use crate::runtime::{restore, tasks};
use crate::task::{self, BadRecordPolicy, StreamTask};
use crate::topology::{TaskId, Topology};

const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);
/// How often store sizes and consumer lag are sampled (each costs a broker round trip).
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// How often wall-clock punctuators are checked (the resolution of wall-clock punctuation).
const WALL_CLOCK_CHECK: Duration = Duration::from_millis(10);

/// Read access to the committed contents of the stores this process owns, by (store, partition).
pub(crate) type Readers = Arc<RwLock<HashMap<(String, i32), CommittedReader>>>;

/// What every thread of an instance shares.
pub(crate) struct Shared {
    pub(crate) config: StreamsConfig,
    pub(crate) topology: Topology,
    pub(crate) env: StoreEnv,
    pub(crate) metrics: Metrics,
    pub(crate) shutdown: Arc<AtomicBool>,
    pub(crate) readers: Readers,
    /// Resolved source topic → the sub-topology that reads it.
    pub(crate) topic_subs: HashMap<String, usize>,
    /// `config.dead_letter_topic()`, resolved once.
    pub(crate) dead_letter_topic: String,
    /// Partition counts of the source and (existing) sink topics.
    pub(crate) topic_partitions: Arc<HashMap<String, i32>>,
    /// Input records whose output the broker refused; kept across thread restarts.
    pub(crate) poisoned: Mutex<Poisoned>,
}

/// Input records whose output the broker refused (see [`Core::delivery_failed`]).
#[derive(Debug, Default)]
pub(crate) struct Poisoned {
    /// Culprits, with why: on the replay they are dead-lettered instead of processed (or stop
    /// the application, per `on_bad_record`).
    refused: HashMap<(Arc<str>, i32, i64), Refused>,
    /// Input records whose output was in a batch the broker refused (it refuses the whole
    /// batch for one record): each is replayed in a transaction of its own, so the culprit is
    /// the only record of the transaction that fails.
    suspects: HashSet<(Arc<str>, i32, i64)>,
}

fn poisoned(shared: &Shared) -> MutexGuard<'_, Poisoned> {
    shared
        .poisoned
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Everything but the consumer; the rebalance callback reaches it through the consumer's
/// context (the callback runs inside `poll`, on this thread, while the loop holds no lock).
struct Core {
    index: usize,
    shared: Arc<Shared>,
    producer: Producer,
    restore: RestoreConsumer,
    tasks: BTreeMap<TaskId, StreamTask>,
    /// Tasks set up but still restoring their stores (`restore.rs`): their input partitions
    /// are paused on the group consumer, and each loop turn restores a slice of them.
    restoring: BTreeMap<TaskId, restore::Restoring>,
    /// Next offset to consume per owned input partition, as processed in this interval.
    positions: HashMap<(Arc<str>, i32), i64>,
    /// Per input topic: the records-in counter and the record-age histogram (label lookups
    /// hash, so they are resolved once, not per record).
    topic_metrics: HashMap<Arc<str>, (prometheus::IntCounter, prometheus::Histogram)>,
    /// When wall-clock punctuators were last checked.
    last_wall_check: Instant,
    /// Last committed position per owned input partition (`None`: nothing committed yet).
    committed: HashMap<(String, i32), Option<i64>>,
    /// Partitions assigned by the last rebalance whose tasks are not set up yet.
    pending_assign: Vec<(String, i32)>,
    /// Tasks whose local state RocksDB reported corrupt during this turn: after the abort they
    /// are closed, wiped and set up again from the changelog.
    corrupt: Vec<TaskId>,
    /// The producer returned a fatal transactional error (or kept timing out): the thread must
    /// restart with a new producer instead of aborting.
    producer_fatal: bool,
    /// Why the application must stop (a duplicate instance, a fatal consumer error): no
    /// restart can cure it.
    stop: Option<String>,
    /// A record polled but not processed yet: commits before it stop at its offset.
    unprocessed: Option<(String, i32, i64)>,
    /// The input record behind each output sent in this interval (the delivery tag is the
    /// index + 1), so a refused output names the input to dead-letter.
    origins: Vec<(Arc<str>, i32, i64)>,
    txn_open: bool,
    dirty: bool,
    last_commit: Instant,
    /// When store sizes and consumer lag were last sampled.
    last_sample: Instant,
    /// An error raised inside the rebalance callback, surfaced by the loop.
    failure: Option<Error>,
}

struct ThreadContext {
    core: Arc<Mutex<Core>>,
}

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

fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    core.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

type GroupConsumer = BaseConsumer<ThreadContext>;
pub(crate) type RestoreConsumer = BaseConsumer<kafka::QuietEof>;

/// Runs one stream thread until shutdown or an error it cannot recover from in place.
pub(crate) fn run(index: usize, shared: Arc<Shared>) -> Result<()> {
    let config = &shared.config;
    let eos = config.processing_guarantee == Guarantee::ExactlyOnce;
    let instance = config.instance_id();

    let pc = kafka::producer_config(config, &instance, index);
    let producer = Producer::from_config_and_context(&pc, DeliveryLog::default())
        .map_err(Error::kafka("creating the producer"))?;
    if eos {
        // Also aborts whatever an earlier incarnation of this thread left open.
        producer
            .init_transactions(KAFKA_TIMEOUT)
            .map_err(Error::kafka("init_transactions"))?;
    }

    let mut rc = kafka::client_config(config, kafka::Role::Consumer);
    rc.set("group.id", format!("{}-restore", config.application_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "10")
        .set("max.partition.fetch.bytes", "16777216")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest");
    let restore = RestoreConsumer::from_config_and_context(&rc, kafka::QuietEof)
        .map_err(Error::kafka("creating the restore consumer"))?;

    let core = Arc::new(Mutex::new(Core {
        index,
        shared: shared.clone(),
        producer,
        restore,
        tasks: BTreeMap::new(),
        restoring: BTreeMap::new(),
        positions: HashMap::new(),
        topic_metrics: HashMap::new(),
        last_wall_check: Instant::now(),
        committed: HashMap::new(),
        pending_assign: Vec::new(),
        corrupt: Vec::new(),
        producer_fatal: false,
        stop: None,
        unprocessed: None,
        origins: Vec::new(),
        txn_open: false,
        dirty: false,
        last_commit: Instant::now(),
        last_sample: Instant::now(),
        failure: None,
    }));

    let mut cc = kafka::client_config(config, kafka::Role::Consumer);
    cc.set("group.id", &config.application_id)
        .set(
            "client.id",
            super::owners::client_id(&config.application_id, &instance, index),
        )
        .set("group.instance.id", format!("{instance}-{index}"))
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "isolation.level",
            if eos {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        );
    if !config.client.contains_key("session.timeout.ms")
        && !config.consumer.contains_key("session.timeout.ms")
    {
        cc.set("session.timeout.ms", "10000");
    }
    if !config.client.contains_key("statistics.interval.ms")
        && !config.consumer.contains_key("statistics.interval.ms")
    {
        // Feeds the consumer-lag gauge (`ThreadContext::stats`).
        cc.set("statistics.interval.ms", "5000");
    }
    let consumer =
        GroupConsumer::from_config_and_context(&cc, ThreadContext { core: core.clone() })
            .map_err(Error::kafka("creating the consumer"))?;
    let topics = shared.topology.source_topics(&config.application_id);
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topic_refs)
        .map_err(Error::kafka("subscribing"))?;
    tracing::info!(thread = index, ?topics, "stream thread started");

    let result = run_loop(&consumer, &core);
    let mut c = lock(&core);
    let closed = c.close_all(&consumer, result.is_ok());
    drop(c);
    drop(consumer);
    result.and(closed)
}

fn run_loop(consumer: &GroupConsumer, core: &Mutex<Core>) -> Result<()> {
    let shared = lock(core).shared.clone();
    let interval = shared.config.commit_interval();
    let mut backoff = Duration::from_millis(shared.config.retry_backoff_ms);
    let max_backoff = Duration::from_millis(shared.config.retry_backoff_max_ms);
    // While tasks restore, the poll only keeps the member alive and serves callbacks: no wait.
    let mut poll_wait = Duration::from_millis(50);
    while !shared.shutdown.load(Ordering::Relaxed) {
        let polled = consumer.poll(poll_wait);
        let mut c = lock(core);
        if let Some(e) = c.failure.take() {
            return Err(e);
        }
        let mut step = c.step(consumer, polled, interval);
        poll_wait = if c.restoring.is_empty() {
            Duration::from_millis(50)
        } else {
            Duration::ZERO
        };
        if step.is_err() {
            // Serve the delivery reports still in flight: one may be the cause.
            let deadline = Instant::now() + Duration::from_secs(5);
            while c.producer.in_flight_count() > 0 && Instant::now() < deadline {
                c.producer.poll(Duration::from_millis(10));
            }
        }
        if step.is_err()
            && let Some(failure) = c.producer.context().take_failure()
        {
            // A failed delivery puts the transaction in error, so a later call (a send, the
            // commit) fails for it: the delivery failure is the cause to handle.
            step = Err(c.delivery_failed(failure));
        }
        if step.is_err() && !c.corrupt.is_empty() {
            // Local state that cannot be trusted: the interval aborts, the task is closed,
            // wiped and restored from the changelog, and processing goes on.
            c.abort(consumer, "corrupt local state")?;
            for id in std::mem::take(&mut c.corrupt) {
                c.close_for_restore(id, true);
            }
            continue;
        }
        if step.is_err()
            && let Some(reason) = c.stop.take()
        {
            return Err(Error::ThreadStopped {
                thread: c.index,
                reason,
            });
        }
        if let Err(e) = &step
            && c.producer_fatal
        {
            tracing::error!(thread = c.index, error = %e, "fatal producer error; restarting the thread");
            return step;
        }
        match step {
            Ok(()) => backoff = Duration::from_millis(shared.config.retry_backoff_ms),
            Err(e) if e.action() == Action::AbortAndRetry => {
                tracing::warn!(thread = c.index, error = %e, ?backoff, "aborting and retrying");
                c.abort(consumer, "retryable")?;
                drop(c);
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(max_backoff);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

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

/// An input record whose output the broker refused.
#[derive(Debug)]
struct Refused {
    /// The topic that refused it.
    topic: String,
    reason: String,
    /// Whether its dead-letter copy was sent (refused again: stop).
    dead_lettered: bool,
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
    fn eos(&self) -> bool {
        self.shared.config.processing_guarantee == Guarantee::ExactlyOnce
    }

    /// One loop turn: set up newly assigned tasks, process the polled record, punctuate on the
    /// wall clock, commit when the interval is up.
    fn step(
        &mut self,
        consumer: &GroupConsumer,
        polled: Option<std::result::Result<rdkafka::message::BorrowedMessage<'_>, KafkaError>>,
        interval: Duration,
    ) -> Result<()> {
        if !self.pending_assign.is_empty()
            && let Err(e) = self.set_up_assigned(consumer)
        {
            // The polled record was not processed: hand it back. (The abort's rewind covers
            // partitions with a known committed offset, but not one whose offsets could not be
            // read yet.)
            if let Some(Ok(m)) = &polled
                && let Err(seek) = consumer.seek(
                    m.topic(),
                    m.partition(),
                    Offset::Offset(m.offset()),
                    KAFKA_TIMEOUT,
                )
            {
                tracing::warn!(thread = self.index, error = %seek, "could not seek back to the unprocessed record");
            }
            return Err(e);
        }
        // Decided before the slice: a task that finishes restoring in it seeks its partitions
        // back to the committed offsets, which fetches this record again.
        let held_back =
            matches!(&polled, Some(Ok(m)) if self.is_restoring(m.topic(), m.partition()));
        self.restore_slice(consumer)?;
        match polled {
            Some(Ok(_)) if held_back => {
                // Fetched before its partition was paused: the seek when the task starts
                // running (`restore_slice`) fetches it again.
            }
            Some(Ok(m)) => {
                let raw = to_raw(&m);
                let suspect = poisoned(&self.shared).suspects.contains(&(
                    raw.topic.clone(),
                    raw.partition,
                    raw.offset,
                ));
                if suspect {
                    // Alone in its transaction: commit what came before, then it. (The
                    // consumer's position is already past it: the commit must not be.)
                    self.unprocessed = Some((raw.topic.to_string(), raw.partition, raw.offset));
                    let before = self.commit(consumer);
                    self.unprocessed = None;
                    before?;
                }
                self.process(raw)?;
                if suspect {
                    self.commit(consumer)?;
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => {
                // librdkafka reports a fatal consumer error once, as an event; after it the
                // consumer is unusable. Static membership makes a second instance with the
                // same instance id fence this one (FencedInstanceId): a restart here would
                // fence it back, forever, so the application stops and says why.
                if let Some((code, reason)) = consumer.client().fatal_error() {
                    let instance = self.shared.config.instance_id();
                    return Err(self.stop_with(if code == RDKafkaErrorCode::FencedInstanceId {
                        format!(
                            "another instance joined the group with group.instance.id {instance}-{} (two instances started with instance_id {instance:?}?): {reason}",
                            self.index
                        )
                    } else {
                        format!("the consumer failed fatally ({code:?}): {reason}")
                    }));
                }
                tracing::warn!(thread = self.index, error = %e, "consumer error");
            }
        }
        self.punctuate_wall_clock()?;
        if self.last_commit.elapsed() >= interval {
            self.commit(consumer)?;
        }
        Ok(())
    }

    /// One call of librdkafka's transactional API, handled as librdkafka documents for each
    /// call: a retriable error (a timeout: the operation goes on in the background) calls the
    /// same function again, with backoff, for up to the transaction timeout (then the producer
    /// is given up, as fatal); an error that requires an abort comes back for the loop to
    /// abort and replay; a fatal one (fenced) marks the producer unusable, so the thread
    /// restarts with a new one (whose `init_transactions` fences this one's transaction) and
    /// restores its tasks from the changelogs. Never abort after a timed-out
    /// `commit_transaction`: the commit may complete in the background, and the replay would
    /// then be a second copy of the interval.
    fn txn_call(
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
                    tracing::error!(thread = self.index, error = %error, ?action, "{what} failed; this producer cannot go on");
                    self.producer_fatal = true;
                    if is_fenced(&error) {
                        // Transactional ids are <app>-<instance>-<thread>: only a process with
                        // the same instance id fences this producer. Restarting would fence it
                        // back (and so on): stop.
                        let instance = self.shared.config.instance_id();
                        return Err(self.stop_with(format!(
                            "{what}: this producer was fenced by another with transactional.id {}-{instance}-{}: another instance runs with instance_id {instance:?}: {error}",
                            self.shared.config.application_id, self.index
                        )));
                    }
                    return Err(Error::Kafka {
                        context,
                        source: error,
                    });
                }
            }
        }
    }

    fn begin(&mut self) -> Result<()> {
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

    fn process(&mut self, raw: RawRecord) -> Result<()> {
        let Some(&sub) = self.shared.topic_subs.get(&*raw.topic) else {
            return Err(Error::Topology(format!(
                "no sub-topology reads {:?}",
                raw.topic
            )));
        };
        let id = TaskId {
            sub_topology: sub,
            partition: raw.partition,
        };
        self.begin()?;
        let started = Instant::now();
        let wall = now_ms();
        let task = self.tasks.get_mut(&id).ok_or_else(|| {
            Error::Topology(format!(
                "record from {}/{} but task {id} is not set up",
                raw.topic, raw.partition
            ))
        })?;
        let coordinates = (raw.topic.clone(), raw.partition, raw.offset);
        let shared = self.shared.clone();
        let mut poison = poisoned(&shared);
        let output = if let Some(refused) = poison.refused.get_mut(&coordinates) {
            // Its output was refused in an earlier (aborted) try: the record leaves no trace
            // but its dead-letter copy, or the application stops, as for bad input.
            if task.policy() == BadRecordPolicy::Stop || refused.dead_lettered {
                return Err(Error::Processor {
                    processor: format!("sink to {}", refused.topic),
                    source: ProcessError::Fatal(format!(
                        "the broker refused {} from input {}/{}@{}: {}{}",
                        if refused.dead_lettered {
                            "the dead-letter copy of the output"
                        } else {
                            "the output"
                        },
                        raw.topic,
                        raw.partition,
                        raw.offset,
                        refused.reason,
                        if refused.dead_lettered {
                            ""
                        } else {
                            " (on_bad_record = stop)"
                        }
                    )),
                });
            }
            refused.dead_lettered = true;
            tracing::warn!(
                task = %id, topic = %raw.topic, partition = raw.partition, offset = raw.offset,
                output = %refused.topic, error = %refused.reason,
                "the broker refused this record's output; dead-lettering the record"
            );
            vec![task.dead_letter(
                &raw,
                format!("sink to {}", refused.topic),
                format!("output refused by the broker: {}", refused.reason),
                wall,
            )]
        } else {
            drop(poison);
            if let Err(e) = task.process(&raw, wall) {
                let e = e.in_task(id);
                if e.action() == Action::RestoreTask {
                    self.corrupt.push(id);
                }
                return Err(e);
            }
            task.take_output()
        };
        let metrics = &self.shared.metrics;
        let (records_in, age) = self
            .topic_metrics
            .entry(raw.topic.clone())
            .or_insert_with(|| {
                (
                    metrics.records_in.with_label_values(&[&raw.topic]),
                    metrics.end_to_end.with_label_values(&[&raw.topic]),
                )
            });
        records_in.inc();
        if raw.timestamp > 0 {
            age.observe((wall - raw.timestamp).max(0) as f64 / 1000.0);
        }
        metrics
            .process_latency
            .observe(started.elapsed().as_secs_f64());
        self.origins.push(coordinates);
        let origin = self.origins.len();
        self.send_all(&output, origin)?;
        self.positions
            .insert((raw.topic.clone(), raw.partition), raw.offset + 1);
        self.dirty = true;
        Ok(())
    }

    /// Sends `output`, tagged with `origin` (the index + 1 in `origins` of the input record it
    /// came from; 0 for punctuation output).
    fn send_all(&mut self, output: &[crate::record::OutRecord], origin: usize) -> Result<()> {
        for out in output {
            kafka::send_from(&self.producer, out, origin)?;
            if out.topic == self.shared.dead_letter_topic {
                let source = out
                    .headers
                    .get_str(task::dlq_headers::SOURCE_TOPIC)
                    .unwrap_or("?");
                self.shared
                    .metrics
                    .dead_letters
                    .with_label_values(&[source])
                    .inc();
            } else {
                self.shared
                    .metrics
                    .records_out
                    .with_label_values(&[&out.topic])
                    .inc();
            }
        }
        if !output.is_empty() {
            self.dirty = true;
        }
        Ok(())
    }

    fn punctuate_wall_clock(&mut self) -> Result<()> {
        if self.tasks.is_empty() || self.last_wall_check.elapsed() < WALL_CLOCK_CHECK {
            return Ok(());
        }
        self.last_wall_check = Instant::now();
        self.begin()?;
        let now = now_ms();
        let mut output = Vec::new();
        for (id, task) in self.tasks.iter_mut() {
            if let Err(e) = task.punctuate(PunctuationType::WallClock, now, now) {
                let e = e.in_task(*id);
                if e.action() == Action::RestoreTask {
                    self.corrupt.push(*id);
                }
                return Err(e);
            }
            output.extend(task.take_output());
        }
        self.send_all(&output, 0)?;
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    /// Commits the open transaction (or, under at-least-once, flushes and commits offsets).
    fn commit(&mut self, consumer: &GroupConsumer) -> Result<()> {
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
        let env = &self.shared.env;
        let mut changelog_owner: HashMap<(String, i32), (TaskId, String)> = HashMap::new();
        for (id, task) in self.tasks.iter_mut() {
            for record in task.state_mut().take_changelog() {
                let topic = env.changelog_topic(&record.store);
                changelog_owner
                    .entry((topic.clone(), id.partition))
                    .or_insert((*id, record.store.to_string()));
                kafka::send(
                    &self.producer,
                    &crate::record::OutRecord {
                        topic,
                        partition: Some(id.partition),
                        key: Some(record.key),
                        value: record.value,
                        timestamp: now_ms(),
                        headers: Headers::default(),
                    },
                )?;
            }
        }
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
            flushed_ms = flushed.as_millis() as u64,
            committed_ms = started.elapsed().as_millis() as u64,
            "committed"
        );
        // Committed: the stores may now apply what they held back.
        let delivered = self.producer.context().take_offsets();
        let mut per_task: BTreeMap<TaskId, Vec<(String, i64)>> = BTreeMap::new();
        for (key, offset) in delivered {
            if let Some((id, store)) = changelog_owner.get(&key) {
                per_task
                    .entry(*id)
                    .or_default()
                    .push((store.clone(), offset));
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
        let mut poison = poisoned(&self.shared);
        poison.refused.retain(|k, _| pending(k));
        poison.suspects.retain(pending);
        drop(poison);
        for (tp, offset) in to_commit {
            self.committed.insert(tp, Some(offset));
        }
        self.dirty = false;
        if let Some(e) = bug {
            // A contract violation (not the disk): the task is closed; stop rather than loop.
            return Err(e.into());
        }
        self.last_commit = Instant::now();
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

    /// Marks the thread for a stop (not a restart) with `reason`, and returns the error that
    /// carries it.
    fn stop_with(&mut self, reason: String) -> Error {
        tracing::error!(thread = self.index, %reason, "stopping the application");
        self.stop = Some(reason.clone());
        Error::ThreadStopped {
            thread: self.index,
            reason,
        }
    }

    /// A record that could not be delivered. A transient failure aborts and replays the
    /// interval. A record the broker refused for what it is (too large, a timestamp outside the
    /// topic's window) would be refused on every replay: its input record is remembered, the
    /// interval aborts, and the replay dead-letters that input instead of processing it
    /// (`on_bad_record = stop`: the application stops with the reason). A refused record with
    /// no input behind it (punctuation output, a changelog record) stops the application.
    fn delivery_failed(&mut self, failure: kafka::DeliveryFailure) -> Error {
        let origin = |tag: usize| {
            tag.checked_sub(1)
                .and_then(|i| self.origins.get(i))
                .cloned()
        };
        let mut suspects: Vec<(Arc<str>, i32, i64)> = self
            .producer
            .context()
            .take_refused_origins()
            .into_iter()
            .filter_map(origin)
            .collect();
        suspects.sort();
        suspects.dedup();
        let input = origin(failure.origin);
        match (failure.refused(), input) {
            (true, Some(_)) if suspects.len() > 1 => {
                tracing::warn!(thread = self.index, error = %failure, suspects = suspects.len(), "the broker refused a batch of outputs; replaying each of their inputs in a transaction of its own to find the one it refuses");
                poisoned(&self.shared).suspects.extend(suspects);
                // A refused batch leaves the idempotent producer's sequence numbers behind the
                // broker's: a new producer (thread restart) starts clean.
                self.producer_fatal = true;
                Error::Refused {
                    context: failure.to_string(),
                }
            }
            (true, Some(coordinates)) => {
                let coordinates = suspects.pop().unwrap_or(coordinates);
                self.producer_fatal = true;
                let shared = self.shared.clone();
                let mut poison = poisoned(&shared);
                poison.suspects.remove(&coordinates);
                tracing::warn!(thread = self.index, error = %failure, input = ?coordinates, "the broker refused an output; the interval is replayed without it");
                let entry = poison.refused.entry(coordinates).or_insert(Refused {
                    topic: failure.topic.clone(),
                    reason: failure.error.to_string(),
                    dead_lettered: false,
                });
                if entry.dead_lettered {
                    // The dead-letter copy itself was refused: the replay stops (see `process`).
                    tracing::error!(thread = self.index, error = %failure, "the dead-letter copy was refused too");
                }
                Error::Refused {
                    context: failure.to_string(),
                }
            }
            (true, None) => Error::Processor {
                processor: format!("sink to {}", failure.topic),
                source: ProcessError::Fatal(format!(
                    "the broker refused a record that no input record produced (punctuation output or a changelog record), so there is nothing to dead-letter: {failure}"
                )),
            },
            (false, _) => Error::Transient {
                context: failure.to_string(),
            },
        }
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
    /// application never sees.
    fn committable_positions(&self, consumer: &GroupConsumer) -> HashMap<(String, i32), i64> {
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
            let tp = (e.topic().to_owned(), e.partition());
            let Some(committed) = self.committed.get(&tp).copied() else {
                continue;
            };
            // A restoring task processed nothing: a record fetched before the pause moved
            // the consumer's position past what the task has seen.
            if self.is_restoring(&tp.0, tp.1) {
                continue;
            }
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

    /// Tasks whose committed interval could not be applied: closes each dirty (no checkpoint,
    /// so its stores restore from the changelog, which holds the interval) and queues its
    /// partitions for set-up again; corrupt local state is wiped first. Returns the first
    /// error whose action is to stop (a bug).
    fn restore_from_changelog(
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
    fn close_for_restore(&mut self, id: TaskId, wipe: bool) {
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

    /// Per-processor record counts since the last commit, into the metrics.
    fn export_counts(&mut self) {
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
    fn sample(&mut self, consumer: &GroupConsumer) {
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

    /// Drops the interval's work: aborts the transaction, discards pending store writes and
    /// unsent output, and seeks every owned partition back to its last committed offset.
    fn abort(&mut self, consumer: &GroupConsumer, reason: &str) -> Result<()> {
        if self.eos() && self.txn_open {
            abort_transaction(&self.producer)?;
        }
        self.txn_open = false;
        self.producer.context().clear();
        self.origins.clear();
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

    fn rewind(&mut self, consumer: &GroupConsumer) -> Result<()> {
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

    /// Creates, restores and initialises the tasks of newly assigned partitions.
    ///
    /// The assignment stays pending until every one of its tasks is set up: if reading the
    /// committed offsets, taking a task's lock or restoring fails (a broker hiccup), the error
    /// aborts this turn and the next turn sets up what is left, so a failure only delays the
    /// tasks. Tasks set up before the failure stay.
    fn set_up_assigned(&mut self, consumer: &GroupConsumer) -> Result<()> {
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

    /// Whether the task reading `topic`/`partition` is still restoring.
    fn is_restoring(&self, topic: &str, partition: i32) -> bool {
        self.shared.topic_subs.get(topic).is_some_and(|&sub| {
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
    fn restore_slice(&mut self, consumer: &GroupConsumer) -> Result<()> {
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
    fn resume(&mut self, consumer: &GroupConsumer, partitions: &[(String, i32)]) -> Result<()> {
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

    /// Opens task `id`'s state (its restore and `init` follow in `restore_slice`). Local state
    /// that RocksDB reports corrupt (a store that does not open) is wiped and the task opened
    /// again, to restore from the changelog alone.
    fn open_task(&mut self, id: TaskId) -> Result<StreamTask> {
        match self.try_open_task(id) {
            Err(e) if e.action() == Action::RestoreTask => {
                tracing::warn!(thread = self.index, task = %id, error = %e, "local state is corrupt; wiping it and restoring from the changelog");
                self.shared.env.remove_task_state(&id.to_string())?;
                self.try_open_task(id)
            }
            other => other,
        }
    }

    fn try_open_task(&mut self, id: TaskId) -> Result<StreamTask> {
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

    /// Partitions are leaving: commit what was done, then close their tasks cleanly (or, when
    /// the assignment was lost, abort and close them without a checkpoint).
    fn on_revoke(
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

    /// Closes one task: its readers go (only its own: other tasks of the partition keep
    /// theirs); on a clean close its processors' `close` runs and its stores checkpoint.
    fn close_task(&mut self, mut task: StreamTask, clean: bool) {
        let id = task.id();
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
    fn close_all(&mut self, consumer: &GroupConsumer, clean: bool) -> Result<()> {
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
fn close_restoring(r: restore::Restoring, clean: bool) {
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

fn to_raw(m: &rdkafka::message::BorrowedMessage<'_>) -> RawRecord {
    let mut headers = Headers::default();
    if let Some(h) = m.headers() {
        for header in h.iter() {
            match header.value {
                Some(value) => headers.insert(header.key, value),
                None => headers.insert_null(header.key),
            }
        }
    }
    RawRecord {
        topic: m.topic().into(),
        partition: m.partition(),
        offset: m.offset(),
        timestamp: m.timestamp().to_millis().unwrap_or(0),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        headers,
    }
}
