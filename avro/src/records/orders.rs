//! `orders.commands.v1`, `order.created` and `order.status.changed`.

use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};

use super::{Money, OrderLine, timestamp_millis};

/// `orders.commands.v1` (key: order id): the envelope every order command travels in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
pub struct OrderCommand {
    pub command_id: String,
    pub order_id: String,
    #[avro(with = timestamp_millis)]
    pub issued_at: i64,
    pub causation_id: String,
    pub correlation_id: String,
    pub command: OrderCommandBody,
}

/// The order commands, in the union's branch order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(repr = "bare_union")]
pub enum OrderCommandBody {
    PlaceOrder(PlaceOrder),
    CancelOrder(CancelOrder),
}

/// Place an order from a cart; the saga validates it against the cart it has from CDC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
pub struct PlaceOrder {
    pub customer_id: String,
    pub cart_id: String,
    pub lines: Vec<OrderLine>,
    pub total: Money,
    /// The PSP's token for the customer's payment method.
    pub payment_method: String,
}

/// Cancel an order that is not yet confirmed; the saga compensates what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
pub struct CancelOrder {
    pub reason: String,
}

/// `order.created` (key: order id): an order was accepted as `PENDING`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
pub struct OrderCreated {
    pub event_id: String,
    pub order_id: String,
    #[avro(with = timestamp_millis)]
    pub occurred_at: i64,
    pub causation_id: String,
    pub correlation_id: String,
    pub customer_id: String,
    pub cart_id: String,
    pub lines: Vec<OrderLine>,
    pub total: Money,
}

/// The statuses an order moves through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Pending,
    Confirmed,
    Cancelled,
}

/// `order.status.changed` (key: order id): the saga moved an order to a new status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
pub struct OrderStatusChanged {
    pub event_id: String,
    pub order_id: String,
    #[avro(with = timestamp_millis)]
    pub occurred_at: i64,
    pub causation_id: String,
    pub correlation_id: String,
    pub from_status: OrderStatus,
    pub to_status: OrderStatus,
    /// Why, for `CANCELLED`.
    pub reason: Option<String>,
}
