//! The inventory routes against the real stack: a fresh Cassandra keyspace per test
//! (`inv_<random>`, migrated with `keel_processors::inventory::sink::migrate`, dropped at the
//! end) whose `stock_level` and `reservation` rows the tests write directly, a random inventory
//! commands topic and random registry subjects.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::{
    Answer, Base, Deps, OrdersDb, Server, TOKEN, TestEnv, assert_agree, documented, observe, send,
    with_env,
};
use keel_avro::records::{InventoryCommand, InventoryCommandBody, ReleaseReason};
use keel_ingest_api::{ApiConfig, Endpoint, InventoryDeps};
use keel_processors::inventory::sink::{self, CassandraSinkConfig};
use keel_tests::unique;
use reqwest::StatusCode;
use scylla::client::session::Session;
use scylla::value::CqlTimestamp;
use serde_json::{Value, json};

/// One keyspace, commands topic and codec for a test.
struct Env {
    base: Base,
    keyspace: String,
    session: Arc<Session>,
    /// The routes refuse a checkout's order id, which they look up here.
    orders: OrdersDb,
}

impl Deref for Env {
    type Target = Base;
    fn deref(&self) -> &Base {
        &self.base
    }
}

impl TestEnv for Env {
    async fn finish(self) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let drop = format!("DROP KEYSPACE IF EXISTS {}", self.keyspace);
        if let Err(e) = self.session.query_unpaged(drop, &[]).await {
            eprintln!("dropping keyspace {}: {e}", self.keyspace);
        }
        self.orders.drop_database().await;
    }
}

impl Env {
    async fn new() -> anyhow::Result<Self> {
        let base = Base::new("invapi", "inventory_commands").await?;
        let keyspace = unique("inv");
        let session = sink::connect(std::slice::from_ref(&base.stack.cassandra_node))
            .await
            .context("connecting to Cassandra")?;
        sink::migrate(
            &session,
            &CassandraSinkConfig {
                keyspace: keyspace.clone(),
                ..CassandraSinkConfig::default()
            },
        )
        .await?;
        let orders = OrdersDb::create(&base.stack.mysql_url, 4).await?;
        Ok(Self {
            base,
            keyspace,
            session: Arc::new(session),
            orders,
        })
    }

    fn config(&self) -> ApiConfig {
        ApiConfig {
            inventory_topic: self.topic.clone(),
            ..self.base.config()
        }
    }

    fn deps(&self) -> InventoryDeps {
        InventoryDeps {
            session: Arc::clone(&self.session),
            keyspace: self.keyspace.clone(),
            min_hold_ttl_ms: 10_000,
            max_hold_ttl_ms: 3_600_000,
        }
    }

    /// An API on this env's topic with `inventory` (`None`: the inventory routes answer 501).
    async fn serve(
        &self,
        config: ApiConfig,
        inventory: Option<InventoryDeps>,
    ) -> anyhow::Result<Server> {
        let deps = Deps {
            pool: self.orders.pool.clone(),
            ledger: None,
            inventory,
            ready: true,
        };
        self.base.serve(config, deps).await
    }

    /// A `stock_level` row as the sink writes it.
    async fn stock(&self, sku: &str, on_hand: i32) -> anyhow::Result<()> {
        let now = CqlTimestamp(chrono::Utc::now().timestamp_millis());
        self.session
            .query_unpaged(
                format!(
                    "INSERT INTO {}.stock_level (sku, on_hand, updated_at) VALUES (?, ?, ?)",
                    self.keyspace
                ),
                (sku, on_hand, now),
            )
            .await?;
        Ok(())
    }

    /// A `reservation` row written `USING TTL ttl_s`, as the sink writes a hold.
    async fn hold(
        &self,
        sku: &str,
        order_id: &str,
        quantity: i32,
        ttl_s: i32,
    ) -> anyhow::Result<()> {
        let expires = chrono::Utc::now().timestamp_millis() + i64::from(ttl_s) * 1_000;
        self.session
            .query_unpaged(
                format!(
                    "INSERT INTO {}.reservation (sku, order_id, quantity, expires_at) \
                     VALUES (?, ?, ?, ?) USING TTL ?",
                    self.keyspace
                ),
                (sku, order_id, quantity, CqlTimestamp(expires), ttl_s),
            )
            .await?;
        Ok(())
    }

    /// A `stock_by_warehouse` row as the sink writes it.
    async fn warehouse_stock(
        &self,
        sku: &str,
        warehouse: &str,
        on_hand: i32,
    ) -> anyhow::Result<()> {
        let now = CqlTimestamp(chrono::Utc::now().timestamp_millis());
        self.session
            .query_unpaged(
                format!(
                    "INSERT INTO {}.stock_by_warehouse (sku, warehouse, on_hand, updated_at) \
                     VALUES (?, ?, ?, ?)",
                    self.keyspace
                ),
                (sku, warehouse, on_hand, now),
            )
            .await?;
        Ok(())
    }

