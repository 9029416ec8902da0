//! Model tests: random sequences of writes, savepoints and rollbacks, commits, aborts, reopens,
//! crashes and wipes against a `BTreeMap` model. After every step the store's visible state must equal the model's, and
//! what RocksDB holds must equal what the model committed.

use std::collections::BTreeMap;

use keel_state::{Guarantee, RestoreFrom, TaskState};
use proptest::prelude::*;

use crate::common::{Changelogs, Harness, ttl_contents};

#[derive(Debug, Clone)]
enum Lifecycle {
    /// Produce the changelog, commit the transaction, commit the stores.
    Commit,
    /// Abort the transaction.
    Abort,
    /// Drain changelog records mid-interval.
    Drain,
    /// Clean close and open (checkpoint).
    Reopen,
    /// Process dies; reopen restores from the changelog.
    Crash,
    /// Clean close, then the task directory is deleted; reopen restores from the changelog.
    Wipe,
    /// Mark the pending writes (as the runtime does before each input record).
    Savepoint,
    /// Undo the writes since the savepoint (a dead-lettered record).
    Rollback,
    /// Keep them and close the savepoint.
    Release,
}

/// The model's side of the lifecycle: what is visible after `life`, given what was committed
/// and what was visible at the open savepoint (which every step but `Savepoint` closes).
fn model_step<M: Clone>(
    life: &Lifecycle,
    visible: &mut M,
    committed: &mut M,
    mark: &mut Option<M>,
) {
    match life {
        Lifecycle::Commit => *committed = visible.clone(),
        Lifecycle::Drain | Lifecycle::Release => {}
        Lifecycle::Savepoint => {
            *mark = Some(visible.clone());
            return;
        }
        Lifecycle::Rollback => {
            if let Some(at_mark) = mark.take() {
                *visible = at_mark;
            }
        }
        Lifecycle::Abort | Lifecycle::Reopen | Lifecycle::Crash | Lifecycle::Wipe => {
            *visible = committed.clone();
        }
    }
    *mark = None;
}

fn lifecycle() -> impl Strategy<Value = Lifecycle> {
    prop_oneof![
        4 => Just(Lifecycle::Commit),
        2 => Just(Lifecycle::Abort),
        2 => Just(Lifecycle::Drain),
        1 => Just(Lifecycle::Reopen),
        1 => Just(Lifecycle::Crash),
        1 => Just(Lifecycle::Wipe),
        3 => Just(Lifecycle::Savepoint),
        2 => Just(Lifecycle::Rollback),
        1 => Just(Lifecycle::Release),
    ]
}

/// Runs a lifecycle step on the task, reopening it when the step demands.
fn step(
    h: &Harness,
    task: TaskState,
    log: &mut Changelogs,
    op: &Lifecycle,
    register: fn(&mut TaskState) -> keel_state::Result<()>,
) -> Result<TaskState, Box<dyn std::error::Error>> {
    let mut task = task;
    let reopen = |task: TaskState,
                  log: &mut Changelogs,
                  how: &Lifecycle|
     -> Result<TaskState, Box<dyn std::error::Error>> {
        match how {
            Lifecycle::Crash => drop(task),
            Lifecycle::Wipe => {
                task.close()?;
                std::fs::remove_dir_all(h.task_dir())?;
            }
            _ => task.close()?,
        }
        // Writes drained into a transaction that never committed are lost with the process.
        log.in_flight.clear();
        let mut task = h.open(Guarantee::ExactlyOnce)?;
        register(&mut task)?;
        if matches!(how, Lifecycle::Crash | Lifecycle::Wipe) {
            assert!(
                task.restore_plans()
                    .iter()
                    .all(|p| p.from == RestoreFrom::Beginning),
                "no checkpoint after {how:?}: full restore"
            );
        }
        log.restore(&mut task, 3)?;
        Ok(task)
    };
    match op {
        Lifecycle::Commit => {
            log.commit(&mut task)?;
        }
        Lifecycle::Abort => log.abort(&mut task),
        Lifecycle::Drain => log.drain(&mut task),
        Lifecycle::Savepoint => task.set_savepoint(),
        Lifecycle::Rollback => task.rollback_to_savepoint(),
        Lifecycle::Release => task.release_savepoint(),
        how => task = reopen(task, log, how)?,
    }
    Ok(task)
}

// ---------------------------------------------------------------------------------------------
// Key-value store

#[derive(Debug, Clone)]
enum KvOp {
    Put(u8, u8),
    Delete(u8),
    Life(Lifecycle),
}

fn kv_op() -> impl Strategy<Value = KvOp> {
    prop_oneof![
        5 => (0u8..6, any::<u8>()).prop_map(|(k, v)| KvOp::Put(k, v)),
        2 => (0u8..6).prop_map(KvOp::Delete),
        3 => lifecycle().prop_map(KvOp::Life),
    ]
}

fn key(k: u8) -> Vec<u8> {
    vec![b'k', k]
}

