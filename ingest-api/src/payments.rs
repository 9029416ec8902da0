//! The payment routes: read a payment from the ledger, ask for a refund, and take the PSP's
//! signed callbacks. Like the order routes they decide nothing: a refund and a callback become
//! commands on `payments_topic` (key: the order id, so they queue behind the order's other
//! payment commands), answered `202` only once Kafka has them; the payment service applies them
//! to the ledger, idempotently.
//!
//! - `GET /payments/{id}`, `GET /orders/{id}/payment` — [`PaymentView`] from the ledger
//!   (`keel_processors::payment::view`).
//! - `POST /payments/{id}/refund` — `Idempotency-Key` required; the refund id is derived from
//!   the caller, the payment and the key, so a retry is the same refund (the ledger's primary
//!   key and the payment service make it happen once). Checked here against the ledger: at
//!   most what may still be refunded (captured − refunded − refunds in progress); the payment
//!   service checks again under a row lock, so concurrent refunds cannot exceed the capture.
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
    Money, PaymentCommand, PaymentCommandBody, PspCallback, PspOutcome, RefundPayment,
};
use keel_processors::payment::{self, PaymentView};
use keel_processors::psp_mock::api::{CallbackEvent, CallbackOutcome};
use keel_processors::psp_mock::{SIGNATURE_HEADER, SignatureError, TIMESTAMP_HEADER, verify};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use utoipa::ToSchema;

use crate::body::parse_json;
use crate::problem::{Kind, Problem};
use crate::routes::{App, json_response, or_problem, required_idempotency_key, to_json};

/// `POST /payments/{id}/refund`: give back part or all of what was captured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RefundRequest {
    /// Minor units of the payment's currency; greater than 0 and at most the payment's
    /// `refundable` amount.
    pub amount_minor: i64,
    /// Why (1 to 255 characters), e.g. `CUSTOMER_REQUEST`.
    pub reason: String,
}

