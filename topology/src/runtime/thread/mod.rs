//! A stream thread: one consumer in the application's group, one producer (transactional under
//! exactly-once), the tasks of the partitions it owns, and the poll → process → commit loop.
//!
//! Exactly-once, per commit interval: `begin_transaction`; each polled record runs through its
//! task, and what the task produced and the changelog records of the store writes it made
//! (to `<app>-<store>-changelog`, partition = the task's) are sent into the open transaction
//! at once, while the stores keep those writes pending; at commit, whatever changelog records
//! are left are sent, the input positions go to `send_offsets_to_transaction`, the producer
//! is flushed (only the tail is still in flight; delivery reports give the changelog offsets)
//! and the transaction commits; only then do the stores apply their pending writes and
//! remember those offsets. Any failure before that point aborts: the tasks drop their
//! pending writes and output, and the consumer seeks back to the last committed offsets, so
//! the interval is replayed as if it never ran.
//!
//! **The commit point** is `commit_transaction` returning Ok. After it, nothing may abort or
//! rewind (the interval would be processed twice): the committed positions are recorded first,
//! and a store that cannot apply its writes is retried, then its task is closed dirty and set
//! up again, restoring from the changelog that holds the interval
//! ([`tasks::apply_committed`](crate::runtime::tasks::apply_committed)).
//!
//! Layout (each file one job; all of them are `impl Core` blocks over the [`Core`] below):
//! - this file: the thread's state ([`Shared`], [`Core`]), [`run`] and the loop: poll, then one
//!   [`Core::step`] per turn (set up assigned tasks, restore a slice, process, punctuate, commit
//!   when the interval is up), and what a failed turn leads to (abort and retry, restore a
//!   corrupt task, restart the thread, stop the application).
//! - [`clients`]: building the thread's producer, restore consumer and group consumer.
//! - [`process`]: one input record through its task, the wall-clock punctuators, sending their
//!   output into the open transaction.
//! - [`txn`]: the transaction protocol — begin, librdkafka's per-call error handling, the
//!   commit path up to and past the commit point, abort and rewind.
//! - [`dead_letter`]: outputs the broker refuses — finding the input behind them and
//!   dead-lettering it on the replay.
//! - [`assignment`]: the rebalance callbacks, setting up assigned tasks, restoring them a slice
//!   at a time, revocation.
//! - [`lifecycle`]: opening and closing tasks, and closing a task dirty to restore it.
//! - [`metrics`]: the consumer-lag gauge from librdkafka's statistics, per-processor counts and
//!   store sizes.

mod assignment;
mod clients;
mod dead_letter;
mod lifecycle;
mod metrics;
mod process;
mod txn;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keel_state::{CommittedReader, Guarantee, StoreEnv};
use prometheus::local::{LocalHistogram, LocalIntCounter};
use rdkafka::Offset;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::Producer as _;
use rdkafka::types::RDKafkaErrorCode;
use rustc_hash::FxHashMap;

pub(crate) use self::dead_letter::PoisonLedger;
use self::process::to_raw;
use crate::config::StreamsConfig;
use crate::error::{Action, Error, Result};
use crate::metrics::Metrics;
use crate::runtime::kafka::{self, Producer};
use crate::runtime::restore;
use crate::task::StreamTask;
use crate::topology::{TaskId, Topology};

