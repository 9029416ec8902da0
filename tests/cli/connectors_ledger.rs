//! `keel connectors` with `[connectors].ledger = true` manages the reconciliation role's ledger
//! connector too (src/connectors.rs): `register` prepares it as the role does (heartbeat table,
//! CDC topics with `[topics].partitions`) instead of making an outbox publication for it (its
//! publication is Debezium's `filtered` one: exactly the payments and heartbeat tables), is
//! idempotent, `status` shows it with its slot, and `delete` drops the slot.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::Run;
use keel_tests::Stack;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use sqlx::Connection as _;

#[tokio::test(flavor = "multi_thread")]
async fn register_status_and_delete_include_the_ledger_connector_when_configured() {
    let stack = Stack::from_env();
    let (name, mut run) = Run::new(&stack).await;
    run.env.extend([
        ("KEEL__CONNECTORS__LEDGER".to_owned(), "true".to_owned()),
        (
            "KEEL__RECONCILIATION__HEARTBEAT_INTERVAL_MS".to_owned(),
            "2000".to_owned(),
        ),
    ]);
    let connector = format!("{name}-ledger-cdc");
    let slot = format!("{name}_ledger_cdc");
    let guard = run.connectors_guard();

    for attempt in ["first", "second"] {
        let out = run
            .keel(&["connectors", "register"])
            .output()
            .expect("keel connectors register");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{attempt} register failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("{connector}: RUNNING")),
            "{attempt} register: {stdout}"
        );
    }

    // The publication is the connector's own (filtered): the ledger's tables, no outbox table.
    let mut pg = sqlx::PgConnection::connect(&run.postgres_url)
        .await
        .expect("the run's ledger database");
    let tables: BTreeSet<String> =
        sqlx::query_scalar("SELECT tablename::text FROM pg_publication_tables WHERE pubname = $1")
            .bind(&slot)
            .fetch_all(&mut pg)
            .await
            .expect("the publication's tables")
            .into_iter()
            .collect();
    assert_eq!(
        tables,
        BTreeSet::from(["payments".to_owned(), "keel_cdc_heartbeat".to_owned()]),
        "publication {slot}"
    );
    // The CDC topics were made by Keel with [topics].partitions, not by Debezium with one.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka_bootstrap)
        .create()
        .expect("a consumer");
    let topic = format!("{name}.ledger.public.payments");
    let metadata = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .expect("metadata");
    assert_eq!(
        metadata.topics().first().map(|t| t.partitions().len()),
        Some(6),
        "{topic}"
    );

    let out = run
        .keel(&["connectors", "status"])
        .output()
        .expect("keel connectors status");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "status: {stdout}");
    assert!(stdout.contains(&format!("{connector}: ")), "{stdout}");
    assert!(stdout.contains(&format!("slot {slot}: ")), "{stdout}");

    // `keel connectors delete` (the guard) removes the connector and drops its slot.
    drop(guard);
    let slots: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM pg_replication_slots WHERE slot_name = $1")
            .bind(&slot)
            .fetch_one(&mut pg)
            .await
            .expect("slots");
    assert_eq!(slots, 0, "slot {slot} is dropped with the connector");
    drop(pg);
    run.clean_up(&stack, &name).await;
}
