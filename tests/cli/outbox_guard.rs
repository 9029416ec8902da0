//! Two outbox publishers, against the real stack: an isolated run's Debezium outbox
//! connectors are registered (`[outbox].mode = "debezium"`, as `make demo` leaves them); a
//! later `keel run` with the relay role in relay mode and the same application id must refuse
//! to start (it would publish every outbox row twice) and say which connectors and the two
//! ways out (with Connect unreachable it warns and starts); and `keel connectors status` in relay mode (none configured) shows the
//! application's registered connectors instead of "none configured".

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Proc, Run};
use keel_tests::Stack;

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_mode_run_refuses_to_start_while_this_configurations_outbox_connectors_run() {
    let stack = Stack::from_env();
    let (name, mut run) = Run::new(&stack).await;
    run.with_debezium_outbox();
    let connectors = run.connectors_guard();
    run.ok(&["connectors", "register"]);
    let (order, payment) = (
        format!("{name}-order-outbox"),
        format!("{name}-payment-outbox"),
    );

    // A fresh shell: relay mode, nothing configured; status falls back to what Connect has.
    let out = run
        .keel(&["connectors", "status"])
        .env("KEEL__OUTBOX__MODE", "relay")
        .output()
        .expect("keel runs");
    let status = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "status exits 0: {status}");
    assert!(status.contains(&format!("named {name}-*")), "{status}");
    for connector in [&order, &payment] {
        assert!(
            status.contains(&format!("{connector}: connector RUNNING")),
            "{status}"
        );
    }

    // `keel run` in relay mode must not start a second publisher.
    let mut child = run
        .keel(&["run", "--roles", "relay"])
        .env("KEEL__OUTBOX__MODE", "relay")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("keel starts");
    let start = Instant::now();
    let exit = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();

    // Connect unreachable: relay mode does not depend on it; it warns, and the relay starts.
    let child = run
        .keel(&["run", "--roles", "relay"])
        .env("KEEL__OUTBOX__MODE", "relay")
        .env(
            "KEEL__CONNECT__URL",
            format!("http://127.0.0.1:{}", common::free_port()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("keel starts");
    let mut unchecked = Proc {
        name: "keel run (Connect unreachable)",
        child,
    };
    let client = reqwest::Client::new();
    let start = Instant::now();
    let mut healthy = false;
    while start.elapsed() < Duration::from_secs(60) && !healthy {
        healthy = client
            .get(format!("{}/health", run.admin))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let still_running = unchecked.child.try_wait().expect("try_wait").is_none();
    unchecked.terminate(Duration::from_secs(30));
    let mut warned = String::new();
    if let Some(mut err) = unchecked.child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut err, &mut warned);
    }
    drop(unchecked);
    drop(connectors);
    run.clean_up(&stack, &name).await;

    let exit = exit.unwrap_or_else(|| {
        panic!("keel run in relay mode kept running beside the outbox connectors: {stderr}")
    });
    assert!(!exit.success(), "keel run must exit non-zero: {stderr}");
    for part in [
        format!("{order}, {payment}"),
        "twice".to_owned(),
        "KEEL__OUTBOX__MODE=debezium".to_owned(),
        format!("keel connectors delete {order} {payment}"),
    ] {
        assert!(stderr.contains(&part), "{part:?} in: {stderr}");
    }
    assert!(
        healthy && still_running,
        "relay mode starts when Connect is unreachable: {warned}"
    );
    assert!(
        warned.contains("could not check Kafka Connect"),
        "and warns: {warned}"
    );
}
