//! The payment service against the real stack: a fresh PostgreSQL database per test
//! (`keel_test_<random>`, migrated, dropped at the end), the PSP mock on a free port, random
//! Kafka topics and registry subjects. Each test names the behaviour it proves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use keel_avro::records::{
    AuthorizePayment, CapturePayment, CreatePaymentIntent, Money, PaymentAuthorized,
    PaymentCommand, PaymentCommandBody, PaymentFailed, PaymentFailureReason, PaymentRefunded,
    PspCallback, PspOutcome, RefundPayment,
};
use keel_avro::{Codec, RegistryConfig};
use keel_processors::outbox::{EVENT_ID_HEADER, PgOutbox, RelayConfig, run_relay};
use keel_processors::payment::{self, PaymentConfig};
use keel_processors::psp_mock::{IDEMPOTENCY_HEADER, PspMock, PspMockConfig, Stats};
use keel_tests::topics::TopicCleanup;
use keel_tests::{PATIENCE, Stack, unique};
use rdkafka::ClientConfig;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool, Row};
use tokio_util::sync::CancellationToken;

/// A PostgreSQL database of its own for one test, dropped by [`TestPg::drop_db`], or when
/// the test panics before that, by `Drop`.
struct TestPg {
    name: String,
    admin_url: String,
    admin: PgPool,
    pool: PgPool,
    dropped: bool,
}

impl Drop for TestPg {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // A failed assertion unwound past `drop_db`: drop the database anyway, from a thread
        // of its own (no await in `drop`, and the test's runtime is unwinding).
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let admin = PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&url)
                    .await
                    .ok()?;
                let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                sqlx::raw_sql(AssertSqlSafe(drop))
                    .execute(&admin)
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("could not drop the test database {}", self.name);
        }
    }
}

impl TestPg {
    async fn create(stack: &Stack) -> anyhow::Result<Self> {
        let name = unique("keel_test");
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&stack.postgres_url)
            .await
            .context("connecting to PostgreSQL")?;
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .context("creating the test database (the keel role needs CREATEDB)")?;
        let (base, _) = stack
            .postgres_url
            .rsplit_once('/')
            .context("the PostgreSQL url has no database")?;
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect(&format!("{base}/{name}"))
            .await?;
        payment::migrate(&pool).await?;
        Ok(Self {
            name,
            admin_url: stack.postgres_url.clone(),
            admin,
            pool,
            dropped: false,
        })
    }

    async fn drop_db(mut self) {
        self.dropped = true;
        self.pool.close().await;
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = sqlx::raw_sql(AssertSqlSafe(drop))
            .execute(&self.admin)
            .await
        {
            eprintln!("dropping {}: {e}", self.name);
        }
    }
}

/// Topics of one test.
struct Topics {
    commands: String,
    authorized: String,
    failed: String,
    refunded: String,
    /// The worker's dead-letter topic, `<group id>-dlq`.
    dlq: String,
    /// Deletes the five on drop.
    _cleanup: TopicCleanup,
}

/// Everything one test runs against: database, PSP mock, topics, the worker.
struct Fixture {
    stack: Stack,
    db: TestPg,
    codec: Codec,
    topics: Topics,
    psp_url: String,
    producer: FutureProducer,
    registry: Arc<prometheus::Registry>,
    stop: CancellationToken,
    worker: tokio::task::JoinHandle<payment::Result<()>>,
}

fn quick_psp() -> PspMockConfig {
    PspMockConfig {
        listen: "127.0.0.1:0".parse().expect("an address"),
        latency_min_ms: 0,
        latency_max_ms: 5,
        ..PspMockConfig::default()
    }
}

impl Fixture {
    async fn start(
        psp: PspMockConfig,
        tune: impl FnOnce(&mut PaymentConfig),
    ) -> anyhow::Result<Self> {
        Self::start_with(psp, tune, None).await
    }

