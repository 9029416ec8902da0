//! `keel lag`: consumer-group lag per partition, refreshed in place like `top`, or once
//! (`--once`), or as JSON for scripts (`--json`).
//!
//! Which groups ([`Selection`]): by default this configuration's ([`keel_groups`]: the stream
//! applications `<[streams].application_id>-<role>`, the plain consumers `<app>-order-sink`,
//! `<app>-cassandra-sink` and `[payment].group_id` (default `<app>-payment`)), the Kafka Connect
//! worker's group (protocol `connect`, the stack's `keel-connect`) and the groups of this
//! configuration's connectors (`connect-<app>-…`); `--group <name>` (repeatable) for those
//! groups only; `--all` for every group of the cluster (slow on a shared cluster with many
//! leftover groups).
//!
//! Lag is the partition's high watermark minus the group's committed offset. Keel's stream
//! threads and plain consumers commit the consumer's position, which moves past a transaction's
//! commit marker, so a caught-up group shows 0 on transactionally written topics too (as Kafka's
//! own tools do for Kafka Streams, which commits `position()` the same way).
//!
//! Cost: one group listing, one offset fetch per chosen group and one watermark fetch per
//! partition read, both run in parallel.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;

use crate::config::KeelConfig;

const TIMEOUT: Duration = Duration::from_secs(10);
/// Threads fetching offsets and watermarks at once.
const PARALLEL: usize = 8;

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

/// The groups `keel lag` reports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Selection {
    /// This configuration's groups and Connect's ([`keel_groups`]).
    #[default]
    Keel,
    /// Every group of the cluster.
    All,
    /// These groups only (whether or not they exist).
    Groups(Vec<String>),
}

/// The stream applications `keel run` starts (`StreamsSection::for_role`).
const STREAM_ROLES: [&str; 4] = ["saga", "inventory", "reconciliation", "audit"];

/// This configuration's consumer groups, as `keel run` names them (`src/run.rs`): the stream
/// applications `<app>-<role>`, the order sink `<app>-order-sink`, the Cassandra sink
/// `<app>-cassandra-sink` and the payment service's `[payment].group_id` (`<app>-payment` when
/// left at its default). Sorted.
pub fn keel_groups(config: &KeelConfig) -> Vec<String> {
    let app = &config.streams.application_id;
    let mut out: BTreeSet<String> = STREAM_ROLES
        .iter()
        .map(|role| format!("{app}-{role}"))
        .collect();
    out.insert(format!("{app}-order-sink"));
    out.insert(format!("{app}-cassandra-sink"));
    let payment = &config.payment.group_id;
    if *payment == keel_processors::payment::PaymentConfig::default().group_id {
        out.insert(format!("{app}-payment"));
    } else {
        out.insert(payment.clone());
    }
    out.into_iter().collect()
}

/// Whether a listed group (name, protocol type) is one [`Selection::Keel`] reports.
fn default_group(keel: &[String], app: &str, name: &str, protocol_type: &str) -> bool {
    keel.iter().any(|g| g == name)
        || protocol_type == "connect"
        || name.starts_with(&format!("connect-{app}-"))
}

fn client(config: &KeelConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka.bootstrap_servers);
    for (k, v) in &config.kafka.client {
        c.set(k, v);
    }
    c
}

