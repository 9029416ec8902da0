//! [`TaskState`]: the stores of one task, their checkpoint and their lifecycle.
//!
//! # Lifecycle (for the runtime author)
//!
//! ```text
//! open ─► register stores ─► restore ─► ┌► process: reads/writes, take_changelog ─┐
//!                                       │   produce changelog records in the txn   │
//!                                       │   commit txn ─► TaskState::commit        │
//!                                       └── or abort txn ─► TaskState::abort ◄─────┘
//!                                 close (clean: flush + checkpoint) │ close_dirty / crash
//! ```
//!
//! **Open.** [`TaskState::open`] locks `<state.dir>/<app>/<task>/` (`.lock`, flock: a second
//! owner in this or another process gets [`Error::TaskLocked`], retryable) and reads the
//! checkpoint. Under [`Guarantee::ExactlyOnce`] it then *deletes* the checkpoint: while the task
//! runs there is none, so if the process dies, the next open finds none and restores every store
//! from the beginning, as Kafka Streams does under EOS. (Local RocksDB here never holds
//! uncommitted writes, but without a checkpoint nothing vouches for what it holds.) Under
//! [`Guarantee::AtLeastOnce`] the checkpoint stays and is rewritten as commits advance; after a
//! crash it may be behind RocksDB, and replaying the changelog from it converges to the same
//! state.
//!
//! **Register.** `register_kv` / `register_ttl` / `register_timers` open `<task>/<store>/`. A
//! store the checkpoint does not vouch for (no entry, or an entry but no directory) is wiped
//! first, so restoring it from the beginning reproduces the changelog exactly — including keys
//! whose tombstones compaction already removed.
//!
//! **Restore.** See [`restore`](crate::restore): [`TaskState::restore_plans`], then
//! [`TaskState::restore_batch`] per polled batch.
//!
//! **Commit.** Per commit interval: [`TaskState::take_changelog`] (before the transaction
//! commits; as often as you like), produce the records, commit the transaction, then
//! [`TaskState::commit`] with the offset of the last changelog record of each store that wrote.
//! On a transaction abort: [`TaskState::abort`]. Per input record, the runtime may bracket the
//! record's writes with [`TaskState::set_savepoint`] and [`TaskState::release_savepoint`], or
//! [`TaskState::rollback_to_savepoint`] to undo them when the record is dead-lettered.
//!
//! **Close.** [`TaskState::close`] (revoke, shutdown) drops uncommitted writes, flushes every
//! store's memtables to disk and writes the checkpoint atomically. [`TaskState::close_dirty`]
//! (after an error, or a fenced producer) writes nothing, so the next owner restores.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::changelog::{ChangelogRecord, validate_name};
use crate::checkpoint::{CHECKPOINT_FILE, Checkpoint};
use crate::env::{StoreEnv, lock_task_dir};
use crate::error::{Error, Result};
use crate::kv::{self, KeyValueStore};
use crate::restore::{RestoreFrom, RestoreListener, RestorePlan, RestoreProgress};
use crate::rocks::{CommittedReader, StoreCore};
use crate::timed::{self, TimedCore};
use crate::timer::TimerStore;
use crate::ttl::TtlStore;
use crate::types::RestoreBatch;
pub use crate::types::{Guarantee, StoreKind};

/// Any store of a task, on the runtime's side: the lifecycle methods (`take_changelog`,
/// `commit`, `abort`, savepoints, `restore_batch`) live here once and work the same on every
/// kind. The variants hold the data views ([`KeyValueStore`], [`TtlStore`], [`TimerStore`]),
/// which are what processors get and which have no lifecycle method.
#[derive(Debug)]
pub enum Store {
    /// A key-value store.
    KeyValue(KeyValueStore),
    /// A TTL store.
    Ttl(TtlStore),
    /// A timer store.
    Timer(TimerStore),
}

/// A kind of store as a type, so one accessor serves all three.
trait Variant: Sized {
    const KIND: StoreKind;
    fn of(store: &Store) -> Option<&Self>;
    fn of_mut(store: &mut Store) -> Option<&mut Self>;
}

