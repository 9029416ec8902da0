//! The inventory routes: read a SKU's stock from the Cassandra mirror, and turn adjust, reserve
//! and release requests into commands on `inventory_topic` (key: the SKU, so one SKU's commands
//! queue in one partition). Like the order and payment routes they decide nothing: the
//! inventory processor applies the commands, answered `202` only once Kafka has them.
//!
//! - `GET /inventory/{sku}` — [`InventoryLevel`]: `onHand` from `<keyspace>.stock_level`,
//!   `held` = the sum of the SKU's `<keyspace>.reservation` rows (written `USING TTL`, so an
//!   expired hold no longer counts), `available = onHand − held`; the same per warehouse
//!   (`warehouses`, by name) from `<keyspace>.stock_by_warehouse` and the rows' `warehouse`. A
//!   row without a warehouse (written before warehouses existed) is the default warehouse's,
//!   and so is whatever part of the total no warehouse row accounts for. 404 for a SKU never
//!   stocked.
//! - `POST /inventory/adjust` — `Idempotency-Key` required; the command id is derived from the
//!   caller and the key, so a retry is the same command (inventory applies an adjust command id
//!   once per SKU). A key reused with another body is the same command id too: the first one
//!   applied wins downstream. Whether stock may go that low is the processor's decision (an
//!   adjust never takes a warehouse's stock below zero or below what it holds). `warehouse`
//!   names the warehouse (absent: the default warehouse, as before warehouses existed).
//! - `POST /inventory/reserve`, `POST /inventory/release` — one `ReserveStock` /
//!   `ReleaseStock` (reason `ORDER_CANCELLED`) per line, with command ids derived from the order
//!   and the SKU: a retry is a duplicate the processor ignores. Every SKU must be in
//!   `stock_level` (else 422 `unknown-sku` naming the line). A line's optional `warehouse` is
//!   a preference: inventory holds the line whole from that warehouse if it has the units
//!   available, else from the first other warehouse by name that has, else reports a shortage
//!   (a line is never split across warehouses). The holds last `holdTtlMs` when the request
//!   names it — within `[inventory].min_hold_ttl_ms..=max_hold_ttl_ms` ([`InventoryDeps`]),
//!   else 422 naming `holdTtlMs` — or inventory's configured `[inventory].hold_ttl_ms`.
//!   A reservation is all-or-nothing across its lines: its commands' `correlation_id` is
//!   `reservation:<orderId>` ([`RESERVATION_CORRELATION_PREFIX`]), and inventory's order
//!   coordinator releases every held line of it as soon as one line is reported short (the
//!   `SHORTAGE` reply names the line, wanted and available). The 202 says the commands are on
//!   Kafka; the outcome is on `inventory.reserved.v1` / `inventory.released.v1` and in
//!   `GET /inventory/{sku}` once the mirror has it (nothing of a short reservation stays held).
//!
//! An adjustment that would take stock below zero is answered 202 all the same: inventory is the
//! authority and refuses it (dead letter, no `inventory.adjusted.v1`). The API does not refuse
//! it early from the mirror: the mirror lags (a restock accepted a moment ago is not in it yet),
//! and a retry of an adjustment inventory already applied — the same command id — would read
//! as "below zero" and be refused, telling the client its applied adjustment was not.
//!
//! Without [`InventoryDeps`] (no Cassandra session configured) every inventory route answers 501
//! `not-served-here`: asking this process again never helps.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures::TryStreamExt;
use keel_avro::records::{
    AdjustStock, DEFAULT_WAREHOUSE, InventoryCommand, InventoryCommandBody,
    RESERVATION_CORRELATION_PREFIX, ReleaseReason, ReleaseStock, ReserveStock,
};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use serde::{Deserialize, Deserializer, Serialize};
use tokio::sync::OnceCell;
use utoipa::ToSchema;

use crate::payments::derived_id;
use crate::problem::{Kind, PathId, Problem};
use crate::routes::{App, json_response, or_problem, required_idempotency_key, to_json};

/// The largest `|delta|` of one adjustment.
pub const MAX_ADJUST_DELTA: i64 = 1_000_000;
/// The largest quantity of one reserve line.
pub const MAX_LINE_QUANTITY: i64 = 1_000_000;
/// The most lines (or SKUs) in one reserve or release request.
pub const MAX_LINES: usize = 100;
/// The longest SKU and order id, in characters ([`keel_avro::ids::MAX_ID_CHARS`]).
pub const MAX_ID_CHARS: usize = keel_avro::ids::MAX_ID_CHARS;

/// What the inventory routes read: a Cassandra session and the keyspace of the inventory
/// mirror (`keel_processors::inventory::sink`, tables `stock_level` and `reservation`).
#[derive(Clone)]
pub struct InventoryDeps {
    pub session: Arc<Session>,
    /// A CQL identifier: 1 to 48 letters, digits or `_`, starting with a letter.
    pub keyspace: String,
    /// The bounds of a reserve's `holdTtlMs` (inventory's `[inventory].min_hold_ttl_ms` and
    /// `max_hold_ttl_ms`): outside them the API answers 422.
    pub min_hold_ttl_ms: u64,
    pub max_hold_ttl_ms: u64,
}

impl fmt::Debug for InventoryDeps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InventoryDeps")
            .field("keyspace", &self.keyspace)
            .field("min_hold_ttl_ms", &self.min_hold_ttl_ms)
            .field("max_hold_ttl_ms", &self.max_hold_ttl_ms)
            .finish_non_exhaustive()
    }
}

