//! What inventory stores per SKU (its task owns the SKU: commands are keyed by SKU):
//! - [`STOCK_STORE`] (key: SKU) → [`StockLevel`] as JSON;
//! - [`HOLDS_STORE`] (key: `<sku>\0<order id>`) → [`Hold`] as JSON, kept after release or sale
//!   so a duplicate or late command is recognised;
//! - [`EXPIRY_STORE`] (timers, key as for holds, due = the hold's `expires_at`, wall-clock ms);
//! - [`SEEN_STORE`] (key: `<sku>\0<command id>`) for adjust commands, which have no hold to
//!   de-duplicate on.

use serde::{Deserialize, Serialize};

pub const STOCK_STORE: &str = "inventory-stock";
pub const HOLDS_STORE: &str = "inventory-holds";
pub const EXPIRY_STORE: &str = "inventory-hold-expiry";
pub const SEEN_STORE: &str = "inventory-seen";

/// Units of one SKU. `available = on_hand - held`; `on_hand` goes below `held` only through an
/// allowed oversell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLevel {
    pub on_hand: i64,
    pub held: i64,
}

impl StockLevel {
    pub fn available(&self) -> i64 {
        self.on_hand - self.held
    }
}

/// Why a hold ended without a sale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ended {
    /// The saga released it (cancel or compensation).
    Released,
    /// Its TTL passed.
    Expired,
    /// A release arrived before any reserve: a later reserve for the order is refused.
    ReleasedBeforeReserve,
    /// There was not enough stock.
    Refused,
    /// The hold lapsed, its stock went to another order, and the late confirm was refused
    /// (`[inventory].oversell = "prevent"`).
    SaleRefused,
}

/// Where one order's hold on one SKU is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HoldState {
    /// Units set aside until `expires_at`.
    Held,
    /// The hold became a sale.
    Sold,
    Ended(Ended),
}

/// One order's hold on one SKU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub order_id: String,
    pub quantity: i64,
    pub state: HoldState,
    /// Epoch ms (wall clock) after which an unconfirmed hold lapses.
    pub expires_at: i64,
}

/// The holds store's key: `<sku>\0<order id>` (SKUs and order ids contain no NUL).
pub fn hold_key(sku: &str, order_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(sku.len() + order_id.len() + 1);
    key.extend_from_slice(sku.as_bytes());
    key.push(0);
    key.extend_from_slice(order_id.as_bytes());
    key
}

/// The `(sku, order id)` of a holds key.
pub fn split_hold_key(key: &[u8]) -> Option<(String, String)> {
    let at = key.iter().position(|b| *b == 0)?;
    let sku = std::str::from_utf8(&key[..at]).ok()?;
    let order = std::str::from_utf8(&key[at + 1..]).ok()?;
    Some((sku.to_owned(), order.to_owned()))
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of numbers, strings and enums: serialization cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}
