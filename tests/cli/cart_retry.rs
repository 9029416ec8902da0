//! A cancelled checkout gives its cart back, end to end through real servers (`keel psp-mock`
//! and `keel run` against the local stack), with either cart source (`[carts].source = "api"`:
//! the API's claim in MariaDB; `"cdc"`, the default: also the carts processor's claim in its
//! RocksDB store):
//!
//! 1. an order paid with `tok_decline_insufficient_funds` ends `CANCELLED` (`PAYMENT_DECLINED`);
//! 2. the first request again (same key, same body) still gets the first answer, the same order;
//! 3. two new requests for the same cart at once (new keys, `tok_visa`): one gets `202` with a
//!    fresh order id, which is `CONFIRMED`; the other gets `409 cart-already-ordered`;
//! 4. one more new request: `409 cart-already-ordered` — a confirmed order keeps its cart.
//!
//! The run is isolated: its own topic prefix, application id, databases, keyspace and ports.

mod common;

use std::time::Duration;

use common::{Run, place, settled, wait_ready};
use keel_tests::Stack;
use serde_json::{Value, json};
use sqlx::Connection;

const CART: &str = "cart-retry";
const ALREADY_ORDERED: &str = "https://keel.dev/problems/cart-already-ordered";

/// `POST /orders` for [`CART`] with `key` and `token`: (status, body).
async fn post_order(client: &reqwest::Client, api: &str, token: &str, key: &str) -> (u16, Value) {
    let response = client
        .post(format!("{api}/orders"))
        .header("Idempotency-Key", key)
        .json(&json!({
            "cartId": CART,
            "paymentMethod": token,
            "shippingAddress": {
                "name": "Ada Lovelace", "line1": "12 Analytical Row", "city": "Berlin",
                "postalCode": "10115", "country": "DE"
            }
        }))
        .send()
        .await
        .expect("POST /orders");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

async fn a_cancelled_checkout_can_be_retried(source: &str) {
    let stack = Stack::from_env();
    let (name, mut run) = Run::new(&stack).await;
    // The fixture's runs check carts through the API; "cdc" is the built-in default.
    if source == "cdc" {
        run.with_cart_cdc();
        run.env.extend([
            ("KEEL__SAGA__CART_WAIT_MS".to_owned(), "4000".to_owned()),
            ("KEEL__SAGA__CART_TIMEOUT_MS".to_owned(), "20000".to_owned()),
        ]);
    }
    let connectors = (source == "cdc").then(|| run.connectors_guard());
    run.ok(&[
        "carts",
        "seed",
        "--cart-id",
        CART,
        "--item",
        "SKU-RETRY:1:1250",
    ]);
    run.ok(&[
        "inventory",
        "seed",
        "--skus",
        "SKU-RETRY",
        "--quantity",
        "5",
    ]);
    let _psp = run.spawn("psp-mock", &["psp-mock"]);
    let mut keel = run.spawn("keel run", &["run"]);
    let client = reqwest::Client::new();
    wait_ready(&client, &run.api, Duration::from_secs(180)).await;

    // 1. Declined: the order is cancelled.
    let declined = place(
        &client,
        &run.api,
        CART,
        "tok_decline_insufficient_funds",
        "key-declined",
    )
    .await;
    let declined_id = declined["orderId"].as_str().expect("id").to_owned();
    let order = settled(&client, &run.api, &declined_id, Duration::from_secs(120)).await;
    assert_eq!(order["status"], "CANCELLED", "[{source}] {order}");
    assert_eq!(order["reason"], "PAYMENT_DECLINED", "[{source}] {order}");

    // 2. The first request again: the first answer, not a second order.
    let again = place(
        &client,
        &run.api,
        CART,
        "tok_decline_insufficient_funds",
        "key-declined",
    )
    .await;
    assert_eq!(
        again["orderId"], declined["orderId"],
        "[{source}] one key, one order"
    );

    // 3. Two new requests for the released cart at once: one order gets it.
    let (a, b) = tokio::join!(
        post_order(&client, &run.api, "tok_visa", "key-retry-a"),
        post_order(&client, &run.api, "tok_visa", "key-retry-b"),
    );
    let mut answers = [a, b];
    answers.sort_by_key(|(status, _)| *status);
    let [(won, retry), (lost, refused)] = answers;
    assert_eq!((won, lost), (202, 409), "[{source}] {retry} / {refused}");
    assert_eq!(refused["type"], ALREADY_ORDERED, "[{source}] {refused}");
    let retry_id = retry["orderId"].as_str().expect("id").to_owned();
    assert_ne!(retry_id, declined_id, "[{source}] a retry is a new order");
    let order = settled(&client, &run.api, &retry_id, Duration::from_secs(120)).await;
    assert_eq!(order["status"], "CONFIRMED", "[{source}] {order}");

    // 4. The cart is ordered now, for good.
    let (status, third) = post_order(&client, &run.api, "tok_visa", "key-third").await;
    assert_eq!(status, 409, "[{source}] {third}");
    assert_eq!(third["type"], ALREADY_ORDERED, "[{source}] {third}");

    // The database agrees: two orders of the cart, the first cancelled, the second confirmed
    // and holding the claim; the cart is ORDERED.
    let mut my = sqlx::MySqlConnection::connect(&run.mysql_url)
        .await
        .expect("mysql");
    let orders: Vec<(String, String)> =
        sqlx::query_as("SELECT order_id, status FROM orders WHERE cart_id = ? ORDER BY status")
            .bind(CART)
            .fetch_all(&mut my)
            .await
            .expect("reads orders");
    assert_eq!(
        orders,
        vec![
            (declined_id.clone(), "CANCELLED".to_owned()),
            (retry_id.clone(), "CONFIRMED".to_owned())
        ],
        "[{source}]"
    );
    let claim: Option<String> =
        sqlx::query_scalar("SELECT order_id FROM order_cart_claims WHERE cart_id = ?")
            .bind(CART)
            .fetch_optional(&mut my)
            .await
            .expect("reads the claim");
    assert_eq!(claim.as_deref(), Some(retry_id.as_str()), "[{source}]");
    let cart: String = sqlx::query_scalar("SELECT status FROM carts WHERE cart_id = ?")
        .bind(CART)
        .fetch_one(&mut my)
        .await
        .expect("reads the cart");
    assert_eq!(cart, "ORDERED", "[{source}]");

    let status = keel
        .terminate(Duration::from_secs(60))
        .expect("keel run stops on SIGTERM");
    assert!(status.success(), "[{source}] keel run exited with {status}");
    drop(connectors);
    run.clean_up(&stack, &name).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_declined_checkout_gives_its_cart_back_with_carts_from_the_api() {
    a_cancelled_checkout_can_be_retried("api").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_declined_checkout_gives_its_cart_back_with_carts_from_cdc() {
    a_cancelled_checkout_can_be_retried("cdc").await;
}