/// Whether `keyspace` is a plain CQL identifier (it is written into statements).
pub fn valid_keyspace(keyspace: &str) -> bool {
    let mut chars = keyspace.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && keyspace.len() <= 48
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The inventory side of the handlers' state: the session and its statements, prepared on first
/// use (a Cassandra that is down at start costs 503s until it is back, not the API).
pub(crate) struct Inventory {
    deps: InventoryDeps,
    statements: OnceCell<Statements>,
}

impl Inventory {
    pub(crate) fn new(deps: InventoryDeps) -> Self {
        Self {
            deps,
            statements: OnceCell::new(),
        }
    }
}

struct Statements {
    on_hand: PreparedStatement,
    by_warehouse: PreparedStatement,
    holds: PreparedStatement,
    known: PreparedStatement,
}

impl Statements {
    async fn prepare(session: &Session, ks: &str, timeout: Duration) -> Result<Self, String> {
        let prepare = |cql: String| async move {
            let mut statement = session.prepare(cql).await.map_err(|e| e.to_string())?;
            statement.set_request_timeout(Some(timeout));
            Ok::<_, String>(statement)
        };
        Ok(Self {
            on_hand: prepare(format!(
                "SELECT on_hand, held FROM {ks}.stock_level WHERE sku = ?"
            ))
            .await?,
            by_warehouse: prepare(format!(
                "SELECT warehouse, on_hand, held FROM {ks}.stock_by_warehouse WHERE sku = ?"
            ))
            .await?,
            holds: prepare(format!(
                "SELECT quantity, warehouse FROM {ks}.reservation WHERE sku = ?"
            ))
            .await?,
            known: prepare(format!("SELECT sku FROM {ks}.stock_level WHERE sku IN ?")).await?,
        })
    }
}

/// `GET /inventory/{sku}`: the SKU's stock as the Cassandra mirror has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InventoryLevel {
    pub sku: String,
    /// Units in stock, held ones included.
    pub on_hand: i64,
    /// Units in live holds, as inventory counts them (a hold stops counting when inventory
    /// expires it, within its punctuation interval of its TTL).
    pub held: i64,
    /// `onHand − held`: what new reservations can take (a line is held from one warehouse:
    /// see `warehouses`).
    pub available: i64,
    /// The same per warehouse, by name (warehouses with nothing on hand and nothing held are
    /// left out).
    pub warehouses: Vec<WarehouseLevel>,
}

/// One warehouse's part of a SKU's stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WarehouseLevel {
    pub warehouse: String,
    pub on_hand: i64,
    pub held: i64,
    /// `onHand − held`: the largest line this warehouse can hold.
    pub available: i64,
}

/// Per-warehouse levels from the SKU's total on hand, its `stock_by_warehouse` rows and its
/// live holds by warehouse (`None` = the default warehouse): the default warehouse gets the
/// part of the total no row accounts for (a SKU stocked before warehouses existed).
pub fn warehouse_levels(
    total_on_hand: i64,
    on_hand: &[(String, i64)],
    held: &[(Option<String>, i64)],
) -> Vec<WarehouseLevel> {
    let mut levels: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
    for (w, n) in on_hand {
        levels.entry(w.clone()).or_default().0 += n;
    }
    let listed: i64 = on_hand.iter().map(|(_, n)| n).sum();
    if !levels.contains_key(DEFAULT_WAREHOUSE) && total_on_hand > listed {
        levels.insert(DEFAULT_WAREHOUSE.to_owned(), (total_on_hand - listed, 0));
    }
    for (w, n) in held {
        let w = w.as_deref().unwrap_or(DEFAULT_WAREHOUSE);
        levels.entry(w.to_owned()).or_default().1 += n;
    }
    levels
        .into_iter()
        .filter(|(_, (on_hand, held))| *on_hand != 0 || *held != 0)
        .map(|(warehouse, (on_hand, held))| WarehouseLevel {
            warehouse,
            on_hand,
            held,
            available: on_hand - held,
        })
        .collect()
}

/// `POST /inventory/adjust`: change the stock on hand of a SKU (restock, shrinkage, count
/// correction, a return).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AdjustRequest {
    /// 1 to 64 characters, no whitespace or control characters.
    pub sku: String,
    /// Units added (positive) or removed (negative); not 0, at most 1,000,000 either way.
    pub delta: i64,
    /// Why (1 to 255 characters), e.g. `RESTOCK`; `SOLD…` and `OVERSOLD…` are inventory's own.
    pub reason: String,
    /// The warehouse whose stock changes (1 to 64 characters); absent: the default warehouse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warehouse: Option<String>,
}

/// One line of `POST /inventory/reserve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReserveLine {
    /// A SKU in stock (`GET /inventory/{sku}` answers 200).
    pub sku: String,
    /// 1 to 1,000,000 units.
    pub quantity: i64,
    /// The preferred warehouse (1 to 64 characters): the line is held whole from it if it has
    /// the units available, else from the first other warehouse by name that has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warehouse: Option<String>,
}

/// `POST /inventory/reserve`: hold stock for an order, one hold per line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReserveRequest {
    /// 1 to 64 characters.
    pub order_id: String,
    /// 1 to 100 lines, each SKU once.
    #[serde(deserialize_with = "object_items")]
    pub lines: Vec<ReserveLine>,
    /// How long the holds live (ms), within inventory's `[inventory].min_hold_ttl_ms` and
    /// `max_hold_ttl_ms` (10 s and 1 h by default); absent: `[inventory].hold_ttl_ms` (10 min by
    /// default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_ttl_ms: Option<i64>,
}

