//! `keel bench checkout`: an open-loop load generator for the whole checkout against a RUNNING
//! `keel run` and `keel psp-mock` on the local stack.
//!
//! - **Seeds first**: one cart per order (bulk inserts into the cart service's `carts` and
//!   `cart_items`, one line of one of `--skus` SKUs each) and the SKUs' stock (`AdjustStock`
//!   commands, as `keel inventory seed`), waiting until `GET /inventory/{sku}` shows it; then one
//!   probe order must confirm before anything is measured.
//! - **Open loop**: orders are due on a fixed schedule (a `tokio` interval per rate step,
//!   `MissedTickBehavior::Burst`, so a late tick is sent at once and never skipped); each
//!   `POST /orders` runs in its own task, whatever the earlier ones are doing. Latency is
//!   measured from the time the order was *due*, not the time it was sent, so a stalled sender
//!   or API shows up in the figures (no coordinated omission).
//! - **Confirmed**: when `order.status.changed` (with the run's topic prefix) carries
//!   `to_status = CONFIRMED` for the order, read `read_committed` by this process. That is the
//!   public event other systems and the customer hear, written by the order outbox after
//!   MariaDB holds the CONFIRMED row (so `GET /orders/{id}` says CONFIRMED by then); the saga's
//!   own decision on `order.decisions.v1` comes earlier and is reported beside it as the
//!   "decided" latency (the difference is the order sink, the outbox and its relay).
//!   `CANCELLED` / `REJECTED` decisions are the compensations and rejections.
//! - `--ramp`: steps of rising rate; the ramp stops once more than 1 % of the orders of a
//!   step-long window were not CONFIRMED within `--ramp-stop-ms` (Keel no longer keeps up).
//!   The saturation point is the highest step that kept up (≥ 99 % confirmed within that);
//!   beside it, the highest step whose p99 stayed within `--p99-limit-ms`.
//! - CPU: `/proc/<pid>/stat` of keel (the process listening on the API's port, or
//!   `--keel-pid`), the PSP mock (listening on `[payment].psp_url`'s port), the stack's servers
//!   (their pid files, see `stack/lib.sh`) and this process, over the measured window.
//!
//! Writes `<out-dir>/checkout-<UTC time>.json` (the result) and `.svg` (latency over time by
//! send second: p50, p99, max).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use keel_avro::Codec;
use keel_avro::records::{OrderDecision, OrderDecisionStatus, OrderStatus, OrderStatusChanged};
use keel_processors::topics;
use rdkafka::message::Message as _;
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::cpu;
use super::open_loop::{self, Pacer, Requests, Sample};
use crate::config::KeelConfig;

/// `keel bench checkout` options.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckoutArgs {
    /// Orders per second (the fixed arrival rate; ignored with --ramp).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of sending at --rate.
    #[arg(long, default_value_t = 60)]
    pub duration_s: u64,
    /// Find the saturation point: rates from --ramp-start up by --ramp-step every
    /// --ramp-step-s seconds, until a step misses the p99 limit or --ramp-max.
    #[arg(long)]
    pub ramp: bool,
    #[arg(long, default_value_t = 100.0)]
    pub ramp_start: f64,
    #[arg(long, default_value_t = 100.0)]
    pub ramp_step: f64,
    #[arg(long, default_value_t = 15)]
    pub ramp_step_s: u64,
    #[arg(long, default_value_t = 1500.0)]
    pub ramp_max: f64,
    /// A rate is sustained when the p99 of POST → CONFIRMED stays within this (ms) and ≥ 99 %
    /// of its orders confirm.
    #[arg(long, default_value_t = 1000)]
    pub p99_limit_ms: u64,
    /// With --ramp: an order not CONFIRMED within this (ms) means Keel is not keeping up; the
    /// ramp stops when more than 1 % of a step's orders are, and the saturation point is the
    /// highest rate before that.
    #[arg(long, default_value_t = 10_000)]
    pub ramp_stop_ms: u64,
    /// Distinct SKUs the carts draw from (one line each; a SKU's stock lives in one inventory
    /// task, so few SKUs make a hot partition).
    #[arg(long, default_value_t = 64)]
    pub skus: usize,
    /// The payment method token of every order (the PSP mock's rules: tok_visa authorizes).
    #[arg(long, default_value = "tok_visa")]
    pub payment_method: String,
    /// Keel's API (default: http://<[api].listen>).
    #[arg(long)]
    pub api: Option<String>,
    /// Where the JSON result and the SVG chart go.
    #[arg(long, default_value = ".")]
    pub out_dir: PathBuf,
    /// Seconds to wait after the last order was due for the outstanding ones to settle.
    #[arg(long, default_value_t = 60)]
    pub drain_timeout_s: u64,
    /// HTTP requests in flight at most; an order due while this many are open is counted as a
    /// client error, not delayed (delaying it would close the loop).
    #[arg(long, default_value_t = 4096)]
    pub max_in_flight: usize,
    /// Keel's pid for the CPU figures (default: the process listening on the API's port).
    #[arg(long)]
    pub keel_pid: Option<u32>,
    /// No progress bar (it is hidden anyway when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// Seconds of sending at the first rate before anything is measured (those orders are
    /// not in the result; the CPU window starts after them).
    #[arg(long, default_value_t = 10)]
    pub warmup_s: u64,
    /// Seconds of measuring every server's CPU with no orders, before the warm-up: the
    /// baseline the loaded figures stand on (0: none).
    #[arg(long, default_value_t = 5)]
    pub idle_s: u64,
}

/// One rate step of the schedule (shared with `keel bench inventory`).
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Step {
    pub(crate) rate: f64,
    pub(crate) seconds: u64,
}

