//! One payment command, applied: decide, call the PSP, write ledger + outbox.
//!
//! A command that needs the PSP runs in three steps:
//! 1. one transaction locks the payment (`FOR UPDATE`), decides, stores the intermediate state
//!    (`AUTHORIZING`, a `PENDING` refund that reserves its amount) and the attempt row with its
//!    idempotency key, and commits;
//! 2. the PSP call, outside any transaction, with that key;
//! 3. one transaction locks the payment again, feeds the PSP's answer to `decide`, and writes
//!    the attempt's outcome, the new state, the outbox rows and the `processed_commands` row.
//!
//! A crash between 1 and 3 replays the command: step 1 finds the attempt by its key and the PSP
//! answers the repeated call with its first answer. A second delivery after 3 finds the
//! `processed_commands` row and changes nothing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keel_avro::Codec;
use keel_avro::records::{
    Money, PaymentAuthorized, PaymentCommand, PaymentCommandBody, PaymentFailed,
    PaymentFailureReason, PaymentRefunded, PspCallback, PspOutcome, RefundPayment,
};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use super::ledger::{self, AttemptKind, AttemptOutcome, NewAttempt, NewRefund, PaymentRow};
use super::logic::{
    self, AuthorizeOutcome, CallOutcome, CallbackResult, Decision, Effect, FailureReason, Input,
    PaymentState,
};
use super::metrics::PaymentMetrics;
use super::psp::PspClient;
use super::{Error, PaymentConfig, Result};
use crate::psp_mock::api::AuthorizationRequest;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handled {
    /// It changed the ledger (state, attempt, refund or outbox).
    Applied,
    /// It was applied before: nothing changed.
    Replayed,
    /// It did not apply to the payment (unknown payment, wrong status): recorded, no change.
    Ignored,
}

impl Handled {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Replayed => "replayed",
            Self::Ignored => "ignored",
        }
    }
}

/// Where the outbox rows go.
#[derive(Debug, Clone)]
pub(crate) struct Topics {
    pub authorized: String,
    pub failed: String,
    pub refunded: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Service {
    pub(super) pg: PgPool,
    pub(super) codec: Codec,
    pub(super) psp: PspClient,
    pub(super) topics: Topics,
    pub(super) metrics: PaymentMetrics,
}

/// The PSP call a decision asks for.
#[derive(Debug, Clone)]
enum Call {
    Authorize,
    Capture {
        psp_reference: String,
        amount_minor: i64,
    },
    Void {
        psp_reference: String,
    },
    Refund {
        refund_id: String,
        psp_reference: String,
        amount_minor: i64,
    },
}

impl Call {
    fn from_effects(effects: &[Effect]) -> Option<Self> {
        effects.iter().find_map(|e| match e {
            Effect::CallAuthorize { .. } => Some(Self::Authorize),
            Effect::CallCapture {
                psp_reference,
                amount_minor,
            } => Some(Self::Capture {
                psp_reference: psp_reference.clone(),
                amount_minor: *amount_minor,
            }),
            Effect::CallVoid { psp_reference } => Some(Self::Void {
                psp_reference: psp_reference.clone(),
            }),
            Effect::CallRefund {
                refund_id,
                psp_reference,
                amount_minor,
            } => Some(Self::Refund {
                refund_id: refund_id.clone(),
                psp_reference: psp_reference.clone(),
                amount_minor: *amount_minor,
            }),
            _ => None,
        })
    }

    fn kind(&self) -> AttemptKind {
        match self {
            Self::Authorize => AttemptKind::Authorize,
            Self::Capture { .. } => AttemptKind::Capture,
            Self::Void { .. } => AttemptKind::Void,
            Self::Refund { .. } => AttemptKind::Refund,
        }
    }

