//! The runtime against the real broker, in-process: dead letters, aborts that leave no trace,
//! restore from checkpoint and from the changelog alone, scale-out and interactive queries.
//! Every test uses its own random topics, application id and state directory.

mod common;

use common::{Names, by_key, runtime};

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keel_state::StateConfig;
use keel_tests::kafka::{consumer, create_topics, read_topic};
use keel_tests::topics::TopicCleanup;
use keel_tests::{Stack, unique};
use keel_topology::serde::{I64, Utf8};
use keel_topology::{
    Context, KafkaStreams, ProcessError, Processor, Record, StoreKind, StreamsConfig,
    StreamsHandle, Topology, TopologyBuilder, dlq_headers,
};
use rdkafka::ClientConfig;
use rdkafka::message::{Headers as _, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};

fn bootstrap() -> String {
    Stack::from_env().kafka_bootstrap
}

fn names(tag: &str, partitions: i32) -> Names {
    common::names(&bootstrap(), tag, partitions)
}

fn produce(topic: &str, records: &[(&str, Vec<u8>)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("partitioner", "murmur2_random")
        .create()
        .expect("producer");
    runtime().block_on(async {
        for (k, v) in records {
            producer
                .send(
                    FutureRecord::to(topic).key(k.as_bytes()).payload(v),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("produced");
        }
    });
}

fn sums_input(key: &str, values: impl IntoIterator<Item = i64>) -> Vec<(String, Vec<u8>)> {
    values
        .into_iter()
        .map(|v| (key.to_owned(), v.to_be_bytes().to_vec()))
        .collect()
}

fn produce_owned(topic: &str, records: &[(String, Vec<u8>)]) {
    let borrowed: Vec<(&str, Vec<u8>)> = records
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    produce(topic, &borrowed);
}

fn config(n: &Names, instance: &str, dir: &Path) -> StreamsConfig {
    let mut c = StreamsConfig::new(&n.app, bootstrap());
    c.state = StateConfig::with_dir(dir);
    c.instance_id = Some(instance.to_owned());
    c.consumer
        .insert("session.timeout.ms".into(), "6000".into());
    c
}

fn start(topology: Topology, config: StreamsConfig) -> StreamsHandle {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    KafkaStreams::new(topology, config)
        .expect("config")
        .start()
        .expect("starts")
}

/// Committed records of `topic` as (key, i64 value), in offset order per partition.
fn read_sums(topic: &str, expected: usize) -> Vec<(String, i64)> {
    read_decoded(
        topic,
        expected,
        Duration::from_secs(60),
        Duration::from_secs(2),
    )
}

fn read_decoded(
    topic: &str,
    expected: usize,
    within: Duration,
    settle: Duration,
) -> Vec<(String, i64)> {
    common::read_decoded(&bootstrap(), topic, expected, within, settle)
}

fn metric(handle: &StreamsHandle, name: &str) -> f64 {
    handle
        .registry()
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .map(|m| m.get_counter().value())
        .sum()
}

fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn poison_records_go_to_the_dead_letter_topic_with_headers_and_the_stream_goes_on() {
    let n = names("dlq", 1);
    produce(
        &n.input,
        &[
            ("a", 5i64.to_be_bytes().to_vec()),
            ("a", b"bad".to_vec()),
            ("a", (-3i64).to_be_bytes().to_vec()),
            ("a", 7i64.to_be_bytes().to_vec()),
        ],
    );
    let handle = start(
        common::running_sums(&n.input, &n.output),
        config(&n, "one", &n.dir),
    );
    let out = read_sums(&n.output, 2);
    assert_eq!(out, vec![("a".to_owned(), 5), ("a".to_owned(), 12)]);

    let dlq = format!("{}-dlq", n.app);
    let dead = runtime().block_on(async {
        let c = consumer(&bootstrap(), "read_committed").expect("consumer");
        read_topic(&c, &dlq, 2, Duration::from_secs(30), Duration::from_secs(1))
            .await
            .expect("reads")
    });
    assert_eq!(dead.len(), 2);
    let header = |m: &rdkafka::message::OwnedMessage, name: &str| {
        m.headers()
            .and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value))
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(
        dead[0].payload(),
        Some(&b"bad"[..]),
        "the original bytes are kept"
    );
    assert_eq!(
        header(&dead[0], dlq_headers::SOURCE_TOPIC).as_deref(),
        Some(n.input.as_str())
    );
    assert_eq!(
        header(&dead[0], dlq_headers::SOURCE_PARTITION).as_deref(),
        Some("0")
    );
    assert_eq!(
        header(&dead[0], dlq_headers::SOURCE_OFFSET).as_deref(),
        Some("1")
    );
    assert!(header(&dead[0], dlq_headers::ERROR).is_some_and(|e| e.contains("8 bytes")));
    assert_eq!(
        header(&dead[1], dlq_headers::PROCESSOR).as_deref(),
        Some("sum")
    );
    assert!(header(&dead[1], dlq_headers::ERROR).is_some_and(|e| e.contains("negative")));
    assert_eq!(metric(&handle, "keel_dead_letters_total"), 2.0);
    handle.shutdown().expect("clean shutdown");
    let _ = std::fs::remove_dir_all(&n.dir);
}

/// A running sum that fails once, retryably, when it first sees `trip_at`.
struct FlakySum {
    tripped: Arc<AtomicBool>,
    trip_at: i64,
}

impl Processor for FlakySum {
    type Key = String;
    type Value = i64;

    fn process(
        &mut self,
        ctx: &mut Context<'_>,
        record: Record<String, i64>,
    ) -> Result<(), ProcessError> {
        if record.value == self.trip_at && !self.tripped.swap(true, Ordering::SeqCst) {
            return Err(ProcessError::Dependency("the ledger timed out".into()));
        }
        common::RunningSum.process(ctx, record)
    }
}

#[test]
fn an_aborted_transaction_leaves_no_trace_in_output_or_store() {
    let n = names("abort", 1);
    produce_owned(&n.input, &sums_input("a", 1..=20));
    let tripped = Arc::new(AtomicBool::new(false));
    let flag = tripped.clone();
    let mut b = TopologyBuilder::new();
    b.add_source("in", &[&n.input], Utf8, I64)
        .add_processor(
            "sum",
            move || FlakySum {
                tripped: flag.clone(),
                trip_at: 13,
            },
            &["in"],
        )
        .add_state_store("sums", StoreKind::KeyValue, &["sum"])
        .add_sink("out", &n.output, Utf8, I64, &["sum"]);
    let mut c = config(&n, "one", &n.dir);
    // One long interval: records 1..12 are in the transaction that the failure at 13 aborts.
    c.commit_interval_ms = Some(5_000);
    let handle = start(b.build().expect("valid"), c);

    let out = read_sums(&n.output, 20);
    let expected: Vec<(String, i64)> = (1..=20)
        .map(|i| ("a".to_owned(), i * (i + 1) / 2))
        .collect();
    assert!(tripped.load(Ordering::SeqCst), "the failure happened");
    assert_eq!(
        out, expected,
        "no duplicate, no gap after the abort and replay"
    );
    assert!(metric(&handle, "keel_aborts_total") >= 1.0);
    // Interactive query: the committed store holds the clean run's final sum.
    wait_until("the final commit", Duration::from_secs(15), || {
        handle.get("sums", &n.input, b"a").ok().flatten() == Some(210i64.to_be_bytes().to_vec())
    });
    handle.shutdown().expect("clean shutdown");
    let _ = std::fs::remove_dir_all(&n.dir);
}

#[test]
fn restart_uses_the_checkpoint_and_a_wiped_state_dir_is_restored_from_the_changelog() {
    let n = names("restore", 2);
    let keys = ["k1", "k2", "k3", "k4", "k5"];
    let batch = |from: i64| -> Vec<(String, Vec<u8>)> {
        keys.iter()
            .flat_map(|k| sums_input(k, from..from + 10))
            .collect()
    };
    produce_owned(&n.input, &batch(1));
    let handle = start(
        common::running_sums(&n.input, &n.output),
        config(&n, "one", &n.dir),
    );
    read_sums(&n.output, 50);
    handle
        .shutdown()
        .expect("clean shutdown writes checkpoints");

    // Clean restart: the checkpoint vouches for the stores, nothing is replayed.
    produce_owned(&n.input, &batch(11));
    let handle = start(
        common::running_sums(&n.input, &n.output),
        config(&n, "one", &n.dir),
    );
    let out = read_sums(&n.output, 100);
    assert_eq!(
        metric(&handle, "keel_restored_records_total"),
        0.0,
        "restored from checkpoint"
    );
    handle.shutdown().expect("clean shutdown");

    // Local state gone: everything comes back from the changelog before processing resumes.
    std::fs::remove_dir_all(&n.dir).expect("wipe");
    produce_owned(&n.input, &batch(21));
    let handle = start(
        common::running_sums(&n.input, &n.output),
        config(&n, "one", &n.dir),
    );
    let out2 = read_sums(&n.output, 150);
    assert!(
        metric(&handle, "keel_restored_records_total") > 0.0,
        "restored from the changelog"
    );
    handle.shutdown().expect("clean shutdown");

    assert_eq!(out.len(), 100);
    let got = by_key(&out2);
    for k in keys {
        let want: Vec<i64> = (1..=30)
            .scan(0, |s, v| {
                *s += v;
                Some(*s)
            })
            .collect();
        assert_eq!(got[k], want, "{k}: sums continue across both restarts");
    }
    let _ = std::fs::remove_dir_all(&n.dir);
}

#[test]
fn a_second_instance_takes_half_the_partitions_and_the_survivor_takes_all() {
    let n = names("scale", 4);
    let keys: Vec<String> = (0..16).map(|i| format!("key-{i}")).collect();
    let round = |from: i64| -> Vec<(String, Vec<u8>)> {
        keys.iter()
            .flat_map(|k| sums_input(k, from..from + 5))
            .collect()
    };
    let dir_a = n.dir.join("a");
    let dir_b = n.dir.join("b");
    let a = start(
        common::running_sums(&n.input, &n.output),
        config(&n, "inst-a", &dir_a),
    );
    produce_owned(&n.input, &round(1));
    read_sums(&n.output, 80);
    wait_until(
        "a owns all four partitions",
        Duration::from_secs(30),
        || a.local_stores().len() == 4,
    );

    let b = start(
        common::running_sums(&n.input, &n.output),
        config(&n, "inst-b", &dir_b),
    );
    wait_until(
        "the partitions are split two and two",
        Duration::from_secs(60),
        || a.local_stores().len() == 2 && b.local_stores().len() == 2,
    );
    produce_owned(&n.input, &round(6));
    read_sums(&n.output, 160);
    // Interactive queries: the metadata call names the instance serving each key's store, and
    // that instance (only) answers with the key's committed sum.
    for k in &keys {
        let owner = a
            .owner_of(&n.input, k.as_bytes())
            .expect("metadata")
            .expect("an owner");
        let (serving, other) = if owner == "inst-a" {
            (&a, &b)
        } else {
            (&b, &a)
        };
        assert_eq!(owner, serving.instance_id());
        wait_until("the committed sum", Duration::from_secs(15), || {
            serving.get("sums", &n.input, k.as_bytes()).ok().flatten()
                == Some(55i64.to_be_bytes().to_vec())
        });
        assert!(
            other.get("sums", &n.input, k.as_bytes()).is_err(),
            "{k} is not served by the other"
        );
    }

    b.shutdown().expect("b stops cleanly");
    wait_until("a owns all four again", Duration::from_secs(60), || {
        a.local_stores().len() == 4
    });
    produce_owned(&n.input, &round(11));
    let out = read_sums(&n.output, 240);
    a.shutdown().expect("a stops cleanly");

    let got = by_key(&out);
    let want: Vec<i64> = (1..=15)
        .scan(0, |s, v| {
            *s += v;
            Some(*s)
        })
        .collect();
    for k in &keys {
        assert_eq!(got[k], want, "{k}: exactly once across the hand-overs");
    }
    let _ = std::fs::remove_dir_all(&n.dir);
}

/// Resets `options`' application, asking again for up to 30 s while a stopped member's static
/// membership has not lapsed yet.
fn reset_once_members_lapse(options: &keel_topology::ResetOptions) -> keel_topology::ResetReport {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match keel_topology::reset_application(options) {
            Ok(report) => return report,
            Err(e) if e.to_string().contains("member") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("reset failed: {e}"),
        }
    }
}

