//! TTL store: expiry, the expiry index, changelog tombstones, restore.

use std::time::Duration;

use keel_state::{Guarantee, TtlEntry};

use crate::common::{Changelogs, Harness, TestResult, b};

fn entry(key: &str, value: &str, expires_at: i64) -> TtlEntry {
    TtlEntry {
        key: b(key),
        value: b(value),
        expires_at,
    }
}

#[test]
fn get_hides_expired_entries_before_they_are_purged() -> TestResult {
    let h = Harness::new()?;
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    let holds = task.register_ttl("holds")?;
    holds.put(b("h1"), b"2 units", 600_000)?;
    assert_eq!(holds.get(b"h1", 599_999)?, Some(b("2 units")));
    assert_eq!(
        holds.get(b"h1", 600_000)?,
        None,
        "expired at its expiry time"
    );
    assert_eq!(
        holds.get_entry(b"h1")?,
        Some(entry("h1", "2 units", 600_000))
    );

    holds.put_with_ttl(b("h2"), b"1 unit", 1_000, Duration::from_secs(600))?;
    assert_eq!(holds.get_entry(b"h2")?.map(|e| e.expires_at), Some(601_000));
    Ok(())
}

#[test]
fn expire_returns_exactly_the_expired_entries_in_expiry_order_and_emits_tombstones() -> TestResult {
    let h = Harness::new()?;
    let mut log = Changelogs::default();
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    let holds = task.register_ttl("holds")?;
    holds.put(b("k1"), b"v1", 300)?;
    holds.put(b("k2"), b"v2", 100)?;
    holds.put(b("k3"), b"v3", 200)?;
    holds.put(b("k4"), b"v4", 1000)?;
    holds.put(b("k5"), b"v5", 200)?;
    holds.put(b("k0"), b"v0", -50)?; // already expired when written
    log.commit(&mut task)?;

    let holds = task.ttl_mut("holds")?;
    assert_eq!(holds.next_expiry()?, Some(-50));
    assert!(holds.expire(-51)?.is_empty());
    assert_eq!(
        holds.expire(200)?,
        [
            entry("k0", "v0", -50),
            entry("k2", "v2", 100),
            entry("k3", "v3", 200),
            entry("k5", "v5", 200),
        ]
    );
    let tombstones: Vec<_> = task
        .take_changelog()
        .into_iter()
        .map(|r| (r.key, r.value))
        .collect();
    assert_eq!(
        tombstones,
        [
            (b("k0"), None),
            (b("k2"), None),
            (b("k3"), None),
            (b("k5"), None)
        ]
    );
    let holds = task.ttl_mut("holds")?;
    assert!(
        holds.expire(200)?.is_empty(),
        "purged entries do not come back"
    );
    assert_eq!(holds.get_entry(b"k2")?, None);
    assert_eq!(holds.next_expiry()?, Some(300));
    task.commit::<_, &str>([])?;

    let holds = task.ttl_mut("holds")?;
    assert_eq!(
        holds.expire(i64::MAX)?,
        [entry("k1", "v1", 300), entry("k4", "v4", 1000)]
    );
    assert_eq!(holds.next_expiry()?, None);
    Ok(())
}

#[test]
fn moving_an_expiry_or_deleting_an_entry_removes_its_old_index_entry() -> TestResult {
    let h = Harness::new()?;
    let mut log = Changelogs::default();
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    let holds = task.register_ttl("holds")?;
    holds.put(b("moved"), b"a", 100)?;
    holds.put(b("deleted"), b"b", 100)?;
    holds.put(b("shortened"), b"c", 900)?;
    log.commit(&mut task)?;

    let holds = task.ttl_mut("holds")?;
    holds.put(b("moved"), b"a2", 500)?; // pending move of a committed entry
    assert_eq!(holds.delete(b"deleted")?, Some(entry("deleted", "b", 100)));
    assert_eq!(holds.delete(b"never")?, None);
    holds.put(b("shortened"), b"c", 150)?;
    holds.put(b("twice"), b"d", 50)?;
    holds.put(b("twice"), b"d", 400)?; // moved within the same interval
    assert_eq!(holds.expire(200)?, [entry("shortened", "c", 150)]);
    log.commit(&mut task)?;

    let holds = task.ttl_mut("holds")?;
    assert!(holds.expire(300)?.is_empty());
    assert_eq!(
        holds.expire(500)?,
        [entry("twice", "d", 400), entry("moved", "a2", 500)]
    );
    Ok(())
}

