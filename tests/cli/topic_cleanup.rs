//! A finished [`Run`] leaves no topic of its own on the broker: every topic under its prefix
//! (`<name>.`), every internal topic of its applications (`<name>-<role>-...`: changelogs,
//! repartition, dead letters) and the Debezium heartbeat topic of its connectors
//! (`__debezium-heartbeat.<name>.<server>`). A broker keeps files open for every partition, and
//! six sessions of leftover test topics once exhausted the shared broker's file descriptors.

mod common;

use std::time::{Duration, Instant};

use common::Run;
use keel_tests::Stack;
use keel_tests::kafka::create_topics;
use keel_tests::topics::{CLEANUP_WITHIN, TopicCleanup, list_topics};

#[tokio::test]
async fn a_dropped_run_deletes_every_topic_of_its_own_and_no_other() {
    let stack = Stack::from_env();
    let bootstrap = stack.kafka_bootstrap.clone();
    let (name, run) = Run::new(&stack).await;
    // What `keel run` and its connectors create (the default 6 partitions of a run are not
    // needed to show it; one each keeps the test quick).
    let own = [
        format!("{name}.orders.commands.v1"),
        format!("{name}.cdc.{name}.carts"),
        format!("{name}-saga-saga-state-changelog"),
        format!("{name}-saga-dlq"),
        format!("__debezium-heartbeat.{name}.ledger"),
    ];
    // Shares the run's name but not its prefix (`<name>.`) nor its application id (`<name>-`).
    let neighbour = format!("{name}_neighbour");
    let _neighbour = TopicCleanup::new(&bootstrap).topic(&neighbour);
    let mut all: Vec<&str> = own.iter().map(String::as_str).collect();
    all.push(&neighbour);
    create_topics(&bootstrap, &all, 1).await.expect("topics");

    run.clean_up(&stack, &name).await;
    let start = Instant::now();
    drop(run);
    let took = start.elapsed();

    let after = list_topics(&bootstrap, Duration::from_secs(10)).expect("metadata");
    let left: Vec<&String> = after.iter().filter(|t| own.contains(t)).collect();
    let neighbour_stayed = after.contains(&neighbour);
    assert!(left.is_empty(), "the run left {left:?} on the broker");
    assert!(
        neighbour_stayed,
        "{neighbour} is not the run's and must stay"
    );
    // The drop also asks Connect to delete the run's carts connector (one `keel` process).
    assert!(
        took < CLEANUP_WITHIN + Duration::from_secs(5),
        "the run's teardown took {took:?}"
    );
}
