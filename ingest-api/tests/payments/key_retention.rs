//! `api_payment_requests`' retention (`keel_ingest_api::idempotency::retention::payments`)
//! against the real PostgreSQL ledger: expired rows go in batches; fresh and in-progress rows,
//! and answered rows whose command the payment service has not applied yet, stay; and a key
//! retried after its row was purged (by the API's own background purge) is answered by the
//! ledger — `409 payment-exists`, the refund replayed — with one authorization, one capture
//! and one refund at the PSP, even when a second create-intent and authorize for the payment
//! reach the payment service.

use keel_ingest_api::idempotency::retention::{Retention, payments::purge_once};

use super::*;

const HOUR: i32 = 1;
const CREATE: &str = "POST /payments";

impl Env {
    /// An `api_payment_requests` row of scope `bearer:x` for `route`, claimed `age_hours` ago,
    /// with `response_status` `status` (`None`: in progress) and `body`.
    #[allow(clippy::too_many_arguments)]
    async fn key_row(
        &self,
        route: &str,
        key: &str,
        payment_id: &str,
        command_id: &str,
        status: Option<i32>,
        body: Option<&str>,
        age_hours: i32,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO api_payment_requests (scope, route, idem_key, request_hash, payment_id, \
             order_id, command_id, response_status, response_body, created_at) VALUES \
             ('bearer:x', $1, $2, repeat('0', 64), $3, 'order-' || $2, $4, $5, $6, \
             now() - make_interval(hours => $7))",
        )
        .bind(route)
        .bind(key)
        .bind(payment_id)
        .bind(command_id)
        .bind(status)
        .bind(body)
        .bind(age_hours)
        .execute(&self.pg)
        .await?;
        Ok(())
    }

    /// A `processed_commands` row: the payment service applied `command_id`.
    async fn processed(&self, command_id: &str) -> anyhow::Result<()> {
        sqlx::query("INSERT INTO processed_commands (command_id) VALUES ($1)")
            .bind(command_id)
            .execute(&self.pg)
            .await?;
        Ok(())
    }

    /// A `payments` row with id `payment_id` (for an order of its own).
    async fn ledger_payment(&self, payment_id: &str) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO payments (payment_id, order_id, customer_id, amount_minor, currency, \
             payment_method, status) VALUES ($1, $2, 'cust-1', 1000, 'EUR', 'tok_visa', 'INTENT')",
        )
        .bind(payment_id)
        .bind(unique("order"))
        .execute(&self.pg)
        .await?;
        Ok(())
    }

    async fn payment_keys(&self) -> anyhow::Result<BTreeSet<String>> {
        let keys: Vec<String> = sqlx::query_scalar("SELECT idem_key FROM api_payment_requests")
            .fetch_all(&self.pg)
            .await?;
        Ok(keys.into_iter().collect())
    }
}

/// The default window (24 h; in-progress rows 48 h), in batches of `batch_size`.
fn retention(batch_size: u32) -> Retention {
    Retention {
        batch_size,
        ..Retention::from_config(&ApiConfig::default())
    }
}

