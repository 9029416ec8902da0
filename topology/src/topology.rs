//! Building a topology: sources, processors, sinks and state stores, checked and cut into
//! sub-topologies (connected parts that share no stores), each run as one task per partition.

use std::any::{TypeId, type_name};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use keel_state::StoreKind;

use crate::error::{Error, Result, SerdeError};
use crate::processor::{ErasedProcessor, Payload, Processor};
use crate::record::{Headers, RawRecord, Record};
use crate::serde::Serde;

/// A task: one partition of one sub-topology. Displayed as Kafka Streams does: `1_3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    pub sub_topology: usize,
    pub partition: i32,
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.sub_topology, self.partition)
    }
}

/// A topic as the topology names it; internal topics get the application id in front.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TopicName {
    /// A topic the application does not own.
    External(String),
    /// `<application.id>-<suffix>`, created by the runtime (repartition topics).
    Internal(String),
}

impl TopicName {
    pub fn resolve(&self, application_id: &str) -> String {
        match self {
            Self::External(name) => name.clone(),
            Self::Internal(suffix) => format!("{application_id}-{suffix}"),
        }
    }
}

pub(crate) type Decode = Arc<dyn Fn(&RawRecord) -> Result<Payload, SerdeError> + Send + Sync>;
/// Serializes a sink's record for a topic with the given partition count (when known).
pub(crate) type Encode =
    Arc<dyn Fn(&str, Payload, Option<i32>) -> Result<Encoded, EncodeFailure> + Send + Sync>;
/// Picks a partition from the typed key and value and the topic's partition count.
pub type Partitioner<K, V> = Arc<dyn Fn(&K, &V, i32) -> i32 + Send + Sync>;
pub(crate) type Factory = Arc<dyn Fn() -> Box<dyn ErasedProcessor> + Send + Sync>;

pub(crate) struct Encoded {
    pub(crate) partition: Option<i32>,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) timestamp: i64,
    pub(crate) headers: Headers,
}

pub(crate) enum EncodeFailure {
    WrongType {
        expected: &'static str,
    },
    Serde(SerdeError),
    /// A custom partitioner needs the topic's partition count and it is not known.
    UnknownPartitions,
}

#[derive(Clone)]
pub(crate) enum NodeKind {
    Source {
        topics: Vec<TopicName>,
        decode: Decode,
    },
    Processor {
        factory: Factory,
    },
    Sink {
        topic: TopicName,
        encode: Encode,
    },
}

#[derive(Clone)]
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) kind: NodeKind,
    pub(crate) parents: Vec<usize>,
    pub(crate) children: Vec<usize>,
    pub(crate) stores: Vec<String>,
    /// (key, value) types a source produces or a processor/sink accepts.
    types: Option<(TypeId, &'static str)>,
    pub(crate) sub_topology: usize,
}

/// A state store the topology declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSpec {
    pub name: String,
    pub kind: StoreKind,
    pub processors: Vec<String>,
}

/// One connected part of the topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubTopology {
    pub id: usize,
    pub nodes: Vec<String>,
    pub source_topics: Vec<TopicName>,
    pub sink_topics: Vec<TopicName>,
    pub stores: Vec<String>,
}

/// Assembles a [`Topology`]. Names must be unique; parents must be added before children.
#[derive(Default)]
pub struct TopologyBuilder {
    nodes: Vec<Node>,
    stores: Vec<StoreSpec>,
    problems: Vec<String>,
}

impl fmt::Debug for TopologyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopologyBuilder")
            .field(
                "nodes",
                &self.nodes.iter().map(|n| &n.name).collect::<Vec<_>>(),
            )
            .field("stores", &self.stores)
            .finish()
    }
}

fn record_types<K: 'static, V: 'static>() -> (TypeId, &'static str) {
    (TypeId::of::<Record<K, V>>(), type_name::<(K, V)>())
}

