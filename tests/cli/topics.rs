//! `keel run` creates the topics that are missing with `[topics].partitions`; one that exists
//! with another partition count is used as it is (Keel never repartitions a topic: keys would
//! move away from their state), and the start says so, naming it and its count.

mod common;

use std::time::Duration;

use common::{Proc, Run, wait_ready};
use keel_tests::Stack;

#[tokio::test(flavor = "multi_thread")]
async fn an_existing_topic_with_another_partition_count_is_named_at_start() {
    let stack = Stack::from_env();
    let (name, run) = Run::new(&stack).await;
    let orders = format!("{name}.orders.commands.v1");
    keel_tests::kafka::create_topics(&stack.kafka_bootstrap, &[orders.as_str()], 2)
        .await
        .expect("the topic exists first, with 2 partitions");
    let child = run
        .keel(&["run", "--roles", "api"])
        .env("KEEL__TOPICS__PARTITIONS", "3")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("keel starts");
    let mut keel = Proc {
        name: "keel run",
        child,
    };
    let client = reqwest::Client::new();
    wait_ready(&client, &run.api, Duration::from_secs(120)).await;
    let status = keel
        .terminate(Duration::from_secs(30))
        .expect("keel run stops");
    assert!(status.success(), "keel run exited with {status}");
    let mut stderr = String::new();
    if let Some(mut pipe) = keel.child.stderr.take() {
        use std::io::Read as _;
        let _ = pipe.read_to_string(&mut stderr);
    }
    let warning = stderr
        .lines()
        .find(|l| l.contains("another partition count"))
        .unwrap_or_else(|| panic!("no warning about the partition count: {stderr}"));
    assert!(warning.contains(&format!("{orders} (2)")), "{warning}");
    // The topics it created itself have the configured count: not named.
    assert!(
        !warning.contains(&format!("{name}.order.decisions.v1")),
        "{warning}"
    );
    run.clean_up(&stack, &name).await;
}
