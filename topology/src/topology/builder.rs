//! [`TopologyBuilder`]: adds sources, processors, sinks, repartitions and stores, collects every
//! wiring problem, and [`build`](TopologyBuilder::build)s a [`Topology`]: it checks the whole
//! graph at once, then hands it to the [`cut`](super::cut) into sub-topologies.

use std::any::{TypeId, type_name};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use keel_state::StoreKind;

use super::cut::cut;
use super::graph::{
    Decode, Encode, EncodeFailure, Encoded, Factory, Graph, Node, NodeKind, StoreSpec,
};
use super::{TopicName, Topology};
use crate::error::{Error, Result, SerdeError};
use crate::processor::{ErasedProcessor, Payload, Processor};
use crate::record::{RawRecord, Record};
use crate::serde::Serde;

/// Picks a partition from the typed key and value and the topic's partition count.
pub type Partitioner<K, V> = Arc<dyn Fn(&K, &V, i32) -> i32 + Send + Sync>;

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

        let sub_topologies = cut(&mut nodes, &stores);
        Ok(Topology {
            graph: Arc::new(Graph { nodes, stores }),
            sub_topologies,
        })
    }
}
