//! The runtime's one error enum, and the errors processors and serdes return.

use std::fmt;

/// Why a serde could not turn bytes into a value (or a value into bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerdeError(pub String);

impl fmt::Display for SerdeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SerdeError {}

/// What the runtime does about an error. [`Error::action`] is the one place that decides it;
/// every handler (the stream thread's loop, the commit, the supervisor, the task's
/// dead-letter path) asks it instead of matching on variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// The input record is at fault: it goes to the dead-letter topic (or, with
    /// `on_bad_record = stop`, the application stops) and processing goes on.
    DeadLetter,
    /// Transient (the broker, the disk, a dependency): abort the transaction, rewind to the
    /// committed offsets and replay the interval after a backoff.
    AbortAndRetry,
    /// The thread's clients cannot go on (a fatal producer error, a producer the broker
    /// refused a batch from, a fenced producer or group member): restart the thread with new
    /// clients; its tasks restore. (A thread fenced again right after such a restart stops
    /// the application instead: see [`Error::is_fenced`].)
    RestartThread,
    /// The task's local state cannot be trusted: close it dirty, wipe it and restore it from
    /// the changelog.
    RestoreTask,
    /// A bug, an invalid configuration or topology, a duplicate instance: stop the
    /// application.
    Stop,
}

impl Action {
    /// The action for a state-store error, by who is at fault
    /// ([`keel_state::Error::fault`]).
    pub fn of_state(error: &keel_state::Error) -> Self {
        match error.fault() {
            keel_state::Fault::Environment => Action::AbortAndRetry,
            keel_state::Fault::Corruption => Action::RestoreTask,
            _ => Action::Stop,
        }
    }
}

/// What a processor says when it cannot handle a record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// The record itself is bad (undecodable payload, invariant it breaks): it goes to the
    /// dead-letter topic and processing goes on.
    #[error("bad input: {0}")]
    BadInput(String),
    /// A dependency failed (a store, a remote call): the transaction aborts and the record is
    /// retried after a backoff.
    #[error("dependency failed: {0}")]
    Dependency(String),
    /// A state store refused.
    #[error(transparent)]
    Store(#[from] keel_state::Error),
    /// A bug: the application stops.
    #[error("fatal: {0}")]
    Fatal(String),
}

impl ProcessError {
    /// What the runtime does about it: bad input is dead-lettered, a dependency's failure
    /// retried, a store's by its fault, a fatal one stops.
    pub fn action(&self) -> Action {
        match self {
            ProcessError::BadInput(_) => Action::DeadLetter,
            ProcessError::Dependency(_) => Action::AbortAndRetry,
            ProcessError::Store(e) => Action::of_state(e),
            ProcessError::Fatal(_) => Action::Stop,
        }
    }
}

