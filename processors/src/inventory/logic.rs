//! Inventory's transitions for one SKU as a pure function: [`decide`]`(stock, hold, input, now)
//! → (stock, hold, effects)`. The topology (`topology.rs`) loads the SKU's stock level and the
//! order's hold, applies the outcome and emits the events, in the task's transaction.
//!
//! Rules (tested in `tests.rs`):
//! - a hold is taken whole or not at all; `held` never exceeds `on_hand` through a reserve;
//! - a duplicate reserve (a hold already exists for the order) changes nothing;
//! - a release before its reserve leaves a marker, so the late reserve is refused;
//! - a hold lapses at `expires_at` (TTL from configuration) and is released with `HOLD_EXPIRED`;
//! - confirming a lapsed hold takes the stock if it is still there, else records an oversell
//!   (sold anyway under `allow`, refused under `prevent`);
//! - every confirm is answered on `inventory.reserved.v1` (`SOLD`, `OVERSOLD`, `SALE_REFUSED`),
//!   so a saga that waits for the sale (`prevent`) learns the outcome in its own partition;
//! - a compensating release of a sold hold (the saga gives up an order whose other line was
//!   refused) puts the units back on hand;
//! - an adjust never takes `on_hand` below zero or below what is held.

use serde::{Deserialize, Serialize};

use keel_avro::records::{ReleaseReason, ReservationStatus};

use super::state::{Ended, Hold, HoldState, StockLevel};

/// What `[inventory].oversell` chooses when a payment confirms a hold that lapsed and whose
/// stock went to another order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OversellPolicy {
    /// Sell anyway (`on_hand` goes below what is held) and report the oversell: the behaviour
    /// the seed's oversell scenario reproduces.
    #[default]
    Allow,
    /// Refuse the sale and report it; the order is compensated.
    Prevent,
}

impl OversellPolicy {
    /// The configuration value (`allow`, `prevent`), also the metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Prevent => "prevent",
        }
    }
}

/// One command (or timer) for one SKU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Reserve {
        order_id: String,
        quantity: i64,
    },
    Release {
        order_id: String,
        reason: ReleaseReason,
    },
    Confirm {
        order_id: String,
    },
    Adjust {
        delta: i64,
        reason: String,
    },
    /// The hold of `order_id` reached its `expires_at`.
    Expire {
        order_id: String,
    },
}

/// An event to emit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `inventory.reserved.v1` (key: order id).
    Reserved {
        order_id: String,
        status: ReservationStatus,
        quantity: i64,
        available: i64,
        expires_at: Option<i64>,
    },
    /// `inventory.released.v1` (key: order id).
    Released {
        order_id: String,
        quantity: i64,
        reason: ReleaseReason,
    },
    /// `inventory.adjusted.v1` (key: SKU): on hand changed by `delta`.
    Adjusted {
        delta: i64,
        on_hand: i64,
        reason: String,
    },
    /// A sale of a lapsed hold whose stock was gone (`inventory_oversell_total`).
    Oversold {
        order_id: String,
        quantity: i64,
    },
    ScheduleExpiry {
        order_id: String,
        at: i64,
    },
    CancelExpiry {
        order_id: String,
    },
}

/// The SKU's stock and the order's hold after an input, and the events it causes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stock: StockLevel,
    pub hold: Option<Hold>,
    pub effects: Vec<Effect>,
}

/// Why a command cannot be applied: the command's fault (dead-lettered with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("quantity must be positive, got {0}")]
    NonPositiveQuantity(i64),
    #[error("order {0:?} has no hold on this SKU to confirm")]
    NothingToConfirm(String),
    #[error("adjusting by {delta} would leave {on_hand} on hand with {held} held")]
    BelowHeld { delta: i64, on_hand: i64, held: i64 },
}

/// Inventory settings the logic needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// How long an unconfirmed hold lives (ms).
    pub hold_ttl_ms: i64,
    pub oversell: OversellPolicy,
}

