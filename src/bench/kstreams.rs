//! `keel bench engine --vs kafka-streams`: the engine benchmark's workload on Kafka Streams
//! (`bench/kstreams-reference/`, a Java 17 Maven project), run as a child JVM by the same three
//! phases as Keel (`super::phases`), and the side-by-side report.
//!
//! The reference prints `STARTING` just before `KafkaStreams.start()` (the clock starts when
//! the bench reads it, so the JVM's own start-up is not counted), `STATE <state>` on each state
//! change and `RESTORED <records>` each time it reaches RUNNING; the restore phase ends at the
//! first `RESTORED` after the restart (Kafka Streams reaches RUNNING once every store is
//! restored). Throughput and latency are measured by the bench's `read_committed` reader on the
//! output topic exactly as for Keel. RSS is the JVM's (`/proc/<pid>/status`).

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{EngineArgs, Figures, Setup, Subject};

/// The build script of the reference (next to the sources), or `KEEL_KSTREAMS_BUILD`.
fn build_script() -> PathBuf {
    std::env::var_os("KEEL_KSTREAMS_BUILD")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/bench/kstreams-reference/build"
            ))
        })
}

/// Builds (or finds up to date) the reference's jar with `bench/kstreams-reference/build`:
/// Maven offline first, Maven Central when something is missing. Returns the jar's path under
/// `~/.cache/keel/kstreams-reference/`.
pub fn build_jar() -> anyhow::Result<PathBuf> {
    let script = build_script();
    eprintln!(
        "[bench] building the Kafka Streams reference ({})",
        script.display()
    );
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", script.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "{} failed ({}); is Maven (mvn) and a JDK 17 installed?",
        script.display(),
        out.status
    );
    let jar = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(|l| PathBuf::from(l.trim()))
        .ok_or_else(|| anyhow::anyhow!("{} printed no jar path", script.display()))?;
    anyhow::ensure!(jar.is_file(), "{} is not a file", jar.display());
    Ok(jar)
}

/// The Kafka Streams reference as a child JVM.
#[derive(Debug)]
pub struct KStreams {
    jar: PathBuf,
    xmx: String,
    child: Option<Child>,
    lines: Option<Receiver<String>>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

impl KStreams {
    pub fn new(jar: PathBuf, xmx: String) -> Self {
        Self {
            jar,
            xmx,
            child: None,
            lines: None,
            stderr_tail: Arc::default(),
        }
    }

    fn tail(&self) -> String {
        self.stderr_tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Kills the JVM if it still runs (after an error).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

impl Drop for KStreams {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Subject for KStreams {
    fn name(&self) -> &'static str {
        "kafka-streams"
    }

    fn start(&mut self, setup: &Setup) -> anyhow::Result<()> {
        self.kill();
        let mut child = Command::new("java")
            .arg(format!("-Xmx{}", self.xmx))
            .arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=warn")
            .arg("-jar")
            .arg(&self.jar)
            .arg(&setup.bootstrap)
            .arg(&setup.input)
            .arg(&setup.output)
            .arg(&setup.app)
            .arg(&setup.state_dir)
            .arg(setup.commit_interval_ms.to_string())
            .arg(setup.threads.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start java: {e}"))?;
        let (tx, rx) = channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        if let Some(stderr) = child.stderr.take() {
            let tail = self.stderr_tail.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut t = tail.lock().unwrap_or_else(PoisonError::into_inner);
                    if t.len() >= 40 {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            });
        }
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.trim() == "STARTING" => break,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    anyhow::bail!("the Kafka Streams reference exited:\n{}", self.tail())
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the Kafka Streams reference did not start within 120 s:\n{}",
                self.tail()
            );
        }
        self.lines = Some(rx);
        Ok(())
    }

    fn check_running(&mut self) -> anyhow::Result<()> {
        let exited = match self.child.as_mut() {
            Some(c) => c.try_wait()?,
            None => anyhow::bail!("the Kafka Streams reference is not started"),
        };
        if let Some(status) = exited {
            anyhow::bail!(
                "the Kafka Streams reference exited ({status}):\n{}",
                self.tail()
            );
        }
        Ok(())
    }

    fn restored(&mut self, _setup: &Setup) -> anyhow::Result<Option<f64>> {
        let Some(rx) = &self.lines else {
            anyhow::bail!("the Kafka Streams reference is not started");
        };
        while let Ok(line) = rx.try_recv() {
            if let Some(n) = line.trim().strip_prefix("RESTORED ") {
                return Ok(Some(n.trim().parse::<f64>()?));
            }
            if line.trim() == "STATE ERROR" {
                anyhow::bail!("the Kafka Streams reference failed:\n{}", self.tail());
            }
        }
        Ok(None)
    }

