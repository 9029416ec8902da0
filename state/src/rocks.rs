//! The engine under every store: one RocksDB instance with a pending write set on top.
//!
//! Writes go to an in-memory pending set per column family (a hash map from key to
//! `Option<value>`, `None` = delete, that keeps the keys in the order they were first written)
//! and are visible to reads at once; reads look in the pending set first and fall back to
//! RocksDB, and iterators merge both (an iterator sorts the pending keys in its range when it is
//! made: point reads and writes, the hot path, pay one hash lookup instead of a tree search).
//! [`StoreCore::commit`] applies the pending set in one `WriteBatch`; [`StoreCore::abort`]
//! drops it. RocksDB therefore only ever holds writes whose Kafka transaction committed. The
//! write-ahead log is off: the changelog topic is the durable log, and a clean close flushes
//! memtables before the checkpoint is written.
//!
//! Within a commit interval, a *savepoint* ([`StoreCore::set_savepoint`]) marks the pending set
//! before one input record; [`StoreCore::rollback_to_savepoint`] undoes every write made since
//! (in every column family, index columns included) and un-queues the changelog records they
//! queued, so a record that is dead-lettered halfway through the graph leaves no write behind.
//! The savepoint is an undo log (the position of each entry written after the savepoint and the
//! entry it had before, undone newest first), so it costs one small entry per write, not a copy
//! of the set. A key first written after the savepoint is the last entry when its undo comes,
//! so undoing it is a pop.
//!
//! A pending entry carries its own "waiting for the changelog" mark, so a write is one lookup
//! of the pending map (the hot path of every `put`). The positions of the entries that became
//! unlogged since the last drain are also listed in order, so a drain visits only the keys
//! written since the last one, without a lookup: the runtime drains after every input record
//! (sending the changelog while it processes), and the pending set holds the whole commit
//! interval.

use std::fmt;
use std::iter::Peekable;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use indexmap::map::Entry;
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, DBRawIteratorWithThreadMode, FlushOptions,
    ReadOptions, WriteBatch, WriteOptions,
};

use crate::changelog::ChangelogRecord;
use crate::env::StoreEnv;
use crate::error::{Error, Result};
use crate::types::RestoreBatch;

/// Index of the primary column family (RocksDB's `default`), the one that is changelogged.
pub(crate) const PRIMARY: usize = 0;

/// What one pending entry costs beyond its key and value bytes, for
/// [`StoreCore::pending_bytes`]: the map's entry (hash, key and value headers, flag) and its
/// index slot, rounded up.
const PENDING_ENTRY_BYTES: usize = 80;

/// The bytes `write` counts for one pending entry.
fn entry_bytes(key: &[u8], write: &PendingWrite) -> usize {
    PENDING_ENTRY_BYTES + key.len() + write.value.as_ref().map_or(0, Vec::len)
}

/// The pending writes of one column family: a hash map that keeps first-write order, so an
/// entry's position stays valid until the commit (entries are only ever appended, or popped by
/// a savepoint rollback). The hasher is seeded per map: keys come from input records, and the
/// map is emptied at every commit.
type Pending = indexmap::IndexMap<Vec<u8>, PendingWrite, foldhash::fast::RandomState>;

/// An uncommitted write of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PendingWrite {
    /// The value; `None` is a delete.
    value: Option<Vec<u8>>,
    /// The key's latest write has not been taken for the changelog yet (primary column family
    /// only).
    unlogged: bool,
}

/// What the pending set looked like at a savepoint: per write since, in order, the column
/// family, the entry's position and the pending entry the key had just before that write
/// (`None`: none, the write appended it); and how long the unlogged list was.
#[derive(Debug, Default)]
struct Savepoint {
    open: bool,
    undo: Vec<(usize, usize, Option<PendingWrite>)>,
    unlogged_len: usize,
}