/// `POST /inventory/release`: give an order's holds back (reason `ORDER_CANCELLED`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReleaseRequest {
    /// 1 to 64 characters.
    pub order_id: String,
    /// 1 to 100 SKUs in stock, each once.
    pub skus: Vec<String>,
}

/// 202 for an adjustment: the command is on Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdjustAccepted {
    pub sku: String,
    /// The same for every retry with the same `Idempotency-Key`.
    pub command_id: String,
    /// Always `ADJUSTMENT_REQUESTED`.
    pub status: String,
}

/// One command written for a reserve or release line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LineCommand {
    pub sku: String,
    /// Derived from the order and the SKU: the same for every retry.
    pub command_id: String,
}

/// 202 for a reserve or release: one command per line is on Kafka. The outcome (held or
/// short) is inventory's: `inventory.reserved.v1` / `inventory.released.v1`, and
/// `GET /inventory/{sku}` once the mirror has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HoldsAccepted {
    pub order_id: String,
    /// `RESERVATION_REQUESTED` or `RELEASE_REQUESTED`.
    pub status: String,
    pub commands: Vec<LineCommand>,
}

/// A JSON array of objects (an array inside an item is a wrong type, not a struct by position).
fn object_items<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<ReserveLine>, D::Error> {
    #[derive(Deserialize)]
    struct Item(#[serde(deserialize_with = "crate::body::object")] ReserveLine);
    let items = Vec::<Item>::deserialize(deserializer)?;
    Ok(items.into_iter().map(|Item(line)| line).collect())
}

fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Problem {
    Problem::new(Kind::InvalidField, detail).field(field)
}

/// A SKU (as in every body and `keel inventory seed`): 1 to 64 characters without whitespace
/// or control characters; else a 422 naming `field`.
pub fn check_sku(field: &str, sku: &str) -> Result<(), Problem> {
    check_id(field, "sku", sku)
}

/// A warehouse name: the same rules as a SKU; else a 422 naming `field`.
pub fn check_warehouse(field: &str, warehouse: &str) -> Result<(), Problem> {
    check_id(field, "a warehouse", warehouse)
}

/// An adjustment's reason: 1 to 255 characters without control or bidirectional formatting
/// characters, not one of inventory's own sale reasons (starting with `SOLD` or `OVERSOLD` in any
/// letter case, `oversold …` too: [`keel_avro::records::is_sale_reason`], the rule the inventory
/// processor and its Cassandra mirror keep as well); else a 422 naming `reason`.
pub fn check_reason(reason: &str) -> Result<(), Problem> {
    let len = reason.trim().chars().count();
    if len == 0
        || reason.chars().count() > 255
        || reason.chars().any(crate::model::is_unsafe_text_char)
    {
        return Err(invalid(
            "reason",
            "reason must be 1 to 255 characters without control or bidirectional formatting characters",
        ));
    }
    if keel_avro::records::is_sale_reason(reason) {
        return Err(invalid(
            "reason",
            format!(
                "reasons starting with SOLD or OVERSOLD (in any letter case) are inventory's own \
                 (sales of holds), got {}",
                crate::model::shown(reason)
            ),
        ));
    }
    Ok(())
}

/// A SKU or order id: the rule every id keeps ([`keel_avro::ids`], which the processors
/// enforce on commands from other producers).
fn check_id(field: &str, what: &str, value: &str) -> Result<(), Problem> {
    if !keel_avro::ids::is_valid_id(value) {
        return Err(invalid(
            field,
            format!(
                "{what} must be {}, got {}",
                keel_avro::ids::ID_RULE,
                keel_avro::ids::shown(value)
            ),
        ));
    }
    Ok(())
}

fn check_count(field: &str, len: usize) -> Result<(), Problem> {
    if len == 0 {
        return Err(invalid(field, format!("{field} must not be empty")));
    }
    if len > MAX_LINES {
        return Err(invalid(
            field,
            format!("{field} has {len} entries; at most {MAX_LINES} are accepted"),
        ));
    }
    Ok(())
}

/// The SKUs of a request, each checked and at most once; problems name `{field}[i]{suffix}`.
fn check_skus<'a>(
    field: &str,
    suffix: &str,
    skus: impl Iterator<Item = &'a str>,
) -> Result<(), Problem> {
    let mut seen = BTreeSet::new();
    for (i, sku) in skus.enumerate() {
        let name = format!("{field}[{i}]{suffix}");
        check_id(&name, "a sku", sku)?;
        if !seen.insert(sku) {
            return Err(invalid(
                name,
                format!("sku {sku:?} appears more than once; send one line per SKU"),
            ));
        }
    }
    Ok(())
}

impl AdjustRequest {
    /// The first invalid value, as a 422 naming the field.
    pub fn validate(&self) -> Result<(), Problem> {
        check_sku("sku", &self.sku)?;
        if let Some(w) = &self.warehouse {
            check_warehouse("warehouse", w)?;
        }
        // A range check, not `abs()`: -i64::MAX - 1 has no absolute value in i64.
        if self.delta == 0 || !(-MAX_ADJUST_DELTA..=MAX_ADJUST_DELTA).contains(&self.delta) {
            return Err(invalid(
                "delta",
                format!(
                    "delta must be non-zero and between -{MAX_ADJUST_DELTA} and \
                     {MAX_ADJUST_DELTA}, got {}",
                    self.delta
                ),
            ));
        }
        check_reason(&self.reason)
    }
}

