//! The saga on the runtime: one source over the topics keyed by order id
//! ([`Topics::saga_inputs`]), the [`SagaProcessor`] that reads the order's saga, applies
//! [`decide`] and writes back, and three sinks (inventory commands keyed by SKU, payment commands
//! and order decisions keyed by order id). Deadlines are durable timers checked by a wall-clock
//! punctuator. Everything one input causes commits in the task's transaction.

use std::time::Duration;

use keel_avro::records::{
    CancelOrder, InventoryCommand, InventoryCommandBody, OrderCommand, OrderCommandBody,
    OrderDecision, PaymentCommand, PaymentCommandBody, PlaceOrder,
};
use keel_topology::serde::{Serde, Utf8};
use keel_topology::{
    Context, ProcessError, Processor, Punctuation, PunctuationType, Record, SerdeError, StoreKind,
    Topology, TopologyBuilder,
};
use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use serde::{Deserialize, Serialize};

use super::logic::{Effect, Ignored, Input, Timeouts, decide};
use super::state::{DEADLINES_STORE, EARLY_STORE, OPEN_STORE, OpenSaga, SAGAS_STORE, Saga, Step};
use crate::carts::CdcTopics;
use crate::command_key::check_record_partition;
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
    /// How long a finished saga is kept (ms) — duplicates and late replies within it are
    /// recognised — before its state is deleted. 7 days by default.
    pub retention_ms: u64,
    /// How often the open-saga gauges are refreshed (ms of wall-clock time).
    pub metrics_interval_ms: u64,
    /// How long a reply read before the command it answers is kept for that command (ms of
    /// wall-clock time, from the last reply kept for the order; [`Ignored::Early`]). A replay
    /// (`keel reset`, a new application id) reads the input topics in fetch order, so an
    /// order's replies can be read before its place-order command; they are applied once the
    /// saga sends the command again. 1 hour by default.
    pub early_reply_retention_ms: u64,
    /// `[carts].source = "cdc"`: how long the carts processor keeps an order whose cart has not
    /// arrived (or does not yet agree with the order) before answering with what it has —
    /// `CART_NOT_FOUND` when there is no cart (ms).
    pub cart_wait_ms: u64,
    /// `[carts].source = "cdc"`: the saga's deadline for the cart check's answer (ms); keep it
    /// above `cart_wait_ms`, so the carts processor's answer comes first.
    pub cart_timeout_ms: u64,
    /// Not a `[saga]` key: `keel run` copies `[carts].retention_ms` here. How long the carts
    /// processor remembers an answered or released order, and keeps a cart whose rows are gone
    /// after its last change, before deleting it (ms). 7 days by default.
    #[serde(skip)]
    pub cart_retention_ms: u64,
    /// Not a `[saga]` key: `keel run` copies `[inventory].oversell` here. With `prevent` the saga
    /// waits for inventory's answer to every confirm before `CONFIRMED` ([`Timeouts::wait_for_sale`]).
    #[serde(skip)]
    pub oversell: crate::inventory::OversellPolicy,
}

impl Default for SagaConfig {
    fn default() -> Self {
        Self {
            inventory_timeout_ms: 30_000,
            payment_timeout_ms: 60_000,
            deadline_check_interval_ms: 1_000,
            retention_ms: 7 * 24 * 3_600_000,
            metrics_interval_ms: 5_000,
            early_reply_retention_ms: 3_600_000,
            cart_wait_ms: 30_000,
            cart_timeout_ms: 60_000,
            cart_retention_ms: 7 * 24 * 3_600_000,
            oversell: crate::inventory::OversellPolicy::Allow,
        }
    }
}

impl SagaConfig {
    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            inventory_ms: i64::try_from(self.inventory_timeout_ms).unwrap_or(i64::MAX),
            payment_ms: i64::try_from(self.payment_timeout_ms).unwrap_or(i64::MAX),
            cart_ms: None,
            wait_for_sale: self.oversell == crate::inventory::OversellPolicy::Prevent,
        }
    }
}