/// The runtime's error. [`Error::action`] says what to do about it; [`Error::task`] which task
/// it happened in, when one did.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The topology is not well formed; the message names the nodes involved.
    #[error("invalid topology: {0}")]
    Topology(String),
    /// Configuration that cannot work; every problem is listed.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Config(Vec<String>),
    /// Source topics of one sub-topology have different partition counts.
    #[error(
        "topics {topics:?} feed sub-topology {sub_topology} but are not co-partitioned: {counts}"
    )]
    NotCoPartitioned {
        sub_topology: usize,
        topics: Vec<String>,
        counts: String,
    },
    /// A source topic does not exist.
    #[error("source topic {0:?} does not exist")]
    MissingTopic(String),
    /// A record reached a node that expects other types: a wiring bug.
    #[error("node {node:?} expects Record<{expected}> but {from:?} forwarded another type")]
    TypeMismatch {
        node: String,
        from: String,
        expected: String,
    },
    /// A processor failed fatally.
    #[error("processor {processor:?} failed: {source}")]
    Processor {
        processor: String,
        #[source]
        source: ProcessError,
    },
    /// A state store failed.
    #[error(transparent)]
    State(#[from] keel_state::Error),
    /// Kafka failed.
    #[error("kafka: {context}: {source}")]
    Kafka {
        context: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A failure inside one task (processing, punctuation, restore, `init`).
    #[error("task {task}: {source}")]
    Task {
        task: crate::topology::TaskId,
        #[source]
        source: Box<Error>,
    },
    /// A condition of the runtime that passes (no group metadata yet, a record not delivered,
    /// an injected failpoint): abort and retry.
    #[error("{context}")]
    Transient { context: String },
    /// The broker refused an output for what it is; the thread renews its producer and the
    /// replay dead-letters the input record that made it.
    #[error("{context}")]
    Refused { context: String },
    /// A stream thread stopped because of an error it could not recover from.
    #[error("stream thread {thread} stopped: {reason}")]
    ThreadStopped { thread: usize, reason: String },
    /// Local file system trouble outside the stores.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// What the runtime does about this error (see [`Action`]): the one classifier.
    pub fn action(&self) -> Action {
        match self {
            Error::Processor { source, .. } => source.action(),
            Error::State(e) => Action::of_state(e),
            Error::Task { source, .. } => source.action(),
            Error::Kafka { source, .. } => kafka_action(source),
            Error::Transient { .. } => Action::AbortAndRetry,
            Error::Refused { .. } => Action::RestartThread,
            Error::Topology(_)
            | Error::Config(_)
            | Error::NotCoPartitioned { .. }
            | Error::MissingTopic(_)
            | Error::TypeMismatch { .. }
            | Error::ThreadStopped { .. }
            | Error::Io { .. } => Action::Stop,
        }
    }

    /// Whether Kafka fenced the thread: its producer (a newer epoch of its transactional id)
    /// or its group member (another member with its `group.instance.id`). A duplicate
    /// instance fences, but so does the broker alone: it aborts a transaction left open past
    /// `transaction.timeout.ms` (a broker paused that long) by bumping the producer's epoch,
    /// and a restarted group coordinator can fence a static member. So the action is
    /// [`Action::RestartThread`]; the supervisor (`runtime/mod.rs`) stops the application
    /// when the restarted thread is fenced again before it commits, within a few session
    /// timeouts: only another live instance explains that.
    pub fn is_fenced(&self) -> bool {
        match self {
            Error::Kafka { source, .. } => is_fenced(source),
            Error::Task { source, .. } => source.is_fenced(),
            _ => false,
        }
    }

    /// The task the error happened in, if it happened in one.
    pub fn task(&self) -> Option<crate::topology::TaskId> {
        match self {
            Error::Task { task, .. } => Some(*task),
            _ => None,
        }
    }

    /// This error, as having happened in task `task` (kept as it is if it already names one).
    pub(crate) fn in_task(self, task: crate::topology::TaskId) -> Self {
        match self {
            Error::Task { .. } => self,
            other => Error::Task {
                task,
                source: Box::new(other),
            },
        }
    }

    /// Who rejected what, for a dead letter: the processor's name (empty when none) and the
    /// reason (a bad input's own words).
    pub(crate) fn blame(self) -> (String, String) {
        match self {
            Error::Task { source, .. } => source.blame(),
            Error::Processor {
                processor,
                source: ProcessError::BadInput(why),
            } => (processor, why),
            Error::Processor { processor, source } => (processor, source.to_string()),
            other => (String::new(), other.to_string()),
        }
    }

    pub(crate) fn kafka(
        context: impl Into<String>,
    ) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        let context = context.into();
        move |source| Self::Kafka { context, source }
    }
}

/// Whether a Kafka error says another client with this transactional id (or group instance
/// id) fenced this one.
pub(crate) fn is_fenced(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode;
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::FencedInstanceId
        )
    )
}

/// Kafka errors: fenced restarts the thread with new clients (the broker fences a lone
/// instance too, see [`Error::is_fenced`]; the supervisor tells a duplicate instance apart); a
/// fatal transactional error needs a new producer; anything else aborts the interval and
/// replays it (librdkafka's transactional rules, `thread/txn.rs` `txn_call`, decide within one
/// call when to call it again instead).
fn kafka_action(error: &rdkafka::error::KafkaError) -> Action {
    match error {
        _ if is_fenced(error) => Action::RestartThread,
        rdkafka::error::KafkaError::Transaction(e) if e.is_fatal() => Action::RestartThread,
        _ => Action::AbortAndRetry,
    }
}

