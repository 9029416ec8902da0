//! The Cassandra mirror of inventory: `reservation` rows (one per hold, written `USING TTL` equal
//! to the hold's remaining life) and `stock_level` rows, kept up to date from
//! `inventory.reserved.v1`, `inventory.released.v1` and `inventory.adjusted.v1`.
//!
//! Warehouses: a `reservation` row names the warehouse its units are held in (`warehouse`, a
//! column added by [`migrate`]; rows written before it read `null` = the default warehouse), and
//! `stock_by_warehouse` has on hand per `(sku, warehouse)` next to `stock_level`'s total (a SKU
//! stocked before warehouses existed has no `stock_by_warehouse` rows until its next change:
//! readers count the total minus the listed warehouses as the default warehouse's).
//!
//! Idempotent and order-proof by construction: every hold write carries `USING TIMESTAMP` = the
//! event's `occurred_at` (in µs, Cassandra's write time), so a replayed event rewrites the same
//! cells and a release that arrives before its reservation still wins (the later write time
//! shadows the earlier insert; on a tie the deletion wins). Stock rows use the event's offset in
//! its SKU-keyed partition as write time (see [`writes_for_adjusted`]). Hold rows are upserts keyed by `(sku, order_id)`, so a hold is
//! recorded once whatever the retries. Every write that touches a hold sets its remaining TTL
//! or deletes the row, so no hold leaves a cell that never expires. Offsets are committed after
//! the writes (at-least-once); a write that failed (a timeout, a node unavailable or
//! overloaded, a lost connection) is retried with backoff, in place. An event the sink cannot
//! use goes to the dead-letter topic `<group id>-dlq` ([`crate::dead_letter`]) before its
//! offset is committed, and the sink goes on: a tombstone (these are event topics, not
//! compacted tables), an event that cannot be decoded (not framed, a schema id the registry
//! still does not know after `[registry].unknown_id_patience_ms`, a schema that does not
//! resolve), and one Cassandra refuses to write for what it holds ([`SinkError::Refused`], e.g.
//! an empty SKU: "Key may not be empty").
//!
//! Held figures and tombstones: a hold's row is deleted when the hold is released or sold (and
//! an expired one lapses by TTL), so a hot SKU's `reservation` partition fills with tombstones
//! (one per ended hold, kept `gc_grace_seconds` = 1 h, then dropped at the next compaction of
//! their sstable). No read of a SKU's figures scans that partition: `stock_level.held` and
//! `stock_by_warehouse.held` (columns added by [`migrate`]) hold the units held on the SKU and
//! per warehouse as the inventory processor computed them, carried on every
//! `inventory.reserved.v1` / `inventory.released.v1` (`held`, `warehouse_held`) and written
//! with the event's `held_version` (µs, strictly increasing per SKU) as write time, so the
//! last change wins whatever the arrival order or replays ([`Write::Held`]). Hold rows remain
//! for per-order point reads by `(sku, order_id)`, which do not read other rows' tombstones.
//! TimeWindowCompactionStrategy would drop expired TTL'd rows by whole sstables, but explicit
//! deletes shadowing rows in older windows defeat it (a window's tombstones cannot go before
//! the data they shadow), so the table keeps the default compaction.

use std::time::Duration;

use keel_avro::records::{
    DEFAULT_WAREHOUSE, InventoryAdjusted, InventoryReleased, InventoryReserved, ReservationStatus,
};
use keel_avro::{Codec, Fault};
use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{BadQuery, DbError, ExecutionError, RequestAttemptError};
use scylla::statement::prepared::PreparedStatement;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::dead_letter::DeadLetters;
use crate::topics::{self, Topics};

/// The `[cassandra]` section's sink settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CassandraSinkConfig {
    pub keyspace: String,
    /// Replication factor of the keyspace when it is created (1 on the local stack).
    pub replication_factor: u32,
    /// Consumer group of the sink.
    pub group_id: String,
    /// Extra librdkafka consumer settings, applied last (e.g. `group.instance.id`).
    pub consumer: std::collections::BTreeMap<String, String>,
}