/// The saga's metrics, registered once per process.
#[derive(Debug, Clone)]
pub struct SagaMetrics {
    /// `saga_open{step, task}`: sagas waiting in each step.
    pub open: GaugeVec,
    /// `saga_open_oldest_age_seconds{step, task}`: how long the oldest open saga of the step
    /// has existed.
    pub oldest: GaugeVec,
    /// `saga_decisions_total{status, reason}`: order decisions (reason `none` when there is none).
    pub decisions: IntCounterVec,
    /// `saga_duration_seconds{outcome}`: from place-order to the terminal decision.
    pub duration: HistogramVec,
    /// `saga_compensations_total{action, reason}`: compensating commands sent (`release_hold`
    /// per line, `void_payment`), by the saga's failure reason.
    pub compensations: IntCounterVec,
    /// `keel_saga_events_ignored_total{event, reason}`: valid events the saga read and left
    /// alone, by event (the topic's unprefixed name, e.g. `payment.authorized.v1`) and reason
    /// ([`Ignored::label`]: `no_saga`, `not_in_order`). Every series exists from the start.
    pub ignored: IntCounterVec,
    /// `keel_saga_early_replies_total{outcome}`: replies read before the command they answer
    /// ([`Ignored::Early`], or before the order's saga exists): `kept` for the command,
    /// `applied` once the saga sent it, `expired` after `[saga].early_reply_retention_ms`
    /// without it (or dropped beyond [`MAX_KEPT_PER_ORDER`]).
    pub early: IntCounterVec,
    /// The carts processor's (`[carts].source = "cdc"`): `keel_carts_retired_total`.
    pub carts: crate::carts::CartsMetrics,
}

impl SagaMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let open = GaugeVec::new(
            Opts::new("saga_open", "Open sagas by step, per task"),
            &["step", "task"],
        )?;
        let oldest = GaugeVec::new(
            Opts::new(
                "saga_open_oldest_age_seconds",
                "Age of the oldest open saga by step, per task",
            ),
            &["step", "task"],
        )?;
        let decisions = IntCounterVec::new(
            Opts::new(
                "saga_decisions_total",
                "Order decisions by status and reason",
            ),
            &["status", "reason"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "saga_duration_seconds",
                "Time from the place-order command to the terminal decision, by outcome",
            )
            .buckets(vec![
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
            &["outcome"],
        )?;
        let compensations = IntCounterVec::new(
            Opts::new(
                "saga_compensations_total",
                "Compensating commands sent (release_hold, void_payment), by failure reason",
            ),
            &["action", "reason"],
        )?;
        let ignored = IntCounterVec::new(
            Opts::new(
                "keel_saga_events_ignored_total",
                "Valid events the saga read and left alone (no saga for the order, or a SKU not in it), by event and reason",
            ),
            &["event", "reason"],
        )?;
        let early = IntCounterVec::new(
            Opts::new(
                "keel_saga_early_replies_total",
                "Replies read before the command they answer: kept for it, applied once it was sent, or expired",
            ),
            &["outcome"],
        )?;
        for outcome in ["kept", "applied", "expired"] {
            early.with_label_values(&[outcome]);
        }
        registry.register(Box::new(early.clone()))?;
        for c in [&open, &oldest] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(decisions.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(compensations.clone()))?;
        registry.register(Box::new(ignored.clone()))?;
        // Every series from the start (0 until an event is ignored): a dashboard and the
        // metrics spec see the counter before the first foreign event.
        for why in Ignored::ALL {
            for event in why.events() {
                ignored.with_label_values(&[event, why.label()]);
            }
        }
        let carts = crate::carts::CartsMetrics::register(registry)?;
        Ok(Self {
            open,
            oldest,
            decisions,
            duration,
            compensations,
            ignored,
            early,
            carts,
        })
    }
}

const SOURCE: &str = "saga-inputs";
const PROCESSOR: &str = "saga";
const TO_INVENTORY: &str = "saga-to-inventory";
const TO_PAYMENTS: &str = "saga-to-payments";
const TO_DECISIONS: &str = "saga-to-decisions";

/// The saga's topology (`[carts].source = "api"`): sources, the processor, its stores and
/// three sinks. The command's lines are trusted (validated, not compared with a cart).
pub fn topology(
    format: &Format,
    names: &Topics,
    config: &SagaConfig,
    metrics: SagaMetrics,
) -> keel_topology::Result<Topology> {
    build(format, names, config, metrics, None)
}

/// The saga's topology with the cart check (`[carts].source = "cdc"`): every order first waits
/// for the carts sub-topology ([`crate::carts::add_to`]), which keeps the carts from the CDC
/// topics `cdc` and answers on `cart.checked.v1`.
pub fn topology_with_carts(
    format: &Format,
    names: &Topics,
    config: &SagaConfig,
    metrics: SagaMetrics,
    cdc: &CdcTopics,
) -> keel_topology::Result<Topology> {
    build(format, names, config, metrics, Some(cdc))
}

