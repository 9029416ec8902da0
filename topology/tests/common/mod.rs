//! Topologies shared by the runtime's tests.

#![allow(dead_code)]

use std::time::Duration;

use keel_topology::serde::{I64, Utf8};
use keel_topology::{
    Context, ProcessError, Processor, Punctuation, PunctuationType, Record, StoreKind, Topology,
    TopologyBuilder,
};

/// Per key, the running sum of the values: one store get + put and one output per record.
pub struct RunningSum;

impl Processor for RunningSum {
    type Key = String;
    type Value = i64;

    fn process(
        &mut self,
        ctx: &mut Context<'_>,
        record: Record<String, i64>,
    ) -> Result<(), ProcessError> {
        if record.value < 0 {
            return Err(ProcessError::BadInput(format!(
                "negative amount {}",
                record.value
            )));
        }
        let store = ctx.kv("sums")?;
        let before = store
            .get(record.key.as_bytes())?
            .map(|b| i64::from_be_bytes(b.try_into().unwrap_or([0; 8])))
            .unwrap_or(0);
        let sum = before + record.value;
        store.put(record.key.as_bytes(), sum.to_be_bytes());
        let key = record.key.clone();
        ctx.forward(record.with(key, sum));
        Ok(())
    }
}

/// Re-keys "order:sku" records by sku (a key change before a stateful step).
pub struct BySku;

impl Processor for BySku {
    type Key = String;
    type Value = i64;

    fn process(
        &mut self,
        ctx: &mut Context<'_>,
        r: Record<String, i64>,
    ) -> Result<(), ProcessError> {
        let sku = r.key.split(':').nth(1).unwrap_or("?").to_owned();
        let v = r.value;
        ctx.forward(r.with(sku, v));
        Ok(())
    }
}

/// `input` → running sum per key (store `sums`) → `output`.
pub fn running_sums(input: &str, output: &str) -> Topology {
    let mut b = TopologyBuilder::new();
    b.add_source("in", &[input], Utf8, I64)
        .add_processor("sum", || RunningSum, &["in"])
        .add_state_store("sums", StoreKind::KeyValue, &["sum"])
        .add_sink("out", output, Utf8, I64, &["sum"]);
    b.build().expect("a valid topology")
}

/// Counts records per key and, on each punctuation, emits `<kind>:<name>` with the count of
/// keys seen; also keeps a durable timer per key due 1 s after the record.
pub struct Ticker {
    pub stream: Duration,
    pub wall: Duration,
}

impl Processor for Ticker {
    type Key = String;
    type Value = i64;

    fn init(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        ctx.schedule("stream", self.stream, PunctuationType::StreamTime);
        ctx.schedule("wall", self.wall, PunctuationType::WallClock);
        Ok(())
    }

    fn process(
        &mut self,
        ctx: &mut Context<'_>,
        record: Record<String, i64>,
    ) -> Result<(), ProcessError> {
        let due = record.timestamp + 1_000;
        ctx.timers("timers")?
            .schedule(record.key.as_bytes(), due, record.key.as_bytes())?;
        Ok(())
    }

    fn punctuate(&mut self, ctx: &mut Context<'_>, p: &Punctuation) -> Result<(), ProcessError> {
        let now = p.timestamp;
        let fired = ctx.timers("timers")?.due(now)?;
        let kind = match p.kind {
            PunctuationType::StreamTime => "stream",
            PunctuationType::WallClock => "wall",
        };
        ctx.forward(Record::new(
            format!("{kind}:{}", p.name),
            fired.len() as i64,
            now,
        ));
        Ok(())
    }
}

/// `ticker_every(.., 10 s, 60 s)`.
pub fn ticker(input: &str, output: &str) -> Topology {
    ticker_every(
        input,
        output,
        Duration::from_secs(10),
        Duration::from_secs(60),
    )
}

pub fn ticker_every(input: &str, output: &str, stream: Duration, wall: Duration) -> Topology {
    let mut b = TopologyBuilder::new();
    b.add_source("in", &[input], Utf8, I64)
        .add_processor("tick", move || Ticker { stream, wall }, &["in"])
        .add_state_store("timers", StoreKind::Timer, &["tick"])
        .add_sink("out", output, Utf8, I64, &["tick"]);
    b.build().expect("a valid topology")
}

/// The output one clean run gives for `input`: per key, the prefix sums in input order.
pub fn expected_sums(input: &[(String, i64)]) -> std::collections::BTreeMap<String, Vec<i64>> {
    let mut out: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for (k, v) in input {
        let sums = out.entry(k.clone()).or_default();
        let last = sums.last().copied().unwrap_or(0);
        sums.push(last + v);
    }
    out
}

