//! `keel bench inventory`: an open-loop load generator for the inventory service alone, on the
//! local stack.
//!
//! - **Isolated**: starts its own `keel run --roles inventory,sinks` (a child process of this
//!   one, `current_exe`) with a fresh topic prefix (`bench-inv-<tag>.`), application id,
//!   Cassandra keyspace, state directory and admin port, and removes its topics and keyspace
//!   afterwards (`--keep` keeps them). `--external` drives the `keel run` the configuration
//!   names instead (it must host the inventory and sinks roles).
//! - **Commands as the saga writes them**: Avro `InventoryCommand`s on `inventory.commands.v1`
//!   (key: the SKU, `correlation_id` = the order id), produced idempotently with acks=all. Each
//!   reservation is a `ReserveStock` of one unit for a fresh order `bench-<tag>-<n>`; when its
//!   `HELD` reply arrives, `--confirm-share` of the orders get a `ConfirmReservation` (the hold
//!   becomes a sale) and `--release-share` a `ReleaseStock` (`ORDER_CANCELLED`); the rest stay
//!   held to the end. `--hot-share` of the reservations go to one SKU (one partition, one
//!   task: contention), the rest spread evenly over `--skus` SKUs.
//! - **Open loop**: reserves are due on a fixed schedule (`--rate` for `--duration-s`, or a
//!   `--ramp` of rising steps, as `keel bench checkout`); each is produced in its own task,
//!   whatever the earlier ones are doing. Latency runs from the time a command was *due* (a
//!   confirm or release: when the `HELD` it follows arrived here) to its reply read
//!   `read_committed`: `inventory.reserved.v1` (`HELD` / `SHORTAGE` for a reserve, `SOLD` /
//!   `OVERSOLD` / `SALE_REFUSED` for a confirm) or `inventory.released.v1` (a release).
//! - **Consistency at the end**: no reply ever showed a negative `available`; per SKU the
//!   replies add up (on hand = seeded − sold, held = held − sold − released), and Cassandra's
//!   `stock_level` and `reservation` rows (what `GET /inventory/{sku}` reads) agree with them
//!   once the Cassandra sink has caught up (the check waits while the store keeps changing, and
//!   gives up after `--store-timeout-s` without a change). A violation makes the command fail
//!   after the result is written.
//!
//! Writes `<out-dir>/inventory-<UTC time>-<tag>.json` (the result) and `.svg` (reserve latency
//! over time by the second reserves were due: p50, p99, max; below, due and answered per second).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use keel_avro::Codec;
use keel_avro::records::{
    ConfirmReservation, InventoryAdjusted, InventoryCommand, InventoryCommandBody,
    InventoryReleased, InventoryReserved, ReleaseReason, ReleaseStock, ReservationStatus,
    ReserveStock,
};
use keel_processors::producer::AckedProducer;
use keel_processors::topics;
use rdkafka::message::Message as _;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::checkout::{ChartText, Latency, Machine, Second, Step, latency, say};
use super::cpu;
use super::open_loop::{self, Pacer, Requests, Sample};
use crate::config::KeelConfig;

/// The `reason` of the seeding `AdjustStock` commands (how the reader knows them).
const SEED_REASON: &str = "keel bench inventory";

/// `keel bench inventory` options.
#[derive(Debug, Clone, clap::Args)]
pub struct InventoryArgs {
    /// Reserve commands per second (the fixed arrival rate; ignored with --ramp).
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Seconds of sending at --rate.
    #[arg(long, default_value_t = 30)]
    pub duration_s: u64,
    /// Find the saturation point: rates from --ramp-start up by --ramp-step every
    /// --ramp-step-s seconds, until a step falls behind or --ramp-max.
    #[arg(long)]
    pub ramp: bool,
    #[arg(long, default_value_t = 100.0)]
    pub ramp_start: f64,
    #[arg(long, default_value_t = 100.0)]
    pub ramp_step: f64,
    #[arg(long, default_value_t = 15)]
    pub ramp_step_s: u64,
    #[arg(long, default_value_t = 3000.0)]
    pub ramp_max: f64,
    /// A rate is sustained when the p99 of reserve → reply stays within this (ms) and ≥ 99 %
    /// of its reserves are answered.
    #[arg(long, default_value_t = 1000)]
    pub p99_limit_ms: u64,
    /// With --ramp: a reserve not answered within this (ms) means inventory is not keeping up;
    /// the ramp stops when more than 1 % of a step's reserves are.
    #[arg(long, default_value_t = 10_000)]
    pub ramp_stop_ms: u64,
    /// Distinct SKUs (SKU 0 is the hot one).
    #[arg(long, default_value_t = 64)]
    pub skus: usize,
    /// Share of the reservations (0 to 1) that go to SKU 0, on top of its even share of the
    /// rest: 0.5 puts half the load on one SKU, so on one partition and one task.
    #[arg(long, default_value_t = 0.0)]
    pub hot_share: f64,
    /// Units each SKU is seeded with (default: enough for every reservation, so no
    /// shortage; fewer make shortages).
    #[arg(long)]
    pub stock: Option<i32>,
    /// Share of the held reservations (0 to 1) confirmed as soon as their HELD arrives.
    #[arg(long, default_value_t = 0.5)]
    pub confirm_share: f64,
    /// Share of the held reservations (0 to 1) released as soon as their HELD arrives; the
    /// rest stay held to the end.
    #[arg(long, default_value_t = 0.3)]
    pub release_share: f64,
    /// Drive the `keel run` this configuration names (its topic prefix; it must host the
    /// inventory and sinks roles) instead of starting an isolated one.
    #[arg(long)]
    pub external: bool,
    /// Keep the isolated run's topics and keyspace afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Where the JSON result, the SVG chart and the isolated run's log go.
    #[arg(long, default_value = ".")]
    pub out_dir: PathBuf,
    /// Seconds to wait after the last reserve was due for the outstanding commands to settle.
    #[arg(long, default_value_t = 60)]
    pub drain_timeout_s: u64,
    /// Seconds of sending at the first rate before anything is measured (those commands are
    /// not in the latencies, but in the consistency check).
    #[arg(long, default_value_t = 5)]
    pub warmup_s: u64,
    /// Seconds Cassandra may go without changing, before it agrees with the replies, until
    /// the end-of-run check gives up (it waits as long as the sink is catching up).
    #[arg(long, default_value_t = 30)]
    pub store_timeout_s: u64,
    /// Commands in flight at most; a reserve due while this many are unacknowledged is
    /// counted as a client error, not delayed (delaying it would close the loop).
    #[arg(long, default_value_t = 20_000)]
    pub max_in_flight: usize,
    /// No progress bar (it is hidden anyway when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
}

