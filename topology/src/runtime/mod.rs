//! Running a topology against Kafka: [`KafkaStreams`] checks the topics, creates the internal
//! ones, and starts the stream threads; [`StreamsHandle`] stops them and answers interactive
//! queries.

mod admin;
pub mod faults;
pub(crate) mod kafka;
mod owners;
mod restore;
mod tasks;
mod thread;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keel_state::StoreEnv;
use prometheus::Registry;

pub use self::admin::delete_topics_matching;
pub use self::kafka::{QuietEof, default_partition};
use self::thread::{Readers, Shared};
use crate::config::StreamsConfig;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::topology::Topology;

/// A topology bound to its configuration, ready to start.
#[derive(Debug)]
pub struct KafkaStreams {
    topology: Topology,
    config: StreamsConfig,
    registry: Registry,
}

impl KafkaStreams {
    pub fn new(topology: Topology, config: StreamsConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            topology,
            config,
            registry: Registry::new(),
        })
    }

    /// Registers the runtime's metrics in `registry` instead of a private one.
    pub fn with_registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// Checks source topics and co-partitioning, creates internal topics, opens the state
    /// directory and starts the stream threads.
    pub fn start(self) -> Result<StreamsHandle> {
        let Self {
            topology,
            config,
            registry,
        } = self;
        let partitions = admin::prepare_topics(&topology, &config)?;
        let env = StoreEnv::new(config.state.clone(), &config.application_id)?;
        let metrics = Metrics::register(&registry, &config.application_id)?;
        crate::metrics::StateMemory::register(&registry, &config.application_id, env.clone())?;
        let shutdown = Arc::new(AtomicBool::new(false));
        let readers: Readers = Arc::new(RwLock::new(Default::default()));
        let topic_subs = topology
            .sub_topologies()
            .iter()
            .flat_map(|sub| {
                sub.source_topics
                    .iter()
                    .map(|t| (t.resolve(&config.application_id), sub.id))
            })
            .collect();
        let shared = Arc::new(Shared {
            topic_partitions: Arc::new(partitions.clone()),
            topic_subs,
            dead_letter_topic: config.dead_letter_topic(),
            config,
            topology,
            env,
            metrics,
            shutdown: shutdown.clone(),
            readers: readers.clone(),
            poisoned: Default::default(),
        });
        let mut threads = Vec::new();
        for index in 0..shared.config.num_stream_threads {
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("keel-stream-{index}"))
                .spawn(move || supervise(index, shared))
                .map_err(|source| Error::Io {
                    context: "spawning a stream thread".into(),
                    source,
                })?;
            threads.push(handle);
        }
        Ok(StreamsHandle {
            shutdown,
            threads,
            readers,
            partitions,
            registry,
            config: shared.config.clone(),
        })
    }
}

