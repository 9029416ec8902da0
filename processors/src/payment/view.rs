//! The read side of the ledger, for the ingest API: [`load_payment`] / [`load_payment_by_order`]
//! give one payment with its attempts and refunds (serde, camelCase), [`locate_payment`] finds
//! the payment a PSP callback is about. Read-only; every read is one `REPEATABLE READ`
//! snapshot, so a payment and its attempts and refunds agree with each other.
//!
//! Amounts are minor units with their ISO 4217 code; times are RFC 3339 UTC with milliseconds.
//! Errors: [`super::Error::Database`].

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use utoipa::ToSchema;

use super::{Error, Result};
use crate::orders::MoneyView;

/// One payment as people see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentView {
    pub payment_id: String,
    pub order_id: String,
    pub customer_id: String,
    /// `INTENT`, `AUTHORIZING`, `AUTHORIZED`, `CAPTURED`, `PARTIALLY_REFUNDED`, `REFUNDED`,
    /// `VOIDED` or `FAILED`.
    pub status: String,
    /// What the payment is for.
    pub amount: MoneyView,
    pub captured: MoneyView,
    /// Refunds the PSP confirmed.
    pub refunded: MoneyView,
    /// What may still be refunded: captured minus refunded minus refunds in progress.
    pub refundable: MoneyView,
    /// The PSP's token of the payment method.
    pub payment_method: String,
    /// The PSP's authorization id, once it answered.
    pub psp_reference: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Every call to the PSP and every callback, oldest first.
    pub attempts: Vec<PaymentAttemptView>,
    /// Every refund asked for, oldest first (refused ones included, with their code).
    pub refunds: Vec<RefundView>,
}

/// One call to the PSP, or one callback it sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentAttemptView {
    pub attempt_id: String,
    /// `AUTHORIZE`, `CAPTURE`, `VOID` or `REFUND`.
    pub kind: String,
    /// `PENDING`, `SUCCEEDED`, `DECLINED`, `FAILED` or `TIMEOUT`.
    pub outcome: String,
    /// The PSP's decline code or error text.
    pub decline_code: Option<String>,
    /// How long the PSP took, in milliseconds (0 for a callback; none while pending).
    pub latency_ms: Option<i64>,
    /// The callback's event id, for an attempt a callback reported.
    pub psp_event_id: Option<String>,
    /// A PSP message that arrived after the payment moved past it (e.g. a decline for a
    /// captured payment): kept for audit, changed nothing, not counted as an attempt.
    pub stale: bool,
    pub started_at: String,
    pub finished_at: Option<String>,
}

/// One refund.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefundView {
    pub refund_id: String,
    pub amount: MoneyView,
    pub reason: String,
    /// `PENDING`, `SUCCEEDED`, `FAILED` or `REFUSED`.
    pub status: String,
    /// Why it was refused or failed, e.g. `refund_exceeds_captured`.
    pub failure_code: Option<String>,
    /// The PSP's refund id, once it succeeded.
    pub psp_reference: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// The ids a PSP callback needs to become a command: its payment and the order (the Kafka key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentKeys {
    pub payment_id: String,
    pub order_id: String,
}

fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::Database { operation, source }
}

/// RFC 3339 UTC with milliseconds, `Z`.
fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn money(amount_minor: i64, currency: &str) -> MoneyView {
    MoneyView {
        amount_minor,
        currency: currency.to_owned(),
    }
}

/// The payment `payment_id`, or `None` if the ledger has no such payment.
pub async fn load_payment(pg: &PgPool, payment_id: &str) -> Result<Option<PaymentView>> {
    load_where(pg, "p.payment_id = $1", payment_id).await
}

/// The payment of order `order_id` (one per order), or `None`.
pub async fn load_payment_by_order(pg: &PgPool, order_id: &str) -> Result<Option<PaymentView>> {
    load_where(pg, "p.order_id = $1", order_id).await
}

/// The payment a callback is about: the one whose id is `reference` (the merchant reference
/// Keel sent when authorizing), else the one whose PSP reference is `authorization_id`.
pub async fn locate_payment(
    pg: &PgPool,
    reference: &str,
    authorization_id: &str,
) -> Result<Option<PaymentKeys>> {
    let row = sqlx::query(
        "SELECT payment_id, order_id FROM payments WHERE payment_id = $1 OR psp_reference = $2 \
         ORDER BY (payment_id = $1) DESC LIMIT 1",
    )
    .bind(reference)
    .bind(authorization_id)
    .fetch_optional(pg)
    .await
    .map_err(db("locate a payment"))?;
    row.map(|r| {
        Ok(PaymentKeys {
            payment_id: r.try_get("payment_id").map_err(db("read a payment id"))?,
            order_id: r.try_get("order_id").map_err(db("read an order id"))?,
        })
    })
    .transpose()
}

