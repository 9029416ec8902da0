//! The order sink's pure part: one [`OrderDecision`] and the order's current row (if any) →
//! the rows to write and the outbox event to emit ([`plan_decision`]). No I/O; `sink.rs`
//! applies a [`Plan`] in one MySQL transaction.

use chrono::{DateTime, NaiveDateTime};
use keel_avro::records::{
    Money, OrderCreated, OrderDecision, OrderDecisionStatus, OrderLine, OrderStatus,
    OrderStatusChanged, ShippingAddress,
};

use super::Error;
use crate::topics;

/// The part of an existing `orders` row a decision is judged against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CurrentOrder {
    pub status: OrderDecisionStatus,
    /// The sequence of the decision applied last.
    pub last_sequence: i32,
}

/// What the sink does with one decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// The order already applied a decision at or after this one's sequence: nothing is
    /// written (no history, no outbox), so a status never goes backwards.
    Stale { last_sequence: i32 },
    /// Write these rows in one transaction (unless `history.decision_id` is already stored).
    Apply(Box<Rows>),
}

/// The rows one applied decision writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    pub history: HistoryRow,
    pub order: OrderWrite,
    /// `Some(cart id)`: mark the cart `ORDERED` (on `PENDING`).
    pub cart_ordered: Option<String>,
    /// `Some(cart id)`: the order ended without a sale (`CANCELLED`, `REJECTED`), so it gives
    /// its cart back: its claim (`order_cart_claims`) is deleted and the cart turns `OPEN` again
    /// unless another order still holds it, so the customer can check the cart out anew under a
    /// new order id. `CONFIRMED` and `PENDING` keep the cart.
    pub cart_released: Option<String>,
    /// `None` for `REJECTED` (and for a transition that has no `OrderStatus` on either side).
    pub outbox: Option<OutboxEvent>,
}

/// One `order_status_history` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    pub decision_id: String,
    pub order_id: String,
    pub sequence: i32,
    pub from_status: Option<&'static str>,
    pub to_status: &'static str,
    pub reason: Option<String>,
    pub detail: Option<String>,
    /// UTC.
    pub decided_at: NaiveDateTime,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
}

/// Insert a new `orders` row with its items, or move an existing one to a new status.
#[derive(Debug, Clone, PartialEq)]
pub enum OrderWrite {
    Insert {
        order: Box<OrderRow>,
        items: Vec<ItemRow>,
    },
    Update(StatusUpdate),
}

/// A new `orders` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRow {
    pub order_id: String,
    pub customer_id: String,
    pub cart_id: String,
    pub status: &'static str,
    pub reason: Option<String>,
    pub detail: Option<String>,
    pub total_minor: i64,
    pub currency: String,
    pub shipping_address: Option<ShippingAddress>,
    pub payment_method: String,
    pub last_sequence: i32,
    /// UTC; also the first `updated_at`.
    pub created_at: NaiveDateTime,
}

/// One `order_items` row; `line_no` counts from 1 in the decision's line order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemRow {
    pub order_id: String,
    pub line_no: i32,
    pub sku: String,
    pub quantity: i32,
    pub unit_price_minor: i64,
    pub currency: String,
}

/// The status change of an existing `orders` row (guarded by `last_sequence < sequence`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    pub order_id: String,
    pub status: &'static str,
    pub reason: Option<String>,
    pub detail: Option<String>,
    pub sequence: i32,
    /// UTC.
    pub updated_at: NaiveDateTime,
}

/// The event an applied decision puts in `order_outbox`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxEvent {
    Created(OrderCreated),
    StatusChanged(OrderStatusChanged),
}

impl OutboxEvent {
    /// The destination topic (with `names`' prefix), stored as `event_type`: what the relay
    /// publishes to, and what Debezium's outbox router routes by.
    pub fn topic(&self, names: &topics::Topics) -> String {
        names.name(match self {
            Self::Created(_) => topics::ORDER_CREATED,
            Self::StatusChanged(_) => topics::ORDER_STATUS_CHANGED,
        })
    }

