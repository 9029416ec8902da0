//! The Cassandra migration of the inventory keyspace run by several processes at once (the
//! instances of a scaled-out `keel run`, or the API and the sink of one), against the real
//! Cassandra of the stack: every migration succeeds, every process can prepare and apply the
//! sink's writes afterwards, on a fresh keyspace and on one from before warehouses.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use keel_processors::inventory::sink::{self, CassandraSinkConfig, Write, Writer};
use scylla::client::session::Session;

/// Processes migrating at once.
const PROCESSES: usize = 4;

async fn sessions(n: usize) -> anyhow::Result<Vec<Session>> {
    let nodes = vec![keel_tests::Stack::from_env().cassandra_node];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(
            sink::connect(&nodes)
                .await
                .context("Cassandra of the stack")?,
        );
    }
    Ok(out)
}

fn config(keyspace: &str) -> CassandraSinkConfig {
    CassandraSinkConfig {
        keyspace: keyspace.to_owned(),
        ..CassandraSinkConfig::default()
    }
}

/// Every process migrates, then at once prepares and applies one hold, as `keel run` does,
/// without waiting for the others.
async fn migrate_at_once_then_write(sessions: &[Session], keyspace: &str) -> anyhow::Result<()> {
    let config = config(keyspace);
    let now_ms = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?;
    let processes = sessions.iter().enumerate().map(|(i, session)| {
        let config = &config;
        async move {
            sink::migrate(session, config)
                .await
                .with_context(|| format!("process {i} migrates"))?;
            let writer = Writer::prepare(session, &config.keyspace)
                .await
                .with_context(|| format!("process {i} prepares the sink's writes"))?;
            let hold = Write::Hold {
                sku: "MUG-1".into(),
                order_id: format!("ord-{i}"),
                quantity: 1,
                expires_at_ms: now_ms + 60_000,
                ttl_s: 60,
                at_us: now_ms * 1_000,
                warehouse: "berlin".into(),
            };
            writer
                .apply(session, &hold)
                .await
                .with_context(|| format!("process {i} writes a hold with its warehouse"))?;
            // The SKU's held figures, in columns an older keyspace gets from the migration.
            for held in [
                Write::Held {
                    sku: "MUG-1".into(),
                    held: 1,
                    version: now_ms * 1_000,
                },
                Write::WarehouseHeld {
                    sku: "MUG-1".into(),
                    warehouse: "berlin".into(),
                    held: 1,
                    version: now_ms * 1_000,
                },
            ] {
                writer
                    .apply(session, &held)
                    .await
                    .with_context(|| format!("process {i} writes the held figures"))?;
            }
            anyhow::Ok(())
        }
    });
    for result in futures::future::join_all(processes).await {
        result?;
    }
    let rows = sessions[0]
        .query_unpaged(
            format!("SELECT order_id, warehouse FROM {keyspace}.reservation WHERE sku = 'MUG-1'"),
            &[],
        )
        .await?
        .into_rows_result()?;
    let mut holds: Vec<(String, Option<String>)> = rows
        .rows::<(String, Option<String>)>()?
        .collect::<Result<_, _>>()?;
    holds.sort();
    let want: Vec<(String, Option<String>)> = (0..sessions.len())
        .map(|i| (format!("ord-{i}"), Some("berlin".to_owned())))
        .collect();
    anyhow::ensure!(holds == want, "holds read back: {holds:?}");
    Ok(())
}

async fn drop_keyspace(session: &Session, keyspace: &str) {
    if let Err(e) = session
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), &[])
        .await
    {
        eprintln!("dropping {keyspace}: {e}");
    }
}

#[tokio::test]
async fn concurrent_migrations_of_a_fresh_keyspace_all_succeed() -> anyhow::Result<()> {
    let sessions = sessions(PROCESSES).await?;
    let keyspace = keel_tests::unique("mig_fresh");
    let result = migrate_at_once_then_write(&sessions, &keyspace).await;
    drop_keyspace(&sessions[0], &keyspace).await;
    result
}

/// A keyspace from before warehouses (no `reservation.warehouse`, no `stock_by_warehouse`),
/// migrated by every process at once: the `ALTER TABLE ... ADD` races. Three rounds, since the
/// race shows itself only in some interleavings.
#[tokio::test]
async fn concurrent_migrations_of_a_keyspace_from_before_warehouses_all_succeed()
-> anyhow::Result<()> {
    let sessions = sessions(PROCESSES).await?;
    for round in 0..3 {
        let keyspace = keel_tests::unique(&format!("mig_old{round}"));
        let old = &sessions[0];
        old.query_unpaged(
            format!(
                "CREATE KEYSPACE {keyspace} WITH replication = \
                 {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
            ),
            &[],
        )
        .await?;
        old.query_unpaged(
            format!(
                "CREATE TABLE {keyspace}.reservation (sku text, order_id text, quantity int, \
                 expires_at timestamp, PRIMARY KEY ((sku), order_id))"
            ),
            &[],
        )
        .await?;
        old.query_unpaged(
            format!(
                "CREATE TABLE {keyspace}.stock_level (sku text PRIMARY KEY, on_hand int, \
                 updated_at timestamp)"
            ),
            &[],
        )
        .await?;
        old.await_schema_agreement().await?;
        let result = migrate_at_once_then_write(&sessions, &keyspace)
            .await
            .with_context(|| format!("round {round}"));
        drop_keyspace(old, &keyspace).await;
        result?;
    }
    Ok(())
}
