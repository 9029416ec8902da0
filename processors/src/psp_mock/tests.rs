//! The PSP mock against a real HTTP client: idempotency, the rules, callbacks, signatures.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use reqwest::StatusCode;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::api::{AuthorizationResponse, AuthorizationStatus, CallbackEvent, CallbackOutcome};
use super::*;

struct Running {
    url: String,
    http: reqwest::Client,
    stop: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn quiet(config: PspMockConfig) -> PspMockConfig {
    PspMockConfig {
        listen: "127.0.0.1:0".parse().expect("an address"),
        latency_min_ms: 0,
        latency_max_ms: 2,
        ..config
    }
}

async fn start(config: PspMockConfig) -> Running {
    let mock = PspMock::bind(quiet(config)).await.expect("the mock binds");
    let url = mock.url();
    let stop = CancellationToken::new();
    tokio::spawn(mock.run(stop.clone()));
    Running {
        url,
        http: reqwest::Client::new(),
        stop,
    }
}

impl Running {
    async fn authorize(
        &self,
        key: &str,
        amount_minor: i64,
        token: &str,
    ) -> (StatusCode, serde_json::Value) {
        let resp = self
            .http
            .post(format!("{}/v1/authorizations", self.url))
            .header(IDEMPOTENCY_HEADER, key)
            .json(&json!({"amount_minor": amount_minor, "currency": "EUR",
                          "payment_method": token, "reference": format!("ref-{key}")}))
            .send()
            .await
            .expect("the mock answers");
        let status = resp.status();
        (status, resp.json().await.expect("a JSON body"))
    }

    async fn authorize_owned(&self, key: String) -> StatusCode {
        self.authorize(&key, 1_000, "tok_visa").await.0
    }

    async fn stats(&self) -> Stats {
        self.http
            .get(format!("{}/admin/stats", self.url))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats JSON")
    }