macro_rules! variant {
    ($ty:ty, $variant:ident, $kind:expr) => {
        impl Variant for $ty {
            const KIND: StoreKind = $kind;
            fn of(store: &Store) -> Option<&Self> {
                match store {
                    Store::$variant(s) => Some(s),
                    _ => None,
                }
            }
            fn of_mut(store: &mut Store) -> Option<&mut Self> {
                match store {
                    Store::$variant(s) => Some(s),
                    _ => None,
                }
            }
        }
    };
}

variant!(KeyValueStore, KeyValue, StoreKind::KeyValue);
variant!(TtlStore, Ttl, StoreKind::Ttl);
variant!(TimerStore, Timer, StoreKind::Timer);

impl Store {
    fn core(&self) -> &StoreCore {
        match self {
            Store::KeyValue(s) => s.core(),
            Store::Ttl(s) => s.timed().core(),
            Store::Timer(s) => s.timed().core(),
        }
    }

    fn core_mut(&mut self) -> &mut StoreCore {
        match self {
            Store::KeyValue(s) => s.core_mut(),
            Store::Ttl(s) => s.timed_mut().core_mut(),
            Store::Timer(s) => s.timed_mut().core_mut(),
        }
    }

    /// The store's kind.
    pub fn kind(&self) -> StoreKind {
        match self {
            Store::KeyValue(_) => StoreKind::KeyValue,
            Store::Ttl(_) => StoreKind::Ttl,
            Store::Timer(_) => StoreKind::Timer,
        }
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        self.core().name()
    }

    /// Drains the store's changelog records into `out`.
    pub fn take_changelog_into(&mut self, out: &mut Vec<ChangelogRecord>) {
        self.core_mut().take_changelog_into(out);
    }

    /// Hands `send` the changelog record of every key written since the last drain, borrowed:
    /// `(key, latest value)` (`None` = tombstone), in the order the keys were first written
    /// since then; returns how many were taken. The runtime sends them into the open
    /// transaction as they come (after each input record), so a commit only waits for the
    /// tail. A record counts as taken once `send` returned `Ok` for it; after an error the rest
    /// stay queued (the transaction aborts anyway, and [`abort`](Self::abort) drops them).
    /// Ends any open savepoint.
    pub fn drain_changelog<E>(
        &mut self,
        send: impl FnMut(&[u8], Option<&[u8]>) -> std::result::Result<(), E>,
    ) -> std::result::Result<usize, E> {
        self.core_mut().drain_changelog(send)
    }

    /// Drains the changelog records of the writes made since the last call: one per key, with
    /// its latest value (`None` = tombstone), in the order the keys were first written since
    /// the last drain. (A key written again after a drain gets a record again at the next.)
    pub fn take_changelog(&mut self) -> Vec<ChangelogRecord> {
        let mut out = Vec::new();
        self.take_changelog_into(&mut out);
        out
    }

    /// Keys written since the last changelog drain.
    pub fn unlogged_writes(&self) -> usize {
        self.core().unlogged_writes()
    }

    /// Writes waiting for commit.
    pub fn pending_writes(&self) -> usize {
        self.core().pending_writes()
    }

    /// Approximate memory (bytes) of the writes waiting for commit: keys, values and a fixed
    /// cost per entry.
    pub fn pending_bytes(&self) -> usize {
        self.core().pending_bytes()
    }

    /// The changelog offset applied to RocksDB.
    pub fn applied_offset(&self) -> Option<i64> {
        self.core().applied_offset()
    }

    /// Applies the pending writes to RocksDB in one batch, after their transaction committed.
    /// `changelog_offset` is the offset of the last changelog record of this store in that
    /// transaction (`None`: unknown or no writes — the applied offset stays as it was, which is
    /// safe: restore just replays more). Refuses while changelog records are undrained.
    pub fn commit(&mut self, changelog_offset: Option<i64>) -> Result<()> {
        self.core_mut().commit(changelog_offset)
    }

    /// Drops pending writes: the transaction aborted.
    pub fn abort(&mut self) {
        self.core_mut().abort();
    }

    /// Marks the pending writes as they are now. See [`TaskState::set_savepoint`].
    pub fn set_savepoint(&mut self) {
        self.core_mut().set_savepoint();
    }

    /// Undoes the writes since the savepoint. See [`TaskState::rollback_to_savepoint`].
    pub fn rollback_to_savepoint(&mut self) {
        self.core_mut().rollback_to_savepoint();
    }

    /// Keeps the writes since the savepoint. See [`TaskState::release_savepoint`].
    pub fn release_savepoint(&mut self) {
        self.core_mut().release_savepoint();
    }