/// What a command asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Reserve,
    Confirm,
    Release,
}

/// Inventory's answer to a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
enum Reply {
    Held,
    Shortage,
    Sold,
    Oversold,
    SaleRefused,
    Released,
}

/// One command the bench sent and what came of it.
#[derive(Debug, Clone)]
struct Op {
    kind: Kind,
    /// The reservation's number: the order is `bench-<tag>-<order>`.
    order: u64,
    sku: usize,
    /// When it was due (the schedule, or the HELD's arrival), the origin of its latency.
    due: Instant,
    /// The reservation's schedule step (None: the warm-up).
    step: Option<usize>,
    reply: Option<(Instant, Reply)>,
    error: Option<String>,
}

impl Op {
    /// Due → reply.
    fn sample(&self) -> Sample {
        Sample {
            due: self.due,
            done: self.reply.map(|(at, _)| at),
        }
    }

    fn settled(&self) -> bool {
        self.reply.is_some() || self.error.is_some()
    }
}

/// What a HELD reservation is followed by, from its number: the same order always gets the
/// same follow-up (a spread of the numbers over [0, 1) against the two shares).
fn follow_up(order: u64, confirm_share: f64, release_share: f64) -> Option<Kind> {
    let u = (order.wrapping_mul(2_654_435_761) % 10_000) as f64 / 10_000.0;
    if u < confirm_share {
        Some(Kind::Confirm)
    } else if u < confirm_share + release_share {
        Some(Kind::Release)
    } else {
        None
    }
}

/// The SKU of a reservation from two uniform draws in [0, 1): SKU 0 with `hot_share`, else an
/// even pick over all `skus`.
fn pick_sku(hot: f64, spread: f64, hot_share: f64, skus: usize) -> usize {
    if hot < hot_share {
        0
    } else {
        ((spread * skus as f64) as usize).min(skus.saturating_sub(1))
    }
}

/// The commands and the replies seen, shared by the senders and the reader.
#[derive(Debug, Default)]
struct Tracker {
    ops: Vec<Op>,
    by_key: HashMap<(u64, Kind), usize>,
    /// On hand per SKU after its seeding `AdjustStock`.
    seeded: HashMap<String, i32>,
    /// The lowest `available` any reply carried.
    min_available: Option<i32>,
    /// Replies for a command already answered, or for no command of this bench.
    unexpected: u64,
}

type Shared = Arc<Mutex<Tracker>>;

fn lock(t: &Shared) -> std::sync::MutexGuard<'_, Tracker> {
    t.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Tracker {
    /// Registers a command before it is sent; returns its index.
    fn register(&mut self, op: Op) -> usize {
        let i = self.ops.len();
        self.by_key.insert((op.order, op.kind), i);
        self.ops.push(op);
        i
    }

    /// Records `reply` for the order's `kind` command; the op's index when it was the first.
    fn answer(&mut self, order: u64, kind: Kind, reply: Reply, at: Instant) -> Option<usize> {
        match self.by_key.get(&(order, kind)) {
            Some(&i) if self.ops[i].reply.is_none() => {
                self.ops[i].reply = Some((at, reply));
                Some(i)
            }
            _ => {
                self.unexpected += 1;
                None
            }
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    replied: AtomicU64,
    shortages: AtomicU64,
    errors: AtomicU64,
}

/// Everything a command sender needs.
#[derive(Clone)]
struct Wire {
    producer: Arc<AckedProducer>,
    codec: Arc<Codec>,
    topic: String,
    tag: String,
    skus: Arc<Vec<String>>,
    tracker: Shared,
    counters: Arc<Counters>,
}

impl Wire {
    fn order_id(&self, order: u64) -> String {
        format!("bench-{}-{order}", self.tag)
    }

    /// Produces the command of op `i`; a failure is recorded on the op.
    async fn send(&self, i: usize) {
        let (kind, order, sku) = {
            let t = lock(&self.tracker);
            (t.ops[i].kind, t.ops[i].order, t.ops[i].sku)
        };
        let order_id = self.order_id(order);
        let sku = &self.skus[sku];
        let body = match kind {
            Kind::Reserve => InventoryCommandBody::Reserve(ReserveStock {
                order_id: order_id.clone(),
                quantity: 1,
                warehouse: None,
                hold_ttl_ms: None,
            }),
            Kind::Confirm => InventoryCommandBody::Confirm(ConfirmReservation {
                order_id: order_id.clone(),
            }),
            Kind::Release => InventoryCommandBody::Release(ReleaseStock {
                order_id: order_id.clone(),
                reason: ReleaseReason::OrderCancelled,
            }),
        };
        let command = InventoryCommand {
            command_id: uuid::Uuid::new_v4().to_string(),
            sku: sku.clone(),
            issued_at: chrono::Utc::now().timestamp_millis(),
            causation_id: "keel bench inventory".to_owned(),
            correlation_id: order_id,
            command: body,
        };
        self.counters.sent.fetch_add(1, Ordering::Relaxed);
        let result = match self.codec.encode_to(&self.topic, &command).await {
            Ok(payload) => keel_ingest_api::kafka::produce(
                &self.producer,
                &self.topic,
                sku,
                &payload,
                Duration::from_secs(30),
            )
            .await
            .map(|_| ())
            .map_err(|e| format!("produce: {e}")),
            Err(e) => Err(format!("encode: {e}")),
        };
        if let Err(e) = result {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            lock(&self.tracker).ops[i].error.get_or_insert(e);
        }
    }
}

/// A latency distribution per command kind and outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Latencies {
    /// Reserve → HELD or SHORTAGE.
    pub reserve: Latency,
    /// Reserve → reply, for the hot SKU (SKU 0) only.
    pub reserve_hot_sku: Latency,
    /// Confirm (due when the HELD arrived) → SOLD / OVERSOLD / SALE_REFUSED.
    pub confirm: Latency,
    /// Release (due when the HELD arrived) → inventory.released.v1.
    pub release: Latency,
}

/// One rate step's reserves (follow-ups attributed to their reservation's step).
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub rate: f64,
    pub seconds: u64,
    pub reserves: u64,
    pub answered: u64,
    pub shortages: u64,
    pub errors: u64,
    pub reserve_latency: Latency,
    /// p99 within the limit and ≥ 99 % of the step's reserves answered.
    pub sustained: bool,
    /// ≥ 99 % of the step's reserves answered within `--ramp-stop-ms`.
    pub kept_up: bool,
}

