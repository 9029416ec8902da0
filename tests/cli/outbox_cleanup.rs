//! The outbox clean-up in `[outbox].mode = "debezium"` against the real stack (Kafka Connect's
//! `GET /connectors/{name}/offsets`, Debezium's committed positions): with a retention of one
//! second,
//! - payment outbox rows (PostgreSQL connector) the connector has read past are deleted;
//! - while the order outbox connector is paused, the order outbox rows written meanwhile are
//!   never deleted, however far past the retention;
//! - after it resumes and reads on, they go.

mod common;

use std::time::{Duration, Instant};

use common::{Run, place, settled, wait_ready};
use keel_tests::Stack;
use sqlx::Connection;

async fn order_rows(my: &mut sqlx::MySqlConnection, order_id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM order_outbox WHERE aggregate_id = ?")
        .bind(order_id)
        .fetch_one(&mut *my)
        .await
        .expect("count")
}

/// What the clean-up judges by, for a failure message: the connector's committed offsets and
/// the rows' creation times.
async fn diagnosis(pg: &mut sqlx::PgConnection, connector: &str) -> String {
    let offsets = match reqwest::get(format!(
        "http://127.0.0.1:8083/connectors/{connector}/offsets"
    ))
    .await
    {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => e.to_string(),
    };
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT aggregate_id, (extract(epoch from created_at) * 1000)::bigint::text \
         FROM payment_outbox ORDER BY created_at",
    )
    .fetch_all(&mut *pg)
    .await
    .unwrap_or_default();
    format!("offsets of {connector}: {offsets}; payment_outbox rows (order, created ms): {rows:?}")
}

async fn payment_rows(pg: &mut sqlx::PgConnection, order_id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM payment_outbox WHERE aggregate_id = $1")
        .bind(order_id)
        .fetch_one(&mut *pg)
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread")]
async fn debezium_mode_deletes_only_what_the_connector_committed() {
    let stack = Stack::from_env();
    let (name, mut run) = Run::new(&stack).await;
    run.with_debezium_outbox();
    run.env.extend([
        ("KEEL__OUTBOX__RETENTION_MS".to_owned(), "1000".to_owned()),
        (
            "KEEL__OUTBOX__CLEANUP_INTERVAL_MS".to_owned(),
            "500".to_owned(),
        ),
        (
            "KEEL__OUTBOX__POSITION_MARGIN_MS".to_owned(),
            "0".to_owned(),
        ),
    ]);
    let connectors = run.connectors_guard();
    for cart in ["cart-1", "cart-2", "cart-3"] {
        run.ok(&[
            "carts",
            "seed",
            "--cart-id",
            cart,
            "--item",
            "SKU-CLN:1:900",
        ]);
    }
    run.ok(&["inventory", "seed", "--skus", "SKU-CLN", "--quantity", "5"]);
    let _psp = run.spawn("psp-mock", &["psp-mock"]);
    let mut keel = run.spawn("keel run", &["run"]);
    let client = reqwest::Client::new();
    wait_ready(&client, &run.api, Duration::from_secs(240)).await;
    let mut my = sqlx::MySqlConnection::connect(&run.mysql_url)
        .await
        .expect("mysql");
    let mut pg = sqlx::PgConnection::connect(&run.postgres_url)
        .await
        .expect("postgres");
    let within = Duration::from_secs(90);
    let checkout = |cart: &'static str| {
        let (client, api) = (client.clone(), run.api.clone());
        async move {
            let placed = place(&client, &api, cart, "tok_visa", cart).await;
            let id = placed["orderId"].as_str().expect("id").to_owned();
            let order = settled(&client, &api, &id, Duration::from_secs(90)).await;
            assert_eq!(order["status"], "CONFIRMED", "{order}");
            id
        }
    };

    let first = checkout("cart-1").await;
    // The order outbox connector stops reading: what is written now is not shipped.
    let order_connector = format!("{name}-order-outbox");
    let payment_connector = format!("{name}-payment-outbox");
    run.ok(&["connectors", "pause", &order_connector]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = checkout("cart-2").await;
    let unshipped = order_rows(&mut my, &second).await;
    assert!(
        unshipped >= 2,
        "order.created and order.status.changed rows"
    );

    // The payment outbox connector read past the first order's rows (the second order's
    // payment): they go. (A row at the committed position itself stays until the connector
    // reads on: the position's time is a commit time, the row's an insert time.)
    let start = Instant::now();
    while payment_rows(&mut pg, &first).await > 0 {
        if start.elapsed() > within {
            panic!(
                "shipped payment outbox rows were not cleaned up: {}",
                diagnosis(&mut pg, &payment_connector).await
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Many clean-up rounds, far past the retention: nothing unshipped goes.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        order_rows(&mut my, &second).await,
        unshipped,
        "an unshipped row was deleted"
    );

    // Resumed, and reading on past them (a later checkout): now they go.
    run.ok(&["connectors", "resume", &order_connector]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _third = checkout("cart-3").await;
    let start = Instant::now();
    while order_rows(&mut my, &second).await > 0 {
        assert!(
            start.elapsed() < within,
            "shipped order outbox rows were not cleaned up after the resume"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    keel.terminate(Duration::from_secs(30));
    drop(my);
    drop(pg);
    drop(connectors);
    run.clean_up(&stack, &name).await;
}