    fn commits(&self) -> Option<(u64, f64)> {
        None
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_none() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(60);
            while child.try_wait()?.is_none() {
                if Instant::now() >= deadline {
                    eprintln!("[bench] the Kafka Streams reference did not stop in 60 s; killed");
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = child.wait();
        self.lines = None;
        Ok(())
    }
}

fn mean(runs: &[&Figures], f: impl Fn(&Figures) -> f64) -> f64 {
    if runs.is_empty() {
        return 0.0;
    }
    runs.iter().map(|r| f(r)).sum::<f64>() / runs.len() as f64
}

/// The side-by-side table: every run, each engine's mean, and Keel ÷ Kafka Streams.
pub fn render_versus(args: &EngineArgs, runs: &[Figures]) -> String {
    use std::fmt::Write as _;
    let keel: Vec<&Figures> = runs.iter().filter(|r| r.engine == "keel").collect();
    let ks: Vec<&Figures> = runs.iter().filter(|r| r.engine != "keel").collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} records, {} keys, {} partitions, {} stream thread(s), exactly-once, commit interval \
         {} ms, latency at {} records/s for {} s; runs alternate keel / kafka-streams on fresh \
         topics",
        args.records,
        args.keys,
        args.partitions,
        args.threads,
        args.commit_interval_ms,
        args.rate,
        args.latency_seconds
    );
    let mut header = format!("{:<38}", "figure");
    let mut counts = std::collections::BTreeMap::new();
    for r in runs {
        let n = counts.entry(r.engine.clone()).or_insert(0);
        *n += 1;
        let _ = write!(header, " {:>14}", format!("{} {n}", short(&r.engine)));
    }
    let _ = write!(
        header,
        " {:>14} {:>14} {:>10}",
        "keel mean", "kstreams mean", "keel÷ks"
    );
    let _ = writeln!(out, "{header}");
    type Pick = fn(&Figures) -> f64;
    let rows: [(&str, Pick); 11] = [
        ("throughput start→last (rec/s) ↑", |f| f.throughput),
        ("throughput first→last (rec/s) ↑", |f| {
            f.throughput_first_to_last
        }),
        ("latency p50 (ms) ↓", |f| f.latency_p50_ms as f64),
        ("latency p99 (ms) ↓", |f| f.latency_p99_ms as f64),
        ("latency max (ms) ↓", |f| f.latency_max_ms as f64),
        ("restore (rec/s) ↑", |f| f.restore_rate),
        ("RSS after backlog (MiB) ↓", |f| f.rss_after_backlog_mib),
        ("RSS peak (MiB) ↓", |f| f.rss_peak_mib),
        ("RSS after restore (MiB) ↓", |f| f.rss_after_restore_mib),
        ("CPU engine, backlog (s) ↓", |f| f.backlog_cpu_engine_s),
        ("CPU broker, backlog (s) ↓", |f| f.backlog_cpu_broker_s),
    ];
    for (name, pick) in rows {
        let mut line = format!("{name:<38}");
        for r in runs {
            let _ = write!(line, " {:>14}", fmt(pick(r)));
        }
        let (k, s) = (mean(&keel, pick), mean(&ks, pick));
        let ratio = if s > 0.0 {
            format!("{:.2}", k / s)
        } else {
            "-".to_owned()
        };
        let _ = write!(line, " {:>14} {:>14} {ratio:>10}", fmt(k), fmt(s));
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(
        out,
        "↑ higher is better, ↓ lower is better. Keel's RSS is the whole bench process (engine, \
         the bench's producer and reader); Kafka Streams' is its JVM (-Xmx{}).",
        args.kstreams_xmx
    );
    for r in runs {
        if let Some((count, sum)) = r.commits {
            let _ = writeln!(
                out,
                "{}: {count} commits, mean {:.1} ms; restored {:.0} of {} changelog records",
                r.engine,
                1000.0 * sum / count.max(1) as f64,
                r.restored_records,
                r.changelog_records
            );
        } else {
            let _ = writeln!(
                out,
                "{}: restored {:.0} of {} changelog records",
                r.engine, r.restored_records, r.changelog_records
            );
        }
    }
    out
}

fn short(engine: &str) -> &str {
    if engine == "keel" { "keel" } else { "kstreams" }
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}