impl ReserveRequest {
    /// The first invalid value, as a 422 naming the field (`lines[1].quantity`).
    pub fn validate(&self) -> Result<(), Problem> {
        check_id("orderId", "orderId", &self.order_id)?;
        check_count("lines", self.lines.len())?;
        for (i, line) in self.lines.iter().enumerate() {
            if line.quantity <= 0 || line.quantity > MAX_LINE_QUANTITY {
                return Err(invalid(
                    format!("lines[{i}].quantity"),
                    format!(
                        "quantity must be between 1 and {MAX_LINE_QUANTITY}, got {}",
                        line.quantity
                    ),
                ));
            }
            if let Some(w) = &line.warehouse {
                check_warehouse(&format!("lines[{i}].warehouse"), w)?;
            }
        }
        check_skus("lines", ".sku", self.lines.iter().map(|l| l.sku.as_str()))
    }
}

impl ReserveRequest {
    /// 422 naming `holdTtlMs` when it lies outside `min_ms..=max_ms`.
    pub fn check_ttl(&self, min_ms: u64, max_ms: u64) -> Result<(), Problem> {
        match self.hold_ttl_ms {
            Some(ms) if u64::try_from(ms).map_or(true, |ms| ms < min_ms || ms > max_ms) => {
                Err(invalid(
                    "holdTtlMs",
                    format!("holdTtlMs must be between {min_ms} and {max_ms} ms, got {ms}"),
                ))
            }
            _ => Ok(()),
        }
    }
}

impl ReleaseRequest {
    /// The first invalid value, as a 422 naming the field (`skus[0]`).
    pub fn validate(&self) -> Result<(), Problem> {
        check_id("orderId", "orderId", &self.order_id)?;
        check_count("skus", self.skus.len())?;
        check_skus("skus", "", self.skus.iter().map(String::as_str))
    }
}

fn not_configured() -> Problem {
    Problem::new(
        Kind::NotServedHere,
        "this process serves no inventory routes: it has no inventory store (Cassandra) \
         configured; ask a Keel API that has (keel run --roles ...,api)",
    )
}

fn store_unavailable(e: impl fmt::Display) -> Problem {
    tracing::warn!(error = %e, "inventory store (Cassandra) call failed");
    Problem::new(
        Kind::DependencyUnavailable,
        "the inventory store is unavailable; retry later",
    )
}

fn sku_not_found(sku: &str) -> Problem {
    Problem::new(
        Kind::SkuNotFound,
        format!("sku {} was never stocked", crate::model::shown(sku)),
    )
    .field("sku")
}

impl App {
    fn inventory(&self) -> Result<&Inventory, Problem> {
        self.0.inventory.as_ref().ok_or_else(not_configured)
    }

    fn store_timeout(&self) -> Duration {
        Duration::from_millis(self.0.config.inventory_read_timeout_ms)
    }

    async fn statements(&self) -> Result<(&Inventory, &Statements), Problem> {
        let inventory = self.inventory()?;
        let timeout = self.store_timeout();
        let statements = inventory
            .statements
            .get_or_try_init(|| {
                Statements::prepare(&inventory.deps.session, &inventory.deps.keyspace, timeout)
            })
            .await
            .map_err(store_unavailable)?;
        Ok((inventory, statements))
    }

    /// The SKU's level, `None` for a SKU never stocked.
    async fn inventory_level(&self, sku: &str) -> Result<Option<InventoryLevel>, Problem> {
        let (inventory, st) = self.statements().await?;
        let session = &inventory.deps.session;
        let read = async {
            let result = session
                .execute_unpaged(&st.on_hand, (sku,))
                .await
                .map_err(store_unavailable)?
                .into_rows_result()
                .map_err(store_unavailable)?;
            let Some((on_hand, held)) = result
                .maybe_first_row::<(Option<i32>, Option<i32>)>()
                .map_err(store_unavailable)?
            else {
                return Ok(None);
            };
            let rows: Vec<(String, Option<i32>, Option<i32>)> = session
                .execute_iter(st.by_warehouse.clone(), (sku,))
                .await
                .map_err(store_unavailable)?
                .rows_stream::<(String, Option<i32>, Option<i32>)>()
                .map_err(store_unavailable)?
                .map_err(store_unavailable)
                .try_collect()
                .await?;
            // A row with only a held figure (the default warehouse of a SKU stocked before
            // warehouses existed) lists no on hand: the default gets the unlisted part.
            let by_warehouse: Vec<(String, i64)> = rows
                .iter()
                .filter_map(|(w, n, _)| n.map(|n| (w.clone(), i64::from(n))))
                .collect();
            let holds: Vec<(Option<String>, i64)> = match held {
                // The held figures inventory computed, kept by the sink: no hold row is read
                // (a hot SKU's partition of hold rows fills with tombstones as holds end).
                Some(_) => rows
                    .iter()
                    .filter_map(|(w, _, h)| h.map(|h| (Some(w.clone()), i64::from(h))))
                    .collect(),
                // A SKU with no held figure yet (no hold event since the sink kept them): its
                // live hold rows, page by page; expired ones are gone by TTL.
                None => {
                    session
                        .execute_iter(st.holds.clone(), (sku,))
                        .await
                        .map_err(store_unavailable)?
                        .rows_stream::<(Option<i32>, Option<String>)>()
                        .map_err(store_unavailable)?
                        .map_err(store_unavailable)
                        .map_ok(|(quantity, w)| (w, i64::from(quantity.unwrap_or(0))))
                        .try_collect()
                        .await?
                }
            };
            let on_hand = i64::from(on_hand.unwrap_or(0));
            let held = match held {
                Some(held) => i64::from(held),
                None => holds.iter().map(|(_, n)| n).sum(),
            };
            Ok(Some(InventoryLevel {
                sku: sku.to_owned(),
                on_hand,
                held,
                available: on_hand - held,
                warehouses: warehouse_levels(on_hand, &by_warehouse, &holds),
            }))
        };
        tokio::time::timeout(self.store_timeout(), read)
            .await
            .map_err(|_| store_unavailable("timed out"))?
    }

