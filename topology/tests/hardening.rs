//! Runtime faults from the review of issue 7, each against the real broker with its own random
//! topics, application id and state directory: consumer lag on transactional input, restore of
//! odd changelog records, corrupt local state, header values.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keel_state::StateConfig;
use keel_tests::kafka::create_topics;
use keel_tests::topics::TopicCleanup;
use keel_tests::{Stack, unique};
use keel_topology::serde::{I64, Utf8};
use keel_topology::{
    Context, KafkaStreams, ProcessError, Processor, Record, StreamsConfig, StreamsHandle, Topology,
    TopologyBuilder,
};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use common::{Names, by_key, runtime};

fn bootstrap() -> String {
    Stack::from_env().kafka_bootstrap
}

fn names(tag: &str, partitions: i32) -> Names {
    common::names(&bootstrap(), tag, partitions)
}

fn config(n: &Names, dir: &Path) -> StreamsConfig {
    let mut c = app_config(&n.app, dir);
    c.consumer
        .insert("statistics.interval.ms".into(), "500".into());
    c
}

/// Application `app` with its state in `dir`, instance `one`, a 6 s session.
fn app_config(app: &str, dir: &Path) -> StreamsConfig {
    let mut c = StreamsConfig::new(app, bootstrap());
    c.state = StateConfig::with_dir(dir);
    c.instance_id = Some("one".to_owned());
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

/// Produces `(key, i64)` records, each in its own transaction when `transactional` (so every
/// record is followed by a commit marker), with a null key where the key is `None`.
fn produce(topic: &str, records: &[(Option<&str>, Option<i64>)], transactional: bool) {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap())
        .set("partitioner", "murmur2_random");
    if transactional {
        cfg.set("transactional.id", unique("test_txn"));
    }
    let producer: ThreadedProducer<DefaultProducerContext> = cfg.create().expect("producer");
    let timeout = Duration::from_secs(30);
    if transactional {
        producer.init_transactions(timeout).expect("init");
    }
    for (key, value) in records {
        if transactional {
            producer.begin_transaction().expect("begin");
        }
        let bytes = value.map(i64::to_be_bytes);
        let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic);
        if let Some(k) = key {
            record = record.key(*k);
        }
        if let Some(b) = &bytes {
            record = record.payload(b.as_slice());
        }
        producer.send(record).map_err(|(e, _)| e).expect("queued");
        if transactional {
            producer.commit_transaction(timeout).expect("commit");
        }
    }
    producer.flush(timeout).expect("flushed");
}

