//! The admin listener of a `keel run` process without the `api` role: `GET /metrics` (the
//! process's Prometheus registry, text format), `GET /health` (200 while the process is up) and
//! `GET /ready` (200 once every stream application of the process runs with its tasks assigned
//! and restored, else 503 `application/problem+json`), so every Keel process can be scraped and
//! probed, not only the one hosting the API.
//!
//! Where `/metrics` is served (docs/metrics.md):
//! - with the `api` role: on the API's address (`[api].listen`); the admin listener is not
//!   started, so one process never exposes its metrics twice;
//! - without it: on `[metrics].listen` (default `127.0.0.1:9464`, `"disabled"` for none).
//!
//! The process that serves `/metrics` also samples every consumer group's lag
//! (`src/lag_metrics.rs`); [`spawn`] starts that sampler in exactly one place per process, in
//! both cases.

use std::net::SocketAddr;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use keel_ingest_api::Problem;
use keel_ingest_api::problem::Kind;
use prometheus::{Encoder as _, TextEncoder};
use serde::Deserialize;

use crate::config::KeelConfig;
use crate::run::{Role, Running};

/// What `[metrics].listen` says to turn the admin listener off.
pub const DISABLED: &str = "disabled";

/// `[metrics]`: the admin listener of processes without the `api` role.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// `host:port` of the admin listener (port 0: any free port), or `"disabled"`. Ignored by
    /// a process hosting the `api` role (its metrics are on `[api].listen`).
    pub listen: String,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".to_owned(),
        }
    }
}

impl MetricsSection {
    /// The address to bind, or `None` when disabled. Errors: not `host:port` nor `"disabled"`.
    pub fn address(&self) -> Result<Option<SocketAddr>, String> {
        let listen = self.listen.trim();
        if listen == DISABLED {
            return Ok(None);
        }
        listen.parse().map(Some).map_err(|_| {
            format!(
                "metrics.listen = {:?} must be ip:port (e.g. 127.0.0.1:9464) or \"{DISABLED}\"",
                self.listen
            )
        })
    }

    /// Every problem of the section.
    pub fn problems(&self) -> Vec<String> {
        self.address().err().into_iter().collect()
    }
}

#[derive(Clone)]
struct Admin {
    registry: prometheus::Registry,
    ready: keel_ingest_api::ReadyFn,
}

async fn health() -> Response {
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({ "status": "UP" })),
    )
        .into_response()
}

async fn ready(State(admin): State<Admin>) -> Response {
    match (admin.ready)() {
        Ok(()) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({ "status": "READY" })),
        )
            .into_response(),
        Err(why) => Problem::new(Kind::NotReady, why).into_response(),
    }
}

async fn metrics(State(admin): State<Admin>) -> Response {
    let encoder = TextEncoder::new();
    let mut buffer = Vec::new();
    if let Err(e) = encoder.encode(&admin.registry.gather(), &mut buffer) {
        tracing::warn!(error = %e, "encoding metrics failed");
    }
    let mut response = (StatusCode::OK, buffer).into_response();
    if let Ok(value) = HeaderValue::from_str(encoder.format_type()) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

fn router(admin: Admin) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(admin)
}

/// Starts what serves and feeds `/metrics` in this process, after every role has started (so
/// `/ready` watches all stream applications): the admin listener on `[metrics].listen` when
/// `roles` has no `api` (the API serves the routes otherwise), and the consumer-group lag
/// sampler wherever `/metrics` is served. With `[metrics].listen = "disabled"` and no `api`,
/// neither. Errors: the address does not parse or cannot be bound.
pub async fn spawn(
    config: &KeelConfig,
    roles: &std::collections::BTreeSet<Role>,
    running: &mut Running,
) -> anyhow::Result<()> {
    if !roles.contains(&Role::Api) {
        let Some(addr) = config.metrics.address().map_err(anyhow::Error::msg)? else {
            tracing::info!("no api role and metrics.listen disabled: /metrics is not served");
            return Ok(());
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the admin listener (metrics.listen = {addr})"))?;
        let bound = listener.local_addr()?;
        let admin = Admin {
            registry: running.registry.clone(),
            ready: running.readiness(),
        };
        let shutdown = running.shutdown.clone();
        running.tasks.spawn(async move {
            let result = axum::serve(listener, router(admin))
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
                .map_err(anyhow::Error::from);
            ("admin listener", result)
        });
        tracing::info!(addr = %bound, "admin listener (/metrics, /health, /ready) listening");
    }
    let (config, registry, shutdown) = (
        config.clone(),
        running.registry.clone(),
        running.shutdown.clone(),
    );
    running.tasks.spawn(async move {
        let result = crate::lag_metrics::run(config, registry, shutdown).await;
        ("consumer-group lag", result)
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listen_setting_is_an_address_or_disabled() {
        let section = |listen: &str| MetricsSection {
            listen: listen.to_owned(),
        };
        assert_eq!(
            MetricsSection::default().address(),
            Ok(Some("127.0.0.1:9464".parse().expect("an address")))
        );
        assert_eq!(section("disabled").address(), Ok(None));
        assert_eq!(section("0.0.0.0:0").problems(), Vec::<String>::new());
        let problems = section("localhost").problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("metrics.listen"), "{problems:?}");
    }
}
