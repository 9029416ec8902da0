//! The Kafka Connect worker restarts mid-stream while the outboxes go through Debezium
//! (`[outbox].mode = "debezium"`): orders placed before, during and after the outage are all
//! CONFIRMED, every outbox row reaches its topic, and copies Debezium re-sends after the
//! restart (at-least-once) carry the same `keel.event.id`, which the saga de-duplicates on.
//!
//! This test stops the stack's one shared Connect worker (`keel-stack down connect`, then
//! `up connect`): other tests using connectors at the same time see it go. Kept short; run it
//! on its own (`scripts/cargo test -p keel --test cli_cdc_restart`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{Run, place, settled, wait_ready};
use keel_processors::outbox::{PgOutbox, RelayConfig, producer, relay_once};
use keel_tests::Stack;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use sqlx::Connection;

fn stack(args: &[&str]) {
    let status = std::process::Command::new(keel_tests::stack_script())
        .args(args)
        .status()
        .expect("keel-stack runs");
    assert!(status.success(), "keel-stack {args:?} failed");
}

/// The `keel.event.id` headers on `topic`, with how often each arrived, until `want` are all
/// there (then 3 s more for late copies) or `within` passed.
async fn event_ids(
    bootstrap: &str,
    topic: &str,
    want: &BTreeSet<String>,
    within: Duration,
) -> BTreeMap<String, usize> {
    let consumer: StreamConsumer =
        keel_tests::kafka::consumer(bootstrap, "read_committed").expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let start = Instant::now();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut complete_at: Option<Instant> = None;
    while start.elapsed() < within
        && complete_at.is_none_or(|t| t.elapsed() < Duration::from_secs(3))
    {
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await
        else {
            continue;
        };
        if let Some(id) = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "keel.event.id"))
            .and_then(|h| h.value)
        {
            *seen
                .entry(String::from_utf8_lossy(id).into_owned())
                .or_default() += 1;
        }
        if complete_at.is_none() && want.iter().all(|id| seen.contains_key(id)) {
            complete_at = Some(Instant::now());
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connect_restart_mid_stream_loses_no_outbox_event() {
    let stack_addr = Stack::from_env();
    let (name, mut run) = Run::new(&stack_addr).await;
    run.with_debezium_outbox();
    let connectors = run.connectors_guard();
    // Payments wait for Connect to come back: the saga must not give up meanwhile.
    run.env.extend([(
        "KEEL__SAGA__PAYMENT_TIMEOUT_MS".to_owned(),
        "300000".to_owned(),
    )]);
    let carts: Vec<String> = (0..6).map(|i| format!("cart-rs-{i}")).collect();
    for cart in &carts {
        run.ok(&["carts", "seed", "--cart-id", cart, "--item", "SKU-RS:1:900"]);
    }
    run.ok(&["inventory", "seed", "--skus", "SKU-RS", "--quantity", "20"]);
    let _psp = run.spawn("psp-mock", &["psp-mock"]);
    let _keel = run.spawn("keel run", &["run"]);
    let client = reqwest::Client::new();
    wait_ready(&client, &run.api, Duration::from_secs(240)).await;

    let mut ids = Vec::new();
    for cart in &carts[..2] {
        let placed = place(&client, &run.api, cart, "tok_visa", &format!("key-{cart}")).await;
        ids.push(placed["orderId"].as_str().expect("id").to_owned());
    }
    // Mid-stream: the worker goes while those are in flight, and orders keep coming.
    stack(&["down", "connect"]);
    for cart in &carts[2..4] {
        let placed = place(&client, &run.api, cart, "tok_visa", &format!("key-{cart}")).await;
        ids.push(placed["orderId"].as_str().expect("id").to_owned());
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    stack(&["up", "connect"]);
    for cart in &carts[4..] {
        let placed = place(&client, &run.api, cart, "tok_visa", &format!("key-{cart}")).await;
        ids.push(placed["orderId"].as_str().expect("id").to_owned());
    }
    for id in &ids {
        let order = settled(&client, &run.api, id, Duration::from_secs(240)).await;
        assert_eq!(order["status"], "CONFIRMED", "{order}");
    }

    // Every outbox row is on its topic; a copy is the same event id, never a new one.
    let mut my = sqlx::MySqlConnection::connect(&run.mysql_url)
        .await
        .expect("mysql");
    let mut pg = sqlx::PgConnection::connect(&run.postgres_url)
        .await
        .expect("postgres");
    let order_rows: Vec<(String, String)> =
        sqlx::query_as("SELECT event_type, id FROM order_outbox")
            .fetch_all(&mut my)
            .await
            .expect("order outbox");
    let payment_rows: Vec<(String, String)> =
        sqlx::query_as("SELECT event_type, id FROM payment_outbox")
            .fetch_all(&mut pg)
            .await
            .expect("payment outbox");
    assert!(order_rows.len() >= 12, "created + confirmed per order");
    assert!(payment_rows.len() >= 6, "an authorization per order");
    let mut by_topic: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (topic, id) in order_rows.into_iter().chain(payment_rows) {
        by_topic.entry(topic).or_default().insert(id);
    }
    let mut copies = 0;
    for (topic, want) in &by_topic {
        let seen = event_ids(
            &stack_addr.kafka_bootstrap,
            topic,
            want,
            Duration::from_secs(120),
        )
        .await;
        let missing: Vec<&String> = want.iter().filter(|id| !seen.contains_key(*id)).collect();
        assert!(missing.is_empty(), "lost on {topic}: {missing:?}");
        let unknown: Vec<&String> = seen.keys().filter(|id| !want.contains(*id)).collect();
        assert!(
            unknown.is_empty(),
            "events that are no outbox row on {topic}: {unknown:?}"
        );
        copies += seen.values().map(|n| n - 1).sum::<usize>();
    }
    eprintln!("copies re-sent after the restart (absorbed by event id): {copies}");
    let status = run
        .keel(&["connectors", "status"])
        .output()
        .expect("keel runs");
    assert!(
        status.status.success(),
        "the connectors run again after the restart: {}",
        String::from_utf8_lossy(&status.stdout)
    );

    // Debezium is at-least-once: a worker killed before its offset flush re-sends. Re-send
    // every outbox event now, byte for byte as the router wrote it (the relay's records are
    // identical, tests/cli/cdc_outbox.rs): the saga drops them by event id, decides nothing
    // new, and the order store gets no second history or outbox row.
    let history = "SELECT COUNT(*) FROM order_status_history";
    let outbox = "SELECT COUNT(*) FROM order_outbox";
    let before: (i64, i64) = (
        sqlx::query_scalar(history)
            .fetch_one(&mut my)
            .await
            .expect("history"),
        sqlx::query_scalar(outbox)
            .fetch_one(&mut my)
            .await
            .expect("outbox"),
    );
    let relay = RelayConfig::default();
    let kafka = producer(&stack_addr.kafka_bootstrap, &relay).expect("producer");
    let pool = sqlx::PgPool::connect(&run.postgres_url)
        .await
        .expect("pg pool");
    let resent = relay_once(
        &PgOutbox::new(pool, "payment_outbox").expect("store"),
        &kafka,
        &relay,
    )
    .await
    .expect("re-sent");
    assert!(resent >= 6, "every authorization once more");
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after: (i64, i64) = (
        sqlx::query_scalar(history)
            .fetch_one(&mut my)
            .await
            .expect("history"),
        sqlx::query_scalar(outbox)
            .fetch_one(&mut my)
            .await
            .expect("outbox"),
    );
    assert_eq!(after, before, "duplicates changed the order store");
    for id in &ids {
        let order = settled(&client, &run.api, id, Duration::from_secs(10)).await;
        assert_eq!(order["status"], "CONFIRMED", "{order}");
    }

    drop((my, pg));
    drop(_keel);
    drop(connectors);
    run.clean_up(&stack_addr, &name).await;
}
