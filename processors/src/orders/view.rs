//! The read side of the orders tables: [`load_order`] gives one order with its items and its
//! timeline, as the ingest API's `GET /orders/{id}` shows it (serde, camelCase).

use chrono::{NaiveDateTime, SecondsFormat};
use serde::Serialize;
use sqlx::MySqlPool;
use utoipa::ToSchema;

use super::{Result, sql};

/// One order as people see it. Times are RFC 3339 UTC with milliseconds; money is minor units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    pub order_id: String,
    /// `PENDING`, `CONFIRMED`, `CANCELLED` or `REJECTED`.
    pub status: String,
    /// A stable code for `CANCELLED` and `REJECTED`, e.g. `INSUFFICIENT_STOCK`.
    pub reason: Option<String>,
    pub detail: Option<String>,
    pub customer_id: String,
    pub cart_id: String,
    pub items: Vec<OrderItemView>,
    pub total: MoneyView,
    pub payment_method: String,
    pub shipping_address: Option<AddressView>,
    pub created_at: String,
    pub updated_at: String,
    /// Every applied decision, oldest first.
    pub timeline: Vec<TimelineEntry>,
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderItemView {
    pub line_no: i32,
    pub sku: String,
    pub quantity: i32,
    pub unit_price: MoneyView,
}

/// An amount in minor units (cents) and its ISO 4217 code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MoneyView {
    pub amount_minor: i64,
    pub currency: String,
}

/// Where an order ships to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddressView {
    pub name: String,
    pub line1: String,
    pub line2: Option<String>,
    pub city: String,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2.
    pub country: String,
}

/// One applied decision: when, to which status, why, and the Kafka coordinates of the record
/// that caused it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEntry {
    pub time: String,
    pub sequence: i32,
    pub decision_id: String,
    pub from_status: Option<String>,
    pub status: String,
    pub reason: Option<String>,
    pub detail: Option<String>,
    pub topic: String,
    pub partition: i32,
    /// -1 for a decision a timer made.
    pub offset: i64,
}

/// RFC 3339 with milliseconds, `Z`.
pub fn rfc3339(t: NaiveDateTime) -> String {
    t.and_utc().to_rfc3339_opts(SecondsFormat::Millis, true)
}

type OrderRowTuple = (
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    String,
    i64,
    String,
    String,
    NaiveDateTime,
    NaiveDateTime,
);
type AddressTuple = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);
type HistoryTuple = (
    NaiveDateTime,
    i32,
    String,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    String,
    i32,
    i64,
);

/// The order `order_id` as the sink wrote it, or `None` if the sink has not written it (yet).
/// Errors: [`super::Error::Sql`].
pub async fn load_order(pool: &MySqlPool, order_id: &str) -> Result<Option<OrderView>> {
    let mut tx = pool.begin().await.map_err(sql("beginning a read"))?;
    let row: Option<OrderRowTuple> = sqlx::query_as(
        "SELECT order_id, status, reason, detail, customer_id, cart_id, total_minor, currency, \
         payment_method, created_at, updated_at FROM orders WHERE order_id = ?",
    )
    .bind(order_id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(sql("reading the order"))?;
    let Some((
        order_id,
        status,
        reason,
        detail,
        customer_id,
        cart_id,
        total_minor,
        currency,
        payment_method,
        created_at,
        updated_at,
    )) = row
    else {
        return Ok(None);
    };
    let address: AddressTuple = sqlx::query_as(
        "SELECT ship_name, ship_line1, ship_line2, ship_city, ship_postal_code, ship_country \
         FROM orders WHERE order_id = ?",
    )
    .bind(&order_id)
    .fetch_one(&mut *tx)
    .await
    .map_err(sql("reading the shipping address"))?;
    let items: Vec<(i32, String, i32, i64, String)> = sqlx::query_as(
        "SELECT line_no, sku, quantity, unit_price_minor, currency FROM order_items \
         WHERE order_id = ? ORDER BY line_no",
    )
    .bind(&order_id)
    .fetch_all(&mut *tx)
    .await
    .map_err(sql("reading the order items"))?;
    let history: Vec<HistoryTuple> = sqlx::query_as(
        "SELECT decided_at, sequence, decision_id, from_status, to_status, reason, detail, \
         source_topic, source_partition, source_offset FROM order_status_history \
         WHERE order_id = ? ORDER BY sequence, decided_at",
    )
    .bind(&order_id)
    .fetch_all(&mut *tx)
    .await
    .map_err(sql("reading the order history"))?;
    tx.commit().await.map_err(sql("ending a read"))?;

    let shipping_address = match address {
        (Some(name), Some(line1), line2, Some(city), Some(postal_code), Some(country)) => {
            Some(AddressView {
                name,
                line1,
                line2,
                city,
                postal_code,
                country,
            })
        }
        _ => None,
    };
    Ok(Some(OrderView {
        order_id,
        status,
        reason,
        detail,
        customer_id,
        cart_id,
        items: items
            .into_iter()
            .map(
                |(line_no, sku, quantity, amount_minor, currency)| OrderItemView {
                    line_no,
                    sku,
                    quantity,
                    unit_price: MoneyView {
                        amount_minor,
                        currency,
                    },
                },
            )
            .collect(),
        total: MoneyView {
            amount_minor: total_minor,
            currency,
        },
        payment_method,
        shipping_address,
        created_at: rfc3339(created_at),
        updated_at: rfc3339(updated_at),
        timeline: history
            .into_iter()
            .map(
                |(
                    at,
                    sequence,
                    decision_id,
                    from_status,
                    status,
                    reason,
                    detail,
                    topic,
                    partition,
                    offset,
                )| TimelineEntry {
                    time: rfc3339(at),
                    sequence,
                    decision_id,
                    from_status,
                    status,
                    reason,
                    detail,
                    topic,
                    partition,
                    offset,
                },
            )
            .collect(),
    }))
}

/// Just the status of order `order_id` (`None`: not written by the sink).
pub async fn order_status(pool: &MySqlPool, order_id: &str) -> Result<Option<String>> {
    sqlx::query_scalar("SELECT status FROM orders WHERE order_id = ?")
        .bind(order_id)
        .fetch_optional(pool)
        .await
        .map_err(sql("reading the order status"))
}
