//! Every `keel run` process serves `/metrics`, `/health` and `/ready` (src/admin.rs): a process
//! without the `api` role on its admin listener (`[metrics].listen`), a process with it on the
//! API's address only (the admin listener is not bound). Either way that process samples the
//! consumer groups' lag into `keel_consumer_group_lag_records`.

mod common;

use std::time::{Duration, Instant};

use common::{Run, wait_ready};
use keel_tests::Stack;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

async fn get(client: &reqwest::Client, url: &str) -> Option<(u16, String)> {
    let r = client.get(url).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.unwrap_or_default()))
}

/// Commits offset 0 on partition 0 of `topic` for group `group` (one of the run's own groups
/// that `keel lag` and the sampler report — `src/lag.rs` `keel_groups` — whose role the run
/// does not start: the order sink's), so the lag sampler has a group with a backlog to report.
fn commit_probe_group(bootstrap: &str, group: &str, topic: &str) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(0))
        .expect("an offset");
    consumer
        .commit(&tpl, CommitMode::Sync)
        .expect("the probe group commits");
}

/// Polls `url` until `/metrics` contains every one of `needles`; returns the last page.
async fn metrics_with(
    client: &reqwest::Client,
    url: &str,
    needles: &[&str],
    within: Duration,
) -> String {
    let start = Instant::now();
    loop {
        let page = get(client, url).await.map(|(_, p)| p).unwrap_or_default();
        let missing: Vec<&&str> = needles.iter().filter(|n| !page.contains(**n)).collect();
        if missing.is_empty() {
            return page;
        }
        assert!(
            start.elapsed() < within,
            "{url} lacks {missing:?} after {within:?}:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_without_the_api_role_serves_metrics_health_and_ready_on_its_admin_listener() {
    let stack = Stack::from_env();
    let (name, run) = Run::new(&stack).await;
    let client = reqwest::Client::new();
    let mut keel = run.spawn(
        "keel run --roles saga,inventory",
        &["run", "--roles", "saga,inventory"],
    );

    // /health answers as soon as the listener is up; /ready once the tasks are restored.
    let start = Instant::now();
    let mut saw_not_ready = false;
    loop {
        if let Some((status, body)) = get(&client, &format!("{}/ready", run.admin)).await {
            if status == 200 {
                assert!(body.contains("READY"), "{body}");
                break;
            }
            assert_eq!(status, 503, "/ready is 200 or 503: {body}");
            assert!(body.contains("not-ready"), "a problem+json body: {body}");
            saw_not_ready = true;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "/ready on the admin listener did not turn 200"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("admin /ready was 503 before it turned 200: {saw_not_ready}");
    let (status, body) = get(&client, &format!("{}/health", run.admin))
        .await
        .expect("/health answers");
    assert_eq!((status, body.contains("UP")), (200, true), "{body}");

    // The saga's, the inventory's and the runtime's metrics (both applications), and the lag of
    // a group of this application, sampled by this process.
    commit_probe_group(
        &stack.kafka_bootstrap,
        &format!("{name}-order-sink"),
        &format!("{name}.orders.commands.v1"),
    );
    let page = metrics_with(
        &client,
        &format!("{}/metrics", run.admin),
        &[
            "saga_open{step=\"awaiting_inventory\"",
            "inventory_hold_ttl_ms",
            &format!("keel_commits_total{{application=\"{name}-saga\"}}"),
            &format!("keel_commits_total{{application=\"{name}-inventory\"}}"),
            &format!("keel_consumer_group_lag_records{{group=\"{name}-order-sink\""),
        ],
        Duration::from_secs(60),
    )
    .await;
    assert!(
        !page.contains("keel_api_requests_total"),
        "no api role, no API metrics:\n{page}"
    );
    // The API's port is not served by this process.
    assert!(
        get(&client, &format!("{}/health", run.api)).await.is_none(),
        "a run without the api role must not listen on [api].listen"
    );
    assert!(
        keel.terminate(Duration::from_secs(60)).is_some(),
        "keel run did not stop on SIGTERM"
    );
    run.clean_up(&stack, &name).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_with_the_api_role_serves_metrics_on_the_api_port_only() {
    let stack = Stack::from_env();
    let (name, run) = Run::new(&stack).await;
    let client = reqwest::Client::new();
    let mut keel = run.spawn("keel run --roles api", &["run", "--roles", "api"]);
    wait_ready(&client, &run.api, Duration::from_secs(120)).await;
    commit_probe_group(
        &stack.kafka_bootstrap,
        &format!("{name}-order-sink"),
        &format!("{name}.orders.commands.v1"),
    );
    // The lag sampler runs in this process too (once: a second registration would fail).
    metrics_with(
        &client,
        &format!("{}/metrics", run.api),
        &[
            "keel_api_orders_accepted_total",
            &format!("keel_consumer_group_lag_records{{group=\"{name}-order-sink\""),
        ],
        Duration::from_secs(60),
    )
    .await;
    assert!(
        get(&client, &format!("{}/metrics", run.admin))
            .await
            .is_none(),
        "with the api role the admin listener must not be bound"
    );
    assert!(
        keel.terminate(Duration::from_secs(60)).is_some(),
        "keel run did not stop on SIGTERM"
    );
    run.clean_up(&stack, &name).await;
}
