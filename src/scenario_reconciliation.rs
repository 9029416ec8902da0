//! `keel scenario reconciliation-lag`: the payment ledger's CDC connector is paused for the
//! configured time (default the seed's 5 minutes, `--lag-s` scales it down) while the ledger
//! changes; `keel_cdc_lag_seconds` and the finance view (`GET /finance/reconciliation`) must show
//! the staleness for that time, then catch up once the connector is resumed.
//!
//! Against a RUNNING Keel whose API process hosts the `reconciliation` role (`keel run --roles
//! ...,api,reconciliation`), through public interfaces: the API (`/finance/reconciliation`,
//! `/metrics`), Kafka Connect's REST API (pause, status, resume) and the ledger database, where
//! a probe row is written into the CDC heartbeat table while the connector is paused (a change
//! of a captured table that is not a payment, so the scenario leaves no fake money behind; it
//! is deleted at the end). The connector is resumed whatever happened.
//!
//! Expectations: the finance view is served; the lag is fresh before (under `--fresh-s`); the
//! connector pauses; during the pause the lag reaches `--lag-s`, `asOf` stands still and the
//! probe is not seen; after resume the connector runs, the lag is fresh again and `asOf` passes
//! the probe's commit time.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use keel_connectors::{ConnectClient, ConnectorState};
use serde_json::Value;

use crate::config::KeelConfig;
use crate::scenario::{Progress, Report};

/// `keel scenario reconciliation-lag` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct LagArgs {
    /// reconciliation-lag: how long the ledger connector stays paused, in seconds (the seed's
    /// 5 minutes by default).
    #[arg(long, default_value_t = 300)]
    pub lag_s: u64,
    /// reconciliation-lag: a lag under this many seconds counts as caught up (default: twice
    /// `[reconciliation].heartbeat_interval_ms` plus 5 s).
    #[arg(long)]
    pub fresh_s: Option<f64>,
}

