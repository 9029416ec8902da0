//! The payment routes against the real stack: a fresh PostgreSQL ledger per test
//! (`keel_test_<random>`, migrated, dropped at the end), a random payments commands topic and
//! registry subjects, the PSP mock on a free port and, where a test needs the ledger to move,
//! the payment service itself (`keel_processors::payment::run`) consuming that topic.

/// Input the ledger cannot store, and callback headers in other spellings (issue 9 audit).
#[path = "payments/bad_input.rs"]
mod bad_input;
mod common;
/// `api_payment_requests`' retention: the purge, and keys retried after it.
#[path = "payments/key_retention.rs"]
mod key_retention;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::ops::Deref;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::{
    Answer, Base, Deps, OrdersDb, Server, TOKEN, TestEnv, assert_agree, documented, observe, send,
    with_database, with_env,
};
use keel_avro::records::{
    AuthorizePayment, CapturePayment, CreatePaymentIntent, Money, PaymentCommand,
    PaymentCommandBody, PspOutcome,
};
use keel_ingest_api::{ApiConfig, Endpoint};
use keel_processors::payment::{self, PaymentConfig};
use keel_processors::psp_mock::{
    PspMock, PspMockConfig, SIGNATURE_HEADER, Stats, TIMESTAMP_HEADER, sign,
};
use keel_tests::{PATIENCE, unique};
use rdkafka::producer::{FutureProducer, FutureRecord};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};

const SECRET: &str = "test-callback-secret";

/// One ledger database, commands topic and codec for a test.
struct Env {
    base: Base,
    db: String,
    admin: PgPool,
    pg: PgPool,
    /// `POST /payments` refuses a checkout's order id, which it looks up here.
    orders: OrdersDb,
}

impl Deref for Env {
    type Target = Base;
    fn deref(&self) -> &Base {
        &self.base
    }
}

impl TestEnv for Env {
    async fn finish(self) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.pg.close().await;
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db);
        if let Err(e) = sqlx::raw_sql(AssertSqlSafe(drop))
            .execute(&self.admin)
            .await
        {
            eprintln!("dropping {}: {e}", self.db);
        }
        self.orders.drop_database().await;
    }
}

impl Env {
    async fn new() -> anyhow::Result<Self> {
        let base = Base::new("payapi", "payments_commands").await?;
        let db = unique("keel_test");
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&base.stack.postgres_url)
            .await
            .context("connecting to PostgreSQL")?;
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .execute(&admin)
            .await
            .context("creating the test database (the keel role needs CREATEDB)")?;
        let pg = PgPoolOptions::new()
            .max_connections(10)
            .connect(&with_database(&base.stack.postgres_url, &db)?)
            .await?;
        payment::migrate(&pg).await?;
        let orders = OrdersDb::create(&base.stack.mysql_url, 4).await?;
        Ok(Self {
            base,
            db,
            admin,
            pg,
            orders,
        })
    }

    fn config(&self) -> ApiConfig {
        ApiConfig {
            payments_topic: self.topic.clone(),
            psp_callback_secret: SECRET.to_owned(),
            psp_callback_tolerance_s: 300,
            ..self.base.config()
        }
    }

    /// An API on this env's topic; `ledger` overrides the env's ledger.
    async fn serve(&self, config: ApiConfig, ledger: Option<PgPool>) -> anyhow::Result<Server> {
        let deps = Deps {
            pool: self.orders.pool.clone(),
            ledger: Some(ledger.unwrap_or_else(|| self.pg.clone())),
            inventory: None,
            ready: true,
        };
        self.base.serve(config, deps).await
    }

    /// A PSP mock that POSTs its callbacks to `server`, signed with [`SECRET`].
    async fn psp(&self, server: &Server, duplicate_rate: f64) -> anyhow::Result<String> {
        let mock = PspMock::bind(PspMockConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            latency_min_ms: 0,
            latency_max_ms: 5,
            pending_delay_ms: 200,
            duplicate_callback_rate: duplicate_rate,
            callback_url: Some(server.url("/psp/callbacks")),
            callback_secret: SECRET.to_owned(),
            ..PspMockConfig::default()
        })
        .await?;
        let url = mock.url();
        tokio::spawn(mock.run(self.stop.clone()));
        Ok(url)
    }

    /// The payment service consuming this env's topic, against the PSP at `psp_url`.
    fn worker(&self, psp_url: &str) {
        let config = PaymentConfig {
            psp_url: psp_url.to_owned(),
            group_id: unique("pay_group"),
            commit_interval_ms: 100,
            reconcile_interval_ms: 200,
            psp_retry_backoff_ms: 20,
            shutdown_grace_ms: 2_000,
            authorized_topic: unique("pay_authorized"),
            failed_topic: unique("pay_failed"),
            refunded_topic: unique("pay_refunded"),
            ..PaymentConfig::default()
        };
        // The worker's producer creates them (the broker auto-creates topics).
        for t in [
            &config.authorized_topic,
            &config.failed_topic,
            &config.refunded_topic,
        ] {
            self.topics.add_topic(t);
        }
        let (bootstrap, codec, pg, topic, stop) = (
            self.stack.kafka_bootstrap.clone(),
            self.codec.clone(),
            self.pg.clone(),
            self.topic.clone(),
            self.stop.clone(),
        );
        tokio::spawn(async move {
            let registry = prometheus::Registry::new();
            if let Err(e) =
                payment::run(config, &bootstrap, codec, pg, &topic, &registry, stop).await
            {
                eprintln!("the payment worker failed: {e}");
            }
        });
    }

    /// Send a command to the topic as the saga would (key: order id).
    async fn send(
        &self,
        payment: &Payment,
        command_id: &str,
        body: PaymentCommandBody,
    ) -> anyhow::Result<()> {
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.stack.kafka_bootstrap)
            .set("enable.idempotence", "true")
            .set("partitioner", "murmur2_random")
            .create()?;
        let command = PaymentCommand {
            command_id: command_id.to_owned(),
            payment_id: payment.payment_id.clone(),
            order_id: payment.order_id.clone(),
            issued_at: chrono::Utc::now().timestamp_millis(),
            causation_id: format!("cause-{command_id}"),
            correlation_id: payment.order_id.clone(),
            command: body,
        };
        let payload = self.codec.encode_to(&self.topic, &command).await?;
        producer
            .send(
                FutureRecord::to(&self.topic)
                    .key(&payment.order_id)
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
        Ok(())
    }

    /// A payment row written straight into the ledger (for tests that need no payment service).
    async fn insert_payment(&self, status: &str, captured_minor: i64) -> anyhow::Result<Payment> {
        let p = Payment::new();
        sqlx::query(
            "INSERT INTO payments (payment_id, order_id, customer_id, amount_minor, currency, \
             payment_method, status, psp_reference, captured_minor) \
             VALUES ($1, $2, 'cust-1', 1000, 'EUR', 'tok_visa', $3, $4, $5)",
        )
        .bind(&p.payment_id)
        .bind(&p.order_id)
        .bind(status)
        .bind(format!("auth_{}", p.payment_id))
        .bind(captured_minor)
        .execute(&self.pg)
        .await?;
        Ok(p)
    }

    /// Every command on the topic, decoded with its key, after `expected` arrived (or 20 s)
    /// plus `settle`.
    async fn commands(
        &self,
        expected: usize,
        settle: Duration,
    ) -> anyhow::Result<Vec<(String, PaymentCommand)>> {
        self.base.commands(expected, settle).await
    }
}

