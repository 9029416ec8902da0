//! The reconciliation processor, keyed by order id: joins the payment ledger's CDC stream
//! (Debezium, `payments` keyed by order id, envelope kept — `keel_connectors::ledger`) with the
//! saga's decisions (`order.decisions.v1`) and reports where they disagree:
//! `AUTHORIZED_BUT_CANCELLED` and `CONFIRMED_WITHOUT_CAPTURE` after a grace period,
//! `AMOUNT_MISMATCH` at once (`logic.rs` has the table). Each verdict goes to
//! `reconciliation.mismatches.v1` (Avro `ReconciliationMismatch`, `OPEN` then `RESOLVED` when it
//! stops holding, e.g. the void arrived), to `keel_reconciliation_mismatches_total{kind}`, and to
//! the process's [`ReconciliationView`] that `GET /finance/reconciliation` and the scrape-time
//! gauges `keel_reconciliation_open_mismatches{kind}` and `keel_cdc_lag_seconds{connector}`
//! read (`view.rs`). An order's entry is deleted `[reconciliation].retention_ms` after its last
//! change once nothing about it waits (an open mismatch stays until resolved), and older inputs
//! for a deleted entry are skipped as late (`logic.rs`, "Retention").
//!
//! - `logic.rs`: [`decide`], pure.
//! - `state.rs`: the stores.
//! - `topology.rs`: [`topology`], the CDC row types, [`Reconciler`].
//! - `view.rs`: [`ReconciliationView`], [`FinanceReport`], [`ReconciliationMetrics`].

pub mod logic;
pub mod state;
mod topology;
pub mod view;

#[cfg(test)]
mod tests;

use std::time::Duration;

use serde::Deserialize;

pub use logic::{
    DecisionFacts, Input, LedgerPayment, Mismatch, MismatchKind, Now, OrderRecon, OrderState,
    Output, PaymentRow, Rules, decide,
};
pub use topology::{Beat, LedgerTopics, ReconInput, Reconciler, ReconcilerSettings, topology};
pub use view::{
    ConnectorLag, FinanceReport, MismatchView, ReconciliationMetrics, ReconciliationView,
};

/// `[reconciliation]`: the ledger connector the role registers and the grace periods.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconciliationConfig {
    /// The Debezium connector's name; default `<streams.application_id>-ledger-cdc`.
    pub connector_name: Option<String>,
    /// Debezium's `topic.prefix`, after `[topics].prefix`: the topics are
    /// `<prefix><server_name>.public.payments` and `….public.<heartbeat_table>`.
    pub server_name: String,
    /// The replication slot and publication; default: the connector name with `_` for `-`.
    pub slot_name: Option<String>,
    pub publication_name: Option<String>,
    /// The table the connector's heartbeat query writes (created by the role if missing).
    pub heartbeat_table: String,
    /// How often the connector writes a heartbeat (ms): the lag's resolution on an idle ledger.
    pub heartbeat_interval_ms: u64,
    /// How long a cancelled order's payment may still hold money before it is a mismatch (ms).
    pub cancelled_grace_ms: u64,
    /// How long a confirmed order may go without a capture before it is a mismatch (ms).
    pub capture_grace_ms: u64,
    /// How often grace timers are checked (ms).
    pub check_interval_ms: u64,
    /// How long an order's entry is kept after its last change once nothing about it waits
    /// (ms; an open mismatch is kept until resolved). Inputs for a deleted entry that are older
    /// than this are skipped as late (`logic.rs`, "Retention"). 7 days by default.
    pub retention_ms: u64,
    /// How long `keel run` waits for the connector to run (ms).
    pub register_timeout_ms: u64,
}

impl Default for ReconciliationConfig {
    fn default() -> Self {
        Self {
            connector_name: None,
            server_name: "ledger".to_owned(),
            slot_name: None,
            publication_name: None,
            heartbeat_table: "keel_cdc_heartbeat".to_owned(),
            heartbeat_interval_ms: 10_000,
            cancelled_grace_ms: 300_000,
            capture_grace_ms: 300_000,
            check_interval_ms: 1_000,
            retention_ms: 7 * 24 * 3_600_000,
            register_timeout_ms: 60_000,
        }
    }
}

impl ReconciliationConfig {
    /// The reconciler's settings.
    pub fn settings(&self) -> ReconcilerSettings {
        let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        ReconcilerSettings {
            rules: Rules {
                cancelled_grace_ms: ms(self.cancelled_grace_ms),
                capture_grace_ms: ms(self.capture_grace_ms),
                recheck_ms: ms(self.check_interval_ms).max(1),
                retention_ms: ms(self.retention_ms),
            },
            check_interval: Duration::from_millis(self.check_interval_ms.max(1)),
        }
    }

    /// Every problem with these settings.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.check_interval_ms == 0 {
            out.push("reconciliation.check_interval_ms must be above 0".to_owned());
        }
        if self.retention_ms == 0 {
            out.push("reconciliation.retention_ms must be above 0".to_owned());
        }
        if self.heartbeat_interval_ms == 0 {
            out.push("reconciliation.heartbeat_interval_ms must be above 0".to_owned());
        }
        let ident = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        if !ident(&self.heartbeat_table) {
            out.push(format!(
                "reconciliation.heartbeat_table = {:?} must be lower-case letters, digits and _",
                self.heartbeat_table
            ));
        }
        for (key, v) in [
            ("slot_name", &self.slot_name),
            ("publication_name", &self.publication_name),
        ] {
            if let Some(v) = v
                && !ident(v)
            {
                out.push(format!(
                    "reconciliation.{key} = {v:?} must be lower-case letters, digits and _"
                ));
            }
        }
        out
    }
}
