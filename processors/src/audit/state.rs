//! What the auditor stores, and how.
//!
//! - [`ORDERS_STORE`] (key-value, key: order id as UTF-8): the order's [`OrderAudit`] — the
//!   saga's latest decision, inventory's latest fact per SKU, the suspects waiting out their
//!   grace, the open violations and when the entry retires — as JSON (internal to the
//!   application: it only travels through its own changelog). Deleted `[audit].retention_ms`
//!   after its last change once nothing waits (an open violation is kept until resolved); older
//!   inputs for a deleted entry are skipped as late (`logic.rs`, "Retention").
//! - [`DUE_STORE`] (timer, key: order id; `crate::timers::DueTimers`): at most one timer per
//!   order, due when its earliest grace period ends or, when none runs, when its retention does;
//!   deleted with the entry. Durable: it survives restarts through its changelog, like the
//!   saga's deadlines.
//! - [`STOCK_STORE`] (key-value, key: SKU): the SKU's [`StockAudit`] (allowed deficit, open
//!   violation), in the stock sub-topology (fed by the `audit-stock` repartition topic).

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::logic::{OrderAudit, StockAudit};

/// The per-order state.
pub const ORDERS_STORE: &str = "audit-orders";
/// The per-order grace timer.
pub const DUE_STORE: &str = "audit-due";
/// The per-SKU state.
pub const STOCK_STORE: &str = "audit-stock";

/// A stored value: JSON of the state type.
pub trait Stored: Serialize + DeserializeOwned + Default {
    /// The stored bytes.
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads stored bytes; an error means the store holds something this version cannot read.
    fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

impl Stored for OrderAudit {}
impl Stored for StockAudit {}