const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);
/// How often store sizes and consumer lag are sampled (each costs a broker round trip).
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// How often wall-clock punctuators are checked (the resolution of wall-clock punctuation).
const WALL_CLOCK_CHECK: Duration = Duration::from_millis(10);
/// How long a poll waits for input when the thread has nothing else to do.
const IDLE_POLL: Duration = Duration::from_millis(50);

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
    /// Resolved source topic → the sub-topology that reads it (looked up per record: FxHash).
    pub(crate) topic_subs: FxHashMap<String, usize>,
    /// `config.dead_letter_topic()`, resolved once.
    pub(crate) dead_letter_topic: String,
    /// Partition counts of the source and (existing) sink topics.
    pub(crate) topic_partitions: Arc<HashMap<String, i32>>,
    /// Input records whose output the broker refused; kept across thread restarts.
    pub(crate) poisoned: PoisonLedger,
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
    /// (The maps touched per record hash with FxHash: their keys are the thread's own topic
    /// names and partitions, and SipHash was ~5 % of the thread's time in the engine profile.)
    positions: FxHashMap<(Arc<str>, i32), i64>,
    /// Per input topic: the records-in counter and the record-age histogram (label lookups
    /// hash, so they are resolved once, not per record). Thread-local copies (prometheus'
    /// `local()`): a record costs no atomic operations for them; they reach the registry at
    /// each commit ([`Core::export_counts`]), so a scrape sees them one commit interval late.
    topic_metrics: FxHashMap<Arc<str>, (LocalIntCounter, LocalHistogram)>,
    /// The per-record processing time, thread-local like `topic_metrics`.
    process_latency: LocalHistogram,
    /// Per output topic: the records-out counter (resolved once, like `topic_metrics`).
    records_out: FxHashMap<String, LocalIntCounter>,
    /// Per source topic: the dead-letter counter, thread-local like `records_out`, but an
    /// abort drops what it counted: a dead letter counts once its transaction commits (what
    /// the aborted interval dead-lettered is dead-lettered again by the replay).
    dead_letters: FxHashMap<String, LocalIntCounter>,
    /// The output of the record being processed; kept between records so its buffer is
    /// reused ([`StreamTask::swap_output`]).
    output: Vec<crate::record::OutRecord>,
    /// The input topic names seen, shared by every record polled from them.
    topic_names: Vec<Arc<str>>,
    /// Store name → its changelog topic (`<app>-<store>-changelog`), resolved once per store.
    changelog_topics: FxHashMap<Arc<str>, String>,
    /// The wall clock (epoch ms) as read at an instant, at most [`WALL_CLOCK_CHECK`] ago: a
    /// record's wall-clock time is derived from it and the instant its step began
    /// ([`Core::wall_ms`]), so a record costs two clock reads (the step's start and its
    /// processing time), not five. The instant is also when wall-clock punctuators were last
    /// checked.
    wall_base: (Instant, i64),
    /// When the last loop turn began ([`Core::step`]): the next poll's wait is measured from
    /// it, not from a clock read of its own.
    step_started: Instant,
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
    /// Why the application must stop (a fatal consumer error): no restart can cure it.
    stop: Option<String>,
    /// Whether this incarnation of the thread has committed a transaction (or, under
    /// at-least-once, offsets): reported to the supervisor through [`Progress`].
    committed_once: bool,
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

/// The group consumer's context: the rebalance callbacks ([`assignment`]) and the statistics
/// callback ([`metrics`]) reach the [`Core`] through it.
struct ThreadContext {
    core: Arc<Mutex<Core>>,
}

fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    core.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

type GroupConsumer = BaseConsumer<ThreadContext>;
pub(crate) type RestoreConsumer = BaseConsumer<kafka::QuietEof>;

/// What one run of a stream thread achieved, whatever it ended with (for the supervisor's
/// decision after a fence, `runtime/mod.rs`).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Progress {
    /// It committed at least once.
    pub(crate) committed: bool,
}

/// Runs one stream thread until shutdown or an error it cannot recover from in place;
/// `progress` says what it achieved.
pub(crate) fn run(index: usize, shared: Arc<Shared>, progress: &mut Progress) -> Result<()> {
    let config = &shared.config;
    let instance = config.instance_id();
    let topics = shared.topology.source_topics(&config.application_id);
    let producer = clients::producer(config, &instance, index, topics.first().map(String::as_str))?;
    let restore = clients::restore_consumer(config)?;

    let core = Arc::new(Mutex::new(Core {
        index,
        shared: shared.clone(),
        producer,
        restore,
        tasks: BTreeMap::new(),
        restoring: BTreeMap::new(),
        positions: FxHashMap::default(),
        topic_metrics: FxHashMap::default(),
        process_latency: shared.metrics.process_latency.local(),
        records_out: FxHashMap::default(),
        dead_letters: FxHashMap::default(),
        output: Vec::new(),
        topic_names: Vec::new(),
        changelog_topics: FxHashMap::default(),
        wall_base: (Instant::now(), now_ms()),
        step_started: Instant::now(),
        committed: HashMap::new(),
        pending_assign: Vec::new(),
        corrupt: Vec::new(),
        producer_fatal: false,
        stop: None,
        committed_once: false,
        unprocessed: None,
        origins: Vec::new(),
        txn_open: false,
        dirty: false,
        last_commit: Instant::now(),
        last_sample: Instant::now(),
        failure: None,
    }));

    let consumer = clients::group_consumer(config, &instance, index, core.clone())?;
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topic_refs)
        .map_err(Error::kafka("subscribing"))?;
    tracing::info!(thread = index, ?topics, "stream thread started");

    let result = run_loop(&consumer, &core);
    let mut c = lock(&core);
    progress.committed = c.committed_once;
    let closed = c.close_all(&consumer, result.is_ok());
    drop(c);
    // The consumer goes before the supervisor builds the next one with the same
    // `group.instance.id`.
    drop(consumer);
    result.and(closed)
}

