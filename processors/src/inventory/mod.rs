//! Inventory, keyed by SKU: stock on hand and holds per order in RocksDB stores, holds that lapse
//! after their TTL (a durable timer per hold, fired by a wall-clock punctuator), confirm on
//! payment, adjust, and oversell made visible (`inventory_oversell_total`). What concerns a whole
//! order (several SKUs, so several partitions) is the order coordinator's, keyed by order id.
//!
//! - `logic.rs`: [`decide`], the pure transition function for one SKU, and [`check_command`],
//!   what a command must be before it is applied (keyed by its SKU; ids by the API's rule).
//! - `state.rs`: [`SkuStock`] (a [`StockLevel`] per warehouse), [`Hold`] and their stores.
//! - `topology.rs`: [`topology`] and [`InventoryProcessor`] on the runtime.
//! - `hot.rs`: [`hot::HotSkus`], the few hottest SKUs that get a stock gauge.
//! - `coordinator.rs`: [`coordinator::decide_order`], the pure transition function for one
//!   order: all-or-nothing across SKUs for `POST /inventory/reserve`, and the order's holds
//!   released on `order.status.changed` (`CANCELLED`) and confirmed on `payment.authorized.v1`.
//! - `coordinated.rs`: the coordinator on the runtime (a second sub-topology keyed by order id,
//!   writing per-SKU commands to `inventory.commands.v1`).

pub mod coordinated;
pub mod coordinator;
pub mod hot;
pub mod logic;
pub mod sink;
pub mod state;
mod topology;

#[cfg(test)]
mod tests;

pub use logic::{Effect, Input, Outcome, OversellPolicy, Refusal, Rules, check_command, decide};
pub use state::{Hold, HoldState, SkuStock, StockLevel};
pub use topology::{InventoryConfig, InventoryMetrics, InventoryProcessor, topology};
