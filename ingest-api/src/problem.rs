//! `application/problem+json` (RFC 9457) answers with a stable `type` per kind of problem.

use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The base of every problem `type`: `https://keel.dev/problems/<slug>`.
pub const PROBLEM_BASE: &str = "https://keel.dev/problems/";
/// The media type of every error answer.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Every kind of problem the API answers with. The slug is the stable part of `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 400: the body is not JSON.
    MalformedJson,
    /// 400: a required field is absent.
    MissingField,
    /// 400: a field the API does not know.
    UnknownField,
    /// 400: a field has the wrong JSON type.
    WrongType,
    /// 400: no body where one is required.
    EmptyBody,
    /// 400: a header has a value the API cannot use.
    InvalidHeader,
    /// 400: the body could not be read.
    UnreadableBody,
    /// 400: a path parameter that is not valid UTF-8 once percent-decoded.
    InvalidPathParameter,
    /// 401: writes need a bearer token.
    Unauthorized,
    /// 401: a PSP callback whose signature or timestamp does not verify.
    InvalidSignature,
    /// 404: no such order.
    OrderNotFound,
    /// 404: no such payment.
    PaymentNotFound,
    /// 404: a SKU never stocked.
    SkuNotFound,
    /// 404: no such route.
    NotFound,
    /// 405: the route exists, the method does not.
    MethodNotAllowed,
    /// 409: the cart was already ordered.
    CartAlreadyOrdered,
    /// 409: a request with the same Idempotency-Key is still being handled.
    RequestInProgress,
    /// 409: the resource's status (an order's, a payment's) does not allow the change.
    IllegalTransition,
    /// 409: the order already has a payment (or one was requested under another key).
    PaymentExists,
    /// 409: the order is a checkout (`POST /orders`, or an order the shop's order store
    /// holds): its payment and holds are the saga's, not for the payment and stock routes.
    CheckoutOrder,
    /// 413: the body is larger than `max_body_bytes`.
    BodyTooLarge,
    /// 415: not `application/json`.
    UnsupportedMediaType,
    /// 422: a field's value is not acceptable.
    InvalidField,
    /// 422: the cart does not exist.
    UnknownCart,
    /// 422: the cart has no lines.
    EmptyCart,
    /// 422: the Idempotency-Key was used with another body.
    IdempotencyKeyReused,
    /// 422: a refund larger than what was captured and not yet refunded.
    RefundExceedsCaptured,
    /// 422: a request line names a SKU never stocked.
    UnknownSku,
    /// 503: Kafka, the registry or the database did not answer in time.
    DependencyUnavailable,
    /// 503: too many requests at once.
    Overloaded,
    /// 503: not ready yet.
    NotReady,
    /// 501: the route is Keel's, but this process does not serve it (the role or store behind it
    /// does not run here); asking again here never helps, asking a process that has it does.
    NotServedHere,
}

impl Kind {
    /// (slug, `type` URI).
    fn names(self) -> (&'static str, &'static str) {
        macro_rules! uri {
            ($slug:literal) => {
                ($slug, concat!("https://keel.dev/problems/", $slug))
            };
        }
        match self {
            Self::MalformedJson => uri!("malformed-json"),
            Self::MissingField => uri!("missing-field"),
            Self::UnknownField => uri!("unknown-field"),
            Self::WrongType => uri!("wrong-type"),
            Self::EmptyBody => uri!("empty-body"),
            Self::InvalidHeader => uri!("invalid-header"),
            Self::UnreadableBody => uri!("unreadable-body"),
            Self::InvalidPathParameter => uri!("invalid-path-parameter"),
            Self::Unauthorized => uri!("unauthorized"),
            Self::InvalidSignature => uri!("invalid-signature"),
            Self::OrderNotFound => uri!("order-not-found"),
            Self::PaymentNotFound => uri!("payment-not-found"),
            Self::SkuNotFound => uri!("sku-not-found"),
            Self::NotFound => uri!("not-found"),
            Self::MethodNotAllowed => uri!("method-not-allowed"),
            Self::CartAlreadyOrdered => uri!("cart-already-ordered"),
            Self::RequestInProgress => uri!("request-in-progress"),
            Self::IllegalTransition => uri!("illegal-transition"),
            Self::PaymentExists => uri!("payment-exists"),
            Self::CheckoutOrder => uri!("checkout-order"),
            Self::BodyTooLarge => uri!("body-too-large"),
            Self::UnsupportedMediaType => uri!("unsupported-media-type"),
            Self::InvalidField => uri!("invalid-field"),
            Self::UnknownCart => uri!("unknown-cart"),
            Self::EmptyCart => uri!("empty-cart"),
            Self::IdempotencyKeyReused => uri!("idempotency-key-reused"),
            Self::RefundExceedsCaptured => uri!("refund-exceeds-captured"),
            Self::UnknownSku => uri!("unknown-sku"),
            Self::DependencyUnavailable => uri!("dependency-unavailable"),
            Self::Overloaded => uri!("overloaded"),
            Self::NotReady => uri!("not-ready"),
            Self::NotServedHere => uri!("not-served-here"),
        }
    }

