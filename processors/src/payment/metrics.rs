//! The payment service's Prometheus metrics.
//!
//! - `payment_attempt_latency_seconds{kind, outcome}` — histogram of one PSP attempt (retries
//!   included), from the first request to the final answer.
//! - `payment_attempts_total{kind, outcome}` — attempts by kind (`authorize`, `capture`, `void`,
//!   `refund`) and outcome (`succeeded`, `declined`, `pending`, `timeout`, `failed`).
//! - `payment_psp_calls_in_flight` — HTTP requests to the PSP in progress.
//! - `payment_commands_total{result}` — commands `applied`, `replayed`, `ignored`, `skipped`.

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

use super::{Error, Result};

/// Handles to the payment metrics. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PaymentMetrics {
    latency: HistogramVec,
    attempts: IntCounterVec,
    in_flight: IntGauge,
    commands: IntCounterVec,
}

impl PaymentMetrics {
    /// Create the metrics and register them into `registry` (an error if they already are).
    pub fn register(registry: &Registry) -> Result<Self> {
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "payment_attempt_latency_seconds",
                "Latency of one PSP attempt, retries included, by kind and outcome",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["kind", "outcome"],
        )
        .map_err(Error::Metrics)?;
        let attempts = IntCounterVec::new(
            Opts::new("payment_attempts_total", "PSP attempts by kind and outcome"),
            &["kind", "outcome"],
        )
        .map_err(Error::Metrics)?;
        let in_flight = IntGauge::new(
            "payment_psp_calls_in_flight",
            "HTTP requests to the PSP in progress",
        )
        .map_err(Error::Metrics)?;
        let commands = IntCounterVec::new(
            Opts::new("payment_commands_total", "Payment commands by result"),
            &["result"],
        )
        .map_err(Error::Metrics)?;
        for collector in [
            Box::new(latency.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(attempts.clone()),
            Box::new(in_flight.clone()),
            Box::new(commands.clone()),
        ] {
            registry.register(collector).map_err(Error::Metrics)?;
        }
        Ok(Self {
            latency,
            attempts,
            in_flight,
            commands,
        })
    }

    pub(crate) fn attempt(&self, kind: &str, outcome: &str, latency: Duration) {
        self.latency
            .with_label_values(&[kind, outcome])
            .observe(latency.as_secs_f64());
        self.attempts.with_label_values(&[kind, outcome]).inc();
    }

    pub(crate) fn command(&self, result: &str) {
        self.commands.with_label_values(&[result]).inc();
    }

    /// Counts one PSP request as in flight until the guard drops.
    pub(crate) fn psp_call(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }
}

pub(crate) struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