/// A single-threaded tokio runtime for the async Kafka helpers of `keel-tests`.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio")
}

/// Committed records of `topic` as (key, i64 value), in offset order per partition: until
/// `expected` arrived (then `settle` more) or `within` passed.
pub fn read_decoded(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    within: std::time::Duration,
    settle: std::time::Duration,
) -> Vec<(String, i64)> {
    use rdkafka::message::Message;
    runtime().block_on(async {
        let c = keel_tests::kafka::consumer(bootstrap, "read_committed").expect("consumer");
        keel_tests::kafka::read_topic(&c, topic, expected, within, settle)
            .await
            .expect("reads")
            .into_iter()
            .map(|m| {
                let k = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                let v = m.payload().map_or(i64::MIN, |p| {
                    i64::from_be_bytes(p.try_into().expect("8 bytes"))
                });
                (k, v)
            })
            .collect()
    })
}

/// Records grouped by key, each key's values in the order given.
pub fn by_key(records: &[(String, i64)]) -> std::collections::BTreeMap<String, Vec<i64>> {
    let mut out: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for (k, v) in records {
        out.entry(k.clone()).or_default().push(*v);
    }
    out
}

/// Counts records per key (store `counts`), schedules a timer per key due 1 s after the record
/// (store `timers`; a negative value also schedules timer `rejected`), and forwards the count to
/// the sink `seen` and to `check`, which rejects negative values as bad input and forwards the
/// rest to `checked`.
pub struct Counter;

impl Processor for Counter {
    type Key = String;
    type Value = i64;

    fn process(
        &mut self,
        ctx: &mut Context<'_>,
        record: Record<String, i64>,
    ) -> Result<(), ProcessError> {
        let counts = ctx.kv("counts")?;
        let count = counts
            .get(record.key.as_bytes())?
            .map(|b| i64::from_be_bytes(b.try_into().unwrap_or([0; 8])))
            .unwrap_or(0)
            + 1;
        counts.put(record.key.as_bytes(), count.to_be_bytes());
        let timers = ctx.timers("timers")?;
        timers.schedule(record.key.as_bytes(), record.timestamp + 1_000, b"t")?;
        if record.value < 0 {
            timers.schedule(&b"rejected"[..], record.timestamp, b"t")?;
        }
        let key = record.key.clone();
        ctx.forward(record.with(key, count));
        Ok(())
    }
}

/// Rejects records whose original value was negative (it sees the count, so it looks at the
/// timer the counter set for them).
pub struct Check;

impl Processor for Check {
    type Key = String;
    type Value = i64;

    fn process(
        &mut self,
        ctx: &mut Context<'_>,
        record: Record<String, i64>,
    ) -> Result<(), ProcessError> {
        if ctx.timers("timers")?.get(b"rejected")?.is_some() {
            return Err(ProcessError::BadInput("negative value".into()));
        }
        ctx.forward(record);
        Ok(())
    }
}

/// `input` → `count` (stores `counts`, `timers`) → sink `seen` and `check` → sink `checked`.
pub fn count_then_check(input: &str) -> Topology {
    let mut b = TopologyBuilder::new();
    b.add_source("in", &[input], Utf8, I64)
        .add_processor("count", || Counter, &["in"])
        .add_sink("seen", "seen", Utf8, I64, &["count"])
        .add_processor("check", || Check, &["count"])
        .add_state_store("counts", StoreKind::KeyValue, &["count"])
        .add_state_store("timers", StoreKind::Timer, &["count", "check"])
        .add_sink("checked", "checked", Utf8, I64, &["check"]);
    b.build().expect("a valid topology")
}