impl Step {
    /// What is due in the step: `rate × seconds`, rounded.
    pub(crate) fn orders(self) -> u64 {
        (self.rate * self.seconds as f64).round().max(0.0) as u64
    }
}

/// An open-loop schedule: one step at `rate` for `seconds`, or with `ramp` steps of `step_s`
/// seconds from `start` up by `by` (at least 1) to `max`, at most 1000 steps.
pub(crate) fn steps(
    ramp: bool,
    rate: f64,
    seconds: u64,
    start: f64,
    by: f64,
    step_s: u64,
    max: f64,
) -> Vec<Step> {
    if !ramp {
        return vec![Step { rate, seconds }];
    }
    let mut steps = Vec::new();
    let mut rate = start;
    while rate <= max + 1e-9 && steps.len() < 1000 {
        steps.push(Step {
            rate,
            seconds: step_s,
        });
        rate += by.max(1.0);
    }
    steps
}

fn schedule(args: &CheckoutArgs) -> Vec<Step> {
    steps(
        args.ramp,
        args.rate,
        args.duration_s,
        args.ramp_start,
        args.ramp_step,
        args.ramp_step_s,
        args.ramp_max,
    )
}

/// What the bench learned about one order.
#[derive(Debug, Clone)]
struct OrderRec {
    /// When it was due (the schedule), the origin of every latency.
    due: Instant,
    /// The schedule step (None: the probe order).
    step: Option<usize>,
    accepted: Option<Instant>,
    order_id: Option<String>,
    decided: Option<Instant>,
    confirmed: Option<Instant>,
    cancelled: Option<String>,
    rejected: Option<String>,
    error: Option<String>,
}

impl OrderRec {
    /// Due → CONFIRMED.
    fn sample(&self) -> Sample {
        Sample {
            due: self.due,
            done: self.confirmed,
        }
    }

    fn settled(&self) -> bool {
        self.confirmed.is_some()
            || self.cancelled.is_some()
            || self.rejected.is_some()
            || self.error.is_some()
    }
}

#[derive(Debug, Clone)]
enum Event {
    Decision(OrderDecisionStatus, Option<String>),
    Status(OrderStatus, Option<String>),
}

/// The orders and the events seen for them (events can arrive before the POST's answer).
#[derive(Debug, Default)]
struct Tracker {
    orders: Vec<OrderRec>,
    by_id: HashMap<String, usize>,
    early: HashMap<String, Vec<(Event, Instant)>>,
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    accepted: AtomicU64,
    confirmed: AtomicU64,
    cancelled: AtomicU64,
    errors: AtomicU64,
}

impl Tracker {
    fn apply(rec: &mut OrderRec, event: &Event, at: Instant, counters: &Counters) {
        match event {
            Event::Decision(OrderDecisionStatus::Confirmed, _) => {
                rec.decided.get_or_insert(at);
            }
            Event::Decision(OrderDecisionStatus::Cancelled, reason)
            | Event::Status(OrderStatus::Cancelled, reason) => {
                if rec.cancelled.is_none() && rec.confirmed.is_none() {
                    counters.cancelled.fetch_add(1, Ordering::Relaxed);
                    rec.cancelled = Some(reason.clone().unwrap_or_else(|| "none".into()));
                }
            }
            Event::Decision(OrderDecisionStatus::Rejected, reason) => {
                rec.rejected
                    .get_or_insert_with(|| reason.clone().unwrap_or_else(|| "none".into()));
            }
            Event::Status(OrderStatus::Confirmed, _) => {
                if rec.confirmed.is_none() {
                    counters.confirmed.fetch_add(1, Ordering::Relaxed);
                    rec.confirmed = Some(at);
                }
            }
            Event::Decision(OrderDecisionStatus::Pending, _)
            | Event::Status(OrderStatus::Pending, _) => {}
        }
    }

    fn observe(&mut self, order_id: &str, event: Event, at: Instant, counters: &Counters) {
        match self.by_id.get(order_id) {
            Some(&i) => Self::apply(&mut self.orders[i], &event, at, counters),
            None => self
                .early
                .entry(order_id.to_owned())
                .or_default()
                .push((event, at)),
        }
    }

    fn accepted(&mut self, i: usize, order_id: String, at: Instant, counters: &Counters) {
        let rec = &mut self.orders[i];
        rec.accepted = Some(at);
        rec.order_id = Some(order_id.clone());
        if let Some(events) = self.early.remove(&order_id) {
            for (e, t) in events {
                Self::apply(rec, &e, t, counters);
            }
        }
        self.by_id.insert(order_id, i);
    }
}

type Shared = Arc<Mutex<Tracker>>;

fn lock(t: &Shared) -> std::sync::MutexGuard<'_, Tracker> {
    t.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A latency distribution in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 1 hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// The distribution of `values_us` (microseconds; 0 counts as 1 µs).
pub(crate) fn latency(values_us: impl IntoIterator<Item = u64>) -> Latency {
    let mut h = histogram();
    for v in values_us {
        h.saturating_record(v.max(1));
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Latency {
        count: h.len(),
        p50_ms: ms(h.value_at_quantile(0.5)),
        p90_ms: ms(h.value_at_quantile(0.9)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
        mean_ms: h.mean() / 1000.0,
    }
}

/// One rate step's outcome (orders attributed to the step they were due in).
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub rate: f64,
    pub seconds: u64,
    pub due: u64,
    pub confirmed: u64,
    pub cancelled: u64,
    pub errors: u64,
    pub unsettled: u64,
    pub confirmed_latency: Latency,
    /// p99 within the limit and ≥ 99 % of the step's orders confirmed.
    pub sustained: bool,
    /// ≥ 99 % of the step's orders confirmed within `--ramp-stop-ms`.
    pub kept_up: bool,
}

/// One second of the run (orders by the second they were due in).
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub t: u64,
    pub due: u64,
    pub confirmed: u64,
    /// Orders whose CONFIRMED event arrived in this second (completion throughput).
    pub confirmed_arrived: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The machine the run was on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub memory_mib: u64,
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Machine {
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model: cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default(),
        memory_mib: meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024),
    }
}