    /// The event id (= the outbox row's id).
    pub fn event_id(&self) -> &str {
        match self {
            Self::Created(e) => &e.event_id,
            Self::StatusChanged(e) => &e.event_id,
        }
    }

    /// The aggregate (order) id: the Kafka key.
    pub fn order_id(&self) -> &str {
        match self {
            Self::Created(e) => &e.order_id,
            Self::StatusChanged(e) => &e.order_id,
        }
    }
}

/// The status as stored in `orders.status` and the history.
pub fn status_str(status: OrderDecisionStatus) -> &'static str {
    match status {
        OrderDecisionStatus::Pending => "PENDING",
        OrderDecisionStatus::Confirmed => "CONFIRMED",
        OrderDecisionStatus::Cancelled => "CANCELLED",
        OrderDecisionStatus::Rejected => "REJECTED",
    }
}

/// The inverse of [`status_str`]; `None` for anything else.
pub fn parse_status(s: &str) -> Option<OrderDecisionStatus> {
    match s {
        "PENDING" => Some(OrderDecisionStatus::Pending),
        "CONFIRMED" => Some(OrderDecisionStatus::Confirmed),
        "CANCELLED" => Some(OrderDecisionStatus::Cancelled),
        "REJECTED" => Some(OrderDecisionStatus::Rejected),
        _ => None,
    }
}

/// The public `OrderStatus` of a decision status; `REJECTED` has none (the order never existed
/// for the rest of the shop).
pub fn public_status(status: OrderDecisionStatus) -> Option<OrderStatus> {
    match status {
        OrderDecisionStatus::Pending => Some(OrderStatus::Pending),
        OrderDecisionStatus::Confirmed => Some(OrderStatus::Confirmed),
        OrderDecisionStatus::Cancelled => Some(OrderStatus::Cancelled),
        OrderDecisionStatus::Rejected => None,
    }
}

/// Milliseconds since the epoch → a UTC `DATETIME(3)` value.
pub fn utc_from_millis(ms: i64) -> Option<NaiveDateTime> {
    DateTime::from_timestamp_millis(ms).map(|t| t.naive_utc())
}

