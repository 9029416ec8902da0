//! The outbox store on PostgreSQL (e.g. `payment_outbox`).

use sqlx::{PgPool, Postgres, Transaction};

use super::{ClaimedBatch, Error, OutboxRow, OutboxStore, Result, checked_table};

/// An outbox table in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgOutbox {
    pool: PgPool,
    claim_sql: String,
    mark_sql: String,
}

impl PgOutbox {
    /// The outbox `table` (e.g. `payment_outbox`) reached through `pool`.
    pub fn new(pool: PgPool, table: &str) -> Result<Self> {
        let table = checked_table(table)?;
        Ok(Self {
            pool,
            claim_sql: format!(
                "SELECT id, aggregate_id, event_type, payload FROM {table} \
                 WHERE status = 'PENDING' ORDER BY created_at, id LIMIT $1 \
                 FOR UPDATE SKIP LOCKED"
            ),
            mark_sql: format!(
                "UPDATE {table} SET status = 'SENT', sent_at = now() WHERE id = ANY($1)"
            ),
        })
    }
}

/// Rows claimed in a PostgreSQL transaction.
#[derive(Debug)]
pub struct PgClaim {
    tx: Transaction<'static, Postgres>,
    rows: Vec<OutboxRow>,
    mark_sql: String,
}

fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::Database { operation, source }
}

impl OutboxStore for PgOutbox {
    type Claim = PgClaim;

    async fn claim_pending(&self, limit: usize) -> Result<PgClaim> {
        let mut tx = self.pool.begin().await.map_err(db("begin a claim"))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = sqlx::query(sqlx::AssertSqlSafe(self.claim_sql.clone()))
            .bind(limit)
            .fetch_all(&mut *tx)
            .await
            .map_err(db("claim pending rows"))?;
        let rows = OutboxRow::read_all(&rows).map_err(db("read pending rows"))?;
        Ok(PgClaim {
            tx,
            rows,
            mark_sql: self.mark_sql.clone(),
        })
    }
}

impl ClaimedBatch for PgClaim {
    fn rows(&self) -> &[OutboxRow] {
        &self.rows
    }

    async fn mark_sent(mut self, ids: &[String]) -> Result<()> {
        sqlx::query(sqlx::AssertSqlSafe(self.mark_sql))
            .bind(ids)
            .execute(&mut *self.tx)
            .await
            .map_err(db("mark rows sent"))?;
        self.tx.commit().await.map_err(db("commit sent rows"))
    }

    async fn release(self) -> Result<()> {
        self.tx.rollback().await.map_err(db("release claimed rows"))
    }
}
