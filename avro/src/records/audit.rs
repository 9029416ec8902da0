//! `audit.violations.v1`: the invariant auditor's verdicts on the system's promises.

use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};

use super::{optional_timestamp_millis, timestamp_millis};

/// Which promise: see the `.avsc` for each symbol.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, AvroSchema,
)]
#[avro(namespace = "dev.keel.v1")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuditInvariant {
    StockNonNegative,
    AtMostOneCapture,
    ConfirmedCaptured,
    ConfirmedHoldsSold,
    CancelledHoldsReleased,
    CancelledNotAuthorized,
    CapturedEqualsConfirmed,
}

impl AuditInvariant {
    /// Every invariant, in the `.avsc`'s symbol order.
    pub const ALL: [AuditInvariant; 7] = [
        Self::StockNonNegative,
        Self::AtMostOneCapture,
        Self::ConfirmedCaptured,
        Self::ConfirmedHoldsSold,
        Self::CancelledHoldsReleased,
        Self::CancelledNotAuthorized,
        Self::CapturedEqualsConfirmed,
    ];

    /// The Avro symbol, also the metric label and what `keel audit` prints.
    pub fn code(self) -> &'static str {
        match self {
            Self::StockNonNegative => "STOCK_NON_NEGATIVE",
            Self::AtMostOneCapture => "AT_MOST_ONE_CAPTURE",
            Self::ConfirmedCaptured => "CONFIRMED_CAPTURED",
            Self::ConfirmedHoldsSold => "CONFIRMED_HOLDS_SOLD",
            Self::CancelledHoldsReleased => "CANCELLED_HOLDS_RELEASED",
            Self::CancelledNotAuthorized => "CANCELLED_NOT_AUTHORIZED",
            Self::CapturedEqualsConfirmed => "CAPTURED_EQUALS_CONFIRMED",
        }
    }
}

/// Whether the report opens a violation, says it stopped holding, or reports an allowed
/// oversell (not a violation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuditViolationState {
    Open,
    Resolved,
    Allowed,
}

/// `audit.violations.v1` (key: `subject_id`): a verdict of the invariant auditor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
pub struct AuditViolation {
    /// Unique per report: `<invariant>/<subject_id>/<opened_at>/<state>`.
    pub event_id: String,
    /// The order id, or the SKU for `STOCK_NON_NEGATIVE`.
    pub subject_id: String,
    #[avro(with = timestamp_millis)]
    pub occurred_at: i64,
    /// The id of the event seen, or `grace-timer`.
    pub causation_id: String,
    pub correlation_id: String,
    pub invariant: AuditInvariant,
    pub state: AuditViolationState,
    #[avro(with = timestamp_millis)]
    pub opened_at: i64,
    #[avro(with = optional_timestamp_millis, default = "null")]
    pub resolved_at: Option<i64>,
    pub order_id: Option<String>,
    pub sku: Option<String>,
    pub detail: String,
}