fn build(
    format: &Format,
    names: &Topics,
    config: &SagaConfig,
    metrics: SagaMetrics,
    cdc: Option<&CdcTopics>,
) -> keel_topology::Result<Topology> {
    let mut timeouts = config.timeouts();
    if cdc.is_some() {
        timeouts.cart_ms = Some(i64::try_from(config.cart_timeout_ms).unwrap_or(i64::MAX));
    }
    let retention_ms = i64::try_from(config.retention_ms).unwrap_or(i64::MAX);
    let early_retention_ms = i64::try_from(config.early_reply_retention_ms).unwrap_or(i64::MAX);
    let carts_metrics = metrics.carts.clone();
    let metrics_interval = Duration::from_millis(config.metrics_interval_ms.max(1));
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
        move || SagaProcessor {
            timeouts,
            interval,
            retention_ms,
            early_retention_ms,
            metrics_interval,
            metrics: metrics.clone(),
        },
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
    .add_state_store(DEADLINES_STORE, StoreKind::Timer, &[PROCESSOR])
    .add_state_store(OPEN_STORE, StoreKind::KeyValue, &[PROCESSOR])
    .add_state_store(EARLY_STORE, StoreKind::Timer, &[PROCESSOR]);
    if let Some(cdc) = cdc {
        let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        crate::carts::add_to(
            &mut b,
            format,
            names,
            cdc,
            PROCESSOR,
            crate::carts::CartsSettings {
                rules: crate::carts::Rules {
                    wait_ms: ms(config.cart_wait_ms),
                    retention_ms: ms(config.cart_retention_ms),
                },
                check_interval: interval,
            },
            carts_metrics,
        );
    }
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
                        order_id: command.order_id,
                        place,
                    },
                    OrderCommandBody::CancelOrder(cancel) => Input::Cancel {
                        command_id: command.command_id,
                        order_id: command.order_id,
                        reason: cancel.reason,
                    },
                }
            }
            topics::INVENTORY_RESERVED => Input::Reserved(f.decode(topic, bytes)?),
            topics::INVENTORY_RELEASED => Input::Released(f.decode(topic, bytes)?),
            topics::PAYMENT_AUTHORIZED => Input::Authorized(f.decode(topic, bytes)?),
            topics::PAYMENT_FAILED => Input::PaymentFailed(f.decode(topic, bytes)?),
            topics::CART_CHECKED => Input::CartChecked(f.decode(topic, bytes)?),
            other => return Err(SerdeError(format!("the saga does not read topic {other}"))),
        })
    }
}

/// At most this many replies are kept per order ([`EARLY_STORE`]); beyond it the oldest is
/// dropped (counted `expired`). A saga's own replies are a few per line: this only bounds a
/// producer that writes many events answering one order's commands.
pub const MAX_KEPT_PER_ORDER: usize = 256;

/// A reply kept for the command it answers ([`Ignored::Early`], or read before the order's
/// saga exists), with where it was read: its decisions name that source.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Kept {
    input: Input,
    topic: String,
    partition: i32,
    offset: i64,
}

impl Kept {
    fn source(&self) -> Source {
        Source {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
            causation_id: self.input.id().unwrap_or_default().to_owned(),
        }
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
    retention_ms: i64,
    early_retention_ms: i64,
    metrics_interval: Duration,
    metrics: SagaMetrics,
}

impl Processor for SagaProcessor {
    type Key = String;
    type Value = Input;

    fn init(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        ctx.schedule("saga-deadlines", self.interval, PunctuationType::WallClock);
        ctx.schedule(
            "saga-metrics",
            self.metrics_interval,
            PunctuationType::WallClock,
        );
        Ok(())
    }

    fn close(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        // The task moves away: its sagas are counted by the next owner.
        let task = ctx.task_id().to_string();
        for step in Step::ALL {
            let _ = self
                .metrics
                .open
                .remove_label_values(&[step.label(), &task]);
            let _ = self
                .metrics
                .oldest
                .remove_label_values(&[step.label(), &task]);
        }
        Ok(())
    }

    fn process(
        &mut self,
        ctx: &mut Context<'_>,
        record: Record<String, Input>,
    ) -> Result<(), ProcessError> {
        // A command or event must be on its key's murmur2 partition: the saga's state is kept
        // there and every answer (keyed by order id, murmur2-partitioned) arrives there.
        // Checked when the key is the record's order id; otherwise [`decide`] refuses it with
        // both values.
        if record.value.order_id() == Some(record.key.as_str()) {
            check_record_partition(&record.key, ctx.metadata())
                .map_err(|problem| ProcessError::BadInput(problem.to_string()))?;
        }
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
        self.handle(ctx, &record.key, record.value, &source)
    }

