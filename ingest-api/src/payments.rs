//! The payment routes: open and confirm a payment intent, read a payment from the ledger, ask
//! for a refund, and take the PSP's signed callbacks. Like the order routes they decide
//! nothing: an intent, a confirm, a refund and a callback become commands on `payments_topic`
//! (key: the order id, so they queue behind the order's other payment commands), answered `202`
//! only once Kafka has them; the payment service applies them to the ledger, idempotently.
//!
//! - `POST /payments` — open a payment intent (`CreatePaymentIntent` command; the payment id
//!   is `pay-<orderId>`, one per order). `Idempotency-Key` required: a retry with the same key
//!   and body gets the first answer, another body is a 422, another key for the same order a
//!   409 `payment-exists`.
//! - `POST /payments/{id}/confirm` — authorize the intent (`AuthorizePayment` command, one
//!   command id per payment, so however often it is confirmed the service authorizes once;
//!   the PSP call carries the payment's idempotency key).
//! - `GET /payments/{id}`, `GET /orders/{id}/payment` — [`PaymentView`] from the ledger
//!   (`keel_processors::payment::view`), or `REQUESTED` ([`RequestedPayment`]) for an intent
//!   the API accepted that the payment service has not written yet.
//! - `POST /payments/{id}/refund` — `Idempotency-Key` required; the refund id is derived from
//!   the caller, the payment and the key, so a retry is the same refund (the ledger's primary
//!   key and the payment service make it happen once). Checked here against the ledger: at
//!   most what may still be refunded (captured − refunded − refunds in progress); the payment
//!   service checks again under a row lock, so concurrent refunds cannot exceed the capture.
//!
//! The keys of the payment writes live in `api_payment_requests` (ledger migration 0002, the
//! API's own table; the payment service never reads it): a key is bound to its first body from
//! the moment it is used, so the same key with another body is refused even before the payment
//! service has applied the first command. Keys are kept `[api].idempotency_retention_hours`,
//! then purged in the background ([`crate::idempotency::retention::payments`] says which rows
//! go when, and why a key retried after that moves no money twice).
//! - `POST /psp/callbacks` — the signature (`Keel-Psp-Signature`, HMAC-SHA256 over
//!   `"{Keel-Psp-Timestamp}.{raw body}"`) is checked over the raw bytes before anything is
//!   parsed; a timestamp older or newer than `psp_callback_tolerance_s` is refused. What does
//!   not verify is a 401 and nothing is written. A duplicate (same PSP event id) is forwarded
//!   again under the same command id: the payment service de-duplicates it.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::StreamExt;
use keel_avro::records::{
    AuthorizePayment, CreatePaymentIntent, Money, PaymentCommand, PaymentCommandBody, PspCallback,
    PspOutcome, RefundPayment,
};
use keel_processors::payment::{self, PaymentView};
use keel_processors::psp_mock::api::{CallbackEvent, CallbackOutcome};
use keel_processors::psp_mock::{SIGNATURE_HEADER, SignatureError, TIMESTAMP_HEADER, verify};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use utoipa::ToSchema;

use crate::body::{Required, parse_json, read_json};
use crate::idempotency;
use crate::problem::{Kind, Problem};
use crate::routes::{App, json_response, or_problem, required_idempotency_key, to_json};

pub use keel_processors::money::MAX_AMOUNT_MINOR;

/// `POST /payments/{id}/refund`: give back part or all of what was captured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RefundRequest {
    /// Minor units of the payment's currency; greater than 0, at most the payment's
    /// `refundable` amount and at most [`MAX_AMOUNT_MINOR`].
    pub amount_minor: i64,
    /// Why (1 to 255 characters), e.g. `CUSTOMER_REQUEST`.
    pub reason: String,
}

impl RefundRequest {
    /// The first invalid value, as a 422 naming the field.
    pub fn validate(&self) -> Result<(), Problem> {
        if !keel_processors::money::is_amount(self.amount_minor) {
            return Err(Problem::new(
                Kind::InvalidField,
                format!(
                    "amountMinor must be between 1 and {MAX_AMOUNT_MINOR}, got {}",
                    self.amount_minor
                ),
            )
            .field("amountMinor"));
        }
        let len = self.reason.trim().chars().count();
        if len == 0
            || self.reason.chars().count() > 255
            || self.reason.chars().any(crate::model::is_unsafe_text_char)
        {
            return Err(Problem::new(
                Kind::InvalidField,
                "reason must be 1 to 255 characters without control or bidirectional formatting characters",
            )
            .field("reason"));
        }
        Ok(())
    }
}

/// 202 for a refund: the command is on Kafka; `GET /payments/{id}` shows its progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefundAccepted {
    pub payment_id: String,
    /// The same for every retry with the same `Idempotency-Key`.
    pub refund_id: String,
    /// Always `REFUND_REQUESTED`.
    pub status: String,
}

/// 202 for a PSP callback: verified and on Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallbackAccepted {
    pub event_id: String,
    pub payment_id: String,
    /// Always `FORWARDED`.
    pub status: String,
}

/// The body the PSP POSTs (its contract: `keel_processors::psp_mock::api::CallbackEvent`).
/// Fields the PSP adds later are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PspCallbackBody {
    /// Unique per decision (`evt_<hex>`); duplicates are de-duplicated downstream.
    pub event_id: String,
    /// The PSP's authorization id.
    pub authorization_id: String,
    /// The merchant reference sent when authorizing: Keel's payment id.
    pub reference: String,
    /// `authorized` or `declined`.
    pub outcome: String,
    #[serde(default)]
    pub decline_code: Option<String>,
}

/// The ledger, or 501 `not-served-here` for a process without one: asking it again never
/// helps.
fn ledger(app: &App) -> Result<&PgPool, Problem> {
    app.0.ledger.as_ref().ok_or_else(|| {
        Problem::new(
            Kind::NotServedHere,
            "this process serves no payment routes: it has no payment ledger (PostgreSQL) \
             configured; ask a Keel API that has (keel run --roles ...,api)",
        )
    })
}

