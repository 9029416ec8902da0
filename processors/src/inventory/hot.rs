//! The few hottest SKUs, by reservations, for `inventory_stock_available{sku}`: a label per SKU
//! only for the top `N` (`[inventory].hot_skus`), so the series count stays bounded whatever
//! the catalogue's size.
//!
//! Counting is the Space-Saving algorithm (Metwally et al.): at most `capacity` counters; a SKU
//! not counted yet takes the smallest counter's place and starts from its count plus one. So
//! memory is bounded, a SKU that is truly among the top `N` is never missed once the
//! capacity is well above `N` (here `8 N`, at least 64), and counts are overestimates by at
//! most the evicted minimum.

use std::collections::HashMap;

/// Reservation counts of the hottest SKUs and which of them are shown.
#[derive(Debug, Default)]
pub struct HotSkus {
    top: usize,
    capacity: usize,
    /// SKU → (reservations counted, the task that owns it).
    counts: HashMap<String, (u64, String)>,
}

/// What the gauge must do after a change.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Shown {
    /// Whether the SKU just counted or changed is among the top `N` (set its gauge).
    pub show: bool,
    /// SKUs that left the top `N` (remove their series).
    pub hide: Vec<String>,
}

impl HotSkus {
    /// Shows the `top` hottest SKUs (0: none).
    pub fn new(top: usize) -> Self {
        Self {
            top,
            capacity: if top == 0 { 0 } else { (top * 8).max(64) },
            counts: HashMap::new(),
        }
    }

    /// The top `N` SKUs, hottest first (ties by name, so the choice is stable).
    pub fn top(&self) -> Vec<String> {
        let mut all: Vec<(&String, u64)> = self.counts.iter().map(|(s, (n, _))| (s, *n)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        all.into_iter()
            .take(self.top)
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// Counts a reservation of `sku` (owned by `task`).
    pub fn reserved(&mut self, sku: &str, task: &str) -> Shown {
        if self.top == 0 {
            return Shown::default();
        }
        let before = self.top();
        let mut hide = Vec::new();
        if let Some((n, owner)) = self.counts.get_mut(sku) {
            *n += 1;
            task.clone_into(owner);
        } else {
            let mut start = 1;
            if self.counts.len() >= self.capacity
                && let Some(min) = self
                    .counts
                    .iter()
                    .min_by(|a, b| a.1.0.cmp(&b.1.0).then_with(|| b.0.cmp(a.0)))
                    .map(|(s, _)| s.clone())
                && let Some((n, _)) = self.counts.remove(&min)
            {
                start = n + 1;
            }
            self.counts.insert(sku.to_owned(), (start, task.to_owned()));
        }
        let after = self.top();
        hide.extend(before.into_iter().filter(|s| !after.contains(s)));
        Shown {
            show: after.iter().any(|s| s == sku),
            hide,
        }
    }

    /// Whether `sku` is shown now.
    pub fn is_shown(&self, sku: &str) -> bool {
        self.counts.contains_key(sku) && self.top().iter().any(|s| s == sku)
    }

    /// Forgets the SKUs of `task` (it moved away or stopped); returns those that were shown.
    pub fn forget_task(&mut self, task: &str) -> Vec<String> {
        let shown = self.top();
        self.counts.retain(|_, (_, owner)| owner != task);
        shown
            .into_iter()
            .filter(|s| !self.counts.contains_key(s))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_top_n_are_shown_and_one_pushed_out_is_hidden() {
        let mut hot = HotSkus::new(2);
        assert!(hot.reserved("A", "0_0").show);
        assert!(hot.reserved("A", "0_0").show);
        assert!(hot.reserved("B", "0_1").show);
        // C ties B at 1: B stays (ties by name), C is not shown.
        assert_eq!(
            hot.reserved("C", "0_1"),
            Shown {
                show: false,
                hide: vec![]
            }
        );
        // C passes B: B is hidden.
        assert_eq!(
            hot.reserved("C", "0_1"),
            Shown {
                show: true,
                hide: vec!["B".to_owned()]
            }
        );
        assert_eq!(hot.top(), ["A", "C"]);
        assert!(hot.is_shown("A") && !hot.is_shown("B"));
    }

    #[test]
    fn memory_stays_bounded_and_a_hot_sku_is_found_among_many_cold_ones() {
        let mut hot = HotSkus::new(1);
        for i in 0..10_000 {
            hot.reserved(&format!("cold-{i}"), "0_0");
            if i % 10 == 0 {
                hot.reserved("HOT", "0_0");
            }
        }
        assert!(hot.counts.len() <= 64, "{} counters", hot.counts.len());
        assert_eq!(hot.top(), ["HOT"]);
    }

    #[test]
    fn a_task_that_goes_away_takes_its_skus_with_it() {
        let mut hot = HotSkus::new(10);
        hot.reserved("A", "0_0");
        hot.reserved("B", "0_1");
        assert_eq!(hot.forget_task("0_0"), ["A"]);
        assert_eq!(hot.top(), ["B"]);
        assert!(HotSkus::new(0).reserved("A", "0_0") == Shown::default());
    }
}
