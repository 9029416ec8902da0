//! The reconciliation role end to end (`keel run --roles api,reconciliation`): it registers its
//! own Debezium connector of the payment ledger (a unique connector, slot and publication per
//! run), and
//! - a capture written straight into the ledger for an order the saga cancelled is reported as
//!   `AUTHORIZED_BUT_CANCELLED` on `reconciliation.mismatches.v1`, in
//!   `keel_reconciliation_mismatches_total` and in `GET /finance/reconciliation`, then resolved
//!   when the refund lands in the ledger;
//! - pausing the connector (Connect REST) while payments are written makes
//!   `keel_cdc_lag_seconds` rise and the finance view's `asOf` stand still; after resume it
//!   catches up and the payment written during the pause is reconciled.
//!
//! The connector is deleted and its replication slot dropped at the end, whatever happened.

mod common;

use std::time::{Duration, Instant};

use common::{Run, wait_ready};
use keel_avro::records::{
    Money, OrderDecision, OrderDecisionStatus, ReconciliationKind, ReconciliationMismatch,
    ReconciliationState,
};
use keel_tests::Stack;
use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A metric's value from `/metrics` text: the first sample of `name` whose labels contain
/// `label` (e.g. `connector="x"`).
async fn metric(client: &reqwest::Client, api: &str, name: &str, label: &str) -> Option<f64> {
    let text = client
        .get(format!("{api}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn finance(client: &reqwest::Client, api: &str) -> Value {
    let response = client
        .get(format!("{api}/finance/reconciliation"))
        .send()
        .await
        .expect("GET /finance/reconciliation");
    assert_eq!(response.status().as_u16(), 200);
    response.json().await.expect("JSON")
}

fn lists(report: &Value, order_id: &str) -> bool {
    report["openMismatches"]
        .as_array()
        .is_some_and(|l| l.iter().any(|m| m["orderId"] == order_id))
}

/// Polls `check` every 250 ms until it returns `Some`, or fails the test after `within`.
async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

struct Seeder {
    pg: sqlx::PgPool,
    producer: FutureProducer,
    codec: keel_avro::Codec,
    decisions: String,
}

impl Seeder {
    /// The saga's `CANCELLED` for `order_id` (sequence 2, total 2500 EUR).
    async fn cancelled(&self, order_id: &str) {
        let decision = OrderDecision {
            decision_id: format!("{order_id}/2"),
            order_id: order_id.to_owned(),
            decided_at: now_ms(),
            causation_id: "test".into(),
            correlation_id: order_id.to_owned(),
            sequence: 2,
            status: OrderDecisionStatus::Cancelled,
            from_status: Some(OrderDecisionStatus::Pending),
            reason: Some("CUSTOMER_CANCELLED".into()),
            detail: None,
            customer_id: "cust-1".into(),
            cart_id: "cart-1".into(),
            lines: Vec::new(),
            total: Money::new(2_500, "EUR"),
            shipping_address: None,
            payment_method: "tok_visa".into(),
            source_topic: "test".into(),
            source_partition: 0,
            source_offset: -1,
        };
        let payload = self
            .codec
            .encode_to(&self.decisions, &decision)
            .await
            .expect("encodes");
        self.producer
            .send(
                FutureRecord::to(&self.decisions)
                    .key(order_id)
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .expect("sent");
    }

    /// A payment of 2500 EUR for `order_id` captured in full, written straight into the ledger.
    async fn captured(&self, order_id: &str) {
        sqlx::query(
            "INSERT INTO payments (payment_id, order_id, customer_id, amount_minor, currency, \
             payment_method, status, psp_reference, captured_minor) \
             VALUES ($1, $2, 'cust-1', 2500, 'EUR', 'tok_visa', 'CAPTURED', 'psp-x', 2500)",
        )
        .bind(format!("pay-{order_id}"))
        .bind(order_id)
        .execute(&self.pg)
        .await
        .expect("a payment row");
    }

    async fn refunded(&self, order_id: &str) {
        sqlx::query(
            "UPDATE payments SET status = 'REFUNDED', refunded_minor = 2500, updated_at = now() \
             WHERE order_id = $1",
        )
        .bind(order_id)
        .execute(&self.pg)
        .await
        .expect("refunded");
    }
}

/// Reads `reconciliation.mismatches.v1` until a report of `kind`/`state` for `order_id`.
async fn reported(
    consumer: &StreamConsumer,
    codec: &keel_avro::Codec,
    topic: &str,
    order_id: &str,
    state: ReconciliationState,
    within: Duration,
) -> ReconciliationMismatch {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no {state:?} report for {order_id} on {topic}"
        );
        let Ok(Ok(m)) = tokio::time::timeout(left, consumer.recv()).await else {
            continue;
        };
        let record: ReconciliationMismatch = codec
            .decode_from(topic, m.payload().unwrap_or_default())
            .await
            .expect("an Avro ReconciliationMismatch");
        assert_eq!(
            m.key(),
            Some(record.order_id.as_bytes()),
            "keyed by order id"
        );
        if record.order_id == order_id && record.state == state {
            return record;
        }
    }
}

async fn body(stack: Stack, name: String, api: String, postgres_url: String, connector: String) {
    let client = reqwest::Client::new();
    wait_ready(&client, &api, Duration::from_secs(180)).await;
    let codec = keel_avro::Codec::new(keel_avro::RegistryConfig::with_url(
        stack.registry_url.clone(),
    ))
    .expect("codec");
    let seeder = Seeder {
        pg: sqlx::PgPool::connect(&postgres_url).await.expect("ledger"),
        producer: ClientConfig::new()
            .set("bootstrap.servers", &stack.kafka_bootstrap)
            .set("partitioner", "murmur2_random")
            .set("enable.idempotence", "true")
            .create()
            .expect("producer"),
        codec: codec.clone(),
        decisions: format!("{name}.order.decisions.v1"),
    };
    let topic = format!("{name}.reconciliation.mismatches.v1");
    let consumer =
        keel_tests::kafka::consumer(&stack.kafka_bootstrap, "read_committed").expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribed");

    // 1. A capture for a cancelled order: reported after the 2 s grace.
    let seeded = format!("order-{}", uuid::Uuid::new_v4());
    seeder.cancelled(&seeded).await;
    seeder.captured(&seeded).await;
    let open = reported(
        &consumer,
        &codec,
        &topic,
        &seeded,
        ReconciliationState::Open,
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(open.kind, ReconciliationKind::AuthorizedButCancelled);
    assert_eq!(open.payment_status.as_deref(), Some("CAPTURED"));
    assert_eq!(open.order_status.as_deref(), Some("CANCELLED"));
    assert_eq!(open.captured_minor, Some(2_500));
    assert_eq!(open.resolved_at, None);
    let report = finance(&client, &api).await;
    assert!(lists(&report, &seeded), "{report}");
    let opened = metric(
        &client,
        &api,
        "keel_reconciliation_mismatches_total",
        "kind=\"AUTHORIZED_BUT_CANCELLED\"",
    )
    .await;
    assert!(opened.is_some_and(|v| v >= 1.0), "{opened:?}");

    // … and closed when the refund reaches the ledger.
    seeder.refunded(&seeded).await;
    reported(
        &consumer,
        &codec,
        &topic,
        &seeded,
        ReconciliationState::Resolved,
        Duration::from_secs(60),
    )
    .await;
    eventually(
        "the finance view drops the resolved mismatch",
        Duration::from_secs(10),
        || {
            let (client, api, seeded) = (&client, &api, &seeded);
            async move { (!lists(&finance(client, api).await, seeded)).then_some(()) }
        },
    )
    .await;

    // 2. Lag. Heartbeats every second keep it small while the connector runs.
    let label = format!("connector=\"{connector}\"");
    let lag = || metric(&client, &api, "keel_cdc_lag_seconds", &label);
    eventually(
        "a small lag while running",
        Duration::from_secs(30),
        || async { lag().await.filter(|v| *v < 5.0) },
    )
    .await;
    let connect = keel_connectors::ConnectClient::new(&stack.connect_url);
    connect.pause(&connector).await.expect("paused");
    eventually(
        "the connector is PAUSED",
        Duration::from_secs(30),
        || async {
            let status = connect.status(&connector).await.ok()?;
            (status.connector.state == keel_connectors::ConnectorState::Paused
                && status
                    .tasks
                    .iter()
                    .all(|t| t.state == keel_connectors::ConnectorState::Paused))
            .then_some(())
        },
    )
    .await;
    // Let anything in flight land, then note how far the view has seen.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let paused_as_of = finance(&client, &api).await["asOf"].clone();
    let during = format!("order-{}", uuid::Uuid::new_v4());
    seeder.cancelled(&during).await;
    seeder.captured(&during).await;
    let rising = eventually(
        "the lag rises while paused",
        Duration::from_secs(30),
        || async { lag().await.filter(|v| *v > 8.0) },
    )
    .await;
    let report = finance(&client, &api).await;
    assert_eq!(report["asOf"], paused_as_of, "asOf stands still: {report}");
    assert!(
        report["asOfLagSeconds"].as_f64().is_some_and(|v| v > 8.0),
        "{report}"
    );
    assert!(
        !lists(&report, &during),
        "a payment the CDC has not delivered cannot be reconciled yet: {report}"
    );
    let later = lag().await.expect("a lag");
    assert!(later >= rising, "it keeps rising: {rising} then {later}");

    // Resume: it catches up, and the payment written during the pause is reconciled.
    connect.resume(&connector).await.expect("resumed");
    eventually(
        "the lag falls after resume",
        Duration::from_secs(60),
        || async { lag().await.filter(|v| *v < 5.0) },
    )
    .await;
    let report = finance(&client, &api).await;
    assert_ne!(report["asOf"], paused_as_of, "asOf moved on: {report}");
    reported(
        &consumer,
        &codec,
        &topic,
        &during,
        ReconciliationState::Open,
        Duration::from_secs(60),
    )
    .await;
    seeder.pg.close().await;
}

/// Deletes the connector, then drops its slot once the connector has let go of it.
async fn drop_connector(stack: &Stack, connector: &str, slot: &str) {
    let connect = keel_connectors::ConnectClient::new(&stack.connect_url);
    if let Err(e) = connect.delete(connector).await {
        eprintln!("deleting {connector}: {e}");
    }
    let Ok(pg) = sqlx::PgPool::connect(&stack.postgres_url).await else {
        return;
    };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        let left: Option<(bool,)> =
            sqlx::query_as("SELECT active FROM pg_replication_slots WHERE slot_name = $1")
                .bind(slot)
                .fetch_optional(&pg)
                .await
                .unwrap_or(None);
        match left {
            None => return,
            Some((false,)) => {
                let _ = sqlx::query("SELECT pg_drop_replication_slot($1)")
                    .bind(slot)
                    .execute(&pg)
                    .await;
            }
            Some((true,)) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    eprintln!("replication slot {slot} is still there");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_seeded_mismatch_is_reported_and_a_paused_ledger_connector_shows_growing_lag() {
    let stack = Stack::from_env();
    let (name, mut run) = Run::new(&stack).await;
    let connector = format!("{name}-ledger-cdc");
    let slot = connector.replace('-', "_");
    run.env.extend([
        (
            "KEEL__RECONCILIATION__HEARTBEAT_INTERVAL_MS".to_owned(),
            "1000".to_owned(),
        ),
        (
            "KEEL__RECONCILIATION__CANCELLED_GRACE_MS".to_owned(),
            "2000".to_owned(),
        ),
        (
            "KEEL__RECONCILIATION__REGISTER_TIMEOUT_MS".to_owned(),
            "120000".to_owned(),
        ),
    ]);
    let mut keel = run.spawn("keel run", &["run", "--roles", "api,reconciliation"]);
    let outcome = tokio::spawn(body(
        stack.clone(),
        name.clone(),
        run.api.clone(),
        run.postgres_url.clone(),
        connector.clone(),
    ))
    .await;
    keel.terminate(Duration::from_secs(20));
    drop_connector(&stack, &connector, &slot).await;
    run.clean_up(&stack, &name).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Real checkouts through every role — one confirmed (captured), one declined (cancelled, the
/// payment FAILED) — leave nothing to reconcile once both grace periods are over: the ledger's
/// CDC and the saga's decisions agree, so no false mismatch is reported.
#[tokio::test(flavor = "multi_thread")]
async fn real_checkouts_leave_no_mismatch_after_the_grace_periods() {
    let stack = Stack::from_env();
    let (name, mut run) = Run::new(&stack).await;
    let connector = format!("{name}-ledger-cdc");
    let slot = connector.replace('-', "_");
    run.env.extend([
        (
            "KEEL__RECONCILIATION__HEARTBEAT_INTERVAL_MS".to_owned(),
            "1000".to_owned(),
        ),
        (
            "KEEL__RECONCILIATION__CANCELLED_GRACE_MS".to_owned(),
            "3000".to_owned(),
        ),
        (
            "KEEL__RECONCILIATION__CAPTURE_GRACE_MS".to_owned(),
            "3000".to_owned(),
        ),
    ]);
    for (cart, sku) in [("cart-ok", "SKU-OK"), ("cart-no", "SKU-NO")] {
        run.ok(&[
            "carts",
            "seed",
            "--cart-id",
            cart,
            "--item",
            &format!("{sku}:1:1250"),
        ]);
        run.ok(&["inventory", "seed", "--skus", sku, "--quantity", "5"]);
    }
    let _psp = run.spawn("psp-mock", &["psp-mock"]);
    let roles = "api,saga,inventory,payment,sinks,relay,reconciliation";
    let mut keel = run.spawn("keel run", &["run", "--roles", roles]);
    let api = run.api.clone();
    let outcome = tokio::spawn(async move {
        let client = reqwest::Client::new();
        wait_ready(&client, &api, Duration::from_secs(180)).await;
        let mut ids = Vec::new();
        for (cart, token, want) in [
            ("cart-ok", "tok_visa", "CONFIRMED"),
            ("cart-no", "tok_decline_card_declined", "CANCELLED"),
        ] {
            let placed = common::place(&client, &api, cart, token, cart).await;
            let id = placed["orderId"].as_str().expect("id").to_owned();
            let order = common::settled(&client, &api, &id, Duration::from_secs(120)).await;
            assert_eq!(order["status"], want, "{order}");
            ids.push(id);
        }
        // Past both graces, with the ledger seen past them (heartbeats every second).
        tokio::time::sleep(Duration::from_secs(8)).await;
        let report = finance(&client, &api).await;
        for id in &ids {
            assert!(!lists(&report, id), "a false mismatch for {id}: {report}");
        }
        for kind in [
            "AUTHORIZED_BUT_CANCELLED",
            "CONFIRMED_WITHOUT_CAPTURE",
            "AMOUNT_MISMATCH",
        ] {
            let n = metric(
                &client,
                &api,
                "keel_reconciliation_mismatches_total",
                &format!("kind=\"{kind}\""),
            )
            .await;
            assert_eq!(n, Some(0.0), "{kind}");
        }
        let lag = metric(&client, &api, "keel_cdc_lag_seconds", "ledger-cdc").await;
        assert!(lag.is_some_and(|v| v < 5.0), "{lag:?}");
    })
    .await;
    keel.terminate(Duration::from_secs(20));
    drop_connector(&stack, &connector, &slot).await;
    run.clean_up(&stack, &name).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
