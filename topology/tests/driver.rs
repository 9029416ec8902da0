//! The runtime's rules, exercised in-process through the test driver (no broker).

mod common;

use std::time::Duration;

use keel_topology::serde::{I64, Utf8};
use keel_topology::{DriverConfig, TestDriver, dlq_headers};

fn pipe(d: &mut TestDriver, key: &str, value: i64, ts: i64) {
    d.pipe("in", &key.to_owned(), &value, ts, &Utf8, &I64)
        .expect("processed");
}

#[test]
fn running_sums_emit_one_output_per_input_and_keep_the_store() {
    let mut d = TestDriver::new(common::running_sums("in", "out")).expect("driver");
    let input = [("a", 1), ("b", 10), ("a", 2), ("a", 3), ("b", 5)];
    for (i, (k, v)) in input.iter().enumerate() {
        pipe(&mut d, k, *v, 1_000 + i as i64);
    }
    let out = d.read_output_as("out", &Utf8, &I64).expect("decodes");
    let expected: Vec<(String, i64)> = [("a", 1), ("b", 10), ("a", 3), ("a", 6), ("b", 15)]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), *v))
        .collect();
    assert_eq!(out, expected);
    assert_eq!(
        d.kv_get("sums", b"a").expect("reads"),
        Some(6i64.to_be_bytes().to_vec())
    );
    assert_eq!(
        d.changelog("sums", 0).len(),
        5,
        "every write is changelogged"
    );
}

#[test]
fn undecodable_and_rejected_records_are_dead_lettered_and_the_stream_goes_on() {
    let mut d = TestDriver::new(common::running_sums("in", "out")).expect("driver");
    d.pipe_raw("in", Some(b"a"), Some(b"not-8-bytes"), 5)
        .expect("dead-lettered, not failed");
    pipe(&mut d, "a", -4, 6);
    pipe(&mut d, "a", 7, 7);

    let dead = d.dead_letters();
    assert_eq!(dead.len(), 2);
    let first = &dead[0];
    assert_eq!(
        first.value.as_deref(),
        Some(&b"not-8-bytes"[..]),
        "the original bytes are kept"
    );
    assert_eq!(first.headers.get_str(dlq_headers::SOURCE_TOPIC), Some("in"));
    assert_eq!(first.headers.get_str(dlq_headers::SOURCE_OFFSET), Some("0"));
    assert_eq!(first.headers.get_str(dlq_headers::PROCESSOR), Some("in"));
    assert!(
        first
            .headers
            .get_str(dlq_headers::ERROR)
            .is_some_and(|e| e.contains("8 bytes")),
        "{:?}",
        first.headers
    );
    let second = &dead[1];
    assert_eq!(second.headers.get_str(dlq_headers::PROCESSOR), Some("sum"));
    assert!(
        second
            .headers
            .get_str(dlq_headers::ERROR)
            .is_some_and(|e| e.contains("negative"))
    );

    let out = d.read_output_as("out", &Utf8, &I64).expect("decodes");
    assert_eq!(
        out,
        vec![("a".to_owned(), 7)],
        "the good record after them is processed"
    );
}

#[test]
fn a_stop_policy_turns_a_bad_record_into_an_error() {
    let config = DriverConfig {
        on_bad_record: keel_topology::BadRecordPolicy::Stop,
        ..DriverConfig::default()
    };
    let mut d = TestDriver::with_config(common::running_sums("in", "out"), config).expect("driver");
    let err = d.pipe_raw("in", Some(b"a"), None, 1).expect_err("stops");
    assert!(err.to_string().contains("policy is to stop"), "{err}");
}

#[test]
fn state_comes_back_from_the_changelog_after_the_local_stores_are_wiped() {
    let config = DriverConfig {
        partitions: [("in".to_owned(), 4)].into(),
        ..DriverConfig::default()
    };
    let mut d = TestDriver::with_config(common::running_sums("in", "out"), config).expect("driver");
    for i in 0..200 {
        pipe(&mut d, &format!("k{}", i % 17), i, i);
    }
    d.read_output("out");
    d.restart(true).expect("restart with wiped state");
    pipe(&mut d, "k3", 1_000, 500);
    let out = d.read_output_as("out", &Utf8, &I64).expect("decodes");
    let before: i64 = (0..200).filter(|i| i % 17 == 3).sum();
    assert_eq!(out, vec![("k3".to_owned(), before + 1_000)]);
}

