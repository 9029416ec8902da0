//! The invariant auditor: checks, continuously and from the events Keel publishes, the promises
//! the system makes as a whole, and reports every violation to `audit.violations.v1` (Avro
//! `AuditViolation`: `OPEN`, then `RESOLVED` when it stops holding; `ALLOWED` for an oversell
//! the configuration allows), to `keel_invariant_violations_total{invariant}` and to the gauge
//! `keel_invariant_violations_open{invariant}` (`view.rs`).
//!
//! What it checks from the streams (`logic.rs` has the rules):
//! - `STOCK_NON_NEGATIVE` — a SKU's available stock (and stock on hand) never below zero, outside
//!   the oversell mode (per SKU, through a repartition of `inventory.reserved.v1`);
//! - `CANCELLED_HOLDS_RELEASED` — a cancelled order holds no stock after its grace period;
//! - `CONFIRMED_HOLDS_SOLD` — a confirmed order's holds are confirmed (sold) after its grace.
//!
//! An order's entry is deleted `[audit].retention_ms` after its last change once nothing about
//! it waits (an open violation stays until resolved), and older inputs for a deleted entry are
//! skipped as late (`logic.rs`, "Retention").
//!
//! The payment invariants — at most one capture per order, a confirmed order captured, a
//! cancelled order with no uncaptured authorization, captured sum = confirmed totals — need the
//! ledger (no topic carries captures or voids): `keel audit` checks them against the stores, and
//! the reconciliation processor checks the per-order ones from the ledger's CDC
//! (`crate::reconciliation`). `docs/adr/0005-invariant-auditor.md` says why.
//!
//! - `logic.rs`: [`decide`], [`decide_stock`], pure.
//! - `state.rs`: the stores.
//! - `topology.rs`: [`topology`], [`OrderAuditor`], [`StockAuditor`].
//! - `view.rs`: [`AuditView`], [`AuditMetrics`].

pub mod logic;
pub mod state;
mod topology;
pub mod view;

#[cfg(test)]
mod tests;

use std::time::Duration;

use serde::Deserialize;

pub use logic::{
    HoldFact, LineFact, Now, OrderAudit, OrderInput, OrderStatus, Output, Rules, StockAudit,
    StockInput, Violation, decide, decide_stock,
};
pub use topology::{
    AuditSettings, OrderAuditor, OrderEvent, StockAuditor, StockEvent, order_input, report,
    topology,
};
pub use view::{AuditMetrics, AuditView};

use crate::inventory::OversellPolicy;

/// `[audit]`: grace periods of the invariant auditor and of `keel audit`'s store checks.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// How long a cancelled order may still hold stock, or its payment stay authorized, before
    /// it is a violation (ms).
    pub cancelled_grace_ms: u64,
    /// How long a confirmed order may wait for its sales and its capture before it is a
    /// violation (ms).
    pub confirmed_grace_ms: u64,
    /// How often the auditor checks its grace timers (ms).
    pub check_interval_ms: u64,
    /// How long an order's entry is kept after its last change once nothing about it waits
    /// (ms; an open violation is kept until resolved). Inputs for a deleted entry that are older
    /// than this are skipped as late (`logic.rs`, "Retention"). 7 days by default.
    pub retention_ms: u64,
    /// How many examples `keel audit` prints per violated invariant.
    pub examples: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            cancelled_grace_ms: 300_000,
            confirmed_grace_ms: 300_000,
            check_interval_ms: 1_000,
            retention_ms: 7 * 24 * 3_600_000,
            examples: 5,
        }
    }
}

impl AuditConfig {
    /// The auditor's settings; `oversell` is `[inventory].oversell`.
    pub fn settings(&self, oversell: OversellPolicy) -> AuditSettings {
        let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        AuditSettings {
            rules: Rules {
                cancelled_grace_ms: ms(self.cancelled_grace_ms),
                confirmed_grace_ms: ms(self.confirmed_grace_ms),
                oversell,
                retention_ms: ms(self.retention_ms),
            },
            check_interval: Duration::from_millis(self.check_interval_ms.max(1)),
        }
    }

    /// Every problem with these settings.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.check_interval_ms == 0 {
            out.push("audit.check_interval_ms must be above 0".to_owned());
        }
        if self.retention_ms == 0 {
            out.push("audit.retention_ms must be above 0".to_owned());
        }
        out
    }
}
