//! The HTTP side of the mock: the axum router, the in-memory book of authorizations, the
//! idempotency store and the callback deliveries.
//!
//! Every authorization is executed on its own task, detached from the HTTP request, so a client
//! that gives up (its timeout) does not cancel it: the PSP finishes the work and stores the
//! answer, which a retry with the same `Idempotency-Key` then gets (as real PSPs behave).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::Rng;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::api::{
    AuthorizationRequest, AuthorizationResponse, AuthorizationStatus, AuthorizationView, Behaviour,
    BehaviourPatch, CallbackEvent, CallbackOutcome, CaptureRequest, ErrorBody, RefundRequest,
    RefundResponse, Stats,
};
use super::rules::{self, Outcome, Plan};
use super::signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER, sign};

/// The header every mutating call may carry (required for authorizations and refunds).
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// State shared by all handlers and background tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    pub seed: u64,
    pub callback_url: Option<String>,
    pub callback_secret: String,
    pub behaviour: Mutex<Behaviour>,
    pub book: Mutex<Book>,
    pub http: reqwest::Client,
    /// Cancelled when the server stops: hanging calls and callbacks end at once.
    pub stopping: CancellationToken,
}

#[derive(Debug, Default)]
pub(crate) struct Book {
    authorizations: HashMap<String, Authorization>,
    /// Scoped keys (`authorize:<key>`, `refund:<key>`) → the first answer.
    idempotency: HashMap<String, Idem>,
    stats: Stats,
}

#[derive(Debug, Clone)]
struct Authorization {
    id: String,
    status: AuthorizationStatus,
    amount_minor: i64,
    currency: String,
    reference: String,
    decline_code: Option<String>,
    captured_minor: i64,
    refunded_minor: i64,
}

impl Authorization {
    fn view(&self) -> AuthorizationView {
        AuthorizationView {
            id: self.id.clone(),
            status: self.status,
            amount_minor: self.amount_minor,
            currency: self.currency.clone(),
            reference: self.reference.clone(),
            decline_code: self.decline_code.clone(),
            captured_minor: self.captured_minor,
            refunded_minor: self.refunded_minor,
        }
    }
}

#[derive(Debug, Clone)]
enum Idem {
    InProgress {
        fingerprint: String,
    },
    Done {
        fingerprint: String,
        status: StatusCode,
        body: serde_json::Value,
    },
}

impl Shared {
    fn book(&self) -> MutexGuard<'_, Book> {
        // Every critical section leaves the book consistent before it can panic.
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn behaviour(&self) -> Behaviour {
        self.behaviour
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/authorizations", post(authorize))
        .route("/v1/authorizations/{id}", get(get_authorization))
        .route("/v1/authorizations/{id}/capture", post(capture))
        .route("/v1/authorizations/{id}/void", post(void))
        .route("/v1/refunds", post(refund))
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            count_in_flight,
        ))
        .route("/health", get(|| async { "ok" }))
        .route("/admin/behaviour", get(get_behaviour).put(put_behaviour))
        .route("/admin/stats", get(get_stats))
        .with_state(shared)
}

/// Ends one request's share of `requests_in_flight`, also when the client gives up (the
/// request's future is dropped).
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut book = self.0.book();
        book.stats.requests_in_flight = book.stats.requests_in_flight.saturating_sub(1);
    }
}

/// Count the `/v1/...` requests in progress and their high-water mark (`GET /admin/stats`).
async fn count_in_flight(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    {
        let mut book = shared.book();
        book.stats.requests_in_flight += 1;
        book.stats.max_requests_in_flight = book
            .stats
            .max_requests_in_flight
            .max(book.stats.requests_in_flight);
    }
    let _in_flight = InFlight(shared);
    next.run(request).await
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    (status, axum::Json(body)).into_response()
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    json(
        status,
        &ErrorBody {
            code: code.to_owned(),
            message: message.into(),
        },
    )
}

fn stored(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get(IDEMPOTENCY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .map(str::to_owned)
}

/// The body as `T`, or the 400 `invalid_request` answer.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("the body is not a valid request: {e}"),
        ))
    })
}

/// What the idempotency store says about a new request.
enum Claim {
    /// First time: go ahead (the key is now in progress).
    Fresh,
    /// Answer this (the first answer, or a conflict).
    Answer(Response),
}

