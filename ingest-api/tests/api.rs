//! The ingest API against the real stack: Kafka (a random commands topic per test), the schema
//! registry (a random subject prefix) and MariaDB (a fresh `keel_test_<random>` database per
//! test, dropped at the end).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use common::{
    Answer, Base, Deps, OrdersDb, Server, TOKEN, TestEnv, assert_agree, observe, op, send,
    with_database, with_env,
};
use keel_avro::records::{
    Money, OrderCommand, OrderCommandBody, OrderDecision, OrderDecisionStatus, OrderLine,
};
use keel_ingest_api::{ApiConfig, Endpoint};
use keel_processors::orders;
use keel_tests::unique;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::MySqlPool;
use sqlx::mysql::MySqlPoolOptions;

/// One database, topic and codec for a test; servers are started on it with [`Env::serve`].
struct Env {
    base: Base,
    db: OrdersDb,
}

impl Deref for Env {
    type Target = Base;
    fn deref(&self) -> &Base {
        &self.base
    }
}

impl TestEnv for Env {
    async fn finish(self) {
        self.db.drop_database().await;
    }
}

/// How to start a server.
struct Setup {
    config: ApiConfig,
    bootstrap: String,
    pool: Option<MySqlPool>,
    ready: bool,
}

impl Env {
    async fn new() -> anyhow::Result<Self> {
        let base = Base::new("api", "orders_commands").await?;
        let db = OrdersDb::create(&base.stack.mysql_url, 10).await?;
        Ok(Self { base, db })
    }

    fn setup(&self) -> Setup {
        Setup {
            config: ApiConfig {
                orders_topic: self.topic.clone(),
                ..self.base.config()
            },
            bootstrap: self.stack.kafka_bootstrap.clone(),
            pool: None,
            ready: true,
        }
    }

    async fn serve(&self, setup: Setup) -> anyhow::Result<Server> {
        let deps = Deps {
            pool: setup.pool.unwrap_or_else(|| self.db.pool.clone()),
            ledger: None,
            inventory: None,
            ready: setup.ready,
        };
        self.base
            .serve_with(setup.config, &setup.bootstrap, deps)
            .await
    }

    async fn seed_cart(&self, items: &[(&str, i32, i64)]) -> anyhow::Result<String> {
        let cart = unique("cart");
        orders::seed_cart(&self.db.pool, &cart, "cust-42", "EUR", items).await?;
        Ok(cart)
    }

    /// Every command on the topic, decoded, after `expected` arrived (or 20 s) plus `settle`.
    async fn commands(
        &self,
        expected: usize,
        settle: Duration,
    ) -> anyhow::Result<Vec<(String, OrderCommand)>> {
        self.base.commands(expected, settle).await
    }
}

fn order_body(cart_id: &str) -> Value {
    json!({
        "cartId": cart_id,
        "paymentMethod": "pm_card_visa",
        "shippingAddress": {
            "name": "Ada Lovelace",
            "line1": "Main St 1",
            "city": "Berlin",
            "postalCode": "10115",
            "country": "DE"
        }
    })
}

