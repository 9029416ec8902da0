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

/// What a processor says when it cannot handle a record.
#[derive(Debug, thiserror::Error)]
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

/// The runtime's error.
#[derive(Debug, thiserror::Error)]
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
    pub(crate) fn kafka(
        context: impl Into<String>,
    ) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        let context = context.into();
        move |source| Self::Kafka { context, source }
    }
}

/// The runtime's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
