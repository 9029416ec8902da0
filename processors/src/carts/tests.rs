//! The carts processor: pure transitions, then the saga's application with the carts
//! sub-topology through the test driver (CDC rows as Debezium writes them, place-order commands
//! on the saga's input, answers on `cart.checked.v1`).

use keel_avro::records::*;

use super::logic::{CartsEffect, CartsInput, Check, Rules, step};
use super::state::{CartHeader, CartItem, CartState};

const T0: i64 = 1_700_000_000_000;
/// `[carts].retention_ms` of the pure tests.
const RETENTION: i64 = 60_000;
const RULES: Rules = Rules {
    wait_ms: 2_000,
    retention_ms: RETENTION,
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

fn check(order: &str, lines: Vec<OrderLine>) -> CartsInput {
    CartsInput::Check(Check {
        order_id: order.into(),
        command_id: format!("{order}/c1"),
        currency: "EUR".into(),
        lines,
    })
}

fn header(currency: &str) -> CartsInput {
    CartsInput::Header(CartHeader {
        customer_id: "cust-1".into(),
        currency: currency.into(),
        status: "OPEN".into(),
    })
}

fn item(sku: &str, quantity: i32, price: i64) -> CartsInput {
    CartsInput::Item {
        sku: sku.into(),
        item: CartItem {
            quantity,
            unit_price_minor: price,
        },
    }
}

fn answers(fx: &[CartsEffect]) -> Vec<(String, CartCheckStatus)> {
    fx.iter()
        .filter_map(|e| match e {
            CartsEffect::Answer {
                order_id, status, ..
            } => Some((order_id.clone(), *status)),
            _ => None,
        })
        .collect()
}

fn run(inputs: Vec<CartsInput>) -> (CartState, Vec<CartsEffect>) {
    let mut state = CartState::default();
    let mut all = Vec::new();
    for input in inputs {
        let (next, fx) = step(state, "cart-1", input, T0, &RULES);
        state = next;
        all.extend(fx);
    }
    (state, all)
}

#[test]
fn a_known_cart_is_answered_at_once_and_claimed() {
    let (state, fx) = run(vec![
        header("EUR"),
        item("SKU-A", 2, 1_000),
        check("order-1", vec![line("SKU-A", 2, 1_000)]),
    ]);
    assert_eq!(answers(&fx), vec![("order-1".into(), CartCheckStatus::Ok)]);
    assert_eq!(state.claimed_by.as_deref(), Some("order-1"));
    let Some(CartsEffect::Answer { lines, total, .. }) = fx.last() else {
        unreachable!("an answer")
    };
    assert_eq!(lines, &vec![line("SKU-A", 2, 1_000)]);
    assert_eq!(total, &eur(2_000));
}

#[test]
fn an_order_waits_until_the_cart_agrees_with_its_lines() {
    let lines = vec![line("SKU-A", 2, 1_000), line("SKU-B", 1, 500)];
    let (_, fx) = run(vec![
        check("order-1", lines.clone()),
        header("EUR"),
        item("SKU-A", 2, 1_000),
    ]);
    assert!(answers(&fx).is_empty(), "half a cart is not an answer");
    assert!(matches!(fx[0], CartsEffect::Wait { until, .. } if until == T0 + 2_000));
    let (_, fx) = run(vec![
        check("order-1", lines),
        header("EUR"),
        item("SKU-A", 2, 1_000),
        item("SKU-B", 1, 500),
    ]);
    assert_eq!(answers(&fx), vec![("order-1".into(), CartCheckStatus::Ok)]);
    assert!(fx.contains(&CartsEffect::StopWaiting {
        order_id: "order-1".into()
    }));
}

#[test]
fn at_the_end_of_the_wait_the_answer_says_what_is_missing() {
    let over = || CartsInput::WaitOver {
        order_id: "order-1".into(),
    };
    let (_, fx) = run(vec![check("order-1", vec![]), over()]);
    assert_eq!(
        answers(&fx),
        vec![("order-1".into(), CartCheckStatus::CartNotFound)]
    );
    let (_, fx) = run(vec![check("order-1", vec![]), header("EUR"), over()]);
    assert_eq!(
        answers(&fx),
        vec![("order-1".into(), CartCheckStatus::CartEmpty)]
    );
    let (_, fx) = run(vec![check("order-1", vec![]), header("USD")]);
    assert_eq!(
        answers(&fx),
        vec![("order-1".into(), CartCheckStatus::CurrencyMismatch)]
    );
}

#[test]
fn a_cart_is_ordered_once_and_a_duplicate_check_changes_nothing() {
    let (state, fx) = run(vec![
        header("EUR"),
        item("SKU-A", 1, 100),
        check("order-1", vec![]),
        check("order-1", vec![]),
        check("order-2", vec![]),
    ]);
    assert_eq!(
        answers(&fx),
        vec![
            ("order-1".into(), CartCheckStatus::Ok),
            ("order-2".into(), CartCheckStatus::CartAlreadyOrdered)
        ]
    );
    assert_eq!(state.claimed_by.as_deref(), Some("order-1"));
}

#[test]
fn deleted_rows_leave_the_table() {
    let (state, _) = run(vec![
        header("EUR"),
        item("SKU-A", 1, 100),
        CartsInput::ItemDeleted {
            sku: "SKU-A".into(),
        },
        CartsInput::HeaderDeleted,
    ]);
    assert!(state.header.is_none() && state.items.is_empty());
}

fn release(order: &str) -> CartsInput {
    CartsInput::Release {
        order_id: order.into(),
    }
}

#[test]
fn a_cancelled_order_gives_its_cart_back_and_the_next_order_claims_it() {
    let (state, fx) = run(vec![
        header("EUR"),
        item("SKU-A", 1, 100),
        check("order-1", vec![]),
        release("order-1"),
        check("order-2", vec![]),
        check("order-3", vec![]),
    ]);
    assert_eq!(
        answers(&fx),
        vec![
            ("order-1".into(), CartCheckStatus::Ok),
            ("order-2".into(), CartCheckStatus::Ok),
            ("order-3".into(), CartCheckStatus::CartAlreadyOrdered)
        ]
    );
    assert_eq!(state.claimed_by.as_deref(), Some("order-2"));
}

#[test]
fn a_release_is_idempotent_and_never_frees_another_orders_claim() {
    let (state, _) = run(vec![
        header("EUR"),
        item("SKU-A", 1, 100),
        check("order-1", vec![]),
        release("order-1"),
        check("order-2", vec![]),
    ]);
    let mut again = state.clone();
    // The released order's release again (a replay), a refused order's release, and a release
    // for an order the cart never saw: the claim stays with order-2, nothing is emitted.
    for input in [release("order-1"), release("order-9")] {
        let (next, fx) = step(again, "cart-1", input, T0, &RULES);
        assert!(fx.is_empty(), "{fx:?}");
        again = next;
    }
    assert_eq!(again.claimed_by.as_deref(), Some("order-2"));
    let (twice, fx) = step(again.clone(), "cart-1", release("order-9"), T0, &RULES);
    assert!(fx.is_empty());
    assert_eq!(twice, again, "releasing twice is releasing once");
    // The released order's check again (a replayed place-order) does not take the cart back.
    let (after, fx) = step(state, "cart-1", check("order-1", vec![]), T0, &RULES);
    assert!(fx.is_empty(), "{fx:?}");
    assert_eq!(after.claimed_by.as_deref(), Some("order-2"));
}

#[test]
fn a_release_of_a_waiting_order_stops_its_wait_so_it_never_claims_the_cart() {
    let (state, fx) = run(vec![
        check("order-1", vec![]),
        release("order-1"),
        header("EUR"),
        item("SKU-A", 1, 100),
        CartsInput::WaitOver {
            order_id: "order-1".into(),
        },
    ]);
    assert!(answers(&fx).is_empty(), "{fx:?}");
    assert!(fx.contains(&CartsEffect::StopWaiting {
        order_id: "order-1".into()
    }));
    assert_eq!(state.claimed_by, None);
    assert!(state.waiting.is_empty());
    let (_, fx) = step(state, "cart-1", check("order-2", vec![]), T0, &RULES);
    assert_eq!(answers(&fx), vec![("order-2".into(), CartCheckStatus::Ok)]);
}

#[test]
fn a_cart_state_stored_before_releases_existed_still_decodes() {
    let old = br#"{"header":null,"items":{},"claimed_by":"order-1","waiting":{},"answered":{}}"#;
    let state = CartState::decode(old).expect("decodes");
    assert_eq!(state.claimed_by.as_deref(), Some("order-1"));
}

// ---- retention ----

/// Applies `inputs` to `state` at `now`, collecting the effects.
fn run_at(
    mut state: CartState,
    now: i64,
    inputs: Vec<CartsInput>,
) -> (CartState, Vec<CartsEffect>) {
    let mut all = Vec::new();
    for input in inputs {
        let (next, fx) = step(state, "cart-1", input, now, &RULES);
        state = next;
        all.extend(fx);
    }
    (state, all)
}

fn retention_effects(fx: &[CartsEffect]) -> Vec<CartsEffect> {
    fx.iter()
        .filter(|e| {
            matches!(
                e,
                CartsEffect::ArmRetention { .. }
                    | CartsEffect::DisarmRetention
                    | CartsEffect::Forget
            )
        })
        .cloned()
        .collect()
}

fn item_deleted(sku: &str) -> CartsInput {
    CartsInput::ItemDeleted { sku: sku.into() }
}

/// A cart ordered by order-1 at T0, whose rows the cart service then deleted (at T0).
fn ordered_then_deleted() -> (CartState, Vec<CartsEffect>) {
    run(vec![
        header("EUR"),
        item("SKU-A", 1, 100),
        check("order-1", vec![]),
        item_deleted("SKU-A"),
        CartsInput::HeaderDeleted,
    ])
}

#[test]
fn a_deleted_cart_is_forgotten_once_quiet_for_the_retention_and_not_before() {
    let (state, fx) = ordered_then_deleted();
    assert_eq!(
        retention_effects(&fx),
        vec![CartsEffect::ArmRetention { at: T0 + RETENTION }],
        "the retention starts when the last row goes"
    );
    assert_eq!(state.retire_at, Some(T0 + RETENTION));
    // Within the retention the claim and the answer still hold: a duplicate check changes
    // nothing, another order is refused.
    let (kept, fx) = run_at(
        state.clone(),
        T0 + RETENTION - 1,
        vec![check("order-1", vec![]), check("order-2", vec![])],
    );
    assert_eq!(
        answers(&fx),
        vec![("order-2".into(), CartCheckStatus::CartAlreadyOrdered)]
    );
    // A timer that fires early forgets nothing.
    let (early, fx) = step(
        state.clone(),
        "cart-1",
        CartsInput::RetentionOver,
        T0 + RETENTION - 1,
        &RULES,
    );
    assert!(!fx.contains(&CartsEffect::Forget), "{fx:?}");
    assert_eq!(early.claimed_by.as_deref(), Some("order-1"));
    let (_, fx) = step(
        state,
        "cart-1",
        CartsInput::RetentionOver,
        T0 + RETENTION,
        &RULES,
    );
    assert_eq!(fx, vec![CartsEffect::Forget]);
    // order-2's refusal was a change: it moved the retention on.
    assert_eq!(kept.retire_at, Some(T0 + 2 * RETENTION - 1));
}

#[test]
fn every_change_moves_the_retention_on_and_a_duplicate_does_not() {
    let (state, _) = ordered_then_deleted();
    let later = T0 + 1_000;
    let (moved, fx) = run_at(state, later, vec![release("order-1")]);
    assert_eq!(
        retention_effects(&fx),
        vec![CartsEffect::ArmRetention {
            at: later + RETENTION
        }]
    );
    let (same, fx) = run_at(moved.clone(), later + 5, vec![release("order-1")]);
    assert!(fx.is_empty(), "a duplicate release changes nothing: {fx:?}");
    assert_eq!(same, moved);
    let (_, fx) = step(
        same,
        "cart-1",
        CartsInput::RetentionOver,
        T0 + RETENTION,
        &RULES,
    );
    assert_eq!(
        fx,
        vec![CartsEffect::ArmRetention {
            at: later + RETENTION
        }],
        "the timer of the old retention looks again at the new one"
    );
}

#[test]
fn a_waiting_order_keeps_a_deleted_cart_until_its_wait_ends() {
    // Deleted and unclaimed (order-1 released it): order-2's check waits for the cart.
    let (state, _) = ordered_then_deleted();
    let (state, _) = run_at(state, T0, vec![release("order-1")]);
    let (waiting, fx) = run_at(state, T0 + 10, vec![check("order-2", vec![])]);
    assert!(fx.contains(&CartsEffect::DisarmRetention), "{fx:?}");
    assert_eq!(waiting.retire_at, None);
    let (still, fx) = step(
        waiting.clone(),
        "cart-1",
        CartsInput::RetentionOver,
        T0 + 10 * RETENTION,
        &RULES,
    );
    assert!(!fx.contains(&CartsEffect::Forget), "{fx:?}");
    assert!(still.waiting.contains_key("order-2"));
    // The wait ends: the answer, then the retention counts from it.
    let over = T0 + 10 + RULES.wait_ms;
    let (answered, fx) = run_at(
        waiting,
        over,
        vec![CartsInput::WaitOver {
            order_id: "order-2".into(),
        }],
    );
    assert_eq!(
        answers(&fx),
        vec![("order-2".into(), CartCheckStatus::CartNotFound)]
    );
    assert_eq!(
        retention_effects(&fx),
        vec![CartsEffect::ArmRetention {
            at: over + RETENTION
        }]
    );
    assert_eq!(answered.retire_at, Some(over + RETENTION));
}

#[test]
fn a_row_that_comes_back_stops_the_retention() {
    let (state, _) = ordered_then_deleted();
    let (back, fx) = run_at(state, T0 + 1, vec![header("EUR")]);
    assert_eq!(retention_effects(&fx), vec![CartsEffect::DisarmRetention]);
    assert_eq!(back.retire_at, None);
    let (_, fx) = step(
        back,
        "cart-1",
        CartsInput::RetentionOver,
        T0 + RETENTION,
        &RULES,
    );
    assert!(fx.is_empty(), "{fx:?}");
}

#[test]
fn a_deleted_cart_with_nothing_to_remember_is_forgotten_at_once() {
    let (state, fx) = run(vec![
        header("EUR"),
        item("SKU-A", 1, 100),
        item_deleted("SKU-A"),
        CartsInput::HeaderDeleted,
    ]);
    assert_eq!(retention_effects(&fx), vec![CartsEffect::Forget]);
    assert_eq!(state, CartState::default(), "the same as no entry");
    // A delete for a cart never seen leaves nothing either.
    let (_, fx) = run(vec![CartsInput::HeaderDeleted]);
    assert_eq!(fx, vec![CartsEffect::Forget]);
}

#[test]
fn answered_and_released_orders_are_forgotten_after_the_retention_but_the_claim_stays() {
    let (state, _) = run(vec![
        header("EUR"),
        item("SKU-A", 1, 100),
        check("order-1", vec![]),
        release("order-1"),
        check("order-2", vec![]),
    ]);
    let later = T0 + 1_000;
    let (state, _) = run_at(state, later, vec![check("order-3", vec![])]);
    let (kept, _) = run_at(state, T0 + RETENTION - 1, vec![item("SKU-A", 1, 100)]);
    assert!(kept.released.contains("order-1"));
    assert_eq!(kept.answered.len(), 3);
    // T0 + RETENTION: order-1 and order-2 (seen at T0) go, order-3 (seen later) stays.
    let (pruned, fx) = run_at(kept, T0 + RETENTION, vec![item("SKU-A", 1, 100)]);
    assert!(fx.is_empty(), "{fx:?}");
    assert!(pruned.released.is_empty());
    assert_eq!(
        pruned.answered.keys().collect::<Vec<_>>(),
        vec!["order-3"],
        "{pruned:?}"
    );
    assert_eq!(
        pruned.last_seen,
        [("order-3".to_owned(), later)].into_iter().collect()
    );
    assert_eq!(
        pruned.claimed_by.as_deref(),
        Some("order-2"),
        "the claim stays"
    );
    let (_, fx) = run_at(pruned, T0 + RETENTION, vec![check("order-4", vec![])]);
    assert_eq!(
        answers(&fx),
        vec![("order-4".into(), CartCheckStatus::CartAlreadyOrdered)]
    );
}

#[test]
fn a_cart_state_stored_before_retention_existed_decodes_and_retires() {
    // As the processor stored it before `last_seen` and `retire_at`: a deleted cart.
    let old = br#"{"header":null,"items":{},"claimed_by":"order-1","waiting":{},
        "answered":{"order-1":"OK","order-2":"CART_ALREADY_ORDERED"},"released":["order-0"]}"#;
    let state = CartState::decode(old).expect("decodes");
    assert_eq!(state.answered["order-1"], CartCheckStatus::Ok);
    assert!(state.released.contains("order-0"));
    assert_eq!((state.retire_at, state.last_seen.len()), (None, 0));
    // The start-up sweep gives it a retention; its orders count from then.
    let (swept, fx) = run_at(state, T0, vec![CartsInput::Sweep]);
    assert_eq!(fx, vec![CartsEffect::ArmRetention { at: T0 + RETENTION }]);
    assert_eq!(swept.last_seen.len(), 3);
    assert!(swept.last_seen.values().all(|at| *at == T0));
    // Swept again (the next start): nothing changes.
    let (again, fx) = run_at(swept.clone(), T0 + 5, vec![CartsInput::Sweep]);
    assert!(fx.is_empty(), "{fx:?}");
    assert_eq!(again, swept);
    let (_, fx) = step(
        again,
        "cart-1",
        CartsInput::RetentionOver,
        T0 + RETENTION,
        &RULES,
    );
    assert_eq!(fx, vec![CartsEffect::Forget]);
}

