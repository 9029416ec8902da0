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
