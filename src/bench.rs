//! `keel bench engine`: the stream runtime's throughput, latency, restore speed and memory on
//! this machine against the real broker. Workload: distinct keys, per record one store get, one
//! put and one output (a running sum), exactly-once. Results go to docs/BENCHMARKS.md by hand,
//! with the command that produced them. Each run has topics of its own (named by a random tag it
//! prints) and deletes them once its engine stopped, also after a failed phase.

pub mod checkout;
pub mod cpu;
pub mod inventory;
pub mod kstreams;
mod open_loop;
mod topics;

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
    /// Also run the same workload on Kafka Streams (bench/kstreams-reference), alternating
    /// Keel and it on the same broker, each on fresh topics, and report the ratios.
    #[arg(long, value_enum)]
    pub vs: Option<Versus>,
    /// With --vs: runs of each engine (keel, kafka-streams, keel, kafka-streams, ...).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// With --vs: the reference's jar (default: built by bench/kstreams-reference/build).
    #[arg(long)]
    pub kstreams_jar: Option<std::path::PathBuf>,
    /// With --vs: the JVM's maximum heap (-Xmx).
    #[arg(long, default_value = "512m")]
    pub kstreams_xmx: String,
}

/// What `keel bench engine --vs` compares Keel with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Versus {
    KafkaStreams,
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

fn producer(bootstrap: &str) -> anyhow::Result<BaseProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        // Bounded: with the whole 1M backlog queued at once the bench's own producer left
        // ~150 MiB of freed-but-kept heap in the process whose RSS the bench reports.
        .set("queue.buffering.max.messages", "100000")
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

/// What the engine phases need to know about the engine under test: Keel's runtime in this
/// process, or the Kafka Streams reference as a child process ([`kstreams::KStreams`]).
pub(crate) trait Subject {
    /// For reports: "keel" or "kafka-streams".
    fn name(&self) -> &'static str;
    /// Starts the engine; the clock starts when this returns.
    fn start(&mut self, setup: &Setup) -> anyhow::Result<()>;
    /// An error when the engine stopped on its own.
    fn check_running(&mut self) -> anyhow::Result<()>;
    /// `Some(records restored)` once the restore after the last start is complete.
    fn restored(&mut self, setup: &Setup) -> anyhow::Result<Option<f64>>;
    /// Commits and the seconds they took, when the engine tells (Keel's metrics).
    fn commits(&self) -> Option<(u64, f64)>;
    /// The engine's process, for RSS and CPU.
    fn pid(&self) -> u32;
    /// Bytes in RocksDB's block cache (memtables included), when the engine reports it.
    fn state_memory_bytes(&self) -> Option<f64> {
        None
    }
    /// Stops the engine cleanly.
    fn stop(&mut self) -> anyhow::Result<()>;
}

/// One engine run's topics, application and state directory.
#[derive(Debug, Clone)]
pub(crate) struct Setup {
    pub bootstrap: String,
    pub input: String,
    pub output: String,
    pub app: String,
    pub state_dir: std::path::PathBuf,
    pub partitions: i32,
    pub threads: usize,
    pub commit_interval_ms: u64,
    pub tag: String,
}

/// Keel's runtime in this process.
struct Keel {
    handle: Option<StreamsHandle>,
}

impl Keel {
    fn config(setup: &Setup) -> StreamsConfig {
        let mut config = StreamsConfig::new(&setup.app, &setup.bootstrap);
        config.state = StateConfig::with_dir(&setup.state_dir);
        config.num_stream_threads = setup.threads;
        config.commit_interval_ms = Some(setup.commit_interval_ms);
        config.instance_id = Some(format!("bench-{}", setup.tag));
        config
    }
}