fn run_kv(ops: &[KvOp]) -> Result<(), Box<dyn std::error::Error>> {
    let h = Harness::new()?;
    let mut log = Changelogs::default();
    let register = |task: &mut TaskState| task.register_kv("kv").map(drop);
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    register(&mut task)?;
    let mut visible: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut committed = visible.clone();
    let mut mark = None;

    for op in ops {
        match op {
            KvOp::Put(k, v) => {
                task.kv_mut("kv")?.put(key(*k), vec![*v]);
                visible.insert(key(*k), vec![*v]);
            }
            KvOp::Delete(k) => {
                task.kv_mut("kv")?.delete(key(*k));
                visible.remove(&key(*k));
            }
            KvOp::Life(life) => {
                task = step(&h, task, &mut log, life, register)?;
                model_step(life, &mut visible, &mut committed, &mut mark);
            }
        }
        let store = task.kv("kv")?;
        let actual: BTreeMap<_, _> = store.iter()?.collect::<keel_state::Result<_>>()?;
        assert_eq!(actual, visible, "visible state after {op:?}");
        for k in 0..6 {
            assert_eq!(
                store.get(&key(k))?.as_ref(),
                visible.get(&key(k)),
                "get after {op:?}"
            );
        }
        let in_rocksdb: BTreeMap<_, _> = task
            .store("kv")?
            .committed_reader()
            .ok_or("a key-value store has a committed reader")?
            .prefix(b"", usize::MAX)?
            .into_iter()
            .collect();
        assert_eq!(
            in_rocksdb, committed,
            "RocksDB holds only committed state after {op:?}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// TTL store

#[derive(Debug, Clone)]
enum TtlOp {
    Put(u8, u8, i64),
    Delete(u8),
    /// Advance `now` by this much and expire.
    Expire(i64),
    Life(Lifecycle),
}

fn ttl_op() -> impl Strategy<Value = TtlOp> {
    prop_oneof![
        5 => (0u8..6, any::<u8>(), 0i64..40).prop_map(|(k, v, ttl)| TtlOp::Put(k, v, ttl)),
        1 => (0u8..6).prop_map(TtlOp::Delete),
        3 => (0i64..15).prop_map(TtlOp::Expire),
        3 => lifecycle().prop_map(TtlOp::Life),
    ]
}

type TtlModel = BTreeMap<Vec<u8>, (Vec<u8>, i64)>;

fn run_ttl(ops: &[TtlOp]) -> Result<(), Box<dyn std::error::Error>> {
    let h = Harness::new()?;
    let mut log = Changelogs::default();
    let register = |task: &mut TaskState| task.register_ttl("holds").map(drop);
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    register(&mut task)?;
    let mut visible = TtlModel::new();
    let mut committed = visible.clone();
    let mut mark = None;
    let mut now = 0i64;

    for op in ops {
        match op {
            TtlOp::Put(k, v, ttl) => {
                task.ttl_mut("holds")?.put(key(*k), [*v], now + ttl)?;
                visible.insert(key(*k), (vec![*v], now + ttl));
            }
            TtlOp::Delete(k) => {
                let removed = task.ttl_mut("holds")?.delete(&key(*k))?;
                let expected = visible.remove(&key(*k));
                assert_eq!(removed.map(|e| (e.value, e.expires_at)), expected);
            }
            TtlOp::Expire(delta) => {
                now += delta;
                let mut expected: Vec<_> = visible
                    .iter()
                    .filter(|(_, (_, at))| *at <= now)
                    .map(|(k, (v, at))| (*at, k.clone(), v.clone()))
                    .collect();
                expected.sort();
                visible.retain(|_, (_, at)| *at > now);
                let expired: Vec<_> = task
                    .ttl_mut("holds")?
                    .expire(now)?
                    .into_iter()
                    .map(|e| (e.expires_at, e.key, e.value))
                    .collect();
                assert_eq!(expired, expected, "expired at {now}");
            }
            TtlOp::Life(life) => {
                task = step(&h, task, &mut log, life, register)?;
                model_step(life, &mut visible, &mut committed, &mut mark);
            }
        }
        let store = task.ttl("holds")?;
        let live: TtlModel = visible
            .iter()
            .filter(|(_, (_, at))| *at > now)
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        assert_eq!(ttl_contents(store, now)?, live, "live entries after {op:?}");
        for k in 0..6 {
            let entry = store.get_entry(&key(k))?.map(|e| (e.value, e.expires_at));
            assert_eq!(entry.as_ref(), visible.get(&key(k)), "entry after {op:?}");
            let value = store.get(&key(k), now)?;
            assert_eq!(
                value.as_ref(),
                live.get(&key(k)).map(|(v, _)| v),
                "get after {op:?}"
            );
        }
        let next = visible.values().map(|(_, at)| *at).min();
        assert_eq!(store.next_expiry()?, next, "next expiry after {op:?}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn kv_store_matches_a_btreemap_model_through_commits_aborts_reopens_and_crashes(
        ops in prop::collection::vec(kv_op(), 1..60)
    ) {
        run_kv(&ops).map_err(|e| TestCaseError::fail(e.to_string()))?;
    }

    #[test]
    fn ttl_store_matches_a_model_through_expiry_commits_aborts_and_restores(
        ops in prop::collection::vec(ttl_op(), 1..60)
    ) {
        run_ttl(&ops).map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
}
