//! Errors of the connectors crate: each names the connector or call that failed.

/// What went wrong while talking to Kafka Connect.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Connect could not be reached at all (down, wrong URL): retry later or start it.
    #[error("Kafka Connect at {url} is unreachable during {operation}: {source}")]
    Unreachable {
        url: String,
        operation: &'static str,
        #[source]
        source: reqwest::Error,
    },
    /// Connect answered with an error status; `message` is its own explanation.
    #[error(
        "Kafka Connect refused {operation} for connector {connector:?}: HTTP {status}: {message}"
    )]
    Rejected {
        operation: &'static str,
        connector: Option<String>,
        status: u16,
        message: String,
    },
    /// The connector or one of its tasks is `FAILED`; `trace` is Connect's failure trace cut to
    /// its message and causes.
    #[error("connector {connector:?} FAILED: {trace}")]
    Failed { connector: String, trace: String },
    /// The named connector does not exist on this Connect cluster.
    #[error("connector {0:?} is not registered")]
    NotFound(String),
    /// A connector did not reach the wanted state in time; `last` is the last status seen.
    #[error(
        "connector {connector:?} did not become {wanted} in {waited_ms} ms (last seen: {last})"
    )]
    Timeout {
        connector: String,
        wanted: &'static str,
        waited_ms: u128,
        last: String,
    },
    /// Connect answered with a body this client does not understand.
    #[error("unexpected answer from Kafka Connect during {operation}: {source}")]
    Decode {
        operation: &'static str,
        #[source]
        source: reqwest::Error,
    },
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
