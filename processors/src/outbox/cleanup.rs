//! Outbox clean-up: deletes the rows that are on Kafka and older than a retention, and never a
//! row that is not shipped yet (ADR 0003, "Open: outbox clean-up"; ADR 0005).
//!
//! When is a row *shipped*?
//! - `[outbox].mode = "relay"`: once the relay marked it `SENT` (it does so only after Kafka
//!   acknowledged every record of the batch). Deleted: `status = 'SENT' AND sent_at` older than
//!   the retention. A `PENDING` row is never touched.
//! - `"debezium"`: rows stay `PENDING` forever (the connector does not write back). A row is
//!   shipped once the connector's **committed** source position — what a restarted connector
//!   resumes from, `GET /connectors/{name}/offsets` (Kafka Connect ≥ 3.6): `ts_sec` of the
//!   MariaDB binlog position, `ts_usec` of the PostgreSQL WAL position — is past its commit. Rows
//!   carry their creation time, not their commit position, and a transaction commits after it
//!   inserted its row, so the watermark is that source time minus `position_margin_ms` (longer
//!   than any transaction is open). Deleted: `created_at` older than the retention **and**
//!   older than the watermark. No watermark — Connect unreachable, the connector missing, no
//!   offsets yet, a snapshot not completed, or (PostgreSQL) its replication slot missing or
//!   lost — deletes nothing: an outage of Connect, however long, never loses a row.
//!
//! Deletes do not reach Kafka: the outbox connectors skip deletes (`skipped.operations`), and
//! the relay reads only `PENDING` rows. Rows go in batches of `batch_size` per statement, every
//! `interval_ms`, so a large backlog never holds long locks.

use std::future::Future;
use std::time::Duration;

use serde_json::Value;
use sqlx::{MySqlPool, PgPool};
use tokio_util::sync::CancellationToken;

use super::{Error, Result, checked_table};

/// How rows are known to be shipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CleanupMode {
    /// The relay marks shipped rows `SENT`.
    Relay,
    /// Debezium reads them; the connector's committed position says how far.
    Debezium,
}

/// The clean-up's settings (`[outbox].retention_ms`, `cleanup_interval_ms`,
/// `position_margin_ms`). Durations in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupConfig {
    pub mode: CleanupMode,
    /// Rows younger than this are kept, shipped or not. 0 turns the clean-up off.
    pub retention_ms: u64,
    /// How often a round runs.
    pub interval_ms: u64,
    /// Debezium: subtracted from the connector's committed source time.
    pub position_margin_ms: u64,
    /// Rows deleted per statement.
    pub batch_size: u32,
}

impl Default for CleanupConfig {
    fn default() -> Self {
        Self {
            mode: CleanupMode::Relay,
            retention_ms: 7 * 24 * 3_600_000,
            interval_ms: 60_000,
            position_margin_ms: 600_000,
            batch_size: 1_000,
        }
    }
}

/// How far a connector has durably read its source.
pub trait ShippedUpTo: Send + Sync {
    /// The source commit time (ms since the epoch) of the connector's committed position;
    /// `None` when it is not known (then nothing is deleted).
    fn shipped_up_to(&self) -> impl Future<Output = Option<i64>> + Send;
}

/// The committed position of a Kafka Connect connector, from its REST API.
#[derive(Debug, Clone)]
pub struct ConnectOffsets {
    http: reqwest::Client,
    url: String,
    connector: String,
}

impl ConnectOffsets {
    /// `connect_url` is Connect's REST base URL (e.g. `http://127.0.0.1:8083`).
    pub fn new(connect_url: &str, connector: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            url: connect_url.trim_end_matches('/').to_owned(),
            connector: connector.to_owned(),
        }
    }
}

impl ShippedUpTo for ConnectOffsets {
    async fn shipped_up_to(&self) -> Option<i64> {
        let url = format!("{}/connectors/{}/offsets", self.url, self.connector);
        let response = match self.http.get(&url).send().await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                tracing::warn!(connector = self.connector, status = %r.status(),
                    "outbox clean-up: no committed offsets; deleting nothing");
                return None;
            }
            Err(e) => {
                tracing::warn!(connector = self.connector, error = %e,
                    "outbox clean-up: Kafka Connect unreachable; deleting nothing");
                return None;
            }
        };
        let body: Value = response.json().await.ok()?;
        source_time_ms(&body)
    }
}