    /// Replays changelog records into RocksDB.
    pub fn restore_batch<K, V>(
        &mut self,
        records: impl IntoIterator<Item = (i64, K, Option<V>)>,
    ) -> Result<RestoreBatch>
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        match self {
            Store::KeyValue(s) => s.restore_batch(records),
            Store::Ttl(s) => s.restore_batch(records),
            Store::Timer(s) => s.restore_batch(records),
        }
    }

    /// RocksDB's estimate of the committed entries (store size metric).
    pub fn approximate_len(&self) -> Result<u64> {
        self.core().approximate_len(crate::rocks::PRIMARY)
    }

    /// The store's RocksDB directory.
    pub fn path(&self) -> &Path {
        self.core().path()
    }

    /// A handle reading the committed state from any thread (interactive queries); key-value
    /// stores only (`None` for TTL and timer stores, whose values are encoded).
    pub fn committed_reader(&self) -> Option<CommittedReader> {
        match self {
            Store::KeyValue(s) => Some(s.core().reader()),
            Store::Ttl(_) | Store::Timer(_) => None,
        }
    }
}

/// The state of one task: its directory lock, its checkpoint and its stores.
pub struct TaskState {
    env: StoreEnv,
    task_id: String,
    dir: PathBuf,
    guarantee: Guarantee,
    /// What the checkpoint said when the task was opened.
    opened_with: Checkpoint,
    /// Declared before `_lock` so the stores close before the lock is released.
    stores: Vec<Store>,
    /// Offsets applied since the checkpoint was last written (at-least-once only).
    records_since_checkpoint: u64,
    _lock: File,
}

impl fmt::Debug for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskState")
            .field("task_id", &self.task_id)
            .field("dir", &self.dir)
            .field("guarantee", &self.guarantee)
            .field("stores", &self.stores)
            .finish_non_exhaustive()
    }
}

/// Opening a task is the task state's job; the environment only lends its directory and memory
/// (so `env` never imports `task`).
impl StoreEnv {
    /// Opens (creating if needed) and locks the state of one task. See [`TaskState::open`].
    pub fn open_task(&self, task_id: &str, guarantee: Guarantee) -> Result<TaskState> {
        TaskState::open(self, task_id, guarantee)
    }
}

impl TaskState {
    /// Locks and opens the state directory of `task_id`, reading its checkpoint (and, under
    /// exactly-once, deleting it). A corrupt checkpoint is treated as missing (every store
    /// restores from the beginning) and logged.
    pub fn open(env: &StoreEnv, task_id: &str, guarantee: Guarantee) -> Result<Self> {
        let dir = env.task_dir(task_id)?;
        let lock = lock_task_dir(task_id, &dir)?;
        let path = dir.join(CHECKPOINT_FILE);
        let (checkpoint, corrupt) = match Checkpoint::read(&path) {
            Ok(checkpoint) => (checkpoint.unwrap_or_default(), false),
            Err(e @ Error::CorruptCheckpoint { .. }) => {
                tracing::warn!(task = task_id, error = %e, "ignoring corrupt checkpoint; stores will restore from the beginning");
                (Checkpoint::default(), true)
            }
            Err(e) => return Err(e),
        };
        if guarantee == Guarantee::ExactlyOnce || corrupt {
            Checkpoint::delete(&path)?;
        }
        tracing::info!(
            task = task_id,
            dir = %dir.display(),
            ?guarantee,
            checkpointed_stores = checkpoint.iter().count(),
            "opened task state"
        );
        Ok(TaskState {
            env: env.clone(),
            task_id: task_id.to_owned(),
            dir,
            guarantee,
            opened_with: checkpoint,
            stores: Vec::new(),
            records_since_checkpoint: 0,
            _lock: lock,
        })
    }

    /// The task id.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// The task directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The guarantee the task was opened under.
    pub fn guarantee(&self) -> Guarantee {
        self.guarantee
    }

    /// The offset the checkpoint recorded for `store` when the task was opened.
    pub fn checkpointed_offset(&self, store: &str) -> Option<i64> {
        self.opened_with.get(store)
    }

    /// Opens the key-value store `name` (wiping it first if the checkpoint does not vouch for
    /// it).
    pub fn register_kv(&mut self, name: &str) -> Result<&mut KeyValueStore> {
        self.register(name, StoreKind::KeyValue)?;
        self.kv_mut(name)
    }