/// Decide what one decision writes, given the order's current row (`None`: no row yet).
/// `event_id` becomes the outbox row's id and the event's `event_id` (a fresh UUID from the
/// caller). Errors: [`Error::InvalidDecision`] for a decision no row can be made of (a time
/// out of range, lines in another currency than the total, a non-positive sequence).
pub fn plan_decision(
    current: Option<CurrentOrder>,
    decision: &OrderDecision,
    event_id: String,
) -> Result<Plan, Error> {
    let invalid = |reason: String| Error::InvalidDecision {
        decision_id: decision.decision_id.clone(),
        order_id: decision.order_id.clone(),
        reason,
    };
    if decision.sequence < 1 {
        return Err(invalid(format!(
            "sequence must be 1 or more, got {}",
            decision.sequence
        )));
    }
    let decided_at = utc_from_millis(decision.decided_at).ok_or_else(|| {
        invalid(format!(
            "decided_at {} is out of range",
            decision.decided_at
        ))
    })?;
    if let Some(line) = decision
        .lines
        .iter()
        .find(|l| l.unit_price.currency != decision.total.currency)
    {
        return Err(invalid(format!(
            "line {} is priced in {}, the total in {}",
            line.sku, line.unit_price.currency, decision.total.currency
        )));
    }
    if let Some(current) = current
        && decision.sequence <= current.last_sequence
    {
        return Ok(Plan::Stale {
            last_sequence: current.last_sequence,
        });
    }

    let to = decision.status;
    // What the order moves from: as the saga saw it, else as stored here.
    let from = decision.from_status.or(current.map(|c| c.status));
    let history = HistoryRow {
        decision_id: decision.decision_id.clone(),
        order_id: decision.order_id.clone(),
        sequence: decision.sequence,
        from_status: from.map(status_str),
        to_status: status_str(to),
        reason: decision.reason.clone(),
        detail: decision.detail.clone(),
        decided_at,
        source_topic: decision.source_topic.clone(),
        source_partition: decision.source_partition,
        source_offset: decision.source_offset,
    };
    let order = match current {
        Some(_) => OrderWrite::Update(StatusUpdate {
            order_id: decision.order_id.clone(),
            status: status_str(to),
            reason: decision.reason.clone(),
            detail: decision.detail.clone(),
            sequence: decision.sequence,
            updated_at: decided_at,
        }),
        None => OrderWrite::Insert {
            order: Box::new(OrderRow {
                order_id: decision.order_id.clone(),
                customer_id: decision.customer_id.clone(),
                cart_id: decision.cart_id.clone(),
                status: status_str(to),
                reason: decision.reason.clone(),
                detail: decision.detail.clone(),
                total_minor: decision.total.amount_minor,
                currency: decision.total.currency.clone(),
                shipping_address: decision.shipping_address.clone(),
                payment_method: decision.payment_method.clone(),
                last_sequence: decision.sequence,
                created_at: decided_at,
            }),
            items: item_rows(&decision.order_id, &decision.lines),
        },
    };
    let outbox = match to {
        OrderDecisionStatus::Pending => Some(OutboxEvent::Created(OrderCreated {
            event_id,
            order_id: decision.order_id.clone(),
            occurred_at: decision.decided_at,
            causation_id: decision.decision_id.clone(),
            correlation_id: decision.correlation_id.clone(),
            customer_id: decision.customer_id.clone(),
            cart_id: decision.cart_id.clone(),
            lines: decision.lines.clone(),
            total: decision.total.clone(),
        })),
        OrderDecisionStatus::Confirmed | OrderDecisionStatus::Cancelled => {
            match (from.and_then(public_status), public_status(to)) {
                (Some(from_status), Some(to_status)) => {
                    Some(OutboxEvent::StatusChanged(OrderStatusChanged {
                        event_id,
                        order_id: decision.order_id.clone(),
                        occurred_at: decision.decided_at,
                        causation_id: decision.decision_id.clone(),
                        correlation_id: decision.correlation_id.clone(),
                        from_status,
                        to_status,
                        reason: decision.reason.clone(),
                    }))
                }
                // Never announced as created (no PENDING before it): nothing to change.
                _ => None,
            }
        }
        OrderDecisionStatus::Rejected => None,
    };
    Ok(Plan::Apply(Box::new(Rows {
        history,
        order,
        cart_ordered: (to == OrderDecisionStatus::Pending).then(|| decision.cart_id.clone()),
        cart_released: matches!(
            to,
            OrderDecisionStatus::Cancelled | OrderDecisionStatus::Rejected
        )
        .then(|| decision.cart_id.clone()),
        outbox,
    })))
}

fn item_rows(order_id: &str, lines: &[OrderLine]) -> Vec<ItemRow> {
    lines
        .iter()
        .zip(1..)
        .map(|(line, line_no)| ItemRow {
            order_id: order_id.to_owned(),
            line_no,
            sku: line.sku.clone(),
            quantity: line.quantity,
            unit_price_minor: line.unit_price.amount_minor,
            currency: line.unit_price.currency.clone(),
        })
        .collect()
}

/// The sum of `quantity × unit price` over `lines`, in `currency`; `None` on overflow.
pub fn lines_total(lines: &[OrderLine], currency: &str) -> Option<Money> {
    lines
        .iter()
        .try_fold(0i64, |acc, l| {
            l.unit_price
                .amount_minor
                .checked_mul(i64::from(l.quantity))
                .and_then(|v| acc.checked_add(v))
        })
        .map(|amount| Money::new(amount, currency))
}