/// The source time (ms) of a connector's committed offsets, as `GET
/// /connectors/{name}/offsets` returns them (`{"offsets": [{"partition": {…}, "offset":
/// {…}}]}`): `ts_usec` (PostgreSQL) or `ts_sec` (MySQL/MariaDB) of each source partition, the
/// oldest of them. `None` without offsets, or while a snapshot has not completed (its offsets
/// carry the snapshot's time, not a streaming position).
pub fn source_time_ms(body: &Value) -> Option<i64> {
    let offsets = body.get("offsets")?.as_array()?;
    let mut oldest: Option<i64> = None;
    for entry in offsets {
        let offset = entry.get("offset")?;
        let in_snapshot = offset
            .get("snapshot")
            // `true`, or the snapshot's kind (`"INITIAL"`, …) in recent Debezium versions.
            .is_some_and(|s| {
                s.as_bool() == Some(true)
                    || s.as_str().is_some_and(|t| !t.is_empty() && t != "false")
            })
            && offset.get("snapshot_completed").and_then(Value::as_bool) != Some(true);
        if in_snapshot {
            return None;
        }
        let ms = if let Some(us) = offset.get("ts_usec").and_then(Value::as_i64) {
            us.div_euclid(1_000)
        } else {
            offset
                .get("ts_sec")
                .and_then(Value::as_i64)?
                .checked_mul(1_000)?
        };
        oldest = Some(oldest.map_or(ms, |o| o.min(ms)));
    }
    oldest
}

/// The rows may go when created before this time (ms), or `None`: keep everything. Pure: the
/// rule of the module docs for the Debezium mode.
pub fn debezium_cutoff_ms(
    now_ms: i64,
    shipped_up_to_ms: Option<i64>,
    config: &CleanupConfig,
) -> Option<i64> {
    let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let shipped = shipped_up_to_ms?.saturating_sub(ms(config.position_margin_ms));
    let retained = now_ms.saturating_sub(ms(config.retention_ms));
    Some(shipped.min(retained))
}