pub(crate) struct StoreCore {
    name: Arc<str>,
    path: PathBuf,
    db: Arc<DB>,
    columns: &'static [&'static str],
    /// Uncommitted writes, one map per column family.
    pending: Vec<Pending>,
    /// Pending primary entries marked `unlogged` (keys written since the last
    /// `take_changelog`).
    unlogged: usize,
    /// The positions in the primary pending set of the entries that became `unlogged` since
    /// the last drain, in that order; exactly the entries marked (a savepoint rollback cuts
    /// the list back to its length at the savepoint).
    unlogged_at: Vec<usize>,
    /// The savepoint (its undo log is kept between records, so opening one allocates nothing).
    savepoint: Savepoint,
    /// Approximate memory of the pending writes of every column family ([`entry_bytes`] per
    /// entry).
    pending_bytes: usize,
    applied_offset: Option<i64>,
    write_opts: WriteOptions,
    /// The options of every point read, made once: the `get` without options makes and frees
    /// a C++ `ReadOptions` per call (every `get` of a key the store does not hold).
    read_opts: ReadOptions,
    /// This store's memtables, counted against the write buffer budget while it is open.
    _memtables: crate::env::MemtableLease,
}

impl fmt::Debug for StoreCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreCore")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("pending_writes", &self.pending_writes())
            .field("unlogged", &self.unlogged)
            .field("applied_offset", &self.applied_offset)
            .finish_non_exhaustive()
    }
}