/// Applies `input` to the SKU's `stock` and the order's `hold` at wall-clock `now` (ms).
pub fn decide(
    mut stock: StockLevel,
    hold: Option<Hold>,
    input: Input,
    now: i64,
    rules: &Rules,
) -> Result<Outcome, Refusal> {
    let mut fx = Vec::new();
    let hold = match input {
        Input::Reserve { order_id, quantity } => {
            if quantity <= 0 {
                return Err(Refusal::NonPositiveQuantity(quantity));
            }
            match hold {
                // A duplicate, or a reserve after its release: the first answer stands.
                Some(existing) => Some(existing),
                None if quantity <= stock.available() => {
                    stock.held += quantity;
                    let expires_at = now.saturating_add(rules.hold_ttl_ms);
                    fx.push(Effect::Reserved {
                        order_id: order_id.clone(),
                        status: ReservationStatus::Held,
                        quantity,
                        available: stock.available(),
                        expires_at: Some(expires_at),
                    });
                    fx.push(Effect::ScheduleExpiry {
                        order_id: order_id.clone(),
                        at: expires_at,
                    });
                    Some(Hold {
                        order_id,
                        quantity,
                        state: HoldState::Held,
                        expires_at,
                    })
                }
                None => {
                    fx.push(Effect::Reserved {
                        order_id: order_id.clone(),
                        status: ReservationStatus::Shortage,
                        quantity,
                        available: stock.available(),
                        expires_at: None,
                    });
                    Some(Hold {
                        order_id,
                        quantity: 0,
                        state: HoldState::Ended(Ended::Refused),
                        expires_at: now,
                    })
                }
            }
        }
        Input::Release { order_id, reason } => match hold {
            Some(mut h) if h.state == HoldState::Held => {
                stock.held -= h.quantity;
                h.state = HoldState::Ended(Ended::Released);
                fx.push(Effect::CancelExpiry {
                    order_id: order_id.clone(),
                });
                fx.push(Effect::Released {
                    order_id,
                    quantity: h.quantity,
                    reason,
                });
                Some(h)
            }
            // The saga compensates an order it had confirmed a line of (`prevent`: another line
            // was refused): the sale is undone.
            Some(mut h) if h.state == HoldState::Sold && reason == ReleaseReason::Compensation => {
                stock.on_hand += h.quantity;
                h.state = HoldState::Ended(Ended::Released);
                fx.push(Effect::Released {
                    order_id: order_id.clone(),
                    quantity: h.quantity,
                    reason,
                });
                fx.push(Effect::Adjusted {
                    delta: h.quantity,
                    on_hand: stock.on_hand,
                    reason: format!("UNSOLD order {order_id} (compensation)"),
                });
                Some(h)
            }
            Some(h) => Some(h),
            None => Some(Hold {
                order_id,
                quantity: 0,
                state: HoldState::Ended(Ended::ReleasedBeforeReserve),
                expires_at: now,
            }),
        },
        Input::Expire { order_id } => match hold {
            Some(mut h) if h.state == HoldState::Held => {
                stock.held -= h.quantity;
                h.state = HoldState::Ended(Ended::Expired);
                fx.push(Effect::Released {
                    order_id,
                    quantity: h.quantity,
                    reason: ReleaseReason::HoldExpired,
                });
                Some(h)
            }
            other => other,
        },
        Input::Confirm { order_id } => match hold {
            Some(mut h) if h.state == HoldState::Held => {
                stock.held -= h.quantity;
                stock.on_hand -= h.quantity;
                h.state = HoldState::Sold;
                fx.push(Effect::CancelExpiry {
                    order_id: order_id.clone(),
                });
                fx.push(Effect::Adjusted {
                    delta: -h.quantity,
                    on_hand: stock.on_hand,
                    reason: format!("SOLD order {order_id}"),
                });
                fx.push(confirmed(
                    &order_id,
                    ReservationStatus::Sold,
                    h.quantity,
                    &stock,
                ));
                Some(h)
            }
            // A duplicate confirm: the first answer stands.
            Some(h)
                if matches!(
                    h.state,
                    HoldState::Sold | HoldState::Ended(Ended::SaleRefused)
                ) =>
            {
                Some(h)
            }
            Some(mut h) if h.state == HoldState::Ended(Ended::Expired) => {
                // The payment came after the hold lapsed: sell if the stock is still there.
                let quantity = h.quantity;
                if quantity <= stock.available() {
                    stock.on_hand -= quantity;
                    h.state = HoldState::Sold;
                    fx.push(Effect::Adjusted {
                        delta: -quantity,
                        on_hand: stock.on_hand,
                        reason: format!("SOLD order {order_id} after its hold lapsed"),
                    });
                    fx.push(confirmed(
                        &order_id,
                        ReservationStatus::Sold,
                        quantity,
                        &stock,
                    ));
                } else {
                    fx.push(Effect::Oversold {
                        order_id: order_id.clone(),
                        quantity,
                    });
                    match rules.oversell {
                        OversellPolicy::Allow => {
                            stock.on_hand -= quantity;
                            h.state = HoldState::Sold;
                            fx.push(Effect::Adjusted {
                                delta: -quantity,
                                on_hand: stock.on_hand,
                                reason: format!("OVERSOLD order {order_id}"),
                            });
                            fx.push(confirmed(
                                &order_id,
                                ReservationStatus::Oversold,
                                quantity,
                                &stock,
                            ));
                        }
                        OversellPolicy::Prevent => {
                            h.state = HoldState::Ended(Ended::SaleRefused);
                            fx.push(confirmed(
                                &order_id,
                                ReservationStatus::SaleRefused,
                                quantity,
                                &stock,
                            ));
                        }
                    }
                }
                Some(h)
            }
            _ => return Err(Refusal::NothingToConfirm(order_id)),
        },
        Input::Adjust { delta, reason } => {
            let on_hand = stock.on_hand.saturating_add(delta);
            if on_hand < 0 || on_hand < stock.held {
                return Err(Refusal::BelowHeld {
                    delta,
                    on_hand,
                    held: stock.held,
                });
            }
            stock.on_hand = on_hand;
            fx.push(Effect::Adjusted {
                delta,
                on_hand,
                reason,
            });
            hold
        }
    };
    Ok(Outcome {
        stock,
        hold,
        effects: fx,
    })
}

/// The answer to a confirm command on `inventory.reserved.v1`.
fn confirmed(
    order_id: &str,
    status: ReservationStatus,
    quantity: i64,
    stock: &StockLevel,
) -> Effect {
    Effect::Reserved {
        order_id: order_id.to_owned(),
        status,
        quantity,
        available: stock.available(),
        expires_at: None,
    }
}