async fn post_json(
    env: &Env,
    server: &Server,
    path: &str,
    body: &Value,
    key: Option<&str>,
) -> anyhow::Result<Answer> {
    let mut r = env.http.post(server.url(path)).json(body);
    if let Some(k) = key {
        r = r.header("Idempotency-Key", k);
    }
    send(r).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_order_is_on_kafka_with_the_carts_lines_and_readable_at_once()
-> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        let server = env.serve(env.setup()).await?;
        let cart = env
            .seed_cart(&[("SKU-A", 2, 1_250), ("SKU-B", 1, 999)])
            .await?;
        let answer = post_json(&env, &server, "/orders", &order_body(&cart), None).await?;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text);
        let order_id = answer.body["orderId"]
            .as_str()
            .context("orderId")?
            .to_owned();
        assert_eq!(answer.body["status"], "RECEIVED");
        assert_eq!(
            answer.header("location"),
            Some(format!("/orders/{order_id}").as_str())
        );

        // Never a 404 right after a 202.
        let got = send(env.http.get(server.url(&format!("/orders/{order_id}")))).await?;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text);
        assert_eq!(got.body["status"], "RECEIVED");
        assert_eq!(got.body["orderId"], order_id.as_str());

        let commands = env.commands(1, Duration::from_secs(1)).await?;
        assert_eq!(commands.len(), 1, "{commands:?}");
        let (key, command) = &commands[0];
        assert_eq!(key, &order_id);
        assert_eq!(command.order_id, order_id);
        let OrderCommandBody::PlaceOrder(place) = &command.command else {
            bail!("expected PlaceOrder, got {:?}", command.command);
        };
        assert_eq!(place.cart_id, cart);
        assert_eq!(place.customer_id, "cust-42");
        assert_eq!(place.payment_method, "pm_card_visa");
        assert_eq!(
            place.lines,
            vec![
                OrderLine {
                    sku: "SKU-A".into(),
                    quantity: 2,
                    unit_price: Money::new(1_250, "EUR")
                },
                OrderLine {
                    sku: "SKU-B".into(),
                    quantity: 1,
                    unit_price: Money::new(999, "EUR")
                },
            ]
        );
        assert_eq!(place.total, Money::new(3_499, "EUR"));
        let address = place
            .shipping_address
            .as_ref()
            .context("shipping address")?;
        assert_eq!(
            (address.country.as_str(), address.postal_code.as_str()),
            ("DE", "10115")
        );

        // Once the sink wrote it, GET shows the stored order with its timeline coordinates.
        let decision = OrderDecision {
            decision_id: format!("{order_id}/1"),
            order_id: order_id.clone(),
            decided_at: 1_764_000_000_000,
            causation_id: command.command_id.clone(),
            correlation_id: order_id.clone(),
            sequence: 1,
            status: OrderDecisionStatus::Pending,
            from_status: None,
            reason: None,
            detail: None,
            customer_id: place.customer_id.clone(),
            cart_id: place.cart_id.clone(),
            lines: place.lines.clone(),
            total: place.total.clone(),
            shipping_address: place.shipping_address.clone(),
            payment_method: place.payment_method.clone(),
            source_topic: env.topic.clone(),
            source_partition: 2,
            source_offset: 7,
        };
        orders::apply_decision(
            &env.db.pool,
            &env.codec,
            &keel_processors::topics::Topics::default(),
            &decision,
        )
        .await?;
        let got = send(env.http.get(server.url(&format!("/orders/{order_id}")))).await?;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text);
        assert_eq!(got.body["status"], "PENDING");
        assert_eq!(got.body["total"]["amountMinor"], 3_499);
        assert_eq!(got.body["items"].as_array().map(Vec::len), Some(2));
        assert_eq!(got.body["timeline"][0]["topic"], env.topic.as_str());
        assert_eq!(got.body["timeline"][0]["partition"], 2);
        assert_eq!(got.body["timeline"][0]["offset"], 7);
        assert_eq!(got.body["timeline"][0]["status"], "PENDING");

        // The same cart again, now ORDERED by the sink: 409.
        let again = post_json(&env, &server, "/orders", &order_body(&cart), None).await?;
        assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
        assert_eq!(
            again.body["type"],
            "https://keel.dev/problems/cart-already-ordered"
        );

        let metrics = send(env.http.get(server.url("/metrics"))).await?;
        assert!(
            metrics.text.contains("keel_api_orders_accepted_total 1"),
            "{}",
            metrics.text
        );
        assert!(
            metrics.text.contains(
                r#"keel_api_requests_total{method="POST",route="/orders",status="202"} 1"#
            ),
            "{}",
            metrics.text
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_posts_with_one_idempotency_key_place_one_order() -> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        let server = Arc::new(env.serve(env.setup()).await?);
        let cart = env.seed_cart(&[("SKU-A", 1, 500)]).await?;
        let key = unique("key");
        let body = order_body(&cart);
        let answers = futures::future::join_all((0..20).map(|_| {
            let (env, server, body, key) = (
                Arc::clone(&env),
                Arc::clone(&server),
                body.clone(),
                key.clone(),
            );
            async move { post_json(&env, &server, "/orders", &body, Some(&key)).await }
        }))
        .await;
        let mut accepted = BTreeSet::new();
        let mut statuses = BTreeMap::new();
        for answer in answers {
            let answer = answer?;
            *statuses.entry(answer.status.as_u16()).or_insert(0) += 1;
            match answer.status {
                StatusCode::ACCEPTED => {
                    accepted.insert(
                        answer.body["orderId"]
                            .as_str()
                            .context("orderId")?
                            .to_owned(),
                    );
                }
                StatusCode::CONFLICT => {
                    assert_eq!(
                        answer.body["type"],
                        "https://keel.dev/problems/request-in-progress"
                    );
                    assert!(answer.header("retry-after").is_some());
                }
                other => bail!("unexpected {other}: {}", answer.text),
            }
        }
        assert_eq!(
            accepted.len(),
            1,
            "one order id for all 202s: {accepted:?} {statuses:?}"
        );
        let order_id = accepted.into_iter().next().context("an accepted order")?;

        // After the first finished, a retry gets its answer again.
        let replay = post_json(&env, &server, "/orders", &body, Some(&key)).await?;
        assert_eq!(replay.status, StatusCode::ACCEPTED, "{}", replay.text);
        assert_eq!(replay.body["orderId"], order_id.as_str());
        assert_eq!(
            replay.header("location"),
            Some(format!("/orders/{order_id}").as_str())
        );

        // The same key with another body: 422, nothing produced.
        let mut other = body.clone();
        other["paymentMethod"] = json!("pm_other");
        let reused = post_json(&env, &server, "/orders", &other, Some(&key)).await?;
        assert_eq!(
            reused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            reused.text
        );
        assert_eq!(
            reused.body["type"],
            "https://keel.dev/problems/idempotency-key-reused"
        );
        assert_eq!(reused.body["field"], "Idempotency-Key");

        let commands = env.commands(1, Duration::from_secs(3)).await?;
        assert_eq!(commands.len(), 1, "exactly one command: {commands:?}");
        assert_eq!(commands[0].1.order_id, order_id);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_problems_that_name_the_field() -> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        let mut setup = env.setup();
        setup.config.max_body_bytes = 1_024;
        let server = env.serve(setup).await?;
        let cart = env.seed_cart(&[("SKU-A", 1, 500)]).await?;
        let empty_cart = unique("cart");
        orders::seed_cart::<&str>(&env.db.pool, &empty_cart, "cust-1", "EUR", &[]).await?;
        // Break report 13, D3: carts no order could be paid for were accepted (202) and left
        // their order waiting for a payment that never came.
        let free_cart = env.seed_cart(&[("SKU-FREE", 2, 0)]).await?;
        let xxx_cart = unique("cart");
        orders::seed_cart(
            &env.db.pool,
            &xxx_cart,
            "cust-1",
            "XXX",
            &[("SKU-X", 1, 100)],
        )
        .await?;
        let valid = order_body(&cart);
        let without = |field: &str| {
            let mut v = valid.clone();
            v.as_object_mut().map(|o| o.remove(field));
            v
        };
        let with = |pointer: &str, value: Value| {
            let mut v = valid.clone();
            if let Some(slot) = v.pointer_mut(pointer) {
                *slot = value;
            }
            v
        };
        let mut unknown = valid.clone();
        unknown["giftWrap"] = json!(true);
        let mut nested_unknown = valid.clone();
        nested_unknown["shippingAddress"]["zip"] = json!("1");
        // (what, body bytes, content type, status, problem slug, field)
        let raw = |v: &Value| v.to_string().into_bytes();
        type Case<'a> = (&'a str, Vec<u8>, &'a str, u16, &'a str, Option<&'a str>);
        let cases: Vec<Case<'_>> = vec![
            (
                "malformed JSON",
                b"{\"cartId\": ".to_vec(),
                "application/json",
                400,
                "malformed-json",
                None,
            ),
            (
                "missing cartId",
                raw(&without("cartId")),
                "application/json",
                400,
                "missing-field",
                Some("cartId"),
            ),
            (
                "missing nested field",
                raw(&{
                    let mut v = valid.clone();
                    v["shippingAddress"]
                        .as_object_mut()
                        .map(|o| o.remove("city"));
                    v
                }),
                "application/json",
                400,
                "missing-field",
                Some("shippingAddress.city"),
            ),
            (
                "unknown field",
                raw(&unknown),
                "application/json",
                400,
                "unknown-field",
                Some("giftWrap"),
            ),
            (
                "unknown nested field",
                raw(&nested_unknown),
                "application/json",
                400,
                "unknown-field",
                Some("shippingAddress.zip"),
            ),
            (
                "wrong type",
                raw(&with("/cartId", json!(42))),
                "application/json",
                400,
                "wrong-type",
                Some("cartId"),
            ),
            (
                "wrong nested type",
                raw(&with("/shippingAddress", json!("Berlin"))),
                "application/json",
                400,
                "wrong-type",
                Some("shippingAddress"),
            ),
            (
                "not an object",
                b"[1, 2]".to_vec(),
                "application/json",
                400,
                "wrong-type",
                None,
            ),
            (
                "empty body",
                Vec::new(),
                "application/json",
                400,
                "empty-body",
                None,
            ),
            (
                "oversized body",
                raw(&with("/paymentMethod", json!("x".repeat(2_000)))),
                "application/json",
                413,
                "body-too-large",
                None,
            ),
            (
                "text/plain",
                raw(&valid),
                "text/plain",
                415,
                "unsupported-media-type",
                Some("Content-Type"),
            ),
            (
                "unknown cart",
                raw(&with("/cartId", json!("no-such-cart"))),
                "application/json",
                422,
                "unknown-cart",
                Some("cartId"),
            ),
            (
                "empty cart",
                raw(&with("/cartId", json!(empty_cart))),
                "application/json",
                422,
                "empty-cart",
                Some("cartId"),
            ),
            (
                "a cart worth nothing",
                raw(&with("/cartId", json!(free_cart))),
                "application/json",
                422,
                "invalid-field",
                Some("cartId"),
            ),
            (
                "a cart in no currency",
                raw(&with("/cartId", json!(xxx_cart))),
                "application/json",
                422,
                "invalid-field",
                Some("cartId"),
            ),
            (
                "bad country code",
                raw(&with("/shippingAddress/country", json!("XX"))),
                "application/json",
                422,
                "invalid-field",
                Some("shippingAddress.country"),
            ),
            (
                "lower-case country code",
                raw(&with("/shippingAddress/country", json!("de"))),
                "application/json",
                422,
                "invalid-field",
                Some("shippingAddress.country"),
            ),
            (
                "blank payment method",
                raw(&with("/paymentMethod", json!("  "))),
                "application/json",
                422,
                "invalid-field",
                Some("paymentMethod"),
            ),
        ];
        for (what, body, content_type, status, slug, field) in cases {
            let answer = send(
                env.http
                    .post(server.url("/orders"))
                    .header("content-type", content_type)
                    .body(body),
            )
            .await?;
            assert_eq!(answer.status.as_u16(), status, "{what}: {}", answer.text);
            assert_eq!(answer.content_type(), "application/problem+json", "{what}");
            assert_eq!(
                answer.body["type"],
                format!("https://keel.dev/problems/{slug}"),
                "{what}: {}",
                answer.text
            );
            assert_eq!(answer.body["status"], status, "{what}");
            assert!(
                answer.body["title"].as_str().is_some_and(|t| !t.is_empty()),
                "{what}"
            );
            assert!(
                answer.body["detail"]
                    .as_str()
                    .is_some_and(|t| !t.is_empty()),
                "{what}"
            );
            assert_eq!(
                answer.body["field"].as_str(),
                field,
                "{what}: {}",
                answer.text
            );
            if let Some(field) = field
                && !field.contains('-')
            {
                assert!(
                    answer.body["detail"]
                        .as_str()
                        .unwrap_or("")
                        .contains(field.rsplit('.').next().unwrap_or(field)),
                    "{what}: the detail should say which field: {}",
                    answer.text
                );
            }
        }
        // An invalid Idempotency-Key header.
        let answer = send(
            env.http
                .post(server.url("/orders"))
                .header("Idempotency-Key", "")
                .json(&valid),
        )
        .await?;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text);
        assert_eq!(answer.body["field"], "Idempotency-Key");
        // Unknown routes and methods are problems too.
        let answer = send(env.http.get(server.url("/nope"))).await?;
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
        assert_eq!(answer.content_type(), "application/problem+json");
        let answer = send(env.http.delete(server.url("/orders"))).await?;
        assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            answer.body["type"],
            "https://keel.dev/problems/method-not-allowed"
        );
        let answer = send(env.http.get(server.url("/orders/no-such-order"))).await?;
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
        assert_eq!(
            answer.body["type"],
            "https://keel.dev/problems/order-not-found"
        );

        // None of it produced anything.
        let commands = env.commands(0, Duration::from_secs(1)).await?;
        assert!(commands.is_empty(), "{commands:?}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_on_writes_need_a_bearer_token_and_nothing_is_written_without()
-> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        let mut setup = env.setup();
        setup.config.auth_tokens = vec![TOKEN.to_owned()];
        let server = env.serve(setup).await?;
        let cart = env.seed_cart(&[("SKU-A", 1, 500)]).await?;
        let body = order_body(&cart);
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Basic a2VlbDprZWVs"),
            Some(TOKEN),
        ] {
            let mut r = env.http.post(server.url("/orders")).json(&body);
            r = r.header("Idempotency-Key", "k1");
            if let Some(a) = auth {
                r = r.header("Authorization", a);
            }
            let answer = send(r).await?;
            assert_eq!(
                answer.status,
                StatusCode::UNAUTHORIZED,
                "{auth:?}: {}",
                answer.text
            );
            assert_eq!(
                answer.body["type"],
                "https://keel.dev/problems/unauthorized"
            );
            assert!(answer.header("www-authenticate").is_some());
        }
        let cancel = send(env.http.post(server.url("/orders/x/cancel"))).await?;
        assert_eq!(cancel.status, StatusCode::UNAUTHORIZED);
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_idempotency")
            .fetch_one(&env.db.pool)
            .await?;
        assert_eq!(rows, 0, "nothing written");
        let commands = env.commands(0, Duration::from_secs(2)).await?;
        assert!(commands.is_empty(), "nothing produced: {commands:?}");

        // Reads stay open; a good token is accepted.
        let health = send(env.http.get(server.url("/health"))).await?;
        assert_eq!(health.status, StatusCode::OK);
        let answer = send(
            env.http
                .post(server.url("/orders"))
                .bearer_auth(TOKEN)
                .json(&body),
        )
        .await?;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_unreachable_is_503_with_retry_after_and_the_key_can_be_retried() -> anyhow::Result<()>
{
    with_env(Env::new().await?, |env| async move {
        // A port nothing listens on.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut setup = env.setup();
        setup.bootstrap = closed.to_string();
        setup.config.produce_timeout_ms = 1_500;
        let server = env.serve(setup).await?;
        let cart = env.seed_cart(&[("SKU-A", 1, 500)]).await?;
        let started = std::time::Instant::now();
        let answer = post_json(
            &env,
            &server,
            "/orders",
            &order_body(&cart),
            Some("retry-me"),
        )
        .await?;
        assert_eq!(
            answer.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            answer.text
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(answer.header("retry-after"), Some("1"));
        assert_eq!(answer.content_type(), "application/problem+json");
        assert_eq!(
            answer.body["type"],
            "https://keel.dev/problems/dependency-unavailable"
        );
        let (status, order_id): (Option<i32>, String) = sqlx::query_as(
            "SELECT response_status, order_id FROM api_idempotency WHERE idem_key = 'retry-me'",
        )
        .fetch_one(&env.db.pool)
        .await?;
        assert_eq!(status, Some(503), "kept for a retry with the same order id");
        // Not a 404 and not RECEIVED: the order was never accepted.
        let got = send(env.http.get(server.url(&format!("/orders/{order_id}")))).await?;
        assert_eq!(got.status, StatusCode::NOT_FOUND, "{}", got.text);

        // A retry on a healthy server takes the key over and places the same order id.
        let healthy = env.serve(env.setup()).await?;
        let retry = post_json(
            &env,
            &healthy,
            "/orders",
            &order_body(&cart),
            Some("retry-me"),
        )
        .await?;
        assert_eq!(retry.status, StatusCode::ACCEPTED, "{}", retry.text);
        assert_eq!(retry.body["orderId"], order_id.as_str());
        let commands = env.commands(1, Duration::from_secs(1)).await?;
        assert_eq!(commands.len(), 1, "{commands:?}");
        assert_eq!(commands[0].0, order_id);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_is_accepted_until_the_order_is_final() -> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        let server = env.serve(env.setup()).await?;
        let pending = write_order(&env, OrderDecisionStatus::Pending).await?;
        let confirmed = write_order(&env, OrderDecisionStatus::Confirmed).await?;

        let answer = send(
            env.http
                .post(server.url(&format!("/orders/{pending}/cancel")))
                .json(&json!({"reason": "CHANGED_MIND"})),
        )
        .await?;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text);
        assert_eq!(answer.body["status"], "CANCELLATION_REQUESTED");

        let answer = send(
            env.http
                .post(server.url(&format!("/orders/{confirmed}/cancel"))),
        )
        .await?;
        assert_eq!(answer.status, StatusCode::CONFLICT, "{}", answer.text);
        assert_eq!(
            answer.body["type"],
            "https://keel.dev/problems/illegal-transition"
        );
        assert_eq!(answer.body["currentStatus"], "CONFIRMED");

        let answer = send(env.http.post(server.url("/orders/unknown-order/cancel"))).await?;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{}", answer.text);

        let commands = env.commands(1, Duration::from_secs(1)).await?;
        assert_eq!(commands.len(), 1, "{commands:?}");
        assert_eq!(commands[0].0, pending);
        let OrderCommandBody::CancelOrder(cancel) = &commands[0].1.command else {
            bail!("expected CancelOrder, got {:?}", commands[0].1.command);
        };
        assert_eq!(cancel.reason, "CHANGED_MIND");
        Ok(())
    })
    .await
}