#[derive(Debug, Clone)]
struct Payment {
    payment_id: String,
    order_id: String,
}

impl Payment {
    fn new() -> Self {
        Self {
            payment_id: unique("pay"),
            order_id: unique("order"),
        }
    }
}

fn eur(amount_minor: i64) -> Money {
    Money::new(amount_minor, "EUR")
}

fn now_s() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A callback body as the PSP writes it.
fn callback_body(event_id: &str, p: &Payment) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "event_id": event_id,
        "authorization_id": format!("auth_{}", p.payment_id),
        "reference": p.payment_id,
        "outcome": "authorized",
    }))
    .expect("json")
}

/// POST `body` to `/psp/callbacks` with the given timestamp and signature headers.
fn callback(
    env: &Env,
    server: &Server,
    body: Vec<u8>,
    timestamp: Option<String>,
    signature: Option<String>,
) -> reqwest::RequestBuilder {
    let mut r = env
        .http
        .post(server.url("/psp/callbacks"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(ts) = timestamp {
        r = r.header(TIMESTAMP_HEADER, ts);
    }
    if let Some(sig) = signature {
        r = r.header(SIGNATURE_HEADER, sig);
    }
    r
}

/// `body` signed with `secret` at `timestamp`, POSTed.
fn signed(
    env: &Env,
    server: &Server,
    secret: &str,
    timestamp: i64,
    body: Vec<u8>,
) -> reqwest::RequestBuilder {
    let signature = sign(secret, timestamp, &body);
    callback(
        env,
        server,
        body,
        Some(timestamp.to_string()),
        Some(signature),
    )
}

async fn get_payment(env: &Env, server: &Server, payment_id: &str) -> anyhow::Result<Answer> {
    send(env.http.get(server.url(&format!("/payments/{payment_id}")))).await
}

/// Poll `GET /payments/{id}` until `done` holds for its body.
async fn wait_payment(
    env: &Env,
    server: &Server,
    payment_id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let start = Instant::now();
    loop {
        let a = get_payment(env, server, payment_id).await?;
        if a.status == StatusCode::OK && done(&a.body) {
            return Ok(a.body);
        }
        if start.elapsed() > PATIENCE {
            bail!(
                "payment {payment_id}: waited for {what}; last answer {} {}",
                a.status,
                a.text
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn refund(
    env: &Env,
    server: &Server,
    payment_id: &str,
    key: Option<&str>,
    body: &Value,
) -> reqwest::RequestBuilder {
    let mut r = env
        .http
        .post(server.url(&format!("/payments/{payment_id}/refund")))
        .json(body);
    if let Some(k) = key {
        r = r.header("Idempotency-Key", k);
    }
    r
}

/// The PSP answers `pending`, then POSTs its signed callback (twice) to the API: each delivery
/// becomes a `PspCallback` command keyed by the order id, and the payment service applies the
/// event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_psps_signed_callback_reaches_the_ledger_through_kafka_once() -> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        let server = env.serve(env.config(), None).await?;
        let psp = env.psp(&server, 1.0).await?;
        env.worker(&psp);
        let p = Payment::new();
        env.send(
            &p,
            &unique("intent"),
            PaymentCommandBody::CreateIntent(CreatePaymentIntent {
                customer_id: "cust-1".to_owned(),
                amount: eur(2_500),
                payment_method: "tok_pending".to_owned(),
            }),
        )
        .await?;
        env.send(
            &p,
            &unique("authorize"),
            PaymentCommandBody::Authorize(AuthorizePayment { amount: eur(2_500) }),
        )
        .await?;

        let view = wait_payment(&env, &server, &p.payment_id, "AUTHORIZED", |b| {
            b["status"] == "AUTHORIZED"
        })
        .await?;
        // Both deliveries are on the topic (after intent and authorize), same event, same
        // command id, keyed by the order.
        let commands = env.commands(4, Duration::from_secs(1)).await?;
        let callbacks: Vec<&(String, PaymentCommand)> = commands
            .iter()
            .filter(|(_, c)| matches!(c.command, PaymentCommandBody::PspCallback(_)))
            .collect();
        assert_eq!(callbacks.len(), 2, "{commands:#?}");
        let stats: Stats = env
            .http
            .get(format!("{psp}/admin/stats"))
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(stats.callbacks_delivered, 2, "{stats:?}");
        let (key, first) = callbacks[0];
        assert_eq!(key, &p.order_id);
        assert_eq!(first.payment_id, p.payment_id);
        assert_eq!(first.command_id, callbacks[1].1.command_id);
        let PaymentCommandBody::PspCallback(cb) = &first.command else {
            bail!("not a callback");
        };
        assert_eq!(cb.outcome, PspOutcome::Authorized);
        assert_eq!(
            Some(cb.psp_reference.as_str()),
            view["pspReference"].as_str()
        );

        // One ledger effect: one attempt carries the event id.
        let with_event: Vec<&Value> = view["attempts"]
            .as_array()
            .context("attempts")?
            .iter()
            .filter(|a| a["pspEventId"] == json!(cb.psp_event_id))
            .collect();
        assert_eq!(with_event.len(), 1, "{view:#}");
        assert_eq!(with_event[0]["outcome"], "SUCCEEDED");
        assert_eq!(
            view["amount"],
            json!({"amountMinor": 2500, "currency": "EUR"})
        );
        Ok(())
    })
    .await
}

/// What does not verify — another secret, a body changed after signing, a timestamp too old
/// or too far ahead, missing or malformed headers — is 401 and nothing reaches Kafka; the
/// exact signed bytes (odd spacing and key order, not re-serialized) verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_that_do_not_verify_are_401_and_write_nothing() -> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        let server = env.serve(env.config(), None).await?;
        let p = env.insert_payment("AUTHORIZING", 0).await?;
        let now = now_s();
        let body = callback_body("evt_bad", &p);
        let sig = |ts: i64, b: &[u8]| sign(SECRET, ts, b);
        // The same event with the outcome changed, under the original body's signature.
        let tampered = String::from_utf8(body.clone())?
            .replace("\"authorized\"", "\"declined\"")
            .into_bytes();
        assert_ne!(tampered, body);
        let refused = vec![
            ("another secret", signed(&env, &server, "not-the-secret", now, body.clone())),
            (
                "tampered body",
                callback(&env, &server, tampered, Some(now.to_string()), Some(sig(now, &body))),
            ),
            ("301 s old", signed(&env, &server, SECRET, now - 301, body.clone())),
            ("an hour old", signed(&env, &server, SECRET, now - 3_600, body.clone())),
            ("301 s ahead", signed(&env, &server, SECRET, now + 301, body.clone())),
            (
                "timestamp changed after signing",
                callback(
                    &env,
                    &server,
                    body.clone(),
                    Some((now + 1).to_string()),
                    Some(sig(now, &body)),
                ),
            ),
            (
                "no signature",
                callback(&env, &server, body.clone(), Some(now.to_string()), None),
            ),
            (
                "no timestamp",
                callback(&env, &server, body.clone(), None, Some(sig(now, &body))),
            ),
            (
                "malformed signature",
                callback(
                    &env,
                    &server,
                    body.clone(),
                    Some(now.to_string()),
                    Some("sha256=abc".to_owned()),
                ),
            ),
            (
                "malformed timestamp",
                callback(
                    &env,
                    &server,
                    body.clone(),
                    Some("yesterday".to_owned()),
                    Some(sig(now, &body)),
                ),
            ),
        ];
        for (case, request) in refused {
            let a = send(request).await?;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{case}: {}", a.text);
            assert_eq!(a.slug(), "invalid-signature", "{case}: {}", a.text);
            assert_eq!(
                a.header("content-type"),
                Some("application/problem+json"),
                "{case}"
            );
            assert_eq!(a.header("www-authenticate"), None, "{case}");
        }
        assert!(
            env.commands(0, Duration::from_secs(3)).await?.is_empty(),
            "a refused callback reached Kafka"
        );

        // Within the tolerance both ways, and signed over the raw bytes as sent.
        let raw = format!(
            "{{ \"outcome\" : \"authorized\",\"reference\":\"{}\", \"authorization_id\":\"auth_{}\",\n\"event_id\":\"evt_good\" }}",
            p.payment_id, p.payment_id
        )
        .into_bytes();
        for (ts, event) in [(now - 290, "evt_good"), (now + 290, "evt_good")] {
            let a = send(signed(&env, &server, SECRET, ts, raw.clone())).await?;
            assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
            assert_eq!(a.body["eventId"], event);
            assert_eq!(a.body["paymentId"], json!(p.payment_id));
        }
        let commands = env.commands(2, Duration::from_secs(1)).await?;
        assert_eq!(commands.len(), 2, "{commands:#?}");
        for (key, c) in &commands {
            assert_eq!(key, &p.order_id);
            let PaymentCommandBody::PspCallback(cb) = &c.command else {
                bail!("not a callback: {c:?}");
            };
            assert_eq!(cb.psp_event_id, "evt_good");
            assert_eq!(cb.psp_reference, format!("auth_{}", p.payment_id));
        }
        Ok(())
    })
    .await
}