    /// [`Fixture::start`] with the codec's unknown-id window (`[registry].unknown_id_patience_ms`)
    /// set to `unknown_id_patience`, if given.
    async fn start_with(
        psp: PspMockConfig,
        tune: impl FnOnce(&mut PaymentConfig),
        unknown_id_patience: Option<Duration>,
    ) -> anyhow::Result<Self> {
        let stack = Stack::from_env();
        let db = TestPg::create(&stack).await?;
        let mock = PspMock::bind(psp).await?;
        let psp_url = mock.url();
        let stop = CancellationToken::new();
        tokio::spawn(mock.run(stop.clone()));

        let (commands, authorized, failed, refunded) = (
            unique("pay_cmd"),
            unique("pay_authorized"),
            unique("pay_failed"),
            unique("pay_refunded"),
        );
        let mut topics = Topics {
            _cleanup: TopicCleanup::new(stack.kafka_bootstrap.as_str()).topics([
                &commands,
                &authorized,
                &failed,
                &refunded,
            ]),
            commands,
            authorized,
            failed,
            refunded,
            dlq: String::new(),
        };
        keel_tests::kafka::create_topics(
            &stack.kafka_bootstrap,
            &[
                &topics.commands,
                &topics.authorized,
                &topics.failed,
                &topics.refunded,
            ],
            3,
        )
        .await?;
        let codec = Codec::new(RegistryConfig {
            subject_prefix: format!("{}-", unique("pay")),
            ..RegistryConfig::with_url(stack.registry_url.clone())
        })?;
        let codec = match unknown_id_patience {
            Some(patience) => codec.with_unknown_id_patience(patience),
            None => codec,
        };
        let mut config = PaymentConfig {
            psp_url: psp_url.clone(),
            group_id: unique("pay_group"),
            commit_interval_ms: 100,
            reconcile_interval_ms: 200,
            psp_retry_backoff_ms: 20,
            shutdown_grace_ms: 2_000,
            authorized_topic: topics.authorized.clone(),
            failed_topic: topics.failed.clone(),
            refunded_topic: topics.refunded.clone(),
            ..PaymentConfig::default()
        };
        tune(&mut config);
        topics.dlq = keel_processors::dead_letter::topic_for(&config.group_id);
        topics._cleanup.add_topic(&topics.dlq);
        keel_tests::kafka::create_topics(&stack.kafka_bootstrap, &[&topics.dlq], 1).await?;
        let registry = Arc::new(prometheus::Registry::new());
        let worker = {
            let (bootstrap, codec, pool) = (
                stack.kafka_bootstrap.clone(),
                codec.clone(),
                db.pool.clone(),
            );
            let (commands, registry, stop) =
                (topics.commands.clone(), registry.clone(), stop.clone());
            tokio::spawn(async move {
                payment::run(config, &bootstrap, codec, pool, &commands, &registry, stop).await
            })
        };
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &stack.kafka_bootstrap)
            .set("enable.idempotence", "true")
            .set("partitioner", "murmur2_random")
            .create()?;
        Ok(Self {
            stack,
            db,
            codec,
            topics,
            psp_url,
            producer,
            registry,
            stop,
            worker,
        })
    }

    async fn finish(self) -> anyhow::Result<()> {
        self.stop.cancel();
        let stopped = tokio::time::timeout(Duration::from_secs(20), self.worker).await;
        self.db.drop_db().await;
        match stopped {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => bail!("the payment worker failed: {e}"),
            Ok(Err(e)) => bail!("the payment worker panicked: {e}"),
            Err(_) => bail!("the payment worker did not stop within 20 s"),
        }
    }

    /// Send `body` for `order` (key = `key`, default the order id) with `command_id`.
    async fn send_keyed(
        &self,
        key: &str,
        order: &Order,
        command_id: &str,
        body: PaymentCommandBody,
    ) -> anyhow::Result<()> {
        let command = PaymentCommand {
            command_id: command_id.to_owned(),
            payment_id: order.payment_id.clone(),
            order_id: order.order_id.clone(),
            issued_at: 1_767_225_600_000,
            causation_id: format!("cause-{command_id}"),
            correlation_id: order.order_id.clone(),
            command: body,
        };
        let payload = self
            .codec
            .encode_to(&self.topics.commands, &command)
            .await?;
        self.producer
            .send(
                FutureRecord::to(&self.topics.commands)
                    .key(key)
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
        Ok(())
    }

    async fn send(
        &self,
        order: &Order,
        command_id: &str,
        body: PaymentCommandBody,
    ) -> anyhow::Result<()> {
        self.send_keyed(&order.order_id, order, command_id, body)
            .await
    }

    /// CreateIntent + Authorize for `amount_minor` EUR with `token`.
    async fn open_and_authorize(
        &self,
        order: &Order,
        amount_minor: i64,
        token: &str,
    ) -> anyhow::Result<()> {
        self.send(
            order,
            &format!("{}-intent", order.order_id),
            PaymentCommandBody::CreateIntent(CreatePaymentIntent {
                customer_id: "customer-1".to_owned(),
                amount: eur(amount_minor),
                payment_method: token.to_owned(),
            }),
        )
        .await?;
        self.send(
            order,
            &format!("{}-authorize", order.order_id),
            PaymentCommandBody::Authorize(AuthorizePayment {
                amount: eur(amount_minor),
            }),
        )
        .await
    }

    async fn status(&self, order: &Order) -> anyhow::Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT status FROM payments WHERE payment_id = $1")
                .bind(&order.payment_id)
                .fetch_optional(&self.db.pool)
                .await?,
        )
    }

    /// Wait until the payment has `status`.
    async fn wait_status(&self, order: &Order, status: &str) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let now = self.status(order).await?;
            if now.as_deref() == Some(status) {
                return Ok(());
            }
            if start.elapsed() > PATIENCE {
                bail!("payment {} is {now:?}, not {status}", order.payment_id);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until `sql` (one BIGINT column, `$1` = payment id) returns `expected`.
    async fn wait_count(
        &self,
        sql: &'static str,
        order: &Order,
        expected: i64,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let n: i64 = sqlx::query_scalar(sql)
                .bind(&order.payment_id)
                .fetch_one(&self.db.pool)
                .await?;
            if n == expected {
                return Ok(());
            }
            if start.elapsed() > PATIENCE {
                bail!("{sql} is {n}, not {expected}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_processed(&self, command_id: &str) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let done = sqlx::query("SELECT 1 FROM processed_commands WHERE command_id = $1")
                .bind(command_id)
                .fetch_optional(&self.db.pool)
                .await?;
            if done.is_some() {
                return Ok(());
            }
            if start.elapsed() > PATIENCE {
                bail!("command {command_id} was not processed");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The outbox rows of the order: (id, event_type, payload, status), oldest first.
    async fn outbox(
        &self,
        order: &Order,
    ) -> anyhow::Result<Vec<(String, String, Vec<u8>, String)>> {
        let rows = sqlx::query(
            "SELECT id, event_type, payload, status FROM payment_outbox \
             WHERE aggregate_id = $1 ORDER BY created_at",
        )
        .bind(&order.order_id)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("id")?,
                    r.try_get("event_type")?,
                    r.try_get("payload")?,
                    r.try_get("status")?,
                ))
            })
            .collect()
    }

    async fn psp_stats(&self) -> anyhow::Result<Stats> {
        Ok(reqwest::get(format!("{}/admin/stats", self.psp_url))
            .await?
            .json()
            .await?)
    }

    async fn wait_psp(&self, what: &str, done: impl Fn(&Stats) -> bool) -> anyhow::Result<Stats> {
        let start = Instant::now();
        loop {
            let stats = self.psp_stats().await?;
            if done(&stats) {
                return Ok(stats);
            }
            if start.elapsed() > PATIENCE {
                bail!("the PSP never saw {what}: {stats:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The registry in the Prometheus text format.
    fn metrics_text(&self) -> anyhow::Result<String> {
        Ok(prometheus::TextEncoder::new().encode_to_string(&self.registry.gather())?)
    }
}

struct Order {
    order_id: String,
    payment_id: String,
}

fn order() -> Order {
    let order_id = unique("order");
    Order {
        payment_id: format!("pay-{order_id}"),
        order_id,
    }
}

fn eur(amount_minor: i64) -> Money {
    Money::new(amount_minor, "EUR")
}

#[tokio::test]
async fn an_authorized_payment_writes_one_outbox_row_that_the_relay_publishes_as_payment_authorized()
-> anyhow::Result<()> {
    let fx = Fixture::start(quick_psp(), |_| {}).await?;
    let o = order();
    fx.open_and_authorize(&o, 2_500, "tok_visa").await?;
    fx.wait_status(&o, "AUTHORIZED").await?;

    let outbox = fx.outbox(&o).await?;
    assert_eq!(outbox.len(), 1, "one outbox row");
    let (event_id, event_type, payload, status) = &outbox[0];
    assert_eq!(event_type, &fx.topics.authorized);
    assert_eq!(status, "PENDING");
    let attempt: (String, String) = sqlx::query_as(
        "SELECT idempotency_key, outcome FROM payment_attempts WHERE payment_id = $1",
    )
    .bind(&o.payment_id)
    .fetch_one(&fx.db.pool)
    .await?;
    assert_eq!(
        attempt,
        (
            format!("{}:authorize", o.payment_id),
            "SUCCEEDED".to_owned()
        )
    );
    let psp_reference: String =
        sqlx::query_scalar("SELECT psp_reference FROM payments WHERE payment_id = $1")
            .bind(&o.payment_id)
            .fetch_one(&fx.db.pool)
            .await?;

    // The relay publishes the row as it is; the Kafka record decodes as PaymentAuthorized.
    let relay_stop = fx.stop.child_token();
    let relay = tokio::spawn({
        let store = PgOutbox::new(fx.db.pool.clone(), "payment_outbox")?;
        let bootstrap = fx.stack.kafka_bootstrap.clone();
        let stop = relay_stop.clone();
        async move {
            let config = RelayConfig {
                poll_interval_ms: 50,
                ..RelayConfig::default()
            };
            run_relay(store, &bootstrap, &config, stop).await
        }
    });
    let consumer = keel_tests::kafka::consumer(&fx.stack.kafka_bootstrap, "read_committed")?;
    let records = keel_tests::kafka::read_topic(
        &consumer,
        &fx.topics.authorized,
        1,
        PATIENCE,
        Duration::from_secs(2),
    )
    .await?;
    relay_stop.cancel();
    relay.await??;
    assert_eq!(records.len(), 1, "exactly one record");
    let record = &records[0];
    assert_eq!(record.key(), Some(o.order_id.as_bytes()));
    assert_eq!(
        record.payload(),
        Some(payload.as_slice()),
        "payload passed through"
    );
    let header = record
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == EVENT_ID_HEADER))
        .and_then(|h| h.value)
        .context("no event id header")?;
    assert_eq!(header, event_id.as_bytes());
    let event: PaymentAuthorized = fx
        .codec
        .decode_from(&fx.topics.authorized, record.payload().context("a value")?)
        .await?;
    assert_eq!(&event.event_id, event_id);
    assert_eq!(event.order_id, o.order_id);
    assert_eq!(event.payment_id, o.payment_id);
    assert_eq!(event.amount, eur(2_500));
    assert_eq!(event.psp_reference, psp_reference);
    assert_eq!(event.causation_id, format!("{}-authorize", o.order_id));
    assert_eq!(fx.outbox(&o).await?[0].3, "SENT");

    let metrics = fx.metrics_text()?;
    for line in [
        r#"payment_attempts_total{kind="authorize",outcome="succeeded"} 1"#,
        r#"payment_attempt_latency_seconds_count{kind="authorize",outcome="succeeded"} 1"#,
        "payment_psp_calls_in_flight 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
    fx.finish().await
}

#[tokio::test]
async fn a_declined_card_fails_the_payment_with_its_decline_code() -> anyhow::Result<()> {
    let fx = Fixture::start(quick_psp(), |_| {}).await?;
    let o = order();
    fx.open_and_authorize(&o, 2_500, "tok_decline_insufficient_funds")
        .await?;
    fx.wait_status(&o, "FAILED").await?;
    let outbox = fx.outbox(&o).await?;
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].1, fx.topics.failed);
    let event: PaymentFailed = fx
        .codec
        .decode_from(&fx.topics.failed, &outbox[0].2)
        .await?;
    assert_eq!(event.reason, PaymentFailureReason::Declined);
    assert_eq!(event.detail.as_deref(), Some("insufficient_funds"));
    let (outcome, code): (String, Option<String>) =
        sqlx::query_as("SELECT outcome, decline_code FROM payment_attempts WHERE payment_id = $1")
            .bind(&o.payment_id)
            .fetch_one(&fx.db.pool)
            .await?;
    assert_eq!(
        (outcome.as_str(), code.as_deref()),
        ("DECLINED", Some("insufficient_funds"))
    );
    fx.finish().await
}

#[tokio::test]
async fn a_psp_timeout_fails_with_timeout_and_the_late_success_is_voided() -> anyhow::Result<()> {
    let psp = PspMockConfig {
        timeout_delay_ms: 1_500,
        ..quick_psp()
    };
    let fx = Fixture::start(psp, |c| c.psp_timeout_ms = 300).await?;
    let o = order();
    fx.open_and_authorize(&o, 4_200, "tok_timeout").await?;
    fx.wait_status(&o, "FAILED").await?;
    let outbox = fx.outbox(&o).await?;
    assert_eq!(outbox.len(), 1);
    let event: PaymentFailed = fx
        .codec
        .decode_from(&fx.topics.failed, &outbox[0].2)
        .await?;
    assert_eq!(event.reason, PaymentFailureReason::Timeout);
    assert_eq!(event.detail.as_deref(), Some("PSP_TIMEOUT"));

    // The PSP authorized after the worker gave up; the reconciler finds out and voids it.
    let stats = fx.wait_psp("the void", |s| s.voids == 1).await?;
    assert_eq!((stats.authorizations, stats.timeouts), (1, 1), "{stats:?}");
    fx.wait_count(
        "SELECT count(*) FROM payment_attempts WHERE payment_id = $1 \
         AND kind = 'VOID' AND outcome = 'SUCCEEDED'",
        &o,
        1,
    )
    .await?;
    fx.wait_count(
        "SELECT count(*) FROM payment_attempts WHERE payment_id = $1 \
         AND kind = 'AUTHORIZE' AND outcome = 'TIMEOUT' AND reconciled_at IS NOT NULL",
        &o,
        1,
    )
    .await?;
    assert_eq!(
        fx.status(&o).await?.as_deref(),
        Some("FAILED"),
        "never back to AUTHORIZED"
    );
    assert_eq!(fx.outbox(&o).await?.len(), 1, "the void emits nothing");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        fx.psp_stats().await?.voids,
        1,
        "voided once, not every round"
    );
    fx.finish().await
}