// ---- through the test driver ----

mod driver {
    use std::time::Duration;

    use keel_topology::TestDriver;
    use keel_topology::serde::{Json, Utf8};

    use super::*;
    use crate::carts::CdcTopics;
    use crate::carts::state::{CARTS_STORE, WAITS_STORE, retention_key};
    use crate::format::Format;
    use crate::saga::SagaConfig;
    use crate::topics;

    fn cdc() -> CdcTopics {
        CdcTopics::new("cdc", "keel")
    }

    /// `[carts].retention_ms` of the driver tests.
    const RETENTION_MS: u64 = 10_000;

    fn driver() -> TestDriver {
        driver_with_metrics().0
    }

    fn driver_with_metrics() -> (TestDriver, crate::saga::SagaMetrics) {
        let config = SagaConfig {
            cart_wait_ms: 2_000,
            cart_timeout_ms: 5_000,
            deadline_check_interval_ms: 100,
            cart_retention_ms: RETENTION_MS,
            ..SagaConfig::default()
        };
        let metrics =
            crate::saga::SagaMetrics::register(&prometheus::Registry::new()).expect("metrics");
        let topology = crate::saga::topology_with_carts(
            &Format::Json,
            &crate::topics::Topics::default(),
            &config,
            metrics.clone(),
            &cdc(),
        )
        .expect("topology");
        (TestDriver::new(topology).expect("driver"), metrics)
    }

