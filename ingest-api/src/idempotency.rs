//! `Idempotency-Key` for `POST /orders`, enforced by the database: `api_idempotency`'s primary
//! key `(scope, idem_key)` lets exactly one request claim a key. A row's `response_status` says
//! where the request is: `NULL` in progress, `202` done (replayed to retries), `503` failed
//! after Kafka did not confirm (a retry with the same body takes it over, keeping the order id
//! and command id, so a command that did land is not placed twice under another id).
//! Requests without a key get a row too (scope `auto`, key = order id): it is what lets
//! `GET /orders/{id}` answer `RECEIVED` before the order sink has written the order.
//! Rows are kept `[api].idempotency_retention_hours` (default 24 h), then purged in the
//! background ([`retention`]).

pub mod retention;

use std::time::Duration;

use chrono::NaiveDateTime;
use sha2::{Digest, Sha256};
use sqlx::MySqlPool;

/// The scope of requests sent without an `Idempotency-Key`.
pub const AUTO_SCOPE: &str = "auto";

/// The row a request owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub scope: String,
    pub key: String,
    pub order_id: String,
    pub command_id: String,
}

/// What claiming a key gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This request handles it, with these ids.
    Owned(Slot),
    /// A request with this key and body finished: answer as it did.
    Replay {
        status: u16,
        body: String,
        order_id: String,
    },
    /// A request with this key is being handled now.
    InProgress,
    /// The key was used with another body.
    Mismatch,
}

/// (request_hash, order_id, command_id, response_status, response_body).
type StoredRow = (String, String, String, Option<i32>, Option<String>);

/// sha256 (hex) of the request's route and canonical body.
pub fn request_hash(route: &str, canonical_body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(route.as_bytes());
    h.update([0]);
    h.update(canonical_body);
    hex::encode(h.finalize())
}

/// Claim `(scope, key)` for a request whose body hashes to `hash`, with fresh ids for the case
/// it is new. A row stuck in progress for longer than `stale_after` (its process died) is taken
/// over like a failed one.
pub async fn claim(
    pool: &MySqlPool,
    scope: &str,
    key: &str,
    hash: &str,
    order_id: &str,
    command_id: &str,
    stale_after: Duration,
) -> Result<Claim, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO api_idempotency (scope, idem_key, request_hash, order_id, command_id, \
         created_at) VALUES (?, ?, ?, ?, ?, UTC_TIMESTAMP(3))",
    )
    .bind(scope)
    .bind(key)
    .bind(hash)
    .bind(order_id)
    .bind(command_id)
    .execute(pool)
    .await;
    match inserted {
        Ok(_) => {
            return Ok(Claim::Owned(Slot {
                scope: scope.to_owned(),
                key: key.to_owned(),
                order_id: order_id.to_owned(),
                command_id: command_id.to_owned(),
            }));
        }
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {}
        Err(e) => return Err(e),
    }
    loop {
        let row: Option<StoredRow> = sqlx::query_as(
            "SELECT request_hash, order_id, command_id, response_status, response_body \
             FROM api_idempotency WHERE scope = ? AND idem_key = ?",
        )
        .bind(scope)
        .bind(key)
        .fetch_optional(pool)
        .await?;
        let Some((stored_hash, order_id, command_id, status, body)) = row else {
            // Released between our insert and this read: try to claim it afresh.
            let again = Box::pin(claim(
                pool,
                scope,
                key,
                hash,
                order_id,
                command_id,
                stale_after,
            ));
            return again.await;
        };
        if stored_hash != hash {
            return Ok(Claim::Mismatch);
        }
        match status {
            Some(s) if s != 503 => {
                return Ok(Claim::Replay {
                    status: u16::try_from(s).unwrap_or(500),
                    body: body.unwrap_or_default(),
                    order_id,
                });
            }
            _ => {}
        }
        // Failed (503) or stale: take it over, atomically (one of several retries wins).
        let took = sqlx::query(
            "UPDATE api_idempotency SET response_status = NULL, response_body = NULL, \
             created_at = UTC_TIMESTAMP(3) WHERE scope = ? AND idem_key = ? AND request_hash = ? \
             AND (response_status = 503 OR (response_status IS NULL AND \
             created_at < UTC_TIMESTAMP(3) - INTERVAL ? MICROSECOND))",
        )
        .bind(scope)
        .bind(key)
        .bind(hash)
        .bind(i64::try_from(stale_after.as_micros()).unwrap_or(i64::MAX))
        .execute(pool)
        .await?;
        if took.rows_affected() == 1 {
            return Ok(Claim::Owned(Slot {
                scope: scope.to_owned(),
                key: key.to_owned(),
                order_id,
                command_id,
            }));
        }
        if status.is_none() {
            return Ok(Claim::InProgress);
        }
        // Another retry took the failed row over a moment ago: read again.
    }
}

/// Record the answer to replay to retries.
pub async fn complete(
    pool: &MySqlPool,
    slot: &Slot,
    status: u16,
    body: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE api_idempotency SET response_status = ?, response_body = ? \
         WHERE scope = ? AND idem_key = ?",
    )
    .bind(i32::from(status))
    .bind(body)
    .bind(&slot.scope)
    .bind(&slot.key)
    .execute(pool)
    .await?;
    Ok(())
}

/// Forget the key: nothing was produced (a client error), so a retry starts afresh.
pub async fn release(pool: &MySqlPool, slot: &Slot) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM api_idempotency WHERE scope = ? AND idem_key = ? AND response_status IS NULL",
    )
    .bind(&slot.scope)
    .bind(&slot.key)
    .execute(pool)
    .await?;
    Ok(())
}

/// Kafka did not confirm the command: a retry with the same key takes the row over (same ids);
/// a request without a key has no retry, so its row goes.
pub async fn fail_retryable(pool: &MySqlPool, slot: &Slot) -> Result<(), sqlx::Error> {
    if slot.scope == AUTO_SCOPE {
        return release(pool, slot).await;
    }
    sqlx::query(
        "UPDATE api_idempotency SET response_status = 503 WHERE scope = ? AND idem_key = ? \
         AND response_status IS NULL",
    )
    .bind(&slot.scope)
    .bind(&slot.key)
    .execute(pool)
    .await?;
    Ok(())
}

/// Whether `order_id` is a checkout's: placed through `POST /orders` (a row here, from the
/// moment the request claimed its key, before its command reaches Kafka) or written by the
/// order sink (an order another system's producer placed).
pub async fn is_checkout_order(pool: &MySqlPool, order_id: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM api_idempotency WHERE order_id = ?) \
             OR EXISTS (SELECT 1 FROM orders WHERE order_id = ?)",
    )
    .bind(order_id)
    .bind(order_id)
    .fetch_one(pool)
    .await
}

/// When the API accepted order `order_id` (202), if it did.
pub async fn received_at(
    pool: &MySqlPool,
    order_id: &str,
) -> Result<Option<NaiveDateTime>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT MIN(created_at) FROM api_idempotency WHERE order_id = ? AND response_status = 202",
    )
    .bind(order_id)
    .fetch_one(pool)
    .await
}
