//! The order sink against the real stack: Kafka (a random decisions topic), the schema registry
//! and MariaDB (a fresh `keel_test_<random>` database, dropped at the end).

mod common;

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::{DlqSetup, codec, header};
use futures::FutureExt;
use keel_avro::Codec;
use keel_avro::records::{
    Money, OrderCreated, OrderDecision, OrderDecisionStatus, OrderLine, OrderStatus,
    OrderStatusChanged, ShippingAddress,
};
use keel_processors::dead_letter::DeadLetters;
use keel_processors::orders::{self, Applied};
use keel_tests::topics::TopicCleanup;
use keel_tests::{PATIENCE, Stack, unique};
use keel_topology::dlq_headers;
use rdkafka::ClientConfig;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::mysql::MySqlPoolOptions;
use sqlx::{AssertSqlSafe, MySqlPool};
use tokio_util::sync::CancellationToken;

/// A database of its own for one test: created with the keel user, migrated, dropped by
/// [`TestDb::drop_db`].
struct TestDb {
    name: String,
    admin: MySqlPool,
    pool: MySqlPool,
}

impl TestDb {
    async fn create(stack: &Stack) -> anyhow::Result<Self> {
        let name = unique("keel_test");
        let admin = MySqlPoolOptions::new()
            .max_connections(1)
            .connect(&stack.mysql_url)
            .await
            .context("connecting to MariaDB")?;
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
            .execute(&admin)
            .await
            .context("creating the test database (needs the keel\\_% grant)")?;
        let (base, _) = stack
            .mysql_url
            .rsplit_once('/')
            .context("the MySQL url has no database")?;
        let pool = MySqlPoolOptions::new()
            .max_connections(5)
            .connect(&format!("{base}/{name}"))
            .await?;
        orders::migrate(&pool).await?;
        Ok(Self { name, admin, pool })
    }

    async fn drop_db(self) {
        self.pool.close().await;
        if let Err(e) = sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS `{}`",
            self.name
        )))
        .execute(&self.admin)
        .await
        {
            eprintln!("dropping {}: {e}", self.name);
        }
    }
}

fn decision(
    order_id: &str,
    cart_id: &str,
    sequence: i32,
    status: OrderDecisionStatus,
) -> OrderDecision {
    OrderDecision {
        decision_id: format!("{order_id}/{sequence}"),
        order_id: order_id.to_owned(),
        decided_at: 1_764_000_000_000 + i64::from(sequence) * 1_000,
        causation_id: format!("cause-{sequence}"),
        correlation_id: order_id.to_owned(),
        sequence,
        status,
        from_status: (sequence > 1).then_some(OrderDecisionStatus::Pending),
        reason: None,
        detail: None,
        customer_id: "cust-1".to_owned(),
        cart_id: cart_id.to_owned(),
        lines: vec![
            OrderLine {
                sku: "SKU-A".to_owned(),
                quantity: 2,
                unit_price: Money::new(1_250, "EUR"),
            },
            OrderLine {
                sku: "SKU-B".to_owned(),
                quantity: 1,
                unit_price: Money::new(999, "EUR"),
            },
        ],
        total: Money::new(3_499, "EUR"),
        shipping_address: Some(ShippingAddress {
            name: "Ada Lovelace".to_owned(),
            line1: "Main St 1".to_owned(),
            line2: None,
            city: "Berlin".to_owned(),
            postal_code: "10115".to_owned(),
            country: "DE".to_owned(),
        }),
        payment_method: "pm_card_visa".to_owned(),
        source_topic: "orders.commands.v1".to_owned(),
        source_partition: 0,
        source_offset: 100 + i64::from(sequence),
    }
}