/// The saga's PENDING decision for a one-line order (1 × SKU-A at 5.00 EUR) of `cart_id`.
fn pending_decision(order_id: &str, cart_id: &str) -> OrderDecision {
    OrderDecision {
        decision_id: format!("{order_id}/1"),
        order_id: order_id.to_owned(),
        decided_at: 1_764_000_000_000,
        causation_id: "c".into(),
        correlation_id: order_id.to_owned(),
        sequence: 1,
        status: OrderDecisionStatus::Pending,
        from_status: None,
        reason: None,
        detail: None,
        customer_id: "cust".into(),
        cart_id: cart_id.to_owned(),
        lines: vec![OrderLine {
            sku: "SKU-A".into(),
            quantity: 1,
            unit_price: Money::new(500, "EUR"),
        }],
        total: Money::new(500, "EUR"),
        shipping_address: None,
        payment_method: "pm_card_visa".into(),
        source_topic: "orders.commands.v1".into(),
        source_partition: 0,
        source_offset: 0,
    }
}

/// An order the sink wrote, moved to `status` (through PENDING first).
async fn write_order(env: &Env, status: OrderDecisionStatus) -> anyhow::Result<String> {
    let order_id = unique("order");
    let mut decision = pending_decision(&order_id, &unique("cart"));
    orders::apply_decision(
        &env.db.pool,
        &env.codec,
        &keel_processors::topics::Topics::default(),
        &decision,
    )
    .await?;
    if status != OrderDecisionStatus::Pending {
        decision.decision_id = format!("{order_id}/2");
        decision.sequence = 2;
        decision.from_status = Some(OrderDecisionStatus::Pending);
        decision.status = status;
        orders::apply_decision(
            &env.db.pool,
            &env.codec,
            &keel_processors::topics::Topics::default(),
            &decision,
        )
        .await?;
    }
    Ok(order_id)
}