impl Default for CassandraSinkConfig {
    fn default() -> Self {
        Self {
            keyspace: "keel_inventory".into(),
            replication_factor: 1,
            group_id: "keel-cassandra-sink".into(),
            consumer: Default::default(),
        }
    }
}

/// What can stop the sink.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// A call to Cassandra failed (a timeout, a node unavailable or overloaded, a lost
    /// connection, a schema problem): [`run`] retries a write that fails so, in place.
    #[error("cassandra: {0}")]
    Cassandra(String),
    /// Cassandra refused a write for the values it carries, and will refuse it again: an
    /// invalid request (e.g. "Key may not be empty" for an empty SKU) while the statement itself
    /// still prepares, or a partition key too long to send. The input's fault: [`run`]
    /// dead-letters the event.
    #[error("cassandra refused the write: {0}")]
    Refused(String),
    /// The event at `record` (`topic/partition@offset`) could not be decoded by Keel's own
    /// fault (a registry answer or a schema Keel cannot use: a bug, not the input's fault, so
    /// not dead-lettered). The event is not passed over.
    #[error("decoding {record}: Keel's own fault (a bug), not the event's: {source}")]
    Decoding {
        record: String,
        #[source]
        source: Box<keel_avro::Error>,
    },
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// An undecodable event's dead-letter copy was not acknowledged: it is not passed over.
    #[error("dead letters: {0}")]
    DeadLetter(#[from] crate::dead_letter::Error),
}

/// `message`'s `topic/partition@offset`.
fn record_at(message: &impl Message) -> String {
    format!(
        "{}/{}@{}",
        message.topic(),
        message.partition(),
        message.offset()
    )
}

fn cql(e: impl std::fmt::Display) -> SinkError {
    SinkError::Cassandra(e.to_string())
}

/// Whether `e` refuses a write for the values it carries (the same write is refused again,
/// whatever the retries): an invalid request, or a partition key too long to send. An invalid
/// request can also be a schema problem (a table or column gone), which is not the values'
/// fault: the sink's `apply` tells the two apart by preparing the statement again. Timeouts,
/// unavailable or overloaded nodes, lost connections and the rest are not refusals.
pub fn refuses_the_values(e: &ExecutionError) -> bool {
    matches!(
        e,
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(DbError::Invalid, _))
            | ExecutionError::BadQuery(BadQuery::ValuesTooLongForKey(..))
    )
}

/// Connects to `nodes` (host:port).
pub async fn connect(nodes: &[String]) -> Result<Session, SinkError> {
    let mut builder = SessionBuilder::new().connection_timeout(Duration::from_secs(10));
    for node in nodes {
        builder = builder.known_node(node);
    }
    builder.build().await.map_err(cql)
}

/// Creates the keyspace and tables if they are missing and brings an older keyspace up to date
/// (run at start; never by hand; safe to run concurrently and again): adds
/// `reservation.warehouse` to a table created before warehouses existed (its rows stay readable,
/// their `warehouse` is `null`: the default warehouse), creates `stock_by_warehouse`, and adds
/// `held` (int, units) to `stock_level` and `stock_by_warehouse` tables created before held
/// figures were kept (`null` until the SKU's next hold event: readers then count its rows).
pub async fn migrate(session: &Session, config: &CassandraSinkConfig) -> Result<(), SinkError> {
    let ks = &config.keyspace;
    let statements = [
        format!(
            "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = \
             {{'class': 'SimpleStrategy', 'replication_factor': {}}}",
            config.replication_factor
        ),
        // Holds of one SKU share a partition; expired rows are dropped by TTL and compaction
        // (TimeWindowCompactionStrategy would suit a TTL-only table; deletes keep STCS here).
        // Only point reads by (sku, order_id) read it: a SKU's figures are in stock_level.
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.reservation (sku text, order_id text, quantity int, \
             expires_at timestamp, warehouse text, PRIMARY KEY ((sku), order_id)) \
             WITH gc_grace_seconds = 3600"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.stock_level (sku text PRIMARY KEY, on_hand int, \
             updated_at timestamp, held int)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.stock_by_warehouse (sku text, warehouse text, \
             on_hand int, updated_at timestamp, held int, PRIMARY KEY ((sku), warehouse))"
        ),
    ];
    // Several migrations may run at once (the API and the sink of one process, or instances):
    // fresh tables are created with every column, so concurrent creators agree, and each step
    // waits for schema agreement before the next reads or alters what it made.
    for statement in statements {
        session.query_unpaged(statement, &[]).await.map_err(cql)?;
        session.await_schema_agreement().await.map_err(cql)?;
    }
    // Tables from before warehouses and before held figures get their columns.
    add_column(session, ks, "reservation", "warehouse", "text").await?;
    add_column(session, ks, "stock_level", "held", "int").await?;
    add_column(session, ks, "stock_by_warehouse", "held", "int").await?;
    Ok(())
}