    /// The idempotency key the PSP sees: derived from the payment, so every replay of the
    /// same step uses the same key.
    fn idempotency_key(&self, payment_id: &str) -> String {
        match self {
            Self::Authorize => authorize_key(payment_id),
            Self::Capture { .. } => format!("{payment_id}:capture"),
            Self::Void { .. } => format!("{payment_id}:void"),
            Self::Refund { refund_id, .. } => format!("{payment_id}:refund:{refund_id}"),
        }
    }
}

/// The refund id of a void that found the payment captured: one per void command, so a
/// replayed void finds its refund.
pub(crate) fn void_refund_id(command_id: &str) -> String {
    format!("void-{command_id}")
}

/// The idempotency key of a payment's authorization.
pub(crate) fn authorize_key(payment_id: &str) -> String {
    format!("{payment_id}:authorize")
}

/// The PSP's answer, as the next input and the attempt's outcome.
struct Answer {
    input: Input,
    outcome: AttemptOutcome,
    code: Option<String>,
    latency: Duration,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn call_answer(input: Input, outcome: &CallOutcome, latency: Duration) -> Answer {
    let (attempt, code) = match outcome {
        CallOutcome::Succeeded { .. } => (AttemptOutcome::Succeeded, None),
        CallOutcome::Refused { code } => (AttemptOutcome::Declined, Some(code.clone())),
    };
    Answer {
        input,
        outcome: attempt,
        code,
        latency,
    }
}

impl Service {
    pub(crate) fn new(
        config: &PaymentConfig,
        pg: PgPool,
        codec: Codec,
        metrics: PaymentMetrics,
    ) -> Result<Self> {
        Ok(Self {
            psp: PspClient::new(config, metrics.clone())?,
            pg,
            codec,
            topics: Topics {
                authorized: config.authorized_topic.clone(),
                failed: config.failed_topic.clone(),
                refunded: config.refunded_topic.clone(),
            },
            metrics,
        })
    }

    pub(super) async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        self.pg.begin().await.map_err(|source| Error::Database {
            operation: "begin a transaction",
            source,
        })
    }

    /// Apply one command. Errors are the dependency's (retry) or the command's (skip), see
    /// [`Error::action`].
    pub(crate) async fn handle(&self, cmd: &PaymentCommand) -> Result<Handled> {
        if ledger::is_processed(&self.pg, &cmd.command_id).await? {
            return Ok(Handled::Replayed);
        }
        match &cmd.command {
            PaymentCommandBody::CreateIntent(intent) => {
                let row = PaymentRow {
                    payment_id: cmd.payment_id.clone(),
                    order_id: cmd.order_id.clone(),
                    customer_id: intent.customer_id.clone(),
                    payment_method: intent.payment_method.clone(),
                    state: PaymentState::intent(
                        intent.amount.amount_minor,
                        &intent.amount.currency,
                    ),
                };
                self.create_intent(cmd, &row).await
            }
            PaymentCommandBody::Authorize(authorize) => {
                tracing::debug!(
                    payment_id = cmd.payment_id,
                    amount = authorize.amount.amount_minor,
                    "authorize"
                );
                self.with_psp_call(cmd, Input::Authorize).await
            }
            PaymentCommandBody::Capture(capture) => {
                let input = Input::Capture {
                    amount_minor: capture.amount.amount_minor,
                };
                self.with_psp_call(cmd, input).await
            }
            PaymentCommandBody::Void(void) => {
                tracing::debug!(payment_id = cmd.payment_id, reason = void.reason, "void");
                self.void(cmd, &void.reason).await
            }
            PaymentCommandBody::Refund(refund) => self.refund(cmd, refund).await,
            PaymentCommandBody::PspCallback(callback) => self.callback(cmd, callback).await,
        }
    }

    async fn create_intent(&self, cmd: &PaymentCommand, row: &PaymentRow) -> Result<Handled> {
        let decision = logic::decide(
            None,
            &Input::CreateIntent {
                amount_minor: row.state.amount_minor,
                currency: row.state.currency.clone(),
            },
        );
        let amount = row.state.amount_minor;
        if decision.state.is_none() || !crate::money::is_payable(amount, &row.state.currency) {
            // Break report 13, D3: ignored with a warning, such an intent left its order
            // waiting for an outcome until the saga's payment deadline.
            return Err(Error::InvalidCommand {
                command_id: cmd.command_id.clone(),
                detail: format!(
                    "intent of payment {} for {amount} {}: an amount is 1 to {} minor units of \
                     a currency in use",
                    row.payment_id,
                    row.state.currency,
                    crate::money::MAX_AMOUNT_MINOR
                ),
            });
        }
        let mut tx = self.begin().await?;
        let mut handled = Handled::Ignored;
        if ledger::insert_payment(&mut tx, row).await? {
            handled = Handled::Applied;
        } else {
            tracing::debug!(payment_id = row.payment_id, "payment intent exists");
        }
        self.finish(tx, cmd, handled).await
    }