async fn load_where(pg: &PgPool, condition: &str, value: &str) -> Result<Option<PaymentView>> {
    let mut tx = pg.begin().await.map_err(db("begin a read"))?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(db("begin a snapshot"))?;
    let view = load_in(&mut tx, condition, value).await?;
    tx.commit().await.map_err(db("end a read"))?;
    Ok(view)
}

async fn load_in(
    conn: &mut PgConnection,
    condition: &str,
    value: &str,
) -> Result<Option<PaymentView>> {
    let sql = format!(
        "SELECT p.payment_id, p.order_id, p.customer_id, p.status, p.amount_minor, \
         p.currency::TEXT AS currency, p.captured_minor, p.refunded_minor, p.payment_method, \
         p.psp_reference, p.created_at, p.updated_at, p.refund_reserved_minor AS reserved \
         FROM payments p WHERE {condition}"
    );
    let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(value)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("read a payment"))?
    else {
        return Ok(None);
    };
    let d = || db("decode a payment");
    let payment_id: String = row.try_get("payment_id").map_err(d())?;
    let currency: String = row.try_get("currency").map_err(d())?;
    let captured: i64 = row.try_get("captured_minor").map_err(d())?;
    let refunded: i64 = row.try_get("refunded_minor").map_err(d())?;
    let reserved: i64 = row.try_get("reserved").map_err(d())?;

    let attempts = sqlx::query(
        "SELECT attempt_id, kind, outcome, decline_code, latency_ms, psp_event_id, stale, \
         started_at, finished_at FROM payment_attempts WHERE payment_id = $1 ORDER BY started_at, attempt_id",
    )
    .bind(&payment_id)
    .fetch_all(&mut *conn)
    .await
    .map_err(db("read payment attempts"))?
    .iter()
    .map(attempt)
    .collect::<Result<Vec<_>>>()?;
    let refunds = sqlx::query(
        "SELECT refund_id, amount_minor, reason, status, failure_code, psp_reference, \
         created_at, updated_at FROM refunds WHERE payment_id = $1 \
         ORDER BY created_at, refund_id",
    )
    .bind(&payment_id)
    .fetch_all(&mut *conn)
    .await
    .map_err(db("read refunds"))?
    .iter()
    .map(|r| refund(r, &currency))
    .collect::<Result<Vec<_>>>()?;

    Ok(Some(PaymentView {
        payment_id,
        order_id: row.try_get("order_id").map_err(d())?,
        customer_id: row.try_get("customer_id").map_err(d())?,
        status: row.try_get("status").map_err(d())?,
        amount: money(row.try_get("amount_minor").map_err(d())?, &currency),
        captured: money(captured, &currency),
        refunded: money(refunded, &currency),
        refundable: money((captured - refunded - reserved).max(0), &currency),
        payment_method: row.try_get("payment_method").map_err(d())?,
        psp_reference: row.try_get("psp_reference").map_err(d())?,
        created_at: rfc3339(row.try_get("created_at").map_err(d())?),
        updated_at: rfc3339(row.try_get("updated_at").map_err(d())?),
        attempts,
        refunds,
    }))
}

fn attempt(r: &PgRow) -> Result<PaymentAttemptView> {
    let d = || db("decode a payment attempt");
    let finished: Option<DateTime<Utc>> = r.try_get("finished_at").map_err(d())?;
    Ok(PaymentAttemptView {
        attempt_id: r.try_get("attempt_id").map_err(d())?,
        kind: r.try_get("kind").map_err(d())?,
        outcome: r.try_get("outcome").map_err(d())?,
        decline_code: r.try_get("decline_code").map_err(d())?,
        latency_ms: r.try_get("latency_ms").map_err(d())?,
        psp_event_id: r.try_get("psp_event_id").map_err(d())?,
        stale: r.try_get("stale").map_err(d())?,
        started_at: rfc3339(r.try_get("started_at").map_err(d())?),
        finished_at: finished.map(rfc3339),
    })
}

fn refund(r: &PgRow, currency: &str) -> Result<RefundView> {
    let d = || db("decode a refund");
    Ok(RefundView {
        refund_id: r.try_get("refund_id").map_err(d())?,
        amount: money(r.try_get("amount_minor").map_err(d())?, currency),
        reason: r.try_get("reason").map_err(d())?,
        status: r.try_get("status").map_err(d())?,
        failure_code: r.try_get("failure_code").map_err(d())?,
        psp_reference: r.try_get("psp_reference").map_err(d())?,
        created_at: rfc3339(r.try_get("created_at").map_err(d())?),
        updated_at: rfc3339(r.try_get("updated_at").map_err(d())?),
    })
}
