//! Key-value store: pending writes, commit, abort, changelog records.

use std::collections::BTreeMap;
use std::ops::Bound;

use keel_state::{Error, Fault, Guarantee, RestoreFrom};

use crate::common::{Changelogs, Harness, TASK, TestResult, b, kv_contents};

#[test]
fn pending_writes_are_visible_before_commit_and_absent_from_rocksdb_until_commit() -> TestResult {
    let h = Harness::new()?;
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    let mut log = Changelogs::default();
    task.register_kv("counts")?;
    let committed = task
        .store("counts")?
        .committed_reader()
        .ok_or("a key-value store has a committed reader")?;

    task.kv_mut("counts")?.put(b("old"), b("1"));
    log.commit(&mut task)?;
    assert_eq!(committed.get(b"old")?, Some(b("1")));

    let store = task.kv_mut("counts")?;
    store.put(b("new"), b("2"));
    store.delete(b("old"));
    // The task sees its own writes at once...
    assert_eq!(store.get(b"new")?, Some(b("2")));
    assert_eq!(store.get(b"old")?, None);
    assert_eq!(task.store("counts")?.pending_writes(), 2);
    // ...RocksDB does not.
    assert_eq!(committed.get(b"new")?, None);
    assert_eq!(committed.get(b"old")?, Some(b("1")));

    log.commit(&mut task)?;
    assert_eq!(committed.get(b"new")?, Some(b("2")));
    assert_eq!(committed.get(b"old")?, None);
    assert_eq!(task.store("counts")?.pending_writes(), 0);
    Ok(())
}

#[test]
fn range_prefix_and_iter_merge_pending_writes_over_committed_state() -> TestResult {
    let h = Harness::new()?;
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    let mut log = Changelogs::default();
    let store = task.register_kv("s")?;
    for k in ["a", "b", "c", "d", "x1", "x2"] {
        store.put(b(k), b("committed"));
    }
    log.commit(&mut task)?;

    let store = task.kv_mut("s")?;
    store.delete(b("b"));
    store.put(b("c"), b("pending"));
    store.put(b("aa"), b("pending"));
    store.put(b("e"), b("pending"));
    store.delete(b("zz")); // deleting a key that never existed
    store.delete(b("x2"));

    let keys = |items: Vec<(Vec<u8>, Vec<u8>)>| {
        items
            .into_iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(&k),
                    String::from_utf8_lossy(&v)
                )
            })
            .collect::<Vec<_>>()
    };
    let all: Vec<_> = store.iter()?.collect::<keel_state::Result<_>>()?;
    assert_eq!(
        keys(all),
        [
            "a=committed",
            "aa=pending",
            "c=pending",
            "d=committed",
            "e=pending",
            "x1=committed"
        ]
    );
    let range: Vec<_> = store
        .range(Bound::Excluded(b"a"), Bound::Included(b"d"))?
        .collect::<keel_state::Result<_>>()?;
    assert_eq!(keys(range), ["aa=pending", "c=pending", "d=committed"]);
    let range: Vec<_> = store
        .range(Bound::Included(b"b"), Bound::Excluded(b"d"))?
        .collect::<keel_state::Result<_>>()?;
    assert_eq!(keys(range), ["c=pending"]);
    let inverted = store
        .range(Bound::Included(b"d"), Bound::Excluded(b"a"))?
        .count();
    assert_eq!(inverted, 0);
    let prefix: Vec<_> = store.prefix(b"x")?.collect::<keel_state::Result<_>>()?;
    assert_eq!(keys(prefix), ["x1=committed"]);
    Ok(())
}

#[test]
fn abort_leaves_no_trace_even_after_reopening_the_store() -> TestResult {
    let h = Harness::new()?;
    let mut log = Changelogs::default();
    {
        let mut task = h.open(Guarantee::ExactlyOnce)?;
        let store = task.register_kv("counts")?;
        store.put(b("x"), b("1"));
        log.commit(&mut task)?;

        let store = task.kv_mut("counts")?;
        store.put(b("x"), b("2"));
        store.put(b("y"), b("9"));
        log.abort(&mut task);
        let store = task.kv_mut("counts")?;
        assert_eq!(store.get(b"x")?, Some(b("1")));
        assert_eq!(store.get(b"y")?, None);

        // Writes after the abort that are never committed are dropped by a clean close too.
        store.put(b("z"), b("never committed"));
        task.close()?;
    }
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    let store = task.register_kv("counts")?;
    assert_eq!(
        kv_contents(store)?,
        BTreeMap::from([(b("x"), b("1"))]),
        "the aborted and uncommitted writes are gone"
    );
    assert!(task.take_changelog().is_empty());
    assert_eq!(task.restore_plans()[0].from, RestoreFrom::After(0));
    Ok(())
}

