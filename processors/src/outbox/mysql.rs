//! The outbox store on MySQL / MariaDB (e.g. `order_outbox`: `id CHAR(36)`, `payload
//! LONGBLOB`, `status VARCHAR(8)`, `created_at DATETIME(3)`, `sent_at DATETIME(3) NULL`).
//! An index on `(status, created_at, id)` lets the claim lock only the rows it returns.

use sqlx::{MySql, MySqlPool, QueryBuilder, Transaction};

use super::{ClaimedBatch, Error, OutboxRow, OutboxStore, Result, checked_table};

/// An outbox table in MySQL or MariaDB (≥ 10.6).
#[derive(Debug, Clone)]
pub struct MySqlOutbox {
    pool: MySqlPool,
    table: String,
    claim_sql: String,
}

impl MySqlOutbox {
    /// The outbox `table` (e.g. `order_outbox`) reached through `pool`.
    pub fn new(pool: MySqlPool, table: &str) -> Result<Self> {
        let table = checked_table(table)?;
        Ok(Self {
            pool,
            claim_sql: format!(
                "SELECT id, aggregate_id, event_type, payload FROM {table} \
                 WHERE status = 'PENDING' ORDER BY created_at, id LIMIT ? \
                 FOR UPDATE SKIP LOCKED"
            ),
            table,
        })
    }
}

/// Rows claimed in a MySQL transaction.
#[derive(Debug)]
pub struct MySqlClaim {
    tx: Transaction<'static, MySql>,
    rows: Vec<OutboxRow>,
    table: String,
}

fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::Database { operation, source }
}

impl OutboxStore for MySqlOutbox {
    type Claim = MySqlClaim;

    async fn claim_pending(&self, limit: usize) -> Result<MySqlClaim> {
        let mut tx = self.pool.begin().await.map_err(db("begin a claim"))?;
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        let rows = sqlx::query(sqlx::AssertSqlSafe(self.claim_sql.clone()))
            .bind(limit)
            .fetch_all(&mut *tx)
            .await
            .map_err(db("claim pending rows"))?;
        let rows = OutboxRow::read_all(&rows).map_err(db("read pending rows"))?;
        Ok(MySqlClaim {
            tx,
            rows,
            table: self.table.clone(),
        })
    }
}

impl ClaimedBatch for MySqlClaim {
    fn rows(&self) -> &[OutboxRow] {
        &self.rows
    }

    async fn mark_sent(mut self, ids: &[String]) -> Result<()> {
        if !ids.is_empty() {
            let mut update: QueryBuilder<MySql> = QueryBuilder::new(format!(
                "UPDATE {} SET status = 'SENT', sent_at = NOW(3) WHERE id IN (",
                self.table
            ));
            let mut list = update.separated(", ");
            for id in ids {
                list.push_bind(id.clone());
            }
            update.push(")");
            update
                .build()
                .execute(&mut *self.tx)
                .await
                .map_err(db("mark rows sent"))?;
        }
        self.tx.commit().await.map_err(db("commit sent rows"))
    }

    async fn release(self) -> Result<()> {
        self.tx.rollback().await.map_err(db("release claimed rows"))
    }
}