#[test]
fn punctuators_fire_on_stream_time_and_wall_clock_and_timers_survive_a_restart() {
    let mut d = TestDriver::new(common::ticker("in", "out")).expect("driver");
    pipe(&mut d, "a", 1, 0); // arms the stream-time punctuator at 0, next at 10 s
    pipe(&mut d, "b", 1, 5_000);
    assert!(
        d.read_output("out").is_empty(),
        "nothing is due before 10 s of stream time"
    );

    pipe(&mut d, "c", 1, 10_000); // stream time 10 s: fires; timers a (1 s), b (6 s) are due
    let out = d.read_output_as("out", &Utf8, &I64).expect("decodes");
    assert_eq!(out, vec![("stream:stream".to_owned(), 2)]);

    // Timer c (due 11 s) is durable: it survives a restart with wiped local state.
    d.restart(true).expect("restart");
    d.advance_wall_clock(Duration::from_secs(30))
        .expect("arms the wall-clock punctuator");
    assert!(d.read_output("out").is_empty());
    d.advance_wall_clock(Duration::from_secs(60))
        .expect("fires");
    let out = d.read_output_as("out", &Utf8, &I64).expect("decodes");
    assert_eq!(
        out,
        vec![("wall:wall".to_owned(), 1)],
        "timer c fired on the wall clock"
    );
}

#[test]
fn repartitioned_records_reach_the_task_of_their_new_key() {
    use keel_topology::{StoreKind, TopologyBuilder};

    let mut b = TopologyBuilder::new();
    b.add_source("in", &["lines"], Utf8, I64)
        .add_processor("by-sku", || common::BySku, &["in"])
        .add_repartition::<String, i64, _, _>("sku", Utf8, I64, &["by-sku"])
        .add_processor("sum", || common::RunningSum, &["sku"])
        .add_state_store("sums", StoreKind::KeyValue, &["sum"])
        .add_sink("out", "totals", Utf8, I64, &["sum"]);
    let config = DriverConfig {
        partitions: [("lines".to_owned(), 3)].into(),
        ..DriverConfig::default()
    };
    let mut d = TestDriver::with_config(b.build().expect("valid"), config).expect("driver");
    for (order, sku, qty) in [
        ("o1", "mug", 2),
        ("o2", "mug", 3),
        ("o3", "plate", 1),
        ("o4", "mug", 1),
    ] {
        d.pipe("lines", &format!("{order}:{sku}"), &qty, 1, &Utf8, &I64)
            .expect("processed");
    }
    let mut out = d.read_output_as("totals", &Utf8, &I64).expect("decodes");
    out.sort();
    assert_eq!(
        out,
        vec![
            ("mug".into(), 2),
            ("mug".into(), 5),
            ("mug".into(), 6),
            ("plate".into(), 1)
        ],
        "one running total per sku, whatever order partition the lines came from"
    );
}

#[test]
fn a_sink_partitioner_picks_the_output_partition() {
    use keel_topology::TopologyBuilder;
    let mut b = TopologyBuilder::new();
    b.add_source("in", &["in"], Utf8, I64)
        .add_sink_with_partitioner(
            "out",
            "out",
            Utf8,
            I64,
            |_key: &String, value: &i64, partitions| (*value % i64::from(partitions)) as i32,
            &["in"],
        );
    let config = DriverConfig {
        partitions: [("out".to_owned(), 3)].into(),
        ..DriverConfig::default()
    };
    let mut d = TestDriver::with_config(b.build().expect("valid"), config).expect("driver");
    for v in [4, 5, 6, -1] {
        pipe(&mut d, "k", v, 1);
    }
    let partitions: Vec<Option<i32>> = d.read_output("out").iter().map(|r| r.partition).collect();
    assert_eq!(
        partitions,
        vec![Some(1), Some(2), Some(0), Some(2)],
        "-1 wraps to the last partition"
    );
}

/// Forwards, per record, where it came from: `<partition>/<partition count>`.
struct Whereabouts;

impl keel_topology::Processor for Whereabouts {
    type Key = String;
    type Value = i64;

    fn process(
        &mut self,
        ctx: &mut keel_topology::Context<'_>,
        record: keel_topology::Record<String, i64>,
    ) -> Result<(), keel_topology::ProcessError> {
        let meta = ctx.metadata().expect("a record has metadata");
        let text = format!("{}/{:?}", meta.partition, meta.partitions);
        ctx.forward(record.with(String::new(), text));
        Ok(())
    }
}

