//! The outboxes through Debezium (`[outbox].mode = "debezium"`, ADR 0003), against the real
//! stack: `keel connectors register` is idempotent and `status` says RUNNING; the outbox event
//! router writes byte for byte what the relay writes (key, value, `keel.event.id` header,
//! partition on a 6-partition topic); `delete` drops the replication slot; and one checkout
//! with no relay at all is CONFIRMED from the events Debezium routed, readable by Confluent's
//! Python client and Kafka's console consumer with the outbox row's id as the event id.

mod common;

use std::time::{Duration, Instant};

use common::{Run, place, settled, wait_ready};
use keel_processors::outbox::{MySqlOutbox, PgOutbox, RelayConfig, producer, relay_once};
use keel_tests::Stack;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use serde_json::Value;
use sqlx::Connection;

/// Every record of `topic` (from the beginning) whose key is in `keys`, read until `min` of
/// them arrived (then 2 s more, to catch extra copies) or `within` passed.
async fn records(
    bootstrap: &str,
    topic: &str,
    keys: &[&str],
    min: usize,
    within: Duration,
) -> Vec<OwnedMessage> {
    let consumer: StreamConsumer =
        keel_tests::kafka::consumer(bootstrap, "read_committed").expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let start = Instant::now();
    let mut out = Vec::new();
    let mut enough_at = None;
    while start.elapsed() < within {
        if enough_at.is_some_and(|t: Instant| t.elapsed() > Duration::from_secs(2)) {
            break;
        }
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await
        else {
            continue;
        };
        let key = m.key().map(String::from_utf8_lossy).unwrap_or_default();
        if keys.contains(&key.as_ref()) {
            out.push(m.detach());
            if out.len() >= min && enough_at.is_none() {
                enough_at = Some(Instant::now());
            }
        }
    }
    out
}

fn event_id(m: &OwnedMessage) -> Option<Vec<u8>> {
    m.headers()
        .and_then(|h| h.iter().find(|h| h.key == "keel.event.id"))
        .and_then(|h| h.value.map(<[u8]>::to_vec))
}