/// The OpenAPI document and the router agree both ways: every route is documented with every
/// status it answers, and every documented path, method and status is really answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_and_the_routes_agree() -> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        let mut setup = env.setup();
        setup.config.auth_tokens = vec![TOKEN.to_owned()];
        setup.config.max_body_bytes = 1_024;
        let a = env.serve(setup).await?;
        // A server whose database does not exist and which is not ready: the 503s.
        let broken_pool = MySqlPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy(&with_database(
                &env.stack.mysql_url,
                &unique("keel_missing"),
            )?)?;
        let mut setup = env.setup();
        setup.pool = Some(broken_pool);
        setup.ready = false;
        let b = env.serve(setup).await?;

        let doc = send(env.http.get(a.url("/openapi.json"))).await?;
        assert_eq!(doc.status, StatusCode::OK);
        assert!(
            doc.body["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.")),
            "{}",
            doc.text
        );
        let mut documented: BTreeMap<(String, String), BTreeSet<u16>> = BTreeMap::new();
        for (path, item) in doc.body["paths"].as_object().context("paths")? {
            for (method, op) in item.as_object().context("path item")? {
                if !["get", "post", "put", "patch", "delete", "head", "options"]
                    .contains(&method.as_str())
                {
                    continue;
                }
                let statuses = op["responses"]
                    .as_object()
                    .context("responses")?
                    .keys()
                    .map(|s| s.parse::<u16>())
                    .collect::<Result<BTreeSet<_>, _>>()?;
                documented.insert((method.to_uppercase(), path.clone()), statuses);
            }
        }
        let routed: BTreeSet<(String, String)> = Endpoint::ALL.into_iter().map(op).collect();
        let in_doc: BTreeSet<(String, String)> = documented.keys().cloned().collect();
        assert_eq!(routed, in_doc, "routes vs documented operations");

        // Drive every route into every answer it can give.
        let cart = env.seed_cart(&[("SKU-A", 1, 500)]).await?;
        let ordered_cart = env.seed_cart(&[("SKU-A", 1, 500)]).await?;
        sqlx::query("UPDATE carts SET status = 'ORDERED' WHERE cart_id = ?")
            .bind(&ordered_cart)
            .execute(&env.db.pool)
            .await?;
        let pending = write_order(&env, OrderDecisionStatus::Pending).await?;
        let confirmed = write_order(&env, OrderDecisionStatus::Confirmed).await?;
        let big = json!({"reason": "x".repeat(2_000)});
        let http = &env.http;
        let post = |server: &Server, path: &str| http.post(server.url(path)).bearer_auth(TOKEN);
        let place = "/orders";
        let cancel_pending = format!("/orders/{pending}/cancel");
        let cancel_confirmed = format!("/orders/{confirmed}/cancel");
        let requests: Vec<(Endpoint, reqwest::RequestBuilder)> = vec![
            (
                Endpoint::PlaceOrder,
                post(&a, place).json(&order_body(&cart)),
            ),
            (
                Endpoint::PlaceOrder,
                post(&a, place)
                    .header("content-type", "application/json")
                    .body("{"),
            ),
            (
                Endpoint::PlaceOrder,
                http.post(a.url(place)).json(&order_body(&cart)),
            ),
            (
                Endpoint::PlaceOrder,
                post(&a, place).json(&order_body(&ordered_cart)),
            ),
            (
                Endpoint::PlaceOrder,
                post(&a, place).json(&json!({"cartId": "x".repeat(2_000)})),
            ),
            (
                Endpoint::PlaceOrder,
                post(&a, place)
                    .header("content-type", "text/plain")
                    .body("hi"),
            ),
            (
                Endpoint::PlaceOrder,
                post(&a, place).json(&order_body("no-such-cart")),
            ),
            (
                Endpoint::PlaceOrder,
                post(&b, place).json(&order_body(&cart)),
            ),
            (
                Endpoint::GetOrder,
                http.get(a.url(&format!("/orders/{pending}"))),
            ),
            (Endpoint::GetOrder, http.get(a.url("/orders/nope"))),
            (Endpoint::GetOrder, http.get(a.url("/orders/%00%ff"))),
            (
                Endpoint::GetOrder,
                http.get(b.url(&format!("/orders/{pending}"))),
            ),
            (Endpoint::CancelOrder, post(&a, &cancel_pending)),
            (
                Endpoint::CancelOrder,
                post(&a, &cancel_pending)
                    .header("content-type", "application/json")
                    .body("{"),
            ),
            (Endpoint::CancelOrder, http.post(a.url(&cancel_pending))),
            (Endpoint::CancelOrder, post(&a, "/orders/nope/cancel")),
            (Endpoint::CancelOrder, post(&a, &cancel_confirmed)),
            (Endpoint::CancelOrder, post(&a, &cancel_pending).json(&big)),
            (
                Endpoint::CancelOrder,
                post(&a, &cancel_pending)
                    .header("content-type", "text/plain")
                    .body("hi"),
            ),
            (
                Endpoint::CancelOrder,
                post(&a, &cancel_pending).json(&json!({"reason": ""})),
            ),
            (Endpoint::CancelOrder, post(&b, &cancel_pending)),
            (Endpoint::Health, http.get(a.url("/health"))),
            (Endpoint::Ready, http.get(a.url("/ready"))),
            (Endpoint::Ready, http.get(b.url("/ready"))),
            (Endpoint::Metrics, http.get(a.url("/metrics"))),
            (Endpoint::OpenApi, http.get(a.url("/openapi.json"))),
        ];
        let observed = observe(requests).await?;
        // The payment routes (they need a ledger) are driven the same way in tests/payments.rs,
        // the inventory routes (they need Cassandra) in tests/inventory.rs, the finance route
        // (it needs the reconciliation view) in tests/finance.rs.
        let payment_ops: BTreeSet<(String, String)> = Endpoint::ALL
            .into_iter()
            .filter(|e| e.is_payments() || e.is_inventory() || e.is_finance())
            .map(op)
            .collect();
        assert_agree(
            documented
                .iter()
                .filter(|(op, _)| !payment_ops.contains(op)),
            &observed,
        );
        Ok(())
    })
    .await
}

