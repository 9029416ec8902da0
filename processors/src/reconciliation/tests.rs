//! The reconciliation rules, pure.

use super::logic::*;
use crate::cdc::{Field, Op, Position};

const RULES: Rules = Rules {
    cancelled_grace_ms: 1_000,
    capture_grace_ms: 2_000,
    recheck_ms: 100,
    retention_ms: 60_000,
};

fn now(wall_ms: i64) -> Now {
    Now {
        wall_ms,
        ledger_seen_ms: Some(wall_ms),
        stream_ms: wall_ms,
    }
}

fn decision(sequence: i32, status: OrderState, total: i64) -> Input {
    decision_at(sequence, status, total, 0)
}

fn decision_at(sequence: i32, status: OrderState, total: i64, decided_at: i64) -> Input {
    Input::Decision(DecisionFacts {
        decision_id: format!("o-1/{sequence}"),
        sequence,
        status,
        total_minor: total,
        currency: "EUR".into(),
        decided_at,
    })
}

fn payment(status: &str, captured: i64, lsn: u64) -> Input {
    Input::Payment {
        op: Op::Update,
        row: PaymentRow {
            payment_id: Field::Value("pay-1".into()),
            status: Field::Value(status.into()),
            currency: Field::Value("EUR".into()),
            psp_reference: Field::Null,
            amount_minor: 2_500,
            captured_minor: captured,
            refunded_minor: 0,
            updated_ms: None,
        },
        position: Some(Position::Lsn(lsn)),
        source_ms: 0,
    }
}

fn run(state: OrderRecon, steps: Vec<(Input, Now)>) -> (OrderRecon, Vec<Output>) {
    let mut state = state;
    let mut all = Vec::new();
    for (input, at) in steps {
        let (next, out) = decide(state, "o-1", input, &at, &RULES);
        state = next;
        all.extend(out);
    }
    (state, all)
}

fn opened(out: &[Output]) -> Vec<MismatchKind> {
    out.iter()
        .filter_map(|o| match o {
            Output::Opened(m) => Some(m.kind),
            _ => None,
        })
        .collect()
}

fn resolved(out: &[Output]) -> Vec<MismatchKind> {
    out.iter()
        .filter_map(|o| match o {
            Output::Resolved { mismatch, .. } => Some(mismatch.kind),
            _ => None,
        })
        .collect()
}

#[test]
fn a_capture_for_a_cancelled_order_is_reported_after_the_grace_period_only() {
    let (state, out) = run(
        OrderRecon::default(),
        vec![
            (decision(2, OrderState::Cancelled, 2_500), now(0)),
            (payment("CAPTURED", 2_500, 10), now(10)),
        ],
    );
    assert!(opened(&out).is_empty(), "not before the grace: {out:?}");
    assert_eq!(out.last(), Some(&Output::Arm(1_010)));
    let (state, out) = run(state, vec![(Input::Due, now(1_010))]);
    assert_eq!(opened(&out), vec![MismatchKind::AuthorizedButCancelled]);
    let Some(Output::Opened(m)) = out.first() else {
        panic!("{out:?}")
    };
    assert_eq!(m.payment_status.as_deref(), Some("CAPTURED"));
    assert_eq!(m.order_status.as_deref(), Some("CANCELLED"));
    assert_eq!((m.since, m.opened_at), (10, 1_010));
    assert!(
        state
            .open
            .contains_key(&MismatchKind::AuthorizedButCancelled)
    );
}

#[test]
fn a_void_within_the_grace_period_reports_nothing() {
    let (state, out) = run(
        OrderRecon::default(),
        vec![
            (decision(2, OrderState::Cancelled, 2_500), now(0)),
            (payment("AUTHORIZED", 0, 10), now(10)),
            (payment("VOIDED", 0, 11), now(500)),
            (Input::Due, now(2_000)),
        ],
    );
    assert!(opened(&out).is_empty(), "{out:?}");
    assert!(state.suspects.is_empty() && state.open.is_empty());
    assert_eq!(
        out.last(),
        Some(&Output::Arm(60_500)),
        "nothing waits: the timer is the retention, 60 s after the last change"
    );
}