impl TopologyBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    fn push(
        &mut self,
        name: &str,
        kind: NodeKind,
        parents: &[&str],
        types: Option<(TypeId, &'static str)>,
    ) {
        if self.nodes.iter().any(|n| n.name == name) {
            self.problems.push(format!("two nodes are named {name:?}"));
            return;
        }
        let mut parent_ids = Vec::new();
        for parent in parents {
            match self.nodes.iter().position(|n| n.name == *parent) {
                Some(p) if matches!(self.nodes[p].kind, NodeKind::Sink { .. }) => {
                    self.problems.push(format!(
                        "{name:?} names sink {parent:?} as its parent; sinks have no children"
                    ))
                }
                Some(p) => parent_ids.push(p),
                None => self.problems.push(format!(
                    "{name:?} names {parent:?} as its parent, but no such node was added before it"
                )),
            }
        }
        if parents.is_empty() && !matches!(kind, NodeKind::Source { .. }) {
            self.problems.push(format!("{name:?} has no parent"));
        }
        let index = self.nodes.len();
        for &p in &parent_ids {
            self.nodes[p].children.push(index);
        }
        self.nodes.push(Node {
            name: name.to_owned(),
            kind,
            parents: parent_ids,
            children: Vec::new(),
            stores: Vec::new(),
            types,
            sub_topology: 0,
        });
    }

    /// A source reading `topics`, decoding keys and values with the given serdes.
    pub fn add_source<K, V>(
        &mut self,
        name: &str,
        topics: &[&str],
        key: impl Serde<K>,
        value: impl Serde<V>,
    ) -> &mut Self
    where
        K: Send + 'static,
        V: Send + 'static,
    {
        let topics = topics
            .iter()
            .map(|t| TopicName::External((*t).to_owned()))
            .collect();
        self.add_source_named(name, topics, key, value)
    }

    fn add_source_named<K, V>(
        &mut self,
        name: &str,
        topics: Vec<TopicName>,
        key: impl Serde<K>,
        value: impl Serde<V>,
    ) -> &mut Self
    where
        K: Send + 'static,
        V: Send + 'static,
    {
        if topics.is_empty() {
            self.problems
                .push(format!("source {name:?} reads no topic"));
        }
        let decode: Decode = Arc::new(move |raw: &RawRecord| {
            let k = key
                .deserialize(&raw.topic, raw.key.as_deref())
                .map_err(|e| SerdeError(format!("key: {e}")))?;
            let v = value
                .deserialize(&raw.topic, raw.value.as_deref())
                .map_err(|e| SerdeError(format!("value: {e}")))?;
            let record = Record {
                key: k,
                value: v,
                timestamp: raw.timestamp,
                headers: raw.headers.clone(),
            };
            Ok(Box::new(record) as Payload)
        });
        self.push(
            name,
            NodeKind::Source { topics, decode },
            &[],
            Some(record_types::<K, V>()),
        );
        self
    }

    /// A processor made fresh for every task by `factory`, fed by `parents`.
    pub fn add_processor<P, F>(&mut self, name: &str, factory: F, parents: &[&str]) -> &mut Self
    where
        P: Processor,
        F: Fn() -> P + Send + Sync + 'static,
    {
        let factory: Factory = Arc::new(move || Box::new(factory()) as Box<dyn ErasedProcessor>);
        self.push(
            name,
            NodeKind::Processor { factory },
            parents,
            Some(record_types::<P::Key, P::Value>()),
        );
        self
    }

    /// A sink writing what `parents` forward to `topic`, partitioned by Kafka's default
    /// partitioner (murmur2 of the serialized key).
    pub fn add_sink<K, V>(
        &mut self,
        name: &str,
        topic: &str,
        key: impl Serde<K>,
        value: impl Serde<V>,
        parents: &[&str],
    ) -> &mut Self
    where
        K: Send + 'static,
        V: Send + 'static,
    {
        self.add_sink_named(
            name,
            TopicName::External(topic.to_owned()),
            key,
            value,
            None,
            parents,
        )
    }

    /// A sink whose records go to the partition `partitioner(key, value, partitions)` picks
    /// (taken modulo the topic's partition count).
    pub fn add_sink_with_partitioner<K, V>(
        &mut self,
        name: &str,
        topic: &str,
        key: impl Serde<K>,
        value: impl Serde<V>,
        partitioner: impl Fn(&K, &V, i32) -> i32 + Send + Sync + 'static,
        parents: &[&str],
    ) -> &mut Self
    where
        K: Send + 'static,
        V: Send + 'static,
    {
        self.add_sink_named(
            name,
            TopicName::External(topic.to_owned()),
            key,
            value,
            Some(Arc::new(partitioner)),
            parents,
        )
    }

    fn add_sink_named<K, V>(
        &mut self,
        name: &str,
        topic: TopicName,
        key: impl Serde<K>,
        value: impl Serde<V>,
        partitioner: Option<Partitioner<K, V>>,
        parents: &[&str],
    ) -> &mut Self
    where
        K: Send + 'static,
        V: Send + 'static,
    {
        let encode: Encode = Arc::new(move |topic: &str, payload: Payload, partitions| {
            let record =
                payload
                    .downcast::<Record<K, V>>()
                    .map_err(|_| EncodeFailure::WrongType {
                        expected: type_name::<(K, V)>(),
                    })?;
            let record = *record;
            let partition = match &partitioner {
                None => None,
                Some(p) => {
                    let n = partitions.ok_or(EncodeFailure::UnknownPartitions)?;
                    Some(p(&record.key, &record.value, n).rem_euclid(n.max(1)))
                }
            };
            Ok(Encoded {
                partition,
                key: key
                    .serialize(topic, &record.key)
                    .map_err(EncodeFailure::Serde)?,
                value: value
                    .serialize(topic, &record.value)
                    .map_err(EncodeFailure::Serde)?,
                timestamp: record.timestamp,
                headers: record.headers,
            })
        });
        self.push(
            name,
            NodeKind::Sink { topic, encode },
            parents,
            Some(record_types::<K, V>()),
        );
        self
    }

    /// Routes what `parents` forward through the internal topic `<application.id>-<name>-repartition`
    /// (re-keyed records land on the partition of their new key) and adds a source `name` reading
    /// it back, in a new sub-topology. Children of the repartition attach to `name`.
    pub fn add_repartition<K, V, SK, SV>(
        &mut self,
        name: &str,
        key: SK,
        value: SV,
        parents: &[&str],
    ) -> &mut Self
    where
        K: Send + 'static,
        V: Send + 'static,
        SK: Serde<K> + Clone,
        SV: Serde<V> + Clone,
    {
        let topic = TopicName::Internal(format!("{name}-repartition"));
        let sink = format!("{name}-sink");
        self.add_sink_named(
            &sink,
            topic.clone(),
            key.clone(),
            value.clone(),
            None,
            parents,
        );
        self.add_source_named(name, vec![topic], key, value)
    }

    /// A state store of `kind` that `processors` may use; processors sharing a store run in
    /// the same task.
    pub fn add_state_store(
        &mut self,
        name: &str,
        kind: StoreKind,
        processors: &[&str],
    ) -> &mut Self {
        if self.stores.iter().any(|s| s.name == name) {
            self.problems.push(format!("two stores are named {name:?}"));
            return self;
        }
        for p in processors {
            match self.nodes.iter_mut().find(|n| n.name == *p) {
                Some(node) if matches!(node.kind, NodeKind::Processor { .. }) => {
                    node.stores.push(name.to_owned());
                }
                Some(_) => self
                    .problems
                    .push(format!("store {name:?}: {p:?} is not a processor")),
                None => self
                    .problems
                    .push(format!("store {name:?}: no processor named {p:?}")),
            }
        }
        self.stores.push(StoreSpec {
            name: name.to_owned(),
            kind,
            processors: processors.iter().map(|p| (*p).to_owned()).collect(),
        });
        self
    }

    /// Lets `processor` (added after the store) use `store` too.
    pub fn connect_store(&mut self, store: &str, processor: &str) -> &mut Self {
        let Some(spec) = self.stores.iter_mut().find(|s| s.name == store) else {
            self.problems
                .push(format!("{processor:?} connects to unknown store {store:?}"));
            return self;
        };
        match self.nodes.iter_mut().find(|n| n.name == processor) {
            Some(node) if matches!(node.kind, NodeKind::Processor { .. }) => {
                node.stores.push(store.to_owned());
                spec.processors.push(processor.to_owned());
            }
            _ => self
                .problems
                .push(format!("store {store:?}: no processor named {processor:?}")),
        }
        self
    }

    /// Checks the whole graph (every problem at once) and cuts it into sub-topologies.
    pub fn build(self) -> Result<Topology> {
        let Self {
            mut nodes,
            stores,
            mut problems,
        } = self;
        // A source's records must have the types its children accept.
        for node in &nodes {
            for &child in &node.children {
                let (Some((from, from_name)), Some((to, to_name))) =
                    (node.types, nodes[child].types)
                else {
                    continue;
                };
                if matches!(node.kind, NodeKind::Source { .. }) && from != to {
                    problems.push(format!(
                        "source {:?} produces Record<{from_name}> but {:?} accepts Record<{to_name}>",
                        node.name, nodes[child].name
                    ));
                }
            }
        }
        let mut topic_owner: BTreeMap<TopicName, &str> = BTreeMap::new();
        for node in &nodes {
            if let NodeKind::Source { topics, .. } = &node.kind {
                for t in topics {
                    if let Some(other) = topic_owner.insert(t.clone(), &node.name) {
                        problems.push(format!(
                            "topic {t:?} is read by both {other:?} and {:?}",
                            node.name
                        ));
                    }
                }
            }
        }
        if !nodes
            .iter()
            .any(|n| matches!(n.kind, NodeKind::Source { .. }))
        {
            problems.push("the topology has no source".to_owned());
        }
        if !problems.is_empty() {
            return Err(Error::Topology(problems.join("; ")));
        }

        // Union-find over parent edges and shared stores.
        let mut root: Vec<usize> = (0..nodes.len()).collect();
        fn find(root: &mut [usize], mut i: usize) -> usize {
            while root[i] != i {
                root[i] = root[root[i]];
                i = root[i];
            }
            i
        }
        let union = |root: &mut Vec<usize>, a: usize, b: usize| {
            let (ra, rb) = (find(root, a), find(root, b));
            if ra != rb {
                root[ra.max(rb)] = ra.min(rb);
            }
        };
        for (i, node) in nodes.iter().enumerate() {
            for &p in &node.parents {
                union(&mut root, i, p);
            }
        }
        for store in &stores {
            let members: Vec<usize> = nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.stores.contains(&store.name))
                .map(|(i, _)| i)
                .collect();
            for pair in members.windows(2) {
                union(&mut root, pair[0], pair[1]);
            }
        }
        let mut ids: BTreeMap<usize, usize> = BTreeMap::new();
        for (i, node) in nodes.iter_mut().enumerate() {
            let r = find(&mut root, i);
            let next = ids.len();
            node.sub_topology = *ids.entry(r).or_insert(next);
        }
        let mut subs: Vec<SubTopology> = (0..ids.len())
            .map(|id| SubTopology {
                id,
                nodes: Vec::new(),
                source_topics: Vec::new(),
                sink_topics: Vec::new(),
                stores: Vec::new(),
            })
            .collect();
        for node in &nodes {
            let sub = &mut subs[node.sub_topology];
            sub.nodes.push(node.name.clone());
            match &node.kind {
                NodeKind::Source { topics, .. } => sub.source_topics.extend(topics.iter().cloned()),
                NodeKind::Sink { topic, .. } => sub.sink_topics.push(topic.clone()),
                NodeKind::Processor { .. } => {}
            }
            let stores: BTreeSet<String> = sub
                .stores
                .drain(..)
                .chain(node.stores.iter().cloned())
                .collect();
            sub.stores = stores.into_iter().collect();
        }
        Ok(Topology {
            graph: Arc::new(Graph { nodes, stores }),
            sub_topologies: subs,
        })
    }
}

