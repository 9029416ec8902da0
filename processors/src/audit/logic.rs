//! The auditor's rules, pure: [`decide`]`(state, order_id, input, now, rules) -> (state,
//! outputs)` for an order, [`decide_stock`] for a SKU.
//!
//! ## Per order (key: order id)
//! One order's state ([`OrderAudit`]) holds the saga's latest decision (status and the SKUs of its
//! lines, from `order.decisions.v1`) and, per SKU, the latest fact inventory published about the
//! order's hold (`inventory.reserved.v1`, `inventory.released.v1`, both keyed by order id):
//!
//! | invariant | holds while | opened |
//! | --- | --- | --- |
//! | `CANCELLED_HOLDS_RELEASED` | the order is `CANCELLED` and a SKU of it is still `HELD`, or `SOLD`/`OVERSOLD` and not given back | after `cancelled_grace_ms` (the saga's releases take a moment) |
//! | `CONFIRMED_HOLDS_SOLD` | the order is `CONFIRMED` and a SKU of its lines has no `SOLD`/`OVERSOLD` answer (held, released, refused or never answered) | after `confirmed_grace_ms` (the confirm commands take a moment) |
//!
//! A condition that starts holding becomes a *suspect* due at `now + grace` (a durable timer in
//! the topology); it is opened when it still holds when the timer fires. A condition that stops
//! holding drops its suspect, or *resolves* its open violation. Decisions apply only when their
//! `sequence` is higher than the one held; an inventory fact only when it is newer than the
//! SKU's last (its `occurred_at`; on a tie a release beats a sale beats a hold), so duplicates
//! and replays change nothing.
//!
//! ### Retention
//! An order's entry is deleted `retention_ms` (`[audit].retention_ms`, default 7 days) after its
//! last change **while nothing about it waits**: no suspect in its grace and no open violation.
//! [`OrderAudit::retire_at`] says when; the order's one timer is armed at the earliest of its
//! grace periods or, when none runs, at `retire_at` ([`Output::Arm`]), and an
//! [`OrderInput::Due`] at or after `retire_at` with nothing waiting deletes the entry and its
//! timer ([`Output::Forget`]). Every change moves `retire_at` on, so duplicates and replays of
//! an order are recognised for `retention_ms` after its last change.
//! - **An open violation is never forgotten**: it is what `keel_invariant_violations_open` and
//!   the violations topic stand for, so its entry has no retention until it is resolved (the
//!   release or the sale arrives); `retention_ms` counts from the resolution. A suspect first
//!   waits out its grace (then it opens, or is dropped).
//! - **Late after retention**: an input for an order without an entry whose own time (a
//!   decision's `decided_at`, an inventory event's `occurred_at`) is more than `retention_ms`
//!   before the task's stream time ([`Now::stream_ms`], the newest record time it has seen) is
//!   *late* ([`Output::Late`]): counted, not applied, no entry created. Its order's entry, if it
//!   ever had one, was deleted (an entry lives at least `retention_ms` after its last change), so
//!   applying it would start from nothing — an old `CONFIRMED` re-delivered without its sales
//!   would become a false `CONFIRMED_HOLDS_SOLD`. Judged by stream time rather than the wall
//!   clock, an auditor that catches up after a long stop still audits its backlog. An input that
//!   is not late for an order without an entry starts a new one (inventory facts alone never
//!   make a violation: both invariants need the saga's decision). The price: a hold taken more
//!   than `retention_ms` after its order was cancelled (and forgotten) is not reported (the
//!   hold's own TTL in inventory still releases it).
//!
//! ## Per SKU (key: SKU)
//! [`decide_stock`] sees every `available` that `inventory.reserved.v1` reports (re-keyed by
//! SKU) and every `on_hand` of `inventory.adjusted.v1`:
//! - an `OVERSOLD` answer under `[inventory].oversell = "allow"` is reported as
//!   [`Output::Allowed`] (not a violation) and puts the SKU *in an allowed deficit*: negative
//!   values that follow are its consequence, not new violations, until `available` is back at
//!   zero or above;
//! - any other negative value opens `STOCK_NON_NEGATIVE` (once); a later `available >= 0`
//!   resolves it, and one opened by `on_hand` below zero is also resolved by `on_hand >= 0` (a
//!   restock) or by the allowed oversell it was the consequence of (the sale's stock record
//!   comes first: the oversell answer goes through the repartition topic).
//!
//! The payment invariants (`AT_MOST_ONE_CAPTURE`, `CONFIRMED_CAPTURED`,
//! `CANCELLED_NOT_AUTHORIZED`, `CAPTURED_EQUALS_CONFIRMED`) are not decided here: no Kafka topic
//! carries captures or voids (they live only in the ledger). `keel audit` checks them against the
//! stores (`src/audit.rs`), and the reconciliation processor checks the per-order ones from the
//! ledger's CDC (`processors/src/reconciliation/`); see `docs/adr/0005-invariant-auditor.md`.

