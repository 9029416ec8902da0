//! The fixture of the `keel` end-to-end tests: an isolated Keel run (its own topic prefix,
//! application id, databases, keyspace, ports and state directory) on the local stack, with
//! `keel psp-mock` and `keel run` as child processes and an HTTP client for the API.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel_tests::topics::{MIN_PREFIX_LEN, TopicCleanup};
use keel_tests::{Stack, unique};
use serde_json::{Value, json};
use sqlx::Connection;

/// A child process stopped with SIGTERM (then SIGKILL) when dropped.
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
}

impl Proc {
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let start = Instant::now();
        while start.elapsed() < within {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            eprintln!("{} was killed", self.name);
        }
    }
}

/// See [`Run::connectors_guard`].
pub struct ConnectorsGuard {
    env: Vec<(String, String)>,
}

impl Drop for ConnectorsGuard {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["connectors", "delete"])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .status();
    }
}

pub use keel_tests::free_port;

pub struct Run {
    pub env: Vec<(String, String)>,
    pub api: String,
    /// The admin listener's base URL (`/metrics`, `/health`, `/ready` of a run without `api`).
    pub admin: String,
    /// The PSP mock's base URL.
    pub psp: String,
    pub mysql_url: String,
    pub postgres_url: String,
    pub keyspace: String,
    pub state_dir: tempfile::TempDir,
}

/// A finished run deletes its topics (`<name>.*` under its prefix, the applications'
/// `<name>-*` changelogs, repartition and dead-letter topics, and its connectors' Debezium
/// heartbeat topic `__debezium-heartbeat.<name>.*`): a broker keeps every partition's files
/// open, and a few hundred runs' leftovers exhaust its file descriptors ("Too many open files"
/// stopped the shared broker once). See `keel_tests::topics`.
impl Drop for Run {
    fn drop(&mut self) {
        let setting = |key: &str| {
            self.env
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let (Some(bootstrap), Some(name)) = (
            setting("KEEL__KAFKA__BOOTSTRAP_SERVERS"),
            setting("KEEL__STREAMS__APPLICATION_ID"),
        ) else {
            return;
        };
        // The run's carts connector, whichever cart source its `keel run`s had (a test that
        // passes on only some of the fixture's settings runs the default, "cdc"): a leftover
        // connector would keep reading the binlog for good. Nothing to delete is no error.
        let _ = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["connectors", "delete", &format!("{name}-carts-cdc")])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // `add_prefix` refuses (panics on) a prefix too short to hold a random name: a test
        // that set one never reaches it from here.
        let topics = TopicCleanup::new(bootstrap);
        let prefixes = [
            setting("KEEL__TOPICS__PREFIX"),
            Some(format!("{name}-")),
            Some(format!("__debezium-heartbeat.{name}.")),
        ];
        for prefix in prefixes.into_iter().flatten() {
            if prefix.len() >= MIN_PREFIX_LEN {
                topics.add_prefix(prefix);
            }
        }
        drop(topics);
    }
}

impl Run {
    pub fn keel(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
        cmd.args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(
                "KEEL__STREAMS__STATE_DIR",
                self.state_dir.path().as_os_str(),
            )
            .env("RUST_LOG", "warn");
        cmd
    }

    pub fn ok(&self, args: &[&str]) {
        let out = self.keel(args).output().expect("keel runs");
        assert!(
            out.status.success(),
            "keel {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn spawn(&self, name: &'static str, args: &[&str]) -> Proc {
        let child = self
            .keel(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("keel starts");
        Proc { name, child }
    }
}

pub async fn create_databases(stack: &Stack, name: &str) -> (String, String) {
    let mut my = sqlx::MySqlConnection::connect(&stack.mysql_url)
        .await
        .expect("mysql");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut my)
        .await
        .expect("a test database in MariaDB (grant on keel\\_% from stack/conf/mariadb/setup.sql)");
    let mut pg = sqlx::PgConnection::connect(&stack.postgres_url)
        .await
        .expect("postgres");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut pg)
        .await
        .expect("a test database in PostgreSQL");
    let swap = |url: &str| match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => url.to_owned(),
    };
    (swap(&stack.mysql_url), swap(&stack.postgres_url))
}

pub async fn drop_databases(stack: &Stack, name: &str) {
    if let Ok(mut my) = sqlx::MySqlConnection::connect(&stack.mysql_url).await {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name}"
        )))
        .execute(&mut my)
        .await;
    }
    if let Ok(mut pg) = sqlx::PgConnection::connect(&stack.postgres_url).await {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut pg)
        .await;
    }
}

