//! `keel reset`: rewinds an application so that restarting it replays its input
//! deterministically — input offsets back to the start (or to a point in time), internal topics
//! (changelogs, repartition topics) deleted, local state removed. Refuses while any member of
//! the application's group is still running, or of another group named under its id
//! (`<application_id>-…`: Keel runs its roles as `<app>-saga`, `<app>-inventory`, … and its
//! sinks as `<app>-order-sink`, …), whose internal topics share the application's prefix and
//! are never deleted with it.

use std::path::PathBuf;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::StreamsConfig;
use crate::error::{Error, Result};
use crate::runtime::kafka::{self, Role};

const TIMEOUT: Duration = Duration::from_secs(30);

/// What to reset.
#[derive(Debug, Clone)]
pub struct ResetOptions {
    pub application_id: String,
    pub bootstrap_servers: String,
    /// The application's input topics (their offsets are rewound). Empty: every topic the
    /// application's group has committed offsets for, except its own internal topics.
    pub input_topics: Vec<String>,
    /// Rewind to the first offset at or after this time (epoch ms) instead of the beginning.
    pub to_timestamp: Option<i64>,
    /// The `state.dir` whose `<application_id>/` is removed; `None` leaves local state alone.
    pub state_dir: Option<PathBuf>,
}

/// What a reset did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResetReport {
    /// (topic, partition, offset now committed).
    pub rewound: Vec<(String, i32, i64)>,
    pub deleted_topics: Vec<String>,
    pub removed_state: Option<PathBuf>,
}

impl std::fmt::Display for ResetReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (topic, partition, offset) in &self.rewound {
            writeln!(f, "rewound {topic}/{partition} to offset {offset}")?;
        }
        for topic in &self.deleted_topics {
            writeln!(f, "deleted internal topic {topic}")?;
        }
        match &self.removed_state {
            Some(dir) => writeln!(f, "removed local state {}", dir.display()),
            None => writeln!(f, "local state left alone (no --state-dir)"),
        }
    }
}

/// The topics the consumer's group has a committed offset on (one OffsetFetch for every
/// partition of the cluster; internal `__` topics skipped).
fn committed_topics(
    consumer: &BaseConsumer,
    metadata: &rdkafka::metadata::Metadata,
) -> Result<Vec<String>> {
    let mut all = TopicPartitionList::new();
    for t in metadata
        .topics()
        .iter()
        .filter(|t| !t.name().starts_with("__"))
    {
        for p in t.partitions() {
            all.add_partition(t.name(), p.id());
        }
    }
    let committed = consumer
        .committed_offsets(all, TIMEOUT)
        .map_err(Error::kafka("reading the group's committed offsets"))?;
    let mut topics: Vec<String> = committed
        .elements()
        .iter()
        .filter(|e| matches!(e.offset(), Offset::Offset(_)))
        .map(|e| e.topic().to_owned())
        .collect();
    topics.sort();
    topics.dedup();
    Ok(topics)
}