/// Runs a stream thread, restarting it (fresh clients, tasks restored) after Kafka failures
/// such as a fenced producer; stops the application on bugs, fatal processor errors and a
/// duplicate instance ([`duplicate_instance`]).
fn supervise(index: usize, shared: Arc<Shared>) -> Result<()> {
    let mut backoff = Duration::from_millis(shared.config.retry_backoff_ms);
    let max = Duration::from_millis(shared.config.retry_backoff_max_ms);
    let window = fence_window(&shared.config);
    // When the thread last restarted because it was fenced.
    let mut fenced_restart: Option<Instant> = None;
    loop {
        let mut progress = thread::Progress::default();
        let result = thread::run(index, shared.clone(), &mut progress);
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.is_fenced() && !shared.shutdown.load(Ordering::Relaxed) => {
                let now = Instant::now();
                if duplicate_instance(fenced_restart, progress.committed, now, window) {
                    let e = duplicate_instance_error(index, &shared.config, fenced_restart, e);
                    tracing::error!(thread = index, error = %e, "stopping the application");
                    shared.shutdown.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                tracing::warn!(thread = index, error = %e, ?backoff, "stream thread fenced; restarting it with new clients");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(max);
                fenced_restart = Some(Instant::now());
            }
            Err(e) if restartable(&e) && !shared.shutdown.load(Ordering::Relaxed) => {
                tracing::warn!(thread = index, error = %e, ?backoff, "stream thread failed; restarting it");
                // Some other trouble (the broker away, most likely) came between: a fence
                // after it says nothing about a duplicate instance.
                fenced_restart = None;
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(max);
            }
            Err(e) => {
                tracing::error!(thread = index, error = %e, "stream thread stopped; stopping the application");
                shared.shutdown.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
    }
}

/// How soon after a restart for a fence a second fence means a duplicate instance: two
/// session timeouts of the group consumer (`session.timeout.ms`, 10 s unless configured). Two
/// instances with one instance id fence each other within about one: the restarted thread's
/// `init_transactions` and join fence the other at once, which notices at its next
/// transactional call or heartbeat (3 s) and restarts, fencing this one back. A broker that
/// fences a lone instance (paused past the transaction timeout, restarted) takes longer than
/// that to do it again, and the thread commits in between.
fn fence_window(config: &StreamsConfig) -> Duration {
    let session_ms = config
        .consumer
        .get("session.timeout.ms")
        .or_else(|| config.client.get("session.timeout.ms"))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(10_000);
    Duration::from_millis(session_ms.saturating_mul(2))
}

/// Whether a fenced thread met a duplicate instance (stop) rather than a broker fault
/// (restart): it was fenced again within `window` of its last restart for a fence
/// (`fenced_restart`; a restart for another failure in between clears it), and that run never
/// committed. Only another live instance with its
/// instance id fences a fresh thread again that soon; a lone instance's restarted thread
/// commits (or outlives the window) before the broker can fence it again.
fn duplicate_instance(
    fenced_restart: Option<Instant>,
    committed_since: bool,
    now: Instant,
    window: Duration,
) -> bool {
    !committed_since && fenced_restart.is_some_and(|at| now.saturating_duration_since(at) < window)
}

/// The error a duplicate instance stops the application with: says what to fix.
fn duplicate_instance_error(
    index: usize,
    config: &StreamsConfig,
    fenced_restart: Option<Instant>,
    fenced: Error,
) -> Error {
    let instance = config.instance_id();
    let since = fenced_restart.map(|at| at.elapsed()).unwrap_or_default();
    Error::ThreadStopped {
        thread: index,
        reason: format!(
            "fenced again {since:?} after restarting for a fence, before committing: another instance runs with instance_id {instance:?} (transactional.id {app}-{instance}-{index}, group.instance.id {instance}-{index}); give each instance its own instance_id: {fenced}",
            app = config.application_id
        ),
    }
}

/// What the thread could not cure in place (transient, or its clients unusable, or fenced
/// once) restarts it with new clients; the rest ([`Error::action`]: a bug, an invalid
/// configuration) stops.
fn restartable(e: &Error) -> bool {
    matches!(
        e.action(),
        crate::error::Action::AbortAndRetry | crate::error::Action::RestartThread
    )
}

/// Sets `flag` (e.g. [`StreamsHandle::shutdown_flag`]) when the process gets SIGTERM or SIGINT,
/// so the threads finish their transaction, close their stores and write checkpoints. The
/// handlers are installed before this returns.
pub fn shutdown_on_signals(flag: Arc<AtomicBool>) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let io = |context: &str| {
        let context = context.to_owned();
        move |source| Error::Io { context, source }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("starting the signal runtime"))?;
    let (mut term, mut int) = {
        let _guard = rt.enter();
        (
            signal(SignalKind::terminate()).map_err(io("installing the SIGTERM handler"))?,
            signal(SignalKind::interrupt()).map_err(io("installing the SIGINT handler"))?,
        )
    };
    std::thread::Builder::new()
        .name("keel-signals".into())
        .spawn(move || {
            let name = rt.block_on(async {
                tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                }
            });
            tracing::info!(
                signal = name,
                "shutting down: finishing transactions, closing stores"
            );
            flag.store(true, Ordering::Relaxed);
        })
        .map_err(io("spawning the signal thread"))?;
    Ok(())
}

/// A running application.
#[derive(Debug)]
pub struct StreamsHandle {
    shutdown: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<()>>>,
    readers: Readers,
    /// Partition count per source topic.
    partitions: std::collections::HashMap<String, i32>,
    registry: Registry,
    config: StreamsConfig,
}

