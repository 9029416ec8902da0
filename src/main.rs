//! `keel`: the one command that wires Keel's crates together.
//!
//! - `keel run [--roles api,saga,inventory,payment,sinks]` hosts Keel's roles (all by default).
//! - `keel psp-mock` serves the PSP mock the payment service talks to.
//! - `keel carts seed` / `keel inventory seed` load demo and test data.
//! - `keel order <id>` shows an order and its timeline with Kafka coordinates.
//! - `keel lag [--once] [--json] [--all | --group <name>...]` shows consumer-group lag per
//!   partition.
//! - `keel stack up|down|status|reload|logs|env|install|kafka-tool` drives the local servers
//!   (`stack/keel-stack`; `reload` re-reads configuration in place, e.g. Prometheus' scrape list).
//! - `keel smoke` checks every server of the stack with the real clients Keel uses.
//! - `keel connectors plugins|list|register|status|pause|resume|restart|delete` manages Keel's
//!   Debezium connectors (`src/connectors.rs`).
//! - `keel bench engine [--vs kafka-streams]` measures the stream runtime, `keel bench
//!   checkout` the whole checkout and `keel bench inventory` the inventory service alone
//!   (docs/BENCHMARKS.md).
//! - `keel reset --application-id X [--to-datetime T]` rewinds a stopped application.
//! - `keel audit [--json]` prints the verdict on each invariant; exit 1 on a violation
//!   (`src/audit.rs`).
//! - `keel schemas register|check` registers Keel's Avro schemas and gates deployments on their
//!   compatibility with what the registry holds.

// A command-line tool: printing to stdout is its job.
#![allow(clippy::print_stdout)]

mod admin;
mod audit;
mod bench;
mod config;
mod connector_watch;
mod connectors;
mod lag;
mod lag_metrics;
mod outbox_cleanup;
mod reconciliation;
mod run;
mod scenario;
mod scenario_oversell;
mod scenario_reconciliation;
mod scenario_schema_drift;
mod seed;
mod smoke;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::KeelConfig;

/// jemalloc as the process's allocator, for Rust and (feature
/// `unprefixed_malloc_on_supported_platforms`) for the C/C++ of librdkafka and RocksDB too.
/// See [`return_freed_memory`] for why and the measured figures.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// How long jemalloc keeps freed pages for reuse before it hands them back to the OS, in ms
/// (its `dirty_decay_ms`; jemalloc's own default is 10,000).
///
/// 0 (every page back at once, the setting until 2026-11-30) made the stream thread fault each
/// fetch's and each commit's buffers in again (page faults and the TLB-shootdown IPIs of the
/// unmapping were most of the ~10 % of its time it spent in the kernel in the engine bench).
/// 200 ms keeps about two commit intervals' worth of freed pages. `keel bench engine`,
/// three alternated runs each, quiet (docs/BENCHMARKS.md): 0 → 365–371k records/s, RSS 61–62 MiB
/// after the backlog and 55–56 after the restore; 200 → 393–412k, 71–80 and 77–85 MiB; 500 →
/// 93–99 and 95–115 MiB; 1,000 → 90–100 and 121–136 MiB.
const DIRTY_DECAY_MS: isize = 200;