/// The runtime's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaErrorCode;

    use super::*;
    use crate::topology::TaskId;

    fn stale() -> keel_state::Error {
        keel_state::Error::StaleCheckpoint {
            store: "s".into(),
            offset: 9,
            log_start: 0,
            log_end: 3,
        }
    }

    fn io() -> keel_state::Error {
        keel_state::Error::Io {
            op: "read",
            path: "/x".into(),
            source: std::io::Error::other("disk"),
        }
    }

    fn processor(source: ProcessError) -> Error {
        Error::Processor {
            processor: "p".into(),
            source,
        }
    }

    #[test]
    fn every_error_names_the_one_action_the_runtime_takes() {
        let cases = [
            (
                processor(ProcessError::BadInput("x".into())),
                Action::DeadLetter,
            ),
            (
                processor(ProcessError::Dependency("db".into())),
                Action::AbortAndRetry,
            ),
            (processor(ProcessError::Store(io())), Action::AbortAndRetry),
            (processor(ProcessError::Store(stale())), Action::RestoreTask),
            (processor(ProcessError::Fatal("bug".into())), Action::Stop),
            (Error::State(io()), Action::AbortAndRetry),
            (Error::State(stale()), Action::RestoreTask),
            (
                Error::Kafka {
                    context: "send".into(),
                    source: KafkaError::MessageProduction(RDKafkaErrorCode::RequestTimedOut),
                },
                Action::AbortAndRetry,
            ),
            (
                Error::Kafka {
                    context: "commit".into(),
                    source: KafkaError::Global(RDKafkaErrorCode::ProducerFenced),
                },
                Action::RestartThread,
            ),
            (
                Error::Kafka {
                    context: "poll".into(),
                    source: KafkaError::Global(RDKafkaErrorCode::FencedInstanceId),
                }
                .in_task(TaskId {
                    sub_topology: 0,
                    partition: 1,
                }),
                Action::RestartThread,
            ),
            (
                Error::Transient {
                    context: "failpoint".into(),
                },
                Action::AbortAndRetry,
            ),
            (
                Error::Refused {
                    context: "too large".into(),
                },
                Action::RestartThread,
            ),
            (Error::Topology("cycle".into()), Action::Stop),
            (
                Error::ThreadStopped {
                    thread: 0,
                    reason: "fenced".into(),
                },
                Action::Stop,
            ),
        ];
        for (error, action) in cases {
            assert_eq!(error.action(), action, "{error}");
        }
    }

    #[test]
    fn only_kafka_fencing_counts_as_fenced() {
        let fenced = |code| Error::Kafka {
            context: "x".into(),
            source: KafkaError::Global(code),
        };
        assert!(fenced(RDKafkaErrorCode::ProducerFenced).is_fenced());
        assert!(fenced(RDKafkaErrorCode::Fenced).is_fenced());
        assert!(
            fenced(RDKafkaErrorCode::FencedInstanceId)
                .in_task(TaskId {
                    sub_topology: 0,
                    partition: 0
                })
                .is_fenced()
        );
        assert!(!fenced(RDKafkaErrorCode::RequestTimedOut).is_fenced());
        assert!(
            !Error::ThreadStopped {
                thread: 0,
                reason: "fenced".into()
            }
            .is_fenced()
        );
    }

    #[test]
    fn an_error_in_a_task_names_the_task_and_keeps_its_action() {
        let id = TaskId {
            sub_topology: 1,
            partition: 3,
        };
        let e = Error::State(stale()).in_task(id);
        assert_eq!(e.task(), Some(id));
        assert_eq!(e.action(), Action::RestoreTask);
        assert!(e.to_string().starts_with("task 1_3: "), "{e}");
        let again = e.in_task(TaskId {
            sub_topology: 0,
            partition: 0,
        });
        assert_eq!(again.task(), Some(id), "the first task named stays");
        let (processor, why) = processor(ProcessError::BadInput("negative".into()))
            .in_task(id)
            .blame();
        assert_eq!((processor.as_str(), why.as_str()), ("p", "negative"));
        assert_eq!(Error::Topology("x".into()).task(), None);
    }
}
