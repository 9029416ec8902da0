//! Task lifecycle: checkpoints, restore, locking, layout.

use std::collections::BTreeMap;

use keel_state::{
    Error, Fault, Guarantee, RestoreFrom, RestoreListener, RestoreProgress, StoreKind,
};

use crate::common::{Changelogs, Harness, TestResult, b, kv_contents};

/// Commits `n` writes (puts and some deletes) to `counts` in transactions of 5.
fn write_workload(
    task: &mut keel_state::TaskState,
    log: &mut Changelogs,
    range: std::ops::Range<u32>,
) -> keel_state::Result<()> {
    for i in range {
        let store = task.kv_mut("counts")?;
        store.put(
            format!("k{:03}", i % 17).into_bytes(),
            i.to_string().into_bytes(),
        );
        if i % 7 == 0 {
            store.delete(format!("k{:03}", (i + 3) % 17).into_bytes());
        }
        if i % 5 == 4 {
            log.commit(task)?;
        }
        if i % 11 == 10 {
            // A failed transaction now and then: its writes must not count.
            task.kv_mut("counts")?.put(b("aborted"), b("!"));
            log.abort(task);
        }
    }
    log.commit(task)?;
    Ok(())
}

#[test]
fn checkpoint_is_written_on_clean_close_and_removed_on_open_under_exactly_once() -> TestResult {
    let h = Harness::new()?;
    let mut log = Changelogs::default();
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    task.register_kv("counts")?;
    write_workload(&mut task, &mut log, 0..20)?;
    assert!(
        !h.checkpoint_path().exists(),
        "no checkpoint while running under EOS"
    );
    let applied = task
        .store("counts")?
        .applied_offset()
        .ok_or("nothing applied")?;
    let before = kv_contents(task.kv("counts")?)?;
    task.close()?;

    let text = std::fs::read_to_string(h.checkpoint_path())?;
    assert_eq!(text, format!("keel-checkpoint 1\ncounts {applied}\n"));

    let mut task = h.open(Guarantee::ExactlyOnce)?;
    assert!(!h.checkpoint_path().exists(), "open removes the checkpoint");
    assert_eq!(task.checkpointed_offset("counts"), Some(applied));
    task.register_kv("counts")?;
    assert_eq!(task.store("counts")?.applied_offset(), Some(applied));
    let store = task.kv("counts")?;
    assert_eq!(
        kv_contents(store)?,
        before,
        "local state kept, no restore needed"
    );
    assert_eq!(task.restore_plans()[0].from, RestoreFrom::After(applied));
    Ok(())
}

#[test]
fn restore_from_checkpoint_replays_only_the_tail() -> TestResult {
    let h = Harness::new()?;
    let mut log = Changelogs::default();
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    task.register_kv("counts")?;
    write_workload(&mut task, &mut log, 0..30)?;
    let checkpointed = task
        .store("counts")?
        .applied_offset()
        .ok_or("nothing applied")?;
    task.close()?;

    // Meanwhile the task ran on another instance, which appended to the changelog.
    let other = Harness::new()?;
    let mut elsewhere = other.open(Guarantee::ExactlyOnce)?;
    elsewhere.register_kv("counts")?;
    log.restore(&mut elsewhere, 8)?;
    write_workload(&mut elsewhere, &mut log, 30..45)?;
    let expected = kv_contents(elsewhere.kv("counts")?)?;
    elsewhere.close()?;
    let tail = log.topics["counts"]
        .records
        .iter()
        .filter(|(offset, _, _)| *offset > checkpointed)
        .count();
    assert!(tail > 0 && tail < log.topics["counts"].records.len());

    // Back home: restore starts after the checkpoint and replays the tail only.
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    task.register_kv("counts")?;
    let plan = task.restore_plan("counts")?;
    assert_eq!(plan.from, RestoreFrom::After(checkpointed));
    assert_eq!(plan.seek_offset(0), checkpointed + 1);
    assert_eq!(plan.changelog_topic, "keel-test-counts-changelog");
    let progress = log.restore(&mut task, 4)?;
    assert_eq!(progress[0].restored(), tail as u64);
    assert!(progress[0].is_complete());
    assert_eq!(kv_contents(task.kv("counts")?)?, expected);
    Ok(())
}

