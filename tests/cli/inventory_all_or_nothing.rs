//! All-or-nothing across SKUs for a direct `POST /inventory/reserve`, through the real API, the
//! inventory processor (one partition per SKU), its order coordinator and the Cassandra mirror:
//! a reservation of two SKUs of which one is short ends with nothing held on either (the held
//! line is released with reason `COMPENSATION`, and the hold row is gone from Cassandra); one
//! whose lines are all available stays held whole.

mod common;

use std::time::{Duration, Instant};

use common::{Run, wait_ready};
use keel_avro::records::{InventoryReleased, ReleaseReason};
use keel_tests::Stack;
use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use serde_json::{Value, json};

const PLENTY: &str = "SKU-AON-PLENTY";
const SCARCE: &str = "SKU-AON-SCARCE";

/// `GET /inventory/{sku}`'s `held` until it is `want` (or 60 s): the last level seen.
async fn held_until(client: &reqwest::Client, api: &str, sku: &str, want: i64) -> Value {
    let start = Instant::now();
    let mut last = Value::Null;
    while start.elapsed() < Duration::from_secs(60) {
        let r = client
            .get(format!("{api}/inventory/{sku}"))
            .send()
            .await
            .expect("GET /inventory");
        if r.status().is_success() {
            last = r.json().await.expect("a JSON level");
            if last["held"] == want {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("{sku}: held never became {want}; last seen: {last}");
}

async fn reserve(client: &reqwest::Client, api: &str, body: &Value) {
    let r = client
        .post(format!("{api}/inventory/reserve"))
        .json(body)
        .send()
        .await
        .expect("POST /inventory/reserve");
    assert_eq!(
        r.status().as_u16(),
        202,
        "{}",
        r.text().await.unwrap_or_default()
    );
}

/// The hold rows of `order` in Cassandra's mirror, as (sku, quantity).
async fn hold_rows(
    session: &scylla::client::session::Session,
    keyspace: &str,
    order: &str,
) -> Vec<(String, i32)> {
    let mut rows = Vec::new();
    for sku in [PLENTY, SCARCE] {
        let result = session
            .query_unpaged(
                format!("SELECT sku, quantity FROM {keyspace}.reservation WHERE sku = ? AND order_id = ?"),
                (sku, order),
            )
            .await
            .expect("reservation")
            .into_rows_result()
            .expect("rows");
        for row in result.rows::<(String, Option<i32>)>().expect("typed rows") {
            let (sku, quantity) = row.expect("a row");
            rows.push((sku, quantity.unwrap_or(0)));
        }
    }
    rows
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reservation_with_one_short_line_holds_nothing_on_either_sku() {
    let stack = Stack::from_env();
    let (name, run) = Run::new(&stack).await;
    run.ok(&["inventory", "seed", "--skus", PLENTY, "--quantity", "5"]);
    run.ok(&["inventory", "seed", "--skus", SCARCE, "--quantity", "1"]);
    let _psp = run.spawn("psp-mock", &["psp-mock"]);
    let mut keel = run.spawn("keel run", &["run"]);
    let client = reqwest::Client::new();
    wait_ready(&client, &run.api, Duration::from_secs(120)).await;
    held_until(&client, &run.api, PLENTY, 0).await;
    held_until(&client, &run.api, SCARCE, 0).await;

    // Watch inventory.released.v1 from its start for the short order's release.
    let released_topic = format!("{name}.inventory.released.v1");
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka_bootstrap)
        .set("group.id", format!("{name}-aon-test"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&released_topic]).expect("subscribe");
    let codec = keel_avro::Codec::new(keel_avro::RegistryConfig::with_url(
        stack.registry_url.clone(),
    ))
    .expect("codec");

    // 2 of PLENTY can be held, 3 of SCARCE cannot (1 in stock).
    reserve(
        &client,
        &run.api,
        &json!({"orderId": "aon-short", "lines": [
            {"sku": PLENTY, "quantity": 2}, {"sku": SCARCE, "quantity": 3}]}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let released: InventoryReleased = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the held line of aon-short was never released on {released_topic}"
        );
        let Ok(Ok(m)) = tokio::time::timeout(left, consumer.recv()).await else {
            continue;
        };
        if m.key() != Some(b"aon-short".as_slice()) {
            continue;
        }
        break codec
            .decode_from(&released_topic, m.payload().expect("a value"))
            .await
            .expect("decodes");
    };
    assert_eq!(
        (released.sku.as_str(), released.quantity, released.reason),
        (PLENTY, 2, ReleaseReason::Compensation)
    );
    // The API's view and Cassandra's rows agree: nothing of the order is held on either SKU.
    let plenty = held_until(&client, &run.api, PLENTY, 0).await;
    assert_eq!(plenty["available"], 5, "{plenty}");
    let scarce = held_until(&client, &run.api, SCARCE, 0).await;
    assert_eq!(scarce["available"], 1, "{scarce}");
    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_node(&stack.cassandra_node)
        .build()
        .await
        .expect("cassandra");
    assert_eq!(
        hold_rows(&session, &run.keyspace, "aon-short").await,
        [],
        "no hold row of the short order is left"
    );

    // A reservation whose lines can all be held stays held, whole.
    reserve(
        &client,
        &run.api,
        &json!({"orderId": "aon-whole", "lines": [
            {"sku": PLENTY, "quantity": 2}, {"sku": SCARCE, "quantity": 1}]}),
    )
    .await;
    held_until(&client, &run.api, PLENTY, 2).await;
    held_until(&client, &run.api, SCARCE, 1).await;
    let mut rows = hold_rows(&session, &run.keyspace, "aon-whole").await;
    rows.sort();
    assert_eq!(rows, [(PLENTY.to_owned(), 2), (SCARCE.to_owned(), 1)]);

    let status = keel
        .terminate(Duration::from_secs(60))
        .expect("stops on SIGTERM");
    assert!(status.success(), "keel run exited with {status}");
    run.clean_up(&stack, &name).await;
}
