//! Keel's stream-processing runtime: the topology DSL and Processor API, tasks per partition,
//! the poll → process → commit loop with exactly-once Kafka transactions, punctuators,
//! rebalancing, the dead-letter topic, metrics and an in-process test driver.
//!
//! Must not know about orders or payments: processors plug in through its traits.
//!
//! Layout: arrives with the runtime work (issue #3).
