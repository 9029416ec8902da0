//! The built-in live page, for people without Grafana: `GET /dashboard` (HTML, uPlot charts of
//! the checkout flow and the lag, the latest sagas with their timeline), fed by
//! `GET /dashboard/data` (JSON). Everything is served from the binary: the page
//! (`assets/dashboard.html`, `assets/dashboard.js`) and uPlot (`assets/vendor/uplot/`, MIT,
//! version in its README) are embedded with `include_str!`; the page needs no network.
//!
//! A sampler task reads the process's own Prometheus registry every [`SAMPLE_EVERY`] and keeps
//! the last [`KEEP_SAMPLES`] samples (cumulative counters, gauges), so the page shows the recent
//! past as soon as it opens; the page turns counters into per-interval figures itself. The latest
//! sagas are read from the order store (MariaDB `orders`, through
//! `keel_processors::orders::load_order`, as `GET /orders/{id}` does).
//!
//! These routes are operational, like `/metrics`: not in [`crate::Endpoint::ALL`] nor in the
//! OpenAPI document (that document describes the public API), not counted in the API's request
//! metrics, not limited by `max_in_flight`.
//!
//! `GET /dashboard/data` answers (times epoch ms, durations seconds):
//! `{"sampleEveryMs": 2000, "samples": [Sample…], "sagas": [OrderView…], "sagasError": null}`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use keel_processors::orders::{self, OrderView};
use prometheus::{Encoder, Registry, TextEncoder};
use serde::Serialize;
use sqlx::MySqlPool;
use tokio_util::sync::CancellationToken;

use crate::routes::{App, json_response, to_json};

/// How often the sampler reads the registry.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// How many samples are kept (10 minutes at [`SAMPLE_EVERY`]).
pub const KEEP_SAMPLES: usize = 300;
/// How many of the most recently updated orders the page lists.
pub const LATEST_SAGAS: u32 = 10;

const PAGE: &str = include_str!("../assets/dashboard.html");
const SCRIPT: &str = include_str!("../assets/dashboard.js");
const UPLOT_JS: &str = include_str!("../assets/vendor/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../assets/vendor/uplot/uPlot.min.css");

/// One reading of the registry. Counters are cumulative since the process started; a metric the
/// process does not export (its role is not hosted here) reads 0.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    /// When it was taken, epoch ms.
    pub at: i64,
    /// `keel_api_orders_accepted_total`.
    pub orders_placed: f64,
    /// `saga_decisions_total{status="CONFIRMED"}`, every reason.
    pub orders_confirmed: f64,
    /// `saga_decisions_total{status="CANCELLED"}`.
    pub orders_cancelled: f64,
    /// `saga_decisions_total{status="REJECTED"}`.
    pub orders_rejected: f64,
    /// `payment_attempt_latency_seconds_count{kind="authorize"}`, every outcome.
    pub authorize_count: f64,
    /// `payment_attempt_latency_seconds_sum{kind="authorize"}`, seconds.
    pub authorize_seconds: f64,
    /// `payment_failure_rate` (0..1).
    pub payment_failure_rate: f64,
    /// `inventory_holds_active`, every task.
    pub holds_active: f64,
    /// `keel_consumer_group_lag_records` summed per group.
    pub group_lag: BTreeMap<String, f64>,
    /// `keel_consumer_lag_records` (the stream applications' own view), summed.
    pub stream_lag: f64,
}

/// One exposition line: metric name (with `_sum`/`_count`/`_bucket` suffixes as written),
/// labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Line {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses Prometheus text format 0.0.4 sample lines (comments skipped; label values unescaped).
/// A line that does not parse is skipped.
pub fn parse_exposition(text: &str) -> Vec<Line> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Line> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        loop {
            // label name up to '=' (or the closing brace)
            let mut key = String::new();
            let mut closed_at = None;
            for (i, c) in chars.by_ref() {
                match c {
                    '=' => break,
                    '}' => {
                        closed_at = Some(i);
                        break;
                    }
                    ',' | ' ' => {}
                    c => key.push(c),
                }
            }
            if let Some(i) = closed_at {
                rest = &body[i + 1..];
                break;
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut value = String::new();
            let mut escaped = false;
            let mut done = false;
            for (_, c) in chars.by_ref() {
                match (escaped, c) {
                    (true, 'n') => {
                        value.push('\n');
                        escaped = false;
                    }
                    (true, c) => {
                        value.push(c);
                        escaped = false;
                    }
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        done = true;
                        break;
                    }
                    (false, c) => value.push(c),
                }
            }
            if !done {
                return None;
            }
            labels.push((key, value));
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Line {
        name,
        labels,
        value,
    })
}

