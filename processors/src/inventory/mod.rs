//! Inventory, keyed by SKU: stock on hand and holds per order in RocksDB stores, holds that lapse
//! after their TTL (a durable timer per hold, fired by a wall-clock punctuator), confirm on
//! payment, adjust, and oversell made visible (`inventory_oversell_total`).
//!
//! - `logic.rs`: [`decide`], the pure transition function for one SKU.
//! - `state.rs`: [`SkuStock`] (a [`StockLevel`] per warehouse), [`Hold`] and their stores.
//! - `topology.rs`: [`topology`] and [`InventoryProcessor`] on the runtime.
//! - `hot.rs`: [`hot::HotSkus`], the few hottest SKUs that get a stock gauge.

pub mod hot;
pub mod logic;
pub mod sink;
pub mod state;
mod topology;

#[cfg(test)]
mod tests;

pub use logic::{Effect, Input, Outcome, OversellPolicy, Refusal, Rules, decide};
pub use state::{Hold, HoldState, SkuStock, StockLevel};
pub use topology::{InventoryConfig, InventoryMetrics, InventoryProcessor, topology};