    /// Record the command as processed and commit; `Replayed` if another delivery won.
    async fn finish(
        &self,
        mut tx: Transaction<'static, Postgres>,
        cmd: &PaymentCommand,
        handled: Handled,
    ) -> Result<Handled> {
        if !ledger::mark_processed(&mut tx, &cmd.command_id).await? {
            // Another delivery of this command committed first: undo everything.
            tx.rollback().await.map_err(|source| Error::Database {
                operation: "roll back a replayed command",
                source,
            })?;
            return Ok(Handled::Replayed);
        }
        tx.commit().await.map_err(|source| Error::Database {
            operation: "commit a command",
            source,
        })?;
        Ok(handled)
    }

    /// Cancel the payment: void its authorization, or refund a captured payment (refund
    /// [`void_refund_id`], event `payment.refunded.v1`). A replay after a crash between the
    /// refund's reservation and its answer calls the PSP again with the same key.
    async fn void(&self, cmd: &PaymentCommand, reason: &str) -> Result<Handled> {
        let refund_id = void_refund_id(&cmd.command_id);
        let mut tx = self.begin().await?;
        let Some(row) = ledger::lock_payment(&mut tx, &cmd.payment_id).await? else {
            tracing::warn!(
                payment_id = cmd.payment_id,
                "void for an unknown payment ignored"
            );
            return self.finish(tx, cmd, Handled::Ignored).await;
        };
        match ledger::refund_status(&mut tx, &refund_id).await? {
            Some((status, amount_minor)) if status == "PENDING" => {
                let call = Call::Refund {
                    refund_id,
                    psp_reference: row.state.psp_reference.clone().unwrap_or_default(),
                    amount_minor,
                };
                let attempt_id = self.begin_call(&mut tx, cmd, &row, &call).await?;
                commit(tx, "commit a void's refund").await?;
                return self.call_and_conclude(cmd, &row, &call, &attempt_id).await;
            }
            Some(_) => return self.finish(tx, cmd, Handled::Replayed).await,
            None => {}
        }
        let decision = logic::decide(Some(&row.state), &Input::Void { refund_id });
        let Some(call) = Call::from_effects(&decision.effects) else {
            let handled = self.conclude(&mut tx, cmd, &row, &decision).await?;
            return self.finish(tx, cmd, handled).await;
        };
        if let Call::Refund {
            refund_id,
            amount_minor,
            ..
        } = &call
        {
            tracing::info!(
                payment_id = row.payment_id,
                refund_id,
                amount = amount_minor,
                "void of a captured payment: refunding it"
            );
            ledger::insert_refund(
                &mut tx,
                &NewRefund {
                    refund_id,
                    payment_id: &row.payment_id,
                    amount_minor: *amount_minor,
                    reason,
                    status: "PENDING",
                    failure_code: None,
                },
            )
            .await?;
        }
        if let Some(state) = &decision.state
            && *state != row.state
        {
            ledger::save_state(&mut tx, &row.payment_id, state).await?;
        }
        let attempt_id = self.begin_call(&mut tx, cmd, &row, &call).await?;
        commit(tx, "commit a PSP attempt").await?;
        self.call_and_conclude(cmd, &row, &call, &attempt_id).await
    }

    async fn with_psp_call(&self, cmd: &PaymentCommand, input: Input) -> Result<Handled> {
        let mut tx = self.begin().await?;
        let Some(row) = ledger::lock_payment(&mut tx, &cmd.payment_id).await? else {
            tracing::warn!(
                payment_id = cmd.payment_id,
                "command for an unknown payment ignored"
            );
            return self.finish(tx, cmd, Handled::Ignored).await;
        };
        let decision = logic::decide(Some(&row.state), &input);
        let Some(call) = Call::from_effects(&decision.effects) else {
            let handled = self.conclude(&mut tx, cmd, &row, &decision).await?;
            return self.finish(tx, cmd, handled).await;
        };
        if let Some(state) = &decision.state
            && *state != row.state
        {
            ledger::save_state(&mut tx, &row.payment_id, state).await?;
        }
        let attempt_id = self.begin_call(&mut tx, cmd, &row, &call).await?;
        commit(tx, "commit a PSP attempt").await?;
        self.call_and_conclude(cmd, &row, &call, &attempt_id).await
    }