    /// A `reservation` row in `warehouse` (`None`: no warehouse, as before warehouses existed).
    async fn hold_in(
        &self,
        sku: &str,
        order_id: &str,
        quantity: i32,
        ttl_s: i32,
        warehouse: Option<&str>,
    ) -> anyhow::Result<()> {
        let expires = chrono::Utc::now().timestamp_millis() + i64::from(ttl_s) * 1_000;
        self.session
            .query_unpaged(
                format!(
                    "INSERT INTO {}.reservation (sku, order_id, quantity, expires_at, warehouse) \
                     VALUES (?, ?, ?, ?, ?) USING TTL ?",
                    self.keyspace
                ),
                (
                    sku,
                    order_id,
                    quantity,
                    CqlTimestamp(expires),
                    warehouse,
                    ttl_s,
                ),
            )
            .await?;
        Ok(())
    }

    /// Every command on the topic, decoded with its key, after `expected` arrived (or 20 s)
    /// plus `settle`.
    async fn commands(
        &self,
        expected: usize,
        settle: Duration,
    ) -> anyhow::Result<Vec<(String, InventoryCommand)>> {
        self.base.commands(expected, settle).await
    }
}

async fn level(env: &Env, server: &Server, sku: &str) -> anyhow::Result<Answer> {
    send(env.http.get(server.url(&format!("/inventory/{sku}")))).await
}

fn post(env: &Env, server: &Server, path: &str, body: &Value) -> reqwest::RequestBuilder {
    env.http.post(server.url(path)).json(body)
}

/// On hand comes from `stock_level`, held is the sum of the SKU's live `reservation` rows
/// (another SKU's holds do not count), and a hold written with a 1 s TTL stops counting once
/// Cassandra expired it. A SKU never stocked is 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_level_counts_live_holds_and_an_expired_hold_stops_counting() -> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        let server = env.serve(env.config(), Some(env.deps())).await?;
        let (sku, other) = (unique("SKU"), unique("SKU"));
        env.stock(&sku, 10).await?;
        env.stock(&other, 4).await?;
        env.hold(&sku, "order-long", 2, 600).await?;
        env.hold(&other, "order-other", 4, 600).await?;
        let written = Instant::now();
        env.hold(&sku, "order-short", 3, 1).await?;

        let a = level(&env, &server, &sku).await?;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        // Rows without a warehouse (as before warehouses existed) are the default warehouse's.
        assert_eq!(
            a.body,
            json!({"sku": sku, "onHand": 10, "held": 5, "available": 5, "warehouses": [
                {"warehouse": "default", "onHand": 10, "held": 5, "available": 5}]}),
            "{}",
            a.text
        );
        assert_eq!(a.header("content-type"), Some("application/json"));

        // The short hold's TTL runs out: it no longer counts, the long one still does.
        let expired = loop {
            let a = level(&env, &server, &sku).await?;
            assert_eq!(a.status, StatusCode::OK, "{}", a.text);
            if a.body["held"] == 2 {
                break a;
            }
            if written.elapsed() > Duration::from_secs(15) {
                bail!("the 1 s hold still counts after 15 s: {}", a.text);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        // (Cassandra expires by whole seconds: a 1 s TTL ends at the next second boundary,
        // possibly sooner than 1 s after the write; it did count in the first read.)
        assert_eq!(
            expired.body,
            json!({"sku": sku, "onHand": 10, "held": 2, "available": 8, "warehouses": [
                {"warehouse": "default", "onHand": 10, "held": 2, "available": 8}]})
        );
        let o = level(&env, &server, &other).await?;
        assert_eq!(o.body["available"], 0, "{}", o.text);

        // Stocked with no holds; never stocked.
        let fresh = unique("SKU");
        env.stock(&fresh, 7).await?;
        let f = level(&env, &server, &fresh).await?;
        assert_eq!(
            f.body,
            json!({"sku": fresh, "onHand": 7, "held": 0, "available": 7, "warehouses": [
                {"warehouse": "default", "onHand": 7, "held": 0, "available": 7}]})
        );
        let missing = level(&env, &server, &unique("SKU")).await?;
        assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.text);
        assert_eq!(missing.slug(), "sku-not-found");
        assert_eq!(
            missing.header("content-type"),
            Some("application/problem+json")
        );
        Ok(())
    })
    .await
}

