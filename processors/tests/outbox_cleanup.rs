//! The outbox clean-up against real databases (fresh `keel_test_<random>` databases in MariaDB
//! and PostgreSQL): in each mode, shipped rows past the retention go and an unshipped row —
//! `PENDING` under the relay, created after the connector's committed position under Debezium —
//! is never deleted, however old; without a known position (Connect down) nothing is.

use keel_processors::outbox::cleanup::{
    CleanupConfig, CleanupMode, CleanupStore, MySqlCleanup, PgCleanup, ShippedUpTo, cleanup_once,
};
use keel_processors::{orders, payment};
use keel_tests::{Stack, unique};
use sqlx::{AssertSqlSafe, Connection, MySqlPool, PgPool};

const HOUR_S: i32 = 3_600;

/// The connector's committed source time, as a test fixes it.
struct Position(Option<i64>);

impl ShippedUpTo for Position {
    async fn shipped_up_to(&self) -> Option<i64> {
        self.0
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn config(mode: CleanupMode) -> CleanupConfig {
    CleanupConfig {
        mode,
        retention_ms: 3_600_000,
        interval_ms: 1_000,
        position_margin_ms: 60_000,
        // Small batches: a round loops until nothing eligible is left.
        batch_size: 2,
    }
}

struct Dbs {
    name: String,
    pg: PgPool,
    my: MySqlPool,
}

async fn create(stack: &Stack) -> Dbs {
    let name = unique("keel_test");
    let mut my = sqlx::MySqlConnection::connect(&stack.mysql_url)
        .await
        .expect("mysql");
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut my)
        .await
        .expect("a MariaDB test database");
    let mut pg = sqlx::PgConnection::connect(&stack.postgres_url)
        .await
        .expect("postgres");
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut pg)
        .await
        .expect("a PostgreSQL test database");
    let swap = |url: &str| match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => url.to_owned(),
    };
    let pg = PgPool::connect(&swap(&stack.postgres_url))
        .await
        .expect("test db");
    let my = MySqlPool::connect(&swap(&stack.mysql_url))
        .await
        .expect("test db");
    payment::migrate(&pg).await.expect("ledger migrated");
    orders::migrate(&my).await.expect("orders migrated");
    Dbs { name, pg, my }
}

async fn drop_dbs(stack: &Stack, dbs: Dbs) {
    dbs.pg.close().await;
    dbs.my.close().await;
    if let Ok(mut my) = sqlx::MySqlConnection::connect(&stack.mysql_url).await {
        let _ = sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {}",
            dbs.name
        )))
        .execute(&mut my)
        .await;
    }
    if let Ok(mut pg) = sqlx::PgConnection::connect(&stack.postgres_url).await {
        let _ = sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            dbs.name
        )))
        .execute(&mut pg)
        .await;
    }
}

/// A row created `created_ago_s` ago, `SENT` `sent_ago_s` ago or `PENDING`.
async fn pg_row(pg: &PgPool, id: &str, created_ago_s: i32, sent_ago_s: Option<i32>) {
    sqlx::query(
        "INSERT INTO payment_outbox (id, aggregate_id, event_type, payload, status, created_at, \
         sent_at) VALUES ($1, 'o-1', 't', 'x', $2, now() - make_interval(secs => $3), \
         now() - make_interval(secs => $4))",
    )
    .bind(id)
    .bind(if sent_ago_s.is_some() {
        "SENT"
    } else {
        "PENDING"
    })
    .bind(f64::from(created_ago_s))
    .bind(sent_ago_s.map(f64::from))
    .execute(pg)
    .await
    .expect("a row");
}

async fn my_row(my: &MySqlPool, id: &str, created_ago_s: i32, sent_ago_s: Option<i32>) {
    sqlx::query(
        "INSERT INTO order_outbox (id, aggregate_id, event_type, payload, status, created_at, \
         sent_at) VALUES (?, 'o-1', 't', 'x', ?, UTC_TIMESTAMP(3) - INTERVAL ? SECOND, \
         NOW(3) - INTERVAL ? SECOND)",
    )
    .bind(id)
    .bind(if sent_ago_s.is_some() {
        "SENT"
    } else {
        "PENDING"
    })
    .bind(created_ago_s)
    .bind(sent_ago_s)
    .execute(my)
    .await
    .expect("a row");
}

async fn pg_ids(pg: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT id FROM payment_outbox ORDER BY id")
        .fetch_all(pg)
        .await
        .expect("ids")
}

async fn my_ids(my: &MySqlPool) -> Vec<String> {
    sqlx::query_scalar("SELECT id FROM order_outbox ORDER BY id")
        .fetch_all(my)
        .await
        .expect("ids")
}

