//! The reconciliation application (`<application_id>-reconciliation`), keyed by order id:
//!
//! ```text
//! order.decisions.v1                 (Avro OrderDecision, key order id) ─▶ decisions ─┐
//! <server>.public.payments           (Debezium envelope Avro, key order id) ─▶ payments ─┼▶ reconciler ─▶ reconciliation.mismatches.v1
//! <server>.public.keel_cdc_heartbeat (Debezium envelope Avro, key connector) ─▶ heartbeats ┘     (Avro ReconciliationMismatch, key order id)
//! ```
//!
//! The three topics are read by one task per partition and must have the same partition count
//! (`keel run` creates the CDC topics with `[topics].partitions` before registering the
//! connector; the runtime refuses to start otherwise). A CDC value that is not a Debezium
//! envelope of the expected row is dead-lettered by the runtime (`CdcSerde`), with why.
//! Heartbeat rows only move the connector's "seen up to" time; payments rows and decisions go
//! through [`decide`]; a wall-clock punctuator fires the orders' timers (grace periods and
//! retention, `crate::timers`): an entry whose retention is over is deleted with its timer.

use std::time::Duration;

use keel_avro::records::{
    OrderDecision, OrderDecisionStatus, ReconciliationKind, ReconciliationMismatch,
    ReconciliationState,
};
use keel_topology::serde::{Serde, Utf8};
use keel_topology::{
    Context, ProcessError, Processor, Punctuation, PunctuationType, Record, SerdeError, StoreKind,
    Topology, TopologyBuilder,
};

use super::logic::{
    DecisionFacts, Input, Mismatch, MismatchKind, Now, OrderRecon, OrderState, Output, PaymentRow,
    Rules, decide,
};
use super::state::{DUE_STORE, ORDERS_STORE};
use super::view::{ReconciliationMetrics, ReconciliationView};
use crate::cdc::{
    CdcSerde, CdcValues, Change, DecodeError, FromImage, Image, Op, Position, Temporal,
};
use crate::format::{Format, RecordSerde};
use crate::timers::DueTimers;
use crate::topics::{self, Topics};

/// One timer per order: its earliest grace period, or its retention.
const DUE: DueTimers = DueTimers::new(DUE_STORE);

const DECISIONS: &str = "decisions";
const PAYMENTS: &str = "payments";
const HEARTBEATS: &str = "heartbeats";
const PROCESSOR: &str = "reconciler";
const SINK: &str = "mismatches";

/// Where the ledger's CDC arrives and what the processor needs to know.
#[derive(Debug, Clone)]
pub struct LedgerTopics {
    /// `<server>.<schema>.payments`.
    pub payments: String,
    /// `<server>.<schema>.<heartbeat table>`.
    pub heartbeats: String,
    /// The connector's name: the `connector` label of `keel_cdc_lag_seconds`.
    pub connector: String,
}

/// Settings of the reconciler.
#[derive(Debug, Clone, Copy)]
pub struct ReconcilerSettings {
    pub rules: Rules,
    /// How often the grace timers are checked.
    pub check_interval: Duration,
}

/// A `payments` row image.
impl FromImage for PaymentRow {
    fn from_image(image: &Image) -> Result<Self, DecodeError> {
        let required = |column: &str, v: crate::cdc::Field<i64>| {
            v.value().ok_or_else(|| DecodeError::Column {
                column: column.to_owned(),
                problem: "is NULL or unavailable".to_owned(),
            })
        };
        Ok(Self {
            payment_id: image.text("payment_id")?,
            status: image.text("status")?,
            currency: image.text("currency")?,
            psp_reference: image.text("psp_reference")?,
            amount_minor: required("amount_minor", image.i64("amount_minor")?)?,
            captured_minor: required("captured_minor", image.i64("captured_minor")?)?,
            refunded_minor: required("refunded_minor", image.i64("refunded_minor")?)?,
            updated_ms: image
                .timestamp_ms("updated_at", Temporal::ZonedTimestamp)?
                .value(),
        })
    }
}

