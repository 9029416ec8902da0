//! Failpoints (`keel_topology::runtime::faults`) at every phase of the commit, of restore and
//! of task set-up, against the real broker: each test injects one failure and checks that the
//! output and the store equal a clean run's, and that the runtime handled the failure the way
//! its kind asks (abort and replay, call again, restart the producer, restore). Failpoints are
//! process-wide, so the tests of this file run one at a time (`FailScenario` holds a lock).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fail::FailScenario;
use keel_state::StateConfig;
use keel_tests::Stack;
use keel_topology::runtime::faults;
use keel_topology::{KafkaStreams, StreamsConfig, StreamsHandle};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use common::{by_key, expected_sums, runtime};

fn bootstrap() -> String {
    Stack::from_env().kafka_bootstrap
}

/// The test's names; its methods below produce, start and read.
type Run = common::Names;

impl Run {
    fn new(tag: &str) -> Self {
        common::names(&bootstrap(), &format!("fp_{tag}"), 2)
    }

    fn produce(&self, records: &[(String, i64)]) {
        self.produce_with(records, false);
    }

    /// As [`Run::produce`], each record in a transaction of its own (a commit marker after
    /// each record, as Keel's own outputs are).
    fn produce_transactional(&self, records: &[(String, i64)]) {
        self.produce_with(records, true);
    }

