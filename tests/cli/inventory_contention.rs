//! 200 concurrent single-unit orders for one SKU with 50 in stock, through the real API and
//! processors: exactly 50 orders are confirmed and 150 cancelled for a shortage, stock never goes
//! below zero, and Cassandra's mirror agrees (0 on hand, no hold left).

mod common;

use std::time::{Duration, Instant};

use common::{Run, place, wait_ready};
use keel_tests::Stack;
use sqlx::Connection;

const ORDERS: usize = 200;
const STOCK: i32 = 50;

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_orders_for_fifty_units_confirm_exactly_fifty() {
    let stack = Stack::from_env();
    let (name, run) = Run::new(&stack).await;
    let pool = common::orders_pool(&run).await;
    for i in 0..ORDERS {
        keel_processors::orders::seed_cart(
            &pool,
            &format!("cart-{i}"),
            &format!("customer-{i}"),
            "EUR",
            &[("SKU-HOT", 1, 2_500)],
        )
        .await
        .expect("cart");
    }
    run.ok(&[
        "inventory",
        "seed",
        "--skus",
        "SKU-HOT",
        "--quantity",
        &STOCK.to_string(),
    ]);
    let _psp = run.spawn("psp-mock", &["psp-mock"]);
    let mut keel = run.spawn("keel run", &["run"]);
    let client = reqwest::Client::new();
    wait_ready(&client, &run.api, Duration::from_secs(120)).await;

    let posts = (0..ORDERS).map(|i| {
        let (client, api) = (client.clone(), run.api.clone());
        async move {
            place(
                &client,
                &api,
                &format!("cart-{i}"),
                "tok_visa",
                &format!("hot-{i}"),
            )
            .await;
        }
    });
    futures::future::join_all(posts).await;

    let mut my = sqlx::MySqlConnection::connect(&run.mysql_url)
        .await
        .expect("mysql");
    let start = Instant::now();
    let (confirmed, short) = loop {
        let counts: Vec<(String, Option<String>, i64)> =
            sqlx::query_as("SELECT status, reason, COUNT(*) FROM orders GROUP BY status, reason")
                .fetch_all(&mut my)
                .await
                .expect("counts");
        let count = |status: &str| -> i64 {
            counts
                .iter()
                .filter(|(s, _, _)| s == status)
                .map(|(_, _, n)| n)
                .sum()
        };
        if count("CONFIRMED") + count("CANCELLED") == ORDERS as i64 {
            let short: i64 = counts
                .iter()
                .filter(|(s, r, _)| s == "CANCELLED" && r.as_deref() == Some("INSUFFICIENT_STOCK"))
                .map(|(_, _, n)| n)
                .sum();
            break (count("CONFIRMED"), short);
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "not settled: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(confirmed, i64::from(STOCK), "exactly the stock is sold");
    assert_eq!(
        short,
        ORDERS as i64 - i64::from(STOCK),
        "every other order is short"
    );

    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_node(&stack.cassandra_node)
        .build()
        .await
        .expect("cassandra");
    let start = Instant::now();
    loop {
        let on_hand = session
            .query_unpaged(
                format!(
                    "SELECT on_hand FROM {}.stock_level WHERE sku = 'SKU-HOT'",
                    run.keyspace
                ),
                &[],
            )
            .await
            .expect("stock_level")
            .into_rows_result()
            .expect("rows")
            .maybe_first_row::<(i32,)>()
            .expect("typed");
        let holds = session
            .query_unpaged(
                format!(
                    "SELECT order_id FROM {}.reservation WHERE sku = 'SKU-HOT'",
                    run.keyspace
                ),
                &[],
            )
            .await
            .expect("reservation")
            .into_rows_result()
            .expect("rows")
            .rows_num();
        if let Some((n,)) = on_hand {
            assert!(n >= 0, "stock below zero: {n}");
            if n == 0 && holds == 0 {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "Cassandra: on hand {on_hand:?}, {holds} holds"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let status = keel
        .terminate(Duration::from_secs(60))
        .expect("stops on SIGTERM");
    assert!(status.success(), "keel run exited with {status}");
    run.clean_up(&stack, &name).await;
}