use std::collections::{BTreeMap, BTreeSet};

use keel_avro::records::{AuditInvariant, ReservationStatus};
use serde::{Deserialize, Serialize};

use crate::inventory::OversellPolicy;

/// The saga's decided status of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Pending,
    Confirmed,
    Cancelled,
    Rejected,
}

/// What inventory last said about one order's hold on one SKU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HoldFact {
    /// `HELD`: stock set aside for the order.
    Held,
    /// `SOLD` or `OVERSOLD`: the stock was taken for the order.
    Sold,
    /// Released (any reason), `SHORTAGE` or `SALE_REFUSED`: nothing of the SKU is held or
    /// taken for the order.
    Free,
}

impl HoldFact {
    /// The fact an `inventory.reserved.v1` status states.
    pub fn from_status(status: ReservationStatus) -> Self {
        match status {
            ReservationStatus::Held => Self::Held,
            ReservationStatus::Sold | ReservationStatus::Oversold => Self::Sold,
            ReservationStatus::Shortage | ReservationStatus::SaleRefused => Self::Free,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Sold => "sold",
            Self::Free => "free",
        }
    }
}

/// One SKU's latest fact for an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineFact {
    pub fact: HoldFact,
    pub quantity: i64,
    /// The event's `occurred_at` (ms since the epoch).
    pub at: i64,
}

/// A violation (open, resolved, or an allowed oversell).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub invariant: AuditInvariant,
    /// The order id, or the SKU for `STOCK_NON_NEGATIVE`.
    pub subject_id: String,
    pub order_id: Option<String>,
    pub sku: Option<String>,
    /// When it was opened (ms since the epoch).
    pub opened_at: i64,
    /// When the condition was first seen (ms).
    pub since: i64,
    pub detail: String,
}

/// Everything the auditor stores per order id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderAudit {
    /// The sequence of the latest decision applied (0: none).
    pub sequence: i32,
    pub status: Option<OrderStatus>,
    /// The SKUs of the order's lines.
    pub lines: BTreeSet<String>,
    /// SKU → the latest fact about the order's hold on it.
    pub holds: BTreeMap<String, LineFact>,
    /// Invariants that hold but wait out their grace: invariant → (first seen, due) in ms.
    pub suspects: BTreeMap<AuditInvariant, (i64, i64)>,
    /// Open violations.
    pub open: BTreeMap<AuditInvariant, Violation>,
    /// When the entry is deleted unless something changes before (wall clock, ms since the
    /// epoch); `None` while a suspect or an open violation waits. See "Retention" above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_at: Option<i64>,
}

impl OrderAudit {
    /// Whether this is no entry at all (the order is unknown, or its entry was deleted).
    pub fn is_unknown(&self) -> bool {
        *self == Self::default()
    }

    /// Whether a suspect or an open violation waits (the entry is not retired then).
    pub fn is_waiting(&self) -> bool {
        !self.suspects.is_empty() || !self.open.is_empty()
    }
}

/// One input for one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderInput {
    /// The saga decided (`order.decisions.v1`) at `at` (ms, its `decided_at`).
    Decision {
        sequence: i32,
        status: OrderStatus,
        skus: Vec<String>,
        at: i64,
    },
    /// Inventory said something about the order's hold on `sku` (`inventory.reserved.v1` or
    /// `inventory.released.v1`) at `at` (ms).
    Inventory {
        sku: String,
        fact: HoldFact,
        quantity: i64,
        at: i64,
    },
    /// The order's timer fired (a grace period or the retention).
    Due,
}

impl OrderInput {
    /// The input's own time (ms since the epoch); `None` for a timer.
    pub fn event_ms(&self) -> Option<i64> {
        match self {
            Self::Decision { at, .. } | Self::Inventory { at, .. } => Some(*at),
            Self::Due => None,
        }
    }
}

/// The clocks [`decide`] sees (ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Wall-clock time: grace periods and retention run on it.
    pub wall_ms: i64,
    /// The task's stream time: the newest record time it has seen (`i64::MIN` before any).
    /// Inputs for unknown orders older than it by more than the retention are late.
    pub stream_ms: i64,
}

impl Now {
    /// Both clocks at `ms`.
    pub fn at(ms: i64) -> Self {
        Self {
            wall_ms: ms,
            stream_ms: ms,
        }
    }
}