    fn produce_with(&self, records: &[(String, i64)], transactional: bool) {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap())
            .set("partitioner", "murmur2_random");
        if transactional {
            config.set("transactional.id", keel_tests::unique("fp_txn"));
        }
        let producer: ThreadedProducer<DefaultProducerContext> = config.create().expect("producer");
        let timeout = Duration::from_secs(30);
        if transactional {
            producer.init_transactions(timeout).expect("init");
        }
        for (k, v) in records {
            let bytes = v.to_be_bytes();
            if transactional {
                producer.begin_transaction().expect("begin");
            }
            producer
                .send(
                    BaseRecord::to(&self.input)
                        .key(k.as_str())
                        .payload(&bytes[..]),
                )
                .map_err(|(e, _)| e)
                .expect("queued");
            if transactional {
                producer.commit_transaction(timeout).expect("commit");
            }
        }
        producer.flush(timeout).expect("flushed");
    }

    fn start(&self) -> StreamsHandle {
        self.start_topology(common::running_sums(&self.input, &self.output))
    }

    fn start_topology(&self, topology: keel_topology::Topology) -> StreamsHandle {
        self.start_with(topology, |_| ())
    }

    fn start_with(
        &self,
        topology: keel_topology::Topology,
        tune: impl FnOnce(&mut StreamsConfig),
    ) -> StreamsHandle {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let mut c = StreamsConfig::new(&self.app, bootstrap());
        c.state = StateConfig::with_dir(&self.dir);
        c.instance_id = Some("one".to_owned());
        c.commit_interval_ms = Some(200);
        c.retry_backoff_ms = 50;
        c.retry_backoff_max_ms = 500;
        c.consumer
            .insert("session.timeout.ms".into(), "6000".into());
        tune(&mut c);
        KafkaStreams::new(topology, c)
            .expect("config")
            .start()
            .expect("starts")
    }

    fn output(&self, expected: usize) -> Vec<(String, i64)> {
        common::read_decoded(
            &bootstrap(),
            &self.output,
            expected,
            Duration::from_secs(60),
            Duration::from_secs(2),
        )
    }

    /// The output equals a clean run's and the store holds each key's final sum.
    fn assert_clean(&self, handle: &StreamsHandle, input: &[(String, i64)]) {
        let want = expected_sums(input);
        let got = by_key(&self.output(input.len()));
        assert_eq!(got, want, "output equals a clean run's");
        for (key, sums) in &want {
            let last = sums.last().copied().unwrap_or(0).to_be_bytes().to_vec();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let stored = handle
                    .get("sums", &self.input, key.as_bytes())
                    .ok()
                    .flatten();
                if stored.as_deref() == Some(last.as_slice()) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "store of {key}: {stored:?}, want {last:?}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn input(from: i64) -> Vec<(String, i64)> {
    ["a", "b", "c", "d"]
        .iter()
        .flat_map(|k| (from..from + 10).map(move |v| ((*k).to_owned(), v)))
        .collect()
}

fn counter(handle: &StreamsHandle, name: &str) -> f64 {
    handle
        .registry()
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .map(|m| m.get_counter().value())
        .sum()
}

/// Every label of counter `name` with its value.
fn counter_by_label(handle: &StreamsHandle, name: &str) -> BTreeMap<String, f64> {
    handle
        .registry()
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .map(|m| {
            let label = m
                .get_label()
                .iter()
                .filter(|l| l.name() != "application")
                .map(|l| l.value().to_owned())
                .collect::<Vec<_>>()
                .join(",");
            (label, m.get_counter().value())
        })
        .collect()
}

/// Whether failpoint `name` was used up (its configured count reached): evaluating it here
/// finds nothing left.
fn used_up(name: &str) -> bool {
    fail::eval(name, |_| ()).is_none()
}

/// Arms `name` with `actions`, runs the clean-run scenario and returns the handle for checks.
fn inject_and_compare(tag: &str, name: &str, actions: &str) -> (Run, StreamsHandle) {
    let run = Run::new(tag);
    let data = input(1);
    run.produce(&data);
    fail::cfg(name, actions).expect("failpoint");
    let handle = run.start();
    run.assert_clean(&handle, &data);
    assert!(used_up(name), "failpoint {name} was hit");
    (run, handle)
}

#[test]
fn a_failure_after_the_changelog_send_aborts_and_replays_to_a_clean_result() {
    let scenario = FailScenario::setup();
    let (_run, handle) =
        inject_and_compare("after_changelog", faults::AFTER_CHANGELOG_SEND, "1*return");
    assert!(counter(&handle, "keel_aborts_total") >= 1.0);
    handle.shutdown().expect("clean shutdown");
    scenario.teardown();
}

#[test]
fn a_failure_after_the_offsets_aborts_and_replays_to_a_clean_result() {
    let scenario = FailScenario::setup();
    let (_run, handle) = inject_and_compare("after_offsets", faults::AFTER_OFFSETS, "1*return");
    assert!(counter(&handle, "keel_aborts_total") >= 1.0);
    handle.shutdown().expect("clean shutdown");
    scenario.teardown();
}

#[test]
fn a_failure_after_the_flush_aborts_and_replays_to_a_clean_result() {
    let scenario = FailScenario::setup();
    let (_run, handle) = inject_and_compare("after_flush", faults::AFTER_FLUSH, "1*return");
    assert!(counter(&handle, "keel_aborts_total") >= 1.0);
    handle.shutdown().expect("clean shutdown");
    scenario.teardown();
}

/// A dead letter counts once its transaction commits: the aborted interval's dead letter is
/// not counted beside the replay's (`keel_dead_letters_total` said 2 for one dead letter).
#[test]
fn a_dead_letter_of_an_aborted_interval_is_counted_once() {
    let scenario = FailScenario::setup();
    let run = Run::new("dead_letter_count");
    let data = input(1);
    run.produce(&data);
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("producer");
    producer
        .send(
            BaseRecord::to(&run.input)
                .partition(0)
                .key("bad")
                .payload(&b"not an i64"[..]),
        )
        .map_err(|(e, _)| e)
        .expect("queued");
    producer.flush(Duration::from_secs(30)).expect("flushed");
    fail::cfg(faults::AFTER_FLUSH, "1*return").expect("failpoint");
    let handle = run.start();
    run.assert_clean(&handle, &data);
    assert!(used_up(faults::AFTER_FLUSH), "an interval was aborted");
    assert!(counter(&handle, "keel_aborts_total") >= 1.0);
    assert_eq!(counter(&handle, "keel_dead_letters_total"), 1.0);
    handle.shutdown().expect("clean shutdown");
    scenario.teardown();
}

/// `topic`'s records per key (i64 values) under `isolation`, waiting up to `within` for
/// `expected` of them (then 2 s more).
fn changelog_by_key(topic: &str, isolation: &str, expected: usize) -> BTreeMap<String, Vec<i64>> {
    use rdkafka::message::Message;
    let records = runtime().block_on(async {
        let c = keel_tests::kafka::consumer(&bootstrap(), isolation).expect("consumer");
        keel_tests::kafka::read_topic(
            &c,
            topic,
            expected,
            Duration::from_secs(30),
            Duration::from_secs(2),
        )
        .await
        .expect("reads")
    });
    let pairs: Vec<(String, i64)> = records
        .iter()
        .map(|m| {
            let k = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            let v = m.payload().map_or(i64::MIN, |p| {
                i64::from_be_bytes(p.try_into().expect("8 bytes"))
            });
            (k, v)
        })
        .collect();
    by_key(&pairs)
}

/// The stream thread sends each record's changelog records while it processes, not at the
/// commit. An abort after they reached the broker (here: after the flush, so every one of them
/// was acknowledged) must leave them invisible: the changelog's `read_committed` view equals a
/// clean run's — one record per input record, each key's running sums in order, none from
/// the aborted interval twice — and the store, restored or not, holds the clean sums.
#[test]
fn an_abort_after_the_changelog_reached_the_broker_leaves_its_committed_view_equal_to_a_clean_runs()
{
    let scenario = FailScenario::setup();
    let (run, handle) = inject_and_compare("changelog_sent_abort", faults::AFTER_FLUSH, "1*return");
    assert!(counter(&handle, "keel_aborts_total") >= 1.0);
    handle.shutdown().expect("clean shutdown");
    let data = input(1);
    let want = expected_sums(&data);
    let topic = keel_state::changelog_topic(&run.app, "sums");
    let committed = changelog_by_key(&topic, "read_committed", data.len());
    assert_eq!(
        committed, want,
        "the committed changelog is a clean run's: each write once, in order"
    );
    let all = changelog_by_key(&topic, "read_uncommitted", data.len() + 1);
    let (all_count, committed_count): (usize, usize) = (
        all.values().map(Vec::len).sum(),
        committed.values().map(Vec::len).sum(),
    );
    assert!(
        all_count > committed_count,
        "the aborted interval's changelog records had reached the broker: {all_count} records \
         in the log, {committed_count} committed"
    );

    // A restore from that changelog (the state directory wiped) skips the aborted records.
    std::fs::remove_dir_all(&run.dir).expect("wipe the state directory");
    let handle = run.start();
    let more = input(11);
    run.produce(&more);
    let mut both = data.clone();
    both.extend(more);
    run.assert_clean(&handle, &both);
    handle.shutdown().expect("clean shutdown");
    scenario.teardown();
}

// Item 5: librdkafka's transactional error classes.

#[test]
fn a_timed_out_commit_transaction_is_called_again_not_aborted() {
    let scenario = FailScenario::setup();
    let (_run, handle) = inject_and_compare(
        "commit_retriable",
        faults::COMMIT_TRANSACTION,
        "2*return(retriable)",
    );
    assert_eq!(
        counter(&handle, "keel_aborts_total"),
        0.0,
        "a retriable commit error is retried, never aborted: {:?}",
        counter_by_label(&handle, "keel_aborts_total")
    );
    handle.shutdown().expect("clean shutdown");
    scenario.teardown();
}

#[test]
fn a_retriable_send_offsets_error_is_called_again_not_aborted() {
    let scenario = FailScenario::setup();
    let (_run, handle) = inject_and_compare(
        "offsets_retriable",
        faults::SEND_OFFSETS,
        "1*return(retriable)",
    );
    assert_eq!(counter(&handle, "keel_aborts_total"), 0.0);
    handle.shutdown().expect("clean shutdown");
    scenario.teardown();
}

#[test]
fn an_abortable_commit_error_aborts_and_replays() {
    let scenario = FailScenario::setup();
    let (_run, handle) = inject_and_compare(
        "commit_abortable",
        faults::COMMIT_TRANSACTION,
        "1*return(abortable)",
    );
    assert!(counter(&handle, "keel_aborts_total") >= 1.0);
    handle.shutdown().expect("clean shutdown");
    scenario.teardown();
}

#[test]
fn a_fatal_commit_error_restarts_the_thread_with_a_new_producer() {
    let scenario = FailScenario::setup();
    let (_run, handle) = inject_and_compare(
        "commit_fatal",
        faults::COMMIT_TRANSACTION,
        "1*return(fatal)",
    );
    assert!(handle.is_running(), "the thread restarted, the app runs");
    handle.shutdown().expect("clean shutdown");
    scenario.teardown();
}

/// A thread that restarts after a failed interval must not commit, while its consumer closes,
/// positions past what that interval processed. Input written in transactions (a commit marker
/// after each record, as Keel's own outputs are) and a thread whose tasks take a while to close:
/// the consumer, sought back by the abort, fetches the interval again meanwhile, and the
/// markers it serves on close move its position past the records the aborted interval had
/// processed. The commit on revoke took that position, and the restarted thread went on from
/// there: the interval's input was lost (seen in `keel run` after a refused output).
#[test]
fn a_restarted_thread_commits_no_position_past_its_aborted_interval() {
    let scenario = FailScenario::setup();
    let run = Run::new("close_positions");
    let data = input(1);
    run.produce_transactional(&data);
    fail::cfg(faults::COMMIT_TRANSACTION, "1*return(fatal)").expect("failpoint");
    fail::cfg(faults::TASK_CLOSE, "sleep(300)").expect("failpoint");
    let handle = run.start();
    run.assert_clean(&handle, &data);
    assert!(used_up(faults::COMMIT_TRANSACTION), "the interval failed");
    assert!(handle.is_running(), "the thread restarted, the app runs");
    fail::remove(faults::TASK_CLOSE);
    handle.shutdown().expect("clean shutdown");
    scenario.teardown();
}

// After the commit point, at restore and at set-up.

#[test]
fn a_crash_right_after_commit_transaction_loses_and_repeats_nothing() {
    let scenario = FailScenario::setup();
    let run = Run::new("after_commit");
    let data = input(1);
    run.produce(&data);
    fail::cfg(faults::AFTER_COMMIT_TRANSACTION, "1*panic").expect("failpoint");
    let handle = run.start();
    let deadline = Instant::now() + Duration::from_secs(60);
    while handle.is_running() {
        assert!(
            Instant::now() < deadline,
            "the failpoint crashed the thread"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(handle.wait().is_err(), "the thread panicked");
    // The crashed process comes back on the same state directory.
    let handle = run.start();
    run.assert_clean(&handle, &data);
    handle.shutdown().expect("clean shutdown");
    scenario.teardown();
}

#[test]
fn a_store_apply_that_keeps_failing_restores_the_task_to_a_clean_result() {
    let scenario = FailScenario::setup();
    let (_run, handle) = inject_and_compare("apply", faults::STORE_APPLY, "3*return");
    assert!(
        counter(&handle, "keel_restored_records_total") > 0.0,
        "the task was restored from its changelog"
    );
    assert_eq!(
        counter(&handle, "keel_aborts_total"),
        0.0,
        "nothing aborted after the commit point"
    );
    handle.shutdown().expect("clean shutdown");
    scenario.teardown();
}

#[test]
fn a_failed_restore_batch_only_delays_the_task() {
    let scenario = FailScenario::setup();
    let run = Run::new("restore");
    let first = input(1);
    run.produce(&first);
    let handle = run.start();
    run.assert_clean(&handle, &first);
    handle.shutdown().expect("clean shutdown");
    // No local state: the next start restores from the changelog, and its first batch fails.
    std::fs::remove_dir_all(&run.dir).expect("wiped");
    fail::cfg(faults::RESTORE_BATCH, "1*return").expect("failpoint");
    let second = input(11);
    run.produce(&second);
    let handle = run.start();
    let all: Vec<(String, i64)> = first.iter().chain(&second).cloned().collect();
    run.assert_clean(&handle, &all);
    assert!(used_up(faults::RESTORE_BATCH));
    assert!(counter(&handle, "keel_restored_records_total") > 0.0);
    handle.shutdown().expect("clean shutdown");
    scenario.teardown();
}

/// Records in the changelog partitions of store `sums` (offsets: an upper bound, since
/// commit markers take offsets too).
fn changelog_offsets(run: &Run) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("consumer");
    let topic = format!("{}-sums-changelog", run.app);
    (0..2)
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(&topic, p, Duration::from_secs(10))
                .expect("watermarks");
            high - low
        })
        .sum()
}