#[test]
fn restore_from_scratch_after_the_local_directory_is_deleted_reproduces_the_store_exactly()
-> TestResult {
    let h = Harness::new()?;
    let mut log = Changelogs::default();
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    task.register_kv("counts")?;
    task.register_ttl("holds")?;
    task.register_timers("timers")?;
    write_workload(&mut task, &mut log, 0..60)?;
    for i in 0..10i64 {
        task.ttl_mut("holds")?
            .put(format!("h{i}").into_bytes(), b("hold"), 1000 + i)?;
        task.timers_mut("timers")?
            .schedule(format!("t{i}").into_bytes(), 2000 - i, b("fire"))?;
    }
    task.ttl_mut("holds")?.delete(b"h3")?;
    task.timers_mut("timers")?.cancel(b"t4")?;
    log.commit(&mut task)?;
    let kv_before = kv_contents(task.kv("counts")?)?;
    let holds_before = task.ttl("holds")?.prefix(b"", 0)?;
    let timers_before = task.timers("timers")?.prefix(b"")?;
    task.close()?;

    std::fs::remove_dir_all(h.task_dir())?;

    let mut task = h.open(Guarantee::ExactlyOnce)?;
    task.register_kv("counts")?;
    task.register_ttl("holds")?;
    task.register_timers("timers")?;
    assert!(
        task.restore_plans()
            .iter()
            .all(|p| p.from == RestoreFrom::Beginning)
    );
    assert_eq!(task.kv("counts")?.iter()?.count(), 0);
    log.restore(&mut task, 7)?;
    assert_eq!(kv_contents(task.kv("counts")?)?, kv_before);
    assert_eq!(task.ttl("holds")?.prefix(b"", 0)?, holds_before);
    assert_eq!(task.timers("timers")?.prefix(b"")?, timers_before);
    // The time indexes were rebuilt too.
    let expired: Vec<_> = task
        .ttl_mut("holds")?
        .expire(1004)?
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(expired, [b("h0"), b("h1"), b("h2"), b("h4")]);
    let due: Vec<_> = task
        .timers_mut("timers")?
        .due(1992)?
        .into_iter()
        .map(|t| t.key)
        .collect();
    assert_eq!(due, [b("t9"), b("t8")]);
    Ok(())
}

#[test]
fn unclean_shutdown_under_exactly_once_wipes_the_store_and_restores_from_the_beginning()
-> TestResult {
    let h = Harness::new()?;
    let mut log = Changelogs::default();
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    task.register_kv("counts")?;
    write_workload(&mut task, &mut log, 0..25)?;
    let before = kv_contents(task.kv("counts")?)?;
    drop(task); // the process dies: no close, no checkpoint

    let mut task = h.open(Guarantee::ExactlyOnce)?;
    assert_eq!(task.checkpointed_offset("counts"), None);
    let store = task.register_kv("counts")?;
    assert_eq!(store.iter()?.count(), 0, "local copy wiped");
    assert_eq!(task.restore_plans()[0].from, RestoreFrom::Beginning);
    let progress = log.restore(&mut task, 5)?;
    assert_eq!(
        progress[0].restored(),
        log.topics["counts"].records.len() as u64
    );
    assert_eq!(kv_contents(task.kv("counts")?)?, before);
    Ok(())
}

#[test]
fn at_least_once_keeps_the_checkpoint_while_running_and_resumes_from_it_after_a_crash() -> TestResult
{
    let h = Harness::with_config(|c| c.checkpoint_interval_records = 1)?;
    let mut log = Changelogs::default();
    let mut task = h.open(Guarantee::AtLeastOnce)?;
    task.register_kv("counts")?;
    task.kv_mut("counts")?.put(b("a"), b("1"));
    log.commit(&mut task)?;
    assert_eq!(
        std::fs::read_to_string(h.checkpoint_path())?,
        "keel-checkpoint 1\ncounts 0\n",
        "checkpoint written on commit under ALOS"
    );
    drop(task); // crash

    let mut task = h.open(Guarantee::AtLeastOnce)?;
    assert!(
        h.checkpoint_path().exists(),
        "ALOS open keeps the checkpoint"
    );
    let store = task.register_kv("counts")?;
    assert_eq!(
        store.get(b"a")?,
        Some(b("1")),
        "flushed before the checkpoint"
    );
    assert_eq!(task.restore_plans()[0].from, RestoreFrom::After(0));
    Ok(())
}

