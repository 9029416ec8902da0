//! Warehouses end to end, through `keel inventory seed --warehouse`, the real API, the inventory
//! processor and the Cassandra mirror: stock seeded into two warehouses shows per warehouse on
//! `GET /inventory/{sku}`; a line whose preferred warehouse cannot cover it is held whole from
//! the other one (the hold row in Cassandra names it, and lives the request's `holdTtlMs`); an
//! adjust names its warehouse.

mod common;

use std::time::{Duration, Instant};

use common::{Run, wait_ready};
use keel_tests::Stack;
use serde_json::{Value, json};

const SKU: &str = "SKU-WH";

/// `GET /inventory/{SKU}` until `done` holds for its body (or 60 s).
async fn level_until(client: &reqwest::Client, api: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    let mut last = Value::Null;
    while start.elapsed() < Duration::from_secs(60) {
        let r = client
            .get(format!("{api}/inventory/{SKU}"))
            .send()
            .await
            .expect("GET /inventory");
        if r.status().is_success() {
            last = r.json().await.expect("a JSON level");
            if done(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("the level never matched; last seen: {last}");
}

fn warehouse<'a>(level: &'a Value, name: &str) -> &'a Value {
    level["warehouses"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["warehouse"] == name))
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread")]
async fn stock_and_holds_are_kept_per_warehouse_from_seed_to_cassandra() {
    let stack = Stack::from_env();
    let (name, run) = Run::new(&stack).await;
    run.ok(&["inventory", "seed", "--skus", SKU, "--quantity", "2"]);
    run.ok(&[
        "inventory",
        "seed",
        "--skus",
        SKU,
        "--quantity",
        "5",
        "--warehouse",
        "WH-NORTH",
    ]);
    // `keel run` is ready once every dependency answers, the PSP included.
    let _psp = run.spawn("psp-mock", &["psp-mock"]);
    let mut keel = run.spawn("keel run", &["run"]);
    let client = reqwest::Client::new();
    wait_ready(&client, &run.api, Duration::from_secs(120)).await;

    let seeded = level_until(&client, &run.api, |l| l["onHand"] == 7).await;
    assert_eq!(
        seeded["warehouses"],
        json!([
            {"warehouse": "WH-NORTH", "onHand": 5, "held": 0, "available": 5},
            {"warehouse": "default", "onHand": 2, "held": 0, "available": 2}
        ]),
        "{seeded}"
    );

    // The default warehouse has 2: a line of 3 preferring it is held whole from WH-NORTH.
    let r = client
        .post(format!("{}/inventory/reserve", run.api))
        .json(
            &json!({"orderId": "order-wh-1", "holdTtlMs": 30_000, "lines": [
            {"sku": SKU, "quantity": 3, "warehouse": "default"}]}),
        )
        .send()
        .await
        .expect("POST /inventory/reserve");
    assert_eq!(
        r.status().as_u16(),
        202,
        "{}",
        r.text().await.unwrap_or_default()
    );
    let held = level_until(&client, &run.api, |l| l["held"] == 3).await;
    assert_eq!(
        warehouse(&held, "WH-NORTH"),
        &json!({"warehouse": "WH-NORTH", "onHand": 5, "held": 3, "available": 2}),
        "{held}"
    );
    assert_eq!(warehouse(&held, "default")["held"], 0, "{held}");

    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_node(&stack.cassandra_node)
        .build()
        .await
        .expect("cassandra");
    let (warehouse_of_row, ttl) = session
        .query_unpaged(
            format!(
                "SELECT warehouse, TTL(quantity) FROM {}.reservation \
                 WHERE sku = ? AND order_id = 'order-wh-1'",
                run.keyspace
            ),
            (SKU,),
        )
        .await
        .expect("reservation")
        .into_rows_result()
        .expect("rows")
        .single_row::<(Option<String>, Option<i32>)>()
        .expect("one hold row");
    assert_eq!(warehouse_of_row.as_deref(), Some("WH-NORTH"));
    assert!(
        ttl.is_some_and(|t| t > 0 && t <= 30),
        "the hold row expires with the hold's own 30 s TTL, not the default 10 min: {ttl:?}"
    );

    // An adjust names its warehouse; WH-NORTH may go down to what it holds.
    let r = client
        .post(format!("{}/inventory/adjust", run.api))
        .header("Idempotency-Key", "wh-adjust-1")
        .json(&json!({"sku": SKU, "delta": -2, "reason": "COUNT", "warehouse": "WH-NORTH"}))
        .send()
        .await
        .expect("POST /inventory/adjust");
    assert_eq!(
        r.status().as_u16(),
        202,
        "{}",
        r.text().await.unwrap_or_default()
    );
    let adjusted = level_until(&client, &run.api, |l| l["onHand"] == 5).await;
    assert_eq!(
        adjusted["warehouses"],
        json!([
            {"warehouse": "WH-NORTH", "onHand": 3, "held": 3, "available": 0},
            {"warehouse": "default", "onHand": 2, "held": 0, "available": 2}
        ]),
        "{adjusted}"
    );

    let status = keel
        .terminate(Duration::from_secs(60))
        .expect("stops on SIGTERM");
    assert!(status.success(), "keel run exited with {status}");
    run.clean_up(&stack, &name).await;
}
