//! The payment state machine and the offset tracker, without I/O.

use std::time::Duration;

use proptest::prelude::*;

use super::logic::{
    AuthorizeOutcome, CallOutcome, CallbackResult, Effect, FailureReason, Input, PaymentState,
    PaymentStatus, REFUND_EXCEEDS_CAPTURED, decide,
};
use super::offsets::OffsetTracker;

fn intent() -> PaymentState {
    PaymentState::intent(1_000, "EUR")
}

fn with(status: PaymentStatus) -> PaymentState {
    let mut s = intent();
    s.status = status;
    if status.rank() >= PaymentStatus::Authorized.rank() || status == PaymentStatus::Authorizing {
        s.psp_reference = Some("auth_1".to_owned());
    }
    if matches!(
        status,
        PaymentStatus::Captured | PaymentStatus::PartiallyRefunded | PaymentStatus::Refunded
    ) {
        s.captured_minor = 1_000;
    }
    s
}

fn authorized(psp: &str) -> Input {
    Input::AuthorizeResult(AuthorizeOutcome::Authorized {
        psp_reference: psp.to_owned(),
    })
}

#[test]
fn authorize_calls_the_psp_then_a_success_emits_authorized() {
    let d = decide(Some(&intent()), &Input::Authorize);
    let state = d.state.expect("a state");
    assert_eq!(state.status, PaymentStatus::Authorizing);
    assert_eq!(
        d.effects,
        vec![Effect::CallAuthorize {
            amount_minor: 1_000
        }]
    );

    let d = decide(Some(&state), &authorized("auth_9"));
    let state = d.state.expect("a state");
    assert_eq!(state.status, PaymentStatus::Authorized);
    assert_eq!(state.psp_reference.as_deref(), Some("auth_9"));
    assert_eq!(
        d.effects,
        vec![Effect::EmitAuthorized {
            psp_reference: "auth_9".to_owned()
        }]
    );
}

#[test]
fn a_timeout_fails_with_psp_timeout_and_asks_for_reconciliation() {
    let d = decide(
        Some(&with(PaymentStatus::Authorizing)),
        &Input::AuthorizeResult(AuthorizeOutcome::Timeout),
    );
    assert_eq!(d.state.expect("a state").status, PaymentStatus::Failed);
    assert_eq!(
        d.effects,
        vec![
            Effect::EmitFailed {
                reason: FailureReason::Timeout,
                detail: Some("PSP_TIMEOUT".to_owned())
            },
            Effect::Reconcile
        ]
    );
}

#[test]
fn a_late_success_after_a_timeout_is_voided_not_kept() {
    let failed = with(PaymentStatus::Failed);
    for input in [
        Input::LateAuthorization {
            psp_reference: "auth_late".to_owned(),
        },
        Input::Callback(CallbackResult::Authorized {
            psp_reference: "auth_late".to_owned(),
        }),
        authorized("auth_late"),
    ] {
        let d = decide(Some(&failed), &input);
        assert_eq!(
            d.state.as_ref().map(|s| s.status),
            Some(PaymentStatus::Failed)
        );
        assert_eq!(
            d.effects,
            vec![Effect::VoidLateAuthorization {
                psp_reference: "auth_late".to_owned()
            }],
            "{input:?}"
        );
    }
}

#[test]
fn a_replayed_authorize_after_the_decision_changes_nothing() {
    for status in [
        PaymentStatus::Authorized,
        PaymentStatus::Failed,
        PaymentStatus::Captured,
    ] {
        let state = with(status);
        let d = decide(Some(&state), &Input::Authorize);
        assert_eq!(d.state, Some(state));
        assert!(matches!(d.effects.as_slice(), [Effect::Ignore { .. }]));
    }
}

#[test]
fn a_pending_answer_keeps_authorizing_until_the_callback() {
    let d = decide(
        Some(&with(PaymentStatus::Authorizing)),
        &Input::AuthorizeResult(AuthorizeOutcome::Pending {
            psp_reference: "auth_p".to_owned(),
        }),
    );
    let state = d.state.expect("a state");
    assert_eq!(state.status, PaymentStatus::Authorizing);
    assert!(d.effects.is_empty());
    let d = decide(
        Some(&state),
        &Input::Callback(CallbackResult::Declined {
            psp_reference: "auth_p".to_owned(),
            code: "do_not_honor".to_owned(),
        }),
    );
    assert_eq!(d.state.expect("a state").status, PaymentStatus::Failed);
    assert_eq!(
        d.effects,
        vec![Effect::EmitFailed {
            reason: FailureReason::Declined,
            detail: Some("do_not_honor".to_owned())
        }]
    );
}

