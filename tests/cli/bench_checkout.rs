//! The benchmarks run end to end, at sizes that take seconds; nothing here asserts a speed
//! (speed is benchmarked, never tested):
//!
//! - `keel bench checkout` against an isolated `keel run` and `keel psp-mock`: a few seconds at
//!   a low rate write a JSON result with confirmed orders, their latencies and the servers' CPU,
//!   and a valid SVG chart.
//! - The Kafka Streams reference of `keel bench engine --vs kafka-streams`
//!   (bench/kstreams-reference) builds with Maven and sums a small input exactly as the engine
//!   benchmark's workload does; skipped when `mvn` or `java` is missing (scripts/bootstrap
//!   installs both; the first build resolves from Maven Central, later ones offline from ~/.m2)
//!   or with `KEEL_SKIP_KSTREAMS=1`.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Run, wait_ready};
use keel_tests::topics::TopicCleanup;
use keel_tests::{Stack, unique};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn bench_checkout_writes_a_result_with_confirmed_orders_and_a_chart() {
    let stack = Stack::from_env();
    let (name, run) = Run::new(&stack).await;
    let _psp = run.spawn("psp-mock", &["psp-mock"]);
    let mut keel = run.spawn("keel run", &["run"]);
    let client = reqwest::Client::new();
    wait_ready(&client, &run.api, Duration::from_secs(120)).await;
    // As in cli_checkout: let the runtime's periodic work run once before the first order.
    tokio::time::sleep(Duration::from_secs(7)).await;

    let out_dir = tempfile::tempdir().expect("an output directory");
    let out_path = out_dir.path().to_str().expect("a UTF-8 path").to_owned();
    let output = run
        .keel(&[
            "bench",
            "checkout",
            "--rate",
            "4",
            "--duration-s",
            "3",
            "--skus",
            "3",
            "--drain-timeout-s",
            "90",
            "--warmup-s",
            "2",
            "--idle-s",
            "1",
            "--no-progress",
            "--out-dir",
            &out_path,
        ])
        .output()
        .expect("keel bench checkout runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("keel bench checkout: {}\n{stdout}\n{stderr}", output.status);
    assert!(output.status.success(), "keel bench checkout failed");

    let files: Vec<std::path::PathBuf> = std::fs::read_dir(out_dir.path())
        .expect("the output directory")
        .map(|e| e.expect("an entry").path())
        .collect();
    let json = files
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .unwrap_or_else(|| panic!("no JSON result in {files:?}"));
    let svg = files
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "svg"))
        .unwrap_or_else(|| panic!("no SVG chart in {files:?}"));
    let result: Value =
        serde_json::from_slice(&std::fs::read(json).expect("the result")).expect("JSON");

    // 4 orders/s for 3 s were due; they were placed and confirmed.
    assert_eq!(result["due"], 12, "{result:#}");
    let confirmed = result["confirmed"].as_u64().expect("confirmed");
    assert!(confirmed > 0, "nothing confirmed: {result:#}");
    assert_eq!(result["accepted"], 12, "{result:#}");
    assert_eq!(
        result["latency"]["count"].as_u64(),
        Some(confirmed),
        "one latency per confirmed order: {result:#}"
    );
    assert!(
        result["latency"]["p50_ms"]
            .as_f64()
            .is_some_and(|v| v > 0.0)
            && result["latency"]["p999_ms"].as_f64() >= result["latency"]["p50_ms"].as_f64(),
        "{result:#}"
    );
    assert!(
        result["errors"].as_object().is_some_and(|e| e.is_empty()),
        "errors: {result:#}"
    );
    assert_eq!(
        result["confirmed_on"],
        format!("{name}.order.status.changed"),
        "{result:#}"
    );
    // The CPU of Keel (found by the API's port) and of the stack's broker was measured.
    let processes: Vec<&str> = result["cpu"]["processes"]
        .as_array()
        .expect("cpu.processes")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for wanted in ["keel", "psp-mock", "kafka"] {
        assert!(
            processes.contains(&wanted),
            "no CPU figure for {wanted}: {processes:?}"
        );
    }
    assert!(stdout.contains("POST → CONFIRMED"), "{stdout}");

    // The chart is an SVG document with the three series.
    let chart = std::fs::read_to_string(svg).expect("the chart");
    assert!(chart.trim_start().starts_with("<svg"), "{chart:.200}");
    assert!(chart.trim_end().ends_with("</svg>"), "not a whole SVG");
    for label in ["p50", "p99", "max"] {
        assert!(
            chart.contains(&format!(">{label}<")) || chart.contains(&format!(">\n{label}\n<")),
            "the chart has no {label} series"
        );
    }
    assert!(chart.contains("<polyline"), "the chart draws no line");

    let status = keel
        .terminate(Duration::from_secs(60))
        .expect("keel run stops on SIGTERM");
    assert!(status.success(), "keel run exited with {status}");
    run.clean_up(&stack, &name).await;
}