#[test]
fn a_processor_sees_its_records_partition_and_the_topics_partition_count() {
    use keel_topology::{Headers, TopologyBuilder, default_partition};
    let mut b = TopologyBuilder::new();
    b.add_source("in", &["in"], Utf8, I64)
        .add_processor("where", || Whereabouts, &["in"])
        .add_sink("out", "out", Utf8, Utf8, &["where"]);
    let config = DriverConfig {
        partitions: [("in".to_owned(), 3)].into(),
        ..DriverConfig::default()
    };
    let mut d = TestDriver::with_config(b.build().expect("valid"), config).expect("driver");
    // Where murmur2 puts the key, then where another partitioner might.
    let own = default_partition(b"k", 3);
    let other = (own + 1) % 3;
    pipe(&mut d, "k", 1, 1);
    d.pipe_to_partition(
        "in",
        other,
        Some(b"k"),
        Some(&2i64.to_be_bytes()),
        2,
        Headers::default(),
    )
    .expect("processed");
    let seen: Vec<String> = d
        .read_output_as("out", &Utf8, &Utf8)
        .expect("decodes")
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        seen,
        vec![format!("{own}/Some(3)"), format!("{other}/Some(3)")]
    );
    let err = d
        .pipe_to_partition(
            "in",
            3,
            Some(b"k"),
            Some(&3i64.to_be_bytes()),
            3,
            Headers::default(),
        )
        .expect_err("no partition 3");
    assert!(err.to_string().contains("no partition 3"), "{err}");
}

#[test]
fn an_undecodable_record_does_not_move_stream_time() {
    // Stream-time punctuator every 10 s, a timer per key due 1 s after its record.
    let mut d = TestDriver::new(common::ticker("in", "out")).expect("driver");
    pipe(&mut d, "a", 1, 1_000); // arms the punctuator (next at 11 s); timer a due at 2 s
    d.pipe_raw("in", Some(b"b"), Some(b"not-8-bytes"), 1_000 + 3_600_000)
        .expect("dead-lettered, not failed");
    assert_eq!(d.dead_letters().len(), 1);
    assert!(
        d.read_output("out").is_empty(),
        "a dead-lettered record an hour ahead fires no stream-time punctuation"
    );
    // The next good record moves stream time to 11 s: the punctuation fires once and timer a,
    // still pending, fires in it.
    pipe(&mut d, "c", 1, 11_000);
    let out = d.read_output_as("out", &Utf8, &I64).expect("decodes");
    assert_eq!(out, vec![("stream:stream".to_owned(), 1)]);
}

#[test]
fn a_record_rejected_deep_in_the_graph_leaves_no_trace_but_its_dead_letter() {
    let mut d = TestDriver::new(common::count_then_check("in")).expect("driver");
    pipe(&mut d, "a", 1, 1_000);
    pipe(&mut d, "a", -1, 5_000);

    assert_eq!(
        d.kv_get("counts", b"a").expect("reads"),
        Some(1i64.to_be_bytes().to_vec()),
        "the rejected record's count write is rolled back"
    );
    let seen = d.read_output_as("seen", &Utf8, &I64).expect("decodes");
    assert_eq!(
        seen,
        vec![("a".to_owned(), 1)],
        "the output the counter made for the rejected record is dropped"
    );
    let checked = d.read_output_as("checked", &Utf8, &I64).expect("decodes");
    assert_eq!(checked, vec![("a".to_owned(), 1)]);
    let dead = d.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].headers.get_str(dlq_headers::PROCESSOR),
        Some("check")
    );

    assert_eq!(
        d.changelog("counts", 0).len(),
        1,
        "no changelog for the rejected write"
    );
    let timers = d.changelog("timers", 0);
    assert_eq!(
        timers.len(),
        1,
        "the timer the rejected record moved is not changelogged"
    );
    let due = timers[0]
        .2
        .as_deref()
        .and_then(|v| v.get(1..9))
        .map(|t| i64::from_be_bytes(t.try_into().expect("8 bytes")));
    assert_eq!(
        due,
        Some(2_000),
        "timer a stays due 1 s after the good record"
    );
    assert_eq!(
        d.timer("timers", b"a").expect("reads").map(|t| t.due),
        Some(2_000),
        "the store holds the good record's timer, not the rejected one's"
    );
    assert_eq!(d.timer("timers", b"rejected").expect("reads"), None);

    // The stream goes on from the good record's state.
    pipe(&mut d, "a", 5, 6_000);
    assert_eq!(
        d.kv_get("counts", b"a").expect("reads"),
        Some(2i64.to_be_bytes().to_vec())
    );
}

#[test]
fn processors_are_closed_when_their_task_closes_cleanly() {
    let closed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let config = DriverConfig {
        partitions: [("in".to_owned(), 3)].into(),
        ..DriverConfig::default()
    };
    let mut d =
        TestDriver::with_config(common::closing("in", closed.clone()), config).expect("driver");
    pipe(&mut d, "a", 1, 1);
    assert_eq!(closed.load(std::sync::atomic::Ordering::SeqCst), 0);
    d.restart(false).expect("restart");
    assert_eq!(
        closed.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "one close per task (partition) on a clean close"
    );
}
