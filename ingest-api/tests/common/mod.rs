//! What the ingest API's integration tests (`api.rs`, `payments.rs`, `inventory.rs`,
//! `idempotency_retention.rs`) share: [`Base`], the part of every test env that is the same
//! (the stack, a codec with random registry subjects, a random commands topic, an HTTP client,
//! the servers' stop token); [`OrdersDb`], a fresh MariaDB database with the orders schema;
//! [`with_env`], which tears an env down whatever the test did; starting a server
//! ([`Base::serve`]); sending requests ([`send`], [`Answer`]); reading the commands topic back
//! ([`Base::commands`]); and the walk that checks the OpenAPI document against what the routes
//! really answer ([`documented`], [`observe`], [`assert_agree`]).

// Each test file is its own crate and uses only part of this module.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::ops::Deref;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::FutureExt;
use keel_avro::{Codec, Record, RegistryConfig};
use keel_ingest_api::{ApiConfig, ApiDeps, Endpoint, InventoryDeps, command_producer};
use keel_tests::topics::TopicCleanup;
use keel_tests::{Stack, unique};
use rdkafka::Message;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::{AssertSqlSafe, MySqlPool, PgPool};
use tokio_util::sync::CancellationToken;

/// The bearer token the tests that turn authentication on accept.
pub const TOKEN: &str = "s3cret-token";

/// What every test env has; each file's `Env` adds its database or keyspace and derefs to this.
pub struct Base {
    pub stack: Stack,
    /// Registry subjects `<unique prefix>-<topic>-value`.
    pub codec: Codec,
    /// A fresh commands topic (3 partitions) the servers produce to.
    pub topic: String,
    /// Stops every server (and worker) started on this env.
    pub stop: CancellationToken,
    /// A client with a 30 s timeout.
    pub http: reqwest::Client,
    /// Deletes [`Base::topic`] (and the topics named to it later) when the env drops.
    pub topics: TopicCleanup,
}

/// What a server is started with besides its config and its producer.
pub struct Deps {
    /// The orders database.
    pub pool: MySqlPool,
    pub ledger: Option<PgPool>,
    pub inventory: Option<InventoryDeps>,
    /// What `/ready` answers.
    pub ready: bool,
}

/// A running server.
pub struct Server {
    pub base: String,
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// Makes `order_id` a checkout's in `pool`'s orders database, as `POST /orders` does when it
/// claims its key (a request without an Idempotency-Key: scope `auto`, key = order id).
pub async fn claim_checkout(pool: &MySqlPool, order_id: &str) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO api_idempotency (scope, idem_key, request_hash, order_id, command_id, \
         created_at) VALUES ('auto', ?, '', ?, ?, NOW(3))",
    )
    .bind(order_id)
    .bind(order_id)
    .bind(uuid::Uuid::new_v4().to_string())
    .execute(pool)
    .await?;
    Ok(())
}

/// A fresh MariaDB database (`keel_test_<random>`) with the orders schema migrated
/// (`keel_processors::orders::migrate`); [`OrdersDb::drop_database`] drops it.
pub struct OrdersDb {
    pub name: String,
    admin: MySqlPool,
    pub pool: MySqlPool,
}

impl OrdersDb {
    /// Creates and migrates the database on `mysql_url` (the `keel` user's `keel\_%` grant),
    /// with a pool of `max_connections`.
    pub async fn create(mysql_url: &str, max_connections: u32) -> anyhow::Result<Self> {
        let name = unique("keel_test");
        let admin = MySqlPoolOptions::new()
            .max_connections(1)
            .connect(mysql_url)
            .await
            .context("connecting to MariaDB")?;
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
            .execute(&admin)
            .await
            .context("creating the test database (needs the keel\\_% grant)")?;
        let pool = MySqlPoolOptions::new()
            .max_connections(max_connections)
            .connect(&with_database(mysql_url, &name)?)
            .await?;
        keel_processors::orders::migrate(&pool).await?;
        Ok(Self { name, admin, pool })
    }

