//! The auditor application (`<application_id>-audit`): two sub-topologies.
//!
//! ```text
//! order.decisions.v1    (key order id) ─▶ decisions ─┐
//! inventory.reserved.v1 (key order id) ─▶ reserved ──┼▶ order-auditor ─┐
//! inventory.released.v1 (key order id) ─▶ released ──┘                 ├▶ audit.violations.v1
//!                                          reserved ─▶ by-sku ─▶ <app>-audit-stock-repartition (key SKU)
//!                                   audit-stock ─▶ stock-in ─┐                                │
//! inventory.adjusted.v1 (key SKU) ─▶ adjusted ───────────────┴▶ stock-auditor ────────────────┘
//! ```
//!
//! The first reads the three topics keyed by order id in one task per partition (they must be
//! co-partitioned; the runtime checks at start). Stock is a per-SKU fact, but
//! `inventory.reserved.v1` is keyed by order id (so the saga gets its answers): it is re-keyed
//! by SKU through the `audit-stock` repartition topic and audited, with `inventory.adjusted.v1`
//! (already keyed by SKU), by one task per SKU partition, which sees every figure of a SKU in
//! order. A wall-clock punctuator fires the orders' timers (grace periods and retention,
//! `crate::timers`): an order entry whose retention is over is deleted with its timer.

use std::time::Duration;

use keel_avro::records::{
    AuditViolation, AuditViolationState, InventoryAdjusted, InventoryReleased, InventoryReserved,
    OrderDecision, OrderDecisionStatus,
};
use keel_topology::serde::{Serde, Utf8};
use keel_topology::{
    Context, ProcessError, Processor, Punctuation, PunctuationType, Record, SerdeError, StoreKind,
    Topology, TopologyBuilder,
};

use super::logic::{
    HoldFact, Now, OrderAudit, OrderInput, OrderStatus, Output, Rules, StockAudit, StockInput,
    Violation, decide, decide_stock,
};
use super::state::{DUE_STORE, ORDERS_STORE, STOCK_STORE, Stored};
use super::view::{AuditMetrics, AuditView};
use crate::format::{Format, RecordSerde};
use crate::timers::DueTimers;
use crate::topics::{self, Topics};

/// One timer per order: its earliest grace period, or its retention.
const DUE: DueTimers = DueTimers::new(DUE_STORE);

const DECISIONS: &str = "decisions";
const RESERVED: &str = "reserved";
const RELEASED: &str = "released";
const ADJUSTED: &str = "adjusted";
const ORDER_AUDITOR: &str = "order-auditor";
const BY_SKU: &str = "by-sku";
/// The repartition (topic `<application_id>-audit-stock-repartition`).
const STOCK_REPARTITION: &str = "audit-stock";
const STOCK_IN: &str = "stock-in";
const STOCK_AUDITOR: &str = "stock-auditor";
const SINK: &str = "violations";
const STOCK_SINK: &str = "stock-violations";

/// Settings of the auditor.
#[derive(Debug, Clone, Copy)]
pub struct AuditSettings {
    pub rules: Rules,
    /// How often the grace timers are checked.
    pub check_interval: Duration,
}

/// What the order auditor is handed.
#[derive(Debug, Clone, PartialEq)]
pub enum OrderEvent {
    Decision(Box<OrderDecision>),
    Reserved(Box<InventoryReserved>),
    Released(Box<InventoryReleased>),
}

/// What the stock auditor is handed.
#[derive(Debug, Clone, PartialEq)]
pub enum StockEvent {
    Reserved(Box<InventoryReserved>),
    Adjusted(Box<InventoryAdjusted>),
}

/// A record serde read into another type (`map`); the auditor never writes its input topics.
struct Mapped<T, I> {
    inner: RecordSerde<T>,
    map: fn(T) -> I,
}

impl<T: keel_avro::Record, I: 'static> Serde<I> for Mapped<T, I> {
    fn serialize(&self, topic: &str, _: &I) -> Result<Option<Vec<u8>>, SerdeError> {
        Err(SerdeError(format!(
            "the auditor never writes its input topic {topic}"
        )))
    }

    fn deserialize(&self, topic: &str, bytes: Option<&[u8]>) -> Result<I, SerdeError> {
        self.inner.deserialize(topic, bytes).map(self.map)
    }
}

fn mapped<T: keel_avro::Record, I>(format: &Format, map: fn(T) -> I) -> Mapped<T, I> {
    Mapped {
        inner: format.serde::<T>(),
        map,
    }
}

