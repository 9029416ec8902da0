//! The reconciliation rules, pure: [`decide`]`(state, input, now, rules) -> (state, outputs)`.
//!
//! One order's state ([`OrderRecon`]) holds the saga's latest decision and the ledger's latest
//! payment row (from CDC). After every input each [`MismatchKind`] is evaluated:
//!
//! | kind | holds while | opened |
//! | --- | --- | --- |
//! | `AUTHORIZED_BUT_CANCELLED` | the order is `CANCELLED` and the payment still holds money (`AUTHORIZED`, `CAPTURED`, `PARTIALLY_REFUNDED`) | after `cancelled_grace_ms` (the saga's void or refund takes a moment) |
//! | `CONFIRMED_WITHOUT_CAPTURE` | the order is `CONFIRMED` and the ledger has no capture (no payment, or `captured_minor = 0`) | after `capture_grace_ms` |
//! | `AMOUNT_MISMATCH` | the order is `CONFIRMED`, something was captured, and captured ≠ the order's total (amount or currency) | at once: a capture is final |
//!
//! A kind that starts holding becomes a *suspect* due at `now + grace`; it is opened when it
//! still holds at a [`Input::Due`] at or after that time **and the ledger has been seen up to
//! that time** (`Now::ledger_seen_ms`, the newest CDC source time seen, heartbeats included):
//! while the CDC lags, the ledger state we hold is old, and a void that already happened must
//! not be reported as missing. A mismatch stops holding → a suspect is dropped, an open mismatch
//! is *resolved* (an output with `resolved_at`).
//!
//! CDC changes carry their log position; a change at or before the last applied one is a
//! duplicate (Debezium re-sends after restarts) and changes nothing. Decisions apply only when
//! their `sequence` is higher than the one held.
//!
//! ## Retention
//! An order's entry is deleted `retention_ms` (`[reconciliation].retention_ms`, default 7 days)
//! after its last change **while nothing about it waits**: no suspect in its grace and no open
//! mismatch. [`OrderRecon::retire_at`] says when; the order's one timer is armed at the earliest
//! of its grace periods or, when none runs, at `retire_at` ([`Output::Arm`]), and a
//! [`Input::Due`] at or after `retire_at` with nothing waiting deletes the entry and its timer
//! ([`Output::Forget`]). Every change moves `retire_at` on, so an order is kept as long as it
//! changes, and its duplicates are recognised for `retention_ms` after the last one.
//! - **An open mismatch is never forgotten**: it is a finding the finance view and
//!   `keel_reconciliation_open_mismatches` show until it is resolved (the void or the capture
//!   arrives); its entry has no retention until then, and `retention_ms` counts from the
//!   resolution. A suspect first waits out its grace (then it opens, or is dropped).
//! - **Late after retention**: an input for an order without an entry whose own time (a
//!   decision's `decided_at`, a CDC change's source commit time) is more than `retention_ms`
//!   before the task's stream time ([`Now::stream_ms`], the newest record time it has seen) is
//!   *late* ([`Output::Late`]): counted, not applied, no entry created. Its order's entry, if it
//!   ever had one, was deleted (an entry lives at least `retention_ms` after its last change), so
//!   applying it would start from nothing — an old `CONFIRMED` re-delivered without its payment
//!   would become a false `CONFIRMED_WITHOUT_CAPTURE`. Judged by stream time rather than the
//!   wall clock, a role that catches up after a long stop still applies its backlog. An input
//!   that is not late for an order without an entry starts a new one (a ledger change alone
//!   never makes a mismatch: every kind needs the saga's decision).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cdc::{Field, Op, Position};

/// The kinds of mismatch between the saga and the ledger.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MismatchKind {
    AuthorizedButCancelled,
    ConfirmedWithoutCapture,
    AmountMismatch,
}

impl MismatchKind {
    pub const ALL: [MismatchKind; 3] = [
        Self::AuthorizedButCancelled,
        Self::ConfirmedWithoutCapture,
        Self::AmountMismatch,
    ];

    /// The code (also the metric label and the Avro symbol).
    pub fn code(self) -> &'static str {
        match self {
            Self::AuthorizedButCancelled => "AUTHORIZED_BUT_CANCELLED",
            Self::ConfirmedWithoutCapture => "CONFIRMED_WITHOUT_CAPTURE",
            Self::AmountMismatch => "AMOUNT_MISMATCH",
        }
    }
}

/// The saga's decided status of an order, as `order.decisions.v1` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderState {
    Pending,
    Confirmed,
    Cancelled,
    Rejected,
}

