//! The crate's one error type. Every variant names the subject it concerns and, when the bytes
//! carried one, the schema id, so the runtime can dead-letter a record with headers that say why.

use std::fmt;
use std::time::Duration;

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Why a payload is not in the Confluent wire format (magic byte `0`, a 4-byte big-endian
/// schema id, then the Avro datum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingError {
    /// Fewer than the 5 bytes the header needs (`0` for an empty payload).
    TooShort { len: usize },
    /// The first byte is not the magic byte `0`.
    BadMagic { byte: u8 },
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { len } => write!(
                f,
                "{len} bytes is too short for the 5-byte Confluent header (magic byte + schema id)"
            ),
            Self::BadMagic { byte } => write!(
                f,
                "first byte is {byte:#04x}, not the Confluent magic byte 0x00"
            ),
        }
    }
}

impl std::error::Error for FramingError {}

/// Whose fault an error is, which says what the caller should do with the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The bytes are bad: dead-letter the record and go on.
    Input,
    /// The registry failed or could not be reached: retry with backoff.
    Dependency,
    /// Keel's own contracts or configuration are wrong: stop and fix the code or the config.
    Bug,
}

/// Everything that can go wrong turning records into bytes and back, or setting up subjects.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The payload is not Confluent-framed, so no schema could even be looked up.
    #[error("subject {subject}: payload is not Confluent-framed: {reason}")]
    NotFramed {
        subject: String,
        reason: FramingError,
    },

    /// The frame names a schema id the registry does not know.
    #[error("subject {subject}: schema id {schema_id} is unknown to the registry: {detail}")]
    UnknownSchemaId {
        subject: String,
        schema_id: u32,
        detail: String,
    },

    /// The registry answered that it does not know the frame's schema id (HTTP 404, error
    /// code 40403), but a registry replica may still lag behind the one that issued it: the id
    /// is asked again (a retriable, dependency failure) for another `remaining`, then it is
    /// [`Error::UnknownSchemaId`] (window: `[registry].unknown_id_patience_ms`, `patience`).
    #[error(
        "subject {subject}: the registry answered that it does not know schema id {schema_id} \
         (HTTP 404; a registry replica may lag behind the one that issued it): asked again for \
         another {remaining:?} (first miss {waited:?} ago; [registry].unknown_id_patience_ms \
         = {patience:?})"
    )]
    SchemaIdNotYetKnown {
        subject: String,
        schema_id: u32,
        /// Since the registry's first "not found" for the id.
        waited: Duration,
        /// Until the miss is final.
        remaining: Duration,
        /// The configured window.
        patience: Duration,
    },

    /// The writer's schema (from the frame's id) cannot be read as the expected record type.
    #[error(
        "subject {subject}: schema id {schema_id} ({writer}) cannot be read as {reader}: {detail}"
    )]
    SchemaMismatch {
        subject: String,
        schema_id: u32,
        writer: String,
        reader: String,
        detail: String,
    },

    /// The Avro datum does not decode with the writer's schema (truncated or corrupt bytes).
    #[error("subject {subject}: schema id {schema_id}: Avro datum does not decode: {detail}")]
    AvroDecode {
        subject: String,
        schema_id: u32,
        detail: String,
    },

    /// A record could not be written with its schema (a bug in a record value or a contract).
    #[error("subject {subject}: cannot encode a {rust_type}: {detail}")]
    Encode {
        subject: String,
        rust_type: &'static str,
        detail: String,
    },

    /// The registry refused a schema as incompatible with what the subject already holds.
    #[error("subject {subject}: the registry refused the schema as incompatible: {reason}")]
    Incompatible { subject: String, reason: String },

    /// Auto-registration is off and the local schema is not registered under the subject.
    #[error(
        "subject {subject}: the local schema is not registered and auto-register is off \
         (run `keel schemas register`): {detail}"
    )]
    NotRegistered { subject: String, detail: String },

    /// A call to the registry failed (unreachable, 5xx, an unexpected answer).
    #[error("subject {subject}: schema registry call `{operation}` failed: {detail}")]
    Registry {
        subject: String,
        operation: &'static str,
        detail: String,
        /// The call may succeed if tried again (network or 502/503).
        retriable: bool,
    },

    /// An embedded `.avsc` does not parse: a bug caught by the contract tests.
    #[error("local schema {file} does not parse: {detail}")]
    LocalSchema { file: &'static str, detail: String },

    /// The configuration is invalid; every problem is listed.
    #[error("invalid schema registry configuration: {}", problems.join("; "))]
    Config { problems: Vec<String> },
}