pub async fn wait_ready(client: &reqwest::Client, api: &str, within: Duration) {
    let start = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("{api}/ready")).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            start.elapsed() < within,
            "keel run was not ready within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn place(
    client: &reqwest::Client,
    api: &str,
    cart: &str,
    token: &str,
    key: &str,
) -> Value {
    let response = client
        .post(format!("{api}/orders"))
        .header("Idempotency-Key", key)
        .json(&json!({
            "cartId": cart,
            "paymentMethod": token,
            "shippingAddress": {
                "name": "Ada Lovelace", "line1": "12 Analytical Row", "city": "Berlin",
                "postalCode": "10115", "country": "DE"
            }
        }))
        .send()
        .await
        .expect("POST /orders");
    let status = response.status();
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value = response.json().await.expect("a JSON body");
    assert_eq!(status.as_u16(), 202, "{body}");
    let id = body["orderId"].as_str().expect("an order id").to_owned();
    assert_eq!(location.as_deref(), Some(format!("/orders/{id}").as_str()));
    body
}

/// A pool on the run's MariaDB database with the order store's tables (to seed carts).
pub async fn orders_pool(run: &Run) -> sqlx::MySqlPool {
    let pool = sqlx::MySqlPool::connect(&run.mysql_url)
        .await
        .expect("mysql");
    keel_processors::orders::migrate(&pool)
        .await
        .expect("migrations");
    pool
}

