//! Inventory on the runtime: the source over `inventory.commands.v1` (key: SKU), the
//! [`InventoryProcessor`] that loads the SKU's stock and the order's hold, applies [`decide`] and
//! writes back, a wall-clock punctuator that expires lapsed holds, and sinks for
//! `inventory.reserved.v1` / `inventory.released.v1` (key: order id, so replies land in the
//! saga's partition) and `inventory.adjusted.v1` (key: SKU). The order coordinator
//! (`coordinated.rs`) is a second sub-topology of the same topology; its confirms (command ids
//! starting with [`COMMAND_PREFIX`]) are applied as [`Input::ConfirmHeld`].

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use keel_avro::records::{
    InventoryAdjusted, InventoryCommand, InventoryCommandBody, InventoryReleased,
    InventoryReserved, ReservationStatus,
};
use keel_topology::serde::Utf8;
use keel_topology::{
    Context, ProcessError, Processor, Punctuation, PunctuationType, Record, StoreKind, Topology,
    TopologyBuilder,
};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use serde::{Deserialize, Serialize};

use super::coordinator::COMMAND_PREFIX;
use super::hot::HotSkus;
use super::logic::{Effect, Input, OversellPolicy, Rules, check_command, decide};
use super::state::{
    EXPIRY_STORE, HOLDS_STORE, Hold, SEEN_STORE, STOCK_STORE, SkuStock, hold_key, split_hold_key,
    to_json,
};
use crate::command_key::check_record_partition;
use crate::format::Format;
use crate::topics::{self, Topics};

/// The `[inventory]` section of Keel's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InventoryConfig {
    /// How long an unconfirmed hold lives (ms) when its reserve names no TTL; 10 minutes by
    /// default (the seed).
    pub hold_ttl_ms: u64,
    /// The shortest TTL (ms) a reserve may ask for (`holdTtlMs`, `ReserveStock.hold_ttl_ms`);
    /// 10 s by default. The API answers 422 below it; a command on Kafka is clamped up to it.
    pub min_hold_ttl_ms: u64,
    /// The longest TTL (ms) a reserve may ask for; 1 hour by default. The API answers 422
    /// above it; a command on Kafka is clamped down to it.
    pub max_hold_ttl_ms: u64,
    /// How many of the hottest SKUs (by reservations) get an `inventory_stock_available{sku}`
    /// series; 10 by default, 0 for none.
    pub hot_skus: usize,
    /// How often lapsed holds are looked for (ms of wall-clock time).
    pub expiry_check_interval_ms: u64,
    pub oversell: OversellPolicy,
}

impl Default for InventoryConfig {
    fn default() -> Self {
        Self {
            hold_ttl_ms: 600_000,
            min_hold_ttl_ms: 10_000,
            max_hold_ttl_ms: 3_600_000,
            hot_skus: 10,
            expiry_check_interval_ms: 1_000,
            oversell: OversellPolicy::Allow,
        }
    }
}

/// Inventory's counters, registered once per process.
#[derive(Debug, Clone)]
pub struct InventoryMetrics {
    /// `inventory_oversell_total`: sales of lapsed holds whose stock was gone.
    pub oversell: IntCounter,
    /// `inventory_holds_total{outcome}`: held, shortage, released, expired, sold, sale_refused.
    pub holds: IntCounterVec,
    /// `inventory_hold_ttl_ms`: the running process's `[inventory].hold_ttl_ms`, so a client
    /// (the oversell scenario) can check the TTL it depends on through `GET /metrics`.
    pub hold_ttl_ms: IntGauge,
    /// `inventory_oversell_policy{policy}`: 1 for the running `[inventory].oversell`.
    pub oversell_policy: IntGaugeVec,
    /// `inventory_holds_active{task}`: holds taken and not yet sold, released or expired (their
    /// expiry timers), per task; refreshed by the expiry punctuator at most every 5 s.
    pub active: IntGaugeVec,
    /// `inventory_reservations_total`: reserve commands answered (held or short; duplicates
    /// not counted): its rate is the reservations per second.
    pub reservations: IntCounter,
    /// `inventory_hold_ttl_clamped_total`: reserve commands whose own TTL lay outside
    /// `[inventory].min_hold_ttl_ms..=max_hold_ttl_ms` and was clamped.
    pub ttl_clamped: IntCounter,
    /// `inventory_stock_available{sku}`: units available, for the `[inventory].hot_skus`
    /// SKUs with the most reservations only (bounded cardinality).
    pub stock_available: IntGaugeVec,
    /// Which SKUs `stock_available` shows (shared by the process's inventory tasks).
    pub hot: Arc<Mutex<HotSkus>>,
    /// `inventory_coordinator_total{action}`: the order coordinator's commands (`release`,
    /// `confirm`) and all-or-nothing reservations found short (`failed`).
    pub coordinator: IntCounterVec,
}