/// The level per warehouse: on hand from `stock_by_warehouse`, held from the rows' `warehouse`
/// (a row without one is the default warehouse's), and the part of the total no warehouse row
/// accounts for (stock from before warehouses existed) in the default warehouse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_level_is_given_per_warehouse_too() -> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        let server = env.serve(env.config(), Some(env.deps())).await?;
        let sku = unique("SKU");
        env.stock(&sku, 12).await?;
        env.warehouse_stock(&sku, "WH-NORTH", 5).await?;
        env.warehouse_stock(&sku, "WH-SOUTH", 3).await?;
        env.hold_in(&sku, "order-1", 2, 600, Some("WH-NORTH"))
            .await?;
        env.hold_in(&sku, "order-2", 1, 600, None).await?;
        let a = level(&env, &server, &sku).await?;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert_eq!(
            a.body,
            json!({"sku": sku, "onHand": 12, "held": 3, "available": 9, "warehouses": [
                {"warehouse": "WH-NORTH", "onHand": 5, "held": 2, "available": 3},
                {"warehouse": "WH-SOUTH", "onHand": 3, "held": 0, "available": 3},
                {"warehouse": "default", "onHand": 4, "held": 1, "available": 3}]}),
            "{}",
            a.text
        );
        Ok(())
    })
    .await
}

/// A keyspace created before warehouses existed (no `reservation.warehouse`, no
/// `stock_by_warehouse`) is brought up to date by the sink's migration at start, twice is
/// harmless, and its rows stay readable: the API answers from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyspace_from_before_warehouses_is_migrated_and_its_rows_stay_readable()
-> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        let old = unique("inv");
        let ks = old.as_str();
        for cql in [
            format!(
                "CREATE KEYSPACE {ks} WITH replication = \
                 {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
            ),
            format!(
                "CREATE TABLE {ks}.reservation (sku text, order_id text, quantity int, \
                 expires_at timestamp, PRIMARY KEY ((sku), order_id))"
            ),
            format!(
                "CREATE TABLE {ks}.stock_level (sku text PRIMARY KEY, on_hand int, \
                 updated_at timestamp)"
            ),
            format!(
                "INSERT INTO {ks}.stock_level (sku, on_hand, updated_at) \
                 VALUES ('SKU-OLD', 6, toTimestamp(now()))"
            ),
            format!(
                "INSERT INTO {ks}.reservation (sku, order_id, quantity, expires_at) \
                 VALUES ('SKU-OLD', 'order-old', 2, toTimestamp(now())) USING TTL 600"
            ),
        ] {
            env.session.query_unpaged(cql, &[]).await?;
        }
        let config = CassandraSinkConfig {
            keyspace: old.clone(),
            ..CassandraSinkConfig::default()
        };
        let migrated = async {
            sink::migrate(&env.session, &config).await?;
            sink::migrate(&env.session, &config).await?;
            let server = env
                .serve(
                    env.config(),
                    Some(InventoryDeps {
                        keyspace: old.clone(),
                        ..env.deps()
                    }),
                )
                .await?;
            let a = level(&env, &server, "SKU-OLD").await?;
            assert_eq!(a.status, StatusCode::OK, "{}", a.text);
            assert_eq!(
                a.body,
                json!({"sku": "SKU-OLD", "onHand": 6, "held": 2, "available": 4, "warehouses": [
                    {"warehouse": "default", "onHand": 6, "held": 2, "available": 4}]}),
                "{}",
                a.text
            );
            let rows = env
                .session
                .query_unpaged(
                    format!("SELECT warehouse FROM {ks}.reservation WHERE sku = 'SKU-OLD'"),
                    &[],
                )
                .await?
                .into_rows_result()?;
            let (warehouse,) = rows.single_row::<(Option<String>,)>()?;
            assert_eq!(warehouse, None, "the old row reads with no warehouse");
            anyhow::Ok(())
        }
        .await;
        let _ = env
            .session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), &[])
            .await;
        migrated
    })
    .await
}

/// Migrations that run at once (the API's and the sink's in one `keel run`) on a fresh keyspace
/// leave a `reservation` table with its `warehouse` column: a hold row with a warehouse can be
/// written right after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_of_a_fresh_keyspace_leave_every_column() -> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        for round in 0..5 {
            let ks = unique("inv");
            let config = CassandraSinkConfig {
                keyspace: ks.clone(),
                ..CassandraSinkConfig::default()
            };
            // One session each, as the API and the sink have.
            let node = std::slice::from_ref(&env.stack.cassandra_node);
            let (s1, s2, s3) = (
                sink::connect(node).await?,
                sink::connect(node).await?,
                sink::connect(node).await?,
            );
            let (a, b, c) = tokio::join!(
                sink::migrate(&s1, &config),
                sink::migrate(&s2, &config),
                sink::migrate(&s3, &config),
            );
            let written = async {
                a?;
                b?;
                c?;
                s1.query_unpaged(
                    format!(
                        "INSERT INTO {ks}.reservation (sku, order_id, quantity, warehouse) \
                             VALUES ('S', 'o', 1, 'WH-1') USING TTL 60"
                    ),
                    &[],
                )
                .await?;
                anyhow::Ok(())
            }
            .await;
            let _ = env
                .session
                .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), &[])
                .await;
            written.with_context(|| format!("round {round}"))?;
        }
        Ok(())
    })
    .await
}