impl StoreCore {
    /// Opens (creating) the RocksDB instance at `path` with the given column families; the first
    /// one must be `default`.
    pub(crate) fn open(
        env: &StoreEnv,
        name: Arc<str>,
        path: PathBuf,
        columns: &'static [&'static str],
        applied_offset: Option<i64>,
    ) -> Result<Self> {
        debug_assert_eq!(columns.first(), Some(&rocksdb::DEFAULT_COLUMN_FAMILY_NAME));
        // The directory exists on disk even when RocksDB keeps its files in memory, so that
        // "is there local state for this store" has one answer.
        std::fs::create_dir_all(&path).map_err(|e| Error::io("create directory", &path, e))?;
        let descriptors = columns
            .iter()
            .map(|c| ColumnFamilyDescriptor::new(*c, env.column_options()));
        let db =
            DB::open_cf_descriptors(&env.db_options(), &path, descriptors).map_err(|source| {
                Error::Rocks {
                    store: name.to_string(),
                    path: path.clone(),
                    op: "open",
                    source,
                }
            })?;
        let mut write_opts = WriteOptions::default();
        write_opts.disable_wal(true);
        let memtables = env.lease_memtables(&name, columns.len());
        let core = StoreCore {
            name,
            path,
            db: Arc::new(db),
            columns,
            pending: (0..columns.len()).map(|_| Pending::default()).collect(),
            unlogged: 0,
            unlogged_at: Vec::new(),
            savepoint: Savepoint::default(),
            pending_bytes: 0,
            applied_offset,
            write_opts,
            read_opts: ReadOptions::default(),
            _memtables: memtables,
        };
        for col in 0..columns.len() {
            core.cf(col)?;
        }
        Ok(core)
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn applied_offset(&self) -> Option<i64> {
        self.applied_offset
    }

    /// Uncommitted writes to the primary column family.
    pub(crate) fn pending_writes(&self) -> usize {
        self.pending[PRIMARY].len()
    }

    /// Approximate bytes the uncommitted writes hold (keys, values and the map's own entries).
    pub(crate) fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Keys whose latest write has not been taken for the changelog yet.
    pub(crate) fn unlogged_writes(&self) -> usize {
        self.unlogged
    }

    fn cf(&self, col: usize) -> Result<&ColumnFamily> {
        let column = self.columns[col];
        self.db
            .cf_handle(column)
            .ok_or_else(|| Error::MissingColumnFamily {
                store: self.name.to_string(),
                path: self.path.clone(),
                column,
            })
    }

    pub(crate) fn rocks_error(&self, op: &'static str, source: rocksdb::Error) -> Error {
        Error::Rocks {
            store: self.name.to_string(),
            path: self.path.clone(),
            op,
            source,
        }
    }

    /// The current value: pending write if any, else RocksDB.
    pub(crate) fn get(&self, col: usize, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get_with(col, key, |v| v.map(<[u8]>::to_vec))
    }

    /// Like [`get`](Self::get) without copying the value out.
    pub(crate) fn get_with<R>(
        &self,
        col: usize,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> Result<R> {
        if let Some(pending) = self.pending[col].get(key) {
            return Ok(f(pending.value.as_deref()));
        }
        let value = self
            .db
            .get_pinned_cf_opt(self.cf(col)?, key, &self.read_opts)
            .map_err(|e| self.rocks_error("get", e))?;
        Ok(f(value.as_deref()))
    }

    /// Records a write. `logged` writes to the primary column family are queued for the
    /// changelog; index columns and restored records are not.
    pub(crate) fn write(&mut self, col: usize, key: Vec<u8>, value: Option<Vec<u8>>, logged: bool) {
        let queue = logged && col == PRIMARY;
        let (at, was_unlogged) = match self.pending[col].entry(key) {
            Entry::Occupied(mut entry) => {
                let at = entry.index();
                let was_unlogged = entry.get().unlogged;
                let write = PendingWrite {
                    value,
                    unlogged: was_unlogged || queue,
                };
                self.pending_bytes += entry_bytes(entry.key(), &write);
                self.pending_bytes -= entry_bytes(entry.key(), entry.get());
                let before = std::mem::replace(entry.get_mut(), write);
                if self.savepoint.open {
                    self.savepoint.undo.push((col, at, Some(before)));
                }
                (at, was_unlogged)
            }
            Entry::Vacant(entry) => {
                let at = entry.index();
                let write = PendingWrite {
                    value,
                    unlogged: queue,
                };
                self.pending_bytes += entry_bytes(entry.key(), &write);
                entry.insert(write);
                if self.savepoint.open {
                    self.savepoint.undo.push((col, at, None));
                }
                (at, false)
            }
        };
        if queue && !was_unlogged {
            self.unlogged += 1;
            self.unlogged_at.push(at);
        }
    }

    /// Marks the pending set as it is now (replacing any open savepoint), so that
    /// [`rollback_to_savepoint`](Self::rollback_to_savepoint) can return to it.
    pub(crate) fn set_savepoint(&mut self) {
        self.savepoint.open = true;
        self.savepoint.undo.clear();
        self.savepoint.unlogged_len = self.unlogged_at.len();
    }

    /// Undoes every write since the savepoint — pending entries of every column family and the
    /// changelog records they queued — and closes it. Without a savepoint, does nothing.
    pub(crate) fn rollback_to_savepoint(&mut self) {
        if !self.savepoint.open {
            return;
        }
        self.savepoint.open = false;
        for (col, at, before) in self.savepoint.undo.drain(..).rev() {
            let pending = &mut self.pending[col];
            match before {
                Some(write) => {
                    if let Some((key, current)) = pending.get_index_mut(at) {
                        self.pending_bytes += entry_bytes(key, &write);
                        self.pending_bytes -= entry_bytes(key, current);
                        *current = write;
                    }
                }
                None => {
                    debug_assert_eq!(at + 1, pending.len(), "an appended entry is undone last");
                    if let Some((key, write)) = pending.pop() {
                        self.pending_bytes -= entry_bytes(&key, &write);
                    }
                }
            }
        }
        // Every position listed since the savepoint belongs to a write just undone, which had
        // no unlogged mark before it (else it would not have been listed).
        let listed_since = self.unlogged_at.len() - self.savepoint.unlogged_len;
        self.unlogged_at.truncate(self.savepoint.unlogged_len);
        self.unlogged -= listed_since;
    }

    /// Keeps the writes since the savepoint and closes it.
    pub(crate) fn release_savepoint(&mut self) {
        self.savepoint.open = false;
    }

    /// Iterates `[lower, upper)` of a column family, pending writes merged over RocksDB.
    pub(crate) fn iter(
        &self,
        col: usize,
        lower: Option<&[u8]>,
        upper: Option<&[u8]>,
    ) -> Result<StoreIter<'_>> {
        // An empty or inverted range iterates nothing (RocksDB is not given inverted bounds).
        let upper = match (lower, upper) {
            (Some(l), Some(u)) if u < l => Some(l),
            _ => upper,
        };
        let mut read_opts = ReadOptions::default();
        if let Some(l) = lower {
            read_opts.set_iterate_lower_bound(l.to_vec());
        }
        if let Some(u) = upper {
            read_opts.set_iterate_upper_bound(u.to_vec());
        }
        let mut db = self.db.raw_iterator_cf_opt(self.cf(col)?, read_opts);
        match lower {
            Some(l) => db.seek(l),
            None => db.seek_to_first(),
        }
        // The pending keys in range, sorted: one pass over the interval's pending set and a
        // sort of what is in range, paid per iterator (iterators are rare next to point reads).
        let mut pending: Vec<(&'_ [u8], &'_ PendingWrite)> = self.pending[col]
            .iter()
            .map(|(key, write)| (key.as_slice(), write))
            .filter(|(key, _)| lower.is_none_or(|l| *key >= l) && upper.is_none_or(|u| *key < u))
            .collect();
        pending.sort_unstable_by(|a, b| a.0.cmp(b.0));
        Ok(StoreIter {
            core: self,
            pending: pending.into_iter().peekable(),
            db,
            failed: false,
        })
    }

    /// Drains the changelog records of writes made since the last call, one per key with its
    /// latest value, in the order the keys were first written since the last drain.
    /// Ends any open savepoint: once taken, the records are the runtime's to send.
    pub(crate) fn take_changelog_into(&mut self, out: &mut Vec<ChangelogRecord>) {
        out.reserve(self.unlogged);
        let name = Arc::clone(&self.name);
        let drained = self.drain_changelog(|key, value| {
            out.push(ChangelogRecord {
                store: Arc::clone(&name),
                key: key.to_vec(),
                value: value.map(<[u8]>::to_vec),
            });
            Ok::<(), std::convert::Infallible>(())
        });
        let Ok(_) = drained;
    }

    /// Hands `send` the changelog record of every key written since the last drain (its key
    /// and latest value, `None` = tombstone), in the order the keys were first written since
    /// then, borrowed from the pending set; returns how many. A record counts as taken once
    /// `send` returned `Ok` for it: after an error, that key and the ones after it stay
    /// unlogged. Ends any open savepoint: once taken, the records are the runtime's to send.
    pub(crate) fn drain_changelog<E>(
        &mut self,
        mut send: impl FnMut(&[u8], Option<&[u8]>) -> std::result::Result<(), E>,
    ) -> std::result::Result<usize, E> {
        self.savepoint.open = false;
        if self.unlogged == 0 {
            self.unlogged_at.clear();
            return Ok(0);
        }
        let mut taken = 0;
        let pending = &mut self.pending[PRIMARY];
        for (i, &at) in self.unlogged_at.iter().enumerate() {
            let Some((key, write)) = pending.get_index_mut(at) else {
                continue;
            };
            debug_assert!(write.unlogged, "an unlogged position lists a marked entry");
            if let Err(e) = send(key, write.value.as_deref()) {
                self.unlogged_at.drain(..i);
                self.unlogged -= taken;
                return Err(e);
            }
            write.unlogged = false;
            taken += 1;
        }
        debug_assert_eq!(taken, self.unlogged);
        self.unlogged_at.clear();
        self.unlogged = 0;
        Ok(taken)
    }

    /// Applies the pending writes to RocksDB in one batch and records `changelog_offset` as
    /// applied. On error the pending writes are kept, so the commit can be retried.
    pub(crate) fn commit(&mut self, changelog_offset: Option<i64>) -> Result<()> {
        if self.unlogged > 0 {
            return Err(Error::UndrainedChangelog {
                store: self.name.to_string(),
                count: self.unlogged,
            });
        }
        if let (Some(offset), Some(applied)) = (changelog_offset, self.applied_offset)
            && offset < applied
        {
            return Err(Error::OffsetRegression {
                store: self.name.to_string(),
                offset,
                applied,
            });
        }
        self.apply_pending(changelog_offset.or(self.applied_offset))
    }

    fn apply_pending(&mut self, applied_offset: Option<i64>) -> Result<()> {
        #[cfg(any(test, feature = "failpoints"))]
        if crate::failpoints::hit(crate::failpoints::STORE_APPLY) {
            return Err(Error::io(
                "write batch (failpoint store-apply)",
                &self.path,
                std::io::Error::other("injected by failpoint store-apply"),
            ));
        }
        self.savepoint.open = false;
        if self.pending.iter().any(|p| !p.is_empty()) {
            let mut batch = WriteBatch::default();
            for (col, writes) in self.pending.iter().enumerate() {
                let cf = self.cf(col)?;
                for (key, write) in writes {
                    match &write.value {
                        Some(value) => batch.put_cf(cf, key, value),
                        None => batch.delete_cf(cf, key),
                    }
                }
            }
            self.db
                .write_opt(batch, &self.write_opts)
                .map_err(|e| self.rocks_error("write batch", e))?;
            for writes in &mut self.pending {
                empty_keeping_room(writes);
            }
            self.pending_bytes = 0;
        }
        self.applied_offset = applied_offset;
        Ok(())
    }

    /// Drops every pending write and every changelog record not yet taken.
    pub(crate) fn abort(&mut self) {
        self.savepoint.open = false;
        for writes in &mut self.pending {
            empty_keeping_room(writes);
        }
        self.pending_bytes = 0;
        self.unlogged = 0;
        self.unlogged_at.clear();
    }

    pub(crate) fn ensure_restorable(&self) -> Result<()> {
        let count: usize = self.pending.iter().map(Pending::len).sum();
        if count == 0 {
            Ok(())
        } else {
            Err(Error::RestoreWithPendingWrites {
                store: self.name.to_string(),
                count,
            })
        }
    }

    /// Restore for stores whose changelog records are their primary entries verbatim: one
    /// `WriteBatch`, straight to RocksDB. Records at or below the applied offset are skipped.
    pub(crate) fn restore_verbatim<K, V>(
        &mut self,
        records: impl IntoIterator<Item = (i64, K, Option<V>)>,
    ) -> Result<RestoreBatch>
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        self.ensure_restorable()?;
        let cf = self.cf(PRIMARY)?;
        let mut batch = WriteBatch::default();
        let mut stats = RestoreBatch::default();
        for (offset, key, value) in records {
            if self.applied_offset.max(stats.last_offset) >= Some(offset) {
                stats.skipped += 1;
                continue;
            }
            match value {
                Some(value) => batch.put_cf(cf, key, value),
                None => batch.delete_cf(cf, key),
            }
            stats.applied += 1;
            stats.last_offset = Some(offset);
        }
        if stats.applied > 0 {
            self.db
                .write_opt(batch, &self.write_opts)
                .map_err(|e| self.rocks_error("write restore batch", e))?;
            self.applied_offset = stats.last_offset;
        }
        Ok(stats)
    }

    /// Finishes a restore batch that went through the pending set (TTL and timer stores, whose
    /// index is rebuilt from the entries): applies it and records `last_offset`.
    pub(crate) fn finish_restore(&mut self, last_offset: Option<i64>) -> Result<()> {
        debug_assert_eq!(self.unlogged, 0);
        let result = self.apply_pending(last_offset.or(self.applied_offset));
        if result.is_err() {
            self.abort();
        }
        result
    }

    /// Flushes memtables of every column family to SST files (atomically), so that what RocksDB
    /// holds survives a crash without a write-ahead log.
    pub(crate) fn flush(&self) -> Result<()> {
        let cfs = (0..self.columns.len())
            .map(|col| self.cf(col))
            .collect::<Result<Vec<_>>>()?;
        self.db
            .flush_cfs_opt(&cfs, &FlushOptions::default())
            .map_err(|e| self.rocks_error("flush", e))
    }

    /// RocksDB's estimate of the number of keys in a column family (committed state only).
    pub(crate) fn approximate_len(&self, col: usize) -> Result<u64> {
        self.db
            .property_int_value_cf(self.cf(col)?, "rocksdb.estimate-num-keys")
            .map(Option::unwrap_or_default)
            .map_err(|e| self.rocks_error("read property", e))
    }

    pub(crate) fn reader(&self) -> CommittedReader {
        CommittedReader {
            store: Arc::clone(&self.name),
            path: self.path.clone(),
            db: Arc::downgrade(&self.db),
        }
    }
}