impl InventoryMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let oversell = IntCounter::new(
            "inventory_oversell_total",
            "Payments confirmed for a lapsed hold whose stock had gone to another order",
        )?;
        let holds = IntCounterVec::new(
            Opts::new(
                "inventory_holds_total",
                "Reserve outcomes and hold endings, by outcome",
            ),
            &["outcome"],
        )?;
        let active = IntGaugeVec::new(
            Opts::new(
                "inventory_holds_active",
                "Holds taken and not yet sold, released or expired, per task",
            ),
            &["task"],
        )?;
        let hold_ttl_ms = IntGauge::new(
            "inventory_hold_ttl_ms",
            "The configured hold TTL ([inventory].hold_ttl_ms)",
        )?;
        let oversell_policy = IntGaugeVec::new(
            Opts::new(
                "inventory_oversell_policy",
                "1 for the configured [inventory].oversell policy (allow or prevent)",
            ),
            &["policy"],
        )?;
        registry.register(Box::new(oversell.clone()))?;
        registry.register(Box::new(holds.clone()))?;
        registry.register(Box::new(hold_ttl_ms.clone()))?;
        registry.register(Box::new(oversell_policy.clone()))?;
        registry.register(Box::new(active.clone()))?;
        let reservations = IntCounter::new(
            "inventory_reservations_total",
            "Reserve commands answered, held or short (duplicates not counted)",
        )?;
        let ttl_clamped = IntCounter::new(
            "inventory_hold_ttl_clamped_total",
            "Reserve commands whose own hold TTL was outside the configured bounds and clamped",
        )?;
        let stock_available = IntGaugeVec::new(
            Opts::new(
                "inventory_stock_available",
                "Units available, for the hottest SKUs by reservations ([inventory].hot_skus)",
            ),
            &["sku"],
        )?;
        registry.register(Box::new(reservations.clone()))?;
        registry.register(Box::new(ttl_clamped.clone()))?;
        registry.register(Box::new(stock_available.clone()))?;
        let coordinator = IntCounterVec::new(
            Opts::new(
                "inventory_coordinator_total",
                "The order coordinator's release and confirm commands, and all-or-nothing \
                 reservations found short (failed)",
            ),
            &["action"],
        )?;
        registry.register(Box::new(coordinator.clone()))?;
        Ok(Self {
            oversell,
            holds,
            active,
            hold_ttl_ms,
            oversell_policy,
            reservations,
            ttl_clamped,
            stock_available,
            hot: Arc::new(Mutex::new(HotSkus::new(10))),
            coordinator,
        })
    }
}

const SOURCE: &str = "inventory-commands";
const PROCESSOR: &str = "inventory";
const TO_RESERVED: &str = "inventory-to-reserved";
const TO_RELEASED: &str = "inventory-to-released";
const TO_ADJUSTED: &str = "inventory-to-adjusted";