/// The end-of-run check of the stock and the holds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Consistency {
    /// The lowest `available` on any reply (reserve or confirm).
    pub min_available_seen: Option<i32>,
    /// No reply showed a negative `available`, and no SKU in the store is negative on hand or
    /// in available (on hand − held).
    pub never_negative: bool,
    /// Seeded on hand, all SKUs.
    pub seeded_total: i64,
    /// Holds taken (HELD), sold (SOLD / OVERSOLD), released, still held, all SKUs.
    pub held: u64,
    pub sold: u64,
    pub released: u64,
    pub outstanding: u64,
    /// What the replies say the store must hold at the end, all SKUs.
    pub expected_on_hand: i64,
    pub expected_held: i64,
    /// What Cassandra holds (stock_level, reservation rows), all SKUs.
    pub store_on_hand: i64,
    pub store_held: i64,
    /// Cassandra agreed with the replies, SKU by SKU (before it went `--store-timeout-s`
    /// without changing).
    pub store_agrees: bool,
    /// Seconds from the end of the drain until Cassandra agreed (or the check gave up): how
    /// far the Cassandra sink was behind the replies.
    pub store_check_seconds: f64,
    /// The SKUs that did not agree (the first 10): `sku: expected on hand/held, store ...`.
    pub mismatches: Vec<String>,
    /// Replies for a command already answered or never sent (a duplicate hold would show
    /// here).
    pub unexpected_replies: u64,
}

/// The JSON result.
#[derive(Debug, Clone, Serialize)]
pub struct InventoryResult {
    pub started_at: String,
    pub machine: Machine,
    /// "release" or "debug": how the measured keel binary was built.
    pub build: String,
    /// An isolated `keel run --roles inventory,sinks` started by the bench, or `--external`.
    pub isolated: bool,
    pub topic_prefix: String,
    pub application_id: String,
    pub keyspace: String,
    pub partitions: i32,
    pub mode: String,
    pub schedule: Vec<(f64, u64)>,
    pub skus: usize,
    pub hot_share: f64,
    pub stock_per_sku: i32,
    pub confirm_share: f64,
    pub release_share: f64,
    /// Measured reserves (the warm-up's excluded) and their outcomes.
    pub reserves: u64,
    pub held: u64,
    pub shortages: u64,
    pub confirms: u64,
    pub sold: u64,
    pub oversold: u64,
    pub sale_refused: u64,
    pub releases: u64,
    pub released: u64,
    /// Failed sends by kind, and commands still unanswered after the drain ("unanswered").
    pub errors: BTreeMap<String, u64>,
    /// Seconds from the first reserve due to the last one due.
    pub send_seconds: f64,
    /// Reserve replies per second, from the first reserve due to the last reserve reply.
    pub reservations_per_second: f64,
    /// All replies (reserve, confirm, release) per second over the same kind of window.
    pub commands_per_second: f64,
    pub latency: Latencies,
    pub steps: Vec<StepResult>,
    /// With --ramp: the highest rate (reserves/s) inventory kept up with, steps from the start.
    pub saturation_rate: Option<f64>,
    /// With --ramp: the highest rate whose reserve p99 stayed within `--p99-limit-ms`.
    pub p99_within_limit_rate: Option<f64>,
    pub ramp_stopped_early: bool,
    pub consistency: Consistency,
    pub cpu: cpu::CpuReport,
    pub seconds: Vec<Second>,
    pub chart: String,
}

/// The isolated `keel run --roles inventory,sinks`, stopped (SIGTERM, then SIGKILL) on drop.
struct Child {
    child: std::process::Child,
    admin: String,
    state_dir: PathBuf,
}

impl Child {
    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts `keel run --roles inventory,sinks` on `config`'s isolated names, its log in `log`.
fn spawn_keel(
    config: &KeelConfig,
    config_path: Option<&Path>,
    log: &Path,
) -> anyhow::Result<Child> {
    let port = free_port()?;
    let state_dir = std::env::temp_dir().join(format!(
        "keel-bench-inventory-{}",
        config.streams.application_id
    ));
    let log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(["run", "--roles", "inventory,sinks"])
        .env("KEEL__TOPICS__PREFIX", &config.topics.prefix)
        .env(
            "KEEL__STREAMS__APPLICATION_ID",
            &config.streams.application_id,
        )
        .env("KEEL__STREAMS__INSTANCE_ID", "bench-1")
        .env("KEEL__STREAMS__STATE_DIR", &state_dir)
        .env("KEEL__CASSANDRA__KEYSPACE", &config.cassandra.keyspace)
        .env("KEEL__METRICS__LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .stdin(std::process::Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    if let Some(path) = config_path {
        cmd.env("KEEL_CONFIG", path);
    }
    let child = cmd
        .spawn()
        .context("starting keel run --roles inventory,sinks")?;
    Ok(Child {
        child,
        admin: format!("http://127.0.0.1:{port}"),
        state_dir,
    })
}

/// Waits for the isolated run's `/ready`.
async fn wait_ready(child: &mut Child, log: &Path) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(status) = child.child.try_wait()? {
            anyhow::bail!(
                "keel run --roles inventory,sinks exited with {status} (its log: {})",
                log.display()
            );
        }
        if let Ok(r) = http.get(format!("{}/ready", child.admin)).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "keel run --roles inventory,sinks was not ready within 180 s (its log: {})",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs the benchmark; returns the human summary (the JSON and SVG paths are in it). Fails
/// after writing the result when the consistency check found a violation.
pub async fn run(
    config: &KeelConfig,
    config_path: Option<&Path>,
    args: &InventoryArgs,
) -> anyhow::Result<String> {
    anyhow::ensure!(args.skus >= 1, "--skus must be at least 1");
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.hot_share)
            && (0.0..=1.0).contains(&args.confirm_share)
            && (0.0..=1.0).contains(&args.release_share)
            && args.confirm_share + args.release_share <= 1.0,
        "--hot-share, --confirm-share and --release-share are between 0 and 1, and the last \
         two add up to at most 1"
    );
    anyhow::ensure!(
        if args.ramp {
            args.ramp_start > 0.0 && args.ramp_step_s > 0
        } else {
            args.rate > 0.0 && args.duration_s > 0
        },
        "the rate and the duration must be positive"
    );
    let steps = super::checkout::steps(
        args.ramp,
        args.rate,
        args.duration_s,
        args.ramp_start,
        args.ramp_step,
        args.ramp_step_s,
        args.ramp_max,
    );
    let warmup = Step {
        rate: steps.first().map_or(1.0, |s| s.rate),
        seconds: args.warmup_s,
    };
    let planned: u64 = warmup.orders() + steps.iter().map(|s| s.orders()).sum::<u64>();
    anyhow::ensure!(planned > warmup.orders(), "the schedule has no reserves");
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let started_at = chrono::Utc::now();
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    let stamp = started_at.format("%Y%m%dT%H%M%SZ");

    let mut config = config.clone();
    if !args.external {
        config.topics.prefix = format!("bench-inv-{tag}.");
        config.streams.application_id = format!("bench-inv-{tag}");
        config.cassandra.keyspace = format!("bench_inv_{tag}");
    }
    let mut child = None;
    if !args.external {
        let log = args
            .out_dir
            .join(format!("inventory-{stamp}-{tag}.keel.log"));
        eprintln!(
            "[bench] starting keel run --roles inventory,sinks (prefix {}, log {})",
            config.topics.prefix,
            log.display()
        );
        crate::run::ensure_topics(&config).await?;
        let mut c = spawn_keel(&config, config_path, &log)?;
        wait_ready(&mut c, &log).await?;
        child = Some(c);
    }
    let result = measure(&config, args, &steps, warmup, planned, &tag, child.as_ref()).await;
    if let Some(mut c) = child {
        c.stop();
    }
    if !args.external && !args.keep {
        clean_up(&config).await;
    }
    let mut result = result?;
    result.started_at = started_at.to_rfc3339();

    let json_path = args.out_dir.join(format!("inventory-{stamp}-{tag}.json"));
    let svg_path = args.out_dir.join(format!("inventory-{stamp}-{tag}.svg"));
    result.chart = svg_path.display().to_string();
    chart(&result, &svg_path, args.p99_limit_ms)?;
    std::fs::write(&json_path, serde_json::to_vec_pretty(&result)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let summary = render(&result, &json_path, &svg_path);
    let c = &result.consistency;
    if !c.never_negative || !c.store_agrees || c.unexpected_replies > 0 {
        print!("{summary}");
        anyhow::bail!(
            "the inventory was inconsistent at the end: never negative {}, store agrees {} \
             ({:?}), unexpected replies {}",
            c.never_negative,
            c.store_agrees,
            c.mismatches,
            c.unexpected_replies
        );
    }
    Ok(summary)
}