impl OrderState {
    pub fn code(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Confirmed => "CONFIRMED",
            Self::Cancelled => "CANCELLED",
            Self::Rejected => "REJECTED",
        }
    }
}

/// What reconciliation keeps of the saga's latest decision for an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionFacts {
    pub decision_id: String,
    pub sequence: i32,
    pub status: OrderState,
    /// The order's total in minor units, and its currency.
    pub total_minor: i64,
    pub currency: String,
    /// ms since the epoch.
    pub decided_at: i64,
}

/// A `payments` row as one CDC change carries it: text columns may be
/// [`Field::Unchanged`] (the TOAST placeholder), integers never are (PostgreSQL does not TOAST
/// them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRow {
    pub payment_id: Field<String>,
    pub status: Field<String>,
    pub currency: Field<String>,
    pub psp_reference: Field<String>,
    pub amount_minor: i64,
    pub captured_minor: i64,
    pub refunded_minor: i64,
    /// `updated_at`, ms since the epoch.
    pub updated_ms: Option<i64>,
}

/// What reconciliation keeps of the ledger's payment for an order (never a TOAST placeholder).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerPayment {
    pub payment_id: Option<String>,
    pub status: Option<String>,
    pub currency: Option<String>,
    pub psp_reference: Option<String>,
    pub amount_minor: i64,
    pub captured_minor: i64,
    pub refunded_minor: i64,
    pub updated_ms: Option<i64>,
}

impl LedgerPayment {
    /// `row` over `previous`: unchanged columns keep the previous value.
    pub fn merge(row: PaymentRow, previous: Option<&LedgerPayment>) -> Self {
        let prev = |f: fn(&LedgerPayment) -> &Option<String>| previous.and_then(|p| f(p).clone());
        Self {
            payment_id: row.payment_id.or_previous(prev(|p| &p.payment_id)),
            status: row.status.or_previous(prev(|p| &p.status)),
            currency: row.currency.or_previous(prev(|p| &p.currency)),
            psp_reference: row.psp_reference.or_previous(prev(|p| &p.psp_reference)),
            amount_minor: row.amount_minor,
            captured_minor: row.captured_minor,
            refunded_minor: row.refunded_minor,
            updated_ms: row.updated_ms,
        }
    }

    fn holds_money(&self) -> bool {
        matches!(
            self.status.as_deref(),
            Some("AUTHORIZED" | "CAPTURED" | "PARTIALLY_REFUNDED")
        )
    }
}

/// An open mismatch: what was seen when it was opened (and last re-evaluated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    pub order_id: String,
    pub kind: MismatchKind,
    /// When it was opened (ms since the epoch).
    pub opened_at: i64,
    /// When the condition was first seen (ms): `opened_at` minus the wait.
    pub since: i64,
    pub detail: String,
    pub payment_id: Option<String>,
    pub order_status: Option<String>,
    pub payment_status: Option<String>,
    /// The order's total and what the ledger captured, in minor units of `currency`.
    pub order_total_minor: Option<i64>,
    pub captured_minor: Option<i64>,
    pub currency: Option<String>,
}

/// Everything reconciliation stores per order id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecon {
    pub decision: Option<DecisionFacts>,
    pub payment: Option<LedgerPayment>,
    /// The log position of the last CDC change applied (duplicates are at or before it).
    pub applied: Option<Position>,
    /// Kinds that hold but wait out their grace: kind → (first seen, due) in ms.
    pub suspects: BTreeMap<MismatchKind, (i64, i64)>,
    /// Open mismatches.
    pub open: BTreeMap<MismatchKind, Mismatch>,
    /// When the entry is deleted unless something changes before (wall clock, ms since the
    /// epoch); `None` while a suspect or an open mismatch waits. See the module docs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_at: Option<i64>,
}

impl OrderRecon {
    /// Whether nothing is left to remember (no decision, no payment, nothing open).
    pub fn is_empty(&self) -> bool {
        self.decision.is_none() && self.payment.is_none() && self.open.is_empty()
    }

    /// Whether this is no entry at all (the order is unknown, or its entry was deleted).
    pub fn is_unknown(&self) -> bool {
        *self == Self::default()
    }

    /// Whether a suspect or an open mismatch waits (the entry is not retired then).
    pub fn is_waiting(&self) -> bool {
        !self.suspects.is_empty() || !self.open.is_empty()
    }
}