/// Relay mode: rows `SENT` more than the retention ago go; a `PENDING` row three hours old
/// (unshipped: Kafka was down, the relay failed) and a row sent a minute ago stay.
async fn relay_mode_on<S: CleanupStore>(store: &S) -> u64 {
    cleanup_once(
        store,
        &Position(None),
        &config(CleanupMode::Relay),
        now_ms(),
    )
    .await
    .expect("a round")
}

#[tokio::test]
async fn relay_mode_deletes_old_sent_rows_and_never_a_pending_one() {
    let stack = Stack::from_env();
    let dbs = create(&stack).await;
    for (id, created, sent) in [
        ("a-sent-old-1", 3 * HOUR_S, Some(2 * HOUR_S)),
        ("a-sent-old-2", 3 * HOUR_S, Some(2 * HOUR_S)),
        ("a-sent-old-3", 3 * HOUR_S, Some(2 * HOUR_S)),
        ("b-pending-old", 3 * HOUR_S, None),
        ("c-sent-recent", 3 * HOUR_S, Some(60)),
    ] {
        pg_row(&dbs.pg, id, created, sent).await;
        my_row(&dbs.my, id, created, sent).await;
    }
    let pg = PgCleanup::new(dbs.pg.clone(), "payment_outbox", None).expect("store");
    let my = MySqlCleanup::new(dbs.my.clone(), "order_outbox").expect("store");
    assert_eq!(relay_mode_on(&pg).await, 3);
    assert_eq!(relay_mode_on(&my).await, 3);
    let kept = vec!["b-pending-old".to_owned(), "c-sent-recent".to_owned()];
    assert_eq!(pg_ids(&dbs.pg).await, kept);
    assert_eq!(my_ids(&dbs.my).await, kept);
    drop_dbs(&stack, dbs).await;
}

#[tokio::test]
async fn debezium_mode_never_deletes_a_row_past_the_connectors_committed_position() {
    let stack = Stack::from_env();
    let dbs = create(&stack).await;
    // Connect committed its position two hours ago and has been down since.
    let position = now_ms() - i64::from(2 * HOUR_S) * 1_000;
    for (id, created) in [
        ("a-shipped-1", 4 * HOUR_S),
        ("a-shipped-2", 3 * HOUR_S),
        ("a-shipped-3", 3 * HOUR_S),
        // Older than the retention (1 h) but written after the committed position: unshipped.
        ("b-unshipped-old", 90 * 60),
        ("c-recent", 60),
    ] {
        pg_row(&dbs.pg, id, created, None).await;
        my_row(&dbs.my, id, created, None).await;
    }
    let slot = unique("keel_test_slot");
    let pg = PgCleanup::new(dbs.pg.clone(), "payment_outbox", Some(slot.clone())).expect("store");
    let my = MySqlCleanup::new(dbs.my.clone(), "order_outbox").expect("store");
    let debezium = config(CleanupMode::Debezium);
    let all: Vec<String> = [
        "a-shipped-1",
        "a-shipped-2",
        "a-shipped-3",
        "b-unshipped-old",
        "c-recent",
    ]
    .map(str::to_owned)
    .to_vec();

    // Connect unreachable (no position): nothing goes, however old.
    assert_eq!(
        cleanup_once(&my, &Position(None), &debezium, now_ms())
            .await
            .expect("a round"),
        0
    );
    assert_eq!(my_ids(&dbs.my).await, all);
    // PostgreSQL without its replication slot: nothing goes either.
    assert_eq!(
        cleanup_once(&pg, &Position(Some(position)), &debezium, now_ms())
            .await
            .expect("a round"),
        0
    );
    assert_eq!(pg_ids(&dbs.pg).await, all);

    sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
        .bind(&slot)
        .execute(&dbs.pg)
        .await
        .expect("a slot (the keel role has REPLICATION)");
    let kept = vec!["b-unshipped-old".to_owned(), "c-recent".to_owned()];
    for (deleted, ids) in [
        (
            cleanup_once(&pg, &Position(Some(position)), &debezium, now_ms()).await,
            pg_ids(&dbs.pg).await,
        ),
        (
            cleanup_once(&my, &Position(Some(position)), &debezium, now_ms()).await,
            my_ids(&dbs.my).await,
        ),
    ] {
        assert_eq!(deleted.expect("a round"), 3);
        assert_eq!(ids, kept);
    }
    sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(&slot)
        .execute(&dbs.pg)
        .await
        .expect("slot dropped");
    drop_dbs(&stack, dbs).await;
}
