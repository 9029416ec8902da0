//! The carts sub-topology, added to the saga's application by [`add_to`]:
//!
//! ```text
//! saga ──(place-order, key cart id)──▶ <app>-cart-checks-repartition ─▶ cart-requests ─┐
//! <server>.<db>.carts      (Debezium row as Avro, key cart id) ─▶ cdc-carts ──────────┼▶ carts ─▶ cart.checked.v1
//! <server>.<db>.cart_items (Debezium row as Avro, key cart id) ─▶ cdc-cart-items ─────┘   (key order id)
//! ```
//!
//! The three inputs are keyed by cart id and co-partitioned (the CDC topics are created with
//! `[topics].partitions` before Debezium writes them; the repartition topic takes the same
//! count), so a cart and the checks for it meet in one task. The answer is keyed by order id and
//! co-partitioned with the saga's inputs. When the saga cancels an order it sends a cancel
//! command through the same repartition (after that order's place-order, on the same
//! partition): the order gives the cart back ([`CartsInput::Release`]).

use std::time::Duration;

use keel_avro::records::{CartChecked, OrderCommand, OrderCommandBody};
use keel_topology::serde::{Serde, Utf8};
use keel_topology::{
    Context, ProcessError, Processor, Punctuation, PunctuationType, Record, SerdeError, StoreKind,
    TopologyBuilder,
};
use serde_json::Value;

use super::logic::{CartsEffect, CartsInput, Check, step};
use super::state::{
    CARTS_STORE, CartHeader, CartItem, CartState, WAITS_STORE, split_wait_key, wait_key,
};
use crate::cdc::CdcValues;
use crate::format::Format;
use crate::timers::DueTimers;
use crate::topics::{self, Topics};

/// The orders waiting for their cart, one timer per `(cart, order)` ([`wait_key`]).
const WAITS: DueTimers = DueTimers::new(WAITS_STORE);

/// The Debezium topics of the cart service's tables (`<topic prefix>.<database>.<table>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdcTopics {
    pub carts: String,
    pub cart_items: String,
}

impl CdcTopics {
    /// `<server>.<database>.carts` and `<server>.<database>.cart_items`.
    pub fn new(server: &str, database: &str) -> Self {
        Self {
            carts: format!("{server}.{database}.carts"),
            cart_items: format!("{server}.{database}.cart_items"),
        }
    }
}

/// The repartition of the saga's cart checks; the saga forwards to [`CHECKS_SINK`].
const CHECKS: &str = "cart-checks";
/// The sink node of the repartition (named by `add_repartition`).
pub const CHECKS_SINK: &str = "cart-checks-sink";
const REQUESTS: &str = "cart-requests";
/// The source node of the `carts` CDC topic.
pub const CDC_CARTS_SOURCE: &str = "cdc-carts";
const CDC_ITEMS_SOURCE: &str = "cdc-cart-items";
const PROCESSOR: &str = "carts";
const TO_SAGA: &str = "carts-to-saga";

/// Adds the carts sub-topology to `b`: the saga processor `saga` forwards its place-order
/// commands (key: cart id) to [`CHECKS_SINK`]; answers go to `cart.checked.v1`. An order waits
/// at most `wait_ms` for its cart; waits are checked every `check_interval`.
pub fn add_to(
    b: &mut TopologyBuilder,
    format: &Format,
    names: &Topics,
    cdc: &CdcTopics,
    saga: &str,
    wait_ms: i64,
    check_interval: Duration,
) {
    b.add_repartition::<String, OrderCommand, _, _>(
        CHECKS,
        Utf8,
        format.serde::<OrderCommand>(),
        &[saga],
    )
    .add_processor(REQUESTS, || RequestsToChecks, &[CHECKS])
    .add_source(
        CDC_CARTS_SOURCE,
        &[cdc.carts.as_str()],
        Utf8,
        CdcSerde::new(format, Table::Carts),
    )
    .add_source(
        CDC_ITEMS_SOURCE,
        &[cdc.cart_items.as_str()],
        Utf8,
        CdcSerde::new(format, Table::CartItems),
    )
    .add_processor(
        PROCESSOR,
        move || CartsProcessor {
            wait_ms,
            interval: check_interval,
        },
        &[CDC_CARTS_SOURCE, CDC_ITEMS_SOURCE, REQUESTS],
    )
    .add_sink(
        TO_SAGA,
        &names.name(topics::CART_CHECKED),
        Utf8,
        format.serde::<CartChecked>(),
        &[PROCESSOR],
    )
    .add_state_store(CARTS_STORE, StoreKind::KeyValue, &[PROCESSOR])
    .add_state_store(WAITS_STORE, StoreKind::Timer, &[PROCESSOR]);
}