/// One outbox table, as the clean-up sees it.
pub trait CleanupStore: Send + Sync {
    /// Delete up to `limit` `SENT` rows sent more than `retention_ms` ago; returns how many.
    fn delete_sent(
        &self,
        retention_ms: u64,
        limit: u32,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Delete up to `limit` rows created before `before_ms` (ms since the epoch, UTC),
    /// whatever their status; returns how many.
    fn delete_created_before(
        &self,
        before_ms: i64,
        limit: u32,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Whether the source position the connector resumes from is still there (PostgreSQL: the
    /// replication slot exists and is not lost). Anything else: `true`.
    fn position_usable(&self) -> impl Future<Output = Result<bool>> + Send;
}

fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::Database { operation, source }
}

/// A PostgreSQL outbox table (e.g. `payment_outbox`); `slot` is the Debezium connector's
/// replication slot, checked before deleting in the Debezium mode.
#[derive(Debug, Clone)]
pub struct PgCleanup {
    pool: PgPool,
    table: String,
    slot: Option<String>,
}

impl PgCleanup {
    pub fn new(pool: PgPool, table: &str, slot: Option<String>) -> Result<Self> {
        Ok(Self {
            pool,
            table: checked_table(table)?,
            slot,
        })
    }
}

impl CleanupStore for PgCleanup {
    async fn delete_sent(&self, retention_ms: u64, limit: u32) -> Result<u64> {
        let sql = format!(
            "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE status = 'SENT' \
             AND sent_at < now() - make_interval(secs => $1) LIMIT $2)",
            t = self.table
        );
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(Duration::from_millis(retention_ms).as_secs_f64())
            .bind(i64::from(limit))
            .execute(&self.pool)
            .await
            .map_err(db("delete sent rows"))?;
        Ok(done.rows_affected())
    }

    async fn delete_created_before(&self, before_ms: i64, limit: u32) -> Result<u64> {
        let sql = format!(
            "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} \
             WHERE created_at < to_timestamp($1::bigint / 1000.0) LIMIT $2)",
            t = self.table
        );
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(before_ms)
            .bind(i64::from(limit))
            .execute(&self.pool)
            .await
            .map_err(db("delete shipped rows"))?;
        Ok(done.rows_affected())
    }

    async fn position_usable(&self) -> Result<bool> {
        let Some(slot) = &self.slot else {
            return Ok(true);
        };
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1")
                .bind(slot)
                .fetch_optional(&self.pool)
                .await
                .map_err(db("look up the replication slot"))?;
        Ok(matches!(row, Some((status,)) if status.as_deref() != Some("lost")))
    }
}

/// A MySQL/MariaDB outbox table (e.g. `order_outbox`; `created_at` is UTC).
#[derive(Debug, Clone)]
pub struct MySqlCleanup {
    pool: MySqlPool,
    table: String,
}

impl MySqlCleanup {
    pub fn new(pool: MySqlPool, table: &str) -> Result<Self> {
        Ok(Self {
            pool,
            table: checked_table(table)?,
        })
    }
}

impl CleanupStore for MySqlCleanup {
    async fn delete_sent(&self, retention_ms: u64, limit: u32) -> Result<u64> {
        // `sent_at` is written with NOW(3) by the relay.
        let sql = format!(
            "DELETE FROM {} WHERE status = 'SENT' \
             AND sent_at < NOW(3) - INTERVAL ? MICROSECOND LIMIT ?",
            self.table
        );
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(i64::try_from(retention_ms.saturating_mul(1_000)).unwrap_or(i64::MAX))
            .bind(limit)
            .execute(&self.pool)
            .await
            .map_err(db("delete sent rows"))?;
        Ok(done.rows_affected())
    }

    async fn delete_created_before(&self, before_ms: i64, limit: u32) -> Result<u64> {
        let before = chrono::DateTime::from_timestamp_millis(before_ms)
            .unwrap_or_default()
            .format("%Y-%m-%d %H:%M:%S%.3f")
            .to_string();
        let sql = format!("DELETE FROM {} WHERE created_at < ? LIMIT ?", self.table);
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(before)
            .bind(limit)
            .execute(&self.pool)
            .await
            .map_err(db("delete shipped rows"))?;
        Ok(done.rows_affected())
    }

    async fn position_usable(&self) -> Result<bool> {
        Ok(true)
    }
}

/// One clean-up round: every eligible row, in batches. Returns how many rows were deleted.
pub async fn cleanup_once<S: CleanupStore, P: ShippedUpTo>(
    store: &S,
    shipped: &P,
    config: &CleanupConfig,
    now_ms: i64,
) -> Result<u64> {
    if config.retention_ms == 0 {
        return Ok(0);
    }
    let limit = config.batch_size.max(1);
    let mut total = 0;
    loop {
        let deleted = match config.mode {
            CleanupMode::Relay => store.delete_sent(config.retention_ms, limit).await?,
            CleanupMode::Debezium => {
                if !store.position_usable().await? {
                    tracing::warn!(
                        "outbox clean-up: the connector's replication slot is missing or lost; \
                         deleting nothing"
                    );
                    return Ok(total);
                }
                let Some(before) =
                    debezium_cutoff_ms(now_ms, shipped.shipped_up_to().await, config)
                else {
                    return Ok(total);
                };
                store.delete_created_before(before, limit).await?
            }
        };
        total += deleted;
        if deleted < u64::from(limit) {
            return Ok(total);
        }
    }
}

/// Runs [`cleanup_once`] every `interval_ms` until `shutdown`. A failed round is logged and
/// retried on the next tick; rows are only ever deleted by a round that succeeded in full.
pub async fn run_cleanup<S: CleanupStore, P: ShippedUpTo>(
    store: S,
    shipped: P,
    config: CleanupConfig,
    table: &str,
    shutdown: CancellationToken,
) -> Result<()> {
    if config.retention_ms == 0 {
        return Ok(());
    }
    let interval = Duration::from_millis(config.interval_ms.max(1));
    loop {
        let now_ms = chrono::Utc::now().timestamp_millis();
        match cleanup_once(&store, &shipped, &config, now_ms).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(table, deleted, "outbox rows cleaned up"),
            Err(e) => tracing::warn!(table, error = %e, "outbox clean-up round failed"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const CONFIG: CleanupConfig = CleanupConfig {
        mode: CleanupMode::Debezium,
        retention_ms: 1_000,
        interval_ms: 1_000,
        position_margin_ms: 100,
        batch_size: 10,
    };

    #[test]
    fn the_committed_source_time_is_read_from_either_connectors_offsets() {
        let mariadb = json!({"offsets": [{"partition": {"server": "outbox"},
            "offset": {"ts_sec": 1_700_000_000, "file": "mysql-bin.000003", "pos": 1234}}]});
        assert_eq!(source_time_ms(&mariadb), Some(1_700_000_000_000));
        let postgres = json!({"offsets": [{"partition": {"server": "outbox"},
            "offset": {"ts_usec": 1_700_000_000_123_456_i64, "lsn": 987_654}}]});
        assert_eq!(source_time_ms(&postgres), Some(1_700_000_000_123));
        assert_eq!(
            source_time_ms(&json!({"offsets": []})),
            None,
            "nothing committed"
        );
        let snapshot = json!({"offsets": [{"partition": {}, "offset": {"ts_sec": 5,
            "snapshot": true, "snapshot_completed": false}}]});
        assert_eq!(source_time_ms(&snapshot), None, "a snapshot in progress");
        let snapshot = json!({"offsets": [{"partition": {}, "offset": {"ts_sec": 5,
            "snapshot": "INITIAL", "snapshot_completed": false}}]});
        assert_eq!(source_time_ms(&snapshot), None, "a snapshot in progress");
        let done = json!({"offsets": [{"partition": {}, "offset": {"ts_sec": 5,
            "snapshot": "INITIAL", "snapshot_completed": true}}]});
        assert_eq!(source_time_ms(&done), Some(5_000), "the snapshot completed");
    }

    #[test]
    fn the_cutoff_is_the_older_of_the_retention_and_the_committed_position() {
        // Connect is ahead: the retention decides.
        assert_eq!(
            debezium_cutoff_ms(10_000, Some(9_900), &CONFIG),
            Some(9_000)
        );
        // Connect was down since t=2000: nothing newer than its position (minus the margin)
        // goes, however old.
        assert_eq!(
            debezium_cutoff_ms(100_000, Some(2_000), &CONFIG),
            Some(1_900)
        );
        // Unknown position: nothing goes.
        assert_eq!(debezium_cutoff_ms(100_000, None, &CONFIG), None);
    }
}
