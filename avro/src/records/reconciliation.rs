//! `reconciliation.mismatches.v1`: the reconciliation processor's verdicts on an order whose
//! saga decision and payment ledger disagree.

use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};

use super::{optional_timestamp_millis, timestamp_millis};

/// Which disagreement: see the `.avsc` for each symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReconciliationKind {
    AuthorizedButCancelled,
    ConfirmedWithoutCapture,
    AmountMismatch,
}

/// Whether the report opens the mismatch or says it was resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReconciliationState {
    Open,
    Resolved,
}

/// `reconciliation.mismatches.v1` (key: order id): a mismatch opened or resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
pub struct ReconciliationMismatch {
    /// Unique per report: `<order id>/<kind>/<opened_at>/<OPEN|RESOLVED>`.
    pub event_id: String,
    pub order_id: String,
    #[avro(with = timestamp_millis)]
    pub occurred_at: i64,
    /// A decision id, `cdc:<position>` or `grace-timer`.
    pub causation_id: String,
    pub correlation_id: String,
    pub kind: ReconciliationKind,
    pub state: ReconciliationState,
    #[avro(with = timestamp_millis)]
    pub opened_at: i64,
    #[avro(with = optional_timestamp_millis, default = "null")]
    pub resolved_at: Option<i64>,
    pub detail: String,
    pub payment_id: Option<String>,
    pub order_status: Option<String>,
    pub payment_status: Option<String>,
    /// Minor units of `currency`.
    pub order_total_minor: Option<i64>,
    /// Minor units.
    pub captured_minor: Option<i64>,
    pub currency: Option<String>,
}
