//! Keel's state stores: RocksDB key-value, TTL and timer stores whose writes are held until their
//! Kafka transaction commits, changelog records for every write, checkpoints, and restore.
//!
//! This crate owns local state: the state directory, RocksDB instances and their shared memory
//! budget, the pending write sets of the current commit interval, the checkpoint file, and the
//! replay of changelog records into RocksDB. It must not know about Kafka consumers, producers or
//! transactions, nor about the shop's domain: the runtime (`keel-topology`) drains
//! [`ChangelogRecord`]s and produces them, tells a task when its transaction committed or aborted,
//! and feeds it changelog records to restore. Time is always passed in; nothing here reads a
//! clock.
//!
//! Layout:
//! - [`config`]: [`StateConfig`] — `state.dir`, block cache and write buffer sizes.
//! - [`env`](mod@env): [`StoreEnv`] — one application's state directory and the block cache and write
//!   buffer manager shared by every store of the process (one memory ceiling).
//! - [`task`]: [`TaskState`] — a task's directory lock, checkpoint and stores; open, commit,
//!   abort, close — and [`Store`], one store of any kind with its lifecycle. **Start here.**
//! - [`kv`]: [`KeyValueStore`] — bytes → bytes with a pending write set; the commit-interval
//!   rules, and why the store types are data views with no lifecycle method (what processors
//!   get: they cannot drain, commit, abort or restore).
//! - [`ttl`]: [`TtlStore`] — entries with an expiry and an expiry index; `expire(now)`.
//! - [`timer`]: [`TimerStore`] — durable timers in due order; `due(now)`.
//! - [`changelog`]: [`ChangelogRecord`] and changelog topic naming.
//! - [`checkpoint`]: the checkpoint file, written atomically.
//! - [`restore`]: [`RestorePlan`], [`RestoreProgress`], [`RestoreListener`].
//! - [`error`]: [`Error`], [`Fault`] (retry / restore / stop), [`Result`].
//! - `rocks` and `timed` (private): the RocksDB engine with its pending set, and the time index
//!   under TTL and timer stores.
//! - `types` (private, re-exported here): the leaf types every layer shares — [`Guarantee`],
//!   [`StoreKind`], [`RestoreBatch`].
//!
//! ## Layers
//!
//! Modules import only from their own layer's lower lines or from layers below; nothing imports
//! upward, so there is no cycle (doc links may point anywhere):
//!
//! ```text
//! task state   task            → everything below; opens a task for StoreEnv (open_task)
//!              checkpoint, restore
//! stores       kv, ttl, timer  → timed → rocks   (data views over the engine)
//! engine       rocks           → env (RocksDB options, shared cache), changelog, types, error
//!              env             → config, changelog, error
//! leaf         changelog, config → error → types; failpoints (tests, `failpoints` feature)
//! ```
//!
//! A type that two layers need goes down into `types` (or `error`, `changelog`), never up into
//! `task`: `StoreKind` and `Guarantee` lived in `task` and `RestoreBatch` in `restore` before,
//! and `error`, `env`, `restore` and the engine imported them from there in a circle.
//!
//! # One commit interval, for the runtime author
//!
//! ```no_run
//! # fn main() -> keel_state::Result<()> {
//! use keel_state::{Guarantee, StateConfig, StoreEnv};
//!
//! let env = StoreEnv::new(StateConfig::with_dir("/var/lib/keel"), "keel-inventory")?;
//! let mut task = env.open_task("0_3", Guarantee::ExactlyOnce)?;
//! task.register_kv("stock")?;
//! task.register_ttl("holds")?;
//! for plan in task.restore_plans() {
//!     // seek the restore consumer to plan.seek_offset(log_start) on plan.changelog_topic,
//!     // partition 3, and hand each polled batch to task.restore_batch(&plan.store, records)
//! }
//!
//! // process records: reads see this interval's writes at once
//! task.kv_mut("stock")?.put(b"sku-1".to_vec(), b"7".to_vec());
//! task.ttl_mut("holds")?.put(b"order-9/sku-1".to_vec(), b"1", 1_700_000_600_000)?;
//!
//! // before committing the transaction: produce the changelog records inside it
//! for record in task.take_changelog() {
//!     let _topic = env.changelog_topic(&record.store); // partition 3
//! }
//! // transaction committed; the last changelog offsets per store came back from the producer
//! task.commit([("stock", 41), ("holds", 17)])?;
//! // (had it aborted: task.abort())
//!
//! task.close()?; // flush + checkpoint
//! # Ok(())
//! # }
//! ```

pub mod changelog;
pub mod checkpoint;
pub mod config;
pub mod env;
pub mod error;
#[cfg(any(test, feature = "failpoints"))]
pub mod failpoints;
pub mod kv;
pub mod restore;
mod rocks;
pub mod task;
mod timed;
pub mod timer;
pub mod ttl;
mod types;

pub use changelog::{ChangelogRecord, changelog_topic};
pub use checkpoint::Checkpoint;
pub use config::StateConfig;
pub use env::{MemoryUsage, StoreEnv};
pub use error::{Error, Fault, Result};
pub use kv::KeyValueStore;
pub use restore::{RestoreFrom, RestoreListener, RestorePlan, RestoreProgress};
pub use rocks::{CommittedReader, StoreIter};
pub use task::{Store, TaskState};
pub use timer::{Timer, TimerStore};
pub use ttl::{TtlEntry, TtlStore};
pub use types::{Guarantee, RestoreBatch, StoreKind};

#[cfg(test)]
mod tests {
    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn handles_can_move_between_threads() {
        // A task moves to whichever stream thread owns it; readers serve interactive queries
        // from other threads.
        send_sync::<crate::StoreEnv>();
        send_sync::<crate::TaskState>();
        send_sync::<crate::CommittedReader>();
        send_sync::<crate::Error>();
    }
}