#[test]
fn reset_then_restart_reproduces_the_same_output_from_the_same_input() {
    let n = names("reset", 2);
    let input: Vec<(String, Vec<u8>)> = ["x", "y", "z"]
        .iter()
        .flat_map(|k| sums_input(k, 1..=20))
        .collect();
    produce_owned(&n.input, &input);
    let handle = start(
        common::running_sums(&n.input, &n.output),
        config(&n, "one", &n.dir),
    );
    let first = read_sums(&n.output, 60);
    handle.shutdown().expect("clean shutdown");

    let options = keel_topology::ResetOptions {
        application_id: n.app.clone(),
        bootstrap_servers: bootstrap(),
        // Empty: found from the group's committed offsets.
        input_topics: Vec::new(),
        to_timestamp: None,
        state_dir: Some(n.dir.clone()),
    };
    // The stopped instance's static membership lapses after its session timeout (6 s here).
    let report = reset_once_members_lapse(&options);
    assert_eq!(report.rewound.len(), 2, "{report}");
    assert!(
        report.rewound.iter().all(|(_, _, offset)| *offset == 0),
        "{report}"
    );
    assert_eq!(
        report.deleted_topics,
        vec![format!("{}-sums-changelog", n.app)]
    );
    assert!(!n.dir.join(&n.app).exists(), "local state removed");

    let handle = start(
        common::running_sums(&n.input, &n.output),
        config(&n, "one", &n.dir),
    );
    let both = read_sums(&n.output, 120);
    handle.shutdown().expect("clean shutdown");
    assert_eq!(both.len(), 120);
    let first = by_key(&first);
    for (key, twice) in by_key(&both) {
        let once = &first[&key];
        assert_eq!(twice.len(), 2 * once.len(), "{key}");
        assert_eq!(
            &twice[once.len()..],
            &once[..],
            "{key}: the replay equals the first run"
        );
    }
    let _ = std::fs::remove_dir_all(&n.dir);
}

