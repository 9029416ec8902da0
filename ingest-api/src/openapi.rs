//! The OpenAPI 3 document of every route ([`ApiDoc`]), served at `/openapi.json`. The test
//! `ingest-api/tests/api.rs` checks it against [`crate::Endpoint::ALL`] and the live server
//! both ways.

use keel_processors::orders::{AddressView, MoneyView, OrderItemView, OrderView, TimelineEntry};
use keel_processors::payment::{PaymentAttemptView, PaymentView, RefundView};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::inventory::{
    self, AdjustAccepted, AdjustRequest, HoldsAccepted, InventoryLevel, LineCommand,
    ReleaseRequest, ReserveLine, ReserveRequest, WarehouseLevel,
};
use crate::model::{
    Accepted, CancelRequest, OrderResource, PlaceOrderRequest, ReceivedOrder, ShippingAddressBody,
    StatusBody,
};
use crate::payments::{
    self, AmountBody, CallbackAccepted, ConfirmRequest, CreatePaymentRequest, MoneyBody,
    PaymentAccepted, PaymentResource, PspCallbackBody, RefundAccepted, RefundRequest,
    RequestedPayment,
};
use crate::problem::Problem;
use crate::routes;

/// Keel's ingest API.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Keel ingest API",
        description = "Place and cancel orders, refund payments, take the PSP's callbacks and \
            adjust, reserve and release stock (commands on Kafka); read orders, payments and \
            stock back. Errors \
            are application/problem+json with a stable type https://keel.dev/problems/<slug>: \
            4xx for the client's mistakes, naming the field or header (field); 503 with \
            Retry-After when a dependency is slow or down (retry later); 501 not-served-here \
            when this process does not run what serves the route (the reconciliation role, a \
            ledger, an inventory store; ask another process, not this one again).\n\n\
            Request rules of every route: a header the API reads once (Idempotency-Key, \
            Content-Type, Authorization) sent twice is 400 invalid-header; bodies are \
            uncompressed JSON in UTF-8 (a Content-Encoding other than identity is 415, answered \
            with Accept-Encoding: identity); path ids (order, payment, SKU) are 1 to 64 \
            characters without control characters (SKUs without whitespace too), else 400 \
            invalid-path-parameter; money is an integer amountMinor in the minor unit of an \
            active ISO 4217 currency (its exponent: 2 for EUR, 0 for JPY, 3 for BHD); integers \
            (amountMinor, quantity, delta, holdTtlMs) are written as whole numbers without a \
            fraction or an exponent (100, not 100.0 or 1e2), and one out of its range or with a \
            fraction is 422 invalid-field. A method a route does not have is 405 \
            method-not-allowed with an Allow header.\n\n\
            Limits of the HTTP server itself, enforced before any route and answered with an \
            empty body (not problem+json), over HTTP/1.1: a request line and headers larger \
            than about 450 KiB or more than 100 header fields: 431; a request target (path \
            and query) longer than 65,534 bytes: 414; a malformed request line or header: \
            400. A body larger than max_body_bytes (16 KiB by default) is 413 problem+json."
    ),
    paths(
        routes::place_order,
        routes::get_order,
        routes::cancel_order,
        payments::get_order_payment,
        payments::get_payment,
        payments::create_payment,
        payments::confirm_payment,
        payments::refund_payment,
        payments::psp_callback,
        inventory::get_inventory,
        inventory::adjust_inventory,
        inventory::reserve_inventory,
        inventory::release_inventory,
        crate::finance::get_reconciliation,
        routes::health,
        routes::ready,
        routes::metrics,
        routes::openapi_json,
    ),
    components(schemas(
        PlaceOrderRequest,
        ShippingAddressBody,
        CancelRequest,
        Accepted,
        OrderResource,
        ReceivedOrder,
        OrderView,
        OrderItemView,
        MoneyView,
        AddressView,
        TimelineEntry,
        PaymentView,
        PaymentAttemptView,
        RefundView,
        PaymentResource,
        RequestedPayment,
        CreatePaymentRequest,
        AmountBody,
        ConfirmRequest,
        PaymentAccepted,
        MoneyBody,
        RefundRequest,
        RefundAccepted,
        PspCallbackBody,
        CallbackAccepted,
        InventoryLevel,
        WarehouseLevel,
        AdjustRequest,
        AdjustAccepted,
        ReserveRequest,
        ReserveLine,
        ReleaseRequest,
        HoldsAccepted,
        LineCommand,
        StatusBody,
        Problem,
        keel_processors::reconciliation::FinanceReport,
        keel_processors::reconciliation::ConnectorLag,
        keel_processors::reconciliation::MismatchView,
        keel_processors::reconciliation::MismatchKind,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "orders", description = "Orders: place, read, cancel"),
        (name = "payments", description = "Payments: open an intent, confirm (authorize), read, \
            refund, and the PSP's signed callbacks"),
        (name = "inventory", description = "Inventory: stock per SKU, adjust, reserve, release"),
        (name = "finance", description = "Reconciliation of the saga against the payment ledger"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        }
    }
}

impl ApiDoc {
    /// The document as JSON text.
    pub fn json() -> String {
        Self::openapi()
            .to_json()
            .unwrap_or_else(|_| "{}".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push(r),
                        _ => refs(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_schema_reference_resolves_and_errors_are_problem_json() {
        let doc: Value = serde_json::from_str(&ApiDoc::json()).expect("json");
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(!found.is_empty());
        for r in found {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected ref {r}"));
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "{r} does not resolve"
            );
        }
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("item") {
                for (status, response) in op["responses"].as_object().expect("responses") {
                    if status.starts_with('4') || status.starts_with('5') {
                        assert!(
                            response["content"]["application/problem+json"].is_object(),
                            "{method} {path} {status} is not problem+json"
                        );
                    }
                }
            }
        }
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    }
}
