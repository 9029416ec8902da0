//! Leaf types that every layer of the crate shares: the [`Guarantee`] a task runs under, the
//! [`StoreKind`]s, and what one restore batch did ([`RestoreBatch`], returned by the stores'
//! engine and summed up by the restore protocol). They depend on nothing else in the crate, so
//! `error`, the stores and the task state can all use them without importing each other.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The processing guarantee the runtime runs under; it decides when checkpoints exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    /// Checkpoint removed while the task runs, written on clean close only.
    ExactlyOnce,
    /// Checkpoint kept while the task runs and rewritten as commits advance.
    AtLeastOnce,
}

/// The kinds of store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreKind {
    /// [`KeyValueStore`](crate::KeyValueStore).
    KeyValue,
    /// [`TtlStore`](crate::TtlStore).
    Ttl,
    /// [`TimerStore`](crate::TimerStore).
    Timer,
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreKind::KeyValue => "key-value",
            StoreKind::Ttl => "ttl",
            StoreKind::Timer => "timer",
        })
    }
}

/// What one `restore_batch` call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreBatch {
    /// Records written to RocksDB.
    pub applied: u64,
    /// Records skipped because their offset was already applied.
    pub skipped: u64,
    /// Offset of the last record applied.
    pub last_offset: Option<i64>,
}