impl Subject for Keel {
    fn name(&self) -> &'static str {
        "keel"
    }

    fn start(&mut self, setup: &Setup) -> anyhow::Result<()> {
        let topology = topology(&setup.input, &setup.output)?;
        self.handle = Some(KafkaStreams::new(topology, Self::config(setup))?.start()?);
        Ok(())
    }

    fn check_running(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.handle.as_ref().is_some_and(StreamsHandle::is_running),
            "the engine stopped"
        );
        Ok(())
    }

    fn restored(&mut self, setup: &Setup) -> anyhow::Result<Option<f64>> {
        let handle = self
            .handle
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("not started"))?;
        // Done when every partition's store reported its restore and none has records left.
        let remaining: Vec<f64> = handle
            .registry()
            .gather()
            .iter()
            .filter(|f| f.name() == "keel_restore_remaining_records")
            .flat_map(|f| f.get_metric().iter().map(|m| m.get_gauge().value()))
            .collect();
        Ok(
            (remaining.len() == setup.partitions as usize && remaining.iter().all(|r| *r == 0.0))
                .then(|| metric(handle, "keel_restored_records_total")),
        )
    }

    fn commits(&self) -> Option<(u64, f64)> {
        let handle = self.handle.as_ref()?;
        let (sum, count) = handle
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
        Some((count, sum))
    }

    fn pid(&self) -> u32 {
        std::process::id()
    }

    fn state_memory_bytes(&self) -> Option<f64> {
        let handle = self.handle.as_ref()?;
        handle
            .registry()
            .gather()
            .iter()
            .filter(|f| f.name() == "keel_state_memory_bytes")
            .flat_map(|f| f.get_metric().iter())
            .find(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == "kind" && l.value() == "block_cache_usage")
            })
            .map(|m| m.get_gauge().value())
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(h) = self.handle.take() {
            h.shutdown()?;
        }
        Ok(())
    }
}

/// One engine run's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Figures {
    pub engine: String,
    pub records: u64,
    pub backlog_seconds: f64,
    /// records / (start → last output visible).
    pub throughput: f64,
    /// records / (first → last output visible).
    pub throughput_first_to_last: f64,
    pub latency_rate: u64,
    pub latency_p50_ms: i64,
    pub latency_p99_ms: i64,
    pub latency_max_ms: i64,
    pub latency_samples: usize,
    pub commits: Option<(u64, f64)>,
    pub changelog_records: i64,
    pub restored_records: f64,
    pub restore_seconds: f64,
    pub restore_rate: f64,
    pub rss_after_backlog_mib: f64,
    pub rss_peak_mib: f64,
    pub rss_after_restore_mib: f64,
    /// The bench process before the engine started (Keel runs in it: the baseline of the
    /// bench's own producer and reader).
    pub rss_before_start_mib: f64,
    /// RocksDB's block cache usage (memtables included) after the backlog and after restore.
    pub state_memory_after_backlog_mib: Option<f64>,
    pub state_memory_after_restore_mib: Option<f64>,
    pub state_dir_mib: f64,
    /// CPU seconds during the backlog drain: the engine's process and the broker.
    pub backlog_cpu_engine_s: f64,
    pub backlog_cpu_broker_s: f64,
    pub backlog_machine_busy_percent: Option<f64>,
}

/// Runs the three phases with Keel's runtime and prints a report; with `--vs kafka-streams`
/// alternates Keel and the Kafka Streams reference, `--rounds` times each.
pub fn engine(bootstrap: &str, args: &EngineArgs) -> anyhow::Result<String> {
    match args.vs {
        None => {
            let figures = measure(bootstrap, args, &mut Keel { handle: None })?;
            Ok(render_one(args, &figures))
        }
        Some(Versus::KafkaStreams) => {
            let jar = match &args.kstreams_jar {
                Some(j) => j.clone(),
                None => kstreams::build_jar()?,
            };
            let mut runs = Vec::new();
            for round in 0..args.rounds.max(1) {
                eprintln!("[bench] round {}: keel", round + 1);
                runs.push(measure(bootstrap, args, &mut Keel { handle: None })?);
                eprintln!("[bench] round {}: kafka-streams", round + 1);
                let mut ks = kstreams::KStreams::new(jar.clone(), args.kstreams_xmx.clone());
                let figures = measure(bootstrap, args, &mut ks);
                ks.kill();
                runs.push(figures?);
            }
            Ok(kstreams::render_versus(args, &runs))
        }
    }
}

/// The three phases against one engine.
fn measure(
    bootstrap: &str,
    args: &EngineArgs,
    subject: &mut dyn Subject,
) -> anyhow::Result<Figures> {
    let tag = format!("{:08x}", rand::random::<u32>());
    let setup = Setup {
        bootstrap: bootstrap.to_owned(),
        input: format!("bench-in-{tag}"),
        output: format!("bench-out-{tag}"),
        app: format!("bench-{tag}"),
        state_dir: args
            .state_dir
            .clone()
            .map(|d| d.join(&tag))
            .unwrap_or_else(|| std::env::temp_dir().join(format!("keel-bench-{tag}"))),
        partitions: args.partitions,
        threads: args.threads,
        commit_interval_ms: args.commit_interval_ms,
        tag: tag.clone(),
    };
    let prefixes = run_topic_prefixes(&setup);
    eprintln!(
        "[bench] {}: run {tag}, topics {}*",
        subject.name(),
        prefixes.join("*, ")
    );
    let result = phases(&setup, args, subject);
    let _ = subject.stop();
    let _ = std::fs::remove_dir_all(&setup.state_dir);
    // Once the engine stopped (a running one would create its topics again), also after a
    // failed phase: a broker with too many partitions runs out of open files.
    match futures::executor::block_on(topics::delete_topics_with_prefixes(
        bootstrap,
        std::iter::empty(),
        &prefixes,
        topics::CLEANUP_WITHIN,
    )) {
        Ok(deleted) => eprintln!(
            "[bench] {}: deleted the run's {} topics",
            subject.name(),
            deleted.len()
        ),
        Err(e) => eprintln!(
            "[bench] {}: could not delete the topics of run {tag}: {e:#}",
            subject.name()
        ),
    }
    result
}