/// Inventory's topology: the per-SKU processor (keyed by SKU) and, as a second sub-topology,
/// the order coordinator (keyed by order id, `coordinated.rs`), which keeps an order's holds
/// for 2 × `max_hold_ttl_ms` after its last change.
pub fn topology(
    format: &Format,
    names: &Topics,
    config: &InventoryConfig,
    metrics: InventoryMetrics,
) -> keel_topology::Result<Topology> {
    let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let rules = Rules {
        hold_ttl_ms: ms(config.hold_ttl_ms),
        min_hold_ttl_ms: ms(config.min_hold_ttl_ms),
        max_hold_ttl_ms: ms(config.max_hold_ttl_ms),
        oversell: config.oversell,
    };
    let interval = Duration::from_millis(config.expiry_check_interval_ms.max(1));
    metrics.hold_ttl_ms.set(rules.hold_ttl_ms);
    *metrics.hot.lock().unwrap_or_else(PoisonError::into_inner) = HotSkus::new(config.hot_skus);
    for policy in [OversellPolicy::Allow, OversellPolicy::Prevent] {
        metrics
            .oversell_policy
            .with_label_values(&[policy.label()])
            .set(i64::from(policy == config.oversell));
    }
    let coordinator = metrics.coordinator.clone();
    let mut b = TopologyBuilder::new();
    b.add_source(
        SOURCE,
        &[names.name(topics::INVENTORY_COMMANDS).as_str()],
        Utf8,
        format.serde::<InventoryCommand>(),
    )
    .add_processor(
        PROCESSOR,
        move || InventoryProcessor {
            rules,
            interval,
            metrics: metrics.clone(),
            active_counted_at: None,
            held_version: std::cell::Cell::new(0),
        },
        &[SOURCE],
    )
    .add_sink(
        TO_RESERVED,
        &names.name(topics::INVENTORY_RESERVED),
        Utf8,
        format.serde::<InventoryReserved>(),
        &[PROCESSOR],
    )
    .add_sink(
        TO_RELEASED,
        &names.name(topics::INVENTORY_RELEASED),
        Utf8,
        format.serde::<InventoryReleased>(),
        &[PROCESSOR],
    )
    .add_sink(
        TO_ADJUSTED,
        &names.name(topics::INVENTORY_ADJUSTED),
        Utf8,
        format.serde::<InventoryAdjusted>(),
        &[PROCESSOR],
    )
    .add_state_store(STOCK_STORE, StoreKind::KeyValue, &[PROCESSOR])
    .add_state_store(HOLDS_STORE, StoreKind::KeyValue, &[PROCESSOR])
    .add_state_store(SEEN_STORE, StoreKind::KeyValue, &[PROCESSOR])
    .add_state_store(EXPIRY_STORE, StoreKind::Timer, &[PROCESSOR]);
    super::coordinated::add_to(
        &mut b,
        format,
        names,
        rules.max_hold_ttl_ms.saturating_mul(2),
        interval,
        coordinator,
    );
    b.build()
}

/// What caused an event: for ids and tracing.
struct Cause {
    /// The command id, or `expiry:<sku>/<order>` for a timer.
    id: String,
    /// The order id for saga commands; the command id for an operator's adjustment.
    correlation_id: String,
}

/// Applies inventory commands and expires lapsed holds, one SKU at a time.
#[derive(Debug)]
pub struct InventoryProcessor {
    rules: Rules,
    interval: Duration,
    metrics: InventoryMetrics,
    /// When `inventory_holds_active` was last counted (wall clock, ms).
    active_counted_at: Option<i64>,
    /// The last `held_version` given (µs; see [`InventoryProcessor::next_held_version`]).
    held_version: std::cell::Cell<i64>,
}

/// The SKU's held figures after a decision, carried on `inventory.reserved.v1` and
/// `inventory.released.v1` so the Cassandra mirror stores them instead of counting hold rows.
#[derive(Debug, Clone, Copy)]
struct HeldAfter<'a> {
    stock: &'a SkuStock,
    version: i64,
}

impl HeldAfter<'_> {
    fn total(&self) -> Option<i32> {
        Some(to_i32(self.stock.total().held))
    }

    fn warehouse(&self, warehouse: Option<&str>) -> Option<i32> {
        warehouse.map(|w| to_i32(self.stock.get(w).held))
    }
}

/// How often the punctuator counts the active holds (a scan of the expiry timers).
const ACTIVE_COUNT_EVERY_MS: i64 = 5_000;

impl Processor for InventoryProcessor {
    type Key = String;
    type Value = InventoryCommand;

    fn init(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        ctx.schedule("hold-expiry", self.interval, PunctuationType::WallClock);
        Ok(())
    }