/// The JSON result.
#[derive(Debug, Clone, Serialize)]
pub struct CheckoutResult {
    pub started_at: String,
    pub api: String,
    pub topic_prefix: String,
    pub confirmed_on: String,
    pub machine: Machine,
    pub mode: String,
    pub schedule: Vec<(f64, u64)>,
    pub skus: usize,
    pub payment_method: String,
    /// Orders due by the schedule (up to where a ramp stopped).
    pub due: u64,
    pub accepted: u64,
    pub confirmed: u64,
    pub cancelled: u64,
    pub rejected: u64,
    /// CANCELLED orders by reason (the saga's compensations).
    pub compensations: BTreeMap<String, u64>,
    pub rejections: BTreeMap<String, u64>,
    /// Failed POSTs by kind, and orders still unsettled after the drain ("unsettled").
    pub errors: BTreeMap<String, u64>,
    /// Seconds from the first order due to the last one due.
    pub send_seconds: f64,
    /// Confirmed orders per second, from the first order due to the last CONFIRMED event.
    pub confirmed_per_second: f64,
    /// POST /orders → CONFIRMED on order.status.changed, from the time each order was due.
    pub latency: Latency,
    /// POST /orders → the saga's CONFIRMED decision on order.decisions.v1.
    pub decided_latency: Latency,
    /// Due → the API's 202.
    pub post_latency: Latency,
    pub cpu: cpu::CpuReport,
    /// The same processes with no orders, measured just before the warm-up (`--idle-s`).
    pub cpu_idle: Option<cpu::CpuReport>,
    /// The process that used the most CPU, and whether the machine's cores were nearly all busy.
    pub busiest: Option<String>,
    pub machine_saturated: bool,
    pub steps: Vec<StepResult>,
    /// With --ramp: the highest rate (orders/s) Keel kept up with (≥ 99 % confirmed within
    /// `--ramp-stop-ms`), steps from the start.
    pub saturation_rate: Option<f64>,
    /// With --ramp: the highest rate whose p99 stayed within `--p99-limit-ms` (≥ 99 %
    /// confirmed), steps from the start.
    pub p99_within_limit_rate: Option<f64>,
    pub ramp_stopped_early: bool,
    pub seconds: Vec<Second>,
    pub chart: String,
}

