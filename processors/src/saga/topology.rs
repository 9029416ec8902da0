//! The saga on the runtime: one source over the topics keyed by order id
//! ([`Topics::saga_inputs`]), the [`SagaProcessor`] that reads the order's saga, applies
//! [`decide`] and writes back, and three sinks (inventory commands keyed by SKU, payment commands
//! and order decisions keyed by order id). Deadlines are durable timers checked by a wall-clock
//! punctuator. Everything one input causes commits in the task's transaction.

use std::time::Duration;

use keel_avro::records::{
    InventoryCommand, OrderCommand, OrderCommandBody, OrderDecision, PaymentCommand,
};
use keel_topology::serde::{Serde, Utf8};
use keel_topology::{
    Context, ProcessError, Processor, Punctuation, PunctuationType, Record, SerdeError, StoreKind,
    Topology, TopologyBuilder,
};
use serde::{Deserialize, Serialize};

use super::logic::{Effect, Input, Timeouts, decide};
use super::state::{DEADLINES_STORE, SAGAS_STORE, Saga};
use crate::format::Format;
use crate::topics::{self, Topics};

/// The `[saga]` section of Keel's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SagaConfig {
    /// How long the saga waits for inventory to answer every line (ms).
    pub inventory_timeout_ms: u64,
    /// How long the saga waits for the payment's outcome (ms); keep it above the payment
    /// service's PSP timeout.
    pub payment_timeout_ms: u64,
    /// How often due deadlines are looked for (ms of wall-clock time).
    pub deadline_check_interval_ms: u64,
}

impl Default for SagaConfig {
    fn default() -> Self {
        Self {
            inventory_timeout_ms: 30_000,
            payment_timeout_ms: 60_000,
            deadline_check_interval_ms: 1_000,
        }
    }
}

impl SagaConfig {
    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            inventory_ms: i64::try_from(self.inventory_timeout_ms).unwrap_or(i64::MAX),
            payment_ms: i64::try_from(self.payment_timeout_ms).unwrap_or(i64::MAX),
        }
    }
}

const SOURCE: &str = "saga-inputs";
const PROCESSOR: &str = "saga";
const TO_INVENTORY: &str = "saga-to-inventory";
const TO_PAYMENTS: &str = "saga-to-payments";
const TO_DECISIONS: &str = "saga-to-decisions";

/// The saga's topology: sources, the processor, its two stores and three sinks.
pub fn topology(
    format: &Format,
    names: &Topics,
    config: &SagaConfig,
) -> keel_topology::Result<Topology> {
    let timeouts = config.timeouts();
    let inputs = names.saga_inputs();
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let interval = Duration::from_millis(config.deadline_check_interval_ms.max(1));
    let mut b = TopologyBuilder::new();
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
        move || SagaProcessor { timeouts, interval },
        &[SOURCE],
    )
    .add_sink(
        TO_INVENTORY,
        &names.name(topics::INVENTORY_COMMANDS),
        Utf8,
        format.serde::<InventoryCommand>(),
        &[PROCESSOR],
    )
    .add_sink(
        TO_PAYMENTS,
        &names.name(topics::PAYMENT_COMMANDS),
        Utf8,
        format.serde::<PaymentCommand>(),
        &[PROCESSOR],
    )
    .add_sink(
        TO_DECISIONS,
        &names.name(topics::ORDER_DECISIONS),
        Utf8,
        format.serde::<OrderDecision>(),
        &[PROCESSOR],
    )
    .add_state_store(SAGAS_STORE, StoreKind::KeyValue, &[PROCESSOR])
    .add_state_store(DEADLINES_STORE, StoreKind::Timer, &[PROCESSOR]);
    b.build()
}

/// Decodes each saga input topic into an [`Input`]; a topic it does not know is an error.
#[derive(Debug)]
struct InputSerde {
    format: Format,
    names: Topics,
}

impl Serde<Input> for InputSerde {
    fn serialize(&self, topic: &str, _: &Input) -> Result<Option<Vec<u8>>, SerdeError> {
        Err(SerdeError(format!(
            "saga inputs are never written (topic {topic})"
        )))
    }

    fn deserialize(&self, topic: &str, bytes: Option<&[u8]>) -> Result<Input, SerdeError> {
        let bytes = bytes
            .ok_or_else(|| SerdeError(format!("null value on {topic}; a record was required")))?;
        let f = &self.format;
        Ok(match self.names.base(topic).unwrap_or(topic) {
            topics::ORDER_COMMANDS => {
                let command: OrderCommand = f.decode(topic, bytes)?;
                match command.command {
                    OrderCommandBody::PlaceOrder(place) => Input::Place {
                        command_id: command.command_id,
                        place,
                    },
                    OrderCommandBody::CancelOrder(cancel) => Input::Cancel {
                        command_id: command.command_id,
                        reason: cancel.reason,
                    },
                }
            }
            topics::INVENTORY_RESERVED => Input::Reserved(f.decode(topic, bytes)?),
            topics::INVENTORY_RELEASED => Input::Released(f.decode(topic, bytes)?),
            topics::PAYMENT_AUTHORIZED => Input::Authorized(f.decode(topic, bytes)?),
            topics::PAYMENT_FAILED => Input::PaymentFailed(f.decode(topic, bytes)?),
            other => return Err(SerdeError(format!("the saga does not read topic {other}"))),
        })
    }
}