    fn punctuate(
        &mut self,
        ctx: &mut Context<'_>,
        punctuation: &Punctuation,
    ) -> Result<(), ProcessError> {
        if punctuation.name == "saga-metrics" {
            return self.refresh_gauges(ctx, punctuation.timestamp);
        }
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
            self.handle(ctx, &order_id, Input::DeadlinePassed, &source)?;
        }
        // Replies whose command never came: dropped.
        let expired = ctx
            .timers(EARLY_STORE)?
            .due_at_most(punctuation.timestamp, 1_000)?;
        for timer in expired {
            let kept = decode_kept(&timer.key, &timer.payload)?;
            tracing::debug!(
                order_id = %String::from_utf8_lossy(&timer.key),
                replies = kept.len(),
                "replies kept for commands the saga never sent expire"
            );
            self.metrics
                .early
                .with_label_values(&["expired"])
                .inc_by(kept.len() as u64);
        }
        Ok(())
    }
}

/// The replies kept for the order `key` ([`EARLY_STORE`]'s payload: JSON).
fn decode_kept(key: &[u8], payload: &[u8]) -> Result<Vec<Kept>, ProcessError> {
    serde_json::from_slice(payload).map_err(|e| {
        ProcessError::Fatal(format!(
            "replies kept for order {:?} are unreadable: {e}",
            String::from_utf8_lossy(key)
        ))
    })
}

impl SagaProcessor {
    /// Applies `input` ([`Self::apply`]); a reply the saga cannot use yet is kept for the
    /// command it answers ([`Self::keep`]), and once the saga changed, the replies kept for
    /// the order are tried again ([`Self::apply_kept`]).
    fn handle(
        &self,
        ctx: &mut Context<'_>,
        order_id: &str,
        input: Input,
        source: &Source,
    ) -> Result<(), ProcessError> {
        let event = input.event();
        let keep = input.answers_the_saga_of(order_id).then(|| input.clone());
        match self.apply(ctx, order_id, input, source)? {
            None => self.apply_kept(ctx, order_id),
            Some(why) => {
                tracing::debug!(
                    order_id,
                    event,
                    reason = why.label(),
                    topic = %source.topic,
                    partition = source.partition,
                    offset = source.offset,
                    "saga ignores an event that is not its own (yet)"
                );
                self.count_ignored(event, why);
                match (why, keep) {
                    (Ignored::NoSaga | Ignored::Early, Some(input)) => {
                        self.keep(ctx, order_id, input, source)
                    }
                    _ => Ok(()),
                }
            }
        }
    }

    /// Keeps `input` for the order's saga until it sends the command the reply answers, or
    /// `[saga].early_reply_retention_ms` passes. A reply kept already (same event id) is not
    /// kept twice.
    fn keep(
        &self,
        ctx: &mut Context<'_>,
        order_id: &str,
        input: Input,
        source: &Source,
    ) -> Result<(), ProcessError> {
        let now = ctx.wall_clock_time();
        let timers = ctx.timers(EARLY_STORE)?;
        let mut kept = match timers.get(order_id.as_bytes())? {
            Some(timer) => decode_kept(&timer.key, &timer.payload)?,
            None => Vec::new(),
        };
        if kept.iter().any(|k| k.input.id() == input.id()) {
            return Ok(());
        }
        if kept.len() >= MAX_KEPT_PER_ORDER {
            kept.remove(0);
            self.metrics.early.with_label_values(&["expired"]).inc();
        }
        kept.push(Kept {
            input,
            topic: source.topic.clone(),
            partition: source.partition,
            offset: source.offset,
        });
        let payload = serde_json::to_vec(&kept).unwrap_or_default();
        timers.schedule(
            order_id.as_bytes().to_vec(),
            now.saturating_add(self.early_retention_ms),
            payload,
        )?;
        self.metrics.early.with_label_values(&["kept"]).inc();
        Ok(())
    }

