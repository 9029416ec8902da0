//! A [`TopicCleanup`] deletes exactly the topics it names when it drops — by exact name and by
//! prefix — leaves every other topic alone, and does so in one quick round trip.

use std::time::{Duration, Instant};

use keel_tests::kafka::create_topics;
use keel_tests::topics::{CLEANUP_WITHIN, TopicCleanup, list_topics};
use keel_tests::{Stack, unique};

#[tokio::test(flavor = "current_thread")]
async fn dropping_the_cleanup_deletes_its_topics_by_name_and_prefix_and_no_other()
-> anyhow::Result<()> {
    let stack = Stack::from_env();
    let bootstrap = stack.kafka_bootstrap.as_str();
    let app = unique("cleanup_app");
    let exact = unique("cleanup_in");
    let internal = [format!("{app}-sums-changelog"), format!("{app}-dlq")];
    // Not the test's own as far as the cleanup knows: same stem, no separator after the app id.
    let neighbour = format!("{app}_neighbour");
    let _neighbour = TopicCleanup::new(bootstrap).topic(&neighbour);

    let cleanup = TopicCleanup::new(bootstrap)
        .topic(&exact)
        .prefix(format!("{app}-"));
    let mut all: Vec<&str> = internal.iter().map(String::as_str).collect();
    all.extend([exact.as_str(), neighbour.as_str()]);
    create_topics(bootstrap, &all, 2).await?;
    let before = list_topics(bootstrap, Duration::from_secs(10)).map_err(anyhow::Error::msg)?;
    for t in &all {
        assert!(before.iter().any(|b| b == t), "{t} was created");
    }

    // Dropped inside the test's (current-thread) runtime, as a fixture is.
    let start = Instant::now();
    drop(cleanup);
    let took = start.elapsed();

    let after = list_topics(bootstrap, Duration::from_secs(10)).map_err(anyhow::Error::msg)?;
    let left: Vec<&String> = after
        .iter()
        .filter(|t| **t == exact || t.starts_with(&format!("{app}-")))
        .collect();
    assert!(left.is_empty(), "still on the broker: {left:?}");
    assert!(
        after.contains(&neighbour),
        "{neighbour} is not the cleanup's and must stay"
    );
    assert!(
        took < CLEANUP_WITHIN,
        "the cleanup took {took:?}, more than {CLEANUP_WITHIN:?}"
    );
    Ok(())
}

#[test]
fn a_cleanup_against_a_broker_that_does_not_answer_gives_up_in_bounded_time() {
    // A port nothing listens on: the drop must neither panic nor hang the test.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let cleanup = TopicCleanup::new(format!("127.0.0.1:{port}")).prefix(unique("nobody") + "-");
    let start = Instant::now();
    let result = cleanup.delete_now();
    drop(cleanup);
    assert!(result.is_err(), "no broker, no deletion: {result:?}");
    assert!(
        start.elapsed() < 2 * (CLEANUP_WITHIN + Duration::from_secs(1)),
        "took {:?}",
        start.elapsed()
    );
}
