//! One cart's transitions as a pure function: [`step`]`(state, cart id, input, now, rules) →
//! (state, effects)`. No I/O, no clock: `topology.rs` reads the cart, applies the effects
//! (answers on `cart.checked.v1`, wait and retention timers, deleting the entry) and writes the
//! cart back in the task's transaction.
//!
//! Rules (tested in `tests.rs`):
//! - a check is answered at once when the cart is known, has items, and agrees with the order
//!   (same currency; the command's lines, if any, equal the cart's); `OK` claims the cart for
//!   that order id;
//! - a cart claimed by another order id answers `CART_ALREADY_ORDERED` at once, a currency
//!   that differs `CURRENCY_MISMATCH` at once;
//! - otherwise the order waits — CDC delivers the header and each item as separate records, so
//!   a cart seen without items, or with lines that differ from the order's, may still be
//!   arriving — until a change makes it answerable or its wait ends: then `CART_NOT_FOUND`
//!   (no header), `CART_EMPTY` (no items), or `OK` with the cart's lines as they are (the saga
//!   compares them with the order's and cancels on a difference);
//! - a check for an order already answered or already waiting changes nothing;
//! - a release (the saga cancelled the order) gives the cart back: the claim is cleared if that
//!   order holds it (another order's claim is left alone), its wait ends unanswered, and a later
//!   check for it changes nothing; releasing twice is releasing once.
//!
//! ## Retention (`[carts].retention_ms`, 7 days by default)
//! - An answered or released order is remembered `retention_ms` after it was last answered or
//!   released ([`CartState::last_seen`]), then forgotten at the cart's next step: a check for it
//!   after that is a new check. Only a new saga sends one (the saga never checks an order twice,
//!   and forgets a finished order `[saga].retention_ms` after its end), and the saga tolerates a
//!   second answer either way (an event id it has seen, or not `AwaitingCart`, or no saga: it
//!   changes nothing). The claim is never forgotten while the cart's rows exist.
//! - A cart whose rows are gone (or never came) and that no order waits for
//!   ([`CartState::is_gone`]) retires `retention_ms` after its last change
//!   ([`CartState::retire_at`], the timer [`CartsEffect::ArmRetention`]): then the entry is
//!   deleted ([`CartsEffect::Forget`]), claim, answers and all. Every change moves `retire_at`
//!   on; a duplicate, which changes nothing, does not. Until then a duplicate check or release
//!   changes nothing, as above; after it a check waits and finds no cart (`CART_NOT_FOUND`), a
//!   release of nothing is remembered as a new gone entry and retires in turn. A row that
//!   comes back, or an order that starts waiting, stops the retention.
//! - A gone cart with nothing to remember (no claim, no answered or released order:
//!   [`CartState::is_forgettable`]) is the same as no entry for every input, so it is deleted
//!   at once.
//! - States stored before retention existed decode (no times): their orders count from the
//!   cart's next step, and the task's start-up sweep ([`CartsInput::Sweep`]) gives every gone
//!   cart its `retire_at`.

use keel_avro::records::{CartCheckStatus, Money, OrderLine};

use super::state::{CartHeader, CartItem, CartState, Waiting};

/// A cart check: the saga's place-order command, re-keyed by cart id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub order_id: String,
    /// The command's id; the answer's causation.
    pub command_id: String,
    /// The order's currency (its total's).
    pub currency: String,
    /// The command's lines; empty when the producer leaves the lines to the cart.
    pub lines: Vec<OrderLine>,
}

/// What the carts processor reacts to (all keyed by cart id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CartsInput {
    /// A `carts` row was created, updated or read by the snapshot.
    Header(CartHeader),
    /// The `carts` row was deleted.
    HeaderDeleted,
    /// A `cart_items` row was created, updated or read by the snapshot.
    Item {
        sku: String,
        item: CartItem,
    },
    /// A `cart_items` row was deleted.
    ItemDeleted {
        sku: String,
    },
    Check(Check),
    /// The order ended without a sale (`CANCELLED`): it gives the cart back, if it holds it.
    Release {
        order_id: String,
    },
    /// An order's wait timer fired.
    WaitOver {
        order_id: String,
    },
    /// The cart's retention timer fired.
    RetentionOver,
    /// The task's start-up sweep looks at the cart: forgets what is past the retention, and
    /// gives a gone cart stored before retention existed its `retire_at`. Changes nothing else.
    Sweep,
    /// Nothing to do (a tombstone: deletes arrive as rows marked deleted).
    Ignore,
}