/// Adds `column` to `{ks}.{table}` (again if a concurrent schema change lost it), until the
/// server's live table has it. `system_schema` is not the test: with several processes altering
/// at once it listed the column while statements naming it were still refused ("Undefined
/// column name warehouse"); preparing one is.
async fn add_column(
    session: &Session,
    ks: &str,
    table: &str,
    column: &str,
    cql_type: &str,
) -> Result<(), SinkError> {
    let probe = format!("SELECT {column} FROM {ks}.{table} LIMIT 1");
    let mut attempt = 0;
    while !can_prepare(session, &probe).await? {
        attempt += 1;
        let added = session
            .query_unpaged(
                format!("ALTER TABLE {ks}.{table} ADD {column} {cql_type}"),
                &[],
            )
            .await;
        session.await_schema_agreement().await.map_err(cql)?;
        if attempt >= 5 && !can_prepare(session, &probe).await? {
            return Err(SinkError::Cassandra(format!(
                "{ks}.{table} still has no {column} column after {attempt} attempts (last: {})",
                added.map_or_else(|e| e.to_string(), |_| "applied".to_owned())
            )));
        }
        if attempt > 1 {
            tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
        }
    }
    Ok(())
}

/// Whether the server accepts `statement` (`false`: it names a column the live table lacks).
async fn can_prepare(session: &Session, statement: &str) -> Result<bool, SinkError> {
    match session.prepare(statement).await {
        Ok(_) => Ok(true),
        Err(e) if e.to_string().contains("Undefined column") => Ok(false),
        Err(e) => Err(cql(e)),
    }
}

#[derive(Debug)]
struct Statements {
    insert_hold: PreparedStatement,
    delete_hold: PreparedStatement,
    set_stock: PreparedStatement,
    set_warehouse_stock: PreparedStatement,
    set_held: PreparedStatement,
    set_warehouse_held: PreparedStatement,
}

impl Statements {
    async fn prepare(session: &Session, ks: &str) -> Result<Self, SinkError> {
        Ok(Self {
            insert_hold: session
                .prepare(format!(
                    "INSERT INTO {ks}.reservation (sku, order_id, quantity, expires_at, \
                     warehouse) VALUES (?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?"
                ))
                .await
                .map_err(cql)?,
            delete_hold: session
                .prepare(format!(
                    "DELETE FROM {ks}.reservation USING TIMESTAMP ? WHERE sku = ? AND order_id = ?"
                ))
                .await
                .map_err(cql)?,
            set_stock: session
                .prepare(format!(
                    "INSERT INTO {ks}.stock_level (sku, on_hand, updated_at) VALUES (?, ?, ?) \
                     USING TIMESTAMP ?"
                ))
                .await
                .map_err(cql)?,
            set_warehouse_stock: session
                .prepare(format!(
                    "INSERT INTO {ks}.stock_by_warehouse (sku, warehouse, on_hand, updated_at) \
                     VALUES (?, ?, ?, ?) USING TIMESTAMP ?"
                ))
                .await
                .map_err(cql)?,
            set_held: session
                .prepare(format!(
                    "UPDATE {ks}.stock_level USING TIMESTAMP ? SET held = ? WHERE sku = ?"
                ))
                .await
                .map_err(cql)?,
            set_warehouse_held: session
                .prepare(format!(
                    "UPDATE {ks}.stock_by_warehouse USING TIMESTAMP ? SET held = ? \
                     WHERE sku = ? AND warehouse = ?"
                ))
                .await
                .map_err(cql)?,
        })
    }
}

