//! docs/scenarios.md's `keel run` + `keel scenario` blocks, typed as written: each block is read
//! from docs/scenarios.md when the test runs (an edit to the doc is what gets tested) and run
//! against an isolated Keel on the stack:
//!
//! - `export A=1 B=2` sets the variables for every later command of the block (the doc's "another
//!   shell, with the same two exports");
//! - `VAR=value … keel run [args]` starts `keel psp-mock` (docs/scenarios.md: a scenario talks to
//!   a running `keel run` and `keel psp-mock`) and that `keel run`, and waits for `/ready`;
//! - `keel scenario …` runs and must exit 0 (every expectation PASS).
//!
//! The only settings added are the isolation README.md names for "a second, isolated copy"
//! (topic prefix, application id, state directory, databases, keyspace, ports), from
//! [`Run::new`]: none of the fixture's tuning (payment timeouts, PSP rates), so the doc's own
//! variables and Keel's defaults are what runs.
//!
//! - the oversell pair scaled down to 15 s (`KEEL__INVENTORY__HOLD_TTL_MS=15000 keel run`,
//!   `keel scenario oversell --hold-ttl-ms 15000`), then, on the same Keel, `keel order <id>
//!   --json` and `keel lag --once --group <group>` (README.md's synopsis) for an order of its
//!   own;
//! - the oversell at the scenario's own 2 minutes (`export …`, `KEEL__INVENTORY__HOLD_TTL_MS=120000
//!   keel run`, `keel scenario oversell --timeout-s 300`): about four minutes;
//! - reconciliation-lag with the doc's `keel run --roles …,reconciliation` (its ledger connector
//!   and replication slot are deleted at the end, also on failure).

mod common;
mod docs_extract;

use std::process::Output;
use std::time::{Duration, Instant};

use common::{Proc, Run, place, settled};
use keel_tests::Stack;
use serde_json::Value;

const DOC: &str = "docs/scenarios.md";

/// The settings README.md names for an isolated copy, and the stack's address.
const ISOLATION: [&str; 10] = [
    "KEEL__KAFKA__BOOTSTRAP_SERVERS",
    "KEEL__TOPICS__PREFIX",
    "KEEL__STREAMS__APPLICATION_ID",
    "KEEL__MYSQL__URL",
    "KEEL__POSTGRES__URL",
    "KEEL__CASSANDRA__KEYSPACE",
    "KEEL__API__LISTEN",
    "KEEL__PSP_MOCK__LISTEN",
    "KEEL__PAYMENT__PSP_URL",
    "KEEL__METRICS__LISTEN",
];

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(k, _)| {
        !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

fn pair(word: &str) -> (String, String) {
    let (k, v) = word.split_once('=').expect("VAR=value");
    (k.to_owned(), v.to_owned())
}

/// An isolated Keel for one doc block: [`Run::new`] with only its isolation kept.
async fn isolated(stack: &Stack) -> (String, Run) {
    let (name, mut run) = Run::new(stack).await;
    run.env.retain(|(k, _)| ISOLATION.contains(&k.as_str()));
    (name, run)
}

/// What the block left running.
#[derive(Default)]
struct Started {
    procs: Vec<Proc>,
}

/// Runs `commands` (one doc block) as the module doc says; the processes it started.
async fn run_block(run: &Run, commands: &[String]) -> Started {
    let mut exported: Vec<(String, String)> = Vec::new();
    let mut started = Started::default();
    let client = reqwest::Client::new();
    for command in commands {
        eprintln!("$ {command}");
        let words: Vec<&str> = command.split_whitespace().collect();
        if words.first() == Some(&"export") {
            exported.extend(words[1..].iter().map(|w| pair(w)));
            continue;
        }
        let assigned: Vec<(String, String)> = words
            .iter()
            .take_while(|w| is_assignment(w))
            .map(|w| pair(w))
            .collect();
        let args: Vec<&str> = words[assigned.len()..].to_vec();
        assert_eq!(
            args.first(),
            Some(&"keel"),
            "{DOC}: `{command}` is not a keel command"
        );
        let with_env = |mut cmd: std::process::Command| {
            cmd.envs(exported.iter().chain(&assigned).map(|(k, v)| (k, v)));
            cmd
        };
        match args.get(1) {
            Some(&"run") => {
                if started.procs.is_empty() {
                    let psp = with_env(run.keel(&["psp-mock"]))
                        .stdout(std::process::Stdio::null())
                        .spawn()
                        .expect("keel psp-mock starts");
                    started.procs.push(Proc {
                        name: "psp-mock",
                        child: psp,
                    });
                }
                let keel = with_env(run.keel(&args[1..]))
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .expect("keel run starts");
                started.procs.push(Proc {
                    name: "keel run",
                    child: keel,
                });
                ready_or_exited(&client, run, started.procs.last_mut().expect("keel run")).await;
                // As the other end-to-end tests: the runtime's periodic work runs once first.
                tokio::time::sleep(Duration::from_secs(7)).await;
            }
            Some(&"scenario") => {
                let start = Instant::now();
                let out: Output = with_env(run.keel(&args[1..]))
                    .output()
                    .expect("keel scenario runs");
                let stdout = String::from_utf8_lossy(&out.stdout);
                eprintln!("{stdout}\n[{} after {:?}]", out.status, start.elapsed());
                assert!(
                    out.status.success(),
                    "{DOC}: `{command}` exited with {}:\n{stdout}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
                if args.contains(&"--json") {
                    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
                        panic!("{DOC}: `{command}` printed no JSON report ({e}):\n{stdout}")
                    });
                    let failed: Vec<&Value> = report["checks"]
                        .as_array()
                        .map(|c| c.iter().filter(|c| c["passed"] != true).collect())
                        .unwrap_or_default();
                    assert!(
                        report["passed"] == true && failed.is_empty(),
                        "{DOC}: `{command}` failed {failed:?}"
                    );
                } else {
                    assert!(
                        stdout.contains("PASS") && !stdout.contains("FAIL"),
                        "{DOC}: `{command}` printed no PASS, or a FAIL:\n{stdout}"
                    );
                }
            }
            _ => panic!("{DOC}: the test does not know how to run `{command}`"),
        }
    }
    started
}

