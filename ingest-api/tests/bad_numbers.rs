//! Bad input is the client's mistake, whatever its shape: every numeric field of every write
//! route answers the extremes (i64::MIN, i64::MAX, u64::MAX, -0, 1e308, big decimals) with a
//! 4xx `application/problem+json` naming the field (never a panic and a dropped connection,
//! never a 5xx), and a path parameter that is not valid UTF-8 is a 400 naming it.
//!
//! The same for the mistakes of the break report (issue: bad-input pass): a header read once
//! but sent twice, a compressed body, a currency ISO 4217 does not have, a reserved reason in
//! lower case, a path id no resource can have; and a route this process does not serve is a
//! 501 `not-served-here`, not a 503 "retry later".
//!
//! The server ([`serve`]) has an orders database that does not exist, no ledger, a Cassandra
//! session on a keyspace that is never created and commands topics of its own: every case must
//! be refused before any of them is touched (a request that got that far would answer 503 and
//! fail the test), and a refusal that regresses writes to no shared topic or database.

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

/// The API server every test here talks to, with nothing shared to write to: the orders,
/// payments and inventory topics are this env's own fresh topic (`unique`), the orders database
/// does not exist (a request that got to it answers 503 and fails the test), there is no ledger,
/// and the Cassandra keyspace is never created. So a refusal that regresses fails its test and
/// leaves its command on a topic no one else reads, never on the shared default topics.
async fn serve(env: &Env) -> anyhow::Result<Server> {
    let session = sink::connect(std::slice::from_ref(&env.stack.cassandra_node))
        .await
        .context("connecting to Cassandra")?;
    let missing = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(3))
        .connect_lazy(&common::with_database(
            &env.stack.mysql_url,
            &unique("keel_missing"),
        )?)?;
    let deps = Deps {
        pool: missing,
        ledger: None,
        inventory: Some(InventoryDeps {
            session: Arc::new(session),
            keyspace: unique("never_created"),
            min_hold_ttl_ms: 10_000,
            max_hold_ttl_ms: 3_600_000,
        }),
        ready: true,
    };
    let config = keel_ingest_api::ApiConfig {
        orders_topic: env.topic.clone(),
        payments_topic: env.topic.clone(),
        inventory_topic: env.topic.clone(),
        ..env.config()
    };
    env.serve(config, deps).await
}

/// Asserts that nothing reached the env's commands topic: every request was refused (a decode
/// error means something of another kind, an order or payment command, did).
async fn assert_nothing_written(env: &Env) -> anyhow::Result<()> {
    let written = env
        .commands::<keel_avro::records::InventoryCommand>(0, std::time::Duration::from_secs(1))
        .await?;
    assert!(written.is_empty(), "{written:?}");
    Ok(())
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
            assert_nothing_written(&env).await?;
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
            assert_nothing_written(&env).await?;
            Ok(())
        },
    )
    .await
}