/// The payment service authorizes and captures; `GET /payments/{id}` and
/// `GET /orders/{id}/payment` show it from the ledger with its attempts; refunds: over the
/// capture is 422 naming amountMinor, a refund is 202 and a retry with the same key is the
/// same refund, refunded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_payment_reads_back_and_refunds_at_most_the_capture() -> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        let server = env.serve(env.config(), None).await?;
        let psp = env.psp(&server, 0.0).await?;
        env.worker(&psp);
        let p = Payment::new();
        let missing = get_payment(&env, &server, &p.payment_id).await?;
        assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.text);
        assert_eq!(missing.slug(), "payment-not-found");
        env.send(
            &p,
            &unique("intent"),
            PaymentCommandBody::CreateIntent(CreatePaymentIntent {
                customer_id: "cust-1".to_owned(),
                amount: eur(1_000),
                payment_method: "tok_visa".to_owned(),
            }),
        )
        .await?;
        env.send(
            &p,
            &unique("authorize"),
            PaymentCommandBody::Authorize(AuthorizePayment { amount: eur(1_000) }),
        )
        .await?;
        let authorized = wait_payment(&env, &server, &p.payment_id, "AUTHORIZED", |b| {
            b["status"] == "AUTHORIZED"
        })
        .await?;
        let attempts = authorized["attempts"].as_array().context("attempts")?;
        assert_eq!(attempts.len(), 1, "{authorized:#}");
        assert_eq!(attempts[0]["kind"], "AUTHORIZE");
        assert_eq!(attempts[0]["outcome"], "SUCCEEDED");
        assert!(
            attempts[0]["latencyMs"].as_i64().is_some(),
            "{authorized:#}"
        );
        // Nothing captured yet: nothing to refund.
        let a = send(refund(
            &env,
            &server,
            &p.payment_id,
            Some("k0"),
            &json!({"amountMinor": 1, "reason": "x"}),
        ))
        .await?;
        assert_eq!(
            (a.status, a.slug()),
            (StatusCode::UNPROCESSABLE_ENTITY, "refund-exceeds-captured"),
            "{}",
            a.text
        );

        env.send(
            &p,
            &unique("capture"),
            PaymentCommandBody::Capture(CapturePayment { amount: eur(1_000) }),
        )
        .await?;
        let captured = wait_payment(&env, &server, &p.payment_id, "CAPTURED", |b| {
            b["status"] == "CAPTURED"
        })
        .await?;
        assert_eq!(captured["orderId"], json!(p.order_id));
        assert_eq!(
            captured["captured"],
            json!({"amountMinor": 1000, "currency": "EUR"})
        );
        assert_eq!(captured["refundable"]["amountMinor"], 1000);
        let kinds: Vec<&str> = captured["attempts"]
            .as_array()
            .context("attempts")?
            .iter()
            .filter_map(|a| a["kind"].as_str())
            .collect();
        assert_eq!(kinds, ["AUTHORIZE", "CAPTURE"], "{captured:#}");
        let by_order = send(
            env.http
                .get(server.url(&format!("/orders/{}/payment", p.order_id))),
        )
        .await?;
        assert_eq!(by_order.status, StatusCode::OK, "{}", by_order.text);
        assert_eq!(by_order.body["paymentId"], json!(p.payment_id));

        // Over the capture: 422 naming the field, nothing written.
        let over = send(refund(
            &env,
            &server,
            &p.payment_id,
            Some("k1"),
            &json!({"amountMinor": 1001, "reason": "too much"}),
        ))
        .await?;
        assert_eq!(
            over.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            over.text
        );
        assert_eq!(over.slug(), "refund-exceeds-captured");
        assert_eq!(over.body["field"], "amountMinor");
        let no_key = send(refund(
            &env,
            &server,
            &p.payment_id,
            None,
            &json!({"amountMinor": 1, "reason": "x"}),
        ))
        .await?;
        assert_eq!(no_key.status, StatusCode::BAD_REQUEST, "{}", no_key.text);
        assert_eq!(no_key.body["field"], "Idempotency-Key");

        let body = json!({"amountMinor": 400, "reason": "CUSTOMER_REQUEST"});
        let first = send(refund(&env, &server, &p.payment_id, Some("k2"), &body)).await?;
        assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
        let location = format!("/payments/{}", p.payment_id);
        assert_eq!(first.header("location"), Some(location.as_str()));
        let refund_id = first.body["refundId"]
            .as_str()
            .context("refundId")?
            .to_owned();
        let again = send(refund(&env, &server, &p.payment_id, Some("k2"), &body)).await?;
        assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.text);
        assert_eq!(again.body["refundId"], json!(refund_id));

        let refunded = wait_payment(&env, &server, &p.payment_id, "the refund", |b| {
            b["status"] == "PARTIALLY_REFUNDED"
        })
        .await?;
        let refunds = refunded["refunds"].as_array().context("refunds")?;
        assert_eq!(refunds.len(), 1, "{refunded:#}");
        assert_eq!(refunds[0]["refundId"], json!(refund_id));
        assert_eq!(refunds[0]["status"], "SUCCEEDED");
        assert_eq!(refunded["refunded"]["amountMinor"], 400);
        assert_eq!(refunded["refundable"]["amountMinor"], 600);

        // After it was applied: the same request is the same answer, another body is refused,
        // and what remains is the limit.
        let replay = send(refund(&env, &server, &p.payment_id, Some("k2"), &body)).await?;
        assert_eq!(replay.status, StatusCode::ACCEPTED, "{}", replay.text);
        assert_eq!(replay.header("idempotent-replayed"), Some("true"));
        let reused = send(refund(
            &env,
            &server,
            &p.payment_id,
            Some("k2"),
            &json!({"amountMinor": 5, "reason": "CUSTOMER_REQUEST"}),
        ))
        .await?;
        assert_eq!(
            (reused.status, reused.slug()),
            (StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused"),
            "{}",
            reused.text
        );
        let rest = send(refund(
            &env,
            &server,
            &p.payment_id,
            Some("k3"),
            &json!({"amountMinor": 601, "reason": "x"}),
        ))
        .await?;
        assert_eq!(
            (rest.status, rest.slug()),
            (StatusCode::UNPROCESSABLE_ENTITY, "refund-exceeds-captured"),
            "{}",
            rest.text
        );

        // Every refund command on Kafka names the one refund.
        let commands = env.commands(4, Duration::from_secs(1)).await?;
        let refund_ids: BTreeSet<String> = commands
            .iter()
            .filter_map(|(_, c)| match &c.command {
                PaymentCommandBody::Refund(r) => Some(r.refund_id.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(refund_ids, BTreeSet::from([refund_id]), "{commands:#?}");
        Ok(())
    })
    .await
}

/// Like the orders' agreement test in `api.rs`, for the payment routes: every documented status
/// of every payment operation is really answered (and every error is problem+json).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_and_the_payment_routes_agree() -> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        let mut config = env.config();
        config.auth_tokens = vec![TOKEN.to_owned()];
        config.max_body_bytes = 1_024;
        let a = env.serve(config.clone(), None).await?;
        let broken = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy(&with_database(
                &env.stack.postgres_url,
                &unique("keel_missing"),
            )?)?;
        let b = env.serve(config.clone(), Some(broken)).await?;
        // Without a ledger: every payment route is 501 not-served-here.
        let n = env
            .base
            .serve(
                config,
                common::Deps {
                    pool: env.orders.pool.clone(),
                    ledger: None,
                    inventory: None,
                    ready: true,
                },
            )
            .await?;

        let doc = send(env.http.get(a.url("/openapi.json"))).await?;
        let documented = documented(
            &doc.body,
            Endpoint::ALL.into_iter().filter(|e| e.is_payments()),
        )?;
        assert_eq!(documented.len(), 6);

        let p = env.insert_payment("CAPTURED", 1_000).await?;
        let intent = env.insert_payment("INTENT", 0).await?;
        let create = |s: &Server, key: &str, body: &Value| {
            env.http
                .post(s.url("/payments"))
                .bearer_auth(TOKEN)
                .header("Idempotency-Key", key)
                .json(body)
        };
        let confirm_path = |id: &str| format!("/payments/{id}/confirm");
        let new_intent = |order: &str| {
            json!({"orderId": order, "amount": {"amountMinor": 1_500, "currency": "EUR"},
                   "paymentMethod": "tok_visa"})
        };
        let get = |s: &Server, path: String| env.http.get(s.url(&path));
        let refund_path = |id: &str| format!("/payments/{id}/refund");
        let post = |s: &Server, path: &str| env.http.post(s.url(path)).bearer_auth(TOKEN);
        let ok_refund = json!({"amountMinor": 100, "reason": "x"});
        let big = json!({"amountMinor": 1, "reason": "x".repeat(2_000)});
        let now = now_s();
        let good = || callback_body(&unique("evt"), &p);
        let unknown = callback_body("evt_x", &Payment::new());
        let empty_event = callback_body("", &p);
        let requests: Vec<(Endpoint, reqwest::RequestBuilder)> = vec![
            (
                Endpoint::GetPayment,
                get(&a, format!("/payments/{}", p.payment_id)),
            ),
            (Endpoint::GetPayment, get(&a, "/payments/nope".to_owned())),
            (Endpoint::GetPayment, get(&a, "/payments/%ff".to_owned())),
            (
                Endpoint::GetOrderPayment,
                get(&a, "/orders/%ff/payment".to_owned()),
            ),
            (
                Endpoint::GetPayment,
                get(&b, format!("/payments/{}", p.payment_id)),
            ),
            (
                Endpoint::GetOrderPayment,
                get(&a, format!("/orders/{}/payment", p.order_id)),
            ),
            (
                Endpoint::GetOrderPayment,
                get(&a, "/orders/nope/payment".to_owned()),
            ),
            (
                Endpoint::GetOrderPayment,
                get(&b, format!("/orders/{}/payment", p.order_id)),
            ),
            (
                Endpoint::RefundPayment,
                post(&a, &refund_path(&p.payment_id))
                    .header("Idempotency-Key", "k")
                    .json(&ok_refund),
            ),
            (
                Endpoint::RefundPayment,
                post(&a, &refund_path(&p.payment_id)).json(&ok_refund),
            ),
            (
                Endpoint::RefundPayment,
                env.http
                    .post(a.url(&refund_path(&p.payment_id)))
                    .header("Idempotency-Key", "k")
                    .json(&ok_refund),
            ),
            (
                Endpoint::RefundPayment,
                post(&a, &refund_path("nope"))
                    .header("Idempotency-Key", "k")
                    .json(&ok_refund),
            ),
            (
                Endpoint::RefundPayment,
                post(&a, &refund_path(&p.payment_id))
                    .header("Idempotency-Key", "k")
                    .json(&big),
            ),
            (
                Endpoint::RefundPayment,
                post(&a, &refund_path(&p.payment_id))
                    .header("Idempotency-Key", "k")
                    .header("content-type", "text/plain")
                    .body("hi"),
            ),
            (
                Endpoint::RefundPayment,
                post(&a, &refund_path(&p.payment_id))
                    .header("Idempotency-Key", "k2")
                    .json(&json!({"amountMinor": 0, "reason": "x"})),
            ),
            (
                Endpoint::RefundPayment,
                post(&b, &refund_path(&p.payment_id))
                    .header("Idempotency-Key", "k")
                    .json(&ok_refund),
            ),
            (Endpoint::PspCallback, signed(&env, &a, SECRET, now, good())),
            (
                Endpoint::PspCallback,
                signed(&env, &a, SECRET, now, b"{".to_vec()),
            ),
            (
                Endpoint::PspCallback,
                callback(&env, &a, good(), None, None),
            ),
            (
                Endpoint::PspCallback,
                signed(&env, &a, SECRET, now, unknown),
            ),
            (
                Endpoint::PspCallback,
                signed(&env, &a, SECRET, now, vec![b' '; 2_000]),
            ),
            (
                Endpoint::PspCallback,
                signed(&env, &a, SECRET, now, empty_event),
            ),
            (Endpoint::PspCallback, signed(&env, &b, SECRET, now, good())),
            (
                Endpoint::CreatePayment,
                create(&a, "c1", &new_intent(&unique("order"))),
            ),
            (
                Endpoint::CreatePayment,
                env.http
                    .post(a.url("/payments"))
                    .bearer_auth(TOKEN)
                    .json(&new_intent(&unique("order"))),
            ),
            (
                Endpoint::CreatePayment,
                env.http
                    .post(a.url("/payments"))
                    .header("Idempotency-Key", "c2")
                    .json(&new_intent(&unique("order"))),
            ),
            (
                Endpoint::CreatePayment,
                create(&a, "c3", &new_intent(&p.order_id)),
            ),
            (
                Endpoint::CreatePayment,
                create(&a, "c4", &json!({"orderId": "x".repeat(2_000)})),
            ),
            (
                Endpoint::CreatePayment,
                env.http
                    .post(a.url("/payments"))
                    .bearer_auth(TOKEN)
                    .header("Idempotency-Key", "c5")
                    .header("content-type", "text/plain")
                    .body("hi"),
            ),
            (
                Endpoint::CreatePayment,
                create(
                    &a,
                    "c6",
                    &json!({"orderId": unique("order"),
                            "amount": {"amountMinor": 0, "currency": "EUR"},
                            "paymentMethod": "tok_visa"}),
                ),
            ),
            (
                Endpoint::CreatePayment,
                create(&b, "c7", &new_intent(&unique("order"))),
            ),
            (
                Endpoint::ConfirmPayment,
                post(&a, &confirm_path(&intent.payment_id)),
            ),
            (
                Endpoint::ConfirmPayment,
                post(&a, &confirm_path(&intent.payment_id))
                    .header("content-type", "application/json")
                    .body("{"),
            ),
            (
                Endpoint::ConfirmPayment,
                env.http.post(a.url(&confirm_path(&intent.payment_id))),
            ),
            (Endpoint::ConfirmPayment, post(&a, &confirm_path("nope"))),
            (
                Endpoint::ConfirmPayment,
                post(&a, &confirm_path(&p.payment_id)),
            ),
            (
                Endpoint::ConfirmPayment,
                post(&a, &confirm_path(&intent.payment_id)).json(&big),
            ),
            (
                Endpoint::ConfirmPayment,
                post(&a, &confirm_path(&intent.payment_id))
                    .header("content-type", "text/plain")
                    .body("hi"),
            ),
            (
                Endpoint::ConfirmPayment,
                post(&b, &confirm_path(&intent.payment_id)),
            ),
            (
                Endpoint::PspCallback,
                signed(&env, &a, SECRET, now, good()).header("content-encoding", "gzip"),
            ),
            (
                Endpoint::GetPayment,
                get(&n, format!("/payments/{}", p.payment_id)),
            ),
            (
                Endpoint::GetOrderPayment,
                get(&n, format!("/orders/{}/payment", p.order_id)),
            ),
            (
                Endpoint::RefundPayment,
                post(&n, &refund_path(&p.payment_id))
                    .header("Idempotency-Key", "k")
                    .json(&ok_refund),
            ),
            (Endpoint::PspCallback, signed(&env, &n, SECRET, now, good())),
            (
                Endpoint::CreatePayment,
                create(&n, "c8", &new_intent(&unique("order"))),
            ),
            (
                Endpoint::ConfirmPayment,
                post(&n, &confirm_path(&intent.payment_id)),
            ),
        ];
        let observed = observe(requests).await?;
        assert_agree(&documented, &observed);
        Ok(())
    })
    .await
}

