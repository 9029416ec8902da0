//! The invariant auditor end to end (`keel run --roles ...,audit` and `keel audit`) on the real
//! stack:
//! - after clean checkouts (confirmed, short of stock, declined) `keel audit` exits 0 and every
//!   invariant is `OK` — the stream ones checked by a running auditor, not `NOT_CHECKED`;
//! - a hold left open for a cancelled order (an `inventory.reserved.v1` `HELD` that nothing
//!   releases, as a faulty producer would publish it) makes the auditor publish
//!   `CANCELLED_HOLDS_RELEASED` on `audit.violations.v1` after the grace period, raises
//!   `keel_invariant_violations_total`, and makes `keel audit` exit 1 naming the invariant;
//! - a second capture row written straight into the ledger for the confirmed order makes
//!   `keel audit` name `AT_MOST_ONE_CAPTURE` too.

mod common;

use std::time::{Duration, Instant};

use common::{Run, place, settled, wait_ready};
use keel_avro::records::{
    AuditInvariant, AuditViolation, AuditViolationState, InventoryReserved, ReservationStatus,
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

/// `keel audit --json`: its exit code and report.
fn audit(run: &Run) -> (i32, Value, String) {
    let out = run
        .keel(&["audit", "--json"])
        .output()
        .expect("keel audit runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "keel audit --json printed no report ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report, stdout)
}

fn status_of(report: &Value, invariant: AuditInvariant) -> &str {
    report["verdicts"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["invariant"] == invariant.code()))
        .and_then(|v| v["status"].as_str())
        .unwrap_or("missing")
}

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

