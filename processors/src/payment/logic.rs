//! The payment state machine, pure: `decide(state, input) -> Decision { state, effects }`.
//!
//! A command first yields a PSP call as an [`Effect`]; the worker performs it and feeds the
//! result back as another [`Input`], which yields the new status and the events to write to
//! the outbox. Nothing here does I/O, so the rules are unit- and property-tested:
//! - the status never moves backwards ([`PaymentStatus::rank`] never decreases, terminal
//!   statuses never change);
//! - refunds (done plus reserved) never exceed the captured amount;
//! - a success that arrives after the payment failed or was voided is voided at the PSP.
//!
//! Amounts are minor units (`i64`).

use std::fmt;

/// Where a payment is. Stored as the upper-case name in `payments.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentStatus {
    Intent,
    Authorizing,
    Authorized,
    Captured,
    PartiallyRefunded,
    Refunded,
    Voided,
    Failed,
}

impl PaymentStatus {
    pub const ALL: [PaymentStatus; 8] = [
        Self::Intent,
        Self::Authorizing,
        Self::Authorized,
        Self::Captured,
        Self::PartiallyRefunded,
        Self::Refunded,
        Self::Voided,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Intent => "INTENT",
            Self::Authorizing => "AUTHORIZING",
            Self::Authorized => "AUTHORIZED",
            Self::Captured => "CAPTURED",
            Self::PartiallyRefunded => "PARTIALLY_REFUNDED",
            Self::Refunded => "REFUNDED",
            Self::Voided => "VOIDED",
            Self::Failed => "FAILED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Progress: a payment only moves to a status of higher or equal rank.
    pub fn rank(self) -> u8 {
        match self {
            Self::Intent => 0,
            Self::Authorizing => 1,
            Self::Authorized => 2,
            Self::Captured => 3,
            Self::PartiallyRefunded => 4,
            Self::Refunded | Self::Voided | Self::Failed => 5,
        }
    }

    /// No transition leaves these.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Refunded | Self::Voided | Self::Failed)
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the ledger knows about one payment (a row of `payments` plus its pending refunds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentState {
    pub status: PaymentStatus,
    pub amount_minor: i64,
    pub currency: String,
    pub captured_minor: i64,
    pub refunded_minor: i64,
    /// Refunds accepted but not yet confirmed by the PSP (`refunds.status = 'PENDING'`).
    pub refund_reserved_minor: i64,
    pub psp_reference: Option<String>,
}

impl PaymentState {
    /// A new intent for `amount_minor` `currency`.
    pub fn intent(amount_minor: i64, currency: impl Into<String>) -> Self {
        Self {
            status: PaymentStatus::Intent,
            amount_minor,
            currency: currency.into(),
            captured_minor: 0,
            refunded_minor: 0,
            refund_reserved_minor: 0,
            psp_reference: None,
        }
    }

    /// What may still be refunded: captured minus refunded minus reserved.
    pub fn refundable_minor(&self) -> i64 {
        self.captured_minor - self.refunded_minor - self.refund_reserved_minor
    }
}

/// How a PSP authorization call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeOutcome {
    Authorized {
        psp_reference: String,
    },
    Declined {
        psp_reference: Option<String>,
        code: String,
    },
    /// Decided later by a callback.
    Pending {
        psp_reference: String,
    },
    /// No answer in time: the outcome is unknown (reconciled later).
    Timeout,
    /// The PSP answered with an error: nothing was authorized.
    PspError {
        detail: String,
    },
}

/// How a capture, void or refund call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    Succeeded {
        psp_reference: Option<String>,
    },
    /// The PSP said no (4xx with a code): retrying will not help.
    Refused {
        code: String,
    },
}

/// What a PSP callback reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackResult {
    Authorized { psp_reference: String },
    Declined { psp_reference: String, code: String },
}

/// Why a payment failed (the `reason` of `payment.failed.v1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    Declined,
    Timeout,
    PspError,
}