/// The process died after Kafka had the command but before the answer was recorded; the order
/// sink has since written the order and marked the cart ordered. A retry with the same key,
/// once the claim is stale, answers 202 with the same order — not 409 "cart already ordered",
/// which would leave the client no way to learn its order id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_crash_returns_the_order_the_first_attempt_placed() -> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        let server = env.serve(env.setup()).await?;
        let cart = env.seed_cart(&[("SKU-A", 1, 500)]).await?;
        let key = unique("key");
        let body = order_body(&cart);
        let first = post_json(&env, &server, "/orders", &body, Some(&key)).await?;
        assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
        let order_id = first.body["orderId"]
            .as_str()
            .context("orderId")?
            .to_owned();
        // What a kill -9 between produce and answer leaves: a claim without an answer, old
        // enough to be taken over.
        sqlx::query(
            "UPDATE api_idempotency SET response_status = NULL, response_body = NULL, \
             created_at = UTC_TIMESTAMP(3) - INTERVAL 1 HOUR WHERE idem_key = ?",
        )
        .bind(&key)
        .execute(&env.db.pool)
        .await?;
        // Meanwhile the saga decided PENDING and the sink wrote it (the cart is now ORDERED).
        let decision = pending_decision(&order_id, &cart);
        orders::apply_decision(
            &env.db.pool,
            &env.codec,
            &keel_processors::topics::Topics::default(),
            &decision,
        )
        .await?;
        let retry = post_json(&env, &server, "/orders", &body, Some(&key)).await?;
        assert_eq!(retry.status, StatusCode::ACCEPTED, "{}", retry.text);
        assert_eq!(
            retry.body["orderId"],
            order_id.as_str(),
            "the same order, not a new one"
        );
        // And a different key for the same cart is still refused: the cart was ordered.
        let other = post_json(&env, &server, "/orders", &body, Some(&unique("key"))).await?;
        assert_eq!(other.status, StatusCode::CONFLICT, "{}", other.text);
        Ok(())
    })
    .await
}

