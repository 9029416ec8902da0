//! Fault injection for tests (compiled only under `cfg(test)` or the `failpoints` feature).
//!
//! A failpoint is armed per thread with a count: the next `n` times the code passes it on that
//! thread, it fails as the real operation could (an I/O error, [`Fault::Environment`]). Being
//! per thread, tests that run in parallel do not see each other's failpoints.
//!
//! [`Fault::Environment`]: crate::Fault::Environment

use std::cell::RefCell;
use std::collections::HashMap;

/// Applying a store's pending writes to RocksDB (`commit`) fails.
pub const STORE_APPLY: &str = "store-apply";

thread_local! {
    static ARMED: RefCell<HashMap<&'static str, u32>> = RefCell::new(HashMap::new());
}

/// Makes the next `times` passes of failpoint `name` on this thread fail (0 disarms it).
pub fn arm(name: &'static str, times: u32) {
    ARMED.with(|armed| {
        armed.borrow_mut().insert(name, times);
    });
}

/// How many failures of `name` are still armed on this thread.
pub fn remaining(name: &'static str) -> u32 {
    ARMED.with(|armed| armed.borrow().get(name).copied().unwrap_or(0))
}

/// Whether this pass of failpoint `name` fails (and counts it down).
pub(crate) fn hit(name: &'static str) -> bool {
    ARMED.with(|armed| match armed.borrow_mut().get_mut(name) {
        Some(n) if *n > 0 => {
            *n -= 1;
            true
        }
        _ => false,
    })
}
