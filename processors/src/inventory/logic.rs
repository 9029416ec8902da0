//! Inventory's transitions for one SKU as a pure function: [`decide`]`(stock, hold, input, now)
//! → (stock, hold, effects)`, where `stock` is the SKU's [`SkuStock`] (a level per warehouse). The topology (`topology.rs`) loads the SKU's stock level and the
//! order's hold, applies the outcome and emits the events, in the task's transaction.
//!
//! Rules (tested in `tests.rs`):
//! - a command is applied only if its key is its SKU and its SKU, order id and warehouse keep
//!   the API's id rule, and an adjust's reason is not one of inventory's own sale reasons
//!   ([`check_command`]); otherwise it is dead-lettered;
//! - a hold is taken whole or not at all, from one warehouse: the preferred one if it has the
//!   whole quantity available, else the first other warehouse by name that has
//!   ([`SkuStock::pick`]); a warehouse's `held` never exceeds its `on_hand` through a reserve;
//! - release, expiry, confirm and compensation act on the hold's own warehouse;
//! - a duplicate reserve (a hold already exists for the order) changes nothing;
//! - a release before its reserve leaves a marker, so the late reserve is refused;
//! - a hold lapses at `expires_at` (the reserve's own TTL clamped into the configured bounds, else
//!   the configured default) and is released with `HOLD_EXPIRED`;
//! - confirming a lapsed hold takes the stock if it is still there, else records an oversell
//!   (sold anyway under `allow`, refused under `prevent`);
//! - every confirm is answered on `inventory.reserved.v1` (`SOLD`, `OVERSOLD`, `SALE_REFUSED`),
//!   so a saga that waits for the sale (`prevent`) learns the outcome in its own partition; a
//!   duplicate confirm changes nothing and repeats the first answer ([`Effect::ConfirmRepeated`]);
//! - the order coordinator's confirm ([`Input::ConfirmHeld`]) sells a live hold only, and is a
//!   no-op for any other; a second release of a released, lapsed or sold hold changes nothing;
//! - a compensating release of a sold hold (the saga gives up an order whose other line was
//!   refused) puts the units back on hand;
//! - an adjust changes one warehouse (the default one when none is named) and never takes its
//!   `on_hand` below zero or below what it holds.

use serde::{Deserialize, Serialize};

use keel_avro::ids::{ID_RULE, is_valid_id, shown};
use keel_avro::records::{
    DEFAULT_WAREHOUSE, InventoryCommand, InventoryCommandBody, ReleaseReason, ReservationStatus,
    is_sale_reason,
};

use super::state::{Ended, Hold, HoldState, SkuStock};
use crate::command_key::{KeyProblem, check_key};

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
        /// The preferred warehouse (`None`: no preference).
        warehouse: Option<String>,
        /// The hold's TTL (ms) asked for; `None`: `Rules::hold_ttl_ms`. Clamped into
        /// `Rules::min_hold_ttl_ms..=Rules::max_hold_ttl_ms` (see [`Rules::ttl`]).
        hold_ttl_ms: Option<i64>,
    },
    Release {
        order_id: String,
        reason: ReleaseReason,
    },
    Confirm {
        order_id: String,
    },
    /// A confirm from inventory's order coordinator (a `payment.authorized.v1` it saw): sells a
    /// live hold exactly as [`Input::Confirm`] does, and does nothing at all for any other (no
    /// hold, one released, lapsed, sold or refused) — the coordinator never sells a lapsed hold
    /// (that is the saga's decision) and is never dead-lettered for a hold already gone.
    ConfirmHeld {
        order_id: String,
    },
    Adjust {
        delta: i64,
        reason: String,
        /// `None`: the default warehouse.
        warehouse: Option<String>,
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
        /// Units available after the decision: the SKU's total for a hold or a sale; for a
        /// shortage, the most any one warehouse has (the largest line it could hold).
        available: i64,
        expires_at: Option<i64>,
        /// The warehouse of the hold or sale; `None` for a shortage.
        warehouse: Option<String>,
    },
    /// `inventory.released.v1` (key: order id).
    Released {
        order_id: String,
        quantity: i64,
        reason: ReleaseReason,
        warehouse: String,
    },
    /// `inventory.adjusted.v1` (key: SKU): `warehouse`'s on hand changed by `delta`; `on_hand`
    /// is the SKU's total after it, `warehouse_on_hand` the warehouse's.
    Adjusted {
        delta: i64,
        on_hand: i64,
        reason: String,
        warehouse: String,
        warehouse_on_hand: i64,
    },
    /// A sale of a lapsed hold whose stock was gone (`inventory_oversell_total`).
    Oversold {
        order_id: String,
        quantity: i64,
    },
    /// `inventory.reserved.v1` again: a duplicate confirm of a hold already sold (`SOLD`) or
    /// refused (`SALE_REFUSED`) repeats that answer and changes nothing, so a saga whose own
    /// confirm came second (the coordinator's came first) still gets its answer. Not counted
    /// in the metrics a second time.
    ConfirmRepeated {
        order_id: String,
        status: ReservationStatus,
        quantity: i64,
        available: i64,
        warehouse: String,
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
    pub stock: SkuStock,
    pub hold: Option<Hold>,
    pub effects: Vec<Effect>,
}