/// A failed ledger call: 503, except where PostgreSQL refused the request's own data
/// (SQLSTATE class 22, e.g. 22021 for a NUL character), which no retry fixes: 422.
fn ledger_unavailable<E: std::error::Error + 'static>(e: E) -> Problem {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(error) = source {
        if let Some(sql) = error.downcast_ref::<sqlx::Error>()
            && payment::is_data_error(sql)
        {
            tracing::info!(error = %e, "the payment ledger refused a request's data");
            return Problem::new(
                Kind::InvalidField,
                "the request holds a value the payment ledger cannot store (such as a control \
                 character)",
            );
        }
        source = error.source();
    }
    tracing::warn!(error = %e, "payment ledger call failed");
    Problem::new(
        Kind::DependencyUnavailable,
        "the payment ledger is unavailable; retry later",
    )
}

fn payment_not_found(id: &str) -> Problem {
    Problem::new(
        Kind::PaymentNotFound,
        format!("payment {} does not exist", crate::model::shown(id)),
    )
    .field("id")
}

/// A payment id from the path: 1 to 64 characters without a control character, else a 400
/// naming `id` ([`crate::problem::path_id`]).
fn path_id(path: Result<Path<String>, PathRejection>) -> Result<String, Problem> {
    crate::problem::path_id(
        path,
        "id",
        "payment id",
        crate::problem::PathId::Id,
        Kind::PaymentNotFound,
    )
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A stable id from `parts` (sha256, first 16 bytes, UUID text form): the same parts always
/// give the same id, so a retried request produces the same refund and command.
pub fn derived_id(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for part in parts {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Uuid::from_bytes(bytes).to_string()
}

/// `/payments/{id}`, the id one encoded path segment (an id from another producer that holds
/// `/` or spaces still resolves).
fn payment_location(payment_id: &str) -> String {
    crate::routes::location("payments", payment_id)
}

#[cfg(test)]
mod location_tests {
    #[test]
    fn a_location_is_one_encoded_path_segment() {
        assert_eq!(super::payment_location("pay-1b2c"), "/payments/pay-1b2c");
        assert_eq!(
            super::payment_location("o 1/payment"),
            "/payments/o%201%2Fpayment"
        );
        let sku = |s| crate::routes::location("inventory", s);
        assert_eq!(sku("SKU-A_1.b~"), "/inventory/SKU-A_1.b~");
        assert_eq!(sku("A?B-1"), "/inventory/A%3FB-1");
        assert_eq!(sku("A/B-1"), "/inventory/A%2FB-1");
        assert_eq!(sku("A%41-1"), "/inventory/A%2541-1");
        assert_eq!(sku("A#1"), "/inventory/A%231");
        assert_eq!(sku("été-1"), "/inventory/%C3%A9t%C3%A9-1");
    }
}

#[utoipa::path(
    get,
    path = "/payments/{id}",
    tag = "payments",
    summary = "A payment: status, amounts, PSP attempts and refunds, from the ledger",
    params(("id" = String, Path, description = "The payment id")),
    responses(
        (status = 200, description = "The payment; status REQUESTED while only the API has \
            seen it", body = PaymentResource),
        (status = 400, description = "The payment id is not valid UTF-8 once percent-decoded, \
            holds a control character or is longer than 64 characters (invalid-path-parameter)",
            body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such payment", body = Problem,
            content_type = "application/problem+json"),
        (status = 501, description = "This process has no payment ledger configured \
            (not-served-here): ask a Keel API that has one", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "The ledger is unavailable or too many requests are in \
            progress", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn get_payment(
    State(app): State<App>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    or_problem(get_payment_inner(&app, path).await)
}

async fn get_payment_inner(
    app: &App,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let id = path_id(path)?;
    let pg = ledger(app)?;
    let resource = match payment::load_payment(pg, &id)
        .await
        .map_err(ledger_unavailable)?
    {
        Some(view) => PaymentResource::Stored(Box::new(view)),
        None => PaymentResource::Requested(
            requested_payment(pg, "payment_id", &id)
                .await?
                .ok_or_else(|| payment_not_found(&id))?,
        ),
    };
    Ok(json_response(StatusCode::OK, to_json(&resource), None))
}

#[utoipa::path(
    get,
    path = "/orders/{id}/payment",
    tag = "payments",
    summary = "The payment of an order",
    params(("id" = String, Path, description = "The order id")),
    responses(
        (status = 200, description = "The order's payment; status REQUESTED while only the \
            API has seen it", body = PaymentResource),
        (status = 400, description = "The order id is not valid UTF-8 once percent-decoded, \
            holds a control character or is longer than 64 characters (invalid-path-parameter)",
            body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The order has no payment (yet)", body = Problem,
            content_type = "application/problem+json"),
        (status = 501, description = "This process has no payment ledger configured \
            (not-served-here): ask a Keel API that has one", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "The ledger is unavailable or too many requests are in \
            progress", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn get_order_payment(
    State(app): State<App>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    or_problem(get_order_payment_inner(&app, path).await)
}

async fn get_order_payment_inner(
    app: &App,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let no_payment = |id: &str| {
        Problem::new(
            Kind::PaymentNotFound,
            format!("order {} has no payment (yet)", crate::model::shown(id)),
        )
        .field("id")
    };
    let id = crate::problem::path_id(
        path,
        "id",
        "order id",
        crate::problem::PathId::Id,
        Kind::PaymentNotFound,
    )?;
    let pg = ledger(app)?;
    let resource = match payment::load_payment_by_order(pg, &id)
        .await
        .map_err(ledger_unavailable)?
    {
        Some(view) => PaymentResource::Stored(Box::new(view)),
        None => PaymentResource::Requested(
            requested_payment(pg, "order_id", &id)
                .await?
                .ok_or_else(|| no_payment(&id))?,
        ),
    };
    Ok(json_response(StatusCode::OK, to_json(&resource), None))
}

#[utoipa::path(
    post,
    path = "/payments/{id}/refund",
    tag = "payments",
    summary = "Refund part or all of a captured payment",
    description = "Checks the amount against the ledger, writes a refund command to Kafka and \
        answers once Kafka confirmed it. The refund id is derived from the Idempotency-Key: a \
        retry with the same key and body is the same refund (answered 202 again, refunded \
        once). The API remembers the key idempotency_retention_hours after the first request \
        (default 24 hours); after that, once the payment service has applied the refund, the \
        ledger answers a retry with that key (the same refund, never a second one). The \
        payment service checks the amount again; GET /payments/{id} shows the refund's \
        status.",
    params(
        ("id" = String, Path, description = "The payment id"),
        ("Idempotency-Key" = String, Header,
            description = "Required: names the refund (1-255 visible ASCII); kept \
                idempotency_retention_hours (default 24 hours)"),
    ),
    request_body(content = RefundRequest, content_type = "application/json"),
    security((), ("bearer" = [])),
    responses(
        (status = 202, description = "Accepted: the refund command is on Kafka",
            body = RefundAccepted,
            headers(("Location" = String, description = "/payments/{paymentId}"))),
        (status = 400, description = "Malformed JSON, a missing, unknown or mistyped field, an \
            empty body, a missing or invalid Idempotency-Key, Idempotency-Key, Content-Type or \
            Authorization sent more than once, or a payment id with a control character or \
            longer than 64 characters", body = Problem,
            content_type = "application/problem+json"),
        (status = 401, description = "Authentication is on and no accepted bearer token was sent",
            body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such payment", body = Problem,
            content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than max_body_bytes", body = Problem,
            content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json, or has a \
            Content-Encoding other than identity", body = Problem,
            content_type = "application/problem+json"),
        (status = 422, description = "amountMinor is not positive or exceeds what may still be \
            refunded (refund-exceeds-captured), an invalid reason, or the Idempotency-Key was \
            used with another body", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "This process has no payment ledger configured \
            (not-served-here): ask a Keel API that has one", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "Kafka, the registry or the ledger did not answer in time, \
            or too many requests are in progress", body = Problem,
            content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn refund_payment(
    State(app): State<App>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Response {
    or_problem(refund_payment_inner(&app, &headers, path, body).await)
}

async fn refund_payment_inner(
    app: &App,
    headers: &HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, Problem> {
    let (scope, request) = app
        .write_request(headers, body, RefundRequest::validate)
        .await?;
    let key = required_idempotency_key(headers, "a refund")?;
    let id = path_id(path)?;
    let pg = ledger(app)?;
    let view = payment::load_payment(pg, &id)
        .await
        .map_err(ledger_unavailable)?
        .ok_or_else(|| payment_not_found(&id))?;
    let canonical = serde_json::to_string(&request).unwrap_or_default();
    let refund_id = derived_id(&["refund", &scope, &id, &key]);
    let command_id = derived_id(&["refund-command", &scope, &id, &key, &canonical]);
    let accepted = || {
        to_json(&RefundAccepted {
            payment_id: id.clone(),
            refund_id: refund_id.clone(),
            status: "REFUND_REQUESTED".to_owned(),
        })
    };
    if let Some(existing) = view.refunds.iter().find(|r| r.refund_id == refund_id) {
        // The ledger has this key's refund: a retry gets the first answer, another body is
        // refused (the refund stays the first one).
        if existing.amount.amount_minor == request.amount_minor && existing.reason == request.reason
        {
            let mut response = json_response(
                StatusCode::ACCEPTED,
                accepted(),
                Some(&payment_location(&id)),
            );
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return Ok(response);
        }
        return Err(Problem::new(
            Kind::IdempotencyKeyReused,
            format!(
                "this Idempotency-Key already names refund {refund_id} of {} {} with another body",
                existing.amount.amount_minor, existing.amount.currency
            ),
        )
        .field("Idempotency-Key"));
    }
    // The key is bound to its first body from the moment it is used, not only once the
    // payment service has written the refund: a retry with another body is refused even when
    // the first refund is still on its way.
    let route = format!("POST /payments/{id}/refund");
    let slot = KeySlot {
        scope: &scope,
        route: &route,
        key: &key,
    };
    let hash = idempotency::request_hash(&route, canonical.as_bytes());
    let stale_after = app.produce_timeout() + std::time::Duration::from_secs(30);
    let owned = match claim_key(
        pg,
        &slot,
        &hash,
        &id,
        &view.order_id,
        &command_id,
        stale_after,
    )
    .await
    .map_err(ledger_unavailable)?
    {
        KeyClaim::Mismatch => {
            return Err(Problem::new(
                Kind::IdempotencyKeyReused,
                format!(
                    "this Idempotency-Key already names refund {refund_id} of payment {id} with \
                     another body"
                ),
            )
            .field("Idempotency-Key"));
        }
        KeyClaim::Replay { status, body } => {
            return Ok(replayed(status, body, Some(&payment_location(&id))));
        }
        // The same refund (its ids derive from the key): sending it again is harmless.
        KeyClaim::InProgress { .. } | KeyClaim::Taken => false,
        KeyClaim::Owned { .. } => true,
    };
    let result = send_refund(app, &view, &request, &refund_id, &command_id).await;
    match result {
        Ok(()) => {
            let body = accepted();
            if owned && let Err(e) = complete_key(pg, &slot, 202, &body).await {
                tracing::error!(error = %e, refund_id, "recording the answer failed");
            }
            Ok(json_response(
                StatusCode::ACCEPTED,
                body,
                Some(&payment_location(&id)),
            ))
        }
        Err(problem) => {
            if owned {
                abandon_key(pg, &slot, &problem).await;
            }
            Err(problem)
        }
    }
}

/// Check the amount against what may still be refunded, then produce the refund command.
async fn send_refund(
    app: &App,
    view: &PaymentView,
    request: &RefundRequest,
    refund_id: &str,
    command_id: &str,
) -> Result<(), Problem> {
    if request.amount_minor > view.refundable.amount_minor {
        return Err(Problem::new(
            Kind::RefundExceedsCaptured,
            format!(
                "amountMinor {} exceeds the {} {} that may still be refunded (payment {} is {}: \
                 captured {}, refunded {}, the rest in refunds in progress)",
                request.amount_minor,
                view.refundable.amount_minor,
                view.amount.currency,
                view.payment_id,
                view.status,
                view.captured.amount_minor,
                view.refunded.amount_minor,
            ),
        )
        .field("amountMinor"));
    }
    let command = PaymentCommand {
        command_id: command_id.to_owned(),
        payment_id: view.payment_id.clone(),
        order_id: view.order_id.clone(),
        issued_at: chrono::Utc::now().timestamp_millis(),
        causation_id: command_id.to_owned(),
        correlation_id: view.order_id.clone(),
        command: PaymentCommandBody::Refund(RefundPayment {
            refund_id: refund_id.to_owned(),
            amount: Money::new(request.amount_minor, view.amount.currency.clone()),
            reason: request.reason.clone(),
        }),
    };
    app.send_commands(&app.0.config.payments_topic, std::slice::from_ref(&command))
        .await
}

/// `POST /payments`: open a payment intent for an order (authorized later by
/// `POST /payments/{id}/confirm`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreatePaymentRequest {
    /// The order the payment is for (1 to 60 of `A-Z a-z 0-9 . _ : -`); one payment per order,
    /// whose id is `pay-<orderId>`.
    pub order_id: String,
    #[serde(deserialize_with = "crate::body::object")]
    pub amount: AmountBody,
    /// The PSP's token for the customer's payment method (1 to 255 characters), e.g.
    /// `tok_visa`.
    pub payment_method: String,
    /// Who pays (1 to 64 characters); `anonymous` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
}

/// An amount in minor units of an ISO 4217 currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AmountBody {
    /// The currency's minor units (ISO 4217's exponent: cents for EUR, whole yen for JPY, fils
    /// (1/1000) for BHD), greater than 0 and at most [`MAX_AMOUNT_MINOR`].
    pub amount_minor: i64,
    /// An active ISO 4217 currency code in upper case, e.g. `EUR`; not the X-codes that are no
    /// money (`XXX`, `XTS`, `XAU`, `XDR`…), fund codes (`CLF`, `USN`…) or withdrawn codes
    /// (`HRK`).
    #[schema(pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: String,
}

/// The longest decline code a callback may carry (the PSP's codes are short identifiers such
/// as `insufficient_funds`).
const MAX_DECLINE_CODE_CHARS: usize = 64;

/// The first invalid text, as a 422 naming `field`.
fn check_text(field: &str, value: &str, max: usize) -> Option<Problem> {
    let count = value.chars().count();
    if value.trim().is_empty()
        || count > max
        || value.chars().any(crate::model::is_unsafe_text_char)
    {
        return Some(
            Problem::new(
                Kind::InvalidField,
                format!(
                    "{field} must be 1 to {max} characters without control or bidirectional \
                     formatting characters"
                ),
            )
            .field(field),
        );
    }
    None
}

impl CreatePaymentRequest {
    /// The first invalid value, as a 422 naming the field.
    pub fn validate(&self) -> Result<(), Problem> {
        let id_ok = (1..=60).contains(&self.order_id.len())
            && self
                .order_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if !id_ok {
            return Err(Problem::new(
                Kind::InvalidField,
                format!(
                    "orderId must be 1 to 60 of A-Z a-z 0-9 . _ : -, got {}",
                    crate::model::shown(&self.order_id)
                ),
            )
            .field("orderId"));
        }
        if !keel_processors::money::is_amount(self.amount.amount_minor) {
            return Err(Problem::new(
                Kind::InvalidField,
                format!(
                    "amount.amountMinor must be between 1 and {MAX_AMOUNT_MINOR}, got {}",
                    self.amount.amount_minor
                ),
            )
            .field("amount.amountMinor"));
        }
        let c = &self.amount.currency;
        if !keel_processors::money::is_currency_code(c) {
            return Err(Problem::new(
                Kind::InvalidField,
                format!(
                    "amount.currency must be an active ISO 4217 currency code in upper case \
                     such as EUR (not XXX, XTS, a metal, a fund or a withdrawn code), got {}",
                    crate::model::shown(c)
                ),
            )
            .field("amount.currency"));
        }
        let checks = [
            check_text("paymentMethod", &self.payment_method, 255),
            self.customer_id
                .as_deref()
                .and_then(|c| check_text("customerId", c, 64)),
        ];
        match checks.into_iter().flatten().next() {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }
}

/// `POST /payments/{id}/confirm`: the body is optional and has no fields yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmRequest {}

/// 202 for `POST /payments` and `POST /payments/{id}/confirm`: the command is on Kafka;
/// `GET /payments/{id}` (the `Location`) shows the payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentAccepted {
    pub payment_id: String,
    pub order_id: String,
    /// `REQUESTED` for a new intent, `CONFIRMATION_REQUESTED` for a confirm.
    pub status: String,
    pub amount: MoneyBody,
}

/// An amount in minor units and its ISO 4217 code (as in [`PaymentView`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MoneyBody {
    pub amount_minor: i64,
    pub currency: String,
}

/// A payment the API accepted (`POST /payments`) that the payment service has not written yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestedPayment {
    pub payment_id: String,
    pub order_id: String,
    /// Always `REQUESTED`.
    pub status: String,
    pub amount: MoneyBody,
    /// When the API accepted it, RFC 3339 UTC.
    pub requested_at: String,
}

/// `GET /payments/{id}`: the payment from the ledger, or one only requested so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum PaymentResource {
    Stored(Box<PaymentView>),
    Requested(RequestedPayment),
}

/// What claiming an `Idempotency-Key` of a payment route gave (`api_payment_requests`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyClaim {
    /// This request handles it, with these ids (fresh, or those of a failed earlier attempt).
    Owned { command_id: String },
    /// A request with this key and body finished: answer as it did.
    Replay { status: u16, body: String },
    /// A request with this key and body is being handled now.
    InProgress { command_id: String },
    /// The key was used with another body.
    Mismatch,
    /// Another key already requested this payment (only `POST /payments`).
    Taken,
}

/// One key of one route: the row of `api_payment_requests` a request claims.
#[derive(Debug, Clone)]
struct KeySlot<'a> {
    scope: &'a str,
    route: &'a str,
    key: &'a str,
}

/// The route of `POST /payments` in `api_payment_requests`.
const CREATE_ROUTE: &str = "POST /payments";

/// (request_hash, command_id, response_status, response_body).
type KeyRow = (String, String, Option<i32>, Option<String>);

/// Claim `slot` for a request hashing to `hash` about `payment_id`/`order_id`, with
/// `command_id` if it is new. A row left in progress for longer than `stale_after` (its
/// process died) or failed with 503 is taken over with its ids, so a command that did reach
/// Kafka is not sent twice under two ids. A row that vanishes between the insert and the read
/// (released by its request, or purged as it expired) is claimed again.
#[allow(clippy::too_many_arguments)]
async fn claim_key(
    pg: &PgPool,
    slot: &KeySlot<'_>,
    hash: &str,
    payment_id: &str,
    order_id: &str,
    command_id: &str,
    stale_after: std::time::Duration,
) -> Result<KeyClaim, sqlx::Error> {
    let mut vanished = false;
    for _ in 0..3 {
        let inserted = sqlx::query(
            "INSERT INTO api_payment_requests (scope, route, idem_key, request_hash, \
             payment_id, order_id, command_id) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT DO NOTHING",
        )
        .bind(slot.scope)
        .bind(slot.route)
        .bind(slot.key)
        .bind(hash)
        .bind(payment_id)
        .bind(order_id)
        .bind(command_id)
        .execute(pg)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(KeyClaim::Owned {
                command_id: command_id.to_owned(),
            });
        }
        let row: Option<KeyRow> = sqlx::query_as(
            "SELECT request_hash, command_id, response_status, response_body \
             FROM api_payment_requests WHERE scope = $1 AND route = $2 AND idem_key = $3",
        )
        .bind(slot.scope)
        .bind(slot.route)
        .bind(slot.key)
        .fetch_optional(pg)
        .await?;
        let Some((stored_hash, stored_command, status, body)) = row else {
            // The conflict was on another key's claim of the same payment, unless this key's
            // row went between the two statements: then the insert succeeds on the next turn.
            if vanished {
                return Ok(KeyClaim::Taken);
            }
            vanished = true;
            continue;
        };
        if stored_hash != hash {
            return Ok(KeyClaim::Mismatch);
        }
        if let Some(s) = status
            && s != 503
        {
            return Ok(KeyClaim::Replay {
                status: u16::try_from(s).unwrap_or(500),
                body: body.unwrap_or_default(),
            });
        }
        let took = sqlx::query(
            "UPDATE api_payment_requests SET response_status = NULL, response_body = NULL, \
             created_at = now() WHERE scope = $1 AND route = $2 AND idem_key = $3 \
             AND request_hash = $4 AND (response_status = 503 OR (response_status IS NULL \
             AND created_at < now() - make_interval(secs => $5)))",
        )
        .bind(slot.scope)
        .bind(slot.route)
        .bind(slot.key)
        .bind(hash)
        .bind(stale_after.as_secs_f64())
        .execute(pg)
        .await?;
        if took.rows_affected() == 1 {
            return Ok(KeyClaim::Owned {
                command_id: stored_command,
            });
        }
        if status.is_none() {
            return Ok(KeyClaim::InProgress {
                command_id: stored_command,
            });
        }
        // Another retry took the failed row over a moment ago: read again (the insert
        // conflicts again and changes nothing).
    }
    Ok(KeyClaim::InProgress {
        command_id: command_id.to_owned(),
    })
}

/// Record the answer that retries of `slot` get.
async fn complete_key(
    pg: &PgPool,
    slot: &KeySlot<'_>,
    status: u16,
    body: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE api_payment_requests SET response_status = $4, response_body = $5 \
         WHERE scope = $1 AND route = $2 AND idem_key = $3",
    )
    .bind(slot.scope)
    .bind(slot.route)
    .bind(slot.key)
    .bind(i32::from(status))
    .bind(body)
    .execute(pg)
    .await?;
    Ok(())
}

/// After `problem`: a 503 keeps the key for a retry (same ids), any other problem forgets it
/// (nothing was sent, a retry starts afresh).
async fn abandon_key(pg: &PgPool, slot: &KeySlot<'_>, problem: &Problem) {
    let sql = if problem.status == StatusCode::SERVICE_UNAVAILABLE.as_u16() {
        "UPDATE api_payment_requests SET response_status = 503 \
         WHERE scope = $1 AND route = $2 AND idem_key = $3 AND response_status IS NULL"
    } else {
        "DELETE FROM api_payment_requests \
         WHERE scope = $1 AND route = $2 AND idem_key = $3 AND response_status IS NULL"
    };
    if let Err(e) = sqlx::query(sql)
        .bind(slot.scope)
        .bind(slot.route)
        .bind(slot.key)
        .execute(pg)
        .await
    {
        tracing::warn!(error = %e, "releasing a payment Idempotency-Key failed");
    }
}

/// A payment `POST /payments` accepted (202) that the ledger may not have yet, by payment id
/// or by order id.
async fn requested_payment(
    pg: &PgPool,
    column: &'static str,
    id: &str,
) -> Result<Option<RequestedPayment>, Problem> {
    let sql = format!(
        "SELECT response_body, created_at FROM api_payment_requests \
         WHERE {column} = $1 AND route = $2 AND response_status = 202 LIMIT 1"
    );
    let row: Option<(Option<String>, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(CREATE_ROUTE)
            .fetch_optional(pg)
            .await
            .map_err(ledger_unavailable)?;
    let Some((Some(body), at)) = row else {
        return Ok(None);
    };
    let Ok(accepted) = serde_json::from_str::<PaymentAccepted>(&body) else {
        return Ok(None);
    };
    Ok(Some(RequestedPayment {
        payment_id: accepted.payment_id,
        order_id: accepted.order_id,
        status: "REQUESTED".to_owned(),
        amount: accepted.amount,
        requested_at: at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    }))
}

/// Whether the payment service applied `command_id`.
async fn command_applied(pg: &PgPool, command_id: &str) -> Result<bool, Problem> {
    let row: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM processed_commands WHERE command_id = $1")
            .bind(command_id)
            .fetch_optional(pg)
            .await
            .map_err(ledger_unavailable)?;
    Ok(row.is_some())
}

fn replayed(status: u16, body: String, location: Option<&str>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED);
    let mut response = json_response(status, body, location);
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}

#[utoipa::path(
    post,
    path = "/payments",
    tag = "payments",
    summary = "Open a payment intent for an order",
    description = "Writes a create-intent command to Kafka and answers once Kafka confirmed it; \
        the payment service then writes the payment (status INTENT) to the ledger. The payment \
        id is pay-<orderId>: one payment per order. A retry with the same Idempotency-Key and \
        body gets the first answer, and the same key with another body is a 422, for \
        idempotency_retention_hours after the first request (default 24 hours); after that \
        (once the payment service has written the payment) the key is forgotten, and a \
        request with it is new: the ledger keeps one payment per order, so it is a 409 \
        payment-exists with the payment's currentStatus, never a second payment. Authorize \
        it with POST /payments/{id}/confirm.",
    params(
        ("Idempotency-Key" = String, Header,
            description = "Required: names the request (1-255 visible ASCII); kept \
                idempotency_retention_hours (default 24 hours)"),
    ),
    request_body(content = CreatePaymentRequest, content_type = "application/json"),
    security((), ("bearer" = [])),
    responses(
        (status = 202, description = "Accepted: the create-intent command is on Kafka",
            body = PaymentAccepted,
            headers(("Location" = String, description = "/payments/{paymentId}"))),
        (status = 400, description = "Malformed JSON, a missing, unknown or mistyped field, an \
            empty body, a missing or invalid Idempotency-Key, or Idempotency-Key, Content-Type \
            or Authorization sent more than once (invalid-header)", body = Problem,
            content_type = "application/problem+json"),
        (status = 401, description = "Authentication is on and no accepted bearer token was sent",
            body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The order already has a payment, or another key requested \
            one (payment-exists), the orderId is a checkout's, whose payment is the saga's \
            (checkout-order), or a request with this Idempotency-Key is in progress",
            body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than max_body_bytes", body = Problem,
            content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json, or has a \
            Content-Encoding other than identity", body = Problem,
            content_type = "application/problem+json"),
        (status = 422, description = "An invalid orderId, amount.amountMinor, amount.currency, \
            paymentMethod or customerId, or the Idempotency-Key was used with another body",
            body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "This process has no payment ledger configured \
            (not-served-here): ask a Keel API that has one", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "Kafka, the registry or the ledger did not answer in time, \
            or too many requests are in progress", body = Problem,
            content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn create_payment(
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    or_problem(create_payment_inner(&app, &headers, body).await)
}

async fn create_payment_inner(
    app: &App,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let (scope, request) = app
        .write_request(headers, body, CreatePaymentRequest::validate)
        .await?;
    let key = required_idempotency_key(headers, "a payment intent")?;
    let pg = ledger(app)?;
    crate::routes::refuse_checkout_order(app, &request.order_id, "POST /payments").await?;
    let payment_id = format!("pay-{}", request.order_id);
    let canonical = serde_json::to_vec(&request).unwrap_or_default();
    let hash = idempotency::request_hash(CREATE_ROUTE, &canonical);
    let slot = KeySlot {
        scope: &scope,
        route: CREATE_ROUTE,
        key: &key,
    };
    let location = payment_location(&payment_id);
    let stale_after = app.produce_timeout() + std::time::Duration::from_secs(30);
    let fresh = uuid::Uuid::new_v4().to_string();
    let claim = claim_key(
        pg,
        &slot,
        &hash,
        &payment_id,
        &request.order_id,
        &fresh,
        stale_after,
    )
    .await
    .map_err(ledger_unavailable)?;
    let command_id = match claim {
        KeyClaim::Owned { command_id } => command_id,
        KeyClaim::Replay { status, body } => {
            return Ok(replayed(status, body, Some(&location)));
        }
        KeyClaim::InProgress { .. } => {
            return Err(Problem::new(
                Kind::RequestInProgress,
                "a request with this Idempotency-Key is still in progress; retry shortly",
            )
            .field("Idempotency-Key"));
        }
        KeyClaim::Mismatch => return Err(key_reused()),
        KeyClaim::Taken => {
            return Err(Problem::new(
                Kind::PaymentExists,
                format!(
                    "order {} already has payment {payment_id}, requested under another \
                     Idempotency-Key",
                    crate::model::shown(&request.order_id)
                ),
            )
            .field("orderId"));
        }
    };
    let result = send_intent(app, pg, &request, &payment_id, &command_id).await;
    match result {
        Ok(accepted) => {
            let body = to_json(&accepted);
            if let Err(e) = complete_key(pg, &slot, 202, &body).await {
                // The command is on Kafka: the answer is still 202.
                tracing::error!(error = %e, payment_id, "recording the answer failed");
            }
            Ok(json_response(StatusCode::ACCEPTED, body, Some(&location)))
        }
        Err(problem) => {
            abandon_key(pg, &slot, &problem).await;
            Err(problem)
        }
    }
}

fn key_reused() -> Problem {
    Problem::new(
        Kind::IdempotencyKeyReused,
        "this Idempotency-Key was used with a different request body",
    )
    .field("Idempotency-Key")
}

/// Check the ledger, then produce the create-intent command.
async fn send_intent(
    app: &App,
    pg: &PgPool,
    request: &CreatePaymentRequest,
    payment_id: &str,
    command_id: &str,
) -> Result<PaymentAccepted, Problem> {
    if let Some(existing) = payment::load_payment_by_order(pg, &request.order_id)
        .await
        .map_err(ledger_unavailable)?
        // A retry whose first attempt's command was applied: the first answer stands.
        && !command_applied(pg, command_id).await?
    {
        return Err(Problem::new(
            Kind::PaymentExists,
            format!(
                "order {} already has payment {} ({})",
                crate::model::shown(&request.order_id),
                existing.payment_id,
                existing.status
            ),
        )
        .field("orderId")
        .current_status(existing.status));
    }
    let command = PaymentCommand {
        command_id: command_id.to_owned(),
        payment_id: payment_id.to_owned(),
        order_id: request.order_id.clone(),
        issued_at: chrono::Utc::now().timestamp_millis(),
        causation_id: command_id.to_owned(),
        correlation_id: request.order_id.clone(),
        command: PaymentCommandBody::CreateIntent(CreatePaymentIntent {
            customer_id: request
                .customer_id
                .clone()
                .unwrap_or_else(|| "anonymous".to_owned()),
            amount: Money::new(request.amount.amount_minor, request.amount.currency.clone()),
            payment_method: request.payment_method.clone(),
        }),
    };
    app.send_commands(&app.0.config.payments_topic, std::slice::from_ref(&command))
        .await?;
    Ok(PaymentAccepted {
        payment_id: payment_id.to_owned(),
        order_id: request.order_id.clone(),
        status: "REQUESTED".to_owned(),
        amount: MoneyBody {
            amount_minor: request.amount.amount_minor,
            currency: request.amount.currency.clone(),
        },
    })
}

#[utoipa::path(
    post,
    path = "/payments/{id}/confirm",
    tag = "payments",
    summary = "Authorize a payment intent with the PSP",
    description = "Writes an authorize command to Kafka (behind the intent's own command: both \
        are keyed by the order) and answers once Kafka confirmed it; the payment service calls \
        the PSP with the payment's idempotency key, so however often it is confirmed or \
        replayed the card is authorized once. Every confirm of a payment is the same command. \
        GET /payments/{id} shows AUTHORIZING, then AUTHORIZED or FAILED.",
    params(("id" = String, Path, description = "The payment id")),
    request_body(content = Option<ConfirmRequest>, content_type = "application/json",
        description = "Optional; no fields yet"),
    security((), ("bearer" = [])),
    responses(
        (status = 202, description = "Accepted: the authorize command is on Kafka",
            body = PaymentAccepted,
            headers(("Location" = String, description = "/payments/{paymentId}"))),
        (status = 400, description = "Malformed JSON, an unknown field, Content-Type or \
            Authorization sent more than once, or a payment id with a control character or \
            longer than 64 characters", body = Problem,
            content_type = "application/problem+json"),
        (status = 401, description = "Authentication is on and no accepted bearer token was sent",
            body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such payment", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "The payment is past its intent (currentStatus says \
            which), or it is a checkout's, which the saga authorizes (checkout-order)",
            body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than max_body_bytes", body = Problem,
            content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json, or has a \
            Content-Encoding other than identity", body = Problem,
            content_type = "application/problem+json"),
        (status = 501, description = "This process has no payment ledger configured \
            (not-served-here): ask a Keel API that has one", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "Kafka, the registry or the ledger did not answer in time, \
            or too many requests are in progress", body = Problem,
            content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn confirm_payment(
    State(app): State<App>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Response {
    or_problem(confirm_payment_inner(&app, &headers, path, body).await)
}

async fn confirm_payment_inner(
    app: &App,
    headers: &HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, Problem> {
    app.authorize(headers)?;
    let _request: ConfirmRequest =
        read_json(headers, body, app.0.config.max_body_bytes, Required::No)
            .await?
            .unwrap_or_default();
    let id = path_id(path)?;
    let pg = ledger(app)?;
    let (order_id, amount) = match payment::load_payment(pg, &id)
        .await
        .map_err(ledger_unavailable)?
    {
        Some(view) if matches!(view.status.as_str(), "INTENT" | "AUTHORIZING") => (
            view.order_id,
            MoneyBody {
                amount_minor: view.amount.amount_minor,
                currency: view.amount.currency,
            },
        ),
        Some(view) => {
            return Err(Problem::new(
                Kind::IllegalTransition,
                format!(
                    "payment {} is {} and can no longer be confirmed",
                    crate::model::shown(&id),
                    view.status
                ),
            )
            .current_status(view.status));
        }
        // Accepted, not written yet: the authorize command queues behind the intent's.
        None => match requested_payment(pg, "payment_id", &id).await? {
            Some(requested) => (requested.order_id, requested.amount),
            None => return Err(payment_not_found(&id)),
        },
    };
    // A checkout's payment is authorized by the saga, not through this route (break report
    // 14, D4: a confirm of `pay-<order id>` was a 202 where the other routes answer 409).
    crate::routes::refuse_checkout_order(app, &order_id, "POST /payments/{id}/confirm").await?;
    // One command per payment: a repeated confirm is de-duplicated by the payment service.
    let command_id = derived_id(&["confirm", &id]);
    let command = PaymentCommand {
        command_id: command_id.clone(),
        payment_id: id.clone(),
        order_id: order_id.clone(),
        issued_at: chrono::Utc::now().timestamp_millis(),
        causation_id: command_id,
        correlation_id: order_id.clone(),
        command: PaymentCommandBody::Authorize(AuthorizePayment {
            amount: Money::new(amount.amount_minor, amount.currency.clone()),
        }),
    };
    app.send_commands(&app.0.config.payments_topic, std::slice::from_ref(&command))
        .await?;
    let body = to_json(&PaymentAccepted {
        payment_id: id.clone(),
        order_id,
        status: "CONFIRMATION_REQUESTED".to_owned(),
        amount,
    });
    Ok(json_response(
        StatusCode::ACCEPTED,
        body,
        Some(&payment_location(&id)),
    ))
}

/// Read at most `limit` bytes of `body`, untouched (the signature covers these exact bytes);
/// a compressed body is 415 ([`crate::body::check_content_encoding`]).
async fn read_raw(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, Problem> {
    crate::body::check_content_encoding(headers)?;
    let too_large = || {
        Problem::new(
            Kind::BodyTooLarge,
            format!("the body is larger than the limit of {limit} bytes"),
        )
    };
    if let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && length > limit as u64
    {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| {
            Problem::new(
                Kind::UnreadableBody,
                format!("reading the body failed: {e}"),
            )
        })?;
        if bytes.len() + chunk.len() > limit {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

fn signature_refused(detail: String, field: &str) -> Problem {
    tracing::warn!(detail, "PSP callback refused");
    Problem::new(Kind::InvalidSignature, detail).field(field)
}

/// A signature header's text, sent once: a second timestamp or signature line is refused, not
/// chosen from.
fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, Problem> {
    if headers.get_all(name).iter().count() > 1 {
        return Err(signature_refused(
            format!("the {name} header was sent more than once; send it once"),
            name,
        ));
    }
    headers
        .get(name)
        .ok_or_else(|| signature_refused(format!("the {name} header is missing"), name))?
        .to_str()
        .map_err(|_| signature_refused(format!("the {name} header is not valid text"), name))
}

/// Check the signature headers against `raw`; a 401 naming the header otherwise.
fn verify_callback(app: &App, headers: &HeaderMap, raw: &[u8]) -> Result<(), Problem> {
    let timestamp = header_text(headers, TIMESTAMP_HEADER)?;
    let signature = header_text(headers, SIGNATURE_HEADER)?;
    let config = &app.0.config;
    verify(
        &config.psp_callback_secret,
        timestamp,
        signature,
        raw,
        now_s(),
        config.psp_callback_tolerance_s,
    )
    .map_err(|e| {
        let field = match e {
            SignatureError::MalformedTimestamp(_)
            | SignatureError::TooOld { .. }
            | SignatureError::InFuture { .. } => TIMESTAMP_HEADER,
            _ => SIGNATURE_HEADER,
        };
        signature_refused(e.to_string(), field)
    })
}

#[utoipa::path(
    post,
    path = "/psp/callbacks",
    tag = "payments",
    summary = "The PSP's signed asynchronous result of an authorization",
    description = "Verifies Keel-Psp-Signature (v1=<hex HMAC-SHA256(secret, \
        \"{Keel-Psp-Timestamp}.{raw body}\")>) over the raw body and refuses timestamps more \
        than psp_callback_tolerance_s away from now, in either direction: 401, nothing written. \
        A verified callback becomes a PspCallback command on the payments topic (key: the \
        order id), answered 202 once Kafka confirmed it. The same event twice is forwarded \
        twice and applied once.",
    params(
        ("Keel-Psp-Timestamp" = String, Header, description = "Unix seconds of the signature"),
        ("Keel-Psp-Signature" = String, Header,
            description = "v1=<hex>; several comma-separated during key rotation"),
    ),
    request_body(content = PspCallbackBody, content_type = "application/json"),
    responses(
        (status = 202, description = "Verified and on Kafka", body = CallbackAccepted),
        (status = 400, description = "Signed, but not a callback: malformed JSON or a missing \
            or mistyped field", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, repeated or malformed signature headers, a \
            signature that does not match the body, or a timestamp outside the tolerance \
            (invalid-signature)",
            body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The callback names no payment the ledger knows",
            body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than max_body_bytes", body = Problem,
            content_type = "application/problem+json"),
        (status = 415, description = "The body has a Content-Encoding other than identity \
            (the signature covers the bytes as sent; send them uncompressed)", body = Problem,
            content_type = "application/problem+json"),
        (status = 422, description = "An event id, authorization id or reference that is \
            empty, longer than 255 characters or holds control characters, a decline code \
            longer than 64 characters or with control characters, or an unknown outcome",
            body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "This process has no payment ledger configured \
            (not-served-here): ask a Keel API that has one", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "Kafka, the registry or the ledger did not answer in time, \
            or too many requests are in progress", body = Problem,
            content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn psp_callback(
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    or_problem(psp_callback_inner(&app, &headers, body).await)
}

async fn psp_callback_inner(
    app: &App,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let raw = read_raw(headers, body, app.0.config.max_body_bytes).await?;
    verify_callback(app, headers, &raw)?;
    let event: CallbackEvent = parse_json(&raw)?;
    for (field, value) in [
        ("event_id", &event.event_id),
        ("authorization_id", &event.authorization_id),
        ("reference", &event.reference),
    ] {
        // Control characters (a NUL above all) are refused here: PostgreSQL cannot store
        // them, and a forwarded one would be a command the payment service can never apply.
        if value.trim().is_empty()
            || value.chars().count() > 255
            || value.chars().any(crate::model::is_unsafe_text_char)
        {
            return Err(Problem::new(
                Kind::InvalidField,
                format!(
                    "{field} must be 1 to 255 characters without control or bidirectional \
                     formatting characters"
                ),
            )
            .field(field));
        }
    }
    if let Some(code) = &event.decline_code
        && let Some(problem) = check_text("decline_code", code, MAX_DECLINE_CODE_CHARS)
    {
        return Err(problem);
    }
    let keys = payment::locate_payment(ledger(app)?, &event.reference, &event.authorization_id)
        .await
        .map_err(ledger_unavailable)?
        .ok_or_else(|| {
            Problem::new(
                Kind::PaymentNotFound,
                format!(
                    "no payment has reference {:?} or authorization {:?}",
                    event.reference, event.authorization_id
                ),
            )
            .field("reference")
        })?;
    // One command id per PSP event: a duplicate delivery is the same command.
    let command_id = derived_id(&["psp-callback", &event.event_id]);
    let command = PaymentCommand {
        command_id,
        payment_id: keys.payment_id.clone(),
        order_id: keys.order_id.clone(),
        issued_at: chrono::Utc::now().timestamp_millis(),
        causation_id: event.event_id.clone(),
        correlation_id: keys.order_id.clone(),
        command: PaymentCommandBody::PspCallback(PspCallback {
            psp_event_id: event.event_id.clone(),
            psp_reference: event.authorization_id.clone(),
            outcome: match event.outcome {
                CallbackOutcome::Authorized => PspOutcome::Authorized,
                CallbackOutcome::Declined => PspOutcome::Declined,
            },
            decline_code: event.decline_code.clone(),
        }),
    };
    app.send_commands(&app.0.config.payments_topic, std::slice::from_ref(&command))
        .await?;
    let body = to_json(&CallbackAccepted {
        event_id: event.event_id,
        payment_id: keys.payment_id,
        status: "FORWARDED".to_owned(),
    });
    Ok(json_response(StatusCode::ACCEPTED, body, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_depend_on_every_part() {
        let a = derived_id(&["refund", "anonymous", "pay-1", "key-1"]);
        assert_eq!(a, derived_id(&["refund", "anonymous", "pay-1", "key-1"]));
        assert_eq!(a.len(), 36);
        assert_ne!(a, derived_id(&["refund", "anonymous", "pay-2", "key-1"]));
        assert_ne!(a, derived_id(&["refund", "anonymous", "pay-1", "key-2"]));
        // Parts are delimited: moving a character between parts changes the id.
        assert_ne!(derived_id(&["ab", "c"]), derived_id(&["a", "bc"]));
    }

    #[test]
    fn a_refund_needs_a_positive_amount_and_a_reason() {
        let ok = RefundRequest {
            amount_minor: 1,
            reason: "CUSTOMER_REQUEST".into(),
        };
        assert_eq!(ok.validate(), Ok(()));
        for (amount_minor, reason, field) in [
            (0, "x", "amountMinor"),
            (-5, "x", "amountMinor"),
            (i64::MIN, "x", "amountMinor"),
            (MAX_AMOUNT_MINOR + 1, "x", "amountMinor"),
            (i64::MAX, "x", "amountMinor"),
            (1, " ", "reason"),
            (1, "a\u{7}", "reason"),
        ] {
            let p = RefundRequest {
                amount_minor,
                reason: reason.into(),
            }
            .validate()
            .expect_err(field);
            assert_eq!((p.status, p.field.as_deref()), (422, Some(field)));
        }
    }
}
