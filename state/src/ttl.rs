//! [`TtlStore`]: a key-value store whose entries expire (inventory holds with a 10-minute TTL).
//!
//! # TTL semantics
//!
//! * Time is the caller's: every method that depends on it takes `now` in millis (stream time
//!   or wall-clock time, as the processor decides). The store never reads a clock, so the same
//!   inputs give the same outputs on replay.
//! * An entry with `expires_at = t` is live while `now < t` and expired from `now >= t`.
//!   [`TtlStore::get`] hides expired entries even before they are purged.
//! * [`TtlStore::expire`]`(now)` purges every expired entry and returns them in
//!   `(expires_at, key)` order, so a punctuator can emit a release for each; every purge queues a
//!   changelog tombstone. Cost is O(expired · log n) via the expiry index, not O(entries).
//! * Writes follow the commit-interval rules of [`KeyValueStore`](crate::kv): pending until
//!   the runtime commits, dropped when it aborts, drained with the task's changelog. Like every
//!   store type, [`TtlStore`] is the data view a processor holds; the lifecycle is on
//!   [`TaskState`](crate::TaskState) and [`Store`](crate::Store).
//! * Changelog values are `[1u8][expires_at: i64 BE][value]`; restore rebuilds the expiry index.
//!   Entries restored already expired stay until the next `expire` returns them, so a task
//!   that moves still releases every hold exactly once.

use std::time::Duration;

use crate::error::Result;
use crate::timed::{TimedCore, TimedEntry};
use crate::types::RestoreBatch;

/// An entry of a [`TtlStore`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TtlEntry {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// When it expires (millis, the caller's clock).
    pub expires_at: i64,
}

impl From<TimedEntry> for TtlEntry {
    fn from(e: TimedEntry) -> Self {
        TtlEntry {
            key: e.key,
            value: e.payload,
            expires_at: e.time,
        }
    }
}

/// A key-value store with per-entry expiry: the data view a processor holds. Opened through
/// [`TaskState::register_ttl`](crate::TaskState::register_ttl).
///
/// Its lifecycle is out of a processor's reach (see [`kv`](crate::kv)):
///
/// ```compile_fail,E0599
/// fn misuse(store: &mut keel_state::TtlStore) {
///     let _ = store.take_changelog();
/// }
/// ```
///
/// ```compile_fail,E0599
/// fn misuse(store: &mut keel_state::TtlStore) -> keel_state::Result<()> {
///     store.commit(Some(1))
/// }
/// ```
#[derive(Debug)]
pub struct TtlStore {
    inner: TimedCore,
}

impl TtlStore {
    pub(crate) fn new(inner: TimedCore) -> Self {
        TtlStore { inner }
    }

    pub(crate) fn timed(&self) -> &TimedCore {
        &self.inner
    }

    pub(crate) fn timed_mut(&mut self) -> &mut TimedCore {
        &mut self.inner
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        self.inner.core().name()
    }

    /// Sets `key` to `value`, expiring at `expires_at` (millis); replaces any previous entry and
    /// its expiry.
    pub fn put(
        &mut self,
        key: impl Into<Vec<u8>>,
        value: impl AsRef<[u8]>,
        expires_at: i64,
    ) -> Result<()> {
        self.inner
            .set(key.into(), expires_at, value.as_ref(), true)
            .map(drop)
    }

    /// Sets `key` to `value`, expiring `ttl` after `now`.
    pub fn put_with_ttl(
        &mut self,
        key: impl Into<Vec<u8>>,
        value: impl AsRef<[u8]>,
        now: i64,
        ttl: Duration,
    ) -> Result<()> {
        let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        self.put(key, value, now.saturating_add(ttl))
    }

    /// The value of `key` if it is live at `now`.
    pub fn get(&self, key: &[u8], now: i64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .inner
            .get(key)?
            .and_then(|(expires_at, value)| (now < expires_at).then_some(value)))
    }

    /// The entry of `key`, expired or not, while it has not been purged.
    pub fn get_entry(&self, key: &[u8]) -> Result<Option<TtlEntry>> {
        Ok(self.inner.get(key)?.map(|(expires_at, value)| TtlEntry {
            key: key.to_vec(),
            value,
            expires_at,
        }))
    }

    /// Removes `key` before it expires (a hold confirmed or released); queues a tombstone if
    /// there was an entry. Returns the removed entry.
    pub fn delete(&mut self, key: &[u8]) -> Result<Option<TtlEntry>> {
        Ok(self
            .inner
            .remove(key, true)?
            .map(|(expires_at, value)| TtlEntry {
                key: key.to_vec(),
                value,
                expires_at,
            }))
    }

    /// Purges every entry expired at `now` and returns them in `(expires_at, key)` order.
    pub fn expire(&mut self, now: i64) -> Result<Vec<TtlEntry>> {
        self.expire_at_most(now, usize::MAX)
    }

    /// Like [`expire`](Self::expire), purging at most `limit` entries (the earliest), to bound
    /// the work of one punctuation.
    pub fn expire_at_most(&mut self, now: i64, limit: usize) -> Result<Vec<TtlEntry>> {
        Ok(self
            .inner
            .pop_due(now, limit)?
            .into_iter()
            .map(TtlEntry::from)
            .collect())
    }

    /// The earliest expiry of any entry (to schedule the next wall-clock punctuation).
    pub fn next_expiry(&self) -> Result<Option<i64>> {
        self.inner.next_time()
    }

    /// Live entries at `now` whose key starts with `prefix`, in key order.
    pub fn prefix(&self, prefix: &[u8], now: i64) -> Result<Vec<TtlEntry>> {
        Ok(self
            .inner
            .scan_prefix(prefix)?
            .into_iter()
            .filter(|e| now < e.time)
            .map(TtlEntry::from)
            .collect())
    }

    /// Replays changelog records, rebuilding the expiry index (the runtime calls it through
    /// [`Store::restore_batch`](crate::Store::restore_batch)).
    pub(crate) fn restore_batch<K, V>(
        &mut self,
        records: impl IntoIterator<Item = (i64, K, Option<V>)>,
    ) -> Result<RestoreBatch>
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        self.inner.restore_batch(records)
    }
}
