//! The payment service's HTTP client of the PSP ([`crate::psp_mock::api`] is the contract).
//!
//! Every call has the configured timeout. A timeout of an authorization is an answer
//! (`AuthorizeOutcome::Timeout`: unknown, reconciled later); 5xx and refused connections are
//! retried `psp_retries` times with backoff, with the same idempotency key. "Idempotency key in
//! progress" (409: an earlier call with this key, e.g. from a process that was killed, is still
//! running at the PSP) is not a failure but a wait: it is asked again until the PSP has the
//! first call's answer or the call's timeout is spent.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::PaymentConfig;
use super::logic::{AuthorizeOutcome, CallOutcome};
use super::metrics::PaymentMetrics;
use super::{Error, Result};
use crate::psp_mock::IDEMPOTENCY_HEADER;
use crate::psp_mock::api::{
    AuthorizationRequest, AuthorizationResponse, AuthorizationStatus, AuthorizationView,
    CaptureRequest, ErrorBody, RefundRequest, RefundResponse,
};

/// How one HTTP request failed.
#[derive(Debug)]
enum CallError {
    /// No answer within the timeout: the PSP may or may not have acted.
    Timeout,
    /// Worth retrying: 5xx, 429, connection refused.
    Transient(String),
    /// An earlier request with the same idempotency key is still running at the PSP (409):
    /// worth retrying; until it ends, the outcome is unknown.
    InProgress,
    /// The PSP refused (4xx) with a stable code.
    Refused { status: StatusCode, code: String },
}

#[derive(Debug, Clone)]
pub(crate) struct PspClient {
    http: reqwest::Client,
    base: String,
    retries: u32,
    backoff: Duration,
    /// How long one call may take in all, waits for an earlier call in progress included.
    timeout: Duration,
    metrics: PaymentMetrics,
}

/// The longest pause between two asks about a call still in progress at the PSP.
const IN_PROGRESS_POLL_MAX: Duration = Duration::from_millis(500);

