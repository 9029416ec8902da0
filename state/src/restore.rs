//! Restore: rebuilding a store from its changelog before the task processes anything.
//!
//! # For the runtime author
//!
//! After [`TaskState::open`](crate::TaskState::open) and registering the task's stores:
//!
//! 1. [`TaskState::restore_plans`](crate::TaskState::restore_plans) gives one [`RestorePlan`]
//!    per store: its changelog topic and where to start — [`RestoreFrom::After`]`(o)` when the
//!    checkpoint vouched for offset `o`, or [`RestoreFrom::Beginning`] when there was no
//!    checkpoint (first run, deleted state, or an unclean shutdown under exactly-once), in which
//!    case the local copy has already been wiped.
//! 2. Look up the changelog partition's log start and end offsets (`read_committed`: the end is
//!    the last stable offset). [`RestorePlan::seek_offset`] says where to seek;
//!    [`RestorePlan::is_needed`] whether there is anything to read.
//! 3. Poll records and hand each polled batch to
//!    [`TaskState::restore_batch`](crate::TaskState::restore_batch) as
//!    `(offset, key, Option<value>)`. Each call writes one RocksDB `WriteBatch` straight to disk
//!    (no pending set, no changelog records) and advances the store's applied offset; records at
//!    or below the applied offset are skipped, so re-delivery is harmless.
//! 4. Feed [`RestoreProgress::record_batch`] with each batch's [`RestoreBatch`] and the
//!    consumer's position, report it through a [`RestoreListener`] (metrics: records restored,
//!    records remaining), and stop when [`RestoreProgress::is_complete`].
//!
//! Offsets of a transactional topic include commit markers, which are never delivered as
//! records: judge completion by the consumer's position (which moves past markers), not by the
//! last record's offset; `remaining` is an upper bound for the same reason.
//!
//! [`TaskState::restore`](crate::TaskState::restore) runs steps 2–4 over batches already in
//! memory (the in-process test driver, tests).

use std::sync::Arc;

pub use crate::types::RestoreBatch;
use crate::types::StoreKind;

/// Where a store's restore starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RestoreFrom {
    /// No trustworthy local state: the store is empty; replay the whole changelog.
    Beginning,
    /// Local state has applied everything up to and including this offset; replay after it.
    After(i64),
}

/// What one store needs restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePlan {
    /// The store.
    pub store: Arc<str>,
    /// Its kind.
    pub kind: StoreKind,
    /// `<application.id>-<store>-changelog`; the partition is the task's.
    pub changelog_topic: String,
    /// Where to start.
    pub from: RestoreFrom,
}

impl RestorePlan {
    /// The offset to seek the restore consumer to, given the partition's log start offset
    /// (records before it were deleted or compacted away).
    pub fn seek_offset(&self, log_start_offset: i64) -> i64 {
        match self.from {
            RestoreFrom::Beginning => log_start_offset,
            RestoreFrom::After(offset) => offset.saturating_add(1).max(log_start_offset),
        }
    }

    /// Checks the local state against the changelog partition's range
    /// `[log_start_offset, log_end_offset)`: the offset it applied must be one the changelog
    /// holds or held (below the end), and nothing after it may have been deleted (the next
    /// offset is at or after the log start). Otherwise ([`Error::StaleCheckpoint`], a
    /// corruption) the local state is from another history of the changelog and must be wiped
    /// and restored from scratch.
    ///
    /// [`Error::StaleCheckpoint`]: crate::Error::StaleCheckpoint
    pub fn check(&self, log_start_offset: i64, log_end_offset: i64) -> crate::Result<()> {
        match self.from {
            RestoreFrom::After(offset)
                if offset >= log_end_offset || offset.saturating_add(1) < log_start_offset =>
            {
                Err(crate::Error::StaleCheckpoint {
                    store: self.store.to_string(),
                    offset,
                    log_start: log_start_offset,
                    log_end: log_end_offset,
                })
            }
            _ => Ok(()),
        }
    }

    /// Whether any record may lie between the seek offset and `log_end_offset` (exclusive).
    pub fn is_needed(&self, log_start_offset: i64, log_end_offset: i64) -> bool {
        self.seek_offset(log_start_offset) < log_end_offset
    }
}

/// Progress of one store's restore, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreProgress {
    store: Arc<str>,
    start_offset: i64,
    end_offset: i64,
    position: i64,
    restored: u64,
    batches: u64,
}

impl RestoreProgress {
    /// Progress of restoring `plan` from a partition whose log spans
    /// `[log_start_offset, log_end_offset)`.
    pub fn new(plan: &RestorePlan, log_start_offset: i64, log_end_offset: i64) -> Self {
        let start_offset = plan.seek_offset(log_start_offset);
        RestoreProgress {
            store: Arc::clone(&plan.store),
            start_offset,
            end_offset: log_end_offset,
            position: start_offset,
            restored: 0,
            batches: 0,
        }
    }

