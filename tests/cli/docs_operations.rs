//! docs/operations.md's and README.md's operator commands that no other test runs, typed as
//! written (the blocks are read from the docs when the test runs); only names are changed to the
//! run's own (`keel-order-outbox` → `<run>-order-outbox`, the schema history topic under the
//! run's prefix, a schema id that exists):
//!
//! - "Binlog gap: re-snapshot deliberately", every command of its three blocks in order (`curl`
//!   stop and offset reset on Connect's REST API, `keel connectors delete <name>`, Kafka's
//!   `TopicCommand --delete`, `keel connectors register`, `keel connectors status`), on a
//!   Debezium outbox registered for the run; and README.md's `keel connectors plugins|list` and
//!   `keel connectors restart`;
//! - the schema behind an id: `curl http://127.0.0.1:8080/apis/ccompat/v7/schemas/ids/<id>`;
//! - README.md's `keel reset --application-id APP --input-topics a,b --state-dir DIR`;
//! - README.md's `keel stack status|env|logs <server>|up <server>` and docs/STACK.md's
//!   `keel-stack reload prometheus` (the running stack: `up` of a running server and `reload`
//!   change nothing; `down` is CI's, `.ci/run`).

mod common;
mod docs_extract;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::Run;
use keel_tests::kafka::create_topics;
use keel_tests::topics::TopicCleanup;
use keel_tests::{Stack, unique};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

