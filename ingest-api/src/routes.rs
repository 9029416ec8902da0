//! The routes: one explicit table ([`Endpoint::ALL`]) that the router is built from (and the
//! OpenAPI test walks), the handlers, and the middleware (metrics, in-flight limit).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use keel_avro::Codec;
use keel_avro::records::{
    CancelOrder, Money, OrderCommand, OrderCommandBody, OrderLine, PlaceOrder, ShippingAddress,
};
use keel_processors::orders::logic::lines_total;
use keel_processors::orders::{self, CartStatus};
use keel_processors::producer::AckedProducer;
use prometheus::{Encoder, Registry, TextEncoder};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use sqlx::{MySqlPool, PgPool};
use tokio::sync::Semaphore;

use crate::body::{Required, read_json};
use crate::config::ApiConfig;
use crate::idempotency::{self, AUTO_SCOPE, Claim, Slot};
use crate::inventory::{self, Inventory};
use crate::metrics::Metrics;
use crate::model::{
    Accepted, CancelRequest, DEFAULT_CANCEL_REASON, OrderResource, PlaceOrderRequest,
    ReceivedOrder, StatusBody,
};
use crate::openapi::ApiDoc;
use crate::payments;
use crate::problem::{Kind, PathId, Problem};

/// Whether the process is ready to take traffic: `Ok(())`, or `Err(why)`, which `/ready`
/// answers as a 503 problem with `why` as its detail.
pub type ReadyFn = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Every route the API serves; the router is built from this list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    PlaceOrder,
    GetOrder,
    CancelOrder,
    GetOrderPayment,
    GetPayment,
    CreatePayment,
    ConfirmPayment,
    RefundPayment,
    PspCallback,
    GetInventory,
    AdjustInventory,
    ReserveInventory,
    ReleaseInventory,
    FinanceReconciliation,
    Health,
    Ready,
    Metrics,
    OpenApi,
}

impl Endpoint {
    pub const ALL: [Endpoint; 18] = [
        Self::PlaceOrder,
        Self::GetOrder,
        Self::CancelOrder,
        Self::GetOrderPayment,
        Self::GetPayment,
        Self::CreatePayment,
        Self::ConfirmPayment,
        Self::RefundPayment,
        Self::PspCallback,
        Self::GetInventory,
        Self::AdjustInventory,
        Self::ReserveInventory,
        Self::ReleaseInventory,
        Self::FinanceReconciliation,
        Self::Health,
        Self::Ready,
        Self::Metrics,
        Self::OpenApi,
    ];

    pub fn method(self) -> Method {
        match self {
            Self::PlaceOrder
            | Self::CancelOrder
            | Self::CreatePayment
            | Self::ConfirmPayment
            | Self::RefundPayment
            | Self::PspCallback
            | Self::AdjustInventory
            | Self::ReserveInventory
            | Self::ReleaseInventory => Method::POST,
            Self::GetOrder
            | Self::GetOrderPayment
            | Self::GetPayment
            | Self::GetInventory
            | Self::FinanceReconciliation
            | Self::Health
            | Self::Ready
            | Self::Metrics
            | Self::OpenApi => Method::GET,
        }
    }