/// Waits for `/ready`; fails at once, with its exit status, when `keel run` exits first (its
/// stderr, inherited, says why).
async fn ready_or_exited(client: &reqwest::Client, run: &Run, keel: &mut Proc) {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = keel.child.try_wait() {
            panic!(
                "{DOC}: keel run exited with {status} before it was ready (its stderr is above)"
            );
        }
        if let Ok(r) = client.get(format!("{}/ready", run.api)).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "keel run was not ready within 180 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn stop(started: Started) {
    for mut p in started.procs.into_iter().rev() {
        if p.terminate(Duration::from_secs(60)).is_none() {
            eprintln!("{} did not stop on SIGTERM within 60 s", p.name);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_oversell_pair_scaled_down_to_15_s_passes_as_written() {
    let commands = docs_extract::block(DOC, "## oversell", "--hold-ttl-ms 15000");
    assert_eq!(commands.len(), 2, "{commands:?}");
    let stack = Stack::from_env();
    let (name, run) = isolated(&stack).await;
    // Whatever connectors Keel's defaults register for the run (the carts connector with
    // `[carts].source = "cdc"`) are deleted at the end, also on failure.
    let connectors = run.connectors_guard();
    let started = run_block(&run, &commands).await;

    // README.md's synopsis, on the same Keel: `keel order <id> [--json]` and `keel lag --group`.
    run.ok(&[
        "carts",
        "seed",
        "--cart-id",
        "docs-cart",
        "--item",
        "DOCS-SKU:1:500",
    ]);
    run.ok(&["inventory", "seed", "--skus", "DOCS-SKU", "--quantity", "3"]);
    let client = reqwest::Client::new();
    let order = place(&client, &run.api, "docs-cart", "tok_visa", "docs-key").await;
    let id = order["orderId"].as_str().expect("an order id").to_owned();
    let done = settled(&client, &run.api, &id, Duration::from_secs(90)).await;
    assert_eq!(done["status"], "CONFIRMED", "{done}");
    let out = run
        .keel(&["order", &id, "--json"])
        .output()
        .expect("keel order");
    assert!(out.status.success(), "keel order --json: {out:?}");
    let shown: Value = serde_json::from_slice(&out.stdout).expect("keel order --json prints JSON");
    assert!(
        shown.to_string().contains(&id) && shown.to_string().contains("CONFIRMED"),
        "{shown:#}"
    );
    // `--group` (not `--all`: every group of the shared broker, over a thousand, takes minutes).
    let saga = format!("{name}-saga");
    let out = run
        .keel(&["lag", "--once", "--group", &saga])
        .output()
        .expect("keel lag");
    let lag = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "keel lag --once --group {saga}: {out:?}"
    );
    assert!(
        lag.contains(&saga) && !lag.contains(&format!("{name}-inventory")),
        "keel lag --group {saga}: {lag}"
    );

    stop(started);
    drop(connectors);
    run.clean_up(&stack, &name).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_oversell_at_the_scenarios_own_2_minutes_passes_as_written() {
    let commands = docs_extract::block(DOC, "## oversell", "HOLD_TTL_MS=120000");
    assert_eq!(commands.len(), 3, "{commands:?}");
    let stack = Stack::from_env();
    let (name, run) = isolated(&stack).await;
    // Whatever connectors Keel's defaults register for the run (the carts connector with
    // `[carts].source = "cdc"`) are deleted at the end, also on failure.
    let connectors = run.connectors_guard();
    let started = run_block(&run, &commands).await;
    stop(started);
    drop(connectors);
    run.clean_up(&stack, &name).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reconciliation_lag_block_passes_as_written() {
    let commands = docs_extract::block(DOC, "## reconciliation-lag", "reconciliation-lag");
    assert_eq!(commands.len(), 2, "{commands:?}");
    let stack = Stack::from_env();
    let (name, run) = isolated(&stack).await;
    let connectors = run.connectors_guard();
    let outcome =
        futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run_block(&run, &commands)))
            .await;
    // On a panic the block's processes were killed as it unwound (`Proc`'s drop).
    let failed = match outcome {
        Ok(started) => {
            stop(started);
            None
        }
        Err(panic) => Some(panic),
    };
    // The role's ledger connector (and, through `keel connectors delete`, its slot).
    let out = run
        .keel(&["connectors", "delete", &format!("{name}-ledger-cdc")])
        .output()
        .expect("keel connectors delete");
    eprintln!("connectors delete: {out:?}");
    drop(connectors);
    run.clean_up(&stack, &name).await;
    if let Some(panic) = failed {
        std::panic::resume_unwind(panic);
    }
    assert!(
        out.status.success(),
        "keel connectors delete {name}-ledger-cdc failed: {out:?}"
    );
}
