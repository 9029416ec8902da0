//! `keel lag` against a real `keel run`:
//! - after a few checkouts, an idle run's plain consumers (order sink, Cassandra sink, payment
//!   service) show lag 0, though their topics are written transactionally (a commit marker
//!   follows the last record; committing "last record + 1" left a lag of 1 forever);
//! - the default list holds only this configuration's groups (and Connect's), `--group` only
//!   the named ones.

mod common;

use std::time::{Duration, Instant};

use common::{Run, place, settled, wait_ready};
use keel_tests::Stack;
use serde_json::Value;

fn lag_rows(run: &Run, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["lag", "--once", "--json"];
    args.extend_from_slice(extra);
    let out = run.keel(&args).output().expect("keel lag runs");
    assert!(
        out.status.success(),
        "keel lag failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("keel lag --json")
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_plain_consumers_show_lag_zero_and_only_this_configurations_groups_are_listed() {
    let stack = Stack::from_env();
    let (name, run) = Run::new(&stack).await;
    let carts: Vec<String> = (0..3).map(|i| format!("cart-{i}")).collect();
    for cart in &carts {
        run.ok(&["carts", "seed", "--cart-id", cart, "--item", "SKU-L:1:500"]);
    }
    run.ok(&["inventory", "seed", "--skus", "SKU-L", "--quantity", "20"]);
    let _psp = run.spawn("psp-mock", &["psp-mock"]);
    let mut main = run.spawn("keel run", &["run"]);
    let client = reqwest::Client::new();
    wait_ready(&client, &run.api, Duration::from_secs(120)).await;
    for (i, cart) in carts.iter().enumerate() {
        let body = place(&client, &run.api, cart, "tok_visa", &format!("k{i}")).await;
        let id = body["orderId"].as_str().expect("id");
        let order = settled(&client, &run.api, id, Duration::from_secs(60)).await;
        assert_eq!(order["status"], "CONFIRMED", "{order}");
    }

    let plain = [
        format!("{name}-order-sink"),
        format!("{name}-cassandra-sink"),
        format!("{name}-payment"),
    ];
    // Idle now: every plain consumer catches up and commits past the last commit marker.
    let start = Instant::now();
    let rows = loop {
        let rows = lag_rows(&run, &[]);
        let done = plain.iter().all(|group| {
            let mine: Vec<&Value> = rows.iter().filter(|r| r["group"] == *group).collect();
            mine.iter().any(|r| r["end"].as_i64() > Some(0)) && mine.iter().all(|r| r["lag"] == 0)
        });
        if done || start.elapsed() > Duration::from_secs(30) {
            break rows;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    for group in &plain {
        let mine: Vec<&Value> = rows.iter().filter(|r| r["group"] == *group).collect();
        assert!(
            mine.iter().any(|r| r["end"].as_i64() > Some(0)),
            "{group} read nothing: {mine:?}"
        );
        let lagging: Vec<&&Value> = mine.iter().filter(|r| r["lag"] != 0).collect();
        assert!(lagging.is_empty(), "{group} is idle but lags: {lagging:?}");
    }

    // Only this configuration's groups (and Connect's): not the other runs' on the cluster.
    let foreign: Vec<&Value> = rows
        .iter()
        .filter(|r| {
            let g = r["group"].as_str().unwrap_or_default();
            !g.starts_with(&format!("{name}-")) && !g.starts_with("connect-")
        })
        .collect();
    assert!(
        foreign.is_empty(),
        "groups of other runs listed: {foreign:?}"
    );
    let payment = lag_rows(&run, &["--group", &plain[2]]);
    assert!(!payment.is_empty(), "--group {} shows nothing", plain[2]);
    assert!(
        payment.iter().all(|r| r["group"] == plain[2]),
        "--group shows other groups: {payment:?}"
    );

    // `--all`: every group of the cluster, so at least the default list's.
    let all = lag_rows(&run, &["--all"]);
    let groups = |rows: &[Value]| -> std::collections::BTreeSet<String> {
        rows.iter()
            .filter_map(|r| r["group"].as_str().map(str::to_owned))
            .collect()
    };
    let (listed, everything) = (groups(&rows), groups(&all));
    assert!(
        listed.is_subset(&everything),
        "--all misses groups of the default list: {:?}",
        listed.difference(&everything).collect::<Vec<_>>()
    );

    main.terminate(Duration::from_secs(30));
    run.clean_up(&stack, &name).await;
}

/// Break report 13, D7: `keel lag --once --group <typo>` printed "no committed offsets yet" and
/// exited 0, as for a real but idle group. A named group the broker does not know is said to be
/// unknown, and `--once` fails naming it.
#[test]
fn a_named_group_the_broker_does_not_know_is_said_unknown_and_fails_once() {
    let stack = Stack::from_env();
    let typo = keel_tests::unique("nope-group");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["lag", "--once", "--group", &typo])
        .env("KEEL__KAFKA__BOOTSTRAP_SERVERS", &stack.kafka_bootstrap)
        .env("RUST_LOG", "warn")
        .output()
        .expect("keel lag runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "exited 0: {stdout} {stderr}");
    assert!(
        stdout.contains(&typo) && stdout.contains("unknown to the broker"),
        "{stdout}"
    );
    assert!(
        stderr.contains(&format!("the broker knows no group {typo}")),
        "{stderr}"
    );
}
