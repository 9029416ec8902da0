//! [`StateConfig`]: where local state lives and how much memory RocksDB may use.
//!
//! One block cache and one write buffer manager are shared by every store of the process
//! ([`StoreEnv`](crate::StoreEnv)); memtables are charged to the block cache, so
//! `block_cache_bytes` is the ceiling for RocksDB's block cache *and* memtables together.
//! What is not under that ceiling: the pending write sets of open commit intervals, iterators in
//! flight, and RocksDB's fixed per-instance overhead (a few hundred KiB per store).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const MIB: usize = 1024 * 1024;

/// Local state settings (the runtime's `state` section).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Root of all local state (`state.dir`). Layout:
    /// `<dir>/<application.id>/<task-id>/<store>/` plus `<task-id>/.checkpoint` and `.lock`.
    pub dir: PathBuf,
    /// Capacity of the LRU block cache shared by every store of the process. Memtables are
    /// charged to it, so this is RocksDB's memory ceiling.
    pub block_cache_bytes: usize,
    /// Total memtable memory of all stores (part of `block_cache_bytes`); when reached, the
    /// largest memtables are flushed.
    pub write_buffer_bytes: usize,
    /// Size of one memtable of one store before it is flushed.
    pub memtable_bytes: usize,
    /// Size of the blocks a memtable allocates its entries from (RocksDB `arena_block_size`).
    /// The write buffer manager counts what a memtable has allocated, not what it holds
    /// (RocksDB wiki, "Write Buffer Manager", since 5.6), so each store that holds a single key
    /// charges one block to `write_buffer_bytes`. RocksDB's default, `memtable_bytes / 8`
    /// (1 MiB), made 66 small stores (the checkout's) flush at every commit; 64 KiB does not.
    pub arena_block_bytes: usize,
    /// Size of each memtable's whole-key Bloom filter, in percent of `memtable_bytes` (RocksDB
    /// `memtable_prefix_bloom_size_ratio` × 100); 0 turns it off. Allocated whole when the
    /// memtable is created, so it too is charged per store: 2 % of 8 MiB is 164 KiB, ~10 bits
    /// per key for a full memtable of ~50-byte entries. A get of a key no memtable holds then
    /// skips their skip lists (the engine benchmark's profile, docs/BENCHMARKS.md).
    pub memtable_bloom_percent: u32,
    /// RocksDB `max_open_files` per store; -1 keeps every SST open (index and filter blocks
    /// are in the block cache either way).
    pub max_open_files: i32,
    /// RocksDB background flush/compaction threads per store.
    pub background_jobs: i32,
    /// Under at-least-once the checkpoint is rewritten on commit once the stores' changelog
    /// offsets have advanced this many records since the last one (Kafka Streams uses 10,000).
    /// Under exactly-once the checkpoint is only written on a clean close.
    pub checkpoint_interval_records: u64,
    /// Keep RocksDB's files in memory (RocksDB's MemEnv) instead of on disk: for tests and the
    /// test driver. The data is lost with the process; `dir` still holds locks and checkpoints.
    pub in_memory: bool,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: std::env::temp_dir().join("keel-state"),
            block_cache_bytes: 64 * MIB,
            write_buffer_bytes: 32 * MIB,
            memtable_bytes: 8 * MIB,
            arena_block_bytes: 64 * 1024,
            memtable_bloom_percent: 2,
            max_open_files: -1,
            background_jobs: 2,
            checkpoint_interval_records: 10_000,
            in_memory: false,
        }
    }
}

impl StateConfig {
    /// A configuration rooted at `dir` with every other setting at its default.
    pub fn with_dir(dir: impl Into<PathBuf>) -> Self {
        StateConfig {
            dir: dir.into(),
            ..StateConfig::default()
        }
    }

    /// Checks every setting and reports every problem at once.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if self.dir.as_os_str().is_empty() {
            problems.push("dir must not be empty".to_owned());
        }
        if self.block_cache_bytes < MIB {
            problems.push(format!(
                "block_cache_bytes ({}) must be at least 1 MiB",
                self.block_cache_bytes
            ));
        }
        if self.write_buffer_bytes == 0 || self.write_buffer_bytes > self.block_cache_bytes {
            problems.push(format!(
                "write_buffer_bytes ({}) must be > 0 and at most block_cache_bytes ({})",
                self.write_buffer_bytes, self.block_cache_bytes
            ));
        }
        if self.memtable_bytes < 64 * 1024 || self.memtable_bytes > self.write_buffer_bytes.max(1) {
            problems.push(format!(
                "memtable_bytes ({}) must be at least 64 KiB and at most write_buffer_bytes ({})",
                self.memtable_bytes, self.write_buffer_bytes
            ));
        }
        if self.arena_block_bytes < 4 * 1024 || self.arena_block_bytes > self.memtable_bytes {
            problems.push(format!(
                "arena_block_bytes ({}) must be at least 4 KiB and at most memtable_bytes ({})",
                self.arena_block_bytes, self.memtable_bytes
            ));
        }
        if self.memtable_bloom_percent > 25 {
            problems.push(format!(
                "memtable_bloom_percent ({}) must be between 0 and 25",
                self.memtable_bloom_percent
            ));
        }
        if self.max_open_files == 0 || self.max_open_files < -1 {
            problems.push(format!(
                "max_open_files ({}) must be -1 (unlimited) or positive",
                self.max_open_files
            ));
        }
        if self.background_jobs < 1 {
            problems.push(format!(
                "background_jobs ({}) must be at least 1",
                self.background_jobs
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Config { problems })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(StateConfig::default().validate().is_ok());
    }

    #[test]
    fn validation_reports_every_problem_at_once() {
        let config = StateConfig {
            dir: PathBuf::new(),
            block_cache_bytes: 10,
            write_buffer_bytes: 0,
            memtable_bytes: 1,
            arena_block_bytes: 1,
            memtable_bloom_percent: 26,
            max_open_files: 0,
            background_jobs: 0,
            checkpoint_interval_records: 1,
            in_memory: false,
        };
        let Err(Error::Config { problems }) = config.validate() else {
            panic!("invalid config accepted");
        };
        assert_eq!(problems.len(), 8, "{problems:?}");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_str::<StateConfig>(r#"{"dir":"/x","cache":1}"#);
        assert!(err.is_err());
        let ok: StateConfig = serde_json::from_str(r#"{"dir":"/x"}"#).expect("valid");
        assert_eq!(ok.dir, PathBuf::from("/x"));
        assert_eq!(
            ok.block_cache_bytes,
            StateConfig::default().block_cache_bytes
        );
    }
}
