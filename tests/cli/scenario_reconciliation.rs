//! `keel scenario reconciliation-lag`, scaled down (`--lag-s 8`), as a child process (`--json`)
//! against an isolated `keel run --roles api,reconciliation` with its own ledger connector
//! (heartbeat every second): every expectation passes and the exit code is 0; against a process
//! without the reconciliation role it fails naming that expectation, with exit code 1. The
//! connector is deleted and its slot dropped at the end.

mod common;

use std::time::{Duration, Instant};

use common::{Run, wait_ready};
use keel_tests::Stack;
use serde_json::Value;

fn scenario(run: &Run, args: &[&str]) -> (std::process::ExitStatus, Value) {
    let mut all = vec!["scenario", "reconciliation-lag"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = run.keel(&all).output().expect("keel scenario runs");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "keel {all:?} printed no JSON report ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    eprintln!("keel {all:?}: {}\n{report:#}", out.status);
    (out.status, report)
}

async fn drop_connector(stack: &Stack, connector: &str, slot: &str) {
    let connect = keel_connectors::ConnectClient::new(&stack.connect_url);
    if let Err(e) = connect.delete(connector).await {
        eprintln!("deleting {connector}: {e}");
    }
    let Ok(pg) = sqlx::PgPool::connect(&stack.postgres_url).await else {
        return;
    };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        let left: Option<(bool,)> =
            sqlx::query_as("SELECT active FROM pg_replication_slots WHERE slot_name = $1")
                .bind(slot)
                .fetch_optional(&pg)
                .await
                .unwrap_or(None);
        match left {
            None => return,
            Some((false,)) => {
                let _ = sqlx::query("SELECT pg_drop_replication_slot($1)")
                    .bind(slot)
                    .execute(&pg)
                    .await;
            }
            Some((true,)) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    eprintln!("replication slot {slot} is still there");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reconciliation_lag_scenario_passes_scaled_down_and_fails_without_the_role() {
    let stack = Stack::from_env();
    let (name, mut run) = Run::new(&stack).await;
    let connector = format!("{name}-ledger-cdc");
    let slot = connector.replace('-', "_");
    run.env.push((
        "KEEL__RECONCILIATION__HEARTBEAT_INTERVAL_MS".to_owned(),
        "1000".to_owned(),
    ));
    let mut keel = run.spawn("keel run", &["run", "--roles", "api,reconciliation"]);
    let client = reqwest::Client::new();
    let outcome = std::panic::AssertUnwindSafe(async {
        wait_ready(&client, &run.api, Duration::from_secs(180)).await;
        let (status, report) = scenario(&run, &["--lag-s", "8", "--timeout-s", "60"]);
        let failed: Vec<&Value> = report["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .filter(|c| c["passed"] != true)
            .collect();
        assert!(
            failed.is_empty() && report["passed"] == true,
            "failed expectations {failed:?} in {report:#}"
        );
        assert!(status.success(), "exited with {status}");
        assert_eq!(report["scenario"], "reconciliation-lag");
        assert!(
            report["checks"].as_array().is_some_and(|c| c.len() >= 9),
            "{report:#}"
        );
        // The connector was resumed: it runs.
        let status = keel_connectors::ConnectClient::new(&stack.connect_url)
            .status(&connector)
            .await
            .expect("status");
        assert!(status.is_running(), "{status:?}");
    });
    let outcome = futures::FutureExt::catch_unwind(outcome).await;
    keel.terminate(Duration::from_secs(20));

    // The same scenario against an API without the reconciliation role fails, saying so.
    if outcome.is_ok() {
        let mut api_only = run.spawn("keel run (api only)", &["run", "--roles", "api"]);
        wait_ready(&client, &run.api, Duration::from_secs(120)).await;
        let (status, report) = scenario(&run, &["--lag-s", "1", "--timeout-s", "5"]);
        api_only.terminate(Duration::from_secs(20));
        assert_eq!(status.code(), Some(1), "{report:#}");
        assert_eq!(report["passed"], false);
        let first = &report["checks"][0];
        assert_eq!(first["passed"], false, "{report:#}");
        assert!(
            first["expectation"]
                .as_str()
                .is_some_and(|e| e.contains("reconciliation role")),
            "{report:#}"
        );
    }
    drop_connector(&stack, &connector, &slot).await;
    run.clean_up(&stack, &name).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
