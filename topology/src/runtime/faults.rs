//! Failpoints (the `fail` crate) at every phase of the commit, of restore and of task set-up,
//! compiled in only with the `failpoints` feature (this crate's own tests): without it every
//! check is a no-op the optimiser removes.
//!
//! Tests arm them with `fail::cfg(name, actions)`: `return` (or `return(<kind>)` for the
//! transactional calls, see [`injected_txn_error`]) makes the phase fail as the real operation
//! could; `panic` stops the thread there, as a crash would.

use crate::error::{Error, Result};

/// After every task's changelog records were sent, before the offsets.
pub const AFTER_CHANGELOG_SEND: &str = "commit-after-changelog-send";
/// After `send_offsets_to_transaction`, before the flush.
pub const AFTER_OFFSETS: &str = "commit-after-offsets";
/// After the flush (every delivery report served), before `commit_transaction`.
pub const AFTER_FLUSH: &str = "commit-after-flush";
/// Instead of calling `send_offsets_to_transaction`: `return(retriable|abortable|fatal)`.
pub const SEND_OFFSETS: &str = "txn-send-offsets";
/// Instead of calling `commit_transaction`: `return(retriable|abortable|fatal)`.
pub const COMMIT_TRANSACTION: &str = "txn-commit-transaction";
/// After `commit_transaction` returned Ok (the commit point), before the stores apply.
pub const AFTER_COMMIT_TRANSACTION: &str = "commit-after-commit-transaction";
/// Applying one task's committed writes to its stores (an I/O error: retried, then restore).
pub const STORE_APPLY: &str = "commit-store-apply";
/// Applying one restored batch to a store.
pub const RESTORE_BATCH: &str = "restore-batch";
/// Each changelog record polled during restore (arm with `sleep(ms)` to stretch a restore).
pub const RESTORE_RECORD: &str = "restore-record";
/// Setting up one newly assigned task (before its state is opened).
pub const TASK_SET_UP: &str = "task-set-up";
/// Closing one task, cleanly or not (before its state is closed; arm with `sleep(ms)` to
/// stretch the close of a thread).
pub const TASK_CLOSE: &str = "task-close";

/// The argument of failpoint `name` when it is armed with `return(arg)` (`""` for a bare
/// `return`); `None` when it is not armed. Other actions (`panic`, `sleep`) act here.
pub(crate) fn injected(name: &str) -> Option<String> {
    #[cfg(feature = "failpoints")]
    {
        fail::eval(name, Option::unwrap_or_default)
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        None
    }
}

/// Fails with an error the runtime aborts and retries on ([`Error::Transient`]) when
/// failpoint `name` is armed.
pub(crate) fn check(name: &str) -> Result<()> {
    match injected(name) {
        Some(_) => Err(Error::Transient {
            context: format!("failpoint {name}"),
        }),
        None => Ok(()),
    }
}

/// What librdkafka's transactional API says to do after one of its calls failed
/// (`rd_kafka_error_is_retriable`, `_txn_requires_abort`, `_is_fatal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxnAction {
    /// Call the same function again (a timeout: the operation goes on in the background).
    Retry,
    /// Abort the transaction and replay the interval.
    Abort,
    /// The producer cannot go on (fenced, or a fatal idempotence error): a new one is needed.
    Fatal,
}

/// The kind of transactional error failpoint `name` injects, if armed:
/// `return(retriable)`, `return(abortable)` or `return(fatal)` (a bare `return` is abortable).
pub(crate) fn injected_txn_error(name: &str) -> Option<TxnAction> {
    injected(name).map(|kind| match kind.as_str() {
        "retriable" => TxnAction::Retry,
        "fatal" => TxnAction::Fatal,
        _ => TxnAction::Abort,
    })
}