/// The sink has no conditional (LWT) writes: a hold is an upsert with a fixed write time, so a
/// write that timed out after it applied and is retried leaves one row, as written; and a
/// release (a later write time) shadows a retry of the hold's insert that lands after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_hold_write_changes_nothing_and_a_release_shadows_a_late_retry()
-> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        let writer = sink::Writer::prepare(&env.session, &env.keyspace).await?;
        let now = chrono::Utc::now().timestamp_millis();
        let sku = unique("SKU");
        let hold = sink::Write::Hold {
            sku: sku.clone(),
            order_id: "order-1".into(),
            quantity: 2,
            expires_at_ms: now + 60_000,
            ttl_s: 60,
            at_us: now * 1_000,
            warehouse: "WH-1".into(),
        };
        writer.apply(&env.session, &hold).await?;
        writer.apply(&env.session, &hold).await?;
        let rows = env
            .session
            .query_unpaged(
                format!(
                    "SELECT order_id, quantity, warehouse, TTL(quantity) FROM {}.reservation \
                     WHERE sku = ?",
                    env.keyspace
                ),
                (&sku,),
            )
            .await?
            .into_rows_result()?;
        let all: Vec<(String, i32, Option<String>, Option<i32>)> = rows
            .rows::<(String, i32, Option<String>, Option<i32>)>()?
            .collect::<Result<_, _>>()?;
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(
            (all[0].0.as_str(), all[0].1, all[0].2.as_deref()),
            ("order-1", 2, Some("WH-1"))
        );
        assert!(all[0].3.is_some_and(|t| t > 0 && t <= 60), "{all:?}");

        writer
            .apply(
                &env.session,
                &sink::Write::DeleteHold {
                    sku: sku.clone(),
                    order_id: "order-1".into(),
                    at_us: (now + 1) * 1_000,
                },
            )
            .await?;
        writer.apply(&env.session, &hold).await?;
        let left = env
            .session
            .query_unpaged(
                format!(
                    "SELECT order_id FROM {}.reservation WHERE sku = ?",
                    env.keyspace
                ),
                (&sku,),
            )
            .await?
            .into_rows_result()?
            .rows_num();
        assert_eq!(
            left, 0,
            "the release stands against a late retry of the insert"
        );
        Ok(())
    })
    .await
}

/// Break report 13, D4: the `Location` of an adjustment was `/inventory/<sku>` unencoded, so a
/// SKU with `?` pointed at another SKU's stock and one with `/` at no route. Followed as a
/// client follows it, it now reads the adjusted SKU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adjustments_location_reads_its_sku_whatever_the_sku_holds() -> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        let server = env.serve(env.config(), Some(env.deps())).await?;
        let tag = unique("S");
        for (i, sku) in [
            format!("{tag}?x-1"),
            format!("{tag}/x-1"),
            format!("{tag}%41-1"),
            format!("{tag}#x-1"),
            format!("{tag}-été"),
        ]
        .into_iter()
        .enumerate()
        {
            env.stock(&sku, 7).await?;
            let body = json!({"sku": sku, "delta": 1, "reason": "RESTOCK"});
            let a = send(
                post(&env, &server, "/inventory/adjust", &body)
                    .header("Idempotency-Key", format!("{tag}-{i}")),
            )
            .await?;
            assert_eq!(a.status, StatusCode::ACCEPTED, "{sku}: {}", a.text);
            let location = a.header("location").map(str::to_owned);
            let location = location.ok_or_else(|| anyhow::anyhow!("{sku}: no Location"))?;
            assert!(location.is_ascii(), "{location}");
            let got = send(env.http.get(server.url(&location))).await?;
            assert_eq!(
                got.status,
                StatusCode::OK,
                "{sku} at {location}: {}",
                got.text
            );
            assert_eq!(got.body["sku"], json!(sku), "{location}");
        }
        Ok(())
    })
    .await
}