#[test]
fn changelog_has_one_record_per_key_with_its_latest_value_and_tombstones_for_deletes() -> TestResult
{
    let h = Harness::new()?;
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    let store = task.register_kv("counts")?;
    store.put(b("a"), b("1"));
    store.put(b("a"), b("2"));
    store.put(b("b"), b("1"));
    store.delete(b("b"));
    store.put(b("c"), b("3"));
    let store = task.store_mut("counts")?;
    assert_eq!(store.unlogged_writes(), 3);

    let records = store.take_changelog();
    let summary: Vec<_> = records
        .iter()
        .map(|r| (&*r.store, r.key.clone(), r.value.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            ("counts", b("a"), Some(b("2"))),
            ("counts", b("b"), None),
            ("counts", b("c"), Some(b("3"))),
        ]
    );
    assert!(records[1].is_tombstone());
    assert!(store.take_changelog().is_empty(), "drained");

    task.kv_mut("counts")?.put(b("a"), b("3"));
    let again = task.take_changelog();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].value, Some(b("3")));
    assert_eq!(
        h.env.changelog_topic(&again[0].store),
        "keel-test-counts-changelog"
    );
    Ok(())
}

#[test]
fn commit_refuses_an_undrained_changelog_and_an_offset_going_back() -> TestResult {
    let h = Harness::new()?;
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    task.register_kv("counts")?.put(b("a"), b("1"));
    let store = task.store_mut("counts")?;
    let err = store
        .commit(Some(0))
        .err()
        .ok_or("commit with undrained changelog succeeded")?;
    assert!(
        matches!(err, Error::UndrainedChangelog { count: 1, .. }),
        "{err}"
    );
    assert_eq!(err.fault(), Fault::Bug);
    assert_eq!(store.pending_writes(), 1, "nothing was lost by the refusal");

    store.take_changelog();
    store.commit(Some(5))?;
    task.kv_mut("counts")?.put(b("a"), b("2"));
    task.take_changelog();
    let err = task
        .commit([("counts", 3)])
        .err()
        .ok_or("offset regression accepted")?;
    assert!(
        matches!(
            err,
            Error::OffsetRegression {
                offset: 3,
                applied: 5,
                ..
            }
        ),
        "{err}"
    );
    let err = task
        .commit([("nope", 9)])
        .err()
        .ok_or("unknown store accepted")?;
    assert!(matches!(err, Error::UnknownStore { .. }), "{err}");

    task.commit([("counts", 7)])?;
    let store = task.store("counts")?;
    assert_eq!(store.applied_offset(), Some(7));
    assert_eq!(
        store
            .committed_reader()
            .ok_or("a key-value store has a committed reader")?
            .get(b"a")?,
        Some(b("2"))
    );
    Ok(())
}

#[test]
fn committed_reader_reports_a_closed_store_instead_of_reading_stale_files() -> TestResult {
    let h = Harness::new()?;
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    let mut log = Changelogs::default();
    let store = task.register_kv("counts")?;
    store.put(b("k1"), b("v1"));
    store.put(b("k2"), b("v2"));
    store.put(b("j"), b("v"));
    log.commit(&mut task)?;
    let reader = task
        .store("counts")?
        .committed_reader()
        .ok_or("a key-value store has a committed reader")?;
    assert_eq!(
        reader.prefix(b"k", 10)?,
        vec![(b("k1"), b("v1")), (b("k2"), b("v2"))]
    );
    assert_eq!(reader.prefix(b"k", 1)?.len(), 1);
    assert!(reader.is_open());
    task.close()?;
    assert!(!reader.is_open());
    let err = reader.get(b"k1").err().ok_or("read after close")?;
    assert!(matches!(err, Error::StoreClosed { .. }));
    assert!(err.is_retryable());
    Ok(())
}

#[test]
fn get_with_reads_without_copying_and_sees_pending_writes() -> TestResult {
    let h = Harness::new()?;
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    let mut log = Changelogs::default();
    let store = task.register_kv("counts")?;
    store.put(b("a"), 41u64.to_be_bytes());
    log.commit(&mut task)?;
    let store = task.kv_mut("counts")?;
    let read = |s: &keel_state::KeyValueStore, k: &[u8]| s.get_with(k, |v| v.map(|v| v.len()));
    assert_eq!(read(store, b"a")?, Some(8));
    store.put(b("a"), b("xyz"));
    assert_eq!(read(store, b"a")?, Some(3));
    store.delete(b("a"));
    assert_eq!(read(store, b"a")?, None);
    Ok(())
}

#[test]
fn an_in_memory_environment_keeps_committed_state_across_reopen_and_writes_no_rocksdb_files()
-> TestResult {
    let h = Harness::with_config(|c| c.in_memory = true)?;
    let mut log = Changelogs::default();
    {
        let mut task = h.open(Guarantee::ExactlyOnce)?;
        let store = task.register_kv("counts")?;
        store.put(b("x"), b("1"));
        store.put(b("y"), b("2"));
        log.commit(&mut task)?;
        task.close()?;
    }
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    let store = task.register_kv("counts")?;
    assert_eq!(
        kv_contents(store)?,
        BTreeMap::from([(b("x"), b("1")), (b("y"), b("2"))]),
        "the checkpointed store reopens from memory"
    );
    let on_disk: Vec<_> = std::fs::read_dir(h.task_dir().join("counts"))?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        on_disk.is_empty(),
        "RocksDB wrote files to disk: {on_disk:?}"
    );
    task.close()?;

    // Removing the task's state removes the in-memory store too.
    h.env.remove_task_state(TASK)?;
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    let store = task.register_kv("counts")?;
    assert!(kv_contents(store)?.is_empty());
    Ok(())
}
