//! [`StoreEnv`]: the process-wide state environment — the state directory of one application,
//! and the block cache and write buffer manager that every store of the process shares so that
//! RocksDB's memory has one ceiling.
//!
//! Directory layout (as Kafka Streams):
//!
//! ```text
//! <state.dir>/<application.id>/
//!     <task-id>/            one per task (e.g. `0_3`: sub-topology 0, partition 3)
//!         .lock             held (flock) by the owner of the task
//!         .checkpoint       changelog offsets applied, see `checkpoint`
//!         <store>/          one RocksDB instance per store
//! ```

use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rocksdb::{BlockBasedOptions, Cache, DBCompressionType, LogLevel, Options, WriteBufferManager};

use crate::changelog::{changelog_topic, validate_name};
use crate::config::StateConfig;
use crate::error::{Error, Result};

/// File name of a task directory's lock.
pub const LOCK_FILE: &str = ".lock";

/// The state environment of one application in one process. Cheap to clone; clones share the
/// cache and write buffer manager.
#[derive(Clone)]
pub struct StoreEnv {
    inner: Arc<Inner>,
}

struct Inner {
    config: StateConfig,
    application_id: String,
    app_dir: PathBuf,
    cache: Cache,
    write_buffers: WriteBufferManager,
    /// RocksDB's in-memory file system, when `in_memory` is set; shared by every store.
    mem_env: Option<rocksdb::Env>,
    /// Column families of the open stores: each has a memtable with a fixed charge.
    open_memtables: Arc<AtomicUsize>,
    /// Whether [`StoreEnv::lease_memtables`] has warned that the budget is too small.
    warned: AtomicBool,
}

/// Counts a store's column families among the open memtables while it lives.
#[derive(Debug)]
pub(crate) struct MemtableLease {
    count: usize,
    open: Arc<AtomicUsize>,
}

impl Drop for MemtableLease {
    fn drop(&mut self) {
        self.open.fetch_sub(self.count, Ordering::Relaxed);
    }
}

/// What one memtable charges to the write buffer budget as soon as it holds a key (bytes):
/// its first arena block and its Bloom filter, allocated whole.
pub(crate) fn memtable_fixed_bytes(config: &StateConfig) -> usize {
    let bloom = config.memtable_bytes / 100 * config.memtable_bloom_percent as usize;
    config.arena_block_bytes + bloom
}

/// `Some(fixed bytes)` when `memtables` memtables' fixed charge is over half of the write
/// buffer budget: RocksDB then flushes memtables that hold next to nothing.
pub(crate) fn budget_too_small(config: &StateConfig, memtables: usize) -> Option<usize> {
    let fixed = memtables.saturating_mul(memtable_fixed_bytes(config));
    (fixed > config.write_buffer_bytes / 2).then_some(fixed)
}

impl fmt::Debug for StoreEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreEnv")
            .field("application_id", &self.inner.application_id)
            .field("app_dir", &self.inner.app_dir)
            .field("memory", &self.memory_usage())
            .finish_non_exhaustive()
    }
}

/// RocksDB memory of the whole process, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUsage {
    /// Configured block cache capacity (the ceiling).
    pub block_cache_capacity: usize,
    /// Bytes in the block cache, memtable reservations included.
    pub block_cache_usage: usize,
    /// Bytes pinned in the block cache (in use, not evictable).
    pub block_cache_pinned: usize,
    /// Configured total memtable budget.
    pub write_buffer_capacity: usize,
    /// Bytes of memtables of all stores.
    pub write_buffer_usage: usize,
}

impl StoreEnv {
    /// Validates `config`, creates `<config.dir>/<application_id>/` and the shared cache and
    /// write buffer manager.
    pub fn new(config: StateConfig, application_id: &str) -> Result<Self> {
        config.validate()?;
        validate_name("application id", application_id)?;
        let app_dir = config.dir.join(application_id);
        fs::create_dir_all(&app_dir).map_err(|e| Error::io("create directory", &app_dir, e))?;
        let cache = Cache::new_lru_cache(config.block_cache_bytes);
        let write_buffers = WriteBufferManager::new_write_buffer_manager_with_cache(
            config.write_buffer_bytes,
            false,
            cache.clone(),
        );
        let mem_env = if config.in_memory {
            Some(rocksdb::Env::mem_env().map_err(|source| Error::Rocks {
                store: String::new(),
                path: app_dir.clone(),
                op: "create the in-memory environment",
                source,
            })?)
        } else {
            None
        };
        tracing::debug!(
            application_id,
            dir = %app_dir.display(),
            block_cache_bytes = config.block_cache_bytes,
            write_buffer_bytes = config.write_buffer_bytes,
            "state environment ready"
        );
        Ok(StoreEnv {
            inner: Arc::new(Inner {
                config,
                application_id: application_id.to_owned(),
                app_dir,
                cache,
                write_buffers,
                mem_env,
                open_memtables: Arc::new(AtomicUsize::new(0)),
                warned: AtomicBool::new(false),
            }),
        })
    }