    async fn begin_call(
        &self,
        tx: &mut PgConnection,
        cmd: &PaymentCommand,
        row: &PaymentRow,
        call: &Call,
    ) -> Result<String> {
        let key = call.idempotency_key(&row.payment_id);
        let (attempt_id, _) = ledger::begin_attempt(
            tx,
            &NewAttempt {
                payment_id: &row.payment_id,
                command_id: Some(&cmd.command_id),
                idempotency_key: &key,
                kind: call.kind(),
                outcome: AttemptOutcome::Pending,
                decline_code: None,
                psp_event_id: None,
                stale: false,
            },
        )
        .await?;
        Ok(attempt_id)
    }

    /// Steps 2 and 3: the PSP call, then the answer's transaction.
    async fn call_and_conclude(
        &self,
        cmd: &PaymentCommand,
        row: &PaymentRow,
        call: &Call,
        attempt_id: &str,
    ) -> Result<Handled> {
        let answer = self.perform(row, call).await?;
        self.metrics
            .attempt(call.kind().label(), answer.outcome.label(), answer.latency);
        let mut tx = self.begin().await?;
        let Some(row) = ledger::lock_payment(&mut tx, &row.payment_id).await? else {
            return Err(Error::Task(format!(
                "payment {} vanished during a PSP call",
                row.payment_id
            )));
        };
        let decision = logic::decide(Some(&row.state), &answer.input);
        ledger::finish_attempt(
            &mut tx,
            attempt_id,
            answer.outcome,
            answer.code.as_deref(),
            i64::try_from(answer.latency.as_millis()).unwrap_or(i64::MAX),
        )
        .await?;
        if let Input::RefundResult {
            refund_id, outcome, ..
        } = &answer.input
        {
            let (status, psp_reference, code) = match outcome {
                CallOutcome::Succeeded { psp_reference } => {
                    ("SUCCEEDED", psp_reference.as_deref(), None)
                }
                CallOutcome::Refused { code } => ("FAILED", None, Some(code.as_str())),
            };
            ledger::finish_refund(&mut tx, refund_id, status, psp_reference, code).await?;
        }
        self.conclude(&mut tx, cmd, &row, &decision).await?;
        self.finish(tx, cmd, Handled::Applied).await
    }

    async fn perform(&self, row: &PaymentRow, call: &Call) -> Result<Answer> {
        let key = call.idempotency_key(&row.payment_id);
        Ok(match call {
            Call::Authorize => {
                let req = AuthorizationRequest {
                    amount_minor: row.state.amount_minor,
                    currency: row.state.currency.clone(),
                    payment_method: row.payment_method.clone(),
                    reference: row.payment_id.clone(),
                };
                let (outcome, latency) = self.psp.authorize(&key, &req).await;
                let (attempt, code) = match &outcome {
                    AuthorizeOutcome::Authorized { .. } => (AttemptOutcome::Succeeded, None),
                    AuthorizeOutcome::Declined { code, .. } => {
                        (AttemptOutcome::Declined, Some(code.clone()))
                    }
                    AuthorizeOutcome::Pending { .. } => (AttemptOutcome::Pending, None),
                    AuthorizeOutcome::Timeout => (AttemptOutcome::Timeout, None),
                    AuthorizeOutcome::PspError { detail } => {
                        (AttemptOutcome::Failed, Some(detail.clone()))
                    }
                };
                Answer {
                    input: Input::AuthorizeResult(outcome),
                    outcome: attempt,
                    code,
                    latency,
                }
            }
            Call::Capture {
                psp_reference,
                amount_minor,
            } => {
                let (outcome, latency) =
                    self.psp.capture(psp_reference, &key, *amount_minor).await?;
                let input = Input::CaptureResult {
                    amount_minor: *amount_minor,
                    outcome: outcome.clone(),
                };
                call_answer(input, &outcome, latency)
            }
            Call::Void { psp_reference } => {
                let (outcome, latency) = self.psp.void(psp_reference, &key).await?;
                call_answer(Input::VoidResult(outcome.clone()), &outcome, latency)
            }
            Call::Refund {
                refund_id,
                psp_reference,
                amount_minor,
            } => {
                let (outcome, latency) = self
                    .psp
                    .refund(psp_reference, &key, refund_id, *amount_minor)
                    .await?;
                let input = Input::RefundResult {
                    refund_id: refund_id.clone(),
                    amount_minor: *amount_minor,
                    outcome: outcome.clone(),
                };
                call_answer(input, &outcome, latency)
            }
        })
    }

