//! The store's share of `keel bench engine`'s per-record work, without Kafka: per record a
//! savepoint, a `get` of a key the store does not hold, a `put`, the savepoint released and the
//! changelog drained (as the runtime does after every input record); a commit every 30,000
//! records (one 100 ms interval at ~300,000 records/s). Prints microseconds per record.
//!
//! ```sh
//! scripts/cargo run --release -p keel-state --example store_path -- 1000000
//! ```

use std::io::Write;
use std::time::{Duration, Instant};

use keel_state::{Guarantee, StateConfig, StoreEnv};

const RECORDS_PER_COMMIT: u64 = 30_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let records: u64 = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 1_000_000,
    };
    let dir = tempfile::tempdir()?;
    let env = StoreEnv::new(StateConfig::with_dir(dir.path()), "store-path")?;
    let mut task = env.open_task("0_0", Guarantee::ExactlyOnce)?;
    task.register_kv("sums")?;
    let mut committing = Duration::ZERO;
    let mut drained = 0;
    let start = Instant::now();
    for i in 0..records {
        let key = format!("k{i:08}");
        task.set_savepoint();
        let store = task.kv_mut("sums")?;
        let sum = store.get_with(key.as_bytes(), |v| {
            v.and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_be_bytes)
        })?;
        store.put(key.into_bytes(), (sum + 1).to_be_bytes().to_vec());
        task.release_savepoint();
        for store in task.stores_mut() {
            let sent = store.drain_changelog(|key, value| {
                std::hint::black_box((key, value));
                Ok::<_, std::convert::Infallible>(())
            });
            let Ok(sent) = sent;
            drained += sent;
        }
        if (i + 1) % RECORDS_PER_COMMIT == 0 {
            let commit = Instant::now();
            for store in task.stores_mut() {
                store.commit(Some(i64::try_from(i)?))?;
            }
            committing += commit.elapsed();
        }
    }
    let per_record = |d: Duration| d.as_secs_f64() * 1e6 / records as f64;
    writeln!(
        std::io::stdout(),
        "{records} records ({drained} changelog records): {:.3} µs/record, of which commits {:.3}",
        per_record(start.elapsed()),
        per_record(committing)
    )?;
    Ok(())
}