/// The checked graph, shared by every task.
pub(crate) struct Graph {
    pub(crate) nodes: Vec<Node>,
    pub(crate) stores: Vec<StoreSpec>,
}

impl Graph {
    pub(crate) fn node_name(&self, node: usize) -> &str {
        &self.nodes[node].name
    }

    pub(crate) fn children(&self, node: usize) -> &[usize] {
        &self.nodes[node].children
    }

    pub(crate) fn stores_of(&self, node: usize) -> &[String] {
        &self.nodes[node].stores
    }

    pub(crate) fn store(&self, name: &str) -> Option<&StoreSpec> {
        self.stores.iter().find(|s| s.name == name)
    }
}

/// A checked topology, ready to run (runtime) or drive (test driver).
#[derive(Clone)]
pub struct Topology {
    pub(crate) graph: Arc<Graph>,
    sub_topologies: Vec<SubTopology>,
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topology")
            .field("sub_topologies", &self.sub_topologies)
            .finish()
    }
}

impl Topology {
    pub fn sub_topologies(&self) -> &[SubTopology] {
        &self.sub_topologies
    }

    pub fn stores(&self) -> &[StoreSpec] {
        &self.graph.stores
    }

    /// The sub-topology that reads `topic` (resolved against `application_id`).
    pub fn sub_topology_of(&self, application_id: &str, topic: &str) -> Option<usize> {
        self.sub_topologies
            .iter()
            .find(|s| {
                s.source_topics
                    .iter()
                    .any(|t| t.resolve(application_id) == topic)
            })
            .map(|s| s.id)
    }