/// Everything that can happen to a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    CreateIntent {
        amount_minor: i64,
        currency: String,
    },
    Authorize,
    AuthorizeResult(AuthorizeOutcome),
    Callback(CallbackResult),
    Capture {
        amount_minor: i64,
    },
    CaptureResult {
        amount_minor: i64,
        outcome: CallOutcome,
    },
    /// Cancel the payment: an authorization is voided; a captured payment is refunded what
    /// is still refundable, as refund `refund_id` (derived from the command id by the caller,
    /// so a replay finds its refund).
    Void {
        refund_id: String,
    },
    VoidResult(CallOutcome),
    Refund {
        refund_id: String,
        amount_minor: i64,
    },
    RefundResult {
        refund_id: String,
        amount_minor: i64,
        outcome: CallOutcome,
    },
    /// The reconciler found that an authorization which timed out succeeded after all.
    LateAuthorization {
        psp_reference: String,
    },
}

/// What the worker must do after a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    CallAuthorize {
        amount_minor: i64,
    },
    CallCapture {
        psp_reference: String,
        amount_minor: i64,
    },
    CallVoid {
        psp_reference: String,
    },
    CallRefund {
        refund_id: String,
        psp_reference: String,
        amount_minor: i64,
    },
    /// Void an authorization the payment no longer wants (a late success).
    VoidLateAuthorization {
        psp_reference: String,
    },
    EmitAuthorized {
        psp_reference: String,
    },
    EmitFailed {
        reason: FailureReason,
        detail: Option<String>,
    },
    EmitRefunded {
        refund_id: String,
        amount_minor: i64,
        psp_reference: String,
    },
    /// The authorization's outcome is unknown: ask the PSP later, void a late success.
    Reconcile,
    /// The refund cannot be accepted (`code`), e.g. `refund_exceeds_captured`.
    RefuseRefund {
        refund_id: String,
        code: &'static str,
    },
    /// The input changes nothing (replay, wrong status); `why` is for the log.
    Ignore {
        why: &'static str,
    },
}

/// The result of [`decide`]: the state to store (None: there is no payment) and the effects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub state: Option<PaymentState>,
    pub effects: Vec<Effect>,
}

impl Decision {
    fn keep(state: Option<&PaymentState>, why: &'static str) -> Self {
        Self {
            state: state.cloned(),
            effects: vec![Effect::Ignore { why }],
        }
    }

    fn to(state: PaymentState, effects: Vec<Effect>) -> Self {
        Self {
            state: Some(state),
            effects,
        }
    }
}

/// Refund refused because it is larger than what is left to refund.
pub const REFUND_EXCEEDS_CAPTURED: &str = "refund_exceeds_captured";
/// Refund refused because the payment was never captured (or is finished).
pub const NOT_REFUNDABLE: &str = "not_refundable";
/// Refund refused because its amount is not positive.
pub const INVALID_AMOUNT: &str = "invalid_amount";

