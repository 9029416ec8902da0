//! One real checkout end to end through real servers: `keel psp-mock` and `keel run` as child
//! processes against the local stack, orders placed through the HTTP API, outcomes read back
//! from the API, MariaDB, PostgreSQL and Cassandra. The run keeps the default configuration's
//! cart check (`[carts].source = "cdc"`: `keel run` registers the carts connector and the saga
//! checks every order against the carts from MariaDB CDC).
//!
//! The run is isolated: its own topic prefix, application id, databases, keyspace and ports, so
//! it shares the stack with other tests and earlier runs.

mod common;

use std::time::{Duration, Instant};

use common::{Run, place, settled, wait_ready};
use keel_tests::Stack;
use serde_json::{Value, json};
use sqlx::Connection;

#[tokio::test(flavor = "multi_thread")]
async fn a_checkout_goes_end_to_end_through_every_store() {
    let stack = Stack::from_env();
    let (name, mut run) = Run::new(&stack).await;
    // The default configuration's cart check: every order against the carts from MariaDB CDC.
    run.with_cart_cdc();
    let connectors = run.connectors_guard();
    let (mug, plate) = ("SKU-MUG", "SKU-PLATE");
    let (mug_1, mug_2, plate_1) = (
        format!("{mug}:1:1250"),
        format!("{mug}:2:1250"),
        format!("{plate}:1:800"),
    );
    let plate_10 = format!("{plate}:10:800");
    for (cart, items) in [
        ("cart-ok", vec![mug_2.as_str(), plate_1.as_str()]),
        ("cart-short", vec![plate_10.as_str()]),
        ("cart-declined", vec![mug_1.as_str()]),
        ("cart-cancelled", vec![plate_1.as_str()]),
        ("cart-pending", vec![plate_1.as_str()]),
        ("cart-psp-timeout", vec![mug_1.as_str()]),
    ] {
        let mut args = vec!["carts", "seed", "--cart-id", cart];
        for item in items {
            args.extend(["--item", item]);
        }
        run.ok(&args);
    }
    run.ok(&[
        "inventory",
        "seed",
        "--skus",
        &format!("{mug},{plate}"),
        "--quantity",
        "5",
    ]);

    let _psp = run.spawn("psp-mock", &["psp-mock"]);
    let mut keel = run.spawn("keel run", &["run"]);
    let client = reqwest::Client::new();
    wait_ready(&client, &run.api, Duration::from_secs(180)).await;
    // Orders arrive after the runtime's periodic work has run at least once (lag sampling every
    // 5 s once blocked the stream thread for ~0.5 s per partition: a reply then took 15 s).
    tokio::time::sleep(Duration::from_secs(7)).await;

    // The happy path, and the same POST retried with its key.
    let first = place(&client, &run.api, "cart-ok", "tok_visa", "key-ok").await;
    let again = place(&client, &run.api, "cart-ok", "tok_visa", "key-ok").await;
    assert_eq!(first["orderId"], again["orderId"], "one key, one order");
    let ok_id = first["orderId"].as_str().expect("id").to_owned();
    let short = place(&client, &run.api, "cart-short", "tok_visa", "key-short").await;
    let declined = place(
        &client,
        &run.api,
        "cart-declined",
        "tok_decline_insufficient_funds",
        "key-declined",
    )
    .await;

    // A PSP that never answers keeps this order waiting for its payment; the customer cancels.
    let slow = place(
        &client,
        &run.api,
        "cart-cancelled",
        "tok_timeout",
        "key-cancel",
    )
    .await;
    let slow_id = slow["orderId"].as_str().expect("id").to_owned();
    let start = Instant::now();
    loop {
        let r: Value = client
            .get(format!("{}/orders/{slow_id}", run.api))
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .expect("JSON");
        if r["status"] == "PENDING" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never PENDING: {r}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cancel = client
        .post(format!("{}/orders/{slow_id}/cancel", run.api))
        .json(&json!({"reason": "changed my mind"}))
        .send()
        .await
        .expect("POST cancel");
    assert_eq!(cancel.status().as_u16(), 202);
    let cancelled = settled(&client, &run.api, &slow_id, Duration::from_secs(60)).await;
    assert_eq!(cancelled["status"], "CANCELLED", "{cancelled}");
    assert_eq!(cancelled["reason"], "CUSTOMER_CANCELLED", "{cancelled}");
    let again = client
        .post(format!("{}/orders/{slow_id}/cancel", run.api))
        .json(&json!({}))
        .send()
        .await
        .expect("POST cancel");
    assert_eq!(
        again.status().as_u16(),
        409,
        "a cancelled order cannot be cancelled again"
    );

    let order = settled(&client, &run.api, &ok_id, Duration::from_secs(120)).await;
    assert_eq!(order["status"], "CONFIRMED", "{order}");
    let timeline = order["timeline"].as_array().expect("a timeline");
    assert!(timeline.len() >= 2, "{order}");
    assert!(
        timeline
            .iter()
            .all(|e| e["topic"].as_str().is_some() && e["offset"].is_number()),
        "every entry names the record behind it: {order}"
    );

    let short = settled(
        &client,
        &run.api,
        short["orderId"].as_str().expect("id"),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(short["status"], "CANCELLED", "{short}");
    assert_eq!(short["reason"], "INSUFFICIENT_STOCK", "{short}");
    let declined_id = declined["orderId"].as_str().expect("id").to_owned();
    let declined = settled(&client, &run.api, &declined_id, Duration::from_secs(60)).await;
    assert_eq!(declined["status"], "CANCELLED", "{declined}");
    assert_eq!(declined["reason"], "PAYMENT_DECLINED", "{declined}");

    // The PSP authorizes but answers after the payment service's timeout (5 s here): the order
    // is cancelled with PSP_TIMEOUT, and the late authorization is found and voided.
    let timeout = place(
        &client,
        &run.api,
        "cart-psp-timeout",
        "tok_timeout",
        "key-timeout",
    )
    .await;
    let timeout_id = timeout["orderId"].as_str().expect("id").to_owned();
    let timed_out = settled(&client, &run.api, &timeout_id, Duration::from_secs(60)).await;
    assert_eq!(timed_out["status"], "CANCELLED", "{timed_out}");
    assert_eq!(timed_out["reason"], "PSP_TIMEOUT", "{timed_out}");

    // An asynchronous PSP: "pending" at once, then a signed callback (delivered twice) to
    // POST /psp/callbacks, a PspCallback command, the ledger, the outbox, the saga: CONFIRMED.
    let pending = place(
        &client,
        &run.api,
        "cart-pending",
        "tok_pending",
        "key-pending",
    )
    .await;
    let pending_id = pending["orderId"].as_str().expect("id").to_owned();
    let pending = settled(&client, &run.api, &pending_id, Duration::from_secs(60)).await;
    assert_eq!(pending["status"], "CONFIRMED", "{pending}");

    // MariaDB: the order, its lines, two history rows and two outbox rows.
    let mut my = sqlx::MySqlConnection::connect(&run.mysql_url)
        .await
        .expect("mysql");
    let status: String = sqlx::query_scalar("SELECT status FROM orders WHERE order_id = ?")
        .bind(&ok_id)
        .fetch_one(&mut my)
        .await
        .expect("the order row");
    assert_eq!(status, "CONFIRMED");
    for (sql, expected) in [
        ("SELECT COUNT(*) FROM order_items WHERE order_id = ?", 2),
        (
            "SELECT COUNT(*) FROM order_status_history WHERE order_id = ?",
            2,
        ),
        (
            "SELECT COUNT(*) FROM order_outbox WHERE aggregate_id = ?",
            2,
        ),
    ] {
        let n: i64 = sqlx::query_scalar(sql)
            .bind(&ok_id)
            .fetch_one(&mut my)
            .await
            .expect(sql);
        assert_eq!(n, expected, "{sql}");
    }

    // Kafka: the relay published the outbox rows as Avro on the public topics, keyed by order
    // id, with the outbox row's id as the event-id header.
    let changed_topic = format!("{name}.order.status.changed");
    let consumer =
        keel_tests::kafka::consumer(&stack.kafka_bootstrap, "read_committed").expect("consumer");
    let codec = keel_avro::Codec::new(keel_avro::RegistryConfig::with_url(
        stack.registry_url.clone(),
    ))
    .expect("codec");
    let start = Instant::now();
    let mut confirmed_event = None;
    rdkafka::consumer::Consumer::subscribe(&consumer, &[changed_topic.as_str()])
        .expect("subscribe");
    while confirmed_event.is_none() && start.elapsed() < Duration::from_secs(60) {
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await else {
            continue;
        };
        use rdkafka::message::{Headers, Message};
        if m.key() != Some(ok_id.as_bytes()) {
            continue;
        }
        let event: keel_avro::records::OrderStatusChanged = codec
            .decode_from(&changed_topic, m.payload().expect("a value"))
            .await
            .expect("Avro in the Confluent wire format");
        let header = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "keel.event.id"))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned());
        assert_eq!(header.as_deref(), Some(event.event_id.as_str()));
        confirmed_event = Some(event);
    }
    let event = confirmed_event.expect("order.status.changed for the confirmed order");
    assert_eq!(event.to_status, keel_avro::records::OrderStatus::Confirmed);
    let outbox_id: String =
        sqlx::query_scalar("SELECT id FROM order_outbox WHERE aggregate_id = ? AND event_type = ?")
            .bind(&ok_id)
            .bind(&changed_topic)
            .fetch_one(&mut my)
            .await
            .expect("the outbox row");
    assert_eq!(
        outbox_id, event.event_id,
        "the event id is the outbox row's id"
    );

    // Other teams' clients read the same records: Confluent's Python client with its Avro
    // deserializer and the registry, and Kafka's own console consumer.
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
        .args([
            "--bootstrap",
            &stack.kafka_bootstrap,
            "--registry",
            &stack.registry_url,
        ])
        .args(["--topic", &changed_topic, "--min", "2"])
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
    let confirmed = records
        .iter()
        .find(|r| r["key"] == ok_id.as_str())
        .unwrap_or_else(|| panic!("the confirmed order in {records:?}"));
    assert_eq!(confirmed["value"]["to_status"], "CONFIRMED", "{confirmed}");
    assert_eq!(confirmed["value"]["event_id"], event.event_id.as_str());
    assert_eq!(
        confirmed["headers"]["keel.event.id"],
        event.event_id.as_str()
    );

    let console = std::process::Command::new(keel_tests::stack_script())
        .args([
            "kafka-tool",
            "org.apache.kafka.tools.consumer.ConsoleConsumer",
        ])
        .args([
            "--bootstrap-server",
            &stack.kafka_bootstrap,
            "--topic",
            &changed_topic,
        ])
        // Everything there is, then 10 s of silence ends it.
        .args([
            "--from-beginning",
            "--max-messages",
            "100",
            "--timeout-ms",
            "10000",
        ])
        .args(["--isolation-level", "read_committed"])
        .args(["--formatter-property", "print.key=true"])
        .args(["--formatter-property", "print.headers=true"])
        .output()
        .expect("kafka's console consumer");
    let printed = String::from_utf8_lossy(&console.stdout).into_owned();
    assert!(
        printed.contains(&format!("keel.event.id:{}", event.event_id)) && printed.contains(&ok_id),
        "the console consumer shows the key and the event-id header: {printed}"
    );

    // PostgreSQL: authorized and then captured, for the order's total.
    let mut pg = sqlx::PgConnection::connect(&run.postgres_url)
        .await
        .expect("postgres");
    let start = Instant::now();
    loop {
        let row: Option<(String, i64)> =
            sqlx::query_as("SELECT status, amount_minor FROM payments WHERE order_id = $1")
                .bind(&ok_id)
                .fetch_optional(&mut pg)
                .await
                .expect("payments");
        if let Some((status, amount)) = &row
            && status == "CAPTURED"
        {
            assert_eq!(*amount, 2 * 1250 + 800);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not captured: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let declined_payment: Option<String> =
        sqlx::query_scalar("SELECT status FROM payments WHERE order_id = $1")
            .bind(&declined_id)
            .fetch_optional(&mut pg)
            .await
            .expect("payments");
    assert_eq!(declined_payment.as_deref(), Some("FAILED"));
    // The asynchronous payment: captured; its callback, delivered twice, was recorded once and
    // published one payment.authorized event.
    let start = Instant::now();
    loop {
        let (status, callbacks, authorized): (Option<String>, i64, i64) = sqlx::query_as(
            "SELECT (SELECT status FROM payments WHERE order_id = $1), \
             (SELECT COUNT(*) FROM payment_attempts a JOIN payments p USING (payment_id) \
              WHERE p.order_id = $1 AND a.psp_event_id IS NOT NULL), \
             (SELECT COUNT(*) FROM payment_outbox WHERE aggregate_id = $1 \
              AND event_type LIKE '%payment.authorized.v1')",
        )
        .bind(&pending_id)
        .fetch_one(&mut pg)
        .await
        .expect("payments");
        if status.as_deref() == Some("CAPTURED") {
            assert_eq!(
                (callbacks, authorized),
                (1, 1),
                "two deliveries, one effect"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not captured: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let psp = run
        .env
        .iter()
        .find(|(k, _)| k == "KEEL__PSP_MOCK__LISTEN")
        .map(|(_, v)| v.clone())
        .expect("the PSP's address");
    let stats: Value = client
        .get(format!("http://{psp}/admin/stats"))
        .send()
        .await
        .expect("PSP stats")
        .json()
        .await
        .expect("JSON");
    assert!(
        stats["callbacks_delivered"].as_u64() >= Some(2),
        "the PSP delivered the callback twice: {stats}"
    );
    let start = Instant::now();
    loop {
        // The payment stays FAILED (a status never moves back); the late authorization gets a
        // successful VOID attempt, so nothing is charged.
        let attempts: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT p.status, a.kind, a.outcome FROM payments p \
             JOIN payment_attempts a USING (payment_id) WHERE p.order_id = $1",
        )
        .bind(&timeout_id)
        .fetch_all(&mut pg)
        .await
        .expect("payments");
        if attempts
            .iter()
            .any(|(_, kind, outcome)| kind == "VOID" && outcome == "SUCCEEDED")
        {
            assert!(
                attempts.iter().all(|(status, _, _)| status == "FAILED"),
                "{attempts:?}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the late authorization was not voided: {attempts:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Cassandra: stock levels after the sale (5 - 2 mugs; 5 - 1 plate - 1 plate paid asynchronously), no hold left behind.
    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_node(&stack.cassandra_node)
        .build()
        .await
        .expect("cassandra");
    let start = Instant::now();
    loop {
        let rows = session
            .query_unpaged(
                format!("SELECT sku, on_hand FROM {}.stock_level", run.keyspace),
                &[],
            )
            .await
            .expect("stock_level")
            .into_rows_result()
            .expect("rows");
        let mut levels: Vec<(String, i32)> = rows
            .rows::<(String, i32)>()
            .expect("typed")
            .filter_map(Result::ok)
            .collect();
        levels.sort();
        if levels == vec![(mug.to_owned(), 3), (plate.to_owned(), 3)] {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "stock levels: {levels:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let holds = session
        .query_unpaged(
            format!("SELECT order_id FROM {}.reservation", run.keyspace),
            &[],
        )
        .await
        .expect("reservation")
        .into_rows_result()
        .expect("rows")
        .rows_num();
    assert_eq!(
        holds, 0,
        "confirmed holds became sales; released ones are gone"
    );

    // `keel order` shows the same order with the coordinates of each decision's cause.
    let shown = run.keel(&["order", &ok_id]).output().expect("keel order");
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(shown.contains("CONFIRMED"), "{shown}");
    assert!(
        shown.contains(&format!("{name}.orders.commands.v1/"))
            && shown.contains(&format!("{name}.payment.authorized.v1/")),
        "the timeline names the records behind PENDING and CONFIRMED: {shown}"
    );

    // `keel lag` reports the applications' groups, per partition, as JSON for scripts.
    let lag = run
        .keel(&["lag", "--once", "--json"])
        .output()
        .expect("keel lag");
    assert!(
        lag.status.success(),
        "{}",
        String::from_utf8_lossy(&lag.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&lag.stdout).expect("a JSON array");
    let saga_commands = rows
        .iter()
        .filter(|r| {
            r["group"] == format!("{name}-saga").as_str()
                && r["topic"] == format!("{name}.orders.commands.v1").as_str()
        })
        .count();
    assert!(
        (1..=6).contains(&saga_commands),
        "a row per partition the saga consumed of its input: {rows:?}"
    );
    assert!(
        rows.iter()
            .any(|r| r["group"] == format!("{name}-payment").as_str()),
        "the payment service's group too: {rows:?}"
    );

    // SIGTERM drains and commits, and the process exits cleanly.
    let status = keel
        .terminate(Duration::from_secs(60))
        .expect("keel run stops on SIGTERM");
    assert!(status.success(), "keel run exited with {status}");
    drop(connectors);
    run.clean_up(&stack, &name).await;
}
