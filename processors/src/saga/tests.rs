//! The saga: pure transitions (examples and a property model), then the topology through the
//! test driver.

use keel_avro::records::*;
use proptest::prelude::*;

use super::logic::{Effect, Ignored, Input, Refusal, Timeouts, decide};
use super::state::{LineState, Reason, Saga, Step};

const T0: i64 = 1_700_000_000_000;
const ORDER: &str = "order-1";
const TIMEOUTS: Timeouts = Timeouts {
    inventory_ms: 5_000,
    payment_ms: 10_000,
    cart_ms: None,
    wait_for_sale: false,
};
/// `[inventory].oversell = "prevent"`: an authorized order waits for inventory's sale.
const PREVENT_TIMEOUTS: Timeouts = Timeouts {
    inventory_ms: 5_000,
    payment_ms: 10_000,
    cart_ms: None,
    wait_for_sale: true,
};
/// `[carts].source = "cdc"`: every order first waits for its cart check.
const CART_TIMEOUTS: Timeouts = Timeouts {
    inventory_ms: 5_000,
    payment_ms: 10_000,
    cart_ms: Some(3_000),
    wait_for_sale: false,
};

fn eur(minor: i64) -> Money {
    Money::new(minor, "EUR")
}

fn line(sku: &str, quantity: i32, unit: i64) -> OrderLine {
    OrderLine {
        sku: sku.into(),
        quantity,
        unit_price: eur(unit),
    }
}

fn place_order(lines: Vec<OrderLine>) -> PlaceOrder {
    let total = lines
        .iter()
        .map(|l| l.unit_price.amount_minor * i64::from(l.quantity))
        .sum();
    PlaceOrder {
        customer_id: "cust-1".into(),
        cart_id: "cart-1".into(),
        lines,
        total: eur(total),
        payment_method: "tok_visa".into(),
        shipping_address: None,
    }
}

fn place() -> Input {
    Input::Place {
        command_id: "cmd-place".into(),
        order_id: ORDER.into(),
        place: place_order(vec![line("SKU-A", 2, 1_000), line("SKU-B", 1, 500)]),
    }
}

fn reserved(sku: &str, status: ReservationStatus, id: &str) -> Input {
    Input::Reserved(InventoryReserved {
        event_id: id.into(),
        sku: sku.into(),
        occurred_at: T0,
        causation_id: "c".into(),
        correlation_id: ORDER.into(),
        order_id: ORDER.into(),
        status,
        quantity: 1,
        available: 0,
        expires_at: Some(T0 + 600_000),
        warehouse: None,
        held: None,
        warehouse_held: None,
        held_version: None,
    })
}

fn held(sku: &str) -> Input {
    reserved(sku, ReservationStatus::Held, &format!("held-{sku}"))
}

/// A release of `sku`'s hold for [`ORDER`] that `causation` asked for.
fn released(sku: &str, reason: ReleaseReason, causation: &str) -> Input {
    Input::Released(InventoryReleased {
        event_id: format!("released-{sku}"),
        sku: sku.into(),
        occurred_at: T0,
        causation_id: causation.into(),
        correlation_id: ORDER.into(),
        order_id: ORDER.into(),
        quantity: 1,
        reason,
        warehouse: None,
        held: None,
        warehouse_held: None,
        held_version: None,
    })
}

fn authorized(id: &str) -> Input {
    Input::Authorized(PaymentAuthorized {
        event_id: id.into(),
        payment_id: format!("pay-{ORDER}"),
        occurred_at: T0,
        causation_id: "c".into(),
        correlation_id: ORDER.into(),
        order_id: ORDER.into(),
        amount: eur(2_500),
        psp_reference: "psp-1".into(),
    })
}

fn failed(reason: PaymentFailureReason) -> Input {
    Input::PaymentFailed(PaymentFailed {
        event_id: "failed-1".into(),
        payment_id: format!("pay-{ORDER}"),
        occurred_at: T0,
        causation_id: "c".into(),
        correlation_id: ORDER.into(),
        order_id: ORDER.into(),
        amount: eur(2_500),
        reason,
        detail: Some("insufficient_funds".into()),
    })
}

fn cancel(id: &str) -> Input {
    Input::Cancel {
        command_id: id.into(),
        order_id: ORDER.into(),
        reason: "changed my mind".into(),
    }
}

/// Runs inputs in order from no saga; returns the final saga and every effect.
fn run(inputs: Vec<Input>) -> (Saga, Vec<Effect>) {
    let mut state = None;
    let mut all = Vec::new();
    for input in inputs {
        let outcome = decide(state, input, ORDER, T0, &TIMEOUTS).expect("applies");
        state = outcome.saga;
        all.extend(outcome.effects);
    }
    (state.expect("a saga"), all)
}

fn decisions(fx: &[Effect]) -> Vec<(OrderDecisionStatus, Option<Reason>)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Decide { status, reason, .. } => Some((*status, *reason)),
            _ => None,
        })
        .collect()
}

fn inventory(fx: &[Effect]) -> Vec<(String, &'static str)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Inventory { sku, command } => Some((
                sku.clone(),
                match command {
                    InventoryCommandBody::Reserve(_) => "reserve",
                    InventoryCommandBody::Release(_) => "release",
                    InventoryCommandBody::Confirm(_) => "confirm",
                    InventoryCommandBody::Adjust(_) => "adjust",
                },
            )),
            _ => None,
        })
        .collect()
}

fn payments(fx: &[Effect]) -> Vec<&'static str> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Payment(c) => Some(match c {
                PaymentCommandBody::CreateIntent(_) => "intent",
                PaymentCommandBody::Authorize(_) => "authorize",
                PaymentCommandBody::Capture(_) => "capture",
                PaymentCommandBody::Void(_) => "void",
                PaymentCommandBody::Refund(_) => "refund",
                PaymentCommandBody::PspCallback(_) => "callback",
            }),
            _ => None,
        })
        .collect()
}

#[test]
fn a_checkout_reserves_every_line_then_authorizes_then_confirms_and_captures() {
    let (saga, fx) = run(vec![
        place(),
        held("SKU-A"),
        held("SKU-B"),
        authorized("auth-1"),
    ]);
    assert_eq!(saga.step, Step::Confirmed);
    assert_eq!(
        decisions(&fx),
        vec![
            (OrderDecisionStatus::Pending, None),
            (OrderDecisionStatus::Confirmed, None)
        ]
    );
    let inv = inventory(&fx);
    assert_eq!(
        inv,
        vec![
            ("SKU-A".into(), "reserve"),
            ("SKU-B".into(), "reserve"),
            ("SKU-A".into(), "confirm"),
            ("SKU-B".into(), "confirm"),
        ]
    );
    assert_eq!(payments(&fx), vec!["intent", "authorize", "capture"]);
    assert_eq!(saga.deadline, None, "a terminal saga waits for nothing");
}

/// Break report 13, D1: `POST /payments` for a checkout's order id opened `pay-<order>` for 1
/// cent before the saga's own intent; the saga confirmed and captured the 1 cent for a 25.00
/// EUR order.
#[test]
fn an_authorization_of_another_amount_is_voided_and_cancels_the_order() {
    for amount in [eur(1), eur(2_499), Money::new(2_500, "USD")] {
        let Input::Authorized(mut auth) = authorized("auth-other") else {
            unreachable!()
        };
        auth.amount = amount.clone();
        for timeouts in [TIMEOUTS, PREVENT_TIMEOUTS] {
            let mut state = None;
            let mut fx = Vec::new();
            for input in [
                place(),
                held("SKU-A"),
                held("SKU-B"),
                Input::Authorized(auth.clone()),
            ] {
                let outcome = decide(state, input, ORDER, T0, &timeouts).expect("applies");
                state = outcome.saga;
                fx.extend(outcome.effects);
            }
            let saga = state.expect("a saga");
            assert_eq!(saga.step, Step::Cancelled, "{amount:?}");
            assert_eq!(saga.reason, Some(Reason::PaymentMismatch));
            let detail = saga.detail.clone().unwrap_or_default();
            assert!(
                detail.contains(&format!("{} {}", amount.amount_minor, amount.currency))
                    && detail.contains("2500 EUR"),
                "{detail}"
            );
            assert_eq!(payments(&fx), vec!["intent", "authorize", "void"]);
            let released: Vec<_> = inventory(&fx)
                .into_iter()
                .filter(|(_, c)| *c != "reserve")
                .collect();
            assert_eq!(
                released,
                vec![("SKU-A".into(), "release"), ("SKU-B".into(), "release")]
            );
        }
    }
}

/// Break report 13, D2: `POST /inventory/release` for a checkout's order id freed its holds;
/// the saga went on, confirmed and captured, and the sale never took the stock.
#[test]
fn a_hold_released_by_another_command_cancels_the_order() {
    let foreign_release = |sku: &str| released(sku, ReleaseReason::OrderCancelled, "api-release");
    // Waiting for the payment: the payment is voided, the other line released.
    let (saga, fx) = run(vec![
        place(),
        held("SKU-A"),
        held("SKU-B"),
        foreign_release("SKU-A"),
    ]);
    assert_eq!(saga.step, Step::Cancelled);
    assert_eq!(saga.reason, Some(Reason::HoldReleased));
    assert!(
        saga.detail
            .as_deref()
            .is_some_and(|d| d.starts_with("SKU-A: "))
    );
    assert_eq!(payments(&fx), vec!["intent", "authorize", "void"]);
    let released: Vec<_> = inventory(&fx)
        .into_iter()
        .filter(|(_, c)| *c == "release")
        .collect();
    assert_eq!(released, vec![("SKU-B".into(), "release")]);
    // A late authorization then changes nothing but its void.
    let (saga, fx) = run(vec![
        place(),
        held("SKU-A"),
        held("SKU-B"),
        foreign_release("SKU-B"),
        authorized("auth-late"),
    ]);
    assert_eq!(saga.step, Step::Cancelled);
    assert!(!payments(&fx).contains(&"capture"));
    // Waiting for the other line: cancelled at once, not at the inventory deadline.
    let (saga, fx) = run(vec![place(), held("SKU-A"), foreign_release("SKU-A")]);
    assert_eq!(saga.step, Step::Cancelled);
    assert_eq!(saga.reason, Some(Reason::HoldReleased));
    assert!(payments(&fx).is_empty());
    assert!(inventory(&fx).contains(&("SKU-B".into(), "release")));
}

