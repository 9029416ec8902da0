//! The erased graph: what [`TopologyBuilder`](super::TopologyBuilder) checked and every task
//! shares. Nodes ([`Node`], [`NodeKind`]) hold type-erased closures — a source's decoder, a
//! processor's factory, a sink's encoder — so tasks run any `Record<K, V>` without generics;
//! [`StoreSpec`] is a declared store, [`Graph`] the whole, read-only once built.

use std::any::TypeId;
use std::sync::Arc;

use keel_state::StoreKind;

use super::TopicName;
use crate::error::{Result, SerdeError};
use crate::processor::{ErasedProcessor, Payload};
use crate::record::{Headers, RawRecord};

pub(crate) type Decode = Arc<dyn Fn(&RawRecord) -> Result<Payload, SerdeError> + Send + Sync>;
/// Serializes a sink's record for a topic with the given partition count (when known).
pub(crate) type Encode =
    Arc<dyn Fn(&str, Payload, Option<i32>) -> Result<Encoded, EncodeFailure> + Send + Sync>;
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
    pub(super) types: Option<(TypeId, &'static str)>,
    pub(crate) sub_topology: usize,
}

/// A state store the topology declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSpec {
    pub name: String,
    pub kind: StoreKind,
    pub processors: Vec<String>,
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
