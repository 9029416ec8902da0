//! Unit tests of the order sink's pure mapping (`logic.rs`).

use keel_avro::records::{
    Money, OrderDecision, OrderDecisionStatus, OrderLine, OrderStatus, ShippingAddress,
};

use super::Error;
use super::logic::{
    CurrentOrder, OrderWrite, OutboxEvent, Plan, Rows, lines_total, plan_decision, utc_from_millis,
};

const DECIDED_AT: i64 = 1_764_000_000_123;

fn decision(sequence: i32, status: OrderDecisionStatus) -> OrderDecision {
    OrderDecision {
        decision_id: format!("o-1/{sequence}"),
        order_id: "o-1".into(),
        decided_at: DECIDED_AT,
        causation_id: "cmd-1".into(),
        correlation_id: "corr-1".into(),
        sequence,
        status,
        from_status: None,
        reason: None,
        detail: None,
        customer_id: "c-1".into(),
        cart_id: "cart-1".into(),
        lines: vec![
            OrderLine {
                sku: "SKU-A".into(),
                quantity: 2,
                unit_price: Money::new(1_250, "EUR"),
            },
            OrderLine {
                sku: "SKU-B".into(),
                quantity: 1,
                unit_price: Money::new(999, "EUR"),
            },
        ],
        total: Money::new(3_499, "EUR"),
        shipping_address: Some(ShippingAddress {
            name: "Ada".into(),
            line1: "Main St 1".into(),
            line2: None,
            city: "Berlin".into(),
            postal_code: "10115".into(),
            country: "DE".into(),
        }),
        payment_method: "pm_card_visa".into(),
        source_topic: "orders.commands.v1".into(),
        source_partition: 3,
        source_offset: 42,
    }
}

fn apply(plan: Plan) -> Rows {
    match plan {
        Plan::Apply(rows) => *rows,
        Plan::Stale { last_sequence } => panic!("expected rows, got stale at {last_sequence}"),
    }
}

#[test]
fn pending_for_a_new_order_inserts_the_order_items_cart_and_order_created() {
    let rows = apply(
        plan_decision(
            None,
            &decision(1, OrderDecisionStatus::Pending),
            "ev-1".into(),
        )
        .expect("plan"),
    );
    assert_eq!(rows.history.decision_id, "o-1/1");
    assert_eq!(rows.history.to_status, "PENDING");
    assert_eq!(rows.history.from_status, None);
    assert_eq!(rows.history.source_topic, "orders.commands.v1");
    assert_eq!(rows.history.source_partition, 3);
    assert_eq!(rows.history.source_offset, 42);
    assert_eq!(
        rows.history.decided_at,
        utc_from_millis(DECIDED_AT).expect("time")
    );
    let OrderWrite::Insert { order, items } = rows.order else {
        panic!("expected an insert, got {:?}", rows.order);
    };
    assert_eq!(order.status, "PENDING");
    assert_eq!(order.total_minor, 3_499);
    assert_eq!(order.currency, "EUR");
    assert_eq!(order.last_sequence, 1);
    assert_eq!(items.len(), 2);
    assert_eq!(
        (items[0].line_no, items[0].sku.as_str(), items[0].quantity),
        (1, "SKU-A", 2)
    );
    assert_eq!((items[1].line_no, items[1].unit_price_minor), (2, 999));
    assert_eq!(rows.cart_ordered.as_deref(), Some("cart-1"));
    let Some(OutboxEvent::Created(created)) = rows.outbox else {
        panic!("expected order.created, got {:?}", rows.outbox);
    };
    assert_eq!(created.event_id, "ev-1");
    assert_eq!(created.occurred_at, DECIDED_AT);
    assert_eq!(created.causation_id, "o-1/1");
    assert_eq!(created.correlation_id, "corr-1");
    assert_eq!(created.total, Money::new(3_499, "EUR"));
    assert_eq!(created.lines.len(), 2);
}

#[test]
fn confirmed_after_pending_updates_the_status_and_emits_status_changed() {
    let current = CurrentOrder {
        status: OrderDecisionStatus::Pending,
        last_sequence: 1,
    };
    let rows = apply(
        plan_decision(
            Some(current),
            &decision(4, OrderDecisionStatus::Confirmed),
            "ev-2".into(),
        )
        .expect("plan"),
    );
    let OrderWrite::Update(update) = &rows.order else {
        panic!("expected an update, got {:?}", rows.order);
    };
    assert_eq!((update.status, update.sequence), ("CONFIRMED", 4));
    assert_eq!(rows.history.from_status, Some("PENDING"));
    assert_eq!(rows.cart_ordered, None);
    let Some(OutboxEvent::StatusChanged(changed)) = &rows.outbox else {
        panic!("expected order.status.changed, got {:?}", rows.outbox);
    };
    assert_eq!(changed.from_status, OrderStatus::Pending);
    assert_eq!(changed.to_status, OrderStatus::Confirmed);
    assert_eq!(changed.event_id, "ev-2");
    let names = crate::topics::Topics::with_prefix("shop-a.");
    assert_eq!(
        rows.outbox.as_ref().map(|e| e.topic(&names)).as_deref(),
        Some("shop-a.order.status.changed"),
        "the outbox names the prefixed topic the relay publishes to"
    );
}

