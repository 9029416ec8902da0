//! The ledger's SQL. Every function takes the connection or transaction it runs in; the caller
//! (`service`) decides the transaction boundaries. Queries are checked at runtime (no database
//! is needed to build Keel).

use sqlx::{PgConnection, PgPool, Row};

use super::logic::{PaymentState, PaymentStatus};
use super::{Error, Result};

fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::Database { operation, source }
}

pub(crate) async fn migrate(pg: &PgPool) -> Result<()> {
    let mut migrator = sqlx::migrate!("./migrations/payments");
    // Other services may keep their own migrations in the same database.
    migrator.set_ignore_missing(true);
    migrator.run(pg).await.map_err(Error::Migrate)
}

/// A `payments` row with its state.
#[derive(Debug, Clone)]
pub(crate) struct PaymentRow {
    pub payment_id: String,
    pub order_id: String,
    pub customer_id: String,
    pub payment_method: String,
    pub state: PaymentState,
}

const SELECT_PAYMENT: &str = "SELECT p.payment_id, p.order_id, p.customer_id, p.amount_minor, \
     p.currency::TEXT AS currency, p.payment_method, p.status, p.psp_reference, \
     p.captured_minor, p.refunded_minor, p.refund_reserved_minor AS reserved \
     FROM payments p";

fn payment_row(row: &sqlx::postgres::PgRow) -> Result<PaymentRow> {
    let decode = |source| Error::Database {
        operation: "read a payment",
        source,
    };
    let status: String = row.try_get("status").map_err(decode)?;
    let status = PaymentStatus::parse(&status).ok_or_else(|| {
        decode(sqlx::Error::Decode(
            format!("unknown payment status {status:?}").into(),
        ))
    })?;
    Ok(PaymentRow {
        payment_id: row.try_get("payment_id").map_err(decode)?,
        order_id: row.try_get("order_id").map_err(decode)?,
        customer_id: row.try_get("customer_id").map_err(decode)?,
        payment_method: row.try_get("payment_method").map_err(decode)?,
        state: PaymentState {
            status,
            amount_minor: row.try_get("amount_minor").map_err(decode)?,
            currency: row.try_get("currency").map_err(decode)?,
            captured_minor: row.try_get("captured_minor").map_err(decode)?,
            refunded_minor: row.try_get("refunded_minor").map_err(decode)?,
            refund_reserved_minor: row.try_get("reserved").map_err(decode)?,
            psp_reference: row.try_get("psp_reference").map_err(decode)?,
        },
    })
}

/// The payment `payment_id`, locked (`FOR UPDATE`) until the transaction ends.
///
/// Every column read here is a column of the locked row (no sub-select): under READ COMMITTED
/// a statement that waited for the lock re-reads the locked row at its newest version, but a
/// sub-select would still see the snapshot from before the wait (migration 0004).
pub(crate) async fn lock_payment(
    conn: &mut PgConnection,
    payment_id: &str,
) -> Result<Option<PaymentRow>> {
    let sql = payment_query("WHERE p.payment_id = $1 FOR UPDATE OF p");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(payment_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("lock a payment"))?;
    row.as_ref().map(payment_row).transpose()
}

/// The payment whose PSP reference is `psp_reference`, locked.
pub(crate) async fn lock_payment_by_psp_reference(
    conn: &mut PgConnection,
    psp_reference: &str,
) -> Result<Option<PaymentRow>> {
    let sql = payment_query("WHERE p.psp_reference = $1 LIMIT 1 FOR UPDATE OF p");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(psp_reference)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("lock a payment by PSP reference"))?;
    row.as_ref().map(payment_row).transpose()
}

fn payment_query(tail: &str) -> String {
    format!("{SELECT_PAYMENT} {tail}")
}