/// The prefixes of one run's topics: its input, its output and the engine's internal topics
/// (`<app>-sums-changelog`, the dead-letter topic, ...). The tag makes them the run's own.
fn run_topic_prefixes(setup: &Setup) -> Vec<String> {
    vec![
        setup.input.clone(),
        setup.output.clone(),
        format!("{}-", setup.app),
    ]
}

fn phases(setup: &Setup, args: &EngineArgs, subject: &mut dyn Subject) -> anyhow::Result<Figures> {
    let (input, output) = (&setup.input, &setup.output);
    let bootstrap = setup.bootstrap.as_str();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let topics = [
        NewTopic::new(input, args.partitions, TopicReplication::Fixed(1)),
        NewTopic::new(output, args.partitions, TopicReplication::Fixed(1)),
    ];
    for r in futures::executor::block_on(admin.create_topics(&topics, &AdminOptions::new()))? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }

    // Phase 1: a backlog of `records`, then the engine drains it.
    let p = producer(bootstrap)?;
    let produce_start = Instant::now();
    for i in 0..args.records {
        send(&p, input, &format!("k{:08}", i % args.keys), 1, now_ms())?;
        if i % 10_000 == 0 {
            p.poll(Duration::ZERO);
        }
    }
    p.flush(Duration::from_secs(120))?;
    let produce_secs = produce_start.elapsed().as_secs_f64();
    eprintln!(
        "[bench] {}: produced {} records in {produce_secs:.1}s",
        subject.name(),
        args.records
    );

    let reader = output_consumer(bootstrap, output, args.partitions)?;
    let mut watched = vec![cpu::Watched {
        name: "engine".into(),
        pid: 0,
    }];
    let broker = cpu::stack_pids(&cpu::stack_pid_dir())
        .into_iter()
        .find(|(n, _)| n == "kafka");
    if let Some((_, pid)) = &broker {
        watched.push(cpu::Watched {
            name: "kafka".into(),
            pid: *pid,
        });
    }
    let (rss_before_start, _) = cpu::rss_mib(std::process::id()).unwrap_or((0.0, 0.0));
    subject.start(setup)?;
    let started = Instant::now();
    watched[0].pid = subject.pid();
    let cpu_before = cpu::sample(&watched);
    let mut seen = 0u64;
    let mut first: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(1800);
    while seen < args.records {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the engine did not finish the backlog"
        );
        subject.check_running()?;
        if let Some(m) = reader.poll(Duration::from_millis(100)) {
            m?;
            seen += 1;
            first.get_or_insert_with(Instant::now);
        }
    }
    let total = started.elapsed().as_secs_f64();
    let cpu_backlog = cpu::between(&watched, &cpu_before, &cpu::sample(&watched));
    let steady = first.map_or(total, |f| f.elapsed().as_secs_f64());
    let (rss, hwm) = cpu::rss_mib(subject.pid()).unwrap_or((0.0, 0.0));
    let state_memory_after_backlog = subject.state_memory_bytes().map(|b| b / 1048576.0);
    let store = dir_size(&setup.state_dir.join(&setup.app));
    eprintln!("[bench] {}: backlog drained in {total:.1}s", subject.name());

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
            send(&p, input, &format!("k{:08}", sent % args.keys), 1, now_ms())?;
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
    let commits = subject.commits();
    subject.stop()?;

    // Phase 3: restore everything from the changelog into an empty state directory.
    let changelog = keel_state::changelog_topic(&setup.app, "sums");
    let mut changelog_records = 0i64;
    for part in 0..args.partitions {
        let (lo, hi) = reader.fetch_watermarks(&changelog, part, Duration::from_secs(10))?;
        changelog_records += hi - lo;
    }
    if setup.state_dir.exists() {
        std::fs::remove_dir_all(&setup.state_dir)?;
    }
    subject.start(setup)?;
    let restore_start = Instant::now();
    let restored = loop {
        std::thread::sleep(Duration::from_millis(20));
        subject.check_running()?;
        if let Some(n) = subject.restored(setup)? {
            break n;
        }
        anyhow::ensure!(
            restore_start.elapsed() < Duration::from_secs(600),
            "restore did not finish"
        );
    };
    let restore_secs = restore_start.elapsed().as_secs_f64();
    let (rss_after_restore, _) = cpu::rss_mib(subject.pid()).unwrap_or((0.0, 0.0));
    let state_memory_after_restore = subject.state_memory_bytes().map(|b| b / 1048576.0);
    subject.stop()?;

    Ok(Figures {
        engine: subject.name().to_owned(),
        records: args.records,
        backlog_seconds: total,
        throughput: args.records as f64 / total,
        throughput_first_to_last: args.records as f64 / steady,
        latency_rate: args.rate,
        latency_p50_ms: percentile(&latencies, 0.5),
        latency_p99_ms: percentile(&latencies, 0.99),
        latency_max_ms: latencies.last().copied().unwrap_or(0),
        latency_samples: latencies.len(),
        commits,
        changelog_records,
        restored_records: restored,
        restore_seconds: restore_secs,
        restore_rate: restored / restore_secs.max(0.001),
        rss_after_backlog_mib: rss,
        rss_peak_mib: hwm,
        rss_after_restore_mib: rss_after_restore,
        rss_before_start_mib: rss_before_start,
        state_memory_after_backlog_mib: state_memory_after_backlog,
        state_memory_after_restore_mib: state_memory_after_restore,
        state_dir_mib: store as f64 / 1048576.0,
        backlog_cpu_engine_s: cpu_backlog
            .processes
            .iter()
            .find(|p| p.name == "engine")
            .map_or(0.0, |p| p.cpu_seconds),
        backlog_cpu_broker_s: cpu_backlog
            .processes
            .iter()
            .find(|p| p.name == "kafka")
            .map_or(0.0, |p| p.cpu_seconds),
        backlog_machine_busy_percent: cpu_backlog.machine_busy_percent,
    })
}