    async fn refund(&self, cmd: &PaymentCommand, refund: &RefundPayment) -> Result<Handled> {
        let mut tx = self.begin().await?;
        let Some(row) = ledger::lock_payment(&mut tx, &cmd.payment_id).await? else {
            tracing::warn!(
                payment_id = cmd.payment_id,
                refund_id = refund.refund_id,
                "refund for an unknown payment ignored"
            );
            return self.finish(tx, cmd, Handled::Ignored).await;
        };
        let call = match ledger::refund_status(&mut tx, &refund.refund_id).await? {
            // Accepted earlier, the PSP's answer never recorded (crash): call again, same key.
            Some((status, amount_minor)) if status == "PENDING" => Call::Refund {
                refund_id: refund.refund_id.clone(),
                psp_reference: row.state.psp_reference.clone().unwrap_or_default(),
                amount_minor,
            },
            Some(_) => return self.finish(tx, cmd, Handled::Replayed).await,
            None if refund.amount.amount_minor <= 0 => {
                tracing::warn!(
                    payment_id = row.payment_id,
                    refund_id = refund.refund_id,
                    amount = refund.amount.amount_minor,
                    "refund of a non-positive amount ignored"
                );
                return self.finish(tx, cmd, Handled::Ignored).await;
            }
            None => {
                let decision = logic::decide(
                    Some(&row.state),
                    &Input::Refund {
                        refund_id: refund.refund_id.clone(),
                        amount_minor: refund.amount.amount_minor,
                    },
                );
                let refused = decision.effects.iter().find_map(|e| match e {
                    Effect::RefuseRefund { code, .. } => Some(*code),
                    _ => None,
                });
                let currency_differs = refund.amount.currency != row.state.currency;
                let code = if currency_differs {
                    Some("currency_mismatch")
                } else {
                    refused
                };
                let status = if code.is_some() { "REFUSED" } else { "PENDING" };
                ledger::insert_refund(
                    &mut tx,
                    &NewRefund {
                        refund_id: &refund.refund_id,
                        payment_id: &row.payment_id,
                        amount_minor: refund.amount.amount_minor,
                        reason: &refund.reason,
                        status,
                        failure_code: code,
                    },
                )
                .await?;
                if let Some(code) = code {
                    tracing::warn!(
                        payment_id = row.payment_id,
                        refund_id = refund.refund_id,
                        amount = refund.amount.amount_minor,
                        code,
                        "refund refused"
                    );
                    return self.finish(tx, cmd, Handled::Applied).await;
                }
                let Some(call) = Call::from_effects(&decision.effects) else {
                    return self.finish(tx, cmd, Handled::Ignored).await;
                };
                // The reservation, on the locked row (migration 0004).
                if let Some(state) = &decision.state
                    && *state != row.state
                {
                    ledger::save_state(&mut tx, &row.payment_id, state).await?;
                }
                call
            }
        };
        let attempt_id = self.begin_call(&mut tx, cmd, &row, &call).await?;
        commit(tx, "commit a refund reservation").await?;
        self.call_and_conclude(cmd, &row, &call, &attempt_id).await
    }

