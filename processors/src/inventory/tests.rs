//! Inventory: pure transitions, then the topology through the test driver.

use keel_avro::records::*;

use super::logic::{Effect, Input, OversellPolicy, Refusal, Rules, decide};
use super::state::{Ended, Hold, HoldState, SkuStock, StockLevel};

const T0: i64 = 1_700_000_000_000;
const RULES: Rules = Rules {
    hold_ttl_ms: 60_000,
    min_hold_ttl_ms: 10_000,
    max_hold_ttl_ms: 3_600_000,
    oversell: OversellPolicy::Allow,
};

fn reserve(order: &str, quantity: i64) -> Input {
    Input::Reserve {
        order_id: order.into(),
        quantity,
        warehouse: None,
        hold_ttl_ms: None,
    }
}

/// `on_hand` units in the default warehouse.
fn stock(on_hand: i64) -> SkuStock {
    SkuStock::single(DEFAULT_WAREHOUSE, StockLevel { on_hand, held: 0 })
}

fn command(key_sku: &str, body: InventoryCommandBody) -> InventoryCommand {
    InventoryCommand {
        command_id: "c1".into(),
        sku: key_sku.into(),
        issued_at: T0,
        causation_id: "test".into(),
        correlation_id: "o1".into(),
        command: body,
    }
}

#[test]
fn a_command_must_be_keyed_by_its_sku_and_carry_ids_by_the_apis_rule() {
    use super::logic::check_command;
    let reserve_in = |order: &str, warehouse: Option<&str>| {
        InventoryCommandBody::Reserve(ReserveStock {
            order_id: order.into(),
            quantity: 1,
            warehouse: warehouse.map(Into::into),
            hold_ttl_ms: None,
        })
    };
    let adjust_in = |warehouse: Option<&str>| {
        InventoryCommandBody::Adjust(AdjustStock {
            delta: 1,
            reason: "seed".into(),
            warehouse: warehouse.map(Into::into),
        })
    };
    let release_of = |order: &str| {
        InventoryCommandBody::Release(ReleaseStock {
            order_id: order.into(),
            reason: ReleaseReason::Compensation,
        })
    };
    let confirm_of = |order: &str| {
        InventoryCommandBody::Confirm(ConfirmReservation {
            order_id: order.into(),
        })
    };
    for ok in [
        reserve_in("o1", None),
        reserve_in("o1", Some("east")),
        adjust_in(Some("west")),
        release_of("o1"),
        confirm_of("o1"),
    ] {
        assert_eq!(check_command("SKU-A", &command("SKU-A", ok)), Ok(()));
    }
    // The key is not the SKU: both named.
    let why = check_command("SKU-B", &command("SKU-A", adjust_in(None)))
        .expect_err("mismatch")
        .to_string();
    assert!(
        why.contains("\"SKU-B\"") && why.contains("\"SKU-A\""),
        "{why}"
    );
    // A SKU, order id or warehouse that breaks the rule, named by its field.
    let long = "S".repeat(65);
    for (key_sku, body, field) in [
        ("", adjust_in(None), "sku"),
        ("WS X", reserve_in("o1", None), "sku"),
        (long.as_str(), adjust_in(None), "sku"),
        ("SKU-A", reserve_in("", None), "order_id"),
        ("SKU-A", release_of("o 1"), "order_id"),
        ("SKU-A", confirm_of(""), "order_id"),
        ("SKU-A", reserve_in("o1", Some("")), "warehouse"),
        ("SKU-A", adjust_in(Some("north\tpole")), "warehouse"),
    ] {
        let why = check_command(key_sku, &command(key_sku, body))
            .expect_err("refused")
            .to_string();
        assert!(
            why.contains(&format!("command's {field} ")) && why.contains("1 to 64 characters"),
            "{field}: {why}"
        );
    }
}

#[test]
fn an_adjust_posing_as_inventorys_own_sale_is_refused_in_any_letter_case_as_the_api_does() {
    use super::logic::check_command;
    let adjust = |reason: &str| {
        command(
            "SKU-A",
            InventoryCommandBody::Adjust(AdjustStock {
                delta: 1,
                reason: reason.into(),
                warehouse: None,
            }),
        )
    };
    for reason in [
        "SOLD order o1",
        "OVERSOLD order o1",
        "oversold order o1",
        "Sold order o1",
        " OVERSOLD order o1",
    ] {
        // The API's verdict on the same reason, so the two cannot drift apart.
        assert!(
            keel_avro::records::is_sale_reason(reason),
            "{reason:?} is a sale reason"
        );
        let why = check_command("SKU-A", &adjust(reason))
            .expect_err(reason)
            .to_string();
        assert!(why.contains("SOLD or OVERSOLD"), "{reason:?}: {why}");
    }
    for reason in [
        "restock",
        "UNSOLD order o1 (compensation)",
        "count correction",
    ] {
        assert_eq!(
            check_command("SKU-A", &adjust(reason)),
            Ok(()),
            "{reason:?}"
        );
    }
}

#[test]
fn a_reserve_holds_whole_or_reports_a_shortage_with_what_is_available() {
    let o = decide(stock(5), None, reserve("o1", 3), T0, &RULES).expect("applies");
    assert_eq!(
        o.stock.total(),
        StockLevel {
            on_hand: 5,
            held: 3
        }
    );
    assert_eq!(o.hold.as_ref().map(|h| h.state), Some(HoldState::Held));
    assert!(o.effects.contains(&Effect::Reserved {
        order_id: "o1".into(),
        status: ReservationStatus::Held,
        quantity: 3,
        available: 2,
        expires_at: Some(T0 + 60_000),
        warehouse: Some(DEFAULT_WAREHOUSE.into()),
    }));
    let o2 = decide(o.stock.clone(), None, reserve("o2", 3), T0, &RULES).expect("applies");
    assert_eq!(o2.stock, o.stock, "nothing is taken for a shortage");
    assert!(matches!(
        o2.effects.as_slice(),
        [Effect::Reserved {
            status: ReservationStatus::Shortage,
            available: 2,
            ..
        }]
    ));
}

#[test]
fn a_duplicate_reserve_never_takes_a_second_hold() {
    let o = decide(stock(5), None, reserve("o1", 3), T0, &RULES).expect("applies");
    let again = decide(
        o.stock.clone(),
        o.hold.clone(),
        reserve("o1", 3),
        T0,
        &RULES,
    )
    .expect("applies");
    assert_eq!(again.stock, o.stock);
    assert!(again.effects.is_empty());
}

#[test]
fn release_gives_the_units_back_and_a_release_before_its_reserve_refuses_the_reserve() {
    let o = decide(stock(5), None, reserve("o1", 3), T0, &RULES).expect("applies");
    let r = decide(
        o.stock.clone(),
        o.hold,
        Input::Release {
            order_id: "o1".into(),
            reason: ReleaseReason::Compensation,
        },
        T0,
        &RULES,
    )
    .expect("applies");
    assert_eq!(r.stock, stock(5));
    assert!(
        r.effects
            .iter()
            .any(|e| matches!(e, Effect::Released { quantity: 3, .. }))
    );

    let early = decide(
        stock(5),
        None,
        Input::Release {
            order_id: "o9".into(),
            reason: ReleaseReason::OrderCancelled,
        },
        T0,
        &RULES,
    )
    .expect("applies");
    assert!(early.effects.is_empty());
    let late = decide(
        early.stock.clone(),
        early.hold,
        reserve("o9", 1),
        T0,
        &RULES,
    )
    .expect("applies");
    assert_eq!(
        late.stock,
        stock(5),
        "the late reserve of a released order takes nothing"
    );
    assert!(late.effects.is_empty());
}

#[test]
fn a_lapsed_hold_is_released_as_expired_and_its_late_confirm_is_an_oversell_when_stock_is_gone() {
    let o = decide(stock(1), None, reserve("o1", 1), T0, &RULES).expect("applies");
    let expired = decide(
        o.stock.clone(),
        o.hold,
        Input::Expire {
            order_id: "o1".into(),
        },
        T0 + 60_000,
        &RULES,
    )
    .expect("applies");
    assert_eq!(expired.stock, stock(1));
    assert!(expired.effects.iter().any(|e| matches!(
        e,
        Effect::Released {
            reason: ReleaseReason::HoldExpired,
            ..
        }
    )));
    // Another order takes the unit.
    let other = decide(expired.stock.clone(), None, reserve("o2", 1), T0, &RULES).expect("applies");
    let confirmed = decide(
        other.stock.clone(),
        expired.hold.clone(),
        Input::Confirm {
            order_id: "o1".into(),
        },
        T0,
        &RULES,
    )
    .expect("applies");
    assert!(
        confirmed
            .effects
            .iter()
            .any(|e| matches!(e, Effect::Oversold { quantity: 1, .. }))
    );
    assert_eq!(
        confirmed.stock.total().on_hand,
        0,
        "allow: sold anyway, on hand below held"
    );
    assert_eq!(confirmed.stock.total().held, 1);

    let prevent = Rules {
        oversell: OversellPolicy::Prevent,
        ..RULES
    };
    let refused = decide(
        other.stock.clone(),
        expired.hold,
        Input::Confirm {
            order_id: "o1".into(),
        },
        T0,
        &prevent,
    )
    .expect("applies");
    assert_eq!(refused.stock, other.stock, "prevent: nothing sold");
    assert!(
        refused
            .effects
            .iter()
            .any(|e| matches!(e, Effect::Oversold { .. }))
    );
}

