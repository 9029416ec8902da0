//! RocksDB memory under the shared write buffer budget: many small stores must not make every
//! commit flush.

use keel_state::{Guarantee, StateConfig};

use crate::common::{Changelogs, Harness, TestResult};

/// SST files under `dir`, recursively (one per memtable flush or compaction output).
fn sst_files(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                sst_files(&path)
            } else {
                usize::from(path.extension().is_some_and(|x| x == "sst"))
            }
        })
        .sum()
}

/// The checkout's shape: 66 stores (11 per task × 6 tasks) holding a few small keys each, a
/// commit every interval. RocksDB's write buffer manager counts the arena a memtable has
/// allocated, not what it holds (RocksDB wiki, "Write Buffer Manager", since 5.6): with
/// RocksDB's default arena block (memtable / 8 = 1 MiB) and a memtable Bloom filter of 10 % of
/// 8 MiB, every store that held one key charged ~1.8 MiB, 66 stores ~120 MiB against a 32 MiB
/// budget, so every commit's write flushed a memtable of a few hundred bytes: ~540 SST files
/// per store in a 90 s checkout run, RocksDB's threads 38 % of Keel's CPU.
#[test]
fn many_small_stores_under_the_default_budget_are_not_flushed_at_every_commit() -> TestResult {
    let h = Harness::with_config(|c| {
        let defaults = StateConfig::default();
        c.block_cache_bytes = defaults.block_cache_bytes;
        c.write_buffer_bytes = defaults.write_buffer_bytes;
        c.memtable_bytes = defaults.memtable_bytes;
    })?;
    let mut log = Changelogs::default();
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    let stores: Vec<String> = (0..66).map(|i| format!("store-{i:02}")).collect();
    for name in &stores {
        task.register_kv(name)?;
    }
    for round in 0..30u32 {
        for name in &stores {
            task.kv_mut(name)?
                .put(format!("order-{round:04}").into_bytes(), vec![b'x'; 100]);
        }
        log.commit(&mut task)?;
    }
    // Flushes run in RocksDB's background threads: give any that were scheduled time to land.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let flushed = sst_files(&h.task_dir());
    let usage = h.env.memory_usage();
    assert_eq!(
        flushed, 0,
        "{flushed} SST files after 30 commits of 66 × 100 bytes: memtables were flushed for \
         their fixed overhead (write buffers {} of {} bytes)",
        usage.write_buffer_usage, usage.write_buffer_capacity
    );
    task.close()?;
    Ok(())
}