fn gauge(handle: &StreamsHandle, name: &str, labels: &[(&str, &str)]) -> Option<i64> {
    handle
        .registry()
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .find(|m| {
            labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        .map(|m| m.get_gauge().value() as i64)
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

/// (committed offset of `group`, high watermark) per partition of `topic`, as Kafka's
/// `kafka-consumer-groups.sh --describe` computes lag (log end offset minus committed offset).
fn group_offsets(group: &str, topic: &str, partitions: i32) -> Vec<(Option<i64>, i64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    (0..partitions)
        .map(|p| {
            let c = committed
                .find_partition(topic, p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            (c, high)
        })
        .collect()
}

fn read_sums(topic: &str, expected: usize) -> Vec<(String, i64)> {
    common::read_decoded(
        &bootstrap(),
        topic,
        expected,
        Duration::from_secs(60),
        Duration::from_secs(2),
    )
}

// ---------------------------------------------------------------------------------------------
// Item 16: consumer lag.

#[test]
fn a_fully_consumed_transactional_partition_shows_no_lag_in_the_group_or_the_gauge() {
    let n = names("lag_txn", 2);
    let records: Vec<(Option<&str>, Option<i64>)> = ["a", "b", "c", "d", "e", "f"]
        .iter()
        .map(|k| (Some(*k), Some(1)))
        .collect();
    produce(&n.input, &records, true);
    let handle = start(
        common::running_sums(&n.input, &n.output),
        config(&n, &n.dir),
    );
    assert_eq!(read_sums(&n.output, 6).len(), 6);

    // Input has stopped. Every offset left after the committed position is a commit marker:
    // Kafka's tool (log end offset - committed) and the gauge must both come down to 0.
    let mut last;
    let deadline = Instant::now() + Duration::from_secs(30);
    let caught_up = loop {
        last = group_offsets(&n.app, &n.input, 2);
        let group_ok = last.iter().all(|(c, high)| *c == Some(*high));
        let gauges: Vec<Option<i64>> = (0..2)
            .map(|p| {
                gauge(
                    &handle,
                    "keel_consumer_lag_records",
                    &[("topic", n.input.as_str()), ("partition", &p.to_string())],
                )
            })
            .collect();
        if group_ok && gauges.iter().all(|g| *g == Some(0)) {
            break true;
        }
        if Instant::now() > deadline {
            eprintln!("gauges {gauges:?}");
            break false;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        caught_up,
        "committed vs log end per partition: {last:?} (the group should have committed past the commit markers, and the gauge read 0)"
    );
    handle.shutdown().expect("clean shutdown");
}

/// Fails every record as a dependency failure: nothing is ever committed.
struct AlwaysUnavailable;

impl Processor for AlwaysUnavailable {
    type Key = String;
    type Value = i64;

    fn process(
        &mut self,
        _ctx: &mut Context<'_>,
        _record: Record<String, i64>,
    ) -> Result<(), ProcessError> {
        Err(ProcessError::Dependency("down for the test".into()))
    }
}

#[test]
fn lag_with_nothing_committed_counts_from_the_log_start_not_offset_zero() {
    let n = names("lag_start", 1);
    let records: Vec<(Option<&str>, Option<i64>)> = (0..10).map(|_| (Some("k"), Some(1))).collect();
    produce(&n.input, &records, false);
    // Records 0..4 are deleted: the log starts at 4, 6 records are left to read.
    runtime().block_on(async {
        let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
            ClientConfig::new()
                .set("bootstrap.servers", bootstrap())
                .create()
                .expect("admin");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&n.input, 0, Offset::Offset(4))
            .expect("offset");
        admin
            .delete_records(&tpl, &rdkafka::admin::AdminOptions::new())
            .await
            .expect("records deleted");
    });
    let mut b = TopologyBuilder::new();
    b.add_source("in", &[&n.input], Utf8, I64)
        .add_processor("down", || AlwaysUnavailable, &["in"])
        .add_sink("out", &n.output, Utf8, I64, &["down"]);
    let handle = start(b.build().expect("valid"), config(&n, &n.dir));
    let labels = [("topic", n.input.as_str()), ("partition", "0")];
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = None;
    while Instant::now() < deadline {
        seen = gauge(&handle, "keel_consumer_lag_records", &labels);
        if seen.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        seen,
        Some(6),
        "lag of a partition with no committed offset is log end - log start"
    );
    handle.shutdown().ok();
}

// ---------------------------------------------------------------------------------------------
// Item 16: restore.

#[test]
fn a_null_changelog_key_is_not_restored_as_the_empty_key() {
    let n = names("null_key", 1);
    // A changelog that was not created by Keel (cleanup.policy=delete accepts a null key)
    // holds a record without a key.
    let changelog = format!("{}-sums-changelog", n.app);
    runtime()
        .block_on(create_topics(&bootstrap(), &[&changelog], 1))
        .expect("changelog");
    produce(&changelog, &[(None, Some(100))], false);
    produce(&n.input, &[(Some(""), Some(1))], false);
    let handle = start(
        common::running_sums(&n.input, &n.output),
        config(&n, &n.dir),
    );
    let out = read_sums(&n.output, 1);
    handle.shutdown().expect("clean shutdown");
    assert_eq!(
        out,
        vec![(String::new(), 1)],
        "the sum of the empty key starts from nothing"
    );
}

#[test]
fn a_corrupt_store_is_wiped_and_restored_from_the_changelog() {
    let n = names("corrupt", 1);
    let input = |from: i64| -> Vec<(Option<&'static str>, Option<i64>)> {
        (from..from + 5).map(|v| (Some("k"), Some(v))).collect()
    };
    produce(&n.input, &input(1), false);
    let handle = start(
        common::running_sums(&n.input, &n.output),
        config(&n, &n.dir),
    );
    read_sums(&n.output, 5);
    handle.shutdown().expect("clean shutdown");

    // The store's CURRENT file (which names the manifest) becomes garbage: RocksDB reports
    // corruption when it opens the store.
    let current = n.dir.join(&n.app).join("0_0").join("sums").join("CURRENT");
    assert!(current.exists(), "{} exists", current.display());
    std::fs::write(&current, b"\x00garbage").expect("corrupted");

    produce(&n.input, &input(6), false);
    let handle = start(
        common::running_sums(&n.input, &n.output),
        config(&n, &n.dir),
    );
    let out = read_sums(&n.output, 10);
    assert!(
        handle.is_running(),
        "corruption did not stop the application"
    );
    assert!(counter(&handle, "keel_restored_records_total") > 0.0);
    handle.shutdown().expect("clean shutdown");
    let want: Vec<i64> = (1..=10)
        .scan(0, |s, v| {
            *s += v;
            Some(*s)
        })
        .collect();
    assert_eq!(
        by_key(&out)["k"],
        want,
        "the sums continue from the changelog"
    );
}

// ---------------------------------------------------------------------------------------------
// Item 15: header values.

/// Forwards records whose value is not negative, rejecting the rest as bad input.
struct PassOrReject;

impl Processor for PassOrReject {
    type Key = String;
    type Value = i64;

    fn process(
        &mut self,
        ctx: &mut Context<'_>,
        record: Record<String, i64>,
    ) -> Result<(), ProcessError> {
        if record.value < 0 {
            return Err(ProcessError::BadInput("negative".into()));
        }
        ctx.forward(record);
        Ok(())
    }
}

/// Produces one record with a null header `n` and an empty header `e`.
fn produce_with_headers(topic: &str, key: &str, value: i64) {
    use rdkafka::message::{Header, OwnedHeaders};
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("producer");
    let headers = OwnedHeaders::new()
        .insert(Header::<&[u8]> {
            key: "n",
            value: None,
        })
        .insert(Header {
            key: "e",
            value: Some(&b""[..]),
        });
    let bytes = value.to_be_bytes();
    producer
        .send(
            BaseRecord::to(topic)
                .key(key)
                .payload(&bytes[..])
                .headers(headers),
        )
        .map_err(|(e, _)| e)
        .expect("queued");
    producer.flush(Duration::from_secs(30)).expect("flushed");
}

/// (name, value) of every header of the first committed record of `topic`.
fn first_headers(topic: &str) -> Vec<(String, Option<Vec<u8>>)> {
    use rdkafka::message::{Headers as _, Message as _};
    runtime().block_on(async {
        let c = keel_tests::kafka::consumer(&bootstrap(), "read_committed").expect("consumer");
        let got = keel_tests::kafka::read_topic(
            &c,
            topic,
            1,
            Duration::from_secs(60),
            Duration::from_millis(500),
        )
        .await
        .expect("reads");
        let m = got.first().expect("a record");
        m.headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default()
    })
}

#[test]
fn a_null_header_stays_null_and_an_empty_one_empty_in_output_and_dead_letters() {
    let n = names("headers", 1);
    let dlq = format!("{}-dlq", n.app);
    produce_with_headers(&n.input, "good", 1);
    produce_with_headers(&n.input, "bad", -1);
    let mut b = TopologyBuilder::new();
    b.add_source("in", &[&n.input], Utf8, I64)
        .add_processor("check", || PassOrReject, &["in"])
        .add_sink("out", &n.output, Utf8, I64, &["check"]);
    let handle = start(b.build().expect("valid"), config(&n, &n.dir));
    let out = first_headers(&n.output);
    let dead = first_headers(&dlq);
    handle.shutdown().expect("clean shutdown");
    let pick = |headers: &[(String, Option<Vec<u8>>)], name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        pick(&out, "n"),
        Some(None),
        "output: null stays null: {out:?}"
    );
    assert_eq!(
        pick(&out, "e"),
        Some(Some(Vec::new())),
        "output: empty stays empty"
    );
    assert_eq!(
        pick(&dead, "n"),
        Some(None),
        "dead letter: null stays null: {dead:?}"
    );
    assert_eq!(
        pick(&dead, "e"),
        Some(Some(Vec::new())),
        "dead letter: empty stays empty"
    );
}

// ---------------------------------------------------------------------------------------------
// Item 9: an output the broker refuses.

#[test]
fn an_output_the_broker_refuses_ends_in_the_dead_letter_topic_and_the_stream_goes_on() {
    use keel_topology::dlq_headers;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::message::{Headers as _, Message as _};

    let app = unique("refused_app");
    let input = unique("refused_in");
    let output = unique("refused_out");
    let dir = std::env::temp_dir().join(unique("keel_refused"));
    let _topics = TopicCleanup::new(bootstrap())
        .topics([&input, &output])
        .prefix(format!("{app}-"));
    let dlq = format!("{app}-dlq");
    runtime().block_on(async {
        let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .create()
            .expect("admin");
        // The output topic takes no timestamp more than a minute ahead; the input takes any.
        let topics = [
            NewTopic::new(&input, 1, TopicReplication::Fixed(1)),
            NewTopic::new(&output, 1, TopicReplication::Fixed(1))
                .set("message.timestamp.after.max.ms", "60000"),
        ];
        for r in admin
            .create_topics(&topics, &AdminOptions::new())
            .await
            .expect("created")
        {
            r.expect("topic");
        }
    });
    let ahead = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
        + 3_600_000;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("producer");
    for (key, value, ts) in [("a", 1i64, None), ("a", 2, Some(ahead)), ("a", 3, None)] {
        let bytes = value.to_be_bytes();
        let mut r: BaseRecord<'_, str, [u8]> = BaseRecord::to(&input).key(key).payload(&bytes[..]);
        if let Some(ts) = ts {
            r = r.timestamp(ts);
        }
        producer.send(r).map_err(|(e, _)| e).expect("queued");
    }
    producer.flush(Duration::from_secs(30)).expect("flushed");

    let handle = start(
        common::running_sums(&input, &output),
        app_config(&app, &dir),
    );
    let out = common::read_decoded(
        &bootstrap(),
        &output,
        2,
        Duration::from_secs(40),
        Duration::from_secs(2),
    );
    let dead = runtime().block_on(async {
        let c = keel_tests::kafka::consumer(&bootstrap(), "read_committed").expect("consumer");
        keel_tests::kafka::read_topic(&c, &dlq, 1, Duration::from_secs(20), Duration::from_secs(1))
            .await
            .expect("reads")
    });
    let running = handle.is_running();
    handle.shutdown().ok();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        out,
        vec![("a".to_owned(), 1), ("a".to_owned(), 4)],
        "the refused record left no trace; the stream went on"
    );
    assert!(running);
    assert_eq!(dead.len(), 1, "one dead letter");
    let m = &dead[0];
    assert_eq!(
        m.payload(),
        Some(&2i64.to_be_bytes()[..]),
        "the input record"
    );
    let ts = m.timestamp().to_millis().expect("timestamp");
    assert!(ts < ahead - 3_000_000, "a timestamp the broker takes: {ts}");
    let header = |name: &str| {
        m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
        })
    };
    assert_eq!(
        header(dlq_headers::SOURCE_TIMESTAMP).as_deref(),
        Some(ahead.to_string().as_str())
    );
    assert!(
        header(dlq_headers::ERROR).is_some_and(|e| e.contains("refused")),
        "{:?}",
        header(dlq_headers::ERROR)
    );
}

