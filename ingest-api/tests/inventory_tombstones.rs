//! `GET /inventory/{sku}` of a hot SKU against the real stack: the SKU's hold rows in
//! `reservation` (one partition per SKU) fill with tombstones as holds are released, so the
//! level is read from the held figures the sink keeps in `stock_level` and
//! `stock_by_warehouse`, never from the hold rows. The Cassandra keyspace is fresh
//! (`invtomb_<random>`, migrated with the sink's `migrate`, dropped at the end) and written
//! through the sink's own writes from the events inventory emits.

mod common;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use common::{Base, Deps, TestEnv, send, with_env};
use keel_avro::records::{
    InventoryAdjusted, InventoryReleased, InventoryReserved, ReleaseReason, ReservationStatus,
};
use keel_ingest_api::{ApiConfig, InventoryDeps};
use keel_processors::inventory::sink::{
    self, CassandraSinkConfig, Writer, writes_for_adjusted, writes_for_released,
    writes_for_reserved,
};
use keel_tests::unique;
use reqwest::StatusCode;
use scylla::client::session::Session;
use scylla::statement::unprepared::Statement;

/// Holds taken on the hot SKU, and how many of them stay held (the rest are released: one
/// tombstone each in the SKU's `reservation` partition).
const HOLDS: i32 = 300;
const KEPT: i32 = 25;
const ON_HAND: i32 = 10_000;
const SKU: &str = "HOT-MUG";
const WAREHOUSE: &str = "WH-1";

struct Env {
    base: Base,
    keyspace: String,
    session: Arc<Session>,
}

impl std::ops::Deref for Env {
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
    }
}

impl Env {
    async fn new() -> anyhow::Result<Self> {
        let base = Base::new("invtomb", "inventory_commands").await?;
        let keyspace = unique("invtomb");
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
        Ok(Self {
            base,
            keyspace,
            session: Arc::new(session),
        })
    }
}

/// Inventory's events for the hot SKU: stocked, `HOLDS` holds taken, all but `KEPT` released,
/// each hold event carrying the SKU's held figures after it (as the processor fills them).
fn events(
    now_ms: i64,
) -> (
    InventoryAdjusted,
    Vec<InventoryReserved>,
    Vec<InventoryReleased>,
) {
    let stocked = InventoryAdjusted {
        event_id: "stocked".into(),
        sku: SKU.into(),
        occurred_at: now_ms,
        causation_id: "cmd-stock".into(),
        correlation_id: "cmd-stock".into(),
        delta: ON_HAND,
        on_hand: ON_HAND,
        reason: "RESTOCK".into(),
        warehouse: Some(WAREHOUSE.into()),
        warehouse_on_hand: Some(ON_HAND),
    };
    let mut version = now_ms * 1_000;
    let mut held = 0;
    let reserved = (0..HOLDS)
        .map(|i| {
            held += 1;
            version += 1;
            InventoryReserved {
                event_id: format!("o-{i}/reserved"),
                sku: SKU.into(),
                occurred_at: now_ms,
                causation_id: format!("cmd-{i}"),
                correlation_id: format!("o-{i}"),
                order_id: format!("o-{i}"),
                status: ReservationStatus::Held,
                quantity: 1,
                available: ON_HAND - held,
                expires_at: Some(now_ms + 600_000),
                warehouse: Some(WAREHOUSE.into()),
                held: Some(held),
                warehouse_held: Some(held),
                held_version: Some(version),
            }
        })
        .collect();
    let released = (KEPT..HOLDS)
        .map(|i| {
            held -= 1;
            version += 1;
            InventoryReleased {
                event_id: format!("o-{i}/released"),
                sku: SKU.into(),
                occurred_at: now_ms + 1,
                causation_id: format!("cancel-{i}"),
                correlation_id: format!("o-{i}"),
                order_id: format!("o-{i}"),
                quantity: 1,
                reason: ReleaseReason::OrderCancelled,
                warehouse: Some(WAREHOUSE.into()),
                held: Some(held),
                warehouse_held: Some(held),
                held_version: Some(version),
            }
        })
        .collect();
    (stocked, reserved, released)
}

/// Reads of `table` in the test's keyspace so far, by Cassandra's own table metrics
/// (`system_views.local_read_latency`: every local read of the table counts once).
async fn reads_of(session: &Session, keyspace: &str, table: &str) -> anyhow::Result<i64> {
    let rows = session
        .query_unpaged(
            "SELECT count FROM system_views.local_read_latency \
             WHERE keyspace_name = ? AND table_name = ?",
            (keyspace, table),
        )
        .await?
        .into_rows_result()?;
    Ok(rows
        .maybe_first_row::<(i64,)>()?
        .map_or(0, |(count,)| count))
}