/// An adjustment is an `AdjustStock` command on the topic, keyed by the SKU, that decodes;
/// a retry with the same Idempotency-Key is the same command id, another key another one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adjustment_is_a_decodable_command_and_a_retry_is_the_same_command() -> anyhow::Result<()>
{
    with_env(Env::new().await?, |env| async move {
        let server = env.serve(env.config(), Some(env.deps())).await?;
        let sku = unique("SKU");
        let body = json!({"sku": sku, "delta": 25, "reason": "RESTOCK"});
        let adjust = |key: &str| {
            post(&env, &server, "/inventory/adjust", &body).header("Idempotency-Key", key)
        };
        let first = send(adjust("k-1")).await?;
        assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
        assert_eq!(first.body["status"], "ADJUSTMENT_REQUESTED");
        let location = format!("/inventory/{sku}");
        assert_eq!(first.header("location"), Some(location.as_str()));
        let again = send(adjust("k-1")).await?;
        assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.text);
        assert_eq!(again.body["commandId"], first.body["commandId"]);
        let other = send(adjust("k-2")).await?;
        assert_eq!(other.status, StatusCode::ACCEPTED, "{}", other.text);
        assert_ne!(other.body["commandId"], first.body["commandId"]);
        let no_key = send(post(&env, &server, "/inventory/adjust", &body)).await?;
        assert_eq!(no_key.status, StatusCode::BAD_REQUEST, "{}", no_key.text);
        assert_eq!(no_key.body["field"], "Idempotency-Key");
        // The same key with another body is another adjustment, not a duplicate inventory
        // drops (break report 14, D3: +7 after +3 under one key was answered 202 and lost).
        let changed = json!({"sku": sku, "delta": 7, "reason": "RESTOCK"});
        let seven = send(
            post(&env, &server, "/inventory/adjust", &changed).header("Idempotency-Key", "k-1"),
        )
        .await?;
        assert_eq!(seven.status, StatusCode::ACCEPTED, "{}", seven.text);
        assert_ne!(seven.body["commandId"], first.body["commandId"]);

        let commands = env.commands(4, Duration::from_secs(1)).await?;
        assert_eq!(commands.len(), 4, "{commands:#?}");
        let (commands, sevens): (Vec<_>, Vec<_>) = commands.into_iter().partition(
            |(_, c)| !matches!(&c.command, InventoryCommandBody::Adjust(a) if a.delta == 7),
        );
        assert_eq!(sevens.len(), 1, "{sevens:#?}");
        let ids: Vec<&str> = commands
            .iter()
            .map(|(_, c)| c.command_id.as_str())
            .collect();
        for (key, command) in &commands {
            assert_eq!(key, &sku);
            assert_eq!(command.sku, sku);
            let InventoryCommandBody::Adjust(a) = &command.command else {
                bail!("not an adjustment: {command:?}");
            };
            assert_eq!((a.delta, a.reason.as_str()), (25, "RESTOCK"));
        }
        let first_id = first.body["commandId"].as_str().context("commandId")?;
        assert_eq!(
            ids.iter().filter(|id| **id == first_id).count(),
            2,
            "{ids:?}"
        );
        Ok(())
    })
    .await
}

/// Break report 13, D2: `POST /inventory/release` for a checkout's order id freed its holds
/// while the saga went on to confirm it; the sale then never took the stock. Reserve and release
/// now refuse a checkout's order id (409 `checkout-order`) and send nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_and_release_refuse_a_checkouts_order_id() -> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        let server = env.serve(env.config(), Some(env.deps())).await?;
        let sku = unique("SKU");
        env.stock(&sku, 5).await?;
        let checkout = unique("order");
        common::claim_checkout(&env.orders.pool, &checkout).await?;
        for (path, body) in [
            (
                "/inventory/reserve",
                json!({"orderId": checkout, "lines": [{"sku": sku, "quantity": 1}]}),
            ),
            (
                "/inventory/release",
                json!({"orderId": checkout, "skus": [sku]}),
            ),
        ] {
            let a = send(post(&env, &server, path, &body)).await?;
            assert_eq!(
                (a.status, a.slug(), a.body["field"].as_str()),
                (StatusCode::CONFLICT, "checkout-order", Some("orderId")),
                "{path}: {}",
                a.text
            );
            assert!(a.text.contains(&format!("POST {path}")), "{}", a.text);
        }
        let other = unique("order");
        let a = send(post(
            &env,
            &server,
            "/inventory/release",
            &json!({"orderId": other, "skus": [sku]}),
        ))
        .await?;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
        let commands = env.commands(1, Duration::from_secs(2)).await?;
        assert_eq!(
            commands.len(),
            1,
            "only the other order's release: {commands:#?}"
        );
        assert_eq!(commands[0].1.correlation_id, other);
        Ok(())
    })
    .await
}