/// Another application named under the reset one's id (Keel runs its roles as `<app>-saga`,
/// `<app>-inventory`, …): while it runs the reset is refused, and once it stopped the reset
/// deletes only the reset application's own internal topics, not the other's.
#[test]
fn reset_leaves_an_application_named_under_its_id_alone_and_refuses_while_it_runs() {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{Offset, TopicPartitionList};

    let n = names("reset_nested", 1);
    let nested = format!("{}-saga", n.app);
    let own = format!("{}-sums-changelog", n.app);
    let theirs = format!("{nested}-sums-changelog");
    runtime()
        .block_on(create_topics(&bootstrap(), &[&own, &theirs], 1))
        .expect("topics");
    let member: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", &nested)
        .set("session.timeout.ms", "6000")
        .create()
        .expect("consumer");
    member.subscribe(&[theirs.as_str()]).expect("subscribed");
    let deadline = Instant::now() + Duration::from_secs(30);
    while member.assignment().map_or(0, |a| a.count()) == 0 {
        assert!(Instant::now() < deadline, "the member never joined");
        let _ = member.poll(Duration::from_millis(100));
    }
    let options = keel_topology::ResetOptions {
        application_id: n.app.clone(),
        bootstrap_servers: bootstrap(),
        input_topics: vec![n.input.clone()],
        to_timestamp: None,
        state_dir: None,
    };
    let refused = keel_topology::reset_application(&options).expect_err("refused while it runs");
    assert!(refused.to_string().contains(&nested), "{refused}");

    // Stopped, its offsets committed: the group is still known.
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(&theirs, 0, Offset::Offset(0))
        .expect("offset");
    member
        .commit(&offsets, CommitMode::Sync)
        .expect("committed");
    drop(member);
    let report = reset_once_members_lapse(&options);
    assert_eq!(report.deleted_topics, vec![own], "{report}");
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("consumer");
    let metadata = probe
        .fetch_metadata(Some(&theirs), Duration::from_secs(10))
        .expect("metadata");
    assert!(
        metadata
            .topics()
            .iter()
            .any(|t| t.name() == theirs && t.error().is_none()),
        "{theirs} was deleted with {}",
        n.app
    );
}