/// Break report 13, D3: a cart worth 0 was accepted; the payment service ignored its intent
/// and the order held its stock until the payment deadline. Totals above 2^53 - 1 and the
/// currency `XXX` passed too, which the API refuses for every amount.
#[test]
fn an_order_that_could_never_be_paid_is_invalid() {
    let mut free = place_order(vec![line("SKU-A", 1, 0)]);
    assert!(
        super::logic::validate(&free)
            .is_err_and(|e| e.starts_with("total.amount_minor: 0 is not between 1 and")),
    );
    free.lines = vec![line("SKU-A", 1, crate::money::MAX_AMOUNT_MINOR + 1)];
    free.total = eur(crate::money::MAX_AMOUNT_MINOR + 1);
    assert!(super::logic::validate(&free).is_err_and(|e| e.starts_with("total.amount_minor: ")));
    let mut xxx = place_order(vec![line("SKU-A", 1, 100)]);
    xxx.total.currency = "XXX".into();
    xxx.lines[0].unit_price.currency = "XXX".into();
    assert!(super::logic::validate(&xxx).is_err_and(|e| e.starts_with("total.currency: \"XXX\"")));
    let top = place_order(vec![line("SKU-A", 1, crate::money::MAX_AMOUNT_MINOR)]);
    assert_eq!(super::logic::validate(&top), Ok(()));
}

#[test]
fn payment_is_asked_only_once_every_line_is_held() {
    let (saga, fx) = run(vec![place(), held("SKU-A")]);
    assert_eq!(saga.step, Step::AwaitingInventory);
    assert!(payments(&fx).is_empty());
}

#[test]
fn a_shortage_cancels_with_the_missing_line_and_releases_what_was_held() {
    let (saga, fx) = run(vec![
        place(),
        held("SKU-A"),
        reserved("SKU-B", ReservationStatus::Shortage, "short-b"),
    ]);
    assert_eq!(saga.step, Step::Cancelled);
    assert_eq!(saga.reason, Some(Reason::InsufficientStock));
    assert!(
        saga.detail
            .as_deref()
            .is_some_and(|d| d.contains("SKU-B: 1 wanted, 0 available"))
    );
    assert!(inventory(&fx).contains(&("SKU-A".into(), "release")));
    assert!(payments(&fx).is_empty(), "no payment is attempted");
}

#[test]
fn a_declined_payment_cancels_and_releases_every_hold() {
    let (saga, fx) = run(vec![
        place(),
        held("SKU-A"),
        held("SKU-B"),
        failed(PaymentFailureReason::Declined),
    ]);
    assert_eq!(saga.step, Step::Cancelled);
    assert_eq!(saga.reason, Some(Reason::PaymentDeclined));
    let releases = inventory(&fx)
        .into_iter()
        .filter(|(_, k)| *k == "release")
        .count();
    assert_eq!(releases, 2);
}

#[test]
fn a_psp_timeout_is_its_own_reason() {
    let (saga, _) = run(vec![
        place(),
        held("SKU-A"),
        held("SKU-B"),
        failed(PaymentFailureReason::Timeout),
    ]);
    assert_eq!(saga.reason, Some(Reason::PspTimeout));
    assert_eq!(Reason::PspTimeout.code(), "PSP_TIMEOUT");
}

#[test]
fn cancel_while_authorizing_voids_and_releases() {
    let (saga, fx) = run(vec![
        place(),
        held("SKU-A"),
        held("SKU-B"),
        cancel("cancel-1"),
    ]);
    assert_eq!(saga.step, Step::Cancelled);
    assert_eq!(saga.reason, Some(Reason::CustomerCancelled));
    assert!(payments(&fx).contains(&"void"));
    let releases = inventory(&fx)
        .into_iter()
        .filter(|(_, k)| *k == "release")
        .count();
    assert_eq!(releases, 2);
}

#[test]
fn a_late_authorization_after_a_cancel_is_voided_and_the_order_stays_cancelled() {
    let (saga, fx) = run(vec![
        place(),
        held("SKU-A"),
        held("SKU-B"),
        cancel("cancel-1"),
        authorized("auth-late"),
    ]);
    assert_eq!(saga.step, Step::Cancelled);
    assert_eq!(payments(&fx).iter().filter(|p| **p == "void").count(), 2);
    assert!(!payments(&fx).contains(&"capture"));
}

#[test]
fn a_hold_that_lands_after_a_cancel_is_released() {
    let (saga, fx) = run(vec![place(), cancel("cancel-1"), held("SKU-A")]);
    assert_eq!(saga.step, Step::Cancelled);
    let a_releases = inventory(&fx)
        .into_iter()
        .filter(|(sku, k)| sku == "SKU-A" && *k == "release")
        .count();
    assert!(a_releases >= 1);
}

#[test]
fn duplicates_change_nothing() {
    let (once, fx_once) = run(vec![place(), held("SKU-A"), held("SKU-B")]);
    let (twice, fx_twice) = run(vec![
        place(),
        place(),
        held("SKU-A"),
        held("SKU-A"),
        held("SKU-B"),
        held("SKU-B"),
    ]);
    assert_eq!(once.step, twice.step);
    assert_eq!(once.line_states, twice.line_states);
    assert_eq!(fx_once, fx_twice, "a duplicate emits nothing");
}

#[test]
fn deadlines_cancel_a_saga_that_waits_too_long() {
    let (saga, fx) = run(vec![place(), held("SKU-A"), Input::DeadlinePassed]);
    assert_eq!(saga.reason, Some(Reason::InventoryTimeout));
    assert!(saga.detail.as_deref().is_some_and(|d| d.contains("SKU-B")));
    assert_eq!(
        inventory(&fx)
            .iter()
            .filter(|(_, k)| *k == "release")
            .count(),
        2
    );

    let (saga, fx) = run(vec![
        place(),
        held("SKU-A"),
        held("SKU-B"),
        Input::DeadlinePassed,
    ]);
    assert_eq!(saga.reason, Some(Reason::PaymentTimeout));
    assert!(payments(&fx).contains(&"void"));
}

#[test]
fn an_invalid_order_is_rejected_without_touching_inventory() {
    for (lines, field) in [
        (vec![], "lines"),
        (vec![line("SKU-A", 0, 100)], "lines[0].quantity"),
        (
            vec![line("SKU-A", 1, 100), line("SKU-A", 1, 100)],
            "lines[1].sku",
        ),
        (vec![line("", 1, 100)], "lines[0].sku"),
        (
            vec![line("SKU-A", 1, 100), line("WS X", 1, 100)],
            "lines[1].sku",
        ),
        (vec![line(&"S".repeat(65), 1, 100)], "lines[0].sku"),
        (vec![line("SKU-A", 1, -1)], "lines[0].unit_price"),
    ] {
        let (saga, fx) = run(vec![Input::Place {
            command_id: "p".into(),
            order_id: ORDER.into(),
            place: place_order(lines),
        }]);
        assert_eq!(saga.step, Step::Rejected);
        assert!(
            saga.detail.as_deref().is_some_and(|d| d.starts_with(field)),
            "{field}: {:?}",
            saga.detail
        );
        assert!(inventory(&fx).is_empty());
        assert_eq!(
            decisions(&fx),
            vec![(OrderDecisionStatus::Rejected, Some(Reason::InvalidOrder))]
        );
    }
    let mut wrong_total = place_order(vec![line("SKU-A", 2, 100)]);
    wrong_total.total = eur(1);
    let err = super::validate(&wrong_total).expect_err("total");
    assert!(err.starts_with("total.amount_minor"), "{err}");
    let mut mixed = place_order(vec![line("SKU-A", 2, 100)]);
    mixed.lines[0].unit_price.currency = "USD".into();
    let err = super::validate(&mixed).expect_err("currency");
    assert!(err.contains("currency"), "{err}");
}

#[test]
fn cancels_without_a_saga_and_cancels_of_finished_orders_are_refused() {
    let err = decide(None, cancel("c"), ORDER, T0, &TIMEOUTS).expect_err("unknown");
    assert!(matches!(err, Refusal::UnknownOrder(..)));
    assert!(err.to_string().contains("no saga for order"), "{err}");
    let (confirmed, _) = run(vec![place(), held("SKU-A"), held("SKU-B"), authorized("a")]);
    let err = decide(Some(confirmed), cancel("c2"), ORDER, T0, &TIMEOUTS).expect_err("409");
    assert!(err.to_string().contains("Confirmed"), "{err}");
}

/// A place-order command for `order_id` with its own command id and cart.
fn place_as(command_id: &str, order_id: &str, cart_id: &str) -> Input {
    let mut place = place_order(vec![line("SKU-A", 2, 1_000), line("SKU-B", 1, 500)]);
    place.cart_id = cart_id.into();
    Input::Place {
        command_id: command_id.into(),
        order_id: order_id.into(),
        place,
    }
}

#[test]
fn a_command_whose_key_is_empty_or_not_its_order_id_is_refused_naming_both() {
    // (the record's key, the order id inside the command)
    for (key, inside) in [("mmkey-x", "mm-x"), ("", "ek-x"), ("", ""), ("order-1", "")] {
        let err = decide(None, place_as("p", inside, "cart-1"), key, T0, &TIMEOUTS)
            .expect_err("the key is not the order id");
        let why = err.to_string();
        assert!(
            why.contains(&format!("{key:?}")) && why.contains(&format!("{inside:?}")),
            "{why}"
        );
    }
    // The same for a cancel, even of an order that exists under the key.
    let (saga, _) = run(vec![place()]);
    let cancel_other = Input::Cancel {
        command_id: "c".into(),
        order_id: "order-2".into(),
        reason: "x".into(),
    };
    let err = decide(Some(saga), cancel_other, ORDER, T0, &TIMEOUTS).expect_err("refused");
    assert!(err.to_string().contains("\"order-2\""), "{err}");
}

#[test]
fn an_order_id_that_breaks_the_id_rule_is_refused_even_when_the_key_agrees() {
    let long = "o".repeat(65);
    for bad in [long.as_str(), "order 1", "order\u{7}1"] {
        let err = decide(None, place_as("p", bad, "cart-1"), bad, T0, &TIMEOUTS)
            .expect_err("not a valid order id");
        assert!(err.to_string().contains("order_id"), "{err}");
    }
    let ok = "o".repeat(64);
    let outcome =
        decide(None, place_as("p", &ok, "cart-1"), &ok, T0, &TIMEOUTS).expect("64 is fine");
    assert_eq!(outcome.saga.map(|s| s.step), Some(Step::AwaitingInventory));
}

#[test]
fn another_place_order_for_an_existing_order_is_refused_and_a_duplicate_changes_nothing() {
    let (saga, _) = run(vec![place()]);
    // A true duplicate (same command id): nothing, and no error.
    let again = decide(Some(saga.clone()), place(), ORDER, T0, &TIMEOUTS).expect("a duplicate");
    assert!(again.effects.is_empty(), "{:?}", again.effects);
    assert_eq!(again.saga.as_ref(), Some(&saga));
    // Another command (its own id, another cart) for the same order id: a conflict, refused
    // with both commands' ids and carts, at every step.
    let (confirmed, _) = run(vec![place(), held("SKU-A"), held("SKU-B"), authorized("a")]);
    for existing in [saga, confirmed] {
        let err = decide(
            Some(existing),
            place_as("cmd-other", ORDER, "cart-2"),
            ORDER,
            T0,
            &TIMEOUTS,
        )
        .expect_err("a conflicting place-order");
        assert!(matches!(err, Refusal::OrderExists { .. }), "{err:?}");
        let why = err.to_string();
        for part in ["\"order-1\"", "\"cmd-other\"", "\"cart-2\"", "\"cart-1\""] {
            assert!(why.contains(part), "{part} in {why}");
        }
    }
}