async fn produce(
    producer: &FutureProducer,
    codec: &Codec,
    topic: &str,
    d: &OrderDecision,
) -> anyhow::Result<()> {
    let payload = codec.encode_to(topic, d).await?;
    producer
        .send(
            FutureRecord::to(topic).key(&d.order_id).payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    Ok(())
}

async fn wait_for_order(pool: &MySqlPool, order_id: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < PATIENCE {
        if orders::order_status(pool, order_id).await?.is_some() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("order {order_id} did not appear within {PATIENCE:?}")
}

async fn count(pool: &MySqlPool, sql: &'static str, order_id: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql)
        .bind(order_id)
        .fetch_one(pool)
        .await?)
}

/// Runs the sink over `topic` with a fresh group until the order `marker` is written.
async fn run_sink_until(
    stack: &Stack,
    topic: &str,
    codec: &Codec,
    pool: &MySqlPool,
    marker: &str,
) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let (bootstrap, group, topic) = (
        stack.kafka_bootstrap.clone(),
        unique("order_sink"),
        topic.to_owned(),
    );
    let (codec, sink_pool, stop) = (codec.clone(), pool.clone(), shutdown.clone());
    let dead_letters = DeadLetters::new(
        &bootstrap,
        &Default::default(),
        &group,
        "order-sink",
        &prometheus::Registry::new(),
    )?;
    let sink = tokio::spawn(async move {
        orders::run_order_sink(
            &bootstrap,
            &group,
            &topic,
            &keel_processors::topics::Topics::default(),
            codec,
            sink_pool,
            dead_letters,
            stop,
        )
        .await
    });
    let waited = wait_for_order(pool, marker).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), sink)
        .await
        .context("the sink did not stop after shutdown")???;
    waited
}

