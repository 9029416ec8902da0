//! The relay role's outbox clean-up (`keel_processors::outbox::cleanup`): one periodic task per
//! outbox table, `order_outbox` (MariaDB) and `payment_outbox` (PostgreSQL), in either
//! `[outbox].mode`. In the Debezium mode each table is judged by its own connector's committed
//! offsets (`<application_id>-order-outbox`, `<application_id>-payment-outbox`) and the payment
//! outbox by its replication slot too. `[outbox].retention_ms = 0` turns it off.

use std::time::Duration;

use anyhow::Context as _;
use keel_processors::outbox::cleanup::{
    CleanupMode, ConnectOffsets, MySqlCleanup, PgCleanup, run_cleanup,
};

use crate::config::KeelConfig;
use crate::run::Running;

/// Spawns the two clean-up tasks into `running`.
pub async fn spawn(config: &KeelConfig, running: &mut Running) -> anyhow::Result<()> {
    let cleanup = config.outbox.cleanup();
    if cleanup.retention_ms == 0 {
        return Ok(());
    }
    // Small pools of their own: a delete every minute needs one connection.
    let mysql = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy(&config.mysql.url)
        .context("the order outbox clean-up (mysql.url)")?;
    let pg = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy(&config.postgres.url)
        .context("the payment outbox clean-up (postgres.url)")?;
    // Debezium: each table judged by its own connector's committed offsets (and slot).
    let (order_connector, payment_connector, slot) = match cleanup.mode {
        CleanupMode::Debezium => (
            crate::connectors::order_outbox(config)?.name().to_owned(),
            crate::connectors::payment_outbox(config)?.name().to_owned(),
            Some(crate::connectors::payment_slot(config)),
        ),
        CleanupMode::Relay => (String::new(), String::new(), None),
    };
    let store = MySqlCleanup::new(mysql, "order_outbox")?;
    let offsets = ConnectOffsets::new(&config.connect.url, &order_connector);
    let shutdown = running.shutdown.clone();
    running.tasks.spawn(async move {
        let result = run_cleanup(store, offsets, cleanup, "order_outbox", shutdown).await;
        ("order outbox clean-up", result.map_err(anyhow::Error::from))
    });
    let store = PgCleanup::new(pg, "payment_outbox", slot)?;
    let offsets = ConnectOffsets::new(&config.connect.url, &payment_connector);
    let shutdown = running.shutdown.clone();
    running.tasks.spawn(async move {
        let result = run_cleanup(store, offsets, cleanup, "payment_outbox", shutdown).await;
        (
            "payment outbox clean-up",
            result.map_err(anyhow::Error::from),
        )
    });
    Ok(())
}