    async fn post(&self, path: &str, key: Option<&str>, body: serde_json::Value) -> StatusCode {
        let mut req = self.http.post(format!("{}{path}", self.url)).json(&body);
        if let Some(key) = key {
            req = req.header(IDEMPOTENCY_HEADER, key);
        }
        req.send().await.expect("the mock answers").status()
    }
}

fn answer(body: serde_json::Value) -> AuthorizationResponse {
    serde_json::from_value(body).expect("an authorization answer")
}

#[tokio::test]
async fn same_idempotency_key_returns_the_first_answer_and_creates_one_authorization() {
    let psp = start(PspMockConfig {
        decline_rate: 0.5,
        ..PspMockConfig::default()
    })
    .await;
    let (s1, first) = psp.authorize("key-1", 1_000, "tok_mastercard").await;
    let (s2, second) = psp.authorize("key-1", 1_000, "tok_mastercard").await;
    assert_eq!(s1, StatusCode::OK);
    assert_eq!(s2, StatusCode::OK);
    assert_eq!(first, second, "a retry must get the first answer");
    let stats = psp.stats().await;
    assert_eq!(stats.authorizations, 1, "a replay must not authorize twice");
    assert_eq!(
        stats.authorization_calls, 2,
        "calls are counted apart from authorizations"
    );
    assert_eq!(stats.idempotent_replays, 1);

    let (other, _) = psp.authorize("key-2", 1_000, "tok_mastercard").await;
    assert_eq!(other, StatusCode::OK);
    assert_eq!(psp.stats().await.authorizations, 2);
}

#[tokio::test]
async fn same_key_with_another_body_is_refused() {
    let psp = start(PspMockConfig::default()).await;
    let (s1, _) = psp.authorize("key-x", 1_000, "tok_visa").await;
    let (s2, body) = psp.authorize("key-x", 2_000, "tok_visa").await;
    assert_eq!(s1, StatusCode::OK);
    assert_eq!(s2, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["code"], "idempotency_key_reused");
    assert_eq!(psp.stats().await.authorizations, 1);
}

#[tokio::test]
async fn outcomes_depend_on_seed_and_key_not_on_arrival_order() {
    let config = PspMockConfig {
        decline_rate: 0.4,
        error_rate: 0.2,
        ..PspMockConfig::default()
    };
    let a = start(config.clone()).await;
    let b = start(config).await;
    let keys: Vec<String> = (0..20).map(|i| format!("order-{i}")).collect();
    let mut from_a = Vec::new();
    for key in &keys {
        from_a.push(a.authorize(key, 1_000, "tok_any").await);
    }
    let mut from_b = Vec::new();
    for key in keys.iter().rev() {
        from_b.push(b.authorize(key, 1_000, "tok_any").await);
    }
    from_b.reverse();
    assert_eq!(from_a, from_b);
    let declined = from_a
        .iter()
        .filter(|(s, body)| *s == StatusCode::OK && body["status"] == "declined")
        .count();
    let errors = from_a
        .iter()
        .filter(|(s, _)| *s == StatusCode::BAD_GATEWAY)
        .count();
    assert!(
        declined > 0 && errors > 0,
        "the mix must produce declines and errors"
    );
}

#[tokio::test]
async fn token_and_amount_rules_decide_deterministically() {
    let psp = start(PspMockConfig::default()).await;
    let (_, ok) = psp.authorize("k-ok", 1_000, "tok_visa").await;
    assert_eq!(answer(ok).status, AuthorizationStatus::Authorized);

    let (_, nsf) = psp
        .authorize("k-nsf", 1_000, "tok_decline_insufficient_funds")
        .await;
    let nsf = answer(nsf);
    assert_eq!(nsf.status, AuthorizationStatus::Declined);
    assert_eq!(nsf.decline_code.as_deref(), Some("insufficient_funds"));

    let (_, stolen) = psp
        .authorize("k-stolen", 1_000, "tok_decline_stolen_card")
        .await;
    assert_eq!(answer(stolen).decline_code.as_deref(), Some("stolen_card"));

    let (_, dnh) = psp.authorize("k-99", 1_099, "tok_visa").await;
    assert_eq!(answer(dnh).decline_code.as_deref(), Some(DO_NOT_HONOR));

    let (status, body) = psp.authorize("k-err", 1_000, "tok_error").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body["code"], "processor_error");
    let (again, _) = psp.authorize("k-err", 1_000, "tok_error").await;
    assert_eq!(again, StatusCode::BAD_GATEWAY);

    let stats = psp.stats().await;
    assert_eq!(stats.authorizations, 4, "errors create no authorization");
    assert_eq!(stats.errors, 2);
}

#[tokio::test]
async fn a_hanging_call_finishes_after_the_client_gave_up_and_its_retry_gets_the_late_answer() {
    let psp = start(PspMockConfig {
        timeout_delay_ms: 400,
        ..PspMockConfig::default()
    })
    .await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .expect("a client");
    let first = impatient
        .post(format!("{}/v1/authorizations", psp.url))
        .header(IDEMPOTENCY_HEADER, "k-hang")
        .json(&json!({"amount_minor": 500, "currency": "EUR",
                      "payment_method": "tok_timeout", "reference": "ref-k-hang"}))
        .send()
        .await;
    assert!(
        first.is_err_and(|e| e.is_timeout()),
        "the client must time out"
    );

    let (busy, body) = psp.authorize("k-hang", 500, "tok_timeout").await;
    assert_eq!(busy, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "idempotency_in_progress");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let (late, body) = psp.authorize("k-hang", 500, "tok_timeout").await;
    assert_eq!(late, StatusCode::OK);
    assert_eq!(answer(body).status, AuthorizationStatus::Authorized);
    let stats = psp.stats().await;
    assert_eq!((stats.authorizations, stats.timeouts), (1, 1));
    assert_eq!(
        stats.authorization_calls, 3,
        "the first call, the busy one, the late one"
    );
}

