//! The carts processor, keyed by cart id: a table of the cart service's carts built from its
//! MariaDB/MySQL CDC topics (`<server>.<db>.carts`, `<server>.<db>.cart_items`, Debezium rows
//! unwrapped, Avro in the Confluent wire format through the registry (ADR 0006), keys the cart
//! id), and the cart checks the saga asks for (its
//! place-order commands re-keyed by cart id through a repartition topic). Each check is answered
//! on `cart.checked.v1`, keyed by order id: `OK` with the cart's lines, or a reason
//! (`CART_NOT_FOUND` after `[saga].cart_wait_ms`, `CART_EMPTY`, `CART_ALREADY_ORDERED`,
//! `CURRENCY_MISMATCH`). An `OK` claims the cart for the order; when the saga cancels that order
//! it sends a cancel through the same repartition and the claim is released, so the cart can be
//! ordered again. A cart whose rows are gone is deleted `[carts].retention_ms` after its last
//! change, and an answered or released order is forgotten that long after (`logic.rs`,
//! "Retention"). `docs/saga.md` ("Cart check") has the rules.
//!
//! - `logic.rs`: [`step`], the pure transition of one cart's state.
//! - `state.rs`: [`CartState`] and the stores it lives in.
//! - `topology.rs`: [`add_to`] (the carts sub-topology inside the saga application), the CDC
//!   decoding, and [`CartsProcessor`].

pub mod logic;
pub mod state;
mod topology;

#[cfg(test)]
mod tests;

pub use logic::{CartsEffect, CartsInput, Check, Rules, step};
pub use state::{CartHeader, CartItem, CartState};
pub use topology::{
    CDC_CARTS_SOURCE, CHECKS_SINK, CartsMetrics, CartsProcessor, CartsSettings, CdcTopics,
    SWEEP_LIMIT, add_to,
};
