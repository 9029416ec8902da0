//! `kill -9` of `keel run` in the middle of 200 checkouts, then a restart with the same state
//! directory and instance id: every order reaches `CONFIRMED` exactly once — one PENDING and one
//! CONFIRMED decision per order under `read_committed`, two history rows and two outbox rows
//! per order, one PSP authorization per order — whatever the kill interrupted.
//!
//! Clients behave as real ones do: a POST that fails (connection refused while Keel is down,
//! 503) is retried with the same `Idempotency-Key`.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Run, wait_ready};
use keel_avro::records::{OrderDecision, OrderDecisionStatus};
use keel_tests::Stack;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use serde_json::{Value, json};
use sqlx::Connection;

const ORDERS: usize = 200;

/// Places order `i` until the API accepts it; returns the order id.
async fn place_until_accepted(client: &reqwest::Client, api: &str, i: usize) -> String {
    let start = Instant::now();
    loop {
        let sent = client
            .post(format!("{api}/orders"))
            .header("Idempotency-Key", format!("crash-{i}"))
            .json(&json!({
                "cartId": format!("cart-{i}"),
                "paymentMethod": "tok_visa",
                "shippingAddress": {"name": "N", "line1": "L", "city": "C",
                                    "postalCode": "P", "country": "DE"}
            }))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        if let Ok(response) = sent {
            let status = response.status().as_u16();
            if status == 202 {
                let body: Value = response.json().await.expect("JSON");
                return body["orderId"].as_str().expect("an order id").to_owned();
            }
            assert!(
                matches!(status, 409 | 503),
                "order {i}: unexpected {status}: {}",
                response.text().await.unwrap_or_default()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "order {i} never accepted"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_in_the_middle_of_200_checkouts_confirms_every_order_exactly_once() {
    let stack = Stack::from_env();
    let (name, mut run) = Run::new(&stack).await;
    // The payment deadline must outlast a restart (the default is 60 s).
    run.env
        .retain(|(k, _)| k != "KEEL__SAGA__PAYMENT_TIMEOUT_MS");
    let seed_pool = common::orders_pool(&run).await;
    for i in 0..ORDERS {
        let sku = format!("SKU-{}", i % 7);
        keel_processors::orders::seed_cart(
            &seed_pool,
            &format!("cart-{i}"),
            &format!("customer-{i}"),
            "EUR",
            &[(sku.as_str(), 1, 1_000 + 10 * i as i64)],
        )
        .await
        .expect("cart");
    }
    let skus: Vec<String> = (0..7).map(|i| format!("SKU-{i}")).collect();
    run.ok(&[
        "inventory",
        "seed",
        "--skus",
        &skus.join(","),
        "--quantity",
        "1000",
    ]);

    let psp = run.spawn("psp-mock", &["psp-mock"]);
    let _ = &psp;
    let mut keel = run.spawn("keel run", &["run"]);
    let client = reqwest::Client::new();
    wait_ready(&client, &run.api, Duration::from_secs(120)).await;

    let accepted = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..ORDERS {
        let (client, api, accepted) = (client.clone(), run.api.clone(), accepted.clone());
        clients.spawn(async move {
            // Spread the orders over a few seconds so the kill lands mid-stream.
            tokio::time::sleep(Duration::from_millis(15 * i as u64)).await;
            let id = place_until_accepted(&client, &api, i).await;
            accepted.fetch_add(1, Ordering::Relaxed);
            (i, id)
        });
    }
    // Kill once about half the orders are in.
    let start = Instant::now();
    while accepted.load(Ordering::Relaxed) < ORDERS / 2 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "orders are not accepted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = keel.child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status();
    assert!(killed.is_ok_and(|s| s.success()), "kill -9");
    let _ = keel.child.wait();
    eprintln!(
        "killed keel run after {} accepted orders",
        accepted.load(Ordering::Relaxed)
    );
    let mut keel = run.spawn("keel run (restarted)", &["run"]);

    let mut ids = BTreeMap::new();
    while let Some(done) = clients.join_next().await {
        let (i, id) = done.expect("a client task");
        ids.insert(i, id);
    }
    assert_eq!(ids.len(), ORDERS);

    // Every order reaches CONFIRMED in MariaDB.
    let mut my = sqlx::MySqlConnection::connect(&run.mysql_url)
        .await
        .expect("mysql");
    let start = Instant::now();
    loop {
        let confirmed: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE status = 'CONFIRMED'")
                .fetch_one(&mut my)
                .await
                .expect("count");
        if confirmed == ORDERS as i64 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(150),
            "only {confirmed} of {ORDERS} orders confirmed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let orders: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders")
        .fetch_one(&mut my)
        .await
        .expect("count");
    assert_eq!(orders, ORDERS as i64, "one order per idempotency key");
    for (table, column) in [
        ("order_status_history", "order_id"),
        ("order_outbox", "aggregate_id"),
    ] {
        let odd: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {column}, COUNT(*) FROM {table} GROUP BY {column} HAVING COUNT(*) <> 2"
        )))
        .fetch_all(&mut my)
        .await
        .expect(table);
        assert!(
            odd.is_empty(),
            "{table}: orders without exactly two rows: {odd:?}"
        );
    }

    // Kafka, read_committed: exactly one PENDING and one CONFIRMED decision per order.
    let topic = format!("{name}.order.decisions.v1");
    let consumer =
        keel_tests::kafka::consumer(&stack.kafka_bootstrap, "read_committed").expect("consumer");
    consumer.subscribe(&[topic.as_str()]).expect("subscribe");
    let codec = keel_avro::Codec::new(keel_avro::RegistryConfig::with_url(
        stack.registry_url.clone(),
    ))
    .expect("codec");
    let mut decisions: BTreeMap<String, Vec<OrderDecisionStatus>> = BTreeMap::new();
    let start = Instant::now();
    while decisions.values().map(Vec::len).sum::<usize>() < 2 * ORDERS
        && start.elapsed() < Duration::from_secs(60)
    {
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await else {
            continue;
        };
        let d: OrderDecision = codec
            .decode_from(&topic, m.payload().expect("a value"))
            .await
            .expect("a decision");
        decisions.entry(d.order_id).or_default().push(d.status);
    }
    // Anything more would show up within a few seconds.
    while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(3), consumer.recv()).await {
        let d: OrderDecision = codec
            .decode_from(&topic, m.payload().expect("a value"))
            .await
            .expect("a decision");
        decisions.entry(d.order_id).or_default().push(d.status);
    }
    assert_eq!(decisions.len(), ORDERS);
    for (order, statuses) in &decisions {
        assert_eq!(
            statuses,
            &vec![OrderDecisionStatus::Pending, OrderDecisionStatus::Confirmed],
            "order {order}: a decision was lost or duplicated"
        );
    }

    // The PSP authorized each order once, however often the payment service was replayed.
    let stats = run.psp_stats(&client).await;
    assert_eq!(stats["authorizations"], json!(ORDERS), "{stats}");

    let status = keel
        .terminate(Duration::from_secs(60))
        .expect("keel run stops on SIGTERM");
    assert!(status.success(), "keel run exited with {status}");
    run.clean_up(&stack, &name).await;
}

#[test]
fn the_fixtures_ports_are_outside_the_kernels_ephemeral_range() {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .expect("ip_local_port_range");
    let mut bounds = range
        .split_whitespace()
        .map(|n| n.parse::<u16>().expect("a port"));
    let (low, high) = (bounds.next().expect("low"), bounds.next().expect("high"));
    for _ in 0..200 {
        let port = common::free_port();
        assert!(
            !(low..=high).contains(&port),
            "port {port} is in the ephemeral range {low}–{high}: an outgoing connection can take \
             it while a restarted keel run waits to bind it"
        );
    }
}