/// The sink's prepared writes, to apply [`Write`]s as [`run`] does (no conditional writes:
/// upserts and deletes with a fixed write time, so applying one twice — a retry of a write that
/// timed out after it applied — changes nothing).
#[derive(Debug)]
pub struct Writer {
    statements: Statements,
}

impl Writer {
    /// Prepares the writes against `keyspace` (migrated).
    pub async fn prepare(session: &Session, keyspace: &str) -> Result<Self, SinkError> {
        Ok(Self {
            statements: Statements::prepare(session, keyspace).await?,
        })
    }

    /// Applies `write` once (no retry). Errors: [`SinkError::Refused`] for a write Cassandra
    /// refuses for its values, [`SinkError::Cassandra`] otherwise.
    pub async fn apply(&self, session: &Session, write: &Write) -> Result<(), SinkError> {
        apply(session, &self.statements, write).await
    }
}

/// One write the sink makes for one event (pure: tested without Cassandra).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Upsert the hold with `ttl_s` seconds left.
    Hold {
        sku: String,
        order_id: String,
        quantity: i32,
        expires_at_ms: i64,
        ttl_s: i32,
        at_us: i64,
        warehouse: String,
    },
    DeleteHold {
        sku: String,
        order_id: String,
        at_us: i64,
    },
    /// `version` is the write time: the event's offset in its SKU-keyed partition.
    Stock {
        sku: String,
        on_hand: i32,
        at_ms: i64,
        version: i64,
    },
    /// On hand in one warehouse, versioned like [`Write::Stock`].
    WarehouseStock {
        sku: String,
        warehouse: String,
        on_hand: i32,
        at_ms: i64,
        version: i64,
    },
    /// Units held on the SKU (all warehouses) after an event, as inventory computed it;
    /// `version` (the event's `held_version`, µs) is the write time.
    Held {
        sku: String,
        held: i32,
        version: i64,
    },
    /// Units held in one warehouse, versioned like [`Write::Held`].
    WarehouseHeld {
        sku: String,
        warehouse: String,
        held: i32,
        version: i64,
    },
}

/// The held figures an event carries (none in events from before inventory sent them).
fn held_writes(
    sku: &str,
    warehouse: Option<&str>,
    held: Option<i32>,
    warehouse_held: Option<i32>,
    version: Option<i64>,
) -> Vec<Write> {
    let Some(version) = version else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(held) = held {
        out.push(Write::Held {
            sku: sku.to_owned(),
            held,
            version,
        });
    }
    if let Some(held) = warehouse_held {
        out.push(Write::WarehouseHeld {
            sku: sku.to_owned(),
            warehouse: warehouse.unwrap_or(DEFAULT_WAREHOUSE).to_owned(),
            held,
            version,
        });
    }
    out
}

/// The writes for a reservation reply at wall-clock `now_ms`: a held hold with life left is
/// upserted with its remaining TTL (rounded up); a lapsed one or a shortage writes no hold row.
/// The SKU's held figures the event carries are written whatever the status.
pub fn writes_for_reserved(e: &InventoryReserved, now_ms: i64) -> Vec<Write> {
    let mut out = hold_row_for_reserved(e, now_ms);
    out.extend(held_writes(
        &e.sku,
        e.warehouse.as_deref(),
        e.held,
        e.warehouse_held,
        e.held_version,
    ));
    out
}

fn hold_row_for_reserved(e: &InventoryReserved, now_ms: i64) -> Vec<Write> {
    match (e.status, e.expires_at) {
        (ReservationStatus::Held, Some(expires_at)) if expires_at > now_ms => {
            let ttl_s = (expires_at - now_ms + 999) / 1_000;
            vec![Write::Hold {
                sku: e.sku.clone(),
                order_id: e.order_id.clone(),
                quantity: e.quantity,
                expires_at_ms: expires_at,
                ttl_s: i32::try_from(ttl_s).unwrap_or(i32::MAX),
                at_us: e.occurred_at.saturating_mul(1_000),
                warehouse: e
                    .warehouse
                    .clone()
                    .unwrap_or_else(|| DEFAULT_WAREHOUSE.to_owned()),
            }]
        }
        _ => Vec::new(),
    }
}

