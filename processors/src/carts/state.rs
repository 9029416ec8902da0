//! What the carts processor stores per cart: one [`CartState`] per cart id in the key-value
//! store [`CARTS_STORE`] (key: the cart id as UTF-8; value: JSON), and in the timer store
//! [`WAITS_STORE`] (due: epoch ms of wall-clock time) one wait timer per (cart, order)
//! ([`wait_key`]: `<cart id>\0<order id>`) and, once a cart's rows are gone, the cart's retention
//! timer ([`retention_key`]: `<cart id>\0\xff`). Both are changelogged by the runtime; a cart
//! whose retention is over is deleted, so its changelog gets a tombstone and compacts it away.

use std::collections::{BTreeMap, BTreeSet};

use keel_avro::records::{CartCheckStatus, OrderLine};
use serde::{Deserialize, Serialize};

/// The key-value store of carts.
pub const CARTS_STORE: &str = "carts-table";
/// The timer store of orders waiting for their cart (and, once a cart's rows are gone, of its
/// retention).
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
    /// Orders answered already, by order id: a duplicate check changes nothing (for
    /// `[carts].retention_ms` after the order's [`last_seen`](Self::last_seen)).
    pub answered: BTreeMap<String, CartCheckStatus>,
    /// Orders that ended without a sale and gave the cart back: a late check for one of them
    /// changes nothing, so it never claims the cart again (for `[carts].retention_ms` after the
    /// order's [`last_seen`](Self::last_seen)). (`default`: states stored before releases
    /// existed decode.)
    #[serde(default)]
    pub released: BTreeSet<String>,
    /// When each order of `answered` / `released` was last answered or released (epoch ms of
    /// wall-clock time); it is forgotten `[carts].retention_ms` later. An order without one (a
    /// state stored before retention existed: `default`) counts from the cart's next step.
    #[serde(default)]
    pub last_seen: BTreeMap<String, i64>,
    /// When the cart's entry is deleted (epoch ms of wall-clock time): set while its rows are
    /// gone and no order waits, `[carts].retention_ms` after its last change; `None` otherwise.
    /// (`default`: states stored before retention existed decode; the task's start-up sweep
    /// sets it.)
    #[serde(default)]
    pub retire_at: Option<i64>,
}

impl CartState {
    pub fn encode(&self) -> Vec<u8> {
        // Strings, numbers and maps only: serialization cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The cart's rows are gone (or never came) — no `carts` row, no `cart_items` — and no order
    /// waits for it: its entry only remembers claims and answers, and retires.
    pub fn is_gone(&self) -> bool {
        self.header.is_none() && self.items.is_empty() && self.waiting.is_empty()
    }

    /// Gone, and nothing left to remember (no claim, no answered or released order): the entry
    /// is the same as no entry, for every input.
    pub fn is_forgettable(&self) -> bool {
        self.is_gone()
            && self.claimed_by.is_none()
            && self.answered.is_empty()
            && self.released.is_empty()
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

/// The retention timer's key of `cart_id`: `<cart id>\0\xff`. Never a [`wait_key`] (which
/// ends with a UTF-8 order id, and `\xff` is never UTF-8).
pub fn retention_key(cart_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(cart_id.len() + 2);
    key.extend_from_slice(cart_id.as_bytes());
    key.extend_from_slice(&[0, 0xff]);
    key
}

/// What a timer of [`WAITS_STORE`] is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerKey {
    /// An order's wait ([`wait_key`]).
    Wait { cart_id: String, order_id: String },
    /// A cart's retention ([`retention_key`]).
    Retention { cart_id: String },
}

impl TimerKey {
    /// Reads a timer's key; `None` for a key neither function wrote.
    pub fn parse(key: &[u8]) -> Option<Self> {
        if let Some(cart) = key.strip_suffix(&[0, 0xff]) {
            let cart_id = std::str::from_utf8(cart).ok()?.to_owned();
            return Some(Self::Retention { cart_id });
        }
        let (cart_id, order_id) = split_wait_key(key)?;
        Some(Self::Wait { cart_id, order_id })
    }
}

/// `(cart id, order id)` of a wait timer's key.
pub fn split_wait_key(key: &[u8]) -> Option<(String, String)> {
    let at = key.iter().position(|b| *b == 0)?;
    let cart = std::str::from_utf8(&key[..at]).ok()?;
    let order = std::str::from_utf8(&key[at + 1..]).ok()?;
    Some((cart.to_owned(), order.to_owned()))
}