/// The order is CONFIRMED at sequence 2 with one row, two items, two history rows and two
/// outbox rows, which are returned.
async fn check(
    pool: &MySqlPool,
    order_id: &str,
    label: &str,
) -> anyhow::Result<Vec<(String, String, Vec<u8>, String)>> {
    let (status, last_sequence): (String, i32) =
        sqlx::query_as("SELECT status, last_sequence FROM orders WHERE order_id = ?")
            .bind(order_id)
            .fetch_one(pool)
            .await?;
    assert_eq!(
        (status.as_str(), last_sequence),
        ("CONFIRMED", 2),
        "{label}"
    );
    let orders_rows = count(
        pool,
        "SELECT COUNT(*) FROM orders WHERE order_id = ?",
        order_id,
    )
    .await?;
    assert_eq!(orders_rows, 1, "{label}: orders rows");
    let items = count(
        pool,
        "SELECT COUNT(*) FROM order_items WHERE order_id = ?",
        order_id,
    )
    .await?;
    assert_eq!(items, 2, "{label}: order_items rows");
    let history = count(
        pool,
        "SELECT COUNT(*) FROM order_status_history WHERE order_id = ?",
        order_id,
    )
    .await?;
    assert_eq!(history, 2, "{label}: history rows");
    let outbox: Vec<(String, String, Vec<u8>, String)> = sqlx::query_as(
        "SELECT id, event_type, payload, status FROM order_outbox WHERE aggregate_id = ? \
         ORDER BY created_at, event_type",
    )
    .bind(order_id)
    .fetch_all(pool)
    .await?;
    assert_eq!(outbox.len(), 2, "{label}: outbox rows {outbox:?}");
    Ok(outbox)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_applied_once_in_order_with_their_outbox_events() -> anyhow::Result<()> {
    let stack = Stack::from_env();
    let db = TestDb::create(&stack).await?;
    let result = AssertUnwindSafe(decisions_scenario(&stack, &db.pool))
        .catch_unwind()
        .await;
    db.drop_db().await;
    result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

async fn decisions_scenario(stack: &Stack, pool: &MySqlPool) -> anyhow::Result<()> {
    // Migrating again changes nothing.
    orders::migrate(pool).await?;
    let codec = codec(stack)?;
    let topic = unique("order_decisions");
    let _topic = TopicCleanup::new(stack.kafka_bootstrap.as_str()).topic(&topic);
    // One partition, so the marker written last proves everything before it was consumed.
    keel_tests::kafka::create_topics(&stack.kafka_bootstrap, &[&topic], 1).await?;
    let cart_id = unique("cart");
    orders::seed_cart(
        pool,
        &cart_id,
        "cust-1",
        "EUR",
        &[("SKU-A", 2, 1_250), ("SKU-B", 1, 999)],
    )
    .await?;
    let order_id = unique("order");
    let pending = decision(&order_id, &cart_id, 1, OrderDecisionStatus::Pending);
    let confirmed = decision(&order_id, &cart_id, 2, OrderDecisionStatus::Confirmed);
    // Older than what is applied, with an id of its own: must change nothing.
    let mut late = decision(&order_id, &cart_id, 1, OrderDecisionStatus::Cancelled);
    late.decision_id = format!("{order_id}/late");
    late.reason = Some("PSP_TIMEOUT".to_owned());
    let marker_id = unique("marker");
    let marker = decision(
        &marker_id,
        &unique("cart"),
        1,
        OrderDecisionStatus::Rejected,
    );

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka_bootstrap)
        .set("enable.idempotence", "true")
        .create()?;
    for d in [&pending, &pending, &confirmed, &confirmed, &late, &marker] {
        produce(&producer, &codec, &topic, d).await?;
    }
    run_sink_until(stack, &topic, &codec, pool, &marker_id).await?;

    let outbox = check(pool, &order_id, "after the first run").await?;

    let mut types: Vec<&str> = outbox.iter().map(|(_, t, _, _)| t.as_str()).collect();
    types.sort_unstable();
    assert_eq!(types, ["order.created", "order.status.changed"]);
    for (id, event_type, payload, status) in &outbox {
        assert_eq!(status, "PENDING");
        assert_eq!(id.len(), 36, "event id is a uuid: {id}");
        match event_type.as_str() {
            "order.created" => {
                let e: OrderCreated = codec.decode(payload).await?;
                assert_eq!(&e.event_id, id);
                assert_eq!(e.order_id, order_id);
                assert_eq!(e.occurred_at, pending.decided_at);
                assert_eq!(e.total, Money::new(3_499, "EUR"));
                assert_eq!(e.lines, pending.lines);
                assert_eq!(e.cart_id, cart_id);
            }
            "order.status.changed" => {
                let e: OrderStatusChanged = codec.decode(payload).await?;
                assert_eq!(&e.event_id, id);
                assert_eq!(e.order_id, order_id);
                assert_eq!(e.from_status, OrderStatus::Pending);
                assert_eq!(e.to_status, OrderStatus::Confirmed);
                assert_eq!(e.occurred_at, confirmed.decided_at);
            }
            other => bail!("unexpected event type {other}"),
        }
    }
    let cart_status: String = sqlx::query_scalar("SELECT status FROM carts WHERE cart_id = ?")
        .bind(&cart_id)
        .fetch_one(pool)
        .await?;
    assert_eq!(cart_status, "ORDERED");

    // The read model: items, total, and the timeline with the causing records' coordinates.
    let view = orders::load_order(pool, &order_id)
        .await?
        .context("the order view")?;
    assert_eq!(view.status, "CONFIRMED");
    assert_eq!(view.total.amount_minor, 3_499);
    assert_eq!(view.items.len(), 2);
    assert_eq!(view.items[0].sku, "SKU-A");
    assert_eq!(
        view.shipping_address.as_ref().map(|a| a.country.as_str()),
        Some("DE")
    );
    let timeline: Vec<(&str, &str, i64)> = view
        .timeline
        .iter()
        .map(|t| (t.status.as_str(), t.topic.as_str(), t.offset))
        .collect();
    assert_eq!(
        timeline,
        [
            ("PENDING", "orders.commands.v1", 101),
            ("CONFIRMED", "orders.commands.v1", 102)
        ]
    );
    assert_eq!(view.timeline[0].time, "2025-11-24T16:00:01.000Z");

    // A whole replay by a new consumer group (as after a lost offset commit) changes nothing.
    let marker2_id = unique("marker");
    let marker2 = decision(
        &marker2_id,
        &unique("cart"),
        1,
        OrderDecisionStatus::Rejected,
    );
    produce(&producer, &codec, &topic, &marker2).await?;
    run_sink_until(stack, &topic, &codec, pool, &marker2_id).await?;
    let replayed = check(pool, &order_id, "after a full replay").await?;
    assert_eq!(replayed, outbox, "a replay must not rewrite the outbox");
    // REJECTED writes the order but no outbox row.
    let marker_outbox = count(
        pool,
        "SELECT COUNT(*) FROM order_outbox WHERE aggregate_id = ?",
        &marker_id,
    )
    .await?;
    assert_eq!(marker_outbox, 0);
    assert_eq!(
        orders::order_status(pool, &marker_id).await?.as_deref(),
        Some("REJECTED")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_decision_reports_duplicates_and_stale_decisions() -> anyhow::Result<()> {
    let stack = Stack::from_env();
    let db = TestDb::create(&stack).await?;
    let result = AssertUnwindSafe(async {
        let codec = codec(&stack)?;
        let order_id = unique("order");
        let cart = unique("cart");
        let pending = decision(&order_id, &cart, 1, OrderDecisionStatus::Pending);
        let mut cancelled = decision(&order_id, &cart, 2, OrderDecisionStatus::Cancelled);
        cancelled.reason = Some("CUSTOMER_CANCELLED".to_owned());
        let pool = &db.pool;
        assert_eq!(
            orders::apply_decision(
                pool,
                &codec,
                &keel_processors::topics::Topics::default(),
                &pending
            )
            .await?,
            Applied::Written { outbox: true }
        );
        assert_eq!(
            orders::apply_decision(
                pool,
                &codec,
                &keel_processors::topics::Topics::default(),
                &pending
            )
            .await?,
            Applied::Stale
        );
        assert_eq!(
            orders::apply_decision(
                pool,
                &codec,
                &keel_processors::topics::Topics::default(),
                &cancelled
            )
            .await?,
            Applied::Written { outbox: true }
        );
        // Same id again after a newer one: still nothing.
        assert_eq!(
            orders::apply_decision(
                pool,
                &codec,
                &keel_processors::topics::Topics::default(),
                &cancelled
            )
            .await?,
            Applied::Stale
        );
        let view = orders::load_order(pool, &order_id).await?.context("view")?;
        assert_eq!(view.status, "CANCELLED");
        assert_eq!(view.reason.as_deref(), Some("CUSTOMER_CANCELLED"));
        assert_eq!(view.timeline.len(), 2);
        // A duplicate decision id that is not stale (another order, same id) is refused by
        // the history's primary key.
        let other = unique("order");
        let mut dup = decision(&other, &cart, 1, OrderDecisionStatus::Pending);
        dup.decision_id = pending.decision_id.clone();
        assert_eq!(
            orders::apply_decision(
                pool,
                &codec,
                &keel_processors::topics::Topics::default(),
                &dup
            )
            .await?,
            Applied::Duplicate
        );
        assert_eq!(orders::order_status(pool, &other).await?, None);
        anyhow::Ok(())
    })
    .catch_unwind()
    .await;
    db.drop_db().await;
    result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_applies_each_decision_in_one_transaction_despite_duplicates_and_stale_ones()
-> anyhow::Result<()> {
    let stack = Stack::from_env();
    let db = TestDb::create(&stack).await?;
    let result = AssertUnwindSafe(async {
        let codec = codec(&stack)?;
        let names = keel_processors::topics::Topics::default();
        let pool = &db.pool;
        let (order_id, cart) = (unique("order"), unique("cart"));
        let pending = decision(&order_id, &cart, 1, OrderDecisionStatus::Pending);
        let confirmed = decision(&order_id, &cart, 2, OrderDecisionStatus::Confirmed);
        // Another order's decision reusing the first decision's id: the history's primary key
        // refuses it, and the transaction must go on without it.
        let other = unique("order");
        let mut dup = decision(&other, &unique("cart"), 1, OrderDecisionStatus::Pending);
        dup.decision_id = pending.decision_id.clone();
        let (third, third_cart) = (unique("order"), unique("cart"));
        let after = decision(&third, &third_cart, 1, OrderDecisionStatus::Pending);
        let batch = [&pending, &pending, &confirmed, &dup, &after];
        let applied: Vec<Applied> = orders::apply_batch(pool, &codec, &names, &batch)
            .await?
            .into_iter()
            .collect::<Result<_, _>>()?;
        assert_eq!(
            applied,
            [
                Applied::Written { outbox: true },
                Applied::Stale,
                Applied::Written { outbox: true },
                Applied::Duplicate,
                Applied::Written { outbox: true },
            ]
        );
        let view = orders::load_order(pool, &order_id).await?.context("view")?;
        assert_eq!(view.status, "CONFIRMED");
        assert_eq!(view.timeline.len(), 2);
        assert_eq!(orders::order_status(pool, &other).await?, None);
        assert_eq!(
            orders::order_status(pool, &third).await?.as_deref(),
            Some("PENDING")
        );
        // One outbox row per written decision, none for the stale one or the duplicate.
        let rows: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM order_outbox WHERE aggregate_id IN (?, ?, ?)")
                .bind(&order_id)
                .bind(&other)
                .bind(&third)
                .fetch_one(pool)
                .await?;
        assert_eq!(rows, 3);
        // The same batch again (a replay after a crash before the offsets' commit) writes
        // nothing.
        let again: Vec<Applied> = orders::apply_batch(pool, &codec, &names, &batch)
            .await?
            .into_iter()
            .collect::<Result<_, _>>()?;
        assert!(
            again.iter().all(|a| !matches!(a, Applied::Written { .. })),
            "{again:?}"
        );
        anyhow::Ok(())
    })
    .catch_unwind()
    .await;
    db.drop_db().await;
    result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// What each dead-letter test starts from: a decisions topic and the order sink's group with
/// its dead-letter topic, a producer and a codec ([`DlqSetup`]).
struct DlqCase {
    setup: DlqSetup,
    topic: String,
}

impl DlqCase {
    async fn new(stack: &Stack) -> anyhow::Result<Self> {
        let topic = unique("order_decisions");
        let setup = DlqSetup::new(stack, "order_sink", &[&topic]).await?;
        Ok(Self { setup, topic })
    }

    /// A dead-letter writer of the order sink's group through the stack's broker, into
    /// `registry`.
    fn dead_letters(&self, registry: &prometheus::Registry) -> anyhow::Result<DeadLetters> {
        self.setup.dead_letters("order-sink", registry)
    }

    /// Runs the sink with `dead_letters` until order `order_id` is in `pool`, then stops it.
    /// Runs the sink until `order_id` is applied and the one dead letter every case makes is
    /// acknowledged. Both: within a batch the sink commits the rows first and dead-letters
    /// after, so stopping it once the row is there could cancel the dead letter's write.
    async fn run_until_applied(
        &self,
        stack: &Stack,
        pool: &MySqlPool,
        dead_letters: DeadLetters,
        order_id: &str,
    ) -> anyhow::Result<()> {
        let shutdown = CancellationToken::new();
        let sink = spawn_sink(
            stack,
            &self.topic,
            &self.setup.group,
            &self.setup.codec,
            pool,
            dead_letters.clone(),
            &shutdown,
        );
        let mut waited = wait_for_order(pool, order_id).await;
        if waited.is_ok() {
            let since = Instant::now();
            while dead_letters.count(&self.topic) < 1 {
                if since.elapsed() > PATIENCE {
                    waited = Err(anyhow::anyhow!("no dead letter acknowledged"));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), sink)
            .await
            .context("the sink did not stop after shutdown")???;
        waited.with_context(|| format!("order {order_id} applied and the dead letter acknowledged"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_record_is_dead_lettered_with_why_and_where_and_the_next_is_applied()
-> anyhow::Result<()> {
    let stack = Stack::from_env();
    let db = TestDb::create(&stack).await?;
    let result = AssertUnwindSafe(dead_letter_scenario(&stack, &db.pool))
        .catch_unwind()
        .await;
    db.drop_db().await;
    result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

async fn dead_letter_scenario(stack: &Stack, pool: &MySqlPool) -> anyhow::Result<()> {
    let case = DlqCase::new(stack).await?;
    let (topic, setup) = (&case.topic, &case.setup);
    assert_eq!(setup.dlq, format!("{}-dlq", setup.group));
    // Not Confluent-framed Avro (no magic byte 0): the input's fault.
    let bad = setup
        .send_poison(
            topic,
            "bad-key",
            b"{\"order_id\": \"not avro\"}",
            Some("t-1"),
        )
        .await?;
    let good_id = unique("order");
    let good = decision(&good_id, &unique("cart"), 1, OrderDecisionStatus::Rejected);
    produce(&setup.producer, &setup.codec, topic, &good).await?;

    let registry = prometheus::Registry::new();
    let dead_letters = case.dead_letters(&registry)?;
    case.run_until_applied(stack, pool, dead_letters.clone(), &good_id)
        .await
        .context("the good decision after the bad record")?;
    assert_eq!(
        orders::order_status(pool, &good_id).await?.as_deref(),
        Some("REJECTED")
    );

    let letters = setup.letters().await?;
    assert_eq!(
        letters.len(),
        1,
        "dead letters on {}: {letters:?}",
        setup.dlq
    );
    bad.assert_dead_letter(&letters[0], "order-sink")?;

    assert_eq!(dead_letters.count(topic), 1);
    let exported = common::exported(&registry, "order-sink", topic);
    assert!((exported - 1.0).abs() < f64::EPSILON, "exported {exported}");
    Ok(())
}

/// Starts the sink over `topic` as group `group` with `dead_letters`, until `shutdown`.
fn spawn_sink(
    stack: &Stack,
    topic: &str,
    group: &str,
    codec: &Codec,
    pool: &MySqlPool,
    dead_letters: DeadLetters,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<orders::Result<()>> {
    let (bootstrap, group, topic) = (
        stack.kafka_bootstrap.clone(),
        group.to_owned(),
        topic.to_owned(),
    );
    let (codec, pool, stop) = (codec.clone(), pool.clone(), shutdown.clone());
    tokio::spawn(async move {
        orders::run_order_sink(
            &bootstrap,
            &group,
            &topic,
            &keel_processors::topics::Topics::default(),
            codec,
            pool,
            dead_letters,
            stop,
        )
        .await
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_whose_dead_letter_is_not_acknowledged_is_retried_not_passed() -> anyhow::Result<()>
{
    let stack = Stack::from_env();
    let db = TestDb::create(&stack).await?;
    let result = AssertUnwindSafe(unacknowledged_scenario(&stack, &db.pool))
        .catch_unwind()
        .await;
    db.drop_db().await;
    result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

async fn unacknowledged_scenario(stack: &Stack, pool: &MySqlPool) -> anyhow::Result<()> {
    let case = DlqCase::new(stack).await?;
    let (topic, setup) = (&case.topic, &case.setup);
    let bad = setup
        .send_poison(topic, "bad-key", b"not avro", None)
        .await?;
    let good_id = unique("order");
    let good = decision(&good_id, &unique("cart"), 1, OrderDecisionStatus::Rejected);
    produce(&setup.producer, &setup.codec, topic, &good).await?;

    // First run: the dead-letter producer reaches no broker, so no write is ever acknowledged.
    let unreachable = setup.unreachable_dead_letters("order-sink")?;
    let shutdown = CancellationToken::new();
    let sink = spawn_sink(
        stack,
        topic,
        &setup.group,
        &setup.codec,
        pool,
        unreachable.clone(),
        &shutdown,
    );
    tokio::time::sleep(Duration::from_secs(8)).await;
    let applied_early = orders::order_status(pool, &good_id).await?;
    let still_running = !sink.is_finished();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), sink)
        .await
        .context("the sink did not stop promptly while retrying a dead letter")???;
    assert_eq!(
        applied_early, None,
        "the decision after the bad record was applied: the bad record was passed over"
    );
    assert!(still_running, "the sink stopped instead of retrying");
    assert_eq!(unreachable.count(topic), 0);

    // Second run, same group, a working dead-letter producer: the bad record was not committed
    // past, so it is read again, dead-lettered, and the decision after it applied.
    let dead_letters = case.dead_letters(&prometheus::Registry::new())?;
    case.run_until_applied(stack, pool, dead_letters.clone(), &good_id)
        .await
        .context("the good decision in the second run")?;
    let letters = setup.letters().await?;
    let offsets: Vec<Option<String>> = letters
        .iter()
        .map(|m| header(m, dlq_headers::SOURCE_OFFSET))
        .collect();
    assert_eq!(offsets, [Some(bad.offset.to_string())]);
    assert_eq!(letters[0].payload(), Some(bad.value));
    assert_eq!(dead_letters.count(topic), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_no_rows_can_be_made_of_is_dead_lettered_and_the_next_is_applied()
-> anyhow::Result<()> {
    let stack = Stack::from_env();
    let db = TestDb::create(&stack).await?;
    let result = AssertUnwindSafe(invalid_decision_scenario(&stack, &db.pool))
        .catch_unwind()
        .await;
    db.drop_db().await;
    result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

async fn invalid_decision_scenario(stack: &Stack, pool: &MySqlPool) -> anyhow::Result<()> {
    let case = DlqCase::new(stack).await?;
    let (topic, setup) = (&case.topic, &case.setup);
    // Decodes, but no row can be made of it (sequence 0): the input's fault. Both records are
    // in the topic before the sink starts, so they usually share a batch.
    let invalid_id = unique("order");
    let invalid = decision(
        &invalid_id,
        &unique("cart"),
        0,
        OrderDecisionStatus::Rejected,
    );
    produce(&setup.producer, &setup.codec, topic, &invalid).await?;
    let good_id = unique("order");
    let good = decision(&good_id, &unique("cart"), 1, OrderDecisionStatus::Rejected);
    produce(&setup.producer, &setup.codec, topic, &good).await?;

    let dead_letters = case.dead_letters(&prometheus::Registry::new())?;
    case.run_until_applied(stack, pool, dead_letters.clone(), &good_id)
        .await
        .context("the good decision after the invalid one")?;
    assert_eq!(orders::order_status(pool, &invalid_id).await?, None);

    let letters = setup.letters().await?;
    assert_eq!(
        letters.len(),
        1,
        "dead letters on {}: {letters:?}",
        setup.dlq
    );
    let letter = &letters[0];
    let value = letter.payload().context("the dead letter has a value")?;
    let decoded: OrderDecision = setup.codec.decode_from(topic, value).await?;
    assert_eq!(
        decoded, invalid,
        "the value is the invalid decision as written"
    );
    let why = header(letter, dlq_headers::ERROR).context("no error header")?;
    assert!(why.contains("sequence"), "why: {why}");
    assert_eq!(dead_letters.count(topic), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_is_dead_lettered_with_why_and_the_next_decision_is_applied()
-> anyhow::Result<()> {
    let stack = Stack::from_env();
    let db = TestDb::create(&stack).await?;
    let result = AssertUnwindSafe(tombstone_scenario(&stack, &db.pool))
        .catch_unwind()
        .await;
    db.drop_db().await;
    result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// `order.decisions.v1` is an event topic, not a compacted table: a record without a value is
/// bad input, dead-lettered like an undecodable one (not skipped with a log line).
async fn tombstone_scenario(stack: &Stack, pool: &MySqlPool) -> anyhow::Result<()> {
    let case = DlqCase::new(stack).await?;
    let (topic, setup) = (&case.topic, &case.setup);
    let (partition, offset) = setup.send_raw(topic, "order-tombstone", None).await?;
    let good_id = unique("order");
    let good = decision(&good_id, &unique("cart"), 1, OrderDecisionStatus::Rejected);
    produce(&setup.producer, &setup.codec, topic, &good).await?;

    let registry = prometheus::Registry::new();
    let dead_letters = case.dead_letters(&registry)?;
    case.run_until_applied(stack, pool, dead_letters.clone(), &good_id)
        .await
        .context("the good decision after the tombstone")?;
    let letters = setup.letters().await?;
    assert_eq!(
        letters.len(),
        1,
        "dead letters on {}: {letters:?}",
        setup.dlq
    );
    let letter = &letters[0];
    common::assert_from(
        letter,
        (topic, partition, offset),
        "order-sink",
        "tombstone",
    )?;
    assert_eq!(
        letter.payload(),
        None,
        "a tombstone's dead letter has no value"
    );
    assert_eq!(letter.key(), Some(&b"order-tombstone"[..]));
    assert_eq!(dead_letters.count(topic), 1);
    let exported = common::exported(&registry, "order-sink", topic);
    assert!((exported - 1.0).abs() < f64::EPSILON, "exported {exported}");
    Ok(())
}