#[test]
fn events_without_a_saga_are_ignored_with_no_state_and_no_effects() {
    for event in [
        held("SKU-A"),
        reserved("SKU-A", ReservationStatus::Shortage, "short-a"),
        authorized("a"),
        failed(PaymentFailureReason::Declined),
        cart_ok(),
    ] {
        let outcome = decide(None, event.clone(), ORDER, T0, &TIMEOUTS).expect("not refused");
        assert_eq!(outcome.saga, None, "{event:?}");
        assert!(
            outcome.effects.is_empty(),
            "{event:?}: {:?}",
            outcome.effects
        );
        assert_eq!(outcome.ignored, Some(Ignored::NoSaga), "{event:?}");
    }
}

#[test]
fn a_reply_for_a_sku_the_order_does_not_have_leaves_the_saga_as_it_was() {
    let (saga, _) = run(vec![place()]);
    let foreign = reserved("SKU-Z", ReservationStatus::Held, "held-z");
    let outcome = decide(Some(saga.clone()), foreign, ORDER, T0 + 5, &TIMEOUTS).expect("ok");
    assert_eq!(outcome.ignored, Some(Ignored::NotInOrder));
    assert_eq!(
        outcome.saga,
        Some(saga),
        "not even its event id is remembered"
    );
    assert!(outcome.effects.is_empty());
}

#[test]
fn a_retried_cancel_of_a_cancelled_order_changes_nothing_and_is_not_an_error() {
    let (cancelled, _) = run(vec![place(), cancel("cancel-1")]);
    assert_eq!(cancelled.step, Step::Cancelled);
    let again = decide(
        Some(cancelled.clone()),
        cancel("cancel-2"),
        ORDER,
        T0,
        &TIMEOUTS,
    )
    .expect("a second cancel is not dead-lettered");
    assert!(again.effects.is_empty(), "{:?}", again.effects);
    assert_eq!(again.saga.map(|s| s.step), Some(Step::Cancelled));
}

// ---- the cart step (`[carts].source = "cdc"`) ----

fn cart_answer(status: CartCheckStatus, lines: Vec<OrderLine>, id: &str) -> Input {
    let total = lines
        .iter()
        .map(|l| l.unit_price.amount_minor * i64::from(l.quantity))
        .sum();
    Input::CartChecked(CartChecked {
        event_id: id.into(),
        order_id: ORDER.into(),
        occurred_at: T0,
        causation_id: format!("{ORDER}/c1"),
        correlation_id: ORDER.into(),
        cart_id: "cart-1".into(),
        status,
        detail: (status != CartCheckStatus::Ok).then(|| "why".to_owned()),
        customer_id: Some("cust-1".into()),
        lines,
        total: eur(total),
    })
}

fn cart_ok() -> Input {
    cart_answer(
        CartCheckStatus::Ok,
        vec![line("SKU-A", 2, 1_000), line("SKU-B", 1, 500)],
        "cart-ok",
    )
}

fn run_with(timeouts: &Timeouts, inputs: Vec<Input>) -> (Saga, Vec<Effect>) {
    let mut state = None;
    let mut all = Vec::new();
    for input in inputs {
        let outcome = decide(state, input, ORDER, T0, timeouts).expect("applies");
        state = outcome.saga;
        all.extend(outcome.effects);
    }
    (state.expect("a saga"), all)
}

#[test]
fn with_cart_checks_an_order_is_pending_and_waits_for_its_cart_before_reserving() {
    let (saga, fx) = run_with(&CART_TIMEOUTS, vec![place()]);
    assert_eq!(saga.step, Step::AwaitingCart);
    assert_eq!(decisions(&fx), vec![(OrderDecisionStatus::Pending, None)]);
    assert!(fx.contains(&Effect::CheckCart));
    assert!(
        inventory(&fx).is_empty(),
        "nothing is reserved before the cart is checked"
    );
    assert_eq!(saga.deadline, Some(T0 + 3_000));

    let (saga, fx) = run_with(
        &CART_TIMEOUTS,
        vec![
            place(),
            cart_ok(),
            held("SKU-A"),
            held("SKU-B"),
            authorized("a"),
        ],
    );
    assert_eq!(saga.step, Step::Confirmed);
    assert_eq!(
        inventory(&fx)
            .iter()
            .filter(|(_, k)| *k == "reserve")
            .count(),
        2
    );
}

#[test]
fn a_command_without_lines_reserves_the_carts_lines() {
    let mut place = place_order(vec![]);
    place.total = eur(0);
    let (saga, fx) = run_with(
        &CART_TIMEOUTS,
        vec![
            Input::Place {
                command_id: "p".into(),
                order_id: ORDER.into(),
                place,
            },
            cart_ok(),
        ],
    );
    assert_eq!(saga.step, Step::AwaitingInventory);
    assert_eq!(saga.total, eur(2_500), "the cart's total");
    assert_eq!(
        inventory(&fx),
        vec![("SKU-A".into(), "reserve"), ("SKU-B".into(), "reserve")]
    );
}

#[test]
fn a_refused_cart_cancels_with_its_reason_and_reserves_nothing() {
    for (status, reason) in [
        (CartCheckStatus::CartNotFound, Reason::CartNotFound),
        (CartCheckStatus::CartEmpty, Reason::CartEmpty),
        (
            CartCheckStatus::CartAlreadyOrdered,
            Reason::CartAlreadyOrdered,
        ),
        (CartCheckStatus::CurrencyMismatch, Reason::CurrencyMismatch),
    ] {
        let (saga, fx) = run_with(
            &CART_TIMEOUTS,
            vec![place(), cart_answer(status, vec![], "answer")],
        );
        assert_eq!(saga.step, Step::Cancelled);
        assert_eq!(saga.reason, Some(reason));
        assert_eq!(reason.code(), status.code());
        assert!(inventory(&fx).is_empty());
        assert_eq!(
            decisions(&fx),
            vec![
                (OrderDecisionStatus::Pending, None),
                (OrderDecisionStatus::Cancelled, Some(reason))
            ]
        );
    }
}

#[test]
fn lines_that_disagree_with_the_cart_cancel_naming_the_line() {
    let (saga, fx) = run_with(
        &CART_TIMEOUTS,
        vec![
            place(),
            cart_answer(
                CartCheckStatus::Ok,
                vec![line("SKU-A", 3, 1_000), line("SKU-B", 1, 500)],
                "answer",
            ),
        ],
    );
    assert_eq!(saga.step, Step::Cancelled);
    assert_eq!(saga.reason, Some(Reason::CartMismatch));
    let detail = saga.detail.unwrap_or_default();
    assert!(
        detail.contains("SKU-A: quantity 2 in the order, 3 in the cart"),
        "{detail}"
    );
    assert!(inventory(&fx).is_empty());
}

#[test]
fn an_unanswered_cart_check_is_cancelled_at_its_deadline_and_a_late_answer_changes_nothing() {
    let (saga, fx) = run_with(
        &CART_TIMEOUTS,
        vec![place(), Input::DeadlinePassed, cart_ok()],
    );
    assert_eq!(saga.step, Step::Cancelled);
    assert_eq!(saga.reason, Some(Reason::CartTimeout));
    assert!(inventory(&fx).is_empty());
    let (saga, _) = run_with(&CART_TIMEOUTS, vec![place(), cancel("c"), cart_ok()]);
    assert_eq!(saga.reason, Some(Reason::CustomerCancelled));
}

// ---- [inventory].oversell = "prevent": the saga waits for the sale ----

fn sold(sku: &str) -> Input {
    reserved(sku, ReservationStatus::Sold, &format!("sold-{sku}"))
}

fn refused(sku: &str) -> Input {
    reserved(
        sku,
        ReservationStatus::SaleRefused,
        &format!("refused-{sku}"),
    )
}

#[test]
fn under_prevent_an_authorized_order_waits_for_every_sale_before_capturing_and_confirming() {
    let (saga, fx) = run_with(
        &PREVENT_TIMEOUTS,
        vec![place(), held("SKU-A"), held("SKU-B"), authorized("a")],
    );
    assert_eq!(saga.step, Step::AwaitingConfirmation);
    assert_eq!(saga.step.status(), OrderDecisionStatus::Pending);
    assert_eq!(decisions(&fx), vec![(OrderDecisionStatus::Pending, None)]);
    assert_eq!(
        inventory(&fx)
            .into_iter()
            .filter(|(_, k)| *k == "confirm")
            .count(),
        2
    );
    assert!(
        !payments(&fx).contains(&"capture"),
        "no capture before the sale"
    );
    assert_eq!(
        saga.deadline,
        Some(T0 + 5_000),
        "the confirm has a deadline"
    );

    let (saga, fx) = run_with(
        &PREVENT_TIMEOUTS,
        vec![
            place(),
            held("SKU-A"),
            held("SKU-B"),
            authorized("a"),
            sold("SKU-A"),
            reserved("SKU-B", ReservationStatus::Oversold, "oversold-b"),
        ],
    );
    assert_eq!(saga.step, Step::Confirmed);
    assert_eq!(
        decisions(&fx),
        vec![
            (OrderDecisionStatus::Pending, None),
            (OrderDecisionStatus::Confirmed, None)
        ]
    );
    assert_eq!(
        payments(&fx)
            .into_iter()
            .filter(|p| *p == "capture")
            .count(),
        1
    );
    assert!(
        saga.line_states
            .values()
            .all(|l| *l == LineState::Confirmed)
    );
}

