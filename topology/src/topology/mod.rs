//! Building a topology: sources, processors, sinks and state stores, checked and cut into
//! sub-topologies (connected parts that share no stores), each run as one task per partition.
//!
//! Layout (each file uses only the ones below it; `mod.rs` re-exports the public types, so
//! paths stay `keel_topology::topology::*`):
//! - `builder.rs` — [`TopologyBuilder`]: the wiring API, every problem reported at once, `build`.
//! - `mod.rs` — [`Topology`]: the checked, cut topology the runtime runs and the test driver
//!   drives; its topics and `describe`.
//! - `cut.rs` — [`SubTopology`] and the cut of the graph into sub-topologies.
//! - `graph.rs` — the erased graph every task shares: nodes with their decode / factory / encode
//!   closures, [`StoreSpec`].
//! - `ids.rs` — [`TaskId`] and [`TopicName`].

use std::fmt;
use std::sync::Arc;

mod builder;
mod cut;
mod graph;
mod ids;

pub use builder::{Partitioner, TopologyBuilder};
pub use cut::SubTopology;
pub use graph::StoreSpec;
pub(crate) use graph::{EncodeFailure, Graph, NodeKind};
pub use ids::{TaskId, TopicName};

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
    use keel_state::StoreKind;

    use super::*;
    use crate::error::ProcessError;
    use crate::processor::{Context, Processor};
    use crate::record::Record;
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
