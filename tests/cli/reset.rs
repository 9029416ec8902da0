//! `keel reset` end to end: it finds the application's input topics from its committed
//! offsets, rewinds them (to the beginning or to a time), and refuses a malformed time.

use std::process::{Command, Output};
use std::time::Duration;

use keel_tests::kafka::create_topics;
use keel_tests::topics::TopicCleanup;
use keel_tests::{Stack, unique};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

fn keel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .env(
            "KEEL__KAFKA__BOOTSTRAP_SERVERS",
            Stack::from_env().kafka_bootstrap,
        )
        .output()
        .expect("the keel binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn reset_finds_the_input_topics_and_rewinds_them() {
    let bootstrap = Stack::from_env().kafka_bootstrap;
    let app = unique("cli_reset_app");
    let topic = unique("cli_reset_in");
    let _topic = TopicCleanup::new(bootstrap.as_str()).topic(&topic);
    create_topics(&bootstrap, &[&topic], 2)
        .await
        .expect("topic");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("producer");
    for (partition, n) in [(0, 3), (1, 2)] {
        for i in 0..n {
            producer
                .send(
                    FutureRecord::to(&topic)
                        .partition(partition)
                        .key("k")
                        .payload(&format!("{i}")),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("produced");
        }
    }
    // The application had consumed everything.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", &app)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(3))
        .expect("tpl");
    tpl.add_partition_offset(&topic, 1, Offset::Offset(2))
        .expect("tpl");
    consumer.commit(&tpl, CommitMode::Sync).expect("committed");
    drop(consumer);

    let expect_rewound = |extra: &[&str], offsets: [i64; 2]| {
        let mut args = vec!["reset", "--application-id", app.as_str()];
        args.extend_from_slice(extra);
        let out = keel(&args);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
        for (partition, offset) in offsets.iter().enumerate() {
            let line = format!("rewound {topic}/{partition} to offset {offset}");
            assert!(stdout.contains(&line), "{line} missing from:\n{stdout}");
        }
    };
    expect_rewound(&[], [0, 0]);
    // A time after every record: each partition goes to its end.
    expect_rewound(&["--to-datetime", "2100-01-01T00:00:00Z"], [3, 2]);

    let out = keel(&[
        "reset",
        "--application-id",
        &app,
        "--to-datetime",
        "yesterday",
    ]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(
        text(&out.stderr).contains("RFC 3339"),
        "{}",
        text(&out.stderr)
    );
}