/// The auditor topology. `view` receives the open violations of this process's tasks;
/// `metrics` counts what is opened, resolved and allowed.
pub fn topology(
    format: &Format,
    names: &Topics,
    settings: AuditSettings,
    view: AuditView,
    metrics: AuditMetrics,
) -> keel_topology::Result<Topology> {
    let mut b = TopologyBuilder::new();
    let violations = names.name(topics::AUDIT_VIOLATIONS);
    let (order_view, order_metrics) = (view.clone(), metrics.clone());
    b.add_source(
        DECISIONS,
        &[names.name(topics::ORDER_DECISIONS).as_str()],
        Utf8,
        mapped(format, |d| OrderEvent::Decision(Box::new(d))),
    )
    .add_source(
        RESERVED,
        &[names.name(topics::INVENTORY_RESERVED).as_str()],
        Utf8,
        mapped(format, |r| OrderEvent::Reserved(Box::new(r))),
    )
    .add_source(
        RELEASED,
        &[names.name(topics::INVENTORY_RELEASED).as_str()],
        Utf8,
        mapped(format, |r| OrderEvent::Released(Box::new(r))),
    )
    .add_processor(
        ORDER_AUDITOR,
        move || OrderAuditor {
            settings,
            view: order_view.clone(),
            metrics: order_metrics.clone(),
        },
        &[DECISIONS, RESERVED, RELEASED],
    )
    .add_sink(
        SINK,
        &violations,
        Utf8,
        format.serde::<AuditViolation>(),
        &[ORDER_AUDITOR],
    )
    .add_state_store(ORDERS_STORE, StoreKind::KeyValue, &[ORDER_AUDITOR])
    .add_state_store(DUE_STORE, StoreKind::Timer, &[ORDER_AUDITOR])
    .add_processor(BY_SKU, || BySku, &[RESERVED])
    .add_repartition::<String, InventoryReserved, _, _>(
        STOCK_REPARTITION,
        Utf8,
        format.serde::<InventoryReserved>(),
        &[BY_SKU],
    )
    .add_processor(STOCK_IN, || StockIn, &[STOCK_REPARTITION])
    .add_source(
        ADJUSTED,
        &[names.name(topics::INVENTORY_ADJUSTED).as_str()],
        Utf8,
        mapped(format, |a| StockEvent::Adjusted(Box::new(a))),
    )
    .add_processor(
        STOCK_AUDITOR,
        move || StockAuditor {
            rules: settings.rules,
            view: view.clone(),
            metrics: metrics.clone(),
        },
        &[STOCK_IN, ADJUSTED],
    )
    .add_sink(
        STOCK_SINK,
        &violations,
        Utf8,
        format.serde::<AuditViolation>(),
        &[STOCK_AUDITOR],
    )
    .add_state_store(STOCK_STORE, StoreKind::KeyValue, &[STOCK_AUDITOR]);
    b.build()
}

/// Re-keys inventory's answers by SKU for the stock sub-topology.
#[derive(Debug)]
struct BySku;

impl Processor for BySku {
    type Key = String;
    type Value = OrderEvent;

    fn process(
        &mut self,
        ctx: &mut Context<'_>,
        record: Record<String, OrderEvent>,
    ) -> Result<(), ProcessError> {
        if let OrderEvent::Reserved(r) = &record.value {
            let (sku, value) = (r.sku.clone(), (**r).clone());
            ctx.forward(record.with(sku, value));
        }
        Ok(())
    }
}

/// The re-keyed answers as [`StockEvent`]s.
#[derive(Debug)]
struct StockIn;

impl Processor for StockIn {
    type Key = String;
    type Value = InventoryReserved;

    fn process(
        &mut self,
        ctx: &mut Context<'_>,
        record: Record<String, InventoryReserved>,
    ) -> Result<(), ProcessError> {
        let value = StockEvent::Reserved(Box::new(record.value.clone()));
        let key = record.key.clone();
        ctx.forward(record.with(key, value));
        Ok(())
    }
}

fn state_code(state: AuditViolationState) -> &'static str {
    match state {
        AuditViolationState::Open => "OPEN",
        AuditViolationState::Resolved => "RESOLVED",
        AuditViolationState::Allowed => "ALLOWED",
    }
}

/// The `audit.violations.v1` record of `v` in `state`.
pub fn report(
    v: &Violation,
    state: AuditViolationState,
    at: i64,
    resolved_at: Option<i64>,
    causation: &str,
) -> AuditViolation {
    // An allowed oversell is one per (SKU, order): its id does not depend on the clock.
    let instance = match (state, &v.order_id) {
        (AuditViolationState::Allowed, Some(order)) => order.clone(),
        _ => v.opened_at.to_string(),
    };
    AuditViolation {
        event_id: format!(
            "{}/{}/{instance}/{}",
            v.invariant.code(),
            v.subject_id,
            state_code(state)
        ),
        subject_id: v.subject_id.clone(),
        occurred_at: at,
        causation_id: causation.to_owned(),
        correlation_id: v.order_id.clone().unwrap_or_else(|| v.subject_id.clone()),
        invariant: v.invariant,
        state,
        opened_at: v.opened_at,
        resolved_at,
        order_id: v.order_id.clone(),
        sku: v.sku.clone(),
        detail: v.detail.clone(),
    }
}