/// Deletes the isolated run's topics (its prefix and its application's internal ones) and its
/// keyspace; best effort.
async fn clean_up(config: &KeelConfig) {
    let prefixes = [
        config.topics.prefix.clone(),
        format!("{}-", config.streams.application_id),
    ];
    if let Err(e) = super::topics::delete_topics_with_prefixes(
        &config.kafka.bootstrap_servers,
        &config.kafka.client,
        &prefixes,
        super::topics::CLEANUP_WITHIN,
    )
    .await
    {
        tracing::warn!(error = %e, "deleting the bench's topics");
    }
    if let Ok(session) = scylla::client::session_builder::SessionBuilder::new()
        .known_nodes(&config.cassandra.nodes)
        .build()
        .await
    {
        let drop = format!("DROP KEYSPACE IF EXISTS {}", config.cassandra.keyspace);
        if let Err(e) = session.query_unpaged(drop, &[]).await {
            tracing::warn!(error = %e, "dropping the bench's keyspace");
        }
    }
}

async fn measure(
    config: &KeelConfig,
    args: &InventoryArgs,
    steps: &[Step],
    warmup: Step,
    planned: u64,
    tag: &str,
    child: Option<&Child>,
) -> anyhow::Result<InventoryResult> {
    let skus: Arc<Vec<String>> = Arc::new(
        (0..args.skus)
            .map(|i| format!("BENCH-INV-{}-{i:05}", tag.to_ascii_uppercase()))
            .collect(),
    );
    let per_sku = args
        .stock
        .unwrap_or_else(|| i32::try_from(planned + 10).unwrap_or(i32::MAX));
    let names = config.topics.names();
    let commands = names.name(topics::INVENTORY_COMMANDS);
    let tracker: Shared = Arc::new(Mutex::new(Tracker::default()));
    let counters = Arc::new(Counters::default());
    let codec = Arc::new(Codec::new(config.registry.clone())?);
    let overrides: Vec<(String, String)> = config
        .kafka
        .client
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let producer = keel_ingest_api::command_producer(
        &config.kafka.bootstrap_servers,
        &keel_ingest_api::ApiConfig::default(),
        &overrides,
    )?;
    let wire = Wire {
        producer,
        codec: codec.clone(),
        topic: commands.clone(),
        tag: tag.to_owned(),
        skus: skus.clone(),
        tracker: tracker.clone(),
        counters: counters.clone(),
    };

    // The reader of the replies, from the current end of each topic; it sends the follow-ups.
    let (follow_tx, mut follow_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let stop_reader = CancellationToken::new();
    let reader = start_reader(
        config,
        tag,
        codec,
        tracker.clone(),
        counters.clone(),
        follow_tx,
        (args.confirm_share, args.release_share),
        stop_reader.clone(),
    )?;
    let follow_ups = {
        let wire = wire.clone();
        tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            while let Some(i) = follow_rx.recv().await {
                let wire = wire.clone();
                tasks.spawn(async move { wire.send(i).await });
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        })
    };

    // Seed the stock and wait until inventory applied it.
    eprintln!(
        "[bench] seeding {} SKUs with {per_sku} units each ({planned} reserves planned)",
        skus.len()
    );
    crate::seed::inventory(config, &skus, per_sku, SEED_REASON).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let seen = lock(&tracker).seeded.len();
        if seen >= skus.len() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {seen} of {} SKUs' stock showed on inventory.adjusted.v1 within 120 s",
            skus.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Who to watch.
    let mut watched = Vec::new();
    let keel_pid = match child {
        Some(c) => Some(c.child.id()),
        None => crate::bench::checkout::url_port(&format!("http://{}", config.metrics.listen))
            .and_then(cpu::pid_listening_on),
    };
    if let Some(pid) = keel_pid {
        watched.push(cpu::Watched {
            name: "keel".into(),
            pid,
        });
    }
    open_loop::watch_stack_and_self(&mut watched);

    let progress = open_loop::progress_bar(args.no_progress, planned, "reserves")?;
    let reserves_sent = Arc::new(AtomicU64::new(0));
    let stop_ticker = CancellationToken::new();
    let ticker = {
        let (progress, counters, stop, reserves) = (
            progress.clone(),
            counters.clone(),
            stop_ticker.clone(),
            reserves_sent.clone(),
        );
        tokio::spawn(async move {
            loop {
                let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
                let (sent, replied) = (c(&counters.sent), c(&counters.replied));
                let errors = c(&counters.errors);
                progress.set_position(c(&reserves));
                progress.set_message(format!(
                    "commands {sent}  replies {replied}  shortages {}  errors {errors}  open {}",
                    c(&counters.shortages),
                    sent.saturating_sub(replied + errors)
                ));
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        })
    };

    let mut sender = Sender {
        wire: wire.clone(),
        hot_share: args.hot_share,
        next: 0,
        sent: reserves_sent,
    };
    let mut pacer = Pacer::new(args.max_in_flight);
    pacer.warm_up(&mut sender, warmup, &progress).await;
    progress.set_prefix("measuring");
    let before = cpu::sample(&watched);
    let open_loop::Measured {
        t0,
        last_due,
        steps_run,
        ramp_stopped_early,
    } = pacer
        .measure(&mut sender, steps, args.ramp, |step| {
            // Stop once inventory no longer keeps up: more than 1 % of the reserves due in the
            // last step-long window that ended --ramp-stop-ms ago were not answered within it.
            let (judged, bad, stop) = open_loop::ramp_check(
                lock(&tracker)
                    .ops
                    .iter()
                    .filter(|o| o.kind == Kind::Reserve && o.step.is_some())
                    .map(Op::sample),
                args.ramp_stop_ms,
                step.seconds,
                Instant::now(),
            );
            say(
                &progress,
                format!(
                    "[bench] after {:.0} reserves/s: {bad} of {judged} reserves not answered \
                     within {} ms{}",
                    step.rate,
                    args.ramp_stop_ms,
                    if stop { "; stopping the ramp" } else { "" }
                ),
            );
            stop
        })
        .await;
    let mut tasks = pacer.into_tasks();

    // Drain: every command answered (follow-ups included), or the drain timeout.
    progress.set_prefix("draining");
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain_timeout_s);
    loop {
        let open = lock(&tracker).ops.iter().filter(|o| !o.settled()).count();
        if open == 0 || Instant::now() >= drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = cpu::sample(&watched);
    while tasks.try_join_next().is_some() {}
    tasks.abort_all();
    stop_ticker.cancel();
    let _ = ticker.await;
    progress.finish_and_clear();
    stop_reader.cancel();
    let _ = reader.await;
    drop(wire);
    follow_ups.abort();

    // The store against the replies.
    eprintln!("[bench] checking the stock and the holds in Cassandra");
    let consistency = {
        let (expected, min_available, unexpected) = {
            let t = lock(&tracker);
            (expected_per_sku(&t, &skus), t.min_available, t.unexpected)
        };
        check_store(
            config,
            &skus,
            &expected,
            min_available,
            unexpected,
            Duration::from_secs(args.store_timeout_s),
        )
        .await?
    };

    let t = lock(&tracker);
    Ok(summarize(
        &t.ops,
        Summary {
            config,
            args,
            steps: &steps_run,
            t0,
            last_due,
            per_sku,
            isolated: child.is_some(),
            cpu: cpu::between(&watched, &before, &after),
            ramp_stopped_early,
            consistency,
        },
    ))
}

/// The reserves a [`Pacer`] sends, each on a random SKU (the hot one at `hot_share`).
struct Sender {
    wire: Wire,
    hot_share: f64,
    /// The next reservation's number.
    next: u64,
    sent: Arc<AtomicU64>,
}

impl Requests for Sender {
    fn due(&mut self, due: Instant, step: Option<usize>) -> usize {
        let order = self.next;
        self.next += 1;
        let sku = pick_sku(
            rand::random::<f64>(),
            rand::random::<f64>(),
            self.hot_share,
            self.wire.skus.len(),
        );
        let i = lock(&self.wire.tracker).register(Op {
            kind: Kind::Reserve,
            order,
            sku,
            due,
            step,
            reply: None,
            error: None,
        });
        self.sent.fetch_add(1, Ordering::Relaxed);
        i
    }

    fn refused(&mut self, i: usize) {
        self.wire.counters.errors.fetch_add(1, Ordering::Relaxed);
        lock(&self.wire.tracker).ops[i].error = Some("client: in-flight limit".into());
    }

    fn send(&mut self, i: usize) -> impl Future<Output = ()> + Send + 'static {
        let wire = self.wire.clone();
        async move { wire.send(i).await }
    }
}