fn output(run: &Run, args: &[&str]) -> (bool, String) {
    let out = run.keel(args).output().expect("keel runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn registering_twice_is_harmless_and_the_router_writes_what_the_relay_writes() {
    let stack = Stack::from_env();
    let (name, mut run) = Run::new(&stack).await;
    run.with_debezium_outbox();
    let connectors = run.connectors_guard();
    let slot = format!("{name}_payment_outbox");

    run.ok(&["connectors", "register"]);
    run.ok(&["connectors", "register"]);
    let (ok, status) = output(&run, &["connectors", "status"]);
    assert!(ok, "status exits 0 when everything runs: {status}");
    for connector in ["order-outbox", "payment-outbox"] {
        assert!(
            status.contains(&format!(
                "{name}-{connector}: connector RUNNING; task 0 RUNNING"
            )),
            "{status}"
        );
    }
    assert!(status.contains(&format!("slot {slot}: active")), "{status}");

    // Eight outbox rows per store (eight order ids: a partition mismatch cannot hide behind
    // one lucky key), written as the services write them.
    let mut my = sqlx::MySqlConnection::connect(&run.mysql_url)
        .await
        .expect("mysql");
    let mut pg = sqlx::PgConnection::connect(&run.postgres_url)
        .await
        .expect("postgres");
    let (created, authorized) = (
        format!("{name}.order.created"),
        format!("{name}.payment.authorized.v1"),
    );
    let orders: Vec<String> = (0..8)
        .map(|i| format!("order-{i}-{}", uuid::Uuid::new_v4()))
        .collect();
    for (i, order) in orders.iter().enumerate() {
        // Confluent framing (magic 0, schema id) and some bytes that are not UTF-8.
        let payload = [0u8, 0, 0, 0, 7, 0xff, 0xfe, u8::try_from(i).expect("small")];
        sqlx::query(
            "INSERT INTO order_outbox (id, aggregate_id, event_type, payload, created_at) \
             VALUES (?, ?, ?, ?, NOW(3))",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(order)
        .bind(&created)
        .bind(&payload[..])
        .execute(&mut my)
        .await
        .expect("an order outbox row");
        sqlx::query(
            "INSERT INTO payment_outbox (id, aggregate_id, event_type, payload) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(order)
        .bind(&authorized)
        .bind(&payload[..])
        .execute(&mut pg)
        .await
        .expect("a payment outbox row");
    }
    let keys: Vec<&str> = orders.iter().map(String::as_str).collect();
    for topic in [&created, &authorized] {
        let routed = records(
            &stack.kafka_bootstrap,
            topic,
            &keys,
            8,
            Duration::from_secs(90),
        )
        .await;
        assert_eq!(routed.len(), 8, "Debezium routed each row once to {topic}");
    }

    // The same rows through Keel's relay (its producer: murmur2, like every Keel producer).
    let relay = RelayConfig::default();
    let kafka = producer(&stack.kafka_bootstrap, &relay).expect("producer");
    let pool = sqlx::MySqlPool::connect(&run.mysql_url)
        .await
        .expect("mysql pool");
    let sent = relay_once(
        &MySqlOutbox::new(pool, "order_outbox").expect("store"),
        &kafka,
        &relay,
    )
    .await
    .expect("relayed");
    assert_eq!(sent, 8);
    let pool = sqlx::PgPool::connect(&run.postgres_url)
        .await
        .expect("pg pool");
    let sent = relay_once(
        &PgOutbox::new(pool, "payment_outbox").expect("store"),
        &kafka,
        &relay,
    )
    .await
    .expect("relayed");
    assert_eq!(sent, 8);

    for (topic, table_ids) in [
        (
            &created,
            sqlx::query_as::<_, (String, String)>("SELECT aggregate_id, id FROM order_outbox")
                .fetch_all(&mut my)
                .await
                .expect("ids"),
        ),
        (
            &authorized,
            sqlx::query_as::<_, (String, String)>("SELECT aggregate_id, id FROM payment_outbox")
                .fetch_all(&mut pg)
                .await
                .expect("ids"),
        ),
    ] {
        let all = records(
            &stack.kafka_bootstrap,
            topic,
            &keys,
            16,
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(
            all.len(),
            16,
            "one copy from Debezium and one from the relay per row on {topic}; the relay's \
             SENT updates were not routed"
        );
        for order in &orders {
            let copies: Vec<&OwnedMessage> = all
                .iter()
                .filter(|m| m.key() == Some(order.as_bytes()))
                .collect();
            assert_eq!(copies.len(), 2, "{order} on {topic}");
            let (debezium, relayed) = (copies[0], copies[1]);
            let id = &table_ids
                .iter()
                .find(|(o, _)| o == order)
                .expect("its row")
                .1;
            assert_eq!(
                event_id(debezium).as_deref(),
                Some(id.as_bytes()),
                "the router's keel.event.id is the row id as UTF-8 bytes"
            );
            assert_eq!(event_id(debezium), event_id(relayed), "same header bytes");
            assert_eq!(debezium.key(), relayed.key(), "same key bytes");
            assert_eq!(debezium.payload(), relayed.payload(), "same value bytes");
            assert_eq!(
                debezium.partition(),
                relayed.partition(),
                "Connect's partitioner and Keel's murmur2 agree for {order} on {topic}"
            );
        }
        let partitions: std::collections::BTreeSet<i32> =
            all.iter().map(Message::partition).collect();
        assert!(
            partitions.len() > 1,
            "eight keys on a 6-partition topic use several partitions: {partitions:?}"
        );
    }

    // A slot that disappears (dropped by someone, or lost) is reported, never glossed over.
    // (Stopped, not paused: a paused task keeps its replication connection.)
    keel_connectors::ConnectClient::new(&stack.connect_url)
        .stop(&format!("{name}-payment-outbox"))
        .await
        .expect("stopped");
    let start = Instant::now();
    loop {
        let active: bool =
            sqlx::query_scalar("SELECT active FROM pg_replication_slots WHERE slot_name = $1")
                .bind(&slot)
                .fetch_one(&mut pg)
                .await
                .expect("the slot");
        if !active {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the stopped connector still streams"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(&slot)
        .execute(&mut pg)
        .await
        .expect("slot dropped behind the connector's back");
    let (ok, status) = output(&run, &["connectors", "status"]);
    assert!(!ok, "status fails on a missing slot: {status}");
    assert!(
        status.contains(&format!("slot {slot}: MISSING")),
        "{status}"
    );
    assert!(status.contains("connector STOPPED"), "{status}");

    // Delete: the connectors go, and with the PostgreSQL one its slot.
    run.ok(&["connectors", "resume"]);
    drop(connectors);
    let slots: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM pg_replication_slots WHERE slot_name = $1")
            .bind(&slot)
            .fetch_one(&mut pg)
            .await
            .expect("slots");
    assert_eq!(slots, 0, "keel connectors delete dropped the slot");
    let (ok, status) = output(&run, &["connectors", "status"]);
    assert!(
        !ok,
        "status fails when Keel's connectors are missing: {status}"
    );
    assert!(status.contains("NOT REGISTERED"), "{status}");
    drop(pg);
    run.clean_up(&stack, &name).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_checkout_without_a_relay_is_confirmed_from_the_events_debezium_routed() {
    let stack = Stack::from_env();
    let (name, mut run) = Run::new(&stack).await;
    run.with_debezium_outbox();
    let connectors = run.connectors_guard();
    run.ok(&[
        "carts",
        "seed",
        "--cart-id",
        "cart-dbz",
        "--item",
        "SKU-DBZ:2:1250",
    ]);
    run.ok(&["inventory", "seed", "--skus", "SKU-DBZ", "--quantity", "5"]);
    let _psp = run.spawn("psp-mock", &["psp-mock"]);
    let _keel = run.spawn("keel run", &["run"]);
    let client = reqwest::Client::new();
    // The relay role registers the connectors before the roles start.
    wait_ready(&client, &run.api, Duration::from_secs(240)).await;

    let placed = place(&client, &run.api, "cart-dbz", "tok_visa", "key-dbz").await;
    let id = placed["orderId"].as_str().expect("id").to_owned();
    let order = settled(&client, &run.api, &id, Duration::from_secs(120)).await;
    assert_eq!(order["status"], "CONFIRMED", "{order}");

    let mut my = sqlx::MySqlConnection::connect(&run.mysql_url)
        .await
        .expect("mysql");
    let mut pg = sqlx::PgConnection::connect(&run.postgres_url)
        .await
        .expect("postgres");
    let (created, authorized, commands) = (
        format!("{name}.order.created"),
        format!("{name}.payment.authorized.v1"),
        format!("{name}.orders.commands.v1"),
    );
    let created_id: String =
        sqlx::query_scalar("SELECT id FROM order_outbox WHERE aggregate_id = ? AND event_type = ?")
            .bind(&id)
            .bind(&created)
            .fetch_one(&mut my)
            .await
            .expect("the order.created outbox row");
    let (authorized_id, status): (String, String) = sqlx::query_as(
        "SELECT id, status FROM payment_outbox WHERE aggregate_id = $1 AND event_type = $2",
    )
    .bind(&id)
    .bind(&authorized)
    .fetch_one(&mut pg)
    .await
    .expect("the payment.authorized outbox row");
    assert_eq!(status, "PENDING", "no relay ran: the row was never marked");

    // The command (Keel's API producer), order.created and payment.authorized (Debezium): one
    // key, identical bytes, one partition number.
    let command = records(
        &stack.kafka_bootstrap,
        &commands,
        &[&id],
        1,
        Duration::from_secs(30),
    )
    .await;
    let partition = command
        .first()
        .expect("the place-order command")
        .partition();
    let codec = keel_avro::Codec::new(keel_avro::RegistryConfig::with_url(
        stack.registry_url.clone(),
    ))
    .expect("codec");
    for (topic, row_id) in [(&created, &created_id), (&authorized, &authorized_id)] {
        let got = records(
            &stack.kafka_bootstrap,
            topic,
            &[&id],
            1,
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(got.len(), 1, "one event on {topic}");
        let m = &got[0];
        assert_eq!(m.key(), Some(id.as_bytes()));
        assert_eq!(event_id(m).as_deref(), Some(row_id.as_bytes()), "{topic}");
        assert_eq!(
            m.partition(),
            partition,
            "{topic} agrees with the command's partition"
        );
        if topic == &authorized {
            let event: keel_avro::records::PaymentAuthorized = codec
                .decode_from(topic, m.payload().expect("a value"))
                .await
                .expect("Avro in the Confluent wire format");
            assert_eq!(&event.event_id, row_id);
        }
    }

    // Confluent's Python client (AvroDeserializer against the registry) reads order.created.
    let python = std::env::var("KEEL_INTEROP_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/.cache/keel/venv/bin/python",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let read = std::process::Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/confluent_read.py"
        ))
        .args(["--bootstrap", &stack.kafka_bootstrap])
        .args(["--registry", &stack.registry_url])
        .args(["--topic", &created, "--min", "1"])
        .output()
        .expect("the interop Python (scripts/bootstrap installs it)");
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let records: Vec<Value> = String::from_utf8_lossy(&read.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per record"))
        .collect();
    let ours = records
        .iter()
        .find(|r| r["key"] == id.as_str())
        .unwrap_or_else(|| panic!("the order in {records:?}"));
    assert_eq!(
        ours["headers"]["keel.event.id"],
        created_id.as_str(),
        "{ours}"
    );
    assert_eq!(ours["value"]["order_id"], id.as_str(), "{ours}");

    // Kafka's own console consumer shows the key and the header of payment.authorized.
    let console = std::process::Command::new(keel_tests::stack_script())
        .args([
            "kafka-tool",
            "org.apache.kafka.tools.consumer.ConsoleConsumer",
        ])
        .args(["--bootstrap-server", &stack.kafka_bootstrap])
        .args(["--topic", &authorized, "--from-beginning"])
        .args(["--max-messages", "10", "--timeout-ms", "10000"])
        .args(["--formatter-property", "print.key=true"])
        .args(["--formatter-property", "print.headers=true"])
        .output()
        .expect("kafka's console consumer");
    let printed = String::from_utf8_lossy(&console.stdout).into_owned();
    assert!(
        printed.contains(&format!("keel.event.id:{authorized_id}")) && printed.contains(&id),
        "the console consumer shows the key and the event-id header: {printed}"
    );

    drop((my, pg));
    drop(_keel);
    drop(connectors);
    run.clean_up(&stack, &name).await;
}