fn run_loop(consumer: &GroupConsumer, core: &Mutex<Core>) -> Result<()> {
    let shared = lock(core).shared.clone();
    let interval = shared.config.commit_interval();
    let mut backoff = Duration::from_millis(shared.config.retry_backoff_ms);
    let max_backoff = Duration::from_millis(shared.config.retry_backoff_max_ms);
    // While tasks restore, the poll only keeps the member alive and serves callbacks: no wait.
    let mut poll_wait = IDLE_POLL;
    while !shared.shutdown.load(Ordering::Relaxed) {
        let polled = consumer.poll(poll_wait);
        let mut c = lock(core);
        if let Some(e) = c.failure.take() {
            return Err(e);
        }
        let mut step = c.step(consumer, polled, interval);
        poll_wait = if c.restoring.is_empty() {
            c.poll_wait()
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
            if !e.is_fenced() {
                tracing::error!(thread = c.index, error = %e, "fatal producer error; restarting the thread");
            }
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

/// How long the next poll may wait for input: [`IDLE_POLL`] with nothing to commit; with work
/// to commit, only until its commit is due: `commit_interval`, or with commits on drained input
/// on ([`StreamsConfig::min_commit_interval_ms`]) `min_commit_interval`, after the last commit
/// (`since_commit` ago), so a poll that comes back empty then means the input ran dry.
/// Waiting the whole [`IDLE_POLL`] instead held a due commit until the next input arrived.
/// With a wall-clock punctuator scheduled, at most [`WALL_CLOCK_CHECK`], the resolution of
/// wall-clock punctuation: an idle thread used to fire them up to [`IDLE_POLL`] late.
fn poll_wait_for(
    commit_interval: Duration,
    min_commit_interval: Option<Duration>,
    uncommitted: bool,
    since_commit: Duration,
    wall_clock_punctuators: bool,
) -> Duration {
    let longest = if wall_clock_punctuators {
        WALL_CLOCK_CHECK
    } else {
        IDLE_POLL
    };
    if !uncommitted {
        return longest;
    }
    min_commit_interval
        .unwrap_or(commit_interval)
        .saturating_sub(since_commit)
        .min(longest)
}

impl Core {
    /// The wall-clock time (epoch ms) at `now`, from the last reading of the wall clock (at
    /// most [`WALL_CLOCK_CHECK`] old, so a step of the system clock shows within that).
    fn wall_ms(&self, now: Instant) -> i64 {
        let (at, wall) = self.wall_base;
        let since = i64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(0);
        wall.saturating_add(since)
    }

    fn eos(&self) -> bool {
        self.shared.config.processing_guarantee == Guarantee::ExactlyOnce
    }

    /// Whether this interval processed input or sent records that a commit would make visible.
    fn has_uncommitted(&self) -> bool {
        self.dirty || !self.positions.is_empty()
    }

    /// How long the next poll may wait for input ([`poll_wait_for`]), measured from the start
    /// of the last step (a commit in it moved `last_commit` past that: no wait is cut short).
    fn poll_wait(&self) -> Duration {
        poll_wait_for(
            self.shared.config.commit_interval(),
            self.shared.config.min_commit_interval(),
            self.has_uncommitted(),
            self.step_started
                .saturating_duration_since(self.last_commit),
            self.tasks
                .values()
                .any(StreamTask::has_wall_clock_punctuators),
        )
    }

    /// A poll came back empty: commit now if commits on drained input are on, there is work
    /// to commit and the last commit is at least `min_commit_interval_ms` ago.
    fn commit_on_drained_input_due(&self) -> bool {
        self.shared
            .config
            .min_commit_interval()
            .is_some_and(|min| self.has_uncommitted() && self.last_commit.elapsed() >= min)
    }

    /// The thread's tasks hold at least `max_uncommitted_bytes` of uncommitted store writes:
    /// commit now rather than at the interval (their memory is bounded by that setting, not by
    /// the interval times the input rate).
    fn uncommitted_over_limit(&self) -> bool {
        let held: usize = self.tasks.values().map(|t| t.state().pending_bytes()).sum();
        held >= self.shared.config.max_uncommitted_bytes
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
        let drained = matches!(&polled, None | Some(Err(KafkaError::PartitionEOF(_))));
        self.restore_slice(consumer)?;
        let now = Instant::now();
        self.step_started = now;
        match polled {
            Some(Ok(_)) if held_back => {
                // Fetched before its partition was paused: the seek when the task starts
                // running (`restore_slice`) fetches it again.
            }
            Some(Ok(m)) => {
                let raw = to_raw(&m, &mut self.topic_names);
                let suspect = self.shared.poisoned.if_any().is_some_and(|poisoned| {
                    // Almost always empty: no hash of the coordinates then.
                    !poisoned.suspects.is_empty()
                        && poisoned.suspects.contains(&(
                            raw.topic.clone(),
                            raw.partition,
                            raw.offset,
                        ))
                });
                if suspect {
                    // Alone in its transaction: commit what came before, then it. (The
                    // consumer's position is already past it: the commit must not be.)
                    self.unprocessed = Some((raw.topic.to_string(), raw.partition, raw.offset));
                    let before = self.commit(consumer);
                    self.unprocessed = None;
                    before?;
                }
                self.process(raw, now)?;
                if suspect {
                    self.commit(consumer)?;
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => {
                // librdkafka reports a fatal consumer error once, as an event; after it the
                // consumer is unusable. A fenced static member (FencedInstanceId: another
                // member joined with this thread's group.instance.id, or a restarted
                // coordinator lost track of this one) restarts the thread with a new consumer;
                // the supervisor stops the application if that one is fenced again at once (a
                // duplicate instance). Any other fatal consumer error stops it.
                if let Some((code, reason)) = consumer.client().fatal_error() {
                    if code == RDKafkaErrorCode::FencedInstanceId {
                        tracing::warn!(thread = self.index, %reason, "the group consumer was fenced");
                        return Err(Error::Kafka {
                            context: format!(
                                "the group consumer (group.instance.id {}-{}) was fenced: {reason}",
                                self.shared.config.instance_id(),
                                self.index
                            ),
                            source: KafkaError::Global(code),
                        });
                    }
                    return Err(
                        self.stop_with(format!("the consumer failed fatally ({code:?}): {reason}"))
                    );
                }
                tracing::warn!(thread = self.index, error = %e, "consumer error");
            }
        }
        self.punctuate_wall_clock(now)?;
        if now.saturating_duration_since(self.last_commit) >= interval
            || (drained && self.commit_on_drained_input_due())
            || self.uncommitted_over_limit()
        {
            self.commit(consumer)?;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn with_work_to_commit_a_poll_waits_only_until_the_commit_is_due() {
        assert_eq!(poll_wait_for(100 * MS, None, true, 95 * MS, false), 5 * MS);
        assert_eq!(
            poll_wait_for(100 * MS, None, true, 130 * MS, false),
            Duration::ZERO
        );
        assert_eq!(
            poll_wait_for(1_000 * MS, None, true, Duration::ZERO, false),
            IDLE_POLL
        );
    }

    #[test]
    fn with_nothing_to_commit_a_poll_waits_the_idle_poll() {
        assert_eq!(
            poll_wait_for(100 * MS, None, false, 95 * MS, false),
            IDLE_POLL
        );
        assert_eq!(
            poll_wait_for(100 * MS, Some(20 * MS), false, 95 * MS, false),
            IDLE_POLL
        );
    }

    #[test]
    fn with_commits_on_drained_input_a_poll_waits_until_that_commit_is_allowed() {
        assert_eq!(
            poll_wait_for(100 * MS, Some(20 * MS), true, 5 * MS, false),
            15 * MS
        );
        assert_eq!(
            poll_wait_for(100 * MS, Some(20 * MS), true, 25 * MS, false),
            Duration::ZERO
        );
    }

    #[test]
    fn with_a_wall_clock_punctuator_a_poll_waits_at_most_the_punctuation_resolution() {
        assert_eq!(
            poll_wait_for(100 * MS, None, false, 95 * MS, true),
            WALL_CLOCK_CHECK
        );
        assert_eq!(
            poll_wait_for(1_000 * MS, None, true, Duration::ZERO, true),
            WALL_CLOCK_CHECK
        );
        assert_eq!(poll_wait_for(100 * MS, None, true, 95 * MS, true), 5 * MS);
    }
}