/// One request the API must refuse: (what, request, status, problem slug, field).
type Mistake = (
    &'static str,
    reqwest::RequestBuilder,
    u16,
    &'static str,
    &'static str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mistakes_are_4xx_problems_naming_the_field_or_header() -> anyhow::Result<()> {
    with_env(
        Env(Base::new("mistakes", "client_mistakes").await?),
        |env| async move {
            let server = serve(&env).await?;
            let http = &env.http;
            let order = r#"{"cartId":"no-such-cart","paymentMethod":"tok_visa","shippingAddress":
                {"name":"Ada","line1":"1 Main St","city":"Berlin","postalCode":"10115",
                 "country":"DE"}}"#;
            let json = |path: &str, body: &str| {
                http.post(server.url(path))
                    .header("content-type", "application/json")
                    .header("idempotency-key", unique("k"))
                    .body(body.to_owned())
            };
            let intent = |currency: &str| {
                json(
                    "/payments",
                    &format!(
                        r#"{{"orderId":"o-1","amount":{{"amountMinor":100,"currency":"{currency}"}},
                            "paymentMethod":"tok_visa"}}"#
                    ),
                )
            };
            let adjust = |reason: &str| {
                json(
                    "/inventory/adjust",
                    &format!(r#"{{"sku":"MUG-1","delta":-1,"reason":"{reason}"}}"#),
                )
            };
            let long = "x".repeat(65);
            let cases: Vec<Mistake> = vec![
                (
                    "two Idempotency-Keys",
                    http.post(server.url("/orders"))
                        .header("content-type", "application/json")
                        .header("idempotency-key", "a1")
                        .header("idempotency-key", "a2")
                        .body(order),
                    400,
                    "invalid-header",
                    "Idempotency-Key",
                ),
                (
                    "two Content-Types",
                    http.post(server.url("/orders"))
                        .header("content-type", "application/json")
                        .header("content-type", "text/plain")
                        .body(order),
                    400,
                    "invalid-header",
                    "Content-Type",
                ),
                (
                    "a gzip Content-Encoding on a plain body",
                    json("/orders", order).header("content-encoding", "gzip"),
                    415,
                    "unsupported-media-type",
                    "Content-Encoding",
                ),
                (
                    "a gzip Content-Encoding on a PSP callback",
                    http.post(server.url("/psp/callbacks"))
                        .header("content-type", "application/json")
                        .header("content-encoding", "gzip")
                        .body("{}"),
                    415,
                    "unsupported-media-type",
                    "Content-Encoding",
                ),
                (
                    "currency ZZZ",
                    intent("ZZZ"),
                    422,
                    "invalid-field",
                    "amount.currency",
                ),
                (
                    "currency XXX",
                    intent("XXX"),
                    422,
                    "invalid-field",
                    "amount.currency",
                ),
                (
                    "currency XTS",
                    intent("XTS"),
                    422,
                    "invalid-field",
                    "amount.currency",
                ),
                (
                    "reason oversold",
                    adjust("oversold"),
                    422,
                    "invalid-field",
                    "reason",
                ),
                (
                    "reason Sold …",
                    adjust("Sold order o-1"),
                    422,
                    "invalid-field",
                    "reason",
                ),
                (
                    "GET /inventory/%00",
                    http.get(server.url("/inventory/%00")),
                    400,
                    "invalid-path-parameter",
                    "sku",
                ),
                (
                    "GET /inventory/a%20b",
                    http.get(server.url("/inventory/a%20b")),
                    400,
                    "invalid-path-parameter",
                    "sku",
                ),
                (
                    "GET /inventory/<65 characters>",
                    http.get(server.url(&format!("/inventory/{long}"))),
                    400,
                    "invalid-path-parameter",
                    "sku",
                ),
                (
                    "GET /orders/%00",
                    http.get(server.url("/orders/%00")),
                    400,
                    "invalid-path-parameter",
                    "id",
                ),
                (
                    "GET /orders/<65 characters>",
                    http.get(server.url(&format!("/orders/{long}"))),
                    400,
                    "invalid-path-parameter",
                    "id",
                ),
                (
                    "GET /payments/<65 characters>",
                    http.get(server.url(&format!("/payments/{long}"))),
                    400,
                    "invalid-path-parameter",
                    "id",
                ),
            ];
            let mut wrong = Vec::new();
            for (what, request, status, slug, field) in cases {
                let answer = send(request).await?;
                let ok = answer.status.as_u16() == status
                    && answer.content_type() == "application/problem+json"
                    && answer.slug() == slug
                    && answer.body["field"] == field;
                if !ok {
                    wrong.push(format!(
                        "{what}: {} {} {}",
                        answer.status,
                        answer.content_type(),
                        answer.text
                    ));
                } else if status == 415 && answer.header("accept-encoding") != Some("identity") {
                    wrong.push(format!("{what}: no Accept-Encoding: identity"));
                }
            }
            assert!(
                wrong.is_empty(),
                "not the 4xx naming the field or header:\n{}",
                wrong.join("\n")
            );
            // Nothing refused reached Kafka.
            assert_nothing_written(&env).await?;
            Ok(())
        },
    )
    .await
}

/// A route whose role or store this process lacks says so with a 501 `not-served-here` (no
/// Retry-After: asking again here never helps), not a 503 "retry later"; and a valid intent
/// with an active currency gets that far.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_this_process_does_not_serve_is_501_saying_who_does() -> anyhow::Result<()> {
    with_env(
        Env(Base::new("notserved", "not_served").await?),
        |env| async move {
            let server = serve(&env).await?;
            let intent = r#"{"orderId":"o-1","amount":{"amountMinor":100,"currency":"JPY"},
                "paymentMethod":"tok_visa"}"#;
            for (what, request, names) in [
                (
                    "GET /finance/reconciliation without the reconciliation role",
                    env.http.get(server.url("/finance/reconciliation")),
                    "reconciliation role",
                ),
                (
                    "GET /payments/{id} without a ledger",
                    env.http.get(server.url("/payments/pay-1")),
                    "payment ledger",
                ),
                (
                    "POST /payments (JPY) without a ledger",
                    env.http
                        .post(server.url("/payments"))
                        .header("content-type", "application/json")
                        .header("idempotency-key", unique("k"))
                        .body(intent),
                    "payment ledger",
                ),
            ] {
                let answer = send(request).await?;
                assert_eq!(
                    (answer.status.as_u16(), answer.slug(), answer.content_type()),
                    (501, "not-served-here", "application/problem+json"),
                    "{what}: {}",
                    answer.text
                );
                assert!(answer.header("retry-after").is_none(), "{what}");
                assert!(
                    answer.body["detail"]
                        .as_str()
                        .is_some_and(|d| d.contains(names)),
                    "{what}: {}",
                    answer.text
                );
            }
            Ok(())
        },
    )
    .await
}