/// Below this many entries a pending set keeps whatever room it grew to.
const PENDING_ROOM_KEPT: usize = 4096;

/// Empties `writes` for the next interval, keeping room for as many entries as it held (an
/// interval is usually like the last: no regrowth), but not the room of a burst long past: a
/// set holding less than half its capacity is made anew at the size it held, so one interval
/// of 500,000 writes does not keep ~35 MiB for the life of the store.
fn empty_keeping_room(writes: &mut Pending) {
    let held = writes.len();
    if writes.capacity() > (2 * held).max(PENDING_ROOM_KEPT) {
        *writes = Pending::with_capacity_and_hasher(held, Default::default());
    } else {
        writes.clear();
    }
}

/// Iterator over a key range of a store: pending writes merged over RocksDB, in key order,
/// pending deletes hiding committed entries. Yields an error (once, then ends) if RocksDB fails.
pub struct StoreIter<'a> {
    core: &'a StoreCore,
    pending: Peekable<std::vec::IntoIter<(&'a [u8], &'a PendingWrite)>>,
    db: DBRawIteratorWithThreadMode<'a, DB>,
    failed: bool,
}

impl fmt::Debug for StoreIter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreIter")
            .field("store", &self.core.name)
            .finish_non_exhaustive()
    }
}

impl Iterator for StoreIter<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        use std::cmp::Ordering;
        if self.failed {
            return None;
        }
        loop {
            if !self.db.valid()
                && let Err(e) = self.db.status()
            {
                self.failed = true;
                return Some(Err(self.core.rocks_error("iterate", e)));
            }
            let order = match (self.pending.peek(), self.db.key()) {
                (None, None) => return None,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((pending_key, _)), Some(db_key)) => (*pending_key).cmp(db_key),
            };
            if order == Ordering::Greater {
                let item = self.db.item().map(|(k, v)| (k.to_vec(), v.to_vec()));
                self.db.next();
                return item.map(Ok);
            }
            if order == Ordering::Equal {
                // The pending write shadows the committed entry.
                self.db.next();
            }
            if let Some((
                key,
                PendingWrite {
                    value: Some(value), ..
                },
            )) = self.pending.next()
            {
                return Some(Ok((key.to_vec(), value.clone())));
            }
            // A pending delete: skip it.
        }
    }
}

