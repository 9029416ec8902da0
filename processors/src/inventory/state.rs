//! What inventory stores per SKU (its task owns the SKU: commands are keyed by SKU):
//! - [`STOCK_STORE`] (key: SKU) → [`SkuStock`] as JSON: a [`StockLevel`] per warehouse (a value
//!   stored before warehouses existed, a bare `StockLevel`, reads as the default warehouse's);
//! - [`HOLDS_STORE`] (key: `<sku>\0<order id>`) → [`Hold`] as JSON, kept after release or sale
//!   so a duplicate or late command is recognised;
//! - [`EXPIRY_STORE`] (timers, key as for holds, due = the hold's `expires_at`, wall-clock ms);
//! - [`SEEN_STORE`] (key: `<sku>\0<command id>`) for adjust commands, which have no hold to
//!   de-duplicate on.

use std::collections::BTreeMap;

use keel_avro::records::DEFAULT_WAREHOUSE;
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

/// One SKU's stock, per warehouse (name → level; warehouses never stocked are absent).
///
/// Which warehouse a reserve line is held from (the rule [`SkuStock::pick`] applies): a line is
/// held whole from ONE warehouse, never split across warehouses;
/// the preferred warehouse if it has the whole quantity available, else the first other
/// warehouse in name order (byte order of the names) that has it; else the line is a shortage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredStock")]
pub struct SkuStock {
    warehouses: BTreeMap<String, StockLevel>,
}

/// What [`STOCK_STORE`] may hold: the per-warehouse map, or a level stored before warehouses
/// existed (read as the default warehouse's).
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredStock {
    ByWarehouse {
        warehouses: BTreeMap<String, StockLevel>,
    },
    Legacy(StockLevel),
}

impl From<StoredStock> for SkuStock {
    fn from(stored: StoredStock) -> Self {
        match stored {
            StoredStock::ByWarehouse { warehouses } => Self { warehouses },
            StoredStock::Legacy(level) => Self::single(DEFAULT_WAREHOUSE, level),
        }
    }
}

impl SkuStock {
    /// `level` in `warehouse` only.
    pub fn single(warehouse: &str, level: StockLevel) -> Self {
        let mut stock = Self::default();
        if level != StockLevel::default() {
            stock.warehouses.insert(warehouse.to_owned(), level);
        }
        stock
    }

    /// The SKU's totals over its warehouses.
    pub fn total(&self) -> StockLevel {
        self.warehouses
            .values()
            .fold(StockLevel::default(), |acc, l| StockLevel {
                on_hand: acc.on_hand + l.on_hand,
                held: acc.held + l.held,
            })
    }

    /// `warehouse`'s level (zero when never stocked).
    pub fn get(&self, warehouse: &str) -> StockLevel {
        self.warehouses.get(warehouse).copied().unwrap_or_default()
    }

    /// Every stocked warehouse and its level, in name order.
    pub fn warehouses(&self) -> impl Iterator<Item = (&str, StockLevel)> {
        self.warehouses.iter().map(|(w, l)| (w.as_str(), *l))
    }

    /// Changes `warehouse`'s level by `on_hand` and `held` units.
    pub fn change(&mut self, warehouse: &str, on_hand: i64, held: i64) {
        let level = self.warehouses.entry(warehouse.to_owned()).or_default();
        level.on_hand += on_hand;
        level.held += held;
        if *level == StockLevel::default() {
            self.warehouses.remove(warehouse);
        }
    }

    /// The warehouse a line of `quantity` units is held from (see the type's docs), or `None`.
    pub fn pick(&self, preferred: Option<&str>, quantity: i64) -> Option<String> {
        let fits = |w: &str| self.get(w).available() >= quantity;
        if let Some(p) = preferred.filter(|p| fits(p)) {
            return Some(p.to_owned());
        }
        self.warehouses
            .iter()
            .find(|(w, l)| Some(w.as_str()) != preferred && l.available() >= quantity)
            .map(|(w, _)| w.clone())
    }

    /// The most units one warehouse has available (what the largest holdable line is).
    pub fn best_available(&self) -> i64 {
        self.warehouses
            .values()
            .map(StockLevel::available)
            .max()
            .unwrap_or(0)
            .max(0)
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
    /// The warehouse the units are held in (holds stored before warehouses existed: the
    /// default warehouse).
    #[serde(default = "default_warehouse")]
    pub warehouse: String,
}

fn default_warehouse() -> String {
    DEFAULT_WAREHOUSE.to_owned()
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
