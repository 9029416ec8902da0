//! The cart check against carts from MariaDB CDC (`[carts].source = "cdc"`), end to end: `keel
//! run` registers the Debezium connector of `carts`/`cart_items`, an order for a cart seeded in
//! MariaDB is confirmed, and a place-order command written straight to Kafka (another system's
//! producer) for a cart that does not exist is cancelled with `CART_NOT_FOUND` after the wait.

mod common;

use std::time::{Duration, Instant};

use common::{Run, place, settled, wait_ready};
use keel_avro::records::{Money, OrderCommand, OrderCommandBody, OrderLine, PlaceOrder};
use keel_tests::Stack;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::Connection;

#[tokio::test(flavor = "multi_thread")]
async fn orders_are_checked_against_carts_streamed_from_mariadb() {
    let stack = Stack::from_env();
    let (name, mut run) = Run::new(&stack).await;
    run.env.extend([
        ("KEEL__CARTS__SOURCE".to_owned(), "cdc".to_owned()),
        ("KEEL__SAGA__CART_WAIT_MS".to_owned(), "4000".to_owned()),
        ("KEEL__SAGA__CART_TIMEOUT_MS".to_owned(), "20000".to_owned()),
    ]);
    run.ok(&[
        "carts",
        "seed",
        "--cart-id",
        "cart-cdc",
        "--item",
        "SKU-CDC:2:1250",
    ]);
    run.ok(&["inventory", "seed", "--skus", "SKU-CDC", "--quantity", "5"]);
    let _psp = run.spawn("psp-mock", &["psp-mock"]);
    let _keel = run.spawn("keel run", &["run"]);
    let client = reqwest::Client::new();
    wait_ready(&client, &run.api, Duration::from_secs(180)).await;

    // A cart that existed before the connector: its snapshot row lets the order through.
    let placed = place(&client, &run.api, "cart-cdc", "tok_visa", "key-cdc").await;
    let id = placed["orderId"].as_str().expect("id").to_owned();
    let order = settled(&client, &run.api, &id, Duration::from_secs(120)).await;
    assert_eq!(order["status"], "CONFIRMED", "{order}");

    // Another system's producer orders a cart the cart service never had.
    let topic = format!("{name}.orders.commands.v1");
    let ghost = format!("order-ghost-{}", uuid::Uuid::new_v4());
    let command = OrderCommand {
        command_id: format!("{ghost}/place"),
        order_id: ghost.clone(),
        issued_at: chrono_now(),
        causation_id: "other-system".into(),
        correlation_id: ghost.clone(),
        command: OrderCommandBody::PlaceOrder(PlaceOrder {
            customer_id: "cust-9".into(),
            cart_id: "cart-that-never-was".into(),
            lines: vec![OrderLine {
                sku: "SKU-CDC".into(),
                quantity: 1,
                unit_price: Money::new(1_250, "EUR"),
            }],
            total: Money::new(1_250, "EUR"),
            payment_method: "tok_visa".into(),
            shipping_address: None,
        }),
    };
    let codec = keel_avro::Codec::new(keel_avro::RegistryConfig::with_url(
        stack.registry_url.clone(),
    ))
    .expect("codec");
    let payload = codec.encode_to(&topic, &command).await.expect("encodes");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka_bootstrap)
        .set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    producer
        .send(
            FutureRecord::to(&topic).key(&ghost).payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .expect("sent");
    let sent = Instant::now();

    let mut my = sqlx::MySqlConnection::connect(&run.mysql_url)
        .await
        .expect("mysql");
    let (status, reason) = loop {
        let row: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT status, reason FROM orders WHERE order_id = ?")
                .bind(&ghost)
                .fetch_optional(&mut my)
                .await
                .expect("reads");
        if let Some((status, reason)) = &row
            && status != "PENDING"
        {
            break (status.clone(), reason.clone());
        }
        assert!(
            sent.elapsed() < Duration::from_secs(60),
            "the ghost order never settled: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(status, "CANCELLED");
    assert_eq!(reason.as_deref(), Some("CART_NOT_FOUND"));
    assert!(
        sent.elapsed() >= Duration::from_millis(3_500),
        "it waited for the cart first"
    );

    let connect = keel_connectors::ConnectClient::new(&stack.connect_url);
    let _ = connect.delete(&format!("{name}-carts-cdc")).await;
    run.clean_up(&stack, &name).await;
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