    /// The path template, as axum and OpenAPI write it (`{id}`).
    pub fn path(self) -> &'static str {
        match self {
            Self::PlaceOrder => "/orders",
            Self::GetOrder => "/orders/{id}",
            Self::CancelOrder => "/orders/{id}/cancel",
            Self::GetOrderPayment => "/orders/{id}/payment",
            Self::GetPayment => "/payments/{id}",
            Self::CreatePayment => "/payments",
            Self::ConfirmPayment => "/payments/{id}/confirm",
            Self::RefundPayment => "/payments/{id}/refund",
            Self::PspCallback => "/psp/callbacks",
            Self::GetInventory => "/inventory/{sku}",
            Self::AdjustInventory => "/inventory/adjust",
            Self::ReserveInventory => "/inventory/reserve",
            Self::ReleaseInventory => "/inventory/release",
            Self::FinanceReconciliation => "/finance/reconciliation",
            Self::Health => "/health",
            Self::Ready => "/ready",
            Self::Metrics => "/metrics",
            Self::OpenApi => "/openapi.json",
        }
    }

    /// Whether the route reads or writes payments (served from the ledger, `ApiDeps::ledger`).
    pub fn is_payments(self) -> bool {
        matches!(
            self,
            Self::GetOrderPayment
                | Self::GetPayment
                | Self::CreatePayment
                | Self::ConfirmPayment
                | Self::RefundPayment
                | Self::PspCallback
        )
    }

    /// Whether the route reads or writes inventory (served with `ApiDeps::inventory`).
    pub fn is_inventory(self) -> bool {
        matches!(
            self,
            Self::GetInventory
                | Self::AdjustInventory
                | Self::ReserveInventory
                | Self::ReleaseInventory
        )
    }

    /// Whether the route is served from the reconciliation role's view (`ApiDeps::finance`).
    pub fn is_finance(self) -> bool {
        matches!(self, Self::FinanceReconciliation)
    }

    /// Order, payment and inventory routes count against `max_in_flight`; operational ones
    /// never do.
    fn limited(self) -> bool {
        matches!(self, Self::PlaceOrder | Self::GetOrder | Self::CancelOrder)
            || self.is_payments()
            || self.is_inventory()
    }

    fn method_router(self) -> MethodRouter<App> {
        match self {
            Self::PlaceOrder => post(place_order),
            Self::GetOrder => get(get_order),
            Self::CancelOrder => post(cancel_order),
            Self::GetOrderPayment => get(payments::get_order_payment),
            Self::GetPayment => get(payments::get_payment),
            Self::CreatePayment => post(payments::create_payment),
            Self::ConfirmPayment => post(payments::confirm_payment),
            Self::RefundPayment => post(payments::refund_payment),
            Self::PspCallback => post(payments::psp_callback),
            Self::GetInventory => get(inventory::get_inventory),
            Self::AdjustInventory => post(inventory::adjust_inventory),
            Self::ReserveInventory => post(inventory::reserve_inventory),
            Self::ReleaseInventory => post(inventory::release_inventory),
            Self::FinanceReconciliation => get(crate::finance::get_reconciliation),
            Self::Health => get(health),
            Self::Ready => get(ready),
            Self::Metrics => get(metrics),
            Self::OpenApi => get(openapi_json),
        }
    }
}

/// The shared state of the handlers.
#[derive(Clone)]
pub(crate) struct App(pub(crate) Arc<Inner>);

pub(crate) struct Inner {
    pub config: ApiConfig,
    pub producer: Arc<AckedProducer>,
    pub codec: Codec,
    pub pool: MySqlPool,
    /// The payment ledger (PostgreSQL), read by the payment routes; without it they answer 501.
    pub ledger: Option<PgPool>,
    /// The inventory mirror (Cassandra), read by the inventory routes; without it they answer
    /// 501.
    pub inventory: Option<Inventory>,
    /// The reconciliation role's view, read by `GET /finance/reconciliation`; without it that
    /// route answers 501.
    pub finance: Option<keel_processors::reconciliation::ReconciliationView>,
    pub registry: Registry,
    pub ready: ReadyFn,
    pub metrics: Metrics,
    pub in_flight: Arc<Semaphore>,
    /// sha256 of each accepted bearer token.
    pub token_hashes: Vec<[u8; 32]>,
}

impl App {
    pub(crate) fn new(inner: Inner) -> Self {
        Self(Arc::new(inner))
    }
}