/// Runs the benchmark; returns the human summary (the JSON and SVG paths are in it).
pub async fn run(config: &KeelConfig, args: &CheckoutArgs) -> anyhow::Result<String> {
    anyhow::ensure!(args.skus >= 1, "--skus must be at least 1");
    anyhow::ensure!(
        if args.ramp {
            args.ramp_start > 0.0 && args.ramp_step_s > 0
        } else {
            args.rate > 0.0 && args.duration_s > 0
        },
        "the rate and the duration must be positive"
    );
    let api = args
        .api
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.api.listen))
        .trim_end_matches('/')
        .to_owned();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1024)
        .build()?;
    let ready = http
        .get(format!("{api}/ready"))
        .send()
        .await
        .with_context(|| format!("keel is not answering at {api} (start `keel run` first)"))?;
    anyhow::ensure!(
        ready.status().is_success(),
        "{api}/ready answered {}",
        ready.status()
    );

    let steps = schedule(args);
    let warmup = Step {
        rate: steps.first().map_or(1.0, |s| s.rate),
        seconds: args.warmup_s,
    };
    let planned: u64 = warmup.orders() + steps.iter().map(|s| s.orders()).sum::<u64>();
    anyhow::ensure!(planned > warmup.orders(), "the schedule has no orders");
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let started_at = chrono::Utc::now();

    // Seed: stock, then one cart per order (plus the probe's).
    let skus: Vec<String> = (0..args.skus)
        .map(|i| format!("BENCH-{}-{i:04}", tag.to_ascii_uppercase()))
        .collect();
    let per_sku = i32::try_from(planned / args.skus as u64 + 10).unwrap_or(i32::MAX);
    eprintln!(
        "[bench] seeding {} SKUs with {per_sku} units each and {} carts",
        skus.len(),
        planned + 1
    );
    crate::seed::inventory(config, &skus, per_sku, "keel bench checkout").await?;
    seed_carts(config, &tag, &skus, planned + 1, args.no_progress).await?;
    wait_for_stock(&http, &api, &skus, per_sku).await?;

    // The reader of the status events, from the current end of each topic.
    let names = config.topics.names();
    let status_topic = names.name(topics::ORDER_STATUS_CHANGED);
    let decisions_topic = names.name(topics::ORDER_DECISIONS);
    let tracker: Shared = Arc::new(Mutex::new(Tracker::default()));
    let counters = Arc::new(Counters::default());
    let stop_reader = CancellationToken::new();
    let reader = start_reader(
        config,
        &tag,
        &status_topic,
        &decisions_topic,
        tracker.clone(),
        counters.clone(),
        stop_reader.clone(),
    )?;

    // The probe: one order through the whole checkout before anything counts.
    let probe_due = Instant::now();
    lock(&tracker).orders.push(OrderRec {
        due: probe_due,
        step: None,
        accepted: None,
        order_id: None,
        decided: None,
        confirmed: None,
        cancelled: None,
        rejected: None,
        error: None,
    });
    post_order(
        &http,
        &api,
        &tag,
        0,
        &format!("bench-{tag}-probe"),
        &args.payment_method,
        &tracker,
        &counters,
    )
    .await;
    let probe_deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let rec = lock(&tracker).orders[0].clone();
        if rec.confirmed.is_some() {
            eprintln!(
                "[bench] probe order confirmed in {} ms",
                rec.confirmed.map_or(0, |c| (c - rec.due).as_millis())
            );
            break;
        }
        anyhow::ensure!(
            !rec.settled(),
            "the probe order did not confirm: {rec:?} (is `keel psp-mock` running, and the \
             payment method {} one it authorizes?)",
            args.payment_method
        );
        anyhow::ensure!(
            Instant::now() < probe_deadline,
            "the probe order was not CONFIRMED on {status_topic} within 120 s: {rec:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let probe_confirmed = counters.confirmed.load(Ordering::Relaxed);
    let probe_cancelled = counters.cancelled.load(Ordering::Relaxed);

    // Who to watch.
    let mut watched: Vec<cpu::Watched> = Vec::new();
    let api_port = url_port(&api);
    if let Some(pid) = args
        .keel_pid
        .or_else(|| api_port.and_then(cpu::pid_listening_on))
    {
        watched.push(cpu::Watched {
            name: "keel".into(),
            pid,
        });
    } else {
        eprintln!("[bench] keel's pid not found (pass --keel-pid): its CPU is not reported");
    }
    if let Some(pid) = url_port(&config.payment.psp_url).and_then(cpu::pid_listening_on) {
        watched.push(cpu::Watched {
            name: "psp-mock".into(),
            pid,
        });
    }
    open_loop::watch_stack_and_self(&mut watched);

    // The measured run.
    let progress = open_loop::progress_bar(args.no_progress, planned, "due")?;
    let stop_ticker = CancellationToken::new();
    let ticker = {
        let (progress, counters, stop) = (progress.clone(), counters.clone(), stop_ticker.clone());
        tokio::spawn(async move {
            loop {
                let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
                let confirmed = c(&counters.confirmed).saturating_sub(probe_confirmed);
                let cancelled = c(&counters.cancelled).saturating_sub(probe_cancelled);
                let errors = c(&counters.errors);
                let open = c(&counters.sent).saturating_sub(confirmed + cancelled + errors);
                progress.set_position(c(&counters.sent));
                progress.set_message(format!(
                    "confirmed {confirmed}  cancelled {cancelled}  errors {errors}  open {open}"
                ));
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        })
    };

    let mut sender = Sender {
        http: http.clone(),
        api: api.clone(),
        tag: tag.clone(),
        method: args.payment_method.clone(),
        tracker: tracker.clone(),
        counters: counters.clone(),
        next: 1,
    };
    let mut pacer = Pacer::new(args.max_in_flight);
    let idle = if args.idle_s > 0 {
        progress.set_prefix("idle baseline");
        let from = cpu::sample(&watched);
        tokio::time::sleep(Duration::from_secs(args.idle_s)).await;
        Some(cpu::between(&watched, &from, &cpu::sample(&watched)))
    } else {
        None
    };
    pacer.warm_up(&mut sender, warmup, &progress).await;
    progress.set_prefix("measuring");
    let before = cpu::sample(&watched);
    let open_loop::Measured {
        t0,
        last_due,
        steps_run,
        ramp_stopped_early,
    } = pacer
        .measure(&mut sender, &steps, args.ramp, |step| {
            // A ramp stops once Keel no longer keeps up: more than 1 % of the orders due in the
            // last step-long window that ended --ramp-stop-ms ago were not confirmed within it.
            let (judged, bad, stop) = open_loop::ramp_check(
                lock(&tracker)
                    .orders
                    .iter()
                    .filter(|r| r.step.is_some())
                    .map(OrderRec::sample),
                args.ramp_stop_ms,
                step.seconds,
                Instant::now(),
            );
            say(
                &progress,
                format!(
                    "[bench] after {:.0} orders/s: {bad} of {judged} orders due {}–{} s ago not \
                     confirmed within {} ms{}",
                    step.rate,
                    args.ramp_stop_ms / 1000 + step.seconds,
                    args.ramp_stop_ms / 1000,
                    args.ramp_stop_ms,
                    if stop { "; stopping the ramp" } else { "" }
                ),
            );
            stop
        })
        .await;
    let mut tasks = pacer.into_tasks();

    // Drain: wait for every order to settle, or the drain timeout.
    progress.set_prefix("draining");
    progress.set_message("waiting for the open orders to settle");
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain_timeout_s);
    loop {
        let open = lock(&tracker)
            .orders
            .iter()
            .filter(|r| !r.settled())
            .count();
        if open == 0 || Instant::now() >= drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = cpu::sample(&watched);
    tasks.abort_all();
    stop_ticker.cancel();
    let _ = ticker.await;
    progress.finish_and_clear();
    stop_reader.cancel();
    let _ = reader.await;

    let t = lock(&tracker);
    let cpu_report = cpu::between(&watched, &before, &after);
    let result = summarize(
        &t.orders,
        Summary {
            started_at: started_at.to_rfc3339(),
            api: api.clone(),
            prefix: config.topics.prefix.clone(),
            status_topic: status_topic.clone(),
            args,
            steps: &steps_run,
            t0,
            last_due,
            cpu: cpu_report,
            cpu_idle: idle,
            ramp_stopped_early,
        },
    );
    drop(t);

    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    let stamp = started_at.format("%Y%m%dT%H%M%SZ");
    let json_path = args.out_dir.join(format!("checkout-{stamp}-{tag}.json"));
    let svg_path = args.out_dir.join(format!("checkout-{stamp}-{tag}.svg"));
    let mut result = result;
    result.chart = svg_path.display().to_string();
    chart(&result, &svg_path, args.p99_limit_ms)?;
    std::fs::write(&json_path, serde_json::to_vec_pretty(&result)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    Ok(render(&result, &json_path, &svg_path))
}

/// The port of an `http(s)://host[:port]/...` URL (80 / 443 when none is written).
pub(crate) fn url_port(url: &str) -> Option<u16> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host_port = rest.split('/').next()?;
    match host_port.rsplit_once(':') {
        Some((_, p)) => p.parse().ok(),
        None if url.starts_with("https") => Some(443),
        None => Some(80),
    }
}

/// A line above the progress bar, or on stderr when there is no bar.
pub(crate) fn say(progress: &indicatif::ProgressBar, line: String) {
    if progress.is_hidden() {
        eprintln!("{line}");
    } else {
        progress.println(line);
    }
}

/// The orders a [`Pacer`] sends: each `POST /orders`.
struct Sender {
    http: reqwest::Client,
    api: String,
    tag: String,
    method: String,
    tracker: Shared,
    counters: Arc<Counters>,
    /// The next order's index (its cart is `bench-<tag>-<index>`); 0 is the probe.
    next: usize,
}

impl Requests for Sender {
    fn due(&mut self, due: Instant, step: Option<usize>) -> usize {
        let i = self.next;
        self.next += 1;
        lock(&self.tracker).orders.push(OrderRec {
            due,
            step,
            accepted: None,
            order_id: None,
            decided: None,
            confirmed: None,
            cancelled: None,
            rejected: None,
            error: None,
        });
        self.counters.sent.fetch_add(1, Ordering::Relaxed);
        i
    }

    fn refused(&mut self, i: usize) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        lock(&self.tracker).orders[i].error = Some("client: in-flight limit".into());
    }

    fn send(&mut self, i: usize) -> impl Future<Output = ()> + Send + 'static {
        let (http, api, tag, method, tracker, counters) = (
            self.http.clone(),
            self.api.clone(),
            self.tag.clone(),
            self.method.clone(),
            self.tracker.clone(),
            self.counters.clone(),
        );
        async move {
            let cart = format!("bench-{tag}-{i}");
            post_order(&http, &api, &tag, i, &cart, &method, &tracker, &counters).await;
        }
    }
}