/// The answer a confirm gets on `inventory.reserved.v1` (what the saga waits for under prevent).
fn confirm_answer(effects: &[Effect]) -> Option<ReservationStatus> {
    effects.iter().find_map(|e| match e {
        Effect::Reserved { status, .. } => Some(*status),
        _ => None,
    })
}

#[test]
fn every_confirm_is_answered_sold_oversold_or_refused_and_a_refusal_is_final() {
    let confirm = || Input::Confirm {
        order_id: "o1".into(),
    };
    let prevent = Rules {
        oversell: OversellPolicy::Prevent,
        ..RULES
    };
    // A live hold: SOLD under either policy.
    for rules in [RULES, prevent] {
        let o = decide(stock(2), None, reserve("o1", 1), T0, &rules).expect("applies");
        let c = decide(o.stock.clone(), o.hold, confirm(), T0, &rules).expect("applies");
        assert_eq!(confirm_answer(&c.effects), Some(ReservationStatus::Sold));
    }
    // A lapsed hold whose unit went to another order.
    let lapsed = |rules: &Rules| {
        let o = decide(stock(1), None, reserve("o1", 1), T0, rules).expect("applies");
        let e = decide(
            o.stock.clone(),
            o.hold,
            Input::Expire {
                order_id: "o1".into(),
            },
            T0 + 60_000,
            rules,
        )
        .expect("applies");
        let other = decide(e.stock.clone(), None, reserve("o2", 1), T0, rules).expect("applies");
        (other.stock, e.hold)
    };
    let (s, h) = lapsed(&RULES);
    let allowed = decide(s, h, confirm(), T0, &RULES).expect("applies");
    assert_eq!(
        confirm_answer(&allowed.effects),
        Some(ReservationStatus::Oversold)
    );
    let (s, h) = lapsed(&prevent);
    let refused = decide(s, h, confirm(), T0, &prevent).expect("applies");
    assert_eq!(
        confirm_answer(&refused.effects),
        Some(ReservationStatus::SaleRefused)
    );
    assert_eq!(
        refused.hold.as_ref().map(|h| h.state),
        Some(HoldState::Ended(Ended::SaleRefused))
    );
    // A duplicate confirm of a refused sale neither sells nor counts a second oversell: it
    // repeats the refusal.
    let again = decide(
        refused.stock.clone(),
        refused.hold.clone(),
        confirm(),
        T0,
        &prevent,
    )
    .expect("applies");
    assert!(
        matches!(
            again.effects.as_slice(),
            [Effect::ConfirmRepeated {
                status: ReservationStatus::SaleRefused,
                ..
            }]
        ),
        "{:?}",
        again.effects
    );
    assert_eq!(again.stock, refused.stock);
    assert_eq!(again.hold, refused.hold);
}

#[test]
fn a_compensating_release_of_a_sold_hold_puts_the_units_back() {
    let o = decide(stock(4), None, reserve("o1", 3), T0, &RULES).expect("applies");
    let sold = decide(
        o.stock.clone(),
        o.hold,
        Input::Confirm {
            order_id: "o1".into(),
        },
        T0,
        &RULES,
    )
    .expect("applies");
    assert_eq!(sold.stock.total().on_hand, 1);
    // A customer's release does not undo a sale...
    let kept = decide(
        sold.stock.clone(),
        sold.hold.clone(),
        Input::Release {
            order_id: "o1".into(),
            reason: ReleaseReason::OrderCancelled,
        },
        T0,
        &RULES,
    )
    .expect("applies");
    assert_eq!(kept.stock, sold.stock);
    assert!(kept.effects.is_empty());
    // ...the saga's compensation (another line of the order was refused) does, once.
    let undone = decide(
        sold.stock.clone(),
        sold.hold,
        Input::Release {
            order_id: "o1".into(),
            reason: ReleaseReason::Compensation,
        },
        T0,
        &RULES,
    )
    .expect("applies");
    assert_eq!(undone.stock, stock(4));
    assert!(undone.effects.iter().any(|e| matches!(
        e,
        Effect::Adjusted {
            delta: 3,
            on_hand: 4,
            ..
        }
    )));
    let twice = decide(
        undone.stock.clone(),
        undone.hold,
        Input::Release {
            order_id: "o1".into(),
            reason: ReleaseReason::Compensation,
        },
        T0,
        &RULES,
    )
    .expect("applies");
    assert_eq!(twice.stock, stock(4));
    assert!(twice.effects.is_empty());
}

#[test]
fn confirm_turns_a_hold_into_a_sale_once() {
    let o = decide(stock(4), None, reserve("o1", 3), T0, &RULES).expect("applies");
    let c = decide(
        o.stock.clone(),
        o.hold,
        Input::Confirm {
            order_id: "o1".into(),
        },
        T0,
        &RULES,
    )
    .expect("applies");
    assert_eq!(
        c.stock.total(),
        StockLevel {
            on_hand: 1,
            held: 0
        }
    );
    let again = decide(
        c.stock.clone(),
        c.hold.clone(),
        Input::Confirm {
            order_id: "o1".into(),
        },
        T0,
        &RULES,
    )
    .expect("applies");
    assert_eq!(again.stock, c.stock);
    assert_eq!(again.hold, c.hold);
    assert_eq!(
        again.effects,
        [Effect::ConfirmRepeated {
            order_id: "o1".into(),
            status: ReservationStatus::Sold,
            quantity: 3,
            available: 1,
            warehouse: DEFAULT_WAREHOUSE.into(),
        }],
        "the second confirm changes nothing and repeats the first answer"
    );
    let err = decide(
        stock(1),
        None,
        Input::Confirm {
            order_id: "nobody".into(),
        },
        T0,
        &RULES,
    )
    .expect_err("no hold");
    assert!(matches!(err, Refusal::NothingToConfirm(_)));
}

#[test]
fn an_adjust_never_takes_stock_below_zero_or_below_what_is_held() {
    let held = SkuStock::single(
        DEFAULT_WAREHOUSE,
        StockLevel {
            on_hand: 5,
            held: 3,
        },
    );
    let err = decide(
        held.clone(),
        None,
        Input::Adjust {
            delta: -3,
            reason: "count".into(),
            warehouse: None,
        },
        T0,
        &RULES,
    )
    .expect_err("below held");
    assert!(matches!(err, Refusal::BelowHeld { .. }));
    let ok = decide(
        held,
        None,
        Input::Adjust {
            delta: 10,
            reason: "restock".into(),
            warehouse: None,
        },
        T0,
        &RULES,
    )
    .expect("applies");
    assert_eq!(ok.stock.total().on_hand, 15);
    assert!(decide(stock(1), None, reserve("o", 0), T0, &RULES).is_err());
    let _ = Hold {
        order_id: String::new(),
        quantity: 0,
        state: HoldState::Ended(Ended::Refused),
        expires_at: 0,
        warehouse: DEFAULT_WAREHOUSE.into(),
    };
}

#[test]
fn a_reserve_may_ask_for_its_own_ttl_clamped_into_the_configured_bounds() {
    let expires = |asked: Option<i64>| {
        let input = Input::Reserve {
            order_id: "o1".into(),
            quantity: 1,
            warehouse: None,
            hold_ttl_ms: asked,
        };
        let o = decide(stock(1), None, input, T0, &RULES).expect("applies");
        let at = o.hold.as_ref().map(|h| h.expires_at);
        assert!(o.effects.contains(&Effect::ScheduleExpiry {
            order_id: "o1".into(),
            at: at.expect("held"),
        }));
        at.expect("held") - T0
    };
    assert_eq!(
        expires(None),
        60_000,
        "no TTL asked: the configured default"
    );
    assert_eq!(expires(Some(30_000)), 30_000, "within bounds: as asked");
    assert_eq!(expires(Some(10_000)), 10_000, "the bounds are inclusive");
    assert_eq!(expires(Some(3_600_000)), 3_600_000);
    assert_eq!(expires(Some(1)), 10_000, "below: clamped up");
    assert_eq!(expires(Some(-5)), 10_000);
    assert_eq!(expires(Some(36_000_000)), 3_600_000, "above: clamped down");
}

mod warehouses {
    use super::*;

    fn adjust(warehouse: Option<&str>, delta: i64) -> Input {
        Input::Adjust {
            delta,
            reason: "restock".into(),
            warehouse: warehouse.map(str::to_owned),
        }
    }

    fn reserve_from(order: &str, quantity: i64, warehouse: Option<&str>) -> Input {
        Input::Reserve {
            order_id: order.into(),
            quantity,
            warehouse: warehouse.map(str::to_owned),
            hold_ttl_ms: None,
        }
    }

    /// default: 2, WH-A: 5, WH-B: 3.
    fn three_warehouses() -> SkuStock {
        let mut s = SkuStock::default();
        for (w, n) in [(None, 2), (Some("WH-A"), 5), (Some("WH-B"), 3)] {
            s = decide(s, None, adjust(w, n), T0, &RULES)
                .expect("applies")
                .stock;
        }
        s
    }

    fn held_from(o: &super::super::logic::Outcome) -> Option<String> {
        o.effects.iter().find_map(|e| match e {
            Effect::Reserved { warehouse, .. } => warehouse.clone(),
            _ => None,
        })
    }

