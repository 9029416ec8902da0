//! [`run`]: the payment service's Kafka side. A `read_committed` consumer on the command topic;
//! commands with the same key (the order id) run one after the other, commands of different
//! orders concurrently, at most `max_in_flight` at once (a semaphore whose permit every received
//! command holds until it is done, queued or running). Offsets are committed by hand, after the
//! ledger transaction, never past an unfinished command (`offsets.rs`); a crash replays
//! the unfinished tail, which the ledger absorbs. A bad command ([`Action::Skip`]) is finished
//! only once its dead-letter copy (`<group id>-dlq`, [`crate::dead_letter`]) is acknowledged.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use keel_avro::Codec;
use keel_avro::records::PaymentCommand;
use prometheus::Registry;
use rdkafka::ClientConfig;
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Message, OwnedMessage};
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::metrics::PaymentMetrics;
use super::offsets::{OffsetTracker, Tp};
use super::service::Service;
use super::{Action, Error, PaymentConfig, Result, ledger, reconcile};
use crate::dead_letter::DeadLetters;

type Tracker = Arc<Mutex<OffsetTracker>>;

fn lock(tracker: &Tracker) -> MutexGuard<'_, OffsetTracker> {
    // The tracker's methods leave it consistent before anything can panic.
    tracker.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Commits what is done on the partitions being revoked, then forgets them.
struct RebalanceContext {
    tracker: Tracker,
}

impl ClientContext for RebalanceContext {}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(revoked) = rebalance {
            let tps: Vec<Tp> = revoked
                .elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect();
            let positions = lock(&self.tracker).take_committable_of(&tps);
            if let Some(tpl) = positions_list(&positions)
                && let Err(e) = consumer.commit(&tpl, CommitMode::Sync)
            {
                tracing::warn!(error = %e, "commit on revoke failed; the next owner replays");
            }
            lock(&self.tracker).revoke(&tps);
        }
    }
}

fn positions_list(positions: &[(Tp, i64)]) -> Option<TopicPartitionList> {
    if positions.is_empty() {
        return None;
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in positions {
        if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
            tracing::warn!(error = %e, topic, partition, "bad commit position");
        }
    }
    Some(tpl)
}

/// Consume `commands_topic` (`payments.commands.v1`, Avro [`PaymentCommand`], key: order id)
/// from `bootstrap` in `config.group_id` until `shutdown`; apply the ledger migrations first,
/// run the reconciler of timed-out authorizations alongside, and register the payment metrics
/// into `registry` (with `keel_sink_dead_letters_total{sink="payment"}`: a bad command goes to
/// `<config.group_id>-dlq`, written through `bootstrap` with `config.client`). Returns when `shutdown` is cancelled (after letting running commands finish
/// for up to `shutdown_grace_ms` and committing what is done), or with the error that stopped it
/// (configuration, migration, a bug).
pub async fn run(
    config: PaymentConfig,
    bootstrap: &str,
    codec: Codec,
    pg: PgPool,
    commands_topic: &str,
    registry: &Registry,
    shutdown: CancellationToken,
) -> Result<()> {
    config.validate()?;
    ledger::migrate(&pg).await?;
    let metrics = PaymentMetrics::register(registry)?;
    let dead_letters = DeadLetters::new(
        bootstrap,
        &config.client,
        &config.group_id,
        "payment",
        registry,
    )?;
    let service = Arc::new(Service::new(&config, pg, codec.clone(), metrics.clone())?);
    let tracker: Tracker = Arc::default();

    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", bootstrap)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("partition.assignment.strategy", "cooperative-sticky");
    for (k, v) in &config.client {
        client.set(k, v);
    }
    let consumer: StreamConsumer<RebalanceContext> = client
        .create_with_context(RebalanceContext {
            tracker: tracker.clone(),
        })
        .map_err(|source| Error::Kafka {
            operation: "create the payment consumer",
            source,
        })?;
    consumer
        .subscribe(&[commands_topic])
        .map_err(|source| Error::Kafka {
            operation: "subscribe to the payment commands",
            source,
        })?;

    let stop_reconciler = shutdown.child_token();
    let reconciler = tokio::spawn(reconcile::run(
        (*service).clone(),
        Duration::from_millis(config.reconcile_interval_ms),
        stop_reconciler.clone(),
    ));
    tracing::info!(
        topic = commands_topic,
        group = config.group_id,
        "payment worker started"
    );

    let mut worker = Worker {
        consumer,
        tracker,
        service,
        codec,
        metrics,
        dead_letters,
        topic: commands_topic.to_owned(),
        permits: Arc::new(Semaphore::new(config.max_in_flight)),
        waiting: HashMap::new(),
        jobs: JoinSet::new(),
        shutdown: shutdown.clone(),
    };
    let result = worker.consume(&config).await;
    stop_reconciler.cancel();
    worker
        .drain(Duration::from_millis(config.shutdown_grace_ms))
        .await;
    worker.commit(CommitMode::Sync);
    if let Err(e) = reconciler.await {
        tracing::warn!(error = %e, "the reconciler task failed");
    }
    tracing::info!("payment worker stopped");
    result
}

