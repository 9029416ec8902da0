//! A throwaway single-node KRaft Kafka broker for tests that fault the broker itself (pause
//! it, restart it): never the shared stack broker on :9092, which other tests use.
//!
//! The broker runs from the jars `stack/keel-stack up` installed
//! (`$KEEL_STACK_CACHE/kafka/lib-<version>/`, see `stack/servers/kafka.sh`), in a JVM of its
//! own with a small heap, on two free 127.0.0.1 ports (PLAINTEXT and CONTROLLER), with its data,
//! configuration and log in a temporary directory. [`Broker`] stops it by pid on drop (after a
//! SIGCONT, in case the test paused it) and removes the directory unless the test panicked
//! (then the broker's log is kept and its path printed).

#![allow(dead_code)]

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// How long a (re)started broker may take to answer metadata requests: a JVM start on a
/// loaded 2-core machine.
const READY_WITHIN: Duration = Duration::from_secs(120);

/// How long a SIGTERM'd broker may take to shut down cleanly before it is killed.
const STOP_WITHIN: Duration = Duration::from_secs(60);

/// One Kafka process (broker and controller in one JVM) owned by the test.
#[derive(Debug)]
pub struct Broker {
    /// `127.0.0.1:<port>`, for `bootstrap.servers`.
    pub bootstrap: String,
    dir: PathBuf,
    lib: PathBuf,
    child: Option<Child>,
}

impl Broker {
    /// Formats a fresh log directory and starts the broker; returns once it answers a
    /// metadata request. Panics (with the log's tail) if it does not start within 2 minutes.
    pub fn start(tag: &str) -> Self {
        let lib = kafka_lib_dir();
        let dir = std::env::temp_dir().join(keel_tests::unique(&format!("keel_broker_{tag}")));
        std::fs::create_dir_all(&dir).expect("broker dir");
        let (port, controller) = free_ports();
        std::fs::write(
            dir.join("server.properties"),
            properties(&dir, port, controller),
        )
        .expect("server.properties");
        std::fs::write(dir.join("log4j2.xml"), LOG4J2).expect("log4j2.xml");
        let mut broker = Self {
            bootstrap: format!("127.0.0.1:{port}"),
            dir,
            lib,
            child: None,
        };
        let format = broker
            .java()
            // `--cluster-id=<id>`: an id may start with '-'.
            .args(["kafka.tools.StorageTool", "format"])
            .arg(format!("--cluster-id={}", cluster_id()))
            .arg("--config")
            .arg(broker.dir.join("server.properties"))
            .stdout(broker.log_file())
            .stderr(broker.log_file())
            .status()
            .expect("java runs the storage tool");
        assert!(
            format.success(),
            "formatting the broker's storage failed: {}",
            broker.log_tail()
        );
        broker.spawn();
        broker
    }

