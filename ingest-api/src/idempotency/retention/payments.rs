//! The retention of `api_payment_requests` (ledger migration 0002), the `Idempotency-Key`s of
//! the payment writes: the same window as `api_idempotency` (`[api].idempotency_retention_hours`,
//! one documented retention for every key of the API), purged by the same background task
//! ([`super::run_purge`] runs [`purge_once`] in every round when the API has a ledger).
//!
//! Two routes write rows (`POST /payments/{id}/confirm` and `POST /psp/callbacks` keep no
//! key: their command ids derive from the payment and the PSP event). What deleting one
//! changes, and why no retry after the window can move money twice:
//!
//! - `POST /payments` (route `POST /payments`). Its row is also the one-intent-per-payment
//!   block (unique index `api_payment_requests_intent` on `payment_id`) and, while the payment
//!   service has not written the payment, the only trace of it: `GET /payments/{id}`,
//!   `GET /orders/{id}/payment` answer `REQUESTED` from it and `POST /payments/{id}/confirm`
//!   queues an authorize behind it. That block is **not** what keeps a payment single: the
//!   ledger does. `payments.payment_id` is its primary key and `payments.order_id` is `UNIQUE`
//!   (migration 0001), the payment service inserts an intent with `ON CONFLICT DO NOTHING`
//!   (`keel_processors::payment::ledger::insert_payment`: a second create-intent for the payment
//!   or the order changes nothing), the API refuses a new intent for an order the ledger has
//!   with `409 payment-exists` (`send_intent`), and an authorization is one command per payment
//!   (`derived_id(["confirm", id])`, de-duplicated through `processed_commands`) sent to the
//!   PSP under the payment's key `{payment_id}:authorize`, which the state machine issues only
//!   from `INTENT` (or again from `AUTHORIZING`, under the same key). So a key reused after its row is gone is a new request that the ledger
//!   answers: `409 payment-exists` (with `currentStatus`) for an order that has its payment,
//!   never a second payment or authorization.
//! - `POST /payments/{id}/refund` (route `POST /payments/<id>/refund`). The refund id derives
//!   from the caller, the payment and the key (not from the row), and the ledger keeps one refund
//!   per id (`refunds.refund_id` is the primary key; the payment service finds an existing
//!   refund and replays it, calling the PSP again only under the same key
//!   `{payment_id}:refund:{refund_id}`). Once the refund is in the ledger the route answers a
//!   retry from it (202 replayed, or 422 for another body) before it reads this table. A key
//!   reused after its row is gone is therefore the same refund, never a second one.
//!
//! Which rows go (`created_at` is when the row was claimed or last taken over, the database's
//! `now()`):
//! - Answered (`202`) rows older than the window **whose command the payment service has
//!   applied** (`processed_commands` holds its id; for `POST /payments` also when the ledger
//!   has the payment). Until then the row is what the API answers from (`REQUESTED`; a
//!   refund's other body is a 422), so a pipeline stopped for a day keeps its rows. A command
//!   that never applies (dead-lettered) keeps its row: bounded by the dead letters.
//! - Failed (`503`) rows older than the window: within it a retry takes the row over with the
//!   same ids. After it a retry is new and the ledger answers as above (a command of the
//!   failed attempt that did reach Kafka after all is the same payment or refund id, which the
//!   ledger applies once).
//! - In-progress (`NULL`) rows older than **twice** the window, as for `api_idempotency` (the
//!   window is longer than `produce_timeout_ms + 30 s`, after which a claim takes them over).
//!
//! The ledger's uniqueness rules are what make this safe: should `payments`' primary key or
//! `UNIQUE (order_id)`, or `refunds`' primary key, ever go, answered `POST /payments` and refund
//! rows would have to be kept instead.
//!
//! Rows go in batches of [`Retention::batch_size`]: `DELETE ... WHERE ctid = ANY(ARRAY(SELECT
//! ctid ... ORDER BY created_at LIMIT n FOR UPDATE SKIP LOCKED))`, repeated until a batch
//! deletes fewer than `n`. Each statement is its own short transaction walking
//! `api_payment_requests_created` (ledger migration 0005) from the oldest row; the rows are
//! locked as they are chosen (a row a request is taking over right then is skipped, and one
//! taken over a moment before is re-checked against its new `created_at`), so the purge never
//! deletes a key a request is using.

use sqlx::PgPool;

use super::Retention;

/// The table this module purges (the value of the metric's `table` label).
pub const TABLE: &str = "api_payment_requests";

/// One batch: `$1` the window and `$2` the in-progress window (seconds), `$3` the batch size.
const PURGE_BATCH_SQL: &str = "DELETE FROM api_payment_requests WHERE ctid = ANY(ARRAY( \
     SELECT r.ctid FROM api_payment_requests r \
     WHERE r.created_at < now() - make_interval(secs => $1) \
     AND ((r.response_status IS NULL \
           AND r.created_at < now() - make_interval(secs => $2)) \
       OR (r.response_status = 202 \
           AND (EXISTS (SELECT 1 FROM processed_commands c WHERE c.command_id = r.command_id) \
             OR (r.route = 'POST /payments' \
                 AND EXISTS (SELECT 1 FROM payments p WHERE p.payment_id = r.payment_id)))) \
       OR r.response_status <> 202) \
     ORDER BY r.created_at LIMIT $3 \
     FOR UPDATE OF r SKIP LOCKED))";

/// One round over `api_payment_requests`: deletes every expired row (the module docs say
/// which), `batch_size` rows per statement, against the database's clock (`now()`, the clock
/// `created_at` is written with). Returns how many rows went. Errors: the first failed
/// statement (the rows of the batches before it are gone).
pub async fn purge_once(pg: &PgPool, retention: &Retention) -> Result<u64, sqlx::Error> {
    super::in_batches(retention, |limit| async move {
        Ok(sqlx::query(PURGE_BATCH_SQL)
            .bind(retention.keep.as_secs_f64())
            .bind(retention.keep_in_progress.as_secs_f64())
            .bind(i64::from(limit))
            .execute(pg)
            .await?
            .rows_affected())
    })
    .await
}
