//! The DSL's steps, through the test driver: filter, a table from a topic with tombstones, a
//! stream–table join, an aggregate, and a re-key through a repartition topic.

use keel_topology::dsl::StreamsBuilder;
use keel_topology::serde::{I64, Utf8};
use keel_topology::{DriverConfig, TestDriver};

#[test]
fn filter_join_against_a_table_and_aggregate() {
    let b = StreamsBuilder::new();
    let prices = b.table("prices", "sku-prices", Utf8, I64);
    b.stream("order-lines", Utf8, I64)
        .filter(|_, qty| *qty > 0)
        .join(&prices, |qty, price| qty * price)
        .aggregate("revenue", Utf8, I64, || 0, |_, line, total| total + line)
        .to("revenue-by-sku", Utf8, I64);
    let topology = b.build().expect("valid");
    assert_eq!(
        topology.sub_topologies().len(),
        1,
        "{}",
        topology.describe()
    );
    let mut d = TestDriver::new(topology).expect("driver");

    let price = |d: &mut TestDriver, sku: &str, p: i64| {
        d.pipe("sku-prices", &sku.to_owned(), &p, 1, &Utf8, &I64)
            .expect("price");
    };
    let line = |d: &mut TestDriver, sku: &str, qty: i64| {
        d.pipe("order-lines", &sku.to_owned(), &qty, 2, &Utf8, &I64)
            .expect("line");
    };
    price(&mut d, "mug", 10);
    price(&mut d, "plate", 4);
    line(&mut d, "mug", 2); // 20
    line(&mut d, "plate", 1); // 4
    line(&mut d, "bowl", 3); // no price: dropped by the inner join
    line(&mut d, "mug", -1); // filtered out
    line(&mut d, "mug", 1); // 20 + 10
    d.pipe_raw("sku-prices", Some(b"plate"), None, 3)
        .expect("tombstone");
    line(&mut d, "plate", 5); // the price is gone: dropped

    let out = d
        .read_output_as("revenue-by-sku", &Utf8, &I64)
        .expect("decodes");
    assert_eq!(
        out,
        vec![
            ("mug".to_owned(), 20),
            ("plate".to_owned(), 4),
            ("mug".to_owned(), 30)
        ]
    );
    assert_eq!(
        d.kv_get("revenue", b"mug").expect("reads"),
        Some(30i64.to_be_bytes().to_vec())
    );
    assert!(d.dead_letters().is_empty());
}

#[test]
fn map_then_repartition_counts_by_the_new_key() {
    let b = StreamsBuilder::new();
    b.stream("lines", Utf8, I64)
        .map(|order_sku: String, qty| {
            let sku = order_sku.split(':').nth(1).unwrap_or("?").to_owned();
            (sku, qty)
        })
        .repartition("by-sku", Utf8, I64)
        .aggregate("units", Utf8, I64, || 0, |_, qty, total| total + qty)
        .to("units-by-sku", Utf8, I64);
    let topology = b.build().expect("valid");
    assert_eq!(
        topology.sub_topologies().len(),
        2,
        "{}",
        topology.describe()
    );
    let config = DriverConfig {
        partitions: [("lines".to_owned(), 4)].into(),
        ..DriverConfig::default()
    };
    let mut d = TestDriver::with_config(topology, config).expect("driver");
    for (key, qty) in [("o1:mug", 2), ("o2:plate", 1), ("o3:mug", 3), ("o4:mug", 1)] {
        d.pipe("lines", &key.to_owned(), &qty, 1, &Utf8, &I64)
            .expect("processed");
    }
    let mut out = d
        .read_output_as("units-by-sku", &Utf8, &I64)
        .expect("decodes");
    out.sort();
    assert_eq!(
        out,
        vec![
            ("mug".into(), 2),
            ("mug".into(), 5),
            ("mug".into(), 6),
            ("plate".into(), 1)
        ]
    );
}