#[test]
fn an_open_mismatch_is_resolved_when_the_void_arrives() {
    let (state, _) = run(
        OrderRecon::default(),
        vec![
            (decision(2, OrderState::Cancelled, 2_500), now(0)),
            (payment("AUTHORIZED", 0, 10), now(0)),
            (Input::Due, now(1_000)),
        ],
    );
    assert_eq!(state.open.len(), 1);
    let (state, out) = run(state, vec![(payment("VOIDED", 0, 11), now(5_000))]);
    assert_eq!(resolved(&out), vec![MismatchKind::AuthorizedButCancelled]);
    assert!(state.open.is_empty());
}

#[test]
fn a_confirmed_order_without_a_capture_is_reported_after_its_grace() {
    let (state, out) = run(
        OrderRecon::default(),
        vec![
            (decision(3, OrderState::Confirmed, 2_500), now(0)),
            (payment("AUTHORIZED", 0, 10), now(10)),
            (Input::Due, now(1_999)),
        ],
    );
    assert!(opened(&out).is_empty());
    let (_, out) = run(state, vec![(Input::Due, now(2_000))]);
    assert_eq!(opened(&out), vec![MismatchKind::ConfirmedWithoutCapture]);
}

#[test]
fn a_capture_in_time_clears_the_confirmed_suspect() {
    let (state, out) = run(
        OrderRecon::default(),
        vec![
            (decision(3, OrderState::Confirmed, 2_500), now(0)),
            (payment("CAPTURED", 2_500, 10), now(100)),
            (Input::Due, now(5_000)),
        ],
    );
    assert!(opened(&out).is_empty(), "{out:?}");
    assert!(state.suspects.is_empty());
}

#[test]
fn a_capture_that_differs_from_the_total_is_an_amount_mismatch_at_once() {
    let (_, out) = run(
        OrderRecon::default(),
        vec![
            (decision(3, OrderState::Confirmed, 2_000), now(0)),
            (payment("CAPTURED", 2_500, 10), now(5)),
        ],
    );
    assert_eq!(opened(&out), vec![MismatchKind::AmountMismatch]);
}

#[test]
fn a_duplicate_cdc_change_changes_nothing() {
    let (state, _) = run(
        OrderRecon::default(),
        vec![
            (decision(2, OrderState::Cancelled, 2_500), now(0)),
            (payment("AUTHORIZED", 0, 10), now(0)),
            (payment("VOIDED", 0, 11), now(0)),
        ],
    );
    // Debezium re-sends the AUTHORIZED change after a restart: it must not undo the void.
    let (after, out) = decide(
        state.clone(),
        "o-1",
        payment("AUTHORIZED", 0, 10),
        &now(1),
        &RULES,
    );
    assert_eq!(out, vec![Output::Duplicate]);
    assert_eq!(after, state);
    let (_, out) = decide(state, "o-1", payment("VOIDED", 0, 11), &now(1), &RULES);
    assert_eq!(out, vec![Output::Duplicate], "the same position twice");
}

#[test]
fn a_lagging_ledger_postpones_the_verdict_until_it_has_been_seen_past_the_grace() {
    let (state, _) = run(
        OrderRecon::default(),
        vec![
            (decision(2, OrderState::Cancelled, 2_500), now(0)),
            (payment("AUTHORIZED", 0, 10), now(0)),
        ],
    );
    // Grace over by the wall clock, but the CDC has only been seen up to 500 ms.
    let lagging = Now {
        wall_ms: 5_000,
        ledger_seen_ms: Some(500),
        stream_ms: 5_000,
    };
    let (state, out) = decide(state, "o-1", Input::Due, &lagging, &RULES);
    assert!(opened(&out).is_empty(), "{out:?}");
    assert_eq!(out.last(), Some(&Output::Arm(5_100)), "look again soon");
    let caught_up = Now {
        wall_ms: 5_100,
        ledger_seen_ms: Some(5_000),
        stream_ms: 5_100,
    };
    let (_, out) = decide(state, "o-1", Input::Due, &caught_up, &RULES);
    assert_eq!(opened(&out), vec![MismatchKind::AuthorizedButCancelled]);
}