/// The order number of `bench-<tag>-<n>`.
fn order_number(order_id: &str, prefix: &str) -> Option<u64> {
    order_id.strip_prefix(prefix)?.parse().ok()
}

/// Reads `inventory.reserved.v1`, `inventory.released.v1` and `inventory.adjusted.v1` (with the
/// run's prefix) from their current ends until `stop`; queues a HELD order's follow-up.
#[allow(clippy::too_many_arguments)]
fn start_reader(
    config: &KeelConfig,
    tag: &str,
    codec: Arc<Codec>,
    tracker: Shared,
    counters: Arc<Counters>,
    follow_ups: tokio::sync::mpsc::UnboundedSender<usize>,
    (confirm_share, release_share): (f64, f64),
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let names = config.topics.names();
    let reserved = names.name(topics::INVENTORY_RESERVED);
    let released = names.name(topics::INVENTORY_RELEASED);
    let adjusted = names.name(topics::INVENTORY_ADJUSTED);
    let consumer = open_loop::consumer_at_ends(
        config,
        &format!("keel-bench-inventory-{tag}"),
        &[&reserved, &released, &adjusted],
        "keel",
    )?;
    let prefix = format!("bench-{tag}-");
    Ok(tokio::spawn(async move {
        while let Some((m, at)) =
            open_loop::next_message(&consumer, &stop, "reading inventory's replies").await
        {
            let Some(payload) = m.payload() else { continue };
            let topic = m.topic();
            if topic == adjusted {
                match codec
                    .decode_from::<InventoryAdjusted>(&adjusted, payload)
                    .await
                {
                    Ok(e) if e.reason == SEED_REASON => {
                        lock(&tracker).seeded.insert(e.sku, e.on_hand);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "undecodable adjustment"),
                }
                continue;
            }
            let (order_id, kind, reply, available) = if topic == reserved {
                match codec
                    .decode_from::<InventoryReserved>(&reserved, payload)
                    .await
                {
                    Ok(e) => {
                        let (kind, reply) = match e.status {
                            ReservationStatus::Held => (Kind::Reserve, Reply::Held),
                            ReservationStatus::Shortage => (Kind::Reserve, Reply::Shortage),
                            ReservationStatus::Sold => (Kind::Confirm, Reply::Sold),
                            ReservationStatus::Oversold => (Kind::Confirm, Reply::Oversold),
                            ReservationStatus::SaleRefused => (Kind::Confirm, Reply::SaleRefused),
                        };
                        (e.order_id, kind, reply, Some(e.available))
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "undecodable reservation reply");
                        continue;
                    }
                }
            } else if topic == released {
                match codec
                    .decode_from::<InventoryReleased>(&released, payload)
                    .await
                {
                    Ok(e) => (e.order_id, Kind::Release, Reply::Released, None),
                    Err(e) => {
                        tracing::warn!(error = %e, "undecodable release");
                        continue;
                    }
                }
            } else {
                continue;
            };
            let mut t = lock(&tracker);
            if let Some(a) = available {
                t.min_available = Some(t.min_available.map_or(a, |m| m.min(a)));
            }
            let Some(order) = order_number(&order_id, &prefix) else {
                t.unexpected += 1;
                continue;
            };
            let Some(i) = t.answer(order, kind, reply, at) else {
                continue;
            };
            counters.replied.fetch_add(1, Ordering::Relaxed);
            if reply == Reply::Shortage {
                counters.shortages.fetch_add(1, Ordering::Relaxed);
            }
            if reply == Reply::Held
                && let Some(next) = follow_up(order, confirm_share, release_share)
            {
                let (sku, step) = (t.ops[i].sku, t.ops[i].step);
                let j = t.register(Op {
                    kind: next,
                    order,
                    sku,
                    due: at,
                    step,
                    reply: None,
                    error: None,
                });
                drop(t);
                if follow_ups.send(j).is_err() {
                    lock(&tracker).ops[j].error = Some("client: stopped".into());
                }
            }
        }
    }))
}

