//! Inventory: pure transitions, then the topology through the test driver.

use keel_avro::records::*;

use super::logic::{Effect, Input, OversellPolicy, Refusal, Rules, decide};
use super::state::{Ended, Hold, HoldState, StockLevel};

const T0: i64 = 1_700_000_000_000;
const RULES: Rules = Rules {
    hold_ttl_ms: 60_000,
    oversell: OversellPolicy::Allow,
};

fn reserve(order: &str, quantity: i64) -> Input {
    Input::Reserve {
        order_id: order.into(),
        quantity,
    }
}

fn stock(on_hand: i64) -> StockLevel {
    StockLevel { on_hand, held: 0 }
}

#[test]
fn a_reserve_holds_whole_or_reports_a_shortage_with_what_is_available() {
    let o = decide(stock(5), None, reserve("o1", 3), T0, &RULES).expect("applies");
    assert_eq!(
        o.stock,
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
    }));
    let o2 = decide(o.stock, None, reserve("o2", 3), T0, &RULES).expect("applies");
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
    let again = decide(o.stock, o.hold.clone(), reserve("o1", 3), T0, &RULES).expect("applies");
    assert_eq!(again.stock, o.stock);
    assert!(again.effects.is_empty());
}

#[test]
fn release_gives_the_units_back_and_a_release_before_its_reserve_refuses_the_reserve() {
    let o = decide(stock(5), None, reserve("o1", 3), T0, &RULES).expect("applies");
    let r = decide(
        o.stock,
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
    let late = decide(early.stock, early.hold, reserve("o9", 1), T0, &RULES).expect("applies");
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
        o.stock,
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
    let other = decide(expired.stock, None, reserve("o2", 1), T0, &RULES).expect("applies");
    let confirmed = decide(
        other.stock,
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
        confirmed.stock.on_hand, 0,
        "allow: sold anyway, on hand below held"
    );
    assert_eq!(confirmed.stock.held, 1);

    let prevent = Rules {
        oversell: OversellPolicy::Prevent,
        ..RULES
    };
    let refused = decide(
        other.stock,
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
        let c = decide(o.stock, o.hold, confirm(), T0, &rules).expect("applies");
        assert_eq!(confirm_answer(&c.effects), Some(ReservationStatus::Sold));
    }
    // A lapsed hold whose unit went to another order.
    let lapsed = |rules: &Rules| {
        let o = decide(stock(1), None, reserve("o1", 1), T0, rules).expect("applies");
        let e = decide(
            o.stock,
            o.hold,
            Input::Expire {
                order_id: "o1".into(),
            },
            T0 + 60_000,
            rules,
        )
        .expect("applies");
        let other = decide(e.stock, None, reserve("o2", 1), T0, rules).expect("applies");
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
    // A duplicate confirm of a refused sale neither sells nor counts a second oversell.
    let again = decide(refused.stock, refused.hold, confirm(), T0, &prevent).expect("applies");
    assert!(again.effects.is_empty(), "{:?}", again.effects);
    assert_eq!(again.stock, refused.stock);
}

#[test]
fn a_compensating_release_of_a_sold_hold_puts_the_units_back() {
    let o = decide(stock(4), None, reserve("o1", 3), T0, &RULES).expect("applies");
    let sold = decide(
        o.stock,
        o.hold,
        Input::Confirm {
            order_id: "o1".into(),
        },
        T0,
        &RULES,
    )
    .expect("applies");
    assert_eq!(sold.stock.on_hand, 1);
    // A customer's release does not undo a sale...
    let kept = decide(
        sold.stock,
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
        sold.stock,
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
        undone.stock,
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
        o.stock,
        o.hold,
        Input::Confirm {
            order_id: "o1".into(),
        },
        T0,
        &RULES,
    )
    .expect("applies");
    assert_eq!(
        c.stock,
        StockLevel {
            on_hand: 1,
            held: 0
        }
    );
    let again = decide(
        c.stock,
        c.hold,
        Input::Confirm {
            order_id: "o1".into(),
        },
        T0,
        &RULES,
    )
    .expect("applies");
    assert_eq!(again.stock, c.stock);
    assert!(again.effects.is_empty());
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
    let held = StockLevel {
        on_hand: 5,
        held: 3,
    };
    let err = decide(
        held,
        None,
        Input::Adjust {
            delta: -3,
            reason: "count".into(),
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
        },
        T0,
        &RULES,
    )
    .expect("applies");
    assert_eq!(ok.stock.on_hand, 15);
    assert!(decide(stock(1), None, reserve("o", 0), T0, &RULES).is_err());
    let _ = Hold {
        order_id: String::new(),
        quantity: 0,
        state: HoldState::Ended(Ended::Refused),
        expires_at: 0,
    };
}

mod cassandra_writes {
    use keel_avro::records::*;

    use crate::inventory::sink::{Write, writes_for_adjusted, writes_for_reserved};

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
        let metrics = InventoryMetrics::register(&Registry::new()).expect("metrics");
        let config = InventoryConfig {
            hold_ttl_ms: 2_000,
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
            }),
        );
        send(
            &mut d,
            "a1",
            "SKU-A",
            InventoryCommandBody::Adjust(AdjustStock {
                delta: 2,
                reason: "seed".into(),
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
}