    #[test]
    fn a_line_is_held_whole_from_the_preferred_warehouse_else_the_first_other_by_name() {
        let s = three_warehouses();
        assert_eq!(
            s.total(),
            StockLevel {
                on_hand: 10,
                held: 0
            }
        );
        let a = decide(s, None, reserve_from("o1", 3, Some("WH-B")), T0, &RULES).expect("ok");
        assert_eq!(held_from(&a).as_deref(), Some("WH-B"));
        assert_eq!(a.hold.as_ref().map(|h| h.warehouse.as_str()), Some("WH-B"));
        assert_eq!(
            a.stock.get("WH-B"),
            StockLevel {
                on_hand: 3,
                held: 3
            }
        );
        // WH-B has none left: the first other warehouse by name ("WH-A" < "default").
        let b = decide(
            a.stock.clone(),
            None,
            reserve_from("o2", 3, Some("WH-B")),
            T0,
            &RULES,
        )
        .expect("ok");
        assert_eq!(held_from(&b).as_deref(), Some("WH-A"));
        // No preference: by name too; WH-A (2 left) cannot cover 3, default (2) neither.
        let c = decide(
            b.stock.clone(),
            None,
            reserve_from("o3", 2, None),
            T0,
            &RULES,
        )
        .expect("ok");
        assert_eq!(held_from(&c).as_deref(), Some("WH-A"));
        // An unknown preferred warehouse is no obstacle.
        let d = decide(
            c.stock.clone(),
            None,
            reserve_from("o4", 1, Some("WH-Z")),
            T0,
            &RULES,
        )
        .expect("ok");
        assert_eq!(held_from(&d).as_deref(), Some(DEFAULT_WAREHOUSE));
        assert_eq!(
            d.stock.total(),
            StockLevel {
                on_hand: 10,
                held: 9
            }
        );
    }

    #[test]
    fn a_line_is_never_split_across_warehouses_and_its_shortage_says_the_most_one_could_hold() {
        let s = three_warehouses();
        let short = decide(s.clone(), None, reserve_from("o1", 6, None), T0, &RULES).expect("ok");
        assert_eq!(short.stock, s, "nothing is taken");
        assert!(matches!(
            short.effects.as_slice(),
            [Effect::Reserved {
                status: ReservationStatus::Shortage,
                available: 5,
                warehouse: None,
                ..
            }]
        ));
    }

    #[test]
    fn release_expiry_and_sale_act_on_the_holds_own_warehouse() {
        let s = three_warehouses();
        let a = decide(s, None, reserve_from("o1", 3, Some("WH-B")), T0, &RULES).expect("ok");
        let released = decide(
            a.stock.clone(),
            a.hold.clone(),
            Input::Release {
                order_id: "o1".into(),
                reason: ReleaseReason::OrderCancelled,
            },
            T0,
            &RULES,
        )
        .expect("ok");
        assert_eq!(
            released.stock.get("WH-B"),
            StockLevel {
                on_hand: 3,
                held: 0
            }
        );
        assert!(released.effects.iter().any(
            |e| matches!(e, Effect::Released { warehouse, .. } if warehouse.as_str() == "WH-B")
        ));
        let expired = decide(
            a.stock.clone(),
            a.hold.clone(),
            Input::Expire {
                order_id: "o1".into(),
            },
            T0,
            &RULES,
        )
        .expect("ok");
        assert_eq!(
            expired.stock.get("WH-B"),
            StockLevel {
                on_hand: 3,
                held: 0
            }
        );
        let sold = decide(
            a.stock.clone(),
            a.hold,
            Input::Confirm {
                order_id: "o1".into(),
            },
            T0,
            &RULES,
        )
        .expect("ok");
        assert_eq!(sold.stock.get("WH-B"), StockLevel::default());
        assert_eq!(
            sold.stock.get("WH-A"),
            StockLevel {
                on_hand: 5,
                held: 0
            }
        );
        assert!(sold.effects.iter().any(|e| matches!(
            e,
            Effect::Adjusted { delta: -3, on_hand: 7, warehouse, warehouse_on_hand: 0, .. }
                if warehouse.as_str() == "WH-B"
        )));
    }

    #[test]
    fn an_adjust_changes_one_warehouse_never_below_what_it_holds() {
        let s = three_warehouses();
        let a = decide(s, None, reserve_from("o1", 3, Some("WH-B")), T0, &RULES).expect("ok");
        // The SKU has 7 available in total, but WH-B holds all it has.
        let err = decide(a.stock.clone(), None, adjust(Some("WH-B"), -1), T0, &RULES)
            .expect_err("below held in WH-B");
        assert!(matches!(err, Refusal::BelowHeld { ref warehouse, .. } if warehouse == "WH-B"));
        let ok = decide(a.stock.clone(), None, adjust(None, -2), T0, &RULES).expect("ok");
        assert_eq!(ok.stock.get(DEFAULT_WAREHOUSE), StockLevel::default());
        assert!(matches!(
            ok.effects.as_slice(),
            [Effect::Adjusted {
                delta: -2,
                on_hand: 8,
                warehouse_on_hand: 0,
                ..
            }]
        ));
    }