/// Creates `input` with `partitions` and `output` with one partition taking batches of at
/// most 2 KiB (`max.message.bytes`), so an output over that is refused by the broker.
fn create_refusing_topics(input: &str, partitions: i32, output: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    runtime().block_on(async {
        let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .create()
            .expect("admin");
        let topics = [
            NewTopic::new(input, partitions, TopicReplication::Fixed(1)),
            NewTopic::new(output, 1, TopicReplication::Fixed(1)).set("max.message.bytes", "2048"),
        ];
        for r in admin
            .create_topics(&topics, &AdminOptions::new())
            .await
            .expect("created")
        {
            r.expect("topic");
        }
    });
}

/// An application whose output topic takes batches of at most 2 KiB, and its input: `a`=1,
/// then a 4 KiB key =2, then `a`=3. The running sum echoes its input's key, so the second
/// output is one the broker refuses (the producer's own limit, 1 MB, lets it through).
fn too_big(tag: &str) -> (String, String, String, PathBuf, String, TopicCleanup) {
    let app = unique(&format!("{tag}_app"));
    let input = unique(&format!("{tag}_in"));
    let output = unique(&format!("{tag}_out"));
    let dir = std::env::temp_dir().join(unique(&format!("keel_{tag}")));
    let topics = TopicCleanup::new(bootstrap())
        .topics([&input, &output])
        .prefix(format!("{app}-"));
    // The input (and the changelog, the dead-letter topic) take the broker's default.
    create_refusing_topics(&input, 1, &output);
    let big = "k".repeat(4096);
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("producer");
    for (key, value) in [("a", 1i64), (big.as_str(), 2), ("a", 3)] {
        let bytes = value.to_be_bytes();
        let r: BaseRecord<'_, str, [u8]> = BaseRecord::to(&input).key(key).payload(&bytes[..]);
        producer.send(r).map_err(|(e, _)| e).expect("queued");
    }
    producer.flush(Duration::from_secs(30)).expect("flushed");
    (app, input, output, dir, big, topics)
}

