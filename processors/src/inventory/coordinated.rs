//! The order coordinator on the runtime (its own sub-topology of inventory's topology): one
//! source over the topics keyed by order id (`inventory.reserved.v1`, `inventory.released.v1`,
//! `order.status.changed`, `payment.authorized.v1`), the [`CoordinatorProcessor`] that loads the
//! order's [`OrderHolds`], applies [`decide_order`] and writes back, a wall-clock punctuator
//! that forgets orders after their retention, and a sink to `inventory.commands.v1` (key: the
//! SKU), where the per-SKU [`super::InventoryProcessor`] applies the commands. Everything one
//! input causes commits in the task's transaction.

use std::time::Duration;

use keel_avro::records::{
    ConfirmReservation, InventoryCommand, InventoryCommandBody, InventoryReleased,
    InventoryReserved, OrderStatus, OrderStatusChanged, PaymentAuthorized, ReleaseStock,
};
use keel_topology::serde::{Serde, Utf8};
use keel_topology::{
    Context, ProcessError, Processor, Punctuation, PunctuationType, Record, SerdeError, StoreKind,
    TopologyBuilder,
};
use prometheus::IntCounterVec;

use super::coordinator::{
    Action, COMMAND_PREFIX, ORDER_RETENTION_STORE, ORDERS_STORE, OrderEffect, OrderHolds,
    OrderInput, decide_order, is_api_reservation,
};
use super::state::to_json;
use crate::format::Format;
use crate::topics::{self, Topics};

const SOURCE: &str = "inventory-order-inputs";
const PROCESSOR: &str = "inventory-coordinator";
const TO_COMMANDS: &str = "inventory-coordinator-to-commands";

/// The topics the coordinator reads (prefixed), all keyed by order id.
pub fn inputs(names: &Topics) -> Vec<String> {
    [
        topics::INVENTORY_RESERVED,
        topics::INVENTORY_RELEASED,
        topics::ORDER_STATUS_CHANGED,
        topics::PAYMENT_AUTHORIZED,
    ]
    .iter()
    .map(|t| names.name(t))
    .collect()
}

/// Adds the coordinator's sub-topology to `b`: an order's state is kept `retention_ms` after its
/// last change, looked for every `interval`; `counter` is `inventory_coordinator_total{action}`.
pub(crate) fn add_to(
    b: &mut TopologyBuilder,
    format: &Format,
    names: &Topics,
    retention_ms: i64,
    interval: Duration,
    counter: IntCounterVec,
) {
    let inputs = inputs(names);
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    b.add_source(
        SOURCE,
        &inputs,
        Utf8,
        InputSerde {
            format: format.clone(),
            names: names.clone(),
        },
    )
    .add_processor(
        PROCESSOR,
        move || CoordinatorProcessor {
            retention_ms,
            interval,
            counter: counter.clone(),
        },
        &[SOURCE],
    )
    .add_sink(
        TO_COMMANDS,
        &names.name(topics::INVENTORY_COMMANDS),
        Utf8,
        format.serde::<InventoryCommand>(),
        &[PROCESSOR],
    )
    .add_state_store(ORDERS_STORE, StoreKind::KeyValue, &[PROCESSOR])
    .add_state_store(ORDER_RETENTION_STORE, StoreKind::Timer, &[PROCESSOR]);
}

/// One decoded input and the id of the event it came from.
#[derive(Debug)]
pub struct Input {
    event_id: String,
    input: Option<OrderInput>,
}

/// Decodes each input topic; an event the coordinator has no use for (a status other than
/// `CANCELLED`) decodes to no input.
#[derive(Debug)]
struct InputSerde {
    format: Format,
    names: Topics,
}

impl Serde<Input> for InputSerde {
    fn serialize(&self, topic: &str, _: &Input) -> Result<Option<Vec<u8>>, SerdeError> {
        Err(SerdeError(format!(
            "the coordinator's inputs are never written (topic {topic})"
        )))
    }

    fn deserialize(&self, topic: &str, bytes: Option<&[u8]>) -> Result<Input, SerdeError> {
        let bytes = bytes
            .ok_or_else(|| SerdeError(format!("null value on {topic}; a record was required")))?;
        let f = &self.format;
        Ok(match self.names.base(topic).unwrap_or(topic) {
            topics::INVENTORY_RESERVED => {
                let e: InventoryReserved = f.decode(topic, bytes)?;
                Input {
                    input: Some(OrderInput::Reserved {
                        all_or_nothing: is_api_reservation(&e.correlation_id),
                        sku: e.sku,
                        status: e.status,
                        quantity: i64::from(e.quantity),
                        available: i64::from(e.available),
                    }),
                    event_id: e.event_id,
                }
            }
            topics::INVENTORY_RELEASED => {
                let e: InventoryReleased = f.decode(topic, bytes)?;
                Input {
                    input: Some(OrderInput::Released { sku: e.sku }),
                    event_id: e.event_id,
                }
            }
            topics::ORDER_STATUS_CHANGED => {
                let e: OrderStatusChanged = f.decode(topic, bytes)?;
                Input {
                    input: (e.to_status == OrderStatus::Cancelled).then_some(OrderInput::Cancelled),
                    event_id: e.event_id,
                }
            }
            topics::PAYMENT_AUTHORIZED => {
                let e: PaymentAuthorized = f.decode(topic, bytes)?;
                Input {
                    input: Some(OrderInput::Authorized),
                    event_id: e.event_id,
                }
            }
            other => {
                return Err(SerdeError(format!(
                    "the inventory coordinator does not read topic {other}"
                )));
            }
        })
    }
}