    /// The broker's pid while it runs.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the broker runs").id()
    }

    /// Freezes the broker (SIGSTOP): its sockets stay open but nothing answers, as with a
    /// broker stuck in a long GC pause or a hung host.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused broker (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Stops the broker cleanly (SIGTERM, waiting for the exit) and starts it again on the
    /// same ports and log directory; returns once it answers again.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Where the broker logs (warnings and errors only).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("broker.log")
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(child.id(), "-CONT");
        signal(child.id(), "-TERM");
        let deadline = Instant::now() + STOP_WITHIN;
        while child.try_wait().expect("broker status").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.wait();
    }

    fn spawn(&mut self) {
        let child = self
            .java()
            .arg(format!("-Dkafka.logs.dir={}", self.dir.display()))
            .arg("kafka.Kafka")
            .arg(self.dir.join("server.properties"))
            .stdout(self.log_file())
            .stderr(self.log_file())
            .stdin(Stdio::null())
            .spawn()
            .expect("java starts the broker");
        self.child = Some(child);
        self.wait_ready();
    }

    /// `java` with a small heap, the test's log4j configuration and the distribution's jars
    /// on the class path; callers add system properties, then the main class and its arguments.
    fn java(&self) -> Command {
        let java = std::env::var_os("JAVA_HOME")
            .map(|home| PathBuf::from(home).join("bin/java"))
            .unwrap_or_else(|| PathBuf::from("java"));
        let mut cmd = Command::new(java);
        cmd.args([
            "-Xms128m",
            "-Xmx384m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
        ])
        .arg(format!(
            "-Dlog4j2.configurationFile={}",
            self.dir.join("log4j2.xml").display()
        ))
        .arg("-cp")
        .arg(format!("{}/*", self.lib.display()));
        cmd
    }

    fn log_file(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("broker log")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "{} (last lines):\n{}",
            self.log_path().display(),
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }

    fn wait_ready(&mut self) {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("log_level", "3")
            .create()
            .expect("metadata client");
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(exit) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("broker status"))
            {
                panic!("the broker exited with {exit}: {}", self.log_tail());
            }
            if let Ok(md) = consumer.fetch_metadata(None, Duration::from_secs(2))
                && !md.brokers().is_empty()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the broker did not answer within {READY_WITHIN:?}: {}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn signal(&self, sig: &str) {
        assert!(signal(self.pid(), sig), "kill {sig} {}", self.pid());
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "-CONT");
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("broker log kept: {}", self.log_path().display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `kill <sig> <pid>`; whether it was delivered.
pub fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// The stack's Kafka jars: `$KEEL_STACK_CACHE/kafka/lib-$KEEL_KAFKA_VERSION` (defaults as in
/// `stack/lib.sh` and `stack/servers/kafka.sh`), else the newest `lib-*` there.
fn kafka_lib_dir() -> PathBuf {
    let cache = std::env::var_os("KEEL_STACK_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("keel/stack")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/keel/stack")))
        .expect("KEEL_STACK_CACHE or HOME")
        .join("kafka");
    if let Ok(version) = std::env::var("KEEL_KAFKA_VERSION") {
        let dir = cache.join(format!("lib-{version}"));
        assert!(is_kafka_lib(&dir), "no Kafka jars in {}", dir.display());
        return dir;
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&cache)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.retain(|d| is_kafka_lib(d));
    dirs.sort();
    dirs.pop().unwrap_or_else(|| {
        panic!(
            "no Kafka distribution under {} (stack/keel-stack up installs it)",
            cache.display()
        )
    })
}

fn is_kafka_lib(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| {
        entries.any(|e| {
            e.is_ok_and(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with("kafka_2.") && name.ends_with(".jar")
            })
        })
    })
}

/// Two distinct free ports on 127.0.0.1, outside the kernel's ephemeral range (the broker is
/// restarted on them while clients keep reconnecting: [`keel_tests::free_port`]).
fn free_ports() -> (u16, u16) {
    let a = keel_tests::free_port();
    let held = TcpListener::bind(("127.0.0.1", a)).expect("the first port");
    let b = keel_tests::free_port();
    drop(held);
    (a, b)
}

/// A KRaft cluster id: 16 random bytes in URL-safe base64 without padding (22 characters).
fn cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes: [u8; 16] = rand::random();
    let mut bits = 0u32;
    let mut held = 0;
    let mut out = String::new();
    for b in bytes {
        bits = (bits << 8) | u32::from(b);
        held += 8;
        while held >= 6 {
            held -= 6;
            out.push(ALPHABET[((bits >> held) & 63) as usize] as char);
        }
    }
    if held > 0 {
        out.push(ALPHABET[((bits << (6 - held)) & 63) as usize] as char);
    }
    out
}

/// One node, every internal topic with one replica and one partition (a fast start), and the
/// broker's check for timed-out transactions every second (default 10 s), so a transaction left
/// open by a pause is aborted soon after the timeout.
fn properties(dir: &Path, port: u16, controller: u16) -> String {
    let mut p = String::new();
    for line in [
        "process.roles=broker,controller",
        "node.id=1",
        &format!("controller.quorum.voters=1@127.0.0.1:{controller}"),
        &format!("listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}"),
        &format!("advertised.listeners=PLAINTEXT://127.0.0.1:{port}"),
        "inter.broker.listener.name=PLAINTEXT",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        &format!("log.dirs={}", dir.join("data").display()),
        "num.partitions=1",
        "default.replication.factor=1",
        "min.insync.replicas=1",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "share.coordinator.state.topic.num.partitions=1",
        "transaction.abort.timed.out.transaction.cleanup.interval.ms=1000",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=true",
        "log.segment.bytes=16777216",
        "num.network.threads=2",
        "num.io.threads=2",
    ] {
        let _ = writeln!(p, "{line}");
    }
    p
}

const LOG4J2: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN" name="keel-test-broker">
  <Appenders>
    <Console name="stdout" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="WARN"><AppenderRef ref="stdout"/></Root>
  </Loggers>
</Configuration>
"#;