#[tokio::test]
async fn a_replayed_authorize_command_charges_once_and_emits_once() -> anyhow::Result<()> {
    let fx = Fixture::start(quick_psp(), |_| {}).await?;
    let o = order();
    fx.open_and_authorize(&o, 1_000, "tok_visa").await?;
    fx.wait_status(&o, "AUTHORIZED").await?;
    // The same command again (a redelivery), then a new Authorize for the same payment.
    let authorize = || PaymentCommandBody::Authorize(AuthorizePayment { amount: eur(1_000) });
    fx.send(&o, &format!("{}-authorize", o.order_id), authorize())
        .await?;
    fx.send(&o, "another-authorize", authorize()).await?;
    fx.wait_processed("another-authorize").await?;

    let stats = fx.psp_stats().await?;
    assert_eq!(stats.authorizations, 1, "{stats:?}");
    assert_eq!(fx.outbox(&o).await?.len(), 1, "one authorized event");
    let attempts: i64 =
        sqlx::query_scalar("SELECT count(*) FROM payment_attempts WHERE payment_id = $1")
            .bind(&o.payment_id)
            .fetch_one(&fx.db.pool)
            .await?;
    assert_eq!(attempts, 1);
    fx.finish().await
}

#[tokio::test]
async fn an_authorization_replayed_after_a_crash_reuses_its_idempotency_key() -> anyhow::Result<()>
{
    let fx = Fixture::start(quick_psp(), |_| {}).await?;
    let o = order();
    // What a worker that crashed after the PSP call (before its transaction) left behind: the
    // PSP authorized with the payment's key.
    let first: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/v1/authorizations", fx.psp_url))
        .header(IDEMPOTENCY_HEADER, format!("{}:authorize", o.payment_id))
        .json(
            &serde_json::json!({"amount_minor": 1_500, "currency": "EUR",
            "payment_method": "tok_visa", "reference": o.payment_id}),
        )
        .send()
        .await?
        .json()
        .await?;
    fx.open_and_authorize(&o, 1_500, "tok_visa").await?;
    fx.wait_status(&o, "AUTHORIZED").await?;
    let stats = fx.psp_stats().await?;
    assert_eq!(
        (stats.authorizations, stats.idempotent_replays),
        (1, 1),
        "the replay got the first answer: {stats:?}"
    );
    let psp_reference: String =
        sqlx::query_scalar("SELECT psp_reference FROM payments WHERE payment_id = $1")
            .bind(&o.payment_id)
            .fetch_one(&fx.db.pool)
            .await?;
    assert_eq!(Some(psp_reference.as_str()), first["id"].as_str());
    fx.finish().await
}

async fn captured(fx: &Fixture, o: &Order, amount_minor: i64) -> anyhow::Result<()> {
    fx.open_and_authorize(o, amount_minor, "tok_visa").await?;
    fx.send(
        o,
        &format!("{}-capture", o.order_id),
        PaymentCommandBody::Capture(CapturePayment {
            amount: eur(amount_minor),
        }),
    )
    .await?;
    fx.wait_status(o, "CAPTURED").await
}

fn refund(refund_id: &str, amount_minor: i64) -> PaymentCommandBody {
    PaymentCommandBody::Refund(RefundPayment {
        refund_id: refund_id.to_owned(),
        amount: eur(amount_minor),
        reason: "customer asked".to_owned(),
    })
}

async fn refund_status(fx: &Fixture, refund_id: &str) -> anyhow::Result<(String, Option<String>)> {
    Ok(
        sqlx::query_as("SELECT status, failure_code FROM refunds WHERE refund_id = $1")
            .bind(refund_id)
            .fetch_one(&fx.db.pool)
            .await?,
    )
}