    /// Opens the TTL store `name`.
    pub fn register_ttl(&mut self, name: &str) -> Result<&mut TtlStore> {
        self.register(name, StoreKind::Ttl)?;
        self.ttl_mut(name)
    }

    /// Opens the timer store `name`.
    pub fn register_timers(&mut self, name: &str) -> Result<&mut TimerStore> {
        self.register(name, StoreKind::Timer)?;
        self.timers_mut(name)
    }

    fn register(&mut self, name: &str, kind: StoreKind) -> Result<()> {
        validate_name("store name", name)?;
        if self.stores.iter().any(|s| s.name() == name) {
            return Err(Error::DuplicateStore {
                task: self.task_id.clone(),
                store: name.to_owned(),
            });
        }
        let path = self.dir.join(name);
        let mut offset = self.opened_with.get(name);
        let exists = path.exists();
        if offset.is_some() && !exists {
            tracing::warn!(task = %self.task_id, store = name, "checkpoint names a store whose directory is missing; restoring it from the beginning");
            offset = None;
        }
        if offset.is_none() && exists {
            tracing::info!(task = %self.task_id, store = name, "no checkpoint for local store; wiping it for a full restore");
            self.env.destroy_store(&path)?;
        }
        let name: Arc<str> = name.into();
        let store = match kind {
            StoreKind::KeyValue => Store::KeyValue(KeyValueStore::new(StoreCore::open(
                &self.env,
                name,
                path,
                kv::COLUMNS,
                offset,
            )?)),
            StoreKind::Ttl => Store::Ttl(TtlStore::new(TimedCore::new(StoreCore::open(
                &self.env,
                name,
                path,
                timed::COLUMNS,
                offset,
            )?))),
            StoreKind::Timer => Store::Timer(TimerStore::new(TimedCore::new(StoreCore::open(
                &self.env,
                name,
                path,
                timed::COLUMNS,
                offset,
            )?))),
        };
        self.stores.push(store);
        Ok(())
    }

    fn index(&self, name: &str) -> Result<usize> {
        self.stores
            .iter()
            .position(|s| s.name() == name)
            .ok_or_else(|| Error::UnknownStore {
                task: self.task_id.clone(),
                store: name.to_owned(),
            })
    }

    fn wrong_kind(&self, store: &Store, expected: StoreKind) -> Error {
        Error::WrongStoreKind {
            task: self.task_id.clone(),
            store: store.name().to_owned(),
            expected,
            actual: store.kind(),
        }
    }

    /// The store `name`.
    pub fn store(&self, name: &str) -> Result<&Store> {
        let index = self.index(name)?;
        Ok(&self.stores[index])
    }

    /// The store `name`, mutably.
    pub fn store_mut(&mut self, name: &str) -> Result<&mut Store> {
        let index = self.index(name)?;
        Ok(&mut self.stores[index])
    }

    /// Approximate memory (bytes) of every store's writes waiting for commit
    /// ([`Store::pending_bytes`]).
    pub fn pending_bytes(&self) -> usize {
        self.stores.iter().map(Store::pending_bytes).sum()
    }

    /// Every store, in registration order.
    pub fn stores(&self) -> impl Iterator<Item = &Store> {
        self.stores.iter()
    }

    /// Every store, mutably (to hold several at once).
    pub fn stores_mut(&mut self) -> impl Iterator<Item = &mut Store> {
        self.stores.iter_mut()
    }

    /// The key-value store `name`.
    pub fn kv(&self, name: &str) -> Result<&KeyValueStore> {
        self.typed(name)
    }

    /// The key-value store `name`, mutably.
    pub fn kv_mut(&mut self, name: &str) -> Result<&mut KeyValueStore> {
        self.typed_mut(name)
    }

    /// The TTL store `name`.
    pub fn ttl(&self, name: &str) -> Result<&TtlStore> {
        self.typed(name)
    }

    /// The TTL store `name`, mutably.
    pub fn ttl_mut(&mut self, name: &str) -> Result<&mut TtlStore> {
        self.typed_mut(name)
    }

    /// The timer store `name`.
    pub fn timers(&self, name: &str) -> Result<&TimerStore> {
        self.typed(name)
    }