/// Insert a new payment; false if the payment (or another one for the order) exists.
pub(crate) async fn insert_payment(conn: &mut PgConnection, row: &PaymentRow) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO payments (payment_id, order_id, customer_id, amount_minor, currency, \
         payment_method, status) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
    )
    .bind(&row.payment_id)
    .bind(&row.order_id)
    .bind(&row.customer_id)
    .bind(row.state.amount_minor)
    .bind(&row.state.currency)
    .bind(&row.payment_method)
    .bind(row.state.status.as_str())
    .execute(&mut *conn)
    .await
    .map_err(db("insert a payment"))?;
    Ok(done.rows_affected() == 1)
}

/// Store `state` (status, PSP reference, captured, refunded and reserved amounts) of
/// `payment_id`.
pub(crate) async fn save_state(
    conn: &mut PgConnection,
    payment_id: &str,
    state: &PaymentState,
) -> Result<()> {
    sqlx::query(
        "UPDATE payments SET status = $2, psp_reference = $3, captured_minor = $4, \
         refunded_minor = $5, refund_reserved_minor = $6, updated_at = now() \
         WHERE payment_id = $1",
    )
    .bind(payment_id)
    .bind(state.status.as_str())
    .bind(&state.psp_reference)
    .bind(state.captured_minor)
    .bind(state.refunded_minor)
    .bind(state.refund_reserved_minor)
    .execute(&mut *conn)
    .await
    .map_err(db("update a payment"))?;
    Ok(())
}

/// Whether `command_id` was applied already.
pub(crate) async fn is_processed(pg: &PgPool, command_id: &str) -> Result<bool> {
    let row = sqlx::query("SELECT 1 FROM processed_commands WHERE command_id = $1")
        .bind(command_id)
        .fetch_optional(pg)
        .await
        .map_err(db("look up a processed command"))?;
    Ok(row.is_some())
}

/// Record `command_id` as applied; false if it already was (the caller then rolls back).
pub(crate) async fn mark_processed(conn: &mut PgConnection, command_id: &str) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO processed_commands (command_id) VALUES ($1) ON CONFLICT DO NOTHING",
    )
    .bind(command_id)
    .execute(&mut *conn)
    .await
    .map_err(db("record a processed command"))?;
    Ok(done.rows_affected() == 1)
}

/// The kind of a PSP attempt (`payment_attempts.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttemptKind {
    Authorize,
    Capture,
    Void,
    Refund,
}

impl AttemptKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authorize => "AUTHORIZE",
            Self::Capture => "CAPTURE",
            Self::Void => "VOID",
            Self::Refund => "REFUND",
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Authorize => "authorize",
            Self::Capture => "capture",
            Self::Void => "void",
            Self::Refund => "refund",
        }
    }
}

/// The outcome of a PSP attempt (`payment_attempts.outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttemptOutcome {
    Pending,
    Succeeded,
    Declined,
    Failed,
    Timeout,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Succeeded => "SUCCEEDED",
            Self::Declined => "DECLINED",
            Self::Failed => "FAILED",
            Self::Timeout => "TIMEOUT",
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Declined => "declined",
            Self::Failed => "failed",
            Self::Timeout => "timeout",
        }
    }
}

/// A new attempt row.
#[derive(Debug, Clone)]
pub(crate) struct NewAttempt<'a> {
    pub payment_id: &'a str,
    pub command_id: Option<&'a str>,
    pub idempotency_key: &'a str,
    pub kind: AttemptKind,
    pub outcome: AttemptOutcome,
    pub decline_code: Option<&'a str>,
    pub psp_event_id: Option<&'a str>,
    /// A PSP message that changed nothing (see migration 0003): kept for audit only.
    pub stale: bool,
}