/// Forwards the outputs' reports to `sink`, counts them, and returns what is asked of the
/// subject's entry and timer, if anything ([`Output::Arm`], `Disarm`, `Forget` or `Late`).
fn emit(
    ctx: &mut Context<'_>,
    sink: &str,
    metrics: &AuditMetrics,
    subject: &str,
    outputs: Vec<Output>,
    causation: &str,
) -> Result<Option<Output>, ProcessError> {
    let wall = ctx.wall_clock_time();
    let mut timer = None;
    for output in outputs {
        let rec = match output {
            Output::Opened(v) => {
                metrics
                    .opened
                    .with_label_values(&[v.invariant.code()])
                    .inc();
                tracing::warn!(subject, invariant = v.invariant.code(), detail = %v.detail, "invariant violated");
                report(&v, AuditViolationState::Open, wall, None, causation)
            }
            Output::Resolved {
                violation,
                resolved_at,
            } => {
                metrics
                    .resolved
                    .with_label_values(&[violation.invariant.code()])
                    .inc();
                report(
                    &violation,
                    AuditViolationState::Resolved,
                    resolved_at,
                    Some(resolved_at),
                    causation,
                )
            }
            Output::Allowed(v) => {
                metrics.oversells_allowed.inc();
                tracing::info!(subject, detail = %v.detail, "oversell allowed by configuration");
                report(&v, AuditViolationState::Allowed, wall, None, causation)
            }
            control @ (Output::Arm(_) | Output::Disarm | Output::Forget | Output::Late) => {
                timer = Some(control);
                continue;
            }
        };
        ctx.forward_to(sink, Record::new(subject.to_owned(), rec, wall))?;
    }
    Ok(timer)
}

fn load<T: Stored>(bytes: Option<Vec<u8>>, what: &str) -> Result<T, ProcessError> {
    match bytes {
        Some(bytes) => T::decode(&bytes).map_err(|e| {
            ProcessError::Fatal(format!("audit state of {what:?} is unreadable: {e}"))
        }),
        None => Ok(T::default()),
    }
}

/// Runs [`decide`] for every decision and inventory answer of its task, and for due timers.
#[derive(Debug)]
pub struct OrderAuditor {
    settings: AuditSettings,
    view: AuditView,
    metrics: AuditMetrics,
}

fn status(s: OrderDecisionStatus) -> OrderStatus {
    match s {
        OrderDecisionStatus::Pending => OrderStatus::Pending,
        OrderDecisionStatus::Confirmed => OrderStatus::Confirmed,
        OrderDecisionStatus::Cancelled => OrderStatus::Cancelled,
        OrderDecisionStatus::Rejected => OrderStatus::Rejected,
    }
}

/// The [`OrderInput`] of an event, and its id (the causation of a verdict).
pub fn order_input(event: OrderEvent) -> (OrderInput, String) {
    match event {
        OrderEvent::Decision(d) => (
            OrderInput::Decision {
                sequence: d.sequence,
                status: status(d.status),
                skus: d.lines.iter().map(|l| l.sku.clone()).collect(),
                at: d.decided_at,
            },
            d.decision_id,
        ),
        OrderEvent::Reserved(r) => (
            OrderInput::Inventory {
                sku: r.sku,
                fact: HoldFact::from_status(r.status),
                quantity: i64::from(r.quantity),
                at: r.occurred_at,
            },
            r.event_id,
        ),
        OrderEvent::Released(r) => (
            OrderInput::Inventory {
                sku: r.sku,
                fact: HoldFact::Free,
                quantity: i64::from(r.quantity),
                at: r.occurred_at,
            },
            r.event_id,
        ),
    }
}

impl Processor for OrderAuditor {
    type Key = String;
    type Value = OrderEvent;

    fn init(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        ctx.schedule(
            "audit-due",
            self.settings.check_interval,
            PunctuationType::WallClock,
        );
        let mut open = std::collections::BTreeMap::new();
        for entry in ctx.kv(ORDERS_STORE)?.iter()? {
            let (key, bytes) = entry?;
            let key = String::from_utf8_lossy(&key).into_owned();
            let state: OrderAudit = load(Some(bytes.to_vec()), &key)?;
            if !state.open.is_empty() {
                open.insert(key, state.open.into_values().collect());
            }
        }
        self.view.load_task(ctx.task_id(), open);
        Ok(())
    }