#[test]
fn at_least_once_checkpoints_only_after_enough_records() -> TestResult {
    let h = Harness::with_config(|c| c.checkpoint_interval_records = 10)?;
    let mut log = Changelogs::default();
    let mut task = h.open(Guarantee::AtLeastOnce)?;
    task.register_kv("counts")?;
    task.kv_mut("counts")?.put(b("a"), b("1"));
    log.commit(&mut task)?;
    assert!(!h.checkpoint_path().exists(), "1 record < 10");
    for i in 0..10 {
        task.kv_mut("counts")?
            .put(format!("k{i}").into_bytes(), b("v"));
    }
    log.commit(&mut task)?;
    assert!(h.checkpoint_path().exists());
    Ok(())
}

#[test]
fn a_corrupt_checkpoint_forces_a_full_restore() -> TestResult {
    let h = Harness::new()?;
    let mut log = Changelogs::default();
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    task.register_kv("counts")?;
    write_workload(&mut task, &mut log, 0..10)?;
    let before = kv_contents(task.kv("counts")?)?;
    task.close()?;
    std::fs::write(h.checkpoint_path(), "garbage\n")?;

    let mut task = h.open(Guarantee::AtLeastOnce)?;
    assert!(!h.checkpoint_path().exists(), "corrupt checkpoint removed");
    task.register_kv("counts")?;
    assert_eq!(task.restore_plans()[0].from, RestoreFrom::Beginning);
    log.restore(&mut task, 100)?;
    assert_eq!(kv_contents(task.kv("counts")?)?, before);
    Ok(())
}

#[test]
fn a_store_missing_from_the_checkpoint_is_wiped_even_if_its_directory_survived() -> TestResult {
    let h = Harness::new()?;
    let mut log = Changelogs::default();
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    task.register_kv("counts")?.put(b("stale"), b("1"));
    log.commit(&mut task)?;
    drop(task); // crash: directory kept, checkpoint gone

    // Compaction removed everything from the changelog (say the tombstone of "stale" too).
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    let store = task.register_kv("counts")?;
    assert_eq!(
        store.get(b"stale")?,
        None,
        "a full restore starts from an empty store"
    );
    Ok(())
}