    fn process(
        &mut self,
        ctx: &mut Context<'_>,
        record: Record<String, InventoryCommand>,
    ) -> Result<(), ProcessError> {
        let command = record.value;
        check_command(&record.key, &command)
            .map_err(|refusal| ProcessError::BadInput(refusal.to_string()))?;
        // On the SKU's murmur2 partition, or another task would keep a second stock of it.
        check_record_partition(&record.key, ctx.metadata())
            .map_err(|problem| ProcessError::BadInput(problem.to_string()))?;
        let sku = command.sku.clone();
        let cause = Cause {
            id: command.command_id.clone(),
            correlation_id: command.correlation_id.clone(),
        };
        let input = match command.command {
            InventoryCommandBody::Reserve(r) => {
                if let Some(asked) = r.hold_ttl_ms
                    && self.rules.ttl(Some(asked)) != asked
                {
                    self.metrics.ttl_clamped.inc();
                    tracing::warn!(
                        sku,
                        order_id = r.order_id,
                        asked,
                        granted = self.rules.ttl(Some(asked)),
                        "a reserve asked for a hold TTL outside the configured bounds: clamped"
                    );
                }
                Input::Reserve {
                    order_id: r.order_id,
                    quantity: i64::from(r.quantity),
                    warehouse: r.warehouse,
                    hold_ttl_ms: r.hold_ttl_ms,
                }
            }
            InventoryCommandBody::Release(r) => Input::Release {
                order_id: r.order_id,
                reason: r.reason,
            },
            // The order coordinator's confirm: a live hold only (see `coordinator.rs`).
            InventoryCommandBody::Confirm(c) if command.command_id.starts_with(COMMAND_PREFIX) => {
                Input::ConfirmHeld {
                    order_id: c.order_id,
                }
            }
            InventoryCommandBody::Confirm(c) => Input::Confirm {
                order_id: c.order_id,
            },
            InventoryCommandBody::Adjust(a) => {
                let seen = hold_key(&sku, &command.command_id);
                let seen_store = ctx.kv(SEEN_STORE)?;
                if seen_store.get(&seen)?.is_some() {
                    return Ok(());
                }
                seen_store.put(seen, b"1".to_vec());
                Input::Adjust {
                    delta: i64::from(a.delta),
                    reason: a.reason,
                    warehouse: a.warehouse,
                }
            }
        };
        self.apply(ctx, &sku, input, &cause)
    }

    fn punctuate(
        &mut self,
        ctx: &mut Context<'_>,
        punctuation: &Punctuation,
    ) -> Result<(), ProcessError> {
        let due = ctx
            .timers(EXPIRY_STORE)?
            .due_at_most(punctuation.timestamp, 1_000)?;
        for timer in due {
            let Some((sku, order_id)) = split_hold_key(&timer.key) else {
                return Err(ProcessError::Fatal(format!(
                    "expiry timer with a malformed key {:?}",
                    timer.key
                )));
            };
            let cause = Cause {
                id: format!("expiry:{sku}/{order_id}"),
                correlation_id: order_id.clone(),
            };
            self.apply(ctx, &sku, Input::Expire { order_id }, &cause)?;
        }
        let now = ctx.wall_clock_time();
        if self
            .active_counted_at
            .is_none_or(|at| now - at >= ACTIVE_COUNT_EVERY_MS)
        {
            self.active_counted_at = Some(now);
            let active = ctx.timers(EXPIRY_STORE)?.prefix(b"")?.len();
            self.metrics
                .active
                .with_label_values(&[&ctx.task_id().to_string()])
                .set(i64::try_from(active).unwrap_or(i64::MAX));
        }
        Ok(())
    }

    fn close(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        // The task moves away or stops: its holds are no longer this process's to show.
        let task = ctx.task_id().to_string();
        let _ = self.metrics.active.remove_label_values(&[&task]);
        let gone = self.hot().forget_task(&task);
        for sku in gone {
            let _ = self.metrics.stock_available.remove_label_values(&[&sku]);
        }
        Ok(())
    }
}

fn read_json<T: serde::de::DeserializeOwned>(
    store: &str,
    key: &[u8],
    bytes: Option<Vec<u8>>,
) -> Result<Option<T>, ProcessError> {
    bytes
        .map(|b| serde_json::from_slice(&b))
        .transpose()
        .map_err(|e| {
            ProcessError::Fatal(format!(
                "{store} holds an unreadable value at {:?}: {e}",
                String::from_utf8_lossy(key)
            ))
        })
}

fn to_i32(n: i64) -> i32 {
    i32::try_from(n).unwrap_or(if n < 0 { i32::MIN } else { i32::MAX })
}