    /// Tries the replies kept for `order_id` again, in the order they were read, until none
    /// applies any more (one applied reply can make the next one's command sent).
    fn apply_kept(&self, ctx: &mut Context<'_>, order_id: &str) -> Result<(), ProcessError> {
        let Some(timer) = ctx.timers(EARLY_STORE)?.get(order_id.as_bytes())? else {
            return Ok(());
        };
        let mut kept = decode_kept(&timer.key, &timer.payload)?;
        let before = kept.len();
        loop {
            let tried = kept.len();
            let mut waiting = Vec::with_capacity(tried);
            for k in std::mem::take(&mut kept) {
                match self.apply(ctx, order_id, k.input.clone(), &k.source())? {
                    Some(Ignored::NoSaga | Ignored::Early) => waiting.push(k),
                    outcome => {
                        if let Some(why) = outcome {
                            self.count_ignored(k.input.event(), why);
                        }
                        self.metrics.early.with_label_values(&["applied"]).inc();
                    }
                }
            }
            kept = waiting;
            if kept.is_empty() || kept.len() == tried {
                break;
            }
        }
        if kept.len() != before {
            let timers = ctx.timers(EARLY_STORE)?;
            if kept.is_empty() {
                timers.cancel(order_id.as_bytes())?;
            } else {
                let payload = serde_json::to_vec(&kept).unwrap_or_default();
                timers.schedule(order_id.as_bytes().to_vec(), timer.due, payload)?;
            }
        }
        Ok(())
    }