#[test]
fn at_least_once_gives_the_same_output_on_a_clean_run() {
    let n = names("alos", 2);
    let input: Vec<(String, Vec<u8>)> = ["p", "q"]
        .iter()
        .flat_map(|k| sums_input(k, 1..=25))
        .collect();
    produce_owned(&n.input, &input);
    let mut c = config(&n, "one", &n.dir);
    c.processing_guarantee = keel_topology::Guarantee::AtLeastOnce;
    c.commit_interval_ms = Some(200);
    let handle = start(common::running_sums(&n.input, &n.output), c);
    let out = by_key(&read_sums(&n.output, 50));
    assert!(metric(&handle, "keel_commits_total") >= 1.0);
    handle.shutdown().expect("clean shutdown");
    let want: Vec<i64> = (1..=25)
        .scan(0, |s, v| {
            *s += v;
            Some(*s)
        })
        .collect();
    assert_eq!(out["p"], want);
    assert_eq!(out["q"], want);
    let _ = std::fs::remove_dir_all(&n.dir);
}

#[test]
fn topics_of_one_sub_topology_must_be_co_partitioned() {
    let n = names("copart", 2);
    let other = unique("copart_other");
    let _other = TopicCleanup::new(bootstrap()).topic(&other);
    runtime()
        .block_on(create_topics(&bootstrap(), &[&other], 3))
        .expect("topic");
    let mut b = TopologyBuilder::new();
    b.add_source("in", &[&n.input, &other], Utf8, I64)
        .add_processor("sum", || common::RunningSum, &["in"])
        .add_state_store("sums", StoreKind::KeyValue, &["sum"]);
    let err = KafkaStreams::new(b.build().expect("valid graph"), config(&n, "one", &n.dir))
        .expect("config")
        .start()
        .expect_err("2 and 3 partitions cannot be joined");
    let text = err.to_string();
    assert!(text.contains("not co-partitioned"), "{text}");
    assert!(
        text.contains(&format!("{}=2", n.input)) && text.contains(&format!("{other}=3")),
        "{text}"
    );
}

