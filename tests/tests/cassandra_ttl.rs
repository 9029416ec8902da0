//! Cassandra through the `scylla` driver: rows written `USING TTL` expire, and a lightweight
//! transaction (`IF NOT EXISTS`) applies once and is refused the second time — the two
//! properties Keel's inventory holds rely on.

use std::time::Duration;

use keel_tests::{Stack, unique};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

async fn session_with_table(stack: &Stack) -> anyhow::Result<(Session, String)> {
    let session = SessionBuilder::new()
        .known_node(&stack.cassandra_node)
        .connection_timeout(Duration::from_secs(10))
        .build()
        .await?;
    let ks = unique("ks");
    session
        .query_unpaged(
            format!(
                "CREATE KEYSPACE {ks} WITH replication = \
                 {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
            ),
            &[],
        )
        .await?;
    session
        .query_unpaged(
            format!("CREATE TABLE {ks}.hold (sku text, order_id text, qty int, PRIMARY KEY (sku, order_id))"),
            &[],
        )
        .await?;
    Ok((session, ks))
}

async fn count_holds(session: &Session, ks: &str, sku: &str) -> anyhow::Result<usize> {
    let rows = session
        .query_unpaged(
            format!("SELECT order_id, qty FROM {ks}.hold WHERE sku = ?"),
            (sku,),
        )
        .await?
        .into_rows_result()?;
    Ok(rows.rows::<(String, i32)>()?.count())
}

#[tokio::test]
async fn a_row_written_with_ttl_is_readable_then_expires() -> anyhow::Result<()> {
    let stack = Stack::from_env();
    let (session, ks) = session_with_table(&stack).await?;
    session
        .query_unpaged(
            format!("INSERT INTO {ks}.hold (sku, order_id, qty) VALUES (?, ?, ?) USING TTL 2"),
            ("sku-1", "order-1", 2_i32),
        )
        .await?;

    let rows = session
        .query_unpaged(
            format!("SELECT qty, TTL(qty) FROM {ks}.hold WHERE sku = ? AND order_id = ?"),
            ("sku-1", "order-1"),
        )
        .await?
        .into_rows_result()?;
    let (qty, ttl) = rows.single_row::<(i32, Option<i32>)>()?;
    assert_eq!(qty, 2);
    assert!(
        matches!(ttl, Some(1..=2)),
        "the row carries its TTL, got {ttl:?}"
    );

    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(
        count_holds(&session, &ks, "sku-1").await?,
        0,
        "the row must be gone after its TTL"
    );
    session
        .query_unpaged(format!("DROP KEYSPACE {ks}"), &[])
        .await?;
    Ok(())
}

#[tokio::test]
async fn insert_if_not_exists_applies_once_and_is_refused_twice() -> anyhow::Result<()> {
    let stack = Stack::from_env();
    let (session, ks) = session_with_table(&stack).await?;
    let insert =
        format!("INSERT INTO {ks}.hold (sku, order_id, qty) VALUES (?, ?, ?) IF NOT EXISTS");

    let applied = |result: scylla::response::query_result::QueryResult| -> anyhow::Result<bool> {
        let rows = result.into_rows_result()?;
        // The first column of an LWT answer is `[applied]`; the rest is the existing row.
        let specs = rows.column_specs();
        anyhow::ensure!(
            specs.get_by_index(0).map(|c| c.name()) == Some("[applied]"),
            "an LWT answer starts with [applied]"
        );
        let row = rows.first_row::<scylla::value::Row>()?;
        match row.columns.first() {
            Some(Some(scylla::value::CqlValue::Boolean(b))) => Ok(*b),
            other => anyhow::bail!("unexpected [applied] value {other:?}"),
        }
    };

    let first = session
        .query_unpaged(insert.clone(), ("sku-2", "order-7", 1_i32))
        .await?;
    assert!(applied(first)?, "the first IF NOT EXISTS insert applies");

    let second = session
        .query_unpaged(insert, ("sku-2", "order-7", 5_i32))
        .await?;
    assert!(!applied(second)?, "the second one is refused");

    let rows = session
        .query_unpaged(
            format!("SELECT qty FROM {ks}.hold WHERE sku = ? AND order_id = ?"),
            ("sku-2", "order-7"),
        )
        .await?
        .into_rows_result()?;
    assert_eq!(
        rows.single_row::<(i32,)>()?.0,
        1,
        "the refused insert changed nothing"
    );
    assert_eq!(count_holds(&session, &ks, "sku-2").await?, 1);
    session
        .query_unpaged(format!("DROP KEYSPACE {ks}"), &[])
        .await?;
    Ok(())
}
