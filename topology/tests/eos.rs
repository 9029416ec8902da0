//! Exactly-once against the real broker: a stateful topology (running sums per key) is killed
//! with SIGKILL at random moments, over and over, and restarted; the `read_committed` output
//! must equal one clean run's — no duplicate, no gap — and so must the store's changelog.
//!
//! The application runs in a child process: this test binary started again with
//! `--exact eos_child` and `KEEL_EOS_CHILD` set. `KEEL_EOS_KILLS` sets how many kills
//! (default 5; the soak mode runs more: `KEEL_EOS_KILLS=50`), `KEEL_EOS_SEED` replays a run.

mod common;

use common::{committed_by_key, diff, feed, make_input, runtime};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel_state::StateConfig;
use keel_tests::kafka::create_topics;
use keel_tests::topics::TopicCleanup;
use keel_tests::{Stack, unique};
use keel_topology::{KafkaStreams, StreamsConfig};
use rand::{Rng, SeedableRng};

const CHILD_ENV: &str = "KEEL_EOS_CHILD";

/// What the child runs: `app,input,output,state_dir,instance,threads`.
#[derive(Debug, Clone)]
struct ChildSpec {
    app: String,
    input: String,
    output: String,
    state_dir: PathBuf,
    instance: String,
    threads: usize,
}

impl ChildSpec {
    fn encode(&self) -> String {
        format!(
            "{},{},{},{},{},{}",
            self.app,
            self.input,
            self.output,
            self.state_dir.display(),
            self.instance,
            self.threads
        )
    }

    fn decode(s: &str) -> Self {
        let p: Vec<&str> = s.split(',').collect();
        Self {
            app: p[0].into(),
            input: p[1].into(),
            output: p[2].into(),
            state_dir: p[3].into(),
            instance: p[4].into(),
            threads: p[5].parse().unwrap_or(1),
        }
    }

    fn stop_file(&self) -> PathBuf {
        self.state_dir.join(format!("stop-{}", self.instance))
    }

    fn spawn(&self, log: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--ignored",
                "--exact",
                "eos_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, self.encode())
            .env("RUST_LOG", "info,librdkafka=warn")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("the child starts")
    }
}

/// Not a test on its own: the application process the tests below start, kill and restart.
#[test]
#[ignore = "child process of the exactly-once tests"]
fn eos_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let spec = ChildSpec::decode(&spec);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let mut config = StreamsConfig::new(&spec.app, Stack::from_env().kafka_bootstrap);
    config.state = StateConfig::with_dir(&spec.state_dir);
    config.instance_id = Some(spec.instance.clone());
    config.num_stream_threads = spec.threads;
    config
        .consumer
        .insert("session.timeout.ms".into(), "6000".into());
    let handle = KafkaStreams::new(common::running_sums(&spec.input, &spec.output), config)
        .expect("valid config")
        .start()
        .expect("starts");
    keel_topology::shutdown_on_signals(handle.shutdown_flag()).expect("signal handlers");
    loop {
        std::thread::sleep(Duration::from_millis(50));
        if spec.stop_file().exists() {
            handle.shutdown().expect("clean shutdown");
            return;
        }
        if !handle.is_running() {
            // Stopped by SIGTERM (clean) or by an error (the test fails on it).
            handle.wait().expect("the application stopped cleanly");
            return;
        }
    }
}