/// One input for one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A `payments` row was created, updated or read by a snapshot, committed in the ledger
    /// at `source_ms` (ms since the epoch).
    Payment {
        op: Op,
        row: PaymentRow,
        position: Option<Position>,
        source_ms: i64,
    },
    /// The `payments` row was deleted (committed at `source_ms`).
    PaymentDeleted {
        position: Option<Position>,
        source_ms: i64,
    },
    /// The saga decided.
    Decision(DecisionFacts),
    /// The order's timer fired (a grace period or the retention).
    Due,
}

impl Input {
    /// The input's own time (ms since the epoch): when the change was committed or the saga
    /// decided; `None` for a timer.
    pub fn event_ms(&self) -> Option<i64> {
        match self {
            Self::Payment { source_ms, .. } | Self::PaymentDeleted { source_ms, .. } => {
                Some(*source_ms)
            }
            Self::Decision(d) => Some(d.decided_at),
            Self::Due => None,
        }
    }
}

/// The clocks `decide` sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Wall-clock time, ms since the epoch.
    pub wall_ms: i64,
    /// The newest CDC source commit time seen from the ledger connector (changes and
    /// heartbeats), ms; `None` when nothing was seen yet (then the wall clock alone decides).
    pub ledger_seen_ms: Option<i64>,
    /// The task's stream time: the newest record time it has seen (ms; `i64::MIN` before
    /// any). Inputs for unknown orders older than it by more than the retention are late.
    pub stream_ms: i64,
}

/// Grace periods (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub cancelled_grace_ms: i64,
    pub capture_grace_ms: i64,
    /// How soon to look again when a grace is over but the ledger has not been seen that far.
    pub recheck_ms: i64,
    /// How long an entry with nothing waiting is kept after its last change (ms).
    pub retention_ms: i64,
}

impl Rules {
    fn grace(&self, kind: MismatchKind) -> i64 {
        match kind {
            MismatchKind::AuthorizedButCancelled => self.cancelled_grace_ms,
            MismatchKind::ConfirmedWithoutCapture => self.capture_grace_ms,
            MismatchKind::AmountMismatch => 0,
        }
    }
}

/// What the topology does after a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A mismatch was opened: report it (topic, counter, open gauge).
    Opened(Mismatch),
    /// An open mismatch no longer holds: report it resolved at `resolved_at` (ms).
    Resolved {
        mismatch: Mismatch,
        resolved_at: i64,
    },
    /// (Re)arm the order's timer at this time (ms): its earliest grace, or its retention.
    Arm(i64),
    /// Nothing to wait for (an open mismatch is kept until resolved): cancel the order's timer.
    Disarm,
    /// A CDC change at or before the last applied position: ignored.
    Duplicate,
    /// The retention is over: delete the order's entry and its timer.
    Forget,
    /// An input for an order without an entry, older than the retention: ignored, counted.
    Late,
}

/// Why `kind` holds for `s`, or `None`.
fn holds(kind: MismatchKind, s: &OrderRecon) -> Option<String> {
    let decision = s.decision.as_ref()?;
    let payment = s.payment.as_ref();
    match kind {
        MismatchKind::AuthorizedButCancelled => {
            let p = payment?;
            (decision.status == OrderState::Cancelled && p.holds_money()).then(|| {
                format!(
                    "order cancelled but payment {} is {} (captured {} of {} {})",
                    p.payment_id.as_deref().unwrap_or("?"),
                    p.status.as_deref().unwrap_or("?"),
                    p.captured_minor,
                    p.amount_minor,
                    p.currency.as_deref().unwrap_or("?")
                )
            })
        }
        MismatchKind::ConfirmedWithoutCapture => {
            if decision.status != OrderState::Confirmed {
                return None;
            }
            match payment {
                None => Some("order confirmed but the ledger has no payment".to_owned()),
                Some(p) if p.captured_minor == 0 => Some(format!(
                    "order confirmed but payment {} is {} with nothing captured",
                    p.payment_id.as_deref().unwrap_or("?"),
                    p.status.as_deref().unwrap_or("?")
                )),
                Some(_) => None,
            }
        }
        MismatchKind::AmountMismatch => {
            let p = payment?;
            let currency_differs = p
                .currency
                .as_deref()
                .is_some_and(|c| c != decision.currency);
            (decision.status == OrderState::Confirmed
                && p.captured_minor > 0
                && (p.captured_minor != decision.total_minor || currency_differs))
                .then(|| {
                    format!(
                        "captured {} {} but the order's total is {} {}",
                        p.captured_minor,
                        p.currency.as_deref().unwrap_or("?"),
                        decision.total_minor,
                        decision.currency
                    )
                })
        }
    }
}