/// Where the input that caused a decision came from.
struct Source {
    topic: String,
    partition: i32,
    offset: i64,
    causation_id: String,
}

/// Runs [`decide`] for every input and every due deadline of its task.
#[derive(Debug)]
pub struct SagaProcessor {
    timeouts: Timeouts,
    interval: Duration,
}

impl Processor for SagaProcessor {
    type Key = String;
    type Value = Input;

    fn init(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        ctx.schedule("saga-deadlines", self.interval, PunctuationType::WallClock);
        Ok(())
    }

    fn process(
        &mut self,
        ctx: &mut Context<'_>,
        record: Record<String, Input>,
    ) -> Result<(), ProcessError> {
        let (topic, partition, offset) = ctx
            .metadata()
            .map(|m| (m.topic.to_string(), m.partition, m.offset))
            .unwrap_or_else(|| (String::new(), ctx.task_id().partition, -1));
        let source = Source {
            topic,
            partition,
            offset,
            causation_id: record.value.id().unwrap_or_default().to_owned(),
        };
        self.apply(ctx, &record.key, record.value, &source)
    }

    fn punctuate(
        &mut self,
        ctx: &mut Context<'_>,
        punctuation: &Punctuation,
    ) -> Result<(), ProcessError> {
        // Bounded per punctuation so one burst of expiries cannot stall the task.
        let due = ctx
            .timers(DEADLINES_STORE)?
            .due_at_most(punctuation.timestamp, 1_000)?;
        for timer in due {
            let order_id = String::from_utf8_lossy(&timer.key).into_owned();
            let source = Source {
                topic: DEADLINES_STORE.to_owned(),
                partition: ctx.task_id().partition,
                offset: -1,
                causation_id: format!("deadline:{order_id}@{}", timer.due),
            };
            self.apply(ctx, &order_id, Input::DeadlinePassed, &source)?;
        }
        Ok(())
    }
}

impl SagaProcessor {
    fn apply(
        &self,
        ctx: &mut Context<'_>,
        order_id: &str,
        input: Input,
        source: &Source,
    ) -> Result<(), ProcessError> {
        let now = ctx.wall_clock_time();
        let state = match ctx.kv(SAGAS_STORE)?.get(order_id.as_bytes())? {
            Some(bytes) => Some(Saga::decode(&bytes).map_err(|e| {
                ProcessError::Fatal(format!("saga of order {order_id:?} is unreadable: {e}"))
            })?),
            None => None,
        };
        let outcome = decide(state, input, order_id, now, &self.timeouts)
            .map_err(|refusal| ProcessError::BadInput(refusal.to_string()))?;
        let Some(mut saga) = outcome.saga else {
            return Ok(());
        };
        for effect in outcome.effects {
            match effect {
                Effect::Inventory { sku, command } => {
                    let command = InventoryCommand {
                        command_id: next_command_id(&mut saga),
                        sku: sku.clone(),
                        issued_at: now,
                        causation_id: source.causation_id.clone(),
                        correlation_id: order_id.to_owned(),
                        command,
                    };
                    ctx.forward_to(TO_INVENTORY, Record::new(sku, command, now))?;
                }
                Effect::Payment(command) => {
                    let command = PaymentCommand {
                        command_id: next_command_id(&mut saga),
                        payment_id: saga.payment_id.clone(),
                        order_id: order_id.to_owned(),
                        issued_at: now,
                        causation_id: source.causation_id.clone(),
                        correlation_id: order_id.to_owned(),
                        command,
                    };
                    ctx.forward_to(TO_PAYMENTS, Record::new(order_id.to_owned(), command, now))?;
                }
                Effect::Decide {
                    sequence,
                    status,
                    from,
                    reason,
                    detail,
                } => {
                    let decision = OrderDecision {
                        decision_id: format!("{order_id}/{sequence}"),
                        order_id: order_id.to_owned(),
                        decided_at: now,
                        causation_id: source.causation_id.clone(),
                        correlation_id: order_id.to_owned(),
                        sequence,
                        status,
                        from_status: from,
                        reason: reason.map(|r| r.code().to_owned()),
                        detail,
                        customer_id: saga.customer_id.clone(),
                        cart_id: saga.cart_id.clone(),
                        lines: saga.lines.clone(),
                        total: saga.total.clone(),
                        shipping_address: saga.shipping_address.clone(),
                        payment_method: saga.payment_method.clone(),
                        source_topic: source.topic.clone(),
                        source_partition: source.partition,
                        source_offset: source.offset,
                    };
                    ctx.forward_to(
                        TO_DECISIONS,
                        Record::new(order_id.to_owned(), decision, now),
                    )?;
                }
                Effect::SetDeadline(due) => {
                    ctx.timers(DEADLINES_STORE)?
                        .schedule(order_id.as_bytes().to_vec(), due, [])?;
                }
                Effect::ClearDeadline => {
                    ctx.timers(DEADLINES_STORE)?.cancel(order_id.as_bytes())?;
                }
            }
        }
        ctx.kv(SAGAS_STORE)?
            .put(order_id.as_bytes().to_vec(), saga.encode());
        Ok(())
    }
}

fn next_command_id(saga: &mut Saga) -> String {
    saga.commands_issued += 1;
    format!("{}/c{}", saga.order_id, saga.commands_issued)
}