    /// The application id this environment keeps state for.
    pub fn application_id(&self) -> &str {
        &self.inner.application_id
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &StateConfig {
        &self.inner.config
    }

    /// `<state.dir>/<application.id>`.
    pub fn app_dir(&self) -> &Path {
        &self.inner.app_dir
    }

    /// `<state.dir>/<application.id>/<task_id>` (not created).
    pub fn task_dir(&self, task_id: &str) -> Result<PathBuf> {
        validate_name("task id", task_id)?;
        Ok(self.inner.app_dir.join(task_id))
    }

    /// The changelog topic of `store`: `<application.id>-<store>-changelog`.
    pub fn changelog_topic(&self, store: &str) -> String {
        changelog_topic(&self.inner.application_id, store)
    }

    /// Counts `column_families` memtables of store `store` as open until the lease is dropped,
    /// and warns once when the open memtables' fixed charge ([`memtable_fixed_bytes`]) is over
    /// half of `write_buffer_bytes`.
    pub(crate) fn lease_memtables(&self, store: &str, column_families: usize) -> MemtableLease {
        let open = &self.inner.open_memtables;
        let now = open.fetch_add(column_families, Ordering::Relaxed) + column_families;
        let config = &self.inner.config;
        if let Some(fixed) = budget_too_small(config, now)
            && !self.inner.warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                application_id = %self.inner.application_id,
                store,
                memtables = now,
                fixed_bytes = fixed,
                write_buffer_bytes = config.write_buffer_bytes,
                "the open stores' memtables take over half of the write buffer budget before \
                 holding anything; RocksDB will flush nearly empty memtables (many small SST \
                 files and compactions): raise state.write_buffer_bytes (and \
                 block_cache_bytes) or lower arena_block_bytes / memtable_bloom_percent"
            );
        }
        MemtableLease {
            count: column_families,
            open: open.clone(),
        }
    }

    /// RocksDB memory of every store of this environment.
    pub fn memory_usage(&self) -> MemoryUsage {
        MemoryUsage {
            block_cache_capacity: self.inner.config.block_cache_bytes,
            block_cache_usage: self.inner.cache.get_usage(),
            block_cache_pinned: self.inner.cache.get_pinned_usage(),
            write_buffer_capacity: self.inner.config.write_buffer_bytes,
            write_buffer_usage: self.inner.write_buffers.get_usage(),
        }
    }

    /// Task ids that have a directory here, sorted; lets the runtime prefer tasks whose state is
    /// already local, and find directories to clean.
    pub fn local_tasks(&self) -> Result<Vec<String>> {
        let dir = &self.inner.app_dir;
        let entries = fs::read_dir(dir).map_err(|e| Error::io("list directory", dir, e))?;
        let mut tasks = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list directory", dir, e))?;
            let is_dir = entry
                .file_type()
                .map_err(|e| Error::io("stat", entry.path(), e))?
                .is_dir();
            if let Some(name) = entry.file_name().to_str()
                && is_dir
                && validate_name("task id", name).is_ok()
            {
                tasks.push(name.to_owned());
            }
        }
        tasks.sort();
        Ok(tasks)
    }

    /// Deletes the local state of a task that is not open (a task that moved to another
    /// instance, or `keel reset`). Returns whether there was anything to delete.
    /// Fails with [`Error::TaskLocked`] while the task is open.
    pub fn remove_task_state(&self, task_id: &str) -> Result<bool> {
        let dir = self.task_dir(task_id)?;
        if !dir.exists() {
            return Ok(false);
        }
        let _lock = lock_task_dir(task_id, &dir)?;
        let entries = fs::read_dir(&dir).map_err(|e| Error::io("read directory", &dir, e))?;
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                self.destroy_store(&entry.path())?;
            }
        }
        fs::remove_dir_all(&dir).map_err(|e| Error::io("remove directory", &dir, e))?;
        tracing::info!(task = task_id, dir = %dir.display(), "removed local task state");
        Ok(true)
    }

    /// Deletes the local state of every task of the application (`keel reset`). Fails with
    /// [`Error::TaskLocked`] if any task is open; tasks before it are already deleted.
    pub fn remove_all_local_state(&self) -> Result<()> {
        for task in self.local_tasks()? {
            self.remove_task_state(&task)?;
        }
        Ok(())
    }

    /// Deletes one store's RocksDB files (on disk or in memory) and its directory.
    pub(crate) fn destroy_store(&self, path: &Path) -> Result<()> {
        rocksdb::DB::destroy(&self.db_options(), path).map_err(|source| Error::Rocks {
            store: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path: path.to_owned(),
            op: "destroy",
            source,
        })?;
        if path.exists() {
            fs::remove_dir_all(path).map_err(|e| Error::io("remove directory", path, e))?;
        }
        Ok(())
    }

    fn block_based_options(&self) -> BlockBasedOptions {
        let mut block = BlockBasedOptions::default();
        block.set_block_cache(&self.inner.cache);
        block.set_cache_index_and_filter_blocks(true);
        block.set_pin_l0_filter_and_index_blocks_in_cache(true);
        block.set_bloom_filter(10.0, false);
        block
    }

    /// Options of one column family: shared block cache, bounded memtables.
    pub(crate) fn column_options(&self) -> Options {
        let mut opts = Options::default();
        opts.set_block_based_table_factory(&self.block_based_options());
        let config = &self.inner.config;
        opts.set_write_buffer_size(config.memtable_bytes);
        opts.set_max_write_buffer_number(3);
        // Small arena blocks and a small memtable Bloom filter: both are charged to the write
        // buffer budget per store as soon as it holds a key (see `StateConfig`).
        opts.set_arena_block_size(config.arena_block_bytes);
        // A whole-key Bloom filter per memtable: a point lookup of a key no memtable holds
        // (every get of a new key) skips their skip lists, which the profile of the engine
        // benchmark showed as the largest RocksDB cost.
        if config.memtable_bloom_percent > 0 {
            opts.set_memtable_prefix_bloom_ratio(f64::from(config.memtable_bloom_percent) / 100.0);
            opts.set_memtable_whole_key_filtering(true);
        }
        opts.set_compression_type(DBCompressionType::Lz4);
        opts.set_level_compaction_dynamic_level_bytes(true);
        opts
    }

    /// Options of one store's RocksDB instance.
    pub(crate) fn db_options(&self) -> Options {
        let config = &self.inner.config;
        let mut opts = self.column_options();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        if let Some(env) = &self.inner.mem_env {
            opts.set_env(env);
        }
        opts.set_write_buffer_manager(&self.inner.write_buffers);
        // Column families of one store are flushed together, so the time index of a TTL or
        // timer store never disagrees with its entries on disk.
        opts.set_atomic_flush(true);
        opts.set_max_open_files(config.max_open_files);
        opts.set_max_background_jobs(config.background_jobs);
        opts.set_log_level(LogLevel::Warn);
        opts.set_keep_log_file_num(2);
        opts.set_max_log_file_size(1024 * 1024);
        opts.set_stats_dump_period_sec(0);
        opts
    }
}