    /// Closes the pool and drops the database (a failure is printed, not raised: teardown).
    pub async fn drop_database(self) {
        self.pool.close().await;
        if let Err(e) = sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS `{}`",
            self.name
        )))
        .execute(&self.admin)
        .await
        {
            eprintln!("dropping {}: {e}", self.name);
        }
    }
}

impl Base {
    /// A codec with subjects prefixed `unique(subjects)` and a fresh topic named `unique(topic)`.
    pub async fn new(subjects: &str, topic: &str) -> anyhow::Result<Self> {
        let stack = Stack::from_env();
        let codec = Codec::new(RegistryConfig {
            subject_prefix: format!("{}-", unique(subjects)),
            ..RegistryConfig::with_url(stack.registry_url.clone())
        })?;
        let topic = unique(topic);
        let topics = TopicCleanup::new(stack.kafka_bootstrap.as_str()).topic(&topic);
        keel_tests::kafka::create_topics(&stack.kafka_bootstrap, &[&topic], 3).await?;
        Ok(Self {
            topics,
            stack,
            codec,
            topic,
            stop: CancellationToken::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
        })
    }

    /// The default config, listening on a free port of 127.0.0.1.
    pub fn config(&self) -> ApiConfig {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..ApiConfig::default()
        }
    }

    /// For servers whose routes under test never touch the orders database: a lazy pool that
    /// never connects.
    pub fn unused_orders_pool(&self) -> anyhow::Result<MySqlPool> {
        Ok(sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(1)
            .connect_lazy(&self.stack.mysql_url)?)
    }

    /// Start an API with `config` and `deps`, producing to the stack's Kafka.
    pub async fn serve(&self, config: ApiConfig, deps: Deps) -> anyhow::Result<Server> {
        let bootstrap = self.stack.kafka_bootstrap.clone();
        self.serve_with(config, &bootstrap, deps).await
    }

    /// Start an API with `config` and `deps` whose producer talks to `bootstrap`.
    pub async fn serve_with(
        &self,
        config: ApiConfig,
        bootstrap: &str,
        deps: Deps,
    ) -> anyhow::Result<Server> {
        let producer = command_producer(bootstrap, &config, &[])?;
        let ready = deps.ready;
        let running = keel_ingest_api::spawn(
            config,
            ApiDeps {
                producer,
                codec: self.codec.clone(),
                pool: deps.pool,
                ledger: deps.ledger,
                inventory: deps.inventory,
                finance: None,
                registry: prometheus::Registry::new(),
                ready: Arc::new(move || {
                    if ready {
                        Ok(())
                    } else {
                        Err("the process is starting or stopping".to_owned())
                    }
                }),
            },
            self.stop.clone(),
        )
        .await?;
        Ok(Server {
            base: format!("http://{}", running.addr),
        })
    }

    /// Every command on the topic, decoded, with its key, after `expected` arrived (or 20 s)
    /// plus `settle`.
    pub async fn commands<T: Record>(
        &self,
        expected: usize,
        settle: Duration,
    ) -> anyhow::Result<Vec<(String, T)>> {
        let consumer = keel_tests::kafka::consumer(&self.stack.kafka_bootstrap, "read_committed")?;
        let within = if expected == 0 {
            settle
        } else {
            Duration::from_secs(20)
        };
        let messages =
            keel_tests::kafka::read_topic(&consumer, &self.topic, expected, within, settle).await?;
        let mut out = Vec::new();
        for m in &messages {
            let key = String::from_utf8(m.key().unwrap_or_default().to_vec())?;
            let command: T = self
                .codec
                .decode_from(&self.topic, m.payload().unwrap_or_default())
                .await?;
            out.push((key, command));
        }
        Ok(out)
    }
}

/// A test env: what the file adds to the [`Base`] it derefs to, dropped by `finish`.
pub trait TestEnv: Deref<Target = Base> {
    /// Drop what the env created (database, keyspace); its servers are stopped already.
    fn finish(self) -> impl Future<Output = ()>;
}

