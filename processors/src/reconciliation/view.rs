//! The process-local view of reconciliation that the finance endpoint and `/metrics` read.
//!
//! The reconciliation tasks of this process publish into one [`ReconciliationView`]: each
//! task's open mismatches (reloaded from its store when the task starts, so a restored task
//! shows what its changelog holds; updated on every change; dropped when the task closes
//! cleanly) and, per connector, the newest CDC source commit time seen (changes and heartbeats)
//! and when it was seen. It is written as records are processed, so it can show the effect of a
//! record whose transaction is then aborted — which is re-processed to the same verdict.
//! A process sees only the partitions it owns (listed in [`FinanceReport::partitions`]).
//!
//! Metrics (computed when scraped, so they move while nothing arrives):
//! - `keel_cdc_lag_seconds{connector}`: now − the newest source commit time seen;
//! - `keel_reconciliation_open_mismatches{kind}`: open mismatches in this process's partitions;
//! - `keel_reconciliation_mismatches_total{kind}` ([`ReconciliationMetrics`]): opened.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::Serialize;
use utoipa::ToSchema;

use super::logic::{Mismatch, MismatchKind};

/// What one connector was last seen saying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// The newest source commit time seen (ms since the epoch).
    pub source_ts_ms: i64,
    /// When it was seen (wall clock, ms).
    pub seen_at_ms: i64,
}

#[derive(Debug, Default)]
struct Inner {
    /// partition → order id → open mismatches.
    partitions: BTreeMap<i32, BTreeMap<String, Vec<Mismatch>>>,
    connectors: BTreeMap<String, Seen>,
}