/// Takes the exclusive lock of a task directory (creating it), for as long as the returned file
/// lives. `flock` locks belong to the open file, so a second owner in the same process is refused
/// just like one in another process.
pub(crate) fn lock_task_dir(task_id: &str, dir: &Path) -> Result<File> {
    fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("open lock file", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(Error::TaskLocked {
            task: task_id.to_owned(),
            path: dir.to_owned(),
        }),
        Err(TryLockError::Error(e)) => Err(Error::io("lock", &path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixed_charge_of_a_memtable_is_its_first_arena_block_and_its_bloom_filter() {
        let config = StateConfig::default();
        // 64 KiB + 2 % of 8 MiB.
        assert_eq!(memtable_fixed_bytes(&config), 65_536 + 2 * 83_886);
    }

    #[test]
    fn the_budget_is_too_small_once_fixed_charges_pass_half_of_it() {
        let config = StateConfig::default();
        // The checkout: 66 stores fit the default 32 MiB budget with room to fill them.
        assert_eq!(budget_too_small(&config, 66), None);
        assert!(budget_too_small(&config, 80).is_some());
        // RocksDB's own defaults (1 MiB blocks, the 10 % filter Keel had): 66 stores do not fit.
        let old = StateConfig {
            arena_block_bytes: config.memtable_bytes / 8,
            memtable_bloom_percent: 10,
            ..config
        };
        assert!(budget_too_small(&old, 66).is_some());
        assert!(budget_too_small(&old, 5).is_none());
    }

    #[test]
    fn a_lease_counts_its_column_families_until_dropped() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("keel-lease-{}", std::process::id()));
        let env = StoreEnv::new(StateConfig::with_dir(&dir), "app")?;
        let a = env.lease_memtables("a", 2);
        let b = env.lease_memtables("b", 1);
        assert_eq!(env.inner.open_memtables.load(Ordering::Relaxed), 3);
        drop(a);
        assert_eq!(env.inner.open_memtables.load(Ordering::Relaxed), 1);
        drop(b);
        assert_eq!(env.inner.open_memtables.load(Ordering::Relaxed), 0);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