/// Why a command cannot be applied: the command's fault (dead-lettered with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The record's key is not the command's SKU, or the SKU breaks the id rule
    /// ([`check_command`]).
    #[error(transparent)]
    Key(#[from] KeyProblem),
    /// Another id of the command (its order id, its warehouse) breaks the id rule.
    #[error("the command's {field} {} is not a valid id: an id is {ID_RULE}", shown(.id))]
    InvalidId { field: &'static str, id: String },
    /// An adjust whose reason starts with SOLD or OVERSOLD in any letter case
    /// ([`is_sale_reason`]): those are inventory's own (sales of holds), and the API refuses them.
    #[error(
        "an adjustment's reason may not start with SOLD or OVERSOLD (in any letter case): those \
         are inventory's own (sales of holds), got {}",
        shown(.0)
    )]
    SaleReason(String),
    #[error("quantity must be positive, got {0}")]
    NonPositiveQuantity(i64),
    #[error("order {0:?} has no hold on this SKU to confirm")]
    NothingToConfirm(String),
    #[error(
        "adjusting {warehouse} by {delta} would leave {on_hand} on hand there with {held} held"
    )]
    BelowHeld {
        warehouse: String,
        delta: i64,
        on_hand: i64,
        held: i64,
    },
}

/// Inventory settings the logic needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// How long an unconfirmed hold lives (ms) when its reserve names no TTL.
    pub hold_ttl_ms: i64,
    /// The shortest and longest TTL (ms) a reserve may ask for.
    pub min_hold_ttl_ms: i64,
    pub max_hold_ttl_ms: i64,
    pub oversell: OversellPolicy,
}

impl Rules {
    /// The TTL (ms) of a hold whose reserve asked for `requested`: the default when it asked
    /// for none, else `requested` clamped into `min_hold_ttl_ms..=max_hold_ttl_ms`. A command
    /// on Kafka is clamped rather than dead-lettered: the saga (or another producer) gets a hold
    /// with a valid life instead of no answer; the API refuses out-of-bounds values with 422
    /// before they reach Kafka.
    pub fn ttl(&self, requested: Option<i64>) -> i64 {
        match requested {
            None => self.hold_ttl_ms,
            Some(ms) => ms.clamp(
                self.min_hold_ttl_ms,
                self.max_hold_ttl_ms.max(self.min_hold_ttl_ms),
            ),
        }
    }
}

/// Checks a command on `inventory.commands.v1` before anything is read or applied, whoever wrote
/// it (the saga, the order coordinator, the API, `keel inventory seed`, another system): its
/// record's `key` is its SKU, and the SKU, the order id (reserve, release, confirm) and the
/// warehouse (reserve, adjust) keep the id rule the API enforces ([`keel_avro::ids`]: 1 to 64
/// characters without whitespace or control characters), and an adjust's reason is not one of
/// inventory's own sale reasons ([`is_sale_reason`], the API's rule too: the Cassandra mirror
/// ends the hold of the adjustment's `correlation_id` for one). An empty SKU would otherwise be
/// stocked and mirrored (the Cassandra mirror refuses an empty partition key).
pub fn check_command(key: &str, command: &InventoryCommand) -> Result<(), Refusal> {
    check_key("sku", key, &command.sku)?;
    let (order_id, warehouse) = match &command.command {
        InventoryCommandBody::Reserve(r) => (Some(&r.order_id), r.warehouse.as_ref()),
        InventoryCommandBody::Release(r) => (Some(&r.order_id), None),
        InventoryCommandBody::Confirm(c) => (Some(&c.order_id), None),
        InventoryCommandBody::Adjust(a) => (None, a.warehouse.as_ref()),
    };
    for (field, id) in [("order_id", order_id), ("warehouse", warehouse)] {
        if let Some(id) = id
            && !is_valid_id(id)
        {
            return Err(Refusal::InvalidId {
                field,
                id: id.clone(),
            });
        }
    }
    if let InventoryCommandBody::Adjust(a) = &command.command
        && is_sale_reason(&a.reason)
    {
        return Err(Refusal::SaleReason(a.reason.clone()));
    }
    Ok(())
}