    #[test]
    fn stock_and_holds_stored_before_warehouses_read_as_the_default_warehouses() {
        let stock: SkuStock =
            serde_json::from_str(r#"{"on_hand":5,"held":3}"#).expect("a legacy level reads");
        assert_eq!(
            stock.get(DEFAULT_WAREHOUSE),
            StockLevel {
                on_hand: 5,
                held: 3
            }
        );
        let hold: Hold =
            serde_json::from_str(r#"{"order_id":"o1","quantity":3,"state":"Held","expires_at":1}"#)
                .expect("a legacy hold reads");
        assert_eq!(hold.warehouse, DEFAULT_WAREHOUSE);
        // And the new form round-trips.
        let again: SkuStock =
            serde_json::from_slice(&super::super::state::to_json(&three_warehouses()))
                .expect("reads");
        assert_eq!(again, three_warehouses());
        // The legacy hold is released from the default warehouse.
        let released = decide(
            stock,
            Some(hold),
            Input::Release {
                order_id: "o1".into(),
                reason: ReleaseReason::OrderCancelled,
            },
            T0,
            &RULES,
        )
        .expect("ok");
        assert_eq!(
            released.stock.get(DEFAULT_WAREHOUSE),
            StockLevel {
                on_hand: 5,
                held: 0
            }
        );
    }
}

mod cassandra_writes {
    use keel_avro::records::*;

    use crate::inventory::sink::{
        Write, writes_for_adjusted, writes_for_released, writes_for_reserved,
    };

    const T0: i64 = 1_700_000_000_000;

    fn reserved(status: ReservationStatus, expires_at: Option<i64>) -> InventoryReserved {
        InventoryReserved {
            event_id: "e".into(),
            sku: "SKU".into(),
            occurred_at: T0,
            causation_id: "c".into(),
            correlation_id: "o1".into(),
            order_id: "o1".into(),
            status,
            quantity: 2,
            available: 3,
            expires_at,
            warehouse: Some("WH-2".into()),
            held: None,
            warehouse_held: None,
            held_version: None,
        }
    }

    #[test]
    fn a_hold_row_lives_exactly_as_long_as_the_hold_rounded_up_to_a_second() {
        let writes = writes_for_reserved(&reserved(ReservationStatus::Held, Some(T0 + 1_500)), T0);
        assert!(
            matches!(writes.as_slice(), [Write::Hold { ttl_s: 2, at_us, .. }] if *at_us == T0 * 1_000)
        );
        assert!(
            writes_for_reserved(&reserved(ReservationStatus::Held, Some(T0)), T0).is_empty(),
            "a lapsed hold writes nothing"
        );
        assert!(writes_for_reserved(&reserved(ReservationStatus::Shortage, None), T0).is_empty());
    }

    #[test]
    fn stock_rows_are_versioned_by_offset_so_same_millisecond_updates_keep_their_order() {
        let adjusted = |on_hand, reason: &str| InventoryAdjusted {
            event_id: "e".into(),
            sku: "SKU".into(),
            occurred_at: T0,
            causation_id: "c".into(),
            correlation_id: "o1".into(),
            delta: -1,
            on_hand,
            reason: reason.into(),
            warehouse: Some("WH-2".into()),
            warehouse_on_hand: Some(on_hand),
        };
        let first = writes_for_adjusted(&adjusted(1, "SOLD order o1"), 41);
        let second = writes_for_adjusted(&adjusted(0, "SOLD order o2"), 42);
        let version = |w: &[Write]| match w.first() {
            Some(Write::Stock { version, .. }) => *version,
            other => panic!("a stock write first, got {other:?}"),
        };
        assert!(
            version(&second) > version(&first),
            "the later event wins the tie"
        );
        assert!(
            first
                .iter()
                .any(|w| matches!(w, Write::DeleteHold { order_id, .. } if order_id == "o1"))
        );
    }

    #[test]
    fn a_sale_ends_the_hold_row_whatever_the_letter_case_of_its_reason_and_nothing_else_does() {
        let adjusted = |reason: &str| InventoryAdjusted {
            event_id: "e".into(),
            sku: "SKU".into(),
            occurred_at: T0,
            causation_id: "c".into(),
            correlation_id: "o1".into(),
            delta: -1,
            on_hand: 1,
            reason: reason.into(),
            warehouse: None,
            warehouse_on_hand: None,
        };
        let ends_hold = |reason: &str| {
            writes_for_adjusted(&adjusted(reason), 7)
                .iter()
                .any(|w| matches!(w, Write::DeleteHold { order_id, .. } if order_id == "o1"))
        };
        for sale in [
            "SOLD order o1",
            "OVERSOLD order o1",
            "oversold order o1",
            "Sold order o1",
            " SOLD order o1",
        ] {
            assert!(ends_hold(sale), "{sale:?}");
        }
        for other in ["restock", "UNSOLD order o1 (compensation)"] {
            assert!(!ends_hold(other), "{other:?}");
        }
    }

    #[test]
    fn hold_rows_and_stock_rows_carry_the_warehouse_and_old_events_mean_the_default_one() {
        let writes = writes_for_reserved(&reserved(ReservationStatus::Held, Some(T0 + 5_000)), T0);
        assert!(
            matches!(writes.as_slice(), [Write::Hold { warehouse, .. }] if warehouse.as_str() == "WH-2")
        );
        let legacy = InventoryReserved {
            warehouse: None,
            ..reserved(ReservationStatus::Held, Some(T0 + 5_000))
        };
        assert!(matches!(
            writes_for_reserved(&legacy, T0).as_slice(),
            [Write::Hold { warehouse, .. }] if warehouse.as_str() == DEFAULT_WAREHOUSE
        ));
        let adjusted = InventoryAdjusted {
            event_id: "e".into(),
            sku: "SKU".into(),
            occurred_at: T0,
            causation_id: "c".into(),
            correlation_id: "c".into(),
            delta: 4,
            on_hand: 10,
            reason: "restock".into(),
            warehouse: Some("WH-2".into()),
            warehouse_on_hand: Some(4),
        };
        let writes = writes_for_adjusted(&adjusted, 7);
        assert!(writes.contains(&Write::WarehouseStock {
            sku: "SKU".into(),
            warehouse: "WH-2".into(),
            on_hand: 4,
            at_ms: T0,
            version: 7,
        }));
        // An event from before warehouses: the total only.
        let old = InventoryAdjusted {
            warehouse: None,
            warehouse_on_hand: None,
            ..adjusted
        };
        assert!(matches!(
            writes_for_adjusted(&old, 8).as_slice(),
            [Write::Stock { on_hand: 10, .. }]
        ));
    }

    #[test]
    fn hold_events_write_the_skus_held_figures_they_carry_with_their_version() {
        let held = |held, version| Write::Held {
            sku: "SKU".into(),
            held,
            version,
        };
        let in_wh2 = |held, version| Write::WarehouseHeld {
            sku: "SKU".into(),
            warehouse: "WH-2".into(),
            held,
            version,
        };
        let hold = InventoryReserved {
            held: Some(5),
            warehouse_held: Some(3),
            held_version: Some(41),
            ..reserved(ReservationStatus::Held, Some(T0 + 5_000))
        };
        let writes = writes_for_reserved(&hold, T0);
        assert!(matches!(writes[0], Write::Hold { .. }), "{writes:?}");
        assert_eq!(writes[1..], [held(5, 41), in_wh2(3, 41)]);
        // A shortage writes no hold row, but the figures still (they are the current ones).
        let short = InventoryReserved {
            warehouse: None,
            held: Some(5),
            held_version: Some(42),
            ..reserved(ReservationStatus::Shortage, None)
        };
        assert_eq!(writes_for_reserved(&short, T0), [held(5, 42)]);
        let release = InventoryReleased {
            event_id: "e".into(),
            sku: "SKU".into(),
            occurred_at: T0,
            causation_id: "c".into(),
            correlation_id: "o1".into(),
            order_id: "o1".into(),
            quantity: 2,
            reason: ReleaseReason::HoldExpired,
            warehouse: Some("WH-2".into()),
            held: Some(3),
            warehouse_held: Some(1),
            held_version: Some(43),
        };
        let writes = writes_for_released(&release);
        assert!(matches!(writes[0], Write::DeleteHold { .. }), "{writes:?}");
        assert_eq!(writes[1..], [held(3, 43), in_wh2(1, 43)]);
        // Events from before inventory carried the figures: the hold row only.
        let old = InventoryReleased {
            held: None,
            warehouse_held: None,
            held_version: None,
            ..release
        };
        assert!(matches!(
            writes_for_released(&old).as_slice(),
            [Write::DeleteHold { .. }]
        ));
    }
}

#[test]
fn the_coordinators_confirm_sells_a_live_hold_and_leaves_any_other_alone() {
    let confirm_held = || Input::ConfirmHeld {
        order_id: "o1".into(),
    };
    // A live hold: sold, as by the saga's confirm.
    let o = decide(stock(4), None, reserve("o1", 3), T0, &RULES).expect("applies");
    let sold = decide(o.stock.clone(), o.hold, confirm_held(), T0, &RULES).expect("applies");
    assert_eq!(sold.hold.as_ref().map(|h| h.state), Some(HoldState::Sold));
    assert_eq!(confirm_answer(&sold.effects), Some(ReservationStatus::Sold));
    // No hold at all: nothing, and not refused (dead-lettered) either.
    let none = decide(stock(4), None, confirm_held(), T0, &RULES).expect("no error");
    assert_eq!(
        (none.stock, none.hold, none.effects),
        (stock(4), None, vec![])
    );
    // A lapsed hold: not sold (selling it late is the saga's decision).
    let expired = decide(
        o.stock.clone(),
        Some(Hold {
            order_id: "o1".into(),
            quantity: 3,
            state: HoldState::Ended(Ended::Expired),
            expires_at: T0,
            warehouse: DEFAULT_WAREHOUSE.into(),
        }),
        confirm_held(),
        T0,
        &RULES,
    )
    .expect("applies");
    assert_eq!(expired.stock, o.stock);
    assert!(expired.effects.is_empty(), "{:?}", expired.effects);
    assert_eq!(
        expired.hold.map(|h| h.state),
        Some(HoldState::Ended(Ended::Expired))
    );
    // Already sold (the saga came first): nothing, not even a repeated answer.
    let again = decide(
        sold.stock.clone(),
        sold.hold.clone(),
        confirm_held(),
        T0,
        &RULES,
    )
    .expect("applies");
    assert_eq!((again.stock, again.hold), (sold.stock, sold.hold));
    assert!(again.effects.is_empty());
}

#[test]
fn a_second_release_of_a_released_or_sold_hold_changes_nothing() {
    let release = |reason| Input::Release {
        order_id: "o1".into(),
        reason,
    };
    let o = decide(stock(4), None, reserve("o1", 3), T0, &RULES).expect("applies");
    // The coordinator's release (order cancelled) first, the saga's compensation second.
    let first = decide(
        o.stock.clone(),
        o.hold,
        release(ReleaseReason::OrderCancelled),
        T0,
        &RULES,
    )
    .expect("applies");
    assert_eq!(first.stock, stock(4));
    for reason in [ReleaseReason::Compensation, ReleaseReason::OrderCancelled] {
        let second = decide(
            first.stock.clone(),
            first.hold.clone(),
            release(reason),
            T0,
            &RULES,
        )
        .expect("applies");
        assert_eq!((&second.stock, &second.hold), (&first.stock, &first.hold));
        assert!(
            second.effects.is_empty(),
            "{reason:?}: {:?}",
            second.effects
        );
    }
    // A sold hold: a cancellation's release does not undo the sale.
    let o = decide(stock(4), None, reserve("o2", 1), T0, &RULES).expect("applies");
    let sold = decide(
        o.stock.clone(),
        o.hold,
        Input::Confirm {
            order_id: "o2".into(),
        },
        T0,
        &RULES,
    )
    .expect("applies");
    let late = decide(
        sold.stock.clone(),
        sold.hold.clone(),
        Input::Release {
            order_id: "o2".into(),
            reason: ReleaseReason::OrderCancelled,
        },
        T0,
        &RULES,
    )
    .expect("applies");
    assert_eq!((late.stock, late.hold), (sold.stock, sold.hold));
    assert!(late.effects.is_empty());
}

mod coordinator_rules {
    use super::super::coordinator::{
        Action, OrderEffect, OrderHolds, OrderInput, OrderOutcome, Short, decide_order,
    };
    use super::*;

    const KEEP: i64 = 7_200_000;

    fn reply(sku: &str, status: ReservationStatus, quantity: i64, api: bool) -> OrderInput {
        OrderInput::Reserved {
            sku: sku.into(),
            status,
            quantity,
            available: 1,
            all_or_nothing: api,
        }
    }

    /// Runs `inputs` from no state; the final state and every effect but the retention timer.
    fn run(inputs: Vec<OrderInput>) -> (Option<OrderHolds>, Vec<OrderEffect>) {
        let mut state = None;
        let mut fx = Vec::new();
        for input in inputs {
            let OrderOutcome { state: s, effects } = decide_order(state, input, T0, KEEP);
            state = s;
            fx.extend(
                effects
                    .into_iter()
                    .filter(|e| !matches!(e, OrderEffect::ScheduleForget { .. })),
            );
        }
        (state, fx)
    }

    fn cmd(sku: &str, action: Action) -> OrderEffect {
        OrderEffect::Command {
            sku: sku.into(),
            action,
        }
    }

    const COMPENSATE: Action = Action::Release(ReleaseReason::Compensation);
    const CANCEL: Action = Action::Release(ReleaseReason::OrderCancelled);

    #[test]
    fn an_api_reservation_with_a_short_line_releases_the_lines_held_before_and_after_it() {
        let (state, fx) = run(vec![
            reply("A", ReservationStatus::Held, 2, true),
            reply("B", ReservationStatus::Shortage, 3, true),
            reply("C", ReservationStatus::Held, 1, true),
        ]);
        assert_eq!(
            fx,
            [
                cmd("A", COMPENSATE),
                OrderEffect::Failed {
                    short: vec![(
                        "B".into(),
                        Short {
                            wanted: 3,
                            available: 1
                        }
                    )]
                },
                cmd("C", COMPENSATE),
            ]
        );
        let state = state.expect("kept");
        assert!(state.held.is_empty(), "{state:?}");
        // A duplicate shortage reply reports nothing new.
        let again = decide_order(
            Some(state.clone()),
            reply("B", ReservationStatus::Shortage, 3, true),
            T0,
            KEEP,
        );
        assert_eq!(again.state, Some(state));
        assert!(again.effects.is_empty(), "{:?}", again.effects);
    }

    #[test]
    fn a_reservation_whose_lines_are_all_held_keeps_them() {
        let (state, fx) = run(vec![
            reply("A", ReservationStatus::Held, 2, true),
            reply("B", ReservationStatus::Held, 3, true),
        ]);
        assert!(fx.is_empty(), "{fx:?}");
        assert_eq!(state.expect("kept").held.len(), 2);
    }

    #[test]
    fn the_sagas_own_shortage_is_left_to_the_saga() {
        let (state, fx) = run(vec![
            reply("A", ReservationStatus::Held, 2, false),
            reply("B", ReservationStatus::Shortage, 3, false),
        ]);
        assert!(fx.is_empty(), "the saga releases its own lines: {fx:?}");
        assert_eq!(state.expect("kept").held.keys().collect::<Vec<_>>(), ["A"]);
        // An order never seen keeps nothing for a reply that needs no memory.
        let (state, fx) = run(vec![
            reply("B", ReservationStatus::Shortage, 3, false),
            OrderInput::Released { sku: "B".into() },
            reply("B", ReservationStatus::Sold, 3, false),
        ]);
        assert_eq!((state, fx), (None, vec![]));
    }

    #[test]
    fn a_cancelled_order_releases_its_live_holds_once_and_any_hold_that_lands_later() {
        let (state, fx) = run(vec![
            reply("A", ReservationStatus::Held, 1, false),
            reply("B", ReservationStatus::Held, 1, false),
            // The saga released A already.
            OrderInput::Released { sku: "A".into() },
            OrderInput::Cancelled,
            OrderInput::Cancelled,
            reply("C", ReservationStatus::Held, 1, false),
            // A payment after the cancel confirms nothing.
            OrderInput::Authorized,
        ]);
        assert_eq!(fx, [cmd("B", CANCEL), cmd("C", CANCEL)]);
        assert!(state.expect("kept").cancelled);
    }

    #[test]
    fn an_authorized_payment_confirms_the_live_holds_once_and_a_later_cancel_releases_nothing_sold()
    {
        let (state, fx) = run(vec![
            reply("A", ReservationStatus::Held, 1, false),
            reply("B", ReservationStatus::Held, 1, false),
            // B lapsed: it is not the coordinator's to sell.
            OrderInput::Released { sku: "B".into() },
            OrderInput::Authorized,
            OrderInput::Authorized,
            reply("A", ReservationStatus::Sold, 1, false),
            OrderInput::Cancelled,
        ]);
        assert_eq!(fx, [cmd("A", Action::Confirm)]);
        assert!(state.expect("kept").held.is_empty());
        // The payment first: a hold that lands after it is confirmed too.
        let (_, fx) = run(vec![
            OrderInput::Authorized,
            reply("A", ReservationStatus::Held, 1, true),
        ]);
        assert_eq!(fx, [cmd("A", Action::Confirm)]);
    }

    #[test]
    fn a_changed_order_is_kept_for_the_retention_and_then_forgotten() {
        let o = decide_order(
            None,
            reply("A", ReservationStatus::Held, 1, false),
            T0,
            KEEP,
        );
        assert_eq!(o.effects, [OrderEffect::ScheduleForget { at: T0 + KEEP }]);
        let unchanged = decide_order(
            o.state.clone(),
            OrderInput::Released { sku: "Z".into() },
            T0,
            KEEP,
        );
        assert!(
            unchanged.effects.is_empty(),
            "nothing changed: no new timer"
        );
        let gone = decide_order(o.state, OrderInput::Forget, T0 + KEEP, KEEP);
        assert_eq!(
            gone,
            OrderOutcome {
                state: None,
                effects: vec![]
            }
        );
    }
}

mod driver {
    use std::time::Duration;

    use keel_topology::TestDriver;
    use keel_topology::serde::{Json, Utf8};
    use prometheus::Registry;

    use super::*;
    use crate::format::Format;
    use crate::inventory::{InventoryConfig, InventoryMetrics};
    use crate::topics;

    fn driver() -> (TestDriver, InventoryMetrics) {
        driver_with(10)
    }

    fn driver_with(hot_skus: usize) -> (TestDriver, InventoryMetrics) {
        let metrics = InventoryMetrics::register(&Registry::new()).expect("metrics");
        let config = InventoryConfig {
            hold_ttl_ms: 2_000,
            min_hold_ttl_ms: 500,
            max_hold_ttl_ms: 5_000,
            hot_skus,
            expiry_check_interval_ms: 100,
            oversell: OversellPolicy::Allow,
        };
        let t = crate::inventory::topology(
            &Format::Json,
            &crate::topics::Topics::default(),
            &config,
            metrics.clone(),
        )
        .expect("topology");
        (TestDriver::new(t).expect("driver"), metrics)
    }

    fn send(d: &mut TestDriver, id: &str, sku: &str, body: InventoryCommandBody) {
        let command = InventoryCommand {
            command_id: id.into(),
            sku: sku.into(),
            issued_at: T0,
            causation_id: "saga".into(),
            correlation_id: "o1".into(),
            command: body,
        };
        d.pipe(
            topics::INVENTORY_COMMANDS,
            &sku.to_owned(),
            &command,
            T0,
            &Utf8,
            &Json::new(),
        )
        .expect("processed");
    }

    #[test]
    fn holds_expire_on_the_wall_clock_and_the_expiry_survives_a_wiped_restart() {
        let (mut d, metrics) = driver();
        send(
            &mut d,
            "a1",
            "SKU-A",
            InventoryCommandBody::Adjust(AdjustStock {
                delta: 2,
                reason: "seed".into(),
                warehouse: None,
            }),
        );
        send(
            &mut d,
            "a1",
            "SKU-A",
            InventoryCommandBody::Adjust(AdjustStock {
                delta: 2,
                reason: "seed".into(),
                warehouse: None,
            }),
        );
        let adjusted: Vec<(String, InventoryAdjusted)> = d
            .read_output_as(topics::INVENTORY_ADJUSTED, &Utf8, &Json::new())
            .expect("decodes");
        assert_eq!(adjusted.len(), 1, "a duplicate adjust is applied once");
        send(
            &mut d,
            "r1",
            "SKU-A",
            InventoryCommandBody::Reserve(ReserveStock {
                order_id: "o1".into(),
                quantity: 2,
                warehouse: None,
                hold_ttl_ms: None,
            }),
        );
        let replies: Vec<(String, InventoryReserved)> = d
            .read_output_as(topics::INVENTORY_RESERVED, &Utf8, &Json::new())
            .expect("decodes");
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].0, "o1", "the reply is keyed by order id");
        assert_eq!(replies[0].1.status, ReservationStatus::Held);

        d.restart(true).expect("restored");
        // The first tick after a start only arms the wall-clock punctuator.
        d.advance_wall_clock(Duration::from_millis(100))
            .expect("ticks");
        d.advance_wall_clock(Duration::from_millis(1_000))
            .expect("ticks");
        let early: Vec<(String, InventoryReleased)> = d
            .read_output_as(topics::INVENTORY_RELEASED, &Utf8, &Json::new())
            .expect("decodes");
        assert!(early.is_empty(), "not before its TTL: {early:?}");
        d.advance_wall_clock(Duration::from_millis(1_000))
            .expect("ticks");
        let released: Vec<(String, InventoryReleased)> = d
            .read_output_as(topics::INVENTORY_RELEASED, &Utf8, &Json::new())
            .expect("decodes");
        assert_eq!(released.len(), 1, "{released:?}");
        assert_eq!(released[0].1.reason, ReleaseReason::HoldExpired);
        assert_eq!(metrics.holds.with_label_values(&["expired"]).get(), 1);

        send(
            &mut d,
            "r2",
            "SKU-A",
            InventoryCommandBody::Reserve(ReserveStock {
                order_id: "o2".into(),
                quantity: 2,
                warehouse: None,
                hold_ttl_ms: None,
            }),
        );
        let replies: Vec<(String, InventoryReserved)> = d
            .read_output_as(topics::INVENTORY_RESERVED, &Utf8, &Json::new())
            .expect("decodes");
        assert_eq!(
            replies[0].1.status,
            ReservationStatus::Held,
            "the expired units are back"
        );
    }

