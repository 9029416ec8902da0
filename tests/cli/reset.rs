//! `keel reset` end to end: it finds the application's input topics from its committed
//! offsets, rewinds them (to the beginning or to a time), and refuses a malformed time; and a
//! reset of the saga of a shop that took orders replays them without changing any.

mod common;

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

/// The total of every series of `name` on `url`'s `/metrics` whose line contains `label`.
async fn metric_total(client: &reqwest::Client, url: &str, name: &str, label: &str) -> f64 {
    common::metrics_text(client, url)
        .await
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What a shop shows of its orders: each order's status and reason, its payment's status,
/// the stock of each SKU, and the PSP's counters of money moved.
async fn shop_view(
    client: &reqwest::Client,
    run: &common::Run,
    orders: &[String],
    skus: &[&str],
) -> serde_json::Value {
    let get = |path: String| {
        let client = client.clone();
        async move {
            client
                .get(path)
                .send()
                .await
                .expect("GET")
                .json::<serde_json::Value>()
                .await
                .expect("JSON")
        }
    };
    let mut view = serde_json::Map::new();
    for id in orders {
        let order = get(format!("{}/orders/{id}", run.api)).await;
        let payment = get(format!("{}/orders/{id}/payment", run.api)).await;
        view.insert(
            id.clone(),
            serde_json::json!([order["status"], order["reason"], payment["status"]]),
        );
    }
    for sku in skus {
        let level = get(format!("{}/inventory/{sku}", run.api)).await;
        view.insert(
            (*sku).to_owned(),
            serde_json::json!([level["onHand"], level["held"]]),
        );
    }
    let stats = run.psp_stats(client).await;
    for counter in ["authorizations", "captures", "voids", "refunds"] {
        view.insert(counter.to_owned(), stats[counter].clone());
    }
    serde_json::Value::Object(view)
}

/// Resetting the saga of a shop that confirmed, declined and short-stocked orders replays every
/// order: the replay reads the inputs in fetch order (replies before the commands that caused
/// them), decides each order as the first run did and compensates nothing — no order, payment or
/// stock level changes, and the PSP moves no money. Before replies read ahead of their commands
/// were kept (`saga-early`), the replay ignored them, timed the orders out and refunded the
/// confirmed ones.
#[tokio::test(flavor = "multi_thread")]
async fn resetting_the_saga_of_a_shop_with_orders_changes_no_order_payment_or_stock() {
    use std::time::Instant;

    let stack = Stack::from_env();
    let (name, mut run) = common::Run::new(&stack).await;
    // Short deadlines, so a replay that waits for a reply it ignored shows within the test.
    run.env.extend([
        (
            "KEEL__SAGA__INVENTORY_TIMEOUT_MS".to_owned(),
            "4000".to_owned(),
        ),
        (
            "KEEL__SAGA__PAYMENT_TIMEOUT_MS".to_owned(),
            "8000".to_owned(),
        ),
    ]);
    let pool = common::orders_pool(&run).await;
    // Six orders on SKU-LOW's 3 units: two paid with tok_visa, one with tok_pending (settled
    // by the PSP's callback: its authorization is caused by the callback, not by the saga's
    // command), two declined, and the last two of the paying ones short of SKU-LOW.
    let mut carts = Vec::new();
    for i in 0..6 {
        let cart = format!("cart-{i}");
        let items: Vec<(&str, i32, i64)> = vec![("SKU-A", 1, 1_000), ("SKU-LOW", 1, 500)];
        keel_processors::orders::seed_cart(&pool, &cart, &format!("customer-{i}"), "EUR", &items)
            .await
            .expect("cart");
        let token = match i {
            2 | 5 => "tok_decline_do_not_honor",
            1 | 4 => "tok_pending",
            _ => "tok_visa",
        };
        carts.push((cart, token));
    }
    run.ok(&["inventory", "seed", "--skus", "SKU-A", "--quantity", "100"]);
    run.ok(&["inventory", "seed", "--skus", "SKU-LOW", "--quantity", "3"]);
    let skus = ["SKU-A", "SKU-LOW"];

    let _psp = run.spawn("psp-mock", &["psp-mock"]);
    let mut keel = run.spawn("keel run", &["run"]);
    let client = reqwest::Client::new();
    common::wait_ready(&client, &run.api, Duration::from_secs(120)).await;
    let mut orders = Vec::new();
    for (i, (cart, token)) in carts.iter().enumerate() {
        let body = common::place(&client, &run.api, cart, token, &format!("reset-{i}")).await;
        let id = body["orderId"].as_str().expect("an order id").to_owned();
        common::settled(&client, &run.api, &id, Duration::from_secs(60)).await;
        orders.push(id);
    }
    let decided = metric_total(&client, &run.api, "saga_decisions_total", "").await;
    // The sinks and mirrors catch up (payment captures, Cassandra holds) before the snapshot.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = shop_view(&client, &run, &orders, &skus).await;
    let statuses: Vec<&str> = orders
        .iter()
        .map(|id| before[id][0].as_str().unwrap_or("?"))
        .collect();
    assert!(
        statuses.contains(&"CONFIRMED") && statuses.contains(&"CANCELLED"),
        "the shop has confirmed and cancelled orders: {before}"
    );
    let status = keel
        .terminate(Duration::from_secs(60))
        .expect("keel run stops");
    assert!(status.success(), "keel run exited with {status}");

    let saga = format!("{name}-saga");
    let state_dir = run.state_dir.path().to_string_lossy().into_owned();
    // A stopped instance's static membership lapses after the session timeout: until then
    // the reset refuses, naming the members.
    let start = Instant::now();
    loop {
        let out = run
            .keel(&[
                "reset",
                "--application-id",
                &saga,
                "--state-dir",
                &state_dir,
            ])
            .output()
            .expect("keel reset runs");
        let stderr = text(&out.stderr);
        if out.status.success() {
            break;
        }
        assert!(
            stderr.contains("member") && start.elapsed() < Duration::from_secs(90),
            "keel reset failed: {stderr}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // Small fetches, as a shop with a backlog has them: the replay reads the topics
    // interleaved, so replies come before and between the commands they answer.
    let small_fetches = run.state_dir.path().join("small-fetches.toml");
    std::fs::write(
        &small_fetches,
        "[kafka.client]\n\"max.partition.fetch.bytes\" = \"600\"\n",
    )
    .expect("a config file");
    let config = small_fetches.to_string_lossy().into_owned();
    let mut keel = run.spawn("keel run (after the reset)", &["--config", &config, "run"]);
    common::wait_ready(&client, &run.api, Duration::from_secs(120)).await;
    // The replay decides every order again (the order sink takes the decisions as
    // duplicates); then longer than every deadline passes, so a saga still waiting shows.
    let start = Instant::now();
    loop {
        let replayed = metric_total(&client, &run.api, "saga_decisions_total", "").await;
        if replayed >= decided {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the replay decided {replayed} of the first run's {decided} decisions"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(12)).await;
    let replayed = metric_total(&client, &run.api, "saga_decisions_total", "").await;
    assert_eq!(
        replayed, decided,
        "the replay decided what the first run decided"
    );
    let compensations = metric_total(
        &client,
        &run.api,
        "saga_compensations_total",
        "void_payment",
    )
    .await;
    assert_eq!(compensations, 0.0, "the replay voids no payment");
    let kept = metric_total(&client, &run.api, "keel_saga_early_replies_total", "kept").await;
    let applied = metric_total(
        &client,
        &run.api,
        "keel_saga_early_replies_total",
        "applied",
    )
    .await;
    eprintln!("replay: {kept} replies read before their commands, {applied} applied");
    assert_eq!(
        kept, applied,
        "every reply kept for its command was applied"
    );
    let after = shop_view(&client, &run, &orders, &skus).await;
    assert_eq!(after, before, "the replay changed the shop");

    let status = keel
        .terminate(Duration::from_secs(60))
        .expect("keel run stops");
    assert!(status.success(), "keel run exited with {status}");
    run.clean_up(&stack, &name).await;
}