#[test]
fn an_older_decision_does_not_replace_a_newer_one() {
    let (state, _) = run(
        OrderRecon::default(),
        vec![
            (decision(3, OrderState::Confirmed, 2_500), now(0)),
            (decision(1, OrderState::Pending, 2_500), now(1)),
        ],
    );
    assert_eq!(
        state.decision.map(|d| d.status),
        Some(OrderState::Confirmed)
    );
}

#[test]
fn toast_unchanged_columns_keep_the_stored_value_and_never_store_the_placeholder() {
    let (state, _) = run(
        OrderRecon::default(),
        vec![(payment("AUTHORIZED", 0, 10), now(0))],
    );
    let toasted = Input::Payment {
        op: Op::Update,
        row: PaymentRow {
            payment_id: Field::Unchanged,
            status: Field::Value("CAPTURED".into()),
            currency: Field::Unchanged,
            psp_reference: Field::Unchanged,
            amount_minor: 2_500,
            captured_minor: 2_500,
            refunded_minor: 0,
            updated_ms: None,
        },
        position: Some(Position::Lsn(11)),
        source_ms: 1,
    };
    let (state, _) = decide(state, "o-1", toasted, &now(1), &RULES);
    let p = state.payment.expect("payment");
    assert_eq!(p.payment_id.as_deref(), Some("pay-1"));
    assert_eq!(p.currency.as_deref(), Some("EUR"));
    assert_eq!(p.status.as_deref(), Some("CAPTURED"));
    let stored = String::from_utf8(
        OrderRecon {
            payment: Some(p),
            ..OrderRecon::default()
        }
        .encode(),
    )
    .expect("utf8");
    assert!(!stored.contains(crate::cdc::UNAVAILABLE), "{stored}");
}

#[test]
fn the_view_reports_open_mismatches_and_lag_that_rises_while_nothing_arrives() {
    use super::view::ReconciliationView;
    let view = ReconciliationView::new();
    view.observe("ledger-cdc", 10_000, 10_050);
    view.observe("ledger-cdc", 9_000, 10_060);
    let (state, _) = run(
        OrderRecon::default(),
        vec![
            (decision(2, OrderState::Cancelled, 2_500), now(0)),
            (payment("CAPTURED", 2_500, 10), now(0)),
            (Input::Due, now(1_000)),
        ],
    );
    view.set_open(3, "o-1", state.open.values().cloned().collect());
    let at_20s = view.report(20_000);
    assert_eq!(at_20s.open_mismatches.len(), 1);
    assert_eq!(
        at_20s.open_mismatches[0].kind,
        MismatchKind::AuthorizedButCancelled
    );
    assert_eq!(
        at_20s.connectors[0].lag_seconds, 10.0,
        "an older re-delivery does not move it back"
    );
    assert_eq!(view.report(80_000).connectors[0].lag_seconds, 70.0);
    assert_eq!(at_20s.as_of.as_deref(), Some("1970-01-01T00:00:10.000Z"));
    assert_eq!(at_20s.partitions, vec![3]);
    view.set_open(3, "o-1", Vec::new());
    assert!(view.report(20_000).open_mismatches.is_empty());
}

// ---- retention ----

#[test]
fn a_settled_order_is_forgotten_once_its_retention_is_over_and_not_before() {
    let (state, out) = run(
        OrderRecon::default(),
        vec![
            (decision(3, OrderState::Confirmed, 2_500), now(0)),
            (payment("CAPTURED", 2_500, 10), now(100)),
        ],
    );
    assert!(opened(&out).is_empty(), "{out:?}");
    assert_eq!(state.retire_at, Some(60_100));
    assert_eq!(
        out.last(),
        Some(&Output::Arm(60_100)),
        "the timer is the retention"
    );
    // A look before it (an early punctuation) keeps the entry and the due time.
    let (state, out) = decide(state, "o-1", Input::Due, &now(60_099), &RULES);
    assert_eq!(out, vec![Output::Arm(60_100)]);
    let (_, out) = decide(state, "o-1", Input::Due, &now(60_100), &RULES);
    assert_eq!(out, vec![Output::Forget]);
}

#[test]
fn every_change_moves_the_retention_on() {
    let (state, _) = run(
        OrderRecon::default(),
        vec![
            (decision(2, OrderState::Cancelled, 2_500), now(0)),
            (payment("VOIDED", 0, 10), now(100)),
            (payment("VOIDED", 0, 11), now(30_000)),
        ],
    );
    assert_eq!(state.retire_at, Some(90_000));
    let (_, out) = decide(state, "o-1", Input::Due, &now(60_100), &RULES);
    assert_eq!(out, vec![Output::Arm(90_000)]);
}