/// Forwards everything; counts its `close` calls in `closed`.
pub struct Closing {
    pub closed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Processor for Closing {
    type Key = String;
    type Value = i64;

    fn process(
        &mut self,
        ctx: &mut Context<'_>,
        record: Record<String, i64>,
    ) -> Result<(), ProcessError> {
        ctx.forward(record);
        Ok(())
    }

    fn close(&mut self, _ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        self.closed
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

/// `input` → `closing` → `out`.
pub fn closing(input: &str, closed: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Topology {
    let mut b = TopologyBuilder::new();
    b.add_source("in", &[input], Utf8, I64)
        .add_processor(
            "closing",
            move || Closing {
                closed: closed.clone(),
            },
            &["in"],
        )
        .add_sink("out", "out", Utf8, I64, &["closing"]);
    b.build().expect("a valid topology")
}

/// `per_key` rounds over `keys` keys; values 1, 2, 3, ... so every prefix sum is distinct.
pub fn make_input(keys: usize, per_key: usize) -> Vec<(String, i64)> {
    let mut input = Vec::new();
    for round in 0..per_key {
        for k in 0..keys {
            input.push((format!("key-{k:03}"), (round * keys + k + 1) as i64));
        }
    }
    input
}

/// Produces `input` (idempotent, Kafka's murmur2 partitioner) in chunks of `chunk` records
/// every `pause`, so that faults land while records keep arriving. A send waits out a broker
/// that does not answer (librdkafka's message timeout, 5 min).
pub fn feed(bootstrap: &str, topic: &str, input: &[(String, i64)], chunk: usize, pause: Duration) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .create()
        .expect("producer");
    let rt = runtime();
    for part in input.chunks(chunk) {
        rt.block_on(async {
            let sends = part.iter().map(|(k, v)| {
                let value = v.to_be_bytes();
                let producer = &producer;
                async move {
                    producer
                        .send(
                            FutureRecord::to(topic)
                                .key(k.as_bytes())
                                .payload(&value[..]),
                            Duration::from_secs(30),
                        )
                        .await
                        .map(|_| ())
                        .map_err(|(e, _)| e)
                }
            });
            for r in futures::future::join_all(sends).await {
                r.expect("input produced");
            }
        });
        std::thread::sleep(pause);
    }
}

/// Every record of `topic` under read_committed, per key in offset order: until `expected`
/// arrived (then 3 s more, to catch duplicates) or `within` passed.
pub fn committed_by_key(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    within: Duration,
) -> std::collections::BTreeMap<String, Vec<i64>> {
    by_key(&read_decoded(
        bootstrap,
        topic,
        expected,
        within,
        Duration::from_secs(3),
    ))
}

/// Per key, how `actual` differs from `expected` (empty when equal).
pub fn diff(
    expected: &std::collections::BTreeMap<String, Vec<i64>>,
    actual: &std::collections::BTreeMap<String, Vec<i64>>,
) -> String {
    let mut out = String::new();
    for (k, want) in expected {
        let got = actual.get(k).cloned().unwrap_or_default();
        if &got != want {
            out.push_str(&format!(
                "{k}: want {} records, got {}; first difference at {:?}\n",
                want.len(),
                got.len(),
                want.iter().zip(&got).position(|(a, b)| a != b)
            ));
        }
    }
    for k in actual.keys().filter(|k| !expected.contains_key(*k)) {
        out.push_str(&format!("{k}: unexpected key\n"));
    }
    out
}

/// The changelog of store `sums` of `app` (one record per key per commit: the last write of
/// the interval) is, per key, a subsequence of the clean run's sums `expected`, in order,
/// ending at the final sum: no value from an aborted transaction, none twice, the final state
/// complete. `context` goes into the failure message (a seed, a log path).
pub fn assert_changelog_follows(
    bootstrap: &str,
    app: &str,
    expected: &std::collections::BTreeMap<String, Vec<i64>>,
    context: &str,
) {
    let changelog = keel_state::changelog_topic(app, "sums");
    let store = committed_by_key(
        bootstrap,
        &changelog,
        expected.len(),
        Duration::from_secs(60),
    );
    assert_eq!(
        store.len(),
        expected.len(),
        "every key has a changelog entry ({context})"
    );
    for (key, sums) in expected {
        let logged = &store[key];
        let mut rest = sums.iter();
        for value in logged {
            assert!(
                rest.any(|s| s == value),
                "{key}: changelog value {value} is not the next sum of a clean run ({context}): {logged:?}"
            );
        }
        assert_eq!(
            logged.last(),
            sums.last(),
            "{key}: final store value ({context})"
        );
    }
}

/// A test's own names: an application id, input and output topics and a state directory. The
/// topics (and the application's internal `<app>-*` ones) are deleted and the directory removed
/// when it drops.
pub struct Names {
    pub app: String,
    pub input: String,
    pub output: String,
    pub dir: std::path::PathBuf,
    _topics: keel_tests::topics::TopicCleanup,
}

impl Drop for Names {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Random names tagged `tag` on the broker at `bootstrap`, with the input and output topics
/// created with `partitions` partitions.
pub fn names(bootstrap: &str, tag: &str, partitions: i32) -> Names {
    use keel_tests::unique;
    let (app, input, output) = (
        unique(&format!("{tag}_app")),
        unique(&format!("{tag}_in")),
        unique(&format!("{tag}_out")),
    );
    let n = Names {
        _topics: keel_tests::topics::TopicCleanup::new(bootstrap)
            .topics([&input, &output])
            .prefix(format!("{app}-")),
        app,
        input,
        output,
        dir: std::env::temp_dir().join(unique(&format!("keel_{tag}"))),
    };
    runtime()
        .block_on(keel_tests::kafka::create_topics(
            bootstrap,
            &[&n.input, &n.output],
            partitions,
        ))
        .expect("topics");
    n
}
