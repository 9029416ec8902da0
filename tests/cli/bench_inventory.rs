//! `keel bench inventory` runs end to end at a size that takes seconds and its numbers agree
//! with each other and with the store; nothing here asserts a speed (speed is benchmarked,
//! never tested). The bench starts its own isolated `keel run --roles inventory,sinks` (its
//! own topic prefix, application id, keyspace), so the fixture only provides the stack's
//! addresses and an isolated MariaDB for the sinks role.

mod common;

use std::time::Duration;

use common::Run;
use keel_tests::Stack;
use serde_json::Value;

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a count: {v:#}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_inventory_writes_a_consistent_result_with_shortages_on_a_hot_sku_and_a_chart() {
    let stack = Stack::from_env();
    let (name, run) = Run::new(&stack).await;
    let out_dir = tempfile::tempdir().expect("an output directory");
    let out_path = out_dir.path().to_str().expect("a UTF-8 path").to_owned();
    // 20 reserves/s for 3 s over 3 SKUs with 5 units each, half of them on SKU 0: more
    // reserves than stock, so shortages; half the holds confirmed, 30 % released.
    let output = run
        .keel(&[
            "bench",
            "inventory",
            "--rate",
            "20",
            "--duration-s",
            "3",
            "--warmup-s",
            "0",
            "--skus",
            "3",
            "--hot-share",
            "0.5",
            "--stock",
            "5",
            "--confirm-share",
            "0.5",
            "--release-share",
            "0.3",
            "--drain-timeout-s",
            "90",
            "--store-timeout-s",
            "60",
            "--no-progress",
            "--out-dir",
            &out_path,
        ])
        .output()
        .expect("keel bench inventory runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!(
        "keel bench inventory: {}\n{stdout}\n{stderr}",
        output.status
    );
    assert!(output.status.success(), "keel bench inventory failed");

    let files: Vec<std::path::PathBuf> = std::fs::read_dir(out_dir.path())
        .expect("the output directory")
        .map(|e| e.expect("an entry").path())
        .collect();
    let json = files
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .unwrap_or_else(|| panic!("no JSON result in {files:?}"));
    let svg = files
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "svg"))
        .unwrap_or_else(|| panic!("no SVG chart in {files:?}"));
    let r: Value = serde_json::from_slice(&std::fs::read(json).expect("the result")).expect("JSON");

    // Isolated: its own prefix, application and keyspace, not the fixture's.
    assert_eq!(r["isolated"], true, "{r:#}");
    let prefix = r["topic_prefix"].as_str().expect("topic_prefix");
    assert!(
        prefix.starts_with("bench-inv-") && !prefix.contains(&name),
        "{prefix}"
    );

    // Every reserve was due, sent and answered, held or short.
    let reserves = u(&r, "reserves");
    assert_eq!(reserves, 60, "{r:#}");
    assert!(
        r["errors"].as_object().is_some_and(|e| e.is_empty()),
        "errors: {r:#}"
    );
    let (held, shortages) = (u(&r, "held"), u(&r, "shortages"));
    assert_eq!(held + shortages, reserves, "{r:#}");
    assert!(
        shortages > 0,
        "60 reserves of 15 units made no shortage: {r:#}"
    );
    assert_eq!(u(&r["latency"]["reserve"], "count"), reserves, "{r:#}");
    // The hot SKU took its share (half, plus a third of the other half: about 40 of 60).
    assert!(u(&r["latency"]["reserve_hot_sku"], "count") > 20, "{r:#}");

    // Follow-ups: each answered once; no sale beyond the stock, none oversold.
    let (confirms, sold) = (u(&r, "confirms"), u(&r, "sold"));
    assert_eq!(
        sold + u(&r, "oversold") + u(&r, "sale_refused"),
        confirms,
        "{r:#}"
    );
    assert_eq!(u(&r, "oversold"), 0, "{r:#}");
    assert!(sold > 0 && sold <= 15, "{r:#}");
    assert_eq!(u(&r, "released"), u(&r, "releases"), "{r:#}");
    assert!(confirms + u(&r, "releases") <= held, "{r:#}");
    assert_eq!(u(&r["latency"]["confirm"], "count"), confirms, "{r:#}");

    // The stock and the holds add up, in the replies and in Cassandra.
    let c = &r["consistency"];
    assert_eq!(c["never_negative"], true, "{c:#}");
    assert!(
        c["min_available_seen"].as_i64().is_some_and(|m| m >= 0),
        "{c:#}"
    );
    assert_eq!(c["store_agrees"], true, "{c:#}");
    assert_eq!(c["unexpected_replies"], 0, "{c:#}");
    assert_eq!(u(c, "held"), held, "{c:#}");
    assert_eq!(u(c, "sold"), sold, "{c:#}");
    assert_eq!(c["seeded_total"], 15, "{c:#}");
    assert_eq!(
        c["expected_on_hand"].as_i64(),
        Some(15 - sold as i64),
        "{c:#}"
    );
    assert_eq!(c["store_on_hand"], c["expected_on_hand"], "{c:#}");
    assert_eq!(
        u(c, "outstanding"),
        held - sold - u(&r, "released"),
        "{c:#}"
    );
    assert_eq!(c["store_held"].as_u64(), Some(u(c, "outstanding")), "{c:#}");

    // Percentiles are ordered; throughput is positive.
    let l = &r["latency"]["reserve"];
    let p = |k: &str| l[k].as_f64().expect("a percentile");
    assert!(
        p("p50_ms") > 0.0
            && p("p50_ms") <= p("p90_ms")
            && p("p90_ms") <= p("p99_ms")
            && p("p99_ms") <= p("p999_ms")
            && p("p999_ms") <= p("max_ms"),
        "{l:#}"
    );
    assert!(r["reservations_per_second"].as_f64() > Some(0.0), "{r:#}");
    assert!(stdout.contains("reserve → HELD/SHORTAGE"), "{stdout}");

    // The chart is an SVG document with the three series.
    let chart = std::fs::read_to_string(svg).expect("the chart");
    assert!(chart.trim_start().starts_with("<svg"), "{chart:.200}");
    assert!(chart.trim_end().ends_with("</svg>"), "not a whole SVG");
    for label in ["p50", "p99", "max"] {
        assert!(
            chart.contains(&format!(">{label}<")) || chart.contains(&format!(">\n{label}\n<")),
            "the chart has no {label} series"
        );
    }
    assert!(chart.contains("<polyline"), "the chart draws no line");

    // The isolated run is gone with its topics.
    let admin: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka_bootstrap)
        .create()
        .expect("a client");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left: Vec<String> =
            rdkafka::consumer::Consumer::fetch_metadata(&admin, None, Duration::from_secs(10))
                .expect("metadata")
                .topics()
                .iter()
                .map(|t| t.name().to_owned())
                .filter(|t| t.starts_with(prefix))
                .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the bench's topics are still there: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    run.clean_up(&stack, &name).await;
}