fn keys(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_retention_expired_payment_keys_go_and_fresh_in_progress_and_unapplied_ones_stay()
-> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        // This server's own purge keeps keys a year: only the purge_once below deletes rows.
        let server = env
            .serve(
                ApiConfig {
                    idempotency_retention_hours: 8_760,
                    ..env.config()
                },
                None,
            )
            .await?;
        let refund_route = |p: &str| format!("POST /payments/{p}/refund");
        // Expired, 25 h ago: an intent the ledger has; an intent the payment service applied
        // (and refused: no payment); a refund it applied; failed (503) requests of both
        // routes; an in-progress claim 49 h old.
        env.key_row(
            CREATE,
            "intent-written",
            "pay-w",
            "c-w",
            Some(202),
            Some("{}"),
            25 * HOUR,
        )
        .await?;
        env.ledger_payment("pay-w").await?;
        env.key_row(
            CREATE,
            "intent-refused",
            "pay-x",
            "c-x",
            Some(202),
            Some("{}"),
            25 * HOUR,
        )
        .await?;
        env.processed("c-x").await?;
        env.key_row(
            &refund_route("pay-w"),
            "refund-applied",
            "pay-w",
            "c-r",
            Some(202),
            Some("{}"),
            25 * HOUR,
        )
        .await?;
        env.processed("c-r").await?;
        env.key_row(
            &refund_route("pay-w"),
            "refund-failed",
            "pay-w",
            "c-rf",
            Some(503),
            None,
            25 * HOUR,
        )
        .await?;
        env.key_row(
            CREATE,
            "intent-failed",
            "pay-f",
            "c-f",
            Some(503),
            None,
            25 * HOUR,
        )
        .await?;
        env.key_row(
            CREATE,
            "intent-ancient",
            "pay-a",
            "c-a",
            None,
            None,
            49 * HOUR,
        )
        .await?;
        // Kept: inside the window; in progress for less than twice the window; an accepted
        // intent and an accepted refund the payment service has not applied (GET answers
        // REQUESTED from the first; the second binds the key to its body).
        env.ledger_payment("pay-n").await?;
        env.key_row(
            CREATE,
            "intent-fresh",
            "pay-n",
            "c-n",
            Some(202),
            Some("{}"),
            23 * HOUR,
        )
        .await?;
        env.processed("c-n").await?;
        env.key_row(
            &refund_route("pay-n"),
            "refund-fresh-failed",
            "pay-n",
            "c-nf",
            Some(503),
            None,
            23 * HOUR,
        )
        .await?;
        env.key_row(
            CREATE,
            "intent-in-progress",
            "pay-i",
            "c-i",
            None,
            None,
            25 * HOUR,
        )
        .await?;
        let accepted = json!({"paymentId": "pay-u", "orderId": "order-u", "status": "REQUESTED",
                              "amount": {"amountMinor": 700, "currency": "EUR"}})
        .to_string();
        env.key_row(
            CREATE,
            "intent-unwritten",
            "pay-u",
            "c-u",
            Some(202),
            Some(&accepted),
            25 * HOUR,
        )
        .await?;
        env.key_row(
            &refund_route("pay-w"),
            "refund-unapplied",
            "pay-w",
            "c-ru",
            Some(202),
            Some("{}"),
            25 * HOUR,
        )
        .await?;

        let purged = purge_once(&env.pg, &retention(1_000)).await?;

        assert_eq!(purged, 6);
        assert_eq!(
            env.payment_keys().await?,
            keys(&[
                "intent-fresh",
                "refund-fresh-failed",
                "intent-in-progress",
                "intent-unwritten",
                "refund-unapplied",
            ])
        );
        let requested = get_payment(&env, &server, "pay-u").await?;
        assert_eq!(requested.status, StatusCode::OK, "{}", requested.text);
        assert_eq!(
            (
                requested.body["status"].as_str(),
                requested.body["amount"]["amountMinor"].as_i64()
            ),
            (Some("REQUESTED"), Some(700)),
            "an accepted intent the ledger has not written still reads REQUESTED"
        );
        assert_eq!(
            purge_once(&env.pg, &retention(1_000)).await?,
            0,
            "a second round finds nothing"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_retention_a_backlog_larger_than_one_batch_goes_in_several_batches()
-> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        for i in 0..25 {
            let key = format!("old-{i:02}");
            env.key_row(
                CREATE,
                &key,
                &format!("pay-{key}"),
                &key,
                Some(503),
                None,
                30 * HOUR,
            )
            .await?;
        }
        for i in 0..3 {
            let key = format!("new-{i}");
            env.key_row(
                CREATE,
                &key,
                &format!("pay-{key}"),
                &key,
                Some(503),
                None,
                0,
            )
            .await?;
        }

        let purged = purge_once(&env.pg, &retention(10)).await?;

        assert_eq!(purged, 25, "three batches: 10, 10, 5");
        let index: Option<String> = sqlx::query_scalar(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'api_payment_requests_created'",
        )
        .fetch_optional(&env.pg)
        .await?;
        assert!(
            index.is_some_and(|d| d.ends_with("(created_at)")),
            "ledger migration 0005 indexes created_at"
        );
        assert_eq!(
            env.payment_keys().await?,
            keys(&["new-0", "new-1", "new-2"])
        );
        Ok(())
    })
    .await
}