    /// The stable part of `type`.
    pub fn slug(self) -> &'static str {
        self.names().0
    }

    /// `https://keel.dev/problems/<slug>`.
    pub fn type_uri(self) -> &'static str {
        self.names().1
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::MalformedJson => "The body is not valid JSON",
            Self::MissingField => "A required field is missing",
            Self::UnknownField => "The body has a field this API does not know",
            Self::WrongType => "A field has the wrong type",
            Self::EmptyBody => "The body is empty",
            Self::InvalidHeader => "A header has an invalid value",
            Self::UnreadableBody => "The body could not be read",
            Self::InvalidPathParameter => "A path parameter is not valid",
            Self::Unauthorized => "A valid bearer token is required",
            Self::InvalidSignature => "The callback's signature does not verify",
            Self::OrderNotFound => "No such order",
            Self::PaymentNotFound => "No such payment",
            Self::SkuNotFound => "No such SKU",
            Self::NotFound => "No such resource",
            Self::MethodNotAllowed => "Method not allowed",
            Self::CartAlreadyOrdered => "The cart was already ordered",
            Self::RequestInProgress => "A request with this Idempotency-Key is in progress",
            Self::IllegalTransition => "The current status does not allow this",
            Self::PaymentExists => "The order already has a payment",
            Self::CheckoutOrder => "The order is a checkout run by the saga",
            Self::BodyTooLarge => "The body is too large",
            Self::UnsupportedMediaType => "Unsupported media type",
            Self::InvalidField => "A field has an invalid value",
            Self::UnknownCart => "No such cart",
            Self::EmptyCart => "The cart is empty",
            Self::IdempotencyKeyReused => "The Idempotency-Key was used with another request",
            Self::RefundExceedsCaptured => "The refund exceeds what may still be refunded",
            Self::UnknownSku => "The SKU was never stocked",
            Self::DependencyUnavailable => "A dependency is unavailable; retry later",
            Self::Overloaded => "Too many requests in progress; retry later",
            Self::NotReady => "Not ready",
            Self::NotServedHere => "This process does not serve this route",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::MalformedJson
            | Self::MissingField
            | Self::UnknownField
            | Self::WrongType
            | Self::EmptyBody
            | Self::InvalidHeader
            | Self::UnreadableBody
            | Self::InvalidPathParameter => StatusCode::BAD_REQUEST,
            Self::Unauthorized | Self::InvalidSignature => StatusCode::UNAUTHORIZED,
            Self::OrderNotFound | Self::PaymentNotFound | Self::SkuNotFound | Self::NotFound => {
                StatusCode::NOT_FOUND
            }
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::CartAlreadyOrdered
            | Self::RequestInProgress
            | Self::IllegalTransition
            | Self::PaymentExists
            | Self::CheckoutOrder => StatusCode::CONFLICT,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::InvalidField
            | Self::UnknownCart
            | Self::EmptyCart
            | Self::IdempotencyKeyReused
            | Self::RefundExceedsCaptured
            | Self::UnknownSku => StatusCode::UNPROCESSABLE_ENTITY,
            Self::DependencyUnavailable | Self::Overloaded | Self::NotReady => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::NotServedHere => StatusCode::NOT_IMPLEMENTED,
        }
    }
}

/// An error answer: `{type, title, status, detail, field?, currentStatus?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// `https://keel.dev/problems/<slug>`, stable per kind of problem.
    #[serde(rename = "type")]
    pub type_: &'static str,
    pub title: &'static str,
    pub status: u16,
    /// What exactly was wrong, for a person.
    pub detail: String,
    /// The offending field as a path (`shippingAddress.country`) or header name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For an illegal transition: the resource's (order's or payment's) status now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_status: Option<String>,
    /// Seconds to wait before retrying (also the `Retry-After` header), for 409 in progress
    /// and 503.
    #[serde(skip)]
    pub retry_after: Option<u32>,
}

impl Problem {
    pub fn new(kind: Kind, detail: impl Into<String>) -> Self {
        let retry_after = match kind {
            Kind::DependencyUnavailable | Kind::Overloaded | Kind::RequestInProgress => Some(1),
            Kind::NotReady => Some(5),
            _ => None,
        };
        Self {
            type_: kind.type_uri(),
            title: kind.title(),
            status: kind.status().as_u16(),
            detail: detail.into(),
            field: None,
            current_status: None,
            retry_after,
        }
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn current_status(mut self, status: impl Into<String>) -> Self {
        self.current_status = Some(status.into());
        self
    }

    /// The slug of `type`.
    pub fn slug(&self) -> &str {
        self.type_.strip_prefix(PROBLEM_BASE).unwrap_or(self.type_)
    }

    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        // A refused content coding says which one is accepted (RFC 9110 §12.5.3).
        if self.status == StatusCode::UNSUPPORTED_MEDIA_TYPE.as_u16()
            && self.field.as_deref() == Some("Content-Encoding")
        {
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        // A bearer challenge only where a bearer token helps (not for callback signatures).
        if self.type_ == Kind::Unauthorized.type_uri() {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"keel\""),
            );
        }
        response
    }
}