/// The router over [`Endpoint::ALL`], with problem+json for unknown routes and methods.
pub(crate) fn router(app: App) -> Router {
    let mut router = Router::new();
    for endpoint in Endpoint::ALL {
        let mut route = endpoint.method_router();
        if endpoint.limited() {
            route = route.layer(middleware::from_fn_with_state(app.clone(), limit_in_flight));
        }
        router = router.route(endpoint.path(), route);
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(app.clone(), record_metrics))
        .with_state(app)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Hashes of the configured tokens (compared in constant time, never stored raw).
pub(crate) fn token_hashes(tokens: &[String]) -> Vec<[u8; 32]> {
    tokens.iter().map(|t| sha256(t.as_bytes())).collect()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl App {
    /// The idempotency scope of a write: `bearer:<sha256 of the token>`, or `anonymous` when
    /// authentication is off. 401 when a token is required and missing or unknown.
    pub(crate) fn authorize(&self, headers: &HeaderMap) -> Result<String, Problem> {
        if self.0.token_hashes.is_empty() {
            return Ok("anonymous".to_owned());
        }
        let unauthorized =
            |detail: &str| Problem::new(Kind::Unauthorized, detail).field("Authorization");
        let value = crate::body::single_header(headers, "Authorization")?
            .ok_or_else(|| unauthorized("send Authorization: Bearer <token>"))?
            .to_str()
            .map_err(|_| unauthorized("the Authorization header is not valid text"))?;
        let token = value
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .ok_or_else(|| unauthorized("the Authorization header must be Bearer <token>"))?;
        let hash = sha256(token.as_bytes());
        let known = self
            .0
            .token_hashes
            .iter()
            .fold(false, |found, h| found | constant_time_eq(h, &hash));
        if known {
            Ok(format!("bearer:{}", hex::encode(hash)))
        } else {
            Err(unauthorized("the bearer token is not accepted"))
        }
    }

    pub(crate) fn produce_timeout(&self) -> Duration {
        Duration::from_millis(self.0.config.produce_timeout_ms)
    }

    /// Authorize, read the JSON body (required: an empty one is 400 `empty-body`) and check it
    /// with `validate`: how every write with a body starts. Returns the idempotency scope (see
    /// [`App::authorize`]) and the request.
    pub(crate) async fn write_request<T: DeserializeOwned>(
        &self,
        headers: &HeaderMap,
        body: Body,
        validate: impl FnOnce(&T) -> Result<(), Problem>,
    ) -> Result<(String, T), Problem> {
        let scope = self.authorize(headers)?;
        let request: T = read_json(headers, body, self.0.config.max_body_bytes, Required::Yes)
            .await?
            .ok_or_else(|| Problem::new(Kind::EmptyBody, "the body is empty"))?;
        validate(&request)?;
        Ok((scope, request))
    }

    /// Read the cart, build the place-order command and produce it.
    async fn place(&self, slot: &Slot, request: &PlaceOrderRequest) -> Result<(), Problem> {
        let cart = orders::load_cart(&self.0.pool, &request.cart_id)
            .await
            .map_err(database_unavailable)?
            .ok_or_else(|| {
                Problem::new(
                    Kind::UnknownCart,
                    format!("cartId {:?} names no cart", request.cart_id),
                )
                .field("cartId")
            })?;
        // This very request's order exists already (a retry after the first attempt's command
        // landed but its answer was lost): the first answer stands, whatever the order became.
        // Checked before the claim: a cancelled order gave its cart back, and claiming it again
        // here would take the cart from the customer's next order.
        let ours = orders::order_status(&self.0.pool, &slot.order_id)
            .await
            .map_err(database_unavailable)?
            .is_some();
        if ours {
            return Ok(());
        }
        if cart.status == CartStatus::Ordered {
            return Err(Problem::new(
                Kind::CartAlreadyOrdered,
                format!("cartId {:?}: the cart was already ordered", cart.cart_id),
            )
            .field("cartId"));
        }
        if cart.items.is_empty() {
            return Err(Problem::new(
                Kind::EmptyCart,
                format!("cartId {:?}: the cart has no items", cart.cart_id),
            )
            .field("cartId"));
        }
        let lines: Vec<OrderLine> = cart
            .items
            .iter()
            .map(|item| OrderLine {
                sku: item.sku.clone(),
                quantity: item.quantity,
                unit_price: Money::new(item.unit_price_minor, cart.currency.clone()),
            })
            .collect();
        let total = lines_total(&lines, &cart.currency).ok_or_else(|| {
            Problem::new(
                Kind::InvalidField,
                format!("cartId {:?}: the cart's total is too large", cart.cart_id),
            )
            .field("cartId")
        })?;
        // The saga rejects an order that could never be paid (processors/src/money.rs): say so
        // now, naming the cart, before the cart is claimed (break report 13, D3).
        if !keel_processors::money::is_payable(total.amount_minor, &cart.currency) {
            return Err(Problem::new(
                Kind::InvalidField,
                format!(
                    "cartId {:?}: the cart's total is {} {}: an order is paid for, 1 to {} minor \
                     units of a currency in use",
                    cart.cart_id,
                    total.amount_minor,
                    cart.currency,
                    keel_processors::money::MAX_AMOUNT_MINOR
                ),
            )
            .field("cartId"));
        }
        // One cart, one order, before anything is sent (the cart's own status turns ORDERED
        // only once the order sink has written the first order). An order that ends without a
        // sale (CANCELLED, REJECTED) gives the cart back: the order sink deletes its claim and
        // reopens the cart, so a new request (new key, new order id) claims it here.
        let other = orders::claim_cart(&self.0.pool, &cart.cart_id, &slot.order_id)
            .await
            .map_err(database_unavailable)?;
        if other.is_some() {
            return Err(Problem::new(
                Kind::CartAlreadyOrdered,
                format!("cartId {:?}: the cart was already ordered", cart.cart_id),
            )
            .field("cartId"));
        }
        let a = &request.shipping_address;
        let command = OrderCommand {
            command_id: slot.command_id.clone(),
            order_id: slot.order_id.clone(),
            issued_at: chrono::Utc::now().timestamp_millis(),
            causation_id: slot.command_id.clone(),
            correlation_id: slot.order_id.clone(),
            command: OrderCommandBody::PlaceOrder(PlaceOrder {
                customer_id: cart.customer_id.clone(),
                cart_id: cart.cart_id.clone(),
                lines,
                total,
                payment_method: request.payment_method.clone(),
                shipping_address: Some(ShippingAddress {
                    name: a.name.clone(),
                    line1: a.line1.clone(),
                    line2: a.line2.clone().filter(|l| !l.trim().is_empty()),
                    city: a.city.clone(),
                    postal_code: a.postal_code.clone(),
                    country: a.country.clone(),
                }),
            }),
        };
        self.send_commands(&self.0.config.orders_topic, std::slice::from_ref(&command))
            .await
    }
}

/// 409 `checkout-order` when `order_id` is a checkout's ([`idempotency::is_checkout_order`]):
/// `route` (a payment, a reservation, a release) is for orders the saga does not run. A
/// payment under the order's payment id or a release of its holds would otherwise reach the
/// saga's own (docs/saga.md, Inputs).
pub(crate) async fn refuse_checkout_order(
    app: &App,
    order_id: &str,
    route: &str,
) -> Result<(), Problem> {
    let checkout = idempotency::is_checkout_order(&app.0.pool, order_id)
        .await
        .map_err(database_unavailable)?;
    if checkout {
        return Err(Problem::new(
            Kind::CheckoutOrder,
            format!(
                "order {} is a checkout (POST /orders): its payment and stock holds are the \
                 saga's; {route} is for orders the saga does not run",
                crate::model::shown(order_id)
            ),
        )
        .field("orderId"));
    }
    Ok(())
}

pub(crate) fn database_unavailable(e: impl std::fmt::Display) -> Problem {
    tracing::warn!(error = %e, "database call failed");
    Problem::new(
        Kind::DependencyUnavailable,
        "the order database is unavailable; retry later",
    )
}

fn order_location(order_id: &str) -> String {
    location("orders", order_id)
}

/// Everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`) is encoded.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `/<collection>/<id>` with `id` percent-encoded as one path segment (UTF-8, RFC 3986 §2.1), so
/// a `Location` resolves to the resource whatever the id holds: `?`, `/`, `%`, non-ASCII (a
/// SKU may hold any of them; break report 13, D4).
pub(crate) fn location(collection: &str, id: &str) -> String {
    format!(
        "/{collection}/{}",
        percent_encoding::utf8_percent_encode(id, PATH_SEGMENT)
    )
}

/// A JSON answer with a status and, when given, a `Location` (a path, e.g. `/orders/{id}`).
pub(crate) fn json_response(status: StatusCode, body: String, location: Option<&str>) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(value) = location.and_then(|l| HeaderValue::from_str(l).ok()) {
        headers.insert(header::LOCATION, value);
    }
    response
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned())
}

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters, sent once (two keys would
/// leave it to chance which one names the request: 400 naming the header).
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = crate::body::single_header(headers, "Idempotency-Key")? else {
        return Ok(None);
    };
    let bad = || {
        Problem::new(
            Kind::InvalidHeader,
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )
        .field("Idempotency-Key")
    };
    let key = value.to_str().map_err(|_| bad())?.trim();
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Some(key.to_owned()))
}