#[test]
fn an_output_over_the_topics_max_message_bytes_ends_in_the_dead_letter_topic_and_the_stream_goes_on()
 {
    use keel_topology::dlq_headers;
    use rdkafka::message::{Headers as _, Message as _};

    let (app, input, output, dir, big, _topics) = too_big("too_big");
    let dlq = format!("{app}-dlq");
    let handle = start(
        common::running_sums(&input, &output),
        app_config(&app, &dir),
    );
    let out = common::read_decoded(
        &bootstrap(),
        &output,
        2,
        Duration::from_secs(40),
        Duration::from_secs(2),
    );
    let dead = runtime().block_on(async {
        let c = keel_tests::kafka::consumer(&bootstrap(), "read_committed").expect("consumer");
        keel_tests::kafka::read_topic(&c, &dlq, 1, Duration::from_secs(20), Duration::from_secs(1))
            .await
            .expect("reads")
    });
    let stored = handle.get("sums", &input, big.as_bytes()).ok().flatten();
    let running = handle.is_running();
    handle.shutdown().ok();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        out,
        vec![("a".to_owned(), 1), ("a".to_owned(), 4)],
        "the refused record left no trace in the output; the stream went on"
    );
    assert_eq!(stored, None, "nor in the store");
    assert!(running);
    assert_eq!(dead.len(), 1, "one dead letter");
    let m = &dead[0];
    assert_eq!(m.key(), Some(big.as_bytes()), "the input record's key");
    assert_eq!(
        m.payload(),
        Some(&2i64.to_be_bytes()[..]),
        "the input record's value"
    );
    let error = m.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key == dlq_headers::ERROR)
            .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
    });
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("refused") && e.contains("too large")),
        "{error:?}"
    );
}