fn on_path(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn the_kafka_streams_reference_builds_and_sums_a_small_input() {
    if std::env::var_os("KEEL_SKIP_KSTREAMS").is_some() || !on_path("mvn") || !on_path("java") {
        eprintln!("skipped: KEEL_SKIP_KSTREAMS is set, or mvn / java is not installed");
        return;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/bench/kstreams-reference/build"
    );
    let built = Command::new(script)
        .stderr(Stdio::inherit())
        .output()
        .expect("the build script runs");
    assert!(built.status.success(), "the reference did not build");
    let jar = String::from_utf8_lossy(&built.stdout)
        .lines()
        .last()
        .expect("the jar's path")
        .trim()
        .to_owned();
    assert!(std::path::Path::new(&jar).is_file(), "{jar}");

    let stack = Stack::from_env();
    let name = unique("kstreams_ref");
    let (input, output) = (format!("{name}-in"), format!("{name}-out"));
    // Its input and output, and the Kafka Streams application's (id `name`) internal topics.
    let _topics = TopicCleanup::new(stack.kafka_bootstrap.as_str()).prefix(format!("{name}-"));
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka_bootstrap)
        .create()
        .expect("an admin client");
    let topics = [
        NewTopic::new(&input, 2, TopicReplication::Fixed(1)),
        NewTopic::new(&output, 2, TopicReplication::Fixed(1)),
    ];
    for r in futures::executor::block_on(admin.create_topics(&topics, &AdminOptions::new()))
        .expect("topics")
    {
        r.expect("a topic created");
    }
    // The engine benchmark's records: key k%08d, value 1 as 8 big-endian bytes.
    let (keys, per_key) = (10u64, 20i64);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka_bootstrap)
        .set("partitioner", "murmur2_random")
        .create()
        .expect("a producer");
    for i in 0..keys * per_key as u64 {
        let key = format!("k{:08}", i % keys);
        let value = 1i64.to_be_bytes();
        producer
            .send(BaseRecord::to(&input).key(&key).payload(&value[..]))
            .expect("queued");
    }
    producer.flush(Duration::from_secs(30)).expect("flushed");

    let state = tempfile::tempdir().expect("a state dir");
    let mut child = Command::new("java")
        .args([
            "-Xmx256m",
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
            "-jar",
        ])
        .arg(&jar)
        .args([&stack.kafka_bootstrap, &input, &output, &name])
        .arg(state.path())
        .args(["100", "1"])
        .stdout(Stdio::null())
        .spawn()
        .expect("java starts");

    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka_bootstrap)
        .set("group.id", format!("{name}-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("a reader");
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition_offset(&output, p, Offset::Beginning)
            .expect("a partition");
    }
    reader.assign(&tpl).expect("assigned");
    let mut sums: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let total = keys as usize * per_key as usize;
    let start = Instant::now();
    let mut seen = 0;
    while seen < total && start.elapsed() < Duration::from_secs(180) {
        assert!(
            child.try_wait().expect("the JVM's status").is_none(),
            "the reference exited"
        );
        if let Some(m) = reader.poll(Duration::from_millis(200)) {
            let m = m.expect("a record");
            let key = String::from_utf8_lossy(m.key().expect("a key")).into_owned();
            let value: [u8; 8] = m.payload().expect("a value").try_into().expect("8 bytes");
            sums.entry(key).or_default().push(i64::from_be_bytes(value));
            seen += 1;
        }
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let stop = Instant::now();
    while child.try_wait().expect("status").is_none() && stop.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();

    assert_eq!(seen, total, "outputs seen: {sums:?}");
    assert_eq!(sums.len(), keys as usize);
    for (key, values) in &sums {
        // Per key, one output per input: the running sum 1, 2, ..., per_key.
        let expected: Vec<i64> = (1..=per_key).collect();
        assert_eq!(values, &expected, "the running sums of {key}");
    }
    // The store is changelogged as Keel names it.
    let (lo, hi) = reader
        .fetch_watermarks(
            &format!("{name}-sums-changelog"),
            0,
            Duration::from_secs(10),
        )
        .expect("the changelog exists");
    let (lo1, hi1) = reader
        .fetch_watermarks(
            &format!("{name}-sums-changelog"),
            1,
            Duration::from_secs(10),
        )
        .expect("the changelog's second partition");
    assert!(hi - lo + hi1 - lo1 >= total as i64, "changelog records");
}