// Item 6: a restore longer than max.poll.interval.ms keeps the member in the group.

#[test]
fn a_restore_longer_than_the_poll_interval_keeps_the_member_and_restores_once() {
    let scenario = FailScenario::setup();
    let run = Run::new("long_restore");
    let keys = |v: i64| -> Vec<(String, i64)> { (0..200).map(|i| (format!("k{i}"), v)).collect() };
    let first = keys(1);
    run.produce(&first);
    let handle = run.start_with(common::running_sums(&run.input, &run.output), |c| {
        c.consumer
            .insert("max.poll.interval.ms".into(), "6000".into());
    });
    run.assert_clean(&handle, &first);
    handle.shutdown().expect("clean shutdown");
    let changelog = changelog_offsets(&run);
    assert!(
        changelog >= 200,
        "one changelog record per key: {changelog}"
    );
    // No local state: the next start restores every key, 40 ms a record: about 8 s, more than
    // the 6 s poll interval.
    std::fs::remove_dir_all(&run.dir).expect("wiped");
    fail::cfg(faults::RESTORE_RECORD, "sleep(40)").expect("failpoint");
    let second = keys(2);
    run.produce(&second);
    let started = Instant::now();
    let handle = run.start_with(common::running_sums(&run.input, &run.output), |c| {
        c.consumer
            .insert("max.poll.interval.ms".into(), "6000".into());
    });
    let all: Vec<(String, i64)> = first.iter().chain(&second).cloned().collect();
    run.assert_clean(&handle, &all);
    fail::remove(faults::RESTORE_RECORD);
    assert!(
        started.elapsed() > Duration::from_secs(6),
        "the restore took longer than the poll interval ({:?})",
        started.elapsed()
    );
    let restored = counter(&handle, "keel_restored_records_total");
    assert!(
        restored >= 200.0 && restored <= changelog as f64,
        "every key restored once, not again after an eviction: {restored} of {changelog}"
    );
    let aborts = counter_by_label(&handle, "keel_aborts_total");
    assert!(
        !aborts.contains_key("assignment lost"),
        "the member was not evicted: {aborts:?}"
    );
    assert!(handle.is_running());
    handle.shutdown().expect("clean shutdown");
    scenario.teardown();
}