impl RefundRequest {
    /// The first invalid value, as a 422 naming the field.
    pub fn validate(&self) -> Result<(), Problem> {
        if self.amount_minor <= 0 {
            return Err(Problem::new(
                Kind::InvalidField,
                format!(
                    "amountMinor must be greater than 0, got {}",
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

fn ledger(app: &App) -> Result<&PgPool, Problem> {
    app.0.ledger.as_ref().ok_or_else(|| {
        Problem::new(
            Kind::DependencyUnavailable,
            "this API has no payment ledger configured; retry against one that has",
        )
    })
}

fn ledger_unavailable(e: impl std::fmt::Display) -> Problem {
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

/// An id from the path: 1 to 64 characters, else no such payment.
fn path_id(path: Result<Path<String>, PathRejection>) -> Result<String, Problem> {
    match path {
        Ok(Path(id)) if !id.is_empty() && id.chars().count() <= 64 => Ok(id),
        Ok(Path(id)) => Err(payment_not_found(&id)),
        Err(e) => {
            Err(Problem::new(Kind::PaymentNotFound, format!("no such payment: {e}")).field("id"))
        }
    }
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

/// `/payments/{id}` with the id percent-encoded as one path segment (RFC 3986 unreserved
/// characters kept), so an id from another producer that holds `/` or spaces still resolves.
fn payment_location(payment_id: &str) -> String {
    use std::fmt::Write as _;
    let mut path = String::from("/payments/");
    for b in payment_id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            path.push(char::from(b));
        } else {
            let _ = write!(path, "%{b:02X}");
        }
    }
    path
}

#[cfg(test)]
mod location_tests {
    #[test]
    fn a_payment_location_is_one_encoded_path_segment() {
        assert_eq!(super::payment_location("pay-1b2c"), "/payments/pay-1b2c");
        assert_eq!(
            super::payment_location("o 1/payment"),
            "/payments/o%201%2Fpayment"
        );
    }
}

#[utoipa::path(
    get,
    path = "/payments/{id}",
    tag = "payments",
    summary = "A payment: status, amounts, PSP attempts and refunds, from the ledger",
    params(("id" = String, Path, description = "The payment id")),
    responses(
        (status = 200, description = "The payment", body = PaymentView),
        (status = 404, description = "No such payment", body = Problem,
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
    let view = payment::load_payment(ledger(app)?, &id)
        .await
        .map_err(ledger_unavailable)?
        .ok_or_else(|| payment_not_found(&id))?;
    Ok(json_response(StatusCode::OK, to_json(&view), None))
}

#[utoipa::path(
    get,
    path = "/orders/{id}/payment",
    tag = "payments",
    summary = "The payment of an order",
    params(("id" = String, Path, description = "The order id")),
    responses(
        (status = 200, description = "The order's payment", body = PaymentView),
        (status = 404, description = "The order has no payment (yet)", body = Problem,
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
    let id = match path {
        Ok(Path(id)) if !id.is_empty() && id.chars().count() <= 64 => id,
        Ok(Path(id)) => return Err(no_payment(&id)),
        Err(e) => return Err(no_payment(&e.to_string())),
    };
    let view = payment::load_payment_by_order(ledger(app)?, &id)
        .await
        .map_err(ledger_unavailable)?
        .ok_or_else(|| no_payment(&id))?;
    Ok(json_response(StatusCode::OK, to_json(&view), None))
}

#[utoipa::path(
    post,
    path = "/payments/{id}/refund",
    tag = "payments",
    summary = "Refund part or all of a captured payment",
    description = "Checks the amount against the ledger, writes a refund command to Kafka and \
        answers once Kafka confirmed it. The refund id is derived from the Idempotency-Key: a \
        retry with the same key and body is the same refund (answered 202 again, refunded \
        once). The payment service checks the amount again; GET /payments/{id} shows the \
        refund's status.",
    params(
        ("id" = String, Path, description = "The payment id"),
        ("Idempotency-Key" = String, Header,
            description = "Required: names the refund (1-255 visible ASCII)"),
    ),
    request_body(content = RefundRequest, content_type = "application/json"),
    security((), ("bearer" = [])),
    responses(
        (status = 202, description = "Accepted: the refund command is on Kafka",
            body = RefundAccepted,
            headers(("Location" = String, description = "/payments/{paymentId}"))),
        (status = 400, description = "Malformed JSON, a missing, unknown or mistyped field, an \
            empty body, or a missing or invalid Idempotency-Key", body = Problem,
            content_type = "application/problem+json"),
        (status = 401, description = "Authentication is on and no accepted bearer token was sent",
            body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such payment", body = Problem,
            content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than max_body_bytes", body = Problem,
            content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem,
            content_type = "application/problem+json"),
        (status = 422, description = "amountMinor is not positive or exceeds what may still be \
            refunded (refund-exceeds-captured), an invalid reason, or the Idempotency-Key was \
            used with another body", body = Problem, content_type = "application/problem+json"),
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
    let view = payment::load_payment(ledger(app)?, &id)
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
        command_id: command_id.clone(),
        payment_id: view.payment_id.clone(),
        order_id: view.order_id.clone(),
        issued_at: chrono::Utc::now().timestamp_millis(),
        causation_id: command_id,
        correlation_id: view.order_id.clone(),
        command: PaymentCommandBody::Refund(RefundPayment {
            refund_id: refund_id.clone(),
            amount: Money::new(request.amount_minor, view.amount.currency.clone()),
            reason: request.reason.clone(),
        }),
    };
    app.send_commands(&app.0.config.payments_topic, std::slice::from_ref(&command))
        .await?;
    Ok(json_response(
        StatusCode::ACCEPTED,
        accepted(),
        Some(&payment_location(&id)),
    ))
}

/// Read at most `limit` bytes of `body`, untouched (the signature covers these exact bytes).
async fn read_raw(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, Problem> {
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

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, Problem> {
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
        (status = 401, description = "Missing or malformed signature headers, a signature that \
            does not match the body, or a timestamp outside the tolerance (invalid-signature)",
            body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The callback names no payment the ledger knows",
            body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than max_body_bytes", body = Problem,
            content_type = "application/problem+json"),
        (status = 422, description = "An empty event id, authorization id or reference, or an \
            unknown outcome",
            body = Problem, content_type = "application/problem+json"),
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
        if value.trim().is_empty() || value.chars().count() > 255 {
            return Err(Problem::new(
                Kind::InvalidField,
                format!("{field} must be 1 to 255 characters"),
            )
            .field(field));
        }
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