/// A heartbeat row (`connector`, `beat_at`): only its envelope's source time matters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beat {
    pub connector: Option<String>,
}

impl FromImage for Beat {
    fn from_image(image: &Image) -> Result<Self, DecodeError> {
        Ok(Self {
            connector: image.text("connector")?.value(),
        })
    }
}

/// What the reconciler is handed.
#[derive(Debug, Clone, PartialEq)]
pub enum ReconInput {
    Payment(Box<Change<PaymentRow>>),
    Heartbeat(Change<Beat>),
    Decision(Box<OrderDecision>),
}

/// `order.decisions.v1` values as [`ReconInput::Decision`].
#[derive(Debug, Clone)]
struct DecisionSerde(RecordSerde<OrderDecision>);

impl Serde<ReconInput> for DecisionSerde {
    fn serialize(&self, topic: &str, _: &ReconInput) -> Result<Option<Vec<u8>>, SerdeError> {
        Err(SerdeError(format!(
            "the reconciler never writes decisions (topic {topic})"
        )))
    }

    fn deserialize(&self, topic: &str, bytes: Option<&[u8]>) -> Result<ReconInput, SerdeError> {
        self.0
            .deserialize(topic, bytes)
            .map(|d| ReconInput::Decision(Box::new(d)))
    }
}

/// The reconciliation topology. `view` receives the open mismatches and CDC freshness of this
/// process's tasks; `metrics` counts what is opened and resolved.
pub fn topology(
    format: &Format,
    names: &Topics,
    ledger: &LedgerTopics,
    settings: ReconcilerSettings,
    view: ReconciliationView,
    metrics: ReconciliationMetrics,
) -> keel_topology::Result<Topology> {
    let mut b = TopologyBuilder::new();
    let decisions = names.name(topics::ORDER_DECISIONS);
    let connector = ledger.connector.clone();
    b.add_source(
        DECISIONS,
        &[decisions.as_str()],
        Utf8,
        DecisionSerde(format.serde::<OrderDecision>()),
    )
    .add_source(
        PAYMENTS,
        &[ledger.payments.as_str()],
        Utf8,
        CdcSerde::<PaymentRow, ReconInput>::new(CdcValues::for_format(format), |c| {
            ReconInput::Payment(Box::new(c))
        }),
    )
    .add_source(
        HEARTBEATS,
        &[ledger.heartbeats.as_str()],
        Utf8,
        CdcSerde::<Beat, ReconInput>::new(CdcValues::for_format(format), ReconInput::Heartbeat),
    )
    .add_processor(
        PROCESSOR,
        move || Reconciler {
            settings,
            connector: connector.clone(),
            view: view.clone(),
            metrics: metrics.clone(),
        },
        &[DECISIONS, PAYMENTS, HEARTBEATS],
    )
    .add_sink(
        SINK,
        &names.name(topics::RECONCILIATION_MISMATCHES),
        Utf8,
        format.serde::<ReconciliationMismatch>(),
        &[PROCESSOR],
    )
    .add_state_store(ORDERS_STORE, StoreKind::KeyValue, &[PROCESSOR])
    .add_state_store(DUE_STORE, StoreKind::Timer, &[PROCESSOR]);
    b.build()
}

/// Runs [`decide`] for every decision, payment change and due timer of its task.
#[derive(Debug)]
pub struct Reconciler {
    settings: ReconcilerSettings,
    connector: String,
    view: ReconciliationView,
    metrics: ReconciliationMetrics,
}

fn kind_code(kind: MismatchKind) -> ReconciliationKind {
    match kind {
        MismatchKind::AuthorizedButCancelled => ReconciliationKind::AuthorizedButCancelled,
        MismatchKind::ConfirmedWithoutCapture => ReconciliationKind::ConfirmedWithoutCapture,
        MismatchKind::AmountMismatch => ReconciliationKind::AmountMismatch,
    }
}

