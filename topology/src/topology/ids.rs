//! How the topology names things: [`TaskId`] (one partition of one sub-topology, shown as
//! `1_3`) and [`TopicName`] (a topic the application reads or owns, resolved against the
//! application id). Leaf types: they depend on nothing else in the crate.

use std::fmt;

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
