//! What the carts processor stores per cart: one [`CartState`] per cart id in the key-value
//! store [`CARTS_STORE`] (key: the cart id as UTF-8; value: JSON), and one wait timer per
//! (cart, order) in the timer store [`WAITS_STORE`] (key: `<cart id>\0<order id>`; due: epoch ms
//! of wall-clock time). Both are changelogged by the runtime.

use std::collections::{BTreeMap, BTreeSet};

use keel_avro::records::{CartCheckStatus, OrderLine};
use serde::{Deserialize, Serialize};

/// The key-value store of carts.
pub const CARTS_STORE: &str = "carts-table";
/// The timer store of orders waiting for their cart.
pub const WAITS_STORE: &str = "carts-waits";

/// The `carts` row (from CDC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartHeader {
    pub customer_id: String,
    /// ISO 4217, the currency of every unit price.
    pub currency: String,
    /// `OPEN` or `ORDERED`. Informational: the order sink sets `ORDERED` from the saga's own
    /// `PENDING` decision, so the claim ([`CartState::claimed_by`]) decides, not this column.
    pub status: String,
}

/// One `cart_items` row (from CDC); the price is in the cart's currency, minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartItem {
    pub quantity: i32,
    pub unit_price_minor: i64,
}

/// An order waiting for its cart to arrive (or to agree with the order's lines).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// The id of the request (the saga's command id), the answer's causation.
    pub command_id: String,
    pub currency: String,
    /// The lines the command carried (may be empty: the cart decides).
    pub lines: Vec<OrderLine>,
    /// When the wait ends with whatever the cart is then (epoch ms).
    pub until: i64,
}

/// One cart as the processor knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartState {
    /// `None`: no `carts` row seen (or it was deleted).
    pub header: Option<CartHeader>,
    /// By SKU.
    pub items: BTreeMap<String, CartItem>,
    /// The order id that ordered the cart (the first `OK` answer); any other order id is
    /// refused with `CART_ALREADY_ORDERED`. Cleared when that order is cancelled (the saga's
    /// release), so the next order id can claim the cart.
    pub claimed_by: Option<String>,
    /// Orders waiting for this cart, by order id.
    pub waiting: BTreeMap<String, Waiting>,
    /// Orders answered already, by order id: a duplicate check changes nothing.
    pub answered: BTreeMap<String, CartCheckStatus>,
    /// Orders that ended without a sale and gave the cart back: a late check for one of them
    /// changes nothing, so it never claims the cart again. (`default`: states stored before
    /// releases existed decode.)
    #[serde(default)]
    pub released: BTreeSet<String>,
}

impl CartState {
    pub fn encode(&self) -> Vec<u8> {
        // Strings, numbers and maps only: serialization cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The cart's lines, by SKU, in its currency.
    pub fn lines(&self) -> Vec<OrderLine> {
        let currency = self
            .header
            .as_ref()
            .map(|h| h.currency.clone())
            .unwrap_or_default();
        self.items
            .iter()
            .map(|(sku, item)| OrderLine {
                sku: sku.clone(),
                quantity: item.quantity,
                unit_price: keel_avro::records::Money::new(item.unit_price_minor, &currency),
            })
            .collect()
    }
}

/// The wait timer's key for `order_id` waiting on `cart_id`.
pub fn wait_key(cart_id: &str, order_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(cart_id.len() + order_id.len() + 1);
    key.extend_from_slice(cart_id.as_bytes());
    key.push(0);
    key.extend_from_slice(order_id.as_bytes());
    key
}

/// `(cart id, order id)` of a wait timer's key.
pub fn split_wait_key(key: &[u8]) -> Option<(String, String)> {
    let at = key.iter().position(|b| *b == 0)?;
    let cart = std::str::from_utf8(&key[..at]).ok()?;
    let order = std::str::from_utf8(&key[at + 1..]).ok()?;
    Some((cart.to_owned(), order.to_owned()))
}
