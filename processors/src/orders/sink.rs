//! The order sink's I/O: consume `order.decisions.v1` and apply each decision to MySQL.
//!
//! Batching: the decisions already received when the sink takes a record share its MySQL
//! transaction (up to `BATCH_MAX`, never waiting to fill one), so a busy sink pays one commit
//! (one redo-log flush) per batch instead of one per decision; a failed batch is rolled back and
//! its records applied one by one with retries.
//!
//! Delivery: at-least-once from Kafka (offsets committed after the SQL transaction commits),
//! exactly-once in MySQL: the decision id is `order_status_history`'s primary key, so a replayed
//! decision inserts nothing and is skipped whole, and a decision older than the order's
//! `last_sequence` writes nothing. The outbox row is written in the same transaction.
//!
//! Bad input: a record that cannot be decoded (including a schema id the registry still does
//! not know after `[registry].unknown_id_patience_ms`), makes no rows, or has no value (a
//! tombstone: the decisions topic is an event topic, not a compacted table) goes to the
//! dead-letter topic `<group id>-dlq` ([`crate::dead_letter`]) before the offset is committed
//! past it.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::FutureExt as _;
use keel_avro::records::OrderDecision;
use keel_avro::{Codec, Fault};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sqlx::{MySql, MySqlPool, Transaction};
use tokio_util::sync::CancellationToken;

use crate::dead_letter::DeadLetters;
use crate::positions::{commit_positions, positions};

use super::logic::{
    CurrentOrder, OrderWrite, OutboxEvent, Plan, Rows, parse_status, plan_decision,
};
use super::{Error, Result, sql};

/// What applying one decision did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Rows written (and an outbox row unless the decision has no event).
    Written { outbox: bool },
    /// The decision id was stored before: nothing written.
    Duplicate,
    /// The order already applied a decision at or after this sequence: nothing written.
    Stale,
}

/// Backoff between retries of a failed transaction: 100 ms doubling to 5 s.
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// At most this many decisions share one MySQL transaction: those already received when the
/// sink takes the next record (it never waits to fill a batch).
const BATCH_MAX: usize = 256;
/// How often an idle sink commits its position (past a transaction's commit marker).
const COMMIT_IDLE_INTERVAL: Duration = Duration::from_secs(1);

/// Consume `topic` (the saga's `order.decisions.v1`) as consumer group `group_id` until
/// `shutdown`, applying each decision with [`apply_decision`] and committing its offset after
/// the transaction. A record that cannot be decoded, makes no rows or is a tombstone
/// ([`Error::Tombstone`]): the input's fault, is written to the dead-letter topic by
/// `dead_letters` (`<group_id>-dlq`: its key, value and headers plus `keel.error`,
/// `keel.source.*` and `keel.processor`), counted in `keel_sink_dead_letters_total`, and only
/// then passed over: its offset is committed after the broker acknowledged the copy (a failed
/// write is retried with backoff, the record is never dropped). A database or registry failure
/// (including a schema id the registry does not know yet, within
/// `[registry].unknown_id_patience_ms`) is retried with backoff (the record is not skipped); a
/// bug (Keel's own schemas) stops the sink with the error.
#[allow(clippy::too_many_arguments)]
pub async fn run_order_sink(
    bootstrap: &str,
    group_id: &str,
    topic: &str,
    names: &crate::topics::Topics,
    codec: Codec,
    pool: MySqlPool,
    dead_letters: DeadLetters,
    shutdown: CancellationToken,
) -> Result<()> {
    run_order_sink_with(
        bootstrap,
        group_id,
        topic,
        names,
        &BTreeMap::new(),
        codec,
        pool,
        dead_letters,
        shutdown,
    )
    .await
}