/// Reserve and release write one command per line, keyed by its SKU, with ids derived from
/// the order and the SKU: a retried request writes the same ids again (duplicates inventory
/// ignores).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_and_release_write_one_command_per_line_with_stable_ids() -> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        let server = env.serve(env.config(), Some(env.deps())).await?;
        let (a, b) = (unique("SKU"), unique("SKU"));
        env.stock(&a, 5).await?;
        env.stock(&b, 5).await?;
        let order = unique("order");
        let reserve = json!({"orderId": order, "holdTtlMs": 30_000, "lines": [
            {"sku": a, "quantity": 2, "warehouse": "WH-NORTH"}, {"sku": b, "quantity": 1}]});
        let first = send(post(&env, &server, "/inventory/reserve", &reserve)).await?;
        assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
        assert_eq!(first.body["status"], "RESERVATION_REQUESTED");
        let retry = send(post(&env, &server, "/inventory/reserve", &reserve)).await?;
        assert_eq!(retry.status, StatusCode::ACCEPTED, "{}", retry.text);
        assert_eq!(retry.body["commands"], first.body["commands"]);
        let release = json!({"orderId": order, "skus": [b]});
        let released = send(post(&env, &server, "/inventory/release", &release)).await?;
        assert_eq!(released.status, StatusCode::ACCEPTED, "{}", released.text);
        assert_eq!(released.body["status"], "RELEASE_REQUESTED");

        let commands = env.commands(5, Duration::from_secs(1)).await?;
        assert_eq!(commands.len(), 5, "{commands:#?}");
        let mut reserves: BTreeMap<String, (i32, BTreeSet<String>)> = BTreeMap::new();
        let mut releases = Vec::new();
        for (key, c) in &commands {
            assert_eq!(key, &c.sku);
            match &c.command {
                // A reservation's commands are marked all-or-nothing for inventory's coordinator.
                InventoryCommandBody::Reserve(_) => {
                    assert_eq!(c.correlation_id, format!("reservation:{order}"));
                }
                _ => assert_eq!(c.correlation_id, order),
            }
            match &c.command {
                InventoryCommandBody::Reserve(r) => {
                    assert_eq!(r.order_id, order);
                    assert_eq!(r.hold_ttl_ms, Some(30_000), "the request's TTL travels");
                    let preferred = (c.sku == a).then(|| "WH-NORTH".to_owned());
                    assert_eq!(r.warehouse, preferred, "the line's warehouse travels");
                    let entry = reserves.entry(c.sku.clone()).or_default();
                    entry.0 = r.quantity;
                    entry.1.insert(c.command_id.clone());
                }
                InventoryCommandBody::Release(r) => {
                    assert_eq!(
                        (r.order_id.as_str(), r.reason),
                        (order.as_str(), ReleaseReason::OrderCancelled)
                    );
                    releases.push(c.sku.clone());
                }
                other => bail!("unexpected command {other:?}"),
            }
        }
        assert_eq!(releases, std::slice::from_ref(&b));
        assert_eq!(reserves.len(), 2, "{reserves:?}");
        assert_eq!(reserves[&a].0, 2);
        assert_eq!(reserves[&b].0, 1);
        // Each SKU's two reserve commands (first try and retry) carry one id.
        assert!(
            reserves.values().all(|(_, ids)| ids.len() == 1),
            "{reserves:?}"
        );
        Ok(())
    })
    .await
}

