//! How long the API remembers an `Idempotency-Key`, and the API's background purge
//! ([`run_purge`]) that forgets it afterwards, so the key tables do not grow without bound:
//! `api_idempotency` (MariaDB: `POST /orders`, this module) and `api_payment_requests` (the
//! PostgreSQL ledger: `POST /payments`, `POST /payments/{id}/refund`, [`payments`]). One round
//! purges both, each with its own rules; a table that fails does not stop the other.
//!
//! The window is `[api].idempotency_retention_hours` (default 24 h, as Stripe keeps keys; the
//! IETF draft "The Idempotency-Key HTTP Header Field" lets a server expire keys and asks it to
//! document the window — the OpenAPI descriptions of the routes that take a key and
//! `docs/saga.md` do). It is one window for every key of the API.
//! Within it, a retry with the same key and body gets the first answer; after it the row is
//! gone and the key is new again (a new request for a cart that is still ordered is then the
//! usual 409 `cart-already-ordered`, so an expired key does not order a cart twice).
//!
//! Which rows of `api_idempotency` go (`created_at` is when the row was claimed or last taken
//! over, UTC; [`payments`] says which rows of `api_payment_requests` go, and why):
//! - Answered (`202`) rows older than the window **whose order is in `orders`**. Besides the
//!   replay (what the window is about), these rows are read only by [`super::received_at`]:
//!   `GET /orders/{id}` answering `RECEIVED`, and the cancel route asking whether the order
//!   exists. Both ask it only when `orders` has no row for the order, and the order sink
//!   writes that row about a second after the 202 (every decision on an order without a row
//!   inserts one, `PENDING` or `REJECTED` alike). Purging a 202 row whose order row exists
//!   therefore changes no answer of those routes; one whose order never reached `orders` (a
//!   pipeline stopped for a day) is kept, or the accepted order would turn into a 404.
//! - Failed (`503`) rows older than the window: a retry within it takes the row over with the
//!   same ids; nothing else reads them.
//! - In-progress (`NULL`) rows only older than **twice** the window. The claim code takes such
//!   a row over (same ids) once it is older than `produce_timeout_ms + 30 s` (its process
//!   died); the window is validated to be longer than that, so a row this old never belongs to
//!   a request still running. It is kept one window longer than an answered row because it
//!   is the only trace of a command that may have reached Kafka (its order and command ids).
//!
//! Rows go in batches of [`Retention::batch_size`] (`DELETE ... ORDER BY created_at LIMIT n`,
//! repeated until a batch deletes fewer than `n`): each statement is its own short transaction
//! walking the `created_at` index (`api_idempotency_created`, migration 0003) from the oldest
//! row, so the purge never scans or locks the whole table. It runs against the database's
//! clock, the one `created_at` is written with, so API hosts' clocks do not matter. A round
//! that fails is logged and retried on the next tick; the API keeps serving.

pub mod payments;

use std::time::Duration;

use prometheus::IntCounterVec;
use sqlx::{MySqlPool, PgPool};
use tokio_util::sync::CancellationToken;

use crate::ApiConfig;

/// The table this module purges (the value of the metric's `table` label).
pub const TABLE: &str = "api_idempotency";

/// The values of `keel_api_idempotency_keys_purged_total`'s `table` label.
pub const TABLES: [&str; 2] = [TABLE, payments::TABLE];

/// Where the API keeps its keys: the orders database and, when the API has one, the payment
/// ledger.
#[derive(Debug, Clone)]
pub struct KeyStores {
    /// `api_idempotency`.
    pub orders: MySqlPool,
    /// `api_payment_requests`; `None`: the API has no ledger (its payment routes answer 501).
    pub ledger: Option<PgPool>,
}

/// Rows deleted per statement by the API's purge.
pub const PURGE_BATCH: u32 = 1_000;

/// What the purge keeps and how it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Answered and failed rows older than this go.
    pub keep: Duration,
    /// In-progress rows older than this go (twice [`Retention::keep`]).
    pub keep_in_progress: Duration,
    /// How often a round runs.
    pub interval: Duration,
    /// Rows deleted per statement (at least 1).
    pub batch_size: u32,
}