/// [`run_order_sink`] with extra librdkafka consumer settings, applied last (e.g.
/// `group.instance.id`, so a restarted instance takes its partitions back at once instead of
/// after the session timeout).
#[allow(clippy::too_many_arguments)]
pub async fn run_order_sink_with(
    bootstrap: &str,
    group_id: &str,
    topic: &str,
    names: &crate::topics::Topics,
    consumer_settings: &BTreeMap<String, String>,
    codec: Codec,
    pool: MySqlPool,
    dead_letters: DeadLetters,
    shutdown: CancellationToken,
) -> Result<()> {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("partition.assignment.strategy", "cooperative-sticky");
    for (k, v) in consumer_settings {
        client.set(k, v);
    }
    let consumer: StreamConsumer = client.create().map_err(|source| Error::Kafka {
        operation: "creating the order sink's consumer",
        source,
    })?;
    consumer
        .subscribe(&[topic])
        .map_err(|source| Error::Kafka {
            operation: "subscribing to the decisions topic",
            source,
        })?;
    tracing::info!(topic, group_id, "order sink started");
    let mut backoff = BACKOFF_START;
    // Positions, not "record + 1", so the commit marker after a transaction is committed too
    // (`crate::positions`); the tick commits it while idle.
    let mut committed = Vec::new();
    let mut tick = tokio::time::interval(COMMIT_IDLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unprocessed: Vec<(String, i32, i64)> = Vec::new();
    let mut batch: Vec<BorrowedMessage<'_>> = Vec::with_capacity(BATCH_MAX);
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {
                // Every record received is applied here: the position is safe to commit.
                if let Err(e) = commit_positions(&consumer, CommitMode::Sync, None, &mut committed) {
                    tracing::warn!(error = %e, "order sink: offset commit failed");
                }
                continue;
            }
            m = consumer.recv() => m,
        };
        let message = match message {
            Ok(m) => {
                backoff = BACKOFF_START;
                m
            }
            Err(e) => {
                tracing::warn!(error = %e, "order sink: consumer error; retrying");
                if sleep_or_shutdown(&shutdown, &mut backoff).await {
                    break;
                }
                continue;
            }
        };
        // Whatever else has arrived already joins this record's transaction (never waits).
        batch.clear();
        batch.push(message);
        while batch.len() < BATCH_MAX {
            match consumer.recv().now_or_never() {
                Some(Ok(m)) => batch.push(m),
                // An error is met again (and handled) by the next `recv` above.
                Some(Err(_)) | None => break,
            }
        }
        let sink = Sink {
            topic,
            names,
            codec: &codec,
            pool: &pool,
            dead_letters: &dead_letters,
            shutdown: &shutdown,
        };
        let done = handle_batch(&batch, &sink).await?;
        if done < batch.len() {
            // Not applied: the final commit stops before each partition's first such record.
            unprocessed = batch[done..]
                .iter()
                .map(|m| (m.topic().to_owned(), m.partition(), m.offset()))
                .collect();
            break;
        }
        if let Err(e) = commit_positions(&consumer, CommitMode::Async, None, &mut committed) {
            // The next commit covers it; a replay is absorbed by the decision id.
            tracing::warn!(error = %e, "order sink: offset commit failed");
        }
    }
    drop(batch);
    let result = if unprocessed.is_empty() {
        commit_positions(&consumer, CommitMode::Sync, None, &mut committed)
    } else {
        commit_before(&consumer, &unprocessed)
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "order sink: final offset commit");
    }
    tracing::info!(topic, "order sink stopped");
    Ok(())
}

/// Commits the consumer's positions, each partition capped at its first record in
/// `unprocessed` (topic, partition, offset: received, not applied).
fn commit_before(consumer: &StreamConsumer, unprocessed: &[(String, i32, i64)]) -> KafkaResult<()> {
    let mut tpl = TopicPartitionList::new();
    for ((t, p), position) in positions(consumer, None)? {
        let cap = unprocessed
            .iter()
            .filter(|(ut, up, _)| *ut == t && *up == p)
            .map(|(_, _, o)| *o)
            .min();
        let offset = cap.map_or(position, |c| c.min(position));
        tpl.add_partition_offset(&t, p, Offset::Offset(offset))?;
    }
    if tpl.count() == 0 {
        return Ok(());
    }
    consumer.commit(&tpl, CommitMode::Sync)
}

