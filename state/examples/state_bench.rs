//! A throughput probe for the state layer alone (no broker): per record one `get` + one `put`
//! on a key-value store, commit every N records with the changelog kept in memory; then a full
//! restore of that changelog into an empty store. Prints records/s, restore records/s, RocksDB
//! memory and the process RSS.
//!
//! ```text
//! cargo run -p keel-state --release --example state_bench -- [records] [distinct-keys] [commit-every]
//! ```
//! Defaults: 1,000,000 records, 1,000,000 keys, commit every 1,000 records.

#![allow(clippy::print_stdout)]

use std::error::Error;
use std::time::Instant;

use keel_state::{Guarantee, StateConfig, StoreEnv};

fn arg(n: usize, default: u64) -> Result<u64, Box<dyn Error>> {
    Ok(match std::env::args().nth(n) {
        Some(a) => a.replace('_', "").parse()?,
        None => default,
    })
}

fn rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn main() -> Result<(), Box<dyn Error>> {
    let records = arg(1, 1_000_000)?;
    let keys = arg(2, 1_000_000)?.max(1);
    let commit_every = arg(3, 1_000)?.max(1);
    let dir = std::env::temp_dir().join(format!("keel-state-bench-{}", std::process::id()));
    let env = StoreEnv::new(StateConfig::with_dir(&dir), "bench")?;

    let mut task = env.open_task("0_0", Guarantee::ExactlyOnce)?;
    task.register_kv("sums")?;
    let mut changelog: Vec<(i64, Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    let started = Instant::now();
    for i in 0..records {
        let key = format!("key-{:010}", i % keys).into_bytes();
        let store = task.kv_mut("sums")?;
        let sum = store.get_with(&key, |v| {
            v.and_then(|v| v.try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0)
        })?;
        store.put(key, (sum + i).to_be_bytes());
        if (i + 1) % commit_every == 0 || i + 1 == records {
            let mut last = None;
            for record in task.take_changelog() {
                let offset = changelog.len() as i64;
                changelog.push((offset, record.key, record.value));
                last = Some(offset);
            }
            task.commit(last.map(|o| ("sums", o)))?;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "process: {records} records ({keys} keys), {:.0} records/s, changelog {} records",
        records as f64 / elapsed,
        changelog.len()
    );
    println!("memory: {:?}, rss {:?} MiB", env.memory_usage(), rss_mib());
    task.close_dirty();

    let mut task = env.open_task("0_0", Guarantee::ExactlyOnce)?;
    task.register_kv("sums")?;
    let end = changelog.len() as i64;
    let started = Instant::now();
    // Borrowed keys and values: restore copies straight into the RocksDB write batch.
    let batches = changelog
        .chunks(10_000)
        .map(|chunk| chunk.iter().map(|(o, k, v)| (*o, k, v.as_ref())));
    let progress = task.restore("sums", 0, end, batches, &mut ())?;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "restore: {} records, {:.0} records/s",
        progress.restored(),
        progress.restored() as f64 / elapsed
    );
    println!("memory: {:?}, rss {:?} MiB", env.memory_usage(), rss_mib());
    task.close()?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