/// `POST /orders` for cart `cart`; records the answer in the tracker at index `i`.
#[allow(clippy::too_many_arguments)]
async fn post_order(
    http: &reqwest::Client,
    api: &str,
    tag: &str,
    i: usize,
    cart: &str,
    method: &str,
    tracker: &Shared,
    counters: &Counters,
) {
    let answer = http
        .post(format!("{api}/orders"))
        .header("Idempotency-Key", format!("bench-{tag}-{i}"))
        .json(&json!({
            "cartId": cart,
            "paymentMethod": method,
            "shippingAddress": {
                "name": "Bench Customer", "line1": "1 Load Street", "city": "Berlin",
                "postalCode": "10115", "country": "DE"
            }
        }))
        .send()
        .await;
    let at = Instant::now();
    let outcome = match answer {
        Ok(r) if r.status().as_u16() == 202 => match r.json::<serde_json::Value>().await {
            Ok(body) => body["orderId"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| "202 without an orderId".to_owned()),
            Err(e) => Err(format!("202 with an unreadable body: {e}")),
        },
        Ok(r) => Err(format!("http {}", r.status().as_u16())),
        Err(e) if e.is_timeout() => Err("timeout".to_owned()),
        Err(e) if e.is_connect() => Err("connect".to_owned()),
        Err(e) => Err(format!("request: {e}")),
    };
    let mut t = lock(tracker);
    match outcome {
        Ok(id) => {
            counters.accepted.fetch_add(1, Ordering::Relaxed);
            t.accepted(i, id, at, counters);
        }
        Err(e) => {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            t.orders[i].error = Some(e);
        }
    }
}

/// `count` carts `bench-<tag>-<i>` (i from 0; the probe's is `bench-<tag>-probe`), one line of
/// one SKU each, in multi-row inserts of 500 carts per transaction.
async fn seed_carts(
    config: &KeelConfig,
    tag: &str,
    skus: &[String],
    count: u64,
    quiet: bool,
) -> anyhow::Result<()> {
    let pool = crate::run::orders_pool(config).await?;
    let mut ids: Vec<String> = (0..count).map(|i| format!("bench-{tag}-{i}")).collect();
    ids.push(format!("bench-{tag}-probe"));
    let progress = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(ids.len() as u64)
    };
    progress.set_style(indicatif::ProgressStyle::with_template(
        "seeding carts {bar:30} {pos}/{len}",
    )?);
    let chunks: Vec<Vec<(usize, String)>> = ids
        .into_iter()
        .enumerate()
        .collect::<Vec<_>>()
        .chunks(500)
        .map(<[(usize, String)]>::to_vec)
        .collect();
    use futures::StreamExt as _;
    let mut writes = futures::stream::iter(chunks.into_iter().map(|chunk| {
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin().await?;
            let mut carts = sqlx::QueryBuilder::<sqlx::MySql>::new(
                "INSERT INTO carts (cart_id, customer_id, currency, status, updated_at) ",
            );
            carts.push_values(&chunk, |mut b, (_, id)| {
                b.push_bind(id.as_str())
                    .push_bind("bench-customer")
                    .push_bind("EUR")
                    .push_bind("OPEN")
                    .push("UTC_TIMESTAMP(3)");
            });
            carts.build().execute(&mut *tx).await?;
            let mut items = sqlx::QueryBuilder::<sqlx::MySql>::new(
                "INSERT INTO cart_items (cart_id, sku, quantity, unit_price_minor) ",
            );
            items.push_values(&chunk, |mut b, (i, id)| {
                b.push_bind(id.as_str())
                    .push_bind(skus[i % skus.len()].as_str())
                    .push_bind(1i32)
                    .push_bind(1250i64);
            });
            items.build().execute(&mut *tx).await?;
            tx.commit().await?;
            Ok::<usize, sqlx::Error>(chunk.len())
        }
    }))
    .buffer_unordered(4);
    while let Some(n) = writes.next().await {
        progress.inc(n.context("seeding carts in MariaDB")? as u64);
    }
    progress.finish_and_clear();
    pool.close().await;
    Ok(())
}

