//! `inventory.commands.v1`, `inventory.reserved.v1`, `inventory.released.v1` and
//! `inventory.adjusted.v1`.

use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};

use super::{optional_timestamp_millis, timestamp_millis};

/// The warehouse a command or event without one means: stock and holds recorded before
/// warehouses existed live here, and an `AdjustStock` without a warehouse changes it.
pub const DEFAULT_WAREHOUSE: &str = "default";

/// How `POST /inventory/reserve` marks its reserve commands: their `correlation_id` is this
/// prefix and the order id (`reservation:o-1`), and inventory's replies carry it on. Inventory's
/// order coordinator makes such an order's lines all-or-nothing (a line short releases the
/// lines held); the saga's reserves (`correlation_id` = the order id) it leaves to the saga.
pub const RESERVATION_CORRELATION_PREFIX: &str = "reservation:";

/// How inventory's own adjustments for a sale of a hold begin (`SOLD order o-1`,
/// `SOLD order o-1 after its hold lapsed`, `OVERSOLD order o-1`): reserved for inventory.
/// See [`is_sale_reason`].
pub const SALE_REASON_PREFIXES: [&str; 2] = ["SOLD", "OVERSOLD"];

/// Whether an adjustment `reason` is a sale of a hold's: after leading whitespace, it starts
/// with a [`SALE_REASON_PREFIXES`] entry in any ASCII letter case (`oversold …`, ` Sold …`).
///
/// One rule for everyone: the ingest API (and `keel inventory seed`) refuse such a reason
/// with 422, the inventory processor dead-letters an `AdjustStock` carrying one (written
/// straight to Kafka), and the Cassandra mirror ends the hold of an `InventoryAdjusted` whose
/// reason is one (`correlation_id` is the order's id). `UNSOLD order …` (a compensation) is
/// not a sale.
pub fn is_sale_reason(reason: &str) -> bool {
    let start = reason.trim_start();
    SALE_REASON_PREFIXES.iter().any(|prefix| {
        start
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    })
}

/// `inventory.commands.v1` (key: SKU): the envelope every inventory command travels in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
pub struct InventoryCommand {
    pub command_id: String,
    pub sku: String,
    #[avro(with = timestamp_millis)]
    pub issued_at: i64,
    pub causation_id: String,
    /// The order id for saga commands; the command id for an operator's adjustment.
    pub correlation_id: String,
    pub command: InventoryCommandBody,
}

/// The inventory commands, in the union's branch order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(repr = "bare_union")]
pub enum InventoryCommandBody {
    Reserve(ReserveStock),
    Release(ReleaseStock),
    Adjust(AdjustStock),
    Confirm(ConfirmReservation),
}

/// Hold `quantity` units of the SKU for an order line (all or nothing), from one warehouse:
/// `warehouse` if it has them all available, else the first other warehouse (by name) that has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
pub struct ReserveStock {
    pub order_id: String,
    pub quantity: i32,
    /// The preferred warehouse; `None`: no preference.
    #[avro(default = "null")]
    #[serde(default)]
    pub warehouse: Option<String>,
    /// How long the hold lives (ms), within `[inventory].min_hold_ttl_ms..=max_hold_ttl_ms`
    /// (inventory clamps a value outside them); `None`: `[inventory].hold_ttl_ms`.
    #[avro(default = "null")]
    #[serde(default)]
    pub hold_ttl_ms: Option<i64>,
}

/// Release the order's hold on the SKU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
pub struct ReleaseStock {
    pub order_id: String,
    pub reason: ReleaseReason,
}

/// Why a hold goes back to stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReleaseReason {
    OrderCancelled,
    HoldExpired,
    Compensation,
}

/// Change the stock on hand (restock, shrinkage, count correction).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
pub struct AdjustStock {
    pub delta: i32,
    pub reason: String,
    /// The warehouse whose stock changes; `None`: [`DEFAULT_WAREHOUSE`].
    #[avro(default = "null")]
    #[serde(default)]
    pub warehouse: Option<String>,
}

/// Turn the order's hold on the SKU into a sale (after payment is authorized).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
pub struct ConfirmReservation {
    pub order_id: String,
}

/// Inventory's answer about one order's line: to a reserve command, `HELD` or `SHORTAGE`; to a
/// confirm command, `SOLD` (the hold, or a lapsed hold whose stock was still there, became a
/// sale), `OVERSOLD` (the hold lapsed, its stock went to another order, and it was sold anyway
/// under `[inventory].oversell = "allow"`) or `SALE_REFUSED` (the same, refused under
/// `"prevent"`: no sale, the saga compensates the order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReservationStatus {
    Held,
    Shortage,
    Sold,
    Oversold,
    SaleRefused,
}