#[test]
fn an_open_mismatch_is_kept_past_the_retention_until_it_is_resolved() {
    let (state, out) = run(
        OrderRecon::default(),
        vec![
            (decision(2, OrderState::Cancelled, 2_500), now(0)),
            (payment("CAPTURED", 2_500, 10), now(0)),
            (Input::Due, now(1_000)),
        ],
    );
    assert_eq!(state.open.len(), 1);
    assert_eq!(state.retire_at, None);
    assert_eq!(out.last(), Some(&Output::Disarm), "no retention while open");
    let (state, out) = decide(state, "o-1", Input::Due, &now(1_000_000), &RULES);
    assert!(!out.contains(&Output::Forget), "{out:?}");
    assert_eq!(state.open.len(), 1);
    // Refunded: resolved, and the retention counts from here.
    let (state, out) = decide(
        state,
        "o-1",
        payment("REFUNDED", 2_500, 11),
        &now(2_000_000),
        &RULES,
    );
    assert_eq!(resolved(&out), vec![MismatchKind::AuthorizedButCancelled]);
    assert_eq!(out.last(), Some(&Output::Arm(2_060_000)));
    let (_, out) = decide(state, "o-1", Input::Due, &now(2_060_000), &RULES);
    assert_eq!(out, vec![Output::Forget]);
}

#[test]
fn a_decision_older_than_the_retention_for_a_forgotten_order_is_late_and_opens_nothing() {
    // The order was confirmed at 1 000, captured, and forgotten. A replay delivers its CONFIRMED
    // decision again long after: applied to nothing, it would be a confirmed order without a
    // capture.
    let replayed = decision_at(3, OrderState::Confirmed, 2_500, 1_000);
    let after = now(1_000 + 60_001);
    let (state, out) = decide(
        OrderRecon::default(),
        "o-1",
        replayed.clone(),
        &after,
        &RULES,
    );
    assert_eq!(out, vec![Output::Late]);
    assert!(state.is_unknown(), "no entry is created: {state:?}");
    // An old ledger change (a re-snapshot, a Debezium re-send) alike.
    let (state, out) = decide(
        OrderRecon::default(),
        "o-1",
        payment("CAPTURED", 2_500, 10),
        &after,
        &RULES,
    );
    assert_eq!(out, vec![Output::Late]);
    assert!(state.is_unknown());
    // Within the retention the same decision is an order's first input: applied.
    let (state, out) = decide(
        OrderRecon::default(),
        "o-1",
        replayed,
        &now(1_000 + 60_000),
        &RULES,
    );
    assert!(state.decision.is_some());
    assert_eq!(out.last(), Some(&Output::Arm(61_000 + 2_000)), "its grace");
}

#[test]
fn lateness_is_judged_by_stream_time_so_a_backlog_is_still_reconciled() {
    // A role stopped for longer than the retention catches up: the wall clock is far ahead,
    // the records it reads are not.
    let catching_up = Now {
        wall_ms: 10_000_000,
        ledger_seen_ms: Some(1_500),
        stream_ms: 1_500,
    };
    let (state, out) = decide(
        OrderRecon::default(),
        "o-1",
        decision_at(2, OrderState::Cancelled, 2_500, 1_000),
        &catching_up,
        &RULES,
    );
    assert!(!out.contains(&Output::Late), "{out:?}");
    assert!(state.decision.is_some());
}

#[test]
fn the_timer_of_an_order_without_an_entry_keeps_nothing() {
    let (state, out) = decide(OrderRecon::default(), "o-1", Input::Due, &now(5), &RULES);
    assert_eq!(out, vec![Output::Forget]);
    assert!(state.is_unknown());
}

// ---- through the test driver ----

mod driver {
    use std::time::Duration;

    use keel_avro::records::{
        Money, OrderDecision, OrderDecisionStatus, ReconciliationKind, ReconciliationMismatch,
        ReconciliationState,
    };
    use keel_topology::TestDriver;
    use keel_topology::serde::{Json, Utf8};
    use serde_json::json;