fn report(
    m: &Mismatch,
    state: ReconciliationState,
    at: i64,
    resolved_at: Option<i64>,
    causation: &str,
) -> ReconciliationMismatch {
    let verdict = match state {
        ReconciliationState::Open => "OPEN",
        ReconciliationState::Resolved => "RESOLVED",
    };
    ReconciliationMismatch {
        event_id: format!("{}/{}/{}/{verdict}", m.order_id, m.kind.code(), m.opened_at),
        order_id: m.order_id.clone(),
        occurred_at: at,
        causation_id: causation.to_owned(),
        correlation_id: m.order_id.clone(),
        kind: kind_code(m.kind),
        state,
        opened_at: m.opened_at,
        resolved_at,
        detail: m.detail.clone(),
        payment_id: m.payment_id.clone(),
        order_status: m.order_status.clone(),
        payment_status: m.payment_status.clone(),
        order_total_minor: m.order_total_minor,
        captured_minor: m.captured_minor,
        currency: m.currency.clone(),
    }
}

fn facts(d: &OrderDecision) -> DecisionFacts {
    DecisionFacts {
        decision_id: d.decision_id.clone(),
        sequence: d.sequence,
        status: match d.status {
            OrderDecisionStatus::Pending => OrderState::Pending,
            OrderDecisionStatus::Confirmed => OrderState::Confirmed,
            OrderDecisionStatus::Cancelled => OrderState::Cancelled,
            OrderDecisionStatus::Rejected => OrderState::Rejected,
        },
        total_minor: d.total.amount_minor,
        currency: d.total.currency.clone(),
        decided_at: d.decided_at,
    }
}

fn position_text(p: Option<&Position>) -> String {
    match p {
        Some(Position::Lsn(lsn)) => format!("cdc:lsn:{lsn}"),
        Some(Position::Binlog { file, pos, row }) => format!("cdc:binlog:{file}:{pos}:{row}"),
        None => "cdc".to_owned(),
    }
}

impl Processor for Reconciler {
    type Key = String;
    type Value = ReconInput;

    fn init(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        ctx.schedule(
            "reconciliation-due",
            self.settings.check_interval,
            PunctuationType::WallClock,
        );
        let mut open = std::collections::BTreeMap::new();
        for entry in ctx.kv(ORDERS_STORE)?.iter()? {
            let (key, bytes) = entry?;
            let state = OrderRecon::decode(&bytes).map_err(|e| {
                ProcessError::Fatal(format!("reconciliation state is unreadable: {e}"))
            })?;
            if !state.open.is_empty() {
                open.insert(
                    String::from_utf8_lossy(&key).into_owned(),
                    state.open.into_values().collect(),
                );
            }
        }
        self.view.load_partition(ctx.task_id().partition, open);
        Ok(())
    }

    fn process(
        &mut self,
        ctx: &mut Context<'_>,
        record: Record<String, ReconInput>,
    ) -> Result<(), ProcessError> {
        let now = ctx.wall_clock_time();
        match record.value {
            ReconInput::Heartbeat(Change::Row(change)) => {
                self.view.observe(&self.connector, change.source.ts_ms, now);
                Ok(())
            }
            ReconInput::Heartbeat(Change::Tombstone) => Ok(()),
            ReconInput::Payment(change) => {
                let Change::Row(change) = *change else {
                    return Ok(());
                };
                self.view.observe(&self.connector, change.source.ts_ms, now);
                let causation = position_text(change.source.position.as_ref());
                let source_ms = change.source.ts_ms;
                let input = match (change.op, change.after) {
                    (Op::Delete, _) => Input::PaymentDeleted {
                        position: change.source.position,
                        source_ms,
                    },
                    (op, Some(row)) => Input::Payment {
                        op,
                        row,
                        position: change.source.position,
                        source_ms,
                    },
                    (op, None) => {
                        return Err(ProcessError::BadInput(format!(
                            "payments change {op:?} without an after image"
                        )));
                    }
                };
                self.apply(ctx, &record.key, input, &causation)
            }
            ReconInput::Decision(d) => {
                let causation = d.decision_id.clone();
                self.apply(ctx, &record.key, Input::Decision(facts(&d)), &causation)
            }
        }
    }

