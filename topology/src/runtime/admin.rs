//! Before the threads start: the source topics must exist and be co-partitioned within each
//! sub-topology; changelog, repartition and dead-letter topics are created if missing. And
//! [`delete_topics_matching`], which deletes a finished run's topics (tests, benchmarks).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::StreamsConfig;
use crate::error::{Error, Result};
use crate::runtime::kafka;
use crate::topology::{TopicName, Topology};

const TIMEOUT: Duration = Duration::from_secs(30);
/// How long a missing source topic is waited for before the start fails.
const SOURCE_TOPIC_WAIT: Duration = Duration::from_secs(10);

fn partition_counts(admin: &AdminClient<DefaultClientContext>) -> Result<HashMap<String, i32>> {
    let metadata = admin
        .inner()
        .fetch_metadata(None, TIMEOUT)
        .map_err(Error::kafka("fetching metadata"))?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| {
            (
                t.name().to_owned(),
                i32::try_from(t.partitions().len()).unwrap_or(i32::MAX),
            )
        })
        .collect())
}

/// Returns the partition count of every source topic (internal ones included) and of every
/// sink topic that exists.
pub(crate) fn prepare_topics(
    topology: &Topology,
    config: &StreamsConfig,
) -> Result<HashMap<String, i32>> {
    let app = &config.application_id;
    let admin: AdminClient<DefaultClientContext> = kafka::client_config(config, kafka::Role::Admin)
        .create()
        .map_err(Error::kafka("creating the admin client"))?;
    // Topics created just before the application starts may not be in metadata yet.
    let mut counts = partition_counts(&admin)?;
    let deadline = Instant::now() + SOURCE_TOPIC_WAIT;
    let external: Vec<String> = topology
        .sub_topologies()
        .iter()
        .flat_map(|s| s.source_topics.iter())
        .filter_map(|t| match t {
            TopicName::External(name) => Some(name.clone()),
            TopicName::Internal(_) => None,
        })
        .collect();
    while let Some(missing) = external
        .iter()
        .find(|name| !counts.contains_key(*name))
        .cloned()
    {
        if Instant::now() >= deadline {
            return Err(Error::MissingTopic(missing));
        }
        std::thread::sleep(Duration::from_millis(200));
        counts = partition_counts(&admin)?;
    }

    let mut external_max = 0;
    for sub in topology.sub_topologies() {
        for t in &sub.source_topics {
            if let TopicName::External(name) = t {
                let n = *counts
                    .get(name)
                    .ok_or_else(|| Error::MissingTopic(name.clone()))?;
                external_max = external_max.max(n);
            }
        }
    }
    let repartition_partitions = config.repartition_partitions.unwrap_or(external_max.max(1));

    let mut wanted: Vec<NewTopic<'_>> = Vec::new();
    let internal = topology.internal_topics(app);
    for name in &internal {
        if !counts.contains_key(name) {
            wanted.push(NewTopic::new(
                name,
                repartition_partitions,
                TopicReplication::Fixed(config.replication_factor),
            ));
        }
    }
    let dlq = config.dead_letter_topic();
    if !counts.contains_key(&dlq) {
        wanted.push(NewTopic::new(
            &dlq,
            1,
            TopicReplication::Fixed(config.replication_factor),
        ));
    }
    // Partitions of each sub-topology (internal topics count as created).
    let partitions_of = |sub: &crate::topology::SubTopology, counts: &HashMap<String, i32>| {
        sub.source_topics
            .iter()
            .map(|t| {
                let name = t.resolve(app);
                let n = counts.get(&name).copied().unwrap_or(repartition_partitions);
                (name, n)
            })
            .collect::<Vec<_>>()
    };
    for sub in topology.sub_topologies() {
        let topics = partitions_of(sub, &counts);
        let first = topics.first().map_or(1, |(_, n)| *n);
        if topics.iter().any(|(_, n)| *n != first) {
            return Err(Error::NotCoPartitioned {
                sub_topology: sub.id,
                topics: topics.iter().map(|(t, _)| t.clone()).collect(),
                counts: topics
                    .iter()
                    .map(|(t, n)| format!("{t}={n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    let mut changelogs = Vec::new();
    for sub in topology.sub_topologies() {
        let n = partitions_of(sub, &counts).first().map_or(1, |(_, n)| *n);
        for store in &sub.stores {
            let name = keel_state::changelog_topic(app, store);
            if !counts.contains_key(&name) {
                changelogs.push((name, n));
            }
        }
    }
    for (name, n) in &changelogs {
        wanted.push(
            NewTopic::new(name, *n, TopicReplication::Fixed(config.replication_factor))
                .set("cleanup.policy", "compact"),
        );
    }
    if !wanted.is_empty() {
        let names: Vec<String> = wanted.iter().map(|t| t.name.to_owned()).collect();
        let results = futures::executor::block_on(admin.create_topics(
            wanted.iter(),
            &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
        ))
        .map_err(Error::kafka("creating internal topics"))?;
        for result in results {
            match result {
                Ok(name) => tracing::info!(topic = %name, "created internal topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(Error::Kafka {
                        context: format!("creating topic {name}"),
                        source: rdkafka::error::KafkaError::AdminOp(code),
                    });
                }
            }
        }
        // Wait until the new topics show up in metadata.
        let deadline = Instant::now() + TIMEOUT;
        loop {
            counts = partition_counts(&admin)?;
            if names.iter().all(|n| counts.contains_key(n)) {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::Topology(format!(
                    "internal topics {names:?} did not appear"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Source topics (all exist now) and the sink topics that exist (custom partitioners need
    // their partition counts).
    let mut known = HashMap::new();
    for t in topology.source_topics(app) {
        let n = counts.get(&t).copied().unwrap_or(1);
        known.insert(t, n);
    }
    for t in topology.sink_topics(app) {
        if let Some(n) = counts.get(&t) {
            known.insert(t, *n);
        }
    }
    Ok(known)
}

/// Deletes every topic the broker lists whose name `doomed` accepts, with an admin client made
/// from `client` (`bootstrap.servers` and any other librdkafka settings), and returns the names
/// it asked the broker to delete (empty, and no DeleteTopics request, when none matched). One
/// metadata request (at most `within / 2`) finds the names, one DeleteTopics request deletes
/// them all; the whole takes about `within` at most (at least 1 s for the deletion). A topic
/// deleted meanwhile by someone else counts as deleted.
///
/// For a finished run's own topics (a test's or a benchmark's): stop every client of them
/// first, or a running producer creates them again (brokers auto-create topics).
///
/// Errors: [`Error::Kafka`] when the admin client cannot be created, the metadata or the
/// DeleteTopics request fails, or the broker could not delete some of the topics (each named
/// with its error code; the source is the first one's).
pub async fn delete_topics_matching(
    client: &ClientConfig,
    doomed: impl Fn(&str) -> bool,
    within: Duration,
) -> Result<Vec<String>> {
    let start = Instant::now();
    let admin: AdminClient<DefaultClientContext> = client
        .create()
        .map_err(Error::kafka("creating an admin client"))?;
    let names: Vec<String> = admin
        .inner()
        .fetch_metadata(None, within / 2)
        .map_err(Error::kafka("listing the topics"))?
        .topics()
        .iter()
        .map(|t| t.name())
        .filter(|name| doomed(name))
        .map(str::to_owned)
        .collect();
    if names.is_empty() {
        return Ok(names);
    }
    let left = within
        .saturating_sub(start.elapsed())
        .max(Duration::from_secs(1));
    // The broker answers once the deletions are done or `operation_timeout` passed.
    let options = AdminOptions::new()
        .request_timeout(Some(left))
        .operation_timeout(Some(left.mul_f32(0.8)));
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let failed: Vec<(String, RDKafkaErrorCode)> = admin
        .delete_topics(&refs, &options)
        .await
        .map_err(Error::kafka(format!("deleting {} topics", names.len())))?
        .into_iter()
        .filter_map(std::result::Result::err)
        // Deleted meanwhile (by a retry, or the run itself): what was asked for.
        .filter(|(_, code)| *code != RDKafkaErrorCode::UnknownTopicOrPartition)
        .collect();
    match failed.first() {
        None => Ok(names),
        Some((_, first)) => Err(Error::Kafka {
            context: format!(
                "could not delete {}",
                failed
                    .iter()
                    .map(|(topic, code)| format!("{topic} ({code})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            source: KafkaError::AdminOp(*first),
        }),
    }
}