    /// Reads the order's saga, applies [`decide`] and carries out its effects; `Some` if the
    /// input was ignored (nothing written, nothing sent).
    fn apply(
        &self,
        ctx: &mut Context<'_>,
        order_id: &str,
        input: Input,
        source: &Source,
    ) -> Result<Option<Ignored>, ProcessError> {
        let now = ctx.wall_clock_time();
        let stored = ctx.kv(SAGAS_STORE)?.get(order_id.as_bytes())?;
        let state = match &stored {
            Some(bytes) => Some(Saga::decode(bytes).map_err(|e| {
                ProcessError::Fatal(format!("saga of order {order_id:?} is unreadable: {e}"))
            })?),
            None => None,
        };
        // A finished saga's timer is its retention: forget it.
        if let (Some(saga), Input::DeadlinePassed) = (&state, &input)
            && saga.step.is_terminal()
        {
            ctx.kv(SAGAS_STORE)?.delete(order_id.as_bytes().to_vec());
            return Ok(None);
        }
        let step_before = state.as_ref().map(|s| s.step);
        let mut command_number = state.as_ref().map_or(0, |s| s.commands_issued);
        let was_terminal = step_before.is_some_and(Step::is_terminal);
        let outcome = decide(state, input, order_id, now, &self.timeouts)
            .map_err(|refusal| ProcessError::BadInput(refusal.to_string()))?;
        if let Some(why) = outcome.ignored {
            // A valid event for someone else (or not yet the saga's): nothing is written,
            // nothing is sent.
            return Ok(Some(why));
        }
        let Some(saga) = outcome.saga else {
            return Ok(None);
        };
        for effect in outcome.effects {
            match effect {
                Effect::Inventory { sku, command } => {
                    if matches!(command, InventoryCommandBody::Release(_)) {
                        self.count_compensation("release_hold", &saga);
                    }
                    let command = InventoryCommand {
                        command_id: next_command_id(order_id, &mut command_number),
                        sku: sku.clone(),
                        issued_at: now,
                        causation_id: source.causation_id.clone(),
                        correlation_id: order_id.to_owned(),
                        command,
                    };
                    ctx.forward_to(TO_INVENTORY, Record::new(sku, command, now))?;
                }
                Effect::Payment(command) => {
                    if matches!(command, PaymentCommandBody::Void(_)) {
                        self.count_compensation("void_payment", &saga);
                    }
                    let command = PaymentCommand {
                        command_id: next_command_id(order_id, &mut command_number),
                        payment_id: saga.payment_id.clone(),
                        order_id: order_id.to_owned(),
                        issued_at: now,
                        causation_id: source.causation_id.clone(),
                        correlation_id: order_id.to_owned(),
                        command,
                    };
                    ctx.forward_to(TO_PAYMENTS, Record::new(order_id.to_owned(), command, now))?;
                }
                Effect::CheckCart => {
                    let command = OrderCommand {
                        command_id: next_command_id(order_id, &mut command_number),
                        order_id: order_id.to_owned(),
                        issued_at: now,
                        causation_id: source.causation_id.clone(),
                        correlation_id: order_id.to_owned(),
                        command: OrderCommandBody::PlaceOrder(PlaceOrder {
                            customer_id: saga.customer_id.clone(),
                            cart_id: saga.cart_id.clone(),
                            lines: saga.lines.clone(),
                            total: saga.total.clone(),
                            payment_method: saga.payment_method.clone(),
                            shipping_address: saga.shipping_address.clone(),
                        }),
                    };
                    ctx.forward_to(
                        crate::carts::CHECKS_SINK,
                        Record::new(saga.cart_id.clone(), command, now),
                    )?;
                }
                Effect::ReleaseCart => {
                    let command = OrderCommand {
                        command_id: next_command_id(order_id, &mut command_number),
                        order_id: order_id.to_owned(),
                        issued_at: now,
                        causation_id: source.causation_id.clone(),
                        correlation_id: order_id.to_owned(),
                        command: OrderCommandBody::CancelOrder(CancelOrder {
                            reason: saga.reason.map_or("CANCELLED", |r| r.code()).to_owned(),
                        }),
                    };
                    ctx.forward_to(
                        crate::carts::CHECKS_SINK,
                        Record::new(saga.cart_id.clone(), command, now),
                    )?;
                }
                Effect::Decide {
                    sequence,
                    status,
                    from,
                    reason,
                    detail,
                } => {
                    let status_label = format!("{status:?}").to_ascii_uppercase();
                    self.metrics
                        .decisions
                        .with_label_values(&[
                            status_label.as_str(),
                            reason.map_or("none", |r| r.code()),
                        ])
                        .inc();
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
        debug_assert_eq!(
            command_number, saga.commands_issued,
            "decide counts every command"
        );
        if saga.step.is_terminal() {
            if !was_terminal {
                let due = now.saturating_add(self.retention_ms);
                ctx.timers(DEADLINES_STORE)?
                    .schedule(order_id.as_bytes().to_vec(), due, b"")?;
                ctx.kv(OPEN_STORE)?.delete(order_id.as_bytes().to_vec());
                let seconds = (now - saga.started_at).max(0) as f64 / 1_000.0;
                self.metrics
                    .duration
                    .with_label_values(&[saga.step.label()])
                    .observe(seconds);
            }
        } else if step_before != Some(saga.step) {
            let open = OpenSaga {
                step: saga.step,
                started_at: saga.started_at,
            };
            let bytes = serde_json::to_vec(&open).unwrap_or_default();
            ctx.kv(OPEN_STORE)?.put(order_id.as_bytes().to_vec(), bytes);
        }
        // A duplicate leaves the saga as it was: no write, no changelog record.
        let encoded = saga.encode();
        if stored.as_deref() != Some(encoded.as_slice()) {
            ctx.kv(SAGAS_STORE)?
                .put(order_id.as_bytes().to_vec(), encoded);
        }
        Ok(None)
    }

    /// Counts an input of `event` left alone for `why` (`keel_saga_events_ignored_total`).
    fn count_ignored(&self, event: &str, why: Ignored) {
        self.metrics
            .ignored
            .with_label_values(&[event, why.label()])
            .inc();
    }

    /// Counts one compensating command under the saga's failure reason (`none` if it has none).
    fn count_compensation(&self, action: &str, saga: &Saga) {
        self.metrics
            .compensations
            .with_label_values(&[action, saga.reason.map_or("none", |r| r.code())])
            .inc();
    }

    /// Sets `saga_open` and `saga_open_oldest_age_seconds` for this task from the open index.
    fn refresh_gauges(&self, ctx: &mut Context<'_>, now: i64) -> Result<(), ProcessError> {
        let task = ctx.task_id().to_string();
        let mut counts = [0u64; Step::ALL.len()];
        let mut oldest = [None::<i64>; Step::ALL.len()];
        for entry in ctx.kv(OPEN_STORE)?.iter()? {
            let (_, bytes) = entry?;
            let Ok(open) = serde_json::from_slice::<OpenSaga>(&bytes) else {
                continue;
            };
            let i = Step::ALL.iter().position(|s| *s == open.step).unwrap_or(0);
            counts[i] += 1;
            oldest[i] = Some(oldest[i].map_or(open.started_at, |o: i64| o.min(open.started_at)));
        }
        for (i, step) in Step::ALL
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_terminal())
        {
            self.metrics
                .open
                .with_label_values(&[step.label(), &task])
                .set(counts[i] as f64);
            let age = oldest[i].map_or(0.0, |t| (now - t).max(0) as f64 / 1_000.0);
            self.metrics
                .oldest
                .with_label_values(&[step.label(), &task])
                .set(age);
        }
        Ok(())
    }
}

/// The id of the saga's next command (`decide` counted it in [`Saga::commands_issued`]).
fn next_command_id(order_id: &str, issued: &mut u32) -> String {
    *issued += 1;
    format!("{order_id}/c{issued}")
}
