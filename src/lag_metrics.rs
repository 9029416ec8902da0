//! `keel_consumer_group_lag_records{group, topic, partition}`: the lag `keel lag` shows (Keel's
//! consumer groups and Kafka Connect's), sampled every [`INTERVAL`] by every process that serves
//! `/metrics` — on the API's address or on the admin listener, whichever its roles; started once
//! per process by [`crate::admin::spawn`] — so the lag of a consumer that is stopped (its own
//! process exports nothing any more) is still on a dashboard.
//!
//! Measured off the async runtime ([`crate::lag::measure`] blocks on the broker); a failed sample
//! keeps the previous values and is logged, the next one retries.

use std::time::Duration;

use prometheus::{IntGaugeVec, Opts, Registry};
use tokio_util::sync::CancellationToken;

use crate::config::KeelConfig;

/// How often the lag is sampled.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Registers the gauge in `registry` and samples it until `shutdown`.
pub async fn run(
    config: KeelConfig,
    registry: Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let gauge = IntGaugeVec::new(
        Opts::new(
            "keel_consumer_group_lag_records",
            "Committed-offset lag (high watermark minus committed offset) per consumer group, \
             topic and partition, for Keel's groups and Kafka Connect's",
        ),
        &["group", "topic", "partition"],
    )?;
    registry.register(Box::new(gauge.clone()))?;
    loop {
        let sample = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || crate::lag::measure(&config)).await?
        };
        match sample {
            Ok(rows) => {
                gauge.reset();
                for row in rows {
                    gauge
                        .with_label_values(&[&row.group, &row.topic, &row.partition.to_string()])
                        .set(row.lag);
                }
            }
            Err(e) => tracing::warn!(error = %e, "sampling consumer-group lag failed"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(INTERVAL) => {}
        }
    }
}