fn create_payment(
    env: &Env,
    server: &Server,
    key: Option<&str>,
    body: &Value,
) -> reqwest::RequestBuilder {
    let mut r = env.http.post(server.url("/payments")).json(body);
    if let Some(k) = key {
        r = r.header("Idempotency-Key", k);
    }
    r
}

fn intent_body(order_id: &str, amount_minor: i64, token: &str) -> Value {
    json!({"orderId": order_id, "amount": {"amountMinor": amount_minor, "currency": "EUR"},
           "paymentMethod": token})
}

/// `POST /payments` writes one create-intent command and answers 202 with the payment id and
/// its Location, which reads `REQUESTED` until the payment service has written it; the same key
/// and body get the first answer (no second command), the same key with another body is a 422,
/// another key for the same order a 409, and every bad field is a 422 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_intent_is_one_command_per_key_and_reads_back_as_requested() -> anyhow::Result<()>
{
    with_env(Env::new().await?, |env| async move {
        let server = env.serve(env.config(), None).await?;
        let order_id = unique("order");
        let body = intent_body(&order_id, 2_500, "tok_visa");
        let first = send(create_payment(&env, &server, Some("intent-1"), &body)).await?;
        assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
        let payment_id = format!("pay-{order_id}");
        assert_eq!(first.body["paymentId"], json!(payment_id));
        assert_eq!(first.body["orderId"], json!(order_id));
        assert_eq!(first.body["status"], "REQUESTED");
        let location = format!("/payments/{payment_id}");
        assert_eq!(first.header("location"), Some(location.as_str()));

        // No payment service runs: the Location reads what the API accepted.
        let requested = get_payment(&env, &server, &payment_id).await?;
        assert_eq!(requested.status, StatusCode::OK, "{}", requested.text);
        assert_eq!(requested.body["status"], "REQUESTED");
        assert_eq!(
            requested.body["amount"],
            json!({"amountMinor": 2500, "currency": "EUR"})
        );
        let by_order = send(
            env.http
                .get(server.url(&format!("/orders/{order_id}/payment"))),
        )
        .await?;
        assert_eq!(by_order.body["paymentId"], json!(payment_id), "{}", by_order.text);

        let again = send(create_payment(&env, &server, Some("intent-1"), &body)).await?;
        assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.text);
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        assert_eq!(again.body, first.body);
        let other_body = send(create_payment(
            &env,
            &server,
            Some("intent-1"),
            &intent_body(&order_id, 2_600, "tok_visa"),
        ))
        .await?;
        assert_eq!(
            (other_body.status, other_body.slug()),
            (StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused"),
            "{}",
            other_body.text
        );
        assert_eq!(other_body.body["field"], "Idempotency-Key");
        let other_key = send(create_payment(&env, &server, Some("intent-2"), &body)).await?;
        assert_eq!(
            (other_key.status, other_key.slug()),
            (StatusCode::CONFLICT, "payment-exists"),
            "{}",
            other_key.text
        );
        assert_eq!(other_key.body["field"], "orderId");
        let no_key = send(create_payment(&env, &server, None, &body)).await?;
        assert_eq!(no_key.status, StatusCode::BAD_REQUEST, "{}", no_key.text);
        assert_eq!(no_key.body["field"], "Idempotency-Key");

        for (field, bad) in [
            ("orderId", json!({"orderId": "a/b", "amount": {"amountMinor": 1, "currency": "EUR"}, "paymentMethod": "tok_visa"})),
            ("orderId", json!({"orderId": "o".repeat(61), "amount": {"amountMinor": 1, "currency": "EUR"}, "paymentMethod": "tok_visa"})),
            ("amount.amountMinor", json!({"orderId": "o1", "amount": {"amountMinor": 0, "currency": "EUR"}, "paymentMethod": "tok_visa"})),
            ("amount.amountMinor", json!({"orderId": "o1", "amount": {"amountMinor": -5, "currency": "EUR"}, "paymentMethod": "tok_visa"})),
            ("amount.currency", json!({"orderId": "o1", "amount": {"amountMinor": 1, "currency": "eur"}, "paymentMethod": "tok_visa"})),
            ("paymentMethod", json!({"orderId": "o1", "amount": {"amountMinor": 1, "currency": "EUR"}, "paymentMethod": " "})),
            ("customerId", json!({"orderId": "o1", "amount": {"amountMinor": 1, "currency": "EUR"}, "paymentMethod": "tok_visa", "customerId": "c\u{202E}"})),
        ] {
            let a = send(create_payment(&env, &server, Some("bad"), &bad)).await?;
            assert_eq!(
                (a.status, a.slug(), a.body["field"].as_str()),
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid-field", Some(field)),
                "{bad}: {}",
                a.text
            );
        }
        for (field, bad) in [
            ("amount", json!({"orderId": "o1", "paymentMethod": "tok_visa"})),
            ("amount.currency", json!({"orderId": "o1", "amount": {"amountMinor": 1}, "paymentMethod": "tok_visa"})),
            ("amount.amountMinor", json!({"orderId": "o1", "amount": {"amountMinor": "1", "currency": "EUR"}, "paymentMethod": "tok_visa"})),
            ("amount.cents", json!({"orderId": "o1", "amount": {"amountMinor": 1, "currency": "EUR", "cents": 1}, "paymentMethod": "tok_visa"})),
        ] {
            let a = send(create_payment(&env, &server, Some("bad"), &bad)).await?;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}: {}", a.text);
            assert!(
                a.body["field"].as_str().is_some_and(|f| f.contains(field.rsplit('.').next().unwrap_or(field))),
                "{bad}: {}",
                a.text
            );
        }

        // One command on Kafka, whatever the retries: the create-intent.
        let commands = env.commands(1, Duration::from_secs(2)).await?;
        assert_eq!(commands.len(), 1, "{commands:#?}");
        let (key, command) = &commands[0];
        assert_eq!(key, &order_id);
        assert_eq!(command.payment_id, payment_id);
        let PaymentCommandBody::CreateIntent(intent) = &command.command else {
            bail!("not a create-intent: {command:?}");
        };
        assert_eq!(intent.amount, eur(2_500));
        assert_eq!(intent.payment_method, "tok_visa");
        Ok(())
    })
    .await
}