/// Waits until `GET /inventory/{sku}` shows at least `quantity` on hand for every SKU.
async fn wait_for_stock(
    http: &reqwest::Client,
    api: &str,
    skus: &[String],
    quantity: i32,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    for sku in skus {
        loop {
            let on_hand = match http.get(format!("{api}/inventory/{sku}")).send().await {
                Ok(r) if r.status().is_success() => r
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|v| v["onHand"].as_i64()),
                _ => None,
            };
            if on_hand.is_some_and(|n| n >= i64::from(quantity)) {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the stock of {sku} did not show on GET /inventory/{sku} within 120 s \
                 (last: {on_hand:?})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Reads `order.status.changed` and `order.decisions.v1` from their current ends until `stop`.
fn start_reader(
    config: &KeelConfig,
    tag: &str,
    status_topic: &str,
    decisions_topic: &str,
    tracker: Shared,
    counters: Arc<Counters>,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let consumer = open_loop::consumer_at_ends(
        config,
        &format!("keel-bench-checkout-{tag}"),
        &[status_topic, decisions_topic],
        "`keel run`",
    )?;
    let codec = Codec::new(config.registry.clone())?;
    let (status_topic, decisions_topic) = (status_topic.to_owned(), decisions_topic.to_owned());
    Ok(tokio::spawn(async move {
        while let Some((m, at)) =
            open_loop::next_message(&consumer, &stop, "reading the status events").await
        {
            let Some(payload) = m.payload() else { continue };
            let decoded = if m.topic() == status_topic {
                codec
                    .decode_from::<OrderStatusChanged>(&status_topic, payload)
                    .await
                    .map(|e| (e.order_id, Event::Status(e.to_status, e.reason)))
            } else if m.topic() == decisions_topic {
                codec
                    .decode_from::<OrderDecision>(&decisions_topic, payload)
                    .await
                    .map(|d| (d.order_id, Event::Decision(d.status, d.reason)))
            } else {
                continue;
            };
            match decoded {
                Ok((order_id, event)) => lock(&tracker).observe(&order_id, event, at, &counters),
                Err(e) => tracing::warn!(error = %e, topic = m.topic(), "undecodable event"),
            }
        }
    }))
}

struct Summary<'a> {
    started_at: String,
    api: String,
    prefix: String,
    status_topic: String,
    args: &'a CheckoutArgs,
    steps: &'a [Step],
    t0: Instant,
    last_due: Instant,
    cpu: cpu::CpuReport,
    cpu_idle: Option<cpu::CpuReport>,
    ramp_stopped_early: bool,
}

/// `d` in whole microseconds (saturating).
pub(crate) fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Everything the result says, from the orders' records (the probe excluded).
fn summarize(orders: &[OrderRec], s: Summary<'_>) -> CheckoutResult {
    let measured: Vec<&OrderRec> = orders.iter().filter(|o| o.step.is_some()).collect();
    let mut compensations = BTreeMap::new();
    let mut rejections = BTreeMap::new();
    let mut errors = BTreeMap::new();
    for o in &measured {
        if let Some(r) = &o.cancelled {
            *compensations.entry(r.clone()).or_insert(0) += 1;
        }
        if let Some(r) = &o.rejected {
            *rejections.entry(r.clone()).or_insert(0) += 1;
        }
        if let Some(e) = &o.error {
            *errors.entry(e.clone()).or_insert(0) += 1;
        } else if !o.settled() {
            *errors
                .entry("unsettled after the drain".to_owned())
                .or_insert(0) += 1;
        }
    }
    let confirmed: Vec<&&OrderRec> = measured.iter().filter(|o| o.confirmed.is_some()).collect();
    let lat = |o: &&&OrderRec| o.sample().latency_us();
    let last_confirm = confirmed.iter().filter_map(|o| o.confirmed).max();
    let confirmed_per_second = last_confirm.map_or(0.0, |l| {
        confirmed.len() as f64 / l.saturating_duration_since(s.t0).as_secs_f64().max(1e-3)
    });
    let steps: Vec<StepResult> = s
        .steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let in_step: Vec<&&OrderRec> = measured.iter().filter(|o| o.step == Some(i)).collect();
            let f = open_loop::step_figures(
                in_step.iter().map(|o| o.sample()),
                s.args.p99_limit_ms,
                s.args.ramp_stop_ms,
            );
            StepResult {
                rate: step.rate,
                seconds: step.seconds,
                due: f.due,
                confirmed: f.done,
                cancelled: in_step.iter().filter(|o| o.cancelled.is_some()).count() as u64,
                errors: in_step.iter().filter(|o| o.error.is_some()).count() as u64,
                unsettled: in_step.iter().filter(|o| !o.settled()).count() as u64,
                sustained: f.sustained,
                kept_up: f.kept_up,
                confirmed_latency: f.latency,
            }
        })
        .collect();
    let (saturation_rate, p99_within_limit_rate) = open_loop::ramp_rates(
        s.args.ramp,
        steps.iter().map(|st| (st.rate, st.kept_up, st.sustained)),
    );
    // Per second, by due time.
    let seconds = open_loop::per_second(measured.iter().map(|o| o.sample()), s.t0);
    let busiest = s
        .cpu
        .processes
        .iter()
        .find(|p| !p.name.starts_with("keel bench"))
        .map(|p| p.name.clone());
    let machine_saturated = s.cpu.machine_busy_percent.is_some_and(|b| b >= 90.0);
    CheckoutResult {
        started_at: s.started_at,
        api: s.api,
        topic_prefix: s.prefix,
        confirmed_on: s.status_topic,
        machine: machine(),
        mode: if s.args.ramp { "ramp" } else { "fixed" }.to_owned(),
        schedule: s.steps.iter().map(|st| (st.rate, st.seconds)).collect(),
        skus: s.args.skus,
        payment_method: s.args.payment_method.clone(),
        due: measured.len() as u64,
        accepted: measured.iter().filter(|o| o.accepted.is_some()).count() as u64,
        confirmed: confirmed.len() as u64,
        cancelled: measured.iter().filter(|o| o.cancelled.is_some()).count() as u64,
        rejected: measured.iter().filter(|o| o.rejected.is_some()).count() as u64,
        compensations,
        rejections,
        errors,
        send_seconds: s.last_due.saturating_duration_since(s.t0).as_secs_f64(),
        confirmed_per_second,
        latency: latency(confirmed.iter().filter_map(lat)),
        decided_latency: latency(
            measured
                .iter()
                .filter_map(|o| o.decided.map(|d| us(d.saturating_duration_since(o.due)))),
        ),
        post_latency: latency(
            measured
                .iter()
                .filter_map(|o| o.accepted.map(|a| us(a.saturating_duration_since(o.due)))),
        ),
        cpu: s.cpu,
        cpu_idle: s.cpu_idle,
        busiest,
        machine_saturated,
        steps,
        saturation_rate,
        p99_within_limit_rate,
        ramp_stopped_early: s.ramp_stopped_early,
        seconds,
        chart: String::new(),
    }
}