#[test]
fn a_missing_source_topic_is_a_clear_error() {
    let n = names("missing", 1);
    let ghost = unique("ghost");
    let err = KafkaStreams::new(
        common::running_sums(&ghost, &n.output),
        config(&n, "one", &n.dir),
    )
    .expect("config")
    .start()
    .expect_err("no such topic");
    assert!(err.to_string().contains(&ghost), "{err}");
}

#[test]
fn punctuators_fire_on_the_broker_and_timers_survive_a_restart_with_wiped_state() {
    let n = names("punct", 1);
    let topology = || {
        common::ticker_every(
            &n.input,
            &n.output,
            Duration::from_secs(10),
            Duration::from_millis(300),
        )
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    // Stream time: records at t and t+10 s fire the stream-time punctuator once; timers of the
    // records are due 1 s after each.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("producer");
    let send = |key: &str, ts: i64| {
        runtime().block_on(async {
            producer
                .send(
                    FutureRecord::to(&n.input)
                        .key(key)
                        .payload(&1i64.to_be_bytes()[..])
                        .timestamp(ts),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("produced");
        });
    };
    // A timer due 20 minutes ahead (by wall clock it cannot fire before the restart; the
    // broker refuses timestamps more than an hour ahead)...
    send("late", now + 1_200_000);
    let handle = start(topology(), config(&n, "one", &n.dir));
    wait_until("the wall-clock punctuator", Duration::from_secs(30), || {
        metric(&handle, "keel_processor_records_out_total") >= 1.0
    });
    handle.shutdown().expect("clean shutdown");
    std::fs::remove_dir_all(&n.dir).expect("wipe local state");

    // ... survives a restart with no local state. The task resumes the stream time committed
    // with the offsets ("late"'s), so "later" fires the stream-time punctuator (due by then:
    // "late"'s timer, only if it survived) and "last" fires it again ("later"'s timer).
    send("later", now + 2_400_000);
    send("last", now + 3_000_000);
    let handle = start(topology(), config(&n, "one", &n.dir));
    let deadline = Instant::now() + Duration::from_secs(60);
    let fired = loop {
        let fired: i64 = read_within(&n.output, Duration::from_secs(3))
            .iter()
            .filter(|(k, _)| k == "stream:stream")
            .map(|(_, v)| *v)
            .sum();
        if fired >= 2 || Instant::now() > deadline {
            break fired;
        }
    };
    handle.shutdown().expect("clean shutdown");
    assert_eq!(
        fired, 2,
        "the timer from before the restart fired on stream time, and so did the later one"
    );
    let wall = count_output(&n.output, "wall:wall");
    assert!(wall >= 2, "wall-clock punctuations were emitted ({wall})");
    let _ = std::fs::remove_dir_all(&n.dir);
}

/// Everything committed on `topic` that arrives within `within`.
fn read_within(topic: &str, within: Duration) -> Vec<(String, i64)> {
    read_decoded(topic, usize::MAX, within, Duration::ZERO)
}

fn count_output(topic: &str, key: &str) -> usize {
    read_within(topic, Duration::from_secs(3))
        .iter()
        .filter(|(k, _)| k == key)
        .count()
}

#[test]
fn a_repartition_topic_brings_re_keyed_records_to_the_task_of_their_new_key() {
    let n = names("repart", 3);
    let mut b = TopologyBuilder::new();
    b.add_source("in", &[&n.input], Utf8, I64)
        .add_processor("by-sku", || common::BySku, &["in"])
        .add_repartition::<String, i64, _, _>("sku", Utf8, I64, &["by-sku"])
        .add_processor("sum", || common::RunningSum, &["sku"])
        .add_state_store("sums", StoreKind::KeyValue, &["sum"])
        .add_sink("out", &n.output, Utf8, I64, &["sum"]);
    let lines: Vec<(String, Vec<u8>)> = (0..30)
        .map(|i| {
            (
                format!("order-{i}:{}", ["mug", "plate", "bowl"][i % 3]),
                1i64.to_be_bytes().to_vec(),
            )
        })
        .collect();
    produce_owned(&n.input, &lines);
    let handle = start(b.build().expect("valid"), config(&n, "one", &n.dir));
    let out = by_key(&read_sums(&n.output, 30));
    handle.shutdown().expect("clean shutdown");
    let want: Vec<i64> = (1..=10).collect();
    for sku in ["mug", "plate", "bowl"] {
        assert_eq!(
            out[sku], want,
            "{sku}: one running count, whatever partition its lines were on"
        );
    }
    let _ = std::fs::remove_dir_all(&n.dir);
}

#[test]
fn a_sink_partitioner_places_records_on_the_broker() {
    let n = names("partitioner", 1);
    let output = unique("partitioner_out3");
    let _output = TopicCleanup::new(bootstrap()).topic(&output);
    runtime()
        .block_on(create_topics(&bootstrap(), &[&output], 3))
        .expect("topic");
    let mut b = TopologyBuilder::new();
    b.add_source("in", &[&n.input], Utf8, I64)
        .add_sink_with_partitioner(
            "out",
            &output,
            Utf8,
            I64,
            |_key: &String, value: &i64, partitions| (*value % i64::from(partitions)) as i32,
            &["in"],
        );
    produce_owned(&n.input, &sums_input("k", 0..9));
    let handle = start(b.build().expect("valid"), config(&n, "one", &n.dir));
    let messages = runtime().block_on(async {
        let c = consumer(&bootstrap(), "read_committed").expect("consumer");
        read_topic(
            &c,
            &output,
            9,
            Duration::from_secs(60),
            Duration::from_secs(1),
        )
        .await
        .expect("reads")
    });
    handle.shutdown().expect("clean shutdown");
    assert_eq!(messages.len(), 9);
    for m in &messages {
        let value = i64::from_be_bytes(
            m.payload()
                .and_then(|p| p.try_into().ok())
                .expect("8 bytes"),
        );
        assert_eq!(i64::from(m.partition()), value % 3, "value {value}");
    }
    let _ = std::fs::remove_dir_all(&n.dir);
}

#[test]
fn dropping_the_names_deletes_the_tests_topics_and_the_applications_internal_ones() {
    let n = names("cleanup", 1);
    let (input, output, app) = (n.input.clone(), n.output.clone(), n.app.clone());
    // What a started application adds: its changelogs (and dead-letter, repartition topics).
    let changelog = format!("{app}-sums-changelog");
    runtime()
        .block_on(create_topics(&bootstrap(), &[&changelog], 1))
        .expect("changelog");
    drop(n);
    let left: Vec<String> = keel_tests::topics::list_topics(&bootstrap(), Duration::from_secs(10))
        .expect("metadata")
        .into_iter()
        .filter(|t| *t == input || *t == output || t.starts_with(&format!("{app}-")))
        .collect();
    assert!(left.is_empty(), "left on the broker: {left:?}");
}

/// Runs the running sums with a 60 s commit interval, which no test waits out, and `early`
/// applied to the config; both outputs must be visible within 20 s: only an early commit can
/// show them.
fn assert_committed_before_the_interval(tag: &str, early: impl FnOnce(&mut StreamsConfig)) {
    let n = names(tag, 2);
    let mut c = config(&n, "one", &n.dir);
    c.commit_interval_ms = Some(60_000);
    early(&mut c);
    let handle = start(common::running_sums(&n.input, &n.output), c);
    produce_owned(&n.input, &sums_input("k", [5, 7]));
    let started = Instant::now();
    let out = read_decoded(
        &n.output,
        2,
        Duration::from_secs(20),
        Duration::from_millis(200),
    );
    assert_eq!(
        out,
        vec![("k".to_owned(), 5), ("k".to_owned(), 12)],
        "the outputs were not committed within 20 s of a 60 s interval"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    handle.shutdown().expect("clean shutdown");
    let _ = std::fs::remove_dir_all(&n.dir);
}

#[test]
fn with_a_min_commit_interval_a_drained_input_commits_without_waiting_out_the_interval() {
    assert_committed_before_the_interval("drained", |c| c.min_commit_interval_ms = Some(20));
}

#[test]
fn uncommitted_writes_over_max_uncommitted_bytes_commit_before_the_interval() {
    assert_committed_before_the_interval("uncommitted", |c| c.max_uncommitted_bytes = 1);
}

/// Forwards, per record, where the runtime says it came from: `100 × partition count +
/// partition` (`-100 + partition` when the count is unknown).
struct Whereabouts;

impl Processor for Whereabouts {
    type Key = String;
    type Value = i64;

    fn process(
        &mut self,
        ctx: &mut Context<'_>,
        record: Record<String, i64>,
    ) -> Result<(), ProcessError> {
        let meta = ctx.metadata().expect("a record has metadata");
        let seen = i64::from(meta.partitions.unwrap_or(-1)) * 100 + i64::from(meta.partition);
        let key = record.key.clone();
        ctx.forward(record.with(key, seen));
        Ok(())
    }
}

#[test]
fn a_processor_sees_the_partition_count_of_its_records_topic() {
    let n = names("whereabouts", 3);
    let keys: Vec<String> = (0..6).map(|i| format!("order-{i}")).collect();
    let records: Vec<(String, Vec<u8>)> = keys
        .iter()
        .map(|k| (k.clone(), 1i64.to_be_bytes().to_vec()))
        .collect();
    produce_owned(&n.input, &records);
    let mut b = TopologyBuilder::new();
    b.add_source("in", &[&n.input], Utf8, I64)
        .add_processor("where", || Whereabouts, &["in"])
        .add_sink("out", &n.output, Utf8, I64, &["where"]);
    let handle = start(b.build().expect("valid"), config(&n, "one", &n.dir));
    let out = read_sums(&n.output, keys.len());
    handle.shutdown().expect("clean shutdown");
    assert_eq!(out.len(), keys.len(), "{out:?}");
    for (key, seen) in out {
        let partition = keel_topology::default_partition(key.as_bytes(), 3);
        assert_eq!(
            seen,
            300 + i64::from(partition),
            "{key}: partition {partition} of 3 (murmur2, as produced)"
        );
    }
}