/// Shared between the reconciliation tasks (writers) and the API and metrics (readers).
#[derive(Debug, Clone, Default)]
pub struct ReconciliationView {
    inner: Arc<RwLock<Inner>>,
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

impl ReconciliationView {
    pub fn new() -> Self {
        Self::default()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A task of `partition` started: its open mismatches are exactly `orders`.
    pub fn load_partition(&self, partition: i32, orders: BTreeMap<String, Vec<Mismatch>>) {
        self.write().partitions.insert(partition, orders);
    }

    /// The task of `partition` closed.
    pub fn drop_partition(&self, partition: i32) {
        self.write().partitions.remove(&partition);
    }

    /// The open mismatches of `order_id` are now `open` (empty: none).
    pub fn set_open(&self, partition: i32, order_id: &str, open: Vec<Mismatch>) {
        let mut inner = self.write();
        let orders = inner.partitions.entry(partition).or_default();
        if open.is_empty() {
            orders.remove(order_id);
        } else {
            orders.insert(order_id.to_owned(), open);
        }
    }

    /// `connector` has been seen up to source time `source_ts_ms` at `seen_at_ms`; an older
    /// source time (a re-delivered change) does not move it back.
    pub fn observe(&self, connector: &str, source_ts_ms: i64, seen_at_ms: i64) {
        let mut inner = self.write();
        let seen = inner
            .connectors
            .entry(connector.to_owned())
            .or_insert(Seen {
                source_ts_ms,
                seen_at_ms,
            });
        if source_ts_ms >= seen.source_ts_ms {
            *seen = Seen {
                source_ts_ms,
                seen_at_ms,
            };
        }
    }

    /// What `connector` was last seen saying.
    pub fn seen(&self, connector: &str) -> Option<Seen> {
        self.read().connectors.get(connector).copied()
    }

    /// Open mismatches per kind.
    pub fn open_counts(&self) -> BTreeMap<MismatchKind, i64> {
        let mut counts: BTreeMap<MismatchKind, i64> =
            MismatchKind::ALL.iter().map(|k| (*k, 0)).collect();
        for orders in self.read().partitions.values() {
            for m in orders.values().flatten() {
                *counts.entry(m.kind).or_default() += 1;
            }
        }
        counts
    }

    /// The finance report at wall-clock time `now_ms`.
    pub fn report(&self, now_ms: i64) -> FinanceReport {
        let inner = self.read();
        let connectors: Vec<ConnectorLag> = inner
            .connectors
            .iter()
            .map(|(name, seen)| ConnectorLag {
                connector: name.clone(),
                source_time: rfc3339(seen.source_ts_ms),
                seen_at: rfc3339(seen.seen_at_ms),
                lag_seconds: lag_seconds(now_ms, seen.source_ts_ms),
            })
            .collect();
        let as_of_ms = inner.connectors.values().map(|s| s.source_ts_ms).min();
        let mut open: Vec<MismatchView> = inner
            .partitions
            .values()
            .flat_map(|orders| orders.values().flatten())
            .map(MismatchView::from)
            .collect();
        open.sort_by(|a, b| (&a.opened_at, &a.order_id).cmp(&(&b.opened_at, &b.order_id)));
        FinanceReport {
            as_of: as_of_ms.map(rfc3339),
            as_of_lag_seconds: as_of_ms.map(|ms| lag_seconds(now_ms, ms)),
            generated_at: rfc3339(now_ms),
            partitions: inner.partitions.keys().copied().collect(),
            connectors,
            open_mismatches: open,
        }
    }
}

fn lag_seconds(now_ms: i64, source_ts_ms: i64) -> f64 {
    // ms → s; precision beyond f64's 53 bits is irrelevant for a lag.
    #[allow(clippy::cast_precision_loss)]
    let lag = (now_ms.saturating_sub(source_ts_ms)).max(0) as f64 / 1000.0;
    lag
}

/// `GET /finance/reconciliation`: open mismatches and how fresh the ledger data is.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FinanceReport {
    /// The ledger is known up to this source commit time (RFC 3339; the oldest of the
    /// connectors' newest change or heartbeat): mismatches that depend on later ledger
    /// changes cannot be shown yet. `null` until the first change or heartbeat was seen.
    pub as_of: Option<String>,
    /// Seconds between `asOf` and `generatedAt`.
    pub as_of_lag_seconds: Option<f64>,
    /// When this answer was made (RFC 3339).
    pub generated_at: String,
    /// The partitions of the reconciliation application this process owns (mismatches of
    /// other partitions are served by the processes that own them).
    pub partitions: Vec<i32>,
    pub connectors: Vec<ConnectorLag>,
    pub open_mismatches: Vec<MismatchView>,
}

/// One CDC connector's lag.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorLag {
    pub connector: String,
    /// The newest source commit time seen (RFC 3339).
    pub source_time: String,
    /// When it was seen (RFC 3339).
    pub seen_at: String,
    /// Now minus `sourceTime`, in seconds (what `keel_cdc_lag_seconds` shows).
    pub lag_seconds: f64,
}

/// One open mismatch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MismatchView {
    pub order_id: String,
    pub kind: MismatchKind,
    /// When it was opened (RFC 3339).
    pub opened_at: String,
    /// When the disagreement was first seen (RFC 3339).
    pub since: String,
    pub detail: String,
    pub payment_id: Option<String>,
    pub order_status: Option<String>,
    pub payment_status: Option<String>,
    /// Minor units of `currency`.
    pub order_total_minor: Option<i64>,
    /// Minor units.
    pub captured_minor: Option<i64>,
    pub currency: Option<String>,
}

impl From<&Mismatch> for MismatchView {
    fn from(m: &Mismatch) -> Self {
        Self {
            order_id: m.order_id.clone(),
            kind: m.kind,
            opened_at: rfc3339(m.opened_at),
            since: rfc3339(m.since),
            detail: m.detail.clone(),
            payment_id: m.payment_id.clone(),
            order_status: m.order_status.clone(),
            payment_status: m.payment_status.clone(),
            order_total_minor: m.order_total_minor,
            captured_minor: m.captured_minor,
            currency: m.currency.clone(),
        }
    }
}

/// `keel_reconciliation_mismatches_total{kind}`: mismatches opened.
#[derive(Debug, Clone)]
pub struct ReconciliationMetrics {
    pub opened: IntCounterVec,
    pub resolved: IntCounterVec,
    pub duplicates: prometheus::IntCounter,
    /// `keel_reconciliation_retired_total`: entries deleted after their retention.
    pub retired: prometheus::IntCounter,
    /// `keel_reconciliation_late_total`: inputs for retired orders, skipped.
    pub late: prometheus::IntCounter,
}

