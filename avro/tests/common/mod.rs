//! Fixtures shared by the `keel-avro` integration tests: a sample of every record (every union
//! branch, optional fields both set and unset) and registry settings with random subjects.

#![allow(dead_code)]

use keel_avro::RegistryConfig;
use keel_avro::records::*;

/// The registry of the local stack, or `KEEL_SCHEMA_REGISTRY_URL`.
pub fn registry_url() -> String {
    std::env::var("KEEL_SCHEMA_REGISTRY_URL")
        .unwrap_or_else(|_| keel_avro::DEFAULT_REGISTRY_URL.to_owned())
}

/// A subject prefix no other test (or earlier run) uses: `t-<tag>-<12 hex digits>-`.
pub fn unique_prefix(tag: &str) -> String {
    let n: u64 = rand::random();
    format!("t-{tag}-{:012x}-", n & 0xffff_ffff_ffff)
}

/// Settings for the local registry with a fresh subject prefix.
pub fn config(tag: &str) -> RegistryConfig {
    RegistryConfig {
        subject_prefix: unique_prefix(tag),
        ..RegistryConfig::with_url(registry_url())
    }
}

const AT: i64 = 1_767_225_600_123; // 2026-01-01T00:00:00.123Z

fn eur(amount_minor: i64) -> Money {
    Money::new(amount_minor, "EUR")
}

fn address() -> ShippingAddress {
    ShippingAddress {
        name: "Ada Lovelace".into(),
        line1: "12 Analytical Row".into(),
        line2: None,
        city: "Berlin".into(),
        postal_code: "10115".into(),
        country: "DE".into(),
    }
}

fn lines() -> Vec<OrderLine> {
    vec![
        OrderLine {
            sku: "SKU-RED-MUG".into(),
            quantity: 2,
            unit_price: eur(1_250),
        },
        OrderLine {
            sku: "SKU-BLUE-PLATE".into(),
            quantity: 1,
            unit_price: eur(-5),
        },
    ]
}

pub fn order_commands() -> Vec<OrderCommand> {
    let envelope = |command| OrderCommand {
        command_id: "cmd-1".into(),
        order_id: "order-42".into(),
        issued_at: AT,
        causation_id: "http-req-7".into(),
        correlation_id: "order-42".into(),
        command,
    };
    vec![
        envelope(OrderCommandBody::PlaceOrder(PlaceOrder {
            customer_id: "cust-1".into(),
            cart_id: "cart-9".into(),
            lines: lines(),
            total: eur(2_495),
            payment_method: "pm_tok_visa".into(),
            shipping_address: Some(address()),
        })),
        envelope(OrderCommandBody::PlaceOrder(PlaceOrder {
            customer_id: "cust-2".into(),
            cart_id: "cart-empty".into(),
            lines: vec![],
            total: Money::new(0, "JPY"),
            payment_method: String::new(),
            shipping_address: None,
        })),
        envelope(OrderCommandBody::CancelOrder(CancelOrder {
            reason: "customer changed their mind — ünïcödé".into(),
        })),
    ]
}

pub fn inventory_commands() -> Vec<InventoryCommand> {
    let envelope = |command| InventoryCommand {
        command_id: "cmd-2".into(),
        sku: "SKU-RED-MUG".into(),
        issued_at: AT,
        causation_id: "cmd-1".into(),
        correlation_id: "order-42".into(),
        command,
    };
    vec![
        envelope(InventoryCommandBody::Reserve(ReserveStock {
            order_id: "order-42".into(),
            quantity: 2,
            warehouse: Some("WH-NORTH".into()),
            hold_ttl_ms: Some(30_000),
        })),
        envelope(InventoryCommandBody::Release(ReleaseStock {
            order_id: "order-42".into(),
            reason: ReleaseReason::HoldExpired,
        })),
        envelope(InventoryCommandBody::Adjust(AdjustStock {
            delta: -3,
            reason: "breakage".into(),
            warehouse: None,
        })),
        envelope(InventoryCommandBody::Confirm(ConfirmReservation {
            order_id: "order-42".into(),
        })),
    ]
}

pub fn payment_commands() -> Vec<PaymentCommand> {
    let envelope = |command| PaymentCommand {
        command_id: "cmd-3".into(),
        payment_id: "pay-1".into(),
        order_id: "order-42".into(),
        issued_at: AT,
        causation_id: "evt-9".into(),
        correlation_id: "order-42".into(),
        command,
    };
    vec![
        envelope(PaymentCommandBody::CreateIntent(CreatePaymentIntent {
            customer_id: "cust-1".into(),
            amount: eur(2_495),
            payment_method: "pm_tok_visa".into(),
        })),
        envelope(PaymentCommandBody::Authorize(AuthorizePayment {
            amount: eur(2_495),
        })),
        envelope(PaymentCommandBody::Refund(RefundPayment {
            refund_id: "ref-1".into(),
            amount: eur(1_000),
            reason: "partial return".into(),
        })),
        envelope(PaymentCommandBody::PspCallback(PspCallback {
            psp_event_id: "psp-evt-1".into(),
            psp_reference: "psp-ref-1".into(),
            outcome: PspOutcome::Declined,
            decline_code: Some("insufficient_funds".into()),
        })),
        envelope(PaymentCommandBody::PspCallback(PspCallback {
            psp_event_id: "psp-evt-2".into(),
            psp_reference: "psp-ref-2".into(),
            outcome: PspOutcome::Authorized,
            decline_code: None,
        })),
        envelope(PaymentCommandBody::Capture(CapturePayment {
            amount: eur(2_495),
        })),
        envelope(PaymentCommandBody::Void(VoidPayment {
            reason: "order cancelled".into(),
        })),
    ]
}