/// Insert an attempt, or find the one with the same idempotency key (a replay after a crash
/// reuses it, and with it the key the PSP saw). Returns its id and whether it is new.
pub(crate) async fn begin_attempt(
    conn: &mut PgConnection,
    attempt: &NewAttempt<'_>,
) -> Result<(String, bool)> {
    let id = uuid::Uuid::new_v4().to_string();
    let finished = attempt.outcome != AttemptOutcome::Pending;
    let inserted = sqlx::query(
        "INSERT INTO payment_attempts (attempt_id, payment_id, command_id, idempotency_key, kind, \
         outcome, decline_code, psp_event_id, latency_ms, finished_at, stale) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, CASE WHEN $9 THEN 0 END, \
                 CASE WHEN $9 THEN now() END, $10) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&id)
    .bind(attempt.payment_id)
    .bind(attempt.command_id)
    .bind(attempt.idempotency_key)
    .bind(attempt.kind.as_str())
    .bind(attempt.outcome.as_str())
    .bind(attempt.decline_code)
    .bind(attempt.psp_event_id)
    .bind(finished)
    .bind(attempt.stale)
    .execute(&mut *conn)
    .await
    .map_err(db("insert a PSP attempt"))?;
    if inserted.rows_affected() == 1 {
        return Ok((id, true));
    }
    let existing: Option<String> =
        sqlx::query_scalar("SELECT attempt_id FROM payment_attempts WHERE idempotency_key = $1")
            .bind(attempt.idempotency_key)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db("find a PSP attempt"))?;
    Ok((existing.unwrap_or_default(), false))
}

/// Whether a callback event was recorded already.
pub(crate) async fn has_event(conn: &mut PgConnection, psp_event_id: &str) -> Result<bool> {
    let row = sqlx::query("SELECT 1 FROM payment_attempts WHERE psp_event_id = $1")
        .bind(psp_event_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("look up a PSP event"))?;
    Ok(row.is_some())
}

/// Record the outcome of an attempt.
pub(crate) async fn finish_attempt(
    conn: &mut PgConnection,
    attempt_id: &str,
    outcome: AttemptOutcome,
    decline_code: Option<&str>,
    latency_ms: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE payment_attempts SET outcome = $2, decline_code = $3, latency_ms = $4, \
         finished_at = now() WHERE attempt_id = $1",
    )
    .bind(attempt_id)
    .bind(outcome.as_str())
    .bind(decline_code)
    .bind(latency_ms)
    .execute(&mut *conn)
    .await
    .map_err(db("finish a PSP attempt"))?;
    Ok(())
}

/// Settle the payment's pending authorization attempt (answered `pending` earlier) with the
/// outcome its callback reported.
pub(crate) async fn settle_pending_authorization(
    conn: &mut PgConnection,
    payment_id: &str,
    outcome: AttemptOutcome,
    decline_code: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "UPDATE payment_attempts SET outcome = $2, decline_code = $3, finished_at = now() \
         WHERE payment_id = $1 AND kind = 'AUTHORIZE' AND outcome = 'PENDING' \
           AND psp_event_id IS NULL",
    )
    .bind(payment_id)
    .bind(outcome.as_str())
    .bind(decline_code)
    .execute(&mut *conn)
    .await
    .map_err(db("settle a pending authorization"))?;
    Ok(())
}

/// Append an outbox row (status `PENDING`).
pub(crate) async fn insert_outbox(
    conn: &mut PgConnection,
    id: &str,
    aggregate_id: &str,
    event_type: &str,
    payload: &[u8],
) -> Result<()> {
    sqlx::query(
        "INSERT INTO payment_outbox (id, aggregate_id, event_type, payload) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(id)
    .bind(aggregate_id)
    .bind(event_type)
    .bind(payload)
    .execute(&mut *conn)
    .await
    .map_err(db("write an outbox row"))?;
    Ok(())
}

/// The status of a refund (`PENDING`, `SUCCEEDED`, `FAILED`, `REFUSED`) and its amount.
pub(crate) async fn refund_status(
    conn: &mut PgConnection,
    refund_id: &str,
) -> Result<Option<(String, i64)>> {
    let row = sqlx::query("SELECT status, amount_minor FROM refunds WHERE refund_id = $1")
        .bind(refund_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("look up a refund"))?;
    row.map(|r| {
        Ok((
            r.try_get("status").map_err(db("read a refund"))?,
            r.try_get("amount_minor").map_err(db("read a refund"))?,
        ))
    })
    .transpose()
}

/// A new refund row.
#[derive(Debug, Clone)]
pub(crate) struct NewRefund<'a> {
    pub refund_id: &'a str,
    pub payment_id: &'a str,
    pub amount_minor: i64,
    pub reason: &'a str,
    pub status: &'a str,
    pub failure_code: Option<&'a str>,
}

