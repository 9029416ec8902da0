//! The payment service's Prometheus metrics.
//!
//! - `payment_attempt_latency_seconds{kind, outcome}` — histogram of one PSP attempt (retries
//!   included), from the first request to the final answer.
//! - `payment_attempts_total{kind, outcome}` — attempts by kind (`authorize`, `capture`, `void`,
//!   `refund`) and outcome (`succeeded`, `declined`, `pending`, `timeout`, `failed`).
//! - `payment_psp_calls_in_flight` — HTTP requests to the PSP in progress.
//! - `payment_commands_total{result}` — commands `applied`, `replayed`, `ignored`, `skipped`
//!   (bad commands, dead-lettered first: `crate::dead_letter`).
//! - `payment_failure_rate` — share (0..1) of the last [`FAILURE_WINDOW`] finished
//!   authorizations that did not succeed (`declined`, `timeout`, `failed`): a PSP call's answer,
//!   or for a `pending` answer the callback that settles it. A stale callback (the payment had
//!   moved past it, e.g. a decline for a captured payment) is no attempt and no failure.
//! - `payment_callbacks_total{outcome, stale}` — PSP callbacks applied to the ledger (each event
//!   once), `stale="true"` for those kept for audit that changed nothing.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

use super::{Error, Result};

/// Handles to the payment metrics. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PaymentMetrics {
    latency: HistogramVec,
    attempts: IntCounterVec,
    in_flight: IntGauge,
    commands: IntCounterVec,
    failure_rate: Gauge,
    callbacks: IntCounterVec,
    /// The last finished authorize attempts, `true` for a failure (at most [`FAILURE_WINDOW`]).
    recent: Arc<Mutex<VecDeque<bool>>>,
}

/// How many finished authorize attempts `payment_failure_rate` looks back over.
pub const FAILURE_WINDOW: usize = 100;

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
        let failure_rate = Gauge::new(
            "payment_failure_rate",
            "Share (0..1) of the last 100 finished authorize attempts that did not succeed",
        )
        .map_err(Error::Metrics)?;
        let callbacks = IntCounterVec::new(
            Opts::new(
                "payment_callbacks_total",
                "PSP callbacks by outcome; stale: kept for audit, changed nothing",
            ),
            &["outcome", "stale"],
        )
        .map_err(Error::Metrics)?;
        for collector in [
            Box::new(latency.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(attempts.clone()),
            Box::new(in_flight.clone()),
            Box::new(commands.clone()),
            Box::new(failure_rate.clone()),
            Box::new(callbacks.clone()),
        ] {
            registry.register(collector).map_err(Error::Metrics)?;
        }
        Ok(Self {
            latency,
            attempts,
            in_flight,
            commands,
            failure_rate,
            callbacks,
            recent: Arc::new(Mutex::new(VecDeque::with_capacity(FAILURE_WINDOW))),
        })
    }

    pub(crate) fn attempt(&self, kind: &str, outcome: &str, latency: Duration) {
        self.latency
            .with_label_values(&[kind, outcome])
            .observe(latency.as_secs_f64());
        self.attempts.with_label_values(&[kind, outcome]).inc();
        if kind == "authorize" {
            self.authorization_settled(outcome);
        }
    }

    /// A PSP callback was applied; `stale`: it changed nothing (kept for audit only).
    pub(crate) fn callback(&self, outcome: &str, stale: bool) {
        self.callbacks
            .with_label_values(&[outcome, if stale { "true" } else { "false" }])
            .inc();
    }

    /// An authorization finished with `outcome` (`pending` is not finished: ignored).
    pub(crate) fn authorization_settled(&self, outcome: &str) {
        let failed = match outcome {
            "succeeded" => false,
            "declined" | "timeout" | "failed" => true,
            _ => return,
        };
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if recent.len() == FAILURE_WINDOW {
            recent.pop_front();
        }
        recent.push_back(failed);
        let failures = recent.iter().filter(|f| **f).count();
        self.failure_rate.set(failures as f64 / recent.len() as f64);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failure_rate_covers_the_last_finished_authorizations_only() {
        let m = PaymentMetrics::register(&Registry::new()).expect("registers");
        let ms = Duration::from_millis(5);
        for outcome in ["succeeded", "succeeded", "succeeded", "declined"] {
            m.attempt("authorize", outcome, ms);
        }
        // Not finished, or not an authorization: not counted.
        m.attempt("authorize", "pending", ms);
        m.attempt("capture", "failed", ms);
        assert_eq!(m.failure_rate.get(), 0.25);
        m.attempt("authorize", "timeout", ms);
        assert_eq!(m.failure_rate.get(), 0.4);
        // The window slides: 100 successes later, the failures are out of it.
        for _ in 0..FAILURE_WINDOW {
            m.attempt("authorize", "succeeded", ms);
        }
        assert_eq!(m.failure_rate.get(), 0.0);
    }
}
