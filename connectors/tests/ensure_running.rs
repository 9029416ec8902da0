//! `ConnectClient::ensure_running` against a Kafka Connect REST double: a connector that is
//! `FAILED` before its registration (Connect restored it while its database was still down)
//! is restarted once and converges; one that fails again reports its trace.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use keel_connectors::{ConnectClient, Error};
use serde_json::{Value, json};

/// What the double has seen and how its connector behaves.
#[derive(Debug, Default)]
struct Worker {
    /// Restart requests, as their query strings.
    restarts: Vec<String>,
    /// The task fails again after a restart.
    fails_again: bool,
}

const TRACE: &str = "io.debezium.DebeziumException: Error reading MySQL variables: \
    Socket fail to connect to 127.0.0.1. Connection refused";

async fn status(State(worker): State<Arc<Mutex<Worker>>>, Path(name): Path<String>) -> Json<Value> {
    let worker = worker.lock().expect("lock");
    let failed = worker.restarts.is_empty() || worker.fails_again;
    let task = if failed {
        json!({"id": 0, "state": "FAILED", "worker_id": "127.0.0.1:8083", "trace": TRACE})
    } else {
        json!({"id": 0, "state": "RUNNING", "worker_id": "127.0.0.1:8083"})
    };
    Json(json!({
        "name": name,
        "connector": {"state": "RUNNING", "worker_id": "127.0.0.1:8083"},
        "tasks": [task],
        "type": "source"
    }))
}

async fn restart(
    State(worker): State<Arc<Mutex<Worker>>>,
    RawQuery(query): RawQuery,
) -> StatusCode {
    worker
        .lock()
        .expect("lock")
        .restarts
        .push(query.unwrap_or_default());
    StatusCode::ACCEPTED
}

async fn serve(worker: Arc<Mutex<Worker>>) -> String {
    let app = Router::new()
        .route("/connectors/{name}/status", get(status))
        .route("/connectors/{name}/restart", post(restart))
        .with_state(worker);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_connector_failed_before_registration_is_restarted_once_and_runs() {
    let worker = Arc::new(Mutex::new(Worker::default()));
    let connect = ConnectClient::new(serve(worker.clone()).await);

    let status = connect
        .ensure_running("keel-order-outbox", Duration::from_secs(10))
        .await
        .expect("runs after one restart of its failed task");

    assert!(status.is_running(), "{}", status.summary());
    assert_eq!(
        worker.lock().expect("lock").restarts,
        vec!["includeTasks=true&onlyFailed=true".to_owned()]
    );
}

#[tokio::test]
async fn a_connector_that_fails_again_reports_its_trace_after_one_restart() {
    let worker = Arc::new(Mutex::new(Worker {
        fails_again: true,
        ..Worker::default()
    }));
    let connect = ConnectClient::new(serve(worker.clone()).await);

    let err = connect
        .ensure_running("keel-order-outbox", Duration::from_secs(10))
        .await
        .expect_err("still FAILED after the restart");

    match err {
        Error::Failed { connector, trace } => {
            assert_eq!(connector, "keel-order-outbox");
            assert!(trace.contains("Connection refused"), "{trace}");
        }
        other => panic!("expected Error::Failed, got {other}"),
    }
    assert_eq!(worker.lock().expect("lock").restarts.len(), 1);
}