    async fn callback(&self, cmd: &PaymentCommand, callback: &PspCallback) -> Result<Handled> {
        let mut tx = self.begin().await?;
        let mut row = ledger::lock_payment(&mut tx, &cmd.payment_id).await?;
        if row.is_none() {
            row = ledger::lock_payment_by_psp_reference(&mut tx, &callback.psp_reference).await?;
        }
        let Some(row) = row else {
            tracing::warn!(
                psp_reference = callback.psp_reference,
                "callback for an unknown payment"
            );
            return self.finish(tx, cmd, Handled::Ignored).await;
        };
        if ledger::has_event(&mut tx, &callback.psp_event_id).await? {
            return self.finish(tx, cmd, Handled::Replayed).await;
        }
        let psp_reference = callback.psp_reference.clone();
        let code = || {
            callback
                .decline_code
                .clone()
                .unwrap_or_else(|| "declined".to_owned())
        };
        let (result, outcome) = match callback.outcome {
            PspOutcome::Authorized => (
                CallbackResult::Authorized { psp_reference },
                AttemptOutcome::Succeeded,
            ),
            PspOutcome::Declined => (
                CallbackResult::Declined {
                    psp_reference,
                    code: code(),
                },
                AttemptOutcome::Declined,
            ),
            PspOutcome::Failed => (
                CallbackResult::Declined {
                    psp_reference,
                    code: code(),
                },
                AttemptOutcome::Failed,
            ),
            PspOutcome::Refunded => {
                tracing::debug!(
                    payment_id = row.payment_id,
                    "refund callback: nothing to do"
                );
                return self.finish(tx, cmd, Handled::Ignored).await;
            }
        };
        let decline_code = matches!(result, CallbackResult::Declined { .. }).then(code);
        let key = format!("{}:callback:{}", row.payment_id, callback.psp_event_id);
        let decision = logic::decide(Some(&row.state), &Input::Callback(result));
        let settles = decision
            .state
            .as_ref()
            .is_some_and(|s| s.status != row.state.status);
        // Every PSP message is kept for audit; one that changes nothing (the payment moved
        // past it: a declined callback for a captured payment) is marked stale, and is no
        // attempt and no failure in the metrics.
        let stale = !settles
            && !decision
                .effects
                .iter()
                .any(|e| matches!(e, Effect::VoidLateAuthorization { .. }));
        ledger::begin_attempt(
            &mut tx,
            &NewAttempt {
                payment_id: &row.payment_id,
                command_id: Some(&cmd.command_id),
                idempotency_key: &key,
                kind: AttemptKind::Authorize,
                outcome,
                decline_code: decline_code.as_deref(),
                psp_event_id: Some(&callback.psp_event_id),
                stale,
            },
        )
        .await?;
        self.metrics.callback(outcome.label(), stale);
        if settles {
            self.metrics.authorization_settled(outcome.label());
            ledger::settle_pending_authorization(
                &mut tx,
                &row.payment_id,
                outcome,
                decline_code.as_deref(),
            )
            .await?;
        }
        self.conclude(&mut tx, cmd, &row, &decision).await?;
        self.finish(tx, cmd, Handled::Applied).await
    }