/// Turns a re-keyed place-order command into a [`Check`], and a re-keyed cancel (the saga
/// cancelled the order: it gives the cart back) into a [`CartsInput::Release`].
#[derive(Debug)]
struct RequestsToChecks;

impl Processor for RequestsToChecks {
    type Key = String;
    type Value = OrderCommand;

    fn process(
        &mut self,
        ctx: &mut Context<'_>,
        record: Record<String, OrderCommand>,
    ) -> Result<(), ProcessError> {
        let command = record.value.clone();
        let (cart_id, input) = match command.command {
            OrderCommandBody::PlaceOrder(place) => (
                place.cart_id,
                CartsInput::Check(Check {
                    order_id: command.order_id,
                    command_id: command.command_id,
                    currency: place.total.currency,
                    lines: place.lines,
                }),
            ),
            // A cancel carries no cart id: the record's key (the saga re-keyed it by cart id).
            OrderCommandBody::CancelOrder(_) => (
                record.key.clone(),
                CartsInput::Release {
                    order_id: command.order_id,
                },
            ),
        };
        ctx.forward(record.with(cart_id, input));
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Table {
    Carts,
    CartItems,
}

/// Decodes a Debezium row (`ExtractNewRecordState`, deletes rewritten with `__deleted`) of
/// `carts` or `cart_items`: Avro in the Confluent wire format, read with its writer schema from
/// the registry ([`CdcValues`], ADR 0006). A null value (a tombstone) is [`CartsInput::Ignore`];
/// anything else that does not decode (schemaless JSON too) is a [`SerdeError`]: dead-lettered
/// with why.
#[derive(Debug, Clone)]
struct CdcSerde {
    table: Table,
    values: CdcValues,
}

impl CdcSerde {
    fn new(format: &Format, table: Table) -> Self {
        Self {
            table,
            values: CdcValues::for_format(format),
        }
    }
}

fn text(row: &Value, field: &str, topic: &str) -> Result<String, SerdeError> {
    row.get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| SerdeError(format!("{topic}: field {field} is missing or not a string")))
}

fn number(row: &Value, field: &str, topic: &str) -> Result<i64, SerdeError> {
    row.get(field).and_then(Value::as_i64).ok_or_else(|| {
        SerdeError(format!(
            "{topic}: field {field} is missing or not an integer"
        ))
    })
}

impl Serde<CartsInput> for CdcSerde {
    fn serialize(&self, topic: &str, _: &CartsInput) -> Result<Option<Vec<u8>>, SerdeError> {
        Err(SerdeError(format!(
            "CDC rows are never written by Keel (topic {topic})"
        )))
    }