    /// The timer store `name`, mutably.
    pub fn timers_mut(&mut self, name: &str) -> Result<&mut TimerStore> {
        self.typed_mut(name)
    }

    fn typed<T: Variant>(&self, name: &str) -> Result<&T> {
        let store = self.store(name)?;
        T::of(store).ok_or_else(|| self.wrong_kind(store, T::KIND))
    }

    fn typed_mut<T: Variant>(&mut self, name: &str) -> Result<&mut T> {
        let index = self.index(name)?;
        let actual = self.stores[index].kind();
        let task = &self.task_id;
        T::of_mut(&mut self.stores[index]).ok_or_else(|| Error::WrongStoreKind {
            task: task.clone(),
            store: name.to_owned(),
            expected: T::KIND,
            actual,
        })
    }

    /// Where each registered store's restore starts.
    pub fn restore_plans(&self) -> Vec<RestorePlan> {
        self.stores.iter().map(|s| self.plan_for(s)).collect()
    }

    /// Where the restore of `store` starts.
    pub fn restore_plan(&self, store: &str) -> Result<RestorePlan> {
        Ok(self.plan_for(self.store(store)?))
    }

    fn plan_for(&self, store: &Store) -> RestorePlan {
        RestorePlan {
            store: store.name().into(),
            kind: store.kind(),
            changelog_topic: self.env.changelog_topic(store.name()),
            from: match store.applied_offset() {
                Some(offset) => RestoreFrom::After(offset),
                None => RestoreFrom::Beginning,
            },
        }
    }

