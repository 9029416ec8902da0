//! `api_idempotency`'s retention against the real MariaDB (a fresh `keel_test_<random>`
//! database per test, dropped at the end): expired rows are purged in batches, fresh,
//! in-progress and not-yet-written orders' rows stay, and the API's background purge runs
//! while a replay within the window still answers as before.

mod common;

use std::collections::BTreeSet;
use std::ops::Deref;
use std::time::Duration;

use anyhow::Context;
use common::{Base, Deps, OrdersDb, Server, TestEnv, send, with_env};
use keel_ingest_api::ApiConfig;
use keel_ingest_api::idempotency::retention::{Retention, purge_once};
use keel_ingest_api::idempotency::{AUTO_SCOPE, received_at};
use keel_processors::orders;
use keel_tests::unique;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// One migrated database and a commands topic.
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

impl Env {
    async fn new() -> anyhow::Result<Self> {
        let base = Base::new("idem", "orders_commands").await?;
        let db = OrdersDb::create(&base.stack.mysql_url, 5).await?;
        Ok(Self { base, db })
    }

    async fn serve(&self, config: ApiConfig) -> anyhow::Result<Server> {
        let deps = Deps {
            pool: self.db.pool.clone(),
            ledger: None,
            inventory: None,
            ready: true,
        };
        self.base.serve(config, deps).await
    }

    /// An `api_idempotency` row of scope `scope`, claimed `age_minutes` ago, with
    /// `response_status` `status` (`None`: in progress), for order `order-<key>`.
    async fn key_row(
        &self,
        scope: &str,
        key: &str,
        status: Option<i32>,
        age_minutes: i64,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO api_idempotency (scope, idem_key, request_hash, order_id, command_id, \
             response_status, response_body, created_at) VALUES (?, ?, REPEAT('0', 64), ?, \
             UUID(), ?, ?, UTC_TIMESTAMP(3) - INTERVAL ? MINUTE)",
        )
        .bind(scope)
        .bind(key)
        .bind(format!("order-{key}"))
        .bind(status)
        .bind(status.map(|_| "{}"))
        .bind(age_minutes)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// The `orders` row the order sink writes for `order_id`.
    async fn order_row(&self, order_id: &str) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO orders (order_id, customer_id, cart_id, status, total_minor, currency, \
             payment_method, last_sequence, created_at, updated_at) VALUES (?, 'cust-1', \
             'cart-1', 'CONFIRMED', 1000, 'EUR', 'pm_card_visa', 3, UTC_TIMESTAMP(3), \
             UTC_TIMESTAMP(3))",
        )
        .bind(order_id)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    async fn keys(&self) -> anyhow::Result<BTreeSet<String>> {
        let keys: Vec<String> = sqlx::query_scalar("SELECT idem_key FROM api_idempotency")
            .fetch_all(&self.db.pool)
            .await?;
        Ok(keys.into_iter().collect())
    }
}

const HOUR: i64 = 60;

/// The default window (24 h; in-progress rows 48 h), in batches of `batch_size`.
fn retention(batch_size: u32) -> Retention {
    Retention {
        batch_size,
        ..Retention::from_config(&ApiConfig::default())
    }
}