impl Retention {
    /// From `[api].idempotency_retention_hours` and `idempotency_purge_interval_s`, in batches
    /// of [`PURGE_BATCH`].
    pub fn from_config(config: &ApiConfig) -> Self {
        let keep = Duration::from_secs(config.idempotency_retention_hours.saturating_mul(3_600));
        Self {
            keep,
            keep_in_progress: keep.saturating_mul(2),
            interval: Duration::from_secs(config.idempotency_purge_interval_s),
            batch_size: PURGE_BATCH,
        }
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// One round over `api_idempotency`: deletes every expired row (the module docs say which), `batch_size` rows per
/// statement, against the database's clock (`UTC_TIMESTAMP`, the clock `created_at` is
/// written with). Returns how many rows went. Errors: the first failed statement (the rows of
/// the batches before it are gone).
pub async fn purge_once(pool: &MySqlPool, retention: &Retention) -> Result<u64, sqlx::Error> {
    in_batches(retention, |limit| async move {
        Ok(sqlx::query(
            "DELETE FROM api_idempotency \
             WHERE created_at < UTC_TIMESTAMP(3) - INTERVAL ? MICROSECOND \
             AND ((response_status IS NULL \
                   AND created_at < UTC_TIMESTAMP(3) - INTERVAL ? MICROSECOND) \
               OR (response_status = 202 AND EXISTS \
                   (SELECT 1 FROM orders o WHERE o.order_id = api_idempotency.order_id)) \
               OR (response_status IS NOT NULL AND response_status <> 202)) \
             ORDER BY created_at LIMIT ?",
        )
        .bind(micros(retention.keep))
        .bind(micros(retention.keep_in_progress))
        .bind(limit)
        .execute(pool)
        .await?
        .rows_affected())
    })
    .await
}

/// Runs `batch` (one statement deleting at most the `limit` rows it is given, at least 1:
/// [`Retention::batch_size`], returning how many went) until a batch deletes fewer than
/// `limit`; the total. Errors: the first failed batch's (the batches before it are done).
pub(crate) async fn in_batches<F, Fut>(
    retention: &Retention,
    mut batch: F,
) -> Result<u64, sqlx::Error>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<u64, sqlx::Error>>,
{
    let limit = retention.batch_size.max(1);
    let mut total = 0;
    loop {
        let deleted = batch(limit).await?;
        total += deleted;
        if deleted < u64::from(limit) {
            return Ok(total);
        }
    }
}

/// One round over every key table of `stores`: [`purge_once`] on `api_idempotency`, then
/// [`payments::purge_once`] on `api_payment_requests` when there is a ledger. Returns each
/// table's outcome, by [`TABLES`] name (a table that failed does not stop the other).
pub async fn purge_round(
    stores: &KeyStores,
    retention: &Retention,
) -> Vec<(&'static str, Result<u64, sqlx::Error>)> {
    let mut outcomes = vec![(TABLE, purge_once(&stores.orders, retention).await)];
    if let Some(ledger) = &stores.ledger {
        outcomes.push((
            payments::TABLE,
            payments::purge_once(ledger, retention).await,
        ));
    }
    outcomes
}

/// Runs [`purge_round`] at once and then every [`Retention::interval`] until `shutdown` is
/// cancelled (also mid-round), adding the rows deleted to `purged`
/// (`keel_api_idempotency_keys_purged_total{table}`). A failed table is logged and retried on
/// the next tick; it never ends the task.
pub async fn run_purge(
    stores: KeyStores,
    retention: Retention,
    purged: IntCounterVec,
    shutdown: CancellationToken,
) {
    loop {
        let round = tokio::select! {
            () = shutdown.cancelled() => return,
            round = purge_round(&stores, &retention) => round,
        };
        for (table, outcome) in round {
            match outcome {
                Ok(0) => {}
                Ok(deleted) => {
                    purged.with_label_values(&[table]).inc_by(deleted);
                    tracing::info!(table, deleted, "expired Idempotency-Keys purged");
                }
                Err(e) => tracing::warn!(table, error = %e,
                    "purging expired Idempotency-Keys failed; retrying next interval"),
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(retention.interval.max(Duration::from_millis(1))) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_comes_from_the_config_and_in_progress_rows_get_twice_it() {
        let r = Retention::from_config(&ApiConfig::default());
        assert_eq!(r.keep, Duration::from_secs(24 * 3_600));
        assert_eq!(r.keep_in_progress, Duration::from_secs(48 * 3_600));
        assert_eq!(r.interval, Duration::from_secs(300));
        assert_eq!(r.batch_size, PURGE_BATCH);
    }
}
