//! [`DueTimers`]: a processor's durable due-timer index — one timer per key, ordered by
//! `(due_ms, key)` — over a timer store of its task (`StoreKind::Timer`, changelogged by the
//! runtime, so timers survive restarts and move with their partition).
//!
//! Every keyed processor that waits for something (a grace period, a cart, a retention) does
//! the same three things: arm a key's timer at a time (replacing the one it had), disarm it, and
//! on a wall-clock punctuation fire what fell due, earliest first, a bounded number per
//! punctuation so one burst cannot stall the task (the rest fire at the next one). Firing
//! removes the timer in the punctuation's transaction: under exactly-once a timer fires once,
//! and an aborted transaction brings it back.
//!
//! ```ignore
//! const DUE: DueTimers = DueTimers::new("reconciliation-due");
//! DUE.schedule(ctx, order_id.as_bytes(), now + grace)?;          // arm (or re-arm)
//! DUE.cancel(ctx, order_id.as_bytes())?;                         // disarm
//! DUE.fire_due(ctx, punctuation.timestamp, |ctx, key, due_ms| { // in `punctuate`
//!     self.apply(ctx, &String::from_utf8_lossy(key), Input::Due)
//! })?;
//! ```

use keel_topology::{Context, ProcessError};

/// How many timers one punctuation fires at most.
pub const FIRE_LIMIT: usize = 1_000;

/// The due-timer index in the timer store `store` (connect the store to the processor with
/// `add_state_store(store, StoreKind::Timer, ..)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueTimers {
    store: &'static str,
    limit: usize,
}

impl DueTimers {
    /// The index over the timer store `store`, firing at most [`FIRE_LIMIT`] per punctuation.
    pub const fn new(store: &'static str) -> Self {
        Self {
            store,
            limit: FIRE_LIMIT,
        }
    }

    /// The same index firing at most `limit` (at least 1) timers per punctuation.
    pub const fn with_limit(self, limit: usize) -> Self {
        Self {
            limit: if limit == 0 { 1 } else { limit },
            ..self
        }
    }

