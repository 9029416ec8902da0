//! The cart check against carts from MariaDB CDC (`[carts].source = "cdc"`, the default), end to
//! end: `keel run` registers the Debezium connector of `carts`/`cart_items`, and every
//! place-order command — from the API or written straight to Kafka by another system's
//! producer — is checked against the carts table the saga's application builds from it:
//!
//! - an order for a cart seeded in MariaDB is confirmed, and a command for a cart that does not
//!   exist is cancelled with `CART_NOT_FOUND` after the (shortened) wait;
//! - with the built-in default (no `KEEL__CARTS__SOURCE` at all, default waits), commands on
//!   Kafka whose cart does not exist, whose lines or whose currency disagree with the cart are
//!   cancelled with their reason, one that agrees is `CONFIRMED`, and a second order of that
//!   cart is `CART_ALREADY_ORDERED`;
//! - the connector deleted under a running `keel run`: `/ready` answers 503 naming it and
//!   `keel_connector_running` drops to 0 (before, nothing said so and every checkout became
//!   `CART_NOT_FOUND`); `keel connectors register` makes the process ready again;
//! - without Kafka Connect, `keel run` with the default stops at once and says what to do.

mod common;

use std::time::{Duration, Instant};

use common::{Run, free_port, place, settled, wait_ready};
use keel_avro::records::{Money, OrderCommand, OrderCommandBody, OrderLine, PlaceOrder};
use keel_tests::Stack;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::Connection;