/// The text of `GET <base>/metrics` (empty when it cannot be read).
pub async fn metrics_text(client: &reqwest::Client, base: &str) -> String {
    match client.get(format!("{base}/metrics")).send().await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Polls `GET /orders/{id}` until its status is terminal; returns the order.
pub async fn settled(client: &reqwest::Client, api: &str, id: &str, within: Duration) -> Value {
    let start = Instant::now();
    let mut last = Value::Null;
    while start.elapsed() < within {
        let r = client
            .get(format!("{api}/orders/{id}"))
            .send()
            .await
            .expect("GET /orders/{id}");
        assert_ne!(r.status().as_u16(), 404, "an accepted order is never a 404");
        last = r.json().await.expect("JSON");
        if matches!(
            last["status"].as_str(),
            Some("CONFIRMED" | "CANCELLED" | "REJECTED")
        ) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("order {id} did not settle within {within:?}; last seen: {last}");
}

impl Run {
    /// A fresh isolated run: databases created, nothing started yet. The PSP mock answers by
    /// its token rules only (no random declines, errors or timeouts).
    pub async fn new(stack: &Stack) -> (String, Run) {
        let name = unique("keel_e2e");
        let (mysql_url, postgres_url) = create_databases(stack, &name).await;
        let (api_port, psp_port, admin_port) = (free_port(), free_port(), free_port());
        let run = Run {
            env: vec![
                (
                    "KEEL__KAFKA__BOOTSTRAP_SERVERS".into(),
                    stack.kafka_bootstrap.clone(),
                ),
                ("KEEL__TOPICS__PREFIX".into(), format!("{name}.")),
                // Topics keep the default 6 partitions, as a newcomer's run has them.
                // A saga that waits for inventory longer than this is stuck, not slow.
                ("KEEL__SAGA__INVENTORY_TIMEOUT_MS".into(), "10000".into()),
                ("KEEL__STREAMS__APPLICATION_ID".into(), name.clone()),
                ("KEEL__STREAMS__INSTANCE_ID".into(), "e2e-1".into()),
                ("KEEL__MYSQL__URL".into(), mysql_url.clone()),
                ("KEEL__POSTGRES__URL".into(), postgres_url.clone()),
                ("KEEL__CASSANDRA__KEYSPACE".into(), name.clone()),
                ("KEEL__API__LISTEN".into(), format!("127.0.0.1:{api_port}")),
                // The admin listener of a run without the api role (src/admin.rs).
                (
                    "KEEL__METRICS__LISTEN".into(),
                    format!("127.0.0.1:{admin_port}"),
                ),
                (
                    "KEEL__PAYMENT__PSP_URL".into(),
                    format!("http://127.0.0.1:{psp_port}"),
                ),
                ("KEEL__PAYMENT__PSP_TIMEOUT_MS".into(), "5000".into()),
                ("KEEL__SAGA__PAYMENT_TIMEOUT_MS".into(), "20000".into()),
                (
                    "KEEL__PSP_MOCK__LISTEN".into(),
                    format!("127.0.0.1:{psp_port}"),
                ),
                ("KEEL__PSP_MOCK__DECLINE_RATE".into(), "0.0".into()),
                ("KEEL__PSP_MOCK__ERROR_RATE".into(), "0.0".into()),
                ("KEEL__PSP_MOCK__TIMEOUT_RATE".into(), "0.0".into()),
                // `tok_timeout` answers after 8 s, past the payment service's 5 s timeout.
                ("KEEL__PSP_MOCK__TIMEOUT_DELAY_MS".into(), "8000".into()),
                // `tok_pending` answers "pending", then POSTs its signed callback to the API,
                // twice (real PSPs deliver duplicates).
                (
                    "KEEL__PSP_MOCK__CALLBACK_URL".into(),
                    format!("http://127.0.0.1:{api_port}/psp/callbacks"),
                ),
                (
                    "KEEL__PSP_MOCK__DUPLICATE_CALLBACK_RATE".into(),
                    "1.0".into(),
                ),
                ("KEEL__PAYMENT__RECONCILE_INTERVAL_MS".into(), "1000".into()),
                // The default cart check (`"cdc"`) registers a Debezium connector per run: most
                // tests keep the shared Connect light with the API's cart check instead; the
                // ones that test the default call [`Run::with_cart_cdc`].
                ("KEEL__CARTS__SOURCE".into(), "api".into()),
            ],
            api: format!("http://127.0.0.1:{api_port}"),
            admin: format!("http://127.0.0.1:{admin_port}"),
            psp: format!("http://127.0.0.1:{psp_port}"),
            mysql_url,
            postgres_url,
            keyspace: name.clone(),
            state_dir: tempfile::tempdir().expect("a state dir"),
        };
        (name, run)
    }

    /// The PSP mock's counters (`GET /admin/stats`).
    pub async fn psp_stats(&self, client: &reqwest::Client) -> Value {
        client
            .get(format!("{}/admin/stats", self.psp))
            .send()
            .await
            .expect("PSP stats")
            .json()
            .await
            .expect("JSON")
    }

    /// The outbox through Debezium (`[outbox].mode = "debezium"`): `keel run`'s relay role
    /// registers this run's own connectors, `<name>-order-outbox` and `<name>-payment-outbox`
    /// (slot and publication `<name>_payment_outbox`, topics under the run's prefix). Hold a
    /// [`Run::connectors_guard`] to remove them.
    pub fn with_debezium_outbox(&mut self) {
        self.env.extend([
            ("KEEL__OUTBOX__MODE".to_owned(), "debezium".to_owned()),
            (
                "KEEL__CONNECTORS__HEARTBEAT_INTERVAL_MS".to_owned(),
                "2000".to_owned(),
            ),
        ]);
    }

    /// The cart check of the default configuration, `[carts].source = "cdc"`: drops the
    /// fixture's `KEEL__CARTS__SOURCE=api`, so the built-in default applies. `keel run` then
    /// registers the run's connector `<name>-carts-cdc`; hold a [`Run::connectors_guard`] (taken
    /// after this call) to remove it ([`Run`]'s drop removes it too, as a last resort).
    pub fn with_cart_cdc(&mut self) {
        self.env.retain(|(k, _)| k != "KEEL__CARTS__SOURCE");
    }

    /// The invariant auditor's grace periods (`[audit]`) at `grace_ms`, checked every 200 ms, so
    /// a `--roles ...,audit` run and `keel audit` reach their verdicts in seconds.
    pub fn with_audit(&mut self, grace_ms: u64) {
        self.env.extend([
            (
                "KEEL__AUDIT__CANCELLED_GRACE_MS".to_owned(),
                grace_ms.to_string(),
            ),
            (
                "KEEL__AUDIT__CONFIRMED_GRACE_MS".to_owned(),
                grace_ms.to_string(),
            ),
            (
                "KEEL__AUDIT__CHECK_INTERVAL_MS".to_owned(),
                "200".to_owned(),
            ),
        ]);
    }

    /// Runs `keel connectors delete` for this run when dropped — also when the test panics, so
    /// no connector outlives its test and no slot holds WAL. Drop it before [`Run::clean_up`]
    /// (PostgreSQL refuses to drop a database that has a replication slot).
    pub fn connectors_guard(&self) -> ConnectorsGuard {
        ConnectorsGuard {
            env: self.env.clone(),
        }
    }

    /// Drops what [`Run::new`] created.
    pub async fn clean_up(&self, stack: &Stack, name: &str) {
        if let Ok(session) = scylla::client::session_builder::SessionBuilder::new()
            .known_node(&stack.cassandra_node)
            .build()
            .await
        {
            let _ = session
                .query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", self.keyspace), &[])
                .await;
        }
        drop_databases(stack, name).await;
    }
}