fn mismatch(
    order_id: &str,
    kind: MismatchKind,
    s: &OrderRecon,
    detail: String,
    since: i64,
    at: i64,
) -> Mismatch {
    let p = s.payment.as_ref();
    Mismatch {
        order_id: order_id.to_owned(),
        kind,
        opened_at: at,
        since,
        detail,
        payment_id: p.and_then(|p| p.payment_id.clone()),
        order_status: s.decision.as_ref().map(|d| d.status.code().to_owned()),
        payment_status: p.and_then(|p| p.status.clone()),
        order_total_minor: s.decision.as_ref().map(|d| d.total_minor),
        captured_minor: p.map(|p| p.captured_minor),
        currency: s.decision.as_ref().map(|d| d.currency.clone()),
    }
}

/// Applies `input` to one order's state and says what to report and which timer to keep.
pub fn decide(
    mut state: OrderRecon,
    order_id: &str,
    input: Input,
    now: &Now,
    rules: &Rules,
) -> (OrderRecon, Vec<Output>) {
    if state.is_unknown() {
        let late_before = now.stream_ms.saturating_sub(rules.retention_ms);
        match input.event_ms() {
            Some(at) if at < late_before => return (state, vec![Output::Late]),
            // A timer of an entry that is gone: nothing to keep.
            None => return (state, vec![Output::Forget]),
            Some(_) => {}
        }
    }
    match input {
        Input::Payment { row, position, .. } => {
            if let Some(p) = &position {
                if !p.supersedes(state.applied.as_ref()) {
                    return (state, vec![Output::Duplicate]);
                }
                state.applied = Some(p.clone());
            }
            state.payment = Some(LedgerPayment::merge(row, state.payment.as_ref()));
        }
        Input::PaymentDeleted { position, .. } => {
            if let Some(p) = &position {
                if !p.supersedes(state.applied.as_ref()) {
                    return (state, vec![Output::Duplicate]);
                }
                state.applied = Some(p.clone());
            }
            state.payment = None;
        }
        Input::Decision(d) => {
            if state
                .decision
                .as_ref()
                .is_some_and(|held| held.sequence >= d.sequence)
            {
                return (state, Vec::new());
            }
            state.decision = Some(d);
        }
        Input::Due => {
            // Nothing waits: the timer is the retention (an early look leaves it where it is).
            if !state.is_waiting()
                && let Some(at) = state.retire_at
            {
                let out = if now.wall_ms >= at {
                    Output::Forget
                } else {
                    Output::Arm(at)
                };
                return (state, vec![out]);
            }
        }
    }
    evaluate(state, order_id, now, rules)
}

fn evaluate(
    mut state: OrderRecon,
    order_id: &str,
    now: &Now,
    rules: &Rules,
) -> (OrderRecon, Vec<Output>) {
    let mut out = Vec::new();
    let mut next_due: Option<i64> = None;
    for kind in MismatchKind::ALL {
        match holds(kind, &state) {
            None => {
                state.suspects.remove(&kind);
                if let Some(mismatch) = state.open.remove(&kind) {
                    out.push(Output::Resolved {
                        mismatch,
                        resolved_at: now.wall_ms,
                    });
                }
            }
            Some(detail) => {
                if let Some(open) = state.open.get_mut(&kind) {
                    open.detail = detail;
                    continue;
                }
                let (since, due) = *state
                    .suspects
                    .entry(kind)
                    .or_insert((now.wall_ms, now.wall_ms.saturating_add(rules.grace(kind))));
                let seen_far_enough = now.ledger_seen_ms.is_none_or(|seen| seen >= due);
                if now.wall_ms >= due && (seen_far_enough || rules.grace(kind) == 0) {
                    state.suspects.remove(&kind);
                    let m = mismatch(order_id, kind, &state, detail, since, now.wall_ms);
                    state.open.insert(kind, m.clone());
                    out.push(Output::Opened(m));
                } else {
                    let at = if now.wall_ms >= due {
                        now.wall_ms.saturating_add(rules.recheck_ms.max(1))
                    } else {
                        due
                    };
                    next_due = Some(next_due.map_or(at, |d| d.min(at)));
                }
            }
        }
    }
    state.retire_at = None;
    out.push(match next_due {
        Some(at) => Output::Arm(at),
        None if !state.open.is_empty() => Output::Disarm,
        None => {
            let at = now.wall_ms.saturating_add(rules.retention_ms);
            state.retire_at = Some(at);
            Output::Arm(at)
        }
    });
    (state, out)
}