    fn deserialize(&self, topic: &str, bytes: Option<&[u8]>) -> Result<CartsInput, SerdeError> {
        let Some(bytes) = bytes else {
            return Ok(CartsInput::Ignore);
        };
        let row: Value = self
            .values
            .decode(topic, bytes)
            .map_err(|e| SerdeError(format!("{topic}: Debezium row: {e}")))?;
        if !row.is_object() {
            return Err(SerdeError(format!(
                "{topic}: Debezium row: the value is not a record"
            )));
        }
        let deleted = matches!(
            row.get("__deleted"),
            Some(Value::String(s)) if s == "true"
        ) || row.get("__deleted") == Some(&Value::Bool(true));
        Ok(match (self.table, deleted) {
            (Table::Carts, true) => CartsInput::HeaderDeleted,
            (Table::Carts, false) => CartsInput::Header(CartHeader {
                customer_id: text(&row, "customer_id", topic)?,
                currency: text(&row, "currency", topic)?,
                status: text(&row, "status", topic).unwrap_or_else(|_| "OPEN".to_owned()),
            }),
            (Table::CartItems, true) => CartsInput::ItemDeleted {
                sku: text(&row, "sku", topic)?,
            },
            (Table::CartItems, false) => CartsInput::Item {
                sku: text(&row, "sku", topic)?,
                item: CartItem {
                    quantity: i32::try_from(number(&row, "quantity", topic)?)
                        .map_err(|e| SerdeError(format!("{topic}: quantity: {e}")))?,
                    unit_price_minor: number(&row, "unit_price_minor", topic)?,
                },
            },
        })
    }
}

/// Runs [`step`] for every CDC row, check and due wait of its task.
#[derive(Debug)]
pub struct CartsProcessor {
    wait_ms: i64,
    interval: Duration,
}

impl Processor for CartsProcessor {
    type Key = String;
    type Value = CartsInput;

    fn init(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        ctx.schedule("carts-waits", self.interval, PunctuationType::WallClock);
        Ok(())
    }

    fn process(
        &mut self,
        ctx: &mut Context<'_>,
        record: Record<String, CartsInput>,
    ) -> Result<(), ProcessError> {
        self.apply(ctx, &record.key, record.value)
    }

    fn punctuate(
        &mut self,
        ctx: &mut Context<'_>,
        punctuation: &Punctuation,
    ) -> Result<(), ProcessError> {
        WAITS.fire_due(
            ctx,
            punctuation.timestamp,
            |ctx, key, _| match split_wait_key(key) {
                Some((cart_id, order_id)) => {
                    self.apply(ctx, &cart_id, CartsInput::WaitOver { order_id })
                }
                None => Ok(()),
            },
        )?;
        Ok(())
    }
}

impl CartsProcessor {
    fn apply(
        &self,
        ctx: &mut Context<'_>,
        cart_id: &str,
        input: CartsInput,
    ) -> Result<(), ProcessError> {
        if input == CartsInput::Ignore {
            return Ok(());
        }
        let now = ctx.wall_clock_time();
        let state = match ctx.kv(CARTS_STORE)?.get(cart_id.as_bytes())? {
            Some(bytes) => CartState::decode(&bytes)
                .map_err(|e| ProcessError::Fatal(format!("cart {cart_id:?} is unreadable: {e}")))?,
            None => CartState::default(),
        };
        let (state, effects) = step(state, cart_id, input, now, self.wait_ms);
        for effect in effects {
            match effect {
                CartsEffect::Answer {
                    order_id,
                    command_id,
                    status,
                    detail,
                    customer_id,
                    lines,
                    total,
                } => {
                    let answer = CartChecked {
                        event_id: format!("{order_id}/cart-check"),
                        order_id: order_id.clone(),
                        occurred_at: now,
                        causation_id: command_id,
                        correlation_id: order_id.clone(),
                        cart_id: cart_id.to_owned(),
                        status,
                        detail,
                        customer_id,
                        lines,
                        total,
                    };
                    ctx.forward_to(TO_SAGA, Record::new(order_id, answer, now))?;
                }
                CartsEffect::Wait { order_id, until } => {
                    WAITS.schedule(ctx, wait_key(cart_id, &order_id), until)?;
                }
                CartsEffect::StopWaiting { order_id } => {
                    WAITS.cancel(ctx, &wait_key(cart_id, &order_id))?;
                }
            }
        }
        ctx.kv(CARTS_STORE)?
            .put(cart_id.as_bytes().to_vec(), state.encode());
        Ok(())
    }
}