/// A received command that waits for its key or runs.
struct Received {
    message: OwnedMessage,
    permit: OwnedSemaphorePermit,
}

/// What a command task reports back.
struct Done {
    key: String,
    tp: Tp,
    offset: i64,
    /// False when it was abandoned at shutdown: it must not be committed.
    finished: bool,
    /// An error that must stop the service.
    fatal: Option<Error>,
    _permit: OwnedSemaphorePermit,
}

struct Worker {
    consumer: StreamConsumer<RebalanceContext>,
    tracker: Tracker,
    service: Arc<Service>,
    codec: Codec,
    metrics: PaymentMetrics,
    dead_letters: DeadLetters,
    topic: String,
    permits: Arc<Semaphore>,
    /// Keys with a running command → the commands waiting behind it.
    waiting: HashMap<String, VecDeque<Received>>,
    jobs: JoinSet<Done>,
    shutdown: CancellationToken,
}

impl Worker {
    async fn consume(&mut self, config: &PaymentConfig) -> Result<()> {
        let mut commit_tick =
            tokio::time::interval(Duration::from_millis(config.commit_interval_ms));
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Ok(()),
                Some(joined) = self.jobs.join_next(), if !self.jobs.is_empty() => {
                    let done = joined.map_err(|e| Error::Task(e.to_string()))?;
                    if let Some(fatal) = self.complete(done) {
                        return Err(fatal);
                    }
                }
                _ = commit_tick.tick() => self.commit(CommitMode::Async),
                received = self.consumer.recv(), if self.permits.available_permits() > 0 => {
                    match received {
                        Ok(m) => self.dispatch(m.detach()),
                        Err(e) => {
                            tracing::warn!(error = %e, "payment consumer error");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        }
    }

    fn dispatch(&mut self, message: OwnedMessage) {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            // Only this loop takes permits, and it checked one was free.
            tracing::error!("no permit for a received command; it will be replayed");
            return;
        };
        lock(&self.tracker).start(
            &(message.topic().to_owned(), message.partition()),
            message.offset(),
        );
        let key = message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        let received = Received { message, permit };
        match self.waiting.get_mut(&key) {
            Some(queue) => queue.push_back(received),
            None => {
                self.waiting.insert(key.clone(), VecDeque::new());
                self.spawn(key, received);
            }
        }
    }

    fn spawn(&mut self, key: String, received: Received) {
        let service = self.service.clone();
        let codec = self.codec.clone();
        let metrics = self.metrics.clone();
        let dead_letters = self.dead_letters.clone();
        let topic = self.topic.clone();
        let shutdown = self.shutdown.clone();
        self.jobs.spawn(async move {
            let Received { message, permit } = received;
            let tp = (message.topic().to_owned(), message.partition());
            let offset = message.offset();
            let (finished, fatal) = process(
                &service,
                &codec,
                &metrics,
                &dead_letters,
                &topic,
                &message,
                &shutdown,
            )
            .await;
            Done {
                key,
                tp,
                offset,
                finished,
                fatal,
                _permit: permit,
            }
        });
    }

    /// Book a finished command and start the next one of its key.
    fn complete(&mut self, done: Done) -> Option<Error> {
        if done.finished {
            lock(&self.tracker).finish(&done.tp, done.offset);
        }
        if done.fatal.is_some() {
            return done.fatal;
        }
        let next = self
            .waiting
            .get_mut(&done.key)
            .and_then(VecDeque::pop_front);
        match next {
            Some(received) if !self.shutdown.is_cancelled() => self.spawn(done.key, received),
            Some(_) => {}
            None => {
                self.waiting.remove(&done.key);
            }
        }
        None
    }

    /// Let running commands finish for up to `grace`, then abandon the rest (not committed).
    async fn drain(&mut self, grace: Duration) {
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                joined = self.jobs.join_next() => match joined {
                    None => break,
                    Some(Ok(done)) => {
                        if done.finished {
                            lock(&self.tracker).finish(&done.tp, done.offset);
                        }
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "a command task failed"),
                },
                () = &mut deadline => {
                    tracing::warn!(running = lock(&self.tracker).running(), "abandoning running commands");
                    self.jobs.abort_all();
                    while self.jobs.join_next().await.is_some() {}
                    break;
                }
            }
        }
        self.waiting.clear();
    }

    fn commit(&self, mode: CommitMode) {
        // Every command received is in the tracker (`dispatch`), so the consumer's position
        // counts only where nothing runs.
        match crate::positions::positions(&self.consumer, None) {
            Ok(consumer) => lock(&self.tracker).consumer_positions(&consumer),
            Err(e) => tracing::debug!(error = %e, "no consumer position"),
        }
        let positions = lock(&self.tracker).take_committable();
        let Some(tpl) = positions_list(&positions) else {
            return;
        };
        if let Err(e) = self.consumer.commit(&tpl, mode) {
            tracing::warn!(error = %e, "offset commit failed; retrying next interval");
            lock(&self.tracker).forget_committed(&positions);
        }
    }
}