#[tokio::test(flavor = "multi_thread")]
async fn a_seeded_violation_fails_the_audit_that_clean_checkouts_pass() {
    let stack = Stack::from_env();
    let (name, mut run) = Run::new(&stack).await;
    run.with_audit(2_000);
    let (mug, plate) = ("SKU-MUG", "SKU-PLATE");
    let (mug_1, plate_10) = (format!("{mug}:1:1250"), format!("{plate}:10:800"));
    for (cart, item) in [
        ("cart-ok", mug_1.as_str()),
        ("cart-short", plate_10.as_str()),
        ("cart-declined", mug_1.as_str()),
    ] {
        run.ok(&["carts", "seed", "--cart-id", cart, "--item", item]);
    }
    run.ok(&[
        "inventory",
        "seed",
        "--skus",
        &format!("{mug},{plate}"),
        "--quantity",
        "5",
    ]);
    let _psp = run.spawn("psp-mock", &["psp-mock"]);
    let mut keel = run.spawn(
        "keel run",
        &[
            "run",
            "--roles",
            "api,saga,inventory,payment,sinks,relay,audit",
        ],
    );
    let client = reqwest::Client::new();
    wait_ready(&client, &run.api, Duration::from_secs(120)).await;

    let ok = place(&client, &run.api, "cart-ok", "tok_visa", "key-ok").await;
    let short = place(&client, &run.api, "cart-short", "tok_visa", "key-short").await;
    let declined = place(
        &client,
        &run.api,
        "cart-declined",
        "tok_decline_insufficient_funds",
        "key-declined",
    )
    .await;
    let id = |v: &Value| v["orderId"].as_str().expect("an order id").to_owned();
    let (ok_id, short_id, declined_id) = (id(&ok), id(&short), id(&declined));
    let within = Duration::from_secs(60);
    for (order, want) in [
        (&ok_id, "CONFIRMED"),
        (&short_id, "CANCELLED"),
        (&declined_id, "CANCELLED"),
    ] {
        let o = settled(&client, &run.api, order, within).await;
        assert_eq!(o["status"], want, "{o}");
    }

    // Clean: past every grace period (2 s here), every invariant holds.
    let start = Instant::now();
    let clean = loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (code, report, stdout) = audit(&run);
        if code == 0
            && status_of(&report, AuditInvariant::CancelledHoldsReleased) == "OK"
            && status_of(&report, AuditInvariant::ConfirmedCaptured) == "OK"
        {
            break report;
        }
        assert!(
            start.elapsed() < within,
            "clean checkouts did not pass the audit: exit {code}\n{stdout}"
        );
    };
    for invariant in AuditInvariant::ALL {
        assert_eq!(status_of(&clean, invariant), "OK", "{clean}");
    }
    assert_eq!(clean["ok"], true);
    let counter = "keel_invariant_violations_total";
    let label = format!(
        "invariant=\"{}\"",
        AuditInvariant::CancelledHoldsReleased.code()
    );
    assert_eq!(
        metric(&client, &run.api, counter, &label).await,
        Some(0.0),
        "the counter is exposed at zero"
    );

    // Seed: a hold on SKU-PLATE for the declined (cancelled) order that nothing releases. The
    // saga's compensating release finds no hold in inventory, so it stays open.
    let codec = keel_avro::Codec::new(keel_avro::RegistryConfig::with_url(
        stack.registry_url.clone(),
    ))
    .expect("codec");
    let reserved_topic = format!("{name}.inventory.reserved.v1");
    let held = InventoryReserved {
        event_id: uuid::Uuid::new_v4().to_string(),
        sku: plate.into(),
        occurred_at: now_ms(),
        causation_id: "seeded-by-test".into(),
        correlation_id: declined_id.clone(),
        order_id: declined_id.clone(),
        status: ReservationStatus::Held,
        quantity: 1,
        available: 4,
        expires_at: Some(now_ms() + 600_000),
        warehouse: None,
        held: None,
        warehouse_held: None,
        held_version: None,
    };
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka_bootstrap)
        .set("partitioner", "murmur2_random")
        .create()
        .expect("producer");
    let payload = codec
        .encode_to(&reserved_topic, &held)
        .await
        .expect("encodes");
    producer
        .send(
            FutureRecord::to(&reserved_topic)
                .key(&declined_id)
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .expect("sent");

    // The auditor publishes the violation after the grace period.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka_bootstrap)
        .set("group.id", format!("{name}-audit-test"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let violations_topic = format!("{name}.audit.violations.v1");
    consumer.subscribe(&[&violations_topic]).expect("subscribe");
    let deadline = Instant::now() + within;
    let seen: AuditViolation = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no violation on {violations_topic}");
        let Ok(Ok(m)) = tokio::time::timeout(left, consumer.recv()).await else {
            continue;
        };
        let v: AuditViolation = codec
            .decode_from(&violations_topic, m.payload().expect("a value"))
            .await
            .expect("decodes");
        if v.subject_id == declined_id && v.state == AuditViolationState::Open {
            assert_eq!(m.key(), Some(declined_id.as_bytes()));
            break v;
        }
    };
    assert_eq!(seen.invariant, AuditInvariant::CancelledHoldsReleased);
    assert_eq!(seen.sku.as_deref(), Some(plate));
    assert!(
        seen.opened_at - held.occurred_at >= 1_900,
        "opened only after the grace: {seen:?}"
    );
    assert_eq!(
        metric(&client, &run.api, counter, &label).await,
        Some(1.0),
        "keel_invariant_violations_total rose"
    );
    assert_eq!(
        metric(&client, &run.api, "keel_invariant_violations_open", &label).await,
        Some(1.0)
    );

    let (code, report, stdout) = audit(&run);
    assert_eq!(code, 1, "a violation fails the audit:\n{stdout}");
    assert_eq!(report["ok"], false);
    assert_eq!(
        status_of(&report, AuditInvariant::CancelledHoldsReleased),
        "VIOLATED",
        "{stdout}"
    );
    assert!(stdout.contains(&declined_id), "names the order: {stdout}");
    // The table names the invariant too.
    let table = run.keel(&["audit"]).output().expect("keel audit runs");
    assert_eq!(table.status.code(), Some(1));
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("CANCELLED_HOLDS_RELEASED") && table.contains("VIOLATED (1)"),
        "{table}"
    );

    // Seed: a second capture of the confirmed order's payment, straight into the ledger.
    let pg = sqlx::PgPool::connect(&run.postgres_url)
        .await
        .expect("ledger");
    sqlx::query(
        "INSERT INTO payment_attempts (attempt_id, payment_id, kind, outcome, idempotency_key, \
         finished_at) VALUES ($1, $2, 'CAPTURE', 'SUCCEEDED', $1, now())",
    )
    .bind(format!("seeded-{}", uuid::Uuid::new_v4()))
    .bind(format!("pay-{ok_id}"))
    .execute(&pg)
    .await
    .expect("a second capture row");
    pg.close().await;
    let (code, report, stdout) = audit(&run);
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(
        status_of(&report, AuditInvariant::AtMostOneCapture),
        "VIOLATED",
        "{stdout}"
    );
    assert!(stdout.contains(&ok_id), "names the order: {stdout}");

    keel.terminate(Duration::from_secs(30));
    run.clean_up(&stack, &name).await;
}
