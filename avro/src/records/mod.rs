//! The typed Rust records, one per `.avsc` in `avro/schemas/`, plus the types they share.
//!
//! Field order, names, types and defaults follow the `.avsc` exactly: the derived
//! [`apache_avro::AvroSchema`] of every record is compared with its file by the drift tests in
//! `avro/tests/contracts.rs`, so a field changed on one side only fails a test. Timestamps are milliseconds
//! since the Unix epoch (`timestamp-millis`); money is [`Money`]. Unions are Rust enums whose
//! variant order is the union's branch order.

mod audit;
mod carts;
mod inventory;
mod orders;
mod payments;
mod reconciliation;

use std::collections::HashSet;

use apache_avro::AvroSchema;
use apache_avro::Schema;
use apache_avro::schema::{Name, NamespaceRef, UnionSchema};
use serde::{Deserialize, Serialize};

pub use audit::{AuditInvariant, AuditViolation, AuditViolationState};
pub use carts::{CartCheckStatus, CartChecked};
pub use inventory::{
    AdjustStock, ConfirmReservation, DEFAULT_WAREHOUSE, InventoryAdjusted, InventoryCommand,
    InventoryCommandBody, InventoryReleased, InventoryReserved, RESERVATION_CORRELATION_PREFIX,
    ReleaseReason, ReleaseStock, ReservationStatus, ReserveStock, SALE_REASON_PREFIXES,
    is_sale_reason,
};
pub use orders::{
    CancelOrder, OrderCommand, OrderCommandBody, OrderCreated, OrderDecision, OrderDecisionStatus,
    OrderStatus, OrderStatusChanged, PlaceOrder, ShippingAddress,
};
pub use payments::{
    AuthorizePayment, CapturePayment, CreatePaymentIntent, PaymentAuthorized, PaymentCommand,
    PaymentCommandBody, PaymentFailed, PaymentFailureReason, PaymentRefunded, PspCallback,
    PspOutcome, RefundPayment, VoidPayment,
};
pub use reconciliation::{ReconciliationKind, ReconciliationMismatch, ReconciliationState};

/// An amount in the currency's minor unit (cents for EUR) and its ISO 4217 code. Never a float.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
pub struct Money {
    pub amount_minor: i64,
    /// ISO 4217 alphabetic code: three upper-case letters, e.g. `EUR`.
    pub currency: String,
}

impl Money {
    pub fn new(amount_minor: i64, currency: impl Into<String>) -> Self {
        Self {
            amount_minor,
            currency: currency.into(),
        }
    }
}

/// One line of an order: how many of a SKU at what unit price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
pub struct OrderLine {
    pub sku: String,
    pub quantity: i32,
    pub unit_price: Money,
}

/// `{"type": "long", "logicalType": "timestamp-millis"}` for an `i64` field.
pub(crate) fn timestamp_millis(_: &mut HashSet<Name>, _: NamespaceRef<'_>) -> Schema {
    Schema::TimestampMillis
}

/// `["null", timestamp-millis]` for an `Option<i64>` field.
pub(crate) fn optional_timestamp_millis(_: &mut HashSet<Name>, _: NamespaceRef<'_>) -> Schema {
    // Two distinct branches, so building the union cannot fail.
    UnionSchema::new(vec![Schema::Null, Schema::TimestampMillis])
        .map(Schema::Union)
        .unwrap_or(Schema::Null)
}