    #[test]
    fn a_hold_with_its_own_ttl_expires_at_that_ttl_not_the_default() {
        let (mut d, _) = driver();
        send(
            &mut d,
            "a1",
            "SKU-T",
            InventoryCommandBody::Adjust(AdjustStock {
                delta: 2,
                reason: "seed".into(),
                warehouse: None,
            }),
        );
        let reserve = |order: &str, ttl: Option<i64>| {
            InventoryCommandBody::Reserve(ReserveStock {
                order_id: order.into(),
                quantity: 1,
                warehouse: None,
                hold_ttl_ms: ttl,
            })
        };
        // 600 ms (within 500..=5000); 1 ms is clamped up to 500; none: the default 2 s.
        send(&mut d, "r1", "SKU-T", reserve("o-short", Some(600)));
        send(&mut d, "r2", "SKU-T", reserve("o-default", None));
        let replies: Vec<(String, InventoryReserved)> = d
            .read_output_as(topics::INVENTORY_RESERVED, &Utf8, &Json::new())
            .expect("decodes");
        let life: Vec<Option<i64>> = replies
            .iter()
            .map(|(_, r)| r.expires_at.map(|at| at - r.occurred_at))
            .collect();
        assert_eq!(life, [Some(600), Some(2_000)]);
        d.advance_wall_clock(Duration::from_millis(100))
            .expect("ticks");
        d.advance_wall_clock(Duration::from_millis(700))
            .expect("ticks");
        let released: Vec<(String, InventoryReleased)> = d
            .read_output_as(topics::INVENTORY_RELEASED, &Utf8, &Json::new())
            .expect("decodes");
        let orders: Vec<&str> = released.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(orders, ["o-short"], "only the short hold has lapsed");
        send(&mut d, "r3", "SKU-T", reserve("o-clamped", Some(1)));
        let replies: Vec<(String, InventoryReserved)> = d
            .read_output_as(topics::INVENTORY_RESERVED, &Utf8, &Json::new())
            .expect("decodes");
        assert_eq!(
            replies[0]
                .1
                .expires_at
                .map(|at| at - replies[0].1.occurred_at),
            Some(500),
            "clamped up to the minimum"
        );
    }