fn claim_key(book: &mut Book, scoped: &str, fingerprint: &str) -> Claim {
    match book.idempotency.get(scoped) {
        None => {
            book.idempotency.insert(
                scoped.to_owned(),
                Idem::InProgress {
                    fingerprint: fingerprint.to_owned(),
                },
            );
            Claim::Fresh
        }
        Some(Idem::Done {
            fingerprint: first,
            status,
            body,
        }) if first == fingerprint => {
            let answer = stored(*status, body.clone());
            book.stats.idempotent_replays += 1;
            Claim::Answer(answer)
        }
        Some(Idem::InProgress { fingerprint: first }) if first == fingerprint => {
            Claim::Answer(error(
                StatusCode::CONFLICT,
                "idempotency_in_progress",
                "a request with this Idempotency-Key is still being processed; retry later",
            ))
        }
        Some(_) => Claim::Answer(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request body",
        )),
    }
}

fn finish_key(
    book: &mut Book,
    scoped: &str,
    fingerprint: String,
    status: StatusCode,
    body: &impl Serialize,
) {
    let body = serde_json::to_value(body).unwrap_or(serde_json::Value::Null);
    book.idempotency.insert(
        scoped.to_owned(),
        Idem::Done {
            fingerprint,
            status,
            body,
        },
    );
}

fn validate_authorization(req: &AuthorizationRequest) -> Result<(), Box<Response>> {
    let mut problems = Vec::new();
    if req.amount_minor <= 0 {
        problems.push("amount_minor must be > 0".to_owned());
    }
    if req.currency.len() != 3 || !req.currency.chars().all(|c| c.is_ascii_uppercase()) {
        problems.push(format!(
            "currency must be three upper-case letters, got {:?}",
            req.currency
        ));
    }
    if req.payment_method.is_empty() {
        problems.push("payment_method must not be empty".to_owned());
    }
    if req.reference.is_empty() {
        problems.push("reference must not be empty".to_owned());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            problems.join("; "),
        )))
    }
}

async fn authorize(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    shared.book().stats.authorization_calls += 1;
    let Some(key) = idempotency_key(&headers) else {
        return error(
            StatusCode::BAD_REQUEST,
            "missing_idempotency_key",
            "POST /v1/authorizations needs an Idempotency-Key header",
        );
    };
    let req: AuthorizationRequest = match parse(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    if let Err(resp) = validate_authorization(&req) {
        return *resp;
    }
    let fingerprint = serde_json::to_string(&req).unwrap_or_default();
    let scoped = format!("authorize:{key}");
    if let Claim::Answer(resp) = claim_key(&mut shared.book(), &scoped, &fingerprint) {
        return resp;
    }
    let plan = rules::plan(&shared.behaviour(), shared.seed, &key, &req);
    // Detached: a client that times out does not cancel the PSP's work.
    let task = tokio::spawn(execute_authorization(
        shared.clone(),
        scoped,
        fingerprint,
        req,
        plan,
    ));
    match task.await {
        Ok(resp) => resp,
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "processor_error",
            format!("the authorization task failed: {e}"),
        ),
    }
}

