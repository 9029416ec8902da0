//! What reconciliation stores, and how.
//!
//! - [`ORDERS_STORE`] (key-value, key: order id as UTF-8): the order's [`OrderRecon`] — the
//!   saga's latest decision, the ledger's latest payment row, the last applied CDC position,
//!   the suspects waiting out their grace, the open mismatches and when the entry retires — as
//!   JSON (internal to the application: it only travels through its own changelog). Deleted
//!   `[reconciliation].retention_ms` after its last change once nothing waits (an open mismatch
//!   is kept until resolved): `logic.rs`, "Retention".
//! - [`DUE_STORE`] (timer, key: order id; `crate::timers::DueTimers`): at most one timer per
//!   order, due when its earliest grace period ends or, when none runs, when its retention
//!   does; deleted with the entry.

use super::logic::OrderRecon;

/// The per-order state.
pub const ORDERS_STORE: &str = "reconciliation-orders";
/// The per-order grace timer.
pub const DUE_STORE: &str = "reconciliation-due";

impl OrderRecon {
    /// The stored bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads stored bytes; an error means the store holds something this version cannot read.
    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