    /// Every topic the application reads, resolved.
    pub fn source_topics(&self, application_id: &str) -> Vec<String> {
        self.sub_topologies
            .iter()
            .flat_map(|s| s.source_topics.iter().map(|t| t.resolve(application_id)))
            .collect()
    }

    /// Every topic the sinks write to, resolved.
    pub fn sink_topics(&self, application_id: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .sub_topologies
            .iter()
            .flat_map(|s| s.sink_topics.iter().map(|t| t.resolve(application_id)))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Internal topics the runtime creates, resolved: repartition topics.
    pub fn internal_topics(&self, application_id: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .sub_topologies
            .iter()
            .flat_map(|s| s.source_topics.iter())
            .filter(|t| matches!(t, TopicName::Internal(_)))
            .map(|t| t.resolve(application_id))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// A readable description, one sub-topology per paragraph (like Kafka Streams' `describe`).
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for sub in &self.sub_topologies {
            out.push_str(&format!("Sub-topology {}\n", sub.id));
            for name in &sub.nodes {
                let Some(node) = self.graph.nodes.iter().find(|n| &n.name == name) else {
                    continue;
                };
                let children: Vec<&str> = node
                    .children
                    .iter()
                    .map(|&c| self.graph.node_name(c))
                    .collect();
                let what = match &node.kind {
                    NodeKind::Source { topics, .. } => format!("source {topics:?}"),
                    NodeKind::Processor { .. } => format!("processor stores={:?}", node.stores),
                    NodeKind::Sink { topic, .. } => format!("sink {topic:?}"),
                };
                out.push_str(&format!("  {name}: {what} -> {children:?}\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ProcessError;
    use crate::processor::Context;
    use crate::serde::{I64, Utf8};

    struct Pass;
    impl Processor for Pass {
        type Key = String;
        type Value = i64;
        fn process(
            &mut self,
            ctx: &mut Context<'_>,
            r: Record<String, i64>,
        ) -> Result<(), ProcessError> {
            ctx.forward(r);
            Ok(())
        }
    }

    #[test]
    fn stores_join_sub_topologies_and_unconnected_parts_stay_apart() {
        let mut b = TopologyBuilder::new();
        b.add_source("a", &["in-a"], Utf8, I64)
            .add_processor("pa", || Pass, &["a"])
            .add_source("b", &["in-b"], Utf8, I64)
            .add_processor("pb", || Pass, &["b"])
            .add_source("c", &["in-c"], Utf8, I64)
            .add_processor("pc", || Pass, &["c"])
            .add_sink("out", "out", Utf8, I64, &["pc"])
            .add_state_store("shared", StoreKind::KeyValue, &["pa", "pb"]);
        let t = b.build().expect("valid");
        let subs = t.sub_topologies();
        assert_eq!(subs.len(), 2, "{}", t.describe());
        assert_eq!(subs[0].source_topics.len(), 2);
        assert_eq!(subs[0].stores, vec!["shared".to_owned()]);
        assert_eq!(subs[1].sink_topics, vec![TopicName::External("out".into())]);
    }

    #[test]
    fn a_repartition_starts_a_new_sub_topology_on_an_internal_topic() {
        let mut b = TopologyBuilder::new();
        b.add_source("in", &["in"], Utf8, I64)
            .add_processor("rekey", || Pass, &["in"])
            .add_repartition::<String, i64, _, _>("by-sku", Utf8, I64, &["rekey"])
            .add_processor("count", || Pass, &["by-sku"])
            .add_state_store("counts", StoreKind::KeyValue, &["count"]);
        let t = b.build().expect("valid");
        assert_eq!(t.sub_topologies().len(), 2);
        assert_eq!(
            t.internal_topics("app"),
            vec!["app-by-sku-repartition".to_owned()]
        );
        assert_eq!(t.sub_topology_of("app", "app-by-sku-repartition"), Some(1));
    }

    #[test]
    fn every_wiring_problem_is_reported_at_once() {
        let mut b = TopologyBuilder::new();
        b.add_source("in", &["in"], Utf8, Utf8)
            .add_processor("p", || Pass, &["in", "ghost"])
            .add_processor("in", || Pass, &["p"])
            .add_state_store("s", StoreKind::KeyValue, &["nobody"]);
        let err = b.build().expect_err("broken").to_string();
        assert!(err.contains("\"ghost\""), "{err}");
        assert!(err.contains("two nodes are named \"in\""), "{err}");
        assert!(err.contains("no processor named \"nobody\""), "{err}");
        assert!(
            err.contains("accepts Record<"),
            "type mismatch is caught: {err}"
        );
    }
}