/// Break report 13, D1: `POST /payments` for a checkout's order id opened the order's payment
/// id (`pay-<order id>`) with another amount before the saga's own intent, and the order was
/// confirmed for that amount. A checkout's order id — known from the moment `POST /orders`
/// claimed its key, or from the order store for orders other producers placed — is now a 409
/// `checkout-order`, and nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_for_a_checkouts_order_id_is_refused() -> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        let server = env.serve(env.config(), None).await?;
        let (through_api, elsewhere) = (unique("order"), unique("order"));
        common::claim_checkout(&env.orders.pool, &through_api).await?;
        sqlx::query(
            "INSERT INTO orders (order_id, customer_id, cart_id, status, total_minor, currency, \
             payment_method, last_sequence, created_at, updated_at) \
             VALUES (?, 'c', 'cart', 'PENDING', 2500, 'EUR', 'tok_visa', 1, NOW(3), NOW(3))",
        )
        .bind(&elsewhere)
        .execute(&env.orders.pool)
        .await?;
        for order_id in [&through_api, &elsewhere] {
            let body = intent_body(order_id, 1, "tok_visa");
            let a = send(create_payment(&env, &server, Some(order_id), &body)).await?;
            assert_eq!(
                (a.status, a.slug(), a.body["field"].as_str()),
                (StatusCode::CONFLICT, "checkout-order", Some("orderId")),
                "{}",
                a.text
            );
            assert!(a.text.contains("POST /payments"), "{}", a.text);
        }
        // The saga's own intent for a checkout (written by the payment service): a confirm
        // through the API is refused too (break report 14, D4).
        let intent = env.insert_payment("INTENT", 0).await?;
        common::claim_checkout(&env.orders.pool, &intent.order_id).await?;
        let a = send(
            env.http
                .post(server.url(&format!("/payments/{}/confirm", intent.payment_id)))
                .json(&json!({})),
        )
        .await?;
        assert_eq!(
            (a.status, a.slug()),
            (StatusCode::CONFLICT, "checkout-order"),
            "{}",
            a.text
        );
        // An order id nothing knows is still a payment of its own.
        let other = unique("order");
        let a = send(create_payment(
            &env,
            &server,
            Some("k"),
            &intent_body(&other, 1, "tok_visa"),
        ))
        .await?;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
        let commands = env.commands(1, Duration::from_secs(2)).await?;
        assert_eq!(
            commands.len(),
            1,
            "only the unknown order's intent: {commands:#?}"
        );
        assert_eq!(commands[0].0, other);
        Ok(())
    })
    .await
}