/// `keel_api_idempotency_keys_purged_total{table="api_payment_requests"}` as `/metrics` shows it.
async fn purged_metric(env: &Env, server: &Server) -> anyhow::Result<Option<u64>> {
    let metrics = send(env.http.get(server.url("/metrics"))).await?;
    Ok(metrics
        .text
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                r#"keel_api_idempotency_keys_purged_total{table="api_payment_requests"} "#,
            )
        })
        .and_then(|v| v.trim().parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_retention_a_key_retried_after_its_row_is_purged_is_answered_by_the_ledger_and_moves_no_money_twice()
-> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        let server = env
            .serve(
                ApiConfig {
                    idempotency_purge_interval_s: 1,
                    ..env.config()
                },
                None,
            )
            .await?;
        assert_eq!(
            purged_metric(&env, &server).await?,
            Some(0),
            "the series exists at start"
        );
        let psp = env.psp(&server, 0.0).await?;
        env.worker(&psp);
        let order_id = unique("order");
        let intent = intent_body(&order_id, 1_000, "tok_visa");
        let created = send(create_payment(&env, &server, Some("k-intent"), &intent)).await?;
        assert_eq!(created.status, StatusCode::ACCEPTED, "{}", created.text);
        let p = Payment {
            payment_id: format!("pay-{order_id}"),
            order_id: order_id.clone(),
        };
        let confirm = || {
            env.http
                .post(server.url(&format!("/payments/{}/confirm", p.payment_id)))
        };
        let confirmed = send(confirm()).await?;
        assert_eq!(confirmed.status, StatusCode::ACCEPTED, "{}", confirmed.text);
        wait_payment(&env, &server, &p.payment_id, "AUTHORIZED", |b| {
            b["status"] == "AUTHORIZED"
        })
        .await?;
        env.send(
            &p,
            &unique("capture"),
            PaymentCommandBody::Capture(CapturePayment { amount: eur(1_000) }),
        )
        .await?;
        wait_payment(&env, &server, &p.payment_id, "CAPTURED", |b| {
            b["status"] == "CAPTURED"
        })
        .await?;
        let refund_body = json!({"amountMinor": 400, "reason": "CUSTOMER_REQUEST"});
        let refunded = send(refund(
            &env,
            &server,
            &p.payment_id,
            Some("k-refund"),
            &refund_body,
        ))
        .await?;
        assert_eq!(refunded.status, StatusCode::ACCEPTED, "{}", refunded.text);
        wait_payment(&env, &server, &p.payment_id, "the refund", |b| {
            b["status"] == "PARTIALLY_REFUNDED"
        })
        .await?;
        assert_eq!(env.payment_keys().await?, keys(&["k-intent", "k-refund"]));

        // A day and an hour later: the API's background purge forgets both keys.
        sqlx::query("UPDATE api_payment_requests SET created_at = now() - interval '25 hours'")
            .execute(&env.pg)
            .await?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while !env.payment_keys().await?.is_empty() {
            assert!(
                Instant::now() < deadline,
                "the expired payment keys were not purged within 15 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(purged_metric(&env, &server).await?, Some(2));

        // The same keys again, as a client retrying after the window.
        let again = send(create_payment(&env, &server, Some("k-intent"), &intent)).await?;
        assert_eq!(
            (
                again.status,
                again.slug(),
                again.body["currentStatus"].as_str()
            ),
            (
                StatusCode::CONFLICT,
                "payment-exists",
                Some("PARTIALLY_REFUNDED")
            ),
            "{}",
            again.text
        );
        let other_key = send(create_payment(&env, &server, Some("k-other"), &intent)).await?;
        assert_eq!(
            (other_key.status, other_key.slug()),
            (StatusCode::CONFLICT, "payment-exists"),
            "{}",
            other_key.text
        );
        let refund_again = send(refund(
            &env,
            &server,
            &p.payment_id,
            Some("k-refund"),
            &refund_body,
        ))
        .await?;
        assert_eq!(
            refund_again.status,
            StatusCode::ACCEPTED,
            "{}",
            refund_again.text
        );
        assert_eq!(refund_again.header("idempotent-replayed"), Some("true"));
        assert_eq!(refund_again.body["refundId"], refunded.body["refundId"]);
        let refund_other = send(refund(
            &env,
            &server,
            &p.payment_id,
            Some("k-refund"),
            &json!({"amountMinor": 600, "reason": "CUSTOMER_REQUEST"}),
        ))
        .await?;
        assert_eq!(
            (refund_other.status, refund_other.slug()),
            (StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused"),
            "{}",
            refund_other.text
        );
        let confirm_again = send(confirm()).await?;
        assert_eq!(
            (confirm_again.status, confirm_again.slug()),
            (StatusCode::CONFLICT, "illegal-transition"),
            "{}",
            confirm_again.text
        );

        // Had the API let them through (what its row used to block): a second create-intent
        // for the payment under a new command id and another amount, and a second authorize.
        // The ledger applies neither.
        let (intent_again, authorize_again) = (unique("intent-again"), unique("authorize-again"));
        env.send(
            &p,
            &intent_again,
            PaymentCommandBody::CreateIntent(CreatePaymentIntent {
                customer_id: "cust-1".to_owned(),
                amount: eur(9_999),
                payment_method: "tok_visa".to_owned(),
            }),
        )
        .await?;
        env.send(
            &p,
            &authorize_again,
            PaymentCommandBody::Authorize(AuthorizePayment { amount: eur(9_999) }),
        )
        .await?;
        let deadline = Instant::now() + PATIENCE;
        loop {
            let done: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM processed_commands WHERE command_id IN ($1, $2)",
            )
            .bind(&intent_again)
            .bind(&authorize_again)
            .fetch_one(&env.pg)
            .await?;
            if done == 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the payment service did not apply them"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let view = get_payment(&env, &server, &p.payment_id).await?;
        assert_eq!(view.body["status"], "PARTIALLY_REFUNDED", "{}", view.text);
        assert_eq!(view.body["amount"]["amountMinor"], 1_000, "{}", view.text);
        assert_eq!(view.body["refunded"]["amountMinor"], 400, "{}", view.text);
        assert_eq!(
            view.body["refunds"].as_array().map(Vec::len),
            Some(1),
            "{}",
            view.text
        );
        let payments_of_order: i64 =
            sqlx::query_scalar("SELECT count(*) FROM payments WHERE order_id = $1")
                .bind(&order_id)
                .fetch_one(&env.pg)
                .await?;
        assert_eq!(payments_of_order, 1);
        let stats: Stats = env
            .http
            .get(format!("{psp}/admin/stats"))
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(
            (stats.authorizations, stats.captures, stats.refunds),
            (1, 1, 1),
            "{stats:?}"
        );
        // The API sent one create-intent and one refund, whatever the retries.
        let commands = env.commands(6, Duration::from_secs(1)).await?;
        let from_api = |c: &PaymentCommand| {
            c.command_id != intent_again
                && matches!(
                    c.command,
                    PaymentCommandBody::CreateIntent(_) | PaymentCommandBody::Refund(_)
                )
        };
        assert_eq!(
            commands.iter().filter(|(_, c)| from_api(c)).count(),
            2,
            "{commands:#?}"
        );
        Ok(())
    })
    .await
}

/// A retry that claims its key just as the purge deletes the key's expired row (between the
/// claim's insert, which conflicts with the row, and its read, which finds nothing) is a new
/// request: accepted, not mistaken for another key's claim of the payment (409).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_retention_a_key_purged_while_a_retry_claims_it_is_claimed_afresh() -> anyhow::Result<()>
{
    with_env(Env::new().await?, |env| async move {
        let server = env.serve(env.config(), None).await?;
        let order_id = unique("order");
        let payment_id = format!("pay-{order_id}");
        // The key's request failed (503) a day ago; its row expires as the retry arrives. The
        // trigger plays the purge: after the retry's insert statement, before its read.
        env.key_row(
            CREATE,
            "vanishing",
            &payment_id,
            "c-v",
            Some(503),
            None,
            25 * HOUR,
        )
        .await?;
        sqlx::raw_sql(
            "CREATE FUNCTION purge_as_claimed() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN DELETE FROM api_payment_requests \
             WHERE idem_key = 'vanishing' AND response_status = 503; RETURN NULL; END $$; \
             CREATE TRIGGER purge_as_claimed AFTER INSERT ON api_payment_requests \
             FOR EACH STATEMENT EXECUTE FUNCTION purge_as_claimed();",
        )
        .execute(&env.pg)
        .await?;
        let body = intent_body(&order_id, 1_500, "tok_visa");

        let retry = send(create_payment(&env, &server, Some("vanishing"), &body)).await?;

        assert_eq!(retry.status, StatusCode::ACCEPTED, "{}", retry.text);
        assert_eq!(retry.body["paymentId"], json!(payment_id));
        let stored: Vec<(Option<i32>, String)> = sqlx::query_as(
            "SELECT response_status, command_id FROM api_payment_requests \
             WHERE idem_key = 'vanishing'",
        )
        .fetch_all(&env.pg)
        .await?;
        assert!(
            matches!(stored.as_slice(), [(Some(202), c)] if c != "c-v"),
            "the retry's own claim, answered: {stored:?}"
        );
        let commands = env.commands(1, Duration::from_secs(1)).await?;
        assert_eq!(commands.len(), 1, "{commands:#?}");
        Ok(())
    })
    .await
}
