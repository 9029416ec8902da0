//! A client for Kafka Connect's REST API.
//!
//! Registration is idempotent: [`ConnectClient::apply`] PUTs the whole configuration to
//! `/connectors/{name}/config`, which creates the connector or replaces its configuration.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde::Deserialize;

use crate::config::ConnectorConfig;
use crate::error::{Error, Result};

/// Talks to one Kafka Connect cluster (any worker's REST listener).
#[derive(Debug, Clone)]
pub struct ConnectClient {
    base: String,
    http: reqwest::Client,
}

/// The lifecycle state Connect reports for a connector or one of its tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ConnectorState {
    Unassigned,
    Running,
    Paused,
    Stopped,
    Failed,
    Restarting,
}

impl std::fmt::Display for ConnectorState {
    /// As Connect spells it: `RUNNING`, `FAILED`, ...
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Unassigned => "UNASSIGNED",
            Self::Running => "RUNNING",
            Self::Paused => "PAUSED",
            Self::Stopped => "STOPPED",
            Self::Failed => "FAILED",
            Self::Restarting => "RESTARTING",
        })
    }
}

/// The answer of `GET /connectors/{name}/status`.
#[derive(Debug, Clone, Deserialize)]
pub struct ConnectorStatus {
    pub name: String,
    pub connector: WorkerState,
    #[serde(default)]
    pub tasks: Vec<TaskState>,
}

/// State of the connector instance on its worker.
#[derive(Debug, Clone, Deserialize)]
pub struct WorkerState {
    pub state: ConnectorState,
    pub worker_id: String,
    #[serde(default)]
    pub trace: Option<String>,
}

/// State of one task of a connector.
#[derive(Debug, Clone, Deserialize)]
pub struct TaskState {
    pub id: u32,
    pub state: ConnectorState,
    pub worker_id: String,
    #[serde(default)]
    pub trace: Option<String>,
}

impl ConnectorStatus {
    /// Running means the connector and every task run, and at least one task exists.
    pub fn is_running(&self) -> bool {
        self.connector.state == ConnectorState::Running
            && !self.tasks.is_empty()
            && self
                .tasks
                .iter()
                .all(|t| t.state == ConnectorState::Running)
    }

    /// The first failure trace, from the connector or any task.
    pub fn failure(&self) -> Option<&str> {
        if self.connector.state == ConnectorState::Failed {
            return Some(
                self.connector
                    .trace
                    .as_deref()
                    .unwrap_or("connector failed"),
            );
        }
        self.tasks
            .iter()
            .find(|t| t.state == ConnectorState::Failed)
            .map(|t| t.trace.as_deref().unwrap_or("task failed"))
    }

    /// The first failure, shortened for people: [`shorten_trace`] of [`Self::failure`].
    pub fn short_failure(&self) -> Option<String> {
        self.failure().map(shorten_trace)
    }

    /// Whether the connector or a task failed because the binlog position it stored is gone
    /// from the server ([`is_binlog_gap`]).
    pub fn is_binlog_gap(&self) -> bool {
        self.failure().is_some_and(is_binlog_gap)
    }

    /// Whether the connector or any task is `FAILED`.
    pub fn is_failed(&self) -> bool {
        self.connector.state == ConnectorState::Failed
            || self.tasks.iter().any(|t| t.state == ConnectorState::Failed)
    }

    /// One line: `connector RUNNING; task 0 RUNNING, ...`.
    pub fn summary(&self) -> String {
        let tasks: Vec<String> = self
            .tasks
            .iter()
            .map(|t| format!("task {} {}", t.id, t.state))
            .collect();
        format!("connector {}; {}", self.connector.state, tasks.join(", "))
    }
}