/// Read-only access to the *committed* state of a key-value store, for interactive queries from
/// other threads. Sees what RocksDB holds (writes of committed transactions), never the pending
/// writes of the current commit interval. Holds only a weak reference: once the store closes,
/// reads fail with [`Error::StoreClosed`] (retry after the rebalance settles).
#[derive(Clone)]
pub struct CommittedReader {
    store: Arc<str>,
    path: PathBuf,
    db: Weak<DB>,
}

impl fmt::Debug for CommittedReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommittedReader")
            .field("store", &self.store)
            .field("open", &self.is_open())
            .finish()
    }
}

impl CommittedReader {
    /// The store this reader reads.
    pub fn store(&self) -> &str {
        &self.store
    }

    /// Whether the store is still open.
    pub fn is_open(&self) -> bool {
        self.db.strong_count() > 0
    }

    fn db(&self) -> Result<Arc<DB>> {
        self.db.upgrade().ok_or_else(|| Error::StoreClosed {
            store: self.store.to_string(),
        })
    }

    fn rocks_error(&self, op: &'static str, source: rocksdb::Error) -> Error {
        Error::Rocks {
            store: self.store.to_string(),
            path: self.path.clone(),
            op,
            source,
        }
    }

    /// The committed value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db()?
            .get_pinned(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| self.rocks_error("get", e))
    }

    /// Up to `limit` committed entries whose key starts with `prefix`, in key order.
    pub fn prefix(&self, prefix: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let db = self.db()?;
        let mut read_opts = ReadOptions::default();
        if let Some(upper) = prefix_successor(prefix) {
            read_opts.set_iterate_upper_bound(upper);
        }
        let mut iter = db.raw_iterator_opt(read_opts);
        iter.seek(prefix);
        let mut out = Vec::new();
        while out.len() < limit
            && let Some((k, v)) = iter.item()
        {
            out.push((k.to_vec(), v.to_vec()));
            iter.next();
        }
        iter.status().map_err(|e| self.rocks_error("iterate", e))?;
        Ok(out)
    }
}

