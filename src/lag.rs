//! `keel lag`: consumer-group lag per partition, refreshed in place like `top`, or once
//! (`--once`), or as JSON for scripts (`--json`).
//!
//! Which groups ([`Selection`]): by default this configuration's ([`keel_groups`]: the stream
//! applications `<[streams].application_id>-<role>`, the plain consumers `<app>-order-sink`,
//! `<app>-cassandra-sink` and `[payment].group_id` (default `<app>-payment`)), the Kafka Connect
//! worker's group (protocol `connect`, the stack's `keel-connect`) and the groups of this
//! configuration's connectors (`connect-<app>-…`); `--group <name>` (repeatable) for those
//! groups only; `--all` for every group of the cluster (~45 s on a shared cluster with ~1,500
//! leftover groups).
//!
//! Lag is the partition's high watermark minus the group's committed offset. Keel's stream
//! threads and plain consumers commit the consumer's position, which moves past a transaction's
//! commit marker, so a caught-up group shows 0 on transactionally written topics too (as Kafka's
//! own tools do for Kafka Streams, which commits `position()` the same way).
//!
//! Cost: one metadata fetch, one group listing, per chosen group offset fetches of at most
//! `plan::CHUNK` partitions about only the topics it reads (`plan::requests`: this
//! configuration's groups its topics and their members' assignments, a Connect worker group
//! nothing, another group its members' topics, or every topic when it has none), and one
//! watermark fetch per partition read; groups and watermarks in parallel. Asking every group
//! about every partition of a shared cluster (15,397 on the dev broker) cost ~5 s of CPU per
//! sample (librdkafka matches the answer to the request quadratically); now ~0.03 s.
//! `--all` still asks a group without members about every partition (rdkafka 0.39 has no
//! group-wide offset fetch, `ListConsumerGroupOffsets`), in chunks: linear, not quadratic.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::groups::GroupInfo;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;

use crate::config::KeelConfig;

mod plan;

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

impl Selection {
    /// An error naming `--group` for an empty group name (Kafka has no group ``; librdkafka
    /// would refuse to make the client with "consumer queue not available"), before any client
    /// is made.
    pub fn check(&self) -> anyhow::Result<()> {
        if let Self::Groups(groups) = self
            && groups.iter().any(String::is_empty)
        {
            anyhow::bail!(
                "--group must not be empty: a consumer group id has at least one character"
            );
        }
        Ok(())
    }
}

/// The stream applications `keel run` starts (`KeelConfig::streams_for`).
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
    out.extend(config.plain_consumer_group_ids());
    out.into_iter().collect()
}

/// Whether a listed group (name, protocol type) is one [`Selection::Keel`] reports.
fn default_group(keel: &[String], app: &str, name: &str, protocol_type: &str) -> bool {
    plan::kind(keel, app, name, protocol_type) != plan::Kind::Other
}

/// Whether `topic` is one this configuration's groups may read: Keel's topics with
/// `[topics].prefix`, the CDC topics of its carts, outbox and ledger connectors
/// (`<prefix><server_name>.…`), its applications' internal topics (`<application id>-…`) and,
/// with a non-empty prefix, anything under it. Not, with the empty production prefix, the
/// other runs' topics of a shared cluster (`keel_e2e_….orders.commands.v1`).
fn keel_topic(config: &KeelConfig) -> impl Fn(&str) -> bool + Sync + use<> {
    let names = config.topics.names();
    let prefix = config.topics.prefix.clone();
    let cdc: Vec<String> = [
        &config.carts.server_name,
        &config.connectors.server_name,
        &config.reconciliation.server_name,
    ]
    .iter()
    .map(|server| format!("{prefix}{server}."))
    .collect();
    let internal = format!("{}-", config.streams.application_id);
    move |topic: &str| {
        names.base(topic).is_some()
            || cdc.iter().any(|p| topic.starts_with(p.as_str()))
            || topic.starts_with(internal.as_str())
            || (!prefix.is_empty() && topic.starts_with(prefix.as_str()))
    }
}

fn client(config: &KeelConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka.bootstrap_servers);
    for (k, v) in &config.kafka.client {
        c.set(k, v);
    }
    c
}

/// A group to report.
#[derive(Debug)]
struct Chosen {
    name: String,
    kind: plan::Kind,
    /// The topics its members are assigned (consumer protocol; empty without members).
    assigned: BTreeSet<String>,
    /// Named with `--group` but unknown to the broker (not listed, or `Dead`: no members, no
    /// committed offsets), most likely a typo.
    unknown: bool,
}