/// Two inputs on different partitions whose outputs the broker refuses in one batch (with the
/// outputs of good inputs beside them), each input written in a transaction of its own: every
/// suspect is replayed alone, the two culprits are dead-lettered, and no other input is lost
/// or counted twice — across the thread restarts and the restores of the running sums between
/// them. (The failpoint test `a_restarted_thread_commits_no_position_past_its_aborted_interval`
/// pins the timing of the loss this scenario once showed in `keel run`.)
#[test]
fn refused_outputs_from_several_partitions_lose_no_other_input() {
    use rdkafka::message::Message as _;

    const PARTITIONS: i32 = 3;
    let app = unique("refused_many_app");
    let input = unique("refused_many_in");
    let output = unique("refused_many_out");
    let dir = std::env::temp_dir().join(unique("keel_refused_many"));
    let _topics = TopicCleanup::new(bootstrap())
        .topics([&input, &output])
        .prefix(format!("{app}-"));
    create_refusing_topics(&input, PARTITIONS, &output);
    // Each record in a transaction of its own, as Keel's own outputs are: a commit marker
    // follows every record.
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("transactional.id", unique("refused_many_txn"))
        .create()
        .expect("producer");
    let timeout = Duration::from_secs(30);
    producer.init_transactions(timeout).expect("init");
    let big = |p: i32| format!("{p}").repeat(4096);
    let mut expected: Vec<(String, i64)> = Vec::new();
    for p in 0..PARTITIONS {
        let (a, b) = (format!("a{p}"), format!("b{p}"));
        let mut records = vec![(a.clone(), 1i64), (b.clone(), 5)];
        if p < 2 {
            records.push((big(p), 2));
        }
        records.extend([(a.clone(), 3), (b.clone(), 1)]);
        expected.extend([(a.clone(), 1), (b.clone(), 5), (a, 4), (b, 6)]);
        for (key, value) in &records {
            let bytes = value.to_be_bytes();
            let r: BaseRecord<'_, str, [u8]> = BaseRecord::to(&input)
                .partition(p)
                .key(key.as_str())
                .payload(&bytes[..]);
            producer.begin_transaction().expect("begin");
            producer.send(r).map_err(|(e, _)| e).expect("queued");
            producer.commit_transaction(timeout).expect("commit");
        }
    }

    let handle = start(
        common::running_sums(&input, &output),
        app_config(&app, &dir),
    );
    let out = common::read_decoded(
        &bootstrap(),
        &output,
        expected.len(),
        Duration::from_secs(60),
        Duration::from_secs(3),
    );
    let dead = runtime().block_on(async {
        let c = keel_tests::kafka::consumer(&bootstrap(), "read_committed").expect("consumer");
        keel_tests::kafka::read_topic(
            &c,
            &format!("{app}-dlq"),
            2,
            Duration::from_secs(20),
            Duration::from_secs(2),
        )
        .await
        .expect("reads")
    });
    let running = handle.is_running();
    handle.shutdown().ok();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        by_key(&out),
        by_key(&expected),
        "every good input's output once, in order per key"
    );
    assert!(running);
    let mut dead_keys: Vec<Vec<u8>> = dead
        .iter()
        .map(|m| m.key().unwrap_or_default().to_vec())
        .collect();
    dead_keys.sort();
    assert_eq!(
        dead_keys,
        vec![big(0).into_bytes(), big(1).into_bytes()],
        "the two culprits, dead-lettered once each"
    );
}