/// Grace periods (ms) and the oversell mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// How long a cancelled order may still hold or have taken stock.
    pub cancelled_grace_ms: i64,
    /// How long a confirmed order may wait for its sales.
    pub confirmed_grace_ms: i64,
    /// `[inventory].oversell`: under `Allow` an `OVERSOLD` sale is reported, not a violation.
    pub oversell: OversellPolicy,
    /// How long an order's entry with nothing waiting is kept after its last change (ms).
    pub retention_ms: i64,
}

/// What the topology does after a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A violation was opened: report it (topic, counter, open gauge).
    Opened(Violation),
    /// An open violation no longer holds.
    Resolved {
        violation: Violation,
        resolved_at: i64,
    },
    /// An oversell the configuration allows: reported, not a violation.
    Allowed(Violation),
    /// (Re)arm the subject's timer at this time (ms): its earliest grace, or its retention.
    Arm(i64),
    /// Nothing to wait for (an open violation is kept until resolved): cancel the subject's
    /// timer.
    Disarm,
    /// The retention is over: delete the order's entry and its timer.
    Forget,
    /// An input for an order without an entry, older than the retention: ignored, counted.
    Late,
}

/// The invariants [`decide`] evaluates.
pub const ORDER_INVARIANTS: [AuditInvariant; 2] = [
    AuditInvariant::CancelledHoldsReleased,
    AuditInvariant::ConfirmedHoldsSold,
];

impl Rules {
    fn grace(&self, invariant: AuditInvariant) -> i64 {
        match invariant {
            AuditInvariant::CancelledHoldsReleased => self.cancelled_grace_ms,
            _ => self.confirmed_grace_ms,
        }
    }
}

/// Why `invariant` is broken for `s`, and the SKU it is about; `None` while it holds.
fn broken(invariant: AuditInvariant, s: &OrderAudit) -> Option<(String, String)> {
    match (invariant, s.status?) {
        (AuditInvariant::CancelledHoldsReleased, OrderStatus::Cancelled) => s
            .holds
            .iter()
            .find(|(_, l)| l.fact != HoldFact::Free)
            .map(|(sku, l)| {
                (
                    format!(
                        "order cancelled but {} unit(s) of {sku} are still {}",
                        l.quantity,
                        l.fact.word()
                    ),
                    sku.clone(),
                )
            }),
        (AuditInvariant::ConfirmedHoldsSold, OrderStatus::Confirmed) => s
            .lines
            .iter()
            .find(|sku| s.holds.get(*sku).is_none_or(|l| l.fact != HoldFact::Sold))
            .map(|sku| {
                let state = s.holds.get(sku).map_or("never answered", |l| l.fact.word());
                (
                    format!("order confirmed but its line {sku} is {state}, not sold"),
                    sku.clone(),
                )
            }),
        _ => None,
    }
}

/// Applies `input` to one order's state and says what to report and which timer to keep.
pub fn decide(
    mut state: OrderAudit,
    order_id: &str,
    input: OrderInput,
    now: Now,
    rules: &Rules,
) -> (OrderAudit, Vec<Output>) {
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
        OrderInput::Decision {
            sequence,
            status,
            skus,
            ..
        } => {
            if sequence <= state.sequence {
                return (state, Vec::new());
            }
            state.sequence = sequence;
            state.status = Some(status);
            if !skus.is_empty() {
                state.lines = skus.into_iter().collect();
            }
        }
        OrderInput::Inventory {
            sku,
            fact,
            quantity,
            at,
        } => {
            let newer = state
                .holds
                .get(&sku)
                .is_none_or(|l| at > l.at || (at == l.at && fact > l.fact));
            if !newer {
                return (state, Vec::new());
            }
            state.holds.insert(sku, LineFact { fact, quantity, at });
        }
        OrderInput::Due => {
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
    evaluate(state, order_id, now.wall_ms, rules)
}

fn evaluate(
    mut state: OrderAudit,
    order_id: &str,
    now: i64,
    rules: &Rules,
) -> (OrderAudit, Vec<Output>) {
    let mut out = Vec::new();
    let mut next_due: Option<i64> = None;
    for invariant in ORDER_INVARIANTS {
        match broken(invariant, &state) {
            None => {
                state.suspects.remove(&invariant);
                if let Some(violation) = state.open.remove(&invariant) {
                    out.push(Output::Resolved {
                        violation,
                        resolved_at: now,
                    });
                }
            }
            Some((detail, sku)) => {
                if let Some(open) = state.open.get_mut(&invariant) {
                    open.detail = detail;
                    continue;
                }
                let (since, due) = *state
                    .suspects
                    .entry(invariant)
                    .or_insert((now, now.saturating_add(rules.grace(invariant))));
                if now >= due {
                    state.suspects.remove(&invariant);
                    let v = Violation {
                        invariant,
                        subject_id: order_id.to_owned(),
                        order_id: Some(order_id.to_owned()),
                        sku: Some(sku),
                        opened_at: now,
                        since,
                        detail,
                    };
                    state.open.insert(invariant, v.clone());
                    out.push(Output::Opened(v));
                } else {
                    next_due = Some(next_due.map_or(due, |d| d.min(due)));
                }
            }
        }
    }
    state.retire_at = None;
    out.push(match next_due {
        Some(at) => Output::Arm(at),
        None if !state.open.is_empty() => Output::Disarm,
        None => {
            let at = now.saturating_add(rules.retention_ms);
            state.retire_at = Some(at);
            Output::Arm(at)
        }
    });
    (state, out)
}

/// Everything the auditor stores per SKU.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockAudit {
    /// An allowed oversell took the SKU below zero and `available` has not been back at zero
    /// or above since.
    pub allowed_deficit: bool,
    /// The open `STOCK_NON_NEGATIVE` violation.
    pub open: Option<Violation>,
}