/// `keel_cdc_lag_seconds{connector="…"}` from `/metrics`.
async fn lag(client: &reqwest::Client, api: &str, connector: &str) -> Option<f64> {
    let text = client
        .get(format!("{api}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let label = format!("connector=\"{connector}\"");
    text.lines()
        .filter(|l| l.starts_with("keel_cdc_lag_seconds{") && l.contains(&label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn finance(client: &reqwest::Client, api: &str) -> anyhow::Result<(u16, Value)> {
    let response = client
        .get(format!("{api}/finance/reconciliation"))
        .send()
        .await
        .with_context(|| format!("GET {api}/finance/reconciliation"))?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

fn as_of_ms(report: &Value) -> Option<i64> {
    report["asOf"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis())
}

/// Polls `check` every 500 ms until it returns `Some` or `within` passes; shows `what`.
async fn wait_for<T, F, Fut>(
    progress: &mut Progress,
    what: &str,
    within: Duration,
    mut check: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if start.elapsed() >= within {
            return None;
        }
        progress.show(what);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn connector_state(connect: &ConnectClient, name: &str) -> Option<ConnectorState> {
    let status = connect.status(name).await.ok()?;
    let all = status
        .tasks
        .iter()
        .all(|t| t.state == status.connector.state);
    (all && !status.tasks.is_empty()).then_some(status.connector.state)
}

/// Runs the scenario into `report`. Problems of Keel or the stack are failed expectations.
pub async fn drive(
    config: &KeelConfig,
    api: &str,
    args: &LagArgs,
    timeout: Duration,
    suffix: &str,
    report: &mut Report,
) {
    let connector = crate::reconciliation::connector_name(config);
    let connect = ConnectClient::new(&config.connect.url);
    let client = crate::scenario::api_client(config).unwrap_or_default();
    #[allow(clippy::cast_precision_loss)]
    let fresh = args
        .fresh_s
        .unwrap_or(2.0 * config.reconciliation.heartbeat_interval_ms as f64 / 1000.0 + 5.0);
    #[allow(clippy::cast_precision_loss)]
    let lag_s = args.lag_s.max(1) as f64;
    let mut progress = Progress::new();

    match finance(&client, api).await {
        Ok((200, _)) => report.check(
            "the API's process hosts the reconciliation role",
            true,
            "GET /finance/reconciliation answered 200",
        ),
        Ok((status, body)) => {
            report.check(
                "the API's process hosts the reconciliation role",
                false,
                format!("GET /finance/reconciliation answered {status}: {body}"),
            );
            return;
        }
        Err(e) => {
            report.check(
                "the API's process hosts the reconciliation role",
                false,
                format!("{e:#}"),
            );
            return;
        }
    }
    let before = wait_for(
        &mut progress,
        "waiting for a fresh CDC lag",
        timeout,
        || async { lag(&client, api, &connector).await.filter(|v| *v < fresh) },
    )
    .await;
    report.check(
        format!("keel_cdc_lag_seconds{{connector=\"{connector}\"}} is under {fresh} s before"),
        before.is_some(),
        before.map_or_else(
            || format!("no fresh lag within {timeout:?}"),
            |v| format!("{v:.1} s"),
        ),
    );

    if let Err(e) = connect.pause(&connector).await {
        report.check("the connector pauses", false, format!("{e}"));
        return;
    }
    report.did.push(format!("paused connector {connector}"));
    let paused = wait_for(&mut progress, "waiting for PAUSED", timeout, || async {
        (connector_state(&connect, &connector).await == Some(ConnectorState::Paused)).then_some(())
    })
    .await;
    report.check(
        "the connector pauses",
        paused.is_some(),
        if paused.is_some() {
            "PAUSED".to_owned()
        } else {
            "not PAUSED".to_owned()
        },
    );
    let outcome = during_pause(config, api, &client, &connector, lag_s, suffix, report).await;

    // Whatever happened: resume, and see it catch up.
    let resumed = connect.resume(&connector).await;
    report.did.push(format!("resumed connector {connector}"));
    let running = wait_for(&mut progress, "waiting for RUNNING", timeout, || async {
        (connector_state(&connect, &connector).await == Some(ConnectorState::Running)).then_some(())
    })
    .await;
    report.check(
        "the connector runs again after resume",
        resumed.is_ok() && running.is_some(),
        match &resumed {
            Err(e) => format!("{e}"),
            Ok(()) if running.is_some() => "RUNNING".to_owned(),
            Ok(()) => "not RUNNING".to_owned(),
        },
    );
    let after = wait_for(
        &mut progress,
        "waiting for the lag to fall",
        timeout,
        || async { lag(&client, api, &connector).await.filter(|v| *v < fresh) },
    )
    .await;
    report.check(
        format!("keel_cdc_lag_seconds is under {fresh} s again after resume"),
        after.is_some(),
        after.map_or_else(
            || format!("still lagging after {timeout:?}"),
            |v| format!("{v:.1} s"),
        ),
    );
    if let Some((probe_ms, pool)) = outcome {
        let caught_up = wait_for(
            &mut progress,
            "waiting for asOf to pass the probe",
            timeout,
            || {
                let client = &client;
                async move {
                    let (_, body) = finance(client, api).await.ok()?;
                    as_of_ms(&body).filter(|t| *t >= probe_ms)
                }
            },
        )
        .await;
        report.check(
            "the finance view's asOf passes the change written during the pause",
            caught_up.is_some(),
            caught_up.map_or_else(
                || format!("asOf stayed before the probe ({probe_ms} ms)"),
                |t| format!("asOf {t} ms ≥ probe {probe_ms} ms"),
            ),
        );
        let table = &config.reconciliation.heartbeat_table;
        // `table` is validated as a plain identifier by `[reconciliation]`.
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM public.{table} WHERE connector = $1"
        )))
        .bind(probe_name(suffix))
        .execute(&pool)
        .await;
        pool.close().await;
    }
}

fn probe_name(suffix: &str) -> String {
    format!("scenario-probe-{suffix}")
}

/// Writes the probe and watches the staleness for `lag_s`; returns the probe's commit time and
/// the ledger pool (to delete the probe later) when the probe was written.
async fn during_pause(
    config: &KeelConfig,
    api: &str,
    client: &reqwest::Client,
    connector: &str,
    lag_s: f64,
    suffix: &str,
    report: &mut Report,
) -> Option<(i64, sqlx::PgPool)> {
    let mut progress = Progress::new();
    // What the view had seen when the pause began (after anything in flight landed).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start_as_of = finance(client, api)
        .await
        .ok()
        .and_then(|(_, b)| as_of_ms(&b));
    let pool = match crate::run::ledger_pool(config).await {
        Ok(pool) => pool,
        Err(e) => {
            report.check(
                "a change is written to the ledger database while paused",
                false,
                format!("{e:#}"),
            );
            return None;
        }
    };
    let table = &config.reconciliation.heartbeat_table;
    // `table` is validated as a plain identifier by `[reconciliation]`.
    let probe: Result<i64, sqlx::Error> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "INSERT INTO public.{table} (connector, beat_at) VALUES ($1, now()) \
         ON CONFLICT (connector) DO UPDATE SET beat_at = EXCLUDED.beat_at \
         RETURNING (extract(epoch FROM beat_at) * 1000)::BIGINT"
    )))
    .bind(probe_name(suffix))
    .fetch_one(&pool)
    .await;
    let probe_ms = match probe {
        Ok(ms) => ms,
        Err(e) => {
            report.check(
                "a change is written to the ledger database while paused",
                false,
                format!("{e}"),
            );
            return None;
        }
    };
    report.did.push(format!(
        "wrote probe row {} into public.{table} while paused",
        probe_name(suffix)
    ));
    let paused_at = Instant::now();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let hold = Duration::from_millis((lag_s * 1000.0) as u64);
    while paused_at.elapsed() < hold {
        let left = hold.saturating_sub(paused_at.elapsed()).as_secs();
        progress.show(&format!("connector paused; {left} s left"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let seen = lag(client, api, connector).await;
    // A second of slack: the heartbeat before the pause may have been up to one interval old.
    report.check(
        format!("keel_cdc_lag_seconds reaches {lag_s} s while paused"),
        seen.is_some_and(|v| v >= lag_s - 1.0),
        seen.map_or_else(|| "no lag metric".to_owned(), |v| format!("{v:.1} s")),
    );
    let (_, body) = finance(client, api).await.unwrap_or((0, Value::Null));
    let as_of = as_of_ms(&body);
    report.check(
        "the finance view's asOf stands still while paused",
        as_of.is_some() && as_of == start_as_of,
        format!(
            "asOf {} (at pause: {}), asOfLagSeconds {}",
            body["asOf"],
            start_as_of.map_or_else(|| "none".to_owned(), |t| t.to_string()),
            body["asOfLagSeconds"]
        ),
    );
    report.check(
        "the change written during the pause is not seen before resume",
        as_of.is_some_and(|t| t < probe_ms),
        format!("asOf {as_of:?} vs probe {probe_ms} ms"),
    );
    Some((probe_ms, pool))
}