pub fn order_created() -> Vec<OrderCreated> {
    vec![OrderCreated {
        event_id: "evt-1".into(),
        order_id: "order-42".into(),
        occurred_at: AT,
        causation_id: "cmd-1".into(),
        correlation_id: "order-42".into(),
        customer_id: "cust-1".into(),
        cart_id: "cart-9".into(),
        lines: lines(),
        total: eur(2_495),
    }]
}

pub fn order_status_changed() -> Vec<OrderStatusChanged> {
    let event = |from_status, to_status, reason| OrderStatusChanged {
        event_id: "evt-2".into(),
        order_id: "order-42".into(),
        occurred_at: AT,
        causation_id: "evt-1".into(),
        correlation_id: "order-42".into(),
        from_status,
        to_status,
        reason,
    };
    vec![
        event(OrderStatus::Pending, OrderStatus::Confirmed, None),
        event(
            OrderStatus::Pending,
            OrderStatus::Cancelled,
            Some("payment declined".into()),
        ),
    ]
}

pub fn payment_authorized() -> Vec<PaymentAuthorized> {
    vec![PaymentAuthorized {
        event_id: "evt-3".into(),
        payment_id: "pay-1".into(),
        occurred_at: AT,
        causation_id: "cmd-3".into(),
        correlation_id: "order-42".into(),
        order_id: "order-42".into(),
        amount: Money::new(i64::MAX, "EUR"),
        psp_reference: "psp-ref-1".into(),
    }]
}

pub fn payment_failed() -> Vec<PaymentFailed> {
    let event = |reason, detail| PaymentFailed {
        event_id: "evt-4".into(),
        payment_id: "pay-1".into(),
        occurred_at: AT,
        causation_id: "cmd-3".into(),
        correlation_id: "order-42".into(),
        order_id: "order-42".into(),
        amount: eur(2_495),
        reason,
        detail,
    };
    vec![
        event(PaymentFailureReason::Declined, Some("do_not_honor".into())),
        event(PaymentFailureReason::Timeout, None),
        event(PaymentFailureReason::PspError, Some(String::new())),
    ]
}

pub fn payment_refunded() -> Vec<PaymentRefunded> {
    vec![PaymentRefunded {
        event_id: "evt-5".into(),
        payment_id: "pay-1".into(),
        occurred_at: AT,
        causation_id: "cmd-4".into(),
        correlation_id: "order-42".into(),
        order_id: "order-42".into(),
        refund_id: "ref-1".into(),
        amount: eur(1_000),
        psp_reference: "psp-ref-3".into(),
    }]
}

pub fn inventory_reserved() -> Vec<InventoryReserved> {
    let event = |status, quantity, available, expires_at| InventoryReserved {
        event_id: "evt-6".into(),
        sku: "SKU-RED-MUG".into(),
        occurred_at: AT,
        causation_id: "cmd-2".into(),
        correlation_id: "order-42".into(),
        order_id: "order-42".into(),
        status,
        quantity,
        available,
        expires_at,
        warehouse: expires_at.map(|_| "WH-NORTH".to_owned()),
        held: None,
        warehouse_held: None,
        held_version: None,
    };
    vec![
        event(ReservationStatus::Held, 2, 8, Some(AT + 600_000)),
        event(ReservationStatus::Shortage, 20, 8, None),
    ]
}

pub fn inventory_released() -> Vec<InventoryReleased> {
    vec![InventoryReleased {
        event_id: "evt-7".into(),
        sku: "SKU-RED-MUG".into(),
        occurred_at: AT,
        causation_id: "evt-2".into(),
        correlation_id: "order-42".into(),
        order_id: "order-42".into(),
        quantity: 2,
        reason: ReleaseReason::OrderCancelled,
        warehouse: Some("default".into()),
        held: None,
        warehouse_held: None,
        held_version: None,
    }]
}

pub fn inventory_adjusted() -> Vec<InventoryAdjusted> {
    vec![InventoryAdjusted {
        event_id: "evt-8".into(),
        sku: "SKU-RED-MUG".into(),
        occurred_at: 0,
        causation_id: "cmd-5".into(),
        correlation_id: "cmd-5".into(),
        delta: i32::MIN,
        on_hand: 0,
        reason: "stock count".into(),
        warehouse: Some("WH-NORTH".into()),
        warehouse_on_hand: Some(0),
    }]
}

