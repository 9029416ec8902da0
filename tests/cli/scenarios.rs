//! `keel scenario` end to end: an isolated `keel run` (authentication on) and PSP mock on the
//! local stack, the three checkout scenarios run as child processes (`--json`) against it, each expected to pass every
//! expectation; and a scenario against an API that is not there fails, naming the expectation.

mod common;

use std::time::Duration;

use common::{Run, free_port, wait_ready};
use keel_tests::Stack;
use serde_json::Value;

/// Runs `keel scenario <args>` and returns its exit status and the JSON report.
fn scenario(run: &Run, args: &[&str]) -> (std::process::ExitStatus, Value) {
    let mut all = vec!["scenario"];
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

fn failed(report: &Value) -> Vec<&Value> {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["passed"] != true)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_three_checkout_scenarios_pass_against_a_running_keel() {
    let stack = Stack::from_env();
    let (name, mut run) = Run::new(&stack).await;
    // With authentication on: the scenarios send the configured token (break report 14, D5:
    // every one failed with 401). Reads stay open.
    run.env
        .push(("KEEL__API__AUTH_TOKENS".into(), "[scenario-token]".into()));
    let _psp = run.spawn("psp-mock", &["psp-mock"]);
    let mut keel = run.spawn("keel run", &["run"]);
    let client = reqwest::Client::new();
    wait_ready(&client, &run.api, Duration::from_secs(120)).await;
    // As in cli_checkout: let the runtime's periodic work run once before the first order.
    tokio::time::sleep(Duration::from_secs(7)).await;

    for (scenario_name, reason) in [
        ("checkout-success", Value::Null),
        ("psp-timeout", Value::from("PSP_TIMEOUT")),
        ("inventory-shortage", Value::from("INSUFFICIENT_STOCK")),
    ] {
        let (status, report) = scenario(&run, &[scenario_name, "--timeout-s", "90"]);
        let failures = failed(&report);
        assert!(
            failures.is_empty() && report["passed"] == true,
            "{scenario_name}: failed expectations {failures:?} in {report:#}"
        );
        assert!(status.success(), "{scenario_name} exited with {status}");
        assert_eq!(report["scenario"], scenario_name);
        let checks = report["checks"].as_array().expect("checks");
        assert!(
            checks.len() >= 8,
            "{scenario_name} checks every store: {report:#}"
        );
        // The order it placed is in the order store with the expected outcome.
        let id = report["orderId"]
            .as_str()
            .or(report["order_id"].as_str())
            .expect("the report names its order")
            .to_owned();
        let order: Value = client
            .get(format!("{}/orders/{id}", run.api))
            .send()
            .await
            .expect("GET /orders/{id}")
            .json()
            .await
            .expect("JSON");
        assert_eq!(order["reason"], reason, "{order}");
    }

    // Each run uses its own cart and SKU: running one again passes again.
    let (status, report) = scenario(&run, &["inventory-shortage", "--timeout-s", "90"]);
    assert!(
        status.success(),
        "a second run collides with the first: {report:#}"
    );

    // Against an API that is not there, the scenario fails and names what failed.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let (status, report) = scenario(
        &run,
        &["checkout-success", "--api", &closed, "--timeout-s", "5"],
    );
    assert!(!status.success(), "no Keel, yet it passed: {report:#}");
    assert_eq!(report["passed"], false);
    let failures = failed(&report);
    assert!(
        failures
            .iter()
            .any(|c| c["expectation"] == "keel is ready (GET /ready)"),
        "the failed expectation is named: {report:#}"
    );

    let status = keel
        .terminate(Duration::from_secs(60))
        .expect("keel run stops on SIGTERM");
    assert!(status.success(), "keel run exited with {status}");
    run.clean_up(&stack, &name).await;
}
