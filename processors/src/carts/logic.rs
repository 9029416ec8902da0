//! One cart's transitions as a pure function: [`step`]`(state, cart id, input, now, wait) →
//! (state, effects)`. No I/O, no clock: `topology.rs` reads the cart, applies the effects
//! (answers on `cart.checked.v1`, wait timers) and writes the cart back in the task's
//! transaction.
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
}

/// Applies `input` to cart `cart_id` at wall-clock `now`; an order waits at most `wait_ms`.
pub fn step(
    mut state: CartState,
    cart_id: &str,
    input: CartsInput,
    now: i64,
    wait_ms: i64,
) -> (CartState, Vec<CartsEffect>) {
    let mut fx = Vec::new();
    match input {
        CartsInput::Ignore => return (state, fx),
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
                return (state, fx);
            }
            let waiting = Waiting {
                command_id: check.command_id,
                currency: check.currency,
                lines: check.lines,
                until: now.saturating_add(wait_ms),
            };
            if !answer(
                &mut state,
                cart_id,
                &check.order_id,
                &waiting,
                false,
                &mut fx,
            ) {
                fx.push(CartsEffect::Wait {
                    order_id: check.order_id.clone(),
                    until: waiting.until,
                });
                state.waiting.insert(check.order_id, waiting);
            }
            return (state, fx);
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
            state.released.insert(order_id);
            return (state, fx);
        }
        CartsInput::WaitOver { order_id } => {
            if let Some(waiting) = state.waiting.remove(&order_id) {
                answer(&mut state, cart_id, &order_id, &waiting, true, &mut fx);
            }
            return (state, fx);
        }
    }
    // The cart changed: answer whoever can be answered now.
    let waiting: Vec<(String, Waiting)> = std::mem::take(&mut state.waiting).into_iter().collect();
    for (order_id, w) in waiting {
        if answer(&mut state, cart_id, &order_id, &w, false, &mut fx) {
            fx.push(CartsEffect::StopWaiting { order_id });
        } else {
            state.waiting.insert(order_id, w);
        }
    }
    (state, fx)
}

/// Answers `order_id` if the cart allows it (always when `last`, the wait being over); returns
/// whether it did.
fn answer(
    state: &mut CartState,
    cart_id: &str,
    order_id: &str,
    check: &Waiting,
    last: bool,
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