/// What the replies say one SKU's store must hold at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Expected {
    seeded: i64,
    held: u64,
    sold: u64,
    released: u64,
}

impl Expected {
    fn on_hand(self) -> i64 {
        self.seeded - self.sold as i64
    }

    fn outstanding(self) -> i64 {
        self.held as i64 - self.sold as i64 - self.released as i64
    }
}

fn expected_per_sku(t: &Tracker, skus: &[String]) -> Vec<Expected> {
    let mut out: Vec<Expected> = skus
        .iter()
        .map(|s| Expected {
            seeded: i64::from(t.seeded.get(s).copied().unwrap_or(0)),
            ..Expected::default()
        })
        .collect();
    for op in &t.ops {
        let e = &mut out[op.sku];
        match op.reply {
            Some((_, Reply::Held)) => e.held += 1,
            Some((_, Reply::Sold | Reply::Oversold)) => e.sold += 1,
            Some((_, Reply::Released)) => e.released += 1,
            _ => {}
        }
    }
    out
}

/// Polls Cassandra until every SKU's `stock_level.on_hand` and summed `reservation` quantities
/// equal what the replies say (the Cassandra sink applies the events after inventory commits
/// them, so it may still be catching up), or the store went `within` without changing.
async fn check_store(
    config: &KeelConfig,
    skus: &[String],
    expected: &[Expected],
    min_available: Option<i32>,
    unexpected: u64,
    within: Duration,
) -> anyhow::Result<Consistency> {
    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_nodes(&config.cassandra.nodes)
        .build()
        .await
        .context("connecting to Cassandra")?;
    let ks = &config.cassandra.keyspace;
    let on_hand_q = session
        .prepare(format!(
            "SELECT on_hand FROM {ks}.stock_level WHERE sku = ?"
        ))
        .await
        .context("preparing the stock read")?;
    let holds_q = session
        .prepare(format!(
            "SELECT quantity FROM {ks}.reservation WHERE sku = ?"
        ))
        .await
        .context("preparing the holds read")?;
    let started = Instant::now();
    let (mut last_totals, mut changed_at) = (None, Instant::now());
    loop {
        let mut mismatches = Vec::new();
        let (mut store_on_hand, mut store_held, mut negative) = (0i64, 0i64, false);
        for (sku, want) in skus.iter().zip(expected) {
            let on_hand = session
                .execute_unpaged(&on_hand_q, (sku,))
                .await?
                .into_rows_result()?
                .maybe_first_row::<(Option<i32>,)>()?
                .and_then(|(n,)| n)
                .map_or(0, i64::from);
            let mut held = 0i64;
            let rows = session
                .execute_unpaged(&holds_q, (sku,))
                .await?
                .into_rows_result()?;
            for row in rows.rows::<(Option<i32>,)>()? {
                held += row?.0.map_or(0, i64::from);
            }
            store_on_hand += on_hand;
            store_held += held;
            negative |= on_hand < 0 || on_hand - held < 0;
            if on_hand != want.on_hand() || held != want.outstanding() {
                mismatches.push(format!(
                    "{sku}: expected on hand {} held {}, store on hand {on_hand} held {held}",
                    want.on_hand(),
                    want.outstanding()
                ));
            }
        }
        if last_totals != Some((store_on_hand, store_held)) {
            last_totals = Some((store_on_hand, store_held));
            changed_at = Instant::now();
        }
        if mismatches.is_empty() || changed_at.elapsed() >= within {
            let sum = |f: fn(&Expected) -> i64| expected.iter().map(f).sum::<i64>();
            let count = |f: fn(&Expected) -> u64| expected.iter().map(f).sum::<u64>();
            let n = mismatches.len();
            mismatches.truncate(10);
            if n > 10 {
                mismatches.push(format!("... and {} more", n - 10));
            }
            return Ok(Consistency {
                min_available_seen: min_available,
                never_negative: !negative && min_available.is_none_or(|m| m >= 0),
                seeded_total: sum(|e| e.seeded),
                held: count(|e| e.held),
                sold: count(|e| e.sold),
                released: count(|e| e.released),
                outstanding: u64::try_from(sum(|e| e.outstanding())).unwrap_or(0),
                expected_on_hand: sum(|e| e.on_hand()),
                expected_held: sum(|e| e.outstanding()),
                store_on_hand,
                store_held,
                store_agrees: n == 0,
                store_check_seconds: started.elapsed().as_secs_f64(),
                mismatches,
                unexpected_replies: unexpected,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

struct Summary<'a> {
    config: &'a KeelConfig,
    args: &'a InventoryArgs,
    steps: &'a [Step],
    t0: Instant,
    last_due: Instant,
    per_sku: i32,
    isolated: bool,
    cpu: cpu::CpuReport,
    ramp_stopped_early: bool,
    consistency: Consistency,
}

fn lat(o: &Op) -> Option<u64> {
    o.sample().latency_us()
}

/// Everything the result says, from the ops (the warm-up's excluded from the figures).
fn summarize(ops: &[Op], s: Summary<'_>) -> InventoryResult {
    let measured: Vec<&Op> = ops.iter().filter(|o| o.step.is_some()).collect();
    let of = |k: Kind| -> Vec<&Op> { measured.iter().copied().filter(|o| o.kind == k).collect() };
    let (reserves, confirms, releases) = (of(Kind::Reserve), of(Kind::Confirm), of(Kind::Release));
    let replied = |v: &[&Op], r: Reply| {
        v.iter()
            .filter(|o| o.reply.is_some_and(|(_, x)| x == r))
            .count() as u64
    };
    let mut errors = BTreeMap::new();
    for o in &measured {
        if let Some(e) = &o.error {
            *errors.entry(e.clone()).or_insert(0) += 1;
        } else if o.reply.is_none() {
            *errors.entry("unanswered".to_owned()).or_insert(0) += 1;
        }
    }
    let per_second = |v: &[&Op]| {
        v.iter()
            .filter_map(|o| o.reply.map(|(at, _)| at))
            .max()
            .map_or(0.0, |last| {
                v.iter().filter(|o| o.reply.is_some()).count() as f64
                    / last.saturating_duration_since(s.t0).as_secs_f64().max(1e-3)
            })
    };
    let steps: Vec<StepResult> = s
        .steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let in_step: Vec<&&Op> = reserves.iter().filter(|o| o.step == Some(i)).collect();
            let f = open_loop::step_figures(
                in_step.iter().map(|o| o.sample()),
                s.args.p99_limit_ms,
                s.args.ramp_stop_ms,
            );
            StepResult {
                rate: step.rate,
                seconds: step.seconds,
                reserves: f.due,
                answered: f.done,
                shortages: in_step
                    .iter()
                    .filter(|o| o.reply.is_some_and(|(_, r)| r == Reply::Shortage))
                    .count() as u64,
                errors: in_step.iter().filter(|o| o.error.is_some()).count() as u64,
                sustained: f.sustained,
                kept_up: f.kept_up,
                reserve_latency: f.latency,
            }
        })
        .collect();
    let (saturation_rate, p99_within_limit_rate) = open_loop::ramp_rates(
        s.args.ramp,
        steps.iter().map(|st| (st.rate, st.kept_up, st.sustained)),
    );
    // Per second, reserves by the second they were due in.
    let seconds = open_loop::per_second(reserves.iter().map(|o| o.sample()), s.t0);
    InventoryResult {
        started_at: String::new(),
        machine: super::checkout::machine(),
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .to_owned(),
        isolated: s.isolated,
        topic_prefix: s.config.topics.prefix.clone(),
        application_id: s.config.streams.application_id.clone(),
        keyspace: s.config.cassandra.keyspace.clone(),
        partitions: s.config.topics.partitions,
        mode: if s.args.ramp { "ramp" } else { "fixed" }.to_owned(),
        schedule: s.steps.iter().map(|st| (st.rate, st.seconds)).collect(),
        skus: s.args.skus,
        hot_share: s.args.hot_share,
        stock_per_sku: s.per_sku,
        confirm_share: s.args.confirm_share,
        release_share: s.args.release_share,
        reserves: reserves.len() as u64,
        held: replied(&reserves, Reply::Held),
        shortages: replied(&reserves, Reply::Shortage),
        confirms: confirms.len() as u64,
        sold: replied(&confirms, Reply::Sold),
        oversold: replied(&confirms, Reply::Oversold),
        sale_refused: replied(&confirms, Reply::SaleRefused),
        releases: releases.len() as u64,
        released: replied(&releases, Reply::Released),
        errors,
        send_seconds: s.last_due.saturating_duration_since(s.t0).as_secs_f64(),
        reservations_per_second: per_second(&reserves),
        commands_per_second: per_second(&measured),
        latency: Latencies {
            reserve: latency(reserves.iter().filter_map(|o| lat(o))),
            reserve_hot_sku: latency(
                reserves
                    .iter()
                    .filter(|o| o.sku == 0)
                    .filter_map(|o| lat(o)),
            ),
            confirm: latency(confirms.iter().filter_map(|o| lat(o))),
            release: latency(releases.iter().filter_map(|o| lat(o))),
        },
        steps,
        saturation_rate,
        p99_within_limit_rate,
        ramp_stopped_early: s.ramp_stopped_early,
        consistency: s.consistency,
        cpu: s.cpu,
        seconds,
        chart: String::new(),
    }
}

fn chart(r: &InventoryResult, path: &Path, limit_ms: u64) -> anyhow::Result<()> {
    let title = if r.mode == "ramp" {
        format!(
            "keel bench inventory --ramp: reserve → reply (kept up to {})",
            r.saturation_rate
                .map_or_else(|| "none".to_owned(), |s| format!("{s:.0} reserves/s"))
        )
    } else {
        format!(
            "keel bench inventory at {:.0} reserves/s, {} SKUs, hot share {:.0} %: reserve → reply",
            r.schedule.first().map_or(0.0, |s| s.0),
            r.skus,
            r.hot_share * 100.0
        )
    };
    super::checkout::latency_chart(
        path,
        &ChartText {
            title,
            x_desc: "seconds since the first reserve was due (reserves by the second they were due)",
            rate_desc: "reserves / s",
            done: "answered",
        },
        &r.seconds,
        limit_ms,
    )
}

/// The summary for people.
fn render(r: &InventoryResult, json: &Path, svg: &Path) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut row = |k: &str, v: String| {
        let _ = writeln!(out, "{k:<40} {v}");
    };
    row(
        "machine",
        format!(
            "{} cores ({}), {} MiB; {} build",
            r.machine.nproc, r.machine.cpu_model, r.machine.memory_mib, r.build
        ),
    );
    row(
        "keel",
        format!(
            "{} (prefix {}, {} partitions)",
            if r.isolated {
                "isolated keel run --roles inventory,sinks"
            } else {
                "external"
            },
            r.topic_prefix,
            r.partitions
        ),
    );
    row(
        "schedule (reserves/s x s)",
        open_loop::schedule_text(&r.schedule),
    );
    row(
        "SKUs / hot share / stock per SKU",
        format!(
            "{} / {:.0} % on SKU 0 / {}",
            r.skus,
            r.hot_share * 100.0,
            r.stock_per_sku
        ),
    );
    row(
        "reserves: held / shortage",
        format!("{}: {} / {}", r.reserves, r.held, r.shortages),
    );
    row(
        "confirms: sold / oversold / refused",
        format!(
            "{}: {} / {} / {}",
            r.confirms, r.sold, r.oversold, r.sale_refused
        ),
    );
    row(
        "releases: released",
        format!("{}: {}", r.releases, r.released),
    );
    row(
        "errors",
        format!("{} {:?}", r.errors.values().sum::<u64>(), r.errors),
    );
    row(
        "throughput",
        format!(
            "{:.1} reservations/s, {:.1} commands/s (first due → last reply)",
            r.reservations_per_second, r.commands_per_second
        ),
    );
    let l = |x: &Latency| {
        format!(
            "p50 {:.1} / p90 {:.1} / p99 {:.1} / p99.9 {:.1} / max {:.1} ms ({})",
            x.p50_ms, x.p90_ms, x.p99_ms, x.p999_ms, x.max_ms, x.count
        )
    };
    row("reserve → HELD/SHORTAGE", l(&r.latency.reserve));
    row("  on the hot SKU", l(&r.latency.reserve_hot_sku));
    row("confirm → SOLD", l(&r.latency.confirm));
    row("release → released", l(&r.latency.release));
    open_loop::step_rows(
        &mut row,
        "reserves",
        "answered",
        1,
        r.steps.iter().map(|st| open_loop::StepLine {
            rate: st.rate,
            seconds: st.seconds,
            done: st.answered,
            due: st.reserves,
            latency: &st.reserve_latency,
            sustained: st.sustained,
            kept_up: st.kept_up,
        }),
    );
    open_loop::ramp_rows(
        &mut row,
        r.mode == "ramp",
        "reserves",
        r.saturation_rate,
        r.p99_within_limit_rate,
    );
    let c = &r.consistency;
    row(
        "never negative",
        format!(
            "{} (lowest available on a reply: {})",
            c.never_negative,
            c.min_available_seen
                .map_or_else(|| "none".to_owned(), |m| m.to_string())
        ),
    );
    row(
        "holds add up (all commands)",
        format!(
            "held {} − sold {} − released {} = {} outstanding",
            c.held, c.sold, c.released, c.outstanding
        ),
    );
    row(
        "Cassandra agrees",
        format!(
            "{} after {:.1} s: on hand {} (expected {}), held {} (expected {}){}",
            c.store_agrees,
            c.store_check_seconds,
            c.store_on_hand,
            c.expected_on_hand,
            c.store_held,
            c.expected_held,
            if c.mismatches.is_empty() {
                String::new()
            } else {
                format!(" {:?}", c.mismatches)
            }
        ),
    );
    row("unexpected replies", c.unexpected_replies.to_string());
    open_loop::cpu_rows(&mut row, &r.cpu, None);
    row("result", json.display().to_string());
    row("chart", svg.display().to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hot_share_goes_to_sku_zero_and_the_rest_spreads_evenly() {
        assert_eq!(pick_sku(0.49, 0.99, 0.5, 8), 0);
        assert_eq!(pick_sku(0.5, 0.99, 0.5, 8), 7);
        assert_eq!(pick_sku(0.9, 0.0, 0.5, 8), 0);
        assert_eq!(pick_sku(0.9, 0.5, 0.0, 8), 4);
        assert_eq!(pick_sku(0.0, 0.999_999, 0.0, 1), 0);
        // Over many draws with no hot share every SKU gets about its share.
        let mut counts = [0u32; 4];
        for i in 0..4000 {
            counts[pick_sku(0.5, f64::from(i) / 4000.0, 0.0, 4)] += 1;
        }
        assert_eq!(counts, [1000; 4]);
    }

    #[test]
    fn follow_ups_split_held_orders_by_the_shares() {
        let (mut confirm, mut release, mut none) = (0, 0, 0);
        for order in 0..10_000 {
            match follow_up(order, 0.5, 0.3) {
                Some(Kind::Confirm) => confirm += 1,
                Some(Kind::Release) => release += 1,
                _ => none += 1,
            }
        }
        assert!((4800..=5200).contains(&confirm), "{confirm}");
        assert!((2800..=3200).contains(&release), "{release}");
        assert!((1800..=2200).contains(&none), "{none}");
        assert_eq!(follow_up(7, 0.0, 0.0), None);
        assert_eq!(follow_up(7, 1.0, 0.0), Some(Kind::Confirm));
    }

    #[test]
    fn a_second_reply_for_one_command_is_unexpected_not_counted_twice() {
        let mut t = Tracker::default();
        let now = Instant::now();
        let i = t.register(Op {
            kind: Kind::Reserve,
            order: 3,
            sku: 0,
            due: now,
            step: Some(0),
            reply: None,
            error: None,
        });
        assert_eq!(t.answer(3, Kind::Reserve, Reply::Held, now), Some(i));
        assert_eq!(t.answer(3, Kind::Reserve, Reply::Held, now), None);
        assert_eq!(t.answer(4, Kind::Reserve, Reply::Held, now), None);
        assert_eq!(t.unexpected, 2);
    }

    #[test]
    fn the_store_must_hold_seeded_minus_sold_and_the_outstanding_holds() {
        let mut t = Tracker::default();
        t.seeded.insert("A".into(), 10);
        let now = Instant::now();
        for (order, kind, reply) in [
            (0, Kind::Reserve, Reply::Held),
            (1, Kind::Reserve, Reply::Held),
            (2, Kind::Reserve, Reply::Held),
            (3, Kind::Reserve, Reply::Shortage),
            (0, Kind::Confirm, Reply::Sold),
            (1, Kind::Release, Reply::Released),
        ] {
            t.register(Op {
                kind,
                order,
                sku: 0,
                due: now,
                step: None,
                reply: Some((now, reply)),
                error: None,
            });
        }
        let e = expected_per_sku(&t, &["A".to_owned()]);
        assert_eq!(e[0].on_hand(), 9);
        assert_eq!(e[0].outstanding(), 1);
    }

    #[test]
    fn order_numbers_are_read_from_the_order_ids() {
        assert_eq!(order_number("bench-ab12-42", "bench-ab12-"), Some(42));
        assert_eq!(order_number("bench-other-42", "bench-ab12-"), None);
        assert_eq!(order_number("bench-ab12-x", "bench-ab12-"), None);
    }
}