/// Latency over time (by the second orders were due): p50, p99 and max, and the p99 limit.
fn chart(r: &CheckoutResult, path: &std::path::Path, limit_ms: u64) -> anyhow::Result<()> {
    let title = if r.mode == "ramp" {
        format!(
            "keel bench checkout --ramp: POST → CONFIRMED (kept up to {})",
            r.saturation_rate
                .map_or_else(|| "none".to_owned(), |s| format!("{s:.0} orders/s"))
        )
    } else {
        format!(
            "keel bench checkout at {:.0} orders/s: POST → CONFIRMED",
            r.schedule.first().map_or(0.0, |s| s.0)
        )
    };
    latency_chart(
        path,
        &ChartText {
            title,
            x_desc: "seconds since the first order was due (orders by the second they were due)",
            rate_desc: "orders / s",
            done: "CONFIRMED",
        },
        &r.seconds,
        limit_ms,
    )
}

/// The words of a [`latency_chart`].
pub(crate) struct ChartText {
    pub(crate) title: String,
    /// The x axis.
    pub(crate) x_desc: &'static str,
    /// The y axis of the lower panel (what is due per second).
    pub(crate) rate_desc: &'static str,
    /// The lower panel's completion series (`Second::confirmed_arrived`).
    pub(crate) done: &'static str,
}