/// The groups to report, sorted.
fn groups(
    config: &KeelConfig,
    consumer: &BaseConsumer,
    selection: &Selection,
) -> anyhow::Result<Vec<String>> {
    if let Selection::Groups(names) = selection {
        let set: BTreeSet<String> = names.iter().cloned().collect();
        return Ok(set.into_iter().collect());
    }
    let keel = keel_groups(config);
    let app = config.streams.application_id.as_str();
    let list = consumer.fetch_group_list(None, TIMEOUT)?;
    let mut names: Vec<String> = list
        .groups()
        .iter()
        .filter(|g| {
            *selection == Selection::All || default_group(&keel, app, g.name(), g.protocol_type())
        })
        .map(|g| g.name().to_owned())
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Runs `f` over `items` on up to [`PARALLEL`] threads; results in `items`' order.
fn parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if items.is_empty() {
        return Vec::new();
    }
    let chunk = items.len().div_ceil(PARALLEL);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| {
                let f = &f;
                scope.spawn(move || part.iter().map(f).collect::<Vec<R>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(results) => results,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

/// [`measure_groups`] of [`Selection::Keel`] (what the lag sampler exports).
pub fn measure(config: &KeelConfig) -> anyhow::Result<Vec<PartitionLag>> {
    measure_groups(config, &Selection::Keel)
}

/// Lag of every partition of the topics the selected groups have committed offsets on (a
/// partition without a commit yet counts from its log start). Errors: the broker unreachable
/// or refusing a request within 10 s.
pub fn measure_groups(
    config: &KeelConfig,
    selection: &Selection,
) -> anyhow::Result<Vec<PartitionLag>> {
    Ok(measure_selected(config, selection)?.1)
}

/// [`measure_groups`], with the groups chosen (sorted; a group with members but no commit yet
/// is among them and has no rows).
fn measure_selected(
    config: &KeelConfig,
    selection: &Selection,
) -> anyhow::Result<(Vec<String>, Vec<PartitionLag>)> {
    let probe: BaseConsumer = client(config).create()?;
    let metadata = probe.fetch_metadata(None, TIMEOUT)?;
    // This configuration's groups read Keel's topics (`[topics].prefix`) and their applications'
    // internal ones (`<application id>-…`); asking them about every topic of a shared cluster
    // (thousands) made one measurement cost seconds of CPU. Other groups may read any topic.
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
    let ours = keel_groups(config);
    let names = groups(config, &probe, selection)?;
    // One offset fetch per group, in parallel.
    let committed = parallel(
        &names,
        |group| -> anyhow::Result<Vec<(String, i32, Offset)>> {
            let consumer: BaseConsumer = client(config)
                .set("group.id", group)
                .set("enable.auto.commit", "false")
                .create()?;
            let asked = if ours.contains(group) { &keel } else { &all };
            let committed = consumer.committed_offsets(asked.clone(), TIMEOUT)?;
            // The topics the group reads: those it has committed on. A partition of such a topic
            // without a commit yet still has a backlog (records the group has never read).
            let elements = committed.elements();
            let read: BTreeSet<&str> = elements
                .iter()
                .filter(|e| matches!(e.offset(), Offset::Offset(_)))
                .map(|e| e.topic())
                .collect();
            Ok(elements
                .iter()
                .filter(|e| read.contains(e.topic()))
                .map(|e| (e.topic().to_owned(), e.partition(), e.offset()))
                .collect())
        },
    );
    let mut per_group = Vec::with_capacity(names.len());
    for (group, offsets) in names.iter().zip(committed) {
        per_group.push((group, offsets?));
    }
    // One watermark fetch per partition read, in parallel.
    let partitions: Vec<(String, i32)> = per_group
        .iter()
        .flat_map(|(_, offsets)| offsets.iter().map(|(t, p, _)| (t.clone(), *p)))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let fetched = parallel(&partitions, |(topic, partition)| {
        probe.fetch_watermarks(topic, *partition, TIMEOUT)
    });
    let mut watermarks: BTreeMap<(String, i32), (i64, i64)> = BTreeMap::new();
    for (tp, w) in partitions.into_iter().zip(fetched) {
        watermarks.insert(tp, w?);
    }
    let mut out = Vec::new();
    let chosen: Vec<String> = per_group.iter().map(|(g, _)| (*g).clone()).collect();
    for (group, offsets) in per_group {
        for (topic, partition, offset) in offsets {
            let Some(&(low, end)) = watermarks.get(&(topic.clone(), partition)) else {
                continue;
            };
            let committed = match offset {
                Offset::Offset(offset) => offset,
                _ => low,
            };
            out.push(PartitionLag {
                group: group.clone(),
                topic,
                partition,
                committed,
                end,
                lag: (end - committed).max(0),
            });
        }
    }
    Ok((chosen, out))
}

/// The table people read: one line per partition, and a total per group; a group of `groups`
/// without rows (members, no commit yet: e.g. a consumer still on its first records) is named
/// with "no committed offsets yet", as Kafka's own consumer-groups tool shows it with "-".
pub fn render(groups: &[String], rows: &[PartitionLag]) -> String {
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
    for group in groups {
        if !totals.contains_key(group.as_str()) {
            let _ = writeln!(out, "{group:<40} no committed offsets yet");
        }
    }
    for (group, total) in totals {
        let _ = writeln!(out, "{group:<40} total lag {total}");
    }
    if rows.is_empty() && groups.is_empty() {
        let _ = writeln!(out, "(no committed offsets for the chosen groups yet)");
    }
    out
}

/// Runs `keel lag` for `selection`.
pub fn run(
    config: &KeelConfig,
    selection: &Selection,
    once: bool,
    json: bool,
    interval: Duration,
) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout();
    loop {
        let (groups, rows) = measure_selected(config, selection)?;
        if json {
            writeln!(stdout, "{}", serde_json::to_string(&rows)?)?;
        } else {
            if !once {
                // Clear the screen and go home, as `top` does.
                write!(stdout, "\x1b[2J\x1b[H")?;
            }
            write!(stdout, "{}", render(&groups, &rows))?;
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
    fn the_default_list_is_this_configurations_groups_and_connects_only() {
        let keel = vec!["app-saga".to_owned(), "app-order-sink".to_owned()];
        let shown = |name: &str, protocol: &str| default_group(&keel, "app", name, protocol);
        assert!(shown("app-saga", "consumer"));
        assert!(shown("app-order-sink", "consumer"));
        assert!(
            shown("keel-connect", "connect"),
            "the Connect worker's group"
        );
        assert!(
            shown("connect-app-ledger-sink", "consumer"),
            "a connector's group"
        );
        assert!(!shown("app-scenario-x", "consumer"));
        assert!(!shown("keel_e2e_1234-saga", "consumer"));
        assert!(!shown("keel_bench_9-order-sink", "consumer"));
        assert!(!shown("connect-other-sink", "consumer"));
    }

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
        let groups = ["keel-saga".to_owned(), "keel-payment".to_owned()];
        let text = render(
            &groups,
            &[row("keel-saga", 0, 5, 9), row("keel-saga", 1, 7, 7)],
        );
        assert_eq!(text.lines().count(), 5, "{text}");
        assert!(
            text.contains("keel-saga") && text.contains("total lag 4"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("keel-payment") && l.ends_with("no committed offsets yet")),
            "a chosen group without commits is named: {text}"
        );
    }
}
