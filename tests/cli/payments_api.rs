//! The payments API through `keel run --roles api,payment` and `keel psp-mock`: an intent opened
//! with `POST /payments` and confirmed with `POST /payments/{id}/confirm` is authorized by the
//! PSP's signed asynchronous callback (delivered twice, applied once); a declined card fails;
//! `/metrics` counts the callback and the failure rate over both.

mod common;

use std::time::{Duration, Instant};

use common::{Run, wait_ready};
use keel_tests::Stack;
use serde_json::{Value, json};

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

/// Opens and confirms a payment of `amount_minor` EUR for `order` with `token`; returns its id.
async fn open_and_confirm(
    client: &reqwest::Client,
    api: &str,
    order: &str,
    amount_minor: i64,
    token: &str,
) -> String {
    let accepted = post(
        client,
        format!("{api}/payments"),
        Some(&format!("open-{order}")),
        json!({"orderId": order, "amount": {"amountMinor": amount_minor, "currency": "EUR"},
               "paymentMethod": token, "customerId": "cust-7"}),
    )
    .await;
    assert_eq!(accepted["status"], "REQUESTED", "{accepted}");
    let id = accepted["paymentId"]
        .as_str()
        .expect("a payment id")
        .to_owned();
    let confirmed = post(
        client,
        format!("{api}/payments/{id}/confirm"),
        None,
        json!({}),
    )
    .await;
    assert_eq!(confirmed["status"], "CONFIRMATION_REQUESTED", "{confirmed}");
    id
}

async fn settled(client: &reqwest::Client, api: &str, id: &str) -> Value {
    let start = Instant::now();
    let mut last = Value::Null;
    while start.elapsed() < Duration::from_secs(60) {
        let r = client
            .get(format!("{api}/payments/{id}"))
            .send()
            .await
            .expect("GET /payments/{id}");
        assert_eq!(
            r.status().as_u16(),
            200,
            "an accepted payment is never a 404"
        );
        last = r.json().await.expect("JSON");
        if matches!(last["status"].as_str(), Some("AUTHORIZED" | "FAILED")) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("payment {id} did not settle; last seen: {last}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_intent_is_opened_confirmed_and_authorized_by_the_psps_callback_through_keel_run() {
    let stack = Stack::from_env();
    let (name, run) = Run::new(&stack).await;
    let _psp = run.spawn("psp-mock", &["psp-mock"]);
    let mut keel = run.spawn(
        "keel run --roles api,payment",
        &["run", "--roles", "api,payment"],
    );
    let client = reqwest::Client::new();
    wait_ready(&client, &run.api, Duration::from_secs(120)).await;

    let pending = open_and_confirm(
        &client,
        &run.api,
        &format!("{name}-a"),
        2_500,
        "tok_pending",
    )
    .await;
    let view = settled(&client, &run.api, &pending).await;
    assert_eq!(view["status"], "AUTHORIZED", "{view:#}");
    assert_eq!(view["customerId"], "cust-7");
    let callbacks: Vec<&Value> = view["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .filter(|a| a["pspEventId"].is_string())
        .collect();
    assert_eq!(callbacks.len(), 1, "one event, delivered twice: {view:#}");
    assert_eq!(callbacks[0]["stale"], false, "{view:#}");

    let declined = open_and_confirm(
        &client,
        &run.api,
        &format!("{name}-b"),
        1_000,
        "tok_decline_insufficient_funds",
    )
    .await;
    let view = settled(&client, &run.api, &declined).await;
    assert_eq!(view["status"], "FAILED", "{view:#}");
    let again = client
        .post(format!("{}/payments/{declined}/confirm", run.api))
        .send()
        .await
        .expect("confirm");
    assert_eq!(again.status().as_u16(), 409);
    let problem: Value = again.json().await.expect("JSON");
    assert_eq!(problem["currentStatus"], "FAILED", "{problem}");

    let stats = run.psp_stats(&client).await;
    assert_eq!(stats["authorizations"], json!(2), "{stats}");
    assert_eq!(stats["callbacks_delivered"], json!(2), "{stats}");
    let metrics = client
        .get(format!("{}/metrics", run.api))
        .send()
        .await
        .expect("/metrics")
        .text()
        .await
        .expect("text");
    for line in [
        r#"payment_callbacks_total{outcome="succeeded",stale="false"} 1"#,
        r#"payment_attempts_total{kind="authorize",outcome="pending"} 1"#,
        r#"payment_attempts_total{kind="authorize",outcome="declined"} 1"#,
        "payment_failure_rate 0.5",
        "payment_psp_calls_in_flight 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }

    let status = keel
        .terminate(Duration::from_secs(60))
        .expect("keel run stops on SIGTERM");
    assert!(status.success(), "keel run exited with {status}");
    run.clean_up(&stack, &name).await;
}
