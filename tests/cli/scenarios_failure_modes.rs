//! `keel scenario oversell|schema-drift` end to end (issue 13), scaled down: an isolated
//! `keel run` and PSP mock on the local stack with a 3 s hold TTL, the PSP holding order A's
//! authorization back for 12 s (payment timeouts raised above it), then
//! - `oversell` under `[inventory].oversell = "allow"`: every expectation passes (A CONFIRMED,
//!   OVERSOLD, `inventory_oversell_total` up, stock -1); a run that expects the seed's 2-minute
//!   TTL fails at once and says how to fix it;
//! - the same Keel restarted with `"prevent"`: A is CANCELLED with OVERSELL_PREVENTED, its
//!   authorization voided, stock 0;
//! - `schema-drift` against it: each unreadable foreign record dead-lettered with why and where,
//!   counted; the readable one (a compatible newer version, for an order no saga has) read and
//!   ignored, counted once in `keel_saga_events_ignored_total`; and a foreign newer version makes
//!   `keel schemas check` exit 1 naming the DRIFT.

mod common;

use std::time::Duration;

use common::{Run, wait_ready};
use keel_tests::Stack;
use serde_json::Value;

/// Runs `keel scenario <args> --json`; returns the exit status and the report.
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

fn saw<'r>(report: &'r Value, expectation_part: &str) -> &'r str {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| {
            c["expectation"]
                .as_str()
                .is_some_and(|e| e.contains(expectation_part))
        })
        .and_then(|c| c["saw"].as_str())
        .unwrap_or_else(|| panic!("no expectation like {expectation_part:?} in {report:#}"))
}

fn assert_passed(name: &str, status: std::process::ExitStatus, report: &Value) {
    let failures = failed(report);
    assert!(
        failures.is_empty() && report["passed"] == true,
        "{name}: failed expectations {failures:?} in {report:#}"
    );
    assert!(status.success(), "{name} exited with {status}");
}

const OVERSELL: [&str; 8] = [
    "oversell",
    "--hold-ttl-ms",
    "3000",
    "--psp-delay-ms",
    "12000",
    "--timeout-s",
    "60",
    "--oversell",
];

#[tokio::test(flavor = "multi_thread")]
async fn oversell_in_both_modes_and_schema_drift_pass_against_a_running_keel() {
    let stack = Stack::from_env();
    let (name, mut run) = Run::new(&stack).await;
    for (k, v) in [
        // Scaled down: a 3 s hold, a PSP that answers A after 12 s, payment timeouts above it.
        ("KEEL__INVENTORY__HOLD_TTL_MS", "3000"),
        ("KEEL__INVENTORY__EXPIRY_CHECK_INTERVAL_MS", "200"),
        ("KEEL__PAYMENT__PSP_TIMEOUT_MS", "30000"),
        ("KEEL__SAGA__PAYMENT_TIMEOUT_MS", "40000"),
        ("KEEL__INVENTORY__OVERSELL", "allow"),
    ] {
        run.env.push((k.into(), v.into()));
    }
    let _psp = run.spawn("psp-mock", &["psp-mock"]);
    let mut keel = run.spawn("keel run", &["run"]);
    let client = reqwest::Client::new();
    wait_ready(&client, &run.api, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(7)).await;

    // A scenario that needs the seed's 2-minute TTL refuses this Keel and says how to fix it.
    let (status, report) = scenario(&run, &["oversell", "--timeout-s", "10"]);
    assert!(!status.success(), "{report:#}");
    let ttl = saw(&report, "[inventory].hold_ttl_ms is 120000");
    assert!(
        ttl.contains("3000 ms") && ttl.contains("KEEL__INVENTORY__HOLD_TTL_MS=120000"),
        "{ttl}"
    );

    // allow: the oversell is reproduced.
    let mut args = OVERSELL.to_vec();
    args.push("allow");
    let (status, report) = scenario(&run, &args);
    assert_passed("oversell (allow)", status, &report);
    assert!(
        saw(&report, "order A CONFIRMED").starts_with("CONFIRMED"),
        "{report:#}"
    );
    assert_eq!(
        saw(&report, "answers A's confirm OVERSOLD"),
        "OVERSOLD",
        "{report:#}"
    );

    // prevent: the same Keel restarted with the other policy compensates the order instead.
    let status = keel
        .terminate(Duration::from_secs(60))
        .expect("keel run stops on SIGTERM");
    assert!(status.success(), "keel run exited with {status}");
    run.env
        .push(("KEEL__INVENTORY__OVERSELL".into(), "prevent".into()));
    let mut keel = run.spawn("keel run (prevent)", &["run"]);
    wait_ready(&client, &run.api, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let mut args = OVERSELL.to_vec();
    args.push("prevent");
    let (status, report) = scenario(&run, &args);
    assert_passed("oversell (prevent)", status, &report);
    assert!(
        saw(&report, "order A CANCELLED OVERSELL_PREVENTED").contains("OVERSELL_PREVENTED"),
        "{report:#}"
    );
    assert!(
        saw(&report, "authorization voided").contains("VOIDED"),
        "{report:#}"
    );

    // schema-drift: every unreadable foreign record is dead-lettered, the readable one ignored,
    // both counted, and the drift is flagged.
    let (status, report) = scenario(&run, &["schema-drift", "--timeout-s", "60"]);
    assert_passed("schema-drift", status, &report);
    assert!(
        saw(&report, "schema id unknown to the registry").contains("is unknown to the registry"),
        "{report:#}"
    );
    assert!(
        saw(&report, "keel schemas check flags DRIFT").contains("risk_score"),
        "{report:#}"
    );
    // The compatible newer version is read and, for an order no saga has, ignored: counted
    // once, not dead-lettered.
    assert!(
        saw(&report, "keel_saga_events_ignored_total").starts_with("0 -> 1 "),
        "{report:#}"
    );

    // `keel schemas check` itself: clean for the run's subjects, then a foreign newer version
    // of payment.authorized.v1 fails the gate with DRIFT on that subject's line.
    let out = run.keel(&["schemas", "check"]).output().expect("runs");
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let registry = keel_avro::SchemaRegistry::new(&keel_avro::RegistryConfig::with_url(
        stack.registry_url.clone(),
    ))
    .expect("a registry client");
    let subject = format!("{name}.payment.authorized.v1-value");
    let contract = keel_avro::contract_for_topic("payment.authorized.v1").expect("a contract");
    let mut schema: Value = serde_json::from_str(contract.schema_source).expect("JSON");
    schema["fields"]
        .as_array_mut()
        .expect("fields")
        .push(serde_json::json!({"name": "channel", "type": ["null", "string"], "default": null}));
    registry
        .register(&subject, contract.schema_source)
        .await
        .expect("Keel's version");
    registry
        .register(&subject, &schema.to_string())
        .await
        .expect("a compatible foreign version");
    let out = run.keel(&["schemas", "check"]).output().expect("runs");
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{table}");
    let line = table
        .lines()
        .find(|l| l.starts_with(&subject))
        .unwrap_or_else(|| panic!("no line for {subject}:\n{table}"));
    assert!(
        line.contains("DRIFT") && line.contains("adds field 'channel'"),
        "{line}"
    );
    let _ = reqwest::Client::new()
        .delete(format!("{}/subjects/{subject}", stack.registry_url))
        .send()
        .await;

    let status = keel
        .terminate(Duration::from_secs(60))
        .expect("keel run stops on SIGTERM");
    assert!(status.success(), "keel run exited with {status}");
    run.clean_up(&stack, &name).await;
}
