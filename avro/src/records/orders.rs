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
#[allow(
    clippy::large_enum_variant,
    reason = "mirrors the Avro union; one value per decoded record, never stored in bulk"
)]
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
    /// Where the order ships to; `None` from producers that predate the field.
    pub shipping_address: Option<ShippingAddress>,
}

/// Where an order ships to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
pub struct ShippingAddress {
    pub name: String,
    pub line1: String,
    pub line2: Option<String>,
    pub city: String,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2, e.g. `DE`.
    pub country: String,
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

/// The statuses a saga decision gives an order; `Rejected`: the command was invalid and the
/// order never became `Pending`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderDecisionStatus {
    Pending,
    Confirmed,
    Cancelled,
    Rejected,
}

/// `order.decisions.v1` (key: order id): the saga decided an order's status; the order sink
/// writes it, with its outbox row, in one MySQL transaction and de-duplicates on `decision_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
pub struct OrderDecision {
    /// Unique per decision: `<order id>/<sequence>`.
    pub decision_id: String,
    pub order_id: String,
    #[avro(with = timestamp_millis)]
    pub decided_at: i64,
    pub causation_id: String,
    pub correlation_id: String,
    /// 1, 2, 3 ... per order; a status never moves back to a lower sequence.
    pub sequence: i32,
    pub status: OrderDecisionStatus,
    pub from_status: Option<OrderDecisionStatus>,
    /// A stable code for `Cancelled` and `Rejected`, e.g. `INSUFFICIENT_STOCK`.
    pub reason: Option<String>,
    pub detail: Option<String>,
    pub customer_id: String,
    pub cart_id: String,
    pub lines: Vec<OrderLine>,
    pub total: Money,
    pub shipping_address: Option<ShippingAddress>,
    pub payment_method: String,
    /// Topic, partition and offset of the input record that caused the decision (offset -1 for
    /// a timer).
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
}