    /// 422 `unknown-sku` naming `{field}[i]{suffix}` for the first SKU not in `stock_level`.
    async fn check_known(&self, field: &str, suffix: &str, skus: &[&str]) -> Result<(), Problem> {
        let (inventory, st) = self.statements().await?;
        let list: Vec<&str> = skus.to_vec();
        let read = async {
            let result = inventory
                .deps
                .session
                .execute_unpaged(&st.known, (list,))
                .await
                .map_err(store_unavailable)?
                .into_rows_result()
                .map_err(store_unavailable)?;
            result
                .rows::<(String,)>()
                .map_err(store_unavailable)?
                .map(|row| row.map(|(sku,)| sku).map_err(store_unavailable))
                .collect::<Result<BTreeSet<String>, Problem>>()
        };
        let known = tokio::time::timeout(self.store_timeout(), read)
            .await
            .map_err(|_| store_unavailable("timed out"))??;
        match skus
            .iter()
            .enumerate()
            .find(|(_, sku)| !known.contains(**sku))
        {
            Some((i, sku)) => Err(Problem::new(
                Kind::UnknownSku,
                format!("sku {sku:?} was never stocked"),
            )
            .field(format!("{field}[{i}]{suffix}"))),
            None => Ok(()),
        }
    }

    /// Check that every SKU of `lines` is stocked (422 naming `{field}[i]{suffix}`), write one
    /// `action` command per line (ids from the order and the SKU) and answer 202 with `status`
    /// and the command ids.
    async fn request_holds(
        &self,
        order_id: &str,
        (action, status): (&str, &str),
        (field, suffix): (&str, &str),
        lines: Vec<(&str, InventoryCommandBody)>,
    ) -> Result<Response, Problem> {
        let skus: Vec<&str> = lines.iter().map(|(sku, _)| *sku).collect();
        self.check_known(field, suffix, &skus).await?;
        let commands: Vec<InventoryCommand> = lines
            .into_iter()
            .map(|(sku, body)| hold_command(order_id, sku, action, body))
            .collect();
        self.send_commands(&self.0.config.inventory_topic, &commands)
            .await?;
        Ok(holds_accepted(order_id, status, &commands))
    }
}