/// Something the topology must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CartsEffect {
    /// Answer `order_id` on `cart.checked.v1`.
    Answer {
        order_id: String,
        command_id: String,
        status: CartCheckStatus,
        detail: Option<String>,
        customer_id: Option<String>,
        /// The cart's lines when `Ok`, else empty.
        lines: Vec<OrderLine>,
        /// Σ lines in the cart's currency when `Ok`, else 0 in the order's currency.
        total: Money,
    },
    /// Arm the order's wait timer at this wall-clock time (epoch ms).
    Wait { order_id: String, until: i64 },
    /// Cancel the order's wait timer.
    StopWaiting { order_id: String },
    /// (Re)arm the cart's retention timer at this wall-clock time (epoch ms): its `retire_at`.
    ArmRetention { at: i64 },
    /// A row came back or an order waits: cancel the cart's retention timer.
    DisarmRetention,
    /// Delete the cart's entry (and its retention timer): its retention is over, or nothing is
    /// left to remember. The state returned with it is not stored.
    Forget,
}

/// The carts processor's times (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// How long an order waits for its cart (`[saga].cart_wait_ms`).
    pub wait_ms: i64,
    /// How long an answered or released order is remembered, and a gone cart kept after its
    /// last change (`[carts].retention_ms`).
    pub retention_ms: i64,
}

/// Applies `input` to cart `cart_id` at wall-clock `now` under `rules`.
pub fn step(
    mut state: CartState,
    cart_id: &str,
    input: CartsInput,
    now: i64,
    rules: &Rules,
) -> (CartState, Vec<CartsEffect>) {
    if input == CartsInput::Ignore {
        return (state, Vec::new());
    }
    forget_old_orders(&mut state, now, rules.retention_ms);
    let before = state.clone();
    let retention_over = input == CartsInput::RetentionOver;
    let mut fx = apply(&mut state, cart_id, input, now, rules.wait_ms);
    let changed = state != before;
    retain(
        &mut state,
        changed,
        retention_over,
        now,
        rules.retention_ms,
        &mut fx,
    );
    (state, fx)
}

/// Forgets the answered and released orders last seen `retention_ms` or longer before `now`;
/// an order without a time (stored before retention existed) counts from `now`.
fn forget_old_orders(state: &mut CartState, now: i64, retention_ms: i64) {
    for order_id in state.answered.keys().chain(state.released.iter()) {
        if !state.last_seen.contains_key(order_id) {
            state.last_seen.insert(order_id.clone(), now);
        }
    }
    let cutoff = now.saturating_sub(retention_ms);
    let old: Vec<String> = state
        .last_seen
        .iter()
        .filter(|(_, at)| **at <= cutoff)
        .map(|(order_id, _)| order_id.clone())
        .collect();
    for order_id in old {
        state.answered.remove(&order_id);
        state.released.remove(&order_id);
        state.last_seen.remove(&order_id);
    }
}

/// The cart's retention after an input (`changed`: the input changed the cart).
fn retain(
    state: &mut CartState,
    changed: bool,
    retention_over: bool,
    now: i64,
    retention_ms: i64,
    fx: &mut Vec<CartsEffect>,
) {
    if !state.is_gone() {
        if state.retire_at.take().is_some() {
            fx.push(CartsEffect::DisarmRetention);
        }
        return;
    }
    let over = retention_over && state.retire_at.is_some_and(|at| now >= at);
    if over || state.is_forgettable() {
        fx.push(CartsEffect::Forget);
        return;
    }
    match state.retire_at {
        Some(at) if !changed => {
            // The timer fired before its time (it never should): look again then.
            if retention_over {
                fx.push(CartsEffect::ArmRetention { at });
            }
        }
        _ => {
            let at = now.saturating_add(retention_ms);
            state.retire_at = Some(at);
            fx.push(CartsEffect::ArmRetention { at });
        }
    }
}