    #[test]
    fn events_name_the_warehouse_of_each_change_and_hold() {
        let (mut d, _) = driver();
        for (id, warehouse, delta) in [("a1", None, 1), ("a2", Some("WH-N"), 4)] {
            send(
                &mut d,
                id,
                "SKU-W",
                InventoryCommandBody::Adjust(AdjustStock {
                    delta,
                    reason: "seed".into(),
                    warehouse: warehouse.map(str::to_owned),
                }),
            );
        }
        let adjusted: Vec<(String, InventoryAdjusted)> = d
            .read_output_as(topics::INVENTORY_ADJUSTED, &Utf8, &Json::new())
            .expect("decodes");
        let seen: Vec<_> = adjusted
            .iter()
            .map(|(_, e)| (e.warehouse.as_deref(), e.warehouse_on_hand, e.on_hand))
            .collect();
        assert_eq!(
            seen,
            [
                (Some(DEFAULT_WAREHOUSE), Some(1), 1),
                (Some("WH-N"), Some(4), 5)
            ]
        );
        send(
            &mut d,
            "r1",
            "SKU-W",
            InventoryCommandBody::Reserve(ReserveStock {
                order_id: "o1".into(),
                quantity: 2,
                warehouse: Some(DEFAULT_WAREHOUSE.into()),
                hold_ttl_ms: None,
            }),
        );
        let replies: Vec<(String, InventoryReserved)> = d
            .read_output_as(topics::INVENTORY_RESERVED, &Utf8, &Json::new())
            .expect("decodes");
        assert_eq!(replies.len(), 1);
        assert_eq!(
            (replies[0].1.status, replies[0].1.warehouse.as_deref()),
            (ReservationStatus::Held, Some("WH-N")),
            "the default warehouse has 1: the line comes whole from WH-N"
        );
        send(
            &mut d,
            "x1",
            "SKU-W",
            InventoryCommandBody::Release(ReleaseStock {
                order_id: "o1".into(),
                reason: ReleaseReason::OrderCancelled,
            }),
        );
        let released: Vec<(String, InventoryReleased)> = d
            .read_output_as(topics::INVENTORY_RELEASED, &Utf8, &Json::new())
            .expect("decodes");
        assert_eq!(released[0].1.warehouse.as_deref(), Some("WH-N"));
    }

    #[test]
    fn reservations_clamped_ttls_and_the_hottest_skus_stock_are_measured() {
        let (mut d, metrics) = driver_with(1);
        for sku in ["SKU-A", "SKU-B"] {
            send(
                &mut d,
                &format!("seed-{sku}"),
                sku,
                InventoryCommandBody::Adjust(AdjustStock {
                    delta: 5,
                    reason: "seed".into(),
                    warehouse: None,
                }),
            );
        }
        let reserve = |order: &str, ttl: Option<i64>| {
            InventoryCommandBody::Reserve(ReserveStock {
                order_id: order.into(),
                quantity: 1,
                warehouse: None,
                hold_ttl_ms: ttl,
            })
        };
        let shown = |m: &InventoryMetrics| -> Vec<(String, i64)> {
            use prometheus::core::Collector;
            let mut out: Vec<(String, i64)> = m
                .stock_available
                .collect()
                .iter()
                .flat_map(|f| f.get_metric().to_vec())
                .map(|s| {
                    let sku = s.get_label()[0].value().to_owned();
                    #[allow(clippy::cast_possible_truncation)]
                    let v = s.get_gauge().value() as i64;
                    (sku, v)
                })
                .collect();
            out.sort();
            out
        };
        send(&mut d, "a1", "SKU-A", reserve("o1", Some(60_000)));
        send(&mut d, "a1", "SKU-A", reserve("o1", Some(60_000)));
        send(&mut d, "a2", "SKU-A", reserve("o2", None));
        send(&mut d, "b1", "SKU-B", reserve("o3", None));
        assert_eq!(
            metrics.reservations.get(),
            3,
            "the duplicate is not counted"
        );
        assert_eq!(
            metrics.ttl_clamped.get(),
            2,
            "60 s is above the 5 s maximum"
        );
        assert_eq!(shown(&metrics), [("SKU-A".to_owned(), 3)], "the top 1 only");
        // A release changes SKU-A's availability: its series follows.
        send(
            &mut d,
            "x1",
            "SKU-A",
            InventoryCommandBody::Release(ReleaseStock {
                order_id: "o1".into(),
                reason: ReleaseReason::OrderCancelled,
            }),
        );
        assert_eq!(shown(&metrics), [("SKU-A".to_owned(), 4)]);
        // SKU-B overtakes: SKU-A's series goes, SKU-B's comes.
        send(&mut d, "b2", "SKU-B", reserve("o4", None));
        send(&mut d, "b3", "SKU-B", reserve("o5", None));
        assert_eq!(shown(&metrics), [("SKU-B".to_owned(), 2)]);
    }

    #[test]
    fn a_command_whose_key_is_not_its_sku_is_dead_lettered() {
        let (mut d, _) = driver();
        let command = InventoryCommand {
            command_id: "x".into(),
            sku: "SKU-B".into(),
            issued_at: T0,
            causation_id: "saga".into(),
            correlation_id: "o1".into(),
            command: InventoryCommandBody::Adjust(AdjustStock {
                delta: 1,
                reason: "r".into(),
                warehouse: None,
            }),
        };
        d.pipe(
            topics::INVENTORY_COMMANDS,
            &"SKU-A".to_owned(),
            &command,
            T0,
            &Utf8,
            &Json::new(),
        )
        .expect("dead-lettered");
        assert_eq!(d.dead_letters().len(), 1);
    }