    use crate::format::Format;
    use crate::reconciliation::state::{DUE_STORE, ORDERS_STORE};
    use crate::reconciliation::{
        LedgerTopics, ReconcilerSettings, ReconciliationMetrics, ReconciliationView, Rules,
    };
    use crate::topics::{self, Topics};

    const PAYMENTS: &str = "ledger.public.payments";
    const BEATS: &str = "ledger.public.keel_cdc_heartbeat";
    const RETENTION_MS: i64 = 60_000;

    fn driver() -> (TestDriver, ReconciliationView) {
        let (d, view, _) = driver_with_metrics();
        (d, view)
    }

    fn driver_with_metrics() -> (TestDriver, ReconciliationView, ReconciliationMetrics) {
        let view = ReconciliationView::new();
        let metrics = ReconciliationMetrics::unregistered(&view).expect("metrics");
        let topology = crate::reconciliation::topology(
            &Format::Json,
            &Topics::default(),
            &LedgerTopics {
                payments: PAYMENTS.into(),
                heartbeats: BEATS.into(),
                connector: "ledger-cdc".into(),
            },
            ReconcilerSettings {
                rules: Rules {
                    cancelled_grace_ms: 1_000,
                    capture_grace_ms: 5_000,
                    recheck_ms: 100,
                    retention_ms: RETENTION_MS,
                },
                check_interval: Duration::from_millis(100),
            },
            view.clone(),
            metrics.clone(),
        )
        .expect("topology");
        (TestDriver::new(topology).expect("driver"), view, metrics)
    }

    fn cancel(d: &mut TestDriver, order: &str) {
        let at = d.wall_clock();
        decide(d, order, 2, OrderDecisionStatus::Cancelled, at);
    }

    /// The saga's decision `sequence` for `order`, decided at `decided_at`, delivered now.
    fn decide(
        d: &mut TestDriver,
        order: &str,
        sequence: i32,
        status: OrderDecisionStatus,
        decided_at: i64,
    ) {
        let decision = OrderDecision {
            decision_id: format!("{order}/{sequence}"),
            order_id: order.into(),
            decided_at,
            causation_id: "c".into(),
            correlation_id: order.into(),
            sequence,
            status,
            from_status: None,
            reason: None,
            detail: None,
            customer_id: "cust-1".into(),
            cart_id: "cart-1".into(),
            lines: Vec::new(),
            total: Money::new(2_500, "EUR"),
            shipping_address: None,
            payment_method: "tok_visa".into(),
            source_topic: "t".into(),
            source_partition: 0,
            source_offset: 0,
        };
        let at = d.wall_clock();
        d.pipe(
            topics::ORDER_DECISIONS,
            &order.to_owned(),
            &decision,
            at,
            &Utf8,
            &Json::<OrderDecision>::new(),
        )
        .expect("processed");
    }

    fn payment(d: &mut TestDriver, order: &str, status: &str, lsn: u64) {
        let at = d.wall_clock();
        let envelope = json!({
            "before": null,
            "after": {
                "payment_id": format!("pay-{order}"), "order_id": order, "customer_id": "c",
                "amount_minor": 2500, "currency": "EUR", "payment_method": "tok_visa",
                "status": status, "psp_reference": crate::cdc::UNAVAILABLE,
                "captured_minor": if status == "CAPTURED" { 2500 } else { 0 },
                "refunded_minor": 0,
                "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00.5Z"
            },
            "op": "u",
            "source": {"name": "ledger", "ts_ms": at, "snapshot": "false", "lsn": lsn,
                "table": "payments"}
        });
        // Avro as the registry converter writes it, with Debezium's envelope schema.
        let bytes = crate::cdc::testing::avro(crate::cdc::testing::PAYMENTS, envelope);
        d.pipe_raw(PAYMENTS, Some(order.as_bytes()), Some(&bytes), at)
            .expect("processed");
    }

    /// A heartbeat: the ledger is seen up to now.
    fn beat(d: &mut TestDriver) {
        let at = d.wall_clock();
        let beat = json!({"before": null, "after": {"connector": "ledger-cdc", "beat_at": "x"},
            "op": "u", "source": {"ts_ms": at, "lsn": 1}});
        d.pipe_raw(
            BEATS,
            Some(b"ledger-cdc"),
            Some(&crate::cdc::testing::avro(
                crate::cdc::testing::HEARTBEAT,
                beat,
            )),
            at,
        )
        .expect("processed");
    }