/// The longest id a path may carry (order, payment and SKU ids alike), in characters.
pub const MAX_PATH_ID_CHARS: usize = 64;

/// What a path id may hold besides the rules every id follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathId {
    /// An order or payment id: 1 to [`MAX_PATH_ID_CHARS`] characters, no control character.
    Id,
    /// A SKU: the same, and no whitespace (as `sku` in a body).
    Sku,
}

/// A path id as every route reads it (`/orders/{id}`, `/payments/{id}`, `/inventory/{sku}`):
/// one that no resource can have is the client's mistake, 400 `invalid-path-parameter` naming
/// `field` — not valid UTF-8 once percent-decoded, a control character (`%00`), more than
/// [`MAX_PATH_ID_CHARS`] characters, whitespace in a SKU. A well-formed id is returned for the
/// route to look up (404 when nothing has it). `what` names the id in the detail ("order id");
/// any other rejection is `otherwise` (the route's not-found kind).
pub fn path_id(
    path: Result<axum::extract::Path<String>, PathRejection>,
    field: &str,
    what: &str,
    rules: PathId,
    otherwise: Kind,
) -> Result<String, Problem> {
    let id = match path {
        Ok(axum::extract::Path(id)) => id,
        Err(e) => return Err(path_problem(&e, field, what, otherwise)),
    };
    control_char_in_path(&id, field, what)?;
    let invalid =
        |detail: String| Err(Problem::new(Kind::InvalidPathParameter, detail).field(field));
    let count = id.chars().count();
    if count == 0 || count > MAX_PATH_ID_CHARS {
        return invalid(format!(
            "the {what} must be 1 to {MAX_PATH_ID_CHARS} characters, got {count}"
        ));
    }
    if rules == PathId::Sku && id.chars().any(char::is_whitespace) {
        return invalid(format!("the {what} must not hold whitespace"));
    }
    Ok(id)
}

/// The problem for a path parameter axum could not extract, in one place for every route with
/// one: a value that is not valid UTF-8 once percent-decoded (`/orders/%00%ff`) is the client's
/// mistake, 400 `invalid-path-parameter` naming `field` ("the order id is not valid UTF-8",
/// `what` = "order id"); any other rejection is `otherwise` (the route's not-found kind).
pub fn path_problem(
    rejection: &PathRejection,
    field: &str,
    what: &str,
    otherwise: Kind,
) -> Problem {
    match rejection {
        PathRejection::FailedToDeserializePathParams(e)
            if matches!(e.kind(), ErrorKind::InvalidUtf8InPathParam { .. }) =>
        {
            Problem::new(
                Kind::InvalidPathParameter,
                format!("the {what} is not valid UTF-8"),
            )
            .field(field)
        }
        other => {
            Problem::new(otherwise, format!("no such {what}: {}", other.body_text())).field(field)
        }
    }
}

/// A path id holding a control character (`/payments/%00`): the client's mistake, 400
/// `invalid-path-parameter` naming `field`. No store keeps such an id (PostgreSQL refuses a
/// NUL outright), so it is refused before any lookup rather than blamed on the store.
pub fn control_char_in_path(id: &str, field: &str, what: &str) -> Result<(), Problem> {
    if id.chars().any(char::is_control) {
        return Err(Problem::new(
            Kind::InvalidPathParameter,
            format!("the {what} holds a control character"),
        )
        .field(field));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_id_with_a_control_character_is_a_400_naming_the_field() {
        let p = control_char_in_path("a\u{0}b", "id", "payment id").expect_err("a problem");
        assert_eq!((p.status, p.field.as_deref()), (400, Some("id")));
        assert!(control_char_in_path("pay-1", "id", "payment id").is_ok());
    }

    #[test]
    fn a_path_id_no_resource_can_have_is_a_400_naming_the_parameter() {
        use axum::extract::Path;
        let read = |id: &str, rules| {
            path_id(
                Ok(Path(id.to_owned())),
                "sku",
                "sku",
                rules,
                Kind::SkuNotFound,
            )
        };
        assert_eq!(read("MUG-1", PathId::Sku), Ok("MUG-1".to_owned()));
        assert_eq!(read("a b", PathId::Id), Ok("a b".to_owned()));
        for (id, rules) in [
            ("a\u{0}b", PathId::Sku),
            ("a\u{0}b", PathId::Id),
            ("", PathId::Id),
            ("a b", PathId::Sku),
            (&"x".repeat(65) as &str, PathId::Id),
        ] {
            let p = read(id, rules).expect_err(id);
            assert_eq!(
                (p.status, p.slug(), p.field.as_deref()),
                (400, "invalid-path-parameter", Some("sku")),
                "{id:?}"
            );
        }
        assert!(read(&"x".repeat(64), PathId::Sku).is_ok());
    }

    #[test]
    fn every_type_is_the_base_plus_its_slug() {
        let p = Problem::new(Kind::UnknownCart, "x");
        assert_eq!(p.type_, "https://keel.dev/problems/unknown-cart");
        assert_eq!(p.slug(), "unknown-cart");
        assert_eq!(
            Kind::BodyTooLarge.type_uri(),
            format!("{PROBLEM_BASE}body-too-large")
        );
    }
}