fn kills() -> usize {
    std::env::var("KEEL_EOS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

#[test]
fn output_and_store_are_exactly_once_across_repeated_kill_9() {
    let stack = Stack::from_env();
    let bootstrap = &stack.kafka_bootstrap;
    let spec = ChildSpec {
        app: unique("eos_app"),
        input: unique("eos_in"),
        output: unique("eos_out"),
        state_dir: std::env::temp_dir().join(unique("keel_eos_state")),
        instance: "crashy".into(),
        threads: 2,
    };
    // Declared before the children and the feeder: dropped after them.
    let _topics = TopicCleanup::new(bootstrap.as_str())
        .topics([&spec.input, &spec.output])
        .prefix(format!("{}-", spec.app));
    std::fs::create_dir_all(&spec.state_dir).expect("state dir");
    let log = spec.state_dir.with_extension("log");
    runtime()
        .block_on(create_topics(bootstrap, &[&spec.input, &spec.output], 3))
        .expect("topics");
    // Records fed at ~2,000/s for about as long as the kill rounds last (5,000 per kill), so
    // every kill lands while input is arriving.
    let input = make_input(40, 125 * kills().max(1));
    let expected = common::expected_sums(&input);
    let feeder = {
        let (bootstrap, topic, input) = (bootstrap.clone(), spec.input.clone(), input.clone());
        std::thread::spawn(move || {
            feed(&bootstrap, &topic, &input, 200, Duration::from_millis(100))
        })
    };

    let seed: u64 = std::env::var("KEEL_EOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("KEEL_EOS_SEED={seed}; child log: {}", log.display());
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for round in 0..kills() {
        let mut child = spec.spawn(&log);
        let after = Duration::from_millis(rng.random_range(1_500..5_000));
        std::thread::sleep(after);
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        eprintln!("round {round}: killed after {after:?}");
    }

    feeder.join().expect("the feeder finished");

    let mut child = spec.spawn(&log);
    let actual = committed_by_key(
        bootstrap,
        &spec.output,
        input.len(),
        Duration::from_secs(180),
    );
    std::fs::write(spec.stop_file(), b"").expect("stop file");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("status").is_none() {
        assert!(
            Instant::now() < deadline,
            "the child did not stop; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        actual == expected,
        "read_committed output differs from a clean run (seed {seed}, log {}):\n{}",
        log.display(),
        diff(&expected, &actual)
    );

    // The store's changelog: the clean run's sums, some skipped, none from an aborted
    // transaction, the final state complete.
    common::assert_changelog_follows(
        bootstrap,
        &spec.app,
        &expected,
        &format!("seed {seed}, log {}", log.display()),
    );
    let _ = std::fs::remove_dir_all(&spec.state_dir);
}

#[test]
fn sigterm_finishes_the_transaction_and_leaves_checkpoints() {
    let stack = Stack::from_env();
    let bootstrap = &stack.kafka_bootstrap;
    let spec = ChildSpec {
        app: unique("term_app"),
        input: unique("term_in"),
        output: unique("term_out"),
        state_dir: std::env::temp_dir().join(unique("keel_term_state")),
        instance: "polite".into(),
        threads: 1,
    };
    // Declared before the children and the feeder: dropped after them.
    let _topics = TopicCleanup::new(bootstrap.as_str())
        .topics([&spec.input, &spec.output])
        .prefix(format!("{}-", spec.app));
    std::fs::create_dir_all(&spec.state_dir).expect("state dir");
    let log = spec.state_dir.with_extension("log");
    runtime()
        .block_on(create_topics(bootstrap, &[&spec.input, &spec.output], 3))
        .expect("topics");
    let input = make_input(10, 50);
    feed(bootstrap, &spec.input, &input, 500, Duration::ZERO);
    let mut child = spec.spawn(&log);
    let actual = committed_by_key(
        bootstrap,
        &spec.output,
        input.len(),
        Duration::from_secs(120),
    );
    assert_eq!(
        actual,
        common::expected_sums(&input),
        "log {}",
        log.display()
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("status") {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "no exit after SIGTERM; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        exit.success(),
        "exit {exit:?} after SIGTERM; see {}",
        log.display()
    );
    for partition in 0..3 {
        let checkpoint = spec
            .state_dir
            .join(&spec.app)
            .join(format!("0_{partition}"))
            .join(".checkpoint");
        assert!(checkpoint.exists(), "{} missing", checkpoint.display());
    }
    let _ = std::fs::remove_dir_all(&spec.state_dir);
}