    /// The timer store's name.
    pub const fn store(&self) -> &'static str {
        self.store
    }

    /// Arms `key`'s timer at `due_ms` (epoch ms of the clock the punctuation runs on), replacing
    /// the timer `key` had.
    ///
    /// # Errors
    /// The processor is not connected to the store, or the store failed.
    pub fn schedule(
        &self,
        ctx: &mut Context<'_>,
        key: impl Into<Vec<u8>>,
        due_ms: i64,
    ) -> Result<(), ProcessError> {
        ctx.timers(self.store)?.schedule(key, due_ms, [])?;
        Ok(())
    }

    /// Disarms `key`'s timer; returns when it was due, if it had one.
    ///
    /// # Errors
    /// As [`schedule`](Self::schedule).
    pub fn cancel(&self, ctx: &mut Context<'_>, key: &[u8]) -> Result<Option<i64>, ProcessError> {
        Ok(ctx.timers(self.store)?.cancel(key)?.map(|t| t.due))
    }

    /// When `key`'s timer is due, if it has one.
    ///
    /// # Errors
    /// As [`schedule`](Self::schedule).
    pub fn due_of(&self, ctx: &mut Context<'_>, key: &[u8]) -> Result<Option<i64>, ProcessError> {
        Ok(ctx.timers(self.store)?.get(key)?.map(|t| t.due))
    }

    /// Removes the timers due at `now_ms` (`due_ms <= now_ms`), at most the limit, and calls
    /// `on_due(ctx, key, due_ms)` for each in `(due_ms, key)` order; returns how many fired.
    /// `on_due` may arm the same key again (its new timer fires at a later punctuation, never
    /// within this call). The first error stops the loop and is returned: the runtime aborts
    /// the transaction, which brings every fired timer back.
    ///
    /// # Errors
    /// The store's, or the first of `on_due`'s.
    pub fn fire_due<F>(
        &self,
        ctx: &mut Context<'_>,
        now_ms: i64,
        mut on_due: F,
    ) -> Result<usize, ProcessError>
    where
        F: FnMut(&mut Context<'_>, &[u8], i64) -> Result<(), ProcessError>,
    {
        let due = ctx.timers(self.store)?.due_at_most(now_ms, self.limit)?;
        let fired = due.len();
        for timer in due {
            on_due(ctx, &timer.key, timer.due)?;
        }
        Ok(fired)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use keel_topology::serde::{Json, Utf8};
    use keel_topology::{
        Context, ProcessError, Processor, Punctuation, PunctuationType, Record, StoreKind,
        TestDriver, TopologyBuilder,
    };

    use super::DueTimers;

    const STORE: &str = "test-due";
    /// Two per punctuation, so the bound shows.
    const TIMERS: DueTimers = DueTimers::new(STORE).with_limit(2);

    /// A value above 0 arms its key that many ms from now, any other disarms it; fired timers
    /// go out as `(key, due)`.
    #[derive(Debug)]
    struct Arming;

    impl Processor for Arming {
        type Key = String;
        type Value = i64;

        fn init(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
            ctx.schedule("due", Duration::from_millis(10), PunctuationType::WallClock);
            Ok(())
        }

        fn process(
            &mut self,
            ctx: &mut Context<'_>,
            record: Record<String, i64>,
        ) -> Result<(), ProcessError> {
            if record.value > 0 {
                let due = ctx.wall_clock_time() + record.value;
                TIMERS.schedule(ctx, record.key.into_bytes(), due)
            } else {
                TIMERS.cancel(ctx, record.key.as_bytes()).map(|_| ())
            }
        }

        fn punctuate(
            &mut self,
            ctx: &mut Context<'_>,
            punctuation: &Punctuation,
        ) -> Result<(), ProcessError> {
            TIMERS.fire_due(ctx, punctuation.timestamp, |ctx, key, due| {
                let key = String::from_utf8_lossy(key).into_owned();
                ctx.forward(Record::new(key, due, due));
                Ok(())
            })?;
            Ok(())
        }
    }

    fn driver() -> TestDriver {
        let mut b = TopologyBuilder::new();
        b.add_source("in", &["in"], Utf8, Json::<i64>::new())
            .add_processor("arming", || Arming, &["in"])
            .add_sink("out", "out", Utf8, Json::<i64>::new(), &["arming"])
            .add_state_store(STORE, StoreKind::Timer, &["arming"]);
        TestDriver::new(b.build().expect("topology")).expect("driver")
    }

    fn arm(d: &mut TestDriver, key: &str, in_ms: i64) {
        let at = d.wall_clock();
        d.pipe(
            "in",
            &key.to_owned(),
            &in_ms,
            at,
            &Utf8,
            &Json::<i64>::new(),
        )
        .expect("processed");
    }

    fn fired(d: &mut TestDriver) -> Vec<(String, i64)> {
        d.read_output_as("out", &Utf8, &Json::<i64>::new())
            .expect("decodes")
    }

    #[test]
    fn due_timers_fire_once_in_due_order_bounded_per_punctuation_and_survive_a_restart() {
        let mut d = driver();
        let start = d.wall_clock();
        arm(&mut d, "a", 30);
        arm(&mut d, "b", 10);
        arm(&mut d, "c", 20);
        arm(&mut d, "d", 15);
        arm(&mut d, "d", 0); // disarmed
        arm(&mut d, "c", 25); // re-armed: replaces its timer
        d.restart(true).expect("restarts"); // durable: back from the changelog
        d.advance_wall_clock(Duration::ZERO) // the punctuator learns the clock
            .expect("ticks");
        d.advance_wall_clock(Duration::from_millis(40))
            .expect("ticks");
        assert_eq!(
            fired(&mut d),
            vec![("b".to_owned(), start + 10), ("c".to_owned(), start + 25)],
            "the earliest two"
        );
        d.advance_wall_clock(Duration::from_millis(10))
            .expect("ticks");
        assert_eq!(fired(&mut d), vec![("a".to_owned(), start + 30)]);
        d.advance_wall_clock(Duration::from_millis(100))
            .expect("ticks");
        assert!(fired(&mut d).is_empty(), "each fires once; d never");
    }
}