    fn dead_reasons(d: &mut TestDriver) -> Vec<String> {
        d.dead_letters()
            .iter()
            .map(|r| {
                keel_topology::task::dead_letter_reason(&r.headers)
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn a_command_whose_sku_breaks_the_apis_sku_rule_is_dead_lettered_and_emits_nothing() {
        let (mut d, _) = driver();
        let long = "S".repeat(65);
        let adjust = || {
            InventoryCommandBody::Adjust(AdjustStock {
                delta: 5,
                reason: "seed".into(),
                warehouse: None,
            })
        };
        let reserve = || {
            InventoryCommandBody::Reserve(ReserveStock {
                order_id: "o1".into(),
                quantity: 1,
                warehouse: None,
                hold_ttl_ms: None,
            })
        };
        for (i, sku) in ["", "WS X", "tab\tsku", long.as_str()]
            .into_iter()
            .enumerate()
        {
            send(&mut d, &format!("adjust-{i}"), sku, adjust());
            send(&mut d, &format!("reserve-{i}"), sku, reserve());
            let why = dead_reasons(&mut d);
            assert_eq!(why.len(), 2, "{sku:?}: {why:?}");
            assert!(
                why.iter().all(|w| w.contains("sku") && w.contains("64")),
                "{why:?}"
            );
        }
        assert!(d.read_output(topics::INVENTORY_ADJUSTED).is_empty());
        assert!(d.read_output(topics::INVENTORY_RESERVED).is_empty());
        // The rule's edge: 64 characters are a SKU.
        send(&mut d, "adjust-64", &"S".repeat(64), adjust());
        assert!(dead_reasons(&mut d).is_empty());
        assert_eq!(d.read_output(topics::INVENTORY_ADJUSTED).len(), 1);
    }

    #[test]
    fn an_adjust_posing_as_a_sale_is_dead_lettered_in_any_letter_case_and_counts_no_sale() {
        let (mut d, metrics) = driver();
        let adjust = |reason: &str| {
            InventoryCommandBody::Adjust(AdjustStock {
                delta: 5,
                reason: reason.into(),
                warehouse: None,
            })
        };
        for (i, reason) in ["SOLD order o1", "oversold order o1", "Sold order o1"]
            .into_iter()
            .enumerate()
        {
            send(&mut d, &format!("adjust-{i}"), "SKU-A", adjust(reason));
            let why = dead_reasons(&mut d);
            assert_eq!(why.len(), 1, "{reason:?}: {why:?}");
            assert!(why[0].contains("SOLD or OVERSOLD"), "{why:?}");
        }
        assert!(d.read_output(topics::INVENTORY_ADJUSTED).is_empty());
        assert_eq!(metrics.holds.with_label_values(&["sold"]).get(), 0);
        send(&mut d, "restock", "SKU-A", adjust("restock"));
        assert!(dead_reasons(&mut d).is_empty());
        assert_eq!(d.read_output(topics::INVENTORY_ADJUSTED).len(), 1);
    }

    #[test]
    fn an_inventory_command_on_a_partition_its_sku_does_not_hash_to_is_dead_lettered() {
        const PARTITIONS: i32 = 3;
        let metrics = InventoryMetrics::register(&Registry::new()).expect("metrics");
        let t = crate::inventory::topology(
            &Format::Json,
            &crate::topics::Topics::default(),
            &InventoryConfig::default(),
            metrics,
        )
        .expect("topology");
        let config = keel_topology::DriverConfig {
            partitions: [(topics::INVENTORY_COMMANDS.to_owned(), PARTITIONS)].into(),
            ..keel_topology::DriverConfig::default()
        };
        let mut d = TestDriver::with_config(t, config).expect("driver");
        let command = InventoryCommand {
            command_id: "a1".into(),
            sku: "SKU-A".into(),
            issued_at: T0,
            causation_id: "ops".into(),
            correlation_id: "a1".into(),
            command: InventoryCommandBody::Adjust(AdjustStock {
                delta: 5,
                reason: "seed".into(),
                warehouse: None,
            }),
        };
        let bytes = serde_json::to_vec(&command).expect("json");
        let right = keel_topology::default_partition(b"SKU-A", PARTITIONS);
        for partition in [(right + 1) % PARTITIONS, right] {
            d.pipe_to_partition(
                topics::INVENTORY_COMMANDS,
                partition,
                Some(b"SKU-A"),
                Some(&bytes),
                T0,
                keel_topology::Headers::default(),
            )
            .expect("processed");
        }
        let why = dead_reasons(&mut d);
        assert_eq!(why.len(), 1, "only the misplaced copy: {why:?}");
        assert!(
            why[0].contains(&format!("partition {right}")) && why[0].contains("murmur2"),
            "{}",
            why[0]
        );
        assert_eq!(
            d.read_output(topics::INVENTORY_ADJUSTED).len(),
            1,
            "the copy on the SKU's own partition is applied"
        );
    }

    /// A reserve command as `POST /inventory/reserve` (`api`) or the saga writes it.
    fn reserve_as(d: &mut TestDriver, order: &str, sku: &str, quantity: i32, api: bool) {
        let command = InventoryCommand {
            command_id: format!("reserve/{order}/{sku}"),
            sku: sku.into(),
            issued_at: T0,
            causation_id: "test".into(),
            correlation_id: if api {
                format!("{RESERVATION_CORRELATION_PREFIX}{order}")
            } else {
                order.into()
            },
            command: InventoryCommandBody::Reserve(ReserveStock {
                order_id: order.into(),
                quantity,
                warehouse: None,
                hold_ttl_ms: None,
            }),
        };
        d.pipe(
            topics::INVENTORY_COMMANDS,
            &sku.to_owned(),
            &command,
            T0,
            &Utf8,
            &Json::new(),
        )
        .expect("processed");
    }

    /// What went round: every record written to the inventory topics, fed back to whoever
    /// reads them (as Kafka would) until nothing more is written.
    #[derive(Default)]
    struct Round {
        reserved: Vec<InventoryReserved>,
        released: Vec<InventoryReleased>,
        commands: Vec<InventoryCommand>,
        adjusted: Vec<InventoryAdjusted>,
    }

    fn pump(d: &mut TestDriver) -> Round {
        let mut round = Round::default();
        let json = |r: &keel_topology::OutRecord| r.value.clone().expect("a value");
        loop {
            let mut moved = false;
            for topic in [
                topics::INVENTORY_RESERVED,
                topics::INVENTORY_RELEASED,
                topics::INVENTORY_COMMANDS,
            ] {
                for r in d.read_output(topic) {
                    moved = true;
                    let bytes = json(&r);
                    match topic {
                        topics::INVENTORY_RESERVED => round
                            .reserved
                            .push(serde_json::from_slice(&bytes).expect("reserved")),
                        topics::INVENTORY_RELEASED => round
                            .released
                            .push(serde_json::from_slice(&bytes).expect("released")),
                        _ => round
                            .commands
                            .push(serde_json::from_slice(&bytes).expect("command")),
                    }
                    d.pipe_raw(topic, r.key.as_deref(), Some(&bytes), r.timestamp)
                        .expect("fed back");
                }
            }
            if !moved {
                break;
            }
        }
        round.adjusted = d
            .read_output_as::<String, InventoryAdjusted>(
                topics::INVENTORY_ADJUSTED,
                &Utf8,
                &Json::new(),
            )
            .expect("decodes")
            .into_iter()
            .map(|(_, e)| e)
            .collect();
        round
    }

    fn held(d: &TestDriver, sku: &str) -> StockLevel {
        let bytes = d
            .kv_get(crate::inventory::state::STOCK_STORE, sku.as_bytes())
            .expect("reads")
            .expect("stocked");
        serde_json::from_slice::<SkuStock>(&bytes)
            .expect("stock")
            .total()
    }

    fn seed(d: &mut TestDriver, sku: &str, units: i32) {
        send(
            d,
            &format!("seed-{sku}"),
            sku,
            InventoryCommandBody::Adjust(AdjustStock {
                delta: units,
                reason: "seed".into(),
                warehouse: None,
            }),
        );
        let _ = d.read_output(topics::INVENTORY_ADJUSTED);
    }

    fn cancelled(d: &mut TestDriver, order: &str) {
        let e = OrderStatusChanged {
            event_id: format!("cancelled/{order}"),
            order_id: order.into(),
            occurred_at: T0,
            causation_id: "saga".into(),
            correlation_id: order.into(),
            from_status: OrderStatus::Pending,
            to_status: OrderStatus::Cancelled,
            reason: Some("customer".into()),
        };
        d.pipe(
            topics::ORDER_STATUS_CHANGED,
            &order.to_owned(),
            &e,
            T0,
            &Utf8,
            &Json::new(),
        )
        .expect("processed");
    }

    fn authorized(d: &mut TestDriver, order: &str) {
        let e = PaymentAuthorized {
            event_id: format!("authorized/{order}"),
            payment_id: format!("pay-{order}"),
            occurred_at: T0,
            causation_id: "psp".into(),
            correlation_id: order.into(),
            order_id: order.into(),
            amount: Money::new(100, "EUR"),
            psp_reference: "psp-1".into(),
        };
        d.pipe(
            topics::PAYMENT_AUTHORIZED,
            &order.to_owned(),
            &e,
            T0,
            &Utf8,
            &Json::new(),
        )
        .expect("processed");
    }

    #[test]
    fn an_api_reservation_with_a_short_line_ends_with_nothing_held_on_any_sku() {
        let (mut d, metrics) = driver();
        seed(&mut d, "SKU-A", 5);
        seed(&mut d, "SKU-B", 1);
        // The held line answers first: it is released when the short one answers.
        reserve_as(&mut d, "o1", "SKU-A", 2, true);
        reserve_as(&mut d, "o1", "SKU-B", 3, true);
        let round = pump(&mut d);
        let statuses: Vec<(&str, ReservationStatus)> = round
            .reserved
            .iter()
            .map(|r| (r.sku.as_str(), r.status))
            .collect();
        assert_eq!(
            statuses,
            [
                ("SKU-A", ReservationStatus::Held),
                ("SKU-B", ReservationStatus::Shortage)
            ]
        );
        let short = &round.reserved[1];
        assert_eq!((short.quantity, short.available), (3, 1), "what is missing");
        assert_eq!(round.released.len(), 1, "{:?}", round.released);
        assert_eq!(round.released[0].sku, "SKU-A");
        assert_eq!(round.released[0].reason, ReleaseReason::Compensation);
        assert_eq!(held(&d, "SKU-A").held, 0);
        assert_eq!(held(&d, "SKU-B").held, 0);

        // The short line answers first: the held one is released when it lands.
        reserve_as(&mut d, "o2", "SKU-B", 3, true);
        reserve_as(&mut d, "o2", "SKU-A", 2, true);
        let round = pump(&mut d);
        assert_eq!(round.released.len(), 1, "{:?}", round.released);
        assert_eq!(held(&d, "SKU-A").held, 0);
        assert_eq!(metrics.coordinator.with_label_values(&["failed"]).get(), 2);

        // A retry of the failed reservation is a duplicate: still nothing held.
        reserve_as(&mut d, "o1", "SKU-A", 2, true);
        let round = pump(&mut d);
        assert!(round.reserved.is_empty() && round.commands.is_empty());
        assert_eq!(held(&d, "SKU-A").held, 0);
    }

    #[test]
    fn a_sagas_reservation_is_not_coordinated_and_an_api_one_held_whole_stays_held() {
        let (mut d, _) = driver();
        seed(&mut d, "SKU-A", 5);
        seed(&mut d, "SKU-B", 1);
        reserve_as(&mut d, "o1", "SKU-A", 2, false);
        reserve_as(&mut d, "o1", "SKU-B", 3, false);
        let round = pump(&mut d);
        assert!(
            round
                .commands
                .iter()
                .all(|c| c.sku == "SKU-A" || c.sku == "SKU-B")
                && round.released.is_empty(),
            "the saga releases its own order's lines: {:?}",
            round.released
        );
        assert_eq!(held(&d, "SKU-A").held, 2);

        reserve_as(&mut d, "o2", "SKU-A", 1, true);
        reserve_as(&mut d, "o2", "SKU-B", 1, true);
        let round = pump(&mut d);
        assert!(round.released.is_empty(), "{:?}", round.released);
        assert_eq!((held(&d, "SKU-A").held, held(&d, "SKU-B").held), (3, 1));
    }

    #[test]
    fn a_cancelled_order_releases_its_holds_once_whichever_release_comes_first() {
        let (mut d, _) = driver();
        seed(&mut d, "SKU-A", 5);
        seed(&mut d, "SKU-B", 5);
        reserve_as(&mut d, "o1", "SKU-A", 2, false);
        reserve_as(&mut d, "o1", "SKU-B", 1, false);
        pump(&mut d);
        // order.status.changed first, then the saga's own compensation.
        cancelled(&mut d, "o1");
        let round = pump(&mut d);
        let mut released: Vec<(&str, ReleaseReason)> = round
            .released
            .iter()
            .map(|r| (r.sku.as_str(), r.reason))
            .collect();
        released.sort_by_key(|(sku, _)| *sku);
        assert_eq!(
            released,
            [
                ("SKU-A", ReleaseReason::OrderCancelled),
                ("SKU-B", ReleaseReason::OrderCancelled)
            ]
        );
        for sku in ["SKU-A", "SKU-B"] {
            send(
                &mut d,
                &format!("saga-release-{sku}"),
                sku,
                InventoryCommandBody::Release(ReleaseStock {
                    order_id: "o1".into(),
                    reason: ReleaseReason::Compensation,
                }),
            );
        }
        cancelled(&mut d, "o1");
        let round = pump(&mut d);
        assert!(round.released.is_empty(), "{:?}", round.released);
        assert!(round.commands.is_empty(), "{:?}", round.commands);
        assert_eq!(
            (held(&d, "SKU-A"), held(&d, "SKU-B")),
            (
                StockLevel {
                    on_hand: 5,
                    held: 0
                },
                StockLevel {
                    on_hand: 5,
                    held: 0
                }
            )
        );
        assert!(d.dead_letters().is_empty());
    }

    #[test]
    fn an_authorized_payment_confirms_the_holds_once_whichever_confirm_comes_first() {
        let (mut d, _) = driver();
        seed(&mut d, "SKU-A", 5);
        let saga_confirm = |d: &mut TestDriver, order: &str| {
            send(
                d,
                &format!("saga-confirm-{order}"),
                "SKU-A",
                InventoryCommandBody::Confirm(ConfirmReservation {
                    order_id: order.into(),
                }),
            );
        };
        // payment.authorized first: the coordinator sells; the saga's confirm, second, gets
        // the same answer again and sells nothing more.
        reserve_as(&mut d, "o1", "SKU-A", 2, false);
        pump(&mut d);
        authorized(&mut d, "o1");
        let first = pump(&mut d);
        saga_confirm(&mut d, "o1");
        let second = pump(&mut d);
        let sold: Vec<ReservationStatus> = first
            .reserved
            .iter()
            .chain(&second.reserved)
            .map(|r| r.status)
            .collect();
        assert_eq!(sold, [ReservationStatus::Sold, ReservationStatus::Sold]);
        assert_eq!(first.adjusted.len() + second.adjusted.len(), 1, "sold once");
        assert_eq!(
            held(&d, "SKU-A"),
            StockLevel {
                on_hand: 3,
                held: 0
            }
        );

        // The saga's confirm first: the payment seen after it confirms nothing.
        reserve_as(&mut d, "o2", "SKU-A", 1, false);
        pump(&mut d);
        saga_confirm(&mut d, "o2");
        pump(&mut d);
        authorized(&mut d, "o2");
        let late = pump(&mut d);
        assert!(late.commands.is_empty() && late.adjusted.is_empty());
        assert_eq!(
            held(&d, "SKU-A"),
            StockLevel {
                on_hand: 2,
                held: 0
            }
        );

        // A cancelled order's payment confirms nothing; a lapsed hold is not the
        // coordinator's to sell.
        reserve_as(&mut d, "o3", "SKU-A", 1, false);
        pump(&mut d);
        cancelled(&mut d, "o3");
        pump(&mut d);
        authorized(&mut d, "o3");
        let after_cancel = pump(&mut d);
        assert!(after_cancel.commands.is_empty() && after_cancel.adjusted.is_empty());
        assert_eq!(
            held(&d, "SKU-A"),
            StockLevel {
                on_hand: 2,
                held: 0
            }
        );
        assert!(d.dead_letters().is_empty());
    }

    #[test]
    fn the_coordinator_forgets_an_order_after_its_retention() {
        let (mut d, _) = driver();
        seed(&mut d, "SKU-A", 5);
        reserve_as(&mut d, "o1", "SKU-A", 1, false);
        pump(&mut d);
        let orders = crate::inventory::coordinator::ORDERS_STORE;
        assert!(d.kv_get(orders, b"o1").expect("reads").is_some());
        // Retention: 2 x max_hold_ttl_ms (5 s in this driver).
        d.advance_wall_clock(Duration::from_millis(100))
            .expect("ticks");
        d.advance_wall_clock(Duration::from_millis(10_100))
            .expect("ticks");
        assert!(d.kv_get(orders, b"o1").expect("reads").is_none());
    }

    #[test]
    fn hold_events_carry_the_skus_held_figures_after_them_in_increasing_versions() {
        let (mut d, _) = driver();
        let body = |w: &str, delta| {
            InventoryCommandBody::Adjust(AdjustStock {
                delta,
                reason: "seed".into(),
                warehouse: Some(w.into()),
            })
        };
        send(&mut d, "a1", "SKU-H", body("WH-A", 5));
        send(&mut d, "a2", "SKU-H", body("WH-B", 5));
        let reserve = |order: &str, quantity, w: &str| {
            InventoryCommandBody::Reserve(ReserveStock {
                order_id: order.into(),
                quantity,
                warehouse: Some(w.into()),
                hold_ttl_ms: Some(1_000),
            })
        };
        send(&mut d, "r1", "SKU-H", reserve("o1", 2, "WH-A"));
        send(&mut d, "r2", "SKU-H", reserve("o2", 1, "WH-B"));
        send(&mut d, "r3", "SKU-H", reserve("o3", 9, "WH-A"));
        send(
            &mut d,
            "x1",
            "SKU-H",
            InventoryCommandBody::Release(ReleaseStock {
                order_id: "o1".into(),
                reason: ReleaseReason::OrderCancelled,
            }),
        );
        let reserved: Vec<(String, InventoryReserved)> = d
            .read_output_as(topics::INVENTORY_RESERVED, &Utf8, &Json::new())
            .expect("decodes");
        let figures: Vec<_> = reserved
            .iter()
            .map(|(_, e)| (e.status, e.held, e.warehouse_held))
            .collect();
        assert_eq!(
            figures,
            [
                (ReservationStatus::Held, Some(2), Some(2)),
                (ReservationStatus::Held, Some(3), Some(1)),
                (ReservationStatus::Shortage, Some(3), None),
            ]
        );
        let released: Vec<(String, InventoryReleased)> = d
            .read_output_as(topics::INVENTORY_RELEASED, &Utf8, &Json::new())
            .expect("decodes");
        assert_eq!(released.len(), 1, "{released:?}");
        assert_eq!(
            (released[0].1.held, released[0].1.warehouse_held),
            (Some(1), Some(0))
        );
        // The expiry of o2 (WH-B): nothing held any more.
        d.advance_wall_clock(Duration::from_millis(100))
            .expect("ticks");
        d.advance_wall_clock(Duration::from_millis(2_000))
            .expect("ticks");
        let expired: Vec<(String, InventoryReleased)> = d
            .read_output_as(topics::INVENTORY_RELEASED, &Utf8, &Json::new())
            .expect("decodes");
        assert_eq!(expired.len(), 1, "{expired:?}");
        assert_eq!(expired[0].1.reason, ReleaseReason::HoldExpired);
        assert_eq!(
            (expired[0].1.held, expired[0].1.warehouse_held),
            (Some(0), Some(0))
        );
        let versions: Vec<i64> = reserved
            .iter()
            .map(|(_, e)| e.held_version)
            .chain(released.iter().chain(&expired).map(|(_, e)| e.held_version))
            .map(|v| v.expect("a version"))
            .collect();
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "versions strictly increase: {versions:?}"
        );
    }
}
