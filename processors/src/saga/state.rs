//! What the saga stores per order: one [`Saga`] per order id in the key-value store
//! [`SAGAS_STORE`] (key: the order id as UTF-8; value: the saga as JSON, so an operator can read
//! it with any tool), and the step deadline in the timer store [`DEADLINES_STORE`] (key: the
//! order id; due: epoch ms of wall-clock time). Both are changelogged by the runtime.

use std::collections::{BTreeMap, BTreeSet};

use keel_avro::records::{Money, OrderDecisionStatus, OrderLine, ShippingAddress};
use serde::{Deserialize, Serialize};

/// The key-value store of sagas.
pub const SAGAS_STORE: &str = "saga-state";
/// The timer store of step deadlines (and, once a saga is terminal, of its retention).
pub const DEADLINES_STORE: &str = "saga-deadlines";
/// The timer store of replies read before the command they answer (`Ignored::Early` in
/// `logic.rs`, or before the order's saga exists): key the order id, payload the replies (JSON,
/// in the order read), due when they are dropped (`[saga].early_reply_retention_ms` after the
/// last one was kept).
pub const EARLY_STORE: &str = "saga-early";
/// The key-value store of open (non-terminal) sagas: order id → [`OpenSaga`]. Small and
/// bounded by the deadlines, so the metrics punctuator can scan it.
pub const OPEN_STORE: &str = "saga-open";

/// What the open-sagas index keeps per order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenSaga {
    pub step: Step,
    /// Epoch ms.
    pub started_at: i64,
}

/// Where an order's saga is. `Confirmed`, `Cancelled` and `Rejected` are terminal: the step never
/// changes again (late replies only trigger compensations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// `PENDING` decided and the cart check asked for (`[carts].source = "cdc"`); waiting for
    /// the carts processor's answer on `cart.checked.v1`.
    AwaitingCart,
    /// Reserve commands sent, waiting for every line's answer.
    AwaitingInventory,
    /// Every line held; authorize command sent, waiting for the payment's outcome.
    AwaitingPayment,
    /// `[inventory].oversell = "prevent"` only: the payment is authorized and a confirm command
    /// went out per line; waiting for inventory's answer (`SOLD` / `OVERSOLD` / `SALE_REFUSED`
    /// on `inventory.reserved.v1`) before capturing and deciding `CONFIRMED`.
    AwaitingConfirmation,
    Confirmed,
    Cancelled,
    /// The place-order command was invalid; the order never became `PENDING`.
    Rejected,
}

impl Step {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::AwaitingCart => "awaiting_cart",
            Self::AwaitingInventory => "awaiting_inventory",
            Self::AwaitingPayment => "awaiting_payment",
            Self::AwaitingConfirmation => "awaiting_confirmation",
            Self::Confirmed => "confirmed",
            Self::Cancelled => "cancelled",
            Self::Rejected => "rejected",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Confirmed | Self::Cancelled | Self::Rejected)
    }

    /// The order status this step shows.
    pub fn status(self) -> OrderDecisionStatus {
        match self {
            Self::AwaitingCart
            | Self::AwaitingInventory
            | Self::AwaitingPayment
            | Self::AwaitingConfirmation => OrderDecisionStatus::Pending,
            Self::Confirmed => OrderDecisionStatus::Confirmed,
            Self::Cancelled => OrderDecisionStatus::Cancelled,
            Self::Rejected => OrderDecisionStatus::Rejected,
        }
    }

    /// Every step, for exhaustive tests.
    pub const ALL: [Step; 7] = [
        Self::AwaitingCart,
        Self::AwaitingInventory,
        Self::AwaitingPayment,
        Self::AwaitingConfirmation,
        Self::Confirmed,
        Self::Cancelled,
        Self::Rejected,
    ];
}

/// What the saga knows of one order line's stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LineState {
    /// A reserve command was sent; no answer yet.
    Requested,
    /// Inventory holds the line until `expires_at` (epoch ms) unless it is confirmed.
    Held { expires_at: Option<i64> },
    /// Inventory could not hold it: `available` units were left.
    Short { available: i32 },
    /// The saga released it (compensation or cancel).
    Released,
    /// The hold lapsed before the payment's outcome arrived.
    Expired,
    /// A confirm command was sent and the saga waits for inventory's answer
    /// (`Step::AwaitingConfirmation`).
    Confirming,
    /// The hold became a sale.
    Confirmed,
}

/// What the saga knows of the payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentState {
    NotRequested,
    /// Intent and authorize commands sent.
    Requested,
    Authorized {
        psp_reference: String,
    },
    Failed,
    /// A void was asked for (a cancel while authorizing, or an authorization after a cancel).
    VoidRequested,
    /// Capture asked for after the order was confirmed.
    CaptureRequested {
        psp_reference: String,
    },
}