#[test]
fn an_output_over_the_topics_max_message_bytes_stops_the_application_under_the_stop_policy() {
    let (app, input, output, dir, _big, _topics) = too_big("too_big_stop");
    let mut c = app_config(&app, &dir);
    c.on_bad_record = keel_topology::BadRecordPolicy::Stop;
    let handle = start(common::running_sums(&input, &output), c);
    let deadline = Instant::now() + Duration::from_secs(60);
    while handle.is_running() {
        assert!(
            Instant::now() < deadline,
            "still running (replaying the refused output forever?)"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let error = handle.wait().expect_err("stopped with an error");
    let _ = std::fs::remove_dir_all(&dir);
    let message = error.to_string();
    assert!(
        message.contains("refused") && message.contains("on_bad_record = stop"),
        "{message}"
    );
    assert_eq!(error.action(), keel_topology::Action::Stop);
}

// ---------------------------------------------------------------------------------------------
// Item 13: a second instance with the same instance id.

#[test]
fn the_older_of_two_instances_with_one_instance_id_stops_with_a_clear_error() {
    let n = names("dup_instance", 1);
    let first: Vec<(Option<&str>, Option<i64>)> = (1..=5).map(|v| (Some("k"), Some(v))).collect();
    produce(&n.input, &first, false);
    let older = start(
        common::running_sums(&n.input, &n.output),
        config(&n, &n.dir),
    );
    assert_eq!(read_sums(&n.output, 5).len(), 5);
    // Same application, same instance id, another machine (state directory).
    let other_dir = std::env::temp_dir().join(unique("keel_dup_other"));
    let newer = start(
        common::running_sums(&n.input, &n.output),
        config(&n, &other_dir),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while older.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let stopped = !older.is_running();
    // (A still-running instance is shut down, so the test fails instead of hanging.)
    let error = if stopped {
        older.wait()
    } else {
        older.shutdown()
    }
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    let second: Vec<(Option<&str>, Option<i64>)> = (6..=7).map(|v| (Some("k"), Some(v))).collect();
    produce(&n.input, &second, false);
    let out = read_sums(&n.output, 7);
    let newer_running = newer.is_running();
    newer.shutdown().ok();
    let _ = std::fs::remove_dir_all(&other_dir);
    assert!(
        stopped,
        "the fenced instance stopped instead of fencing back"
    );
    assert!(
        error.contains("instance_id"),
        "the reason names the cause: {error}"
    );
    assert!(newer_running, "the newer instance runs on");
    assert_eq!(
        by_key(&out)["k"],
        vec![1, 3, 6, 10, 15, 21, 28],
        "no duplicate, no gap"
    );
}

// ---------------------------------------------------------------------------------------------
// Item 11: a stale checkpoint.

#[test]
fn a_checkpoint_from_another_history_of_the_changelog_is_not_trusted() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let n = names("stale", 1);
    let first: Vec<(Option<&str>, Option<i64>)> = (1..=3).map(|v| (Some("k"), Some(v))).collect();
    produce(&n.input, &first, false);
    let handle = start(
        common::running_sums(&n.input, &n.output),
        config(&n, &n.dir),
    );
    assert_eq!(read_sums(&n.output, 3).len(), 3);
    handle
        .shutdown()
        .expect("clean shutdown writes the checkpoint");

    // The changelog is deleted and created again, empty: the local state (sum 6 at changelog
    // offset 2) is from a history the changelog no longer has.
    let changelog = format!("{}-sums-changelog", n.app);
    runtime().block_on(async {
        let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .create()
            .expect("admin");
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        admin
            .delete_topics(&[&changelog], &opts)
            .await
            .expect("deleted");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let topic = NewTopic::new(&changelog, 1, TopicReplication::Fixed(1))
                .set("cleanup.policy", "compact");
            let created = admin.create_topics(&[topic], &opts).await.expect("asked");
            if created.iter().all(Result::is_ok) {
                break;
            }
            assert!(Instant::now() < deadline, "recreated: {created:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    produce(&n.input, &[(Some("k"), Some(100))], false);
    let handle = start(
        common::running_sums(&n.input, &n.output),
        config(&n, &n.dir),
    );
    let out = read_sums(&n.output, 4);
    let running = handle.is_running();
    handle.shutdown().ok();
    assert!(running);
    assert_eq!(
        out.last(),
        Some(&("k".to_owned(), 100)),
        "the store restarted from the (empty) changelog, not from the stale local state: {out:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Item 10: stream time across a restart.

#[test]
fn stream_time_is_committed_with_the_offsets_and_resumed_after_a_restart() {
    let n = names("clock_restart", 1);
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
        - 60_000;
    let send = |key: &str, ts: i64| {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .create()
            .expect("producer");
        let bytes = 1i64.to_be_bytes();
        producer
            .send(
                BaseRecord::to(&n.input)
                    .key(key)
                    .payload(&bytes[..])
                    .timestamp(ts),
            )
            .map_err(|(e, _)| e)
            .expect("queued");
        producer.flush(Duration::from_secs(30)).expect("flushed");
    };
    let topology = || {
        common::ticker_every(
            &n.input,
            &n.output,
            Duration::from_secs(10),
            Duration::from_secs(3_600),
        )
    };
    send("a", base);
    let handle = start(topology(), config(&n, &n.dir));
    let deadline = Instant::now() + Duration::from_secs(30);
    while group_offsets(&n.app, &n.input, 1)[0].0 != Some(1) {
        assert!(Instant::now() < deadline, "the first record was committed");
        std::thread::sleep(Duration::from_millis(200));
    }
    handle.shutdown().expect("clean shutdown");
    // Stream time was base; the 10 s punctuation is due at base + 10 s. The next record, at
    // base + 15 s, after a restart, fires it.
    send("b", base + 15_000);
    let handle = start(topology(), config(&n, &n.dir));
    let out = common::read_decoded(
        &bootstrap(),
        &n.output,
        1,
        Duration::from_secs(20),
        Duration::from_secs(1),
    );
    handle.shutdown().ok();
    assert!(
        out.iter().any(|(k, _)| k == "stream:stream"),
        "the stream-time punctuation due before the restart fired after it: {out:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Item 12: a paused instance (a zombie) cannot commit punctuation output.

/// Forwards nothing per record; every 200 ms of wall clock emits (its tag, wall ms).
struct Beat {
    tag: String,
}

impl Processor for Beat {
    type Key = String;
    type Value = i64;

    fn init(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        ctx.schedule(
            "beat",
            Duration::from_millis(200),
            keel_topology::PunctuationType::WallClock,
        );
        Ok(())
    }

    fn process(
        &mut self,
        _ctx: &mut Context<'_>,
        _record: Record<String, i64>,
    ) -> Result<(), ProcessError> {
        Ok(())
    }

    fn punctuate(
        &mut self,
        ctx: &mut Context<'_>,
        p: &keel_topology::Punctuation,
    ) -> Result<(), ProcessError> {
        ctx.forward(Record::new(self.tag.clone(), p.timestamp, p.timestamp));
        Ok(())
    }
}

fn beat(input: &str, output: &str, tag: &str) -> Topology {
    let tag = tag.to_owned();
    let mut b = TopologyBuilder::new();
    b.add_source("in", &[input], Utf8, I64)
        .add_processor("beat", move || Beat { tag: tag.clone() }, &["in"])
        .add_sink("out", output, Utf8, I64, &["beat"]);
    b.build().expect("valid")
}

/// The instance the fencing test runs in a process of its own (this test binary, run again
/// with `KEEL_FENCE_CHILD=<app>|<input>|<output>|<dir>`), so that it can be paused with
/// SIGSTOP. Does nothing in a normal run.
#[test]
#[ignore = "run by a_paused_instance_that_lost_its_partitions_cannot_commit_punctuation_output"]
fn fencing_child() {
    let Ok(spec) = std::env::var("KEEL_FENCE_CHILD") else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let (app, input, output, dir) = (parts[0], parts[1], parts[2], parts[3]);
    let mut c = StreamsConfig::new(app, bootstrap());
    c.state = StateConfig::with_dir(dir);
    c.instance_id = Some("child".to_owned());
    c.consumer
        .insert("session.timeout.ms".into(), "6000".into());
    let _handle = start(beat(input, output, "child"), c);
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

#[test]
fn a_paused_instance_that_lost_its_partitions_cannot_commit_punctuation_output() {
    let n = names("zombie", 1);
    // One input record, so the group has a committed position to carry.
    produce(&n.input, &[(Some("k"), Some(1))], false);
    let child_dir = std::env::temp_dir().join(unique("keel_zombie_child"));
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "fencing_child",
            "--include-ignored",
            "--nocapture",
        ])
        .env(
            "KEEL_FENCE_CHILD",
            format!("{}|{}|{}|{}", n.app, n.input, n.output, child_dir.display()),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("child instance");
    /// Kills the child process however the test ends.
    struct KillOnDrop(u32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
    let _guard = KillOnDrop(child.id());
    let signal = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .expect("kill")
    };
    let records = || -> Vec<(String, i64)> {
        common::read_decoded(
            &bootstrap(),
            &n.output,
            usize::MAX,
            Duration::from_secs(4),
            Duration::ZERO,
        )
    };
    // The child owns the partition and commits beats.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !records().iter().any(|(k, _)| k == "child") {
        assert!(Instant::now() < deadline, "the child commits beats");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while group_offsets(&n.app, &n.input, 1)[0].0 != Some(1) {
        assert!(
            Instant::now() < deadline,
            "the child committed the input record"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(signal("-STOP").success());
    // Past the session timeout the partition goes to the other instance.
    let handle = start(beat(&n.input, &n.output, "other"), config(&n, &n.dir));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !records().iter().any(|(k, _)| k == "other") {
        assert!(Instant::now() < deadline, "the other instance took over");
    }
    let resumed = now_ms();
    assert!(signal("-CONT").success());
    std::thread::sleep(Duration::from_secs(8));
    let _ = child.kill();
    let _ = child.wait();
    let after: Vec<(String, i64)> = records()
        .into_iter()
        .filter(|(k, at)| k == "child" && *at >= resumed)
        .collect();
    handle.shutdown().ok();
    let _ = std::fs::remove_dir_all(&child_dir);
    assert!(
        after.is_empty(),
        "the zombie committed {} beats after it lost its partition: {:?}",
        after.len(),
        after.iter().take(5).collect::<Vec<_>>()
    );
}