/// Applies [`decide_order`] per order and forgets orders after their retention.
#[derive(Debug)]
pub struct CoordinatorProcessor {
    retention_ms: i64,
    interval: Duration,
    counter: IntCounterVec,
}

impl Processor for CoordinatorProcessor {
    type Key = String;
    type Value = Input;

    fn init(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        ctx.schedule(
            "inventory-order-retention",
            self.interval,
            PunctuationType::WallClock,
        );
        Ok(())
    }

    fn process(
        &mut self,
        ctx: &mut Context<'_>,
        record: Record<String, Input>,
    ) -> Result<(), ProcessError> {
        let Input { event_id, input } = record.value;
        match input {
            Some(input) => self.apply(ctx, &record.key, input, &event_id),
            None => Ok(()),
        }
    }

    fn punctuate(
        &mut self,
        ctx: &mut Context<'_>,
        punctuation: &Punctuation,
    ) -> Result<(), ProcessError> {
        let due = ctx
            .timers(ORDER_RETENTION_STORE)?
            .due_at_most(punctuation.timestamp, 1_000)?;
        for timer in due {
            let order_id = String::from_utf8(timer.key.clone()).map_err(|_| {
                ProcessError::Fatal(format!(
                    "retention timer with a malformed key {:?}",
                    timer.key
                ))
            })?;
            self.apply(
                ctx,
                &order_id,
                OrderInput::Forget,
                &format!("retention:{order_id}"),
            )?;
        }
        Ok(())
    }
}

impl CoordinatorProcessor {
    fn apply(
        &self,
        ctx: &mut Context<'_>,
        order_id: &str,
        input: OrderInput,
        cause: &str,
    ) -> Result<(), ProcessError> {
        let now = ctx.wall_clock_time();
        let key = order_id.as_bytes();
        let state: Option<OrderHolds> = match ctx.kv(ORDERS_STORE)?.get(key)? {
            Some(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
                ProcessError::Fatal(format!(
                    "{ORDERS_STORE} holds an unreadable value for order {order_id:?}: {e}"
                ))
            })?),
            None => None,
        };
        let outcome = decide_order(state.clone(), input, now, self.retention_ms);
        match &outcome.state {
            Some(s) if Some(s) != state.as_ref() => {
                ctx.kv(ORDERS_STORE)?.put(key.to_vec(), to_json(s));
            }
            // Only a fired retention timer forgets an order (its timer is gone with it).
            None if state.is_some() => ctx.kv(ORDERS_STORE)?.delete(key.to_vec()),
            _ => {}
        }
        for effect in outcome.effects {
            match effect {
                OrderEffect::Command { sku, action } => {
                    self.counter.with_label_values(&[action.word()]).inc();
                    let command_id = format!("{COMMAND_PREFIX}{}/{order_id}/{sku}", action.word());
                    let body = match action {
                        Action::Release(reason) => InventoryCommandBody::Release(ReleaseStock {
                            order_id: order_id.to_owned(),
                            reason,
                        }),
                        Action::Confirm => InventoryCommandBody::Confirm(ConfirmReservation {
                            order_id: order_id.to_owned(),
                        }),
                    };
                    let command = InventoryCommand {
                        command_id,
                        sku: sku.clone(),
                        issued_at: now,
                        causation_id: cause.to_owned(),
                        correlation_id: order_id.to_owned(),
                        command: body,
                    };
                    ctx.forward_to(TO_COMMANDS, Record::new(sku, command, now))?;
                }
                OrderEffect::Failed { short } => {
                    self.counter.with_label_values(&["failed"]).inc();
                    let lines: Vec<String> = short
                        .iter()
                        .map(|(sku, s)| {
                            format!("{sku}: {} wanted, {} available", s.wanted, s.available)
                        })
                        .collect();
                    tracing::info!(
                        order_id,
                        short = lines.join("; "),
                        "an all-or-nothing reservation has a short line: its held lines are released"
                    );
                }
                OrderEffect::ScheduleForget { at } => {
                    ctx.timers(ORDER_RETENTION_STORE)?
                        .schedule(key.to_vec(), at, b"")?;
                }
            }
        }
        Ok(())
    }
}
