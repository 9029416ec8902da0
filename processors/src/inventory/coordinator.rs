//! Inventory's order coordinator as a pure function: [`decide_order`]`(state, input, now) →
//! (state, effects)` over one order's [`OrderHolds`]. Holds live per SKU (the inventory
//! processor's tasks are keyed by SKU); what concerns the whole order lives here, keyed by order
//! id, fed by the topics keyed by order id: `inventory.reserved.v1`, `inventory.released.v1`,
//! `order.status.changed` and `payment.authorized.v1`. Its effects are per-SKU release and
//! confirm commands on `inventory.commands.v1` (key: the SKU), as the saga writes them.
//!
//! Rules (tested in `tests.rs`):
//! - the order's live holds are the SKUs with a `HELD` reply and no release, sale or refusal
//!   since (whoever reserved them: the saga or `POST /inventory/reserve`);
//! - **all-or-nothing for `POST /inventory/reserve`**: a reservation made through the API (its
//!   replies' `correlation_id` starts with [`RESERVATION_CORRELATION_PREFIX`]) that has a line
//!   reported `SHORTAGE` releases every line it holds (reason `COMPENSATION`), now and any
//!   `HELD` reply that comes later; [`OrderEffect::Failed`] names the short lines, wanted and
//!   available (each line's own `SHORTAGE` reply is on `inventory.reserved.v1`, the releases on
//!   `inventory.released.v1`). The saga's own reservations are the saga's to coordinate: a
//!   `SHORTAGE` for them changes nothing here;
//! - `order.status.changed` to `CANCELLED` releases every live hold of the order (reason
//!   `ORDER_CANCELLED`), and any `HELD` reply that comes later; never twice;
//! - `payment.authorized.v1` confirms every live hold (and any later `HELD` reply) unless the
//!   order was cancelled; never twice. The confirm is [`COMMAND_PREFIX`]-marked, so inventory
//!   applies it as [`super::Input::ConfirmHeld`]: a hold that lapsed or is gone meanwhile is
//!   left alone (selling a lapsed hold is the saga's decision);
//! - whichever of these and the saga's own commands reaches a SKU first wins; the later one is a
//!   no-op there (see `logic.rs`);
//! - an order's state is forgotten `retention_ms` after its last change (a durable timer): by
//!   then every hold it could act on has lapsed.

use std::collections::BTreeMap;

use keel_avro::records::{RESERVATION_CORRELATION_PREFIX, ReleaseReason, ReservationStatus};
use serde::{Deserialize, Serialize};

/// Order id → [`OrderHolds`] as JSON.
pub const ORDERS_STORE: &str = "inventory-orders";
/// Timers keyed by order id: when an order's state is forgotten.
pub const ORDER_RETENTION_STORE: &str = "inventory-order-retention";
/// The command id prefix of the coordinator's commands (`inventory-coordinator/confirm/<order>/
/// <sku>`): the inventory processor applies such a confirm as [`super::Input::ConfirmHeld`].
pub const COMMAND_PREFIX: &str = "inventory-coordinator/";

/// Whether a reply's `correlation_id` marks a reservation made through `POST /inventory/reserve`.
pub fn is_api_reservation(correlation_id: &str) -> bool {
    correlation_id.starts_with(RESERVATION_CORRELATION_PREFIX)
}

/// A line reported short: units wanted and the most one warehouse had available.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Short {
    pub wanted: i64,
    pub available: i64,
}

/// What the coordinator keeps per order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderHolds {
    /// SKU → units of a live hold (a `HELD` reply seen, no release, sale or refusal since).
    pub held: BTreeMap<String, i64>,
    /// The reservation came through `POST /inventory/reserve`: all-or-nothing is kept here.
    pub all_or_nothing: bool,
    /// SKU → the line's shortage (all-or-nothing reservations only). Not empty: the
    /// reservation failed, and every hold of it is released.
    pub short: BTreeMap<String, Short>,
    /// `order.status.changed` said `CANCELLED`.
    pub cancelled: bool,
    /// `payment.authorized.v1` was seen (and the order was not cancelled).
    pub authorized: bool,
}

/// One input for one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderInput {
    /// `inventory.reserved.v1`; `all_or_nothing`: its `correlation_id` marks an API reservation.
    Reserved {
        sku: String,
        status: ReservationStatus,
        quantity: i64,
        available: i64,
        all_or_nothing: bool,
    },
    /// `inventory.released.v1` (any reason).
    Released { sku: String },
    /// `order.status.changed` to `CANCELLED`.
    Cancelled,
    /// `payment.authorized.v1`.
    Authorized,
    /// The retention timer fired.
    Forget,
}

