//! `kill -9` of the payment service while its PSP calls are in flight, then a restart: the PSP
//! mock counts one authorization per payment (however many calls the replays made) and every
//! payment ends `AUTHORIZED` with one authorize attempt and one `payment.authorized` outbox row.
//!
//! The API and the payment service run as two `keel run` processes (`--roles api` and
//! `--roles payment`), so only the payment service dies. The PSP is made slow through its admin
//! endpoint (`PUT /admin/behaviour`), so every kill lands while the calls are still running at
//! the PSP; the rounds sweep the moment of the kill across the call. Payments are opened and
//! confirmed through the payments API (`POST /payments`, `POST /payments/{id}/confirm`).

mod common;

use std::time::{Duration, Instant};

use common::{Proc, Run, wait_ready};
use keel_tests::Stack;
use serde_json::{Value, json};
use sqlx::Connection;

/// How long the PSP takes for each authorization in these tests.
const PSP_LATENCY_MS: u64 = 6_000;
/// Payments per round.
const PER_ROUND: usize = 4;
/// When each round's kill lands, after the PSP received the round's calls.
const KILL_AFTER_MS: [u64; 3] = [50, 2_500, 5_000];

fn stat(stats: &Value, name: &str) -> u64 {
    stats[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} in {stats}"))
}

fn kill_9(proc: &mut Proc) {
    let pid = proc.child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status();
    assert!(killed.is_ok_and(|s| s.success()), "kill -9 {pid}");
    let _ = proc.child.wait();
}

async fn post(client: &reqwest::Client, url: String, key: Option<&str>, body: Value) -> Value {
    let mut request = client.post(url).json(&body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.expect("the API answers");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(status, 202, "{body}");
    body
}

/// Polls `GET /payments/{id}` until its status is one of `statuses`.
async fn wait_status(
    client: &reqwest::Client,
    api: &str,
    id: &str,
    statuses: &[&str],
    within: Duration,
) -> Value {
    let start = Instant::now();
    let mut last = Value::Null;
    while start.elapsed() < within {
        let r = client
            .get(format!("{api}/payments/{id}"))
            .send()
            .await
            .expect("GET /payments/{id}");
        if r.status().is_success() {
            last = r.json().await.expect("JSON");
            if statuses.iter().any(|s| last["status"] == *s) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("payment {id} never reached {statuses:?} within {within:?}; last seen: {last}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_the_payment_service_mid_psp_call_authorizes_each_payment_once() {
    let stack = Stack::from_env();
    let (name, mut run) = Run::new(&stack).await;
    // The PSP's slowness is not a timeout: the payment service waits for it.
    // (The saga's payment deadline must outlast it; no saga runs here, the check still holds.)
    run.env.retain(|(k, _)| {
        k != "KEEL__PAYMENT__PSP_TIMEOUT_MS" && k != "KEEL__SAGA__PAYMENT_TIMEOUT_MS"
    });
    run.env.extend([
        ("KEEL__PAYMENT__PSP_TIMEOUT_MS".into(), "30000".into()),
        ("KEEL__SAGA__PAYMENT_TIMEOUT_MS".into(), "60000".into()),
    ]);
    let _psp = run.spawn("psp-mock", &["psp-mock"]);
    let _api = run.spawn("keel run --roles api", &["run", "--roles", "api"]);
    let mut payment = run.spawn("keel run --roles payment", &["run", "--roles", "payment"]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a client");
    wait_ready(&client, &run.api, Duration::from_secs(120)).await;
    let behaviour = client
        .put(format!("{}/admin/behaviour", run.psp))
        .json(&json!({"latency_min_ms": PSP_LATENCY_MS, "latency_max_ms": PSP_LATENCY_MS}))
        .send()
        .await
        .expect("PUT /admin/behaviour");
    assert!(behaviour.status().is_success(), "the PSP got slow");

    let mut all = Vec::new();
    for (round, kill_after) in KILL_AFTER_MS.into_iter().enumerate() {
        let before = run.psp_stats(&client).await;
        let mut ids = Vec::new();
        for i in 0..PER_ROUND {
            let order = format!("{name}-r{round}-o{i}");
            let accepted = post(
                &client,
                format!("{}/payments", run.api),
                Some(&format!("open-{order}")),
                json!({"orderId": order, "amount": {"amountMinor": 1_000 + i, "currency": "EUR"},
                       "paymentMethod": "tok_visa"}),
            )
            .await;
            let id = accepted["paymentId"]
                .as_str()
                .expect("a payment id")
                .to_owned();
            post(
                &client,
                format!("{}/payments/{id}/confirm", run.api),
                None,
                json!({}),
            )
            .await;
            ids.push(id);
        }
        // Every call of the round is at the PSP, none answered yet: kill in the middle.
        let start = Instant::now();
        loop {
            let s = run.psp_stats(&client).await;
            if stat(&s, "authorization_calls")
                >= stat(&before, "authorization_calls") + PER_ROUND as u64
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "round {round}: the PSP never got the calls: {s}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(kill_after)).await;
        let at_kill = run.psp_stats(&client).await;
        assert!(
            stat(&at_kill, "authorizations") < stat(&before, "authorizations") + PER_ROUND as u64,
            "round {round}: the kill came after the PSP answered: {at_kill}"
        );
        kill_9(&mut payment);
        eprintln!("round {round}: killed the payment service {kill_after} ms into the PSP calls");
        payment = run.spawn(
            "keel run --roles payment (restarted)",
            &["run", "--roles", "payment"],
        );

        for id in &ids {
            let view = wait_status(
                &client,
                &run.api,
                id,
                &["AUTHORIZED", "FAILED", "VOIDED"],
                Duration::from_secs(90),
            )
            .await;
            assert_eq!(view["status"], "AUTHORIZED", "round {round}: {view:#}");
            let attempts: Vec<&Value> = view["attempts"]
                .as_array()
                .expect("attempts")
                .iter()
                .filter(|a| a["kind"] == "AUTHORIZE")
                .collect();
            assert_eq!(attempts.len(), 1, "round {round}: {view:#}");
            assert_eq!(attempts[0]["outcome"], "SUCCEEDED", "{view:#}");
        }
        let after = run.psp_stats(&client).await;
        assert_eq!(
            stat(&after, "authorizations") - stat(&before, "authorizations"),
            PER_ROUND as u64,
            "round {round}: one authorization per payment: {after}"
        );
        assert!(
            stat(&after, "authorization_calls") - stat(&before, "authorization_calls")
                > PER_ROUND as u64,
            "round {round}: the restarted service called the PSP again: {after}"
        );
        all.extend(ids);
    }

    // The ledger: one authorized event per payment, whatever the replays did.
    let mut pg = sqlx::PgConnection::connect(&run.postgres_url)
        .await
        .expect("postgres");
    let odd: Vec<(String, i64)> = sqlx::query_as(
        "SELECT p.payment_id, (SELECT count(*) FROM payment_outbox o \
         WHERE o.aggregate_id = p.order_id AND o.event_type LIKE '%payment.authorized.v1') \
         FROM payments p",
    )
    .fetch_all(&mut pg)
    .await
    .expect("outbox rows");
    assert_eq!(odd.len(), all.len(), "{odd:?}");
    for (payment_id, events) in &odd {
        assert_eq!(*events, 1, "{payment_id}: authorized events");
    }

    let status = payment
        .terminate(Duration::from_secs(60))
        .expect("the payment service stops on SIGTERM");
    assert!(
        status.success(),
        "keel run --roles payment exited with {status}"
    );
    run.clean_up(&stack, &name).await;
}