/// What handling a record needs.
struct Sink<'a> {
    topic: &'a str,
    names: &'a crate::topics::Topics,
    codec: &'a Codec,
    pool: &'a MySqlPool,
    dead_letters: &'a DeadLetters,
    shutdown: &'a CancellationToken,
}

/// Apply `batch` (records in the order received) in one MySQL transaction ([`apply_batch`]);
/// when that fails for a dependency (database, registry), roll it back and apply the records
/// one by one with retries ([`handle_with_retry`]). A record that cannot be decoded or makes no
/// rows is dead-lettered ([`dead_letter`]). Returns how many records, from the start, are done
/// (applied or dead-lettered): fewer than `batch.len()` only when shutdown came first.
async fn handle_batch(batch: &[BorrowedMessage<'_>], sink: &Sink<'_>) -> Result<usize> {
    let topic = sink.topic;
    let mut decisions = Vec::with_capacity(batch.len());
    for (i, message) in batch.iter().enumerate() {
        let Some(payload) = message.payload() else {
            // A tombstone: dead-lettered by the one-by-one path.
            return handle_each(batch, sink).await;
        };
        match sink
            .codec
            .decode_from::<OrderDecision>(topic, payload)
            .await
        {
            Ok(decision) => decisions.push((i, message, decision)),
            // Dead-lettered (input) or retried (dependency) by the one-by-one path.
            Err(_) => return handle_each(batch, sink).await,
        }
    }
    let refs: Vec<&OrderDecision> = decisions.iter().map(|(_, _, d)| d).collect();
    match apply_batch(sink.pool, sink.codec, sink.names, &refs).await {
        Ok(applied) => {
            for ((i, message, decision), applied) in decisions.iter().zip(applied) {
                match applied {
                    Ok(applied) => tracing::debug!(
                        partition = message.partition(),
                        offset = message.offset(),
                        ?applied,
                        "order decision"
                    ),
                    Err(e) => {
                        tracing::error!(
                            error = %e,
                            topic,
                            partition = message.partition(),
                            offset = message.offset(),
                            decision_id = %decision.decision_id,
                            "order sink: dead-lettering a record it cannot apply"
                        );
                        if !dead_letter(message, &e, sink).await {
                            // The batch's rows are committed; a replay of the records before
                            // this one is absorbed by their decision ids.
                            return Ok(*i);
                        }
                    }
                }
            }
            Ok(batch.len())
        }
        Err(e) if e.fault() == Fault::Bug => Err(e),
        Err(e) => {
            tracing::warn!(error = %e, records = batch.len(),
                "order sink: a batch failed; applying its records one by one");
            handle_each(batch, sink).await
        }
    }
}

/// [`handle_with_retry`] for each record of `batch` in order; how many are done.
async fn handle_each(batch: &[BorrowedMessage<'_>], sink: &Sink<'_>) -> Result<usize> {
    for (i, message) in batch.iter().enumerate() {
        if !handle_with_retry(message, sink).await? {
            return Ok(i);
        }
    }
    Ok(batch.len())
}

/// Apply one record, retrying dependency failures until it is done or shutdown is asked.
/// `Ok(true)`: done (applied or dead-lettered); `Ok(false)`: shutdown before it was done.
async fn handle_with_retry(message: &BorrowedMessage<'_>, sink: &Sink<'_>) -> Result<bool> {
    let topic = sink.topic;
    let Some(payload) = message.payload() else {
        let e = Error::Tombstone {
            topic: message.topic().to_owned(),
        };
        tracing::error!(
            error = %e,
            topic,
            partition = message.partition(),
            offset = message.offset(),
            "order sink: dead-lettering a record it cannot apply"
        );
        return Ok(dead_letter(message, &e, sink).await);
    };
    let mut backoff = BACKOFF_START;
    loop {
        let result = match sink
            .codec
            .decode_from::<OrderDecision>(topic, payload)
            .await
        {
            Ok(decision) => apply_decision(sink.pool, sink.codec, sink.names, &decision).await,
            Err(e) => Err(Error::Avro(e)),
        };
        match result {
            Ok(applied) => {
                tracing::debug!(
                    partition = message.partition(),
                    offset = message.offset(),
                    ?applied,
                    "order decision"
                );
                return Ok(true);
            }
            Err(e) => match e.fault() {
                Fault::Input => {
                    tracing::error!(
                        error = %e,
                        topic,
                        partition = message.partition(),
                        offset = message.offset(),
                        "order sink: dead-lettering a record it cannot apply"
                    );
                    return Ok(dead_letter(message, &e, sink).await);
                }
                Fault::Bug => return Err(e),
                Fault::Dependency => {
                    tracing::warn!(error = %e, "order sink: retrying a decision");
                    // A schema id the registry does not know yet is asked again no later than
                    // the end of its window.
                    if let Error::Avro(e) = &e {
                        backoff = e.retry_wait(backoff);
                    }
                    if sleep_or_shutdown(sink.shutdown, &mut backoff).await {
                        return Ok(false);
                    }
                }
            },
        }
    }
}

/// Writes `message` to the dead-letter topic (why: `error`), retrying a failed write with
/// backoff as for any dependency: `true` once the broker acknowledged it, `false` if shutdown
/// came first (the record is then not done: its offset is not committed; a copy the broker
/// takes after all is a duplicate dead letter, not a loss).
async fn dead_letter(message: &BorrowedMessage<'_>, error: &Error, sink: &Sink<'_>) -> bool {
    let why = error.to_string();
    let mut backoff = BACKOFF_START;
    loop {
        let sent = tokio::select! {
            () = sink.shutdown.cancelled() => return false,
            sent = sink.dead_letters.send(message, &why) => sent,
        };
        match sent {
            Ok(()) => return true,
            Err(e) => {
                tracing::warn!(error = %e, "order sink: dead-letter write failed; retrying");
                if sleep_or_shutdown(sink.shutdown, &mut backoff).await {
                    return false;
                }
            }
        }
    }
}

/// Sleep for `backoff` (then double it up to the maximum); `true` if shutdown came first.
async fn sleep_or_shutdown(shutdown: &CancellationToken, backoff: &mut Duration) -> bool {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(wait) => false,
    }
}

/// Apply one decision in one MySQL transaction: the history row (its primary key, the decision
/// id, makes a replay a [`Applied::Duplicate`]), the order and its items or the status change,
/// the cart marked `ORDERED` on `PENDING` (given back on `CANCELLED`/`REJECTED`: claim deleted,
/// cart `OPEN` again), and the outbox row with the `codec`-encoded event.
/// Errors: [`Error::InvalidDecision`] (input), [`Error::Sql`] and [`Error::Avro`] (retry).
pub async fn apply_decision(
    pool: &MySqlPool,
    codec: &Codec,
    names: &crate::topics::Topics,
    decision: &OrderDecision,
) -> Result<Applied> {
    let mut tx = pool.begin().await.map_err(sql("beginning a transaction"))?;
    let applied = apply_in(&mut tx, codec, names, decision).await?;
    match applied {
        Applied::Written { .. } => tx.commit().await.map_err(sql("committing a decision"))?,
        Applied::Duplicate | Applied::Stale => tx.rollback().await.map_err(sql("rolling back"))?,
    }
    Ok(applied)
}

/// Apply `decisions` (in order; one order's decisions may follow each other) in ONE MySQL
/// transaction, each as [`apply_decision`] would: one commit (one log flush) for the whole
/// batch instead of one per decision. The outer error is a failure of the transaction (SQL,
/// registry: nothing was written, retry; or a bug); the inner per decision is the input's fault
/// ([`Error::InvalidDecision`]): that decision wrote nothing and the others are kept.
pub async fn apply_batch(
    pool: &MySqlPool,
    codec: &Codec,
    names: &crate::topics::Topics,
    decisions: &[&OrderDecision],
) -> Result<Vec<Result<Applied>>> {
    let mut tx = pool.begin().await.map_err(sql("beginning a transaction"))?;
    let mut results = Vec::with_capacity(decisions.len());
    for decision in decisions {
        match apply_in(&mut tx, codec, names, decision).await {
            Ok(applied) => results.push(Ok(applied)),
            Err(e) if e.fault() == Fault::Input => results.push(Err(e)),
            Err(e) => return Err(e),
        }
    }
    tx.commit()
        .await
        .map_err(sql("committing a batch of decisions"))?;
    Ok(results)
}

/// One decision's reads and writes inside `tx`. [`Applied::Duplicate`] and [`Applied::Stale`]
/// wrote nothing (a duplicate's failed history insert is undone by MySQL alone); an error of
/// the input's fault comes before any write.
async fn apply_in(
    tx: &mut Transaction<'static, MySql>,
    codec: &Codec,
    names: &crate::topics::Topics,
    decision: &OrderDecision,
) -> Result<Applied> {
    let current = load_current(tx, &decision.order_id).await?;
    let plan = plan_decision(current, decision, uuid::Uuid::new_v4().to_string())?;
    let rows = match plan {
        Plan::Stale { last_sequence } => {
            tracing::debug!(
                decision_id = %decision.decision_id,
                sequence = decision.sequence,
                last_sequence,
                "order sink: stale decision"
            );
            return Ok(Applied::Stale);
        }
        Plan::Apply(rows) => rows,
    };
    let payload = match &rows.outbox {
        Some(event) => Some(encode(codec, event).await?),
        None => None,
    };
    if !insert_history(tx, &rows).await? {
        return Ok(Applied::Duplicate);
    }
    write_order(tx, &rows.order).await?;
    if let Some(cart_id) = &rows.cart_ordered {
        sqlx::query(
            "UPDATE carts SET status = 'ORDERED', updated_at = UTC_TIMESTAMP(3) WHERE cart_id = ?",
        )
        .bind(cart_id)
        .execute(&mut **tx)
        .await
        .map_err(sql("marking the cart ordered"))?;
    }
    if let Some(cart_id) = &rows.cart_released {
        release_cart(tx, cart_id, &decision.order_id).await?;
    }
    if let (Some(event), Some(payload)) = (&rows.outbox, payload) {
        sqlx::query(
            "INSERT INTO order_outbox (id, aggregate_id, event_type, payload, status, created_at) \
             VALUES (?, ?, ?, ?, 'PENDING', UTC_TIMESTAMP(3))",
        )
        .bind(event.event_id())
        .bind(event.order_id())
        .bind(event.topic(names))
        .bind(payload)
        .execute(&mut **tx)
        .await
        .map_err(sql("inserting the outbox row"))?;
    }
    Ok(Applied::Written {
        outbox: rows.outbox.is_some(),
    })
}

/// Gives cart `cart_id` back when order `order_id` ended without a sale, inside the decision's
/// transaction (so a replayed decision, a duplicate, releases nothing twice): the order's claim
/// is deleted (another order's claim is left alone), and the cart turns `OPEN` again unless
/// another claim exists or another order of the cart is still `PENDING` or `CONFIRMED` (an
/// order placed straight on Kafka has no claim row).
async fn release_cart(
    tx: &mut Transaction<'static, MySql>,
    cart_id: &str,
    order_id: &str,
) -> Result<()> {
    sqlx::query("DELETE FROM order_cart_claims WHERE cart_id = ? AND order_id = ?")
        .bind(cart_id)
        .bind(order_id)
        .execute(&mut **tx)
        .await
        .map_err(sql("releasing the cart's claim"))?;
    sqlx::query(
        "UPDATE carts SET status = 'OPEN', updated_at = UTC_TIMESTAMP(3) \
         WHERE cart_id = ? AND status = 'ORDERED' \
         AND NOT EXISTS (SELECT 1 FROM order_cart_claims c WHERE c.cart_id = ?) \
         AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.cart_id = ? AND o.order_id <> ? \
         AND o.status IN ('PENDING', 'CONFIRMED'))",
    )
    .bind(cart_id)
    .bind(cart_id)
    .bind(cart_id)
    .bind(order_id)
    .execute(&mut **tx)
    .await
    .map_err(sql("reopening the cart"))?;
    Ok(())
}

async fn encode(codec: &Codec, event: &OutboxEvent) -> Result<Vec<u8>> {
    Ok(match event {
        OutboxEvent::Created(e) => codec.encode(e).await?,
        OutboxEvent::StatusChanged(e) => codec.encode(e).await?,
    })
}

async fn load_current(
    tx: &mut Transaction<'static, MySql>,
    order_id: &str,
) -> Result<Option<CurrentOrder>> {
    let row: Option<(String, i32)> =
        sqlx::query_as("SELECT status, last_sequence FROM orders WHERE order_id = ? FOR UPDATE")
            .bind(order_id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(sql("reading the order"))?;
    row.map(|(status, last_sequence)| {
        parse_status(&status)
            .map(|status| CurrentOrder {
                status,
                last_sequence,
            })
            .ok_or(Error::CorruptRow {
                table: "orders",
                detail: format!("order {order_id} has status {status:?}"),
            })
    })
    .transpose()
}

/// `false` if the decision id is already stored.
async fn insert_history(tx: &mut Transaction<'static, MySql>, rows: &Rows) -> Result<bool> {
    let h = &rows.history;
    let result = sqlx::query(
        "INSERT INTO order_status_history (decision_id, order_id, sequence, from_status, \
         to_status, reason, detail, decided_at, source_topic, source_partition, source_offset) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&h.decision_id)
    .bind(&h.order_id)
    .bind(h.sequence)
    .bind(h.from_status)
    .bind(h.to_status)
    .bind(&h.reason)
    .bind(&h.detail)
    .bind(h.decided_at)
    .bind(&h.source_topic)
    .bind(h.source_partition)
    .bind(h.source_offset)
    .execute(&mut **tx)
    .await;
    match result {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
        Err(e) => Err(Error::Sql {
            operation: "inserting the status history",
            source: e,
        }),
    }
}

async fn write_order(tx: &mut Transaction<'static, MySql>, write: &OrderWrite) -> Result<()> {
    match write {
        OrderWrite::Insert { order, items } => {
            let ship = order.shipping_address.as_ref();
            sqlx::query(
                "INSERT INTO orders (order_id, customer_id, cart_id, status, reason, detail, \
                 total_minor, currency, ship_name, ship_line1, ship_line2, ship_city, \
                 ship_postal_code, ship_country, payment_method, last_sequence, created_at, \
                 updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&order.order_id)
            .bind(&order.customer_id)
            .bind(&order.cart_id)
            .bind(order.status)
            .bind(&order.reason)
            .bind(&order.detail)
            .bind(order.total_minor)
            .bind(&order.currency)
            .bind(ship.map(|a| a.name.as_str()))
            .bind(ship.map(|a| a.line1.as_str()))
            .bind(ship.and_then(|a| a.line2.as_deref()))
            .bind(ship.map(|a| a.city.as_str()))
            .bind(ship.map(|a| a.postal_code.as_str()))
            .bind(ship.map(|a| a.country.as_str()))
            .bind(&order.payment_method)
            .bind(order.last_sequence)
            .bind(order.created_at)
            .bind(order.created_at)
            .execute(&mut **tx)
            .await
            .map_err(sql("inserting the order"))?;
            for item in items {
                sqlx::query(
                    "INSERT INTO order_items (order_id, line_no, sku, quantity, \
                     unit_price_minor, currency) VALUES (?, ?, ?, ?, ?, ?)",
                )
                .bind(&item.order_id)
                .bind(item.line_no)
                .bind(&item.sku)
                .bind(item.quantity)
                .bind(item.unit_price_minor)
                .bind(&item.currency)
                .execute(&mut **tx)
                .await
                .map_err(sql("inserting an order item"))?;
            }
        }
        OrderWrite::Update(u) => {
            sqlx::query(
                "UPDATE orders SET status = ?, reason = ?, detail = ?, last_sequence = ?, \
                 updated_at = ? WHERE order_id = ? AND last_sequence < ?",
            )
            .bind(u.status)
            .bind(&u.reason)
            .bind(&u.detail)
            .bind(u.sequence)
            .bind(u.updated_at)
            .bind(&u.order_id)
            .bind(u.sequence)
            .execute(&mut **tx)
            .await
            .map_err(sql("updating the order status"))?;
        }
    }
    Ok(())
}