#[utoipa::path(
    get,
    path = "/inventory/{sku}",
    tag = "inventory",
    summary = "A SKU's stock: on hand, held, available",
    description = "From the Cassandra mirror of inventory (eventually consistent with the \
        inventory processor): onHand and held from stock_level (held as inventory computed it \
        with each hold, release, expiry and sale; a SKU with no such event since held figures \
        were kept counts its live reservation rows), available = onHand - held; the same per \
        warehouse in warehouses (stock_by_warehouse; stock and holds from before warehouses \
        existed count as the default warehouse's).",
    params(("sku" = String, Path,
        description = "The SKU (1-64 characters without whitespace or control characters)")),
    responses(
        (status = 200, description = "The SKU's stock", body = InventoryLevel),
        (status = 400, description = "The sku is no SKU (invalid-path-parameter, field sku): \
            not valid UTF-8 once percent-decoded, a control character such as %00, whitespace, \
            or more than 64 characters", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The SKU was never stocked", body = Problem,
            content_type = "application/problem+json"),
        (status = 501, description = "This process has no inventory store configured \
            (not-served-here): ask a Keel API that has one", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "Cassandra did not answer in time, or too many requests \
            are in progress", body = Problem,
            content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn get_inventory(
    State(app): State<App>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    or_problem(get_inventory_inner(&app, path).await)
}

async fn get_inventory_inner(
    app: &App,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let sku = crate::problem::path_id(path, "sku", "sku", PathId::Sku, Kind::SkuNotFound)?;
    let level = app
        .inventory_level(&sku)
        .await?
        .ok_or_else(|| sku_not_found(&sku))?;
    Ok(json_response(StatusCode::OK, to_json(&level), None))
}

#[utoipa::path(
    post,
    path = "/inventory/adjust",
    tag = "inventory",
    summary = "Change a SKU's stock on hand (restock, correction, return)",
    description = "Writes an AdjustStock command (key: the SKU) to Kafka and answers once Kafka \
        confirmed it. The command id is derived from the caller, the Idempotency-Key and the \
        body: a retry is the same command, applied once, and the same key with another body \
        is another adjustment. The adjustment changes one warehouse (the \
        default one when none is named). The 202 says the command is on Kafka, not that it was \
        applied: inventory refuses an adjustment that would take that warehouse's stock below \
        zero or below what it holds, and the API does not refuse it early (GET \
        /inventory/{sku} lags inventory, and a retry of an applied adjustment must still get \
        202). A refused adjustment changes nothing: no inventory.adjusted.v1 event, onHand in \
        GET /inventory/{sku} stays as it was, and the command goes to inventory's dead-letter \
        topic (<application>-dlq, counted in keel_dead_letters_total). Read GET \
        /inventory/{sku} (per warehouse) before removing stock, and after: an applied \
        adjustment shows there within the mirror's lag.",
    params(
        ("Idempotency-Key" = String, Header,
            description = "Required: names the adjustment with its body (1-255 visible \
                ASCII)"),
    ),
    request_body(content = AdjustRequest, content_type = "application/json"),
    security((), ("bearer" = [])),
    responses(
        (status = 202, description = "Accepted: the command is on Kafka", body = AdjustAccepted,
            headers(("Location" = String, description = "/inventory/{sku}"))),
        (status = 400, description = "Malformed JSON, a missing, unknown or mistyped field, an \
            empty body, a missing or invalid Idempotency-Key, or Idempotency-Key, Content-Type \
            or Authorization sent more than once (invalid-header)", body = Problem,
            content_type = "application/problem+json"),
        (status = 401, description = "Authentication is on and no accepted bearer token was sent",
            body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than max_body_bytes", body = Problem,
            content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json, or has a \
            Content-Encoding other than identity", body = Problem,
            content_type = "application/problem+json"),
        (status = 422, description = "An invalid sku or warehouse, a delta of 0 or beyond \
            ±1,000,000, or an invalid reason (empty, over 255 characters, control characters, \
            or starting with SOLD or OVERSOLD in any letter case: inventory's own)",
            body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "This process has no inventory store configured \
            (not-served-here): ask a Keel API that has one", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "Kafka or the registry did not answer in time, or too \
            many requests are in progress", body = Problem,
            content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn adjust_inventory(
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    or_problem(adjust_inventory_inner(&app, &headers, body).await)
}

async fn adjust_inventory_inner(
    app: &App,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let (scope, request) = app
        .write_request(headers, body, AdjustRequest::validate)
        .await?;
    let key = required_idempotency_key(headers, "an adjustment")?;
    app.inventory()?;
    // The key names the adjustment together with its body: a retry (same key, same body) is
    // the same command, applied once; the same key with another body is another adjustment.
    // (Derived from the key alone, a changed delta was answered 202 and dropped by inventory
    // as a duplicate: break report 14, D3. Inventory's routes keep no key store to answer 422.)
    let canonical = serde_json::to_string(&request).unwrap_or_default();
    let command_id = derived_id(&["inventory-adjust", &scope, &key, &canonical]);
    let delta = i32::try_from(request.delta)
        .map_err(|_| invalid("delta", format!("delta {} is out of range", request.delta)))?;
    let command = InventoryCommand {
        command_id: command_id.clone(),
        sku: request.sku.clone(),
        issued_at: chrono::Utc::now().timestamp_millis(),
        causation_id: command_id.clone(),
        correlation_id: command_id.clone(),
        command: InventoryCommandBody::Adjust(AdjustStock {
            delta,
            reason: request.reason.clone(),
            warehouse: request.warehouse.clone(),
        }),
    };
    app.send_commands(
        &app.0.config.inventory_topic,
        std::slice::from_ref(&command),
    )
    .await?;
    let body = to_json(&AdjustAccepted {
        sku: request.sku.clone(),
        command_id,
        status: "ADJUSTMENT_REQUESTED".to_owned(),
    });
    Ok(json_response(
        StatusCode::ACCEPTED,
        body,
        Some(&crate::routes::location("inventory", &request.sku)),
    ))
}

/// The command id of an order's reserve or release of a SKU: a retry is a duplicate.
pub fn hold_command_id(action: &str, order_id: &str, sku: &str) -> String {
    derived_id(&["inventory", action, order_id, sku])
}

fn hold_command(
    order_id: &str,
    sku: &str,
    action: &str,
    body: InventoryCommandBody,
) -> InventoryCommand {
    let command_id = hold_command_id(action, order_id, sku);
    // A reservation's lines are all-or-nothing: the mark tells inventory's order coordinator
    // to release the held lines when one is short.
    let correlation_id = match body {
        InventoryCommandBody::Reserve(_) => format!("{RESERVATION_CORRELATION_PREFIX}{order_id}"),
        _ => order_id.to_owned(),
    };
    InventoryCommand {
        command_id: command_id.clone(),
        sku: sku.to_owned(),
        issued_at: chrono::Utc::now().timestamp_millis(),
        causation_id: command_id,
        correlation_id,
        command: body,
    }
}

fn holds_accepted(order_id: &str, status: &str, commands: &[InventoryCommand]) -> Response {
    let body = to_json(&HoldsAccepted {
        order_id: order_id.to_owned(),
        status: status.to_owned(),
        commands: commands
            .iter()
            .map(|c| LineCommand {
                sku: c.sku.clone(),
                command_id: c.command_id.clone(),
            })
            .collect(),
    });
    json_response(StatusCode::ACCEPTED, body, None)
}

#[utoipa::path(
    post,
    path = "/inventory/reserve",
    tag = "inventory",
    summary = "Hold stock for an order: one ReserveStock command per line",
    description = "Checks every SKU against the stock table, writes one ReserveStock command per \
        line (key: the SKU) and answers once Kafka confirmed all of them. Command ids are \
        derived from the order and the SKU: a retry is a duplicate inventory ignores, and so \
        is any later reserve of the same order and SKU (another quantity, or after a release: \
        an order holds a SKU once; use another order id). Whether a \
        line is held or short is inventory's answer (inventory.reserved.v1). All or nothing: \
        when one line is short, inventory releases the lines it held for the order \
        (inventory.released.v1, reason COMPENSATION), so GET /inventory/{sku} ends with nothing \
        of the order held. A line is held \
        whole from one warehouse: its preferred warehouse if that has the units available, \
        else the first other warehouse by name that has; else it is short. Holds last \
        holdTtlMs when given (within inventory's min_hold_ttl_ms..max_hold_ttl_ms, else 422), \
        else inventory's configured hold_ttl_ms.",
    request_body(content = ReserveRequest, content_type = "application/json"),
    security((), ("bearer" = [])),
    responses(
        (status = 202, description = "Accepted: every line's command is on Kafka",
            body = HoldsAccepted),
        (status = 400, description = "Malformed JSON, a missing, unknown or mistyped field, an \
            empty body, or Content-Type or Authorization sent more than once (invalid-header)",
            body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Authentication is on and no accepted bearer token was sent",
            body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The orderId is a checkout's (checkout-order): its holds \
            are the saga's; this route is for orders the saga does not run", body = Problem,
            content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than max_body_bytes", body = Problem,
            content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json, or has a \
            Content-Encoding other than identity", body = Problem,
            content_type = "application/problem+json"),
        (status = 422, description = "An invalid orderId, no lines or more than 100, a quantity \
            below 1 or above 1,000,000, a SKU twice, an invalid warehouse, a holdTtlMs outside \
            the configured bounds, or a SKU never stocked (unknown-sku); field names the line, \
            e.g. lines[1].quantity, or holdTtlMs", body = Problem,
            content_type = "application/problem+json"),
        (status = 501, description = "This process has no inventory store configured \
            (not-served-here): ask a Keel API that has one", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "Cassandra, Kafka or the registry did not answer in time, \
            or too many requests are in progress",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn reserve_inventory(
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    or_problem(reserve_inventory_inner(&app, &headers, body).await)
}

async fn reserve_inventory_inner(
    app: &App,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let (_, request) = app
        .write_request(headers, body, ReserveRequest::validate)
        .await?;
    let deps = &app.inventory()?.deps;
    request.check_ttl(deps.min_hold_ttl_ms, deps.max_hold_ttl_ms)?;
    crate::routes::refuse_checkout_order(app, &request.order_id, "POST /inventory/reserve").await?;
    let lines = request
        .lines
        .iter()
        .map(|line| {
            let body = InventoryCommandBody::Reserve(ReserveStock {
                order_id: request.order_id.clone(),
                // validate() bounds the quantity to 1..=MAX_LINE_QUANTITY.
                quantity: i32::try_from(line.quantity).unwrap_or(i32::MAX),
                warehouse: line.warehouse.clone(),
                hold_ttl_ms: request.hold_ttl_ms,
            });
            (line.sku.as_str(), body)
        })
        .collect();
    app.request_holds(
        &request.order_id,
        ("reserve", "RESERVATION_REQUESTED"),
        ("lines", ".sku"),
        lines,
    )
    .await
}

#[utoipa::path(
    post,
    path = "/inventory/release",
    tag = "inventory",
    summary = "Give an order's holds back: one ReleaseStock command per SKU",
    description = "Checks every SKU against the stock table, writes one ReleaseStock command \
        (reason ORDER_CANCELLED, key: the SKU) per SKU and answers once Kafka confirmed all of \
        them. Command ids are derived from the order and the SKU: a retry is a duplicate. A \
        release that arrives before its reserve makes the late reserve a no-op.",
    request_body(content = ReleaseRequest, content_type = "application/json"),
    security((), ("bearer" = [])),
    responses(
        (status = 202, description = "Accepted: every SKU's command is on Kafka",
            body = HoldsAccepted),
        (status = 400, description = "Malformed JSON, a missing, unknown or mistyped field, an \
            empty body, or Content-Type or Authorization sent more than once (invalid-header)",
            body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Authentication is on and no accepted bearer token was sent",
            body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The orderId is a checkout's (checkout-order): its holds \
            are the saga's; this route is for orders the saga does not run", body = Problem,
            content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than max_body_bytes", body = Problem,
            content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json, or has a \
            Content-Encoding other than identity", body = Problem,
            content_type = "application/problem+json"),
        (status = 422, description = "An invalid orderId, no SKUs or more than 100, a SKU twice, \
            or a SKU never stocked (unknown-sku); field names it, e.g. skus[1]", body = Problem,
            content_type = "application/problem+json"),
        (status = 501, description = "This process has no inventory store configured \
            (not-served-here): ask a Keel API that has one", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "Cassandra, Kafka or the registry did not answer in time, \
            or too many requests are in progress",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn release_inventory(
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    or_problem(release_inventory_inner(&app, &headers, body).await)
}

async fn release_inventory_inner(
    app: &App,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let (_, request) = app
        .write_request(headers, body, ReleaseRequest::validate)
        .await?;
    app.inventory()?;
    crate::routes::refuse_checkout_order(app, &request.order_id, "POST /inventory/release").await?;
    let lines = request
        .skus
        .iter()
        .map(|sku| {
            let body = InventoryCommandBody::Release(ReleaseStock {
                order_id: request.order_id.clone(),
                reason: ReleaseReason::OrderCancelled,
            });
            (sku.as_str(), body)
        })
        .collect();
    app.request_holds(
        &request.order_id,
        ("release", "RELEASE_REQUESTED"),
        ("skus", ""),
        lines,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::parse_json;

    fn field(p: Problem) -> (u16, String) {
        (p.status, p.field.unwrap_or_default())
    }

    #[test]
    fn keyspaces_are_plain_identifiers() {
        assert!(valid_keyspace("keel_inventory"));
        assert!(valid_keyspace("inv_0123456789ab"));
        for bad in ["", "1ks", "ks;DROP", "ks.x", "k s", &"k".repeat(49)] {
            assert!(!valid_keyspace(bad), "{bad:?}");
        }
    }

    #[test]
    fn an_adjustment_needs_a_bounded_non_zero_delta_a_sku_and_a_reason() {
        let ok = AdjustRequest {
            sku: "SKU-1".into(),
            delta: -5,
            reason: "SHRINKAGE".into(),
            warehouse: Some("WH-2".into()),
        };
        assert_eq!(ok.validate(), Ok(()));
        for (sku, delta, reason, expected) in [
            ("", 1, "r", "sku"),
            ("a b", 1, "r", "sku"),
            (&"s".repeat(65) as &str, 1, "r", "sku"),
            ("SKU-1", 0, "r", "delta"),
            ("SKU-1", MAX_ADJUST_DELTA + 1, "r", "delta"),
            ("SKU-1", -MAX_ADJUST_DELTA - 1, "r", "delta"),
            ("SKU-1", i64::MIN, "r", "delta"),
            ("SKU-1", i64::MAX, "r", "delta"),
            ("SKU-1", 1, " ", "reason"),
            ("SKU-1", 1, "SOLD order x", "reason"),
            ("SKU-1", 1, "oversold", "reason"),
            ("SKU-1", 1, "Sold order x", "reason"),
            ("SKU-1", 1, " OVERSOLD order x", "reason"),
        ] {
            let p = AdjustRequest {
                sku: sku.into(),
                delta,
                reason: reason.into(),
                warehouse: None,
            }
            .validate()
            .expect_err(expected);
            assert_eq!(field(p), (422, expected.to_owned()));
        }
    }

    #[test]
    fn reserve_problems_name_the_line() {
        let parse = |json: &str| parse_json::<ReserveRequest>(json.as_bytes());
        let ok = parse(
            r#"{"orderId":"o-1","lines":[{"sku":"A","quantity":1},{"sku":"B","quantity":2}]}"#,
        )
        .expect("parse");
        assert_eq!(ok.validate(), Ok(()));
        for (json, expected) in [
            (r#"{"orderId":"o-1","lines":[]}"#, "lines"),
            (
                r#"{"orderId":"","lines":[{"sku":"A","quantity":1}]}"#,
                "orderId",
            ),
            (
                r#"{"orderId":"o","lines":[{"sku":"A","quantity":1},{"sku":"B","quantity":0}]}"#,
                "lines[1].quantity",
            ),
            (
                r#"{"orderId":"o","lines":[{"sku":"A","quantity":-3}]}"#,
                "lines[0].quantity",
            ),
            (
                r#"{"orderId":"o","lines":[{"sku":"A","quantity":1},{"sku":"A","quantity":2}]}"#,
                "lines[1].sku",
            ),
        ] {
            let p = parse(json).expect(json).validate().expect_err(json);
            assert_eq!(field(p), (422, expected.to_owned()), "{json}");
        }
        // A line must be an object, not fields by position.
        let p = parse(r#"{"orderId":"o","lines":[["A",1]]}"#).expect_err("array line");
        assert_eq!(
            (p.slug(), p.field.as_deref()),
            ("wrong-type", Some("lines[0]"))
        );
        // A TTL per request, within the bounds (inclusive).
        let ttl = |ms: i64| {
            parse(&format!(
                r#"{{"orderId":"o","lines":[{{"sku":"A","quantity":1}}],"holdTtlMs":{ms}}}"#
            ))
            .expect("parse")
            .check_ttl(10_000, 3_600_000)
        };
        assert_eq!(ttl(10_000), Ok(()));
        assert_eq!(ttl(3_600_000), Ok(()));
        for bad in [9_999, 3_600_001, 0, -1] {
            assert_eq!(
                field(ttl(bad).expect_err("out of bounds")),
                (422, "holdTtlMs".to_owned())
            );
        }
    }

    #[test]
    fn release_problems_name_the_sku() {
        let ok = ReleaseRequest {
            order_id: "o".into(),
            skus: vec!["A".into(), "B".into()],
        };
        assert_eq!(ok.validate(), Ok(()));
        for (skus, expected) in [
            (vec![], "skus"),
            (vec!["A", "A"], "skus[1]"),
            (vec!["A", ""], "skus[1]"),
        ] {
            let p = ReleaseRequest {
                order_id: "o".into(),
                skus: skus.into_iter().map(String::from).collect(),
            }
            .validate()
            .expect_err(expected);
            assert_eq!(field(p), (422, expected.to_owned()));
        }
    }

    #[test]
    fn hold_command_ids_depend_on_the_order_and_the_sku_only() {
        let a = hold_command_id("reserve", "o-1", "A");
        assert_eq!(a, hold_command_id("reserve", "o-1", "A"));
        assert_ne!(a, hold_command_id("reserve", "o-1", "B"));
        assert_ne!(a, hold_command_id("reserve", "o-2", "A"));
        assert_ne!(a, hold_command_id("release", "o-1", "A"));
    }
}