impl InventoryProcessor {
    /// A version for the held figures of one decision: the wall clock `now_ms` in µs, or one
    /// more than the last version when the clock has not moved past it (several decisions in
    /// one millisecond), so one task's versions strictly increase. A SKU is owned by one task;
    /// after a restart or a move the clock has moved on by more than the few µs a burst adds.
    fn next_held_version(&self, now_ms: i64) -> i64 {
        let next = now_ms
            .saturating_mul(1_000)
            .max(self.held_version.get().saturating_add(1));
        self.held_version.set(next);
        next
    }

    fn hot(&self) -> std::sync::MutexGuard<'_, HotSkus> {
        self.metrics
            .hot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a reservation towards the hottest SKUs and keeps `inventory_stock_available` of
    /// the shown ones current (a SKU that becomes one of them shows at its next change).
    fn show_available(
        &self,
        ctx: &Context<'_>,
        sku: &str,
        before: &SkuStock,
        outcome: &super::logic::Outcome,
    ) {
        let reserved = outcome.effects.iter().any(|e| {
            matches!(
                e,
                Effect::Reserved {
                    status: ReservationStatus::Held | ReservationStatus::Shortage,
                    ..
                }
            )
        });
        if reserved {
            self.metrics.reservations.inc();
        }
        let shown = {
            let mut hot = self.hot();
            if reserved {
                hot.reserved(sku, &ctx.task_id().to_string())
            } else if outcome.stock != *before && hot.is_shown(sku) {
                super::hot::Shown {
                    show: true,
                    hide: Vec::new(),
                }
            } else {
                return;
            }
        };
        for gone in &shown.hide {
            let _ = self.metrics.stock_available.remove_label_values(&[gone]);
        }
        if shown.show {
            self.metrics
                .stock_available
                .with_label_values(&[sku])
                .set(outcome.stock.total().available());
        }
    }

    fn apply(
        &self,
        ctx: &mut Context<'_>,
        sku: &str,
        input: Input,
        cause: &Cause,
    ) -> Result<(), ProcessError> {
        let now = ctx.wall_clock_time();
        let order_id = match &input {
            Input::Reserve { order_id, .. }
            | Input::Release { order_id, .. }
            | Input::Confirm { order_id }
            | Input::ConfirmHeld { order_id }
            | Input::Expire { order_id } => Some(order_id.clone()),
            Input::Adjust { .. } => None,
        };
        let stock_bytes = ctx.kv(STOCK_STORE)?.get(sku.as_bytes())?;
        let stock: SkuStock =
            read_json(STOCK_STORE, sku.as_bytes(), stock_bytes)?.unwrap_or_default();
        let key = order_id.as_deref().map(|o| hold_key(sku, o));
        let hold: Option<Hold> = match &key {
            Some(k) => {
                let bytes = ctx.kv(HOLDS_STORE)?.get(k)?;
                read_json(HOLDS_STORE, k, bytes)?
            }
            None => None,
        };
        let outcome = decide(stock.clone(), hold, input, now, &self.rules)
            .map_err(|refusal| ProcessError::BadInput(format!("{sku}: {refusal}")))?;
        if outcome.stock != stock {
            ctx.kv(STOCK_STORE)?
                .put(sku.as_bytes().to_vec(), to_json(&outcome.stock));
        }
        self.show_available(ctx, sku, &stock, &outcome);
        if let (Some(k), Some(h)) = (&key, &outcome.hold) {
            ctx.kv(HOLDS_STORE)?.put(k.clone(), to_json(h));
        }
        let held = HeldAfter {
            stock: &outcome.stock,
            version: self.next_held_version(now),
        };
        for effect in outcome.effects {
            self.emit(ctx, sku, effect, cause, now, held)?;
        }
        Ok(())
    }

