//! A binlog gap: the binlog the order outbox connector stopped at is purged while it is
//! stopped. `keel connectors status` must fail loudly and say what happened and what to do,
//! and the connector must NOT quietly re-snapshot (`snapshot.mode = initial`, never
//! `when_needed`): no outbox event reaches Kafka twice, none of the rows written in the gap
//! reaches it by a snapshot behind the operator's back. Then the deliberate re-snapshot of
//! `docs/operations.md` ("Binlog gap: re-snapshot deliberately") delivers the gap's rows.
//!
//! The test purges binlogs, so it runs its OWN MariaDB server (a second `mariadbd` from the
//! stack's packages on a free 127.0.0.1 port, temporary data dir, `log_bin`, ROW images, the
//! stack's `keel` user from `stack/conf/mariadb/setup.sql`), owned by the test and killed by
//! pid when it ends, also when it fails. Kafka and Connect are the shared stack's.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Run, free_port};
use keel_connectors::{ConnectClient, ConnectorState};
use keel_tests::Stack;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use sqlx::Connection;

/// A throwaway MariaDB server: its own data dir (removed with it) and port; stopped by pid
/// (SIGTERM, then SIGKILL) when dropped.
struct OwnMariaDb {
    child: Child,
    port: u16,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl OwnMariaDb {
    const MARIADBD: &'static str = "/usr/sbin/mariadbd";

    /// Initialises a data dir with `mariadb-install-db` (as `stack/servers/mariadb.sh` does)
    /// and starts `mariadbd` on a free port; returns once `keel`/`keel` can log in over TCP.
    async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("keel-gap-")
            .tempdir_in("/tmp")
            .expect("a temp dir (short: the unix socket path has a length limit)");
        let port = free_port();
        let socket = dir.path().join("mysqld.sock");
        let data = dir.path().join("data");
        let cnf = dir.path().join("my.cnf");
        std::fs::write(
            &cnf,
            format!(
                "[mysqld]\n\
                 bind-address = 127.0.0.1\n\
                 port = {port}\n\
                 socket = {socket}\n\
                 pid-file = {pid}\n\
                 skip-name-resolve\n\
                 character-set-server = utf8mb4\n\
                 collation-server = utf8mb4_general_ci\n\
                 server_id = 1\n\
                 log_bin = gap-bin\n\
                 binlog_format = ROW\n\
                 binlog_row_image = FULL\n\
                 innodb_buffer_pool_size = 32M\n\
                 innodb_log_file_size = 16M\n\
                 performance_schema = OFF\n\
                 max_connections = 50\n",
                socket = socket.display(),
                pid = dir.path().join("mariadbd.pid").display(),
            ),
        )
        .expect("my.cnf");
        let user = current_user();
        let setup = Path::new(env!("CARGO_MANIFEST_DIR")).join("stack/conf/mariadb/setup.sql");
        let log = dir.path().join("mariadbd.log");
        let install = Command::new("mariadb-install-db")
            .arg(format!("--defaults-file={}", cnf.display()))
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--user={user}"))
            .arg("--skip-test-db")
            .arg(format!("--extra-file={}", setup.display()))
            .output()
            .expect("mariadb-install-db (the stack's MariaDB packages)");
        assert!(
            install.status.success(),
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&install.stdout),
            String::from_utf8_lossy(&install.stderr)
        );
        let child = Command::new(Self::MARIADBD)
            .arg(format!("--defaults-file={}", cnf.display()))
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--user={user}"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log file"))
            .stderr(std::fs::File::create(dir.path().join("mariadbd.err")).expect("log file"))
            .spawn()
            .expect("mariadbd starts");
        let server = Self {
            child,
            port,
            socket,
            dir,
        };
        let start = Instant::now();
        loop {
            if sqlx::MySqlConnection::connect(&server.url()).await.is_ok() {
                return server;
            }
            let err =
                std::fs::read_to_string(server.dir.path().join("mariadbd.err")).unwrap_or_default();
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "own mariadbd did not accept keel/keel on port {port} within 60 s: {err}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `mysql://keel:keel@127.0.0.1:<port>/keel`.
    fn url(&self) -> String {
        format!("mysql://keel:keel@127.0.0.1:{}/keel", self.port)
    }

    /// Runs `sql` as the superuser over the unix socket (the `keel` user may not purge
    /// binlogs); returns the output rows, tab separated.
    fn admin(&self, sql: &str) -> String {
        let out = Command::new("mariadb")
            .arg("--no-defaults")
            .arg("--protocol=SOCKET")
            .arg(format!("--socket={}", self.socket.display()))
            .arg(format!("--user={}", current_user()))
            .args(["--batch", "--skip-column-names", "-e", sql])
            .output()
            .expect("the mariadb client");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for OwnMariaDb {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = self.child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            eprintln!("own mariadbd (pid {pid}) was killed");
        }
    }
}

fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// How often each key of `keys` arrived on `topic` (read from the beginning for `within`).
async fn copies(bootstrap: &str, topic: &str, keys: &[&str], within: Duration) -> Vec<usize> {
    let consumer: StreamConsumer =
        keel_tests::kafka::consumer(bootstrap, "read_committed").expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let start = Instant::now();
    let mut out = vec![0; keys.len()];
    while start.elapsed() < within {
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await
        else {
            continue;
        };
        let key = m.key().map(String::from_utf8_lossy).unwrap_or_default();
        if let Some(i) = keys.iter().position(|k| *k == key) {
            assert!(
                m.headers()
                    .is_some_and(|h| h.iter().any(|h| h.key == "keel.event.id")),
                "every routed event carries its event id"
            );
            out[i] += 1;
        }
    }
    out
}

/// Deletes `topic` and waits until the broker no longer lists it (so `register` makes a new,
/// empty one).
async fn delete_topic(bootstrap: &str, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;

    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    let admin: AdminClient<DefaultClientContext> = config.create().expect("admin client");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin
        .delete_topics(&[topic], &options)
        .await
        .expect("delete topics")
    {
        result.expect("the schema history topic deleted");
    }
    let consumer: rdkafka::consumer::BaseConsumer = config.create().expect("consumer");
    let start = Instant::now();
    while consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .is_ok_and(|m| m.topics().iter().any(|t| t.name() == topic))
    {
        assert!(start.elapsed() < Duration::from_secs(30), "{topic} stays");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn outbox_row(my: &mut sqlx::MySqlConnection, order: &str, topic: &str) {
    sqlx::query(
        "INSERT INTO order_outbox (id, aggregate_id, event_type, payload, created_at) \
         VALUES (?, ?, ?, ?, NOW(3))",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(order)
    .bind(topic)
    .bind(&[0u8, 0, 0, 0, 7, 1][..])
    .execute(my)
    .await
    .expect("an order outbox row");
}

fn output(run: &Run, args: &[&str]) -> (bool, String) {
    let out = run.keel(args).output().expect("keel runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_binlog_gap_fails_status_loudly_never_resnapshots_silently_and_a_deliberate_resnapshot_recovers()
 {
    let stack = Stack::from_env();
    let maria = OwnMariaDb::start().await;
    let (name, mut run) = Run::new(&stack).await;
    run.with_debezium_outbox();
    for (key, value) in &mut run.env {
        if key == "KEEL__MYSQL__URL" {
            *value = maria.url();
        }
    }
    let connectors = run.connectors_guard();
    let connector = format!("{name}-order-outbox");
    let topic = format!("{name}.order.created");
    let connect = ConnectClient::new(&stack.connect_url);

    // Registered against the test's own server; streams a first row.
    run.ok(&["connectors", "register"]);
    let mut my = sqlx::MySqlConnection::connect(&maria.url())
        .await
        .expect("own mariadb");
    let before = format!("order-before-{}", uuid::Uuid::new_v4());
    outbox_row(&mut my, &before, &topic).await;
    let start = Instant::now();
    while copies(
        &stack.kafka_bootstrap,
        &topic,
        &[&before],
        Duration::from_secs(8),
    )
    .await[0]
        == 0
    {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the connector streamed the first row"
        );
    }
    // Past Connect's offset flush interval (5 s on the stack): the position is stored.
    tokio::time::sleep(Duration::from_secs(6)).await;

    // Stopped (its task shuts down and commits its offsets), not paused.
    connect.stop(&connector).await.expect("stopped");
    let start = Instant::now();
    loop {
        let status = connect.status(&connector).await.expect("status");
        if status.connector.state == ConnectorState::Stopped && status.tasks.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the connector did not stop: {}",
            status.summary()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Rows written while it is stopped live only in the binlog that is then purged.
    let gap: Vec<String> = (0..3)
        .map(|i| format!("order-gap-{i}-{}", uuid::Uuid::new_v4()))
        .collect();
    for order in &gap {
        outbox_row(&mut my, order, &topic).await;
    }
    maria.admin("FLUSH BINARY LOGS");
    // The server's dump thread of the stopped connector notices the closed connection only
    // when it has something to send (the rows, the rotation); a log it reads is not purged.
    let start = Instant::now();
    loop {
        let dumping = maria.admin(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'",
        );
        if dumping.trim() == "0" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the stopped connector still reads the binlog ({dumping} dump threads)"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let current = maria.admin("SHOW MASTER STATUS");
    let current = current
        .split('\t')
        .next()
        .expect("the current binlog")
        .to_owned();
    // MariaDB keeps a log until InnoDB has checkpointed its transactions (its binlog
    // checkpoint follows the rotation shortly), so purge until only the new log is left.
    let start = Instant::now();
    loop {
        let logs = maria.admin(&format!(
            "PURGE BINARY LOGS TO '{current}'; SHOW BINARY LOGS"
        ));
        if logs.lines().count() == 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the old binlogs were not purged: {logs}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    run.ok(&["connectors", "resume", &connector]);
    let start = Instant::now();
    let (ok, status) = loop {
        let (ok, status) = output(&run, &["connectors", "status", &connector]);
        if !ok || start.elapsed() > Duration::from_secs(90) {
            break (ok, status);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    eprintln!("keel connectors status:\n{status}");
    assert!(!ok, "status fails on a binlog gap: {status}");
    assert!(status.contains("FAILED"), "{status}");
    assert!(
        status.contains("BINLOG GAP"),
        "status names the problem: {status}"
    );
    assert!(
        status.contains("purged"),
        "status says the binlog position it needs is gone: {status}"
    );
    assert!(
        status.contains("docs/operations.md"),
        "status points at the re-snapshot steps: {status}"
    );

    // Nothing was re-snapshotted: the first row once, the gap's rows not at all.
    let mut keys: Vec<&str> = vec![&before];
    keys.extend(gap.iter().map(String::as_str));
    let seen = copies(
        &stack.kafka_bootstrap,
        &topic,
        &keys,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        seen,
        [1, 0, 0, 0],
        "no event twice and no silent snapshot of the gap"
    );
    let failed = connect.status(&connector).await.expect("status");
    assert!(failed.is_failed(), "{}", failed.summary());

    // The deliberate re-snapshot, as docs/operations.md ("Binlog gap") tells it: stop, forget
    // the offsets, delete the connector and its schema history topic, register again.
    connect.stop(&connector).await.expect("stopped");
    let start = Instant::now();
    while connect
        .status(&connector)
        .await
        .is_ok_and(|s| s.connector.state != ConnectorState::Stopped || !s.tasks.is_empty())
    {
        assert!(start.elapsed() < Duration::from_secs(60), "not stopped");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    connect
        .reset_offsets(&connector)
        .await
        .expect("offsets reset");
    run.ok(&["connectors", "delete", &connector]);
    delete_topic(
        &stack.kafka_bootstrap,
        &format!("{name}.outbox.orders.schema-history"),
    )
    .await;
    run.ok(&["connectors", "register"]);
    let (ok, status) = output(&run, &["connectors", "status", &connector]);
    assert!(ok, "running again after the re-snapshot: {status}");
    // The snapshot reads the PENDING rows: the gap's rows arrive, the first row a second time
    // with its same keel.event.id (the saga de-duplicates on it).
    let seen = copies(
        &stack.kafka_bootstrap,
        &topic,
        &keys,
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(
        seen,
        [2, 1, 1, 1],
        "the deliberate re-snapshot delivers the gap"
    );

    drop(my);
    drop(connectors);
    run.clean_up(&stack, &name).await;
    drop(maria);
}
