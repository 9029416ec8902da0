//! The process-local view of the auditor's open violations, and its metrics.
//!
//! The auditor's tasks of this process publish their open violations into one [`AuditView`]
//! (reloaded from the task's store when it starts, so a restored task shows what its changelog
//! holds; updated on every change; dropped when the task closes). A process sees only the
//! partitions it owns; `keel audit` reads every partition's verdicts from the
//! `audit.violations.v1` topic instead.
//!
//! Metrics:
//! - `keel_invariant_violations_total{invariant}`: violations opened;
//! - `keel_invariant_violations_resolved_total{invariant}`: open violations that stopped holding;
//! - `keel_invariant_violations_open{invariant}`: open now in this process's partitions
//!   (computed when scraped);
//! - `keel_audit_oversells_allowed_total`: oversells reported as allowed by
//!   `[inventory].oversell = "allow"` (not violations).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use keel_avro::records::AuditInvariant;
use keel_topology::topology::TaskId;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

use super::logic::Violation;

type Tasks = BTreeMap<TaskId, BTreeMap<String, Vec<Violation>>>;

/// Shared between the auditor's tasks (writers) and the metrics (readers).
#[derive(Debug, Clone, Default)]
pub struct AuditView {
    inner: Arc<RwLock<Tasks>>,
}

impl AuditView {
    pub fn new() -> Self {
        Self::default()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Tasks> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tasks> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The task `task` started: its open violations are exactly `open` (subject → violations).
    pub fn load_task(&self, task: TaskId, open: BTreeMap<String, Vec<Violation>>) {
        self.write().insert(task, open);
    }

    /// The task closed.
    pub fn drop_task(&self, task: TaskId) {
        self.write().remove(&task);
    }

    /// The open violations of `subject` in `task` are now `open` (empty: none).
    pub fn set_open(&self, task: TaskId, subject: &str, open: Vec<Violation>) {
        let mut inner = self.write();
        let subjects = inner.entry(task).or_default();
        if open.is_empty() {
            subjects.remove(subject);
        } else {
            subjects.insert(subject.to_owned(), open);
        }
    }

    /// Open violations per invariant (every invariant present, zero when none).
    pub fn open_counts(&self) -> BTreeMap<AuditInvariant, i64> {
        let mut counts: BTreeMap<AuditInvariant, i64> =
            AuditInvariant::ALL.iter().map(|i| (*i, 0)).collect();
        for subjects in self.read().values() {
            for v in subjects.values().flatten() {
                *counts.entry(v.invariant).or_default() += 1;
            }
        }
        counts
    }

    /// Every open violation, oldest first.
    pub fn open(&self) -> Vec<Violation> {
        let mut all: Vec<Violation> = self
            .read()
            .values()
            .flat_map(|s| s.values().flatten().cloned())
            .collect();
        all.sort_by(|a, b| (a.opened_at, &a.subject_id).cmp(&(b.opened_at, &b.subject_id)));
        all
    }
}

/// The auditor's counters.
#[derive(Debug, Clone)]
pub struct AuditMetrics {
    pub opened: IntCounterVec,
    pub resolved: IntCounterVec,
    pub oversells_allowed: IntCounter,
    /// `keel_audit_retired_total`: order entries deleted after their retention.
    pub retired: IntCounter,
    /// `keel_audit_late_total`: inputs for retired orders, skipped.
    pub late: IntCounter,
}

struct OpenGauge {
    view: AuditView,
    open: IntGaugeVec,
}

impl Collector for OpenGauge {
    fn desc(&self) -> Vec<&Desc> {
        self.open.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        for (invariant, n) in self.view.open_counts() {
            self.open.with_label_values(&[invariant.code()]).set(n);
        }
        self.open.collect()
    }
}

impl AuditMetrics {
    /// Registers the counters and the view's scrape-time gauge in `registry`.
    pub fn register(registry: &Registry, view: &AuditView) -> Result<Self, prometheus::Error> {
        let opened = IntCounterVec::new(
            Opts::new(
                "invariant_violations_total",
                "Violations of the system's invariants opened by the auditor, by invariant",
            )
            .namespace("keel"),
            &["invariant"],
        )?;
        let resolved = IntCounterVec::new(
            Opts::new(
                "invariant_violations_resolved_total",
                "Open invariant violations that stopped holding, by invariant",
            )
            .namespace("keel"),
            &["invariant"],
        )?;
        let oversells_allowed = IntCounter::with_opts(
            Opts::new(
                "audit_oversells_allowed_total",
                "Sales that took a SKU's stock below zero under [inventory].oversell = \"allow\": \
                 reported, not violations",
            )
            .namespace("keel"),
        )?;
        let retired = IntCounter::with_opts(
            Opts::new(
                "audit_retired_total",
                "Order entries deleted [audit].retention_ms after their last change, with nothing \
                 suspect or open",
            )
            .namespace("keel"),
        )?;
        let late = IntCounter::with_opts(
            Opts::new(
                "audit_late_total",
                "Decisions and inventory events for an order without an entry, older than the \
                 retention (its entry was deleted): skipped, so they reopen nothing",
            )
            .namespace("keel"),
        )?;
        let open = IntGaugeVec::new(
            Opts::new(
                "invariant_violations_open",
                "Invariant violations open now in the partitions this process audits, by invariant",
            )
            .namespace("keel"),
            &["invariant"],
        )?;
        registry.register(Box::new(opened.clone()))?;
        registry.register(Box::new(resolved.clone()))?;
        registry.register(Box::new(oversells_allowed.clone()))?;
        registry.register(Box::new(retired.clone()))?;
        registry.register(Box::new(late.clone()))?;
        registry.register(Box::new(OpenGauge {
            view: view.clone(),
            open,
        }))?;
        for invariant in AuditInvariant::ALL {
            opened.with_label_values(&[invariant.code()]);
            resolved.with_label_values(&[invariant.code()]);
        }
        Ok(Self {
            opened,
            resolved,
            oversells_allowed,
            retired,
            late,
        })
    }

    /// Metrics in a registry of their own (tests).
    pub fn unregistered(view: &AuditView) -> Result<Self, prometheus::Error> {
        Self::register(&Registry::new(), view)
    }
}
