//! Which offsets may be committed while commands finish out of order.
//!
//! Commands of different orders run concurrently, so offset 12 may finish before offset 10.
//! Per partition the tracker keeps the offsets received and not finished; the committable
//! position is the smallest unfinished offset, or one past the highest finished when nothing
//! runs. Never past an unfinished command; never backwards.

use std::collections::{BTreeMap, HashMap};

/// A topic and partition.
pub(crate) type Tp = (String, i32);

#[derive(Debug, Default)]
struct Partition {
    /// Unfinished offsets → how many deliveries of it run (a re-delivery may overlap).
    running: BTreeMap<i64, u32>,
    /// One past the highest offset finished.
    next_after_done: Option<i64>,
    /// The last position committed (or handed out to commit).
    committed: Option<i64>,
}

#[derive(Debug, Default)]
pub(crate) struct OffsetTracker {
    partitions: HashMap<Tp, Partition>,
}

impl OffsetTracker {
    /// A command at `offset` was received and will run.
    pub(crate) fn start(&mut self, tp: &Tp, offset: i64) {
        let p = self.partitions.entry(tp.clone()).or_default();
        *p.running.entry(offset).or_default() += 1;
    }

    /// The command at `offset` is done (applied, replayed or skipped).
    pub(crate) fn finish(&mut self, tp: &Tp, offset: i64) {
        let Some(p) = self.partitions.get_mut(tp) else {
            return; // revoked meanwhile
        };
        let Some(count) = p.running.get_mut(&offset) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            p.running.remove(&offset);
        }
        p.next_after_done = Some(p.next_after_done.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    fn position(p: &Partition) -> Option<i64> {
        match p.running.keys().next() {
            Some(&first_unfinished) => Some(first_unfinished),
            None => p.next_after_done,
        }
    }

    /// The consumer's positions (one past the last command received on each partition, or past
    /// the commit markers and aborted records after it): a partition with nothing running has
    /// every command received done, so its position is committable (a transaction's commit
    /// marker must be committed too, or a caught-up group shows lag 1 forever).
    pub(crate) fn consumer_positions(&mut self, positions: &[(Tp, i64)]) {
        for (tp, pos) in positions {
            let p = self.partitions.entry(tp.clone()).or_default();
            if p.running.is_empty() && p.next_after_done.is_none_or(|n| *pos > n) {
                p.next_after_done = Some(*pos);
            }
        }
    }

    /// The positions to commit now (only those that moved forward), marked as committed.
    pub(crate) fn take_committable(&mut self) -> Vec<(Tp, i64)> {
        self.take_where(|_| true)
    }

    /// Like [`Self::take_committable`], for the given partitions only.
    pub(crate) fn take_committable_of(&mut self, tps: &[Tp]) -> Vec<(Tp, i64)> {
        self.take_where(|tp| tps.contains(tp))
    }

    fn take_where(&mut self, wanted: impl Fn(&Tp) -> bool) -> Vec<(Tp, i64)> {
        let mut out = Vec::new();
        for (tp, p) in &mut self.partitions {
            if !wanted(tp) {
                continue;
            }
            if let Some(pos) = Self::position(p)
                && p.committed.is_none_or(|c| pos > c)
            {
                p.committed = Some(pos);
                out.push((tp.clone(), pos));
            }
        }
        out.sort();
        out
    }

    /// A commit failed: let the next round try these positions again.
    pub(crate) fn forget_committed(&mut self, positions: &[(Tp, i64)]) {
        for (tp, pos) in positions {
            if let Some(p) = self.partitions.get_mut(tp)
                && p.committed == Some(*pos)
            {
                p.committed = None;
            }
        }
    }

    /// The partitions are no longer ours: forget them (running commands still finish).
    pub(crate) fn revoke(&mut self, tps: &[Tp]) {
        for tp in tps {
            self.partitions.remove(tp);
        }
    }

    /// Commands received and not finished, over all partitions.
    pub(crate) fn running(&self) -> usize {
        self.partitions
            .values()
            .map(|p| p.running.values().map(|c| *c as usize).sum::<usize>())
            .sum()
    }
}