    fn place(d: &mut TestDriver, order: &str, cart: &str, command_id: &str) {
        let lines = vec![line("SKU-A", 2, 1_000), line("SKU-B", 1, 500)];
        let command = OrderCommand {
            command_id: command_id.into(),
            order_id: order.into(),
            issued_at: T0,
            causation_id: "http".into(),
            correlation_id: order.into(),
            command: OrderCommandBody::PlaceOrder(PlaceOrder {
                customer_id: "cust-1".into(),
                cart_id: cart.into(),
                lines,
                total: eur(2_500),
                payment_method: "tok_visa".into(),
                shipping_address: None,
            }),
        };
        d.pipe(
            topics::ORDER_COMMANDS,
            &order.to_owned(),
            &command,
            T0,
            &Utf8,
            &Json::<OrderCommand>::new(),
        )
        .expect("processed");
    }

    /// A Debezium row as the registry converter writes it: Avro with the schema Debezium
    /// registered for the table (`cdc/fixtures/`), Confluent-framed.
    fn cdc_row(d: &mut TestDriver, topic: &str, cart: &str, row: serde_json::Value) {
        let schema = if topic == cdc().carts {
            crate::cdc::testing::CARTS
        } else {
            crate::cdc::testing::CART_ITEMS
        };
        let bytes = crate::cdc::testing::avro(schema, row);
        d.pipe_raw(topic, Some(cart.as_bytes()), Some(&bytes), T0)
            .expect("processed");
    }