impl Error {
    /// How long to wait before asking again after this error, given the caller's `backoff`: at
    /// most until the end of the unknown-id window of a [`SchemaIdNotYetKnown`]
    /// (`[registry].unknown_id_patience_ms`), so the record behind it waits the window and not
    /// the window plus a backoff step; `backoff` for any other error.
    ///
    /// [`SchemaIdNotYetKnown`]: Error::SchemaIdNotYetKnown
    pub fn retry_wait(&self, backoff: std::time::Duration) -> std::time::Duration {
        match self {
            Self::SchemaIdNotYetKnown { remaining, .. } => backoff.min(*remaining),
            _ => backoff,
        }
    }

    /// Whose fault this is: the input's (dead-letter), a dependency's (retry) or a bug (stop).
    pub fn fault(&self) -> Fault {
        match self {
            Self::NotFramed { .. }
            | Self::UnknownSchemaId { .. }
            | Self::SchemaMismatch { .. }
            | Self::AvroDecode { .. } => Fault::Input,
            Self::Registry {
                retriable: true, ..
            }
            | Self::SchemaIdNotYetKnown { .. } => Fault::Dependency,
            Self::Registry {
                retriable: false, ..
            }
            | Self::Encode { .. }
            | Self::Incompatible { .. }
            | Self::NotRegistered { .. }
            | Self::LocalSchema { .. }
            | Self::Config { .. } => Fault::Bug,
        }
    }

    /// The subject the error concerns, if it concerns one.
    pub fn subject(&self) -> Option<&str> {
        match self {
            Self::NotFramed { subject, .. }
            | Self::UnknownSchemaId { subject, .. }
            | Self::SchemaIdNotYetKnown { subject, .. }
            | Self::SchemaMismatch { subject, .. }
            | Self::AvroDecode { subject, .. }
            | Self::Encode { subject, .. }
            | Self::Incompatible { subject, .. }
            | Self::NotRegistered { subject, .. }
            | Self::Registry { subject, .. } => Some(subject),
            Self::LocalSchema { .. } | Self::Config { .. } => None,
        }
    }

    /// The schema id the payload's frame named, if the error is about a framed payload.
    pub fn schema_id(&self) -> Option<u32> {
        match self {
            Self::UnknownSchemaId { schema_id, .. }
            | Self::SchemaIdNotYetKnown { schema_id, .. }
            | Self::SchemaMismatch { schema_id, .. }
            | Self::AvroDecode { schema_id, .. } => Some(*schema_id),
            _ => None,
        }
    }

    /// A stable short name of what failed, for a dead-letter header or a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotFramed { .. } => "not_framed",
            Self::UnknownSchemaId { .. } => "unknown_schema_id",
            Self::SchemaIdNotYetKnown { .. } => "schema_id_not_yet_known",
            Self::SchemaMismatch { .. } => "schema_mismatch",
            Self::AvroDecode { .. } => "avro_decode",
            Self::Encode { .. } => "encode",
            Self::Incompatible { .. } => "incompatible",
            Self::NotRegistered { .. } => "not_registered",
            Self::Registry { .. } => "registry",
            Self::LocalSchema { .. } => "local_schema",
            Self::Config { .. } => "config",
        }
    }
}