/// The next state and effects of `input` on `state` (None: no payment yet).
pub fn decide(state: Option<&PaymentState>, input: &Input) -> Decision {
    use PaymentStatus as S;
    let Some(current) = state else {
        return match input {
            Input::CreateIntent {
                amount_minor,
                currency,
            } if *amount_minor > 0 => Decision::to(
                PaymentState::intent(*amount_minor, currency.clone()),
                vec![],
            ),
            Input::CreateIntent { .. } => Decision::keep(None, "intent amount must be > 0"),
            Input::Refund { refund_id, .. } => Decision {
                state: None,
                effects: vec![Effect::RefuseRefund {
                    refund_id: refund_id.clone(),
                    code: NOT_REFUNDABLE,
                }],
            },
            _ => Decision::keep(None, "no payment intent"),
        };
    };
    let mut next = current.clone();
    match input {
        Input::CreateIntent { .. } => Decision::keep(state, "intent exists"),

        Input::Authorize => match current.status {
            // Authorizing: a replay after a crash or a pending answer; the PSP's idempotency
            // key makes the repeated call return the first answer.
            S::Intent | S::Authorizing => {
                next.status = S::Authorizing;
                Decision::to(
                    next,
                    vec![Effect::CallAuthorize {
                        amount_minor: current.amount_minor,
                    }],
                )
            }
            _ => Decision::keep(state, "already decided"),
        },

        Input::AuthorizeResult(outcome) => {
            if current.status != S::Authorizing {
                return late_answer(current, outcome);
            }
            match outcome {
                AuthorizeOutcome::Authorized { psp_reference } => {
                    next.status = S::Authorized;
                    next.psp_reference = Some(psp_reference.clone());
                    Decision::to(
                        next,
                        vec![Effect::EmitAuthorized {
                            psp_reference: psp_reference.clone(),
                        }],
                    )
                }
                AuthorizeOutcome::Declined {
                    psp_reference,
                    code,
                } => {
                    next.status = S::Failed;
                    next.psp_reference.clone_from(psp_reference);
                    Decision::to(
                        next,
                        vec![Effect::EmitFailed {
                            reason: FailureReason::Declined,
                            detail: Some(code.clone()),
                        }],
                    )
                }
                AuthorizeOutcome::Pending { psp_reference } => {
                    next.psp_reference = Some(psp_reference.clone());
                    Decision::to(next, vec![])
                }
                AuthorizeOutcome::Timeout => {
                    next.status = S::Failed;
                    Decision::to(
                        next,
                        vec![
                            Effect::EmitFailed {
                                reason: FailureReason::Timeout,
                                detail: Some("PSP_TIMEOUT".to_owned()),
                            },
                            Effect::Reconcile,
                        ],
                    )
                }
                AuthorizeOutcome::PspError { detail } => {
                    next.status = S::Failed;
                    Decision::to(
                        next,
                        vec![Effect::EmitFailed {
                            reason: FailureReason::PspError,
                            detail: Some(detail.clone()),
                        }],
                    )
                }
            }
        }

        Input::Callback(result) => match (current.status, result) {
            (S::Intent | S::Authorizing, CallbackResult::Authorized { psp_reference }) => {
                next.status = S::Authorized;
                next.psp_reference = Some(psp_reference.clone());
                Decision::to(
                    next,
                    vec![Effect::EmitAuthorized {
                        psp_reference: psp_reference.clone(),
                    }],
                )
            }
            (
                S::Intent | S::Authorizing,
                CallbackResult::Declined {
                    psp_reference,
                    code,
                },
            ) => {
                next.status = S::Failed;
                next.psp_reference = Some(psp_reference.clone());
                Decision::to(
                    next,
                    vec![Effect::EmitFailed {
                        reason: FailureReason::Declined,
                        detail: Some(code.clone()),
                    }],
                )
            }
            (S::Failed | S::Voided, CallbackResult::Authorized { psp_reference }) => {
                void_late(current, psp_reference)
            }
            _ => Decision::keep(state, "callback changes nothing"),
        },

        Input::LateAuthorization { psp_reference } => match current.status {
            S::Failed | S::Voided => void_late(current, psp_reference),
            _ => Decision::keep(state, "the payment still wants its authorization"),
        },

        Input::Capture { amount_minor } => match (current.status, &current.psp_reference) {
            (S::Authorized, Some(reference)) => {
                if *amount_minor <= 0 || *amount_minor > current.amount_minor {
                    return Decision::keep(state, "capture amount outside 1..=authorized");
                }
                Decision::to(
                    next,
                    vec![Effect::CallCapture {
                        psp_reference: reference.clone(),
                        amount_minor: *amount_minor,
                    }],
                )
            }
            _ => Decision::keep(state, "not capturable"),
        },

        Input::CaptureResult {
            amount_minor,
            outcome,
        } => match (current.status, outcome) {
            (S::Authorized, CallOutcome::Succeeded { .. })
                if *amount_minor > 0 && *amount_minor <= current.amount_minor =>
            {
                next.status = S::Captured;
                next.captured_minor = *amount_minor;
                Decision::to(next, vec![])
            }
            _ => Decision::keep(state, "capture result changes nothing"),
        },

        Input::Void { refund_id } => match (current.status, &current.psp_reference) {
            (S::Intent, _) => {
                next.status = S::Voided;
                Decision::to(next, vec![])
            }
            (S::Authorized | S::Authorizing, Some(reference)) => Decision::to(
                next,
                vec![Effect::CallVoid {
                    psp_reference: reference.clone(),
                }],
            ),
            // Authorizing without a PSP reference: the call's outcome is unknown. Stop
            // waiting for it and void whatever the PSP decided, once we learn it.
            (S::Authorizing, None) => {
                next.status = S::Voided;
                Decision::to(next, vec![Effect::Reconcile])
            }
            // A cancelled order's captured money goes back: refund what is left to refund.
            (S::Captured | S::PartiallyRefunded, Some(reference))
                if current.refundable_minor() > 0 =>
            {
                let amount_minor = current.refundable_minor();
                next.refund_reserved_minor += amount_minor;
                Decision::to(
                    next,
                    vec![Effect::CallRefund {
                        refund_id: refund_id.clone(),
                        psp_reference: reference.clone(),
                        amount_minor,
                    }],
                )
            }
            _ => Decision::keep(state, "nothing to void"),
        },

        Input::VoidResult(outcome) => match (current.status, outcome) {
            (S::Authorized | S::Authorizing, CallOutcome::Succeeded { .. }) => {
                next.status = S::Voided;
                Decision::to(next, vec![])
            }
            _ => Decision::keep(state, "void result changes nothing"),
        },

        Input::Refund {
            refund_id,
            amount_minor,
        } => {
            let refuse = |code| Decision {
                state: state.cloned(),
                effects: vec![Effect::RefuseRefund {
                    refund_id: refund_id.clone(),
                    code,
                }],
            };
            let (S::Captured | S::PartiallyRefunded, Some(reference)) =
                (current.status, &current.psp_reference)
            else {
                return refuse(NOT_REFUNDABLE);
            };
            if *amount_minor <= 0 {
                return refuse(INVALID_AMOUNT);
            }
            if *amount_minor > current.refundable_minor() {
                return refuse(REFUND_EXCEEDS_CAPTURED);
            }
            next.refund_reserved_minor += amount_minor;
            Decision::to(
                next,
                vec![Effect::CallRefund {
                    refund_id: refund_id.clone(),
                    psp_reference: reference.clone(),
                    amount_minor: *amount_minor,
                }],
            )
        }

        Input::RefundResult {
            refund_id,
            amount_minor,
            outcome,
        } => {
            if *amount_minor <= 0 || *amount_minor > current.refund_reserved_minor {
                return Decision::keep(state, "no such reserved refund");
            }
            next.refund_reserved_minor -= amount_minor;
            match outcome {
                CallOutcome::Succeeded { psp_reference } => {
                    next.refunded_minor += amount_minor;
                    next.status = if next.refunded_minor >= next.captured_minor {
                        S::Refunded
                    } else {
                        S::PartiallyRefunded
                    };
                    Decision::to(
                        next,
                        vec![Effect::EmitRefunded {
                            refund_id: refund_id.clone(),
                            amount_minor: *amount_minor,
                            psp_reference: psp_reference.clone().unwrap_or_default(),
                        }],
                    )
                }
                CallOutcome::Refused { .. } => Decision::to(next, vec![]),
            }
        }
    }
}

/// An authorization answer for a payment that stopped waiting for it (voided or failed).
fn late_answer(current: &PaymentState, outcome: &AuthorizeOutcome) -> Decision {
    match (current.status, outcome) {
        (
            PaymentStatus::Failed | PaymentStatus::Voided,
            AuthorizeOutcome::Authorized { psp_reference },
        ) => void_late(current, psp_reference),
        _ => Decision::keep(Some(current), "authorization answer for a decided payment"),
    }
}

fn void_late(current: &PaymentState, psp_reference: &str) -> Decision {
    let mut next = current.clone();
    if next.psp_reference.is_none() {
        next.psp_reference = Some(psp_reference.to_owned());
    }
    Decision::to(
        next,
        vec![Effect::VoidLateAuthorization {
            psp_reference: psp_reference.to_owned(),
        }],
    )
}
