//! The crate's one error type.
//!
//! Every variant names what failed and where (store, task, path), and [`Error::fault`] says who
//! is at fault, which tells the runtime what to do next:
//!
//! | [`Fault`] | meaning | what the runtime does |
//! | --- | --- | --- |
//! | [`Fault::Environment`] | the disk, the file system, a lock another owner still holds | retry with backoff ([`Error::is_retryable`]) |
//! | [`Fault::Corruption`] | local state cannot be trusted | close the task dirty, wipe it, restore from the changelog |
//! | [`Fault::Bug`] | the caller broke a contract of this crate, or the configuration is invalid | abort the transaction and stop |

use std::fmt;
use std::path::PathBuf;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Who is at fault for an [`Error`], and so what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fault {
    /// The machine: disk, file system, or a lock held by another owner. Retrying with backoff may
    /// succeed; nothing in local state is known to be wrong.
    Environment,
    /// Local state (a store, the checkpoint) or a changelog record is unreadable. Retrying will
    /// not help: close the task without a checkpoint, wipe it and restore from the changelog.
    Corruption,
    /// The caller broke a contract of this crate (an undrained changelog at commit, an offset
    /// going backwards, an unknown store) or the configuration is invalid. A bug: stop.
    Bug,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::Environment => "environment",
            Fault::Corruption => "corruption",
            Fault::Bug => "bug",
        })
    }
}

/// Everything that can go wrong in `keel-state`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// [`StateConfig`](crate::StateConfig) failed validation; every problem is listed.
    #[error("invalid state configuration: {}", problems.join("; "))]
    Config {
        /// One line per problem found.
        problems: Vec<String>,
    },

    /// A task id, store or application id cannot be used as a directory or topic name.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        /// What the name is for: "store name", "task id", "application id".
        what: &'static str,
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A file-system operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done ("create directory", "write checkpoint", …).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The task directory is locked by another owner: another stream thread of this process, or
    /// another process. Usually transient during a rebalance.
    #[error("task {task}: state directory {} is locked by another owner", path.display())]
    TaskLocked {
        /// The task id.
        task: String,
        /// The task directory.
        path: PathBuf,
    },

    /// RocksDB reported an error.
    #[error("store `{store}` ({}): RocksDB {op} failed: {source}", path.display())]
    Rocks {
        /// The store.
        store: String,
        /// The store's RocksDB directory.
        path: PathBuf,
        /// The operation ("open", "write batch", "get", "iterate", "flush", …).
        op: &'static str,
        /// RocksDB's error.
        #[source]
        source: rocksdb::Error,
    },

    /// A store's RocksDB instance lacks a column family it was opened with.
    #[error("store `{store}` ({}): column family `{column}` is missing", path.display())]
    MissingColumnFamily {
        /// The store.
        store: String,
        /// The store's RocksDB directory.
        path: PathBuf,
        /// The column family.
        column: &'static str,
    },

    /// A read-only handle outlived its store (the task closed or moved away).
    #[error("store `{store}` is closed")]
    StoreClosed {
        /// The store.
        store: String,
    },

    /// The checkpoint file cannot be parsed.
    #[error("checkpoint {} line {line}: {reason}", path.display())]
    CorruptCheckpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },

    /// A value in a TTL or timer store does not decode.
    #[error("store `{store}` ({}): corrupt entry for key \"{}\": {reason}", path.display(), key.escape_ascii())]
    CorruptEntry {
        /// The store.
        store: String,
        /// The store's RocksDB directory.
        path: PathBuf,
        /// The entry's key.
        key: Vec<u8>,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The offset local state says it applied is outside the changelog partition's current
    /// range (`keel reset` that kept the state directory, a changelog deleted and recreated):
    /// the local state belongs to another history. Wipe it and restore from the changelog.
    #[error(
        "store `{store}`: local state applied changelog offset {offset}, but the changelog holds offsets {log_start}..{log_end}: the checkpoint is stale"
    )]
    StaleCheckpoint {
        /// The store.
        store: String,
        /// The offset the local state applied.
        offset: i64,
        /// The changelog partition's log start offset.
        log_start: i64,
        /// The changelog partition's log end offset (exclusive).
        log_end: i64,
    },

    /// A changelog record handed to restore does not decode for this kind of store.
    #[error("store `{store}`: changelog record at offset {offset} is malformed: {reason}")]
    CorruptChangelog {
        /// The store.
        store: String,
        /// The record's changelog offset.
        offset: i64,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A store name was registered twice in one task.
    #[error("task {task}: store `{store}` is already registered")]
    DuplicateStore {
        /// The task id.
        task: String,
        /// The store.
        store: String,
    },

    /// The task has no store with this name.
    #[error("task {task}: no store named `{store}`")]
    UnknownStore {
        /// The task id.
        task: String,
        /// The store that was asked for.
        store: String,
    },

    /// The store exists but is of another kind than the caller asked for.
    #[error("task {task}: store `{store}` is a {actual} store, not a {expected} store")]
    WrongStoreKind {
        /// The task id.
        task: String,
        /// The store.
        store: String,
        /// The kind the caller asked for.
        expected: crate::types::StoreKind,
        /// The kind the store is.
        actual: crate::types::StoreKind,
    },

    /// `commit` was called while writes had not been taken for the changelog: those writes would
    /// reach RocksDB without being in the changelog, and a restore would lose them.
    #[error("store `{store}`: {count} changelog records were not taken before commit")]
    UndrainedChangelog {
        /// The store.
        store: String,
        /// How many records are waiting in `take_changelog`.
        count: usize,
    },

    /// `commit` was given a changelog offset below the one already applied.
    #[error(
        "store `{store}`: changelog offset {offset} is below the offset already applied ({applied})"
    )]
    OffsetRegression {
        /// The store.
        store: String,
        /// The offset given.
        offset: i64,
        /// The offset already applied.
        applied: i64,
    },

    /// Restore was called while the store had uncommitted writes; restore happens before
    /// processing.
    #[error("store `{store}`: cannot restore while {count} writes are pending")]
    RestoreWithPendingWrites {
        /// The store.
        store: String,
        /// How many writes are pending.
        count: usize,
    },
}

