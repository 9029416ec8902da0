//! The PSP's JSON contract: request and response bodies of every endpoint, the callback event and
//! the admin documents. The payment service's client uses the same types, so the mock and its
//! caller cannot drift apart. Amounts are minor units (`i64`), never floats.

use serde::{Deserialize, Serialize};

/// `POST /v1/authorizations` (header `Idempotency-Key` required).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationRequest {
    /// Amount in the currency's minor unit (cents for EUR); must be > 0.
    pub amount_minor: i64,
    /// ISO 4217 code, three upper-case letters.
    pub currency: String,
    /// The payment-method token, e.g. `tok_visa` (see the module docs for the special tokens).
    pub payment_method: String,
    /// The merchant's reference: Keel sends the payment id; callbacks echo it.
    pub reference: String,
}

/// The state of an authorization at the PSP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthorizationStatus {
    Authorized,
    Declined,
    /// Decided later; the outcome comes as a signed callback (and through `GET`).
    Pending,
    Captured,
    Voided,
}

impl AuthorizationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authorized => "authorized",
            Self::Declined => "declined",
            Self::Pending => "pending",
            Self::Captured => "captured",
            Self::Voided => "voided",
        }
    }
}

/// The answer to `POST /v1/authorizations`: `status` is `authorized`, `declined` or `pending`.
/// A retry with the same `Idempotency-Key` gets exactly this first answer again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationResponse {
    /// The PSP reference of the authorization (`auth_<16 hex>`).
    pub id: String,
    pub status: AuthorizationStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decline_code: Option<String>,
}

/// `GET /v1/authorizations/{id}` and the answer of capture and void: the current state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationView {
    pub id: String,
    pub status: AuthorizationStatus,
    pub amount_minor: i64,
    pub currency: String,
    pub reference: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decline_code: Option<String>,
    pub captured_minor: i64,
    pub refunded_minor: i64,
}

/// `POST /v1/authorizations/{id}/capture`; no amount captures the whole authorization.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_minor: Option<i64>,
}

/// `POST /v1/refunds` (header `Idempotency-Key` required).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    pub authorization_id: String,
    /// Minor units; must be > 0 and at most captured minus already refunded.
    pub amount_minor: i64,
    /// The merchant's refund id.
    pub refund_reference: String,
}

/// The answer to `POST /v1/refunds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundResponse {
    /// The PSP reference of the refund (`re_<16 hex>`).
    pub id: String,
    pub authorization_id: String,
    /// Always `succeeded` (a refused refund is a 422).
    pub status: String,
    pub amount_minor: i64,
}

/// The body of every non-2xx answer. `code` is stable: `missing_idempotency_key`,
/// `invalid_request`, `idempotency_key_reused`, `idempotency_in_progress`, `not_found`,
/// `not_capturable`, `not_voidable`, `refund_exceeds_captured`, `processor_error`,
/// `shutting_down`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

/// The outcome a callback reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallbackOutcome {
    Authorized,
    Declined,
}

/// The JSON body POSTed to `callback_url` when a pending authorization is decided, signed with
/// `Keel-Psp-Timestamp` and `Keel-Psp-Signature` (see [`super::signature`]). The same event
/// (same `event_id`) may arrive more than once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackEvent {
    /// Unique per decision (`evt_<16 hex>`); receivers de-duplicate on it.
    pub event_id: String,
    pub authorization_id: String,
    /// The merchant reference of the authorization (Keel: the payment id).
    pub reference: String,
    pub outcome: CallbackOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decline_code: Option<String>,
}

/// Counters since start, from `GET /admin/stats`. `authorizations` counts authorizations the PSP
/// created (an idempotent replay does not count); errors and refused requests create none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Every `POST /v1/authorizations` received (retries, replays and refused ones included);
    /// against `authorizations` it shows how often a caller asked for the same authorization.
    #[serde(default)]
    pub authorization_calls: u64,
    /// Distinct authorizations created.
    pub authorizations: u64,
    pub authorized: u64,
    pub declined: u64,
    pub pending: u64,
    /// Calls answered 5xx by the error rules.
    pub errors: u64,
    /// Calls that hung (`tok_timeout` or the timeout rate).
    pub timeouts: u64,
    pub captures: u64,
    pub voids: u64,
    pub refunds: u64,
    /// Requests answered from the idempotency store.
    pub idempotent_replays: u64,
    /// Callback deliveries that the receiver acknowledged with 2xx (duplicates included).
    pub callbacks_delivered: u64,
    pub callbacks_failed: u64,
    /// `/v1/...` requests being answered now (a client that gives up ends its request).
    #[serde(default)]
    pub requests_in_flight: u64,
    /// The most `/v1/...` requests ever answered at once: how many calls a client had open.
    #[serde(default)]
    pub max_requests_in_flight: u64,
}

