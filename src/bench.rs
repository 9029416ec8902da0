//! `keel bench engine`: the stream runtime's throughput, latency, restore speed and memory on
//! this machine against the real broker. Workload: distinct keys, per record one store get, one
//! put and one output (a running sum), exactly-once. Results go to docs/BENCHMARKS.md by hand,
//! with the command that produced them.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keel_state::StateConfig;
use keel_topology::serde::{I64, Utf8};
use keel_topology::{
    Context, KafkaStreams, ProcessError, Processor, Record, StoreKind, StreamsConfig,
    StreamsHandle, Topology, TopologyBuilder,
};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// `keel bench engine` options.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// Records in the backlog phase (throughput).
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Distinct keys (each record's key is `record index % keys`).
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: u64,
    /// Partitions of the input and output topics.
    #[arg(long, default_value_t = 2)]
    pub partitions: i32,
    /// Stream threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Records per second in the latency phase.
    #[arg(long, default_value_t = 5_000)]
    pub rate: u64,
    /// Seconds of the latency phase.
    #[arg(long, default_value_t = 10)]
    pub latency_seconds: u64,
    /// The engine's commit interval (100 ms is the exactly-once default).
    #[arg(long, default_value_t = 100)]
    pub commit_interval_ms: u64,
    /// Where the engine keeps its state (removed afterwards).
    #[arg(long)]
    pub state_dir: Option<std::path::PathBuf>,
}

struct RunningSum;

impl Processor for RunningSum {
    type Key = String;
    type Value = i64;

    fn process(
        &mut self,
        ctx: &mut Context<'_>,
        r: Record<String, i64>,
    ) -> Result<(), ProcessError> {
        let store = ctx.kv("sums")?;
        let before = store
            .get(r.key.as_bytes())?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map_or(0, i64::from_be_bytes);
        let sum = before + r.value;
        store.put(r.key.as_bytes(), sum.to_be_bytes());
        let key = r.key.clone();
        ctx.forward(r.with(key, sum));
        Ok(())
    }
}

fn topology(input: &str, output: &str) -> anyhow::Result<Topology> {
    let mut b = TopologyBuilder::new();
    b.add_source("in", &[input], Utf8, I64)
        .add_processor("sum", || RunningSum, &["in"])
        .add_state_store("sums", StoreKind::KeyValue, &["sum"])
        .add_sink("out", output, Utf8, I64, &["sum"]);
    Ok(b.build()?)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |field: &str| {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

fn producer(bootstrap: &str) -> anyhow::Result<BaseProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()?)
}