fn set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_older_than_the_retention_go_and_fresh_in_progress_and_unwritten_orders_stay()
-> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        // Answered (202) and written by the order sink, 25 h ago: expired.
        env.key_row("bearer:x", "old-answered", Some(202), 25 * HOUR)
            .await?;
        env.order_row("order-old-answered").await?;
        env.key_row(AUTO_SCOPE, "old-auto", Some(202), 25 * HOUR)
            .await?;
        env.order_row("order-old-auto").await?;
        // Failed (503) 25 h ago: expired.
        env.key_row("bearer:x", "old-failed", Some(503), 25 * HOUR)
            .await?;
        // In progress since 49 h: far past any request, and past twice the window.
        env.key_row("bearer:x", "ancient-in-progress", None, 49 * HOUR)
            .await?;
        // Kept: inside the window; in progress for less than twice the window; an accepted
        // order the order sink never wrote (GET /orders/{id} answers RECEIVED from this row).
        env.key_row("bearer:x", "fresh-answered", Some(202), 23 * HOUR)
            .await?;
        env.order_row("order-fresh-answered").await?;
        env.key_row("bearer:x", "fresh-failed", Some(503), 23 * HOUR)
            .await?;
        env.key_row("bearer:x", "old-in-progress", None, 25 * HOUR)
            .await?;
        env.key_row(AUTO_SCOPE, "old-unwritten", Some(202), 25 * HOUR)
            .await?;
        let before = received_at(&env.db.pool, "order-old-unwritten").await?;
        assert!(before.is_some(), "the row answers RECEIVED");

        let purged = purge_once(&env.db.pool, &retention(1_000)).await?;

        assert_eq!(purged, 4);
        assert_eq!(
            env.keys().await?,
            set(&[
                "fresh-answered",
                "fresh-failed",
                "old-in-progress",
                "old-unwritten"
            ])
        );
        assert_eq!(
            received_at(&env.db.pool, "order-old-unwritten").await?,
            before,
            "an accepted order the sink has not written still answers RECEIVED, as before"
        );
        let stored = orders::load_order(&env.db.pool, "order-old-answered").await?;
        assert_eq!(
            stored.map(|o| o.status),
            Some("CONFIRMED".to_owned()),
            "the purged order's answer comes from `orders`"
        );
        assert_eq!(
            purge_once(&env.db.pool, &retention(1_000)).await?,
            0,
            "a second round finds nothing"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_larger_than_one_batch_goes_in_several_batches() -> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        for i in 0..25 {
            env.key_row("bearer:x", &format!("old-{i:02}"), Some(503), 30 * HOUR)
                .await?;
        }
        for i in 0..3 {
            env.key_row("bearer:x", &format!("new-{i}"), Some(503), 1)
                .await?;
        }

        let purged = purge_once(&env.db.pool, &retention(10)).await?;

        assert_eq!(purged, 25, "three batches: 10, 10, 5");
        assert_eq!(env.keys().await?, set(&["new-0", "new-1", "new-2"]));
        Ok(())
    })
    .await
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

/// `keel_api_idempotency_keys_purged_total{table="api_idempotency"}` as `/metrics` shows it.
async fn purged_metric(env: &Env, server: &Server) -> anyhow::Result<Option<u64>> {
    let metrics = send(env.http.get(server.url("/metrics"))).await?;
    Ok(metrics
        .text
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"keel_api_idempotency_keys_purged_total{table="api_idempotency"} "#)
        })
        .and_then(|v| v.trim().parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_purges_expired_keys_in_the_background_and_a_replay_in_the_window_answers_as_before()
-> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        let server = env
            .serve(ApiConfig {
                orders_topic: env.topic.clone(),
                idempotency_purge_interval_s: 1,
                ..env.config()
            })
            .await?;
        let cart = unique("cart");
        orders::seed_cart(&env.db.pool, &cart, "cust-42", "EUR", &[("SKU-A", 1, 500)]).await?;
        let post = || {
            env.http
                .post(server.url("/orders"))
                .header("Idempotency-Key", "within-the-window")
                .json(&order_body(&cart))
        };
        let first = send(post()).await?;
        assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
        let order_id = first.body["orderId"]
            .as_str()
            .context("orderId")?
            .to_owned();
        env.key_row("bearer:x", "expired", Some(503), 25 * HOUR)
            .await?;

        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while env.keys().await?.contains("expired") {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the expired key was not purged within 15 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(env.keys().await?, set(&["within-the-window"]));
        assert_eq!(purged_metric(&env, &server).await?, Some(1));

        let replay = send(post()).await?;
        assert_eq!(replay.status, StatusCode::ACCEPTED, "{}", replay.text);
        assert_eq!(replay.header("idempotent-replayed"), Some("true"));
        assert_eq!(replay.text, first.text, "the first answer, byte for byte");
        let got = send(env.http.get(server.url(&format!("/orders/{order_id}")))).await?;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text);
        assert_eq!(got.body["status"], "RECEIVED");
        Ok(())
    })
    .await
}