/// How the mock behaves, changeable at runtime through `PUT /admin/behaviour`. Rates are shares
/// in `[0, 1]` of the calls that no special token or amount rule decides; durations are ms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Behaviour {
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
    pub decline_rate: f64,
    pub error_rate: f64,
    /// Share of calls that hang for `timeout_delay_ms` (then authorize, too late for the caller).
    pub timeout_rate: f64,
    pub timeout_delay_ms: u64,
    /// Share of callbacks delivered twice (same `event_id`).
    pub duplicate_callback_rate: f64,
    /// How long a `pending` authorization stays pending before its callback.
    pub pending_delay_ms: u64,
    /// Share of pending authorizations whose callback comes out of order: the decision is
    /// made (and visible at `GET /v1/authorizations/{id}`) on time, but the callback is held
    /// back `callback_reorder_delay_ms`, so it reaches the receiver after whatever the
    /// receiver did meanwhile (a capture, a void, other payments' callbacks); with a duplicate,
    /// one copy comes on time and the other that much later.
    #[serde(default)]
    pub callback_reorder_rate: f64,
    /// How long an out-of-order callback is held back.
    #[serde(default)]
    pub callback_reorder_delay_ms: u64,
}

impl Behaviour {
    /// Every problem at once; empty when the behaviour is usable.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, rate) in [
            ("decline_rate", self.decline_rate),
            ("error_rate", self.error_rate),
            ("timeout_rate", self.timeout_rate),
            ("duplicate_callback_rate", self.duplicate_callback_rate),
            ("callback_reorder_rate", self.callback_reorder_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                problems.push(format!("{name} must be within [0, 1], got {rate}"));
            }
        }
        if self.decline_rate + self.error_rate + self.timeout_rate > 1.0 {
            problems.push("decline_rate + error_rate + timeout_rate must not exceed 1".to_owned());
        }
        if self.latency_min_ms > self.latency_max_ms {
            problems.push(format!(
                "latency_min_ms ({}) must not exceed latency_max_ms ({})",
                self.latency_min_ms, self.latency_max_ms
            ));
        }
        problems
    }

    /// `self` with the fields `patch` sets replaced.
    pub fn patched(&self, patch: &BehaviourPatch) -> Self {
        Self {
            latency_min_ms: patch.latency_min_ms.unwrap_or(self.latency_min_ms),
            latency_max_ms: patch.latency_max_ms.unwrap_or(self.latency_max_ms),
            decline_rate: patch.decline_rate.unwrap_or(self.decline_rate),
            error_rate: patch.error_rate.unwrap_or(self.error_rate),
            timeout_rate: patch.timeout_rate.unwrap_or(self.timeout_rate),
            timeout_delay_ms: patch.timeout_delay_ms.unwrap_or(self.timeout_delay_ms),
            duplicate_callback_rate: patch
                .duplicate_callback_rate
                .unwrap_or(self.duplicate_callback_rate),
            pending_delay_ms: patch.pending_delay_ms.unwrap_or(self.pending_delay_ms),
            callback_reorder_rate: patch
                .callback_reorder_rate
                .unwrap_or(self.callback_reorder_rate),
            callback_reorder_delay_ms: patch
                .callback_reorder_delay_ms
                .unwrap_or(self.callback_reorder_delay_ms),
        }
    }
}

/// The body of `PUT /admin/behaviour`: only the fields to change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BehaviourPatch {
    pub latency_min_ms: Option<u64>,
    pub latency_max_ms: Option<u64>,
    pub decline_rate: Option<f64>,
    pub error_rate: Option<f64>,
    pub timeout_rate: Option<f64>,
    pub timeout_delay_ms: Option<u64>,
    pub duplicate_callback_rate: Option<f64>,
    pub pending_delay_ms: Option<u64>,
    pub callback_reorder_rate: Option<f64>,
    pub callback_reorder_delay_ms: Option<u64>,
}