pub fn order_decisions() -> Vec<OrderDecision> {
    let decision = |sequence, status, from_status, reason: Option<&str>| OrderDecision {
        decision_id: format!("order-42/{sequence}"),
        order_id: "order-42".into(),
        decided_at: AT,
        causation_id: "cmd-1".into(),
        correlation_id: "order-42".into(),
        sequence,
        status,
        from_status,
        reason: reason.map(str::to_owned),
        detail: reason.map(|_| "SKU-RED-MUG: 2 wanted, 1 available".to_owned()),
        customer_id: "cust-1".into(),
        cart_id: "cart-9".into(),
        lines: lines(),
        total: eur(2_495),
        shipping_address: (sequence == 1).then(address),
        payment_method: "pm_tok_visa".into(),
        source_topic: "orders.commands.v1".into(),
        source_partition: 3,
        source_offset: if sequence == 1 { 17 } else { -1 },
    };
    vec![
        decision(1, OrderDecisionStatus::Pending, None, None),
        decision(
            2,
            OrderDecisionStatus::Cancelled,
            Some(OrderDecisionStatus::Pending),
            Some("INSUFFICIENT_STOCK"),
        ),
        decision(
            1,
            OrderDecisionStatus::Rejected,
            None,
            Some("INVALID_ORDER"),
        ),
    ]
}

pub fn cart_checked() -> Vec<CartChecked> {
    let answer = |status, detail: Option<&str>, ok: bool| CartChecked {
        event_id: "order-42/cart-check".into(),
        order_id: "order-42".into(),
        occurred_at: AT,
        causation_id: "cmd-1".into(),
        correlation_id: "order-42".into(),
        cart_id: "cart-9".into(),
        status,
        detail: detail.map(str::to_owned),
        customer_id: ok.then(|| "cust-1".to_owned()),
        lines: if ok { lines() } else { Vec::new() },
        total: eur(if ok { 2_495 } else { 0 }),
    };
    vec![
        answer(CartCheckStatus::Ok, None, true),
        answer(
            CartCheckStatus::CartNotFound,
            Some("no cart after 30000 ms"),
            false,
        ),
        answer(CartCheckStatus::CartEmpty, None, false),
        answer(
            CartCheckStatus::CartAlreadyOrdered,
            Some("claimed by order-41"),
            false,
        ),
        answer(CartCheckStatus::CurrencyMismatch, Some("EUR vs USD"), false),
    ]
}

pub fn reconciliation_mismatches() -> Vec<keel_avro::records::ReconciliationMismatch> {
    use keel_avro::records::{ReconciliationKind, ReconciliationMismatch, ReconciliationState};
    let open = ReconciliationMismatch {
        event_id: "order-42/AUTHORIZED_BUT_CANCELLED/1767225600123/OPEN".into(),
        order_id: "order-42".into(),
        occurred_at: AT,
        causation_id: "grace-timer".into(),
        correlation_id: "order-42".into(),
        kind: ReconciliationKind::AuthorizedButCancelled,
        state: ReconciliationState::Open,
        opened_at: AT,
        resolved_at: None,
        detail: "order cancelled but payment pay-1 is CAPTURED".into(),
        payment_id: Some("pay-1".into()),
        order_status: Some("CANCELLED".into()),
        payment_status: Some("CAPTURED".into()),
        order_total_minor: Some(2_495),
        captured_minor: Some(2_495),
        currency: Some("EUR".into()),
    };
    let resolved = ReconciliationMismatch {
        event_id: "order-42/AMOUNT_MISMATCH/1767225600123/RESOLVED".into(),
        kind: ReconciliationKind::AmountMismatch,
        state: ReconciliationState::Resolved,
        resolved_at: Some(AT + 1_000),
        payment_id: None,
        order_total_minor: None,
        captured_minor: None,
        currency: None,
        ..open.clone()
    };
    vec![open, resolved]
}

pub fn audit_violations() -> Vec<keel_avro::records::AuditViolation> {
    use keel_avro::records::{AuditInvariant, AuditViolation, AuditViolationState};
    let open = AuditViolation {
        event_id: "CANCELLED_HOLDS_RELEASED/order-42/1767225600123/OPEN".into(),
        subject_id: "order-42".into(),
        occurred_at: AT,
        causation_id: "grace-timer".into(),
        correlation_id: "order-42".into(),
        invariant: AuditInvariant::CancelledHoldsReleased,
        state: AuditViolationState::Open,
        opened_at: AT,
        resolved_at: None,
        order_id: Some("order-42".into()),
        sku: Some("MUG-1".into()),
        detail: "order cancelled but MUG-1 still holds 2".into(),
    };
    let allowed = AuditViolation {
        event_id: "STOCK_NON_NEGATIVE/MUG-1/1767225600123/ALLOWED".into(),
        subject_id: "MUG-1".into(),
        correlation_id: "MUG-1".into(),
        invariant: AuditInvariant::StockNonNegative,
        state: AuditViolationState::Allowed,
        resolved_at: Some(AT + 1_000),
        order_id: None,
        ..open.clone()
    };
    vec![open, allowed]
}