/// The smallest key greater than every key starting with `prefix`; `None` if there is none
/// (empty prefix or all `0xff`).
pub(crate) fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut upper = prefix.to_vec();
    while let Some(last) = upper.pop() {
        if last < u8::MAX {
            upper.push(last + 1);
            return Some(upper);
        }
    }
    None
}

/// Converts `Bound`s to the `[lower, upper)` form RocksDB iterates: the smallest key after `k`
/// is `k ++ [0]`.
pub(crate) fn to_half_open(
    start: Bound<&[u8]>,
    end: Bound<&[u8]>,
) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let successor = |k: &[u8]| {
        let mut k = k.to_vec();
        k.push(0);
        k
    };
    let lower = match start {
        Bound::Included(k) => Some(k.to_vec()),
        Bound::Excluded(k) => Some(successor(k)),
        Bound::Unbounded => None,
    };
    let upper = match end {
        Bound::Included(k) => Some(successor(k)),
        Bound::Excluded(k) => Some(k.to_vec()),
        Bound::Unbounded => None,
    };
    (lower, upper)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(dir: &Path) -> StoreCore {
        let mut config = crate::StateConfig::with_dir(dir);
        config.block_cache_bytes = 8 << 20;
        config.write_buffer_bytes = 4 << 20;
        config.memtable_bytes = 1 << 20;
        let env = StoreEnv::new(config, "rocks-test").expect("env");
        StoreCore::open(&env, "s".into(), dir.join("s"), &["default"], None).expect("open")
    }

    fn drain(core: &mut StoreCore) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        let Ok(_) = core.drain_changelog(|k, v| {
            out.push((k.to_vec(), v.map(<[u8]>::to_vec)));
            Ok::<(), std::convert::Infallible>(())
        });
        out
    }

    fn kv(k: &str, v: Option<&str>) -> (Vec<u8>, Option<Vec<u8>>) {
        (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec()))
    }

    #[test]
    fn a_drain_after_every_write_sends_each_write_once_and_keeps_the_pending_set() {
        let dir = tempfile::tempdir().expect("dir");
        let mut c = core(dir.path());
        c.write(PRIMARY, b"b".to_vec(), Some(b"1".to_vec()), true);
        c.write(PRIMARY, b"a".to_vec(), Some(b"1".to_vec()), true);
        c.write(PRIMARY, b"b".to_vec(), Some(b"2".to_vec()), true);
        assert_eq!(
            drain(&mut c),
            [kv("b", Some("2")), kv("a", Some("1"))],
            "first-write order, latest value"
        );
        assert_eq!(drain(&mut c), [], "drained");
        c.write(PRIMARY, b"a".to_vec(), None, true);
        assert_eq!(drain(&mut c), [kv("a", None)], "written again: sent again");
        assert_eq!(
            c.pending_writes(),
            2,
            "the interval's writes wait for the commit"
        );
        assert_eq!(c.get(PRIMARY, b"b").expect("get"), Some(b"2".to_vec()));
        c.commit(Some(7)).expect("commit");
        assert_eq!(c.applied_offset(), Some(7));
        assert_eq!(c.get(PRIMARY, b"a").expect("get"), None);
        assert_eq!(c.get(PRIMARY, b"b").expect("get"), Some(b"2".to_vec()));
    }

    #[test]
    fn a_rolled_back_write_is_not_drained_and_an_earlier_one_still_is() {
        let dir = tempfile::tempdir().expect("dir");
        let mut c = core(dir.path());
        c.write(PRIMARY, b"a".to_vec(), Some(b"1".to_vec()), true);
        assert_eq!(drain(&mut c), [kv("a", Some("1"))]);
        // Sent: a later record's write of `a` and of `b` are rolled back.
        c.write(PRIMARY, b"k".to_vec(), Some(b"1".to_vec()), true);
        c.set_savepoint();
        c.write(PRIMARY, b"a".to_vec(), Some(b"2".to_vec()), true);
        c.write(PRIMARY, b"b".to_vec(), Some(b"1".to_vec()), true);
        c.write(PRIMARY, b"k".to_vec(), Some(b"2".to_vec()), true);
        c.rollback_to_savepoint();
        assert_eq!(c.unlogged_writes(), 1);
        assert_eq!(
            drain(&mut c),
            [kv("k", Some("1"))],
            "the rollback took back a and b (a's sent value stays)"
        );
        assert_eq!(c.get(PRIMARY, b"a").expect("get"), Some(b"1".to_vec()));
        assert_eq!(c.get(PRIMARY, b"b").expect("get"), None);
        // A key rolled back and written again is drained once.
        c.set_savepoint();
        c.write(PRIMARY, b"c".to_vec(), Some(b"1".to_vec()), true);
        c.rollback_to_savepoint();
        c.write(PRIMARY, b"c".to_vec(), Some(b"2".to_vec()), true);
        assert_eq!(drain(&mut c), [kv("c", Some("2"))]);
        c.abort();
        assert_eq!(drain(&mut c), [], "an abort drops what was not drained");
        assert_eq!(c.pending_writes(), 0);
    }

    #[test]
    fn a_failed_send_leaves_that_record_and_the_rest_queued() {
        let dir = tempfile::tempdir().expect("dir");
        let mut c = core(dir.path());
        for k in ["a", "b", "c"] {
            c.write(PRIMARY, k.as_bytes().to_vec(), Some(b"1".to_vec()), true);
        }
        let mut sent = 0;
        let result = c.drain_changelog(|_, _| {
            if sent == 1 {
                return Err("queue full");
            }
            sent += 1;
            Ok(())
        });
        assert_eq!(result, Err("queue full"));
        assert_eq!(c.unlogged_writes(), 2);
        assert_eq!(drain(&mut c), [kv("b", Some("1")), kv("c", Some("1"))]);
        assert!(c.commit(None).is_ok());
    }

    #[test]
    fn pending_bytes_follow_writes_overwrites_rollbacks_and_the_commit() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut core = core(dir.path());
        let entry = |key: &str, value: usize| PENDING_ENTRY_BYTES + key.len() + value;
        core.write(PRIMARY, b"a".to_vec(), Some(vec![0; 10]), true);
        assert_eq!(core.pending_bytes(), entry("a", 10));
        core.set_savepoint();
        core.write(PRIMARY, b"a".to_vec(), Some(vec![0; 100]), true);
        core.write(PRIMARY, b"bb".to_vec(), None, true);
        assert_eq!(core.pending_bytes(), entry("a", 100) + entry("bb", 0));
        core.rollback_to_savepoint();
        assert_eq!(
            core.pending_bytes(),
            entry("a", 10),
            "the rollback gives the bytes back"
        );
        drain(&mut core);
        core.commit(None).expect("commit");
        assert_eq!(core.pending_bytes(), 0);
        core.write(PRIMARY, b"c".to_vec(), Some(vec![1]), true);
        core.abort();
        assert_eq!(core.pending_bytes(), 0);
    }

    #[test]
    fn a_pending_set_gives_back_the_room_of_a_burst_but_keeps_that_of_a_steady_load() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut core = core(dir.path());
        let interval = |core: &mut StoreCore, writes: usize| {
            for i in 0..writes {
                core.write(
                    PRIMARY,
                    format!("k{i:07}").into_bytes(),
                    Some(vec![1]),
                    true,
                );
            }
            drain(core);
            core.commit(None).expect("commit");
            core.pending[PRIMARY].capacity()
        };
        let after_burst = interval(&mut core, 100_000);
        assert!(
            after_burst >= 100_000,
            "room for the burst's size: {after_burst}"
        );
        let steady = interval(&mut core, 10_000);
        assert!(
            (10_000..50_000).contains(&steady),
            "room back to about the interval's size: {steady}"
        );
        assert_eq!(
            interval(&mut core, 10_000),
            steady,
            "a steady load keeps its room"
        );
        assert!(interval(&mut core, 10) >= 10);
        assert!(
            interval(&mut core, 10) <= PENDING_ROOM_KEPT * 2,
            "a small set stays small"
        );
    }

    #[test]
    fn prefix_successor_is_the_first_key_past_the_prefix() {
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xff, 0xff]), None);
        assert_eq!(prefix_successor(b""), None);
    }

    #[test]
    fn bounds_become_half_open_ranges() {
        assert_eq!(
            to_half_open(Bound::Excluded(b"a"), Bound::Included(b"c")),
            (Some(b"a\0".to_vec()), Some(b"c\0".to_vec()))
        );
        assert_eq!(
            to_half_open(Bound::Included(b"a"), Bound::Excluded(b"c")),
            (Some(b"a".to_vec()), Some(b"c".to_vec()))
        );
        assert_eq!(
            to_half_open(Bound::Unbounded, Bound::Unbounded),
            (None, None)
        );
    }
}