/// Scrape-time gauges over a [`ReconciliationView`].
struct ViewCollector {
    view: ReconciliationView,
    lag: GaugeVec,
    open: IntGaugeVec,
}

impl Collector for ViewCollector {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.lag.desc();
        d.extend(self.open.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = chrono::Utc::now().timestamp_millis();
        self.lag.reset();
        for (name, seen) in &self.view.read().connectors {
            self.lag
                .with_label_values(&[name.as_str()])
                .set(lag_seconds(now, seen.source_ts_ms));
        }
        for (kind, n) in self.view.open_counts() {
            self.open.with_label_values(&[kind.code()]).set(n);
        }
        let mut out = self.lag.collect();
        out.extend(self.open.collect());
        out
    }
}

impl ReconciliationMetrics {
    /// Registers the counters and the view's scrape-time gauges in `registry`.
    pub fn register(
        registry: &Registry,
        view: &ReconciliationView,
    ) -> Result<Self, prometheus::Error> {
        let opened = IntCounterVec::new(
            Opts::new(
                "reconciliation_mismatches_total",
                "Mismatches between the saga's decisions and the payment ledger opened, by kind",
            )
            .namespace("keel"),
            &["kind"],
        )?;
        let resolved = IntCounterVec::new(
            Opts::new(
                "reconciliation_resolved_total",
                "Open mismatches that stopped holding (e.g. the void arrived), by kind",
            )
            .namespace("keel"),
            &["kind"],
        )?;
        let duplicates = prometheus::IntCounter::with_opts(
            Opts::new(
                "reconciliation_cdc_duplicates_total",
                "CDC changes at or before the last applied log position of their key, skipped",
            )
            .namespace("keel"),
        )?;
        let retired = prometheus::IntCounter::with_opts(
            Opts::new(
                "reconciliation_retired_total",
                "Order entries deleted [reconciliation].retention_ms after their last change, with \
                 nothing suspect or open",
            )
            .namespace("keel"),
        )?;
        let late = prometheus::IntCounter::with_opts(
            Opts::new(
                "reconciliation_late_total",
                "Decisions and ledger changes for an order without an entry, older than the \
                 retention (its entry was deleted): skipped, so they reopen nothing",
            )
            .namespace("keel"),
        )?;
        let lag = GaugeVec::new(
            Opts::new(
                "cdc_lag_seconds",
                "Now minus the source commit time of the newest change or heartbeat seen from \
                 the connector, in seconds. Heartbeats (heartbeat.action.query, written into the \
                 captured database) keep it near the heartbeat interval while the source is idle \
                 and the connector is caught up; it keeps rising while the connector is paused, \
                 failed or behind, whether or not the source changes. Absent until the first \
                 change or heartbeat is seen by this process.",
            )
            .namespace("keel"),
            &["connector"],
        )?;
        let open = IntGaugeVec::new(
            Opts::new(
                "reconciliation_open_mismatches",
                "Mismatches open now in the partitions this process reconciles, by kind",
            )
            .namespace("keel"),
            &["kind"],
        )?;
        registry.register(Box::new(opened.clone()))?;
        registry.register(Box::new(resolved.clone()))?;
        registry.register(Box::new(duplicates.clone()))?;
        registry.register(Box::new(retired.clone()))?;
        registry.register(Box::new(late.clone()))?;
        registry.register(Box::new(ViewCollector {
            view: view.clone(),
            lag,
            open,
        }))?;
        for kind in MismatchKind::ALL {
            opened.with_label_values(&[kind.code()]);
            resolved.with_label_values(&[kind.code()]);
        }
        Ok(Self {
            opened,
            resolved,
            duplicates,
            retired,
            late,
        })
    }

    /// Metrics in a registry of their own (tests).
    pub fn unregistered(view: &ReconciliationView) -> Result<Self, prometheus::Error> {
        Self::register(&Registry::new(), view)
    }
}