#[test]
fn a_failed_task_set_up_only_delays_the_task() {
    let scenario = FailScenario::setup();
    let (_run, handle) = inject_and_compare("set_up", faults::TASK_SET_UP, "2*return");
    assert!(handle.is_running());
    handle.shutdown().expect("clean shutdown");
    scenario.teardown();
}

// Item 10: stream time rolls back with an abort.

#[test]
fn an_aborted_interval_rolls_stream_time_back_so_the_replay_fires_its_punctuation_again() {
    let scenario = FailScenario::setup();
    let run = Run::new("clock_abort");
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
        - 60_000;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("partitioner", "murmur2_random")
        .create()
        .expect("producer");
    // Both keys on one partition's task would be best; with two partitions each task sees its
    // own stream time, so one key carries both records.
    for (ts, v) in [(base, 1i64), (base + 12_000, 2)] {
        let bytes = v.to_be_bytes();
        producer
            .send(
                BaseRecord::to(&run.input)
                    .key("a")
                    .payload(&bytes[..])
                    .timestamp(ts),
            )
            .map_err(|(e, _)| e)
            .expect("queued");
    }
    producer.flush(Duration::from_secs(30)).expect("flushed");
    // The first commit (both records, and the punctuation at base + 12 s) fails.
    fail::cfg(faults::AFTER_FLUSH, "1*return").expect("failpoint");
    let handle = run.start_topology(common::ticker_every(
        &run.input,
        &run.output,
        Duration::from_secs(10),
        Duration::from_secs(3_600),
    ));
    let out = run.output(1);
    assert!(used_up(faults::AFTER_FLUSH));
    assert!(counter(&handle, "keel_aborts_total") >= 1.0);
    handle.shutdown().expect("clean shutdown");
    let fired: Vec<&(String, i64)> = out.iter().filter(|(k, _)| k == "stream:stream").collect();
    assert_eq!(
        fired.len(),
        1,
        "the replay fired the stream-time punctuation the aborted interval had fired: {out:?}"
    );
    scenario.teardown();
}