    fn seed(d: &mut TestDriver, cart: &str) {
        let c = cdc();
        cdc_row(
            d,
            &c.carts,
            cart,
            serde_json::json!({"cart_id": cart, "customer_id": "cust-1", "currency": "EUR",
                "status": "OPEN", "updated_at": T0, "__deleted": "false"}),
        );
        for (sku, q, p) in [("SKU-A", 2, 1_000), ("SKU-B", 1, 500)] {
            cdc_row(
                d,
                &c.cart_items,
                cart,
                serde_json::json!({"cart_id": cart, "sku": sku, "quantity": q,
                    "unit_price_minor": p, "__deleted": "false"}),
            );
        }
    }

    fn checked(d: &mut TestDriver) -> Vec<(String, CartChecked)> {
        d.read_output_as(topics::CART_CHECKED, &Utf8, &Json::<CartChecked>::new())
            .expect("decodes")
    }

    #[test]
    fn a_cart_that_arrives_after_the_order_is_answered_when_it_arrives() {
        let mut d = driver();
        place(&mut d, "order-1", "cart-1", "cmd-1");
        let pending: Vec<(String, OrderDecision)> = d
            .read_output_as(
                topics::ORDER_DECISIONS,
                &Utf8,
                &Json::<OrderDecision>::new(),
            )
            .expect("decodes");
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].1.status, OrderDecisionStatus::Pending);
        assert!(d.read_output(topics::INVENTORY_COMMANDS).is_empty());
        assert!(checked(&mut d).is_empty(), "the cart has not arrived");

        seed(&mut d, "cart-1");
        let answers = checked(&mut d);
        assert_eq!(answers.len(), 1, "{answers:?}");
        let (key, answer) = &answers[0];
        assert_eq!(
            key, "order-1",
            "keyed by order id, for the saga's partition"
        );
        assert_eq!(answer.status, CartCheckStatus::Ok);
        assert_eq!(answer.total, eur(2_500));
        assert_eq!(answer.event_id, "order-1/cart-check");

        // The answer reaches the saga: it reserves the cart's lines.
        d.pipe(
            topics::CART_CHECKED,
            &"order-1".to_owned(),
            answer,
            T0,
            &Utf8,
            &Json::<CartChecked>::new(),
        )
        .expect("processed");
        let reserves = d.read_output(topics::INVENTORY_COMMANDS);
        assert_eq!(reserves.len(), 2);
    }

    #[test]
    fn a_cart_that_never_arrives_is_cart_not_found_after_the_wait() {
        let mut d = driver();
        place(&mut d, "order-1", "cart-ghost", "cmd-1");
        d.advance_wall_clock(Duration::from_millis(1_500))
            .expect("ticks");
        assert!(checked(&mut d).is_empty(), "still waiting");
        d.advance_wall_clock(Duration::from_millis(700))
            .expect("ticks");
        let answers = checked(&mut d);
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert_eq!(answers[0].1.status, CartCheckStatus::CartNotFound);
    }

    #[test]
    fn a_deleted_item_leaves_the_cart_so_the_order_waits_for_its_lines() {
        let mut d = driver();
        seed(&mut d, "cart-1");
        // The delete arrives as the row with `__deleted = "true"` (ADR 0002), in Avro.
        cdc_row(
            &mut d,
            &cdc().cart_items,
            "cart-1",
            serde_json::json!({"cart_id": "cart-1", "sku": "SKU-B", "quantity": 1,
                "unit_price_minor": 500, "__deleted": "true"}),
        );
        assert!(d.dead_letters().is_empty());
        place(&mut d, "order-1", "cart-1", "cmd-1");
        assert!(
            checked(&mut d).is_empty(),
            "SKU-B left the cart: the lines differ, the order waits"
        );
    }

    #[test]
    fn a_schemaless_json_row_is_dead_lettered_with_why_and_changes_nothing() {
        let mut d = driver();
        // What Debezium's JsonConverter wrote before ADR 0006.
        let json = serde_json::json!({"cart_id": "cart-1", "customer_id": "cust-1",
            "currency": "EUR", "status": "OPEN", "__deleted": "false"});
        let bytes = serde_json::to_vec(&json).expect("json");
        d.pipe_raw(&cdc().carts, Some(b"cart-1"), Some(&bytes), T0)
            .expect("processed");
        let dead = d.dead_letters();
        assert_eq!(dead.len(), 1, "{dead:?}");
        let why = dead[0].headers.get_str("keel.error").unwrap_or_default();
        assert!(
            why.contains("not Avro in the Confluent wire format"),
            "{why}"
        );
        assert!(why.contains(&cdc().carts), "{why}");
        // The cart is still unknown: the order waits and then finds no cart.
        place(&mut d, "order-1", "cart-1", "cmd-1");
        assert!(checked(&mut d).is_empty());
        d.advance_wall_clock(Duration::from_millis(100))
            .expect("arms the punctuators");
        d.advance_wall_clock(Duration::from_millis(2_100))
            .expect("ticks");
        let answers = checked(&mut d);
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].1.status, CartCheckStatus::CartNotFound);
    }

    #[test]
    fn an_empty_cart_is_cart_empty_after_the_wait() {
        let mut d = driver();
        cdc_row(
            &mut d,
            &cdc().carts,
            "cart-1",
            serde_json::json!({"cart_id": "cart-1", "customer_id": "c", "currency": "EUR",
                "status": "OPEN", "__deleted": "false"}),
        );
        place(&mut d, "order-1", "cart-1", "cmd-1");
        assert!(checked(&mut d).is_empty());
        d.advance_wall_clock(Duration::from_millis(100))
            .expect("arms the punctuators");
        d.advance_wall_clock(Duration::from_millis(2_100))
            .expect("ticks");
        let answers = checked(&mut d);
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].1.status, CartCheckStatus::CartEmpty);
    }

    #[test]
    fn a_cart_ordered_by_another_order_is_refused_and_a_duplicate_place_order_changes_nothing() {
        let mut d = driver();
        seed(&mut d, "cart-1");
        place(&mut d, "order-1", "cart-1", "cmd-1");
        place(&mut d, "order-1", "cart-1", "cmd-1");
        place(&mut d, "order-1", "cart-1", "cmd-1-again");
        place(&mut d, "order-2", "cart-1", "cmd-2");
        let answers: Vec<(String, CartCheckStatus)> = checked(&mut d)
            .into_iter()
            .map(|(k, a)| (k, a.status))
            .collect();
        assert_eq!(
            answers,
            vec![
                ("order-1".into(), CartCheckStatus::Ok),
                ("order-2".into(), CartCheckStatus::CartAlreadyOrdered)
            ]
        );
        // The same check straight on the repartition topic (a replay) is not answered twice.
        let command = OrderCommand {
            command_id: "order-1/c1".into(),
            order_id: "order-1".into(),
            issued_at: T0,
            causation_id: "x".into(),
            correlation_id: "order-1".into(),
            command: OrderCommandBody::PlaceOrder(PlaceOrder {
                customer_id: "cust-1".into(),
                cart_id: "cart-1".into(),
                lines: vec![],
                total: eur(0),
                payment_method: "tok_visa".into(),
                shipping_address: None,
            }),
        };
        d.pipe(
            "test-app-cart-checks-repartition",
            &"cart-1".to_owned(),
            &command,
            T0,
            &Utf8,
            &Json::<OrderCommand>::new(),
        )
        .expect("processed");
        assert!(checked(&mut d).is_empty());
    }

    fn cancel(d: &mut TestDriver, order: &str, command_id: &str) {
        let command = OrderCommand {
            command_id: command_id.into(),
            order_id: order.into(),
            issued_at: T0,
            causation_id: "http".into(),
            correlation_id: order.into(),
            command: OrderCommandBody::CancelOrder(CancelOrder {
                reason: "changed my mind".into(),
            }),
        };
        d.pipe(
            topics::ORDER_COMMANDS,
            &order.to_owned(),
            &command,
            T0,
            &Utf8,
            &Json::<OrderCommand>::new(),
        )
        .expect("processed");
    }

    #[test]
    fn a_cancelled_order_releases_its_cart_through_the_saga_and_a_new_order_claims_it() {
        let mut d = driver();
        seed(&mut d, "cart-1");
        place(&mut d, "order-1", "cart-1", "cmd-1");
        cancel(&mut d, "order-1", "cmd-1-cancel");
        let decisions: Vec<(String, OrderDecision)> = d
            .read_output_as(
                topics::ORDER_DECISIONS,
                &Utf8,
                &Json::<OrderDecision>::new(),
            )
            .expect("decodes");
        assert_eq!(
            decisions.last().map(|(_, x)| x.status),
            Some(OrderDecisionStatus::Cancelled)
        );
        place(&mut d, "order-2", "cart-1", "cmd-2");
        // order-1's release again, straight on the repartition topic (a replay): order-2 keeps
        // the cart.
        let release = OrderCommand {
            command_id: "order-1/c2".into(),
            order_id: "order-1".into(),
            issued_at: T0,
            causation_id: "cmd-1-cancel".into(),
            correlation_id: "order-1".into(),
            command: OrderCommandBody::CancelOrder(CancelOrder {
                reason: "CUSTOMER_CANCELLED".into(),
            }),
        };
        d.pipe(
            "test-app-cart-checks-repartition",
            &"cart-1".to_owned(),
            &release,
            T0,
            &Utf8,
            &Json::<OrderCommand>::new(),
        )
        .expect("processed");
        place(&mut d, "order-3", "cart-1", "cmd-3");
        let answers: Vec<(String, CartCheckStatus)> = checked(&mut d)
            .into_iter()
            .map(|(k, a)| (k, a.status))
            .collect();
        assert_eq!(
            answers,
            vec![
                ("order-1".into(), CartCheckStatus::Ok),
                ("order-2".into(), CartCheckStatus::Ok),
                ("order-3".into(), CartCheckStatus::CartAlreadyOrdered)
            ]
        );
    }

    fn stored(d: &TestDriver, cart: &str) -> Option<CartState> {
        d.kv_get(CARTS_STORE, cart.as_bytes())
            .expect("reads")
            .map(|bytes| CartState::decode(&bytes).expect("decodes"))
    }

    /// A check (`cancel`: a release) for `order` straight on the repartition topic, as the saga
    /// sends it — without a saga whose deadlines would send releases of their own.
    fn to_carts(d: &mut TestDriver, order: &str, cart: &str, cancel: bool) {
        let command = if cancel {
            OrderCommandBody::CancelOrder(CancelOrder {
                reason: "CUSTOMER_CANCELLED".into(),
            })
        } else {
            OrderCommandBody::PlaceOrder(PlaceOrder {
                customer_id: "cust-1".into(),
                cart_id: cart.into(),
                lines: vec![],
                total: eur(0),
                payment_method: "tok_visa".into(),
                shipping_address: None,
            })
        };
        let command = OrderCommand {
            command_id: format!("{order}/c{}", if cancel { 2 } else { 1 }),
            order_id: order.into(),
            issued_at: T0,
            causation_id: "x".into(),
            correlation_id: order.into(),
            command,
        };
        d.pipe(
            "test-app-cart-checks-repartition",
            &cart.to_owned(),
            &command,
            T0,
            &Utf8,
            &Json::<OrderCommand>::new(),
        )
        .expect("processed");
    }

    /// The cart service deletes the cart's rows: Debezium's rows with `__deleted = "true"`.
    fn delete_rows(d: &mut TestDriver, cart: &str) {
        let c = cdc();
        for (sku, q, p) in [("SKU-A", 2, 1_000), ("SKU-B", 1, 500)] {
            cdc_row(
                d,
                &c.cart_items,
                cart,
                serde_json::json!({"cart_id": cart, "sku": sku, "quantity": q,
                    "unit_price_minor": p, "__deleted": "true"}),
            );
        }
        cdc_row(
            d,
            &c.carts,
            cart,
            serde_json::json!({"cart_id": cart, "customer_id": "cust-1", "currency": "EUR",
                "status": "ORDERED", "updated_at": T0, "__deleted": "true"}),
        );
    }

    fn statuses(d: &mut TestDriver) -> Vec<(String, CartCheckStatus)> {
        checked(d).into_iter().map(|(k, a)| (k, a.status)).collect()
    }

    #[test]
    fn a_deleted_cart_leaves_the_store_with_a_tombstone_once_its_retention_is_over() {
        let (mut d, metrics) = driver_with_metrics();
        seed(&mut d, "cart-1");
        to_carts(&mut d, "order-1", "cart-1", false);
        delete_rows(&mut d, "cart-1");
        let kept = stored(&d, "cart-1").expect("kept within the retention");
        assert_eq!(kept.claimed_by.as_deref(), Some("order-1"));
        let due = T0 + RETENTION_MS as i64;
        assert_eq!(kept.retire_at, Some(due));
        let timer = d
            .timer(WAITS_STORE, &retention_key("cart-1"))
            .expect("reads")
            .expect("the retention timer");
        assert_eq!(timer.due, due);

        d.advance_wall_clock(Duration::from_millis(100))
            .expect("arms the punctuators");
        d.advance_wall_clock(Duration::from_millis(RETENTION_MS - 1_000))
            .expect("ticks");
        assert!(stored(&d, "cart-1").is_some(), "not before the retention");
        // Within it, a duplicate check changes nothing and another order is refused.
        to_carts(&mut d, "order-1", "cart-1", false);
        assert_eq!(
            statuses(&mut d),
            vec![("order-1".into(), CartCheckStatus::Ok)]
        );
        d.advance_wall_clock(Duration::from_millis(1_000))
            .expect("ticks");
        assert_eq!(stored(&d, "cart-1"), None, "deleted from the store");
        assert!(
            d.timer(WAITS_STORE, &retention_key("cart-1"))
                .expect("reads")
                .is_none()
        );
        let log = d.changelog(CARTS_STORE, 0);
        let last = log
            .iter()
            .rev()
            .find(|(_, key, _)| key.as_slice() == b"cart-1")
            .expect("the cart's changelog records");
        assert_eq!(last.2, None, "a tombstone, so compaction drops the cart");
        assert_eq!(metrics.carts.retired.get(), 1);

        // A store restored from the changelog does not bring it back.
        d.restart(true).expect("restores");
        assert_eq!(stored(&d, "cart-1"), None);
        // The cart is unknown now: an order for it waits and finds no cart.
        to_carts(&mut d, "order-2", "cart-1", false);
        d.advance_wall_clock(Duration::from_millis(100))
            .expect("arms the punctuators");
        d.advance_wall_clock(Duration::from_millis(2_100))
            .expect("ticks");
        assert_eq!(
            statuses(&mut d),
            vec![("order-2".into(), CartCheckStatus::CartNotFound)]
        );
    }

    #[test]
    fn a_live_carts_old_orders_are_forgotten_by_the_sweep_after_a_start_but_not_its_claim() {
        let mut d = driver();
        seed(&mut d, "cart-1");
        to_carts(&mut d, "order-1", "cart-1", false);
        to_carts(&mut d, "order-1", "cart-1", true);
        to_carts(&mut d, "order-2", "cart-1", false);
        let before = stored(&d, "cart-1").expect("stored");
        assert!(before.released.contains("order-1"));
        assert_eq!(before.answered.len(), 2);
        assert_eq!(before.claimed_by.as_deref(), Some("order-2"));
        assert_eq!(before.retire_at, None, "a live cart does not retire");
        // Nothing happens to the cart past the retention; the sweep of the task's first
        // punctuation forgets its old orders.
        d.advance_wall_clock(Duration::from_millis(100))
            .expect("arms the punctuators");
        d.advance_wall_clock(Duration::from_millis(RETENTION_MS))
            .expect("ticks");
        let after = stored(&d, "cart-1").expect("a live cart stays");
        assert!(after.answered.is_empty(), "{after:?}");
        assert!(after.released.is_empty(), "{after:?}");
        assert!(after.last_seen.is_empty(), "{after:?}");
        assert_eq!(
            after.claimed_by.as_deref(),
            Some("order-2"),
            "the claim stays"
        );
        assert_eq!(after.items.len(), 2);
    }
}