/// Bad values are 422 problem+json naming the field, and nothing reaches Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_422_naming_the_field_and_write_nothing() -> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        let server = env.serve(env.config(), Some(env.deps())).await?;
        let (a, b) = (unique("SKU"), unique("SKU"));
        env.stock(&a, 5).await?;
        env.stock(&b, 5).await?;
        let never = unique("SKU");
        let long = "S".repeat(65);
        let line = |sku: &str, q: i64| json!({"sku": sku, "quantity": q});
        let cases: Vec<(&str, Value, &str, &str)> = vec![
            (
                "/inventory/adjust",
                json!({"sku": a, "delta": 0, "reason": "x"}),
                "delta",
                "invalid-field",
            ),
            (
                "/inventory/adjust",
                json!({"sku": a, "delta": -1_000_001, "reason": "x"}),
                "delta",
                "invalid-field",
            ),
            (
                "/inventory/adjust",
                json!({"sku": a, "delta": 3_000_000_000_i64, "reason": "x"}),
                "delta",
                "invalid-field",
            ),
            (
                "/inventory/adjust",
                json!({"sku": "", "delta": 1, "reason": "x"}),
                "sku",
                "invalid-field",
            ),
            (
                "/inventory/adjust",
                json!({"sku": long, "delta": 1, "reason": "x"}),
                "sku",
                "invalid-field",
            ),
            (
                "/inventory/adjust",
                json!({"sku": a, "delta": 1, "reason": " "}),
                "reason",
                "invalid-field",
            ),
            (
                "/inventory/adjust",
                json!({"sku": a, "delta": 1, "reason": "SOLD order 1"}),
                "reason",
                "invalid-field",
            ),
            (
                "/inventory/reserve",
                json!({"orderId": "o", "lines": []}),
                "lines",
                "invalid-field",
            ),
            (
                "/inventory/reserve",
                json!({"orderId": "", "lines": [line(&a, 1)]}),
                "orderId",
                "invalid-field",
            ),
            (
                "/inventory/reserve",
                json!({"orderId": "o", "lines": [line(&a, 1), line(&b, 0)]}),
                "lines[1].quantity",
                "invalid-field",
            ),
            (
                "/inventory/reserve",
                json!({"orderId": "o", "lines": [line(&a, -2)]}),
                "lines[0].quantity",
                "invalid-field",
            ),
            (
                "/inventory/reserve",
                json!({"orderId": "o", "lines": [line(&a, 1_000_001)]}),
                "lines[0].quantity",
                "invalid-field",
            ),
            (
                "/inventory/reserve",
                json!({"orderId": "o", "lines": [line(&a, 1), line(&b, 1), line(&a, 1)]}),
                "lines[2].sku",
                "invalid-field",
            ),
            (
                "/inventory/reserve",
                json!({"orderId": "o", "lines": [line(&a, 1), line(&never, 1)]}),
                "lines[1].sku",
                "unknown-sku",
            ),
            (
                "/inventory/reserve",
                json!({"orderId": "o", "lines": [line(&a, 1), line(&long, 1)]}),
                "lines[1].sku",
                "invalid-field",
            ),
            (
                "/inventory/adjust",
                json!({"sku": a, "delta": 1, "reason": "x", "warehouse": ""}),
                "warehouse",
                "invalid-field",
            ),
            (
                "/inventory/reserve",
                json!({"orderId": "o", "lines": [line(&a, 1),
                    {"sku": b, "quantity": 1, "warehouse": "WH 1"}]}),
                "lines[1].warehouse",
                "invalid-field",
            ),
            (
                "/inventory/release",
                json!({"orderId": "o", "skus": []}),
                "skus",
                "invalid-field",
            ),
            (
                "/inventory/release",
                json!({"orderId": "o", "skus": [a, a]}),
                "skus[1]",
                "invalid-field",
            ),
            (
                "/inventory/release",
                json!({"orderId": "o", "skus": [never]}),
                "skus[0]",
                "unknown-sku",
            ),
        ];
        for (path, body, field, slug) in &cases {
            let a = send(post(&env, &server, path, body).header("Idempotency-Key", "k")).await?;
            let case = format!("{path} {body}");
            assert_eq!(
                a.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{case}: {}",
                a.text
            );
            assert_eq!(
                a.header("content-type"),
                Some("application/problem+json"),
                "{case}"
            );
            assert_eq!(
                (a.slug(), a.body["field"].as_str()),
                (*slug, Some(*field)),
                "{case}: {}",
                a.text
            );
        }
        // A per-request TTL outside [inventory].min_hold_ttl_ms..=max_hold_ttl_ms.
        for ms in [5_000_i64, 3_600_001, -1] {
            let ttl = send(post(
                &env,
                &server,
                "/inventory/reserve",
                &json!({"orderId": "o", "lines": [line(&a, 1)], "holdTtlMs": ms}),
            ))
            .await?;
            assert_eq!(
                (ttl.status, ttl.slug(), ttl.body["field"].as_str()),
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid-field",
                    Some("holdTtlMs")
                ),
                "{}",
                ttl.text
            );
        }
        assert!(
            env.commands(0, Duration::from_secs(3)).await?.is_empty(),
            "a refused request reached Kafka"
        );
        Ok(())
    })
    .await
}

/// Two lines for one SKU in one reserve are refused as a whole: 422 naming the second line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserve_with_a_duplicate_sku_is_422() -> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        let server = env.serve(env.config(), Some(env.deps())).await?;
        let sku = unique("SKU");
        env.stock(&sku, 10).await?;
        let body = json!({"orderId": unique("order"), "lines": [
            {"sku": sku, "quantity": 1}, {"sku": sku, "quantity": 2}]});
        let a = send(post(&env, &server, "/inventory/reserve", &body)).await?;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
        assert_eq!(a.body["field"], "lines[1].sku");
        assert!(
            a.body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("more than once")),
            "{}",
            a.text
        );
        assert!(env.commands(0, Duration::from_secs(2)).await?.is_empty());
        Ok(())
    })
    .await
}