/// Through the payment service and the PSP mock: an intent opened with `POST /payments` and
/// confirmed (twice, and once before the service has even written the intent) is authorized
/// once; a confirm of an authorized payment is a 409 with its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_intent_is_authorized_once_through_the_psp() -> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        let server = env.serve(env.config(), None).await?;
        let psp = env.psp(&server, 0.0).await?;
        let order_id = unique("order");
        let created = send(create_payment(
            &env,
            &server,
            Some("k"),
            &intent_body(&order_id, 1_200, "tok_visa"),
        ))
        .await?;
        assert_eq!(created.status, StatusCode::ACCEPTED, "{}", created.text);
        let payment_id = created.body["paymentId"]
            .as_str()
            .context("paymentId")?
            .to_owned();
        let confirm = || {
            env.http
                .post(server.url(&format!("/payments/{payment_id}/confirm")))
        };
        // Before the payment service has seen the intent: accepted, queued behind it.
        let early = send(confirm()).await?;
        assert_eq!(early.status, StatusCode::ACCEPTED, "{}", early.text);
        assert_eq!(early.body["status"], "CONFIRMATION_REQUESTED");
        let location = format!("/payments/{payment_id}");
        assert_eq!(early.header("location"), Some(location.as_str()));
        env.worker(&psp);
        let again = send(confirm()).await?;
        assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.text);

        let view = wait_payment(&env, &server, &payment_id, "AUTHORIZED", |b| {
            b["status"] == "AUTHORIZED"
        })
        .await?;
        assert_eq!(view["orderId"], json!(order_id));
        assert_eq!(view["customerId"], "anonymous");
        let attempts = view["attempts"].as_array().context("attempts")?;
        assert_eq!(attempts.len(), 1, "{view:#}");
        assert_eq!(attempts[0]["outcome"], "SUCCEEDED");
        let late = send(confirm()).await?;
        assert_eq!(
            (late.status, late.slug()),
            (StatusCode::CONFLICT, "illegal-transition"),
            "{}",
            late.text
        );
        assert_eq!(late.body["currentStatus"], "AUTHORIZED");
        let stats: Stats = env
            .http
            .get(format!("{psp}/admin/stats"))
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(stats.authorizations, 1, "{stats:?}");
        Ok(())
    })
    .await
}

