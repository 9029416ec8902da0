//! `GET /finance/reconciliation`: served from the reconciliation role's view when the process
//! hosts it, `501` problem+json (`not-served-here`, no Retry-After: it never will be here)
//! naming the role when it does not; and, like the agreement tests of the other route files,
//! every documented status is really answered.

mod common;

use std::sync::Arc;

use common::{Base, Server, assert_agree, documented, observe, send};
use keel_ingest_api::{ApiDeps, Endpoint, command_producer};
use keel_processors::reconciliation::{Mismatch, MismatchKind, ReconciliationView};
use reqwest::StatusCode;

async fn serve(base: &Base, finance: Option<ReconciliationView>) -> anyhow::Result<Server> {
    let config = base.config();
    let producer = command_producer(&base.stack.kafka_bootstrap, &config, &[])?;
    let running = keel_ingest_api::spawn(
        config,
        ApiDeps {
            producer,
            codec: base.codec.clone(),
            pool: base.unused_orders_pool()?,
            ledger: None,
            inventory: None,
            finance,
            registry: prometheus::Registry::new(),
            ready: Arc::new(|| Ok(())),
        },
        base.stop.clone(),
    )
    .await?;
    Ok(Server {
        base: format!("http://{}", running.addr),
    })
}

fn open_mismatch(order_id: &str) -> Mismatch {
    Mismatch {
        order_id: order_id.to_owned(),
        kind: MismatchKind::AuthorizedButCancelled,
        opened_at: 1_767_225_601_000,
        since: 1_767_225_600_000,
        detail: "order cancelled but payment pay-1 is CAPTURED".to_owned(),
        payment_id: Some("pay-1".to_owned()),
        order_status: Some("CANCELLED".to_owned()),
        payment_status: Some("CAPTURED".to_owned()),
        order_total_minor: Some(2_500),
        captured_minor: Some(2_500),
        currency: Some("EUR".to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_finance_view_answers_from_the_reconciliation_role_or_says_it_is_not_here()
-> anyhow::Result<()> {
    let base = Base::new("finapi", "finance_commands").await?;
    let view = ReconciliationView::new();
    let source_ms = chrono_now_ms() - 42_000;
    view.observe("keel-ledger-cdc", source_ms, source_ms + 10);
    view.set_open(2, "order-7", vec![open_mismatch("order-7")]);
    let with_role = serve(&base, Some(view)).await?;
    let without = serve(&base, None).await?;

    let doc = send(base.http.get(with_role.url("/openapi.json"))).await?;
    let documented = documented(
        &doc.body,
        Endpoint::ALL.into_iter().filter(|e| e.is_finance()),
    )?;
    assert_eq!(documented.len(), 1);

    let ok = send(base.http.get(with_role.url("/finance/reconciliation"))).await?;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    let mismatches = ok.body["openMismatches"].as_array().expect("a list");
    assert_eq!(mismatches.len(), 1, "{}", ok.text);
    assert_eq!(mismatches[0]["orderId"], "order-7");
    assert_eq!(mismatches[0]["kind"], "AUTHORIZED_BUT_CANCELLED");
    assert_eq!(ok.body["partitions"], serde_json::json!([2]));
    let lag = ok.body["connectors"][0]["lagSeconds"]
        .as_f64()
        .expect("a lag");
    assert!((42.0..60.0).contains(&lag), "{}", ok.text);
    assert!(ok.body["asOf"].is_string(), "{}", ok.text);

    let not_here = send(base.http.get(without.url("/finance/reconciliation"))).await?;
    assert_eq!(
        (not_here.status, not_here.slug()),
        (StatusCode::NOT_IMPLEMENTED, "not-served-here"),
        "{}",
        not_here.text
    );
    assert!(
        not_here.header("retry-after").is_none(),
        "{}",
        not_here.text
    );
    assert!(
        not_here.text.contains("reconciliation role"),
        "{}",
        not_here.text
    );

    let observed = observe(vec![
        (
            Endpoint::FinanceReconciliation,
            base.http.get(with_role.url("/finance/reconciliation")),
        ),
        (
            Endpoint::FinanceReconciliation,
            base.http.get(without.url("/finance/reconciliation")),
        ),
    ])
    .await?;
    assert_agree(&documented, &observed);
    base.stop.cancel();
    Ok(())
}

fn chrono_now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}