async fn execute_authorization(
    shared: Arc<Shared>,
    scoped: String,
    fingerprint: String,
    req: AuthorizationRequest,
    plan: Plan,
) -> Response {
    tokio::select! {
        () = tokio::time::sleep(Duration::from_millis(plan.delay_ms)) => {}
        () = shared.stopping.cancelled() => {
            shared.book().idempotency.remove(&scoped);
            return error(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the PSP is stopping");
        }
    }
    let mut book = shared.book();
    let (status, decline_code) = match &plan.outcome {
        Outcome::Error => {
            // Nothing was created: no answer is stored, a retry is decided afresh (the same way).
            book.idempotency.remove(&scoped);
            book.stats.errors += 1;
            return error(
                StatusCode::BAD_GATEWAY,
                "processor_error",
                "the card network did not answer",
            );
        }
        Outcome::Authorized => (AuthorizationStatus::Authorized, None),
        Outcome::Hang => {
            book.stats.timeouts += 1;
            (AuthorizationStatus::Authorized, None)
        }
        Outcome::Declined(code) => (AuthorizationStatus::Declined, Some(code.clone())),
        Outcome::Pending { .. } => (AuthorizationStatus::Pending, None),
    };
    book.stats.authorizations += 1;
    match status {
        AuthorizationStatus::Declined => book.stats.declined += 1,
        AuthorizationStatus::Pending => book.stats.pending += 1,
        _ => book.stats.authorized += 1,
    }
    book.authorizations.insert(
        plan.psp_id.clone(),
        Authorization {
            id: plan.psp_id.clone(),
            status,
            amount_minor: req.amount_minor,
            currency: req.currency.clone(),
            reference: req.reference.clone(),
            decline_code: decline_code.clone(),
            captured_minor: 0,
            refunded_minor: 0,
        },
    );
    let answer = AuthorizationResponse {
        id: plan.psp_id.clone(),
        status,
        decline_code,
    };
    finish_key(&mut book, &scoped, fingerprint, StatusCode::OK, &answer);
    drop(book);
    if let Outcome::Pending {
        resolves_to,
        duplicate_callback,
        reordered,
    } = plan.outcome
    {
        let behaviour = shared.behaviour();
        let delay = Duration::from_millis(behaviour.pending_delay_ms);
        let held_back =
            reordered.then(|| Duration::from_millis(behaviour.callback_reorder_delay_ms));
        tokio::spawn(resolve_pending(
            shared.clone(),
            plan.psp_id,
            plan.event_id,
            resolves_to,
            Delivery {
                duplicate: duplicate_callback,
                held_back,
            },
            delay,
        ));
    }
    json(StatusCode::OK, &answer)
}

/// How a pending authorization's callback is delivered.
#[derive(Debug, Clone, Copy)]
struct Delivery {
    /// Twice (the same event).
    duplicate: bool,
    /// Out of order: held back this long after the decision (with `duplicate`, only the
    /// second copy is).
    held_back: Option<Duration>,
}

/// Decide a pending authorization after `delay`, then deliver its callback as `delivery`
/// says, each delivery retried with backoff.
async fn resolve_pending(
    shared: Arc<Shared>,
    authorization_id: String,
    event_id: String,
    resolves_to: Option<String>,
    delivery: Delivery,
    delay: Duration,
) {
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        () = shared.stopping.cancelled() => return,
    }
    let (outcome, decline_code) = match resolves_to {
        None => (CallbackOutcome::Authorized, None),
        Some(code) => (CallbackOutcome::Declined, Some(code)),
    };
    let reference = {
        let mut book = shared.book();
        let Some(auth) = book.authorizations.get_mut(&authorization_id) else {
            return;
        };
        if auth.status == AuthorizationStatus::Pending {
            match outcome {
                CallbackOutcome::Authorized => auth.status = AuthorizationStatus::Authorized,
                CallbackOutcome::Declined => {
                    auth.status = AuthorizationStatus::Declined;
                    auth.decline_code = decline_code.clone();
                }
            }
        } else {
            // Voided while pending: nothing to report.
            return;
        }
        auth.reference.clone()
    };
    let Some(url) = shared.callback_url.clone() else {
        return;
    };
    let event = CallbackEvent {
        event_id,
        authorization_id,
        reference,
        outcome,
        decline_code,
    };
    let body = serde_json::to_vec(&event).unwrap_or_default();
    if delivery.duplicate {
        deliver(&shared, &url, &body).await;
    }
    if let Some(held_back) = delivery.held_back {
        tracing::debug!(
            authorization_id = event.authorization_id,
            held_back_ms = u64::try_from(held_back.as_millis()).unwrap_or(u64::MAX),
            "PSP callback held back (out of order)"
        );
        tokio::select! {
            () = tokio::time::sleep(held_back) => {}
            () = shared.stopping.cancelled() => return,
        }
    }
    deliver(&shared, &url, &body).await;
}

