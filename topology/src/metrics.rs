//! The runtime's Prometheus metrics, registered in a registry the caller owns (so one process
//! can expose Keel's metrics next to its own on one `/metrics`).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

use crate::error::{Error, Result};

/// Every metric of one application.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Records read, by topic.
    pub records_in: IntCounterVec,
    /// Records each processor (or sink) was handed, by node.
    pub processor_in: IntCounterVec,
    /// Records each processor forwarded, by node.
    pub processor_out: IntCounterVec,
    /// Records written to output and repartition topics, by topic.
    pub records_out: IntCounterVec,
    /// Time to process one input record through its task, in seconds.
    pub process_latency: Histogram,
    /// Commits (transactions committed, or offset commits under at-least-once).
    pub commits: IntCounter,
    /// Time to commit, in seconds.
    pub commit_latency: Histogram,
    /// Transactions aborted, by reason.
    pub aborts: IntCounterVec,
    /// Records sent to the dead-letter topic, by source topic.
    pub dead_letters: IntCounterVec,
    /// Changelog records restored, by store.
    pub restored: IntCounterVec,
    /// Changelog records left to restore, by store and partition.
    pub restore_remaining: IntGaugeVec,
    /// Approximate keys per store and partition.
    pub store_keys: IntGaugeVec,
    /// Consumer lag per owned input partition: the last stable offset (the high watermark
    /// under at-least-once) minus the committed position (the log start when nothing is
    /// committed yet), from librdkafka's statistics.
    pub consumer_lag: IntGaugeVec,
    /// Time records spent between the producer and the processor, in seconds (timestamp to
    /// processing), by topic.
    pub end_to_end: HistogramVec,
}

fn map(e: prometheus::Error) -> Error {
    Error::Config(vec![format!("cannot register metrics: {e}")])
}

impl Metrics {
    /// Creates the metrics with an `application` label and registers them in `registry`.
    pub fn register(registry: &Registry, application_id: &str) -> Result<Self> {
        let opts = |name: &str, help: &str| {
            Opts::new(name, help)
                .namespace("keel")
                .const_label("application", application_id)
        };
        let hist = |name: &str, help: &str| {
            HistogramOpts::new(name, help)
                .namespace("keel")
                .const_label("application", application_id)
                .buckets(vec![
                    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                    0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ])
        };
        let m = Self {
            records_in: IntCounterVec::new(opts("records_in_total", "Records read"), &["topic"])
                .map_err(map)?,
            processor_in: IntCounterVec::new(
                opts(
                    "processor_records_in_total",
                    "Records handed to a processor or sink",
                ),
                &["processor"],
            )
            .map_err(map)?,
            processor_out: IntCounterVec::new(
                opts(
                    "processor_records_out_total",
                    "Records a processor forwarded",
                ),
                &["processor"],
            )
            .map_err(map)?,
            records_out: IntCounterVec::new(
                opts("records_out_total", "Records written"),
                &["topic"],
            )
            .map_err(map)?,
            process_latency: Histogram::with_opts(hist(
                "process_seconds",
                "Time to process one record",
            ))
            .map_err(map)?,
            commits: IntCounter::with_opts(opts("commits_total", "Commits")).map_err(map)?,
            commit_latency: Histogram::with_opts(hist("commit_seconds", "Time to commit"))
                .map_err(map)?,
            aborts: IntCounterVec::new(opts("aborts_total", "Transactions aborted"), &["reason"])
                .map_err(map)?,
            dead_letters: IntCounterVec::new(
                opts("dead_letters_total", "Records dead-lettered"),
                &["topic"],
            )
            .map_err(map)?,
            restored: IntCounterVec::new(
                opts("restored_records_total", "Changelog records restored"),
                &["store"],
            )
            .map_err(map)?,
            restore_remaining: IntGaugeVec::new(
                opts(
                    "restore_remaining_records",
                    "Changelog records left to restore",
                ),
                &["store", "partition"],
            )
            .map_err(map)?,
            store_keys: IntGaugeVec::new(
                opts("store_keys", "Approximate keys per store"),
                &["store", "partition"],
            )
            .map_err(map)?,
            consumer_lag: IntGaugeVec::new(
                opts(
                    "consumer_lag_records",
                    "Last stable offset (high watermark under at-least-once) minus the committed position, or the log start when nothing is committed",
                ),
                &["topic", "partition"],
            )
            .map_err(map)?,
            end_to_end: HistogramVec::new(
                hist("record_age_seconds", "Record timestamp to processing"),
                &["topic"],
            )
            .map_err(map)?,
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.records_in.clone()),
            Box::new(m.processor_in.clone()),
            Box::new(m.processor_out.clone()),
            Box::new(m.records_out.clone()),
            Box::new(m.process_latency.clone()),
            Box::new(m.commits.clone()),
            Box::new(m.commit_latency.clone()),
            Box::new(m.aborts.clone()),
            Box::new(m.dead_letters.clone()),
            Box::new(m.restored.clone()),
            Box::new(m.restore_remaining.clone()),
            Box::new(m.store_keys.clone()),
            Box::new(m.consumer_lag.clone()),
            Box::new(m.end_to_end.clone()),
        ];
        for collector in collectors {
            registry.register(collector).map_err(map)?;
        }
        Ok(m)
    }

    /// Metrics in a registry of their own (tests, the driver).
    pub fn unregistered(application_id: &str) -> Result<Self> {
        Self::register(&Registry::new(), application_id)
    }
}