#[tokio::test]
async fn a_refund_beyond_the_capture_is_refused() -> anyhow::Result<()> {
    let fx = Fixture::start(quick_psp(), |_| {}).await?;
    let o = order();
    captured(&fx, &o, 1_000).await?;
    assert_eq!(fx.psp_stats().await?.captures, 1);

    fx.send(&o, "refund-1", refund("r1", 600)).await?;
    fx.wait_status(&o, "PARTIALLY_REFUNDED").await?;
    fx.send(&o, "refund-2", refund("r2", 500)).await?;
    fx.wait_processed("refund-2").await?;
    assert_eq!(
        refund_status(&fx, "r2").await?,
        (
            "REFUSED".to_owned(),
            Some("refund_exceeds_captured".to_owned())
        )
    );
    fx.send(&o, "refund-3", refund("r3", 400)).await?;
    fx.wait_status(&o, "REFUNDED").await?;

    assert_eq!(fx.psp_stats().await?.refunds, 2);
    let refunded: Vec<_> = fx
        .outbox(&o)
        .await?
        .into_iter()
        .filter(|r| r.1 == fx.topics.refunded)
        .collect();
    assert_eq!(refunded.len(), 2);
    let event: PaymentRefunded = fx
        .codec
        .decode_from(&fx.topics.refunded, &refunded[0].2)
        .await?;
    assert_eq!(
        (event.refund_id.as_str(), event.amount.amount_minor),
        ("r1", 600)
    );
    fx.finish().await
}

/// "A cancelled order's authorization is voided, a captured one refunded": a void of a
/// captured (and partly refunded) payment refunds what is left, as a refund of its own
/// (`void-<command id>`, its own PSP idempotency key) with a `payment.refunded.v1` event; a
/// second delivery of the void changes nothing.
#[tokio::test]
async fn a_void_of_a_captured_payment_refunds_what_is_left() -> anyhow::Result<()> {
    let fx = Fixture::start(quick_psp(), |_| {}).await?;
    let result = void_after_capture(&fx).await;
    let finished = fx.finish().await;
    result?;
    finished
}

async fn void_after_capture(fx: &Fixture) -> anyhow::Result<()> {
    let o = order();
    captured(fx, &o, 1_000).await?;
    fx.send(&o, "refund-1", refund("r1", 300)).await?;
    fx.wait_status(&o, "PARTIALLY_REFUNDED").await?;
    let void = || {
        PaymentCommandBody::Void(keel_avro::records::VoidPayment {
            reason: "order cancelled".to_owned(),
        })
    };
    fx.send(&o, "cancel-1", void()).await?;
    fx.wait_status(&o, "REFUNDED").await?;
    fx.send(&o, "cancel-1", void()).await?;
    fx.send(&o, "cancel-2", void()).await?;
    fx.wait_processed("cancel-2").await?;

    let voided = refund_status(fx, "void-cancel-1").await?;
    anyhow::ensure!(voided == ("SUCCEEDED".to_owned(), None), "{voided:?}");
    let (refunded, reserved): (i64, i64) = sqlx::query_as(
        "SELECT refunded_minor, refund_reserved_minor FROM payments WHERE payment_id = $1",
    )
    .bind(&o.payment_id)
    .fetch_one(&fx.db.pool)
    .await?;
    anyhow::ensure!((refunded, reserved) == (1_000, 0), "{refunded}, {reserved}");
    let stats = fx.psp_stats().await?;
    anyhow::ensure!(
        (stats.refunds, stats.voids) == (2, 0),
        "one refund for the void, no void: {stats:?}"
    );
    let key: String = sqlx::query_scalar(
        "SELECT idempotency_key FROM payment_attempts WHERE command_id = 'cancel-1'",
    )
    .fetch_one(&fx.db.pool)
    .await?;
    anyhow::ensure!(
        key == format!("{}:refund:void-cancel-1", o.payment_id),
        "{key}"
    );
    let refunded_events: Vec<_> = fx
        .outbox(&o)
        .await?
        .into_iter()
        .filter(|r| r.1 == fx.topics.refunded)
        .collect();
    anyhow::ensure!(
        refunded_events.len() == 2,
        "{} events",
        refunded_events.len()
    );
    let event: PaymentRefunded = fx
        .codec
        .decode_from(&fx.topics.refunded, &refunded_events[1].2)
        .await?;
    anyhow::ensure!(
        (event.refund_id.as_str(), event.amount.amount_minor) == ("void-cancel-1", 700),
        "{event:?}"
    );
    Ok(())
}

/// Two refunds of 600 of a 1 000 capture, both queued on the payment's row lock (held here by
/// another transaction until both wait, as any concurrent writer of the row would hold it):
/// the ledger refuses one (`REFUSED`, `refund_exceeds_captured`) and asks the PSP once. Under
/// READ COMMITTED a reservation read in the locking statement itself would see the snapshot
/// from before the wait and miss the other refund's reservation.
#[tokio::test]
async fn concurrent_refunds_beyond_the_capture_refuse_one() -> anyhow::Result<()> {
    let fx = Fixture::start(quick_psp(), |_| {}).await?;
    // Errors, not panics, so the test database is dropped whatever happens.
    let result = refunds_queued_on_the_row_lock(&fx).await;
    let finished = fx.finish().await;
    result?;
    finished
}

async fn refunds_queued_on_the_row_lock(fx: &Fixture) -> anyhow::Result<()> {
    let o = order();
    captured(fx, &o, 1_000).await?;

    let mut holder = fx.db.pool.begin().await?;
    sqlx::query("SELECT 1 FROM payments WHERE payment_id = $1 FOR UPDATE")
        .bind(&o.payment_id)
        .execute(&mut *holder)
        .await?;
    // Different Kafka keys: the worker runs both at once.
    fx.send_keyed(&o.order_id, &o, "refund-a", refund("ra", 600))
        .await?;
    fx.send_keyed(
        &format!("{}-other", o.order_id),
        &o,
        "refund-b",
        refund("rb", 600),
    )
    .await?;
    let start = Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock'",
        )
        .fetch_one(&fx.db.pool)
        .await?;
        if waiting >= 2 {
            break;
        }
        if start.elapsed() > PATIENCE {
            bail!("the two refunds never waited for the row lock ({waiting} waiting)");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    holder.commit().await?;
    fx.wait_processed("refund-a").await?;
    fx.wait_processed("refund-b").await?;

    let mut statuses = vec![
        refund_status(fx, "ra").await?,
        refund_status(fx, "rb").await?,
    ];
    statuses.sort();
    let expected = vec![
        (
            "REFUSED".to_owned(),
            Some("refund_exceeds_captured".to_owned()),
        ),
        ("SUCCEEDED".to_owned(), None),
    ];
    anyhow::ensure!(
        statuses == expected,
        "the ledger, not the PSP, must refuse the refund that would exceed the capture: \
         {statuses:?}"
    );
    let (refunded, reserved): (i64, i64) = sqlx::query_as(
        "SELECT refunded_minor, refund_reserved_minor FROM payments WHERE payment_id = $1",
    )
    .bind(&o.payment_id)
    .fetch_one(&fx.db.pool)
    .await?;
    anyhow::ensure!(
        (refunded, reserved) == (600, 0),
        "refunded {refunded}, reserved {reserved}"
    );
    let stats: Stats = fx.psp_stats().await?;
    let refund_attempts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM payment_attempts WHERE payment_id = $1 AND kind = 'REFUND'",
    )
    .bind(&o.payment_id)
    .fetch_one(&fx.db.pool)
    .await?;
    anyhow::ensure!(
        (stats.refunds, refund_attempts) == (1, 1),
        "the PSP must be asked for one refund only: {refund_attempts} attempts, {stats:?}"
    );
    let events = fx
        .outbox(&o)
        .await?
        .into_iter()
        .filter(|r| r.1 == fx.topics.refunded)
        .count();
    anyhow::ensure!(events == 1, "{events} refund events");
    Ok(())
}

