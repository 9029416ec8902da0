//! Arguments `keel` refuses before it talks to anything (break report, bad-input pass): each
//! command exits non-zero with an error naming the flag and why, fast, without a client made.
//!
//! - `keel inventory seed` takes the HTTP API's SKU, reason and warehouse rules
//!   (`keel_ingest_api::inventory`) and a quantity of 1 to 1,000,000: `--skus ''`, `'A,,B'`,
//!   `'WS X'` and `--quantity 0` used to exit 0 after sending an adjustment for an empty SKU
//!   (which wedged the Cassandra sink) or of 0 units.
//! - `keel lag --group ''` said "Client creation error: rdkafka consumer queue not available".
//! - `keel scenario oversell --hold-ttl-ms 0` asked for a Keel that cannot exist
//!   (`[inventory].hold_ttl_ms` is at least 1000) and told the user to start one.
//! - Break report 13: `keel scenario … --api not-a-url` said "builder error"; `keel audit
//!   --timeout-s 0` read for 1 s instead and exited 1, the code of a violation;
//!   `keel scenario --help` described three scenarios by their source files.
//!
//! Kafka is a port nothing listens on and the API another: whatever got past the check could
//! send nothing anywhere, and would fail slowly and with another message than the one asserted.

use std::process::Command;
use std::time::{Duration, Instant};

use keel_tests::unique;

/// `keel <args>` against nothing: (exit code, stderr, how long it took).
fn keel(args: &[&str]) -> (Option<i32>, String, Duration) {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .env("KEEL__KAFKA__BOOTSTRAP_SERVERS", closed.to_string())
        .env(
            "KEEL__TOPICS__PREFIX",
            format!("{}.", unique("keel_badargs")),
        )
        .env("RUST_LOG", "warn")
        .output()
        .expect("keel runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

/// The command failed at once (no client waited on) saying each of `says`.
fn refused(args: &[&str], says: &[&str]) {
    let (code, stderr, took) = keel(args);
    assert!(
        code.is_some_and(|c| c != 0),
        "keel {args:?} exited {code:?}: {stderr}"
    );
    for part in says {
        assert!(
            stderr.contains(part),
            "keel {args:?}: the error should say {part:?}: {stderr}"
        );
    }
    assert!(
        took < Duration::from_secs(5),
        "keel {args:?} took {took:?}: {stderr}"
    );
}

#[test]
fn inventory_seed_takes_the_apis_sku_and_quantity_rules() {
    let seed = |extra: &[&'static str]| {
        let mut args = vec!["inventory", "seed"];
        args.extend_from_slice(extra);
        args
    };
    refused(&seed(&["--skus", ""]), &["--skus", "1 to 64 characters"]);
    refused(&seed(&["--skus", "A,,B"]), &["--skus: SKU 2 of 3"]);
    refused(
        &seed(&["--skus", "WS X"]),
        &["--skus", "without whitespace"],
    );
    refused(&seed(&["--skus", "A,A"]), &["--skus", "more than once"]);
    refused(
        &seed(&["--skus", "A", "--quantity", "0"]),
        &["--quantity", "got 0"],
    );
    refused(
        &seed(&["--skus", "A", "--quantity", "1000001"]),
        &["--quantity"],
    );
    refused(
        &seed(&["--skus", "A", "--reason", "oversold"]),
        &["--reason", "OVERSOLD"],
    );
    refused(
        &seed(&["--skus", "A", "--warehouse", "WH 1"]),
        &["--warehouse"],
    );
}

#[test]
fn lag_refuses_an_empty_group_before_making_a_client() {
    refused(
        &["lag", "--once", "--group", ""],
        &["--group must not be empty"],
    );
    refused(
        &["lag", "--once", "--group", "app-saga", "--group", ""],
        &["--group must not be empty"],
    );
}

#[test]
fn scenario_oversell_refuses_a_hold_ttl_no_keel_runs_with() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let api = format!("http://{closed}");
    for ttl in ["0", "999"] {
        refused(
            &["scenario", "oversell", "--api", &api, "--hold-ttl-ms", ttl],
            &["--hold-ttl-ms", "1000"],
        );
    }
}

#[test]
fn scenario_refuses_an_api_that_is_not_an_http_url() {
    for api in ["not-a-url", "ftp://127.0.0.1:1", "127.0.0.1:8080"] {
        refused(
            &["scenario", "checkout-success", "--api", api],
            &["--api", api],
        );
    }
}

#[test]
fn audit_refuses_a_timeout_of_zero() {
    refused(&["audit", "--timeout-s", "0"], &["--timeout-s", "0"]);
}

#[test]
fn audit_that_cannot_read_its_verdicts_exits_2_not_the_violation_code() {
    let (code, stderr, _) = keel(&["audit", "--timeout-s", "1"]);
    assert_eq!(code, Some(2), "{stderr}");
}

#[test]
fn scenario_help_says_what_every_scenario_does() {
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["scenario", "--help"])
        .output()
        .expect("keel runs");
    let help = String::from_utf8_lossy(&out.stdout);
    for name in [
        "checkout-success",
        "psp-timeout",
        "inventory-shortage",
        "oversell",
        "schema-drift",
        "reconciliation-lag",
    ] {
        let line = help
            .lines()
            .find(|l| {
                l.trim_start()
                    .trim_start_matches("- ")
                    .starts_with(&format!("{name}:"))
            })
            .unwrap_or_else(|| panic!("{name} is not described in:\n{help}"));
        let said = line.split_once(':').map_or("", |(_, d)| d.trim());
        assert!(
            said.len() > 20 && !said.starts_with('`'),
            "{name}: {said:?}\n{help}"
        );
    }
    let top = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("--help")
        .output()
        .expect("keel runs");
    let top = String::from_utf8_lossy(&top.stdout);
    assert!(top.contains("reconciliation-lag"), "{top}");
}