    fn emit(
        &self,
        ctx: &mut Context<'_>,
        sku: &str,
        effect: Effect,
        cause: &Cause,
        now: i64,
        held: HeldAfter<'_>,
    ) -> Result<(), ProcessError> {
        let holds = &self.metrics.holds;
        match effect {
            Effect::Reserved {
                order_id,
                status,
                quantity,
                available,
                expires_at,
                warehouse,
            } => {
                let outcome = match status {
                    keel_avro::records::ReservationStatus::Held => Some("held"),
                    keel_avro::records::ReservationStatus::Shortage => Some("shortage"),
                    keel_avro::records::ReservationStatus::SaleRefused => Some("sale_refused"),
                    // Counted as `sold` with their stock adjustment.
                    keel_avro::records::ReservationStatus::Sold
                    | keel_avro::records::ReservationStatus::Oversold => None,
                };
                if let Some(outcome) = outcome {
                    holds.with_label_values(&[outcome]).inc();
                }
                let event = InventoryReserved {
                    event_id: format!("{}/reserved", cause.id),
                    sku: sku.to_owned(),
                    occurred_at: now,
                    causation_id: cause.id.clone(),
                    correlation_id: cause.correlation_id.clone(),
                    order_id: order_id.clone(),
                    status,
                    quantity: to_i32(quantity),
                    available: to_i32(available),
                    expires_at,
                    held: held.total(),
                    warehouse_held: held.warehouse(warehouse.as_deref()),
                    held_version: Some(held.version),
                    warehouse,
                };
                ctx.forward_to(TO_RESERVED, Record::new(order_id, event, now))?;
            }
            Effect::Released {
                order_id,
                quantity,
                reason,
                warehouse,
            } => {
                let outcome = match reason {
                    keel_avro::records::ReleaseReason::HoldExpired => "expired",
                    _ => "released",
                };
                holds.with_label_values(&[outcome]).inc();
                let event = InventoryReleased {
                    event_id: format!("{}/released", cause.id),
                    sku: sku.to_owned(),
                    occurred_at: now,
                    causation_id: cause.id.clone(),
                    correlation_id: cause.correlation_id.clone(),
                    order_id: order_id.clone(),
                    quantity: to_i32(quantity),
                    reason,
                    held: held.total(),
                    warehouse_held: held.warehouse(Some(&warehouse)),
                    held_version: Some(held.version),
                    warehouse: Some(warehouse),
                };
                ctx.forward_to(TO_RELEASED, Record::new(order_id, event, now))?;
            }
            Effect::Adjusted {
                delta,
                on_hand,
                reason,
                warehouse,
                warehouse_on_hand,
            } => {
                // Only inventory's own sales carry such a reason: `check_command` dead-letters
                // an adjust that does.
                if keel_avro::records::is_sale_reason(&reason) {
                    holds.with_label_values(&["sold"]).inc();
                }
                let event = InventoryAdjusted {
                    event_id: format!("{}/adjusted", cause.id),
                    sku: sku.to_owned(),
                    occurred_at: now,
                    causation_id: cause.id.clone(),
                    correlation_id: cause.correlation_id.clone(),
                    delta: to_i32(delta),
                    on_hand: to_i32(on_hand),
                    reason,
                    warehouse: Some(warehouse),
                    warehouse_on_hand: Some(to_i32(warehouse_on_hand)),
                };
                ctx.forward_to(TO_ADJUSTED, Record::new(sku.to_owned(), event, now))?;
            }
            // A repeated answer: sent again, not counted again.
            Effect::ConfirmRepeated {
                order_id,
                status,
                quantity,
                available,
                warehouse,
            } => {
                let event = InventoryReserved {
                    event_id: format!("{}/reserved", cause.id),
                    sku: sku.to_owned(),
                    occurred_at: now,
                    causation_id: cause.id.clone(),
                    correlation_id: cause.correlation_id.clone(),
                    order_id: order_id.clone(),
                    status,
                    quantity: to_i32(quantity),
                    available: to_i32(available),
                    expires_at: None,
                    held: held.total(),
                    warehouse_held: held.warehouse(Some(&warehouse)),
                    held_version: Some(held.version),
                    warehouse: Some(warehouse),
                };
                ctx.forward_to(TO_RESERVED, Record::new(order_id, event, now))?;
            }
            Effect::Oversold { order_id, quantity } => {
                self.metrics.oversell.inc();
                tracing::warn!(
                    sku,
                    order_id,
                    quantity,
                    "oversell: a lapsed hold was confirmed after its stock was sold"
                );
            }
            Effect::ScheduleExpiry { order_id, at } => {
                ctx.timers(EXPIRY_STORE)?
                    .schedule(hold_key(sku, &order_id), at, b"")?;
            }
            Effect::CancelExpiry { order_id } => {
                ctx.timers(EXPIRY_STORE)?
                    .cancel(&hold_key(sku, &order_id))?;
            }
        }
        Ok(())
    }
}
