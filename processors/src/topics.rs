//! The topics the domain reads and writes (`../shared/DESIGN.md`, "Topics"). Keys are the entity
//! id as a UTF-8 string; values are Avro in the Confluent wire format.
//!
//! Every name can carry a prefix (`[topics].prefix`, empty in production): tests and several
//! shops on one cluster get their own topics without renaming anything in code.

/// Place and cancel commands (key: order id); written by the ingest API and by other systems.
pub const ORDER_COMMANDS: &str = "orders.commands.v1";
/// Reserve, release, confirm and adjust commands (key: SKU).
pub const INVENTORY_COMMANDS: &str = "inventory.commands.v1";
/// Payment commands (key: order id).
pub const PAYMENT_COMMANDS: &str = "payments.commands.v1";
/// The saga's decided order statuses (key: order id), written to MySQL by the order sink.
pub const ORDER_DECISIONS: &str = "order.decisions.v1";
/// From the order outbox (key: order id).
pub const ORDER_CREATED: &str = "order.created";
/// From the order outbox (key: order id).
pub const ORDER_STATUS_CHANGED: &str = "order.status.changed";
/// From the payment outbox (key: order id).
pub const PAYMENT_AUTHORIZED: &str = "payment.authorized.v1";
/// From the payment outbox (key: order id).
pub const PAYMENT_FAILED: &str = "payment.failed.v1";
/// From the payment outbox (key: order id).
pub const PAYMENT_REFUNDED: &str = "payment.refunded.v1";
/// Inventory's answer to a reserve command (key: order id, so it lands in the saga's partition).
pub const INVENTORY_RESERVED: &str = "inventory.reserved.v1";
/// A hold given back (key: order id).
pub const INVENTORY_RELEASED: &str = "inventory.released.v1";
/// Stock on hand changed outside a hold (key: SKU).
pub const INVENTORY_ADJUSTED: &str = "inventory.adjusted.v1";
/// The carts processor's answer to an order's cart check (key: order id, so it lands in the
/// saga's partition).
pub const CART_CHECKED: &str = "cart.checked.v1";
/// The reconciliation processor's mismatches between the saga and the payment ledger, opened
/// and resolved (key: order id).
pub const RECONCILIATION_MISMATCHES: &str = "reconciliation.mismatches.v1";
/// The invariant auditor's verdicts: violations opened and resolved, allowed oversells (key:
/// the order id, or the SKU for stock).
pub const AUDIT_VIOLATIONS: &str = "audit.violations.v1";

/// Every topic `keel run` makes sure exists (without prefix).
pub const ALL: [&str; 15] = [
    ORDER_COMMANDS,
    INVENTORY_COMMANDS,
    PAYMENT_COMMANDS,
    ORDER_DECISIONS,
    ORDER_CREATED,
    ORDER_STATUS_CHANGED,
    PAYMENT_AUTHORIZED,
    PAYMENT_FAILED,
    PAYMENT_REFUNDED,
    INVENTORY_RESERVED,
    INVENTORY_RELEASED,
    INVENTORY_ADJUSTED,
    CART_CHECKED,
    RECONCILIATION_MISMATCHES,
    AUDIT_VIOLATIONS,
];

/// The topic names in use: [`ALL`] with a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self::with_prefix("")
    }
}

impl Topics {
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// `name` (one of the constants above) with the prefix.
    pub fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The constant a prefixed `topic` stands for, if it is one of Keel's.
    pub fn base<'a>(&self, topic: &'a str) -> Option<&'a str> {
        topic
            .strip_prefix(self.prefix.as_str())
            .filter(|t| ALL.contains(t))
    }

    /// Every topic, prefixed.
    pub fn all(&self) -> Vec<String> {
        ALL.iter().map(|t| self.name(t)).collect()
    }

    /// Topics keyed by order id and read together by the saga's tasks: they must have the same
    /// partition count (the runtime checks co-partitioning at start).
    pub fn saga_inputs(&self) -> Vec<String> {
        [
            ORDER_COMMANDS,
            INVENTORY_RESERVED,
            INVENTORY_RELEASED,
            PAYMENT_AUTHORIZED,
            PAYMENT_FAILED,
            CART_CHECKED,
        ]
        .iter()
        .map(|t| self.name(t))
        .collect()
    }
}