/// Runs `body` on `env`, then stops its servers and drops what it created whatever happened
/// (a failed assertion panics: the env is torn down all the same, then the test fails).
pub async fn with_env<E, F, Fut>(env: E, body: F) -> anyhow::Result<()>
where
    E: TestEnv,
    F: FnOnce(Arc<E>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let env = Arc::new(env);
    let result = AssertUnwindSafe(body(Arc::clone(&env)))
        .catch_unwind()
        .await;
    match Arc::try_unwrap(env) {
        Ok(env) => {
            env.stop.cancel();
            env.finish().await;
        }
        Err(env) => env.stop.cancel(),
    }
    match result {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// `url` with the last path segment of the database replaced by `db`.
pub fn with_database(url: &str, db: &str) -> anyhow::Result<String> {
    let (base, _) = url
        .rsplit_once('/')
        .with_context(|| format!("the url {url} has no database"))?;
    Ok(format!("{base}/{db}"))
}

/// An answer: status, headers, the body as text and as JSON (`Null` when it is not JSON).
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or("")
    }

    /// The last segment of a problem's `type`, e.g. `invalid-field`; `""` for no problem.
    pub fn slug(&self) -> &str {
        self.body["type"]
            .as_str()
            .and_then(|t| t.rsplit('/').next())
            .unwrap_or("")
    }
}

pub async fn send(request: reqwest::RequestBuilder) -> anyhow::Result<Answer> {
    let response = request.send().await?;
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(Answer {
        status,
        headers,
        body,
        text,
    })
}

/// An operation: (method in capitals, path template).
pub type Op = (String, String);

pub fn op(endpoint: Endpoint) -> Op {
    (endpoint.method().to_string(), endpoint.path().to_owned())
}

/// The statuses the OpenAPI document `doc` lists for each of `endpoints`; an error for one it
/// does not document.
pub fn documented(
    doc: &Value,
    endpoints: impl IntoIterator<Item = Endpoint>,
) -> anyhow::Result<BTreeMap<Op, BTreeSet<u16>>> {
    let mut documented = BTreeMap::new();
    for e in endpoints {
        let op_doc = &doc["paths"][e.path()][e.method().as_str().to_lowercase()];
        let statuses = op_doc["responses"]
            .as_object()
            .with_context(|| format!("{e:?} is not documented"))?
            .keys()
            .map(|s| s.parse::<u16>())
            .collect::<Result<BTreeSet<_>, _>>()?;
        documented.insert(op(e), statuses);
    }
    Ok(documented)
}

/// Send every request and collect the statuses each operation answered. Each must be answered
/// by its route (not the not-found or method-not-allowed fallbacks), every error as
/// `application/problem+json`, every 503 with `Retry-After`.
pub async fn observe(
    requests: Vec<(Endpoint, reqwest::RequestBuilder)>,
) -> anyhow::Result<BTreeMap<Op, BTreeSet<u16>>> {
    let mut observed: BTreeMap<Op, BTreeSet<u16>> = BTreeMap::new();
    for (endpoint, request) in requests {
        let answer = send(request).await?;
        let op = op(endpoint);
        let slug = answer.slug();
        assert!(
            slug != "not-found" && slug != "method-not-allowed",
            "{op:?} was not routed: {}",
            answer.text
        );
        if !answer.status.is_success() {
            assert_eq!(
                answer.content_type(),
                "application/problem+json",
                "{op:?}: {}",
                answer.text
            );
        }
        if answer.status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(answer.header("retry-after").is_some(), "{op:?}");
        }
        observed
            .entry(op)
            .or_default()
            .insert(answer.status.as_u16());
    }
    Ok(observed)
}

/// Every operation of `documented` answered exactly its documented statuses.
pub fn assert_agree<'a>(
    documented: impl IntoIterator<Item = (&'a Op, &'a BTreeSet<u16>)>,
    observed: &BTreeMap<Op, BTreeSet<u16>>,
) {
    for (op, statuses) in documented {
        assert_eq!(
            observed.get(op),
            Some(statuses),
            "{op:?}: documented statuses vs statuses the server answered"
        );
    }
}