/// A released hold's row goes; the SKU's held figures the event carries are written.
pub fn writes_for_released(e: &InventoryReleased) -> Vec<Write> {
    let mut out = vec![Write::DeleteHold {
        sku: e.sku.clone(),
        order_id: e.order_id.clone(),
        at_us: e.occurred_at.saturating_mul(1_000),
    }];
    out.extend(held_writes(
        &e.sku,
        e.warehouse.as_deref(),
        e.held,
        e.warehouse_held,
        e.held_version,
    ));
    out
}

/// Stock on hand changes; a sale (`SOLD order <id>`, `OVERSOLD order <id>`: any reason
/// [`keel_avro::records::is_sale_reason`] accepts, in any letter case) also ends the hold row of
/// the event's `correlation_id` (the order).
///
/// The stock row's write time is `offset`, the event's offset in its partition: the topic is
/// keyed by SKU, so one SKU's events are totally ordered there, and the last one wins whatever
/// the arrival order or replays. (Event times are not enough: several adjustments of one SKU
/// share a millisecond under load, and Cassandra breaks write-time ties by the larger value.)
pub fn writes_for_adjusted(e: &InventoryAdjusted, offset: i64) -> Vec<Write> {
    let at_us = e.occurred_at.saturating_mul(1_000);
    let mut out = vec![Write::Stock {
        sku: e.sku.clone(),
        on_hand: e.on_hand,
        at_ms: e.occurred_at,
        version: offset,
    }];
    if let Some(on_hand) = e.warehouse_on_hand {
        out.push(Write::WarehouseStock {
            sku: e.sku.clone(),
            warehouse: e
                .warehouse
                .clone()
                .unwrap_or_else(|| DEFAULT_WAREHOUSE.to_owned()),
            on_hand,
            at_ms: e.occurred_at,
            version: offset,
        });
    }
    if keel_avro::records::is_sale_reason(&e.reason) {
        out.push(Write::DeleteHold {
            sku: e.sku.clone(),
            order_id: e.correlation_id.clone(),
            at_us,
        });
    }
    out
}

/// Applies `write` once: [`SinkError::Refused`] if Cassandra refuses it for its values (see
/// [`refuses_the_values`]; the statement is prepared again to rule out a schema problem),
/// [`SinkError::Cassandra`] for any other failure.
async fn apply(session: &Session, st: &Statements, write: &Write) -> Result<(), SinkError> {
    let (statement, result) = execute(session, st, write).await;
    match result {
        Ok(()) => Ok(()),
        Err(e) if refuses_the_values(&e) => {
            match session.prepare(statement.get_statement()).await {
                // The table and columns are there: it is the values Cassandra refuses.
                Ok(_) => Err(SinkError::Refused(e.to_string())),
                Err(prepare) => Err(SinkError::Cassandra(format!(
                    "{e} (and the statement no longer prepares: {prepare})"
                ))),
            }
        }
        Err(e) => Err(cql(e)),
    }
}

/// Executes `write`'s statement; the statement with the outcome.
async fn execute<'s>(
    session: &Session,
    st: &'s Statements,
    write: &Write,
) -> (&'s PreparedStatement, Result<(), ExecutionError>) {
    let ts = |ms: i64| scylla::value::CqlTimestamp(ms);
    let (statement, result) = match write {
        Write::Hold {
            sku,
            order_id,
            quantity,
            expires_at_ms,
            ttl_s,
            at_us,
            warehouse,
        } => (
            &st.insert_hold,
            session
                .execute_unpaged(
                    &st.insert_hold,
                    (
                        sku,
                        order_id,
                        quantity,
                        ts(*expires_at_ms),
                        warehouse,
                        ttl_s,
                        at_us,
                    ),
                )
                .await,
        ),
        Write::DeleteHold {
            sku,
            order_id,
            at_us,
        } => (
            &st.delete_hold,
            session
                .execute_unpaged(&st.delete_hold, (at_us, sku, order_id))
                .await,
        ),
        Write::Stock {
            sku,
            on_hand,
            at_ms,
            version: at_us,
        } => (
            &st.set_stock,
            session
                .execute_unpaged(&st.set_stock, (sku, on_hand, ts(*at_ms), at_us))
                .await,
        ),
        Write::WarehouseStock {
            sku,
            warehouse,
            on_hand,
            at_ms,
            version,
        } => (
            &st.set_warehouse_stock,
            session
                .execute_unpaged(
                    &st.set_warehouse_stock,
                    (sku, warehouse, on_hand, ts(*at_ms), version),
                )
                .await,
        ),
        Write::Held { sku, held, version } => (
            &st.set_held,
            session
                .execute_unpaged(&st.set_held, (version, held, sku))
                .await,
        ),
        Write::WarehouseHeld {
            sku,
            warehouse,
            held,
            version,
        } => (
            &st.set_warehouse_held,
            session
                .execute_unpaged(&st.set_warehouse_held, (version, held, sku, warehouse))
                .await,
        ),
    };
    (statement, result.map(|_| ()))
}