/// The topics a listed group's members are assigned.
fn assigned(group: &GroupInfo) -> BTreeSet<String> {
    if group.protocol_type() != "consumer" {
        return BTreeSet::new();
    }
    group
        .members()
        .iter()
        .filter_map(|m| m.assignment())
        .filter_map(plan::assigned_topics)
        .flatten()
        .collect()
}

/// The groups to report, sorted.
fn groups(
    config: &KeelConfig,
    consumer: &BaseConsumer,
    selection: &Selection,
) -> anyhow::Result<Vec<Chosen>> {
    let keel = keel_groups(config);
    let app = config.streams.application_id.as_str();
    let mut out: BTreeMap<String, Chosen> = BTreeMap::new();
    if let Selection::Groups(names) = selection {
        for name in names {
            // Described one by one (not the whole cluster's listing); a group the broker cannot
            // describe is still asked, as a group without members.
            // librdkafka lists the group first (ListGroups, which has every group with
            // members or committed offsets) and describes it only when listed: absent from
            // an answer, or `Dead`, the broker does not know it.
            let described = match consumer.fetch_group_list(Some(name), TIMEOUT) {
                Ok(list) => Some(list.groups().iter().find(|g| g.name() == name).map_or(
                    (String::new(), BTreeSet::new(), true),
                    |g| {
                        (
                            g.protocol_type().to_owned(),
                            assigned(g),
                            g.state() == "Dead",
                        )
                    },
                )),
                Err(e) => {
                    tracing::debug!(group = %name, error = %e, "describing the group failed");
                    None
                }
            };
            let (protocol_type, assigned, unknown) = described.unwrap_or_default();
            out.insert(
                name.clone(),
                Chosen {
                    name: name.clone(),
                    kind: plan::kind(&keel, app, name, &protocol_type),
                    assigned,
                    unknown,
                },
            );
        }
        return Ok(out.into_values().collect());
    }
    let list = consumer.fetch_group_list(None, TIMEOUT)?;
    for g in list.groups() {
        if *selection == Selection::All || default_group(&keel, app, g.name(), g.protocol_type()) {
            out.insert(
                g.name().to_owned(),
                Chosen {
                    name: g.name().to_owned(),
                    kind: plan::kind(&keel, app, g.name(), g.protocol_type()),
                    assigned: assigned(g),
                    unknown: false,
                },
            );
        }
    }
    Ok(out.into_values().collect())
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
    Ok(measure_selected(config, selection)?.rows)
}