    /// Accounts for one restored batch. `consumer_position` is the restore consumer's position
    /// after the batch (the next offset it will return), when known; otherwise the position is
    /// taken as one past the last record.
    pub fn record_batch(&mut self, batch: &RestoreBatch, consumer_position: Option<i64>) {
        self.restored += batch.applied;
        self.batches += 1;
        let after_last = batch.last_offset.map(|o| o.saturating_add(1));
        self.position = self
            .position
            .max(after_last.unwrap_or(i64::MIN))
            .max(consumer_position.unwrap_or(i64::MIN));
    }

    /// Marks the restore complete: the consumer's position reached the end offset (for
    /// example past the final commit marker, or the batches in memory are exhausted).
    pub fn mark_complete(&mut self) {
        self.position = self.position.max(self.end_offset);
    }

    /// The store.
    pub fn store(&self) -> &str {
        &self.store
    }

    /// First offset read.
    pub fn start_offset(&self) -> i64 {
        self.start_offset
    }

    /// Offset at which the restore is complete (the log end when it started).
    pub fn end_offset(&self) -> i64 {
        self.end_offset
    }

    /// Next offset to read.
    pub fn position(&self) -> i64 {
        self.position
    }

    /// Records written to the store so far.
    pub fn restored(&self) -> u64 {
        self.restored
    }

    /// Batches restored so far.
    pub fn batches(&self) -> u64 {
        self.batches
    }

    /// Offsets left to read: an upper bound on the records left (commit markers and compacted
    /// records take offsets too).
    pub fn remaining(&self) -> u64 {
        u64::try_from(self.end_offset.saturating_sub(self.position)).unwrap_or(0)
    }

    /// Whether the position has reached the end offset.
    pub fn is_complete(&self) -> bool {
        self.position >= self.end_offset
    }
}

/// Hooks called while a store restores (Kafka Streams' `StateRestoreListener`). Every method
/// has an empty default; `()` is the listener that does nothing.
pub trait RestoreListener {
    /// Before the first batch.
    fn on_restore_start(&mut self, _progress: &RestoreProgress) {}
    /// After each batch.
    fn on_batch_restored(&mut self, _progress: &RestoreProgress) {}
    /// When the store is restored.
    fn on_restore_end(&mut self, _progress: &RestoreProgress) {}
}

impl RestoreListener for () {}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(from: RestoreFrom) -> RestorePlan {
        RestorePlan {
            store: "counts".into(),
            kind: StoreKind::KeyValue,
            changelog_topic: "app-counts-changelog".into(),
            from,
        }
    }

    #[test]
    fn a_checkpoint_outside_the_changelogs_range_is_stale() {
        let plan = |from| RestorePlan {
            store: "s".into(),
            kind: StoreKind::KeyValue,
            changelog_topic: "app-s-changelog".into(),
            from,
        };
        // Applied 9 of a changelog that holds 0..10: consistent (nothing to restore).
        plan(RestoreFrom::After(9))
            .check(0, 10)
            .expect("consistent");
        plan(RestoreFrom::After(4))
            .check(5, 10)
            .expect("next offset is the log start");
        plan(RestoreFrom::Beginning)
            .check(7, 10)
            .expect("no checkpoint");
        // The changelog was recreated (empty or shorter) or reset: offset 9 is not in it.
        for (start, end) in [(0, 0), (0, 9), (12, 20)] {
            let err = plan(RestoreFrom::After(9))
                .check(start, end)
                .expect_err("stale");
            assert_eq!(err.fault(), crate::Fault::Corruption, "{err}");
        }
    }

    #[test]
    fn restore_resumes_after_the_checkpoint_or_at_the_log_start() {
        assert_eq!(plan(RestoreFrom::Beginning).seek_offset(7), 7);
        assert_eq!(plan(RestoreFrom::After(41)).seek_offset(0), 42);
        // Compaction deleted the checkpointed offset's neighbourhood: start at the log start.
        assert_eq!(plan(RestoreFrom::After(41)).seek_offset(100), 100);
        assert!(!plan(RestoreFrom::After(41)).is_needed(0, 42));
        assert!(plan(RestoreFrom::After(41)).is_needed(0, 43));
        assert!(!plan(RestoreFrom::Beginning).is_needed(0, 0));
    }

    #[test]
    fn progress_counts_restored_records_and_remaining_offsets() {
        let mut p = RestoreProgress::new(&plan(RestoreFrom::After(9)), 0, 30);
        assert_eq!((p.start_offset(), p.remaining()), (10, 20));
        p.record_batch(
            &RestoreBatch {
                applied: 5,
                skipped: 0,
                last_offset: Some(14),
            },
            None,
        );
        assert_eq!((p.restored(), p.position(), p.remaining()), (5, 15, 15));
        // The consumer moved past a commit marker at 29.
        p.record_batch(
            &RestoreBatch {
                applied: 14,
                skipped: 0,
                last_offset: Some(28),
            },
            Some(30),
        );
        assert_eq!((p.restored(), p.remaining(), p.batches()), (19, 0, 2));
        assert!(p.is_complete());
    }
}