/// Applies `input` to the SKU's `stock` and the order's `hold` at wall-clock `now` (ms).
pub fn decide(
    mut stock: SkuStock,
    hold: Option<Hold>,
    input: Input,
    now: i64,
    rules: &Rules,
) -> Result<Outcome, Refusal> {
    let mut fx = Vec::new();
    let hold = match input {
        Input::Reserve {
            order_id,
            quantity,
            warehouse,
            hold_ttl_ms,
        } => {
            if quantity <= 0 {
                return Err(Refusal::NonPositiveQuantity(quantity));
            }
            match hold {
                // A duplicate, or a reserve after its release: the first answer stands.
                Some(existing) => Some(existing),
                None => match stock.pick(warehouse.as_deref(), quantity) {
                    Some(from) => {
                        stock.change(&from, 0, quantity);
                        let expires_at = now.saturating_add(rules.ttl(hold_ttl_ms));
                        fx.push(Effect::Reserved {
                            order_id: order_id.clone(),
                            status: ReservationStatus::Held,
                            quantity,
                            available: stock.total().available(),
                            expires_at: Some(expires_at),
                            warehouse: Some(from.clone()),
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
                            warehouse: from,
                        })
                    }
                    None => {
                        fx.push(Effect::Reserved {
                            order_id: order_id.clone(),
                            status: ReservationStatus::Shortage,
                            quantity,
                            available: stock.best_available(),
                            expires_at: None,
                            warehouse: None,
                        });
                        Some(Hold {
                            order_id,
                            quantity: 0,
                            state: HoldState::Ended(Ended::Refused),
                            expires_at: now,
                            warehouse: warehouse.unwrap_or_else(|| DEFAULT_WAREHOUSE.to_owned()),
                        })
                    }
                },
            }
        }
        Input::Release { order_id, reason } => match hold {
            Some(mut h) if h.state == HoldState::Held => {
                stock.change(&h.warehouse, 0, -h.quantity);
                h.state = HoldState::Ended(Ended::Released);
                fx.push(Effect::CancelExpiry {
                    order_id: order_id.clone(),
                });
                fx.push(Effect::Released {
                    order_id,
                    quantity: h.quantity,
                    reason,
                    warehouse: h.warehouse.clone(),
                });
                Some(h)
            }
            // The saga compensates an order it had confirmed a line of (`prevent`: another line
            // was refused): the sale is undone.
            Some(mut h) if h.state == HoldState::Sold && reason == ReleaseReason::Compensation => {
                stock.change(&h.warehouse, h.quantity, 0);
                h.state = HoldState::Ended(Ended::Released);
                fx.push(Effect::Released {
                    order_id: order_id.clone(),
                    quantity: h.quantity,
                    reason,
                    warehouse: h.warehouse.clone(),
                });
                fx.push(adjusted(
                    &stock,
                    &h.warehouse,
                    h.quantity,
                    format!("UNSOLD order {order_id} (compensation)"),
                ));
                Some(h)
            }
            Some(h) => Some(h),
            None => Some(Hold {
                order_id,
                quantity: 0,
                state: HoldState::Ended(Ended::ReleasedBeforeReserve),
                expires_at: now,
                warehouse: DEFAULT_WAREHOUSE.to_owned(),
            }),
        },
        Input::Expire { order_id } => match hold {
            Some(mut h) if h.state == HoldState::Held => {
                stock.change(&h.warehouse, 0, -h.quantity);
                h.state = HoldState::Ended(Ended::Expired);
                fx.push(Effect::Released {
                    order_id,
                    quantity: h.quantity,
                    reason: ReleaseReason::HoldExpired,
                    warehouse: h.warehouse.clone(),
                });
                Some(h)
            }
            other => other,
        },
        Input::Confirm { order_id } => match hold {
            Some(mut h) if h.state == HoldState::Held => {
                stock.change(&h.warehouse, -h.quantity, -h.quantity);
                h.state = HoldState::Sold;
                fx.push(Effect::CancelExpiry {
                    order_id: order_id.clone(),
                });
                fx.push(adjusted(
                    &stock,
                    &h.warehouse,
                    -h.quantity,
                    format!("SOLD order {order_id}"),
                ));
                fx.push(confirmed(&order_id, ReservationStatus::Sold, &h, &stock));
                Some(h)
            }
            // A duplicate confirm: the first answer stands, and is given again.
            Some(h)
                if matches!(
                    h.state,
                    HoldState::Sold | HoldState::Ended(Ended::SaleRefused)
                ) =>
            {
                fx.push(Effect::ConfirmRepeated {
                    order_id,
                    status: if h.state == HoldState::Sold {
                        ReservationStatus::Sold
                    } else {
                        ReservationStatus::SaleRefused
                    },
                    quantity: h.quantity,
                    available: stock.total().available(),
                    warehouse: h.warehouse.clone(),
                });
                Some(h)
            }
            Some(mut h) if h.state == HoldState::Ended(Ended::Expired) => {
                // The payment came after the hold lapsed: sell if the stock is still there (in
                // the hold's warehouse).
                let quantity = h.quantity;
                if quantity <= stock.get(&h.warehouse).available() {
                    stock.change(&h.warehouse, -quantity, 0);
                    h.state = HoldState::Sold;
                    fx.push(adjusted(
                        &stock,
                        &h.warehouse,
                        -quantity,
                        format!("SOLD order {order_id} after its hold lapsed"),
                    ));
                    fx.push(confirmed(&order_id, ReservationStatus::Sold, &h, &stock));
                } else {
                    fx.push(Effect::Oversold {
                        order_id: order_id.clone(),
                        quantity,
                    });
                    match rules.oversell {
                        OversellPolicy::Allow => {
                            stock.change(&h.warehouse, -quantity, 0);
                            h.state = HoldState::Sold;
                            fx.push(adjusted(
                                &stock,
                                &h.warehouse,
                                -quantity,
                                format!("OVERSOLD order {order_id}"),
                            ));
                            fx.push(confirmed(
                                &order_id,
                                ReservationStatus::Oversold,
                                &h,
                                &stock,
                            ));
                        }
                        OversellPolicy::Prevent => {
                            h.state = HoldState::Ended(Ended::SaleRefused);
                            fx.push(confirmed(
                                &order_id,
                                ReservationStatus::SaleRefused,
                                &h,
                                &stock,
                            ));
                        }
                    }
                }
                Some(h)
            }
            _ => return Err(Refusal::NothingToConfirm(order_id)),
        },
        Input::ConfirmHeld { order_id } => match hold {
            Some(h) if h.state == HoldState::Held => {
                return decide(stock, Some(h), Input::Confirm { order_id }, now, rules);
            }
            other => other,
        },
        Input::Adjust {
            delta,
            reason,
            warehouse,
        } => {
            let warehouse = warehouse.unwrap_or_else(|| DEFAULT_WAREHOUSE.to_owned());
            let level = stock.get(&warehouse);
            let on_hand = level.on_hand.saturating_add(delta);
            if on_hand < 0 || on_hand < level.held {
                return Err(Refusal::BelowHeld {
                    warehouse,
                    delta,
                    on_hand,
                    held: level.held,
                });
            }
            stock.change(&warehouse, delta, 0);
            fx.push(adjusted(&stock, &warehouse, delta, reason));
            hold
        }
    };
    Ok(Outcome {
        stock,
        hold,
        effects: fx,
    })
}

/// `inventory.adjusted.v1` for a change of `delta` units in `warehouse` (already applied).
fn adjusted(stock: &SkuStock, warehouse: &str, delta: i64, reason: String) -> Effect {
    Effect::Adjusted {
        delta,
        on_hand: stock.total().on_hand,
        reason,
        warehouse: warehouse.to_owned(),
        warehouse_on_hand: stock.get(warehouse).on_hand,
    }
}

/// The answer to a confirm command on `inventory.reserved.v1`.
fn confirmed(order_id: &str, status: ReservationStatus, hold: &Hold, stock: &SkuStock) -> Effect {
    Effect::Reserved {
        order_id: order_id.to_owned(),
        status,
        quantity: hold.quantity,
        available: stock.total().available(),
        expires_at: None,
        warehouse: Some(hold.warehouse.clone()),
    }
}