/// RocksDB's memory across every store of one application, read from the state environment
/// whenever the registry is gathered (so it is current, not a sample):
/// `keel_state_memory_bytes{kind}` with `kind` = `block_cache_usage` (block cache and the
/// memtables charged to it), `block_cache_pinned`, `block_cache_capacity`
/// (`state.block_cache_bytes`), `write_buffer_usage` (memtables), `write_buffer_capacity`
/// (`state.write_buffer_bytes`). Bytes.
pub(crate) struct StateMemory {
    env: keel_state::StoreEnv,
    gauges: IntGaugeVec,
}

impl std::fmt::Debug for StateMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMemory").finish_non_exhaustive()
    }
}

impl StateMemory {
    /// Registers the collector for `env` in `registry`.
    pub(crate) fn register(
        registry: &Registry,
        application_id: &str,
        env: keel_state::StoreEnv,
    ) -> Result<()> {
        let gauges = IntGaugeVec::new(
            Opts::new(
                "state_memory_bytes",
                "RocksDB memory of the application's stores, by kind (block cache usage includes the memtables)",
            )
            .namespace("keel")
            .const_label("application", application_id),
            &["kind"],
        )
        .map_err(map)?;
        registry
            .register(Box::new(StateMemory { env, gauges }))
            .map_err(map)
    }
}

impl prometheus::core::Collector for StateMemory {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.gauges.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let m = self.env.memory_usage();
        let as_i64 = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        for (kind, value) in [
            ("block_cache_usage", m.block_cache_usage),
            ("block_cache_pinned", m.block_cache_pinned),
            ("block_cache_capacity", m.block_cache_capacity),
            ("write_buffer_usage", m.write_buffer_usage),
            ("write_buffer_capacity", m.write_buffer_capacity),
        ] {
            self.gauges.with_label_values(&[kind]).set(as_i64(value));
        }
        self.gauges.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_memory_is_read_when_gathered() {
        let dir = std::env::temp_dir().join(format!("keel-metrics-{}", std::process::id()));
        let mut config = keel_state::StateConfig::with_dir(&dir);
        config.block_cache_bytes = 8 << 20;
        config.write_buffer_bytes = 4 << 20;
        config.memtable_bytes = 1 << 20;
        let env = keel_state::StoreEnv::new(config, "mem").expect("env");
        let registry = Registry::new();
        StateMemory::register(&registry, "mem", env).expect("registered");
        let kinds: std::collections::BTreeMap<String, i64> = registry
            .gather()
            .iter()
            .filter(|f| f.name() == "keel_state_memory_bytes")
            .flat_map(|f| f.get_metric().iter())
            .map(|m| {
                let kind = m
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "kind")
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default();
                (kind, m.get_gauge().value() as i64)
            })
            .collect();
        assert_eq!(kinds.get("block_cache_capacity"), Some(&(8 << 20)));
        assert_eq!(kinds.get("write_buffer_capacity"), Some(&(4 << 20)));
        assert!(kinds.contains_key("block_cache_usage"), "{kinds:?}");
        assert!(kinds.contains_key("write_buffer_usage"), "{kinds:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
