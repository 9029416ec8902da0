//! Timer store: due order, removal on fire, durability, restore.

use keel_state::{Guarantee, Timer};

use crate::common::{Changelogs, Harness, TestResult, b};

fn timer(key: &str, due: i64, payload: &str) -> Timer {
    Timer {
        key: b(key),
        due,
        payload: b(payload),
    }
}

#[test]
fn timers_fire_in_due_order_and_are_removed_when_fired() -> TestResult {
    let h = Harness::new()?;
    let mut log = Changelogs::default();
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    let timers = task.register_timers("timers")?;
    timers.schedule(b("order-3/psp-timeout"), 30_000, b"authorize")?;
    timers.schedule(b("order-1/cart-wait"), 5_000, b"cart")?;
    timers.schedule(b("order-2/cart-wait"), 5_000, b"cart")?;
    timers.schedule(b("order-0/psp-timeout"), 45_000, b"authorize")?;
    log.commit(&mut task)?;

    let timers = task.timers_mut("timers")?;
    assert_eq!(timers.next_due()?, Some(5_000));
    assert!(timers.due(4_999)?.is_empty());
    assert_eq!(
        timers.due(30_000)?,
        [
            timer("order-1/cart-wait", 5_000, "cart"),
            timer("order-2/cart-wait", 5_000, "cart"),
            timer("order-3/psp-timeout", 30_000, "authorize"),
        ]
    );
    assert!(timers.due(30_000)?.is_empty(), "fired timers are gone");
    assert_eq!(timers.get(b"order-1/cart-wait")?, None);
    let tombstones = task.take_changelog();
    assert_eq!(tombstones.len(), 3);
    assert!(tombstones.iter().all(|r| r.is_tombstone()));
    assert_eq!(task.timers("timers")?.next_due()?, Some(45_000));
    Ok(())
}

#[test]
fn rescheduling_replaces_a_timer_and_cancel_removes_it() -> TestResult {
    let h = Harness::new()?;
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    let timers = task.register_timers("timers")?;
    assert_eq!(timers.schedule(b("t"), 100, b"first")?, None);
    assert_eq!(
        timers.schedule(b("t"), 300, b"second")?,
        Some(timer("t", 100, "first"))
    );
    timers.schedule(b("u"), 200, b"u")?;
    assert_eq!(timers.cancel(b"u")?, Some(timer("u", 200, "u")));
    assert_eq!(timers.cancel(b"u")?, None);
    assert!(timers.due(299)?.is_empty());
    assert_eq!(timers.due(300)?, [timer("t", 300, "second")]);
    Ok(())
}

#[test]
fn timers_survive_a_clean_close_and_reopen() -> TestResult {
    let h = Harness::new()?;
    let mut log = Changelogs::default();
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    let timers = task.register_timers("timers")?;
    for i in 0..5i64 {
        timers.schedule(format!("t{i}").into_bytes(), 100 * (5 - i), b"p")?;
    }
    log.commit(&mut task)?;
    task.timers_mut("timers")?
        .schedule(b("uncommitted"), 1, b"p")?;
    task.close()?;

    let mut task = h.open(Guarantee::ExactlyOnce)?;
    let timers = task.register_timers("timers")?;
    let fired: Vec<_> = timers
        .due(1_000)?
        .into_iter()
        .map(|t| (t.key, t.due))
        .collect();
    assert_eq!(
        fired,
        [
            (b("t4"), 100),
            (b("t3"), 200),
            (b("t2"), 300),
            (b("t1"), 400),
            (b("t0"), 500)
        ]
    );
    Ok(())
}

#[test]
fn timers_are_restored_from_the_changelog_when_local_state_is_lost() -> TestResult {
    let h = Harness::new()?;
    let mut log = Changelogs::default();
    let mut task = h.open(Guarantee::ExactlyOnce)?;
    let timers = task.register_timers("timers")?;
    timers.schedule(b("a"), 10, b"1")?;
    timers.schedule(b("b"), 20, b"2")?;
    timers.schedule(b("c"), 30, b"3")?;
    log.commit(&mut task)?;
    let timers = task.timers_mut("timers")?;
    assert_eq!(timers.due(10)?.len(), 1); // a fires
    timers.schedule(b("c"), 5, b"3 sooner")?;
    log.commit(&mut task)?;
    drop(task); // crash

    // The task moves to another instance with no local state at all.
    let other = Harness::new()?;
    let mut task = other.open(Guarantee::ExactlyOnce)?;
    task.register_timers("timers")?;
    log.restore(&mut task, 1)?;
    let timers = task.timers_mut("timers")?;
    assert_eq!(timers.get(b"a")?, None, "a fired before the move");
    assert_eq!(
        timers.due(100)?,
        [timer("c", 5, "3 sooner"), timer("b", 20, "2")]
    );
    Ok(())
}