/// `inventory.reserved.v1` (key: order id): inventory's answer to a reserve or confirm command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
pub struct InventoryReserved {
    pub event_id: String,
    pub sku: String,
    #[avro(with = timestamp_millis)]
    pub occurred_at: i64,
    pub causation_id: String,
    pub correlation_id: String,
    pub order_id: String,
    pub status: ReservationStatus,
    /// Units asked for; held in full when `HELD`, none when `SHORTAGE`.
    pub quantity: i32,
    /// Units available after the decision.
    pub available: i32,
    /// When an unconfirmed hold lapses (ms since the epoch); `None` for a shortage.
    #[avro(with = optional_timestamp_millis, default = "null")]
    pub expires_at: Option<i64>,
    /// The warehouse the hold (or sale) is from; `None` for a shortage, and in events written
    /// before warehouses existed ([`DEFAULT_WAREHOUSE`]).
    #[avro(default = "null")]
    #[serde(default)]
    pub warehouse: Option<String>,
    /// Units held on the SKU after this event, all warehouses: inventory's own figure (its
    /// state is the source of truth), so readers never count hold rows. `None` in events
    /// written before it existed.
    #[avro(default = "null")]
    #[serde(default)]
    pub held: Option<i32>,
    /// Units held in `warehouse` after this event; `None` as for `held`, and for a shortage.
    #[avro(default = "null")]
    #[serde(default)]
    pub warehouse_held: Option<i32>,
    /// Orders the held figures of one SKU's events (µs: inventory's wall clock, strictly
    /// increasing within the task that owns the SKU); the sink's Cassandra write time for them,
    /// so the last change wins whatever the arrival order. `None` as for `held`.
    #[avro(default = "null")]
    #[serde(default)]
    pub held_version: Option<i64>,
}

/// `inventory.released.v1` (key: order id): a hold was given back to stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
pub struct InventoryReleased {
    pub event_id: String,
    pub sku: String,
    #[avro(with = timestamp_millis)]
    pub occurred_at: i64,
    pub causation_id: String,
    pub correlation_id: String,
    pub order_id: String,
    pub quantity: i32,
    pub reason: ReleaseReason,
    /// The warehouse the hold was from; `None` in events written before warehouses existed
    /// ([`DEFAULT_WAREHOUSE`]).
    #[avro(default = "null")]
    #[serde(default)]
    pub warehouse: Option<String>,
    /// Units held on the SKU after this event, all warehouses: inventory's own figure (its
    /// state is the source of truth), so readers never count hold rows. `None` in events
    /// written before it existed.
    #[avro(default = "null")]
    #[serde(default)]
    pub held: Option<i32>,
    /// Units held in `warehouse` after this event; `None` as for `held`, and for a shortage.
    #[avro(default = "null")]
    #[serde(default)]
    pub warehouse_held: Option<i32>,
    /// Orders the held figures of one SKU's events (µs: inventory's wall clock, strictly
    /// increasing within the task that owns the SKU); the sink's Cassandra write time for them,
    /// so the last change wins whatever the arrival order. `None` as for `held`.
    #[avro(default = "null")]
    #[serde(default)]
    pub held_version: Option<i64>,
}

/// `inventory.adjusted.v1` (key: SKU): the stock on hand changed outside a sale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "dev.keel.v1")]
pub struct InventoryAdjusted {
    pub event_id: String,
    pub sku: String,
    #[avro(with = timestamp_millis)]
    pub occurred_at: i64,
    pub causation_id: String,
    pub correlation_id: String,
    pub delta: i32,
    /// Units on hand after the adjustment, all warehouses.
    pub on_hand: i32,
    pub reason: String,
    /// The warehouse whose stock changed; `None` in events written before warehouses existed
    /// ([`DEFAULT_WAREHOUSE`]).
    #[avro(default = "null")]
    #[serde(default)]
    pub warehouse: Option<String>,
    /// Units on hand in `warehouse` after the adjustment; `None` in events written before
    /// warehouses existed.
    #[avro(default = "null")]
    #[serde(default)]
    pub warehouse_on_hand: Option<i32>,
}

#[cfg(test)]
mod tests {
    use super::is_sale_reason;

    #[test]
    fn a_sale_reason_starts_with_sold_or_oversold_in_any_case_after_leading_whitespace() {
        for sale in [
            "SOLD order o-1",
            "SOLD order o-1 after its hold lapsed",
            "OVERSOLD order o-1",
            "oversold order o-1",
            "Sold",
            " \tOVERSOLD order o-1",
            "soldier",
        ] {
            assert!(is_sale_reason(sale), "{sale:?}");
        }
        for other in [
            "UNSOLD order o-1 (compensation)",
            "restock",
            "",
            "SOL",
            "é SOLD",
        ] {
            assert!(!is_sale_reason(other), "{other:?}");
        }
    }
}