#[test]
fn refunds_beyond_the_capture_are_refused() {
    let captured = with(PaymentStatus::Captured);
    let d = decide(
        Some(&captured),
        &Input::Refund {
            refund_id: "r1".to_owned(),
            amount_minor: 600,
        },
    );
    let reserved = d.state.expect("a state");
    assert_eq!(reserved.refund_reserved_minor, 600);
    let d = decide(
        Some(&reserved),
        &Input::Refund {
            refund_id: "r2".to_owned(),
            amount_minor: 500,
        },
    );
    assert_eq!(
        d.effects,
        vec![Effect::RefuseRefund {
            refund_id: "r2".to_owned(),
            code: REFUND_EXCEEDS_CAPTURED
        }],
        "600 reserved + 500 exceeds the 1000 captured"
    );
    let d = decide(
        Some(&reserved),
        &Input::RefundResult {
            refund_id: "r1".to_owned(),
            amount_minor: 600,
            outcome: CallOutcome::Succeeded {
                psp_reference: Some("re_1".to_owned()),
            },
        },
    );
    let state = d.state.expect("a state");
    assert_eq!(state.status, PaymentStatus::PartiallyRefunded);
    assert_eq!(
        (state.refunded_minor, state.refund_reserved_minor),
        (600, 0)
    );
}

#[test]
fn a_void_of_an_unknown_authorization_voids_and_reconciles() {
    let mut unknown = with(PaymentStatus::Authorizing);
    unknown.psp_reference = None;
    let d = decide(Some(&unknown), &void());
    assert_eq!(d.state.expect("a state").status, PaymentStatus::Voided);
    assert_eq!(d.effects, vec![Effect::Reconcile]);
}