#[tokio::test(flavor = "multi_thread")]
async fn orders_are_checked_against_carts_streamed_from_mariadb() {
    let stack = Stack::from_env();
    let (name, mut run) = Run::new(&stack).await;
    run.with_cart_cdc();
    run.env.extend([
        ("KEEL__SAGA__CART_WAIT_MS".to_owned(), "4000".to_owned()),
        ("KEEL__SAGA__CART_TIMEOUT_MS".to_owned(), "20000".to_owned()),
        (
            "KEEL__CONNECTORS__WATCH_INTERVAL_MS".to_owned(),
            "500".to_owned(),
        ),
    ]);
    let connectors = run.connectors_guard();
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
    let mut keel = run.spawn("keel run", &["run"]);
    let client = reqwest::Client::new();
    wait_ready(&client, &run.api, Duration::from_secs(180)).await;

    // A cart that existed before the connector: its snapshot row lets the order through.
    let placed = place(&client, &run.api, "cart-cdc", "tok_visa", "key-cdc").await;
    let id = placed["orderId"].as_str().expect("id").to_owned();
    let order = settled(&client, &run.api, &id, Duration::from_secs(120)).await;
    assert_eq!(order["status"], "CONFIRMED", "{order}");

    // Another system's producer orders a cart the cart service never had.
    let producer = Producer::new(&stack, &name);
    let ghost = format!("order-ghost-{}", uuid::Uuid::new_v4());
    producer
        .place(
            &ghost,
            "cart-that-never-was",
            &[("SKU-CDC", 1, 1_250)],
            "EUR",
        )
        .await;
    let sent = Instant::now();

    let mut my = sqlx::MySqlConnection::connect(&run.mysql_url)
        .await
        .expect("mysql");
    let settled = settled_in_mysql(&mut my, &[ghost], Duration::from_secs(60)).await;
    assert_eq!(
        settled[0].1,
        ("CANCELLED".to_owned(), Some("CART_NOT_FOUND".to_owned()))
    );
    assert!(
        sent.elapsed() >= Duration::from_millis(3_500),
        "it waited for the cart first"
    );

    // An operator deletes the connector under the running process.
    let connector = format!("{name}-carts-cdc");
    let running =
        |value: &str| format!("keel_connector_running{{connector=\"{connector}\"}} {value}");
    let metrics = common::metrics_text(&client, &run.api).await;
    assert!(metrics.contains(&running("1")), "{metrics}");
    run.ok(&["connectors", "delete", &connector]);
    let start = Instant::now();
    let problem = loop {
        let response = client
            .get(format!("{}/ready", run.api))
            .send()
            .await
            .expect("GET /ready");
        if response.status() == 503 {
            break response.text().await.expect("a problem");
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "/ready still answers {} with the connector deleted",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        problem.contains(&connector) && problem.contains("not registered"),
        "{problem}"
    );
    let metrics = common::metrics_text(&client, &run.api).await;
    assert!(metrics.contains(&running("0")), "{metrics}");
    run.ok(&["connectors", "register"]);
    wait_ready(&client, &run.api, Duration::from_secs(60)).await;

    keel.terminate(Duration::from_secs(60));
    drop(connectors);
    run.clean_up(&stack, &name).await;
}

/// Issue 8's "Kafka command producers are first-class clients", with nothing set about carts:
/// the built-in default checks a command written straight to `orders.commands.v1` against the
/// carts table exactly as the API checks a `POST /orders`. With the old default
/// (`[carts].source = "api"`) every one of these orders was `CONFIRMED`: the saga had only the
/// command's own numbers, which add up.
#[tokio::test(flavor = "multi_thread")]
async fn by_default_commands_on_kafka_are_checked_against_the_carts_table() {
    let stack = Stack::from_env();
    let (name, mut run) = Run::new(&stack).await;
    run.with_cart_cdc();
    assert!(
        !run.env.iter().any(|(k, _)| k.starts_with("KEEL__CARTS__"))
            && std::env::var_os("KEEL__CARTS__SOURCE").is_none()
            && std::env::var_os("KEEL_CONFIG").is_none(),
        "this test runs the built-in cart settings"
    );
    let connectors = run.connectors_guard();
    for (cart, currency, item) in [
        ("cart-agrees", "EUR", "SKU-K:2:1250"),
        ("cart-lines", "EUR", "SKU-K:2:1250"),
        ("cart-currency", "EUR", "SKU-K:1:1250"),
    ] {
        run.ok(&[
            "carts",
            "seed",
            "--cart-id",
            cart,
            "--currency",
            currency,
            "--item",
            item,
        ]);
    }
    run.ok(&["inventory", "seed", "--skus", "SKU-K", "--quantity", "10"]);
    let _psp = run.spawn("psp-mock", &["psp-mock"]);
    let mut keel = run.spawn("keel run", &["run"]);
    let client = reqwest::Client::new();
    wait_ready(&client, &run.api, Duration::from_secs(180)).await;

    let producer = Producer::new(&stack, &name);
    let order = |what: &str| format!("order-{what}-{}", uuid::Uuid::new_v4());
    let (ghost, lines, currency, agrees) = (
        order("ghost"),
        order("lines"),
        order("currency"),
        order("agrees"),
    );
    // Each command is consistent in itself (its total is the sum of its lines).
    producer
        .place(&ghost, "cart-that-never-was", &[("SKU-K", 1, 1_250)], "EUR")
        .await;
    producer
        .place(&lines, "cart-lines", &[("SKU-K", 1, 1_250)], "EUR")
        .await;
    producer
        .place(&currency, "cart-currency", &[("SKU-K", 1, 1_250)], "USD")
        .await;
    producer
        .place(&agrees, "cart-agrees", &[("SKU-K", 2, 1_250)], "EUR")
        .await;

    let mut my = sqlx::MySqlConnection::connect(&run.mysql_url)
        .await
        .expect("mysql");
    // The default wait for a cart ([saga].cart_wait_ms) is 30 s; its deadline 60 s.
    let seen = settled_in_mysql(
        &mut my,
        &[ghost, lines, currency, agrees.clone()],
        Duration::from_secs(120),
    )
    .await;
    let outcome =
        |status: &str, reason: Option<&str>| (status.to_owned(), reason.map(str::to_owned));
    let expected = [
        outcome("CANCELLED", Some("CART_NOT_FOUND")),
        outcome("CANCELLED", Some("CART_MISMATCH")),
        outcome("CANCELLED", Some("CURRENCY_MISMATCH")),
        outcome("CONFIRMED", None),
    ];
    let got: Vec<_> = seen.iter().map(|(_, o)| o.clone()).collect();
    assert_eq!(got, expected, "(order, (status, reason)): {seen:?}");

    // The cart the agreeing order took is ordered now: a second command for it is refused.
    let second = order("second");
    producer
        .place(&second, "cart-agrees", &[("SKU-K", 2, 1_250)], "EUR")
        .await;
    let seen = settled_in_mysql(&mut my, &[second], Duration::from_secs(60)).await;
    assert_eq!(
        seen[0].1,
        outcome("CANCELLED", Some("CART_ALREADY_ORDERED")),
        "{seen:?}"
    );

    keel.terminate(Duration::from_secs(60));
    drop(connectors);
    run.clean_up(&stack, &name).await;
}

/// The default needs Kafka Connect: without it `keel run` (role saga) stops before it starts
/// anything, and its error says how to go on — start Connect, or take the API's cart check.
#[tokio::test(flavor = "multi_thread")]
async fn without_connect_keel_run_says_to_start_it_or_use_the_api_cart_check() {
    let stack = Stack::from_env();
    let (name, mut run) = Run::new(&stack).await;
    run.with_cart_cdc();
    // Nothing listens on a port that was free a moment ago.
    run.env.push((
        "KEEL__CONNECT__URL".to_owned(),
        format!("http://127.0.0.1:{}", free_port()),
    ));
    let started = Instant::now();
    let out = run
        .keel(&["run", "--roles", "saga"])
        .output()
        .expect("keel run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "keel run started without Connect");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "it stopped at once"
    );
    for hint in [
        &format!("{name}-carts-cdc"),
        "Kafka Connect",
        "stack/keel-stack up",
        "[carts].source = \"api\"",
        "KEEL__CARTS__SOURCE=api",
    ] {
        assert!(stderr.contains(hint), "the error names {hint:?}: {stderr}");
    }
    run.clean_up(&stack, &name).await;
}

/// Another system's producer of order commands: Avro values (the registry's codec) on the run's
/// `orders.commands.v1`, keyed by order id, murmur2-partitioned like Keel's own producers.
struct Producer {
    topic: String,
    codec: keel_avro::Codec,
    producer: FutureProducer,
}

impl Producer {
    fn new(stack: &Stack, name: &str) -> Producer {
        Producer {
            topic: format!("{name}.orders.commands.v1"),
            codec: keel_avro::Codec::new(keel_avro::RegistryConfig::with_url(
                stack.registry_url.clone(),
            ))
            .expect("codec"),
            producer: ClientConfig::new()
                .set("bootstrap.servers", &stack.kafka_bootstrap)
                .set("partitioner", "murmur2_random")
                .set("enable.idempotence", "true")
                .create()
                .expect("producer"),
        }
    }

    /// A place-order command for `cart`: `lines` as (SKU, quantity, unit price in minor units),
    /// all in `currency`, and their sum as the total; paid with `tok_visa`.
    async fn place(&self, order_id: &str, cart: &str, lines: &[(&str, i32, i64)], currency: &str) {
        let lines: Vec<OrderLine> = lines
            .iter()
            .map(|&(sku, quantity, price)| OrderLine {
                sku: sku.into(),
                quantity,
                unit_price: Money::new(price, currency),
            })
            .collect();
        let total = lines
            .iter()
            .map(|l| l.unit_price.amount_minor * i64::from(l.quantity))
            .sum();
        let command = OrderCommand {
            command_id: format!("{order_id}/place"),
            order_id: order_id.to_owned(),
            issued_at: now_ms(),
            causation_id: "other-system".into(),
            correlation_id: order_id.to_owned(),
            command: OrderCommandBody::PlaceOrder(PlaceOrder {
                customer_id: "cust-9".into(),
                cart_id: cart.into(),
                lines,
                total: Money::new(total, currency),
                payment_method: "tok_visa".into(),
                shipping_address: None,
            }),
        };
        let payload = self
            .codec
            .encode_to(&self.topic, &command)
            .await
            .expect("encodes");
        self.producer
            .send(
                FutureRecord::to(&self.topic)
                    .key(order_id)
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .expect("sent");
    }
}

/// Polls MariaDB's `orders` until each of `ids` has left `PENDING`: (id, (status, reason)), in
/// the order of `ids`.
async fn settled_in_mysql(
    my: &mut sqlx::MySqlConnection,
    ids: &[String],
    within: Duration,
) -> Vec<(String, (String, Option<String>))> {
    let start = Instant::now();
    loop {
        let mut seen = Vec::new();
        for id in ids {
            let row: Option<(String, Option<String>)> =
                sqlx::query_as("SELECT status, reason FROM orders WHERE order_id = ?")
                    .bind(id)
                    .fetch_optional(&mut *my)
                    .await
                    .expect("reads");
            seen.push((id.clone(), row));
        }
        if seen
            .iter()
            .all(|(_, row)| row.as_ref().is_some_and(|(status, _)| status != "PENDING"))
        {
            return seen
                .into_iter()
                .map(|(id, row)| (id, row.expect("settled")))
                .collect();
        }
        assert!(
            start.elapsed() < within,
            "not every order settled within {within:?}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
