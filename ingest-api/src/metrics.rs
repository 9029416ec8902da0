//! The API's Prometheus metrics, registered in the registry the caller gives (`/metrics` renders
//! that whole registry, so a process that hosts more than the API shows everything).

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

use crate::{Error, Result};

/// `keel_api_requests_total{route,method,status}`, `keel_api_request_duration_seconds{route}`,
/// `keel_api_orders_accepted_total`, `keel_api_cancels_accepted_total`,
/// `keel_api_idempotency_keys_purged_total{table}`.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub orders_accepted: IntCounter,
    pub cancels_accepted: IntCounter,
    /// Expired `Idempotency-Key` rows deleted by the purge (`idempotency::retention`), by
    /// table (`api_idempotency`, `api_payment_requests`; both series exist from the start).
    pub idempotency_keys_purged: IntCounterVec,
}

impl Metrics {
    /// Create and register in `registry`. Errors: [`Error::Metrics`] (e.g. registered twice).
    pub fn register(registry: &Registry) -> Result<Self> {
        let m = Self {
            requests: IntCounterVec::new(
                Opts::new(
                    "keel_api_requests_total",
                    "HTTP requests answered, by route template, method and status",
                ),
                &["route", "method", "status"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "keel_api_request_duration_seconds",
                    "Time to answer an HTTP request, by route template",
                ),
                &["route"],
            )?,
            orders_accepted: IntCounter::new(
                "keel_api_orders_accepted_total",
                "Orders accepted (202): a place-order command Kafka confirmed",
            )?,
            cancels_accepted: IntCounter::new(
                "keel_api_cancels_accepted_total",
                "Cancels accepted (202): a cancel command Kafka confirmed",
            )?,
            idempotency_keys_purged: IntCounterVec::new(
                Opts::new(
                    "keel_api_idempotency_keys_purged_total",
                    "Idempotency-Key rows deleted after [api].idempotency_retention_hours, by table",
                ),
                &["table"],
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.orders_accepted.clone()))?;
        registry.register(Box::new(m.cancels_accepted.clone()))?;
        registry.register(Box::new(m.idempotency_keys_purged.clone()))?;
        for table in crate::idempotency::retention::TABLES {
            m.idempotency_keys_purged.with_label_values(&[table]);
        }
        Ok(m)
    }
}

impl From<prometheus::Error> for Error {
    fn from(e: prometheus::Error) -> Self {
        Error::Metrics(e)
    }
}