    fn tick(d: &mut TestDriver, ms: i64) {
        d.advance_wall_clock(Duration::from_millis(ms.unsigned_abs()))
            .expect("ticks");
    }

    fn mismatches(d: &mut TestDriver) -> Vec<(String, ReconciliationMismatch)> {
        d.read_output_as(
            topics::RECONCILIATION_MISMATCHES,
            &Utf8,
            &Json::<ReconciliationMismatch>::new(),
        )
        .expect("decodes")
    }

    #[test]
    fn a_capture_for_a_cancelled_order_is_reported_once_and_survives_a_wiped_restart() {
        let (mut d, view) = driver();
        cancel(&mut d, "o-1");
        payment(&mut d, "o-1", "CAPTURED", 100);
        d.advance_wall_clock(Duration::from_millis(500))
            .expect("ticks");
        assert!(mismatches(&mut d).is_empty(), "not within the grace");
        // The ledger is seen past the grace through a heartbeat.
        d.advance_wall_clock(Duration::from_millis(700))
            .expect("ticks");
        let at = d.wall_clock();
        let beat = json!({"before": null, "after": {"connector": "ledger-cdc", "beat_at": "x"},
            "op": "u", "source": {"ts_ms": at, "lsn": 200}});
        d.pipe_raw(
            BEATS,
            Some(b"ledger-cdc"),
            Some(&crate::cdc::testing::avro(
                crate::cdc::testing::HEARTBEAT,
                beat,
            )),
            at,
        )
        .expect("processed");
        d.advance_wall_clock(Duration::from_millis(200))
            .expect("ticks");
        let out = mismatches(&mut d);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].0, "o-1");
        assert_eq!(out[0].1.kind, ReconciliationKind::AuthorizedButCancelled);
        assert_eq!(out[0].1.state, ReconciliationState::Open);
        assert_eq!(view.report(d.wall_clock()).open_mismatches.len(), 1);

        // The same change again (Debezium after a restart) and more time change nothing.
        payment(&mut d, "o-1", "CAPTURED", 100);
        d.advance_wall_clock(Duration::from_secs(5)).expect("ticks");
        assert!(mismatches(&mut d).is_empty());

        // Local state wiped: restored from the changelog, the view shows it again.
        d.restart(true).expect("restarts");
        assert_eq!(view.report(d.wall_clock()).open_mismatches.len(), 1);

        payment(&mut d, "o-1", "REFUNDED", 101);
        let out = mismatches(&mut d);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].1.state, ReconciliationState::Resolved);
        assert!(view.report(d.wall_clock()).open_mismatches.is_empty());
    }

    #[test]
    fn an_envelope_that_does_not_decode_is_dead_lettered_with_why() {
        let (mut d, _) = driver();
        // Avro with the envelope's schema, but an op that names no row.
        let truncate = crate::cdc::testing::avro(
            crate::cdc::testing::PAYMENTS,
            json!({"op": "t", "source": {"name": "ledger", "ts_ms": 1, "lsn": 5}}),
        );
        d.pipe_raw(PAYMENTS, Some(b"o-2"), Some(&truncate), 0)
            .expect("processed");
        let dead = d.dead_letters();
        assert_eq!(dead.len(), 1);
        let why = dead[0]
            .headers
            .get_str(keel_topology::dlq_headers::ERROR)
            .expect("a reason");
        assert!(why.contains("unsupported op"), "{why}");
        // Schemaless JSON (what Debezium wrote before ADR 0006) is a poison record now.
        d.pipe_raw(
            PAYMENTS,
            Some(b"o-2"),
            Some(b"{\"op\":\"c\",\"source\":{\"ts_ms\":1}}"),
            0,
        )
        .expect("processed");
        let dead = d.dead_letters();
        assert_eq!(dead.len(), 1);
        let why = dead[0]
            .headers
            .get_str(keel_topology::dlq_headers::ERROR)
            .expect("a reason");
        assert!(
            why.contains("not Avro in the Confluent wire format"),
            "{why}"
        );
        assert_eq!(
            dead[0]
                .headers
                .get_str(keel_topology::dlq_headers::SOURCE_TOPIC),
            Some(PAYMENTS)
        );
        // A tombstone is not an error.
        d.pipe_raw(PAYMENTS, Some(b"o-2"), None, 0)
            .expect("processed");
        assert!(d.dead_letters().is_empty());
    }

    #[test]
    fn a_settled_order_is_deleted_with_its_timer_once_its_retention_is_over() {
        let (mut d, view, metrics) = driver_with_metrics();
        cancel(&mut d, "o-1");
        payment(&mut d, "o-1", "VOIDED", 100);
        let settled_at = d.wall_clock();
        assert!(d.kv_get(ORDERS_STORE, b"o-1").expect("reads").is_some());
        let timer = d.timer(DUE_STORE, b"o-1").expect("reads").expect("a timer");
        assert_eq!(timer.due, settled_at + RETENTION_MS, "the retention");

        tick(&mut d, RETENTION_MS - 1_000);
        assert!(
            d.kv_get(ORDERS_STORE, b"o-1").expect("reads").is_some(),
            "kept within the retention"
        );
        tick(&mut d, 1_000);
        assert_eq!(d.kv_get(ORDERS_STORE, b"o-1").expect("reads"), None);
        assert_eq!(d.timer(DUE_STORE, b"o-1").expect("reads"), None);
        assert_eq!(metrics.retired.get(), 1);
        assert!(mismatches(&mut d).is_empty());
        assert!(view.report(d.wall_clock()).open_mismatches.is_empty());
        // The deletion is in the changelog: a wiped restart does not bring the entry back.
        d.restart(true).expect("restarts");
        assert_eq!(d.kv_get(ORDERS_STORE, b"o-1").expect("reads"), None);
    }

    #[test]
    fn an_old_decision_delivered_after_the_retention_reopens_nothing() {
        let (mut d, view, metrics) = driver_with_metrics();
        tick(&mut d, 0); // the punctuator learns the clock
        let decided_at = d.wall_clock();
        decide(&mut d, "o-1", 3, OrderDecisionStatus::Confirmed, decided_at);
        payment(&mut d, "o-1", "CAPTURED", 100);
        tick(&mut d, RETENTION_MS + 100);
        assert_eq!(d.kv_get(ORDERS_STORE, b"o-1").expect("reads"), None);

        // A replay delivers the CONFIRMED decision again: its capture is forgotten, so applied it
        // would be CONFIRMED_WITHOUT_CAPTURE once the ledger is seen past the grace.
        decide(&mut d, "o-1", 3, OrderDecisionStatus::Confirmed, decided_at);
        tick(&mut d, 6_000);
        beat(&mut d);
        tick(&mut d, 200);
        tick(&mut d, 200);
        let out = mismatches(&mut d);
        assert!(out.is_empty(), "{out:?}");
        assert!(view.report(d.wall_clock()).open_mismatches.is_empty());
        assert_eq!(metrics.late.get(), 1, "counted as late");
        assert_eq!(d.kv_get(ORDERS_STORE, b"o-1").expect("reads"), None);
        assert_eq!(d.timer(DUE_STORE, b"o-1").expect("reads"), None);
    }

    #[test]
    fn an_open_mismatch_outlives_the_retention_and_retires_after_it_is_resolved() {
        let (mut d, view) = driver();
        tick(&mut d, 0); // the punctuator learns the clock
        cancel(&mut d, "o-1");
        payment(&mut d, "o-1", "CAPTURED", 100);
        tick(&mut d, 1_200);
        beat(&mut d);
        tick(&mut d, 200);
        assert_eq!(mismatches(&mut d).len(), 1);
        tick(&mut d, 3 * RETENTION_MS);
        assert!(d.kv_get(ORDERS_STORE, b"o-1").expect("reads").is_some());
        assert_eq!(view.report(d.wall_clock()).open_mismatches.len(), 1);

        payment(&mut d, "o-1", "REFUNDED", 101);
        assert_eq!(mismatches(&mut d)[0].1.state, ReconciliationState::Resolved);
        tick(&mut d, RETENTION_MS);
        assert_eq!(d.kv_get(ORDERS_STORE, b"o-1").expect("reads"), None);
    }
}