/// Like the agreement tests in `api.rs` and `payments.rs`, for the inventory routes: every
/// documented status of every inventory operation is really answered, errors as problem+json.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_and_the_inventory_routes_agree() -> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        let mut config = env.config();
        config.auth_tokens = vec![TOKEN.to_owned()];
        config.max_body_bytes = 1_024;
        let a = env.serve(config.clone(), Some(env.deps())).await?;
        // Without an inventory store: 501 not-served-here.
        let b = env.serve(config.clone(), None).await?;
        // A store whose keyspace was never created and a Kafka nothing listens on: the 503s.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut broken_config = config;
        broken_config.produce_timeout_ms = 1_500;
        let c = env
            .base
            .serve_with(
                broken_config,
                &closed.to_string(),
                Deps {
                    pool: env.orders.pool.clone(),
                    ledger: None,
                    inventory: Some(InventoryDeps {
                        keyspace: unique("never_created"),
                        ..env.deps()
                    }),
                    ready: true,
                },
            )
            .await?;

        let doc = send(env.http.get(a.url("/openapi.json"))).await?;
        let documented = documented(
            &doc.body,
            Endpoint::ALL.into_iter().filter(|e| e.is_inventory()),
        )?;
        assert_eq!(documented.len(), 4);

        let sku = unique("SKU");
        env.stock(&sku, 3).await?;
        let get = |s: &Server, path: String| env.http.get(s.url(&path));
        let post = |s: &Server, path: &str| {
            env.http
                .post(s.url(path))
                .bearer_auth(TOKEN)
                .header("Idempotency-Key", "k")
        };
        let adjust = json!({"sku": sku, "delta": 1, "reason": "RESTOCK"});
        let reserve = json!({"orderId": "o-1", "lines": [{"sku": sku, "quantity": 1}]});
        let release = json!({"orderId": "o-1", "skus": [sku]});
        let big = json!({"orderId": "x".repeat(2_000)});
        let mut requests: Vec<(Endpoint, reqwest::RequestBuilder)> = vec![
            (Endpoint::GetInventory, get(&a, format!("/inventory/{sku}"))),
            (
                Endpoint::GetInventory,
                get(&a, "/inventory/nope".to_owned()),
            ),
            (Endpoint::GetInventory, get(&a, "/inventory/%ff".to_owned())),
            (Endpoint::GetInventory, get(&b, format!("/inventory/{sku}"))),
            (Endpoint::GetInventory, get(&c, format!("/inventory/{sku}"))),
            (
                Endpoint::AdjustInventory,
                post(&a, "/inventory/adjust").json(&json!({"sku": sku, "delta": 0, "reason": "x"})),
            ),
        ];
        for (endpoint, path, ok) in [
            (Endpoint::AdjustInventory, "/inventory/adjust", &adjust),
            (Endpoint::ReserveInventory, "/inventory/reserve", &reserve),
            (Endpoint::ReleaseInventory, "/inventory/release", &release),
        ] {
            requests.extend([
                (endpoint, post(&a, path).json(ok)),
                (
                    endpoint,
                    post(&a, path)
                        .header("content-type", "application/json")
                        .body("{"),
                ),
                (endpoint, env.http.post(a.url(path)).json(ok)),
                (endpoint, post(&a, path).json(&big)),
                (
                    endpoint,
                    post(&a, path)
                        .header("content-type", "text/plain")
                        .body("hi"),
                ),
                (endpoint, post(&b, path).json(ok)),
                (endpoint, post(&c, path).json(ok)),
            ]);
        }
        // A checkout's order id: 409 checkout-order.
        let checkout = unique("order");
        common::claim_checkout(&env.orders.pool, &checkout).await?;
        requests.extend([
            (
                Endpoint::ReserveInventory,
                post(&a, "/inventory/reserve")
                    .json(&json!({"orderId": checkout, "lines": [{"sku": sku, "quantity": 1}]})),
            ),
            (
                Endpoint::ReleaseInventory,
                post(&a, "/inventory/release").json(&json!({"orderId": checkout, "skus": [sku]})),
            ),
            (
                Endpoint::ReserveInventory,
                post(&a, "/inventory/reserve")
                    .json(&json!({"orderId": "o-1", "lines": [{"sku": sku, "quantity": 0}]})),
            ),
            (
                Endpoint::ReleaseInventory,
                post(&a, "/inventory/release").json(&json!({"orderId": "o-1", "skus": []})),
            ),
        ]);
        let observed = observe(requests).await?;
        assert_agree(&documented, &observed);
        Ok(())
    })
    .await
}