impl StreamsHandle {
    /// Asks every thread to finish its transaction, close its tasks and stop.
    pub fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::Relaxed);
    }

    /// A flag that stops the application when set (for signal handlers).
    pub fn shutdown_flag(&self) -> Arc<AtomicBool> {
        self.shutdown.clone()
    }

    /// Whether every thread is still running.
    pub fn is_running(&self) -> bool {
        self.threads.iter().all(|t| !t.is_finished())
    }

    /// Stops (if not already stopping) and waits; the first thread error, if any.
    pub fn shutdown(self) -> Result<()> {
        self.request_shutdown();
        self.wait()
    }

    /// Waits until every thread has stopped; the first thread error, if any.
    pub fn wait(self) -> Result<()> {
        let mut first = None;
        for (i, t) in self.threads.into_iter().enumerate() {
            let result = t.join().unwrap_or_else(|_| {
                Err(Error::ThreadStopped {
                    thread: i,
                    reason: "panicked".into(),
                })
            });
            if let Err(e) = result {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// The runtime's metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The partition `key` (serialized) lives on for a topic with `partitions` partitions.
    pub fn partition_for_key(&self, source_topic: &str, key: &[u8]) -> Option<i32> {
        self.partitions
            .get(source_topic)
            .map(|&n| default_partition(key, n))
    }

    /// Interactive query: the committed value of `key` in key-value store `store`, if this
    /// instance owns the key's partition (`Err` otherwise: ask the owner).
    pub fn get(&self, store: &str, source_topic: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let partition = self
            .partition_for_key(source_topic, key)
            .ok_or_else(|| Error::MissingTopic(source_topic.to_owned()))?;
        let readers = self
            .readers
            .read()
            .map_err(|_| Error::Topology("readers poisoned".into()))?;
        let reader = readers.get(&(store.to_owned(), partition)).ok_or_else(|| {
            Error::Topology(format!(
                "store {store:?} partition {partition} is not owned by this instance"
            ))
        })?;
        Ok(reader.get(key)?)
    }

    /// Metadata for interactive queries: the instance id that owns `key` (serialized, of
    /// `source_topic`) right now, from the group's current assignment; `None` while the
    /// partition is unassigned (a rebalance in progress).
    pub fn owner_of(&self, source_topic: &str, key: &[u8]) -> Result<Option<String>> {
        let partition = self
            .partition_for_key(source_topic, key)
            .ok_or_else(|| Error::MissingTopic(source_topic.to_owned()))?;
        let owners = owners::partition_owners(&self.config)?;
        Ok(owners.get(&(source_topic.to_owned(), partition)).cloned())
    }

    /// This instance's id (what [`StreamsHandle::owner_of`] answers with).
    pub fn instance_id(&self) -> String {
        self.config.instance_id()
    }

    /// The (store, partition) pairs this instance serves.
    pub fn local_stores(&self) -> Vec<(String, i32)> {
        let mut out: Vec<(String, i32)> = self
            .readers
            .read()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(12);

    #[test]
    fn a_first_fence_restarts_the_thread() {
        assert!(!duplicate_instance(None, false, Instant::now(), WINDOW));
    }

    #[test]
    fn a_fence_soon_after_a_restart_for_a_fence_without_a_commit_is_a_duplicate_instance() {
        let restarted = Instant::now();
        let now = restarted + Duration::from_secs(4);
        assert!(duplicate_instance(Some(restarted), false, now, WINDOW));
    }

    #[test]
    fn a_restarted_thread_that_committed_or_outlived_the_window_restarts_again() {
        let restarted = Instant::now();
        assert!(!duplicate_instance(
            Some(restarted),
            true,
            restarted + Duration::from_secs(4),
            WINDOW
        ));
        assert!(!duplicate_instance(
            Some(restarted),
            false,
            restarted + WINDOW,
            WINDOW
        ));
    }

    #[test]
    fn the_window_is_two_session_timeouts() {
        let mut c = StreamsConfig::new("app", "localhost:9092");
        assert_eq!(fence_window(&c), Duration::from_secs(20));
        c.consumer
            .insert("session.timeout.ms".into(), "6000".into());
        assert_eq!(fence_window(&c), Duration::from_secs(12));
    }
}