/// `(live rows, tombstone cells)` Cassandra's trace reports for one partition read of the hot
/// SKU's hold rows (`Read N live rows and M tombstone cells for query ...`).
async fn traced_partition_read(session: &Session, keyspace: &str) -> anyhow::Result<(i64, i64)> {
    let mut scan = Statement::new(format!(
        "SELECT quantity, warehouse FROM {keyspace}.reservation WHERE sku = ?"
    ));
    scan.set_tracing(true);
    let result = session.query_unpaged(scan, (SKU,)).await?;
    let id = result.tracing_id().context("the read was traced")?;
    for _ in 0..50 {
        let info = session.get_tracing_info(&id).await?;
        for activity in info.events.iter().filter_map(|e| e.activity.as_deref()) {
            let words: Vec<&str> = activity.split_whitespace().collect();
            if let [
                "Read",
                live,
                "live",
                "rows",
                "and",
                tombstones,
                "tombstone",
                ..,
            ] = words[..]
            {
                return Ok((live.parse()?, tombstones.parse()?));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the trace of the partition read never reported its live rows and tombstones")
}

#[tokio::test]
async fn a_hot_skus_level_is_right_and_read_without_touching_its_tombstoned_hold_rows()
-> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        let session = &*env.session;
        let writer = Writer::prepare(session, &env.keyspace).await?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let (stocked, reserved, released) = events(now_ms);
        let mut writes = writes_for_adjusted(&stocked, 0);
        for e in &reserved {
            writes.extend(writes_for_reserved(e, now_ms));
        }
        for e in &released {
            writes.extend(writes_for_released(e));
        }
        // Replays and late arrivals: the first holds' events again, after everything.
        for e in reserved.iter().take(10) {
            writes.extend(writes_for_reserved(e, now_ms));
        }
        for write in &writes {
            writer.apply(session, write).await?;
        }

        // The partition the old read scanned: KEPT live rows among HOLDS − KEPT tombstones.
        let before_trace = reads_of(session, &env.keyspace, "reservation").await?;
        let (live, tombstones) = traced_partition_read(session, &env.keyspace).await?;
        assert_eq!(live, i64::from(KEPT), "live hold rows of the hot SKU");
        assert!(
            tombstones >= i64::from(HOLDS - KEPT),
            "the released holds left {tombstones} tombstones, expected at least {}",
            HOLDS - KEPT
        );
        let before_get = reads_of(session, &env.keyspace, "reservation").await?;
        assert_eq!(
            before_get,
            before_trace + 1,
            "the table metric counts a read of the hold rows"
        );

        let config = ApiConfig {
            inventory_topic: env.base.topic.clone(),
            ..env.base.config()
        };
        let deps = Deps {
            pool: env.base.unused_orders_pool()?,
            ledger: None,
            inventory: Some(InventoryDeps {
                session: Arc::clone(&env.session),
                keyspace: env.keyspace.clone(),
                min_hold_ttl_ms: 10_000,
                max_hold_ttl_ms: 3_600_000,
            }),
            ready: true,
        };
        let server = env.base.serve(config, deps).await?;
        let level = send(env.base.http.get(server.url(&format!("/inventory/{SKU}")))).await?;
        assert_eq!(level.status, StatusCode::OK, "{}", level.text);
        let kept = i64::from(KEPT);
        let on_hand = i64::from(ON_HAND);
        assert_eq!(level.body["onHand"], on_hand, "{}", level.text);
        assert_eq!(level.body["held"], kept, "{}", level.text);
        assert_eq!(level.body["available"], on_hand - kept, "{}", level.text);
        assert_eq!(
            level.body["warehouses"],
            serde_json::json!([{
                "warehouse": WAREHOUSE,
                "onHand": on_hand,
                "held": kept,
                "available": on_hand - kept,
            }]),
            "{}",
            level.text
        );
        let after_get = reads_of(session, &env.keyspace, "reservation").await?;
        assert_eq!(
            after_get, before_get,
            "GET /inventory/{{sku}} read the SKU's hold rows (and their tombstones)"
        );

        // Hold rows stay for per-order lookups: a point read of a kept hold.
        let point = session
            .query_unpaged(
                format!(
                    "SELECT quantity FROM {}.reservation WHERE sku = ? AND order_id = ?",
                    env.keyspace
                ),
                (SKU, "o-0"),
            )
            .await?
            .into_rows_result()?
            .maybe_first_row::<(Option<i32>,)>()?;
        assert_eq!(
            point,
            Some((Some(1),)),
            "the kept hold o-0 is found by its order"
        );
        Ok(())
    })
    .await
}
