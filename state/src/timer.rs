//! [`TimerStore`]: durable timers — `(key, due, payload)` — that survive restarts and move with
//! their task.
//!
//! # Timer semantics
//!
//! * One timer per key: scheduling a key again replaces its timer (due time and payload).
//! * A timer is due when `due <= now`; `now` comes from the caller (stream time or wall-clock
//!   time), never from a clock inside the store.
//! * [`TimerStore::due`]`(now)` removes and returns every due timer in `(due, key)` order; the
//!   processor acts on them in the same transaction, so under exactly-once a timer fires once:
//!   if the transaction aborts, the runtime's abort brings the timers back.
//! * Timers are changelogged like any store (values `[1u8][due: i64 BE][payload]`), so a task
//!   restored elsewhere has the same timers; restore rebuilds the due-time index.

use crate::error::Result;
use crate::timed::{TimedCore, TimedEntry};
use crate::types::RestoreBatch;

/// A durable timer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Timer {
    /// The timer's key (one timer per key).
    pub key: Vec<u8>,
    /// When it is due (millis, the caller's clock).
    pub due: i64,
    /// What the processor stored with it.
    pub payload: Vec<u8>,
}

impl From<TimedEntry> for Timer {
    fn from(e: TimedEntry) -> Self {
        Timer {
            key: e.key,
            due: e.time,
            payload: e.payload,
        }
    }
}

/// A store of durable timers: the data view a processor holds. Opened through
/// [`TaskState::register_timers`](crate::TaskState::register_timers).
///
/// Its lifecycle is out of a processor's reach (see [`kv`](crate::kv)):
///
/// ```compile_fail,E0599
/// fn misuse(store: &mut keel_state::TimerStore) {
///     let _ = store.take_changelog();
/// }
/// ```
///
/// ```compile_fail,E0599
/// fn misuse(store: &mut keel_state::TimerStore) -> keel_state::Result<()> {
///     store.commit(Some(1))
/// }
/// ```
#[derive(Debug)]
pub struct TimerStore {
    inner: TimedCore,
}

impl TimerStore {
    pub(crate) fn new(inner: TimedCore) -> Self {
        TimerStore { inner }
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

    /// Schedules the timer `key` at `due` with `payload`, replacing any timer of that key.
    /// Returns the replaced timer.
    pub fn schedule(
        &mut self,
        key: impl Into<Vec<u8>>,
        due: i64,
        payload: impl AsRef<[u8]>,
    ) -> Result<Option<Timer>> {
        let key = key.into();
        let previous = self.inner.set(key.clone(), due, payload.as_ref(), true)?;
        Ok(previous.map(|(due, payload)| Timer { key, due, payload }))
    }

    /// Cancels the timer `key`; returns it if there was one.
    pub fn cancel(&mut self, key: &[u8]) -> Result<Option<Timer>> {
        Ok(self.inner.remove(key, true)?.map(|(due, payload)| Timer {
            key: key.to_vec(),
            due,
            payload,
        }))
    }

    /// The timer `key`, if scheduled.
    pub fn get(&self, key: &[u8]) -> Result<Option<Timer>> {
        Ok(self.inner.get(key)?.map(|(due, payload)| Timer {
            key: key.to_vec(),
            due,
            payload,
        }))
    }

    /// Removes and returns every timer due at `now`, in `(due, key)` order.
    pub fn due(&mut self, now: i64) -> Result<Vec<Timer>> {
        self.due_at_most(now, usize::MAX)
    }

    /// Like [`due`](Self::due), firing at most `limit` timers (the earliest).
    pub fn due_at_most(&mut self, now: i64, limit: usize) -> Result<Vec<Timer>> {
        Ok(self
            .inner
            .pop_due(now, limit)?
            .into_iter()
            .map(Timer::from)
            .collect())
    }

    /// When the next timer is due (to schedule the next wall-clock punctuation).
    pub fn next_due(&self) -> Result<Option<i64>> {
        self.inner.next_time()
    }

    /// Timers whose key starts with `prefix`, in key order (e.g. every timer of one order).
    pub fn prefix(&self, prefix: &[u8]) -> Result<Vec<Timer>> {
        Ok(self
            .inner
            .scan_prefix(prefix)?
            .into_iter()
            .map(Timer::from)
            .collect())
    }

    /// Replays changelog records, rebuilding the due-time index (the runtime calls it through
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