    /// Writes one polled batch of `store`'s changelog, `(offset, key, Option<value>)`, straight
    /// to RocksDB.
    pub fn restore_batch<K, V>(
        &mut self,
        store: &str,
        records: impl IntoIterator<Item = (i64, K, Option<V>)>,
    ) -> Result<RestoreBatch>
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        self.store_mut(store)?.restore_batch(records)
    }

    /// Restores `store` from batches already in memory (the test driver, tests), starting at
    /// its plan and reporting to `listener`. `batches` should start at
    /// [`RestorePlan::seek_offset`] (earlier records are skipped anyway) and hold everything up
    /// to `log_end_offset`: when they run out, the restore counts as complete.
    pub fn restore<B, K, V>(
        &mut self,
        store: &str,
        log_start_offset: i64,
        log_end_offset: i64,
        batches: impl IntoIterator<Item = B>,
        listener: &mut dyn RestoreListener,
    ) -> Result<RestoreProgress>
    where
        B: IntoIterator<Item = (i64, K, Option<V>)>,
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        let plan = self.restore_plan(store)?;
        let mut progress = RestoreProgress::new(&plan, log_start_offset, log_end_offset);
        listener.on_restore_start(&progress);
        for batch in batches {
            if progress.is_complete() {
                break;
            }
            let stats = self.restore_batch(store, batch)?;
            progress.record_batch(&stats, None);
            listener.on_batch_restored(&progress);
        }
        // Everything the caller had is applied; what lies between the last record and the end
        // offset are commit markers.
        progress.mark_complete();
        tracing::info!(
            task = %self.task_id,
            store,
            from = ?plan.from,
            restored = progress.restored(),
            remaining = progress.remaining(),
            "restored store"
        );
        listener.on_restore_end(&progress);
        Ok(progress)
    }

    /// Drains the changelog records of every store, in registration order.
    pub fn take_changelog(&mut self) -> Vec<ChangelogRecord> {
        let mut out = Vec::new();
        for store in &mut self.stores {
            store.take_changelog_into(&mut out);
        }
        out
    }

    /// After the transaction committed: applies every store's pending writes to RocksDB.
    /// `offsets` gives, per store that wrote, the offset of its last changelog record in the
    /// transaction; stores not named keep their applied offset. Contract violations (undrained
    /// changelog, offset going back, unknown store) are checked for every store before any
    /// store is written. A failed write leaves that store's pending set intact: calling `commit`
    /// again retries what is left.
    ///
    /// Under at-least-once, rewrites the checkpoint once
    /// [`checkpoint_interval_records`](crate::StateConfig::checkpoint_interval_records) offsets
    /// have been applied since the last one.
    pub fn commit<I, S>(&mut self, offsets: I) -> Result<()>
    where
        I: IntoIterator<Item = (S, i64)>,
        S: AsRef<str>,
    {
        let mut by_store = vec![None; self.stores.len()];
        for (name, offset) in offsets {
            by_store[self.index(name.as_ref())?] = Some(offset);
        }
        for (store, offset) in self.stores.iter().zip(&by_store) {
            let core = store.core();
            if core.unlogged_writes() > 0 {
                return Err(Error::UndrainedChangelog {
                    store: core.name().to_owned(),
                    count: core.unlogged_writes(),
                });
            }
            if let (Some(offset), Some(applied)) = (*offset, core.applied_offset())
                && offset < applied
            {
                return Err(Error::OffsetRegression {
                    store: core.name().to_owned(),
                    offset,
                    applied,
                });
            }
        }
        for (store, offset) in self.stores.iter_mut().zip(by_store) {
            let before = store.applied_offset();
            store.commit(offset)?;
            if let Some(after) = store.applied_offset() {
                let advanced = after.saturating_sub(before.unwrap_or(-1));
                self.records_since_checkpoint = self
                    .records_since_checkpoint
                    .saturating_add(u64::try_from(advanced).unwrap_or(0));
            }
        }
        if self.guarantee == Guarantee::AtLeastOnce
            && self.records_since_checkpoint >= self.env.config().checkpoint_interval_records
        {
            self.write_checkpoint()?;
        }
        Ok(())
    }

    /// The transaction aborted: drops every store's pending writes and undrained changelog.
    pub fn abort(&mut self) {
        for store in &mut self.stores {
            store.abort();
        }
    }

    /// Marks every store's pending writes as they are now (before one input record), replacing
    /// any open savepoint. Until [`rollback_to_savepoint`](Self::rollback_to_savepoint) or
    /// [`release_savepoint`](Self::release_savepoint), each write remembers what it replaced
    /// in the pending set. `take_changelog`, `commit` and `abort` end the savepoint.
    pub fn set_savepoint(&mut self) {
        for store in &mut self.stores {
            store.set_savepoint();
        }
    }

    /// Undoes every write made since the savepoint in every store — entries, the TTL and timer
    /// indexes, and the changelog records those writes queued — as if they were never made,
    /// and ends the savepoint. (A record dead-lettered halfway through the graph.)
    pub fn rollback_to_savepoint(&mut self) {
        for store in &mut self.stores {
            store.rollback_to_savepoint();
        }
    }

    /// Keeps the writes made since the savepoint and ends it.
    pub fn release_savepoint(&mut self) {
        for store in &mut self.stores {
            store.release_savepoint();
        }
    }

    /// Flushes every store and writes the checkpoint now, whatever the guarantee. (Under
    /// exactly-once, a checkpoint on disk while the task runs means a crash will not force a
    /// full restore; only do this when the stores are known to match the committed changelog.)
    pub fn write_checkpoint(&mut self) -> Result<()> {
        let mut checkpoint = Checkpoint::new();
        for store in &self.stores {
            store.core().flush()?;
            if let Some(offset) = store.applied_offset() {
                checkpoint.set(store.name(), offset);
            }
        }
        checkpoint.write_atomic(&self.dir.join(CHECKPOINT_FILE))?;
        self.records_since_checkpoint = 0;
        tracing::debug!(task = %self.task_id, ?checkpoint, "wrote checkpoint");
        Ok(())
    }

    /// Clean close (revoke, shutdown): drops uncommitted writes, flushes every store and writes
    /// the checkpoint, then closes the stores and releases the lock. If this fails, nothing is
    /// checkpointed and the next owner restores from the changelog.
    pub fn close(mut self) -> Result<()> {
        for store in &mut self.stores {
            if store.pending_writes() > 0 || store.unlogged_writes() > 0 {
                tracing::warn!(
                    task = %self.task_id,
                    store = store.name(),
                    pending = store.pending_writes(),
                    "closing with uncommitted writes; dropping them"
                );
                store.abort();
            }
        }
        self.write_checkpoint()?;
        tracing::info!(task = %self.task_id, "closed task state cleanly");
        Ok(())
    }

    /// Dirty close (after an error, a fenced producer): writes no checkpoint, so under
    /// exactly-once the next owner restores every store from the beginning.
    pub fn close_dirty(self) {
        tracing::info!(task = %self.task_id, "closed task state without checkpoint");
    }
}