/// One cart, one order: a second POST for the same cart under another key (or none) is a 409
/// even before the order sink has marked the cart ordered, and so are concurrent ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cart_is_ordered_once_whatever_the_keys() -> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        let server = Arc::new(env.serve(env.setup()).await?);
        let cart = env.seed_cart(&[("SKU-A", 1, 500)]).await?;
        let body = order_body(&cart);
        let first = post_json(&env, &server, "/orders", &body, Some(&unique("key"))).await?;
        assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
        let second = post_json(&env, &server, "/orders", &body, Some(&unique("key"))).await?;
        assert_eq!(second.status, StatusCode::CONFLICT, "{}", second.text);
        assert_eq!(
            second.body["type"],
            "https://keel.dev/problems/cart-already-ordered"
        );
        let keyless = post_json(&env, &server, "/orders", &body, None).await?;
        assert_eq!(keyless.status, StatusCode::CONFLICT, "{}", keyless.text);

        let other = env.seed_cart(&[("SKU-A", 1, 500)]).await?;
        let other_body = order_body(&other);
        let answers = futures::future::join_all((0..8).map(|_| {
            let (env, server, body) = (Arc::clone(&env), Arc::clone(&server), other_body.clone());
            async move { post_json(&env, &server, "/orders", &body, None).await }
        }))
        .await;
        let accepted = answers
            .into_iter()
            .filter(|a| a.as_ref().is_ok_and(|a| a.status == StatusCode::ACCEPTED))
            .count();
        assert_eq!(
            accepted, 1,
            "eight concurrent orders of one cart: one accepted"
        );
        Ok(())
    })
    .await
}