fn any_input() -> impl Strategy<Value = Input> {
    let amount = -10i64..1_500;
    prop_oneof![
        amount.clone().prop_map(|a| Input::CreateIntent {
            amount_minor: a,
            currency: "EUR".to_owned()
        }),
        Just(Input::Authorize),
        Just(authorized("auth_a")),
        Just(Input::AuthorizeResult(AuthorizeOutcome::Timeout)),
        Just(Input::AuthorizeResult(AuthorizeOutcome::Pending {
            psp_reference: "auth_p".to_owned()
        })),
        Just(Input::AuthorizeResult(AuthorizeOutcome::Declined {
            psp_reference: None,
            code: "x".to_owned()
        })),
        Just(Input::AuthorizeResult(AuthorizeOutcome::PspError {
            detail: "502".to_owned()
        })),
        Just(Input::Callback(CallbackResult::Authorized {
            psp_reference: "auth_c".to_owned()
        })),
        amount
            .clone()
            .prop_map(|a| Input::Capture { amount_minor: a }),
        amount.clone().prop_map(|a| Input::CaptureResult {
            amount_minor: a,
            outcome: CallOutcome::Succeeded {
                psp_reference: None
            }
        }),
        Just(void()),
        Just(Input::VoidResult(CallOutcome::Succeeded {
            psp_reference: None
        })),
        (amount.clone(), 0u8..3).prop_map(|(a, id)| Input::Refund {
            refund_id: format!("r{id}"),
            amount_minor: a
        }),
        (amount, 0u8..3, any::<bool>()).prop_map(|(a, id, ok)| Input::RefundResult {
            refund_id: format!("r{id}"),
            amount_minor: a,
            outcome: if ok {
                CallOutcome::Succeeded {
                    psp_reference: None,
                }
            } else {
                CallOutcome::Refused {
                    code: "no".to_owned(),
                }
            }
        }),
        Just(Input::LateAuthorization {
            psp_reference: "auth_l".to_owned()
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Whatever arrives in whatever order: the status never moves backwards, a terminal status
    /// never changes, and refunded plus reserved never exceeds what was captured.
    #[test]
    fn status_never_moves_backwards_and_refunds_never_exceed_the_capture(
        inputs in proptest::collection::vec(any_input(), 1..40)
    ) {
        let mut state: Option<PaymentState> = None;
        for input in &inputs {
            let d = decide(state.as_ref(), input);
            if let (Some(before), Some(after)) = (&state, &d.state) {
                prop_assert!(after.status.rank() >= before.status.rank(),
                    "{} -> {} on {input:?}", before.status, after.status);
                if before.status.is_terminal() {
                    prop_assert_eq!(after.status, before.status);
                }
                prop_assert!(after.captured_minor >= before.captured_minor);
                prop_assert!(after.refunded_minor >= before.refunded_minor);
            }
            prop_assert!(state.is_none() || d.state.is_some(), "a payment never disappears");
            if let Some(after) = &d.state {
                prop_assert!(after.refund_reserved_minor >= 0);
                prop_assert!(after.refunded_minor + after.refund_reserved_minor
                    <= after.captured_minor, "{after:?}");
                prop_assert!(after.captured_minor <= after.amount_minor);
            }
            state = d.state;
        }
    }
}

fn tp(p: i32) -> (String, i32) {
    ("payments.commands.v1".to_owned(), p)
}

#[test]
fn offsets_are_never_committed_past_an_unfinished_command() {
    let mut t = OffsetTracker::default();
    for o in 10..15 {
        t.start(&tp(0), o);
    }
    t.finish(&tp(0), 12);
    t.finish(&tp(0), 13);
    assert_eq!(t.take_committable(), vec![(tp(0), 10)], "10 still runs");
    t.finish(&tp(0), 10);
    assert_eq!(t.take_committable(), vec![(tp(0), 11)]);
    t.finish(&tp(0), 11);
    t.finish(&tp(0), 14);
    assert_eq!(t.take_committable(), vec![(tp(0), 15)]);
    assert_eq!(t.take_committable(), vec![], "nothing new");
    assert_eq!(t.running(), 0);
}

#[test]
fn the_consumer_position_past_a_commit_marker_is_committed_only_when_nothing_runs() {
    let mut t = OffsetTracker::default();
    t.start(&tp(0), 9);
    // The consumer polled past the commit marker at 10: its position is 11.
    t.consumer_positions(&[(tp(0), 11)]);
    assert_eq!(t.take_committable(), vec![(tp(0), 9)], "9 still runs");
    t.finish(&tp(0), 9);
    assert_eq!(t.take_committable(), vec![(tp(0), 10)]);
    t.consumer_positions(&[(tp(0), 11)]);
    assert_eq!(t.take_committable(), vec![(tp(0), 11)], "past the marker");
    t.consumer_positions(&[(tp(0), 11), (tp(1), 4)]);
    assert_eq!(
        t.take_committable(),
        vec![(tp(1), 4)],
        "nothing received on 1 yet"
    );
}

#[test]
fn a_failed_commit_is_retried_and_revoked_partitions_are_forgotten() {
    let mut t = OffsetTracker::default();
    t.start(&tp(0), 5);
    t.start(&tp(1), 7);
    t.finish(&tp(0), 5);
    t.finish(&tp(1), 7);
    let first = t.take_committable();
    assert_eq!(first, vec![(tp(0), 6), (tp(1), 8)]);
    t.forget_committed(&first);
    assert_eq!(t.take_committable(), first);
    t.start(&tp(1), 8);
    t.revoke(&[tp(1)]);
    t.finish(&tp(1), 8);
    assert_eq!(t.take_committable(), vec![]);
}

proptest! {
    /// Finishing in any order: the committed position is always a point below which every
    /// received offset has finished.
    #[test]
    fn committed_positions_only_cover_finished_offsets(order in Just((0i64..30).collect::<Vec<_>>()).prop_shuffle()) {
        let mut t = OffsetTracker::default();
        for o in 0..30 {
            t.start(&tp(0), o);
        }
        let mut finished = std::collections::HashSet::new();
        let mut last = -1;
        for o in order {
            t.finish(&tp(0), o);
            finished.insert(o);
            for (_, pos) in t.take_committable() {
                prop_assert!(pos > last);
                prop_assert!((0..pos).all(|x| finished.contains(&x)));
                last = pos;
            }
        }
        prop_assert_eq!(last, 30);
    }
}

/// A replayed authorization whose first call (made by a process that then died) is still
/// running at the PSP waits for that call's answer instead of giving up after its retries:
/// with no retries at all it still gets `Authorized`, and the PSP authorized once.
#[tokio::test]
async fn an_authorization_waits_for_the_same_keys_call_in_progress_at_the_psp() {
    use crate::psp_mock::api::AuthorizationRequest;
    use crate::psp_mock::{IDEMPOTENCY_HEADER, PspMock, PspMockConfig, Stats};

    let mock = PspMock::bind(PspMockConfig {
        listen: "127.0.0.1:0".parse().expect("an address"),
        latency_min_ms: 800,
        latency_max_ms: 800,
        ..PspMockConfig::default()
    })
    .await
    .expect("the mock binds");
    let url = mock.url();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(mock.run(stop.clone()));
    let req = AuthorizationRequest {
        amount_minor: 1_000,
        currency: "EUR".to_owned(),
        payment_method: "tok_visa".to_owned(),
        reference: "pay-1".to_owned(),
    };
    // The first call, from a process that dies before the answer: it gives up at once.
    let first = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .expect("a client")
        .post(format!("{url}/v1/authorizations"))
        .header(IDEMPOTENCY_HEADER, "pay-1:authorize")
        .json(&req)
        .send()
        .await;
    assert!(first.is_err(), "the first caller is gone");

    let config = super::PaymentConfig {
        psp_url: url.clone(),
        psp_retries: 0,
        psp_retry_backoff_ms: 20,
        psp_timeout_ms: 5_000,
        ..super::PaymentConfig::default()
    };
    let metrics =
        super::PaymentMetrics::register(&prometheus::Registry::new()).expect("the metrics");
    let client = super::psp::PspClient::new(&config, metrics).expect("a client");
    let (outcome, _) = client.authorize("pay-1:authorize", &req).await;
    assert!(
        matches!(outcome, AuthorizeOutcome::Authorized { .. }),
        "{outcome:?}"
    );
    let stats: Stats = reqwest::get(format!("{url}/admin/stats"))
        .await
        .expect("stats")
        .json()
        .await
        .expect("JSON");
    assert_eq!(stats.authorizations, 1, "{stats:?}");
    assert!(stats.authorization_calls >= 3, "{stats:?}");
    stop.cancel();
}

fn void() -> Input {
    Input::Void {
        refund_id: "void-cmd-1".to_owned(),
    }
}

#[test]
fn a_void_of_a_captured_payment_refunds_what_is_left_to_refund() {
    let mut captured = with(PaymentStatus::PartiallyRefunded);
    captured.captured_minor = 1_000;
    captured.refunded_minor = 300;
    captured.refund_reserved_minor = 200;
    let d = decide(Some(&captured), &void());
    let state = d.state.expect("a state");
    assert_eq!(
        (state.status, state.refund_reserved_minor),
        (PaymentStatus::PartiallyRefunded, 700)
    );
    assert_eq!(
        d.effects,
        vec![Effect::CallRefund {
            refund_id: "void-cmd-1".to_owned(),
            psp_reference: captured.psp_reference.clone().expect("a reference"),
            amount_minor: 500,
        }]
    );
    let result = decide(
        Some(&state),
        &Input::RefundResult {
            refund_id: "void-cmd-1".to_owned(),
            amount_minor: 500,
            outcome: CallOutcome::Succeeded {
                psp_reference: Some("ref_v".to_owned()),
            },
        },
    );
    assert_eq!(
        result.state.expect("a state").refund_reserved_minor,
        200,
        "the void's reservation is released"
    );
    assert!(matches!(
        result.effects.as_slice(),
        [Effect::EmitRefunded {
            amount_minor: 500,
            ..
        }]
    ));
}

#[test]
fn a_void_of_a_fully_refunded_payment_changes_nothing() {
    let mut refunded = with(PaymentStatus::Refunded);
    refunded.captured_minor = 1_000;
    refunded.refunded_minor = 1_000;
    let d = decide(Some(&refunded), &void());
    assert_eq!(d.state.as_ref(), Some(&refunded));
    assert!(matches!(d.effects.as_slice(), [Effect::Ignore { .. }]));
}
