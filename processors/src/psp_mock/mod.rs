//! The PSP mock: a real HTTP server (axum) that behaves like a card processor, so the payment
//! service is exercised against timeouts, declines, errors, idempotency and signed async
//! callbacks, deterministically by seed. `keel psp-mock` runs it; tests bind it on port 0.
//!
//! Endpoints (JSON bodies, see [`api`]):
//! - `POST /v1/authorizations` (header `Idempotency-Key`) → 200 `{id, status, decline_code?}`
//!   with status `authorized` | `declined` | `pending`; 502 for a processor error; the same key
//!   always returns the first answer and never creates a second authorization; the same key
//!   with another body → 422 `idempotency_key_reused`; while the first call still runs → 409
//!   `idempotency_in_progress`.
//! - `GET /v1/authorizations/{id}`; `POST /v1/authorizations/{id}/capture` (`{amount_minor?}`);
//!   `POST /v1/authorizations/{id}/void`: both idempotent by state, 422 `not_capturable` /
//!   `not_voidable` otherwise.
//! - `POST /v1/refunds` (header `Idempotency-Key`, `{authorization_id, amount_minor,
//!   refund_reference}`): 422 `refund_exceeds_captured` beyond captured minus refunded.
//! - `GET`/`PUT /admin/behaviour` (rates and latencies at runtime), `GET /admin/stats`
//!   (counters: how many authorizations, captures, voids, refunds really happened), `GET /health`.
//!
//! Rules (`rules`): `tok_visa` / `tok_ok` authorize; `tok_decline_<code>` declines with
//! `<code>` (e.g. `tok_decline_insufficient_funds`); `tok_timeout` hangs `timeout_delay_ms`
//! then authorizes (too late for the caller); `tok_error` → 502; `tok_pending` answers
//! `pending`, then after `pending_delay_ms` decides and POSTs a signed [`api::CallbackEvent`]
//! to `callback_url` (twice with probability `duplicate_callback_rate`; held back
//! `callback_reorder_delay_ms` with probability `callback_reorder_rate`, so it arrives out of
//! order with what happened meanwhile); amounts ending in 99
//! minor units decline `do_not_honor`; any other token gets the seeded random mix of
//! `timeout_rate`, `error_rate`, `decline_rate`.
//!
//! Callbacks are signed ([`signature`]): `Keel-Psp-Timestamp: <unix s>` and
//! `Keel-Psp-Signature: v1=<hex HMAC-SHA256(callback_secret, "{ts}.{body}")>`; receivers use
//! [`verify`].

pub mod api;
mod rules;
mod server;
pub mod signature;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use api::{Behaviour, BehaviourPatch, Stats};
pub use rules::{CARD_DECLINED, DO_NOT_HONOR};
pub use server::IDEMPOTENCY_HEADER;
pub use signature::{SIGNATURE_HEADER, SignatureError, TIMESTAMP_HEADER, sign, verify};

/// The `psp_mock` section of Keel's configuration. Durations in ms, rates in `[0, 1]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PspMockConfig {
    /// Where to listen; port 0 picks a free port ([`PspMock::local_addr`] tells which).
    pub listen: SocketAddr,
    /// Seed of the random mix; with the idempotency key it decides every outcome.
    pub seed: u64,
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
    pub decline_rate: f64,
    pub error_rate: f64,
    /// Share of calls that hang for `timeout_delay_ms`, far longer than any client timeout.
    pub timeout_rate: f64,
    pub timeout_delay_ms: u64,
    pub duplicate_callback_rate: f64,
    /// How long `pending` lasts before the callback.
    pub pending_delay_ms: u64,
    /// Share of pending authorizations whose callback is delivered out of order (held back
    /// `callback_reorder_delay_ms` after the decision; see [`api::Behaviour`]).
    pub callback_reorder_rate: f64,
    pub callback_reorder_delay_ms: u64,
    /// Where callbacks go (e.g. the ingest API's `/psp/callbacks`); none: no callbacks.
    pub callback_url: Option<String>,
    /// The HMAC secret callbacks are signed with.
    pub callback_secret: String,
}

impl Default for PspMockConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            seed: 42,
            latency_min_ms: 20,
            latency_max_ms: 120,
            decline_rate: 0.1,
            error_rate: 0.02,
            timeout_rate: 0.01,
            timeout_delay_ms: 90_000,
            duplicate_callback_rate: 0.1,
            pending_delay_ms: 500,
            callback_reorder_rate: 0.0,
            callback_reorder_delay_ms: 2_000,
            callback_url: None,
            callback_secret: "keel-psp-dev-secret".to_owned(),
        }
    }
}

impl PspMockConfig {
    /// The runtime-changeable part of the configuration.
    pub fn behaviour(&self) -> Behaviour {
        Behaviour {
            latency_min_ms: self.latency_min_ms,
            latency_max_ms: self.latency_max_ms,
            decline_rate: self.decline_rate,
            error_rate: self.error_rate,
            timeout_rate: self.timeout_rate,
            timeout_delay_ms: self.timeout_delay_ms,
            duplicate_callback_rate: self.duplicate_callback_rate,
            pending_delay_ms: self.pending_delay_ms,
            callback_reorder_rate: self.callback_reorder_rate,
            callback_reorder_delay_ms: self.callback_reorder_delay_ms,
        }
    }

    /// Check every field; the error lists every problem at once.
    pub fn validate(&self) -> Result<(), Error> {
        let mut problems = self.behaviour().problems();
        if let Some(url) = &self.callback_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            problems.push(format!(
                "callback_url must start with http:// or https://, got {url:?}"
            ));
        }
        if self.callback_secret.is_empty() {
            problems.push("callback_secret must not be empty".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(problems))
        }
    }
}

/// Why the mock could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid PSP mock configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    #[error("the PSP mock cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the PSP mock's HTTP client cannot be built: {0}")]
    Client(#[source] reqwest::Error),
    #[error("the PSP mock's server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// A bound, not yet running mock: learn its address, then [`PspMock::run`] it.
#[derive(Debug)]
pub struct PspMock {
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    shared: Arc<server::Shared>,
}

impl PspMock {
    /// Validate `config` and bind its `listen` address (port 0: any free port).
    pub async fn bind(config: PspMockConfig) -> Result<Self, Error> {
        config.validate()?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(Error::Client)?;
        let shared = Arc::new(server::Shared {
            seed: config.seed,
            behaviour: Mutex::new(config.behaviour()),
            callback_url: config.callback_url,
            callback_secret: config.callback_secret,
            book: Mutex::default(),
            http,
            stopping: CancellationToken::new(),
        });
        Ok(Self {
            listener,
            local_addr,
            shared,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Its base URL, `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// Serve until `shutdown` is cancelled; hanging calls and pending callbacks stop then.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let shared = self.shared.clone();
        let stopping = shared.stopping.clone();
        tracing::info!(addr = %self.local_addr, "PSP mock listening");
        let served = axum::serve(self.listener, server::router(self.shared))
            .with_graceful_shutdown(async move {
                shutdown.cancelled().await;
                stopping.cancel();
            })
            .await;
        // Hanging calls and callbacks watch this token and end at once.
        shared.stopping.cancel();
        served.map_err(Error::Serve)
    }
}

/// Bind `config.listen` and serve until `shutdown` is cancelled.
pub async fn serve(config: PspMockConfig, shutdown: CancellationToken) -> Result<(), Error> {
    PspMock::bind(config).await?.run(shutdown).await
}