/// The `Idempotency-Key` of a write that cannot do without one: 400 naming the header when it
/// is missing, e.g. "a refund needs an Idempotency-Key header (…)".
pub(crate) fn required_idempotency_key(headers: &HeaderMap, what: &str) -> Result<String, Problem> {
    idempotency_key(headers)?.ok_or_else(|| {
        Problem::new(
            Kind::InvalidHeader,
            format!("{what} needs an Idempotency-Key header (1 to 255 visible ASCII characters)"),
        )
        .field("Idempotency-Key")
    })
}

pub(crate) fn or_problem(result: Result<Response, Problem>) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

#[utoipa::path(
    post,
    path = "/orders",
    tag = "orders",
    summary = "Place an order from a cart",
    description = "Reads the cart, writes a place-order command to Kafka and answers once Kafka \
        confirmed it. With an Idempotency-Key, a retry with the same body gets the first answer \
        (the same order id, whatever became of that order) for idempotency_retention_hours \
        after the first request (default 24 hours); after that the key is forgotten and may \
        be used again. A cart is ordered once: while its \
        order is running or CONFIRMED, another request for it is a 409 cart-already-ordered. \
        An order that ended CANCELLED or REJECTED gives its cart back, so a new request for \
        the cart (a new Idempotency-Key, or none) is accepted as a new order with a fresh \
        order id; of two such requests at once, one gets the cart and the other the 409.",
    request_body(content = PlaceOrderRequest, content_type = "application/json"),
    params(
        ("Idempotency-Key" = Option<String>, Header,
            description = "Makes a retried request return the first answer (1-255 visible \
                ASCII); kept idempotency_retention_hours (default 24 hours)"),
    ),
    security((), ("bearer" = [])),
    responses(
        (status = 202, description = "Accepted: the command is on Kafka", body = Accepted,
            headers(("Location" = String, description = "/orders/{orderId}"))),
        (status = 400, description = "Malformed JSON, a missing, unknown or mistyped field, an \
            empty body, an invalid Idempotency-Key, or Idempotency-Key, Content-Type or \
            Authorization sent more than once (invalid-header)", body = Problem,
            content_type = "application/problem+json"),
        (status = 401, description = "Authentication is on and no accepted bearer token was sent",
            body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The cart was already ordered by an order that is \
            running or CONFIRMED (type cart-already-ordered; a CANCELLED or REJECTED order no \
            longer holds its cart), or a request with this Idempotency-Key is in progress \
            (request-in-progress; if that request's process stopped mid-way, a retry takes it \
            over, keeping its order id, once it has been in progress for [api].produce_timeout_ms \
            (5 s by default) plus 30 seconds)",
            body = Problem,
            content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than max_body_bytes", body = Problem,
            content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json, or has a \
            Content-Encoding other than identity", body = Problem,
            content_type = "application/problem+json"),
        (status = 422, description = "An invalid field value, an unknown or empty cart, or the \
            Idempotency-Key was used with another body (a retry of a cancelled checkout with \
            another card needs a new key)", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "Kafka, the registry or the database did not answer in \
            time, or too many requests are in progress", body = Problem,
            content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn place_order(
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    or_problem(place_order_inner(&app, &headers, body).await)
}

async fn place_order_inner(
    app: &App,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let (scope, request) = app
        .write_request(headers, body, PlaceOrderRequest::validate)
        .await?;
    let key = idempotency_key(headers)?;
    let canonical = serde_json::to_vec(&request).unwrap_or_default();
    let hash = idempotency::request_hash("POST /orders", &canonical);
    let order_id = uuid::Uuid::new_v4().to_string();
    let command_id = uuid::Uuid::new_v4().to_string();
    let (scope, key) = match key {
        Some(k) => (scope, k),
        None => (AUTO_SCOPE.to_owned(), order_id.clone()),
    };
    let stale_after = app.produce_timeout() + Duration::from_secs(30);
    let claim = idempotency::claim(
        &app.0.pool,
        &scope,
        &key,
        &hash,
        &order_id,
        &command_id,
        stale_after,
    )
    .await
    .map_err(database_unavailable)?;
    let slot = match claim {
        Claim::Owned(slot) => slot,
        Claim::Replay {
            status,
            body,
            order_id,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED);
            let mut response = json_response(
                status,
                body,
                (status == StatusCode::ACCEPTED)
                    .then(|| order_location(&order_id))
                    .as_deref(),
            );
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return Ok(response);
        }
        Claim::InProgress => {
            return Err(Problem::new(
                Kind::RequestInProgress,
                "a request with this Idempotency-Key is still in progress; retry shortly",
            )
            .field("Idempotency-Key"));
        }
        Claim::Mismatch => {
            return Err(Problem::new(
                Kind::IdempotencyKeyReused,
                "this Idempotency-Key was used with a different request body",
            )
            .field("Idempotency-Key"));
        }
    };
    match app.place(&slot, &request).await {
        Ok(()) => {
            let body = to_json(&Accepted {
                order_id: slot.order_id.clone(),
                status: "RECEIVED".to_owned(),
            });
            if let Err(e) = idempotency::complete(&app.0.pool, &slot, 202, &body).await {
                // The command is on Kafka: the answer is still 202.
                tracing::error!(error = %e, order_id = %slot.order_id, "recording the answer failed");
            }
            app.0.metrics.orders_accepted.inc();
            Ok(json_response(
                StatusCode::ACCEPTED,
                body,
                Some(&order_location(&slot.order_id)),
            ))
        }
        Err(problem) => {
            let cleanup = if problem.status == StatusCode::SERVICE_UNAVAILABLE.as_u16() {
                idempotency::fail_retryable(&app.0.pool, &slot).await
            } else {
                idempotency::release(&app.0.pool, &slot).await
            };
            if let Err(e) = cleanup {
                tracing::warn!(error = %e, "releasing an idempotency key failed");
            }
            Err(problem)
        }
    }
}

fn order_not_found(id: &str) -> Problem {
    Problem::new(
        Kind::OrderNotFound,
        format!("order {} does not exist", crate::model::shown(id)),
    )
    .field("id")
}

/// An order id from the path: 1 to 64 characters without a control character, else a 400
/// naming `id` ([`crate::problem::path_id`]).
fn order_id(path: Result<Path<String>, PathRejection>) -> Result<String, Problem> {
    crate::problem::path_id(path, "id", "order id", PathId::Id, Kind::OrderNotFound)
}

#[utoipa::path(
    get,
    path = "/orders/{id}",
    tag = "orders",
    summary = "An order: items, total, status and its timeline",
    params(("id" = String, Path, description = "The order id from the 202's orderId")),
    responses(
        (status = 200, description = "The order; status RECEIVED while only the API has seen it",
            body = OrderResource),
        (status = 400, description = "The order id is not valid UTF-8 once percent-decoded, \
            holds a control character or is longer than 64 characters \
            (invalid-path-parameter)", body = Problem,
            content_type = "application/problem+json"),
        (status = 404, description = "No such order", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable or too many requests are in \
            progress", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn get_order(
    State(app): State<App>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    or_problem(get_order_inner(&app, path).await)
}

async fn get_order_inner(
    app: &App,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let id = order_id(path)?;
    let resource = match orders::load_order(&app.0.pool, &id)
        .await
        .map_err(database_unavailable)?
    {
        Some(view) => OrderResource::Stored(Box::new(view)),
        None => match idempotency::received_at(&app.0.pool, &id)
            .await
            .map_err(database_unavailable)?
        {
            Some(at) => OrderResource::Received(ReceivedOrder {
                order_id: id,
                status: "RECEIVED".to_owned(),
                received_at: orders::view::rfc3339(at),
            }),
            None => return Err(order_not_found(&id)),
        },
    };
    Ok(json_response(StatusCode::OK, to_json(&resource), None))
}

#[utoipa::path(
    post,
    path = "/orders/{id}/cancel",
    tag = "orders",
    summary = "Ask to cancel an order that is not confirmed yet",
    params(("id" = String, Path, description = "The order id")),
    request_body(content = Option<CancelRequest>, content_type = "application/json",
        description = "Optional; an empty body cancels with reason CUSTOMER_CANCELLED"),
    security((), ("bearer" = [])),
    responses(
        (status = 202, description = "Accepted: the cancel command is on Kafka", body = Accepted,
            headers(("Location" = String, description = "/orders/{orderId}"))),
        (status = 400, description = "Malformed JSON, an unknown or mistyped field, \
            Content-Type or Authorization sent more than once, or an order id that is not \
            UTF-8, holds a control character or is longer than 64 characters", body = Problem,
            content_type = "application/problem+json"),
        (status = 401, description = "Authentication is on and no accepted bearer token was sent",
            body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "The order is CONFIRMED, CANCELLED or REJECTED \
            (currentStatus says which)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than max_body_bytes", body = Problem,
            content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json, or has a \
            Content-Encoding other than identity", body = Problem,
            content_type = "application/problem+json"),
        (status = 422, description = "An invalid reason", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "Kafka, the registry or the database did not answer in \
            time, or too many requests are in progress", body = Problem,
            content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn cancel_order(
    State(app): State<App>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Response {
    or_problem(cancel_order_inner(&app, &headers, path, body).await)
}

async fn cancel_order_inner(
    app: &App,
    headers: &HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, Problem> {
    app.authorize(headers)?;
    let request: CancelRequest =
        read_json(headers, body, app.0.config.max_body_bytes, Required::No)
            .await?
            .unwrap_or_default();
    request.validate()?;
    let id = order_id(path)?;
    match orders::order_status(&app.0.pool, &id)
        .await
        .map_err(database_unavailable)?
    {
        Some(status) if status == "PENDING" => {}
        Some(status) => {
            return Err(Problem::new(
                Kind::IllegalTransition,
                format!("order {id:?} is {status} and can no longer be cancelled"),
            )
            .current_status(status));
        }
        None => {
            if idempotency::received_at(&app.0.pool, &id)
                .await
                .map_err(database_unavailable)?
                .is_none()
            {
                return Err(order_not_found(&id));
            }
        }
    }
    let command_id = uuid::Uuid::new_v4().to_string();
    let command = OrderCommand {
        command_id: command_id.clone(),
        order_id: id.clone(),
        issued_at: chrono::Utc::now().timestamp_millis(),
        causation_id: command_id,
        correlation_id: id.clone(),
        command: OrderCommandBody::CancelOrder(CancelOrder {
            reason: request
                .reason
                .unwrap_or_else(|| DEFAULT_CANCEL_REASON.to_owned()),
        }),
    };
    app.send_commands(&app.0.config.orders_topic, std::slice::from_ref(&command))
        .await?;
    app.0.metrics.cancels_accepted.inc();
    let body = to_json(&Accepted {
        order_id: id.clone(),
        status: "CANCELLATION_REQUESTED".to_owned(),
    });
    Ok(json_response(
        StatusCode::ACCEPTED,
        body,
        Some(&order_location(&id)),
    ))
}

#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    summary = "Liveness: 200 whenever the process is up",
    responses((status = 200, description = "Up", body = StatusBody))
)]
pub(crate) async fn health() -> Response {
    json_response(
        StatusCode::OK,
        to_json(&StatusBody {
            status: "UP".to_owned(),
        }),
        None,
    )
}

#[utoipa::path(
    get,
    path = "/ready",
    tag = "operations",
    summary = "Readiness: 200 once the process is ready to take traffic",
    responses(
        (status = 200, description = "Ready", body = StatusBody),
        (status = 503, description = "Not ready yet", body = Problem,
            content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn ready(State(app): State<App>) -> Response {
    match (app.0.ready)() {
        Ok(()) => json_response(
            StatusCode::OK,
            to_json(&StatusBody {
                status: "READY".to_owned(),
            }),
            None,
        ),
        Err(why) => Problem::new(Kind::NotReady, why).into_response(),
    }
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics of the process",
    responses((status = 200, description = "Prometheus text format", body = String,
        content_type = "text/plain"))
)]
pub(crate) async fn metrics(State(app): State<App>) -> Response {
    let encoder = TextEncoder::new();
    let mut buffer = Vec::new();
    if let Err(e) = encoder.encode(&app.0.registry.gather(), &mut buffer) {
        tracing::warn!(error = %e, "encoding metrics failed");
    }
    let mut response = (StatusCode::OK, buffer).into_response();
    if let Ok(value) = HeaderValue::from_str(encoder.format_type()) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    summary = "This API's OpenAPI 3 document",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json"))
)]
pub(crate) async fn openapi_json() -> Response {
    json_response(StatusCode::OK, ApiDoc::json(), None)
}

async fn not_found(uri: axum::http::Uri) -> Response {
    Problem::new(
        Kind::NotFound,
        format!("there is no resource at {}", uri.path()),
    )
    .into_response()
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Response {
    Problem::new(
        Kind::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    )
    .into_response()
}

async fn record_metrics(State(app): State<App>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    app.0
        .metrics
        .requests
        .with_label_values(&[route.as_str(), method.as_str(), response.status().as_str()])
        .inc();
    app.0
        .metrics
        .duration
        .with_label_values(&[route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn limit_in_flight(State(app): State<App>, request: Request, next: Next) -> Response {
    match Arc::clone(&app.0.in_flight).try_acquire_owned() {
        Ok(permit) => {
            let response = next.run(request).await;
            drop(permit);
            response
        }
        Err(_) => Problem::new(
            Kind::Overloaded,
            format!(
                "more than {} requests are in progress; retry shortly",
                app.0.config.max_in_flight
            ),
        )
        .into_response(),
    }
}