#[tokio::test]
async fn capture_void_and_refunds_never_exceed_the_capture() {
    let psp = start(PspMockConfig::default()).await;
    let (_, body) = psp.authorize("k-cap", 1_000, "tok_visa").await;
    let id = answer(body).id;
    let capture = format!("/v1/authorizations/{id}/capture");
    assert_eq!(psp.post(&capture, None, json!({})).await, StatusCode::OK);
    assert_eq!(psp.post(&capture, None, json!({})).await, StatusCode::OK);
    let void = format!("/v1/authorizations/{id}/void");
    assert_eq!(
        psp.post(&void, None, json!({})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a captured authorization cannot be voided"
    );
    let refund = |amount: i64, reference: &str| json!({"authorization_id": id, "amount_minor": amount, "refund_reference": reference});
    assert_eq!(
        psp.post("/v1/refunds", Some("r1"), refund(600, "r1")).await,
        StatusCode::OK
    );
    assert_eq!(
        psp.post("/v1/refunds", Some("r1"), refund(600, "r1")).await,
        StatusCode::OK,
        "a replayed refund is answered from the idempotency store"
    );
    assert_eq!(
        psp.post("/v1/refunds", Some("r2"), refund(500, "r2")).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "600 + 500 exceeds the 1000 captured"
    );
    assert_eq!(
        psp.post("/v1/refunds", Some("r3"), refund(400, "r3")).await,
        StatusCode::OK
    );
    let stats = psp.stats().await;
    assert_eq!((stats.captures, stats.voids, stats.refunds), (1, 0, 2));
}

/// With `callback_reorder_rate` 1 (set at runtime), a pending authorization is decided on
/// time (the PSP already answers `authorized`) while its callback is held back: it arrives
/// out of order, after what the receiver learned or did meanwhile. With a duplicate, one copy
/// comes on time and the second only after the hold.
#[tokio::test]
async fn a_reordered_callback_arrives_after_the_decision_it_reports() {
    let (url, received, stop_receiver) = callback_receiver().await;
    let psp = start(PspMockConfig {
        callback_url: Some(url),
        pending_delay_ms: 50,
        duplicate_callback_rate: 0.0,
        ..PspMockConfig::default()
    })
    .await;
    let changed = psp
        .http
        .put(format!("{}/admin/behaviour", psp.url))
        .json(&json!({"callback_reorder_rate": 1.0, "callback_reorder_delay_ms": 1_500}))
        .send()
        .await
        .expect("answer");
    assert_eq!(changed.status(), StatusCode::OK);
    let (_, body) = psp.authorize("k-late", 1_000, "tok_pending").await;
    let pending = answer(body);
    assert_eq!(pending.status, AuthorizationStatus::Pending);

    let status = |id: String| {
        let (http, base) = (psp.http.clone(), psp.url.clone());
        async move {
            let view: serde_json::Value = http
                .get(format!("{base}/v1/authorizations/{id}"))
                .send()
                .await
                .expect("answer")
                .json()
                .await
                .expect("JSON");
            view["status"].as_str().unwrap_or_default().to_owned()
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while status(pending.id.clone()).await != "authorized" {
        assert!(tokio::time::Instant::now() < deadline, "never decided");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        received.lock().expect("not poisoned").is_empty(),
        "decided, but the callback must still be held back"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while received.lock().expect("not poisoned").is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the callback never came"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_receiver.cancel();
    let deliveries = received.lock().expect("not poisoned").clone();
    let event: CallbackEvent = serde_json::from_slice(&deliveries[0].1).expect("an event");
    assert_eq!(
        (event.authorization_id, event.outcome),
        (pending.id, CallbackOutcome::Authorized)
    );
    let behaviour: serde_json::Value = psp
        .http
        .get(format!("{}/admin/behaviour", psp.url))
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("JSON");
    assert_eq!(behaviour["callback_reorder_rate"], 1.0);
    let bad = psp
        .http
        .put(format!("{}/admin/behaviour", psp.url))
        .json(&json!({"callback_reorder_rate": 1.5}))
        .send()
        .await
        .expect("answer");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

/// The stats count the `/v1` requests answered at once and keep their high-water mark.
#[tokio::test]
async fn the_stats_keep_the_most_requests_in_flight_at_once() {
    let psp = start(PspMockConfig::default()).await;
    let slow = psp
        .http
        .put(format!("{}/admin/behaviour", psp.url))
        .json(&json!({"latency_min_ms": 300, "latency_max_ms": 300}))
        .send()
        .await
        .expect("answer");
    assert_eq!(slow.status(), StatusCode::OK);
    let calls = (0..3).map(|i| psp.authorize_owned(format!("k-par-{i}")));
    futures::future::join_all(calls).await;
    let stats = psp.stats().await;
    assert_eq!(
        (stats.requests_in_flight, stats.max_requests_in_flight),
        (0, 3),
        "{stats:?}"
    );
}

#[tokio::test]
async fn behaviour_changes_at_runtime_and_bad_values_are_refused() {
    let psp = start(PspMockConfig::default()).await;
    let put = |body: serde_json::Value| {
        psp.http
            .put(format!("{}/admin/behaviour", psp.url))
            .json(&body)
            .send()
    };
    let ok = put(json!({"decline_rate": 1.0, "error_rate": 0.0, "timeout_rate": 0.0}))
        .await
        .expect("answer");
    assert_eq!(ok.status(), StatusCode::OK);
    let (_, body) = psp.authorize("k-rt", 1_000, "tok_any").await;
    assert_eq!(answer(body).decline_code.as_deref(), Some(CARD_DECLINED));
    let bad = put(json!({"error_rate": 2.0})).await.expect("answer");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let unknown = put(json!({"no_such_field": 1})).await.expect("answer");
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
}

type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

async fn callback_receiver() -> (String, Received, CancellationToken) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/callbacks",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().expect("not poisoned").push((headers, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "http://{}/callbacks",
        listener.local_addr().expect("an address")
    );
    let stop = CancellationToken::new();
    let until = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(until.cancelled_owned())
            .await
    });
    (url, received, stop)
}

#[tokio::test]
async fn pending_authorizations_call_back_signed_and_possibly_twice() {
    let (url, received, stop_receiver) = callback_receiver().await;
    let psp = start(PspMockConfig {
        callback_url: Some(url),
        callback_secret: "s3cret".to_owned(),
        duplicate_callback_rate: 1.0,
        pending_delay_ms: 50,
        ..PspMockConfig::default()
    })
    .await;
    let (_, body) = psp.authorize("k-pend", 1_000, "tok_pending").await;
    let pending = answer(body);
    assert_eq!(pending.status, AuthorizationStatus::Pending);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while received.lock().expect("not poisoned").len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no callbacks");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deliveries = received.lock().expect("not poisoned").clone();
    stop_receiver.cancel();
    let mut event_ids = Vec::new();
    for (headers, body) in &deliveries {
        let ts = headers[TIMESTAMP_HEADER].to_str().expect("ascii");
        let sig = headers[SIGNATURE_HEADER].to_str().expect("ascii");
        let now = ts.parse::<i64>().expect("seconds");
        verify("s3cret", ts, sig, body, now, 300).expect("the mock's signature verifies");
        assert!(verify("other", ts, sig, body, now, 300).is_err());
        let event: CallbackEvent = serde_json::from_slice(body).expect("an event");
        assert_eq!(event.authorization_id, pending.id);
        assert_eq!(event.reference, "ref-k-pend");
        assert_eq!(event.outcome, CallbackOutcome::Authorized);
        event_ids.push(event.event_id);
    }
    assert_eq!(event_ids.len(), 2);
    assert_eq!(
        event_ids[0], event_ids[1],
        "a duplicate has the same event id"
    );

    let view: serde_json::Value = psp
        .http
        .get(format!("{}/v1/authorizations/{}", psp.url, pending.id))
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("JSON");
    assert_eq!(view["status"], "authorized");
}

#[test]
fn signature_verify_accepts_its_own_and_rejects_tampering_and_stale_or_future_timestamps() {
    let body = br#"{"event_id":"evt_1","outcome":"authorized"}"#;
    let now = 1_767_225_600;
    let sig = sign("secret", now, body);
    assert!(sig.starts_with("v1="));
    assert_eq!(
        verify("secret", &now.to_string(), &sig, body, now, 300),
        Ok(())
    );
    assert_eq!(
        verify("secret", &now.to_string(), &sig, body, now + 299, 300),
        Ok(())
    );
    assert_eq!(
        verify(
            "secret",
            &now.to_string(),
            &format!("v1=00ff,{sig}"),
            body,
            now,
            300
        ),
        Ok(()),
        "any of several signatures may match"
    );

    let tampered = br#"{"event_id":"evt_1","outcome":"declined"}"#;
    assert_eq!(
        verify("secret", &now.to_string(), &sig, tampered, now, 300),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        verify("wrong", &now.to_string(), &sig, body, now, 300),
        Err(SignatureError::Mismatch)
    );
    // The timestamp is signed: changing it breaks the signature.
    assert_eq!(
        verify("secret", &(now + 1).to_string(), &sig, body, now, 300),
        Err(SignatureError::Mismatch)
    );

    let old = now - 301;
    let old_sig = sign("secret", old, body);
    assert!(matches!(
        verify("secret", &old.to_string(), &old_sig, body, now, 300),
        Err(SignatureError::TooOld { age_s: 301, .. })
    ));
    let future = now + 301;
    let future_sig = sign("secret", future, body);
    assert!(matches!(
        verify("secret", &future.to_string(), &future_sig, body, now, 300),
        Err(SignatureError::InFuture { ahead_s: 301, .. })
    ));

    assert!(matches!(
        verify("secret", "yesterday", &sig, body, now, 300),
        Err(SignatureError::MalformedTimestamp(_))
    ));
    assert_eq!(
        verify("secret", &now.to_string(), "sha1=abc", body, now, 300),
        Err(SignatureError::MalformedSignature)
    );
}

/// The timestamp header is signed as sent: other spellings of the same number ("+<ts>",
/// "0<ts>", " <ts> ") are malformed, not verified against a re-printed number.
#[test]
fn signature_verify_accepts_only_plain_digits_as_the_timestamp() {
    let body = br#"{"event_id":"evt_1","outcome":"authorized"}"#;
    let now: i64 = 1_767_225_600;
    let sig = sign("secret", now, body);
    for spelling in [
        format!("+{now}"),
        format!(" {now} "),
        format!("{now} "),
        format!("-{now}"),
        String::new(),
        "1".repeat(20),
    ] {
        assert!(
            matches!(
                verify("secret", &spelling, &sig, body, now, 300),
                Err(SignatureError::MalformedTimestamp(_))
            ),
            "{spelling:?}"
        );
    }
    // Digits, but not the bytes that were signed.
    assert_eq!(
        verify("secret", &format!("0{now}"), &sig, body, now, 300),
        Err(SignatureError::Mismatch)
    );
    assert!(matches!(
        verify("secret", "9999999999999999999", &sig, body, now, 300),
        Err(SignatureError::MalformedTimestamp(_) | SignatureError::InFuture { .. })
    ));
}

#[test]
fn config_rejects_every_bad_field_at_once() {
    let bad = PspMockConfig {
        decline_rate: 1.5,
        latency_min_ms: 10,
        latency_max_ms: 5,
        callback_url: Some("ftp://x".to_owned()),
        ..PspMockConfig::default()
    };
    match bad.validate() {
        Err(Error::Config(problems)) => assert_eq!(problems.len(), 4, "{problems:?}"),
        other => panic!("expected a config error, got {other:?}"),
    }
    let parsed: Result<PspMockConfig, _> = serde_json::from_value(json!({"sede": 1}));
    assert!(parsed.is_err(), "unknown fields are refused");
}