/// [`measure_groups`], with the groups chosen (sorted; a group with members but no commit yet
/// is among them and has no rows). Each group is asked only about the topics it reads
/// ([`plan::requests`]), in bounded requests.
fn measure_selected(config: &KeelConfig, selection: &Selection) -> anyhow::Result<Measured> {
    selection.check()?;
    let probe: BaseConsumer = client(config).create()?;
    let metadata = probe.fetch_metadata(None, TIMEOUT)?;
    let cluster: BTreeMap<String, Vec<i32>> = metadata
        .topics()
        .iter()
        .filter(|t| !t.name().starts_with("__"))
        .map(|t| {
            let partitions = t.partitions().iter().map(|p| p.id()).collect();
            (t.name().to_owned(), partitions)
        })
        .collect();
    let keel_topic = keel_topic(config);
    let chosen = groups(config, &probe, selection)?;
    // One offset fetch per group and chunk, the groups in parallel.
    let committed = parallel(
        &chosen,
        |group| -> anyhow::Result<Vec<(String, i32, Offset)>> {
            let requests = plan::requests(group.kind, &group.assigned, &cluster, &keel_topic);
            if requests.is_empty() {
                return Ok(Vec::new());
            }
            let consumer: BaseConsumer = client(config)
                .set("group.id", &group.name)
                .set("enable.auto.commit", "false")
                .create()?;
            let mut out = Vec::new();
            for chunk in requests {
                let mut asked = TopicPartitionList::with_capacity(chunk.len());
                for (topic, partition) in &chunk {
                    asked.add_partition(topic, *partition);
                }
                let answered = consumer.committed_offsets(asked, TIMEOUT)?;
                out.extend(
                    answered
                        .elements()
                        .iter()
                        .map(|e| (e.topic().to_owned(), e.partition(), e.offset())),
                );
            }
            Ok(out)
        },
    );
    let mut per_group = Vec::with_capacity(chosen.len());
    for (group, offsets) in chosen.iter().zip(committed) {
        per_group.push((group.name.as_str(), offsets?));
    }
    // The watermarks of every partition of a topic some group has committed on.
    let partitions: Vec<(String, i32)> = per_group
        .iter()
        .flat_map(|(_, offsets)| {
            let read: BTreeSet<&str> = offsets
                .iter()
                .filter(|(_, _, o)| matches!(o, Offset::Offset(_)))
                .map(|(t, _, _)| t.as_str())
                .collect();
            offsets
                .iter()
                .filter(move |(t, _, _)| read.contains(t.as_str()))
                .map(|(t, p, _)| (t.clone(), *p))
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let watermarks = watermarks(&probe, &partitions)?;
    let rows = per_group
        .iter()
        .flat_map(|(group, offsets)| plan::rows(group, offsets, &watermarks))
        .collect();
    Ok(Measured {
        groups: chosen.iter().map(|g| g.name.clone()).collect(),
        unknown: chosen
            .iter()
            .filter(|g| g.unknown)
            .map(|g| g.name.clone())
            .collect(),
        rows,
    })
}

/// The (low, high) watermark of each of `partitions`: their earliest offsets in one ListOffsets
/// round and their latest in another (one request per leader each, `offsets_for_times` with
/// Kafka's special timestamps -2 and -1), not two requests per partition as
/// `fetch_watermarks` makes (the lag sampler of a checkout's `keel run` sent ~20 a second that
/// way, docs/BENCHMARKS.md). Same isolation level as `fetch_watermarks` (the client's). Errors: a
/// partition the broker answers with an error, or no answer within 10 s.
fn watermarks(
    probe: &BaseConsumer,
    partitions: &[(String, i32)],
) -> anyhow::Result<HashMap<(String, i32), (i64, i64)>> {
    if partitions.is_empty() {
        return Ok(HashMap::new());
    }
    let low = list_offsets(probe, partitions, Offset::Beginning)?;
    let high = list_offsets(probe, partitions, Offset::End)?;
    partitions
        .iter()
        .map(|tp| match (low.get(tp), high.get(tp)) {
            (Some(&l), Some(&h)) => Ok((tp.clone(), (l, h))),
            _ => anyhow::bail!("list offsets: no answer for {} [{}]", tp.0, tp.1),
        })
        .collect()
}

/// The earliest (`Offset::Beginning`) or latest (`Offset::End`) offset of each of `partitions`
/// in one ListOffsets round (one request per leader: `offsets_for_times` with Kafka's special
/// timestamps -2 and -1), with `consumer`'s isolation level. Errors: a partition the broker
/// answers with an error or without an offset, or no answer within 10 s.
pub(crate) fn list_offsets(
    consumer: &BaseConsumer,
    partitions: &[(String, i32)],
    at: Offset,
) -> anyhow::Result<HashMap<(String, i32), i64>> {
    let mut asked = TopicPartitionList::with_capacity(partitions.len());
    for (topic, partition) in partitions {
        asked.add_partition_offset(topic, *partition, at)?;
    }
    let answered = consumer.offsets_for_times(asked, TIMEOUT)?;
    answered
        .elements()
        .iter()
        .map(|e| {
            e.error()
                .with_context(|| format!("list offsets of {} [{}]", e.topic(), e.partition()))?;
            match e.offset() {
                Offset::Offset(o) => Ok(((e.topic().to_owned(), e.partition()), o)),
                other => anyhow::bail!(
                    "list offsets of {} [{}]: answered {other:?}",
                    e.topic(),
                    e.partition()
                ),
            }
        })
        .collect()
}

/// What one measurement found.
struct Measured {
    /// The groups chosen, sorted.
    groups: Vec<String>,
    /// Those of them the broker does not know (`--group` names only).
    unknown: Vec<String>,
    rows: Vec<PartitionLag>,
}

/// The table people read: one line per partition, and a total per group; a group of `groups`
/// without rows (members, no commit yet: e.g. a consumer still on its first records) is named
/// with "no committed offsets yet", as Kafka's own consumer-groups tool shows it with "-", and
/// one of `unknown` as unknown to the broker.
pub fn render(groups: &[String], unknown: &[String], rows: &[PartitionLag]) -> String {
    use std::fmt::Write as _;
    // Columns as wide as their longest name (at least 40 and 44), so a prefixed topic name
    // does not push the numbers out of line.
    let g = groups
        .iter()
        .map(String::len)
        .chain(rows.iter().map(|r| r.group.len()))
        .fold(40, usize::max);
    let t = rows.iter().map(|r| r.topic.len()).fold(44, usize::max);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<g$} {:<t$} {:>4} {:>10} {:>10} {:>8}",
        "GROUP", "TOPIC", "PART", "COMMITTED", "END", "LAG"
    );
    let mut totals: BTreeMap<&str, i64> = BTreeMap::new();
    for r in rows {
        *totals.entry(&r.group).or_default() += r.lag;
        let _ = writeln!(
            out,
            "{:<g$} {:<t$} {:>4} {:>10} {:>10} {:>8}",
            r.group, r.topic, r.partition, r.committed, r.end, r.lag
        );
    }
    for group in groups {
        if unknown.contains(group) {
            let _ = writeln!(
                out,
                "{group:<g$} unknown to the broker: no members, no committed offsets (check the name)"
            );
        } else if !totals.contains_key(group.as_str()) {
            let _ = writeln!(out, "{group:<g$} no committed offsets yet");
        }
    }
    for (group, total) in totals {
        let _ = writeln!(out, "{group:<g$} total lag {total}");
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
        let measured = measure_selected(config, selection)?;
        if json {
            writeln!(stdout, "{}", serde_json::to_string(&measured.rows)?)?;
        } else {
            if !once {
                // Clear the screen and go home, as `top` does.
                write!(stdout, "\x1b[2J\x1b[H")?;
            }
            let table = render(&measured.groups, &measured.unknown, &measured.rows);
            write!(stdout, "{table}")?;
        }
        stdout.flush()?;
        if once {
            // A named group the broker does not know is most likely a typo: not the exit of
            // an idle group (break report 13, D7).
            anyhow::ensure!(
                measured.unknown.is_empty(),
                "the broker knows no group {} (no members, no committed offsets); `keel lag \
                 --all` lists every group",
                measured.unknown.join(", ")
            );
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_group_name_is_refused_naming_the_flag() {
        let empty = Selection::Groups(vec!["app-saga".to_owned(), String::new()]);
        let error = empty.check().expect_err("empty").to_string();
        assert!(error.contains("--group must not be empty"), "{error}");
        assert!(
            Selection::Groups(vec!["app-saga".to_owned()])
                .check()
                .is_ok()
        );
        assert!(Selection::Keel.check().is_ok());
    }

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
    fn with_the_empty_prefix_keels_topics_are_its_own_not_other_runs() {
        let mut config = KeelConfig::load(None).expect("defaults");
        config.topics.prefix = String::new();
        config.streams.application_id = "keel".to_owned();
        let ours = keel_topic(&config);
        for topic in [
            "orders.commands.v1",
            "payment.authorized.v1",
            "cdc.keel.carts",
            "outbox.orders",
            "ledger.public.payments",
            "keel-saga-store-changelog",
        ] {
            assert!(ours(topic), "{topic} is this configuration's");
        }
        for topic in [
            "keel_e2e_1.orders.commands.v1",
            "keel_bench_9.cdc.keel_bench_9.carts",
            "keel_e2e_1-saga-store-changelog",
            "orders.commands.v2",
        ] {
            assert!(!ours(topic), "{topic} is another run's");
        }
        config.topics.prefix = "run7.".to_owned();
        let ours = keel_topic(&config);
        assert!(ours("run7.orders.commands.v1") && ours("run7.anything"));
        assert!(!ours("orders.commands.v1") && !ours("run70.orders.commands.v1"));
    }

    /// Break report 13: a prefixed topic name longer than the TOPIC column pushed PART,
    /// COMMITTED, END and LAG out of line.
    #[test]
    fn long_topic_names_keep_the_columns_in_line() {
        let row = |topic: &str| PartitionLag {
            group: "keel-saga".into(),
            topic: topic.into(),
            partition: 0,
            committed: 5,
            end: 9,
            lag: 4,
        };
        let long = "keel_brk13_025c3aad.inventory.reservations.requested.v1";
        let text = render(
            &["keel-saga".to_owned()],
            &[],
            &[row(long), row("orders.commands.v1")],
        );
        // Every column after TOPIC is right-aligned: in line, the header and the rows end at
        // the same place.
        let widths: Vec<usize> = text.lines().take(3).map(str::len).collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{text}");
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
            &[],
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