#[test]
fn under_prevent_a_refused_sale_cancels_voids_the_payment_and_gives_back_what_was_sold() {
    let (saga, fx) = run_with(
        &PREVENT_TIMEOUTS,
        vec![
            place(),
            held("SKU-A"),
            held("SKU-B"),
            authorized("a"),
            sold("SKU-A"),
            refused("SKU-B"),
        ],
    );
    assert_eq!(saga.step, Step::Cancelled);
    assert_eq!(saga.reason, Some(Reason::OversellPrevented));
    assert_eq!(Reason::OversellPrevented.code(), "OVERSELL_PREVENTED");
    assert!(
        saga.detail.as_deref().unwrap_or_default().contains("SKU-B"),
        "{:?}",
        saga.detail
    );
    let pay = payments(&fx);
    assert!(pay.contains(&"void"), "{pay:?}");
    assert!(!pay.contains(&"capture"), "{pay:?}");
    let releases: Vec<String> = inventory(&fx)
        .into_iter()
        .filter(|(_, k)| *k == "release")
        .map(|(sku, _)| sku)
        .collect();
    assert_eq!(
        releases,
        ["SKU-A"],
        "the sold line is given back; the refused one was never sold"
    );
    // A late answer to a cancelled order changes nothing.
    let (after, more) = run_with(
        &PREVENT_TIMEOUTS,
        vec![
            place(),
            held("SKU-A"),
            held("SKU-B"),
            authorized("a"),
            refused("SKU-B"),
            sold("SKU-A"),
        ],
    );
    assert_eq!(after.step, Step::Cancelled);
    assert_eq!(decisions(&more).len(), 2);
}

#[test]
fn under_prevent_an_unanswered_confirm_cancels_at_its_deadline_and_voids() {
    let (saga, fx) = run_with(
        &PREVENT_TIMEOUTS,
        vec![
            place(),
            held("SKU-A"),
            held("SKU-B"),
            authorized("a"),
            sold("SKU-A"),
            Input::DeadlinePassed,
        ],
    );
    assert_eq!(saga.step, Step::Cancelled);
    assert_eq!(saga.reason, Some(Reason::InventoryTimeout));
    assert!(
        saga.detail.as_deref().unwrap_or_default().contains("SKU-B"),
        "{:?}",
        saga.detail
    );
    assert!(payments(&fx).contains(&"void"));
}

#[test]
fn under_allow_the_order_confirms_at_the_authorization_and_confirm_answers_change_nothing() {
    let (saga, fx) = run_with(
        &TIMEOUTS,
        vec![
            place(),
            held("SKU-A"),
            held("SKU-B"),
            authorized("a"),
            reserved("SKU-A", ReservationStatus::Oversold, "oversold-a"),
            sold("SKU-B"),
        ],
    );
    assert_eq!(saga.step, Step::Confirmed);
    assert_eq!(decisions(&fx).len(), 2);
    assert_eq!(payments(&fx).iter().filter(|p| **p == "capture").count(), 1);
    assert!(!payments(&fx).contains(&"void"));
}

// ---- the property model ----

/// `input` as the service that answers the saga's command number `n` writes it: caused by
/// `<order id>/c<n>` (the saga's command ids).
fn answering(mut input: Input, n: u32) -> Input {
    let causation = match &mut input {
        Input::Reserved(e) => &mut e.causation_id,
        Input::Released(e) => &mut e.causation_id,
        Input::Authorized(e) => &mut e.causation_id,
        Input::PaymentFailed(e) => &mut e.causation_id,
        Input::CartChecked(e) => &mut e.causation_id,
        other => panic!("{other:?} is not a reply"),
    };
    *causation = format!("{ORDER}/c{n}");
    input
}

fn expired_hold(sku: &str) -> Input {
    Input::Released(InventoryReleased {
        event_id: format!("expired-{sku}"),
        sku: sku.into(),
        occurred_at: T0,
        causation_id: format!("expiry:{sku}/{ORDER}"),
        correlation_id: ORDER.into(),
        order_id: ORDER.into(),
        quantity: 1,
        reason: ReleaseReason::HoldExpired,
        warehouse: None,
        held: None,
        warehouse_held: None,
        held_version: None,
    })
}

#[test]
fn a_reply_to_a_command_not_sent_yet_is_early_and_changes_nothing() {
    let (saga, _) = run(vec![place()]);
    assert_eq!(saga.commands_issued, 2, "one reserve per line");
    for early in [
        answering(authorized("a-1"), 4),
        answering(failed(PaymentFailureReason::Declined), 3),
        expired_hold("SKU-A"),
    ] {
        let outcome =
            decide(Some(saga.clone()), early.clone(), ORDER, T0, &TIMEOUTS).expect("valid");
        assert_eq!(outcome.ignored, Some(Ignored::Early), "{early:?}");
        assert_eq!(
            outcome.saga.as_ref(),
            Some(&saga),
            "nothing changes, not even seen ids"
        );
        assert!(outcome.effects.is_empty());
    }
    // Once the command is sent, the same reply applies: the authorization confirms.
    let (saga, _) = run(vec![
        place(),
        answering(held("SKU-A"), 1),
        answering(held("SKU-B"), 2),
    ]);
    assert_eq!(saga.commands_issued, 4);
    let outcome = decide(
        Some(saga),
        answering(authorized("a-1"), 4),
        ORDER,
        T0,
        &TIMEOUTS,
    )
    .expect("valid");
    assert_eq!(outcome.ignored, None);
    assert_eq!(outcome.saga.expect("a saga").step, Step::Confirmed);
}

#[test]
fn a_reply_keyed_by_another_order_is_refused_and_changes_nothing() {
    // Applied before: a reply for order-2 keyed (and so routed) as order-1 held order-1's line.
    let (saga, _) = run(vec![place()]);
    let Input::Reserved(mut reply) = answering(held("SKU-A"), 1) else {
        unreachable!()
    };
    reply.order_id = "order-2".into();
    let refused = decide(Some(saga), Input::Reserved(reply), ORDER, T0, &TIMEOUTS);
    let Err(Refusal::Key(problem)) = refused else {
        panic!("not refused: {refused:?}");
    };
    let why = problem.to_string();
    assert!(
        why.contains("\"order-1\"") && why.contains("\"order-2\""),
        "names both: {why}"
    );
}

#[test]
fn an_authorization_that_answers_a_sent_command_after_a_cancel_is_still_voided() {
    // Not early: its command went out before the cancel, so it is a late reply to compensate.
    let (saga, fx) = run(vec![
        place(),
        answering(held("SKU-A"), 1),
        answering(held("SKU-B"), 2),
        cancel("cancel-1"),
        answering(authorized("a-1"), 4),
    ]);
    assert_eq!(saga.step, Step::Cancelled);
    assert!(payments(&fx).contains(&"void"), "{fx:?}");
}

#[test]
fn only_replies_to_the_orders_own_saga_commands_answer_its_saga() {
    let answers = |causation: &str| {
        let Input::Reserved(mut e) = held("SKU-A") else {
            unreachable!()
        };
        e.causation_id = causation.into();
        Input::Reserved(e).answers_the_saga_of(ORDER)
    };
    assert!(answers("order-1/c4"));
    for other in [
        "order-10/c4",
        "order-1/c",
        "order-1/c4x",
        "order-1c4",
        "c",
        "",
        "order-1/c-1",
    ] {
        assert!(!answers(other), "{other:?}");
    }
    assert!(expired_hold("SKU-A").answers_the_saga_of(ORDER));
    assert!(!expired_hold("SKU-A").answers_the_saga_of("der-1"));
    // A payment outcome settled by a PSP callback is caused by the callback: it is the saga's
    // by its payment id.
    assert!(authorized("a-1").answers_the_saga_of(ORDER));
    let Input::Authorized(mut other_payment) = authorized("a-1") else {
        unreachable!()
    };
    other_payment.payment_id = "pay-somebody-else".into();
    assert!(!Input::Authorized(other_payment).answers_the_saga_of(ORDER));
    assert!(!place().answers_the_saga_of(ORDER));
}