/// A PSP callback whose event id PostgreSQL cannot store (a NUL character) must not stop the
/// order's later payment commands: it is a bad command (dead-lettered with why and where, and
/// counted), not a dependency failure retried for ever.
#[tokio::test]
async fn a_callback_whose_event_id_the_ledger_cannot_store_does_not_wedge_the_order()
-> anyhow::Result<()> {
    let psp = PspMockConfig {
        pending_delay_ms: 600_000,
        ..quick_psp()
    };
    let fx = Fixture::start(psp, |_| {}).await?;
    let result = poison_callback_then_a_good_one(&fx).await;
    let finished = fx.finish().await;
    result?;
    finished
}

async fn poison_callback_then_a_good_one(fx: &Fixture) -> anyhow::Result<()> {
    let o = order();
    let reference = pending(fx, &o).await?;
    fx.send(
        &o,
        "cb-nul",
        callback("evt_\u{0}_1", &reference, PspOutcome::Authorized),
    )
    .await?;
    fx.send(
        &o,
        "cb-good",
        callback("evt_good", &reference, PspOutcome::Authorized),
    )
    .await?;
    fx.wait_processed("cb-good")
        .await
        .context("the order's next callback was never applied: the first one wedged it")?;
    let status = fx.status(&o).await?;
    anyhow::ensure!(status.as_deref() == Some("AUTHORIZED"), "{status:?}");
    let skipped = metric(
        &fx.metrics_text()?,
        r#"payment_commands_total{result="skipped"}"#,
    );
    anyhow::ensure!(skipped == Some(1.0), "skipped: {skipped:?}");
    let dead_lettered = metric(
        &fx.metrics_text()?,
        &format!(
            r#"keel_sink_dead_letters_total{{sink="payment",topic="{}"}}"#,
            fx.topics.commands
        ),
    );
    anyhow::ensure!(
        dead_lettered == Some(1.0),
        "dead-lettered: {dead_lettered:?}"
    );
    let reader = keel_tests::kafka::consumer(&fx.stack.kafka_bootstrap, "read_committed")?;
    let letters =
        keel_tests::kafka::read_topic(&reader, &fx.topics.dlq, 1, PATIENCE, Duration::from_secs(2))
            .await?;
    anyhow::ensure!(letters.len() == 1, "dead letters: {letters:?}");
    let letter = &letters[0];
    let header = |name: &str| -> Option<String> {
        letter.headers().and_then(|h| {
            h.iter()
                .filter(|h| h.key == name)
                .last()
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
    };
    anyhow::ensure!(
        header(keel_topology::dlq_headers::SOURCE_TOPIC).as_ref() == Some(&fx.topics.commands),
        "source topic {:?}",
        header(keel_topology::dlq_headers::SOURCE_TOPIC)
    );
    anyhow::ensure!(
        header(keel_topology::dlq_headers::PROCESSOR).as_deref() == Some("payment"),
        "processor {:?}",
        header(keel_topology::dlq_headers::PROCESSOR)
    );
    let why = header(keel_topology::dlq_headers::ERROR).unwrap_or_default();
    anyhow::ensure!(!why.is_empty(), "no error header");
    let value = letter.payload().context("the dead letter has a value")?;
    let command: PaymentCommand = fx.codec.decode_from(&fx.topics.commands, value).await?;
    anyhow::ensure!(
        command.command_id == "cb-nul",
        "dead-lettered {}",
        command.command_id
    );
    Ok(())
}

/// Break report 13, D3: an intent for 0 (or for a currency no payment has) was ignored with a
/// warning; its order then waited for an outcome until the saga's payment deadline. It is a bad
/// command: dead-lettered with why, counted, and the next commands go on.
#[tokio::test]
async fn an_intent_no_payment_can_have_is_dead_lettered_with_why() -> anyhow::Result<()> {
    let fx = Fixture::start(quick_psp(), |_| {}).await?;
    let result = invalid_intents_then_a_good_one(&fx).await;
    let finished = fx.finish().await;
    result?;
    finished
}

async fn invalid_intents_then_a_good_one(fx: &Fixture) -> anyhow::Result<()> {
    let (free, xxx, good) = (order(), order(), order());
    for (o, id, amount) in [
        (&free, "intent-zero", eur(0)),
        (&xxx, "intent-xxx", Money::new(100, "XXX")),
    ] {
        fx.send(
            o,
            id,
            PaymentCommandBody::CreateIntent(CreatePaymentIntent {
                customer_id: "customer-1".to_owned(),
                amount,
                payment_method: "tok_visa".to_owned(),
            }),
        )
        .await?;
    }
    fx.open_and_authorize(&good, 1_500, "tok_visa").await?;
    fx.wait_status(&good, "AUTHORIZED").await?;
    for o in [&free, &xxx] {
        let status = fx.status(o).await?;
        anyhow::ensure!(
            status.is_none(),
            "an invalid intent was written: {status:?}"
        );
    }
    let skipped = metric(
        &fx.metrics_text()?,
        r#"payment_commands_total{result="skipped"}"#,
    );
    anyhow::ensure!(skipped == Some(2.0), "skipped: {skipped:?}");
    let reader = keel_tests::kafka::consumer(&fx.stack.kafka_bootstrap, "read_committed")?;
    let letters =
        keel_tests::kafka::read_topic(&reader, &fx.topics.dlq, 2, PATIENCE, Duration::from_secs(2))
            .await?;
    anyhow::ensure!(letters.len() == 2, "dead letters: {letters:?}");
    for letter in &letters {
        let why = letter
            .headers()
            .and_then(|h| {
                h.iter()
                    .filter(|h| h.key == keel_topology::dlq_headers::ERROR)
                    .last()
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
            .unwrap_or_default();
        anyhow::ensure!(
            why.contains("an amount is 1 to 9007199254740991 minor units of a currency in use"),
            "why: {why}"
        );
    }
    Ok(())
}

/// The unknown-id window of [`a_command_with_an_unknown_schema_id_is_dead_lettered_when_its_window_ends`].
/// Backoff steps of 100, 200, 400, 800, 1,600 ms end 200 ms before it, so a backoff not capped
/// at its end waits the next step (3.2 s) past it: 6.3 s in all, against 3.3 s capped (the
/// test allows 1.5 s of slack for a loaded machine).
const UNKNOWN_ID_WINDOW: Duration = Duration::from_millis(3_300);

/// A command framed with a schema id the registry does not know (yet) is asked again for
/// `[registry].unknown_id_patience_ms` (a replica may lag), then dead-lettered as the command's
/// fault; the retries' backoff stops at the window's end, so the order's commands behind it
/// wait the window, not the window and a backoff step past it.
#[tokio::test]
async fn a_command_with_an_unknown_schema_id_is_dead_lettered_when_its_window_ends()
-> anyhow::Result<()> {
    let fx = Fixture::start_with(quick_psp(), |_| {}, Some(UNKNOWN_ID_WINDOW)).await?;
    let result = unknown_schema_id_then_a_good_command(&fx).await;
    let finished = fx.finish().await;
    result?;
    finished
}

async fn unknown_schema_id_then_a_good_command(fx: &Fixture) -> anyhow::Result<()> {
    let o = order();
    let o = &o;
    let intent = |id: &'static str| async move {
        fx.send(
            o,
            id,
            PaymentCommandBody::CreateIntent(CreatePaymentIntent {
                customer_id: "customer-1".to_owned(),
                amount: eur(1_000),
                payment_method: "tok_visa".to_owned(),
            }),
        )
        .await
    };
    // The worker owns the order's partition and applies its commands.
    intent("intent-1").await?;
    fx.wait_processed("intent-1").await?;
    // Magic byte, schema id 88888888 (big-endian; the registry has no such id), a datum.
    let mut framed = vec![0];
    framed.extend_from_slice(&88_888_888_u32.to_be_bytes());
    framed.extend_from_slice(b"zz");
    let sent = Instant::now();
    fx.producer
        .send(
            FutureRecord::to(&fx.topics.commands)
                .key(&o.order_id)
                .payload(&framed),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    intent("intent-2").await?;
    fx.wait_processed("intent-2")
        .await
        .context("the order's command after the unknown id was never applied")?;
    let took = sent.elapsed();
    let skipped = metric(
        &fx.metrics_text()?,
        r#"payment_commands_total{result="skipped"}"#,
    );
    anyhow::ensure!(skipped == Some(1.0), "skipped: {skipped:?}");
    anyhow::ensure!(
        took >= UNKNOWN_ID_WINDOW,
        "passed after {took:?}, before the window"
    );
    anyhow::ensure!(
        took < UNKNOWN_ID_WINDOW + Duration::from_millis(1_500),
        "the command behind the unknown id waited {took:?}: the backoff went past the \
         {UNKNOWN_ID_WINDOW:?} window"
    );
    Ok(())
}

#[tokio::test]
async fn a_pending_authorization_is_decided_by_its_callback_once_even_if_delivered_twice()
-> anyhow::Result<()> {
    let fx = Fixture::start(quick_psp(), |_| {}).await?;
    let o = order();
    fx.open_and_authorize(&o, 3_000, "tok_pending").await?;
    fx.wait_count(
        "SELECT count(*) FROM payments WHERE payment_id = $1 \
         AND status = 'AUTHORIZING' AND psp_reference IS NOT NULL",
        &o,
        1,
    )
    .await?;
    assert!(fx.outbox(&o).await?.is_empty(), "nothing decided yet");
    let psp_reference: String =
        sqlx::query_scalar("SELECT psp_reference FROM payments WHERE payment_id = $1")
            .bind(&o.payment_id)
            .fetch_one(&fx.db.pool)
            .await?;
    let callback = || {
        PaymentCommandBody::PspCallback(PspCallback {
            psp_event_id: "evt_1".to_owned(),
            psp_reference: psp_reference.clone(),
            outcome: PspOutcome::Authorized,
            decline_code: None,
        })
    };
    // The ingest API turns each delivery into its own command.
    fx.send(&o, "callback-1", callback()).await?;
    fx.send(&o, "callback-2", callback()).await?;
    fx.wait_processed("callback-2").await?;
    assert_eq!(fx.status(&o).await?.as_deref(), Some("AUTHORIZED"));
    let outbox = fx.outbox(&o).await?;
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].1, fx.topics.authorized);
    fx.wait_count(
        "SELECT count(*) FROM payment_attempts WHERE payment_id = $1 AND outcome = 'SUCCEEDED'",
        &o,
        2,
    )
    .await?;
    fx.finish().await
}

/// The ledger of one scripted run, without what is generated per run (attempt and event ids,
/// timestamps, latencies, the run's topic names): payments, attempts, refunds, applied commands
/// and the outbox rows' decoded events, each sorted.
#[derive(Debug, PartialEq, Eq)]
struct LedgerDump {
    payments: Vec<String>,
    attempts: Vec<String>,
    refunds: Vec<String>,
    commands: Vec<String>,
    events: Vec<String>,
}

async fn dump_ledger(fx: &Fixture) -> anyhow::Result<LedgerDump> {
    let pool = &fx.db.pool;
    let rows = |sql: &'static str| async move {
        let rows = sqlx::query(sql).fetch_all(pool).await?;
        let mut out = Vec::new();
        for row in &rows {
            let mut cells = Vec::new();
            for i in 0..row.len() {
                let cell: Option<String> = row.try_get(i)?;
                cells.push(cell.unwrap_or_else(|| "NULL".to_owned()));
            }
            out.push(cells.join(" | "));
        }
        anyhow::Ok(out)
    };
    let payments = rows(
        "SELECT payment_id, order_id, customer_id, amount_minor::TEXT, currency::TEXT, \
         payment_method, status, psp_reference, captured_minor::TEXT, refunded_minor::TEXT \
         FROM payments ORDER BY payment_id",
    )
    .await?;
    let attempts = rows(
        "SELECT payment_id, command_id, idempotency_key, kind, outcome, decline_code, \
         psp_event_id, (reconciled_at IS NOT NULL)::TEXT FROM payment_attempts \
         ORDER BY idempotency_key",
    )
    .await?;
    let refunds = rows(
        "SELECT refund_id, payment_id, amount_minor::TEXT, reason, status, failure_code, \
         psp_reference FROM refunds ORDER BY refund_id",
    )
    .await?;
    let commands = rows("SELECT command_id FROM processed_commands ORDER BY command_id").await?;
    let mut events = Vec::new();
    for (_, event_type, payload, status) in sqlx::query_as::<_, (String, String, Vec<u8>, String)>(
        "SELECT id, event_type, payload, status FROM payment_outbox",
    )
    .fetch_all(pool)
    .await?
    {
        let event = if event_type == fx.topics.authorized {
            let mut e: PaymentAuthorized = fx.codec.decode_from(&event_type, &payload).await?;
            (e.event_id, e.occurred_at) = (String::new(), 0);
            format!("{e:?}")
        } else if event_type == fx.topics.failed {
            let mut e: PaymentFailed = fx.codec.decode_from(&event_type, &payload).await?;
            (e.event_id, e.occurred_at) = (String::new(), 0);
            format!("{e:?}")
        } else if event_type == fx.topics.refunded {
            let mut e: PaymentRefunded = fx.codec.decode_from(&event_type, &payload).await?;
            (e.event_id, e.occurred_at) = (String::new(), 0);
            format!("{e:?}")
        } else {
            bail!("an outbox row for {event_type}");
        };
        events.push(format!("{status} {event}"));
    }
    events.sort();
    Ok(LedgerDump {
        payments,
        attempts,
        refunds,
        commands,
        events,
    })
}

/// One scripted run against a PSP seeded with `seed` that declines and errs at random: open
/// and authorize eight payments, capture the authorized ones, refund part of each capture and
/// then too much. Returns the ledger once every command is applied.
async fn scripted_run(seed: u64) -> anyhow::Result<LedgerDump> {
    let psp = PspMockConfig {
        seed,
        decline_rate: 0.3,
        error_rate: 0.15,
        timeout_rate: 0.0,
        ..quick_psp()
    };
    let fx = Fixture::start(psp, |c| c.psp_retries = 1).await?;
    let orders: Vec<Order> = (0..8)
        .map(|i| Order {
            order_id: format!("determinism-{i}"),
            payment_id: format!("pay-determinism-{i}"),
        })
        .collect();
    for (i, o) in orders.iter().enumerate() {
        // Any token but the special ones gets the seeded random mix.
        fx.open_and_authorize(o, 1_000 + 10 * i as i64, "tok_mix")
            .await?;
    }
    let mut authorized = Vec::new();
    for o in &orders {
        fx.wait_processed(&format!("{}-authorize", o.order_id))
            .await?;
        if fx.status(o).await?.as_deref() == Some("AUTHORIZED") {
            authorized.push(o);
        }
    }
    for o in &authorized {
        let amount: i64 =
            sqlx::query_scalar("SELECT amount_minor FROM payments WHERE payment_id = $1")
                .bind(&o.payment_id)
                .fetch_one(&fx.db.pool)
                .await?;
        fx.send(
            o,
            &format!("{}-capture", o.order_id),
            PaymentCommandBody::Capture(CapturePayment {
                amount: eur(amount),
            }),
        )
        .await?;
        fx.send(
            o,
            &format!("{}-refund-1", o.order_id),
            refund(&format!("{}-r1", o.order_id), 300),
        )
        .await?;
        fx.send(
            o,
            &format!("{}-refund-2", o.order_id),
            refund(&format!("{}-r2", o.order_id), 5_000),
        )
        .await?;
    }
    for o in &authorized {
        fx.wait_processed(&format!("{}-refund-2", o.order_id))
            .await?;
    }
    let dump = dump_ledger(&fx).await?;
    fx.finish().await?;
    Ok(dump)
}

#[tokio::test]
async fn two_runs_of_the_same_commands_with_the_same_seed_write_the_same_ledger()
-> anyhow::Result<()> {
    let first = scripted_run(7).await?;
    // The script reached the branches: authorized, captured and refunded; declined; a refund
    // refused.
    let text = format!("{first:#?}");
    for needle in [
        "PARTIALLY_REFUNDED",
        "card_declined",
        "refund_exceeds_captured",
    ] {
        assert!(text.contains(needle), "no {needle} in the ledger: {text}");
    }
    let second = scripted_run(7).await?;
    assert_eq!(
        first, second,
        "the same seed and commands gave another ledger"
    );
    let other_seed = scripted_run(8).await?;
    assert_ne!(
        first.payments, other_seed.payments,
        "another seed should decide otherwise (or the seed is not used)"
    );
    Ok(())
}

fn callback(event_id: &str, psp_reference: &str, outcome: PspOutcome) -> PaymentCommandBody {
    PaymentCommandBody::PspCallback(PspCallback {
        psp_event_id: event_id.to_owned(),
        psp_reference: psp_reference.to_owned(),
        outcome,
        decline_code: (outcome == PspOutcome::Declined).then(|| "insufficient_funds".to_owned()),
    })
}

/// Open and authorize with `tok_pending`; returns the PSP reference once the payment waits for
/// its callback.
async fn pending(fx: &Fixture, o: &Order) -> anyhow::Result<String> {
    fx.open_and_authorize(o, 2_000, "tok_pending").await?;
    fx.wait_count(
        "SELECT count(*) FROM payments WHERE payment_id = $1 \
         AND status = 'AUTHORIZING' AND psp_reference IS NOT NULL",
        o,
        1,
    )
    .await?;
    Ok(
        sqlx::query_scalar("SELECT psp_reference FROM payments WHERE payment_id = $1")
            .bind(&o.payment_id)
            .fetch_one(&fx.db.pool)
            .await?,
    )
}

/// `(outcome, stale)` of every callback attempt of `o`, in event id order.
async fn callback_attempts(fx: &Fixture, o: &Order) -> anyhow::Result<Vec<(String, bool)>> {
    Ok(sqlx::query_as(
        "SELECT outcome, stale FROM payment_attempts WHERE payment_id = $1 \
         AND psp_event_id IS NOT NULL ORDER BY psp_event_id",
    )
    .bind(&o.payment_id)
    .fetch_all(&fx.db.pool)
    .await?)
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

/// A capture that arrives before the authorization's callback captures nothing; the callback
/// then authorizes once (one event, also when a second event for it arrives), a capture after
/// it captures; a stale declined callback for the captured payment is kept for audit, marked
/// stale, moves nothing back and is no failure in `payment_failure_rate`.
#[tokio::test]
async fn a_capture_before_the_authorization_callback_never_moves_the_payment_backwards()
-> anyhow::Result<()> {
    let psp = PspMockConfig {
        pending_delay_ms: 50,
        ..quick_psp()
    };
    let fx = Fixture::start(psp, |_| {}).await?;
    let o = order();
    let reference = pending(&fx, &o).await?;
    let capture = || PaymentCommandBody::Capture(CapturePayment { amount: eur(2_000) });
    fx.send(&o, "early-capture", capture()).await?;
    fx.wait_processed("early-capture").await?;
    assert_eq!(fx.status(&o).await?.as_deref(), Some("AUTHORIZING"));
    assert_eq!(fx.psp_stats().await?.captures, 0, "nothing to capture yet");

    fx.send(
        &o,
        "cb-1",
        callback("evt_1", &reference, PspOutcome::Authorized),
    )
    .await?;
    fx.send(
        &o,
        "cb-2",
        callback("evt_2", &reference, PspOutcome::Authorized),
    )
    .await?;
    fx.wait_processed("cb-2").await?;
    assert_eq!(fx.status(&o).await?.as_deref(), Some("AUTHORIZED"));
    fx.send(&o, "capture", capture()).await?;
    fx.wait_status(&o, "CAPTURED").await?;
    fx.send(
        &o,
        "cb-3",
        callback("evt_3", &reference, PspOutcome::Declined),
    )
    .await?;
    fx.wait_processed("cb-3").await?;

    assert_eq!(fx.status(&o).await?.as_deref(), Some("CAPTURED"));
    let outbox = fx.outbox(&o).await?;
    assert_eq!(outbox.len(), 1, "one event: {outbox:?}");
    assert_eq!(outbox[0].1, fx.topics.authorized);
    assert_eq!(fx.psp_stats().await?.captures, 1);
    assert_eq!(
        callback_attempts(&fx, &o).await?,
        vec![
            ("SUCCEEDED".to_owned(), false),
            ("SUCCEEDED".to_owned(), true),
            ("DECLINED".to_owned(), true),
        ]
    );
    let metrics = fx.metrics_text()?;
    assert_eq!(
        metric(&metrics, "payment_failure_rate"),
        Some(0.0),
        "the stale decline is no failure:\n{metrics}"
    );
    for line in [
        r#"payment_callbacks_total{outcome="declined",stale="true"} 1"#,
        r#"payment_callbacks_total{outcome="succeeded",stale="false"} 1"#,
        r#"payment_callbacks_total{outcome="succeeded",stale="true"} 1"#,
        r#"payment_attempts_total{kind="authorize",outcome="pending"} 1"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
    fx.finish().await
}

/// A void that arrives before the authorization's callback voids the authorization at the PSP;
/// the authorized callback that comes later (the PSP sent it before it saw the void) leaves the
/// payment VOIDED, emits nothing and voids nothing twice.
#[tokio::test]
async fn a_void_before_the_authorization_callback_stays_voided() -> anyhow::Result<()> {
    let psp = PspMockConfig {
        pending_delay_ms: 60_000,
        ..quick_psp()
    };
    let fx = Fixture::start(psp, |_| {}).await?;
    let o = order();
    let reference = pending(&fx, &o).await?;
    fx.send(
        &o,
        "early-void",
        PaymentCommandBody::Void(keel_avro::records::VoidPayment {
            reason: "ORDER_CANCELLED".to_owned(),
        }),
    )
    .await?;
    fx.wait_status(&o, "VOIDED").await?;
    fx.send(
        &o,
        "cb-1",
        callback("evt_1", &reference, PspOutcome::Authorized),
    )
    .await?;
    fx.send(
        &o,
        "cb-1-again",
        callback("evt_1", &reference, PspOutcome::Authorized),
    )
    .await?;
    fx.send(
        &o,
        "cb-2",
        callback("evt_2", &reference, PspOutcome::Declined),
    )
    .await?;
    fx.wait_processed("cb-2").await?;

    assert_eq!(fx.status(&o).await?.as_deref(), Some("VOIDED"));
    assert!(
        fx.outbox(&o).await?.is_empty(),
        "a voided payment emits nothing"
    );
    let stats = fx.psp_stats().await?;
    assert_eq!((stats.authorizations, stats.voids), (1, 1), "{stats:?}");
    assert_eq!(
        callback_attempts(&fx, &o).await?,
        vec![
            ("SUCCEEDED".to_owned(), false),
            ("DECLINED".to_owned(), true),
        ],
        "each event once; the authorized one voided its authorization again (not stale)"
    );
    fx.finish().await
}

/// `payment_failure_rate` counts finished authorizations, however they finish: a `pending`
/// answer is not finished, the declined callback that settles it is a failure, a synchronous
/// success is not (1 of 2).
#[tokio::test]
async fn a_decline_by_callback_counts_in_the_failure_rate() -> anyhow::Result<()> {
    let fx = Fixture::start(quick_psp(), |_| {}).await?;
    let o = order();
    let reference = pending(&fx, &o).await?;
    assert_eq!(
        metric(&fx.metrics_text()?, "payment_failure_rate"),
        Some(0.0),
        "pending is not finished"
    );
    fx.send(
        &o,
        "cb-1",
        callback("evt_1", &reference, PspOutcome::Declined),
    )
    .await?;
    fx.wait_status(&o, "FAILED").await?;
    assert_eq!(
        metric(&fx.metrics_text()?, "payment_failure_rate"),
        Some(1.0)
    );
    let ok = order();
    fx.open_and_authorize(&ok, 1_000, "tok_visa").await?;
    fx.wait_status(&ok, "AUTHORIZED").await?;
    assert_eq!(
        metric(&fx.metrics_text()?, "payment_failure_rate"),
        Some(0.5)
    );
    fx.finish().await
}

/// While the PSP works on a call, `payment_psp_calls_in_flight` shows it; after the answer the
/// gauge is back at 0 and the attempt is in the latency histogram under its outcome.
#[tokio::test]
async fn psp_calls_in_flight_rise_during_a_call_and_fall_after_it() -> anyhow::Result<()> {
    let psp = PspMockConfig {
        latency_min_ms: 1_500,
        latency_max_ms: 1_500,
        ..quick_psp()
    };
    let fx = Fixture::start(psp, |_| {}).await?;
    let o = order();
    fx.open_and_authorize(&o, 1_000, "tok_decline_card_declined")
        .await?;
    let start = Instant::now();
    while metric(&fx.metrics_text()?, "payment_psp_calls_in_flight") != Some(1.0) {
        assert!(
            start.elapsed() < PATIENCE,
            "never saw the call in flight:\n{}",
            fx.metrics_text()?
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fx.wait_status(&o, "FAILED").await?;
    let metrics = fx.metrics_text()?;
    for line in [
        "payment_psp_calls_in_flight 0",
        r#"payment_attempts_total{kind="authorize",outcome="declined"} 1"#,
        r#"payment_attempt_latency_seconds_count{kind="authorize",outcome="declined"} 1"#,
        r#"payment_attempt_latency_seconds_bucket{kind="authorize",outcome="declined",le="1"} 0"#,
        r#"payment_attempt_latency_seconds_bucket{kind="authorize",outcome="declined",le="2.5"} 1"#,
        "payment_failure_rate 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
    fx.finish().await
}

/// `[payment] max_in_flight` bounds the PSP calls open at once: six orders authorized
/// together through a slow PSP with a bound of 2 never have more than 2 calls open at the PSP
/// (its own count of requests in progress), and do use both.
#[tokio::test]
async fn psp_calls_in_flight_never_exceed_max_in_flight() -> anyhow::Result<()> {
    let psp = PspMockConfig {
        latency_min_ms: 300,
        latency_max_ms: 300,
        ..quick_psp()
    };
    let fx = Fixture::start(psp, |c| c.max_in_flight = 2).await?;
    let result = six_orders_at_once(&fx).await;
    let finished = fx.finish().await;
    result?;
    finished
}

async fn six_orders_at_once(fx: &Fixture) -> anyhow::Result<()> {
    let orders: Vec<Order> = (0..6).map(|_| order()).collect();
    for o in &orders {
        fx.open_and_authorize(o, 1_000, "tok_visa").await?;
    }
    for o in &orders {
        fx.wait_status(o, "AUTHORIZED").await?;
    }
    let stats = fx.psp_stats().await?;
    anyhow::ensure!(
        stats.authorizations == 6 && stats.max_requests_in_flight == 2,
        "at most (and, with six orders waiting, exactly) 2 PSP calls at once: {stats:?}"
    );
    Ok(())
}

/// Migration 0004 moves the refund reservation onto the payment row: a ledger written before
/// it (a payment with a PENDING and a SUCCEEDED refund) migrates to a reservation equal to its
/// PENDING refunds, and the database then refuses a reservation beyond the capture.
#[tokio::test]
async fn existing_pending_refunds_migrate_into_the_reserved_amount() -> anyhow::Result<()> {
    let stack = Stack::from_env();
    let name = unique("keel_test");
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&stack.postgres_url)
        .await?;
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await?;
    let (base, _) = stack
        .postgres_url
        .rsplit_once('/')
        .context("the PostgreSQL url has no database")?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&format!("{base}/{name}"))
        .await?;
    let result = migrate_old_ledger(&pool).await;
    pool.close().await;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await?;
    result
}

async fn migrate_old_ledger(pool: &PgPool) -> anyhow::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/payments");
    let mut before = sqlx::migrate::Migrator::new(dir).await?;
    before.migrations = before
        .migrations
        .iter()
        .filter(|m| m.version < 4)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    before.run(pool).await?;
    sqlx::raw_sql(
        "INSERT INTO payments (payment_id, order_id, customer_id, amount_minor, currency, \
         payment_method, status, psp_reference, captured_minor, refunded_minor) VALUES \
         ('pay-1', 'order-1', 'c', 1000, 'EUR', 'tok_visa', 'PARTIALLY_REFUNDED', 'auth_1', \
          1000, 200), \
         ('pay-2', 'order-2', 'c', 500, 'EUR', 'tok_visa', 'CAPTURED', 'auth_2', 500, 0); \
         INSERT INTO refunds (refund_id, payment_id, amount_minor, reason, status) VALUES \
         ('r1', 'pay-1', 200, 'x', 'SUCCEEDED'), ('r2', 'pay-1', 300, 'x', 'PENDING'), \
         ('r3', 'pay-1', 100, 'x', 'PENDING'), ('r4', 'pay-1', 50, 'x', 'REFUSED');",
    )
    .execute(pool)
    .await?;
    payment::migrate(pool).await?;
    let reserved: Vec<(String, i64)> = sqlx::query_as(
        "SELECT payment_id, refund_reserved_minor FROM payments ORDER BY payment_id",
    )
    .fetch_all(pool)
    .await?;
    anyhow::ensure!(
        reserved == vec![("pay-1".to_owned(), 400), ("pay-2".to_owned(), 0)],
        "{reserved:?}"
    );
    let beyond =
        sqlx::query("UPDATE payments SET refund_reserved_minor = 801 WHERE payment_id = 'pay-1'")
            .execute(pool)
            .await;
    anyhow::ensure!(
        beyond.is_err(),
        "refunded 200 + reserved 801 of a 1 000 capture must be refused"
    );
    Ok(())
}