#[derive(Default)]
struct Recorder {
    events: Vec<(&'static str, u64, u64)>,
}

impl RestoreListener for Recorder {
    fn on_restore_start(&mut self, p: &RestoreProgress) {
        self.events.push(("start", p.restored(), p.remaining()));
    }
    fn on_batch_restored(&mut self, p: &RestoreProgress) {
        self.events.push(("batch", p.restored(), p.remaining()));
    }
    fn on_restore_end(&mut self, p: &RestoreProgress) {
        self.events.push(("end", p.restored(), p.remaining()));
    }
}

#[test]
fn restore_reports_records_restored_and_remaining_to_the_listener() -> TestResult {
    let h = Harness::new()?;
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    task.register_kv("counts")?;
    let records: Vec<(i64, Vec<u8>, Option<Vec<u8>>)> = (0..25)
        .map(|i| (i, format!("k{i}").into_bytes(), Some(b("v"))))
        .collect();
    let batches: Vec<_> = records.chunks(10).map(<[_]>::to_vec).collect();
    let mut recorder = Recorder::default();
    // One commit marker at offset 25: the log ends at 26.
    let progress = task.restore("counts", 0, 26, batches, &mut recorder)?;
    assert_eq!(
        recorder.events,
        [
            ("start", 0, 26),
            ("batch", 10, 16),
            ("batch", 20, 6),
            ("batch", 25, 1),
            ("end", 25, 0),
        ]
    );
    assert!(progress.is_complete());
    assert_eq!(task.store("counts")?.applied_offset(), Some(24));

    // Re-delivered records are skipped, not re-applied.
    let again = task.restore_batch("counts", records[20..].iter().cloned())?;
    assert_eq!((again.applied, again.skipped), (0, 5));
    Ok(())
}

#[test]
fn restore_refuses_to_run_over_pending_writes() -> TestResult {
    let h = Harness::new()?;
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    task.register_kv("counts")?.put(b("a"), b("1"));
    let err = task
        .restore_batch("counts", [(0, b("b"), Some(b("2")))])
        .err()
        .ok_or("restore over pending writes")?;
    assert!(
        matches!(err, Error::RestoreWithPendingWrites { .. }),
        "{err}"
    );
    Ok(())
}

#[test]
fn a_second_owner_of_a_task_directory_is_refused_until_the_first_closes() -> TestResult {
    let h = Harness::new()?;
    let task = h.open(Guarantee::ExactlyOnce)?;
    let err = h.open(Guarantee::ExactlyOnce).err().ok_or("opened twice")?;
    assert!(matches!(err, Error::TaskLocked { .. }), "{err}");
    assert!(err.is_retryable());
    let err = h
        .env
        .remove_task_state("0_3")
        .err()
        .ok_or("removed while open")?;
    assert!(matches!(err, Error::TaskLocked { .. }), "{err}");
    task.close()?;
    h.open(Guarantee::ExactlyOnce)?.close_dirty();
    assert!(h.env.remove_task_state("0_3")?);
    assert!(!h.task_dir().exists());
    assert!(!h.env.remove_task_state("0_3")?);
    Ok(())
}

#[test]
fn layout_follows_state_dir_application_task_store() -> TestResult {
    let h = Harness::new()?;
    let mut a = h.env.open_task("0_1", Guarantee::ExactlyOnce)?;
    let mut c = h.env.open_task("1_0", Guarantee::ExactlyOnce)?;
    a.register_kv("counts")?;
    c.register_timers("timers")?;
    let app = h.dir.path().join("keel-test");
    assert_eq!(h.env.app_dir(), app);
    assert_eq!(a.dir(), app.join("0_1"));
    assert_eq!(a.store("counts")?.path(), app.join("0_1").join("counts"));
    assert!(
        app.join("0_1/counts/CURRENT").exists(),
        "a RocksDB instance per store"
    );
    assert_eq!(h.env.local_tasks()?, ["0_1", "1_0"]);
    a.close()?;
    c.close()?;
    h.env.remove_all_local_state()?;
    assert!(h.env.local_tasks()?.is_empty());
    Ok(())
}

#[test]
fn stores_are_looked_up_by_name_and_kind() -> TestResult {
    let h = Harness::new()?;
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    task.register_kv("counts")?;
    task.register_ttl("holds")?;
    let err = task.ttl_mut("counts").err().ok_or("wrong kind accepted")?;
    assert!(
        matches!(
            err,
            Error::WrongStoreKind {
                expected: StoreKind::Ttl,
                actual: StoreKind::KeyValue,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.fault(), Fault::Bug);
    assert!(matches!(
        task.register_kv("holds"),
        Err(Error::DuplicateStore { .. })
    ));
    assert!(matches!(task.kv("nope"), Err(Error::UnknownStore { .. })));
    assert!(matches!(
        task.register_kv("a/b"),
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        h.env.open_task("../x", Guarantee::ExactlyOnce),
        Err(Error::InvalidName { .. })
    ));
    let kinds: BTreeMap<_, _> = task
        .stores()
        .map(|s| (s.name().to_owned(), s.kind()))
        .collect();
    assert_eq!(kinds["holds"], StoreKind::Ttl);
    Ok(())
}

#[test]
fn memory_usage_reports_the_shared_ceiling() -> TestResult {
    let h = Harness::new()?;
    let mut log = Changelogs::default();
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    task.register_kv("counts")?;
    for i in 0..2000u32 {
        task.kv_mut("counts")?.put(i.to_be_bytes(), vec![7u8; 100]);
    }
    log.commit(&mut task)?;
    let usage = h.env.memory_usage();
    assert_eq!(usage.block_cache_capacity, 8 << 20);
    assert_eq!(usage.write_buffer_capacity, 4 << 20);
    assert!(
        usage.write_buffer_usage > 0,
        "memtables are accounted: {usage:?}"
    );
    assert!(
        usage.block_cache_usage > 0,
        "memtables are charged to the cache: {usage:?}"
    );
    assert!(task.store("counts")?.approximate_len()? > 0);
    Ok(())
}

#[test]
fn a_rollback_to_the_savepoint_undoes_the_record_s_writes_and_their_changelog() -> TestResult {
    let h = Harness::new()?;
    let mut log = Changelogs::default();
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    let kv = task.register_kv("kv")?;
    kv.put(b("c"), b("committed"));
    log.commit(&mut task)?;

    // Earlier record of the interval: kept.
    task.kv_mut("kv")?.put(b("a"), b("1"));
    task.set_savepoint();
    let kv = task.kv_mut("kv")?;
    kv.put(b("a"), b("2"));
    kv.put(b("b"), b("new"));
    kv.delete(b("c"));
    task.rollback_to_savepoint();

    let kv = task.kv_mut("kv")?;
    assert_eq!(
        kv.get(b"a")?,
        Some(b("1")),
        "back to the earlier record's write"
    );
    assert_eq!(kv.get(b"b")?, None);
    assert_eq!(kv.get(b"c")?, Some(b("committed")), "the delete is undone");
    let changelog = task.take_changelog();
    assert_eq!(
        changelog
            .iter()
            .map(|r| (r.key.clone(), r.value.clone()))
            .collect::<Vec<_>>(),
        vec![(b("a"), Some(b("1")))],
        "only the earlier record's write is changelogged"
    );
    Ok(())
}

#[test]
fn a_released_savepoint_keeps_the_writes_and_a_later_rollback_does_nothing() -> TestResult {
    let h = Harness::new()?;
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    task.register_kv("kv")?;
    task.set_savepoint();
    task.kv_mut("kv")?.put(b("a"), b("1"));
    task.release_savepoint();
    task.rollback_to_savepoint();
    assert_eq!(task.kv("kv")?.get(b"a")?, Some(b("1")));
    assert_eq!(task.take_changelog().len(), 1);
    Ok(())
}

#[test]
fn a_rollback_restores_the_timer_and_ttl_indexes() -> TestResult {
    let h = Harness::new()?;
    let mut log = Changelogs::default();
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    task.register_timers("timers")?
        .schedule(b("t"), 2_000, b"first")?;
    task.register_ttl("holds")?.put(b("h"), b"hold", 2_000)?;
    log.commit(&mut task)?;

    task.set_savepoint();
    let timers = task.timers_mut("timers")?;
    timers.schedule(b("t"), 6_000, b"moved")?;
    timers.schedule(b("u"), 100, b"new")?;
    let holds = task.ttl_mut("holds")?;
    holds.put(b("h"), b"extended", 9_000)?;
    holds.put(b("i"), b"new", 100)?;
    task.rollback_to_savepoint();

    let timers = task.timers_mut("timers")?;
    assert_eq!(timers.next_due()?, Some(2_000));
    let fired = timers.due(3_000)?;
    assert_eq!(
        fired
            .iter()
            .map(|t| (t.key.clone(), t.due))
            .collect::<Vec<_>>(),
        vec![(b("t"), 2_000)],
        "t fires at its old time through its old index entry; u never existed"
    );
    let holds = task.ttl_mut("holds")?;
    let expired = holds.expire(3_000)?;
    assert_eq!(
        expired
            .iter()
            .map(|e| (e.key.clone(), e.value.clone(), e.expires_at))
            .collect::<Vec<_>>(),
        vec![(b("h"), b("hold"), 2_000)]
    );
    Ok(())
}