impl Error {
    /// Who is at fault, and so what the runtime should do.
    pub fn fault(&self) -> Fault {
        match self {
            Error::Io { .. } | Error::TaskLocked { .. } | Error::StoreClosed { .. } => {
                Fault::Environment
            }
            Error::Rocks { source, .. } => match source.kind() {
                rocksdb::ErrorKind::Corruption => Fault::Corruption,
                rocksdb::ErrorKind::InvalidArgument | rocksdb::ErrorKind::NotSupported => {
                    Fault::Bug
                }
                _ => Fault::Environment,
            },
            Error::CorruptCheckpoint { .. }
            | Error::MissingColumnFamily { .. }
            | Error::CorruptEntry { .. }
            | Error::CorruptChangelog { .. }
            | Error::StaleCheckpoint { .. } => Fault::Corruption,
            Error::Config { .. }
            | Error::InvalidName { .. }
            | Error::DuplicateStore { .. }
            | Error::UnknownStore { .. }
            | Error::WrongStoreKind { .. }
            | Error::UndrainedChangelog { .. }
            | Error::OffsetRegression { .. }
            | Error::RestoreWithPendingWrites { .. } => Fault::Bug,
        }
    }

    /// Whether retrying the same operation later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.fault() == Fault::Environment
    }

    /// The store the error is about, when it is about one.
    pub fn store(&self) -> Option<&str> {
        match self {
            Error::Rocks { store, .. }
            | Error::MissingColumnFamily { store, .. }
            | Error::StoreClosed { store }
            | Error::CorruptEntry { store, .. }
            | Error::CorruptChangelog { store, .. }
            | Error::DuplicateStore { store, .. }
            | Error::UnknownStore { store, .. }
            | Error::WrongStoreKind { store, .. }
            | Error::UndrainedChangelog { store, .. }
            | Error::OffsetRegression { store, .. }
            | Error::RestoreWithPendingWrites { store, .. } => Some(store),
            _ => None,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_route_errors_to_retry_restore_or_stop() {
        let io = Error::io("read", "/x", std::io::Error::other("disk"));
        assert_eq!(io.fault(), Fault::Environment);
        assert!(io.is_retryable());

        let corrupt = Error::CorruptCheckpoint {
            path: "/x/.checkpoint".into(),
            line: 2,
            reason: "bad".into(),
        };
        assert_eq!(corrupt.fault(), Fault::Corruption);
        assert!(!corrupt.is_retryable());

        let bug = Error::UndrainedChangelog {
            store: "counts".into(),
            count: 3,
        };
        assert_eq!(bug.fault(), Fault::Bug);
        assert_eq!(bug.store(), Some("counts"));
        assert!(bug.to_string().contains("counts"));
    }

    #[test]
    fn corrupt_entry_message_escapes_binary_keys() {
        let e = Error::CorruptEntry {
            store: "holds".into(),
            path: "/s/holds".into(),
            key: vec![b'k', 0, 0xff],
            reason: "too short",
        };
        assert_eq!(
            e.to_string(),
            "store `holds` (/s/holds): corrupt entry for key \"k\\x00\\xff\": too short"
        );
    }
}
