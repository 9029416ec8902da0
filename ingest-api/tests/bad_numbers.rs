//! Bad input is the client's mistake, whatever its shape: every numeric field of every write
//! route answers the extremes (i64::MIN, i64::MAX, u64::MAX, -0, 1e308, big decimals) with a
//! 4xx `application/problem+json` naming the field (never a panic and a dropped connection,
//! never a 5xx), and a path parameter that is not valid UTF-8 is a 400 naming it.
//!
//! The server has no orders database, no ledger and a Cassandra session on a keyspace that is
//! never created: every case must be refused before any of them is touched (a request that got
//! that far would answer 503 and fail the test).

mod common;

use std::sync::Arc;

use anyhow::Context;
use common::{Base, Deps, Server, TestEnv, send, with_env};
use keel_ingest_api::InventoryDeps;
use keel_processors::inventory::sink;
use keel_tests::unique;
use reqwest::Method;

struct Env(Base);

impl std::ops::Deref for Env {
    type Target = Base;
    fn deref(&self) -> &Base {
        &self.0
    }
}

impl TestEnv for Env {
    async fn finish(self) {}
}

async fn serve(env: &Env) -> anyhow::Result<Server> {
    let session = sink::connect(std::slice::from_ref(&env.stack.cassandra_node))
        .await
        .context("connecting to Cassandra")?;
    let deps = Deps {
        pool: env.unused_orders_pool()?,
        ledger: None,
        inventory: Some(InventoryDeps {
            session: Arc::new(session),
            keyspace: unique("never_created"),
            min_hold_ttl_ms: 10_000,
            max_hold_ttl_ms: 3_600_000,
        }),
        ready: true,
    };
    env.serve(env.config(), deps).await
}

/// JSON numbers as the client writes them (raw text: `-0`, `1e308` and 30-digit integers are
/// not what serde_json would write).
const EXTREMES: &[&str] = &[
    "-9223372036854775808",
    "9223372036854775807",
    "18446744073709551615",
    "-18446744073709551616",
    "-0",
    "0",
    "1e308",
    "-1e308",
    "123456789012345678901234567890",
    "99999999999999999999.99",
    "0.5",
];

/// (path, body with `N` where the number goes, the field the problem must name).
const FIELDS: &[(&str, &str, &str)] = &[
    (
        "/inventory/adjust",
        r#"{"sku":"MUG-1","delta":N,"reason":"RESTOCK"}"#,
        "delta",
    ),
    (
        "/inventory/reserve",
        r#"{"orderId":"o-1","lines":[{"sku":"MUG-1","quantity":N}]}"#,
        "lines[0].quantity",
    ),
    (
        "/inventory/reserve",
        r#"{"orderId":"o-1","lines":[{"sku":"MUG-1","quantity":1}],"holdTtlMs":N}"#,
        "holdTtlMs",
    ),
    (
        "/payments",
        r#"{"orderId":"o-1","amount":{"amountMinor":N,"currency":"EUR"},"paymentMethod":"tok_visa"}"#,
        "amount.amountMinor",
    ),
    (
        "/payments/pay-o-1/refund",
        r#"{"amountMinor":N,"reason":"CUSTOMER_REQUEST"}"#,
        "amountMinor",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_numbers_in_every_numeric_field_are_4xx_naming_the_field() -> anyhow::Result<()> {
    with_env(
        Env(Base::new("badnum", "bad_numbers").await?),
        |env| async move {
            let server = serve(&env).await?;
            let mut wrong = Vec::new();
            for (path, template, field) in FIELDS {
                for number in EXTREMES {
                    let body = template.replace('N', number);
                    let answer = send(
                        env.http
                            .post(server.url(path))
                            .header("content-type", "application/json")
                            .header("idempotency-key", unique("k"))
                            .body(body.clone()),
                    )
                    .await;
                    let answer = match answer {
                        Ok(answer) => answer,
                        Err(e) => {
                            wrong.push(format!("POST {path} {body}: no answer: {e:#}"));
                            continue;
                        }
                    };
                    let ok = answer.status.is_client_error()
                        && answer.content_type() == "application/problem+json"
                        && answer.body["field"] == *field;
                    if !ok {
                        wrong.push(format!(
                            "POST {path} {body}: {} {} {}",
                            answer.status,
                            answer.content_type(),
                            answer.text
                        ));
                    }
                }
            }
            assert!(
                wrong.is_empty(),
                "not a 4xx naming the field:\n{}",
                wrong.join("\n")
            );
            Ok(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_parameter_that_is_not_utf8_is_400_naming_it() -> anyhow::Result<()> {
    with_env(
        Env(Base::new("badpath", "bad_paths").await?),
        |env| async move {
            let server = serve(&env).await?;
            let cases = [
                (Method::GET, "/orders/%00%ff", "id", "order id", None),
                (Method::POST, "/orders/%ff/cancel", "id", "order id", None),
                (Method::GET, "/orders/%ff/payment", "id", "order id", None),
                (Method::GET, "/payments/%C3%28", "id", "payment id", None),
                (
                    Method::POST,
                    "/payments/%ff/confirm",
                    "id",
                    "payment id",
                    None,
                ),
                (
                    Method::POST,
                    "/payments/%ff/refund",
                    "id",
                    "payment id",
                    Some(r#"{"amountMinor":1,"reason":"CUSTOMER_REQUEST"}"#),
                ),
                (Method::GET, "/inventory/%ff", "sku", "sku", None),
            ];
            let mut wrong = Vec::new();
            for (method, path, field, what, body) in cases {
                let mut request = env
                    .http
                    .request(method.clone(), server.url(path))
                    .header("idempotency-key", unique("k"));
                if let Some(body) = body {
                    request = request
                        .header("content-type", "application/json")
                        .body(body);
                }
                let answer = send(request).await?;
                let ok = answer.status == 400
                    && answer.content_type() == "application/problem+json"
                    && answer.slug() == "invalid-path-parameter"
                    && answer.body["field"] == field
                    && answer.body["detail"] == format!("the {what} is not valid UTF-8");
                if !ok {
                    wrong.push(format!(
                        "{method} {path}: {} {} {}",
                        answer.status,
                        answer.content_type(),
                        answer.text
                    ));
                }
            }
            assert!(
                wrong.is_empty(),
                "not a 400 naming the parameter:\n{}",
                wrong.join("\n")
            );
            Ok(())
        },
    )
    .await
}