/// The input's own transition (no retention).
fn apply(
    state: &mut CartState,
    cart_id: &str,
    input: CartsInput,
    now: i64,
    wait_ms: i64,
) -> Vec<CartsEffect> {
    let mut fx = Vec::new();
    match input {
        CartsInput::Ignore | CartsInput::RetentionOver | CartsInput::Sweep => return fx,
        CartsInput::Header(header) => state.header = Some(header),
        CartsInput::HeaderDeleted => state.header = None,
        CartsInput::Item { sku, item } => {
            state.items.insert(sku, item);
        }
        CartsInput::ItemDeleted { sku } => {
            state.items.remove(&sku);
        }
        CartsInput::Check(check) => {
            if state.answered.contains_key(&check.order_id)
                || state.waiting.contains_key(&check.order_id)
                || state.released.contains(&check.order_id)
            {
                return fx;
            }
            let waiting = Waiting {
                command_id: check.command_id,
                currency: check.currency,
                lines: check.lines,
                until: now.saturating_add(wait_ms),
            };
            if !answer(
                state,
                cart_id,
                &check.order_id,
                &waiting,
                false,
                now,
                &mut fx,
            ) {
                fx.push(CartsEffect::Wait {
                    order_id: check.order_id.clone(),
                    until: waiting.until,
                });
                state.waiting.insert(check.order_id, waiting);
            }
            return fx;
        }
        CartsInput::Release { order_id } => {
            if state.claimed_by.as_deref() == Some(order_id.as_str()) {
                state.claimed_by = None;
            }
            if state.waiting.remove(&order_id).is_some() {
                fx.push(CartsEffect::StopWaiting {
                    order_id: order_id.clone(),
                });
            }
            if state.released.insert(order_id.clone()) {
                state.last_seen.insert(order_id, now);
            }
            return fx;
        }
        CartsInput::WaitOver { order_id } => {
            if let Some(waiting) = state.waiting.remove(&order_id) {
                answer(state, cart_id, &order_id, &waiting, true, now, &mut fx);
            }
            return fx;
        }
    }
    // The cart changed: answer whoever can be answered now.
    let waiting: Vec<(String, Waiting)> = std::mem::take(&mut state.waiting).into_iter().collect();
    for (order_id, w) in waiting {
        if answer(state, cart_id, &order_id, &w, false, now, &mut fx) {
            fx.push(CartsEffect::StopWaiting { order_id });
        } else {
            state.waiting.insert(order_id, w);
        }
    }
    fx
}

/// Answers `order_id` at `now` if the cart allows it (always when `last`, the wait being
/// over); returns whether it did.
fn answer(
    state: &mut CartState,
    cart_id: &str,
    order_id: &str,
    check: &Waiting,
    last: bool,
    now: i64,
    fx: &mut Vec<CartsEffect>,
) -> bool {
    let Some((status, detail)) = verdict(state, cart_id, order_id, check, last) else {
        return false;
    };
    let ok = status == CartCheckStatus::Ok;
    let lines = if ok { state.lines() } else { Vec::new() };
    let total = if ok {
        let currency = state
            .header
            .as_ref()
            .map_or(check.currency.as_str(), |h| h.currency.as_str());
        let sum = lines.iter().fold(0i64, |acc, l| {
            acc.saturating_add(
                l.unit_price
                    .amount_minor
                    .saturating_mul(i64::from(l.quantity)),
            )
        });
        Money::new(sum, currency)
    } else {
        Money::new(0, check.currency.as_str())
    };
    if ok {
        state.claimed_by = Some(order_id.to_owned());
    }
    state.answered.insert(order_id.to_owned(), status);
    state.last_seen.insert(order_id.to_owned(), now);
    fx.push(CartsEffect::Answer {
        order_id: order_id.to_owned(),
        command_id: check.command_id.clone(),
        status,
        detail,
        customer_id: state.header.as_ref().map(|h| h.customer_id.clone()),
        lines,
        total,
    });
    true
}

fn verdict(
    state: &CartState,
    cart_id: &str,
    order_id: &str,
    check: &Waiting,
    last: bool,
) -> Option<(CartCheckStatus, Option<String>)> {
    if let Some(owner) = &state.claimed_by
        && owner != order_id
    {
        return Some((
            CartCheckStatus::CartAlreadyOrdered,
            Some(format!("cart {cart_id} was ordered by order {owner}")),
        ));
    }
    let Some(header) = &state.header else {
        return last.then(|| {
            (
                CartCheckStatus::CartNotFound,
                Some(format!(
                    "cart {cart_id} did not arrive before the wait ended"
                )),
            )
        });
    };
    if header.currency != check.currency {
        return Some((
            CartCheckStatus::CurrencyMismatch,
            Some(format!(
                "the order is in {}, cart {cart_id} in {}",
                check.currency, header.currency
            )),
        ));
    }
    if state.items.is_empty() {
        return last.then(|| {
            (
                CartCheckStatus::CartEmpty,
                Some(format!("cart {cart_id} has no items")),
            )
        });
    }
    if !check.lines.is_empty() && !same_lines(&check.lines, &state.lines()) && !last {
        return None;
    }
    Some((CartCheckStatus::Ok, None))
}

/// Equal as sets of (SKU, quantity, unit price).
pub(crate) fn same_lines(a: &[OrderLine], b: &[OrderLine]) -> bool {
    let sorted = |lines: &[OrderLine]| {
        let mut v: Vec<OrderLine> = lines.to_vec();
        v.sort_by(|x, y| x.sku.cmp(&y.sku));
        v
    };
    sorted(a) == sorted(b)
}