/// One stock figure inventory published about a SKU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StockInput {
    /// `inventory.reserved.v1`: `available` (on hand minus held) after inventory answered
    /// `order_id` with `status`.
    Reserved {
        order_id: String,
        status: ReservationStatus,
        available: i64,
    },
    /// `inventory.adjusted.v1`: stock on hand after an adjustment or a sale.
    Adjusted { on_hand: i64 },
}

/// Applies one stock figure of `sku` (see the module docs).
/// Resolves the open `STOCK_NON_NEGATIVE` if stock on hand below zero opened it (it names no
/// order; one a negative `available` opened waits for inventory's next answer).
fn resolve_on_hand(state: &mut StockAudit, now: i64, out: &mut Vec<Output>) {
    if state.open.as_ref().is_some_and(|v| v.order_id.is_none())
        && let Some(violation) = state.open.take()
    {
        out.push(Output::Resolved {
            violation,
            resolved_at: now,
        });
    }
}

pub fn decide_stock(
    mut state: StockAudit,
    sku: &str,
    input: StockInput,
    now: i64,
    rules: &Rules,
) -> (StockAudit, Vec<Output>) {
    let violation = |order_id: Option<String>, detail: String| Violation {
        invariant: AuditInvariant::StockNonNegative,
        subject_id: sku.to_owned(),
        order_id,
        sku: Some(sku.to_owned()),
        opened_at: now,
        since: now,
        detail,
    };
    let mut out = Vec::new();
    match input {
        StockInput::Reserved {
            order_id,
            status: ReservationStatus::Oversold,
            available,
        } if rules.oversell == OversellPolicy::Allow => {
            state.allowed_deficit = available < 0 || state.allowed_deficit;
            // The sale's `inventory.adjusted.v1` (on hand below zero) reaches this task before
            // the oversell answer, which comes through the repartition topic: the violation it
            // opened was this allowed oversell's consequence (break report 14, D1).
            resolve_on_hand(&mut state, now, &mut out);
            out.push(Output::Allowed(violation(
                Some(order_id.clone()),
                format!(
                    "oversold {sku} to order {order_id} (available {available}); allowed by \
                     [inventory].oversell = \"allow\""
                ),
            )));
        }
        StockInput::Reserved {
            order_id,
            status,
            available,
        } => {
            if available >= 0 {
                state.allowed_deficit = false;
                if let Some(violation) = state.open.take() {
                    out.push(Output::Resolved {
                        violation,
                        resolved_at: now,
                    });
                }
            } else if !state.allowed_deficit && state.open.is_none() {
                let v = violation(
                    Some(order_id.clone()),
                    format!(
                        "available stock of {sku} is {available} after inventory answered \
                         {status:?} to order {order_id}"
                    ),
                );
                state.open = Some(v.clone());
                out.push(Output::Opened(v));
            }
        }
        StockInput::Adjusted { on_hand } => {
            // Stock on hand back at zero or above (a restock) ends what on hand below zero
            // opened; what a negative `available` opened waits for inventory's next answer.
            if on_hand >= 0 {
                resolve_on_hand(&mut state, now, &mut out);
            }
            if on_hand < 0 && !state.allowed_deficit && state.open.is_none() {
                let v = violation(None, format!("stock on hand of {sku} is {on_hand}"));
                state.open = Some(v.clone());
                out.push(Output::Opened(v));
            }
        }
    }
    (state, out)
}