/// Makes jemalloc hand freed pages back to the OS after [`DIRTY_DECAY_MS`] (every arena)
/// instead of keeping them 10 s, unless `MALLOC_CONF` is set (jemalloc read that string at start
/// and it wins, e.g. `background_thread:true,dirty_decay_ms:1000`).
///
/// Why (issue 14, ≤ 150 MB RSS with 1M keys): glibc's per-thread arenas kept what librdkafka's
/// and RocksDB's threads freed. `keel bench engine --latency-seconds 3`, release, glibc → this,
/// 4 alternating pairs on a quiet machine (docs/BENCHMARKS.md): RSS after the backlog 110–122 →
/// 55–56 MiB, after the restore 146–188 → 56–57 MiB; backlog 235–263k → 286–308k records/s;
/// restore 1.29–1.44M → 1.29–1.35M records/s (pages freed and faulted in again: the one cost;
/// contended, 16 pairs: median 1.15M → 0.98M). jemalloc's 10 s default alone left 134–196 MiB
/// after the restore.
fn return_freed_memory() {
    use tikv_jemalloc_ctl::{Access, AsName};
    if std::env::var_os("MALLOC_CONF").is_some() {
        return;
    }
    // Arenas created from now on (lazily, as threads first allocate; at most 4 per core)...
    if let Err(e) = "arenas.dirty_decay_ms\0".name().write(DIRTY_DECAY_MS) {
        tracing::warn!(error = %e, "could not set jemalloc's dirty_decay_ms");
        return;
    }
    // ...and those already in use (the ones not yet created answer an error: nothing to set).
    for i in 0..tikv_jemalloc_ctl::arenas::narenas::read().unwrap_or(0) {
        let _unused = format!("arena.{i}.dirty_decay_ms\0")
            .as_str()
            .name()
            .write(DIRTY_DECAY_MS);
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "keel",
    version,
    about = "Keel: the checkout saga on Kafka, exactly once"
)]
struct Cli {
    /// A TOML file layered over the built-in defaults (then KEEL__SECTION__KEY variables).
    #[arg(long, global = true, env = "KEEL_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run Keel: the ingest API and every processor in one process by default, or the roles
    /// named (api, saga, inventory, payment, sinks, relay, reconciliation, audit). SIGTERM drains
    /// and commits.
    Run {
        /// Comma-separated roles; default: all but reconciliation (it registers a connector) and
        /// audit.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<run::Role>,
    },
    /// Serve the PSP mock (authorize, capture, void, refund; rules by payment-method token and
    /// a seeded random mix). Settings: the `[psp_mock]` section.
    PspMock,
    /// One order as the order store has it: status, lines, total, and its timeline — each
    /// decision with the topic, partition and offset of the record that caused it.
    Order {
        id: String,
        /// Print the order as JSON (the shape of `GET /orders/{id}`).
        #[arg(long)]
        json: bool,
    },
    /// Consumer-group lag per partition of this configuration's groups and Kafka Connect's,
    /// refreshed in place (`--once` to print once, `--json` for scripts).
    Lag {
        #[arg(long)]
        once: bool,
        #[arg(long)]
        json: bool,
        /// Every consumer group of the cluster, not only this configuration's.
        #[arg(long, conflicts_with = "group")]
        all: bool,
        /// Only this group (repeatable).
        #[arg(long = "group", value_name = "NAME")]
        group: Vec<String>,
        /// Refresh interval in seconds.
        #[arg(long, default_value_t = 2)]
        interval: u64,
    },
    /// Carts of the cart service (MySQL `carts`, `cart_items`).
    Carts {
        #[command(subcommand)]
        action: CartsAction,
    },
    /// Stock of the inventory service.
    Inventory {
        #[command(subcommand)]
        action: InventoryAction,
    },
    /// Run the local stack without Docker: up, down, status, reload, logs <server>, env, install,
    /// kafka-tool <class>.
    Stack {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Check every server of the stack with real clients and print what was verified.
    Smoke,
    /// Manage Debezium connectors on Kafka Connect.
    Connectors {
        #[command(subcommand)]
        action: connectors::ConnectorsAction,
    },
    /// Keel's Avro schemas and the schema registry.
    Schemas {
        #[command(subcommand)]
        action: SchemasAction,
    },
    /// Benchmarks against the local stack (results belong in docs/BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// Rewind a stopped application so that its next start replays its input: input offsets
    /// to the beginning (or a time), internal topics deleted, local state removed.
    Reset(ResetArgs),
    /// Run a scenario against a running Keel and the stack (checkout-success, psp-timeout,
    /// inventory-shortage, oversell, schema-drift, reconciliation-lag; docs/scenarios.md):
    /// drive it through public interfaces, observe every store, report PASS/FAIL per
    /// expectation; exit 1 when any fails.
    Scenario(scenario::ScenarioArgs),
    /// The verdict on each of Keel's invariants (OK, or VIOLATED with a count and examples),
    /// from the auditor's topic and the stores; exit 1 when any is violated, 2 when the
    /// verdicts could not be read (a script can tell the two apart).
    Audit(audit::AuditArgs),
}

#[derive(Debug, Subcommand)]
enum CartsAction {
    /// Create or replace an open cart.
    Seed {
        #[arg(long)]
        cart_id: String,
        #[arg(long, default_value = "customer-1")]
        customer_id: String,
        /// ISO 4217 code of every price.
        #[arg(long, default_value = "EUR")]
        currency: String,
        /// SKU:QUANTITY:UNIT_PRICE_MINOR, e.g. MUG-1:2:1250; repeat for more lines.
        #[arg(long = "item", required = true)]
        items: Vec<seed::ItemArg>,
    },
}

#[derive(Debug, Subcommand)]
enum InventoryAction {
    /// Add stock on hand: one AdjustStock command per SKU on inventory.commands.v1.
    Seed {
        /// Comma-separated SKUs.
        #[arg(long, value_delimiter = ',', required = true)]
        skus: Vec<String>,
        /// Units to add to each.
        #[arg(long, default_value_t = 100)]
        quantity: i32,
        #[arg(long, default_value = "seed")]
        reason: String,
        /// The warehouse the stock is in (absent: the default warehouse).
        #[arg(long)]
        warehouse: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum BenchWhat {
    /// The stream runtime: throughput, produce-to-visible latency, restore speed, memory.
    Engine(bench::EngineArgs),
    /// The whole checkout against a running `keel run` and `keel psp-mock`: an open-loop
    /// load of POST /orders, latency to the CONFIRMED event, CPU per server; JSON + SVG.
    Checkout(bench::checkout::CheckoutArgs),
    /// The inventory service alone: an isolated `keel run --roles inventory,sinks` driven with
    /// reserve / confirm / release commands at a fixed rate or a ramp (hot SKU optional);
    /// latency to the reply event, throughput, shortages, stock and holds checked; JSON + SVG.
    Inventory(bench::inventory::InventoryArgs),
}

#[derive(Debug, clap::Args)]
struct ResetArgs {
    /// The application (consumer group, internal topic prefix, state subdirectory).
    #[arg(long)]
    application_id: String,
    /// The application's input topics, comma-separated (default: every topic its group has
    /// committed offsets for).
    #[arg(long, value_delimiter = ',')]
    input_topics: Vec<String>,
    /// Rewind to the first record at or after this RFC 3339 time instead of the beginning.
    #[arg(long, value_parser = parse_datetime)]
    to_datetime: Option<i64>,
    /// The application's state.dir; its `<application-id>/` directory is removed.
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

fn parse_datetime(s: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("{s:?} is not an RFC 3339 time such as 2026-11-26T09:00:00Z: {e}"))
}

#[derive(Debug, Subcommand)]
enum SchemasAction {
    /// Register every local schema under `<topic>-value` and set the subject's compatibility
    /// level (`registry.compatibility`, BACKWARD by default). A call the registry fails
    /// (unreachable, no answer within `registry.timeout_ms`, HTTP 5xx) is made up to 4 times,
    /// 0.5, 1 and 2 s apart; every call is idempotent.
    Register,
    /// Ask the registry whether each local schema is compatible with the subject's latest
    /// version; print subject / local version / verdict and exit 1 on any incompatibility.
    Check,
}

/// Where the stack script lives: next to the binary's sources, or `KEEL_STACK_SCRIPT`.
fn stack_script() -> PathBuf {
    std::env::var_os("KEEL_STACK_SCRIPT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/stack/keel-stack")))
}

fn run_stack(args: &[String]) -> anyhow::Result<ExitCode> {
    let script = stack_script();
    let status = std::process::Command::new(&script)
        .args(args)
        .status()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", script.display()))?;
    Ok(ExitCode::from(
        status.code().unwrap_or(1).clamp(0, 255) as u8
    ))
}

async fn run_schemas(config: &KeelConfig, action: SchemasAction) -> anyhow::Result<ExitCode> {
    match action {
        SchemasAction::Register => {
            let registered =
                keel_avro::registry::register_all_topics(&config.registry, &config.topics.prefix)
                    .await?;
            print!("{}", keel_avro::render_registered_table(&registered));
            Ok(ExitCode::SUCCESS)
        }
        SchemasAction::Check => {
            let rows =
                keel_avro::registry::check_all_topics(&config.registry, &config.topics.prefix)
                    .await?;
            print!("{}", keel_avro::render_check_table(&rows));
            if keel_avro::any_incompatible(&rows) {
                eprintln!("keel schemas check: incompatible schemas; do not deploy");
                Ok(ExitCode::FAILURE)
            } else if keel_avro::registry::any_drift(&rows) {
                eprintln!(
                    "keel schemas check: a subject's latest version is not Keel's schema (DRIFT); \
                     another producer registered it"
                );
                Ok(ExitCode::FAILURE)
            } else {
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// An order and its timeline as a table for people.
fn render_order(order: &keel_processors::orders::OrderView) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let reason = order
        .reason
        .as_deref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    let _ = writeln!(out, "order {}  {}{reason}", order.order_id, order.status);
    let _ = writeln!(
        out,
        "total {} {} (minor units), cart {}, customer {}",
        order.total.amount_minor, order.total.currency, order.cart_id, order.customer_id
    );
    for item in &order.items {
        let _ = writeln!(
            out,
            "  {:>3} x {:<20} at {} {}",
            item.quantity, item.sku, item.unit_price.amount_minor, item.unit_price.currency
        );
    }
    let _ = writeln!(
        out,
        "{:<25} {:<10} {:<20} caused by (topic/partition@offset)",
        "time", "status", "reason"
    );
    for e in &order.timeline {
        let cause = if e.offset < 0 {
            format!("{} (timer, partition {})", e.topic, e.partition)
        } else {
            format!("{}/{}@{}", e.topic, e.partition, e.offset)
        };
        let _ = writeln!(
            out,
            "{:<25} {:<10} {:<20} {cause}",
            e.time,
            e.status,
            e.reason.as_deref().unwrap_or("-")
        );
    }
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,keel=info".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: `keel run 2>keel.log` (the README) is a plain text file.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    return_freed_memory();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { roles } => {
            let config = KeelConfig::load(cli.config.as_deref())?;
            let roles = if roles.is_empty() {
                run::Role::DEFAULT.into_iter().collect()
            } else {
                roles.into_iter().collect()
            };
            run::run(config, roles).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::PspMock => {
            let config = KeelConfig::load(cli.config.as_deref())?;
            let mock = keel_processors::psp_mock::PspMock::bind(config.psp_mock).await?;
            eprintln!("keel psp-mock: listening on {}", mock.local_addr());
            let shutdown = tokio_util::sync::CancellationToken::new();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                use tokio::signal::unix::{SignalKind, signal};
                if let (Ok(mut term), Ok(mut int)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                ) {
                    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
                }
                stop.cancel();
            });
            mock.run(shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Lag {
            once,
            json,
            all,
            group,
            interval,
        } => {
            let config = KeelConfig::load(cli.config.as_deref())?;
            let selection = if all {
                lag::Selection::All
            } else if group.is_empty() {
                lag::Selection::Keel
            } else {
                lag::Selection::Groups(group)
            };
            tokio::task::spawn_blocking(move || {
                lag::run(
                    &config,
                    &selection,
                    once,
                    json,
                    std::time::Duration::from_secs(interval.max(1)),
                )
            })
            .await??;
            Ok(ExitCode::SUCCESS)
        }
        Command::Order { id, json } => {
            let config = KeelConfig::load(cli.config.as_deref())?;
            let pool = run::orders_pool(&config).await?;
            let Some(order) = keel_processors::orders::load_order(&pool, &id).await? else {
                eprintln!("keel order: no order {id:?} in the order store");
                return Ok(ExitCode::FAILURE);
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&order)?);
            } else {
                print!("{}", render_order(&order));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Carts {
            action:
                CartsAction::Seed {
                    cart_id,
                    customer_id,
                    currency,
                    items,
                },
        } => {
            let config = KeelConfig::load(cli.config.as_deref())?;
            seed::carts(&config, &cart_id, &customer_id, &currency, &items).await?;
            println!("cart {cart_id} seeded with {} item(s)", items.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Inventory {
            action:
                InventoryAction::Seed {
                    skus,
                    quantity,
                    reason,
                    warehouse,
                },
        } => {
            seed::check_inventory_args(&skus, quantity, &reason, warehouse.as_deref())?;
            let config = KeelConfig::load(cli.config.as_deref())?;
            seed::inventory_in(&config, &skus, quantity, &reason, warehouse.as_deref()).await?;
            println!("{} SKU(s) seeded with {quantity} unit(s) each", skus.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Stack { args } => run_stack(&args),
        Command::Smoke => {
            let config = KeelConfig::load(cli.config.as_deref())?;
            Ok(if smoke::run(&config).await {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Connectors { action } => {
            let config = KeelConfig::load(cli.config.as_deref())?;
            connectors::run(&config, action).await
        }
        Command::Bench {
            what: BenchWhat::Engine(args),
        } => {
            let config = KeelConfig::load(cli.config.as_deref())?;
            let bootstrap = config.kafka.bootstrap_servers.clone();
            let report =
                tokio::task::spawn_blocking(move || bench::engine(&bootstrap, &args)).await??;
            print!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what: BenchWhat::Checkout(args),
        } => {
            let config = KeelConfig::load(cli.config.as_deref())?;
            print!("{}", bench::checkout::run(&config, &args).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what: BenchWhat::Inventory(args),
        } => {
            let config = KeelConfig::load(cli.config.as_deref())?;
            print!(
                "{}",
                bench::inventory::run(&config, cli.config.as_deref(), &args).await?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Reset(args) => {
            let config = KeelConfig::load(cli.config.as_deref())?;
            let options = keel_topology::ResetOptions {
                application_id: args.application_id,
                bootstrap_servers: config.kafka.bootstrap_servers.clone(),
                input_topics: args.input_topics,
                to_timestamp: args.to_datetime,
                state_dir: args.state_dir,
            };
            let report =
                tokio::task::spawn_blocking(move || keel_topology::reset_application(&options))
                    .await??;
            print!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Schemas { action } => {
            let config = KeelConfig::load(cli.config.as_deref())?;
            run_schemas(&config, action).await
        }
        Command::Audit(args) => {
            let config = KeelConfig::load(cli.config.as_deref())?;
            let report = match audit::run(&config, &args).await {
                Ok(report) => report,
                Err(e) => {
                    eprintln!("Error: {e:#}");
                    return Ok(ExitCode::from(2));
                }
            };
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Scenario(args) => {
            let config = KeelConfig::load(cli.config.as_deref())?;
            let report = scenario::run(&config, &args).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            Ok(if report.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