    fn process(
        &mut self,
        ctx: &mut Context<'_>,
        record: Record<String, OrderEvent>,
    ) -> Result<(), ProcessError> {
        let (input, causation) = order_input(record.value);
        self.apply(ctx, &record.key, input, &causation)
    }

    fn punctuate(
        &mut self,
        ctx: &mut Context<'_>,
        punctuation: &Punctuation,
    ) -> Result<(), ProcessError> {
        DUE.fire_due(ctx, punctuation.timestamp, |ctx, key, _| {
            let order_id = String::from_utf8_lossy(key).into_owned();
            self.apply(ctx, &order_id, OrderInput::Due, "grace-timer")
        })?;
        Ok(())
    }

    fn close(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        self.view.drop_task(ctx.task_id());
        Ok(())
    }
}

impl OrderAuditor {
    fn apply(
        &self,
        ctx: &mut Context<'_>,
        order_id: &str,
        input: OrderInput,
        causation: &str,
    ) -> Result<(), ProcessError> {
        let before: OrderAudit = load(ctx.kv(ORDERS_STORE)?.get(order_id.as_bytes())?, order_id)?;
        let now = Now {
            wall_ms: ctx.wall_clock_time(),
            stream_ms: ctx.stream_time(),
        };
        let (state, outputs) = decide(before.clone(), order_id, input, now, &self.settings.rules);
        match emit(ctx, SINK, &self.metrics, order_id, outputs, causation)? {
            Some(Output::Arm(at)) => DUE.schedule(ctx, order_id.as_bytes(), at)?,
            Some(Output::Disarm) => {
                DUE.cancel(ctx, order_id.as_bytes())?;
            }
            Some(Output::Forget) => {
                DUE.cancel(ctx, order_id.as_bytes())?;
                ctx.kv(ORDERS_STORE)?.delete(order_id.as_bytes().to_vec());
                self.view.set_open(ctx.task_id(), order_id, Vec::new());
                self.metrics.retired.inc();
                return Ok(());
            }
            Some(Output::Late) => {
                self.metrics.late.inc();
                tracing::debug!(order_id, causation, "input for a retired order skipped");
                return Ok(());
            }
            _ => {}
        }
        if state != before {
            self.view.set_open(
                ctx.task_id(),
                order_id,
                state.open.values().cloned().collect(),
            );
            ctx.kv(ORDERS_STORE)?
                .put(order_id.as_bytes().to_vec(), state.encode());
        }
        Ok(())
    }
}

/// Runs [`decide_stock`] for every stock figure of its SKUs.
#[derive(Debug)]
pub struct StockAuditor {
    rules: Rules,
    view: AuditView,
    metrics: AuditMetrics,
}

impl Processor for StockAuditor {
    type Key = String;
    type Value = StockEvent;

    fn init(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let mut open = std::collections::BTreeMap::new();
        for entry in ctx.kv(STOCK_STORE)?.iter()? {
            let (key, bytes) = entry?;
            let key = String::from_utf8_lossy(&key).into_owned();
            let state: StockAudit = load(Some(bytes.to_vec()), &key)?;
            if let Some(v) = state.open {
                open.insert(key, vec![v]);
            }
        }
        self.view.load_task(ctx.task_id(), open);
        Ok(())
    }

    fn process(
        &mut self,
        ctx: &mut Context<'_>,
        record: Record<String, StockEvent>,
    ) -> Result<(), ProcessError> {
        let sku = record.key.clone();
        let (input, causation) = match record.value {
            StockEvent::Reserved(r) => (
                StockInput::Reserved {
                    order_id: r.order_id,
                    status: r.status,
                    available: i64::from(r.available),
                },
                r.event_id,
            ),
            StockEvent::Adjusted(a) => (
                StockInput::Adjusted {
                    on_hand: i64::from(a.on_hand),
                },
                a.event_id,
            ),
        };
        let before: StockAudit = load(ctx.kv(STOCK_STORE)?.get(sku.as_bytes())?, &sku)?;
        let now = ctx.wall_clock_time();
        let (state, outputs) = decide_stock(before.clone(), &sku, input, now, &self.rules);
        emit(ctx, STOCK_SINK, &self.metrics, &sku, outputs, &causation)?;
        if state != before {
            self.view
                .set_open(ctx.task_id(), &sku, state.open.iter().cloned().collect());
            ctx.kv(STOCK_STORE)?
                .put(sku.as_bytes().to_vec(), state.encode());
        }
        Ok(())
    }

    fn close(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        self.view.drop_task(ctx.task_id());
        Ok(())
    }
}