/// Resets the application. See the module docs.
pub fn reset_application(options: &ResetOptions) -> Result<ResetReport> {
    let app = &options.application_id;
    let config = StreamsConfig::new(app.clone(), options.bootstrap_servers.clone());
    let mut cc = kafka::client_config(&config, Role::Consumer);
    cc.set("group.id", app).set("enable.auto.commit", "false");
    let consumer: BaseConsumer = cc
        .create()
        .map_err(Error::kafka("creating the reset consumer"))?;

    // Groups named under this application's id are other applications (or consumers) whose
    // internal topics share its prefix (`<app>-saga-…-changelog` when resetting `<app>`; or
    // `keel-saga-v2-…` when resetting `keel-saga`): none may run, and their topics stay.
    let prefix = format!("{app}-");
    let restore_group = format!("{app}-restore");
    let groups = consumer
        .fetch_group_list(None, TIMEOUT)
        .map_err(Error::kafka("listing the groups"))?;
    if let Some(group) = groups.groups().iter().find(|g| g.name() == app)
        && !group.members().is_empty()
    {
        return Err(Error::Config(vec![format!(
            "application {app} still has {} member(s) (group state {}); stop every instance first (a stopped instance's static membership lapses after session.timeout.ms)",
            group.members().len(),
            group.state()
        )]));
    }
    let nested: Vec<_> = groups
        .groups()
        .iter()
        .filter(|g| g.name().starts_with(&prefix) && g.name() != restore_group)
        .collect();
    if let Some(g) = nested.iter().find(|g| !g.members().is_empty()) {
        return Err(Error::Config(vec![format!(
            "group {} (named under {app}, so its internal topics share the prefix {prefix}) still has {} member(s) (group state {}); stop it first, or give the application id it runs under",
            g.name(),
            g.members().len(),
            g.state()
        )]));
    }
    let others: Vec<String> = nested.iter().map(|g| format!("{}-", g.name())).collect();
    let is_internal = |n: &str| {
        n.starts_with(&prefix)
            && (n.ends_with("-changelog") || n.ends_with("-repartition"))
            && !others.iter().any(|other| n.starts_with(other.as_str()))
    };

    let metadata = consumer
        .fetch_metadata(None, TIMEOUT)
        .map_err(Error::kafka("fetching metadata"))?;
    let input_topics: Vec<String> = if options.input_topics.is_empty() {
        committed_topics(&consumer, &metadata)?
            .into_iter()
            .filter(|t| !is_internal(t))
            .collect()
    } else {
        options.input_topics.clone()
    };
    if input_topics.is_empty() {
        return Err(Error::Config(vec![format!(
            "application {app} has no committed offsets; name its input topics"
        )]));
    }
    let mut tpl = TopicPartitionList::new();
    for topic in &input_topics {
        let t = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && !t.partitions().is_empty())
            .ok_or_else(|| Error::MissingTopic(topic.clone()))?;
        for p in t.partitions() {
            tpl.add_partition_offset(
                topic,
                p.id(),
                Offset::Offset(options.to_timestamp.unwrap_or(0)),
            )
            .map_err(Error::kafka("building the reset list"))?;
        }
    }
    let mut rewound = Vec::new();
    let mut commit = TopicPartitionList::new();
    let by_time = match options.to_timestamp {
        Some(_) => Some(
            consumer
                .offsets_for_times(tpl.clone(), TIMEOUT)
                .map_err(Error::kafka("looking up offsets for the timestamp"))?,
        ),
        None => None,
    };
    for e in tpl.elements() {
        let (low, high) = consumer
            .fetch_watermarks(e.topic(), e.partition(), TIMEOUT)
            .map_err(Error::kafka("reading watermarks"))?;
        let offset = match &by_time {
            None => low,
            Some(found) => match found
                .find_partition(e.topic(), e.partition())
                .map(|x| x.offset())
            {
                Some(Offset::Offset(o)) => o,
                // No record at or after the time: start after the last one.
                _ => high,
            },
        };
        commit
            .add_partition_offset(e.topic(), e.partition(), Offset::Offset(offset))
            .map_err(Error::kafka("building the commit"))?;
        rewound.push((e.topic().to_owned(), e.partition(), offset));
    }
    if commit.count() > 0 {
        consumer
            .commit(&commit, CommitMode::Sync)
            .map_err(Error::kafka("committing the rewound offsets"))?;
    }

    let mut internal: Vec<String> = metadata
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .filter(|n| is_internal(n))
        .collect();
    internal.sort();
    if !internal.is_empty() {
        let admin: AdminClient<DefaultClientContext> = kafka::client_config(&config, Role::Admin)
            .create()
            .map_err(Error::kafka("creating the admin client"))?;
        let names: Vec<&str> = internal.iter().map(String::as_str).collect();
        let results = futures::executor::block_on(admin.delete_topics(
            &names,
            &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
        ))
        .map_err(Error::kafka("deleting internal topics"))?;
        for r in results {
            if let Err((topic, code)) = r {
                return Err(Error::Kafka {
                    context: format!("deleting {topic}"),
                    source: rdkafka::error::KafkaError::AdminOp(code),
                });
            }
        }
    }

    let removed_state = match &options.state_dir {
        Some(dir) => {
            let app_dir = dir.join(app);
            match std::fs::remove_dir_all(&app_dir) {
                Ok(()) => Some(app_dir),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(app_dir),
                Err(source) => {
                    return Err(Error::Io {
                        context: format!("removing {}", app_dir.display()),
                        source,
                    });
                }
            }
        }
        None => None,
    };
    Ok(ResetReport {
        rewound,
        deleted_topics: internal,
        removed_state,
    })
}