/// Decode and apply one command, retrying dependency failures with backoff until it is done or
/// `shutdown` (a schema id the registry does not know yet: no later than the end of its
/// `[registry].unknown_id_patience_ms` window, after which it is a bad command); a bad command
/// is done once its dead-letter copy is acknowledged (a write that is not is a dependency
/// failure, [`Error::DeadLetter`]: the command is retried with the same backoff). Returns
/// (finished, fatal error).
async fn process(
    service: &Service,
    codec: &Codec,
    metrics: &PaymentMetrics,
    dead_letters: &DeadLetters,
    topic: &str,
    message: &OwnedMessage,
    shutdown: &CancellationToken,
) -> (bool, Option<Error>) {
    let at = |detail: String| Error::BadCommand {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        detail,
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = async {
            let payload = message
                .payload()
                .ok_or_else(|| at("no value (tombstone)".to_owned()))?;
            let command: PaymentCommand =
                codec
                    .decode_from(topic, payload)
                    .await
                    .map_err(|e| match e.fault() {
                        keel_avro::Fault::Input => at(e.to_string()),
                        _ => Error::Avro(e),
                    })?;
            service.handle(&command).await
        };
        let error = match attempt.await {
            Ok(handled) => {
                metrics.command(handled.label());
                return (true, None);
            }
            Err(e) => e,
        };
        let error = match error.action() {
            Action::Stop => return (false, Some(error)),
            Action::Retry => error,
            // Done once its dead-letter copy is acknowledged. A copy that is not is
            // `Error::DeadLetter`, a retry: the offset must not pass the command, which is
            // tried again (and dead-lettered again) after the backoff below.
            Action::Skip => {
                tracing::error!(error = %error, "payment command skipped: dead-lettering it");
                let why = error.to_string();
                let sent = tokio::select! {
                    // Not finished: not committed, replayed by the next owner.
                    () = shutdown.cancelled() => return (false, None),
                    sent = dead_letters.send(message, &why) => sent,
                };
                match sent {
                    Ok(()) => {
                        metrics.command("skipped");
                        return (true, None);
                    }
                    Err(e) => Error::DeadLetter(e),
                }
            }
        };
        // A schema id the registry does not know yet is asked again no later than its window's
        // end (then it is the command's fault): the order's commands behind it wait the
        // window, not the window and a backoff step past it.
        let wait = match &error {
            Error::Avro(e) => e.retry_wait(backoff),
            _ => backoff,
        };
        tracing::warn!(error = %error, retry_in_ms = wait.as_millis() as u64,
            "payment command failed; retrying");
        tokio::select! {
            () = shutdown.cancelled() => return (false, None),
            () = tokio::time::sleep(wait) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}
