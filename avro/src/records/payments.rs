//! `payments.commands.v1`, `payment.authorized.v1`, `payment.failed.v1` and
//! `payment.refunded.v1`.

use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};

use super::{Money, timestamp_millis};

/// `payments.commands.v1` (key: order id): the envelope every payment command travels in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
pub struct PaymentCommand {
    pub command_id: String,
    pub payment_id: String,
    pub order_id: String,
    #[avro(with = timestamp_millis)]
    pub issued_at: i64,
    pub causation_id: String,
    pub correlation_id: String,
    pub command: PaymentCommandBody,
}

/// The payment commands, in the union's branch order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(repr = "bare_union")]
pub enum PaymentCommandBody {
    CreateIntent(CreatePaymentIntent),
    Authorize(AuthorizePayment),
    Refund(RefundPayment),
    PspCallback(PspCallback),
    Capture(CapturePayment),
    Void(VoidPayment),
}

/// Capture the authorized amount (sent once the order is `CONFIRMED`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
pub struct CapturePayment {
    pub amount: Money,
}

/// Void the authorization of a cancelled order; a pending or timed-out authorization is voided
/// when its result lands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
pub struct VoidPayment {
    pub reason: String,
}

/// Open a payment for an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
pub struct CreatePaymentIntent {
    pub customer_id: String,
    pub amount: Money,
    /// The PSP's token for the customer's payment method.
    pub payment_method: String,
}

/// Authorize (confirm) the intent with the PSP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
pub struct AuthorizePayment {
    pub amount: Money,
}

/// Give money back; the PSP call is idempotent on `refund_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
pub struct RefundPayment {
    pub refund_id: String,
    pub amount: Money,
    pub reason: String,
}

/// What the PSP says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PspOutcome {
    Authorized,
    Declined,
    Failed,
    Refunded,
}

/// The PSP's asynchronous answer; idempotent on `psp_event_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
pub struct PspCallback {
    pub psp_event_id: String,
    pub psp_reference: String,
    pub outcome: PspOutcome,
    pub decline_code: Option<String>,
}

/// `payment.authorized.v1` (key: order id): the PSP authorized the payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
pub struct PaymentAuthorized {
    pub event_id: String,
    pub payment_id: String,
    #[avro(with = timestamp_millis)]
    pub occurred_at: i64,
    pub causation_id: String,
    pub correlation_id: String,
    pub order_id: String,
    pub amount: Money,
    pub psp_reference: String,
}

/// Why a payment was not authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentFailureReason {
    Declined,
    Timeout,
    PspError,
}

/// `payment.failed.v1` (key: order id): the payment was not authorized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
pub struct PaymentFailed {
    pub event_id: String,
    pub payment_id: String,
    #[avro(with = timestamp_millis)]
    pub occurred_at: i64,
    pub causation_id: String,
    pub correlation_id: String,
    pub order_id: String,
    pub amount: Money,
    pub reason: PaymentFailureReason,
    /// The PSP's decline code or error text, if any.
    pub detail: Option<String>,
}

/// `payment.refunded.v1` (key: order id): money went back to the customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
pub struct PaymentRefunded {
    pub event_id: String,
    pub payment_id: String,
    #[avro(with = timestamp_millis)]
    pub occurred_at: i64,
    pub causation_id: String,
    pub correlation_id: String,
    pub order_id: String,
    pub refund_id: String,
    pub amount: Money,
    pub psp_reference: String,
}