/// A Java stack trace cut to what a person reads: its first line (the exception and message)
/// and each `Caused by:` line, at most 8 lines of at most 400 characters.
pub fn shorten_trace(trace: &str) -> String {
    let mut lines = trace.lines();
    let first = lines.next().unwrap_or_default();
    std::iter::once(first)
        .chain(lines.map(str::trim).filter(|l| l.starts_with("Caused by:")))
        .take(8)
        .map(|l| l.chars().take(400).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a binlog connector's failure says when the position it stored was purged from the
/// server (a binlog gap): Debezium's own check at task start (with `snapshot.mode` other than
/// `when_needed`); the server's error 1236 to the binlog client — MariaDB's for a GTID
/// position (what the MariaDB connector resumes from, seen in `tests/cli/binlog_gap.rs`), and
/// for a file position; MySQL's and Debezium's words for purged GTIDs.
const BINLOG_GAP_SIGNS: [&str; 5] = [
    "is no longer available on the server",
    "required binlog files have been purged",
    "Could not find first log file name in binary log index file",
    "GTIDs needed to replicate have been already purged",
    "master has purged binary logs containing GTIDs",
];

/// Whether the failure `trace` of a MySQL/MariaDB connector is a binlog gap: the binlog
/// position it stored is no longer on the server, so the changes written since cannot be
/// streamed (only re-read by a snapshot).
pub fn is_binlog_gap(trace: &str) -> bool {
    BINLOG_GAP_SIGNS.iter().any(|sign| trace.contains(sign))
}

/// One installed connector plugin, from `GET /connector-plugins`.
#[derive(Debug, Clone, Deserialize)]
pub struct Plugin {
    pub class: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub version: Option<String>,
}

#[derive(Deserialize)]
struct ConnectErrorBody {
    message: String,
}

impl ConnectClient {
    /// A client for the worker at `base_url`, e.g. `http://127.0.0.1:8083`.
    pub fn new(base_url: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Self {
            base: base_url.into().trim_end_matches('/').to_owned(),
            http,
        }
    }

    /// The worker URL this client talks to.
    pub fn url(&self) -> &str {
        &self.base
    }

    async fn call(
        &self,
        operation: &'static str,
        connector: Option<&str>,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<reqwest::Response> {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|source| Error::Unreachable {
            url: self.base.clone(),
            operation,
            source,
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        if status == StatusCode::NOT_FOUND
            && let Some(name) = connector
        {
            return Err(Error::NotFound(name.to_owned()));
        }
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ConnectErrorBody>(&text)
            .map(|b| b.message)
            .unwrap_or(text);
        Err(Error::Rejected {
            operation,
            connector: connector.map(str::to_owned),
            status: status.as_u16(),
            message,
        })
    }

    /// Installed connector plugins.
    pub async fn plugins(&self) -> Result<Vec<Plugin>> {
        let resp = self
            .call(
                "list plugins",
                None,
                Method::GET,
                "/connector-plugins",
                None,
            )
            .await?;
        resp.json().await.map_err(|source| Error::Decode {
            operation: "list plugins",
            source,
        })
    }

    /// Names of the registered connectors.
    pub async fn connectors(&self) -> Result<Vec<String>> {
        let resp = self
            .call("list connectors", None, Method::GET, "/connectors", None)
            .await?;
        resp.json().await.map_err(|source| Error::Decode {
            operation: "list connectors",
            source,
        })
    }

    /// Create the connector, or replace its configuration if it exists.
    pub async fn apply(&self, config: &ConnectorConfig) -> Result<()> {
        let body = serde_json::to_value(config.settings()).unwrap_or_default();
        self.call(
            "apply config",
            Some(config.name()),
            Method::PUT,
            &format!("/connectors/{}/config", config.name()),
            Some(&body),
        )
        .await?;
        Ok(())
    }

    /// The connector's current status.
    pub async fn status(&self, name: &str) -> Result<ConnectorStatus> {
        let resp = self
            .call(
                "get status",
                Some(name),
                Method::GET,
                &format!("/connectors/{name}/status"),
                None,
            )
            .await?;
        resp.json().await.map_err(|source| Error::Decode {
            operation: "get status",
            source,
        })
    }

    /// Pause the connector (its tasks stop reading; offsets are kept).
    pub async fn pause(&self, name: &str) -> Result<()> {
        let path = format!("/connectors/{name}/pause");
        self.call("pause", Some(name), Method::PUT, &path, None)
            .await
            .map(drop)
    }

    /// Resume a paused connector.
    pub async fn resume(&self, name: &str) -> Result<()> {
        let path = format!("/connectors/{name}/resume");
        self.call("resume", Some(name), Method::PUT, &path, None)
            .await
            .map(drop)
    }

    /// Stop the connector: its tasks shut down (a PostgreSQL task closes its replication
    /// connection, unlike a pause); offsets and configuration are kept; `resume` starts it.
    pub async fn stop(&self, name: &str) -> Result<()> {
        let path = format!("/connectors/{name}/stop");
        self.call("stop", Some(name), Method::PUT, &path, None)
            .await
            .map(drop)
    }

    /// Forget the connector's committed source offsets (`DELETE /connectors/{name}/offsets`;
    /// Connect accepts it only while the connector is `STOPPED`). Started again without
    /// offsets, a Debezium connector with `snapshot.mode = initial` takes a new snapshot: the
    /// deliberate re-snapshot after a binlog gap (`docs/operations.md`).
    pub async fn reset_offsets(&self, name: &str) -> Result<()> {
        let path = format!("/connectors/{name}/offsets");
        self.call("reset offsets", Some(name), Method::DELETE, &path, None)
            .await
            .map(drop)
    }

    /// Restart the connector and all its tasks (`?includeTasks=true&onlyFailed=false`).
    pub async fn restart(&self, name: &str) -> Result<()> {
        let path = format!("/connectors/{name}/restart?includeTasks=true&onlyFailed=false");
        self.call("restart", Some(name), Method::POST, &path, None)
            .await
            .map(drop)
    }

    /// Restart only the connector instance and tasks that are `FAILED`
    /// (`?includeTasks=true&onlyFailed=true`, KIP-745); running tasks keep running.
    pub async fn restart_failed(&self, name: &str) -> Result<()> {
        let path = format!("/connectors/{name}/restart?includeTasks=true&onlyFailed=true");
        self.call("restart failed", Some(name), Method::POST, &path, None)
            .await
            .map(drop)
    }

    /// The connector's stored configuration (`GET /connectors/{name}/config`).
    pub async fn config(&self, name: &str) -> Result<BTreeMap<String, String>> {
        let resp = self
            .call(
                "get config",
                Some(name),
                Method::GET,
                &format!("/connectors/{name}/config"),
                None,
            )
            .await?;
        resp.json().await.map_err(|source| Error::Decode {
            operation: "get config",
            source,
        })
    }

    /// Delete the connector. Deleting one that does not exist is not an error.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let path = format!("/connectors/{name}");
        match self
            .call("delete", Some(name), Method::DELETE, &path, None)
            .await
        {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Wait until the connector and all its tasks run, restarting what is `FAILED` once: a
    /// registration converges even when the failure predates it. Connect restores its stored
    /// connectors when the worker starts, and one whose database was not up yet stays `FAILED`
    /// with an unchanged configuration, which a PUT of the same configuration does not restart.
    /// A second failure, after the restart, ends the wait with its trace
    /// ([`Error::Failed`]); `timeout` bounds each of the two waits.
    pub async fn ensure_running(&self, name: &str, timeout: Duration) -> Result<ConnectorStatus> {
        match self.wait_running(name, timeout).await {
            Err(Error::Failed { trace, .. }) => {
                tracing::warn!(
                    connector = name,
                    failure = %trace,
                    "connector FAILED; restarting its failed parts once"
                );
                self.restart_failed(name).await?;
                // Until the worker has acted on the restart, the status may still show the old
                // failure: the same trace within the grace period is not yet an answer.
                let stale = Stale {
                    trace,
                    grace: Duration::from_secs(5),
                };
                self.wait(name, timeout, Some(&stale)).await
            }
            other => other,
        }
    }

    /// Wait until the connector and all its tasks run; a failure ends the wait at once with
    /// the failure trace.
    pub async fn wait_running(&self, name: &str, timeout: Duration) -> Result<ConnectorStatus> {
        self.wait(name, timeout, None).await
    }

    async fn wait(
        &self,
        name: &str,
        timeout: Duration,
        stale: Option<&Stale>,
    ) -> Result<ConnectorStatus> {
        let start = Instant::now();
        let mut last = String::from("no status yet");
        loop {
            match self.status(name).await {
                Ok(status) if status.is_running() => return Ok(status),
                Ok(status) => {
                    let trace = status.short_failure().filter(|trace| {
                        stale.is_none_or(|s| *trace != s.trace || start.elapsed() >= s.grace)
                    });
                    if let Some(trace) = trace {
                        return Err(Error::Failed {
                            connector: name.to_owned(),
                            trace,
                        });
                    }
                    last = status.summary();
                }
                // Right after creation the status may not exist yet.
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            if start.elapsed() >= timeout {
                return Err(Error::Timeout {
                    connector: name.to_owned(),
                    wanted: "RUNNING",
                    waited_ms: start.elapsed().as_millis(),
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// A failure seen before a restart: not an answer about the restart for `grace`.
struct Stale {
    trace: String,
    grace: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_purged_binlog_position_is_recognised_in_a_trace() {
        let trace = "io.debezium.DebeziumException: The connector is trying to read change \
            stream starting at MariaDbOffsetContext [sourceInfoSchema=Schema{...}], but this is \
            no longer available on the server. Reconfigure the connector to use a snapshot \
            mode when needed.\n\tat io.debezium.connector.common.BaseSourceTask.start(X.java:1)";
        assert!(is_binlog_gap(trace));
        assert!(is_binlog_gap(
            "Caused by: com.github.shyiko.mysql.binlog.network.ServerException: Could not find \
             first log file name in binary log index file"
        ));
        // MariaDB 1236 for a GTID position, as the MariaDB connector reports it.
        assert!(is_binlog_gap(
            "Caused by: io.debezium.DebeziumException: Could not find GTID state requested by \
             slave in any binlog files. Probably the slave state is too old and required binlog \
             files have been purged. Error code: 1236; SQLSTATE: HY000."
        ));
        assert!(!is_binlog_gap(
            "io.debezium.DebeziumException: The db history topic is missing."
        ));
        let status = |state: &str, trace: &str| -> ConnectorStatus {
            serde_json::from_value(serde_json::json!({
                "name": "c",
                "connector": {"state": "RUNNING", "worker_id": "w"},
                "tasks": [{"id": 0, "state": state, "worker_id": "w", "trace": trace}]
            }))
            .expect("a status")
        };
        assert!(status("FAILED", trace).is_binlog_gap());
        assert!(
            !status("RUNNING", trace).is_binlog_gap(),
            "only a failure counts"
        );
    }

    #[test]
    fn a_trace_is_cut_to_its_message_and_causes() {
        let trace = "org.apache.kafka.connect.errors.ConnectException: An exception occurred\n\
            \tat io.debezium.pipeline.ErrorHandler.setProducerThrowable(ErrorHandler.java:67)\n\
            \tat java.base/java.lang.Thread.run(Thread.java:840)\n\
            Caused by: io.debezium.DebeziumException: The db history topic is missing.\n\
            \tat io.debezium.relational.HistorizedRelationalDatabaseSchema.recover(X.java:1)\n";
        assert_eq!(
            shorten_trace(trace),
            "org.apache.kafka.connect.errors.ConnectException: An exception occurred\n\
             Caused by: io.debezium.DebeziumException: The db history topic is missing."
        );
    }
}