impl PspClient {
    pub(crate) fn new(config: &PaymentConfig, metrics: PaymentMetrics) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.psp_timeout_ms))
            .connect_timeout(Duration::from_millis(config.psp_timeout_ms.min(5_000)))
            .build()
            .map_err(|e| Error::Config(vec![format!("cannot build the PSP client: {e}")]))?;
        Ok(Self {
            http,
            base: config.psp_url.trim_end_matches('/').to_owned(),
            retries: config.psp_retries,
            backoff: Duration::from_millis(config.psp_retry_backoff_ms.max(1)),
            timeout: Duration::from_millis(config.psp_timeout_ms),
            metrics,
        })
    }

    async fn request<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<&B>,
    ) -> Result<T, CallError> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            req = req.header(IDEMPOTENCY_HEADER, key);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let _in_flight = self.metrics.psp_call();
        let resp = match req.send().await {
            Ok(resp) => resp,
            Err(e) if e.is_timeout() => return Err(CallError::Timeout),
            // Not connected: the request never reached the PSP.
            Err(e) if e.is_connect() => return Err(CallError::Transient(e.to_string())),
            // Sent, then the connection broke: the PSP may have acted. Treat as no answer.
            Err(_) => return Err(CallError::Timeout),
        };
        let status = resp.status();
        if status.is_success() {
            return match resp.json::<T>().await {
                Ok(v) => Ok(v),
                Err(e) if e.is_timeout() => Err(CallError::Timeout),
                Err(e) => Err(CallError::Transient(format!("unreadable answer: {e}"))),
            };
        }
        let error: Option<ErrorBody> = resp.json().await.ok();
        let code = error.map_or_else(|| status.to_string(), |e| e.code);
        if status == StatusCode::CONFLICT {
            Err(CallError::InProgress)
        } else if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            Err(CallError::Transient(format!("{status} {code}")))
        } else {
            Err(CallError::Refused { status, code })
        }
    }

    /// `request` retried on transient failures with doubling backoff, and asked again while an
    /// earlier call with the same key is in progress, until the call's timeout is spent; a
    /// timeout is returned at once (the caller decides what an unknown outcome means).
    async fn with_retries<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<&B>,
    ) -> Result<T, CallError> {
        let started = Instant::now();
        let mut backoff = self.backoff;
        let mut poll = self.backoff.min(IN_PROGRESS_POLL_MAX);
        let mut attempt = 0;
        loop {
            match self.request(method.clone(), path, key, body).await {
                // Not a failure: the PSP is still working on this key's first call (made before
                // a crash, or by another worker). Its answer is what this call wants.
                Err(CallError::InProgress) if started.elapsed() + poll < self.timeout => {
                    tracing::debug!(path, "an earlier PSP call with this key is in progress");
                    tokio::time::sleep(poll).await;
                    poll = (poll * 2).min(IN_PROGRESS_POLL_MAX);
                }
                Err(e @ CallError::Transient(_)) if attempt < self.retries => {
                    tracing::debug!(path, attempt, error = ?e, "PSP call failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Authorize with `key`. Never an error: every failure is an outcome.
    pub(crate) async fn authorize(
        &self,
        key: &str,
        req: &AuthorizationRequest,
    ) -> (AuthorizeOutcome, Duration) {
        let started = Instant::now();
        let answer: Result<AuthorizationResponse, CallError> = self
            .with_retries(
                reqwest::Method::POST,
                "/v1/authorizations",
                Some(key),
                Some(req),
            )
            .await;
        let outcome = match answer {
            Ok(resp) => match resp.status {
                AuthorizationStatus::Declined => AuthorizeOutcome::Declined {
                    psp_reference: Some(resp.id),
                    code: resp.decline_code.unwrap_or_else(|| "declined".to_owned()),
                },
                AuthorizationStatus::Pending => AuthorizeOutcome::Pending {
                    psp_reference: resp.id,
                },
                AuthorizationStatus::Authorized
                | AuthorizationStatus::Captured
                | AuthorizationStatus::Voided => AuthorizeOutcome::Authorized {
                    psp_reference: resp.id,
                },
            },
            Err(CallError::Timeout | CallError::InProgress) => AuthorizeOutcome::Timeout,
            Err(CallError::Transient(detail)) => AuthorizeOutcome::PspError { detail },
            Err(CallError::Refused { status, code }) => AuthorizeOutcome::PspError {
                detail: format!("{status} {code}"),
            },
        };
        (outcome, started.elapsed())
    }

    /// Replay an authorization with its key: the PSP's stored first answer. `None` when the
    /// PSP did not answer (timeout, still in progress, errors).
    pub(crate) async fn replay_authorization(
        &self,
        key: &str,
        req: &AuthorizationRequest,
    ) -> Option<AuthorizationResponse> {
        self.request::<_, AuthorizationResponse>(
            reqwest::Method::POST,
            "/v1/authorizations",
            Some(key),
            Some(req),
        )
        .await
        .ok()
    }

    /// The current state of an authorization.
    pub(crate) async fn get_authorization(&self, psp_reference: &str) -> Option<AuthorizationView> {
        self.request::<(), AuthorizationView>(
            reqwest::Method::GET,
            &format!("/v1/authorizations/{psp_reference}"),
            None,
            None,
        )
        .await
        .ok()
    }

    fn unanswered(operation: &'static str, e: &CallError) -> Error {
        Error::Psp {
            operation,
            detail: match e {
                CallError::Timeout => "no answer within the timeout".to_owned(),
                CallError::Transient(detail) => detail.clone(),
                CallError::InProgress => "an earlier call is still in progress".to_owned(),
                CallError::Refused { status, code } => format!("{status} {code}"),
            },
        }
    }

    /// Capture: `Succeeded`, `Refused` (a 4xx code), or an error to retry later.
    pub(crate) async fn capture(
        &self,
        psp_reference: &str,
        key: &str,
        amount_minor: i64,
    ) -> Result<(CallOutcome, Duration)> {
        let started = Instant::now();
        let body = CaptureRequest {
            amount_minor: Some(amount_minor),
        };
        let answer: Result<AuthorizationView, CallError> = self
            .with_retries(
                reqwest::Method::POST,
                &format!("/v1/authorizations/{psp_reference}/capture"),
                Some(key),
                Some(&body),
            )
            .await;
        Self::call_outcome("capture", answer.map(|v| Some(v.id)), started)
    }

    /// Void: `Succeeded` (also when it was voided already), `Refused`, or an error.
    pub(crate) async fn void(
        &self,
        psp_reference: &str,
        key: &str,
    ) -> Result<(CallOutcome, Duration)> {
        let started = Instant::now();
        let answer: Result<AuthorizationView, CallError> = self
            .with_retries::<(), _>(
                reqwest::Method::POST,
                &format!("/v1/authorizations/{psp_reference}/void"),
                Some(key),
                None,
            )
            .await;
        Self::call_outcome("void", answer.map(|v| Some(v.id)), started)
    }

    /// Refund `amount_minor` of a captured authorization, idempotent on `key`.
    pub(crate) async fn refund(
        &self,
        psp_reference: &str,
        key: &str,
        refund_id: &str,
        amount_minor: i64,
    ) -> Result<(CallOutcome, Duration)> {
        let started = Instant::now();
        let body = RefundRequest {
            authorization_id: psp_reference.to_owned(),
            amount_minor,
            refund_reference: refund_id.to_owned(),
        };
        let answer: Result<RefundResponse, CallError> = self
            .with_retries(reqwest::Method::POST, "/v1/refunds", Some(key), Some(&body))
            .await;
        Self::call_outcome("refund", answer.map(|r| Some(r.id)), started)
    }

    fn call_outcome(
        operation: &'static str,
        answer: Result<Option<String>, CallError>,
        started: Instant,
    ) -> Result<(CallOutcome, Duration)> {
        match answer {
            Ok(psp_reference) => Ok((CallOutcome::Succeeded { psp_reference }, started.elapsed())),
            Err(CallError::Refused { code, .. }) => {
                Ok((CallOutcome::Refused { code }, started.elapsed()))
            }
            Err(e) => Err(Self::unanswered(operation, &e)),
        }
    }
}