/// A cancelled order gives its cart back (the order sink deletes its claim and reopens the cart
/// in the decision's transaction): a new key then orders the cart under a fresh order id, and
/// the cart is ordered once again after that. A retry of the cancelled order's own key after a
/// crash (its answer never recorded) answers with that order and does not claim the cart again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_order_gives_its_cart_back_to_a_new_key_but_not_to_its_own_retry()
-> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        let server = env.serve(env.setup()).await?;
        let cart = env.seed_cart(&[("SKU-A", 1, 500)]).await?;
        let body = order_body(&cart);
        let key = unique("key");
        let first = post_json(&env, &server, "/orders", &body, Some(&key)).await?;
        assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
        let order_id = first.body["orderId"]
            .as_str()
            .context("orderId")?
            .to_owned();
        let names = keel_processors::topics::Topics::default();
        let pending = pending_decision(&order_id, &cart);
        orders::apply_decision(&env.db.pool, &env.codec, &names, &pending).await?;
        let cancelled = OrderDecision {
            decision_id: format!("{order_id}/2"),
            sequence: 2,
            status: OrderDecisionStatus::Cancelled,
            from_status: Some(OrderDecisionStatus::Pending),
            reason: Some("PAYMENT_DECLINED".into()),
            ..pending.clone()
        };
        orders::apply_decision(&env.db.pool, &env.codec, &names, &cancelled).await?;
        // The same decision again (a replay) writes nothing, so it releases nothing twice.
        let replay = orders::apply_decision(&env.db.pool, &env.codec, &names, &cancelled).await?;
        assert!(
            matches!(replay, orders::Applied::Stale | orders::Applied::Duplicate),
            "{replay:?}"
        );

        // A kill -9 between produce and answer, and the client retries its key.
        sqlx::query(
            "UPDATE api_idempotency SET response_status = NULL, response_body = NULL, \
             created_at = UTC_TIMESTAMP(3) - INTERVAL 1 HOUR WHERE idem_key = ?",
        )
        .bind(&key)
        .execute(&env.db.pool)
        .await?;
        let retry = post_json(&env, &server, "/orders", &body, Some(&key)).await?;
        assert_eq!(retry.status, StatusCode::ACCEPTED, "{}", retry.text);
        assert_eq!(retry.body["orderId"], order_id.as_str(), "the first answer");
        let claims: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM order_cart_claims WHERE cart_id = ?")
                .bind(&cart)
                .fetch_one(&env.db.pool)
                .await?;
        assert_eq!(
            claims, 0,
            "the cancelled order's retry did not claim the cart"
        );
        let status: String = sqlx::query_scalar("SELECT status FROM carts WHERE cart_id = ?")
            .bind(&cart)
            .fetch_one(&env.db.pool)
            .await?;
        assert_eq!(status, "OPEN");

        let again = post_json(&env, &server, "/orders", &body, Some(&unique("key"))).await?;
        assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.text);
        let new_id = again.body["orderId"].as_str().context("orderId")?;
        assert_ne!(new_id, order_id, "a retried checkout is a new order");
        let third = post_json(&env, &server, "/orders", &body, Some(&unique("key"))).await?;
        assert_eq!(third.status, StatusCode::CONFLICT, "{}", third.text);
        assert_eq!(third.slug(), "cart-already-ordered");
        Ok(())
    })
    .await
}