/// Backoff between retries of a failing write or registry call: 100 ms doubling to 5 s.
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// `keel.error` of a dead-lettered tombstone.
pub const TOMBSTONE: &str = "a tombstone (a record without a value) on an inventory event \
                             topic: every inventory event has a value";

/// What became of one event.
enum Outcome {
    /// Applied, or dead-lettered (acknowledged by the broker): its offset may be committed.
    Done,
    /// Shutdown came first: not done, its offset is not committed.
    Shutdown,
}

/// What an event read as.
enum Decoded {
    /// The writes it makes.
    Writes(Vec<Write>),
    /// The input's fault (why): dead-letter it.
    Unusable(String),
    Shutdown,
}

/// What the sink needs for each event.
struct Sink<'a> {
    names: &'a Topics,
    codec: &'a Codec,
    session: &'a Session,
    statements: &'a Statements,
    dead_letters: &'a DeadLetters,
    shutdown: &'a CancellationToken,
}

/// Sleeps `wait`; `true` if shutdown came first.
async fn sleep_or_shutdown(shutdown: &CancellationToken, wait: Duration) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(wait) => false,
    }
}

/// Applies `write`, retrying every failure but a refusal with backoff until `shutdown`:
/// `Ok(true)` once applied, `Ok(false)` if shutdown came first, [`SinkError::Refused`] (the
/// only error) if Cassandra refuses it for its values. The writes are idempotent (upserts and
/// deletes with a fixed write time), so a retry of a write that did apply changes nothing.
async fn apply_with_retry(write: &Write, sink: &Sink<'_>) -> Result<bool, SinkError> {
    let mut backoff = BACKOFF_START;
    loop {
        match apply(sink.session, sink.statements, write).await {
            Ok(()) => return Ok(true),
            Err(e @ SinkError::Refused(_)) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, ?backoff, "cassandra write failed; retrying");
                if sleep_or_shutdown(sink.shutdown, backoff).await {
                    return Ok(false);
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// The writes of `message`'s event. A tombstone and an event that does not decode are
/// [`Decoded::Unusable`]. A registry that fails (unreachable, a 5xx) or does not know the
/// schema id yet (within `[registry].unknown_id_patience_ms` of the first miss: a replica may
/// lag) is asked again with backoff, in place, until it answers or the id's window is over
/// (then the id is the input's fault); a registry answer or schema that is Keel's own fault
/// stops the sink ([`SinkError::Decoding`]).
async fn decode(message: &BorrowedMessage<'_>, sink: &Sink<'_>) -> Result<Decoded, SinkError> {
    let topic = message.topic();
    let Some(bytes) = message.payload() else {
        return Ok(Decoded::Unusable(TOMBSTONE.to_owned()));
    };
    let codec = sink.codec;
    let mut backoff = BACKOFF_START;
    loop {
        let now = chrono::Utc::now().timestamp_millis();
        let decoded = match sink.names.base(topic).unwrap_or(topic) {
            topics::INVENTORY_RESERVED => codec
                .decode_from::<InventoryReserved>(topic, bytes)
                .await
                .map(|e| writes_for_reserved(&e, now)),
            topics::INVENTORY_RELEASED => codec
                .decode_from::<InventoryReleased>(topic, bytes)
                .await
                .map(|e| writes_for_released(&e)),
            _ => codec
                .decode_from::<InventoryAdjusted>(topic, bytes)
                .await
                .map(|e| writes_for_adjusted(&e, message.offset())),
        };
        let e = match decoded {
            Ok(writes) => return Ok(Decoded::Writes(writes)),
            Err(e) => e,
        };
        match e.fault() {
            Fault::Input => return Ok(Decoded::Unusable(e.to_string())),
            Fault::Bug => {
                return Err(SinkError::Decoding {
                    record: record_at(message),
                    source: Box::new(e),
                });
            }
            Fault::Dependency => {
                // A not-yet-known id is asked again no later than its window's end.
                let wait = e.retry_wait(backoff);
                tracing::warn!(
                    topic,
                    partition = message.partition(),
                    offset = message.offset(),
                    error = %e,
                    ?wait,
                    "cassandra sink: asking the schema registry again"
                );
                if sleep_or_shutdown(sink.shutdown, wait).await {
                    return Ok(Decoded::Shutdown);
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Applies `message`'s event, or dead-letters it if it is unusable ([`decode`]) or Cassandra
/// refuses one of its writes (the writes before that one stay: each is idempotent and stands
/// alone). A dead letter is acknowledged by the broker before this returns [`Outcome::Done`];
/// one that is not stops the sink with [`SinkError::DeadLetter`].
async fn handle(message: &BorrowedMessage<'_>, sink: &Sink<'_>) -> Result<Outcome, SinkError> {
    let why = match decode(message, sink).await? {
        Decoded::Shutdown => return Ok(Outcome::Shutdown),
        Decoded::Unusable(why) => why,
        Decoded::Writes(writes) => {
            let mut refused = None;
            for write in &writes {
                match apply_with_retry(write, sink).await {
                    Ok(true) => {}
                    Ok(false) => return Ok(Outcome::Shutdown),
                    Err(e) => {
                        refused = Some(e.to_string());
                        break;
                    }
                }
            }
            match refused {
                None => return Ok(Outcome::Done),
                Some(why) => why,
            }
        }
    };
    tracing::error!(
        topic = message.topic(),
        partition = message.partition(),
        offset = message.offset(),
        error = %why,
        "cassandra sink: dead-lettering an inventory event it cannot use"
    );
    tokio::select! {
        // Not committed: the next run reads the event again.
        () = sink.shutdown.cancelled() => Ok(Outcome::Shutdown),
        sent = sink.dead_letters.send(message, &why) => {
            sent?;
            Ok(Outcome::Done)
        }
    }
}

/// Runs the sink until `shutdown`: consumes the inventory events (read_committed), writes
/// Cassandra, commits offsets after the writes. An event it cannot use — a tombstone, one that
/// cannot be decoded (not framed, a schema id still unknown to the registry after
/// `[registry].unknown_id_patience_ms`, a schema that does not resolve), one Cassandra refuses
/// to write for its values ([`SinkError::Refused`]) — is written to the dead-letter topic by
/// `dead_letters` (`<group_id>-dlq`: its key, value and headers plus `keel.error`,
/// `keel.source.*` and `keel.processor`) and counted in `keel_sink_dead_letters_total` before
/// its offset is committed, and the sink goes on; a dead-letter write the broker does not
/// acknowledge stops the sink with [`SinkError::DeadLetter`] (the event is not passed over: a
/// restart reads it again). A failing write (timeout, unavailable) and a failing registry
/// (unreachable, or an id not known yet within its window) are retried with backoff in place,
/// until `shutdown`; a registry or schema error that is Keel's own fault stops the sink
/// ([`SinkError::Decoding`]: a bug).
pub async fn run(
    bootstrap: &str,
    names: &Topics,
    codec: Codec,
    session: Session,
    config: CassandraSinkConfig,
    dead_letters: DeadLetters,
    shutdown: CancellationToken,
) -> Result<(), SinkError> {
    migrate(&session, &config).await?;
    let st = Statements::prepare(&session, &config.keyspace).await?;
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", bootstrap)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed");
    for (k, v) in &config.consumer {
        client.set(k, v);
    }
    let consumer: StreamConsumer = client.create()?;
    let reserved = names.name(topics::INVENTORY_RESERVED);
    let released = names.name(topics::INVENTORY_RELEASED);
    let adjusted = names.name(topics::INVENTORY_ADJUSTED);
    consumer.subscribe(&[&reserved, &released, &adjusted])?;
    // Positions, not "record + 1", so the commit marker after a transaction is committed too
    // (`crate::positions`). The tick commits them, while events flow too: `select!` picks among
    // the ready branches at random, so a due tick is taken within an event or two.
    let mut committed = Vec::new();
    let mut tick = tokio::time::interval(COMMIT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sink = Sink {
        names,
        codec: &codec,
        session: &session,
        statements: &st,
        dead_letters: &dead_letters,
        shutdown: &shutdown,
    };
    loop {
        // Between events every event received is applied: the positions are safe to commit.
        let message = tokio::select! {
            _ = shutdown.cancelled() => {
                final_commit(&consumer, None, &mut committed);
                return Ok(());
            }
            _ = tick.tick() => {
                let commit = crate::positions::commit_positions(
                    &consumer,
                    CommitMode::Sync,
                    None,
                    &mut committed,
                );
                if let Err(e) = commit {
                    tracing::warn!(error = %e, "cassandra sink: offset commit failed; retrying");
                }
                continue;
            }
            m = consumer.recv() => m?,
        };
        if let Outcome::Shutdown = handle(&message, &sink).await? {
            let unprocessed = (message.topic(), message.partition(), message.offset());
            final_commit(&consumer, Some(unprocessed), &mut committed);
            return Ok(());
        }
    }
}

/// How often the sink commits its positions (the tick), while events flow and while idle. An offset
/// commit per event was most of the broker's requests for this group (~80/s at 30 checkouts/s,
/// docs/BENCHMARKS.md); a crash re-applies at most this much, which changes nothing (every
/// write carries a fixed write time). Kafka's consumers auto-commit every 5 s by default.
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// The last commit on shutdown: every event received is applied but `unprocessed` (topic,
/// partition, offset), if any. A failure is logged, not returned: the next run re-applies
/// what was not committed, which changes nothing.
fn final_commit(
    consumer: &StreamConsumer,
    unprocessed: Option<(&str, i32, i64)>,
    committed: &mut Vec<((String, i32), i64)>,
) {
    let commit =
        crate::positions::commit_positions(consumer, CommitMode::Sync, unprocessed, committed);
    if let Err(e) = commit {
        tracing::warn!(error = %e, "cassandra sink: last offset commit failed");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use scylla::errors::{BadQuery, DbError, ExecutionError, RequestAttemptError, WriteType};

    use super::refuses_the_values;

    fn db(error: DbError, message: &str) -> ExecutionError {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(error, message.to_owned()))
    }

    #[test]
    fn an_invalid_request_and_a_key_too_long_are_refusals_of_the_values() {
        assert!(refuses_the_values(&db(
            DbError::Invalid,
            "Key may not be empty"
        )));
        assert!(refuses_the_values(&ExecutionError::BadQuery(
            BadQuery::ValuesTooLongForKey(70_000, 65_535)
        )));
    }

    #[test]
    fn timeouts_unavailable_and_overloaded_nodes_are_not_refusals() {
        for transient in [
            db(DbError::Overloaded, "overloaded"),
            db(DbError::IsBootstrapping, "bootstrapping"),
            db(
                DbError::Unavailable {
                    consistency: scylla::statement::Consistency::One,
                    required: 1,
                    alive: 0,
                },
                "unavailable",
            ),
            db(
                DbError::WriteTimeout {
                    consistency: scylla::statement::Consistency::One,
                    received: 0,
                    required: 1,
                    write_type: WriteType::Simple,
                },
                "timed out",
            ),
            ExecutionError::RequestTimeout(Duration::from_secs(12)),
            ExecutionError::EmptyPlan,
        ] {
            assert!(!refuses_the_values(&transient), "{transient}");
        }
    }
}
