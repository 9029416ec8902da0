//! `cart.checked.v1`: the carts processor's answer to an order's cart check.

use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};

use super::{Money, OrderLine, timestamp_millis};

/// Whether an order's cart may be ordered; every symbol but `Ok` is the reason code the saga
/// cancels the order with: `CartNotFound` (no cart arrived from CDC within `[saga].cart_wait_ms`),
/// `CartEmpty` (no items), `CartAlreadyOrdered` (another order id claimed the cart first),
/// `CurrencyMismatch` (the order's currency is not the cart's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CartCheckStatus {
    Ok,
    CartNotFound,
    CartEmpty,
    CartAlreadyOrdered,
    CurrencyMismatch,
}

impl CartCheckStatus {
    /// The symbol, which is also the reason code (`CART_NOT_FOUND`, ...).
    pub fn code(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::CartNotFound => "CART_NOT_FOUND",
            Self::CartEmpty => "CART_EMPTY",
            Self::CartAlreadyOrdered => "CART_ALREADY_ORDERED",
            Self::CurrencyMismatch => "CURRENCY_MISMATCH",
        }
    }
}

/// `cart.checked.v1` (key: order id): the answer to an order's cart check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
pub struct CartChecked {
    /// Unique per answer: `<order id>/cart-check`.
    pub event_id: String,
    pub order_id: String,
    #[avro(with = timestamp_millis)]
    pub occurred_at: i64,
    pub causation_id: String,
    pub correlation_id: String,
    pub cart_id: String,
    pub status: CartCheckStatus,
    pub detail: Option<String>,
    pub customer_id: Option<String>,
    /// The cart's lines (by SKU) when `Ok`; empty otherwise.
    pub lines: Vec<OrderLine>,
    /// The sum of the lines in the cart's currency (0 when not `Ok`).
    pub total: Money,
}