const OPS: &str = "docs/operations.md";
const BINLOG_GAP: &str = "### Binlog gap: re-snapshot deliberately";

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `command` in bash, from the repository root (the docs' `stack/keel-stack` is relative to
/// it), with the test's `keel` first on `PATH` and the run's environment.
fn bash(run: &Run, command: &str) -> Output {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_keel"))
        .parent()
        .expect("the keel binary's directory")
        .to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.args(["-c", command])
        .current_dir(docs_extract::repo())
        .envs(run.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("KEEL__STREAMS__STATE_DIR", run.state_dir.path())
        .env("RUST_LOG", "warn")
        .env("PATH", path);
    let out = cmd.output().expect("bash runs");
    eprintln!("$ {command}\n{}[{}]", text(&out), out.status);
    out
}

/// `keel connectors status` until it exits 0 (a restarted task takes a moment).
fn status_ok_within(run: &Run, within: Duration) -> String {
    let start = Instant::now();
    loop {
        let out = run
            .keel(&["connectors", "status"])
            .output()
            .expect("keel runs");
        if out.status.success() {
            return text(&out);
        }
        assert!(
            start.elapsed() < within,
            "keel connectors status did not exit 0 within {within:?}: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_connector_commands_and_the_binlog_gap_recovery_run_as_written() {
    let stack = Stack::from_env();
    let (name, mut run) = Run::new(&stack).await;
    run.with_debezium_outbox();
    let guard = run.connectors_guard();
    let order_outbox = format!("{name}-order-outbox");
    let prefix = format!("{name}.");

    // README.md: `keel connectors plugins|list`, `register`, `restart`.
    let plugins = run
        .keel(&["connectors", "plugins"])
        .output()
        .expect("keel runs");
    assert!(plugins.status.success(), "{}", text(&plugins));
    assert!(text(&plugins).contains("io.debezium"), "{}", text(&plugins));
    run.ok(&["connectors", "register"]);
    let list = run
        .keel(&["connectors", "list"])
        .output()
        .expect("keel runs");
    assert!(
        list.status.success() && text(&list).contains(&order_outbox),
        "keel connectors list: {}",
        text(&list)
    );
    status_ok_within(&run, Duration::from_secs(60));
    let restart = run
        .keel(&["connectors", "restart"])
        .output()
        .expect("keel runs");
    assert!(
        restart.status.success(),
        "keel connectors restart: {}",
        text(&restart)
    );
    let after = status_ok_within(&run, Duration::from_secs(120));
    assert!(
        after.contains(&format!("{order_outbox}: connector RUNNING")),
        "{after}"
    );

    // docs/operations.md's re-snapshot, step by step, every command as written.
    let commands = docs_extract::section(OPS, BINLOG_GAP);
    let expected_start = [
        "curl -X PUT",
        "curl -X DELETE",
        "keel connectors delete",
        "stack/keel-stack",
    ];
    for (c, start) in commands.iter().zip(expected_start) {
        assert!(c.starts_with(start), "{OPS} {BINLOG_GAP:?}: {commands:?}");
    }
    let history = "outbox.orders.schema-history";
    assert!(
        commands.iter().any(|c| c.contains(history)),
        "{OPS}: the schema history topic is no longer {history}: {commands:?}"
    );
    for command in &commands {
        let typed = command
            .replace("keel-order-outbox", &order_outbox)
            .replace(&format!(" {history}"), &format!(" {prefix}{history}"));
        let out = bash(&run, &typed);
        let printed = text(&out);
        assert!(out.status.success(), "`{typed}` failed: {printed}");
        assert!(
            !printed.contains("error_code"),
            "`{typed}`: Connect refused it: {printed}"
        );
        if typed.contains("/stop") {
            // Connect accepts the offset reset only once the connector is STOPPED.
            let start = Instant::now();
            loop {
                let state: Value = reqwest::get(format!(
                    "{}/connectors/{order_outbox}/status",
                    stack.connect_url
                ))
                .await
                .expect("Connect answers")
                .json()
                .await
                .expect("JSON");
                if state["connector"]["state"] == "STOPPED" {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "not STOPPED: {state}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        if typed.contains("/offsets") {
            assert!(printed.contains("reset"), "`{typed}`: {printed}");
        }
    }
    assert!(
        commands
            .last()
            .is_some_and(|c| c == "keel connectors status"),
        "{OPS}: the recovery ends with `keel connectors status`: {commands:?}"
    );

    drop(guard);
    run.clean_up(&stack, &name).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_schema_behind_an_id_is_one_curl_away() {
    let stack = Stack::from_env();
    let shown = docs_extract::all_commands()
        .into_iter()
        .find(|c| c.doc == OPS && c.text.starts_with("curl ") && c.text.contains("/schemas/ids/"))
        .expect("docs/operations.md shows the schema behind an id");
    let (url, doc_id) = shown.text["curl ".len()..]
        .rsplit_once('/')
        .expect("…/schemas/ids/<id>");
    assert!(
        url.starts_with(&stack.registry_url),
        "{OPS}: `{}` is not the stack's registry {}",
        shown.text,
        stack.registry_url
    );
    // An id that exists on this registry (the doc's is one of its run's).
    let subjects: Vec<String> = reqwest::get(format!("{}/subjects", stack.registry_url))
        .await
        .expect("the registry answers")
        .json()
        .await
        .expect("subjects");
    let subject = subjects
        .iter()
        .find(|s| s.ends_with("order.created-value"))
        .or(subjects.first())
        .expect("a subject (keel schemas register has run on the stack)");
    let latest: Value = reqwest::get(format!(
        "{}/subjects/{subject}/versions/latest",
        stack.registry_url
    ))
    .await
    .expect("the registry answers")
    .json()
    .await
    .expect("a version");
    let id = latest["id"].as_i64().expect("an id").to_string();
    let typed = shown
        .text
        .replacen(&format!("/{doc_id}"), &format!("/{id}"), 1);
    let out = Command::new("bash")
        .args(["-c", &typed])
        .output()
        .expect("bash");
    let body: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("`{typed}` printed no JSON ({e}): {}", text(&out)));
    assert!(out.status.success(), "`{typed}`: {}", text(&out));
    assert!(
        body["schema"]
            .as_str()
            .is_some_and(|s| s.contains("\"record\"")),
        "`{typed}` shows no Avro schema: {body}"
    );
}

#[tokio::test]
async fn reset_takes_input_topics_and_removes_the_state_dir() {
    let bootstrap = Stack::from_env().kafka_bootstrap;
    let app = unique("docs_reset_app");
    let (a, b) = (unique("docs_reset_a"), unique("docs_reset_b"));
    let _topics = TopicCleanup::new(bootstrap.as_str()).topics([&a, &b]);
    create_topics(&bootstrap, &[&a, &b], 1)
        .await
        .expect("topics");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("producer");
    for topic in [&a, &b] {
        for i in 0..2 {
            producer
                .send(
                    FutureRecord::to(topic)
                        .partition(0)
                        .key("k")
                        .payload(&format!("{i}")),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("produced");
        }
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", &app)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for topic in [&a, &b] {
        tpl.add_partition_offset(topic, 0, Offset::Offset(2))
            .expect("tpl");
    }
    consumer.commit(&tpl, CommitMode::Sync).expect("committed");
    drop(consumer);
    let state = tempfile::tempdir().expect("a state dir");
    std::fs::create_dir_all(state.path().join(&app).join("0_0")).expect("the app's state");

    // README.md: keel reset --application-id APP [--to-datetime T] [--input-topics a,b] [--state-dir DIR]
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["reset", "--application-id", &app])
        .args(["--input-topics", &format!("{a},{b}")])
        .args(["--state-dir", &state.path().display().to_string()])
        .env("KEEL__KAFKA__BOOTSTRAP_SERVERS", &bootstrap)
        .env("RUST_LOG", "warn")
        .output()
        .expect("keel reset runs");
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    for topic in [&a, &b] {
        let line = format!("rewound {topic}/0 to offset 0");
        assert!(printed.contains(&line), "{line} missing from:\n{printed}");
    }
    assert!(
        !state.path().join(&app).exists(),
        "--state-dir: {}/{app} is still there",
        state.path().display()
    );
}

#[test]
fn the_stack_commands_answer_on_the_running_stack() {
    let keel = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .expect("keel runs");
        eprintln!("$ keel {}\n{}[{}]", args.join(" "), text(&out), out.status);
        assert!(out.status.success(), "keel {args:?}: {}", text(&out));
        text(&out)
    };
    let status = keel(&["stack", "status"]);
    assert!(
        status.contains("kafka") && status.contains("9092"),
        "{status}"
    );
    let env = keel(&["stack", "env"]);
    assert!(
        env.contains("KEEL_") && env.contains("127.0.0.1:9092"),
        "{env}"
    );
    let logs = keel(&["stack", "logs", "kafka"]);
    assert!(
        !logs.trim().is_empty(),
        "keel stack logs kafka printed nothing"
    );
    // `up` of a server that runs: checked healthy, left as it is.
    keel(&["stack", "up", "kafka"]);
    // docs/STACK.md: `keel-stack reload prometheus` (the scrape list re-read in place).
    let out = Command::new(keel_tests::stack_script())
        .args(["reload", "prometheus"])
        .output()
        .expect("keel-stack runs");
    assert!(
        out.status.success(),
        "keel-stack reload prometheus: {}",
        text(&out)
    );
}