async fn deliver(shared: &Shared, url: &str, body: &[u8]) {
    let mut backoff = Duration::from_millis(100);
    for attempt in 1..=6 {
        let timestamp = unix_now();
        let signature = sign(&shared.callback_secret, timestamp, body);
        let sent = shared
            .http
            .post(url)
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, signature)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => {
                shared.book().stats.callbacks_delivered += 1;
                return;
            }
            Ok(resp) => {
                tracing::warn!(url, attempt, status = %resp.status(), "PSP callback refused");
            }
            Err(e) => tracing::warn!(url, attempt, error = %e, "PSP callback not delivered"),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shared.stopping.cancelled() => break,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    shared.book().stats.callbacks_failed += 1;
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A short random latency for capture, void and refund (timing only: no outcome depends on it).
async fn latency(shared: &Shared) {
    let b = shared.behaviour();
    let ms = if b.latency_max_ms > b.latency_min_ms {
        rand::rng().random_range(b.latency_min_ms..=b.latency_max_ms)
    } else {
        b.latency_min_ms
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

fn not_found(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no authorization {id}"),
    )
}

async fn get_authorization(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match shared.book().authorizations.get(&id) {
        Some(auth) => json(StatusCode::OK, &auth.view()),
        None => not_found(&id),
    }
}

async fn capture(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let req: CaptureRequest = if body.is_empty() {
        CaptureRequest::default()
    } else {
        match parse(&body) {
            Ok(r) => r,
            Err(resp) => return *resp,
        }
    };
    latency(&shared).await;
    let mut book = shared.book();
    let Some(auth) = book.authorizations.get_mut(&id) else {
        return not_found(&id);
    };
    match auth.status {
        // Capturing twice is answered with the state: capture is idempotent by state.
        AuthorizationStatus::Captured => json(StatusCode::OK, &auth.view()),
        AuthorizationStatus::Authorized => {
            let amount = req.amount_minor.unwrap_or(auth.amount_minor);
            if amount <= 0 || amount > auth.amount_minor {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_amount",
                    format!(
                        "capture amount must be within 1..={}, got {amount}",
                        auth.amount_minor
                    ),
                );
            }
            auth.status = AuthorizationStatus::Captured;
            auth.captured_minor = amount;
            let view = auth.view();
            book.stats.captures += 1;
            json(StatusCode::OK, &view)
        }
        other => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_capturable",
            format!("authorization {id} is {}", other.as_str()),
        ),
    }
}

async fn void(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    latency(&shared).await;
    let mut book = shared.book();
    let Some(auth) = book.authorizations.get_mut(&id) else {
        return not_found(&id);
    };
    match auth.status {
        AuthorizationStatus::Voided => json(StatusCode::OK, &auth.view()),
        AuthorizationStatus::Authorized | AuthorizationStatus::Pending => {
            auth.status = AuthorizationStatus::Voided;
            let view = auth.view();
            book.stats.voids += 1;
            json(StatusCode::OK, &view)
        }
        other => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_voidable",
            format!("authorization {id} is {}", other.as_str()),
        ),
    }
}

async fn refund(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(key) = idempotency_key(&headers) else {
        return error(
            StatusCode::BAD_REQUEST,
            "missing_idempotency_key",
            "POST /v1/refunds needs an Idempotency-Key header",
        );
    };
    let req: RefundRequest = match parse(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    if req.amount_minor <= 0 {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "amount_minor must be > 0",
        );
    }
    let fingerprint = serde_json::to_string(&req).unwrap_or_default();
    let scoped = format!("refund:{key}");
    if let Claim::Answer(resp) = claim_key(&mut shared.book(), &scoped, &fingerprint) {
        return resp;
    }
    latency(&shared).await;
    let mut book = shared.book();
    let refused = |book: &mut Book, resp: Response| {
        // A refused refund stores nothing: the key may be used again once it would fit.
        book.idempotency.remove(&scoped);
        resp
    };
    let Some(auth) = book.authorizations.get_mut(&req.authorization_id) else {
        return refused(&mut book, not_found(&req.authorization_id));
    };
    let available = auth.captured_minor - auth.refunded_minor;
    if req.amount_minor > available {
        let resp = error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "refund_exceeds_captured",
            format!(
                "refund of {} exceeds captured minus refunded ({available})",
                req.amount_minor
            ),
        );
        return refused(&mut book, resp);
    }
    auth.refunded_minor += req.amount_minor;
    let digest = {
        use sha2::Digest;
        sha2::Sha256::digest(format!("{}:{key}", shared.seed).as_bytes())
    };
    let answer = RefundResponse {
        id: format!("re_{}", hex::encode(&digest[..8])),
        authorization_id: req.authorization_id.clone(),
        status: "succeeded".to_owned(),
        amount_minor: req.amount_minor,
    };
    book.stats.refunds += 1;
    finish_key(&mut book, &scoped, fingerprint, StatusCode::OK, &answer);
    json(StatusCode::OK, &answer)
}

async fn get_behaviour(State(shared): State<Arc<Shared>>) -> Response {
    json(StatusCode::OK, &shared.behaviour())
}

async fn put_behaviour(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let patch: BehaviourPatch = match parse(&body) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    let mut current = shared
        .behaviour
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let next = current.patched(&patch);
    let problems = next.problems();
    if !problems.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            problems.join("; "),
        );
    }
    *current = next.clone();
    json(StatusCode::OK, &next)
}

async fn get_stats(State(shared): State<Arc<Shared>>) -> Response {
    let stats = shared.book().stats.clone();
    json(StatusCode::OK, &stats)
}