#[test]
fn cancelled_carries_its_reason_and_prefers_the_sagas_from_status() {
    let mut d = decision(3, OrderDecisionStatus::Cancelled);
    d.from_status = Some(OrderDecisionStatus::Pending);
    d.reason = Some("PAYMENT_DECLINED".into());
    d.detail = Some("card declined".into());
    // The stored status disagrees; the saga's view of the transition wins.
    let current = CurrentOrder {
        status: OrderDecisionStatus::Confirmed,
        last_sequence: 2,
    };
    let rows = apply(plan_decision(Some(current), &d, "ev".into()).expect("plan"));
    let Some(OutboxEvent::StatusChanged(changed)) = &rows.outbox else {
        panic!("expected order.status.changed, got {:?}", rows.outbox);
    };
    assert_eq!(changed.from_status, OrderStatus::Pending);
    assert_eq!(changed.to_status, OrderStatus::Cancelled);
    assert_eq!(changed.reason.as_deref(), Some("PAYMENT_DECLINED"));
    assert_eq!(rows.history.reason.as_deref(), Some("PAYMENT_DECLINED"));
    assert_eq!(rows.history.detail.as_deref(), Some("card declined"));
}

#[test]
fn rejected_writes_the_order_but_no_outbox_event() {
    let mut d = decision(1, OrderDecisionStatus::Rejected);
    d.reason = Some("CART_NOT_FOUND".into());
    let rows = apply(plan_decision(None, &d, "ev".into()).expect("plan"));
    assert!(rows.outbox.is_none(), "{:?}", rows.outbox);
    assert_eq!(rows.cart_ordered, None);
    let OrderWrite::Insert { order, .. } = rows.order else {
        panic!("expected an insert");
    };
    assert_eq!(order.status, "REJECTED");
    assert_eq!(order.reason.as_deref(), Some("CART_NOT_FOUND"));
}

#[test]
fn a_decision_at_or_below_the_last_sequence_is_stale() {
    let current = CurrentOrder {
        status: OrderDecisionStatus::Confirmed,
        last_sequence: 4,
    };
    for sequence in [1, 4] {
        let plan = plan_decision(
            Some(current),
            &decision(sequence, OrderDecisionStatus::Cancelled),
            "ev".into(),
        )
        .expect("plan");
        assert_eq!(
            plan,
            Plan::Stale { last_sequence: 4 },
            "sequence {sequence}"
        );
    }
}

#[test]
fn a_cancel_of_an_order_never_created_emits_nothing() {
    let rows = apply(
        plan_decision(
            None,
            &decision(1, OrderDecisionStatus::Cancelled),
            "ev".into(),
        )
        .expect("plan"),
    );
    assert!(rows.outbox.is_none());
    assert!(matches!(rows.order, OrderWrite::Insert { .. }));
}

#[test]
fn invalid_decisions_are_the_inputs_fault() {
    let mut bad_seq = decision(0, OrderDecisionStatus::Pending);
    bad_seq.sequence = 0;
    let mut bad_time = decision(1, OrderDecisionStatus::Pending);
    bad_time.decided_at = i64::MAX;
    let mut bad_currency = decision(1, OrderDecisionStatus::Pending);
    bad_currency.lines[1].unit_price.currency = "USD".into();
    for d in [bad_seq, bad_time, bad_currency] {
        let err = plan_decision(None, &d, "ev".into()).expect_err("invalid");
        assert!(matches!(err, Error::InvalidDecision { .. }), "{err}");
        assert_eq!(err.fault(), keel_avro::Fault::Input);
    }
}

#[test]
fn lines_total_sums_quantity_times_price_and_refuses_overflow() {
    let d = decision(1, OrderDecisionStatus::Pending);
    assert_eq!(lines_total(&d.lines, "EUR"), Some(Money::new(3_499, "EUR")));
    let huge = vec![OrderLine {
        sku: "X".into(),
        quantity: 2,
        unit_price: Money::new(i64::MAX / 2 + 1, "EUR"),
    }];
    assert_eq!(lines_total(&huge, "EUR"), None);
}

#[test]
fn cancelled_and_rejected_release_the_cart_confirmed_and_pending_keep_it() {
    let pending = CurrentOrder {
        status: OrderDecisionStatus::Pending,
        last_sequence: 1,
    };
    for (status, released) in [
        (OrderDecisionStatus::Cancelled, Some("cart-1")),
        (OrderDecisionStatus::Rejected, Some("cart-1")),
        (OrderDecisionStatus::Confirmed, None),
    ] {
        let rows =
            apply(plan_decision(Some(pending), &decision(2, status), "ev".into()).expect("plan"));
        assert_eq!(rows.cart_released.as_deref(), released, "{status:?}");
        assert_eq!(rows.cart_ordered, None, "{status:?}");
    }
    // Rejected before any other decision (the order row is inserted as REJECTED): released too.
    let rows = apply(
        plan_decision(
            None,
            &decision(1, OrderDecisionStatus::Rejected),
            "ev".into(),
        )
        .expect("plan"),
    );
    assert_eq!(rows.cart_released.as_deref(), Some("cart-1"));
    let rows = apply(
        plan_decision(
            None,
            &decision(1, OrderDecisionStatus::Pending),
            "ev".into(),
        )
        .expect("plan"),
    );
    assert_eq!(rows.cart_released, None);
}

#[test]
fn a_stale_cancel_releases_nothing() {
    let confirmed = CurrentOrder {
        status: OrderDecisionStatus::Confirmed,
        last_sequence: 3,
    };
    let plan = plan_decision(
        Some(confirmed),
        &decision(2, OrderDecisionStatus::Cancelled),
        "ev".into(),
    )
    .expect("plan");
    assert_eq!(plan, Plan::Stale { last_sequence: 3 });
}
