//! `keel lag`: consumer-group lag per partition for Keel's applications (every group whose name
//! starts with `[streams].application_id`, e.g. `keel-saga`, `keel-payment`) and the Kafka
//! Connect workers' groups (`connect-*`), refreshed in place like `top`, or once (`--once`),
//! or as JSON for scripts (`--json`).
//!
//! Lag is the partition's high watermark minus the group's committed offset. Keel's stream
//! threads commit the consumer's position, which moves past a transaction's commit marker, so a
//! caught-up group shows 0 on transactionally written topics too (as Kafka's own tools do for
//! Kafka Streams, which commits `position()` the same way).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;

use crate::config::KeelConfig;

const TIMEOUT: Duration = Duration::from_secs(10);

/// One partition of one group.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PartitionLag {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    /// The group's committed offset (the next record it will read); the partition's log start
    /// when the group has committed on other partitions of the topic but not on this one yet
    /// (it will read from there, as the stream runtime counts it).
    pub committed: i64,
    /// The partition's high watermark.
    pub end: i64,
    /// `end - committed`, never negative.
    pub lag: i64,
}

fn client(config: &KeelConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka.bootstrap_servers);
    for (k, v) in &config.kafka.client {
        c.set(k, v);
    }
    c
}

/// The groups to report: Keel's (by prefix) and Kafka Connect's.
fn groups(config: &KeelConfig, consumer: &BaseConsumer) -> anyhow::Result<Vec<String>> {
    let prefix = &config.streams.application_id;
    let mut names: Vec<String> = consumer
        .fetch_group_list(None, TIMEOUT)?
        .groups()
        .iter()
        .map(|g| g.name().to_owned())
        .filter(|n| n.starts_with(prefix.as_str()) || n.starts_with("connect-"))
        .collect();
    names.sort();
    Ok(names)
}

/// Lag of every partition of the topics `groups` have committed offsets on (a partition without
/// a commit yet counts from its log start).
pub fn measure(config: &KeelConfig) -> anyhow::Result<Vec<PartitionLag>> {
    let probe: BaseConsumer = client(config).create()?;
    let metadata = probe.fetch_metadata(None, TIMEOUT)?;
    // Keel's groups read Keel's topics (`[topics].prefix`) and their applications' internal
    // ones (`<application id>-…`); asking them about every topic of a shared cluster (thousands)
    // made one measurement cost seconds of CPU. Connect's groups may read any topic.
    let keel_topic = |name: &str| {
        name.starts_with(config.topics.prefix.as_str())
            || name.starts_with(config.streams.application_id.as_str())
    };
    let mut all = TopicPartitionList::new();
    let mut keel = TopicPartitionList::new();
    for t in metadata
        .topics()
        .iter()
        .filter(|t| !t.name().starts_with("__"))
    {
        for p in t.partitions() {
            all.add_partition(t.name(), p.id());
            if keel_topic(t.name()) {
                keel.add_partition(t.name(), p.id());
            }
        }
    }
    let mut watermarks: BTreeMap<(String, i32), (i64, i64)> = BTreeMap::new();
    let mut out = Vec::new();
    for group in groups(config, &probe)? {
        let consumer: BaseConsumer = client(config)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()?;
        let asked = if group.starts_with("connect-") {
            &all
        } else {
            &keel
        };
        let committed = consumer.committed_offsets(asked.clone(), TIMEOUT)?;
        // The topics the group reads: those it has committed on. A partition of such a topic
        // without a commit yet still has a backlog (records the group has never read).
        let read: std::collections::BTreeSet<String> = committed
            .elements()
            .iter()
            .filter(|e| matches!(e.offset(), Offset::Offset(_)))
            .map(|e| e.topic().to_owned())
            .collect();
        for e in committed.elements() {
            if !read.contains(e.topic()) {
                continue;
            }
            let key = (e.topic().to_owned(), e.partition());
            let (low, end) = match watermarks.get(&key) {
                Some(w) => *w,
                None => {
                    let w = probe.fetch_watermarks(e.topic(), e.partition(), TIMEOUT)?;
                    watermarks.insert(key, w);
                    w
                }
            };
            let offset = match e.offset() {
                Offset::Offset(offset) => offset,
                _ => low,
            };
            out.push(PartitionLag {
                group: group.clone(),
                topic: e.topic().to_owned(),
                partition: e.partition(),
                committed: offset,
                end,
                lag: (end - offset).max(0),
            });
        }
    }
    Ok(out)
}

/// The table people read: one line per partition, and a total per group.
pub fn render(rows: &[PartitionLag]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<40} {:<44} {:>4} {:>10} {:>10} {:>8}",
        "GROUP", "TOPIC", "PART", "COMMITTED", "END", "LAG"
    );
    let mut totals: BTreeMap<&str, i64> = BTreeMap::new();
    for r in rows {
        *totals.entry(&r.group).or_default() += r.lag;
        let _ = writeln!(
            out,
            "{:<40} {:<44} {:>4} {:>10} {:>10} {:>8}",
            r.group, r.topic, r.partition, r.committed, r.end, r.lag
        );
    }
    for (group, total) in totals {
        let _ = writeln!(out, "{group:<40} total lag {total}");
    }
    if rows.is_empty() {
        let _ = writeln!(
            out,
            "(no committed offsets for Keel's or Connect's groups yet)"
        );
    }
    out
}

/// Runs `keel lag`.
pub fn run(config: &KeelConfig, once: bool, json: bool, interval: Duration) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout();
    loop {
        let rows = measure(config)?;
        if json {
            writeln!(stdout, "{}", serde_json::to_string(&rows)?)?;
        } else {
            if !once {
                // Clear the screen and go home, as `top` does.
                write!(stdout, "\x1b[2J\x1b[H")?;
            }
            write!(stdout, "{}", render(&rows))?;
        }
        stdout.flush()?;
        if once {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_line_per_partition_and_a_total_per_group() {
        let row = |group: &str, partition, committed, end| PartitionLag {
            group: group.into(),
            topic: "orders.commands.v1".into(),
            partition,
            committed,
            end,
            lag: end - committed,
        };
        let text = render(&[row("keel-saga", 0, 5, 9), row("keel-saga", 1, 7, 7)]);
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(
            text.contains("keel-saga") && text.contains("total lag 4"),
            "{text}"
        );
    }
}