    /// Carry out a decision inside `tx`: the outbox rows, a late void, the new state.
    /// Returns `Ignored` when the decision changed nothing.
    pub(super) async fn conclude(
        &self,
        tx: &mut PgConnection,
        cmd: &PaymentCommand,
        row: &PaymentRow,
        decision: &Decision,
    ) -> Result<Handled> {
        let mut handled = Handled::Ignored;
        for effect in &decision.effects {
            match effect {
                Effect::EmitAuthorized { psp_reference } => {
                    let event = PaymentAuthorized {
                        event_id: uuid::Uuid::new_v4().to_string(),
                        payment_id: row.payment_id.clone(),
                        occurred_at: now_ms(),
                        causation_id: cmd.command_id.clone(),
                        correlation_id: cmd.correlation_id.clone(),
                        order_id: row.order_id.clone(),
                        amount: Money::new(row.state.amount_minor, &row.state.currency),
                        psp_reference: psp_reference.clone(),
                    };
                    let payload = self
                        .codec
                        .encode_to(&self.topics.authorized, &event)
                        .await?;
                    ledger::insert_outbox(
                        tx,
                        &event.event_id,
                        &row.order_id,
                        &self.topics.authorized,
                        &payload,
                    )
                    .await?;
                    handled = Handled::Applied;
                }
                Effect::EmitFailed { reason, detail } => {
                    let event = PaymentFailed {
                        event_id: uuid::Uuid::new_v4().to_string(),
                        payment_id: row.payment_id.clone(),
                        occurred_at: now_ms(),
                        causation_id: cmd.command_id.clone(),
                        correlation_id: cmd.correlation_id.clone(),
                        order_id: row.order_id.clone(),
                        amount: Money::new(row.state.amount_minor, &row.state.currency),
                        reason: match reason {
                            FailureReason::Declined => PaymentFailureReason::Declined,
                            FailureReason::Timeout => PaymentFailureReason::Timeout,
                            FailureReason::PspError => PaymentFailureReason::PspError,
                        },
                        detail: detail.clone(),
                    };
                    let payload = self.codec.encode_to(&self.topics.failed, &event).await?;
                    ledger::insert_outbox(
                        tx,
                        &event.event_id,
                        &row.order_id,
                        &self.topics.failed,
                        &payload,
                    )
                    .await?;
                    handled = Handled::Applied;
                }
                Effect::EmitRefunded {
                    refund_id,
                    amount_minor,
                    psp_reference,
                } => {
                    let event = PaymentRefunded {
                        event_id: uuid::Uuid::new_v4().to_string(),
                        payment_id: row.payment_id.clone(),
                        occurred_at: now_ms(),
                        causation_id: cmd.command_id.clone(),
                        correlation_id: cmd.correlation_id.clone(),
                        order_id: row.order_id.clone(),
                        refund_id: refund_id.clone(),
                        amount: Money::new(*amount_minor, &row.state.currency),
                        psp_reference: psp_reference.clone(),
                    };
                    let payload = self.codec.encode_to(&self.topics.refunded, &event).await?;
                    ledger::insert_outbox(
                        tx,
                        &event.event_id,
                        &row.order_id,
                        &self.topics.refunded,
                        &payload,
                    )
                    .await?;
                    handled = Handled::Applied;
                }
                Effect::VoidLateAuthorization { psp_reference } => {
                    self.void_late(tx, &row.payment_id, psp_reference).await?;
                    handled = Handled::Applied;
                }
                Effect::Reconcile => {
                    ledger::mark_authorization_unknown(tx, &row.payment_id).await?;
                }
                Effect::Ignore { why } => {
                    tracing::debug!(
                        payment_id = row.payment_id,
                        command_id = cmd.command_id,
                        why,
                        "command changes nothing"
                    );
                }
                Effect::RefuseRefund { refund_id, code } => {
                    tracing::warn!(
                        payment_id = row.payment_id,
                        refund_id,
                        code,
                        "refund refused"
                    );
                }
                Effect::CallAuthorize { .. }
                | Effect::CallCapture { .. }
                | Effect::CallVoid { .. }
                | Effect::CallRefund { .. } => {
                    tracing::warn!(
                        payment_id = row.payment_id,
                        ?effect,
                        "a PSP call asked for after a PSP answer is not made"
                    );
                }
            }
        }
        if let Some(state) = &decision.state
            && *state != row.state
        {
            ledger::save_state(tx, &row.payment_id, state).await?;
            handled = Handled::Applied;
        }
        Ok(handled)
    }

    /// Void an authorization the payment no longer wants (a success that came too late),
    /// and record the void attempt. Idempotent: the key is fixed per payment.
    pub(super) async fn void_late(
        &self,
        tx: &mut PgConnection,
        payment_id: &str,
        psp_reference: &str,
    ) -> Result<()> {
        let key = format!("{payment_id}:void-late");
        let (outcome, latency) = self.psp.void(psp_reference, &key).await?;
        let (attempt, code) = match &outcome {
            CallOutcome::Succeeded { .. } => (AttemptOutcome::Succeeded, None),
            CallOutcome::Refused { code } => (AttemptOutcome::Declined, Some(code.as_str())),
        };
        self.metrics
            .attempt(AttemptKind::Void.label(), attempt.label(), latency);
        let (attempt_id, new) = ledger::begin_attempt(
            tx,
            &NewAttempt {
                payment_id,
                command_id: None,
                idempotency_key: &key,
                kind: AttemptKind::Void,
                outcome: attempt,
                decline_code: code,
                psp_event_id: None,
                stale: false,
            },
        )
        .await?;
        if !new {
            ledger::finish_attempt(
                tx,
                &attempt_id,
                attempt,
                code,
                i64::try_from(latency.as_millis()).unwrap_or(i64::MAX),
            )
            .await?;
        }
        match outcome {
            CallOutcome::Succeeded { .. } => {
                tracing::info!(payment_id, psp_reference, "late authorization voided");
            }
            CallOutcome::Refused { code } => {
                tracing::error!(
                    payment_id,
                    psp_reference,
                    code,
                    "a late authorization could not be voided: needs a person"
                );
            }
        }
        Ok(())
    }
}

pub(super) async fn commit(
    tx: Transaction<'static, Postgres>,
    operation: &'static str,
) -> Result<()> {
    tx.commit()
        .await
        .map_err(|source| Error::Database { operation, source })
}