fn send(p: &BaseProducer, topic: &str, key: &str, value: i64, ts: i64) -> anyhow::Result<()> {
    let bytes = value.to_be_bytes();
    let mut record = BaseRecord::to(topic)
        .key(key)
        .payload(&bytes[..])
        .timestamp(ts);
    loop {
        match p.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                p.poll(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
}

fn output_consumer(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<BaseConsumer> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{topic}-bench-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    Ok(c)
}

fn metric(handle: &StreamsHandle, name: &str) -> f64 {
    handle
        .registry()
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .map(|m| m.get_counter().value() + m.get_gauge().value())
        .sum()
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the three phases and prints a report.
pub fn engine(bootstrap: &str, args: &EngineArgs) -> anyhow::Result<String> {
    let tag: u32 = rand::random();
    let input = format!("bench-in-{tag:08x}");
    let output = format!("bench-out-{tag:08x}");
    let app = format!("bench-{tag:08x}");
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("keel-bench-{tag:08x}")));

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let topics = [
        NewTopic::new(&input, args.partitions, TopicReplication::Fixed(1)),
        NewTopic::new(&output, args.partitions, TopicReplication::Fixed(1)),
    ];
    for r in futures::executor::block_on(admin.create_topics(&topics, &AdminOptions::new()))? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }

    // Phase 1: a backlog of `records`, then the engine drains it.
    let p = producer(bootstrap)?;
    let produce_start = Instant::now();
    for i in 0..args.records {
        send(&p, &input, &format!("k{:08}", i % args.keys), 1, now_ms())?;
        if i % 10_000 == 0 {
            p.poll(Duration::ZERO);
        }
    }
    p.flush(Duration::from_secs(120))?;
    let produce_secs = produce_start.elapsed().as_secs_f64();
    eprintln!(
        "[bench] produced {} records in {produce_secs:.1}s",
        args.records
    );

    let mut config = StreamsConfig::new(&app, bootstrap);
    config.state = StateConfig::with_dir(&state_dir);
    config.num_stream_threads = args.threads;
    config.commit_interval_ms = Some(args.commit_interval_ms);
    config.instance_id = Some(format!("bench-{tag:08x}"));
    let reader = output_consumer(bootstrap, &output, args.partitions)?;
    let started = Instant::now();
    let handle = KafkaStreams::new(topology(&input, &output)?, config.clone())?.start()?;
    let mut seen = 0u64;
    let mut first: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(1800);
    while seen < args.records {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the engine did not finish the backlog"
        );
        anyhow::ensure!(handle.is_running(), "the engine stopped");
        if let Some(m) = reader.poll(Duration::from_millis(100)) {
            m?;
            seen += 1;
            first.get_or_insert_with(Instant::now);
        }
    }
    let total = started.elapsed().as_secs_f64();
    let steady = first.map_or(total, |f| f.elapsed().as_secs_f64());
    let (rss, hwm) = rss_mib();
    let store = std::fs::read_dir(state_dir.join(&app))
        .map(|_| dir_size(&state_dir.join(&app)))
        .unwrap_or(0);
    eprintln!("[bench] backlog drained in {total:.1}s");

    // Phase 2: a steady rate; latency from the input's timestamp to the output being visible.
    let mut latencies = Vec::new();
    let phase_end = Instant::now() + Duration::from_secs(args.latency_seconds);
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let mut next = Instant::now();
    let mut sent = 0u64;
    while Instant::now() < phase_end || (latencies.len() as u64) < sent {
        if Instant::now() >= phase_end && Instant::now() > phase_end + Duration::from_secs(60) {
            break;
        }
        while Instant::now() >= next && Instant::now() < phase_end {
            send(
                &p,
                &input,
                &format!("k{:08}", sent % args.keys),
                1,
                now_ms(),
            )?;
            sent += 1;
            next += interval;
        }
        p.poll(Duration::ZERO);
        if let Some(m) = reader.poll(Duration::from_millis(1)) {
            let m = m?;
            if let Some(ts) = m.timestamp().to_millis() {
                latencies.push(now_ms() - ts);
            }
        }
    }
    latencies.sort_unstable();
    let (commit_sum, commit_count) = handle
        .registry()
        .gather()
        .iter()
        .filter(|f| f.name() == "keel_commit_seconds")
        .flat_map(|f| f.get_metric().iter())
        .map(|m| {
            (
                m.get_histogram().get_sample_sum(),
                m.get_histogram().get_sample_count(),
            )
        })
        .fold((0.0, 0), |(s, c), (s2, c2)| (s + s2, c + c2));
    handle.shutdown()?;

    // Phase 3: restore everything from the changelog into an empty state directory.
    let changelog = keel_state::changelog_topic(&app, "sums");
    let mut changelog_records = 0i64;
    for part in 0..args.partitions {
        let (lo, hi) = reader.fetch_watermarks(&changelog, part, Duration::from_secs(10))?;
        changelog_records += hi - lo;
    }
    std::fs::remove_dir_all(&state_dir)?;
    let restore_start = Instant::now();
    let handle = KafkaStreams::new(topology(&input, &output)?, config)?.start()?;
    // Done when every partition's store reported its restore and none has records left.
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let remaining: Vec<f64> = handle
            .registry()
            .gather()
            .iter()
            .filter(|f| f.name() == "keel_restore_remaining_records")
            .flat_map(|f| f.get_metric().iter().map(|m| m.get_gauge().value()))
            .collect();
        if remaining.len() == args.partitions as usize && remaining.iter().all(|r| *r == 0.0) {
            break;
        }
        anyhow::ensure!(
            restore_start.elapsed() < Duration::from_secs(600),
            "restore did not finish"
        );
    }
    let restored_at = Instant::now();
    let last = metric(&handle, "keel_restored_records_total");
    let restore_secs = (restored_at - restore_start).as_secs_f64();
    let (rss_after_restore, _) = rss_mib();
    handle.shutdown()?;
    let _ = std::fs::remove_dir_all(&state_dir);

    let mut out = String::new();
    let mut row = |k: &str, v: String| out.push_str(&format!("{k:<44} {v}\n"));
    row(
        "records (backlog) / distinct keys",
        format!("{} / {}", args.records, args.keys),
    );
    row(
        "partitions / stream threads / commit interval",
        format!(
            "{} / {} / {} ms",
            args.partitions, args.threads, args.commit_interval_ms
        ),
    );
    row(
        "backlog: start to last output visible",
        format!("{total:.1} s"),
    );
    row(
        "throughput (start to last output)",
        format!("{:.0} records/s", args.records as f64 / total),
    );
    row(
        "throughput (first to last output)",
        format!("{:.0} records/s", args.records as f64 / steady),
    );
    row(
        &format!(
            "latency at {} records/s, {} s",
            args.rate, args.latency_seconds
        ),
        format!(
            "p50 {} ms, p99 {} ms, max {} ms ({} samples)",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or(0),
            latencies.len()
        ),
    );
    row(
        "commits / mean commit time",
        format!(
            "{commit_count} / {:.1} ms",
            1000.0 * commit_sum / (commit_count.max(1) as f64)
        ),
    );
    row(
        "restore (empty state dir)",
        format!(
            "{last:.0} of {changelog_records} changelog records in {restore_secs:.1} s = {:.0} records/s",
            last / restore_secs.max(0.001)
        ),
    );
    row(
        "RSS after backlog (whole process)",
        format!("{rss:.0} MiB (peak {hwm:.0} MiB)"),
    );
    row(
        "RSS after restore (whole process)",
        format!("{rss_after_restore:.0} MiB"),
    );
    row(
        "state dir after backlog",
        format!("{:.0} MiB", store as f64 / 1048576.0),
    );
    Ok(out)
}

fn dir_size(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