/// A retry of a refund with the same `Idempotency-Key` and another body, sent before the payment
/// service has written the first refund (no service runs here), is a 422: the key is bound to
/// its first body at the API, and only the first refund's command reaches Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_key_reused_with_another_body_before_the_refund_is_written_is_refused()
-> anyhow::Result<()> {
    with_env(Env::new().await?, |env| async move {
        let server = env.serve(env.config(), None).await?;
        let p = env.insert_payment("CAPTURED", 1_000).await?;
        let body = json!({"amountMinor": 400, "reason": "CUSTOMER_REQUEST"});
        let first = send(refund(&env, &server, &p.payment_id, Some("r1"), &body)).await?;
        assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
        let same = send(refund(&env, &server, &p.payment_id, Some("r1"), &body)).await?;
        assert_eq!(same.status, StatusCode::ACCEPTED, "{}", same.text);
        assert_eq!(same.body["refundId"], first.body["refundId"]);
        let other = send(refund(
            &env,
            &server,
            &p.payment_id,
            Some("r1"),
            &json!({"amountMinor": 500, "reason": "CUSTOMER_REQUEST"}),
        ))
        .await?;
        assert_eq!(
            (other.status, other.slug()),
            (StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused"),
            "{}",
            other.text
        );
        assert_eq!(other.body["field"], "Idempotency-Key");
        let commands = env.commands(1, Duration::from_secs(2)).await?;
        let amounts: Vec<i64> = commands
            .iter()
            .filter_map(|(_, c)| match &c.command {
                PaymentCommandBody::Refund(r) => Some(r.amount.amount_minor),
                _ => None,
            })
            .collect();
        assert_eq!(amounts, vec![400], "{commands:#?}");
        Ok(())
    })
    .await
}