/// The registry as text, then as [`Line`]s.
fn read_registry(registry: &Registry) -> Vec<Line> {
    let mut buffer = Vec::new();
    if TextEncoder::new()
        .encode(&registry.gather(), &mut buffer)
        .is_err()
    {
        return Vec::new();
    }
    parse_exposition(&String::from_utf8_lossy(&buffer))
}

/// A [`Sample`] from the lines of one reading, taken at `at` (epoch ms).
pub fn sample(lines: &[Line], at: i64) -> Sample {
    let mut s = Sample {
        at,
        ..Sample::default()
    };
    for l in lines {
        match l.name.as_str() {
            "keel_api_orders_accepted_total" => s.orders_placed += l.value,
            "saga_decisions_total" => match l.label("status") {
                Some("CONFIRMED") => s.orders_confirmed += l.value,
                Some("CANCELLED") => s.orders_cancelled += l.value,
                Some("REJECTED") => s.orders_rejected += l.value,
                _ => {}
            },
            "payment_attempt_latency_seconds_count" if l.label("kind") == Some("authorize") => {
                s.authorize_count += l.value;
            }
            "payment_attempt_latency_seconds_sum" if l.label("kind") == Some("authorize") => {
                s.authorize_seconds += l.value;
            }
            "payment_failure_rate" => s.payment_failure_rate = l.value,
            "inventory_holds_active" => s.holds_active += l.value,
            "keel_consumer_group_lag_records" => {
                let group = l.label("group").unwrap_or_default().to_owned();
                *s.group_lag.entry(group).or_default() += l.value;
            }
            "keel_consumer_lag_records" => s.stream_lag += l.value,
            _ => {}
        }
    }
    s
}

/// The samples kept for the page.
#[derive(Debug, Clone, Default)]
struct History(Arc<Mutex<VecDeque<Sample>>>);

impl History {
    fn push(&self, sample: Sample) {
        let mut samples = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if samples.len() == KEEP_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    fn all(&self) -> Vec<Sample> {
        let samples = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        samples.iter().cloned().collect()
    }
}

#[derive(Clone)]
struct Dashboard {
    app: App,
    history: History,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The dashboard's routes, and its sampler (a task that ends with `shutdown`).
pub(crate) fn router(app: App, shutdown: CancellationToken) -> Router {
    let history = History::default();
    let registry = app.0.registry.clone();
    let sampler = history.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => sampler.push(sample(&read_registry(&registry), now_ms())),
            }
        }
    });
    Router::new()
        .route("/dashboard", get(page))
        .route("/dashboard/dashboard.js", get(script))
        .route("/dashboard/vendor/uPlot.iife.min.js", get(uplot_js))
        .route("/dashboard/vendor/uPlot.min.css", get(uplot_css))
        .route("/dashboard/data", get(data))
        .with_state(Dashboard { app, history })
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn uplot_js() -> Response {
    asset("text/javascript; charset=utf-8", UPLOT_JS)
}

async fn uplot_css() -> Response {
    asset("text/css; charset=utf-8", UPLOT_CSS)
}

/// What `GET /dashboard/data` answers.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    sample_every_ms: u128,
    /// Oldest first; the last one is taken for this request.
    samples: Vec<Sample>,
    /// The most recently updated orders, newest first.
    sagas: Vec<OrderView>,
    /// Why `sagas` is empty when the order store did not answer.
    sagas_error: Option<String>,
}

async fn data(State(d): State<Dashboard>) -> Response {
    let mut samples = d.history.all();
    samples.push(sample(&read_registry(&d.app.0.registry), now_ms()));
    let (sagas, sagas_error) = match latest_sagas(&d.app.0.pool, LATEST_SAGAS).await {
        Ok(sagas) => (sagas, None),
        Err(e) => {
            tracing::warn!(error = %e, "dashboard: reading the latest orders failed");
            (Vec::new(), Some(e))
        }
    };
    let body = Data {
        sample_every_ms: SAMPLE_EVERY.as_millis(),
        samples,
        sagas,
        sagas_error,
    };
    json_response(StatusCode::OK, to_json(&body), None)
}

