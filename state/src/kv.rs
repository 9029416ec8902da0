//! [`KeyValueStore`]: a persistent `bytes → bytes` store in RocksDB with a changelog.
//!
//! # Commit interval semantics (for the runtime author)
//!
//! * `put` / `delete` go to the store's pending write set; `get`, `range`, `prefix` and `iter`
//!   see them at once (pending puts and deletes shadow RocksDB).
//! * Each write queues the key for the changelog. [`KeyValueStore::take_changelog`] drains the
//!   queue as [`ChangelogRecord`]s — one per key, with the key's latest value — which the runtime
//!   produces to the store's changelog partition inside the current transaction.
//! * After the transaction committed, [`KeyValueStore::commit`]`(Some(offset))` (offset of the
//!   last changelog record produced for this store in that transaction) applies the pending set
//!   to RocksDB in one `WriteBatch` and remembers the offset for the checkpoint. With no writes,
//!   pass the previous offset or `None`.
//! * If the transaction aborted, [`KeyValueStore::abort`] drops the pending set and the
//!   undrained changelog queue: RocksDB never saw those writes.
//! * `commit` refuses to run while changelog records are undrained
//!   ([`Error::UndrainedChangelog`](crate::Error::UndrainedChangelog)): those writes would be
//!   in RocksDB but not in the changelog, and a restore would lose them.
//! * If `commit` fails (disk), the pending set is kept and the commit can be retried; a runtime
//!   that gives up closes the task dirty, which forces a restore from the changelog.

use std::ops::Bound;

use crate::changelog::ChangelogRecord;
use crate::error::Result;
use crate::restore::RestoreBatch;
use crate::rocks::{
    CommittedReader, PRIMARY, StoreCore, StoreIter, prefix_successor, to_half_open,
};

/// Column families of a key-value store.
pub(crate) const COLUMNS: &[&str] = &[rocksdb::DEFAULT_COLUMN_FAMILY_NAME];

/// A persistent key-value store with a pending write set and a changelog.
/// Opened through [`TaskState::register_kv`](crate::TaskState::register_kv).
#[derive(Debug)]
pub struct KeyValueStore {
    core: StoreCore,
}

impl KeyValueStore {
    pub(crate) fn new(core: StoreCore) -> Self {
        KeyValueStore { core }
    }

    pub(crate) fn core(&self) -> &StoreCore {
        &self.core
    }

    pub(crate) fn core_mut(&mut self) -> &mut StoreCore {
        &mut self.core
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        self.core.name()
    }

    /// The value of `key`, pending writes included.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.core.get(PRIMARY, key)
    }

    /// Calls `f` with the value of `key` without copying it out of RocksDB.
    pub fn get_with<R>(&self, key: &[u8], f: impl FnOnce(Option<&[u8]>) -> R) -> Result<R> {
        self.core.get_with(PRIMARY, key, f)
    }

    /// Sets `key` to `value` (pending until commit) and queues it for the changelog.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.core
            .write(PRIMARY, key.into(), Some(value.into()), true);
    }

    /// Deletes `key` (pending until commit) and queues a tombstone for the changelog.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.core.write(PRIMARY, key.into(), None, true);
    }

    /// Entries with keys in `(start, end)`, in key order, pending writes included.
    pub fn range(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Result<StoreIter<'_>> {
        let (lower, upper) = to_half_open(start, end);
        self.core.iter(PRIMARY, lower.as_deref(), upper.as_deref())
    }

    /// Entries whose key starts with `prefix`, in key order, pending writes included.
    pub fn prefix(&self, prefix: &[u8]) -> Result<StoreIter<'_>> {
        let upper = prefix_successor(prefix);
        self.core.iter(PRIMARY, Some(prefix), upper.as_deref())
    }

    /// Every entry, in key order, pending writes included.
    pub fn iter(&self) -> Result<StoreIter<'_>> {
        self.core.iter(PRIMARY, None, None)
    }

    /// Drains the changelog records of the writes made since the last call: one per key, with
    /// its latest value (`None` = tombstone), in key order.
    pub fn take_changelog(&mut self) -> Vec<ChangelogRecord> {
        let mut out = Vec::new();
        self.core.take_changelog_into(&mut out);
        out
    }

    /// Keys written since the last [`take_changelog`](Self::take_changelog).
    pub fn unlogged_writes(&self) -> usize {
        self.core.unlogged_writes()
    }

    /// Writes waiting for [`commit`](Self::commit).
    pub fn pending_writes(&self) -> usize {
        self.core.pending_writes()
    }

    /// Applies the pending writes to RocksDB in one batch, after their transaction committed.
    /// `changelog_offset` is the offset of the last changelog record of this store in that
    /// transaction (`None`: unknown or no writes — the applied offset stays as it was, which is
    /// safe: restore just replays more).
    pub fn commit(&mut self, changelog_offset: Option<i64>) -> Result<()> {
        self.core.commit(changelog_offset)
    }

    /// Drops the pending writes and undrained changelog records: the transaction aborted.
    pub fn abort(&mut self) {
        self.core.abort();
    }

    /// Writes changelog records `(offset, key, value)` straight to RocksDB in one batch. See
    /// [`restore`](crate::restore).
    pub fn restore_batch<K, V>(
        &mut self,
        records: impl IntoIterator<Item = (i64, K, Option<V>)>,
    ) -> Result<RestoreBatch>
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        self.core.restore_verbatim(records)
    }

    /// The changelog offset applied to RocksDB (what the checkpoint will record).
    pub fn applied_offset(&self) -> Option<i64> {
        self.core.applied_offset()
    }

    /// RocksDB's estimate of the number of committed keys.
    pub fn approximate_len(&self) -> Result<u64> {
        self.core.approximate_len(PRIMARY)
    }

    /// A handle reading the committed state from any thread (interactive queries).
    pub fn committed_reader(&self) -> CommittedReader {
        self.core.reader()
    }
}