    fn punctuate(
        &mut self,
        ctx: &mut Context<'_>,
        punctuation: &Punctuation,
    ) -> Result<(), ProcessError> {
        DUE.fire_due(ctx, punctuation.timestamp, |ctx, key, _| {
            let order_id = String::from_utf8_lossy(key).into_owned();
            self.apply(ctx, &order_id, Input::Due, "grace-timer")
        })?;
        Ok(())
    }

    fn close(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        self.view.drop_partition(ctx.task_id().partition);
        Ok(())
    }
}

impl Reconciler {
    fn apply(
        &self,
        ctx: &mut Context<'_>,
        order_id: &str,
        input: Input,
        causation: &str,
    ) -> Result<(), ProcessError> {
        let wall = ctx.wall_clock_time();
        let state = match ctx.kv(ORDERS_STORE)?.get(order_id.as_bytes())? {
            Some(bytes) => OrderRecon::decode(&bytes).map_err(|e| {
                ProcessError::Fatal(format!(
                    "reconciliation state of {order_id:?} is unreadable: {e}"
                ))
            })?,
            None => OrderRecon::default(),
        };
        let now = Now {
            wall_ms: wall,
            ledger_seen_ms: self.view.seen(&self.connector).map(|s| s.source_ts_ms),
            stream_ms: ctx.stream_time(),
        };
        let (state, outputs) = decide(state, order_id, input, &now, &self.settings.rules);
        for output in outputs {
            match output {
                Output::Duplicate => {
                    self.metrics.duplicates.inc();
                    return Ok(());
                }
                Output::Late => {
                    self.metrics.late.inc();
                    tracing::debug!(order_id, causation, "input for a retired order skipped");
                    return Ok(());
                }
                Output::Forget => {
                    DUE.cancel(ctx, order_id.as_bytes())?;
                    ctx.kv(ORDERS_STORE)?.delete(order_id.as_bytes().to_vec());
                    self.view
                        .set_open(ctx.task_id().partition, order_id, Vec::new());
                    self.metrics.retired.inc();
                    return Ok(());
                }
                Output::Opened(m) => {
                    self.metrics
                        .opened
                        .with_label_values(&[m.kind.code()])
                        .inc();
                    tracing::warn!(order_id, kind = m.kind.code(), detail = %m.detail, "reconciliation mismatch opened");
                    let rec = report(&m, ReconciliationState::Open, wall, None, causation);
                    ctx.forward_to(SINK, Record::new(order_id.to_owned(), rec, wall))?;
                }
                Output::Resolved {
                    mismatch,
                    resolved_at,
                } => {
                    self.metrics
                        .resolved
                        .with_label_values(&[mismatch.kind.code()])
                        .inc();
                    let rec = report(
                        &mismatch,
                        ReconciliationState::Resolved,
                        resolved_at,
                        Some(resolved_at),
                        causation,
                    );
                    ctx.forward_to(SINK, Record::new(order_id.to_owned(), rec, wall))?;
                }
                Output::Arm(at) => DUE.schedule(ctx, order_id.as_bytes(), at)?,
                Output::Disarm => {
                    DUE.cancel(ctx, order_id.as_bytes())?;
                }
            }
        }
        self.view.set_open(
            ctx.task_id().partition,
            order_id,
            state.open.values().cloned().collect(),
        );
        ctx.kv(ORDERS_STORE)?
            .put(order_id.as_bytes().to_vec(), state.encode());
        Ok(())
    }
}