/// Why an order was cancelled or rejected: the closed set of reason codes the order sink and the
/// API show (`Reason::code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    /// The command broke a rule (no lines, a non-positive quantity, totals that do not add up).
    InvalidOrder,
    /// A line could not be held.
    InsufficientStock,
    /// The PSP declined the card.
    PaymentDeclined,
    /// The PSP did not answer within the payment service's timeout.
    PspTimeout,
    /// The PSP answered with an error.
    PspError,
    /// The customer (or an operator) cancelled.
    CustomerCancelled,
    /// Inventory did not answer every line before the inventory deadline.
    InventoryTimeout,
    /// The payment's outcome did not arrive before the payment deadline.
    PaymentTimeout,
    /// A hold lapsed while the saga still waited for inventory.
    HoldExpired,
    /// The cart did not arrive from CDC within the carts processor's wait.
    CartNotFound,
    /// The cart has no items.
    CartEmpty,
    /// Another order already ordered the cart.
    CartAlreadyOrdered,
    /// The order's currency is not the cart's.
    CurrencyMismatch,
    /// The command's lines differ from the cart's (the detail names the line).
    CartMismatch,
    /// The cart check was not answered before the cart deadline.
    CartTimeout,
    /// `[inventory].oversell = "prevent"`: a line's hold lapsed while the payment was under
    /// way, its stock went to another order, and inventory refused the late sale.
    OversellPrevented,
    /// The payment was authorized for another amount or currency than the order's total (a
    /// payment opened under the order's payment id by someone else).
    PaymentMismatch,
    /// A line's hold was released by a command the saga did not send.
    HoldReleased,
}

impl Reason {
    /// The stable code written to MySQL and shown by the API.
    pub fn code(self) -> &'static str {
        match self {
            Self::InvalidOrder => "INVALID_ORDER",
            Self::InsufficientStock => "INSUFFICIENT_STOCK",
            Self::PaymentDeclined => "PAYMENT_DECLINED",
            Self::PspTimeout => "PSP_TIMEOUT",
            Self::PspError => "PSP_ERROR",
            Self::CustomerCancelled => "CUSTOMER_CANCELLED",
            Self::InventoryTimeout => "INVENTORY_TIMEOUT",
            Self::PaymentTimeout => "PAYMENT_TIMEOUT",
            Self::HoldExpired => "HOLD_EXPIRED",
            Self::CartNotFound => "CART_NOT_FOUND",
            Self::CartEmpty => "CART_EMPTY",
            Self::CartAlreadyOrdered => "CART_ALREADY_ORDERED",
            Self::CurrencyMismatch => "CURRENCY_MISMATCH",
            Self::CartMismatch => "CART_MISMATCH",
            Self::CartTimeout => "CART_TIMEOUT",
            Self::OversellPrevented => "OVERSELL_PREVENTED",
            Self::PaymentMismatch => "PAYMENT_MISMATCH",
            Self::HoldReleased => "HOLD_RELEASED",
        }
    }
}

/// One order's saga.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saga {
    pub order_id: String,
    pub customer_id: String,
    pub cart_id: String,
    pub payment_method: String,
    pub lines: Vec<OrderLine>,
    pub total: Money,
    pub shipping_address: Option<ShippingAddress>,
    pub step: Step,
    /// Per SKU (SKUs are unique within an order).
    pub line_states: BTreeMap<String, LineState>,
    pub payment: PaymentState,
    /// The payment's id: `pay-<order id>` (no `/`, so it is one URL path segment).
    pub payment_id: String,
    /// The sequence of the last decision sent to the order sink.
    pub sequence: i32,
    /// Commands sent so far, counted by `decide` with the effects that send them; the
    /// topology numbers an input's commands `<order id>/c<n>` after the count before it.
    pub commands_issued: u32,
    /// Ids of the commands and events already applied (duplicates change nothing).
    pub seen: BTreeSet<String>,
    /// When the current step gives up (epoch ms), if it waits for anything.
    pub deadline: Option<i64>,
    pub reason: Option<Reason>,
    pub detail: Option<String>,
    pub started_at: i64,
    pub updated_at: i64,
}

impl Saga {
    pub fn encode(&self) -> Vec<u8> {
        // A Saga holds only strings, numbers, maps and enums: serialization cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The quantity ordered of `sku`, if the order has that line.
    pub fn quantity_of(&self, sku: &str) -> Option<i32> {
        self.lines.iter().find(|l| l.sku == sku).map(|l| l.quantity)
    }
}