pub(crate) async fn insert_refund(conn: &mut PgConnection, refund: &NewRefund<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO refunds (refund_id, payment_id, amount_minor, reason, status, failure_code) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(refund.refund_id)
    .bind(refund.payment_id)
    .bind(refund.amount_minor)
    .bind(refund.reason)
    .bind(refund.status)
    .bind(refund.failure_code)
    .execute(&mut *conn)
    .await
    .map_err(db("insert a refund"))?;
    Ok(())
}

pub(crate) async fn finish_refund(
    conn: &mut PgConnection,
    refund_id: &str,
    status: &str,
    psp_reference: Option<&str>,
    failure_code: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "UPDATE refunds SET status = $2, psp_reference = $3, failure_code = $4, \
         updated_at = now() WHERE refund_id = $1",
    )
    .bind(refund_id)
    .bind(status)
    .bind(psp_reference)
    .bind(failure_code)
    .execute(&mut *conn)
    .await
    .map_err(db("finish a refund"))?;
    Ok(())
}

/// An authorization attempt that timed out and whose real outcome is not known yet.
#[derive(Debug, Clone)]
pub(crate) struct Unreconciled {
    pub attempt_id: String,
    pub payment_id: String,
    pub idempotency_key: String,
    pub amount_minor: i64,
    pub currency: String,
    pub payment_method: String,
}

pub(crate) async fn unreconciled(pg: &PgPool, limit: i64) -> Result<Vec<Unreconciled>> {
    let rows = sqlx::query(
        "SELECT a.attempt_id, a.payment_id, a.idempotency_key, p.amount_minor, \
         p.currency::TEXT AS currency, p.payment_method \
         FROM payment_attempts a JOIN payments p ON p.payment_id = a.payment_id \
         WHERE a.kind = 'AUTHORIZE' AND a.outcome = 'TIMEOUT' AND a.reconciled_at IS NULL \
         ORDER BY a.started_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pg)
    .await
    .map_err(db("list unreconciled attempts"))?;
    rows.iter()
        .map(|r| {
            let d = |e| Error::Database {
                operation: "read an unreconciled attempt",
                source: e,
            };
            Ok(Unreconciled {
                attempt_id: r.try_get("attempt_id").map_err(d)?,
                payment_id: r.try_get("payment_id").map_err(d)?,
                idempotency_key: r.try_get("idempotency_key").map_err(d)?,
                amount_minor: r.try_get("amount_minor").map_err(d)?,
                currency: r.try_get("currency").map_err(d)?,
                payment_method: r.try_get("payment_method").map_err(d)?,
            })
        })
        .collect()
}

/// The reconciler learned the real outcome of `attempt_id`.
pub(crate) async fn mark_reconciled(conn: &mut PgConnection, attempt_id: &str) -> Result<()> {
    sqlx::query("UPDATE payment_attempts SET reconciled_at = now() WHERE attempt_id = $1")
        .bind(attempt_id)
        .execute(&mut *conn)
        .await
        .map_err(db("mark an attempt reconciled"))?;
    Ok(())
}

/// The payment's authorization has no known outcome (its call never answered): mark its open
/// attempt `TIMEOUT` so the reconciler asks the PSP and voids a late success.
pub(crate) async fn mark_authorization_unknown(
    conn: &mut PgConnection,
    payment_id: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE payment_attempts SET outcome = 'TIMEOUT', finished_at = now() \
         WHERE payment_id = $1 AND kind = 'AUTHORIZE' AND outcome = 'PENDING' \
           AND psp_event_id IS NULL",
    )
    .bind(payment_id)
    .execute(&mut *conn)
    .await
    .map_err(db("mark an authorization unknown"))?;
    Ok(())
}