fn any_input() -> impl Strategy<Value = Input> {
    prop_oneof![
        Just(place()),
        Just(held("SKU-A")),
        Just(held("SKU-B")),
        Just(sold("SKU-A")),
        Just(sold("SKU-B")),
        Just(refused("SKU-B")),
        Just(reserved("SKU-A", ReservationStatus::Oversold, "oversold-a")),
        Just(reserved("SKU-A", ReservationStatus::Shortage, "short-a")),
        Just(reserved("SKU-B", ReservationStatus::Held, "held-b-again")),
        Just(authorized("auth-1")),
        Just(authorized("auth-2")),
        Just(failed(PaymentFailureReason::Declined)),
        Just(cancel("cancel-1")),
        Just(Input::DeadlinePassed),
        Just(cart_ok()),
        Just(cart_answer(
            CartCheckStatus::CartNotFound,
            vec![],
            "not-found"
        )),
        Just(cart_answer(
            CartCheckStatus::Ok,
            vec![line("SKU-A", 1, 1_000), line("SKU-B", 1, 500)],
            "cart-differs",
        )),
        Just(Input::Released(InventoryReleased {
            event_id: "expired-a".into(),
            sku: "SKU-A".into(),
            occurred_at: T0,
            causation_id: "x".into(),
            correlation_id: ORDER.into(),
            order_id: ORDER.into(),
            quantity: 2,
            reason: ReleaseReason::HoldExpired,
            warehouse: None,
            held: None,
            warehouse_held: None,
            held_version: None,
        })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Whatever arrives, in whatever order, duplicated or not: terminal steps never change,
    /// decisions only move forward, and once the deadlines have passed every hold and every
    /// authorization has been confirmed or compensated.
    #[test]
    fn no_input_sequence_leaves_a_hold_or_an_authorization_stranded(
        inputs in proptest::collection::vec(any_input(), 0..14),
        cart_check in any::<bool>(),
        prevent in any::<bool>(),
    ) {
        let timeouts = Timeouts {
            wait_for_sale: prevent,
            ..if cart_check { CART_TIMEOUTS } else { TIMEOUTS }
        };
        let mut state = decide(None, place(), ORDER, T0, &timeouts).expect("starts").saga;
        let mut effects = Vec::new();
        let mut held_skus = std::collections::BTreeSet::new();
        let mut authorizations = 0;
        let mut last_sequence = 1;
        for (i, input) in inputs.into_iter().chain([Input::DeadlinePassed, Input::DeadlinePassed, Input::DeadlinePassed]).enumerate() {
            // Inventory only answers reserve commands: no reply before the line was asked for.
            if let Input::Reserved(r) = &input
                && !state.as_ref().is_some_and(|s| s.line_states.contains_key(&r.sku)) {
                continue;
            }
            if let Input::Reserved(r) = &input && r.status == ReservationStatus::Held {
                held_skus.insert(r.sku.clone());
            }
            let is_authorization = matches!(input, Input::Authorized(_));
            let before = state.clone().expect("a saga");
            match decide(state.clone(), input, ORDER, T0 + i as i64, &timeouts) {
                Ok(outcome) => {
                    // One read before the saga asked for the payment is left for later
                    // (`Ignored::Early`: the topology keeps it), not applied.
                    if is_authorization && outcome.ignored.is_none() { authorizations += 1; }
                    let after = outcome.saga.clone().expect("a saga stays");
                    if before.step.is_terminal() {
                        prop_assert_eq!(before.step, after.step, "a terminal step changed");
                    }
                    for e in &outcome.effects {
                        if let Effect::Decide { sequence, .. } = e {
                            prop_assert!(*sequence > last_sequence);
                            last_sequence = *sequence;
                        }
                    }
                    effects.extend(outcome.effects);
                    state = outcome.saga;
                }
                Err(Refusal::NotCancellable { .. }) => prop_assert_eq!(before.step, Step::Confirmed),
                Err(e) => prop_assert!(false, "unexpected refusal {e}"),
            }
        }
        let saga = state.expect("a saga");
        prop_assert!(saga.step.is_terminal(), "still waiting after every deadline: {:?}", saga.step);
        let inv = inventory(&effects);
        for sku in &held_skus {
            // Released or confirmed by the saga, or lapsed (inventory released it itself).
            let settled = inv.iter().any(|(s, k)| s == sku && (*k == "release" || *k == "confirm"))
                || saga.line_states.get(sku) == Some(&LineState::Expired);
            prop_assert!(settled, "{sku} was held and never released or confirmed");
        }
        let pay = payments(&effects);
        if authorizations > 0 && pay.contains(&"authorize") {
            prop_assert!(pay.contains(&"capture") || pay.contains(&"void"),
                "an authorization was neither captured nor voided: {pay:?}");
        }
        if saga.step == Step::Confirmed {
            prop_assert!(saga.line_states.values().all(|s| *s == LineState::Confirmed));
        }
    }
}

// ---- the topology through the test driver ----

mod driver {
    use keel_topology::serde::{Json, Utf8};
    use keel_topology::{TestDriver, dlq_headers};

    use super::*;
    use crate::format::Format;
    use crate::inventory::OversellPolicy;
    use crate::saga::SagaConfig;
    use crate::topics;

    fn driver_with_metrics() -> (TestDriver, crate::saga::SagaMetrics) {
        driver_under(OversellPolicy::Allow)
    }

    /// A saga topology as `keel run` builds it under `[inventory].oversell = oversell`.
    fn driver_under(oversell: OversellPolicy) -> (TestDriver, crate::saga::SagaMetrics) {
        let config = SagaConfig {
            inventory_timeout_ms: 5_000,
            payment_timeout_ms: 10_000,
            deadline_check_interval_ms: 100,
            retention_ms: 60_000,
            metrics_interval_ms: 100,
            early_reply_retention_ms: 30_000,
            oversell,
            ..SagaConfig::default()
        };
        let metrics =
            crate::saga::SagaMetrics::register(&prometheus::Registry::new()).expect("metrics");
        let topology = crate::saga::topology(
            &Format::Json,
            &crate::topics::Topics::default(),
            &config,
            metrics.clone(),
        )
        .expect("topology");
        (TestDriver::new(topology).expect("driver"), metrics)
    }

    fn driver() -> TestDriver {
        driver_with_metrics().0
    }

    fn command(body: OrderCommandBody, id: &str) -> OrderCommand {
        OrderCommand {
            command_id: id.into(),
            order_id: ORDER.into(),
            issued_at: T0,
            causation_id: "http".into(),
            correlation_id: ORDER.into(),
            command: body,
        }
    }

    fn pipe<T: keel_avro::Record>(d: &mut TestDriver, topic: &str, value: &T) {
        d.pipe(
            topic,
            &ORDER.to_owned(),
            value,
            T0,
            &Utf8,
            &Json::<T>::new(),
        )
        .expect("processed");
    }

    fn out<T: keel_avro::Record>(d: &mut TestDriver, topic: &str) -> Vec<(String, T)> {
        d.read_output_as(topic, &Utf8, &Json::<T>::new())
            .expect("decodes")
    }

    fn reply(event: Input) -> InventoryReserved {
        match event {
            Input::Reserved(r) => r,
            _ => unreachable!("a reservation"),
        }
    }

    #[test]
    fn the_topology_turns_a_place_order_into_reserve_commands_and_a_pending_decision() {
        let mut d = driver();
        let Input::Place { place, .. } = place() else {
            unreachable!()
        };
        pipe(
            &mut d,
            topics::ORDER_COMMANDS,
            &command(OrderCommandBody::PlaceOrder(place), "cmd-1"),
        );

        let decisions: Vec<(String, OrderDecision)> = out(&mut d, topics::ORDER_DECISIONS);
        assert_eq!(decisions.len(), 1);
        let (key, pending) = &decisions[0];
        assert_eq!(key, ORDER);
        assert_eq!(pending.status, OrderDecisionStatus::Pending);
        assert_eq!(pending.decision_id, format!("{ORDER}/1"));
        assert_eq!(pending.source_topic, topics::ORDER_COMMANDS);
        assert_eq!((pending.source_partition, pending.source_offset), (0, 0));

        let reserves: Vec<(String, InventoryCommand)> = out(&mut d, topics::INVENTORY_COMMANDS);
        let keys: Vec<&str> = reserves.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["SKU-A", "SKU-B"],
            "keyed by SKU, so each lands in its SKU's task"
        );
        assert!(
            reserves
                .iter()
                .all(|(_, c)| c.correlation_id == ORDER && c.causation_id == "cmd-1")
        );

        pipe(&mut d, topics::INVENTORY_RESERVED, &reply(held("SKU-A")));
        pipe(&mut d, topics::INVENTORY_RESERVED, &reply(held("SKU-B")));
        let pay: Vec<(String, PaymentCommand)> = out(&mut d, topics::PAYMENT_COMMANDS);
        assert_eq!(pay.len(), 2);
        assert!(matches!(pay[1].1.command, PaymentCommandBody::Authorize(_)));

        let Input::Authorized(auth) = authorized("auth-1") else {
            unreachable!()
        };
        pipe(&mut d, topics::PAYMENT_AUTHORIZED, &auth);
        let decisions: Vec<(String, OrderDecision)> = out(&mut d, topics::ORDER_DECISIONS);
        assert_eq!(decisions.len(), 1);
        assert_eq!(decisions[0].1.status, OrderDecisionStatus::Confirmed);
        assert_eq!(decisions[0].1.source_topic, topics::PAYMENT_AUTHORIZED);
        assert_eq!(decisions[0].1.causation_id, "auth-1");
    }

    #[test]
    fn a_durable_deadline_cancels_a_stuck_saga_even_after_a_wiped_restart() {
        let mut d = driver();
        let Input::Place { place, .. } = place() else {
            unreachable!()
        };
        pipe(
            &mut d,
            topics::ORDER_COMMANDS,
            &command(OrderCommandBody::PlaceOrder(place), "cmd-1"),
        );
        out::<OrderDecision>(&mut d, topics::ORDER_DECISIONS);
        d.restart(true).expect("restored from the changelogs");
        d.advance_wall_clock(std::time::Duration::from_millis(4_000))
            .expect("ticks");
        assert!(
            out::<OrderDecision>(&mut d, topics::ORDER_DECISIONS).is_empty(),
            "not yet"
        );
        d.advance_wall_clock(std::time::Duration::from_millis(1_500))
            .expect("ticks");
        let decisions: Vec<(String, OrderDecision)> = out(&mut d, topics::ORDER_DECISIONS);
        assert_eq!(decisions.len(), 1, "{decisions:?}");
        assert_eq!(decisions[0].1.status, OrderDecisionStatus::Cancelled);
        assert_eq!(decisions[0].1.reason.as_deref(), Some("INVENTORY_TIMEOUT"));
        assert_eq!(
            decisions[0].1.source_offset, -1,
            "a timer, not a record, decided it"
        );
    }

    #[test]
    fn a_cancel_for_an_unknown_order_is_dead_lettered_with_why() {
        let mut d = driver();
        pipe(
            &mut d,
            topics::ORDER_COMMANDS,
            &command(
                OrderCommandBody::CancelOrder(CancelOrder { reason: "x".into() }),
                "c-1",
            ),
        );
        let dead = d.dead_letters();
        assert_eq!(dead.len(), 1);
        let why = dead[0]
            .headers
            .get_str(dlq_headers::ERROR)
            .unwrap_or_default();
        assert!(why.contains("no saga for order"), "{why}");
        assert!(out::<OrderDecision>(&mut d, topics::ORDER_DECISIONS).is_empty());
    }

    /// Events on the shared topics for orders the saga does not orchestrate: a reservation made
    /// through `POST /inventory/reserve`, a payment opened through `POST /payments`, or a late
    /// reply after the saga's retention. Valid records, not poison.
    fn foreign_events() -> Vec<Input> {
        vec![
            held("SKU-A"),
            reserved("SKU-B", ReservationStatus::Shortage, "short-b"),
            released("SKU-A", ReleaseReason::OrderCancelled, "c"),
            // Another payment than the order's saga payment (`pay-<order id>`): the outcome
            // of the saga's own payment is the saga's, however it was settled.
            elsewhere(authorized("auth-foreign")),
            elsewhere(failed(PaymentFailureReason::Declined)),
        ]
    }

    fn elsewhere(payment: Input) -> Input {
        match payment {
            Input::Authorized(mut e) => {
                e.payment_id = "pay-elsewhere".into();
                Input::Authorized(e)
            }
            Input::PaymentFailed(mut e) => {
                e.payment_id = "pay-elsewhere".into();
                Input::PaymentFailed(e)
            }
            other => other,
        }
    }

    #[test]
    fn events_for_an_order_without_a_saga_are_ignored_not_dead_lettered() {
        let (mut d, metrics) = driver_with_metrics();
        let events = foreign_events();
        let sent = events.len();
        for event in events {
            feed(&mut d, event);
        }
        let why: Vec<String> = d
            .dead_letters()
            .iter()
            .map(|r| {
                r.headers
                    .get_str(dlq_headers::ERROR)
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        assert!(why.is_empty(), "valid events were dead-lettered: {why:?}");
        assert!(out::<OrderDecision>(&mut d, topics::ORDER_DECISIONS).is_empty());
        assert!(out::<InventoryCommand>(&mut d, topics::INVENTORY_COMMANDS).is_empty());
        assert!(out::<PaymentCommand>(&mut d, topics::PAYMENT_COMMANDS).is_empty());
        assert!(
            d.kv_get(crate::saga::state::SAGAS_STORE, ORDER.as_bytes())
                .expect("reads")
                .is_none(),
            "no saga is created for a foreign event"
        );
        let ignored: u64 = [
            topics::INVENTORY_RESERVED,
            topics::INVENTORY_RELEASED,
            topics::PAYMENT_AUTHORIZED,
            topics::PAYMENT_FAILED,
        ]
        .iter()
        .map(|t| metrics.ignored.with_label_values(&[*t, "no_saga"]).get())
        .sum();
        assert_eq!(ignored, sent as u64, "every ignored event is counted");
        assert_eq!(
            metrics
                .ignored
                .with_label_values(&[topics::INVENTORY_RESERVED, "no_saga"])
                .get(),
            2
        );

        // The order placed afterwards under the same id is a fresh saga: the foreign events
        // left nothing behind that it would mistake for its own replies.
        let Input::Place { place, .. } = place() else {
            unreachable!()
        };
        pipe(
            &mut d,
            topics::ORDER_COMMANDS,
            &command(OrderCommandBody::PlaceOrder(place), "cmd-1"),
        );
        let decisions: Vec<(String, OrderDecision)> = out(&mut d, topics::ORDER_DECISIONS);
        assert_eq!(decisions.len(), 1);
        assert_eq!(decisions[0].1.status, OrderDecisionStatus::Pending);
        pipe(&mut d, topics::INVENTORY_RESERVED, &reply(held("SKU-A")));
        pipe(&mut d, topics::INVENTORY_RESERVED, &reply(held("SKU-B")));
        let payments = out::<PaymentCommand>(&mut d, topics::PAYMENT_COMMANDS);
        assert_eq!(
            payments.len(),
            2,
            "its own holds are not taken for duplicates"
        );
    }

    #[test]
    fn a_late_reply_after_the_retention_deleted_the_saga_is_ignored() {
        use std::time::Duration;
        let (mut d, metrics) = driver_with_metrics();
        d.advance_wall_clock(Duration::from_millis(100))
            .expect("arms the punctuators");
        for input in [place(), held("SKU-A"), held("SKU-B"), authorized("auth-1")] {
            feed(&mut d, input);
        }
        d.advance_wall_clock(Duration::from_millis(61_000))
            .expect("the retention passes");
        assert!(
            d.kv_get(crate::saga::state::SAGAS_STORE, ORDER.as_bytes())
                .expect("reads")
                .is_none()
        );
        out::<OrderDecision>(&mut d, topics::ORDER_DECISIONS);
        out::<PaymentCommand>(&mut d, topics::PAYMENT_COMMANDS);
        out::<InventoryCommand>(&mut d, topics::INVENTORY_COMMANDS);
        feed(&mut d, authorized("auth-late"));
        assert!(d.dead_letters().is_empty());
        assert!(out::<OrderDecision>(&mut d, topics::ORDER_DECISIONS).is_empty());
        assert!(out::<PaymentCommand>(&mut d, topics::PAYMENT_COMMANDS).is_empty());
        assert_eq!(
            metrics
                .ignored
                .with_label_values(&[topics::PAYMENT_AUTHORIZED, "no_saga"])
                .get(),
            1
        );
    }

    fn reasons(d: &mut TestDriver) -> Vec<String> {
        d.dead_letters()
            .iter()
            .map(|r| {
                r.headers
                    .get_str(dlq_headers::ERROR)
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }

    /// A place-order command for `order_id` with its own command id and cart, as a producer
    /// writes it.
    fn place_command(command_id: &str, order_id: &str, cart_id: &str) -> OrderCommand {
        let Input::Place { mut place, .. } = place() else {
            unreachable!()
        };
        place.cart_id = cart_id.into();
        OrderCommand {
            order_id: order_id.into(),
            correlation_id: order_id.into(),
            ..command(OrderCommandBody::PlaceOrder(place), command_id)
        }
    }

    fn pipe_keyed(d: &mut TestDriver, key: &str, command: &OrderCommand) {
        d.pipe(
            topics::ORDER_COMMANDS,
            &key.to_owned(),
            command,
            T0,
            &Utf8,
            &Json::<OrderCommand>::new(),
        )
        .expect("processed");
    }

    #[test]
    fn a_place_order_keyed_empty_or_other_than_its_order_id_is_dead_lettered_and_changes_nothing() {
        let mut d = driver();
        for (key, inside) in [("mmkey-x", "mm-x"), ("", "ek-x"), ("", "ek-y")] {
            pipe_keyed(
                &mut d,
                key,
                &place_command(&format!("cmd-{inside}"), inside, "cart-1"),
            );
            let why = reasons(&mut d);
            assert_eq!(why.len(), 1, "{key:?}/{inside:?}: {why:?}");
            assert!(
                why[0].contains(&format!("{key:?}")) && why[0].contains(&format!("{inside:?}")),
                "the reason names the key and the order id: {}",
                why[0]
            );
            for id in [key, inside] {
                assert!(
                    d.kv_get(crate::saga::state::SAGAS_STORE, id.as_bytes())
                        .expect("reads")
                        .is_none(),
                    "no saga under {id:?}"
                );
            }
        }
        assert!(out::<OrderDecision>(&mut d, topics::ORDER_DECISIONS).is_empty());
        assert!(out::<InventoryCommand>(&mut d, topics::INVENTORY_COMMANDS).is_empty());
        assert!(out::<PaymentCommand>(&mut d, topics::PAYMENT_COMMANDS).is_empty());
    }

    #[test]
    fn a_second_place_order_for_an_order_id_is_dead_lettered_and_a_duplicate_is_not() {
        let mut d = driver();
        let first = place_command("cmd-1", ORDER, "cart-1");
        pipe_keyed(&mut d, ORDER, &first);
        assert_eq!(
            out::<OrderDecision>(&mut d, topics::ORDER_DECISIONS).len(),
            1
        );
        out::<InventoryCommand>(&mut d, topics::INVENTORY_COMMANDS);
        let stored = d
            .kv_get(crate::saga::state::SAGAS_STORE, ORDER.as_bytes())
            .expect("reads");

        // The same command again (a producer's retry): nothing, no dead letter.
        pipe_keyed(&mut d, ORDER, &first);
        assert!(reasons(&mut d).is_empty());

        // Another command for the order id, with another cart: dead-lettered with why.
        pipe_keyed(&mut d, ORDER, &place_command("cmd-2", ORDER, "cart-2"));
        let why = reasons(&mut d);
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(
            why[0].contains("\"cmd-2\"") && why[0].contains("\"cart-2\""),
            "{}",
            why[0]
        );
        assert!(out::<OrderDecision>(&mut d, topics::ORDER_DECISIONS).is_empty());
        assert!(out::<InventoryCommand>(&mut d, topics::INVENTORY_COMMANDS).is_empty());
        assert_eq!(
            d.kv_get(crate::saga::state::SAGAS_STORE, ORDER.as_bytes())
                .expect("reads"),
            stored,
            "the saga is as it was"
        );
    }

    #[test]
    fn a_command_on_a_partition_its_key_does_not_hash_to_is_dead_lettered_naming_the_right_one() {
        const PARTITIONS: i32 = 4;
        let metrics =
            crate::saga::SagaMetrics::register(&prometheus::Registry::new()).expect("metrics");
        let names = crate::topics::Topics::default();
        let topology =
            crate::saga::topology(&Format::Json, &names, &SagaConfig::default(), metrics)
                .expect("topology");
        let config = keel_topology::DriverConfig {
            partitions: names
                .saga_inputs()
                .into_iter()
                .map(|t| (t, PARTITIONS))
                .collect(),
            ..keel_topology::DriverConfig::default()
        };
        let mut d = TestDriver::with_config(topology, config).expect("driver");
        let key = "order-crc32";
        let pipe_on = |d: &mut TestDriver, topic: &str, partition: i32, bytes: &[u8]| {
            d.pipe_to_partition(
                topic,
                partition,
                Some(key.as_bytes()),
                Some(bytes),
                T0,
                keel_topology::Headers::default(),
            )
            .expect("processed");
        };
        let right = keel_topology::default_partition(key.as_bytes(), PARTITIONS);
        let wrong = (right + 1) % PARTITIONS;
        let bytes = serde_json::to_vec(&place_command("cmd-1", key, "cart-1")).expect("json");
        pipe_on(&mut d, topics::ORDER_COMMANDS, wrong, &bytes);
        let why = reasons(&mut d);
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(
            why[0].contains(&format!("partition {right}")) && why[0].contains("murmur2"),
            "names the key's partition and the partitioner: {}",
            why[0]
        );
        assert!(out::<OrderDecision>(&mut d, topics::ORDER_DECISIONS).is_empty());
        assert!(
            d.kv_get(crate::saga::state::SAGAS_STORE, key.as_bytes())
                .expect("reads")
                .is_none()
        );

        // The same command where murmur2 puts it: placed.
        pipe_on(&mut d, topics::ORDER_COMMANDS, right, &bytes);
        assert!(reasons(&mut d).is_empty());
        let decisions: Vec<(String, OrderDecision)> = out(&mut d, topics::ORDER_DECISIONS);
        assert_eq!(decisions.len(), 1);
        assert_eq!(decisions[0].1.status, OrderDecisionStatus::Pending);
        assert_eq!(decisions[0].1.source_partition, right);

        // A reply for it on another partition (a producer with another partitioner): the
        // saga's task there has no saga for it; dead-lettered, naming the right partition.
        let Input::Reserved(mut reply) = held("SKU-A") else {
            unreachable!()
        };
        reply.order_id = key.into();
        reply.causation_id = format!("{key}/c1");
        let bytes = serde_json::to_vec(&reply).expect("json");
        pipe_on(&mut d, topics::INVENTORY_RESERVED, wrong, &bytes);
        let why = reasons(&mut d);
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(why[0].contains(&format!("partition {right}")), "{}", why[0]);
    }

    #[test]
    fn an_undecodable_reply_is_dead_lettered_and_the_next_record_is_processed() {
        let mut d = driver();
        d.pipe_raw(
            topics::PAYMENT_AUTHORIZED,
            Some(ORDER.as_bytes()),
            Some(b"{not json"),
            T0,
        )
        .expect("dead-lettered");
        assert_eq!(d.dead_letters().len(), 1);
        let Input::Place { place, .. } = place() else {
            unreachable!()
        };
        pipe(
            &mut d,
            topics::ORDER_COMMANDS,
            &command(OrderCommandBody::PlaceOrder(place), "cmd-1"),
        );
        assert_eq!(
            out::<OrderDecision>(&mut d, topics::ORDER_DECISIONS).len(),
            1
        );
    }

    #[test]
    fn open_sagas_are_gauged_by_step_and_finished_ones_are_forgotten_after_their_retention() {
        use std::time::Duration;
        let (mut d, metrics) = driver_with_metrics();
        let Input::Place { place, .. } = place() else {
            unreachable!()
        };
        pipe(
            &mut d,
            topics::ORDER_COMMANDS,
            &command(OrderCommandBody::PlaceOrder(place), "cmd-1"),
        );
        d.advance_wall_clock(Duration::from_millis(100))
            .expect("arms the punctuators");
        d.advance_wall_clock(Duration::from_millis(200))
            .expect("ticks");
        let open = |step: &str| metrics.open.with_label_values(&[step, "0_0"]).get();
        assert_eq!(open("awaiting_inventory"), 1.0);
        assert!(
            metrics
                .oldest
                .with_label_values(&["awaiting_inventory", "0_0"])
                .get()
                >= 0.2
        );

        pipe(&mut d, topics::INVENTORY_RESERVED, &reply(held("SKU-A")));
        pipe(&mut d, topics::INVENTORY_RESERVED, &reply(held("SKU-B")));
        let Input::Authorized(auth) = authorized("auth-1") else {
            unreachable!()
        };
        pipe(&mut d, topics::PAYMENT_AUTHORIZED, &auth);
        d.advance_wall_clock(Duration::from_millis(200))
            .expect("ticks");
        assert_eq!(open("awaiting_inventory"), 0.0);
        assert_eq!(open("awaiting_payment"), 0.0);
        assert_eq!(
            metrics
                .duration
                .with_label_values(&["confirmed"])
                .get_sample_count(),
            1
        );
        assert_eq!(
            metrics
                .decisions
                .with_label_values(&["CONFIRMED", "none"])
                .get(),
            1
        );
        assert!(
            d.kv_get(crate::saga::state::SAGAS_STORE, ORDER.as_bytes())
                .expect("reads")
                .is_some()
        );

        // Within the retention a duplicate is still recognised; after it the saga is gone.
        d.advance_wall_clock(Duration::from_millis(61_000))
            .expect("ticks");
        assert!(
            d.kv_get(crate::saga::state::SAGAS_STORE, ORDER.as_bytes())
                .expect("reads")
                .is_none(),
            "a finished saga is deleted after its retention"
        );
        assert!(
            out::<OrderDecision>(&mut d, topics::ORDER_DECISIONS).len() == 2,
            "no decision from the retention timer"
        );
    }

    /// Pipes `input` to the topic it comes from, as the runtime would read it.
    fn feed(d: &mut TestDriver, input: Input) {
        match input {
            Input::Place {
                command_id, place, ..
            } => pipe(
                d,
                topics::ORDER_COMMANDS,
                &command(OrderCommandBody::PlaceOrder(place), &command_id),
            ),
            Input::Cancel {
                command_id, reason, ..
            } => pipe(
                d,
                topics::ORDER_COMMANDS,
                &command(
                    OrderCommandBody::CancelOrder(CancelOrder { reason }),
                    &command_id,
                ),
            ),
            Input::Reserved(e) => pipe(d, topics::INVENTORY_RESERVED, &e),
            Input::Released(e) => pipe(d, topics::INVENTORY_RELEASED, &e),
            Input::Authorized(e) => pipe(d, topics::PAYMENT_AUTHORIZED, &e),
            Input::PaymentFailed(e) => pipe(d, topics::PAYMENT_FAILED, &e),
            other => panic!("{other:?} does not come from a topic"),
        }
    }

    /// Runs `inputs` through a fresh topology; returns the decisions (status, reason) and the
    /// kinds of the inventory and payment commands it wrote.
    fn drive(inputs: Vec<Input>) -> (Vec<(OrderDecisionStatus, Option<String>)>, Vec<String>) {
        drive_under(OversellPolicy::Allow, inputs)
    }

    fn drive_under(
        oversell: OversellPolicy,
        inputs: Vec<Input>,
    ) -> (Vec<(OrderDecisionStatus, Option<String>)>, Vec<String>) {
        let mut d = driver_under(oversell).0;
        for input in inputs {
            feed(&mut d, input);
        }
        let decisions = out::<OrderDecision>(&mut d, topics::ORDER_DECISIONS)
            .into_iter()
            .map(|(_, x)| (x.status, x.reason))
            .collect();
        let mut commands: Vec<String> = out::<InventoryCommand>(&mut d, topics::INVENTORY_COMMANDS)
            .into_iter()
            .map(|(sku, c)| {
                format!(
                    "{}:{sku}",
                    match c.command {
                        InventoryCommandBody::Reserve(_) => "reserve",
                        InventoryCommandBody::Release(_) => "release",
                        InventoryCommandBody::Confirm(_) => "confirm",
                        InventoryCommandBody::Adjust(_) => "adjust",
                    }
                )
            })
            .collect();
        commands.extend(
            out::<PaymentCommand>(&mut d, topics::PAYMENT_COMMANDS)
                .into_iter()
                .map(|(_, c)| {
                    match c.command {
                        PaymentCommandBody::CreateIntent(_) => "intent",
                        PaymentCommandBody::Authorize(_) => "authorize",
                        PaymentCommandBody::Capture(_) => "capture",
                        PaymentCommandBody::Void(_) => "void",
                        PaymentCommandBody::Refund(_) => "refund",
                        PaymentCommandBody::PspCallback(_) => "callback",
                    }
                    .to_owned()
                }),
        );
        assert!(
            d.dead_letters().is_empty(),
            "no input of a path is dead-lettered"
        );
        (decisions, commands)
    }

    fn cancelled(reason: &str) -> (OrderDecisionStatus, Option<String>) {
        (OrderDecisionStatus::Cancelled, Some(reason.to_owned()))
    }

    const PENDING: (OrderDecisionStatus, Option<String>) = (OrderDecisionStatus::Pending, None);

    #[test]
    fn through_the_topology_a_shortage_cancels_and_releases_what_was_held() {
        let (decisions, commands) = drive(vec![
            place(),
            held("SKU-A"),
            reserved("SKU-B", ReservationStatus::Shortage, "short-b"),
        ]);
        assert_eq!(decisions, vec![PENDING, cancelled("INSUFFICIENT_STOCK")]);
        assert!(
            commands.contains(&"release:SKU-A".to_owned()),
            "{commands:?}"
        );
        assert!(
            !commands.contains(&"authorize".to_owned()),
            "no payment: {commands:?}"
        );
    }

    #[test]
    fn through_the_topology_a_decline_and_a_psp_timeout_cancel_with_their_reasons() {
        for (reason, code) in [
            (PaymentFailureReason::Declined, "PAYMENT_DECLINED"),
            (PaymentFailureReason::Timeout, "PSP_TIMEOUT"),
        ] {
            let (decisions, commands) =
                drive(vec![place(), held("SKU-A"), held("SKU-B"), failed(reason)]);
            assert_eq!(decisions, vec![PENDING, cancelled(code)]);
            let releases = commands
                .iter()
                .filter(|c| c.starts_with("release:"))
                .count();
            assert_eq!(releases, 2, "{commands:?}");
        }
    }

    #[test]
    fn through_the_topology_a_cancel_at_each_step_compensates_what_that_step_holds() {
        // Awaiting inventory: the requested lines are released; nothing was paid.
        let (decisions, commands) = drive(vec![place(), cancel("c-1")]);
        assert_eq!(decisions, vec![PENDING, cancelled("CUSTOMER_CANCELLED")]);
        assert!(
            commands.contains(&"release:SKU-A".to_owned()),
            "{commands:?}"
        );
        assert!(!commands.contains(&"void".to_owned()), "{commands:?}");
        // Awaiting the payment: holds released and the authorization voided.
        let (decisions, commands) =
            drive(vec![place(), held("SKU-A"), held("SKU-B"), cancel("c-1")]);
        assert_eq!(decisions, vec![PENDING, cancelled("CUSTOMER_CANCELLED")]);
        assert!(commands.contains(&"void".to_owned()), "{commands:?}");
        // Confirmed: the cancel is refused (dead-lettered) and nothing is compensated.
        let mut d = driver();
        for input in [
            place(),
            held("SKU-A"),
            held("SKU-B"),
            authorized("a-1"),
            cancel("c-1"),
        ] {
            feed(&mut d, input);
        }
        assert_eq!(
            d.dead_letters().len(),
            1,
            "a confirmed order cannot be cancelled"
        );
        let decisions: Vec<OrderDecisionStatus> =
            out::<OrderDecision>(&mut d, topics::ORDER_DECISIONS)
                .into_iter()
                .map(|(_, x)| x.status)
                .collect();
        assert_eq!(
            decisions,
            vec![OrderDecisionStatus::Pending, OrderDecisionStatus::Confirmed]
        );
    }

    #[test]
    fn through_the_topology_duplicated_and_reordered_replies_confirm_once() {
        let (decisions, commands) = drive(vec![
            place(),
            place(),
            held("SKU-B"),
            held("SKU-B"),
            held("SKU-A"),
            authorized("a-1"),
            authorized("a-1"),
            held("SKU-A"),
        ]);
        assert_eq!(
            decisions,
            vec![PENDING, (OrderDecisionStatus::Confirmed, None)],
            "one decision per step"
        );
        let count = |kind: &str| commands.iter().filter(|c| c.as_str() == kind).count();
        assert_eq!(
            (count("authorize"), count("capture")),
            (1, 1),
            "{commands:?}"
        );
        assert_eq!(
            count("reserve:SKU-A") + count("reserve:SKU-B"),
            2,
            "{commands:?}"
        );
    }

    /// The oversell sequence (issue 10/13): the hold lapsed while the payment was under way and
    /// inventory answers the confirm with OVERSOLD (allow) or SALE_REFUSED (prevent).
    fn oversell_sequence(answer: ReservationStatus) -> Vec<Input> {
        let expired = Input::Released(InventoryReleased {
            event_id: "expired-a".into(),
            sku: "SKU-A".into(),
            occurred_at: T0,
            causation_id: "expiry:SKU-A/order-1".into(),
            correlation_id: ORDER.into(),
            order_id: ORDER.into(),
            quantity: 2,
            reason: ReleaseReason::HoldExpired,
            warehouse: None,
            held: None,
            warehouse_held: None,
            held_version: None,
        });
        vec![
            place(),
            held("SKU-A"),
            held("SKU-B"),
            expired,
            authorized("a-1"),
            sold("SKU-B"),
            reserved("SKU-A", answer, "answer-a"),
        ]
    }

    #[test]
    fn through_the_topology_under_allow_a_lapsed_hold_confirms_at_the_authorization() {
        let (decisions, commands) = drive_under(
            OversellPolicy::Allow,
            oversell_sequence(ReservationStatus::Oversold),
        );
        assert_eq!(
            decisions,
            vec![PENDING, (OrderDecisionStatus::Confirmed, None)]
        );
        let count = |kind: &str| commands.iter().filter(|c| c.as_str() == kind).count();
        assert_eq!(
            count("confirm:SKU-A") + count("confirm:SKU-B"),
            2,
            "{commands:?}"
        );
        assert_eq!((count("capture"), count("void")), (1, 0), "{commands:?}");
    }

    #[test]
    fn through_the_topology_under_prevent_a_refused_sale_cancels_and_voids_instead() {
        let (decisions, commands) = drive_under(
            OversellPolicy::Prevent,
            oversell_sequence(ReservationStatus::SaleRefused),
        );
        assert_eq!(decisions, vec![PENDING, cancelled("OVERSELL_PREVENTED")]);
        let count = |kind: &str| commands.iter().filter(|c| c.as_str() == kind).count();
        assert_eq!(
            count("confirm:SKU-A") + count("confirm:SKU-B"),
            2,
            "{commands:?}"
        );
        assert_eq!((count("capture"), count("void")), (0, 1), "{commands:?}");
        assert_eq!(
            count("release:SKU-B"),
            1,
            "the line inventory sold is given back: {commands:?}"
        );
    }

    #[test]
    fn through_the_topology_under_prevent_sold_lines_confirm_and_capture_once() {
        let (decisions, commands) = drive_under(
            OversellPolicy::Prevent,
            oversell_sequence(ReservationStatus::Sold),
        );
        assert_eq!(
            decisions,
            vec![PENDING, (OrderDecisionStatus::Confirmed, None)]
        );
        let count = |kind: &str| commands.iter().filter(|c| c.as_str() == kind).count();
        assert_eq!((count("capture"), count("void")), (1, 0), "{commands:?}");
    }

    /// Each of the first run's inputs, as the services wrote them: replies caused by the
    /// saga's own commands (`<order id>/c<n>`, numbered as the saga numbers them).
    fn confirmed_run() -> Vec<Input> {
        vec![
            place(),
            answering(held("SKU-A"), 1),
            answering(held("SKU-B"), 2),
            answering(authorized("a-1"), 4),
        ]
    }

    fn shortage_run() -> Vec<Input> {
        vec![
            place(),
            answering(held("SKU-A"), 1),
            answering(reserved("SKU-B", ReservationStatus::Shortage, "short-b"), 2),
        ]
    }

    fn declined_run() -> Vec<Input> {
        vec![
            place(),
            answering(held("SKU-B"), 2),
            answering(held("SKU-A"), 1),
            answering(failed(PaymentFailureReason::Declined), 4),
        ]
    }

    /// A payment the PSP settled through its callback (`tok_pending`): the authorization is
    /// caused by the callback command, not by the saga's authorize command.
    fn callback_run() -> Vec<Input> {
        let Input::Authorized(mut settled) = authorized("a-callback") else {
            unreachable!()
        };
        settled.causation_id = "psp-callback-evt-1".into();
        vec![
            place(),
            answering(held("SKU-A"), 1),
            answering(held("SKU-B"), 2),
            Input::Authorized(settled),
        ]
    }

    /// One of the first runs, and its inputs in an order a replay may read them: any
    /// interleaving of the topics, each topic's inputs in the order they were written (one
    /// order's records of a topic share a partition, which a replay reads in order).
    fn replay_orders() -> impl Strategy<Value = (Vec<Input>, Vec<Input>)> {
        prop_oneof![
            Just(confirmed_run()),
            Just(shortage_run()),
            Just(declined_run()),
            Just(callback_run()),
        ]
        .prop_flat_map(|run| (Just(run.clone()), Just(run).prop_shuffle()))
        .prop_map(|(run, shuffled)| {
            let mut by_topic: std::collections::BTreeMap<&str, std::collections::VecDeque<Input>> =
                std::collections::BTreeMap::new();
            for input in &run {
                by_topic
                    .entry(input.event())
                    .or_default()
                    .push_back(input.clone());
            }
            let replay = shuffled
                .iter()
                .map(|i| {
                    by_topic
                        .get_mut(i.event())
                        .and_then(std::collections::VecDeque::pop_front)
                        .expect("one per input")
                })
                .collect();
            (run, replay)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A replay (`keel reset`, or a new application id on the same topics) reads the
        /// saga's input topics in fetch order: an order's replies can come before the
        /// place-order command whose saga sent the commands they answer, or before the
        /// command the saga is about to send. Whatever the order, the replay decides as the
        /// first run did and sends the same commands (duplicates to inventory and payments):
        /// it compensates nothing the first run did not.
        #[test]
        fn a_replay_in_any_order_decides_as_the_first_run(
            (first_run, replay) in replay_orders()
        ) {
            let (mut d, metrics) = driver_with_metrics();
            for input in replay.clone() {
                feed(&mut d, input);
            }
            let replayed = outcome_of(&mut d);
            prop_assert_eq!(&replayed, &drive_outcome(first_run), "replay {:?}", replay);
            prop_assert!(d.dead_letters().is_empty());
            let early = |o: &str| metrics.early.with_label_values(&[o]).get();
            prop_assert_eq!(early("kept"), early("applied"), "every kept reply is applied");
            prop_assert!(
                d.timer(crate::saga::state::EARLY_STORE, ORDER.as_bytes())
                    .expect("reads")
                    .is_none(),
                "nothing is left kept"
            );
        }
    }

    /// (decisions, kinds of the commands sent) of what `d` wrote.
    fn outcome_of(d: &mut TestDriver) -> (Vec<(OrderDecisionStatus, Option<String>)>, Vec<String>) {
        let decisions = out::<OrderDecision>(d, topics::ORDER_DECISIONS)
            .into_iter()
            .map(|(_, x)| (x.status, x.reason))
            .collect();
        let mut commands: Vec<String> = out::<InventoryCommand>(d, topics::INVENTORY_COMMANDS)
            .into_iter()
            .map(|(sku, c)| format!("{}:{sku}", c.command_id))
            .collect();
        commands.extend(
            out::<PaymentCommand>(d, topics::PAYMENT_COMMANDS)
                .into_iter()
                .map(|(_, c)| c.command_id),
        );
        commands.sort();
        (decisions, commands)
    }

    fn drive_outcome(
        inputs: Vec<Input>,
    ) -> (Vec<(OrderDecisionStatus, Option<String>)>, Vec<String>) {
        let mut d = driver();
        for input in inputs {
            feed(&mut d, input);
        }
        outcome_of(&mut d)
    }

    #[test]
    fn the_first_run_of_each_replayed_path_decides_what_it_should() {
        let status = |run: Vec<Input>| drive_outcome(run).0;
        assert_eq!(
            status(confirmed_run()),
            vec![PENDING, (OrderDecisionStatus::Confirmed, None)]
        );
        assert_eq!(
            status(shortage_run()),
            vec![PENDING, cancelled("INSUFFICIENT_STOCK")]
        );
        assert_eq!(
            status(declined_run()),
            vec![PENDING, cancelled("PAYMENT_DECLINED")]
        );
        assert_eq!(
            status(callback_run()),
            vec![PENDING, (OrderDecisionStatus::Confirmed, None)]
        );
    }

    /// A reply whose command never comes (the saga was never placed, or took another path) is
    /// dropped after `[saga].early_reply_retention_ms` (30 s here), counted, and leaves no saga.
    #[test]
    fn a_kept_reply_whose_command_never_comes_expires() {
        use std::time::Duration;
        let (mut d, metrics) = driver_with_metrics();
        d.advance_wall_clock(Duration::from_millis(100))
            .expect("arms the punctuators");
        feed(&mut d, answering(authorized("a-1"), 4));
        feed(&mut d, answering(authorized("a-1"), 4));
        let early = |o: &str| metrics.early.with_label_values(&[o]).get();
        assert_eq!(early("kept"), 1, "a duplicate is kept once");
        assert!(
            d.timer(crate::saga::state::EARLY_STORE, ORDER.as_bytes())
                .expect("reads")
                .is_some()
        );
        d.advance_wall_clock(Duration::from_millis(30_100))
            .expect("the retention passes");
        assert_eq!(early("expired"), 1);
        assert!(
            d.timer(crate::saga::state::EARLY_STORE, ORDER.as_bytes())
                .expect("reads")
                .is_none()
        );
        // The order placed afterwards is a fresh saga that the expired reply does not touch.
        feed(&mut d, place());
        feed(&mut d, answering(held("SKU-A"), 1));
        feed(&mut d, answering(held("SKU-B"), 2));
        let (decisions, _) = outcome_of(&mut d);
        assert_eq!(
            decisions,
            vec![PENDING],
            "still waiting for its authorization"
        );
        assert!(out::<OrderDecision>(&mut d, topics::ORDER_DECISIONS).is_empty());
    }

    /// Foreign events (not caused by a saga command) are not kept: a later saga under the
    /// same order id never takes them for its own.
    #[test]
    fn events_not_caused_by_a_saga_command_are_not_kept() {
        let (mut d, metrics) = driver_with_metrics();
        for event in foreign_events() {
            feed(&mut d, event);
        }
        assert_eq!(metrics.early.with_label_values(&["kept"]).get(), 0);
    }
}

/// `[carts].source = "cdc"`: an order that ends without a sale gives its cart back to the carts
/// processor (its claim there), exactly once; a confirmed order keeps it.
mod cart_release {
    use super::*;

    fn releases(fx: &[Effect]) -> usize {
        fx.iter()
            .filter(|e| matches!(e, Effect::ReleaseCart))
            .count()
    }

    #[test]
    fn with_cart_checks_every_cancel_gives_the_cart_back_once() {
        let declined = vec![
            place(),
            cart_ok(),
            held("SKU-A"),
            held("SKU-B"),
            failed(PaymentFailureReason::Declined),
        ];
        let (saga, fx) = run_with(&CART_TIMEOUTS, declined);
        assert_eq!(saga.step, Step::Cancelled);
        assert_eq!(releases(&fx), 1, "{fx:?}");

        let (saga, fx) = run_with(&CART_TIMEOUTS, vec![place(), cancel("c1"), cancel("c2")]);
        assert_eq!(saga.step, Step::Cancelled);
        assert_eq!(
            releases(&fx),
            1,
            "a second cancel releases nothing more: {fx:?}"
        );

        // The cart check itself timed out: the carts processor may still be waiting (and
        // would claim the cart when it arrives), so the release goes out too.
        let (saga, fx) = run_with(&CART_TIMEOUTS, vec![place(), Input::DeadlinePassed]);
        assert_eq!(saga.reason, Some(Reason::CartTimeout));
        assert_eq!(releases(&fx), 1, "{fx:?}");
    }

    #[test]
    fn a_confirmed_order_keeps_its_cart() {
        let inputs = vec![
            place(),
            cart_ok(),
            held("SKU-A"),
            held("SKU-B"),
            authorized("auth-1"),
        ];
        let (saga, fx) = run_with(&CART_TIMEOUTS, inputs);
        assert_eq!(saga.step, Step::Confirmed);
        assert_eq!(releases(&fx), 0, "{fx:?}");
        let refused = decide(Some(saga), cancel("late"), ORDER, T0, &CART_TIMEOUTS);
        assert!(matches!(refused, Err(Refusal::NotCancellable { .. })));
    }

    #[test]
    fn without_cart_checks_nothing_is_released_to_the_carts_processor() {
        let (saga, fx) = run(vec![
            place(),
            held("SKU-A"),
            held("SKU-B"),
            failed(PaymentFailureReason::Declined),
        ]);
        assert_eq!(saga.step, Step::Cancelled);
        assert_eq!(releases(&fx), 0, "{fx:?}");
    }
}