#[test]
fn expire_at_most_bounds_the_work_of_one_punctuation() -> TestResult {
    let h = Harness::new()?;
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    let holds = task.register_ttl("holds")?;
    for i in 0..10i64 {
        holds.put(format!("h{i}").into_bytes(), b"x", 10 - i)?;
    }
    let first: Vec<_> = holds
        .expire_at_most(100, 3)?
        .into_iter()
        .map(|e| e.expires_at)
        .collect();
    assert_eq!(first, [1, 2, 3]);
    assert_eq!(holds.next_expiry()?, Some(4));
    assert_eq!(holds.expire(100)?.len(), 7);
    Ok(())
}

#[test]
fn an_aborted_expiry_brings_the_entries_back() -> TestResult {
    let h = Harness::new()?;
    let mut log = Changelogs::default();
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    let holds = task.register_ttl("holds")?;
    holds.put(b("h"), b"x", 10)?;
    log.commit(&mut task)?;

    assert_eq!(task.ttl_mut("holds")?.expire(10)?.len(), 1);
    log.abort(&mut task);
    let holds = task.ttl_mut("holds")?;
    assert_eq!(holds.get_entry(b"h")?, Some(entry("h", "x", 10)));
    assert_eq!(
        holds.expire(10)?,
        [entry("h", "x", 10)],
        "expires again, once"
    );
    Ok(())
}

#[test]
fn ttl_changelog_values_carry_the_expiry_and_restore_rebuilds_the_index() -> TestResult {
    let h = Harness::new()?;
    let mut log = Changelogs::default();
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    let holds = task.register_ttl("holds")?;
    holds.put(b("a"), b"1", 30)?;
    holds.put(b("b"), b"2", 10)?;
    holds.put(b("c"), b"3", 20)?;
    let records = task.take_changelog();
    let expected: Vec<u8> = [&[1u8][..], &30i64.to_be_bytes()[..], &b"1"[..]].concat();
    assert_eq!(
        records[0].value.as_deref(),
        Some(&expected[..]),
        "[1][expires_at BE][value]"
    );
    // Put them back so the harness produces them.
    let holds = task.ttl_mut("holds")?;
    for r in &records {
        let v = r.value.as_deref().ok_or("tombstone")?;
        let expires_at = i64::from_be_bytes(v[1..9].try_into()?);
        holds.put(r.key.clone(), &v[9..], expires_at)?;
    }
    log.commit(&mut task)?;
    task.ttl_mut("holds")?.put(b("b"), b"2", 40)?; // move b's expiry
    log.commit(&mut task)?;
    drop(task); // crash

    let mut task = h.open(Guarantee::ExactlyOnce)?;
    task.register_ttl("holds")?;
    log.restore(&mut task, 2)?;
    let holds = task.ttl_mut("holds")?;
    assert_eq!(holds.next_expiry()?, Some(20));
    assert_eq!(
        holds.expire(35)?,
        [entry("c", "3", 20), entry("a", "1", 30)]
    );
    assert_eq!(holds.expire(40)?, [entry("b", "2", 40)]);
    Ok(())
}

#[test]
fn a_malformed_ttl_changelog_record_is_reported_and_nothing_is_applied() -> TestResult {
    let h = Harness::new()?;
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    task.register_ttl("holds")?;
    let good: Vec<u8> = [&[1u8][..], &5i64.to_be_bytes()[..], &b"v"[..]].concat();
    let err = task
        .restore_batch(
            "holds",
            [(0, b("ok"), Some(good)), (1, b("bad"), Some(b("junk")))],
        )
        .err()
        .ok_or("junk accepted")?;
    assert!(
        matches!(err, keel_state::Error::CorruptChangelog { offset: 1, .. }),
        "{err}"
    );
    assert_eq!(err.fault(), keel_state::Fault::Corruption);
    assert_eq!(
        task.ttl("holds")?.get_entry(b"ok")?,
        None,
        "the batch is all or nothing"
    );
    assert_eq!(task.store("holds")?.applied_offset(), None);
    Ok(())
}