fn render_one(args: &EngineArgs, f: &Figures) -> String {
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
        format!("{:.1} s", f.backlog_seconds),
    );
    row(
        "throughput (start to last output)",
        format!("{:.0} records/s", f.throughput),
    );
    row(
        "throughput (first to last output)",
        format!("{:.0} records/s", f.throughput_first_to_last),
    );
    row(
        &format!(
            "latency at {} records/s, {} s",
            args.rate, args.latency_seconds
        ),
        format!(
            "p50 {} ms, p99 {} ms, max {} ms ({} samples)",
            f.latency_p50_ms, f.latency_p99_ms, f.latency_max_ms, f.latency_samples
        ),
    );
    if let Some((count, sum)) = f.commits {
        row(
            "commits / mean commit time",
            format!("{count} / {:.1} ms", 1000.0 * sum / (count.max(1) as f64)),
        );
    }
    row(
        "restore (empty state dir)",
        format!(
            "{:.0} of {} changelog records in {:.1} s = {:.0} records/s",
            f.restored_records, f.changelog_records, f.restore_seconds, f.restore_rate
        ),
    );
    row(
        "RSS after backlog (whole process)",
        format!(
            "{:.0} MiB (peak {:.0} MiB)",
            f.rss_after_backlog_mib, f.rss_peak_mib
        ),
    );
    row(
        "RSS after restore (whole process)",
        format!("{:.0} MiB", f.rss_after_restore_mib),
    );
    row(
        "RSS before the engine started",
        format!("{:.0} MiB", f.rss_before_start_mib),
    );
    if let (Some(backlog), Some(restore)) = (
        f.state_memory_after_backlog_mib,
        f.state_memory_after_restore_mib,
    ) {
        row(
            "RocksDB block cache + memtables",
            format!("{backlog:.0} MiB after backlog, {restore:.0} MiB after restore"),
        );
    }
    row(
        "state dir after backlog",
        format!("{:.0} MiB", f.state_dir_mib),
    );
    row(
        "CPU during the backlog: engine / broker",
        format!(
            "{:.1} s / {:.1} s (machine {} busy)",
            f.backlog_cpu_engine_s,
            f.backlog_cpu_broker_s,
            f.backlog_machine_busy_percent
                .map_or_else(|| "?".to_owned(), |b| format!("{b:.0} %"))
        ),
    );
    out
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
