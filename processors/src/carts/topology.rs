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
//!
//! Retention (`logic.rs`, "Retention"): a gone cart's timer sits in the waits store
//! ([`retention_key`]); when its retention is over the entry is deleted (a tombstone on its
//! changelog) and `keel_carts_retired_total` counts it. After a task starts, its wall-clock
//! punctuation also sweeps the store once, [`SWEEP_LIMIT`] carts at a time
//! ([`CartsInput::Sweep`]), so carts stored before retention existed retire too.

use std::ops::Bound;
use std::time::Duration;

use keel_avro::records::{CartChecked, OrderCommand, OrderCommandBody};
use keel_topology::serde::{Serde, Utf8};
use keel_topology::{
    Context, ProcessError, Processor, Punctuation, PunctuationType, Record, SerdeError, StoreKind,
    TopologyBuilder,
};
use prometheus::{IntCounter, Opts, Registry};
use serde_json::Value;

use super::logic::{CartsEffect, CartsInput, Check, Rules, step};
use super::state::{
    CARTS_STORE, CartHeader, CartItem, CartState, TimerKey, WAITS_STORE, retention_key, wait_key,
};
use crate::cdc::CdcValues;
use crate::format::Format;
use crate::timers::DueTimers;
use crate::topics::{self, Topics};

/// The orders waiting for their cart, one timer per `(cart, order)` ([`wait_key`]), and the
/// gone carts' retention, one timer per cart ([`retention_key`]).
const WAITS: DueTimers = DueTimers::new(WAITS_STORE);

/// How many stored carts the start-up sweep looks at per punctuation.
pub const SWEEP_LIMIT: usize = 1_000;

/// The carts processor's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CartsSettings {
    /// `[saga].cart_wait_ms` and `[carts].retention_ms`.
    pub rules: Rules,
    /// How often due waits and retentions are looked for (and the sweep moves on).
    pub check_interval: Duration,
}

/// The carts processor's metrics (registered with the saga's, [`crate::saga::SagaMetrics`]).
#[derive(Debug, Clone)]
pub struct CartsMetrics {
    /// `keel_carts_retired_total`: cart entries deleted from the carts store.
    pub retired: IntCounter,
}

impl CartsMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let retired = IntCounter::with_opts(Opts::new(
            "keel_carts_retired_total",
            "Cart entries deleted from the carts store: carts whose rows are gone, \
             [carts].retention_ms after their last change (at once with nothing to remember)",
        ))?;
        registry.register(Box::new(retired.clone()))?;
        Ok(Self { retired })
    }
}

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
/// at most `settings.rules.wait_ms` for its cart, a gone cart retires
/// `settings.rules.retention_ms` after its last change; timers are checked every
/// `settings.check_interval`.
pub fn add_to(
    b: &mut TopologyBuilder,
    format: &Format,
    names: &Topics,
    cdc: &CdcTopics,
    saga: &str,
    settings: CartsSettings,
    metrics: CartsMetrics,
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
            rules: settings.rules,
            interval: settings.check_interval,
            metrics: metrics.clone(),
            sweep: Sweep::After(None),
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

/// Where the start-up sweep is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sweep {
    /// Next: the carts after this key (`None`: from the first).
    After(Option<Vec<u8>>),
    /// Every cart was looked at.
    Done,
}

/// Runs [`step`] for every CDC row, check, due wait and due retention of its task, and sweeps
/// its store once after it starts.
#[derive(Debug)]
pub struct CartsProcessor {
    rules: Rules,
    interval: Duration,
    metrics: CartsMetrics,
    sweep: Sweep,
}

impl Processor for CartsProcessor {
    type Key = String;
    type Value = CartsInput;

    fn init(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        self.sweep = Sweep::After(None);
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
            |ctx, key, _| match TimerKey::parse(key) {
                Some(TimerKey::Wait { cart_id, order_id }) => {
                    self.apply(ctx, &cart_id, CartsInput::WaitOver { order_id })
                }
                Some(TimerKey::Retention { cart_id }) => {
                    self.apply(ctx, &cart_id, CartsInput::RetentionOver)
                }
                None => Ok(()),
            },
        )?;
        self.sweep_on(ctx)
    }
}

impl CartsProcessor {
    /// Looks at the next [`SWEEP_LIMIT`] stored carts ([`CartsInput::Sweep`]), once through the
    /// store after the task starts.
    fn sweep_on(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let keys = {
            let Sweep::After(after) = &self.sweep else {
                return Ok(());
            };
            let start = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
            let kv = ctx.kv(CARTS_STORE)?;
            let mut keys = Vec::new();
            for entry in kv.range(start, Bound::Unbounded)?.take(SWEEP_LIMIT) {
                keys.push(entry?.0);
            }
            keys
        };
        self.sweep = match keys.last() {
            Some(last) if keys.len() == SWEEP_LIMIT => Sweep::After(Some(last.clone())),
            _ => Sweep::Done,
        };
        for key in keys {
            let cart_id = String::from_utf8_lossy(&key).into_owned();
            self.apply(ctx, &cart_id, CartsInput::Sweep)?;
        }
        Ok(())
    }

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
        let stored = ctx.kv(CARTS_STORE)?.get(cart_id.as_bytes())?;
        let state = match &stored {
            Some(bytes) => CartState::decode(bytes)
                .map_err(|e| ProcessError::Fatal(format!("cart {cart_id:?} is unreadable: {e}")))?,
            None => CartState::default(),
        };
        let (state, effects) = step(state, cart_id, input, now, &self.rules);
        let mut forget = false;
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
                CartsEffect::ArmRetention { at } => {
                    WAITS.schedule(ctx, retention_key(cart_id), at)?;
                }
                CartsEffect::DisarmRetention => {
                    WAITS.cancel(ctx, &retention_key(cart_id))?;
                }
                CartsEffect::Forget => forget = true,
            }
        }
        if forget {
            // Retired (or nothing to remember): the entry goes, its changelog gets a tombstone.
            WAITS.cancel(ctx, &retention_key(cart_id))?;
            if stored.is_some() {
                ctx.kv(CARTS_STORE)?.delete(cart_id.as_bytes().to_vec());
                self.metrics.retired.inc();
            }
            return Ok(());
        }
        // A duplicate leaves the cart as it was: no write, no changelog record.
        let encoded = state.encode();
        if stored.as_deref() != Some(encoded.as_slice()) {
            ctx.kv(CARTS_STORE)?
                .put(cart_id.as_bytes().to_vec(), encoded);
        }
        Ok(())
    }
}
