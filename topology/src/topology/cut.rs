//! The sub-topology cut: nodes joined by a parent edge or a shared store form one
//! [`SubTopology`] (a connected part of the graph), and each sub-topology runs as one task per
//! partition. [`cut`] numbers the parts in the order their first node was added.

use std::collections::{BTreeMap, BTreeSet};

use super::TopicName;
use super::graph::{Node, NodeKind, StoreSpec};

/// One connected part of the topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubTopology {
    pub id: usize,
    pub nodes: Vec<String>,
    pub source_topics: Vec<TopicName>,
    pub sink_topics: Vec<TopicName>,
    pub stores: Vec<String>,
}

/// Cuts the checked graph into sub-topologies and records each node's sub-topology in
/// `Node::sub_topology`.
pub(super) fn cut(nodes: &mut [Node], stores: &[StoreSpec]) -> Vec<SubTopology> {
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
    for store in stores {
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
    for node in nodes.iter() {
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
    subs
}