/// What a command asks of one SKU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Release(ReleaseReason),
    /// Sell a live hold (nothing for any other).
    Confirm,
}

impl Action {
    /// The word in the command id (`release`, `confirm`).
    pub fn word(self) -> &'static str {
        match self {
            Self::Release(_) => "release",
            Self::Confirm => "confirm",
        }
    }
}

/// An effect of one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderEffect {
    /// A command on `inventory.commands.v1` (key: `sku`).
    Command { sku: String, action: Action },
    /// An all-or-nothing reservation failed (first shortage or a further one): every short
    /// line so far.
    Failed { short: Vec<(String, Short)> },
    /// (Re)arm the retention timer at `at` (epoch ms).
    ScheduleForget { at: i64 },
}

/// The order's state after an input (`None`: nothing kept, or forgotten) and its effects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderOutcome {
    pub state: Option<OrderHolds>,
    pub effects: Vec<OrderEffect>,
}

/// Applies `input` to the order's `state` at wall-clock `now` (ms); a changed state is kept
/// `retention_ms` from now.
pub fn decide_order(
    state: Option<OrderHolds>,
    input: OrderInput,
    now: i64,
    retention_ms: i64,
) -> OrderOutcome {
    let unchanged = |state: Option<OrderHolds>| OrderOutcome {
        state,
        effects: Vec::new(),
    };
    if input == OrderInput::Forget {
        return unchanged(None);
    }
    // Inputs that need no memory of an order never seen: nothing to keep.
    let creates = match &input {
        OrderInput::Reserved {
            status,
            all_or_nothing,
            ..
        } => *status == ReservationStatus::Held || *all_or_nothing,
        OrderInput::Released { .. } | OrderInput::Forget => false,
        OrderInput::Cancelled | OrderInput::Authorized => true,
    };
    if state.is_none() && !creates {
        return unchanged(None);
    }
    let before = state.clone();
    let mut st = state.unwrap_or_default();
    let mut fx = Vec::new();
    let command = |sku: &str, action: Action| OrderEffect::Command {
        sku: sku.to_owned(),
        action,
    };
    match input {
        OrderInput::Reserved {
            sku,
            status,
            quantity,
            available,
            all_or_nothing,
        } => {
            st.all_or_nothing |= all_or_nothing;
            match status {
                ReservationStatus::Held => {
                    if st.cancelled {
                        fx.push(command(
                            &sku,
                            Action::Release(ReleaseReason::OrderCancelled),
                        ));
                    } else if st.all_or_nothing && !st.short.is_empty() {
                        fx.push(command(&sku, Action::Release(ReleaseReason::Compensation)));
                    } else {
                        st.held.insert(sku.clone(), quantity);
                        if st.authorized {
                            fx.push(command(&sku, Action::Confirm));
                        }
                    }
                }
                ReservationStatus::Shortage if st.all_or_nothing => {
                    let short = Short {
                        wanted: quantity,
                        available,
                    };
                    if st.short.insert(sku, short) != Some(short) {
                        for held in std::mem::take(&mut st.held).into_keys() {
                            fx.push(command(&held, Action::Release(ReleaseReason::Compensation)));
                        }
                        fx.push(OrderEffect::Failed {
                            short: st.short.iter().map(|(s, v)| (s.clone(), *v)).collect(),
                        });
                    }
                }
                // The saga's shortage: the saga releases its order's other lines.
                ReservationStatus::Shortage => {}
                // A sale, or its refusal: the hold is no longer live.
                ReservationStatus::Sold
                | ReservationStatus::Oversold
                | ReservationStatus::SaleRefused => {
                    st.held.remove(&sku);
                }
            }
        }
        OrderInput::Released { sku } => {
            st.held.remove(&sku);
        }
        OrderInput::Cancelled => {
            if !st.cancelled {
                st.cancelled = true;
                st.authorized = false;
                for sku in std::mem::take(&mut st.held).into_keys() {
                    fx.push(command(
                        &sku,
                        Action::Release(ReleaseReason::OrderCancelled),
                    ));
                }
            }
        }
        OrderInput::Authorized => {
            if !st.cancelled && !st.authorized {
                st.authorized = true;
                for sku in st.held.keys() {
                    fx.push(command(sku, Action::Confirm));
                }
            }
        }
        OrderInput::Forget => {}
    }
    if before.as_ref() != Some(&st) {
        fx.push(OrderEffect::ScheduleForget {
            at: now.saturating_add(retention_ms),
        });
    }
    OrderOutcome {
        state: Some(st),
        effects: fx,
    }
}