/// The `limit` most recently updated orders with their timelines, newest first.
async fn latest_sagas(pool: &MySqlPool, limit: u32) -> Result<Vec<OrderView>, String> {
    let ids: Vec<(String,)> = tokio::time::timeout(
        Duration::from_secs(5),
        sqlx::query_as("SELECT order_id FROM orders ORDER BY updated_at DESC LIMIT ?")
            .bind(limit)
            .fetch_all(pool),
    )
    .await
    .map_err(|_| "the order store did not answer within 5 s".to_owned())?
    .map_err(|e| format!("reading the latest orders: {e}"))?;
    let mut out = Vec::with_capacity(ids.len());
    for (id,) in ids {
        if let Some(view) = orders::load_order(pool, &id)
            .await
            .map_err(|e| e.to_string())?
        {
            out.push(view);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_lines_parse_with_escaped_labels_and_special_values() {
        let text = "# HELP x y\n# TYPE x counter\n\
            saga_decisions_total{reason=\"none\",status=\"CONFIRMED\"} 3\n\
            weird{a=\"q\\\"uo,te}\",b=\"n\\\\l\"} +Inf\n\
            plain 1.5e3\n";
        let lines = parse_exposition(text);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].label("status"), Some("CONFIRMED"));
        assert_eq!(lines[0].value, 3.0);
        assert_eq!(lines[1].label("a"), Some("q\"uo,te}"));
        assert_eq!(lines[1].label("b"), Some("n\\l"));
        assert!(lines[1].value.is_infinite());
        assert_eq!(lines[2].name, "plain");
        assert_eq!(lines[2].value, 1500.0);
    }

    #[test]
    fn a_sample_sums_the_series_the_page_charts() {
        let text = "keel_api_orders_accepted_total 4\n\
            saga_decisions_total{reason=\"none\",status=\"PENDING\"} 4\n\
            saga_decisions_total{reason=\"none\",status=\"CONFIRMED\"} 3\n\
            saga_decisions_total{reason=\"PAYMENT_DECLINED\",status=\"CANCELLED\"} 1\n\
            payment_attempt_latency_seconds_count{kind=\"authorize\",outcome=\"succeeded\"} 3\n\
            payment_attempt_latency_seconds_count{kind=\"authorize\",outcome=\"declined\"} 1\n\
            payment_attempt_latency_seconds_count{kind=\"capture\",outcome=\"succeeded\"} 3\n\
            payment_attempt_latency_seconds_sum{kind=\"authorize\",outcome=\"succeeded\"} 0.3\n\
            payment_attempt_latency_seconds_sum{kind=\"authorize\",outcome=\"declined\"} 0.1\n\
            payment_failure_rate 0.25\n\
            inventory_holds_active{task=\"0_1\"} 2\n\
            inventory_holds_active{task=\"0_2\"} 1\n\
            keel_consumer_group_lag_records{group=\"g\",partition=\"0\",topic=\"t\"} 5\n\
            keel_consumer_group_lag_records{group=\"g\",partition=\"1\",topic=\"t\"} 2\n\
            keel_consumer_lag_records{application=\"a\",partition=\"0\",topic=\"t\"} 7\n";
        let s = sample(&parse_exposition(text), 42);
        assert_eq!(s.at, 42);
        assert_eq!(s.orders_placed, 4.0);
        assert_eq!(s.orders_confirmed, 3.0);
        assert_eq!(s.orders_cancelled, 1.0);
        assert_eq!(s.orders_rejected, 0.0);
        assert_eq!(s.authorize_count, 4.0);
        assert!((s.authorize_seconds - 0.4).abs() < 1e-9);
        assert_eq!(s.payment_failure_rate, 0.25);
        assert_eq!(s.holds_active, 3.0);
        assert_eq!(s.group_lag.get("g"), Some(&7.0));
        assert_eq!(s.stream_lag, 7.0);
    }
}