/// An SVG at `path`: above, latency over time (by the second the work was due: p50, p99, max
/// and the p99 limit); below, what was due and what completed per second.
pub(crate) fn latency_chart(
    path: &std::path::Path,
    text: &ChartText,
    seconds: &[Second],
    limit_ms: u64,
) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Debug| anyhow::anyhow!("drawing {}: {e:?}", path.display());
    let x_max = (seconds.len().max(2)) as f64;
    let y_max = seconds
        .iter()
        .map(|s| s.max_ms)
        .fold(limit_ms as f64 * 1.2, f64::max)
        * 1.05;
    let root = SVGBackend::new(path, (1100, 860)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(600);
    let mut c = ChartBuilder::on(&top)
        .caption(&text.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|e| err(&e))?;
    c.configure_mesh()
        .x_desc(text.x_desc)
        .y_desc("latency, ms")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| err(&e))?;
    let with_orders: Vec<&Second> = seconds.iter().filter(|s| s.confirmed > 0).collect();
    type Pick = fn(&Second) -> f64;
    let series: [(&str, RGBColor, Pick); 3] = [
        // Drawn max first so that p99 and p50 stay visible where they meet it.
        ("max", RGBColor(150, 150, 150), |s| s.max_ms),
        ("p99", RGBColor(210, 40, 40), |s| s.p99_ms),
        ("p50", RGBColor(30, 90, 200), |s| s.p50_ms),
    ];
    for (name, color, pick) in series {
        c.draw_series(LineSeries::new(
            with_orders.iter().map(|s| (s.t as f64 + 0.5, pick(s))),
            color.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label(name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    let limit = limit_ms as f64;
    c.draw_series(LineSeries::new(
        [(0.0, limit), (x_max, limit)],
        RGBColor(0, 150, 0).stroke_width(1),
    ))
    .map_err(|e| err(&e))?
    .label(format!("p99 limit {limit_ms} ms"))
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RGBColor(0, 150, 0)));
    c.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| err(&e))?;

    // Below: orders due and CONFIRMED events per second (where they part, Keel falls behind).
    let rate_max = seconds
        .iter()
        .map(|s| s.due.max(s.confirmed_arrived))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.15;
    let mut t = ChartBuilder::on(&bottom)
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..rate_max)
        .map_err(|e| err(&e))?;
    t.configure_mesh()
        .y_desc(text.rate_desc)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| err(&e))?;
    type Count = fn(&Second) -> u64;
    let rates: [(&str, RGBColor, Count); 2] = [
        ("due", RGBColor(150, 150, 150), |s| s.due),
        (text.done, RGBColor(0, 130, 60), |s| s.confirmed_arrived),
    ];
    for (name, color, pick) in rates {
        t.draw_series(LineSeries::new(
            seconds.iter().map(|s| (s.t as f64 + 0.5, pick(s) as f64)),
            color.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label(name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    t.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// The summary for people.
fn render(r: &CheckoutResult, json: &std::path::Path, svg: &std::path::Path) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut row = |k: &str, v: String| {
        let _ = writeln!(out, "{k:<40} {v}");
    };
    row(
        "machine",
        format!(
            "{} cores ({}), {} MiB",
            r.machine.nproc, r.machine.cpu_model, r.machine.memory_mib
        ),
    );
    row(
        "schedule (orders/s x s)",
        open_loop::schedule_text(&r.schedule),
    );
    row(
        "due / accepted / confirmed",
        format!("{} / {} / {}", r.due, r.accepted, r.confirmed),
    );
    row(
        "cancelled (compensations)",
        format!("{} {:?}", r.cancelled, r.compensations),
    );
    row("rejected", format!("{} {:?}", r.rejected, r.rejections));
    row(
        "errors",
        format!("{} {:?}", r.errors.values().sum::<u64>(), r.errors),
    );
    row(
        "confirmed throughput",
        format!(
            "{:.1} orders/s (first due → last CONFIRMED)",
            r.confirmed_per_second
        ),
    );
    let l = |x: &Latency| {
        format!(
            "p50 {:.0} / p90 {:.0} / p99 {:.0} / p99.9 {:.0} / max {:.0} ms ({} orders)",
            x.p50_ms, x.p90_ms, x.p99_ms, x.p999_ms, x.max_ms, x.count
        )
    };
    row("POST → CONFIRMED (order.status.changed)", l(&r.latency));
    row("POST → decided (order.decisions.v1)", l(&r.decided_latency));
    row("POST → 202", l(&r.post_latency));
    open_loop::step_rows(
        &mut row,
        "orders",
        "confirmed",
        0,
        r.steps.iter().map(|st| open_loop::StepLine {
            rate: st.rate,
            seconds: st.seconds,
            done: st.confirmed,
            due: st.due,
            latency: &st.confirmed_latency,
            sustained: st.sustained,
            kept_up: st.kept_up,
        }),
    );
    open_loop::ramp_rows(
        &mut row,
        r.mode == "ramp",
        "orders",
        r.saturation_rate,
        r.p99_within_limit_rate,
    );
    open_loop::cpu_rows(&mut row, &r.cpu, r.cpu_idle.as_ref());
    row(
        "busiest process",
        format!(
            "{}{}",
            r.busiest.clone().unwrap_or_default(),
            if r.machine_saturated {
                " (the machine's cores were ≥ 90 % busy)"
            } else {
                ""
            }
        ),
    );
    row("result", json.display().to_string());
    row("chart", svg.display().to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_before_the_post_answer_are_applied_when_it_arrives() {
        let counters = Counters::default();
        let mut t = Tracker::default();
        let due = Instant::now();
        t.orders.push(OrderRec {
            due,
            step: Some(0),
            accepted: None,
            order_id: None,
            decided: None,
            confirmed: None,
            cancelled: None,
            rejected: None,
            error: None,
        });
        let later = due + Duration::from_millis(40);
        t.observe(
            "o-1",
            Event::Status(OrderStatus::Confirmed, None),
            later,
            &counters,
        );
        assert!(t.orders[0].confirmed.is_none());
        t.accepted(0, "o-1".into(), due + Duration::from_millis(50), &counters);
        assert_eq!(t.orders[0].confirmed, Some(later));
        assert_eq!(counters.confirmed.load(Ordering::Relaxed), 1);
        // A duplicate event counts once.
        t.observe(
            "o-1",
            Event::Status(OrderStatus::Confirmed, None),
            later,
            &counters,
        );
        assert_eq!(counters.confirmed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_ramp_is_steps_of_rising_rate_up_to_the_maximum() {
        let args = CheckoutArgs {
            rate: 1.0,
            duration_s: 1,
            ramp: true,
            ramp_start: 100.0,
            ramp_step: 200.0,
            ramp_step_s: 10,
            ramp_max: 500.0,
            p99_limit_ms: 1000,
            ramp_stop_ms: 10_000,
            skus: 1,
            payment_method: "tok_visa".into(),
            api: None,
            out_dir: ".".into(),
            drain_timeout_s: 1,
            max_in_flight: 1,
            keel_pid: None,
            no_progress: true,
            warmup_s: 0,
            idle_s: 0,
        };
        let rates: Vec<f64> = schedule(&args).iter().map(|s| s.rate).collect();
        assert_eq!(rates, vec![100.0, 300.0, 500.0]);
        assert_eq!(schedule(&args)[0].orders(), 1000);
    }

    #[test]
    fn percentiles_come_from_the_recorded_microseconds() {
        let l = latency((1..=1000).map(|ms| ms * 1000));
        assert_eq!(l.count, 1000);
        assert!((l.p50_ms - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99_ms - 990.0).abs() < 2.0, "{l:?}");
        assert!((l.max_ms - 1000.0).abs() < 1.0, "{l:?}");
    }

    #[test]
    fn ports_are_read_from_urls() {
        assert_eq!(url_port("http://127.0.0.1:8088"), Some(8088));
        assert_eq!(url_port("http://127.0.0.1:8090/x"), Some(8090));
        assert_eq!(url_port("http://localhost"), Some(80));
    }
}
