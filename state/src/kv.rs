//! [`KeyValueStore`]: a persistent `bytes → bytes` store in RocksDB with a changelog.
//!
//! # Two sides of a store
//!
//! [`KeyValueStore`] (like [`TtlStore`](crate::TtlStore) and [`TimerStore`](crate::TimerStore))
//! is the *data view* a processor holds: `get`, `get_with`, `put`, `delete`, `range`, `prefix`,
//! `iter`. It has no lifecycle method, so no holder of a `&mut KeyValueStore` can drain the
//! changelog, commit, abort or restore and break exactly-once. The lifecycle belongs to the
//! runtime and is reached only through [`TaskState`](crate::TaskState) (every store of a task)
//! and [`Store`](crate::Store) (one store of any kind), which processors never see.
//!
//! # Commit interval semantics (for the runtime author)
//!
//! * `put` / `delete` go to the store's pending write set; `get`, `range`, `prefix` and `iter`
//!   see them at once (pending puts and deletes shadow RocksDB).
//! * Each write queues the key for the changelog. [`TaskState::take_changelog`] (or
//!   [`Store::take_changelog`]) drains the queue as [`ChangelogRecord`]s — one per key, with the
//!   key's latest value — which the runtime produces to the store's changelog partition inside
//!   the current transaction.
//! * After the transaction committed, [`TaskState::commit`] (or
//!   [`Store::commit`]`(Some(offset))`, the offset of the last changelog record produced for this
//!   store in that transaction) applies the pending set to RocksDB in one `WriteBatch` and
//!   remembers the offset for the checkpoint. With no writes, pass the previous offset or
//!   `None`.
//! * If the transaction aborted, [`TaskState::abort`] drops the pending set and the undrained
//!   changelog queue: RocksDB never saw those writes.
//! * `commit` refuses to run while changelog records are undrained
//!   ([`Error::UndrainedChangelog`](crate::Error::UndrainedChangelog)): those writes would be
//!   in RocksDB but not in the changelog, and a restore would lose them.
//! * If `commit` fails (disk), the pending set is kept and the commit can be retried; a runtime
//!   that gives up closes the task dirty, which forces a restore from the changelog.
//!
//! [`ChangelogRecord`]: crate::ChangelogRecord
//! [`TaskState::take_changelog`]: crate::TaskState::take_changelog
//! [`TaskState::commit`]: crate::TaskState::commit
//! [`TaskState::abort`]: crate::TaskState::abort
//! [`Store::take_changelog`]: crate::Store::take_changelog
//! [`Store::commit`]: crate::Store::commit

use std::ops::Bound;

use crate::error::Result;
use crate::rocks::{PRIMARY, StoreCore, StoreIter, prefix_successor, to_half_open};
use crate::types::RestoreBatch;

/// Column families of a key-value store.
pub(crate) const COLUMNS: &[&str] = &[rocksdb::DEFAULT_COLUMN_FAMILY_NAME];

/// A persistent key-value store with a pending write set and a changelog: the data view a
/// processor holds. Opened through [`TaskState::register_kv`](crate::TaskState::register_kv).
///
/// Only data operations are reachable through it; reads see this interval's writes:
///
/// ```
/// # fn main() -> keel_state::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("keel-kv-doc-{}", std::process::id()));
/// # let env = keel_state::StoreEnv::new(keel_state::StateConfig::with_dir(&dir), "doc")?;
/// # let mut task = env.open_task("0_0", keel_state::Guarantee::ExactlyOnce)?;
/// let store: &mut keel_state::KeyValueStore = task.register_kv("counts")?;
/// store.put(b"a".to_vec(), b"1".to_vec());
/// assert_eq!(store.get(b"a")?, Some(b"1".to_vec()));
/// store.delete(b"a".to_vec());
/// assert_eq!(store.iter()?.count(), 0);
/// # drop(task);
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(())
/// # }
/// ```
///
/// The lifecycle is not: draining the changelog does not compile for a holder of the view,
///
/// ```compile_fail,E0599
/// fn misuse(store: &mut keel_state::KeyValueStore) {
///     let _ = store.take_changelog();
/// }
/// ```
///
/// nor does committing, aborting or restoring:
///
/// ```compile_fail,E0599
/// fn misuse(store: &mut keel_state::KeyValueStore) -> keel_state::Result<()> {
///     store.commit(Some(1))
/// }
/// ```
///
/// ```compile_fail,E0599
/// fn misuse(store: &mut keel_state::KeyValueStore) {
///     store.abort();
/// }
/// ```
///
/// ```compile_fail,E0624
/// fn misuse(store: &mut keel_state::KeyValueStore) {
///     let _ = store.restore_batch([(0_i64, b"k".to_vec(), Some(b"v".to_vec()))]);
/// }
/// ```
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

    /// Replays changelog records `(offset, key, value)` straight to RocksDB in one batch (the
    /// runtime calls it through [`Store::restore_batch`](crate::Store::restore_batch)).
    pub(crate) fn restore_batch<K, V>(
        &mut self,
        records: impl IntoIterator<Item = (i64, K, Option<V>)>,
    ) -> Result<RestoreBatch>
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        self.core.restore_verbatim(records)
    }
}
