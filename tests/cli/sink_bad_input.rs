//! `keel run --roles sinks` against an inventory event framed with a schema id the registry
//! does not know (`0x00`, 88888888 big-endian, `zz`: the bad-input pass's record). The process
//! used to exit ("cassandra sink failed … schema id 88888888 not found (yet …)") and, restarted,
//! exit again 2 s later, for good. Now the Cassandra sink asks the registry again for the window
//! (`[registry].unknown_id_patience_ms`, 2 s here), dead-letters the record to
//! `<name>-cassandra-sink-dlq` with why and where it came from, and applies the event after it;
//! `keel run` keeps running and stops cleanly when asked.

mod common;

use std::time::{Duration, Instant};

use common::{Run, wait_ready};
use keel_avro::records::{InventoryReserved, ReservationStatus};
use keel_avro::{Codec, RegistryConfig};
use keel_tests::{PATIENCE, Stack};
use keel_topology::dlq_headers;
use rdkafka::ClientConfig;
use rdkafka::message::{Headers as _, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};

const WINDOW_MS: u64 = 2_000;

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_schema_id_is_dead_lettered_after_the_window_and_keel_run_keeps_running() {
    let stack = Stack::from_env();
    let (name, mut run) = Run::new(&stack).await;
    run.env.push((
        "KEEL__REGISTRY__UNKNOWN_ID_PATIENCE_MS".to_owned(),
        WINDOW_MS.to_string(),
    ));
    let mut keel = run.spawn("keel run", &["run", "--roles", "sinks"]);
    let client = reqwest::Client::new();
    // The admin listener starts once every role has (topics and keyspace made).
    wait_ready(&client, &run.admin, Duration::from_secs(120)).await;

    let topic = format!("{name}.inventory.reserved.v1");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka_bootstrap)
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .create()
        .expect("producer");
    // One key: the good event follows the bad one in the same partition.
    let key = format!("order-{}", uuid::Uuid::new_v4());
    let mut bad = vec![0];
    bad.extend_from_slice(&88_888_888_u32.to_be_bytes());
    bad.extend_from_slice(b"zz");
    let (partition, offset) = producer
        .send(
            FutureRecord::to(&topic).key(&key).payload(&bad),
            Duration::from_secs(10),
        )
        .await
        .map(|d| (d.partition, d.offset))
        .expect("the bad record is written");
    let sent = Instant::now();
    let sku = format!("SKU-{}", uuid::Uuid::new_v4());
    let now = chrono::Utc::now().timestamp_millis();
    let good = InventoryReserved {
        event_id: uuid::Uuid::new_v4().to_string(),
        sku: sku.clone(),
        occurred_at: now,
        causation_id: "cause".to_owned(),
        correlation_id: key.clone(),
        order_id: key.clone(),
        status: ReservationStatus::Shortage,
        quantity: 1,
        available: 0,
        expires_at: None,
        warehouse: None,
        held: Some(7),
        warehouse_held: None,
        held_version: Some(now * 1_000),
    };
    let codec = Codec::new(RegistryConfig::with_url(stack.registry_url.clone())).expect("codec");
    let value = codec.encode_to(&topic, &good).await.expect("encoded");
    producer
        .send(
            FutureRecord::to(&topic).key(&key).payload(&value),
            Duration::from_secs(10),
        )
        .await
        .expect("the good record is written");

    // The good event reaches Cassandra: the sink went past the bad one.
    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_node(&stack.cassandra_node)
        .build()
        .await
        .expect("cassandra");
    let held = loop {
        let rows = session
            .query_unpaged(
                format!(
                    "SELECT held FROM {}.stock_level WHERE sku = ?",
                    run.keyspace
                ),
                (&sku,),
            )
            .await
            .expect("select")
            .into_rows_result()
            .expect("rows");
        let found: Vec<(Option<i32>,)> = rows
            .rows::<(Option<i32>,)>()
            .expect("typed rows")
            .collect::<Result<_, _>>()
            .expect("decoded rows");
        if let Some(held) = found.first().and_then(|(held,)| *held) {
            break held;
        }
        assert!(
            keel.child.try_wait().expect("wait").is_none(),
            "keel run exited on the bad record"
        );
        assert!(
            sent.elapsed() < PATIENCE,
            "the event after the bad one did not reach Cassandra within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(held, 7);
    assert!(
        sent.elapsed() >= Duration::from_millis(WINDOW_MS),
        "dead-lettered after {:?}, before the window",
        sent.elapsed()
    );
    assert!(
        keel.child.try_wait().expect("wait").is_none(),
        "keel run exited"
    );

    let reader =
        keel_tests::kafka::consumer(&stack.kafka_bootstrap, "read_committed").expect("consumer");
    let letters = keel_tests::kafka::read_topic(
        &reader,
        &format!("{name}-cassandra-sink-dlq"),
        1,
        PATIENCE,
        Duration::from_secs(2),
    )
    .await
    .expect("dead letters");
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    let header = |name: &str| {
        letter
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == name))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(letter.payload(), Some(&bad[..]), "the bad record's bytes");
    assert_eq!(letter.key(), Some(key.as_bytes()));
    let why = header(dlq_headers::ERROR).expect("keel.error");
    assert!(
        why.contains("schema id 88888888 is unknown to the registry"),
        "{why}"
    );
    assert_eq!(header(dlq_headers::SOURCE_TOPIC), Some(topic.clone()));
    assert_eq!(
        header(dlq_headers::SOURCE_PARTITION),
        Some(partition.to_string())
    );
    assert_eq!(header(dlq_headers::SOURCE_OFFSET), Some(offset.to_string()));
    assert_eq!(
        header(dlq_headers::PROCESSOR).as_deref(),
        Some("cassandra-sink")
    );

    let status = keel.terminate(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "keel run did not stop cleanly: {status:?}"
    );
    run.clean_up(&stack, &name).await;
}
