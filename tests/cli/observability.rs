//! Issue 12's proofs against a real `keel run`:
//! - three checkouts and a declined payment move the metrics by exactly what happened;
//! - a stopped consumer (the payment role in its own process) leaves a backlog that `keel lag`
//!   and `keel_consumer_group_lag_records` show, and that drains once it runs again.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Run, place, settled, wait_ready};
use keel_tests::Stack;
use serde_json::Value;

/// `/metrics` as `name{sorted labels}` → value (every series, histograms' `_count` included).
async fn scrape(client: &reqwest::Client, api: &str) -> BTreeMap<String, f64> {
    let text = client
        .get(format!("{api}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("text");
    keel_ingest_api::dashboard::parse_exposition(&text)
        .into_iter()
        .map(|l| {
            let mut labels = l.labels;
            labels.sort();
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            (format!("{}{{{}}}", l.name, labels.join(",")), l.value)
        })
        .collect()
}

/// The sum of every series of `name` whose labels include all of `with` (`k=v`).
fn total(m: &BTreeMap<String, f64>, name: &str, with: &[&str]) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(&format!("{name}{{")))
        .filter(|(k, _)| {
            let inner = &k[name.len() + 1..k.len() - 1];
            let labels: Vec<&str> = inner.split(',').collect();
            with.iter().all(|w| labels.contains(w))
        })
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_checkouts_and_a_decline_move_the_metrics_by_exactly_that() {
    let stack = Stack::from_env();
    let (name, run) = Run::new(&stack).await;
    let orders = [
        ("cart-1", "tok_visa"),
        ("cart-2", "tok_visa"),
        ("cart-3", "tok_visa"),
        ("cart-4", "tok_decline_insufficient_funds"),
    ];
    for (cart, _) in orders {
        run.ok(&["carts", "seed", "--cart-id", cart, "--item", "SKU-O:1:700"]);
    }
    run.ok(&["inventory", "seed", "--skus", "SKU-O", "--quantity", "10"]);
    let _psp = run.spawn("psp-mock", &["psp-mock"]);
    let mut keel = run.spawn("keel run", &["run"]);
    let client = reqwest::Client::new();
    wait_ready(&client, &run.api, Duration::from_secs(120)).await;
    let before = scrape(&client, &run.api).await;

    let mut ids = Vec::new();
    for (i, (cart, token)) in orders.iter().enumerate() {
        let body = place(&client, &run.api, cart, token, &format!("k{i}")).await;
        ids.push(body["orderId"].as_str().expect("id").to_owned());
    }
    for id in &ids {
        settled(&client, &run.api, id, Duration::from_secs(60)).await;
    }

    // (metric, labels, expected increase). The capture and the inventory confirmation follow
    // the decision asynchronously, so the page is read until it shows all of them.
    let expected: Vec<(&str, Vec<&str>, f64)> = vec![
        ("keel_api_orders_accepted_total", vec![], 4.0),
        (
            "keel_api_requests_total",
            vec!["route=/orders", "method=POST", "status=202"],
            4.0,
        ),
        (
            "saga_decisions_total",
            vec!["status=PENDING", "reason=none"],
            4.0,
        ),
        (
            "saga_decisions_total",
            vec!["status=CONFIRMED", "reason=none"],
            3.0,
        ),
        (
            "saga_decisions_total",
            vec!["status=CANCELLED", "reason=PAYMENT_DECLINED"],
            1.0,
        ),
        ("saga_decisions_total", vec![], 8.0),
        (
            "saga_duration_seconds_count",
            vec!["outcome=confirmed"],
            3.0,
        ),
        (
            "saga_duration_seconds_count",
            vec!["outcome=cancelled"],
            1.0,
        ),
        (
            "saga_compensations_total",
            vec!["action=release_hold", "reason=PAYMENT_DECLINED"],
            1.0,
        ),
        ("saga_compensations_total", vec![], 1.0),
        (
            "payment_attempts_total",
            vec!["kind=authorize", "outcome=succeeded"],
            3.0,
        ),
        (
            "payment_attempts_total",
            vec!["kind=authorize", "outcome=declined"],
            1.0,
        ),
        (
            "payment_attempts_total",
            vec!["kind=capture", "outcome=succeeded"],
            3.0,
        ),
        ("payment_attempts_total", vec![], 7.0),
        (
            "payment_attempt_latency_seconds_count",
            vec!["kind=authorize"],
            4.0,
        ),
        ("inventory_holds_total", vec!["outcome=held"], 4.0),
        ("inventory_holds_total", vec!["outcome=sold"], 3.0),
        ("inventory_holds_total", vec!["outcome=released"], 1.0),
        ("inventory_holds_total", vec![], 8.0),
        ("inventory_oversell_total", vec![], 0.0),
        ("keel_dead_letters_total", vec![], 0.0),
    ];
    let start = Instant::now();
    let (after, wrong) = loop {
        let after = scrape(&client, &run.api).await;
        let wrong: Vec<String> = expected
            .iter()
            .filter_map(|(name, with, delta)| {
                let got = total(&after, name, with) - total(&before, name, with);
                ((got - delta).abs() > 1e-9)
                    .then(|| format!("{name}{with:?}: expected +{delta}, got +{got}"))
            })
            .collect();
        if wrong.is_empty() || start.elapsed() > Duration::from_secs(30) {
            break (after, wrong);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        wrong.is_empty(),
        "metrics moved wrongly:\n  {}",
        wrong.join("\n  ")
    );
    // One of the four authorizations failed: the rate over the (fresh) window is 1/4.
    assert_eq!(total(&after, "payment_failure_rate", &[]), 0.25);
    // Every hold ended (sold or released): none is active once the punctuator counted.
    let start = Instant::now();
    loop {
        let now = scrape(&client, &run.api).await;
        let active = total(&now, "inventory_holds_active", &[]);
        if active == 0.0 && now.keys().any(|k| k.starts_with("inventory_holds_active{")) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "inventory_holds_active stays {active}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    keel.terminate(Duration::from_secs(30));
    run.clean_up(&stack, &name).await;
}

/// `keel lag --once --json`: the lag of `group` summed over `topic`'s partitions, and the
/// largest lag of one partition.
fn keel_lag(run: &Run, group: &str, topic: &str) -> (i64, i64) {
    let out = run
        .keel(&["lag", "--once", "--json"])
        .output()
        .expect("keel lag runs");
    assert!(
        out.status.success(),
        "keel lag failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("keel lag --json");
    let lags: Vec<i64> = rows
        .iter()
        .filter(|r| r["group"] == group && r["topic"] == topic)
        .map(|r| r["lag"].as_i64().expect("lag"))
        .collect();
    (lags.iter().sum(), lags.iter().copied().max().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_consumer_shows_a_backlog_in_keel_lag_and_the_metric_and_it_drains() {
    let stack = Stack::from_env();
    let (name, mut run) = Run::new(&stack).await;
    // The orders wait for their payment longer than the payment service is stopped.
    run.env
        .retain(|(k, _)| k != "KEEL__SAGA__PAYMENT_TIMEOUT_MS");
    run.env
        .push(("KEEL__SAGA__PAYMENT_TIMEOUT_MS".into(), "120000".into()));
    let carts: Vec<String> = (0..5).map(|i| format!("cart-{i}")).collect();
    for cart in &carts {
        run.ok(&["carts", "seed", "--cart-id", cart, "--item", "SKU-L:1:500"]);
    }
    run.ok(&["inventory", "seed", "--skus", "SKU-L", "--quantity", "20"]);
    let _psp = run.spawn("psp-mock", &["psp-mock"]);
    let roles = "api,saga,inventory,sinks,relay";
    let mut main = run.spawn("keel run (no payment)", &["run", "--roles", roles]);
    let mut payment = run.spawn("keel run (payment)", &["run", "--roles", "payment"]);
    let client = reqwest::Client::new();
    wait_ready(&client, &run.api, Duration::from_secs(120)).await;
    let first = place(&client, &run.api, &carts[0], "tok_visa", "k0").await;
    let id = first["orderId"].as_str().expect("id").to_owned();
    let order = settled(&client, &run.api, &id, Duration::from_secs(60)).await;
    assert_eq!(order["status"], "CONFIRMED", "{order}");

    // Stop the payment service: the saga's payment commands pile up.
    assert!(
        payment.terminate(Duration::from_secs(30)).is_some(),
        "payment role did not stop"
    );
    let group = format!("{name}-payment");
    let topic = format!("{name}.payments.commands.v1");
    let (idle, _) = keel_lag(&run, &group, &topic);
    let mut ids = Vec::new();
    for (i, cart) in carts.iter().enumerate().skip(1) {
        let body = place(&client, &run.api, cart, "tok_visa", &format!("k{i}")).await;
        ids.push(body["orderId"].as_str().expect("id").to_owned());
    }
    // Each order sends two payment commands (create intent, authorize).
    let backlog = 2 * i64::try_from(ids.len()).expect("few");
    let metric = |m: &BTreeMap<String, f64>| {
        total(
            m,
            "keel_consumer_group_lag_records",
            &[&format!("group={group}"), &format!("topic={topic}")],
        )
    };
    let start = Instant::now();
    let (lag, gauge) = loop {
        let (lag, _) = keel_lag(&run, &group, &topic);
        let gauge = metric(&scrape(&client, &run.api).await);
        if (lag >= idle + backlog && gauge >= (idle + backlog) as f64)
            || start.elapsed() > Duration::from_secs(40)
        {
            break (lag, gauge);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(
        lag >= idle + backlog,
        "keel lag shows {lag} for {group} (idle {idle}); expected at least {backlog} more"
    );
    assert!(
        gauge >= (idle + backlog) as f64,
        "keel_consumer_group_lag_records shows {gauge}; expected at least {}",
        idle + backlog
    );
    for id in &ids {
        let r: Value = client
            .get(format!("{}/orders/{id}", run.api))
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .expect("JSON");
        assert_eq!(
            r["status"], "PENDING",
            "no payment service, no decision: {r}"
        );
    }

    // Start it again: the backlog drains (a caught-up partition shows at most the commit
    // marker of the last transaction) and the orders are confirmed.
    let mut payment = run.spawn("keel run (payment, again)", &["run", "--roles", "payment"]);
    for id in &ids {
        let order = settled(&client, &run.api, id, Duration::from_secs(90)).await;
        assert_eq!(order["status"], "CONFIRMED", "{order}");
    }
    let start = Instant::now();
    loop {
        let (lag, max) = keel_lag(&run, &group, &topic);
        let gauge = metric(&scrape(&client, &run.api).await);
        if max <= 1 && gauge <= 6.0 {
            assert!(lag <= 6, "{lag}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(45),
            "the backlog did not drain: keel lag {lag} (max {max} on a partition), metric {gauge}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    main.terminate(Duration::from_secs(30));
    payment.terminate(Duration::from_secs(30));
    run.clean_up(&stack, &name).await;
}
